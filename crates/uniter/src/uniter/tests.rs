use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::protocol::*;

fn view() -> UnitView {
    UnitView {
        unit: "web/0".into(),
        application: "web".into(),
        charm: CharmRef {
            name: "web".into(),
            sha256: "c1".into(),
        },
        config: BTreeMap::new(),
        life: Life::Alive,
        leader: true,
        leader_settings: Versioned::default(),
        relations: vec![],
        resolve: Resolve::default(),
        private_address: "10.0.0.2".into(),
        public_address: "10.0.0.2".into(),
        actions: vec![],
    }
}

fn relation(id: u64, units: &[(&str, u64)]) -> RelationView {
    RelationView {
        id,
        endpoint: "db".into(),
        interface: "mysql".into(),
        remote_application: "mariadb".into(),
        life: Life::Alive,
        remote_units: units
            .iter()
            .map(|(u, v)| {
                (
                    u.to_string(),
                    Versioned {
                        version: *v,
                        data: Default::default(),
                    },
                )
            })
            .collect(),
        remote_app: Versioned::default(),
        local_unit: Default::default(),
        local_app: Default::default(),
    }
}

/// Runs hooks (all succeeding) until the unit is idle; returns their names.
fn settle(view: &UnitView, state: &mut UniterState) -> Vec<String> {
    let mut names = vec![];
    for _ in 0..1000 {
        match next(view, state) {
            Operation::Run(h) | Operation::Skip(h) => {
                names.push(h.name());
                *state = complete(state, &h, view.resolve.seq);
            }
            _ => return names,
        }
    }
    panic!("no fixpoint: {names:?}");
}

#[test]
fn a_new_unit_runs_juju_s_start_sequence() {
    let mut v = view();
    v.relations.push(relation(1, &[("mariadb/0", 0)]));
    let mut s = UniterState::default();
    assert_eq!(
        settle(&v, &mut s),
        [
            "install",
            "db-relation-created",
            "leader-elected",
            "config-changed",
            "start",
            "db-relation-joined",
            "db-relation-changed"
        ]
    );
    assert_eq!(next(&v, &s), Operation::Idle);
}

#[test]
fn a_remote_settings_change_fires_relation_changed_once() {
    let mut v = view();
    v.relations.push(relation(1, &[("mariadb/0", 0)]));
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.relations[0]
        .remote_units
        .get_mut("mariadb/0")
        .unwrap()
        .version = 4;
    assert_eq!(settle(&v, &mut s), ["db-relation-changed"]);
    v.relations[0].remote_app.version = 2;
    assert_eq!(settle(&v, &mut s), ["db-relation-changed"]);
}

#[test]
fn a_removed_relation_departs_every_unit_then_breaks() {
    let mut v = view();
    v.relations
        .push(relation(1, &[("mariadb/0", 0), ("mariadb/1", 0)]));
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.relations.clear();
    assert_eq!(
        settle(&v, &mut s),
        [
            "db-relation-departed",
            "db-relation-departed",
            "db-relation-broken"
        ]
    );
    assert!(s.relations.is_empty());
}

#[test]
fn a_failed_hook_blocks_until_resolved_and_retry_reruns_it() {
    let v0 = view();
    let s0 = UniterState::default();
    let Operation::Run(install) = next(&v0, &s0) else {
        panic!()
    };
    let failed = fail(&s0, &install, "exit status 1", 0);
    assert_eq!(next(&v0, &failed), Operation::Blocked);
    let mut v = v0.clone();
    v.resolve = Resolve {
        seq: 1,
        retry: true,
    };
    assert_eq!(next(&v, &failed), Operation::Run(install.clone()));
    let s = complete(&failed, &install, 1);
    assert!(s.installed && s.error.is_none());
    // The same resolve does not apply to a later failure.
    let s2 = fail(&s, &Hook::Start, "boom", 1);
    assert_eq!(next(&v, &s2), Operation::Blocked);
    v.resolve = Resolve {
        seq: 2,
        retry: false,
    };
    assert_eq!(next(&v, &s2), Operation::Skip(Hook::Start));
}

