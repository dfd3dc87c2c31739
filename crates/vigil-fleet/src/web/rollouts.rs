//! The Rollouts pages: releases (add one: the console downloads and verifies it), rollouts
//! (start one), a rollout's waves and boxes with pause / resume / abort / retry failed. Pages
//! read the stored documents; every change goes to the rollout driver
//! ([`crate::rollout::run`]), the only writer of rollouts.

use super::{App, allowed, audit, failed, need, not_found, page};
use crate::auth::{Role, Who};
use crate::ingest::now_ms;
use crate::rollout::{self, Control, Msg, Release, Rollout, Spec};
use crate::store::Store;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use std::sync::Arc;

/// How the console checks releases (`--ota-key`, `--download-dir`, `--release-max-mib`).
#[derive(Clone)]
pub struct Releases {
    /// This console drives the rollouts (not `--no-rollouts`).
    pub drive: bool,
    pub keys: Vec<ed25519_dalek::VerifyingKey>,
    pub download_dir: std::path::PathBuf,
    pub max_bytes: u64,
}

async fn releases<S: Store>(app: &App<S>) -> crate::store::Result<Vec<Release>> {
    Ok(app
        .store
        .docs(rollout::RELEASE)
        .await?
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .collect())
}

async fn rollouts<S: Store>(app: &App<S>) -> crate::store::Result<Vec<Rollout>> {
    let mut all: Vec<Rollout> = app
        .store
        .docs(rollout::ROLLOUT)
        .await?
        .into_iter()
        .filter_map(|(_, d)| serde_json::from_str(&d).ok())
        .collect();
    all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
    Ok(all)
}

fn counts(r: &Rollout) -> String {
    r.counts()
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn when(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64),
    )
    .to_string()
}

/// `GET /rollouts`.
pub async fn list<S: Store>(State(app): State<Arc<App<S>>>, headers: HeaderMap) -> Response {
    let w = match need(&app, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match list_markup(&app, &w, None).await {
        Ok(m) => page("Rollouts", &w, m),
        Err(e) => failed(e),
    }
}

async fn list_markup<S: Store>(
    app: &App<S>,
    w: &Who,
    error: Option<&str>,
) -> crate::store::Result<Markup> {
    let rel = releases(app).await?;
    let ros = rollouts(app).await?;
    let operator = w.role >= Role::Operator && app.releases.drive;
    Ok(html! {
        h2 { "Rollouts" }
        @if !app.releases.drive { p { "This console does not drive rollouts (--no-rollouts): start and control them on the one that does." } }
        @if let Some(e) = error { p.gap #error { (e) } }
        table #rollouts {
            tr { th { "rollout" } th { "release" } th { "state" } th { "boxes" } th { "started" } }
            @for r in &ros {
                tr {
                    td { a href={ "/rollouts/" (r.id) } { (r.id) } }
                    td { (r.release.version) " (sequence " (r.release.sequence) ")" }
                    td { (r.state.as_str()) @if !r.reason.is_empty() { " — " (r.reason) } }
                    td { (counts(r)) }
                    td { (when(r.created_ms)) " by " (r.created_by) }
                }
            }
        }
        @if operator && !rel.is_empty() {
            h3 { "Start a rollout" }
            form #new-rollout method="post" action="/rollouts" {
                input type="hidden" name="csrf" value=(w.csrf);
                label { "release " select name="release" {
                    @for r in &rel { option value=(r.id) { (r.version) " (" (r.id) ")" } }
                } } " "
                label { "boxes " input name="devices" value="*" size="12"; } " "
                label { "canary " input name="canary" value="1" size="3"; } " "
                label { "then up to % " input name="waves" value="10,50" size="8"; } " "
                label { "bake s " input name="bake_s" value="300" size="5"; } " "
                label { "failure threshold % " input name="threshold" value="0" size="3"; } " "
                label { "offline deadline s " input name="offline_s" value="3600" size="5"; } " "
                label { "stall s " input name="stall_s" value="1800" size="5"; } " "
                button { "Start" }
            }
        }
        h3 { "Releases" }
        table #releases {
            tr { th { "id" } th { "version" } th { "sequence" } th { "target" } th { "size" } th { "added" } }
            @for r in &rel {
                tr {
                    td { (r.id) }
                    td { (r.version) }
                    td { (r.sequence) }
                    td { code { (r.target.to_string()) } }
                    td { (r.bytes) " bytes, " (r.files) " file(s)" }
                    td { (when(r.created_ms)) " by " (r.created_by) }
                }
            }
        }
        @if operator {
            h3 { "Add a release" }
            p { "The console downloads the bundle, checks its sha256 and verifies it as a box would (signature by an --ota-key, expiry, every file) before any box can be sent it." }
            form #add-release method="post" action="/rollouts/releases" {
                input type="hidden" name="csrf" value=(w.csrf);
                label { "bundle URL " input name="url" size="50"; } " "
                label { "sha256 " input name="sha256" size="66"; } " "
                button { "Add" }
            }
        }
    })
}

