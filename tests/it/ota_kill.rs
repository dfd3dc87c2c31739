//! Power-cut safety of OTA: Vigil, at set A, is told to install set B (served throttled by a real
//! HTTP server) and is killed with SIGKILL at a random moment of download, verify, stage,
//! activate or probation, 50 times. After each kill it is started again and must come up healthy
//! with `current` pointing at exactly A or exactly B: every file of the active slot matches its
//! manifest's digest, nothing else is in it, no staging directory is left after start-up.
//!
//! Then a download cut by a kill is resumed after the restart with a `Range` request, and the
//! older set A is refused as a downgrade unless the command sets `allow_rollback`.
//!
//! The seed is printed; `VIGIL_KILL_SEED=N` replays a run. `VIGIL_TEST_OTA_PAUSE_MS` (a
//! test-only hook, see `src/ota/mod.rs`) slows staging so that kills land in every phase.

use crate::common::ota::*;
use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ITERATIONS: usize = 50;
const PAUSE_MS: &str = "15";

fn start(config: &Path, pause: bool) -> (Proc, Lines) {
    let env: &[(&str, &str)] = if pause {
        &[("VIGIL_TEST_OTA_PAUSE_MS", PAUSE_MS)]
    } else {
        &[]
    };
    vigil_run_with(config, env, false)
}

/// The last OTA phase the logs show.
fn last_phase(logs: &Lines) -> &'static str {
    let mut phase = "before the job";
    for (_, l) in logs.snapshot() {
        for (needle, name) in [
            ("ota: phase downloading", "downloading"),
            ("ota: phase verifying", "verifying"),
            ("ota: phase staging", "staging"),
            ("ota: phase activating", "activating"),
            ("ota: activated; phase probation", "probation"),
            ("ota: probation passed", "committed"),
        ] {
            if l.contains(needle) {
                phase = name;
            }
        }
    }
    phase
}

