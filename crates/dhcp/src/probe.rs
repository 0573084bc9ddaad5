//! Rogue DHCP detection: broadcast a DISCOVER on a served network and
//! report every server that offers an address, other than our own.
//!
//! The core ([`discover_probe`], [`classify_reply`]) is pure: the xid and
//! the probe's MAC are parameters, so it is unit tested and fuzzed. The
//! shell ([`probe`]) owns the socket and the wait. The probe never sends a
//! REQUEST, so it never takes a lease; offers it leaves unanswered expire on
//! the servers that made them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

use crate::{wire, Error, MacAddr};

/// Another DHCP server found answering on a served network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RogueServer {
    /// The interface the probe ran on.
    pub interface: String,
    /// Its server identifier (option 54), or the reply's source address
    /// when it sent none.
    pub server_id: Ipv4Addr,
    /// The reply's IP source: the server itself, or a relay.
    pub source_ip: Ipv4Addr,
    /// The address it offered the probe.
    pub offered_ip: Ipv4Addr,
    /// The relay (giaddr) the offer names, if it came through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<Ipv4Addr>,
}

/// What a packet received by the probe is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeReply {
    /// A server other than ours offered an address to the probe.
    Offer(Offer),
    /// One of our own servers answered.
    Ours,
    /// Not an answer to this probe, or malformed; the reason says which.
    Ignored(&'static str),
}

/// A server's answer to the probe's DISCOVER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Option 54, else the reply's source address.
    pub server_id: Ipv4Addr,
    /// yiaddr.
    pub offered_ip: Ipv4Addr,
    /// giaddr, when not 0.0.0.0.
    pub relay: Option<Ipv4Addr>,
    /// The reply's UDP source.
    pub from: SocketAddrV4,
}

/// A broadcast DHCPDISCOVER from `mac` with transaction id `xid`: the
/// broadcast flag set (so servers answer to 255.255.255.255, the probe has
/// no address), a client identifier (type 1 + MAC, as dhclient sends) and a
/// parameter request list like an ordinary client's, so servers that only
/// answer plausible clients answer it too.
pub fn discover_probe(xid: u32, mac: MacAddr) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac.0);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    let mut client_id = vec![1];
    client_id.extend_from_slice(&mac.0);
    o.insert(DhcpOption::ClientIdentifier(client_id));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::BroadcastAddr,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    o.insert(DhcpOption::MaxMessageSize(1500));
    // A message of fixed fields and the options above always encodes.
    m.to_vec().expect("a discover always encodes")
}

/// Classifies a packet the probe received from `from`: an OFFER (or a
/// rapid-commit style ACK) to transaction `xid` is an [`Offer`], unless its
/// server id (or, without one, its source) is in `own_server_ids`.
/// Everything else — requests, NAKs, other transactions, malformed bytes —
/// is [`ProbeReply::Ignored`]. Never panics.
pub fn classify_reply(
    packet: &[u8],
    from: SocketAddrV4,
    xid: u32,
    own_server_ids: &[Ipv4Addr],
) -> ProbeReply {
    let msg = match wire::decode_reply(packet) {
        Ok(m) => m,
        Err(why) => return ProbeReply::Ignored(why),
    };
    if msg.xid() != xid {
        return ProbeReply::Ignored("another transaction");
    }
    match msg.opts().msg_type() {
        // An ACK to a DISCOVER is a server committing an address at once
        // (RFC 4039 style): as much a rogue as an offer.
        Some(MessageType::Offer | MessageType::Ack) => {}
        Some(MessageType::Nak) => return ProbeReply::Ignored("nak"),
        _ => return ProbeReply::Ignored("not an offer"),
    }
    let server_id = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(id)) => *id,
        _ => *from.ip(),
    };
    if own_server_ids.contains(&server_id) {
        return ProbeReply::Ours;
    }
    let giaddr = msg.giaddr();
    ProbeReply::Offer(Offer {
        server_id,
        offered_ip: msg.yiaddr(),
        relay: (!giaddr.is_unspecified()).then_some(giaddr),
        from,
    })
}

