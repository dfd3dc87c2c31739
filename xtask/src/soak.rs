//! `cargo xtask soak`: Vigil under a long, hostile routine, sampled for leaks.
//!
//! A real mosquitto (killed with SIGKILL every `--broker-every` and started again 2 s later),
//! N cameras that loop the demo clip (RTSP from `vigil rtsp-serve`, or file cameras), a reload
//! every `--reload-every` (POST /api/reload after rewriting the config: a rule change, a zone
//! change and a camera fps change in turn), and every `--sample-every` a row of what a leak would
//! grow: resident memory, open file descriptors, threads, the spool's size on disk, GPU memory
//! (when nvidia-smi is there), with the event and frame counters from /metrics beside them.
//!
//! Output: `samples.csv`, `vigil.log` and `summary.txt` in `--out`; the summary gives, for each
//! measure, its value at the end of the warm-up and at the end, its range after the warm-up and
//! the least-squares slope after the warm-up (per hour). Exit status 1 if Vigil exited, a reload
//! was refused, or events stopped flowing.
//!
//! Works without cargo (on the GPU machine): give `--vigil`, `--model`, `--clip` and
//! `--mosquitto` as paths and nothing is built.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    minutes: f64,
    warmup_minutes: f64,
    cameras: usize,
    backend: String,
    source: String,
    fps: u32,
    broker_every: Duration,
    reload_every: Duration,
    sample_every: Duration,
    vigil: Option<PathBuf>,
    model: Option<PathBuf>,
    clip: Option<PathBuf>,
    mosquitto: Option<PathBuf>,
    out: Option<PathBuf>,
    /// Extra environment for Vigil (`--env NAME=VALUE`, repeatable): allocator settings and
    /// the like, to compare variants.
    env: Vec<(String, String)>,
}

const USAGE: &str = "usage: cargo xtask soak [--minutes 60] [--warmup-minutes 10] [--cameras 4] \
[--backend cpu|cuda] [--source rtsp|file] [--fps 5] [--broker-every-s 300] [--reload-every-s 60] \
[--sample-every-s 10] [--vigil PATH --model PATH --clip PATH --mosquitto PATH] [--out DIR] \
[--env NAME=VALUE]...";

/// The `Environment=NAME=VALUE` settings of a systemd unit's text (one per line, unquoted).
fn unit_environment(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| {
            let (k, v) = kv.trim_matches('"').split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        minutes: 60.0,
        warmup_minutes: f64::NAN,
        cameras: 4,
        backend: "cpu".into(),
        source: "rtsp".into(),
        fps: 5,
        broker_every: Duration::from_secs(300),
        reload_every: Duration::from_secs(60),
        sample_every: Duration::from_secs(10),
        vigil: None,
        model: None,
        clip: None,
        mosquitto: None,
        out: None,
        env: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| -> Result<f64> {
            let n: f64 = v
                .parse()
                .with_context(|| format!("{flag} {v}: not a number"))?;
            if !(n.is_finite() && n > 0.0) {
                bail!("{flag} {v}: expected a number above 0");
            }
            Ok(n)
        };
        match flag.as_str() {
            "--minutes" => o.minutes = num(v)?,
            "--warmup-minutes" => o.warmup_minutes = num(v)?,
            "--cameras" => o.cameras = num(v)? as usize,
            "--fps" => o.fps = num(v)? as u32,
            "--backend" if v == "cpu" || v == "cuda" => o.backend = v.clone(),
            "--source" if v == "rtsp" || v == "file" => o.source = v.clone(),
            "--broker-every-s" => o.broker_every = Duration::from_secs_f64(num(v)?),
            "--reload-every-s" => o.reload_every = Duration::from_secs_f64(num(v)?),
            "--sample-every-s" => o.sample_every = Duration::from_secs_f64(num(v)?),
            "--vigil" => o.vigil = Some(v.into()),
            "--model" => o.model = Some(v.into()),
            "--clip" => o.clip = Some(v.into()),
            "--mosquitto" => o.mosquitto = Some(v.into()),
            "--out" => o.out = Some(v.into()),
            "--env" => {
                let (name, value) = v
                    .split_once('=')
                    .with_context(|| format!("--env {v}: expected NAME=VALUE"))?;
                o.env.push((name.into(), value.into()));
            }
            _ => bail!("{flag} {v}: unknown option or value\n{USAGE}"),
        }
    }
    // Vigil runs as the shipped unit runs it: the unit's `Environment=` lines (allocator
    // settings) unless `--env` names them; not its install paths (ORT_DYLIB_PATH).
    if let Ok(unit) = std::fs::read_to_string("systemd/vigil.service") {
        for (k, v) in unit_environment(&unit) {
            if k != "ORT_DYLIB_PATH" && !o.env.iter().any(|(n, _)| *n == k) {
                o.env.push((k, v));
            }
        }
    }
    if o.warmup_minutes.is_nan() {
        // A sixth of the run, at most 10 minutes: long enough for allocators and caches to settle.
        o.warmup_minutes = (o.minutes / 6.0).min(10.0);
    }
    if o.warmup_minutes >= o.minutes {
        bail!("--warmup-minutes must be shorter than --minutes");
    }
    Ok(o)
}

