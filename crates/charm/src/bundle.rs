//! Bundles in Juju's `bundle.yaml` shape: applications, machines and
//! relations, parsed with the position of every value kept for errors,
//! and rendered back to YAML.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Location, Result};
use crate::metadata::{valid_application_name, valid_name};
use crate::yaml::{self, join_path, Kind, Node, Reader};

/// An option value as written; its type is known only against the charm's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionValue {
    pub text: String,
    /// Quoted (or block) scalars are strings whatever they look like.
    pub quoted: bool,
}

impl From<&crate::config::Value> for OptionValue {
    fn from(v: &crate::config::Value) -> Self {
        match v {
            crate::config::Value::String(s) => OptionValue {
                text: s.clone(),
                quoted: true,
            },
            v => OptionValue {
                text: v.to_string(),
                quoted: false,
            },
        }
    }
}

/// Where a unit goes (`to:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A machine of the bundle's `machines:`.
    Machine(String),
    /// A new container (`lxd:1`), on a bundle machine or on a new one (`lxd`, `lxd:new`).
    Container { kind: String, host: Option<String> },
    /// A new machine.
    New,
}

const CONTAINER_KINDS: &[&str] = &["lxd", "kvm"];

impl Placement {
    fn parse(text: &str) -> std::result::Result<Placement, String> {
        if text == "new" {
            return Ok(Placement::New);
        }
        if is_machine_id(text) {
            return Ok(Placement::Machine(text.to_owned()));
        }
        let (kind, host) = text.split_once(':').unwrap_or((text, "new"));
        if !CONTAINER_KINDS.contains(&kind) {
            return Err(format!(
                "invalid placement {text} (expected a machine number, new, lxd:N, kvm:N or lxd:new)"
            ));
        }
        let host = match host {
            "new" => None,
            h if is_machine_id(h) => Some(h.to_owned()),
            _ => {
                return Err(format!(
                    "invalid placement {text}: {host} is not a machine number"
                ))
            }
        };
        Ok(Placement::Container {
            kind: kind.to_owned(),
            host,
        })
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Machine(m) => f.write_str(m),
            Placement::Container {
                kind,
                host: Some(h),
            } => write!(f, "{kind}:{h}"),
            Placement::Container { kind, host: None } => write!(f, "{kind}:new"),
            Placement::New => f.write_str("new"),
        }
    }
}

pub(crate) fn is_machine_id(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    pub charm: String,
    pub channel: Option<String>,
    pub num_units: u32,
    pub to: Vec<Placement>,
    pub options: BTreeMap<String, OptionValue>,
    pub constraints: Option<String>,
    pub expose: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineSpec {
    pub constraints: Option<String>,
    pub series: Option<String>,
}

/// One side of a relation as written: `app` or `app:endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelationEnd {
    pub application: String,
    pub endpoint: Option<String>,
}

impl fmt::Display for RelationEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Some(e) => write!(f, "{}:{e}", self.application),
            None => f.write_str(&self.application),
        }
    }
}

/// Positions of a parsed bundle's values by key path; never part of equality.
#[derive(Debug, Clone, Default)]
pub struct Spans {
    pub file: String,
    at: BTreeMap<String, (usize, usize)>,
}

impl PartialEq for Spans {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Spans {}

impl Spans {
    /// Where `path` (or the nearest enclosing value) was written.
    pub fn locate(&self, path: &str) -> Location {
        let mut p = path;
        loop {
            if let Some(&(line, column)) = self.at.get(p) {
                return self.location(line, column);
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.location(1, 1),
            }
        }
    }

    fn location(&self, line: usize, column: usize) -> Location {
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }

    fn record(&mut self, path: &str, node: &Node) {
        self.at.insert(path.to_owned(), (node.line, node.column));
    }

