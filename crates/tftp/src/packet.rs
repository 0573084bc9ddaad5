//! The TFTP packet codec (RFC 1350 packets, RFC 2347 options and OACK).
//!
//! `parse` never panics: every length is checked, and anything it cannot
//! read is a [`TftpError::Malformed`] naming what was wrong.

use crate::TftpError;

/// Opcodes (RFC 1350 §5, RFC 2347).
pub mod opcode {
    pub const RRQ: u16 = 1;
    pub const WRQ: u16 = 2;
    pub const DATA: u16 = 3;
    pub const ACK: u16 = 4;
    pub const ERROR: u16 = 5;
    pub const OACK: u16 = 6;
}

/// Error codes (RFC 1350 appendix, RFC 2347 for 8).
pub mod error_code {
    pub const NOT_DEFINED: u16 = 0;
    pub const FILE_NOT_FOUND: u16 = 1;
    pub const ACCESS_VIOLATION: u16 = 2;
    pub const DISK_FULL: u16 = 3;
    pub const ILLEGAL_OPERATION: u16 = 4;
    pub const UNKNOWN_TID: u16 = 5;
    pub const FILE_EXISTS: u16 = 6;
    pub const NO_SUCH_USER: u16 = 7;
    pub const OPTION_REFUSED: u16 = 8;
}

/// A read or write request as it came off the wire: no validation beyond
/// framing (the path and mode are checked by [`crate::classify`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRequest {
    pub filename: String,
    pub mode: String,
    /// Option name/value pairs in the order sent (RFC 2347).
    pub options: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Rrq(RawRequest),
    Wrq(RawRequest),
    Data { block: u16, data: Vec<u8> },
    Ack { block: u16 },
    Error { code: u16, message: String },
    Oack { options: Vec<(String, String)> },
}

impl Packet {
    /// The packet's name, for messages and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            Packet::Rrq(_) => "rrq",
            Packet::Wrq(_) => "wrq",
            Packet::Data { .. } => "data",
            Packet::Ack { .. } => "ack",
            Packet::Error { .. } => "error",
            Packet::Oack { .. } => "oack",
        }
    }

    /// Decodes one datagram.
    pub fn parse(bytes: &[u8]) -> Result<Packet, TftpError> {
        if bytes.len() < 2 {
            return Err(TftpError::Malformed("packet is shorter than an opcode"));
        }
        let op = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        match op {
            opcode::RRQ | opcode::WRQ => {
                let mut fields = Fields(body);
                let filename = fields.string()?.ok_or(TftpError::Malformed(
                    "request has no NUL-terminated filename",
                ))?;
                let mode = fields
                    .string()?
                    .ok_or(TftpError::Malformed("request has no NUL-terminated mode"))?;
                let options = fields.options()?;
                let req = RawRequest {
                    filename,
                    mode,
                    options,
                };
                Ok(if op == opcode::RRQ {
                    Packet::Rrq(req)
                } else {
                    Packet::Wrq(req)
                })
            }
            opcode::DATA => {
                let block = block_number(body, "data")?;
                Ok(Packet::Data {
                    block,
                    data: body[2..].to_vec(),
                })
            }
            opcode::ACK => {
                // Trailing bytes after the block number are tolerated: some
                // firmware pads short frames.
                Ok(Packet::Ack {
                    block: block_number(body, "ack")?,
                })
            }
            opcode::ERROR => {
                if body.len() < 2 {
                    return Err(TftpError::Malformed("error packet has no error code"));
                }
                let code = u16::from_be_bytes([body[0], body[1]]);
                // Lenient: a missing terminator or bad UTF-8 still yields
                // the code, which is what matters.
                let text = &body[2..];
                let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
                Ok(Packet::Error {
                    code,
                    message: String::from_utf8_lossy(&text[..end]).into_owned(),
                })
            }
            opcode::OACK => Ok(Packet::Oack {
                options: Fields(body).options()?,
            }),
            _ => Err(TftpError::Malformed("unknown opcode")),
        }
    }

    /// Encodes the packet. Strings containing NUL cannot be framed; they are
    /// cut at the first NUL (the server never builds such strings).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Packet::Rrq(r) | Packet::Wrq(r) => {
                let op = if matches!(self, Packet::Rrq(_)) {
                    opcode::RRQ
                } else {
                    opcode::WRQ
                };
                out.extend_from_slice(&op.to_be_bytes());
                put_str(&mut out, &r.filename);
                put_str(&mut out, &r.mode);
                put_options(&mut out, &r.options);
            }
            Packet::Data { block, data } => return encode_data(*block, data),
            Packet::Ack { block } => {
                out.extend_from_slice(&opcode::ACK.to_be_bytes());
                out.extend_from_slice(&block.to_be_bytes());
            }
            Packet::Error { code, message } => return encode_error(*code, message),
            Packet::Oack { options } => {
                out.extend_from_slice(&opcode::OACK.to_be_bytes());
                put_options(&mut out, options);
            }
        }
        out
    }
}

