//! The unit agent's protocol and its pure core, in the manner of
//! quinn-proto: no sockets, no processes, no clock.
//!
//! - [`protocol`]: what the controller tells a machine agent about each of
//!   its units (`UnitView`), and what an agent sends back when a hook ends
//!   (`HookCommit`).
//! - [`uniter`]: Juju's hook semantics as two functions: [`uniter::next`]
//!   picks the one operation a unit should run given the controller's view
//!   and the unit's committed [`uniter::UniterState`]; [`uniter::complete`]
//!   is the state once that operation succeeded. The state lives in the
//!   controller and changes only with a committed hook, so an agent killed
//!   mid-hook reruns that hook and never one that completed, and a queued
//!   hook is never lost: it is whatever `next` says is still owed.
//! - [`tools`]: the hook tools (`relation-get`, `status-set`, …) as a
//!   function of a hook's [`tools::HookContext`], which buffers every change
//!   until the hook succeeds, as Juju does.

pub mod protocol;
pub mod tools;
pub mod uniter;

pub use protocol::*;
pub use uniter::{complete, next, Hook, Operation, UniterState};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("template {name}: {message}")]
    Template { name: String, message: String },
}
