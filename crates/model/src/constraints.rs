//! Allocation constraints, written as operators type them for Juju and
//! MAAS: `tags=compute,ssd not_tags=gpu cores=4 mem=8G arch=amd64 zone=z1`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::lifecycle::MachineStatus;
use crate::{Machine, ModelError};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Constraints {
    pub tags: Vec<String>,
    pub not_tags: Vec<String>,
    pub cores: Option<u32>,
    pub mem_mib: Option<u64>,
    pub arch: Option<String>,
    pub zone: Option<String>,
    pub pool: Option<String>,
}

/// Parses a memory size: a number with an optional M, G or T suffix;
/// a bare number is mebibytes, as in Juju.
fn parse_mem(value: &str) -> Option<u64> {
    let v = value.trim();
    let (num, mult) = match v.chars().last()? {
        'M' | 'm' => (&v[..v.len() - 1], 1),
        'G' | 'g' => (&v[..v.len() - 1], 1024),
        'T' | 't' => (&v[..v.len() - 1], 1024 * 1024),
        _ => (v, 1),
    };
    let n: f64 = num.parse().ok()?;
    if !(n.is_finite() && n >= 0.0) {
        return None;
    }
    Some((n * mult as f64).ceil() as u64)
}

/// A constraint as text (for messages) and as a predicate.
type Clause<'a> = (String, Box<dyn Fn(&Machine) -> bool + 'a>);

impl Constraints {
    pub fn parse(input: &str) -> Result<Self, ModelError> {
        let mut c = Constraints::default();
        for term in input.split_whitespace() {
            let bad = |reason: &str| ModelError::InvalidConstraint {
                constraint: term.to_owned(),
                reason: reason.to_owned(),
            };
            let (key, value) = term
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            if value.is_empty() {
                return Err(bad("empty value"));
            }
            let list = || {
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            match key {
                "tags" => c.tags.extend(list()),
                "not_tags" | "not-tags" => c.not_tags.extend(list()),
                "cores" | "cpu-cores" | "cpu_count" => {
                    c.cores = Some(
                        value
                            .parse()
                            .map_err(|_| bad("cores must be a whole number"))?,
                    )
                }
                "mem" | "memory" => {
                    c.mem_mib = Some(
                        parse_mem(value)
                            .ok_or_else(|| bad("mem must be a size such as 2048, 8G or 1.5T"))?,
                    )
                }
                "arch" => c.arch = Some(value.to_owned()),
                "zone" => c.zone = Some(value.to_owned()),
                "pool" => c.pool = Some(value.to_owned()),
                _ => {
                    return Err(bad(
                        "unknown key; known keys: tags, not_tags, cores, mem, arch, zone, pool",
                    ))
                }
            }
        }
        Ok(c)
    }

    /// One predicate per constraint, with the text that names it in errors.
    fn clauses(&self) -> Vec<Clause<'_>> {
        let mut out: Vec<Clause<'_>> = Vec::new();
        for t in &self.tags {
            out.push((
                format!("tags={t}"),
                Box::new(move |m: &Machine| m.tags.contains(t)),
            ));
        }
        for t in &self.not_tags {
            out.push((
                format!("not_tags={t}"),
                Box::new(move |m: &Machine| !m.tags.contains(t)),
            ));
        }
        if let Some(n) = self.cores {
            out.push((
                format!("cores>={n}"),
                Box::new(move |m: &Machine| m.cpu_count >= n),
            ));
        }
        if let Some(n) = self.mem_mib {
            out.push((
                format!("mem>={n}M"),
                Box::new(move |m: &Machine| m.memory_mib >= n),
            ));
        }
        if let Some(a) = &self.arch {
            out.push((
                format!("arch={a}"),
                Box::new(move |m: &Machine| &m.arch == a),
            ));
        }
        if let Some(z) = &self.zone {
            out.push((
                format!("zone={z}"),
                Box::new(move |m: &Machine| m.zone.as_str() == z),
            ));
        }
        if let Some(p) = &self.pool {
            out.push((
                format!("pool={p}"),
                Box::new(move |m: &Machine| m.pool.as_str() == p),
            ));
        }
        out
    }

    pub fn matches(&self, m: &Machine) -> bool {
        self.clauses().iter().all(|(_, f)| f(m))
    }

