//! Hook tools over a hook's context.
//!
//! A hook calls `relation-get`, `status-set`, … as commands; each is a
//! symlink to the `kumo` binary, which forwards its name and arguments to
//! the unit's agent, and the agent answers with [`run`] against the
//! hook's [`HookContext`]. Reads see the view the hook started from plus
//! the hook's own writes; writes are buffered and reach the controller
//! only in the hook's commit, and only if it succeeds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::protocol::*;
use crate::uniter::{Hook, UniterState};

/// The names `kumo` answers to as a hook tool.
pub const TOOLS: &[&str] = &[
    "relation-get",
    "relation-set",
    "relation-ids",
    "relation-list",
    "config-get",
    "status-set",
    "status-get",
    "open-port",
    "close-port",
    "opened-ports",
    "unit-get",
    "leader-get",
    "leader-set",
    "is-leader",
    "juju-log",
    "log",
    "action-get",
    "action-set",
    "action-fail",
    "render-template",
    "secret-get",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
    /// `render-template DEST`: the agent writes this file (path, content).
    pub write: Option<(String, String)>,
}

impl ToolOutput {
    fn ok(stdout: impl Into<String>) -> ToolOutput {
        ToolOutput {
            stdout: stdout.into(),
            ..Default::default()
        }
    }
    fn usage(tool: &str, message: impl std::fmt::Display) -> ToolOutput {
        ToolOutput {
            stderr: format!("{tool}: {message}\n"),
            code: 2,
            ..Default::default()
        }
    }
}

/// One hook's reads and buffered writes.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub view: UnitView,
    pub state: UniterState,
    pub hook: Hook,
    pub status: WorkloadStatus,
    pub ports: BTreeSet<Port>,
    pub ports_changed: bool,
    pub status_changed: bool,
    pub unit_settings: BTreeMap<u64, BTreeMap<String, Option<String>>>,
    pub app_settings: BTreeMap<u64, BTreeMap<String, Option<String>>>,
    pub leader_settings: BTreeMap<String, Option<String>>,
    pub logs: Vec<LogLine>,
    pub action_results: BTreeMap<String, serde_json::Value>,
    pub action_failed: Option<String>,
}

impl HookContext {
    pub fn new(
        view: UnitView,
        state: UniterState,
        hook: Hook,
        status: WorkloadStatus,
        ports: BTreeSet<Port>,
    ) -> HookContext {
        HookContext {
            view,
            state,
            hook,
            status,
            ports,
            ports_changed: false,
            status_changed: false,
            unit_settings: BTreeMap::new(),
            app_settings: BTreeMap::new(),
            leader_settings: BTreeMap::new(),
            logs: Vec::new(),
            action_results: BTreeMap::new(),
            action_failed: None,
        }
    }

