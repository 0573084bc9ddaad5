//! The protocol rules, driven with real encoded packets and an injected clock.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use proptest::prelude::*;

use super::*;
use crate::{BootConfig, HostReservation, RateLimit, SubnetConfig};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const HOST_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0x01]);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn mac(n: u16) -> MacAddr {
    let [a, b] = n.to_be_bytes();
    MacAddr([0x52, 0x54, 0, 0xaa, a, b])
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(
        SERVER,
        vec![
            SubnetConfig {
                network: ip(0),
                prefix_len: 24,
                gateway: Some(ip(1)),
                dns_servers: vec![ip(2)],
                domain: Some("maas.internal".into()),
                dynamic_ranges: vec![ip(100)..=ip(109)],
                reserved_ranges: vec![ip(105)..=ip(105)],
                lease_secs: 600,
                hosts: vec![HostReservation {
                    mac: HOST_MAC,
                    ip: HOST_IP,
                    hostname: Some("node1".into()),
                }],
            },
            SubnetConfig {
                network: Ipv4Addr::new(10, 1, 0, 0),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
                dns_servers: vec![],
                domain: None,
                dynamic_ranges: vec![Ipv4Addr::new(10, 1, 0, 100)..=Ipv4Addr::new(10, 1, 0, 120)],
                reserved_ranges: vec![],
                lease_secs: 3600,
                hosts: vec![],
            },
        ],
    );
    c.boot = Some(BootConfig {
        next_server: SERVER,
        bios_file: "undionly.kpxe".into(),
        uefi_file: "snp.efi".into(),
        ipxe_script_url: "http://10.0.0.2:5248/ipxe/boot.ipxe".into(),
    });
    c.unknown_client_rate = RateLimit {
        burst: 1000,
        per_second: 1000,
    };
    c.max_pending_offer_percent = 100;
    c
}

fn server() -> Server {
    Server::new(config(), vec![]).unwrap()
}

fn meta() -> RecvMeta {
    RecvMeta {
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        local_addr: Some(SERVER),
    }
}

fn packet(kind: MessageType, m: MacAddr, f: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut msg = Message::default();
    msg.set_chaddr(&m.0).set_xid(0x1234_5678);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    f(&mut msg);
    msg.to_vec().unwrap()
}

fn requested(ip: Ipv4Addr) -> impl FnOnce(&mut Message) {
    move |m: &mut Message| {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    }
}

/// The single reply among `actions`: destination, broadcast, decoded message.
fn reply(actions: &[Action]) -> (SocketAddrV4, bool, Message) {
    let sends: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                to,
                broadcast,
                payload,
            } => Some((
                *to,
                *broadcast,
                Message::decode(&mut Decoder::new(payload)).unwrap(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(sends.len(), 1, "expected one reply in {actions:?}");
    sends.into_iter().next().unwrap()
}

fn no_reply(actions: &[Action]) {
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Send { .. })),
        "unexpected reply in {actions:?}"
    );
}

fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

/// The BOOTP file field; dhcproto keeps the terminating NUL when decoding.
fn fname(m: &Message) -> String {
    m.fname_str()
        .unwrap()
        .unwrap()
        .trim_end_matches('\0')
        .to_string()
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

/// DISCOVER then REQUEST; returns the ACKed address.
fn lease(s: &mut Server, m: MacAddr, now: SystemTime) -> Ipv4Addr {
    let (_, _, offer) = reply(&s.handle(&packet(MessageType::Discover, m, |_| {}), meta(), now));
    assert_eq!(kind(&offer), MessageType::Offer);
    let (_, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, m, requested(offer.yiaddr())),
        meta(),
        now,
    ));
    assert_eq!(
        kind(&ack),
        MessageType::Ack,
        "{:?}",
        opt(&ack, OptionCode::Message)
    );
    ack.yiaddr()
}

