//! The pages: server-rendered HTML (maud: escaped by construction), htmx vendored in the
//! binary, live updates over SSE (the ingest says when the store changed; the page's table
//! fragment reloads, at most once a second).
//!
//! - `/`: the fleet: every box, online/offline and since when, version, cameras live of all,
//!   analysed fps, spool backlog, events and the last one, gaps (filled or not);
//! - `/devices/{id}`: one box: its cameras (state, fps, events, last error, latest picture),
//!   its sequence gaps, its last events;
//! - `/review`: events of every box with their pictures, filtered by device, camera, rule and
//!   class;
//! - `/snapshots/{id}.jpg`, `/devices/{id}/cameras/{camera}/picture.jpg`: stored pictures;
//! - `/sse`: `changed` events; `/api/stats`: the ingest's counters (JSON).
//!
//! No login yet: the server listens on loopback unless told otherwise (see `main.rs`).

use crate::ingest::{Counters, now_ms};
use crate::store::{DeviceRow, EventFilter, Store};
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vigil_core::wire::{TelemetryMsg, is_name};

const HTMX: &str = include_str!("../assets/htmx-2.0.8.min.js");
const HTMX_SSE: &str = include_str!("../assets/htmx-ext-sse-2.2.4.js");
const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;background:#f6f7f9;color:#222}
header{background:#1d2733;color:#fff;padding:8px 16px}header a{color:#cfe3ff;margin-right:16px}
main{padding:12px 16px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #e3e6ea;text-align:left;vertical-align:top}
.online{color:#0a7a2a;font-weight:600}.offline{color:#b3261e;font-weight:600}
.gap{color:#b3261e}img.thumb{height:72px}form.filters input{width:9em}";

/// What the handlers share.
pub struct App<S> {
    pub store: S,
    pub counters: Arc<Counters>,
    pub changed: tokio::sync::broadcast::Sender<()>,
}

pub fn router<S: Store + Clone>(app: Arc<App<S>>) -> Router {
    Router::new()
        .route("/", get(fleet::<S>))
        .route("/fragments/fleet", get(fleet_table::<S>))
        .route("/devices/{id}", get(device::<S>))
        .route(
            "/devices/{id}/cameras/{camera}/picture.jpg",
            get(camera_picture::<S>),
        )
        .route("/review", get(review::<S>))
        .route("/snapshots/{file}", get(snapshot::<S>))
        .route("/sse", get(sse::<S>))
        .route("/api/stats", get(stats::<S>))
        .route("/assets/htmx.min.js", get(|| async { js(HTMX) }))
        .route("/assets/sse.js", get(|| async { js(HTMX_SSE) }))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(app)
}

fn js(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        body,
    )
        .into_response()
}

fn page(title: &str, body: Markup) -> Response {
    Html(
        html! {
            (DOCTYPE)
            html {
                head {
                    meta charset="utf-8";
                    title { (title) " · Vigil fleet" }
                    style { (STYLE) }
                    script src="/assets/htmx.min.js" {}
                    script src="/assets/sse.js" {}
                }
                body hx-ext="sse" sse-connect="/sse" {
                    header {
                        strong { "Vigil fleet" } " · "
                        a href="/" { "Fleet" }
                        a href="/review" { "Review" }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
    .into_response()
}

fn failed(e: impl std::fmt::Display) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("store: {e}")).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what} not found")).into_response()
}

/// "3 min", "2 h", … since `ms`.
fn ago(ms: i64) -> String {
    let s = ((now_ms() - ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86399 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86400),
    }
}

fn telemetry(d: &DeviceRow) -> Option<TelemetryMsg> {
    serde_json::from_str(d.telemetry.as_deref()?).ok()
}

async fn fleet<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    page(
        "Fleet",
        html! {
            h2 { "Fleet" }
            div hx-get="/fragments/fleet" hx-trigger="load, sse:changed throttle:1s" {
                (fleet_markup(&app).await.unwrap_or_else(|e| html! { p { "store: " (e) } }))
            }
        },
    )
}

async fn fleet_table<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    match fleet_markup(&app).await {
        Ok(m) => Html(m.into_string()).into_response(),
        Err(e) => failed(e),
    }
}

async fn fleet_markup<S: Store>(app: &App<S>) -> crate::store::Result<Markup> {
    let devices = app.store.devices().await?;
    let gaps = app.store.gaps().await?;
    Ok(html! {
        table id="fleet" {
            tr {
                th { "box" } th { "state" } th { "version" } th { "cameras live" }
                th { "fps analysed" } th { "spool unsent" } th { "events" } th { "last event" }
                th { "gaps" }
            }
            @for d in &devices {
                @let t = telemetry(d);
                @let open = gaps.iter().filter(|g| g.device == d.device && !g.unfillable).count();
                @let lost = gaps.iter().filter(|g| g.device == d.device && g.unfillable).count();
                tr data-device=(d.device) {
                    td { a href={ "/devices/" (d.device) } { (d.device) } }
                    td class=(if d.state == "online" { "online" } else { "offline" }) {
                        (d.state) " for " (ago(d.since_ms))
                        @if let Some(r) = &d.reason { br; small { (r) } }
                    }
                    td { (d.version.as_deref().unwrap_or("?")) }
                    @match &t {
                        Some(t) => {
                            td { (t.cameras.values().filter(|c| c.state == "live").count()) " of " (t.cameras.len()) }
                            td { (format!("{:.1}", t.cameras.values().map(|c| c.fps_analysed).sum::<f64>())) }
                            td { (t.spool.unsent) }
                        }
                        None => { td { "—" } td { "—" } td { "—" } }
                    }
                    td { (d.events) }
                    td { (d.last_event_ms.map(|t| ago(t) + " ago").unwrap_or_else(|| "—".into())) }
                    td class=(if lost > 0 { "gap" } else { "" }) {
                        @if open + lost == 0 { "none" } @else { (open) " open, " (lost) " unfillable" }
                    }
                }
            }
        }
        @if devices.is_empty() { p { "No box has been heard from yet." } }
    })
}

async fn device<S: Store>(State(app): State<Arc<App<S>>>, Path(id): Path<String>) -> Response {
    if !is_name(&id) {
        return not_found("device");
    }
    let (devices, gaps) = match (app.store.devices().await, app.store.gaps().await) {
        (Ok(d), Ok(g)) => (d, g),
        (Err(e), _) | (_, Err(e)) => return failed(e),
    };
    let Some(d) = devices.into_iter().find(|d| d.device == id) else {
        return not_found("device");
    };
    let filter = EventFilter {
        device: Some(id.clone()),
        limit: 50,
        ..Default::default()
    };
    let events = match app.store.events(&filter).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let t = telemetry(&d);
    page(
        &id,
        html! {
            h2 { (id) }
            p class=(if d.state == "online" { "online" } else { "offline" }) {
                (d.state) " for " (ago(d.since_ms)) ", version " (d.version.as_deref().unwrap_or("?"))
                ", last heard " (ago(d.last_seen_ms)) " ago"
            }
            h3 { "Cameras" }
            @match &t {
                Some(t) => {
                    table {
                        tr { th { "camera" } th { "state" } th { "fps analysed" } th { "events" } th { "last error" } th { "latest picture" } }
                        @for (name, c) in &t.cameras {
                            tr {
                                td { (name) }
                                td { (c.state) }
                                td { (format!("{:.1}", c.fps_analysed)) }
                                td { (c.events) }
                                td { (c.last_error.as_deref().unwrap_or("")) }
                                td { img class="thumb" alt="no picture yet" src={ "/devices/" (id) "/cameras/" (name) "/picture.jpg" }; }
                            }
                        }
                    }
                }
                None => { p { "No telemetry yet." } }
            }
            h3 { "Sequence gaps" }
            @let mine: Vec<_> = gaps.iter().filter(|g| g.device == id).collect();
            @if mine.is_empty() { p { "None: every event from the first one seen is here." } }
            @else {
                table {
                    tr { th { "missing" } th { "replay requests" } th { "state" } }
                    @for g in mine {
                        tr {
                            td { (g.from_seq) "–" (g.to_seq) }
                            td { (g.requests) }
                            td class="gap" { @if g.unfillable { "could not be filled (the box no longer has them)" } @else { "asking the box" } }
                        }
                    }
                }
            }
            h3 { "Last events" }
            (events_table(&events))
        },
    )
}

fn events_table(events: &[crate::store::EventRow]) -> Markup {
    html! {
        table id="events" {
            tr { th { "picture" } th { "time" } th { "box" } th { "seq" } th { "camera" } th { "rule" } th { "kind" } th { "class" } }
            @for e in events {
                tr data-seq=(e.seq) {
                    td {
                        @if let (true, Some(id)) = (e.has_picture, &e.snapshot_id) {
                            a href={ "/snapshots/" (id) ".jpg" } { img class="thumb" src={ "/snapshots/" (id) ".jpg" } alt="snapshot"; }
                        }
                    }
                    td { (e.time) }
                    td { a href={ "/devices/" (e.device) } { (e.device) } }
                    td { (e.seq) }
                    td { (e.camera) }
                    td { (e.rule) }
                    td { (e.kind) }
                    td { (e.class) }
                }
            }
        }
    }
}

#[derive(serde::Deserialize, Default)]
struct ReviewQuery {
    device: Option<String>,
    camera: Option<String>,
    rule: Option<String>,
    class: Option<String>,
}

async fn review<S: Store>(
    State(app): State<Arc<App<S>>>,
    Query(q): Query<ReviewQuery>,
) -> Response {
    // Empty fields mean "any"; anything longer than a name cannot match and is not used.
    let clean = |v: Option<String>| v.filter(|s| !s.is_empty() && s.len() <= 64);
    let filter = EventFilter {
        device: clean(q.device),
        camera: clean(q.camera),
        rule: clean(q.rule),
        class: clean(q.class),
        limit: 200,
    };
    let events = match app.store.events(&filter).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    page(
        "Review",
        html! {
            h2 { "Review" }
            form class="filters" method="get" action="/review" {
                "box " input name="device" value=(v(&filter.device));
                " camera " input name="camera" value=(v(&filter.camera));
                " rule " input name="rule" value=(v(&filter.rule));
                " class " input name="class" value=(v(&filter.class));
                " " button { "Filter" }
            }
            p { (events.len()) " events (newest first, at most 200)" }
            (events_table(&events))
        },
    )
}

fn jpeg(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        bytes,
    )
        .into_response()
}

async fn snapshot<S: Store>(State(app): State<Arc<App<S>>>, Path(file): Path<String>) -> Response {
    let Some(id) = file.strip_suffix(".jpg").filter(|id| id.len() <= 64) else {
        return not_found("picture");
    };
    match app.store.snapshot(id).await {
        Ok(Some(b)) => jpeg(b),
        Ok(None) => not_found("picture"),
        Err(e) => failed(e),
    }
}

async fn camera_picture<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path((id, camera)): Path<(String, String)>,
) -> Response {
    if !is_name(&id) || !is_name(&camera) {
        return not_found("picture");
    }
    match app.store.camera_picture(&id, &camera).await {
        Ok(Some(b)) => jpeg(b),
        Ok(None) => not_found("picture"),
        Err(e) => failed(e),
    }
}

async fn sse<S: Store>(State(app): State<Arc<App<S>>>) -> impl IntoResponse {
    let rx = app.changed.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(()) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((
                Ok::<_, std::convert::Infallible>(SseEvent::default().event("changed").data("")),
                rx,
            )),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn stats<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    let c = &app.counters;
    let l = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    axum::Json(serde_json::json!({
        "events": l(&c.events),
        "duplicates": l(&c.duplicates),
        "statuses": l(&c.statuses),
        "telemetry": l(&c.telemetry),
        "pictures": l(&c.pictures),
        "replays_asked": l(&c.replays_asked),
        "refused": l(&c.refused),
        "store_errors": l(&c.store_errors),
    }))
    .into_response()
}