/// One sample row.
#[derive(Clone, Copy, Default)]
struct Sample {
    t_s: f64,
    rss_kib: f64,
    fds: f64,
    threads: f64,
    spool_bytes: f64,
    gpu_mib: f64,
    published: f64,
    acked: f64,
    frames: f64,
    connects: f64,
}

/// A measure of the summary: its name, how to read it from a sample, its unit.
type Measure = (&'static str, fn(&Sample) -> f64, &'static str);

const MEASURES: [Measure; 5] = [
    ("resident memory", |s| s.rss_kib / 1024.0, "MiB"),
    ("file descriptors", |s| s.fds, ""),
    ("threads", |s| s.threads, ""),
    ("spool on disk", |s| s.spool_bytes / 1024.0, "KiB"),
    ("GPU memory", |s| s.gpu_mib, "MiB"),
];

pub fn soak(root: &Path, args: &[String]) -> Result<()> {
    let o = parse(args)?;
    let (vigil, model, clip, mosquitto) =
        tools(root, [&o.vigil, &o.model, &o.clip, &o.mosquitto], USAGE)?;
    let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| root.join(format!("target/soak/{stamp}")));
    std::fs::create_dir_all(&out)?;
    let out = abs(&out)?;
    let state = out.join("state");
    let _ = std::fs::remove_dir_all(&state);

    let (mqtt_port, rtsp_port, http_port) = (free_port()?, free_port()?, free_port()?);
    let mut kids = crate::Children(Vec::new());

    // The broker, and its restarts.
    let mconf = out.join("mosquitto.conf");
    std::fs::write(
        &mconf,
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )?;
    let start_broker = || broker(&mosquitto, &mconf, mqtt_port);
    let mut broker = Some(start_broker()?);

    let url = if o.source == "rtsp" {
        let c = Command::new(&vigil)
            .args([
                "rtsp-serve",
                "--port",
                &rtsp_port.to_string(),
                "--mount",
                "/soak",
                "--file",
            ])
            .arg(&clip)
            .stdout(Stdio::null())
            .spawn()?;
        kids.0.push(("rtsp server".into(), c));
        crate::wait_port(rtsp_port, Duration::from_secs(10))?;
        format!("rtsp://127.0.0.1:{rtsp_port}/soak")
    } else {
        format!("file://{}", clip.display())
    };

    let cfg = out.join("vigil.toml");
    let write_cfg = |variant: usize| -> Result<()> {
        std::fs::write(
            &cfg,
            config(&o, variant, mqtt_port, http_port, &url, &model, &state),
        )
        .context("writing the config")
    };
    write_cfg(0)?;
    let log = std::fs::File::create(out.join("vigil.log"))?;
    let mut child = Command::new(&vigil)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("VIGIL_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(o.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    crate::wait_port(http_port, Duration::from_secs(60))
        .context("vigil's HTTP API never came up")?;
    crate::step(&format!(
        "soak: vigil pid {pid}, {} cameras ({} {}, {} fps, backend {}), {:.0} min (warm-up {:.0}), broker killed every {:?}, reload every {:?}; output {}",
        o.cameras,
        o.source,
        clip.display(),
        o.fps,
        o.backend,
        o.minutes,
        o.warmup_minutes,
        o.broker_every,
        o.reload_every,
        out.display()
    ));

    let mut csv = std::fs::File::create(out.join("samples.csv"))?;
    writeln!(
        csv,
        "t_s,rss_kib,fds,threads,spool_bytes,gpu_mib,events_published,events_acked,frames_analysed,mqtt_connects"
    )?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(o.minutes * 60.0);
    let (mut next_sample, mut next_reload, mut next_kill) =
        (t0, t0 + o.reload_every, t0 + o.broker_every);
    let mut broker_back: Option<Instant> = None;
    let (mut kills, mut reloads, mut variant) = (0u32, 0u32, 0usize);
    let mut failures: Vec<String> = Vec::new();
    let mut samples: Vec<Sample> = Vec::new();
    while Instant::now() < end {
        let now = Instant::now();
        if let Ok(Some(st)) = child.try_wait() {
            failures.push(format!(
                "vigil exited ({st}) after {:.0} s",
                t0.elapsed().as_secs_f64()
            ));
            break;
        }
        if now >= next_kill {
            if let Some(mut b) = broker.take() {
                let _ = b.kill(); // SIGKILL: no clean close, like a crash or a power cut
                let _ = b.wait();
                kills += 1;
                broker_back = Some(now + Duration::from_secs(2));
            }
            next_kill += o.broker_every;
        }
        if broker_back.is_some_and(|t| now >= t) {
            broker = Some(start_broker()?);
            broker_back = None;
        }
        if now >= next_reload {
            variant += 1;
            write_cfg(variant)?;
            match http(http_port, "POST", "/api/reload") {
                Ok((200, _)) => reloads += 1,
                Ok((code, body)) => failures.push(format!(
                    "reload {variant} refused ({code}): {}",
                    body.chars().take(300).collect::<String>()
                )),
                Err(e) => failures.push(format!("reload {variant}: {e:#}")),
            }
            next_reload += o.reload_every;
        }
        if now >= next_sample {
            let s = sample(pid, t0, &state, http_port);
            writeln!(
                csv,
                "{:.1},{},{},{},{},{},{},{},{},{}",
                s.t_s,
                s.rss_kib,
                s.fds,
                s.threads,
                s.spool_bytes,
                s.gpu_mib,
                s.published,
                s.acked,
                s.frames,
                s.connects
            )?;
            csv.flush()?;
            samples.push(s);
            next_sample += o.sample_every;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if broker.is_none() {
        broker = Some(start_broker()?);
    }
    // Let the spool drain to the broker before the last word.
    let drained = (0..60).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        metrics(http_port)
            .map(|m| metric(&m, "vigil_spool_unsent") == 0.0)
            .unwrap_or(false)
    });
    if !drained {
        failures.push("the spool did not drain within 30 s of the last broker restart".into());
    }
    let stopped = {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                break Some(st);
            }
            if t.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if let Some(mut b) = broker {
        let _ = b.kill();
        let _ = b.wait();
    }
    drop(kids);

    let text = summary(&o, &samples, kills, reloads, &failures, stopped, pid);
    std::fs::write(out.join("summary.txt"), &text)?;
    println!("{text}");
    println!("soak: output in {}", out.display());
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

fn config(
    o: &Opts,
    variant: usize,
    mqtt: u16,
    http: u16,
    url: &str,
    model: &Path,
    state: &Path,
) -> String {
    let mut s = format!(
        r#"# Written by `cargo xtask soak` (variant {variant}).
[device]
id = "soak"

[mqtt]
host = "127.0.0.1"
port = {mqtt}
telemetry_interval = "10s"

[storage]
dir = "{state}"
# Small enough that retention is reached during the warm-up: the spool's size must then stay flat.
max_events = 5000

[http]
listen = "127.0.0.1:{http}"

[models.m]
path = "{model}"
kind = "nanodet"
backend = "{backend}"
threads = 2
"#,
        state = state.display(),
        model = model.display(),
        backend = o.backend,
    );
    // The reload routine: a rule change (cooldown), a zone change (polygon) and a camera rebuild
    // (fps of camera 0), in turn, so every kind of reload runs many times.
    let cooldown = ["2s", "3s"][(variant / 3 + variant) % 2];
    let top = if variant % 3 == 1 { 0.3 } else { 0.35 };
    for i in 0..o.cameras {
        let fps = if i == 0 && (variant % 3 == 2) {
            o.fps + 1
        } else {
            o.fps
        };
        let _ = write!(
            s,
            r#"
[[cameras]]
name = "cam{i}"
url = "{url}"
model = "m"
fps = {fps}
min_score = 0.4
stall_timeout = "5s"
on_end = "restart"
[cameras.reconnect]
initial_backoff = "500ms"
max_backoff = "5s"
[[cameras.lines]]
name = "crosswalk"
from = [0.05, 0.55]
to = [0.95, 0.55]
direction = "both"
classes = ["person"]
cooldown = "{cooldown}"
[[cameras.zones]]
name = "centre"
polygon = [[0.35, {top}], [0.65, {top}], [0.65, 0.75], [0.35, 0.75]]
classes = ["person"]
events = ["enter", "leave", "dwell"]
dwell = "4s"
"#
        );
    }
    s
}

fn sample(pid: u32, t0: Instant, state: &Path, http_port: u16) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as f64)
        .unwrap_or(f64::NAN);
    let m = metrics(http_port).unwrap_or_default();
    Sample {
        t_s: t0.elapsed().as_secs_f64(),
        rss_kib: field("VmRSS:"),
        fds,
        threads: field("Threads:"),
        spool_bytes: dir_bytes(state) as f64,
        gpu_mib: gpu_mib(pid),
        published: metric(&m, "vigil_mqtt_events_published"),
        acked: metric(&m, "vigil_mqtt_events_acked"),
        frames: metric(&m, "vigil_camera_frames_analysed"),
        connects: metric(&m, "vigil_mqtt_connects"),
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// GPU memory held by `pid` (MiB) from nvidia-smi; NaN without one.
/// What a run needs: `[vigil, model, clip, mosquitto]` as given (all four, on a machine
/// without cargo), or, when no `--vigil` is given, Vigil built here in release and the rest
/// from the setup (each given path still wins). Vigil, the model and the clip come back
/// absolute.
pub(crate) fn tools(
    root: &Path,
    given: [&Option<PathBuf>; 4],
    usage: &str,
) -> Result<(PathBuf, PathBuf, PathBuf, PathBuf)> {
    let [vigil, model, clip, mosquitto] = given;
    let (vigil, model, clip, mosquitto) = match vigil {
        None => {
            let assets = crate::assets::setup(root)?;
            crate::step("building vigil (release)");
            crate::run(crate::cargo().current_dir(root).args([
                "build",
                "--release",
                "--bin",
                "vigil",
            ]))?;
            (
                root.join("target/release/vigil"),
                model.clone().unwrap_or(root.join("models/nanodet.onnx")),
                clip.clone().unwrap_or(assets.demo_clip),
                mosquitto.clone().unwrap_or(crate::assets::mosquitto_bin()),
            )
        }
        Some(v) => {
            let need = |p: &Option<PathBuf>, what: &str| {
                p.clone()
                    .with_context(|| format!("with --vigil, give {what} too\n{usage}"))
            };
            (
                v.clone(),
                need(model, "--model")?,
                need(clip, "--clip")?,
                need(mosquitto, "--mosquitto")?,
            )
        }
    };
    let abs = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}", p.display()));
    Ok((abs(&vigil)?, abs(&model)?, abs(&clip)?, mosquitto))
}

