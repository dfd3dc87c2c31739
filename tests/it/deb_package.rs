//! The Debian package (`cargo xtask deb`, xtask/src/deb.rs) as a user meets it: `apt install
//! ./vigil_*.deb` in a Debian 12 container booted with systemd (`systemd-nspawn --boot` on
//! `.cache/deb-rootfs`, which `cargo xtask setup` makes with Debian's GStreamer packages and
//! nothing of Vigil; the tree is mounted read-only under a throwaway overlay, so every run starts
//! clean). Unlike the watchdog test, nothing of the host's /usr is bound in: Vigil runs on the
//! package's own binary, ONNX Runtime and model, and on the libraries its `Depends` brought.
//!
//! Checked: apt resolves the package's dependencies (offline: no package sources, so a dependency the
//! package forgot to declare, or one that names no Debian package, fails the install), the
//! `vigil` system user exists, the unit is enabled and not started by the install, the factory
//! config passes `vigil check-config`; started with a config naming the host's broker and an RTSP
//! camera, Vigil runs as `vigil` and publishes events; `systemd-analyze security` rates the unit
//! ≤ 2.0; it listens on loopback only; `apt purge` stops it and removes the binary and the state.

use crate::common::*;
use std::process::Command;
use std::time::Duration;

/// The probe run inside the container (a oneshot unit started at boot). It waits for the host's
/// `go-on` file (written once the host has seen events) before looking and purging.
const PROBE: &str = r#"#!/bin/sh
o=/srv/out
apt-get install -y -o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=/nonexistent /srv/deb/vigil.deb > $o/install.log 2>&1; echo $? > $o/install.rc
id vigil > $o/id 2>&1
systemctl is-enabled vigil > $o/enabled 2>&1
systemctl is-active vigil > $o/active-after-install 2>&1
vigil check-config /etc/vigil/vigil.toml > $o/factory-check 2>&1; echo $? >> $o/factory-check
cp /srv/cfg/vigil.toml /etc/vigil/vigil.toml
systemctl start vigil; echo $? > $o/start.rc
i=0; while [ ! -e $o/go-on ] && [ $i -lt 120 ]; do sleep 1; i=$((i+1)); done
pid=$(systemctl show -p MainPID --value vigil)
echo "$pid" > $o/pid
grep '^Uid:' /proc/$pid/status > $o/uid 2>&1
ss -ltnp > $o/listen 2>&1
systemd-analyze security vigil.service --no-pager > $o/security 2>&1
journalctl -b -u vigil --no-pager > $o/journal 2>&1
apt-get purge -y vigil > $o/purge.log 2>&1; echo $? > $o/purge.rc
systemctl is-active vigil > $o/active-after-purge 2>&1
for f in /usr/bin/vigil /usr/lib/vigil /var/lib/private/vigil /var/lib/vigil; do test -e $f && echo $f; done > $o/left-after-purge
systemctl poweroff
"#;

