//! kumo's machine-side agent. [`inventory`] reads the hardware from a
//! `/proc` + `/sys` tree (any root, so tests use a fake one) into
//! [`kumo_model::Inventory`]; [`ephemeral`] is what `kumo agent ephemeral`
//! does in the network-booted environment: read the kernel command line,
//! enlist, commission, test (run the task's scripts, [`scripts`]), deploy
//! (stream an image to disk, [`disk`]) or erase through the rack's
//! `/metadata/v1`, then power off or reboot.

pub mod disk;
pub mod ephemeral;
pub mod inventory;
pub mod machine;
pub mod scripts;

pub use ephemeral::{BootParams, Outcome};
pub use inventory::collect;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("agent config {0}")]
    Config(String),
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("metadata api")]
    Region(#[from] kumo_client::ClientError),
    #[error("power off: {0}")]
    PowerOff(String),
    #[error("{0}")]
    Image(String),
}
