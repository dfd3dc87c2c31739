//! The supervisor: turns a validated config into a running plan (models loaded, one analysis
//! worker per model, one pipeline per camera), forwards events and telemetry to MQTT, and
//! shuts everything down in order on SIGINT/SIGTERM.
//!
//! [`Supervisor`] owns the running state (config, plan, spool, MQTT link, camera views, OTA
//! agent, health registry); [`run`] builds one and waits on its inputs, handing each to one
//! method: [`Supervisor::on_event`], [`Supervisor::on_health_tick`],
//! [`Supervisor::on_ota_job`], [`Supervisor::on_telemetry_tick`], [`Supervisor::on_sighup`],
//! [`Supervisor::on_control`] (the [`crate::control`] API), [`Supervisor::on_validated`], and on
//! SIGINT/SIGTERM [`Supervisor::shutdown`]. Everything runs on that one loop, one input at a
//! time, except the validation of a reloaded config (a text an outsider sends with
//! `config/set`): that runs on a blocking thread, so the loop's heartbeat never waits on it.

use crate::control::{ControlKind, ControlReply, ControlRequest};
use crate::error::{ControlError, Result};
use crate::mqtt::MqttLink;
use crate::spool::{Retention, Spool, SpoolStats};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_core::config::Config;
use vigil_core::error::chain;
use vigil_core::events::Event;
use vigil_core::facts::BoxFacts;
use vigil_core::health::{HealthRegistry, Heartbeat};
use vigil_dataplane::worker::OutputCounters;
use vigil_ota::JobEvent;
use vigil_ota::agent::Agent;

/// The running plan, also reachable here (the bench commands import it from this module); it
/// lives in [`crate::plan`].
use crate::plan::{
    ApplyReport, CameraTelemetry, Instruments, LiveFeeds, Plan, SharedViews, round2,
};

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
    /// `[device] site` and `tags`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceLabels>,
    /// The box's CPU, memory, load and temperatures.
    system: crate::system::SystemTelemetry,
    /// TensorRT engines being built now (absent when none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    engine_builds: Vec<vigil_dataplane::engines::BuildProgress>,
}

/// How long a TensorRT engine build may keep the systemd watchdog fed: a build past it is
/// taken for hung (the watchdog then restarts the service).
const MAX_ENGINE_BUILD: Duration = Duration::from_secs(30 * 60);

/// systemd's STATUS during an engine build, and whether the build may still feed the watchdog.
fn build_notice(b: &vigil_dataplane::engines::BuildProgress) -> (String, bool) {
    (
        format!(
            "building the TensorRT engine of model {}: {:.0} s (engine cache entry {})",
            b.model.as_deref().unwrap_or("?"),
            b.seconds,
            b.entry
        ),
        b.seconds < MAX_ENGINE_BUILD.as_secs_f64(),
    )
}

/// While a TensorRT engine builds (minutes on a Jetson) the start-up or the reload that asked
/// for it waits, and with it the supervisor's loop. So once a second, from the thread watching
/// the build, systemd hears that the service is busy and not hung (`EXTEND_TIMEOUT_USEC` for
/// `TimeoutStartSec`, `WATCHDOG=1` for up to [`MAX_ENGINE_BUILD`], `STATUS`), and every
/// telemetry interval the last telemetry goes out again with `engine_builds` (a fresh one, with
/// no cameras yet, during the start-up); `cmd/status` answers with it too. The builds' end
/// clears it.
fn engine_build_observer(
    started: Instant,
    snapshot: Arc<Mutex<serde_json::Value>>,
    base: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    publish: impl Fn(Vec<u8>) + Send + Sync + 'static,
    every: Duration,
) -> vigil_dataplane::engines::BuildObserver {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    Arc::new(move |builds: &[vigil_dataplane::engines::BuildProgress]| {
        let longest = builds.iter().max_by(|a, b| a.seconds.total_cmp(&b.seconds));
        if let Some((status, feed_watchdog)) = longest.map(build_notice) {
            let mut states = vec![
                sd_notify::NotifyState::Status(&status),
                sd_notify::NotifyState::ExtendTimeoutUsec(10_000_000),
            ];
            if feed_watchdog {
                states.push(sd_notify::NotifyState::Watchdog);
            }
            let _ = sd_notify::notify(&states);
        }
        let Ok(mut last) = last.lock() else { return };
        // The end of the builds is said at once (a telemetry without them).
        let due = match builds.is_empty() {
            true => last.is_some(),
            false => last.is_none_or(|t| t.elapsed() >= every),
        };
        if !due {
            return;
        }
        *last = (!builds.is_empty()).then(Instant::now);
        let Ok(mut snap) = snapshot.lock() else {
            return;
        };
        let mut v = match &*snap {
            serde_json::Value::Object(_) => snap.clone(),
            _ => base(),
        };
        if let Some(o) = v.as_object_mut() {
            o.insert("time".into(), vigil_core::events::now_rfc3339().into());
            o.insert(
                "uptime_s".into(),
                round2(started.elapsed().as_secs_f64()).into(),
            );
            match builds.is_empty() {
                true => o.remove("engine_builds"),
                false => o.insert(
                    "engine_builds".into(),
                    serde_json::to_value(builds).unwrap_or_default(),
                ),
            };
        }
        if !snap.is_null() {
            *snap = v.clone();
        }
        drop(snap);
        if let Ok(p) = serde_json::to_vec(&v) {
            publish(p);
        }
    })
}

