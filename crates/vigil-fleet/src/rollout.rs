//! Staged OTA rollouts: a signed bundle sent to the fleet wave by wave through the boxes' own
//! `cmd/ota/apply`, watched on their `ota/progress`, paused when a wave fails.
//!
//! - A [`Release`] is a bundle URL and its sha256, checked by the console before any box sees
//!   it: downloaded (bounded), its digest, signature and every file verified with Vigil's own
//!   OTA reader against the console's `--ota-key`s; its manifest's version, sequence and target
//!   kept.
//! - A [`Rollout`] sends one release to the boxes matching a [`Spec`]: a canary wave of
//!   `canary` boxes, then waves up to each of `percents` of them (cumulative), then all. A
//!   wave starts when the previous one is done (every box of it succeeded, failed, rolled back
//!   or skipped) and has baked `bake_s`. The boxes are put in waves in a shuffled order fixed
//!   by the rollout's id (not by their names, so the same boxes are not always the canary).
//! - Each box goes pending → sent → downloading → probation → succeeded / failed /
//!   rolled back / skipped. A box offline `offline_deadline_s` after its wave started is
//!   skipped, not failed; one that says nothing for `stall_s` while updating has failed; a box
//!   that refuses the bundle for its target or sequence is skipped with the box's reason.
//! - When more than `failure_threshold_pct` % of a wave failed or rolled back, the rollout
//!   pauses: no further box is sent the update. *Resume* accepts the failures seen so far and
//!   goes on; *retry failed* sends the update again to the boxes that failed; *abort* stops
//!   (boxes not yet sent are skipped; a box already updating finishes on its own).
//! - The whole state of a rollout is one document in the store ([`crate::store::Store::put_doc`],
//!   kind `rollout`), saved at each change: it survives a console restart, and a restarted
//!   console goes on where it was (a box that was sent the update keeps its request id, so its
//!   later progress still counts).
//!
//! [`Rollout`] is the arithmetic (no I/O, unit-tested here); [`run`] is the task that drives
//! it: the only writer of rollout documents, fed by the ingest (progress, replies) and the
//! pages (create, pause, resume, abort, retry) over one channel.

use crate::ingest::now_ms;
use crate::store::{DeviceRow, Store};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use vigil_core::wire::{OtaProgressMsg, OtaStatusMsg};

/// Store kinds of the documents this module keeps.
pub const RELEASE: &str = "release";
pub const ROLLOUT: &str = "rollout";
/// The retained `ota/status` of each box (kept by the ingest).
pub const OTA_STATUS: &str = "ota_status";

/// Most boxes in one rollout (its document stays below a few MiB).
pub const MAX_BOXES: usize = 20_000;
/// Most bytes of a detail kept per box.
const MAX_DETAIL: usize = 300;

/// A bundle checked by the console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub id: String,
    pub url: String,
    pub sha256: String,
    pub version: String,
    pub sequence: u64,
    /// The manifest's `target` as the bundle states it (JSON).
    pub target: serde_json::Value,
    pub bytes: u64,
    pub files: usize,
    pub created_ms: i64,
    pub created_by: String,
}

/// What a rollout targets and how it proceeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Boxes whose id matches: `*` stands for any run of characters (`*` alone: every box);
    /// several patterns separated by commas.
    pub devices: String,
    /// Boxes in the first wave (0: no canary wave).
    pub canary: usize,
    /// Cumulative percentages of the boxes after the canary, ascending, each below 100; a
    /// last wave takes the rest.
    pub percents: Vec<u8>,
    /// Seconds a finished wave is watched before the next one starts.
    pub bake_s: u64,
    /// A wave whose failed or rolled-back boxes exceed this percentage of it pauses the
    /// rollout (0: any failure pauses).
    pub failure_threshold_pct: u8,
    /// A box still offline this long after its wave started is skipped.
    pub offline_deadline_s: u64,
    /// A box updating that says nothing for this long has failed.
    pub stall_s: u64,
}

impl Spec {
    /// Checks the numbers; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.devices.trim().is_empty() || self.devices.len() > 1000 {
            return Err("devices: expected 1 to 1000 characters of box ids and * (e.g. *)".into());
        }
        for p in self.devices.split(',') {
            let p = p.trim();
            if p.is_empty() || !vigil_core::wire::is_name(&p.replace('*', "x")) {
                return Err(format!(
                    "devices: {p:?} is not a box id pattern (A-Z a-z 0-9 _ - and *)"
                ));
            }
        }
        if self.canary > MAX_BOXES {
            return Err(format!("canary: at most {MAX_BOXES}"));
        }
        let mut last = 0;
        for &p in &self.percents {
            if p == 0 || p >= 100 || p <= last {
                return Err(format!(
                    "waves: {:?}: expected ascending percentages between 1 and 99",
                    self.percents
                ));
            }
            last = p;
        }
        if self.percents.len() > 20 {
            return Err("waves: at most 20 percentages".into());
        }
        if self.failure_threshold_pct > 100 {
            return Err("failure threshold: a percentage, 0 to 100".into());
        }
        let day = 7 * 86_400;
        if self.bake_s > day || self.offline_deadline_s > day || self.stall_s > day {
            return Err("bake, offline deadline and stall: at most 7 days in seconds".into());
        }
        if self.stall_s < 10 {
            return Err("stall: at least 10 s (a box reports at least every phase)".into());
        }
        Ok(())
    }

    /// Whether a box id is targeted.
    pub fn matches(&self, device: &str) -> bool {
        self.devices
            .split(',')
            .any(|p| glob(p.trim().as_bytes(), device.as_bytes()))
    }
}

