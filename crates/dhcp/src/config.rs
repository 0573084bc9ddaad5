//! What the server serves: subnets, known hosts, PXE boot files, flood limits.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use crate::{Error, MacAddr};

/// One IPv4 subnet the server is authoritative for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetConfig {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Addresses handed to unknown clients.
    pub dynamic_ranges: Vec<RangeInclusive<Ipv4Addr>>,
    /// Never handed out (BMCs, switches, the rack itself), even if inside a
    /// dynamic range.
    pub reserved_ranges: Vec<RangeInclusive<Ipv4Addr>>,
    pub lease_secs: u32,
    /// Known machines: a MAC always gets its static address.
    pub hosts: Vec<HostReservation>,
}

/// A known machine's static address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReservation {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub hostname: Option<String>,
}

/// Network boot: where PXE firmware and iPXE find their next stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    /// TFTP server (siaddr, option 66).
    pub next_server: Ipv4Addr,
    /// For BIOS PXE ROMs (option 93 = 0), e.g. `undionly.kpxe`.
    pub bios_file: String,
    /// For x86-64 UEFI (option 93 = 7 or 9), e.g. `snp.efi`.
    pub uefi_file: String,
    /// For iPXE itself (user class "iPXE"), e.g. `http://10.0.0.1:5248/ipxe/boot.ipxe`.
    pub ipxe_script_url: String,
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 50,
            per_second: 10,
        }
    }
}

/// The whole server configuration; replaceable at runtime with
/// [`Server::reconfigure`](crate::Server::reconfigure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Option 54; also the address clients unicast renewals to.
    pub server_id: Ipv4Addr,
    pub subnets: Vec<SubnetConfig>,
    pub boot: Option<BootConfig>,
    /// DISCOVERs from MACs that are neither known hosts nor current lessees.
    pub unknown_client_rate: RateLimit,
    /// At most this percentage of a subnet's dynamic pool may be held by
    /// offers not yet requested, so a flood cannot drain the pool.
    pub max_pending_offer_percent: u8,
}

impl ServerConfig {
    /// A configuration with no boot, default flood limits and at most half
    /// of each pool held by pending offers.
    pub fn new(server_id: Ipv4Addr, subnets: Vec<SubnetConfig>) -> Self {
        ServerConfig {
            server_id,
            subnets,
            boot: None,
            unknown_client_rate: RateLimit::default(),
            max_pending_offer_percent: 50,
        }
    }

    /// Checks what the protocol code relies on: prefixes, ranges inside
    /// their subnets, hosts unique and inside their subnet, boot file names
    /// that fit the BOOTP `file` field.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |msg: String| Err(Error::InvalidConfig(msg));
        let mut macs = std::collections::HashSet::new();
        let mut host_ips = std::collections::HashSet::new();
        for s in &self.subnets {
            let name = format!("subnet {}/{}", s.network, s.prefix_len);
            if s.prefix_len > 30 {
                return invalid(format!("{name}: prefix length must be at most 30"));
            }
            if s.network != s.network_addr() {
                return invalid(format!("{name}: host bits set in network address"));
            }
            if s.lease_secs < 60 {
                return invalid(format!("{name}: lease_secs must be at least 60"));
            }
            for r in s.dynamic_ranges.iter().chain(&s.reserved_ranges) {
                if r.start() > r.end() || !s.contains(*r.start()) || !s.contains(*r.end()) {
                    return invalid(format!(
                        "{name}: range {}-{} is empty or outside the subnet",
                        r.start(),
                        r.end()
                    ));
                }
            }
            for h in &s.hosts {
                if !s.contains(h.ip) {
                    return invalid(format!(
                        "{name}: host {} address {} outside the subnet",
                        h.mac, h.ip
                    ));
                }
                if !macs.insert(h.mac) {
                    return invalid(format!("host {} reserved twice", h.mac));
                }
                if !host_ips.insert(h.ip) {
                    return invalid(format!("address {} reserved for two hosts", h.ip));
                }
            }
        }
        for (i, a) in self.subnets.iter().enumerate() {
            for b in &self.subnets[i + 1..] {
                if a.contains(b.network) || b.contains(a.network) {
                    return invalid(format!(
                        "subnets {}/{} and {}/{} overlap",
                        a.network, a.prefix_len, b.network, b.prefix_len
                    ));
                }
            }
        }
        if let Some(b) = &self.boot {
            for f in [&b.bios_file, &b.uefi_file, &b.ipxe_script_url] {
                if f.is_empty() || f.len() > 127 {
                    return invalid(format!("boot file {f:?} must be 1 to 127 bytes"));
                }
            }
        }
        if self.unknown_client_rate.burst == 0 {
            return invalid("unknown_client_rate burst must be positive".into());
        }
        if self.max_pending_offer_percent > 100 {
            return invalid("max_pending_offer_percent must be at most 100".into());
        }
        Ok(())
    }
}

impl SubnetConfig {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    fn network_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) & mask_bits(self.prefix_len))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix_len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len)
            == u32::from(self.network) & mask_bits(self.prefix_len)
    }

    pub(crate) fn in_dynamic_range(&self, ip: Ipv4Addr) -> bool {
        self.dynamic_ranges.iter().any(|r| r.contains(&ip))
    }

    pub(crate) fn host_for_mac(&self, mac: MacAddr) -> Option<&HostReservation> {
        self.hosts.iter().find(|h| h.mac == mac)
    }

    /// Addresses that are never dynamic: network, broadcast, gateway,
    /// reserved ranges and every known host's address.
    pub(crate) fn excluded(&self, ip: Ipv4Addr, server_id: Ipv4Addr) -> bool {
        ip == self.network
            || ip == self.broadcast()
            || ip == server_id
            || Some(ip) == self.gateway
            || self.dns_servers.contains(&ip)
            || self.reserved_ranges.iter().any(|r| r.contains(&ip))
            || self.hosts.iter().any(|h| h.ip == ip)
    }

    /// Number of addresses in the dynamic ranges (overlaps counted twice;
    /// only used for the pending-offer cap).
    pub(crate) fn pool_size(&self) -> u64 {
        self.dynamic_ranges
            .iter()
            .map(|r| {
                u64::from(u32::from(*r.end())).saturating_sub(u64::from(u32::from(*r.start()))) + 1
            })
            .sum()
    }
}

fn mask_bits(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - n),
    }
}