impl TelemetryPayload {
    /// The service-wide part of a telemetry message now (the spool's counters read from its
    /// database); no cameras, system sample or engine builds yet.
    fn now(
        started: Instant,
        link: &crate::mqtt::LinkStats,
        spool: &Spool,
        device: &vigil_core::config::DeviceConfig,
    ) -> Self {
        Self {
            time: vigil_core::events::now_rfc3339(),
            uptime_s: round2(started.elapsed().as_secs_f64()),
            mqtt_connected: link.connected.load(Ordering::Relaxed),
            events_published: link.published.load(Ordering::Relaxed),
            events_acked: link.acked.load(Ordering::Relaxed),
            spool: spool.stats().unwrap_or_default(),
            cameras: BTreeMap::new(),
            device: (device.site.is_some() || !device.tags.is_empty()).then(|| DeviceLabels {
                site: device.site.clone(),
                tags: device.tags.clone(),
            }),
            system: Default::default(),
            engine_builds: Vec::new(),
        }
    }
}

#[derive(Debug, Serialize)]
struct DeviceLabels {
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
}

/// A reload's first half, off the loop (a blocking thread): validates the new config (the file,
/// or `text` for `config/set` written to the candidate file beside it, each with the active OTA
/// set's overlay). On errors the candidate is removed and the errors returned (and logged).
fn validate(
    path: &std::path::Path,
    text: Option<&str>,
    facts: &dyn BoxFacts,
) -> Result<Config, (String, serde_json::Value)> {
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
    match loaded {
        Ok(c) => Ok(c),
        Err(errors) => {
            let _ = std::fs::remove_file(&candidate);
            let lines: Vec<String> = errors.errors().iter().map(|e| e.to_string()).collect();
            for l in &lines {
                tracing::error!("reload rejected: {l}");
            }
            tracing::warn!("reload rejected; the running config is kept");
            Err((
                format!(
                    "config rejected ({} error{}); the running config is kept",
                    lines.len(),
                    if lines.len() == 1 { "" } else { "s" }
                ),
                serde_json::json!({ "errors": lines }),
            ))
        }
    }
}

/// A reload whose config was validated off the loop, back on it to be applied.
pub struct Validated {
    loaded: Result<Config, (String, serde_json::Value)>,
    /// `config/set`: the candidate file becomes the config file once applied.
    from_text: bool,
    reply: Option<tokio::sync::oneshot::Sender<ControlReply>>,
    t0: Instant,
}

