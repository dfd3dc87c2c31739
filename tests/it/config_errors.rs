//! Config errors point at the right file, line, column and field.
//!
//! Every file in `tests/data/bad-configs/` holds exactly one mistake and starts with
//! `# expect: LINE:COL: field.path: <substring of the message>`.

use std::path::{Path, PathBuf};
use std::time::Duration;
use vigil_core::config::{
    Anchor, BackendKind, CameraConfig, Config, ConfigError, DeviceConfig, Dur, HttpConfig,
    LineConfig, LineDirection, ModelConfig, ModelKind, MqttConfig, OnEnd, ReconnectConfig,
    RtspTransport, StorageConfig, ZoneConfig, ZoneEventKind, load, parse,
};
use vigil_dataplane::facts::ThisBox;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// What a corpus file's first line says its error is.
#[derive(Debug)]
struct Expect {
    line: usize,
    col: usize,
    path: String,
    substring: String,
}

fn parse_expect(first_line: &str) -> Option<Expect> {
    let rest = first_line.strip_prefix("# expect: ")?;
    let (line, rest) = rest.split_once(':')?;
    let (col, rest) = rest.split_once(": ")?;
    let (path, substring) = rest.split_once(": ")?;
    Some(Expect {
        line: line.parse().ok()?,
        col: col.parse().ok()?,
        path: path.to_owned(),
        substring: substring.to_owned(),
    })
}

fn matches(e: &ConfigError, x: &Expect) -> bool {
    e.line == x.line && e.col == x.col && e.path == x.path && e.message.contains(&x.substring)
}

/// Checks one corpus file; `Err` says what went wrong.
fn check_bad_config(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let first = text.lines().next().unwrap_or("");
    let expect = parse_expect(first).ok_or_else(|| format!("bad expect line {first:?}"))?;
    let errors = match parse(&text, file, &ThisBox) {
        Ok(_) => return Err("parsed without errors".into()),
        Err(errors) => errors,
    };
    if errors.errors().len() != 1 {
        return Err(format!("expected exactly one error, got:\n{errors}"));
    }
    if errors.errors().iter().any(|e| matches(e, &expect)) {
        Ok(())
    } else {
        Err(format!("expected {expect:?}, got:\n{errors}"))
    }
}

#[test]
fn bad_config_corpus() {
    let dir = data_dir().join("bad-configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data/bad-configs exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 22, "only {} corpus files", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            check_bad_config(f)
                .err()
                .map(|why| format!("{}: {why}", f.display()))
        })
        .collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

const SEVERAL_MISTAKES: &str = r#"[device]
id = "box 1"

[mqtt]
port = 0

[models.nanodet]
path = "m.onnx"
kind = "nanodet"
input_size = 100

[[cameras]]
name = "front"
url = "http://cam/x"
model = "nanodet"
fps = 500

[[cameras.zones]]
name = "door"
polygon = [[0.1, 0.1], [0.5, 1.5], [0.5, 0.5]]
classes = ["persn"]
"#;

#[test]
fn several_mistakes_are_all_reported_in_file_order() {
    let errors =
        parse(SEVERAL_MISTAKES, Path::new("multi.toml"), &ThisBox).expect_err("has mistakes");
    let got: Vec<(usize, usize, &str)> = errors
        .errors()
        .iter()
        .map(|e| (e.line, e.col, e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (2, 6, "device.id"),
            (5, 8, "mqtt.port"),
            (10, 14, "models.nanodet.input_size"),
            (14, 7, "cameras[0].url"),
            (16, 7, "cameras[0].fps"),
            (20, 24, "cameras[0].zones[0].polygon[1]"),
            (21, 12, "cameras[0].zones[0].classes[0]"),
        ],
        "\n{errors}"
    );
    let text = errors.to_string();
    assert_eq!(text.lines().count(), 7);
    assert!(
        text.starts_with("multi.toml:2:6: device.id: device id \"box 1\" contains ' ' (expected"),
        "{text}"
    );
}

