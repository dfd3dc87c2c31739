//! The supervisor: turns a validated config into a running plan (models loaded, one analysis
//! worker per model, one pipeline per camera), forwards events and telemetry to MQTT, and
//! shuts everything down in order on SIGINT/SIGTERM.

use crate::error::{ControlError, Result};
use crate::mqtt::MqttLink;
use crate::mqtt::commands::{ControlKind, ControlRequest};
use crate::spool::{Retention, Spool, SpoolStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vigil_core::config::Config;
use vigil_core::error::chain;
use vigil_core::events::Event;
use vigil_core::facts::BoxFacts;
use vigil_dataplane::worker::OutputCounters;

use crate::plan::{ApplyReport, CameraTelemetry, Instruments, Plan, SharedViews, round2};

#[derive(Debug, Serialize)]
struct TelemetryPayload {
    time: String,
    uptime_s: f64,
    mqtt_connected: bool,
    /// Event publishes handed to the MQTT client, re-sends after a reconnect included.
    events_published: u64,
    /// Events the broker acknowledged (marked sent in the spool).
    events_acked: u64,
    spool: SpoolStats,
    cameras: BTreeMap<String, CameraTelemetry>,
}

/// Reloads: validates the new config (the file, or `text` for `config/set`, each with the active
/// OTA set's overlay), applies it to the plan (only what changed), and on success makes `text`
/// the config file. On any error the running config and plan are kept and the errors returned
/// (and logged).
fn reload(
    plan: &mut Plan,
    current: &mut Config,
    path: &std::path::Path,
    text: Option<&str>,
    views: &SharedViews,
    facts: &dyn BoxFacts,
) -> Result<serde_json::Value, (String, serde_json::Value)> {
    let t0 = Instant::now();
    let candidate = path.with_extension("toml.candidate");
    let loaded = match text {
        None => vigil_ota::load_effective(path, facts),
        Some(t) => match std::fs::write(&candidate, t) {
            Ok(()) => vigil_ota::load_effective(&candidate, facts),
            Err(e) => {
                let msg = format!("cannot write {}: {e}", candidate.display());
                return Err((msg, serde_json::Value::Null));
            }
        },
    };
    let new = match loaded {
        Ok(c) => c,
        Err(errors) => {
            let _ = std::fs::remove_file(&candidate);
            let lines: Vec<String> = errors.errors().iter().map(|e| e.to_string()).collect();
            for l in &lines {
                tracing::error!("reload rejected: {l}");
            }
            tracing::warn!("reload rejected; the running config is kept");
            return Err((
                format!(
                    "config rejected ({} error{}); the running config is kept",
                    lines.len(),
                    if lines.len() == 1 { "" } else { "s" }
                ),
                serde_json::json!({ "errors": lines }),
            ));
        }
    };
    let applied = apply_loaded(plan, current, new, views, t0);
    if text.is_some() {
        let saved = match &applied {
            Ok(_) => std::fs::rename(&candidate, path),
            Err(_) => std::fs::remove_file(&candidate),
        };
        if let (Ok(_), Err(e)) = (&applied, saved) {
            tracing::error!("config applied but not saved to {}: {e}", path.display());
        }
    }
    applied.map(|(v, _)| v)
}

/// Applies a validated config to the plan and, on success, makes it the running one (sections
/// that need a restart stay as they run). The reply data and the report, or the error.
fn apply_loaded(
    plan: &mut Plan,
    current: &mut Config,
    new: Config,
    views: &SharedViews,
    t0: Instant,
) -> Result<(serde_json::Value, ApplyReport), (String, serde_json::Value)> {
    let restart_only = [
        ("device", current.device != new.device),
        ("mqtt", current.mqtt != new.mqtt),
        ("storage", current.storage != new.storage),
        ("http", current.http != new.http),
    ];
    let needs_restart: Vec<&str> = restart_only
        .iter()
        .filter(|(_, changed)| *changed)
        .map(|(n, _)| *n)
        .collect();
    match tokio::task::block_in_place(|| plan.apply(&new)) {
        Ok(report) => {
            if let Ok(mut v) = views.write() {
                *v = plan.views();
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let mut summary = report.summary();
            if !needs_restart.is_empty() {
                summary.push_str(&format!(
                    "; [{}] changes take effect after a restart",
                    needs_restart.join("], [")
                ));
            }
            tracing::info!(ms = format!("{ms:.1}"), "reload applied: {summary}");
            // Sections that need a restart stay as they run, so a later reload still reports them.
            *current = Config {
                device: current.device.clone(),
                mqtt: current.mqtt.clone(),
                storage: current.storage.clone(),
                http: current.http.clone(),
                ..new
            };
            let data = serde_json::json!({ "summary": summary, "report": report, "ms": ms, "needs_restart": needs_restart });
            Ok((data, report))
        }
        Err(e) => {
            tracing::error!("reload failed: {}; the running config is kept", chain(&e));
            Err((
                format!("reload failed: {}; the running config is kept", chain(&e)),
                serde_json::Value::Null,
            ))
        }
    }
}

/// Applies an OTA set's config; the models whose backend is new, with their output counters,
/// for the probation.
fn apply_for_ota(
    plan: &mut Plan,
    current: &mut Config,
    new: &Config,
    views: &SharedViews,
) -> Result<Vec<(String, Arc<OutputCounters>)>, String> {
    let (_, report) =
        apply_loaded(plan, current, new.clone(), views, Instant::now()).map_err(|(msg, _)| msg)?;
    Ok(report
        .models_loaded
        .iter()
        .chain(&report.models_swapped)
        .filter_map(|m| plan.output_counters(m).map(|c| (m.clone(), c)))
        .collect())
}

/// Hands what the OTA agent has to publish to the link.
fn flush_ota(agent: &mut vigil_ota::agent::Agent, link: &MqttLink) {
    for (topic, payload) in agent.outbox.drain(..) {
        link.ota(topic, payload);
    }
}

/// Writes an event to the spool (which numbers it) and returns its sequence number.
fn spool_event(spool: &Spool, ev: &mut Event) -> Result<u64, crate::spool::SpoolError> {
    let (id, camera) = (ev.id.clone(), ev.camera.clone());
    let seq = tokio::task::block_in_place(|| {
        spool.append(&id, &camera, |seq| {
            ev.seq = seq;
            serde_json::to_vec(&*ev).unwrap_or_default()
        })
    })?;
    Ok(seq)
}

/// `vigil run`: start everything, spool and forward events, publish telemetry, answer commands,
/// until a signal arrives.
pub async fn run(cfg: Config, config_path: PathBuf, facts: Arc<dyn BoxFacts>) -> Result<()> {
    let mut cfg = cfg;
    let started = Instant::now();
    let state_dir = cfg.storage.state_dir();
    let spool_path = state_dir.join("events.db");
    let retention = Retention {
        max_events: cfg.storage.max_events,
        max_age: cfg.storage.max_age.0,
        max_bytes: cfg.storage.max_bytes,
    };
    let spool = Arc::new(Spool::open(&spool_path, retention)?);
    let held = spool.stats()?;
    tracing::info!(
        spool = %spool_path.display(), unsent = held.unsent, last_seq = held.last_seq,
        "event spool open"
    );
    let snapshot = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    let (control_tx, mut control_rx) = tokio::sync::mpsc::channel::<ControlRequest>(4);
    let handler = {
        let snapshot = snapshot.clone();
        crate::mqtt::commands::Handler::new(Arc::new(move || {
            snapshot.lock().map(|v| v.clone()).unwrap_or_default()
        }))
        .with_control(control_tx)
    };
    let health = vigil_core::health::HealthRegistry::default();
    let link_beat = health.register("mqtt-link", Duration::from_secs(15), true);
    let link = MqttLink::start(&cfg.mqtt, &cfg.device.id, spool.clone(), handler, link_beat);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1024);
    let latency = crate::http::new_infer_latency();
    let inst = Instruments {
        health: health.clone(),
        latency: Some(latency.clone()),
    };
    let (mut ota, mut ota_events, rolled_back) =
        vigil_ota::agent::Agent::open(&cfg, &config_path, facts.clone())
            .map_err(ControlError::OtaStore)?;
    if rolled_back {
        cfg = vigil_ota::load_effective(&config_path, facts.as_ref())
            .map_err(ControlError::Rollback)?;
    }
    let plan = tokio::task::block_in_place(|| Plan::start(&cfg, tx, &inst))?;
    ota.resume_probation(
        plan.running_models()
            .into_iter()
            .filter_map(|m| plan.output_counters(&m).map(|c| (m, c)))
            .collect(),
    );
    flush_ota(&mut ota, &link);
    let views: SharedViews = Arc::new(std::sync::RwLock::new(plan.views()));
    let _http = if cfg.http.listen.is_empty() {
        None
    } else {
        let registry = crate::http::registry((&views, &spool, &link.stats, &health), &latency);
        let state = crate::http::AppState {
            health: health.clone(),
            spool: spool.clone(),
            link: link.stats.clone(),
            cameras: views.clone(),
            registry: Arc::new(registry),
        };
        let (addr, task) = crate::http::serve(&cfg.http.listen, state).await?;
        tracing::info!("HTTP API on http://{addr} (/healthz, /metrics, /api/cameras, /api/events)");
        Some(task)
    };
    let core_beat = health.register("supervisor", Duration::from_secs(10), true);
    // systemd: READY once cameras are built; WATCHDOG only while every required stage beats.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog_period = sd_notify::watchdog_enabled();
    let watchdog = watchdog_period.is_some();
    let mut health_tick = tokio::time::interval(
        watchdog_period
            .map(|p| (p / 3).clamp(Duration::from_millis(100), Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(1)),
    );
    tracing::info!(device = %cfg.device.id, cameras = plan.camera_count(), watchdog, "vigil running");
    let mut tick = tokio::time::interval(cfg.mqtt.telemetry_interval.0);
    tick.tick().await;
    let mut prev = BTreeMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ControlError::Signal)?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ControlError::Signal)?;
    // Test-only fault hook (VIGIL_TEST_STALL_AFTER_S): compiled only with `test-hooks`.
    #[cfg(feature = "test-hooks")]
    let stall_after = std::env::var("VIGIL_TEST_STALL_AFTER_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    #[cfg(not(feature = "test-hooks"))]
    let stall_after: Option<Duration> = None;
    let mut plan = plan;
    let take = |mut ev: Event| match spool_event(&spool, &mut ev) {
        Ok(seq) => {
            tracing::info!(
                target: "vigil::events",
                seq, camera = %ev.camera, rule = %ev.rule, kind = ?ev.kind, direction = ev.direction.unwrap_or("-"),
                track = ev.track_id, class = %ev.class, score = ev.score,
                "event {seq}: {} {:?} {} track {} ({})", ev.camera, ev.kind, ev.rule, ev.track_id, ev.class
            );
            link.wake();
        }
        Err(e) => tracing::error!(camera = %ev.camera, id = %ev.id, "event not spooled: {e}"),
    };
    loop {
        tokio::select! {
            Some(ev) = rx.recv() => take(ev),
            _ = health_tick.tick() => {
                if stall_after.is_some_and(|d| started.elapsed() >= d) {
                    // Test-only fault hook (VIGIL_TEST_STALL_AFTER_S, used by
                    // tests/systemd_watchdog.rs): the core stops here as a deadlock would stop
                    // it, so the watchdog pings stop and systemd must restart the process.
                    tracing::warn!("test fault hook: stalling the supervisor loop");
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                }
                core_beat.beat();
                let summary = health.summary();
                let mut states = vec![sd_notify::NotifyState::Status(&summary)];
                if watchdog && health.healthy() {
                    states.push(sd_notify::NotifyState::Watchdog);
                }
                let _ = sd_notify::notify(&states);
                // OTA steps fsync, rename and remove slots: off the async workers' hands.
                tokio::task::block_in_place(|| ota.tick(health.healthy(), &summary, &mut |c| apply_for_ota(&mut plan, &mut cfg, c, &views)));
                flush_ota(&mut ota, &link);
            }
            Some(ev) = ota_events.recv() => {
                tokio::task::block_in_place(|| ota.on_job_event(ev, &mut |c| apply_for_ota(&mut plan, &mut cfg, c, &views)));
                flush_ota(&mut ota, &link);
            }
            _ = tick.tick() => {
                let payload = TelemetryPayload {
                    time: vigil_core::events::now_rfc3339(),
                    uptime_s: round2(started.elapsed().as_secs_f64()),
                    mqtt_connected: link.stats.connected.load(Ordering::Relaxed),
                    events_published: link.stats.published.load(Ordering::Relaxed),
                    events_acked: link.stats.acked.load(Ordering::Relaxed),
                    spool: tokio::task::block_in_place(|| spool.stats()).unwrap_or_default(),
                    cameras: plan.telemetry(&mut prev),
                };
                if let Ok(v) = serde_json::to_value(&payload) {
                    if let Ok(mut g) = snapshot.lock() {
                        *g = v.clone();
                    }
                    if let Ok(p) = serde_json::to_vec(&v) {
                        link.telemetry(p);
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading {}", config_path.display());
                let _ = reload(&mut plan, &mut cfg, &config_path, None, &views, facts.as_ref());
            }
            Some(req) = control_rx.recv() => {
                let answer = match &req.kind {
                    ControlKind::Reload => reload(&mut plan, &mut cfg, &config_path, None, &views, facts.as_ref()),
                    ControlKind::SetConfig(text) => reload(&mut plan, &mut cfg, &config_path, Some(text), &views, facts.as_ref()),
                    ControlKind::RestartCamera(name) => {
                        let r = tokio::task::block_in_place(|| plan.restart_camera(name));
                        if let Ok(mut v) = views.write() {
                            *v = plan.views();
                        }
                        match r {
                            Ok(()) => {
                                tracing::info!(camera = %name, "camera restarted on request");
                                Ok(serde_json::json!({ "summary": format!("camera {name} restarted") }))
                            }
                            Err(e) => Err((chain(&e), serde_json::Value::Null)),
                        }
                    }
                    ControlKind::GetConfig => match std::fs::read_to_string(&config_path) {
                        Ok(text) => Ok(serde_json::json!({ "summary": "config", "toml": text })),
                        Err(e) => Err((format!("{}: {e}", config_path.display()), serde_json::Value::Null)),
                    },
                    ControlKind::OtaApply(r) => ota.request(r.clone(), &cfg),
                    ControlKind::OtaRollback(id) => {
                        tokio::task::block_in_place(|| ota.rollback_on_request(id, &mut |c| apply_for_ota(&mut plan, &mut cfg, c, &views)))
                    }
                };
                ota.configure(&cfg);
                flush_ota(&mut ota, &link);
                let _ = req.reply.send(answer);
            }
        }
    }
    tokio::task::block_in_place(|| plan.stop());
    while let Ok(ev) = rx.try_recv() {
        take(ev);
    }
    link.shutdown(Duration::from_secs(3)).await;
    Ok(())
}
