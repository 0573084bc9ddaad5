//! Credentials: passwords hashed with argon2id; API keys and machine
//! tokens are long random strings, so a plain SHA-256 of them is enough to
//! make a stolen database useless while keeping each request cheap.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::clock::Entropy;
use crate::RegionError;

/// Who is asking. The region's own workers act as `system`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub username: String,
    pub admin: bool,
}

impl Actor {
    pub fn system() -> Self {
        Actor {
            username: "system".into(),
            admin: true,
        }
    }
}

pub fn hash_password(password: &str, entropy: &dyn Entropy) -> Result<String, RegionError> {
    let mut salt = [0u8; 16];
    entropy.fill(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| RegionError::Internal(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RegionError::Internal(format!("password hash: {e}")))
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub fn random_token(entropy: &dyn Entropy, bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    entropy.fill(&mut buf);
    B64URL.encode(buf)
}

/// A new API key: `kumo_<id>_<secret>`. The id finds the row; only the
/// secret's hash is stored.
pub fn new_api_key(entropy: &dyn Entropy) -> (String, String, String) {
    let mut id = [0u8; 8];
    entropy.fill(&mut id);
    let id = hex::encode(id);
    let secret = random_token(entropy, 32);
    let key = format!("kumo_{id}_{secret}");
    (id, sha256_hex(&secret), key)
}

/// Splits an API key into id and secret.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("kumo_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && !secret.is_empty()).then_some((id, secret))
}

/// Compares in constant time, so a key's hash cannot be guessed byte by byte.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SeededEntropy;

    #[test]
    fn passwords_and_keys() {
        let e = SeededEntropy::new(3);
        let h = hash_password("s3cret", &e).unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
        assert!(!verify_password("s3cret", "garbage"));
        let (id, hash, key) = new_api_key(&e);
        let (pid, psecret) = parse_api_key(&key).unwrap();
        assert_eq!(pid, id);
        assert!(constant_time_eq(&sha256_hex(psecret), &hash));
        assert!(parse_api_key("kumo_short_x").is_none());
        assert!(parse_api_key("nope").is_none());
    }
}
