//! The supervisor: turns a validated config into a running plan (models loaded, one analysis
//! worker per model, one pipeline per camera), forwards events and telemetry to MQTT, and
//! shuts everything down in order on SIGINT/SIGTERM.

use crate::config::{BackendKind, Config};
use crate::events::Event;
use crate::events::spool::{Retention, Spool, SpoolStats};
use crate::infer::Backend;
use crate::infer::nanodet::{NanodetDecoder, input_spec};
use crate::infer::onnx::OnnxBackend;
use crate::infer::preprocess::Preprocessor;
use crate::media::camera::SourceSettings;
use crate::media::{CameraHandle, FrameQueue};
use crate::mqtt::MqttLink;
use crate::pipeline::{AnalysisStats, AnalysisWorker, CameraAnalysis};
use crate::redact::redact;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One camera as the supervisor sees it.
struct RunningCamera {
    name: String,
    handle: CameraHandle,
    queue: Arc<FrameQueue>,
    slot: usize,
    analysis: Arc<AnalysisStats>,
}

/// A read-only view of one running camera: its counters and state, for the HTTP API and
/// metrics.
#[derive(Clone)]
pub struct CameraView {
    pub name: String,
    pub url: String,
    pub stats: Arc<crate::media::CameraStats>,
    pub analysis: Arc<AnalysisStats>,
    pub queue: Arc<FrameQueue>,
    pub slot: usize,
}

impl std::fmt::Debug for CameraView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CameraView({})", self.name)
    }
}

/// What the running plan reports into: health heartbeats and latency histograms.
#[derive(Clone, Default)]
pub struct Instruments {
    pub health: crate::health::HealthRegistry,
    pub latency: Option<crate::http::InferLatency>,
}

/// The running plan.
pub struct Plan {
    cameras: Vec<RunningCamera>,
    workers: Vec<std::thread::JoinHandle<()>>,
    queues: Vec<Arc<FrameQueue>>,
    stop: Arc<AtomicBool>,
    started: Instant,
    urls: Vec<String>,
}

/// Loads a model for a backend choice; `auto` is the CPU until the GPU path lands.
fn load_backend(name: &str, m: &crate::config::ModelConfig) -> Result<Box<dyn Backend>> {
    let chosen = match m.backend {
        BackendKind::Cpu => "cpu",
        BackendKind::Auto => {
            tracing::info!(
                model = name,
                "backend auto → cpu (this build has no GPU backend yet)"
            );
            "cpu"
        }
        BackendKind::Cuda => anyhow::bail!(
            "model {name}: backend \"cuda\" is not available in this build (use \"cpu\" or \"auto\")"
        ),
    };
    let b = OnnxBackend::load_cpu(&m.path, m.threads as usize)
        .with_context(|| format!("model {name}"))?;
    tracing::info!(model = name, backend = chosen, engine = %b.describe(), "model loaded");
    Ok(Box::new(b))
}