    /// Picks the smallest Ready machine that satisfies every constraint, so
    /// large machines stay free for requests that need them. When none
    /// does, says how many Ready machines each constraint ruled out.
    pub fn select<'m>(&self, machines: &'m [Machine]) -> Result<&'m Machine, ModelError> {
        let ready: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.status == MachineStatus::Ready)
            .collect();
        let mut matching: Vec<&Machine> =
            ready.iter().copied().filter(|m| self.matches(m)).collect();
        matching.sort_by(|a, b| {
            (a.cpu_count, a.memory_mib, a.hostname.as_str()).cmp(&(
                b.cpu_count,
                b.memory_mib,
                b.hostname.as_str(),
            ))
        });
        if let Some(m) = matching.first() {
            return Ok(m);
        }
        let ruled_out = self
            .clauses()
            .into_iter()
            .map(|(name, f)| (name, ready.iter().filter(|m| !f(m)).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        Err(ModelError::NoMachineMatches {
            constraints: self.to_string(),
            ready: ready.len(),
            not_ready: machines.len() - ready.len(),
            ruled_out,
        })
    }
}

impl fmt::Display for Constraints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if !self.tags.is_empty() {
            parts.push(format!("tags={}", self.tags.join(",")));
        }
        if !self.not_tags.is_empty() {
            parts.push(format!("not_tags={}", self.not_tags.join(",")));
        }
        if let Some(n) = self.cores {
            parts.push(format!("cores={n}"));
        }
        if let Some(n) = self.mem_mib {
            parts.push(format!("mem={n}M"));
        }
        for (k, v) in [
            ("arch", &self.arch),
            ("zone", &self.zone),
            ("pool", &self.pool),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::EraseMode;
    use crate::PowerState;

    pub(crate) fn machine(
        name: &str,
        status: MachineStatus,
        tags: &[&str],
        cores: u32,
        mem: u64,
    ) -> Machine {
        Machine {
            system_id: {
                let mut b = [0u8; 6];
                for (i, c) in name.bytes().take(6).enumerate() {
                    b[i] = c;
                }
                crate::SystemId::from_random(b)
            },
            hostname: name.parse().unwrap(),
            arch: "amd64".into(),
            status,
            previous_status: None,
            status_message: String::new(),
            owner: None,
            agent_name: None,
            commissioned: true,
            erase: EraseMode::None,
            macs: vec![],
            power_type: "manual".into(),
            power_parameters: Default::default(),
            power_state: PowerState::Unknown,
            zone: crate::Name::parse("zone", "default").unwrap(),
            pool: crate::Name::parse("pool", "default").unwrap(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            cpu_count: cores,
            memory_mib: mem,
            storage_bytes: 0,
            inventory: None,
            deadline: None,
            deployment: None,
            script_task: None,
            version: 1,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn parses_juju_style_constraints() {
        let c = Constraints::parse("tags=physical1,ssd not_tags=gpu cores=4 mem=8G arch=amd64")
            .unwrap();
        assert_eq!(c.tags, ["physical1", "ssd"]);
        assert_eq!(c.not_tags, ["gpu"]);
        assert_eq!(c.cores, Some(4));
        assert_eq!(c.mem_mib, Some(8192));
        assert_eq!(Constraints::parse(&c.to_string()).unwrap(), c);
        assert_eq!(Constraints::parse("mem=1.5G").unwrap().mem_mib, Some(1536));
    }

    #[test]
    fn rejects_bad_terms_naming_them() {
        for (input, needle) in [
            ("cores=four", "cores=four"),
            ("colour=red", "colour=red"),
            ("tags", "tags"),
            ("mem=lots", "mem=lots"),
            ("zone=", "zone="),
        ] {
            let e = Constraints::parse(input).unwrap_err().to_string();
            assert!(e.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn selects_the_smallest_match_and_explains_misses() {
        let ms = vec![
            machine("big", MachineStatus::Ready, &["compute"], 32, 65536),
            machine("small", MachineStatus::Ready, &["compute"], 4, 8192),
            machine("plain", MachineStatus::Ready, &[], 8, 8192),
            machine("busy", MachineStatus::Deployed, &["compute"], 8, 8192),
        ];
        let c = Constraints::parse("tags=compute").unwrap();
        assert_eq!(c.select(&ms).unwrap().hostname.as_str(), "small");
        let c = Constraints::parse("tags=compute cores=16 mem=128G").unwrap();
        let e = c.select(&ms).unwrap_err();
        match &e {
            ModelError::NoMachineMatches {
                ready,
                not_ready,
                ruled_out,
                ..
            } => {
                assert_eq!((*ready, *not_ready), (3, 1));
                assert_eq!(
                    ruled_out,
                    &vec![
                        ("tags=compute".to_string(), 1),
                        ("cores>=16".to_string(), 2),
                        ("mem>=131072M".to_string(), 3)
                    ]
                );
            }
            other => panic!("{other}"),
        }
        let msg = e.to_string();
        assert!(msg.contains("cores>=16 ruled out 2"), "{msg}");
    }
}
