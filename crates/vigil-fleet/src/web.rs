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
//! - `/rollouts`: releases and staged OTA rollouts ([`crate::rollout`]; pages in
//!   `web/rollouts.rs`);
//! - `/sse`: `changed` events; `/api/stats`: the ingest's counters (JSON).
//!
//! Every page needs a login (`/login`; [`crate::auth`]); forms that change something carry the
//! session's CSRF token and check the role: an operator sends commands (`/devices/{id}`:
//! `ping`, `status`, `reload`, `camera/restart`, published on the box's `cmd/` topic, the reply
//! shown when it comes) and marks events reviewed; an admin reads the audit log (`/audit`).
//! Every command and login is in the audit log.

mod rollouts;
pub use rollouts::Releases;

use crate::auth::{self, Role, Who};
use crate::ingest::{Counters, now_ms};
use crate::store::{AuditRow, DeviceRow, EventFilter, ReplyRow, SessionRow, Store};
use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Redirect;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
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
    /// Commands go out through the ingest's client.
    pub mqtt: rumqttc::AsyncClient,
    pub prefix: String,
    /// The rollout driver.
    pub rollouts: tokio::sync::mpsc::Sender<crate::rollout::Msg>,
    pub releases: Releases,
}

/// The commands the console sends, and whether each names a camera.
pub const COMMANDS: &[(&str, bool)] = &[
    ("ping", false),
    ("status", false),
    ("reload", false),
    ("config/get", false),
    ("camera/restart", true),
];

pub fn router<S: Store + Clone>(app: Arc<App<S>>) -> Router {
    Router::new()
        .route("/", get(fleet::<S>))
        .route("/login", get(login_page).post(login::<S>))
        .route("/logout", post(logout::<S>))
        .route("/devices/{id}/commands", post(command::<S>))
        .route("/review/{device}/{seq}", post(mark::<S>))
        .route("/audit", get(audit_page::<S>))
        .route("/alerts", get(alerts_page::<S>))
        .route("/fragments/fleet", get(fleet_table::<S>))
        .route("/devices/{id}", get(device::<S>))
        .route(
            "/devices/{id}/cameras/{camera}/picture.jpg",
            get(camera_picture::<S>),
        )
        .route("/review", get(review::<S>))
        .route(
            "/rollouts",
            get(rollouts::list::<S>).post(rollouts::create::<S>),
        )
        .route("/rollouts/releases", post(rollouts::add_release::<S>))
        .route("/rollouts/{id}", get(rollouts::show::<S>))
        .route("/rollouts/{id}/{action}", post(rollouts::control::<S>))
        .route("/fragments/rollouts/{id}", get(rollouts::fragment::<S>))
        .route("/api/rollouts/{id}", get(rollouts::json::<S>))
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

fn page(title: &str, who: &Who, body: Markup) -> Response {
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
                        a href="/alerts" { "Alerts" }
                        a href="/rollouts" { "Rollouts" }
                        @if who.role >= Role::Admin { a href="/audit" { "Audit log" } }
                        span style="float:right" {
                            (who.name) " (" (who.role.as_str()) ") "
                            form method="post" action="/logout" style="display:inline" {
                                input type="hidden" name="csrf" value=(who.csrf);
                                button { "Log out" }
                            }
                        }
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

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, why.to_string()).into_response()
}

/// Who is logged in on this request (an unexpired session of a known user).
async fn who<S: Store>(app: &App<S>, headers: &HeaderMap) -> Option<Who> {
    let cookie = headers.get(header::COOKIE)?.to_str().ok()?;
    let token = auth::token_hash(auth::cookie_token(cookie)?);
    let s = app.store.session(&token, now_ms()).await.ok()??;
    Some(Who {
        name: s.name,
        role: Role::parse(&s.role)?,
        csrf: s.csrf,
        token,
    })
}

