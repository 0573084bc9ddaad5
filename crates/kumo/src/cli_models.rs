//! The orchestration verbs, as Juju operators type them: `kumo bootstrap`,
//! `kumo deploy ./charm`, `kumo relate a b`, `kumo status`, … over the
//! controller's `/api/v1/controller` and `/api/v1/models/…` routes.
//!
//! Every verb on a model takes `-m MODEL`; without it, the profile's
//! current model (`kumo switch`), else `default`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kumo_client::{enc, Client};
use kumo_model::orchestra::{
    ActionInfo, AddMachines, AddUnits, Bootstrap, BundlePlan, BundleRequest, CharmUploaded,
    ConfigEntry, CreateModel, Deploy, Exec, LogEntry, ModelInfo, Relate, Resolve, RunAction,
    SetConfig, Status, UnitDetail,
};
use serde_json::Value;

use crate::config::Profiles;
use crate::output::{emit, table, time, Format};

// The model a verb works on (no doc comment: clap would take it as the
// about text of a verb without one).
#[derive(Args, Debug, Clone, Default)]
pub struct ModelOpt {
    /// The model [default: the current one (`kumo switch`), else `default`].
    #[arg(short = 'm', long = "model", value_name = "MODEL")]
    pub model: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ModelCommand {
    /// Set up the orchestration controller in the region: where machine
    /// agents reach it and the bridge and addresses container machines get.
    /// Adds the model `default` and makes it current.
    Bootstrap(BootstrapArgs),
    /// List models; `*` marks the current one.
    Models,
    /// Add a model and make it current.
    AddModel {
        name: String,
        /// Where machines come from: containers on the bootstrap bridge,
        /// existing hosts over SSH (`add-machine ssh:user@host`), or the
        /// region's machines, allocated by constraints and deployed.
        #[arg(long, value_parser = ["containers", "manual", "metal"])]
        provider: Option<String>,
    },
    /// Make a model the current one (for this profile).
    Switch { name: String },
    /// Destroy a model, its machines and everything on them.
    DestroyModel {
        name: String,
        /// Really: the model's machines are destroyed.
        #[arg(long)]
        yes: bool,
    },
    /// Add machines: new containers, a container on a machine (`lxd:N`),
    /// or an existing host (`ssh:user@host`).
    AddMachine {
        placement: Option<String>,
        #[arg(short = 'n', default_value_t = 1)]
        n: u32,
        #[arg(long)]
        constraints: Option<String>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Deploy a charm (a directory, or a name found in $KUMO_CHARM_PATH,
    /// ./charms or kumo's share/kumo/charms) or a bundle (a .yaml file).
    Deploy(DeployArgs),
    /// What deploying a bundle would do, changing nothing.
    Plan {
        bundle: PathBuf,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// How the model differs from a bundle, both ways.
    DiffBundle {
        bundle: PathBuf,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// The model as a bundle.
    ExportBundle {
        /// Write it to this file instead of stdout.
        #[arg(short = 'o', long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Add units to an application.
    AddUnit {
        application: String,
        #[arg(short = 'n', long = "num-units", default_value_t = 1)]
        n: u32,
        /// Where each unit goes: a machine (`3`), a new container on one
        /// (`lxd:3`); repeat or separate with commas.
        #[arg(long = "to", value_delimiter = ',')]
        to: Vec<String>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Remove machines that host no unit or container: containers are
    /// destroyed, metal machines released to the region, manual hosts
    /// lose their agent.
    RemoveMachine {
        #[arg(required = true)]
        machines: Vec<String>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Remove units (they run their stop and remove hooks first).
    RemoveUnit {
        #[arg(required = true)]
        units: Vec<String>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Remove an application and its units and relations.
    RemoveApplication {
        application: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Relate two applications (`app` or `app:endpoint`).
    #[command(alias = "add-relation")]
    Relate {
        a: String,
        b: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Remove the relation between two applications.
    RemoveRelation {
        a: String,
        b: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Show an application's configuration, one option's value (`KEY`), or
    /// change it (`key=value`…, `--reset key,key`).
    Config {
        application: String,
        #[arg(value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Options to return to the charm's default.
        #[arg(long, value_delimiter = ',')]
        reset: Vec<String>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Give an application a new version of its charm (Juju's
    /// upgrade-charm): its units run upgrade-charm, then config-changed.
    #[command(alias = "upgrade-charm")]
    Refresh {
        application: String,
        /// The charm directory.
        #[arg(long)]
        path: PathBuf,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Open an application's ports to the outside.
    Expose {
        application: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Close an exposed application's ports to the outside again.
    Unexpose {
        application: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Clear a unit's error: retry the failed hook, or skip it with --no-retry.
    #[command(alias = "resolved")]
    Resolve {
        unit: String,
        #[arg(long)]
        no_retry: bool,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// The model's applications, units, machines and relations.
    Status {
        /// Print it again every SECS seconds.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// The model's log: hooks, agents and the controller, then new lines as
    /// they come.
    DebugLog {
        /// Only these units (`web/0`), applications (`web`) or machines
        /// (`machine-0`); repeatable.
        #[arg(long = "include", short = 'i')]
        include: Vec<String>,
        /// The lowest level shown: DEBUG, INFO, WARNING or ERROR.
        #[arg(long, short = 'l')]
        level: Option<String>,
        /// How many lines from before now.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: u32,
        /// Print what is there and exit.
        #[arg(long)]
        no_tail: bool,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// A unit's status, relation data and last failure (YAML, or --format json).
    ShowUnit {
        unit: String,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Run a charm action on a unit; prints the action's id.
    RunAction {
        unit: String,
        action: String,
        #[arg(value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// Wait for it and print its results.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// An action's status, results and output.
    ShowActionOutput {
        id: u64,
        #[command(flatten)]
        m: ModelOpt,
    },
    /// Run the install guide's checks against a deployed cloud
    /// (`kumo verify openstack`), each printed as pass, fail or skip.
    Verify(crate::verify::VerifyArgs),
    /// Run a shell command on units (`kumo exec --unit web/0 -- hostname`).
    Exec {
        #[arg(long = "unit", short = 'u', value_delimiter = ',')]
        units: Vec<String>,
        /// Every unit of these applications.
        #[arg(long = "application", short = 'a', value_delimiter = ',')]
        applications: Vec<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        m: ModelOpt,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Log in to a machine (`0`, `0/lxd/1`) or a unit's machine (`web/0`)
    /// as root, or run a command there.
    Ssh {
        target: String,
        /// The private key [default: the lab's key, <data dir>/lab/id_ed25519, if there].
        #[arg(long)]
        key: Option<PathBuf>,
        #[command(flatten)]
        m: ModelOpt,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct BootstrapArgs {
    /// Run the controller on this host instead of in the region process:
    /// `ssh:USER@HOST` (root, or a user with password-less sudo). kumo is
    /// installed there as the `kumo-controller` service with a database of
    /// its own, and a profile for it is saved and made current.
    #[arg(long, value_name = "ssh:USER@HOST")]
    pub to: Option<String>,
    /// With --to: the name of the profile saved for the controller
    /// [default: controller-HOST].
    #[arg(long, requires = "to")]
    pub name: Option<String>,
    /// With --to: the port the controller listens on.
    #[arg(long, default_value_t = 5240, requires = "to")]
    pub port: u16,
    /// With --to: the profile of the region metal models take machines
    /// from. The controller uses that profile's API key (an admin's, to
    /// abort a deployment it gives up on), and its SSH key is added to
    /// that user's so deployed machines let it in.
    #[arg(long, requires = "to", value_name = "PROFILE")]
    pub region_profile: Option<String>,
    /// Where machine agents reach the controller, e.g. http://10.248.0.1:5240
    /// [default with --to: http://HOST:PORT].
    #[arg(long)]
    pub agent_url: Option<String>,
    /// The Linux bridge container machines are attached to.
    #[arg(long)]
    pub bridge: String,
    /// Addresses for container machines, e.g. 10.248.0.100-10.248.0.199.
    #[arg(long, value_name = "A-B")]
    pub address_range: String,
    /// Prefix length of the bridge's subnet.
    #[arg(long, default_value_t = 24)]
    pub prefix: u8,
    #[arg(long)]
    pub gateway: Option<String>,
    /// A DNS server for machines (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// The APT proxy machines use, e.g. http://10.248.0.1:8000/.
    #[arg(long)]
    pub apt_proxy: Option<String>,
    /// A public key file allowed to log in as root on machines (repeatable)
    /// [default: the lab key and ~/.ssh/id_ed25519.pub, id_rsa.pub, those there].
    #[arg(long = "authorized-key", value_name = "FILE")]
    pub authorized_keys: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// A charm directory, a charm name, or a bundle (.yaml).
    pub charm: String,
    /// The application's name [default: the charm's].
    pub application: Option<String>,
    /// Where each unit goes: a machine (`3`) or a new container on one
    /// (`lxd:3`); repeat or separate with commas.
    #[arg(long = "to", value_delimiter = ',')]
    pub to: Vec<String>,
    /// A YAML file (`APP:` with options below it, or flat `key: value`)
    /// or one `key=value`; repeatable.
    #[arg(long = "config")]
    pub config: Vec<String>,
    /// How many units [default: 1].
    #[arg(short = 'n', long = "num-units")]
    pub num_units: Option<u32>,
    #[arg(long)]
    pub constraints: Option<String>,
    /// Show what would be done, changing nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub m: ModelOpt,
}

/// Runs an orchestration verb against `c`, the region of profile `profile`.
pub async fn run(c: &Client, format: Format, profile: &str, cmd: ModelCommand) -> Result<()> {
    let stored = Profiles::load()?
        .profiles
        .get(profile)
        .and_then(|p| p.model.clone());
    let model = |o: &ModelOpt| -> String {
        o.model
            .clone()
            .or_else(|| stored.clone())
            .unwrap_or_else(|| "default".into())
    };
    let mp = |m: &str| format!("/api/v1/models/{}", enc(m));
    match cmd {
        ModelCommand::Bootstrap(a) => bootstrap(c, profile, a).await,
        ModelCommand::Models => {
            let ms: Vec<ModelInfo> = c.get("/api/v1/models").await?;
            let current = stored.clone().unwrap_or_else(|| "default".into());
            emit(format, &ms, |ms| {
                table(
                    &["MODEL", "PROVIDER", "MACHINES", "APPS", "UNITS"],
                    ms.iter()
                        .map(|m| {
                            vec![
                                if m.name == current {
                                    format!("{}*", m.name)
                                } else {
                                    m.name.clone()
                                },
                                m.provider.clone(),
                                m.machines.to_string(),
                                m.applications.to_string(),
                                m.units.to_string(),
                            ]
                        })
                        .collect(),
                )
            })
        }
        ModelCommand::AddModel { name, provider } => {
            let info: ModelInfo = c
                .post("/api/v1/models", &CreateModel { name, provider })
                .await?;
            set_current_model(profile, Some(&info.name))?;
            println!(
                "added model {} ({} provider); it is now the current model",
                info.name, info.provider
            );
            Ok(())
        }
        ModelCommand::Switch { name } => {
            let ms: Vec<ModelInfo> = c.get("/api/v1/models").await?;
            if !ms.iter().any(|m| m.name == name) {
                bail!(
                    "no model {name:?}; models: {}",
                    if ms.is_empty() {
                        "none (kumo bootstrap adds default)".to_string()
                    } else {
                        ms.iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                );
            }
            set_current_model(profile, Some(&name))?;
            println!("{profile}:{name} is now the current model");
            Ok(())
        }
        ModelCommand::DestroyModel { name, yes } => {
            if !yes {
                bail!(
                    "destroying model {name} destroys its machines and everything on them; \
                     run `kumo destroy-model {name} --yes` to do it"
                );
            }
            c.delete(&mp(&name)).await?;
            if stored.as_deref() == Some(name.as_str()) {
                set_current_model(profile, None)?;
            }
            println!("destroyed model {name}");
            Ok(())
        }
        ModelCommand::AddMachine {
            placement,
            n,
            constraints,
            m,
        } => {
            let ids: Vec<String> = c
                .post(
                    &format!("{}/machines", mp(&model(&m))),
                    &AddMachines {
                        placement,
                        constraints,
                        count: n,
                    },
                )
                .await?;
            for id in ids {
                println!("created machine {id}");
            }
            Ok(())
        }
        ModelCommand::Deploy(a) => {
            let m = model(&a.m);
            deploy(c, format, &m, a).await
        }
        ModelCommand::Plan { bundle, m } => {
            deploy_bundle(c, format, &model(&m), &bundle, true).await
        }
        ModelCommand::DiffBundle { bundle, m } => {
            let m = model(&m);
            let req = bundle_request(c, &bundle, false).await?;
            let diffs: Vec<String> = c.post(&format!("{}/bundle/diff", mp(&m)), &req).await?;
            if format != Format::Table {
                return emit(format, &diffs, |_| unreachable!());
            }
            if diffs.is_empty() {
                println!("no differences");
            }
            for d in diffs {
                println!("{d}");
            }
            Ok(())
        }
        ModelCommand::ExportBundle { output, m } => {
            let text = c
                .get_text(&format!("{}/bundle/export", mp(&model(&m))))
                .await?;
            match output {
                Some(f) => {
                    std::fs::write(&f, &text)
                        .with_context(|| format!("writing {}", f.display()))?;
                    println!("wrote {}", f.display());
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        ModelCommand::AddUnit {
            application,
            n,
            to,
            m,
        } => {
            let units: Vec<String> = c
                .post(
                    &format!(
                        "{}/applications/{}/units",
                        mp(&model(&m)),
                        enc(&application)
                    ),
                    &AddUnits { count: n, to },
                )
                .await?;
            for u in units {
                println!("added unit {u}");
            }
            Ok(())
        }
        ModelCommand::RemoveMachine { machines, m } => {
            let m = model(&m);
            for id in &machines {
                c.delete(&format!("{}/machines/{id}", mp(&m))).await?;
                println!("removed machine {id}");
            }
            Ok(())
        }
        ModelCommand::RemoveUnit { units, m } => {
            let m = model(&m);
            for u in &units {
                c.delete(&format!("{}{}", mp(&m), unit_path(u)?)).await?;
                println!("removing unit {u}");
            }
            Ok(())
        }
        ModelCommand::RemoveApplication { application, m } => {
            c.delete(&format!(
                "{}/applications/{}",
                mp(&model(&m)),
                enc(&application)
            ))
            .await?;
            println!("removing application {application}");
            Ok(())
        }
        ModelCommand::Relate { a, b, m } => {
            let r: Value = c
                .post(
                    &format!("{}/relations", mp(&model(&m))),
                    &Relate {
                        a: a.clone(),
                        b: b.clone(),
                    },
                )
                .await?;
            println!("related {a} and {b} (relation {})", r["id"]);
            Ok(())
        }
        ModelCommand::RemoveRelation { a, b, m } => {
            let _: Value = c
                .post(
                    &format!("{}/relations/remove", mp(&model(&m))),
                    &Relate {
                        a: a.clone(),
                        b: b.clone(),
                    },
                )
                .await?;
            println!("removed the relation between {a} and {b}");
            Ok(())
        }
        ModelCommand::Config {
            application,
            settings,
            reset,
            m,
        } => config(c, format, &model(&m), &application, settings, reset).await,
        ModelCommand::Refresh {
            application,
            path,
            m,
        } => {
            let up = upload_charm(c, &path).await?;
            let _: Value = c
                .put(
                    &format!(
                        "{}/applications/{}/charm",
                        mp(&model(&m)),
                        enc(&application)
                    ),
                    &serde_json::json!({ "charm": up.sha256 }),
                )
                .await?;
            println!(
                "{application} now runs charm {} ({:.12})",
                up.name, up.sha256
            );
            Ok(())
        }
        ModelCommand::Expose { application, m } => {
            let _: Value = c
                .post(
                    &format!(
                        "{}/applications/{}/expose",
                        mp(&model(&m)),
                        enc(&application)
                    ),
                    &Value::Null,
                )
                .await?;
            println!("exposed {application}");
            Ok(())
        }
        ModelCommand::Unexpose { application, m } => {
            c.delete(&format!(
                "{}/applications/{}/expose",
                mp(&model(&m)),
                enc(&application)
            ))
            .await?;
            println!("unexposed {application}");
            Ok(())
        }
        ModelCommand::Resolve { unit, no_retry, m } => {
            let _: Value = c
                .post(
                    &format!("{}{}/resolve", mp(&model(&m)), unit_path(&unit)?),
                    &Resolve { retry: !no_retry },
                )
                .await?;
            if no_retry {
                println!("resolved {unit}: the failed hook is skipped");
            } else {
                println!("resolved {unit}: the failed hook runs again");
            }
            Ok(())
        }
        ModelCommand::Status { watch, m } => {
            let path = format!("{}/status", mp(&model(&m)));
            match watch {
                Some(secs) => loop {
                    let s: Status = c.get(&path).await?;
                    if format == Format::Table {
                        // Clear the screen and home the cursor.
                        print!("\x1b[2J\x1b[H");
                    }
                    print_status(format, &s)?;
                    tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
                },
                None => {
                    let s: Status = c.get(&path).await?;
                    print_status(format, &s)
                }
            }
        }
        ModelCommand::DebugLog {
            include,
            level,
            lines,
            no_tail,
            m,
        } => debug_log(c, &model(&m), include, level, lines, no_tail).await,
        ModelCommand::ShowUnit { unit, m } => {
            let d: UnitDetail = c
                .get(&format!("{}{}", mp(&model(&m)), unit_path(&unit)?))
                .await?;
            yaml_unless_json(format, &d)
        }
        ModelCommand::RunAction {
            unit,
            action,
            params,
            wait,
            m,
        } => {
            let m = model(&m);
            let mut ps = BTreeMap::new();
            for p in &params {
                let Some((k, v)) = p.split_once('=') else {
                    bail!("action parameter {p:?}: expected key=value");
                };
                ps.insert(k.to_owned(), param_value(v));
            }
            let r: Value = c
                .post(
                    &format!("{}{}/actions", mp(&m), unit_path(&unit)?),
                    &RunAction {
                        name: action.clone(),
                        params: ps,
                    },
                )
                .await?;
            let id = r["id"]
                .as_u64()
                .context("the controller gave no action id")?;
            if !wait {
                println!(
                    "action {id} ({action}) queued on {unit}; `kumo show-action-output {id}` shows its result"
                );
                return Ok(());
            }
            let info = wait_action(c, &m, id, None).await?;
            yaml_unless_json(format, &info)?;
            if info.status != "completed" {
                bail!("action {id} {}: {}", info.status, info.message);
            }
            Ok(())
        }
        ModelCommand::ShowActionOutput { id, m } => {
            let info: ActionInfo = c.get(&format!("{}/actions/{id}", mp(&model(&m)))).await?;
            yaml_unless_json(format, &info)
        }
        ModelCommand::Verify(a) => crate::verify::run(c, &model(&a.m), &a).await,
        ModelCommand::Exec {
            units,
            applications,
            timeout,
            m,
            command,
        } => exec(c, &model(&m), units, applications, timeout, command).await,
        ModelCommand::Ssh {
            target,
            key,
            m,
            command,
        } => ssh(c, &model(&m), &target, key, command).await,
    }
}

fn set_current_model(profile: &str, model: Option<&str>) -> Result<()> {
    let mut ps = Profiles::load()?;
    let Some(p) = ps.profiles.get_mut(profile) else {
        bail!("no profile named {profile:?}");
    };
    p.model = model.map(str::to_owned);
    ps.save()
}

/// `/units/{app}/{n}` for `app/n`.
fn unit_path(unit: &str) -> Result<String> {
    match unit.split_once('/') {
        Some((app, n))
            if !app.is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()) =>
        {
            Ok(format!("/units/{}/{n}", enc(app)))
        }
        _ => bail!("{unit:?} is not a unit name: expected APP/N, e.g. web/0"),
    }
}

/// An action parameter's value: YAML's reading of it (`3` a number, `true`
/// a boolean), else the text.
fn param_value(v: &str) -> Value {
    if v.is_empty() {
        return Value::String(String::new());
    }
    match serde_yaml::from_str::<Value>(v) {
        Ok(Value::Null) | Err(_) => Value::String(v.to_owned()),
        Ok(x) => x,
    }
}

fn yaml_unless_json<T: serde::Serialize>(format: Format, v: &T) -> Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        _ => print!("{}", serde_yaml::to_string(v)?),
    }
    Ok(())
}

// ---- bootstrap ----------------------------------------------------------------

async fn bootstrap(c: &Client, profile: &str, a: BootstrapArgs) -> Result<()> {
    let Some(agent_url) = a.agent_url.clone() else {
        bail!("--agent-url is required: where machine agents reach this region's controller, e.g. http://10.248.0.1:5240");
    };
    let (keys, key_files) = authorized_keys(&a.authorized_keys)?;
    let b = a.config(agent_url, keys);
    let _: Value = c.put("/api/v1/controller", &b).await?;
    set_current_model(profile, Some("default"))?;
    println!("bootstrapped the controller in the region at {}", c.base());
    print_bootstrap(&b, &key_files);
    println!("current model: default (profile {profile})");
    Ok(())
}

impl BootstrapArgs {
    /// The controller's configuration these arguments give.
    pub(crate) fn config(&self, agent_url: String, authorized_keys: Vec<String>) -> Bootstrap {
        Bootstrap {
            agent_url,
            bridge: self.bridge.clone(),
            address_range: self.address_range.clone(),
            prefix: self.prefix,
            gateway: self.gateway.clone(),
            dns: self.dns.clone(),
            apt_proxy: self.apt_proxy.clone(),
            authorized_keys,
            controller_id: String::new(),
        }
    }
}

/// What `bootstrap` set, as the operator reads it back.
pub(crate) fn print_bootstrap(b: &Bootstrap, key_files: &[PathBuf]) {
    println!("  agents reach it at {}", b.agent_url);
    println!(
        "  container machines go on bridge {} with addresses {}/{}",
        b.bridge, b.address_range, b.prefix
    );
    if let Some(g) = &b.gateway {
        println!("  gateway {g}");
    }
    if !b.dns.is_empty() {
        println!("  DNS {}", b.dns.join(", "));
    }
    if let Some(p) = &b.apt_proxy {
        println!("  APT proxy {p}");
    }
    if key_files.is_empty() {
        println!("  no SSH keys authorized (give --authorized-key FILE for `kumo ssh`)");
    } else {
        println!(
            "  {} SSH key(s) authorized for root, from {}",
            b.authorized_keys.len(),
            key_files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// The public keys in `files` [default: the lab's and the user's own,
/// those that exist], and the files they came from.
pub(crate) fn authorized_keys(files: &[PathBuf]) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let key_files: Vec<PathBuf> = if files.is_empty() {
        let home = std::env::var("HOME").map(PathBuf::from).unwrap_or_default();
        [
            crate::config::default_data_dir().join("lab/id_ed25519.pub"),
            home.join(".ssh/id_ed25519.pub"),
            home.join(".ssh/id_rsa.pub"),
        ]
        .into_iter()
        .filter(|p| p.is_file())
        .collect()
    } else {
        files.to_vec()
    };
    let mut keys = Vec::new();
    for f in &key_files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let before = keys.len();
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
        if keys.len() == before {
            bail!("{}: no public key in it", f.display());
        }
    }
    Ok((keys, key_files))
}

// ---- charms and deploying --------------------------------------------------------

/// Where charms are looked for by name, after any caller-specific places.
fn charm_search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(p) = std::env::var("KUMO_CHARM_PATH") {
        dirs.extend(p.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
    }
    dirs.push(PathBuf::from("./charms"));
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(bin.join("../share/kumo/charms"));
    }
    dirs
}

/// The directory of charm `name`: in `first`, then the search path.
pub fn find_charm(name: &str, first: &[PathBuf]) -> Result<PathBuf> {
    let mut looked = Vec::new();
    for d in first.iter().cloned().chain(charm_search_dirs()) {
        let dir = d.join(name);
        if dir.join("metadata.yaml").is_file() {
            return Ok(dir);
        }
        looked.push(dir.display().to_string());
    }
    bail!(
        "no charm {name:?} found; looked in {} (set KUMO_CHARM_PATH, or give a directory)",
        looked.join(", ")
    )
}

/// A charm directory as an uncompressed tar: entries sorted, owned by 0:0,
/// mtime 0, modes kept, so one directory always packs to the same bytes.
pub fn pack_charm(dir: &Path) -> Result<Vec<u8>> {
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> Result<()> {
        let here = root.join(rel);
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .with_context(|| format!("reading {}", here.display()))?
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading {}", here.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == ".git" {
                continue;
            }
            let path = e.path();
            let rel = rel.join(&name);
            // Symlinks are followed: charms share library files
            // (`charms/_lib/`) by linking them, and each archive must stand
            // alone on the machine it is unpacked on.
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("reading {} (a dangling link?)", path.display()))?;
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            use std::os::unix::fs::PermissionsExt;
            h.set_mode(meta.permissions().mode() & 0o7777);
            let ft = meta.file_type();
            if ft.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &rel, std::io::empty())?;
                walk(b, root, &rel)?;
            } else if ft.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(meta.len());
                let f = std::fs::File::open(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                b.append_data(&mut h, &rel, f)
                    .with_context(|| format!("packing {}", path.display()))?;
            }
        }
        Ok(())
    }
    let mut b = tar::Builder::new(Vec::new());
    walk(&mut b, dir, Path::new(""))?;
    Ok(b.into_inner()?)
}

async fn upload_charm(c: &Client, dir: &Path) -> Result<CharmUploaded> {
    let bytes = pack_charm(dir)?;
    let up: CharmUploaded = c
        .post_bytes("/api/v1/charms", bytes)
        .await
        .with_context(|| format!("uploading charm {}", dir.display()))?;
    Ok(up)
}

fn is_bundle(arg: &str) -> bool {
    (arg.ends_with(".yaml") || arg.ends_with(".yml")) && Path::new(arg).is_file()
}

/// `kumo deploy`'s argument as a charm directory.
fn charm_dir_of(arg: &str) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.is_dir() {
        if !p.join("metadata.yaml").is_file() {
            bail!("{arg} is not a charm: it has no metadata.yaml");
        }
        return Ok(p.to_owned());
    }
    if arg.contains('/') {
        bail!("{arg}: no such charm directory or bundle file");
    }
    find_charm(arg.strip_prefix("ch:").unwrap_or(arg), &[])
}

async fn deploy(c: &Client, format: Format, model: &str, a: DeployArgs) -> Result<()> {
    if is_bundle(&a.charm) {
        if a.application.is_some()
            || !a.to.is_empty()
            || !a.config.is_empty()
            || a.num_units.is_some()
            || a.constraints.is_some()
        {
            bail!("a bundle says where everything goes: give no APP, --to, --config, -n or --constraints with it");
        }
        return deploy_bundle(c, format, model, Path::new(&a.charm), a.dry_run).await;
    }
    let dir = charm_dir_of(&a.charm)?;
    let charm = kumo_charm::Charm::load_dir(&dir)?;
    let app = a
        .application
        .clone()
        .unwrap_or_else(|| charm.metadata.name.clone());
    let mut config = BTreeMap::new();
    for cf in &a.config {
        let p = Path::new(cf);
        if p.is_file() || cf.ends_with(".yaml") || cf.ends_with(".yml") {
            config.extend(config_file(p, &app)?);
        } else if let Some((k, v)) = cf.split_once('=') {
            config.insert(k.to_owned(), v.to_owned());
        } else {
            bail!("--config {cf:?}: expected a YAML file or key=value");
        }
    }
    let num_units = a.num_units.unwrap_or(1);
    if a.dry_run {
        use sha2::Digest;
        let sha = hex(&sha2::Sha256::digest(pack_charm(&dir)?));
        println!(
            "would upload charm {} ({}) and deploy it as {app} in model {model} with {num_units} unit(s)",
            charm.metadata.name,
            &sha[..12]
        );
        return Ok(());
    }
    let up = upload_charm(c, &dir).await?;
    let units: Vec<String> = c
        .post(
            &format!("/api/v1/models/{}/applications", enc(model)),
            &Deploy {
                charm: up.sha256.clone(),
                application: Some(app.clone()),
                config,
                num_units,
                to: a.to,
                constraints: a.constraints,
            },
        )
        .await?;
    if format != Format::Table {
        return emit(
            format,
            &serde_json::json!({"application": app, "charm": up.name, "sha256": up.sha256, "units": units}),
            |_| unreachable!(),
        );
    }
    println!(
        "deployed {app} (charm {}, {}) in model {model} {}",
        up.name,
        &up.sha256[..12.min(up.sha256.len())],
        if units.is_empty() {
            "with no units".to_string()
        } else {
            format!("with units {}", units.join(", "))
        }
    );
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Settings for `app` from a `--config` file: Juju's `APP:` form or flat.
fn config_file(path: &Path, app: &str) -> Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let serde_yaml::Value::Mapping(top) = v else {
        bail!(
            "{}: expected a mapping (`{app}:` with options below it, or `key: value`)",
            path.display()
        );
    };
    let settings = match top.get(app) {
        Some(serde_yaml::Value::Mapping(m)) => m.clone(),
        _ if top.values().all(|v| !v.is_mapping()) => top,
        _ => bail!(
            "{}: no settings for {app} (expected `{app}:` with options below it, or flat `key: value`)",
            path.display()
        ),
    };
    let mut out = BTreeMap::new();
    for (k, v) in settings {
        let Some(k) = k.as_str() else {
            bail!("{}: option names are strings", path.display());
        };
        let v = match v {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Bool(b) => b.to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Null => continue,
            _ => bail!("{}: option {k}: expected a plain value", path.display()),
        };
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

/// Reads a bundle, uploads the charms it names and makes the request.
async fn bundle_request(c: &Client, file: &Path, dry_run: bool) -> Result<BundleRequest> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.display().to_string();
    let bundle = kumo_charm::Bundle::parse(&name, &text)?;
    let base = file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut charms = BTreeMap::new();
    // Charms written as paths, by application: the path and the charm's name.
    let mut paths = BTreeMap::new();
    for (app, a) in &bundle.applications {
        let written = a.charm.as_str();
        let is_path =
            written.starts_with("./") || written.starts_with("../") || written.starts_with('/');
        let dir = if is_path {
            base.join(written)
        } else if charms.contains_key(written) {
            continue;
        } else {
            let plain = written.strip_prefix("ch:").unwrap_or(written);
            find_charm(plain, &[base.clone(), base.join("../charms")])
                .with_context(|| format!("{name}: application {app}"))?
        };
        if !dir.join("metadata.yaml").is_file() {
            bail!(
                "{name}: application {app}: {} is not a charm directory",
                dir.display()
            );
        }
        let up = upload_charm(c, &dir).await?;
        if is_path {
            paths.insert(app.clone(), (written.to_owned(), up.name.clone()));
            if let Some(other) = charms.get(&up.name).filter(|s| **s != up.sha256) {
                bail!(
                    "{name}: application {app}: {} is charm {}, and so is another directory the                      bundle names ({other:.12}); give them different names",
                    dir.display(),
                    up.name
                );
            }
            charms.insert(up.name, up.sha256);
        } else {
            charms.insert(a.charm.clone(), up.sha256);
        }
    }
    // The model knows a charm by its name, not by where it was read from:
    // a path becomes the charm's name, so deploying again plans nothing.
    let text = match name_path_charms(&text, &bundle, &paths) {
        Some(t) => t,
        None => {
            for (written, charm) in paths.values() {
                charms.insert(written.clone(), charms[charm].clone());
            }
            text
        }
    };
    Ok(BundleRequest {
        file: name,
        text,
        charms,
        dry_run,
    })
}

/// `text` with each application's `charm: ./path` replaced by the charm's
/// name on the same line (so errors keep their line numbers); `None` if a
/// value is not where the bundle's spans say.
fn name_path_charms(
    text: &str,
    bundle: &kumo_charm::Bundle,
    paths: &BTreeMap<String, (String, String)>,
) -> Option<String> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_owned).collect();
    for (app, (written, charm)) in paths {
        let at = bundle.spans.locate(&format!("applications.{app}.charm"));
        let line = lines.get_mut(at.line.checked_sub(1)?)?;
        let start: usize = line
            .chars()
            .take(at.column.checked_sub(1)?)
            .map(char::len_utf8)
            .sum();
        let rest = line.get(start..)?;
        let colon = start + rest.find(':')? + 1;
        let value = line[colon..].trim_start();
        let from = line.len() - value.len();
        let len = [
            written.clone(),
            format!("'{written}'"),
            format!("\"{written}\""),
        ]
        .into_iter()
        .find(|w| value.starts_with(w.as_str()))?
        .len();
        line.replace_range(from..from + len, charm);
    }
    Some(lines.concat())
}

async fn deploy_bundle(
    c: &Client,
    format: Format,
    model: &str,
    file: &Path,
    dry_run: bool,
) -> Result<()> {
    let req = bundle_request(c, file, dry_run).await?;
    let plan: BundlePlan = c
        .post(&format!("/api/v1/models/{}/bundle", enc(model)), &req)
        .await?;
    if format != Format::Table {
        return emit(format, &plan, |_| unreachable!());
    }
    if plan.steps.is_empty() {
        println!("nothing to do: the model matches the bundle");
        return Ok(());
    }
    println!("{} in model {model}:", req.file);
    for (i, s) in plan.steps.iter().enumerate() {
        println!("{:>3}. {s}", i + 1);
    }
    if plan.applied {
        println!("applied {} step(s)", plan.steps.len());
    } else {
        println!("dry run: nothing was changed");
    }
    Ok(())
}

// ---- config ---------------------------------------------------------------------

fn show_value(v: &Option<Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

async fn config(
    c: &Client,
    format: Format,
    model: &str,
    app: &str,
    settings: Vec<String>,
    reset: Vec<String>,
) -> Result<()> {
    let path = format!(
        "/api/v1/models/{}/applications/{}/config",
        enc(model),
        enc(app)
    );
    let assigning = settings.iter().any(|s| s.contains('='));
    if !assigning && reset.is_empty() {
        let cfg: BTreeMap<String, ConfigEntry> = c.get(&path).await?;
        if let [key] = settings.as_slice() {
            let Some(e) = cfg.get(key) else {
                bail!(
                    "{app} has no option {key:?}; options: {}",
                    cfg.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            return match format {
                Format::Table => {
                    println!("{}", show_value(&e.value));
                    Ok(())
                }
                _ => emit(format, e, |_| unreachable!()),
            };
        }
        if !settings.is_empty() {
            bail!("give one option to show, or key=value settings");
        }
        return emit(format, &cfg, |cfg| {
            table(
                &["KEY", "VALUE", "DEFAULT", "TYPE", "SOURCE", "DESCRIPTION"],
                cfg.iter()
                    .map(|(k, e)| {
                        vec![
                            k.clone(),
                            show_value(&e.value),
                            show_value(&e.default),
                            e.kind.clone(),
                            e.source.clone(),
                            e.description.trim().replace('\n', " "),
                        ]
                    })
                    .collect(),
            )
        });
    }
    let mut set = BTreeMap::new();
    for s in &settings {
        let Some((k, v)) = s.split_once('=') else {
            bail!("{s:?}: expected key=value");
        };
        set.insert(k.to_owned(), v.to_owned());
    }
    let _: Value = c
        .patch(
            &path,
            &SetConfig {
                set: set.clone(),
                reset: reset.clone(),
            },
        )
        .await?;
    let mut done: Vec<String> = set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    done.extend(reset.iter().map(|k| format!("{k} reset")));
    println!("{app}: {}", done.join(", "));
    Ok(())
}

// ---- status ---------------------------------------------------------------------

/// Sorts `web/10` after `web/9` and `0/lxd/10` after `0/lxd/9`.
fn natural(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut digits = String::new();
    let mut text = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            if !text.is_empty() {
                out.push((u64::MAX, std::mem::take(&mut text)));
            }
            digits.push(ch);
        } else {
            if !digits.is_empty() {
                out.push((digits.parse().unwrap_or(u64::MAX), String::new()));
                digits.clear();
            }
            text.push(ch);
        }
    }
    if !digits.is_empty() {
        out.push((digits.parse().unwrap_or(u64::MAX), String::new()));
    }
    if !text.is_empty() {
        out.push((u64::MAX, text));
    }
    out
}

fn print_status(format: Format, s: &Status) -> Result<()> {
    match format {
        Format::Table => println!("{}", status_text(s)),
        _ => emit(format, s, |_| unreachable!())?,
    }
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `kumo status` as text: Juju's sections, the empty ones left out.
pub fn status_text(s: &Status) -> String {
    let mut out = table(
        &["Model", "Provider"],
        vec![vec![s.model.name.clone(), s.model.provider.clone()]],
    )
    .to_string();
    if !s.applications.is_empty() {
        let rows = s
            .applications
            .iter()
            .map(|(n, a)| {
                vec![
                    n.clone(),
                    a.charm.clone(),
                    a.status.clone(),
                    a.units.to_string(),
                    if a.exposed { "yes" } else { "no" }.into(),
                    a.message.clone(),
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(
            &table(
                &["App", "Charm", "Status", "Units", "Exposed", "Message"],
                rows,
            )
            .to_string(),
        );
    }
    if !s.units.is_empty() {
        let mut units: Vec<_> = s.units.iter().collect();
        units.sort_by_key(|(n, _)| natural(n));
        let rows = units
            .into_iter()
            .map(|(n, u)| {
                let mut message = if u.message.is_empty() {
                    u.agent_message.clone()
                } else {
                    u.message.clone()
                };
                if u.life == "dying" && message.is_empty() {
                    message = "dying".into();
                }
                vec![
                    if u.leader { format!("{n}*") } else { n.clone() },
                    u.workload.clone(),
                    u.agent.clone(),
                    u.machine.clone(),
                    u.address.clone().unwrap_or_default(),
                    u.ports.join(","),
                    message,
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(
            &table(
                &[
                    "Unit", "Workload", "Agent", "Machine", "Address", "Ports", "Message",
                ],
                rows,
            )
            .to_string(),
        );
    }
    if !s.machines.is_empty() {
        let mut machines: Vec<_> = s.machines.iter().collect();
        machines.sort_by_key(|(n, _)| natural(n));
        let rows = machines
            .into_iter()
            .map(|(id, m)| {
                vec![
                    id.clone(),
                    m.state.clone(),
                    m.agent.clone(),
                    m.address.clone().unwrap_or_default(),
                    dash(m.instance.as_deref().unwrap_or("")),
                    m.message.clone(),
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(
            &table(
                &[
                    "Machine", "State", "Agent", "Address", "Instance", "Message",
                ],
                rows,
            )
            .to_string(),
        );
    }
    if !s.relations.is_empty() {
        let rows = s
            .relations
            .iter()
            .map(|r| {
                let provider = r.ends.first().cloned().unwrap_or_default();
                let (requirer, kind) = match r.ends.get(1) {
                    Some(b) => (b.clone(), "regular"),
                    None => (provider.clone(), "peer"),
                };
                vec![provider, requirer, r.interface.clone(), kind.into()]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(
            &table(
                &["Relation provider", "Requirer", "Interface", "Type"],
                rows,
            )
            .to_string(),
        );
    }
    out
}

// ---- logs -----------------------------------------------------------------------

fn level_rank(l: &str) -> u8 {
    match l.to_ascii_uppercase().as_str() {
        "TRACE" | "DEBUG" => 0,
        "INFO" => 1,
        "WARNING" | "WARN" => 2,
        _ => 3,
    }
}

/// Whether a log line's entity is one `--include` names: `web/0` is
/// `unit-web-0`, `web` its units and the application itself, `0` is
/// `machine-0`; `unit-…`, `machine-…` and `model` as they are.
pub fn included(entity: &str, include: &[String]) -> bool {
    include.is_empty()
        || include.iter().any(|i| {
            if i.starts_with("unit-") || i.starts_with("machine-") || i == "model" {
                return entity == i;
            }
            if i.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                return entity == format!("machine-{}", i.replace('/', "-"));
            }
            if i.contains('/') {
                return entity == format!("unit-{}", i.replace('/', "-"));
            }
            entity == i
                || entity
                    .strip_prefix("unit-")
                    .and_then(|r| r.strip_prefix(i.as_str()))
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
}

async fn debug_log(
    c: &Client,
    model: &str,
    include: Vec<String>,
    level: Option<String>,
    lines: u32,
    no_tail: bool,
) -> Result<()> {
    let min = match level.as_deref() {
        None => 0,
        Some(l)
            if ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&l.to_ascii_uppercase().as_str()) =>
        {
            level_rank(l)
        }
        Some(l) => bail!("unknown level {l:?}: DEBUG, INFO, WARNING or ERROR"),
    };
    let path = format!("/api/v1/models/{}/logs", enc(model));
    let mut after = -i64::from(lines);
    let print = |es: &[LogEntry]| {
        for e in es {
            if level_rank(&e.level) >= min && included(&e.entity, &include) {
                let t = time(e.at);
                println!(
                    "{} {} {} {}",
                    &t[11..],
                    e.level.to_ascii_uppercase(),
                    e.entity,
                    e.message
                );
            }
        }
    };
    if lines == 0 {
        // Nothing from before: start at the newest line.
        let last: Vec<LogEntry> = c.get(&format!("{path}?after=-1&limit=1")).await?;
        after = last.last().map_or(0, |e| e.id);
    } else {
        let es: Vec<LogEntry> = c
            .get(&format!("{path}?after={after}&limit={lines}"))
            .await?;
        print(&es);
        after = es.last().map_or(0, |e| e.id);
        if es.is_empty() {
            after = 0;
        }
    }
    if no_tail {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let es: Vec<LogEntry> = c.get(&format!("{path}?after={after}")).await?;
        print(&es);
        if let Some(e) = es.last() {
            after = e.id;
        }
    }
}

// ---- actions, exec, ssh ---------------------------------------------------------------

fn finished(status: &str) -> bool {
    !matches!(status, "pending" | "running")
}

pub(crate) async fn wait_action(
    c: &Client,
    model: &str,
    id: u64,
    deadline: Option<tokio::time::Instant>,
) -> Result<ActionInfo> {
    loop {
        let info: ActionInfo = c
            .get(&format!("/api/v1/models/{}/actions/{id}", enc(model)))
            .await?;
        if finished(&info.status) {
            return Ok(info);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            bail!("action {id} on {} is still {}", info.unit, info.status);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn exec(
    c: &Client,
    model: &str,
    units: Vec<String>,
    applications: Vec<String>,
    timeout: u64,
    command: Vec<String>,
) -> Result<()> {
    let mut targets = units;
    targets.extend(applications);
    if targets.is_empty() {
        bail!("name where to run it: --unit U or --application A");
    }
    let ids: Vec<u64> = c
        .post(
            &format!("/api/v1/models/{}/exec", enc(model)),
            &Exec {
                command: command.join(" "),
                targets,
            },
        )
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut failed = Vec::new();
    for id in &ids {
        let info = wait_action(c, model, *id, Some(deadline)).await?;
        if ids.len() == 1 {
            // One unit: its output as it is, for pipes (as `juju exec`).
            print!("{}", info.stdout);
            eprint!("{}", info.stderr);
        } else {
            for l in info.stdout.lines() {
                println!("{}: {l}", info.unit);
            }
            for l in info.stderr.lines() {
                eprintln!("{}: {l}", info.unit);
            }
        }
        if info.status != "completed" {
            let why = if info.message.is_empty() {
                info.status.clone()
            } else {
                info.message.clone()
            };
            eprintln!("{}: {why}", info.unit);
            failed.push(info.unit);
        }
    }
    if !failed.is_empty() {
        bail!(
            "the command failed on {} of {} unit(s): {}",
            failed.len(),
            ids.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

async fn ssh(
    c: &Client,
    model: &str,
    target: &str,
    key: Option<PathBuf>,
    command: Vec<String>,
) -> Result<()> {
    let path = target.split('/').map(enc).collect::<Vec<_>>().join("/");
    let r: Value = c
        .get(&format!("/api/v1/models/{}/address/{path}", enc(model)))
        .await?;
    let Some(addr) = r["address"].as_str() else {
        bail!("the controller gave no address for {target}");
    };
    let key = key.or_else(|| {
        let lab = crate::config::default_data_dir().join("lab/id_ed25519");
        lab.is_file().then_some(lab)
    });
    let mut cmd = std::process::Command::new("ssh");
    cmd.args(["-o", "StrictHostKeyChecking=accept-new"]);
    if let Some(k) = &key {
        cmd.arg("-i").arg(k);
    }
    cmd.arg(format!("root@{addr}"));
    cmd.args(&command);
    use std::os::unix::process::CommandExt;
    let e = cmd.exec();
    Err(e).context("running ssh")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_matches_units_apps_and_machines() {
        let inc = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(included("unit-web-0", &inc(&["web/0"])));
        assert!(!included("unit-web-1", &inc(&["web/0"])));
        assert!(included("unit-web-12", &inc(&["web"])));
        assert!(included("web", &inc(&["web"])));
        assert!(!included("unit-webby-0", &inc(&["web"])));
        assert!(!included("unit-web-db-0", &inc(&["web"])));
        assert!(included("machine-0", &inc(&["0"])));
        assert!(included("machine-0-lxd-1", &inc(&["machine-0-lxd-1"])));
        assert!(included("model", &inc(&[])));
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["web/10", "web/9", "db/0", "0/lxd/10", "0/lxd/9", "10", "2"];
        v.sort_by_key(|s| natural(s));
        assert_eq!(
            v,
            ["0/lxd/9", "0/lxd/10", "2", "10", "db/0", "web/9", "web/10"]
        );
    }

    #[test]
    fn packing_follows_links_to_shared_files() {
        let d = tempfile::tempdir().unwrap();
        let charm = d.path().join("c");
        std::fs::create_dir_all(charm.join("hooks")).unwrap();
        std::fs::write(charm.join("metadata.yaml"), "name: c\n").unwrap();
        std::fs::write(d.path().join("lib.sh"), "shared\n").unwrap();
        std::os::unix::fs::symlink("../../lib.sh", charm.join("hooks/lib.sh")).unwrap();
        let packed = pack_charm(&charm).unwrap();
        let mut ar = tar::Archive::new(packed.as_slice());
        let lib = ar
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("hooks/lib.sh"))
            .map(|mut e| {
                assert_eq!(e.header().entry_type(), tar::EntryType::Regular);
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).unwrap();
                s
            });
        assert_eq!(lib.as_deref(), Some("shared\n"));
        std::os::unix::fs::symlink("../nowhere", charm.join("hooks/gone")).unwrap();
        let err = pack_charm(&charm).unwrap_err().to_string();
        assert!(err.contains("hooks/gone"), "{err}");
    }

    #[test]
    fn packing_is_deterministic() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("metadata.yaml"), "name: x\n").unwrap();
        std::fs::create_dir(d.path().join("hooks")).unwrap();
        std::fs::write(d.path().join("hooks/install"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d.path().join("hooks/install"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let a = pack_charm(d.path()).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        std::fs::write(d.path().join("metadata.yaml"), "name: x\n").unwrap();
        assert_eq!(a, pack_charm(d.path()).unwrap());
        let mut ar = tar::Archive::new(a.as_slice());
        let entries: Vec<(String, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("hooks".to_string(), entries[0].1),
                ("hooks/install".to_string(), 0o755),
                ("metadata.yaml".to_string(), entries[2].1)
            ]
        );
    }

    #[test]
    fn config_files_juju_form_and_flat() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("c.yaml");
        std::fs::write(&f, "web:\n  port: 81\n  name: x\n  debug: true\n").unwrap();
        let c = config_file(&f, "web").unwrap();
        assert_eq!(c["port"], "81");
        assert_eq!(c["debug"], "true");
        std::fs::write(&f, "port: 82\n").unwrap();
        assert_eq!(config_file(&f, "web").unwrap()["port"], "82");
        std::fs::write(&f, "db:\n  port: 82\n").unwrap();
        assert!(config_file(&f, "web").is_err());
    }

    #[test]
    fn path_charms_become_names_in_place() {
        let text = "applications:\n  a:\n    charm: ./x/web # here\n  b: {charm: '../y/db', num_units: 1}\n";
        let b = kumo_charm::Bundle::parse("b.yaml", text).unwrap();
        let paths = BTreeMap::from([
            ("a".to_string(), ("./x/web".to_string(), "web".to_string())),
            ("b".to_string(), ("../y/db".to_string(), "db".to_string())),
        ]);
        assert_eq!(
            name_path_charms(text, &b, &paths).unwrap(),
            "applications:\n  a:\n    charm: web # here\n  b: {charm: db, num_units: 1}\n"
        );
    }

    #[test]
    fn action_params_read_as_yaml() {
        assert_eq!(param_value("3"), serde_json::json!(3));
        assert_eq!(param_value("true"), serde_json::json!(true));
        assert_eq!(param_value("abc"), serde_json::json!("abc"));
        assert_eq!(param_value(""), serde_json::json!(""));
    }
}
