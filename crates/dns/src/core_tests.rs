use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use crate::zone_tests::{defaults, soa};
use crate::{
    AnswerCache, Counters, Handled, Outcome, Record, RecordData, Server, Transport, Zone, ZoneSet,
};

const UPSTREAM: &str = "192.0.2.53:53";

fn rec(name: &str, data: RecordData) -> Record {
    Record {
        name: name.into(),
        ttl: None,
        data,
    }
}

fn zone_set() -> ZoneSet {
    let mut set = ZoneSet {
        zones: vec![Zone {
            name: "maas.test".into(),
            ttl: 300,
            soa: soa(),
            records: vec![
                rec("www", RecordData::Cname("web.maas.test".into())),
                rec("web", RecordData::Cname("node1.maas.test".into())),
                rec("ext", RecordData::Cname("www.example.org".into())),
                rec("cross", RecordData::Cname("db.other.test".into())),
                rec("gone", RecordData::Cname("missing.maas.test".into())),
                rec("loop1", RecordData::Cname("loop2.maas.test".into())),
                rec("loop2", RecordData::Cname("loop1.maas.test".into())),
                rec("v6", RecordData::Aaaa("2001:db8::5".parse().unwrap())),
                rec("a.b", RecordData::A(Ipv4Addr::new(10, 0, 0, 99))),
                rec(
                    "@",
                    RecordData::Mx {
                        preference: 10,
                        exchange: "node1.maas.test".into(),
                    },
                ),
                rec(
                    "big",
                    RecordData::Txt(vec!["x".repeat(200), "y".repeat(200)]),
                ),
                rec("big", RecordData::Txt(vec!["z".repeat(200)])),
                rec("big", RecordData::Txt(vec!["w".repeat(200)])),
            ],
        }],
        upstreams: vec![UPSTREAM.parse().unwrap()],
    };
    set.add_hosts(
        [
            ("node1.maas.test", Ipv4Addr::new(10, 0, 0, 5)),
            ("db.other.test", Ipv4Addr::new(10, 0, 1, 7)),
        ],
        &defaults(),
    )
    .unwrap();
    set
}

fn server() -> Server {
    Server::new(&zone_set()).unwrap()
}

fn query_msg(name: &str, rtype: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m
}

fn ask_msg(s: &Server, m: &Message, t: Transport) -> Message {
    match s.handle(&m.to_vec().unwrap(), t) {
        Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ask(s: &Server, name: &str, rtype: RecordType) -> Message {
    ask_msg(s, &query_msg(name, rtype), Transport::Udp)
}

fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

#[test]
fn answers_a_authoritatively() {
    let s = server();
    let r = ask(&s, "node1.maas.test.", RecordType::A);
    assert_eq!(r.metadata.id, 0x1234);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative);
    assert!(r.metadata.recursion_desired && r.metadata.recursion_available);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&r), ["node1.maas.test. A 10.0.0.5"]);
    assert_eq!(r.answers[0].ttl, 300);
    assert_eq!(r.queries.len(), 1);
}

#[test]
fn names_match_case_insensitively_and_keep_the_askers_case() {
    let s = server();
    let r = ask(&s, "NoDe1.MAAS.Test.", RecordType::A);
    assert_eq!(answers(&r), ["NoDe1.MAAS.Test. A 10.0.0.5"]);
    assert_eq!(r.queries[0].name().to_string(), "NoDe1.MAAS.Test.");
}

#[test]
fn answers_reverse_ptr() {
    let r = ask(&server(), "5.0.0.10.in-addr.arpa.", RecordType::PTR);
    assert!(r.metadata.authoritative);
    assert_eq!(answers(&r), ["5.0.0.10.in-addr.arpa. PTR node1.maas.test."]);
}

