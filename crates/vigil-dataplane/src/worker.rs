//! The analysis worker: one per loaded model. Takes the latest frame of each of its cameras,
//! preprocesses it, runs the model, decodes detections, tracks them per camera, applies the
//! camera's rules and emits [`Event`]s on a bounded channel.
//!
//! Runs on its own OS thread; allocation per frame is limited to events (rare). Knows nothing
//! of MQTT (events leave through a channel) nor of how frames are decoded (it sees `FrameRef`).

use crate::media::{FrameQueue, FrameRef};
use crate::picture::{Jpeg, Picturer};
pub use crate::sized::Sizing;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vigil_core::analytics::motion::{MotionGate, MotionSettings};
use vigil_core::analytics::rules::{HitKind, RuleEngine, RuleHits};
use vigil_core::analytics::tracker::{Tracker, TrackerConfig};
use vigil_core::analytics::{BBox, COCO_CLASSES, Detections};
use vigil_core::config::{CameraConfig, MotionGateMode};
use vigil_core::events::{Event, EventKind, SnapshotRef, new_event_id, now_rfc3339};
pub use vigil_core::health::OutputCounters;
use vigil_core::model::nanodet::NanodetDecoder;
use vigil_core::model::preprocess::Preprocessor;
use vigil_core::model::{Backend, InferError};
use vigil_core::overlay::Scene;

/// Counters of one camera's analysis, shared with telemetry.
#[derive(Default)]
pub struct AnalysisStats {
    pub analysed: AtomicU64,
    pub infer_us_total: AtomicU64,
    /// Time spent preprocessing (colour conversion + letterbox + normalisation).
    pub pre_us_total: AtomicU64,
    pub detections: AtomicU64,
    pub events: AtomicU64,
    /// Events the bus refused because it was closed.
    pub events_lost: AtomicU64,
    /// Frames skipped because their memory/format is not readable by this worker.
    pub unsupported: AtomicU64,
    /// Frames not analysed because nothing moved near the rules (the motion gate).
    pub motion_skipped: AtomicU64,
    /// Frame-to-detection latency: from the frame leaving the decoder (appsink) to its
    /// detections being on the host, queueing included.
    pub frame_latency: LatencyHist,
    /// The camera's rules as they stand (zone occupancy, line counts), refreshed by the worker
    /// at most once a second: for telemetry (and Home Assistant's sensors).
    pub rules: std::sync::Mutex<Vec<(String, RuleCount)>>,
}

/// What one rule counts now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleCount {
    /// Tracks inside the zone.
    Zone { inside: u32 },
    /// Crossings of the line since its rules were set.
    Line { ins: u64, outs: u64 },
}

/// A lock-free latency histogram: 50 µs buckets up to 200 ms, then one overflow bucket.
pub struct LatencyHist {
    buckets: Box<[AtomicU64]>,
}

impl LatencyHist {
    const STEP_US: u64 = 50;
    const BUCKETS: usize = 4000;

    pub fn record(&self, d: Duration) {
        let i = ((d.as_micros() as u64) / Self::STEP_US).min(Self::BUCKETS as u64) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A copy of the bucket counts (to subtract a start snapshot from).
    pub fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0..1) in milliseconds of bucket counts (the buckets' upper bounds;
    /// `None` if empty).
    pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64 * q).ceil() as u64).max(1);
        let mut acc = 0;
        for (i, c) in counts.iter().enumerate() {
            acc += c;
            if acc >= want {
                return Some(((i as u64 + 1) * Self::STEP_US) as f64 / 1000.0);
            }
        }
        None
    }
}

impl LatencyHist {
    /// Adds this histogram's bucket counts to `total` (empty: becomes a copy), to sum the
    /// histograms of several cameras.
    pub fn add_to(&self, total: &mut Vec<u64>) {
        let h = self.snapshot();
        if total.is_empty() {
            *total = h;
        } else {
            total.iter_mut().zip(h).for_each(|(a, b)| *a += b);
        }
    }

