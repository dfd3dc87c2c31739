//! Home Assistant MQTT discovery (`[homeassistant]`, off by default): the whole box as one
//! device-based discovery message, retained on `<discovery_prefix>/device/<id>/config`
//! (Home Assistant 2024.11+), re-published when Home Assistant says `online` on
//! `<discovery_prefix>/status` (its entities otherwise vanish after its restart), and replaced
//! by an empty retained message when the section is turned off (which removes the device).
//!
//! Per camera: an occupancy `binary_sensor` and a count `sensor` per zone, `in` and `out`
//! counter `sensor`s per line (all from the telemetry's `rules`), an analysed-fps `sensor`, an
//! `image` (the camera's retained snapshot topic) and a restart `button` (`cmd/camera/restart`);
//! per box an `update` entity bound to `ota/status` (installs are the fleet's: no command), a
//! CPU-load `sensor` and a temperature `sensor` per thermal zone the box had when the message
//! was built (the telemetry's `system`).
//! Availability is the box's status topic (`online`/`offline`, its last will). Every component
//! has a `unique_id`; names never repeat the device's name (Home Assistant prefixes it);
//! `object_id` (deprecated in 2025.10) is not used.

use super::Topics;
use serde_json::{Value, json};
use vigil_core::config::Config;

/// The discovery topic of this box.
pub fn topic(cfg: &Config) -> String {
    format!(
        "{}/device/{}/config",
        cfg.homeassistant.discovery_prefix, cfg.device.id
    )
}

/// Home Assistant's own status topic (`online` after it starts).
pub fn status_topic(cfg: &Config) -> String {
    format!("{}/status", cfg.homeassistant.discovery_prefix)
}

