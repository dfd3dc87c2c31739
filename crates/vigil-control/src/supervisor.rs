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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vigil_core::config::{BackendKind, CameraConfig, Config, ModelConfig};
use vigil_core::error::chain;
use vigil_core::events::Event;
use vigil_core::facts::BoxFacts;
use vigil_core::redact::redact;
use vigil_dataplane::media::camera::{GpuFrames, SourceSettings};
use vigil_dataplane::media::{CameraHandle, FrameQueue};
use vigil_dataplane::worker::{
    AnalysisStats, AnalysisWorker, CameraAnalysis, ModelSwap, OutputCounters, WorkerCmd,
};

/// One camera as the supervisor sees it.
struct RunningCamera {
    name: String,
    cfg: CameraConfig,
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
    pub stats: Arc<vigil_dataplane::media::CameraStats>,
    pub analysis: Arc<AnalysisStats>,
    pub queue: Arc<FrameQueue>,
    pub slot: usize,
}

impl std::fmt::Debug for CameraView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CameraView({})", self.name)
    }
}

/// The cameras' views, replaced after every reload.
pub type SharedViews = Arc<std::sync::RwLock<Vec<CameraView>>>;

/// What the running plan reports into: health heartbeats and latency histograms.
#[derive(Clone, Default)]
pub struct Instruments {
    pub health: vigil_core::health::HealthRegistry,
    pub latency: Option<crate::http::InferLatency>,
}

impl Instruments {
    /// Fresh analysis state for a camera, reporting into this camera's latency histogram.
    fn analysis_for(&self, c: &CameraConfig) -> CameraAnalysis {
        let mut a = CameraAnalysis::new(c);
        a.latency = self
            .latency
            .as_ref()
            .map(|f| f.get_or_create(&[("camera", c.name.clone())]).clone());
        a
    }
}

/// One loaded model with its analysis worker and the cameras it serves.
struct Group {
    model: String,
    model_cfg: ModelConfig,
    queue: Arc<FrameQueue>,
    cameras: Vec<RunningCamera>,
    control: std::sync::mpsc::Sender<WorkerCmd>,
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// The GPU path's shared CUDA context for its cameras' decoders.
    cuda: Option<GpuFrames>,
    /// The current model's well-formed / malformed outputs (OTA probation).
    outputs: Arc<OutputCounters>,
}

impl Group {
    /// Stops the cameras, then the worker.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &self.cameras {
            c.handle.request_stop();
        }
        self.cameras.clear();
        self.queue.close();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

/// The running plan: built from a config by [`Plan::apply`], at start-up and on every reload
/// alike (one code path).
pub struct Plan {
    groups: Vec<Group>,
    started: Instant,
    device: String,
    events: tokio::sync::mpsc::Sender<Event>,
    inst: Instruments,
}

/// Stops the camera in `slot` of `g` and starts it again with `new`, with fresh analysis state;
/// the group's other cameras and its worker are untouched.
fn respawn(g: &mut Group, slot: usize, new: &CameraConfig, inst: &Instruments) -> Result<()> {
    let cam = &mut g.cameras[slot];
    cam.handle.request_stop();
    let src = SourceSettings {
        cuda: g.cuda.clone(),
        ..SourceSettings::from(new)
    };
    g.queue.set_policy(slot, src.drop_policy());
    let handle =
        CameraHandle::spawn(src, slot, g.queue.clone()).map_err(|source| ControlError::Camera {
            camera: new.name.clone(),
            source,
        })?;
    drop(std::mem::replace(&mut cam.handle, handle));
    let a = inst.analysis_for(new);
    cam.analysis = a.stats.clone();
    let _ = g.control.send(WorkerCmd::Replace {
        slot,
        analysis: Box::new(a),
    });
    cam.cfg = new.clone();
    Ok(())
}

/// Whether two camera configs differ only in what the analysis worker can take without
/// touching the pipeline (rules and score threshold).
fn same_source(a: &CameraConfig, b: &CameraConfig) -> bool {
    let strip = |c: &CameraConfig| CameraConfig {
        zones: Vec::new(),
        lines: Vec::new(),
        min_score: 0.0,
        ..c.clone()
    };
    strip(a) == strip(b)
}