    /// Bucket counts gathered into coarser buckets with the given upper bounds (seconds,
    /// ascending; anything above the last goes to `+Inf`): the per-bucket counts (for
    /// Prometheus, not cumulative), the sum in seconds (from the 50 µs buckets' middles; the
    /// overflow bucket counts as its lower bound) and the count.
    pub fn coarse(counts: &[u64], bounds_s: &[f64]) -> (Vec<(f64, u64)>, f64, u64) {
        let mut out: Vec<(f64, u64)> = bounds_s.iter().map(|&b| (b, 0)).collect();
        out.push((f64::INFINITY, 0));
        let (mut sum, mut total) = (0.0, 0);
        for (i, &c) in counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let (upper_s, mid_s) = if i >= Self::BUCKETS {
                (
                    f64::INFINITY,
                    (Self::BUCKETS as u64 * Self::STEP_US) as f64 / 1e6,
                )
            } else {
                (
                    ((i as u64 + 1) * Self::STEP_US) as f64 / 1e6,
                    (i as f64 + 0.5) * Self::STEP_US as f64 / 1e6,
                )
            };
            let at = bounds_s
                .iter()
                .position(|&b| upper_s <= b + 1e-12)
                .unwrap_or(bounds_s.len());
            out[at].1 += c;
            sum += mid_s * c as f64;
            total += c;
        }
        (out, sum, total)
    }
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            buckets: (0..=Self::BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// Per-camera analysis state owned by the worker.
pub struct CameraAnalysis {
    pub name: String,
    pub min_score: f32,
    pub tracker: Tracker,
    pub rules: RuleEngine,
    pub stats: Arc<AnalysisStats>,
    /// Inference latency histogram of this camera (Prometheus).
    pub latency: Option<prometheus_client::metrics::histogram::Histogram>,
    /// Live pictures of this camera, made while someone watches, at most every `live_every`.
    pub live: Option<Arc<crate::live::LiveFeed>>,
    pub live_every: Duration,
    /// This camera's live picture width, over the worker's (`[cameras.live] width`).
    pub live_width: Option<u32>,
    live_last: Option<Instant>,
    /// The annotated RTSP re-stream of this camera (`[cameras.restream]`), its picture and
    /// when it last got one.
    pub restream: Option<Arc<crate::media::restream::RestreamFeed>>,
    restream_pic: Option<vigil_core::overlay::Picture420>,
    restream_last: Option<Instant>,
    /// The camera's main stream for live pictures, the re-stream and the `snapshot` command
    /// (`view_url`), opened while they are wanted; `None`: they draw the detection frame.
    pub view: Option<crate::media::view::ViewStream>,
    /// When the rules' counts were last copied to `stats.rules`.
    counts_last: Option<Instant>,
    session: u64,
    /// Stream time of this camera continues across pipeline rebuilds: base + pts.
    time_base: f64,
    last_t: f64,
    last_seen: Option<Instant>,
    /// The motion gate and when it runs (`[cameras.motion]`); `None`: `gate = "off"`.
    motion: Option<(MotionGateMode, MotionGate)>,
}

impl CameraAnalysis {
    pub fn new(cfg: &CameraConfig) -> Self {
        // Tracks start at 0.5 and are kept down to half the camera's min_score. Starting them
        // at min_score (TrackerConfig::for_min_score) found no more people on the eval set and
        // made more duplicates (`vigil eval`, benches/RESULTS.md "Counting accuracy").
        let tracker = Tracker::new(TrackerConfig {
            low_thresh: (cfg.min_score * 0.5).max(0.1),
            ..TrackerConfig::default()
        });
        let rules = RuleEngine::new(&cfg.zones, &cfg.lines, cfg.min_score);
        let m = &cfg.motion;
        let motion = (m.gate != MotionGateMode::Off).then(|| {
            let settings = MotionSettings {
                threshold: m.threshold.clamp(1, 255) as u8,
                min_blocks: m.min_blocks.clamp(1, u16::MAX as u32) as u16,
                max_skip_s: m.max_skip.as_secs_f64(),
            };
            (m.gate, MotionGate::new(settings, &regions(&rules)))
        });
        Self {
            name: cfg.name.clone(),
            min_score: cfg.min_score,
            tracker,
            rules,
            stats: Arc::new(AnalysisStats::default()),
            latency: None,
            live: None,
            live_every: Duration::from_millis(200),
            live_width: None,
            live_last: None,
            restream: None,
            restream_pic: None,
            restream_last: None,
            view: None,
            counts_last: None,
            session: 0,
            time_base: 0.0,
            last_t: 0.0,
            last_seen: None,
            motion,
        }
    }

    /// Whether the motion gate lets `frame` through to inference (always, where it does not
    /// run: `gate = "off"`, `auto` on the GPU path, frames not in host memory, and while someone
    /// looks at the camera: its live view, re-stream or a snapshot asked for get their pictures,
    /// boxes included, at their own rate).
    fn motion_allows(&mut self, frame: &FrameRef, cpu_engine: bool) -> bool {
        let watched = self
            .live
            .as_ref()
            .is_some_and(|f| f.viewers() > 0 || f.requested().0)
            || self.restream.as_ref().is_some_and(|f| f.watched());
        let Some((mode, gate)) = &mut self.motion else {
            return true;
        };
        if *mode == MotionGateMode::Auto && !cpu_engine {
            return true;
        }
        let Some(yuv) = frame.host_yuv() else {
            return true;
        };
        // Raw frame time: a new pipeline session restarts it, which the gate takes as a reason
        // to analyse.
        let pts = frame.pts.map(|d| d.as_secs_f64()).unwrap_or(0.0);
        // A watched frame is analysed and becomes the reference, so the gate picks up from it
        // when the viewer leaves.
        let go = gate.check(pts, yuv.y, yuv.width, yuv.height, yuv.y_stride) || watched;
        if go {
            gate.analysed(pts);
        }
        go
    }
}

/// The rules' regions for the motion gate.
fn regions(
    rules: &RuleEngine,
) -> heapless::Vec<BBox, { vigil_core::analytics::motion::MAX_REGIONS }> {
    let mut v = heapless::Vec::new();
    for r in rules.regions() {
        if v.push(r).is_err() {
            // More rules than regions: the gate watches the whole frame.
            v.clear();
            break;
        }
    }
    v
}

/// Where events go: a bounded channel drained by the control plane. A full channel blocks the
/// worker (back-pressure); frames then wait in the latest-frame-wins queue and older ones are
/// dropped and counted there, so nothing upstream grows.
pub type EventSink = tokio::sync::mpsc::Sender<Event>;

pub struct AnalysisWorker {
    pub device: String,
    pub engine: Engine,
    pub cameras: Vec<CameraAnalysis>,
    pub queue: Arc<FrameQueue>,
    pub events: EventSink,
    pub stop: Arc<AtomicBool>,
    /// Beats every loop turn (at least every half second when idle).
    pub heartbeat: Option<vigil_core::health::Heartbeat>,
    /// Changes from the supervisor (hot reload), applied between frames.
    pub control: Option<std::sync::mpsc::Receiver<WorkerCmd>>,
    /// Well-formed and malformed outputs of the current model.
    pub outputs: Arc<OutputCounters>,
    /// Makes the annotated picture of a frame that fired events (`None`: no snapshots).
    pub pictures: Option<crate::picture::Picturer>,
    /// Makes the live pictures of cameras someone watches (`None`: no live view).
    pub live_pictures: Option<crate::picture::Picturer>,
}

/// What turns a frame into detections: the CPU path (host frames, CPU preprocessing, any
/// [`Backend`], CPU decoding) or the GPU path (frames, preprocessing, inference and decoding on
/// the GPU; see [`crate::gpu::detector`]).
// Made once per worker; the CPU variant's fixed-capacity decoder is meant to be inline.
#[allow(clippy::large_enum_variant)]
pub enum Engine {
    Cpu {
        backend: Box<dyn Backend>,
        pre: Preprocessor,
        decoder: NanodetDecoder,
        sizing: Sizing,
    },
    Gpu(Box<crate::gpu::detector::GpuDetector>),
}

enum DetectError {
    /// The frame's memory or format is not one this engine reads.
    Unsupported,
    /// The CPU path failed (the backend, or decoding its outputs).
    Cpu(InferError),
    /// The GPU path failed.
    Gpu(crate::gpu::GpuError),
}

impl Engine {
    /// Most frames this engine takes at once (the GPU path batches cameras).
    fn max_batch(&self) -> usize {
        match self {
            Engine::Cpu { .. } => 1,
            Engine::Gpu(_) => crate::gpu::ort_cuda::MAX_BATCH,
        }
    }

    /// Detections of each frame of `frames` into `dets[i]`, the outcome in `res[i]` (cleared,
    /// then one per frame; capacities kept), as (preprocessing, inference) µs. The GPU path runs
    /// frames of one size as one batch and reports the batch's time over its frames as
    /// inference (its stages overlap on one stream).
    fn detect_batch(
        &mut self,
        frames: &[FrameRef],
        input: &mut Vec<f32>,
        dets: &mut [Detections],
        res: &mut Vec<Result<(u64, u64), DetectError>>,
    ) {
        res.clear();
        match self {
            Engine::Cpu {
                backend,
                pre,
                decoder,
                sizing,
            } => {
                for (f, d) in frames.iter().zip(dets.iter_mut()) {
                    res.push(detect_cpu(
                        backend.as_mut(),
                        pre,
                        decoder,
                        sizing,
                        f,
                        input,
                        d,
                    ));
                }
            }
            Engine::Gpu(g) => {
                let t0 = Instant::now();
                let mut out: [Result<(), crate::gpu::GpuError>; crate::gpu::ort_cuda::MAX_BATCH] =
                    std::array::from_fn(|_| Ok(()));
                let n = frames.len().min(out.len());
                g.detect_batch(&frames[..n], &mut dets[..n], &mut out[..n]);
                let us = t0.elapsed().as_micros() as u64 / n.max(1) as u64;
                for r in out.into_iter().take(n) {
                    res.push(r.map(|()| (0, us)).map_err(DetectError::Gpu));
                }
            }
        }
    }

    fn set_score_threshold(&mut self, t: f32) {
        match self {
            Engine::Cpu { decoder, .. } => decoder.score_threshold = t,
            Engine::Gpu(g) => g.set_score_threshold(t),
        }
    }
}

/// The CPU path for one frame: host pixels → [`crate::sized::detect`]; returns
/// (preprocessing, inference) µs.
fn detect_cpu(
    backend: &mut dyn Backend,
    pre: &mut Preprocessor,
    decoder: &mut NanodetDecoder,
    sizing: &mut Sizing,
    frame: &FrameRef,
    input: &mut Vec<f32>,
    dets: &mut Detections,
) -> Result<(u64, u64), DetectError> {
    let Some(yuv) = frame.host_yuv() else {
        return Err(DetectError::Unsupported);
    };
    crate::sized::detect(backend, pre, decoder, sizing, &yuv, input, dets).map_err(DetectError::Cpu)
}

/// A change the supervisor makes to a running worker without stopping it.
pub enum WorkerCmd {
    /// New rules (and score threshold) for one camera; its tracks and pipeline are kept.
    Rules {
        slot: usize,
        rules: Box<RuleEngine>,
        min_score: f32,
    },
    /// The camera in this slot was rebuilt with new settings: fresh analysis state.
    Replace {
        slot: usize,
        analysis: Box<CameraAnalysis>,
    },
    /// A new model of the same name (OTA or reload) for the same cameras: backend, input
    /// preparation and decoder swapped between frames; cameras, tracks and rules kept.
    Swap(Box<ModelSwap>),
}

/// What [`WorkerCmd::Swap`] brings: a model already loaded and checked.
pub struct ModelSwap {
    pub engine: Engine,
    pub outputs: Arc<OutputCounters>,
}

impl AnalysisWorker {
    /// The decoder keeps candidates down to half the lowest camera `min_score`: the tracker's
    /// second stage uses those to keep tracks alive.
    fn set_decoder_threshold(&mut self) {
        let lowest = self
            .cameras
            .iter()
            .map(|c| c.min_score)
            .fold(1.0f32, f32::min);
        self.engine.set_score_threshold((lowest * 0.5).max(0.05));
    }

    /// Runs until `stop` is set or the queue is closed.
    pub fn run(mut self) {
        let mut input = Vec::new();
        // Per batch, allocated once: the frames, their times, detections and outcomes.
        let cap = crate::gpu::ort_cuda::MAX_BATCH;
        let mut frames: Vec<FrameRef> = Vec::with_capacity(cap);
        let mut times: Vec<(usize, f64, u64, Instant)> = Vec::with_capacity(cap);
        let mut dets: Vec<Detections> = (0..cap).map(|_| Detections::new()).collect();
        let mut results = Vec::with_capacity(cap);
        let mut hits = RuleHits::new();
        self.set_decoder_threshold();
        while !self.stop.load(Ordering::Relaxed) {
            if let Some(h) = &self.heartbeat {
                h.beat();
            }
            while let Some(cmd) = self.control.as_ref().and_then(|c| c.try_recv().ok()) {
                match cmd {
                    WorkerCmd::Rules {
                        slot,
                        rules,
                        min_score,
                    } => {
                        let cam = &mut self.cameras[slot];
                        cam.rules = *rules;
                        cam.min_score = min_score;
                        if let Some((_, gate)) = &mut cam.motion {
                            gate.set_regions(&regions(&cam.rules));
                        }
                    }
                    WorkerCmd::Replace { slot, analysis } => self.cameras[slot] = *analysis,
                    WorkerCmd::Swap(swap) => {
                        let ModelSwap { engine, outputs } = *swap;
                        (self.engine, self.outputs) = (engine, outputs);
                    }
                }
                self.set_decoder_threshold();
            }
            let max = self.engine.max_batch();
            if self
                .queue
                .pop_batch(Duration::from_millis(500), max, &mut frames)
                == 0
            {
                continue;
            }
            // The CPU path takes one frame at a time: one in which nothing moved near the rules
            // skips inference, and the tracker does not step: its tracks hold their place (nothing
            // moved where they are). Coasting them on their velocity instead drifted a person who
            // had stopped in a zone off their own box: a second track, a second zone entry.
            if let [frame] = &frames[..] {
                let cpu = matches!(self.engine, Engine::Cpu { .. });
                let slot = frame.slot;
                if !self.cameras[slot].motion_allows(frame, cpu) {
                    let pts = frame.pts.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                    let (session, received) = (frame.session, frame.received);
                    let cam = &mut self.cameras[slot];
                    let t = cam.stream_time(pts, session, received, &mut hits);
                    cam.stats.motion_skipped.fetch_add(1, Ordering::Relaxed);
                    self.emit(slot, &hits, t, None);
                    frames.clear();
                    continue;
                }
            }
            times.clear();
            for frame in &frames {
                let pts = frame.pts.map(|d| d.as_secs_f64()).unwrap_or(0.0);
                times.push((frame.slot, pts, frame.session, frame.received));
            }
            self.engine
                .detect_batch(&frames, &mut input, &mut dets, &mut results);
            // In batch order, which is each camera's frame order (a batch may hold several
            // frames of one recording): stream time (a new session ends the old tracks first),
            // then tracking and rules.
            for (k, res) in results.drain(..).enumerate() {
                let (slot, pts, session, received) = times[k];
                let t = self.cameras[slot].stream_time(pts, session, received, &mut hits);
                self.emit(slot, &hits, t, None);
                let dets = &mut dets[k];
                let cam = &mut self.cameras[slot];
                let counter = match &res {
                    Ok(_) => &self.outputs.good,
                    Err(DetectError::Cpu(_) | DetectError::Gpu(_)) => &self.outputs.bad,
                    Err(DetectError::Unsupported) => &self.outputs.unsupported,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let (pre_us, infer_us) = match res {
                    Ok(t) => t,
                    Err(DetectError::Unsupported) => {
                        if cam.stats.unsupported.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(camera = %cam.name, "frames in a memory or format this path cannot read are skipped (counted)");
                        }
                        continue;
                    }
                    Err(DetectError::Cpu(e)) => {
                        tracing::error!(camera = %cam.name, "inference failed: {e}");
                        continue;
                    }
                    Err(DetectError::Gpu(e)) => {
                        let e = vigil_core::error::chain(&e);
                        tracing::error!(camera = %cam.name, "inference failed: {e}");
                        continue;
                    }
                };
                dets.retain(|d| d.score >= cam.tracker.config().low_thresh);
                let out = cam.tracker.update(dets);
                let f = &frames[k];
                cam.rules
                    .set_frame_size(f.width() as u32, f.height() as u32);
                cam.rules.update(t, out.active, out.removed, &mut hits);
                publish_counts(&cam.rules, &cam.stats, &mut cam.counts_last);
                // A frame that fired events gets its picture, the events' tracks highlighted.
                let picture = match (&mut self.pictures, hits.is_empty()) {
                    (Some(p), false) => annotated(
                        p, &frames[k], &cam.name, &cam.rules, out.active, &hits,
                    )
                    .map(|jpeg| {
                        let snapshot = SnapshotRef {
                            id: new_event_id(),
                            width: jpeg.width,
                            height: jpeg.height,
                            bytes: jpeg.bytes.len() as u32,
                        };
                        (snapshot, jpeg)
                    }),
                    _ => None,
                };
                // The main stream (`view_url`) keeps its newest frame; closed when unwatched.
                if let Some(v) = &mut cam.view {
                    v.tick();
                }
                // A camera someone watches gets a live picture when one is due.
                if let (Some(p), Some(feed)) = (&mut self.live_pictures, &cam.live)
                    && feed.viewers() > 0
                    && cam
                        .live_last
                        .is_none_or(|t| t.elapsed() + cam.live_every / 8 >= cam.live_every)
                {
                    cam.live_last = Some(Instant::now());
                    p.set_width(cam.live_width);
                    let frame = viewed(&mut cam.view, &frames[k]);
                    if let Some(jpeg) =
                        annotated(p, frame, &cam.name, &cam.rules, out.active, &hits)
                    {
                        let tracks = out
                            .active
                            .iter()
                            .map(|t| crate::live::LiveTrack {
                                id: t.id,
                                class_id: t.class_id,
                                score: t.score,
                                bbox: [t.bbox.x1, t.bbox.y1, t.bbox.x2, t.bbox.y2],
                            })
                            .collect();
                        feed.publish(jpeg, tracks);
                    }
                    p.set_width(None);
                }
                // A re-streamed camera someone watches gets a picture when one is due.
                if let (Some(p), Some(feed)) = (&mut self.live_pictures, &cam.restream)
                    && feed.watched()
                {
                    let every = crate::media::restream::interval(&feed.settings);
                    if cam
                        .restream_last
                        .is_none_or(|t| t.elapsed() + every / 8 >= every)
                    {
                        cam.restream_last = Some(Instant::now());
                        let width = feed.settings.width;
                        let frame = viewed(&mut cam.view, &frames[k]);
                        let drawn = with_scene(&cam.name, &cam.rules, out.active, &hits, |scene| {
                            p.draw_into(frame, scene, width, &mut cam.restream_pic)
                        });
                        if drawn.is_ok()
                            && let Some(pic) = &cam.restream_pic
                        {
                            feed.push(pic);
                        }
                    }
                }
                // Pictures asked for once (the `snapshot` command), at the snapshot settings.
                if let Some(feed) = &cam.live
                    && let (true, clean) = feed.requested()
                    && let Some(p) = self.pictures.as_mut().or(self.live_pictures.as_mut())
                    && let frame = viewed(&mut cam.view, &frames[k])
                    && let Some(jpeg) =
                        annotated(p, frame, &cam.name, &cam.rules, out.active, &hits)
                {
                    let clean = clean.then(|| p.picture(frame, None).ok()).flatten();
                    feed.answer(jpeg, clean);
                }
                cam.stats.analysed.fetch_add(1, Ordering::Relaxed);
                cam.stats.frame_latency.record(received.elapsed());
                if let Some(h) = &cam.latency {
                    h.observe(infer_us as f64 / 1e6);
                }
                cam.stats
                    .infer_us_total
                    .fetch_add(infer_us, Ordering::Relaxed);
                cam.stats.pre_us_total.fetch_add(pre_us, Ordering::Relaxed);
                cam.stats
                    .detections
                    .fetch_add(dets.len() as u64, Ordering::Relaxed);
                self.emit(slot, &hits, t, picture);
            }
            // The frames (and their decoder buffers) go back after the analytics (which may
            // have drawn one of them).
            frames.clear();
        }
    }

    /// Turns one frame's rule hits into events on the bus, each referring to the frame's
    /// picture when there is one.
    fn emit(&self, slot: usize, hits: &RuleHits, t: f64, picture: Option<(SnapshotRef, Jpeg)>) {
        let cam = &self.cameras[slot];
        for h in hits {
            let ev = Event {
                seq: 0,
                id: new_event_id(),
                device: self.device.clone(),
                camera: cam.name.clone(),
                rule: cam.rules.rule_names()[h.rule].clone(),
                kind: match h.kind {
                    HitKind::ZoneEnter => EventKind::ZoneEnter,
                    HitKind::ZoneLeave => EventKind::ZoneLeave,
                    HitKind::ZoneDwell => EventKind::ZoneDwell,
                    HitKind::LineCross => EventKind::LineCross,
                },
                direction: h.crossing.map(|c| c.as_str()),
                track_id: h.track_id,
                class: COCO_CLASSES
                    .get(h.class_id as usize)
                    .copied()
                    .unwrap_or("unknown")
                    .to_string(),
                score: h.score,
                bbox: [h.bbox.x1, h.bbox.y1, h.bbox.x2, h.bbox.y2],
                // The hit's own time: a removed track's leave is timed at its last sighting.
                pts_s: if h.t_s.is_finite() { h.t_s } else { t },
                time: now_rfc3339(),
                dwell_s: h.dwell_s,
                track_age_s: h.track_age_s,
                track_mean_score: h.track_mean_score,
                snapshot: picture.as_ref().map(|p| p.0.clone()),
                jpeg: picture.as_ref().map(|p| p.1.bytes.clone()),
            };
            cam.stats.events.fetch_add(1, Ordering::Relaxed);
            if self.events.blocking_send(ev).is_err() {
                cam.stats.events_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Calls `f` with the overlay's scene of one frame: `tracks`, those of `hits` highlighted,
/// the camera's rules and the time now.
fn with_scene<R>(
    camera: &str,
    rules: &RuleEngine,
    tracks: &[vigil_core::analytics::tracker::TrackView],
    hits: &RuleHits,
    f: impl FnOnce(&Scene<'_>) -> R,
) -> R {
    let highlight: heapless::Vec<u64, { vigil_core::analytics::MAX_HITS }> =
        hits.iter().map(|h| h.track_id).collect();
    let clock = vigil_core::overlay::clock(std::time::SystemTime::now());
    f(&Scene {
        camera,
        clock: &clock,
        tracks,
        highlight: &highlight,
        rules: Some(rules),
    })
}

/// The frame a picture for people is drawn on: the main stream's newest (opening it if need
/// be) where the camera has one and it is fresh, else the detection frame.
fn viewed<'a>(
    view: &'a mut Option<crate::media::view::ViewStream>,
    detection: &'a FrameRef,
) -> &'a FrameRef {
    view.as_mut().and_then(|v| v.frame()).unwrap_or(detection)
}

/// The annotated picture of `frame`, with the tracks of `hits` highlighted; `None` (counted,
/// the first failure logged) when none can be made.
fn annotated(
    p: &mut Picturer,
    frame: &FrameRef,
    camera: &str,
    rules: &RuleEngine,
    tracks: &[vigil_core::analytics::tracker::TrackView],
    hits: &RuleHits,
) -> Option<Jpeg> {
    match with_scene(camera, rules, tracks, hits, |scene| {
        p.picture(frame, Some(scene))
    }) {
        Ok(jpeg) => Some(jpeg),
        Err(e) => {
            if p.failures == 1 {
                tracing::warn!(camera = %camera, "pictures of this camera fail: {e} (counted)");
            }
            None
        }
    }
}

/// Copies the rules' counts into the shared stats, at most once a second (in place: names
/// are copied only when the rules changed).
fn publish_counts(rules: &RuleEngine, stats: &AnalysisStats, last: &mut Option<Instant>) {
    if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
        return;
    }
    *last = Some(Instant::now());
    let mut shared = stats.rules.lock().unwrap_or_else(|e| e.into_inner());
    let same = shared.len() == rules.shapes().count()
        && shared
            .iter()
            .zip(rules.shapes())
            .all(|((a, _), (b, _))| a == b);
    if !same {
        shared.clear();
    }
    for (i, (name, shape)) in rules.shapes().enumerate() {
        let count = match shape {
            vigil_core::analytics::rules::RuleShape::Zone { inside, .. } => RuleCount::Zone {
                inside: inside as u32,
            },
            vigil_core::analytics::rules::RuleShape::Line { ins, outs, .. } => {
                RuleCount::Line { ins, outs }
            }
        };
        match shared.get_mut(i) {
            Some(slot) => slot.1 = count,
            None => shared.push((name.to_string(), count)),
        }
    }
}

impl CameraAnalysis {
    /// The camera's stream time for a frame, continuous across pipeline rebuilds. On a new
    /// pipeline session, tracks are dropped and their zone leaves written to `hits` (cleared
    /// first in every case).
    fn stream_time(
        &mut self,
        pts: f64,
        session: u64,
        received: Instant,
        hits: &mut RuleHits,
    ) -> f64 {
        hits.clear();
        if session != self.session {
            let gap = self
                .last_seen
                .map(|t| received.saturating_duration_since(t).as_secs_f64())
                .unwrap_or(0.0);
            self.time_base = self.last_t + gap - pts;
            let removed: heapless::Vec<u64, { vigil_core::analytics::MAX_TRACKS }> =
                self.tracker.reset().iter().copied().collect();
            self.rules.update(self.last_t, &[], &removed, hits);
            self.session = session;
        }
        let t = self.time_base + pts;
        self.last_t = t;
        self.last_seen = Some(received);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_gather_into_coarse_ones() {
        let h = LatencyHist::default();
        h.record(Duration::from_micros(120)); // bucket (100, 150] µs
        h.record(Duration::from_millis(4));
        h.record(Duration::from_micros(4990)); // (4.95, 5.0] ms: on the bound, counted below it
        h.record(Duration::from_secs(1)); // overflow
        let (b, sum, n) = LatencyHist::coarse(&h.snapshot(), &[0.001, 0.005, 0.2]);
        assert_eq!(
            b,
            vec![(0.001, 1), (0.005, 2), (0.2, 0), (f64::INFINITY, 1)]
        );
        assert_eq!(n, 4);
        // 0.125 ms + 4.025 ms + 4.975 ms + 200 ms (the overflow at its lower bound)
        assert!((sum - 0.209125).abs() < 1e-9, "{sum}");
    }
}
