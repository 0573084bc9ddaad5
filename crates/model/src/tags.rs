//! Automatic tags: a CEL expression over a machine's hardware facts.
//!
//! MAAS writes tag definitions as XPath over `lshw` XML; kumo uses CEL (the
//! Common Expression Language Kubernetes uses for the same job) over a flat,
//! documented set of facts, e.g.
//! `cpu_count >= 8 && disks.exists(d, d.size_gb >= 500)`.

use serde::Serialize;

use crate::{Machine, ModelError};

/// The facts a tag definition can read. Field names are the variable names.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Facts {
    pub hostname: String,
    pub arch: String,
    pub zone: String,
    pub pool: String,
    pub cpu_count: i64,
    pub cpu_model: String,
    pub memory_mib: i64,
    pub storage_gb: i64,
    pub disks: Vec<DiskFacts>,
    pub nics: Vec<NicFacts>,
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub has_bmc: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskFacts {
    pub name: String,
    pub size_gb: i64,
    pub model: String,
    pub serial: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct NicFacts {
    pub name: String,
    pub mac: String,
    pub driver: String,
    pub link_up: bool,
}

pub const FACT_NAMES: &[&str] = &[
    "hostname",
    "arch",
    "zone",
    "pool",
    "cpu_count",
    "cpu_model",
    "memory_mib",
    "storage_gb",
    "disks",
    "nics",
    "vendor",
    "product",
    "serial",
    "has_bmc",
];

const GB: u64 = 1_000_000_000;

impl Facts {
    pub fn of(m: &Machine) -> Facts {
        let inv = m.inventory.clone().unwrap_or_default();
        Facts {
            hostname: m.hostname.to_string(),
            arch: m.arch.clone(),
            zone: m.zone.to_string(),
            pool: m.pool.to_string(),
            cpu_count: m.cpu_count.into(),
            cpu_model: inv.cpu.model,
            memory_mib: m.memory_mib as i64,
            storage_gb: (m.storage_bytes / GB) as i64,
            disks: inv
                .disks
                .into_iter()
                .map(|d| DiskFacts {
                    name: d.name,
                    size_gb: (d.size_bytes / GB) as i64,
                    model: d.model,
                    serial: d.serial,
                })
                .collect(),
            nics: inv
                .nics
                .into_iter()
                .map(|n| NicFacts {
                    name: n.name,
                    mac: n.mac.to_string(),
                    driver: n.driver,
                    link_up: n.link_up,
                })
                .collect(),
            vendor: inv.dmi.vendor,
            product: inv.dmi.product,
            serial: inv.dmi.serial,
            has_bmc: inv.bmc.is_some(),
        }
    }
}

/// Names bound by CEL's comprehension macros (`disks.exists(d, …)`), which
/// the parser reports as references like any other identifier.
fn comprehension_variables(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for mac in [".exists(", ".all(", ".exists_one(", ".map(", ".filter("] {
        for (i, _) in source.match_indices(mac) {
            let rest = &source[i + mac.len()..];
            if let Some((name, _)) = rest.split_once(',') {
                out.push(name.trim().to_owned());
            }
        }
    }
    out
}

/// A compiled tag definition.
pub struct TagDefinition {
    source: String,
    program: cel::Program,
}

impl std::fmt::Debug for TagDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TagDefinition").field(&self.source).finish()
    }
}

impl TagDefinition {
    /// Compiles a definition and proves it well-typed by evaluating it on a
    /// machine with no inventory, so a typo is caught when the tag is
    /// defined rather than silently matching nothing later.
    pub fn compile(source: &str) -> Result<Self, ModelError> {
        let bad = |reason: String| ModelError::InvalidTagDefinition {
            definition: source.to_owned(),
            reason,
        };
        let program = cel::Program::compile(source).map_err(|e| bad(e.to_string()))?;
        let bound = comprehension_variables(source);
        for var in program.references().variables() {
            if !FACT_NAMES.contains(&var) && !bound.iter().any(|b| b == var) {
                return Err(bad(format!(
                    "unknown fact {var:?}; known facts: {}",
                    FACT_NAMES.join(", ")
                )));
            }
        }
        let def = TagDefinition {
            source: source.to_owned(),
            program,
        };
        def.matches_facts(&Facts::default()).map_err(|e| match e {
            ModelError::InvalidTagDefinition { reason, .. } => bad(reason),
            other => other,
        })?;
        Ok(def)
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn matches(&self, machine: &Machine) -> Result<bool, ModelError> {
        self.matches_facts(&Facts::of(machine))
    }

    pub fn matches_facts(&self, facts: &Facts) -> Result<bool, ModelError> {
        let bad = |reason: String| ModelError::InvalidTagDefinition {
            definition: self.source.clone(),
            reason,
        };
        let mut ctx = cel::Context::default();
        let value = cel::to_value(facts).map_err(|e| bad(e.to_string()))?;
        if let cel::Value::Map(map) = value {
            for (k, v) in map.map.iter() {
                if let cel::objects::Key::String(name) = k {
                    ctx.add_variable_from_value(name.to_string(), v.clone());
                }
            }
        }
        match self.program.execute(&ctx) {
            Ok(cel::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(bad(format!("evaluates to {other:?}, not a boolean"))),
            Err(e) => Err(bad(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            cpu_count: 8,
            memory_mib: 16384,
            disks: vec![DiskFacts {
                name: "vda".into(),
                size_gb: 600,
                ..Default::default()
            }],
            vendor: "QEMU".into(),
            ..Default::default()
        }
    }

    #[test]
    fn evaluates_over_facts() {
        let t =
            TagDefinition::compile("cpu_count >= 8 && disks.exists(d, d.size_gb >= 500)").unwrap();
        assert!(t.matches_facts(&facts()).unwrap());
        let t = TagDefinition::compile("memory_mib > 32768 || vendor == 'Dell'").unwrap();
        assert!(!t.matches_facts(&facts()).unwrap());
    }

    #[test]
    fn rejects_syntax_errors_unknown_facts_and_non_booleans() {
        assert!(TagDefinition::compile("cpu_count >=").is_err());
        let e = TagDefinition::compile("cores >= 4")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown fact \"cores\""), "{e}");
        let e = TagDefinition::compile("cpu_count + 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a boolean"), "{e}");
    }
}