#[test]
fn discover_gets_a_broadcast_offer_from_the_dynamic_range_with_subnet_options() {
    let mut s = server();
    let actions = s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0());
    let (to, broadcast, offer) = reply(&actions);
    assert_eq!(
        (to, broadcast),
        (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), true)
    );
    assert_eq!(kind(&offer), MessageType::Offer);
    assert_eq!(offer.yiaddr(), ip(100));
    assert_eq!(offer.xid(), 0x1234_5678);
    assert_eq!(offer.chaddr(), &mac(1).0);
    assert_eq!(
        opt(&offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opt(&offer, OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opt(&offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(1)]))
    );
    assert_eq!(
        opt(&offer, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![ip(2)]))
    );
    assert_eq!(
        opt(&offer, OptionCode::DomainName),
        Some(&DhcpOption::DomainName("maas.internal".into()))
    );
    assert_eq!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    // Plain clients get no boot file.
    assert_eq!(offer.fname(), None);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Persist(_))),
        "offers are not persisted"
    );
    assert_eq!(s.counters().offered, 1);
}

#[test]
fn request_is_acked_and_persisted_before_the_reply() {
    let mut s = server();
    s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0());
    let actions = s.handle(
        &packet(MessageType::Request, mac(1), requested(ip(100))),
        meta(),
        t0(),
    );
    let persist = actions.iter().position(|a| matches!(a, Action::Persist(LeaseChange::Bind(l)) if l.ip == ip(100) && l.mac == mac(1)));
    let send = actions
        .iter()
        .position(|a| matches!(a, Action::Send { .. }));
    assert!(persist.unwrap() < send.unwrap(), "{actions:?}");
    let (_, _, ack) = reply(&actions);
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), ip(100));
    assert_eq!(
        opt(&ack, OptionCode::Renewal),
        Some(&DhcpOption::Renewal(300))
    );
    assert_eq!(s.leases().len(), 1);
    assert_eq!(s.counters().acked, 1);
}

#[test]
fn known_host_gets_its_static_address_and_hostname() {
    let mut s = server();
    let (_, _, offer) = reply(&s.handle(
        &packet(MessageType::Discover, HOST_MAC, |_| {}),
        meta(),
        t0(),
    ));
    assert_eq!(offer.yiaddr(), HOST_IP);
    assert_eq!(
        opt(&offer, OptionCode::Hostname),
        Some(&DhcpOption::Hostname("node1".into()))
    );
    assert_eq!(lease(&mut s, HOST_MAC, t0()), HOST_IP);
}

#[test]
fn nak_rules() {
    let mut s = server();
    let other = lease(&mut s, mac(2), t0());
    let cases = [
        (HOST_MAC, ip(100), "known host asking for a dynamic address"),
        (
            mac(1),
            HOST_IP,
            "unknown client asking for a known host's address",
        ),
        (mac(1), ip(50), "address outside every range"),
        (mac(1), ip(105), "address in a reserved range"),
        (mac(1), ip(1), "the gateway"),
        (mac(1), other, "another client's live lease"),
        (mac(1), Ipv4Addr::new(192, 168, 9, 9), "wrong network"),
    ];
    for (m, addr, what) in cases {
        // INIT-REBOOT: requested address, no server id.
        let p = packet(MessageType::Request, m, |msg| {
            msg.opts_mut().insert(DhcpOption::RequestedIpAddress(addr));
        });
        let actions = s.handle(&p, meta(), t0());
        let (to, broadcast, nak) = reply(&actions);
        assert_eq!(kind(&nak), MessageType::Nak, "{what}");
        assert_eq!(
            (to, broadcast),
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), true),
            "{what}"
        );
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED, "{what}");
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Persist(_))),
            "{what}"
        );
    }
    assert_eq!(s.counters().naked, cases.len() as u64);
    // A free in-range address with no offer is fine (offers are not persisted across restarts).
    let (_, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, mac(1), requested(ip(103))),
        meta(),
        t0(),
    ));
    assert_eq!(kind(&ack), MessageType::Ack);
}

#[test]
fn request_for_another_server_releases_our_offer() {
    let mut s = server();
    s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0());
    let p = packet(MessageType::Request, mac(1), |m| {
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 200)));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 3)));
    });
    no_reply(&s.handle(&p, meta(), t0()));
    assert_eq!(s.counters().dropped_other_server, 1);
    // The held address is free again for the next client.
    assert_eq!(lease(&mut s, mac(2), t0()), ip(100));
}

