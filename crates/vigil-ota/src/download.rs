//! Bundle download over HTTP(S) (ureq, rustls) into `download/<sha256>.part`, resumed with a
//! `Range` request after a dropped connection and after a restart of the process; the whole
//! file's sha256 must be the one the command gave.
//!
//! Bounded in every way an outsider controls: the size (`[ota] max_bundle_bytes`), the whole
//! download's time (`[ota] download_timeout`), its rate (`[ota] min_rate_bytes_per_s`, averaged
//! over [`RATE_WINDOW`]: a server trickling a byte now and then is dropped), and the disk:
//! `download/` holds at most one partial file, this job's, kept after a failure only when the
//! same command sent again can resume it (the connection kept dropping, the deadline or the
//! rate was missed); any other failure, and a cancellation, removes it.
//!
//! The socket is read on a helper thread that hands chunks over a bounded channel, so that the
//! job sees `cmd/ota/cancel`, the deadline and the rate at least every 100 ms whatever the
//! server does; a helper left blocked on a silent server ends at its read timeout (30 s).

use super::OtaError;
use super::store::Store;
use super::text::{MAX_NAME, bounded};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// Attempts after a dropped connection before giving up.
const ATTEMPTS: u32 = 6;

/// The span over which the download rate is averaged against `min_rate_bytes_per_s`.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How often the job looks at the cancel flag, the deadline and the rate.
const TICK: Duration = Duration::from_millis(100);

/// Chunks in flight from the socket's thread to the job (64 KiB each).
const CHUNKS: usize = 4;

/// Progress: bytes held so far and the total when known.
pub type OnProgress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// The bounds of one download (from `[ota]`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most bytes of the bundle.
    pub max_bytes: u64,
    /// The whole download, all attempts together.
    pub timeout: Duration,
    /// Least bytes per second over each [`Limits::rate_window`]; 0: no minimum.
    pub min_rate: u64,
    pub rate_window: Duration,
}

/// Why one attempt stopped before the whole file was there: a later attempt (or the same
/// command sent again) resumes from what was written.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error("{url}")]
    Request {
        url: String,
        #[source]
        source: ureq::Error,
    },
    #[error("after {held} bytes")]
    Read {
        held: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("connection closed at {held} of {total} bytes")]
    Closed { held: u64, total: u64 },
    #[error("416 range not satisfiable")]
    RangeNotSatisfiable,
    #[error("206 with Content-Range starting at {got:?}, asked {asked}")]
    BadRange { got: Option<u64>, asked: u64 },
}

/// Why an attempt stopped.
enum Stop {
    /// Try again (resume) if attempts remain.
    Retry(Interrupted),
    /// Give up; `keep`: the partial file stays for the same command sent again.
    End { error: OtaError, keep: bool },
}

impl Stop {
    fn keep(error: OtaError) -> Self {
        Stop::End { error, keep: true }
    }
    fn drop(error: OtaError) -> Self {
        Stop::End { error, keep: false }
    }
}

fn dl(msg: impl Into<String>) -> OtaError {
    OtaError::Download {
        msg: msg.into(),
        source: None,
    }
}

/// Downloads `url` to `dir/<sha256>.bundle` (complete, digest checked) and returns its path.
/// A complete file already there is reused; a `.part` is resumed; every other file in `dir` is
/// removed first. Stops with [`OtaError::Cancelled`] once `cancel` is set.
pub fn fetch(
    url: &str,
    sha256: &str,
    dir: &Path,
    limits: &Limits,
    cancel: &AtomicBool,
    progress: OnProgress<'_>,
) -> Result<PathBuf, OtaError> {
    let done = dir.join(format!("{sha256}.bundle"));
    let part = dir.join(format!("{sha256}.part"));
    let store = Store {
        dir: dir.parent().unwrap_or(dir).to_path_buf(),
    };
    if done.is_file() {
        let (have, _) = super::bundle::file_sha256(&done)?;
        if have == sha256 {
            return Ok(done);
        }
    }
    store.prune_downloads(Some(&format!("{sha256}.part")), limits.max_bytes)?;
    let shown = bounded(&vigil_core::redact::redact(url), MAX_NAME);
    let (error, keep) = match download(url, &shown, &part, limits, cancel, progress) {
        Ok(()) => {
            let (have, n) = super::bundle::file_sha256(&part)?;
            if have == sha256 {
                std::fs::rename(&part, &done).map_err(|e| OtaError::io(done.display(), e))?;
                return Ok(done);
            }
            let e = OtaError::Digest(format!(
                "the downloaded bundle ({n} bytes) has sha256 {have}, the command says {sha256}"
            ));
            (e, false)
        }
        Err(end) => end,
    };
    if keep && part.is_file() {
        tracing::warn!("ota: {}; {} kept to resume", error.reason(), part.display());
    } else {
        let _ = std::fs::remove_file(&part);
    }
    Err(error)
}

