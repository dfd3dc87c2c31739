//! Hot reload (SIGHUP and the MQTT commands `reload`, `config/set`, `config/get`): a rules-only
//! change keeps every pipeline (same pipeline instance, no frame dropped), a source change
//! rebuilds only that camera, and a bad config leaves everything running as it was.

use crate::common::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn cameras(rtsp: u16, a_fps: u32, a_extra_rule: bool) -> String {
    let url = format!("rtsp://127.0.0.1:{rtsp}/plaza");
    let mut t = format!(
        r#"
[[cameras]]
name = "a"
url = "{url}"
model = "nanodet"
fps = {a_fps}

[[cameras.zones]]
name = "plaza-a"
polygon = [[0.0, 0.2], [1.0, 0.2], [1.0, 1.0], [0.0, 1.0]]
classes = ["person"]
"#
    );
    if a_extra_rule {
        t.push_str("\n[[cameras.lines]]\nname = \"middle\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n");
    }
    t.push_str(&format!(
        "\n[[cameras]]\nname = \"b\"\nurl = \"{url}\"\nmodel = \"nanodet\"\nfps = 3\n"
    ));
    t
}

fn config(mqtt: u16, rtsp: u16, a_fps: u32, a_extra_rule: bool) -> String {
    // config_toml gives one camera; build the two-camera file from its head.
    let head = config_toml("reload", mqtt, "rtsp://unused", "", "");
    let head = head.split("[[cameras]]").next().unwrap().to_string();
    head + &cameras(rtsp, a_fps, a_extra_rule)
}

