use std::net::Ipv4Addr;

use proptest::prelude::*;

use crate::zone::{parse_absolute, Catalog};
use crate::{Error, Record, RecordData, Soa, Zone, ZoneDefaults, ZoneSet};

pub(crate) fn soa() -> Soa {
    Soa {
        mname: "ns1.maas.test".into(),
        rname: "hostmaster.maas.test".into(),
        serial: 7,
        refresh: 3600,
        retry: 600,
        expire: 86400,
        minimum: 60,
    }
}

pub(crate) fn defaults() -> ZoneDefaults {
    ZoneDefaults {
        ttl: 300,
        soa: soa(),
    }
}

fn zone(name: &str, records: Vec<Record>) -> ZoneSet {
    ZoneSet {
        zones: vec![Zone {
            name: name.into(),
            ttl: 300,
            soa: soa(),
            records,
        }],
        upstreams: vec![],
    }
}

fn rec(name: &str, data: RecordData) -> Record {
    Record {
        name: name.into(),
        ttl: None,
        data,
    }
}

fn a(name: &str, ip: [u8; 4]) -> Record {
    rec(name, RecordData::A(ip.into()))
}

fn cname(name: &str, target: &str) -> Record {
    rec(name, RecordData::Cname(target.into()))
}

fn compile_err(set: &ZoneSet) -> String {
    Catalog::compile(set).unwrap_err().to_string()
}

#[test]
fn cname_beside_other_data_is_rejected_naming_the_record() {
    let set = zone(
        "maas.test",
        vec![a("www", [10, 0, 0, 1]), cname("www", "node1.maas.test")],
    );
    assert_eq!(
        compile_err(&set),
        "zone maas.test: record www.maas.test. CNAME node1.maas.test.: \
         a CNAME cannot coexist with other data at the name (A)"
    );
}

#[test]
fn two_cnames_at_a_name_are_rejected() {
    let set = zone(
        "maas.test",
        vec![cname("www", "a.maas.test"), cname("www", "b.maas.test")],
    );
    assert!(
        compile_err(&set).contains("more than one CNAME"),
        "{}",
        compile_err(&set)
    );
}

#[test]
fn cname_at_the_apex_is_rejected() {
    let set = zone("maas.test", vec![cname("@", "elsewhere.test")]);
    assert_eq!(
        compile_err(&set),
        "zone maas.test: record @ CNAME elsewhere.test: a CNAME cannot be at the zone apex"
    );
}

#[test]
fn invalid_names_are_rejected_naming_the_record() {
    let cases = [
        (a("bad name", [1, 2, 3, 4]), "has the character ' '"),
        (a("-lead", [1, 2, 3, 4]), "starts or ends with '-'"),
        (a("a..b", [1, 2, 3, 4]), "empty label"),
        (a(&"x".repeat(64), [1, 2, 3, 4]), "longer than 63 bytes"),
        (a("other.test.", [1, 2, 3, 4]), "outside the zone"),
        (cname("c", "bad_target!"), "target: label"),
        (
            a(&["abcdefghij"; 25].join("."), [1, 2, 3, 4]),
            "longer than 255 bytes",
        ),
    ];
    for (record, want) in cases {
        let shown = record.to_string();
        let err = compile_err(&zone("maas.test", vec![record]));
        assert!(
            err.starts_with(&format!("zone maas.test: record {shown}: ")) && err.contains(want),
            "{err:?} should name the record and say {want:?}"
        );
    }
}

