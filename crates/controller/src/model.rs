//! One model in memory and the pure operations on it. Every operation
//! marks the documents it changed (`Dirty`), which the controller writes in
//! one transaction before anyone sees the change.

use std::collections::{BTreeMap, BTreeSet};

use kumo_charm::{Charm, RelationEnd as EndSpec, Role, Value};
use kumo_model::orchestra as api;
use kumo_uniter::{
    digest, ActionOutcome, ActionRequest, AssignedUnit, CharmRef, HookCommit, HookResult, Level,
    Life, MachineView, RelationView, Resolve, UnitView, UniterState, Versioned, WorkloadState,
    WorkloadStatus,
};

use crate::docs::*;
use crate::error::{invalid, not_found, ControllerError, Result};

/// Parsed charms by archive SHA-256.
pub trait Charms {
    fn get(&self, sha256: &str) -> Option<&Charm>;
}

impl Charms for BTreeMap<String, Charm> {
    fn get(&self, sha256: &str) -> Option<&Charm> {
        BTreeMap::get(self, sha256)
    }
}

#[derive(Debug, Default, Clone)]
pub struct Dirty {
    pub model: bool,
    pub machines: BTreeSet<String>,
    pub units: BTreeSet<String>,
    pub actions: BTreeSet<u64>,
    /// (entity, level, message)
    pub logs: Vec<(String, Level, String)>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.model
            && self.machines.is_empty()
            && self.units.is_empty()
            && self.actions.is_empty()
            && self.logs.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Model {
    pub doc: ModelDoc,
    pub machines: BTreeMap<String, MachineDoc>,
    pub units: BTreeMap<String, UnitDoc>,
    pub actions: BTreeMap<u64, ActionDoc>,
    pub dirty: Dirty,
    /// Not stored: the hook each unit's agent says it is running.
    pub running: BTreeMap<String, String>,
    /// Not stored: when each machine's agent last polled (ms).
    pub seen: BTreeMap<String, i64>,
}

/// A typed charm config value as hooks and the API see it.
pub(crate) fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::String(s) => serde_json::Value::String(s.clone()),
        Value::Int(i) => serde_json::json!(i),
        Value::Float(f) => serde_json::json!(f),
        Value::Boolean(b) => serde_json::Value::Bool(*b),
    }
}

