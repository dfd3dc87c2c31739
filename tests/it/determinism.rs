//! A recording analysed twice gives the same events: the production path (`vigil run`, a
//! `file://` camera, the real model on the CPU, tracker and rules, a real broker) on the first
//! 30 s of vtest.avi, twice; the events' kind, rule, track, direction, stream time and stay
//! must be identical. (A recording is sampled by its timestamps and never drops a frame, so
//! nothing depends on how fast the box is; live cameras do not promise this.)

use crate::common::*;
use std::time::Duration;

const RULES: &str = r#"
[[cameras.lines]]
name = "left-path"
from = [0.21, 0.26]
to = [0.21, 0.52]
direction = "both"
classes = ["person"]

[[cameras.zones]]
name = "left-exit"
polygon = [[0.03, 0.30], [0.13, 0.30], [0.13, 0.50], [0.03, 0.50]]
classes = ["person"]
events = ["enter", "leave", "dwell"]
dwell = "3s"

[[cameras.zones]]
name = "centre"
polygon = [[0.35, 0.35], [0.65, 0.35], [0.65, 0.75], [0.35, 0.75]]
events = ["enter", "leave"]
"#;

const CAMERA: &str = r#"
fps = 10
min_score = 0.35
on_end = "stop"
stall_timeout = "20s"
"#;

type Key = (String, String, u64, String, String, String);

fn run_once(mqtt: u16, dir: &std::path::Path, device: &str) -> Vec<Key> {
    let sub = Subscriber::start(mqtt, &[&format!("vigil/{device}/#")]);
    let cfg = dir.join(format!("{device}.toml"));
    let url = format!("file://{}", asset(".cache/media/vtest-30s.mp4").display());
    std::fs::write(&cfg, config_toml(device, mqtt, &url, CAMERA, RULES)).unwrap();
    let (mut vigil, _logs) = vigil_run(&cfg);
    let ended = sub.wait(Duration::from_secs(180), |m| {
        m.topic.ends_with("/telemetry") && m.json["cameras"]["plaza"]["state"] == "ended"
    });
    ended.expect("the recording reaches its end");
    // Events are published before the telemetry that says "ended"; give the link a moment.
    std::thread::sleep(Duration::from_secs(1));
    vigil.terminate(Duration::from_secs(10));
    sub.on("/events/plaza")
        .into_iter()
        .map(|m| {
            let e = m.json;
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (
                s("kind"),
                s("rule"),
                e["track_id"].as_u64().unwrap(),
                s("direction"),
                format!("{:.4}", e["pts_s"].as_f64().unwrap()),
                e["dwell_s"]
                    .as_f64()
                    .map(|d| format!("{d:.3}"))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_recording_analysed_twice_gives_the_same_events() {
    let _cpu = exclusive();
    let dir = temp_dir("determinism");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let first = run_once(mqtt, &dir, "det1");
    let second = run_once(mqtt, &dir, "det2");
    assert!(first.len() >= 10, "too few events to compare: {first:?}");
    assert_eq!(first, second, "two runs of one recording differ");
}