/// `*` matches any run of bytes.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        Some((c, rest)) => s.first() == Some(c) && glob(rest, &s[1..]),
    }
}

/// Where one box is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Sent,
    Downloading,
    Probation,
    Succeeded,
    Failed,
    RolledBack,
    Skipped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Sent => "sent",
            Phase::Downloading => "downloading",
            Phase::Probation => "probation",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled back",
            Phase::Skipped => "skipped",
        }
    }
    pub fn terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::RolledBack | Phase::Skipped
        )
    }
    pub fn failure(self) -> bool {
        matches!(self, Phase::Failed | Phase::RolledBack)
    }
    fn updating(self) -> bool {
        matches!(self, Phase::Sent | Phase::Downloading | Phase::Probation)
    }
}

/// One box of a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoxState {
    pub device: String,
    pub wave: usize,
    pub phase: Phase,
    /// How often `ota/apply` was sent.
    pub attempts: u32,
    /// The request id of the last `ota/apply` sent.
    pub request_id: Option<String>,
    pub detail: String,
    /// When `phase` last changed.
    pub since_ms: i64,
    /// When the box last said something about this update.
    pub heard_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    Aborted,
    Completed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Paused => "paused",
            State::Aborted => "aborted",
            State::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    pub started_ms: Option<i64>,
    /// When its last box reached an outcome.
    pub done_ms: Option<i64>,
    /// Done and baked: the next wave may start.
    pub finished: bool,
    /// Failures an operator accepted by resuming (not counted again against the threshold).
    pub accepted_failures: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: String,
    pub release: Release,
    pub spec: Spec,
    pub state: State,
    /// Why it is paused, aborted or completed.
    pub reason: String,
    pub created_ms: i64,
    pub created_by: String,
    pub waves: Vec<Wave>,
    pub boxes: Vec<BoxState>,
}

/// What a box's retained `ota/status` says, as the rollout reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Installed {
    /// The active set's sequence.
    pub active: Option<u64>,
    /// A probation is open.
    pub probation: bool,
    /// The last outcome: `result`, its sequence, its reason.
    pub last: Option<(String, Option<u64>, String)>,
}

impl Installed {
    pub fn of(s: &OtaStatusMsg) -> Self {
        Installed {
            active: s.active.as_ref().map(|a| a.sequence),
            probation: s.probation.as_ref().is_some_and(|p| !p.is_null()),
            last: s.last.as_ref().and_then(|l| {
                Some((
                    l.get("result")?.as_str()?.to_string(),
                    l.get("sequence").and_then(|s| s.as_u64()),
                    l.get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or("")
                        .to_string(),
                ))
            }),
        }
    }
}

/// A box updating that has been quiet this long is checked against its retained
/// `ota/status` (its progress messages are not retained: a console restarted mid-update
/// missed them).
const RECONCILE_AFTER_MS: i64 = 5_000;

/// What the driver must send: `ota/apply` to `device` with `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    pub device: String,
    pub request_id: String,
}

/// Wave sizes for `n` boxes: the canary, then up to each cumulative percentage, then the rest;
/// empty waves left out.
pub fn wave_sizes(n: usize, canary: usize, percents: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut done = canary.min(n);
    if done > 0 {
        sizes.push(done);
    }
    for &p in percents {
        let upto = (n * p as usize).div_ceil(100).min(n);
        if upto > done {
            sizes.push(upto - done);
            done = upto;
        }
    }
    if n > done {
        sizes.push(n - done);
    }
    sizes
}