impl Plan {
    /// Builds and starts everything the config describes.
    pub fn start(
        cfg: &Config,
        events: tokio::sync::mpsc::Sender<Event>,
        inst: &Instruments,
    ) -> Result<Self> {
        crate::media::init().map_err(anyhow::Error::msg)?;
        let decoders = crate::media::probe::choose_decoders(false);
        tracing::info!("decoders: {} (CPU path)", decoders.summary());
        let stop = Arc::new(AtomicBool::new(false));
        let mut plan = Plan {
            cameras: Vec::new(),
            workers: Vec::new(),
            queues: Vec::new(),
            stop: stop.clone(),
            started: Instant::now(),
            urls: Vec::new(),
        };
        for (model_name, model) in &cfg.models {
            let cams: Vec<_> = cfg
                .cameras
                .iter()
                .filter(|c| c.enabled && &c.model == model_name)
                .collect();
            if cams.is_empty() {
                continue;
            }
            let backend = load_backend(model_name, model)?;
            let (size, dynamic) =
                crate::infer::nanodet::input_size(backend.inputs(), model.input_size as usize)?;
            if size != model.input_size as usize {
                anyhow::bail!(
                    "model {model_name}: its input is fixed at {size}×{size}, but input_size = {} (expected {size})",
                    model.input_size
                );
            }
            tracing::info!(
                model = %model_name,
                "input {}",
                if dynamic {
                    format!("{size} on the long side, the short side padded to a multiple of 32")
                } else {
                    format!("{size}×{size}")
                }
            );
            let decoder =
                NanodetDecoder::new(&model.path.display().to_string(), size, backend.outputs())?;
            let sources: Vec<SourceSettings> =
                cams.iter().map(|c| SourceSettings::from(*c)).collect();
            let policies: Vec<_> = sources.iter().map(SourceSettings::drop_policy).collect();
            let queue = Arc::new(FrameQueue::new(&policies));
            let analyses: Vec<CameraAnalysis> = cams
                .iter()
                .map(|c| {
                    let mut a = CameraAnalysis::new(c);
                    a.latency = inst
                        .latency
                        .as_ref()
                        .map(|f| f.get_or_create(&[("camera", c.name.clone())]).clone());
                    a
                })
                .collect();
            for (slot, ((c, a), src)) in cams.iter().zip(&analyses).zip(sources).enumerate() {
                let handle = CameraHandle::spawn(src, slot, queue.clone())
                    .with_context(|| format!("camera {}", c.name))?;
                plan.urls.push(c.url.clone());
                plan.cameras.push(RunningCamera {
                    name: c.name.clone(),
                    handle,
                    queue: queue.clone(),
                    slot,
                    analysis: a.stats.clone(),
                });
                tracing::info!(camera = %c.name, url = %redact(&c.url), model = %model_name, fps = c.fps, "camera started");
            }
            let worker = AnalysisWorker {
                device: cfg.device.id.clone(),
                backend,
                pre: Preprocessor::new(input_spec(size, dynamic)),
                decoder,
                cameras: analyses,
                queue: queue.clone(),
                events: events.clone(),
                stop: stop.clone(),
                heartbeat: Some(inst.health.register(
                    format!("infer/{model_name}"),
                    Duration::from_secs(10),
                    true,
                )),
            };
            plan.queues.push(queue);
            plan.workers.push(
                std::thread::Builder::new()
                    .name(format!("infer-{model_name}"))
                    .spawn(move || worker.run())?,
            );
        }
        Ok(plan)
    }

    /// Snapshot of every camera for telemetry.
    pub fn telemetry(
        &self,
        prev: &mut BTreeMap<String, (u64, u64, Instant)>,
    ) -> BTreeMap<String, CameraTelemetry> {
        let now = Instant::now();
        let mut out = BTreeMap::new();
        for c in &self.cameras {
            let st = &c.handle.stats;
            let frames_in = st.frames_in.load(Ordering::Relaxed);
            let analysed = c.analysis.analysed.load(Ordering::Relaxed);
            let (pin, pan, pt) = prev.get(&c.name).copied().unwrap_or((0, 0, self.started));
            let dt = now.saturating_duration_since(pt).as_secs_f64();
            let rate = |a: u64, b: u64| {
                if dt > 0.0 {
                    (a.saturating_sub(b)) as f64 / dt
                } else {
                    0.0
                }
            };
            prev.insert(c.name.clone(), (frames_in, analysed, now));
            let status = st.status();
            let infer_total = c.analysis.infer_us_total.load(Ordering::Relaxed);
            out.insert(
                c.name.clone(),
                CameraTelemetry {
                    state: status.state,
                    fps_in: round2(rate(frames_in, pin)),
                    fps_analysed: round2(rate(analysed, pan)),
                    frames_in,
                    frames_analysed: analysed,
                    frames_dropped: c.queue.dropped(c.slot),
                    reconnects: st.reconnects.load(Ordering::Relaxed),
                    infer_ms_avg: if analysed > 0 {
                        round2(infer_total as f64 / analysed as f64 / 1000.0)
                    } else {
                        0.0
                    },
                    events: c.analysis.events.load(Ordering::Relaxed),
                    decoder: status.decoder,
                    last_error: status.last_error,
                    retry_in_s: status.retry_in_s.map(round2),
                },
            );
        }
        out
    }

    /// Read-only views of the running cameras.
    pub fn views(&self) -> Vec<CameraView> {
        self.cameras
            .iter()
            .zip(&self.urls)
            .map(|(c, url)| CameraView {
                name: c.name.clone(),
                url: url.clone(),
                stats: c.handle.stats.clone(),
                analysis: c.analysis.clone(),
                queue: c.queue.clone(),
                slot: c.slot,
            })
            .collect()
    }

    /// State of the first camera and the frames waiting for analysis (for `vigil bench`).
    pub fn bench_progress(&self) -> (crate::media::CameraState, usize) {
        let state = self
            .cameras
            .first()
            .map(|c| c.handle.stats.state())
            .unwrap_or(crate::media::CameraState::Stopped);
        (state, self.queues.iter().map(|q| q.pending()).sum())
    }

