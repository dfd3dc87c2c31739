//! MQTT link (rumqttc): the retained `status` with a last will, events drained in order from
//! the durable spool and marked sent only on PUBACK, periodic telemetry, and commands with
//! replies. Topics and payloads are documented in `docs/mqtt.md`.
//!
//! Knows nothing of GStreamer, models or rules: it publishes what the spool holds and JSON it is
//! given. A broker that is down never stops Vigil: the link says why (once per reason), retries
//! with back-off, and drains the spool when it connects.
//!
//! Each connection attempt gets a fresh rumqttc client: rumqttc keeps unacknowledged publishes
//! only in memory and drops them when a clean session starts, so the spool, not the client, is
//! the source of truth, and no request queued for a dead connection leaks into the next one. The
//! QoS 1 publishes of one connection leave in the order they were queued, so the n-th outgoing
//! publish's packet id belongs to the n-th queued one: that is how a PUBACK finds its event
//! ([`inflight::InFlight`] keeps that bookkeeping).
//!
//! The broker publishes the last will (`offline`) of a connection it has not seen end with a
//! DISCONNECT, also when a new connection with the same client id takes its place. So the link
//! never leaves a connection without one where it can: a connection attempt is driven to its
//! CONNACK (or its error) and never dropped half-made; a connection that stops answering pings
//! gets a DISCONNECT written straight to its socket (delivered when the network comes back)
//! before it is dropped; an attempt is made only once the broker's port answers, and then waits
//! long enough for the CONNACK that no half-made connection is left behind; and the
//! link listens to its own `status`, so a stale will that still lands after its `online` is
//! answered at once with `online` again (the retained status ends `online` while connected).

pub mod bound;
pub mod commands;
pub mod ha;
pub mod inflight;
pub mod tls;

use crate::spool::Spool;
use inflight::{InFlight, WINDOW};
use rumqttc::{
    AsyncClient, Event as MqttEvent, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use vigil_core::config::{MqttConfig, TlsFiles, Validity};

/// First pause after a lost connection (jittered ±20 %), doubled per failed attempt.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// Longest pause while the broker is unreachable.
pub const MAX_RETRY: Duration = Duration::from_secs(2);
/// Longest pause while the broker (or this box) refuses: a certificate, a name, credentials.
pub const MAX_RETRY_REFUSED: Duration = Duration::from_secs(30);
/// A connection up (CONNACK) this long restarts the back-off at [`FIRST_RETRY`].
pub const STABLE: Duration = Duration::from_secs(3);
/// How long the broker's port may take to accept a TCP connection before an attempt.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the TLS files are compared with those of the current connection.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// How long the link waits for its own `online` to come back from the broker (it subscribes
/// to its status) before it says that the broker's ACL seems to deny this device's topics.
const ECHO_WAIT: Duration = Duration::from_secs(5);

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
    /// The camera's latest event picture (retained, binary JPEG).
    pub fn snapshot(&self, camera: &str) -> String {
        format!("{}/snapshot/{camera}", self.root)
    }
    pub fn ota_progress(&self) -> String {
        format!("{}/ota/progress", self.root)
    }
    pub fn ota_status(&self) -> String {
        format!("{}/ota/status", self.root)
    }
    /// Whole-system update progress (`crate::system_update`).
    pub fn system_progress(&self) -> String {
        format!("{}/system/progress", self.root)
    }
    /// A whole-system update's outcome (retained).
    pub fn system_status(&self) -> String {
        format!("{}/system/status", self.root)
    }
    /// The subscription for this device's commands.
    pub fn commands(&self) -> String {
        format!("{}/cmd/#", self.root)
    }
    /// The topic of one command (`camera/restart`).
    pub fn command(&self, name: &str) -> String {
        format!("{}/cmd/{name}", self.root)
    }
    /// The command name of a topic under this device's `cmd/` (possibly empty: it gets an
    /// error reply), unless it is a reply.
    pub fn command_name<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let name = topic.strip_prefix(&self.root)?.strip_prefix("/cmd/")?;
        (!name.ends_with("/reply")).then_some(name)
    }
}

