//! Bundle download over HTTP(S) (ureq, rustls) into `download/<sha256>.part`, resumed with a
//! `Range` request after a dropped connection and after a restart of the process; the whole
//! file's sha256 must be the one the command gave.

use super::OtaError;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Attempts after a dropped connection before giving up.
const ATTEMPTS: u32 = 6;

/// Progress: bytes held so far and the total when known.
pub type OnProgress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

fn dl(msg: impl Into<String>) -> OtaError {
    OtaError::Download(msg.into())
}

/// Downloads `url` to `dir/<sha256>.bundle` (complete, digest checked) and returns its path.
/// A complete file already there is reused; a `.part` is resumed.
pub fn fetch(
    url: &str,
    sha256: &str,
    dir: &Path,
    max_bytes: u64,
    progress: OnProgress<'_>,
) -> Result<PathBuf, OtaError> {
    let done = dir.join(format!("{sha256}.bundle"));
    let part = dir.join(format!("{sha256}.part"));
    if done.is_file() {
        let (have, _) = super::bundle::file_sha256(&done)?;
        if have == sha256 {
            return Ok(done);
        }
        let _ = std::fs::remove_file(&done);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut last_err = String::new();
    for attempt in 1..=ATTEMPTS {
        match fetch_once(&agent, url, &part, max_bytes, progress) {
            Ok(()) => {
                let (have, n) = super::bundle::file_sha256(&part)?;
                if have != sha256 {
                    let _ = std::fs::remove_file(&part);
                    return Err(OtaError::Digest(format!(
                        "the downloaded bundle ({n} bytes) has sha256 {have}, the command says {sha256}"
                    )));
                }
                std::fs::rename(&part, &done)
                    .map_err(|e| OtaError::Io(format!("{}: {e}", done.display())))?;
                return Ok(done);
            }
            Err(Retry::No(e)) => return Err(e),
            Err(Retry::Yes(e)) => {
                tracing::warn!(attempt, "ota: download interrupted: {e}; resuming");
                last_err = e;
                std::thread::sleep(Duration::from_millis(200 * attempt as u64));
            }
        }
    }
    Err(dl(format!(
        "{url}: gave up after {ATTEMPTS} attempts: {last_err}"
    )))
}

enum Retry {
    Yes(String),
    No(OtaError),
}

fn fetch_once(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    max_bytes: u64,
    progress: OnProgress<'_>,
) -> Result<(), Retry> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(416)) if have > 0 => {
            // Our part is as long as (or longer than) the file: start again.
            let _ = std::fs::remove_file(part);
            return Err(Retry::Yes("416 range not satisfiable".into()));
        }
        Err(ureq::Error::StatusCode(code)) => {
            return Err(Retry::No(dl(format!("{url}: HTTP {code}"))));
        }
        Err(e) => return Err(Retry::Yes(format!("{url}: {e}"))),
    };
    let status = resp.status().as_u16();
    let len = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (start, total) = match status {
        206 => {
            let range_start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if range_start != Some(have) {
                let _ = std::fs::remove_file(part);
                return Err(Retry::Yes(format!(
                    "206 with Content-Range starting at {range_start:?}, asked {have}"
                )));
            }
            (have, len.map(|l| l + have))
        }
        200 => (0, len),
        other => return Err(Retry::No(dl(format!("{url}: HTTP {other}")))),
    };
    if let Some(t) = total
        && t > max_bytes
    {
        return Err(Retry::No(dl(format!(
            "{url}: {t} bytes (expected at most {max_bytes}, [ota] max_bundle_bytes)"
        ))));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(start > 0)
        .write(true)
        .truncate(start == 0)
        .open(part)
        .map_err(|e| Retry::No(OtaError::Io(format!("{}: {e}", part.display()))))?;
    let mut held = start;
    progress(held, total);
    let mut reader = resp.body_mut().as_reader();
    let mut buf = vec![0u8; 64 << 10];
    let mut last = Instant::now();
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = f.sync_all();
                return Err(Retry::Yes(format!("after {held} bytes: {e}")));
            }
        };
        f.write_all(&buf[..n])
            .map_err(|e| Retry::No(OtaError::Io(format!("{}: {e}", part.display()))))?;
        held += n as u64;
        if held > max_bytes {
            let _ = std::fs::remove_file(part);
            return Err(Retry::No(dl(format!(
                "{url}: more than {max_bytes} bytes ([ota] max_bundle_bytes)"
            ))));
        }
        if last.elapsed() >= Duration::from_millis(200) {
            progress(held, total);
            last = Instant::now();
        }
    }
    f.sync_all()
        .map_err(|e| Retry::No(OtaError::Io(format!("{}: {e}", part.display()))))?;
    progress(held, total);
    if let Some(t) = total
        && held < t
    {
        return Err(Retry::Yes(format!(
            "connection closed at {held} of {t} bytes"
        )));
    }
    Ok(())
}
