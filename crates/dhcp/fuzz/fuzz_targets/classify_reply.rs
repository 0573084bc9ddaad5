//! `classify_reply` (the rogue-server probe's parser) on arbitrary bytes.
//! The xid is taken from the packet itself so most inputs get past the
//! transaction check into the option guard and dhcproto's decoders.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run classify_reply` in crates/dhcp.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use kumo_dhcp::{classify_reply, ProbeReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let xid = data
        .get(4..8)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let from = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 66), 67);
    let own = [Ipv4Addr::new(10, 0, 0, 2)];
    if let ProbeReply::Offer(o) = classify_reply(data, from, xid, &own) {
        assert!(
            !own.contains(&o.server_id),
            "our own server reported as rogue"
        );
    }
});
