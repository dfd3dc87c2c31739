//! The command line: `check-config` exit codes and messages, `run` refusing a bad file.

mod common;

use std::process::Command;
use std::time::Duration;

#[test]
fn check_config_accepts_the_demo_config() {
    let out = Command::new(common::vigil_bin())
        .arg("check-config")
        .arg(common::repo().join("configs/demo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (device demo, 1 camera(s), 1 model(s))")
    );
}

#[test]
fn check_config_exits_2_with_located_errors() {
    let file = common::repo().join("tests/data/bad-configs/14-self-intersecting-polygon.toml");
    let out = Command::new(common::vigil_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let first = std::fs::read_to_string(&file).unwrap();
    let expect = first
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("# expect: ");
    let (loc, _) = expect.split_once(": ").unwrap();
    assert!(
        err.contains(&format!("{}:{loc}: ", file.display())),
        "stderr: {err}\nexpected location {loc}"
    );
    assert!(err.contains("cross"), "{err}");
}

#[test]
fn run_on_a_bad_config_exits_2_and_starts_nothing() {
    let dir = common::temp_dir("bad-run");
    let port = common::free_port();
    let _broker = common::mosquitto(&dir, port);
    let sub = common::Subscriber::start(port, &["#"]);
    let cfg = dir.join("bad.toml");
    let mut text = common::config_toml("bad", port, "rtsp://127.0.0.1:9/x", "fps = 0", "");
    text.push_str("[[cameras.lines]]\nname = \"l\"\nfrom = [0.1, 0.1]\nto = [0.1, 0.1]\n");
    std::fs::write(&cfg, text).unwrap();
    let t0 = std::time::Instant::now();
    let out = Command::new(common::vigil_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(t0.elapsed() < Duration::from_secs(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cameras[0].fps"), "{err}");
    assert!(err.contains("cameras[0].lines[0]"), "{err}");
    assert!(err.contains("not started"), "{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sub.messages().is_empty(),
        "a rejected config published: {:?}",
        sub.messages()
    );
}
