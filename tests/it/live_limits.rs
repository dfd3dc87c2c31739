//! The live view under hostile clients: a WebSocket client that never reads is closed after
//! the send timeout without Vigil's memory growing; 200 clients at once get the cap (101 up to
//! `max_clients`, 503 beyond) while analysis goes on; `snapshot` of a camera that is down is an
//! error naming its state.

use crate::common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_live_clients_are_bounded_and_analysis_goes_on() {
    let _cpu = exclusive();
    let p = plaza("live-limits");
    let (dir, mqtt, url) = (p.dir.clone(), p.mqtt, p.url.clone());
    let closed = free_port();
    let down = format!(
        "[[cameras]]\nname = \"gone\"\nurl = \"rtsp://127.0.0.1:{closed}/x\"\nmodel = \"nanodet\"\n"
    );
    let cfg = dir.join("vigil.toml");
    let text = config_toml("livelim", mqtt, &url, "fps = 5", &down)
        + "\n[live]\nmax_clients = 8\nfps = 5\nwidth = 640\n";
    std::fs::write(&cfg, text).unwrap();
    let (vigil, logs) = vigil_run(&cfg);
    let addr = http_addr(&logs);
    let sub = Subscriber::start(mqtt, &["vigil/livelim/cmd/#"]);
    logs.wait_for(Duration::from_secs(20), |l| l.contains("camera: live"))
        .expect("plaza live");

    // 1. A client that never reads: closed by the send timeout, memory bounded.
    let pid = vigil.child.id();
    let rss0 = rss_kib(pid);
    let (silent, code) = live_upgrade(&addr);
    assert_eq!(code, 101);
    let t0 = Instant::now();
    while metric(&addr, "vigil_live_clients_timed_out_total") < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "a client that never reads is closed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rss1 = rss_kib(pid);
    eprintln!(
        "never-reading client closed after {:.1} s; RSS {rss0} → {rss1} KiB",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        rss1 < rss0 + 32 * 1024,
        "memory grew by {} KiB",
        rss1.saturating_sub(rss0)
    );
    assert_eq!(metric(&addr, "vigil_live_clients"), 0.0);
    drop(silent);

    // 2. 200 clients at once: 8 admitted, the rest refused; analysis goes on meanwhile.
    // Frames the worker took: analysed, or kept from inference by the motion gate.
    let taken = || {
        metric(
            &addr,
            "vigil_camera_frames_analysed_total{camera=\"plaza\"}",
        ) + metric(
            &addr,
            "vigil_camera_frames_motion_skipped_total{camera=\"plaza\"}",
        )
    };
    let analysed0 = taken();
    let clients: Vec<(TcpStream, u16)> = (0..200).map(|_| live_upgrade(&addr)).collect();
    let ok = clients.iter().filter(|c| c.1 == 101).count();
    let busy = clients.iter().filter(|c| c.1 == 503).count();
    assert_eq!((ok, busy), (8, 192), "admitted and refused");
    assert_eq!(metric(&addr, "vigil_live_clients"), 8.0);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        taken() >= analysed0 + 5.0,
        "analysis goes on with the clients connected"
    );
    drop(clients);
    let t0 = Instant::now();
    while metric(&addr, "vigil_live_clients") != 0.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "closed clients uncounted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 3. A snapshot of a camera that is down names its state.
    let t0 = Instant::now();
    loop {
        let (_, body) = http_get(&addr, "/api/cameras");
        if body.contains("backing_off") || body.contains("circuit_open") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "camera gone is down: {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    mqtt_publish(
        mqtt,
        "vigil/livelim/cmd/snapshot",
        r#"{"request_id": "d1", "camera": "gone"}"#,
    );
    let r = sub
        .wait(Duration::from_secs(10), |m| {
            m.topic.ends_with("/reply") && m.json["request_id"] == "d1"
        })
        .expect("a reply");
    assert_eq!(r.json["status"], "error");
    let msg = r.json["message"].as_str().unwrap();
    assert!(
        msg.contains("\"gone\" is backing_off") || msg.contains("\"gone\" is circuit_open"),
        "{msg}"
    );
}
