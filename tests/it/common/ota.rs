//! OTA test parts: a real HTTP file server (std `TcpListener`, `Range` honoured, a connection
//! dropped halfway on request, optional throttling, a path cut at every response or trickled a
//! byte at a time), keys and bundles made by the real CLI
//! (`vigil ota keygen` / `vigil ota pack`), and what the store holds on disk.

use super::vigil_bin;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request the server saw: path and the `Range` header, if any.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

/// Serves the files of `dir` over HTTP/1.1 on 127.0.0.1, one thread per connection.
pub struct FileServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Path → bytes after which the next response for it is cut (then forgotten).
    pub drop_once: Arc<Mutex<HashMap<String, u64>>>,
    /// Bytes per second per response; 0 = unthrottled.
    pub rate: Arc<AtomicU64>,
    /// Path → bytes after which every response for it is cut (a download that never ends).
    pub cut_always: Arc<Mutex<HashMap<String, u64>>>,
    /// Path → the pause after each byte of its body (a trickling server).
    pub trickle: Arc<Mutex<HashMap<String, Duration>>>,
    stop: Arc<AtomicBool>,
}

/// How the server shapes the responses of some paths.
#[derive(Clone, Default)]
struct Shapes {
    drop_once: Arc<Mutex<HashMap<String, u64>>>,
    rate: Arc<AtomicU64>,
    cut_always: Arc<Mutex<HashMap<String, u64>>>,
    trickle: Arc<Mutex<HashMap<String, Duration>>>,
}

impl FileServer {
    pub fn start(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let shapes = Shapes::default();
        let server = FileServer {
            port,
            seen: Arc::default(),
            drop_once: shapes.drop_once.clone(),
            rate: shapes.rate.clone(),
            cut_always: shapes.cut_always.clone(),
            trickle: shapes.trickle.clone(),
            stop: Arc::default(),
        };
        let (dir, seen, stop) = (dir.to_path_buf(), server.seen.clone(), server.stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (dir, seen, shapes) = (dir.clone(), seen.clone(), shapes.clone());
                std::thread::spawn(move || {
                    let _ = serve_one(conn, &dir, &seen, &shapes);
                });
            }
        });
        server
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    pub fn requests_for(&self, name: &str) -> Vec<Seen> {
        let path = format!("/{name}");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    dir: &Path,
    seen: &Mutex<Vec<Seen>>,
    shapes: &Shapes,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_string());
        }
    }
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });
    let file = dir.join(path.trim_start_matches('/'));
    let Ok(data) = std::fs::read(&file) else {
        return write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    let len = data.len() as u64;
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<u64>().ok());
    let body = match start {
        Some(s) if s >= len => {
            return write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some(s) => {
            write!(
                conn,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {s}-{}/{len}\r\nConnection: close\r\n\r\n",
                len - s,
                len - 1
            )?;
            &data[s as usize..]
        }
        None => {
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
            )?;
            &data[..]
        }
    };
    let cut = shapes.drop_once.lock().unwrap().remove(&path);
    let cut = cut.or_else(|| shapes.cut_always.lock().unwrap().get(&path).copied());
    let body = match cut {
        Some(n) => &body[..(n as usize).min(body.len())],
        None => body,
    };
    let trickle = shapes.trickle.lock().unwrap().get(&path).copied();
    if let Some(pause) = trickle {
        for b in body {
            conn.write_all(&[*b])?;
            std::thread::sleep(pause);
        }
        return Ok(());
    }
    for chunk in body.chunks(16 << 10) {
        conn.write_all(chunk)?;
        let r = shapes.rate.load(Ordering::Relaxed);
        if r > 0 {
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / r as f64));
        }
    }
    if cut.is_some() {
        // Drop the connection halfway: the client must resume with a Range request.
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

/// `vigil ota keygen --out DIR/NAME`: (secret key file, base64 public key).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let out = dir.join(name);
    let o = Command::new(vigil_bin())
        .args(["ota", "keygen", "--out"])
        .arg(&out)
        .output()
        .expect("vigil ota keygen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (out, String::from_utf8(o.stdout).unwrap().trim().to_string())
}

/// `vigil ota pack` of `src` into `out` with extra args; returns the bundle's sha256.
pub fn pack(key: &Path, sequence: u64, src: &Path, out: &Path, extra: &[&str]) -> String {
    let o = Command::new(vigil_bin())
        .args(["ota", "pack", "--key"])
        .arg(key)
        .args(["--sequence", &sequence.to_string(), "--version"])
        .arg(format!("v{sequence}"))
        .args(extra)
        .arg("--out")
        .arg(out)
        .arg(src)
        .output()
        .expect("vigil ota pack");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sha256(out)
}

pub fn sha256(path: &Path) -> String {
    vigil_ota::bundle::file_sha256(path).expect("hash").0
}

/// Writes `files` (relative path, bytes) under a fresh `dir`.
pub fn bundle_dir(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    for (p, data) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, data).unwrap();
    }
    dir.to_path_buf()
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every file under `dir` (relative path → sha256), `download/` left out: what an update
/// must not change when it is refused.
pub fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            if rel == "download" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                ));
            } else if ft.is_dir() {
                stack.push(p);
            } else {
                out.push((rel, sha256(&p)));
            }
        }
    }
    out.sort();
    out
}

/// The slot `current` points to, if any.
pub fn current(ota_dir: &Path) -> Option<String> {
    std::fs::read_link(ota_dir.join("current"))
        .ok()
        .map(|t| t.file_name().unwrap().to_string_lossy().to_string())
}

/// Checks that slot `slot` holds exactly its manifest's files, each with its digest; returns
/// the manifest's sequence.
pub fn check_slot(ota_dir: &Path, slot: &str) -> u64 {
    let dir = ota_dir.join("slots").join(slot);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut listed: Vec<(String, String)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.push(("manifest.json".into(), sha256(&dir.join("manifest.json"))));
    listed.push(("manifest.sig".into(), sha256(&dir.join("manifest.sig"))));
    listed.sort();
    assert_eq!(
        tree(&dir),
        listed,
        "slot {slot} holds exactly its manifest's files"
    );
    m["sequence"].as_u64().unwrap()
}