#[test]
fn nxdomain_carries_the_soa() {
    let s = server();
    let r = ask(&s, "nope.maas.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative);
    assert!(r.answers.is_empty());
    assert_eq!(r.authorities.len(), 1);
    let soa = &r.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name.to_string(), "maas.test.");
    assert_eq!(soa.ttl, 60, "negative TTL is min(SOA TTL, minimum)");
    let c = s.counters();
    assert_eq!((c.queries, c.answered, c.nxdomain), (1, 1, 1));
}

#[test]
fn nodata_for_missing_types_and_empty_non_terminals() {
    let s = server();
    for (name, t) in [
        ("node1.maas.test.", RecordType::AAAA),
        ("b.maas.test.", RecordType::A),
        ("_tcp.nowhere.maas.test.", RecordType::SRV),
    ] {
        let r = ask(&s, name, t);
        let want = if name.starts_with("_tcp") {
            ResponseCode::NXDomain
        } else {
            ResponseCode::NoError
        };
        assert_eq!(r.metadata.response_code, want, "{name}");
        assert!(r.answers.is_empty(), "{name}");
        assert_eq!(r.authorities[0].record_type(), RecordType::SOA, "{name}");
    }
}

#[test]
fn apex_answers_soa_ns_and_mx_with_glue() {
    let s = server();
    let r = ask(&s, "maas.test.", RecordType::SOA);
    assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    let r = ask(&s, "maas.test.", RecordType::NS);
    assert_eq!(answers(&r), ["maas.test. NS ns1.maas.test."]);
    let r = ask(&s, "maas.test.", RecordType::MX);
    assert_eq!(answers(&r), ["maas.test. MX 10 node1.maas.test."]);
    assert_eq!(r.additionals.len(), 1);
    assert_eq!(
        r.additionals[0].data,
        RData::A(Ipv4Addr::new(10, 0, 0, 5).into())
    );
    let r = ask(&s, "maas.test.", RecordType::ANY);
    assert_eq!(r.answers.len(), 3, "{:?}", answers(&r));
}

