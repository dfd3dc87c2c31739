//! `cargo xtask live-bench`: the real service on N live RTSP cameras, for each N given.
//!
//! One `vigil rtsp-serve --loop` serves the clip (1080p30 on the GPU machine) as a live camera
//! without end, so a measuring window never crosses the clip's end; one mosquitto. For each N,
//! `vigil run` gets a config of N cameras of that URL on 4 models of the same file (the GPU
//! path's 4 workers, as `vigil bench --gpu`), `backend` as given (`cuda` on the GPU machine),
//! detection on every frame (`fps = 30`), a line per camera. Once every camera has analysed a
//! frame, a warm-up, then a window measured from outside the process:
//!
//! - analysed fps per camera (min, mean, cameras at ≥ 29.5), from `/metrics`;
//! - camera restarts in the window (`vigil_camera_reconnects`), and the reasons the log gives for
//!   every restart of the run;
//! - Vigil's CPU (from `/proc/<pid>/stat`; the RTSP server and the broker are other processes),
//!   per camera in % of one core and per analysed frame in µs; threads; GPU memory (nvidia-smi);
//! - frame → detections latency p50/p99 (`vigil_frame_latency_seconds`, to its buckets);
//! - device→host bytes per analysed frame (`vigil_gpu_device_to_host_bytes`);
//! - how long Vigil takes to stop on SIGTERM (the unit's `TimeoutStopSec` is 15 s), and how it ended
//!   (exit code or signal: a crash at exit shows).
//!
//! `--server-cpus`/`--vigil-cpus` pin the RTSP server and Vigil to different cores (else the
//! server's work on Vigil's cores inflates Vigil's figure: 2.32 % vs 1.49 % per camera at 64
//! cameras, same binary). `--floor DECODER` also runs GStreamer alone on the same cameras
//! (`gst-launch-1.0`, N chains `rtspsrc ! depay ! parse ! DECODER ! fakesink` in one process, on
//! Vigil's cores): the part of Vigil's CPU that is GStreamer's. `--camera KEY=VALUE` adds a line
//! to every camera (e.g. `rtsp_transport="tcp"`).
//!
//! Output: a Markdown table and `live-bench.json` in `--out` with every row, plus each run's
//! log. Works without cargo (on the GPU machine): give `--vigil`, `--model`, `--clip` and
//! `--mosquitto`.

use crate::soak::{broker, free_port, gpu_mib, metric, metrics, tools};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask live-bench [--cameras 16,64,96,150] [--warmup-s 30] \
[--seconds 60] [--backend cuda|cpu] [--models 4] [--fps 30] [--vigil PATH --model PATH --clip PATH \
--mosquitto PATH] [--out DIR] [--env NAME=VALUE]... [--camera KEY=VALUE]... [--server-cpus LIST] \
[--vigil-cpus LIST] [--floor DECODER|none] [--floor-only true]";

