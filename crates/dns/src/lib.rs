//! kumo's rack DNS server.
//!
//! The region sends a [`ZoneSet`]: the zones the rack is authoritative for
//! (forward zones per domain and /24 reverse zones, built from IPAM with
//! [`ZoneSet::add_hosts`], plus any records of its own) and the upstream
//! servers every other name is forwarded to.
//!
//! [`Server`] is the protocol core: [`Server::handle`] takes query bytes
//! and returns an [`Outcome`] — reply bytes, a [`Forward`] for the shell to
//! relay, or drop (malformed, counted). It answers authoritatively (AA) from
//! the zones: NXDOMAIN or NODATA with the SOA for negative caching, CNAME
//! chains followed within our zones, names matched case-insensitively,
//! EDNS0 (payload size, BADVERS), truncation (TC) when a UDP reply exceeds
//! the client's payload size. It does no I/O, so it is unit tested,
//! proptested and fuzzed. [`Server::reload`] validates a new set and swaps
//! it in (an `ArcSwap`) for the next query, with no restart.
//!
//! [`run`] / [`Listener`] is the shell: UDP answered by threads in
//! `recvmmsg`/`sendmmsg` batches, each with its [`AnswerCache`], TCP and
//! forwarding on tokio — to the upstreams in turn with a timeout each
//! (SERVFAIL when none answers) — counters in [`Server::counters`].
//! With [`ShellConfig::xdp`], [`XdpAnswers`] (`xdp/answer.bpf.c`) answers
//! repeated IPv4 UDP queries in XDP on the listener's interface with the
//! replies the UDP threads sent before, and never after a reload.
//!
//! Why hickory-proto and not hickory-server: the issue expected
//! hickory-server as the base, but its request path is an async
//! `RequestHandler` writing to a `ResponseHandler`, its authorities are
//! async traits loaded from zone files or SQLite journals, and forwarding
//! goes through hickory-resolver with its own cache and I/O. Fitting that
//! to kumo's "pure core, thin shell" shape (bytes in → bytes or an action
//! out, no I/O, fuzzable, the DHCP crate's shape) would mean wrapping all of
//! it. The authoritative rules the rack needs are small, so the core here
//! is its own (~400 lines) and hickory-proto — the well-fuzzed wire codec
//! hickory-server itself uses — does all encoding and decoding. Not
//! supported: DNSSEC, zone transfers (AXFR/IXFR are REFUSED), dynamic
//! update, wildcards, delegation below a zone apex, classless reverse
//! delegation.

mod core;
mod shell;
mod xdp;
mod zone;

use std::net::SocketAddr;

pub use crate::core::{
    AnswerCache, Counters, Forward, Handled, Offload, Outcome, Server, Transport, EDNS_PAYLOAD,
    MAX_UDP_PAYLOAD,
};
pub use shell::{run, Listener, ShellConfig};
pub use xdp::{XdpAnswers, XdpConfig, XdpCounters, XdpMode, XdpVerdict, OBJECT as XDP_OBJECT};
pub use zone::{Record, RecordData, Soa, Zone, ZoneDefaults, ZoneSet};

/// Everything that can go wrong in kumo-dns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("zone {zone}: {reason}")]
    Zone { zone: String, reason: String },
    #[error("zone {zone}: record {record}: {reason}")]
    Record {
        zone: String,
        record: String,
        reason: String,
    },
    #[error("host {fqdn:?}: {reason}")]
    Host { fqdn: String, reason: String },
    #[error("upstream {0} has port 0")]
    Upstream(SocketAddr),
    #[error("dns xdp on {interface}: {reason}")]
    Xdp { interface: String, reason: String },
    #[error("dns socket {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod zone_tests;
