//! Bearer tokens: `Authorization: Bearer <token>` is hashed (SHA-256) and compared in constant
//! time with every digest of `[[http.tokens]]`; the token found must have the scope the route
//! needs (`read` < `admin`).
//!
//! Why a plain SHA-256 and not a password hash (argon2, PBKDF2): a token is 32 random bytes
//! made by `vigil token new`, not a password a person chose. Slow hashes exist to make guessing
//! low-entropy secrets from a stolen digest expensive; a 256-bit random secret cannot be guessed
//! from its digest at any speed, so the digest in the config is safe to show, and checking a
//! request costs one fast hash (a slow hash per request would hand an attacker a CPU-exhaustion
//! lever). Comparing digests, not tokens, also means the time a comparison takes says nothing
//! about the configured secrets; it is constant-time all the same (`subtle`).
//!
//! Answers: no or a malformed `Authorization` → 401 with `WWW-Authenticate: Bearer
//! realm="vigil"`; an unknown token → 401 with `error="invalid_token"`; a token whose scope is
//! too small → 403 with `error="insufficient_scope"` (RFC 6750). With no tokens configured
//! every request passes (the API then listens on the loopback address only: see
//! `HttpConfig::effective_listen`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use vigil_core::config::{HttpConfig, TokenScope};

/// Longest token text looked at (a real one is 47 characters).
const MAX_TOKEN_LEN: usize = 512;

#[derive(Debug)]
struct Token {
    name: String,
    scope: TokenScope,
    digest: [u8; 32],
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Vec<Token>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A bearer token that matches no configured one.
    Invalid,
    /// A known token without the scope the route needs.
    Insufficient { token: String, need: TokenScope },
}

fn hex_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a token's text: what `[[http.tokens]] sha256` holds (lower-case hex).
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// The tokens of a validated `[http]` table (a digest that is not 64 hex digits, which
    /// validation refuses, is skipped).
    pub fn from_config(http: &HttpConfig) -> Self {
        Self {
            tokens: http
                .tokens
                .iter()
                .filter_map(|t| {
                    Some(Token {
                        name: t.name.clone(),
                        scope: t.scope,
                        digest: hex_digest(&t.sha256)?,
                    })
                })
                .collect(),
        }
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The name of the token that grants `need`, or why the request is refused.
    pub fn check(&self, headers: &HeaderMap, need: TokenScope) -> Result<Option<&str>, Refusal> {
        if !self.enabled() {
            return Ok(None);
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .or_else(|| websocket_token(headers))
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Missing)?;
        if presented.len() > MAX_TOKEN_LEN {
            return Err(Refusal::Invalid);
        }
        let digest = token_digest(presented);
        // Every digest is compared, whichever matches.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if bool::from(t.digest.ct_eq(&digest)) && found.is_none() {
                found = Some(t);
            }
        }
        let t = found.ok_or(Refusal::Invalid)?;
        if t.scope < need {
            return Err(Refusal::Insufficient {
                token: t.name.clone(),
                need,
            });
        }
        Ok(Some(&t.name))
    }
}

/// A browser's WebSocket cannot send `Authorization`: the live view offers its token as the
/// subprotocol `vigil.bearer.<token>` (`Sec-WebSocket-Protocol`), which this reads.
fn websocket_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("vigil.bearer."))
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, challenge, message) = match &self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"vigil\"".to_string(),
                "a bearer token is needed (Authorization: Bearer <token>)".to_string(),
            ),
            Refusal::Invalid => (
                StatusCode::UNAUTHORIZED,
                "Bearer realm=\"vigil\", error=\"invalid_token\"".to_string(),
                "unknown token".to_string(),
            ),
            Refusal::Insufficient { token, need } => (
                StatusCode::FORBIDDEN,
                format!(
                    "Bearer realm=\"vigil\", error=\"insufficient_scope\", scope=\"{}\"",
                    need.as_str()
                ),
                format!("token {token:?} lacks the {} scope", need.as_str()),
            ),
        };
        let mut resp = (code, axum::Json(serde_json::json!({ "error": message }))).into_response();
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}

async fn require(auth: &Auth, need: TokenScope, req: Request, next: Next) -> Response {
    match auth.check(req.headers(), need) {
        Ok(Some(name)) if need == TokenScope::Admin => {
            tracing::info!(token = name, method = %req.method(), path = req.uri().path(), "HTTP admin request");
            next.run(req).await
        }
        Ok(_) => next.run(req).await,
        Err(refusal) => {
            tracing::debug!(path = req.uri().path(), ?refusal, "HTTP request refused");
            refusal.into_response()
        }
    }
}

/// Middleware: the route needs a `read` token.
pub async fn require_read(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    require(&auth, TokenScope::Read, req, next).await
}

/// Middleware: the route needs an `admin` token.
pub async fn require_admin(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    require(&auth, TokenScope::Admin, req, next).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::config::HttpToken;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn auth() -> Auth {
        let tokens = [
            ("dash", TokenScope::Read, "r-token"),
            ("ops", TokenScope::Admin, "a-token"),
        ]
        .into_iter()
        .map(|(name, scope, token)| HttpToken {
            name: name.into(),
            scope,
            sha256: hex(token_digest(token)),
        })
        .collect();
        Auth::from_config(&HttpConfig {
            tokens,
            ..HttpConfig::default()
        })
    }

    #[test]
    fn a_websocket_may_offer_its_token_as_a_subprotocol() {
        let a = auth();
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("vigil, vigil.bearer.r-token"),
        );
        assert_eq!(a.check(&h, TokenScope::Read).unwrap(), Some("dash"));
        assert!(matches!(
            a.check(&h, TokenScope::Admin),
            Err(Refusal::Insufficient { .. })
        ));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("vigil"),
        );
        assert!(matches!(
            a.check(&h, TokenScope::Read),
            Err(Refusal::Missing)
        ));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("vigil.bearer.wrong"),
        );
        assert!(matches!(
            a.check(&h, TokenScope::Read),
            Err(Refusal::Invalid)
        ));
    }

    fn bearer(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn scopes_are_enforced() {
        let a = auth();
        let read = TokenScope::Read;
        let admin = TokenScope::Admin;
        assert_eq!(a.check(&HeaderMap::new(), read), Err(Refusal::Missing));
        assert_eq!(a.check(&bearer("Basic x"), read), Err(Refusal::Missing));
        assert_eq!(a.check(&bearer("Bearer nope"), read), Err(Refusal::Invalid));
        assert_eq!(a.check(&bearer("Bearer r-token"), read), Ok(Some("dash")));
        assert_eq!(a.check(&bearer("bearer  a-token "), read), Ok(Some("ops")));
        assert_eq!(a.check(&bearer("Bearer a-token"), admin), Ok(Some("ops")));
        assert_eq!(
            a.check(&bearer("Bearer r-token"), admin),
            Err(Refusal::Insufficient {
                token: "dash".into(),
                need: admin
            })
        );
        let long = format!("Bearer {}", "x".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(a.check(&bearer(&long), read), Err(Refusal::Invalid));
        assert_eq!(Auth::default().check(&HeaderMap::new(), admin), Ok(None));
    }

    #[test]
    fn refusals_carry_the_challenge() {
        let r = Refusal::Missing.into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"vigil\""
        );
        let r = Refusal::Insufficient {
            token: "dash".into(),
            need: TokenScope::Admin,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(
            r.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("insufficient_scope")
        );
    }
}
