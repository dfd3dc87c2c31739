//! Nothing lost: 10 000 events go through the real spool and MQTT link to a real mosquitto
//! (persistence off, so a killed broker forgets everything) that is killed with SIGKILL 20 times
//! at random points and restarted. A consumer that sees a gap in the sequence numbers asks for a
//! replay (`cmd/events/replay`); in the end it holds every event. The events are synthetic (fed
//! straight into the spool, as the analysis worker's would be); spool, link and broker are real.

use crate::common::*;
use rumqttc::{Client, Event as MqttEvent, MqttOptions, Packet, QoS};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_control::mqtt::MqttLink;
use vigil_control::mqtt::commands::Handler;
use vigil_control::spool::{Retention, Spool};
use vigil_core::config::MqttConfig;

const EVENTS: u64 = 10_000;
const KILLS: usize = 20;

#[derive(Default)]
struct Seen {
    /// The device's last seq, as telemetry reports it: a gap at the tail shows only there.
    last_seq: u64,
    /// seq → id, first copy.
    events: BTreeMap<u64, String>,
    duplicates: u64,
    replays_asked: u64,
}

/// A consumer on its own MQTT connection: resubscribes after every reconnect, records events,
/// and asks for a replay from the first missing seq when it sees a gap.
fn consumer(
    port: u16,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut opts = MqttOptions::new("consumer", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = Client::new(opts, 1024);
        let mut last_ask = Instant::now();
        let mut asked_from = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match conn.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => {
                    let _ = client.try_subscribe("vigil/kill/events/#", QoS::AtLeastOnce);
                    let _ = client.try_subscribe("vigil/kill/telemetry", QoS::AtMostOnce);
                }
                Ok(Ok(MqttEvent::Incoming(Packet::Publish(p))))
                    if p.topic.ends_with("/telemetry") =>
                {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("telemetry JSON");
                    let last = v["spool"]["last_seq"].as_u64().unwrap_or(0);
                    let mut s = seen.lock().unwrap();
                    s.last_seq = s.last_seq.max(last);
                }
                Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) if p.topic.contains("/events/") => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("event JSON");
                    let (seq, id) = (
                        v["seq"].as_u64().unwrap(),
                        v["id"].as_str().unwrap().to_string(),
                    );
                    let mut s = seen.lock().unwrap();
                    match s.events.get(&seq) {
                        Some(known) => {
                            assert_eq!(known, &id, "seq {seq} carried two different events");
                            s.duplicates += 1;
                        }
                        None => {
                            s.events.insert(seq, id);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => {}
            }
            // A gap: some seq below the highest seen is missing.
            if last_ask.elapsed() > Duration::from_millis(500) {
                let missing = {
                    let s = seen.lock().unwrap();
                    let max = s
                        .events
                        .keys()
                        .next_back()
                        .copied()
                        .unwrap_or(0)
                        .max(s.last_seq);
                    (1..=max).find(|q| !s.events.contains_key(q))
                };
                if let Some(from) = missing {
                    // Ask again only if the last ask did not fill it (or was lost with a broker).
                    let payload = serde_json::json!({"request_id": format!("gap-{from}"), "from_seq": from, "limit": 1000});
                    if client
                        .try_publish(
                            "vigil/kill/cmd/events/replay",
                            QoS::AtLeastOnce,
                            false,
                            payload.to_string(),
                        )
                        .is_ok()
                    {
                        seen.lock().unwrap().replays_asked += 1;
                        asked_from = from;
                    }
                }
                last_ask = Instant::now();
            }
        }
        let _ = asked_from;
    })
}

fn start_broker(dir: &Path, port: u16) -> Proc {
    mosquitto(dir, port)
}