    pub(crate) fn err(&self, path: &str, message: impl Into<String>) -> Error {
        Error::Invalid {
            at: self.locate(path),
            path: path.to_owned(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub name: Option<String>,
    pub description: Option<String>,
    pub applications: BTreeMap<String, Application>,
    pub machines: BTreeMap<String, MachineSpec>,
    pub relations: Vec<[RelationEnd; 2]>,
    pub spans: Spans,
}

impl Bundle {
    /// Parses and checks a bundle on its own (charms are checked by
    /// `validate`). `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Bundle> {
        let root = yaml::parse(file, text)?;
        let r = Reader { file };
        let mut b = Bundle {
            spans: Spans {
                file: file.to_owned(),
                at: BTreeMap::new(),
            },
            ..Bundle::default()
        };
        let top = r.map(&root, "")?;
        r.known_keys(
            &top,
            "",
            &[
                "name",
                "description",
                "series",
                "applications",
                "services",
                "machines",
                "relations",
            ],
        )?;
        for (key, knode, value) in &top {
            b.spans.record(key, knode);
            match key.as_str() {
                "name" => b.name = r.opt_string(value, key)?,
                "description" => b.description = r.opt_string(value, key)?,
                "series" => {
                    r.opt_string(value, key)?;
                }
                "applications" | "services" => {
                    for (name, knode, app) in r.map(value, key)? {
                        let path = format!("applications.{name}");
                        b.spans.record(&path, knode);
                        if !valid_application_name(&name) {
                            return Err(r.err(knode, &path, "invalid application name"));
                        }
                        if b.applications.contains_key(&name) {
                            return Err(r.err(knode, &path, "application listed twice"));
                        }
                        let a = application(&r, &mut b.spans, app, &path)?;
                        b.applications.insert(name, a);
                    }
                }
                "machines" => {
                    for (id, knode, m) in r.map(value, key)? {
                        let path = format!("machines.{id}");
                        b.spans.record(&path, knode);
                        if !is_machine_id(&id) {
                            return Err(r.err(knode, &path, "machine ids are numbers"));
                        }
                        let fields = r.map(m, &path)?;
                        r.known_keys(&fields, &path, &["constraints", "series"])?;
                        let mut spec = MachineSpec::default();
                        for (k, _, v) in &fields {
                            let s = r.opt_string(v, &join_path(&path, k))?;
                            match k.as_str() {
                                "constraints" => spec.constraints = s,
                                _ => spec.series = s,
                            }
                        }
                        b.machines.insert(id, spec);
                    }
                }
                "relations" => {
                    for (i, pair) in r.seq(value, key)?.iter().enumerate() {
                        let path = format!("relations[{i}]");
                        b.spans.record(&path, pair);
                        let ends = r.seq(pair, &path)?;
                        if ends.len() != 2 {
                            return Err(r.err(
                                pair,
                                &path,
                                "expected a pair of application[:endpoint]",
                            ));
                        }
                        let mut out = Vec::new();
                        for (j, end) in ends.iter().enumerate() {
                            let p = format!("{path}[{j}]");
                            b.spans.record(&p, end);
                            let text = r.string(end, &p)?;
                            let (application, endpoint) = match text.split_once(':') {
                                Some((a, e)) => (a.to_owned(), Some(e.to_owned())),
                                None => (text.clone(), None),
                            };
                            if endpoint.as_deref().is_some_and(|e| !valid_name(e)) {
                                return Err(r.err(
                                    end,
                                    &p,
                                    format!("invalid endpoint name in {text}"),
                                ));
                            }
                            out.push(RelationEnd {
                                application,
                                endpoint,
                            });
                        }
                        let [a, c]: [RelationEnd; 2] = out.try_into().expect("two ends");
                        b.relations.push([a, c]);
                    }
                }
                _ => unreachable!("known_keys checked"),
            }
        }
        b.check()?;
        Ok(b)
    }

    /// What can be checked without the charms: placements name machines
    /// the bundle has, no more placements than units, relations name
    /// applications the bundle has.
    fn check(&self) -> Result<()> {
        let mut errors = Vec::new();
        for (name, app) in &self.applications {
            let path = format!("applications.{name}");
            if app.to.len() > app.num_units as usize {
                errors.push(self.spans.err(
                    &format!("{path}.to"),
                    format!("{} placements for {} units", app.to.len(), app.num_units),
                ));
            }
            for (i, p) in app.to.iter().enumerate() {
                let host = match p {
                    Placement::Machine(m) => Some(m),
                    Placement::Container { host, .. } => host.as_ref(),
                    Placement::New => None,
                };
                if let Some(m) = host {
                    if !self.machines.contains_key(m) {
                        errors.push(self.spans.err(
                            &format!("{path}.to[{i}]"),
                            format!("machine {m} is not in the bundle's machines"),
                        ));
                    }
                }
            }
        }
        for (i, pair) in self.relations.iter().enumerate() {
            for (j, end) in pair.iter().enumerate() {
                if !self.applications.contains_key(&end.application) {
                    errors.push(self.spans.err(
                        &format!("relations[{i}][{j}]"),
                        format!("application {} is not in the bundle", end.application),
                    ));
                }
            }
        }
        Error::collect(errors)
    }

    /// The bundle as YAML that `parse` reads back to an equal bundle.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Some(n) = &self.name {
            out.push_str(&format!("name: {}\n", yaml::quote(n)));
        }
        if let Some(d) = &self.description {
            out.push_str(&format!("description: {}\n", yaml::quote(d)));
        }
        if !self.machines.is_empty() {
            out.push_str("machines:\n");
            for (id, m) in &self.machines {
                if m == &MachineSpec::default() {
                    out.push_str(&format!("  {}: {{}}\n", yaml::quote(id)));
                    continue;
                }
                out.push_str(&format!("  {}:\n", yaml::quote(id)));
                if let Some(c) = &m.constraints {
                    out.push_str(&format!("    constraints: {}\n", yaml::quote(c)));
                }
                if let Some(s) = &m.series {
                    out.push_str(&format!("    series: {}\n", yaml::quote(s)));
                }
            }
        }
        if !self.applications.is_empty() {
            out.push_str("applications:\n");
        }
        for (name, a) in &self.applications {
            out.push_str(&format!("  {}:\n", key(name)));
            out.push_str(&format!("    charm: {}\n", yaml::quote(&a.charm)));
            if let Some(c) = &a.channel {
                out.push_str(&format!("    channel: {}\n", yaml::quote(c)));
            }
            out.push_str(&format!("    num_units: {}\n", a.num_units));
            if !a.to.is_empty() {
                let to: Vec<String> = a.to.iter().map(|p| yaml::quote(&p.to_string())).collect();
                out.push_str(&format!("    to: [{}]\n", to.join(", ")));
            }
            if let Some(c) = &a.constraints {
                out.push_str(&format!("    constraints: {}\n", yaml::quote(c)));
            }
            if a.expose {
                out.push_str("    expose: true\n");
            }
            if !a.options.is_empty() {
                out.push_str("    options:\n");
                for (k, v) in &a.options {
                    let text = if v.quoted {
                        yaml::quote(&v.text)
                    } else {
                        v.text.clone()
                    };
                    out.push_str(&format!("      {}: {text}\n", key(k)));
                }
            }
        }
        if !self.relations.is_empty() {
            out.push_str("relations:\n");
            for [a, b] in &self.relations {
                out.push_str(&format!(
                    "- [{}, {}]\n",
                    yaml::quote(&a.to_string()),
                    yaml::quote(&b.to_string())
                ));
            }
        }
        out
    }
}

/// A mapping key, plain when that reads back as the same text.
fn key(k: &str) -> String {
    let plain = k
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && k.starts_with(|c: char| c.is_ascii_alphabetic())
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "null" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
        );
    if plain {
        k.to_owned()
    } else {
        yaml::quote(k)
    }
}

