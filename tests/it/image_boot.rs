//! The appliance image (`cargo xtask image`, xtask/src/image.rs) booted for real: UEFI firmware
//! (OVMF) → GRUB → slot A → systemd → Vigil, under `qemu-system-x86_64` with software emulation
//! (TCG: this machine's /dev/kvm does not boot a stock kernel). The box is provisioned the way a
//! user does it: a `vigil/` folder written onto the image's FAT partition with the config (the
//! host's broker and RTSP camera, reached through QEMU's user network at 10.0.2.2) and an SSH key.
//!
//! Checked: Vigil reaches READY under systemd and publishes events from the clip; over SSH (the
//! provisioned key; the only way in): the root file system is read-only and slot A is booted,
//! Vigil's state is on the data partition, nothing listens but sshd (the config enables no HTTP
//! API), `systemd-analyze security` rates Vigil's unit ≤ 2.0; a stalled Vigil (SIGSTOP) is killed
//! by the watchdog and restarted (journal); a whole-system update over MQTT (`cmd/system/update`:
//! the image's own bundle from the host's HTTP server) is installed into slot B, the box reboots
//! into B, B is confirmed once Vigil is healthy on it and `system/status` says so, and its
//! events continue A's sequence with none missing; a config that
//! `check-config` refuses, provisioned afterwards, is not installed and its errors land on the
//! FAT partition.

use crate::common::ota::{FileServer, sha256};
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ESP_OFFSET: u64 = 1024 * 1024;

fn xtask() -> PathBuf {
    let x = repo().join("target/debug/xtask");
    assert!(
        x.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        x.display()
    );
    x
}

/// The release the update bundle carries: the same build as the image's, packed and stamped as
/// another version, so that the update visibly changes what the box runs.
const NEXT: &str = "0.1.0+next1";

/// The image and its update bundle, built in a folder that is removed on drop.
struct Built {
    dir: PathBuf,
    image: PathBuf,
    bundle: PathBuf,
}

impl Drop for Built {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Builds the image and its update bundle once per test run (a few minutes), before the test
/// takes [`exclusive`]: the other tests go on beside the build. So that it does not slow them,
/// the build runs at the lowest CPU priority (`nice -n 19`: it uses what they leave idle) and
/// writes into memory (/dev/shm, where there is one): gigabytes written to the disk beside a
/// test that waits on `fsync` stalled that test (the partition test's broker recovery once
/// took 40 s). The caller copies what it keeps to the disk once it holds [`exclusive`].
fn image(name: &str) -> Built {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.join(format!("vigil-test-{name}-{}", std::process::id()))
    } else {
        temp_dir(name).join("out")
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("nice")
        .args(["-n", "19"])
        .arg(xtask())
        .args([
            "image",
            "--vigil",
            vigil_bin(),
            "--bundle-version",
            NEXT,
            "--out",
        ])
        .arg(&dir)
        .stderr(Stdio::inherit())
        .output()
        .expect("xtask image");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let find = |suffix: &str| {
        text.lines()
            .rev()
            .find(|l| l.ends_with(suffix))
            .map(PathBuf::from)
    };
    let built = Built {
        image: find(".img").unwrap_or_default(),
        bundle: find(".raucb").unwrap_or_default(),
        dir,
    };
    assert!(
        out.status.success() && built.image.is_file() && built.bundle.is_file(),
        "cargo xtask image failed ({}):\n{text}",
        out.status
    );
    built
}

/// Copies `from` to `to` keeping holes (the image is mostly empty space).
fn copy_sparse(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("--sparse=always")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success(), "cp {} {}", from.display(), to.display());
}

/// Copies a file onto the image's EFI system partition (mtools, at the partition's offset).
fn esp_put(disk: &Path, from: &Path, to: &str) {
    let img = format!("{}@@{ESP_OFFSET}", disk.display());
    let _ = Command::new("mmd")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &img, "::vigil"])
        .output();
    let ok = Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-o", "-i", &img])
        .arg(from)
        .arg(format!("::{to}"))
        .status()
        .unwrap();
    assert!(ok.success(), "mcopy {to}");
}

