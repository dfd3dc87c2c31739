//! Home Assistant discovery on a real box and a real broker: with `[homeassistant] enabled`
//! the box's device-based discovery message is retained on `homeassistant/device/<id>/config`
//! (its zone's occupancy and count, the camera's fps, picture and restart button, the update
//! entity, availability from the box's status); it is sent again when Home Assistant says
//! `online`; the telemetry the sensors read carries the zone's count; and turned off, the
//! box removes the device (the retained message is cleared).

use crate::common::*;
use std::process::Command;
use std::time::Duration;

fn retained(mqtt: u16, topic: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string(), "-t", topic])
        .args(["--retained-only", "-W", "3", "-C", "1"])
        .output()
        .expect("mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn home_assistant_discovers_the_box_and_loses_it_when_turned_off() {
    let _cpu = exclusive();
    let p = plaza("ha");
    let cfg = p.dir.join("vigil.toml");
    let on = config_toml("ha", p.mqtt, &p.url, "fps = 5", PLAZA_ZONE)
        + "\n[homeassistant]\nenabled = true\n";
    std::fs::write(&cfg, &on).unwrap();
    let sub = Subscriber::start(p.mqtt, &["homeassistant/#", "vigil/ha/telemetry"]);
    let (mut vigil, logs) = vigil_run(&cfg);
    let topic = "homeassistant/device/ha/config";
    let d = sub
        .wait(Duration::from_secs(20), |m| m.topic == topic)
        .expect("the discovery message")
        .json;
    assert_eq!(d["dev"]["ids"][0], "vigil_ha");
    assert_eq!(d["availability_topic"], "vigil/ha/status");
    let cmps = d["cmps"].as_object().unwrap();
    for k in [
        "plaza_plaza_occupancy",
        "plaza_plaza_count",
        "plaza_fps",
        "plaza_snapshot",
        "plaza_restart",
        "update",
    ] {
        assert!(cmps.contains_key(k), "{k}: {d}");
    }
    assert!(retained(p.mqtt, topic).contains("vigil_ha"), "retained");

    // Home Assistant restarted: the message again.
    mqtt_publish(p.mqtt, "homeassistant/status", "online");
    let t0 = std::time::Instant::now();
    while sub.on(topic).len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sent again on online"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the zone's sensors read.
    sub.wait(Duration::from_secs(20), |m| {
        m.topic.ends_with("/telemetry")
            && m.json["cameras"]["plaza"]["rules"]["plaza"]["inside"].is_u64()
    })
    .expect("the zone's count in telemetry");

    // Turned off: the device is removed.
    vigil.terminate(Duration::from_secs(20));
    drop(logs);
    std::fs::write(&cfg, on.replace("enabled = true", "enabled = false")).unwrap();
    let (_vigil, logs) = vigil_run(&cfg);
    logs.wait_for(Duration::from_secs(20), |l| {
        l.contains("removing the device")
    })
    .expect("the removal logged");
    let t0 = std::time::Instant::now();
    while !retained(p.mqtt, topic).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the retained discovery cleared"
        );
    }
}
