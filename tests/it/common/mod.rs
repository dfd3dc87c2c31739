//! Real parts for the integration tests: a mosquitto broker on a free port, the RTSP server
//! (`vigil rtsp-serve`), `vigil run`, and an MQTT subscriber (`mosquitto_sub`). Everything is
//! a real process, killed when its guard drops.
#![allow(dead_code)]

pub mod link;
pub mod netns;
pub mod ota;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An asset installed by `cargo xtask setup`; panics with the fix if missing.
pub fn asset(rel: &str) -> PathBuf {
    let p = repo().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (or `cargo xtask test`)",
        p.display()
    );
    p
}

pub fn model() -> PathBuf {
    asset("models/nanodet.onnx")
}

/// NanoDet quantized to int8, the shipped configs' `cpu_path`.
pub fn int8_model() -> PathBuf {
    asset("models/nanodet-int8.onnx")
}

pub fn vigil_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vigil")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_port(port: u16, timeout: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Turns at the CPU. The tests of all the modules run on parallel threads of this one process;
/// as separate test binaries, those of different files never ran at the same time (cargo runs
/// test binaries one after another). The long end-to-end tests assert on throughput and timing
/// (frames analysed of a clip played in real time, a reconnect within a bound, no frame dropped
/// across a reload, a fixed watchdog window, kills timed against a measured update), and on a
/// small machine another test's inference or decoding beside them makes them fail (the ground
/// truth test analysed 246 of its 300 frames, below its bound of 250, with the `detection`,
/// `gpu_probe` and `recording_end` tests beside it, and passed alone).
static CPU: RwLock<()> = RwLock::new(());

/// Held for the whole of each long end-to-end test (`e2e_*`, `ota_kill`, `spool_broker_kill`,
/// `systemd_watchdog`): no test that holds [`exclusive`] or [`shared`] runs beside it. Take it
/// first in the test, so that it is released after the test's processes are killed; a failed
/// test does not block the others (the poison is ignored).
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(PoisonError::into_inner)
}

/// Held by the short tests that still load the CPU (inference, decoding, `vigil run`): they may
/// run beside one another, not beside an [`exclusive`] one.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(PoisonError::into_inner)
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn mosquitto_bin() -> &'static str {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto")
}

/// A real mosquitto on 127.0.0.1:`port`, persistence off.
pub fn mosquitto(dir: &Path, port: u16) -> Proc {
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    mosquitto_with(&conf, port, "mosquitto")
}

/// A real mosquitto with the config file `conf`, once it listens on 127.0.0.1:`port`.
pub fn mosquitto_with(conf: &Path, port: u16, name: &str) -> Proc {
    let child = Command::new(mosquitto_bin())
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto");
    wait_port(port, Duration::from_secs(5));
    Proc {
        name: name.into(),
        child,
    }
}