/// Typed `key=value` settings from the CLI, checked against the schema.
pub fn typed_config(
    charm: &Charm,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, serde_json::Value>> {
    let typed = charm
        .config
        .parse_assignments(
            given
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )
        .map_err(ControllerError::Config)?;
    Ok(typed.iter().map(|(k, v)| (k.clone(), to_json(v))).collect())
}

impl Model {
    pub fn new(doc: ModelDoc) -> Model {
        Model {
            doc,
            machines: BTreeMap::new(),
            units: BTreeMap::new(),
            actions: BTreeMap::new(),
            dirty: Dirty {
                model: true,
                ..Default::default()
            },
            running: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    pub fn log(&mut self, entity: &str, level: Level, message: impl Into<String>) {
        self.dirty
            .logs
            .push((entity.to_string(), level, message.into()));
    }

    fn app(&self, name: &str) -> Result<&AppDoc> {
        self.doc
            .applications
            .get(name)
            .ok_or_else(|| not_found("application", name))
    }

    fn charm_of<'c>(&self, charms: &'c dyn Charms, app: &str) -> Result<&'c Charm> {
        let sha = &self.app(app)?.charm.sha256;
        charms.get(sha).ok_or_else(|| not_found("charm", sha))
    }

    // ---- machines ----------------------------------------------------------

    /// Records a new machine for the provisioner; `host` makes it a
    /// container on that machine (`N/lxd/K`).
    pub fn add_machine(
        &mut self,
        host: Option<&str>,
        placement: Option<String>,
        constraints: Option<String>,
        token_hash: String,
    ) -> Result<String> {
        let id = match host {
            Some(h) => {
                if !self.machines.contains_key(h) {
                    return Err(invalid(
                        "placement",
                        format!("no machine {h} in model {}", self.doc.name),
                    ));
                }
                let n = (0..)
                    .find(|k| !self.machines.contains_key(&format!("{h}/lxd/{k}")))
                    .expect("a free number");
                format!("{h}/lxd/{n}")
            }
            None => {
                let n = self.doc.next_machine;
                self.doc.next_machine += 1;
                self.dirty.model = true;
                n.to_string()
            }
        };
        self.machines.insert(
            id.clone(),
            MachineDoc {
                id: id.clone(),
                state: MachineState::Pending,
                message: String::new(),
                instance: None,
                address: None,
                constraints,
                placement,
                token_hash,
                agent_seen: None,
                bundle_machine: None,
            },
        );
        self.dirty.machines.insert(id.clone());
        self.log(
            &machine_entity(&id),
            Level::Info,
            format!("machine {id} added"),
        );
        Ok(id)
    }

    /// Where a unit goes: an existing machine `N` or `N/lxd/K`, or `lxd:N`
    /// (a new container on N). `None` means a new machine.
    pub fn check_placement(&self, to: &str) -> Result<Placement> {
        if let Some(host) = to.strip_prefix("lxd:") {
            if !self.machines.contains_key(host) {
                return Err(invalid(
                    "to",
                    format!(
                        "placement {to}: no machine {host} in model {}",
                        self.doc.name
                    ),
                ));
            }
            return Ok(Placement::NewContainer(host.to_string()));
        }
        if self.machines.contains_key(to) {
            return Ok(Placement::Existing(to.to_string()));
        }
        Err(invalid(
            "to",
            format!("placement {to}: no machine {to} in model {}", self.doc.name),
        ))
    }

    // ---- applications ------------------------------------------------------

    pub fn deploy(
        &mut self,
        name: &str,
        charm: &Charm,
        sha256: &str,
        config: BTreeMap<String, serde_json::Value>,
        constraints: Option<String>,
    ) -> Result<()> {
        if !kumo_charm::valid_application_name(name) {
            return Err(invalid(
                "application",
                format!("invalid application name {name:?}"),
            ));
        }
        if self.doc.applications.contains_key(name) {
            return Err(ControllerError::AlreadyExists {
                what: "application",
                name: name.to_string(),
            });
        }
        self.doc.applications.insert(
            name.to_string(),
            AppDoc {
                charm: CharmRef {
                    name: charm.metadata.name.clone(),
                    sha256: sha256.to_string(),
                },
                config,
                constraints,
                exposed: false,
                next_unit: 0,
                leader: None,
                leader_settings: Versioned::default(),
                life: Life::Alive,
                subordinate: charm.metadata.subordinate,
            },
        );
        // Peer endpoints relate the application's units with each other
        // from the start, as in Juju.
        for (endpoint, ep) in &charm.metadata.endpoints {
            if ep.role == Role::Peers {
                let id = self.doc.next_relation;
                self.doc.next_relation += 1;
                self.doc.relations.insert(
                    id,
                    RelationDoc {
                        id,
                        interface: ep.interface.clone(),
                        ends: vec![RelationEnd {
                            application: name.to_string(),
                            endpoint: endpoint.clone(),
                            role: "peers".into(),
                        }],
                        app_data: BTreeMap::new(),
                        container_scope: false,
                    },
                );
            }
        }
        self.dirty.model = true;
        self.log(
            name,
            Level::Info,
            format!(
                "deployed application {name} from charm {}",
                charm.metadata.name
            ),
        );
        Ok(())
    }

    pub fn add_unit(&mut self, app: &str, machine: &str) -> Result<String> {
        if !self.machines.contains_key(machine) {
            return Err(invalid(
                "to",
                format!("no machine {machine} in model {}", self.doc.name),
            ));
        }
        let a = self
            .doc
            .applications
            .get(app)
            .ok_or_else(|| not_found("application", app))?;
        if a.life == Life::Dying {
            return Err(ControllerError::Conflict(format!(
                "application {app} is being removed"
            )));
        }
        if a.subordinate {
            return Err(invalid(
                "application",
                format!("{app} is a subordinate: its units come with its principals' units (relate it to one)"),
            ));
        }
        let name = self.new_unit(app, machine, None);
        self.reconcile_subordinates();
        Ok(name)
    }

    fn new_unit(&mut self, app: &str, machine: &str, principal: Option<String>) -> String {
        let a = self.doc.applications.get_mut(app).expect("checked");
        let name = format!("{app}/{}", a.next_unit);
        a.next_unit += 1;
        self.dirty.model = true;
        self.units.insert(
            name.clone(),
            UnitDoc {
                name: name.clone(),
                application: app.to_string(),
                machine: machine.to_string(),
                life: Life::Alive,
                state: UniterState::default(),
                state_version: 0,
                workload: WorkloadStatus {
                    state: WorkloadState::Waiting,
                    message: "agent initialising".into(),
                },
                ports: BTreeSet::new(),
                settings: BTreeMap::new(),
                resolve: Resolve::default(),
                last_failure: None,
                principal,
            },
        );
        self.dirty.units.insert(name.clone());
        self.log(
            &unit_entity(&name),
            Level::Info,
            format!("unit {name} added on machine {machine}"),
        );
        self.elect(app);
        name
    }

    /// One subordinate unit beside every alive unit of each principal it
    /// is related to in container scope, and none beside any other.
    pub fn reconcile_subordinates(&mut self) {
        // (subordinate application, principal unit)
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for r in self.doc.relations.values().filter(|r| r.container_scope) {
            let sub = r.ends.iter().find(|e| {
                self.doc
                    .applications
                    .get(&e.application)
                    .is_some_and(|a| a.subordinate && a.life == Life::Alive)
            });
            let Some(sub) = sub else { continue };
            let Some(principal) = r.other(&sub.application) else {
                continue;
            };
            for u in self.units.values() {
                if u.application == principal.application && u.life == Life::Alive {
                    wanted.insert((sub.application.clone(), u.name.clone()));
                }
            }
        }
        let have: BTreeMap<(String, String), String> = self
            .units
            .values()
            .filter(|u| u.life == Life::Alive)
            .filter_map(|u| {
                Some((
                    (u.application.clone(), u.principal.clone()?),
                    u.name.clone(),
                ))
            })
            .collect();
        for (key, unit) in &have {
            if !wanted.contains(key) {
                let _ = self.remove_unit(unit);
            }
        }
        for (sub, principal) in wanted {
            if have.contains_key(&(sub.clone(), principal.clone())) {
                continue;
            }
            let machine = self.units[&principal].machine.clone();
            self.new_unit(&sub, &machine, Some(principal));
        }
    }

    /// Gives an application a leader when it has none alive: the
    /// lowest-numbered alive unit.
    pub fn elect(&mut self, app: &str) {
        let Some(a) = self.doc.applications.get(app) else {
            return;
        };
        let alive = |u: &str| self.units.get(u).is_some_and(|x| x.life == Life::Alive);
        if a.leader.as_deref().is_some_and(alive) {
            return;
        }
        let next = self
            .units
            .values()
            .filter(|u| u.application == app && u.life == Life::Alive)
            .min_by_key(|u| u.number())
            .map(|u| u.name.clone());
        if a.leader != next {
            if let Some(n) = &next {
                self.log(
                    &unit_entity(n),
                    Level::Info,
                    format!("unit {n} is now the leader of {app}"),
                );
            }
            self.doc.applications.get_mut(app).expect("checked").leader = next;
            self.dirty.model = true;
        }
    }

    pub fn remove_unit(&mut self, unit: &str) -> Result<()> {
        let u = self
            .units
            .get_mut(unit)
            .ok_or_else(|| not_found("unit", unit))?;
        if u.life == Life::Dying {
            return Ok(());
        }
        u.life = Life::Dying;
        let app = u.application.clone();
        self.dirty.units.insert(unit.to_string());
        self.log(
            &unit_entity(unit),
            Level::Info,
            format!("unit {unit} is being removed"),
        );
        self.elect(&app);
        // A principal's subordinates go with it.
        self.reconcile_subordinates();
        Ok(())
    }

    pub fn remove_application(&mut self, app: &str) -> Result<()> {
        let a = self
            .doc
            .applications
            .get_mut(app)
            .ok_or_else(|| not_found("application", app))?;
        a.life = Life::Dying;
        self.dirty.model = true;
        let ids: Vec<u64> = self
            .doc
            .relations
            .values()
            .filter(|r| r.end_of(app).is_some())
            .map(|r| r.id)
            .collect();
        for id in ids {
            let r = self.doc.relations.remove(&id).expect("listed");
            self.log(app, Level::Info, format!("relation {} removed", r.key()));
            self.doc.dying_relations.insert(id, r);
        }
        let units: Vec<String> = self
            .units
            .values()
            .filter(|u| u.application == app)
            .map(|u| u.name.clone())
            .collect();
        for u in &units {
            self.remove_unit(u)?;
        }
        self.log(
            app,
            Level::Info,
            format!("application {app} is being removed"),
        );
        self.reap_application(app);
        Ok(())
    }

    /// Forgets a dying application once its last unit is gone.
    fn reap_application(&mut self, app: &str) {
        let dying = self
            .doc
            .applications
            .get(app)
            .is_some_and(|a| a.life == Life::Dying);
        if dying && !self.units.values().any(|u| u.application == app) {
            self.doc.applications.remove(app);
            self.dirty.model = true;
            self.log(app, Level::Info, format!("application {app} removed"));
        }
    }

    pub fn set_config(
        &mut self,
        charms: &dyn Charms,
        app: &str,
        set: &BTreeMap<String, String>,
        reset: &[String],
    ) -> Result<()> {
        let charm = self.charm_of(charms, app)?;
        let typed = typed_config(charm, set)?;
        for k in reset {
            if !charm.config.options.contains_key(k) {
                return Err(ControllerError::Config(kumo_charm::Error::Config {
                    key: k.clone(),
                    message: format!("unknown option of charm {}", charm.metadata.name),
                }));
            }
        }
        let a = self.doc.applications.get_mut(app).expect("checked");
        a.config.extend(typed);
        for k in reset {
            a.config.remove(k);
        }
        self.dirty.model = true;
        self.log(app, Level::Info, format!("config of {app} changed"));
        Ok(())
    }

    pub fn config_of(
        &self,
        charms: &dyn Charms,
        app: &str,
    ) -> Result<BTreeMap<String, api::ConfigEntry>> {
        let charm = self.charm_of(charms, app)?;
        let a = self.app(app)?;
        Ok(charm
            .config
            .options
            .iter()
            .map(|(k, o)| {
                let set = a.config.get(k).cloned();
                (
                    k.clone(),
                    api::ConfigEntry {
                        source: if set.is_some() { "user" } else { "default" }.into(),
                        value: set.or_else(|| o.default.as_ref().map(to_json)),
                        default: o.default.as_ref().map(to_json),
                        kind: o.kind.to_string(),
                        description: o.description.clone(),
                    },
                )
            })
            .collect())
    }

    /// The application's config with defaults: what hooks see.
    fn effective_config(
        &self,
        charms: &dyn Charms,
        app: &AppDoc,
    ) -> BTreeMap<String, serde_json::Value> {
        let mut out: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        if let Some(charm) = charms.get(&app.charm.sha256) {
            for (k, o) in &charm.config.options {
                if let Some(d) = &o.default {
                    out.insert(k.clone(), to_json(d));
                }
            }
        }
        out.extend(app.config.clone());
        out
    }

    /// `kumo refresh`: a new charm for an application. Its set options and
    /// related endpoints must still exist in the new charm; units then run
    /// upgrade-charm and config-changed.
    pub fn refresh(&mut self, app: &str, charm: &Charm, sha256: &str) -> Result<()> {
        let a = self.app(app)?;
        if a.charm.sha256 == sha256 {
            return Err(ControllerError::Conflict(format!(
                "application {app} already runs this charm"
            )));
        }
        if a.charm.name != charm.metadata.name {
            return Err(invalid(
                "charm",
                format!(
                    "application {app} runs charm {}, not {}",
                    a.charm.name, charm.metadata.name
                ),
            ));
        }
        if a.subordinate != charm.metadata.subordinate {
            return Err(invalid(
                "charm",
                "a charm cannot change between subordinate and principal",
            ));
        }
        let mut problems = Vec::new();
        for k in a.config.keys() {
            if !charm.config.options.contains_key(k) {
                problems.push(format!(
                    "option {k} is set but the new charm has no such option"
                ));
            }
        }
        for r in self.doc.relations.values() {
            for e in r.ends.iter().filter(|e| e.application == app) {
                let same = charm
                    .metadata
                    .endpoint_named(&e.endpoint)
                    .is_some_and(|ep| ep.interface == r.interface);
                if !same {
                    problems.push(format!(
                        "relation {} needs endpoint {} ({})",
                        r.key(),
                        e.endpoint,
                        r.interface
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(invalid(
                "charm",
                format!("cannot refresh {app}: {}", problems.join("; ")),
            ));
        }
        let a = self.doc.applications.get_mut(app).expect("checked");
        a.charm.sha256 = sha256.to_string();
        self.dirty.model = true;
        self.log(
            app,
            Level::Info,
            format!("application {app} refreshed to charm {sha256:.12}"),
        );
        Ok(())
    }

    pub fn expose(&mut self, app: &str, exposed: bool) -> Result<()> {
        let a = self
            .doc
            .applications
            .get_mut(app)
            .ok_or_else(|| not_found("application", app))?;
        a.exposed = exposed;
        self.dirty.model = true;
        Ok(())
    }

    // ---- relations ---------------------------------------------------------

    fn parse_end(s: &str) -> EndSpec {
        match s.split_once(':') {
            Some((a, e)) => EndSpec {
                application: a.to_string(),
                endpoint: Some(e.to_string()),
            },
            None => EndSpec {
                application: s.to_string(),
                endpoint: None,
            },
        }
    }

    /// Resolves `a[:endpoint] b[:endpoint]` to endpoints whose interfaces
    /// match, as `kumo relate` and `remove-relation` take them.
    fn resolve(
        &self,
        charms: &dyn Charms,
        a: &str,
        b: &str,
    ) -> Result<(EndSpec, EndSpec, String, [Role; 2])> {
        let (ea, eb) = (Self::parse_end(a), Self::parse_end(b));
        let ca = self.charm_of(charms, &ea.application)?;
        let cb = self.charm_of(charms, &eb.application)?;
        let rel =
            kumo_charm::resolve_relation(&ea, ca, &eb, cb).map_err(ControllerError::Relation)?;
        let find = |app: &str| {
            rel.ends
                .iter()
                .find(|(x, _)| x == app)
                .map(|(_, e)| e.clone())
                .expect("resolved end")
        };
        let (na, nb) = (find(&ea.application), find(&eb.application));
        let epa = ca.metadata.endpoint_named(&na).expect("resolved");
        let epb = cb.metadata.endpoint_named(&nb).expect("resolved");
        Ok((
            EndSpec {
                application: ea.application,
                endpoint: Some(na),
            },
            EndSpec {
                application: eb.application,
                endpoint: Some(nb),
            },
            epa.interface,
            [epa.role, epb.role],
        ))
    }

    fn find_relation(&self, a: &EndSpec, b: &EndSpec) -> Option<u64> {
        let key = |e: &EndSpec| {
            (
                e.application.clone(),
                e.endpoint.clone().unwrap_or_default(),
            )
        };
        let want: BTreeSet<_> = [key(a), key(b)].into_iter().collect();
        self.doc
            .relations
            .values()
            .find(|r| {
                let have: BTreeSet<_> = r
                    .ends
                    .iter()
                    .map(|e| (e.application.clone(), e.endpoint.clone()))
                    .collect();
                have == want
            })
            .map(|r| r.id)
    }

    pub fn relate(&mut self, charms: &dyn Charms, a: &str, b: &str) -> Result<u64> {
        let (ea, eb, interface, roles) = self.resolve(charms, a, b)?;
        if let Some(id) = self.find_relation(&ea, &eb) {
            return Err(ControllerError::AlreadyExists {
                what: "relation",
                name: self.doc.relations[&id].key(),
            });
        }
        for e in [&ea, &eb] {
            if self.app(&e.application)?.life == Life::Dying {
                return Err(ControllerError::Conflict(format!(
                    "application {} is being removed",
                    e.application
                )));
            }
        }
        let id = self.doc.next_relation;
        self.doc.next_relation += 1;
        let mut ends = vec![
            RelationEnd {
                application: ea.application.clone(),
                endpoint: ea.endpoint.clone().expect("resolved"),
                role: roles[0].to_string(),
            },
            RelationEnd {
                application: eb.application.clone(),
                endpoint: eb.endpoint.clone().expect("resolved"),
                role: roles[1].to_string(),
            },
        ];
        // Provider first, as status prints it.
        ends.sort_by_key(|e| e.role != "provides");
        // Container scope on either side makes the relation one between
        // units on the same machine (a subordinate and its principal).
        let scoped = |e: &EndSpec| {
            self.charm_of(charms, &e.application).ok().and_then(|c| {
                c.metadata
                    .endpoint_named(e.endpoint.as_deref().unwrap_or_default())
                    .map(|ep| ep.container_scope)
            }) == Some(true)
        };
        let container_scope = scoped(&ea) || scoped(&eb);
        let subordinates = [&ea, &eb]
            .iter()
            .filter(|e| self.app(&e.application).is_ok_and(|a| a.subordinate))
            .count();
        if container_scope && subordinates != 1 {
            return Err(ControllerError::Relation(format!(
                "{a} {b}: a container-scoped relation joins one subordinate and one principal"
            )));
        }
        let rel = RelationDoc {
            id,
            interface,
            ends,
            app_data: BTreeMap::new(),
            container_scope,
        };
        self.log(
            &ea.application,
            Level::Info,
            format!("relation {} added", rel.key()),
        );
        self.doc.relations.insert(id, rel);
        self.dirty.model = true;
        self.reconcile_subordinates();
        Ok(id)
    }

    pub fn remove_relation(&mut self, charms: &dyn Charms, a: &str, b: &str) -> Result<()> {
        let (ea, eb, _, _) = self.resolve(charms, a, b)?;
        let id = self
            .find_relation(&ea, &eb)
            .ok_or_else(|| not_found("relation", &format!("{a} {b}")))?;
        let rel = self.doc.relations.remove(&id).expect("found");
        self.dirty.model = true;
        self.log(
            &ea.application,
            Level::Info,
            format!("relation {} removed", rel.key()),
        );
        self.doc.dying_relations.insert(id, rel);
        self.reap_relations();
        self.reconcile_subordinates();
        Ok(())
    }

    /// Forgets removed relations that no unit is in any more: every unit
    /// has run relation-broken for them, or is gone.
    pub fn reap_relations(&mut self) {
        let before = self.doc.dying_relations.len();
        let units = &self.units;
        self.doc
            .dying_relations
            .retain(|id, _| units.values().any(|u| u.state.relations.contains_key(id)));
        if self.doc.dying_relations.len() != before {
            self.dirty.model = true;
        }
    }

    // ---- units' agents -----------------------------------------------------

    pub fn resolve_unit(&mut self, unit: &str, retry: bool) -> Result<()> {
        let u = self
            .units
            .get_mut(unit)
            .ok_or_else(|| not_found("unit", unit))?;
        if u.state.error.is_none() {
            return Err(ControllerError::Conflict(format!(
                "unit {unit} is not in error"
            )));
        }
        u.resolve = Resolve {
            seq: u.resolve.seq + 1,
            retry,
        };
        self.dirty.units.insert(unit.to_string());
        self.log(
            &unit_entity(unit),
            Level::Info,
            format!("resolved ({})", if retry { "retry" } else { "no retry" }),
        );
        Ok(())
    }

    pub fn enqueue_action(
        &mut self,
        unit: &str,
        name: &str,
        params: BTreeMap<String, serde_json::Value>,
        command: Option<String>,
        now: i64,
    ) -> Result<u64> {
        if !self.units.contains_key(unit) {
            return Err(not_found("unit", unit));
        }
        let id = self.doc.next_action;
        self.doc.next_action += 1;
        self.dirty.model = true;
        let mut params = params;
        if let Some(c) = command {
            params.insert("command".into(), serde_json::Value::String(c));
        }
        self.actions.insert(
            id,
            ActionDoc {
                id,
                unit: unit.to_string(),
                name: name.to_string(),
                params,
                status: "pending".into(),
                outcome: None,
                enqueued_at: now,
                completed_at: None,
            },
        );
        self.dirty.actions.insert(id);
        Ok(id)
    }

    /// What one unit's agent sees.
    pub fn unit_view(&self, charms: &dyn Charms, unit: &UnitDoc) -> Option<UnitView> {
        let app = self.doc.applications.get(&unit.application)?;
        let address = self
            .machines
            .get(&unit.machine)
            .and_then(|m| m.address.clone())
            .unwrap_or_default();
        let mut relations = Vec::new();
        let live = self.doc.relations.values().map(|r| (r, Life::Alive));
        let dying = self.doc.dying_relations.values().map(|r| (r, Life::Dying));
        for (rel, life) in live.chain(dying) {
            let (Some(local), Some(remote)) =
                (rel.end_of(&unit.application), rel.other(&unit.application))
            else {
                continue;
            };
            // A remote unit is in the relation once its agent has run
            // relation-created, and leaves it when dying.
            let remote_units = self
                .units
                .values()
                .filter(|u| {
                    u.application == remote.application
                        && u.name != unit.name
                        && u.life == Life::Alive
                        && u.state.relations.contains_key(&rel.id)
                        // Container scope: the unit on the same machine only.
                        && (!rel.container_scope || u.machine == unit.machine)
                })
                .map(|u| {
                    (
                        u.name.clone(),
                        u.settings.get(&rel.id).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            relations.push(RelationView {
                id: rel.id,
                endpoint: local.endpoint.clone(),
                interface: rel.interface.clone(),
                remote_application: remote.application.clone(),
                life,
                remote_units,
                remote_app: rel
                    .app_data
                    .get(&remote.application)
                    .cloned()
                    .unwrap_or_default(),
                local_unit: unit
                    .settings
                    .get(&rel.id)
                    .map(|v| v.data.clone())
                    .unwrap_or_default(),
                local_app: rel
                    .app_data
                    .get(&unit.application)
                    .map(|v| v.data.clone())
                    .unwrap_or_default(),
            });
        }
        let actions = self
            .actions
            .values()
            .filter(|a| a.unit == unit.name && a.status == "pending")
            .map(|a| {
                let mut params = a.params.clone();
                let command = if a.name == "exec" {
                    params
                        .remove("command")
                        .and_then(|c| c.as_str().map(str::to_string))
                } else {
                    None
                };
                ActionRequest {
                    id: a.id,
                    name: a.name.clone(),
                    params,
                    command,
                }
            })
            .collect();
        Some(UnitView {
            unit: unit.name.clone(),
            application: unit.application.clone(),
            charm: app.charm.clone(),
            config: self.effective_config(charms, app),
            life: unit.life,
            leader: app.leader.as_deref() == Some(unit.name.as_str()),
            leader_settings: app.leader_settings.clone(),
            relations,
            resolve: unit.resolve,
            private_address: address.clone(),
            public_address: address,
            actions,
        })
    }

    /// What a machine's agent long-polls.
    pub fn machine_view(
        &self,
        charms: &dyn Charms,
        machine: &str,
        update_status_interval: u64,
    ) -> MachineView {
        let units: Vec<AssignedUnit> = self
            .units
            .values()
            .filter(|u| u.machine == machine)
            .filter_map(|u| {
                Some(AssignedUnit {
                    view: self.unit_view(charms, u)?,
                    state: u.state.clone(),
                    state_version: u.state_version,
                })
            })
            .collect();
        MachineView {
            model: self.doc.name.clone(),
            machine: machine.to_string(),
            tag: digest(&units),
            units,
            update_status_interval,
        }
    }

    /// Applies one hook's commit. A commit already applied (the agent
    /// retrying after a lost answer) is acknowledged again, not re-applied.
    pub fn commit(
        &mut self,
        machine: &str,
        c: &HookCommit,
        now: i64,
    ) -> Result<(UniterState, u64)> {
        let Some(u) = self.units.get(&c.unit) else {
            if c.state.removed {
                return Ok((c.state.clone(), c.base_version + 1));
            }
            return Err(not_found("unit", &c.unit));
        };
        if u.machine != machine {
            return Err(ControllerError::Unauthorized(machine.to_string()));
        }
        if u.state_version != c.base_version {
            if u.state_version == c.base_version + 1 && u.state == c.state {
                return Ok((u.state.clone(), u.state_version));
            }
            return Err(ControllerError::Conflict(format!(
                "unit {}: commit from state {} but the controller has {}",
                c.unit, c.base_version, u.state_version
            )));
        }
        let app = u.application.clone();
        let leader = self
            .doc
            .applications
            .get(&app)
            .and_then(|a| a.leader.clone())
            .as_deref()
            == Some(c.unit.as_str());
        let entity = unit_entity(&c.unit);
        let hook = c.hook.name();
        let u = self.units.get_mut(&c.unit).expect("checked");
        u.state = c.state.clone();
        u.state_version += 1;
        let version = u.state_version;
        let mut logs: Vec<(Level, String)> = c
            .logs
            .iter()
            .map(|l| (l.level, l.message.clone()))
            .collect();
        match &c.result {
            HookResult::Succeeded => {
                u.last_failure = None;
                for (rel, changes) in &c.unit_settings {
                    let entry = u.settings.entry(*rel).or_default();
                    if apply_changes(&mut entry.data, changes) {
                        entry.version += 1;
                    }
                }
                if let Some(s) = &c.workload_status {
                    u.workload = s.clone();
                }
                if let Some(p) = &c.ports {
                    u.ports = p.clone();
                }
                logs.push((Level::Info, format!("ran {hook} hook")));
            }
            HookResult::Failed { message } => {
                u.last_failure = Some(c.output.clone());
                logs.push((Level::Error, format!("{hook} hook failed: {message}")));
                for line in c
                    .output
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                {
                    logs.push((Level::Error, format!("  {line}")));
                }
            }
        }
        let removed = u.state.removed;
        self.dirty.units.insert(c.unit.clone());
        if matches!(c.result, HookResult::Succeeded) {
            if !c.app_settings.is_empty() {
                if leader {
                    for (rel, changes) in &c.app_settings {
                        if let Some(r) = self.doc.relations.get_mut(rel) {
                            let entry = r.app_data.entry(app.clone()).or_default();
                            if apply_changes(&mut entry.data, changes) {
                                entry.version += 1;
                                self.dirty.model = true;
                            }
                        }
                    }
                } else {
                    logs.push((
                        Level::Warning,
                        "application settings ignored: not the leader".into(),
                    ));
                }
            }
            if !c.leader_settings.is_empty() && leader {
                let a = self.doc.applications.get_mut(&app).expect("unit's app");
                if apply_changes(&mut a.leader_settings.data, &c.leader_settings) {
                    a.leader_settings.version += 1;
                    self.dirty.model = true;
                }
            }
        }
        if let Some(outcome) = &c.action {
            if let Some(a) = self.actions.get_mut(&outcome.id) {
                a.status = outcome.status.clone();
                a.outcome = Some(outcome.clone());
                a.completed_at = Some(now);
                self.dirty.actions.insert(outcome.id);
            }
        }
        for (level, message) in logs {
            self.log(&entity, level, message);
        }
        self.running.remove(&c.unit);
        self.reap_relations();
        if removed {
            self.units.remove(&c.unit);
            self.log(&entity, Level::Info, format!("unit {} removed", c.unit));
            self.elect(&app);
            self.reap_application(&app);
        }
        Ok((c.state.clone(), version))
    }

    /// Which secret `secret-get ID` of `unit` means: its own
    /// application's `NAME`, or `APP/NAME` of an application it is related
    /// to. Returns (owner, name, whether the unit may create it).
    pub fn secret_access(&self, unit: &str, id: &str) -> Result<(String, String, bool)> {
        let u = self
            .units
            .get(unit)
            .ok_or_else(|| not_found("unit", unit))?;
        let (owner, name) = match id.split_once('/') {
            Some((o, n)) => (o.to_string(), n.to_string()),
            None => (u.application.clone(), id.to_string()),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !valid(&owner) || !valid(&name) {
            return Err(invalid(
                "secret",
                format!("invalid secret id {id:?}: NAME or APP/NAME"),
            ));
        }
        if owner == u.application {
            return Ok((owner, name, true));
        }
        // A dying relation still counts: its units' hooks may run until
        // they have left it.
        let related = self
            .doc
            .relations
            .values()
            .chain(self.doc.dying_relations.values())
            .any(|r| r.end_of(&u.application).is_some() && r.end_of(&owner).is_some());
        if !related {
            return Err(ControllerError::Unauthorized(format!(
                "{} (unit {unit} may read secrets of related applications only, not {owner})",
                u.machine
            )));
        }
        Ok((owner, name, false))
    }

    // ---- status ------------------------------------------------------------

    fn agent_status(&self, u: &UnitDoc, now: i64) -> (String, String) {
        let machine = self.machines.get(&u.machine);
        if let Some(e) = &u.state.error {
            return (
                "error".into(),
                format!("{} hook failed: {}", e.hook.name(), e.message),
            );
        }
        if let Some(h) = self.running.get(&u.name) {
            return ("executing".into(), format!("running {h} hook"));
        }
        let seen = self
            .seen
            .get(&u.machine)
            .copied()
            .or(machine.and_then(|m| m.agent_seen));
        match seen {
            None => ("allocating".into(), String::new()),
            Some(t) if now - t > 120_000 => (
                "lost".into(),
                "agent has not called in for 2 minutes".into(),
            ),
            Some(_) => ("idle".into(), String::new()),
        }
    }

    pub fn status(&self, charms: &dyn Charms, now: i64) -> api::Status {
        let _ = charms;
        let mut units = BTreeMap::new();
        for u in self.units.values() {
            let (agent, agent_message) = self.agent_status(u, now);
            let (workload, message) = match &u.state.error {
                Some(e) => (
                    "error".to_string(),
                    format!("hook failed: \"{}\"", e.hook.name()),
                ),
                None => (
                    u.workload.state.as_str().to_string(),
                    u.workload.message.clone(),
                ),
            };
            units.insert(
                u.name.clone(),
                api::UnitStatus {
                    workload,
                    message,
                    agent,
                    agent_message,
                    machine: u.machine.clone(),
                    address: self
                        .machines
                        .get(&u.machine)
                        .and_then(|m| m.address.clone()),
                    ports: u.ports.iter().map(|p| p.to_string()).collect(),
                    leader: self
                        .doc
                        .applications
                        .get(&u.application)
                        .and_then(|a| a.leader.as_deref())
                        == Some(u.name.as_str()),
                    life: match u.life {
                        Life::Alive => "alive".into(),
                        Life::Dying => "dying".into(),
                    },
                },
            );
        }
        let rank = |s: &str| match s {
            "error" => 0,
            "blocked" => 1,
            "maintenance" => 2,
            "waiting" => 3,
            "active" => 4,
            _ => 5,
        };
        let applications = self
            .doc
            .applications
            .iter()
            .map(|(name, a)| {
                let mine: Vec<&api::UnitStatus> = self
                    .units
                    .values()
                    .filter(|u| &u.application == name)
                    .filter_map(|u| units.get(&u.name))
                    .collect();
                let worst = mine.iter().min_by_key(|u| rank(&u.workload));
                (
                    name.clone(),
                    api::AppStatus {
                        charm: a.charm.name.clone(),
                        status: worst
                            .map(|u| u.workload.clone())
                            .unwrap_or_else(|| "unknown".into()),
                        message: worst.map(|u| u.message.clone()).unwrap_or_default(),
                        units: mine.len(),
                        exposed: a.exposed,
                    },
                )
            })
            .collect();
        let machines = self
            .machines
            .values()
            .map(|m| {
                let seen = self.seen.get(&m.id).copied().or(m.agent_seen);
                let agent = match seen {
                    None => "pending",
                    Some(t) if now - t > 120_000 => "down",
                    Some(_) => "started",
                };
                (
                    m.id.clone(),
                    api::MachineStatus {
                        state: serde_json::to_value(m.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        message: m.message.clone(),
                        address: m.address.clone(),
                        instance: m.instance.clone(),
                        agent: agent.into(),
                    },
                )
            })
            .collect();
        let relations = self
            .doc
            .relations
            .values()
            .map(|r| api::RelationStatus {
                id: r.id,
                ends: r
                    .ends
                    .iter()
                    .map(|e| format!("{}:{}", e.application, e.endpoint))
                    .collect(),
                interface: r.interface.clone(),
            })
            .collect();
        api::Status {
            model: api::StatusModel {
                name: self.doc.name.clone(),
                provider: serde_json::to_value(self.doc.provider)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
            },
            applications,
            units,
            machines,
            relations,
        }
    }

    pub fn unit_detail(
        &self,
        charms: &dyn Charms,
        unit: &str,
        now: i64,
    ) -> Result<api::UnitDetail> {
        let u = self
            .units
            .get(unit)
            .ok_or_else(|| not_found("unit", unit))?;
        let status = self.status(charms, now).units.remove(unit).expect("listed");
        let view = self.unit_view(charms, u);
        let relations = view
            .map(|v| {
                v.relations
                    .into_iter()
                    .map(|r| api::UnitRelation {
                        id: r.id,
                        endpoint: r.endpoint,
                        remote_application: r.remote_application,
                        local_settings: r.local_unit,
                        remote_units: r
                            .remote_units
                            .into_iter()
                            .map(|(k, v)| (k, v.data))
                            .collect(),
                        application_settings: r.remote_app.data,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(api::UnitDetail {
            name: unit.to_string(),
            status,
            relations,
            last_failure: u.last_failure.clone(),
            state: serde_json::to_value(&u.state).unwrap_or_default(),
        })
    }

    pub fn action_info(&self, id: u64) -> Result<api::ActionInfo> {
        let a = self
            .actions
            .get(&id)
            .ok_or_else(|| not_found("action", &id.to_string()))?;
        let o = a.outcome.clone().unwrap_or(ActionOutcome {
            id,
            status: a.status.clone(),
            message: String::new(),
            results: BTreeMap::new(),
            stdout: String::new(),
            stderr: String::new(),
        });
        Ok(api::ActionInfo {
            id,
            unit: a.unit.clone(),
            name: a.name.clone(),
            status: a.status.clone(),
            message: o.message,
            results: o.results,
            stdout: o.stdout,
            stderr: o.stderr,
        })
    }

    /// The model's structure in `kumo-charm`'s terms, for bundles.
    pub fn bundle_state(&self) -> kumo_charm::ModelState {
        let mut s = kumo_charm::ModelState {
            next_machine: self.doc.next_machine,
            ..Default::default()
        };
        for m in self.machines.values() {
            s.machines.insert(
                m.id.clone(),
                kumo_charm::Machine {
                    constraints: m.constraints.clone(),
                    series: None,
                    bundle_machine: m.bundle_machine.clone(),
                },
            );
        }
        for (name, a) in &self.doc.applications {
            let units = self
                .units
                .values()
                .filter(|u| &u.application == name && u.life == Life::Alive)
                // A subordinate's units follow its relations, not the bundle.
                .filter(|u| u.principal.is_none())
                .map(|u| (u.number(), u.machine.clone()))
                .collect();
            s.applications.insert(
                name.clone(),
                kumo_charm::AppState {
                    charm: a.charm.name.clone(),
                    channel: None,
                    config: a
                        .config
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), from_json(v)?)))
                        .collect(),
                    constraints: a.constraints.clone(),
                    expose: a.exposed,
                    units,
                    next_unit: a.next_unit,
                },
            );
        }
        for r in self.doc.relations.values() {
            if let [a, b] = r.ends.as_slice() {
                s.relations.insert(kumo_charm::Relation::new(
                    (a.application.clone(), a.endpoint.clone()),
                    (b.application.clone(), b.endpoint.clone()),
                ));
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    Existing(String),
    NewContainer(String),
}

fn from_json(v: &serde_json::Value) -> Option<Value> {
    Some(match v {
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        _ => return None,
    })
}

/// Applies key changes; true when anything changed.
fn apply_changes(
    data: &mut BTreeMap<String, String>,
    changes: &BTreeMap<String, Option<String>>,
) -> bool {
    let before = data.clone();
    for (k, v) in changes {
        match v {
            Some(v) => {
                data.insert(k.clone(), v.clone());
            }
            None => {
                data.remove(k);
            }
        }
    }
    *data != before
}

#[cfg(test)]
mod tests;
