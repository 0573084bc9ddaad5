//! kumo's read-only TFTP server for network boot.
//!
//! The protocol is a pure core without I/O: [`packet`] (the codec),
//! [`classify`] (what to do with a datagram on the well-known port),
//! [`options::negotiate`] and [`Transfer`], one state machine per transfer
//! that takes datagrams, file blocks and `now` (injected; the core never
//! reads the clock) and returns [`Action`]s. [`Server`] is the thin tokio
//! shell around it: the well-known socket, one task and one ephemeral socket
//! (the server TID, as RFC 1350 requires) per transfer, timers, and files
//! from a pluggable [`FileResolver`] ([`DirResolver`] serves a directory).
//!
//! Implemented: RFC 1350 read requests (write requests get ERROR 2
//! "read-only server"), RFC 2347 option negotiation with OACK, RFC 2348
//! `blksize` (8–65464), RFC 2349 `timeout` (1–255 s) and `tsize`, RFC 7440
//! `windowsize` (1–65535, granted up to [`Limits::max_windowsize`]),
//! retransmission on timeout with a bounded retry count, duplicate ACKs
//! ignored (no Sorcerer's Apprentice), block numbers rolling over past 65535
//! to 0. `netascii` is served byte for byte like `octet` (see [`Mode`]).
//! An ERROR 0 or 8 right after the OACK (UEFI's `tsize` probe) ends the
//! transfer as [`Outcome::Declined`], not as a failure.
//!
//! Why not a crate: no maintained crate offers a TFTP core without I/O.
//! `async-tftp`, the most used, ties the protocol to its own smol-based
//! sockets and files and has no `windowsize`; the others are small
//! unmaintained servers. The codec is a few hundred lines and is fuzzed
//! (`crates/tftp/fuzz`).

pub mod options;
pub mod packet;

mod error;
mod request;
mod resolver;
mod server;
mod transfer;

pub use error::TftpError;
pub use options::{Limits, Negotiated};
pub use packet::{Packet, RawRequest};
pub use request::{classify, Incoming, Mode, ReadRequest, RequestPath};
pub use resolver::{DirResolver, FileResolver, ResolvedFile};
pub use server::{CounterSnapshot, Counters, Server};
pub use transfer::{Action, Outcome, Transfer};
