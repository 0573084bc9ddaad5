//! The real `dig` (and `dnsmasq` as an independent upstream) against the
//! real server on 127.0.0.1, unprivileged ports.
//! Needs `bash scripts/deps-dns.sh` (Debian bind9-dnsutils, dnsmasq-base).

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use kumo_dns::{Listener, Record, RecordData, Server, ShellConfig, Zone, ZoneSet};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

mod support;
use support::{a_query, defaults};

fn require(program: &str, package: &str) {
    let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).exists());
    assert!(
        found,
        "{program} not found: install the Debian package {package} (bash scripts/deps-dns.sh)"
    );
}

fn zones(hosts: &[(&str, Ipv4Addr)], upstreams: Vec<SocketAddr>) -> ZoneSet {
    let mut set = ZoneSet {
        zones: vec![Zone {
            name: "maas.test".into(),
            ttl: 30,
            soa: defaults().soa,
            records: vec![
                Record {
                    name: "www".into(),
                    ttl: None,
                    data: RecordData::Cname("node1.maas.test".into()),
                },
                Record {
                    name: "big".into(),
                    ttl: None,
                    data: RecordData::Txt(vec!["x".repeat(250)]),
                },
                Record {
                    name: "big".into(),
                    ttl: None,
                    data: RecordData::Txt(vec!["y".repeat(250)]),
                },
                Record {
                    name: "big".into(),
                    ttl: None,
                    data: RecordData::Txt(vec!["z".repeat(250)]),
                },
            ],
        }],
        upstreams,
    };
    set.add_hosts(hosts.iter().copied(), &defaults()).unwrap();
    set
}

/// A server on 127.0.0.1 (UDP and TCP, one free port) in its own runtime.
struct Running {
    addr: SocketAddr,
    server: Arc<Server>,
    stop: Option<oneshot::Sender<()>>,
    rt: Runtime,
}

