//! `vigil bench`: the CPU analysis path measured against a faithful Python baseline
//! (`benches/baseline/baseline.py`: OpenCV capture → resize → onnxruntime → NMS), same model,
//! same clip, same thread count, in one invocation.
//!
//! Vigil runs its production path (the camera pipeline on a `file://` recording, the analysis
//! worker, tracker and rules) in this process; the baseline runs as a child. CPU time comes from
//! `getrusage` (this process, then its children). The baseline's detections go through Vigil's
//! own tracker and rules, so the two event lists can be compared: "same events found".

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use vigil_control::plan::Plan;
use vigil_core::analytics::rules::{RuleEngine, RuleHits};
use vigil_core::analytics::tracker::{Tracker, TrackerConfig};
use vigil_core::analytics::{BBox, Detection};
use vigil_core::config::{
    CameraConfig, Config, DeviceConfig, ModelConfig, MotionGateMode, MqttConfig,
};
use vigil_core::events::Event;
use vigil_dataplane::ffi::rusage::{Who, cpu_seconds};
use vigil_dataplane::media::CameraState;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// H.264 clip (the first 30 s of vtest.avi by default).
    #[arg(long, default_value = ".cache/media/vtest-30s.mp4")]
    pub clip: PathBuf,
    /// The model: the baseline's, and Vigil's on the GPU.
    #[arg(long, default_value = "models/nanodet.onnx")]
    pub model: PathBuf,
    /// Vigil's model on the CPU, the config's `cpu_path` (what the shipped configs run: NanoDet
    /// quantized to int8); `none`: `--model`, as the baseline.
    #[arg(long, default_value = "models/nanodet-int8.onnx")]
    pub cpu_model: String,
    /// Inference threads, for both.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Vigil's analysis rate (frames per second of video).
    #[arg(long, default_value_t = 5.0)]
    pub fps: f32,
    /// Python with cv2 and onnxruntime for the baseline; none = skip the baseline.
    #[arg(long)]
    pub python: Option<PathBuf>,
    #[arg(long, default_value = "benches/baseline/baseline.py")]
    pub baseline: PathBuf,
    /// Rules (TOML with [[cameras.lines]] / [[cameras.zones]] tables) to count events with.
    #[arg(long, default_value = "benches/rules.toml")]
    pub rules: PathBuf,
    /// The GPU bench instead: N streams of `--gpu-clip` through NVDEC, the GPU path and the
    /// bare decoder (an NVIDIA GPU is required).
    #[arg(long)]
    pub gpu: bool,
    /// The pictures bench instead: CPU cost of event snapshots and live pictures (scale, draw,
    /// JPEG) on frames of `--clip` and `--gpu-clip`, against one inference (benches/RESULTS.md).
    #[arg(long)]
    pub pictures: bool,
    /// GPU bench: a 1080p30 H.264 clip.
    #[arg(long, default_value = ".cache/media/vtest-1080p30.mp4")]
    pub gpu_clip: PathBuf,
    /// GPU bench: the numbers of streams, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32,64,128")]
    pub streams: Vec<usize>,
    /// GPU bench: inference workers (each its own ONNX Runtime session and CUDA stream); the
    /// streams are spread over them.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// GPU bench: run inference with CUDA graphs `on`, `off`, or `both` (each N twice).
    #[arg(long, default_value = "on")]
    pub graph: String,
    /// GPU bench: seconds of warm-up and of measurement per run.
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// GPU bench: detection with and without the live view (every camera watched at 5 fps,
    /// 640 wide, pictures drawn on the GPU and encoded by nvJPEG) instead of the decoder table.
    #[arg(long)]
    pub live_view: bool,
    /// GPU bench: a TOML line added to every model's table, e.g. `input_size = "native"` or
    /// `tiles = { grid = [2, 2] }` (the cost of a detection setting). Repeatable.
    #[arg(long = "model-line")]
    pub model_line: Vec<String>,
    /// Also write the results as JSON here (the GPU bench: its rows).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct RulesFile {
    cameras: Vec<RulesOnly>,
}

#[derive(serde::Deserialize)]
struct RulesOnly {
    #[serde(default)]
    zones: Vec<vigil_core::config::ZoneConfig>,
    #[serde(default)]
    lines: Vec<vigil_core::config::LineConfig>,
}

