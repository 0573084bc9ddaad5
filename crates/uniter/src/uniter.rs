//! Which hook a unit runs next, and what its state is once it succeeded.
//!
//! Juju's order: install → relation-created → leader-elected →
//! config-changed → start; then, as the model changes, relation-joined
//! (each followed by relation-changed), relation-changed when a remote
//! unit's or application's settings change, relation-departed and
//! relation-broken, leader-settings-changed, config-changed,
//! upgrade-charm; a dying unit departs and breaks its relations, then
//! runs stop and remove. One hook at a time: `next` names exactly one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::{Life, UnitView};

/// A hook, carrying the version of whatever it is about, so completing it
/// records what the hook saw rather than what changed meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Hook {
    Install {
        charm: String,
    },
    UpgradeCharm {
        charm: String,
    },
    LeaderElected {
        version: u64,
    },
    LeaderSettingsChanged {
        version: u64,
    },
    ConfigChanged {
        digest: String,
    },
    Start,
    UpdateStatus,
    Stop,
    Remove,
    RelationCreated {
        relation: u64,
        endpoint: String,
        remote_application: String,
    },
    RelationJoined {
        relation: u64,
        endpoint: String,
        remote_application: String,
        remote_unit: String,
    },
    RelationChanged {
        relation: u64,
        endpoint: String,
        remote_application: String,
        /// None when the remote application's settings changed.
        remote_unit: Option<String>,
        version: u64,
    },
    RelationDeparted {
        relation: u64,
        endpoint: String,
        remote_application: String,
        remote_unit: String,
    },
    RelationBroken {
        relation: u64,
        endpoint: String,
        remote_application: String,
    },
    Action {
        id: u64,
        name: String,
    },
}

impl Hook {
    /// The hook's file name under `hooks/` (actions: under `actions/`).
    pub fn name(&self) -> String {
        match self {
            Hook::Install { .. } => "install".into(),
            Hook::UpgradeCharm { .. } => "upgrade-charm".into(),
            Hook::LeaderElected { .. } => "leader-elected".into(),
            Hook::LeaderSettingsChanged { .. } => "leader-settings-changed".into(),
            Hook::ConfigChanged { .. } => "config-changed".into(),
            Hook::Start => "start".into(),
            Hook::UpdateStatus => "update-status".into(),
            Hook::Stop => "stop".into(),
            Hook::Remove => "remove".into(),
            Hook::RelationCreated { endpoint, .. } => format!("{endpoint}-relation-created"),
            Hook::RelationJoined { endpoint, .. } => format!("{endpoint}-relation-joined"),
            Hook::RelationChanged { endpoint, .. } => format!("{endpoint}-relation-changed"),
            Hook::RelationDeparted { endpoint, .. } => format!("{endpoint}-relation-departed"),
            Hook::RelationBroken { endpoint, .. } => format!("{endpoint}-relation-broken"),
            Hook::Action { name, .. } => name.clone(),
        }
    }

    pub fn relation(&self) -> Option<(u64, &str, &str)> {
        match self {
            Hook::RelationCreated {
                relation,
                endpoint,
                remote_application,
            }
            | Hook::RelationJoined {
                relation,
                endpoint,
                remote_application,
                ..
            }
            | Hook::RelationChanged {
                relation,
                endpoint,
                remote_application,
                ..
            }
            | Hook::RelationDeparted {
                relation,
                endpoint,
                remote_application,
                ..
            }
            | Hook::RelationBroken {
                relation,
                endpoint,
                remote_application,
            } => Some((*relation, endpoint, remote_application)),
            _ => None,
        }
    }

    pub fn remote_unit(&self) -> Option<&str> {
        match self {
            Hook::RelationJoined { remote_unit, .. }
            | Hook::RelationDeparted { remote_unit, .. } => Some(remote_unit),
            Hook::RelationChanged { remote_unit, .. } => remote_unit.as_deref(),
            _ => None,
        }
    }
}

