//! One camera: builds its GStreamer pipeline from the URL, watches it against a deadline
//! (no polling: the control thread sleeps on the pipeline's bus until a message arrives or the
//! frame deadline passes), and rebuilds it with back-off and a circuit breaker when it fails,
//! stalls or ends. Its state and counters are shared through [`CameraStats`].

use super::backoff::{Backoff, Retry};
use super::frame::{CapsMemory, FrameQueue, FrameRef};
use super::reach;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vigil_core::config::{CameraConfig, OnEnd, ReconnectConfig, RtspTransport};
use vigil_core::error::chain;
use vigil_core::redact::redact;

/// Why a camera's pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// No element of that factory: its plugin is not installed. (GStreamer's own error only
    /// repeats the factory's name: not kept.)
    #[error("GStreamer element {factory} is missing (install its plugin package)")]
    Missing { factory: &'static str },
    #[error("cannot assemble pipeline")]
    Assemble(#[source] gst::glib::BoolError),
    #[error("cannot link the pipeline's elements")]
    Link(#[source] gst::glib::BoolError),
    #[error("cannot link the source's stream: {0}")]
    PadLink(String),
    #[error("an element added to the playing pipeline did not start")]
    State,
}

/// Why a camera's pipeline failed, as its status and logs say (credentials redacted there).
#[derive(Debug, thiserror::Error)]
enum CameraError {
    #[error(transparent)]
    Build(#[from] PipelineError),
    #[error("pipeline has no bus")]
    NoBus,
    #[error("cannot start pipeline")]
    Start(#[source] StartError),
    /// No frame (or no first frame) within `stall_timeout`.
    #[error("{} for {:.1}s (stall_timeout)", if *.live { "no frame" } else { "no first frame" }, .timeout.as_secs_f64())]
    Stalled { live: bool, timeout: Duration },
    /// An element posted an error: its path, GStreamer's error and its debug text, in the
    /// words GStreamer logs them (the error is in the message, before the debug text).
    #[error("{element}: {error}{}", .debug.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Element {
        element: String,
        error: gst::glib::Error,
        debug: Option<String>,
    },
}

/// Why a pipeline did not start: the error its elements posted, else the state change's.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Posted(gst::glib::Error),
    #[error(transparent)]
    State(gst::StateChangeError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    /// Pipeline built, waiting for the first frame.
    Connecting,
    /// Frames arriving within the deadline.
    Live,
    /// Failed; retrying after a back-off.
    BackingOff,
    /// Failed too often in a row; one trial attempt after a long wait.
    CircuitOpen,
    /// The source ended and the camera is configured to stop there.
    Ended,
    /// Stopped by the supervisor.
    Stopped,
}

/// Every state, for exporting one gauge per state.
pub const ALL_STATES: [CameraState; 6] = [
    CameraState::Connecting,
    CameraState::Live,
    CameraState::BackingOff,
    CameraState::CircuitOpen,
    CameraState::Ended,
    CameraState::Stopped,
];

impl CameraState {
    pub fn as_str(self) -> &'static str {
        match self {
            CameraState::Connecting => "connecting",
            CameraState::Live => "live",
            CameraState::BackingOff => "backing_off",
            CameraState::CircuitOpen => "circuit_open",
            CameraState::Ended => "ended",
            CameraState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CameraStatus {
    pub state: CameraState,
    /// Seconds until the next attempt, while backing off or with the circuit open.
    pub retry_in_s: Option<f64>,
    /// The last failure, credentials redacted.
    pub last_error: Option<String>,
    /// Decoder element in use (e.g. `avdec_h264`).
    pub decoder: Option<String>,
    pub consecutive_failures: u32,
}

/// Pipelines built by this process: each gets the next number, so a pipeline's identity can be
/// told apart across rebuilds and reloads.
static PIPELINES: AtomicU64 = AtomicU64::new(0);

/// Counters and state of one camera, shared with telemetry.
pub struct CameraStats {
    /// Process-wide number of the pipeline currently built for this camera.
    pub pipeline_id: AtomicU64,
    /// Decoded frames delivered by the pipeline.
    pub frames_in: AtomicU64,
    /// Frames taken for analysis (after the analysis-rate sampler).
    pub frames_sampled: AtomicU64,
    /// Pipeline rebuilds after a failure, stall or end.
    pub reconnects: AtomicU64,
    /// Pipeline build counter; a frame carries the session it came from.
    pub session: AtomicU64,
    epoch: Instant,
    last_frame_ns: AtomicU64,
    status: Mutex<(CameraStatus, Option<Instant>)>,
}

impl CameraStats {
    fn new() -> Self {
        Self {
            pipeline_id: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_sampled: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            session: AtomicU64::new(0),
            epoch: Instant::now(),
            last_frame_ns: AtomicU64::new(0),
            status: Mutex::new((
                CameraStatus {
                    state: CameraState::Connecting,
                    retry_in_s: None,
                    last_error: None,
                    decoder: None,
                    consecutive_failures: 0,
                },
                None,
            )),
        }
    }

    pub fn status(&self) -> CameraStatus {
        let g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = g.0.clone();
        s.retry_in_s =
            g.1.map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64());
        s
    }

    pub fn state(&self) -> CameraState {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .state
    }

    fn set(&self, f: impl FnOnce(&mut CameraStatus, &mut Option<Instant>)) {
        let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        let (s, at) = &mut *g;
        f(s, at);
    }

    fn touch(&self) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        self.last_frame_ns.store(ns.max(1), Ordering::Relaxed);
    }

    fn last_frame(&self) -> Option<Instant> {
        match self.last_frame_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }
}

/// What the source side of a camera needs from its config.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: String,
    pub url: String,
    pub fps: f32,
    pub stall_timeout: Duration,
    pub rtsp_latency: Duration,
    pub rtsp_transport: RtspTransport,
    pub reconnect: ReconnectConfig,
    pub on_end: OnEnd,
    /// GPU path: where the decoders leave their frames (NV12 on the GPU up to the analysis
    /// worker); `None` = frames in system memory.
    pub cuda: Option<GpuFrames>,
}

/// How a camera's decoded frames stay on the GPU.
#[derive(Debug, Clone)]
pub enum GpuFrames {
    /// In `memory:CUDAMemory`, allocated by the decoders in the process's CUDA context (given to
    /// the pipeline as `gst.cuda.context`); Jetson's `nvv4l2decoder`, where chosen, gives
    /// `memory:NVMM` instead.
    Cuda(gst::Context),
    /// In Jetson's `memory:NVMM` (`nvv4l2decoder`), mapped by `gpu::jetson_nvmm` into the
    /// process's CUDA context: no GStreamer CUDA library needed (JetPack 6 ships GStreamer
    /// 1.20, without `libgstcuda`). Untested here: no Jetson.
    Nvmm,
}

impl SourceSettings {
    /// Live cameras keep only the latest frame; recordings (`file://`) are read no faster than
    /// they are analysed, so every sampled frame is analysed.
    pub fn drop_policy(&self) -> super::DropPolicy {
        if self
            .url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("file://"))
        {
            super::DropPolicy::Block
        } else {
            super::DropPolicy::LatestWins
        }
    }
}

impl From<&CameraConfig> for SourceSettings {
    fn from(c: &CameraConfig) -> Self {
        Self {
            name: c.name.clone(),
            url: c.url.clone(),
            fps: c.fps,
            stall_timeout: c.stall_timeout.0,
            rtsp_latency: c.rtsp_latency.0,
            rtsp_transport: c.rtsp_transport,
            reconnect: c.reconnect.clone(),
            on_end: c.on_end,
            cuda: None,
        }
    }
}

#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    cv: Condvar,
    bus: Mutex<Option<gst::Bus>>,
}