impl Running {
    fn start(set: &ZoneSet, config: ShellConfig) -> Running {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = Arc::new(Server::new(set).unwrap());
        let listener = rt
            .block_on(Listener::bind("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let addr = listener.local_addr();
        let (stop, stopped) = oneshot::channel();
        rt.spawn(listener.serve(server.clone(), config, async {
            let _ = stopped.await;
        }));
        Running {
            addr,
            server,
            stop: Some(stop),
            rt,
        }
    }

    fn dig(&self, args: &[&str]) -> String {
        dig(self.addr, args)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let rt = std::mem::replace(
            &mut self.rt,
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap(),
        );
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    require("dig", "bind9-dnsutils");
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn status(out: &str) -> &str {
    let line = out
        .lines()
        .find(|l| l.contains("->>HEADER<<-"))
        .unwrap_or_else(|| panic!("no header in dig output: {out}"));
    line.split("status: ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
}

fn flags(out: &str) -> Vec<&str> {
    let line = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no flags in dig output: {out}"));
    line[";; flags:".len()..]
        .split(';')
        .next()
        .unwrap()
        .split_whitespace()
        .collect()
}

const NODE1: (&str, Ipv4Addr) = ("node1.maas.test", Ipv4Addr::new(10, 0, 0, 5));

#[test]
fn dig_gets_forward_and_reverse_answers_over_udp_and_tcp() {
    let s = Running::start(&zones(&[NODE1], vec![]), ShellConfig::default());
    assert_eq!(s.dig(&["node1.maas.test", "A", "+short"]), "10.0.0.5\n");
    assert_eq!(s.dig(&["NODE1.Maas.TEST", "A", "+short"]), "10.0.0.5\n");
    assert_eq!(
        s.dig(&["node1.maas.test", "A", "+short", "+tcp"]),
        "10.0.0.5\n"
    );
    assert_eq!(s.dig(&["-x", "10.0.0.5", "+short"]), "node1.maas.test.\n");
    assert_eq!(
        s.dig(&["-x", "10.0.0.5", "+short", "+tcp"]),
        "node1.maas.test.\n"
    );
    assert_eq!(
        s.dig(&["www.maas.test", "A", "+short"]),
        "node1.maas.test.\n10.0.0.5\n"
    );

    let full = s.dig(&["node1.maas.test", "A"]);
    assert_eq!(status(&full), "NOERROR");
    assert!(flags(&full).contains(&"aa"), "{full}");

    let nx = s.dig(&["nope.maas.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    assert!(flags(&nx).contains(&"aa"), "{nx}");
    assert!(
        nx.contains("IN\tSOA\tns1.maas.test. hostmaster.maas.test. 1"),
        "{nx}"
    );
    let nx = s.dig(&["nope.maas.test", "A", "+tcp"]);
    assert_eq!(status(&nx), "NXDOMAIN");

    let nodata = s.dig(&["node1.maas.test", "AAAA"]);
    assert_eq!(status(&nodata), "NOERROR");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");

    // No upstreams: everything else is refused.
    assert_eq!(status(&s.dig(&["example.org", "A"])), "REFUSED");

    let c = s.server.counters();
    assert_eq!(c.nxdomain, 2);
    assert_eq!(c.queries, c.answered);
}

#[test]
fn truncated_over_udp_then_dig_retries_over_tcp() {
    let s = Running::start(&zones(&[NODE1], vec![]), ShellConfig::default());
    let tc = s.dig(&["big.maas.test", "TXT", "+noedns", "+ignore"]);
    assert!(flags(&tc).contains(&"tc"), "{tc}");
    assert!(tc.contains("ANSWER: 0"), "{tc}");
    // dig's default: on TC it asks again over TCP.
    let full = s.dig(&["big.maas.test", "TXT", "+noedns", "+short"]);
    assert_eq!(full.lines().count(), 3, "{full}");
    // With EDNS (dig advertises 1232) it fits over UDP.
    let edns = s.dig(&["big.maas.test", "TXT"]);
    assert!(!flags(&edns).contains(&"tc"), "{edns}");
    assert!(edns.contains("ANSWER: 3"), "{edns}");
    assert!(edns.contains("EDNS: version: 0"), "{edns}");
}

#[test]
fn a_reload_is_visible_on_the_next_query() {
    let s = Running::start(&zones(&[NODE1], vec![]), ShellConfig::default());
    assert_eq!(status(&s.dig(&["node2.maas.test", "A"])), "NXDOMAIN");
    s.server
        .reload(&zones(
            &[NODE1, ("node2.maas.test", Ipv4Addr::new(10, 0, 0, 6))],
            vec![],
        ))
        .unwrap();
    assert_eq!(s.dig(&["node2.maas.test", "A", "+short"]), "10.0.0.6\n");
    assert_eq!(s.dig(&["-x", "10.0.0.6", "+short"]), "node2.maas.test.\n");
}

#[test]
fn forwards_to_a_second_kumo_dns_over_udp_and_tcp() {
    let mut up_set = zones(&[], vec![]);
    up_set.zones[0].records.clear();
    up_set.zones[0].name = "upstream.test".into();
    up_set.zones[0].records.push(Record {
        name: "@".into(),
        ttl: None,
        data: RecordData::A(Ipv4Addr::new(192, 0, 2, 7)),
    });
    let upstream = Running::start(&up_set, ShellConfig::default());
    let s = Running::start(
        &zones(&[NODE1], vec![upstream.addr]),
        ShellConfig::default(),
    );
    assert_eq!(s.dig(&["upstream.test", "A", "+short"]), "192.0.2.7\n");
    assert_eq!(
        s.dig(&["UPSTREAM.test", "A", "+short", "+tcp"]),
        "192.0.2.7\n"
    );
    let nx = s.dig(&["nope.upstream.test", "A"]);
    assert_eq!(status(&nx), "NXDOMAIN");
    // Our own names are still ours.
    assert_eq!(s.dig(&["node1.maas.test", "A", "+short"]), "10.0.0.5\n");
    let c = s.server.counters();
    assert_eq!((c.forwarded, c.forward_failed, c.answered), (3, 0, 1));
    assert_eq!(upstream.server.counters().answered, 3);
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn forwards_to_dnsmasq() {
    require("dnsmasq", "dnsmasq-base");
    let port = free_port();
    let dnsmasq = Dnsmasq(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--user=root",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--address=/upstream.test/192.0.2.7",
                &format!("--port={port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start dnsmasq"),
    );
    let up: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    // Wait until dnsmasq answers at all.
    let ready = (0..50).any(|_| {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+time=1",
                "+tries=1",
                "+short",
                "upstream.test",
            ])
            .output()
            .unwrap();
        let ok = String::from_utf8_lossy(&out.stdout) == "192.0.2.7\n";
        if !ok {
            std::thread::sleep(Duration::from_millis(100));
        }
        ok
    });
    assert!(ready, "dnsmasq on port {port} never answered");

    let s = Running::start(&zones(&[NODE1], vec![up]), ShellConfig::default());
    assert_eq!(s.dig(&["upstream.test", "A", "+short"]), "192.0.2.7\n");
    assert_eq!(
        s.dig(&["a.b.upstream.test", "A", "+short", "+tcp"]),
        "192.0.2.7\n"
    );
    assert_eq!(s.dig(&["node1.maas.test", "A", "+short"]), "10.0.0.5\n");
    assert_eq!(s.server.counters().forwarded, 2);
    drop(dnsmasq);
}

#[test]
fn unreachable_upstreams_give_servfail() {
    // Nothing listens on `closed`; `silent` takes queries and never answers.
    let closed: SocketAddr = (Ipv4Addr::LOCALHOST, free_port()).into();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = ShellConfig {
        forward_timeout: Duration::from_millis(300),
        ..ShellConfig::default()
    };

    let refused = Running::start(&zones(&[NODE1], vec![closed]), config.clone());
    assert_eq!(status(&refused.dig(&["example.org", "A"])), "SERVFAIL");
    assert_eq!(
        status(&refused.dig(&["example.org", "A", "+tcp"])),
        "SERVFAIL"
    );

    let timeout = Running::start(
        &zones(
            &[NODE1],
            vec![
                silent.local_addr().unwrap(),
                silent_tcp.local_addr().unwrap(),
            ],
        ),
        config,
    );
    assert_eq!(status(&timeout.dig(&["example.org", "A"])), "SERVFAIL");
    assert_eq!(
        status(&timeout.dig(&["example.org", "A", "+tcp"])),
        "SERVFAIL"
    );
    let mut buf = [0u8; 512];
    let (n, _) = silent.recv_from(&mut buf).unwrap();
    assert!(n > 12, "the silent upstream was asked");

    for s in [&refused, &timeout] {
        let c = s.server.counters();
        assert_eq!((c.forwarded, c.forward_failed), (2, 2));
    }
}

/// Many queries at once from one socket, junk among them: the UDP threads
/// take them in batches (calling in helpers when a batch is full), every
/// query gets its own answer under its own id, and the junk is dropped
/// and counted.
#[test]
fn a_burst_gets_one_answer_per_query_and_junk_is_dropped() {
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RData;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const N: usize = 2000;
    let names: Vec<String> = (0..250).map(|i| format!("h{i}.maas.test")).collect();
    let hosts: Vec<(&str, Ipv4Addr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), Ipv4Addr::new(10, 0, 1, i as u8)))
        .collect();
    let config = ShellConfig {
        udp_workers: 3,
        ..ShellConfig::default()
    };
    let s = Running::start(&zones(&hosts, vec![]), config);
    // Query i asks for h(i % 250), or for a missing name when i % 7 == 0.
    let name = |i: usize| {
        if i.is_multiple_of(7) {
            format!("missing{i}.maas.test")
        } else {
            names[i % 250].clone()
        }
    };

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(s.addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let receiver = {
        let (client, received) = (client.try_clone().unwrap(), received.clone());
        std::thread::spawn(move || {
            let mut replies = Vec::new();
            let mut buf = [0u8; 4096];
            while replies.len() < N {
                let n = client.recv(&mut buf).expect("a reply for every query");
                replies.push(Message::from_vec(&buf[..n]).unwrap());
                received.store(replies.len(), Ordering::Release);
            }
            // Nothing more comes: the junk is not answered.
            client
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(client.recv(&mut buf).is_err(), "a reply to junk");
            replies
        })
    };
    for i in 0..N {
        // At most 200 in flight: the socket buffers hold that anywhere.
        while i - received.load(Ordering::Acquire) >= 200 {
            std::thread::yield_now();
        }
        match i {
            500 => client.send(b"junk").unwrap(),
            1000 => client.send(&[]).unwrap(),
            // A response, not a query.
            1500 => client
                .send(&[0, 1, 0x84, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap(),
            _ => 0,
        };
        client.send(&a_query(i as u16, &name(i))).unwrap();
    }

    let mut seen = vec![false; N];
    for reply in receiver.join().unwrap() {
        let i = usize::from(reply.metadata.id);
        assert!(!seen[i], "two replies under id {i}");
        seen[i] = true;
        let asked = name(i);
        assert_eq!(reply.queries[0].name().to_ascii(), format!("{asked}."));
        if i.is_multiple_of(7) {
            assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
        } else {
            let RData::A(a) = &reply.answers[0].data else {
                panic!("not an A record: {reply:?}")
            };
            assert_eq!(a.0, Ipv4Addr::new(10, 0, 1, (i % 250) as u8));
        }
    }
    let c = s.server.counters();
    assert_eq!(
        (c.queries, c.answered, c.malformed_dropped),
        (N as u64 + 3, N as u64, 3)
    );
    assert_eq!(
        c.nxdomain,
        (0..N).filter(|i| i.is_multiple_of(7)).count() as u64
    );
}

/// When `serve` returns its UDP threads are gone and the port is free;
/// when it is dropped instead (runtime shut down) they end too.
#[test]
fn stopping_ends_the_udp_threads_and_frees_the_port() {
    let set = zones(&[NODE1], vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Arc::new(Server::new(&set).unwrap());
    let listener = rt
        .block_on(Listener::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = rt.spawn(listener.serve(server, ShellConfig::default(), async {
        let _ = stopped.await;
    }));
    assert_eq!(dig(addr, &["node1.maas.test", "A", "+short"]), "10.0.0.5\n");
    stop.send(()).unwrap();
    rt.block_on(serving).unwrap().unwrap();
    UdpSocket::bind(addr).expect("the UDP port is free once serve returns");
    std::net::TcpListener::bind(addr).expect("and the TCP port");

    // Dropped mid-serve: the threads are told to stop and let go of the socket.
    let server = Arc::new(Server::new(&set).unwrap());
    let listener = rt
        .block_on(Listener::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let addr = listener.local_addr();
    rt.spawn(listener.serve(server, ShellConfig::default(), std::future::pending()));
    assert_eq!(dig(addr, &["node1.maas.test", "A", "+short"]), "10.0.0.5\n");
    rt.shutdown_timeout(Duration::from_secs(5));
    let freed = (0..100).any(|_| {
        let ok = UdpSocket::bind(addr).is_ok();
        if !ok {
            std::thread::sleep(Duration::from_millis(20));
        }
        ok
    });
    assert!(
        freed,
        "the UDP port is still bound after the runtime shut down"
    );
}