/// The logged-in user, or (`Err`) the answer for one who is not: to the login page.
async fn need<S: Store>(app: &App<S>, headers: &HeaderMap) -> Result<Who, Response> {
    who(app, headers)
        .await
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// The user of a form that changes something: logged in, the form's CSRF token the session's,
/// and at least `role` (else 403).
async fn allowed<S: Store>(
    app: &App<S>,
    headers: &HeaderMap,
    csrf: &str,
    role: Role,
) -> Result<Who, Response> {
    let Some(w) = who(app, headers).await else {
        return Err(forbidden("not logged in"));
    };
    if !auth::same(csrf, &w.csrf) {
        return Err(forbidden("missing or wrong CSRF token"));
    }
    if w.role < role {
        return Err(forbidden(&format!(
            "{} may not do this (needs {})",
            w.role.as_str(),
            role.as_str()
        )));
    }
    Ok(w)
}

async fn audit<S: Store>(app: &App<S>, who: &str, action: &str, target: &str, detail: &str) {
    let row = AuditRow {
        time_ms: now_ms(),
        name: who.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail: detail.chars().take(300).collect(),
    };
    if let Err(e) = app.store.audit(&row).await {
        tracing::error!("audit log: {e}");
    }
}

async fn login_page() -> Response {
    login_form(None, StatusCode::OK)
}

fn login_form(error: Option<&str>, code: StatusCode) -> Response {
    let body = html! {
        (DOCTYPE)
        html {
            head { meta charset="utf-8"; title { "Log in · Vigil fleet" } style { (STYLE) } }
            body {
                header { strong { "Vigil fleet" } }
                main {
                    h2 { "Log in" }
                    @if let Some(e) = error { p class="offline" { (e) } }
                    form method="post" action="/login" {
                        p { "User " input name="name" autocomplete="username"; }
                        p { "Password " input type="password" name="password" autocomplete="current-password"; }
                        button { "Log in" }
                    }
                }
            }
        }
    };
    (code, Html(body.into_string())).into_response()
}

#[derive(serde::Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

async fn login<S: Store>(State(app): State<Arc<App<S>>>, Form(f): Form<LoginForm>) -> Response {
    let user = if f.name.len() <= 64 && f.password.len() <= 1024 {
        app.store.user(&f.name).await.ok().flatten()
    } else {
        None
    };
    // Verified on a blocking thread (Argon2 takes tens of milliseconds by design).
    let ok = match user {
        Some((hash, role)) => {
            let pw = f.password.clone();
            tokio::task::spawn_blocking(move || auth::verify_password(&pw, &hash))
                .await
                .unwrap_or(false)
                .then_some(role)
        }
        None => None,
    };
    let Some(role) = ok else {
        // Slow down guessing; say nothing of which part was wrong.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        tracing::warn!(
            "failed login for {:?}",
            f.name.chars().take(64).collect::<String>()
        );
        return login_form(Some("Wrong user or password."), StatusCode::UNAUTHORIZED);
    };
    let token = auth::new_token();
    let session = SessionRow {
        token: auth::token_hash(&token),
        name: f.name.clone(),
        role,
        csrf: auth::new_token(),
        expires_ms: now_ms() + auth::SESSION_MS,
    };
    if let Err(e) = app.store.put_session(&session).await {
        return failed(e);
    }
    audit(&app, &f.name, "login", "", "").await;
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                    auth::COOKIE,
                    auth::SESSION_MS / 1000
                ),
            ),
        ],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Viewer).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let _ = app.store.drop_session(&w.token, now_ms()).await;
    audit(&app, &w.name, "logout", "", "").await;
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
                    auth::COOKIE
                ),
            ),
        ],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct CommandForm {
    #[serde(default)]
    csrf: String,
    command: String,
    #[serde(default)]
    camera: String,
}