/// A stable shuffle key (FNV-1a of the rollout id and the box id).
fn shuffle_key(rollout: &str, device: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in rollout.bytes().chain([0]).chain(device.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn cut(s: &str) -> String {
    if s.len() <= MAX_DETAIL {
        return s.to_string();
    }
    let mut end = MAX_DETAIL;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Rollout {
    /// A new rollout of `release` to the boxes of `devices` matching `spec` (ids unique).
    pub fn new(
        id: &str,
        release: Release,
        spec: Spec,
        devices: &[String],
        who: &str,
        now: i64,
    ) -> Result<Self, String> {
        spec.check()?;
        let mut targets: Vec<&String> = devices.iter().filter(|d| spec.matches(d)).collect();
        if targets.is_empty() {
            return Err(format!("devices: no box matches {:?}", spec.devices));
        }
        if targets.len() > MAX_BOXES {
            return Err(format!(
                "devices: {} boxes match; at most {MAX_BOXES} in one rollout",
                targets.len()
            ));
        }
        targets.sort_by_key(|d| (shuffle_key(id, d), d.to_string()));
        targets.dedup();
        let sizes = wave_sizes(targets.len(), spec.canary, &spec.percents);
        let mut boxes = Vec::with_capacity(targets.len());
        let mut it = targets.into_iter();
        for (w, &n) in sizes.iter().enumerate() {
            for d in it.by_ref().take(n) {
                boxes.push(BoxState {
                    device: d.clone(),
                    wave: w,
                    phase: Phase::Pending,
                    attempts: 0,
                    request_id: None,
                    detail: String::new(),
                    since_ms: now,
                    heard_ms: now,
                });
            }
        }
        Ok(Rollout {
            id: id.to_string(),
            release,
            spec,
            state: State::Running,
            reason: String::new(),
            created_ms: now,
            created_by: who.to_string(),
            waves: sizes
                .iter()
                .map(|_| Wave {
                    started_ms: None,
                    done_ms: None,
                    finished: false,
                    accepted_failures: 0,
                })
                .collect(),
            boxes,
        })
    }

    /// The first wave not finished (None: all are).
    pub fn current_wave(&self) -> Option<usize> {
        self.waves.iter().position(|w| !w.finished)
    }

    fn set(b: &mut BoxState, phase: Phase, detail: &str, now: i64) {
        b.phase = phase;
        b.detail = cut(detail);
        b.since_ms = now;
        b.heard_ms = now;
    }

    /// Takes an updating box's outcome from its retained status; whether there was one.
    fn reconcile(b: &mut BoxState, st: Option<Installed>, sequence: u64, now: i64) -> bool {
        let Some(st) = st else {
            return false;
        };
        if st.active == Some(sequence) && !st.probation {
            Self::set(
                b,
                Phase::Succeeded,
                "committed (from the box's ota/status)",
                now,
            );
            return true;
        }
        let (phase, why) = match st.last {
            Some((result, Some(s), why)) if s == sequence => match result.as_str() {
                "rolled_back" => (Phase::RolledBack, why),
                "rejected" => (Phase::Failed, why),
                _ => return false,
            },
            _ => return false,
        };
        Self::set(b, phase, &format!("{why} (from the box's ota/status)"), now);
        true
    }

    /// Moves the rollout on at `now`: starts waves, sends to the boxes of the current wave
    /// that are online, skips those offline past the deadline, fails those stalled, pauses
    /// on failures. `online(box)`; `installed(box)`: its retained OTA status, when known.
    /// Returns what to send (each already marked sent).
    pub fn tick(
        &mut self,
        now: i64,
        online: &dyn Fn(&str) -> bool,
        installed: &dyn Fn(&str) -> Option<Installed>,
    ) -> Vec<Send> {
        let mut out = Vec::new();
        // Boxes updating in any wave (a retry may have reopened an earlier one) can stall; a
        // quiet one whose status already tells the outcome takes it from there.
        let stall = self.spec.stall_s as i64 * 1000;
        let sequence = self.release.sequence;
        for b in &mut self.boxes {
            let quiet = b.phase.updating() && now - b.heard_ms >= RECONCILE_AFTER_MS;
            if quiet && Self::reconcile(b, installed(&b.device), sequence, now) {
                continue;
            }
            if b.phase.updating() && now - b.heard_ms >= stall {
                let why = format!(
                    "no word from the box for {} s while {}",
                    self.spec.stall_s,
                    b.phase.as_str()
                );
                Self::set(b, Phase::Failed, &why, now);
            }
        }
        while self.state == State::Running {
            let Some(w) = self.current_wave() else {
                self.state = State::Completed;
                self.reason = "every wave done".into();
                break;
            };
            let started = *self.waves[w].started_ms.get_or_insert(now);
            let deadline = self.spec.offline_deadline_s as i64 * 1000;
            let id = self.id.clone();
            for (i, b) in self.boxes.iter_mut().enumerate() {
                if b.wave != w || b.phase != Phase::Pending {
                    continue;
                }
                let active = installed(&b.device).and_then(|s| s.active);
                if let Some(have) = active.filter(|&s| s >= sequence) {
                    let (phase, why) = if have == sequence {
                        (Phase::Succeeded, format!("sequence {have} already active"))
                    } else {
                        (
                            Phase::Skipped,
                            format!("runs sequence {have}, above this release's {sequence}"),
                        )
                    };
                    Self::set(b, phase, &why, now);
                } else if online(&b.device) {
                    b.attempts += 1;
                    let request_id = format!("ro-{id}-{i}-{}", b.attempts);
                    b.request_id = Some(request_id.clone());
                    Self::set(b, Phase::Sent, "ota/apply sent", now);
                    out.push(Send {
                        device: b.device.clone(),
                        request_id,
                    });
                } else if now - started >= deadline {
                    let why = format!(
                        "offline {} s after wave {} started",
                        self.spec.offline_deadline_s,
                        w + 1
                    );
                    Self::set(b, Phase::Skipped, &why, now);
                }
            }
            let of_wave = || self.boxes.iter().filter(|b| b.wave == w);
            let size = of_wave().count();
            let failures = of_wave().filter(|b| b.phase.failure()).count();
            let counted = failures.saturating_sub(self.waves[w].accepted_failures);
            if counted > 0 && counted * 100 > self.spec.failure_threshold_pct as usize * size {
                self.state = State::Paused;
                self.reason = format!(
                    "paused: {failures} of {size} boxes of wave {} failed or rolled back (threshold {} %)",
                    w + 1,
                    self.spec.failure_threshold_pct
                );
                break;
            }
            if !of_wave().all(|b| b.phase.terminal()) {
                break;
            }
            // Done when its last box reached its outcome; baked from then.
            let done = of_wave().map(|b| b.since_ms).max().unwrap_or(now);
            let wave = &mut self.waves[w];
            wave.done_ms = Some(done);
            if now - done < self.spec.bake_s as i64 * 1000 {
                break;
            }
            wave.finished = true;
        }
        out
    }

    /// An `ota/progress` of `device`; whether anything changed. Only the request this rollout
    /// sent to that box counts (a probation resumed after the box restarted has an empty
    /// request id: it counts for the box's update in flight).
    pub fn on_progress(&mut self, device: &str, p: &OtaProgressMsg, now: i64) -> bool {
        let Some(b) = self.boxes.iter_mut().find(|b| {
            b.device == device
                && (b.request_id.as_deref() == Some(p.request_id.as_str())
                    || (p.request_id.is_empty() && b.phase.updating()))
        }) else {
            return false;
        };
        let reason = p.reason.as_deref().unwrap_or("");
        let error = p.error.as_deref().unwrap_or("");
        let (phase, detail) = match p.phase.as_str() {
            "downloading" => (
                Phase::Downloading,
                match p.percent {
                    Some(pc) => format!("downloading {pc:.0} %"),
                    None => "downloading".into(),
                },
            ),
            "verifying" | "staging" => (Phase::Downloading, p.phase.clone()),
            "activating" | "probation" => (Phase::Probation, p.phase.clone()),
            "done" => (Phase::Succeeded, "committed".into()),
            "failed" if error == "target" || error == "sequence" => {
                (Phase::Skipped, format!("the box refused it: {reason}"))
            }
            "failed" => (Phase::Failed, format!("{error}: {reason}")),
            "rolled_back" => (Phase::RolledBack, format!("{error}: {reason}")),
            "cancelled" => (Phase::Failed, "cancelled on the box".into()),
            _ => return false,
        };
        b.heard_ms = now;
        // Outcomes are final; a late phase message does not reopen one.
        if b.phase.terminal() && !phase.terminal() {
            return false;
        }
        if b.phase == phase && b.detail == cut(&detail) {
            return false;
        }
        let changed_phase = b.phase != phase;
        Self::set(b, phase, &detail, now);
        changed_phase
    }

    /// The box's reply to `ota/apply`: a refusal (busy, OTA off, …) fails the box.
    pub fn on_reply(
        &mut self,
        device: &str,
        request_id: &str,
        status: &str,
        message: &str,
        now: i64,
    ) -> bool {
        let Some(b) = self
            .boxes
            .iter_mut()
            .find(|b| b.device == device && b.request_id.as_deref() == Some(request_id))
        else {
            return false;
        };
        b.heard_ms = now;
        if status == "ok" || b.phase != Phase::Sent {
            return false;
        }
        Self::set(b, Phase::Failed, &format!("refused: {message}"), now);
        true
    }

    pub fn pause(&mut self, who: &str) -> Result<(), String> {
        if self.state != State::Running {
            return Err(format!("the rollout is {}", self.state.as_str()));
        }
        self.state = State::Paused;
        self.reason = format!("paused by {who}");
        Ok(())
    }

    /// Goes on; the failures of the current wave so far are accepted.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.state != State::Paused {
            return Err(format!("the rollout is {}", self.state.as_str()));
        }
        if let Some(w) = self.current_wave() {
            let failures = self
                .boxes
                .iter()
                .filter(|b| b.wave == w && b.phase.failure())
                .count();
            self.waves[w].accepted_failures = failures;
        }
        self.state = State::Running;
        self.reason.clear();
        Ok(())
    }

    /// Failed and rolled-back boxes pending again (their waves reopened); running again.
    pub fn retry_failed(&mut self, now: i64) -> Result<usize, String> {
        if matches!(self.state, State::Aborted) {
            return Err("the rollout is aborted".into());
        }
        let mut n = 0;
        for b in &mut self.boxes {
            if b.phase.failure() {
                Self::set(b, Phase::Pending, "retry", now);
                let w = &mut self.waves[b.wave];
                w.finished = false;
                w.done_ms = None;
                w.started_ms = None;
                w.accepted_failures = 0;
                n += 1;
            }
        }
        if n == 0 {
            return Err("no box failed".into());
        }
        self.state = State::Running;
        self.reason.clear();
        Ok(n)
    }

    /// Stops: boxes not yet sent are skipped; a box already updating finishes on its own.
    pub fn abort(&mut self, who: &str, now: i64) -> Result<(), String> {
        if matches!(self.state, State::Aborted | State::Completed) {
            return Err(format!("the rollout is {}", self.state.as_str()));
        }
        for b in &mut self.boxes {
            if b.phase == Phase::Pending {
                Self::set(b, Phase::Skipped, "rollout aborted", now);
            }
        }
        self.state = State::Aborted;
        self.reason = format!("aborted by {who}");
        Ok(())
    }

    /// Boxes per phase.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for b in &self.boxes {
            *m.entry(b.phase.as_str()).or_insert(0) += 1;
        }
        m
    }
}

