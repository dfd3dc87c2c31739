//! Reconnect policy: exponential back-off with jitter, and a circuit breaker that stops
//! hammering a source that keeps failing. Pure logic, no clock: callers pass durations.

use std::time::Duration;
use vigil_core::config::ReconnectConfig;

/// What the camera should do after a failed (or ended) attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Retry {
    /// Wait this long, then try again.
    After(Duration),
    /// The circuit is open: wait this long, then make one trial attempt.
    CircuitOpen(Duration),
}

#[derive(Debug, Clone)]
pub struct Backoff {
    cfg: ReconnectConfig,
    failures: u32,
}

impl Backoff {
    pub fn new(cfg: ReconnectConfig) -> Self {
        Self { cfg, failures: 0 }
    }

    /// Consecutive failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The source delivered frames: the next failure starts from the initial back-off again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Records a failed attempt; `jitter` in `-1.0..=1.0` spreads retries by ±20%.
    pub fn failed(&mut self, jitter: f64) -> Retry {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= self.cfg.circuit_after {
            return Retry::CircuitOpen(self.cfg.circuit_open.0);
        }
        let exp = self.failures.saturating_sub(1).min(30);
        let base = self.cfg.initial_backoff.as_secs_f64() * f64::from(1u32 << exp.min(20));
        let capped = base.min(self.cfg.max_backoff.as_secs_f64());
        let j = 1.0 + 0.2 * jitter.clamp(-1.0, 1.0);
        Retry::After(Duration::from_secs_f64((capped * j).max(0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::config::Dur;

    fn cfg() -> ReconnectConfig {
        ReconnectConfig {
            initial_backoff: Dur::secs(1),
            max_backoff: Dur::secs(8),
            circuit_after: 6,
            circuit_open: Dur::secs(60),
        }
    }

    #[test]
    fn doubles_up_to_the_cap_then_opens_the_circuit() {
        let mut b = Backoff::new(cfg());
        let waits: Vec<Retry> = (0..6).map(|_| b.failed(0.0)).collect();
        let s = |n| Retry::After(Duration::from_secs(n));
        assert_eq!(
            waits,
            vec![
                s(1),
                s(2),
                s(4),
                s(8),
                s(8),
                Retry::CircuitOpen(Duration::from_secs(60))
            ]
        );
    }

    #[test]
    fn success_resets_and_jitter_stays_within_twenty_percent() {
        let mut b = Backoff::new(cfg());
        b.failed(0.0);
        b.failed(0.0);
        b.succeeded();
        assert_eq!(b.failed(1.0), Retry::After(Duration::from_secs_f64(1.2)));
        assert_eq!(b.failed(-1.0), Retry::After(Duration::from_secs_f64(1.6)));
    }
}
