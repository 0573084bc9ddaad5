//! A bundle checked against the charms it names: options typed by each
//! charm's schema, relations resolved to endpoints with matching interfaces.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::bundle::{Bundle, RelationEnd};
use crate::charm::Charm;
use crate::config::Value;
use crate::error::{Error, Result};
use crate::metadata::{Endpoint, Role, JUJU_INFO};

/// Finds charms by the name a bundle gives them.
pub trait CharmSource {
    fn charm(&self, name: &str) -> Option<&Charm>;
}

impl CharmSource for BTreeMap<String, Charm> {
    fn charm(&self, name: &str) -> Option<&Charm> {
        self.get(name)
    }
}

/// A relation between two endpoints, kept in order so each has one form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Relation {
    pub ends: [(String, String); 2],
}

impl Relation {
    pub fn new(a: (String, String), b: (String, String)) -> Relation {
        let mut ends = [a, b];
        ends.sort();
        Relation { ends }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [(a, ae), (b, be)] = &self.ends;
        write!(f, "{a}:{ae} {b}:{be}")
    }
}

/// An application of a checked bundle: typed options.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedApplication {
    /// Only the options the bundle sets.
    pub options: BTreeMap<String, Value>,
    pub subordinate: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub applications: BTreeMap<String, ResolvedApplication>,
    pub relations: BTreeSet<Relation>,
}

/// Checks a bundle against its charms; reports every problem at once.
pub fn validate(bundle: &Bundle, charms: &dyn CharmSource) -> Result<Resolved> {
    let spans = &bundle.spans;
    let mut errors = Vec::new();
    let mut applications = BTreeMap::new();
    for (name, app) in &bundle.applications {
        let path = format!("applications.{name}");
        let Some(charm) = charms.charm(&app.charm) else {
            errors.push(spans.err(
                &format!("{path}.charm"),
                format!("unknown charm {}", app.charm),
            ));
            continue;
        };
        let subordinate = charm.metadata.subordinate;
        if subordinate && (app.num_units > 0 || !app.to.is_empty()) {
            errors.push(spans.err(
                &format!("{path}.num_units"),
                format!("{} is a subordinate charm: its units follow its principals, so no num_units or to", app.charm),
            ));
        }
        let mut options = BTreeMap::new();
        for (key, raw) in &app.options {
            let op = format!("{path}.options.{key}");
            let Some(option) = charm.config.options.get(key) else {
                errors.push(spans.err(&op, charm.config.unknown_message()));
                continue;
            };
            let value = if raw.quoted && option.kind != crate::config::OptionType::String {
                None
            } else {
                option.parse_text(&raw.text)
            };
            match value {
                Some(v) => {
                    options.insert(key.clone(), v);
                }
                None => errors.push(spans.err(
                    &op,
                    format!(
                        "{}, found {:?} ({} option)",
                        crate::config::ConfigSchema::expected(option.kind),
                        raw.text,
                        option.kind
                    ),
                )),
            }
        }
        applications.insert(
            name.clone(),
            ResolvedApplication {
                options,
                subordinate,
            },
        );
    }
    let mut relations = BTreeSet::new();
    for (i, [a, b]) in bundle.relations.iter().enumerate() {
        let (Some(ca), Some(cb)) = (charm_of(bundle, charms, a), charm_of(bundle, charms, b))
        else {
            continue; // unknown charm, reported above
        };
        match resolve_relation(a, ca, b, cb) {
            Ok(r) => {
                relations.insert(r);
            }
            Err(m) => errors.push(spans.err(&format!("relations[{i}]"), m)),
        }
    }
    Error::collect(errors)?;
    Ok(Resolved {
        applications,
        relations,
    })
}

fn charm_of<'a>(
    bundle: &Bundle,
    charms: &'a dyn CharmSource,
    end: &RelationEnd,
) -> Option<&'a Charm> {
    charms.charm(&bundle.applications.get(&end.application)?.charm)
}