/// What the driver is told.
pub enum Msg {
    Progress {
        device: String,
        progress: OtaProgressMsg,
    },
    Reply {
        device: String,
        request_id: String,
        status: String,
        message: String,
    },
    Control {
        rollout: String,
        action: Control,
        who: String,
        answer: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Create {
        rollout: Box<Rollout>,
        answer: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Abort,
    RetryFailed,
}

impl Control {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pause" => Control::Pause,
            "resume" => Control::Resume,
            "abort" => Control::Abort,
            "retry" => Control::RetryFailed,
            _ => return None,
        })
    }
}

/// The driver: loads the rollouts, then applies what it is told and moves the running ones on
/// once a second, saving each rollout that changed. `ota/apply` goes out on `client`.
pub async fn run<S: Store>(
    store: S,
    client: rumqttc::AsyncClient,
    prefix: String,
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
    changed: tokio::sync::broadcast::Sender<()>,
) {
    let mut rollouts: Vec<Rollout> = match store.docs(ROLLOUT).await {
        Ok(docs) => docs
            .into_iter()
            .filter_map(|(id, doc)| match serde_json::from_str(&doc) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!("rollout {id}: its stored state does not read: {e}");
                    None
                }
            })
            .collect(),
        Err(e) => {
            tracing::error!("rollouts: cannot read the store: {e}; no rollout is driven");
            return;
        }
    };
    let mut dirty: Vec<bool> = vec![false; rollouts.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return };
                let now = now_ms();
                match m {
                    Msg::Progress { device, progress } => {
                        for (i, r) in rollouts.iter_mut().enumerate() {
                            if r.state != State::Completed && r.on_progress(&device, &progress, now) {
                                dirty[i] = true;
                            }
                        }
                    }
                    Msg::Reply { device, request_id, status, message } => {
                        for (i, r) in rollouts.iter_mut().enumerate() {
                            if r.on_reply(&device, &request_id, &status, &message, now) {
                                dirty[i] = true;
                            }
                        }
                    }
                    Msg::Control { rollout, action, who, answer } => {
                        let Some(i) = rollouts.iter().position(|r| r.id == rollout) else {
                            let _ = answer.send(Err(format!("no rollout {rollout}")));
                            continue;
                        };
                        let r = &mut rollouts[i];
                        let res = match action {
                            Control::Pause => r.pause(&who).map(|_| "paused".to_string()),
                            Control::Resume => r.resume().map(|_| "resumed".to_string()),
                            Control::Abort => r.abort(&who, now).map(|_| "aborted".to_string()),
                            Control::RetryFailed => r
                                .retry_failed(now)
                                .map(|n| format!("{n} box(es) to retry")),
                        };
                        if res.is_ok() {
                            dirty[i] = true;
                            save(&store, r, &mut dirty[i]).await;
                        }
                        let _ = answer.send(res);
                    }
                    Msg::Create { rollout, answer } => {
                        let mut flag = true;
                        save(&store, &rollout, &mut flag).await;
                        let res = if flag {
                            Err("the store did not take the rollout".to_string())
                        } else {
                            Ok(rollout.id.clone())
                        };
                        if res.is_ok() {
                            rollouts.push(*rollout);
                            dirty.push(false);
                        }
                        let _ = answer.send(res);
                    }
                }
            }
            _ = tick.tick() => {
                if rollouts.iter().any(|r| r.state == State::Running) {
                    step(&store, &client, &prefix, &mut rollouts, &mut dirty).await;
                }
                let mut any = false;
                for (r, d) in rollouts.iter().zip(dirty.iter_mut()) {
                    if *d {
                        save(&store, r, d).await;
                        any = true;
                    }
                }
                if any {
                    let _ = changed.send(());
                }
            }
        }
    }
}