/// (pipeline_id, frames_decoded, frames_dropped, state) per camera.
fn cams(addr: &str) -> Vec<(String, u64, u64, u64, String)> {
    let (code, body) = http_get(addr, "/api/cameras");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["pipeline_id"].as_u64().unwrap(),
                c["frames_decoded"].as_u64().unwrap(),
                c["frames_dropped"].as_u64().unwrap(),
                c["status"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn hup(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn wait_log(logs: &Lines, after: usize, needle: &str) -> String {
    let t0 = Instant::now();
    loop {
        if let Some((_, l)) = logs
            .snapshot()
            .into_iter()
            .skip(after)
            .find(|(_, l)| l.contains(needle))
        {
            return l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no log line with {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn command(
    mqtt: u16,
    sub: &Subscriber,
    name: &str,
    payload: serde_json::Value,
) -> serde_json::Value {
    let id = payload["request_id"].as_str().unwrap().to_string();
    mqtt_publish(
        mqtt,
        &format!("vigil/reload/cmd/{name}"),
        &payload.to_string(),
    );
    sub.wait(Duration::from_secs(60), |m| {
        m.topic.ends_with("/reply") && m.json["request_id"] == id.as_str()
    })
    .unwrap_or_else(|| panic!("no reply to {name}"))
    .json
}

#[test]
fn reload_touches_only_what_changed_and_a_bad_config_changes_nothing() {
    let _cpu = exclusive();
    let dir = temp_dir("reload");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/reload/#"]);
    let path = dir.join("vigil.toml");
    std::fs::write(&path, config(mqtt, rtsp, 3, false)).unwrap();
    let (vigil, logs) = vigil_run(&path);
    let pid = vigil.child.id();
    let addr = http_addr(&logs);
    let t0 = Instant::now();
    while !cams(&addr).iter().all(|c| c.4 == "live") {
        assert!(t0.elapsed() < Duration::from_secs(30), "both cameras live");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = cams(&addr);

    // 1. Rules-only change of camera a, by SIGHUP.
    let n = logs.snapshot().len();
    std::fs::write(&path, config(mqtt, rtsp, 3, true)).unwrap();
    hup(pid);
    let line = wait_log(&logs, n, "reload applied");
    assert!(
        line.contains("rules updated: a") && line.contains("unchanged: b"),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = cams(&addr);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b.1, a.1, "camera {} kept its pipeline", b.0);
        assert!(a.2 > b.2, "camera {} kept decoding", b.0);
    }
    assert_eq!(
        before[1].3, after[1].3,
        "camera b dropped no frame during the reload"
    );

    // 2. A bad file: rejected, nothing changes.
    let n = logs.snapshot().len();
    std::fs::write(&path, "[device\nid = 'x'\n").unwrap();
    hup(pid);
    let line = wait_log(&logs, n, "reload rejected");
    assert!(
        line.contains("vigil.toml:1:"),
        "the error names the file and line: {line}"
    );
    wait_log(&logs, n, "the running config is kept");
    let still = cams(&addr);
    assert_eq!(
        still.iter().map(|c| c.1).collect::<Vec<_>>(),
        after.iter().map(|c| c.1).collect::<Vec<_>>()
    );

    // 3. config/set with a bad config over MQTT: an error reply listing the errors.
    let bad = config(mqtt, rtsp, 0, true);
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "bad", "config": bad}),
    );
    assert_eq!(r["status"], "error", "{r}");
    let errors = r["data"]["errors"].to_string();
    assert!(errors.contains("cameras[0].fps"), "{r}");
    assert_eq!(
        cams(&addr).iter().map(|c| c.1).collect::<Vec<_>>(),
        after.iter().map(|c| c.1).collect::<Vec<_>>()
    );

    // 4. config/set with a source change of camera a: only a gets a new pipeline; the file is
    // saved, config/get returns it.
    let good = config(mqtt, rtsp, 2, true);
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "good", "config": good}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    assert!(
        r["message"].as_str().unwrap().contains("restarted: a"),
        "{r}"
    );
    eprintln!(
        "config/set applied in {:.1} ms: {}",
        r["data"]["ms"].as_f64().unwrap(),
        r["message"]
    );
    let now = cams(&addr);
    assert_ne!(now[0].1, after[0].1, "camera a was rebuilt");
    assert_eq!(now[1].1, after[1].1, "camera b kept its pipeline");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);
    let r = command(
        mqtt,
        &sub,
        "config/get",
        serde_json::json!({"request_id": "get"}),
    );
    assert_eq!(r["data"]["toml"].as_str().unwrap(), good);

    // 5. reload command with nothing changed.
    let r = command(
        mqtt,
        &sub,
        "reload",
        serde_json::json!({"request_id": "same"}),
    );
    assert_eq!(r["status"], "ok");
    assert!(
        r["message"].as_str().unwrap().contains("unchanged: a, b"),
        "{r}"
    );
    eprintln!(
        "reload with no change took {:.1} ms",
        r["data"]["ms"].as_f64().unwrap()
    );

    // 6. camera/restart rebuilds that camera alone; an unknown name is an error.
    let before = cams(&addr);
    let r = command(
        mqtt,
        &sub,
        "camera/restart",
        serde_json::json!({"request_id": "rb", "camera": "b"}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    let now = cams(&addr);
    assert_eq!(now[0].1, before[0].1, "camera a untouched");
    assert_ne!(now[1].1, before[1].1, "camera b rebuilt");
    let r = command(
        mqtt,
        &sub,
        "camera/restart",
        serde_json::json!({"request_id": "rx", "camera": "nope"}),
    );
    assert_eq!(r["status"], "error");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("no running camera named \"nope\""),
        "{r}"
    );

    // 7. The other commands and their error replies, over the real broker; a command on another
    // device's topic is not answered (Vigil subscribes to its own topic only).
    let r = command(mqtt, &sub, "ping", serde_json::json!({"request_id": "p1"}));
    assert_eq!(
        (r["status"].as_str(), r["message"].as_str()),
        (Some("ok"), Some("pong"))
    );
    std::thread::sleep(Duration::from_millis(1200)); // one telemetry tick for `status`
    let r = command(
        mqtt,
        &sub,
        "status",
        serde_json::json!({"request_id": "s1"}),
    );
    assert_eq!(r["status"], "ok");
    assert!(r["data"]["cameras"]["a"]["state"].is_string(), "{r}");
    let r = command(
        mqtt,
        &sub,
        "reboot",
        serde_json::json!({"request_id": "u1"}),
    );
    assert_eq!(r["status"], "error");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("unknown command \"reboot\""),
        "{r}"
    );
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "m1"}),
    );
    assert!(
        r["message"].as_str().unwrap().contains("config missing"),
        "{r}"
    );
    mqtt_publish(mqtt, "vigil/reload/cmd/ping", "not json");
    let bad = sub
        .wait(Duration::from_secs(10), |m| {
            m.topic == "vigil/reload/cmd/ping/reply" && m.json["request_id"].is_null()
        })
        .expect("an error reply to a malformed payload");
    assert!(
        bad.json["message"]
            .as_str()
            .unwrap()
            .contains("payload is not JSON"),
        "{}",
        bad.json
    );
    let other = Subscriber::start(mqtt, &["vigil/otherbox/#"]);
    mqtt_publish(mqtt, "vigil/otherbox/cmd/ping", r#"{"request_id": "x1"}"#);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        other.on("/reply").is_empty(),
        "a command for another device was answered"
    );
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "vigil still running"
    );

    // Across every restart above, no stay came out negative (stream time never went back).
    for m in sub.on("/events/a").into_iter().chain(sub.on("/events/b")) {
        if let Some(d) = m.json["dwell_s"].as_f64() {
            assert!(d >= 0.0, "negative stay: {}", m.json);
        }
    }
}

