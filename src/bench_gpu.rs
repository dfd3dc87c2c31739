//! `vigil bench --gpu`: N streams of a 1080p30 H.264 clip on the GPU path, against the bare
//! decoder (`nvh264dec ! fakesink`) on the same N streams, in one invocation.
//!
//! Per N: frames/s with detection on every frame (Vigil's production path: camera pipelines,
//! NVDEC into CUDA memory, the analysis workers, tracker), frames/s of the bare decoder (the
//! ceiling), frames/s of Vigil's camera pipelines alone (their frames dropped by a consumer: what
//! the hand-over costs, apart from what inference beside the decoders costs), their ratio, CPU-seconds per frame (getrusage of the whole process), device→host
//! bytes per frame (the GPU path's one counter), p50/p99 frame-to-detection latency and GPU
//! memory in use. Every measurement is a window after a warm-up; streams that reach the end of
//! the clip start again (and the frames they would have decoded meanwhile are lost to the
//! measurement, as they would be to a camera).

use anyhow::{Context, Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vigil_control::plan::Plan;
use vigil_core::config::{CameraConfig, Config, DeviceConfig, ModelConfig, MqttConfig};
use vigil_core::events::Event;
use vigil_dataplane::gpu::detector::COUNTERS;
use vigil_dataplane::worker::LatencyHist;

#[derive(Debug, serde::Serialize)]
pub struct Row {
    pub streams: usize,
    pub cuda_graph: bool,
    pub workers: usize,
    pub fps_detect: f64,
    pub fps_decode_only: f64,
    /// Vigil's camera pipelines (uridecodebin → NVDEC → appsink → the per-camera queue) with a
    /// consumer that drops the frames: the production path without inference.
    pub fps_cameras_only: f64,
    pub ratio: f64,
    pub cpu_us_per_frame_detect: f64,
    pub cpu_us_per_frame_decode_only: f64,
    pub cpu_pct_core_per_30fps_stream: f64,
    pub d2h_bytes_per_frame: f64,
    pub h2d_bytes_per_frame: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub gpu_mem_used_mib: f64,
    /// Wall time of one frame's GPU path on its worker thread (map → detections on the host).
    pub worker_ms_per_frame: f64,
    /// Share of the workers' time spent on frames (1.0 = the workers are the limit).
    pub worker_busy: f64,
    /// Seconds from start until every camera had a frame analysed (not measured).
    pub startup_s: f64,
    /// Live view (`--live-view`): every camera watched by one in-process viewer (the
    /// WebSocket handler's `Viewer`, without the socket) at `[live]`'s defaults (5 fps,
    /// 640 wide): pictures and JPEG bytes received a second, the worker's ms per live picture
    /// (map, scale, draw, nvJPEG, copy back) and the pixel bytes copied back (0 with nvJPEG).
    pub live_view: bool,
    pub live_pictures_per_s: f64,
    pub live_bytes_per_s: f64,
    pub live_ms_per_picture: f64,
    pub pixel_d2h_bytes: u64,
}

fn cpu_s() -> f64 {
    vigil_dataplane::ffi::rusage::cpu_seconds(vigil_dataplane::ffi::rusage::Who::Process)
}

fn gpu_used_mib() -> f64 {
    cudarc::driver::result::mem_get_info()
        .map(|(free, total)| (total - free) as f64 / 1048576.0)
        .unwrap_or(f64::NAN)
}

/// Bare decode of `n` streams: frames/s and CPU µs per frame over the window.
fn decode_only(clip: &Path, n: usize, warmup: f64, window: f64) -> Result<(f64, f64)> {
    let count = Arc::new(AtomicU64::new(0));
    let mut pipes = Vec::new();
    for _ in 0..n {
        let p = vigil_dataplane::ffi::gst_cuda::nvdec_pipeline(
            clip,
            "video/x-raw(memory:CUDAMemory) ! fakesink name=sink sync=false",
        )?;
        let sink = p.by_name("sink").context("sink")?;
        let c = count.clone();
        sink.static_pad("sink").context("sink pad")?.add_probe(
            gst::PadProbeType::BUFFER,
            move |_, _| {
                c.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            },
        );
        p.set_state(gst::State::Playing)?;
        pipes.push(p);
    }
    let run = |secs: f64| -> Result<()> {
        let end = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < end {
            for p in &pipes {
                let bus = p.bus().context("bus")?;
                while let Some(m) = bus.pop() {
                    match m.view() {
                        gst::MessageView::Eos(_) => {
                            p.seek_simple(
                                gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT,
                                gst::ClockTime::ZERO,
                            )?;
                        }
                        gst::MessageView::Error(e) => bail!("decoder pipeline: {}", e.error()),
                        _ => {}
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    };
    run(warmup)?;
    let (f0, c0, t0) = (count.load(Ordering::Relaxed), cpu_s(), Instant::now());
    run(window)?;
    let (f1, c1, dt) = (
        count.load(Ordering::Relaxed),
        cpu_s(),
        t0.elapsed().as_secs_f64(),
    );
    for p in &pipes {
        let _ = p.set_state(gst::State::Null);
    }
    let frames = (f1 - f0).max(1) as f64;
    Ok((frames / dt, (c1 - c0) / frames * 1e6))
}

/// Vigil's camera pipelines on `n` streams, as the GPU path builds them (NVDEC into CUDA
/// memory, the lossless per-camera queue of recordings), with a consumer that takes batches of
/// up to 8 frames and drops them: frames/s over the window.
fn cameras_only(clip: &Path, n: usize, warmup: f64, window: f64) -> Result<f64> {
    let rt = vigil_dataplane::gpu::runtime()?;
    let policies = vec![vigil_dataplane::media::DropPolicy::Block; n];
    let queue = Arc::new(vigil_dataplane::media::FrameQueue::new(&policies));
    let mut cams = Vec::new();
    for i in 0..n {
        let c: CameraConfig = toml::from_str(&camera_toml(clip, i, 0))?;
        let mut s = vigil_dataplane::media::camera::SourceSettings::from(&c);
        s.cuda = Some(rt.frames());
        cams.push(vigil_dataplane::media::CameraHandle::spawn(
            s,
            i,
            queue.clone(),
        )?);
    }
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = {
        let (queue, count, stop) = (queue.clone(), count.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut frames = Vec::with_capacity(8);
            while !stop.load(Ordering::Relaxed) {
                let got = queue.pop_batch(Duration::from_millis(100), 8, &mut frames);
                count.fetch_add(got as u64, Ordering::Relaxed);
                frames.clear();
            }
        })
    };
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let (f0, t0) = (count.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(window));
    let fps = (count.load(Ordering::Relaxed) - f0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    queue.close();
    let _ = consumer.join();
    drop(cams);
    Ok(fps)
}

/// A bench camera: stream `i` of `clip`, analysed by model `m{model}` at 30 fps.
fn camera_toml(clip: &Path, i: usize, model: usize) -> String {
    format!(
        "name = \"s{i}\"\nurl = \"file://{}\"\nmodel = \"m{model}\"\nfps = 30\nmin_score = 0.4\nstall_timeout = \"30s\"\n[reconnect]\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"",
        clip.display()
    )
}

/// The GPU path on `n` streams spread over `workers` inference workers.
#[allow(clippy::too_many_arguments)]
fn detect(
    clip: &Path,
    model: &Path,
    n: usize,
    workers: usize,
    warmup: f64,
    window: f64,
    live_view: bool,
    model_extra: &str,
) -> Result<Row> {
    let mut models = std::collections::BTreeMap::new();
    for w in 0..workers.min(n) {
        let m: ModelConfig = toml::from_str(&format!(
            "path = \"{}\"\nkind = \"nanodet\"\nbackend = \"cuda\"\n{model_extra}",
            model.display()
        ))?;
        models.insert(format!("m{w}"), m);
    }
    let k = models.len();
    let cameras: Vec<CameraConfig> = (0..n)
        .map(|i| toml::from_str(&camera_toml(clip, i, i % k)))
        .collect::<Result<_, _>>()?;
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
        ota: Default::default(),
        models,
        cameras,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Event>(65536);
    let drain = std::thread::spawn(move || while rx.blocking_recv().is_some() {});
    let feeds: vigil_control::plan::LiveFeeds = Default::default();
    let inst = vigil_control::plan::Instruments {
        live: live_view.then(|| (feeds.clone(), Duration::from_millis(200))),
        ..Default::default()
    };
    let plan = Plan::start(&cfg, tx, &inst)?;
    // Start-up (sessions made and CUDA graphs captured per worker, one at a time) is not part
    // of the measurement: the warm-up starts once every camera has had a frame analysed.
    let t_start = Instant::now();
    while plan.cameras_without_frames() > 0 {
        if t_start.elapsed() > Duration::from_secs(120) {
            bail!(
                "{} of {n} cameras had no frame analysed after 120 s",
                plan.cameras_without_frames()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let startup_s = t_start.elapsed().as_secs_f64();
    let watching = watch_all(&feeds)?;
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let snap = |plan: &Plan| {
        let (f, h) = plan.analysed_and_latency();
        (
            f,
            h,
            cpu_s(),
            plan.infer_us_total(),
            COUNTERS.d2h_bytes.load(Ordering::Relaxed),
            COUNTERS.h2d_bytes.load(Ordering::Relaxed),
            Instant::now(),
        )
    };
    let pics = &vigil_dataplane::picture::STATS;
    let psnap = || {
        (
            watching.pictures.load(Ordering::Relaxed),
            watching.bytes.load(Ordering::Relaxed),
            pics.gpu_jpegs.load(Ordering::Relaxed),
            pics.gpu_jpeg_us.load(Ordering::Relaxed),
            pics.gpu_pixel_d2h_bytes.load(Ordering::Relaxed),
        )
    };
    let (f0, h0, c0, i0, d0, u0, t0) = snap(&plan);
    let (lp0, lb0, gj0, gu0, px0) = psnap();
    std::thread::sleep(Duration::from_secs_f64(window));
    let (f1, h1, c1, i1, d1, u1, _) = snap(&plan);
    let (lp1, lb1, gj1, gu1, px1) = psnap();
    let dt = t0.elapsed().as_secs_f64();
    let mem = gpu_used_mib();
    watching.stop();
    plan.stop();
    let _ = drain.join();
    let frames = (f1 - f0).max(1) as f64;
    // Over the window only (the first batch of each worker, which makes its sessions, is not).
    let worker_ms = (i1 - i0) as f64 / frames / 1000.0;
    let hist: Vec<u64> = h1.iter().zip(&h0).map(|(a, b)| a - b).collect();
    let cpu_us = (c1 - c0) / frames * 1e6;
    Ok(Row {
        streams: n,
        cuda_graph: vigil_dataplane::gpu::ort_cuda::CUDA_GRAPH.load(Ordering::Relaxed),
        workers: k,
        fps_detect: frames / dt,
        fps_decode_only: 0.0,
        fps_cameras_only: 0.0,
        ratio: 0.0,
        cpu_us_per_frame_detect: cpu_us,
        cpu_us_per_frame_decode_only: 0.0,
        // µs per frame × 30 frames/s = µs of CPU per second of one stream.
        cpu_pct_core_per_30fps_stream: cpu_us * 30.0 / 1e6 * 100.0,
        d2h_bytes_per_frame: (d1 - d0) as f64 / frames,
        h2d_bytes_per_frame: (u1 - u0) as f64 / frames,
        p50_ms: LatencyHist::quantile_ms(&hist, 0.5),
        p99_ms: LatencyHist::quantile_ms(&hist, 0.99),
        gpu_mem_used_mib: mem,
        worker_ms_per_frame: worker_ms,
        worker_busy: frames / dt * worker_ms / 1000.0 / k as f64,
        startup_s,
        live_view,
        live_pictures_per_s: (lp1 - lp0) as f64 / dt,
        live_bytes_per_s: (lb1 - lb0) as f64 / dt,
        live_ms_per_picture: (gu1 - gu0) as f64 / 1000.0 / (gj1 - gj0).max(1) as f64,
        pixel_d2h_bytes: px1 - px0,
    })
}

/// One in-process viewer per live feed, counting the pictures and bytes it receives.
struct Watching {
    pictures: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watching {
    fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch_all(feeds: &vigil_control::plan::LiveFeeds) -> Result<Watching> {
    let viewers: Vec<_> = feeds
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|f| f.watch())
        .collect();
    let (pictures, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (p, b) = (pictures.clone(), bytes.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for mut v in viewers {
                let (p, b, mut stopped) = (p.clone(), b.clone(), stopped.clone());
                tasks.spawn(async move {
                    loop {
                        tokio::select! {
                            f = v.next() => match f {
                                Some(f) => {
                                    p.fetch_add(1, Ordering::Relaxed);
                                    b.fetch_add(f.jpeg.bytes.len() as u64, Ordering::Relaxed);
                                }
                                None => break,
                            },
                            _ = stopped.changed() => break,
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    });
    Ok(Watching {
        pictures,
        bytes,
        stop,
        thread: Some(thread),
    })
}

/// Runs the table for every N in `streams`; prints it and returns the rows.
#[allow(clippy::too_many_arguments)]
pub fn run(
    clip: &Path,
    model: &Path,
    streams: &[usize],
    workers: usize,
    graphs: &[bool],
    warmup: f64,
    window: f64,
    live_view: bool,
    model_extra: &str,
) -> Result<Vec<Row>> {
    vigil_dataplane::media::init()?;
    let rt = vigil_dataplane::gpu::runtime().context("no GPU")?;
    let clip = std::fs::canonicalize(clip).with_context(|| clip.display().to_string())?;
    let model = std::fs::canonicalize(model).with_context(|| model.display().to_string())?;
    vigil_dataplane::media::probe::choose_decoders(true);
    println!(
        "GPU bench: clip {}, model {}{}, host sync {}, warm-up {warmup} s, window {window} s",
        clip.display(),
        model.display(),
        if model_extra.is_empty() {
            String::new()
        } else {
            format!(" ({})", model_extra.replace('\n', "; "))
        },
        rt.sync
    );
    println!(
        "{:>5} {:>3} {:>5} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>8} {:>6} {:>5} {:>7}",
        "N",
        "K",
        "graph",
        "det fps",
        "dec fps",
        "cam fps",
        "ratio",
        "cpu µs/f",
        "dec µs/f",
        "%core/s",
        "D2H B/f",
        "p50 ms",
        "p99 ms",
        "GPU MiB",
        "wrk ms",
        "busy",
        "start s"
    );
    let mut rows = Vec::new();
    let det =
        |n: usize, live: bool| detect(&clip, &model, n, workers, warmup, window, live, model_extra);
    if live_view {
        for &n in streams {
            for &graph in graphs {
                vigil_dataplane::gpu::ort_cuda::CUDA_GRAPH.store(graph, Ordering::Relaxed);
                let bare = det(n, false)?;
                let live = det(n, true)?;
                let extra_cpu_us_s = live.cpu_us_per_frame_detect * live.fps_detect
                    - bare.cpu_us_per_frame_detect * bare.fps_detect;
                println!(
                    "live view, {n} cameras watched: detection {:.0} fps without, {:.0} with (ratio {:.3}); {:.1} pictures/s received ({:.2} per camera), {:.0} KB/s; CPU {:.0} µs/s more ({:.3} % of a core per watched camera); {:.2} ms per live picture on the worker; pixel bytes copied back {}; p99 {} → {} ms",
                    bare.fps_detect,
                    live.fps_detect,
                    live.fps_detect / bare.fps_detect,
                    live.live_pictures_per_s,
                    live.live_pictures_per_s / n as f64,
                    live.live_bytes_per_s / 1000.0,
                    extra_cpu_us_s,
                    extra_cpu_us_s / 1e6 * 100.0 / n as f64,
                    live.live_ms_per_picture,
                    live.pixel_d2h_bytes,
                    bare.p99_ms.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                    live.p99_ms.map(|v| format!("{v:.1}")).unwrap_or("-".into()),
                );
                rows.push(bare);
                rows.push(live);
            }
        }
        return Ok(rows);
    }
    for &n in streams {
        let (dec_fps, dec_cpu) = decode_only(&clip, n, warmup, window)?;
        let cam_fps = cameras_only(&clip, n, warmup, window)?;
        for &graph in graphs {
            vigil_dataplane::gpu::ort_cuda::CUDA_GRAPH.store(graph, Ordering::Relaxed);
            let r = det(n, false)?;
            rows.push(finish(r, dec_fps, cam_fps, dec_cpu));
        }
    }
    Ok(rows)
}

fn finish(mut r: Row, dec_fps: f64, cam_fps: f64, dec_cpu: f64) -> Row {
    r.fps_decode_only = dec_fps;
    r.fps_cameras_only = cam_fps;
    r.cpu_us_per_frame_decode_only = dec_cpu;
    r.ratio = r.fps_detect / dec_fps;
    let q = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or("-".into());
    println!(
        "{:>5} {:>3} {:>5} {:>9.0} {:>9.0} {:>9.0} {:>6.2} {:>9.0} {:>9.0} {:>8.2} {:>8.0} {:>7} {:>7} {:>8.0} {:>6.2} {:>5.2} {:>7.1}",
        r.streams,
        r.workers,
        if r.cuda_graph { "on" } else { "off" },
        r.fps_detect,
        r.fps_decode_only,
        r.fps_cameras_only,
        r.ratio,
        r.cpu_us_per_frame_detect,
        r.cpu_us_per_frame_decode_only,
        r.cpu_pct_core_per_30fps_stream,
        r.d2h_bytes_per_frame,
        q(r.p50_ms),
        q(r.p99_ms),
        r.gpu_mem_used_mib,
        r.worker_ms_per_frame,
        r.worker_busy,
        r.startup_s
    );
    r
}
