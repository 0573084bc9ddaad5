//! A model as data and the planner: `plan` lists the steps that make a
//! model match a bundle, `apply` performs one, `diff` compares both ways and
//! `export` turns a model back into a bundle.
//!
//! Like `juju deploy` of a bundle, planning only adds and changes: a model
//! with more than the bundle asks for keeps it (and `diff` shows it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::bundle::{Application, Bundle, MachineSpec, OptionValue, Placement, RelationEnd};
use crate::config::Value;
use crate::error::{Error, Result};
use crate::validate::{validate, CharmSource, Relation};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    pub constraints: Option<String>,
    pub series: Option<String>,
    /// The bundle machine this was made for, so a second deploy finds it.
    pub bundle_machine: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AppState {
    pub charm: String,
    pub channel: Option<String>,
    /// Options set explicitly; the rest are the charm's defaults.
    pub config: BTreeMap<String, Value>,
    pub constraints: Option<String>,
    pub expose: bool,
    /// Unit number → machine id.
    pub units: BTreeMap<u32, String>,
    /// Unit numbers are never reused.
    pub next_unit: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelState {
    /// By id: `"3"` for machines, `"3/lxd/0"` for containers.
    pub machines: BTreeMap<String, Machine>,
    pub applications: BTreeMap<String, AppState>,
    pub relations: BTreeSet<Relation>,
    /// Machine numbers are never reused.
    pub next_machine: u32,
}

/// One change to a model, printed exactly as it will be made.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    AddMachine {
        id: String,
        spec: MachineSpec,
        bundle_machine: Option<String>,
    },
    AddContainer {
        id: String,
        kind: String,
        host: String,
    },
    Deploy {
        application: String,
        charm: String,
        channel: Option<String>,
        config: BTreeMap<String, Value>,
        constraints: Option<String>,
        expose: bool,
    },
    SetConfig {
        application: String,
        config: BTreeMap<String, Value>,
    },
    SetConstraints {
        application: String,
        constraints: String,
    },
    Expose {
        application: String,
    },
    AddUnit {
        application: String,
        number: u32,
        machine: String,
    },
    Relate(Relation),
}

fn show_config(config: &BTreeMap<String, Value>) -> String {
    config
        .iter()
        .map(|(k, v)| format!("{k}={}", v.to_yaml()))
        .collect::<Vec<_>>()
        .join(" ")
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddMachine {
                id,
                spec,
                bundle_machine,
            } => {
                write!(f, "add machine {id}")?;
                if let Some(b) = bundle_machine {
                    write!(f, " (bundle machine {b})")?;
                }
                if let Some(c) = &spec.constraints {
                    write!(f, " with constraints {c}")?;
                }
                if let Some(s) = &spec.series {
                    write!(f, " series {s}")?;
                }
                Ok(())
            }
            Step::AddContainer { id, kind, host } => {
                write!(f, "add {kind} container {id} on machine {host}")
            }
            Step::Deploy {
                application,
                charm,
                channel,
                config,
                constraints,
                expose,
            } => {
                write!(f, "deploy application {application} from charm {charm}")?;
                if let Some(c) = channel {
                    write!(f, " channel {c}")?;
                }
                if !config.is_empty() {
                    write!(f, " with config {}", show_config(config))?;
                }
                if let Some(c) = constraints {
                    write!(f, " constraints {c}")?;
                }
                if *expose {
                    write!(f, ", exposed")?;
                }
                Ok(())
            }
            Step::SetConfig {
                application,
                config,
            } => write!(
                f,
                "set config of application {application}: {}",
                show_config(config)
            ),
            Step::SetConstraints {
                application,
                constraints,
            } => write!(
                f,
                "set constraints of application {application} to {constraints}"
            ),
            Step::Expose { application } => write!(f, "expose application {application}"),
            Step::AddUnit {
                application,
                number,
                machine,
            } => write!(f, "add unit {application}/{number} on machine {machine}"),
            Step::Relate(r) => {
                let [(a, ae), (b, be)] = &r.ends;
                write!(f, "relate {a}:{ae} and {b}:{be}")
            }
        }
    }
}

fn conflict(message: String) -> Error {
    Error::Conflict(message)
}

