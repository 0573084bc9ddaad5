//! From the region's [`RackConfig`] to what each server runs on: a DHCP
//! configuration per interface and one DNS zone set. Pure: the shell
//! supplies interface addresses and the zone serial.

use std::net::{Ipv4Addr, SocketAddr};

use kumo_dhcp::{BootConfig, HostReservation, ServerConfig, SubnetConfig};
use kumo_dns::{Record, RecordData, Soa, Zone, ZoneDefaults, ZoneSet};
use kumo_model::network::{DnsRecord, RackConfig, RangeKind};

use crate::Error;

/// Lease time handed to DHCP clients. Long enough that a rack restart is
/// invisible, short enough that a re-addressed subnet converges in a day.
pub const LEASE_SECS: u32 = 3600;

/// Boot file names, as Debian's `ipxe` package ships them.
pub const BIOS_BOOT_FILE: &str = "undionly.kpxe";
pub const UEFI_BOOT_FILE: &str = "snponly.efi";

/// One interface the rack serves on, with its IPv4 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// The rack-side choices that shape the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanSettings {
    /// This rack's name; names the zones' primary server in their SOA.
    pub rack_name: String,
    /// Port of the HTTP boot server on every served address.
    pub http_port: u16,
    /// Whether the rack serves DNS: subnets without DNS servers of their
    /// own are then given the rack's address.
    pub serve_dns: bool,
    pub dns_upstreams: Vec<SocketAddr>,
}

