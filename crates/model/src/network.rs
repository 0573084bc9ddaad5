//! The network model and IPAM rules: fabrics, VLANs, subnets, IP ranges and
//! static allocations, as data and pure checks. The region stores them; the
//! rack turns them into DHCP and DNS configuration.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

/// An IPv4 network in CIDR form, with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
    /// Addresses a host may hold: not the network or broadcast address
    /// (except in /31 and /32, which have neither).
    pub fn is_host(&self, ip: Ipv4Addr) -> bool {
        self.contains(ip) && (self.prefix >= 31 || (ip != self.network && ip != self.broadcast()))
    }
    pub fn first_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.network
        } else {
            Ipv4Addr::from(u32::from(self.network) + 1)
        }
    }
    pub fn last_host(&self) -> Ipv4Addr {
        if self.prefix >= 31 {
            self.broadcast()
        } else {
            Ipv4Addr::from(u32::from(self.broadcast()) - 1)
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ModelError::field("cidr", s, reason);
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.0.0.0/24"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix length must be a number from 0 to 32"))?;
        if prefix > 32 {
            return Err(bad("the prefix length must be a number from 0 to 32"));
        }
        let c = Cidr {
            network: addr,
            prefix,
        };
        if u32::from(addr) & !c.mask() != 0 {
            let net = Ipv4Addr::from(u32::from(addr) & c.mask());
            return Err(bad(&format!(
                "host bits are set; did you mean {net}/{prefix}?"
            )));
        }
        Ok(c)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Parses an IPv4 address, naming `field` in the error.