/// mosquitto started with the config file `conf`, once it listens on `port`.
pub(crate) fn broker(mosquitto: &Path, conf: &Path, port: u16) -> Result<Child> {
    let c = Command::new(mosquitto)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", mosquitto.display()))?;
    crate::wait_port(port, Duration::from_secs(10))?;
    Ok(c)
}

pub(crate) fn gpu_mib(pid: u32) -> f64 {
    let Ok(o) = Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .stderr(Stdio::null())
        .output()
    else {
        return f64::NAN;
    };
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(','))
        .filter(|(p, _)| p.trim() == pid.to_string())
        .filter_map(|(_, m)| m.trim().parse::<f64>().ok())
        .sum()
}

/// The sum of a metric's series (all cameras) in a /metrics text; NaN if absent.
/// (`name` and `name_total` are the same counter.)
pub(crate) fn metric(text: &str, name: &str) -> f64 {
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            // Counters carry OpenMetrics' `_total` suffix.
            l.strip_prefix(name)
                .map(|r| r.strip_prefix("_total").unwrap_or(r))
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .inspect(|_| found = true)
        .sum();
    if found { sum } else { f64::NAN }
}

pub(crate) fn metrics(port: u16) -> Result<String> {
    match http(port, "GET", "/metrics")? {
        (200, body) => Ok(body),
        (code, _) => bail!("/metrics: {code}"),
    }
}

