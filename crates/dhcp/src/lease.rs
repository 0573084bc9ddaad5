//! Leases and the lease journal's record format (pure: parsing and replay;
//! the file I/O lives in the shell).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Error;

/// An Ethernet hardware address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A bound address: `mac` holds `ip` until `expires_unix_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Milliseconds since the Unix epoch; a plain number so the journal is
    /// readable and independent of the platform's `SystemTime`.
    pub expires_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

impl Lease {
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_unix_ms)
    }

    pub fn is_live(&self, now: SystemTime) -> bool {
        self.expires() > now
    }
}

/// One journal record. The shell must make it durable before sending the
/// reply that follows it, so a restarted server never hands the address to
/// someone else while the client believes it owns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LeaseChange {
    /// A new or renewed lease.
    Bind(Lease),
    /// The client gave the address back (RELEASE) or reported it in use by
    /// someone else (DECLINE).
    Free { mac: MacAddr, ip: Ipv4Addr },
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// One journal line (no trailing newline).
pub fn encode_record(change: &LeaseChange) -> String {
    // A record is plain data; serialising it cannot fail.
    serde_json::to_string(change).unwrap_or_default()
}

/// Replays journal text into the latest lease per address. A torn last line
/// (a crash mid-append) is skipped; a corrupt line elsewhere is an error,
/// because skipping it could forget a live lease.
pub fn replay(text: &str) -> Result<Vec<Lease>, Error> {
    let mut by_ip: BTreeMap<Ipv4Addr, Lease> = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let change: LeaseChange = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
            Err(source) => {
                return Err(Error::JournalRecord {
                    line: i + 1,
                    source,
                })
            }
        };
        match change {
            LeaseChange::Bind(lease) => {
                by_ip.insert(lease.ip, lease);
            }
            LeaseChange::Free { mac, ip } => {
                if by_ip.get(&ip).is_some_and(|l| l.mac == mac) {
                    by_ip.remove(&ip);
                }
            }
        }
    }
    Ok(by_ip.into_values().collect())
}

/// The journal rewritten as one `Bind` per lease.
pub fn compact(leases: &[Lease]) -> String {
    let mut out = String::new();
    for l in leases {
        out.push_str(&encode_record(&LeaseChange::Bind(l.clone())));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(mac: u8, ip: u8, exp: u64) -> Lease {
        Lease {
            mac: MacAddr([0x52, 0x54, 0, 0, 0, mac]),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            expires_unix_ms: exp,
            hostname: None,
        }
    }

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "zz:54:00:ab:cd:0f",
            "525:4:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn replay_keeps_latest_binding_per_address_and_honours_free() {
        let mut j = String::new();
        for c in [
            LeaseChange::Bind(lease(1, 50, 1000)),
            LeaseChange::Bind(lease(2, 51, 1000)),
            LeaseChange::Bind(lease(1, 50, 2000)),
            LeaseChange::Free {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 9]),
                ip: Ipv4Addr::new(10, 0, 0, 51),
            },
            LeaseChange::Free {
                mac: MacAddr([0x52, 0x54, 0, 0, 0, 2]),
                ip: Ipv4Addr::new(10, 0, 0, 51),
            },
        ] {
            j.push_str(&encode_record(&c));
            j.push('\n');
        }
        assert_eq!(replay(&j).unwrap(), vec![lease(1, 50, 2000)]);
        assert_eq!(
            replay(&compact(&replay(&j).unwrap())).unwrap(),
            vec![lease(1, 50, 2000)]
        );
    }

    #[test]
    fn replay_skips_a_torn_tail_but_not_a_corrupt_middle() {
        let good = encode_record(&LeaseChange::Bind(lease(1, 50, 1000)));
        let torn = format!("{good}\n{}", &good[..good.len() / 2]);
        assert_eq!(replay(&torn).unwrap(), vec![lease(1, 50, 1000)]);
        let corrupt = format!("{{nope\n{good}\n");
        let err = replay(&corrupt).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
