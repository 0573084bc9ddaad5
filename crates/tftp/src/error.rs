use std::net::SocketAddr;

use thiserror::Error;

use crate::packet::error_code;

/// The one error type of the crate.
///
/// `path` is the path as the client asked for it; messages sent to clients
/// ([`TftpError::client_message`]) never include server-side paths or I/O
/// details.
#[derive(Debug, Error)]
pub enum TftpError {
    /// A datagram that could not be decoded; dropped and counted.
    #[error("tftp packet is malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed packet of a kind that makes no sense where it arrived
    /// (e.g. DATA sent to a read-only server); dropped and counted.
    #[error("tftp {0} packet is unexpected here")]
    Unexpected(&'static str),
    #[error("write request for {path:?} refused: read-only server")]
    WriteRefused { path: String },
    #[error("request for {path:?} uses unsupported mode {mode:?}")]
    UnsupportedMode { path: String, mode: String },
    /// The path escapes the root (`..`, a symlink out) or names no file.
    #[error("path {path:?} refused: {reason}")]
    AccessViolation { path: String, reason: &'static str },
    #[error("file {path:?} not found")]
    NotFound { path: String },
    #[error("file {path:?} cannot be read")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The reader ended before (or ran past) the length it announced.
    #[error("file {path:?} ended at block {block}, short of its announced length")]
    ShortRead { path: String, block: u64 },
    #[error("transfer of {path:?} timed out after {retries} retransmissions")]
    TimedOut { path: String, retries: u32 },
    #[error("transfer of {path:?} aborted by the client with error {code}: {message:?}")]
    PeerError {
        path: String,
        code: u16,
        message: String,
    },
    #[error("tftp socket {addr}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl TftpError {
    /// The RFC 1350 error code to send to the client.
    pub fn code(&self) -> u16 {
        match self {
            TftpError::NotFound { .. } => error_code::FILE_NOT_FOUND,
            TftpError::AccessViolation { .. } | TftpError::WriteRefused { .. } => {
                error_code::ACCESS_VIOLATION
            }
            TftpError::UnsupportedMode { .. }
            | TftpError::Unexpected(_)
            | TftpError::Malformed(_) => error_code::ILLEGAL_OPERATION,
            TftpError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                error_code::ACCESS_VIOLATION
            }
            _ => error_code::NOT_DEFINED,
        }
    }

    /// The text of the ERROR packet: short, and free of server details.
    pub fn client_message(&self) -> &'static str {
        match self {
            TftpError::NotFound { .. } => "file not found",
            TftpError::AccessViolation { .. } => "access violation",
            TftpError::WriteRefused { .. } => "read-only server",
            TftpError::UnsupportedMode { .. } => "unsupported mode",
            TftpError::Malformed(_) => "malformed packet",
            TftpError::Unexpected(_) => "unexpected packet",
            TftpError::Io { .. } if self.code() == error_code::ACCESS_VIOLATION => {
                "access violation"
            }
            TftpError::Io { .. } | TftpError::ShortRead { .. } => "read error",
            TftpError::TimedOut { .. } => "timed out",
            TftpError::PeerError { .. } | TftpError::Socket { .. } => "server error",
        }
    }

    /// The ERROR packet telling the client about this error.
    pub fn to_packet(&self) -> Vec<u8> {
        crate::packet::encode_error(self.code(), self.client_message())
    }
}