/// Performs one step; refuses steps that do not fit the model.
pub fn apply(state: &mut ModelState, step: &Step) -> Result<()> {
    match step {
        Step::AddMachine {
            id,
            spec,
            bundle_machine,
        } => {
            let n: u32 = id
                .parse()
                .map_err(|_| conflict(format!("machine id {id} is not a number")))?;
            if state.machines.contains_key(id) || n < state.next_machine {
                return Err(conflict(format!("machine {id} exists or existed")));
            }
            state.next_machine = n + 1;
            state.machines.insert(
                id.clone(),
                Machine {
                    constraints: spec.constraints.clone(),
                    series: spec.series.clone(),
                    bundle_machine: bundle_machine.clone(),
                },
            );
        }
        Step::AddContainer { id, kind, host } => {
            if !state.machines.contains_key(host) || host.contains('/') {
                return Err(conflict(format!(
                    "no machine {host} to hold container {id}"
                )));
            }
            if !id.starts_with(&format!("{host}/{kind}/")) || state.machines.contains_key(id) {
                return Err(conflict(format!("container {id} exists or is misnamed")));
            }
            state.machines.insert(id.clone(), Machine::default());
        }
        Step::Deploy {
            application,
            charm,
            channel,
            config,
            constraints,
            expose,
        } => {
            if state.applications.contains_key(application) {
                return Err(conflict(format!("application {application} exists")));
            }
            state.applications.insert(
                application.clone(),
                AppState {
                    charm: charm.clone(),
                    channel: channel.clone(),
                    config: config.clone(),
                    constraints: constraints.clone(),
                    expose: *expose,
                    units: BTreeMap::new(),
                    next_unit: 0,
                },
            );
        }
        Step::SetConfig {
            application,
            config,
        } => {
            let app = app_mut(state, application)?;
            app.config.extend(config.clone());
        }
        Step::SetConstraints {
            application,
            constraints,
        } => app_mut(state, application)?.constraints = Some(constraints.clone()),
        Step::Expose { application } => app_mut(state, application)?.expose = true,
        Step::AddUnit {
            application,
            number,
            machine,
        } => {
            if !state.machines.contains_key(machine) {
                return Err(conflict(format!(
                    "no machine {machine} for unit {application}/{number}"
                )));
            }
            let app = app_mut(state, application)?;
            if *number < app.next_unit {
                return Err(conflict(format!(
                    "unit {application}/{number} exists or existed"
                )));
            }
            app.next_unit = number + 1;
            app.units.insert(*number, machine.clone());
        }
        Step::Relate(r) => {
            for (app, _) in &r.ends {
                if !state.applications.contains_key(app) {
                    return Err(conflict(format!("no application {app} for relation {r}")));
                }
            }
            if !state.relations.insert(r.clone()) {
                return Err(conflict(format!("relation {r} exists")));
            }
        }
    }
    Ok(())
}

fn app_mut<'a>(state: &'a mut ModelState, name: &str) -> Result<&'a mut AppState> {
    state
        .applications
        .get_mut(name)
        .ok_or_else(|| conflict(format!("no application {name}")))
}

/// The model machine made for a bundle machine.
fn mapped(state: &ModelState, bundle_machine: &str) -> Option<String> {
    state
        .machines
        .iter()
        .find(|(_, m)| m.bundle_machine.as_deref() == Some(bundle_machine))
        .map(|(id, _)| id.clone())
}

