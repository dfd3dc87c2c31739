//! The systemd unit: the settings the service relies on are there, and its hardening exposure
//! (`systemd-analyze security --offline=true`) is at most 2.0.

use std::path::Path;
use std::process::Command;

fn unit() -> (std::path::PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/vigil.service");
    let text = std::fs::read_to_string(&p).unwrap();
    (p, text)
}

#[test]
fn unit_declares_notify_watchdog_restart_state_and_a_dedicated_user() {
    let (_, text) = unit();
    for line in [
        "Type=notify",
        "WatchdogSec=10s",
        "Restart=on-failure",
        "StateDirectory=vigil",
        "User=vigil",
        "NoNewPrivileges=yes",
        "DeviceAllow=/dev/nvidiactl rw",
        "LimitNOFILE=16384",
    ] {
        assert!(text.lines().any(|l| l.trim() == line), "missing {line}");
    }
}

#[test]
fn hardening_exposure_is_at_most_2() {
    let (path, _) = unit();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for vigil.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(level <= 2.0, "exposure {level}:\n{text}");
}