#[test]
fn offers_hold_their_address_briefly() {
    let mut s = server();
    let (_, _, a) = reply(&s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0()));
    let (_, _, b) = reply(&s.handle(&packet(MessageType::Discover, mac(2), |_| {}), meta(), t0()));
    assert_ne!(a.yiaddr(), b.yiaddr());
    // Same client asking again gets the same offer.
    let (_, _, a2) = reply(&s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0()));
    assert_eq!(a.yiaddr(), a2.yiaddr());
    let later = t0() + OFFER_HOLD + Duration::from_secs(1);
    s.expire(later);
    // mac(1)'s offer lapsed, but the address is still its sticky one... only
    // once it held a lease; an unanswered offer leaves no claim.
    let (_, _, c) = reply(&s.handle(
        &packet(MessageType::Request, mac(3), requested(a.yiaddr())),
        meta(),
        later,
    ));
    assert_eq!(kind(&c), MessageType::Ack);
}

#[test]
fn leases_are_sticky_per_mac() {
    let mut s = server();
    let first = lease(&mut s, mac(1), t0());
    // Released: others get other addresses first, the client gets it back.
    let rel = packet(MessageType::Release, mac(1), |m| {
        m.set_ciaddr(first);
        m.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    });
    let actions = s.handle(&rel, meta(), t0());
    assert!(actions.contains(&Action::Persist(LeaseChange::Free {
        mac: mac(1),
        ip: first
    })));
    no_reply(&actions);
    assert_ne!(lease(&mut s, mac(2), t0()), first);
    assert_eq!(lease(&mut s, mac(1), t0()), first);
    // Expired: same.
    let later = t0() + Duration::from_secs(601);
    s.expire(later);
    assert_ne!(lease(&mut s, mac(3), later), first);
    assert_eq!(lease(&mut s, mac(1), later), first);
}

#[test]
fn renewal_is_unicast_to_the_client_and_extends_the_lease() {
    let mut s = server();
    let addr = lease(&mut s, mac(1), t0());
    let later = t0() + Duration::from_secs(300);
    let p = packet(MessageType::Request, mac(1), |m| {
        m.set_ciaddr(addr);
    });
    let actions = s.handle(&p, meta(), later);
    let (to, broadcast, ack) = reply(&actions);
    assert_eq!((to, broadcast), (SocketAddrV4::new(addr, 68), false));
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.ciaddr(), addr);
    assert_eq!(s.leases()[0].expires(), later + Duration::from_secs(600));
}

#[test]
fn decline_quarantines_the_address() {
    let mut s = server();
    let addr = lease(&mut s, mac(1), t0());
    let actions = s.handle(
        &packet(MessageType::Decline, mac(1), requested(addr)),
        meta(),
        t0(),
    );
    assert!(actions.contains(&Action::Persist(LeaseChange::Free {
        mac: mac(1),
        ip: addr
    })));
    no_reply(&actions);
    assert_eq!(s.counters().declined, 1);
    // Nobody gets it, not even the decliner.
    assert_ne!(lease(&mut s, mac(1), t0()), addr);
    let (_, _, nak) = reply(&s.handle(
        &packet(MessageType::Request, mac(2), requested(addr)),
        meta(),
        t0(),
    ));
    assert_eq!(kind(&nak), MessageType::Nak);
    // Until the quarantine ends.
    let later = t0() + DECLINE_HOLD + Duration::from_secs(1);
    s.expire(later);
    let (_, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, mac(2), requested(addr)),
        meta(),
        later,
    ));
    assert_eq!(kind(&ack), MessageType::Ack);
    // Declining someone else's address does nothing.
    no_reply(&s.handle(
        &packet(MessageType::Decline, mac(9), requested(addr)),
        meta(),
        later,
    ));
    assert_eq!(s.counters().declined, 1);
}

#[test]
fn release_of_someone_elses_address_is_ignored() {
    let mut s = server();
    let addr = lease(&mut s, mac(1), t0());
    let actions = s.handle(
        &packet(MessageType::Release, mac(2), |m| {
            m.set_ciaddr(addr);
        }),
        meta(),
        t0(),
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Persist(_))));
    assert_eq!(s.leases().len(), 1);
}

