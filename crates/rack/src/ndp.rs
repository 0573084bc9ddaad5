//! Answers IPv6 router solicitations with a router advertisement that
//! offers nothing: router lifetime 0 (not a default router), no prefixes,
//! no DHCPv6 flags.
//!
//! Why: iPXE configures IPv4 and IPv6 together and waits for an answer to
//! its router solicitations before booting — about 16 s on a network with
//! no IPv6 router, every boot (measured under QEMU). An advertisement that
//! configures nothing ends that wait and changes nothing for other hosts,
//! which ignore a router with lifetime 0 and no prefixes (RFC 4861 6.3.4).
//!
//! [`advertisement_for`] is pure; [`run`] is the raw ICMPv6 socket.

use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddrV6};

use socket2::{Domain, Protocol, Socket, Type};

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const OPTION_SOURCE_LINK_LAYER: u8 = 1;

/// The advertisement answering `packet` if it is a well-formed router
/// solicitation (RFC 4861 6.1.1: code 0, at least 8 bytes, options of
/// non-zero length), else `None`. `mac` is the interface's own, sent as the
/// source link-layer option. The checksum is left zero: the kernel fills it
/// in for raw ICMPv6 sockets.
pub fn advertisement_for(packet: &[u8], mac: [u8; 6]) -> Option<Vec<u8>> {
    if packet.len() < 8 || packet[0] != ROUTER_SOLICITATION || packet[1] != 0 {
        return None;
    }
    let mut options = &packet[8..];
    while !options.is_empty() {
        let len = usize::from(*options.get(1)?) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        options = &options[len..];
    }
    let mut ra = vec![
        ROUTER_ADVERTISEMENT,
        0, // code
        0,
        0, // checksum, by the kernel
        0, // cur hop limit: unspecified
        0, // flags: no managed or other configuration (no DHCPv6)
        0,
        0, // router lifetime 0: not a default router
        0,
        0,
        0,
        0, // reachable time: unspecified
        0,
        0,
        0,
        0, // retrans timer: unspecified
    ];
    ra.extend_from_slice(&[OPTION_SOURCE_LINK_LAYER, 1]);
    ra.extend_from_slice(&mac);
    Some(ra)
}

/// Serves `interface` until the task is dropped. Errors opening the socket
/// are returned (the caller logs and goes on without: IPv6 is an
/// optimisation of boot time, not a service the rack promises).
pub async fn run(interface: &str, mac: [u8; 6]) -> std::io::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // NDP messages are only valid with hop limit 255 (RFC 4861 6.1.2).
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    let index = interface_index(interface)?;
    socket.join_multicast_v6(&"ff02::2".parse().expect("all-routers address"), index)?;
    socket.set_multicast_if_v6(index)?;
    socket.set_nonblocking(true)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and
    // the same until the AsyncFd is dropped.
    let socket =
        unsafe { tokio::io::unix::AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
    let all_nodes = SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index);
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    tracing::info!(
        interface,
        "answering ipv6 router solicitations (no router, no prefixes)"
    );
    loop {
        let mut guard = socket.readable().await?;
        let n = match guard.try_io(|s| s.get_ref().recv(&mut buf)) {
            Ok(r) => r?,
            Err(_would_block) => continue,
        };
        // SAFETY: recv initialised the first n bytes.
        let packet: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(ra) = advertisement_for(&packet, mac) {
            if let Err(e) = socket.get_ref().send_to(&ra, &all_nodes.into()) {
                tracing::debug!(interface, error = %e, "router advertisement not sent");
            }
        }
    }
}

fn interface_index(interface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string we own.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// The interface's MAC, from sysfs.
pub fn interface_mac(interface: &str) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).ok()?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    #[test]
    fn a_solicitation_gets_an_advertisement_that_configures_nothing() {
        // What iPXE sends: type 133, code 0, reserved, source link-layer option.
        let rs = [
            133, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0x21, 0x60, 0x99,
        ];
        let ra = advertisement_for(&rs, MAC).unwrap();
        assert_eq!(ra[0], 134);
        assert_eq!(ra[5], 0, "no managed/other flags");
        assert_eq!(&ra[6..8], &[0, 0], "router lifetime 0");
        assert_eq!(&ra[16..24], &[1, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(ra.len(), 24, "no prefix information");
    }

    #[test]
    fn anything_else_is_ignored() {
        assert_eq!(advertisement_for(&[], MAC), None);
        assert_eq!(advertisement_for(&[133, 0, 0, 0], MAC), None, "short");
        assert_eq!(
            advertisement_for(&[133, 1, 0, 0, 0, 0, 0, 0], MAC),
            None,
            "code 1"
        );
        assert_eq!(
            advertisement_for(&[134, 0, 0, 0, 0, 0, 0, 0], MAC),
            None,
            "an RA"
        );
        assert_eq!(
            advertisement_for(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 0], MAC),
            None,
            "zero-length option"
        );
        assert_eq!(
            advertisement_for(&[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0], MAC),
            None,
            "option past the end"
        );
        assert!(advertisement_for(&[133, 0, 0, 0, 0, 0, 0, 0], MAC).is_some());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = advertisement_for(&bytes, MAC);
        }
    }
}
