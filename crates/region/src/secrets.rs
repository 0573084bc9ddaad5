//! Secrets at rest: BMC passwords, webhook tokens and machine tokens are
//! sealed with XChaCha20-Poly1305 under a key kept in the data directory
//! (mode 0600), never in the database beside what it protects.

use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};

use crate::clock::Entropy;
use crate::RegionError;

pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl SecretBox {
    pub fn from_key(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Loads the key file, creating it with fresh random bytes if absent.
    pub fn load_or_create(path: &Path, entropy: &dyn Entropy) -> Result<Self, RegionError> {
        let io =
            |e: std::io::Error| RegionError::Secrets(format!("key file {}: {e}", path.display()));
        if path.exists() {
            let raw = std::fs::read(path).map_err(io)?;
            let key: [u8; 32] = raw.try_into().map_err(|_| {
                RegionError::Secrets(format!("key file {}: expected 32 bytes", path.display()))
            })?;
            return Ok(Self::from_key(key));
        }
        let mut key = [0u8; 32];
        entropy.fill(&mut key);
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        f.write_all(&key).map_err(io)?;
        Ok(Self::from_key(key))
    }

    /// Seals a JSON object; the empty object seals to the empty string.
    pub fn seal(&self, secrets: &Map<String, Value>, entropy: &dyn Entropy) -> String {
        if secrets.is_empty() {
            return String::new();
        }
        let mut nonce = [0u8; 24];
        entropy.fill(&mut nonce);
        let plain = serde_json::to_vec(secrets).expect("json object serialises");
        let ct = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plain.as_slice())
            .expect("xchacha20poly1305 encryption cannot fail");
        format!("v1:{}:{}", B64.encode(nonce), B64.encode(ct))
    }

    pub fn open(&self, sealed: &str) -> Result<Map<String, Value>, RegionError> {
        if sealed.is_empty() {
            return Ok(Map::new());
        }
        let bad = || {
            RegionError::Secrets("sealed secrets are corrupt or sealed under another key".into())
        };
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(n), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let nonce = B64.decode(n).map_err(|_| bad())?;
        let ct = B64.decode(c).map_err(|_| bad())?;
        if nonce.len() != 24 {
            return Err(bad());
        }
        let plain = self
            .cipher
            .decrypt(XNonce::from_slice(&nonce), ct.as_slice())
            .map_err(|_| bad())?;
        serde_json::from_slice(&plain).map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let e = SeededEntropy::new(1);
        let b = SecretBox::from_key([7; 32]);
        let mut m = Map::new();
        m.insert("power_pass".into(), Value::String("hunter2".into()));
        let sealed = b.seal(&m, &e);
        assert!(!sealed.contains("hunter2"));
        assert_eq!(b.open(&sealed).unwrap(), m);
        let other = SecretBox::from_key([8; 32]);
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(b.open(&tampered).is_err() || tampered == sealed);
        assert_eq!(b.seal(&Map::new(), &e), "");
        assert!(b.open("").unwrap().is_empty());
    }
}
