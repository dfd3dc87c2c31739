//! What a config may hold is bounded, end to end: `config/set` with a zone of 45 000 vertices
//! (990 KB, under the 1 MiB MQTT packet limit), three times in a row, gets its located error
//! back at once each time, and `/healthz` answers 200 all along. Quadratic polygon checks on the supervisor's loop once took
//! 15 s on this text and `/healthz` was 503 for 5 s: under the unit's `WatchdogSec=10s`, anyone
//! who could publish a command could get Vigil killed.

use crate::common::*;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running config without cameras (nothing to decode or infer: only the loop, the link and
/// the HTTP API are at work; the model file exists but is never loaded).
fn running_config(mqtt: u16, dir: &std::path::Path) -> String {
    format!(
        "[device]\nid = \"limits\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n\n\
         [storage]\ndir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n\
         [models.nanodet]\npath = \"{}\"\nkind = \"nanodet\"\nbackend = \"cpu\"\n",
        dir.join("state").display(),
        dir.join("model.onnx").display()
    )
}

/// `n` distinct vertices on a circle, six decimals each (22 bytes a vertex).
fn circle(n: usize) -> String {
    let pts: Vec<String> = (0..n)
        .map(|k| {
            let a = k as f64 / n as f64 * std::f64::consts::TAU;
            format!("[{:.6}, {:.6}]", 0.5 + 0.4 * a.cos(), 0.5 + 0.4 * a.sin())
        })
        .collect();
    format!("[{}]", pts.join(", "))
}

/// Publishes a payload too large for a command-line argument (`mosquitto_pub -f`).
fn publish_file(port: u16, topic: &str, payload: &[u8], dir: &std::path::Path) {
    let file = dir.join("payload.json");
    std::fs::write(&file, payload).unwrap();
    let ok = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-f"])
        .arg(&file)
        .status()
        .expect("mosquitto_pub");
    assert!(ok.success(), "mosquitto_pub to {topic} failed");
}

#[test]
fn zones_of_45000_vertices_by_config_set_are_refused_at_once_and_healthz_stays_200() {
    let _cpu = shared();
    let dir = temp_dir("config-limits");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let sub = Subscriber::start(mqtt, &["vigil/limits/cmd/#"]);
    let path = dir.join("vigil.toml");
    std::fs::write(dir.join("model.onnx"), b"").unwrap();
    let running = running_config(mqtt, &dir);
    std::fs::write(&path, &running).unwrap();
    let (_vigil, logs) = vigil_run(&path);
    let addr = http_addr(&logs);

    // The link is up and subscribed once a ping is answered.
    let t0 = Instant::now();
    while sub
        .wait(Duration::from_millis(500), |m| {
            m.topic.ends_with("/ping/reply") && m.json["request_id"] == "p"
        })
        .is_none()
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "no reply to ping");
        mqtt_publish(mqtt, "vigil/limits/cmd/ping", r#"{"request_id": "p"}"#);
    }

    // /healthz every 50 ms, from before the command until after its reply.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<(Duration, u16)>>> = Arc::default();
    let poller = {
        let (stop, seen, addr) = (stop.clone(), seen.clone(), addr.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let (code, _) = http_get(&addr, "/healthz");
                seen.lock().unwrap().push((t0.elapsed(), code));
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let zone = format!(
        "\n[[cameras]]\nname = \"gate\"\nurl = \"rtsp://127.0.0.1:1/gate\"\nmodel = \"nanodet\"\n\n\
         [[cameras.zones]]\nname = \"huge\"\npolygon = {}\nclasses = [\"person\"]\n",
        circle(45_000)
    );
    let text = format!("{running}{zone}");
    // Three in a row, as a hostile client would: on the loop, each took 8 s here (15 s on
    // the box where the fault was found), and /healthz turned 503 once 10 s had passed.
    let ids = ["huge-1", "huge-2", "huge-3"];
    let sent = Instant::now();
    let mut size = 0;
    for id in ids {
        let payload = serde_json::json!({"request_id": id, "config": text}).to_string();
        size = payload.len();
        assert!((900_000..1 << 20).contains(&size), "{size} bytes");
        publish_file(
            mqtt,
            "vigil/limits/cmd/config/set",
            payload.as_bytes(),
            &dir,
        );
    }
    let replies: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            sub.wait(Duration::from_secs(60), |m| {
                m.topic.ends_with("/config/set/reply") && m.json["request_id"] == *id
            })
            .unwrap_or_else(|| panic!("no reply to config/set {id}"))
            .json
        })
        .collect();
    let took = sent.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    poller.join().unwrap();

    for reply in &replies {
        assert_eq!(reply["status"], "error", "{reply}");
        let errors = reply["data"]["errors"].to_string();
        assert!(
            errors.contains(
                "cameras[0].zones[0].polygon[256]: polygon has 45000 vertices (expected at most 256)"
            ),
            "{errors}"
        );
        assert_eq!(reply["data"]["errors"].as_array().map(Vec::len), Some(1));
    }
    assert!(took < Duration::from_secs(6), "the replies took {took:?}");
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 20, "only {} /healthz answers", seen.len());
    let bad: Vec<_> = seen.iter().filter(|(_, code)| *code != 200).collect();
    assert!(bad.is_empty(), "/healthz not 200 at {bad:?}");
    eprintln!(
        "3 config/set of {size} bytes refused in {took:?}; /healthz 200 in all {} answers",
        seen.len()
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), running);
    assert!(!path.with_extension("toml.candidate").exists());
}