#[test]
fn the_debian_package_installs_runs_under_systemd_and_purges() {
    let _cpu = exclusive();
    let rootfs = asset(".cache/deb-rootfs");
    let repo = repo();
    let dir = temp_dir("deb");
    let xtask = repo.join("target/debug/xtask");
    assert!(
        xtask.exists(),
        "{} is missing: run the tests with `cargo xtask test`",
        xtask.display()
    );

    // The package, from this build's binary.
    let debs = dir.join("debs");
    let out = Command::new(&xtask)
        // A version other than the build's: the package stamps it into the binary it packs.
        .args([
            "deb",
            "--vigil",
            vigil_bin(),
            "--version",
            "0.1.0+pkg1",
            "--out",
        ])
        .arg(&debs)
        .output()
        .expect("xtask deb");
    assert!(
        out.status.success(),
        "cargo xtask deb failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert!(deb.ends_with("_0.1.0+pkg1_amd64.deb"), "{deb}");
    // The packed binary says the package's version (the build's own says the workspace's).
    let x = dir.join("extracted");
    let ok = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(&x)
        .status()
        .unwrap();
    assert!(ok.success());
    let said = |bin: &std::path::Path| {
        let o = Command::new(bin).arg("--version").output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(said(&x.join("usr/bin/vigil")), "vigil 0.1.0+pkg1");
    assert_eq!(
        said(std::path::Path::new(vigil_bin())),
        format!("vigil {}", env!("CARGO_PKG_VERSION"))
    );
    let deb_dir = dir.join("deb");
    std::fs::create_dir_all(&deb_dir).unwrap();
    std::fs::copy(&deb, deb_dir.join("vigil.deb")).unwrap();
    let info = Command::new("dpkg-deb")
        .args(["--field", &deb, "Depends"])
        .output()
        .unwrap();
    let depends = String::from_utf8_lossy(&info.stdout).to_string();
    eprintln!("Depends: {depends}");
    assert!(
        depends.contains("libgstreamer1.0-0") && depends.contains("gstreamer1.0-libav"),
        "{depends}"
    );

    let (mqtt, rtsp, http) = (free_port(), free_port(), free_port());
    let _broker = mosquitto(&dir, mqtt);
    let _server = rtsp_server(&asset(".cache/media/vtest.mp4"), rtsp, "/plaza");
    let sub = Subscriber::start(mqtt, &["vigil/debtest/#"]);

    // The user's config: the packaged models (the CPU runs the int8 one, as the package's
    // default config says), the service's own state directory.
    let url = format!("rtsp://127.0.0.1:{rtsp}/plaza");
    let cfg = config_toml("debtest", mqtt, &url, "fps = 5", PLAZA_ZONE);
    let cfg = strip_storage(&cfg)
        .replace(
            &format!("path = \"{}\"", model().display()),
            "path = \"/usr/share/vigil/models/nanodet.onnx\"\n\
             cpu_path = \"/usr/share/vigil/models/nanodet-int8.onnx\"",
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{http}\""),
        );
    let cfg_dir = dir.join("cfg");
    let out = dir.join("out");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(cfg_dir.join("vigil.toml"), &cfg).unwrap();
    std::fs::write(dir.join("probe.sh"), PROBE).unwrap();
    std::fs::write(
        dir.join("vigil-probe.service"),
        "[Unit]\nDescription=package test probe\nAfter=multi-user.target\n\
         [Service]\nType=oneshot\nExecStart=/bin/sh /srv/probe.sh\n",
    )
    .unwrap();

    let mut container = Command::new("timeout")
        .arg("240")
        .arg("systemd-nspawn")
        .args([
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--volatile=overlay",
            "-D",
        ])
        .arg(&rootfs)
        .arg(format!("--bind-ro={}:/srv/deb", deb_dir.display()))
        .arg(format!("--bind-ro={}:/srv/cfg", cfg_dir.display()))
        .arg(format!(
            "--bind-ro={}:/srv/probe.sh",
            dir.join("probe.sh").display()
        ))
        .arg(format!(
            "--bind-ro={}:/etc/systemd/system/vigil-probe.service",
            dir.join("vigil-probe.service").display()
        ))
        .arg(format!("--bind={}:/srv/out", out.display()))
        .args(["--boot", "systemd.wants=vigil-probe.service"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("systemd-nspawn (Debian package systemd-container)");

    // Events from the installed package.
    let event = sub.wait(Duration::from_secs(150), |m| {
        m.topic.starts_with("vigil/debtest/events/")
    });
    std::fs::write(out.join("go-on"), "").unwrap();
    let status = container.wait().unwrap();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    let journal = read("journal");
    assert!(
        status.success(),
        "the container booted and powered off: {status}"
    );
    assert_eq!(
        read("install.rc").trim(),
        "0",
        "apt install ./vigil.deb:\n{}",
        read("install.log")
    );
    assert!(
        read("id").contains("(vigil)"),
        "the vigil user: {}",
        read("id")
    );
    assert_eq!(read("enabled").trim(), "enabled");
    assert_eq!(
        read("active-after-install").trim(),
        "inactive",
        "the install does not start the service"
    );
    assert!(
        read("factory-check").trim().ends_with("\n0"),
        "the factory config is valid: {}",
        read("factory-check")
    );
    assert_eq!(read("start.rc").trim(), "0", "journal:\n{journal}");
    let event = event.unwrap_or_else(|| panic!("no event from the installed package:\n{journal}"));
    eprintln!("event from the package: {}", event.topic);

    // It ran as the package's user, under the unit's hardening, on loopback only.
    let uid = read("uid");
    let vigil_uid = read("id")
        .split_whitespace()
        .next()
        .and_then(|s| s.strip_prefix("uid="))
        .and_then(|s| s.split('(').next())
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        !vigil_uid.is_empty() && uid.split_whitespace().nth(1) == Some(vigil_uid.as_str()),
        "the service runs as vigil ({vigil_uid}): {uid}"
    );
    let security = read("security");
    let exposure = exposure(&security);
    eprintln!("systemd-analyze security: {exposure}");
    assert!(exposure <= 2.0, "{security}");
    let listen = read("listen");
    let ours: Vec<&str> = listen.lines().filter(|l| l.contains("\"vigil\"")).collect();
    assert!(!ours.is_empty(), "the HTTP API listens: {listen}");
    for l in &ours {
        assert!(
            l.contains(&format!("127.0.0.1:{http}")),
            "Vigil listens only on what the config enables: {l}"
        );
    }

    // Purge: stopped, files and state gone.
    assert_eq!(read("purge.rc").trim(), "0", "{}", read("purge.log"));
    assert_ne!(read("active-after-purge").trim(), "active");
    assert_eq!(read("left-after-purge").trim(), "", "left after purge");
}

/// The config without its `[storage]` table: the unit's state directory is the default.
fn strip_storage(cfg: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for line in cfg.lines() {
        if line.starts_with('[') {
            skip = line == "[storage]";
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The overall exposure of `systemd-analyze security UNIT` ("→ Overall exposure level for
/// vigil.service: 1.9 OK").
fn exposure(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
}
