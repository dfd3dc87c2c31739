//! The running plan: one group per model (the loaded engine, its frame queue, its analysis
//! worker and its cameras), built from a config by [`Plan::apply`] at start-up and on every
//! reload alike, and what it reports (camera views, telemetry). What a reload must do is decided
//! in the core (`vigil_core::config::diff`, a pure value); this file loads the models it names
//! and carries it out.

use crate::error::{ControlError, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vigil_core::config::{
    BackendKind, CameraChange, CameraConfig, Config, GroupView, ModelAction, ModelConfig, PlanView,
    diff_plans,
};
use vigil_core::events::Event;
use vigil_core::redact::redact;
use vigil_dataplane::live::LiveFeed;
use vigil_dataplane::media::camera::{GpuFrames, SourceSettings};
use vigil_dataplane::media::restream::{RestreamServer, RestreamSettings};
use vigil_dataplane::media::{CameraHandle, FrameQueue};
use vigil_dataplane::picture::{PictureSettings, Picturer};
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
    /// Its live pictures (`None`: no live view).
    pub live: Option<Arc<LiveFeed>>,
    /// Its RTSP re-stream: URL and encoder.
    pub restream: Option<(String, String)>,
    /// Its model's backend (`tensorrt`, `cuda`, `cpu`).
    pub backend: &'static str,
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
    /// Each camera's live feed by name (kept across rebuilds, so viewers stay attached), and
    /// how often a watched camera gets a picture; `None`: no live view.
    pub live: Option<(LiveFeeds, Duration)>,
    /// The RTSP re-stream server, started for the first camera with `[cameras.restream]`.
    pub restream: Restreams,
}

/// The RTSP re-stream server of `[restream] listen`, started when a camera first asks for it
/// (a failure to start is logged once and leaves re-streams off until a restart).
#[derive(Clone, Default)]
pub struct Restreams {
    listen: Option<std::net::SocketAddr>,
    server: Arc<std::sync::OnceLock<Option<Arc<RestreamServer>>>>,
}

impl Restreams {
    pub fn new(listen: Option<std::net::SocketAddr>) -> Self {
        Self {
            listen,
            server: Arc::default(),
        }
    }

    fn server(&self) -> Option<Arc<RestreamServer>> {
        self.server
            .get_or_init(|| {
                let listen = self.listen?;
                match RestreamServer::start(listen) {
                    Ok(s) => {
                        tracing::info!(
                            "RTSP re-stream on rtsp://{} with {} ({})",
                            s.listen,
                            s.encoder(),
                            if s.skipped.is_empty() {
                                "the first encoder tried"
                            } else {
                                &s.skipped
                            }
                        );
                        Some(Arc::new(s))
                    }
                    Err(e) => {
                        tracing::error!("RTSP re-stream off: {}", vigil_core::error::chain(&e));
                        None
                    }
                }
            })
            .clone()
    }

    /// The server, if it was started.
    pub fn started(&self) -> Option<&Arc<RestreamServer>> {
        self.server.get().and_then(Option::as_ref)
    }
}

/// The live feeds of the cameras, by name.
pub type LiveFeeds = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Arc<LiveFeed>>>>;