/// One tick of every running rollout: who is online and what is installed, from the store.
async fn step<S: Store>(
    store: &S,
    client: &rumqttc::AsyncClient,
    prefix: &str,
    rollouts: &mut [Rollout],
    dirty: &mut [bool],
) {
    let devices: BTreeMap<String, DeviceRow> = match store.devices().await {
        Ok(d) => d.into_iter().map(|d| (d.device.clone(), d)).collect(),
        Err(e) => {
            tracing::warn!("rollouts: cannot read the boxes: {e}");
            return;
        }
    };
    let mut installed: BTreeMap<String, Installed> = BTreeMap::new();
    if let Ok(docs) = store.docs(OTA_STATUS).await {
        for (device, doc) in docs {
            if let Ok(s) = serde_json::from_str::<OtaStatusMsg>(&doc) {
                installed.insert(device, Installed::of(&s));
            }
        }
    }
    let now = now_ms();
    for (r, d) in rollouts.iter_mut().zip(dirty.iter_mut()) {
        if r.state != State::Running {
            continue;
        }
        let before = serde_json::to_string(r).unwrap_or_default();
        let sends = r.tick(
            now,
            &|dev| devices.get(dev).is_some_and(|d| d.state == "online"),
            &|dev| installed.get(dev).cloned(),
        );
        for s in sends {
            let body = serde_json::json!({
                "request_id": s.request_id,
                "url": r.release.url,
                "sha256": r.release.sha256,
            });
            let topic = format!("{prefix}/{}/cmd/ota/apply", s.device);
            if let Err(e) = client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string())
                .await
            {
                tracing::warn!("rollout {}: ota/apply to {}: {e}", r.id, s.device);
            }
            tracing::info!("rollout {}: ota/apply sent to {}", r.id, s.device);
        }
        if serde_json::to_string(r).unwrap_or_default() != before {
            *d = true;
        }
    }
}

