//! The orchestration API's request and response bodies (models, machines,
//! applications, units, relations, actions), shared by the controller and
//! the CLI. The agents' own protocol is `kumo-uniter`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bootstrap {
    /// Where agents reach the controller (`http://10.248.0.1:5240`).
    pub agent_url: String,
    /// The Linux bridge container machines are attached to.
    pub bridge: String,
    /// Addresses for container machines: `10.248.0.100-10.248.0.199`.
    pub address_range: String,
    /// Prefix length of the bridge's subnet.
    pub prefix: u8,
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// APT proxy written into every machine (`http://10.248.0.1:8000/`).
    pub apt_proxy: Option<String>,
    /// Keys allowed to log in as root on machines (`kumo ssh`).
    #[serde(default)]
    pub authorized_keys: Vec<String>,
    /// Set by the controller: a short id in its machines' names, so two
    /// controllers on one host never touch each other's containers.
    #[serde(default)]
    pub controller_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub provider: String,
    pub machines: usize,
    pub applications: usize,
    pub units: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateModel {
    pub name: String,
    #[serde(default)]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMachines {
    /// `lxd:N`, `ssh:user@host`, or none for a new machine.
    #[serde(default)]
    pub placement: Option<String>,
    #[serde(default)]
    pub constraints: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// SHA-256 of an uploaded charm archive.
    pub charm: String,
    pub application: Option<String>,
    /// `key=value` settings, typed against the charm's schema.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub num_units: u32,
    /// One placement per unit (`3`, `lxd:3`); missing ones get new machines.
    #[serde(default)]
    pub to: Vec<String>,
    #[serde(default)]
    pub constraints: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddUnits {
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relate {
    /// `app` or `app:endpoint`.
    pub a: String,
    pub b: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetConfig {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Keys to return to the charm's default.
    #[serde(default)]
    pub reset: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub value: Option<serde_json::Value>,
    pub default: Option<serde_json::Value>,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// "user" when set, "default" otherwise.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolve {
    #[serde(default = "yes")]
    pub retry: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunAction {
    pub name: String,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    pub command: String,
    /// Units by name, or applications (every unit).
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionInfo {
    pub id: u64,
    pub unit: String,
    pub name: String,
    pub status: String,
    pub message: String,
    pub results: BTreeMap<String, serde_json::Value>,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRequest {
    /// The file's name, for error messages.
    pub file: String,
    pub text: String,
    /// Charm name → SHA-256 of its uploaded archive.
    pub charms: BTreeMap<String, String>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundlePlan {
    /// Each step as `kumo plan` prints it.
    pub steps: Vec<String>,
    pub applied: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CharmUploaded {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub id: i64,
    pub entity: String,
    pub at: i64,
    pub level: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub model: StatusModel,
    pub applications: BTreeMap<String, AppStatus>,
    pub units: BTreeMap<String, UnitStatus>,
    pub machines: BTreeMap<String, MachineStatus>,
    pub relations: Vec<RelationStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusModel {
    pub name: String,
    pub provider: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub charm: String,
    pub status: String,
    pub message: String,
    pub units: usize,
    pub exposed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub workload: String,
    pub message: String,
    /// allocating, executing, idle, error or lost.
    pub agent: String,
    pub agent_message: String,
    pub machine: String,
    pub address: Option<String>,
    pub ports: Vec<String>,
    pub leader: bool,
    pub life: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineStatus {
    pub state: String,
    pub message: String,
    pub address: Option<String>,
    pub instance: Option<String>,
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationStatus {
    pub id: u64,
    /// `app:endpoint` of each side, provider first.
    pub ends: Vec<String>,
    pub interface: String,
}

/// `kumo show-unit`: status plus relation data and the last failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitDetail {
    pub name: String,
    pub status: UnitStatus,
    pub relations: Vec<UnitRelation>,
    pub last_failure: Option<String>,
    pub state: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRelation {
    pub id: u64,
    pub endpoint: String,
    pub remote_application: String,
    pub local_settings: BTreeMap<String, String>,
    pub remote_units: BTreeMap<String, BTreeMap<String, String>>,
    pub application_settings: BTreeMap<String, String>,
}