/// Every attempt, within the limits; Ok when the server sent the whole file, else the error
/// and whether the partial file is worth keeping.
fn download(
    url: &str,
    shown: &str,
    part: &Path,
    limits: &Limits,
    cancel: &AtomicBool,
    progress: OnProgress<'_>,
) -> Result<(), (OtaError, bool)> {
    let end = |stop| match stop {
        Stop::End { error, keep } => (error, keep),
        Stop::Retry(i) => (
            OtaError::Download {
                msg: shown.to_string(),
                source: Some(i),
            },
            true,
        ),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .timeout_global(Some(limits.timeout + Duration::from_secs(1)))
        .build()
        .into();
    let mut clock = Clock::new(limits, shown, held(part));
    let mut last = None;
    for attempt in 1..=ATTEMPTS {
        match attempt_once(
            &agent, url, shown, part, limits, &mut clock, cancel, progress,
        ) {
            Ok(()) => return Ok(()),
            Err(Stop::Retry(i)) => {
                let text = vigil_core::error::chain(&i);
                tracing::warn!(
                    attempt,
                    "ota: download interrupted: {}; resuming",
                    bounded(&text, super::text::MAX_REASON)
                );
                last = Some(i);
                if attempt == ATTEMPTS {
                    break;
                }
                let pause = Instant::now() + Duration::from_millis(200 * attempt as u64);
                while Instant::now() < pause {
                    clock.check(cancel, held(part)).map_err(end)?;
                    std::thread::sleep(TICK.min(pause.saturating_duration_since(Instant::now())));
                }
            }
            Err(stop) => return Err(end(stop)),
        }
    }
    Err((
        OtaError::Download {
            msg: format!("{shown}: gave up after {ATTEMPTS} attempts"),
            source: last,
        },
        true,
    ))
}

fn held(part: &Path) -> u64 {
    std::fs::metadata(part).map(|m| m.len()).unwrap_or(0)
}

/// The deadline and the rate of one download, across its attempts.
struct Clock<'a> {
    limits: &'a Limits,
    shown: &'a str,
    deadline: Instant,
    /// Start of the current rate window and the bytes held then.
    window: (Instant, u64),
}

impl<'a> Clock<'a> {
    fn new(limits: &'a Limits, shown: &'a str, held: u64) -> Self {
        let now = Instant::now();
        Self {
            limits,
            shown,
            deadline: now + limits.timeout,
            window: (now, held),
        }
    }

    /// Cancelled, past the deadline or below the rate: the reason to stop.
    fn check(&mut self, cancel: &AtomicBool, held: u64) -> Result<(), Stop> {
        if cancel.load(Ordering::Relaxed) {
            return Err(Stop::drop(OtaError::Cancelled));
        }
        let now = Instant::now();
        if now >= self.deadline {
            return Err(Stop::keep(dl(format!(
                "{}: not complete after {} ({held} bytes held; [ota] download_timeout)",
                self.shown,
                humantime::format_duration(self.limits.timeout)
            ))));
        }
        let (since, at) = self.window;
        let span = now.duration_since(since);
        if self.limits.min_rate > 0 && span >= self.limits.rate_window {
            let got = held.saturating_sub(at);
            let need = (self.limits.min_rate as f64 * span.as_secs_f64()) as u64;
            if got < need {
                return Err(Stop::keep(dl(format!(
                    "{}: {got} bytes in the last {:.0} s (expected at least {} bytes/s, [ota] min_rate_bytes_per_s)",
                    self.shown,
                    span.as_secs_f64(),
                    self.limits.min_rate
                ))));
            }
            self.window = (now, held);
        }
        Ok(())
    }
}

/// What the socket's thread hands the job.
enum Msg {
    /// The response's status and headers.
    Head {
        status: u16,
        len: Option<u64>,
        range_start: Option<u64>,
    },
    Data(Vec<u8>),
    End,
    Failed(Interrupted),
    /// An HTTP error status (4xx, 5xx).
    Status(u16),
}