fn esp_get(disk: &Path, from: &str) -> Option<String> {
    let out = Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-i", &format!("{}@@{ESP_OFFSET}", disk.display())])
        .arg(format!("::{from}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

struct Vm {
    qemu: Proc,
    ssh_port: u16,
    key: PathBuf,
    serial: PathBuf,
}

impl Vm {
    fn boot(dir: &Path, disk: &Path, ssh_port: u16, key: &Path) -> Vm {
        let vars = dir.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        let serial = dir.join("serial.log");
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
            .args(["-display", "none", "-no-reboot"])
            .arg("-drive")
            .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", disk.display()))
            .arg("-nic")
            .arg(format!(
                "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"
            ))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86)");
        Vm {
            qemu: Proc {
                name: "qemu".into(),
                child,
            },
            ssh_port,
            key: key.to_path_buf(),
            serial,
        }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Runs `cmd` in the VM as root over SSH; (exit code, stdout + stderr).
    fn ssh(&self, cmd: &str) -> (i32, String) {
        let out = Command::new("ssh")
            .args(["-i"])
            .arg(&self.key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "BatchMode=yes",
                "-p",
                &self.ssh_port.to_string(),
                "root@127.0.0.1",
                cmd,
            ])
            .output()
            .expect("ssh (Debian package openssh-client)");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn wait_ssh(&self, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.ssh("true").0 == 0 {
                return;
            }
            std::thread::sleep(Duration::from_secs(3));
        }
        panic!("no SSH into the VM after {timeout:?}:\n{}", self.serial());
    }
}

/// The `seq` of every event received so far, sorted, without the repeats of QoS 1.
fn event_seqs(sub: &Subscriber) -> Vec<u64> {
    let mut v: Vec<u64> = sub
        .messages()
        .iter()
        .filter(|m| m.topic.starts_with("vigil/imgtest/events/"))
        .filter_map(|m| m.json["seq"].as_u64())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// RAUC's status once the booted slot is confirmed (waits up to a minute): `booted` is
/// `bootname`, and its slot `slot` is good.
fn confirmed(vm: &Vm, bootname: &str, slot: &str) -> String {
    let mut rauc = String::new();
    for _ in 0..12 {
        rauc = vm.ssh("rauc status --detailed --output-format=json").1;
        if rauc.contains("\"boot_status\":\"good\"") {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let status: serde_json::Value =
        serde_json::from_str(rauc.lines().find(|l| l.starts_with('{')).unwrap_or("{}"))
            .unwrap_or_default();
    assert_eq!(status["booted"], bootname, "{rauc}");
    let state = status["slots"]
        .as_array()
        .and_then(|slots| slots.iter().find_map(|s| s.get(slot)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        state["boot_status"], "good",
        "slot {bootname} confirmed: {rauc}"
    );
    rauc
}

/// Breaks slot A as `breakage` (shell, A's root file system mounted at /mnt) from the booted
/// slot B, leaves the state an install into A leaves (A primary, the update pending), reboots,
/// and boots the VM again each time it stops (QEMU runs with -no-reboot) until it has booted
/// `boots` more times; returns the VM of the last boot.
fn fault(vm: Vm, dir: &Path, disk: &Path, key: &Path, breakage: &str, boots: usize) -> Vm {
    let (code, out) = vm.ssh(&format!(
        "set -e; dev=$(sed -n '/\\[slot.rootfs.0\\]/,/^$/s/^device=//p' /etc/rauc/system.conf); \
         mount \"$dev\" /mnt; {breakage}; umount /mnt; \
         echo \"A $(date -u +%FT%TZ)\" > /data/system-update/pending; rauc status mark-active other; sync"
    ));
    assert_eq!(code, 0, "breaking slot A: {out}");
    let _ = vm.ssh("systemctl reboot");
    let mut vm = vm;
    for boot in 0..boots {
        let t = Instant::now();
        while vm.qemu.running() && t.elapsed() < Duration::from_secs(420) {
            std::thread::sleep(Duration::from_millis(500));
        }
        assert!(
            !vm.qemu.running(),
            "the VM did not reboot within 420 s (boot {boot}):\n{}",
            vm.serial()
        );
        let ssh_port = vm.ssh_port;
        drop(vm);
        vm = Vm::boot(dir, disk, ssh_port, key);
        eprintln!("boot {} after breaking slot A", boot + 1);
    }
    vm
}

/// After a fault of slot A: Vigil on B publishes the failed update on system/status, slot A,
/// its reason containing `why`; the box runs B, confirmed good.
fn back_on_b(sub: &Subscriber, vm: &Vm, why: &str) {
    let failed = sub.wait(Duration::from_secs(600), |m| {
        m.topic == "vigil/imgtest/system/status"
            && m.json["phase"] == "failed"
            && m.json["reason"].as_str().is_some_and(|r| r.contains(why))
    });
    let failed = failed.unwrap_or_else(|| panic!("no failed update ({why}):\n{}", vm.serial()));
    eprintln!("back on B: {}", failed.json);
    assert_eq!(failed.json["slot"], "A", "{}", failed.json);
    vm.wait_ssh(Duration::from_secs(60));
    assert!(vm.ssh("cat /proc/cmdline").1.contains("rauc.slot=B"));
    confirmed(vm, "B", "rootfs.1");
}

#[test]
fn the_image_boots_provisions_and_runs_vigil_under_systemd() {
    let dir = temp_dir("image");
    let t0 = Instant::now();
    let built = image("image");
    eprintln!("image built in {:.0}s", t0.elapsed().as_secs_f64());
    // The VMs use both cores (TCG): from here on nothing runs beside this test.
    let _cpu = exclusive();
    let disk = dir.join("disk.img");
    copy_sparse(&built.image, &disk);
    // The update bundle of the same build, for the A → B update below.
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let bundle_name = built
        .bundle
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    copy_sparse(&built.bundle, &srv.join(&bundle_name));
    drop(built);

    // Provisioning: the config (host broker and camera via QEMU's gateway) and an SSH key.
    let (mqtt, rtsp, ssh_port) = (free_port(), free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    // Under software emulation one inference takes seconds: the camera shows a still scene
    // (vtest's first frame, three people standing), so tracks hold across frames seconds apart.
    let still = dir.join("still.mp4");
    let mut source = vec![
        "filesrc".to_string(),
        format!("location={}", asset(".cache/media/vtest.mp4").display()),
    ];
    source.extend(words(
        "! decodebin ! videoconvert ! imagefreeze num-buffers=300 ! video/x-raw,framerate=5/1",
    ));
    h264_mp4(&source, 5, &still);
    let _server = Proc {
        name: "rtsp".into(),
        child: Command::new(vigil_bin())
            .args([
                "rtsp-serve",
                "--loop",
                "--port",
                &rtsp.to_string(),
                "--mount",
                "/plaza",
            ])
            .arg("--file")
            .arg(&still)
            .stdout(Stdio::null())
            .spawn()
            .expect("vigil rtsp-serve"),
    };
    wait_port(rtsp, Duration::from_secs(10));
    let sub = Subscriber::start(mqtt, &["vigil/imgtest/#"]);
    let key = dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let cfg = config_toml(
        "imgtest",
        mqtt,
        &format!("rtsp://10.0.2.2:{rtsp}/plaza"),
        "fps = 1",
        PLAZA_ZONE,
    );
    let mut cfg = cfg
        .lines()
        .filter(|l| !l.starts_with("dir = "))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("host = \"127.0.0.1\"", "host = \"10.0.2.2\"")
        .replace(
            &model().display().to_string(),
            "/usr/share/vigil/models/nanodet.onnx",
        )
        .replace("listen = \"127.0.0.1:0\"", "listen = \"\"");
    cfg.push('\n');
    std::fs::write(dir.join("vigil.toml"), &cfg).unwrap();
    esp_put(&disk, &dir.join("vigil.toml"), "vigil/vigil.toml");
    esp_put(&disk, &key.with_extension("pub"), "vigil/authorized_keys");

    let t_boot = Instant::now();
    let mut vm = Vm::boot(&dir, &disk, ssh_port, &key);
    let online = sub.wait(Duration::from_secs(420), |m| {
        m.topic == "vigil/imgtest/status" && m.json["state"] == "online"
    });
    assert!(
        online.is_some(),
        "Vigil in the VM never came online:\n{}",
        vm.serial()
    );
    assert_eq!(
        online.unwrap().json["version"],
        env!("CARGO_PKG_VERSION"),
        "slot A runs the image's release"
    );
    eprintln!(
        "boot to Vigil online: {:.0}s",
        t_boot.elapsed().as_secs_f64()
    );
    let event = sub.wait(Duration::from_secs(240), |m| {
        m.topic.starts_with("vigil/imgtest/events/")
    });
    vm.wait_ssh(Duration::from_secs(60));
    let (_, journal) = vm.ssh("journalctl -b -u vigil -u vigil-provision --no-pager | tail -n 80");
    let event = event.unwrap_or_else(|| panic!("no event from Vigil in the VM:\n{journal}"));
    eprintln!(
        "first event after {:.0}s: {}",
        t_boot.elapsed().as_secs_f64(),
        event.topic
    );

    // Inside: slot A, read-only root, state on /data, the unit's hardening, listeners.
    let (_, state) = vm.ssh("systemctl is-active vigil; systemctl show -p Type,StatusText vigil");
    assert!(state.starts_with("active"), "{state}");
    let (_, cmdline) = vm.ssh("cat /proc/cmdline");
    assert!(cmdline.contains("rauc.slot=A"), "{cmdline}");
    let (code, _) = vm.ssh("touch /usr/x");
    assert_ne!(code, 0, "the root file system is read-only");
    let (_, mounts) =
        vm.ssh("findmnt -no SOURCE,FSTYPE,OPTIONS /; findmnt -no SOURCE /var/lib/private/vigil");
    eprintln!("mounts: {mounts}");
    assert!(
        mounts.lines().next().unwrap_or("").contains("ro,"),
        "{mounts}"
    );
    let (_, live) = vm.ssh("cat /var/lib/vigil/vigil.toml");
    assert!(
        live.contains("id = \"imgtest\""),
        "the provisioned config is live: {live}"
    );
    let (_, security) = vm.ssh("systemd-analyze security vigil.service --no-pager");
    let exposure: f64 = security
        .lines()
        .find_map(|l| l.split("Overall exposure level for vigil.service:").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{security}"));
    eprintln!("systemd-analyze security vigil.service (in the VM): {exposure}");
    assert!(exposure <= 2.0, "{security}");
    let (_, listen) = vm.ssh("ss -ltnpH");
    eprintln!("listening:\n{listen}");
    for l in listen.lines() {
        let local = l.split_whitespace().nth(3).unwrap_or("");
        assert!(
            l.contains("\"sshd\"")
                || (l.contains("systemd-resolve")
                    && (local.starts_with("127.0.0.53") || local.starts_with("127.0.0.54"))),
            "only sshd (the config enables no HTTP API) and resolved's loopback stub listen: {l}"
        );
    }
    // The slot gate: Vigil writes this boot's id once healthy (every stage beating, MQTT
    // connected, cameras live, for 20 s: under a loaded machine's emulation that can come after
    // the checks above); the slot is confirmed with RAUC.
    let t_gate = Instant::now();
    let gate = loop {
        let (_, gate) = vm.ssh("cat /proc/sys/kernel/random/boot_id /var/lib/vigil/system/healthy");
        let ids: Vec<String> = gate.lines().map(|l| l.replace('-', "")).collect();
        if (ids.len() == 2 && ids[0] == ids[1]) || t_gate.elapsed() > Duration::from_secs(240) {
            break gate;
        }
        std::thread::sleep(Duration::from_secs(5));
    };
    let ids: Vec<String> = gate.lines().map(|l| l.replace('-', "")).collect();
    assert!(
        ids.len() == 2 && ids[0] == ids[1],
        "Vigil's health file holds this boot's id within 240 s: {gate}"
    );
    let rauc = confirmed(&vm, "A", "rootfs.0");
    eprintln!("rauc status: {rauc}");

    // The watchdog: a stalled Vigil is killed and restarted by systemd.
    let (code, out) = vm.ssh("kill -STOP $(systemctl show -p MainPID --value vigil)");
    assert_eq!(code, 0, "{out}");
    let t_stall = Instant::now();
    let mut journal = String::new();
    while t_stall.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(5));
        journal = vm.ssh("journalctl -b -u vigil --no-pager").1;
        if journal.contains("Watchdog timeout")
            && vm.ssh("systemctl is-active vigil").1.trim() == "active"
        {
            break;
        }
    }
    assert!(journal.contains("Watchdog timeout"), "{journal}");
    eprintln!(
        "watchdog restarted the stalled Vigil within {:.0}s",
        t_stall.elapsed().as_secs_f64()
    );

    // A whole-system update over MQTT: the bundle from the host's HTTP server, installed into
    // slot B by the image's installer (RAUC checks its signature), a reboot into B, B confirmed
    // once Vigil is healthy on it, the outcome on system/status.
    let http = FileServer::start(&srv);
    let url = http.url(&bundle_name).replace("127.0.0.1", "10.0.2.2");
    let sha = sha256(&srv.join(&bundle_name));
    // The events' sequence before the update (the spool, on /data, carries it across).
    let seq_before = event_seqs(&sub)
        .last()
        .copied()
        .expect("events before the update");
    let t_update = Instant::now();
    mqtt_publish(
        mqtt,
        "vigil/imgtest/cmd/system/update",
        &serde_json::json!({"request_id": "sys-1", "url": url, "sha256": sha}).to_string(),
    );
    let reply = sub.wait(Duration::from_secs(60), |m| {
        m.topic == "vigil/imgtest/cmd/system/update/reply"
    });
    let reply = reply.expect("a reply to system/update").json;
    assert_eq!(reply["status"], "ok", "{reply}");
    let phase = |p: &'static str, timeout: Duration| {
        sub.wait(timeout, |m| {
            m.topic.starts_with("vigil/imgtest/system/")
                && m.json["request_id"] == "sys-1"
                && (m.json["phase"] == p || m.json["phase"] == "failed")
        })
    };
    let rebooting = phase("rebooting", Duration::from_secs(1200));
    let rebooting = rebooting.unwrap_or_else(|| {
        panic!(
            "no 'rebooting' for the system update:\n{}",
            vm.ssh("journalctl -b -u vigil -u vigil-system-update --no-pager | tail -n 60")
                .1
        )
    });
    assert_eq!(rebooting.json["phase"], "rebooting", "{}", rebooting.json);
    eprintln!(
        "system update downloaded and installed in {:.0}s",
        t_update.elapsed().as_secs_f64()
    );
    let t_off = Instant::now();
    while vm.qemu.running() && t_off.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !vm.qemu.running(),
        "the VM rebooted (QEMU runs with -no-reboot)"
    );
    let t_boot_b = Instant::now();
    vm = Vm::boot(&dir, &disk, ssh_port, &key);
    let done = phase("done", Duration::from_secs(600)).unwrap_or_else(|| {
        panic!(
            "no outcome of the system update after the reboot:\n{}",
            vm.serial()
        )
    });
    assert_eq!(done.json["phase"], "done", "{}", done.json);
    assert_eq!(done.json["slot"], "B", "{}", done.json);
    eprintln!(
        "slot B confirmed {:.0}s after its boot ({:.0}s for the whole update)",
        t_boot_b.elapsed().as_secs_f64(),
        t_update.elapsed().as_secs_f64()
    );
    vm.wait_ssh(Duration::from_secs(60));
    let (_, cmdline) = vm.ssh("cat /proc/cmdline");
    assert!(cmdline.contains("rauc.slot=B"), "{cmdline}");
    confirmed(&vm, "B", "rootfs.1");
    // B runs the new release: the binary, its package and the image say it, and so does Vigil's
    // status once it is online on B.
    let (_, said) = vm.ssh(
        "vigil --version; dpkg-query -W -f='${Version}\\n' vigil; cat /etc/vigil-image-version",
    );
    assert_eq!(
        said.trim(),
        format!("vigil {NEXT}\n{NEXT}\n{NEXT}"),
        "the version on slot B"
    );
    let online = sub.wait(Duration::from_secs(120), |m| {
        m.topic == "vigil/imgtest/status"
            && m.json["state"] == "online"
            && m.json["version"] == NEXT
    });
    assert!(online.is_some(), "Vigil on B says it runs {NEXT}");
    eprintln!(
        "slot B runs release {NEXT} (slot A had {})",
        env!("CARGO_PKG_VERSION")
    );
    // No event lost across the update: B's events continue A's sequence, and every number from
    // the first event to the last one received is there.
    let after = sub.wait(Duration::from_secs(300), |m| {
        m.topic.starts_with("vigil/imgtest/events/")
            && m.json["seq"].as_u64().is_some_and(|q| q > seq_before)
    });
    assert!(
        after.is_some(),
        "no event from slot B after seq {seq_before}:\n{}",
        vm.ssh("journalctl -b -u vigil --no-pager | tail -n 40").1
    );
    let seqs = event_seqs(&sub);
    let (first, last) = (seqs[0], *seqs.last().unwrap());
    let missing: Vec<u64> = (first..=last)
        .filter(|q| seqs.binary_search(q).is_err())
        .collect();
    assert_eq!(first, 1, "the first event's seq");
    assert!(
        missing.is_empty(),
        "events missing across the update: {missing:?} (of 1..={last})"
    );
    eprintln!("events 1..={last} all received, {seq_before} of them before the update");

    // Faults of an updated slot, from B (good). The state an install leaves is made by hand on
    // slot A — written onto A's partition rather than by `rauc install` of a broken bundle
    // (each install takes ~3 min under TCG): A made primary by RAUC (`mark-active`), and
    // /data/system-update/pending naming it, as the installer writes them. What is tested is
    // what follows: the probation, GRUB's boot counter, the report on system/status.
    // 1. A whose Vigil never becomes healthy: its probation (shortened to 60 s on A) marks A
    //    bad and reboots; GRUB boots B; Vigil on B reports the failed update and why.
    vm = fault(
        vm,
        &dir,
        &disk,
        &key,
        "v=$(command -v vigil); printf '#!/bin/sh\\necho a broken build, made by the image test >&2\\nexit 1\\n' > /mnt$v; \
         mkdir -p /mnt/etc/systemd/system/vigil-slot-commit.service.d; \
         printf '[Service]\\nEnvironment=VIGIL_SLOT_DEADLINE_S=60\\n' > /mnt/etc/systemd/system/vigil-slot-commit.service.d/test.conf",
        2,
    );
    back_on_b(&sub, &vm, "not healthy within 60s");
    // 2. A that does not boot (its init exits: the kernel panics, and panic=10 reboots): GRUB's
    //    counter passes A over at the next boot; B reports that A did not come up.
    vm = fault(
        vm,
        &dir,
        &disk,
        &key,
        "rm -f /mnt/sbin/init; printf '#!/bin/sh\\nexit 1\\n' > /mnt/sbin/init; chmod 755 /mnt/sbin/init",
        2,
    );
    back_on_b(&sub, &vm, "did not come up");

    // A bad config provisioned later is refused, its errors on the FAT partition; the live
    // config stays.
    let (code, out) = vm.ssh(
        "printf '[device]\\nid = \"bad id\"\\n' > /boot/efi/vigil/vigil.toml && systemctl restart vigil-provision; \
         cat /boot/efi/vigil/ERRORS.txt; grep -c imgtest /var/lib/vigil/vigil.toml",
    );
    eprintln!("bad provisioning: {out}");
    assert_eq!(
        code, 0,
        "the live config is still the provisioned one: {out}"
    );
    assert!(out.contains("device.id"), "{out}");
    let _ = vm.ssh("systemctl poweroff");
    let t_off = Instant::now();
    while vm.qemu.running() && t_off.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!vm.qemu.running(), "the VM powered off");
    let errors = esp_get(&disk, "vigil/ERRORS.txt").unwrap_or_default();
    assert!(
        errors.contains("device.id"),
        "ERRORS.txt on the FAT partition: {errors}"
    );
}

/// Power cuts during a whole-system install: QEMU killed (SIGKILL: the guest's unwritten data
/// is lost, what it flushed stays on the disk file) at `VIGIL_POWER_CUTS` (default 10) points of
/// `rauc install` of the image's own bundle, spread over the install and jittered; after each,
/// the box must boot a whole slot that RAUC confirms good (the old one, or the new one where the
/// install had finished), with a working Vigil binary. Last, one install runs to its end and the
/// box boots the slot it wrote after all those cut installs.
#[test]
#[ignore = "about 30 minutes under TCG (a boot per cut), longer than CI's whole budget for the \
            suite allows: run by `cargo xtask image-power-cuts`, its result recorded in the note"]
fn power_cuts_during_an_install_always_leave_a_whole_good_slot() {
    let points: usize = std::env::var("VIGIL_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let dir = temp_dir("image-cuts");
    let built = image("image-cuts");
    let _cpu = exclusive();
    let disk = dir.join("disk.img");
    copy_sparse(&built.image, &disk);
    let bundle = dir.join(built.bundle.file_name().unwrap());
    copy_sparse(&built.bundle, &bundle);
    drop(built);
    let key = dir.join("id_ed25519");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    esp_put(&disk, &key.with_extension("pub"), "vigil/authorized_keys");
    let ssh_port = free_port();
    let mut vm = Vm::boot(&dir, &disk, ssh_port, &key);
    vm.wait_ssh(Duration::from_secs(300));
    // The bundle onto the data partition once (it survives the cuts).
    let t = Instant::now();
    let ok = Command::new("scp")
        .arg("-i")
        .arg(&key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "LogLevel=ERROR", "-P", &ssh_port.to_string()])
        .arg(&bundle)
        .arg("root@127.0.0.1:/data/update.raucb")
        .status()
        .expect("scp (Debian package openssh-client)");
    assert!(ok.success(), "scp of the bundle");
    // On the disk before the first cut (a cut seconds after the copy once left its end zeros,
    // and every install then failed at once: "Signature size is 0").
    let (code, out) = vm.ssh("sync && rauc info /data/update.raucb > /dev/null && echo ok");
    assert_eq!(code, 0, "the copied bundle: {out}");
    eprintln!(
        "bundle copied into the VM in {:.0}s",
        t.elapsed().as_secs_f64()
    );
    let install = "setsid nohup rauc install /data/update.raucb > /data/install.log 2>&1 < /dev/null & sleep 1; echo started";
    // An install takes ~160-180 s here: cut points spread from 3 s to 180 s, jittered.
    let mut rows = Vec::new();
    for i in 0..points {
        let span = 177.0 / points.max(1) as f64;
        let cut = 3.0 + span * i as f64 + fastrand::f64() * span;
        let (code, out) = vm.ssh(install);
        assert_eq!(code, 0, "{out}");
        std::thread::sleep(Duration::from_secs_f64(cut));
        // RAUC's last progress line (`NN% step`) before the cut.
        let progress = vm
            .ssh("grep '%' /data/install.log | tail -n 1")
            .1
            .trim()
            .to_string();
        assert!(
            !progress.contains("failed"),
            "the install was under way at the cut: {progress}\n{}",
            vm.ssh("cat /data/install.log").1
        );
        vm.qemu.kill9();
        let ssh_port = vm.ssh_port;
        drop(vm);
        vm = Vm::boot(&dir, &disk, ssh_port, &key);
        vm.wait_ssh(Duration::from_secs(300));
        let slot = vm
            .ssh("sed -n 's/.*rauc\\.slot=\\([A-Z]\\).*/\\1/p' /proc/cmdline")
            .1
            .trim()
            .to_string();
        let name = if slot == "A" { "rootfs.0" } else { "rootfs.1" };
        confirmed(&vm, &slot, name);
        let (code, version) = vm.ssh("vigil --version");
        assert_eq!(code, 0, "Vigil runs on slot {slot}: {version}");
        eprintln!(
            "cut {}: {cut:.0}s into the install (RAUC's last line: {progress:?}): booted slot {slot}, good, {}",
            i + 1,
            version.trim()
        );
        rows.push((cut, progress, slot));
    }
    // One install to its end: the box boots the slot it wrote.
    let booted = rows
        .last()
        .map(|r| r.2.clone())
        .unwrap_or_else(|| "A".into());
    let (code, out) = vm.ssh(
        "rauc install /data/update.raucb > /data/install.log 2>&1; rc=$?; tail -n 2 /data/install.log; exit $rc",
    );
    assert_eq!(code, 0, "the last install: {out}");
    let _ = vm.ssh("systemctl reboot");
    let t = Instant::now();
    while vm.qemu.running() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(500));
    }
    let ssh_port = vm.ssh_port;
    drop(vm);
    let vm = Vm::boot(&dir, &disk, ssh_port, &key);
    vm.wait_ssh(Duration::from_secs(300));
    let (target, name) = if booted == "A" {
        ("B", "rootfs.1")
    } else {
        ("A", "rootfs.0")
    };
    confirmed(&vm, target, name);
    let (code, version) = vm.ssh("vigil --version");
    assert_eq!(code, 0, "{version}");
    eprintln!(
        "after {} cuts: the last install ran to its end and slot {target} boots, good ({})",
        rows.len(),
        version.trim()
    );
    let _ = vm.ssh("systemctl poweroff");
}