#[test]
fn error_lines_have_the_documented_format() {
    let text = "[device]\nid = \"a\"\n[[cameras]]\nname = \"c\"\nurl = \"rtsp://h/p\"\n\
                model = \"m\"\n[models.m]\npath = \"m.onnx\"\nkind = \"nanodet\"\n\
                [[cameras.zones]]\nname = \"z\"\n\
                polygon = [[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]]\n";
    let errors = parse(text, Path::new("configs/bad.toml"), &ThisBox).expect_err("bow tie");
    assert_eq!(
        errors.to_string(),
        "configs/bad.toml:12:11: cameras[0].zones[0].polygon: polygon edges 0 and 2 cross \
         (expected a simple polygon, vertices in order)"
    );
    let e = &errors.errors()[0];
    assert_eq!(e.to_string(), errors.to_string());
    let _: &dyn std::error::Error = &errors;
}

#[test]
fn zero_cameras_is_valid_and_defaults_apply() {
    let config = parse("[device]\nid = \"box\"\n", Path::new("min.toml"), &ThisBox).expect("valid");
    assert!(config.cameras.is_empty() && config.models.is_empty());
    assert_eq!(config.mqtt, MqttConfig::default());
    assert_eq!(config.mqtt.port, 1883);
    assert_eq!(config.mqtt.keep_alive, Dur::secs(30));
}

fn expected_good_config() -> Config {
    let models = [
        (
            "nanodet".to_owned(),
            ModelConfig {
                path: "models/nanodet-plus-m_416.onnx".into(),
                kind: ModelKind::Nanodet,
                backend: BackendKind::Auto,
                threads: 4,
                input_size: vigil_core::config::InputSize::Pixels(416),
                tiles: None,
                calibration_table: None,
                cpu_path: None,
            },
        ),
        (
            "small".to_owned(),
            ModelConfig {
                path: "/opt/vigil/models/nanodet-320.onnx".into(),
                kind: ModelKind::Nanodet,
                backend: BackendKind::Cpu,
                threads: 0,
                input_size: vigil_core::config::InputSize::Pixels(320),
                tiles: None,
                calibration_table: None,
                cpu_path: None,
            },
        ),
    ];
    Config {
        device: DeviceConfig {
            id: "lobby-box_01".into(),
            site: Some("lobby".into()),
            tags: vec!["entrance".into(), "floor-1".into()],
        },
        mqtt: MqttConfig {
            host: "broker.example.net".into(),
            port: 8883,
            client_id: Some("vigil-lobby".into()),
            username: Some("vigil".into()),
            password: Some("s3cret".into()),
            topic_prefix: "site/a".into(),
            keep_alive: Dur::secs(45),
            telemetry_interval: Dur::secs(60),
            ..MqttConfig::default()
        },
        storage: StorageConfig {
            dir: Some("/var/lib/vigil-lobby".into()),
            max_events: 50_000,
            max_age: Dur::secs(3 * 24 * 3600),
            max_bytes: 32 << 20,
            engine_cache_bytes: 1 << 30,
        },
        http: HttpConfig {
            listen: "0.0.0.0:8080".into(),
            ..HttpConfig::default()
        },
        snapshots: Default::default(),
        live: Default::default(),
        restream: Default::default(),
        homeassistant: Default::default(),
        models: models.into_iter().collect(),
        cameras: vec![lobby_camera(), replay_camera()],
        ota: Default::default(),
    }
}

