//! The HTTP API of a running Vigil: `/healthz`, `/metrics` (checked by `promtool check
//! metrics`), `/api/cameras` (credentials redacted), `/api/events` (paged from the spool) and
//! an event's snapshot (`/api/events/{id}/snapshot.jpg`: the event's box drawn where the
//! event says).

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
    // Frame → detections: every analysed frame once (scraped together, so at least as many
    // frames as the counter read a moment before), a positive sum, the +Inf bucket = count.
    let frames = value("vigil_camera_frames_analysed_total{camera=\"plaza\"}");
    let latency_n = value("vigil_frame_latency_seconds_count");
    assert!(
        latency_n >= frames * 0.9 && latency_n > 0.0,
        "{latency_n} of {frames}"
    );
    assert!(value("vigil_frame_latency_seconds_sum") > 0.0);
    assert_eq!(
        value("vigil_frame_latency_seconds_bucket{le=\"+Inf\"}"),
        latency_n
    );
    assert_eq!(
        value("vigil_camera_state{camera=\"plaza\",state=\"live\"}"),
        1.0
    );
    assert_eq!(
        value("vigil_camera_backend{camera=\"plaza\",backend=\"cpu\"}"),
        1.0,
        "the model's backend"
    );
    assert_eq!(
        value("vigil_camera_backend{camera=\"plaza\",backend=\"tensorrt\"}"),
        0.0
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

    snapshot_of_an_mqtt_event_shows_its_box(&sub, &addr);
    snapshots_over_mqtt(&sub, mqtt);
}

/// The camera's latest event picture is retained on `snapshot/<camera>` (binary JPEG), and the
/// `snapshot` command returns a fresh annotated picture and, asked, a clean one; an unknown
/// camera gets an error reply.
fn snapshots_over_mqtt(sub: &Subscriber, mqtt: u16) {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string()])
        .args([
            "-t",
            "vigil/http/snapshot/plaza",
            "-C",
            "1",
            "-W",
            "20",
            "-N",
        ])
        .output()
        .expect("mosquitto_sub");
    assert!(out.status.success(), "a retained picture on snapshot/plaza");
    let (w, h, _) = decode_jpeg(&out.stdout);
    assert!(w >= 64 && h >= 64, "{w}x{h}");

    mqtt_publish(
        mqtt,
        "vigil/http/cmd/snapshot",
        r#"{"request_id": "s1", "camera": "plaza", "clean": true}"#,
    );
    let r = sub
        .wait(Duration::from_secs(15), |m| {
            m.topic.ends_with("/cmd/snapshot/reply") && m.json["request_id"] == "s1"
        })
        .expect("a reply to snapshot");
    assert_eq!(r.json["status"], "ok", "{}", r.json["message"]);
    let jpeg = |v: &serde_json::Value| {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD
            .decode(v["jpeg_base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(b.len() as u64, v["bytes"].as_u64().unwrap());
        decode_jpeg(&b)
    };
    let (aw, ah, a) = jpeg(&r.json["data"]["annotated"]);
    let (cw, ch, c) = jpeg(&r.json["data"]["clean"]);
    assert_eq!((aw, ah), (cw, ch));
    // The header bar (camera name and time on black) is drawn on the annotated one only.
    let dark = |p: &[u8]| p.iter().take(8 * 3 * aw).filter(|&&v| v < 20).count();
    assert!(
        dark(&a) > dark(&c) + aw,
        "the overlay's header on the annotated picture only"
    );

    mqtt_publish(
        mqtt,
        "vigil/http/cmd/snapshot",
        r#"{"request_id": "s2", "camera": "nope"}"#,
    );
    let r = sub
        .wait(Duration::from_secs(15), |m| {
            m.topic.ends_with("/cmd/snapshot/reply") && m.json["request_id"] == "s2"
        })
        .expect("a reply to snapshot");
    assert_eq!(r.json["status"], "error");
    assert!(
        r.json["message"]
            .as_str()
            .unwrap()
            .contains("no running camera named"),
        "{}",
        r.json
    );
}

/// The first event published over MQTT refers to its picture; the picture, fetched over HTTP,
/// is a JPEG of the size the event says with the event's box drawn in the highlight colour
/// where the event's `bbox` is (pixel checks on its four sides, and not beside them).
fn snapshot_of_an_mqtt_event_shows_its_box(sub: &Subscriber, addr: &str) {
    let ev = &sub.on("/events/plaza")[0].json;
    let snap = &ev["snapshot"];
    let (w, h) = (
        snap["width"].as_u64().expect("event has a snapshot") as usize,
        snap["height"].as_u64().unwrap() as usize,
    );
    let id = ev["id"].as_str().unwrap();
    let (code, ctype, jpeg) = http_get_bytes(addr, &format!("/api/events/{id}/snapshot.jpg"));
    assert_eq!((code, ctype.as_str()), (200, "image/jpeg"));
    assert_eq!(jpeg.len() as u64, snap["bytes"].as_u64().unwrap());
    let (jw, jh, rgb) = decode_jpeg(&jpeg);
    assert_eq!((jw, jh), (w, h), "the size the event says");
    std::fs::write(temp_dir("http-snapshot").join("snapshot.jpg"), &jpeg).unwrap();
    // Red: well above green and blue (the highlight is pure red; JPEG blurs a 2-pixel line).
    let red_near = |x: i64, y: i64| {
        (-1..=2).any(|dy| {
            (-1..=2).any(|dx| {
                let (x, y) = (
                    (x + dx).clamp(0, w as i64 - 1),
                    (y + dy).clamp(0, h as i64 - 1),
                );
                let p = &rgb[(y as usize * w + x as usize) * 3..][..3];
                p[0] as i32 > p[1] as i32 + 60 && p[0] as i32 > p[2] as i32 + 60
            })
        })
    };
    let b: Vec<f64> = ev["bbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (x0, y0) = ((b[0] * w as f64) as i64, (b[1] * h as f64) as i64);
    let (x1, y1) = ((b[2] * w as f64) as i64, (b[3] * h as f64) as i64);
    let (mx, my) = ((x0 + x1) / 2, (y0 + y1) / 2);
    let sides = [(x0, my), (x1, my), (mx, y0), (mx, y1)];
    let on = sides.iter().filter(|&&(x, y)| red_near(x, y)).count();
    assert!(
        on >= 3,
        "the event's box is drawn red on {on} of 4 sides: {b:?} in {w}x{h}"
    );
    let beside = [(x0 - 8, my), (x1 + 8, my), (mx, y0 + 8), (mx, y1 - 8)];
    let off = beside.iter().filter(|&&(x, y)| red_near(x, y)).count();
    assert!(
        off <= 1,
        "red beside the box on {off} of 4 probes: {b:?} in {w}x{h}"
    );

    // An id that names no event, and one that cannot: 404 with a JSON error.
    for path in [
        "/api/events/0190f0e0-0000-7000-8000-000000000000/snapshot.jpg".to_string(),
        format!("/api/events/{}/snapshot.jpg", "x".repeat(300)),
        "/api/events/..%2F..%2Fetc/snapshot.jpg".to_string(),
    ] {
        let (code, body) = http_get(addr, &path);
        assert_eq!(code, 404, "{path}: {body}");
        let e: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(e["error"].as_str().unwrap().contains("no event"), "{body}");
    }
}