/// The steps that make `current` have everything `bundle` asks for, each
/// already checked by applying it to a copy of the model.
pub fn plan(current: &ModelState, bundle: &Bundle, charms: &dyn CharmSource) -> Result<Vec<Step>> {
    let resolved = validate(bundle, charms)?;
    let mut model = current.clone();
    let mut steps = Vec::new();
    let mut emit = |model: &mut ModelState, step: Step| -> Result<()> {
        apply(model, &step)?;
        steps.push(step);
        Ok(())
    };

    let mut machine_ids: Vec<&String> = bundle.machines.keys().collect();
    machine_ids.sort_by_key(|id| id.parse::<u64>().unwrap_or(u64::MAX));
    for id in machine_ids {
        if mapped(&model, id).is_none() {
            let step = Step::AddMachine {
                id: model.next_machine.to_string(),
                spec: bundle.machines[id].clone(),
                bundle_machine: Some(id.clone()),
            };
            emit(&mut model, step)?;
        }
    }

    for (name, app) in &bundle.applications {
        let options = &resolved.applications[name].options;
        let schema = &charms.charm(&app.charm).expect("validated").config;
        match model.applications.get(name) {
            None => emit(
                &mut model,
                Step::Deploy {
                    application: name.clone(),
                    charm: app.charm.clone(),
                    channel: app.channel.clone(),
                    config: options.clone(),
                    constraints: app.constraints.clone(),
                    expose: app.expose,
                },
            )?,
            Some(existing) => {
                if existing.charm != app.charm {
                    return Err(bundle.spans.err(
                        &format!("applications.{name}.charm"),
                        format!(
                            "application {name} runs charm {}, the bundle names {}; changing charms is not supported",
                            existing.charm, app.charm
                        ),
                    ));
                }
                let effective = schema.with_defaults(existing.config.clone());
                let changes: BTreeMap<String, Value> = options
                    .iter()
                    .filter(|(k, v)| effective.get(*k) != Some(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let (constraints, expose) = (existing.constraints.clone(), existing.expose);
                if !changes.is_empty() {
                    emit(
                        &mut model,
                        Step::SetConfig {
                            application: name.clone(),
                            config: changes,
                        },
                    )?;
                }
                if let Some(c) = &app.constraints {
                    if constraints.as_ref() != Some(c) {
                        emit(
                            &mut model,
                            Step::SetConstraints {
                                application: name.clone(),
                                constraints: c.clone(),
                            },
                        )?;
                    }
                }
                if app.expose && !expose {
                    emit(
                        &mut model,
                        Step::Expose {
                            application: name.clone(),
                        },
                    )?;
                }
            }
        }
    }

    for (name, app) in &bundle.applications {
        let have = model.applications[name].units.len();
        for i in have..app.num_units as usize {
            let machine = match app.to.get(i) {
                Some(Placement::Machine(b)) => {
                    mapped(&model, b).expect("bundle machines added above")
                }
                Some(Placement::Container { kind, host }) => {
                    let host = match host {
                        Some(b) => mapped(&model, b).expect("bundle machines added above"),
                        None => new_machine(&mut model, &mut emit)?,
                    };
                    let n = (0..)
                        .find(|n| !model.machines.contains_key(&format!("{host}/{kind}/{n}")))
                        .expect("a free container number");
                    let id = format!("{host}/{kind}/{n}");
                    emit(
                        &mut model,
                        Step::AddContainer {
                            id: id.clone(),
                            kind: kind.clone(),
                            host,
                        },
                    )?;
                    id
                }
                Some(Placement::New) | None => new_machine(&mut model, &mut emit)?,
            };
            let number = model.applications[name].next_unit;
            emit(
                &mut model,
                Step::AddUnit {
                    application: name.clone(),
                    number,
                    machine,
                },
            )?;
        }
    }

    for r in &resolved.relations {
        if !model.relations.contains(r) {
            emit(&mut model, Step::Relate(r.clone()))?;
        }
    }
    Ok(steps)
}

fn new_machine(
    model: &mut ModelState,
    emit: &mut impl FnMut(&mut ModelState, Step) -> Result<()>,
) -> Result<String> {
    let id = model.next_machine.to_string();
    emit(
        model,
        Step::AddMachine {
            id: id.clone(),
            spec: MachineSpec::default(),
            bundle_machine: None,
        },
    )?;
    Ok(id)
}

/// One way a model and a bundle differ.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    MissingApplication(String),
    ExtraApplication(String),
    Charm {
        application: String,
        model: String,
        bundle: String,
    },
    Option {
        application: String,
        key: String,
        model: Option<Value>,
        bundle: Option<Value>,
    },
    Constraints {
        application: String,
        model: Option<String>,
        bundle: Option<String>,
    },
    Expose {
        application: String,
        model: bool,
        bundle: bool,
    },
    Units {
        application: String,
        model: usize,
        bundle: usize,
    },
    MissingMachine(String),
    ExtraMachine(String),
    MissingRelation(Relation),
    ExtraRelation(Relation),
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "(unset)".into(), |v| v.to_string())
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Difference::*;
        match self {
            MissingApplication(a) => write!(f, "application {a}: in the bundle, not in the model"),
            ExtraApplication(a) => write!(f, "application {a}: in the model, not in the bundle"),
            Charm {
                application,
                model,
                bundle,
            } => write!(
                f,
                "application {application}: charm {model} in the model, {bundle} in the bundle"
            ),
            Option {
                application,
                key,
                model,
                bundle,
            } => write!(
                f,
                "application {application}: option {key} is {} in the model, {} in the bundle",
                opt(model),
                opt(bundle)
            ),
            Constraints {
                application,
                model,
                bundle,
            } => write!(
                f,
                "application {application}: constraints {} in the model, {} in the bundle",
                opt(model),
                opt(bundle)
            ),
            Expose {
                application,
                model,
                bundle,
            } => write!(
                f,
                "application {application}: exposed {model} in the model, {bundle} in the bundle"
            ),
            Units {
                application,
                model,
                bundle,
            } => write!(
                f,
                "application {application}: {model} units in the model, {bundle} in the bundle"
            ),
            MissingMachine(m) => write!(f, "machine {m}: in the bundle, not in the model"),
            ExtraMachine(m) => write!(f, "machine {m}: in the model, not in the bundle"),
            MissingRelation(r) => write!(f, "relation {r}: in the bundle, not in the model"),
            ExtraRelation(r) => write!(f, "relation {r}: in the model, not in the bundle"),
        }
    }
}

