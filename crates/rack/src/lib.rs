//! kumo's rack: the servers on the machines' networks — DHCP with PXE,
//! TFTP, HTTP boot and DNS — configured by the region over its API.
//!
//! [`plan`] turns the region's [`RackConfig`](kumo_model::network::RackConfig)
//! into each server's configuration and [`script`] renders iPXE scripts;
//! both are pure. [`service`] is the process: it long-polls the region and
//! reloads the servers in place; [`http`] is the HTTP boot server;
//! [`proxy`] runs the package proxy (apt-cacher-ng) machines fetch through.

pub mod http;
pub mod images;
pub mod ndp;
pub mod plan;
pub mod proxy;
pub mod script;
pub mod service;

pub use kumo_dns::XdpMode;
pub use service::{serve, RackOptions};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface {name}: {reason}")]
    Interface { name: String, reason: String },
    #[error("{0}")]
    Plan(String),
    #[error("{path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dhcp")]
    Dhcp(#[from] kumo_dhcp::Error),
    #[error("dns")]
    Dns(#[from] kumo_dns::Error),
    #[error("tftp")]
    Tftp(#[from] kumo_tftp::TftpError),
    #[error("{0}")]
    Stopped(String),
}
