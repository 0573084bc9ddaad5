//! The XDP answer path attached for real (needs root): each test runs in
//! a private network namespace whose loopback is the interface, with `dig`
//! and raw sockets as clients. Needs `bash scripts/deps-dns.sh`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kumo_dns::{Listener, Server, ShellConfig, XdpConfig, XdpMode, ZoneSet, XDP_OBJECT};
use tokio::sync::oneshot;

mod support;
use support::{a_query, defaults};

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the xdp tests need root (network namespaces, BPF)"
    );
}

/// Runs `f` on a thread of its own in a new network namespace with its
/// loopback up; threads and processes it starts are in it too.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    require_root();
    std::thread::spawn(move || {
        // SAFETY: unshare(2) on the calling thread only (CLONE_NEWNET).
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (Debian package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn zones(node1: Ipv4Addr) -> ZoneSet {
    let defaults = defaults();
    let mut set = ZoneSet::default();
    set.add_hosts([("node1.maas.test", node1)], &defaults)
        .unwrap();
    set
}

fn ask(sock: &UdpSocket, to: SocketAddr, query: &[u8]) -> Vec<u8> {
    sock.send_to(query, to).unwrap();
    let mut buf = [0u8; 1500];
    let (n, from) = sock.recv_from(&mut buf).expect("an answer within 2 s");
    assert_eq!(from, to);
    buf[..n].to_vec()
}

fn answer_address(reply: &[u8]) -> Option<Ipv4Addr> {
    use hickory_proto::op::Message;
    use hickory_proto::rr::RData;
    let m = Message::from_vec(reply).expect("a well-formed reply");
    m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// Waits until `interface` shows an XDP program (`attached`) or none.
fn wait_xdp(interface: &str, attached: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = ip(&["link", "show", "dev", interface]).contains("prog/xdp");
        if shown == attached {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{interface}: xdp program {} after 10 s",
            if attached {
                "not attached"
            } else {
                "still attached"
            }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The server for node1 at `node1`, listening on 127.0.0.1 with XDP on
/// `interface`, on a runtime of its own (in the calling thread's
/// namespace); stopped by [`Serving::stop`].
struct Serving {
    rt: tokio::runtime::Runtime,
    server: Arc<Server>,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), kumo_dns::Error>>,
}

impl Serving {
    fn start(node1: Ipv4Addr, interface: &str) -> Serving {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = Arc::new(Server::new(&zones(node1)).unwrap());
        let listener = rt
            .block_on(Listener::bind("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let addr = listener.local_addr();
        let config = ShellConfig {
            udp_workers: 1,
            xdp: Some(XdpConfig {
                interface: interface.into(),
                mode: XdpMode::Auto,
            }),
            ..ShellConfig::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = rt.spawn(listener.serve(server.clone(), config, async {
            let _ = stopped.await;
        }));
        Serving {
            rt,
            server,
            addr,
            stop,
            serving,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.rt.block_on(self.serving).unwrap().unwrap();
    }
}

/// A query answered once by the server is answered again in XDP, byte
/// for byte the same under the new id; NXDOMAIN too; a reload is never
/// answered stale; responses sent to the server are left to it (dropped
/// and counted); stopping detaches the program.
#[test]
fn repeated_queries_are_answered_in_xdp_as_the_server_would() {
    in_private_netns(|| {
        let serving = Serving::start(Ipv4Addr::new(10, 0, 0, 1), "lo");
        let (server, addr) = (serving.server.clone(), serving.addr);
        wait_xdp("lo", true);

        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let first = ask(&sock, addr, &a_query(1, "node1.maas.test."));
        assert_eq!(answer_address(&first), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            server.counters().offloaded,
            0,
            "the first answer is the server's"
        );

        let again = ask(&sock, addr, &a_query(2, "node1.maas.test."));
        assert_eq!(server.counters().offloaded, 1, "the second is sent in xdp");
        assert_eq!(&again[..2], &2u16.to_be_bytes());
        assert_eq!(
            again[2..],
            first[2..],
            "xdp sends the server's reply as it was"
        );
        // The name's case is the asker's: other bytes, another entry.
        let upper = ask(&sock, addr, &a_query(3, "NODE1.maas.test."));
        assert_eq!(server.counters().offloaded, 1);
        assert_eq!(answer_address(&upper), Some(Ipv4Addr::new(10, 0, 0, 1)));

        let missing = ask(&sock, addr, &a_query(4, "nope.maas.test."));
        let missing_again = ask(&sock, addr, &a_query(5, "nope.maas.test."));
        assert_eq!(missing_again[2..], missing[2..]);
        assert_eq!(missing[3] & 0x0f, 3, "NXDOMAIN");
        let c = server.counters();
        assert_eq!((c.offloaded, c.nxdomain), (2, 2));
        assert_eq!(c.queries, 5);

        // Reloaded: the very next query gets the new address, from the server.
        server.reload(&zones(Ipv4Addr::new(10, 0, 0, 9))).unwrap();
        let reloaded = ask(&sock, addr, &a_query(6, "node1.maas.test."));
        assert_eq!(answer_address(&reloaded), Some(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(server.counters().offloaded, 2);
        let reloaded_again = ask(&sock, addr, &a_query(7, "node1.maas.test."));
        assert_eq!(reloaded_again[2..], reloaded[2..]);
        assert_eq!(server.counters().offloaded, 3);

        // dig without its per-query cookie asks the same bytes each time.
        for _ in 0..2 {
            let out = Command::new("dig")
                .args([&format!("@{}", addr.ip()), "-p", &addr.port().to_string()])
                .args(["+nocookie", "+tries=1", "+time=2", "node1.maas.test", "A"])
                .output()
                .expect("run dig (bash scripts/deps-dns.sh)");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("status: NOERROR"), "{text}");
            assert!(text.contains("10.0.0.9"), "{text}");
            assert!(text.contains("flags: qr aa rd"), "{text}");
        }
        assert_eq!(server.counters().offloaded, 4);

        // A response sent to the server is not answered in xdp: the
        // server drops it and counts it.
        let mut response = a_query(8, "node1.maas.test.");
        response[2] |= 0x80;
        sock.send_to(&response, addr).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.counters().malformed_dropped == 0 {
            assert!(Instant::now() < deadline, "the response was not counted");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.counters().offloaded, 4);

        serving.stop();
        wait_xdp("lo", false);
    });
}

/// Where the program cannot be attached, the listener serves from its
/// socket alone.
#[test]
fn without_the_interface_the_socket_answers_alone() {
    in_private_netns(|| {
        let serving = Serving::start(Ipv4Addr::new(10, 0, 0, 1), "kumo-absent0");
        let (server, addr) = (serving.server.clone(), serving.addr);
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for id in 1..=3 {
            let r = ask(&sock, addr, &a_query(id, "node1.maas.test."));
            assert_eq!(answer_address(&r), Some(Ipv4Addr::new(10, 0, 0, 1)));
        }
        let c = server.counters();
        assert_eq!((c.answered, c.offloaded), (3, 0));
        serving.stop();
    });
}

/// The committed object is what `scripts/build-xdp.sh` builds from
/// `xdp/answer.bpf.c` (clang is deterministic for one version).
#[test]
fn the_xdp_object_is_built_from_its_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile_dir();
    let status = Command::new("bash")
        .arg(root.join("scripts/build-xdp.sh"))
        .arg(&out)
        .status()
        .expect("run scripts/build-xdp.sh");
    assert!(
        status.success(),
        "scripts/build-xdp.sh failed (is clang installed? bash scripts/deps-dns.sh)"
    );
    let built = std::fs::read(out.join("answer.bpf.o")).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(
        built == XDP_OBJECT,
        "crates/dns/xdp/answer.bpf.o is not what its source builds to: run bash scripts/build-xdp.sh and commit it"
    );
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kumo-dns-xdp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

// The program itself, run on frames by the kernel (BPF_PROG_TEST_RUN):
// the rewrite checked field by field, and mutated or random frames.

const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT_PORT: u16 = 40000;

fn ip_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame from the client to the server's port 53.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&SERVER_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
    ip.extend_from_slice(&CLIENT_IP.octets());
    ip.extend_from_slice(&SERVER_IP.octets());
    let sum = ip_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The program loaded for 10.0.0.1:53 with the server's reply to one
/// query in its map: (program, server, query, reply).
fn loaded() -> &'static (kumo_dns::XdpAnswers, Server, Vec<u8>, Vec<u8>) {
    static LOADED: std::sync::OnceLock<(kumo_dns::XdpAnswers, Server, Vec<u8>, Vec<u8>)> =
        std::sync::OnceLock::new();
    LOADED.get_or_init(|| {
        require_root();
        let server = Server::new(&zones(Ipv4Addr::new(10, 0, 0, 7))).unwrap();
        let query = a_query(7, "node1.maas.test.");
        let kumo_dns::Outcome::Reply(reply) = server.handle(&query, kumo_dns::Transport::Udp)
        else {
            panic!("the server answers the query")
        };
        let xdp = kumo_dns::XdpAnswers::load(
            "test",
            std::net::SocketAddrV4::new(SERVER_IP, 53),
            server.generation(),
        )
        .unwrap();
        xdp.remember(server.generation(), &query, &reply);
        (xdp, server, query, reply)
    })
}

#[test]
fn the_program_rewrites_a_known_query_into_the_servers_reply() {
    use kumo_dns::XdpVerdict;
    let (xdp, _, query, reply) = loaded();
    let mut asked = query.clone();
    asked[..2].copy_from_slice(&0xbeefu16.to_be_bytes());
    let (verdict, out) = xdp.run_on(&frame(&asked)).unwrap();
    assert_eq!(verdict, XdpVerdict::Tx);
    assert_eq!(out.len(), 14 + 20 + 8 + reply.len());
    assert_eq!(&out[0..6], &CLIENT_MAC, "to the client's MAC");
    assert_eq!(&out[6..12], &SERVER_MAC, "from the server's MAC");
    assert_eq!(&out[12..14], &[8, 0]);
    let ip = &out[14..34];
    assert_eq!(ip[0], 0x45);
    assert_eq!(
        u16::from_be_bytes([ip[2], ip[3]]) as usize,
        20 + 8 + reply.len()
    );
    assert_eq!(ip[9], 17);
    assert_eq!(&ip[12..16], &SERVER_IP.octets());
    assert_eq!(&ip[16..20], &CLIENT_IP.octets());
    assert_eq!(ip_checksum(ip), 0, "the IP header checksum is right");
    let udp = &out[34..42];
    assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 53);
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), CLIENT_PORT);
    assert_eq!(
        u16::from_be_bytes([udp[4], udp[5]]) as usize,
        8 + reply.len()
    );
    assert_eq!(&out[42..44], &0xbeefu16.to_be_bytes(), "the asker's id");
    assert_eq!(&out[44..], &reply[2..], "the server's reply after the id");
}

#[test]
fn the_program_passes_what_it_does_not_know() {
    use kumo_dns::XdpVerdict;
    let (xdp, _, query, _) = loaded();
    let pass = |f: Vec<u8>| assert_eq!(xdp.run_on(&f).unwrap().0, XdpVerdict::Pass);
    // Another name.
    pass(frame(&a_query(7, "node2.maas.test.")));
    // Another port, another address.
    let mut f = frame(query);
    f[36..38].copy_from_slice(&5353u16.to_be_bytes());
    pass(f);
    let mut f = frame(query);
    f[30] = 99;
    pass(f);
    // A response (QR) with the same question.
    let mut r = query.clone();
    r[2] |= 0x80;
    pass(frame(&r));
    // IPv6 ethertype, IP options, a fragment.
    let mut f = frame(query);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    pass(f);
    let mut f = frame(query);
    f[14] = 0x46;
    pass(f);
    let mut f = frame(query);
    f[20] = 0x20;
    pass(f);
    // Padding after the IP packet, a UDP length that lies.
    let mut f = frame(query);
    f.extend_from_slice(&[0; 8]);
    pass(f);
    let mut f = frame(query);
    f[39] += 1;
    pass(f);
}

#[test]
fn a_reload_makes_the_programs_answers_stale() {
    use kumo_dns::{Offload, XdpVerdict};
    require_root();
    let server = Server::new(&zones(Ipv4Addr::new(10, 0, 0, 7))).unwrap();
    let query = a_query(7, "node1.maas.test.");
    let kumo_dns::Outcome::Reply(reply) = server.handle(&query, kumo_dns::Transport::Udp) else {
        panic!("the server answers the query")
    };
    let xdp =
        kumo_dns::XdpAnswers::load("test", std::net::SocketAddrV4::new(SERVER_IP, 53), 0).unwrap();
    xdp.remember(0, &query, &reply);
    assert_eq!(xdp.run_on(&frame(&query)).unwrap().0, XdpVerdict::Tx);
    xdp.reloaded(1);
    assert_eq!(xdp.run_on(&frame(&query)).unwrap().0, XdpVerdict::Pass);
    // Remembered under the old generation (answered before the reload): never sent.
    xdp.remember(0, &query, &reply);
    assert_eq!(xdp.run_on(&frame(&query)).unwrap().0, XdpVerdict::Pass);
    xdp.remember(1, &query, &reply);
    assert_eq!(xdp.run_on(&frame(&query)).unwrap().0, XdpVerdict::Tx);
    let c = xdp.counters();
    assert_eq!((c.answered, c.missed), (2, 2));
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]

    /// Bytes of a known query's frame changed or cut: the program passes
    /// the frame on, or answers it with exactly the server's reply when
    /// what it matched (the DNS bytes after the id, the address and the
    /// port) was left whole.
    #[test]
    fn a_changed_frame_is_passed_or_answered_exactly(
        changes in proptest::collection::vec((0usize..80, proptest::num::u8::ANY), 1..4),
        // The kernel refuses frames shorter than an Ethernet header.
        cut in proptest::option::of(14usize..80),
    ) {
        use kumo_dns::XdpVerdict;
        let (xdp, _, query, reply) = loaded();
        let original = frame(query);
        let mut f = original.clone();
        for (at, byte) in &changes {
            if let Some(b) = f.get_mut(*at) {
                *b = *byte;
            }
        }
        if let Some(n) = cut {
            f.truncate(n);
        }
        let (verdict, out) = xdp.run_on(&f).unwrap();
        match verdict {
            XdpVerdict::Pass => {}
            XdpVerdict::Tx => {
                proptest::prop_assert_eq!(f.len(), original.len());
                proptest::prop_assert_eq!(&f[44..], &original[44..], "matched other DNS bytes");
                proptest::prop_assert_eq!(&f[30..34], &original[30..34], "matched another address");
                proptest::prop_assert_eq!(&f[36..38], &original[36..38], "matched another port");
                proptest::prop_assert_eq!(&out[44..], &reply[2..]);
                proptest::prop_assert_eq!(ip_checksum(&out[14..34]), 0);
            }
            other => proptest::prop_assert!(false, "verdict {other:?}"),
        }
    }

    /// Random frames are passed on.
    #[test]
    fn random_frames_are_passed(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), ipv4 in proptest::bool::ANY) {
        use kumo_dns::XdpVerdict;
        let (xdp, _, _, _) = loaded();
        let mut f = bytes;
        if ipv4 && f.len() >= 14 {
            f[12..14].copy_from_slice(&[8, 0]);
        }
        // The kernel refuses frames shorter than an Ethernet header.
        if f.len() >= 14 {
            proptest::prop_assert_eq!(xdp.run_on(&f).unwrap().0, XdpVerdict::Pass);
        }
    }
}