/// What the link says to Home Assistant ([`ha`]).
#[derive(Debug, Clone, Default)]
pub enum HaDiscovery {
    /// Nothing (never turned on here).
    #[default]
    Off,
    /// Turned off since it was on: an empty retained message on this topic removes the
    /// device (sent on every connection until the supervisor forgets the topic).
    Remove(String),
    /// The discovery message, retained on `topic`; sent again whenever `status_topic` says
    /// `online`.
    On {
        topic: String,
        status_topic: String,
        payload: Vec<u8>,
    },
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
    /// Payloads shortened to fit in one MQTT packet ([`bound`]).
    pub truncated: AtomicU64,
    /// Why the link is not connected (cleared on CONNACK): e.g. the broker refused this box's
    /// client certificate, naming the file.
    pub last_error: Mutex<Option<String>>,
}

impl LinkStats {
    /// Why the link is not connected, if it is not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }
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
    /// A camera's latest event picture (QoS 1, retained, binary), dropped while disconnected.
    Snapshot(String, std::sync::Arc<[u8]>),
    /// Whole-system update progress (`false`: QoS 1, dropped while disconnected) or outcome
    /// (`true`: retained, kept and published again on every connection).
    System(bool, Vec<u8>),
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
        ha: HaDiscovery,
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
        // Commands carry whole config files (config/set, config/get): 1 MiB, not rumqttc's
        // 10 KiB; what the link sends is bounded to it (`bound`).
        opts.set_max_packet_size(bound::MAX_PACKET, bound::MAX_PACKET);
        if let Some(user) = &cfg.username {
            opts.set_credentials(user.clone(), cfg.password.clone().unwrap_or_default());
        }
        let will = serde_json::to_vec(&StatusPayload {
            state: "offline",
            version: vigil_core::version::version(),
            time: None,
            reason: Some("connection lost"),
        })
        .unwrap_or_default();
        opts.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
        let addr = format!("{}:{}", cfg.host, cfg.port);
        if cfg.ca_file.is_none() {
            tracing::warn!(broker = %addr, "MQTT over plain TCP: the broker is not verified and the traffic is readable on the network (set [mqtt] ca_file, cert_file and key_file; see docs/mqtt.md)");
        }
        let stats = Arc::new(LinkStats::default());
        let (tx, rx) = mpsc::channel(256);
        let link = LinkTask {
            cfg: cfg.clone(),
            opts,
            addr,
            topics: topics.clone(),
            stats: stats.clone(),
            spool,
            handler,
            rx,
            heartbeat,
            me: tx.clone(),
            ota_status: None,
            system_status: None,
            inflight: InFlight::new(),
            said: None,
            out_of_date: None,
            ha,
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

    /// A handle that publishes whole-system update messages from any thread: progress may be
    /// dropped when the link's queue is full, an outcome (`true`) waits for room.
    pub fn system_sender(&self) -> crate::system_update::Publish {
        let tx = self.tx.clone();
        std::sync::Arc::new(move |last: bool, payload: Vec<u8>| {
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(cmd)) =
                tx.try_send(LinkCmd::System(last, payload))
                && last
            {
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        let tx = tx.clone();
                        rt.spawn(async move {
                            let _ = tx.send(cmd).await;
                        });
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(cmd);
                    }
                }
            }
        })
    }

    /// Publishes a camera's event picture, retained on `snapshot/<camera>`; dropped when the
    /// link is busy or down (the next one supersedes it), and when it does not fit one packet
    /// (`false`).
    pub fn snapshot(&self, camera: &str, jpeg: std::sync::Arc<[u8]>) -> bool {
        let topic = self.topics.snapshot(camera);
        if jpeg.len() > bound::max_payload(&topic) {
            return false;
        }
        let _ = self.tx.try_send(LinkCmd::Snapshot(topic, jpeg));
        true
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
        version: vigil_core::version::version(),
        time: Some(vigil_core::events::now_rfc3339()),
        reason,
    })
    .unwrap_or_default()
}

/// The pause between connection attempts: exponential from [`FIRST_RETRY`], jittered, capped
/// at [`MAX_RETRY`] ([`MAX_RETRY_REFUSED`] while refused), and back to the start after a
/// connection that was up for [`STABLE`], however short the outage that ended it.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: FIRST_RETRY }
    }
}

