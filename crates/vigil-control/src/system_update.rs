//! Whole-system updates on the appliance image (`cmd/system/update`): Vigil's side.
//!
//! Vigil runs unprivileged in its sandbox and installing a RAUC bundle needs root, so the two
//! meet in files under `<state>/system/update/`:
//! 1. Vigil downloads the bundle named by the command (bounded by the free
//!    space and [`MAX_BUNDLE_BYTES`], resumable, its sha256 checked: `vigil_ota::download`)
//!    as `download/<sha256>.bundle`,
//!    keeps the job (`job.json`: request id, sha256) and writes `request` (the sha256 alone)
//!    last, atomically.
//! 2. The image's installer (root, started by a path unit on `request`) installs that bundle
//!    into the other slot with `rauc install` — RAUC checks the bundle's signature against the
//!    image's keyring — writing its progress to `status` (`installing [percent]`, `rebooting`,
//!    `failed <reason>`), and reboots into the new slot.
//! 3. After the reboot the image confirms the new slot once Vigil has been healthy
//!    ([`crate::slot`]) or returns to the old one, and writes the outcome to `result`
//!    (`good <slot> <time>` or `bad <slot> <time> <reason>`). Vigil, which looks for it at
//!    every health tick, publishes it on `system/status` (retained) and keeps it as
//!    `result.reported`.
//!
//! Progress goes to `system/progress`. The command exists only where the image's unit says it
//! has the installer (`VIGIL_SYSTEM_UPDATES=1` beside `VIGIL_SLOT_BOOT_ID`); elsewhere it is an
//! error reply saying so. Knows nothing of RAUC, GRUB or MQTT packets: it reads and writes files
//! and hands payloads to a publishing function.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vigil_ota::text;

/// The largest bundle taken (a whole root file system, compressed).
pub const MAX_BUNDLE_BYTES: u64 = 4 << 30;
/// Space left free on the state directory's file system after the download (the spool and the
/// journal live there too).
pub const RESERVE_BYTES: u64 = 64 << 20;
/// How long the installer may take to answer a request.
pub const INSTALLER_ANSWER: Duration = Duration::from_secs(60);
/// How long an installation may take.
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(1800);
/// An installer that has not touched its status file for this long is gone (it rewrites the
/// file every second while RAUC runs): a power cut or a reboot during the install.
pub const INSTALLER_SILENT: Duration = Duration::from_secs(120);
/// Most bytes read of a file the installer wrote.
const MAX_STATUS: u64 = 1024;

/// `cmd/system/update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub url: String,
    /// Hex sha256 of the bundle file.
    pub sha256: String,
}

/// One `system/progress` (or, final, `system/status`) message: OTA's progress message (phases
/// downloading, installing, rebooting, done, failed; a bounded `reason`) and the slot.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    #[serde(flatten)]
    pub p: vigil_ota::Progress,
    /// The slot the box runs after the update (`done`) or returned to (`failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

impl Progress {
    pub fn phase(request_id: &str, phase: &'static str) -> Self {
        Self {
            p: vigil_ota::Progress::phase(request_id, phase),
            slot: None,
        }
    }

    fn failed(request_id: &str, reason: &str) -> Self {
        Self {
            p: vigil_ota::Progress::phase(request_id, "failed").with_reason(reason),
            slot: None,
        }
    }

    fn percent(mut self, percent: Option<f64>) -> Self {
        self.p.percent = percent;
        self
    }
}

/// Publishes a message: `true` = the final one (retained on `system/status`).
pub type Publish = Arc<dyn Fn(bool, Vec<u8>) + Send + Sync>;

/// What Vigil keeps of the job across the reboot.
#[derive(Debug, Serialize, Deserialize)]
struct Job {
    request_id: String,
    sha256: String,
}

/// The files of the hand-over, under `<state>/system/update/`.
#[derive(Debug, Clone)]
struct Files {
    dir: PathBuf,
}

