//! Charms and bundles as data, and the pure core of deploying them.
//!
//! A charm is a directory (`metadata.yaml`, `config.yaml`, `hooks/`,
//! `templates/`), read by [`Charm::load_dir`]. A bundle is Juju's
//! `bundle.yaml`, read by [`Bundle::parse`]; every error names the file,
//! line, column and key path. [`validate`] checks a bundle against the
//! charms it names; [`plan`] turns a model and a bundle into the [`Step`]s
//! that make the model match (adding and changing only, as `juju deploy`
//! does), [`apply`] performs a step on a [`ModelState`], [`diff`] reports
//! differences both ways and [`export`] turns a model back into a bundle.
//!
//! Nothing here does I/O but `Charm::load_dir`: no sockets, no clock.

mod bundle;
mod charm;
mod config;
mod error;
mod metadata;
mod model;
mod validate;
mod yaml;

pub use bundle::{Application, Bundle, MachineSpec, OptionValue, Placement, RelationEnd, Spans};
pub use charm::Charm;
pub use config::{ConfigOption, ConfigSchema, OptionType, Value};
pub use error::{Error, Location, Result};
pub use metadata::{valid_application_name, valid_name, Endpoint, Metadata, Role, JUJU_INFO};
pub use model::{apply, diff, export, plan, AppState, Difference, Machine, ModelState, Step};
pub use validate::{
    resolve_relation, validate, CharmSource, Relation, Resolved, ResolvedApplication,
};