impl Backoff {
    /// The pause after a connection that was up for `up_for` (None: never connected), that
    /// ended in a refusal or not.
    pub fn after(&mut self, up_for: Option<Duration>, refused: bool) -> Duration {
        if up_for.is_some_and(|d| d >= STABLE) {
            self.next = FIRST_RETRY;
        }
        let cap = if refused {
            MAX_RETRY_REFUSED
        } else {
            MAX_RETRY
        };
        let pause = self.next.min(cap);
        self.next = (self.next * 2).min(cap.max(self.next));
        pause.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

struct LinkTask {
    cfg: MqttConfig,
    /// Options shared by every attempt; each adds its transport (TCP or TLS, files read anew).
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
    /// The last `system/status`, likewise.
    system_status: Option<Vec<u8>>,
    /// The current connection's in-flight publishes: which queued publish a packet id stands
    /// for, and which event a PUBACK acknowledges. Cleared when a connection starts.
    inflight: InFlight,
    /// The last reason logged for being disconnected: a new reason is logged at once, the same
    /// one only at debug level.
    said: Option<String>,
    /// Why the client certificate is not valid by this box's clock, at the last attempt
    /// (added to the reason when the broker refuses the connection).
    out_of_date: Option<String>,
    /// Home Assistant discovery ([`HaDiscovery`]).
    ha: HaDiscovery,
}

/// One connection's bookkeeping.
struct Session {
    client: AsyncClient,
    /// When the CONNACK came.
    up_since: Option<Instant>,
    /// When a PINGREQ went out that has no PINGRESP yet.
    ping_out: Option<Instant>,
    /// The TLS files this connection was made with, to notice when they change.
    tls_contents: Option<Vec<u8>>,
    /// Until when the link waits for its own `online` to come back.
    echo_due: Option<Instant>,
    /// Its own `online` came back: the broker lets this connection publish and read this
    /// device's topics. Events are drained only then (a broker denying them would still
    /// acknowledge and drop them).
    echoed: bool,
}

impl Session {
    fn connected(&self) -> bool {
        self.up_since.is_some()
    }
}

#[derive(Debug, Clone, Copy)]
enum SessionEnd {
    /// The connection failed or was lost; `up_for`: how long it had been up, if at all.
    Lost {
        up_for: Option<Duration>,
        refused: bool,
    },
    /// The TLS files changed: reconnect at once with the new ones.
    Renew,
    Shutdown,
}

impl LinkTask {
    async fn run(mut self) {
        let mut backoff = Backoff::default();
        loop {
            let end = match self.attempt() {
                Ok((opts, tls_contents)) => {
                    if self.broker_answers().await {
                        let (client, mut eventloop) = AsyncClient::new(opts, 2 * WINDOW + 1024);
                        // Wait for the CONNACK rather than leave a connection whose CONNECT
                        // the broker may still read (its will would be published then).
                        let wait = (2 * self.cfg.keep_alive.0.as_secs()).max(10);
                        eventloop.network_options.set_connection_timeout(wait);
                        self.session(client, eventloop, tls_contents).await
                    } else {
                        SessionEnd::Lost {
                            up_for: None,
                            refused: false,
                        }
                    }
                }
                Err(why) => {
                    self.down(why);
                    SessionEnd::Lost {
                        up_for: None,
                        refused: true,
                    }
                }
            };
            let pause = match end {
                SessionEnd::Shutdown => return,
                SessionEnd::Renew => continue,
                SessionEnd::Lost { up_for, refused } => backoff.after(up_for, refused),
            };
            // Back off, but stay responsive to a shutdown, and try again at once when the TLS
            // files change (a renewed certificate after a refusal).
            let tls_before = self.tls_contents();
            let sleep = tokio::time::sleep(pause);
            tokio::pin!(sleep);
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            let mut watch = tokio::time::interval(WATCH_EVERY);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = beat.tick() => self.heartbeat.beat(),
                    _ = watch.tick(), if tls_before.is_some() => {
                        if self.tls_contents() != tls_before {
                            tracing::info!(broker = %self.addr, "MQTT TLS files changed; trying them now");
                            break;
                        }
                    }
                    cmd = self.rx.recv() => if matches!(cmd, None | Some(LinkCmd::Shutdown)) { return },
                }
            }
        }
    }