    /// The hook environment Juju gives (`JUJU_*`), minus paths.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("JUJU_UNIT_NAME".to_string(), self.view.unit.clone()),
            ("JUJU_HOOK_NAME".to_string(), self.hook.name()),
            (
                "JUJU_AGENT_NAME".to_string(),
                format!("unit-{}", self.view.unit.replace('/', "-")),
            ),
        ];
        if let Some((id, endpoint, app)) = self.hook.relation() {
            env.push(("JUJU_RELATION".into(), endpoint.into()));
            env.push(("JUJU_RELATION_ID".into(), format!("{endpoint}:{id}")));
            env.push(("JUJU_REMOTE_APP".into(), app.into()));
        }
        if let Some(unit) = self.hook.remote_unit() {
            env.push(("JUJU_REMOTE_UNIT".into(), unit.into()));
        }
        if let Hook::RelationDeparted { remote_unit, .. } = &self.hook {
            env.push(("JUJU_DEPARTING_UNIT".into(), remote_unit.clone()));
        }
        if let Hook::Action { id, name } = &self.hook {
            env.push(("JUJU_ACTION_NAME".into(), name.clone()));
            env.push(("JUJU_ACTION_UUID".into(), id.to_string()));
        }
        env
    }

    fn relation_of(&self, tool: &str, arg: Option<&str>) -> Result<&RelationView, ToolOutput> {
        let id = match arg {
            Some(a) => parse_relation_id(a)
                .ok_or_else(|| ToolOutput::usage(tool, format!("invalid relation id {a:?}")))?,
            None => match self.hook.relation() {
                Some((id, _, _)) => id,
                None => {
                    return Err(ToolOutput::usage(
                        tool,
                        "no relation id given and this is not a relation hook",
                    ))
                }
            },
        };
        self.view
            .relation(id)
            .ok_or_else(|| ToolOutput::usage(tool, format!("relation {id} not found")))
    }

    /// Units joined as the uniter sees them, as Juju's relation-list does:
    /// including the unit joining now, excluding the one departing.
    fn members(&self, rel: &RelationView) -> Vec<String> {
        let mut units: BTreeSet<String> = self
            .state
            .relations
            .get(&rel.id)
            .map(|r| r.units.keys().cloned().collect())
            .unwrap_or_default();
        match &self.hook {
            Hook::RelationJoined {
                relation,
                remote_unit,
                ..
            } if *relation == rel.id => {
                units.insert(remote_unit.clone());
            }
            Hook::RelationDeparted {
                relation,
                remote_unit,
                ..
            } if *relation == rel.id => {
                units.remove(remote_unit);
            }
            _ => {}
        }
        units.into_iter().collect()
    }

    fn unit_data(&self, rel: &RelationView, unit: &str) -> Settings {
        if unit == self.view.unit {
            let mut data = rel.local_unit.clone();
            apply_changes(&mut data, self.unit_settings.get(&rel.id));
            data
        } else {
            rel.remote_units
                .get(unit)
                .map(|v| v.data.clone())
                .unwrap_or_default()
        }
    }

    fn app_data(&self, rel: &RelationView, app: &str) -> Settings {
        if app == self.view.application {
            let mut data = rel.local_app.clone();
            apply_changes(&mut data, self.app_settings.get(&rel.id));
            data
        } else {
            rel.remote_app.data.clone()
        }
    }

    fn leader_data(&self) -> Settings {
        let mut data = self.view.leader_settings.data.clone();
        apply_changes(&mut data, Some(&self.leader_settings));
        data
    }

    /// Everything a template sees: `config`, `unit`, `relations` by
    /// endpoint (each relation's `app` data and `units` data by name).
    pub fn template_context(&self) -> serde_json::Value {
        let mut relations: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for rel in &self.view.relations {
            let units: BTreeMap<String, Settings> = self
                .members(rel)
                .into_iter()
                .map(|u| {
                    let d = self.unit_data(rel, &u);
                    (u, d)
                })
                .collect();
            relations
                .entry(rel.endpoint.clone())
                .or_default()
                .push(serde_json::json!({
                    "id": rel.id,
                    "remote_application": rel.remote_application,
                    "app": self.app_data(rel, &rel.remote_application),
                    "units": units,
                }));
        }
        serde_json::json!({
            "config": self.view.config,
            "unit": {
                "name": self.view.unit,
                "application": self.view.application,
                "private_address": self.view.private_address,
                "public_address": self.view.public_address,
                "is_leader": self.view.leader,
            },
            "leader": self.leader_data(),
            "relations": relations,
        })
    }
}

fn apply_changes(data: &mut Settings, changes: Option<&BTreeMap<String, Option<String>>>) {
    for (k, v) in changes.into_iter().flatten() {
        match v {
            Some(v) => {
                data.insert(k.clone(), v.clone());
            }
            None => {
                data.remove(k);
            }
        }
    }
}

/// `db:3` or `3`.
pub fn parse_relation_id(s: &str) -> Option<u64> {
    s.rsplit(':').next()?.parse().ok()
}

struct Args {
    flags: BTreeMap<String, Option<String>>,
    positional: Vec<String>,
}

/// Splits `-r ID`, `--format=json`, `--app`, … from positionals.
/// `with_value` lists the flags that take one.
fn parse_args(args: &[String], with_value: &[&str]) -> Result<Args, String> {
    let mut flags = BTreeMap::new();
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-" || !a.starts_with('-') || a.len() == 1 {
            positional.push(a.clone());
            continue;
        }
        if a == "--" {
            positional.extend(it.by_ref().cloned());
            break;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.trim_start_matches('-').to_string(), Some(v.to_string())),
            None => (a.trim_start_matches('-').to_string(), None),
        };
        if with_value.contains(&name.as_str()) {
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("flag {a} needs a value"))?,
            };
            flags.insert(name, Some(v));
        } else if inline.is_some() {
            return Err(format!("flag {a} takes no value"));
        } else {
            flags.insert(name, None);
        }
    }
    Ok(Args { flags, positional })
}