#[test]
fn other_conflicts_are_rejected() {
    let dup = zone(
        "maas.test",
        vec![a("n", [1, 1, 1, 1]), a("n", [1, 1, 1, 1])],
    );
    assert!(compile_err(&dup).contains("duplicate record"));

    let mut ttl = zone(
        "maas.test",
        vec![a("n", [1, 1, 1, 1]), a("n", [1, 1, 1, 2])],
    );
    ttl.zones[0].records[1].ttl = Some(5);
    assert!(compile_err(&ttl).contains("TTL 5 differs from 300"));

    let ns = zone(
        "maas.test",
        vec![rec("sub", RecordData::Ns("ns.other.test".into()))],
    );
    assert!(compile_err(&ns).contains("only allowed at the apex"));

    let txt = zone(
        "maas.test",
        vec![rec("t", RecordData::Txt(vec!["x".repeat(256)]))],
    );
    assert!(compile_err(&txt).contains("longer than 255"));

    let mut twice = zone("maas.test", vec![]);
    twice.zones.push(twice.zones[0].clone());
    twice.zones[1].name = "MAAS.test.".into();
    assert_eq!(compile_err(&twice), "zone MAAS.test.: defined twice");

    let mut nested = zone("maas.test", vec![a("n.sub", [1, 1, 1, 1])]);
    nested
        .zones
        .push(zone("sub.maas.test", vec![]).zones.remove(0));
    assert!(compile_err(&nested).contains("belongs to the zone sub.maas.test."));

    let mut bad_soa = zone("maas.test", vec![]);
    bad_soa.zones[0].soa.mname = "ns 1".into();
    assert!(compile_err(&bad_soa).starts_with("zone maas.test: soa mname"));

    let mut up = zone("maas.test", vec![]);
    up.upstreams.push("127.0.0.1:0".parse().unwrap());
    assert!(matches!(Catalog::compile(&up), Err(Error::Upstream(_))));
}

#[test]
fn valid_zone_compiles_with_default_apex_ns_and_empty_non_terminals() {
    let set = zone(
        "Maas.Test.",
        vec![
            a("node1", [10, 0, 0, 5]),
            a("a.b.c", [10, 0, 0, 6]),
            a("node1.maas.test.", [10, 0, 0, 7]),
            rec(
                "_http._tcp",
                RecordData::Srv {
                    priority: 1,
                    weight: 1,
                    port: 80,
                    target: "node1.maas.test".into(),
                },
            ),
        ],
    );
    let cat = Catalog::compile(&set).unwrap();
    let z = &cat.zones[&parse_absolute("maas.test").unwrap()];
    let apex = &z.nodes[&parse_absolute("maas.test").unwrap()];
    assert_eq!(apex.len(), 2, "SOA and NS at the apex: {apex:?}");
    assert_eq!(
        z.nodes[&parse_absolute("node1.maas.test").unwrap()][&1].len(),
        2
    );
    assert!(z
        .empty_non_terminals
        .contains(&parse_absolute("b.c.maas.test").unwrap()));
    assert!(z
        .empty_non_terminals
        .contains(&parse_absolute("_tcp.maas.test").unwrap()));
}

#[test]
fn add_hosts_builds_forward_and_reverse_zones() {
    let mut set = ZoneSet::default();
    set.add_hosts(
        [
            ("node1.maas.test", Ipv4Addr::new(10, 0, 0, 5)),
            ("node2.maas.test", Ipv4Addr::new(10, 0, 1, 6)),
            ("db.other.test.", Ipv4Addr::new(10, 0, 0, 7)),
        ],
        &defaults(),
    )
    .unwrap();
    let names: Vec<&str> = set.zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "maas.test.",
            "0.0.10.in-addr.arpa.",
            "1.0.10.in-addr.arpa.",
            "other.test."
        ]
    );
    assert_eq!(
        set.zones[1].records,
        vec![
            rec(
                "5.0.0.10.in-addr.arpa.",
                RecordData::Ptr("node1.maas.test.".into())
            ),
            rec(
                "7.0.0.10.in-addr.arpa.",
                RecordData::Ptr("db.other.test.".into())
            ),
        ]
    );
    Catalog::compile(&set).unwrap();
}

