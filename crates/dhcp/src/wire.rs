//! Decoding guard in front of `dhcproto`.
//!
//! `dhcproto` 0.15 can panic on hostile input: `Message::chaddr()` slices by
//! `hlen` (panics when hlen > 16), and several option decoders
//! `debug_assert!` their length (rapid commit, client NII, FQDN, bulk lease
//! query). So the raw packet is checked and rewritten first: BOOTREQUEST,
//! Ethernet, magic cookie, well-formed option TLVs, and only the options the
//! server reads, each with a valid length. What remains is safe to decode.
//! The rogue-server probe reads replies through the same guard
//! ([`decode_reply`]), keeping only the options it reads.

use dhcproto::v4::Message;
use dhcproto::{Decodable, Decoder};

const HEADER: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// The options the server reads, with their allowed lengths.
fn allowed_len(code: u8, len: usize) -> bool {
    match code {
        53 => len == 1,                          // message type
        50 | 51 | 54 => len == 4,                // requested ip, lease time, server id
        57 => len == 2,                          // max message size
        93 => len >= 2 && len.is_multiple_of(2), // client architecture list
        12 | 55 | 60 | 61 | 77 => len >= 1,      // hostname, prl, class, client id, user class
        _ => false,
    }
}

/// The options the probe reads in a server's reply.
fn reply_allowed_len(code: u8, len: usize) -> bool {
    match code {
        53 => len == 1,      // message type
        54 | 51 => len == 4, // server id, lease time
        _ => false,
    }
}

/// Decodes a client packet, or says why it is malformed.
pub(crate) fn decode(packet: &[u8]) -> Result<Message, &'static str> {
    guarded(packet, (1, "not a bootrequest"), allowed_len)
}

/// Decodes a server's reply (BOOTREPLY), or says why it is malformed.
pub(crate) fn decode_reply(packet: &[u8]) -> Result<Message, &'static str> {
    guarded(packet, (2, "not a bootreply"), reply_allowed_len)
}

/// The header and option checks: op code `op.0` (else the error `op.1`),
/// keeping the options `allowed` accepts.
fn guarded(
    packet: &[u8],
    op: (u8, &'static str),
    allowed: fn(u8, usize) -> bool,
) -> Result<Message, &'static str> {
    if packet.len() < HEADER + MAGIC.len() {
        return Err("shorter than a bootp header");
    }
    if packet[0] != op.0 {
        return Err(op.1);
    }
    if packet[1] != 1 || packet[2] != 6 {
        return Err("not an ethernet hardware address");
    }
    if packet[HEADER..HEADER + 4] != MAGIC {
        return Err("no dhcp magic cookie");
    }
    let mut clean = packet[..HEADER + 4].to_vec();
    let mut seen = [false; 256];
    let opts = &packet[HEADER + 4..];
    let mut i = 0;
    let mut ended = false;
    while i < opts.len() {
        let code = opts[i];
        match code {
            0 => i += 1,
            255 => {
                ended = true;
                break;
            }
            _ => {
                let len = *opts.get(i + 1).ok_or("option without length")? as usize;
                let data = opts
                    .get(i + 2..i + 2 + len)
                    .ok_or("option overruns packet")?;
                // First occurrence only: dhcproto would concatenate repeats (RFC 3396).
                if allowed(code, len)
                    && !seen[code as usize]
                    && (code != 12 || std::str::from_utf8(data).is_ok())
                {
                    seen[code as usize] = true;
                    clean.extend_from_slice(&opts[i..i + 2 + len]);
                }
                i += 2 + len;
            }
        }
    }
    if !ended {
        return Err("options not terminated");
    }
    if !seen[53] {
        return Err("no message type");
    }
    clean.push(255);
    Message::decode(&mut Decoder::new(&clean)).map_err(|_| "undecodable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        p[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        p.extend_from_slice(&MAGIC);
        p
    }

    #[test]
    fn drops_options_dhcproto_would_assert_on() {
        let mut p = base();
        // message type DISCOVER, rapid commit with a bogus length, client NII too short
        p.extend_from_slice(&[53, 1, 1, 80, 2, 0, 0, 94, 1, 0, 81, 1, 0, 151, 0, 255]);
        let m = decode(&p).unwrap();
        assert_eq!(m.opts().len(), 1);
    }

    #[test]
    fn rejects_bad_headers_and_truncated_options() {
        let mut hlen = base();
        hlen[2] = 200;
        hlen.extend_from_slice(&[53, 1, 1, 255]);
        assert_eq!(
            decode(&hlen).unwrap_err(),
            "not an ethernet hardware address"
        );
        let mut trunc = base();
        trunc.extend_from_slice(&[53, 1, 1, 12, 9, b'a']);
        assert_eq!(decode(&trunc).unwrap_err(), "option overruns packet");
        let mut none = base();
        none.extend_from_slice(&[12, 1, b'a', 255]);
        assert_eq!(decode(&none).unwrap_err(), "no message type");
    }

    /// Why this module exists: dhcproto alone panics on these packets.
    #[test]
    #[should_panic(expected = "out of range")]
    fn dhcproto_alone_panics_on_a_long_hlen() {
        let mut p = base();
        p[2] = 200;
        p.extend_from_slice(&[53, 1, 1, 255]);
        let m = Message::decode(&mut Decoder::new(&p)).unwrap();
        let _ = m.chaddr();
    }

    #[test]
    #[should_panic(expected = "len == 3")]
    #[cfg(debug_assertions)]
    fn dhcproto_alone_asserts_on_a_short_client_nii() {
        let mut p = base();
        p.extend_from_slice(&[53, 1, 1, 94, 1, 0, 255]);
        let _ = Message::decode(&mut Decoder::new(&p));
    }
}