struct Opts {
    cameras: Vec<usize>,
    warmup: Duration,
    window: Duration,
    backend: String,
    models: usize,
    /// Each camera's analysis rate (30: every frame; less leaves the analysis out of most
    /// frames, so the CPU left is the receiving and decoding).
    fps: f64,
    vigil: Option<PathBuf>,
    model: Option<PathBuf>,
    clip: Option<PathBuf>,
    mosquitto: Option<PathBuf>,
    out: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// TOML lines added to every camera (`rtsp_transport = "tcp"`).
    camera: Vec<String>,
    /// CPUs (taskset's list) for the RTSP server, and for Vigil / the GStreamer floor, so
    /// that the two never share a core.
    server_cpus: Option<String>,
    vigil_cpus: Option<String>,
    /// Also run GStreamer alone on the same N cameras: `gst-launch-1.0` with N chains
    /// `rtspsrc ! depay ! parse ! DECODER ! fakesink` (`none`: no decoder), its CPU per camera.
    floor: Option<String>,
    /// GStreamer alone, without Vigil (no model runtime needed).
    floor_only: bool,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        cameras: vec![16, 64, 96, 150],
        warmup: Duration::from_secs(30),
        window: Duration::from_secs(60),
        backend: "cuda".into(),
        models: 4,
        fps: 30.0,
        vigil: None,
        model: None,
        clip: None,
        mosquitto: None,
        out: None,
        env: Vec::new(),
        camera: Vec::new(),
        server_cpus: None,
        vigil_cpus: None,
        floor: None,
        floor_only: false,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--cameras" => {
                o.cameras = v
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--cameras {v}"))?
            }
            "--warmup-s" => o.warmup = Duration::from_secs_f64(v.parse()?),
            "--seconds" => o.window = Duration::from_secs_f64(v.parse()?),
            "--backend" => o.backend = v.clone(),
            "--models" => o.models = v.parse()?,
            "--fps" => o.fps = v.parse()?,
            "--vigil" => o.vigil = Some(v.into()),
            "--model" => o.model = Some(v.into()),
            "--clip" => o.clip = Some(v.into()),
            "--mosquitto" => o.mosquitto = Some(v.into()),
            "--out" => o.out = Some(v.into()),
            "--camera" => {
                let (k, val) = v.split_once('=').context("--camera KEY=VALUE")?;
                o.camera.push(format!("{} = {}", k.trim(), val.trim()));
            }
            "--server-cpus" => o.server_cpus = Some(v.clone()),
            "--vigil-cpus" => o.vigil_cpus = Some(v.clone()),
            "--floor" => o.floor = Some(v.clone()),
            "--floor-only" => o.floor_only = v.parse()?,
            "--env" => {
                let (k, val) = v.split_once('=').context("--env NAME=VALUE")?;
                o.env.push((k.into(), val.into()));
            }
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    if o.cameras.is_empty() || o.cameras.contains(&0) || o.models == 0 {
        bail!("--cameras and --models must be positive\n{USAGE}");
    }
    Ok(o)
}

/// What one N gave.
#[derive(Default)]
struct Row {
    cameras: usize,
    fps_min: f64,
    fps_mean: f64,
    at_target: usize,
    restarts: f64,
    reasons: BTreeMap<String, usize>,
    cpu_pct_per_camera: f64,
    server_cpu_pct_per_camera: f64,
    cpu_us_per_frame: f64,
    threads: f64,
    gpu_mib: f64,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    d2h_bytes_per_frame: f64,
    stop_s: Option<f64>,
    /// How Vigil ended after SIGTERM (`exit 0`, `signal 11`, …): a crash at exit shows here.
    exit: Option<String>,
    not_started: usize,
}

pub fn live_bench(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let (vigil, model, clip, mosquitto) =
        tools(root, [&o.vigil, &o.model, &o.clip, &o.mosquitto], USAGE)?;
    let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/live-bench"));
    std::fs::create_dir_all(&out)?;
    let out = abs(&out)?;

    let (mqtt_port, rtsp_port) = (free_port()?, free_port()?);
    let mut kids = crate::Children(Vec::new());
    let mconf = out.join("mosquitto.conf");
    std::fs::write(
        &mconf,
        format!(
            "listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n"
        ),
    )?;
    if !o.floor_only {
        kids.0
            .push(("mosquitto".into(), broker(&mosquitto, &mconf, mqtt_port)?));
    }
    let server = pinned(&vigil, o.server_cpus.as_deref())
        .args(["rtsp-serve", "--loop", "--port", &rtsp_port.to_string()])
        .args(["--mount", "/live", "--file"])
        .arg(&clip)
        .stdout(Stdio::null())
        .spawn()?;
    let server_pid = server.id();
    kids.0.push(("rtsp server".into(), server));
    crate::wait_port(rtsp_port, Duration::from_secs(60))?;
    let url = format!("rtsp://127.0.0.1:{rtsp_port}/live");

    let mut rows = Vec::new();
    let mut floors = Vec::new();
    for &n in &o.cameras {
        crate::step(&format!(
            "live bench: {n} cameras of {url} ({}), backend {}, analysis {} fps",
            clip.display(),
            o.backend,
            o.fps
        ));
        let at = Served {
            url: &url,
            server_pid,
            mqtt_port,
        };
        if !o.floor_only {
            let row = one(&o, n, &vigil, &model, &at, &out)?;
            println!("{}", table(std::slice::from_ref(&row)));
            rows.push(row);
        }
        if let Some(decoder) = &o.floor {
            let f = floor(&o, n, decoder, &url, &out, server_pid)?;
            println!("{}", floor_table(std::slice::from_ref(&f)));
            floors.push(f);
        }
    }
    drop(kids);
    let mut text = if rows.is_empty() {
        String::new()
    } else {
        table(&rows)
    };
    if !floors.is_empty() {
        text += "\n";
        text += &floor_table(&floors);
    }
    println!("\n{text}");
    std::fs::write(out.join("live-bench.md"), &text)?;
    std::fs::write(
        out.join("live-bench.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "vigil": rows.iter().map(json).collect::<Vec<_>>(),
            "gstreamer_alone": floors.iter().map(|f| serde_json::json!({
                "cameras": f.cameras, "chain": f.chain, "cpu_pct_per_camera": f.cpu_pct_per_camera,
                "server_cpu_pct_per_camera": f.server_cpu_pct_per_camera,
                "threads": f.threads, "gpu_mib": f.gpu_mib, "survived": f.survived,
            })).collect::<Vec<_>>(),
        }))?,
    )?;
    println!("live bench: output in {}", out.display());
    Ok(())
}

