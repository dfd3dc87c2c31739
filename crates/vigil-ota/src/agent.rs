//! The device side's state machine, driven by the supervisor: one update at a time; a job
//! thread downloads, verifies and stages (`cmd/ota/cancel` stops it); activation (switch +
//! apply), probation, commit and rollback happen on the supervisor's loop, which owns the plan.
//! What is to be published goes to `outbox` (topic, payload) for the supervisor to hand to the
//! MQTT link; every text in it is bounded ([`crate::text`]).

use super::store::{ProbationState, State, Store, unix_now};
use super::{
    ApplyRequest, JobContext, JobEvent, OtaError, Probation, Progress, Verdict, last_result,
    status_json,
};
use crate::text::{MAX_NAME, MAX_REASON, bounded};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use vigil_core::config::Config;
use vigil_core::facts::BoxFacts;
use vigil_core::health::OutputCounters;

/// Start-ups during one probation after which the set is rolled back before anything runs
/// (the new set keeps killing the process, as a boot counter would tell).
const MAX_BOOTS: u32 = 3;

/// Where an OTA message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtaTopic {
    /// `ota/progress`, QoS 1, not retained.
    Progress,
    /// `ota/status`, QoS 1, retained.
    Status,
}

/// Why the running plan did not take a config (the supervisor's error, kept as the source).
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Applies a config to the running plan; returns each model whose backend is new (loaded or
/// swapped) with its output counters, or why it failed (nothing changed then).
pub type ApplyFn<'a> =
    &'a mut dyn FnMut(&Config) -> Result<Vec<(String, Arc<OutputCounters>)>, ApplyError>;

/// The job thread of the update in progress.
struct Job {
    request_id: String,
    /// Set by `cmd/ota/cancel`; the job stops at its next check.
    cancel: Arc<AtomicBool>,
}

pub struct Agent {
    pub store: Store,
    pub state: State,
    config_path: PathBuf,
    facts: Arc<dyn BoxFacts>,
    /// The update whose job thread runs, if any.
    job: Option<Job>,
    probation: Option<Probation>,
    probation_window: Duration,
    min_good: u64,
    events_tx: tokio::sync::mpsc::UnboundedSender<JobEvent>,
    pub outbox: Vec<(OtaTopic, Vec<u8>)>,
}

impl Agent {
    /// Opens the store (reconciling state and link, collecting garbage). A probation that was
    /// open when the process stopped counts one more start-up; past [`MAX_BOOTS`] the set is
    /// rolled back here, before the plan is built: the caller must then reload its config
    /// (`true` is returned). The receiver carries the job events to the supervisor's loop.
    #[allow(clippy::type_complexity)]
    pub fn open(
        cfg: &Config,
        config_path: &Path,
        facts: Arc<dyn BoxFacts>,
    ) -> Result<(Self, tokio::sync::mpsc::UnboundedReceiver<JobEvent>, bool), OtaError> {
        let (store, state) = Store::open(&super::dir_of(cfg))?;
        // A partial download left by a killed job is kept for the same command sent again (at
        // most one, within the size bound); anything else there goes.
        store.prune_downloads(None, cfg.ota.max_bundle_bytes)?;
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let mut agent = Agent {
            store,
            state,
            config_path: config_path.to_path_buf(),
            facts,
            job: None,
            probation: None,
            probation_window: cfg.ota.probation.0,
            min_good: cfg.ota.probation_min_inferences as u64,
            events_tx,
            outbox: Vec::new(),
        };
        let mut rolled_back = false;
        if let Some(p) = agent.state.probation.as_mut() {
            p.boots += 1;
            let boots = p.boots;
            if boots > MAX_BOOTS {
                let reason = format!(
                    "the service started {boots} times during the probation of {}",
                    p.slot
                );
                tracing::error!("ota: {reason}; rolling back before start-up");
                agent.switch_back("startup", &reason, "startup")?;
                rolled_back = true;
            } else {
                agent.store.write_state(&agent.state)?;
            }
        }
        agent.publish_status();
        Ok((agent, events, rolled_back))
    }

    /// After the plan is built: a probation left open by a restart starts a full window again,
    /// watching every running model.
    pub fn resume_probation(&mut self, watch: Vec<(String, Arc<OutputCounters>)>) {
        if let Some(p) = &self.state.probation {
            tracing::warn!(slot = %p.slot, boots = p.boots, "ota: resuming the probation of the active set (a full window)");
            self.probation = Some(Probation {
                request_id: String::new(),
                deadline: Instant::now() + self.probation_window,
                watch,
                min_good: self.min_good,
            });
            self.publish_status();
        }
    }

    /// Follows reloads: the window and thresholds of the running config.
    pub fn configure(&mut self, cfg: &Config) {
        self.probation_window = cfg.ota.probation.0;
        self.min_good = cfg.ota.probation_min_inferences as u64;
    }

    pub fn publish_status(&mut self) {
        let left = self
            .probation
            .as_ref()
            .map(|p| p.deadline.saturating_duration_since(Instant::now()));
        let busy = self.job.is_some();
        self.outbox
            .push((OtaTopic::Status, status_json(&self.state, busy, left)));
    }

    fn progress(&mut self, p: Progress) {
        self.outbox.push((
            OtaTopic::Progress,
            serde_json::to_vec(&p).unwrap_or_default(),
        ));
    }

    /// `cmd/ota/apply`: refuses a second update and a device without trusted keys; else starts
    /// the job thread and answers at once.
    pub fn request(
        &mut self,
        req: ApplyRequest,
        running: &Config,
    ) -> Result<Value, (String, Value)> {
        if self.job.is_some() || self.probation.is_some() {
            return Err((
                "an OTA update is already in progress (one at a time)".into(),
                Value::Null,
            ));
        }
        if running.ota.trusted_keys.is_empty() {
            return Err((
                "OTA is off: [ota] trusted_keys is empty".into(),
                Value::Null,
            ));
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let ctx = JobContext {
            config_path: self.config_path.clone(),
            facts: self.facts.clone(),
            config: running.clone(),
            active: self.state.active.clone(),
            key_floor: self.state.key_floor,
            events: self.events_tx.clone(),
            cancel: cancel.clone(),
        };
        let id = req.request_id.clone();
        std::thread::Builder::new()
            .name("ota-job".into())
            .spawn(move || super::run_job(ctx, req))
            .map_err(|e| (format!("cannot start the OTA job: {e}"), Value::Null))?;
        self.job = Some(Job {
            request_id: id.clone(),
            cancel,
        });
        self.publish_status();
        Ok(
            json!({ "summary": format!("accepted: update {} started; progress on ota/progress", bounded(&id, MAX_NAME)) }),
        )
    }

    /// `cmd/ota/cancel`: stops the update whose job runs (download, verification, staging).
    /// The job stops within about 100 ms and its outcome is `cancelled` on `ota/progress`; a
    /// set already staged is not activated. An update on probation is not cancelled (it is
    /// active: `cmd/ota/rollback` goes back).
    pub fn cancel(&mut self) -> Result<Value, (String, Value)> {
        if let Some(job) = &self.job {
            job.cancel.store(true, Ordering::Relaxed);
            tracing::warn!(request = %bounded(&job.request_id, MAX_NAME), "ota: cancelling the update on request");
            return Ok(json!({
                "summary": format!("cancelling update {}; its outcome follows on ota/progress", bounded(&job.request_id, MAX_NAME))
            }));
        }
        if self.probation.is_some() {
            return Err((
                "nothing to cancel: the update is active, on probation (cmd/ota/rollback goes back)".into(),
                Value::Null,
            ));
        }
        Err((
            "nothing to cancel: no OTA update is in progress".into(),
            Value::Null,
        ))
    }

    /// Reports the end of a job that was cancelled.
    fn cancelled(&mut self, request_id: &str) {
        tracing::warn!(request = %bounded(request_id, MAX_NAME), "ota: update cancelled");
        self.state.last = Some(last_result(
            "cancelled",
            None,
            Some("cancelled"),
            Some("cancelled by cmd/ota/cancel"),
        ));
        let mut p = Progress::failed(request_id, "cancelled", &OtaError::Cancelled);
        p.reason = Some("cancelled by cmd/ota/cancel".into());
        self.progress(p);
        // A set staged before the job saw the flag is neither active nor previous.
        if let Err(e) = self.store.collect_garbage(&self.state) {
            tracing::error!("ota: {}", e.reason());
        }
    }

    /// A job event: progress is forwarded; a staged set is activated through `apply` and its
    /// probation opened; a failure is reported.
    pub fn on_job_event(&mut self, ev: JobEvent, apply: ApplyFn<'_>) {
        match ev {
            JobEvent::Progress(p) => self.progress(p),
            JobEvent::Failed { request_id, error } => {
                self.job = None;
                if matches!(error, OtaError::Cancelled) {
                    self.cancelled(&request_id);
                } else {
                    tracing::error!(
                        "ota: update {} refused: {}",
                        bounded(&request_id, MAX_NAME),
                        error.reason()
                    );
                    self.state.last = Some(last_result(
                        "rejected",
                        None,
                        Some(error.kind()),
                        Some(&error.reason()),
                    ));
                    // Refused: nothing on disk changes (the result is reported, not stored).
                    self.progress(Progress::failed(&request_id, "failed", &error));
                }
                self.publish_status();
            }
            JobEvent::Staged { request_id, info } => {
                let cancelled = self
                    .job
                    .take()
                    .is_some_and(|j| j.cancel.load(Ordering::Relaxed));
                if cancelled {
                    self.cancelled(&request_id);
                } else if let Err(e) = self.activate(&request_id, info, apply) {
                    tracing::error!(
                        "ota: activation of {} failed: {}",
                        bounded(&request_id, MAX_NAME),
                        e.reason()
                    );
                    self.progress(Progress::failed(&request_id, "failed", &e));
                }
                self.publish_status();
            }
        }
    }

    fn activate(
        &mut self,
        request_id: &str,
        info: super::store::SlotInfo,
        apply: ApplyFn<'_>,
    ) -> Result<(), OtaError> {
        tracing::info!(slot = %info.slot, "ota: phase activating");
        self.progress(Progress {
            sequence: Some(info.sequence),
            ..Progress::phase(request_id, "activating")
        });
        self.store.switch(Some(&info.slot))?;
        super::test_hook_pause("switched");
        let sequence = info.sequence;
        let mut next = self.state.clone();
        next.previous = next.active.take();
        next.probation = Some(ProbationState {
            slot: info.slot.clone(),
            started: unix_now(),
            boots: 1,
        });
        next.active = Some(info);
        if let Err(e) = self.store.write_state(&next) {
            // Link and state must agree: point `current` back at what the state says runs.
            let _ = self
                .store
                .switch(self.state.active.as_ref().map(|a| a.slot.as_str()));
            return Err(e);
        }
        self.state = next;
        // The config a restart would load now: the file with the new set's overlay (validated
        // by the job before the switch; loaded again here in case the file changed since).
        let applied = crate::load_effective(&self.config_path, self.facts.as_ref())
            .map_err(|e| -> ApplyError { Box::new(e) })
            .and_then(|config| apply(&config));
        match applied {
            Ok(watch) => {
                tracing::info!(sequence, models = ?watch.iter().map(|w| &w.0).collect::<Vec<_>>(), "ota: activated; phase probation");
                self.probation = Some(Probation {
                    request_id: request_id.to_string(),
                    deadline: Instant::now() + self.probation_window,
                    watch,
                    min_good: self.min_good,
                });
                self.progress(Progress {
                    sequence: Some(sequence),
                    ..Progress::phase(request_id, "probation")
                });
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "the new set did not apply: {}",
                    vigil_core::error::chain(e.as_ref())
                );
                // A failed rollback is logged; the persisted probation makes the next start
                // roll back (its boot counter).
                let _ = self.rollback(request_id, &reason, "activation", apply);
                Ok(())
            }
        }
    }

    /// Points `current` back at the previous set (or none) and records why (`cause`: the short
    /// code `activation`, `probation`, `requested` or `startup`); does not touch the plan.
    fn switch_back(
        &mut self,
        request_id: &str,
        reason: &str,
        cause: &'static str,
    ) -> Result<(), OtaError> {
        // Nothing in memory changes until the link and the state on disk both say so: a failed
        // switch or write leaves the previous set known, the probation open, and is retried.
        let from = self.state.active.clone();
        let mut next = self.state.clone();
        let to = next.previous.take();
        self.store.switch(to.as_ref().map(|s| s.slot.as_str()))?;
        next.active = to;
        next.probation = None;
        next.last = Some(last_result(
            "rolled_back",
            from.as_ref().map(|f| f.sequence),
            Some(cause),
            Some(reason),
        ));
        if let Err(e) = self.store.write_state(&next) {
            let _ = self.store.switch(from.as_ref().map(|f| f.slot.as_str()));
            return Err(e);
        }
        self.state = next;
        self.probation = None;
        self.store.collect_garbage(&self.state)?;
        tracing::warn!(from = ?from.map(|f| f.slot), to = ?self.state.active.as_ref().map(|s| &s.slot), request = %bounded(request_id, MAX_NAME), "ota: rolled back: {}", bounded(reason, MAX_REASON));
        Ok(())
    }

    /// Rolls back to the previous set and applies the config that goes with it.
    fn rollback(
        &mut self,
        request_id: &str,
        reason: &str,
        cause: &'static str,
        apply: ApplyFn<'_>,
    ) -> Result<(), OtaError> {
        if let Err(e) = self.switch_back(request_id, reason, cause) {
            tracing::error!(
                "ota: rollback failed (kept as it was; retried on the next health tick while a probation is open): {}",
                e.reason()
            );
            return Err(e);
        }
        match crate::load_effective(&self.config_path, self.facts.as_ref()) {
            Ok(cfg) => {
                if let Err(e) = apply(&cfg) {
                    tracing::error!(
                        "ota: the previous set did not apply again: {}",
                        bounded(&vigil_core::error::chain(e.as_ref()), MAX_REASON)
                    );
                }
            }
            Err(e) => tracing::error!(
                "ota: the previous config does not load: {}",
                bounded(&e.to_string(), MAX_REASON)
            ),
        }
        let mut p = Progress::phase(request_id, "rolled_back").with_reason(reason);
        p.sequence = self.state.last.as_ref().and_then(|l| l.sequence);
        p.error = Some(cause);
        self.progress(p);
        self.publish_status();
        Ok(())
    }

    /// `cmd/ota/rollback`: back to the previous set (or the device's own config), unless that
    /// set is older than the key floor and trusts a key `running_keys` (the running config's
    /// `[ota] trusted_keys`) does not ([`crate::check_key_floor`]).
    pub fn rollback_on_request(
        &mut self,
        request_id: &str,
        running_keys: &[String],
        apply: ApplyFn<'_>,
    ) -> Result<Value, (String, Value)> {
        if self.job.is_some() {
            return Err((
                "an OTA update is in progress; try again when it ends".into(),
                Value::Null,
            ));
        }
        let Some(active) = self.state.active.clone() else {
            return Err((
                "nothing to roll back: no OTA set is active".into(),
                Value::Null,
            ));
        };
        let to = self
            .state
            .previous
            .as_ref()
            .map_or("the device's own config".to_string(), |p| {
                format!(
                    "sequence {} ({})",
                    p.sequence,
                    bounded(&p.version, MAX_NAME)
                )
            });
        self.check_rollback_keys(running_keys).map_err(|e| {
            (
                format!("rollback refused, nothing changed: {}", e.reason()),
                Value::Null,
            )
        })?;
        self.rollback(
            request_id,
            &format!(
                "requested by cmd/ota/rollback (sequence {} → {to})",
                active.sequence
            ),
            "requested",
            apply,
        )
        .map_err(|e| {
            (
                format!("rollback failed, nothing changed: {}", e.reason()),
                Value::Null,
            )
        })?;
        Ok(json!({ "summary": format!("rolled back from sequence {} to {to}", active.sequence) }))
    }

    /// The previous set (or the device's own config, sequence 0) against the key floor.
    fn check_rollback_keys(&self, running_keys: &[String]) -> Result<(), OtaError> {
        let floor = self.state.key_floor;
        let previous = self.state.previous.as_ref();
        let sequence = previous.map_or(0, |p| p.sequence);
        if sequence >= floor {
            return Ok(());
        }
        let base = vigil_core::config::load(&self.config_path, self.facts.as_ref())
            .map_err(OtaError::Config)?;
        let target = match previous {
            Some(p) => {
                let dir = self.store.slot_dir(&p.slot);
                crate::load_for_slot(&self.config_path, Some(&dir), base, self.facts.as_ref())
                    .map_err(OtaError::Config)?
            }
            None => base,
        };
        crate::check_key_floor(sequence, &target.ota.trusted_keys, running_keys, floor)
    }

    /// On each health tick: decides an open probation.
    pub fn tick(&mut self, healthy: bool, summary: &str, apply: ApplyFn<'_>) {
        let Some(p) = &self.probation else {
            return;
        };
        let request_id = p.request_id.clone();
        match p.check(healthy, summary, Instant::now()) {
            Verdict::Pending => {}
            Verdict::Passed => {
                let seq = self.state.active.as_ref().map(|a| a.sequence);
                tracing::info!(sequence = ?seq, "ota: probation passed; update committed");
                self.probation = None;
                self.state.probation = None;
                self.state.last = Some(last_result("committed", seq, None, None));
                self.state.key_floor = self.state.key_floor.max(seq.unwrap_or(0));
                if let Err(e) = self.store.write_state(&self.state) {
                    tracing::error!("ota: {}", e.reason());
                }
                let mut pr = Progress::phase(&request_id, "done");
                pr.sequence = seq;
                self.progress(pr);
                self.publish_status();
            }
            Verdict::Failed(reason) => {
                tracing::error!("ota: probation failed: {}", bounded(&reason, MAX_REASON));
                // A failed rollback leaves the probation open: retried on the next tick.
                let _ = self.rollback(
                    &request_id,
                    &format!("probation failed: {reason}"),
                    "probation",
                    apply,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SlotInfo;

    fn facts() -> Arc<dyn BoxFacts> {
        Arc::new(vigil_core::facts::KnownFacts::cpu_only())
    }

    #[test]
    fn the_third_restart_during_a_probation_rolls_back_before_start_up() {
        let dir = std::env::temp_dir().join(format!("vigil-agent-boots-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = vigil_core::config::parse(
            &format!("[device]\nid = \"x\"\n[ota]\ndir = \"{}\"\n", dir.display()),
            Path::new("t.toml"),
            &vigil_core::facts::KnownFacts::cpu_only(),
        )
        .unwrap();
        let store = Store { dir: dir.clone() };
        std::fs::create_dir_all(store.slot_dir("5-x")).unwrap();
        store.switch(Some("5-x")).unwrap();
        let active = SlotInfo {
            slot: "5-x".into(),
            sequence: 5,
            version: "v5".into(),
        };
        store
            .write_state(&State {
                active: Some(active),
                probation: Some(ProbationState {
                    slot: "5-x".into(),
                    started: 0,
                    boots: 1,
                }),
                ..State::default()
            })
            .unwrap();
        for boots in [2, 3] {
            let (agent, _, rolled_back) = Agent::open(&cfg, Path::new("t.toml"), facts()).unwrap();
            assert!(!rolled_back);
            assert_eq!(agent.state.probation.map(|p| p.boots), Some(boots));
            assert_eq!(store.active_slot().unwrap().as_deref(), Some("5-x"));
        }
        let (agent, _, rolled_back) = Agent::open(&cfg, Path::new("t.toml"), facts()).unwrap();
        assert!(rolled_back);
        assert_eq!(
            store.active_slot().unwrap(),
            None,
            "back to the device's own config"
        );
        let last = agent.state.last.unwrap();
        assert_eq!(
            (last.result.as_str(), last.error.as_deref()),
            ("rolled_back", Some("startup"))
        );
        assert_eq!(store.read_state().unwrap().active, None);
    }
}
