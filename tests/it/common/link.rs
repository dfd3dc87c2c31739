//! The real MQTT link (`vigil_control::mqtt::MqttLink`) run in the test process on its own
//! tokio runtime, with a real spool in a temporary directory: for tests of what the link does
//! with a real broker (TLS, faults) without cameras or inference.

use super::*;
use std::sync::atomic::Ordering;
use vigil_control::mqtt::MqttLink;
use vigil_control::mqtt::commands::{Handler, StatusFn};
use vigil_control::spool::{Retention, Spool};
use vigil_core::config::{Dur, MqttConfig};

/// A plain-TCP `[mqtt]` table for the broker on 127.0.0.1:`port`, 5 s keep-alive.
pub fn plain_mqtt(port: u16) -> MqttConfig {
    MqttConfig {
        host: "127.0.0.1".into(),
        port,
        keep_alive: Dur::secs(5),
        ..MqttConfig::default()
    }
}

pub struct TestLink {
    pub rt: tokio::runtime::Runtime,
    pub spool: Arc<Spool>,
    pub link: Option<MqttLink>,
}

impl TestLink {
    /// Starts the link for `device` with `status` as the `cmd/status` snapshot.
    pub fn start(dir: &Path, cfg: &MqttConfig, device: &str, status: StatusFn) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = dir.join(format!("{device}-{}.db", fastrand::u64(..)));
        let spool = Arc::new(Spool::open(&db, Retention::default()).unwrap());
        let link = rt.block_on(async {
            MqttLink::start(
                cfg,
                device,
                spool.clone(),
                Handler::new(status),
                vigil_core::health::HealthRegistry::default().register(
                    "mqtt-link",
                    Duration::from_secs(15),
                    true,
                ),
                Default::default(),
            )
        });
        Self {
            rt,
            spool,
            link: Some(link),
        }
    }

    pub fn link(&self) -> &MqttLink {
        self.link.as_ref().unwrap()
    }

    /// Spools one synthetic event for camera `cam` and wakes the link; returns its seq.
    pub fn event(&self, cam: &str) -> u64 {
        let id = format!("ev-{}", fastrand::u64(..));
        let seq = self
            .rt
            .block_on(async {
                tokio::task::block_in_place(|| {
                    self.spool.append(&id, cam, |seq| {
                        serde_json::json!({"seq": seq, "id": id, "camera": cam, "kind": "zone_enter"})
                            .to_string()
                            .into_bytes()
                    })
                })
            })
            .unwrap();
        self.link().wake();
        seq
    }

    pub fn connected(&self) -> bool {
        self.link().stats.connected.load(Ordering::Relaxed)
    }

    pub fn connects(&self) -> u64 {
        self.link().stats.connects.load(Ordering::Relaxed)
    }

    pub fn acked(&self) -> u64 {
        self.link().stats.acked.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.link().stats.last_error()
    }

    /// Waits until `f` holds of the link; false on timeout.
    pub fn wait(&self, timeout: Duration, f: impl Fn(&Self) -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if f(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        f(self)
    }

    /// Waits until the link's last error contains `needle`; returns it (panics on timeout).
    pub fn wait_error(&self, timeout: Duration, needle: &str) -> String {
        self.wait(timeout, |l| {
            l.last_error().is_some_and(|e| e.contains(needle))
        });
        let e = self.last_error().unwrap_or_default();
        assert!(
            e.contains(needle),
            "link error {e:?} does not say {needle:?}"
        );
        e
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            self.rt.block_on(link.shutdown(Duration::from_secs(3)));
        }
    }
}

/// The retained message of `topic` on the plain broker at `port`, as a fresh subscriber
/// sees it (None when there is none within a second).
pub fn retained(port: u16, extra: &[String], topic: &str) -> Option<serde_json::Value> {
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-C",
            "1",
            "-W",
            "2",
        ])
        .args(extra)
        .args(["-t", topic, "--retained-only"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}
