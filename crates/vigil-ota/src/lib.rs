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
//! Everything an outsider controls is bounded: tar headers before they are read ([`bundle`]),
//! the download's size, time, rate and disk ([`download`]), and every text that reaches MQTT
//! or the log ([`text`]); `cmd/ota/cancel` stops a job ([`agent::Agent::cancel`]), and a key
//! floor keeps a revoked key revoked ([`check_key_floor`]).
//!
//! Knows nothing of MQTT topics or packets (it produces JSON the supervisor hands to the link),
//! nor of how plans are built (the supervisor applies the [`Config`] this module validates).

#![forbid(unsafe_code)]

pub mod agent;
pub mod bundle;
pub mod download;
pub mod manifest;
pub mod store;
pub mod text;

use manifest::{DeviceFacts, Manifest};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use store::{SlotInfo, State, Store};
use vigil_core::config::{Config, ConfigErrors};
use vigil_core::facts::BoxFacts;

/// Why an update was refused or failed; `kind()` is the short code published on MQTT and
/// [`OtaError::reason`] the text (the error and its sources on one line, bounded).
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    /// The archive is not a bundle; `source` when reading it failed.
    #[error("bundle: {msg}")]
    Bundle {
        msg: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("signature: {0}")]
    Signature(String),
    /// `manifest.json` or one of its fields; `source` when a parser refused it.
    #[error("{msg}")]
    Manifest {
        msg: String,
        #[source]
        source: Option<ManifestCause>,
    },
    #[error("expired: the bundle expired at {0}")]
    Expired(String),
    #[error("target: {0}")]
    Target(String),
    #[error("sequence: {0}")]
    Sequence(String),
    #[error("digest: {0}")]
    Digest(String),
    /// The download failed; `source` is the last interruption when there was one.
    #[error("download: {msg}")]
    Download {
        msg: String,
        #[source]
        source: Option<download::Interrupted>,
    },
    /// The config the device would run with the set does not load.
    #[error("config")]
    Config(#[source] ConfigErrors),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// `state.json` could not be read back.
    #[error("{}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the OTA job panicked (a bug; see the log)")]
    Panicked,
    /// `cmd/ota/cancel` stopped the job.
    #[error("cancelled: the update was cancelled by cmd/ota/cancel")]
    Cancelled,
}

