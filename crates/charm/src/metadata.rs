//! A charm's `metadata.yaml`: its name and the endpoints it relates by.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::Result;
use crate::yaml::{self, join_path, Kind, Node, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Provides,
    Requires,
    Peers,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Provides => "provides",
            Role::Requires => "requires",
            Role::Peers => "peers",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub role: Role,
    pub interface: String,
    /// `container` scope relates a subordinate to its principal's units only.
    pub container_scope: bool,
    pub limit: Option<u32>,
}

/// Every charm provides this, so a subordinate can attach to any principal.
pub const JUJU_INFO: &str = "juju-info";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub summary: String,
    pub description: String,
    pub subordinate: bool,
    pub endpoints: BTreeMap<String, Endpoint>,
}

/// Charm, application and endpoint names: lowercase letters, digits and
/// single hyphens, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Application names also may not have an all-digit part, which would
/// read as a unit number (`mysql-0/1`).
pub fn valid_application_name(name: &str) -> bool {
    valid_name(name)
        && name
            .split('-')
            .all(|part| !part.chars().all(|c| c.is_ascii_digit()))
}

impl Metadata {
    pub fn parse(file: &str, text: &str) -> Result<Metadata> {
        let root = yaml::parse(file, text)?;
        Self::from_node(&Reader { file }, &root)
    }

    fn from_node(r: &Reader, root: &Node) -> Result<Metadata> {
        let top = r.map(root, "")?;
        let get = |k: &str| top.iter().find(|(n, _, _)| n == k).map(|(_, _, v)| *v);
        let Some(name_node) = get("name") else {
            return Err(r.err(root, "name", "missing"));
        };
        let name = r.string(name_node, "name")?;
        if !valid_application_name(&name) {
            return Err(r.err(
                name_node,
                "name",
                format!("invalid charm name {name} (lowercase letters, digits and hyphens, starting with a letter)"),
            ));
        }
        let text = |k: &str| -> Result<String> {
            Ok(match get(k) {
                Some(n) => r.opt_string(n, k)?.unwrap_or_default(),
                None => String::new(),
            })
        };
        let subordinate = match get("subordinate") {
            Some(n) => r.boolean(n, "subordinate")?,
            None => false,
        };
        let mut endpoints = BTreeMap::new();
        for (role, key) in [
            (Role::Provides, "provides"),
            (Role::Requires, "requires"),
            (Role::Peers, "peers"),
        ] {
            let Some(section) = get(key) else { continue };
            for (ep, knode, spec) in r.map(section, key)? {
                let path = join_path(key, &ep);
                if !valid_name(&ep) {
                    return Err(r.err(knode, &path, "invalid endpoint name"));
                }
                // A subordinate may require `juju-info`; nothing else may use the prefix.
                if ep.starts_with("juju-") && role != Role::Requires {
                    return Err(r.err(
                        knode,
                        &path,
                        "endpoint names starting with juju- are reserved",
                    ));
                }
                if endpoints.contains_key(&ep) {
                    return Err(r.err(knode, &path, "endpoint declared twice"));
                }
                let endpoint = Self::endpoint(r, role, spec, &path)?;
                endpoints.insert(ep, endpoint);
            }
        }
        if subordinate
            && !endpoints
                .values()
                .any(|e| e.role == Role::Requires && e.container_scope)
        {
            return Err(r.err(
                get("subordinate").unwrap_or(root),
                "subordinate",
                "a subordinate charm needs a requires endpoint with scope: container",
            ));
        }
        Ok(Metadata {
            name,
            summary: text("summary")?,
            description: text("description")?,
            subordinate,
            endpoints,
        })
    }

    fn endpoint(r: &Reader, role: Role, spec: &Node, path: &str) -> Result<Endpoint> {
        // `db: mysql` is short for `db: {interface: mysql}`.
        if let Kind::Scalar { .. } = spec.kind {
            let interface = r.string(spec, path)?;
            if !valid_name(&interface) {
                return Err(r.err(spec, path, "invalid interface name"));
            }
            return Ok(Endpoint {
                role,
                interface,
                container_scope: false,
                limit: None,
            });
        }
        let fields = r.map(spec, path)?;
        r.known_keys(
            &fields,
            path,
            &["interface", "scope", "limit", "optional", "description"],
        )?;
        let get = |k: &str| fields.iter().find(|(n, _, _)| n == k).map(|(_, _, v)| *v);
        let Some(inode) = get("interface") else {
            return Err(r.err(spec, &join_path(path, "interface"), "missing"));
        };
        let interface = r.string(inode, &join_path(path, "interface"))?;
        if !valid_name(&interface) {
            return Err(r.err(
                inode,
                &join_path(path, "interface"),
                "invalid interface name",
            ));
        }
        let container_scope = match get("scope") {
            None => false,
            Some(s) => match r.string(s, &join_path(path, "scope"))?.as_str() {
                "global" => false,
                "container" => true,
                _ => {
                    return Err(r.err(s, &join_path(path, "scope"), "expected global or container"))
                }
            },
        };
        let limit = get("limit")
            .map(|l| r.uint(l, &join_path(path, "limit")))
            .transpose()?;
        if let Some(o) = get("optional") {
            r.boolean(o, &join_path(path, "optional"))?;
        }
        Ok(Endpoint {
            role,
            interface,
            container_scope,
            limit,
        })
    }

    /// The endpoint by name, including the implicit `juju-info`.
    pub fn endpoint_named(&self, name: &str) -> Option<Endpoint> {
        if name == JUJU_INFO {
            return Some(Endpoint {
                role: Role::Provides,
                interface: JUJU_INFO.into(),
                container_scope: false,
                limit: None,
            });
        }
        self.endpoints.get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints_in_both_forms() {
        let m = Metadata::parse(
            "metadata.yaml",
            "name: mariadb\nsummary: SQL\nprovides:\n  db:\n    interface: mysql\nrequires:\n  backup: s3\npeers:\n  cluster:\n    interface: mariadb-peer\n    limit: 1\n",
        )
        .unwrap();
        assert_eq!(m.name, "mariadb");
        assert_eq!(m.endpoints["db"].interface, "mysql");
        assert_eq!(m.endpoints["backup"].role, Role::Requires);
        assert_eq!(m.endpoints["cluster"].limit, Some(1));
        assert!(!m.subordinate);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_application_name("nova-compute"));
        assert!(valid_application_name("mysql8"));
        assert!(!valid_application_name("mysql-8"));
        assert!(!valid_application_name("My"));
        assert!(!valid_name("a--b"));
        let e = Metadata::parse("metadata.yaml", "name: Bad_Name\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("metadata.yaml:1:7: name: invalid charm name Bad_Name"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Metadata::parse(
            "metadata.yaml",
            "name: a\nprovides:\n  db:\n    interfase: mysql\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("metadata.yaml:4:5: provides.db.interfase: unknown key"),
            "{e}"
        );
        let e = Metadata::parse("metadata.yaml", "summary: x\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "metadata.yaml:1:1: name: missing");
    }

    #[test]
    fn subordinates_need_a_container_scoped_requirement() {
        assert!(Metadata::parse("m", "name: a\nsubordinate: true\n").is_err());
        let m = Metadata::parse(
            "m",
            "name: a\nsubordinate: true\nrequires:\n  host:\n    interface: juju-info\n    scope: container\n",
        )
        .unwrap();
        assert!(m.subordinate);
    }
}
