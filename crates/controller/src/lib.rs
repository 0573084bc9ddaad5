//! The orchestration controller: Juju's job, in the region process.
//!
//! Models (applications, units, machines, relations, actions) live in
//! memory and in the store as documents; every change is written before
//! it becomes visible (`commit_model`), so a restarted controller resumes
//! from the store. Machine agents long-poll their machine's `MachineView`
//! and answer each hook with a `HookCommit`; the uniter's state lives
//! here, changed only by commits. The provisioner makes pending machines
//! through a `Provider` and is idempotent: it resumes after a restart.

pub mod docs;
mod error;
pub mod model;
pub mod provider;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kumo_charm::Charm;
use kumo_model::orchestra as api;
use kumo_region::{Clock, Entropy};
use kumo_store::{ModelWrite, Store};
use kumo_uniter::{CommitAck, HookCommit, Level, MachineView};
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex, Notify};

pub use docs::ProviderKind;
pub use error::{ControllerError, Result};
pub use model::{Charms, Model, Placement};
pub use provider::{AgentConfig, HostRef, MetalBackend, MetalMachine, Provider, ProvisionRequest};

use docs::*;
use error::{invalid, not_found};

pub struct ControllerConfig {
    /// Charm archives and their unpacked trees (`<dir>/charms/`).
    pub data_dir: PathBuf,
    /// Seconds between update-status hooks.
    pub update_status_interval: u64,
    /// How long an agent's poll waits for a change.
    pub poll_timeout: Duration,
}

impl ControllerConfig {
    pub fn new(data_dir: PathBuf) -> ControllerConfig {
        ControllerConfig {
            data_dir,
            update_status_interval: 300,
            poll_timeout: Duration::from_secs(50),
        }
    }
}

const BOOTSTRAP_MODEL: &str = "";

/// The controller service. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    config: ControllerConfig,
    models: Mutex<BTreeMap<String, Model>>,
    charms: RwLock<BTreeMap<String, Charm>>,
    bootstrap: RwLock<Option<api::Bootstrap>>,
    changed: watch::Sender<u64>,
    provider: Arc<dyn Provider>,
    /// The region's machines, for `metal` models; set by the region
    /// process (`set_metal_backend`).
    metal: std::sync::OnceLock<Arc<dyn MetalBackend>>,
    provision: Notify,
    secrets: kumo_region::SecretBox,
    /// Failed machines: (attempts, next try in ms). In memory only: a
    /// restarted controller retries at once.
    retries: std::sync::Mutex<BTreeMap<(String, String), (u32, i64)>>,
}

struct CharmMap<'a>(std::sync::RwLockReadGuard<'a, BTreeMap<String, Charm>>);

