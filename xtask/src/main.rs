//! `cargo xtask <task>`: the project's tasks, for a fresh Debian 12 / Ubuntu 24.04 machine.
//!
//! - `setup`: installs what is missing (apt packages, ONNX Runtime, the model, the media).
//! - `demo`:  setup, then a local mosquitto, the demo clip as an RTSP camera, `vigil run` on
//!   `configs/demo.toml`, and every event printed as a subscriber receives it.
//! - `test`:  setup, then formatting, `tidy`, cargo-deny (licenses, bans), clippy and the whole
//!   test suite, then a short run of every fuzz target.
//! - `fuzz`:  builds the libFuzzer targets of `crates/vigil-fuzz` with coverage instrumentation
//!   (stable toolchain) and runs each on its corpus: see `fuzz.rs`.
//! - `deb`:   Vigil as a Debian package (`target/deb/vigil_<version>_<arch>.deb`): see `deb.rs`.
//! - `image`: the appliance image (GPT, EFI + A/B root slots + data, RAUC) and its update
//!   bundle: see `image.rs`.
//! - `arm64-check`: cross-builds `vigil` for aarch64 and compares it, run under qemu-user, with
//!   the native build (`--version`, `check-config` on the corpus, `detect`): see `cross.rs`.
//! - `tidy`:  the workspace's structural rules (crate dependency matrix, where `unsafe` may be,
//!   module docs, ARCHITECTURE.md naming every crate and module): see `tidy.rs`.
//! - `yocto-crates`, `yocto-lint`: the Yocto layer's crate list from Cargo.lock, and its lint
//!   (oelint-adv, kas schema; `test` runs it after tidy): see `yocto.rs`.
//!
//! Everything downloaded is pinned and checked by sha256, and cached under `.cache/`.
#![forbid(unsafe_code)]

