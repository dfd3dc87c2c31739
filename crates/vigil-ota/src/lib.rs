//! Signed over-the-air updates of models and config (`ota/README.md`).
//!
//! A bundle ([`bundle`]) is one tar: a signed [`manifest`] and the files it lists. On
//! `cmd/ota/apply` a job thread ([`run_job`]) downloads it ([`download`], resumable), checks the
//! signature, expiry, sequence and target before reading any file, streams every file into a
//! staging directory while hashing it, makes it a slot ([`store`]) and validates the config the
//! device would run with it; only then does the supervisor switch `current` to it (one atomic
//! rename) and apply the new config through `Plan::apply`. A probation window follows
//! ([`Probation`]); a failure rolls back to the previous set.
//!
//! Knows nothing of MQTT topics or packets (it produces JSON the supervisor hands to the link),
//! nor of how plans are built (the supervisor applies the [`Config`] this module validates).

#![forbid(unsafe_code)]

pub mod agent;
pub mod bundle;
pub mod download;
pub mod manifest;
pub mod store;

use manifest::{DeviceFacts, Manifest};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use store::{SlotInfo, State, Store};
use vigil_core::config::{Config, ConfigErrors};
use vigil_core::facts::BoxFacts;

/// Why an update was refused or failed; `kind()` is the short code published on MQTT.
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("signature: {0}")]
    Signature(String),
    #[error("{0}")]
    Manifest(String),
    #[error("expired: the bundle expired at {0}")]
    Expired(String),
    #[error("target: {0}")]
    Target(String),
    #[error("sequence: {0}")]
    Sequence(String),
    #[error("digest: {0}")]
    Digest(String),
    #[error("download: {0}")]
    Download(String),
    #[error("config: {0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
}

impl OtaError {
    pub fn kind(&self) -> &'static str {
        match self {
            OtaError::Bundle(_) => "bundle",
            OtaError::Signature(_) => "signature",
            OtaError::Manifest(_) => "manifest",
            OtaError::Expired(_) => "expired",
            OtaError::Target(_) => "target",
            OtaError::Sequence(_) => "sequence",
            OtaError::Digest(_) => "digest",
            OtaError::Download(_) => "download",
            OtaError::Config(_) => "config",
            OtaError::Io(_) => "io",
        }
    }
}

/// Test-only fault hook: with `VIGIL_TEST_OTA_PAUSE_MS=N`, the job sleeps N ms at each step
/// (each 64 KiB staged, each phase, just before the switch), so that a test's SIGKILL can land
/// in every phase. Compiled only with the `test-hooks` feature (the tests' build); a release
/// build has an empty function here whatever the environment says.
#[cfg(feature = "test-hooks")]
pub fn test_hook_pause(_step: &str) {
    static PAUSE: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let pause = PAUSE.get_or_init(|| {
        std::env::var("VIGIL_TEST_OTA_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(d) = pause {
        std::thread::sleep(*d);
    }
}

/// Without the `test-hooks` feature: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn test_hook_pause(_step: &str) {}

/// The OTA directory of a config.
pub fn dir_of(cfg: &Config) -> PathBuf {
    cfg.ota.dir(&cfg.storage)
}

/// The config the device runs: its own file, with the active set's `config.toml` overlay
/// merged over it when there is one. Used at start-up and by every reload.
pub fn load_effective(path: &Path, facts: &dyn BoxFacts) -> Result<Config, ConfigErrors> {
    let base = vigil_core::config::load(path, facts)?;
    let link = dir_of(&base).join("current");
    match std::fs::read_link(&link) {
        Ok(target) => {
            let slot = dir_of(&base).join(target);
            load_for_slot(path, Some(&slot), base, facts)
        }
        Err(_) => Ok(base),
    }
}

/// The config with `slot` active (None: the device's own), `base` being the file loaded alone.
fn load_for_slot(
    path: &Path,
    slot: Option<&Path>,
    base: Config,
    facts: &dyn BoxFacts,
) -> Result<Config, ConfigErrors> {
    match slot.map(|s| s.join("config.toml")) {
        Some(overlay) if overlay.is_file() => {
            vigil_core::config::load_overlaid(path, &overlay, facts)
        }
        _ => Ok(base),
    }
}

/// The trusted keys of a config (already validated).
pub fn trusted_keys(cfg: &Config) -> Vec<ed25519_dalek::VerifyingKey> {
    cfg.ota
        .trusted_keys
        .iter()
        .filter_map(|k| manifest::parse_public_key(k).ok())
        .collect()
}

/// `cmd/ota/apply`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyRequest {
    pub request_id: String,
    pub url: String,
    /// Hex sha256 of the whole bundle file.
    pub sha256: String,
    /// Allow a lower sequence than the active one (a rollback to an older signed bundle).
    pub allow_rollback: bool,
}

/// One `ota/progress` message.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub request_id: String,
    /// downloading, verifying, staging, activating, probation, done, failed, rolled_back.
    pub phase: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub time: String,
}

