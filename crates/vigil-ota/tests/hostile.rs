//! The OTA job and agent against what an outsider can do with `cmd/ota/apply` and a web server
//! of their own (issue 15): downloads that fail or trickle, overlays that point outside their
//! set, and an older bundle re-applied to trust a revoked key. Real parts: a real HTTP server on
//! 127.0.0.1 (std sockets, one thread per connection), the real job thread, store and files; the
//! supervisor's plan is the one thing stood in for (an `apply` that accepts every config).

use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_core::config::Config;
use vigil_core::facts::{BoxFacts, KnownFacts};
use vigil_core::health::OutputCounters;
use vigil_ota::agent::{Agent, ApplyError, OtaTopic};
use vigil_ota::bundle::{PackInfo, pack};
use vigil_ota::manifest::{Target, encode_key};
use vigil_ota::{ApplyRequest, JobContext, JobEvent};

/// What the server does for one path.
#[derive(Clone)]
enum Route {
    /// The file, `Range` honoured.
    File(Vec<u8>),
    /// A `len`-byte body (`Range` honoured), cut after `per_response` bytes of each response.
    Cut { len: usize, per_response: usize },
    /// A `len`-byte body of which one byte is sent every `every`.
    Trickle { len: usize, every: Duration },
}

struct Server {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    /// Connections still open (a trickle ends when its client goes away).
    #[allow(dead_code)]
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let open: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (r, o) = (routes.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (r, o) = (r.clone(), o.clone());
                std::thread::spawn(move || {
                    o.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(conn, &r);
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Server { port, routes, open }
    }

    fn route(&self, path: &str, route: Route) -> String {
        self.routes.lock().unwrap().insert(path.into(), route);
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn body_byte(i: usize) -> u8 {
    (i % 251) as u8
}

fn serve(
    mut conn: std::net::TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut start = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            let v = v.trim().trim_start_matches("bytes=").trim_end_matches('-');
            start = v.parse().unwrap_or(0);
        }
    }
    let route = routes.lock().unwrap().get(&path).cloned();
    let (data, limit, every): (Vec<u8>, usize, Option<Duration>) = match route {
        None => {
            return write!(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some(Route::File(d)) => (d, usize::MAX, None),
        Some(Route::Cut { len, per_response }) => {
            ((0..len).map(body_byte).collect(), per_response, None)
        }
        Some(Route::Trickle { len, every }) => {
            ((0..len).map(body_byte).collect(), usize::MAX, Some(every))
        }
    };
    let len = data.len();
    if start > 0 {
        write!(
            conn,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{len}\r\nConnection: close\r\n\r\n",
            len - start,
            len - 1
        )?;
    } else {
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )?;
    }
    let body = &data[start.min(len)..];
    let body = &body[..limit.min(body.len())];
    match every {
        None => conn.write_all(body)?,
        Some(every) => {
            for b in body {
                conn.write_all(&[*b])?;
                conn.flush()?;
                std::thread::sleep(every);
            }
        }
    }
    let _ = conn.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-ota-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn public(k: &SigningKey) -> String {
    encode_key(k.verifying_key().as_bytes())
}

fn facts() -> Arc<dyn BoxFacts> {
    Arc::new(KnownFacts::cpu_only())
}

/// A device config trusting `keys`, its OTA store under `dir`, plus `extra` `[ota]` lines.
fn device(dir: &Path, keys: &[&SigningKey], extra: &str) -> (PathBuf, Config) {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{}\"", public(k))).collect();
    let text = format!(
        "[device]\nid = \"hostile\"\n[http]\nlisten = \"\"\n[ota]\ntrusted_keys = [{}]\ndir = \"{}\"\nprobation = \"1s\"\n{extra}",
        keys.join(", "),
        dir.join("ota").display()
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, text).unwrap();
    let cfg = vigil_ota::load_effective(&path, facts().as_ref()).unwrap();
    vigil_ota::store::Store::open(&dir.join("ota")).unwrap();
    (path, cfg)
}

/// A bundle of `files` signed by `key` at `sequence`; (bytes, sha256).
fn bundle(
    dir: &Path,
    name: &str,
    key: &SigningKey,
    sequence: u64,
    files: &[(&str, &[u8])],
) -> (Vec<u8>, String) {
    let src = dir.join(format!("src-{name}"));
    let _ = std::fs::remove_dir_all(&src);
    for (p, data) in files {
        let f = src.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }
    let out = dir.join(format!("{name}.vigil"));
    let info = PackInfo {
        version: format!("v{sequence}"),
        sequence,
        valid_for: Duration::from_secs(3600),
        target: Target::default(),
    };
    pack(&src, key, &info, &out).unwrap();
    let sha = vigil_ota::bundle::file_sha256(&out).unwrap().0;
    (std::fs::read(out).unwrap(), sha)
}

fn request(id: &str, url: &str, sha: &str) -> ApplyRequest {
    ApplyRequest {
        request_id: id.into(),
        url: url.into(),
        sha256: sha.into(),
        allow_rollback: false,
    }
}

/// Runs one job on this thread's behalf (on its own thread, as the agent does); returns its
/// final event within `limit` or None.
fn job(config_path: &Path, cfg: &Config, req: ApplyRequest, limit: Duration) -> Option<JobEvent> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ctx = JobContext {
        config_path: config_path.to_path_buf(),
        config: cfg.clone(),
        active: None,
        key_floor: 0,
        events: tx,
        facts: facts(),
        cancel: Arc::default(),
    };
    std::thread::spawn(move || vigil_ota::run_job(ctx, req));
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        match rx.try_recv() {
            Ok(JobEvent::Progress(_)) => {}
            Ok(ev) => return Some(ev),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => return None,
        }
    }
    None
}