impl Files {
    /// Where downloads go (`vigil_ota::download::fetch` keeps at most one partial file there
    /// for a resume and removes everything else).
    fn downloads(&self) -> PathBuf {
        self.dir.join("download")
    }
    fn bundle(&self, sha256: &str) -> PathBuf {
        self.downloads().join(format!("{sha256}.bundle"))
    }
    fn job(&self) -> PathBuf {
        self.dir.join("job.json")
    }
    fn request(&self) -> PathBuf {
        self.dir.join("request")
    }
    fn status(&self) -> PathBuf {
        self.dir.join("status")
    }
    fn result(&self) -> PathBuf {
        self.dir.join("result")
    }

    /// Removes what a finished or failed job left: the request, the status, the job and the
    /// complete download (a partial one stays, for the same command sent again to resume).
    fn clear(&self) {
        for f in [self.request(), self.status(), self.job()] {
            let _ = std::fs::remove_file(f);
        }
        if let Ok(rd) = std::fs::read_dir(self.downloads()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with(".bundle") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// The first line of a small file the installer or the image wrote, if any.
fn read_line(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_STATUS)
        .read_to_string(&mut s)
        .ok()?;
    Some(s.lines().next().unwrap_or("").trim().to_string())
}

/// An installer's `status` line as progress; `None` while it says nothing new.
fn parse_status(id: &str, line: &str) -> Option<Progress> {
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim();
    match word {
        "installing" => {
            Some(Progress::phase(id, "installing").percent(rest.trim_end_matches('%').parse().ok()))
        }
        "rebooting" => Some(Progress::phase(id, "rebooting")),
        "failed" => Some(Progress::failed(
            id,
            &format!(
                "the installer refused the bundle: {}",
                if rest.is_empty() {
                    "no reason given"
                } else {
                    rest
                }
            ),
        )),
        _ => None,
    }
}

/// The image's `result` line (`good <slot> <time>`, `bad <slot> <time> <reason>`) as the final
/// message of the update `id`.
fn parse_result(id: &str, line: &str) -> Progress {
    let mut words = line.splitn(4, ' ');
    let verdict = words.next().unwrap_or("");
    let slot = words.next().map(str::to_string);
    let _time = words.next();
    let reason = words.next().unwrap_or("").trim();
    match verdict {
        "good" => Progress {
            slot,
            ..Progress::phase(id, "done")
        },
        _ => Progress {
            slot,
            ..Progress::failed(
                id,
                &format!(
                    "the new system was not confirmed and the box runs its previous slot again: {}",
                    if reason.is_empty() { line } else { reason }
                ),
            )
        },
    }
}

/// Vigil's side of whole-system updates, where the image has an installer.
pub struct SystemUpdater {
    files: Files,
    busy: Arc<AtomicBool>,
    publish: Publish,
}

impl SystemUpdater {
    /// The updater when this box is an A/B image with the installer (`VIGIL_SYSTEM_UPDATES=1`
    /// and `VIGIL_SLOT_BOOT_ID` set by the image's unit), else why not.
    pub fn on_image(state_dir: &Path, publish: Publish) -> Result<Self, String> {
        let slot = std::env::var("VIGIL_SLOT_BOOT_ID").unwrap_or_default();
        let updates = std::env::var("VIGIL_SYSTEM_UPDATES").unwrap_or_default();
        if slot.trim().is_empty() || updates.trim() != "1" {
            return Err(
                "this box is not an A/B appliance image with the system updater (cargo xtask image; docs/flashing.md): update a box installed from the Debian package with apt".into(),
            );
        }
        let dir = state_dir.join("system/update");
        let downloads = dir.join("download");
        std::fs::create_dir_all(&downloads).map_err(|e| format!("{}: {e}", downloads.display()))?;
        Ok(Self {
            files: Files { dir },
            busy: Arc::new(AtomicBool::new(false)),
            publish,
        })
    }

    /// The outcome of the update that rebooted the box, published once (retained) and kept
    /// as `result.reported`; `None` if there is none.
    pub fn report_result(&self) -> Option<Progress> {
        let line = read_line(&self.files.result())?;
        let job: Option<Job> = std::fs::read(self.files.job())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let id = job.map(|j| j.request_id).unwrap_or_default();
        let p = parse_result(&id, &line);
        tracing::info!(phase = p.p.phase, slot = ?p.slot, reason = ?p.p.reason, "system update: outcome after the reboot");
        if let Ok(b) = serde_json::to_vec(&p) {
            (self.publish)(true, b);
        }
        let _ = std::fs::rename(self.files.result(), self.files.dir.join("result.reported"));
        self.files.clear();
        Some(p)
    }

    /// Starts `req` on a thread of its own; an error if one is under way.
    pub fn start(&self, req: Request, limits: vigil_ota::download::Limits) -> Result<(), String> {
        if self.busy.swap(true, Ordering::SeqCst) {
            return Err("a system update is under way (its progress is on system/progress)".into());
        }
        let id = req.request_id.clone();
        self.spawn(id, move |files, send| run(files, &req, &limits, send))
    }

    /// After Vigil restarted while the installer works (the job is on disk, the installer's
    /// last word is not): goes on following it. Nothing to do after the reboot (`rebooting`
    /// said: the outcome comes as `result`) or without a job.
    pub fn resume(&self) {
        let Some(job) = std::fs::read(self.files.job())
            .ok()
            .and_then(|b| serde_json::from_slice::<Job>(&b).ok())
        else {
            return;
        };
        let line = read_line(&self.files.status()).unwrap_or_default();
        let waiting = self.files.request().exists() || line.starts_with("installing");
        if !waiting || self.files.result().exists() || self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::info!(request_id = %text::bounded(&job.request_id, text::MAX_NAME), "system update: following the installer again after a restart");
        let id = job.request_id.clone();
        if let Err(e) = self.spawn(id.clone(), move |files, send| {
            watch_installer(files, &id, send)
        }) {
            tracing::warn!("{e}");
        }
    }

    /// Runs `job` on the update's thread: its failure is published and the job's files
    /// removed; the updater is free again when it ends.
    fn spawn(
        &self,
        id: String,
        job: impl FnOnce(&Files, &dyn Fn(&Progress)) -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        let (files, busy, publish) = (self.files.clone(), self.busy.clone(), self.publish.clone());
        let spawned = std::thread::Builder::new()
            .name("system-update".into())
            .spawn(move || {
                let send = |p: &Progress| {
                    if let Ok(b) = serde_json::to_vec(p) {
                        let last = matches!(p.p.phase, "failed" | "rebooting");
                        (publish)(last, b);
                    }
                };
                if let Err(why) = job(&files, &send) {
                    tracing::warn!(request_id = %text::bounded(&id, text::MAX_NAME), "system update failed: {why}");
                    send(&Progress::failed(&id, &why));
                    files.clear();
                }
                busy.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.busy.store(false, Ordering::SeqCst);
            return Err(format!("cannot start the update's thread: {e}"));
        }
        Ok(())
    }
}

/// Download → hand-over → the installer's progress, until it reboots the box (`Ok`) or fails.
fn run(
    files: &Files,
    req: &Request,
    limits: &vigil_ota::download::Limits,
    send: &dyn Fn(&Progress),
) -> Result<(), String> {
    files.clear();
    let free = vigil_dataplane::ffi::statvfs::available_bytes(&files.dir)
        .map_err(|e| format!("{}: {e}", files.dir.display()))?;
    let room = free.saturating_sub(RESERVE_BYTES).min(MAX_BUNDLE_BYTES);
    if room == 0 {
        return Err(format!(
            "no room for the bundle: {free} bytes free on the state directory's file system, {RESERVE_BYTES} kept free"
        ));
    }
    let limits = vigil_ota::download::Limits {
        max_bytes: room.min(limits.max_bytes),
        ..limits.clone()
    };
    tracing::info!(url = %text::bounded(&vigil_core::redact::redact(&req.url), text::MAX_NAME), max_bytes = limits.max_bytes, "system update: downloading");
    let mut last = Instant::now() - Duration::from_secs(1);
    let mut on_progress = |bytes: u64, total: Option<u64>| {
        if last.elapsed() >= Duration::from_millis(500) || total == Some(bytes) {
            last = Instant::now();
            let mut p = Progress::phase(&req.request_id, "downloading")
                .percent(total.map(|t| (bytes as f64 * 1000.0 / t.max(1) as f64).round() / 10.0));
            (p.p.bytes, p.p.total) = (Some(bytes), total);
            send(&p);
        }
    };
    let never = AtomicBool::new(false);
    let file = vigil_ota::download::fetch(
        &req.url,
        &req.sha256,
        &files.downloads(),
        &limits,
        &never,
        &mut on_progress,
    )
    .map_err(|e| e.reason())?;
    debug_assert_eq!(file, files.bundle(&req.sha256));
    let job = serde_json::to_vec(&Job {
        request_id: req.request_id.clone(),
        sha256: req.sha256.clone(),
    })
    .map_err(|e| e.to_string())?;
    write_atomic(&files.job(), &job)?;
    let _ = std::fs::remove_file(files.status());
    write_atomic(&files.request(), format!("{}\n", req.sha256).as_bytes())?;
    tracing::info!(
        "system update: bundle downloaded and its sha256 checked; handed to the installer"
    );
    send(&Progress::phase(&req.request_id, "installing"));
    watch_installer(files, &req.request_id, send)
}

/// The installer's answers, until it reboots the box (`Ok`) or fails.
fn watch_installer(files: &Files, id: &str, send: &dyn Fn(&Progress)) -> Result<(), String> {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let line = read_line(&files.status()).unwrap_or_default();
        if line.is_empty() && started.elapsed() > INSTALLER_ANSWER {
            return Err(format!(
                "no answer from the image's installer within {} s (is vigil-system-update.path active?)",
                INSTALLER_ANSWER.as_secs()
            ));
        }
        let silent = std::fs::metadata(files.status())
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d > INSTALLER_SILENT);
        if silent && started.elapsed() > INSTALLER_SILENT && line.starts_with("installing") {
            return Err(format!(
                "the installer stopped answering for {} s during the install (a power cut or a reboot?); the box runs its previous slot",
                INSTALLER_SILENT.as_secs()
            ));
        }
        if started.elapsed() > INSTALL_TIMEOUT {
            return Err(format!(
                "the installation did not end within {} s",
                INSTALL_TIMEOUT.as_secs()
            ));
        }
        if line == said {
            continue;
        }
        said = line.clone();
        match parse_status(id, &line) {
            Some(p) if p.p.phase == "failed" => {
                return Err(p.p.reason.unwrap_or_default());
            }
            Some(p) if p.p.phase == "rebooting" => {
                tracing::info!("system update: installed; the box reboots into the new slot");
                send(&p);
                return Ok(());
            }
            Some(p) => send(&p),
            None => {}
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_status_lines_become_progress() {
        let p = parse_status("r1", "installing 42%").unwrap();
        assert_eq!((p.p.phase, p.p.percent), ("installing", Some(42.0)));
        assert_eq!(parse_status("r1", "installing").unwrap().p.percent, None);
        assert_eq!(
            parse_status("r1", "rebooting").unwrap().p.phase,
            "rebooting"
        );
        let f = parse_status("r1", "failed signature verification failed").unwrap();
        assert_eq!(f.p.phase, "failed");
        assert!(
            f.p.reason
                .unwrap()
                .contains("signature verification failed")
        );
        assert!(parse_status("r1", "").is_none());
        assert!(parse_status("r1", "something else").is_none());
        // A reason of any length is cut to what MQTT takes.
        let long = format!("failed {}", "x".repeat(100_000));
        assert!(parse_status("r1", &long).unwrap().p.reason.unwrap().len() <= 1100);
    }

    #[test]
    fn the_images_verdict_becomes_the_final_message() {
        let good = parse_result("r1", "good B 2026-12-07T13:00:00Z");
        assert_eq!((good.p.phase, good.slot.as_deref()), ("done", Some("B")));
        let bad = parse_result(
            "r1",
            "bad B 2026-12-07T13:00:00Z Vigil was not healthy within 600s",
        );
        assert_eq!((bad.p.phase, bad.slot.as_deref()), ("failed", Some("B")));
        assert!(bad.p.reason.unwrap().contains("not healthy within 600s"));
        let odd = parse_result("r1", "garbage");
        assert_eq!(odd.p.phase, "failed");
    }

    #[test]
    fn off_the_image_the_command_says_why() {
        // Neither variable is set in the test process.
        let publish: Publish = Arc::new(|_, _| {});
        let e = SystemUpdater::on_image(&std::env::temp_dir(), publish)
            .err()
            .expect("not an image");
        assert!(e.contains("not an A/B appliance image"), "{e}");
    }
}