fn lobby_camera() -> CameraConfig {
    CameraConfig {
        name: "lobby".into(),
        url: "rtsp://viewer:pa55@10.0.0.21:554/stream1".into(),
        view_url: None,
        enabled: true,
        fps: 8.0,
        model: "nanodet".into(),
        min_score: 0.4,
        stall_timeout: Dur::secs(15),
        rtsp_latency: Dur::millis(300),
        rtsp_transport: RtspTransport::Tcp,
        reconnect: ReconnectConfig {
            initial_backoff: Dur::millis(500),
            max_backoff: Dur::secs(60),
            circuit_after: 5,
            circuit_open: Dur::secs(300),
        },
        on_end: OnEnd::Restart,
        zones: vec![ZoneConfig {
            name: "entrance".into(),
            polygon: vec![[0.1, 0.5], [0.6, 0.5], [0.6, 1.0], [0.1, 1.0]],
            classes: vec!["person".into(), "dog".into()],
            min_score: Some(0.5),
            events: vec![
                ZoneEventKind::Enter,
                ZoneEventKind::Leave,
                ZoneEventKind::Dwell,
            ],
            dwell: Some(Dur(Duration::from_secs(90))),
            cooldown: Dur::secs(10),
            anchor: Anchor::Center,
            inertia: 3,
            leave_margin: 0.5,
        }],
        lines: vec![LineConfig {
            name: "door-line".into(),
            from: [0.7, 0.2],
            to: [0.7, 0.9],
            direction: LineDirection::In,
            classes: vec!["person".into()],
            min_score: Some(0.45),
            cooldown: Dur::secs(2),
            anchor: Anchor::Bottom,
            confirm: 1,
        }],
        restream: None,
        live: Default::default(),
        motion: Default::default(),
    }
}

/// Only the required fields set: everything else is a default.
fn replay_camera() -> CameraConfig {
    CameraConfig {
        name: "replay".into(),
        url: "file:///var/lib/vigil/replay/lobby.mp4".into(),
        view_url: None,
        enabled: false,
        fps: 5.0,
        model: "small".into(),
        min_score: 0.35,
        stall_timeout: Dur::secs(10),
        rtsp_latency: Dur::millis(200),
        rtsp_transport: RtspTransport::Auto,
        reconnect: ReconnectConfig {
            initial_backoff: Dur::secs(1),
            max_backoff: Dur::secs(30),
            circuit_after: 8,
            circuit_open: Dur::secs(120),
        },
        on_end: OnEnd::Stop,
        zones: vec![],
        lines: vec![],
        restream: None,
        live: Default::default(),
        motion: Default::default(),
    }
}

#[test]
fn good_config_parses_with_every_field() {
    let file = data_dir().join("good-config.toml");
    let text = std::fs::read_to_string(&file).expect("good config readable");
    let config = parse(&text, &file, &ThisBox).unwrap_or_else(|e| panic!("\n{e}"));
    assert_eq!(config, expected_good_config());
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vigil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("models")).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const LOAD_CONFIG: &str = r#"[device]
id = "box"

[models.m]
path = "models/m.onnx"
kind = "nanodet"

[models.unused]
path = "models/not-there.onnx"
kind = "nanodet"

[[cameras]]
name = "c"
url = "rtsp://cam/x"
model = "m"
"#;

#[test]
fn load_resolves_model_paths_against_the_config_directory() {
    let tmp = TempDir::new("load-config");
    let file = tmp.0.join("vigil.toml");
    std::fs::write(&file, LOAD_CONFIG).expect("write config");

    let errors = load(&file, &ThisBox).expect_err("model file missing");
    let [e] = errors.errors() else {
        panic!("expected one error:\n{errors}")
    };
    assert_eq!((e.line, e.col, e.path.as_str()), (5, 8, "models.m.path"));
    assert!(e.message.contains("not found"), "{e}");

    std::fs::write(tmp.0.join("models/m.onnx"), b"onnx").expect("write model");
    let config = load(&file, &ThisBox).unwrap_or_else(|e| panic!("\n{e}"));
    let path = &config.models["m"].path;
    assert!(path.is_absolute(), "{}", path.display());
    assert_eq!(
        path,
        &std::path::absolute(tmp.0.join("models/m.onnx")).unwrap_or_default()
    );
    // Only models of enabled cameras must exist; every path is made absolute.
    assert!(config.models["unused"].path.is_absolute());
}

#[test]
fn load_reports_an_unreadable_file() {
    let file = Path::new("/nonexistent/vigil/config.toml");
    let errors = load(file, &ThisBox).expect_err("no such file");
    let [e] = errors.errors() else {
        panic!("expected one error:\n{errors}")
    };
    assert_eq!((e.line, e.col, e.path.as_str()), (0, 0, ""));
    assert!(e.message.starts_with("cannot read config file"), "{e}");
}

