//! The HTTP API (axum on hyper, `docs/http.md`): `/healthz` (200 or 503 with per-stage
//! detail, open to all), and behind bearer tokens ([`auth`]): `/metrics` (Prometheus text,
//! [`metrics`]), `/api/cameras`, `/api/events` (paged history from the spool) and
//! `/api/events/{id}/snapshot.jpg` (the event's picture) with a `read` token; `/api/config`
//! (the config file, secrets masked), `POST /api/reload` and `POST /api/cameras/{name}/restart`
//! with an `admin` token. The connections ([`server`]) are
//! bounded in number, time and size; optional TLS.
//!
//! The read routes read shared state only (camera views, the spool, the health registry, link
//! counters); the admin routes are requests through the control API ([`crate::control`]), as
//! the MQTT commands are.

pub mod auth;
pub mod live;
pub mod metrics;
pub mod server;

pub use metrics::{
    CameraLabel, InferLatency, new_infer_latency, openmetrics_to_prometheus, registry,
};

use crate::control::{ControlKind, ControlRequest, ControlSender};
use crate::mqtt::LinkStats;
use crate::plan::{CameraView, SharedViews};
use crate::spool::{PictureLookup, Spool};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vigil_core::config::HttpConfig;
use vigil_core::health::HealthRegistry;

pub(crate) fn read(v: &SharedViews) -> Vec<CameraView> {
    v.read().map(|g| g.clone()).unwrap_or_default()
}

/// What the read routes read.
#[derive(Clone)]
pub struct AppState {
    pub health: HealthRegistry,
    pub spool: Arc<Spool>,
    pub link: Arc<LinkStats>,
    pub cameras: SharedViews,
    pub registry: Arc<Registry>,
    /// `[live] max_clients` (`None`: the live view is off) and `[live] fps`.
    pub live_max_clients: Option<u32>,
    pub live_fps: f32,
}

/// Why the HTTP API could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// `[http] listen` could not be bound.
    #[error("http.listen {listen}")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key file of `[http.tls]` is unusable.
    #[error("{field} {}: {reason}", file.display())]
    TlsFile {
        field: &'static str,
        file: PathBuf,
        reason: String,
    },
    /// rustls refused the certificate and key (e.g. the key is not the certificate's).
    #[error("http.tls {}", cert.display())]
    Tls {
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

async fn healthz(State(s): State<AppState>) -> Response {
    let stages = s.health.check();
    let healthy = stages.iter().all(|st| st.ok || !st.required);
    let cameras: serde_json::Map<String, serde_json::Value> = read(&s.cameras)
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                serde_json::to_value(c.stats.status()).unwrap_or_default(),
            )
        })
        .collect();
    // The MQTT link is alive while disconnected (it is not a reason to be unhealthy); it says
    // why it is not connected (a refused certificate, an unreachable broker).
    let mqtt = serde_json::json!({
        "connected": s.link.connected.load(std::sync::atomic::Ordering::Relaxed),
        "last_error": s.link.last_error(),
    });
    let body = serde_json::json!({ "healthy": healthy, "stages": stages, "cameras": cameras, "mqtt": mqtt });
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn cameras(State(s): State<AppState>) -> Response {
    let list: Vec<serde_json::Value> = read(&s.cameras)
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "url": vigil_core::redact::redact(&c.url),
                "status": c.stats.status(),
                "pipeline_id": c.stats.pipeline_id.load(Ordering::Relaxed),
                "frames_decoded": c.stats.frames_in.load(Ordering::Relaxed),
                "frames_analysed": c.analysis.analysed.load(Ordering::Relaxed),
                "frames_motion_skipped": c.analysis.motion_skipped.load(Ordering::Relaxed),
                "frames_dropped": c.queue.dropped(c.slot),
                "events": c.analysis.events.load(Ordering::Relaxed),
                "restream": c.restream.as_ref().map(|(url, encoder)| serde_json::json!({
                    "url": url,
                    "encoder": encoder,
                })),
            })
        })
        .collect();
    axum::Json(list).into_response()
}