mod assets;
mod cross;
mod deb;
mod fleet_bench;
mod fuzz;
mod image;
mod image_boot;
mod live_bench;
mod soak;
mod stamp;
mod tidy;
mod yocto;

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("setup") => assets::setup(&root()).map(|_| ()),
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("gpu-payload") => gpu_payload(),
        Some("deb") => deb::deb(&root(), &args[1..]),
        Some("image") => image::image(&root(), &args[1..]),
        Some("image-boot") => image_boot::image_boot(&root(), &args[1..]),
        Some("tidy") => tidy::tidy(&root()),
        Some("fuzz") => fuzz::fuzz(&root(), &args[1..]),
        Some("soak") => soak::soak(&root(), &args[1..]),
        Some("live-bench") => live_bench::live_bench(&root(), &args[1..]),
        Some("fleet-bench") => fleet_bench::fleet_bench(&root(), &args[1..]),
        Some("arm64-check") => cross::arm64_check(&root(), &args[1..]),
        Some("image-power-cuts") => image_power_cuts(&args[1..]),
        Some("yocto-crates") => yocto::yocto_crates(&root()),
        Some("yocto-lint") => yocto::yocto_lint(&root()),
        _ => {
            eprintln!(
                "usage: cargo xtask <setup | demo [--seconds N] | test [--no-lint] [-- cargo test args] | tidy | fuzz [--seconds N] [TARGET…] | soak [--minutes 60 …] | live-bench [--cameras 16,64,…] | bench [vigil bench args] | fleet-bench [--runs 100x50,…] | gpu-payload | deb [--arch amd64] [--vigil BIN] [--version V] [--out DIR] | image [--arch amd64|arm64] [--vigil BIN] [--version V] [--out DIR] [--no-bundle | --bundle-version V2] | image-boot [--arch amd64|arm64] [--image IMG] [--minutes N] | yocto-crates | yocto-lint | arm64-check [--amd64 PATH] | image-power-cuts [--points 10]>"
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn step(msg: &str) {
    println!("\x1b[1m==> {msg}\x1b[0m");
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // CI machines have little disk (a run died with "No space left on device"): there, line
    // tables are enough for backtraces, where full debug info of every test binary is
    // several GiB.
    if std::env::var_os("CI").is_some() && std::env::var_os("CARGO_PROFILE_RELEASE_DEBUG").is_none()
    {
        cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only");
    }
    cmd
}

fn test(args: &[String]) -> Result<()> {
    let root = root();
    let t0 = Instant::now();
    let assets = assets::setup(&root)?;
    let (lint, rest): (bool, &[String]) = match args.first().map(String::as_str) {
        Some("--no-lint") => (false, &args[1..]),
        _ => (true, args),
    };
    let extra: Vec<&String> = rest.iter().skip_while(|a| *a == "--").collect();
    let ci = std::env::var_os("CI").is_some();
    if ci {
        disk_report(&root);
    }
    if lint {
        step("cargo fmt --check");
        run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
        step("cargo xtask tidy");
        tidy::tidy(&root)?;
        step("cargo xtask yocto-lint (yocto/meta-vigil: crate list, oelint-adv, kas schema)");
        yocto::yocto_lint(&root)?;
        step("cargo deny check licenses bans (deny.toml)");
        run(Command::new(&assets.cargo_deny)
            .current_dir(&root)
            .args(["deny", "check", "licenses", "bans"]))?;
        step("cargo clippy --release --workspace --all-targets --all-features -- -D warnings");
        run(cargo().current_dir(&root).args([
            "clippy",
            "--release",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // All features: the test-only fault hooks (`test-hooks`) that the end-to-end tests drive,
    // and the Jetson NVMM module (`jetson`), whose unit tests run on any machine.
    // The partition test needs network namespaces (root): in CI, and whenever run as root, it
    // must not skip.
    let test = || {
        let mut test = cargo();
        if ci || is_root() {
            test.env("VIGIL_REQUIRE_NETNS", "1");
        }
        test.current_dir(&root)
            .args(["test", "--release", "--workspace", "--all-features"]);
        test
    };
    // Every fuzz target for 10 s on its committed corpus (longer runs: benches/RESULTS.md);
    // not when only some tests were asked for. The instrumented build (minutes) runs in the
    // background while the tests run, once they are compiled (both would fight for the CPU).
    let fuzz_build = if extra.is_empty() {
        step("cargo test --release --workspace --all-features --no-run (building the tests)");
        run(test().arg("--no-run"))?;
        Some(fuzz::Background::start(&root)?)
    } else {
        None
    };
    step(
        "cargo test --release --workspace --all-features (unit, integration and end-to-end tests)",
    );
    run(test().args(&extra))?;
    if let Some(build) = fuzz_build {
        let bins = build.wait()?;
        if ci {
            disk_report(&root);
        }
        fuzz::run_targets(&root, &bins, &fuzz::TARGETS, 10)?;
    }
    step(&format!(
        "all tests passed in {:.0}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// `cargo xtask image-power-cuts [--points N]`: the appliance image test that kills QEMU at N
/// points of a whole-system install (`image_boot::power_cuts_…`, ignored in `cargo xtask
/// test`: about 30 minutes under TCG).
fn image_power_cuts(args: &[String]) -> Result<()> {
    let points = match args {
        [] => 10,
        [flag, n] if flag == "--points" => n.parse().context("--points N")?,
        _ => bail!("usage: cargo xtask image-power-cuts [--points 10]"),
    };
    let root = root();
    assets::setup(&root)?;
    step(&format!(
        "the appliance image with {points} power cuts during an install"
    ));
    run(cargo()
        .current_dir(&root)
        .env("VIGIL_POWER_CUTS", points.to_string())
        .args(["test", "--release", "--all-features", "--test", "it", "--"])
        .args([
            "--ignored",
            "--exact",
            "image_boot::power_cuts_during_an_install_always_leave_a_whole_good_slot",
            "--nocapture",
        ]))
}

/// Prints the size of the target folder and the free space under it (CI logs tell where the
/// disk went).
fn disk_report(root: &Path) {
    let target = root.join("target");
    let used = Command::new("du")
        .args(["-sh"])
        .arg(&target)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let free = Command::new("df")
        .args(["-h", "--output=avail"])
        .arg(root)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    println!("disk: target {used}; {free} free");
}

/// `vigil bench` with the Python baseline (OpenCV + onnxruntime in a virtualenv that sees
/// Debian's python3-opencv).
fn bench(args: &[String]) -> Result<()> {
    let root = root();
    assets::setup(&root)?;
    let py = assets::bench_python(&root)?;
    step("building vigil (release)");
    run(cargo()
        .current_dir(&root)
        .args(["build", "--release", "--bin", "vigil"]))?;
    // Without arguments: the busy plaza (the default clip), then a camera that sees a still
    // scene for half of the time (what the motion gate is for).
    let runs: Vec<Vec<String>> = if args.is_empty() {
        let idle = assets::idle_clip(&root)?;
        vec![vec![], vec!["--clip".into(), idle.display().to_string()]]
    } else {
        vec![args.to_vec()]
    };
    for extra in runs {
        step(&format!(
            "vigil bench {} (Vigil's CPU path with and without the motion gate, on the int8 model the shipped configs give the CPU; then the Python baseline on the float model; same clip and threads)",
            extra.join(" ")
        ));
        run(Command::new(root.join("target/release/vigil"))
            .current_dir(&root)
            .arg("bench")
            .arg("--python")
            .arg(&py)
            .args(&extra)
            .env("VIGIL_LOG", "warn"))?;
    }
    Ok(())
}

/// Prepares what a GPU machine without cargo, GStreamer or ONNX Runtime's CUDA provider needs
/// to run `vigil gpu-check`, the GPU tests and `vigil bench --gpu` (see benches/RESULTS.md):
/// `gpu-payload/` (stripped `vigil`, the GPU test binary, GStreamer packed by
/// `../shared/gpu-host/pack-gst.sh`, `run.sh`), `gpu-parts-{aa,ab,…}/` (ONNX Runtime 1.31.1
/// with its CUDA 13 provider in parts of 48 MiB: a call carries 64 MiB with the tracked files)
/// and `gpu-parts-media/` (the model and the media, including a 1080p30 H.264 clip made from
/// the demo clip, and the parts' unpack.sh).
fn gpu_payload() -> Result<()> {
    let root = root();
    let shared = root.join("../shared/gpu-host");
    if !shared.join("pack-gst.sh").exists() {
        bail!(
            "{} is missing: gpu-payload packs with its scripts",
            shared.display()
        );
    }
    assets::setup(&root)?;
    let clip = root.join(".cache/media/vtest-1080p30.mp4");
    if !clip.exists() {
        step("making a 1080p30 H.264 clip of the demo clip (x264, 4 Mb/s, 30 s)");
        run(Command::new("gst-launch-1.0").args([
            "-q",
            "filesrc",
            &format!(
                "location={}",
                root.join(".cache/media/vtest-30s.mp4").display()
            ),
            "!",
            "qtdemux",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "videoconvert",
            "!",
            "videoscale",
            "!",
            "videorate",
            "!",
            "video/x-raw,format=I420,width=1920,height=1080,framerate=30/1",
            "!",
            "x264enc",
            "bitrate=4000",
            "speed-preset=veryfast",
            "key-int-max=60",
            "!",
            "video/x-h264,profile=high",
            "!",
            "h264parse",
            "!",
            "mp4mux",
            "!",
            "filesink",
            &format!("location={}", clip.display()),
        ]))?;
    }
    step("building vigil and the GPU tests (release)");
    run(cargo()
        .current_dir(&root)
        .args(["build", "--release", "--bin", "vigil"]))?;
    run(cargo()
        .current_dir(&root)
        .args(["test", "--release", "--no-run", "--test", "it"]))?;
    let payload = root.join("gpu-payload");
    let _ = std::fs::remove_dir_all(&payload);
    std::fs::create_dir_all(&payload)?;
    run(Command::new("strip")
        .arg("-o")
        .arg(payload.join("vigil"))
        .arg(root.join("target/release/vigil")))?;
    let newest_test = std::fs::read_dir(root.join("target/release/deps"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("it-") && !n.contains('.'))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no `it` test binary")?;
    run(Command::new("strip")
        .arg("-o")
        .arg(payload.join("it-test"))
        .arg(newest_test))?;
    step("packing GStreamer (with the NVIDIA decoders and libgstcuda)");
    run(Command::new("bash")
        .arg(shared.join("pack-gst.sh"))
        .arg(&payload)
        .arg("gstpng"))?;
    // Vigil links the RTSP server library (for `vigil rtsp-serve`); the pack does not carry it.
    for f in std::fs::read_dir("/usr/lib/x86_64-linux-gnu")?.flatten() {
        if f.file_name()
            .to_string_lossy()
            .starts_with("libgstrtspserver-1.0.so.0")
        {
            std::fs::copy(
                f.path(),
                payload
                    .join("gst/usr/lib/x86_64-linux-gnu")
                    .join(f.file_name()),
            )?;
        }
    }
    step("packing xtask (its soak runs without cargo) and mosquitto with its libraries");
    run(Command::new("strip")
        .arg("-o")
        .arg(payload.join("xtask"))
        .arg(std::env::current_exe()?))?;
    pack_mosquitto(&payload.join("mosq"))?;
    std::fs::write(
        payload.join("run.sh"),
        "#!/usr/bin/env bash\n# On the GPU machine, after the four parts were copied to /tmp/ort and /tmp/assets:\n# the runtime environment, the assets in place, then the command given.\nsource gpu-payload/gst/env.sh\nexport ORT_DYLIB_PATH=$(ls /tmp/ort/lib/libonnxruntime.so.1.*) LD_LIBRARY_PATH=/tmp/ort/lib:$LD_LIBRARY_PATH:/usr/local/cuda/lib64\nmkdir -p models .cache/media target/release\ncp /tmp/assets/*.onnx models/ && cp /tmp/assets/*.mp4 /tmp/assets/*.png .cache/media/\ncp gpu-payload/vigil target/release/vigil\n\"$@\"\n",
    )?;
    step("packing ONNX Runtime 1.31.1 with its CUDA 13 provider, in parts");
    let ort = std::env::temp_dir().join("vigil-ort-cuda");
    if !ort.join("ort-cuda/part-aa").exists() {
        run(Command::new("bash")
            .arg(shared.join("pack-ort-cuda.sh"))
            .arg(&ort)
            .arg("1.31.1"))?;
    }
    // A call carries at most 64 MiB with the tracked files (~6 MB): the parts are cut again
    // into pieces of 48 MiB (their order kept by their names), the media in a folder of its own.
    for old in std::fs::read_dir(&root)?.flatten() {
        if old.file_name().to_string_lossy().starts_with("gpu-parts-") {
            std::fs::remove_dir_all(old.path())?;
        }
    }
    let cut = std::env::temp_dir().join("vigil-ort-cut");
    let _ = std::fs::remove_dir_all(&cut);
    std::fs::create_dir_all(&cut)?;
    // The parts in name order, joined and cut again (`part-*` sorts as it was split).
    run(Command::new("sh")
        .current_dir(ort.join("ort-cuda"))
        .arg("-c")
        .arg("cat part-* | split -b 48M -a 2 - \"$1/part-\"")
        .arg("sh")
        .arg(&cut))?;
    let mut sent = Vec::new();
    let mut cuts: Vec<_> = std::fs::read_dir(&cut)?
        .flatten()
        .map(|e| e.path())
        .collect();
    cuts.sort();
    for c in cuts {
        let name = c.file_name().expect("a file").to_string_lossy().to_string();
        let dir = root.join(format!("gpu-parts-{}", name.trim_start_matches("part-")));
        std::fs::create_dir_all(&dir)?;
        std::fs::rename(&c, dir.join(&name))?;
        sent.push(
            dir.file_name()
                .expect("a folder")
                .to_string_lossy()
                .to_string(),
        );
    }
    let media = root.join("gpu-parts-media");
    std::fs::create_dir_all(&media)?;
    std::fs::copy(ort.join("ort-cuda/unpack.sh"), media.join("unpack.sh"))?;
    for f in [
        "models/nanodet.onnx",
        "models/nanodet-int8.onnx",
        ".cache/media/astronaut.png",
        ".cache/media/vtest-30s.mp4",
        ".cache/media/vtest-1080p30.mp4",
    ] {
        let from = root.join(f);
        std::fs::copy(&from, media.join(from.file_name().expect("a file")))?;
    }
    println!(
        "send {} (each: mkdir -p /tmp/ort && cp gpu-parts-XX/part-* /tmp/ort/), then gpu-parts-media (mkdir -p /tmp/assets && cp gpu-parts-media/*.{{mp4,png,onnx}} /tmp/assets/ && bash gpu-parts-media/unpack.sh /tmp/ort), back to back, one folder a call; then carry gpu-payload and run e.g. `bash gpu-payload/run.sh gpu-payload/it-test gpu_probe:: --nocapture` (the filter keeps it to the GPU tests); or, in fewer calls, benches/device.sh's stages",
        sent.join(", ")
    );
    Ok(())
}

/// `dir/mosquitto-wrapper`: this machine's mosquitto and the libraries it links, except glibc's
/// own (the GPU machine's glibc is newer), for soaks on a machine that has no broker.
fn pack_mosquitto(dir: &Path) -> Result<()> {
    let bin = assets::mosquitto_bin();
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib)?;
    std::fs::copy(&bin, dir.join("mosquitto"))?;
    let out = Command::new("ldd").arg(&bin).output()?;
    anyhow::ensure!(out.status.success(), "ldd {} failed", bin.display());
    let glibc = [
        "libc.so",
        "libm.so",
        "libresolv.so",
        "ld-linux",
        "linux-vdso",
    ];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "	libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x…)"
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        if glibc.iter().any(|g| name.starts_with(g)) {
            continue;
        }
        let path = rest.split(" (").next().unwrap_or("").trim();
        if !path.is_empty() {
            std::fs::copy(path, lib.join(name))?;
        }
    }
    let wrapper = dir.join("mosquitto-wrapper");
    std::fs::write(
        &wrapper,
        "#!/usr/bin/env bash\nd=$(cd \"$(dirname \"$0\")\" && pwd)\nLD_LIBRARY_PATH=$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec \"$d/mosquitto\" \"$@\"\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Kills child processes when dropped.
pub struct Children(pub Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (name, c) in self.0.iter_mut().rev() {
            // SIGTERM first so vigil can publish its retained `offline` and stop cleanly.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
                let _ = c.wait();
                eprintln!("(killed {name})");
            }
        }
    }
}

/// Whether this process runs as root (its real user id is 0).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn demo(args: &[String]) -> Result<()> {
    let root = root();
    let seconds: Option<u64> = match args {
        [flag, n] if flag == "--seconds" => Some(n.parse().context("--seconds N")?),
        [] => None,
        _ => bail!("usage: cargo xtask demo [--seconds N]"),
    };
    let assets = assets::setup(&root)?;
    step("building vigil and vigil-fleet (release)");
    run(cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "vigil",
        "-p",
        "vigil-fleet",
    ]))?;
    let vigil = root.join("target/release/vigil");
    let (mqtt_port, rtsp_port, fleet_port, www_port) = (18883u16, 18554u16, 28090u16, 28091u16);
    for p in [mqtt_port, rtsp_port, fleet_port, www_port] {
        if !port_free(p) {
            bail!(
                "port {p} on 127.0.0.1 is taken (configs/demo.toml uses {mqtt_port} for MQTT and {rtsp_port} for RTSP; the fleet console {fleet_port}, the demo's update server {www_port})"
            );
        }
    }
    let work = root.join(".cache/demo");
    std::fs::create_dir_all(&work)?;
    let ota = demo_ota(&root, &vigil, &work)?;
    let config = ota.config.clone();
    let mut kids = Children(Vec::new());

    step(&format!("starting mosquitto on 127.0.0.1:{mqtt_port}"));
    let conf = work.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )?;
    let mosq = Command::new(assets::mosquitto_bin())
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    kids.0.push(("mosquitto".into(), mosq));

    step(&format!(
        "serving the demo clip as an RTSP camera on 127.0.0.1:{rtsp_port}"
    ));
    let rtsp = Command::new(&vigil)
        .args([
            "rtsp-serve",
            "--port",
            &rtsp_port.to_string(),
            "--mount",
            "/plaza",
            "--file",
        ])
        .arg(&assets.demo_clip)
        .stdout(Stdio::null())
        .spawn()?;
    kids.0.push(("rtsp server".into(), rtsp));
    wait_port(mqtt_port, Duration::from_secs(5))?;
    wait_port(rtsp_port, Duration::from_secs(10))?;

    step("subscribing to vigil/demo/# (events are printed as they arrive)");
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port.to_string(),
            "-v",
            "-t",
            "vigil/demo/events/#",
            "-t",
            "vigil/demo/status",
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = sub.stdout.take().context("subscriber stdout")?;
    kids.0.push(("mosquitto_sub".into(), sub));
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{}", pretty_event(&line));
        }
    });

    step(&format!(
        "starting the fleet console on 127.0.0.1:{fleet_port} (its store: .cache/demo/fleet.db)"
    ));
    let fleet_bin = root.join("target/release/vigil-fleet");
    // A demo admin with a fresh random password, printed below (no default password exists).
    let password = {
        let mut b = [0u8; 9];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
            .context("reading /dev/urandom")?;
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    let mut add = Command::new(&fleet_bin)
        .args(["user", "add", "demo", "--role", "admin", "--db"])
        .arg(work.join("fleet.db"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    writeln!(add.stdin.take().context("stdin")?, "{password}")?;
    if !add.wait()?.success() {
        bail!("vigil-fleet user add demo failed");
    }
    let fleet = Command::new(&fleet_bin)
        .args(["serve", "--broker", &format!("127.0.0.1:{mqtt_port}")])
        .arg("--db")
        .arg(work.join("fleet.db"))
        .args(["--listen", &format!("127.0.0.1:{fleet_port}")])
        .args(["--ota-key", &ota.public])
        .arg("--download-dir")
        .arg(work.join("fleet-downloads"))
        .env("VIGIL_LOG", "warn")
        .spawn()?;
    kids.0.push(("vigil-fleet".into(), fleet));
    step(&format!(
        "serving the demo's update bundle on http://127.0.0.1:{www_port}/ (python3 -m http.server)"
    ));
    let www = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &www_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--directory",
        ])
        .arg(work.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("python3 -m http.server")?;
    kids.0.push(("update server".into(), www));
    wait_port(fleet_port, Duration::from_secs(10))?;
    // Listening before the rollout points the box at it (else the box's first download try is
    // refused: a warning at the demo's start, and a retry).
    wait_port(www_port, Duration::from_secs(10))?;
    {
        let (url, sha, pw) = (
            format!("http://127.0.0.1:{www_port}/{}", ota.bundle),
            ota.sha256.clone(),
            password.clone(),
        );
        std::thread::spawn(move || match demo_rollout(fleet_port, &pw, &url, &sha) {
            Ok(id) => println!(
                "[demo] a freshly packed update is rolling out to the demo box: http://127.0.0.1:{fleet_port}/rollouts/{id}"
            ),
            Err(e) => println!("[demo] the demo rollout did not start: {e:#}"),
        });
    }

    println!();
    println!(
        "  camera (RTSP):   rtsp://127.0.0.1:{rtsp_port}/plaza   (e.g. `gst-play-1.0 rtsp://127.0.0.1:{rtsp_port}/plaza`)"
    );
    println!(
        "  broker (MQTT):   mqtt://127.0.0.1:{mqtt_port}   events: vigil/demo/events/<camera>, telemetry: vigil/demo/telemetry, status: vigil/demo/status"
    );
    println!("  watch telemetry: mosquitto_sub -p {mqtt_port} -t vigil/demo/telemetry");
    println!(
        "  live view:       http://127.0.0.1:28080/live   (open it in a browser: the camera with boxes, zone and line)"
    );
    println!(
        "  fleet console:   http://127.0.0.1:{fleet_port}/   user demo, password {password}   (the demo box, its events with pictures: /review)"
    );
    println!(
        "  config:          {} (configs/demo.toml with an OTA key made for this demo)",
        config.display()
    );
    println!("  stop:            Ctrl-C");
    println!();
    step(&format!("vigil run --config {}", config.display()));
    let vigil_run = Command::new(&vigil)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("VIGIL_LOG", "info,vigil::events=warn")
        .spawn()?;
    kids.0.push(("vigil".into(), vigil_run));
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some((_, v)) = kids.0.last_mut()
            && let Ok(Some(status)) = v.try_wait()
        {
            bail!("vigil exited: {status}");
        }
        if seconds.is_some_and(|s| started.elapsed() >= Duration::from_secs(s)) {
            step(&format!(
                "demo ran {}s; stopping",
                seconds.unwrap_or_default()
            ));
            return Ok(());
        }
    }
}

/// What the demo's OTA needs: its config, the public key, the bundle (under `www/`).
struct DemoOta {
    config: PathBuf,
    public: String,
    bundle: String,
    sha256: String,
}

/// An OTA key for the demo (made once, kept in `.cache/demo/`), `.cache/demo/demo.toml` (the
/// demo config with its relative paths made absolute and an `[ota]` section trusting that
/// key), and a freshly signed bundle (the same model; the sequence is the time, so it is
/// always above what an earlier demo run installed).
fn demo_ota(root: &Path, vigil: &Path, work: &Path) -> Result<DemoOta> {
    step("signing a fresh OTA bundle for the demo's rollout (key in .cache/demo/ota.key)");
    let key = work.join("ota.key");
    let public_file = work.join("ota.pub");
    if !key.exists() || !public_file.exists() {
        let _ = std::fs::remove_file(&key);
        let out = Command::new(vigil)
            .args(["ota", "keygen", "--out"])
            .arg(&key)
            .output()?;
        if !out.status.success() {
            bail!("vigil ota keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::fs::write(&public_file, &out.stdout)?;
    }
    let public = std::fs::read_to_string(&public_file)?.trim().to_string();
    let base = std::fs::read_to_string(root.join("configs/demo.toml"))?;
    let text = base.replace("\"../", &format!("\"{}/", root.display()))
        + &format!(
            "\n# Added by `cargo xtask demo`: the OTA key made for this demo.\n[ota]\ntrusted_keys = [\"{public}\"]\ndir = \"{}\"\nprobation = \"20s\"\n",
            work.join("ota").display()
        );
    let config = work.join("demo.toml");
    std::fs::write(&config, text)?;
    let bundle_src = work.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle_src);
    std::fs::create_dir_all(bundle_src.join("models"))?;
    for m in ["nanodet.onnx", "nanodet-int8.onnx"] {
        std::fs::copy(
            root.join("models").join(m),
            bundle_src.join("models").join(m),
        )?;
    }
    std::fs::write(
        bundle_src.join("config.toml"),
        "[models.nanodet]\npath = \"models/nanodet.onnx\"\ncpu_path = \"models/nanodet-int8.onnx\"\nkind = \"nanodet\"\nbackend = \"cpu\"\nthreads = 2\n",
    )?;
    let www = work.join("www");
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www)?;
    let sequence = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let bundle = format!("demo-{sequence}.vigil");
    let out = Command::new(vigil)
        .args(["ota", "pack", "--key"])
        .arg(&key)
        .args(["--sequence", &sequence.to_string()])
        .args(["--version", &format!("demo-{sequence}")])
        .arg("--out")
        .arg(www.join(&bundle))
        .arg(&bundle_src)
        .output()?;
    if !out.status.success() {
        bail!("vigil ota pack: {}", String::from_utf8_lossy(&out.stderr));
    }
    let sha256 = assets::sha256(&www.join(&bundle))?;
    Ok(DemoOta {
        config,
        public,
        bundle,
        sha256,
    })
}

/// Logs in as the demo admin, adds the bundle as a release and rolls it out to the demo box
/// once the console sees it online; the rollout's id.
fn demo_rollout(port: u16, password: &str, url: &str, sha256: &str) -> Result<String> {
    use fleet_bench::{get, login, post};
    let cookie = login(port, "demo", password)?;
    let t0 = Instant::now();
    loop {
        let (_, page) = get(port, "/fragments/fleet", &cookie)?;
        if page.contains("data-device=\"demo\"") && page.contains("online for") {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the demo box did not show up online on the console within 120 s");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let csrf = |page: &str| -> Result<String> {
        Ok(page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .context("no CSRF token on the page")?
            .to_string())
    };
    let (_, page) = get(port, "/rollouts", &cookie)?;
    let token = csrf(&page)?;
    let (code, _, body) = post(
        port,
        "/rollouts/releases",
        &cookie,
        &format!("csrf={token}&url={url}&sha256={sha256}"),
    )?;
    if code != 303 {
        bail!(
            "adding the release: HTTP {code}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    let (_, page) = get(port, "/rollouts", &cookie)?;
    let release = page
        .split("<option value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the release is not on the page")?
        .to_string();
    let (code, head, body) = post(
        port,
        "/rollouts",
        &cookie,
        &format!(
            "csrf={token}&release={release}&devices=demo&canary=1&waves=&bake_s=10&threshold=0&offline_s=600&stall_s=600"
        ),
    )?;
    if code != 303 {
        bail!(
            "starting the rollout: HTTP {code}: {}",
            body.chars().take(300).collect::<String>()
        );
    }
    Ok(head
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: /rollouts/")
                .or_else(|| l.strip_prefix("Location: /rollouts/"))
        })
        .context("no rollout page in the answer")?
        .trim()
        .to_string())
}

pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// `topic {json}` → a one-line summary of an event or status.
fn pretty_event(line: &str) -> String {
    let Some((topic, payload)) = line.split_once(' ') else {
        return line.to_string();
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else {
        return line.to_string();
    };
    if topic.ends_with("/status") {
        return format!("[mqtt] {topic}: {}", v["state"].as_str().unwrap_or("?"));
    }
    format!(
        "[mqtt] EVENT {:<8} {:<11} {:<10} {:<4} track {:<4} {:<7} score {:.2}  t={:.1}s",
        v["camera"].as_str().unwrap_or("?"),
        v["kind"].as_str().unwrap_or("?"),
        v["rule"].as_str().unwrap_or("?"),
        v["direction"].as_str().unwrap_or(""),
        v["track_id"],
        v["class"].as_str().unwrap_or("?"),
        v["score"].as_f64().unwrap_or(0.0),
        v["pts_s"].as_f64().unwrap_or(0.0),
    )
}
