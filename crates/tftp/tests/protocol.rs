//! The server's protocol edges, driven by a small hand-written client over
//! real UDP sockets (what firmware does that the command-line clients do
//! not: the UEFI tsize probe, lost packets, stray TIDs, garbage).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use kumo_tftp::{FileResolver, Limits, Packet, RawRequest, RequestPath, ResolvedFile, TftpError};
use tokio::net::UdpSocket;

struct Client {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Client {
    async fn new(port: u16) -> Client {
        Client {
            sock: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            server: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    async fn rrq(&self, file: &str, options: &[(&str, &str)]) {
        let p = Packet::Rrq(RawRequest {
            filename: file.into(),
            mode: "octet".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        self.sock.send_to(&p.encode(), self.server).await.unwrap();
    }

    async fn send(&self, to: SocketAddr, p: Packet) {
        self.sock.send_to(&p.encode(), to).await.unwrap();
    }

    /// The next datagram; a generous limit only so a broken server fails
    /// the test instead of hanging it.
    async fn recv(&self) -> (Packet, SocketAddr) {
        let mut buf = vec![0u8; 70000];
        let (n, from) =
            tokio::time::timeout(Duration::from_secs(30), self.sock.recv_from(&mut buf))
                .await
                .expect("no answer from the tftp server within 30 s")
                .unwrap();
        (
            Packet::parse(&buf[..n]).expect("server sent a valid packet"),
            from,
        )
    }

    async fn recv_data(&self) -> (u16, Vec<u8>, SocketAddr) {
        match self.recv().await {
            (Packet::Data { block, data }, from) => (block, data, from),
            other => panic!("expected data, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uefi_tsize_probe_then_download() {
    let server = TestServer::start().await;
    let len = 100_000;
    let sum = server.add_file("EFI/BOOT/BOOTX64.EFI", len, 11);
    let c = Client::new(server.port).await;

    // The probe: options with tsize, then ERROR 8 when the OACK arrives.
    c.rrq(
        "/EFI/BOOT/BOOTX64.EFI",
        &[("blksize", "1468"), ("tsize", "0")],
    )
    .await;
    let (oack, tid) = c.recv().await;
    assert_ne!(tid.port(), server.port, "the transfer comes from a new TID");
    assert_eq!(
        oack,
        Packet::Oack {
            options: vec![
                ("blksize".into(), "1468".into()),
                ("tsize".into(), len.to_string())
            ]
        }
    );
    c.send(
        tid,
        Packet::Error {
            code: 8,
            message: "User aborted the transfer".into(),
        },
    )
    .await;

    // At once the real download, from the same client port: it must not be
    // mistaken for a retransmission of the probe's RRQ.
    // (A 255 s timeout: no retransmission can interleave with the checks.)
    let probe_tid = tid;
    c.rrq(
        "/EFI/BOOT/BOOTX64.EFI",
        &[("blksize", "1468"), ("timeout", "255")],
    )
    .await;
    let (oack, tid) = loop {
        // Skip the probe's OACK, should it have been resent meanwhile.
        let (p, from) = c.recv().await;
        if from != probe_tid {
            break (p, from);
        }
    };
    assert!(matches!(oack, Packet::Oack { .. }), "{oack:?}");
    c.send(tid, Packet::Ack { block: 0 }).await;
    let mut file = Vec::new();
    loop {
        let (block, data, from) = c.recv_data().await;
        assert_eq!(from, tid);
        assert_eq!(block as usize, file.len() / 1468 + 1);
        file.extend_from_slice(&data);
        c.send(tid, Packet::Ack { block }).await;
        if data.len() < 1468 {
            break;
        }
    }
    assert_eq!(sha256(&file), sum);
    let s = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert_eq!(
        (
            s.requests,
            s.transfers_declined,
            s.transfers_failed,
            s.duplicate_requests
        ),
        (2, 1, 0, 0),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_data_is_retransmitted() {
    let server = TestServer::start().await;
    server.add_file("f", 700, 12);
    let c = Client::new(server.port).await;
    c.rrq("f", &[("timeout", "1")]).await;
    let (_, tid) = c.recv().await;
    c.send(tid, Packet::Ack { block: 0 }).await;
    let (b1, d1, _) = c.recv_data().await;
    assert_eq!(b1, 1);
    // Pretend DATA 1 was lost: no ACK. The server resends it after 1 s.
    let (again, d1_again, _) = c.recv_data().await;
    assert_eq!((again, &d1_again), (1, &d1));
    c.send(tid, Packet::Ack { block: 1 }).await;
    loop {
        let (b, _, _) = c.recv_data().await;
        c.send(tid, Packet::Ack { block: b }).await;
        if b == 2 {
            break;
        }
    }
    let s = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert!(s.retransmits >= 1, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_acks_do_not_trigger_data() {
    let server = TestServer::start().await;
    server.add_file("f", 1500, 12);
    let c = Client::new(server.port).await;
    // A 255 s timeout: any repeated DATA here would come from the duplicate
    // ACK (the Sorcerer's Apprentice bug), not from the timer.
    c.rrq("f", &[("timeout", "255")]).await;
    let (_, tid) = c.recv().await;
    c.send(tid, Packet::Ack { block: 0 }).await;
    assert_eq!(c.recv_data().await.0, 1);
    c.send(tid, Packet::Ack { block: 1 }).await;
    c.send(tid, Packet::Ack { block: 1 }).await;
    assert_eq!(c.recv_data().await.0, 2);
    c.send(tid, Packet::Ack { block: 2 }).await;
    let (b3, d3, _) = c.recv_data().await;
    assert_eq!(
        (b3, d3.len()),
        (3, 1500 - 1024),
        "no second DATA 2 in between"
    );
    c.send(tid, Packet::Ack { block: 3 }).await;
    let s = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert_eq!(s.retransmits, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_transfer_recovers_from_a_lost_block() {
    let server = TestServer::start().await;
    let sum = server.add_file("w", 20 * 512 + 7, 13);
    let c = Client::new(server.port).await;
    c.rrq("w", &[("windowsize", "4"), ("timeout", "255")]).await;
    let (oack, tid) = c.recv().await;
    assert_eq!(
        oack,
        Packet::Oack {
            options: vec![
                ("windowsize".into(), "4".into()),
                ("timeout".into(), "255".into())
            ]
        }
    );
    c.send(tid, Packet::Ack { block: 0 }).await;
    let mut file: Vec<u8> = Vec::new();
    let mut dropped = false;
    let mut expected: u16 = 1;
    loop {
        // Receive one window (or up to the last block).
        let mut last = false;
        let mut lost = false;
        for _ in 0..4 {
            let (block, data, _) = c.recv_data().await;
            if block == 6 && !dropped {
                // Drop block 6 the first time: the receiver keeps only
                // in-order blocks and ACKs the last one it has (RFC 7440).
                dropped = true;
                lost = true;
            } else if block == expected && !lost {
                file.extend_from_slice(&data);
                expected += 1;
            }
            if data.len() < 512 {
                last = true;
                break;
            }
        }
        c.send(
            tid,
            Packet::Ack {
                block: expected - 1,
            },
        )
        .await;
        if last && !lost {
            break;
        }
    }
    assert_eq!(sha256(&file), sum);
    let s = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert!(s.retransmits >= 2, "blocks 6 and 7 were sent again: {s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out_after_bounded_retries() {
    let server = TestServer::start_with(Limits {
        max_retries: 2,
        ..Limits::default()
    })
    .await;
    server.add_file("f", 10, 14);
    let c = Client::new(server.port).await;
    c.rrq("f", &[("timeout", "1")]).await;
    // The OACK, then two retransmissions, then nothing.
    for _ in 0..3 {
        assert!(matches!(c.recv().await.0, Packet::Oack { .. }));
    }
    let s = counters_until(&server.counters, |c| c.transfers_failed == 1).await;
    assert_eq!(s.retransmits, 2, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_counted() {
    let server = TestServer::start().await;
    let sum = server.add_file("f", 700, 15);
    let c = Client::new(server.port).await;
    let well_known = c.server;
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x09xx",
        b"\x00\x01nofilenul",
        b"\xff\xff\xff",
    ] {
        c.sock.send_to(junk, well_known).await.unwrap();
    }
    c.send(well_known, Packet::Ack { block: 1 }).await;
    c.send(
        well_known,
        Packet::Data {
            block: 1,
            data: vec![1],
        },
    )
    .await;
    let s = counters_until(&server.counters, |c| c.malformed == 5 && c.unexpected == 2).await;
    assert_eq!(s.requests, 0, "{s:?}");

    // The server still serves; garbage on a transfer socket is dropped too,
    // a stray TID gets ERROR 5, and a retransmitted RRQ starts nothing new.
    c.rrq("f", &[("timeout", "255")]).await;
    let (oack, tid) = c.recv().await;
    assert!(matches!(oack, Packet::Oack { .. }), "{oack:?}");
    c.send(tid, Packet::Ack { block: 0 }).await;
    let (b1, d1, _) = c.recv_data().await;
    assert_eq!(b1, 1);
    c.rrq("f", &[("timeout", "255")]).await;
    // Counted as a duplicate only while the transfer runs: wait for the
    // server to have seen it before the transfer can end (the same RRQ
    // after the last ACK is a new request).
    counters_until(&server.counters, |c| c.duplicate_requests == 1).await;
    c.sock.send_to(b"\x00\x04", tid).await.unwrap();
    let stranger = Client::new(server.port).await;
    stranger.send(tid, Packet::Ack { block: 1 }).await;
    assert_eq!(
        stranger.recv().await,
        (
            Packet::Error {
                code: 5,
                message: "unknown transfer id".into()
            },
            tid
        )
    );
    c.send(tid, Packet::Ack { block: 1 }).await;
    let (b2, d2, _) = c.recv_data().await;
    assert_eq!(b2, 2);
    c.send(tid, Packet::Ack { block: 2 }).await;
    assert_eq!(sha256(&[d1, d2].concat()), sum);
    let s = counters_until(&server.counters, |c| c.transfers_completed == 1).await;
    assert_eq!(
        (s.malformed, s.unknown_tid, s.duplicate_requests, s.requests),
        (6, 1, 1, 1),
        "{s:?}"
    );
}

/// A resolver like the rack's: generated per-client files, the rest from disk.
struct PerMachine {
    fallback: kumo_tftp::DirResolver,
}

#[async_trait]
impl FileResolver for PerMachine {
    async fn open(&self, path: &RequestPath, peer: SocketAddr) -> Result<ResolvedFile, TftpError> {
        if path.to_string() == "pxelinux.cfg/default" {
            let body = format!("# for {}\nDEFAULT local\n", peer.ip());
            return Ok(ResolvedFile::from_bytes(body.into_bytes()));
        }
        self.fallback.open(path, peer).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pluggable_resolver_serves_generated_files_to_tftp_hpa() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("static"), "from disk").unwrap();
    let resolver = PerMachine {
        fallback: kumo_tftp::DirResolver::new(root.path()).unwrap(),
    };
    let server = TestServer::start_with_resolver(root, Arc::new(resolver), Limits::default()).await;
    let out = tempfile::tempdir().unwrap();
    let local = out.path().join("cfg");
    let (o, text) = tftp_hpa_get(server.port, "binary", "pxelinux.cfg/default", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        "# for 127.0.0.1\nDEFAULT local\n"
    );
    let (o, text) = tftp_hpa_get(server.port, "binary", "static", &local).await;
    assert!(o.status.success(), "{text}");
    assert_eq!(std::fs::read_to_string(&local).unwrap(), "from disk");
}