/// The discovery message of this box (JSON), from its config.
pub fn discovery(cfg: &Config, topics: &Topics, version: &str, zones: &[String]) -> Value {
    let id = &cfg.device.id;
    let uid = |s: &str| format!("vigil_{id}_{s}");
    let telemetry = topics.telemetry();
    let mut cmps = serde_json::Map::new();
    // A component: its platform, key (also its unique id's tail) and name, plus its own fields.
    let mut add = |p: &str, key: String, name: String, own: Value| {
        let mut v = json!({ "p": p, "unique_id": uid(&key), "name": name });
        if let (Some(v), Value::Object(own)) = (v.as_object_mut(), own) {
            v.extend(own);
        }
        cmps.insert(key, v);
    };
    let reads = |state_class: &str, template: String| json!({ "state_class": state_class, "state_topic": telemetry, "value_template": template });
    for c in cfg.cameras.iter().filter(|c| c.enabled) {
        let cam = &c.name;
        let rule = |r: &str, f: &str| format!("value_json.cameras['{cam}'].rules['{r}'].{f}");
        for z in &c.zones {
            let v = rule(&z.name, "inside");
            add(
                "binary_sensor",
                format!("{cam}_{}_occupancy", z.name),
                format!("{cam} {} occupied", z.name),
                json!({
                    "device_class": "occupancy",
                    "state_topic": telemetry,
                    "value_template": format!("{{{{ 'ON' if ({v} | default(0)) > 0 else 'OFF' }}}}"),
                }),
            );
            add(
                "sensor",
                format!("{cam}_{}_count", z.name),
                format!("{cam} {} count", z.name),
                reads("measurement", format!("{{{{ {v} | default(0) }}}}")),
            );
        }
        for l in &c.lines {
            for dir in ["in", "out"] {
                add(
                    "sensor",
                    format!("{cam}_{}_{dir}", l.name),
                    format!("{cam} {} {dir}", l.name),
                    reads(
                        "total_increasing",
                        format!("{{{{ {} | default(0) }}}}", rule(&l.name, dir)),
                    ),
                );
            }
        }
        let mut fps = reads(
            "measurement",
            format!("{{{{ value_json.cameras['{cam}'].fps_analysed | default(0) }}}}"),
        );
        fps["unit_of_measurement"] = json!("fps");
        fps["entity_category"] = json!("diagnostic");
        add(
            "sensor",
            format!("{cam}_fps"),
            format!("{cam} analysed fps"),
            fps,
        );
        add(
            "image",
            format!("{cam}_snapshot"),
            format!("{cam} last event"),
            json!({ "image_topic": topics.snapshot(cam), "content_type": "image/jpeg" }),
        );
        add(
            "button",
            format!("{cam}_restart"),
            format!("{cam} restart"),
            json!({
                "entity_category": "config",
                "command_topic": topics.command("camera/restart"),
                "payload_press": json!({"request_id": "homeassistant", "camera": cam}).to_string(),
            }),
        );
    }
    let mut cpu = reads(
        "measurement",
        "{{ value_json.system.cpu_pct | default(none) }}".into(),
    );
    cpu["unit_of_measurement"] = json!("%");
    cpu["entity_category"] = json!("diagnostic");
    add("sensor", "cpu".into(), "CPU load".into(), cpu);
    for z in zones {
        let mut t = reads(
            "measurement",
            format!("{{{{ value_json.system.temps_c['{z}'] | default(none) }}}}"),
        );
        t["device_class"] = json!("temperature");
        t["unit_of_measurement"] = json!("°C");
        t["entity_category"] = json!("diagnostic");
        add("sensor", format!("temp_{z}"), format!("{z} temperature"), t);
    }
    add(
        "update",
        "update".into(),
        "models and config".into(),
        json!({
            "state_topic": topics.ota_status(),
            "value_template": "{{ {'installed_version': (value_json.active.version if value_json.active else 'factory'), 'latest_version': (value_json.active.version if value_json.active else 'factory'), 'in_progress': value_json.busy} | to_json }}",
        }),
    );
    json!({
        "dev": {
            "ids": [format!("vigil_{id}")],
            "name": format!("Vigil {id}"),
            "mf": "Vigil",
            "mdl": "edge video analytics",
            "sw": version,
        },
        "o": { "name": "vigil", "sw": version },
        "availability_topic": topics.status(),
        "availability_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "cmps": cmps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        let dir = std::env::temp_dir().join(format!("vigil-ha-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.onnx");
        std::fs::write(&model, b"onnx").unwrap();
        let text = text.replace("/nonexistent.onnx", &model.display().to_string());
        let facts = vigil_core::facts::KnownFacts::cpu_only();
        vigil_core::config::parse(&text, &dir.join("vigil.toml"), &facts).unwrap()
    }

    const CONFIG: &str = r#"
[device]
id = "lobby-1"
[homeassistant]
enabled = true
[models.m]
path = "/nonexistent.onnx"
kind = "nanodet"
[[cameras]]
name = "door"
url = "rtsp://h/s"
model = "m"
[[cameras.zones]]
name = "entrance"
polygon = [[0, 0], [1, 0], [1, 1]]
[[cameras.lines]]
name = "gate"
from = [0, 0.5]
to = [1, 0.5]
"#;

    /// The documented shape of device-based discovery: `dev` with `ids`, `o` with `name`, and
    /// per component `p` and a `unique_id` unique in the message; availability from the box's
    /// status; names that do not repeat the device's; no deprecated `object_id`.
    #[test]
    fn the_discovery_message_has_home_assistants_shape() {
        let c = cfg(CONFIG);
        let t = Topics::new(&c.mqtt.topic_prefix, &c.device.id);
        let d = discovery(&c, &t, "0.1.0", &["CPU-therm".into(), "GPU-therm".into()]);
        assert_eq!(topic(&c), "homeassistant/device/lobby-1/config");
        assert_eq!(d["dev"]["ids"][0], "vigil_lobby-1");
        assert_eq!(d["o"]["name"], "vigil");
        assert_eq!(d["availability_topic"], t.status());
        let cmps = d["cmps"].as_object().unwrap();
        let mut ids = std::collections::HashSet::new();
        for (k, v) in cmps {
            let p = v["p"].as_str().unwrap();
            assert!(
                ["binary_sensor", "sensor", "image", "button", "update"].contains(&p),
                "{k}: {p}"
            );
            assert!(
                ids.insert(v["unique_id"].as_str().unwrap().to_string()),
                "{k}"
            );
            let name = v["name"].as_str().unwrap();
            assert!(!name.contains("Vigil lobby-1"), "{k}: {name}");
            assert!(v.get("object_id").is_none(), "{k}");
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            );
        }
        for k in [
            "door_entrance_occupancy",
            "door_entrance_count",
            "door_gate_in",
            "door_gate_out",
            "door_fps",
            "door_snapshot",
            "door_restart",
            "cpu",
            "temp_CPU-therm",
            "temp_GPU-therm",
            "update",
        ] {
            assert!(cmps.contains_key(k), "{k}");
        }
        assert_eq!(cmps["door_entrance_occupancy"]["device_class"], "occupancy");
        assert_eq!(cmps["temp_GPU-therm"]["device_class"], "temperature");
        assert_eq!(cmps["temp_GPU-therm"]["unit_of_measurement"], "°C");
        assert!(
            cmps["temp_GPU-therm"]["value_template"]
                .as_str()
                .unwrap()
                .contains("system.temps_c['GPU-therm']")
        );
        assert_eq!(cmps["door_snapshot"]["image_topic"], t.snapshot("door"));
        assert_eq!(
            cmps["door_restart"]["command_topic"],
            "vigil/lobby-1/cmd/camera/restart"
        );
        let press: Value =
            serde_json::from_str(cmps["door_restart"]["payload_press"].as_str().unwrap()).unwrap();
        assert_eq!(press["camera"], "door");
        assert!(
            cmps["door_gate_in"]["value_template"]
                .as_str()
                .unwrap()
                .contains("rules['gate'].in")
        );
    }
}
