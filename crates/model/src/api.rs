//! The region API's request and response bodies, shared by the server and
//! the CLI client so both sides agree by construction.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::constraints::Constraints;
use crate::lifecycle::{EraseMode, MachineStatus};
use crate::{Inventory, Machine, Millis};

pub const API_VERSION: &str = "v1";

/// Body of every 4xx/5xx answer: `{"error": {...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ApiErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// Stable, machine-readable: clients branch on this, never on message.
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_actions: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMachine {
    pub hostname: String,
    #[serde(default)]
    pub arch: Option<String>,
    pub macs: Vec<String>,
    #[serde(default)]
    pub power_type: Option<String>,
    #[serde(default)]
    pub power_parameters: Map<String, Value>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub cpu_count: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Every field is optional; absent fields are left as they are. Power
/// parameters are merged key by key, so a secret need not be sent again.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateMachine {
    pub hostname: Option<String>,
    pub arch: Option<String>,
    pub macs: Option<Vec<String>>,
    pub power_type: Option<String>,
    pub power_parameters: Option<Map<String, Value>>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    pub cpu_count: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// Options for `POST /machines/{id}/actions/{action}`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionOptions {
    #[serde(default)]
    pub erase: Option<EraseMode>,
    #[serde(default)]
    pub reason: Option<String>,
    /// `deploy`: the image to write [default: `debian-12`, or the only one].
    #[serde(default)]
    pub image: Option<String>,
    /// `deploy`: cloud-init user-data for the first boot.
    #[serde(default)]
    pub user_data: Option<String>,
    /// `commission`, `test`: the scripts to run, in order [default: every
    /// script of the task's type].
    #[serde(default)]
    pub scripts: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    /// Juju-style constraint string, e.g. `tags=compute cores=4`.
    #[serde(default)]
    pub constraints: String,
    /// Names what the machine is for (MAAS's agent_name). Asking again
    /// with the same name returns the machine the owner already has by
    /// that name, so a retried or crashed caller never takes two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MachineView {
    #[serde(flatten)]
    pub machine: Machine,
    /// What may be asked of the machine in its current status.
    pub allowed_actions: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineFilter {
    pub status: Option<String>,
    pub hostname: Option<String>,
    pub tags: Option<String>,
    pub zone: Option<String>,
    pub pool: Option<String>,
    pub owner: Option<String>,
    pub arch: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MachineEvent {
    pub id: i64,
    pub system_id: String,
    pub at: Millis,
    /// `status`, `power`, `progress`, `script`, `boot`, `network` or `error`.
    pub kind: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: Millis,
    pub username: String,
    pub action: String,
    pub object: String,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Tag {
    pub name: String,
    /// A CEL expression over hardware facts; empty for a manual tag.
    #[serde(default)]
    pub definition: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTagMachines {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A zone or a resource pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct User {
    pub username: String,
    pub admin: bool,
}

/// An API key as created: the secret is shown once and stored hashed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewApiKey {
    pub username: String,
    pub key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PowerStateView {
    pub system_id: String,
    pub power_state: crate::PowerState,
}

/// What a machine reports to the machine-facing API (`/metadata/v1`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// `progress` (a heartbeat with a message) or `finished`.
    pub event: ReportEvent,
    #[serde(default)]
    pub result: Option<ReportResult>,
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportEvent {
    Progress,
    Finished,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReportResult {
    Success,
    Failure,
}

/// What the machine-facing API tells a booted machine to do.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Instructions {
    pub system_id: String,
    pub hostname: String,
    pub status: MachineStatus,
    /// `commission`, `test`, `deploy`, `erase`, `rescue`, or `none`.
    pub task: String,
    pub erase: EraseMode,
    /// For `deploy`: the image to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<crate::deploy::DeployInstructions>,
}

/// Query of `PUT /api/v1/images/{name}`: what the uploaded body is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUpload {
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_os")]
    pub os: String,
    #[serde(default)]
    pub release: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    /// SHA-256 of the body; an upload that does not match is refused.
    pub sha256: String,
    #[serde(default)]
    pub raw_size: u64,
    #[serde(default)]
    pub raw_sha256: String,
}

fn default_os() -> String {
    "debian".into()
}

fn default_arch() -> String {
    "amd64".into()
}

/// Body of `POST /api/v1/ssh-keys`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSshKey {
    pub key: String,
}

/// The NoCloud seed of a deploying machine (`GET /metadata/v1/cloud-init`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudInitDocuments {
    pub meta_data: String,
    pub network_config: String,
    pub vendor_data: String,
    pub user_data: String,
}

/// Answer to `POST /metadata/v1/installed`: who restarts the machine,
/// `power` (its power driver) or `self` (manual power: the agent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledReply {
    pub reboot: String,
}

/// Re-export for API users building allocation requests.
pub type AllocationConstraints = Constraints;

/// The inventory a commissioning machine uploads.
pub type InventoryReport = Inventory;

/// What an unknown machine's ephemeral environment sends to enlist itself
/// (`POST /metadata/v1/enlist`, no token: the machine has none yet).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EnlistRequest {
    pub inventory: Inventory,
    /// The MAC it network-booted from; listed first among its MACs.
    #[serde(default)]
    pub boot_mac: Option<String>,
}
