//! The ed25519 keys of signed OTA bundles in their text form (base64), as `vigil ota keygen`
//! writes them and `[ota] trusted_keys` holds them. Here, not in the OTA crate, because config
//! validation checks the trusted keys too.

use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};

/// 32 bytes from base64 (a key or a seed).
fn key_bytes(text: &str) -> Result<[u8; 32], String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))
}

/// A base64 ed25519 public key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    VerifyingKey::from_bytes(&key_bytes(text)?)
        .map_err(|e| format!("not an ed25519 public key: {e}"))
}

/// A base64 ed25519 secret key (its 32-byte seed), as `vigil ota keygen` writes it.
pub fn parse_secret_key(text: &str) -> Result<SigningKey, String> {
    Ok(SigningKey::from_bytes(&key_bytes(text)?))
}

pub fn encode_key(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