impl Args {
    fn get(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .find_map(|n| self.flags.get(*n).and_then(|v| v.as_deref()))
    }
    fn has(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.flags.contains_key(*n))
    }
    fn json(&self) -> bool {
        self.get(&["format"]) == Some("json")
    }
}

fn show_map(data: &Settings, json: bool) -> String {
    if json {
        return format!("{}\n", serde_json::to_string(data).expect("map"));
    }
    data.iter()
        .map(|(k, v)| format!("{k}: {}\n", yaml_scalar(v)))
        .collect()
}

fn yaml_scalar(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-@+".contains(c))
        && !matches!(v, "true" | "false" | "null" | "yes" | "no");
    if plain {
        v.to_string()
    } else {
        serde_json::to_string(v).expect("string")
    }
}

fn show_value(v: Option<&str>, json: bool) -> String {
    match (v, json) {
        (Some(v), true) => format!("{}\n", serde_json::to_string(v).expect("string")),
        (None, true) => "null\n".into(),
        (Some(v), false) => format!("{v}\n"),
        (None, false) => String::new(),
    }
}

fn assignments(
    tool: &str,
    items: &[String],
) -> Result<BTreeMap<String, Option<String>>, ToolOutput> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            return Err(ToolOutput::usage(
                tool,
                format!("expected key=value, got {item:?}"),
            ));
        };
        if k.is_empty() {
            return Err(ToolOutput::usage(tool, format!("empty key in {item:?}")));
        }
        out.insert(k.to_string(), (!v.is_empty()).then(|| v.to_string()));
    }
    Ok(out)
}

fn parse_port(tool: &str, s: &str) -> Result<Port, ToolOutput> {
    let (n, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => {
            return Err(ToolOutput::usage(
                tool,
                format!("unknown protocol in {s:?}"),
            ))
        }
    };
    let number = n
        .parse::<u16>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ToolOutput::usage(tool, format!("invalid port {s:?}")))?;
    Ok(Port { number, protocol })
}

fn json_to_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs one hook tool. `read_file` reads a charm file (templates) by its
/// path relative to the charm directory.
pub fn run(
    ctx: &mut HookContext,
    tool: &str,
    argv: &[String],
    read_file: &dyn Fn(&str) -> Option<String>,
) -> ToolOutput {
    match run_inner(ctx, tool, argv, read_file) {
        Ok(out) | Err(out) => out,
    }
}