#[test]
fn ten_thousand_events_survive_twenty_broker_kills() {
    let _cpu = exclusive();
    let dir = temp_dir("broker-kill");
    let port = free_port();
    let broker = Arc::new(Mutex::new(Some(start_broker(&dir, port))));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let spool = Arc::new(Spool::open(&dir.join("events.db"), Retention::default()).unwrap());
    let cfg = MqttConfig {
        port,
        keep_alive: vigil_core::config::Dur::secs(5),
        ..MqttConfig::default()
    };
    let link = rt.block_on(async {
        MqttLink::start(
            &cfg,
            "kill",
            spool.clone(),
            Handler::new(Arc::new(|| serde_json::Value::Null)),
            vigil_core::health::HealthRegistry::default().register(
                "mqtt-link",
                Duration::from_secs(15),
                true,
            ),
            Default::default(),
        )
    });

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let consumer = consumer(port, seen.clone(), stop.clone());

    // The killer: 20 SIGKILLs at random points while events are produced, each followed by a
    // restart after a random pause.
    let produced = Arc::new(AtomicU64::new(0));
    let killer = {
        let (broker, dir, produced) = (broker.clone(), dir.clone(), produced.clone());
        std::thread::spawn(move || {
            let mut kills = 0;
            while kills < KILLS {
                std::thread::sleep(Duration::from_millis(fastrand::u64(100..500)));
                if let Some(mut b) = broker.lock().unwrap().take() {
                    b.kill9();
                }
                kills += 1;
                eprintln!(
                    "kill {kills} after {} events",
                    produced.load(Ordering::Relaxed)
                );
                std::thread::sleep(Duration::from_millis(fastrand::u64(0..300)));
                *broker.lock().unwrap() = Some(start_broker(&dir, port));
            }
        })
    };

    // What the supervisor does: telemetry with the spool's state, every 500 ms.
    let telemetry = {
        let (spool, stop, tx) = (spool.clone(), stop.clone(), link.telemetry_sender());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let st = spool.stats().unwrap();
                tx(serde_json::json!({"spool": st}).to_string().into_bytes());
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let t0 = Instant::now();
    let mut ids = BTreeSet::new();
    for i in 0..EVENTS {
        let id = format!("synthetic-{i}-{}", uuid_like(i));
        let seq = rt.block_on(async {
            tokio::task::block_in_place(|| {
                spool.append(&id, "cam", |seq| {
                    serde_json::json!({"seq": seq, "id": id, "camera": "cam", "kind": "line_cross"})
                        .to_string()
                        .into_bytes()
                })
            })
        });
        assert_eq!(seq.unwrap(), i + 1, "gapless numbering");
        ids.insert(id);
        link.wake();
        produced.store(i + 1, Ordering::Relaxed);
        if i % 500 == 0 && !killer.is_finished() {
            // Spread production over the kills.
            std::thread::sleep(Duration::from_millis(150));
        }
    }
    killer.join().unwrap();
    eprintln!(
        "produced {EVENTS} events in {:.1}s with {KILLS} broker kills",
        t0.elapsed().as_secs_f64()
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = seen.lock().unwrap().events.len() as u64;
        if n == EVENTS || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    consumer.join().unwrap();
    telemetry.join().unwrap();
    let s = seen.lock().unwrap();
    let got: BTreeSet<&String> = s.events.values().collect();
    let missing = ids.iter().filter(|id| !got.contains(id)).count();
    eprintln!(
        "received {} distinct events of {EVENTS}; duplicates {}; replays asked {}; link: published {}, acked {}, replayed {}",
        s.events.len(),
        s.duplicates,
        s.replays_asked,
        link.stats.published.load(Ordering::Relaxed),
        link.stats.acked.load(Ordering::Relaxed),
        link.stats.replayed.load(Ordering::Relaxed)
    );
    assert_eq!(missing, 0, "every event id reached the consumer");
    assert_eq!(
        s.events.keys().copied().collect::<Vec<_>>(),
        (1..=EVENTS).collect::<Vec<_>>()
    );
    // The consumer may hold every event before the link has drained the spool (replays it asked
    // for reach it first): the link must still get every event acknowledged and marked sent.
    let drained = Instant::now() + Duration::from_secs(60);
    let mut unsent = spool.stats().unwrap().unsent;
    while unsent > 0 && Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(200));
        unsent = spool.stats().unwrap().unsent;
    }
    eprintln!(
        "spool drained to {unsent} unsent {:.1}s after the consumer had every event",
        60.0 - drained
            .saturating_duration_since(Instant::now())
            .as_secs_f64()
    );
    assert_eq!(unsent, 0, "every event was acknowledged and marked sent");
    drop(s);
    rt.block_on(link.shutdown(Duration::from_secs(2)));
}

fn uuid_like(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
