//! Logins: local users with Argon2id password hashes (PHC strings), sessions in the store
//! keyed by the SHA-256 of a random cookie token (a stolen database holds no usable cookie),
//! a CSRF token per session checked on every form that changes something, and three roles:
//! a viewer sees, an operator also sends commands and marks events reviewed, an admin also
//! reads the audit log. The first admin is made with `vigil-fleet user add` (no default
//! password exists).

use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE: &str = "vigil_session";
/// How long a session lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;
/// Shortest password `user add` takes.
pub const MIN_PASSWORD: usize = 10;

/// What a user may do (ordered: each role can do what the ones before it can).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// Who is logged in on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub name: String,
    pub role: Role,
    pub csrf: String,
    /// The SHA-256 of the session's cookie token (to end it).
    pub token: String,
}

/// An Argon2id hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| e.to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches `hash` (constant time in argon2's comparison).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// 32 random bytes, base64url: a cookie token or a CSRF token.
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    // The OS's generator; it does not fail on Linux once booted.
    getrandom::fill(&mut b).expect("getrandom");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// What the store keeps of a cookie token.
pub fn token_hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session token of a `Cookie` header, if any.
pub fn cookie_token(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_named() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &h));
        assert!(!verify_password("correct horse batterz", &h));
        assert!(!verify_password("x", "not a hash"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn cookies_and_tokens() {
        assert_eq!(cookie_token("a=1; vigil_session=abc; b=2"), Some("abc"));
        assert_eq!(cookie_token("vigil_session="), None);
        assert_eq!(cookie_token("other=abc"), None);
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, new_token());
        assert_eq!(token_hash("x").len(), 64);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("ab", "abc"));
    }
}
