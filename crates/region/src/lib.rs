//! The region: kumo's owner of machines. It turns API commands into
//! lifecycle transitions (pure, in `kumo-model`), persists them with their
//! side effects (in `kumo-store`), and runs the workers that carry those
//! effects out: power jobs and the watchdog. Workers are idempotent and
//! resume from the store after a crash.

pub mod auth;
pub mod clock;
mod deploy;
mod error;
pub mod metrics;
mod network;
mod scripts;
pub mod secrets;
mod workers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kumo_model::api::{
    ActionOptions, AddMachine, AllocateRequest, AuditEvent, CreateUser, EnlistRequest, Group,
    Instructions, MachineEvent, MachineFilter, MachineView, NewApiKey, ReportEvent, ReportResult,
    StatusReport, Tag, UpdateMachine, UpdateTagMachines, User,
};
use kumo_model::constraints::Constraints;
use kumo_model::lifecycle::{self, Action, Effect, EraseMode, MachineStatus};
use kumo_model::scripts::ScriptType;
use kumo_model::tags::TagDefinition;
use kumo_model::{Hostname, Inventory, MacAddress, Machine, Millis, Name, PowerState, SystemId};
use kumo_power::RetryPolicy;
use kumo_store::{
    GroupKind, MachineQuery, MachineWrite, NewAudit, NewEvent, NewPowerJob, Store, StoreError,
    UserRecord,
};
use serde_json::{Map, Value};
use tokio::sync::Notify;

pub use auth::Actor;
pub use clock::{Clock, Entropy, ManualClock, OsEntropy, SeededEntropy, SystemClock};
pub use deploy::DEFAULT_IMAGE;
pub use error::RegionError;
pub use metrics::Metrics;
pub use secrets::SecretBox;

pub const ARCHITECTURES: &[&str] = &[
    "amd64", "arm64", "i386", "armhf", "ppc64el", "s390x", "riscv64",
];

type Params = Map<String, Value>;

/// Key in a machine's sealed secrets holding its machine-API token.
const MACHINE_TOKEN_KEY: &str = "_machine_token";

#[derive(Clone, Debug)]
pub struct RegionConfig {
    pub power_retry: RetryPolicy,
    /// Overrides the default watchdog timeouts (seconds) per status.
    pub watchdog_timeouts: HashMap<MachineStatus, i64>,
    /// How often the workers look for work they were not told about.
    pub poll_interval: std::time::Duration,
    /// Where uploaded OS images are kept; `None` refuses uploads.
    pub images_dir: Option<std::path::PathBuf>,
    /// The package proxy deployed machines use (`http://host:port/`).
    pub package_proxy: Option<String>,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            power_retry: RetryPolicy::default(),
            watchdog_timeouts: HashMap::new(),
            poll_interval: std::time::Duration::from_secs(2),
            images_dir: None,
            package_proxy: None,
        }
    }
}

/// The region service. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Region {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    clock: Arc<dyn Clock>,
    entropy: Arc<dyn Entropy>,
    secrets: SecretBox,
    config: RegionConfig,
    machine_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    power_wakeup: Notify,
    power_in_flight: Mutex<std::collections::HashSet<String>>,
    /// Busy machines last seen powered off, and since when.
    seen_off: Mutex<HashMap<String, Millis>>,
    metrics: Metrics,
    /// Bumped after every committed change, so waiters (the rack's
    /// long-poll) wake at once instead of at their next poll.
    changes: tokio::sync::watch::Sender<u64>,
    /// Set once the process is stopping: long polls answer at once, so a
    /// graceful shutdown does not wait out their `wait` seconds.
    stopping: std::sync::atomic::AtomicBool,
}

/// What became of one machine transition attempt.
enum Outcome {
    Applied(Machine),
    /// The precondition no longer held (e.g. the machine reported in time).
    Skipped(Machine),
}

