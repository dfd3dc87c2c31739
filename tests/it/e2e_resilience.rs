//! End to end, with real processes: a camera that goes away and comes back, a broker that is
//! not there at start-up, and credentials that never leak.

use crate::common::*;
use std::time::{Duration, Instant};

const CAMERA: &str = r#"
fps = 5
min_score = 0.4
stall_timeout = "3s"
rtsp_latency = "100ms"
[cameras.reconnect]
initial_backoff = "1s"
max_backoff = "3s"
"#;

const SECRET: &str = "s3cr3t-pw";

fn no_secret(logs: &Lines, sub: &Subscriber) {
    assert!(
        !logs.contains(SECRET),
        "the camera password appeared in the logs"
    );
    for m in sub.messages() {
        assert!(
            !m.json.to_string().contains(SECRET),
            "the camera password was published on {}",
            m.topic
        );
    }
}

#[test]
fn camera_comes_back_after_a_10s_rtsp_outage_without_restarting_vigil() {
    let _cpu = exclusive();
    let dir = temp_dir("outage");
    let (mqtt, rtsp) = (free_port(), free_port());
    let clip = asset(".cache/media/vtest.mp4");
    let _broker = mosquitto(&dir, mqtt);
    let sub = Subscriber::start(mqtt, &["vigil/outage/#"]);
    let mut server = rtsp_server(&clip, rtsp, "/plaza");
    let url = format!("rtsp://admin:{SECRET}@127.0.0.1:{rtsp}/plaza");
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, config_toml("outage", mqtt, &url, CAMERA, PLAZA_ZONE)).unwrap();
    let (mut vigil, logs) = vigil_run(&cfg);

    let is_event = |m: &Msg| m.topic.contains("/events/plaza");
    sub.wait(Duration::from_secs(30), is_event)
        .expect("events before the outage");
    let pid = vigil.child.id();

    // The camera disappears (kill -9: no RTSP teardown), for 10 s.
    server.kill9();
    let down_at = Instant::now();
    let backing_off = |m: &Msg| {
        m.topic.ends_with("/telemetry")
            && m.at > down_at
            && m.json["cameras"]["plaza"]["state"] == "backing_off"
    };
    let seen = sub
        .wait(Duration::from_secs(10), backing_off)
        .expect("telemetry shows the camera backing off");
    let err = seen.json["cameras"]["plaza"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !err.is_empty(),
        "the failure reason is visible: {}",
        seen.json
    );
    let detected_s = (seen.at - down_at).as_secs_f64();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down_at.elapsed()));

    let _server = rtsp_server(&clip, rtsp, "/plaza");
    let up_at = Instant::now();
    let live_again = logs
        .wait_for(Duration::from_secs(20), |l| {
            l.contains("camera: live") && l.contains("plaza")
        })
        .map(|_| ());
    assert!(live_again.is_some());
    // Wait for the second "live" log line (the first was before the outage).
    let t0 = Instant::now();
    while logs
        .snapshot()
        .iter()
        .filter(|(_, l)| l.contains("camera: live"))
        .count()
        < 2
    {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "camera not live again 20 s after the server came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (live_at, _) = logs
        .snapshot()
        .into_iter()
        .filter(|(_, l)| l.contains("camera: live"))
        .nth(1)
        .unwrap();
    let reconnect_s = live_at.saturating_duration_since(up_at).as_secs_f64();
    let after = sub
        .wait(Duration::from_secs(30), |m| is_event(m) && m.at > up_at)
        .expect("events resume after the outage");
    eprintln!(
        "outage: stall detected in telemetry after {detected_s:.1}s; live again {reconnect_s:.1}s after the server returned; first event after {:.1}s",
        (after.at - up_at).as_secs_f64()
    );
    assert!(
        reconnect_s < 8.0,
        "reconnect took {reconnect_s:.1}s with max_backoff 3s"
    );
    assert!(
        vigil.running() && vigil.child.id() == pid,
        "vigil kept running"
    );
    let t = sub
        .wait(Duration::from_secs(5), |m| {
            m.topic.ends_with("/telemetry") && m.at > live_at
        })
        .unwrap();
    assert!(
        t.json["cameras"]["plaza"]["reconnects"].as_u64().unwrap() >= 1,
        "{}",
        t.json
    );
    assert_eq!(t.json["cameras"]["plaza"]["state"], "live");
    no_secret(&logs, &sub);

    // A clean stop publishes the retained offline status.
    assert!(
        vigil
            .terminate(Duration::from_secs(10))
            .is_some_and(|s| s.success())
    );
    sub.wait(Duration::from_secs(5), |m| {
        m.topic.ends_with("/status") && m.json["state"] == "offline"
    })
    .expect("offline status on shutdown");
}

#[test]
fn vigil_analyses_without_a_broker_and_connects_when_one_appears() {
    let _cpu = exclusive();
    let dir = temp_dir("late-broker");
    let (mqtt, rtsp) = (free_port(), free_port());
    let clip = asset(".cache/media/vtest.mp4");
    let _server = rtsp_server(&clip, rtsp, "/plaza");
    let url = format!("rtsp://viewer:{SECRET}@127.0.0.1:{rtsp}/plaza");
    let cfg = dir.join("vigil.toml");
    std::fs::write(&cfg, config_toml("late", mqtt, &url, CAMERA, PLAZA_ZONE)).unwrap();
    let (mut vigil, logs) = vigil_run(&cfg);

    logs.wait_for(Duration::from_secs(20), |l| {
        l.contains("broker unreachable")
    })
    .expect("says the broker is unreachable");
    logs.wait_for(Duration::from_secs(20), |l| l.contains("camera: live"))
        .expect("camera live without a broker");
    // Events are produced (logged) while no broker exists.
    logs.wait_for(Duration::from_secs(30), |l| l.contains("vigil::events"))
        .expect("analysis runs without a broker");
    std::thread::sleep(Duration::from_secs(5));
    assert!(vigil.running());

    let _broker = mosquitto(&dir, mqtt);
    let sub = Subscriber::start(mqtt, &["vigil/late/#"]);
    let online = sub.wait(Duration::from_secs(20), |m| {
        m.topic.ends_with("/status") && m.json["state"] == "online"
    });
    assert!(
        online.is_some(),
        "retained online status after the broker appeared"
    );
    let t = sub
        .wait(Duration::from_secs(10), |m| m.topic.ends_with("/telemetry"))
        .expect("telemetry");
    let cam = &t.json["cameras"]["plaza"];
    assert!(
        cam["frames_analysed"].as_u64().unwrap() + cam["frames_motion_skipped"].as_u64().unwrap()
            > 20,
        "{}",
        t.json
    );
    sub.wait(Duration::from_secs(30), |m| {
        m.topic.ends_with("/events/plaza")
    })
    .expect("events flow once connected");
    no_secret(&logs, &sub);

    // Killed without a goodbye: the broker publishes the last will, retained.
    let killed = Instant::now();
    vigil.kill9();
    let will =
        |m: &Msg| m.topic.ends_with("/status") && m.json["state"] == "offline" && m.at >= killed;
    let will = sub
        .wait(Duration::from_secs(10), will)
        .expect("last will `offline` after kill -9");
    assert_eq!(will.json["reason"], "connection lost");
    let late = Subscriber::start(mqtt, &["vigil/late/status"]);
    let retained = late
        .wait(Duration::from_secs(5), |_| true)
        .expect("status is retained");
    assert_eq!(retained.json["state"], "offline");
}
