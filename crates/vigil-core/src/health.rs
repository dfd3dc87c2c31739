//! Health: every stage that must keep moving (the supervisor loop, each analysis worker, the MQTT
//! link) heartbeats into a registry with its own deadline. The systemd watchdog is pinged only
//! while every required stage is within its deadline, so a stalled core lets systemd restart the
//! process; a camera that is down is reported, not fatal (it reconnects on its own).
//!
//! A heartbeat is one atomic store: cheap enough for any loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct StageInner {
    name: String,
    deadline: Duration,
    required: bool,
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last beat (0: never).
    last_ns: AtomicU64,
}

/// The handle a stage beats with.
#[derive(Clone)]
pub struct Heartbeat(Arc<StageInner>);

impl Heartbeat {
    pub fn beat(&self) {
        let ns = self.0.epoch.elapsed().as_nanos() as u64;
        self.0.last_ns.store(ns.max(1), Ordering::Relaxed);
    }
}

/// One stage's standing, for `/healthz` and `STATUS=`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageStatus {
    pub name: String,
    pub ok: bool,
    pub required: bool,
    /// Seconds since the last beat (None: never beaten).
    pub age_s: Option<f64>,
    pub deadline_s: f64,
}

/// Stages are held weakly: a stage whose last [`Heartbeat`] is dropped (its worker stopped, e.g.
/// on a reload) leaves the registry instead of turning late.
#[derive(Default, Clone)]
pub struct HealthRegistry {
    stages: Arc<Mutex<Vec<std::sync::Weak<StageInner>>>>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HealthRegistry")
    }
}

impl HealthRegistry {
    /// One line for systemd's `STATUS=`: healthy or which stages are late.
    pub fn summary(&self) -> String {
        let late: Vec<String> = self
            .check()
            .into_iter()
            .filter(|s| !s.ok)
            .map(|s| s.name)
            .collect();
        if late.is_empty() {
            "healthy".to_string()
        } else {
            format!("late: {}", late.join(", "))
        }
    }

    /// Registers a stage; it counts as alive from now (a first beat is implied).
    pub fn register(
        &self,
        name: impl Into<String>,
        deadline: Duration,
        required: bool,
    ) -> Heartbeat {
        let inner = Arc::new(StageInner {
            name: name.into(),
            deadline,
            required,
            epoch: Instant::now(),
            last_ns: AtomicU64::new(1),
        });
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&inner));
        Heartbeat(inner)
    }

    pub fn check(&self) -> Vec<StageStatus> {
        let mut stages = self.stages.lock().unwrap_or_else(|e| e.into_inner());
        stages.retain(|w| w.strong_count() > 0);
        stages
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|s| {
                let last = s.last_ns.load(Ordering::Relaxed);
                let age = (last != 0)
                    .then(|| s.epoch.elapsed().saturating_sub(Duration::from_nanos(last)));
                StageStatus {
                    name: s.name.clone(),
                    ok: age.is_some_and(|a| a <= s.deadline),
                    required: s.required,
                    age_s: age.map(|a| (a.as_secs_f64() * 1000.0).round() / 1000.0),
                    deadline_s: s.deadline.as_secs_f64(),
                }
            })
            .collect()
    }

    /// Every required stage within its deadline.
    pub fn healthy(&self) -> bool {
        self.check().iter().all(|s| s.ok || !s.required)
    }
}

/// How well-formed one worker's model outputs have been since it was loaded (or swapped in):
/// the supervisor's OTA probation reads these.
#[derive(Default, Debug)]
pub struct OutputCounters {
    /// Inferences whose outputs were all finite and decoded with the expected layout.
    pub good: AtomicU64,
    /// Inferences that failed, or returned non-finite values or outputs of the wrong shape.
    pub bad: AtomicU64,
    /// Frames this engine could not read (neither good nor bad for the model).
    pub unsupported: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_stage_past_its_deadline_makes_the_process_unhealthy() {
        let h = HealthRegistry::default();
        let worker = h.register("infer/m", Duration::from_millis(50), true);
        let _optional = h.register("camera/door", Duration::from_millis(1), false);
        worker.beat();
        assert!(h.healthy());
        std::thread::sleep(Duration::from_millis(80));
        assert!(!h.healthy(), "the worker stopped beating");
        let st = h.check();
        assert!(!st[0].ok && st[0].age_s.unwrap() >= 0.05);
        assert!(!st[1].ok && !st[1].required);
        worker.beat();
        assert!(
            h.healthy(),
            "an optional stage past its deadline is reported, not fatal"
        );
    }

    #[test]
    fn a_stage_whose_heartbeat_is_dropped_leaves_the_registry() {
        let h = HealthRegistry::default();
        let old = h.register("infer/m", Duration::from_millis(20), true);
        let new = h.register("infer/m", Duration::from_millis(20), true);
        drop(old);
        std::thread::sleep(Duration::from_millis(40));
        new.beat();
        assert!(h.healthy(), "the stopped worker's stage is gone, not late");
        assert_eq!(h.check().len(), 1);
    }
}