#[test]
fn inform_gets_options_without_a_lease() {
    let mut s = server();
    let p = packet(MessageType::Inform, mac(1), |m| {
        m.set_ciaddr(ip(77));
    });
    let actions = s.handle(&p, meta(), t0());
    let (to, broadcast, ack) = reply(&actions);
    assert_eq!((to, broadcast), (SocketAddrV4::new(ip(77), 68), false));
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(opt(&ack, OptionCode::AddressLeaseTime), None);
    assert_eq!(
        opt(&ack, OptionCode::Router),
        Some(&DhcpOption::Router(vec![ip(1)]))
    );
    assert!(s.leases().is_empty());
}

#[test]
fn relayed_requests_use_the_relays_subnet_and_answer_the_relay() {
    let mut s = server();
    let relay = Ipv4Addr::new(10, 1, 0, 1);
    let from = RecvMeta {
        src: SocketAddrV4::new(relay, 67),
        local_addr: Some(SERVER),
    };
    let (to, broadcast, offer) = reply(&s.handle(
        &packet(MessageType::Discover, mac(1), |m| {
            m.set_giaddr(relay);
        }),
        from,
        t0(),
    ));
    assert_eq!((to, broadcast), (SocketAddrV4::new(relay, 67), false));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 1, 0, 100));
    assert_eq!(offer.giaddr(), relay);
    assert_eq!(
        opt(&offer, OptionCode::Router),
        Some(&DhcpOption::Router(vec![relay]))
    );
    let (to, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, mac(1), |m| {
            m.set_giaddr(relay);
            requested(offer.yiaddr())(m);
        }),
        from,
        t0(),
    ));
    assert_eq!(to, SocketAddrV4::new(relay, 67));
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(
        opt(&ack, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    // A relay on a network we do not serve gets nothing.
    no_reply(&s.handle(
        &packet(MessageType::Discover, mac(2), |m| {
            m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
        }),
        from,
        t0(),
    ));
    assert_eq!(s.counters().dropped_no_subnet, 1);
}

fn boot_reply(f: impl FnOnce(&mut Message)) -> Message {
    let mut s = server();
    reply(&s.handle(&packet(MessageType::Discover, mac(1), f), meta(), t0())).2
}

fn pxe(arch: u16) -> impl FnOnce(&mut Message) {
    move |m: &mut Message| {
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ));
        m.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture(arch)));
    }
}

#[test]
fn pxe_bios_gets_undionly_with_next_server_and_class_echoed() {
    let offer = boot_reply(pxe(0));
    assert_eq!(fname(&offer), "undionly.kpxe");
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(
        opt(&offer, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(b"undionly.kpxe".to_vec()))
    );
    assert_eq!(
        opt(&offer, OptionCode::TFTPServerName),
        Some(&DhcpOption::TFTPServerName(b"10.0.0.2".to_vec()))
    );
    assert_eq!(
        opt(&offer, OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
}

#[test]
fn pxe_uefi_gets_snp_efi() {
    for arch in [7, 9] {
        assert_eq!(fname(&boot_reply(pxe(arch))), "snp.efi", "arch {arch}");
    }
}

#[test]
fn ipxe_gets_the_http_script() {
    let offer = boot_reply(|m| {
        pxe(7)(m);
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    });
    assert_eq!(fname(&offer), "http://10.0.0.2:5248/ipxe/boot.ipxe");
    assert_eq!(offer.siaddr(), SERVER);
}

#[test]
fn unsupported_architecture_and_plain_clients_get_no_boot_file() {
    let arm = boot_reply(pxe(11));
    assert_eq!(arm.fname(), None);
    assert_eq!(arm.siaddr(), Ipv4Addr::UNSPECIFIED);
    // A PXE ROM without option 93 is BIOS.
    let old = boot_reply(|m| {
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    });
    assert_eq!(fname(&old), "undionly.kpxe");
    let plain = boot_reply(|_| {});
    assert_eq!(opt(&plain, OptionCode::BootfileName), None);
    assert_eq!(opt(&plain, OptionCode::ClassIdentifier), None);
}

#[test]
fn restart_from_the_journal_never_double_assigns() {
    let mut s = server();
    let mut journal = String::new();
    let mut record = |actions: Vec<Action>| {
        for a in actions {
            if let Action::Persist(c) = a {
                journal.push_str(&crate::encode_record(&c));
                journal.push('\n');
            }
        }
    };
    record(s.handle(&packet(MessageType::Discover, mac(1), |_| {}), meta(), t0()));
    record(s.handle(
        &packet(MessageType::Request, mac(1), requested(ip(100))),
        meta(),
        t0(),
    ));
    let mut s = Server::new(config(), crate::replay(&journal).unwrap()).unwrap();
    // Every other client gets every other address; never the leased one.
    for n in 2..20 {
        let actions = s.handle(&packet(MessageType::Discover, mac(n), |_| {}), meta(), t0());
        if let Some(Action::Send { payload, .. }) =
            actions.iter().find(|a| matches!(a, Action::Send { .. }))
        {
            let offer = Message::decode(&mut Decoder::new(payload)).unwrap();
            assert_ne!(
                offer.yiaddr(),
                ip(100),
                "offered the live lease to {}",
                mac(n)
            );
        }
    }
    let (_, _, nak) = reply(&s.handle(
        &packet(MessageType::Request, mac(2), requested(ip(100))),
        meta(),
        t0(),
    ));
    assert_eq!(kind(&nak), MessageType::Nak);
    // The owner renews it, and a fresh DISCOVER from it gets it back.
    let (_, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, mac(1), |m| {
            m.set_ciaddr(ip(100));
        }),
        meta(),
        t0(),
    ));
    assert_eq!(kind(&ack), MessageType::Ack);
    let mut s = Server::new(config(), crate::replay(&journal).unwrap()).unwrap();
    assert_eq!(lease(&mut s, mac(1), t0()), ip(100));
}

