use std::collections::BTreeMap;

use kumo_charm::{Charm, ConfigSchema, Metadata};
use kumo_uniter::{complete, next, HookCommit, HookResult, Operation, WorkloadState};

use super::*;

fn charms() -> BTreeMap<String, Charm> {
    let db = Charm::new(
        Metadata::parse(
            "metadata.yaml",
            "name: mariadb\nsummary: db\nprovides:\n  db:\n    interface: mysql\n",
        )
        .unwrap(),
        ConfigSchema::default(),
    );
    let web = Charm::new(
        Metadata::parse("metadata.yaml", "name: webapp\nsummary: web\nrequires:\n  db:\n    interface: mysql\n  cache:\n    interface: memcache\n").unwrap(),
        ConfigSchema::parse("config.yaml", "options:\n  port:\n    type: int\n    default: 8080\n    description: p\n").unwrap(),
    );
    [("sha-db".to_string(), db), ("sha-web".to_string(), web)]
        .into_iter()
        .collect()
}

fn model() -> Model {
    let c = charms();
    let mut m = Model::new(ModelDoc::new("default", ProviderKind::Containers, 0));
    let m0 = m.add_machine(None, None, None, "h".into()).unwrap();
    let m1 = m.add_machine(None, None, None, "h".into()).unwrap();
    m.deploy("mariadb", &c["sha-db"], "sha-db", BTreeMap::new(), None)
        .unwrap();
    m.deploy("web", &c["sha-web"], "sha-web", BTreeMap::new(), None)
        .unwrap();
    m.add_unit("mariadb", &m0).unwrap();
    m.add_unit("web", &m1).unwrap();
    m
}

type SettingsChanges = BTreeMap<u64, BTreeMap<String, Option<String>>>;

/// Plays one agent: runs every owed hook of every unit, with `act`
/// choosing each hook's relation settings.
fn settle(
    m: &mut Model,
    c: &BTreeMap<String, Charm>,
    act: &dyn Fn(&str, &kumo_uniter::Hook) -> SettingsChanges,
) -> Vec<String> {
    let mut ran = vec![];
    for _ in 0..100 {
        let mut progressed = false;
        let units: Vec<UnitDoc> = m.units.values().cloned().collect();
        for u in units {
            let Some(view) = m.unit_view(c, &u) else {
                continue;
            };
            let hook = match next(&view, &u.state) {
                Operation::Run(h) => h,
                _ => continue,
            };
            let commit = HookCommit {
                unit: u.name.clone(),
                base_version: u.state_version,
                hook: hook.clone(),
                result: HookResult::Succeeded,
                state: complete(&u.state, &hook, view.resolve.seq),
                unit_settings: act(&u.name, &hook),
                app_settings: BTreeMap::new(),
                leader_settings: BTreeMap::new(),
                workload_status: None,
                ports: None,
                logs: vec![],
                output: String::new(),
                action: None,
            };
            m.commit(&u.machine, &commit, 1).unwrap();
            ran.push(format!("{} {}", u.name, hook.name()));
            progressed = true;
        }
        if !progressed {
            return ran;
        }
    }
    panic!("no fixpoint");
}

#[test]
fn settings_set_by_one_side_reach_the_other() {
    let c = charms();
    let mut m = model();
    m.relate(&c, "web", "mariadb").unwrap();
    let ran = settle(&mut m, &c, &|unit, hook| {
        let mut out = BTreeMap::new();
        if unit == "mariadb/0" && hook.name() == "db-relation-joined" {
            out.insert(
                1,
                [("password".to_string(), Some("x".to_string()))]
                    .into_iter()
                    .collect(),
            );
        }
        out
    });
    assert!(
        ran.contains(&"web/0 db-relation-changed".to_string()),
        "{ran:?}"
    );
    let web = m.units["web/0"].clone();
    let view = m.unit_view(&c, &web).unwrap();
    assert_eq!(
        view.relations[0].remote_units["mariadb/0"].data["password"],
        "x"
    );
    // A retried commit is acknowledged, not applied twice.
    let status = m.status(&c, 1);
    assert_eq!(status.relations[0].ends, ["mariadb:db", "web:db"]);
    assert!(status.units["web/0"].leader);
}