pub fn parse_ip(field: &'static str, s: &str) -> Result<Ipv4Addr, ModelError> {
    s.parse()
        .map_err(|_| ModelError::field(field, s, "not an IPv4 address"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeKind {
    /// Handed out by DHCP to machines kumo does not know yet (enlisting).
    Dynamic,
    /// Never handed out by kumo (other equipment, VIPs).
    Reserved,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRange {
    pub kind: RangeKind,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    #[serde(default)]
    pub comment: String,
}

impl IpRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.start <= ip && ip <= self.end
    }
    pub fn overlaps(&self, other: &IpRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
    pub fn len(&self) -> u64 {
        u64::from(u32::from(self.end)) - u64::from(u32::from(self.start)) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks a new range against its subnet and the subnet's other ranges.
pub fn check_range(
    subnet: &Cidr,
    gateway: Option<Ipv4Addr>,
    range: &IpRange,
    others: &[IpRange],
) -> Result<(), ModelError> {
    let bad = |field: &'static str, reason: String| {
        ModelError::field(field, format!("{}-{}", range.start, range.end), reason)
    };
    if range.start > range.end {
        return Err(bad(
            "start",
            format!("start {} is after end {}", range.start, range.end),
        ));
    }
    for (field, ip) in [("start", range.start), ("end", range.end)] {
        if !subnet.is_host(ip) {
            return Err(bad(
                field,
                format!("{ip} is not a host address of subnet {subnet}"),
            ));
        }
    }
    if let Some(o) = others.iter().find(|o| o.overlaps(range)) {
        return Err(bad(
            "start",
            format!("overlaps the {:?} range {}-{}", o.kind, o.start, o.end).to_lowercase(),
        ));
    }
    if let Some(gw) = gateway {
        if range.kind == RangeKind::Dynamic && range.contains(gw) {
            return Err(bad("start", format!("contains the subnet's gateway {gw}")));
        }
    }
    Ok(())
}

/// Why a static address cannot be used, if it cannot.
pub fn check_static(
    subnet: &Cidr,
    gateway: Option<Ipv4Addr>,
    ranges: &[IpRange],
    used: &[Ipv4Addr],
    ip: Ipv4Addr,
) -> Result<(), ModelError> {
    let bad = |reason: String| ModelError::field("ip", ip.to_string(), reason);
    if !subnet.is_host(ip) {
        return Err(bad(format!("not a host address of subnet {subnet}")));
    }
    if Some(ip) == gateway {
        return Err(bad("is the subnet's gateway".into()));
    }
    if let Some(r) = ranges.iter().find(|r| r.contains(ip)) {
        return Err(bad(format!(
            "is inside the {} range {}-{}",
            if r.kind == RangeKind::Dynamic {
                "dynamic"
            } else {
                "reserved"
            },
            r.start,
            r.end
        )));
    }
    if used.contains(&ip) {
        return Err(bad("is already allocated".into()));
    }
    Ok(())
}

/// The lowest address of the subnet free for a static allocation: a host
/// address outside every range, not the gateway, not in use.
pub fn next_free(
    subnet: &Cidr,
    gateway: Option<Ipv4Addr>,
    ranges: &[IpRange],
    used: &[Ipv4Addr],
) -> Option<Ipv4Addr> {
    let mut ip = u32::from(subnet.first_host());
    let last = u32::from(subnet.last_host());
    let mut used: Vec<u32> = used.iter().map(|i| u32::from(*i)).collect();
    used.sort_unstable();
    while ip <= last {
        let cand = Ipv4Addr::from(ip);
        if let Some(r) = ranges.iter().find(|r| r.contains(cand)) {
            // Skip the whole range at once.
            match u32::from(r.end).checked_add(1) {
                Some(n) => ip = n,
                None => return None,
            }
            continue;
        }
        if Some(cand) != gateway && used.binary_search(&ip).is_err() {
            return Some(cand);
        }
        ip = ip.checked_add(1)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_hosts() {
        let c: Cidr = "10.20.0.0/24".parse().unwrap();
        assert_eq!(
            (c.first_host(), c.last_host(), c.broadcast()),
            (ip("10.20.0.1"), ip("10.20.0.254"), ip("10.20.0.255"))
        );
        assert!(
            c.is_host(ip("10.20.0.7"))
                && !c.is_host(ip("10.20.0.0"))
                && !c.is_host(ip("10.20.1.1"))
        );
        let e = "10.20.0.5/24".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("did you mean 10.20.0.0/24"), "{e}");
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/24", "x/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let p2p: Cidr = "10.0.0.0/31".parse().unwrap();
        assert!(p2p.is_host(ip("10.0.0.0")) && p2p.is_host(ip("10.0.0.1")));
    }

    #[test]
    fn ranges_must_fit_and_not_overlap() {
        let c: Cidr = "10.0.0.0/24".parse().unwrap();
        let dynamic = IpRange {
            kind: RangeKind::Dynamic,
            start: ip("10.0.0.100"),
            end: ip("10.0.0.199"),
            comment: String::new(),
        };
        check_range(&c, Some(ip("10.0.0.1")), &dynamic, &[]).unwrap();
        let overlapping = IpRange {
            kind: RangeKind::Reserved,
            start: ip("10.0.0.150"),
            end: ip("10.0.0.210"),
            comment: String::new(),
        };
        assert!(
            check_range(&c, None, &overlapping, std::slice::from_ref(&dynamic))
                .unwrap_err()
                .to_string()
                .contains("overlaps the dynamic range")
        );
        let outside = IpRange {
            kind: RangeKind::Dynamic,
            start: ip("10.0.0.200"),
            end: ip("10.0.1.5"),
            comment: String::new(),
        };
        assert!(check_range(&c, None, &outside, &[]).is_err());
        let backwards = IpRange {
            kind: RangeKind::Dynamic,
            start: ip("10.0.0.20"),
            end: ip("10.0.0.10"),
            comment: String::new(),
        };
        assert!(check_range(&c, None, &backwards, &[]).is_err());
        let over_gw = IpRange {
            kind: RangeKind::Dynamic,
            start: ip("10.0.0.1"),
            end: ip("10.0.0.9"),
            comment: String::new(),
        };
        assert!(check_range(&c, Some(ip("10.0.0.1")), &over_gw, &[])
            .unwrap_err()
            .to_string()
            .contains("gateway"));
    }

    #[test]
    fn static_allocation_avoids_ranges_gateway_and_used() {
        let c: Cidr = "10.0.0.0/29".parse().unwrap();
        let ranges = vec![IpRange {
            kind: RangeKind::Dynamic,
            start: ip("10.0.0.3"),
            end: ip("10.0.0.4"),
            comment: String::new(),
        }];
        let gw = Some(ip("10.0.0.1"));
        assert_eq!(next_free(&c, gw, &ranges, &[]), Some(ip("10.0.0.2")));
        assert_eq!(
            next_free(&c, gw, &ranges, &[ip("10.0.0.2")]),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            next_free(
                &c,
                gw,
                &ranges,
                &[ip("10.0.0.2"), ip("10.0.0.5"), ip("10.0.0.6")]
            ),
            None
        );
        assert!(check_static(&c, gw, &ranges, &[], ip("10.0.0.3"))
            .unwrap_err()
            .to_string()
            .contains("dynamic range"));
        assert!(check_static(&c, gw, &ranges, &[], ip("10.0.0.1")).is_err());
        assert!(
            check_static(&c, gw, &ranges, &[], ip("10.0.0.7")).is_err(),
            "broadcast"
        );
        check_static(&c, gw, &ranges, &[], ip("10.0.0.6")).unwrap();
    }

    proptest! {
        /// Whatever next_free returns passes check_static, and it is the
        /// lowest such address.
        #[test]
        fn next_free_agrees_with_check_static(prefix in 24u8..=30, used in proptest::collection::vec(0u8..=255, 0..40), rs in 0u8..200, rl in 0u8..40) {
            let c: Cidr = format!("10.1.2.0/{prefix}").parse().unwrap();
            let used: Vec<Ipv4Addr> = used.into_iter().map(|o| Ipv4Addr::new(10, 1, 2, o)).filter(|i| c.contains(*i)).collect();
            let start = Ipv4Addr::new(10, 1, 2, rs.max(1));
            let end = Ipv4Addr::new(10, 1, 2, rs.max(1).saturating_add(rl).min(254));
            let ranges: Vec<IpRange> = if c.is_host(start) && c.is_host(end) { vec![IpRange { kind: RangeKind::Dynamic, start, end, comment: String::new() }] } else { vec![] };
            let gw = Some(c.first_host());
            match next_free(&c, gw, &ranges, &used) {
                Some(free) => {
                    prop_assert!(check_static(&c, gw, &ranges, &used, free).is_ok());
                    for lower in u32::from(c.first_host())..u32::from(free) {
                        prop_assert!(check_static(&c, gw, &ranges, &used, Ipv4Addr::from(lower)).is_err());
                    }
                }
                None => {
                    for any in u32::from(c.first_host())..=u32::from(c.last_host()) {
                        prop_assert!(check_static(&c, gw, &ranges, &used, Ipv4Addr::from(any)).is_err());
                    }
                }
            }
        }

        #[test]
        fn cidr_parser_never_panics(s in ".{0,24}") {
            let _ = s.parse::<Cidr>();
        }
    }
}

/// A layer-2 domain: VLANs on one fabric can reach each other's switches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fabric {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vlan {
    pub fabric: String,
    /// 0 is the untagged VLAN.
    pub vid: u16,
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Whether kumo's racks serve DHCP (and PXE) on this VLAN.
    #[serde(default)]
    pub dhcp_on: bool,
}

fn default_mtu() -> u32 {
    1500
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub cidr: Cidr,
    pub fabric: String,
    #[serde(default)]
    pub vid: u16,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns_servers: Vec<Ipv4Addr>,
    /// The DNS domain machines on this subnet are named in.
    #[serde(default)]
    pub domain: Option<String>,
    /// Managed subnets get kumo's DHCP and IPAM; unmanaged ones are only recorded.
    #[serde(default = "yes")]
    pub managed: bool,
}

fn yes() -> bool {
    true
}

/// An IP range as stored: the range and the subnet it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetRange {
    pub subnet: Cidr,
    #[serde(flatten)]
    pub range: IpRange,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Domain {
    pub name: String,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    #[serde(default = "yes")]
    pub authoritative: bool,
}

fn default_ttl() -> u32 {
    300
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsRecord {
    pub domain: String,
    /// The label inside the domain; `@` is the domain itself.
    pub name: String,
    /// A, CNAME, TXT, MX or SRV.
    pub rtype: String,
    pub data: String,
    #[serde(default)]
    pub ttl: Option<u32>,
}

/// Ties a machine's interface to a subnet with a static address; without
/// `ip`, the lowest free one is chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRequest {
    pub mac: String,
    pub subnet: String,
    #[serde(default)]
    pub ip: Option<String>,
}

/// Everything a rack needs to serve DHCP and DNS, derived from the model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackConfig {
    pub subnets: Vec<RackSubnet>,
    pub domains: Vec<Domain>,
    /// Forward and reverse names: (fully qualified name, address).
    pub hosts: Vec<(String, Ipv4Addr)>,
    pub records: Vec<DnsRecord>,
    /// What each known MAC boots into; unknown MACs enlist.
    #[serde(default)]
    pub boot: Vec<RackBoot>,
    /// The OS images racks mirror for deploying machines.
    #[serde(default)]
    pub images: Vec<crate::deploy::Image>,
}

/// One known machine's boot interface and what it boots into now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackBoot {
    pub mac: String,
    pub system_id: String,
    pub hostname: String,
    pub purpose: crate::boot::BootPurpose,
}

/// Another DHCP server a rack heard answering on a network it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RogueDhcpServer {
    /// The rack interface the offer arrived on.
    pub interface: String,
    /// The server identifier (option 54) of the offer.
    pub server_id: Ipv4Addr,
    #[serde(default)]
    pub offered_ip: Option<Ipv4Addr>,
    /// The IP source address of the offer, when it differs from the server id (a relay).
    #[serde(default)]
    pub source: Option<Ipv4Addr>,
}