/// What a unit's agent has done, as committed to the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationState {
    pub endpoint: String,
    pub remote_application: String,
    /// Joined remote units → the settings version their last
    /// relation-changed saw (None: joined, changed not yet run).
    pub units: BTreeMap<String, Option<u64>>,
    pub app_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookError {
    pub hook: Hook,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UniterState {
    pub installed: bool,
    /// SHA-256 of the charm the unit runs.
    pub charm: Option<String>,
    pub leader: bool,
    pub leader_settings_version: u64,
    /// Digest of the config the last config-changed saw.
    pub config: Option<String>,
    pub started: bool,
    pub relations: BTreeMap<u64, RelationState>,
    pub error: Option<HookError>,
    pub resolve_seen: u64,
    /// Highest action id run.
    pub actions_done: u64,
    pub stopped: bool,
    pub removed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Run(Hook),
    /// The operator resolved a failed hook without retry: count it done.
    Skip(Hook),
    /// A hook failed; waiting for `resolve`.
    Blocked,
    /// Nothing owed; update-status may run on its timer.
    Idle,
    /// The unit has run remove; the controller may forget it.
    Done,
}

/// The one operation the unit owes, given the controller's view.
pub fn next(view: &UnitView, state: &UniterState) -> Operation {
    if state.removed {
        return Operation::Done;
    }
    if let Some(err) = &state.error {
        if view.resolve.seq > state.resolve_seen {
            return if view.resolve.retry {
                // A retried config-changed reads today's config, so it
                // answers for today's digest: no second run after it.
                match &err.hook {
                    Hook::ConfigChanged { .. } => Operation::Run(Hook::ConfigChanged {
                        digest: view.config_digest(),
                    }),
                    hook => Operation::Run(hook.clone()),
                }
            } else {
                Operation::Skip(err.hook.clone())
            };
        }
        return Operation::Blocked;
    }
    let dying = view.life == Life::Dying;
    if !state.installed {
        if dying {
            return Operation::Run(Hook::Remove);
        }
        return Operation::Run(Hook::Install {
            charm: view.charm.sha256.clone(),
        });
    }
    if state.charm.as_deref() != Some(view.charm.sha256.as_str()) {
        return Operation::Run(Hook::UpgradeCharm {
            charm: view.charm.sha256.clone(),
        });
    }
    if dying {
        return teardown(state);
    }
    for rel in &view.relations {
        if rel.life == Life::Alive && !state.relations.contains_key(&rel.id) {
            return Operation::Run(Hook::RelationCreated {
                relation: rel.id,
                endpoint: rel.endpoint.clone(),
                remote_application: rel.remote_application.clone(),
            });
        }
    }
    if view.leader && !state.leader {
        return Operation::Run(Hook::LeaderElected {
            version: view.leader_settings.version,
        });
    }
    if !view.leader
        && (state.leader || view.leader_settings.version != state.leader_settings_version)
    {
        return Operation::Run(Hook::LeaderSettingsChanged {
            version: view.leader_settings.version,
        });
    }
    let digest = view.config_digest();
    if state.config.as_deref() != Some(digest.as_str()) {
        return Operation::Run(Hook::ConfigChanged { digest });
    }
    if !state.started {
        return Operation::Run(Hook::Start);
    }
    // Relations gone from the view, or dying in it: depart, then break.
    for (id, rs) in &state.relations {
        let alive = view.relation(*id).is_some_and(|r| r.life == Life::Alive);
        if !alive {
            return depart_or_break(*id, rs);
        }
    }
    for rel in &view.relations {
        let Some(rs) = state.relations.get(&rel.id) else {
            continue;
        };
        for unit in rs.units.keys() {
            if !rel.remote_units.contains_key(unit) {
                return Operation::Run(Hook::RelationDeparted {
                    relation: rel.id,
                    endpoint: rel.endpoint.clone(),
                    remote_application: rel.remote_application.clone(),
                    remote_unit: unit.clone(),
                });
            }
        }
        for (unit, settings) in &rel.remote_units {
            match rs.units.get(unit) {
                None => {
                    return Operation::Run(Hook::RelationJoined {
                        relation: rel.id,
                        endpoint: rel.endpoint.clone(),
                        remote_application: rel.remote_application.clone(),
                        remote_unit: unit.clone(),
                    })
                }
                Some(seen) if *seen != Some(settings.version) => {
                    return Operation::Run(Hook::RelationChanged {
                        relation: rel.id,
                        endpoint: rel.endpoint.clone(),
                        remote_application: rel.remote_application.clone(),
                        remote_unit: Some(unit.clone()),
                        version: settings.version,
                    })
                }
                Some(_) => {}
            }
        }
        if rel.remote_app.version != rs.app_version {
            return Operation::Run(Hook::RelationChanged {
                relation: rel.id,
                endpoint: rel.endpoint.clone(),
                remote_application: rel.remote_application.clone(),
                remote_unit: None,
                version: rel.remote_app.version,
            });
        }
    }
    if let Some(action) = view.actions.iter().find(|a| a.id > state.actions_done) {
        return Operation::Run(Hook::Action {
            id: action.id,
            name: action.name.clone(),
        });
    }
    Operation::Idle
}

fn depart_or_break(id: u64, rs: &RelationState) -> Operation {
    match rs.units.keys().next() {
        Some(unit) => Operation::Run(Hook::RelationDeparted {
            relation: id,
            endpoint: rs.endpoint.clone(),
            remote_application: rs.remote_application.clone(),
            remote_unit: unit.clone(),
        }),
        None => Operation::Run(Hook::RelationBroken {
            relation: id,
            endpoint: rs.endpoint.clone(),
            remote_application: rs.remote_application.clone(),
        }),
    }
}

/// A dying unit leaves its relations, then stops, then is removed.
fn teardown(state: &UniterState) -> Operation {
    if let Some((id, rs)) = state.relations.iter().next() {
        return depart_or_break(*id, rs);
    }
    if !state.stopped {
        return Operation::Run(Hook::Stop);
    }
    Operation::Run(Hook::Remove)
}

/// The state after `hook` succeeded (or was resolved without retry);
/// `resolve_seq` is the view's resolve counter at the time.
pub fn complete(state: &UniterState, hook: &Hook, resolve_seq: u64) -> UniterState {
    let mut s = state.clone();
    s.error = None;
    s.resolve_seen = s.resolve_seen.max(resolve_seq);
    match hook {
        Hook::Install { charm } => {
            s.installed = true;
            s.charm = Some(charm.clone());
        }
        Hook::UpgradeCharm { charm } => {
            s.charm = Some(charm.clone());
            // Juju follows upgrade-charm with config-changed.
            s.config = None;
        }
        Hook::LeaderElected { version } => {
            s.leader = true;
            s.leader_settings_version = *version;
        }
        Hook::LeaderSettingsChanged { version } => {
            s.leader = false;
            s.leader_settings_version = *version;
        }
        Hook::ConfigChanged { digest } => s.config = Some(digest.clone()),
        Hook::Start => s.started = true,
        Hook::UpdateStatus => {}
        Hook::Stop => s.stopped = true,
        Hook::Remove => {
            s.installed = true;
            s.removed = true;
        }
        Hook::RelationCreated {
            relation,
            endpoint,
            remote_application,
        } => {
            s.relations.insert(
                *relation,
                RelationState {
                    endpoint: endpoint.clone(),
                    remote_application: remote_application.clone(),
                    ..Default::default()
                },
            );
        }
        Hook::RelationJoined {
            relation,
            remote_unit,
            ..
        } => {
            if let Some(rs) = s.relations.get_mut(relation) {
                rs.units.insert(remote_unit.clone(), None);
            }
        }
        Hook::RelationChanged {
            relation,
            remote_unit,
            version,
            ..
        } => {
            if let Some(rs) = s.relations.get_mut(relation) {
                match remote_unit {
                    Some(unit) => {
                        if let Some(seen) = rs.units.get_mut(unit) {
                            *seen = Some(*version);
                        }
                    }
                    None => rs.app_version = *version,
                }
            }
        }
        Hook::RelationDeparted {
            relation,
            remote_unit,
            ..
        } => {
            if let Some(rs) = s.relations.get_mut(relation) {
                rs.units.remove(remote_unit);
            }
        }
        Hook::RelationBroken { relation, .. } => {
            s.relations.remove(relation);
        }
        Hook::Action { id, .. } => s.actions_done = s.actions_done.max(*id),
    }
    s
}

/// The state after `hook` failed: the unit waits for `resolve`.
pub fn fail(state: &UniterState, hook: &Hook, message: &str, resolve_seq: u64) -> UniterState {
    let mut s = state.clone();
    s.error = Some(HookError {
        hook: hook.clone(),
        message: message.to_string(),
    });
    s.resolve_seen = s.resolve_seen.max(resolve_seq);
    s
}

/// A failed action does not put the unit in error (as in Juju): the
/// action is done, its outcome says it failed.
pub fn is_action(hook: &Hook) -> bool {
    matches!(hook, Hook::Action { .. })
}

#[cfg(test)]
mod tests;