    /// The options of one attempt: TLS from the files as they are now. The error names the
    /// field and the problem.
    fn attempt(&mut self) -> Result<(MqttOptions, Option<Vec<u8>>), String> {
        let mut opts = self.opts.clone();
        if self.cfg.ca_file.is_none() {
            return Ok((opts, None));
        }
        let files = tokio::task::block_in_place(|| {
            TlsFiles::read(&self.cfg, std::time::SystemTime::now(), Validity::Warn)
        })
        .map_err(|issues| {
            issues
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        })?
        .ok_or_else(|| "mqtt.ca_file: not set".to_string())?;
        self.out_of_date = files.validity.as_ref().map(ToString::to_string);
        let config = tls::client_config(&self.cfg, &files).map_err(|e| e.to_string())?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        Ok((opts, Some(files.contents)))
    }

    /// Whether the broker's port accepts a TCP connection (closed at once). An attempt is made
    /// only then, so that it can wait long for its CONNACK without delaying the recovery
    /// from a network outage.
    async fn broker_answers(&mut self) -> bool {
        let target = (self.cfg.host.as_str(), self.cfg.port);
        match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                self.down(format!("broker unreachable: {e}"));
                false
            }
            Err(_) => {
                self.down(format!(
                    "broker unreachable: no answer from {} within {PROBE_TIMEOUT:?}",
                    self.addr
                ));
                false
            }
        }
    }

    /// Says why the link is down: logged when the reason is new, kept for `LinkStats`.
    fn down(&mut self, why: String) {
        self.stats.connected.store(false, Ordering::Relaxed);
        self.stats.set_error(Some(why.clone()));
        if self.said.as_deref() != Some(why.as_str()) {
            tracing::warn!(broker = %self.addr, "MQTT not connected: {why}; analysing on, events kept in the spool");
            self.said = Some(why);
        } else {
            tracing::debug!(broker = %self.addr, "MQTT still not connected: {why}");
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

    /// A payload shortened to fit in one packet on `topic` (counted, logged).
    fn fit(&self, topic: &str, payload: Vec<u8>) -> Vec<u8> {
        let len = payload.len();
        let out = bound::fit(payload, bound::max_payload(topic));
        if out.len() != len {
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                topic,
                bytes = len,
                "payload over the MQTT packet limit: published shortened ({} bytes, marked \"truncated\")",
                out.len()
            );
        }
        out
    }

    /// Queues unsent events from the spool until the window is full.
    fn fill(&mut self, s: &mut Session) {
        if !s.connected() || !s.echoed {
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
            let topic = self.topics.events(&row.camera);
            let payload = self.fit(&topic, row.payload);
            if s.client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .is_err()
            {
                break;
            }
            self.inflight.queued_event(row.seq);
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish_other(&mut self, s: &mut Session, topic: String, retain: bool, payload: Vec<u8>) {
        let payload = self.fit(&topic, payload);
        if s.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .is_ok()
        {
            self.inflight.queued_other();
        }
    }

    fn on_connack(&mut self, s: &mut Session) {
        s.up_since = Some(Instant::now());
        s.echo_due = Some(Instant::now() + ECHO_WAIT);
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        self.stats.set_error(None);
        self.said = None;
        let unsent = self
            .spool_call(|sp| sp.stats())
            .map(|st| st.unsent)
            .unwrap_or(0);
        let tls = if s.tls_contents.is_some() {
            "TLS"
        } else {
            "plain TCP"
        };
        tracing::info!(broker = %self.addr, unsent, "MQTT connected ({tls}); draining the spool");
        // Commands, and this device's own status (its `online` coming back shows that the
        // broker lets it through; a stale will landing later is answered at once), then
        // `online`, which the broker therefore delivers back live.
        let _ = s
            .client
            .try_subscribe(self.topics.commands(), QoS::AtLeastOnce);
        let _ = s
            .client
            .try_subscribe(self.topics.status(), QoS::AtLeastOnce);
        self.publish_other(s, self.topics.status(), true, status_json("online", None));
        match self.ha.clone() {
            HaDiscovery::Off => {}
            HaDiscovery::Remove(topic) => self.publish_other(s, topic, true, Vec::new()),
            HaDiscovery::On {
                topic,
                status_topic,
                payload,
            } => {
                let _ = s.client.try_subscribe(status_topic, QoS::AtLeastOnce);
                self.publish_other(s, topic, true, payload);
            }
        }
        if let Some(p) = self.ota_status.clone() {
            self.publish_other(s, self.topics.ota_status(), true, p);
        }
        if let Some(p) = self.system_status.clone() {
            self.publish_other(s, self.topics.system_status(), true, p);
        }
        self.fill(s);
    }

    /// An incoming publish: a command, or this device's own status (`closing`: the link is
    /// saying `offline` itself).
    fn on_publish(&mut self, s: &mut Session, p: rumqttc::Publish, closing: bool) {
        if let HaDiscovery::On {
            topic,
            status_topic,
            payload,
        } = &self.ha
            && p.topic == *status_topic
        {
            // Home Assistant started (or restarted): its discovered entities need the message
            // again (a retained copy may have been lost with its broker).
            if p.payload.as_ref() == b"online" && !p.retain {
                let (topic, payload) = (topic.clone(), payload.clone());
                self.publish_other(s, topic, true, payload);
            }
            return;
        }
        if p.topic == self.topics.status() {
            let state = serde_json::from_slice::<serde_json::Value>(&p.payload)
                .ok()
                .and_then(|v| v.get("state").and_then(|x| x.as_str()).map(str::to_string));
            // A retained message is what the topic held before this subscription: not an echo,
            // and not news (this connection's `online` replaces it).
            if p.retain {
                return;
            }
            if state.as_deref() == Some("online") && !s.echoed {
                s.echo_due = None;
                s.echoed = true;
                self.fill(s);
            }
            if state.as_deref() == Some("offline") && s.connected() && !closing {
                tracing::info!(
                    "a last will of an earlier connection reached the broker after this one was up; status set back to online"
                );
                self.publish_other(s, self.topics.status(), true, status_json("online", None));
            }
            return;
        }
        let Some(name) = self.topics.command_name(&p.topic) else {
            return;
        };
        if p.retain {
            // A retained command would run again on every connection.
            tracing::warn!(topic = %p.topic, "ignoring a retained command (expected commands published without the retain flag)");
            return;
        }
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let reply_topic = format!("{}/reply", p.topic);
        let ctx = commands::Context { spool: &self.spool };
        let out = tokio::task::block_in_place(|| self.handler.handle(name, &p.payload, &ctx));
        for ev in out.republish {
            self.publish_other(s, self.topics.events(&ev.camera), false, ev.payload);
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
            None => self.publish_other(s, reply_topic, false, out.reply),
        }
    }

    /// This device's own `online` did not come back: the broker accepted the connection but
    /// (MQTT 3.1.1 brokers deny silently) drops what it publishes and does not deliver its
    /// commands. Said once per connection; the link stays connected.
    fn no_echo(&mut self) {
        let who = match (&self.cfg.cert_file, &self.cfg.username) {
            (Some(cert), _) => {
                let cn = tokio::task::block_in_place(|| {
                    TlsFiles::read(&self.cfg, std::time::SystemTime::now(), Validity::Warn)
                })
                .ok()
                .flatten()
                .and_then(|f| f.identity)
                .and_then(|i| i.common_name)
                .unwrap_or_else(|| "?".into());
                format!(
                    "the user the broker takes from the certificate's CN is {cn:?} (mqtt.cert_file {})",
                    cert.display()
                )
            }
            (None, Some(user)) => format!("the user is {user:?} (mqtt.username)"),
            (None, None) => "the connection is anonymous".to_string(),
        };
        let why = format!(
            "connected, but the broker did not deliver this box's own status back within {ECHO_WAIT:?}: its ACL seems to deny {}/# to this connection, so events and replies are dropped and commands do not arrive; {who}",
            self.topics.root
        );
        tracing::error!(broker = %self.addr, "MQTT: {why}");
        self.stats.set_error(Some(why));
    }

    /// The TLS files' contents now (None: TLS off).
    fn tls_contents(&self) -> Option<Vec<u8>> {
        self.cfg.ca_file.as_ref()?;
        Some(tokio::task::block_in_place(|| {
            vigil_core::config::tls_contents(&self.cfg)
        }))
    }

    /// Whether the TLS files now differ from those of this connection (and are valid: a
    /// broken renewal is reported and the connection kept).
    fn tls_changed(&mut self, s: &Session) -> bool {
        let Some(old) = &s.tls_contents else {
            return false;
        };
        if self.tls_contents().as_ref() == Some(old) {
            return false;
        }
        match self.attempt() {
            Ok(_) => {
                tracing::info!(broker = %self.addr, "MQTT TLS files changed; reconnecting with them");
                true
            }
            Err(why) => {
                if self.said.as_deref() != Some(why.as_str()) {
                    tracing::error!(
                        "MQTT TLS files changed but cannot be used: {why}; keeping the current connection"
                    );
                    self.said = Some(why);
                }
                false
            }
        }
    }

    async fn session(
        &mut self,
        client: AsyncClient,
        mut eventloop: rumqttc::EventLoop,
        tls_contents: Option<Vec<u8>>,
    ) -> SessionEnd {
        let mut s = Session {
            client,
            up_since: None,
            ping_out: None,
            tls_contents,
            echo_due: None,
            echoed: false,
        };
        // rumqttc forgets what the last connection had queued or in flight (clean session,
        // fresh client); the spool redelivers from its oldest unsent event.
        self.inflight.connection_lost();
        let mut closing: Option<(tokio::time::Instant, SessionEnd)> = None;
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut watch = tokio::time::interval(WATCH_EVERY);
        let keep_alive = self.cfg.keep_alive.0;
        // The connection is made by one `poll` future, driven to its end: dropping it half-way
        // (another branch of a select winning) would leave a connection whose CONNECT the broker
        // still reads, with this client id: the next attempt then takes it over, and the broker
        // publishes its will (`offline`) just before the new `online`.
        let connected = {
            let connect = eventloop.poll();
            tokio::pin!(connect);
            loop {
                tokio::select! {
                    ev = &mut connect => break ev,
                    _ = beat.tick() => self.heartbeat.beat(),
                }
            }
        };
        match connected {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => self.on_connack(&mut s),
            Ok(other) => tracing::debug!("MQTT: {other:?} before the CONNACK"),
            Err(e) => {
                let (mut why, refused) = tls::explain(&e, &self.cfg);
                if let Some(v) = &self.out_of_date {
                    why = format!("{why}; by this box's clock {v}");
                }
                self.down(why);
                return SessionEnd::Lost {
                    up_for: None,
                    refused,
                };
            }
        }
        loop {
            let deadline = closing.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                |(at, _)| at,
            );
            let up_for = s.up_since.map(|t| t.elapsed());
            tokio::select! {
                ev = eventloop.poll() => match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => self.on_connack(&mut s),
                    Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => self.inflight.outgoing_publish(pkid),
                    Ok(MqttEvent::Outgoing(Outgoing::PingReq)) => {
                        s.ping_out.get_or_insert_with(Instant::now);
                    }
                    Ok(MqttEvent::Incoming(Packet::PingResp)) => s.ping_out = None,
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = self.inflight.puback(ack.pkid) {
                            self.spool_call(|sp| sp.mark_sent(&[seq]));
                            self.stats.acked.fetch_add(1, Ordering::Relaxed);
                        }
                        self.fill(&mut s);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(ack))) => {
                        if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                            self.down(format!("the broker refused the subscription to {} or {} (is this box's user, or its certificate's CN, allowed this device's topics by the broker's ACL?)", self.topics.commands(), self.topics.status()));
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => self.on_publish(&mut s, p, closing.is_some()),
                    Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => {
                        self.stats.connected.store(false, Ordering::Relaxed);
                        return closing.map_or(SessionEnd::Shutdown, |(_, end)| end);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some((_, end)) = closing {
                            self.stats.connected.store(false, Ordering::Relaxed);
                            return end;
                        }
                        let (why, refused) = tls::explain(&e, &self.cfg);
                        let why = if up_for.is_some() { format!("connection lost: {why}") } else { why };
                        self.down(why);
                        return SessionEnd::Lost { up_for, refused };
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
                        if s.connected() {
                            let topic = if retained { self.topics.ota_status() } else { self.topics.ota_progress() };
                            self.publish_other(&mut s, topic, retained, payload);
                        }
                    }
                    Some(LinkCmd::System(last, payload)) => {
                        if last {
                            self.system_status = Some(payload.clone());
                        }
                        if s.connected() {
                            let topic = if last { self.topics.system_status() } else { self.topics.system_progress() };
                            self.publish_other(&mut s, topic, last, payload);
                        }
                    }
                    Some(LinkCmd::Snapshot(topic, jpeg)) => {
                        // Checked to fit by `MqttLink::snapshot`: binary, never reshaped.
                        if s.connected()
                            && s.client.try_publish(topic, QoS::AtLeastOnce, true, jpeg.to_vec()).is_ok()
                        {
                            self.inflight.queued_other();
                        }
                    }
                    Some(LinkCmd::Telemetry(p)) => {
                        if s.connected() {
                            let topic = self.topics.telemetry();
                            let p = self.fit(&topic, p);
                            let _ = s.client.try_publish(topic, QoS::AtMostOnce, false, p);
                        }
                    }
                    Some(LinkCmd::Shutdown) | None => {
                        if !s.connected() {
                            return SessionEnd::Shutdown;
                        }
                        self.publish_other(&mut s, self.topics.status(), true, status_json("offline", Some("shutdown")));
                        let _ = s.client.try_disconnect();
                        closing = Some((tokio::time::Instant::now() + Duration::from_secs(2), SessionEnd::Shutdown));
                    }
                },
                _ = tokio::time::sleep_until(deadline), if closing.is_some() => {
                    return closing.map_or(SessionEnd::Shutdown, |(_, end)| end);
                }
                _ = watch.tick(), if closing.is_none() && s.connected() => {
                    if self.tls_changed(&s) {
                        let _ = s.client.try_disconnect();
                        closing = Some((tokio::time::Instant::now() + Duration::from_secs(2), SessionEnd::Renew));
                    }
                }
                _ = beat.tick() => {
                    self.heartbeat.beat();
                    if s.echo_due.is_some_and(|t| Instant::now() > t) {
                        s.echo_due = None;
                        self.no_echo();
                    }
                    // A ping unanswered for 3/4 of the keep-alive: the connection is presumed
                    // dead (rumqttc would give up at the next ping). Say DISCONNECT on it first,
                    // so that the broker, when it reads it, drops it without its will.
                    if closing.is_none() && s.ping_out.is_some_and(|t| t.elapsed() >= keep_alive.mul_f64(0.75)) {
                        if let Some(net) = eventloop.network.as_mut() {
                            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                                net.write(Packet::Disconnect).await?;
                                net.flush().await
                            })
                            .await;
                        }
                        self.down(format!("no answer to a ping for {:.1}s: connection presumed dead; closed with a DISCONNECT", keep_alive.mul_f64(0.75).as_secs_f64()));
                        return SessionEnd::Lost { up_for, refused: false };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_small_again_after_a_connection_that_held() {
        let mut b = Backoff::default();
        let first = b.after(None, false);
        assert!(first <= FIRST_RETRY.mul_f64(1.2), "{first:?}");
        for _ in 0..10 {
            b.after(None, false);
        }
        let long = b.after(None, false);
        assert!(
            long >= MAX_RETRY.mul_f64(0.8) && long <= MAX_RETRY.mul_f64(1.2),
            "{long:?}"
        );
        // A short outage after a connection that was up for a few seconds: small again.
        let again = b.after(Some(STABLE), false);
        assert!(again <= FIRST_RETRY.mul_f64(1.2), "{again:?}");
        // Refusals may wait longer.
        for _ in 0..20 {
            b.after(None, true);
        }
        assert!(b.after(None, true) > MAX_RETRY.mul_f64(2.0));
    }

    #[test]
    fn an_empty_command_name_is_a_command() {
        let t = Topics::new("vigil", "box1");
        assert_eq!(t.command_name("vigil/box1/cmd/"), Some(""));
        assert_eq!(t.command_name("vigil/box1/cmd//reply"), None);
    }
}