/// The endpoints of one side: the named one, or every one that can relate.
fn candidates(
    end: &RelationEnd,
    charm: &Charm,
) -> std::result::Result<Vec<(String, Endpoint)>, String> {
    match &end.endpoint {
        Some(e) => match charm.metadata.endpoint_named(e) {
            Some(ep) if ep.role == Role::Peers => Err(format!(
                "{end}: peer endpoints relate on their own, not in relations"
            )),
            Some(ep) => Ok(vec![(e.clone(), ep)]),
            None => Err(format!(
                "{end}: unknown endpoint {e} of application {} (charm {} has: {})",
                end.application,
                charm.metadata.name,
                endpoint_list(charm)
            )),
        },
        None => {
            let mut all: Vec<(String, Endpoint)> = charm
                .metadata
                .endpoints
                .iter()
                .filter(|(_, ep)| ep.role != Role::Peers)
                .map(|(n, ep)| (n.clone(), ep.clone()))
                .collect();
            all.push((
                JUJU_INFO.into(),
                charm.metadata.endpoint_named(JUJU_INFO).expect("implicit"),
            ));
            Ok(all)
        }
    }
}

fn endpoint_list(charm: &Charm) -> String {
    let mut names: Vec<String> = charm
        .metadata
        .endpoints
        .iter()
        .filter(|(_, e)| e.role != Role::Peers)
        .map(|(n, e)| format!("{n} ({} {})", e.role, e.interface))
        .collect();
    names.push(format!("{JUJU_INFO} (provides {JUJU_INFO})"));
    names.join(", ")
}