#[test]
fn unknown_discover_floods_are_rate_limited_but_known_hosts_are_not() {
    let mut c = config();
    c.unknown_client_rate = RateLimit {
        burst: 3,
        per_second: 1,
    };
    let mut s = Server::new(c, vec![]).unwrap();
    let offers = (0..20)
        .filter(|n| {
            s.handle(
                &packet(MessageType::Discover, mac(100 + n), |_| {}),
                meta(),
                t0(),
            )
            .iter()
            .any(|a| matches!(a, Action::Send { .. }))
        })
        .count();
    assert_eq!(offers, 3);
    assert_eq!(s.counters().dropped_rate_limited, 17);
    let (_, _, host) = reply(&s.handle(
        &packet(MessageType::Discover, HOST_MAC, |_| {}),
        meta(),
        t0(),
    ));
    assert_eq!(host.yiaddr(), HOST_IP);
    // Clients already holding an offer are not limited either.
    reply(&s.handle(
        &packet(MessageType::Discover, mac(100), |_| {}),
        meta(),
        t0(),
    ));
    // Tokens come back with time.
    let later = t0() + Duration::from_secs(2);
    let offers = (0..5)
        .filter(|n| {
            s.handle(
                &packet(MessageType::Discover, mac(200 + n), |_| {}),
                meta(),
                later,
            )
            .iter()
            .any(|a| matches!(a, Action::Send { .. }))
        })
        .count();
    assert_eq!(offers, 2);
}

#[test]
fn pending_offers_cannot_drain_the_pool() {
    let mut c = config();
    c.max_pending_offer_percent = 50;
    let mut s = Server::new(c, vec![]).unwrap();
    // Pool: 10 addresses, one reserved; cap = 5 pending offers.
    let offered = (0..30)
        .filter(|n| {
            s.handle(
                &packet(MessageType::Discover, mac(100 + n), |_| {}),
                meta(),
                t0(),
            )
            .iter()
            .any(|a| matches!(a, Action::Send { .. }))
        })
        .count();
    assert_eq!(offered, 5);
    assert_eq!(s.counters().dropped_pool_exhausted, 25);
    // A real client completing DORA still gets an address: an unanswered
    // offer's address is free for a REQUEST... and known hosts are unaffected.
    let (_, _, ack) = reply(&s.handle(
        &packet(MessageType::Request, mac(1), requested(ip(106))),
        meta(),
        t0(),
    ));
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(lease(&mut s, HOST_MAC, t0()), HOST_IP);
    // Once the offers lapse, new clients are served again.
    let later = t0() + OFFER_HOLD + Duration::from_secs(1);
    s.expire(later);
    assert_ne!(lease(&mut s, mac(2), later), ip(106));
}

