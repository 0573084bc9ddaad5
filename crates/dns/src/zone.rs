//! The zone data the region hands the rack, and its validation into the
//! indexed form the core answers from.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::rr::rdata::{self, SOA};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Everything the DNS server serves: the zones it is authoritative for and
/// the upstream servers it forwards every other name to (none: REFUSED).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneSet {
    pub zones: Vec<Zone>,
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
}

/// One zone. `name` is absolute (a trailing dot is optional). `ttl` is the
/// default for records without their own and the SOA's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    pub name: String,
    pub ttl: u32,
    pub soa: Soa,
    #[serde(default)]
    pub records: Vec<Record>,
}

/// The zone's SOA fields. `mname` and `rname` are absolute names; `rname`
/// is the mailbox in DNS form (`hostmaster.example.com`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Soa {
    pub mname: String,
    pub rname: String,
    pub serial: u32,
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Also the TTL of negative answers (RFC 2308), capped by the zone TTL.
    pub minimum: u32,
}

/// One resource record. `name` follows zone-file rules: `@` is the apex, a
/// name with a trailing dot is absolute (and must lie in the zone),
/// anything else is relative to the zone. Names inside `data` (CNAME, PTR,
/// NS, MX and SRV targets) are always absolute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    #[serde(flatten)]
    pub data: RecordData,
}

/// A record's type and data; serialised as `"type": "A", "data": …`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "UPPERCASE")]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    Txt(Vec<String>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
    Mx {
        preference: u16,
        exchange: String,
    },
    /// Only at the apex: delegation to child zones is not supported.
    Ns(String),
    Ptr(String),
}

impl RecordData {
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::AAAA,
            RecordData::Cname(_) => RecordType::CNAME,
            RecordData::Txt(_) => RecordType::TXT,
            RecordData::Srv { .. } => RecordType::SRV,
            RecordData::Mx { .. } => RecordType::MX,
            RecordData::Ns(_) => RecordType::NS,
            RecordData::Ptr(_) => RecordType::PTR,
        }
    }
}

impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.record_type())?;
        match self {
            RecordData::A(a) => write!(f, "{a}"),
            RecordData::Aaaa(a) => write!(f, "{a}"),
            RecordData::Cname(n) | RecordData::Ns(n) | RecordData::Ptr(n) => write!(f, "{n}"),
            RecordData::Txt(t) => write!(f, "{t:?}"),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
            RecordData::Mx {
                preference,
                exchange,
            } => write!(f, "{preference} {exchange}"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name, self.data)
    }
}

/// What [`ZoneSet::add_hosts`] gives the zones it has to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneDefaults {
    pub ttl: u32,
    pub soa: Soa,
}

impl ZoneSet {
    /// Adds an A record `fqdn → address` and a PTR record back for every
    /// host, to the zone that contains each name (the longest matching zone
    /// already in the set), creating `domain` (the fqdn minus its first
    /// label) and the /24 reverse zone `c.b.a.in-addr.arpa` from `defaults`
    /// when none does. Conflicts are found by validation, as for any record.
    pub fn add_hosts<S: AsRef<str>>(
        &mut self,
        hosts: impl IntoIterator<Item = (S, Ipv4Addr)>,
        defaults: &ZoneDefaults,
    ) -> Result<(), Error> {
        for (fqdn, address) in hosts {
            let fqdn = fqdn.as_ref();
            let host_err = |reason: String| Error::Host {
                fqdn: fqdn.to_owned(),
                reason,
            };
            let name = parse_absolute(fqdn).map_err(host_err)?;
            if name.num_labels() < 2 {
                return Err(host_err("needs a host name and a domain".into()));
            }
            let owner = format!("{}", name);
            self.zone_for(&name, &name.base_name(), defaults)
                .records
                .push(Record {
                    name: owner.clone(),
                    ttl: None,
                    data: RecordData::A(address),
                });
            let [a, b, c, d] = address.octets();
            let ptr = parse_absolute(&format!("{d}.{c}.{b}.{a}.in-addr.arpa"))
                .expect("reverse names are valid");
            self.zone_for(&ptr, &ptr.base_name(), defaults)
                .records
                .push(Record {
                    name: format!("{ptr}"),
                    ttl: None,
                    data: RecordData::Ptr(owner),
                });
        }
        Ok(())
    }

    /// The existing zone holding `name`, or a new zone `origin`.
    fn zone_for(&mut self, name: &Name, origin: &Name, defaults: &ZoneDefaults) -> &mut Zone {
        let best = self
            .zones
            .iter()
            .enumerate()
            .filter_map(|(i, z)| {
                let zn = parse_absolute(&z.name).ok()?;
                zn.zone_of(name).then_some((zn.num_labels(), i))
            })
            .max();
        let i = match best {
            Some((_, i)) => i,
            None => {
                self.zones.push(Zone {
                    name: format!("{origin}"),
                    ttl: defaults.ttl,
                    soa: defaults.soa.clone(),
                    records: vec![],
                });
                self.zones.len() - 1
            }
        };
        &mut self.zones[i]
    }
}

