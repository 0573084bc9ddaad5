//! Hardware inventory, as a commissioned machine reports it.

use serde::{Deserialize, Serialize};

use crate::MacAddress;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Inventory {
    pub cpu: Cpu,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub dmi: Dmi,
    pub bmc: Option<Bmc>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cpu {
    pub model: String,
    pub count: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub model: String,
    pub serial: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: MacAddress,
    #[serde(default)]
    pub driver: String,
    #[serde(default)]
    pub link_up: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dmi {
    pub vendor: String,
    pub product: String,
    pub serial: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bmc {
    pub address: String,
}