/// A reload that fails after the running plan was changed (a camera thread that cannot be
/// started, through the test hook `VIGIL_TEST_FAIL_SPAWN`) restores the previous plan: the
/// reply says so, every camera runs again with its old settings, the file is not replaced.
#[test]
fn a_reload_that_fails_half_way_restores_the_previous_plan() {
    let _cpu = exclusive();
    let dir = temp_dir("reload-rollback");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/reload/#"]);
    let path = dir.join("vigil.toml");
    let good = config(mqtt, rtsp, 3, false);
    std::fs::write(&path, &good).unwrap();
    let (_vigil, logs) = vigil_run_with(&path, &[("VIGIL_TEST_FAIL_SPAWN", "failspawn")], true);
    let addr = http_addr(&logs);
    let live = |what: &str| {
        let t0 = Instant::now();
        loop {
            let now = cams(&addr);
            if now.len() == 2 && now.iter().all(|c| c.4 == "live") {
                return now;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{what}: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let before = live("both cameras live at start");

    // 1. A source change of camera a whose new pipeline cannot start: a was stopped, so it is
    // started again with its old URL; b is untouched.
    let broken_a = good.replacen("/plaza\"", "/plaza?failspawn\"", 1);
    assert_ne!(broken_a, good);
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "respawn", "config": broken_a}),
    );
    assert_eq!(r["status"], "error", "{r}");
    let msg = r["message"].as_str().unwrap();
    assert!(
        msg.contains("the previous plan was restored after: camera a: test hook"),
        "{r}"
    );
    let after = live("camera a runs again");
    assert_ne!(after[0].1, before[0].1, "camera a has a new pipeline");
    assert_eq!(after[1].1, before[1].1, "camera b kept its pipeline");
    let t0 = Instant::now();
    while cams(&addr)[0].2 <= after[0].2 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "camera a decodes again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), good);

    // 2. A new camera for the same model (its group is rebuilt) whose thread cannot start: the
    // group had been stopped; it comes back with a and b.
    let plus_c = format!(
        "{good}\n[[cameras]]\nname = \"c\"\nurl = \"rtsp://127.0.0.1:{rtsp}/plaza?failspawn\"\nmodel = \"nanodet\"\nfps = 2\n"
    );
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "rebuild", "config": plus_c}),
    );
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("the previous plan was restored after: camera c: test hook"),
        "{r}"
    );
    let restored = live("a and b run again after the failed rebuild");
    assert_eq!(
        restored.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let t0 = Instant::now();
    while cams(&addr).iter().zip(&restored).any(|(n, r)| n.2 <= r.2) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "a and b decode again"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = command(
        mqtt,
        &sub,
        "config/get",
        serde_json::json!({"request_id": "get"}),
    );
    assert_eq!(r["data"]["toml"].as_str().unwrap(), good);

    // 3. The plan still reloads normally afterwards.
    let r = command(
        mqtt,
        &sub,
        "config/set",
        serde_json::json!({"request_id": "ok", "config": config(mqtt, rtsp, 2, false)}),
    );
    assert_eq!(r["status"], "ok", "{r}");
}
