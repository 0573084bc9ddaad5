//! What to do with a datagram arriving on the server's well-known port, and
//! the validated request path.

use std::fmt;
use std::path::PathBuf;

use crate::packet::Packet;
use crate::TftpError;

/// Transfer mode (RFC 1350). Both are served byte for byte: kumo serves
/// binary boot files, and netascii's CR/LF rewriting would change the file's
/// length, which `tsize` and block arithmetic depend on. tftp-hpa's client
/// in ascii mode then sees the file as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Octet,
    Netascii,
}

/// A request path reduced to components below the root: leading `/` is
/// stripped (as tftp-hpa's `-s` does), empty and `.` components are dropped,
/// and `..` is refused. Symlinks are the resolver's business.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestPath {
    components: Vec<String>,
}

impl RequestPath {
    pub fn parse(raw: &str) -> Result<RequestPath, TftpError> {
        let refuse = |reason| TftpError::AccessViolation {
            path: raw.to_owned(),
            reason,
        };
        let mut components = Vec::new();
        for c in raw.split('/') {
            match c {
                "" | "." => {}
                ".." => return Err(refuse("it contains \"..\"")),
                c => components.push(c.to_owned()),
            }
        }
        if components.is_empty() {
            return Err(refuse("it names no file"));
        }
        Ok(RequestPath { components })
    }

    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The path relative to the served root.
    pub fn to_relative(&self) -> PathBuf {
        self.components.iter().collect()
    }
}

impl fmt::Display for RequestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.components.join("/"))
    }
}

/// A read request that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    /// The filename exactly as sent, for logs and error messages.
    pub raw_path: String,
    pub path: RequestPath,
    pub mode: Mode,
    pub options: Vec<(String, String)>,
}

/// The listener's decision about one datagram.
#[derive(Debug)]
pub enum Incoming {
    /// Start a transfer on a new socket.
    Read(ReadRequest),
    /// Send `error.to_packet()` to the sender (from a new socket) and forget it.
    Refuse(TftpError),
    /// Drop silently and count: malformed, or not a request.
    Drop(TftpError),
}

/// Decides what to do with a datagram on the well-known port.
pub fn classify(bytes: &[u8]) -> Incoming {
    let req = match Packet::parse(bytes) {
        Err(e) => return Incoming::Drop(e),
        Ok(Packet::Rrq(req)) => req,
        Ok(Packet::Wrq(req)) => {
            return Incoming::Refuse(TftpError::WriteRefused { path: req.filename })
        }
        Ok(other) => return Incoming::Drop(TftpError::Unexpected(other.kind())),
    };
    let mode = match req.mode.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => {
            return Incoming::Refuse(TftpError::UnsupportedMode {
                path: req.filename,
                mode: req.mode,
            })
        }
    };
    match RequestPath::parse(&req.filename) {
        Ok(path) => Incoming::Read(ReadRequest {
            raw_path: req.filename,
            path,
            mode,
            options: req.options,
        }),
        Err(e) => Incoming::Refuse(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{error_code, RawRequest};

    fn rrq(name: &str, mode: &str) -> Vec<u8> {
        Packet::Rrq(RawRequest {
            filename: name.into(),
            mode: mode.into(),
            options: vec![],
        })
        .encode()
    }

    #[test]
    fn leading_slashes_map_to_the_root() {
        let p = RequestPath::parse("//boot/./grub//x64.efi").unwrap();
        assert_eq!(p.to_string(), "boot/grub/x64.efi");
        assert_eq!(p.to_relative(), PathBuf::from("boot/grub/x64.efi"));
    }

    #[test]
    fn traversal_is_an_access_violation() {
        for bad in [
            "../etc/passwd",
            "/../etc/passwd",
            "boot/../../x",
            "a/..",
            "..",
            "/",
            "",
            ".",
        ] {
            match classify(&rrq(bad, "octet")) {
                Incoming::Refuse(e) => {
                    assert_eq!(e.code(), error_code::ACCESS_VIOLATION, "{bad}");
                    assert_eq!(e.to_packet(), b"\x00\x05\x00\x02access violation\x00");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        // A name merely containing dots is fine.
        assert!(matches!(
            classify(&rrq("a..b/...", "octet")),
            Incoming::Read(_)
        ));
    }

    #[test]
    fn write_requests_are_refused() {
        let wrq = Packet::Wrq(RawRequest {
            filename: "x".into(),
            mode: "octet".into(),
            options: vec![],
        })
        .encode();
        match classify(&wrq) {
            Incoming::Refuse(e) => {
                assert_eq!(
                    e.to_string(),
                    "write request for \"x\" refused: read-only server"
                );
                assert_eq!(e.to_packet(), b"\x00\x05\x00\x02read-only server\x00");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modes() {
        assert!(matches!(
            classify(&rrq("f", "NetASCII")),
            Incoming::Read(ReadRequest {
                mode: Mode::Netascii,
                ..
            })
        ));
        assert!(matches!(
            classify(&rrq("f", "OCTET")),
            Incoming::Read(ReadRequest {
                mode: Mode::Octet,
                ..
            })
        ));
        assert!(
            matches!(classify(&rrq("f", "mail")), Incoming::Refuse(e) if e.code() == error_code::ILLEGAL_OPERATION)
        );
    }

    #[test]
    fn non_requests_are_dropped() {
        assert!(matches!(
            classify(b"\x00\x04\x00\x01"),
            Incoming::Drop(TftpError::Unexpected("ack"))
        ));
        assert!(matches!(
            classify(b"\x00\x09"),
            Incoming::Drop(TftpError::Malformed(_))
        ));
    }
}