#[test]
fn a_retried_config_changed_is_not_run_again_for_config_changed_while_in_error() {
    let mut v = view();
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.config.insert("port".into(), serde_json::json!(70000));
    let Operation::Run(bad) = next(&v, &s) else {
        panic!()
    };
    let failed = fail(&s, &bad, "invalid port", 0);
    // The operator fixes the config, then resolves.
    v.config.insert("port".into(), serde_json::json!(8081));
    v.resolve = Resolve {
        seq: 1,
        retry: true,
    };
    let Operation::Run(retry) = next(&v, &failed) else {
        panic!()
    };
    assert_eq!(retry.name(), "config-changed");
    let done = complete(&failed, &retry, 1);
    assert_eq!(next(&v, &done), Operation::Idle);
}

#[test]
fn a_dying_unit_leaves_relations_then_stops_and_is_removed() {
    let mut v = view();
    v.relations.push(relation(1, &[("mariadb/0", 0)]));
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.life = Life::Dying;
    assert_eq!(
        settle(&v, &mut s),
        [
            "db-relation-departed",
            "db-relation-broken",
            "stop",
            "remove"
        ]
    );
    assert_eq!(next(&v, &s), Operation::Done);
}

#[test]
fn losing_leadership_runs_leader_settings_changed() {
    let mut v = view();
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.leader = false;
    assert_eq!(settle(&v, &mut s), ["leader-settings-changed"]);
    v.leader_settings.version = 3;
    assert_eq!(settle(&v, &mut s), ["leader-settings-changed"]);
}

#[test]
fn a_new_charm_runs_upgrade_then_config_changed() {
    let mut v = view();
    let mut s = UniterState::default();
    settle(&v, &mut s);
    v.charm.sha256 = "c2".into();
    assert_eq!(settle(&v, &mut s), ["upgrade-charm", "config-changed"]);
}

#[test]
fn actions_run_once_in_order() {
    let mut v = view();
    let mut s = UniterState::default();
    settle(&v, &mut s);
    for id in [3, 5] {
        v.actions.push(ActionRequest {
            id,
            name: format!("a{id}"),
            params: Default::default(),
            command: None,
        });
    }
    assert_eq!(settle(&v, &mut s), ["a3", "a5"]);
}

#[derive(Debug, Clone)]
enum Event {
    AddRelation(u64),
    RemoveRelation(u64),
    AddUnit(u64, u8),
    RemoveUnit(u64, u8),
    Touch(u64, u8),
    TouchApp(u64),
    Config(u8),
    Leader(bool),
    /// Run the next hook; fail it when true.
    Step(bool),
    Resolve(bool),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0..3u64).prop_map(Event::AddRelation),
        (0..3u64).prop_map(Event::RemoveRelation),
        (0..3u64, 0..3u8).prop_map(|(r, u)| Event::AddUnit(r, u)),
        (0..3u64, 0..3u8).prop_map(|(r, u)| Event::RemoveUnit(r, u)),
        (0..3u64, 0..3u8).prop_map(|(r, u)| Event::Touch(r, u)),
        (0..3u64).prop_map(Event::TouchApp),
        (0..4u8).prop_map(Event::Config),
        any::<bool>().prop_map(Event::Leader),
        prop::bool::weighted(0.15).prop_map(Event::Step),
        prop::bool::weighted(0.15).prop_map(Event::Step),
        prop::bool::weighted(0.15).prop_map(Event::Step),
        any::<bool>().prop_map(Event::Resolve),
    ]
}