fn failed(ev: Option<JobEvent>) -> vigil_ota::OtaError {
    match ev {
        Some(JobEvent::Failed { error, .. }) => error,
        Some(JobEvent::Staged { info, .. }) => panic!("staged: {info:?}"),
        _ => panic!("no outcome in time"),
    }
}

fn downloads(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join("ota/download"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().to_string(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn failed_downloads_leave_at_most_one_bounded_partial_file() {
    let dir = temp("parts");
    let f = key(1);
    let (path, cfg) = device(&dir, &[&f], "max_bundle_bytes = 2000000\n");
    let server = Server::start();
    // Bodies that never complete: each response is cut after 50 kB, so 6 attempts give up.
    let mut held = Vec::new();
    for (i, sha) in ["1", "2", "3"].iter().enumerate() {
        let url = server.route(
            &format!("/cut{i}"),
            Route::Cut {
                len: 1_000_000,
                per_response: 50_000,
            },
        );
        let sha = sha.repeat(64);
        let e = failed(job(
            &path,
            &cfg,
            request(&format!("cut{i}"), &url, &sha),
            Duration::from_secs(60),
        ));
        assert_eq!(e.kind(), "download", "{e}");
        held = downloads(&dir);
        assert!(
            held.len() <= 1,
            "after {} failed downloads: {held:?}",
            i + 1
        );
    }
    // The one kept is the last job's, resumable with the same command.
    assert_eq!(
        held.iter().map(|h| h.0.as_str()).collect::<Vec<_>>(),
        [format!("{}.part", "3".repeat(64))]
    );
    // A download refused for a reason a retry cannot fix leaves nothing.
    let url = format!("http://127.0.0.1:{}/missing", server.port);
    let e = failed(job(
        &path,
        &cfg,
        request("404", &url, &"4".repeat(64)),
        Duration::from_secs(30),
    ));
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    assert_eq!(
        downloads(&dir),
        [],
        "nothing is kept after a refusal that a retry cannot fix"
    );
    // A start of the agent keeps at most one partial download, within max_bundle_bytes.
    std::fs::create_dir_all(dir.join("ota/download")).unwrap();
    std::fs::write(
        dir.join(format!("ota/download/{}.part", "5".repeat(64))),
        vec![0; 1000],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(
        dir.join(format!("ota/download/{}.part", "6".repeat(64))),
        vec![0; 1000],
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("ota/download/{}.part", "7".repeat(64))),
        vec![0; 3_000_000],
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("ota/download/{}.bundle", "8".repeat(64))),
        vec![0; 10],
    )
    .unwrap();
    std::fs::write(dir.join("ota/download/junk"), vec![0; 10]).unwrap();
    let _ = Agent::open(&cfg, &path, facts()).unwrap();
    assert_eq!(
        downloads(&dir),
        [(format!("{}.part", "6".repeat(64)), 1000)],
        "only the newest partial download within max_bundle_bytes is kept"
    );
}

/// A job against a server that sends one byte every `every`, with `extra` `[ota]` lines:
/// its error, how long it took, and the device's directory.
fn trickled(name: &str, extra: &str, every: Duration) -> (vigil_ota::OtaError, Duration, PathBuf) {
    let dir = temp(name);
    let f = key(1);
    let (path, cfg) = device(&dir, &[&f], extra);
    let server = Server::start();
    let url = server.route(
        "/slow",
        Route::Trickle {
            len: 100_000,
            every,
        },
    );
    let t0 = Instant::now();
    let req = request(name, &url, &"a".repeat(64));
    let e = failed(job(&path, &cfg, req, Duration::from_secs(60)));
    (e, t0.elapsed(), dir)
}

#[test]
fn a_trickling_server_cannot_hold_the_update_slot() {
    // One byte every 2 s: far below any sane rate, but never silent long enough for a
    // per-read timeout. The defaults stop it after one rate window (10 s).
    let (e, took, _) = trickled("trickle", "", Duration::from_secs(2));
    assert_eq!(e.kind(), "download", "{e}");
    assert!(
        e.reason().contains("min_rate_bytes_per_s"),
        "{}",
        e.reason()
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
}

#[test]
fn an_overlay_model_path_must_stay_inside_its_set() {
    let dir = temp("overlay-path");
    let f = key(1);
    let (path, cfg) = device(&dir, &[&f], "");
    let server = Server::start();
    let deep = format!("{}etc/passwd", "../".repeat(40));
    for (i, model) in [deep.as_str(), "/etc/passwd", "models/../../x.onnx"]
        .iter()
        .enumerate()
    {
        let overlay = format!(
            "[models.evil]\npath = \"{model}\"\nkind = \"nanodet\"\nbackend = \"cpu\"\n[[cameras]]\nname = \"c\"\nurl = \"rtsp://127.0.0.1:1/x\"\nmodel = \"evil\"\n"
        );
        let (bytes, sha) = bundle(
            &dir,
            &format!("evil{i}"),
            &f,
            10 + i as u64,
            &[("config.toml", overlay.as_bytes()), ("models/a.onnx", b"x")],
        );
        let url = server.route(&format!("/evil{i}"), Route::File(bytes));
        let e = failed(job(
            &path,
            &cfg,
            request(&format!("evil{i}"), &url, &sha),
            Duration::from_secs(30),
        ));
        assert_eq!(e.kind(), "config", "{model}: {e}");
        let reason = e.reason();
        assert!(
            reason.contains("models.evil.path") && reason.contains("leaves its OTA set"),
            "{model}: {reason}"
        );
    }
}

/// The plan's part, stood in for: every config applies, no model is new.
fn accept(_: &Config) -> Result<Vec<(String, Arc<OutputCounters>)>, ApplyError> {
    Ok(Vec::new())
}

/// Drives the agent through one update: request, job events, then health ticks until the
/// outcome; returns the terminal `ota/progress` message.
fn update(
    agent: &mut Agent,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<JobEvent>,
    config_path: &Path,
    req: ApplyRequest,
) -> Value {
    let running = vigil_ota::load_effective(config_path, facts().as_ref()).unwrap();
    agent.request(req, &running).expect("accepted");
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "no outcome");
        match rx.try_recv() {
            Ok(ev) => agent.on_job_event(ev, &mut accept),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
        agent.tick(true, "ok", &mut accept);
        for (topic, payload) in agent.outbox.drain(..) {
            if topic != OtaTopic::Progress {
                continue;
            }
            let v: Value = serde_json::from_slice(&payload).unwrap();
            if ["done", "failed", "rolled_back", "cancelled"]
                .contains(&v["phase"].as_str().unwrap_or(""))
            {
                return v;
            }
        }
    }
}

#[test]
fn a_revoked_key_stays_revoked_when_an_older_bundle_is_applied_again() {
    let dir = temp("revoked");
    let (fleet, old) = (key(1), key(2));
    let (path, cfg) = device(&dir, &[&fleet], "");
    let server = Server::start();
    let trusting = |keys: &[&SigningKey]| {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{}\"", public(k))).collect();
        format!("[ota]\ntrusted_keys = [{}]\n", keys.join(", "))
    };
    let (b10, s10) = bundle(
        &dir,
        "b10",
        &fleet,
        10,
        &[("config.toml", trusting(&[&fleet, &old]).as_bytes())],
    );
    let (b20, s20) = bundle(
        &dir,
        "b20",
        &fleet,
        20,
        &[("config.toml", trusting(&[&fleet]).as_bytes())],
    );
    let (b30, s30) = bundle(
        &dir,
        "b30",
        &old,
        30,
        &[("config.toml", trusting(&[&fleet, &old]).as_bytes())],
    );
    let (u10, u20, u30) = (
        server.route("/b10", Route::File(b10)),
        server.route("/b20", Route::File(b20)),
        server.route("/b30", Route::File(b30)),
    );
    let (mut agent, mut rx, _) = Agent::open(&cfg, &path, facts()).unwrap();
    let out = update(&mut agent, &mut rx, &path, request("10", &u10, &s10));
    assert_eq!(out["phase"], "done", "{out}");
    let out = update(&mut agent, &mut rx, &path, request("20", &u20, &s20));
    assert_eq!(
        out["phase"], "done",
        "{out}: the old key is revoked by sequence 20"
    );
    // The older bundle that trusted the revoked key, sent again as an allowed rollback.
    let mut again = request("10-again", &u10, &s10);
    again.allow_rollback = true;
    let out = update(&mut agent, &mut rx, &path, again);
    assert_eq!(
        (out["phase"].as_str(), out["error"].as_str()),
        (Some("failed"), Some("sequence")),
        "{out}"
    );
    assert!(
        out["reason"].as_str().unwrap().contains("trusted_keys"),
        "{out}"
    );
    // cmd/ota/rollback to the previous set (sequence 10) is refused for the same reason.
    let running = vigil_ota::load_effective(&path, facts().as_ref()).unwrap();
    let (msg, _) = agent
        .rollback_on_request("rb", &running.ota.trusted_keys, &mut accept)
        .expect_err("a rollback that trusts the revoked key again");
    assert!(
        msg.contains("trusted_keys") && msg.contains("below 20"),
        "{msg}"
    );
    // Also after a restart (the floor is persistent), and the revoked key's bundle is refused.
    drop(agent);
    let (mut agent, mut rx, _) = Agent::open(&cfg, &path, facts()).unwrap();
    let mut again = request("10-after-restart", &u10, &s10);
    again.allow_rollback = true;
    let out = update(&mut agent, &mut rx, &path, again);
    assert_eq!(out["error"], "sequence", "{out}");
    let out = update(&mut agent, &mut rx, &path, request("30", &u30, &s30));
    assert_eq!(
        (out["phase"].as_str(), out["error"].as_str()),
        (Some("failed"), Some("signature")),
        "{out}"
    );
    let active = agent.state.active.clone().unwrap();
    assert_eq!(active.sequence, 20);
}