#[test]
fn bad_relations_and_placements_are_refused() {
    let c = charms();
    let mut m = model();
    let e = m.relate(&c, "web:cache", "mariadb:db").unwrap_err();
    assert!(e.to_string().contains("interfaces do not match"), "{e}");
    assert_eq!(
        m.check_placement("lxd:9").unwrap_err().code(),
        "invalid_field"
    );
    assert_eq!(
        m.check_placement("lxd:0").unwrap(),
        Placement::NewContainer("0".into())
    );
    let e = m
        .set_config(
            &c,
            "web",
            &[("port".to_string(), "eighty".to_string())]
                .into_iter()
                .collect(),
            &[],
        )
        .unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    let e = m
        .set_config(
            &c,
            "web",
            &[("nope".to_string(), "1".to_string())]
                .into_iter()
                .collect(),
            &[],
        )
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn a_commit_is_applied_once() {
    let c = charms();
    let mut m = model();
    let u = m.units["web/0"].clone();
    let view = m.unit_view(&c, &u).unwrap();
    let Operation::Run(hook) = next(&view, &u.state) else {
        panic!()
    };
    let commit = HookCommit {
        unit: u.name.clone(),
        base_version: 0,
        hook: hook.clone(),
        result: HookResult::Succeeded,
        state: complete(&u.state, &hook, 0),
        unit_settings: BTreeMap::new(),
        app_settings: BTreeMap::new(),
        leader_settings: BTreeMap::new(),
        workload_status: Some(kumo_uniter::WorkloadStatus {
            state: WorkloadState::Maintenance,
            message: "installing".into(),
        }),
        ports: None,
        logs: vec![],
        output: String::new(),
        action: None,
    };
    assert_eq!(m.commit("1", &commit, 1).unwrap().1, 1);
    assert_eq!(m.commit("1", &commit, 1).unwrap().1, 1);
    assert_eq!(m.units["web/0"].state_version, 1);
    assert_eq!(
        m.commit("0", &commit, 1).unwrap_err().code(),
        "unauthorized"
    );
}

#[test]
fn removing_the_leader_elects_another() {
    let mut m = model();
    let u1 = m.add_unit("web", "0").unwrap();
    assert_eq!(m.doc.applications["web"].leader.as_deref(), Some("web/0"));
    m.remove_unit("web/0").unwrap();
    assert_eq!(
        m.doc.applications["web"].leader.as_deref(),
        Some(u1.as_str())
    );
}

fn with_sub_and_peers() -> (Model, BTreeMap<String, Charm>) {
    let mut c = charms();
    c.insert(
        "sha-agent".into(),
        Charm::new(
            Metadata::parse(
                "metadata.yaml",
                "name: bridge-agent\nsummary: s\nsubordinate: true\nrequires:\n  host:\n    interface: juju-info\n    scope: container\n",
            )
            .unwrap(),
            ConfigSchema::default(),
        ),
    );
    c.insert(
        "sha-cluster".into(),
        Charm::new(
            Metadata::parse(
                "metadata.yaml",
                "name: cluster\nsummary: s\npeers:\n  ring:\n    interface: ring\n",
            )
            .unwrap(),
            ConfigSchema::default(),
        ),
    );
    let mut m = model();
    m.deploy("agent", &c["sha-agent"], "sha-agent", BTreeMap::new(), None)
        .unwrap();
    (m, c)
}

#[test]
fn a_subordinate_follows_its_principals_units() {
    let (mut m, c) = with_sub_and_peers();
    assert_eq!(
        m.add_unit("agent", "0").unwrap_err().code(),
        "invalid_field"
    );
    m.relate(&c, "agent", "web").unwrap();
    let subs: Vec<(String, String)> = m
        .units
        .values()
        .filter(|u| u.application == "agent")
        .map(|u| (u.machine.clone(), u.principal.clone().unwrap()))
        .collect();
    assert_eq!(subs, [("1".to_string(), "web/0".to_string())]);
    // A new principal unit brings its own subordinate.
    m.add_unit("web", "0").unwrap();
    assert_eq!(
        m.units
            .values()
            .filter(|u| u.application == "agent")
            .count(),
        2
    );
    // The subordinate sees only the principal on its machine.
    settle(&mut m, &c, &|_, _| BTreeMap::new());
    let sub = m
        .units
        .values()
        .find(|u| u.principal.as_deref() == Some("web/0"))
        .unwrap()
        .clone();
    let view = m.unit_view(&c, &sub).unwrap();
    let rel = view
        .relations
        .iter()
        .find(|r| r.endpoint == "host")
        .unwrap();
    assert_eq!(rel.remote_units.keys().collect::<Vec<_>>(), ["web/0"]);
    // Removing the relation removes the subordinates.
    m.remove_relation(&c, "agent", "web").unwrap();
    assert!(m
        .units
        .values()
        .filter(|u| u.application == "agent")
        .all(|u| u.life == Life::Dying));
}

#[test]
fn peers_see_each_other() {
    let (mut m, c) = with_sub_and_peers();
    m.deploy(
        "cluster",
        &c["sha-cluster"],
        "sha-cluster",
        BTreeMap::new(),
        None,
    )
    .unwrap();
    m.add_unit("cluster", "0").unwrap();
    m.add_unit("cluster", "1").unwrap();
    let ran = settle(&mut m, &c, &|_, _| BTreeMap::new());
    assert!(
        ran.contains(&"cluster/0 ring-relation-joined".to_string()),
        "{ran:?}"
    );
    let u = m.units["cluster/1"].clone();
    let view = m.unit_view(&c, &u).unwrap();
    assert_eq!(
        view.relations[0].remote_units.keys().collect::<Vec<_>>(),
        ["cluster/0"]
    );
    assert_eq!(view.relations[0].remote_application, "cluster");
}

#[test]
fn refresh_keeps_what_the_model_uses() {
    let c = charms();
    let mut m = model();
    m.relate(&c, "web", "mariadb").unwrap();
    let same_name = Charm::new(
        Metadata::parse(
            "metadata.yaml",
            "name: webapp\nsummary: w\nrequires:\n  database:\n    interface: mysql\n",
        )
        .unwrap(),
        ConfigSchema::default(),
    );
    let e = m.refresh("web", &same_name, "sha-web2").unwrap_err();
    assert!(e.to_string().contains("needs endpoint db"), "{e}");
    let other = Charm::new(
        Metadata::parse("metadata.yaml", "name: other\nsummary: o\n").unwrap(),
        ConfigSchema::default(),
    );
    assert!(m
        .refresh("web", &other, "sha-x")
        .unwrap_err()
        .to_string()
        .contains("runs charm webapp"));
    m.refresh("web", &c["sha-web"].clone(), "sha-web2").unwrap();
    assert_eq!(m.doc.applications["web"].charm.sha256, "sha-web2");
}

#[test]
fn a_removed_relation_stays_dying_until_its_units_have_left_it() {
    let c = charms();
    let mut m = model();
    m.relate(&c, "web", "mariadb").unwrap();
    settle(&mut m, &c, &|_, _| BTreeMap::new());
    m.remove_relation(&c, "web", "mariadb").unwrap();
    // Hooks that still see the relation may read the other side's
    // secrets through it, and see it dying.
    assert!(m.secret_access("web/0", "mariadb/db-password").is_ok());
    let web = m.units["web/0"].clone();
    let view = m.unit_view(&c, &web).unwrap();
    assert_eq!(view.relations.len(), 1);
    assert_eq!(view.relations[0].life, Life::Dying);
    assert!(m.status(&c, 1).relations.is_empty());
    let ran = settle(&mut m, &c, &|_, _| BTreeMap::new());
    assert!(
        ran.contains(&"web/0 db-relation-broken".to_string()),
        "{ran:?}"
    );
    assert!(
        ran.contains(&"mariadb/0 db-relation-broken".to_string()),
        "{ran:?}"
    );
    // Once every unit has left, the relation and its grant are gone.
    assert!(m.doc.dying_relations.is_empty());
    assert_eq!(
        m.secret_access("web/0", "mariadb/db-password")
            .unwrap_err()
            .code(),
        "unauthorized"
    );
    // Relating again makes a new relation.
    m.relate(&c, "web", "mariadb").unwrap();
    settle(&mut m, &c, &|_, _| BTreeMap::new());
    assert_eq!(m.status(&c, 1).relations.len(), 1);
}