/// `vigil rtsp-serve` serving `file` at rtsp://127.0.0.1:`port``mount`.
pub fn rtsp_server(file: &Path, port: u16, mount: &str) -> Proc {
    let child = Command::new(vigil_bin())
        .args([
            "rtsp-serve",
            "--port",
            &port.to_string(),
            "--mount",
            mount,
            "--file",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .expect("rtsp server");
    wait_port(port, Duration::from_secs(10));
    Proc {
        name: "rtsp".into(),
        child,
    }
}

/// Lines written by a child, collected by a thread.
#[derive(Clone, Default)]
pub struct Lines(pub Arc<Mutex<Vec<(Instant, String)>>>);

impl Lines {
    fn collect(&self, r: impl std::io::Read + Send + 'static, echo: Option<&'static str>) {
        let me = self.clone();
        std::thread::spawn(move || {
            // Lines as bytes: a binary payload (an event picture on `snapshot/<camera>`)
            // is kept as lossy text instead of ending the reader.
            for line in BufReader::new(r).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                if let Some(tag) = echo {
                    eprintln!("[{tag}] {line}");
                }
                me.0.lock().unwrap().push((Instant::now(), line));
            }
        });
    }
    pub fn snapshot(&self) -> Vec<(Instant, String)> {
        self.0.lock().unwrap().clone()
    }
    pub fn contains(&self, s: &str) -> bool {
        self.0.lock().unwrap().iter().any(|(_, l)| l.contains(s))
    }
    /// Waits until a line satisfies `f`; returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|(_, l)| f(l)) {
                return Some(l.clone());
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `vigil run --config`, stderr (logs) collected and echoed.
pub fn vigil_run(config: &Path) -> (Proc, Lines) {
    vigil_run_with(config, &[], true)
}

/// `vigil run --config` with extra environment variables; logs collected, echoed or not.
pub fn vigil_run_with(config: &Path, env: &[(&str, &str)], echo: bool) -> (Proc, Lines) {
    let mut child = Command::new(vigil_bin())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("VIGIL_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vigil run");
    let logs = Lines::default();
    logs.collect(child.stderr.take().unwrap(), echo.then_some("vigil"));
    (
        Proc {
            name: "vigil".into(),
            child,
        },
        logs,
    )
}

/// A received MQTT message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub at: Instant,
    pub topic: String,
    pub json: serde_json::Value,
}

/// `mosquitto_sub` on `topics`, messages parsed as JSON.
pub struct Subscriber {
    pub proc: Proc,
    lines: Lines,
}

impl Subscriber {
    pub fn start(port: u16, topics: &[&str]) -> Self {
        Self::start_with(port, &[], topics)
    }

    /// With extra `mosquitto_sub` arguments (TLS files: [`tls::tls_args`]).
    pub fn start_with(port: u16, extra: &[String], topics: &[&str]) -> Self {
        Self::start_cmd(Command::new("mosquitto_sub"), port, extra, topics)
    }

    /// `cmd` runs `mosquitto_sub` (e.g. inside a network namespace: [`netns::Partition::command`]).
    pub fn start_cmd(mut cmd: Command, port: u16, extra: &[String], topics: &[&str]) -> Self {
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-q", "1"]);
        cmd.args(extra);
        for t in topics {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let lines = Lines::default();
        lines.collect(child.stdout.take().unwrap(), None);
        // Give the subscription a moment to reach the broker.
        std::thread::sleep(Duration::from_millis(300));
        Self {
            proc: Proc {
                name: "mosquitto_sub".into(),
                child,
            },
            lines,
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.lines
            .snapshot()
            .into_iter()
            .filter_map(|(at, l)| {
                let (topic, payload) = l.split_once(' ')?;
                let json = serde_json::from_str(payload).ok()?;
                Some(Msg {
                    at,
                    topic: topic.to_string(),
                    json,
                })
            })
            .collect()
    }

    pub fn on(&self, suffix: &str) -> Vec<Msg> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic.ends_with(suffix))
            .collect()
    }

    pub fn wait(&self, timeout: Duration, f: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let t0 = Instant::now();
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| f(m)) {
                return Some(m);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Publishes one QoS 1 message with `mosquitto_pub` (a real client); panics if it fails.
pub fn mqtt_publish(port: u16, topic: &str, payload: &str) {
    let ok = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "mosquitto_pub to {topic} failed");
}

/// A zone over the whole walkable plaza of vtest.avi: every person tracked fires `zone_enter`,
/// so events flow steadily while a camera is live.
pub const PLAZA_ZONE: &str = r#"
[[cameras.zones]]
name = "plaza"
polygon = [[0.0, 0.2], [1.0, 0.2], [1.0, 1.0], [0.0, 1.0]]
classes = ["person"]
"#;

/// chromedriver on `port` (Debian's `chromium-driver`), stopped when dropped.
pub fn chromedriver(port: u16) -> Proc {
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver)");
    let p = Proc {
        name: "chromedriver".into(),
        child,
    };
    wait_port(port, Duration::from_secs(10));
    p
}

/// A WebDriver session with headless Chromium (a fresh profile in `profile`).
pub async fn chromium(port: u16, profile: &Path) -> fantoccini::Client {
    let caps = serde_json::json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    fantoccini::ClientBuilder::new(connector)
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// What most end-to-end tests start with: a temp dir, a broker, and the demo clip served over
/// RTSP at `url` (`/plaza`). Both stop when this is dropped.
pub struct Plaza {
    pub dir: PathBuf,
    pub mqtt: u16,
    pub url: String,
    _broker: Proc,
    _server: Proc,
}

pub fn plaza(name: &str) -> Plaza {
    let dir = temp_dir(name);
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    Plaza {
        dir,
        mqtt,
        url: format!("rtsp://127.0.0.1:{rtsp}/plaza"),
        _broker,
        _server,
    }
}

/// A config with one RTSP camera and the given extra camera TOML (rules).
pub fn config_toml(
    device: &str,
    mqtt_port: u16,
    rtsp_url: &str,
    camera_extra: &str,
    rules: &str,
) -> String {
    format!(
        r#"[device]
id = "{device}"

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
telemetry_interval = "1s"

[storage]
dir = "{state}"

[http]
listen = "127.0.0.1:0"

[models.nanodet]
path = "{model}"
kind = "nanodet"
backend = "cpu"
threads = 2

[[cameras]]
name = "plaza"
url = "{rtsp_url}"
model = "nanodet"
{camera_extra}

{rules}
"#,
        model = model().display(),
        state = std::env::temp_dir()
            .join(format!("vigil-test-state-{device}-{}", std::process::id()))
            .display()
    )
}

/// The whole answer (head and body) to a plain HTTP/1.1 GET on a connection it closes.
fn get_raw(addr: &str, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    raw
}

/// A raw HTTP/1.1 response: status, head (lower-cased) and body.
pub struct Reply {
    pub code: u16,
    pub head: String,
    /// The head as sent (header values such as cookies are case-sensitive).
    pub head_raw: String,
    pub body: String,
}

/// One request on a fresh connection (`Connection: close`), with `body` for a POST.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {raw:?}"));
    Reply {
        code,
        head: head.to_ascii_lowercase(),
        head_raw: head.to_string(),
        body: body.to_string(),
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let raw = String::from_utf8(get_raw(addr, path)).expect("a text answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    // Un-chunk if needed.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

/// A plain HTTP/1.1 GET of binary content (not chunked): (status, content type, body).
pub fn http_get_bytes(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let raw = get_raw(addr, path);
    let at = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response");
    let head = String::from_utf8_lossy(&raw[..at]).to_string();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    let ctype = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    (code, ctype, raw[at + 4..].to_vec())
}

/// A JPEG decoded to RGB: (width, height, pixels).
pub fn decode_jpeg(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut d = zune_jpeg::JpegDecoder::new(bytes);
    let rgb = d.decode().expect("a JPEG that decodes");
    let info = d.info().unwrap();
    (info.width as usize, info.height as usize, rgb)
}

/// The value of one series of `/metrics`: `name` as printed, labels included
/// (`vigil_live_clients`, `vigil_camera_events_total{camera="plaza"}`).
pub fn metric(addr: &str, name: &str) -> f64 {
    let (code, text) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    text.lines()
        .find(|l| l.split(' ').next().map(|n| n.trim_end_matches("{}")) == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// The address `vigil run` logged for its HTTP API.
pub fn http_addr(logs: &Lines) -> String {
    let line = logs
        .wait_for(Duration::from_secs(20), |l| {
            l.contains("HTTP API on http://")
        })
        .expect("HTTP API started")
        .1;
    line.split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Encodes what the GStreamer elements `source` produce (raw video, e.g. `videotestsrc …`; its
/// words split at spaces) into an H.264 MP4 at `out` with a key frame every `key_int` frames
/// (`gst-launch-1.0`).
pub fn h264_mp4(source: &[String], key_int: u32, out: &Path) {
    let ok = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(source)
        .args(["!", "x264enc", &format!("key-int-max={key_int}")])
        .args(["speed-preset=ultrafast", "!", "h264parse", "!", "mp4mux"])
        .args(["!", "filesink"])
        .arg(format!("location={}", out.display()))
        .status()
        .expect("gst-launch-1.0 (Debian package gstreamer1.0-tools)")
        .success();
    assert!(ok, "encoding {}", out.display());
}

/// `frames` frames (30 fps, 320×240) of a moving ball as an H.264 MP4 at `dir/name`.
pub fn ball_clip(dir: &Path, name: &str, frames: u32) -> PathBuf {
    let path = dir.join(name);
    h264_mp4(
        &words(&format!(
            "videotestsrc num-buffers={frames} pattern=ball ! video/x-raw,width=320,height=240,framerate=30/1"
        )),
        30,
        &path,
    );
    path
}

/// Words of a pipeline description (no element property with a space in it).
pub fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// Sends a WebSocket upgrade for `/api/live` and returns the stream and the status code.
pub fn live_upgrade(addr: &str) -> (std::net::TcpStream, u16) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /api/live HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: vigil\r\n\r\n"
    )
    .unwrap();
    // Read the head only, a byte at a time (what follows is the server's to send).
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (s, code)
}
