//! `vigil gpu-check` on whatever box runs the tests: without an NVIDIA driver (CI, development
//! machines) it must say so and succeed, never crash (cudarc would panic if asked to load a
//! missing driver); with one it checks the fused preprocessing kernel against the CPU reference
//! and fails on any difference above the tolerance.

use crate::common;

use std::process::Command;

#[test]
fn gpu_check_never_crashes_and_reports_what_it_found() {
    let _cpu = common::shared();
    let out = Command::new(common::vigil_bin())
        .arg("gpu-check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let no_gpu = stdout.contains("GPU: unavailable (") && stdout.contains("the CPU path is used");
    let checked = stdout.contains("gpu-check: ok") && stdout.contains("max |gpu - cpu|");
    assert!(no_gpu || checked, "{stdout}");
}

/// The GPU path against the CPU path on the same frames (`vigil gpu-check --model`): a picture
/// and clip frames through both engines, and NVDEC frames in CUDA memory through the GPU path
/// against the CPU-decoded frames through the CPU path. Runs where a GPU exists (the GPU
/// machine); elsewhere it says it was skipped, and why, and checks that it was for want of a GPU.
#[test]
fn gpu_path_detections_match_the_cpu_path() {
    let _cpu = common::shared();
    let Some(stdout) = gpu_check(
        "gpu_path_detections_match_the_cpu_path",
        &[
            "--model".as_ref(),
            common::model().as_os_str(),
            "--picture".as_ref(),
            common::asset(".cache/media/astronaut.png").as_os_str(),
            "--clip".as_ref(),
            common::asset(".cache/media/vtest-30s.mp4").as_os_str(),
        ],
    ) else {
        return;
    };
    assert!(
        stdout.contains("detections: GPU path = CPU path within tolerance"),
        "{stdout}"
    );
    let compared: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("detections matched"))
        .collect();
    assert_eq!(compared.len(), 2, "{stdout}");
    for l in compared {
        assert!(l.ends_with(", 0 unmatched"), "{l}");
        assert!(!l.contains(", 0 detections matched"), "{l}");
    }
}

/// `input_size = "native"` and tiles on the GPU path (tiles of a batch of frames cut from the
/// frames on the GPU and run as batches of their own, boxes merged on the host) give the CPU
/// path's detections: on NVDEC frames in CUDA memory, in batches, and on host frames. Runs
/// where a GPU exists; elsewhere it says it was skipped.
#[test]
fn gpu_path_tiles_and_native_input_size_match_the_cpu_path() {
    let _cpu = common::shared();
    let (model, picture, clip) = (
        common::model(),
        common::asset(".cache/media/astronaut.png"),
        common::asset(".cache/media/vtest-30s.mp4"),
    );
    for sizing in [
        &["--tiles", "2x2"][..],
        &["--tiles", "3x1", "--tiles-only"][..],
        &["--input-size", "native"][..],
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--model".as_ref(),
            model.as_os_str(),
            "--picture".as_ref(),
            picture.as_os_str(),
            "--clip".as_ref(),
            clip.as_os_str(),
            "--frames".as_ref(),
            "20".as_ref(),
        ];
        args.extend(sizing.iter().map(|a| std::ffi::OsStr::new(*a)));
        let Some(stdout) = gpu_check(
            "gpu_path_tiles_and_native_input_size_match_the_cpu_path",
            &args,
        ) else {
            return;
        };
        println!("{sizing:?}\n{stdout}");
        assert!(stdout.contains("sizing: input_size"), "{stdout}");
        assert!(
            stdout.contains("detections: GPU path = CPU path within tolerance"),
            "{sizing:?}: {stdout}"
        );
        for l in stdout.lines().filter(|l| l.contains("detections matched")) {
            assert!(l.ends_with(", 0 unmatched"), "{sizing:?}: {l}");
            assert!(!l.contains(", 0 detections matched"), "{sizing:?}: {l}");
        }
    }
}

