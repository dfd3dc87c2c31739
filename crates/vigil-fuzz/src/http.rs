//! Target `http_query`: a request line's target as a client sends it, through the real router
//! (`http::router`, axum's path matching and query extraction, the handlers, a real spool with
//! five events). An input starting with `/` is the whole path and query; anything else is the
//! query of `/api/events`.
//!
//! Checked: no answer is a 5xx but `/healthz`'s 503, and `/api/events` never returns an event
//! before the `from_seq` it was asked for.

use axum::body::Body;
use axum::http::{Request, Uri};
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;
use vigil_control::http::{AppState, new_infer_latency, registry, router};
use vigil_control::mqtt::LinkStats;
use vigil_control::spool::{Retention, Spool};
use vigil_core::health::HealthRegistry;

struct Fixture {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
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
        let app = router(AppState {
            health,
            spool,
            link,
            cameras,
            registry,
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
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

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let target = if text.starts_with('/') {
        text.to_string()
    } else {
        format!("/api/events?{text}")
    };
    let Ok(uri) = target.parse::<Uri>() else {
        return;
    };
    let (path, query) = (uri.path().to_string(), uri.query().map(str::to_string));
    let Ok(req) = Request::get(uri).body(Body::empty()) else {
        return;
    };
    let f = fixture();
    let (status, body) = f.rt.block_on(async {
        let resp = f.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 24).await;
        (status, body)
    });
    let body = body.expect("the body is read");
    assert!(
        !status.is_server_error() || (path == "/healthz" && status.as_u16() == 503),
        "{target:?}: {status} {}",
        String::from_utf8_lossy(&body)
    );
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
}