/// A minimal HTTP/1.1 request to Vigil's loopback API: (status, body).
fn http(port: u16, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    Ok((code, body))
}

/// Least-squares slope of y over x.
fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in xs.iter().zip(ys) {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

fn summary(
    o: &Opts,
    samples: &[Sample],
    kills: u32,
    reloads: u32,
    failures: &[String],
    stopped: Option<std::process::ExitStatus>,
    pid: u32,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "soak: {} cameras ({}, {} fps, backend {}), {:.1} min, warm-up {:.1} min; {} samples; broker killed {kills}×; {reloads} reloads applied; vigil pid {pid} {}",
        o.cameras,
        o.source,
        o.fps,
        o.backend,
        samples.last().map_or(0.0, |s| s.t_s / 60.0),
        o.warmup_minutes,
        samples.len(),
        match stopped {
            Some(st) => format!("ran throughout and stopped on SIGTERM ({st})"),
            None => "did not stop within 30 s of SIGTERM (killed)".into(),
        }
    );
    if !o.env.is_empty() {
        let env: Vec<String> = o.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            t,
            "vigil's extra environment (--env, then systemd/vigil.service's Environment=): {}",
            env.join(" ")
        );
    }
    let warm = o.warmup_minutes * 60.0;
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warm).collect();
    if after.len() < 3 {
        let _ = writeln!(t, "too few samples after the warm-up for a slope");
        return t;
    }
    let _ = writeln!(
        t,
        "| measure | at end of warm-up | at end | range after warm-up | slope after warm-up (per hour) |\n|---|---|---|---|---|"
    );
    let xs: Vec<f64> = after.iter().map(|s| s.t_s / 3600.0).collect();
    for (name, f, unit) in MEASURES {
        let ys: Vec<f64> = after.iter().map(|s| f(s)).collect();
        if ys.iter().any(|y| y.is_nan()) {
            let _ = writeln!(t, "| {name} | n/a | n/a | n/a | n/a |");
            continue;
        }
        let (lo, hi) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(*y), b.max(*y)));
        let _ = writeln!(
            t,
            "| {name} | {:.1} {unit} | {:.1} {unit} | {lo:.1}–{hi:.1} {unit} | {:+.2} {unit}/h |",
            ys[0],
            ys[ys.len() - 1],
            slope(&xs, &ys)
        );
    }
    let (first, last) = (after[0], after[after.len() - 1]);
    let _ = writeln!(
        t,
        "after the warm-up: {:.0} frames analysed, {:.0} events published, {:.0} acknowledged, {:.0} broker connects",
        last.frames - first.frames,
        last.published - first.published,
        last.acked - first.acked,
        last.connects - first.connects
    );
    for f in failures {
        let _ = writeln!(t, "FAILED: {f}");
    }
    t
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_environment_lines_are_read() {
        let unit = "[Service]\nEnvironment=MALLOC_ARENA_MAX=2\n# Environment=X=1\n\
                    Environment=\"A=b c\"\nExecStart=/usr/bin/vigil run\n";
        assert_eq!(
            unit_environment(unit),
            [
                ("MALLOC_ARENA_MAX".into(), "2".into()),
                ("A".into(), "b c".into())
            ]
        );
        let shipped = std::fs::read_to_string("../systemd/vigil.service").unwrap();
        assert!(unit_environment(&shipped).contains(&("MALLOC_ARENA_MAX".into(), "2".into())));
    }

    #[test]
    fn slope_of_a_line_and_of_a_flat_series() {
        let xs = [0.0, 1.0, 2.0, 3.0];
        assert!((slope(&xs, &[1.0, 3.0, 5.0, 7.0]) - 2.0).abs() < 1e-12);
        assert_eq!(slope(&xs, &[4.0; 4]), 0.0);
    }

    #[test]
    fn metric_sums_the_series_of_one_name_only() {
        let text = "# HELP x\nvigil_spool_unsent 3\nvigil_spool_unsent_more 9\n\
                    vigil_camera_frames_analysed{camera=\"a\"} 10\n\
                    vigil_camera_frames_analysed_total{camera=\"b\"} 5\n";
        assert_eq!(metric(text, "vigil_spool_unsent"), 3.0);
        assert_eq!(metric(text, "vigil_camera_frames_analysed"), 15.0);
        assert!(metric(text, "vigil_mqtt_connects").is_nan());
    }
}
