//! `Server::handle` on arbitrary bytes, several packets per input against
//! one server so state-dependent paths (offers, leases) are reached too.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run handle` in crates/dhcp.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, UNIX_EPOCH};

use kumo_dhcp::{
    BootConfig, HostReservation, MacAddr, RecvMeta, Server, ServerConfig, SubnetConfig,
};
use libfuzzer_sys::fuzz_target;

fn server() -> Server {
    let mut c = ServerConfig::new(
        Ipv4Addr::new(10, 0, 0, 2),
        vec![SubnetConfig {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 0, 2)],
            domain: Some("fuzz.internal".into()),
            dynamic_ranges: vec![Ipv4Addr::new(10, 0, 0, 100)..=Ipv4Addr::new(10, 0, 0, 103)],
            reserved_ranges: vec![],
            lease_secs: 600,
            hosts: vec![HostReservation {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
                ip: Ipv4Addr::new(10, 0, 0, 10),
                hostname: Some("node1".into()),
            }],
        }],
    );
    c.boot = Some(BootConfig {
        next_server: Ipv4Addr::new(10, 0, 0, 2),
        bios_file: "undionly.kpxe".into(),
        uefi_file: "snp.efi".into(),
        ipxe_script_url: "http://10.0.0.2:5248/ipxe/boot.ipxe".into(),
    });
    Server::new(c, vec![]).expect("valid fuzz config")
}

fuzz_target!(|data: &[u8]| {
    let mut s = server();
    let meta = RecvMeta {
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        local_addr: Some(Ipv4Addr::new(10, 0, 0, 2)),
    };
    // Each packet is prefixed by a 2-byte length and a byte of seconds to
    // advance the clock by, so sequences (DISCOVER, REQUEST, expiry) happen.
    let mut now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut rest = data;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 3);
        now += Duration::from_secs(u64::from(rest[2]) * 10);
        let (packet, tail) = rest[3..].split_at(len);
        s.handle(packet, meta, now);
        s.expire(now);
        rest = tail;
    }
});
