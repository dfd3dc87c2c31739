//! MQTT link (rumqttc): the retained `status` with a last will, events drained in order from
//! the durable spool and marked sent only on PUBACK, periodic telemetry, and commands with
//! replies. Topics and payloads are documented in `docs/mqtt.md`.
//!
//! Knows nothing of GStreamer, models or rules: it publishes what the spool holds and JSON it is
//! given. A broker that is down never stops Vigil: the link says so once, retries with back-off,
//! and drains the spool when it connects.
//!
//! Each connection attempt gets a fresh rumqttc client: rumqttc keeps unacknowledged publishes
//! only in memory and drops them when a clean session starts, so the spool, not the client, is
//! the source of truth, and no request queued for a dead connection leaks into the next one. The
//! QoS 1 publishes of one connection leave in the order they were queued, so the n-th outgoing
//! publish's packet id belongs to the n-th queued one: that is how a PUBACK finds its event
//! ([`inflight::InFlight`] keeps that bookkeeping).

pub mod commands;
pub mod inflight;

use crate::spool::Spool;
use inflight::{InFlight, WINDOW};
use rumqttc::{AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vigil_core::config::MqttConfig;

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
    pub fn ota_progress(&self) -> String {
        format!("{}/ota/progress", self.root)
    }
    pub fn ota_status(&self) -> String {
        format!("{}/ota/status", self.root)
    }
    /// The subscription for this device's commands.
    pub fn commands(&self) -> String {
        format!("{}/cmd/#", self.root)
    }
    /// The command name of a topic under this device's `cmd/`, unless it is a reply.
    pub fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let name = topic.strip_prefix(&self.root)?.strip_prefix("/cmd/")?;
        (!name.ends_with("/reply") && !name.is_empty()).then_some(name)
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
    /// Event publishes handed to the client (first sends and re-sends after a reconnect).
    pub published: AtomicU64,
    /// Events acknowledged by the broker (and so marked sent in the spool).
    pub acked: AtomicU64,
    /// Events re-published on request (`cmd/events/replay`).
    pub replayed: AtomicU64,
    pub commands: AtomicU64,
}

enum LinkCmd {
    /// New events are in the spool.
    Wake,
    /// Telemetry (QoS 0), dropped while disconnected: a stale snapshot is noise.
    Telemetry(Vec<u8>),
    /// A command reply that came later (from the supervisor): topic, payload.
    Reply(String, Vec<u8>),
    /// OTA progress (QoS 1, dropped while disconnected) or status (QoS 1, retained, kept and
    /// published again on every connection).
    Ota(vigil_ota::agent::OtaTopic, Vec<u8>),
    Shutdown,
}

pub struct MqttLink {
    tx: mpsc::Sender<LinkCmd>,
    pub topics: Topics,
    pub stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttLink {
    /// Starts the link in the background; returns at once, connected or not.
    pub fn start(
        cfg: &MqttConfig,
        device: &str,
        spool: Arc<Spool>,
        handler: commands::Handler,
        heartbeat: vigil_core::health::Heartbeat,
    ) -> Self {
        let topics = Topics::new(&cfg.topic_prefix, device);
        let client_id = cfg
            .client_id
            .clone()
            .unwrap_or_else(|| format!("vigil-{device}"));
        let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.keep_alive.0);
        opts.set_clean_session(true);
        opts.set_inflight(WINDOW as u16 + 16);
        // Commands carry whole config files (config/set, config/get): 1 MiB, not rumqttc's 10 KiB.
        opts.set_max_packet_size(1 << 20, 1 << 20);
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
        let stats = Arc::new(LinkStats::default());
        let (tx, rx) = mpsc::channel(256);
        let link = LinkTask {
            opts,
            addr: format!("{}:{}", cfg.host, cfg.port),
            topics: topics.clone(),
            stats: stats.clone(),
            spool,
            handler,
            rx,
            heartbeat,
            me: tx.clone(),
            ota_status: None,
            inflight: InFlight::new(),
        };
        let task = tokio::spawn(link.run());
        Self {
            tx,
            topics,
            stats,
            task,
        }
    }

