//! The fleet console (`vigil-fleet`) against real boxes: a real mosquitto, two real Vigil boxes
//! analysing the demo clip over RTSP, the console with its SQLite store. A box's event appears
//! on Review with its picture (fetched and decoded); a box killed with SIGKILL shows offline
//! (its last will) within the keep-alive bound; events published while the console was down
//! leave a gap in its sequence that the console repairs by asking the box to replay exactly
//! the missing range.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fleet_bin() -> std::path::PathBuf {
    // Built beside `vigil` (same workspace, same profile).
    std::path::Path::new(vigil_bin()).with_file_name("vigil-fleet")
}

fn console(db: &std::path::Path, mqtt: u16, port: u16) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(db.with_extension("log"))
        .unwrap();
    let child = Command::new(fleet_bin())
        .args(["serve", "--broker", &format!("127.0.0.1:{mqtt}")])
        .arg("--db")
        .arg(db)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--gap-grace-s", "1", "--gap-retry-s", "2"])
        .env("VIGIL_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("vigil-fleet");
    wait_port(port, Duration::from_secs(20));
    Proc {
        name: "vigil-fleet".into(),
        child,
    }
}

fn stats(addr: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, "/api/stats");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_console_shows_boxes_events_pictures_offline_and_repairs_gaps() {
    let _cpu = exclusive();
    let p = plaza("fleet");
    let (dir, mqtt, url) = (p.dir.clone(), p.mqtt, p.url.clone());
    let web = free_port();
    let mut boxes: Vec<_> = ["f1", "f2"]
        .iter()
        .map(|id| {
            let cfg = dir.join(format!("{id}.toml"));
            let text = config_toml(id, mqtt, &url, "fps = 5", PLAZA_ZONE).replace(
                "telemetry_interval = \"1s\"",
                "telemetry_interval = \"1s\"\nkeep_alive = \"5s\"",
            ) + "\n[snapshots]\nmqtt_interval = \"1s\"\nwidth = 320\n";
            std::fs::write(&cfg, text).unwrap();
            vigil_run(&cfg)
        })
        .collect();
    let db = dir.join("fleet.db");
    let mut fleet = console(&db, mqtt, web);
    let addr = format!("127.0.0.1:{web}");

    // Both boxes online, events stored, an event picture matched and served.
    wait("events from both boxes", Duration::from_secs(60), || {
        let (_, page) = http_get(&addr, "/fragments/fleet");
        ["f1", "f2"]
            .iter()
            .all(|b| page.contains(&format!("data-device=\"{b}\"")))
            && stats(&addr)["events"].as_u64().unwrap_or(0) >= 4
    });
    let (_, page) = http_get(&addr, "/");
    assert!(page.contains("online for"), "{page}");
    let mut picture = None;
    wait(
        "an event with its picture on Review",
        Duration::from_secs(60),
        || {
            let (_, review) = http_get(&addr, "/review?device=f1");
            picture = review
                .split("src=\"/snapshots/")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .map(String::from);
            picture.is_some()
        },
    );
    let (code, ctype, jpeg) = http_get_bytes(&addr, &format!("/snapshots/{}", picture.unwrap()));
    assert_eq!((code, ctype.as_str()), (200, "image/jpeg"));
    let (w, h, _) = decode_jpeg(&jpeg);
    assert_eq!(
        (w, h),
        (320, 240),
        "the box's 320-wide picture of the 768x576 clip"
    );

    // Hostile payloads: counted, nothing stored for another box.
    mqtt_publish(mqtt, "vigil/f1/events/plaza", "{not json");
    mqtt_publish(
        mqtt,
        "vigil/f1/events/plaza",
        r#"{"seq":999999,"id":"x","device":"f2","camera":"plaza","rule":"plaza","kind":"zone_enter","track_id":1,"class":"person","score":0.5,"bbox":[0,0,1,1],"time":"t"}"#,
    );
    mqtt_publish(mqtt, "vigil/f1/snapshot/plaza", "not a jpeg");
    wait("hostile payloads refused", Duration::from_secs(10), || {
        stats(&addr)["refused"].as_u64().unwrap_or(0) >= 3
    });
    let (_, f2) = http_get(&addr, "/review?device=f2");
    assert!(
        !f2.contains("data-seq=\"999999\""),
        "a payload from f1's topic never lands on f2"
    );

    // SIGKILL: the broker publishes the box's last will (offline) within 1.5 × keep-alive.
    // (f1 stays in `boxes`, running.)
    let (mut f2_proc, _) = boxes.remove(1);
    let killed = Instant::now();
    f2_proc.kill9();
    wait("f2 offline", Duration::from_secs(15), || {
        let (_, page) = http_get(&addr, "/devices/f2");
        page.contains("offline for")
    });
    assert!(
        killed.elapsed() <= Duration::from_secs(10),
        "offline within the keep-alive bound"
    );

    // The console down while f1 keeps publishing: a gap, repaired by a replay request.
    let before = stats(&addr)["events"].as_u64().unwrap();
    fleet.kill9();
    std::thread::sleep(Duration::from_secs(8));
    fleet = console(&db, mqtt, web);
    let t0 = Instant::now();
    while stats(&addr)["replays_asked"].as_u64().unwrap_or(0) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "a replay asked for within 60 s: {} {}",
            stats(&addr),
            std::fs::read_to_string(db.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    wait("every gap filled", Duration::from_secs(60), || {
        let (_, page) = http_get(&addr, "/devices/f1");
        page.contains("None: every event from the first one seen is here.")
    });
    let (_, page) = http_get(&addr, "/fragments/fleet");
    assert!(page.contains("none"), "{page}");
    assert!(stats(&addr)["events"].as_u64().unwrap() > 0 && before > 0);
    drop(fleet);
}
