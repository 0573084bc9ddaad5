//! Messages between the controller and machine agents.
//!
//! An agent long-polls `MachineView` (every unit on its machine, with the
//! unit's committed `UniterState`) and answers each hook with one
//! `HookCommit`, which the controller applies atomically or not at all.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::uniter::{Hook, UniterState};

/// Relation or leader settings: string keys and values, as in Juju.
pub type Settings = BTreeMap<String, String>;

/// A settings bag with the version the controller bumps on every change,
/// so an agent can tell "changed since I last ran relation-changed".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    pub version: u64,
    pub data: Settings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Life {
    #[default]
    Alive,
    Dying,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharmRef {
    pub name: String,
    /// The archive's SHA-256; agents fetch `/agent/v1/charms/{sha256}`.
    pub sha256: String,
}

/// One relation as one of its units sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationView {
    pub id: u64,
    /// This unit's endpoint.
    pub endpoint: String,
    pub interface: String,
    pub remote_application: String,
    pub life: Life,
    /// Remote units in the relation, with their unit settings.
    pub remote_units: BTreeMap<String, Versioned>,
    /// The remote application's settings (written by its leader).
    pub remote_app: Versioned,
    /// This unit's own settings, so `relation-get - <self>` works.
    pub local_unit: Settings,
    /// This application's settings (only its leader may write them).
    pub local_app: Settings,
}

/// Juju's `resolved`: the operator's answer to a failed hook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolve {
    /// Bumped by every `kumo resolve`; the state remembers the last seen.
    pub seq: u64,
    /// Rerun the failed hook (true) or count it as done (false).
    pub retry: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub id: u64,
    pub name: String,
    pub params: BTreeMap<String, serde_json::Value>,
    /// `kumo exec`: a shell command run in a hook context instead of a
    /// charm action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Everything the agent needs to decide and run the unit's next hook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitView {
    pub unit: String,
    pub application: String,
    pub charm: CharmRef,
    /// The application's config with the charm's defaults filled in.
    pub config: BTreeMap<String, serde_json::Value>,
    pub life: Life,
    pub leader: bool,
    pub leader_settings: Versioned,
    pub relations: Vec<RelationView>,
    pub resolve: Resolve,
    pub private_address: String,
    pub public_address: String,
    /// Actions queued and not yet run, oldest first.
    pub actions: Vec<ActionRequest>,
}

impl UnitView {
    /// A stable digest of the config, so the state can remember which
    /// config its last config-changed saw.
    pub fn config_digest(&self) -> String {
        digest(&self.config)
    }

    pub fn relation(&self, id: u64) -> Option<&RelationView> {
        self.relations.iter().find(|r| r.id == id)
    }
}

pub fn digest<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).expect("serialisable");
    let hash = Sha256::digest(bytes);
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// A unit as its machine agent receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssignedUnit {
    pub view: UnitView,
    pub state: UniterState,
    /// Bumped by every committed hook: a commit names the version it
    /// started from, so a retried commit is applied once.
    pub state_version: u64,
}

/// The answer to an agent's long poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineView {
    pub model: String,
    pub machine: String,
    pub units: Vec<AssignedUnit>,
    /// Digest of this whole view; the next poll sends it back and returns
    /// when the view differs.
    pub tag: String,
    /// Seconds between update-status hooks.
    pub update_status_interval: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadState {
    Unknown,
    Maintenance,
    Waiting,
    Blocked,
    Active,
    Error,
    Terminated,
}

impl WorkloadState {
    pub fn parse(s: &str) -> Option<WorkloadState> {
        Some(match s {
            "unknown" => WorkloadState::Unknown,
            "maintenance" => WorkloadState::Maintenance,
            "waiting" => WorkloadState::Waiting,
            "blocked" => WorkloadState::Blocked,
            "active" => WorkloadState::Active,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadState::Unknown => "unknown",
            WorkloadState::Maintenance => "maintenance",
            WorkloadState::Waiting => "waiting",
            WorkloadState::Blocked => "blocked",
            WorkloadState::Active => "active",
            WorkloadState::Error => "error",
            WorkloadState::Terminated => "terminated",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    pub state: WorkloadState,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub number: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        write!(f, "{}/{p}", self.number)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_uppercase().as_str() {
            "DEBUG" | "TRACE" => Level::Debug,
            "INFO" => Level::Info,
            "WARNING" | "WARN" => Level::Warning,
            "ERROR" | "CRITICAL" => Level::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: Level,
    pub message: String,
}

/// What a finished action hands back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub id: u64,
    /// "completed" or "failed".
    pub status: String,
    pub message: String,
    pub results: BTreeMap<String, serde_json::Value>,
    pub stdout: String,
    pub stderr: String,
}

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum HookResult {
    Succeeded,
    /// Nonzero exit or a signal; the unit goes into error until resolved.
    Failed {
        message: String,
    },
}

/// One hook's effects, sent when it ends and applied by the controller in
/// one transaction. Changes made through hook tools are only in here if
/// the hook succeeded, as in Juju, so a failed hook changes nothing but the
/// unit's error and its log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookCommit {
    pub unit: String,
    /// The `state_version` the hook started from.
    pub base_version: u64,
    pub hook: Hook,
    pub result: HookResult,
    /// The state to store (the old one with `error` set, on failure).
    pub state: UniterState,
    /// Relation id → this unit's settings changes (`None` deletes a key).
    pub unit_settings: BTreeMap<u64, BTreeMap<String, Option<String>>>,
    /// Relation id → this application's settings changes (leader only).
    pub app_settings: BTreeMap<u64, BTreeMap<String, Option<String>>>,
    pub leader_settings: BTreeMap<String, Option<String>>,
    pub workload_status: Option<WorkloadStatus>,
    /// The unit's open ports after the hook, when it changed them.
    pub ports: Option<BTreeSet<Port>>,
    pub logs: Vec<LogLine>,
    /// The tail of the hook's stdout and stderr, shown when it fails.
    pub output: String,
    pub action: Option<ActionOutcome>,
}

/// The controller's answer to a commit: the unit's state as now stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitAck {
    pub state: UniterState,
    pub state_version: u64,
}