/// What a rack's probe round found: the full list, so a server that went
/// away is forgotten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RogueDhcpReport {
    pub rack: String,
    pub servers: Vec<RogueDhcpServer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackSubnet {
    pub cidr: Cidr,
    pub gateway: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub mtu: u32,
    pub dynamic_ranges: Vec<IpRange>,
    pub reserved_ranges: Vec<IpRange>,
    /// Known machines: their MAC, static address and host name.
    pub hosts: Vec<RackHost>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RackHost {
    pub mac: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
}

/// Checks a DNS label or dotted name (letters, digits, '-', '_' for SRV).
pub fn check_dns_name(field: &'static str, name: &str) -> Result<(), ModelError> {
    let bad = |reason: &str| ModelError::field(field, name, reason);
    if name.is_empty() || name.len() > 253 {
        return Err(bad("must be 1 to 253 characters"));
    }
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(bad("each label must be 1 to 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("labels may hold only letters, digits, '-' and '_'"));
        }
    }
    Ok(())
}

impl DnsRecord {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.name != "@" {
            check_dns_name("name", &self.name)?;
        }
        let bad = |reason: &str| ModelError::field("data", self.data.clone(), reason);
        match self.rtype.as_str() {
            "A" => {
                self.data
                    .parse::<Ipv4Addr>()
                    .map_err(|_| bad("an A record holds an IPv4 address"))?;
            }
            "CNAME" => check_dns_name("data", &self.data)?,
            "TXT" => {
                if self.data.len() > 255 {
                    return Err(bad("a TXT string is at most 255 characters"));
                }
            }
            "MX" => {
                let (pref, host) = self
                    .data
                    .split_once(' ')
                    .ok_or_else(|| bad("an MX record is \"PREFERENCE HOST\""))?;
                pref.parse::<u16>()
                    .map_err(|_| bad("MX preference must be 0 to 65535"))?;
                check_dns_name("data", host)?;
            }
            "SRV" => {
                let parts: Vec<&str> = self.data.split_whitespace().collect();
                if parts.len() != 4 || parts[..3].iter().any(|p| p.parse::<u16>().is_err()) {
                    return Err(bad("an SRV record is \"PRIORITY WEIGHT PORT TARGET\""));
                }
                check_dns_name("data", parts[3])?;
            }
            other => {
                return Err(ModelError::field(
                    "rtype",
                    other,
                    "expected A, CNAME, TXT, MX or SRV",
                ));
            }
        }
        Ok(())
    }
}
