//! The wol driver sends a real broadcast inside a private network namespace:
//! a veth pair whose `kw..s` end (10.213.0.1/24) sends and whose other end
//! (no address, like a sleeping machine's NIC) is watched by tcpdump.
//! The host's own interfaces are never touched. Needs root (CAP_NET_ADMIN).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::ChildGuard;
use kumo_power::{driver_for, magic_packet, PowerState};
use serde_json::json;

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0xab, 0xef];

/// Deletes the namespace (and the veth pair inside it) even if the test fails.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that has joined network namespace `ns`; sockets it
/// opens live there. The rest of the test process stays in the host namespace.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a valid fd affects only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// The UDP payloads to port 9 in a pcap file (Ethernet link type).
fn udp_payloads(pcap: &[u8]) -> Vec<(std::net::Ipv4Addr, Vec<u8>)> {
    assert!(
        pcap.len() >= 24,
        "pcap file too short: {} bytes",
        pcap.len()
    );
    assert_eq!(
        &pcap[..4],
        &[0xd4, 0xc3, 0xb2, 0xa1],
        "expected little-endian pcap"
    );
    assert_eq!(
        u32::from_le_bytes(pcap[20..24].try_into().unwrap()),
        1,
        "ethernet link type"
    );
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..at + 16 + incl];
        at += 16 + incl;
        if frame.len() < 14 + 20 + 8 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
            continue;
        }
        let ihl = (frame[14] & 0x0f) as usize * 4;
        let dst = std::net::Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        let udp = &frame[14 + ihl..];
        if u16::from_be_bytes([udp[2], udp[3]]) == 9 {
            out.push((dst, udp[8..].to_vec()));
        }
    }
    out
}

#[tokio::test]
async fn magic_packet_is_broadcast() {
    common::require_program("ip", "iproute2");
    let tcpdump = common::require_program("tcpdump", "tcpdump");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let id = format!(
        "{}{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let ns = Netns(format!("kumo-wol-{id}"));
    let (send_if, nic_if) = (format!("kw{id}s"), format!("kw{id}n"));
    ip(&["netns", "add", &ns.0]);
    ip(&[
        "-n", &ns.0, "link", "add", &send_if, "type", "veth", "peer", "name", &nic_if,
    ]);
    ip(&["-n", &ns.0, "addr", "add", "10.213.0.1/24", "dev", &send_if]);
    for dev in ["lo", send_if.as_str(), nic_if.as_str()] {
        ip(&["-n", &ns.0, "link", "set", dev, "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wol.pcap");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(&tcpdump)
        .args(["-i", &nic_if, "-n", "-U", "-Z", "root", "-w"])
        .arg(&pcap)
        .args(["udp", "port", "9"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tcpdump");
    // tcpdump says "listening on ..." once the capture is armed.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let tcpdump = ChildGuard(child);
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("tcpdump exited before capturing");
        }
    }

    let d = driver_for(
        "wol",
        &common::params(json!({
            "mac_address": "52:54:00:12:AB:EF",
            "broadcast_address": "10.213.0.255",
        })),
    )
    .unwrap();
    let (d, sent) = in_netns(&ns.0, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sent = rt.block_on(d.power_on());
        (d, sent)
    });
    sent.expect("power_on");
    assert_eq!(d.power_query().await.unwrap(), PowerState::Unknown);

    let expected = magic_packet(MAC).to_vec();
    let got = common::wait_for(Duration::from_secs(5), || {
        let data = std::fs::read(&pcap).unwrap_or_default();
        async move { data.len() > 24 && !udp_payloads(&data).is_empty() }
    })
    .await;
    drop(tcpdump);
    assert!(got, "no udp port 9 packet captured");
    let packets = udp_payloads(&std::fs::read(&pcap).unwrap());
    assert_eq!(packets.len(), 1, "{packets:?}");
    assert_eq!(packets[0].0, std::net::Ipv4Addr::new(10, 213, 0, 255));
    assert_eq!(packets[0].1, expected);
}