/// `POST /devices/{id}/commands`: an operator's command to a box, published on its `cmd/`
/// topic with a request id of ours; the reply is stored when it comes.
async fn command<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(f): Form<CommandForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(&(name, with_camera)) = COMMANDS.iter().find(|(n, _)| *n == f.command) else {
        return (StatusCode::BAD_REQUEST, "unknown command").into_response();
    };
    if !is_name(&id) || (with_camera && !is_name(&f.camera)) {
        return (
            StatusCode::BAD_REQUEST,
            "expected a box and, for this command, a camera",
        )
            .into_response();
    }
    let request_id = format!("fleet-cmd-{}", &auth::new_token()[..22]);
    let mut body = serde_json::json!({ "request_id": request_id });
    if with_camera {
        body["camera"] = serde_json::Value::String(f.camera.clone());
    }
    let topic = format!("{}/{id}/cmd/{name}", app.prefix);
    if let Err(e) = app
        .mqtt
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
        .await
    {
        return failed(format!("MQTT: {e}"));
    }
    let sent = ReplyRow {
        request_id: request_id.clone(),
        device: id.clone(),
        command: name.to_string(),
        status: "sent".into(),
        message: String::new(),
        time_ms: now_ms(),
    };
    if let Err(e) = app.store.put_reply(&sent).await {
        return failed(e);
    }
    let detail = if with_camera { f.camera.as_str() } else { "" };
    audit(&app, &w.name, &format!("command {name}"), &id, detail).await;
    Redirect::to(&format!("/devices/{id}")).into_response()
}

#[derive(serde::Deserialize)]
struct MarkForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reviewed: String,
}

/// `POST /review/{device}/{seq}`: an operator marks an event reviewed (or not).
async fn mark<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path((device, seq)): Path<(String, i64)>,
    headers: HeaderMap,
    Form(f): Form<MarkForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let reviewed = f.reviewed == "1";
    if let Err(e) = app.store.mark_reviewed(&device, seq, reviewed).await {
        return failed(e);
    }
    let action = if reviewed { "reviewed" } else { "unreviewed" };
    audit(&app, &w.name, action, &format!("{device}#{seq}"), "").await;
    let _ = app.changed.send(());
    Redirect::to("/review").into_response()
}

async fn alerts_page<S: Store>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let rows = match app.store.incidents(500).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    page(
        "Alerts",
        &w,
        html! {
            h2 { "Alerts" }
            table id="alerts" {
                tr { th { "state" } th { "rule" } th { "box" } th { "camera" } th { "since" } th { "detail" } }
                @for i in &rows {
                    tr data-state=(if i.resolved_ms.is_none() { "firing" } else { "resolved" }) {
                        @match i.resolved_ms {
                            None => { td class="offline" { "firing" } }
                            Some(t) => { td { "resolved " (ago(t)) " ago" } }
                        }
                        td { (i.rule) }
                        td { a href={ "/devices/" (i.device) } { (i.device) } }
                        td { (i.camera) }
                        td { (ago(i.started_ms)) " ago" }
                        td { (i.detail) }
                    }
                }
            }
            @if rows.is_empty() { p { "No alert has fired." } }
        },
    )
}

async fn audit_page<S: Store>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if w.role < Role::Admin {
        return forbidden("the audit log is for admins");
    }
    let rows = match app.store.audit_log(500).await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    page(
        "Audit log",
        &w,
        html! {
            h2 { "Audit log" }
            table id="audit" {
                tr { th { "when" } th { "who" } th { "what" } th { "on" } th { "detail" } }
                @for a in &rows {
                    tr { td { (ago(a.time_ms)) " ago" } td { (a.name) } td { (a.action) } td { (a.target) } td { (a.detail) } }
                }
            }
        },
    )
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

/// The Fleet page's filters (`?state=&version=&site=&tag=&q=`), each optional.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct FleetFilter {
    #[serde(default)]
    state: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    site: String,
    #[serde(default)]
    tag: String,
    /// Part of the box's id.
    #[serde(default)]
    q: String,
}