#[derive(serde::Deserialize)]
pub struct ReleaseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    sha256: String,
}

/// `POST /rollouts/releases`: an operator adds a release; refused with the reason (and nothing
/// stored) unless it downloads and verifies.
pub async fn add_release<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Form(f): Form<ReleaseForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let cfg = app.releases.clone();
    let who = w.name.clone();
    let (url, sha) = (f.url.clone(), f.sha256.clone());
    let checked = tokio::task::spawn_blocking(move || {
        rollout::inspect(
            &url,
            &sha,
            &cfg.keys,
            &cfg.download_dir,
            cfg.max_bytes,
            &who,
            now_ms(),
        )
    })
    .await
    .unwrap_or_else(|e| Err(format!("the check stopped: {e}")));
    let r = match checked {
        Ok(r) => r,
        Err(why) => {
            audit(&app, &w.name, "release refused", &f.url, &why).await;
            return refused(&app, &w, &format!("release refused: {why}")).await;
        }
    };
    let doc = serde_json::to_string(&r).unwrap_or_default();
    if let Err(e) = app
        .store
        .put_doc(rollout::RELEASE, &r.id, &doc, now_ms())
        .await
    {
        return failed(e);
    }
    audit(&app, &w.name, "release added", &r.id, &r.version).await;
    Redirect::to("/rollouts").into_response()
}

async fn refused<S: Store>(app: &App<S>, w: &Who, why: &str) -> Response {
    match list_markup(app, w, Some(why)).await {
        Ok(m) => {
            let mut r = page("Rollouts", w, m);
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
        Err(e) => failed(e),
    }
}

#[derive(serde::Deserialize)]
pub struct RolloutForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    release: String,
    #[serde(default)]
    devices: String,
    #[serde(default)]
    canary: String,
    #[serde(default)]
    waves: String,
    #[serde(default)]
    bake_s: String,
    #[serde(default)]
    threshold: String,
    #[serde(default)]
    offline_s: String,
    #[serde(default)]
    stall_s: String,
}

fn number<T: std::str::FromStr>(field: &str, v: &str) -> Result<T, String> {
    v.trim().parse().map_err(|_| {
        format!(
            "{field}: {:?} is not a whole number",
            v.chars().take(40).collect::<String>()
        )
    })
}

impl RolloutForm {
    fn spec(&self) -> Result<Spec, String> {
        let percents = self
            .waves
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|p| number::<u8>("waves", p.trim_end_matches('%')))
            .collect::<Result<Vec<_>, _>>()?;
        let s = Spec {
            devices: self.devices.trim().to_string(),
            canary: number("canary", &self.canary)?,
            percents,
            bake_s: number("bake", &self.bake_s)?,
            failure_threshold_pct: number("failure threshold", &self.threshold)?,
            offline_deadline_s: number("offline deadline", &self.offline_s)?,
            stall_s: number("stall", &self.stall_s)?,
        };
        s.check()?;
        Ok(s)
    }
}

/// `POST /rollouts`: an operator starts a rollout of a release.
pub async fn create<S: Store>(
    State(app): State<Arc<App<S>>>,
    headers: HeaderMap,
    Form(f): Form<RolloutForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let spec = match f.spec() {
        Ok(s) => s,
        Err(why) => return refused(&app, &w, &why).await,
    };
    let release: Release = match app.store.doc(rollout::RELEASE, &f.release).await {
        Ok(Some(d)) => match serde_json::from_str(&d) {
            Ok(r) => r,
            Err(e) => return failed(e),
        },
        Ok(None) => {
            return refused(&app, &w, &format!("release: no release {:?}", f.release)).await;
        }
        Err(e) => return failed(e),
    };
    let devices: Vec<String> = match app.store.devices().await {
        Ok(d) => d.into_iter().map(|d| d.device).collect(),
        Err(e) => return failed(e),
    };
    let now = now_ms();
    let id = format!("r{now}");
    let r = match Rollout::new(&id, release, spec, &devices, &w.name, now) {
        Ok(r) => r,
        Err(why) => return refused(&app, &w, &why).await,
    };
    let detail = format!(
        "{} to {} box(es), {} wave(s)",
        r.release.id,
        r.boxes.len(),
        r.waves.len()
    );
    let r = Box::new(r);
    match ask(&app, |answer| Msg::Create { rollout: r, answer }).await {
        Ok(Ok(id)) => {
            audit(&app, &w.name, "rollout started", &id, &detail).await;
            Redirect::to(&format!("/rollouts/{id}")).into_response()
        }
        Ok(Err(why)) => refused(&app, &w, &why).await,
        Err(r) => r,
    }
}