impl Progress {
    pub fn phase(request_id: &str, phase: &'static str) -> Self {
        Self {
            request_id: request_id.to_string(),
            phase,
            percent: None,
            bytes: None,
            total: None,
            sequence: None,
            error: None,
            reason: None,
            time: vigil_core::events::now_rfc3339(),
        }
    }

    pub fn failed(request_id: &str, phase: &'static str, e: &OtaError) -> Self {
        Self {
            error: Some(e.kind()),
            reason: Some(e.to_string()),
            ..Self::phase(request_id, phase)
        }
    }
}

/// What the job thread tells the supervisor.
pub enum JobEvent {
    Progress(Progress),
    /// Downloaded, verified, staged as a slot and its config validated: ready to activate.
    Staged {
        request_id: String,
        info: SlotInfo,
    },
    Failed {
        request_id: String,
        error: OtaError,
    },
}

/// What a job needs, taken from the running config and state when the command came.
pub struct JobContext {
    pub config_path: PathBuf,
    pub config: Config,
    pub active: Option<SlotInfo>,
    pub events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    /// What this box offers (GPU, ONNX Runtime), for the target checks and the config check.
    pub facts: Arc<dyn BoxFacts>,
}

/// Download → verify → stage → validate, on the calling (job) thread. Never touches the active
/// set: on any failure the staging directory and the download are removed. A panic is reported
/// as a failure, so the agent is never left busy.
pub fn run_job(ctx: JobContext, req: ApplyRequest) {
    let id = req.request_id.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&ctx, &req)))
        .unwrap_or_else(|_| {
            Err(OtaError::Io(
                "the OTA job panicked (a bug; see the log)".into(),
            ))
        });
    let _ = ctx.events.send(match outcome {
        Ok(info) => JobEvent::Staged {
            request_id: id,
            info,
        },
        Err(error) => JobEvent::Failed {
            request_id: id,
            error,
        },
    });
}

fn job(ctx: &JobContext, req: &ApplyRequest) -> Result<SlotInfo, OtaError> {
    let send = |p: Progress| {
        let _ = ctx.events.send(JobEvent::Progress(p));
    };
    let cfg = &ctx.config;
    let store = Store { dir: dir_of(cfg) };
    let trusted = trusted_keys(cfg);
    if trusted.is_empty() {
        return Err(OtaError::Signature(
            "no trusted keys configured ([ota] trusted_keys is empty)".into(),
        ));
    }
    // Downloading.
    tracing::info!(url = %vigil_core::redact::redact(&req.url), "ota: phase downloading");
    let mut on_progress = |bytes: u64, total: Option<u64>| {
        send(Progress {
            percent: total.map(|t| (bytes as f64 * 1000.0 / t.max(1) as f64).round() / 10.0),
            bytes: Some(bytes),
            total,
            ..Progress::phase(&req.request_id, "downloading")
        })
    };
    let file = download::fetch(
        &req.url,
        &req.sha256,
        &store.downloads(),
        cfg.ota.max_bundle_bytes,
        &mut on_progress,
    )?;
    test_hook_pause("downloaded");
    let result = stage(ctx, req, &store, &trusted, &file, &send);
    // The bundle is either staged or refused: the download is not needed any more.
    let _ = std::fs::remove_file(&file);
    result
}