/// How `current` and `bundle` differ, both ways (for `diff-bundle`).
pub fn diff(
    current: &ModelState,
    bundle: &Bundle,
    charms: &dyn CharmSource,
) -> Result<Vec<Difference>> {
    let resolved = validate(bundle, charms)?;
    let mut out = Vec::new();
    for (name, app) in &bundle.applications {
        let Some(have) = current.applications.get(name) else {
            out.push(Difference::MissingApplication(name.clone()));
            continue;
        };
        if have.charm != app.charm {
            out.push(Difference::Charm {
                application: name.clone(),
                model: have.charm.clone(),
                bundle: app.charm.clone(),
            });
            continue;
        }
        let schema = &charms.charm(&app.charm).expect("validated").config;
        let model = schema.with_defaults(have.config.clone());
        let wanted = schema.with_defaults(resolved.applications[name].options.clone());
        let keys: BTreeSet<&String> = model.keys().chain(wanted.keys()).collect();
        for key in keys {
            if model.get(key) != wanted.get(key) {
                out.push(Difference::Option {
                    application: name.clone(),
                    key: key.clone(),
                    model: model.get(key).cloned(),
                    bundle: wanted.get(key).cloned(),
                });
            }
        }
        if have.constraints != app.constraints {
            out.push(Difference::Constraints {
                application: name.clone(),
                model: have.constraints.clone(),
                bundle: app.constraints.clone(),
            });
        }
        if have.expose != app.expose {
            out.push(Difference::Expose {
                application: name.clone(),
                model: have.expose,
                bundle: app.expose,
            });
        }
        if have.units.len() != app.num_units as usize {
            out.push(Difference::Units {
                application: name.clone(),
                model: have.units.len(),
                bundle: app.num_units as usize,
            });
        }
    }
    for name in current.applications.keys() {
        if !bundle.applications.contains_key(name) {
            out.push(Difference::ExtraApplication(name.clone()));
        }
    }
    for id in bundle.machines.keys() {
        if mapped(current, id).is_none() {
            out.push(Difference::MissingMachine(id.clone()));
        }
    }
    let hosting: BTreeSet<&str> = current
        .applications
        .values()
        .flat_map(|a| a.units.values())
        .map(|m| m.split('/').next().unwrap_or(m))
        .collect();
    for (id, m) in &current.machines {
        let in_bundle = m
            .bundle_machine
            .as_ref()
            .is_some_and(|b| bundle.machines.contains_key(b));
        if !id.contains('/') && !in_bundle && !hosting.contains(id.as_str()) {
            out.push(Difference::ExtraMachine(id.clone()));
        }
    }
    for r in resolved.relations.difference(&current.relations) {
        out.push(Difference::MissingRelation(r.clone()));
    }
    for r in current.relations.difference(&resolved.relations) {
        out.push(Difference::ExtraRelation(r.clone()));
    }
    Ok(out)
}

/// The model as a bundle: its machines by their model ids, each unit's placement, set options.
pub fn export(state: &ModelState) -> Bundle {
    let machines = state
        .machines
        .iter()
        .filter(|(id, _)| !id.contains('/'))
        .map(|(id, m)| {
            (
                id.clone(),
                MachineSpec {
                    constraints: m.constraints.clone(),
                    series: m.series.clone(),
                },
            )
        })
        .collect();
    let applications = state
        .applications
        .iter()
        .map(|(name, a)| {
            let to = a
                .units
                .values()
                .map(|m| match m.split('/').collect::<Vec<_>>().as_slice() {
                    [host, kind, _] => Placement::Container {
                        kind: (*kind).to_owned(),
                        host: Some((*host).to_owned()),
                    },
                    _ => Placement::Machine(m.clone()),
                })
                .collect();
            (
                name.clone(),
                Application {
                    charm: a.charm.clone(),
                    channel: a.channel.clone(),
                    num_units: a.units.len() as u32,
                    to,
                    options: a
                        .config
                        .iter()
                        .map(|(k, v)| (k.clone(), OptionValue::from(v)))
                        .collect(),
                    constraints: a.constraints.clone(),
                    expose: a.expose,
                },
            )
        })
        .collect();
    let relations = state
        .relations
        .iter()
        .map(|r| {
            r.ends.clone().map(|(application, endpoint)| RelationEnd {
                application,
                endpoint: Some(endpoint),
            })
        })
        .collect();
    Bundle {
        name: None,
        description: None,
        applications,
        machines,
        relations,
        spans: Default::default(),
    }
}
