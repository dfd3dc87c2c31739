//! The outside test's finding on event history: a `from_seq` of 2^63 or more wrapped to a
//! negative SQLite integer and returned the spool from seq 1 (`/api/events` and
//! `cmd/events/replay`). On the real binary with a spool written beforehand: such a `from_seq`
//! returns and replays nothing, a `from_seq` beyond u64 is a client error, and an ordinary one
//! still works.

use crate::common::*;
use crate::http_auth::bare_config;
use std::time::{Duration, Instant};
use vigil_control::spool::{Retention, Spool};

#[test]
fn from_seq_beyond_the_largest_seq_returns_and_replays_nothing() {
    let _cpu = shared();
    let dir = temp_dir("http-events");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    {
        let spool = Spool::open(&dir.join("state/events.db"), Retention::default()).unwrap();
        for i in 0..3 {
            spool
                .append(&format!("ev-{i}"), "gate", |seq| {
                    serde_json::json!({ "seq": seq, "id": format!("ev-{i}"), "camera": "gate" })
                        .to_string()
                        .into_bytes()
                })
                .unwrap();
        }
        // Sent: whatever reaches the events topic below is a replay.
        spool.mark_sent(&[1, 2, 3]).unwrap();
    }
    let sub = Subscriber::start(mqtt, &["vigil/events/#"]);
    let cfg = dir.join("vigil.toml");
    let http = "listen = \"127.0.0.1:0\"";
    std::fs::write(&cfg, bare_config("events", &dir, mqtt, "", http)).unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    let addr = http_addr(&logs);

    let page = |query: &str| -> (u16, serde_json::Value) {
        let (code, body) = http_get(&addr, &format!("/api/events?{query}"));
        (code, serde_json::from_str(&body).unwrap_or_default())
    };
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect()
    };
    let (code, v) = page("from_seq=2");
    assert_eq!((code, seqs(&v)), (200, vec![2, 3]));
    for huge in [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        let (code, v) = page(&format!("from_seq={huge}"));
        assert_eq!(code, 200, "from_seq={huge}");
        assert_eq!(seqs(&v), Vec::<u64>::new(), "from_seq={huge}: {v}");
        assert_eq!(v["next_from_seq"], serde_json::Value::Null);
    }
    let (code, _) = page("from_seq=18446744073709551616");
    assert_eq!(code, 400, "beyond u64 is a client error");

    // The same over MQTT: the reply says nothing is held, and nothing is republished.
    let t0 = Instant::now();
    while sub.on("/status").is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "the link connects");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replay = |id: &str, from: &str| -> serde_json::Value {
        mqtt_publish(
            mqtt,
            "vigil/events/cmd/events/replay",
            &format!(r#"{{"request_id": "{id}", "from_seq": {from}}}"#),
        );
        sub.wait(Duration::from_secs(20), |m| {
            m.topic.ends_with("/reply") && m.json["request_id"] == id
        })
        .expect("replay reply")
        .json
    };
    let r = replay("huge", "9223372036854775808");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["data"]["count"], 0, "{r}");
    assert_eq!(
        r["message"],
        "no event with seq >= 9223372036854775808 is held"
    );
    let r = replay("two", "2");
    assert_eq!(r["data"]["count"], 2, "{r}");
    let t0 = Instant::now();
    while sub.on("/events/gate").len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "replayed events");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let replayed: Vec<u64> = sub
        .on("/events/gate")
        .iter()
        .map(|m| m.json["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        replayed,
        vec![2, 3],
        "only the second replay published events"
    );
}