impl FleetFilter {
    fn keeps(&self, d: &DeviceRow, t: Option<&TelemetryMsg>) -> bool {
        let labels = t.and_then(|t| t.device.as_ref());
        (self.state.is_empty() || d.state == self.state)
            && (self.version.is_empty() || d.version.as_deref() == Some(self.version.as_str()))
            && (self.site.is_empty()
                || labels.and_then(|l| l.site.as_deref()) == Some(self.site.as_str()))
            && (self.tag.is_empty() || labels.is_some_and(|l| l.tags.contains(&self.tag)))
            && (self.q.is_empty() || d.device.contains(self.q.as_str()))
    }

    /// The query string that gives this filter back (for the live fragment).
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("state", &self.state),
            ("version", &self.version),
            ("site", &self.site),
            ("tag", &self.tag),
            ("q", &self.q),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

async fn fleet<S: Store>(
    State(app): State<Arc<App<S>>>,
    Query(f): Query<FleetFilter>,
    headers: HeaderMap,
) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let fragment = format!("/fragments/fleet?{}", f.query());
    page(
        "Fleet",
        &w,
        html! {
            h2 { "Fleet" }
            form.filters #fleet-filters method="get" action="/" {
                label { "state " select name="state" {
                    @for s in ["", "online", "offline", "unknown"] {
                        option value=(s) selected[f.state == s] { (if s.is_empty() { "any" } else { s }) }
                    }
                } } " "
                label { "version " input name="version" value=(f.version); } " "
                label { "site " input name="site" value=(f.site); } " "
                label { "tag " input name="tag" value=(f.tag); } " "
                label { "box " input name="q" value=(f.q); } " "
                button { "Filter" }
            }
            div hx-get=(fragment) hx-trigger="load, sse:changed throttle:1s" {
                (fleet_markup(&app, &f).await.unwrap_or_else(|e| html! { p { "store: " (e) } }))
            }
        },
    )
}

async fn fleet_table<S: Store>(
    State(app): State<Arc<App<S>>>,
    Query(f): Query<FleetFilter>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = need(&app, &headers).await {
        return r;
    }
    match fleet_markup(&app, &f).await {
        Ok(m) => Html(m.into_string()).into_response(),
        Err(e) => failed(e),
    }
}

