//! Wake-on-LAN: a UDP broadcast of the magic packet.

use std::net::{Ipv4Addr, SocketAddrV4};

use tokio::net::UdpSocket;

use crate::params::{parse_mac, Params};
use crate::{PowerDriver, PowerError, PowerState};

/// The magic packet: 6 bytes of 0xFF, then the MAC 16 times (102 bytes).
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut pkt = [0xFFu8; 102];
    for chunk in pkt[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    pkt
}

/// Sends the magic packet; it cannot power off nor see the state.
#[derive(Debug, Clone)]
pub struct WolDriver {
    mac: [u8; 6],
    dest: SocketAddrV4,
}

impl WolDriver {
    pub(crate) fn from_params(p: &Params) -> Result<Self, PowerError> {
        let mac = parse_mac(&p.required("mac_address")?)
            .ok_or_else(|| PowerError::invalid("mac_address", "not a MAC address"))?;
        let ip: Ipv4Addr = match p.str("broadcast_address") {
            Some(s) => s
                .parse()
                .map_err(|_| PowerError::invalid("broadcast_address", "not an IPv4 address"))?,
            None => Ipv4Addr::BROADCAST,
        };
        Ok(WolDriver {
            mac,
            dest: SocketAddrV4::new(ip, p.port("port", 9)),
        })
    }

    fn target(&self) -> String {
        let m = self.mac;
        format!(
            "wol {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[async_trait::async_trait]
impl PowerDriver for WolDriver {
    fn power_type(&self) -> &'static str {
        "wol"
    }

    async fn power_on(&self) -> Result<(), PowerError> {
        let target = self.target();
        // Network trouble on our side (no route, interface down) may pass.
        let io = |what: &str, e: std::io::Error| {
            PowerError::transient(&target, format!("{what} to {}: {e}", self.dest))
        };
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .await
            .map_err(|e| io("cannot bind a udp socket", e))?;
        sock.set_broadcast(true)
            .map_err(|e| io("cannot enable broadcast", e))?;
        sock.send_to(&magic_packet(self.mac), self.dest)
            .await
            .map_err(|e| io("cannot send the magic packet", e))?;
        tracing::debug!(target = %target, dest = %self.dest, "sent wake-on-lan magic packet");
        Ok(())
    }

    async fn power_off(&self) -> Result<(), PowerError> {
        Err(PowerError::Unsupported {
            power_type: "wol",
            action: "power off",
        })
    }

    async fn power_query(&self) -> Result<PowerState, PowerError> {
        Ok(PowerState::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packet_bytes() {
        let mac = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
        let pkt = magic_packet(mac);
        assert_eq!(pkt.len(), 102);
        assert_eq!(&pkt[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&pkt[6 + 6 * i..12 + 6 * i], &mac, "repetition {i}");
        }
    }

    #[tokio::test]
    async fn off_is_unsupported_and_query_unknown() {
        let m = serde_json::json!({"mac_address": "52:54:00:ab:cd:ef"});
        let d = WolDriver::from_params(&Params(m.as_object().unwrap())).unwrap();
        assert_eq!(d.dest, "255.255.255.255:9".parse().unwrap());
        let err = d.power_off().await.unwrap_err();
        assert!(matches!(err, PowerError::Unsupported { .. }));
        assert_eq!(err.to_string(), "wol: power off is not supported");
        assert_eq!(d.power_query().await.unwrap(), PowerState::Unknown);
    }
}
