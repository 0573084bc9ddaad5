//! kumo's machine-side agent. [`inventory`] reads the hardware from a
//! `/proc` + `/sys` tree (any root, so tests use a fake one) into
//! [`kumo_model::Inventory`].

pub mod inventory;

pub use inventory::collect;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("reading {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}
