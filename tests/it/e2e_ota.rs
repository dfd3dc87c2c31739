//! Signed OTA end to end, over the real broker and a real HTTP server started here: a good
//! bundle swaps the model without restarting the camera; bad bundles (unknown key, corrupted
//! byte, truncated, wrong digest, other target or runtime, expired, downgrade, path traversal) are refused
//! with the precise reason and change nothing on disk or in the running plan; a model that fails
//! to load and one that returns garbage are rolled back within the probation window;
//! `cmd/ota/rollback` goes back to the device's own config; a download cut halfway resumes.

use crate::common::ota::*;
use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

const PROBATION_S: u64 = 4;

/// (pipeline_id, frames taken: analysed or kept from inference by the motion gate) of camera
/// plaza.
fn camera(addr: &str) -> (u64, u64) {
    let (code, body) = http_get(addr, "/api/cameras");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let c = &v[0];
    (
        c["pipeline_id"].as_u64().unwrap(),
        c["frames_analysed"].as_u64().unwrap_or(0)
            + c["frames_motion_skipped"].as_u64().unwrap_or(0),
    )
}

/// A copy of the real model with a run of its weights overwritten with 0xFF (NaN floats): it
/// loads, and returns non-finite values (checked here with the real runtime).
pub(crate) fn garbage_model(out: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(model()).unwrap();
    // 4 KiB at 60% of the file: inside a weight tensor of this model (checked below).
    let at = (bytes.len() * 6 / 10) & !3;
    bytes[at..at + 4096].fill(0xFF);
    std::fs::write(out, &bytes).unwrap();
    let mut b =
        vigil_dataplane::onnx::OnnxBackend::load_cpu(out, 1).expect("the garbage model loads");
    use vigil_core::model::Backend;
    let input = vec![0.5f32; 3 * 416 * 416];
    let mut finite = true;
    b.run(&input, [1, 3, 416, 416], &mut |outs| {
        finite = outs.iter().all(|o| o.iter().all(|v| v.is_finite()));
    })
    .expect("the garbage model runs");
    assert!(!finite, "the patched model must return non-finite values");
    bytes
}

/// A running Vigil's OTA commands and messages, over the broker (`vigil/<device>/…`, with a
/// subscriber on `vigil/<device>/#`). Shared with the other `ota_*` test modules.
pub struct OtaBox {
    pub mqtt: u16,
    pub sub: Subscriber,
    pub device: String,
}

impl OtaBox {
    /// Sends a command; returns its reply.
    pub fn command(&self, name: &str, payload: serde_json::Value) -> serde_json::Value {
        let id = payload["request_id"].as_str().unwrap().to_string();
        mqtt_publish(
            self.mqtt,
            &format!("vigil/{}/cmd/{name}", self.device),
            &payload.to_string(),
        );
        self.sub
            .wait(Duration::from_secs(30), |m| {
                m.topic.ends_with("/reply") && m.json["request_id"] == id.as_str()
            })
            .unwrap_or_else(|| panic!("no reply to {name} {id}"))
            .json
    }

    /// Sends `ota/apply` and waits for the final progress phase of that request.
    pub fn apply(
        &self,
        id: &str,
        url: &str,
        sha: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        let mut p = serde_json::json!({"request_id": id, "url": url, "sha256": sha});
        if let serde_json::Value::Object(m) = extra {
            p.as_object_mut().unwrap().extend(m);
        }
        let r = self.command("ota/apply", p);
        assert_eq!(r["status"], "ok", "{id} accepted: {r}");
        self.outcome(id)
    }

    /// The final `ota/progress` message of request `id` (waits up to 60 s).
    pub fn outcome(&self, id: &str) -> serde_json::Value {
        self.sub
            .wait(Duration::from_secs(60), |m| {
                m.topic.ends_with("/ota/progress")
                    && m.json["request_id"] == id
                    && ["done", "failed", "rolled_back", "cancelled"]
                        .contains(&m.json["phase"].as_str().unwrap_or(""))
            })
            .unwrap_or_else(|| panic!("no outcome for {id}"))
            .json
    }

    pub fn phase_at(&self, id: &str, phase: &str) -> Instant {
        self.sub
            .wait(Duration::from_secs(1), |m| {
                m.topic.ends_with("/ota/progress")
                    && m.json["request_id"] == id
                    && m.json["phase"] == phase
            })
            .unwrap_or_else(|| panic!("no {phase} for {id}"))
            .at
    }

