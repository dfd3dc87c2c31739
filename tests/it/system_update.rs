//! `cmd/system/update`, Vigil's side (`crates/vigil-control/src/system_update.rs`): a real
//! `vigil run`, mosquitto and an HTTP file server. Off the A/B image the command says why; on it
//! (the image's unit sets `VIGIL_SLOT_BOOT_ID` and `VIGIL_SYSTEM_UPDATES=1`, as here) the bundle
//! is downloaded, its sha256 checked and handed over in `<state>/system/update/`, the
//! installer's answers become `system/progress`, and the outcome the image writes after the
//! reboot is published retained on `system/status`.
//!
//! The installer's side of the hand-over (root: `rauc install`, then the reboot) belongs to the
//! appliance image; here the test writes the lines it writes, to check how Vigil reads them.

use crate::common::ota::{FileServer, noise, sha256};
use crate::common::*;
use crate::e2e_ota::OtaBox;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

fn config(dir: &Path, mqtt: u16, device: &str) -> std::path::PathBuf {
    let path = dir.join("vigil.toml");
    std::fs::write(
        &path,
        format!(
            "[device]\nid = \"{device}\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[storage]\ndir = \"{}\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

/// Waits for Vigil's `online` status: it subscribes to its commands before it says so.
fn online(b: &OtaBox, after: std::time::Instant) {
    b.sub
        .wait(Duration::from_secs(30), |m| {
            m.at >= after && m.topic.ends_with("/status") && m.json.to_string().contains("online")
        })
        .expect("Vigil online");
}

trait SystemUpdates {
    fn update(&self, payload: serde_json::Value) -> serde_json::Value;
    fn progress(&self, id: &str, phase: &str, timeout: Duration) -> serde_json::Value;
}

impl SystemUpdates for OtaBox {
    fn update(&self, payload: serde_json::Value) -> serde_json::Value {
        self.command("system/update", payload)
    }

    fn progress(&self, id: &str, phase: &str, timeout: Duration) -> serde_json::Value {
        self.sub
            .wait(timeout, |m| {
                (m.topic.ends_with("/system/progress") || m.topic.ends_with("/system/status"))
                    && m.json["request_id"] == id
                    && m.json["phase"] == phase
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {phase} for {id}; seen: {:?}",
                    self.sub
                        .messages()
                        .iter()
                        .filter(|m| m.topic.contains("/system/"))
                        .map(|m| m.json.to_string())
                        .collect::<Vec<_>>()
                )
            })
            .json
    }
}

#[test]
fn off_the_image_the_command_says_why_and_bad_requests_are_refused() {
    let dir = temp_dir("sysupd-off");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let device = "sysupd-off";
    let sub = Subscriber::start(mqtt, &[&format!("vigil/{device}/#")]);
    let t0 = std::time::Instant::now();
    let (mut vigil, _logs) = vigil_run(&config(&dir, mqtt, device));
    let b = OtaBox {
        mqtt,
        device: device.into(),
        sub,
    };
    online(&b, t0);
    let sha = "a".repeat(64);
    let r = b.update(json!({"request_id": "u1", "url": "http://h/b.raucb", "sha256": sha}));
    assert_eq!(r["status"], "error", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains("not an A/B appliance image"),
        "{r}"
    );
    for (payload, says) in [
        (
            json!({"request_id": "u2", "url": "ftp://h/b", "sha256": sha}),
            "is not http",
        ),
        (
            json!({"request_id": "u3", "url": "http://h/b", "sha256": "beef"}),
            "not 64 hex",
        ),
        (json!({"request_id": "u4", "sha256": sha}), "url missing"),
    ] {
        let r = b.update(payload);
        assert_eq!(r["status"], "error", "{r}");
        assert!(r["message"].as_str().unwrap().contains(says), "{says}: {r}");
    }
    vigil.terminate(Duration::from_secs(10));
}

#[test]
fn on_the_image_a_bundle_is_downloaded_checked_handed_over_and_its_outcome_reported() {
    let dir = temp_dir("sysupd-on");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let device = "sysupd-on";
    let sub = Subscriber::start(mqtt, &[&format!("vigil/{device}/#")]);
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let bundle = files.join("vigil.raucb");
    std::fs::write(&bundle, noise(7, 3 << 20)).unwrap();
    let sha = sha256(&bundle);
    let server = FileServer::start(&files);
    let cfg = config(&dir, mqtt, device);
    let env = [
        ("VIGIL_SLOT_BOOT_ID", "0123abcd"),
        ("VIGIL_SYSTEM_UPDATES", "1"),
    ];
    let t0 = std::time::Instant::now();
    let (mut vigil, _logs) = vigil_run_with(&cfg, &env, false);
    let b = OtaBox {
        mqtt,
        device: device.into(),
        sub,
    };
    online(&b, t0);
    let hand_over = dir.join("state/system/update");

    // A wrong sha256: the download is refused, nothing is handed over.
    let wrong = "0".repeat(64);
    let r = b.update(
        json!({"request_id": "bad-sha", "url": server.url("vigil.raucb"), "sha256": wrong}),
    );
    assert_eq!(r["status"], "ok", "{r}");
    let f = b.progress("bad-sha", "failed", Duration::from_secs(30));
    assert!(f["reason"].as_str().unwrap().contains("sha256"), "{f}");
    assert!(!hand_over.join("request").exists());

    // The right one: downloaded, checked, handed over; a second command meanwhile is refused.
    let r =
        b.update(json!({"request_id": "up-1", "url": server.url("vigil.raucb"), "sha256": sha}));
    assert_eq!(r["status"], "ok", "{r}");
    b.progress("up-1", "downloading", Duration::from_secs(30));
    b.progress("up-1", "installing", Duration::from_secs(30));
    let busy =
        b.update(json!({"request_id": "up-2", "url": server.url("vigil.raucb"), "sha256": sha}));
    assert_eq!(busy["status"], "error", "{busy}");
    assert!(
        busy["message"].as_str().unwrap().contains("under way"),
        "{busy}"
    );
    assert_eq!(
        std::fs::read_to_string(hand_over.join("request")).unwrap(),
        format!("{sha}\n")
    );
    assert_eq!(
        sha256(&hand_over.join(format!("download/{sha}.bundle"))),
        sha,
        "the bundle the installer is given"
    );
    // The installer's lines (the image's installer writes them as root).
    std::fs::write(hand_over.join("status"), "installing 40\n").unwrap();
    let p = b.progress("up-1", "installing", Duration::from_secs(10));
    let p = if p["percent"].is_null() {
        b.sub
            .wait(Duration::from_secs(10), |m| {
                m.topic.ends_with("/system/progress") && m.json["percent"] == 40.0
            })
            .expect("40 %")
            .json
    } else {
        p
    };
    assert_eq!(p["percent"], 40.0, "{p}");
    // Vigil killed while the installer works (on a loaded box the watchdog may do that): the
    // next Vigil follows the installer from where it is.
    vigil.kill9();
    let t1 = std::time::Instant::now();
    let (vigil2, _logs) = vigil_run_with(&cfg, &env, false);
    vigil = vigil2;
    online(&b, t1);
    std::fs::write(hand_over.join("status"), "rebooting\n").unwrap();
    b.progress("up-1", "rebooting", Duration::from_secs(10));
    vigil.terminate(Duration::from_secs(10));

    // After the reboot: the image's verdict is published once, retained, with the request id.
    std::fs::write(hand_over.join("result"), "good B 2026-12-07T13:00:00Z\n").unwrap();
    let t2 = std::time::Instant::now();
    let (mut vigil, _logs) = vigil_run_with(&cfg, &env, false);
    online(&b, t2);
    let done = b.progress("up-1", "done", Duration::from_secs(30));
    assert_eq!(done["slot"], "B", "{done}");
    assert!(hand_over.join("result.reported").exists());
    assert!(!hand_over.join(format!("download/{sha}.bundle")).exists());
    let retained = Subscriber::start(mqtt, &[&format!("vigil/{device}/system/status")]);
    let m = retained
        .wait(Duration::from_secs(10), |m| m.json["phase"] == "done")
        .expect("the outcome is retained");
    assert_eq!(m.json["request_id"], "up-1");

    // An outcome the image writes while Vigil runs (it confirms the slot after Vigil has been
    // healthy on it) is published too: a slot given up on.
    std::fs::write(
        hand_over.join("job.json"),
        r#"{"request_id": "up-0", "sha256": "x"}"#,
    )
    .unwrap();
    std::fs::write(
        hand_over.join("result"),
        "bad B 2026-12-07T13:10:00Z Vigil was not healthy within 600s\n",
    )
    .unwrap();
    let back = b.progress("up-0", "failed", Duration::from_secs(10));
    assert!(
        back["reason"]
            .as_str()
            .unwrap()
            .contains("not healthy within 600s"),
        "{back}"
    );

    // A refused bundle: the installer's reason reaches the fleet.
    let r =
        b.update(json!({"request_id": "up-3", "url": server.url("vigil.raucb"), "sha256": sha}));
    assert_eq!(r["status"], "ok", "{r}");
    b.progress("up-3", "installing", Duration::from_secs(30));
    std::fs::write(
        hand_over.join("status"),
        "failed signature verification failed: unable to get local issuer certificate\n",
    )
    .unwrap();
    let f = b.progress("up-3", "failed", Duration::from_secs(10));
    assert!(
        f["reason"]
            .as_str()
            .unwrap()
            .contains("unable to get local issuer certificate"),
        "{f}"
    );
    assert!(
        !hand_over.join("request").exists(),
        "the request is withdrawn"
    );
    vigil.terminate(Duration::from_secs(10));
}
