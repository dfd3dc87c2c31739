//! Target `http_query`: a request as a client sends it, through the API the server serves
//! (`http::app`: bearer tokens, query and body limits, the read and admin routes, a real spool
//! with five events, a control channel that answers every request).
//!
//! One input: a first line, the request target (a path and query when it starts with `/`,
//! else the query of `/api/events`), optionally after `POST `; then header lines (`Name:
//! value`) up to an empty line, then the body. Without an `Authorization` line the read token
//! is sent.
//!
//! Checked: no answer is a 5xx but `/healthz`'s 503; no route but `/healthz` answers 2xx
//! without a configured token in the request, nor an admin route without the admin token; and
//! `/api/events` never returns an event before the `from_seq` it was asked for.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;
use vigil_control::control::{ControlRequest, QUEUE};
use vigil_control::http::auth::token_digest;
use vigil_control::http::{AppState, app, new_infer_latency, registry};
use vigil_control::mqtt::LinkStats;
use vigil_control::spool::{Retention, Spool};
use vigil_core::config::{HttpConfig, HttpToken, TokenScope};
use vigil_core::health::HealthRegistry;

/// The tokens the API is configured with (their SHA-256 digests).
pub const READ_TOKEN: &str = "fuzz-read-token";
pub const ADMIN_TOKEN: &str = "fuzz-admin-token";

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
}

fn token(name: &str, scope: TokenScope, text: &str) -> HttpToken {
    HttpToken {
        name: name.into(),
        scope,
        sha256: token_digest(text)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = crate::scratch("http");
        let _ = std::fs::remove_file(dir.join("events.db"));
        let spool = Arc::new(Spool::open(&dir.join("events.db"), Retention::default()).unwrap());
        for i in 0..5 {
            spool
                .append(&format!("e{i}"), "cam", |seq| {
                    format!("{{\"seq\":{seq}}}").into_bytes()
                })
                .unwrap();
        }
        let health = HealthRegistry::default();
        let link = Arc::new(LinkStats::default());
        let cameras = Arc::new(std::sync::RwLock::new(Vec::new()));
        let registry = Arc::new(registry(
            (&cameras, &spool, &link, &health),
            &new_infer_latency(),
        ));
        let state = AppState {
            health,
            spool,
            link,
            cameras,
            registry,
            live_max_clients: Some(4),
            live_fps: 5.0,
        };
        let http = HttpConfig {
            tokens: vec![
                token("reader", TokenScope::Read, READ_TOKEN),
                token("operator", TokenScope::Admin, ADMIN_TOKEN),
            ],
            ..HttpConfig::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        // The supervisor's side of the control API: every request answered at once.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ControlRequest>(QUEUE);
        rt.spawn(async move {
            while let Some(req) = rx.recv().await {
                let _ = req.reply.send(Ok(serde_json::json!({"summary": "done"})));
            }
        });
        let app = app(state, &http, Some(tx));
        Fixture { rt, app }
    })
}

/// The `from_seq` a query asks for, read as a client means it.
fn asked_from(query: &str) -> Option<u64> {
    query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("from_seq="))
        .next_back()?
        .parse()
        .ok()
}

fn admin_path(path: &str) -> bool {
    path == "/api/config"
        || path == "/api/reload"
        || (path.starts_with("/api/cameras/") && path.ends_with("/restart"))
}

pub fn run(data: &[u8]) {
    let _ = answer(data);
}

/// Sends the request an input describes and checks the answer; its status code (None for an
/// input that is no request).
fn answer(data: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(data).ok()?;
    let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
    let mut lines = head.split('\n');
    let first = lines.next().unwrap_or("");
    let (method, target) = match first.strip_prefix("POST ") {
        Some(t) => (Method::POST, t),
        None => (Method::GET, first),
    };
    let target = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/api/events?{target}")
    };
    let uri = target.parse::<Uri>().ok()?;
    let (path, query) = (uri.path().to_string(), uri.query().map(str::to_string));
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .ok()?;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            req.headers_mut().append(n, v);
        }
    }
    if !req.headers().contains_key(header::AUTHORIZATION) {
        let bearer = HeaderValue::from_str(&format!("Bearer {READ_TOKEN}")).unwrap();
        req.headers_mut().insert(header::AUTHORIZATION, bearer);
    }
    let presented: String = req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let f = fixture();
    let (status, body) = f.rt.block_on(async {
        let resp = f.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await;
        (status, body)
    });
    let body = body.expect("the body is read");
    let shown = || String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    assert!(
        !status.is_server_error() || (path == "/healthz" && status.as_u16() == 503),
        "{target:?}: {status} {}",
        shown()
    );
    if status.is_success() && path != "/healthz" {
        let admin = presented.contains(ADMIN_TOKEN);
        assert!(
            admin || presented.contains(READ_TOKEN),
            "{target:?} answered {status} without a token: {presented:?}"
        );
        assert!(
            admin || !admin_path(&path),
            "admin route {target:?} answered {status} without the admin token: {presented:?}"
        );
    }
    if path == "/api/events"
        && status.is_success()
        && let Some(from) = query.as_deref().and_then(asked_from)
    {
        let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        for e in v["events"].as_array().into_iter().flatten() {
            let seq = e["seq"].as_u64().unwrap_or(0);
            assert!(
                seq >= from,
                "{target:?}: event seq {seq} before from_seq {from}"
            );
        }
    }
    Some(status.as_u16())
}

#[cfg(test)]
mod tests {
    use super::answer;

    /// The target reaches the handlers: the fixture's tokens work, and the API refuses what
    /// it must (so a fuzzed input that gets past it would be seen).
    #[test]
    fn the_fixture_answers_as_the_api_does() {
        let admin = "Authorization: Bearer fuzz-admin-token";
        let read = "Authorization: Bearer fuzz-read-token";
        for (input, code) in [
            ("from_seq=2&limit=2".to_string(), 200),
            ("/healthz\nAuthorization: nope".to_string(), 200),
            ("/api/cameras\nAuthorization: Bearer other".to_string(), 401),
            (format!("/api/config\n{admin}"), 200),
            (format!("/api/config\n{read}"), 403),
            (format!("POST /api/reload\n{admin}\n\n"), 200),
            (format!("/api/reload\n{admin}"), 405),
            ("/nothing".to_string(), 404),
            (format!("/api/events?{}", "x".repeat(2000)), 414),
        ] {
            assert_eq!(answer(input.as_bytes()), Some(code), "{input}");
        }
    }
}