#[test]
fn add_hosts_merges_into_existing_zones() {
    let mut set = zone("maas.test", vec![cname("www", "node1.maas.test")]);
    set.zones
        .push(zone("10.in-addr.arpa", vec![]).zones.remove(0));
    set.add_hosts(
        [("node1.maas.test", Ipv4Addr::new(10, 0, 0, 5))],
        &defaults(),
    )
    .unwrap();
    assert_eq!(set.zones.len(), 2);
    assert_eq!(set.zones[0].records.len(), 2);
    assert_eq!(set.zones[1].records.len(), 1);
    Catalog::compile(&set).unwrap();

    // A host named like an existing CNAME: caught by validation.
    set.add_hosts([("www.maas.test", Ipv4Addr::new(10, 0, 0, 9))], &defaults())
        .unwrap();
    assert!(compile_err(&set).contains("record www.maas.test. CNAME"));
}

#[test]
fn add_hosts_rejects_bad_names() {
    let mut set = ZoneSet::default();
    let err = set
        .add_hosts(
            [("node 1.maas.test", Ipv4Addr::new(10, 0, 0, 5))],
            &defaults(),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "host \"node 1.maas.test\": label \"node 1\" has the character ' '"
    );
    let err = set
        .add_hosts([("single", Ipv4Addr::new(10, 0, 0, 5))], &defaults())
        .unwrap_err();
    assert!(err.to_string().contains("needs a host name and a domain"));
}

#[test]
fn zone_set_json_shape() {
    let json = r#"{
        "zones": [{"name": "maas.test", "ttl": 30,
                   "soa": {"mname": "ns1.maas.test", "rname": "hostmaster.maas.test",
                           "serial": 1, "refresh": 60, "retry": 60, "expire": 600, "minimum": 5},
                   "records": [{"name": "node1", "type": "A", "data": "10.0.0.5"},
                               {"name": "www", "ttl": 5, "type": "CNAME", "data": "node1.maas.test"},
                               {"name": "_x._tcp", "type": "SRV",
                                "data": {"priority": 1, "weight": 2, "port": 3, "target": "node1.maas.test"}}]}],
        "upstreams": ["192.0.2.1:53"]
    }"#;
    let set: ZoneSet = serde_json::from_str(json).unwrap();
    assert_eq!(
        set.zones[0].records[1].data,
        RecordData::Cname("node1.maas.test".into())
    );
    let back: ZoneSet = serde_json::from_str(&serde_json::to_string(&set).unwrap()).unwrap();
    assert_eq!(back, set);
    Catalog::compile(&set).unwrap();
}

fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9_])?"
}

proptest! {
    /// Valid names survive parse → display → parse and the wire codec,
    /// compared case-insensitively.
    #[test]
    fn generated_names_round_trip(labels in proptest::collection::vec(label(), 1..5)) {
        let text = labels.join(".");
        let name = parse_absolute(&text).unwrap();
        prop_assert_eq!(name.to_string(), format!("{}.", text.to_lowercase()));
        prop_assert_eq!(parse_absolute(&name.to_string()).unwrap(), name.clone());
        use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
        let wire = name.to_bytes().unwrap();
        let decoded = hickory_proto::rr::Name::from_bytes(&wire).unwrap();
        prop_assert_eq!(decoded.to_lowercase(), name);
    }

    /// Hosts with generated names always build a valid zone set.
    #[test]
    fn generated_hosts_compile(
        hosts in proptest::collection::btree_map(
            (label(), label()).prop_map(|(h, d)| format!("{h}.{d}.test").to_lowercase()),
            any::<[u8; 4]>(),
            1..20,
        )
    ) {
        let mut set = ZoneSet::default();
        let mut seen = std::collections::HashSet::new();
        let hosts: Vec<_> = hosts
            .into_iter()
            .filter(|(_, ip)| seen.insert(*ip))
            .map(|(n, ip)| (n, Ipv4Addr::from(ip)))
            .collect();
        set.add_hosts(hosts, &defaults()).unwrap();
        Catalog::compile(&set).unwrap();
    }
}