/// A comparable summary of events: count per (rule, kind, direction).
fn tally<'a>(events: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (rule, kind, dir) in events {
        *m.entry(format!(
            "{rule} {kind}{}{dir}",
            if dir.is_empty() { "" } else { " " }
        ))
        .or_insert(0) += 1;
    }
    m
}

#[derive(serde::Serialize)]
struct Measured {
    /// CPU-seconds of everything, start-up (model load, imports) included.
    cpu_s: f64,
    /// CPU-seconds once the model is loaded: the steady state of a camera.
    steady_cpu_s: f64,
    wall_s: f64,
    frames: u64,
    /// Frames the motion gate kept from inference.
    skipped: u64,
    events: BTreeMap<String, usize>,
}

fn run_vigil(
    a: &BenchArgs,
    rules: &RulesOnly,
    min_score: f32,
    gate: MotionGateMode,
) -> Result<Measured> {
    let clip = std::fs::canonicalize(&a.clip).with_context(|| a.clip.display().to_string())?;
    let model = std::fs::canonicalize(&a.model).with_context(|| a.model.display().to_string())?;
    let camera: CameraConfig = toml::from_str(&format!(
        "name = \"bench\"\nurl = \"file://{}\"\nmodel = \"m\"\nfps = {}\nmin_score = {min_score}\non_end = \"stop\"",
        clip.display(),
        a.fps
    ))?;
    let camera = CameraConfig {
        zones: rules.zones.clone(),
        lines: rules.lines.clone(),
        motion: vigil_core::config::CameraMotion {
            gate,
            ..camera.motion
        },
        ..camera
    };
    let model_cfg: ModelConfig = toml::from_str(&format!(
        "path = \"{}\"\nkind = \"nanodet\"\nbackend = \"cpu\"\nthreads = {}",
        model.display(),
        a.threads
    ))?;
    let model_cfg = ModelConfig {
        cpu_path: crate::eval::cpu_model(&a.cpu_model)?,
        ..model_cfg
    };
    let cfg = Config {
        device: DeviceConfig {
            id: "bench".into(),
            site: None,
            tags: Vec::new(),
        },
        mqtt: MqttConfig::default(),
        storage: Default::default(),
        http: Default::default(),
        snapshots: Default::default(),
        live: Default::default(),
        restream: Default::default(),
        homeassistant: Default::default(),
        models: [("m".to_string(), model_cfg)].into_iter().collect(),
        cameras: vec![camera],
        ota: Default::default(),
    };
    let run = run_to_end(&cfg)?;
    let (pre_ms, infer_ms) = run.stage_means_ms;
    println!(
        "           per analysed frame: preprocess {pre_ms:.2} ms, inference {infer_ms:.2} ms (wall, worker thread)"
    );
    let (cpu_s, steady_cpu_s, wall_s, frames, evs) = (
        run.cpu_s,
        run.steady_cpu_s,
        run.wall_s,
        run.frames,
        run.events,
    );
    let kinds: Vec<(String, String, String)> = evs
        .iter()
        .map(|e| {
            (
                e.rule.clone(),
                format!("{:?}", e.kind),
                e.direction.unwrap_or("").to_string(),
            )
        })
        .collect();
    let events = tally(
        kinds
            .iter()
            .map(|(r, k, d)| (r.as_str(), k.as_str(), d.as_str())),
    );
    Ok(Measured {
        cpu_s,
        steady_cpu_s,
        wall_s,
        frames,
        skipped: run.skipped,
        events,
    })
}

/// A run of a config's plan over recordings (`on_end = "stop"`) to the end.
pub(crate) struct FileRun {
    /// CPU-seconds of this process from before the plan starts / once it has started.
    pub cpu_s: f64,
    pub steady_cpu_s: f64,
    pub wall_s: f64,
    /// Frames analysed, and those the motion gate kept from inference.
    pub frames: u64,
    pub skipped: u64,
    pub stage_means_ms: (f64, f64),
    /// Every event, in the order emitted.
    pub events: Vec<Event>,
}