fn application(r: &Reader, spans: &mut Spans, node: &Node, path: &str) -> Result<Application> {
    let fields = r.map(node, path)?;
    r.known_keys(
        &fields,
        path,
        &[
            "charm",
            "channel",
            "num_units",
            "to",
            "options",
            "constraints",
            "expose",
        ],
    )?;
    let mut a = Application {
        charm: String::new(),
        channel: None,
        num_units: 0,
        to: Vec::new(),
        options: BTreeMap::new(),
        constraints: None,
        expose: false,
    };
    let mut has_charm = false;
    for (k, knode, v) in &fields {
        let p = join_path(path, k);
        spans.record(&p, knode);
        match k.as_str() {
            "charm" => {
                a.charm = r.string(v, &p)?;
                if a.charm.is_empty() {
                    return Err(r.err(v, &p, "empty charm name"));
                }
                has_charm = true;
            }
            "channel" => a.channel = r.opt_string(v, &p)?,
            "num_units" => a.num_units = r.uint(v, &p)?,
            "constraints" => a.constraints = r.opt_string(v, &p)?,
            "expose" => a.expose = r.boolean(v, &p)?,
            "to" => {
                let items: Vec<&Node> = match &v.kind {
                    Kind::Seq(items) => items.iter().collect(),
                    Kind::Null => Vec::new(),
                    _ => vec![*v],
                };
                for (i, item) in items.into_iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    spans.record(&ip, item);
                    let text = r.string(item, &ip)?;
                    a.to.push(Placement::parse(&text).map_err(|m| r.err(item, &ip, m))?);
                }
            }
            "options" => {
                for (ok, oknode, ov) in r.map(v, &p)? {
                    let op = join_path(&p, &ok);
                    spans.record(&op, oknode);
                    let value = match &ov.kind {
                        Kind::Scalar { text, plain } => OptionValue {
                            text: text.clone(),
                            quoted: !plain,
                        },
                        _ => {
                            return Err(r.err(
                                ov,
                                &op,
                                format!("expected a value, found {}", ov.describe()),
                            ))
                        }
                    };
                    a.options.insert(ok, value);
                }
            }
            _ => unreachable!("known_keys checked"),
        }
    }
    if !has_charm {
        return Err(r.err(node, &join_path(path, "charm"), "missing"));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = "\
description: a web site
machines:
  \"0\":
    constraints: mem=4G
  \"1\":
applications:
  db:
    charm: mariadb
    num_units: 1
    to: [\"0\"]
    options:
      port: 3306
      name: \"wp\"
  site:
    charm: wordpress
    num_units: 2
    to: [\"lxd:1\", new]
    expose: true
relations:
  - [site:db, db]
";

    #[test]
    fn parses_a_bundle() {
        let b = Bundle::parse("bundle.yaml", BUNDLE).unwrap();
        assert_eq!(b.machines["0"].constraints.as_deref(), Some("mem=4G"));
        assert_eq!(b.machines["1"], MachineSpec::default());
        let site = &b.applications["site"];
        assert_eq!(
            site.to,
            [
                Placement::Container {
                    kind: "lxd".into(),
                    host: Some("1".into())
                },
                Placement::New
            ]
        );
        assert!(site.expose);
        let db = &b.applications["db"];
        assert_eq!(
            db.options["port"],
            OptionValue {
                text: "3306".into(),
                quoted: false
            }
        );
        assert_eq!(
            db.options["name"],
            OptionValue {
                text: "wp".into(),
                quoted: true
            }
        );
        assert_eq!(b.relations[0][0].endpoint.as_deref(), Some("db"));
        assert_eq!(b.relations[0][1].endpoint, None);
    }

    #[test]
    fn renders_what_it_parses() {
        let b = Bundle::parse("bundle.yaml", BUNDLE).unwrap();
        let again = Bundle::parse("again.yaml", &b.render()).unwrap();
        assert_eq!(b, again);
        insta::assert_snapshot!(b.render());
    }

    fn err(text: &str) -> String {
        Bundle::parse("bundle.yaml", text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_line_and_key() {
        assert_eq!(
            err("applications:\n  mysql:\n    charm: mariadb\n    num_units: two\n"),
            "bundle.yaml:4:16: applications.mysql.num_units: expected a non-negative integer"
        );
        assert_eq!(
            err("applications:\n  mysql:\n    charm: mariadb\n    units: 2\n"),
            "bundle.yaml:4:5: applications.mysql.units: unknown key (expected one of: charm, channel, num_units, to, options, constraints, expose)"
        );
        assert_eq!(
            err("applications:\n  mysql:\n    num_units: 1\n"),
            "bundle.yaml:3:5: applications.mysql.charm: missing"
        );
        assert_eq!(
            err("applications:\n  mysql:\n    charm: mariadb\n    num_units: 1\n    to: [\"3\"]\n"),
            "bundle.yaml:5:10: applications.mysql.to[0]: machine 3 is not in the bundle's machines"
        );
        assert_eq!(
            err("applications:\n  mysql:\n    charm: mariadb\n    num_units: 1\n    to: [foo:1]\n"),
            "bundle.yaml:5:10: applications.mysql.to[0]: invalid placement foo:1 (expected a machine number, new, lxd:N, kvm:N or lxd:new)"
        );
        assert_eq!(
            err("machines:\n  \"0\": {}\napplications:\n  mysql:\n    charm: mariadb\n    to: [\"0\"]\n"),
            "bundle.yaml:6:5: applications.mysql.to: 1 placements for 0 units"
        );
        assert_eq!(
            err("applications:\n  a:\n    charm: x\nrelations:\n  - [a, b:db]\n"),
            "bundle.yaml:5:9: relations[0][1]: application b is not in the bundle"
        );
        assert_eq!(
            err("applications: {a: {charm: x}\n").split(':').next(),
            Some("bundle.yaml")
        );
        assert_eq!(err("foo: 1\n"), "bundle.yaml:1:1: foo: unknown key (expected one of: name, description, series, applications, services, machines, relations)");
    }

    #[test]
    fn several_problems_are_reported_together() {
        let e = err("applications:\n  a:\n    charm: x\nrelations:\n  - [b, c]\n");
        assert_eq!(e.lines().count(), 2, "{e}");
    }

    #[test]
    fn placements_read_and_print() {
        for (text, shown) in [
            ("0", "0"),
            ("12", "12"),
            ("new", "new"),
            ("lxd", "lxd:new"),
            ("kvm:3", "kvm:3"),
        ] {
            assert_eq!(Placement::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["01", "lxd:x", "mysql/0", ""] {
            assert!(Placement::parse(bad).is_err(), "{bad}");
        }
    }
}