/// The largest label and name (RFC 1035 2.3.4).
const MAX_LABEL: usize = 63;
const MAX_NAME_WIRE: usize = 255;

/// Parses an absolute name (trailing dot optional), lowercased, checking
/// each label: 1–63 bytes of letters, digits, `-` and `_` (SRV owners), no
/// leading or trailing `-`.
pub(crate) fn parse_absolute(text: &str) -> Result<Name, String> {
    let t = text.strip_suffix('.').unwrap_or(text);
    if t.is_empty() {
        return Ok(Name::root());
    }
    let mut wire = 1;
    for label in t.split('.') {
        check_label(label)?;
        wire += label.len() + 1;
    }
    if wire > MAX_NAME_WIRE {
        return Err(format!("name is longer than {MAX_NAME_WIRE} bytes"));
    }
    let mut name = Name::from_ascii(t).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("empty label".into());
    }
    if label.len() > MAX_LABEL {
        return Err(format!("label {label:?} is longer than {MAX_LABEL} bytes"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!("label {label:?} has the character {c:?}"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label {label:?} starts or ends with '-'"));
    }
    Ok(())
}

/// An owner name in zone-file form (see [`Record`]).
fn parse_owner(text: &str, origin: &Name) -> Result<Name, String> {
    if text == "@" {
        return Ok(origin.clone());
    }
    if text.ends_with('.') {
        return parse_absolute(text);
    }
    if text.is_empty() {
        return Err("empty name".into());
    }
    let relative = parse_absolute(text)?;
    let joined = format!("{}.{}", text, origin);
    if relative.len() + origin.len() > MAX_NAME_WIRE {
        return Err(format!("name is longer than {MAX_NAME_WIRE} bytes"));
    }
    parse_absolute(&joined)
}

/// The validated, indexed zone set the core answers from.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    pub(crate) zones: HashMap<Name, CompiledZone>,
    pub(crate) upstreams: Vec<SocketAddr>,
}

#[derive(Debug)]
pub(crate) struct CompiledZone {
    pub(crate) soa: hickory_proto::rr::Record,
    /// Record sets by lowercased owner, then type.
    pub(crate) nodes: HashMap<Name, BTreeMap<u16, Vec<hickory_proto::rr::Record>>>,
    /// Names with no records but records below them: NODATA, not NXDOMAIN.
    pub(crate) empty_non_terminals: HashSet<Name>,
}

impl Catalog {
    /// The zone `name` falls in: the longest enclosing origin.
    pub(crate) fn zone_of(&self, name: &Name) -> Option<&CompiledZone> {
        let mut n = name.clone();
        loop {
            if let Some(z) = self.zones.get(&n) {
                return Some(z);
            }
            if n.is_root() {
                return None;
            }
            n = n.base_name();
        }
    }

    pub(crate) fn compile(set: &ZoneSet) -> Result<Self, Error> {
        let mut origins = HashSet::new();
        for z in &set.zones {
            let origin = parse_absolute(&z.name).map_err(|reason| Error::Zone {
                zone: z.name.clone(),
                reason,
            })?;
            if !origins.insert(origin) {
                return Err(Error::Zone {
                    zone: z.name.clone(),
                    reason: "defined twice".into(),
                });
            }
        }
        if let Some(u) = set.upstreams.iter().find(|u| u.port() == 0) {
            return Err(Error::Upstream(*u));
        }
        let mut zones = HashMap::new();
        for z in &set.zones {
            let origin = parse_absolute(&z.name).expect("checked above");
            let compiled = compile_zone(z, &origin, &origins)?;
            zones.insert(origin, compiled);
        }
        Ok(Catalog {
            zones,
            upstreams: set.upstreams.clone(),
        })
    }
}

fn compile_zone(z: &Zone, origin: &Name, origins: &HashSet<Name>) -> Result<CompiledZone, Error> {
    let zone_err = |reason: String| Error::Zone {
        zone: z.name.clone(),
        reason,
    };
    let soa_name = |field: &str, text: &str| {
        parse_absolute(text).map_err(|r| zone_err(format!("soa {field} {text:?}: {r}")))
    };
    let soa = SOA::new(
        soa_name("mname", &z.soa.mname)?,
        soa_name("rname", &z.soa.rname)?,
        z.soa.serial,
        clamp_i32(z.soa.refresh),
        clamp_i32(z.soa.retry),
        clamp_i32(z.soa.expire),
        z.soa.minimum,
    );
    let mname = soa.mname.clone();
    let soa = hickory_proto::rr::Record::from_rdata(origin.clone(), z.ttl, RData::SOA(soa));

    let mut nodes: HashMap<Name, BTreeMap<u16, Vec<hickory_proto::rr::Record>>> = HashMap::new();
    for r in &z.records {
        let rec_err = |reason: String| Error::Record {
            zone: z.name.clone(),
            record: r.to_string(),
            reason,
        };
        let owner = parse_owner(&r.name, origin).map_err(rec_err)?;
        if !origin.zone_of(&owner) {
            return Err(rec_err(format!("{owner} is outside the zone")));
        }
        // A more specific zone we also serve would shadow it.
        let mut n = owner.clone();
        while n.num_labels() > origin.num_labels() {
            if origins.contains(&n) {
                return Err(rec_err(format!("{owner} belongs to the zone {n}")));
            }
            n = n.base_name();
        }
        let target = |t: &str| parse_absolute(t).map_err(|e| rec_err(format!("target: {e}")));
        let data = match &r.data {
            RecordData::A(a) => RData::A((*a).into()),
            RecordData::Aaaa(a) => RData::AAAA((*a).into()),
            RecordData::Cname(t) => {
                if owner == *origin {
                    return Err(rec_err("a CNAME cannot be at the zone apex".into()));
                }
                RData::CNAME(rdata::CNAME(target(t)?))
            }
            RecordData::Ptr(t) => RData::PTR(rdata::PTR(target(t)?)),
            RecordData::Ns(t) => {
                if owner != *origin {
                    return Err(rec_err(
                        "NS records are only allowed at the apex (no delegation)".into(),
                    ));
                }
                RData::NS(rdata::NS(target(t)?))
            }
            RecordData::Mx {
                preference,
                exchange,
            } => RData::MX(rdata::MX::new(*preference, target(exchange)?)),
            RecordData::Srv {
                priority,
                weight,
                port,
                target: t,
            } => RData::SRV(rdata::SRV::new(*priority, *weight, *port, target(t)?)),
            RecordData::Txt(strings) => {
                if strings.is_empty() {
                    return Err(rec_err("TXT needs at least one string".into()));
                }
                if let Some(s) = strings.iter().find(|s| s.len() > 255) {
                    return Err(rec_err(format!(
                        "TXT string of {} bytes is longer than 255",
                        s.len()
                    )));
                }
                if strings.iter().map(|s| s.len() + 1).sum::<usize>() > 60_000 {
                    return Err(rec_err("TXT data is too long".into()));
                }
                RData::TXT(rdata::TXT::new(strings.clone()))
            }
        };
        let ttl = r.ttl.unwrap_or(z.ttl);
        let rtype = u16::from(r.data.record_type());
        let set = nodes
            .entry(owner.clone())
            .or_default()
            .entry(rtype)
            .or_default();
        if set.iter().any(|x| x.data == data) {
            return Err(rec_err("duplicate record".into()));
        }
        if let Some(first) = set.first() {
            if first.ttl != ttl {
                return Err(rec_err(format!(
                    "TTL {ttl} differs from {} of the other {} records at {owner} (RFC 2181 5.2)",
                    first.ttl,
                    r.data.record_type()
                )));
            }
        }
        set.push(hickory_proto::rr::Record::from_rdata(owner, ttl, data));
    }

    let cname = u16::from(RecordType::CNAME);
    for (owner, sets) in &nodes {
        if let Some(cnames) = sets.get(&cname) {
            let shown = || {
                let c = &cnames[0];
                format!("{} CNAME {}", owner, c.data)
            };
            if cnames.len() > 1 {
                return Err(Error::Record {
                    zone: z.name.clone(),
                    record: shown(),
                    reason: "more than one CNAME at the name".into(),
                });
            }
            if sets.len() > 1 {
                let others: Vec<String> = sets
                    .keys()
                    .filter(|t| **t != cname)
                    .map(|t| RecordType::from(*t).to_string())
                    .collect();
                return Err(Error::Record {
                    zone: z.name.clone(),
                    record: shown(),
                    reason: format!(
                        "a CNAME cannot coexist with other data at the name ({})",
                        others.join(", ")
                    ),
                });
            }
        }
    }

    // Every zone answers NS at its apex; the SOA's mname if none is given.
    let ns = u16::from(RecordType::NS);
    let apex = nodes.entry(origin.clone()).or_default();
    apex.entry(ns).or_insert_with(|| {
        vec![hickory_proto::rr::Record::from_rdata(
            origin.clone(),
            z.ttl,
            RData::NS(rdata::NS(mname)),
        )]
    });
    apex.insert(u16::from(RecordType::SOA), vec![soa.clone()]);

    let mut empty_non_terminals = HashSet::new();
    for owner in nodes.keys() {
        let mut n = owner.base_name();
        while n.num_labels() > origin.num_labels() {
            if !nodes.contains_key(&n) {
                empty_non_terminals.insert(n.clone());
            }
            n = n.base_name();
        }
    }
    Ok(CompiledZone {
        soa,
        nodes,
        empty_non_terminals,
    })
}

/// SOA timers are unsigned on the wire; hickory types them i32.
fn clamp_i32(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}