/// Starts the production plan of `cfg` (one `file://` camera), waits for the recording's end
/// and the worker's last frame, stops it and returns its events: what `vigil bench` measures
/// and `vigil eval` scores.
pub(crate) fn run_to_end(cfg: &Config) -> Result<FileRun> {
    // Ample for a clip's events; should it fill, events would be dropped and the run refused.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(1 << 16);
    // Warm-up outside the measurement: load GStreamer once.
    vigil_dataplane::media::init().map_err(anyhow::Error::msg)?;
    let cpu0 = cpu_seconds(Who::Process);
    let t0 = Instant::now();
    let plan = Plan::start(cfg, tx, &Default::default())?;
    let cpu_started = cpu_seconds(Who::Process);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let (state, pending) = plan.bench_progress();
        if state == CameraState::Ended && pending == 0 {
            break;
        }
        if !matches!(
            state,
            CameraState::Connecting | CameraState::Live | CameraState::Ended
        ) {
            bail!("camera failed: {state:?}");
        }
    }
    // The worker may be finishing the last frame.
    let frames = plan.wait_idle(Duration::from_secs(5));
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds(Who::Process);
    let stage_means_ms = plan.stage_means_ms();
    let skipped = plan.motion_skipped();
    plan.stop();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    if events.len() >= 1 << 16 {
        bail!("more than {} events: the run's channel filled", 1 << 16);
    }
    Ok(FileRun {
        cpu_s: cpu_end - cpu0,
        steady_cpu_s: cpu_end - cpu_started,
        wall_s,
        frames,
        skipped,
        stage_means_ms,
        events,
    })
}

/// The baseline's last line on stdout.
#[derive(serde::Deserialize)]
struct BaselineSummary {
    loop_cpu_s: f64,
    /// The clip's size (the zones' leave margin is measured in its proportions).
    #[serde(default)]
    width: u32,
    #[serde(default)]
    height: u32,
}

#[derive(serde::Deserialize)]
struct BaselineFrame {
    pts_s: f64,
    dets: Vec<[f64; 6]>,
}