impl StopSignal {
    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
        if let Some(bus) = self.bus.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = bus.post(gst::message::Application::new(gst::Structure::new_empty(
                "vigil-stop",
            )));
        }
    }
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Sleeps up to `d`; returns true if stopped meanwhile.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.stopped.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, d, |s| !*s)
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

/// A running camera source. Dropping it stops the pipeline and joins the thread.
pub struct CameraHandle {
    pub name: String,
    pub stats: Arc<CameraStats>,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl CameraHandle {
    /// Starts the camera's control thread; frames go to `queue` slot `slot`.
    pub fn spawn(
        settings: SourceSettings,
        slot: usize,
        queue: Arc<FrameQueue>,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(CameraStats::new());
        let stop = Arc::new(StopSignal::default());
        let name = settings.name.clone();
        let thread = {
            let (stats, stop) = (stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("cam-{}", settings.name))
                .spawn(move || run_camera(settings, slot, queue, stats, stop))?
        };
        Ok(Self {
            name,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the camera to stop without waiting.
    pub fn request_stop(&self) {
        self.stop.stop();
    }
}

impl Drop for CameraHandle {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Outcome {
    Stopped,
    Ended,
    Failed(CameraError),
}

fn run_camera(
    s: SourceSettings,
    slot: usize,
    queue: Arc<FrameQueue>,
    stats: Arc<CameraStats>,
    stop: Arc<StopSignal>,
) {
    let mut backoff = Backoff::new(s.reconnect.clone());
    let safe_url = redact(&s.url);
    loop {
        if stop.is_stopped() {
            break;
        }
        stats.session.fetch_add(1, Ordering::Relaxed);
        // Frames carry the process-wide pipeline number, so a rebuilt camera's frames are never
        // mistaken for its previous pipeline's (stream time stays monotonic).
        let session = PIPELINES.fetch_add(1, Ordering::Relaxed) + 1;
        stats.pipeline_id.store(session, Ordering::Relaxed);
        stats.set(|st, at| {
            st.state = CameraState::Connecting;
            *at = None;
        });
        tracing::info!(camera = %s.name, url = %safe_url, session, "connecting");
        let (outcome, got_frames) =
            match build_pipeline(&s, slot, session, queue.clone(), stats.clone()) {
                Ok(pipeline) => {
                    queue.set_flushing(slot, false);
                    let r = watch(&s, &pipeline, &stats, &stop);
                    if matches!(r.0, Outcome::Ended) {
                        // A recording ended: its last frames are still queued (up to the slot's
                        // depth); let the worker take them before the slot is flushed.
                        let deadline = Instant::now() + s.stall_timeout;
                        while !stop.is_stopped()
                            && Instant::now() < deadline
                            && !queue.wait_drained(slot, Duration::from_millis(100))
                        {
                        }
                    }
                    // Release a streaming thread waiting on a full slot before stopping it.
                    queue.set_flushing(slot, true);
                    let _ = pipeline.set_state(gst::State::Null);
                    *stop.bus.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    r
                }
                Err(e) => (Outcome::Failed(e.into()), false),
            };
        if got_frames {
            backoff.succeeded();
        }
        match outcome {
            Outcome::Stopped => break,
            Outcome::Ended if s.on_end == OnEnd::Stop => {
                tracing::info!(camera = %s.name, "source ended; camera stopped (on_end = \"stop\")");
                stats.set(|st, at| {
                    st.state = CameraState::Ended;
                    *at = None;
                });
                return;
            }
            Outcome::Ended | Outcome::Failed(_) => {
                let failed = !matches!(outcome, Outcome::Ended);
                let reason = match outcome {
                    Outcome::Failed(e) => redact(&chain(&e)),
                    _ => "source ended the stream".to_string(),
                };
                let retry = backoff.failed(fastrand::f64() * 2.0 - 1.0);
                let (state, wait) = match retry {
                    Retry::After(d) => (CameraState::BackingOff, d),
                    Retry::CircuitOpen(d) => (CameraState::CircuitOpen, d),
                };
                tracing::warn!(
                    camera = %s.name, reason = %reason, failures = backoff.failures(),
                    "camera {}: retrying in {:.1}s", if state == CameraState::CircuitOpen { "circuit open" } else { "down" },
                    wait.as_secs_f64()
                );
                stats.set(|st, at| {
                    st.state = state;
                    st.last_error = Some(reason);
                    st.consecutive_failures = backoff.failures();
                    *at = Some(Instant::now() + wait);
                });
                if wait_to_retry(&s, &stats, &stop, wait, failed) {
                    break;
                }
                stats.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    stats.set(|st, at| {
        st.state = CameraState::Stopped;
        *at = None;
    });
}

/// How often a camera that does not answer is probed (a probe itself takes up to
/// [`reach::PROBE_TIMEOUT`]).
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Sleeps out the back-off `wait` after a failure; true if stopped meanwhile. An RTSP camera that
/// does not answer on its TCP port when it failed is waited for instead, and retried as soon as it
/// answers (see [`reach`]): the link's return, not the back-off, decides when. One that answers
/// keeps the ordinary back-off.
fn wait_to_retry(
    s: &SourceSettings,
    stats: &CameraStats,
    stop: &StopSignal,
    wait: Duration,
    failed: bool,
) -> bool {
    let Some(endpoint) = failed.then(|| reach::rtsp_endpoint(&s.url)).flatten() else {
        return stop.sleep(wait);
    };
    let mut prober = reach::Prober::new(endpoint);
    if prober.probe_now() {
        return stop.sleep(wait);
    }
    tracing::info!(
        camera = %s.name, target = %prober.target(),
        "camera does not answer; reconnecting as soon as it does"
    );
    stats.set(|st, at| {
        if let Some(e) = &st.last_error {
            st.last_error = Some(format!("{e}; {} does not answer", prober.target()));
        }
        *at = None;
    });
    let since = Instant::now();
    loop {
        if stop.sleep(PROBE_EVERY) {
            return true;
        }
        match prober.poll() {
            Some(true) => {
                tracing::info!(
                    camera = %s.name, target = %prober.target(),
                    "camera answers again after {:.1}s; reconnecting now", since.elapsed().as_secs_f64()
                );
                return false;
            }
            // No answer: the next probe starts at once.
            Some(false) => _ = prober.poll(),
            None => {}
        }
    }
}

/// Waits on the bus until an error, the end of stream, a stop request or the frame deadline.
/// Returns the outcome and whether any frame arrived.
fn watch(
    s: &SourceSettings,
    pipeline: &gst::Pipeline,
    stats: &CameraStats,
    stop: &StopSignal,
) -> (Outcome, bool) {
    let Some(bus) = pipeline.bus() else {
        return (Outcome::Failed(CameraError::NoBus), false);
    };
    *stop.bus.lock().unwrap_or_else(|e| e.into_inner()) = Some(bus.clone());
    if stop.is_stopped() {
        return (Outcome::Stopped, false);
    }
    if let Err(e) = pipeline.set_state(gst::State::Playing) {
        let why = drain_error(&bus).map_or(StartError::State(e), StartError::Posted);
        return (Outcome::Failed(CameraError::Start(why)), false);
    }
    let started = Instant::now();
    let mut live = false;
    loop {
        let last = if live { stats.last_frame() } else { None };
        let due = last.unwrap_or(started) + s.stall_timeout;
        let now = Instant::now();
        if now >= due {
            let stalled = CameraError::Stalled {
                live,
                timeout: s.stall_timeout,
            };
            return (Outcome::Failed(stalled), live);
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_nseconds((due - now).as_nanos() as u64),
            &[
                gst::MessageType::Error,
                gst::MessageType::Eos,
                gst::MessageType::Application,
            ],
        ) else {
            continue;
        };
        match msg.view() {
            gst::MessageView::Error(e) => {
                let failed = CameraError::Element {
                    element: e
                        .src()
                        .map(|s| s.path_string().to_string())
                        .unwrap_or_default(),
                    error: e.error(),
                    debug: e.debug().map(|d| d.to_string()),
                };
                return (Outcome::Failed(failed), live);
            }
            gst::MessageView::Eos(_) => return (Outcome::Ended, live),
            gst::MessageView::Application(a) => match a.structure().map(|st| st.name().as_str()) {
                Some("vigil-stop") => return (Outcome::Stopped, live),
                Some("vigil-live") if !live => {
                    live = true;
                    stats.set(|st, at| {
                        st.state = CameraState::Live;
                        st.consecutive_failures = 0;
                        *at = None;
                    });
                    tracing::info!(camera = %s.name, "live");
                }
                _ => {}
            },
            _ => {}
        }
    }
}

fn drain_error(bus: &gst::Bus) -> Option<gst::glib::Error> {
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_mseconds(100),
        &[gst::MessageType::Error],
    )?;
    match msg.view() {
        gst::MessageView::Error(e) => Some(e.error()),
        _ => None,
    }
}

/// Picks frames at the analysis rate from the source's timestamps (fractional rates allowed).
struct RateSampler {
    period: Duration,
    next_due: Option<Duration>,
}

impl RateSampler {
    fn new(fps: f32) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / f64::from(fps.max(0.001))),
            next_due: None,
        }
    }
    fn take(&mut self, pts: Duration) -> bool {
        let slack = self.period / 10;
        match self.next_due {
            Some(due) if pts + slack < due => false,
            Some(due) if pts < due + self.period => {
                self.next_due = Some(due + self.period);
                true
            }
            _ => {
                self.next_due = Some(pts + self.period);
                true
            }
        }
    }
}

fn make(factory: &'static str) -> Result<gst::Element, PipelineError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| PipelineError::Missing { factory })
}

/// The elements that turn an RTP stream of `encoding` (RTSP's `encoding-name`) into raw video
/// for `next`: depayloader, parser and the decoder the start-up probe chose for H.264/H.265,
/// `decodebin` for any other encoding. Added to `pipeline`, linked to `next` and playing; they
/// are returned in order (the RTP pad is linked to the first).
fn rtp_decode_chain(
    pipeline: &gst::Pipeline,
    encoding: &str,
    next: &gst::Element,
) -> Result<Vec<gst::Element>, PipelineError> {
    let codec = match encoding.to_ascii_uppercase().as_str() {
        "H264" => Some(("rtph264depay", "h264parse", "h264")),
        "H265" => Some(("rtph265depay", "h265parse", "h265")),
        _ => None,
    };
    let chain = match codec.and_then(|(d, p, c)| Some((d, p, super::probe::chosen(c)?))) {
        Some((depay, parse, decoder)) => vec![make(depay)?, make(parse)?, make(decoder)?],
        None => vec![make("decodebin")?],
    };
    pipeline.add_many(&chain).map_err(PipelineError::Assemble)?;
    if chain.len() > 1 {
        gst::Element::link_many(chain.iter().chain([next])).map_err(PipelineError::Link)?;
    } else {
        // decodebin's raw video pad comes once it has found a decoder.
        let next = next.downgrade();
        chain[0].connect_pad_added(move |_, pad| {
            if let Some(sinkpad) = next.upgrade().and_then(|n| n.static_pad("sink")) {
                link_raw_video(pad, &sinkpad);
            }
        });
    }
    for el in &chain {
        el.sync_state_with_parent()
            .map_err(|_| PipelineError::State)?;
    }
    Ok(chain)
}

/// The caps' media type (`video/x-raw`, `application/x-rtp`, …) of a new pad.
fn pad_media(pad: &gst::Pad) -> Option<String> {
    let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
    caps.structure(0).map(|st| st.name().to_string())
}

/// Links a decoded video pad to `sinkpad` if that is still free; other pads are left alone.
fn link_raw_video(pad: &gst::Pad, sinkpad: &gst::Pad) {
    let video = pad_media(pad).is_some_and(|m| m.starts_with("video/"));
    if video
        && !sinkpad.is_linked()
        && let Err(e) = pad.link(sinkpad)
    {
        tracing::warn!("cannot link decoded video pad: {e:?}");
    }
}

fn build_pipeline(
    s: &SourceSettings,
    slot: usize,
    session: u64,
    queue: Arc<FrameQueue>,
    stats: Arc<CameraStats>,
) -> Result<gst::Pipeline, PipelineError> {
    let pipeline = gst::Pipeline::with_name(&format!("cam-{}-{session}", s.name));
    // RTSP cameras: `rtspsrc` and an explicit depayloader → parser → decoder chain per codec
    // (H.264/H.265; `decodebin` for anything else), so that the source's own errors reach the
    // camera's status (behind `uridecodebin`, a refused transport read "missing a plug-in") and
    // only the first video stream is set up at all. Other URLs: `uridecodebin`.
    let rtsp = reach::rtsp_endpoint(&s.url).is_some();
    let src = if rtsp {
        let src = make("rtspsrc")?;
        src.set_property("location", &s.url);
        src.set_property("latency", s.rtsp_latency.as_millis() as u32);
        src.set_property_from_str("protocols", s.rtsp_transport.gst_protocols());
        // The first video stream, by its index: asked again with the same index when rtspsrc
        // sets its streams up anew (its fallback from UDP to TCP).
        let chosen = std::sync::atomic::AtomicI64::new(-1);
        src.connect("select-stream", false, move |args| {
            let num = args[1].get::<u32>().map_or(-2, i64::from);
            let video = args[2].get::<gst::Caps>().ok().is_some_and(|caps| {
                caps.structure(0)
                    .and_then(|st| st.get::<&str>("media").ok())
                    .is_some_and(|m| m.eq_ignore_ascii_case("video"))
            });
            let take = video
                && match chosen.compare_exchange(-1, num, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => true,
                    Err(first) => first == num,
                };
            Some(take.to_value())
        });
        src
    } else {
        let src = make("uridecodebin")?;
        src.set_property("uri", &s.url);
        src
    };
    {
        let stats = stats.clone();
        let gpu_decoder = s.cuda.is_some();
        pipeline.connect_deep_element_added(move |_, _, el| {
            if let Some(f) = el.factory()
                && f.metadata(gst::ELEMENT_METADATA_KLASS)
                    .is_some_and(|k| k.contains("Decoder/Video") || k.contains("Decoder/Image"))
            {
                let name = f.name().to_string();
                stats.set(|st, _| st.decoder = Some(name));
                // On the GPU path the decoder's streaming thread makes CUDA calls: let it go on
                // while a GPU worker captures a CUDA graph (from its first buffer on).
                if gpu_decoder && let Some(pad) = el.static_pad("sink") {
                    pad.add_probe(gst::PadProbeType::BUFFER, |_, _| {
                        crate::gpu::relax_capture_mode();
                        gst::PadProbeReturn::Ok
                    });
                }
            }
        });
    }
    let sink = gst_app::AppSink::builder()
        .sync(false)
        .max_buffers(2)
        .drop(true)
        .build();
    // CPU path: any decoder, converted to I420/NV12 in system memory. GPU path: the decoder's
    // NV12 in CUDA memory as it is (no converter: a decoder that cannot give CUDA memory fails
    // to link, and the camera reports it), in the shared CUDA context; with Jetson's
    // nvv4l2decoder chosen, its NV12 in NVMM memory instead (`gpu::jetson_nvmm`, untested here).
    let head = if let Some(frames) = &s.cuda {
        let memory = match frames {
            GpuFrames::Cuda(ctx) => {
                pipeline.set_context(ctx);
                if super::probe::nvv4l2_chosen() {
                    "memory:NVMM"
                } else {
                    "memory:CUDAMemory"
                }
            }
            GpuFrames::Nvmm => "memory:NVMM",
        };
        sink.set_caps(Some(
            &gst::Caps::builder("video/x-raw")
                .features([memory])
                .field("format", "NV12")
                .build(),
        ));
        pipeline
            .add_many([&src, sink.upcast_ref()])
            .map_err(PipelineError::Assemble)?;
        sink.clone().upcast::<gst::Element>()
    } else {
        let convert = make("videoconvert")?;
        sink.set_caps(Some(
            &gst::Caps::builder("video/x-raw")
                .field("format", gst::List::new(["I420", "NV12"]))
                .build(),
        ));
        pipeline
            .add_many([&src, &convert, sink.upcast_ref()])
            .map_err(PipelineError::Assemble)?;
        convert.link(&sink).map_err(PipelineError::Link)?;
        convert
    };
    let convert_weak = head.downgrade();
    let pipeline_weak = pipeline.downgrade();
    // The elements built for the RTSP source's current stream. rtspsrc sets its streams up again
    // when it falls back from UDP to TCP (no UDP packet within 5 s): its old pad goes, a new
    // one comes, and the old chain must make way for the new one.
    let rtp_chain: Arc<Mutex<Vec<gst::Element>>> = Arc::default();
    src.connect_pad_added(move |_, pad| {
        let (Some(convert), Some(pipeline)) = (convert_weak.upgrade(), pipeline_weak.upgrade())
        else {
            return;
        };
        let Some(sinkpad) = convert.static_pad("sink") else {
            return;
        };
        if pad_media(pad).as_deref() != Some("application/x-rtp") {
            // uridecodebin's decoded pads.
            link_raw_video(pad, &sinkpad);
            return;
        }
        // rtspsrc's stream (select-stream let only a video one through); a stream set up anew
        // replaces the chain of the one before.
        let old = std::mem::take(&mut *rtp_chain.lock().unwrap_or_else(|p| p.into_inner()));
        for el in old {
            let _ = el.set_state(gst::State::Null);
            let _ = pipeline.remove(&el);
        }
        if sinkpad.is_linked() {
            return;
        }
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let encoding = caps
            .structure(0)
            .and_then(|st| st.get::<&str>("encoding-name").ok())
            .unwrap_or("")
            .to_string();
        let linked = rtp_decode_chain(&pipeline, &encoding, &convert)
            .and_then(|elements| {
                let into = elements
                    .first()
                    .and_then(|first| first.static_pad("sink"))
                    .ok_or(PipelineError::State)?;
                *rtp_chain.lock().unwrap_or_else(|p| p.into_inner()) = elements;
                pad.link(&into)
                    .map(|_| ())
                    .map_err(|e| PipelineError::PadLink(format!("{e:?}")))
            })
            .map_err(|e| format!("RTP {encoding}: {}", chain(&e)));
        if let Err(e) = linked {
            // Nothing reaches the sink: the camera stalls and is rebuilt (stall_timeout), and
            // the reason is in the log.
            tracing::warn!("cannot link the camera's video stream: {e}");
        }
    });

    let gpu = s.cuda.is_some();
    let mut sampler = RateSampler::new(s.fps);
    let mut first = true;
    let mut info_cache: Option<(gst::Caps, gst_video::VideoInfo, CapsMemory)> = None;
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if gpu {
                    // This streaming thread is the decoder's: let it keep working while a
                    // GPU worker captures a CUDA graph.
                    crate::gpu::relax_capture_mode();
                }
                stats.frames_in.fetch_add(1, Ordering::Relaxed);
                stats.touch();
                if first {
                    first = false;
                    // Tells the control thread the camera is live (it sleeps on the bus).
                    let _ = sink.post_message(gst::message::Application::new(
                        gst::Structure::new_empty("vigil-live"),
                    ));
                }
                let Some(buffer) = sample.buffer_owned() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let pts = buffer
                    .pts()
                    .map(|t| Duration::from_nanos(t.nseconds()))
                    .unwrap_or_default();
                if !sampler.take(pts) {
                    return Ok(gst::FlowSuccess::Ok);
                }
                let Some(caps) = sample.caps() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if info_cache
                    .as_ref()
                    .is_none_or(|(c, _, _)| c.as_ptr() != caps.as_ptr())
                {
                    match gst_video::VideoInfo::from_caps(caps) {
                        Ok(info) => {
                            info_cache = Some((caps.to_owned(), info, CapsMemory::of(caps)));
                        }
                        Err(_) => return Ok(gst::FlowSuccess::Ok),
                    }
                }
                let Some((_, info, memory)) = info_cache.as_ref() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                if let Some(frame) = FrameRef::from_buffer(slot, session, buffer, info, *memory) {
                    stats.frames_sampled.fetch_add(1, Ordering::Relaxed);
                    queue.push(frame);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(pipeline)
}

#[cfg(test)]
mod tests {
    use super::{CameraError, PipelineError, RateSampler, StartError, chain};
    use gstreamer as gst;
    use std::time::Duration;

    #[test]
    fn failures_read_as_the_camera_status_shows_them() {
        let stalled = |live| CameraError::Stalled {
            live,
            timeout: Duration::from_millis(2500),
        };
        assert_eq!(
            chain(&stalled(false)),
            "no first frame for 2.5s (stall_timeout)"
        );
        assert_eq!(chain(&stalled(true)), "no frame for 2.5s (stall_timeout)");
        let missing = CameraError::from(PipelineError::Missing {
            factory: "nvh264dec",
        });
        assert_eq!(
            chain(&missing),
            "GStreamer element nvh264dec is missing (install its plugin package)"
        );
        let refused = || gst::glib::Error::new(gst::ResourceError::NotFound, "no such stream");
        let start = CameraError::Start(StartError::Posted(refused()));
        assert_eq!(chain(&start), "cannot start pipeline: no such stream");
        let posted = |debug: Option<&str>| CameraError::Element {
            element: "/GstPipeline:cam-a-1/GstRTSPSrc:source".into(),
            error: refused(),
            debug: debug.map(str::to_string),
        };
        assert_eq!(
            chain(&posted(Some("rtspsrc.c(1): 404"))),
            "/GstPipeline:cam-a-1/GstRTSPSrc:source: no such stream (rtspsrc.c(1): 404)"
        );
        assert_eq!(
            chain(&posted(None)),
            "/GstPipeline:cam-a-1/GstRTSPSrc:source: no such stream"
        );
    }

    #[test]
    fn sampler_halves_a_ten_fps_stream_for_five_fps() {
        let mut s = RateSampler::new(5.0);
        let taken: Vec<u64> = (0..10u64)
            .filter(|i| s.take(Duration::from_millis(i * 100)))
            .collect();
        assert_eq!(taken, vec![0, 2, 4, 6, 8]);
    }

    #[test]
    fn sampler_tolerates_jitter_and_restarts_after_a_jump() {
        let mut s = RateSampler::new(5.0);
        let pts = [0, 99, 199, 301, 398, 5000, 5100, 5200];
        let taken: Vec<u64> = pts
            .into_iter()
            .filter(|&p| s.take(Duration::from_millis(p)))
            .collect();
        assert_eq!(taken, vec![0, 199, 398, 5000, 5200]);
    }
}