    /// The latest retained-status message.
    pub fn status(&self) -> serde_json::Value {
        self.sub
            .on("/ota/status")
            .last()
            .expect("an ota/status")
            .json
            .clone()
    }
}

#[test]
fn ota_updates_roll_back_and_refuse_bad_bundles_without_touching_the_running_set() {
    let _cpu = exclusive();
    let dir = temp_dir("ota");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let http = FileServer::start(&srv);
    let (key, public) = keygen(&dir, "fleet.key");
    let (stranger, _) = keygen(&dir, "stranger.key");
    let ota_dir = dir.join("ota-store");
    let cfg = config_toml(
        "ota",
        mqtt,
        &format!("rtsp://127.0.0.1:{rtsp}/plaza"),
        "fps = 5",
        PLAZA_ZONE,
    ) + &format!(
        "\n[ota]\ntrusted_keys = [\"{public}\"]\ndir = \"{}\"\nprobation = \"{PROBATION_S}s\"\nprobation_min_inferences = 3\ndevice_class = \"edge-a\"\n",
        ota_dir.display()
    );
    let path = dir.join("vigil.toml");
    std::fs::write(&path, cfg).unwrap();
    let sub = Subscriber::start(mqtt, &["vigil/ota/#"]);
    let (_vigil, logs) = vigil_run(&path);
    let addr = http_addr(&logs);
    let b = OtaBox {
        mqtt,
        sub,
        device: "ota".into(),
    };
    let t0 = Instant::now();
    while camera(&addr).1 < 3 {
        assert!(t0.elapsed() < Duration::from_secs(30), "camera analysing");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (pipeline, _) = camera(&addr);
    let overlay = "[models.nanodet]\npath = \"models/nanodet.onnx\"\nkind = \"nanodet\"\nbackend = \"cpu\"\nthreads = 2\n";
    let real_model = std::fs::read(model()).unwrap();

    // 1. A good bundle: the model is swapped in the running worker, the camera keeps its
    //    pipeline, detections go on, and the update is committed after the probation.
    let good = bundle_dir(
        &dir.join("b-good"),
        &[
            ("config.toml", overlay.as_bytes()),
            ("models/nanodet.onnx", &real_model),
        ],
    );
    let sha = pack(
        &key,
        10,
        &good,
        &srv.join("good.vigil"),
        &["--device-class", "edge-a", "--ort-version", "1"],
    );
    let out = b.apply("good", &http.url("good.vigil"), &sha, serde_json::json!({}));
    assert_eq!(out["phase"], "done", "{out}");
    let slot = current(&ota_dir).expect("a set is active");
    assert_eq!(check_slot(&ota_dir, &slot), 10);
    assert!(
        logs.contains("models swapped (pipelines kept): nanodet"),
        "the model was swapped in place"
    );
    let (p, analysed) = camera(&addr);
    assert_eq!(
        p, pipeline,
        "the camera kept its pipeline through the model swap"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        camera(&addr).1 > analysed,
        "detections go on with the new model"
    );
    let st = b.status();
    assert_eq!(
        (
            st["active"]["sequence"].as_u64(),
            st["last"]["result"].as_str()
        ),
        (Some(10), Some("committed")),
        "{st}"
    );

    // 2. Bad bundles: each refused with its reason; the store and the plan are untouched.
    let small = |name: &str, seed: u64| {
        bundle_dir(
            &dir.join(name),
            &[
                ("config.toml", overlay.as_bytes()),
                ("models/nanodet.onnx", &noise(seed, 200_000)),
            ],
        )
    };
    let before = tree(&ota_dir);
    let mut cases: Vec<(&str, String, String, &str, &str)> = Vec::new();
    let s = pack(
        &stranger,
        11,
        &small("b-stranger", 1),
        &srv.join("stranger.vigil"),
        &[],
    );
    cases.push((
        "unknown key",
        "stranger.vigil".into(),
        s,
        "signature",
        "does not verify with any of the 1 trusted key",
    ));
    let ok11 = pack(&key, 11, &small("b-11", 2), &srv.join("ok11.vigil"), &[]);
    let mut bytes = std::fs::read(srv.join("ok11.vigil")).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0x40;
    std::fs::write(srv.join("corrupt.vigil"), &bytes).unwrap();
    cases.push((
        "corrupted byte",
        "corrupt.vigil".into(),
        sha256(&srv.join("corrupt.vigil")),
        "digest",
        "files/models/nanodet.onnx: sha256",
    ));
    std::fs::write(srv.join("truncated.vigil"), &bytes[..len / 2]).unwrap();
    cases.push((
        "truncated",
        "truncated.vigil".into(),
        sha256(&srv.join("truncated.vigil")),
        "bundle",
        "truncated",
    ));
    cases.push((
        "wrong digest",
        "ok11.vigil".into(),
        ok11.replace(&ok11[..4], "0000"),
        "digest",
        "the command says",
    ));
    let s = pack(
        &key,
        11,
        &small("b-target", 3),
        &srv.join("target.vigil"),
        &["--device-class", "edge-b"],
    );
    cases.push((
        "another target",
        "target.vigil".into(),
        s,
        "target",
        "device_class: the bundle is for \"edge-b\", this device is \"edge-a\"",
    ));
    // The ONNX Runtime version is read from the loaded library: 0.0 is never it.
    let s = pack(
        &key,
        11,
        &small("b-ort", 6),
        &srv.join("ort.vigil"),
        &["--device-class", "edge-a", "--ort-version", "0.0"],
    );
    cases.push((
        "another runtime",
        "ort.vigil".into(),
        s,
        "target",
        "ort_version: the bundle is for \"0.0\", this device is \"1.",
    ));
    let s = pack(
        &key,
        11,
        &small("b-expired", 4),
        &srv.join("expired.vigil"),
        &["--valid-for", "0s"],
    );
    cases.push((
        "expired",
        "expired.vigil".into(),
        s,
        "expired",
        "the bundle expired at",
    ));
    let s = pack(&key, 9, &small("b-old", 5), &srv.join("old.vigil"), &[]);
    cases.push((
        "downgrade",
        "old.vigil".into(),
        s,
        "sequence",
        "sequence 9 is older than the active 10",
    ));
    // Path traversal: a validly signed bundle whose file entry is renamed ../../ in its header.
    let mut t = std::fs::read(srv.join("ok11.vigil")).unwrap();
    let at = t
        .windows(25)
        .position(|w| w == b"files/models/nanodet.onnx")
        .expect("entry name");
    let evil = b"files/../../../../etc/x.so";
    t[at..at + 100].fill(0);
    t[at..at + evil.len()].copy_from_slice(evil);
    t[at + 148..at + 156].fill(b' ');
    let sum: u32 = t[at..at + 512].iter().map(|&b| b as u32).sum();
    t[at + 148..at + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    std::fs::write(srv.join("traversal.vigil"), &t).unwrap();
    cases.push((
        "path traversal",
        "traversal.vigil".into(),
        sha256(&srv.join("traversal.vigil")),
        "bundle",
        "escapes its directory",
    ));
    std::thread::sleep(Duration::from_millis(1100)); // past the expired bundle's second
    for (i, (what, file, sha, kind, needle)) in cases.iter().enumerate() {
        let id = format!("bad-{i}");
        let out = b.apply(&id, &http.url(file), sha, serde_json::json!({}));
        assert_eq!(out["phase"], "failed", "{what}: {out}");
        assert_eq!(out["error"], *kind, "{what}: {out}");
        let reason = out["reason"].as_str().unwrap();
        assert!(reason.contains(needle), "{what}: {reason}");
        assert_eq!(tree(&ota_dir), before, "{what}: nothing on disk changed");
        let downloads: Vec<_> = std::fs::read_dir(ota_dir.join("download"))
            .unwrap()
            .collect();
        assert!(
            downloads.is_empty(),
            "{what}: the refused download is removed"
        );
        assert_eq!(
            camera(&addr).0,
            pipeline,
            "{what}: the running plan is untouched"
        );
        assert_eq!(b.status()["active"]["sequence"], 10, "{what}");
    }
    assert!(!Path::new("/etc/x.so").exists());

    // 3. A model that fails to load: rolled back at activation, the reason reported.
    let broken = bundle_dir(
        &dir.join("b-broken"),
        &[
            ("config.toml", overlay.as_bytes()),
            ("models/nanodet.onnx", &noise(9, 100_000)),
        ],
    );
    let s = pack(&key, 11, &broken, &srv.join("broken.vigil"), &[]);
    let out = b.apply(
        "broken",
        &http.url("broken.vigil"),
        &s,
        serde_json::json!({}),
    );
    assert_eq!(
        (out["phase"].as_str(), out["error"].as_str()),
        (Some("rolled_back"), Some("activation")),
        "{out}"
    );
    assert!(
        out["reason"]
            .as_str()
            .unwrap()
            .contains("cannot load model"),
        "{out}"
    );
    assert_eq!(
        current(&ota_dir).as_deref(),
        Some(slot.as_str()),
        "back on the good set"
    );
    assert_eq!(camera(&addr).0, pipeline);

    // 4. A model that loads but returns garbage: rolled back within the probation window.
    let garbage = garbage_model(&dir.join("garbage.onnx"));
    let bad = bundle_dir(
        &dir.join("b-garbage"),
        &[
            ("config.toml", overlay.as_bytes()),
            ("models/nanodet.onnx", &garbage),
        ],
    );
    let s = pack(&key, 12, &bad, &srv.join("garbage.vigil"), &[]);
    let r = b.command(
        "ota/apply",
        serde_json::json!({"request_id": "garbage", "url": http.url("garbage.vigil"), "sha256": s}),
    );
    assert_eq!(r["status"], "ok");
    let busy = b.command(
        "ota/apply",
        serde_json::json!({"request_id": "second", "url": http.url("good.vigil"), "sha256": sha}),
    );
    assert_eq!(busy["status"], "error", "one update at a time: {busy}");
    assert!(
        busy["message"]
            .as_str()
            .unwrap()
            .contains("already in progress"),
        "{busy}"
    );
    let out = b.outcome("garbage");
    assert_eq!(
        (out["phase"].as_str(), out["error"].as_str()),
        (Some("rolled_back"), Some("probation")),
        "{out}"
    );
    let reason = out["reason"].as_str().unwrap();
    assert!(reason.contains("malformed outputs"), "{reason}");
    let took = b.phase_at("garbage", "rolled_back") - b.phase_at("garbage", "probation");
    assert!(
        took <= Duration::from_secs(PROBATION_S),
        "rolled back within the window ({took:?})"
    );
    assert_eq!(current(&ota_dir).as_deref(), Some(slot.as_str()));
    let st = b.status();
    assert_eq!(
        (
            st["active"]["sequence"].as_u64(),
            st["last"]["result"].as_str()
        ),
        (Some(10), Some("rolled_back")),
        "{st}"
    );
    assert_eq!(
        camera(&addr).0,
        pipeline,
        "the camera kept its pipeline through swap and rollback"
    );

    // 5. cmd/ota/rollback: back to the device's own config (no set before sequence 10).
    let r = b.command("ota/rollback", serde_json::json!({"request_id": "rb"}));
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(current(&ota_dir), None);
    let out = b.outcome("rb");
    assert_eq!(
        (out["error"].as_str(), out["sequence"].as_u64()),
        (Some("requested"), Some(10)),
        "{out}"
    );
    assert!(b.status()["active"].is_null());
    let (p, analysed) = camera(&addr);
    assert_eq!(p, pipeline);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        camera(&addr).1 > analysed,
        "the device's own model runs again"
    );

    // 6. A download cut halfway resumes with a Range request.
    http.drop_once
        .lock()
        .unwrap()
        .insert("/good.vigil".into(), 6_000_000);
    let before = http.requests_for("good.vigil").len();
    let out = b.apply(
        "resume",
        &http.url("good.vigil"),
        &sha,
        serde_json::json!({}),
    );
    assert_eq!(out["phase"], "done", "{out}");
    let reqs = &http.requests_for("good.vigil")[before..];
    assert!(reqs.len() >= 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=6000000-"), "{reqs:?}");
    let progress: Vec<u64> = b
        .sub
        .on("/ota/progress")
        .iter()
        .filter(|m| m.json["request_id"] == "resume" && m.json["phase"] == "downloading")
        .filter_map(|m| m.json["bytes"].as_u64())
        .collect();
    assert!(
        progress.contains(&6_000_000)
            && progress.last() == Some(&(std::fs::metadata(srv.join("good.vigil")).unwrap().len())),
        "{progress:?}"
    );
    assert_eq!(check_slot(&ota_dir, &current(&ota_dir).unwrap()), 10);
}
