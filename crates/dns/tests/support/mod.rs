//! What the kumo-dns suites share.

#![allow(dead_code)] // each suite uses its own part

use kumo_dns::{Soa, ZoneDefaults};

pub fn defaults() -> ZoneDefaults {
    ZoneDefaults {
        ttl: 30,
        soa: Soa {
            mname: "ns1.maas.test".into(),
            rname: "hostmaster.maas.test".into(),
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 10,
        },
    }
}

/// A query for `name` (type A) under `id`, as a stub resolver sends it.
pub fn a_query(id: u16, name: &str) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}