impl Instruments {
    /// Fresh analysis state for a camera, reporting into this camera's latency histogram.
    /// `src`: the camera's source as started (its main stream, `view_url`, is opened the same
    /// way when wanted).
    fn analysis_for(&self, c: &CameraConfig, src: &SourceSettings) -> CameraAnalysis {
        let mut a = CameraAnalysis::new(c);
        a.view = c
            .view_url
            .as_deref()
            .map(|url| vigil_dataplane::media::view::ViewStream::new(src, url));
        a.latency = self
            .latency
            .as_ref()
            .map(|f| f.get_or_create(&[("camera", c.name.clone())]).clone());
        if let Some((feeds, every)) = &self.live {
            let mut feeds = feeds.lock().unwrap_or_else(|e| e.into_inner());
            a.live = Some(
                feeds
                    .entry(c.name.clone())
                    .or_insert_with(LiveFeed::new)
                    .clone(),
            );
            // Never more often than the camera is analysed.
            let every = c
                .live
                .fps
                .map(|f| Duration::from_secs_f32(1.0 / f.max(0.01)))
                .unwrap_or(*every);
            a.live_every = every.max(Duration::from_secs_f32(1.0 / c.fps.max(0.01)));
            a.live_width = c.live.width;
        }
        match c.restream {
            Some(r) => {
                a.restream = self.restream.server().map(|srv| {
                    srv.mount(
                        &c.name,
                        RestreamSettings {
                            width: r.width,
                            // Never more often than the camera is analysed.
                            fps: r.fps.min(c.fps),
                            bitrate_kbps: r.bitrate_kbps,
                        },
                    )
                })
            }
            None => {
                if let Some(srv) = self.restream.started() {
                    srv.unmount(&c.name);
                }
            }
        }
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
    /// The backend the model runs on, and why not a better one.
    backend: vigil_dataplane::engine::BackendUsed,
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
    /// How event snapshots are made (`[snapshots]`, read at start-up); `None`: none are.
    pictures: Option<PictureSettings>,
    /// How live pictures are made (`[live]`); `None`: no live view.
    live_pictures: Option<PictureSettings>,
}

/// Starts one camera's pipeline thread feeding `slot` of `queue`.
fn spawn_camera(src: SourceSettings, slot: usize, queue: &Arc<FrameQueue>) -> Result<CameraHandle> {
    let camera = src.name.clone();
    test_hook_spawn(&src.url)
        .and_then(|()| CameraHandle::spawn(src, slot, queue.clone()))
        .map_err(|source| ControlError::Camera { camera, source })
}

/// Test-only fault hook: with `VIGIL_TEST_FAIL_SPAWN=TEXT`, starting a camera whose URL contains
/// TEXT fails as if its thread could not be created (what the reload's rollback is for).
/// Compiled only with the `test-hooks` feature; a release build has an empty function here.
#[cfg(feature = "test-hooks")]
fn test_hook_spawn(url: &str) -> std::io::Result<()> {
    match std::env::var("VIGIL_TEST_FAIL_SPAWN") {
        Ok(text) if !text.is_empty() && url.contains(&text) => Err(std::io::Error::other(
            "test hook VIGIL_TEST_FAIL_SPAWN: thread not created",
        )),
        _ => Ok(()),
    }
}

#[cfg(not(feature = "test-hooks"))]
fn test_hook_spawn(_url: &str) -> std::io::Result<()> {
    Ok(())
}

/// Stops the camera in `slot` of `g` and starts it again with `new`, with fresh analysis state;
/// the group's other cameras and its worker are untouched. Once the old pipeline is stopped the
/// slot is recorded as `new` even if the start fails, so that the plan's view never claims a
/// stopped camera runs its old settings (a rollback then starts it again).
fn respawn(g: &mut Group, slot: usize, new: &CameraConfig, inst: &Instruments) -> Result<()> {
    let cam = &mut g.cameras[slot];
    cam.handle.request_stop();
    cam.cfg = new.clone();
    let src = SourceSettings {
        cuda: g.cuda.clone(),
        ..SourceSettings::from(new)
    };
    g.queue.set_policy(slot, src.drop_policy());
    let a = inst.analysis_for(new, &src);
    let handle = spawn_camera(src, slot, &g.queue)?;
    drop(std::mem::replace(&mut cam.handle, handle));
    cam.analysis = a.stats.clone();
    let _ = g.control.send(WorkerCmd::Replace {
        slot,
        analysis: Box::new(a),
    });
    Ok(())
}

/// Where [`Plan::change_to`] failed: before anything changed, or after.
enum Step {
    Load(ControlError),
    Carry(ControlError),
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
    /// Builds and starts everything the config describes (the diff against the empty plan).
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
        let gpu_pictures = if !gpu {
            "no camera is on the GPU path".to_string()
        } else {
            match vigil_dataplane::ffi::nvjpeg::library() {
                Ok(l) => format!(
                    "those of cameras on the GPU path are drawn on the GPU and encoded by nvJPEG \
                     ({}, version {}.{}.{}): only JPEG bytes leave the GPU",
                    l.name, l.version.0, l.version.1, l.version.2
                ),
                Err(e) => format!(
                    "those of cameras on the GPU path are drawn on the GPU, then copied to the host \
                     for the CPU encoder: nvJPEG is not available ({})",
                    vigil_core::error::chain(&e)
                ),
            }
        };
        tracing::info!(
            "pictures (snapshots {}, live view and re-stream): frames in host memory are drawn and \
             JPEG-encoded on the CPU (jpeg-encoder); {gpu_pictures}",
            if cfg.snapshots.enabled { "on" } else { "off" }
        );
        let mut plan = Plan {
            groups: Vec::new(),
            started: Instant::now(),
            device: cfg.device.id.clone(),
            events,
            inst: inst.clone(),
            pictures: cfg.snapshots.enabled.then_some(PictureSettings {
                max_width: cfg.snapshots.width,
                quality: cfg.snapshots.quality,
            }),
            // Always: the live view's routes are off with `[live] enabled = false`, and the
            // re-stream and the `snapshot` command draw with it too.
            live_pictures: Some(PictureSettings {
                max_width: cfg.live.width,
                quality: cfg.live.quality,
            }),
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
        let backend = p.backend.clone();
        let sources: Vec<SourceSettings> = cams
            .iter()
            .map(|c| SourceSettings {
                cuda: cuda.clone(),
                ..SourceSettings::from(c)
            })
            .collect();
        let policies: Vec<_> = sources.iter().map(SourceSettings::drop_policy).collect();
        let queue = Arc::new(FrameQueue::new(&policies));
        let analyses: Vec<CameraAnalysis> = cams
            .iter()
            .zip(&sources)
            .map(|(c, src)| self.inst.analysis_for(c, src))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let outputs = Arc::new(OutputCounters::default());
        let (control, control_rx) = std::sync::mpsc::channel();
        let mut cameras = Vec::new();
        for (slot, ((c, a), src)) in cams.iter().zip(&analyses).zip(sources).enumerate() {
            let handle = spawn_camera(src, slot, &queue)?;
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
            pictures: self.pictures.map(Picturer::new),
            live_pictures: self.live_pictures.map(Picturer::new),
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
            backend,
        })
    }