#[derive(serde::Deserialize)]
struct Page {
    /// First seq to return (default 1).
    from_seq: Option<u64>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

async fn events(State(s): State<AppState>, Query(p): Query<Page>) -> Response {
    let from = p.from_seq.unwrap_or(1).max(1);
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let spool = s.spool.clone();
    let rows = tokio::task::spawn_blocking(move || spool.from_seq(from, limit)).await;
    match rows {
        Ok(Ok(rows)) => {
            let next = rows.last().map(|r| r.seq + 1);
            let events: Vec<serde_json::Value> = rows
                .iter()
                .filter_map(|r| serde_json::from_slice(&r.payload).ok())
                .collect();
            axum::Json(serde_json::json!({ "events": events, "next_from_seq": next }))
                .into_response()
        }
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn not_found(msg: String) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({ "error": msg })),
    )
        .into_response()
}

/// `GET /api/events/{id}/snapshot.jpg`: the annotated picture of the frame the event fired
/// on, while the spool holds both; 404 with a JSON error naming why otherwise (never another
/// event's picture: the lookup is by the event's own id).
async fn event_snapshot(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    // Event ids are UUIDs: anything longer or with other characters names no event.
    if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return not_found("no event with that id (expected a UUID)".into());
    }
    let spool = s.spool.clone();
    let key = id.clone();
    match tokio::task::spawn_blocking(move || spool.picture_of(&key)).await {
        Ok(Ok(PictureLookup::Jpeg(jpeg))) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                // A picture never changes; it may only go away.
                (header::CACHE_CONTROL, "private, max-age=86400, immutable"),
            ],
            jpeg,
        )
            .into_response(),
        Ok(Ok(PictureLookup::NoEvent)) => not_found(format!(
            "no event {id} (never written, or dropped by the spool's retention)"
        )),
        Ok(Ok(PictureLookup::NoPicture)) => not_found(format!(
            "event {id} has no picture (none was made, or it was dropped for \
             snapshots.max_bytes)"
        )),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The read routes and `/healthz`, with no authentication and no limits: the API as the fuzz
/// target and the tests of the handlers see it. [`app`] is what the server serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/live", get(live::page))
        .merge(read_routes())
        .with_state(state)
}

fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics::metrics))
        .route("/api/cameras", get(cameras))
        .route("/api/events", get(events))
        .route("/api/events/{id}/snapshot.jpg", get(event_snapshot))
        .route("/api/live", get(live::websocket))
        .route("/api/cameras/{name}/mjpeg", get(live::mjpeg))
}

/// What the admin routes need.
#[derive(Clone)]
struct Admin {
    control: Option<ControlSender>,
    cameras: SharedViews,
}

/// Asks the supervisor through the control API: 200 with the reply's data, 422 with the
/// refusal's message and data, 503 when it is busy or does not answer in time.
async fn ask(admin: &Admin, kind: ControlKind) -> Response {
    let busy = |msg: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response()
    };
    let Some(control) = &admin.control else {
        return busy("the control API is not available");
    };
    let (req, rx) = ControlRequest::new(kind);
    if control.try_send(req).is_err() {
        return busy("busy: other requests are waiting for the supervisor");
    }
    match tokio::time::timeout(crate::control::REPLY_TIMEOUT, rx).await {
        Ok(Ok(Ok(data))) => axum::Json(data).into_response(),
        Ok(Ok(Err((message, data)))) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(serde_json::json!({ "error": message, "data": data })),
        )
            .into_response(),
        _ => busy("no answer from the supervisor"),
    }
}

async fn get_config(State(a): State<Admin>) -> Response {
    ask(&a, ControlKind::GetConfig).await
}

async fn post_reload(State(a): State<Admin>) -> Response {
    ask(&a, ControlKind::Reload).await
}

