//! kumo's DHCPv4 server.
//!
//! [`Server`] is the protocol: it takes a packet, where it came from and
//! the time, and returns [`Action`]s (persist a lease change, send a reply,
//! log). It does no I/O and never reads the clock, so every rule is unit
//! tested and fuzzed. [`run`] is the shell: a UDP socket bound to one
//! interface, the lease journal (fsync'd before replies that depend on it),
//! the expiry tick and live reload.
//!
//! Known machines ([`HostReservation`]) always get their static address;
//! unknown ones get a dynamic-range address, sticky per MAC. PXE firmware
//! gets the iPXE binary for its architecture, iPXE gets the HTTP boot script.
//!
//! [`probe`] looks for rogue DHCP servers on a served network: one
//! broadcast DISCOVER, every offer not from our own server ids reported as a
//! [`RogueServer`]; [`discover_probe`] and [`classify_reply`] are its pure
//! core.

mod config;
mod lease;
mod probe;
mod pxe;
mod server;
mod shell;
mod wire;

use std::path::PathBuf;

pub use config::{BootConfig, HostReservation, RateLimit, ServerConfig, SubnetConfig};
pub use lease::{compact, encode_record, replay, Lease, LeaseChange, MacAddr};
pub use probe::{classify_reply, discover_probe, probe, Offer, ProbeReply, RogueServer};
pub use server::{Action, Counters, LogLevel, RecvMeta, Server, DECLINE_HOLD, OFFER_HOLD};
pub use shell::{interface_addrs, load_journal, run, run_observed};

/// Everything that can go wrong in kumo-dhcp.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid dhcp configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid mac address {0:?}")]
    InvalidMac(String),
    #[error("lease journal line {line} is corrupt")]
    JournalRecord {
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("lease journal {path}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dhcp probe on interface {interface}")]
    Probe {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dhcp socket on interface {interface}")]
    Socket {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}