#[test]
fn cname_chains_are_chased_within_our_zones() {
    let s = server();
    let r = ask(&s, "WWW.maas.test.", RecordType::A);
    assert_eq!(
        answers(&r),
        [
            "WWW.maas.test. CNAME web.maas.test.",
            "web.maas.test. CNAME node1.maas.test.",
            "node1.maas.test. A 10.0.0.5",
        ]
    );
    // Into another of our zones.
    let r = ask(&s, "cross.maas.test.", RecordType::A);
    assert_eq!(answers(&r)[1], "db.other.test. A 10.0.1.7");
    // Asking for the CNAME itself does not chase.
    let r = ask(&s, "www.maas.test.", RecordType::CNAME);
    assert_eq!(answers(&r), ["www.maas.test. CNAME web.maas.test."]);
    // Outside our zones: the client's resolver follows it.
    let r = ask(&s, "ext.maas.test.", RecordType::A);
    assert_eq!(answers(&r), ["ext.maas.test. CNAME www.example.org."]);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    // To a name we know does not exist: NXDOMAIN with the CNAME (RFC 6604).
    let r = ask(&s, "gone.maas.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(r.answers.len(), 1);
    // Loops end.
    let r = ask(&s, "loop1.maas.test.", RecordType::A);
    assert_eq!(r.answers.len(), 2);
}

#[test]
fn outside_our_zones_is_forwarded() {
    let s = server();
    let q = query_msg("www.example.org.", RecordType::A);
    let bytes = q.to_vec().unwrap();
    let Outcome::Forward(f) = s.handle(&bytes, Transport::Udp) else {
        panic!("expected forward")
    };
    assert_eq!(f.upstreams(), [UPSTREAM.parse::<SocketAddr>().unwrap()]);
    let sent = f.query(0xbeef);
    assert_eq!(sent[..2], [0xbe, 0xef]);
    assert_eq!(sent[2..], bytes[2..]);

    let mut up = Message::response(0xbeef, OpCode::Query);
    up.add_query(q.queries[0].clone());
    let reply = up.to_vec().unwrap();
    let relayed = f.relay(&reply, 0xbeef).expect("matching reply");
    assert_eq!(relayed[..2], [0x12, 0x34]);
    assert_eq!(relayed[2..], reply[2..]);
    // Wrong id, wrong question, a query, junk: ignored.
    assert!(f.relay(&reply, 0xbeee).is_none());
    let mut other = Message::response(0xbeef, OpCode::Query);
    other.add_query(query_msg("evil.example.org.", RecordType::A).queries[0].clone());
    assert!(f.relay(&other.to_vec().unwrap(), 0xbeef).is_none());
    assert!(f.relay(&sent, 0xbeef).is_none());
    assert!(f.relay(&[0xbe, 0xef, 0x80], 0xbeef).is_none());

    let servfail = Message::from_vec(&s.forward_failed(&f)).unwrap();
    assert_eq!(servfail.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(servfail.metadata.id, 0x1234);
    assert_eq!(
        s.counters(),
        Counters {
            queries: 1,
            forwarded: 1,
            forward_failed: 1,
            ..Counters::default()
        }
    );
}

#[test]
fn without_upstreams_other_names_are_refused() {
    let mut set = zone_set();
    set.upstreams.clear();
    let s = Server::new(&set).unwrap();
    let r = ask(&s, "www.example.org.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.recursion_available);
}

#[test]
fn unsupported_requests_get_error_codes() {
    let s = server();
    assert_eq!(
        ask(&s, "maas.test.", RecordType::AXFR)
            .metadata
            .response_code,
        ResponseCode::Refused
    );
    let mut two = query_msg("node1.maas.test.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("v6.maas.test.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        ask_msg(&s, &two, Transport::Udp).metadata.response_code,
        ResponseCode::FormErr
    );
    let mut none = query_msg("node1.maas.test.", RecordType::A);
    none.queries.clear();
    assert_eq!(
        ask_msg(&s, &none, Transport::Udp).metadata.response_code,
        ResponseCode::FormErr
    );
    let mut notify = query_msg("maas.test.", RecordType::SOA);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask_msg(&s, &notify, Transport::Udp).metadata.response_code,
        ResponseCode::NotImp
    );
}

#[test]
fn edns_is_echoed_and_unknown_versions_get_badvers() {
    let s = server();
    let mut q = query_msg("node1.maas.test.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    q.set_edns(e.clone());
    let r = ask_msg(&s, &q, Transport::Udp);
    assert_eq!(r.edns.as_ref().unwrap().max_payload(), crate::EDNS_PAYLOAD);
    assert_eq!(r.answers.len(), 1);

    e.set_version(1);
    q.set_edns(e);
    let r = ask_msg(&s, &q, Transport::Udp);
    // BADVERS and BADSIG share the code 16; hickory decodes it as BADSIG.
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert_eq!(r.edns.unwrap().version(), 0);

    // Without EDNS in the query, none in the reply.
    assert!(ask(&s, "node1.maas.test.", RecordType::A).edns.is_none());
}

#[test]
fn udp_replies_beyond_the_payload_size_are_truncated() {
    let s = server();
    let q = query_msg("big.maas.test.", RecordType::TXT);
    let r = ask_msg(&s, &q, Transport::Udp);
    assert!(r.metadata.truncation, "over 512 bytes without EDNS");
    assert!(r.answers.is_empty());
    assert_eq!(r.queries.len(), 1);

    let r = ask_msg(&s, &q, Transport::Tcp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 3);

    let mut big = q.clone();
    let mut e = Edns::new();
    e.set_max_payload(1232);
    big.set_edns(e);
    let r = ask_msg(&s, &big, Transport::Udp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 3);
}

#[test]
fn malformed_queries_are_dropped_and_counted() {
    let s = server();
    assert!(matches!(s.handle(&[], Transport::Udp), Outcome::Drop));
    assert!(matches!(s.handle(&[0; 11], Transport::Udp), Outcome::Drop));
    // Header claims a question that is not there.
    let mut junk = vec![0u8; 12];
    junk[5] = 1;
    assert!(matches!(s.handle(&junk, Transport::Tcp), Outcome::Drop));
    // A response is not a query.
    let mut resp = query_msg("node1.maas.test.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(matches!(
        s.handle(&resp.to_vec().unwrap(), Transport::Udp),
        Outcome::Drop
    ));
    let c = s.counters();
    assert_eq!((c.queries, c.malformed_dropped, c.answered), (4, 4, 0));
}

#[test]
fn reload_takes_effect_on_the_next_query_and_bad_sets_are_refused() {
    let s = server();
    assert_eq!(
        ask(&s, "node9.maas.test.", RecordType::A)
            .metadata
            .response_code,
        ResponseCode::NXDomain
    );
    let mut set = zone_set();
    set.add_hosts(
        [("node9.maas.test", Ipv4Addr::new(10, 0, 0, 9))],
        &defaults(),
    )
    .unwrap();
    s.reload(&set).unwrap();
    assert_eq!(
        answers(&ask(&s, "node9.maas.test.", RecordType::A)),
        ["node9.maas.test. A 10.0.0.9"]
    );
    let mut bad = set.clone();
    bad.zones[0]
        .records
        .push(rec("node9", RecordData::Cname("x.test".into())));
    assert!(s.reload(&bad).is_err());
    assert_eq!(ask(&s, "node9.maas.test.", RecordType::A).answers.len(), 1);
}

#[test]
fn cached_replies_equal_fresh_ones_under_the_askers_id_and_count_alike() {
    let fresh = server();
    let cached = server();
    let mut cache = AnswerCache::new(16);
    let queries: Vec<Vec<u8>> = [
        ("node1.maas.test.", RecordType::A),
        ("NODE1.maas.test.", RecordType::A),
        ("nope.maas.test.", RecordType::A),
        ("5.0.0.10.in-addr.arpa.", RecordType::PTR),
        ("big.maas.test.", RecordType::TXT),
    ]
    .iter()
    .map(|(n, t)| query_msg(n, *t).to_vec().unwrap())
    .collect();
    for round in 0u16..3 {
        for q in &queries {
            let mut q = q.clone();
            q[..2].copy_from_slice(&(round * 100 + 7).to_be_bytes());
            let (Outcome::Reply(a), Outcome::Reply(b)) = (
                fresh.handle(&q, Transport::Udp),
                cached.handle_udp_cached(&mut cache, &q),
            ) else {
                panic!("expected replies");
            };
            assert_eq!(a, b, "round {round}");
        }
    }
    assert_eq!(cache.hits(), 10);
    assert_eq!(fresh.counters(), cached.counters());
    // Forwards and drops are not cached.
    let fwd = query_msg("example.org.", RecordType::A).to_vec().unwrap();
    for _ in 0..2 {
        assert!(matches!(
            cached.handle_udp_cached(&mut cache, &fwd),
            Outcome::Forward(_)
        ));
        assert!(matches!(
            // A response, not a query.
            cached.handle_udp_cached(&mut cache, &[0, 0, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Outcome::Drop
        ));
    }
    assert_eq!(cache.hits(), 10);
}

#[test]
fn replies_into_a_reused_buffer_are_whole_replies_and_nothing_else() {
    let s = server();
    let mut cache = AnswerCache::new(16);
    // Stale bytes from an earlier, longer reply must not survive.
    let mut buf = vec![0xee; 900];
    for name in ["big.maas.test.", "node1.maas.test.", "node1.maas.test."] {
        let q = query_msg(name, RecordType::A).to_vec().unwrap();
        let Outcome::Reply(fresh) = s.handle(&q, Transport::Udp) else {
            panic!("expected a reply");
        };
        assert!(matches!(
            s.handle_udp_into(&mut cache, &q, &mut buf),
            Handled::Reply
        ));
        assert_eq!(buf, fresh, "{name}");
    }
    assert_eq!(cache.hits(), 1);
    let fwd = query_msg("example.org.", RecordType::A).to_vec().unwrap();
    assert!(matches!(
        s.handle_udp_into(&mut cache, &fwd, &mut buf),
        Handled::Forward(_)
    ));
    assert!(matches!(
        s.handle_udp_into(&mut cache, b"junk", &mut buf),
        Handled::Drop
    ));
}

#[test]
fn the_cache_forgets_replies_when_the_zones_are_reloaded() {
    let s = server();
    let mut cache = AnswerCache::new(16);
    let q = query_msg("node9.maas.test.", RecordType::A)
        .to_vec()
        .unwrap();
    let rcode = |o: Outcome| match o {
        Outcome::Reply(b) => Message::from_vec(&b).unwrap().metadata.response_code,
        other => panic!("expected a reply, got {other:?}"),
    };
    assert_eq!(
        rcode(s.handle_udp_cached(&mut cache, &q)),
        ResponseCode::NXDomain
    );
    assert_eq!(
        rcode(s.handle_udp_cached(&mut cache, &q)),
        ResponseCode::NXDomain
    );
    let mut set = zone_set();
    set.add_hosts(
        [("node9.maas.test", Ipv4Addr::new(10, 0, 0, 9))],
        &defaults(),
    )
    .unwrap();
    s.reload(&set).unwrap();
    assert_eq!(
        rcode(s.handle_udp_cached(&mut cache, &q)),
        ResponseCode::NoError
    );
    assert_eq!(cache.hits(), 1);
}

#[test]
fn a_full_cache_starts_over_and_a_zero_cache_stores_nothing() {
    let s = server();
    let q = |n: &str| query_msg(n, RecordType::A).to_vec().unwrap();
    let mut small = AnswerCache::new(1);
    for n in ["node1.maas.test.", "v6.maas.test.", "node1.maas.test."] {
        s.handle_udp_cached(&mut small, &q(n));
    }
    assert_eq!(small.hits(), 0);
    let mut none = AnswerCache::new(0);
    for _ in 0..3 {
        s.handle_udp_cached(&mut none, &q("node1.maas.test."));
    }
    assert_eq!(none.hits(), 0);
}

fn check_invariants(c: Counters) -> Result<(), TestCaseError> {
    prop_assert_eq!(c.queries, c.answered + c.forwarded + c.malformed_dropped);
    prop_assert!(c.nxdomain <= c.answered);
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let s = server();
        for t in [Transport::Udp, Transport::Tcp] {
            if let Outcome::Reply(r) = s.handle(&bytes, t) {
                prop_assert!(Message::from_vec(&r).is_ok());
                if t == Transport::Udp {
                    prop_assert!(r.len() <= crate::MAX_UDP_PAYLOAD);
                }
            }
        }
        check_invariants(s.counters())?;
    }

    /// Valid queries with bytes flipped reach deeper than random bytes.
    #[test]
    fn mutated_queries_never_panic(
        name in prop::sample::select(vec![
            "node1.maas.test.", "www.maas.test.", "big.maas.test.", "maas.test.",
            "5.0.0.10.in-addr.arpa.", "nope.maas.test.", "example.org.",
        ]),
        rtype in any::<u16>(),
        edns in proptest::option::of(any::<u16>()),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
    ) {
        let s = server();
        let mut q = query_msg(name, RecordType::from(rtype));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            q.set_edns(e);
        }
        let mut bytes = q.to_vec().unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        match s.handle(&bytes, Transport::Udp) {
            Outcome::Reply(r) => {
                let m = Message::from_vec(&r).unwrap();
                prop_assert_eq!(m.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            }
            Outcome::Forward(f) => {
                prop_assert_eq!(f.query(7)[2..].to_vec(), bytes[2..].to_vec());
            }
            Outcome::Drop => {}
        }
        check_invariants(s.counters())?;
    }
}
