//! Ingest: the broker → the store. Subscribes to every box's `status`, `telemetry`,
//! `events/<camera>`, `snapshot/<camera>` and replay replies under the prefix; takes the box's
//! id from the topic, never from the payload (a payload naming another box is refused);
//! stores events keyed on (device, seq), so QoS 1 duplicates and replays are absorbed; and asks
//! a box to replay the events missing between those it received (`cmd/events/replay`, exactly
//! the missing range) once a gap is older than the grace period, again every retry period, at
//! most [`MAX_REQUESTS`] times, after which the gap is shown as unfillable.
//!
//! Bad input (not JSON, wrong types, names that are not Vigil's, a payload over the packet
//! limit, a picture that is not a JPEG) is counted by kind and logged at most once per
//! [`LOG_EVERY`] per kind; nothing a payload says can touch another box's rows.

use crate::store::{MAX_REQUESTS, Store};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vigil_core::wire::{
    EventMsg, OtaProgressMsg, OtaStatusMsg, ReplyMsg, StatusMsg, TelemetryMsg, is_name,
};

/// The largest MQTT packet taken (Vigil sends at most 1 MiB).
pub const MAX_PACKET: usize = 1 << 20;
/// Store kind of each box's config text, as its last `config/get` reply gave it.
pub const CONFIG: &str = "config";
/// Tasks storing messages in parallel (each box's messages always in the same one, in order).
pub const SHARDS: usize = 8;
/// Refused payloads of one kind are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// How the console reaches the broker and repairs gaps.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    pub client_id: String,
    /// A gap is asked for once it is this old (events may just be arriving out of order).
    pub grace: Duration,
    /// And again after this long without being filled.
    pub retry: Duration,
    /// Event pictures kept, in bytes.
    pub max_picture_bytes: i64,
    /// The rollout driver, told every `ota/progress` and `ota/apply` reply.
    pub rollouts: Option<tokio::sync::mpsc::Sender<crate::rollout::Msg>>,
    /// Consoles sharing one store split the boxes' messages through this MQTT shared
    /// subscription group (`$share/<group>/…`): each message reaches one of them. The status
    /// and OTA topics stay unshared: brokers send no retained message to a shared
    /// subscription (a console would not learn who is online), and the console driving
    /// rollouts needs every OTA message.
    pub share: Option<String>,
}

/// What the ingest has done, for the page and the tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub duplicates: AtomicU64,
    pub statuses: AtomicU64,
    pub telemetry: AtomicU64,
    pub pictures: AtomicU64,
    pub replays_asked: AtomicU64,
    pub refused: AtomicU64,
    pub store_errors: AtomicU64,
    /// Alert webhooks POSTed, and those that failed.
    pub webhooks_sent: AtomicU64,
    pub webhook_failures: AtomicU64,
    /// Ingest lag of stored events: the console's clock when stored minus the event's `time`
    /// (the box's clock), in milliseconds: bucket k holds lags up to [`lag_bound`]`(k)` (the
    /// last, the rest).
    pub lag_ms: LagBuckets,
}

/// [`LAG_BUCKETS`] counters (an array that long has no derived `Default`).
#[derive(Debug)]
pub struct LagBuckets(pub [AtomicU64; LAG_BUCKETS]);