/// Resolves one relation between two applications' charms: the endpoints
/// named, or the one pair whose interfaces match; an ambiguous pair is an
/// error listing the candidates.
pub fn resolve_relation(
    a: &RelationEnd,
    ca: &Charm,
    b: &RelationEnd,
    cb: &Charm,
) -> std::result::Result<Relation, String> {
    if a.application == b.application {
        return Err(format!(
            "{a} and {b}: an application does not relate to itself"
        ));
    }
    let xs = candidates(a, ca)?;
    let ys = candidates(b, cb)?;
    let mut pairs = Vec::new();
    for (xn, x) in &xs {
        for (yn, y) in &ys {
            let roles_fit = matches!(
                (x.role, y.role),
                (Role::Provides, Role::Requires) | (Role::Requires, Role::Provides)
            );
            if roles_fit && x.interface == y.interface {
                pairs.push((xn.clone(), yn.clone()));
            }
        }
    }
    // The implicit juju-info counts only when nothing else fits.
    if pairs.len() > 1 && (a.endpoint.is_none() || b.endpoint.is_none()) {
        let explicit: Vec<_> = pairs
            .iter()
            .filter(|(x, y)| x != JUJU_INFO && y != JUJU_INFO)
            .cloned()
            .collect();
        if !explicit.is_empty() {
            pairs = explicit;
        }
    }
    match pairs.len() {
        1 => {
            let (x, y) = pairs.remove(0);
            Ok(Relation::new(
                (a.application.clone(), x),
                (b.application.clone(), y),
            ))
        }
        0 => {
            if let ([(xn, x)], [(yn, y)]) = (xs.as_slice(), ys.as_slice()) {
                if x.interface != y.interface {
                    return Err(format!(
                        "interfaces do not match: {}:{xn} is {}, {}:{yn} is {}",
                        a.application, x.interface, b.application, y.interface
                    ));
                }
                return Err(format!(
                    "{}:{xn} and {}:{yn} both {} {}; one side must provide and the other require",
                    a.application, b.application, x.role, x.interface
                ));
            }
            Err(format!(
                "{a} and {b} have no endpoints with a matching interface"
            ))
        }
        _ => Err(format!(
            "relation {a} {b} is ambiguous; name the endpoints, one of: {}",
            pairs
                .iter()
                .map(|(x, y)| format!("{}:{x} {}:{y}", a.application, b.application))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::ConfigSchema;
    use crate::metadata::Metadata;

    /// Charms the tests deploy: a database, a web app with two database
    /// endpoints, and a subordinate.
    pub(crate) fn charms() -> BTreeMap<String, Charm> {
        let mut m = BTreeMap::new();
        let mut add = |meta: &str, config: &str| {
            let c = Charm::new(
                Metadata::parse("metadata.yaml", meta).unwrap(),
                ConfigSchema::parse("config.yaml", config).unwrap(),
            );
            m.insert(c.metadata.name.clone(), c);
        };
        add(
            "name: mariadb\nprovides:\n  db: mysql\n  db-admin: mysql\n  metrics: prometheus\npeers:\n  cluster: mariadb-peer\n",
            "options:\n  port: {type: int, default: 3306}\n  tuning: {type: float, default: 0.5}\n  strict: {type: boolean, default: true}\n  name: {type: string}\n",
        );
        add(
            "name: wordpress\nrequires:\n  db: mysql\n  cache: memcache\nprovides:\n  website: http\n",
            "options:\n  title: {type: string, default: blog}\n  workers: {type: int, default: 2}\n",
        );
        add(
            "name: telegraf\nsubordinate: true\nrequires:\n  host:\n    interface: juju-info\n    scope: container\nprovides:\n  metrics: prometheus\n",
            "",
        );
        m
    }

    fn check(text: &str) -> std::result::Result<Resolved, String> {
        let b = Bundle::parse("bundle.yaml", text).map_err(|e| e.to_string())?;
        validate(&b, &charms()).map_err(|e| e.to_string())
    }

    const APPS: &str = "applications:\n  db:\n    charm: mariadb\n    num_units: 1\n  wp:\n    charm: wordpress\n    num_units: 1\n  tg:\n    charm: telegraf\n";

    #[test]
    fn resolves_relations_and_types_options() {
        let r = check(&format!(
            "{APPS}    options: {{}}\nrelations:\n- [wp, db:db]\n- [tg, wp]\n"
        ))
        .unwrap();
        let shown: Vec<String> = r.relations.iter().map(|r| r.to_string()).collect();
        assert_eq!(shown, ["db:db wp:db", "tg:host wp:juju-info"]);
        let r = check("applications:\n  db:\n    charm: mariadb\n    options:\n      port: 3307\n      tuning: 1\n      name: 42\n").unwrap();
        let o = &r.applications["db"].options;
        assert_eq!(o["port"], Value::Int(3307));
        assert_eq!(o["tuning"], Value::Float(1.0));
        assert_eq!(o["name"], Value::String("42".into()));
    }

    #[test]
    fn rejects_bad_options_naming_the_line() {
        let e = check("applications:\n  db:\n    charm: mariadb\n    options:\n      port: \"3307\"\n      colour: red\n      strict: maybe\n").unwrap_err();
        assert_eq!(
            e,
            "bundle.yaml:6:7: applications.db.options.colour: unknown option (the charm has: name, port, strict, tuning)\n\
             bundle.yaml:5:7: applications.db.options.port: expected an integer, found \"3307\" (int option)\n\
             bundle.yaml:7:7: applications.db.options.strict: expected true or false, found \"maybe\" (boolean option)"
        );
        let e = check("applications:\n  db:\n    charm: postgresql\n").unwrap_err();
        assert_eq!(
            e,
            "bundle.yaml:3:5: applications.db.charm: unknown charm postgresql"
        );
    }

    #[test]
    fn rejects_bad_relations() {
        let e = check(&format!("{APPS}relations:\n- [wp, db]\n")).unwrap_err();
        assert_eq!(e, "bundle.yaml:11:3: relations[0]: relation wp db is ambiguous; name the endpoints, one of: wp:db db:db, wp:db db:db-admin");
        let e = check(&format!("{APPS}relations:\n- [wp:db, db:nope]\n")).unwrap_err();
        assert!(e.contains("db:nope: unknown endpoint nope of application db (charm mariadb has: db (provides mysql), db-admin (provides mysql), metrics (provides prometheus), juju-info (provides juju-info))"), "{e}");
        let e = check(&format!("{APPS}relations:\n- [wp:cache, db:db]\n")).unwrap_err();
        assert!(
            e.ends_with("interfaces do not match: wp:cache is memcache, db:db is mysql"),
            "{e}"
        );
        let e = check(&format!("{APPS}relations:\n- [tg:metrics, db:metrics]\n")).unwrap_err();
        assert!(e.ends_with("tg:metrics and db:metrics both provides prometheus; one side must provide and the other require"), "{e}");
        let e = check(&format!("{APPS}relations:\n- [db:cluster, wp]\n")).unwrap_err();
        assert!(e.contains("peer endpoints relate on their own"), "{e}");
    }

    #[test]
    fn subordinates_take_no_units() {
        let e = check("applications:\n  tg:\n    charm: telegraf\n    num_units: 1\n").unwrap_err();
        assert!(
            e.starts_with(
                "bundle.yaml:4:5: applications.tg.num_units: telegraf is a subordinate charm"
            ),
            "{e}"
        );
    }
}