fn healthy(logs: &Lines) {
    let addr = http_addr(logs);
    let t0 = Instant::now();
    loop {
        if http_get(&addr, "/healthz").0 == 200 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "/healthz 200 after a restart"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_connected(logs: &Lines) {
    logs.wait_for(Duration::from_secs(20), |l| l.contains("MQTT connected"))
        .expect("vigil connects to the broker");
    // Its subscription leaves right after the CONNACK.
    std::thread::sleep(Duration::from_millis(150));
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn sigkill_during_an_update_leaves_exactly_the_old_or_the_new_set() {
    let _cpu = exclusive();
    let dir = temp_dir("ota-kill");
    let mqtt = free_port();
    let _broker = mosquitto(&dir, mqtt);
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let http = FileServer::start(&srv);
    http.rate
        .store(4 << 20, std::sync::atomic::Ordering::Relaxed);
    let (key, public) = keygen(&dir, "fleet.key");
    let ota_dir = dir.join("ota");
    let config = dir.join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[device]\nid = \"kill\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt}\n\n[storage]\ndir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[ota]\ntrusted_keys = [\"{public}\"]\ndir = \"{}\"\nprobation = \"1s\"\n",
            dir.join("state").display(),
            ota_dir.display()
        ),
    )
    .unwrap();
    let overlay = "[models.spare]\npath = \"models/spare.onnx\"\nkind = \"nanodet\"\n";
    let mut shas = Vec::new();
    for (seq, name) in [(1u64, "a"), (2, "b")] {
        let src = bundle_dir(
            &dir.join(format!("src-{name}")),
            &[
                ("config.toml", overlay.as_bytes()),
                ("models/spare.onnx", &noise(seq, 1 << 20)),
                ("models/labels.txt", format!("set {name}\n").as_bytes()),
            ],
        );
        shas.push(pack(
            &key,
            seq,
            &src,
            &srv.join(format!("{name}.vigil")),
            &[],
        ));
    }
    let sub = Subscriber::start(mqtt, &["vigil/kill/ota/progress"]);
    let apply = |id: &str, name: &str, sha: &str| {
        mqtt_publish(
            mqtt,
            "vigil/kill/cmd/ota/apply",
            &serde_json::json!({"request_id": id, "url": http.url(&format!("{name}.vigil")), "sha256": sha}).to_string(),
        );
    };
    let done = |id: &str| {
        sub.wait(Duration::from_secs(30), |m| {
            m.json["request_id"] == id && m.json["phase"] == "done"
        })
        .unwrap_or_else(|| panic!("{id} committed"))
    };

    // Set A, then the time a whole update to B takes (with the same throttling and pauses):
    // the kills are drawn over 1.5 times that.
    let (mut v, logs) = start(&config, true);
    wait_connected(&logs);
    apply("a", "a", &shas[0]);
    done("a");
    let slot_a = current(&ota_dir).expect("A active");
    v.kill9();
    copy_dir(&ota_dir, &dir.join("template-a"));
    let (mut v, logs) = start(&config, true);
    wait_connected(&logs);
    let t0 = Instant::now();
    apply("b", "b", &shas[1]);
    logs.wait_for(Duration::from_secs(30), |l| {
        l.contains("ota: activated; phase probation")
    })
    .expect("B activated");
    let full = t0.elapsed();
    done("b");
    let slot_b = current(&ota_dir).expect("B active");
    v.kill9();
    assert_ne!(slot_a, slot_b);

    let seed = std::env::var("VIGIL_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "kill test: seed {seed} (VIGIL_KILL_SEED={seed} replays it); a whole update takes {full:?}"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ended: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_phase: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for i in 0..ITERATIONS {
        copy_dir(&dir.join("template-a"), &ota_dir);
        let (mut v, logs) = start(&config, true);
        wait_connected(&logs);
        let delay = full.mul_f64(1.5 * rng.f64());
        apply(&format!("k{i}"), "b", &shas[1]);
        std::thread::sleep(delay);
        v.kill9();
        let phase = last_phase(&logs);

        let (mut v, logs) = start(&config, false);
        healthy(&logs);
        let slot = current(&ota_dir).expect("a set is active after the restart");
        let seq = check_slot(&ota_dir, &slot);
        let outcome = match (slot == slot_a, slot == slot_b) {
            (true, _) => "old",
            (_, true) => "new",
            _ => panic!("iteration {i}: current -> {slot}, neither A ({slot_a}) nor B ({slot_b})"),
        };
        assert_eq!(seq, if outcome == "old" { 1 } else { 2 });
        let mut left: Vec<String> = std::fs::read_dir(ota_dir.join("slots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert!(
            left.iter().all(|s| s == &slot_a || s == &slot_b),
            "iteration {i}: only A and B remain after start-up: {left:?}"
        );
        assert!(!ota_dir.join("current.new").exists() && !ota_dir.join("state.json.tmp").exists());
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ota_dir.join("state.json")).unwrap()).unwrap();
        assert_eq!(
            state["active"]["slot"],
            slot.as_str(),
            "iteration {i}: state.json agrees with current"
        );
        v.kill9();
        eprintln!("kill {i:2}: after {delay:>10.1?} in {phase:<14} → {outcome}");
        *ended.entry(outcome).or_default() += 1;
        *by_phase.entry((phase, outcome)).or_default() += 1;
    }
    eprintln!("kill test: {ITERATIONS} kills, seed {seed}: {ended:?}");
    for ((phase, outcome), n) in &by_phase {
        eprintln!("  killed in {phase:<14} → {outcome}: {n}");
    }
    assert_eq!(ended.values().sum::<usize>(), ITERATIONS);
    assert!(
        ended.get("old").copied().unwrap_or(0) > 0 && ended.get("new").copied().unwrap_or(0) > 0,
        "kills landed both before and after the switch: {ended:?}"
    );

    // A download cut by a kill resumes after the restart: the same command continues from the
    // `.part` it left, with a Range request.
    copy_dir(&dir.join("template-a"), &ota_dir);
    http.rate
        .store(1 << 20, std::sync::atomic::Ordering::Relaxed);
    let (mut v, logs) = start(&config, false);
    wait_connected(&logs);
    apply("cut", "b", &shas[1]);
    let part = ota_dir.join("download").join(format!("{}.part", shas[1]));
    let t0 = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) < 200_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the download started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    v.kill9();
    let held = std::fs::metadata(&part).unwrap().len();
    let before = http.requests_for("b.vigil").len();
    let (_v, logs) = start(&config, false);
    wait_connected(&logs);
    apply("resumed", "b", &shas[1]);
    done("resumed");
    let reqs = &http.requests_for("b.vigil")[before..];
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].range,
        Some(format!("bytes={held}-")),
        "resumed from the {held} bytes held"
    );
    assert_eq!(check_slot(&ota_dir, &current(&ota_dir).unwrap()), 2);

    // Back to the older signed set A: refused as a downgrade, unless the command allows it.
    apply("down", "a", &shas[0]);
    let refused = sub
        .wait(Duration::from_secs(30), |m| {
            m.json["request_id"] == "down" && m.json["phase"] == "failed"
        })
        .expect("the downgrade is refused");
    assert_eq!(refused.json["error"], "sequence", "{}", refused.json);
    mqtt_publish(
        mqtt,
        "vigil/kill/cmd/ota/apply",
        &serde_json::json!({"request_id": "allowed", "url": http.url("a.vigil"), "sha256": shas[0], "allow_rollback": true}).to_string(),
    );
    done("allowed");
    assert_eq!(check_slot(&ota_dir, &current(&ota_dir).unwrap()), 1);
}
