//! `Server::handle` on arbitrary bytes over both transports,
//! `Forward::relay` on the same bytes as an upstream's reply, and the UDP
//! reply cache (`Server::handle_udp_into`), which must answer exactly as
//! `handle` does, twice in a row (the second time from the cache).
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run query` in crates/dns.
#![no_main]

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::sync::OnceLock;

use kumo_dns::{
    AnswerCache, Handled, Outcome, Record, RecordData, Server, Soa, Transport, Zone, ZoneDefaults,
    ZoneSet,
};
use libfuzzer_sys::fuzz_target;

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let soa = Soa {
            mname: "ns1.fuzz.test".into(),
            rname: "hostmaster.fuzz.test".into(),
            serial: 1,
            refresh: 60,
            retry: 60,
            expire: 600,
            minimum: 5,
        };
        let rec = |name: &str, data| Record {
            name: name.into(),
            ttl: None,
            data,
        };
        let mut set = ZoneSet {
            zones: vec![Zone {
                name: "fuzz.test".into(),
                ttl: 30,
                soa: soa.clone(),
                records: vec![
                    rec("www", RecordData::Cname("node1.fuzz.test".into())),
                    rec("l1", RecordData::Cname("l2.fuzz.test".into())),
                    rec("l2", RecordData::Cname("l1.fuzz.test".into())),
                    rec("out", RecordData::Cname("example.org".into())),
                    rec("big", RecordData::Txt(vec!["x".repeat(255); 4])),
                    rec(
                        "@",
                        RecordData::Mx {
                            preference: 1,
                            exchange: "node1.fuzz.test".into(),
                        },
                    ),
                    rec(
                        "_s._tcp",
                        RecordData::Srv {
                            priority: 1,
                            weight: 1,
                            port: 1,
                            target: "node1.fuzz.test".into(),
                        },
                    ),
                ],
            }],
            upstreams: vec!["192.0.2.1:53".parse().unwrap()],
        };
        set.add_hosts(
            [("node1.fuzz.test", Ipv4Addr::new(10, 0, 0, 5))],
            &ZoneDefaults { ttl: 30, soa },
        )
        .unwrap();
        Server::new(&set).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let s = server();
    for t in [Transport::Udp, Transport::Tcp] {
        match s.handle(data, t) {
            Outcome::Reply(r) => {
                assert!(r.len() >= 12);
                if t == Transport::Udp {
                    assert!(r.len() <= kumo_dns::MAX_UDP_PAYLOAD);
                }
            }
            Outcome::Forward(f) => {
                let q = f.query(0x4242);
                assert_eq!(q[2..], data[2..]);
                let _ = f.relay(data, u16::from_be_bytes([data[0], data[1]]));
                let _ = s.forward_failed(&f);
            }
            Outcome::Drop => {}
        }
    }
    thread_local! {
        static CACHE: RefCell<(AnswerCache, Vec<u8>)> = RefCell::new((AnswerCache::new(64), Vec::new()));
    }
    CACHE.with_borrow_mut(|(cache, buf)| {
        let fresh = s.handle(data, Transport::Udp);
        for _ in 0..2 {
            match (s.handle_udp_into(cache, data, buf), &fresh) {
                (Handled::Reply, Outcome::Reply(r)) => assert_eq!(buf, r),
                (Handled::Forward(_), Outcome::Forward(_)) | (Handled::Drop, Outcome::Drop) => {}
                (h, o) => panic!("cached {h:?}, fresh {o:?}"),
            }
        }
    });
    let c = s.counters();
    assert_eq!(c.queries, c.answered + c.forwarded + c.malformed_dropped);
});