/// The DHCP configuration for one interface. Every subnet is included, so
/// relayed requests (giaddr) for subnets off this segment are answered too;
/// the interface's own address is the server identifier, TFTP server and
/// HTTP boot host.
pub fn dhcp_config(cfg: &RackConfig, iface: &Interface, settings: &PlanSettings) -> ServerConfig {
    let subnets = cfg
        .subnets
        .iter()
        .map(|s| {
            let dns_servers = if !s.dns_servers.is_empty() {
                s.dns_servers.clone()
            } else if settings.serve_dns {
                vec![iface.addr]
            } else {
                vec![]
            };
            let ranges = |kind: RangeKind| {
                s.dynamic_ranges
                    .iter()
                    .chain(&s.reserved_ranges)
                    .filter(|r| r.kind == kind)
                    .map(|r| r.start..=r.end)
                    .collect::<Vec<_>>()
            };
            SubnetConfig {
                network: s.cidr.network(),
                prefix_len: s.cidr.prefix(),
                gateway: s.gateway,
                dns_servers,
                domain: s.domain.clone(),
                dynamic_ranges: ranges(RangeKind::Dynamic),
                reserved_ranges: ranges(RangeKind::Reserved),
                lease_secs: LEASE_SECS,
                hosts: s
                    .hosts
                    .iter()
                    .filter_map(|h| {
                        Some(HostReservation {
                            mac: h.mac.parse().ok()?,
                            ip: h.ip,
                            hostname: Some(h.hostname.clone()),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    let mut c = ServerConfig::new(iface.addr, subnets);
    c.boot = Some(BootConfig {
        next_server: iface.addr,
        bios_file: BIOS_BOOT_FILE.into(),
        uefi_file: UEFI_BOOT_FILE.into(),
        ipxe_script_url: format!(
            "http://{}:{}/ipxe/boot.ipxe",
            iface.addr, settings.http_port
        ),
    });
    c
}

/// The zones the rack is authoritative for: every authoritative domain
/// with its records, machines' A records and their /24 reverse zones.
/// `serial` should grow with each change (the shell passes seconds since
/// the epoch).
pub fn zones(cfg: &RackConfig, settings: &PlanSettings, serial: u32) -> Result<ZoneSet, Error> {
    let soa = |zone: &str| Soa {
        mname: format!("{}.{}", settings.rack_name, absolute(zone)),
        rname: format!("hostmaster.{}", absolute(zone)),
        serial,
        refresh: 3600,
        retry: 600,
        expire: 86400,
        minimum: 30,
    };
    let mut set = ZoneSet {
        zones: vec![],
        upstreams: settings.dns_upstreams.clone(),
    };
    for d in cfg.domains.iter().filter(|d| d.authoritative) {
        let records = cfg
            .records
            .iter()
            .filter(|r| r.domain == d.name)
            .map(record)
            .collect::<Result<Vec<_>, _>>()?;
        set.zones.push(Zone {
            name: absolute(&d.name),
            ttl: d.ttl,
            soa: soa(&d.name),
            records,
        });
    }
    let authoritative = |fqdn: &str| {
        cfg.domains
            .iter()
            .filter(|d| d.authoritative)
            .any(|d| fqdn.ends_with(&format!(".{}", d.name.trim_end_matches('.'))))
    };
    let hosts: Vec<(String, Ipv4Addr)> = cfg
        .hosts
        .iter()
        .filter(|(fqdn, _)| authoritative(fqdn))
        .map(|(fqdn, ip)| (absolute(fqdn), *ip))
        .collect();
    let reverse = ZoneDefaults {
        ttl: 300,
        soa: soa("in-addr.arpa"),
    };
    set.add_hosts(hosts, &reverse)
        .map_err(|e| Error::Plan(format!("dns hosts: {e}")))?;
    // Reverse zones created above carry the generic SOA; name them properly.
    for z in &mut set.zones {
        if z.name.ends_with("in-addr.arpa.") {
            z.soa = soa(&z.name);
        }
    }
    Ok(set)
}

fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// A region DNS record in the DNS server's form. The region validated it;
/// a failure here means the two disagree, which is reported, not hidden.
fn record(r: &DnsRecord) -> Result<Record, Error> {
    let bad = || {
        Error::Plan(format!(
            "dns record {} {} {} in {}: data does not parse",
            r.name, r.rtype, r.data, r.domain
        ))
    };
    let data = match r.rtype.as_str() {
        "A" => RecordData::A(r.data.parse().map_err(|_| bad())?),
        "CNAME" => RecordData::Cname(absolute(&r.data)),
        "TXT" => RecordData::Txt(vec![r.data.clone()]),
        "MX" => {
            let (pref, host) = r.data.split_once(' ').ok_or_else(bad)?;
            RecordData::Mx {
                preference: pref.parse().map_err(|_| bad())?,
                exchange: absolute(host.trim()),
            }
        }
        "SRV" => {
            let p: Vec<&str> = r.data.split_whitespace().collect();
            let [prio, weight, port, target] = p[..] else {
                return Err(bad());
            };
            RecordData::Srv {
                priority: prio.parse().map_err(|_| bad())?,
                weight: weight.parse().map_err(|_| bad())?,
                port: port.parse().map_err(|_| bad())?,
                target: absolute(target),
            }
        }
        _ => return Err(bad()),
    };
    Ok(Record {
        name: r.name.clone(),
        ttl: r.ttl,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kumo_model::network::{Cidr, Domain, IpRange, RackHost, RackSubnet};

    fn settings() -> PlanSettings {
        PlanSettings {
            rack_name: "rack1".into(),
            http_port: 5248,
            serve_dns: true,
            dns_upstreams: vec!["192.0.2.53:53".parse().unwrap()],
        }
    }

    fn config() -> RackConfig {
        let range = |kind, a: &str, b: &str| IpRange {
            kind,
            start: a.parse().unwrap(),
            end: b.parse().unwrap(),
            comment: String::new(),
        };
        RackConfig {
            subnets: vec![RackSubnet {
                cidr: "10.20.0.0/24".parse::<Cidr>().unwrap(),
                gateway: Some("10.20.0.1".parse().unwrap()),
                dns_servers: vec![],
                domain: Some("lab.example".into()),
                mtu: 1500,
                dynamic_ranges: vec![range(RangeKind::Dynamic, "10.20.0.100", "10.20.0.150")],
                reserved_ranges: vec![range(RangeKind::Reserved, "10.20.0.2", "10.20.0.9")],
                hosts: vec![RackHost {
                    mac: "52:54:00:00:00:0a".into(),
                    ip: "10.20.0.10".parse().unwrap(),
                    hostname: "node1".into(),
                }],
            }],
            domains: vec![
                Domain {
                    name: "lab.example".into(),
                    ttl: 60,
                    authoritative: true,
                },
                Domain {
                    name: "elsewhere.example".into(),
                    ttl: 60,
                    authoritative: false,
                },
            ],
            hosts: vec![
                ("node1.lab.example".into(), "10.20.0.10".parse().unwrap()),
                (
                    "node2.elsewhere.example".into(),
                    "10.20.0.11".parse().unwrap(),
                ),
            ],
            records: vec![
                DnsRecord {
                    domain: "lab.example".into(),
                    name: "www".into(),
                    rtype: "CNAME".into(),
                    data: "node1.lab.example".into(),
                    ttl: None,
                },
                DnsRecord {
                    domain: "lab.example".into(),
                    name: "_http._tcp".into(),
                    rtype: "SRV".into(),
                    data: "0 5 80 node1.lab.example".into(),
                    ttl: Some(30),
                },
            ],
            boot: vec![],
            images: vec![],
        }
    }

    fn iface() -> Interface {
        Interface {
            name: "br0".into(),
            addr: "10.20.0.2".parse().unwrap(),
        }
    }

    #[test]
    fn dhcp_config_serves_the_rack_address_for_dns_and_boot() {
        let c = dhcp_config(&config(), &iface(), &settings());
        c.validate().unwrap();
        insta::assert_debug_snapshot!(c);
    }

    #[test]
    fn subnet_dns_servers_win_over_the_rack() {
        let mut cfg = config();
        cfg.subnets[0].dns_servers = vec!["10.20.0.53".parse().unwrap()];
        let c = dhcp_config(&cfg, &iface(), &settings());
        assert_eq!(
            c.subnets[0].dns_servers,
            vec!["10.20.0.53".parse::<Ipv4Addr>().unwrap()]
        );
        let mut s = settings();
        s.serve_dns = false;
        let c = dhcp_config(&config(), &iface(), &s);
        assert!(c.subnets[0].dns_servers.is_empty());
    }

    #[test]
    fn a_host_with_an_unparseable_mac_is_left_out_not_fatal() {
        let mut cfg = config();
        cfg.subnets[0].hosts[0].mac = "not-a-mac".into();
        let c = dhcp_config(&cfg, &iface(), &settings());
        assert!(c.subnets[0].hosts.is_empty());
    }

    #[test]
    fn zones_hold_authoritative_domains_hosts_and_reverse_names() {
        let z = zones(&config(), &settings(), 1_700_000_000).unwrap();
        let names: Vec<&str> = z.zones.iter().map(|z| z.name.as_str()).collect();
        assert_eq!(names, ["lab.example.", "0.20.10.in-addr.arpa."]);
        insta::assert_snapshot!(serde_json::to_string_pretty(&z).unwrap());
    }

    #[test]
    fn a_record_the_dns_server_cannot_parse_is_an_error_naming_it() {
        let mut cfg = config();
        cfg.records[1].data = "zero five eighty x".into();
        let e = zones(&cfg, &settings(), 1).unwrap_err().to_string();
        assert!(e.contains("_http._tcp SRV"), "{e}");
    }
}
