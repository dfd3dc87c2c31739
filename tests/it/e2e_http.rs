//! The HTTP API of a running Vigil: `/healthz`, `/metrics` (checked by `promtool check
//! metrics`), `/api/cameras` (credentials redacted) and `/api/events` (paged from the spool).

use crate::common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn health_metrics_cameras_and_event_history_over_http() {
    let _cpu = exclusive();
    let dir = temp_dir("http");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/http/#"]);
    let url = format!("rtsp://admin:hunter2@127.0.0.1:{rtsp}/plaza");
    let rules = PLAZA_ZONE;
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, config_toml("http", mqtt, &url, "fps = 5", rules)).unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    let line = logs
        .wait_for(Duration::from_secs(20), |l| {
            l.contains("HTTP API on http://")
        })
        .expect("HTTP API started")
        .1;
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let t0 = std::time::Instant::now();
    while sub.on("/events/plaza").len() < 3 {
        assert!(t0.elapsed() < Duration::from_secs(40), "events flow");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["healthy"], true);
    let stages: Vec<&str> = h["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for want in ["infer/nanodet", "mqtt-link", "supervisor"] {
        assert!(stages.contains(&want), "{stages:?}");
    }
    assert_eq!(h["cameras"]["plaza"]["state"], "live");

    let (code, metrics) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
    };
    assert!(value("vigil_camera_frames_analysed_total{camera=\"plaza\"}") > 0.0);
    assert!(value("vigil_inference_seconds_count{camera=\"plaza\"}") > 0.0);
    assert_eq!(
        value("vigil_camera_state{camera=\"plaza\",state=\"live\"}"),
        1.0
    );
    assert_eq!(value("vigil_mqtt_connected"), 1.0);
    assert!(value("vigil_spool_last_seq") >= 3.0);

    let (code, body) = http_get(&addr, "/api/cameras");
    assert_eq!(code, 200);
    assert!(!body.contains("hunter2"), "credentials leaked: {body}");
    let cams: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cams[0]["name"], "plaza");
    assert!(cams[0]["url"].as_str().unwrap().contains("***@127.0.0.1"));

    let (code, body) = http_get(&addr, "/api/events?from_seq=2&limit=2");
    assert_eq!(code, 200);
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(page["next_from_seq"], 4);
    let (code, _) = http_get(&addr, "/api/events?from_seq=abc");
    assert_eq!(code, 400, "a bad query is a client error");
}