/// What a reload did, camera by camera, for the log and the command reply.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ApplyReport {
    pub unchanged: Vec<String>,
    pub rules_updated: Vec<String>,
    pub restarted: Vec<String>,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub models_loaded: Vec<String>,
    /// Models replaced in their running worker, their cameras' pipelines kept.
    pub models_swapped: Vec<String>,
}

impl ApplyReport {
    pub fn summary(&self) -> String {
        let part = |what: &str, v: &Vec<String>| {
            (!v.is_empty()).then(|| format!("{what}: {}", v.join(", ")))
        };
        [
            part("models loaded", &self.models_loaded),
            part("models swapped (pipelines kept)", &self.models_swapped),
            part("cameras started", &self.started),
            part("restarted", &self.restarted),
            part("rules updated", &self.rules_updated),
            part("stopped", &self.stopped),
            part("unchanged", &self.unchanged),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join("; ")
    }
}

impl Plan {
    /// Builds and starts everything the config describes.
    pub fn start(
        cfg: &Config,
        events: tokio::sync::mpsc::Sender<Event>,
        inst: &Instruments,
    ) -> Result<Self> {
        vigil_dataplane::media::init()?;
        // NVDEC decoders only where a model may run on the GPU (its frames then stay there).
        let gpu = cfg.models.values().any(|m| m.backend != BackendKind::Cpu)
            && vigil_dataplane::gpu::runtime().is_ok();
        let decoders = vigil_dataplane::media::probe::choose_decoders(gpu);
        tracing::info!(
            "decoders: {} ({})",
            decoders.summary(),
            if decoders.hardware { "hardware" } else { "CPU" }
        );
        let mut plan = Plan {
            groups: Vec::new(),
            started: Instant::now(),
            device: cfg.device.id.clone(),
            events,
            inst: inst.clone(),
        };
        plan.apply(cfg)?;
        Ok(plan)
    }

    fn start_group(
        &self,
        model: &str,
        model_cfg: &ModelConfig,
        p: vigil_dataplane::engine::Built,
        cams: &[CameraConfig],
    ) -> Result<Group> {
        let cuda = p.cuda.clone();
        let sources: Vec<SourceSettings> = cams
            .iter()
            .map(|c| SourceSettings {
                cuda: cuda.clone(),
                ..SourceSettings::from(c)
            })
            .collect();
        let policies: Vec<_> = sources.iter().map(SourceSettings::drop_policy).collect();
        let queue = Arc::new(FrameQueue::new(&policies));
        let analyses: Vec<CameraAnalysis> =
            cams.iter().map(|c| self.inst.analysis_for(c)).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let outputs = Arc::new(OutputCounters::default());
        let (control, control_rx) = std::sync::mpsc::channel();
        let mut cameras = Vec::new();
        for (slot, ((c, a), src)) in cams.iter().zip(&analyses).zip(sources).enumerate() {
            let handle = CameraHandle::spawn(src, slot, queue.clone()).map_err(|source| {
                ControlError::Camera {
                    camera: c.name.clone(),
                    source,
                }
            })?;
            cameras.push(RunningCamera {
                name: c.name.clone(),
                cfg: c.clone(),
                handle,
                queue: queue.clone(),
                slot,
                analysis: a.stats.clone(),
            });
            tracing::info!(camera = %c.name, url = %redact(&c.url), model = %model, fps = c.fps, "camera started");
        }
        let worker = AnalysisWorker {
            device: self.device.clone(),
            engine: p.engine,
            cameras: analyses,
            queue: queue.clone(),
            events: self.events.clone(),
            stop: stop.clone(),
            heartbeat: Some(self.inst.health.register(
                format!("infer/{model}"),
                Duration::from_secs(10),
                true,
            )),
            control: Some(control_rx),
            outputs: outputs.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("infer-{model}"))
            .spawn(move || worker.run())
            .map_err(|source| ControlError::Worker {
                model: model.to_string(),
                source,
            })?;
        Ok(Group {
            model: model.to_string(),
            model_cfg: model_cfg.clone(),
            queue,
            cameras,
            control,
            stop,
            worker: Some(handle),
            cuda,
            outputs,
        })
    }

