//! The command line: `check-config` exit codes and messages, `run` refusing a bad file, `ota
//! keygen | pack | verify`, the report of a fatal signal.

use crate::common;

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

/// `vigil ota keygen`, `pack` and `verify`: a bundle verifies with its key and with a device
/// config that trusts it and fits its target; another key, another device class and a flipped
/// byte are refused with exit status 1 and the reason.
#[test]
fn ota_keygen_pack_and_verify() {
    use crate::common::ota::*;
    let dir = common::temp_dir("cli-ota");
    let (key, public) = keygen(&dir, "k");
    let (_, other) = keygen(&dir, "other");
    assert_eq!(
        std::fs::read_to_string(dir.join("k.pub")).unwrap().trim(),
        public
    );
    let again = Command::new(common::vigil_bin())
        .args(["ota", "keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "an existing key is never overwritten"
    );
    let src = bundle_dir(
        &dir.join("src"),
        &[("models/m.onnx", b"weights"), ("config.toml", b"")],
    );
    let bundle = dir.join("b.vigil");
    pack(&key, 3, &src, &bundle, &["--device-class", "lobby"]);
    let cfg = |class: &str, key: &str| {
        let p = dir.join(format!("{class}.toml"));
        std::fs::write(
            &p,
            format!(
                "[device]\nid = \"x\"\n[storage]\ndir = \"{}\"\n[ota]\ntrusted_keys = [\"{key}\"]\ndevice_class = \"{class}\"\n",
                dir.join("state").display()
            ),
        )
        .unwrap();
        p
    };
    let verify = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(common::vigil_bin())
            .args(["ota", "verify"])
            .arg(&bundle)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let pubfile = dir.join("k.pub");
    let (code, out) = verify(&["--key".as_ref(), pubfile.as_os_str()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("\"sequence\": 3") && out.contains(": ok (signed by trusted key 0"),
        "{out}"
    );
    let good = cfg("lobby", &public);
    let (code, out) = verify(&["--config".as_ref(), good.as_os_str()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("fits this device"), "{out}");
    let (code, out) = verify(&["--key".as_ref(), other.as_ref()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused: signature: manifest.sig does not verify"),
        "{out}"
    );
    let wrong = cfg("garage", &public);
    let (code, out) = verify(&["--config".as_ref(), wrong.as_os_str()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "refused: target: device_class: the bundle is for \"lobby\", this device is \"garage\""
        ),
        "{out}"
    );
    let mut bytes = std::fs::read(&bundle).unwrap();
    let at = bytes.windows(7).position(|w| w == b"weights").unwrap();
    bytes[at] ^= 1;
    std::fs::write(&bundle, bytes).unwrap();
    let (code, out) = verify(&["--key".as_ref(), pubfile.as_os_str()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("refused: digest: files/models/m.onnx: sha256"),
        "{out}"
    );
}

/// `vigil engines`: on a box without TensorRT (every machine here) `list` says why and shows
/// the (empty) cache in the config's state directory; `build` fails saying why; `prune` runs.
#[test]
fn engines_list_build_and_prune_say_what_is_here() {
    let dir = common::temp_dir("engines-cli");
    let cfg = dir.join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[device]\nid = \"e\"\n[storage]\ndir = \"{}\"\n[models.m]\npath = \"{}\"\nkind = \"nanodet\"\n",
            dir.join("state").display(),
            common::model().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(common::vigil_bin())
            .arg("engines")
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if vigil_dataplane::facts::tensorrt().is_err() {
        assert!(text.contains("TensorRT: not available here: "), "{text}");
        let b = run(&["build"]);
        assert!(!b.status.success());
        assert!(
            String::from_utf8_lossy(&b.stderr).contains("TensorRT is not available here"),
            "{}",
            String::from_utf8_lossy(&b.stderr)
        );
    }
    assert!(
        text.contains(&format!(
            "engine cache {}",
            dir.join("state/engines").display()
        )) && text.contains("0 engine(s)"),
        "{text}"
    );
    let p = run(&["prune"]);
    assert!(p.status.success());
    assert!(String::from_utf8_lossy(&p.stdout).contains("removed 0 engine(s)"));
}

/// A fatal signal leaves a report on the standard error (the signal, the thread, a backtrace
/// whose frames name their module), then the process dies of that signal as it would have
/// (exit status, core). `rtsp-serve` has GStreamer initialised and its plugins loaded: the
/// report's handler must still be the one in place.
#[test]
fn a_fatal_signal_leaves_a_backtrace_then_kills_as_before() {
    use std::os::unix::process::ExitStatusExt;
    for (name, number) in [("SEGV", 11), ("ABRT", 6)] {
        let port = common::free_port();
        // Through sh for `ulimit -c 0` (its death leaves no core file); exec keeps the pid.
        let mut server = Command::new("sh")
            .args(["-c", "ulimit -c 0 && exec \"$0\" \"$@\""])
            .arg(common::vigil_bin())
            .args(["rtsp-serve", "--port", &port.to_string(), "--file"])
            .arg(common::asset(".cache/media/vtest-30s.mp4"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                let _ = server.kill();
                panic!("rtsp-serve did not listen on {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let kill = Command::new("kill")
            .args([&format!("-{name}"), &server.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = server.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(number), "{name}: {err}");
        assert!(
            err.contains(&format!("vigil: fatal SIG{name} (sent by process ")),
            "{name}: {err}"
        );
        assert!(err.contains(") in thread \""), "{name}: {err}");
        // Frames naming their module: the binary's (the handler at least) and libc's (the
        // signal frame is there, whichever thread took the signal).
        assert!(err.contains("vigil(+0x"), "{name}: {err}");
        assert!(err.contains("libc.so.6("), "{name}: {err}");
        assert!(err.contains("vigil: end of the report"), "{name}: {err}");
    }
}