/// Probes `interface` for DHCP servers other than ours.
///
/// Binds 0.0.0.0:68 on the interface (SO_BINDTODEVICE, SO_REUSEADDR so a
/// client on the same host keeps working), broadcasts one DISCOVER from
/// `mac` (use a locally administered address, e.g. `02:…`) with `xid`, and
/// collects replies for `wait`. Returns one [`RogueServer`] per server id,
/// ordered by it; our own servers (`own_server_ids`) answer too and are
/// left out. Sends nothing else: no REQUEST, so no lease is taken.
pub async fn probe(
    interface: &str,
    own_server_ids: &[Ipv4Addr],
    wait: Duration,
    xid: u32,
    mac: MacAddr,
) -> Result<Vec<RogueServer>, Error> {
    let err = |source| Error::Probe {
        interface: interface.to_string(),
        source,
    };
    let sock = bind_client(interface).map_err(err)?;
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    sock.send_to(&discover_probe(xid, mac), to)
        .await
        .map_err(err)?;
    let mut found = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let received = match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Err(_elapsed) => break,
            Ok(r) => r,
        };
        let (n, from) = match received {
            Ok((n, SocketAddr::V4(from))) => (n, from),
            Ok((_, SocketAddr::V6(_))) => continue,
            Err(e) => {
                tracing::warn!(interface, error = %e, "dhcp probe receive failed");
                continue;
            }
        };
        match classify_reply(&buf[..n], from, xid, own_server_ids) {
            ProbeReply::Offer(o) => {
                found.entry(o.server_id).or_insert_with(|| RogueServer {
                    interface: interface.to_string(),
                    server_id: o.server_id,
                    source_ip: *o.from.ip(),
                    offered_ip: o.offered_ip,
                    relay: o.relay,
                });
            }
            ProbeReply::Ours => {}
            ProbeReply::Ignored(why) => {
                tracing::debug!(interface, %from, why, "dhcp probe ignored a packet");
            }
        }
    }
    let rogues: Vec<RogueServer> = found.into_values().collect();
    for r in &rogues {
        tracing::warn!(interface, server_id = %r.server_id, source = %r.source_ip, offered = %r.offered_ip, "rogue dhcp server");
    }
    Ok(rogues)
}

