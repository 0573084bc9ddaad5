//! What a machine boots into when it network-boots, decided from its
//! status alone, so region, rack and tests agree without asking each other.

use serde::{Deserialize, Serialize};

use crate::lifecycle::MachineStatus;

/// What the rack's iPXE script for a machine does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootPurpose {
    /// An unknown MAC: the ephemeral environment registers it as New.
    Enlist,
    /// The ephemeral environment gathers inventory and runs scripts.
    Commission,
    /// The ephemeral environment runs the testing scripts.
    Test,
    /// The ephemeral environment writes the image to disk.
    Deploy,
    /// The ephemeral environment erases the disks.
    Erase,
    /// The ephemeral environment, left running for an operator.
    Rescue,
    /// Boot from the first local disk.
    LocalDisk,
    /// Nothing to do over the network: power off.
    PowerOff,
}

impl BootPurpose {
    pub fn name(self) -> &'static str {
        match self {
            BootPurpose::Enlist => "enlist",
            BootPurpose::Commission => "commission",
            BootPurpose::Test => "test",
            BootPurpose::Deploy => "deploy",
            BootPurpose::Erase => "erase",
            BootPurpose::Rescue => "rescue",
            BootPurpose::LocalDisk => "local-disk",
            BootPurpose::PowerOff => "poweroff",
        }
    }

    /// Whether the script boots the ephemeral kernel and initramfs.
    pub fn is_ephemeral(self) -> bool {
        !matches!(self, BootPurpose::LocalDisk | BootPurpose::PowerOff)
    }

    /// The purpose for a known machine in `status`. Machines that have an
    /// operating system on disk boot it; idle ones with nothing on disk power
    /// off, as MAAS does, so a stray power-on cannot run anything.
    pub fn for_status(status: MachineStatus) -> BootPurpose {
        use MachineStatus::*;
        match status {
            Commissioning => BootPurpose::Commission,
            Testing => BootPurpose::Test,
            Deploying => BootPurpose::Deploy,
            Releasing | DiskErasing => BootPurpose::Erase,
            EnteringRescueMode | RescueMode => BootPurpose::Rescue,
            Deployed | ExitingRescueMode | FailedExitingRescueMode => BootPurpose::LocalDisk,
            New
            | Ready
            | Allocated
            | Broken
            | FailedCommissioning
            | FailedTesting
            | FailedDeployment
            | FailedReleasing
            | FailedDiskErasing
            | FailedEnteringRescueMode => BootPurpose::PowerOff,
        }
    }
}

impl BootPurpose {
    /// As [`for_status`](Self::for_status), except that a deploying machine
    /// whose image is on its disk (`installed`) boots that disk.
    pub fn for_machine(status: MachineStatus, installed: bool) -> BootPurpose {
        if status == MachineStatus::Deploying && installed {
            BootPurpose::LocalDisk
        } else {
            BootPurpose::for_status(status)
        }
    }
}

impl std::fmt::Display for BootPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_in_progress_status_boots_the_ephemeral_environment() {
        for s in MachineStatus::ALL {
            let p = BootPurpose::for_status(s);
            let busy = matches!(
                s,
                MachineStatus::Commissioning
                    | MachineStatus::Testing
                    | MachineStatus::Deploying
                    | MachineStatus::Releasing
                    | MachineStatus::DiskErasing
                    | MachineStatus::EnteringRescueMode
                    | MachineStatus::RescueMode
            );
            assert_eq!(p.is_ephemeral(), busy, "{s}: {p}");
        }
    }

    #[test]
    fn a_deploying_machine_boots_its_disk_once_the_image_is_written() {
        use MachineStatus::*;
        assert_eq!(
            BootPurpose::for_machine(Deploying, false),
            BootPurpose::Deploy
        );
        assert_eq!(
            BootPurpose::for_machine(Deploying, true),
            BootPurpose::LocalDisk
        );
        // A stale "installed" from an earlier deployment changes nothing else.
        assert_eq!(
            BootPurpose::for_machine(Commissioning, true),
            BootPurpose::Commission
        );
    }

    #[test]
    fn deployed_machines_boot_their_disk_and_idle_ones_power_off() {
        assert_eq!(
            BootPurpose::for_status(MachineStatus::Deployed),
            BootPurpose::LocalDisk
        );
        assert_eq!(
            BootPurpose::for_status(MachineStatus::Ready),
            BootPurpose::PowerOff
        );
        assert_eq!(
            serde_json::to_string(&BootPurpose::LocalDisk).unwrap(),
            "\"local-disk\""
        );
    }
}