#[test]
fn a_download_past_its_deadline_fails_and_keeps_its_part_to_resume() {
    let extra = "download_timeout = \"10s\"\nmin_rate_bytes_per_s = 0\n";
    let (e, took, dir) = trickled("deadline", extra, Duration::from_millis(500));
    assert!(
        e.reason().contains("not complete after 10s"),
        "{}",
        e.reason()
    );
    assert!(took < Duration::from_secs(12), "{took:?}");
    let held = downloads(&dir);
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0].1 >= 10, "the bytes received are kept: {held:?}");
}

#[test]
fn cancel_stops_a_download_promptly_and_frees_the_slot() {
    let dir = temp("cancel");
    let f = key(1);
    let (path, cfg) = device(&dir, &[&f], "");
    let server = Server::start();
    let url = server.route(
        "/slow",
        Route::Trickle {
            len: 100_000,
            every: Duration::from_secs(20),
        },
    );
    let (mut agent, mut rx, _) = Agent::open(&cfg, &path, facts()).unwrap();
    let (msg, _) = agent.cancel().expect_err("nothing to cancel yet");
    assert!(msg.contains("no OTA update is in progress"), "{msg}");
    agent
        .request(request("slow", &url, &"c".repeat(64)), &cfg)
        .expect("accepted");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!downloads(&dir).is_empty(), "the download started");
    let t0 = Instant::now();
    let r = agent.cancel().expect("cancelling");
    assert!(
        r["summary"]
            .as_str()
            .unwrap()
            .contains("cancelling update slow"),
        "{r}"
    );
    let ev = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the job did not stop"
        );
        match rx.try_recv() {
            Ok(JobEvent::Progress(_)) => {}
            Ok(ev) => break ev,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(500), "stopped after {took:?}");
    agent.outbox.clear();
    agent.on_job_event(ev, &mut accept);
    let progress: Vec<Value> = agent
        .outbox
        .drain(..)
        .filter(|(t, _)| *t == OtaTopic::Progress)
        .map(|(_, p)| serde_json::from_slice(&p).unwrap())
        .collect();
    let last = progress.last().unwrap();
    assert_eq!(
        (last["phase"].as_str(), last["error"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "{last}"
    );
    assert_eq!(agent.state.last.as_ref().unwrap().result, "cancelled");
    assert_eq!(downloads(&dir), [], "a cancelled download is removed");
    // The slot is free at once.
    let again = server.route("/missing-now", Route::File(Vec::new()));
    agent
        .request(request("next", &again, &"d".repeat(64)), &cfg)
        .expect("a new update is accepted");
}

#[test]
fn an_overlay_model_path_through_a_symbolic_link_is_refused() {
    let dir = temp("overlay-link");
    let f = key(1);
    let (path, _) = device(&dir, &[&f], "");
    let staged = dir.join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    std::os::unix::fs::symlink("/etc", staged.join("models")).unwrap();
    std::fs::write(
        staged.join("config.toml"),
        "[models.evil]\npath = \"models/passwd\"\nkind = \"nanodet\"\nbackend = \"cpu\"\n",
    )
    .unwrap();
    let e = vigil_ota::check_staged(&path, &staged, facts().as_ref(), 5, &[], 0).unwrap_err();
    assert_eq!(e.kind(), "config");
    assert!(
        e.reason().contains("through a symbolic link"),
        "{}",
        e.reason()
    );
    // The same set without the link is fine.
    std::fs::remove_file(staged.join("models")).unwrap();
    std::fs::create_dir_all(staged.join("models")).unwrap();
    std::fs::write(staged.join("models/passwd"), b"x").unwrap();
    vigil_ota::check_staged(&path, &staged, facts().as_ref(), 5, &[], 0).unwrap();
}

#[test]
fn a_download_error_never_shows_credentials_or_a_whole_hostile_url() {
    let dir = temp("url");
    let f = key(1);
    let (path, cfg) = device(&dir, &[&f], "");
    // Nothing listens on port 1: every attempt is refused.
    let url = format!("http://user:secret@127.0.0.1:1/{}", "x".repeat(100_000));
    let e = failed(job(
        &path,
        &cfg,
        request("url", &url, &"e".repeat(64)),
        Duration::from_secs(30),
    ));
    let reason = e.reason();
    assert_eq!(e.kind(), "download", "{reason}");
    assert!(reason.contains("gave up after 6 attempts"), "{reason}");
    assert!(!reason.contains("secret"), "{reason}");
    assert!(reason.len() <= 1024, "{} bytes", reason.len());
}
