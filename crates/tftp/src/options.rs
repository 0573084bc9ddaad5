//! Option negotiation: RFC 2347 (framework), 2348 (blksize), 2349 (timeout,
//! tsize) and 7440 (windowsize).

use std::time::Duration;

/// Server-side bounds and defaults for transfers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size granted (RFC 2348 allows up to 65464). Clients
    /// asking for more are answered with this.
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440 allows up to 65535). A transfer
    /// buffers `windowsize × blksize` bytes, so this bounds its memory.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client does not ask for one.
    pub default_timeout: Duration,
    /// Retransmissions of one packet (or window) before giving up.
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: 65464,
            max_windowsize: 64,
            default_timeout: Duration::from_secs(1),
            max_retries: 5,
        }
    }
}

/// The parameters of one transfer after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to acknowledge in an OACK, in the client's order. Empty means
    /// no OACK: the transfer starts with DATA 1 (RFC 2347).
    pub oack: Vec<(String, String)>,
}

/// Accepts the options the server understands, with values in range, and
/// ignores the rest (RFC 2347 lets a server ignore any option). Option names
/// are case-insensitive; the OACK uses lowercase names. A repeated option is
/// granted once: the first valid occurrence wins.
pub fn negotiate(options: &[(String, String)], file_size: u64, limits: &Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: 512,
        windowsize: 1,
        timeout: limits.default_timeout,
        oack: Vec::new(),
    };
    for (name, value) in options {
        let name = name.to_ascii_lowercase();
        if n.oack.iter().any(|(k, _)| *k == name) {
            continue;
        }
        let number = value.trim().parse::<u64>().ok();
        let granted = match (name.as_str(), number) {
            ("blksize", Some(v)) if v >= 8 => {
                let v = v.min(65464).min(u64::from(limits.max_blksize.max(8))) as u16;
                n.blksize = v;
                v.to_string()
            }
            ("windowsize", Some(v)) if (1..=65535).contains(&v) => {
                let v = v.min(u64::from(limits.max_windowsize.max(1))) as u16;
                n.windowsize = v;
                v.to_string()
            }
            ("timeout", Some(v)) if (1..=255).contains(&v) => {
                n.timeout = Duration::from_secs(v);
                v.to_string()
            }
            // For a read request the client sends 0 and the server answers
            // the size (RFC 2349). The value is not checked: atftp sends
            // "enable".
            ("tsize", _) => file_size.to_string(),
            _ => continue,
        };
        n.oack.push((name, granted));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_options_no_oack() {
        let n = negotiate(&[], 100, &Limits::default());
        assert_eq!((n.blksize, n.windowsize), (512, 1));
        assert_eq!(n.timeout, Duration::from_secs(1));
        assert!(n.oack.is_empty());
    }

    #[test]
    fn grants_valid_options_and_answers_tsize() {
        let n = negotiate(
            &opts(&[
                ("TSIZE", "0"),
                ("BlkSize", "1468"),
                ("timeout", "3"),
                ("windowsize", "8"),
                ("multicast", ""),
            ]),
            123456,
            &Limits::default(),
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 8);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            opts(&[
                ("tsize", "123456"),
                ("blksize", "1468"),
                ("timeout", "3"),
                ("windowsize", "8")
            ])
        );
    }

    #[test]
    fn clamps_large_values_and_ignores_invalid_ones() {
        let limits = Limits {
            max_blksize: 1400,
            max_windowsize: 16,
            ..Limits::default()
        };
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "65535")]),
            0,
            &limits,
        );
        assert_eq!(n.oack, opts(&[("blksize", "1400"), ("windowsize", "16")]));
        let n = negotiate(&opts(&[("blksize", "99999")]), 0, &Limits::default());
        assert_eq!(n.oack, opts(&[("blksize", "65464")]));

        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("windowsize", "70000"),
                ("timeout", "0"),
                ("timeout", "256"),
                ("blksize", "-1"),
            ]),
            9,
            &Limits::default(),
        );
        assert!(n.oack.is_empty(), "{:?}", n.oack);
        assert_eq!((n.blksize, n.windowsize), (512, 1));
    }

    #[test]
    fn tsize_is_answered_whatever_the_client_sent() {
        let n = negotiate(&opts(&[("tsize", "enable")]), 42, &Limits::default());
        assert_eq!(n.oack, opts(&[("tsize", "42")]));
    }

    #[test]
    fn first_of_repeated_options_wins() {
        let n = negotiate(
            &opts(&[("blksize", "1024"), ("BLKSIZE", "2048")]),
            0,
            &Limits::default(),
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(n.oack.len(), 1);
    }
}