    /// What runs now, as the core's plan value (each group's table and its cameras' configs).
    fn view(&self) -> PlanView {
        PlanView {
            groups: self
                .groups
                .iter()
                .map(|g| {
                    let cameras = g.cameras.iter().map(|c| c.cfg.clone()).collect();
                    (
                        g.model.clone(),
                        GroupView {
                            model: g.model_cfg.clone(),
                            cameras,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Makes the running plan match `cfg` (already validated), touching only what changed:
    /// computes the [`PlanDiff`](vigil_core::config::PlanDiff) from what runs to what `cfg`
    /// describes (start-up: from the empty plan), loads every model it names, then acts on it.
    /// A camera whose rules or score threshold changed keeps its pipeline; a camera whose source
    /// settings changed is rebuilt alone; a model whose table changed but whose cameras did not
    /// is swapped inside its running worker (pipelines kept); adding or removing a camera
    /// rebuilds that model's group. New models are loaded before anything is stopped, so a model
    /// that fails to load leaves everything running as it was. If anything fails after that (a
    /// camera or worker thread that cannot be started), the previous plan is restored the same
    /// way (the diff back to what ran before) and the error says so
    /// ([`ControlError::Restored`]; [`ControlError::NotRestored`] if even that failed).
    pub fn apply(&mut self, cfg: &Config) -> Result<ApplyReport> {
        let before = self.view();
        let mut report = ApplyReport::default();
        match self.change_to(&before, &PlanView::of(cfg), &mut report) {
            Ok(()) => {
                // A camera removed (or disabled) with its re-stream: its mount goes too.
                if let Some(srv) = self.inst.restream.started() {
                    srv.retain(|c| {
                        self.groups
                            .iter()
                            .flat_map(|g| &g.cameras)
                            .any(|r| r.name == c && r.cfg.restream.is_some())
                    });
                }
                Ok(report)
            }
            Err(Step::Load(e)) => Err(e),
            Err(Step::Carry(e)) => {
                tracing::error!(
                    "reload failed after the running plan was changed: {}; restoring the previous plan",
                    vigil_core::error::chain(&e)
                );
                let mut undo = ApplyReport::default();
                match self.change_to(&self.view(), &before, &mut undo) {
                    // At start-up "restoring" stopped what had started: the error is the cause.
                    Ok(()) if before.groups.is_empty() => Err(e),
                    Ok(()) => {
                        tracing::info!("previous plan restored: {}", undo.summary());
                        Err(ControlError::Restored(Box::new(e)))
                    }
                    Err(Step::Load(e2) | Step::Carry(e2)) => Err(ControlError::NotRestored {
                        restore: Box::new(e2),
                        source: Box::new(e),
                    }),
                }
            }
        }
    }

    /// Changes what runs from `from` (the running plan's view) to `to`: loads every model the
    /// diff names, then stops, updates and starts groups. A failure while loading changed
    /// nothing ([`Step::Load`]); one after that may have left the plan half-way ([`Step::Carry`]).
    fn change_to(
        &mut self,
        from: &PlanView,
        to: &PlanView,
        report: &mut ApplyReport,
    ) -> std::result::Result<(), Step> {
        let diff = diff_plans(from, to);
        // 1. Load every model the diff needs first: nothing changes if one fails.
        let mut prepared = BTreeMap::new();
        let mut swaps = BTreeMap::new();
        for (m, action) in &diff.models {
            let Some(mc) = action.model_to_load() else {
                continue;
            };
            let p = vigil_dataplane::engine::build(m, mc).map_err(|e| Step::Load(e.into()))?;
            // Swapped in place only while the frames stay where the new engine reads them
            // (CUDA memory for the GPU path, host memory for the CPU path); else rebuilt.
            let in_place = matches!(action, ModelAction::Swap { .. })
                && self
                    .groups
                    .iter()
                    .any(|g| &g.model == m && g.cuda.is_some() == p.cuda.is_some());
            if in_place {
                swaps.insert(m.clone(), p);
                report.models_swapped.push(m.clone());
            } else {
                prepared.insert(m.clone(), p);
                report.models_loaded.push(m.clone());
            }
        }
        self.carry_out(&diff, prepared, swaps, report)
            .map_err(Step::Carry)
    }

    /// Steps 2–4 of [`Plan::change_to`], the models already loaded.
    fn carry_out(
        &mut self,
        diff: &vigil_core::config::PlanDiff,
        mut prepared: BTreeMap<String, vigil_dataplane::engine::Built>,
        mut swaps: BTreeMap<String, vigil_dataplane::engine::Built>,
        report: &mut ApplyReport,
    ) -> Result<()> {
        // 2. Stop groups that are gone or rebuilt.
        let (keep, drop_groups): (Vec<Group>, Vec<Group>) =
            std::mem::take(&mut self.groups).into_iter().partition(|g| {
                matches!(
                    diff.models.get(&g.model),
                    Some(ModelAction::Keep { .. } | ModelAction::Swap { .. })
                ) && !prepared.contains_key(&g.model)
            });
        for g in drop_groups {
            if let Some(ModelAction::Stop { leaving } | ModelAction::Rebuild { leaving, .. }) =
                diff.models.get(&g.model)
            {
                report.stopped.extend(leaving.iter().cloned());
            }
            g.stop();
        }
        self.groups = keep;
        // 3. Update kept groups in place: swap changed models, then update cameras.
        for (m, action) in &diff.models {
            let (ModelAction::Keep { cameras: steps } | ModelAction::Swap { cameras: steps, .. }) =
                action
            else {
                continue;
            };
            let Some(g) = self.groups.iter_mut().find(|g| &g.model == m) else {
                continue;
            };
            if let (Some(p), ModelAction::Swap { model: mc, .. }) = (swaps.remove(m), action) {
                g.outputs = Arc::new(OutputCounters::default());
                g.backend = p.backend.clone();
                let _ = g.control.send(WorkerCmd::Swap(Box::new(ModelSwap {
                    engine: p.engine,
                    outputs: g.outputs.clone(),
                })));
                g.model_cfg = mc.clone();
                tracing::info!(model = %m, "model swapped in its running worker; camera pipelines kept");
            }
            for (slot, step) in steps.iter().enumerate() {
                let new = &step.camera;
                match step.change {
                    CameraChange::Unchanged => report.unchanged.push(new.name.clone()),
                    CameraChange::Rules => {
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
                        g.cameras[slot].cfg = new.clone();
                        report.rules_updated.push(new.name.clone());
                    }
                    CameraChange::Respawn => {
                        respawn(g, slot, new, &self.inst)?;
                        report.restarted.push(new.name.clone());
                    }
                }
            }
        }
        // 4. Start new groups.
        for (m, action) in &diff.models {
            if let Some(p) = prepared.remove(m) {
                let mc = action.model_to_load().expect("a prepared model was loaded");
                let cams: Vec<CameraConfig> = action.cameras_after().into_iter().cloned().collect();
                let g = self.start_group(m, mc, p, &cams)?;
                report.started.extend(cams.iter().map(|c| c.name.clone()));
                self.groups.push(g);
            }
        }
        Ok(())
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
        for (g, c) in self
            .groups
            .iter()
            .flat_map(|g| g.cameras.iter().map(move |c| (g, c)))
        {
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
                    frames_motion_skipped: c.analysis.motion_skipped.load(Ordering::Relaxed),
                    frames_dropped: c.queue.dropped(c.slot),
                    reconnects: st.reconnects.load(Ordering::Relaxed),
                    infer_ms_avg: if analysed > 0 {
                        round2(infer_total as f64 / analysed as f64 / 1000.0)
                    } else {
                        0.0
                    },
                    events: c.analysis.events.load(Ordering::Relaxed),
                    decoder: status.decoder,
                    backend: g.backend.name,
                    backend_note: g.backend.fallback.clone(),
                    last_error: status.last_error,
                    retry_in_s: status.retry_in_s.map(round2),
                    rules: c
                        .analysis
                        .rules
                        .lock()
                        .map(|r| {
                            r.iter()
                                .map(|(name, count)| (name.clone(), RuleTelemetry::from(*count)))
                                .collect()
                        })
                        .unwrap_or_default(),
                },
            );
        }
        out
    }

    /// Read-only views of the running cameras.
    pub fn views(&self) -> Vec<CameraView> {
        self.groups
            .iter()
            .flat_map(|g| g.cameras.iter().map(move |c| (g, c)))
            .map(|(g, c)| CameraView {
                backend: g.backend.name,
                name: c.name.clone(),
                url: c.cfg.url.clone(),
                stats: c.handle.stats.clone(),
                analysis: c.analysis.clone(),
                queue: c.queue.clone(),
                slot: c.slot,
                restream: c
                    .cfg
                    .restream
                    .and(self.inst.restream.started())
                    .map(|srv| (srv.url(&c.name), srv.encoder().to_string())),
                live: self.inst.live.as_ref().and_then(|(feeds, _)| {
                    let feeds = feeds.lock().unwrap_or_else(|e| e.into_inner());
                    feeds.get(&c.name).cloned()
                }),
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
            c.analysis.frame_latency.add_to(&mut hist);
        }
        (frames, hist)
    }

    /// Frames the motion gate kept from inference, over all cameras.
    pub fn motion_skipped(&self) -> u64 {
        self.cameras()
            .map(|c| c.analysis.motion_skipped.load(Ordering::Relaxed))
            .sum()
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

pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Serialize)]
pub struct CameraTelemetry {
    pub state: vigil_dataplane::media::CameraState,
    pub fps_in: f64,
    pub fps_analysed: f64,
    pub frames_in: u64,
    pub frames_analysed: u64,
    /// Frames not run through the model because nothing moved near the rules.
    pub frames_motion_skipped: u64,
    /// Frames replaced in the latest-frame queue before inference took them.
    pub frames_dropped: u64,
    pub reconnects: u64,
    pub infer_ms_avg: f64,
    pub events: u64,
    pub decoder: Option<String>,
    /// The model's backend: `tensorrt`, `cuda` or `cpu`.
    pub backend: &'static str,
    /// Why `auto` did not get a better backend (absent when it did, or was not asked).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_note: Option<String>,
    pub last_error: Option<String>,
    pub retry_in_s: Option<f64>,
    /// Each zone's occupancy and each line's counts now (as of the last second).
    pub rules: BTreeMap<String, RuleTelemetry>,
}

/// One rule in telemetry: `{"inside": N}` for a zone, `{"in": N, "out": M}` for a line.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RuleTelemetry {
    Zone {
        inside: u32,
    },
    Line {
        #[serde(rename = "in")]
        ins: u64,
        #[serde(rename = "out")]
        outs: u64,
    },
}

impl From<vigil_dataplane::worker::RuleCount> for RuleTelemetry {
    fn from(c: vigil_dataplane::worker::RuleCount) -> Self {
        match c {
            vigil_dataplane::worker::RuleCount::Zone { inside } => Self::Zone { inside },
            vigil_dataplane::worker::RuleCount::Line { ins, outs } => Self::Line { ins, outs },
        }
    }
}