impl Region {
    pub fn new(
        store: Store,
        secrets: SecretBox,
        clock: Arc<dyn Clock>,
        entropy: Arc<dyn Entropy>,
        config: RegionConfig,
    ) -> Self {
        Region {
            inner: Arc::new(Inner {
                store,
                clock,
                entropy,
                secrets,
                config,
                machine_locks: Mutex::new(HashMap::new()),
                power_wakeup: Notify::new(),
                power_in_flight: Mutex::new(Default::default()),
                seen_off: Mutex::new(Default::default()),
                metrics: Metrics::new(),
                changes: tokio::sync::watch::Sender::new(0),
                stopping: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Opens the region on a data directory's key file and a store URL,
    /// creating the default zone and pool.
    pub async fn open(
        store_url: &str,
        key_file: &Path,
        config: RegionConfig,
    ) -> Result<Self, RegionError> {
        let store = Store::open(store_url).await?;
        let entropy: Arc<dyn Entropy> = Arc::new(OsEntropy);
        let secrets = SecretBox::load_or_create(key_file, entropy.as_ref())?;
        let region = Region::new(store, secrets, Arc::new(SystemClock), entropy, config);
        region.ensure_defaults().await?;
        Ok(region)
    }

    pub async fn ensure_defaults(&self) -> Result<(), RegionError> {
        self.store()
            .ensure_group(GroupKind::Zone, "default", "the default zone")
            .await?;
        self.store()
            .ensure_group(GroupKind::Pool, "default", "the default pool")
            .await?;
        // Like MAAS, start with one fabric and its untagged VLAN to put subnets on.
        if self.fabrics().await?.is_empty() {
            let f = kumo_model::network::Fabric {
                name: "fabric-0".into(),
                description: "the default fabric".into(),
            };
            match self.create_fabric(&Actor::system(), f).await {
                Ok(_) | Err(RegionError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn now(&self) -> Millis {
        self.inner.clock.now()
    }

    fn entropy(&self) -> &dyn Entropy {
        self.inner.entropy.as_ref()
    }

    fn audit(actor: &Actor, action: &str, object: String, detail: impl Into<String>) -> NewAudit {
        NewAudit {
            username: actor.username.clone(),
            action: action.to_owned(),
            object,
            detail: detail.into(),
        }
    }

    /// Wakes everything waiting for a change (see [`Region::subscribe_changes`]).
    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ends every long poll now and makes new ones answer at once; called
    /// when the process begins to stop.
    pub fn begin_shutdown(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.inner
            .stopping
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A receiver that sees a new value after each change this process
    /// commits. Other region processes' changes are not seen: waiters also
    /// poll (see `RegionConfig::poll_interval`).
    pub fn subscribe_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Writes one audit entry for a change that has no machine write to ride on.
    async fn record_audit(
        &self,
        actor: &Actor,
        action: &str,
        object: String,
        detail: impl Into<String>,
    ) -> Result<(), RegionError> {
        self.store()
            .add_audit(self.now(), &Self::audit(actor, action, object, detail))
            .await?;
        self.changed();
        Ok(())
    }

    fn require_admin(actor: &Actor, what: &str) -> Result<(), RegionError> {
        if actor.admin {
            Ok(())
        } else {
            Err(RegionError::Forbidden(format!(
                "{what} needs an admin user; {} is not one",
                actor.username
            )))
        }
    }

    fn lock_for(&self, system_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .machine_locks
            .lock()
            .expect("machine lock table")
            .entry(system_id.to_owned())
            .or_default()
            .clone()
    }

    pub fn view(&self, m: Machine) -> MachineView {
        let allowed_actions = lifecycle::allowed_actions(&m.lifecycle())
            .into_iter()
            .map(str::to_owned)
            .collect();
        MachineView {
            machine: m,
            allowed_actions,
        }
    }

    // ---- users and keys ------------------------------------------------

    /// Creates a user. The first user may be created by the system actor
    /// (`kumo init`); later ones need an admin.
    pub async fn create_user(&self, actor: &Actor, req: CreateUser) -> Result<User, RegionError> {
        Self::require_admin(actor, "creating a user")?;
        let name = Name::parse("username", &req.username)?;
        if req.password.len() < 8 {
            return Err(RegionError::invalid(
                "password",
                "must be at least 8 characters",
            ));
        }
        let hash = auth::hash_password(&req.password, self.entropy())?;
        self.store()
            .create_user(&UserRecord {
                username: name.to_string(),
                password_hash: hash,
                admin: req.admin,
            })
            .await?;
        self.record_audit(
            actor,
            "create",
            format!("user/{name}"),
            if req.admin { "admin" } else { "" },
        )
        .await?;
        Ok(User {
            username: name.to_string(),
            admin: req.admin,
        })
    }

    pub async fn list_users(&self) -> Result<Vec<User>, RegionError> {
        Ok(self.store().list_users().await?)
    }

    /// Makes an API key for `username`: users make their own, admins any.
    pub async fn create_api_key(
        &self,
        actor: &Actor,
        username: &str,
    ) -> Result<NewApiKey, RegionError> {
        if actor.username != username {
            Self::require_admin(actor, "creating another user's API key")?;
        }
        self.store().get_user(username).await?;
        let (id, hash, key) = auth::new_api_key(self.entropy());
        self.store()
            .add_api_key(&id, username, &hash, self.now())
            .await?;
        self.record_audit(
            actor,
            "create",
            format!("api-key/{id}"),
            format!("for {username}"),
        )
        .await?;
        Ok(NewApiKey {
            username: username.to_owned(),
            key,
        })
    }

    /// Resolves an API key to its user.
    pub async fn authenticate(&self, key: &str) -> Result<Actor, RegionError> {
        let (id, secret) = auth::parse_api_key(key).ok_or(RegionError::Unauthorized)?;
        let (user, hash) = self
            .store()
            .api_key(id)
            .await?
            .ok_or(RegionError::Unauthorized)?;
        if auth::constant_time_eq(&auth::sha256_hex(secret), &hash) {
            Ok(Actor {
                username: user.username,
                admin: user.admin,
            })
        } else {
            Err(RegionError::Unauthorized)
        }
    }

    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Actor, RegionError> {
        let user = self
            .store()
            .get_user(username)
            .await
            .map_err(|_| RegionError::Unauthorized)?;
        if auth::verify_password(password, &user.password_hash) {
            Ok(Actor {
                username: user.username,
                admin: user.admin,
            })
        } else {
            Err(RegionError::Unauthorized)
        }
    }

    // ---- machines: reads -------------------------------------------------

    pub async fn list_machines(&self, f: &MachineFilter) -> Result<Vec<Machine>, RegionError> {
        let mut q = MachineQuery::default();
        if let Some(s) = &f.status {
            for part in s.split(',').filter(|p| !p.is_empty()) {
                q.statuses.push(MachineStatus::parse(part)?);
            }
        }
        q.hostname = f.hostname.clone();
        q.zone = f.zone.clone();
        q.pool = f.pool.clone();
        q.owner = f.owner.clone();
        q.arch = f.arch.clone();
        if let Some(t) = &f.tags {
            q.tags = t
                .split(',')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
        }
        Ok(self.store().list_machines(&q).await?)
    }

    /// Finds a machine by system id or hostname.
    pub async fn machine(&self, id: &str) -> Result<Machine, RegionError> {
        Ok(self.store().find_machine(id).await?)
    }

    pub async fn machine_events(
        &self,
        id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MachineEvent>, RegionError> {
        let sid = match id {
            // Rack-level events (rogue DHCP servers) are filed under `rack:<name>`.
            Some(id) if id.starts_with("rack:") => Some(id.to_owned()),
            Some(id) => Some(self.machine(id).await?.system_id.to_string()),
            None => None,
        };
        Ok(self
            .store()
            .machine_events(sid.as_deref(), limit.clamp(1, 10_000))
            .await?)
    }

    pub async fn audit_events(
        &self,
        actor: &Actor,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, RegionError> {
        Self::require_admin(actor, "reading the audit log")?;
        Ok(self.store().audit_events(limit.clamp(1, 10_000)).await?)
    }

    // ---- machines: writes ------------------------------------------------

    fn parse_macs(raw: &[String]) -> Result<Vec<MacAddress>, RegionError> {
        let mut macs: Vec<MacAddress> = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let mac: MacAddress = s.parse().map_err(|e: kumo_model::ModelError| {
                RegionError::invalid(format!("macs[{i}]"), e.to_string())
            })?;
            if macs.contains(&mac) {
                return Err(RegionError::invalid(
                    format!("macs[{i}]"),
                    format!("{mac} is listed twice"),
                ));
            }
            macs.push(mac);
        }
        Ok(macs)
    }

    fn check_arch(arch: &str) -> Result<(), RegionError> {
        if ARCHITECTURES.contains(&arch) {
            Ok(())
        } else {
            Err(RegionError::invalid(
                "arch",
                format!("{arch:?} is not one of {}", ARCHITECTURES.join(", ")),
            ))
        }
    }

    async fn check_group(
        &self,
        kind: GroupKind,
        field: &'static str,
        name: &str,
    ) -> Result<Name, RegionError> {
        let n = Name::parse(field, name)?;
        match self.store().get_group(kind, n.as_str()).await {
            Ok(_) => Ok(n),
            Err(StoreError::NotFound { .. }) => Err(RegionError::invalid(
                field,
                format!("no {field} named {name:?}"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Splits power parameters into the public ones (kept in the machine
    /// record) and secret ones (sealed), after validating them together.
    fn split_power_parameters(
        &self,
        power_type: &str,
        params: &Map<String, Value>,
    ) -> Result<(Params, Params), RegionError> {
        kumo_power::validate_parameters(power_type, params)?;
        let specs = kumo_power::parameter_specs(power_type).unwrap_or(&[]);
        let (mut public, mut secret) = (Map::new(), Map::new());
        for (k, v) in params {
            if specs.iter().any(|s| s.name == k && s.secret) {
                secret.insert(k.clone(), v.clone());
            } else {
                public.insert(k.clone(), v.clone());
            }
        }
        Ok((public, secret))
    }

    pub async fn add_machine(
        &self,
        actor: &Actor,
        req: AddMachine,
    ) -> Result<Machine, RegionError> {
        Self::require_admin(actor, "adding a machine")?;
        let hostname: Hostname = req.hostname.parse()?;
        let macs = Self::parse_macs(&req.macs)?;
        if macs.is_empty() {
            return Err(RegionError::invalid(
                "macs",
                "a machine needs at least one MAC address to boot from",
            ));
        }
        let arch = req.arch.unwrap_or_else(|| "amd64".into());
        Self::check_arch(&arch)?;
        let power_type = req.power_type.unwrap_or_else(|| "manual".into());
        let (public, secret) = self.split_power_parameters(&power_type, &req.power_parameters)?;
        let zone = self
            .check_group(
                GroupKind::Zone,
                "zone",
                req.zone.as_deref().unwrap_or("default"),
            )
            .await?;
        let pool = self
            .check_group(
                GroupKind::Pool,
                "pool",
                req.pool.as_deref().unwrap_or("default"),
            )
            .await?;
        let mut tags = Vec::new();
        for t in &req.tags {
            tags.push(Name::parse("tags", t)?.to_string());
        }
        let now = self.now();
        let mut id = [0u8; 6];
        self.entropy().fill(&mut id);
        let m = Machine {
            system_id: SystemId::from_random(id),
            hostname,
            arch,
            status: MachineStatus::New,
            previous_status: None,
            status_message: String::new(),
            owner: None,
            agent_name: None,
            commissioned: false,
            erase: EraseMode::None,
            macs,
            power_type,
            power_parameters: public,
            power_state: PowerState::Unknown,
            zone,
            pool,
            tags,
            cpu_count: req.cpu_count.unwrap_or(0),
            memory_mib: req.memory_mib.unwrap_or(0),
            storage_bytes: 0,
            inventory: None,
            deadline: None,
            deployment: None,
            script_task: None,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        let sealed = self.inner.secrets.seal(&secret, self.entropy());
        let audit = Self::audit(
            actor,
            "create",
            format!("machine/{}", m.system_id),
            m.hostname.to_string(),
        );
        self.store()
            .insert_machine(&m, &sealed, Some(audit))
            .await?;
        self.changed();
        self.refresh_auto_tags(m.system_id.as_str()).await?;
        Ok(self.store().get_machine(m.system_id.as_str()).await?)
    }

    /// Applies `change` to a machine under its lock, retrying when another
    /// region process wrote it in between.
    async fn write_machine<F>(&self, id: &str, mut change: F) -> Result<Machine, RegionError>
    where
        F: FnMut(
            &mut Machine,
            &mut MachineWrite<'_>,
            &mut Option<Map<String, Value>>,
        ) -> Result<(), RegionError>,
    {
        let sid = self.machine(id).await?.system_id.to_string();
        let lock = self.lock_for(&sid);
        let _guard = lock.lock().await;
        for _ in 0..8 {
            let current = self.store().get_machine(&sid).await?;
            let mut next = current.clone();
            let probe = current.clone();
            let mut scratch = MachineWrite::new(&probe, self.now());
            let mut secrets: Option<Map<String, Value>> = None;
            change(&mut next, &mut scratch, &mut secrets)?;
            let sealed = secrets
                .as_ref()
                .map(|s| self.inner.secrets.seal(s, self.entropy()));
            let write = MachineWrite {
                machine: &next,
                sealed_secrets: sealed.as_deref(),
                ..scratch.clone()
            };
            match self.store().update_machine(write).await {
                Ok(m) => {
                    self.changed();
                    return Ok(m);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegionError::Busy(sid))
    }

    pub async fn update_machine(
        &self,
        actor: &Actor,
        id: &str,
        req: UpdateMachine,
    ) -> Result<Machine, RegionError> {
        Self::require_admin(actor, "updating a machine")?;
        let hostname: Option<Hostname> = req.hostname.as_deref().map(str::parse).transpose()?;
        let macs = req.macs.as_deref().map(Self::parse_macs).transpose()?;
        if let Some(a) = &req.arch {
            Self::check_arch(a)?;
        }
        let zone = match &req.zone {
            Some(z) => Some(self.check_group(GroupKind::Zone, "zone", z).await?),
            None => None,
        };
        let pool = match &req.pool {
            Some(p) => Some(self.check_group(GroupKind::Pool, "pool", p).await?),
            None => None,
        };
        let sealed_now = self
            .store()
            .sealed_secrets(self.machine(id).await?.system_id.as_str())
            .await?;
        let mut old_secrets = self.inner.secrets.open(&sealed_now)?;
        let token = old_secrets.remove(MACHINE_TOKEN_KEY);
        let actor_ = actor.clone();
        let m = self
            .write_machine(id, |m, w, secrets| {
                if let Some(h) = &hostname {
                    m.hostname = h.clone();
                }
                if let Some(macs) = &macs {
                    if macs.is_empty() {
                        return Err(RegionError::invalid(
                            "macs",
                            "a machine needs at least one MAC address to boot from",
                        ));
                    }
                    m.macs = macs.clone();
                    w.replace_macs = true;
                }
                if let Some(a) = &req.arch {
                    m.arch = a.clone();
                }
                if let Some(z) = &zone {
                    m.zone = z.clone();
                }
                if let Some(p) = &pool {
                    m.pool = p.clone();
                }
                if let Some(c) = req.cpu_count {
                    m.cpu_count = c;
                }
                if let Some(mem) = req.memory_mib {
                    m.memory_mib = mem;
                }
                if req.power_type.is_some() || req.power_parameters.is_some() {
                    let new_type = req
                        .power_type
                        .clone()
                        .unwrap_or_else(|| m.power_type.clone());
                    // A new power type starts from a clean slate; the same
                    // type merges, so secrets need not be sent again.
                    let mut merged = if new_type == m.power_type {
                        let mut all = m.power_parameters.clone();
                        all.extend(old_secrets.clone());
                        all
                    } else {
                        Map::new()
                    };
                    if let Some(p) = &req.power_parameters {
                        for (k, v) in p {
                            if v.is_null() {
                                merged.remove(k);
                            } else {
                                merged.insert(k.clone(), v.clone());
                            }
                        }
                    }
                    let (public, mut secret) = self.split_power_parameters(&new_type, &merged)?;
                    m.power_type = new_type;
                    m.power_parameters = public;
                    if let Some(t) = &token {
                        secret.insert(MACHINE_TOKEN_KEY.into(), t.clone());
                    }
                    *secrets = Some(secret);
                }
                w.audit = Some(Self::audit(
                    &actor_,
                    "update",
                    format!("machine/{}", m.system_id),
                    m.hostname.to_string(),
                ));
                Ok(())
            })
            .await?;
        self.refresh_auto_tags(m.system_id.as_str()).await?;
        Ok(self.store().get_machine(m.system_id.as_str()).await?)
    }

    pub async fn delete_machine(&self, actor: &Actor, id: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a machine")?;
        let m = self.machine(id).await?;
        if matches!(
            m.status,
            MachineStatus::Deployed | MachineStatus::Deploying | MachineStatus::Allocated
        ) {
            return Err(RegionError::Model(
                kumo_model::ModelError::IllegalTransition {
                    system_id: m.system_id.to_string(),
                    action: "delete".into(),
                    status: m.status,
                    allowed: lifecycle::allowed_actions(&m.lifecycle())
                        .into_iter()
                        .map(str::to_owned)
                        .collect(),
                },
            ));
        }
        let audit = Self::audit(
            actor,
            "delete",
            format!("machine/{}", m.system_id),
            m.hostname.to_string(),
        );
        self.store()
            .delete_machine(m.system_id.as_str(), self.now(), Some(audit))
            .await?;
        self.changed();
        Ok(())
    }

    fn timeout_ms(&self, status: MachineStatus) -> Option<Millis> {
        self.inner
            .config
            .watchdog_timeouts
            .get(&status)
            .copied()
            .or_else(|| status.default_timeout_secs())
            .map(|s| s * 1000)
    }

    /// Applies a lifecycle action: the pure transition, then its effects as
    /// persisted work, in one store transaction.
    async fn transition<P>(
        &self,
        actor: &Actor,
        id: &str,
        action: Action,
        precondition: P,
    ) -> Result<Outcome, RegionError>
    where
        P: Fn(&Machine) -> Result<bool, RegionError>,
    {
        self.transition_with(actor, id, action, precondition, |_| {})
            .await
    }

    /// As `transition`, with `amend` changing the machine in the same write
    /// (a deploy stores its deployment with the status that starts it).
    async fn transition_with<P, A>(
        &self,
        actor: &Actor,
        id: &str,
        action: Action,
        precondition: P,
        amend: A,
    ) -> Result<Outcome, RegionError>
    where
        P: Fn(&Machine) -> Result<bool, RegionError>,
        A: Fn(&mut Machine),
    {
        let sid = self.machine(id).await?.system_id.to_string();
        let lock = self.lock_for(&sid);
        let _guard = lock.lock().await;
        for _ in 0..8 {
            let m = self.store().get_machine(&sid).await?;
            if !precondition(&m)? {
                return Ok(Outcome::Skipped(m));
            }
            let t = lifecycle::apply(&sid, &m.lifecycle(), &action)?;
            let now = self.now();
            let mut next = m.clone();
            next.set_lifecycle(t.state.clone());
            amend(&mut next);
            let reason = match &action {
                Action::MarkBroken { reason } | Action::Failed { reason } => reason.clone(),
                Action::WatchdogExpired => format!(
                    "no report from the machine for {} s while {}",
                    self.timeout_ms(m.status).unwrap_or(0) / 1000,
                    m.status
                ),
                _ => String::new(),
            };
            next.status_message = reason.clone();
            let mut jobs = Vec::new();
            let mut secrets: Option<Map<String, Value>> = None;
            let mut revoke = false;
            let mut new_token_hash = None;
            for e in &t.effects {
                match e {
                    Effect::PowerOn => jobs.push(NewPowerJob {
                        op: "on".into(),
                        complete_status: None,
                    }),
                    Effect::PowerOff => jobs.push(NewPowerJob {
                        op: "off".into(),
                        complete_status: None,
                    }),
                    Effect::PowerCycle => jobs.push(NewPowerJob {
                        op: "cycle".into(),
                        complete_status: None,
                    }),
                    Effect::StartWatchdog => {
                        next.deadline = self.timeout_ms(next.status).map(|t| now + t)
                    }
                    Effect::StopWatchdog => next.deadline = None,
                    Effect::IssueMachineToken | Effect::RevokeMachineToken => {
                        let mut s = self
                            .inner
                            .secrets
                            .open(&self.store().sealed_secrets(&sid).await?)?;
                        revoke = true;
                        s.remove(MACHINE_TOKEN_KEY);
                        if *e == Effect::IssueMachineToken {
                            let token = auth::random_token(self.entropy(), 32);
                            new_token_hash = Some(auth::sha256_hex(&token));
                            s.insert(MACHINE_TOKEN_KEY.into(), Value::String(token));
                        }
                        secrets = Some(s);
                    }
                }
            }
            if next.status.completed_by() == Some(lifecycle::Completion::PowerOperation) {
                if let Some(last) = jobs.last_mut() {
                    last.complete_status = Some(next.status);
                }
            }
            let sealed = secrets.map(|s| self.inner.secrets.seal(&s, self.entropy()));
            let mut message = format!("{} → {}", t.from, next.status);
            if action.name() != "report-success"
                && action.name() != "report-failure"
                && action.name() != "watchdog-expire"
            {
                message = format!("{} by {}: {message}", action.name(), actor.username);
            }
            if !reason.is_empty() {
                message = format!("{message}: {reason}");
            }
            let has_jobs = !jobs.is_empty();
            let write = MachineWrite {
                machine: &next,
                now,
                sealed_secrets: sealed.as_deref(),
                replace_macs: false,
                events: vec![NewEvent {
                    kind: "status",
                    message,
                }],
                jobs,
                audit: (actor.username != "system").then(|| {
                    Self::audit(
                        actor,
                        action.name(),
                        format!("machine/{sid}"),
                        format!("{} → {}", t.from, next.status),
                    )
                }),
                revoke_tokens: revoke,
                new_token_hash: new_token_hash.clone(),
                script_result: None,
            };
            match self.store().update_machine(write).await {
                Ok(stored) => {
                    self.changed();
                    self.inner.metrics.transitions.inc();
                    if has_jobs {
                        self.inner.power_wakeup.notify_one();
                    }
                    return Ok(Outcome::Applied(stored));
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(RegionError::Busy(sid))
    }

    fn may_use(actor: &Actor, m: &Machine, what: &str) -> Result<(), RegionError> {
        match &m.owner {
            Some(owner) if owner != &actor.username && !actor.admin => {
                Err(RegionError::Forbidden(format!(
                    "machine {} is owned by {owner}; {what} needs its owner or an admin",
                    m.system_id
                )))
            }
            _ => Ok(()),
        }
    }

    /// Runs a named action on a machine, as the API and CLI name them.
    pub async fn machine_action(
        &self,
        actor: &Actor,
        id: &str,
        name: &str,
        opts: ActionOptions,
    ) -> Result<Machine, RegionError> {
        let reason = opts.reason.clone().unwrap_or_default();
        let action = match name {
            "commission" => Action::Commission,
            "test" => Action::Test,
            "allocate" => Action::Allocate { owner: actor.username.clone() },
            "deploy" => Action::Deploy { owner: actor.username.clone() },
            "release" => Action::Release { erase: opts.erase.unwrap_or_default() },
            "abort" => Action::Abort,
            "mark-broken" => Action::MarkBroken { reason: if reason.is_empty() { "marked broken".into() } else { reason } },
            "mark-fixed" => Action::MarkFixed,
            "rescue" => Action::Rescue,
            "exit-rescue" => Action::ExitRescue,
            "power-on" | "power-off" => return self.power_request(actor, id, if name == "power-on" { "on" } else { "off" }).await,
            "power-query" => return self.power_query(actor, id).await.map(|(m, _)| m),
            other => {
                return Err(RegionError::invalid(
                    "action",
                    format!(
                        "unknown action {other:?}; actions: commission, test, allocate, deploy, release, abort, mark-broken, mark-fixed, rescue, exit-rescue, power-on, power-off, power-query"
                    ),
                ))
            }
        };
        let user_action = matches!(
            action,
            Action::Allocate { .. } | Action::Deploy { .. } | Action::Release { .. }
        );
        if !user_action {
            Self::require_admin(actor, name)?;
        }
        let deployment = if name == "deploy" {
            let m = self.machine(id).await?;
            Self::may_use(actor, &m, name)?;
            // An illegal deploy says so before it complains about images.
            lifecycle::apply(m.system_id.as_str(), &m.lifecycle(), &action)?;
            Some(
                self.plan_deployment(&m, opts.image.as_deref(), opts.user_data.clone())
                    .await?,
            )
        } else {
            None
        };
        let script_type = match name {
            "commission" => Some(ScriptType::Commissioning),
            "test" => Some(ScriptType::Testing),
            _ => None,
        };
        let script_task = match script_type {
            Some(t) => {
                let m = self.machine(id).await?;
                // As with deploy: an illegal action says so first.
                lifecycle::apply(m.system_id.as_str(), &m.lifecycle(), &action)?;
                Some(self.plan_scripts(t, opts.scripts.as_deref()).await?)
            }
            None if opts.scripts.is_some() => {
                return Err(RegionError::invalid(
                    "scripts",
                    format!("{name} runs no scripts; commission and test do"),
                ))
            }
            None => None,
        };
        let actor_ = actor.clone();
        let what = name.to_owned();
        let amend = move |m: &mut Machine| {
            if let Some(d) = &deployment {
                m.deployment = Some(d.clone());
            }
            if let Some(t) = &script_task {
                m.script_task = Some(t.clone());
            }
        };
        match self
            .transition_with(
                actor,
                id,
                action,
                move |m| {
                    Self::may_use(&actor_, m, &what)?;
                    Ok(true)
                },
                amend,
            )
            .await?
        {
            Outcome::Applied(m) | Outcome::Skipped(m) => Ok(m),
        }
    }

    /// Allocates the smallest Ready machine matching the constraints.
    pub async fn allocate(
        &self,
        actor: &Actor,
        req: AllocateRequest,
    ) -> Result<Machine, RegionError> {
        let constraints = Constraints::parse(&req.constraints)?;
        if let Some(name) = &req.agent_name {
            if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
                return Err(RegionError::Invalid {
                    field: "agent_name".into(),
                    reason: "1 to 255 printable characters".into(),
                });
            }
            // Asked before: the machine this owner already holds by that name.
            let held = MachineQuery {
                owner: Some(actor.username.clone()),
                statuses: vec![
                    MachineStatus::Allocated,
                    MachineStatus::Deploying,
                    MachineStatus::Deployed,
                    MachineStatus::FailedDeployment,
                ],
                ..Default::default()
            };
            if let Some(m) = self
                .store()
                .list_machines(&held)
                .await?
                .into_iter()
                .find(|m| m.agent_name.as_deref() == Some(name.as_str()))
            {
                return Ok(m);
            }
        }
        // Let the database narrow the field (Ready, carrying the tags); only
        // a miss reads every machine, to say which constraint ruled out how many.
        let narrowed = MachineQuery {
            statuses: vec![MachineStatus::Ready],
            tags: constraints.tags.clone(),
            ..Default::default()
        };
        for _ in 0..5 {
            let candidates = self.store().list_machines(&narrowed).await?;
            let pick = match constraints.select(&candidates) {
                Ok(m) => m.system_id.to_string(),
                Err(_) => {
                    let all = self.store().list_machines(&MachineQuery::default()).await?;
                    constraints.select(&all)?.system_id.to_string()
                }
            };
            match self
                .transition_with(
                    actor,
                    &pick,
                    Action::Allocate {
                        owner: actor.username.clone(),
                    },
                    |m| Ok(m.status == MachineStatus::Ready),
                    |m| m.agent_name = req.agent_name.clone(),
                )
                .await?
            {
                Outcome::Applied(m) => return Ok(m),
                // Someone else took it between the read and the write: choose again.
                Outcome::Skipped(_) => continue,
            }
        }
        Err(RegionError::Busy("allocation".into()))
    }

    // ---- power -------------------------------------------------------------

    /// The machine's full power parameters: public ones and unsealed secrets.
    pub async fn power_parameters(&self, m: &Machine) -> Result<Map<String, Value>, RegionError> {
        let mut params = m.power_parameters.clone();
        let mut secrets = self
            .inner
            .secrets
            .open(&self.store().sealed_secrets(m.system_id.as_str()).await?)?;
        secrets.remove(MACHINE_TOKEN_KEY);
        params.extend(secrets);
        Ok(params)
    }

    /// The machine-API token handed to a booting machine, if it has one.
    pub async fn machine_token(&self, id: &str) -> Result<Option<String>, RegionError> {
        let m = self.machine(id).await?;
        let s = self
            .inner
            .secrets
            .open(&self.store().sealed_secrets(m.system_id.as_str()).await?)?;
        Ok(s.get(MACHINE_TOKEN_KEY)
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    async fn power_request(
        &self,
        actor: &Actor,
        id: &str,
        op: &str,
    ) -> Result<Machine, RegionError> {
        let actor_ = actor.clone();
        let op_ = op.to_owned();
        let m = self
            .write_machine(id, |m, w, _| {
                Self::may_use(&actor_, m, &format!("power {op_}"))?;
                w.jobs.push(NewPowerJob {
                    op: op_.clone(),
                    complete_status: None,
                });
                w.events.push(NewEvent {
                    kind: "power",
                    message: format!("power {op_} requested by {}", actor_.username),
                });
                w.audit = Some(Self::audit(
                    &actor_,
                    &format!("power-{op_}"),
                    format!("machine/{}", m.system_id),
                    "",
                ));
                Ok(())
            })
            .await?;
        self.inner.power_wakeup.notify_one();
        Ok(m)
    }

    /// Asks the machine's BMC for its power state now, and records it.
    pub async fn power_query(
        &self,
        actor: &Actor,
        id: &str,
    ) -> Result<(Machine, PowerState), RegionError> {
        let m = self.machine(id).await?;
        Self::may_use(actor, &m, "power query")?;
        let state = self.run_power_op(&m, "query").await?;
        let m = self
            .record_power_state(m.system_id.as_str(), state, None)
            .await?;
        Ok((m, state))
    }

    async fn record_power_state(
        &self,
        sid: &str,
        state: PowerState,
        event: Option<NewEvent>,
    ) -> Result<Machine, RegionError> {
        self.write_machine(sid, |m, w, _| {
            m.power_state = state;
            if let Some(e) = &event {
                w.events.push(e.clone());
            }
            Ok(())
        })
        .await
    }

    // ---- tags, zones, pools ------------------------------------------------

    pub async fn list_tags(&self) -> Result<Vec<Tag>, RegionError> {
        Ok(self.store().list_tags().await?)
    }

    pub async fn tag(&self, name: &str) -> Result<Tag, RegionError> {
        Ok(self.store().get_tag(name).await?)
    }

    pub async fn create_tag(&self, actor: &Actor, tag: Tag) -> Result<Tag, RegionError> {
        Self::require_admin(actor, "creating a tag")?;
        Name::parse("name", &tag.name)?;
        if !tag.definition.trim().is_empty() {
            TagDefinition::compile(&tag.definition)?;
        }
        self.store().create_tag(&tag).await?;
        self.record_audit(
            actor,
            "create",
            format!("tag/{}", tag.name),
            tag.definition.clone(),
        )
        .await?;
        self.evaluate_tag(&tag).await?;
        Ok(tag)
    }

    pub async fn update_tag(&self, actor: &Actor, tag: Tag) -> Result<Tag, RegionError> {
        Self::require_admin(actor, "updating a tag")?;
        if !tag.definition.trim().is_empty() {
            TagDefinition::compile(&tag.definition)?;
        }
        self.store().update_tag(&tag).await?;
        self.record_audit(
            actor,
            "update",
            format!("tag/{}", tag.name),
            tag.definition.clone(),
        )
        .await?;
        self.evaluate_tag(&tag).await?;
        Ok(tag)
    }

    pub async fn delete_tag(&self, actor: &Actor, name: &str) -> Result<(), RegionError> {
        Self::require_admin(actor, "deleting a tag")?;
        self.store().delete_tag(name).await?;
        self.record_audit(actor, "delete", format!("tag/{name}"), "")
            .await?;
        Ok(())
    }

    pub async fn tag_machines(
        &self,
        actor: &Actor,
        name: &str,
        req: UpdateTagMachines,
    ) -> Result<(), RegionError> {
        Self::require_admin(actor, "tagging machines")?;
        let tag = self.store().get_tag(name).await?;
        if !tag.definition.is_empty() {
            return Err(RegionError::invalid(
                "tag",
                format!(
                    "{name} is automatic (defined by {:?}); machines cannot be added by hand",
                    tag.definition
                ),
            ));
        }
        let mut add = Vec::new();
        for id in &req.add {
            add.push(self.machine(id).await?.system_id.to_string());
        }
        let mut remove = Vec::new();
        for id in &req.remove {
            remove.push(self.machine(id).await?.system_id.to_string());
        }
        self.store().tag_machines(name, &add, &remove).await?;
        self.record_audit(
            actor,
            "tag",
            format!("tag/{name}"),
            format!("add {add:?} remove {remove:?}"),
        )
        .await?;
        Ok(())
    }

    /// Re-evaluates an automatic tag over every machine.
    async fn evaluate_tag(&self, tag: &Tag) -> Result<(), RegionError> {
        if tag.definition.trim().is_empty() {
            return Ok(());
        }
        let def = TagDefinition::compile(&tag.definition)?;
        let machines = self.store().list_machines(&MachineQuery::default()).await?;
        let members: Vec<String> = machines
            .iter()
            .filter(|m| def.matches(m).unwrap_or(false))
            .map(|m| m.system_id.to_string())
            .collect();
        self.store()
            .set_auto_tag_members(&tag.name, &members)
            .await?;
        Ok(())
    }

    /// Re-evaluates every automatic tag for one machine.
    async fn refresh_auto_tags(&self, system_id: &str) -> Result<(), RegionError> {
        let m = self.store().get_machine(system_id).await?;
        let mut matched = Vec::new();
        for tag in self.store().list_tags().await? {
            if tag.definition.trim().is_empty() {
                continue;
            }
            if let Ok(def) = TagDefinition::compile(&tag.definition) {
                if def.matches(&m).unwrap_or(false) {
                    matched.push(tag.name);
                }
            }
        }
        self.store()
            .set_machine_auto_tags(system_id, &matched)
            .await?;
        Ok(())
    }

    pub async fn list_groups(&self, kind: GroupKind) -> Result<Vec<Group>, RegionError> {
        Ok(self.store().list_groups(kind).await?)
    }

    pub async fn create_group(
        &self,
        actor: &Actor,
        kind: GroupKind,
        g: Group,
    ) -> Result<Group, RegionError> {
        let field = if kind == GroupKind::Zone {
            "zone"
        } else {
            "pool"
        };
        Self::require_admin(actor, &format!("creating a {field}"))?;
        Name::parse("name", &g.name)?;
        self.store().create_group(kind, &g).await?;
        self.record_audit(
            actor,
            "create",
            format!("{field}/{}", g.name),
            g.description.clone(),
        )
        .await?;
        Ok(g)
    }

    pub async fn delete_group(
        &self,
        actor: &Actor,
        kind: GroupKind,
        name: &str,
    ) -> Result<(), RegionError> {
        let field = if kind == GroupKind::Zone {
            "zone"
        } else {
            "pool"
        };
        Self::require_admin(actor, &format!("deleting a {field}"))?;
        if name == "default" {
            return Err(RegionError::invalid(
                "name",
                format!("the default {field} cannot be deleted"),
            ));
        }
        self.store().delete_group(kind, name).await?;
        self.record_audit(actor, "delete", format!("{field}/{name}"), "")
            .await?;
        Ok(())
    }

    // ---- the machine-facing API -----------------------------------------

    /// Finds the machine a machine-API token belongs to.
    pub async fn machine_for_token(&self, token: &str) -> Result<Machine, RegionError> {
        self.store()
            .machine_by_token_hash(&auth::sha256_hex(token))
            .await?
            .ok_or(RegionError::Unauthorized)
    }

    /// What a booted machine should do, from its status.
    pub async fn instructions(&self, token: &str) -> Result<Instructions, RegionError> {
        let m = self.machine_for_token(token).await?;
        let task = match m.status {
            MachineStatus::Commissioning => "commission",
            MachineStatus::Testing => "test",
            MachineStatus::Deploying => "deploy",
            MachineStatus::DiskErasing => "erase",
            MachineStatus::EnteringRescueMode | MachineStatus::RescueMode => "rescue",
            _ => "none",
        };
        Ok(Instructions {
            system_id: m.system_id.to_string(),
            hostname: m.hostname.to_string(),
            status: m.status,
            task: task.into(),
            erase: m.erase,
            deploy: self.deploy_instructions(&m).await?,
        })
    }

    /// A machine reports progress (which also feeds the watchdog) or the
    /// end of its current task.
    pub async fn machine_report(
        &self,
        token: &str,
        report: StatusReport,
    ) -> Result<Machine, RegionError> {
        let m = self.machine_for_token(token).await?;
        let sid = m.system_id.to_string();
        let system = Actor::system();
        match (report.event, report.result) {
            (ReportEvent::Progress, _) => {
                let msg = report.message.clone();
                self.write_machine(&sid, |m, w, _| {
                    if m.status.is_in_progress() {
                        m.deadline = self.timeout_ms(m.status).map(|t| w.now + t);
                    }
                    m.status_message = msg.clone();
                    w.events.push(NewEvent {
                        kind: "progress",
                        message: msg.clone(),
                    });
                    Ok(())
                })
                .await
            }
            (ReportEvent::Finished, Some(ReportResult::Failure)) => {
                let reason = if report.message.is_empty() {
                    "the machine reported failure".into()
                } else {
                    report.message
                };
                match self
                    .transition(&system, &sid, Action::Failed { reason }, |_| Ok(true))
                    .await?
                {
                    Outcome::Applied(m) | Outcome::Skipped(m) => Ok(m),
                }
            }
            (ReportEvent::Finished, _) => {
                // Success needs every script of the task passed, whatever
                // the machine's agent concluded.
                if let Some(reason) = self.script_failures(&m).await? {
                    return match self
                        .transition(&system, &sid, Action::Failed { reason }, |_| Ok(true))
                        .await?
                    {
                        Outcome::Applied(m) | Outcome::Skipped(m) => Ok(m),
                    };
                }
                if !report.message.is_empty() {
                    self.store()
                        .add_machine_event(
                            &sid,
                            self.now(),
                            &NewEvent {
                                kind: "progress",
                                message: report.message,
                            },
                        )
                        .await?;
                }
                match self
                    .transition(&system, &sid, Action::Succeeded, |_| Ok(true))
                    .await?
                {
                    Outcome::Applied(m) | Outcome::Skipped(m) => Ok(m),
                }
            }
        }
    }

    /// A commissioning machine uploads its hardware inventory.
    pub async fn machine_inventory(
        &self,
        token: &str,
        inv: Inventory,
    ) -> Result<Machine, RegionError> {
        let m = self.machine_for_token(token).await?;
        if m.status != MachineStatus::Commissioning {
            return Err(RegionError::invalid(
                "status",
                format!("machine {} is {}, not commissioning", m.system_id, m.status),
            ));
        }
        let sid = m.system_id.to_string();
        let summary = format!(
            "inventory: {} CPUs, {} MiB, {} disks, {} NICs",
            inv.cpu.count,
            inv.memory_mib,
            inv.disks.len(),
            inv.nics.len()
        );
        let m = self
            .write_machine(&sid, |m, w, _| {
                m.apply_inventory(inv.clone());
                w.replace_macs = true;
                w.events.push(NewEvent {
                    kind: "progress",
                    message: summary.clone(),
                });
                Ok(())
            })
            .await?;
        self.refresh_auto_tags(m.system_id.as_str()).await?;
        Ok(self.store().get_machine(&sid).await?)
    }

    /// An unknown machine's ephemeral environment registers it: a New
    /// machine with a generated host name, its MACs (the boot MAC first),
    /// power type manual and the inventory it sent, with automatic tags
    /// evaluated. A machine already holding one of the MACs is not
    /// duplicated: `already_enlisted` names it.
    pub async fn enlist(&self, req: EnlistRequest) -> Result<Machine, RegionError> {
        let mut macs: Vec<MacAddress> = Vec::new();
        if let Some(raw) = &req.boot_mac {
            macs.push(raw.parse().map_err(|e: kumo_model::ModelError| {
                RegionError::invalid("boot_mac", e.to_string())
            })?);
        }
        for nic in &req.inventory.nics {
            if !macs.contains(&nic.mac) {
                macs.push(nic.mac);
            }
        }
        if macs.is_empty() {
            return Err(RegionError::invalid(
                "inventory.nics",
                "an enlisting machine needs at least one MAC address to boot from",
            ));
        }
        for mac in &macs {
            if let Some(m) = self.store().find_machine_by_mac(&mac.to_string()).await? {
                return Err(Self::already_enlisted(&m, mac));
            }
        }
        let now = self.now();
        let mut id = [0u8; 6];
        self.entropy().fill(&mut id);
        let system_id = SystemId::from_random(id);
        let hostname: Hostname = format!("node-{system_id}").parse()?;
        let summary = format!(
            "enlisted: {} CPUs, {} MiB, {} disks, {} NICs",
            req.inventory.cpu.count,
            req.inventory.memory_mib,
            req.inventory.disks.len(),
            req.inventory.nics.len()
        );
        let mut m = Machine {
            system_id,
            hostname,
            arch: "amd64".into(),
            status: MachineStatus::New,
            previous_status: None,
            status_message: String::new(),
            owner: None,
            agent_name: None,
            commissioned: false,
            erase: EraseMode::None,
            macs,
            power_type: "manual".into(),
            power_parameters: Map::new(),
            power_state: PowerState::Unknown,
            zone: self.check_group(GroupKind::Zone, "zone", "default").await?,
            pool: self.check_group(GroupKind::Pool, "pool", "default").await?,
            tags: Vec::new(),
            cpu_count: 0,
            memory_mib: 0,
            storage_bytes: 0,
            inventory: None,
            deadline: None,
            deployment: None,
            script_task: None,
            version: 1,
            created_at: now,
            updated_at: now,
        };
        m.apply_inventory(req.inventory);
        let sealed = self.inner.secrets.seal(&Map::new(), self.entropy());
        let audit = Self::audit(
            &Actor::system(),
            "enlist",
            format!("machine/{}", m.system_id),
            summary,
        );
        match self.store().insert_machine(&m, &sealed, Some(audit)).await {
            // Another enlistment of the same machine won the race.
            Err(StoreError::Duplicate {
                what: "mac_address",
                value,
            }) => {
                if let Some(other) = self.store().find_machine_by_mac(&value).await? {
                    return Err(Self::already_enlisted(&other, &value));
                }
                return Err(RegionError::AlreadyExists {
                    what: "mac_address",
                    value,
                });
            }
            r => r?,
        }
        self.changed();
        self.refresh_auto_tags(m.system_id.as_str()).await?;
        Ok(self.store().get_machine(m.system_id.as_str()).await?)
    }

    fn already_enlisted(m: &Machine, mac: &impl std::fmt::Display) -> RegionError {
        RegionError::AlreadyEnlisted {
            system_id: m.system_id.to_string(),
            hostname: m.hostname.to_string(),
            mac: mac.to_string(),
        }
    }
}