    /// Makes the running plan match `cfg` (already validated), touching only what changed:
    /// a camera whose rules or score threshold changed keeps its pipeline; a camera whose source
    /// settings changed is rebuilt alone; a model whose table changed but whose cameras did not
    /// is swapped inside its running worker (pipelines kept); adding or removing a camera
    /// rebuilds that model's group. New models are loaded before anything is stopped, so a model
    /// that fails to load leaves everything running as it was.
    pub fn apply(&mut self, cfg: &Config) -> Result<ApplyReport> {
        let mut report = ApplyReport::default();
        let desired: Vec<(String, ModelConfig, Vec<CameraConfig>)> = cfg
            .models
            .iter()
            .map(|(m, mc)| {
                (
                    m.clone(),
                    mc.clone(),
                    cfg.cameras
                        .iter()
                        .filter(|c| c.enabled && &c.model == m)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, _, cams)| !cams.is_empty())
            .collect();
        let names = |v: &[CameraConfig]| v.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        // 1. Load every model that needs a new group first: nothing changes if one fails.
        let mut prepared = BTreeMap::new();
        let mut swaps = BTreeMap::new();
        for (m, mc, cams) in &desired {
            let same_cameras = self.groups.iter().find(|g| {
                &g.model == m
                    && g.cameras.iter().map(|c| c.name.clone()).collect::<Vec<_>>() == names(cams)
            });
            match same_cameras {
                Some(g) if &g.model_cfg == mc => {}
                // Swapped in place only while the frames stay where the new engine reads them
                // (CUDA memory for the GPU path, host memory for the CPU path).
                Some(g) => {
                    let p = vigil_dataplane::engine::build(m, mc)?;
                    if p.cuda.is_some() == g.cuda.is_some() {
                        swaps.insert(m.clone(), p);
                        report.models_swapped.push(m.clone());
                    } else {
                        prepared.insert(m.clone(), p);
                        report.models_loaded.push(m.clone());
                    }
                }
                None => {
                    prepared.insert(m.clone(), vigil_dataplane::engine::build(m, mc)?);
                    report.models_loaded.push(m.clone());
                }
            }
        }
        // 2. Stop groups that are gone or rebuilt.
        let (keep, drop_groups): (Vec<Group>, Vec<Group>) =
            std::mem::take(&mut self.groups).into_iter().partition(|g| {
                desired.iter().any(|(m, _, _)| m == &g.model) && !prepared.contains_key(&g.model)
            });
        for g in drop_groups {
            for c in &g.cameras {
                let still = desired
                    .iter()
                    .any(|(_, _, cams)| cams.iter().any(|n| n.name == c.name));
                if !still {
                    report.stopped.push(c.name.clone());
                }
            }
            g.stop();
        }
        self.groups = keep;
        // 3. Update kept groups in place: swap changed models, then update cameras.
        for (m, mc, cams) in &desired {
            let Some(g) = self.groups.iter_mut().find(|g| &g.model == m) else {
                continue;
            };
            if let Some(p) = swaps.remove(m) {
                g.outputs = Arc::new(OutputCounters::default());
                let _ = g.control.send(WorkerCmd::Swap(Box::new(ModelSwap {
                    engine: p.engine,
                    outputs: g.outputs.clone(),
                })));
                g.model_cfg = mc.clone();
                tracing::info!(model = %m, "model swapped in its running worker; camera pipelines kept");
            }
            for (slot, new) in cams.iter().enumerate() {
                let cam = &mut g.cameras[slot];
                if cam.cfg == *new {
                    report.unchanged.push(new.name.clone());
                } else if same_source(&cam.cfg, new) {
                    let rules = Box::new(vigil_core::analytics::rules::RuleEngine::new(
                        &new.zones,
                        &new.lines,
                        new.min_score,
                    ));
                    let _ = g.control.send(WorkerCmd::Rules {
                        slot,
                        rules,
                        min_score: new.min_score,
                    });
                    cam.cfg = new.clone();
                    report.rules_updated.push(new.name.clone());
                } else {
                    respawn(g, slot, new, &self.inst)?;
                    report.restarted.push(new.name.clone());
                }
            }
        }
        // 4. Start new groups.
        for (m, mc, cams) in &desired {
            if let Some(p) = prepared.remove(m) {
                let g = self.start_group(m, mc, p, cams)?;
                report.started.extend(names(cams));
                self.groups.push(g);
            }
        }
        Ok(report)
    }

    /// The output counters of a running model's current backend.
    pub fn output_counters(&self, model: &str) -> Option<Arc<OutputCounters>> {
        self.groups
            .iter()
            .find(|g| g.model == model)
            .map(|g| g.outputs.clone())
    }

    /// Names of the models that run (have cameras).
    pub fn running_models(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.model.clone()).collect()
    }