fn run_baseline(
    a: &BenchArgs,
    python: &Path,
    rules: &RulesOnly,
    min_score: f32,
) -> Result<Measured> {
    let out =
        std::env::temp_dir().join(format!("vigil-bench-baseline-{}.jsonl", std::process::id()));
    let cpu0 = cpu_seconds(Who::Children);
    let t0 = Instant::now();
    let o = Command::new(python)
        .arg(&a.baseline)
        .arg("--clip")
        .arg(&a.clip)
        .arg("--model")
        .arg(&a.model)
        .args([
            "--threads",
            &a.threads.to_string(),
            "--min-score",
            &(min_score * 0.5).to_string(),
            "--out",
        ])
        .arg(&out)
        .output()
        .context("starting the Python baseline")?;
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(Who::Children) - cpu0;
    if !o.status.success() {
        bail!("baseline failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let summary: BaselineSummary = serde_json::from_slice(&o.stdout).context("baseline summary")?;
    // The baseline's detections through Vigil's tracker and rules (microseconds of work).
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    // As the service sets it (vigil_dataplane::worker).
    let mut tracker = Tracker::new(TrackerConfig {
        low_thresh: (min_score * 0.5).max(0.1),
        ..TrackerConfig::default()
    });
    let mut engine = RuleEngine::new(&rules.zones, &rules.lines, min_score);
    engine.set_frame_size(summary.width, summary.height);
    let mut hits = RuleHits::new();
    let mut all = Vec::new();
    let mut frames = 0;
    for line in text.lines() {
        let f: BaselineFrame = serde_json::from_str(line)?;
        frames += 1;
        let dets: heapless::Vec<Detection, { vigil_core::analytics::MAX_DETECTIONS }> = f
            .dets
            .iter()
            .take(vigil_core::analytics::MAX_DETECTIONS)
            .map(|d| Detection {
                bbox: BBox::new(d[0] as f32, d[1] as f32, d[2] as f32, d[3] as f32),
                score: d[4] as f32,
                class_id: d[5] as u16,
            })
            .collect();
        let out = tracker.update(&dets);
        engine.update(f.pts_s, out.active, out.removed, &mut hits);
        for h in &hits {
            let kind = match h.kind {
                vigil_core::analytics::rules::HitKind::ZoneEnter => "ZoneEnter",
                vigil_core::analytics::rules::HitKind::ZoneLeave => "ZoneLeave",
                vigil_core::analytics::rules::HitKind::ZoneDwell => "ZoneDwell",
                vigil_core::analytics::rules::HitKind::LineCross => "LineCross",
            };
            all.push((
                engine.rule_names()[h.rule].clone(),
                kind,
                h.crossing.map(|c| c.as_str()).unwrap_or(""),
            ));
        }
    }
    let events = tally(all.iter().map(|(r, k, d)| (r.as_str(), *k, *d)));
    Ok(Measured {
        cpu_s,
        steady_cpu_s: summary.loop_cpu_s,
        wall_s,
        frames,
        skipped: 0,
        events,
    })
}

fn report(who: &str, rate: &str, m: &Measured, clip_s: f64) {
    println!(
        "{who} : {:>4} frames analysed {rate}, wall {:>6.2} s, CPU {:>6.2} s ({:>6.2} s steady), {:>5.1} ms CPU/analysed frame, {:.2} camera-s per CPU-s steady",
        m.frames,
        m.wall_s,
        m.cpu_s,
        m.steady_cpu_s,
        m.steady_cpu_s * 1000.0 / m.frames.max(1) as f64,
        clip_s / m.steady_cpu_s
    );
    println!("           events {:?}", m.events);
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.pictures {
        return crate::bench_pictures::run(&[a.clip, a.gpu_clip], &a.model, &a.rules, 40);
    }
    if a.gpu {
        let rows = crate::bench_gpu::run(
            &a.gpu_clip,
            &a.model,
            &a.streams,
            a.workers,
            match a.graph.as_str() {
                "off" => &[false],
                "both" => &[false, true],
                _ => &[true],
            },
            a.warmup,
            a.seconds,
            a.live_view,
            &a.model_line.join("\n"),
        )?;
        if let Some(p) = &a.json {
            std::fs::write(p, serde_json::to_string_pretty(&rows)?)?;
        }
        return Ok(());
    }
    let rules_text =
        std::fs::read_to_string(&a.rules).with_context(|| a.rules.display().to_string())?;
    let rf: RulesFile =
        toml::from_str(&rules_text).with_context(|| a.rules.display().to_string())?;
    let rules = rf
        .cameras
        .into_iter()
        .next()
        .context("rules file has no [[cameras]] table")?;
    let min_score = 0.35;
    let clip_s = vigil_dataplane::media::still::duration_s(&a.clip)?;
    println!(
        "clip {} ({clip_s:.1} s), model {} (Vigil on the CPU: {}), {} inference threads",
        a.clip.display(),
        a.model.display(),
        a.cpu_model,
        a.threads
    );
    let mut json = serde_json::json!({
        "clip": a.clip,
        "clip_s": clip_s,
        "fps": a.fps,
        "model": a.model,
        "cpu_model": a.cpu_model,
    });
    // The service's default (the motion gate on, as on every CPU camera), then without it.
    let v = run_vigil(&a, &rules, min_score, MotionGateMode::Auto)?;
    report("vigil   ", &format!("at {} fps", a.fps), &v, clip_s);
    println!(
        "           of which skipped by the motion gate: {} frames",
        v.skipped
    );
    let off = run_vigil(&a, &rules, min_score, MotionGateMode::Off)?;
    report("no gate ", &format!("at {} fps", a.fps), &off, clip_s);
    println!(
        "gate     : {:.2}x camera-seconds per CPU-second with the motion gate than without; same events: {}",
        off.steady_cpu_s / v.steady_cpu_s,
        if v.events == off.events { "yes" } else { "NO" }
    );
    json["vigil"] = serde_json::to_value(&v)?;
    json["no_gate"] = serde_json::to_value(&off)?;
    let write = |json: &serde_json::Value| -> Result<()> {
        if let Some(p) = &a.json {
            std::fs::write(p, serde_json::to_string_pretty(json)?)
                .with_context(|| p.display().to_string())?;
        }
        Ok(())
    };
    let Some(py) = &a.python else {
        println!("baseline : skipped (no --python)");
        return write(&json);
    };
    let b = run_baseline(&a, py, &rules, min_score)?;
    json["baseline"] = serde_json::to_value(&b)?;
    report("baseline", "at every frame", &b, clip_s);
    for (who, m) in [("vigil", &v), ("no gate", &off)] {
        println!(
            "ratio    : {who}: {:.2}x camera-seconds analysed per CPU-second in steady state ({:.2}x with start-up); same events found: {}",
            b.steady_cpu_s / m.steady_cpu_s,
            b.cpu_s / m.cpu_s,
            if m.events == b.events { "yes" } else { "NO" }
        );
    }
    write(&json)
}