async fn fleet_markup<S: Store>(app: &App<S>, f: &FleetFilter) -> crate::store::Result<Markup> {
    let all = app.store.devices().await?;
    let total = all.len();
    let rows: Vec<(DeviceRow, Option<TelemetryMsg>)> = all
        .into_iter()
        .map(|d| {
            let t = telemetry(&d);
            (d, t)
        })
        .filter(|(d, t)| f.keeps(d, t.as_ref()))
        .collect();
    let gaps = app.store.gaps().await?;
    let firing: Vec<_> = app
        .store
        .incidents(1000)
        .await?
        .into_iter()
        .filter(|i| i.resolved_ms.is_none())
        .collect();
    let ota: std::collections::BTreeMap<String, vigil_core::wire::OtaStatusMsg> = app
        .store
        .docs(crate::rollout::OTA_STATUS)
        .await?
        .into_iter()
        .filter_map(|(d, doc)| Some((d, serde_json::from_str(&doc).ok()?)))
        .collect();
    Ok(html! {
        p { (rows.len()) " of " (total) " boxes" }
        table id="fleet" {
            tr {
                th { "box" } th { "state" } th { "version" } th { "OTA set" } th { "site / tags" } th { "cameras live" }
                th { "fps analysed" } th { "CPU" } th { "hottest" } th { "spool unsent" } th { "events" }
                th { "last event" } th { "gaps" } th { "alerts" }
            }
            @for (d, t) in &rows {
                @let open = gaps.iter().filter(|g| g.device == d.device && !g.unfillable).count();
                @let lost = gaps.iter().filter(|g| g.device == d.device && g.unfillable).count();
                @let sys = t.as_ref().and_then(|t| t.system.as_ref());
                @let labels = t.as_ref().and_then(|t| t.device.as_ref());
                tr data-device=(d.device) {
                    td { a href={ "/devices/" (d.device) } { (d.device) } }
                    td class=(if d.state == "online" { "online" } else { "offline" }) {
                        (d.state) " for " (ago(d.since_ms))
                        @if let Some(r) = &d.reason { br; small { (r) } }
                        @for b in t.iter().flat_map(|t| &t.engine_builds) {
                            br; small.building { "building the TensorRT engine of " (b.model.as_deref().unwrap_or("a model")) ": " (format!("{:.0}", b.seconds)) " s" }
                        }
                    }
                    td { (d.version.as_deref().unwrap_or("?")) }
                    td {
                        @match ota.get(&d.device) {
                            Some(o) => {
                                @match &o.active {
                                    Some(a) => { (a.version.as_deref().unwrap_or("?")) " (" (a.sequence) ")" }
                                    None => { "own config" }
                                }
                                @if o.probation.as_ref().is_some_and(|p| !p.is_null()) { br; small { "on probation" } }
                                @if o.busy { br; small { "updating" } }
                            }
                            None => { "—" }
                        }
                    }
                    td {
                        @if let Some(l) = labels {
                            (l.site.as_deref().unwrap_or(""))
                            @for tag in &l.tags { " " span.tag { "#" (tag) } }
                        }
                    }
                    @match t {
                        Some(t) => {
                            td { (t.cameras.values().filter(|c| c.state == "live").count()) " of " (t.cameras.len()) }
                            td { (format!("{:.1}", t.cameras.values().map(|c| c.fps_analysed).sum::<f64>())) }
                        }
                        None => { td { "—" } td { "—" } }
                    }
                    td { (sys.and_then(|s| s.cpu_pct).map(|c| format!("{c:.0} %")).unwrap_or_else(|| "—".into())) }
                    td {
                        @match sys.and_then(|s| s.temps_c.iter().max_by(|a, b| a.1.total_cmp(b.1))) {
                            Some((zone, c)) => { (format!("{c:.0} °C")) " " small { (zone) } }
                            None => { "—" }
                        }
                    }
                    td { (t.as_ref().map(|t| t.spool.unsent.to_string()).unwrap_or_else(|| "—".into())) }
                    td { (d.events) }
                    td { (d.last_event_ms.map(|t| ago(t) + " ago").unwrap_or_else(|| "—".into())) }
                    td class=(if lost > 0 { "gap" } else { "" }) {
                        @if open + lost == 0 { "none" } @else { (open) " open, " (lost) " unfillable" }
                    }
                    @let n = firing.iter().filter(|i| i.device == d.device).count();
                    td class=(if n > 0 { "offline" } else { "" }) {
                        @if n > 0 { a href="/alerts" { (n) " firing" } }
                    }
                }
            }
        }
        @if total == 0 { p { "No box has been heard from yet." } }
    })
}