    /// Tells the link that the spool has new events.
    pub fn wake(&self) {
        let _ = self.tx.try_send(LinkCmd::Wake);
    }

    pub fn telemetry(&self, payload: Vec<u8>) {
        let _ = self.tx.try_send(LinkCmd::Telemetry(payload));
    }

    /// A handle that publishes telemetry from any thread.
    pub fn telemetry_sender(&self) -> impl Fn(Vec<u8>) + Send + 'static {
        let tx = self.tx.clone();
        move |payload| {
            let _ = tx.try_send(LinkCmd::Telemetry(payload));
        }
    }

    /// Publishes an OTA progress or status message. Progress may be dropped when the link's
    /// queue is full (the next one supersedes it); a status (the outcome) never is: it then
    /// waits for room on a task of its own.
    pub fn ota(&self, topic: vigil_ota::agent::OtaTopic, payload: Vec<u8>) {
        let status = matches!(topic, vigil_ota::agent::OtaTopic::Status);
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(cmd)) =
            self.tx.try_send(LinkCmd::Ota(topic, payload))
            && status
        {
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Publishes `offline` (retained), disconnects cleanly, and waits up to `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.tx.send(LinkCmd::Shutdown).await;
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
        time: Some(vigil_core::events::now_rfc3339()),
        reason,
    })
    .unwrap_or_default()
}

struct LinkTask {
    opts: MqttOptions,
    addr: String,
    topics: Topics,
    stats: Arc<LinkStats>,
    spool: Arc<Spool>,
    handler: commands::Handler,
    rx: mpsc::Receiver<LinkCmd>,
    /// Beats at least once a second, connected or not.
    heartbeat: vigil_core::health::Heartbeat,
    /// The link's own command channel, for replies that come later.
    me: mpsc::Sender<LinkCmd>,
    /// The last `ota/status`, published again on every connection.
    ota_status: Option<Vec<u8>>,
    /// The current connection's in-flight publishes: which queued publish a packet id stands
    /// for, and which event a PUBACK acknowledges. Cleared when a connection starts.
    inflight: InFlight,
}

/// One connection's bookkeeping.
struct Session {
    client: AsyncClient,
    connected: bool,
}

enum SessionEnd {
    Lost,
    Shutdown,
}

impl LinkTask {
    async fn run(mut self) {
        let mut delay = Duration::from_millis(500);
        let mut said_down = false;
        loop {
            let (client, eventloop) = AsyncClient::new(self.opts.clone(), 2 * WINDOW + 1024);
            let started = Instant::now();
            match self.session(client, eventloop, &mut said_down).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost => {}
            }
            if started.elapsed() > Duration::from_secs(30) {
                delay = Duration::from_millis(500);
            }
            // Back off, but stay responsive to a shutdown.
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = beat.tick() => self.heartbeat.beat(),
                    cmd = self.rx.recv() => if matches!(cmd, None | Some(LinkCmd::Shutdown)) { return },
                }
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }

    fn spool_call<T>(
        &self,
        f: impl FnOnce(&Spool) -> Result<T, crate::spool::SpoolError>,
    ) -> Option<T> {
        match tokio::task::block_in_place(|| f(&self.spool)) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    }

    /// Queues unsent events from the spool until the window is full.
    fn fill(&mut self, s: &mut Session) {
        if !s.connected {
            return;
        }
        let room = self.inflight.room();
        if room == 0 {
            return;
        }
        let cursor = self.inflight.cursor();
        let Some(rows) = self.spool_call(|sp| sp.unsent_after(cursor, room)) else {
            return;
        };
        for row in rows {
            if s.client
                .try_publish(
                    self.topics.events(&row.camera),
                    QoS::AtLeastOnce,
                    false,
                    row.payload,
                )
                .is_err()
            {
                break;
            }
            self.inflight.queued_event(row.seq);
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish_other(&mut self, s: &mut Session, topic: String, retain: bool, payload: Vec<u8>) {
        if s.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_ok()
        {
            self.inflight.queued_other();
        }
    }

    async fn session(
        &mut self,
        client: AsyncClient,
        mut eventloop: rumqttc::EventLoop,
        said_down: &mut bool,
    ) -> SessionEnd {
        let mut s = Session {
            client,
            connected: false,
        };
        // rumqttc forgets what the last connection had queued or in flight (clean session,
        // fresh client); the spool redelivers from its oldest unsent event.
        self.inflight.connection_lost();
        let mut closing: Option<tokio::time::Instant> = None;
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            let deadline =
                closing.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        s.connected = true;
                        self.stats.connected.store(true, Ordering::Relaxed);
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        *said_down = false;
                        let unsent = self.spool_call(|sp| sp.stats()).map(|st| st.unsent).unwrap_or(0);
                        tracing::info!(broker = %self.addr, unsent, "MQTT connected; draining the spool");
                        let _ = s.client.try_subscribe(self.topics.commands(), QoS::AtLeastOnce);
                        self.publish_other(&mut s, self.topics.status(), true, status_json("online", None));
                        if let Some(p) = self.ota_status.clone() {
                            self.publish_other(&mut s, self.topics.ota_status(), true, p);
                        }
                        self.fill(&mut s);
                    }
                    Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => self.inflight.outgoing_publish(pkid),
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = self.inflight.puback(ack.pkid) {
                            self.spool_call(|sp| sp.mark_sent(&[seq]));
                            self.stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        self.fill(&mut s);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if let Some(name) = self.topics.command_name(&p.topic) {
                            self.stats.commands.fetch_add(1, Ordering::Relaxed);
                            let reply_topic = format!("{}/reply", p.topic);
                            let ctx = commands::Context { spool: &self.spool };
                            let out = tokio::task::block_in_place(|| self.handler.handle(name, &p.payload, &ctx));
                            for ev in out.republish {
                                self.publish_other(&mut s, self.topics.events(&ev.camera), false, ev.payload);
                                self.stats.replayed.fetch_add(1, Ordering::Relaxed);
                            }
                            match out.deferred {
                                // The supervisor answers later; the link goes on meanwhile.
                                Some(d) => {
                                    let me = self.me.clone();
                                    tokio::spawn(async move {
                                        let _ = me.send(LinkCmd::Reply(reply_topic, d.reply().await)).await;
                                    });
                                }
                                None => self.publish_other(&mut s, reply_topic, false, out.reply),
                            }
                        }
                    }
                    Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                        self.stats.connected.store(false, Ordering::Relaxed);
                        return SessionEnd::Shutdown;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.stats.connected.store(false, Ordering::Relaxed);
                        if closing.is_some() {
                            return SessionEnd::Shutdown;
                        }
                        if !*said_down {
                            tracing::warn!(broker = %self.addr, "MQTT broker unreachable ({e}); analysing on, events kept in the spool");
                            *said_down = true;
                        } else {
                            tracing::debug!(broker = %self.addr, "MQTT still unreachable: {e}");
                        }
                        return SessionEnd::Lost;
                    }
                },
                cmd = self.rx.recv(), if closing.is_none() => match cmd {
                    Some(LinkCmd::Wake) => self.fill(&mut s),
                    Some(LinkCmd::Reply(topic, payload)) => self.publish_other(&mut s, topic, false, payload),
                    Some(LinkCmd::Ota(kind, payload)) => {
                        let retained = kind == vigil_ota::agent::OtaTopic::Status;
                        if retained {
                            self.ota_status = Some(payload.clone());
                        }
                        if s.connected {
                            let topic = if retained { self.topics.ota_status() } else { self.topics.ota_progress() };
                            self.publish_other(&mut s, topic, retained, payload);
                        }
                    }
                    Some(LinkCmd::Telemetry(p)) => {
                        if s.connected {
                            let _ = s.client.try_publish(self.topics.telemetry(), QoS::AtMostOnce, false, p);
                        }
                    }
                    Some(LinkCmd::Shutdown) | None => {
                        if !s.connected {
                            return SessionEnd::Shutdown;
                        }
                        self.publish_other(&mut s, self.topics.status(), true, status_json("offline", Some("shutdown")));
                        let _ = s.client.try_disconnect();
                        closing = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                },
                _ = tokio::time::sleep_until(deadline), if closing.is_some() => return SessionEnd::Shutdown,
                _ = beat.tick() => self.heartbeat.beat(),
            }
        }
    }
}