/// Hands the driver a message with an answer channel and waits for the answer (`Err`: the
/// driver is gone).
async fn ask<S: Store>(
    app: &App<S>,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<String, String>>) -> Msg,
) -> Result<Result<String, String>, Response> {
    let (answer, got) = tokio::sync::oneshot::channel();
    if app.rollouts.send(make(answer)).await.is_err() {
        return Err(failed("the rollout driver stopped"));
    }
    got.await.map_err(|_| failed("the rollout driver stopped"))
}

/// `GET /rollouts/{id}`.
pub async fn show<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    render(&app, &id, &headers, true).await
}

/// `GET /fragments/rollouts/{id}`: what the page reloads when the store changes.
pub async fn fragment<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    render(&app, &id, &headers, false).await
}

async fn render<S: Store>(app: &App<S>, id: &str, headers: &HeaderMap, whole: bool) -> Response {
    let w = match need(app, headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match detail(app, &w, id).await {
        Ok(Some(m)) if whole => page(
            &format!("Rollout {id}"),
            &w,
            html! {
                div hx-get={ "/fragments/rollouts/" (id) } hx-trigger="sse:changed throttle:1s" { (m) }
            },
        ),
        Ok(Some(m)) => Html(m.into_string()).into_response(),
        Ok(None) => not_found("rollout"),
        Err(e) => failed(e),
    }
}

async fn detail<S: Store>(app: &App<S>, w: &Who, id: &str) -> crate::store::Result<Option<Markup>> {
    let Some(doc) = app.store.doc(rollout::ROLLOUT, id).await? else {
        return Ok(None);
    };
    let Ok(r) = serde_json::from_str::<Rollout>(&doc) else {
        return Ok(None);
    };
    let operator = w.role >= Role::Operator && app.releases.drive;
    let s = &r.spec;
    Ok(Some(html! {
        h2 { "Rollout " (r.id) }
        p #state { "state: " strong { (r.state.as_str()) } @if !r.reason.is_empty() { " — " (r.reason) } }
        p {
            "release " (r.release.version) " (sequence " (r.release.sequence) ", sha256 "
            code { (&r.release.sha256[..12]) } "…), boxes " code { (s.devices) } ", canary "
            (s.canary) ", then up to "
            (if s.percents.is_empty() { "—".to_string() } else { s.percents.iter().map(|p| format!("{p} %")).collect::<Vec<_>>().join(", ") })
            ", then the rest; bake " (s.bake_s)
            " s, failure threshold " (s.failure_threshold_pct) " %, offline deadline "
            (s.offline_deadline_s) " s, stall " (s.stall_s) " s; started " (when(r.created_ms))
            " by " (r.created_by)
        }
        @if operator {
            div #controls {
                @for (action, label, shown) in [
                    ("pause", "Pause", r.state == rollout::State::Running),
                    ("resume", "Resume", r.state == rollout::State::Paused),
                    ("retry", "Retry failed", r.boxes.iter().any(|b| b.phase.failure()) && r.state != rollout::State::Aborted),
                    ("abort", "Abort", matches!(r.state, rollout::State::Running | rollout::State::Paused)),
                ] {
                    @if shown {
                        form method="post" action={ "/rollouts/" (r.id) "/" (action) } style="display:inline" {
                            input type="hidden" name="csrf" value=(w.csrf);
                            button name="action" value=(action) { (label) }
                        } " "
                    }
                }
            }
        }
        table #waves {
            tr { th { "wave" } th { "boxes" } th { "started" } th { "done" } th { "" } }
            @for (i, wv) in r.waves.iter().enumerate() {
                tr {
                    td { (i + 1) }
                    td { (r.boxes.iter().filter(|b| b.wave == i).count()) }
                    td { (wv.started_ms.map(when).unwrap_or_default()) }
                    td { (wv.done_ms.map(when).unwrap_or_default()) }
                    td { @if wv.finished { "finished" } @else if wv.started_ms.is_some() { "current" } }
                }
            }
        }
        h3 { "Boxes" }
        table #boxes {
            tr { th { "box" } th { "wave" } th { "phase" } th { "attempts" } th { "detail" } th { "since" } }
            @for b in &r.boxes {
                tr data-device=(b.device) data-phase=(b.phase.as_str()) {
                    td { a href={ "/devices/" (b.device) } { (b.device) } }
                    td { (b.wave + 1) }
                    td { (b.phase.as_str()) }
                    td { (b.attempts) }
                    td { (b.detail) }
                    td { (when(b.since_ms)) }
                }
            }
        }
    }))
}

