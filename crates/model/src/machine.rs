//! A machine as the region stores it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lifecycle::{EraseMode, LifecycleState, MachineStatus};
use crate::{Hostname, Inventory, MacAddress, Millis, Name, SystemId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    #[default]
    Unknown,
    /// The last power operation failed; the event log says why.
    Error,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
            PowerState::Error => "error",
        }
    }
    pub fn parse(s: &str) -> PowerState {
        match s {
            "on" => PowerState::On,
            "off" => PowerState::Off,
            "error" => PowerState::Error,
            _ => PowerState::Unknown,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub system_id: SystemId,
    pub hostname: Hostname,
    pub arch: String,
    pub status: MachineStatus,
    pub previous_status: Option<MachineStatus>,
    /// The latest progress or failure message, shown beside the status.
    pub status_message: String,
    pub owner: Option<String>,
    /// Who, on the owner's behalf, allocated the machine (MAAS's
    /// agent_name): a controller names the model machine it allocates
    /// for, so asking again after a crash finds it instead of taking
    /// another. Cleared with the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
    pub commissioned: bool,
    pub erase: EraseMode,
    pub macs: Vec<MacAddress>,
    pub power_type: String,
    /// Power parameters. Secret ones are held encrypted by the store and
    /// are never part of what the API returns.
    pub power_parameters: Map<String, Value>,
    pub power_state: PowerState,
    pub zone: Name,
    pub pool: Name,
    /// Manual and automatic tags, sorted.
    pub tags: Vec<String>,
    pub cpu_count: u32,
    pub memory_mib: u64,
    pub storage_bytes: u64,
    pub inventory: Option<Inventory>,
    /// When the watchdog fails the current in-progress status, unless the
    /// machine reports before then.
    pub deadline: Option<Millis>,
    /// The current or last deployment; `None` for a machine never deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<crate::deploy::Deployment>,
    /// The scripts of the current or last commissioning or testing task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_task: Option<crate::scripts::ScriptTask>,
    /// Bumped on every write; writers compare-and-swap on it.
    pub version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

impl Machine {
    pub fn lifecycle(&self) -> LifecycleState {
        LifecycleState {
            status: self.status,
            previous_status: self.previous_status,
            owner: self.owner.clone(),
            commissioned: self.commissioned,
            erase: self.erase,
        }
    }

    pub fn set_lifecycle(&mut self, st: LifecycleState) {
        self.status = st.status;
        self.previous_status = st.previous_status;
        self.owner = st.owner;
        if self.owner.is_none() {
            self.agent_name = None;
        }
        self.commissioned = st.commissioned;
        self.erase = st.erase;
    }

    /// What the machine boots into over the network now.
    pub fn boot_purpose(&self) -> crate::boot::BootPurpose {
        let installed = self
            .deployment
            .as_ref()
            .is_some_and(|d| d.stage == crate::deploy::DeployStage::Installed);
        crate::boot::BootPurpose::for_machine(self.status, installed)
    }

    /// Takes cores, memory and storage from a reported inventory.
    pub fn apply_inventory(&mut self, inv: Inventory) {
        self.cpu_count = inv.cpu.count;
        self.memory_mib = inv.memory_mib;
        self.storage_bytes = inv.disks.iter().map(|d| d.size_bytes).sum();
        for nic in &inv.nics {
            if !self.macs.contains(&nic.mac) {
                self.macs.push(nic.mac);
            }
        }
        self.inventory = Some(inv);
    }
}