fn bind_client(interface: &str) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::{Decodable, Decoder};
    use proptest::prelude::*;

    const MAC: MacAddr = MacAddr([0x02, 0x6b, 0x75, 0x6d, 0x6f, 0x01]);
    const XID: u32 = 0x1234_5678;
    const OURS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const ROGUE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 66);

    fn from(ip: Ipv4Addr) -> SocketAddrV4 {
        SocketAddrV4::new(ip, 67)
    }

    /// A server's reply to the probe, as dhcproto encodes one.
    fn reply(kind: MessageType, xid: u32, server_id: Option<Ipv4Addr>) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_xid(xid)
            .set_flags(Flags::default().set_broadcast())
            .set_chaddr(&MAC.0)
            .set_yiaddr(Ipv4Addr::new(10, 0, 0, 150));
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        if let Some(id) = server_id {
            o.insert(DhcpOption::ServerIdentifier(id));
        }
        o.insert(DhcpOption::AddressLeaseTime(600));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        m
    }

    fn bytes(m: &Message) -> Vec<u8> {
        m.to_vec().unwrap()
    }

    #[test]
    fn the_probe_is_a_broadcast_discover_with_client_id_and_prl() {
        let p = discover_probe(XID, MAC);
        let m = Message::decode(&mut Decoder::new(&p)).unwrap();
        assert_eq!(m.opcode(), Opcode::BootRequest);
        assert_eq!(m.xid(), XID);
        assert!(m.flags().broadcast());
        assert_eq!(m.htype(), dhcproto::v4::HType::Eth);
        assert_eq!(m.chaddr(), &MAC.0);
        assert!(m.ciaddr().is_unspecified() && m.giaddr().is_unspecified());
        assert_eq!(m.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(
            m.opts().get(OptionCode::ClientIdentifier),
            Some(&DhcpOption::ClientIdentifier(vec![
                1, 0x02, 0x6b, 0x75, 0x6d, 0x6f, 0x01
            ]))
        );
        match m.opts().get(OptionCode::ParameterRequestList) {
            Some(DhcpOption::ParameterRequestList(prl)) => {
                assert!(prl.contains(&OptionCode::SubnetMask));
                assert!(prl.contains(&OptionCode::ServerIdentifier));
            }
            other => panic!("no parameter request list: {other:?}"),
        }
        // Nothing that would commit a lease.
        assert!(m.opts().get(OptionCode::RequestedIpAddress).is_none());
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_none());
        // kumo's own server accepts it as a client packet.
        assert!(wire::decode(&p).is_ok());
    }

    #[test]
    fn another_servers_offer_is_reported() {
        let mut m = reply(MessageType::Offer, XID, Some(ROGUE));
        m.set_giaddr(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(
            classify_reply(&bytes(&m), from(Ipv4Addr::new(10, 0, 0, 1)), XID, &[OURS]),
            ProbeReply::Offer(Offer {
                server_id: ROGUE,
                offered_ip: Ipv4Addr::new(10, 0, 0, 150),
                relay: Some(Ipv4Addr::new(10, 0, 0, 1)),
                from: from(Ipv4Addr::new(10, 0, 0, 1)),
            })
        );
    }

    #[test]
    fn an_ack_counts_as_an_offer_a_nak_does_not() {
        let ack = bytes(&reply(MessageType::Ack, XID, Some(ROGUE)));
        assert!(matches!(
            classify_reply(&ack, from(ROGUE), XID, &[OURS]),
            ProbeReply::Offer(Offer {
                server_id: ROGUE,
                relay: None,
                ..
            })
        ));
        let nak = bytes(&reply(MessageType::Nak, XID, Some(ROGUE)));
        assert_eq!(
            classify_reply(&nak, from(ROGUE), XID, &[OURS]),
            ProbeReply::Ignored("nak")
        );
    }

    #[test]
    fn our_own_offer_is_ours() {
        let ours = bytes(&reply(MessageType::Offer, XID, Some(OURS)));
        assert_eq!(
            classify_reply(&ours, from(OURS), XID, &[ROGUE, OURS]),
            ProbeReply::Ours
        );
        // Without the id, the same offer is a rogue.
        assert!(matches!(
            classify_reply(&ours, from(OURS), XID, &[]),
            ProbeReply::Offer(_)
        ));
    }

    #[test]
    fn without_a_server_id_the_source_identifies_the_server() {
        let anon = bytes(&reply(MessageType::Offer, XID, None));
        assert!(matches!(
            classify_reply(&anon, from(ROGUE), XID, &[OURS]),
            ProbeReply::Offer(Offer {
                server_id: ROGUE,
                ..
            })
        ));
        assert_eq!(
            classify_reply(&anon, from(OURS), XID, &[OURS]),
            ProbeReply::Ours
        );
    }

    #[test]
    fn other_transactions_requests_and_garbage_are_ignored() {
        let foreign = bytes(&reply(MessageType::Offer, XID ^ 1, Some(ROGUE)));
        assert_eq!(
            classify_reply(&foreign, from(ROGUE), XID, &[]),
            ProbeReply::Ignored("another transaction")
        );
        // Our own DISCOVER, or another client's, heard on the wire.
        assert_eq!(
            classify_reply(&discover_probe(XID, MAC), from(ROGUE), XID, &[]),
            ProbeReply::Ignored("not a bootreply")
        );
        let mut no_type = bytes(&reply(MessageType::Offer, XID, Some(ROGUE)));
        no_type[240..243].copy_from_slice(&[0, 0, 0]); // pads over option 53
        assert_eq!(
            classify_reply(&no_type, from(ROGUE), XID, &[]),
            ProbeReply::Ignored("no message type")
        );
        assert_eq!(
            classify_reply(&[], from(ROGUE), XID, &[]),
            ProbeReply::Ignored("shorter than a bootp header")
        );
        let mut truncated = bytes(&reply(MessageType::Offer, XID, Some(ROGUE)));
        truncated.truncate(truncated.len() - 3);
        assert!(matches!(
            classify_reply(&truncated, from(ROGUE), XID, &[]),
            ProbeReply::Ignored(_)
        ));
        // The hlen dhcproto's chaddr() would panic on.
        let mut hlen = bytes(&reply(MessageType::Offer, XID, Some(ROGUE)));
        hlen[2] = 200;
        assert_eq!(
            classify_reply(&hlen, from(ROGUE), XID, &[]),
            ProbeReply::Ignored("not an ethernet hardware address")
        );
    }

    #[test]
    fn a_short_server_id_is_dropped_not_trusted() {
        let mut m = bytes(&reply(MessageType::Offer, XID, None));
        // Replace the end option by a 3-byte option 54, then end.
        m.pop();
        m.extend_from_slice(&[54, 3, 10, 0, 0, 255]);
        assert!(matches!(
            classify_reply(&m, from(ROGUE), XID, &[]),
            ProbeReply::Offer(Offer {
                server_id: ROGUE,
                ..
            })
        ));
    }

    #[test]
    fn a_rogue_serializes_for_the_region() {
        let r = RogueServer {
            interface: "eth1".into(),
            server_id: ROGUE,
            source_ip: ROGUE,
            offered_ip: Ipv4Addr::new(10, 0, 0, 150),
            relay: None,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"interface":"eth1","server_id":"10.0.0.66","source_ip":"10.0.0.66","offered_ip":"10.0.0.150"}"#
        );
        assert_eq!(serde_json::from_str::<RogueServer>(&json).unwrap(), r);
    }

    proptest! {
        #[test]
        fn classify_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..700),
            xid in any::<u32>(),
        ) {
            let _ = classify_reply(&bytes, from(ROGUE), xid, &[OURS]);
        }

        /// A valid reply header with our xid and random options, so the
        /// option guard and dhcproto's decoders are reached.
        #[test]
        fn classify_never_panics_on_random_options(
            opts in proptest::collection::vec(any::<u8>(), 0..400),
            head in proptest::collection::vec(any::<u8>(), 236),
        ) {
            let mut p = head;
            p[0] = 2;
            p[1] = 1;
            p[2] = 6;
            p[4..8].copy_from_slice(&XID.to_be_bytes());
            p.extend_from_slice(&[99, 130, 83, 99]);
            p.extend_from_slice(&opts);
            let _ = classify_reply(&p, from(ROGUE), XID, &[OURS]);
        }

        #[test]
        fn probes_round_trip(xid in any::<u32>(), mac in any::<[u8; 6]>()) {
            let p = discover_probe(xid, MacAddr(mac));
            let m = wire::decode(&p).unwrap();
            prop_assert_eq!(m.xid(), xid);
            prop_assert_eq!(m.chaddr(), &mac[..]);
        }
    }
}