/// A DATA packet without building a [`Packet`] (the hot path).
pub fn encode_data(block: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + data.len());
    out.extend_from_slice(&opcode::DATA.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
    out.extend_from_slice(data);
    out
}

pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&opcode::ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    put_str(&mut out, message);
    out
}

fn block_number(body: &[u8], what: &'static str) -> Result<u16, TftpError> {
    if body.len() < 2 {
        return Err(TftpError::Malformed(match what {
            "data" => "data packet has no block number",
            _ => "ack packet has no block number",
        }));
    }
    Ok(u16::from_be_bytes([body[0], body[1]]))
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    out.extend_from_slice(&b[..end]);
    out.push(0);
}

fn put_options(out: &mut Vec<u8>, options: &[(String, String)]) {
    for (k, v) in options {
        put_str(out, k);
        put_str(out, v);
    }
}

/// NUL-terminated fields of a request or OACK body.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    /// The next field, `None` at the end of the body.
    fn string(&mut self) -> Result<Option<String>, TftpError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let end = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or(TftpError::Malformed("field is not NUL-terminated"))?;
        let s = std::str::from_utf8(&self.0[..end])
            .map_err(|_| TftpError::Malformed("field is not UTF-8"))?
            .to_owned();
        self.0 = &self.0[end + 1..];
        Ok(Some(s))
    }

    fn options(&mut self) -> Result<Vec<(String, String)>, TftpError> {
        let mut options = Vec::new();
        while let Some(name) = self.string()? {
            if name.is_empty() && self.0.iter().all(|&b| b == 0) {
                // NUL padding after the last option (seen from some ROMs).
                break;
            }
            let value = self
                .string()?
                .ok_or(TftpError::Malformed("option has no value"))?;
            options.push((name, value));
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_rrq_with_options() {
        let bytes = b"\x00\x01pxelinux.0\x00octet\x00tsize\x000\x00blksize\x001468\x00";
        let p = Packet::parse(bytes).unwrap();
        assert_eq!(
            p,
            Packet::Rrq(RawRequest {
                filename: "pxelinux.0".into(),
                mode: "octet".into(),
                options: vec![
                    ("tsize".into(), "0".into()),
                    ("blksize".into(), "1468".into())
                ],
            })
        );
        assert_eq!(p.encode(), bytes);
    }

    #[test]
    fn rejects_truncated_packets() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\x00\x01file",
            b"\x00\x01file\x00",
            b"\x00\x01file\x00octet",
            b"\x00\x01file\x00octet\x00tsize\x00",
            b"\x00\x03\x00",
            b"\x00\x04\x00",
            b"\x00\x05\x00",
            b"\x00\x07\x00\x01",
            b"\x00\x06blksize",
        ] {
            assert!(
                matches!(Packet::parse(bad), Err(TftpError::Malformed(_))),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn tolerates_padding_and_unterminated_error_text() {
        let p = Packet::parse(b"\x00\x01f\x00octet\x00\x00\x00").unwrap();
        assert!(matches!(p, Packet::Rrq(ref r) if r.options.is_empty()));
        assert_eq!(
            Packet::parse(b"\x00\x05\x00\x08no").unwrap(),
            Packet::Error {
                code: 8,
                message: "no".into()
            }
        );
        assert_eq!(
            Packet::parse(b"\x00\x04\x12\x34\x00").unwrap(),
            Packet::Ack { block: 0x1234 }
        );
    }

    fn field() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,20}"
    }

    fn nonempty_field() -> impl Strategy<Value = String> {
        "[^\u{0}]{1,20}"
    }

    fn options() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec((nonempty_field(), field()), 0..5)
    }

    fn request() -> impl Strategy<Value = RawRequest> {
        (field(), field(), options()).prop_map(|(filename, mode, options)| RawRequest {
            filename,
            mode,
            options,
        })
    }

    fn packet() -> impl Strategy<Value = Packet> {
        prop_oneof![
            request().prop_map(Packet::Rrq),
            request().prop_map(Packet::Wrq),
            (any::<u16>(), prop::collection::vec(any::<u8>(), 0..600))
                .prop_map(|(block, data)| Packet::Data { block, data }),
            any::<u16>().prop_map(|block| Packet::Ack { block }),
            (any::<u16>(), field()).prop_map(|(code, message)| Packet::Error { code, message }),
            options().prop_map(|options| Packet::Oack { options }),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(p in packet()) {
            // A request with an empty mode and no options encodes the same
            // as one whose mode is missing, so only compare what parses.
            let bytes = p.encode();
            prop_assert_eq!(Packet::parse(&bytes).unwrap(), p);
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn never_panics_on_request_like_bytes(
            op in 0u16..8,
            body in prop::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 0..64),
        ) {
            let mut bytes = op.to_be_bytes().to_vec();
            bytes.extend(body);
            if let Ok(p) = Packet::parse(&bytes) {
                // Whatever parses re-encodes to something that parses the same.
                prop_assert_eq!(Packet::parse(&p.encode()).unwrap(), p);
            }
        }
    }
}
