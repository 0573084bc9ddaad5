//! A model as the controller stores it: one document for the model (its
//! applications and relations), one per machine, unit and action.

use std::collections::{BTreeMap, BTreeSet};

use kumo_uniter::{
    ActionOutcome, CharmRef, Life, Port, Resolve, UniterState, Versioned, WorkloadStatus,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// systemd-nspawn containers on the controller's host.
    #[default]
    Containers,
    /// Existing hosts reached over SSH (`add-machine ssh:user@host`).
    Manual,
    /// The region's machines, allocated by constraints and deployed.
    Metal,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Containers => "containers",
            ProviderKind::Manual => "manual",
            ProviderKind::Metal => "metal",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDoc {
    pub name: String,
    pub provider: ProviderKind,
    pub applications: BTreeMap<String, AppDoc>,
    pub relations: BTreeMap<u64, RelationDoc>,
    /// Removed relations some unit has not yet left (run
    /// relation-broken for): units still see them, as dying, and may
    /// still read secrets through them until they have.
    #[serde(default)]
    pub dying_relations: BTreeMap<u64, RelationDoc>,
    pub next_machine: u32,
    pub next_relation: u64,
    pub next_action: u64,
    pub created_at: i64,
    /// Charm secrets by owning application and name, sealed with the
    /// region's key: never stored or shown in clear.
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// The user who added the model: metal machines are allocated to
    /// them, so deployed machines let in their SSH keys.
    #[serde(default)]
    pub owner: Option<String>,
}

impl ModelDoc {
    pub fn new(name: &str, provider: ProviderKind, now: i64) -> ModelDoc {
        ModelDoc {
            name: name.to_string(),
            provider,
            applications: BTreeMap::new(),
            relations: BTreeMap::new(),
            dying_relations: BTreeMap::new(),
            next_machine: 0,
            next_relation: 1,
            next_action: 1,
            created_at: now,
            secrets: BTreeMap::new(),
            owner: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppDoc {
    pub charm: CharmRef,
    /// Options set explicitly (typed); the charm's defaults fill the rest.
    pub config: BTreeMap<String, serde_json::Value>,
    pub constraints: Option<String>,
    pub exposed: bool,
    pub next_unit: u32,
    pub leader: Option<String>,
    pub leader_settings: Versioned,
    pub life: Life,
    /// A subordinate's units follow its principals' units (one on each of
    /// their machines) through container-scoped relations.
    #[serde(default)]
    pub subordinate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationEnd {
    pub application: String,
    pub endpoint: String,
    /// provides, requires or peers.
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationDoc {
    pub id: u64,
    pub interface: String,
    pub ends: Vec<RelationEnd>,
    /// Application name → its application settings.
    pub app_data: BTreeMap<String, Versioned>,
    /// Relates a subordinate's unit with its principal unit only.
    #[serde(default)]
    pub container_scope: bool,
}

impl RelationDoc {
    pub fn key(&self) -> String {
        self.ends
            .iter()
            .map(|e| format!("{}:{}", e.application, e.endpoint))
            .collect::<Vec<_>>()
            .join(" ")
    }
    pub fn end_of(&self, app: &str) -> Option<&RelationEnd> {
        self.ends.iter().find(|e| e.application == app)
    }
    /// The other end; a peer relation's only end is its own other end.
    pub fn other(&self, app: &str) -> Option<&RelationEnd> {
        if self.is_peer() {
            return self.ends.first().filter(|e| e.application == app);
        }
        self.ends.iter().find(|e| e.application != app)
    }
    pub fn is_peer(&self) -> bool {
        self.ends.len() == 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Recorded; the provisioner has not made it yet.
    Pending,
    /// Made; its agent has not called in yet.
    Provisioning,
    Started,
    /// The provider failed; `message` says why. The provisioner retries.
    Error,
    Dying,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineDoc {
    pub id: String,
    pub state: MachineState,
    pub message: String,
    /// The provider's name for it (a container name, `user@host`, a
    /// region machine's system id).
    pub instance: Option<String>,
    pub address: Option<String>,
    pub constraints: Option<String>,
    /// `ssh:user@host` for manual machines.
    pub placement: Option<String>,
    /// SHA-256 of the agent's token.
    pub token_hash: String,
    pub agent_seen: Option<i64>,
    /// The bundle machine this was made for, so a second deploy of the
    /// bundle finds it.
    #[serde(default)]
    pub bundle_machine: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitDoc {
    pub name: String,
    pub application: String,
    pub machine: String,
    pub life: Life,
    pub state: UniterState,
    pub state_version: u64,
    pub workload: WorkloadStatus,
    pub ports: BTreeSet<Port>,
    /// Relation id → this unit's settings.
    pub settings: BTreeMap<u64, Versioned>,
    pub resolve: Resolve,
    /// The output of the last failed hook, shown by `show-unit`.
    pub last_failure: Option<String>,
    /// For a subordinate's unit: the principal unit it serves.
    #[serde(default)]
    pub principal: Option<String>,
}

impl UnitDoc {
    pub fn number(&self) -> u32 {
        self.name
            .rsplit('/')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDoc {
    pub id: u64,
    pub unit: String,
    pub name: String,
    pub params: BTreeMap<String, serde_json::Value>,
    /// pending, running, completed or failed.
    pub status: String,
    pub outcome: Option<ActionOutcome>,
    pub enqueued_at: i64,
    pub completed_at: Option<i64>,
}

/// Splits `app/3`.
pub fn unit_app(unit: &str) -> &str {
    unit.split('/').next().unwrap_or(unit)
}

pub fn unit_entity(unit: &str) -> String {
    format!("unit-{}", unit.replace('/', "-"))
}

pub fn machine_entity(machine: &str) -> String {
    format!("machine-{}", machine.replace('/', "-"))
}
