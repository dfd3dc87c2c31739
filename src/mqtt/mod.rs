//! MQTT link (rumqttc): the retained `status` with a last will, QoS 1 events, periodic
//! telemetry. Topics and payloads are documented in `docs/mqtt.md`.
//!
//! Knows nothing of GStreamer, models or rules: it publishes JSON it is given. A broker that is
//! down never stops Vigil: the link says so once, retries with back-off, and connects when it can.

use crate::config::MqttConfig;
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Topic names under `<prefix>/<device>/`.
#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(prefix: &str, device: &str) -> Self {
        Self {
            root: format!("{prefix}/{device}"),
        }
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }
    pub fn telemetry(&self) -> String {
        format!("{}/telemetry", self.root)
    }
    pub fn events(&self, camera: &str) -> String {
        format!("{}/events/{camera}", self.root)
    }
}

/// Payload of `status` (retained). The last will carries `state: "offline"`.
#[derive(Debug, Serialize)]
pub struct StatusPayload<'a> {
    pub state: &'a str,
    pub version: &'a str,
    /// When the message was produced; absent from the last will, which is registered at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// Counters of the link, for telemetry.
#[derive(Default, Debug)]
pub struct LinkStats {
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    /// Events handed to the client's queue (not yet acknowledged by the broker).
    /// Events handed to the client's queue (not yet acknowledged by the broker).
    pub published: AtomicU64,
    pub acked: AtomicU64,
    /// Events refused because the client's queue was full (broker away for long).
    pub dropped: AtomicU64,
}

pub struct MqttLink {
    client: AsyncClient,
    pub topics: Topics,
    pub stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

/// Requests the client queues while the broker is away, before publishes are refused.
const CLIENT_QUEUE: usize = 4096;

impl MqttLink {
    /// Starts the link in the background; returns at once, connected or not.
    pub fn start(cfg: &MqttConfig, device: &str) -> Self {
        let topics = Topics::new(&cfg.topic_prefix, device);
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vigil-{device}"));
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.keep_alive.0);
        opts.set_clean_session(true);
        if let Some(user) = &cfg.username {
            opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        let will = serde_json::to_vec(&StatusPayload {
            state: "offline",
            version: env!("CARGO_PKG_VERSION"),
            time: None,
            reason: Some("connection lost"),
        })
        .unwrap_or_default();
        opts.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
        let (client, mut eventloop) = AsyncClient::new(opts, CLIENT_QUEUE);
        let stats = Arc::new(LinkStats::default());
        let addr = format!("{}:{}", cfg.host, cfg.port);
        let task = {
            let (client, stats, topics) = (client.clone(), stats.clone(), topics.clone());
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(500);
                let mut said_down = false;
                loop {
                    match eventloop.poll().await {
                        Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                            stats.connected.store(true, Ordering::Relaxed);
                            stats.connects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(broker = %addr, "MQTT connected");
                            said_down = false;
                            delay = Duration::from_millis(500);
                            let online = status_json("online", None);
                            let _ =
                                client.try_publish(topics.status(), QoS::AtLeastOnce, true, online);
                        }
                        Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                            stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                            stats.connected.store(false, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            stats.connected.store(false, Ordering::Relaxed);
                            if !said_down {
                                tracing::warn!(broker = %addr, "MQTT broker unreachable ({e}); analysing on, retrying in the background");
                                said_down = true;
                            } else {
                                tracing::debug!(broker = %addr, "MQTT still unreachable: {e}");
                            }
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(10));
                        }
                    }
                }
            })
        };
        Self {
            client,
            topics,
            stats,
            task,
        }
    }

    /// Queues an event (QoS 1); false (and counted as dropped) if the client queue is full.
    pub fn publish_event(&self, topic: String, payload: Vec<u8>) -> bool {
        let ok = self.publish(topic, false, payload);
        let counter = if ok {
            &self.stats.published
        } else {
            &self.stats.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }

    /// Queues a QoS 1 publish; false if the client queue is full.
    pub fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_ok()
    }

    /// Publishes `offline` (retained), disconnects cleanly, and waits up to `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let offline = status_json("offline", Some("shutdown"));
        let _ = self
            .client
            .try_publish(self.topics.status(), QoS::AtLeastOnce, true, offline);
        let _ = self.client.try_disconnect();
        let abort = self.task.abort_handle();
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            abort.abort();
        }
    }
}

fn status_json(state: &str, reason: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&StatusPayload {
        state,
        version: env!("CARGO_PKG_VERSION"),
        time: Some(crate::events::now_rfc3339()),
        reason,
    })
    .unwrap_or_default()
}