proptest! {
    /// Whatever the controller does and whichever hooks fail, once the
    /// operator resolves with retry the unit settles into exactly the
    /// controller's view; relation hooks come in a legal order.
    #[test]
    fn any_history_converges(events in prop::collection::vec(event(), 0..80)) {
        let mut v = view();
        let mut s = UniterState::default();
        let mut counter = 10u64;
        let mut joined: std::collections::BTreeSet<(u64, String)> = Default::default();
        for e in events {
            counter += 1;
            match e {
                Event::AddRelation(r) => {
                    if v.relation(r).is_none() {
                        v.relations.push(relation(r, &[]));
                    }
                }
                Event::RemoveRelation(r) => v.relations.retain(|x| x.id != r),
                Event::AddUnit(r, u) | Event::Touch(r, u) => {
                    if let Some(rel) = v.relations.iter_mut().find(|x| x.id == r) {
                        rel.remote_units.insert(format!("mariadb/{u}"), Versioned { version: counter, data: Default::default() });
                    }
                }
                Event::RemoveUnit(r, u) => {
                    if let Some(rel) = v.relations.iter_mut().find(|x| x.id == r) {
                        rel.remote_units.remove(&format!("mariadb/{u}"));
                    }
                }
                Event::TouchApp(r) => {
                    if let Some(rel) = v.relations.iter_mut().find(|x| x.id == r) {
                        rel.remote_app.version = counter;
                    }
                }
                Event::Config(c) => { v.config.insert("k".into(), serde_json::json!(c)); }
                Event::Leader(l) => v.leader = l,
                Event::Resolve(retry) => v.resolve = Resolve { seq: v.resolve.seq + 1, retry },
                Event::Step(failing) => match next(&v, &s) {
                    Operation::Run(h) if failing => s = fail(&s, &h, "failed", v.resolve.seq),
                    Operation::Run(h) | Operation::Skip(h) => {
                        check_order(&h, &mut joined);
                        s = complete(&s, &h, v.resolve.seq);
                    }
                    _ => {}
                },
            }
        }
        v.resolve = Resolve { seq: v.resolve.seq + 1, retry: true };
        for _ in 0..1000 {
            match next(&v, &s) {
                Operation::Run(h) | Operation::Skip(h) => {
                    check_order(&h, &mut joined);
                    s = complete(&s, &h, v.resolve.seq);
                }
                _ => break,
            }
        }
        prop_assert_eq!(next(&v, &s), Operation::Idle);
        prop_assert_eq!(s.leader, v.leader);
        prop_assert_eq!(s.config.clone(), Some(v.config_digest()));
        prop_assert_eq!(s.relations.len(), v.relations.len());
        for rel in &v.relations {
            let rs = &s.relations[&rel.id];
            prop_assert_eq!(rs.app_version, rel.remote_app.version);
            let want: BTreeMap<_, _> = rel.remote_units.iter().map(|(u, x)| (u.clone(), Some(x.version))).collect();
            prop_assert_eq!(&rs.units, &want);
        }
    }
}

/// joined before changed/departed for a unit; no unit joins twice.
fn check_order(h: &Hook, joined: &mut std::collections::BTreeSet<(u64, String)>) {
    match h {
        Hook::RelationJoined {
            relation,
            remote_unit,
            ..
        } => {
            assert!(
                joined.insert((*relation, remote_unit.clone())),
                "joined twice: {h:?}"
            );
        }
        Hook::RelationChanged {
            relation,
            remote_unit: Some(u),
            ..
        } => {
            assert!(
                joined.contains(&(*relation, u.clone())),
                "changed before joined: {h:?}"
            );
        }
        Hook::RelationDeparted {
            relation,
            remote_unit,
            ..
        } => {
            assert!(
                joined.remove(&(*relation, remote_unit.clone())),
                "departed unjoined: {h:?}"
            );
        }
        Hook::RelationBroken { relation, .. } => {
            assert!(
                !joined.iter().any(|(r, _)| r == relation),
                "broken with units joined: {h:?}"
            );
        }
        _ => {}
    }
}