/// What every run shares: the RTSP server (its URL and process) and the broker's port.
struct Served<'a> {
    url: &'a str,
    server_pid: u32,
    mqtt_port: u16,
}

fn one(o: &Opts, n: usize, vigil: &Path, model: &Path, at: &Served, out: &Path) -> Result<Row> {
    let (url, mqtt_port, server_pid) = (at.url, at.mqtt_port, at.server_pid);
    let http_port = free_port()?;
    let dir = out.join(format!("n{n}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, config(o, n, model, url, mqtt_port, http_port, &dir))?;
    let log_path = dir.join("vigil.log");
    let mut child = pinned(vigil, o.vigil_cpus.as_deref())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("VIGIL_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(o.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let pid = child.id();
    let result = (|| -> Result<Row> {
        crate::wait_port(http_port, Duration::from_secs(300))
            .context("vigil's HTTP API never came up")?;
        // Every camera analysing, then the warm-up.
        let t = Instant::now();
        let mut not_started = n;
        while t.elapsed() < Duration::from_secs(120) {
            let m = metrics(http_port).unwrap_or_default();
            let per = per_camera(&m, "vigil_camera_frames_analysed_total");
            not_started = n - per.values().filter(|&&v| v > 0.0).count().min(n);
            if not_started == 0 {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(o.warmup);
        let a = (Instant::now(), cpu_ticks(pid), metrics(http_port)?);
        let server_a = cpu_ticks(server_pid);
        let (mut threads, mut gpu) = (0f64, 0f64);
        let end = Instant::now() + o.window;
        while Instant::now() < end {
            threads = threads.max(status_field(pid, "Threads:"));
            gpu = gpu.max(gpu_mib(pid));
            std::thread::sleep(Duration::from_secs(5).min(end - Instant::now()));
        }
        let b = (Instant::now(), cpu_ticks(pid), metrics(http_port)?);
        let server_s = (cpu_ticks(server_pid) - server_a) / clk_tck();
        let secs = (b.0 - a.0).as_secs_f64();
        let fa = per_camera(&a.2, "vigil_camera_frames_analysed_total");
        let fb = per_camera(&b.2, "vigil_camera_frames_analysed_total");
        let fps: Vec<f64> = fb
            .iter()
            .map(|(c, v)| (v - fa.get(c).copied().unwrap_or(0.0)) / secs)
            .collect();
        let frames: f64 = fps.iter().sum::<f64>() * secs;
        let cpu_s = (b.1 - a.1) / clk_tck();
        let delta = |name: &str| metric(&b.2, name) - metric(&a.2, name);
        let (p50, p99) = latency(&a.2, &b.2);
        Ok(Row {
            cameras: n,
            fps_min: fps.iter().cloned().fold(f64::INFINITY, f64::min),
            fps_mean: fps.iter().sum::<f64>() / fps.len().max(1) as f64,
            at_target: fps.iter().filter(|&&f| f >= o.fps - 0.5).count(),
            restarts: delta("vigil_camera_reconnects"),
            reasons: BTreeMap::new(),
            cpu_pct_per_camera: cpu_s / secs / n as f64 * 100.0,
            server_cpu_pct_per_camera: server_s / secs / n as f64 * 100.0,
            cpu_us_per_frame: cpu_s / frames.max(1.0) * 1e6,
            threads,
            gpu_mib: gpu,
            latency_p50_ms: p50,
            latency_p99_ms: p99,
            d2h_bytes_per_frame: delta("vigil_gpu_device_to_host_bytes") / frames.max(1.0),
            stop_s: None,
            exit: None,
            not_started,
        })
    })();
    // The stop, timed (and forced after 90 s).
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut exit = None;
    let stop_s = loop {
        if let Ok(Some(st)) = child.try_wait() {
            use std::os::unix::process::ExitStatusExt;
            exit = Some(match (st.code(), st.signal()) {
                (Some(c), _) => format!("exit {c}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => st.to_string(),
            });
            break Some(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut row = result?;
    row.stop_s = stop_s;
    row.exit = exit;
    row.reasons = reasons(&std::fs::read_to_string(&log_path).unwrap_or_default());
    Ok(row)
}

fn config(o: &Opts, n: usize, model: &Path, url: &str, mqtt: u16, http: u16, dir: &Path) -> String {
    let mut s = format!(
        r#"# Written by `cargo xtask live-bench`: {n} live cameras.
[device]
id = "live-bench"

[mqtt]
host = "127.0.0.1"
port = {mqtt}
telemetry_interval = "10s"

[storage]
dir = "{state}"
max_events = 20000

[http]
listen = "127.0.0.1:{http}"
"#,
        state = dir.join("state").display(),
    );
    for m in 0..o.models.min(n) {
        let _ = write!(
            s,
            "\n[models.m{m}]\npath = \"{}\"\nkind = \"nanodet\"\nbackend = \"{}\"\n",
            model.display(),
            o.backend
        );
    }
    for i in 0..n {
        let _ = write!(
            s,
            r#"
[[cameras]]
name = "cam{i}"
url = "{url}"
model = "m{m}"
fps = {fps}
stall_timeout = "10s"
{extra}
[[cameras.lines]]
name = "crosswalk"
from = [0.05, 0.55]
to = [0.95, 0.55]
direction = "both"
classes = ["person"]
"#,
            m = i % o.models.min(n),
            fps = o.fps,
            extra = o.camera.join("\n"),
        );
    }
    s
}

/// `program`, under `taskset -c cpus` when given.
fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.args(["-c", list]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// GStreamer alone on the same cameras.
struct Floor {
    cameras: usize,
    chain: String,
    cpu_pct_per_camera: f64,
    server_cpu_pct_per_camera: f64,
    threads: f64,
    gpu_mib: f64,
    /// gst-launch-1.0 was still running at the end of the window (no camera failed it).
    survived: bool,
}

/// `gst-launch-1.0` (from PATH) with `n` chains `rtspsrc ! depay ! parse ! decoder ! fakesink`
/// in one process, as Vigil receives and decodes (same latency, same CUDA-memory output on
/// nvh26xdec), measured as Vigil is: its CPU from /proc over the window after the warm-up.
fn floor(
    o: &Opts,
    n: usize,
    decoder: &str,
    url: &str,
    out: &Path,
    server_pid: u32,
) -> Result<Floor> {
    let transport = o
        .camera
        .iter()
        .find_map(|l| l.strip_prefix("rtsp_transport = "))
        .map(|v| v.trim_matches('"').to_string());
    let mut chain = format!("rtspsrc location={url} latency=200");
    if let Some(t) = transport.filter(|t| t != "auto") {
        chain += &format!(" protocols={t}");
    }
    chain += " ! rtph264depay ! h264parse";
    match decoder {
        "none" => {}
        d if d.starts_with("nvh26") => chain += &format!(" ! {d} ! video/x-raw(memory:CUDAMemory)"),
        d => chain += &format!(" ! {d}"),
    }
    chain += " ! fakesink sync=false";
    crate::step(&format!("GStreamer alone: {n} × `{chain}`"));
    let mut cmd = pinned(Path::new("gst-launch-1.0"), o.vigil_cpus.as_deref());
    cmd.arg("-q");
    for _ in 0..n {
        cmd.args(chain.split(' '));
    }
    let log = out.join(format!("floor-n{n}.log"));
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("gst-launch-1.0 (on the GPU machine: source gpu-payload/gst/env.sh)")?;
    let pid = child.id();
    std::thread::sleep(Duration::from_secs(5) + o.warmup);
    let (t0, c0, s0) = (Instant::now(), cpu_ticks(pid), cpu_ticks(server_pid));
    let (mut threads, mut gpu) = (0f64, 0f64);
    let end = Instant::now() + o.window;
    while Instant::now() < end {
        threads = threads.max(status_field(pid, "Threads:"));
        gpu = gpu.max(gpu_mib(pid));
        std::thread::sleep(Duration::from_secs(5).min(end - Instant::now()));
    }
    let secs = t0.elapsed().as_secs_f64();
    let (c1, s1) = (cpu_ticks(pid), cpu_ticks(server_pid));
    let survived = matches!(child.try_wait(), Ok(None));
    let _ = child.kill();
    let _ = child.wait();
    Ok(Floor {
        cameras: n,
        chain,
        cpu_pct_per_camera: (c1 - c0) / clk_tck() / secs / n as f64 * 100.0,
        server_cpu_pct_per_camera: (s1 - s0) / clk_tck() / secs / n as f64 * 100.0,
        threads,
        gpu_mib: gpu,
        survived,
    })
}

fn floor_table(rows: &[Floor]) -> String {
    markdown(
        &[
            "live cameras",
            "GStreamer alone (gst-launch-1.0, one process)",
            "CPU per camera",
            "RTSP server CPU per camera",
            "threads",
            "GPU MiB",
            "ran to the end",
        ],
        rows.iter().map(|f| {
            vec![
                f.cameras.to_string(),
                format!("`{}`", f.chain),
                format!("{:.2} %", f.cpu_pct_per_camera),
                format!("{:.2} %", f.server_cpu_pct_per_camera),
                f.threads.to_string(),
                f.gpu_mib.to_string(),
                if f.survived {
                    "yes"
                } else {
                    "no (see its log)"
                }
                .to_string(),
            ]
        }),
    )
}

/// A Markdown table.
fn markdown(head: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut s = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s
}

/// A counter per camera: `name{camera="x"} v`.
fn per_camera(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix("{camera=\"")?;
            let (cam, tail) = rest.split_once("\"}")?;
            Some((cam.to_string(), tail.trim().parse().ok()?))
        })
        .collect()
}

/// p50 and p99 of `vigil_frame_latency_seconds` over the window, to the buckets' upper bounds
/// (ms); `None` past the last finite bucket.
fn latency(a: &str, b: &str) -> (Option<f64>, Option<f64>) {
    let buckets = |t: &str| -> Vec<(f64, f64)> {
        t.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("vigil_frame_latency_seconds_bucket{le=\"")?;
                let (le, v) = rest.split_once("\"}")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, v.trim().parse().ok()?))
            })
            .collect()
    };
    let (ba, bb) = (buckets(a), buckets(b));
    let cum: Vec<(f64, f64)> = bb
        .iter()
        .map(|(le, v)| {
            let before = ba.iter().find(|(l, _)| l == le).map_or(0.0, |x| x.1);
            (*le, v - before)
        })
        .collect();
    let total = cum.last().map_or(0.0, |x| x.1);
    let q = |q: f64| {
        cum.iter()
            .find(|(_, c)| *c >= q * total && total > 0.0)
            .and_then(|(le, _)| le.is_finite().then_some(le * 1000.0))
    };
    (q(0.5), q(0.99))
}

/// The reasons the log gives for camera restarts, camera names left out, with their counts.
fn reasons(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for l in log.lines().filter(|l| l.contains("camera down")) {
        let why = l
            .split("reason=")
            .nth(1)
            .map(|r| r.split(" failures=").next().unwrap_or(r))
            .unwrap_or("?")
            .chars()
            .take(200)
            .collect::<String>();
        *out.entry(why).or_insert(0) += 1;
    }
    out
}

fn cpu_ticks(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3; utime and
    // stime are fields 14 and 15.
    let rest = stat.rsplit_once(") ").map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    get(11) + get(12)
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_field(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "> 200".into(), |v| format!("{v}"))
}

fn table(rows: &[Row]) -> String {
    let mut s = markdown(
        &[
            "live cameras",
            "analysed fps per camera (min / mean)",
            "cameras within 0.5 fps of the analysis rate",
            "restarts in the window",
            "Vigil CPU per camera",
            "RTSP server CPU per camera",
            "CPU µs per frame",
            "threads",
            "GPU MiB",
            "frame → detections p50 / p99 ms",
            "D2H bytes per frame",
            "stop on SIGTERM",
        ],
        rows.iter().map(|r| {
            vec![
                r.cameras.to_string(),
                format!("{:.1} / {:.1}", r.fps_min, r.fps_mean),
                format!(
                    "{} of {}{}",
                    r.at_target,
                    r.cameras,
                    if r.not_started > 0 {
                        format!(" ({} never started)", r.not_started)
                    } else {
                        String::new()
                    }
                ),
                r.restarts.to_string(),
                format!("{:.2} %", r.cpu_pct_per_camera),
                format!("{:.2} %", r.server_cpu_pct_per_camera),
                format!("{:.0}", r.cpu_us_per_frame),
                r.threads.to_string(),
                r.gpu_mib.to_string(),
                format!("{} / {}", ms(r.latency_p50_ms), ms(r.latency_p99_ms)),
                format!("{:.0}", r.d2h_bytes_per_frame),
                match (r.stop_s, &r.exit) {
                    (Some(s), Some(e)) => format!("{s:.1} s ({e})"),
                    _ => "not within 90 s".into(),
                },
            ]
        }),
    );
    for r in rows.iter().filter(|r| !r.reasons.is_empty()) {
        let _ = writeln!(s, "\nRestart reasons at {} cameras (whole run):", r.cameras);
        for (why, k) in &r.reasons {
            let _ = writeln!(s, "- {k} × {why}");
        }
    }
    s
}

fn json(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "cameras": r.cameras,
        "fps_min": r.fps_min,
        "fps_mean": r.fps_mean,
        "cameras_at_rate": r.at_target,
        "not_started": r.not_started,
        "restarts_in_window": r.restarts,
        "restart_reasons": r.reasons,
        "cpu_pct_per_camera": r.cpu_pct_per_camera,
        "server_cpu_pct_per_camera": r.server_cpu_pct_per_camera,
        "cpu_us_per_frame": r.cpu_us_per_frame,
        "threads": r.threads,
        "gpu_mib": r.gpu_mib,
        "frame_latency_p50_ms_le": r.latency_p50_ms,
        "frame_latency_p99_ms_le": r.latency_p99_ms,
        "d2h_bytes_per_frame": r.d2h_bytes_per_frame,
        "stop_s": r.stop_s,
        "exit": r.exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_latency_comes_from_the_bucket_deltas() {
        let a = "vigil_frame_latency_seconds_bucket{le=\"0.005\"} 10\nvigil_frame_latency_seconds_bucket{le=\"0.01\"} 10\nvigil_frame_latency_seconds_bucket{le=\"+Inf\"} 10\n";
        let b = "vigil_frame_latency_seconds_bucket{le=\"0.005\"} 60\nvigil_frame_latency_seconds_bucket{le=\"0.01\"} 109\nvigil_frame_latency_seconds_bucket{le=\"+Inf\"} 110\n";
        // In the window: 50 ≤ 5 ms, 99 ≤ 10 ms, 100 in all.
        assert_eq!(latency(a, b), (Some(5.0), Some(10.0)));
        let b_slow = b.replace("} 109", "} 60");
        assert_eq!(
            latency(a, &b_slow),
            (Some(5.0), None),
            "p99 past the last bucket"
        );
        assert_eq!(
            per_camera(
                "x_total{camera=\"a\"} 3\nx_total{camera=\"b\"} 4.5\n",
                "x_total"
            ),
            BTreeMap::from([("a".to_string(), 3.0), ("b".to_string(), 4.5)])
        );
        let log = "WARN camera down: retrying in 0.5s camera=cam1 reason=source ended the stream failures=1\nWARN camera down: retrying camera=cam2 reason=source ended the stream failures=2\n";
        assert_eq!(
            reasons(log),
            BTreeMap::from([("source ended the stream".to_string(), 2)])
        );
    }
}