/// Saves a rollout; `dirty` stays set when the store failed (tried again next tick).
async fn save<S: Store>(store: &S, r: &Rollout, dirty: &mut bool) {
    let doc = match serde_json::to_string(r) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!("rollout {}: {e}", r.id);
            return;
        }
    };
    match store.put_doc(ROLLOUT, &r.id, &doc, now_ms()).await {
        Ok(()) => *dirty = false,
        Err(e) => tracing::error!("rollout {}: cannot save: {e}", r.id),
    }
}

/// How long the console waits for a release's bundle, all attempts together.
const RELEASE_DOWNLOAD: Duration = Duration::from_secs(600);

/// Checks a bundle before any box is sent it: downloads `url` into `dir` (at most `max_bytes`,
/// resumed on a cut connection, the sha256 checked), then reads it with Vigil's own OTA
/// reader: the manifest's signature by one of `keys`, its expiry, every file's size and digest.
/// The downloaded file is removed afterwards, whatever the outcome. Blocking.
pub fn inspect(
    url: &str,
    sha256: &str,
    keys: &[ed25519_dalek::VerifyingKey],
    dir: &std::path::Path,
    max_bytes: u64,
    who: &str,
    now: i64,
) -> Result<Release, String> {
    let sha256 = sha256.trim().to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "sha256: {:?} is not 64 hex digits (`vigil ota pack` prints it)",
            vigil_ota::text::bounded(&sha256, 100)
        ));
    }
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2000 {
        return Err("url: expected an http:// or https:// URL of at most 2000 bytes".into());
    }
    if keys.is_empty() {
        return Err(
            "the console has no --ota-key: it verifies a release's signature before any box gets it"
                .into(),
        );
    }
    // The OTA crate's layout: partial and complete downloads under `<dir>/download/`.
    let dir = &dir.join("download");
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let limits = vigil_ota::download::Limits {
        max_bytes,
        timeout: RELEASE_DOWNLOAD,
        min_rate: 1024,
        rate_window: Duration::from_secs(30),
    };
    let never = std::sync::atomic::AtomicBool::new(false);
    let file = vigil_ota::download::fetch(url, &sha256, dir, &limits, &never, &mut |_, _| {})
        .map_err(|e| e.reason())?;
    let read = (|| {
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let v = vigil_ota::bundle::read_bundle(
            std::io::BufReader::new(f),
            keys,
            max_bytes,
            |m| vigil_ota::check_manifest(m, std::time::SystemTime::now()),
            None,
            |_| {},
        )
        .map_err(|e| e.reason())?;
        let m = v.manifest;
        Ok(Release {
            id: format!("{}-{}", m.sequence, &sha256[..12]),
            url: url.to_string(),
            sha256: sha256.clone(),
            version: m.version,
            sequence: m.sequence,
            target: serde_json::to_value(&m.target).unwrap_or_default(),
            bytes,
            files: m.files.len(),
            created_ms: now,
            created_by: who.to_string(),
        })
    })();
    let _ = std::fs::remove_file(&file);
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            id: "rel1".into(),
            url: "http://h/b.vigil".into(),
            sha256: "a".repeat(64),
            version: "v2".into(),
            sequence: 20,
            target: serde_json::json!({}),
            bytes: 10,
            files: 1,
            created_ms: 0,
            created_by: "op".into(),
        }
    }

    fn spec() -> Spec {
        Spec {
            devices: "*".into(),
            canary: 1,
            percents: vec![50],
            bake_s: 10,
            failure_threshold_pct: 0,
            offline_deadline_s: 60,
            stall_s: 300,
        }
    }

    fn boxes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("b{i}")).collect()
    }

    fn progress(id: &str, phase: &str, error: Option<&str>) -> OtaProgressMsg {
        OtaProgressMsg {
            request_id: id.into(),
            phase: phase.into(),
            sequence: Some(20),
            percent: None,
            error: error.map(String::from),
            reason: error.map(|e| format!("because {e}")),
        }
    }

    fn all_online(_: &str) -> bool {
        true
    }
    fn none_installed(_: &str) -> Option<Installed> {
        None
    }
    fn at(seq: u64) -> Installed {
        Installed {
            active: Some(seq),
            ..Default::default()
        }
    }

    #[test]
    fn waves_are_canary_then_cumulative_percentages_then_the_rest() {
        assert_eq!(wave_sizes(4, 1, &[50]), vec![1, 1, 2]);
        assert_eq!(wave_sizes(100, 1, &[10, 50]), vec![1, 9, 40, 50]);
        assert_eq!(wave_sizes(3, 5, &[50]), vec![3]);
        assert_eq!(wave_sizes(10, 0, &[]), vec![10]);
        assert_eq!(wave_sizes(2, 1, &[10]), vec![1, 1]);
        assert!(wave_sizes(0, 1, &[50]).is_empty());
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        assert!(spec().check().is_ok());
        let bad = |f: &dyn Fn(&mut Spec)| {
            let mut s = spec();
            f(&mut s);
            s.check().unwrap_err()
        };
        assert!(bad(&|s| s.percents = vec![50, 10]).starts_with("waves"));
        assert!(bad(&|s| s.percents = vec![100]).starts_with("waves"));
        assert!(bad(&|s| s.devices = "a/b".into()).starts_with("devices"));
        assert!(bad(&|s| s.failure_threshold_pct = 101).starts_with("failure"));
        assert!(bad(&|s| s.stall_s = 1).starts_with("stall"));
        let s = Spec {
            devices: "edge-*, lab1".into(),
            ..spec()
        };
        assert!(s.matches("edge-7") && s.matches("lab1") && !s.matches("lab12"));
    }

    /// Drives one box of the current wave through progress to `outcome`.
    fn finish(r: &mut Rollout, device: &str, outcome: &str, error: Option<&str>, now: i64) {
        let id = r
            .boxes
            .iter()
            .find(|b| b.device == device)
            .and_then(|b| b.request_id.clone())
            .expect("sent");
        assert!(r.on_progress(device, &progress(&id, "downloading", None), now));
        assert!(r.on_progress(device, &progress(&id, "probation", None), now));
        assert!(r.on_progress(device, &progress(&id, outcome, error), now));
    }

    #[test]
    fn a_good_release_goes_wave_by_wave_with_bake_time() {
        let mut r = Rollout::new("r1", release(), spec(), &boxes(4), "op", 0).unwrap();
        assert_eq!(r.waves.len(), 3);
        let s = r.tick(0, &all_online, &none_installed);
        assert_eq!(s.len(), 1, "the canary only");
        let canary = s[0].device.clone();
        assert_eq!(r.tick(1000, &all_online, &none_installed), vec![]);
        finish(&mut r, &canary, "done", None, 2000);
        // Done at 2 s: baking until 12 s.
        assert!(r.tick(2000, &all_online, &none_installed).is_empty());
        assert!(r.tick(11_999, &all_online, &none_installed).is_empty());
        let s = r.tick(12_000, &all_online, &none_installed);
        assert_eq!(s.len(), 1, "wave 2: up to 50 % of 4 = 2 boxes, one more");
        finish(&mut r, &s[0].device, "done", None, 13_000);
        let s = r.tick(23_000, &all_online, &none_installed);
        assert_eq!(s.len(), 2, "the rest");
        for x in &s {
            finish(&mut r, &x.device, "done", None, 24_000);
        }
        r.tick(34_000, &all_online, &none_installed);
        assert_eq!(r.state, State::Completed);
        assert_eq!(r.counts().get("succeeded"), Some(&4));
    }

    #[test]
    fn a_failing_canary_pauses_and_the_rest_is_untouched_until_resumed() {
        let mut r = Rollout::new("r2", release(), spec(), &boxes(4), "op", 0).unwrap();
        let canary = r.tick(0, &all_online, &none_installed)[0].device.clone();
        finish(&mut r, &canary, "rolled_back", Some("probation"), 1000);
        assert!(r.tick(100_000, &all_online, &none_installed).is_empty());
        assert_eq!(r.state, State::Paused);
        assert!(r.reason.contains("1 of 1"), "{}", r.reason);
        assert_eq!(r.counts().get("pending"), Some(&3));
        let b = r.boxes.iter().find(|b| b.device == canary).unwrap();
        assert_eq!(b.phase, Phase::RolledBack);
        assert!(b.detail.contains("because probation"));
        // Resume accepts the failure and goes on after the bake.
        r.resume().unwrap();
        assert_eq!(
            r.tick(100_000, &all_online, &none_installed).len(),
            1,
            "the canary's wave baked long ago: the next wave starts"
        );
        // Retry the failed canary: its wave reopens and it is sent again.
        r.pause("op").unwrap();
        assert_eq!(r.retry_failed(112_000), Ok(1));
        let s = r.tick(112_000, &all_online, &none_installed);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].device, canary);
        assert!(
            s[0].request_id.ends_with("-2"),
            "a new request id per attempt"
        );
    }

    #[test]
    fn offline_boxes_are_skipped_after_the_deadline_and_stalls_fail() {
        let mut sp = spec();
        sp.canary = 2;
        sp.percents.clear();
        let mut r = Rollout::new("r3", release(), sp, &boxes(3), "op", 0).unwrap();
        let first: Vec<String> = r
            .boxes
            .iter()
            .filter(|b| b.wave == 0)
            .map(|b| b.device.clone())
            .collect();
        let off = first[0].clone();
        let online = |d: &str| d != off;
        assert_eq!(r.tick(0, &online, &none_installed).len(), 1);
        assert!(r.tick(59_000, &online, &none_installed).is_empty());
        r.tick(60_000, &online, &none_installed);
        let b = r.boxes.iter().find(|b| b.device == off).unwrap();
        assert_eq!(b.phase, Phase::Skipped);
        assert_eq!(r.state, State::Running, "skipped is not failed");
        // The other one is sent and never heard from again: failed after stall_s.
        r.tick(299_999, &online, &none_installed);
        assert_eq!(r.state, State::Running);
        r.tick(300_000, &online, &none_installed);
        assert_eq!(r.state, State::Paused);
        let b = r.boxes.iter().find(|b| b.device == first[1]).unwrap();
        assert!(b.detail.starts_with("no word from the box"), "{}", b.detail);
    }

    #[test]
    fn only_the_sent_request_counts_and_refusals_by_target_are_skips() {
        let mut r = Rollout::new("r4", release(), spec(), &boxes(2), "op", 0).unwrap();
        let s = r.tick(0, &all_online, &none_installed).remove(0);
        // Another box's message, another request id: nothing.
        let other = r
            .boxes
            .iter()
            .find(|b| b.device != s.device)
            .unwrap()
            .device
            .clone();
        assert!(!r.on_progress(&other, &progress(&s.request_id, "done", None), 1));
        assert!(!r.on_progress(&s.device, &progress("fleet-cmd-x", "done", None), 1));
        assert!(r.on_progress(
            &s.device,
            &progress(&s.request_id, "failed", Some("target")),
            2
        ));
        let b = r.boxes.iter().find(|b| b.device == s.device).unwrap();
        assert_eq!(b.phase, Phase::Skipped);
        // A late phase message does not reopen an outcome.
        assert!(!r.on_progress(&s.device, &progress(&s.request_id, "downloading", None), 3));
        // A refused ota/apply fails the box.
        let mut r = Rollout::new("r5", release(), spec(), &boxes(1), "op", 0).unwrap();
        let s = r.tick(0, &all_online, &none_installed).remove(0);
        assert!(r.on_reply(
            &s.device,
            &s.request_id,
            "error",
            "an OTA update is already in progress",
            1
        ));
        assert_eq!(r.boxes[0].phase, Phase::Failed);
    }

    #[test]
    fn a_box_already_at_the_sequence_succeeds_without_being_sent() {
        let mut r = Rollout::new("r6", release(), spec(), &boxes(1), "op", 0).unwrap();
        assert!(r.tick(0, &all_online, &|_| Some(at(20))).is_empty());
        assert_eq!(r.boxes[0].phase, Phase::Succeeded);
        let mut r = Rollout::new("r7", release(), spec(), &boxes(1), "op", 0).unwrap();
        r.tick(0, &all_online, &|_| Some(at(21)));
        assert_eq!(r.boxes[0].phase, Phase::Skipped);
    }

    #[test]
    fn missed_outcomes_are_read_from_the_retained_status() {
        let mut r = Rollout::new("r9", release(), spec(), &boxes(1), "op", 0).unwrap();
        r.tick(0, &all_online, &none_installed);
        // On probation: not an outcome yet.
        let probation = Installed {
            active: Some(20),
            probation: true,
            ..Default::default()
        };
        r.tick(10_000, &all_online, &|_| Some(probation.clone()));
        assert_eq!(r.boxes[0].phase, Phase::Sent);
        // Rolled back, as the status's last outcome of this sequence says.
        let rolled = Installed {
            active: Some(19),
            probation: false,
            last: Some(("rolled_back".into(), Some(20), "probation failed: x".into())),
        };
        r.tick(20_000, &all_online, &|_| Some(rolled.clone()));
        assert_eq!(r.boxes[0].phase, Phase::RolledBack);
        assert!(r.boxes[0].detail.starts_with("probation failed"));
        // Committed.
        let mut r = Rollout::new("r10", release(), spec(), &boxes(1), "op", 0).unwrap();
        r.tick(0, &all_online, &none_installed);
        r.tick(2_000, &all_online, &|_| Some(at(20)));
        assert_eq!(r.boxes[0].phase, Phase::Sent, "not before it was quiet 5 s");
        r.tick(6_000, &all_online, &|_| Some(at(20)));
        assert_eq!(r.boxes[0].phase, Phase::Succeeded);
    }

    #[test]
    fn abort_skips_the_pending_and_the_state_round_trips() {
        let mut r = Rollout::new("r8", release(), spec(), &boxes(4), "op", 0).unwrap();
        r.tick(0, &all_online, &none_installed);
        r.abort("op", 1).unwrap();
        assert_eq!(r.counts().get("skipped"), Some(&3));
        assert_eq!(r.counts().get("sent"), Some(&1));
        let back: Rollout = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert!(r.resume().is_err());
    }
}