/// `backend = "auto"` on a box without a GPU runs the CPU path and says why at start-up; on
/// the GPU machine it takes the GPU path and says so.
#[test]
fn backend_auto_says_what_it_chose_and_why() {
    let _cpu = common::shared();
    let dir = tempfile_dir();
    let cfg = dir.join("auto.toml");
    std::fs::write(
        &cfg,
        format!(
            "[device]\nid = \"auto-test\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {}\n[storage]\ndir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[models.m]\npath = \"{}\"\nkind = \"nanodet\"\nbackend = \"auto\"\n[[cameras]]\nname = \"c\"\nurl = \"file://{}\"\nmodel = \"m\"\non_end = \"stop\"\n",
            common::free_port(),
            dir.display(),
            common::model().display(),
            common::asset(".cache/media/vtest-30s.mp4").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(common::vigil_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("VIGIL_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            let done = l.contains("model loaded");
            seen.push(l);
            if done {
                break;
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    let loaded = seen
        .iter()
        .find(|l| l.contains("model loaded"))
        .unwrap_or_else(|| panic!("no 'model loaded' line within 60 s:\n{log}"));
    println!("{log}");
    if loaded.contains("backend=\"tensorrt\"") {
        return; // a box with TensorRT (none of ours)
    }
    if loaded.contains("backend=\"cuda\"") {
        // A GPU without TensorRT (the H200 host): the chain's first step and its reason.
        assert!(
            log.contains("backend auto → cuda: TensorRT not available: "),
            "the reason TensorRT was passed over is missing:\n{log}"
        );
        return;
    }
    assert!(loaded.contains("backend=\"cpu\""), "{log}");
    assert!(
        log.contains("backend auto → cpu: no GPU: no NVIDIA CUDA driver library"),
        "the reason is missing:\n{log}"
    );
}

/// The fallback chain as the engine builder reports it (what telemetry's `backend` and
/// `backend_note` and `/metrics`' `vigil_camera_backend` show), and `backend = "tensorrt"` on a
/// box without TensorRT (every machine here): an error naming why, never a silent fallback.
#[test]
fn the_backend_chain_reports_what_it_chose_and_why() {
    use vigil_core::config::{BackendKind, ModelConfig, ModelKind};
    let _cpu = common::shared();
    let m = ModelConfig {
        path: common::model(),
        kind: ModelKind::Nanodet,
        backend: BackendKind::Auto,
        threads: 1,
        input_size: vigil_core::config::InputSize::Pixels(416),
        tiles: None,
        calibration_table: None,
        cpu_path: None,
    };
    let trt = vigil_dataplane::facts::tensorrt();
    let gpu = vigil_dataplane::gpu::probe();
    let b = vigil_dataplane::engine::build("m", &m).expect("auto always loads");
    let note = b.backend.fallback.clone().unwrap_or_default();
    println!(
        "auto → {} ({note}); TensorRT probe: {trt:?}",
        b.backend.name
    );
    match (&gpu, &trt) {
        (vigil_core::facts::GpuProbe::Unavailable(_), _) => {
            assert_eq!(b.backend.name, "cpu");
            assert!(note.starts_with("no GPU: "), "{note}");
        }
        (_, Err(why)) => {
            assert_eq!(b.backend.name, "cuda");
            assert_eq!(note, format!("TensorRT not available: {why}"));
        }
        (_, Ok(_)) => assert_eq!(b.backend.name, "tensorrt"),
    }
    assert_eq!(b.backend.file, m.path);
    drop(b);
    // `cpu_path`: the file the CPU runs (here int8); the GPU backends run `path`.
    let int8 = common::int8_model();
    for backend in [BackendKind::Auto, BackendKind::Cpu] {
        let c = ModelConfig {
            cpu_path: Some(int8.clone()),
            backend,
            ..m.clone()
        };
        let b = vigil_dataplane::engine::build("m", &c).expect("loads");
        let want = if b.backend.name == "cpu" {
            &int8
        } else {
            &m.path
        };
        assert_eq!(&b.backend.file, want, "{backend:?} → {}", b.backend.name);
        if backend == BackendKind::Cpu {
            assert_eq!(b.backend.name, "cpu");
        }
    }
    if trt.is_err() {
        let t = ModelConfig {
            backend: BackendKind::Tensorrt,
            ..m
        };
        let e = vigil_core::error::chain(&vigil_dataplane::engine::build("m", &t).err().unwrap());
        assert!(e.contains("backend \"tensorrt\": "), "{e}");
        println!("backend tensorrt → {e}");
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vigil-auto-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The GPU renderer and nvJPEG against the CPU renderer and encoder (`vigil gpu-check
/// --pictures`): synthetic frames and NVDEC frames of a clip drawn on the GPU must equal the CPU
/// renderer's pictures byte for byte, and nvJPEG's JPEGs must be as faithful as the CPU
/// encoder's (the tolerance is explained in `src/gpu_check/pictures.rs`). Runs where a GPU
/// exists; elsewhere it says it was skipped, and why.
#[test]
fn gpu_pictures_match_the_cpu_renderer() {
    let _cpu = common::shared();
    let Some(stdout) = gpu_check(
        "gpu_pictures_match_the_cpu_renderer",
        &[
            "--pictures".as_ref(),
            "--frames".as_ref(),
            "12".as_ref(),
            "--clip".as_ref(),
            common::asset(".cache/media/vtest-30s.mp4").as_os_str(),
        ],
    ) else {
        return;
    };
    let compared: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("bytes differ"))
        .collect();
    // 5 sizes × 2 layouts × 3 widths of synthetic frames, then the NVDEC line.
    assert_eq!(compared.len(), 31, "{stdout}");
    for l in &compared {
        assert!(
            l.contains(": 0 bytes differ") || l.contains("renderer: 0 bytes differ"),
            "{l}"
        );
    }
    assert!(stdout.contains("JPEG: nvJPEG"), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("annotated JPEG q80: GPU"))
            .count(),
        2,
        "{stdout}"
    );
}

/// `vigil gpu-check` with `args`: its stdout once it succeeded; `None` (said, and checked to
/// be for want of a GPU) where there is no GPU.
fn gpu_check(test: &str, args: &[&std::ffi::OsStr]) -> Option<String> {
    let out = Command::new(common::vigil_bin())
        .arg("gpu-check")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    if let Some(line) = stdout.lines().find(|l| l.starts_with("GPU: unavailable")) {
        eprintln!("SKIPPED {test}: no GPU here ({line})");
        return None;
    }
    Some(stdout)
}