async fn post_restart(State(a): State<Admin>, Path(name): Path<String>) -> Response {
    if !read(&a.cameras).iter().any(|c| c.name == name) {
        let msg = format!("no running camera named {name:?}");
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": msg })),
        )
            .into_response();
    }
    ask(&a, ControlKind::RestartCamera(name)).await
}

/// Refuses a query longer than `max` (414) and a declared body longer than `max_body` (413),
/// before the handler runs.
async fn bound_request(
    State((max_query, max_body)): State<(usize, u64)>,
    req: Request,
    next: Next,
) -> Response {
    let error = |code: StatusCode, msg: String| {
        (code, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let query = req.uri().query().map_or(0, str::len);
    if query > max_query {
        return error(
            StatusCode::URI_TOO_LONG,
            format!("query of {query} bytes (expected at most {max_query})"),
        );
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max_body) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body of {n} bytes (expected at most {max_body})"),
        );
    }
    next.run(req).await
}

/// The served API: `/healthz` open, the read routes behind a `read` token, the admin routes
/// behind an `admin` token, every request bounded (query, body).
pub fn app(state: AppState, http: &HttpConfig, control: Option<ControlSender>) -> Router {
    let auth = Arc::new(auth::Auth::from_config(http));
    let admin = Admin {
        control,
        cameras: state.cameras.clone(),
    };
    let admin_routes = Router::new()
        .route("/api/config", get(get_config))
        .route("/api/reload", post(post_reload))
        .route("/api/cameras/{name}/restart", post(post_restart))
        .with_state(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require_admin,
        ));
    let read =
        read_routes()
            .with_state(state.clone())
            .route_layer(axum::middleware::from_fn_with_state(
                auth,
                auth::require_read,
            ));
    let limits = (http.max_query_bytes as usize, http.max_body_bytes);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/live", get(live::page))
        .with_state(state)
        .merge(read)
        .merge(admin_routes)
        .layer(DefaultBodyLimit::max(
            usize::try_from(http.max_body_bytes).unwrap_or(usize::MAX),
        ))
        .layer(axum::middleware::from_fn_with_state(limits, bound_request))
}

/// The TLS acceptor of `[http.tls]`.
fn tls_acceptor(tls: &vigil_core::config::HttpTls) -> Result<tokio_rustls::TlsAcceptor, HttpError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let file_error =
        |field, file: &std::path::Path, e: rustls_pki_types::pem::Error| HttpError::TlsFile {
            field,
            file: file.to_path_buf(),
            reason: e.to_string(),
        };
    let chain = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error("http.tls.cert", &tls.cert, e))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| file_error("http.tls.key", &tls.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |source| HttpError::Tls {
        cert: tls.cert.clone(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves the API where `[http]` says ([`HttpConfig::effective_listen`]: loopback only while
/// no token is set) until the task is dropped; returns the bound address and the URL scheme.
pub async fn serve(
    http: &HttpConfig,
    listen: SocketAddr,
    state: AppState,
    control: Option<ControlSender>,
) -> Result<(SocketAddr, &'static str, tokio::task::JoinHandle<()>), HttpError> {
    let listen_error = |source| HttpError::Listen {
        listen: listen.to_string(),
        source,
    };
    let tls = http.tls.as_ref().map(tls_acceptor).transpose()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    for (field, warning) in http.warnings() {
        tracing::warn!("{field}: {warning}");
    }
    let fds = server::fd_limit();
    let limits = server::Limits {
        max_connections: server::connection_cap(http.max_connections, fds),
        idle_timeout: http.idle_timeout.0,
        header_timeout: http.header_timeout.0,
    };
    if limits.max_connections < http.max_connections as usize {
        tracing::warn!(
            "HTTP API: at most {} connections, not {}: a quarter of the file descriptor limit \
             ({}); raise LimitNOFILE= for more",
            limits.max_connections,
            http.max_connections,
            fds.unwrap_or_default()
        );
    }
    let app = app(state, http, control);
    let task = tokio::spawn(server::run(listener, tls, app, limits));
    let scheme = if http.tls.is_some() { "https" } else { "http" };
    Ok((addr, scheme, task))
}