#[test]
fn expire_logs_lapsed_leases() {
    let mut s = server();
    let addr = lease(&mut s, mac(1), t0());
    assert!(s.expire(t0() + Duration::from_secs(599)).is_empty());
    let actions = s.expire(t0() + Duration::from_secs(600));
    assert_eq!(actions.len(), 1, "{actions:?}");
    assert!(
        matches!(&actions[0], Action::Log { message, .. } if message.contains(&addr.to_string()))
    );
    // Once.
    assert!(s.expire(t0() + Duration::from_secs(700)).is_empty());
}

#[test]
fn reconfigure_drops_leases_that_no_longer_fit_and_refuses_invalid_configs() {
    let mut s = server();
    let addr = lease(&mut s, mac(1), t0());
    let mut bad = config();
    bad.subnets[0].prefix_len = 33;
    assert!(s
        .reconfigure(bad)
        .unwrap_err()
        .to_string()
        .contains("subnet 10.0.0.0/33"));
    assert_eq!(s.leases().len(), 1);
    let mut c = config();
    c.subnets[0].dynamic_ranges = vec![ip(150)..=ip(160)];
    let actions = s.reconfigure(c).unwrap();
    assert!(
        matches!(&actions[..], [Action::Log { message, .. }] if message.contains(&addr.to_string()))
    );
    assert!(s.leases().is_empty());
    assert_eq!(lease(&mut s, mac(1), t0()), ip(150));
}

#[test]
fn config_validation_names_the_problem() {
    let mut c = config();
    c.subnets[0].dynamic_ranges.push(ip(200)..=ip(100));
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("range 10.0.0.200-10.0.0.100"));
    let mut c = config();
    let dup = c.subnets[0].hosts[0].clone();
    c.subnets[1].hosts.push(dup);
    assert!(c.validate().is_err());
    let mut c = config();
    c.boot.as_mut().unwrap().ipxe_script_url = "x".repeat(200);
    assert!(c.validate().unwrap_err().to_string().contains("boot file"));
}

#[test]
fn malformed_packets_are_counted_and_dropped() {
    let mut s = server();
    let good = packet(MessageType::Discover, mac(1), |_| {});
    let mut bad_magic = good.clone();
    bad_magic[236] = 0;
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    let no_type = packet(MessageType::Discover, mac(1), |m| {
        m.opts_mut().remove(OptionCode::MessageType);
    });
    for p in [
        vec![],
        vec![1; 10],
        good[..239].to_vec(),
        bad_magic,
        reply_op,
        no_type,
    ] {
        no_reply(&s.handle(&p, meta(), t0()));
    }
    assert_eq!(s.counters().dropped_malformed, 6);
    assert_eq!(s.counters().received, 6);
}