#[derive(serde::Deserialize)]
pub struct ControlForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /rollouts/{id}/{action}`: pause, resume, abort, retry (operator).
pub async fn control<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    Form(f): Form<ControlForm>,
) -> Response {
    let w = match allowed(&app, &headers, &f.csrf, Role::Operator).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let Some(action) = Control::parse(&action) else {
        return (
            StatusCode::BAD_REQUEST,
            "expected pause, resume, abort or retry",
        )
            .into_response();
    };
    let (rollout, who) = (id.clone(), w.name.clone());
    let asked = ask(&app, |answer| Msg::Control {
        rollout,
        action,
        who,
        answer,
    });
    match asked.await {
        Ok(Ok(done)) => {
            audit(&app, &w.name, &format!("rollout {done}"), &id, "").await;
            let _ = app.changed.send(());
            Redirect::to(&format!("/rollouts/{id}")).into_response()
        }
        Ok(Err(why)) => (StatusCode::CONFLICT, why).into_response(),
        Err(r) => r,
    }
}

/// `GET /api/rollouts/{id}`: the rollout's whole state (JSON, as stored), for tools.
pub async fn json<S: Store>(
    State(app): State<Arc<App<S>>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = need(&app, &headers).await {
        return r;
    }
    match app.store.doc(rollout::ROLLOUT, &id).await {
        Ok(Some(doc)) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            doc,
        )
            .into_response(),
        Ok(None) => not_found("rollout"),
        Err(e) => failed(e),
    }
}

/// A box's OTA state for its Device page: its retained `ota/status` (active and previous set,
/// probation, last outcome) and its part in every rollout, newest first.
pub async fn ota_of<S: Store>(app: &App<S>, device: &str) -> Markup {
    let status = app
        .store
        .doc(rollout::OTA_STATUS, device)
        .await
        .ok()
        .flatten()
        .and_then(|d| serde_json::from_str::<vigil_core::wire::OtaStatusMsg>(&d).ok());
    let set = |s: &Option<vigil_core::wire::OtaSetMsg>| match s {
        Some(s) => format!(
            "sequence {} ({})",
            s.sequence,
            s.version.as_deref().unwrap_or("?")
        ),
        None => "the box's own config".into(),
    };
    let mine: Vec<(Rollout, rollout::BoxState)> = rollouts(app)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let b = r.boxes.iter().find(|b| b.device == device)?.clone();
            Some((r, b))
        })
        .collect();
    html! {
        @match &status {
            Some(s) => {
                p #ota-status {
                    "active: " (set(&s.active)) "; previous: " (set(&s.previous))
                    @if s.probation.as_ref().is_some_and(|p| !p.is_null()) { "; on probation" }
                    @if s.busy { "; an update is downloading" }
                    @if let Some(l) = &s.last {
                        "; last: " (l.get("result").and_then(|v| v.as_str()).unwrap_or("?"))
                        @if let Some(q) = l.get("sequence").and_then(|v| v.as_u64()) { " of sequence " (q) }
                        @if let Some(r) = l.get("reason").and_then(|v| v.as_str()) { " — " (r) }
                    }
                }
            }
            None => { p { "No OTA status from this box yet." } }
        }
        @if !mine.is_empty() {
            table #ota-history {
                tr { th { "rollout" } th { "release" } th { "phase" } th { "detail" } th { "since" } }
                @for (r, b) in &mine {
                    tr {
                        td { a href={ "/rollouts/" (r.id) } { (r.id) } }
                        td { (r.release.version) " (sequence " (r.release.sequence) ")" }
                        td { (b.phase.as_str()) }
                        td { (b.detail) }
                        td { (when(b.since_ms)) }
                    }
                }
            }
        }
    }
}