fn run_inner(
    ctx: &mut HookContext,
    tool: &str,
    argv: &[String],
    read_file: &dyn Fn(&str) -> Option<String>,
) -> Result<ToolOutput, ToolOutput> {
    let with_value: &[&str] = match tool {
        "relation-get" | "relation-set" | "relation-list" => &["r", "relation", "format"],
        "juju-log" | "log" => &["l", "log-level"],
        _ => &["format"],
    };
    let a = parse_args(argv, with_value).map_err(|e| ToolOutput::usage(tool, e))?;
    let json = a.json();
    let pos = &a.positional;
    match tool {
        "relation-ids" => {
            let endpoint = pos
                .first()
                .map(String::as_str)
                .or(ctx.hook.relation().map(|r| r.1));
            let ids: Vec<String> = ctx
                .view
                .relations
                .iter()
                .filter(|r| endpoint.is_none_or(|e| r.endpoint == e))
                .map(|r| format!("{}:{}", r.endpoint, r.id))
                .collect();
            Ok(ToolOutput::ok(if json {
                format!("{}\n", serde_json::to_string(&ids).expect("ids"))
            } else {
                ids.iter().map(|i| format!("{i}\n")).collect()
            }))
        }
        "relation-list" => {
            let rel = ctx.relation_of(tool, a.get(&["r", "relation"]))?;
            if a.has(&["app"]) {
                return Ok(ToolOutput::ok(show_value(
                    Some(&rel.remote_application),
                    json,
                )));
            }
            let units = ctx.members(rel);
            Ok(ToolOutput::ok(if json {
                format!("{}\n", serde_json::to_string(&units).expect("units"))
            } else {
                units.iter().map(|u| format!("{u}\n")).collect()
            }))
        }
        "relation-get" => {
            let rel = ctx.relation_of(tool, a.get(&["r", "relation"]))?.clone();
            let key = pos.first().filter(|k| *k != "-").cloned();
            let data = if a.has(&["app"]) {
                let app = match pos.get(1) {
                    Some(who) => who.split('/').next().unwrap_or(who).to_string(),
                    None => rel.remote_application.clone(),
                };
                ctx.app_data(&rel, &app)
            } else {
                let unit = match pos.get(1) {
                    Some(u) => u.clone(),
                    None => ctx.hook.remote_unit().map(str::to_string).ok_or_else(|| {
                        ToolOutput::usage(tool, "no unit given and this hook has no remote unit")
                    })?,
                };
                ctx.unit_data(&rel, &unit)
            };
            Ok(ToolOutput::ok(match key {
                Some(k) => show_value(data.get(&k).map(String::as_str), json),
                None => show_map(&data, json),
            }))
        }
        "relation-set" => {
            let rel_id = ctx.relation_of(tool, a.get(&["r", "relation"]))?.id;
            let changes = assignments(tool, pos)?;
            if a.has(&["app"]) {
                if !ctx.view.leader {
                    return Err(ToolOutput::usage(
                        tool,
                        "cannot write application settings: this unit is not the leader",
                    ));
                }
                ctx.app_settings.entry(rel_id).or_default().extend(changes);
            } else {
                ctx.unit_settings.entry(rel_id).or_default().extend(changes);
            }
            Ok(ToolOutput::ok(""))
        }
        "config-get" => {
            let key = pos.first().filter(|_| !a.has(&["all", "a"]));
            match key {
                Some(k) => {
                    let v = ctx.view.config.get(k);
                    Ok(ToolOutput::ok(match (v, json) {
                        (Some(v), true) => format!("{v}\n"),
                        (Some(v), false) => format!("{}\n", json_to_text(v)),
                        (None, true) => "null\n".into(),
                        (None, false) => String::new(),
                    }))
                }
                None => {
                    let text: Settings = ctx
                        .view
                        .config
                        .iter()
                        .map(|(k, v)| (k.clone(), json_to_text(v)))
                        .collect();
                    Ok(ToolOutput::ok(if json {
                        format!(
                            "{}\n",
                            serde_json::to_string(&ctx.view.config).expect("config")
                        )
                    } else {
                        show_map(&text, false)
                    }))
                }
            }
        }
        "status-set" => {
            if a.has(&["application"]) && !ctx.view.leader {
                return Err(ToolOutput::usage(
                    tool,
                    "only the leader may set application status",
                ));
            }
            let state = pos
                .first()
                .ok_or_else(|| ToolOutput::usage(tool, "missing status"))?;
            let state = WorkloadState::parse(state).ok_or_else(|| {
                ToolOutput::usage(
                    tool,
                    format!("invalid status {state:?}: expected maintenance, blocked, waiting or active"),
                )
            })?;
            ctx.status = WorkloadStatus {
                state,
                message: pos[1..].join(" "),
            };
            ctx.status_changed = true;
            Ok(ToolOutput::ok(""))
        }
        "status-get" => Ok(ToolOutput::ok(if json {
            format!(
                "{}\n",
                serde_json::json!({"status": ctx.status.state.as_str(), "message": ctx.status.message})
            )
        } else {
            format!("{}\n", ctx.status.state.as_str())
        })),
        "open-port" | "close-port" => {
            let p = pos
                .first()
                .ok_or_else(|| ToolOutput::usage(tool, "missing port"))?;
            let port = parse_port(tool, p)?;
            let changed = if tool == "open-port" {
                ctx.ports.insert(port)
            } else {
                ctx.ports.remove(&port)
            };
            ctx.ports_changed |= changed;
            Ok(ToolOutput::ok(""))
        }
        "opened-ports" => Ok(ToolOutput::ok(
            ctx.ports
                .iter()
                .map(|p| format!("{p}\n"))
                .collect::<String>(),
        )),
        "unit-get" => {
            let what = pos
                .first()
                .ok_or_else(|| ToolOutput::usage(tool, "missing setting"))?;
            let v = match what.as_str() {
                "private-address" => &ctx.view.private_address,
                "public-address" => &ctx.view.public_address,
                other => {
                    return Err(ToolOutput::usage(
                        tool,
                        format!(
                            "unknown setting {other:?}: expected private-address or public-address"
                        ),
                    ))
                }
            };
            Ok(ToolOutput::ok(show_value(Some(v), json)))
        }
        "is-leader" => Ok(ToolOutput::ok(if json {
            format!("{}\n", ctx.view.leader)
        } else if ctx.view.leader {
            "True\n".to_string()
        } else {
            "False\n".to_string()
        })),
        "leader-get" => {
            let data = ctx.leader_data();
            Ok(ToolOutput::ok(match pos.first().filter(|k| *k != "-") {
                Some(k) => show_value(data.get(k).map(String::as_str), json),
                None => show_map(&data, json),
            }))
        }
        "leader-set" => {
            if !ctx.view.leader {
                return Err(ToolOutput::usage(
                    tool,
                    "cannot write leader settings: this unit is not the leader",
                ));
            }
            let changes = assignments(tool, pos)?;
            ctx.leader_settings.extend(changes);
            Ok(ToolOutput::ok(""))
        }
        "juju-log" | "log" => {
            let level = match a.get(&["l", "log-level"]) {
                Some(l) => Level::parse(l)
                    .ok_or_else(|| ToolOutput::usage(tool, format!("invalid log level {l:?}")))?,
                None => Level::Info,
            };
            if pos.is_empty() {
                return Err(ToolOutput::usage(tool, "missing message"));
            }
            ctx.logs.push(LogLine {
                level,
                message: pos.join(" "),
            });
            Ok(ToolOutput::ok(""))
        }
        "action-get" | "action-set" | "action-fail" => {
            let Hook::Action { id, .. } = ctx.hook else {
                return Err(ToolOutput::usage(tool, "not running an action"));
            };
            match tool {
                "action-get" => {
                    let params = ctx
                        .view
                        .actions
                        .iter()
                        .find(|x| x.id == id)
                        .map(|x| x.params.clone())
                        .unwrap_or_default();
                    Ok(ToolOutput::ok(match pos.first() {
                        Some(k) => match params.get(k) {
                            Some(v) if json => format!("{v}\n"),
                            Some(v) => format!("{}\n", json_to_text(v)),
                            None => String::new(),
                        },
                        None => format!("{}\n", serde_json::to_string(&params).expect("params")),
                    }))
                }
                "action-set" => {
                    for (k, v) in assignments(tool, pos)? {
                        ctx.action_results
                            .insert(k, serde_json::Value::String(v.unwrap_or_default()));
                    }
                    Ok(ToolOutput::ok(""))
                }
                _ => {
                    ctx.action_failed = Some(if pos.is_empty() {
                        "action failed without a reason".to_string()
                    } else {
                        pos.join(" ")
                    });
                    Ok(ToolOutput::ok(""))
                }
            }
        }
        "render-template" => {
            let src = pos.first().ok_or_else(|| {
                ToolOutput::usage(
                    tool,
                    "usage: render-template TEMPLATE [DEST|-] [KEY=VALUE...]",
                )
            })?;
            let text = read_file(src)
                .or_else(|| read_file(&format!("templates/{src}")))
                .ok_or_else(|| {
                    ToolOutput::usage(tool, format!("no template {src:?} in the charm"))
                })?;
            // `key=value` after the destination become `vars.key`, for
            // what a hook fetched itself (a secret, say).
            let mut context = ctx.template_context();
            let vars = assignments(tool, pos.get(2..).unwrap_or_default())?;
            context["vars"] = serde_json::json!(vars
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect::<BTreeMap<_, _>>());
            let rendered = render(src, &text, &context).map_err(|e| ToolOutput::usage(tool, e))?;
            Ok(match pos.get(1).filter(|d| *d != "-") {
                Some(dest) => ToolOutput {
                    write: Some((dest.clone(), rendered)),
                    ..Default::default()
                },
                None => ToolOutput::ok(rendered),
            })
        }
        // Needs the controller: the agent answers it before calling `run`.
        "secret-get" => Err(ToolOutput::usage(
            tool,
            "answered by the unit agent, not here",
        )),
        other => Err(ToolOutput::usage(other, "unknown hook tool")),
    }
}

/// Renders a charm template; undefined variables are errors, so a typo in
/// a template fails the hook instead of writing an empty value.
pub fn render(name: &str, text: &str, context: &serde_json::Value) -> Result<String, crate::Error> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    let err = |e: minijinja::Error| crate::Error::Template {
        name: name.to_string(),
        message: match e.line() {
            Some(line) => format!("line {line}: {}", e.detail().unwrap_or(&e.to_string())),
            None => e.to_string(),
        },
    };
    env.add_template(name, text).map_err(err)?;
    env.get_template(name)
        .and_then(|t| t.render(context))
        .map_err(err)
}

#[cfg(test)]
mod tests;