async fn device<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
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
    let replies = app.store.replies(&id, 20).await.unwrap_or_default();
    let ota = rollouts::ota_of(&app, &id).await;
    let config = app
        .store
        .doc(crate::ingest::CONFIG, &id)
        .await
        .ok()
        .flatten();
    let cameras: Vec<String> = t
        .as_ref()
        .map(|t| t.cameras.keys().cloned().collect())
        .unwrap_or_default();
    page(
        &id,
        &w,
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
                        tr { th { "camera" } th { "state" } th { "fps analysed" } th { "events" } th { "rules now" } th { "last error" } th { "latest picture" } }
                        @for (name, c) in &t.cameras {
                            tr {
                                td { (name) }
                                td { (c.state) }
                                td { (format!("{:.1}", c.fps_analysed)) }
                                td { (c.events) }
                                td class="rules" {
                                    @for (rule, count) in &c.rules {
                                        @match count {
                                            vigil_core::wire::RuleMsg::Zone { inside } => { (rule) ": " (inside) " inside" br; }
                                            vigil_core::wire::RuleMsg::Line { ins, outs } => { (rule) ": " (ins) " in, " (outs) " out" br; }
                                        }
                                    }
                                }
                                td { (c.last_error.as_deref().unwrap_or("")) }
                                td { img class="thumb" alt="no picture yet" src={ "/devices/" (id) "/cameras/" (name) "/picture.jpg" }; }
                            }
                        }
                    }
                }
                None => { p { "No telemetry yet." } }
            }
            h3 { "Commands" }
            @if w.role >= Role::Operator {
                div id="commands" {
                    @for (name, with_camera) in COMMANDS {
                        @if *with_camera {
                            @for cam in &cameras {
                                form method="post" action={ "/devices/" (id) "/commands" } style="display:inline" {
                                    input type="hidden" name="csrf" value=(w.csrf);
                                    input type="hidden" name="command" value=(name);
                                    input type="hidden" name="camera" value=(cam);
                                    button id={ "cmd-" (name.replace('/', "-")) "-" (cam) } { (name) " " (cam) }
                                }
                                " "
                            }
                        } @else {
                            form method="post" action={ "/devices/" (id) "/commands" } style="display:inline" {
                                input type="hidden" name="csrf" value=(w.csrf);
                                input type="hidden" name="command" value=(name);
                                button id={ "cmd-" (name) } { (name) }
                            }
                            " "
                        }
                    }
                }
            } @else {
                p { "Commands need an operator." }
            }
            @if !replies.is_empty() {
                table id="replies" {
                    tr { th { "sent" } th { "command" } th { "status" } th { "reply" } }
                    @for r in &replies {
                        tr { td { (ago(r.time_ms)) " ago" } td { (r.command) } td { (r.status) } td { (r.message) } }
                    }
                }
            }
            h3 { "OTA" }
            (ota)
            h3 { "Config" }
            @match &config {
                Some(text) => { pre #config { (text) } }
                None => { p { "Not fetched yet: an operator's " code { "config/get" } " shows it here (secrets redacted by the box)." } }
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
            (events_table(&events, &w))
        },
    )
}