/// What refused a manifest field.
#[derive(Debug, thiserror::Error)]
pub enum ManifestCause {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Time(#[from] humantime::TimestampError),
    #[error(transparent)]
    Path(#[from] manifest::PathError),
}

impl OtaError {
    pub fn kind(&self) -> &'static str {
        match self {
            OtaError::Bundle { .. } => "bundle",
            OtaError::Signature(_) => "signature",
            OtaError::Manifest { .. } => "manifest",
            OtaError::Expired(_) => "expired",
            OtaError::Target(_) => "target",
            OtaError::Sequence(_) => "sequence",
            OtaError::Digest(_) => "digest",
            OtaError::Download { .. } => "download",
            OtaError::Config(_) => "config",
            OtaError::Io { .. } | OtaError::State { .. } | OtaError::Panicked => "io",
            OtaError::Cancelled => "cancelled",
        }
    }

    /// The error and its sources on one line (`kind: what: cause`), at most
    /// [`text::MAX_REASON`] bytes: what `ota/progress`, `ota/status` and the log show.
    pub fn reason(&self) -> String {
        text::bounded(&vigil_core::error::chain(self), text::MAX_REASON)
    }

    /// A refusal of the bundle's layout.
    pub(crate) fn bundle(msg: impl Into<String>) -> Self {
        OtaError::Bundle {
            msg: msg.into(),
            source: None,
        }
    }

    /// A refusal of the manifest.
    pub(crate) fn manifest(msg: impl Into<String>) -> Self {
        OtaError::Manifest {
            msg: msg.into(),
            source: None,
        }
    }

    /// A file-system failure on `what` (a path, usually).
    pub(crate) fn io(what: impl std::fmt::Display, source: std::io::Error) -> Self {
        OtaError::Io {
            what: what.to_string(),
            source,
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
    /// downloading, verifying, staging, activating, probation, done, failed, rolled_back,
    /// cancelled.
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
    /// At most [`text::MAX_REASON`] bytes (set it with [`Progress::with_reason`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub time: String,
}

impl Progress {
    pub fn phase(request_id: &str, phase: &'static str) -> Self {
        Self {
            request_id: text::bounded(request_id, text::MAX_NAME),
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

    /// The same message with `reason`, bounded.
    pub fn with_reason(self, reason: &str) -> Self {
        Self {
            reason: Some(text::bounded(reason, text::MAX_REASON)),
            ..self
        }
    }

    pub fn failed(request_id: &str, phase: &'static str, e: &OtaError) -> Self {
        Self {
            error: Some(e.kind()),
            ..Self::phase(request_id, phase).with_reason(&e.reason())
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
    /// The highest sequence this box ever committed (`state.json` `key_floor`): a set below it
    /// may not trust a key the running config does not ([`check_key_floor`]).
    pub key_floor: u64,
    pub events: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    /// What this box offers (GPU, ONNX Runtime), for the target checks and the config check.
    pub facts: Arc<dyn BoxFacts>,
    /// Set by `cmd/ota/cancel`: the job stops at its next check (at least every 100 ms while
    /// it downloads, every 64 KiB while it stages) and fails with [`OtaError::Cancelled`].
    pub cancel: Arc<AtomicBool>,
}

/// Download → verify → stage → validate, on the calling (job) thread. Never touches the active
/// set: on any failure the staging directory is removed, and the download too unless a later
/// identical command can resume it ([`download::fetch`]). A panic is reported as a failure, so
/// the agent is never left busy.
pub fn run_job(ctx: JobContext, req: ApplyRequest) {
    let id = req.request_id.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&ctx, &req)))
        .unwrap_or(Err(OtaError::Panicked));
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
    tracing::info!(url = %text::bounded(&vigil_core::redact::redact(&req.url), text::MAX_NAME), "ota: phase downloading");
    let mut on_progress = |bytes: u64, total: Option<u64>| {
        send(Progress {
            percent: total.map(|t| (bytes as f64 * 1000.0 / t.max(1) as f64).round() / 10.0),
            bytes: Some(bytes),
            total,
            ..Progress::phase(&req.request_id, "downloading")
        })
    };
    let limits = download::Limits {
        max_bytes: cfg.ota.max_bundle_bytes,
        timeout: cfg.ota.download_timeout.0,
        min_rate: cfg.ota.min_rate_bytes_per_s,
        rate_window: download::RATE_WINDOW,
    };
    let file = download::fetch(
        &req.url,
        &req.sha256,
        &store.downloads(),
        &limits,
        &ctx.cancel,
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
    let f = std::fs::File::open(file).map_err(|e| OtaError::io(file.display(), e))?;
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
    let verified = bundle::read_bundle_cancellable(
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
            send(
                Progress::phase(&req.request_id, "staging")
                    .with_reason(&format!("staging {}", entry.path)),
            );
        },
        &ctx.cancel,
    )
    .and_then(|v| {
        // The config the device would run with this set, validated on the staged copy before
        // it becomes a slot: a refusal then never touches a slot the state refers to (the same
        // bundle installed again by an allowed rollback replaces the previous slot's copy).
        check_staged(
            &ctx.config_path,
            &staging,
            ctx.facts.as_ref(),
            v.manifest.sequence,
            &cfg.ota.trusted_keys,
            ctx.key_floor,
        )?;
        if ctx.cancel.load(Ordering::Relaxed) {
            return Err(OtaError::Cancelled);
        }
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

/// The box's checks of a set staged in `staged` beyond the bundle's own (signature, policy,
/// files), the same for `vigil ota verify --config`: the config the device would run with it
/// loads (the overlay's own checks included: no table the device owns, model paths inside the
/// set), and the set, if older than the highest committed sequence, trusts no key the running
/// config does not ([`check_key_floor`]). Returns that config.
pub fn check_staged(
    config_path: &Path,
    staged: &Path,
    facts: &dyn BoxFacts,
    sequence: u64,
    running_keys: &[String],
    key_floor: u64,
) -> Result<Config, OtaError> {
    let base = vigil_core::config::load(config_path, facts).map_err(OtaError::Config)?;
    let cfg = load_for_slot(config_path, Some(staged), base, facts).map_err(OtaError::Config)?;
    check_key_floor(sequence, &cfg.ota.trusted_keys, running_keys, key_floor)?;
    Ok(cfg)
}

/// A revoked key stays revoked: a set whose sequence is below `key_floor` (the highest
/// sequence this box ever committed) may not trust a key that `running` (the trusted keys of
/// the running config) does not. A newer set (at or above the floor) may change the keys; an
/// older one may keep or narrow them. See `ota/README.md`, "Key rotation and revocation".
pub fn check_key_floor(
    sequence: u64,
    keys: &[String],
    running: &[String],
    key_floor: u64,
) -> Result<(), OtaError> {
    if sequence >= key_floor {
        return Ok(());
    }
    let bytes = |k: &String| manifest::parse_public_key(k).ok().map(|k| k.to_bytes());
    let running: HashSet<[u8; 32]> = running.iter().filter_map(bytes).collect();
    let added: Vec<&String> = keys
        .iter()
        .filter(|k| bytes(k).is_none_or(|b| !running.contains(&b)))
        .collect();
    match added.first() {
        None => Ok(()),
        Some(first) => Err(OtaError::Sequence(format!(
            "sequence {sequence} is below {key_floor}, the highest this device committed, and its config trusts {} key(s) the running config does not ({}{}): an older set may not add to [ota] trusted_keys (a revoked key stays revoked; send a newer bundle to change the keys)",
            added.len(),
            text::quote(first),
            if added.len() > 1 { ", …" } else { "" },
        ))),
    }
}

/// Expiry, sequence and target: everything decided from the manifest alone.
pub fn check_policy(
    m: &Manifest,
    facts: &DeviceFacts,
    active: Option<&SlotInfo>,
    allow_rollback: bool,
) -> Result<(), OtaError> {
    check_manifest(m, std::time::SystemTime::now())?;
    if let Some(a) = active {
        if m.sequence == a.sequence {
            return Err(OtaError::Sequence(format!(
                "sequence {} is the active one (version {})",
                m.sequence,
                text::quote(&a.version)
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

/// What a manifest must hold on any device at `now`, whatever is installed: a sequence under
/// [`manifest::MAX_SEQUENCE`], a version of at most [`manifest::MAX_VERSION`] bytes, not
/// expired, created a valid date not after it expires nor ahead of this clock by more than
/// [`manifest::MAX_CLOCK_SKEW`]. `vigil ota verify` runs it without a device config.
pub fn check_manifest(m: &Manifest, now: std::time::SystemTime) -> Result<(), OtaError> {
    m.check_sequence()?;
    m.check_expiry(now)?;
    m.check_created(now)
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

/// The retained `ota/status` payload: a few hundred bytes whatever the state holds (the reason
/// and the versions are bounded here too, also when an older build wrote them).
pub fn status_json(state: &State, busy: bool, probation_left: Option<Duration>) -> Vec<u8> {
    let slot = |s: &Option<SlotInfo>| {
        s.as_ref().map(|s| SlotInfo {
            slot: text::bounded(&s.slot, text::MAX_NAME),
            sequence: s.sequence,
            version: text::bounded(&s.version, manifest::MAX_VERSION),
        })
    };
    let last = state.last.as_ref().map(|l| store::LastResult {
        result: text::bounded(&l.result, text::MAX_NAME),
        sequence: l.sequence,
        error: l.error.as_deref().map(|e| text::bounded(e, text::MAX_NAME)),
        reason: l
            .reason
            .as_deref()
            .map(|r| text::bounded(r, text::MAX_REASON)),
        time: text::bounded(&l.time, text::MAX_NAME),
    });
    serde_json::to_vec(&serde_json::json!({
        "time": vigil_core::events::now_rfc3339(),
        "busy": busy,
        "active": slot(&state.active),
        "previous": slot(&state.previous),
        "probation": state.probation.as_ref().map(|p| serde_json::json!({
            "slot": text::bounded(&p.slot, text::MAX_NAME),
            "remaining_s": probation_left.map(|d| (d.as_secs_f64() * 10.0).round() / 10.0),
        })),
        "last": last,
    }))
    .unwrap_or_default()
}

/// A result for `state.last` (the reason bounded).
pub fn last_result(
    result: &str,
    sequence: Option<u64>,
    error: Option<&str>,
    reason: Option<&str>,
) -> store::LastResult {
    store::LastResult {
        result: result.to_string(),
        sequence,
        error: error.map(str::to_string),
        reason: reason.map(|r| text::bounded(r, text::MAX_REASON)),
        time: vigil_core::events::now_rfc3339(),
    }
}