    /// Mean preprocessing and inference milliseconds per analysed frame, over all cameras.
    pub fn stage_means_ms(&self) -> (f64, f64) {
        let sum = |f: fn(&AnalysisStats) -> &std::sync::atomic::AtomicU64| {
            self.cameras
                .iter()
                .map(|c| f(&c.analysis).load(Ordering::Relaxed))
                .sum::<u64>() as f64
        };
        let n = sum(|a| &a.analysed).max(1.0);
        (
            sum(|a| &a.pre_us_total) / n / 1000.0,
            sum(|a| &a.infer_us_total) / n / 1000.0,
        )
    }

    /// Waits until the analysed-frame counters stop moving (at most `timeout`); returns their sum.
    pub fn wait_idle(&self, timeout: Duration) -> u64 {
        let total = || {
            self.cameras
                .iter()
                .map(|c| c.analysis.analysed.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        let t0 = Instant::now();
        let mut last = total();
        while t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(100));
            let now = total();
            if now == last {
                break;
            }
            last = now;
        }
        last
    }

    /// Stops cameras, then workers.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &self.cameras {
            c.handle.request_stop();
        }
        drop(self.cameras);
        for q in &self.queues {
            q.close();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct CameraTelemetry {
    pub state: crate::media::CameraState,
    pub fps_in: f64,
    pub fps_analysed: f64,
    pub frames_in: u64,
    pub frames_analysed: u64,
    /// Frames replaced in the latest-frame queue before inference took them.
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub infer_ms_avg: f64,
    pub events: u64,
    pub decoder: Option<String>,
    pub last_error: Option<String>,
    pub retry_in_s: Option<f64>,
}

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

/// Writes an event to the spool (which numbers it) and returns its sequence number.
fn spool_event(spool: &Spool, ev: &mut Event) -> Result<u64, crate::events::spool::SpoolError> {
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
pub async fn run(cfg: Config) -> Result<()> {
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
    let handler = {
        let snapshot = snapshot.clone();
        crate::mqtt::commands::Handler::new(Arc::new(move || {
            snapshot.lock().map(|v| v.clone()).unwrap_or_default()
        }))
    };
    let health = crate::health::HealthRegistry::default();
    let link_beat = health.register("mqtt-link", Duration::from_secs(15), true);
    let link = MqttLink::start(&cfg.mqtt, &cfg.device.id, spool.clone(), handler, link_beat);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1024);
    let latency = crate::http::new_infer_latency();
    let inst = Instruments {
        health: health.clone(),
        latency: Some(latency.clone()),
    };
    let plan = tokio::task::block_in_place(|| Plan::start(&cfg, tx, &inst))?;
    let views = Arc::new(plan.views());
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
    tracing::info!(device = %cfg.device.id, cameras = plan.cameras.len(), watchdog, "vigil running");
    let mut tick = tokio::time::interval(cfg.mqtt.telemetry_interval.0);
    tick.tick().await;
    let mut prev = BTreeMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let take = |mut ev: Event| match spool_event(&spool, &mut ev) {
        Ok(seq) => {
            tracing::info!(
                target: "vigil::events",
                seq, camera = %ev.camera, rule = %ev.rule, kind = ?ev.kind, direction = ev.direction.unwrap_or("-"),
                track = ev.track_id, class = %ev.class, score = ev.score, "event"
            );
            link.wake();
        }
        Err(e) => tracing::error!(camera = %ev.camera, id = %ev.id, "event not spooled: {e}"),
    };
    loop {
        tokio::select! {
            Some(ev) = rx.recv() => take(ev),
            _ = health_tick.tick() => {
                core_beat.beat();
                let summary = health.summary();
                let mut states = vec![sd_notify::NotifyState::Status(&summary)];
                if watchdog && health.healthy() {
                    states.push(sd_notify::NotifyState::Watchdog);
                }
                let _ = sd_notify::notify(&states);
            }
            _ = tick.tick() => {
                let payload = TelemetryPayload {
                    time: crate::events::now_rfc3339(),
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
        }
    }
    tokio::task::block_in_place(|| plan.stop());
    while let Ok(ev) = rx.try_recv() {
        take(ev);
    }
    link.shutdown(Duration::from_secs(3)).await;
    Ok(())
}