/// Sends the request (with `Range` from `have`) and streams the body into `tx`, on its own
/// thread: ends when the body does, when it fails, or when the job stops listening. `shown`
/// is the URL as errors show it (credentials removed, bounded).
fn request(agent: ureq::Agent, url: String, shown: String, have: u64, tx: SyncSender<Msg>) {
    let mut req = agent.get(&url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::StatusCode(code)) => {
            let _ = tx.send(Msg::Status(code));
            return;
        }
        Err(source) => {
            let _ = tx.send(Msg::Failed(Interrupted::Request { url: shown, source }));
            return;
        }
    };
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let len = header("content-length").and_then(|v| v.parse::<u64>().ok());
    let range_start = header("content-range")
        .as_deref()
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok());
    let head = Msg::Head {
        status: resp.status().as_u16(),
        len,
        range_start,
    };
    if tx.send(head).is_err() {
        return;
    }
    let mut reader = resp.into_body().into_reader();
    let mut got = 0u64;
    loop {
        let mut buf = vec![0u8; 64 << 10];
        let msg = match reader.read(&mut buf) {
            Ok(0) => Msg::End,
            Ok(n) => {
                buf.truncate(n);
                got += n as u64;
                Msg::Data(buf)
            }
            Err(source) => Msg::Failed(Interrupted::Read {
                held: have + got,
                source,
            }),
        };
        let last = !matches!(msg, Msg::Data(_));
        if tx.send(msg).is_err() || last {
            return;
        }
    }
}

/// The next message from the socket's thread, looking at the clock every [`TICK`].
fn next(
    rx: &Receiver<Msg>,
    clock: &mut Clock<'_>,
    cancel: &AtomicBool,
    held: u64,
) -> Result<Msg, Stop> {
    loop {
        clock.check(cancel, held)?;
        match rx.recv_timeout(TICK) {
            Ok(m) => return Ok(m),
            Err(RecvTimeoutError::Timeout) => {}
            // The thread ended without a last word (it panicked): an interruption.
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Stop::Retry(Interrupted::Read {
                    held,
                    source: std::io::Error::other("the download thread ended"),
                }));
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn attempt_once(
    agent: &ureq::Agent,
    url: &str,
    shown: &str,
    part: &Path,
    limits: &Limits,
    clock: &mut Clock<'_>,
    cancel: &AtomicBool,
    progress: OnProgress<'_>,
) -> Result<(), Stop> {
    let max_bytes = limits.max_bytes;
    let have = held(part);
    let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS);
    let (agent, owned, shown_owned) = (agent.clone(), url.to_string(), shown.to_string());
    std::thread::Builder::new()
        .name("ota-download".into())
        .spawn(move || request(agent, owned, shown_owned, have, tx))
        .map_err(|e| Stop::drop(OtaError::io("cannot start the download thread", e)))?;
    let (status, len, range_start) = match next(&rx, clock, cancel, have)? {
        Msg::Head {
            status,
            len,
            range_start,
        } => (status, len, range_start),
        Msg::Status(416) if have > 0 => {
            // Our part is as long as (or longer than) the file: start again.
            let _ = std::fs::remove_file(part);
            return Err(Stop::Retry(Interrupted::RangeNotSatisfiable));
        }
        Msg::Status(code) => return Err(Stop::drop(dl(format!("{shown}: HTTP {code}")))),
        Msg::Failed(i) => return Err(Stop::Retry(i)),
        Msg::Data(_) | Msg::End => unreachable!("the head comes first"),
    };
    let (start, total) = match status {
        206 => {
            if range_start != Some(have) {
                let _ = std::fs::remove_file(part);
                return Err(Stop::Retry(Interrupted::BadRange {
                    got: range_start,
                    asked: have,
                }));
            }
            (have, len.map(|l| l + have))
        }
        200 => (0, len),
        other => return Err(Stop::drop(dl(format!("{shown}: HTTP {other}")))),
    };
    if let Some(t) = total
        && t > max_bytes
    {
        return Err(Stop::drop(dl(format!(
            "{shown}: {t} bytes (expected at most {max_bytes}, [ota] max_bundle_bytes)"
        ))));
    }
    let write_err = |e| Stop::drop(OtaError::io(part.display(), e));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(start > 0)
        .write(true)
        .truncate(start == 0)
        .open(part)
        .map_err(write_err)?;
    let mut held = start;
    progress(held, total);
    let mut last = Instant::now();
    loop {
        match next(&rx, clock, cancel, held)? {
            Msg::Data(chunk) => {
                f.write_all(&chunk).map_err(write_err)?;
                held += chunk.len() as u64;
                if held > max_bytes {
                    return Err(Stop::drop(dl(format!(
                        "{shown}: more than {max_bytes} bytes ([ota] max_bundle_bytes)"
                    ))));
                }
                if last.elapsed() >= Duration::from_millis(200) {
                    progress(held, total);
                    last = Instant::now();
                }
            }
            Msg::End => break,
            Msg::Failed(i) => {
                let _ = f.sync_all();
                return Err(Stop::Retry(i));
            }
            Msg::Head { .. } | Msg::Status(_) => unreachable!("one head per request"),
        }
    }
    f.sync_all().map_err(write_err)?;
    progress(held, total);
    if let Some(t) = total
        && held < t
    {
        return Err(Stop::Retry(Interrupted::Closed { held, total: t }));
    }
    Ok(())
}