#[test]
fn broadcast_flag_and_offer_type_are_respected() {
    let mut s = server();
    let p = packet(MessageType::Discover, mac(1), |m| {
        m.set_flags(Flags::default().set_broadcast());
    });
    let (_, _, offer) = reply(&s.handle(&p, meta(), t0()));
    assert!(offer.flags().broadcast());
    // Server-side message types from a client are ignored.
    no_reply(&s.handle(&packet(MessageType::Offer, mac(1), |_| {}), meta(), t0()));
    assert_eq!(s.counters().ignored, 1);
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Discover(u16),
    Request(u16, u8),
    Renew(u16),
    Release(u16),
    Decline(u16),
    Advance(u16),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0u16..6;
    prop_oneof![
        3 => m.clone().prop_map(Op::Discover),
        3 => (m.clone(), 98u8..112).prop_map(|(m, i)| Op::Request(m, i)),
        2 => m.clone().prop_map(Op::Renew),
        1 => m.clone().prop_map(Op::Release),
        1 => m.clone().prop_map(Op::Decline),
        2 => (0u16..700).prop_map(Op::Advance),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever clients do, and however often the server restarts from its
    /// journal, no address is ACKed to a second MAC while the first one's
    /// lease (as ACKed) is live and not given back.
    #[test]
    fn no_live_lease_is_ever_double_assigned(ops in proptest::collection::vec(op(), 1..80)) {
        let mut s = server();
        let mut journal = String::new();
        let mut now = t0();
        // ip -> (mac, expiry) as the clients were told.
        let mut owners: HashMap<Ipv4Addr, (MacAddr, SystemTime)> = HashMap::new();
        let mut held: HashMap<MacAddr, Ipv4Addr> = HashMap::new();
        for op in ops {
            let (m, p) = match op {
                Op::Advance(secs) => {
                    now += Duration::from_secs(secs.into());
                    s.expire(now);
                    continue;
                }
                Op::Restart => {
                    s = Server::new(config(), crate::replay(&journal).unwrap()).unwrap();
                    continue;
                }
                Op::Discover(m) => (mac(m), packet(MessageType::Discover, mac(m), |_| {})),
                Op::Request(m, i) => (mac(m), packet(MessageType::Request, mac(m), requested(ip(i)))),
                Op::Renew(m) => {
                    let addr = held.get(&mac(m)).copied().unwrap_or(ip(100));
                    (mac(m), packet(MessageType::Request, mac(m), |msg| { msg.set_ciaddr(addr); }))
                }
                Op::Release(m) => {
                    let Some(addr) = held.get(&mac(m)).copied() else { continue };
                    if owners.get(&addr).map(|o| o.0) == Some(mac(m)) { owners.remove(&addr); }
                    (mac(m), packet(MessageType::Release, mac(m), |msg| { msg.set_ciaddr(addr); }))
                }
                Op::Decline(m) => {
                    let Some(addr) = held.get(&mac(m)).copied() else { continue };
                    if owners.get(&addr).map(|o| o.0) == Some(mac(m)) { owners.remove(&addr); }
                    (mac(m), packet(MessageType::Decline, mac(m), requested(addr)))
                }
            };
            for a in s.handle(&p, meta(), now) {
                match a {
                    Action::Persist(c) => {
                        journal.push_str(&crate::encode_record(&c));
                        journal.push('\n');
                    }
                    Action::Send { payload, .. } => {
                        let r = Message::decode(&mut Decoder::new(&payload)).unwrap();
                        if r.opts().msg_type() == Some(MessageType::Ack) {
                            let addr = r.yiaddr();
                            if let Some((owner, until)) = owners.get(&addr) {
                                prop_assert!(*owner == m || *until <= now, "{addr} acked to {m} while leased to {owner}");
                            }
                            // Moving to a new address gives the old one back.
                            if let Some(old) = held.insert(m, addr) {
                                if old != addr && owners.get(&old).map(|o| o.0) == Some(m) { owners.remove(&old); }
                            }
                            owners.insert(addr, (m, now + Duration::from_secs(600)));
                        }
                    }
                    Action::Log { .. } => {}
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let mut s = server();
        s.handle(&bytes, meta(), t0());
        prop_assert_eq!(s.counters().received, 1);
    }

    /// Valid headers with random option bytes reach the option decoders.
    #[test]
    fn random_options_never_panic(opts in proptest::collection::vec(any::<u8>(), 0..400), kind in 1u8..9) {
        let mut p = packet(MessageType::Discover, mac(1), |_| {});
        p.truncate(240);
        p.extend_from_slice(&[53, 1, kind]);
        p.extend_from_slice(&opts);
        p.push(255);
        let mut s = server();
        s.handle(&p, meta(), t0());
    }

    /// Any DISCOVER round-trips: the offer answers that client and transaction.
    #[test]
    fn offers_echo_xid_and_chaddr(m in any::<[u8; 6]>(), xid in any::<u32>(), arch in proptest::option::of(any::<u16>())) {
        let mut s = server();
        let p = packet(MessageType::Discover, MacAddr(m), |msg| {
            msg.set_xid(xid);
            if let Some(a) = arch { msg.opts_mut().insert(DhcpOption::ClientSystemArchitecture(Architecture(a))); }
        });
        let actions = s.handle(&p, meta(), t0());
        let (_, _, offer) = reply(&actions);
        prop_assert_eq!(offer.xid(), xid);
        prop_assert_eq!(offer.chaddr(), &m[..]);
        prop_assert_eq!(Message::decode(&mut Decoder::new(&offer.to_vec().unwrap())).unwrap(), offer);
    }
}