    /// Rebuilds one camera's pipeline on demand (`cmd/camera/restart`); the others are untouched.
    pub fn restart_camera(&mut self, name: &str) -> Result<()> {
        for g in &mut self.groups {
            if let Some(slot) = g.cameras.iter().position(|c| c.name == name) {
                let cfg = g.cameras[slot].cfg.clone();
                return respawn(g, slot, &cfg, &self.inst);
            }
        }
        Err(ControlError::NoSuchCamera(name.to_string()))
    }

    fn cameras(&self) -> impl Iterator<Item = &RunningCamera> {
        self.groups.iter().flat_map(|g| g.cameras.iter())
    }

    /// Number of running cameras.
    pub fn camera_count(&self) -> usize {
        self.cameras().count()
    }

    /// Snapshot of every camera for telemetry.
    pub fn telemetry(
        &self,
        prev: &mut BTreeMap<String, (u64, u64, Instant)>,
    ) -> BTreeMap<String, CameraTelemetry> {
        let now = Instant::now();
        let mut out = BTreeMap::new();
        for c in self.cameras() {
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
        self.cameras()
            .map(|c| CameraView {
                name: c.name.clone(),
                url: c.cfg.url.clone(),
                stats: c.handle.stats.clone(),
                analysis: c.analysis.clone(),
                queue: c.queue.clone(),
                slot: c.slot,
            })
            .collect()
    }

    /// State of the first camera and the frames waiting for analysis (for `vigil bench`).
    pub fn bench_progress(&self) -> (vigil_dataplane::media::CameraState, usize) {
        let state = self
            .cameras()
            .next()
            .map(|c| c.handle.stats.state())
            .unwrap_or(vigil_dataplane::media::CameraState::Stopped);
        (state, self.groups.iter().map(|g| g.queue.pending()).sum())
    }

    /// Cameras that have had no frame analysed yet (the bench waits for none before measuring).
    pub fn cameras_without_frames(&self) -> usize {
        self.cameras()
            .filter(|c| c.analysis.analysed.load(Ordering::Relaxed) == 0)
            .count()
    }

    /// Frames analysed so far and the frame-to-detection latency buckets, over all cameras
    /// (for `vigil bench --gpu`).
    pub fn analysed_and_latency(&self) -> (u64, Vec<u64>) {
        let mut frames = 0;
        let mut hist: Vec<u64> = Vec::new();
        for c in self.cameras() {
            frames += c.analysis.analysed.load(Ordering::Relaxed);
            let h = c.analysis.frame_latency.snapshot();
            if hist.is_empty() {
                hist = h;
            } else {
                hist.iter_mut().zip(h).for_each(|(a, b)| *a += b);
            }
        }
        (frames, hist)
    }

    /// Mean preprocessing and inference milliseconds per analysed frame, over all cameras.
    pub fn stage_means_ms(&self) -> (f64, f64) {
        let sum = |f: fn(&AnalysisStats) -> &std::sync::atomic::AtomicU64| {
            self.cameras()
                .map(|c| f(&c.analysis).load(Ordering::Relaxed))
                .sum::<u64>() as f64
        };
        let n = sum(|a| &a.analysed).max(1.0);
        (
            sum(|a| &a.pre_us_total) / n / 1000.0,
            sum(|a| &a.infer_us_total) / n / 1000.0,
        )
    }

    /// Microseconds the workers spent in inference (wall, each frame its share of its batch),
    /// summed over all cameras since start.
    pub fn infer_us_total(&self) -> u64 {
        self.cameras()
            .map(|c| c.analysis.infer_us_total.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until the analysed-frame counters stop moving (at most `timeout`); returns their sum.
    pub fn wait_idle(&self, timeout: Duration) -> u64 {
        let total = || {
            self.cameras()
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
        for g in self.groups {
            g.stop();
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct CameraTelemetry {
    pub state: vigil_dataplane::media::CameraState,
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