fn events_table(events: &[crate::store::EventRow], w: &Who) -> Markup {
    html! {
        table id="events" {
            tr { th { "picture" } th { "time" } th { "box" } th { "seq" } th { "camera" } th { "rule" } th { "kind" } th { "class" } th { "reviewed" } }
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
                    td {
                        @if e.reviewed { "✓ " }
                        @if w.role >= Role::Operator {
                            form method="post" action={ "/review/" (e.device) "/" (e.seq) } style="display:inline" {
                                input type="hidden" name="csrf" value=(w.csrf);
                                input type="hidden" name="reviewed" value=(if e.reviewed { "0" } else { "1" });
                                button { (if e.reviewed { "unmark" } else { "mark reviewed" }) }
                            }
                        }
                    }
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
    /// `15m`, `1h`, `24h`, `7d` or empty (any time).
    within: Option<String>,
}

/// The Review page's time windows.
const WITHIN: [(&str, &str, i64); 5] = [
    ("", "any time", 0),
    ("15m", "last 15 minutes", 15 * 60_000),
    ("1h", "last hour", 3_600_000),
    ("24h", "last 24 hours", 86_400_000),
    ("7d", "last 7 days", 7 * 86_400_000),
];

async fn review<S: Store>(
    State(app): State<Arc<App<S>>>,
    Query(q): Query<ReviewQuery>,
    headers: HeaderMap,
) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    // Empty fields mean "any"; anything longer than a name cannot match and is not used.
    let clean = |v: Option<String>| v.filter(|s| !s.is_empty() && s.len() <= 64);
    let within = q.within.unwrap_or_default();
    let window = WITHIN.iter().find(|w| w.0 == within).map_or(0, |w| w.2);
    let filter = EventFilter {
        device: clean(q.device),
        camera: clean(q.camera),
        rule: clean(q.rule),
        class: clean(q.class),
        since_ms: if window > 0 { now_ms() - window } else { 0 },
        limit: 200,
    };
    let events = match app.store.events(&filter).await {
        Ok(e) => e,
        Err(e) => return failed(e),
    };
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    page(
        "Review",
        &w,
        html! {
            h2 { "Review" }
            form class="filters" method="get" action="/review" {
                "box " input name="device" value=(v(&filter.device));
                " camera " input name="camera" value=(v(&filter.camera));
                " rule " input name="rule" value=(v(&filter.rule));
                " class " input name="class" value=(v(&filter.class));
                " " select name="within" {
                    @for (key, label, _) in WITHIN {
                        option value=(key) selected[key == within] { (label) }
                    }
                }
                " " button { "Filter" }
            }
            p { (events.len()) " events (newest first, at most 200)" }
            (events_table(&events, &w))
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

async fn snapshot<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = need(&app, &headers).await {
        return r;
    }
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
    headers: HeaderMap,
) -> Response {
    if let Err(r) = need(&app, &headers).await {
        return r;
    }
    if !is_name(&id) || !is_name(&camera) {
        return not_found("picture");
    }
    match app.store.camera_picture(&id, &camera).await {
        Ok(Some(b)) => jpeg(b),
        Ok(None) => not_found("picture"),
        Err(e) => failed(e),
    }
}

async fn sse<S: Store>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    if let Err(r) = need(&app, &headers).await {
        return r;
    }
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
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
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
        "webhooks_sent": l(&c.webhooks_sent),
        "webhook_failures": l(&c.webhook_failures),
        "lag_ms_buckets": c.lag_ms.0.iter().map(l).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn the_fleet_page_shows_a_box_building_a_tensorrt_engine() {
        let dir = std::env::temp_dir().join(format!("vigil-fleet-web-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("fleet.db")).unwrap();
        store.migrate().await.unwrap();
        let status = vigil_core::wire::StatusMsg {
            state: "online".into(),
            version: Some("0.1.0".into()),
            time: None,
            reason: None,
        };
        store.set_status("jetson-1", &status, 1000).await.unwrap();
        store.set_status("jetson-2", &status, 1000).await.unwrap();
        let t = |builds: &str| {
            format!(
                r#"{{"time":"2026-12-06T10:00:00Z","uptime_s":80,"mqtt_connected":true,"spool":{{"unsent":0,"last_seq":0}},"cameras":{{}}{builds}}}"#
            )
        };
        let building = t(
            r#","engine_builds":[{"entry":"ab12","model":"people","precision":"fp16","seconds":75.4}]"#,
        );
        store
            .set_telemetry("jetson-1", &building, 2000)
            .await
            .unwrap();
        store.set_telemetry("jetson-2", &t(""), 2000).await.unwrap();
        let (mqtt, _eventloop) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("t", "127.0.0.1", 1), 10);
        let app = App {
            store,
            counters: Default::default(),
            changed: tokio::sync::broadcast::channel(1).0,
            mqtt,
            prefix: "vigil".into(),
            rollouts: tokio::sync::mpsc::channel(1).0,
            releases: Releases {
                drive: false,
                keys: Vec::new(),
                download_dir: dir.clone(),
                max_bytes: 1,
            },
        };
        let html = fleet_markup(&app, &FleetFilter::default())
            .await
            .unwrap()
            .into_string();
        let row = |id: &str| {
            let from = html.find(&format!("data-device=\"{id}\"")).unwrap();
            let to = html[from..].find("</tr>").unwrap();
            html[from..from + to].to_string()
        };
        assert!(
            row("jetson-1").contains("building the TensorRT engine of people: 75 s"),
            "{html}"
        );
        assert!(!row("jetson-2").contains("building"), "{html}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
