//! The unit under a real systemd: `systemd/vigil.service` runs Vigil in a container booted with
//! systemd as PID 1 (`systemd-nspawn --boot` on a minimal Debian root file system made by
//! `cargo xtask setup`, with the host's /usr bound in for Vigil's libraries). A test-only fault
//! hook (`VIGIL_TEST_STALL_AFTER_S`) stalls Vigil's core loop; its watchdog pings stop, systemd
//! kills and restarts it (`NRestarts` grows, the journal says "Watchdog timeout"), and no event
//! committed to the spool is lost across the restarts. And a remote `config/set` is saved in the
//! state directory, the only place the hardened service may write.

use crate::common::*;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_stalled_core_is_killed_by_the_watchdog_and_restarted_without_losing_events() {
    let _cpu = exclusive();
    let rootfs = asset(".cache/nspawn-rootfs");
    let repo = repo();
    let dir = temp_dir("watchdog");
    let (mqtt, rtsp) = (free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/wd/#"]);

    // The unit as shipped, plus a drop-in for the test: the binary of this build, a short
    // watchdog, and the fault hook.
    let units = rootfs.join("etc/systemd/system");
    std::fs::copy(
        repo.join("systemd/vigil.service"),
        units.join("vigil.service"),
    )
    .unwrap();
    std::fs::create_dir_all(units.join("vigil.service.d")).unwrap();
    let bin = std::path::Path::new(vigil_bin())
        .strip_prefix(&repo)
        .expect("the test binary is inside the repository");
    std::fs::write(
        units.join("vigil.service.d/test.conf"),
        format!(
            "[Service]\nExecStart=\nExecStart=/opt/vigil/{} run --config /var/lib/vigil/vigil.toml\n\
             Environment=ORT_DYLIB_PATH=/opt/vigil/.cache/onnxruntime/libonnxruntime.so.1\n\
             Environment=VIGIL_TEST_STALL_AFTER_S=12\nWatchdogSec=3s\n",
            bin.display()
        ),
    )
    .unwrap();
    std::fs::write(
        units.join("vigil-probe.service"),
        "[Unit]\nDescription=watchdog test probe\n[Service]\nType=oneshot\nExecStart=/bin/sh -c 'sleep 24; \
         systemctl show -p NRestarts vigil > /srv/out/state; journalctl -b -u vigil --no-pager > /srv/out/journal 2>&1; \
         systemctl poweroff'\n",
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(rootfs.join("var/lib/private/vigil"));
    let cfg_dir = dir.join("cfg");
    let out = dir.join("out");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let url = format!("rtsp://127.0.0.1:{rtsp}/plaza");
    let zone = PLAZA_ZONE;
    let cfg = config_toml("wd", mqtt, &url, "fps = 5", zone)
        .replace(
            &format!(
                "[storage]\ndir = \"{}\"",
                std::env::temp_dir()
                    .join(format!("vigil-test-state-wd-{}", std::process::id()))
                    .display()
            ),
            "",
        )
        .replace(
            &model().display().to_string(),
            "/opt/vigil/models/nanodet.onnx",
        )
        .replace("listen = \"127.0.0.1:0\"", "listen = \"\"");
    // The factory config, copied to the state directory by the unit's ExecStartPre.
    std::fs::create_dir_all(rootfs.join("etc/vigil")).unwrap();
    std::fs::write(rootfs.join("etc/vigil/vigil.toml"), &cfg).unwrap();
    std::fs::write(cfg_dir.join("vigil.toml"), &cfg).unwrap();
    // While the container runs: a remote config change (a new line rule) is applied and saved in
    // the state directory, the only place the service may write.
    let changed = format!(
        "{cfg}\n[[cameras.lines]]\nname = \"remote\"\nfrom = [0.5, 0.0]\nto = [0.5, 1.0]\n"
    );
    let remote = {
        let changed = changed.clone();
        std::thread::spawn(move || {
            let sub = Subscriber::start(mqtt, &["vigil/wd/cmd/#", "vigil/wd/status"]);
            sub.wait(Duration::from_secs(40), |m| {
                m.topic.ends_with("/status") && m.json["state"] == "online"
            })?;
            let payload = serde_json::json!({"request_id": "set1", "config": changed}).to_string();
            mqtt_publish(mqtt, "vigil/wd/cmd/config/set", &payload);
            sub.wait(Duration::from_secs(20), |m| {
                m.topic.ends_with("/reply") && m.json["request_id"] == "set1"
            })
            .map(|m| m.json)
        })
    };

    let status = Command::new("timeout")
        .arg("90")
        .arg("systemd-nspawn")
        .args(["--register=no", "--keep-unit", "--quiet", "-D"])
        .arg(&rootfs)
        .arg("--bind-ro=/usr")
        // The three files the service needs, each bound on its own: binding the whole checkout
        // would make the service's user need to traverse its parents (a clone in a 0700 folder,
        // as `mktemp -d` makes, gave "Permission denied" at EXEC).
        .arg(format!(
            "--bind-ro={}:/opt/vigil/{}",
            repo.join(bin).display(),
            bin.display()
        ))
        .arg(format!(
            "--bind-ro={}:/opt/vigil/.cache/onnxruntime",
            repo.join(".cache/onnxruntime").display()
        ))
        .arg(format!(
            "--bind-ro={}:/opt/vigil/models/nanodet.onnx",
            model().display()
        ))
        .arg(format!("--bind-ro={}:/srv/vigil-test", cfg_dir.display()))
        .arg(format!("--bind={}:/srv/out", out.display()))
        .args([
            "--boot",
            "systemd.wants=vigil.service",
            "systemd.wants=vigil-probe.service",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("systemd-nspawn (Debian package systemd-container)");
    assert!(
        status.success(),
        "the container booted and powered off: {status}"
    );
    let reply = remote.join().unwrap().expect("a reply to config/set");
    assert_eq!(reply["status"], "ok", "{reply}");
    let saved = std::fs::read_to_string(rootfs.join("var/lib/private/vigil/vigil.toml")).unwrap();
    assert_eq!(
        saved, changed,
        "config/set saved the config in the state directory"
    );
    let state = std::fs::read_to_string(out.join("state")).expect("the probe ran");
    let journal = std::fs::read_to_string(out.join("journal")).unwrap();
    let restarts: u64 = state
        .trim()
        .trim_start_matches("NRestarts=")
        .parse()
        .unwrap();
    eprintln!("NRestarts={restarts}");
    assert!(restarts >= 1, "systemd restarted Vigil: {state}\n{journal}");
    assert!(journal.contains("Watchdog timeout"), "journal:\n{journal}");
    assert!(
        journal.contains("test fault hook: stalling"),
        "journal:\n{journal}"
    );

    let onlines = sub
        .on("/status")
        .iter()
        .filter(|m| m.json["state"] == "online")
        .count();
    assert!(
        onlines >= 2,
        "a new process came online after the kill ({onlines})"
    );
    let seqs: BTreeSet<u64> = sub
        .on("/events/plaza")
        .iter()
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    let max = seqs.iter().next_back().copied().unwrap_or(0);
    assert!(max > 0, "events flowed");
    let missing: Vec<u64> = (1..=max).filter(|s| !seqs.contains(s)).collect();
    eprintln!(
        "events: {} distinct seqs up to {max}, {} restarts",
        seqs.len(),
        restarts
    );
    assert!(
        missing.is_empty(),
        "spooled events lost across the restarts: {missing:?}"
    );
}
