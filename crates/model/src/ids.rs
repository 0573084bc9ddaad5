//! Validated identifiers. Each type can only hold a well-formed value, so
//! code past the API boundary never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ModelError;

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                raw.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A machine's system id: six characters from `[a-z0-9]`, as MAAS uses,
/// short enough to type and stable for the machine's whole life.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SystemId(String);
string_newtype!(SystemId);

const SYSTEM_ID_ALPHABET: &[u8] = b"abcdefghjkmnpqrstvwxyz0123456789";

impl SystemId {
    /// Builds an id from caller-supplied random bytes, so the model never
    /// draws randomness itself.
    pub fn from_random(bytes: [u8; 6]) -> Self {
        let s = bytes
            .iter()
            .map(|b| SYSTEM_ID_ALPHABET[(*b as usize) % SYSTEM_ID_ALPHABET.len()] as char)
            .collect();
        SystemId(s)
    }
}

impl FromStr for SystemId {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 6
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Ok(SystemId(s.to_owned()))
        } else {
            Err(ModelError::field(
                "system_id",
                s,
                "expected six characters from a-z and 0-9",
            ))
        }
    }
}

/// A MAC address, stored as six octets and printed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddress([u8; 6]);

impl MacAddress {
    pub fn new(octets: [u8; 6]) -> Self {
        MacAddress(octets)
    }
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = ModelError;
    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case; rejects
    /// multicast and all-zero addresses, which no NIC boots with.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ModelError::field("mac_address", s, reason);
        let sep = if s.contains('-') { '-' } else { ':' };
        let parts: Vec<&str> = s.split(sep).collect();
        if parts.len() != 6 {
            return Err(bad("expected six hex octets separated by ':'"));
        }
        let mut octets = [0u8; 6];
        for (i, part) in parts.iter().enumerate() {
            if part.len() != 2 {
                return Err(bad("each octet must be two hex digits"));
            }
            octets[i] = u8::from_str_radix(part, 16).map_err(|_| bad("not a hex digit"))?;
        }
        if octets == [0; 6] {
            return Err(bad("the all-zero address is not a NIC's"));
        }
        if octets[0] & 1 == 1 {
            return Err(bad("a multicast address is not a NIC's"));
        }
        Ok(MacAddress(octets))
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A host name: RFC 1123 labels, lower-cased, at most 253 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);
string_newtype!(Hostname);

impl FromStr for Hostname {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| ModelError::field("hostname", s, reason);
        if s.is_empty() {
            return Err(bad("must not be empty".into()));
        }
        if s.len() > 253 {
            return Err(bad("longer than 253 characters".into()));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(bad(format!("label {label:?} must be 1 to 63 characters")));
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(bad(format!(
                    "label {label:?} may hold only letters, digits and '-'"
                )));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(bad(format!(
                    "label {label:?} must not start or end with '-'"
                )));
            }
        }
        Ok(Hostname(s.to_ascii_lowercase()))
    }
}

/// The name of a zone, pool, tag or user: a letter or digit, then letters,
/// digits, '-' or '_', at most 64 characters. Names appear in constraint
/// strings (`tags=a,b`), so they may not hold ',', '=' or spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);
string_newtype!(Name);

impl Name {
    /// Parses a name, naming `field` in the error.
    pub fn parse(field: &'static str, s: &str) -> Result<Self, ModelError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(ModelError::field(
                field,
                s,
                "expected 1 to 64 letters, digits, '-' or '_', starting with a letter or digit",
            ))
        }
    }
}

impl FromStr for Name {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse("name", s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mac_accepts_both_separators_and_normalises() {
        let a: MacAddress = "52:54:00:AB:cd:01".parse().unwrap();
        let b: MacAddress = "52-54-00-ab-CD-01".parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn mac_rejects_malformed_and_names_the_field() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0g",
            "525400abcd01",
            "00:00:00:00:00:00",
            "01:00:5e:00:00:01",
            "52:54:00:ab:cd:001",
        ] {
            let err = bad.parse::<MacAddress>().unwrap_err();
            assert!(
                matches!(
                    err,
                    ModelError::InvalidField {
                        field: "mac_address",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn hostname_rules() {
        assert_eq!(
            "Node-01.lab".parse::<Hostname>().unwrap().as_str(),
            "node-01.lab"
        );
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"x".repeat(64),
            &format!("{}.x", "a.".repeat(126)),
        ] {
            assert!(
                bad.parse::<Hostname>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn system_id_from_random_is_valid() {
        let id = SystemId::from_random([0, 31, 32, 255, 7, 100]);
        assert_eq!(id.as_str().parse::<SystemId>().unwrap(), id);
    }

    proptest! {
        #[test]
        fn mac_display_parse_round_trip(octets in any::<[u8; 6]>()) {
            let mut octets = octets;
            octets[0] &= 0xfe;
            octets[5] |= 1;
            let mac = MacAddress::new(octets);
            prop_assert_eq!(mac.to_string().parse::<MacAddress>().unwrap(), mac);
        }

        #[test]
        fn mac_parser_never_panics(s in ".{0,40}") {
            let _ = s.parse::<MacAddress>();
        }

        #[test]
        fn hostname_parser_never_panics_and_valid_ones_round_trip(s in "[a-zA-Z0-9.-]{0,70}") {
            if let Ok(h) = s.parse::<Hostname>() {
                prop_assert_eq!(h.as_str().parse::<Hostname>().unwrap(), h);
            }
        }
    }
}