fn stage(
    ctx: &JobContext,
    req: &ApplyRequest,
    store: &Store,
    trusted: &[ed25519_dalek::VerifyingKey],
    file: &Path,
    send: &dyn Fn(Progress),
) -> Result<SlotInfo, OtaError> {
    let cfg = &ctx.config;
    tracing::info!("ota: phase verifying");
    send(Progress::phase(&req.request_id, "verifying"));
    let f =
        std::fs::File::open(file).map_err(|e| OtaError::Io(format!("{}: {e}", file.display())))?;
    let facts = DeviceFacts::of(&cfg.ota.device_class, ctx.facts.as_ref());
    let mut slot = None;
    let policy = |m: &Manifest| {
        check_policy(m, &facts, ctx.active.as_ref(), req.allow_rollback)?;
        slot = Some(Store::slot_name(m, &req.sha256));
        test_hook_pause("verified");
        Ok(())
    };
    let staging = store.staging_dir(&req.sha256);
    let _ = std::fs::remove_dir_all(&staging);
    let mut said = false;
    let verified = bundle::read_bundle(
        std::io::BufReader::new(f),
        trusted,
        cfg.ota.max_bundle_bytes,
        policy,
        Some(&staging),
        |entry| {
            if !said {
                tracing::info!("ota: phase staging");
                said = true;
            }
            send(Progress {
                reason: Some(format!("staging {}", entry.path)),
                ..Progress::phase(&req.request_id, "staging")
            });
        },
    )
    .and_then(|v| {
        // The config the device would run with this set, validated on the staged copy before
        // it becomes a slot: a refusal then never touches a slot the state refers to (the same
        // bundle installed again by an allowed rollback replaces the previous slot's copy).
        let base = vigil_core::config::load(&ctx.config_path, ctx.facts.as_ref())
            .map_err(|e| OtaError::Config(e.to_string()))?;
        load_for_slot(&ctx.config_path, Some(&staging), base, ctx.facts.as_ref())
            .map_err(|e| OtaError::Config(e.to_string()))?;
        let slot = slot.clone().unwrap_or_default();
        store.commit_staging(&staging, &slot).map(|_| (v, slot))
    });
    let (verified, slot) = match verified {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    Ok(SlotInfo {
        slot,
        sequence: verified.manifest.sequence,
        version: verified.manifest.version.clone(),
    })
}

/// Expiry, sequence and target: everything decided from the manifest alone.
pub fn check_policy(
    m: &Manifest,
    facts: &DeviceFacts,
    active: Option<&SlotInfo>,
    allow_rollback: bool,
) -> Result<(), OtaError> {
    m.check_expiry(std::time::SystemTime::now())?;
    if let Some(a) = active {
        if m.sequence == a.sequence {
            return Err(OtaError::Sequence(format!(
                "sequence {} is the active one (version {})",
                m.sequence, a.version
            )));
        }
        if m.sequence < a.sequence && !allow_rollback {
            return Err(OtaError::Sequence(format!(
                "sequence {} is older than the active {} (a downgrade; send allow_rollback: true to install an older signed bundle)",
                m.sequence, a.sequence
            )));
        }
    }
    m.check_target(facts)
}

/// An open probation window: health must hold and each watched model must produce
/// `min_good` well-formed outputs before `deadline`.
pub struct Probation {
    pub request_id: String,
    pub deadline: Instant,
    pub watch: Vec<(String, Arc<vigil_core::health::OutputCounters>)>,
    pub min_good: u64,
}

/// Malformed outputs that fail a probation at once.
const MAX_BAD: u64 = 3;

/// What a probation check concluded.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Pending,
    Passed,
    Failed(String),
}

impl Probation {
    /// Checks the window now; `health` is the registry's verdict and summary.
    pub fn check(&self, healthy: bool, summary: &str, now: Instant) -> Verdict {
        for (m, c) in &self.watch {
            let bad = c.bad.load(Ordering::Relaxed);
            if bad >= MAX_BAD {
                return Verdict::Failed(format!(
                    "model {m}: {bad} inferences failed or returned malformed outputs (non-finite values or wrong shapes)"
                ));
            }
        }
        if !healthy {
            return Verdict::Failed(format!("health did not hold: {summary}"));
        }
        if now < self.deadline {
            return Verdict::Pending;
        }
        for (m, c) in &self.watch {
            let good = c.good.load(Ordering::Relaxed);
            if good < self.min_good {
                return Verdict::Failed(format!(
                    "model {m}: {good} well-formed inferences on live frames within the probation window (expected at least {})",
                    self.min_good
                ));
            }
        }
        Verdict::Passed
    }
}

/// The retained `ota/status` payload.
pub fn status_json(state: &State, busy: bool, probation_left: Option<Duration>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "time": vigil_core::events::now_rfc3339(),
        "busy": busy,
        "active": state.active,
        "previous": state.previous,
        "probation": state.probation.as_ref().map(|p| serde_json::json!({
            "slot": p.slot,
            "remaining_s": probation_left.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        })),
        "last": state.last,
    }))
    .unwrap_or_default()
}

/// A result for `state.last`.
pub fn last_result(
    result: &str,
    sequence: Option<u64>,
    error: Option<&str>,
    reason: Option<String>,
) -> store::LastResult {
    store::LastResult {
        result: result.to_string(),
        sequence,
        error: error.map(str::to_string),
        reason,
        time: vigil_core::events::now_rfc3339(),
    }
}