impl Charms for CharmMap<'_> {
    fn get(&self, sha256: &str) -> Option<&Charm> {
        self.0.get(sha256)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Controller {
    /// Loads every model and charm the store and data directory hold.
    pub async fn open(
        store: Store,
        config: ControllerConfig,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        provider: Arc<dyn Provider>,
        secrets: kumo_region::SecretBox,
    ) -> Result<Controller> {
        let charms_dir = config.data_dir.join("charms");
        std::fs::create_dir_all(&charms_dir).map_err(|source| ControllerError::Io {
            path: charms_dir.clone(),
            source,
        })?;
        let mut charms = BTreeMap::new();
        for entry in std::fs::read_dir(&charms_dir).map_err(|source| ControllerError::Io {
            path: charms_dir.clone(),
            source,
        })? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            if path.is_dir() {
                match Charm::load_dir(&path) {
                    Ok(c) => {
                        let sha = entry.file_name().to_string_lossy().into_owned();
                        charms.insert(sha, c);
                    }
                    Err(e) => tracing::warn!("skipping stored charm {}: {e}", path.display()),
                }
            }
        }
        let (bootstrap, models) = models_from_docs(&store.model_docs().await?)?;
        let (changed, _) = watch::channel(0);
        Ok(Controller {
            inner: Arc::new(Inner {
                store,
                clock,
                entropy,
                config,
                models: Mutex::new(models),
                charms: RwLock::new(charms),
                bootstrap: RwLock::new(bootstrap),
                changed,
                provider,
                metal: std::sync::OnceLock::new(),
                provision: Notify::new(),
                secrets,
                retries: std::sync::Mutex::new(BTreeMap::new()),
            }),
        })
    }

    fn now(&self) -> i64 {
        self.inner.clock.now()
    }

    /// Gives `metal` models the region's machines. Once; later calls are
    /// ignored.
    pub fn set_metal_backend(&self, backend: Arc<dyn MetalBackend>) {
        let _ = self.inner.metal.set(backend);
    }

    fn charms(&self) -> CharmMap<'_> {
        CharmMap(self.inner.charms.read().expect("charms lock"))
    }

    /// Writes what a change touched, then wakes agents' polls. On a failed
    /// write the model is reloaded from the store, so memory never holds
    /// what the store does not.
    async fn commit_model(&self, m: &mut Model) -> Result<()> {
        let dirty = std::mem::take(&mut m.dirty);
        if dirty.is_empty() {
            return Ok(());
        }
        let name = m.doc.name.clone();
        let mut w = ModelWrite::default();
        if dirty.model {
            w.docs.push((
                "model".into(),
                String::new(),
                Some(serde_json::to_string(&m.doc).expect("doc")),
            ));
        }
        fn doc<T: serde::Serialize>(x: Option<&T>) -> Option<String> {
            x.map(|x| serde_json::to_string(x).expect("a document serialises"))
        }
        for id in &dirty.machines {
            w.docs
                .push(("machine".into(), id.clone(), doc(m.machines.get(id))));
        }
        for id in &dirty.units {
            w.docs
                .push(("unit".into(), id.clone(), doc(m.units.get(id))));
        }
        for id in &dirty.actions {
            w.docs
                .push(("action".into(), id.to_string(), doc(m.actions.get(id))));
        }
        let now = self.now();
        for (entity, level, message) in &dirty.logs {
            let level = serde_json::to_value(level)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            w.logs.push((entity.clone(), now, level, message.clone()));
        }
        if let Err(e) = self.inner.store.write_model(&name, &w).await {
            tracing::error!("writing model {name}: {e}; reloading it from the store");
            if let Ok(fresh) = self.reload_model(&name).await {
                *m = fresh;
            }
            return Err(e.into());
        }
        self.inner.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    async fn reload_model(&self, name: &str) -> Result<Model> {
        let docs: Vec<_> = self
            .inner
            .store
            .model_docs()
            .await?
            .into_iter()
            .filter(|d| d.model == name)
            .collect();
        models_from_docs(&docs)?
            .1
            .remove(name)
            .ok_or_else(|| not_found("model", name))
    }

    /// Runs `f` on a model and commits what it changed.
    async fn with_model<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Model, &dyn Charms, i64) -> Result<T>,
    ) -> Result<T> {
        let mut models = self.inner.models.lock().await;
        let m = models
            .get_mut(name)
            .ok_or_else(|| not_found("model", name))?;
        let out = {
            let charms = self.charms();
            f(m, &charms, self.now())
        };
        match out {
            Ok(v) => {
                self.commit_model(m).await?;
                Ok(v)
            }
            Err(e) => {
                // A refused request changes nothing: drop partial edits.
                if !m.dirty.is_empty() {
                    let fresh = self.reload_model(name).await?;
                    *m = fresh;
                }
                Err(e)
            }
        }
    }

    async fn read_model<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Model, &dyn Charms, i64) -> Result<T>,
    ) -> Result<T> {
        let models = self.inner.models.lock().await;
        let m = models.get(name).ok_or_else(|| not_found("model", name))?;
        let charms = self.charms();
        f(m, &charms, self.now())
    }

    // ---- controller and models ----------------------------------------------

    pub async fn bootstrap(&self, mut b: api::Bootstrap) -> Result<()> {
        b.controller_id = match self.bootstrap_config() {
            Some(old) if !old.controller_id.is_empty() => old.controller_id,
            _ => {
                let mut raw = [0u8; 3];
                self.inner.entropy.fill(&mut raw);
                raw.iter().map(|x| format!("{x:02x}")).collect()
            }
        };
        provider::parse_range(&b.address_range).map_err(|m| invalid("address_range", m))?;
        if !b.agent_url.starts_with("http://") && !b.agent_url.starts_with("https://") {
            return Err(invalid(
                "agent_url",
                format!("{:?} is not an http(s) URL", b.agent_url),
            ));
        }
        let w = ModelWrite {
            docs: vec![(
                "model".into(),
                String::new(),
                Some(serde_json::to_string(&b).expect("bootstrap")),
            )],
            logs: vec![],
        };
        self.inner.store.write_model(BOOTSTRAP_MODEL, &w).await?;
        *self.inner.bootstrap.write().expect("lock") = Some(b);
        if !self.inner.models.lock().await.contains_key("default") {
            self.add_model("default", None, None).await?;
        }
        Ok(())
    }

    pub fn bootstrap_config(&self) -> Option<api::Bootstrap> {
        self.inner.bootstrap.read().expect("lock").clone()
    }

    /// `owner` is the user adding it: a metal model's machines are
    /// allocated to them.
    pub async fn add_model(
        &self,
        name: &str,
        provider: Option<&str>,
        owner: Option<&str>,
    ) -> Result<api::ModelInfo> {
        if !kumo_charm::valid_name(name) {
            return Err(invalid(
                "name",
                format!("invalid model name {name:?}: lowercase letters, digits and hyphens"),
            ));
        }
        if self.bootstrap_config().is_none() {
            return Err(ControllerError::NotBootstrapped);
        }
        let provider = match provider.unwrap_or("containers") {
            "containers" => ProviderKind::Containers,
            "manual" => ProviderKind::Manual,
            "metal" => ProviderKind::Metal,
            other => {
                return Err(invalid(
                    "provider",
                    format!("unknown provider {other:?}: expected containers, manual or metal"),
                ))
            }
        };
        if provider == ProviderKind::Metal {
            if self.inner.metal.get().is_none() {
                return Err(invalid(
                    "provider",
                    "the metal provider needs the region's machines; this controller has none",
                ));
            }
            if owner.is_none() {
                return Err(invalid(
                    "provider",
                    "a metal model needs an owner to allocate machines to",
                ));
            }
        }
        let mut models = self.inner.models.lock().await;
        if models.contains_key(name) {
            return Err(ControllerError::AlreadyExists {
                what: "model",
                name: name.into(),
            });
        }
        let mut doc = ModelDoc::new(name, provider, self.now());
        doc.owner = owner.map(str::to_string);
        let mut m = Model::new(doc);
        m.log("model", Level::Info, format!("model {name} added"));
        self.commit_model(&mut m).await?;
        let info = info(&m);
        models.insert(name.to_string(), m);
        Ok(info)
    }

    pub async fn models(&self) -> Vec<api::ModelInfo> {
        self.inner.models.lock().await.values().map(info).collect()
    }

    /// Destroys a model's machines through the provider, then forgets it.
    pub async fn destroy_model(&self, name: &str) -> Result<()> {
        let machines: Vec<(MachineDoc, HostOf)> = self
            .read_model(name, |m, _, _| {
                Ok(m.machines
                    .values()
                    .map(|x| (x.clone(), host_of(m, &x.id)))
                    .collect())
            })
            .await?;
        let (kind, owner) = self
            .read_model(name, |m, _, _| {
                Ok((m.doc.provider, m.doc.owner.clone().unwrap_or_default()))
            })
            .await?;
        // In parallel (a machine takes seconds to power off), containers
        // before the machines that host them.
        let (nested, hosts): (Vec<_>, Vec<_>) =
            machines.into_iter().partition(|(m, _)| m.id.contains('/'));
        for wave in [nested, hosts] {
            let mut tasks = tokio::task::JoinSet::new();
            for (mach, host) in wave {
                let Some(instance) = mach.instance.clone() else {
                    continue;
                };
                let provider = self.inner.provider.clone();
                let metal = self.inner.metal.get().cloned();
                let owner = owner.clone();
                tasks.spawn(async move {
                    destroy_instance(provider, metal, kind, &owner, &instance, host)
                        .await
                        .map_err(|e| {
                            ControllerError::Provider(format!(
                                "destroying machine {} ({instance}): {e}",
                                mach.id
                            ))
                        })
                });
            }
            let mut first_error = None;
            while let Some(done) = tasks.join_next().await {
                let result = done.unwrap_or_else(|e| {
                    Err(ControllerError::Provider(format!(
                        "destroying a machine: {e}"
                    )))
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        self.inner.store.delete_model(name).await?;
        self.inner.models.lock().await.remove(name);
        self.inner.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    // ---- charms ---------------------------------------------------------------

    /// Stores a charm archive (a tar of the charm directory) by SHA-256
    /// and checks it is a charm before anything can deploy it.
    pub fn upload_charm(&self, archive: &[u8]) -> Result<api::CharmUploaded> {
        let sha = sha256_hex(archive);
        if let Some(c) = self.inner.charms.read().expect("lock").get(&sha) {
            return Ok(api::CharmUploaded {
                name: c.metadata.name.clone(),
                sha256: sha,
            });
        }
        let dir = self.inner.config.data_dir.join("charms");
        let tmp = dir.join(format!(".{sha}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ControllerError::Io { path, source }
        };
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let unpacked = tar::Archive::new(archive).unpack(&tmp);
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(invalid(
                "charm",
                format!("not a tar archive of a charm: {e}"),
            ));
        }
        let charm = match Charm::load_dir(&tmp) {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(ControllerError::Charm(e));
            }
        };
        std::fs::write(dir.join(format!("{sha}.tar")), archive).map_err(io(&dir))?;
        let final_dir = dir.join(&sha);
        let _ = std::fs::remove_dir_all(&final_dir);
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        let charm = Charm {
            dir: final_dir,
            ..charm
        };
        let name = charm.metadata.name.clone();
        self.inner
            .charms
            .write()
            .expect("lock")
            .insert(sha.clone(), charm);
        Ok(api::CharmUploaded { name, sha256: sha })
    }

    pub fn charm_archive(&self, sha: &str) -> Result<PathBuf> {
        if !sha.chars().all(|c| c.is_ascii_hexdigit()) || sha.len() != 64 {
            return Err(not_found("charm", sha));
        }
        let path = self
            .inner
            .config
            .data_dir
            .join("charms")
            .join(format!("{sha}.tar"));
        if !path.exists() {
            return Err(not_found("charm", sha));
        }
        Ok(path)
    }

    // ---- machines and applications --------------------------------------------

    fn new_token(&self) -> (String, String) {
        let mut raw = [0u8; 32];
        self.inner.entropy.fill(&mut raw);
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let hash = sha256_hex(token.as_bytes());
        (token, hash)
    }

    fn add_machine_in(
        &self,
        m: &mut Model,
        placement: Option<&str>,
        constraints: Option<String>,
    ) -> Result<String> {
        let (_, hash) = self.new_token();
        if m.doc.provider == ProviderKind::Metal {
            if let Some(p) = placement.filter(|p| p.starts_with("ssh:")) {
                return Err(metal_placement(&m.doc.name, p));
            }
        }
        match placement {
            None => m.add_machine(None, None, constraints, hash),
            Some(p) if p.starts_with("lxd:") => {
                let host = &p[4..];
                m.add_machine(Some(host), None, constraints, hash)
            }
            Some(p) if p.starts_with("ssh:") => {
                if m.doc.provider != ProviderKind::Manual && !p.contains('@') {
                    return Err(invalid("placement", format!("{p}: expected ssh:user@host")));
                }
                m.add_machine(None, Some(p.to_string()), constraints, hash)
            }
            Some(p) => Err(invalid(
                "placement",
                format!("unknown placement {p:?}: expected lxd:N or ssh:user@host"),
            )),
        }
    }

    pub async fn add_machines(&self, model: &str, req: &api::AddMachines) -> Result<Vec<String>> {
        if req.count == 0 || req.count > 100 {
            return Err(invalid("count", "between 1 and 100"));
        }
        let ids = self
            .with_model(model, |m, _, _| {
                (0..req.count)
                    .map(|_| {
                        self.add_machine_in(m, req.placement.as_deref(), req.constraints.clone())
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        self.inner.provision.notify_one();
        Ok(ids)
    }

    /// `remove-machine`: a machine that hosts no unit and no container is
    /// given back to its provider (a metal machine is released to the
    /// region) and forgotten.
    pub async fn remove_machine(&self, model: &str, id: &str) -> Result<()> {
        let (kind, owner, instance, host) = self
            .with_model(model, |m, _, _| {
                if !m.machines.contains_key(id) {
                    return Err(not_found("machine", id));
                }
                if let Some(u) = m.units.values().find(|u| u.machine == id) {
                    return Err(ControllerError::Conflict(format!(
                        "machine {id} hosts unit {}; remove it first",
                        u.name
                    )));
                }
                let nested = format!("{id}/");
                if let Some(c) = m.machines.keys().find(|k| k.starts_with(&nested)) {
                    return Err(ControllerError::Conflict(format!(
                        "machine {id} hosts container {c}; remove it first"
                    )));
                }
                let x = m.machines.get_mut(id).expect("checked");
                // Dying: the provisioner leaves it alone from now on.
                x.state = MachineState::Dying;
                let instance = x.instance.clone();
                m.dirty.machines.insert(id.to_string());
                m.log(
                    &machine_entity(id),
                    Level::Info,
                    format!("removing machine {id}"),
                );
                Ok((
                    m.doc.provider,
                    m.doc.owner.clone().unwrap_or_default(),
                    instance,
                    host_of(m, id),
                ))
            })
            .await?;
        if let Some(instance) = instance {
            destroy_instance(
                self.inner.provider.clone(),
                self.inner.metal.get().cloned(),
                kind,
                &owner,
                &instance,
                host,
            )
            .await
            .map_err(|e| {
                ControllerError::Provider(format!("removing machine {id} ({instance}): {e}"))
            })?;
        }
        self.with_model(model, |m, _, _| {
            m.machines.remove(id);
            m.dirty.machines.insert(id.to_string());
            m.log(
                &machine_entity(id),
                Level::Info,
                format!("machine {id} removed"),
            );
            Ok(())
        })
        .await
    }

    /// Places `count` new units of `app`: each on its `to` placement, or a
    /// new machine.
    fn place_units(
        &self,
        m: &mut Model,
        app: &str,
        count: u32,
        to: &[String],
    ) -> Result<Vec<String>> {
        let mut units = Vec::new();
        for i in 0..count as usize {
            let machine = match to.get(i) {
                Some(t) => match m.check_placement(t)? {
                    Placement::Existing(id) => id,
                    Placement::NewContainer(host) => {
                        self.add_machine_in(m, Some(&format!("lxd:{host}")), None)?
                    }
                },
                // A new machine for the unit, chosen by the application's
                // constraints (the metal provider allocates by them).
                None => {
                    let constraints = m
                        .doc
                        .applications
                        .get(app)
                        .and_then(|a| a.constraints.clone());
                    self.add_machine_in(m, None, constraints)?
                }
            };
            units.push(m.add_unit(app, &machine)?);
        }
        Ok(units)
    }

    pub async fn deploy(&self, model: &str, req: &api::Deploy) -> Result<Vec<String>> {
        if req.num_units > 100 {
            return Err(invalid("num_units", "at most 100"));
        }
        let units = self
            .with_model(model, |m, charms, _| {
                let charm = charms
                    .get(&req.charm)
                    .ok_or_else(|| not_found("charm", &req.charm))?;
                let name = req
                    .application
                    .clone()
                    .unwrap_or_else(|| charm.metadata.name.clone());
                let config = model::typed_config(charm, &req.config)?;
                // Placements are checked before anything is added.
                for t in &req.to {
                    m.check_placement(t)?;
                }
                m.deploy(&name, charm, &req.charm, config, req.constraints.clone())?;
                self.place_units(m, &name, req.num_units, &req.to)
            })
            .await?;
        self.inner.provision.notify_one();
        Ok(units)
    }

    pub async fn add_units(
        &self,
        model: &str,
        app: &str,
        req: &api::AddUnits,
    ) -> Result<Vec<String>> {
        if req.count == 0 || req.count > 100 {
            return Err(invalid("count", "between 1 and 100"));
        }
        let units = self
            .with_model(model, |m, _, _| {
                self.place_units(m, app, req.count, &req.to)
            })
            .await?;
        self.inner.provision.notify_one();
        Ok(units)
    }

    pub async fn remove_unit(&self, model: &str, unit: &str) -> Result<()> {
        self.with_model(model, |m, _, _| m.remove_unit(unit)).await
    }

    pub async fn remove_application(&self, model: &str, app: &str) -> Result<()> {
        self.with_model(model, |m, _, _| m.remove_application(app))
            .await
    }

    pub async fn relate(&self, model: &str, req: &api::Relate) -> Result<u64> {
        self.with_model(model, |m, charms, _| m.relate(charms, &req.a, &req.b))
            .await
    }

    pub async fn remove_relation(&self, model: &str, req: &api::Relate) -> Result<()> {
        self.with_model(model, |m, charms, _| {
            m.remove_relation(charms, &req.a, &req.b)
        })
        .await
    }

    pub async fn set_config(&self, model: &str, app: &str, req: &api::SetConfig) -> Result<()> {
        self.with_model(model, |m, charms, _| {
            m.set_config(charms, app, &req.set, &req.reset)
        })
        .await
    }

    pub async fn config(
        &self,
        model: &str,
        app: &str,
    ) -> Result<BTreeMap<String, api::ConfigEntry>> {
        self.read_model(model, |m, charms, _| m.config_of(charms, app))
            .await
    }

    pub async fn refresh(&self, model: &str, app: &str, sha256: &str) -> Result<()> {
        self.with_model(model, |m, charms, _| {
            let charm = charms
                .get(sha256)
                .ok_or_else(|| not_found("charm", sha256))?;
            m.refresh(app, charm, sha256)
        })
        .await
    }

    pub async fn expose(&self, model: &str, app: &str, exposed: bool) -> Result<()> {
        self.with_model(model, |m, _, _| m.expose(app, exposed))
            .await
    }

    pub async fn resolve(&self, model: &str, unit: &str, retry: bool) -> Result<()> {
        self.with_model(model, |m, _, _| m.resolve_unit(unit, retry))
            .await
    }

    pub async fn run_action(&self, model: &str, unit: &str, req: &api::RunAction) -> Result<u64> {
        if req.name == "exec" {
            return Err(invalid("name", "exec is kumo exec's; name a charm action"));
        }
        self.with_model(model, |m, _, now| {
            m.enqueue_action(unit, &req.name, req.params.clone(), None, now)
        })
        .await
    }

    /// `kumo exec`: one action per target unit (applications expand).
    pub async fn exec(&self, model: &str, req: &api::Exec) -> Result<Vec<u64>> {
        self.with_model(model, |m, _, now| {
            let mut units = Vec::new();
            for t in &req.targets {
                if t.contains('/') {
                    units.push(t.clone());
                } else {
                    let of_app: Vec<String> = m
                        .units
                        .values()
                        .filter(|u| &u.application == t)
                        .map(|u| u.name.clone())
                        .collect();
                    if of_app.is_empty() {
                        return Err(not_found("application", t));
                    }
                    units.extend(of_app);
                }
            }
            units
                .iter()
                .map(|u| {
                    m.enqueue_action(u, "exec", BTreeMap::new(), Some(req.command.clone()), now)
                })
                .collect()
        })
        .await
    }

    pub async fn action(&self, model: &str, id: u64) -> Result<api::ActionInfo> {
        self.read_model(model, |m, _, _| m.action_info(id)).await
    }

    pub async fn status(&self, model: &str) -> Result<api::Status> {
        self.read_model(model, |m, charms, now| Ok(m.status(charms, now)))
            .await
    }

    pub async fn show_unit(&self, model: &str, unit: &str) -> Result<api::UnitDetail> {
        self.read_model(model, |m, charms, now| m.unit_detail(charms, unit, now))
            .await
    }

    pub async fn logs(&self, model: &str, after: i64, limit: i64) -> Result<Vec<api::LogEntry>> {
        self.read_model(model, |_, _, _| Ok(())).await?;
        let after = if after < 0 {
            // The last |after| lines.
            (self.inner.store.last_model_log(model).await? + after).max(0)
        } else {
            after
        };
        Ok(self
            .inner
            .store
            .model_logs(model, after, limit)
            .await?
            .into_iter()
            .map(|l| api::LogEntry {
                id: l.id,
                entity: l.entity,
                at: l.at,
                level: l.level,
                message: l.message,
            })
            .collect())
    }

    /// A machine's address, for `kumo ssh`.
    pub async fn machine_address(&self, model: &str, target: &str) -> Result<String> {
        self.read_model(model, |m, _, _| {
            let machine = if target.contains('/') && !target.contains("/lxd/") {
                m.units
                    .get(target)
                    .map(|u| u.machine.clone())
                    .ok_or_else(|| not_found("unit", target))?
            } else {
                target.to_string()
            };
            m.machines
                .get(&machine)
                .ok_or_else(|| not_found("machine", &machine))?
                .address
                .clone()
                .ok_or_else(|| {
                    ControllerError::Conflict(format!("machine {machine} has no address yet"))
                })
        })
        .await
    }

    // ---- bundles ----------------------------------------------------------------

    fn bundle_charms(&self, req: &api::BundleRequest) -> Result<BTreeMap<String, Charm>> {
        let charms = self.inner.charms.read().expect("lock");
        let mut out = BTreeMap::new();
        for (name, sha) in &req.charms {
            let c = charms.get(sha).ok_or_else(|| not_found("charm", sha))?;
            out.insert(name.clone(), c.clone());
        }
        Ok(out)
    }

    /// `kumo deploy bundle.yaml` and `kumo plan`: the steps that make the
    /// model match, applied unless `dry_run`. A second run plans nothing.
    pub async fn deploy_bundle(
        &self,
        model: &str,
        req: &api::BundleRequest,
    ) -> Result<api::BundlePlan> {
        let bundle =
            kumo_charm::Bundle::parse(&req.file, &req.text).map_err(ControllerError::Bundle)?;
        let by_name = self.bundle_charms(req)?;
        let plan = self
            .with_model(model, |m, _, _| {
                let steps = kumo_charm::plan(&m.bundle_state(), &bundle, &by_name)
                    .map_err(ControllerError::Bundle)?;
                if !req.dry_run {
                    for step in &steps {
                        self.apply_step(m, step, &req.charms, &by_name)?;
                    }
                }
                Ok(steps.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            })
            .await?;
        self.inner.provision.notify_one();
        Ok(api::BundlePlan {
            steps: plan,
            applied: !req.dry_run,
        })
    }

    fn apply_step(
        &self,
        m: &mut Model,
        step: &kumo_charm::Step,
        shas: &BTreeMap<String, String>,
        charms: &BTreeMap<String, Charm>,
    ) -> Result<()> {
        use kumo_charm::Step;
        match step {
            Step::AddMachine {
                id,
                spec,
                bundle_machine,
            } => {
                let got = self.add_machine_in(m, None, spec.constraints.clone())?;
                if &got != id {
                    return Err(ControllerError::Conflict(format!(
                        "bundle planned machine {id}, model made {got}"
                    )));
                }
                m.machines.get_mut(&got).expect("added").bundle_machine = bundle_machine.clone();
            }
            Step::AddContainer { id, host, .. } => {
                let got = self.add_machine_in(m, Some(&format!("lxd:{host}")), None)?;
                if &got != id {
                    return Err(ControllerError::Conflict(format!(
                        "bundle planned container {id}, model made {got}"
                    )));
                }
            }
            Step::Deploy {
                application,
                charm,
                config,
                constraints,
                expose,
                ..
            } => {
                let c = charms.get(charm).ok_or_else(|| not_found("charm", charm))?;
                let sha = &shas[charm];
                let config = config
                    .iter()
                    .map(|(k, v)| (k.clone(), model::to_json(v)))
                    .collect();
                m.deploy(application, c, sha, config, constraints.clone())?;
                if *expose {
                    m.expose(application, true)?;
                }
            }
            Step::SetConfig {
                application,
                config,
            } => {
                let a = m
                    .doc
                    .applications
                    .get_mut(application)
                    .ok_or_else(|| not_found("application", application))?;
                a.config
                    .extend(config.iter().map(|(k, v)| (k.clone(), model::to_json(v))));
                m.dirty.model = true;
            }
            Step::SetConstraints {
                application,
                constraints,
            } => {
                let a = m
                    .doc
                    .applications
                    .get_mut(application)
                    .ok_or_else(|| not_found("application", application))?;
                a.constraints = Some(constraints.clone());
                m.dirty.model = true;
            }
            Step::Expose { application } => m.expose(application, true)?,
            Step::AddUnit {
                application,
                machine,
                ..
            } => {
                m.add_unit(application, machine)?;
            }
            Step::Relate(r) => {
                let [(a, ae), (b, be)] = &r.ends;
                let charms_by_sha: BTreeMap<String, Charm> = charms
                    .iter()
                    .map(|(n, c)| (shas[n].clone(), c.clone()))
                    .collect();
                m.relate(&charms_by_sha, &format!("{a}:{ae}"), &format!("{b}:{be}"))?;
            }
        }
        Ok(())
    }

    pub async fn diff_bundle(&self, model: &str, req: &api::BundleRequest) -> Result<Vec<String>> {
        let bundle =
            kumo_charm::Bundle::parse(&req.file, &req.text).map_err(ControllerError::Bundle)?;
        let by_name = self.bundle_charms(req)?;
        self.read_model(model, |m, _, _| {
            Ok(kumo_charm::diff(&m.bundle_state(), &bundle, &by_name)
                .map_err(ControllerError::Bundle)?
                .iter()
                .map(|d| d.to_string())
                .collect())
        })
        .await
    }

    pub async fn export_bundle(&self, model: &str) -> Result<String> {
        self.read_model(model, |m, _, _| {
            Ok(kumo_charm::export(&m.bundle_state()).render())
        })
        .await
    }

    // ---- agents -----------------------------------------------------------------

    fn check_token(m: &Model, machine: &str, token: &str) -> Result<()> {
        let mach = m
            .machines
            .get(machine)
            .ok_or_else(|| ControllerError::Unauthorized(machine.to_string()))?;
        if sha256_hex(token.as_bytes()) != mach.token_hash {
            return Err(ControllerError::Unauthorized(machine.to_string()));
        }
        Ok(())
    }

    /// An agent's long poll: returns at once when its view differs from
    /// `since`, else when it changes or the poll times out.
    pub async fn agent_view(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        since: Option<&str>,
    ) -> Result<MachineView> {
        let mut rx = self.inner.changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.inner.config.poll_timeout;
        loop {
            let view = {
                let mut models = self.inner.models.lock().await;
                let m = models
                    .get_mut(model)
                    .ok_or_else(|| not_found("model", model))?;
                Self::check_token(m, machine, token)?;
                let now = self.now();
                m.seen.insert(machine.to_string(), now);
                // A poll without a tag is an agent (re)starting: whatever
                // hook it said it was running died with its old process.
                if since.is_none() {
                    let units: Vec<String> = m
                        .units
                        .values()
                        .filter(|u| u.machine == machine)
                        .map(|u| u.name.clone())
                        .collect();
                    for u in units {
                        m.running.remove(&u);
                    }
                }
                let first = m
                    .machines
                    .get(machine)
                    .is_some_and(|x| x.agent_seen.is_none() || x.state != MachineState::Started);
                if first {
                    let x = m.machines.get_mut(machine).expect("checked");
                    x.agent_seen = Some(now);
                    x.state = MachineState::Started;
                    x.message.clear();
                    m.dirty.machines.insert(machine.to_string());
                    m.log(&machine_entity(machine), Level::Info, "agent started");
                    self.commit_model(m).await?;
                }
                let charms = self.charms();
                m.machine_view(&charms, machine, self.inner.config.update_status_interval)
            };
            if since != Some(view.tag.as_str()) {
                return Ok(view);
            }
            rx.borrow_and_update();
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return Ok(view); } }
                _ = tokio::time::sleep_until(deadline) => return Ok(view),
            }
        }
    }

    pub async fn agent_commit(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        commit: &HookCommit,
    ) -> Result<CommitAck> {
        let (state, state_version) = self
            .with_model(model, |m, _, now| {
                Self::check_token(m, machine, token)?;
                m.commit(machine, commit, now)
            })
            .await?;
        Ok(CommitAck {
            state,
            state_version,
        })
    }

    /// The agent says a unit started a hook (status shows "executing").
    pub async fn agent_running(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        unit: &str,
        hook: &str,
    ) -> Result<()> {
        let mut models = self.inner.models.lock().await;
        let m = models
            .get_mut(model)
            .ok_or_else(|| not_found("model", model))?;
        Self::check_token(m, machine, token)?;
        m.running.insert(unit.to_string(), hook.to_string());
        Ok(())
    }

    /// `status-set` during a hook: shown at once, as in Juju.
    pub async fn agent_status(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        unit: &str,
        status: kumo_uniter::WorkloadStatus,
    ) -> Result<()> {
        self.with_model(model, |m, _, _| {
            Self::check_token(m, machine, token)?;
            let u = m
                .units
                .get_mut(unit)
                .filter(|u| u.machine == machine)
                .ok_or_else(|| ControllerError::Unauthorized(machine.to_string()))?;
            if u.workload != status {
                u.workload = status;
                m.dirty.units.insert(unit.to_string());
            }
            Ok(())
        })
        .await
    }

    /// `secret-get`: a charm secret in clear, for a hook of `unit` only.
    /// A unit's own application's secret is made on first use: 24
    /// characters from the injected entropy, sealed before it is stored.
    pub async fn agent_secret(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        unit: &str,
        id: &str,
    ) -> Result<String> {
        let alphabet = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        self.with_model(model, |m, _, _| {
            Self::check_token(m, machine, token)?;
            if m.units.get(unit).map(|u| u.machine.as_str()) != Some(machine) {
                return Err(ControllerError::Unauthorized(machine.to_string()));
            }
            let (owner, name, may_create) = m.secret_access(unit, id)?;
            if let Some(sealed) = m.doc.secrets.get(&owner).and_then(|s| s.get(&name)) {
                let opened = self.inner.secrets.open(sealed).map_err(|e| {
                    ControllerError::Conflict(format!("secret {owner}/{name}: {e}"))
                })?;
                return Ok(opened
                    .get("value")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string());
            }
            if !may_create {
                return Err(not_found("secret", &format!("{owner}/{name}")));
            }
            let mut raw = [0u8; 24];
            self.inner.entropy.fill(&mut raw);
            let value: String = raw
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                .collect();
            let mut map = serde_json::Map::new();
            map.insert("value".into(), serde_json::Value::String(value.clone()));
            let sealed = self.inner.secrets.seal(&map, self.inner.entropy.as_ref());
            m.doc
                .secrets
                .entry(owner.clone())
                .or_default()
                .insert(name.clone(), sealed);
            m.dirty.model = true;
            m.log(
                &unit_entity(unit),
                Level::Info,
                format!("secret {owner}/{name} created"),
            );
            Ok(value)
        })
        .await
    }

    pub async fn agent_charm(
        &self,
        model: &str,
        machine: &str,
        token: &str,
        sha: &str,
    ) -> Result<PathBuf> {
        self.read_model(model, |m, _, _| Self::check_token(m, machine, token))
            .await?;
        self.charm_archive(sha)
    }

    // ---- provisioner ------------------------------------------------------------

    /// Makes pending machines and retries failed ones, until `stop`.
    pub async fn run_provisioner(self, mut stop: watch::Receiver<bool>) {
        // Machines whose provisioning runs now: a slow one (a container's
        // first boot, an agent copied over SSH, a deployment waited on)
        // holds up no other, and none is started twice.
        let inflight: Arc<std::sync::Mutex<std::collections::BTreeSet<(String, String)>>> =
            Arc::default();
        loop {
            match self.prepare_pending().await {
                Ok(jobs) => {
                    for job in jobs {
                        let key = (job.model.clone(), job.machine.id.clone());
                        if !inflight.lock().expect("lock").insert(key.clone()) {
                            continue;
                        }
                        let (c, inflight) = (self.clone(), inflight.clone());
                        tokio::spawn(async move {
                            if let Err(e) = c.execute(job).await {
                                tracing::warn!("provisioner: {e}");
                            }
                            inflight.lock().expect("lock").remove(&key);
                            // What it did may let the next pass go on.
                            c.inner.provision.notify_one();
                        });
                    }
                }
                Err(e) => tracing::warn!("provisioner: {e}"),
            }
            tokio::select! {
                _ = self.inner.provision.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One pass, done when every machine in it is: every machine not yet
    /// made gets an address and an agent token and is handed to the
    /// provider (which is idempotent), all at once.
    pub async fn provision_pending(&self) -> Result<()> {
        let jobs = self.prepare_pending().await?;
        let results =
            futures_util::future::join_all(jobs.into_iter().map(|j| self.execute(j))).await;
        results.into_iter().collect()
    }

    /// The machines owed work, each made ready for its provider. Runs in
    /// one task at a time, so two machines never pick one address.
    async fn prepare_pending(&self) -> Result<Vec<ProvisionJob>> {
        let Some(boot) = self.bootstrap_config() else {
            return Ok(vec![]);
        };
        let work: Vec<(String, ProviderKind, MachineDoc, HostOf)> = {
            let models = self.inner.models.lock().await;
            models
                .values()
                .flat_map(|m| {
                    m.machines
                        .values()
                        .filter(|x| match x.state {
                            MachineState::Pending => true,
                            // Failed ones again after a back-off: 10 s, 20 s, … 5 min.
                            MachineState::Error => self
                                .inner
                                .retries
                                .lock()
                                .expect("lock")
                                .get(&(m.doc.name.clone(), x.id.clone()))
                                .is_none_or(|(_, at)| *at <= self.now()),
                            // A metal machine is provisioned a step per pass
                            // until its agent is installed (it has an address).
                            MachineState::Provisioning => {
                                m.doc.provider == ProviderKind::Metal && x.address.is_none()
                            }
                            _ => false,
                        })
                        .map(|x| {
                            (
                                m.doc.name.clone(),
                                m.doc.provider,
                                x.clone(),
                                host_of(m, &x.id),
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let mut jobs = Vec::new();
        for (model, kind, mach, host) in work {
            let host = match host {
                HostOf::None => None,
                HostOf::Ready(h) => Some(h),
                // Left pending until its machine's agent is in.
                HostOf::NotReady(why) => {
                    if mach.message != why {
                        self.with_model(&model, |m, _, _| {
                            if let Some(x) = m.machines.get_mut(&mach.id) {
                                x.message = why.clone();
                                m.dirty.machines.insert(mach.id.clone());
                            }
                            Ok(())
                        })
                        .await?;
                    }
                    continue;
                }
            };
            if kind == ProviderKind::Metal && host.is_none() {
                jobs.push(ProvisionJob {
                    model,
                    machine: mach,
                    boot: boot.clone(),
                    request: None,
                });
                continue;
            }
            // A fresh token per attempt: only the hash is stored.
            let (token, hash) = self.new_token();
            // Manual machines are known by their SSH target.
            let instance = match (
                kind,
                mach.placement
                    .as_deref()
                    .and_then(|p| p.strip_prefix("ssh:")),
            ) {
                (ProviderKind::Manual, Some(target)) => target.to_string(),
                _ => provider::instance_name(&boot.controller_id, &model, &mach.id),
            };
            // Containers, here or on a machine, take the controller's
            // addresses; other machines have their own.
            let takes_our_address = kind == ProviderKind::Containers || host.is_some();
            let address = if takes_our_address {
                let used: std::collections::HashSet<String> = {
                    let models = self.inner.models.lock().await;
                    models
                        .values()
                        .flat_map(|m| m.machines.values().filter_map(|x| x.address.clone()))
                        .collect()
                };
                match mach.address.clone() {
                    Some(a) => Some(a),
                    None => match provider::pick_address(&boot.address_range, &used) {
                        Ok(a) => Some(a),
                        // This machine fails; the others go on.
                        Err(e) => {
                            self.note_attempt(&model, &mach.id, false);
                            self.with_model(&model, |m, _, _| {
                                if let Some(x) = m.machines.get_mut(&mach.id) {
                                    x.state = MachineState::Error;
                                    x.message = e.clone();
                                    m.dirty.machines.insert(mach.id.clone());
                                    m.log(&machine_entity(&mach.id), Level::Error, e.clone());
                                }
                                Ok(())
                            })
                            .await?;
                            continue;
                        }
                    },
                }
            } else {
                None
            };
            self.with_model(&model, |m, _, _| {
                if let Some(x) = m.machines.get_mut(&mach.id) {
                    x.state = MachineState::Provisioning;
                    x.token_hash = hash.clone();
                    x.address = address.clone();
                    x.instance = Some(instance.clone());
                    x.message = "provisioning".into();
                    m.dirty.machines.insert(mach.id.clone());
                }
                Ok(())
            })
            .await?;
            let request = ProvisionRequest {
                kind,
                instance: instance.clone(),
                hostname: instance.clone(),
                address: address.clone(),
                placement: mach.placement.clone(),
                host,
                agent: AgentConfig {
                    controller_url: boot.agent_url.clone(),
                    model: model.clone(),
                    machine: mach.id.clone(),
                    token,
                },
                bootstrap: boot.clone(),
            };
            jobs.push(ProvisionJob {
                model,
                machine: mach,
                boot: boot.clone(),
                request: Some(request),
            });
        }
        Ok(jobs)
    }

    /// Hands one prepared machine to its provider and records the outcome.
    async fn execute(&self, job: ProvisionJob) -> Result<()> {
        let ProvisionJob {
            model,
            machine: mach,
            boot,
            request,
        } = job;
        let Some(req) = request else {
            return self.provision_metal(&model, &mach, &boot).await;
        };
        let instance = req.instance.clone();
        tracing::info!(model, machine = mach.id, instance, "provisioning machine");
        let result = self.inner.provider.provision(&req).await;
        self.note_attempt(&model, &mach.id, result.is_ok());
        self.with_model(&model, |m, _, _| {
            if let Some(x) = m.machines.get_mut(&mach.id) {
                match &result {
                    Ok(addr) => {
                        if x.state == MachineState::Provisioning {
                            x.message = "waiting for the agent".into();
                        }
                        x.address = Some(addr.clone());
                    }
                    Err(e) => {
                        x.state = MachineState::Error;
                        x.message = e.clone();
                    }
                }
                m.dirty.machines.insert(mach.id.clone());
                let (level, text) = match &result {
                    Ok(_) => (
                        Level::Info,
                        format!("machine {} provisioned as {instance}", mach.id),
                    ),
                    Err(e) => (
                        Level::Error,
                        format!("provisioning machine {} failed: {e}", mach.id),
                    ),
                };
                m.log(&machine_entity(&mach.id), level, text);
            }
            Ok(())
        })
        .await?;
        Ok(())
    }
}

/// A machine made ready for its provider: for containers and manual
/// machines, the request (address and token chosen and recorded); metal
/// machines take a step of their own.
struct ProvisionJob {
    model: String,
    machine: MachineDoc,
    boot: api::Bootstrap,
    request: Option<ProvisionRequest>,
}

/// Where a metal machine's provisioning got to in one pass.
enum MetalStep {
    /// Allocated or deploying; the message says which region machine.
    Waiting(String),
    /// Deployed, the agent installed at this address.
    Installed(String),
}

impl Controller {
    /// Remembers a failed attempt (the next waits 20 s, 40 s, … 5 min) or
    /// forgets the failures after a success.
    fn note_attempt(&self, model: &str, machine: &str, ok: bool) {
        let mut retries = self.inner.retries.lock().expect("lock");
        let key = (model.to_string(), machine.to_string());
        if ok {
            retries.remove(&key);
        } else {
            let attempts = retries.get(&key).map_or(1, |(n, _)| n + 1);
            let wait = (10_000i64 << attempts.min(5)).min(300_000);
            retries.insert(key, (attempts, self.now() + wait));
        }
    }

    /// One pass over a metal machine: allocate a region machine by its
    /// constraints, deploy it, wait for the region to say deployed, then
    /// install the agent over SSH. A step per pass, so a machine deploying
    /// for minutes holds up no other; the allocated machine's system id
    /// is recorded as the instance at once, so a restarted controller
    /// carries on with it instead of allocating another.
    async fn provision_metal(
        &self,
        model: &str,
        mach: &MachineDoc,
        boot: &api::Bootstrap,
    ) -> Result<()> {
        let step = match self.inner.metal.get().cloned() {
            Some(backend) => self.metal_step(backend.as_ref(), model, mach, boot).await,
            None => Err("this controller has no region machines (metal provider)".to_string()),
        };
        if !matches!(step, Ok(MetalStep::Waiting(_))) {
            self.note_attempt(model, &mach.id, step.is_ok());
        }
        let updated = self
            .with_model(model, |m, _, _| {
                let Some(x) = m.machines.get_mut(&mach.id) else {
                    return Ok(());
                };
                if x.state == MachineState::Dying {
                    return Ok(());
                }
                let (state, message, log) = match &step {
                    Ok(MetalStep::Waiting(msg)) => (
                        MachineState::Provisioning,
                        msg.clone(),
                        (Level::Info, msg.clone()),
                    ),
                    Ok(MetalStep::Installed(addr)) => {
                        x.address = Some(addr.clone());
                        (
                            MachineState::Provisioning,
                            "waiting for the agent".to_string(),
                            (
                                Level::Info,
                                format!(
                                    "machine {} provisioned as {}",
                                    mach.id,
                                    x.instance.clone().unwrap_or_default()
                                ),
                            ),
                        )
                    }
                    Err(e) => (
                        MachineState::Error,
                        e.clone(),
                        (
                            Level::Error,
                            format!("provisioning machine {} failed: {e}", mach.id),
                        ),
                    ),
                };
                // Polls that change nothing write nothing.
                if x.state == state && x.message == message && x.address.is_none() {
                    return Ok(());
                }
                x.state = state;
                x.message = message;
                m.dirty.machines.insert(mach.id.clone());
                m.log(&machine_entity(&mach.id), log.0, log.1);
                Ok(())
            })
            .await;
        match updated {
            // The model was destroyed meanwhile.
            Err(ControllerError::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn metal_step(
        &self,
        backend: &dyn MetalBackend,
        model: &str,
        mach: &MachineDoc,
        boot: &api::Bootstrap,
    ) -> std::result::Result<MetalStep, String> {
        use kumo_model::MachineStatus as S;
        let (owner, created_at) = self
            .read_model(model, |m, _, _| Ok((m.doc.owner.clone(), m.doc.created_at)))
            .await
            .map_err(|e| e.to_string())?;
        let owner =
            owner.ok_or_else(|| format!("model {model} has no owner to allocate machines to"))?;
        // The region machine recorded earlier, while it is still this
        // model's: allocated, deploying, deployed or failed deploying.
        let recorded = match &mach.instance {
            Some(id) => backend.machine(&owner, id).await?.filter(|r| {
                r.owner.as_deref() == Some(owner.as_str())
                    && matches!(
                        r.status,
                        S::Allocated | S::Deploying | S::Deployed | S::FailedDeployment
                    )
            }),
            None => None,
        };
        let r = match recorded {
            Some(r) => r,
            None => {
                let constraints = mach.constraints.clone().unwrap_or_default();
                // Named for this model machine, so an allocation whose
                // answer was lost (a crash, a dropped connection) is
                // found again rather than a second machine taken.
                let agent_name =
                    provider::metal_agent_name(&boot.controller_id, model, created_at, &mach.id);
                let r = backend
                    .allocate(&owner, &constraints, &agent_name)
                    .await
                    .map_err(|e| format!("allocating a region machine: {e}"))?;
                let noted = self
                    .with_model(model, |m, _, _| {
                        let x = m
                            .machines
                            .get_mut(&mach.id)
                            .filter(|x| x.state != MachineState::Dying)
                            .ok_or_else(|| not_found("machine", &mach.id))?;
                        x.instance = Some(r.system_id.clone());
                        x.state = MachineState::Provisioning;
                        x.message = format!("allocated {}", r.hostname);
                        m.dirty.machines.insert(mach.id.clone());
                        m.log(
                            &machine_entity(&mach.id),
                            Level::Info,
                            format!(
                                "machine {} allocated region machine {} ({})",
                                mach.id, r.hostname, r.system_id
                            ),
                        );
                        Ok(())
                    })
                    .await;
                if let Err(e) = noted {
                    // The machine or its model went away meanwhile.
                    let _ = backend.release(&owner, &r.system_id).await;
                    return Err(format!("recording region machine {}: {e}", r.hostname));
                }
                r
            }
        };
        match r.status {
            S::Allocated => {
                let r = backend
                    .deploy(&owner, &r.system_id)
                    .await
                    .map_err(|e| format!("deploying region machine {}: {e}", r.hostname))?;
                Ok(MetalStep::Waiting(format!("deploying {}", r.hostname)))
            }
            S::Deploying => Ok(MetalStep::Waiting(if r.status_message.is_empty() {
                format!("deploying {}", r.hostname)
            } else {
                format!("deploying {}: {}", r.hostname, r.status_message)
            })),
            S::FailedDeployment => {
                // Given back, so the retry allocates afresh.
                let released = backend.release(&owner, &r.system_id).await;
                let _ = self
                    .with_model(model, |m, _, _| {
                        if let Some(x) = m.machines.get_mut(&mach.id) {
                            x.instance = None;
                            m.dirty.machines.insert(mach.id.clone());
                        }
                        Ok(())
                    })
                    .await;
                Err(format!(
                    "region machine {} failed to deploy: {}{}",
                    r.hostname,
                    r.status_message,
                    match released {
                        Ok(()) => "; released it".to_string(),
                        Err(e) => format!("; releasing it: {e}"),
                    }
                ))
            }
            _ => {
                let address = r.addresses.first().cloned().ok_or_else(|| {
                    format!(
                        "region machine {} is deployed without an address",
                        r.hostname
                    )
                })?;
                // A fresh token per attempt: only its hash is kept.
                let (token, hash) = self.new_token();
                self.with_model(model, |m, _, _| {
                    if let Some(x) = m.machines.get_mut(&mach.id) {
                        x.token_hash = hash.clone();
                        x.message = format!("installing the agent on {}", r.hostname);
                        m.dirty.machines.insert(mach.id.clone());
                    }
                    Ok(())
                })
                .await
                .map_err(|e| e.to_string())?;
                // The agent goes on over SSH as on a manual machine: the
                // region's image lets the owner's keys in as `debian` with
                // sudo, and the region process holds the key. Cloud-init
                // user-data could install it too, but would have to carry
                // the agent's token in the machine's deployment record and
                // fetch the binary from an endpoint the region does not
                // have; SSH reuses what the manual provider already does.
                let req = ProvisionRequest {
                    kind: ProviderKind::Metal,
                    instance: r.system_id.clone(),
                    hostname: r.hostname.clone(),
                    address: Some(address.clone()),
                    placement: Some(format!("ssh:{}@{address}", provider::METAL_SSH_USER)),
                    host: None,
                    agent: AgentConfig {
                        controller_url: boot.agent_url.clone(),
                        model: model.to_string(),
                        machine: mach.id.clone(),
                        token,
                    },
                    bootstrap: boot.clone(),
                };
                tracing::info!(
                    model,
                    machine = mach.id,
                    instance = r.system_id,
                    "installing the agent"
                );
                self.inner
                    .provider
                    .provision(&req)
                    .await
                    .map_err(|e| format!("installing the agent on {}: {e}", r.hostname))?;
                Ok(MetalStep::Installed(address))
            }
        }
    }
}

/// Gives a machine back to its provider: a metal machine is released to
/// the region first.
async fn destroy_instance(
    provider: Arc<dyn Provider>,
    metal: Option<Arc<dyn MetalBackend>>,
    kind: ProviderKind,
    owner: &str,
    instance: &str,
    host: HostOf,
) -> std::result::Result<(), String> {
    match host {
        HostOf::None => {}
        // Its host was never reached: there is no container to remove.
        HostOf::NotReady(_) => return Ok(()),
        HostOf::Ready(h) => return provider.destroy(kind, instance, Some(&h)).await,
    }
    if kind == ProviderKind::Metal {
        let backend =
            metal.ok_or("this controller has no region machines (metal provider)".to_string())?;
        backend.release(owner, instance).await?;
    }
    provider.destroy(kind, instance, None).await
}

/// Where a machine lives: on its own (`None`), or, for a container on a
/// metal or manual machine (`N/lxd/K`), on that machine once it is
/// reachable.
#[derive(Debug, Clone)]
enum HostOf {
    None,
    /// Why the host cannot take the container yet.
    NotReady(String),
    Ready(HostRef),
}

fn host_of(m: &Model, id: &str) -> HostOf {
    if m.doc.provider == ProviderKind::Containers {
        // Containers on container machines are this host's too.
        return HostOf::None;
    }
    let Some((host_id, _)) = id.split_once("/lxd/") else {
        return HostOf::None;
    };
    let waiting = || HostOf::NotReady(format!("waiting for machine {host_id}"));
    let Some(h) = m.machines.get(host_id) else {
        return waiting();
    };
    let (Some(instance), Some(address)) = (
        h.instance.clone(),
        h.address.clone().filter(|a| !a.is_empty()),
    ) else {
        return waiting();
    };
    let target = match m.doc.provider {
        ProviderKind::Metal => format!("{}@{address}", provider::METAL_SSH_USER),
        _ => h
            .placement
            .as_deref()
            .and_then(|p| p.strip_prefix("ssh:"))
            .unwrap_or(&address)
            .to_string(),
    };
    HostOf::Ready(HostRef {
        instance,
        target,
        address,
    })
}

fn metal_placement(model: &str, placement: &str) -> ControllerError {
    invalid(
        "placement",
        format!(
            "placement {placement}: model {model} takes its machines from the region (metal provider); \
             add ssh:user@host machines to a manual model"
        ),
    )
}

/// The bootstrap configuration and every model, from stored documents.
fn models_from_docs(
    docs: &[kumo_store::ModelDoc],
) -> Result<(Option<api::Bootstrap>, BTreeMap<String, Model>)> {
    let corrupt = |d: &kumo_store::ModelDoc, e: serde_json::Error| {
        ControllerError::Conflict(format!(
            "stored {} {} of model {}: {e}",
            d.kind, d.key, d.model
        ))
    };
    let mut models: BTreeMap<String, Model> = BTreeMap::new();
    let mut bootstrap = None;
    for d in docs.iter().filter(|d| d.kind == "model") {
        if d.model == BOOTSTRAP_MODEL {
            bootstrap = Some(serde_json::from_str(&d.body).map_err(|e| corrupt(d, e))?);
            continue;
        }
        let doc: ModelDoc = serde_json::from_str(&d.body).map_err(|e| corrupt(d, e))?;
        let mut m = Model::new(doc);
        m.dirty = Default::default();
        models.insert(d.model.clone(), m);
    }
    for d in docs.iter().filter(|d| d.kind != "model") {
        let Some(m) = models.get_mut(&d.model) else {
            continue;
        };
        match d.kind.as_str() {
            "machine" => {
                let mut x: MachineDoc = serde_json::from_str(&d.body).map_err(|e| corrupt(d, e))?;
                // A controller stopped mid-provisioning: the provider is
                // idempotent, so make the machine again.
                if x.state == MachineState::Provisioning && x.agent_seen.is_none() {
                    x.state = MachineState::Pending;
                }
                m.machines.insert(d.key.clone(), x);
            }
            "unit" => {
                m.units.insert(
                    d.key.clone(),
                    serde_json::from_str(&d.body).map_err(|e| corrupt(d, e))?,
                );
            }
            "action" => {
                let a: ActionDoc = serde_json::from_str(&d.body).map_err(|e| corrupt(d, e))?;
                m.actions.insert(a.id, a);
            }
            _ => {}
        }
    }
    Ok((bootstrap, models))
}

fn info(m: &Model) -> api::ModelInfo {
    api::ModelInfo {
        name: m.doc.name.clone(),
        provider: m.doc.provider.as_str().into(),
        machines: m.machines.len(),
        applications: m.doc.applications.len(),
        units: m.units.len(),
    }
}