/// An OTA set's `config.toml` overlay: merged over the device's file (tables merged, values and
/// arrays replaced), its model paths resolved inside the set, and each error located in the file
/// its value came from.
#[test]
fn an_ota_overlay_merges_over_the_file_and_its_errors_point_into_it() {
    let tmp = TempDir::new("overlay");
    let file = tmp.0.join("vigil.toml");
    std::fs::write(&file, LOAD_CONFIG).expect("write config");
    std::fs::write(tmp.0.join("models/m.onnx"), b"onnx").unwrap();
    let slot = tmp.0.join("slots/7-abc");
    std::fs::create_dir_all(slot.join("models")).unwrap();
    std::fs::write(slot.join("models/new.onnx"), b"onnx").unwrap();
    let overlay = slot.join("config.toml");
    std::fs::write(
        &overlay,
        "[models.m]\npath = \"models/new.onnx\"\nthreads = 2\n\n[[cameras]]\nname = \"d\"\nurl = \"rtsp://cam/y\"\nmodel = \"m\"\n",
    )
    .unwrap();
    let c = vigil_core::config::load_overlaid(&file, &overlay, &ThisBox)
        .unwrap_or_else(|e| panic!("\n{e}"));
    assert_eq!(c.models["m"].path, slot.join("models/new.onnx"));
    assert_eq!(
        (c.models["m"].threads, c.models["m"].kind),
        (2, ModelKind::Nanodet)
    );
    assert_eq!(c.cameras.len(), 1, "arrays are replaced");
    assert_eq!(
        (c.cameras[0].name.as_str(), c.device.id.as_str()),
        ("d", "box")
    );

    // A bad value in the overlay is reported at its place in the overlay.
    std::fs::write(&overlay, "# from the bundle\n[models.m]\nthreads = 999\n").unwrap();
    let errors =
        vigil_core::config::load_overlaid(&file, &overlay, &ThisBox).expect_err("threads too many");
    let [e] = errors.errors() else {
        panic!("expected one error:\n{errors}")
    };
    assert_eq!(
        (e.file.as_path(), e.line, e.col, e.path.as_str()),
        (overlay.as_path(), 3, 11, "models.m.threads"),
        "{e}"
    );
    // A missing model file named by the overlay.
    std::fs::write(&overlay, "[models.m]\npath = \"models/missing.onnx\"\n").unwrap();
    let errors =
        vigil_core::config::load_overlaid(&file, &overlay, &ThisBox).expect_err("missing model");
    assert_eq!(errors.errors()[0].file, overlay, "{errors}");
    // One in the device's own file is reported at its place there.
    std::fs::write(
        &file,
        LOAD_CONFIG.replace("model = \"m\"", "model = \"m\"\nfps = 0"),
    )
    .unwrap();
    std::fs::write(&overlay, "[models.m]\nthreads = 2\n").unwrap();
    let errors = vigil_core::config::load_overlaid(&file, &overlay, &ThisBox).expect_err("fps 0");
    let [e] = errors.errors() else {
        panic!("expected one error:\n{errors}")
    };
    assert_eq!(
        (e.file.as_path(), e.line, e.path.as_str()),
        (file.as_path(), 16, "cameras[0].fps"),
        "{e}"
    );
    // Tables that belong to the device are refused.
    std::fs::write(&overlay, "[mqtt]\nhost = \"evil.example\"\n").unwrap();
    let errors =
        vigil_core::config::load_overlaid(&file, &overlay, &ThisBox).expect_err("no [mqtt]");
    let [e] = errors.errors() else {
        panic!("expected one error:\n{errors}")
    };
    assert_eq!(
        (e.file.as_path(), e.line, e.path.as_str()),
        (overlay.as_path(), 1, "mqtt"),
        "{e}"
    );
    assert!(
        e.message.contains("an OTA bundle may not set [mqtt]"),
        "{e}"
    );
}