/// A reload's second half, on the loop: applies a validated config to the plan (only what
/// changed) and, for `config/set`, on success makes the candidate the config file. On any error
/// the running config and plan are kept.
fn reload(
    plan: &mut Plan,
    current: &mut Config,
    path: &std::path::Path,
    loaded: Result<Config, (String, serde_json::Value)>,
    from_text: bool,
    t0: Instant,
    views: &SharedViews,
) -> Result<serde_json::Value, (String, serde_json::Value)> {
    let candidate = path.with_extension("toml.candidate");
    let applied = apply_loaded(plan, current, loaded?, views, t0);
    if from_text {
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
    let needs_restart: Vec<&str> = vigil_core::config::restart_sections(current, &new)
        .into_iter()
        .map(|s| s.as_str())
        .collect();
    let applied = tokio::task::block_in_place(|| plan.apply(&new));
    // Also after a failure: a reload that failed half-way restored the previous plan with new
    // pipelines.
    if let Ok(mut v) = views.write() {
        *v = plan.views();
    }
    match applied {
        Ok(report) => {
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
) -> Result<Vec<(String, Arc<OutputCounters>)>, vigil_ota::agent::ApplyError> {
    let (_, report) = apply_loaded(plan, current, new.clone(), views, Instant::now())
        .map_err(|(msg, _)| vigil_ota::agent::ApplyError::from(msg))?;
    Ok(report
        .models_loaded
        .iter()
        .chain(&report.models_swapped)
        .filter_map(|m| plan.output_counters(m).map(|c| (m.clone(), c)))
        .collect())
}

/// Hands what the OTA agent has to publish to the link.
fn flush_ota(agent: &mut Agent, link: &MqttLink) {
    for (topic, payload) in agent.outbox.drain(..) {
        link.ota(topic, payload);
    }
}

/// Writes an event to the spool (which numbers it) and returns its sequence number.
fn spool_event(spool: &Spool, ev: &mut Event) -> Result<u64, crate::spool::SpoolError> {
    let (id, camera) = (ev.id.clone(), ev.camera.clone());
    let jpeg = ev.jpeg.take();
    let picture_id = ev.snapshot.as_ref().map(|s| s.id.clone());
    let picture = match (&picture_id, &jpeg) {
        (Some(id), Some(jpeg)) => Some(crate::spool::Picture { id, jpeg }),
        _ => None,
    };
    let seq = tokio::task::block_in_place(|| {
        spool.append_with_picture(&id, &camera, picture, |seq| {
            ev.seq = seq;
            serde_json::to_vec(&*ev).unwrap_or_default()
        })
    })?;
    ev.jpeg = jpeg;
    Ok(seq)
}

/// Spools an event (logging it) and wakes the link; an event the spool refuses is logged.
/// Returns the event's picture, once it is spooled.
fn take_event(spool: &Spool, link: &MqttLink, mut ev: Event) -> Option<Arc<[u8]>> {
    match spool_event(spool, &mut ev) {
        Ok(seq) => {
            tracing::info!(
                target: "vigil::events",
                seq, camera = %ev.camera, rule = %ev.rule, kind = ?ev.kind, direction = ev.direction.unwrap_or("-"),
                track = ev.track_id, class = %ev.class, score = ev.score,
                "event {seq}: {} {:?} {} track {} ({})", ev.camera, ev.kind, ev.rule, ev.track_id, ev.class
            );
            link.wake();
            ev.jpeg
        }
        Err(e) => {
            tracing::error!(camera = %ev.camera, id = %ev.id, "event not spooled: {e}");
            None
        }
    }
}

/// The running service: what `vigil run` owns between start-up and shutdown, and the inputs
/// its loop waits on (events from the analysis workers, control requests, OTA job events).
pub struct Supervisor {
    /// The running config (sections that need a restart stay as they started).
    cfg: Config,
    config_path: PathBuf,
    facts: Arc<dyn BoxFacts>,
    started: Instant,
    spool: Arc<Spool>,
    link: MqttLink,
    plan: Plan,
    views: SharedViews,
    ota: Agent,
    health: HealthRegistry,
    /// The supervisor's own stage, beaten on each health tick.
    core_beat: Heartbeat,
    /// systemd's watchdog period, when it watches this process.
    watchdog_period: Option<Duration>,
    /// The last telemetry, which `cmd/status` answers with.
    snapshot: Arc<Mutex<serde_json::Value>>,
    /// Each camera's counters at the last telemetry, for its rates.
    prev: BTreeMap<String, (u64, u64, Instant)>,
    /// The box's own health, sampled at each telemetry.
    system: crate::system::Sampler,
    /// Test-only fault hook: stall the loop this long after start-up (see [`run`]).
    stall_after: Option<Duration>,
    events: tokio::sync::mpsc::Receiver<Event>,
    control: tokio::sync::mpsc::Receiver<ControlRequest>,
    ota_events: tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
    /// Reloads validated off the loop come back here, one at a time.
    validated_tx: tokio::sync::mpsc::Sender<Validated>,
    validated: tokio::sync::mpsc::Receiver<Validated>,
    /// A reload is being validated: further reloads, control requests and OTA job events wait.
    validating: bool,
    /// The HTTP API's task, when `[http] listen` is set.
    _http: Option<tokio::task::JoinHandle<()>>,
    /// When each camera's last event picture was published on MQTT.
    snapshot_published: HashMap<String, Instant>,
    /// On an A/B image: tells the image when this boot is good (`crate::slot`).
    slot_gate: Option<crate::slot::SlotGate>,
    /// Whole-system updates (`cmd/system/update`), or why this box has none.
    system_update: Result<crate::system_update::SystemUpdater, String>,
}

impl Supervisor {
    /// Opens the spool, starts the MQTT link (connected or not), opens the OTA store (rolling
    /// back first when a probation kept failing), builds and starts the plan, and serves the
    /// HTTP API. Needs a multi-threaded tokio runtime.
    pub async fn start(
        cfg: Config,
        config_path: PathBuf,
        facts: Arc<dyn BoxFacts>,
    ) -> Result<Self> {
        let mut cfg = cfg;
        let started = Instant::now();
        let state_dir = cfg.storage.state_dir();
        let spool_path = state_dir.join("events.db");
        let retention = Retention {
            max_events: cfg.storage.max_events,
            max_age: cfg.storage.max_age.0,
            max_bytes: cfg.storage.max_bytes,
            max_picture_bytes: cfg.snapshots.max_bytes,
        };
        let spool = Arc::new(Spool::open(&spool_path, retention)?);
        let held = spool.stats()?;
        tracing::info!(
            spool = %spool_path.display(), unsent = held.unsent, last_seq = held.last_seq,
            "event spool open"
        );
        let snapshot = Arc::new(Mutex::new(serde_json::Value::Null));
        let (control_tx, control_rx) =
            tokio::sync::mpsc::channel::<ControlRequest>(crate::control::QUEUE);
        // The cameras' views, filled once the plan runs (and after every reload).
        let views: SharedViews = Arc::new(std::sync::RwLock::new(Vec::new()));
        let handler = {
            let snapshot = snapshot.clone();
            crate::mqtt::commands::Handler::new(Arc::new(move || {
                snapshot.lock().map(|v| v.clone()).unwrap_or_default()
            }))
            .with_control(control_tx.clone())
            .with_cameras(views.clone())
        };
        let health = HealthRegistry::default();
        let link_beat = health.register("mqtt-link", Duration::from_secs(15), true);
        let ha = ha_discovery(&cfg, &state_dir);
        let link = MqttLink::start(
            &cfg.mqtt,
            &cfg.device.id,
            spool.clone(),
            handler,
            link_beat,
            ha,
        );
        let (tx, rx) = tokio::sync::mpsc::channel::<Event>(1024);
        let latency = crate::http::new_infer_latency();
        let inst = Instruments {
            health: health.clone(),
            latency: Some(latency.clone()),
            // Feeds exist with the live view off too: the `snapshot` command asks them.
            live: Some((
                LiveFeeds::default(),
                Duration::from_secs_f32(1.0 / cfg.live.fps.max(0.01)),
            )),
            restream: crate::plan::Restreams::new(cfg.restream.listen.parse().ok()),
        };
        let (mut ota, ota_events, rolled_back) =
            Agent::open(&cfg, &config_path, facts.clone()).map_err(ControlError::OtaStore)?;
        if rolled_back {
            cfg = vigil_ota::load_effective(&config_path, facts.as_ref())
                .map_err(ControlError::Rollback)?;
        }
        vigil_dataplane::engines::set_build_observer(engine_build_observer(
            started,
            snapshot.clone(),
            {
                let (spool, stats) = (spool.clone(), link.stats.clone());
                let device = cfg.device.clone();
                move || {
                    serde_json::to_value(TelemetryPayload::now(started, &stats, &spool, &device))
                        .unwrap_or_default()
                }
            },
            link.telemetry_sender(),
            cfg.mqtt.telemetry_interval.0,
        ));
        let plan = tokio::task::block_in_place(|| Plan::start(&cfg, tx, &inst))?;
        ota.resume_probation(
            plan.running_models()
                .into_iter()
                .filter_map(|m| plan.output_counters(&m).map(|c| (m, c)))
                .collect(),
        );
        flush_ota(&mut ota, &link);
        if let Ok(mut v) = views.write() {
            *v = plan.views();
        }
        let http = match cfg.http.effective_listen() {
            None => None,
            Some(listen) => {
                let registry =
                    crate::http::registry((&views, &spool, &link.stats, &health), &latency);
                let state = crate::http::AppState {
                    health: health.clone(),
                    spool: spool.clone(),
                    link: link.stats.clone(),
                    cameras: views.clone(),
                    registry: Arc::new(registry),
                    live_max_clients: cfg.live.enabled.then_some(cfg.live.max_clients),
                    live_fps: cfg.live.fps,
                };
                let (addr, scheme, task) =
                    crate::http::serve(&cfg.http, listen, state, Some(control_tx.clone())).await?;
                let live = match cfg.live.enabled {
                    true => format!("; live view: {scheme}://{addr}/live"),
                    false => String::new(),
                };
                tracing::info!(
                    "HTTP API on {scheme}://{addr} (/healthz, /metrics, /api/cameras, /api/events){live}"
                );
                Some(task)
            }
        };
        let core_beat = health.register("supervisor", Duration::from_secs(10), true);
        let (validated_tx, validated) = tokio::sync::mpsc::channel(1);
        // Whole-system updates, where the image has its installer; the outcome of the one that
        // rebooted the box is published (retained) once, at a health tick.
        let system_update =
            crate::system_update::SystemUpdater::on_image(&state_dir, link.system_sender());
        if let Ok(u) = &system_update {
            // Restarted while the installer works (a watchdog restart under load): follow it.
            u.resume();
        }
        Ok(Self {
            cfg,
            config_path,
            facts,
            started,
            spool,
            link,
            plan,
            views,
            ota,
            health,
            core_beat,
            watchdog_period: sd_notify::watchdog_enabled(),
            snapshot,
            prev: BTreeMap::new(),
            system: crate::system::Sampler::default(),
            stall_after: None,
            events: rx,
            control: control_rx,
            ota_events,
            validated_tx,
            validated,
            validating: false,
            _http: http,
            snapshot_published: HashMap::new(),
            slot_gate: crate::slot::SlotGate::on_image(&state_dir),
            system_update,
        })
    }

    /// An event from an analysis worker: spooled (numbered), then the link is woken; its
    /// picture is published retained on `snapshot/<camera>` at most once per
    /// `[snapshots] mqtt_interval` per camera.
    pub fn on_event(&mut self, ev: Event) {
        let camera = ev.camera.clone();
        let Some(jpeg) = take_event(&self.spool, &self.link, ev) else {
            return;
        };
        let every = self.cfg.snapshots.mqtt_interval.0;
        let due = self
            .snapshot_published
            .get(&camera)
            .is_none_or(|t| t.elapsed() >= every);
        if every.is_zero() || !due {
            return;
        }
        if self.link.snapshot(&camera, jpeg) {
            self.snapshot_published.insert(camera, Instant::now());
        } else if self
            .snapshot_published
            .insert(camera.clone(), Instant::now())
            .is_none()
        {
            tracing::warn!(camera = %camera, "an event picture is too large for one MQTT packet (1 MiB): not published (lower [snapshots] width or quality)");
        }
    }

    /// The health tick: the supervisor's heartbeat, systemd's STATUS (and WATCHDOG while every
    /// required stage beats), and the OTA probation's verdict.
    pub fn on_health_tick(&mut self) {
        if self
            .stall_after
            .is_some_and(|d| self.started.elapsed() >= d)
        {
            // Test-only fault hook (VIGIL_TEST_STALL_AFTER_S, used by
            // tests/systemd_watchdog.rs): the core stops here as a deadlock would stop
            // it, so the watchdog pings stop and systemd must restart the process.
            tracing::warn!("test fault hook: stalling the supervisor loop");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        self.core_beat.beat();
        let summary = self.health.summary();
        let mut states = vec![sd_notify::NotifyState::Status(&summary)];
        if self.watchdog_period.is_some() && self.health.healthy() {
            states.push(sd_notify::NotifyState::Watchdog);
        }
        let _ = sd_notify::notify(&states);
        // OTA steps fsync, rename and remove slots: off the async workers' hands.
        let healthy = self.health.healthy();
        // The image writes a system update's outcome when it confirms (or gives up on) the
        // new slot, which is after Vigil has started on it: looked for at every tick.
        if let Ok(u) = &self.system_update {
            tokio::task::block_in_place(|| u.report_result());
        }
        if let Some(gate) = &mut self.slot_gate {
            let live = |v: &crate::plan::CameraView| {
                v.stats.state() == vigil_dataplane::media::CameraState::Live
            };
            let well = healthy
                && self.link.stats.connected.load(Ordering::Relaxed)
                && self.plan.views().iter().all(live);
            gate.tick(well, Instant::now());
        }
        self.with_ota(|ota, apply| ota.tick(healthy, &summary, apply));
        flush_ota(&mut self.ota, &self.link);
    }

    /// An event of the OTA job thread (progress, a staged set to activate, a failure).
    pub fn on_ota_job(&mut self, ev: JobEvent) {
        self.with_ota(|ota, apply| ota.on_job_event(ev, apply));
        flush_ota(&mut self.ota, &self.link);
    }

    /// Runs `f` (off the async workers: it may load models) with the OTA agent and a way for it
    /// to apply a config to the running plan.
    fn with_ota<R>(
        &mut self,
        f: impl FnOnce(&mut vigil_ota::agent::Agent, vigil_ota::agent::ApplyFn<'_>) -> R,
    ) -> R {
        let Self {
            ota,
            plan,
            cfg,
            views,
            ..
        } = self;
        tokio::task::block_in_place(|| f(ota, &mut |c| apply_for_ota(plan, cfg, c, views)))
    }

    /// The telemetry tick: a snapshot of the service, kept for `cmd/status` and published.
    pub fn on_telemetry_tick(&mut self) {
        let payload = TelemetryPayload {
            cameras: self.plan.telemetry(&mut self.prev),
            system: tokio::task::block_in_place(|| self.system.sample()),
            engine_builds: vigil_dataplane::engines::builds_in_progress(),
            ..tokio::task::block_in_place(|| {
                TelemetryPayload::now(
                    self.started,
                    &self.link.stats,
                    &self.spool,
                    &self.cfg.device,
                )
            })
        };
        if let Ok(v) = serde_json::to_value(&payload) {
            if let Ok(mut g) = self.snapshot.lock() {
                *g = v.clone();
            }
            if let Ok(p) = serde_json::to_vec(&v) {
                self.link.telemetry(p);
            }
        }
    }

    /// SIGHUP: reload the config file (errors are logged; the running config is kept).
    pub fn on_sighup(&mut self) {
        tracing::info!("SIGHUP: reloading {}", self.config_path.display());
        self.start_reload(None, None);
    }

    /// Starts a reload from the config file, or from `text` (`config/set`): the config is
    /// validated on a blocking thread ([`validate`]) and comes back as an input of the loop,
    /// [`Self::on_validated`], which applies it and answers `reply`.
    fn start_reload(
        &mut self,
        text: Option<String>,
        reply: Option<tokio::sync::oneshot::Sender<ControlReply>>,
    ) {
        self.validating = true;
        let (path, facts) = (self.config_path.clone(), self.facts.clone());
        let tx = self.validated_tx.clone();
        let t0 = Instant::now();
        tokio::task::spawn_blocking(move || {
            let loaded = validate(&path, text.as_deref(), facts.as_ref());
            let from_text = text.is_some();
            let _ = tx.blocking_send(Validated {
                loaded,
                from_text,
                reply,
                t0,
            });
        });
    }

    /// A reload validated off the loop: applied to the plan (see [`reload`]), then answered.
    pub fn on_validated(&mut self, v: Validated) {
        self.validating = false;
        let answer = reload(
            &mut self.plan,
            &mut self.cfg,
            &self.config_path,
            v.loaded,
            v.from_text,
            v.t0,
            &self.views,
        );
        self.ota.configure(&self.cfg);
        flush_ota(&mut self.ota, &self.link);
        if let Some(r) = v.reply {
            let _ = r.send(answer);
        }
    }

    /// A request through the control API: carried out, then answered on its reply channel.
    pub fn on_control(&mut self, req: ControlRequest) {
        let answer = match &req.kind {
            ControlKind::Reload => return self.start_reload(None, Some(req.reply)),
            ControlKind::SetConfig(text) => {
                return self.start_reload(Some(text.clone()), Some(req.reply));
            }
            ControlKind::RestartCamera(name) => {
                let r = tokio::task::block_in_place(|| self.plan.restart_camera(name));
                if let Ok(mut v) = self.views.write() {
                    *v = self.plan.views();
                }
                match r {
                    Ok(()) => {
                        tracing::info!(camera = %name, "camera restarted on request");
                        Ok(serde_json::json!({ "summary": format!("camera {name} restarted") }))
                    }
                    Err(e) => Err((chain(&e), serde_json::Value::Null)),
                }
            }
            ControlKind::GetConfig => match std::fs::read_to_string(&self.config_path) {
                Ok(text) => Ok(serde_json::json!({
                    "summary": "config",
                    "toml": vigil_core::config::redact_secrets(&text)
                })),
                Err(e) => Err((
                    format!("{}: {e}", self.config_path.display()),
                    serde_json::Value::Null,
                )),
            },
            ControlKind::OtaApply(r) => self.ota.request(r.clone(), &self.cfg),
            ControlKind::OtaRollback(id) => {
                let keys = self.cfg.ota.trusted_keys.clone();
                self.with_ota(|ota, apply| ota.rollback_on_request(id, &keys, apply))
            }
            ControlKind::OtaCancel => self.ota.cancel(),
            ControlKind::SystemUpdate(r) => match &self.system_update {
                Err(why) => Err((why.clone(), serde_json::Value::Null)),
                Ok(u) => {
                    let limits = vigil_ota::download::Limits {
                        max_bytes: crate::system_update::MAX_BUNDLE_BYTES,
                        timeout: self.cfg.ota.download_timeout.0,
                        min_rate: self.cfg.ota.min_rate_bytes_per_s,
                        rate_window: vigil_ota::download::RATE_WINDOW,
                    };
                    u.start(r.clone(), limits)
                        .map(|()| {
                            serde_json::json!({
                                "summary": "system update started: progress on system/progress, the outcome on system/status"
                            })
                        })
                        .map_err(|why| (why, serde_json::Value::Null))
                }
            },
        };
        self.ota.configure(&self.cfg);
        flush_ota(&mut self.ota, &self.link);
        let _ = req.reply.send(answer);
    }

    /// Stops the plan (cameras, then workers), spools the events still queued, and closes the
    /// MQTT link (`offline`, retained) within 3 s.
    pub async fn shutdown(self) {
        let Self {
            plan,
            mut events,
            spool,
            link,
            ..
        } = self;
        tokio::task::block_in_place(|| plan.stop());
        while let Ok(ev) = events.try_recv() {
            let _ = take_event(&spool, &link, ev);
        }
        link.shutdown(Duration::from_secs(3)).await;
    }
}

/// `vigil run`: start everything, spool and forward events, publish telemetry, answer commands,
/// until a signal arrives.
pub async fn run(cfg: Config, config_path: PathBuf, facts: Arc<dyn BoxFacts>) -> Result<()> {
    // TensorRT engines live in the state directory (they survive restarts and image updates).
    vigil_dataplane::engine::set_engine_cache(
        &cfg.storage.state_dir().join("engines"),
        cfg.storage.engine_cache_bytes,
    );
    let mut sup = Supervisor::start(cfg, config_path, facts).await?;
    // systemd: READY once cameras are built; WATCHDOG only while every required stage beats.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog_period = sup.watchdog_period;
    let watchdog = watchdog_period.is_some();
    let mut health_tick = tokio::time::interval(
        watchdog_period
            .map(|p| (p / 3).clamp(Duration::from_millis(100), Duration::from_secs(1)))
            .unwrap_or(Duration::from_secs(1)),
    );
    tracing::info!(device = %sup.cfg.device.id, cameras = sup.plan.camera_count(), watchdog, "vigil running");
    let mut tick = tokio::time::interval(sup.cfg.mqtt.telemetry_interval.0);
    tick.tick().await;
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
    sup.stall_after = stall_after;
    loop {
        tokio::select! {
            Some(ev) = sup.events.recv() => sup.on_event(ev),
            _ = health_tick.tick() => sup.on_health_tick(),
            // While a reload is validated off the loop, the inputs that could change the
            // config or the plan wait for it; events, ticks and signals go on.
            Some(ev) = sup.ota_events.recv(), if !sup.validating => sup.on_ota_job(ev),
            _ = tick.tick() => sup.on_telemetry_tick(),
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sighup.recv(), if !sup.validating => sup.on_sighup(),
            Some(req) = sup.control.recv(), if !sup.validating => sup.on_control(req),
            Some(v) = sup.validated.recv() => sup.on_validated(v),
        }
    }
    sup.shutdown().await;
    Ok(())
}

/// What the link tells Home Assistant: the discovery message when `[homeassistant]` is on (its
/// topic remembered in the state directory), its removal when it was on before and is off now
/// (the topic then forgotten), else nothing.
fn ha_discovery(cfg: &Config, state_dir: &std::path::Path) -> crate::mqtt::HaDiscovery {
    use crate::mqtt::{HaDiscovery, Topics, ha};
    let marker = state_dir.join("homeassistant.topic");
    if cfg.homeassistant.enabled {
        let topic = ha::topic(cfg);
        if let Err(e) = std::fs::write(&marker, &topic) {
            tracing::warn!(
                "{}: {e} (turning Home Assistant off later will not remove the device)",
                marker.display()
            );
        }
        let topics = Topics::new(&cfg.mqtt.topic_prefix, &cfg.device.id);
        // Thermal zones are read once here: a sensor per zone the box has.
        let zones: Vec<String> = crate::system::Sampler::default()
            .sample()
            .temps_c
            .into_keys()
            .collect();
        let payload =
            ha::discovery(cfg, &topics, vigil_core::version::version(), &zones).to_string();
        tracing::info!(topic = %topic, "Home Assistant discovery on");
        return HaDiscovery::On {
            topic,
            status_topic: ha::status_topic(cfg),
            payload: payload.into_bytes(),
        };
    }
    match std::fs::read_to_string(&marker) {
        Ok(topic) if !topic.trim().is_empty() => {
            let _ = std::fs::remove_file(&marker);
            tracing::info!(topic = %topic.trim(), "Home Assistant discovery off: removing the device");
            HaDiscovery::Remove(topic.trim().to_string())
        }
        _ => HaDiscovery::Off,
    }
}

#[cfg(test)]
mod tests {
    //! The loop's dispatch on a supervisor with no cameras (an empty plan, GStreamer initialised
    //! but no pipeline built) and a broker that is never there. What needs a camera or a model
    //! (a camera restart that works, a reload that starts a pipeline, OTA activation) is left
    //! to the end-to-end tests.

    use super::*;
    use crate::control::ControlReply;
    use serde_json::Value;
    use vigil_core::facts::KnownFacts;

    struct Fixture {
        dir: PathBuf,
        path: PathBuf,
        port: u16,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("vigil-supervisor-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            // A local port nothing listens on: the link tries, fails and backs off.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let f = Self {
                path: dir.join("vigil.toml"),
                dir,
                port,
            };
            std::fs::write(&f.path, f.config("")).unwrap();
            f
        }

        /// A config with no cameras and no models; `extra` is appended.
        fn config(&self, extra: &str) -> String {
            format!(
                "[device]\nid = \"sup-test\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n\n\
                 [storage]\ndir = \"{}\"\n\n[http]\nlisten = \"\"\n{extra}",
                self.port,
                self.dir.join("state").display()
            )
        }

        async fn start(&self) -> Supervisor {
            let facts: Arc<dyn BoxFacts> = Arc::new(KnownFacts::cpu_only());
            let cfg = vigil_ota::load_effective(&self.path, facts.as_ref()).unwrap();
            Supervisor::start(cfg, self.path.clone(), facts)
                .await
                .unwrap()
        }
    }

    /// A request and its answer, with what the loop would do meanwhile: a reload validated on
    /// a blocking thread is applied when it comes back.
    fn ask(sup: &mut Supervisor, kind: ControlKind) -> ControlReply {
        let (req, mut rx) = ControlRequest::new(kind);
        sup.on_control(req);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = rx.try_recv() {
                return reply;
            }
            if let Ok(v) = sup.validated.try_recv() {
                sup.on_validated(v);
                continue;
            }
            assert!(Instant::now() < deadline, "no answer within 30 s");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn event(camera: &str) -> Event {
        Event {
            seq: 0,
            id: vigil_core::events::new_event_id(),
            device: "sup-test".into(),
            camera: camera.into(),
            rule: "door".into(),
            kind: vigil_core::events::EventKind::ZoneEnter,
            direction: None,
            track_id: 7,
            class: "person".into(),
            score: 0.9,
            bbox: [0.1, 0.1, 0.2, 0.2],
            pts_s: 1.5,
            time: vigil_core::events::now_rfc3339(),
            dwell_s: None,
            track_age_s: 0.6,
            track_mean_score: 0.9,
            snapshot: None,
            jpeg: None,
        }
    }

    fn progress(seconds: f64) -> vigil_dataplane::engines::BuildProgress {
        vigil_dataplane::engines::BuildProgress {
            entry: "e1".into(),
            model: Some("people".into()),
            precision: "fp16",
            seconds,
        }
    }

    #[test]
    fn an_engine_build_feeds_the_watchdog_for_at_most_its_limit() {
        let (status, fed) = build_notice(&progress(75.0));
        assert_eq!(
            status,
            "building the TensorRT engine of model people: 75 s (engine cache entry e1)"
        );
        assert!(fed);
        let (_, fed) = build_notice(&progress(MAX_ENGINE_BUILD.as_secs_f64() + 1.0));
        assert!(!fed, "a build past the limit is taken for hung");
    }

    #[test]
    fn an_engine_build_goes_out_in_telemetry_once_per_interval_and_its_end_at_once() {
        let sent: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let log = sent.clone();
        let snapshot = Arc::new(Mutex::new(serde_json::Value::Null));
        let observer = engine_build_observer(
            Instant::now(),
            snapshot.clone(),
            || serde_json::json!({ "cameras": {}, "spool": { "unsent": 0 } }),
            move |p| {
                log.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&p).unwrap())
            },
            Duration::from_secs(3600),
        );
        // During the start-up (no telemetry yet): a fresh one, with no cameras.
        observer(&[progress(1.0)]);
        observer(&[progress(2.0)]);
        {
            let sent = sent.lock().unwrap();
            assert_eq!(sent.len(), 1, "once per interval: {sent:?}");
            assert_eq!(sent[0]["cameras"], serde_json::json!({}));
            assert_eq!(sent[0]["engine_builds"][0]["model"], "people");
            assert_eq!(sent[0]["engine_builds"][0]["seconds"], 1.0);
            assert!(sent[0]["time"].is_string() && sent[0]["uptime_s"].is_number());
        }
        assert!(
            snapshot.lock().unwrap().is_null(),
            "no status before the first telemetry"
        );
        // The end: at once, without the builds.
        observer(&[]);
        observer(&[]);
        {
            let sent = sent.lock().unwrap();
            assert_eq!(sent.len(), 2, "{sent:?}");
            assert!(sent[1].get("engine_builds").is_none());
        }
        // After the start-up (a reload): the last telemetry again, with the builds, also for
        // `cmd/status`.
        *snapshot.lock().unwrap() =
            serde_json::json!({ "cameras": { "door": { "state": "live" } } });
        observer(&[progress(3.0)]);
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[2]["cameras"]["door"]["state"], "live");
        assert_eq!(sent[2]["engine_builds"][0]["seconds"], 3.0);
        assert_eq!(snapshot.lock().unwrap()["engine_builds"][0]["entry"], "e1");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn config_get_returns_the_file() {
        let f = Fixture::new("get");
        let mut sup = f.start().await;
        let data = ask(&mut sup, ControlKind::GetConfig).unwrap();
        assert_eq!(data["summary"], "config");
        assert_eq!(data["toml"], f.config(""));
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn restarting_an_unknown_camera_gets_the_error_reply() {
        let f = Fixture::new("restart");
        let mut sup = f.start().await;
        let (msg, data) = ask(&mut sup, ControlKind::RestartCamera("nope".into())).unwrap_err();
        assert_eq!(msg, "no running camera named \"nope\"");
        assert_eq!(data, Value::Null);
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reload_of_an_invalid_file_keeps_the_running_config_and_locates_the_error() {
        let f = Fixture::new("reload-bad");
        let mut sup = f.start().await;
        let before = sup.cfg.clone();
        // Line 15: an unknown key in [ota].
        std::fs::write(&f.path, f.config("\n[ota]\nprobation_secs = 5\n")).unwrap();
        let (msg, data) = ask(&mut sup, ControlKind::Reload).unwrap_err();
        assert_eq!(msg, "config rejected (1 error); the running config is kept");
        let errors = data["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1);
        let located = format!("{}:15:", f.path.display());
        let e = errors[0].as_str().unwrap();
        assert!(
            e.starts_with(&located) && e.contains("probation_secs"),
            "{e}"
        );
        assert_eq!(sup.cfg, before);
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn config_set_with_an_invalid_text_leaves_the_file_and_the_running_config() {
        let f = Fixture::new("set-bad");
        let mut sup = f.start().await;
        let before = sup.cfg.clone();
        let (msg, data) = ask(
            &mut sup,
            ControlKind::SetConfig("[device]\nid = 5\n".into()),
        )
        .unwrap_err();
        assert!(msg.starts_with("config rejected"), "{msg}");
        let e = data["errors"][0].as_str().unwrap();
        let candidate = f.path.with_extension("toml.candidate");
        assert!(e.starts_with(&format!("{}:2:", candidate.display())), "{e}");
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), f.config(""));
        assert!(!candidate.exists());
        assert_eq!(sup.cfg, before);
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reload_applies_what_it_can_and_names_the_sections_that_need_a_restart() {
        let f = Fixture::new("reload-ok");
        let mut sup = f.start().await;
        let old_mqtt = sup.cfg.mqtt.clone();
        let text = f
            .config("\n[ota]\nprobation = \"90s\"\n")
            .replace(&format!("port = {}", f.port), "port = 1");
        std::fs::write(&f.path, &text).unwrap();
        let data = ask(&mut sup, ControlKind::Reload).unwrap();
        assert_eq!(data["needs_restart"], serde_json::json!(["mqtt"]));
        let summary = data["summary"].as_str().unwrap();
        assert!(
            summary.ends_with("[mqtt] changes take effect after a restart"),
            "{summary}"
        );
        assert_eq!(sup.cfg.ota.probation.0, Duration::from_secs(90));
        assert_eq!(sup.cfg.mqtt, old_mqtt, "[mqtt] stays as it runs");
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn config_set_with_a_valid_text_applies_it_and_makes_it_the_file() {
        let f = Fixture::new("set-ok");
        let mut sup = f.start().await;
        let text = f.config("\n[ota]\nprobation_min_inferences = 3\n");
        let data = ask(&mut sup, ControlKind::SetConfig(text.clone())).unwrap();
        assert_eq!(data["needs_restart"], serde_json::json!([]));
        assert_eq!(sup.cfg.ota.probation_min_inferences, 3);
        assert_eq!(std::fs::read_to_string(&f.path).unwrap(), text);
        assert!(!f.path.with_extension("toml.candidate").exists());
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reload_is_validated_off_the_loop() {
        let f = Fixture::new("off-loop");
        let mut sup = f.start().await;
        // A config file whose reading blocks (a FIFO nobody writes to yet), as a slow check of
        // a huge text would: the loop must go on while it is validated.
        std::fs::remove_file(&f.path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&f.path).status();
        assert!(made.unwrap().success(), "mkfifo");
        let (req, mut rx) = ControlRequest::new(ControlKind::Reload);
        let t0 = Instant::now();
        sup.on_control(req);
        sup.on_health_tick();
        sup.on_telemetry_tick();
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(sup.validating && rx.try_recv().is_err());
        // The file comes: the reload is validated, applied on the loop, and answered.
        let (path, text) = (f.path.clone(), f.config(""));
        let writer = std::thread::spawn(move || std::fs::write(path, text));
        let v = tokio::time::timeout(Duration::from_secs(30), sup.validated.recv())
            .await
            .expect("validated within 30 s")
            .unwrap();
        sup.on_validated(v);
        writer.join().unwrap().unwrap();
        assert!(!sup.validating);
        let reply = rx.try_recv().expect("answered once applied");
        assert!(reply.is_ok(), "{reply:?}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ota_requests_without_keys_or_an_active_set_are_refused() {
        let f = Fixture::new("ota");
        let mut sup = f.start().await;
        let (msg, _) = ask(&mut sup, ControlKind::OtaRollback("r1".into())).unwrap_err();
        assert_eq!(msg, "nothing to roll back: no OTA set is active");
        let apply = vigil_ota::ApplyRequest {
            request_id: "r2".into(),
            url: "http://127.0.0.1:1/b.vigil".into(),
            sha256: "0".repeat(64),
            allow_rollback: false,
        };
        let (msg, _) = ask(&mut sup, ControlKind::OtaApply(apply)).unwrap_err();
        assert_eq!(msg, "OTA is off: [ota] trusted_keys is empty");
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn events_are_spooled_with_the_next_seq() {
        let f = Fixture::new("events");
        let mut sup = f.start().await;
        let (a, b) = (event("front"), event("back"));
        sup.on_event(a.clone());
        sup.on_event(b.clone());
        let rows = sup.spool.from_seq(1, 10).unwrap();
        assert_eq!(rows.len(), 2);
        for (row, (ev, seq)) in rows.iter().zip([(&a, 1), (&b, 2)]) {
            assert_eq!((row.seq, row.camera.as_str()), (seq, ev.camera.as_str()));
            let json: Value = serde_json::from_slice(&row.payload).unwrap();
            assert_eq!(
                (json["seq"].as_u64(), json["id"].as_str()),
                (Some(seq), Some(ev.id.as_str()))
            );
        }
        let stats = sup.spool.stats().unwrap();
        assert_eq!(
            (stats.last_seq, stats.unsent),
            (2, 2),
            "no broker: nothing is sent"
        );
        sup.shutdown().await;
        // The spool outlives the process: a new supervisor numbers on.
        let mut sup = f.start().await;
        sup.on_event(event("front"));
        assert_eq!(sup.spool.stats().unwrap().last_seq, 3);
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_telemetry_tick_fills_the_status_snapshot() {
        let f = Fixture::new("telemetry");
        let mut sup = f.start().await;
        sup.on_event(event("front"));
        sup.on_telemetry_tick();
        let snap = sup.snapshot.lock().unwrap().clone();
        assert_eq!(snap["mqtt_connected"], false);
        assert_eq!(snap["spool"]["last_seq"], 1);
        assert_eq!(snap["cameras"], serde_json::json!({}));
        sup.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_health_tick_beats_and_shutdown_returns_with_the_broker_down() {
        let f = Fixture::new("health");
        let mut sup = f.start().await;
        sup.on_health_tick();
        assert!(
            sup.health
                .check()
                .iter()
                .any(|s| s.name == "supervisor" && s.ok)
        );
        let t0 = Instant::now();
        sup.shutdown().await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    }
}
