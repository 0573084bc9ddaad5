//! kumo's domain model: machines, their lifecycle, allocation constraints,
//! tags and hardware inventory, as plain data and pure functions.
//!
//! Nothing in this crate performs I/O, reads the clock or draws random
//! numbers: callers pass `now` (milliseconds since the Unix epoch) and
//! identifiers in. That keeps the lifecycle and allocation rules testable
//! exhaustively and lets the store and the API share one vocabulary.

pub mod api;
pub mod boot;
pub mod constraints;
pub mod deploy;
pub mod error;
pub mod ids;
pub mod inventory;
pub mod lifecycle;
pub mod machine;
pub mod network;
pub mod orchestra;
pub mod scripts;
pub mod tags;

pub use error::ModelError;
pub use ids::{Hostname, MacAddress, Name, SystemId};
pub use inventory::Inventory;
pub use lifecycle::{Action, Effect, EraseMode, MachineStatus, Transition};
pub use machine::{Machine, PowerState};

/// Milliseconds since the Unix epoch, as passed in by callers.
pub type Millis = i64;