impl Default for LagBuckets {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Buckets of [`Counters::lag_ms`]: four per doubling, up to about 18 minutes.
pub const LAG_BUCKETS: usize = 80;

/// The upper bound of lag bucket `k`, in ms: 2^(k/4), rounded.
pub fn lag_bound(k: usize) -> u64 {
    2f64.powf(k as f64 / 4.0).round() as u64
}

impl Counters {
    fn record_lag(&self, ms: i64) {
        let ms = ms.max(0) as u64;
        let k = (0..LAG_BUCKETS)
            .find(|&k| ms <= lag_bound(k))
            .unwrap_or(LAG_BUCKETS - 1);
        self.lag_ms.0[k].fetch_add(1, Ordering::Relaxed);
    }
}

/// The `q` quantile (0..1) of lag buckets, as the bucket's upper bound in ms.
pub fn lag_quantile(buckets: &[u64], q: f64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (k, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some(lag_bound(k));
        }
    }
    None
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A topic under the prefix, split.
#[derive(Debug, PartialEq, Eq)]
enum Topic<'a> {
    Status(&'a str),
    Telemetry(&'a str),
    Event(&'a str, &'a str),
    Picture(&'a str, &'a str),
    /// A command reply: the device and the command's name (`ping`, `camera/restart`, …).
    Reply(&'a str, &'a str),
    OtaProgress(&'a str),
    OtaStatus(&'a str),
}

fn parse_topic<'a>(prefix: &str, topic: &'a str) -> Option<Topic<'a>> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, what) = rest.split_once('/')?;
    if !is_name(device) {
        return None;
    }
    let named = |s: &'a str| is_name(s).then_some(s);
    Some(match what {
        "status" => Topic::Status(device),
        "telemetry" => Topic::Telemetry(device),
        _ if what.starts_with("cmd/") && what.ends_with("/reply") => {
            let name = what
                .strip_prefix("cmd/")
                .and_then(|n| n.strip_suffix("/reply"))
                .unwrap_or("");
            let levels = name.split('/').count();
            if !(1..=2).contains(&levels) || !name.split('/').all(is_name) {
                return None;
            }
            Topic::Reply(device, name)
        }
        _ => match what.split_once('/')? {
            ("events", cam) => Topic::Event(device, named(cam)?),
            ("snapshot", cam) => Topic::Picture(device, named(cam)?),
            ("ota", "progress") => Topic::OtaProgress(device),
            ("ota", "status") => Topic::OtaStatus(device),
            _ => return None,
        },
    })
}

/// Rate-limited warnings, one clock per kind of refusal.
struct Warn {
    last: std::collections::HashMap<&'static str, (Instant, u64)>,
}

impl Warn {
    fn refuse(&mut self, c: &Counters, kind: &'static str, topic: &str, why: &str) {
        c.refused.fetch_add(1, Ordering::Relaxed);
        let e = self
            .last
            .entry(kind)
            .or_insert((Instant::now() - LOG_EVERY, 0));
        e.1 += 1;
        if e.0.elapsed() >= LOG_EVERY {
            let topic: String = topic.chars().take(200).collect();
            tracing::warn!(
                "refused {} {kind} payload(s), latest on {topic}: {why}",
                e.1
            );
            *e = (Instant::now(), 0);
        }
    }
}

/// An event a box may have sent: its ids are the topic's and every name is a Vigil name.
fn check_event(e: &EventMsg, device: &str, camera: &str) -> Result<(), String> {
    if e.device != device {
        return Err(format!(
            "the payload names device {:?}, the topic {device:?}",
            bounded(&e.device)
        ));
    }
    if e.camera != camera {
        return Err(format!(
            "the payload names camera {:?}, the topic {camera:?}",
            bounded(&e.camera)
        ));
    }
    if e.seq == 0 || e.seq > i64::MAX as u64 {
        return Err(format!("seq {} (expected 1 or more)", e.seq));
    }
    for (what, v) in [("rule", &e.rule), ("kind", &e.kind), ("class", &e.class)] {
        if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
            return Err(format!(
                "{what} {:?} (expected 1 to 64 printable characters)",
                bounded(v)
            ));
        }
    }
    if e.id.len() > 64 || e.time.len() > 64 {
        return Err("id or time longer than 64 characters".into());
    }
    if let Some(s) = &e.snapshot
        && (s.id.len() > 64 || s.bytes as usize > MAX_PACKET)
    {
        return Err("snapshot id longer than 64 characters or over a packet".into());
    }
    Ok(())
}

fn bounded(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Runs the ingest until the task is dropped: connects (and reconnects), subscribes, stores,
/// repairs gaps. `changed` is told after every stored change (the pages' live updates).
/// The console's MQTT client (the pages publish commands with it) and its event loop (for
/// [`run`]).
pub fn client(cfg: &IngestConfig) -> (AsyncClient, rumqttc::EventLoop) {
    let mut opts = MqttOptions::new(&cfg.client_id, &cfg.host, cfg.port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_max_packet_size(MAX_PACKET + 1024, MAX_PACKET + 1024);
    opts.set_clean_session(true);
    AsyncClient::new(opts, 256)
}

pub async fn run<S: Store + Clone>(
    store: S,
    cfg: IngestConfig,
    (client, mut eventloop): (AsyncClient, rumqttc::EventLoop),
    counters: Arc<Counters>,
    changed: tokio::sync::broadcast::Sender<()>,
) {
    let repair = tokio::spawn(repair_gaps(
        store.clone(),
        client.clone(),
        cfg.clone(),
        counters.clone(),
    ));
    let mut warn = Warn {
        last: Default::default(),
    };
    // Messages are handled by SHARDS tasks, each box always by the same one: its messages stay
    // in order, and boxes are stored in parallel (PostgreSQL takes them on several
    // connections; SQLite serialises them anyway).
    let mut shards = Vec::with_capacity(SHARDS);
    for _ in 0..SHARDS {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, bytes::Bytes)>(1024);
        let (store, cfg, counters, changed) = (
            store.clone(),
            cfg.clone(),
            counters.clone(),
            changed.clone(),
        );
        tokio::spawn(async move {
            let mut warn = Warn {
                last: Default::default(),
            };
            while let Some((topic, payload)) = rx.recv().await {
                let Some(t) = parse_topic(&cfg.prefix, &topic) else {
                    continue;
                };
                if handle(&store, &cfg, &counters, &mut warn, &topic, t, &payload).await {
                    let _ = changed.send(());
                }
            }
        });
        shards.push(tx);
    }
    let p = cfg.prefix.clone();
    let shared = match &cfg.share {
        Some(g) => format!("$share/{g}/"),
        None => String::new(),
    };
    let subs = [
        format!("{p}/+/status"),
        format!("{shared}{p}/+/telemetry"),
        format!("{shared}{p}/+/events/+"),
        format!("{shared}{p}/+/snapshot/+"),
        format!("{shared}{p}/+/cmd/+/reply"),
        format!("{p}/+/cmd/+/+/reply"),
        format!("{p}/+/ota/progress"),
        format!("{p}/+/ota/status"),
    ];
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to {}:{}", cfg.host, cfg.port);
                for t in &subs {
                    let _ = client.subscribe(t, QoS::AtLeastOnce).await;
                }
            }
            Ok(Event::Incoming(Packet::Publish(m))) => {
                let topic = m.topic.as_str();
                let Some(t) = parse_topic(&cfg.prefix, topic) else {
                    warn.refuse(
                        &counters,
                        "topic",
                        topic,
                        "not a Vigil topic or not a Vigil name",
                    );
                    continue;
                };
                let device = match t {
                    Topic::Status(d)
                    | Topic::Telemetry(d)
                    | Topic::Event(d, _)
                    | Topic::Picture(d, _)
                    | Topic::Reply(d, _)
                    | Topic::OtaProgress(d)
                    | Topic::OtaStatus(d) => d,
                };
                let shard = device
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                    % SHARDS;
                if shards[shard]
                    .send((topic.to_string(), m.payload.clone()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("broker {}:{}: {e}; retrying in 1 s", cfg.host, cfg.port);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if repair.is_finished() {
            return;
        }
    }
}

/// One message; whether the store changed.
async fn handle<S: Store>(
    store: &S,
    cfg: &IngestConfig,
    c: &Counters,
    warn: &mut Warn,
    topic: &str,
    t: Topic<'_>,
    payload: &[u8],
) -> bool {
    let now = now_ms();
    let r = match t {
        Topic::Status(device) => match serde_json::from_slice::<StatusMsg>(payload) {
            Ok(s) if s.state.len() <= 32 && s.version.as_ref().is_none_or(|v| v.len() <= 64) => {
                c.statuses.fetch_add(1, Ordering::Relaxed);
                store.set_status(device, &s, status_time(&s, now)).await
            }
            Ok(_) => return refuse(warn, c, "status", topic, "state or version too long"),
            Err(e) => return refuse(warn, c, "status", topic, &e.to_string()),
        },
        Topic::Telemetry(device) => match serde_json::from_slice::<TelemetryMsg>(payload) {
            Ok(_) => {
                c.telemetry.fetch_add(1, Ordering::Relaxed);
                // Kept as sent (the pages read what they show from it): valid JSON of the
                // telemetry's shape, at most a packet.
                let text = String::from_utf8_lossy(payload);
                store.set_telemetry(device, &text, now).await
            }
            Err(e) => return refuse(warn, c, "telemetry", topic, &e.to_string()),
        },
        Topic::Event(device, camera) => {
            let e = match serde_json::from_slice::<EventMsg>(payload) {
                Ok(e) => e,
                Err(e) => return refuse(warn, c, "event", topic, &e.to_string()),
            };
            if let Err(why) = check_event(&e, device, camera) {
                return refuse(warn, c, "event", topic, &why);
            }
            let text = String::from_utf8_lossy(payload);
            match store.insert_event(&e, &text, now).await {
                Ok(true) => {
                    c.events.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = humantime::parse_rfc3339_weak(&e.time)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    {
                        c.record_lag(now_ms() - t.as_millis() as i64);
                    }
                    Ok(())
                }
                Ok(false) => {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                Err(e) => Err(e),
            }
        }
        Topic::Picture(device, camera) => {
            if !payload.starts_with(&[0xff, 0xd8]) {
                return refuse(warn, c, "picture", topic, "not a JPEG");
            }
            c.pictures.fetch_add(1, Ordering::Relaxed);
            store
                .add_picture(device, camera, payload, now, cfg.max_picture_bytes)
                .await
                .map(|_| ())
        }
        Topic::OtaProgress(device) => {
            let p = match serde_json::from_slice::<OtaProgressMsg>(payload) {
                Ok(p) if p.request_id.len() <= 200 && p.phase.len() <= 32 => p,
                Ok(_) => return refuse(warn, c, "ota/progress", topic, "field too long"),
                Err(e) => return refuse(warn, c, "ota/progress", topic, &e.to_string()),
            };
            let Some(tx) = &cfg.rollouts else {
                return false;
            };
            let msg = crate::rollout::Msg::Progress {
                device: device.to_string(),
                progress: p,
            };
            // Outcomes must reach the driver; a repeated `downloading` may be dropped when it
            // is behind.
            let outcome = !matches!(&msg, crate::rollout::Msg::Progress { progress, .. }
                if progress.phase == "downloading");
            if outcome {
                let _ = tx.send(msg).await;
            } else {
                let _ = tx.try_send(msg);
            }
            return false;
        }
        Topic::OtaStatus(device) => {
            if let Err(e) = serde_json::from_slice::<OtaStatusMsg>(payload) {
                return refuse(warn, c, "ota/status", topic, &e.to_string());
            }
            let text = String::from_utf8_lossy(payload);
            store
                .put_doc(crate::rollout::OTA_STATUS, device, &text, now)
                .await
        }
        Topic::Reply(device, name) => {
            let Ok(r) = serde_json::from_slice::<ReplyMsg>(payload) else {
                return refuse(warn, c, "reply", topic, "not a command reply");
            };
            let id = r.request_id.as_deref().unwrap_or("");
            if name == "events/replay" {
                // Ours: "fleet-replay-<from_seq>". A box that replayed nothing no longer has
                // them.
                let from = id
                    .strip_prefix("fleet-replay-")
                    .and_then(|s| s.parse::<i64>().ok());
                let count = r.data.as_ref().and_then(|d| d["count"].as_u64());
                match (from, r.status.as_str(), count) {
                    (Some(from), "ok", Some(0)) => {
                        store.note_request(device, from, now, true).await
                    }
                    _ => return false,
                }
            } else if name == "ota/apply" && id.starts_with("ro-") && id.len() <= 200 {
                let Some(tx) = &cfg.rollouts else {
                    return false;
                };
                let _ = tx
                    .send(crate::rollout::Msg::Reply {
                        device: device.to_string(),
                        request_id: id.to_string(),
                        status: r.status.chars().take(16).collect(),
                        message: r.message.chars().take(300).collect(),
                    })
                    .await;
                return false;
            } else if id.starts_with("fleet-cmd-") && id.len() <= 64 {
                // The box's config (its secrets redacted by the box), for the Device page.
                let toml = r.data.as_ref().and_then(|d| d["toml"].as_str());
                if let (true, "ok", Some(toml)) = (name == "config/get", r.status.as_str(), toml)
                    && let Err(e) = store.put_doc(CONFIG, device, toml, now).await
                {
                    tracing::error!("store: {e}");
                }
                let status: String = r.status.chars().take(16).collect();
                let message: String = r.message.chars().take(300).collect();
                store
                    .put_reply(&crate::store::ReplyRow {
                        request_id: id.to_string(),
                        device: device.to_string(),
                        command: name.to_string(),
                        status,
                        message,
                        time_ms: now,
                    })
                    .await
            } else {
                return false;
            }
        }
    };
    match r {
        Ok(()) => true,
        Err(e) => {
            c.store_errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("store: {e}");
            false
        }
    }
}

/// When a status was true: its own `time` (a retained status may arrive long after the box
/// wrote it), within the last 30 days and not after now (a box's clock may be off); the last
/// will has none (the broker sends it when it happens): now.
fn status_time(s: &StatusMsg, now: i64) -> i64 {
    s.time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .filter(|&t| t <= now && now - t <= 30 * 86_400_000)
        .unwrap_or(now)
}

fn refuse(warn: &mut Warn, c: &Counters, kind: &'static str, topic: &str, why: &str) -> bool {
    warn.refuse(c, kind, topic, why);
    false
}

/// Asks boxes for the events of their gaps: each gap once it is `grace` old, again every
/// `retry`, exactly its range (at most 1000 a request, Vigil's limit).
async fn repair_gaps<S: Store>(store: S, client: AsyncClient, cfg: IngestConfig, c: Arc<Counters>) {
    let tick = (cfg.grace / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        let Ok(gaps) = store.gaps().await else {
            continue;
        };
        let now = now_ms();
        for g in gaps {
            let due = !g.unfillable
                && g.requests < MAX_REQUESTS
                && now - g.first_seen_ms >= cfg.grace.as_millis() as i64
                && g.last_request_ms
                    .is_none_or(|t| now - t >= cfg.retry.as_millis() as i64);
            if !due {
                continue;
            }
            let limit = (g.to_seq - g.from_seq + 1).clamp(1, 1000);
            let body = serde_json::json!({
                "request_id": format!("fleet-replay-{}", g.from_seq),
                "from_seq": g.from_seq,
                "limit": limit,
            });
            let topic = format!("{}/{}/cmd/events/replay", cfg.prefix, g.device);
            if client
                .publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await
                .is_ok()
            {
                c.replays_asked.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    device = %g.device,
                    "asked for events {}..={} (request {})",
                    g.from_seq,
                    g.to_seq,
                    g.requests + 1
                );
                let _ = store.note_request(&g.device, g.from_seq, now, false).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_split_and_only_vigil_names_pass() {
        let p = "vigil";
        assert_eq!(
            parse_topic(p, "vigil/box-1/status"),
            Some(Topic::Status("box-1"))
        );
        assert_eq!(
            parse_topic(p, "vigil/box-1/events/plaza"),
            Some(Topic::Event("box-1", "plaza"))
        );
        assert_eq!(
            parse_topic(p, "vigil/b/snapshot/cam_2"),
            Some(Topic::Picture("b", "cam_2"))
        );
        assert_eq!(
            parse_topic(p, "vigil/b/cmd/events/replay/reply"),
            Some(Topic::Reply("b", "events/replay"))
        );
        assert_eq!(
            parse_topic(p, "vigil/b/cmd/ping/reply"),
            Some(Topic::Reply("b", "ping"))
        );
        assert_eq!(parse_topic(p, "vigil/b/cmd/a/b/c/reply"), None);
        assert_eq!(parse_topic(p, "vigil/b/cmd/reply"), None);
        assert_eq!(parse_topic(p, "vigil/b/events/a/b"), None);
        assert_eq!(parse_topic(p, "vigil/b c/status"), None);
        assert_eq!(parse_topic(p, "other/b/status"), None);
        assert_eq!(parse_topic(p, "vigilx/b/status"), None);
        assert_eq!(
            parse_topic("site/a", "site/a/b/telemetry"),
            Some(Topic::Telemetry("b"))
        );
    }

    #[test]
    fn lag_quantiles_come_from_quarter_power_of_two_buckets() {
        let c = Counters::default();
        for ms in [0, 1, 3, 3, 900] {
            c.record_lag(ms);
        }
        let b: Vec<u64> = c
            .lag_ms
            .0
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        // Bounds 1, 1, 1, 2, 2, 2, 3, 3, 4, … : 0 and 1 ms in bucket 0, 3 ms in bucket 6.
        assert_eq!((b[0], b[6]), (2, 2));
        assert_eq!(lag_quantile(&b, 0.5), Some(3));
        assert_eq!(lag_quantile(&b, 0.99), Some(lag_bound(40)), "900 ms ≤ 2^10");
        assert!(lag_bound(39) < 900);
        assert_eq!(lag_quantile(&[0; 4], 0.5), None);
    }

    #[test]
    fn a_status_is_dated_by_its_own_time_when_sensible() {
        let st = |t: Option<&str>| StatusMsg {
            state: "online".into(),
            version: None,
            time: t.map(Into::into),
            reason: None,
        };
        let now = 1_796_536_800_000; // 2026-12-06T06:00:00Z
        assert_eq!(
            status_time(&st(Some("2026-12-06T05:59:00Z")), now),
            now - 60_000
        );
        assert_eq!(status_time(&st(None), now), now);
        assert_eq!(
            status_time(&st(Some("2030-01-01T00:00:00Z")), now),
            now,
            "future"
        );
        assert_eq!(
            status_time(&st(Some("2020-01-01T00:00:00Z")), now),
            now,
            "too old"
        );
        assert_eq!(status_time(&st(Some("garbage")), now), now);
    }

    #[test]
    fn an_event_naming_another_box_is_refused() {
        let mut e: EventMsg = serde_json::from_str(
            r#"{"seq":1,"id":"x","device":"b","camera":"c","rule":"r","kind":"line_cross",
                "track_id":1,"class":"person","score":0.5,"bbox":[0,0,1,1],"time":"t"}"#,
        )
        .unwrap();
        assert!(check_event(&e, "b", "c").is_ok());
        assert!(check_event(&e, "a", "c").unwrap_err().contains("device"));
        assert!(check_event(&e, "b", "d").unwrap_err().contains("camera"));
        e.seq = 0;
        assert!(check_event(&e, "b", "c").is_err());
        e.seq = 1;
        e.rule = "x".repeat(65);
        assert!(check_event(&e, "b", "c").is_err());
    }
}

#[cfg(test)]
mod documented {
    use vigil_core::wire::{
        EventMsg, OtaProgressMsg, OtaStatusMsg, ReplyMsg, StatusMsg, TelemetryMsg,
    };

    /// The JSON blocks of `docs/mqtt.md` marked `<!-- example: KIND -->`.
    fn examples(kind: &str) -> Vec<String> {
        let doc = include_str!("../../../docs/mqtt.md");
        let marker = format!("<!-- example: {kind} -->");
        doc.split(&marker)
            .skip(1)
            .filter_map(|rest| {
                let body = rest.split_once("```json\n")?.1;
                Some(body.split_once("\n```")?.0.to_string())
            })
            .collect()
    }

    /// Every payload the device's documentation shows is one the console reads.
    #[test]
    fn the_documented_payloads_are_read() {
        for (kind, n) in [("status", 3), ("event", 4), ("telemetry", 1)] {
            let ex = examples(kind);
            assert_eq!(ex.len(), n, "{kind}");
            for e in ex {
                let ok = match kind {
                    "status" => serde_json::from_str::<StatusMsg>(&e).is_ok(),
                    "event" => serde_json::from_str::<EventMsg>(&e).is_ok(),
                    _ => serde_json::from_str::<TelemetryMsg>(&e).is_ok(),
                };
                assert!(ok, "{kind}: {e}");
            }
        }
        for e in examples("command_reply") {
            serde_json::from_str::<ReplyMsg>(&e).unwrap();
        }
        let progress = examples("ota_progress");
        assert!(progress.len() >= 5);
        for e in progress {
            serde_json::from_str::<OtaProgressMsg>(&e).unwrap_or_else(|x| panic!("{x}: {e}"));
        }
        let status = examples("ota_status");
        assert!(status.len() >= 2);
        for e in status {
            let s = serde_json::from_str::<OtaStatusMsg>(&e).unwrap_or_else(|x| panic!("{x}: {e}"));
            assert!(s.active.is_some() || s.last.is_some(), "{e}");
        }
    }
}

/// Hostile payloads on every subscribed topic, through the real handler and a real SQLite
/// store: nothing panics, nothing is stored for a box other than the topic's, refusals are
/// counted.
#[cfg(test)]
mod hostile {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const EVENT: &str = r#"{"seq":5,"id":"e","device":"a","camera":"cam","rule":"door","kind":"zone_enter","track_id":1,"class":"person","score":0.5,"bbox":[0,0,1,1],"time":"t","snapshot":{"id":"s","width":1,"height":1,"bytes":3}}"#;
    const STATUS: &str = r#"{"state":"online","version":"0.1.0","time":"t"}"#;
    const TELEMETRY: &str = r#"{"time":"t","uptime_s":1,"mqtt_connected":true,"events_published":0,"events_acked":0,"spool":{"unsent":0,"held":0,"bytes":0,"last_seq":0,"dropped_unsent":0},"cameras":{"cam":{"state":"live","fps_in":5,"fps_analysed":5,"frames_in":1,"frames_analysed":1,"frames_dropped":0,"reconnects":0,"infer_ms_avg":1,"events":0,"decoder":null,"last_error":null,"retry_in_s":null}}}"#;
    const REPLY: &str = r#"{"request_id":"fleet-cmd-x","status":"ok","message":"pong"}"#;
    const OTA_REPLY: &str = r#"{"request_id":"ro-r1-0-1","status":"error","message":"busy"}"#;
    const OTA_PROGRESS: &str =
        r#"{"request_id":"ro-r1-0-1","phase":"failed","error":"digest","reason":"x","time":"t"}"#;
    const OTA_STATUS: &str = r#"{"busy":false,"active":{"slot":"s","sequence":3,"version":"v"},"previous":null,"probation":null,"last":null,"time":"t"}"#;

    fn mutate(r: &mut Rng, seed: &str) -> Vec<u8> {
        let mut b = seed.as_bytes().to_vec();
        match r.below(7) {
            0 => {
                for _ in 0..1 + r.below(8) {
                    let i = r.below(b.len());
                    b[i] = r.next() as u8;
                }
            }
            1 => b.truncate(r.below(b.len())),
            2 => {
                let s = String::from_utf8_lossy(&b).replace("\"a\"", "\"b\"");
                b = s.into_bytes();
            }
            3 => {
                let s = String::from_utf8_lossy(&b).replace(
                    "5",
                    ["-1", "1e30", "18446744073709551615", "0", "null"][r.below(5)],
                );
                b = s.into_bytes();
            }
            4 => {
                let s = String::from_utf8_lossy(&b)
                    .replace("door", &"x".repeat(100_000))
                    .replace("person", "per\u{0}son");
                b = s.into_bytes();
            }
            5 => b = (0..r.below(4096)).map(|_| r.next() as u8).collect(),
            _ => b.extend_from_slice(b"[[[[[[[[[[{}"),
        }
        b
    }

    #[tokio::test]
    async fn hostile_payloads_never_panic_nor_touch_another_box() {
        let dir = std::env::temp_dir().join(format!("vigil-fleet-hostile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = SqliteStore::open(&dir.join("f.db")).unwrap();
        store.migrate().await.unwrap();
        // What reaches the rollout driver: only box `a`'s messages.
        let (drain, mut rx) = tokio::sync::mpsc::channel(16);
        let told = tokio::spawn(async move {
            let mut devices = std::collections::BTreeSet::new();
            while let Some(m) = rx.recv().await {
                match m {
                    crate::rollout::Msg::Progress { device, .. }
                    | crate::rollout::Msg::Reply { device, .. } => {
                        devices.insert(device);
                    }
                    _ => {}
                }
            }
            devices
        });
        let cfg = IngestConfig {
            host: "x".into(),
            port: 1,
            prefix: "vigil".into(),
            client_id: "t".into(),
            grace: Duration::from_secs(1),
            retry: Duration::from_secs(1),
            max_picture_bytes: 1 << 20,
            rollouts: Some(drain),
            share: None,
        };
        let c = Counters::default();
        let mut warn = Warn {
            last: Default::default(),
        };
        let topics = [
            ("vigil/a/events/cam", EVENT),
            ("vigil/a/status", STATUS),
            ("vigil/a/telemetry", TELEMETRY),
            ("vigil/a/snapshot/cam", "\u{ff}\u{d8}xyz"),
            ("vigil/a/cmd/ping/reply", REPLY),
            ("vigil/a/cmd/events/replay/reply", REPLY),
            ("vigil/a/cmd/reply", REPLY),
            ("vigil//status", STATUS),
            ("vigil/a/events/", EVENT),
            ("vigil/a/cmd/a/b/c/reply", REPLY),
            ("vigil/a/cmd/ota/apply/reply", OTA_REPLY),
            ("vigil/a/ota/progress", OTA_PROGRESS),
            ("vigil/a/ota/status", OTA_STATUS),
        ];
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        let mut handled = 0;
        for _ in 0..3000 {
            let (topic, seed) = topics[r.below(topics.len())];
            let payload = mutate(&mut r, seed);
            if let Some(t) = parse_topic(&cfg.prefix, topic) {
                handle(&store, &cfg, &c, &mut warn, topic, t, &payload).await;
                handled += 1;
            }
        }
        assert!(handled > 1500);
        assert!(c.refused.load(Ordering::Relaxed) > 500);
        let devices = store.devices().await.unwrap();
        assert!(devices.iter().all(|d| d.device == "a"), "{devices:?}");
        let f = crate::store::EventFilter {
            limit: 10_000,
            ..Default::default()
        };
        let events = store.events(&f).await.unwrap();
        assert!(events.iter().all(|e| e.device == "a" && e.camera == "cam"));
        assert!(
            events
                .iter()
                .all(|e| e.rule.len() <= 64 && !e.class.contains('\0'))
        );
        let statuses = store.docs(crate::rollout::OTA_STATUS).await.unwrap();
        assert!(statuses.iter().all(|(d, _)| d == "a"), "{statuses:?}");
        drop(cfg);
        let told = told.await.unwrap();
        assert!(told.iter().all(|d| d == "a"), "{told:?}");
        assert!(!told.is_empty(), "progress and replies reach the driver");
    }
}
