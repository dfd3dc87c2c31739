//! arm64 (the Jetson's CPU): Vigil cross-built for `aarch64-unknown-linux-gnu` on an amd64
//! Debian host, ONNX Runtime for it, and `cargo xtask arm64-check`, which runs the arm64 binary
//! under qemu-user beside the native one and compares what they say.
//!
//! The arm64 libraries Vigil links (GStreamer and its -dev closure) come from the host's own
//! Debian archive, extracted by `mmdebstrap --variant=extract --arch=arm64` into a sysroot
//! (`.cache/sysroot-arm64/`) rather than installed with dpkg multiarch: in Debian 12
//! `libgstreamer-plugins-base1.0-dev`, `libgstrtspserver-1.0-dev` and `libgstrtspserver-1.0-0`
//! are not `Multi-Arch: same`, so installing their `:arm64` builds removes the host's amd64
//! ones (and the packages that need them). The sysroot leaves the host's packages alone; only
//! the cross compiler and qemu-user are installed. The same sysroot is qemu's `-L` prefix,
//! so the arm64 binary runs on its own arm64 GStreamer and plugins.

use crate::{cargo, run, step};
use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// A Debian architecture Vigil is built for. amd64 is the native build (this host), arm64
/// the cross build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "amd64" => Ok(Arch::Amd64),
            "arm64" => Ok(Arch::Arm64),
            _ => bail!("unknown architecture {s:?} (expected amd64 or arm64)"),
        }
    }

    /// Debian's name (`dpkg --print-architecture`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Rust's target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The multiarch tuple (`/usr/lib/<tuple>`, the GNU tools' prefix).
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// PyPI's platform tag of the manylinux wheels for this architecture.
    fn manylinux(self) -> &'static str {
        match self {
            Arch::Amd64 => "manylinux_2_28_x86_64",
            Arch::Arm64 => "manylinux_2_28_aarch64",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Arch> {
        match s {
            "amd64" | "x86_64" => Ok(Arch::Amd64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => bail!("unknown architecture {s:?} (amd64 | arm64)"),
        }
    }
}

/// Host packages for the cross build and for running arm64 binaries (all amd64 or `all`:
/// nothing of the host's is replaced).
const HOST_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user-static",
    "mmdebstrap",
];

/// What the arm64 sysroot holds: what Vigil links (GStreamer core, base, RTSP server; their
/// -dev packages bring glib's and the rest of the closure), the plugins `vigil detect` decodes
/// pictures with under qemu (filesrc, decodebin, videoconvert: base; pngdec: good), and the C++
/// runtime ONNX Runtime needs.
const SYSROOT_PACKAGES: &[&str] = &[
    "libc6-dev",
    "libstdc++6",
    "libgstreamer1.0-dev",
    "libgstreamer-plugins-base1.0-dev",
    "libgstrtspserver-1.0-dev",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
];

/// ONNX Runtime for arm64: the same version as the amd64 one (`assets::ORT_VERSION`), from the
/// official aarch64 manylinux wheel on PyPI, and that wheel's sha256.
const ORT_ARM64: (&str, &str) = (
    "1.32.0",
    "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
);

/// The qemu-user binary that runs arm64 programs (from `qemu-user-static`).
pub const QEMU: &str = "qemu-aarch64-static";

/// The arm64 sysroot: `.cache/sysroot-arm64/`.
pub fn sysroot(root: &Path) -> PathBuf {
    root.join(".cache/sysroot-arm64")
}

/// Installs what the arm64 build and qemu-user runs need, each only when missing: the cross
/// compiler, qemu-user-static and mmdebstrap (apt), the arm64 sysroot (mmdebstrap, from the
/// host's Debian archive), and the Rust target (`rustup target add`).
pub fn setup_arm64(root: &Path) -> Result<()> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        bail!("the arm64 cross build is set up for an amd64 Debian host");
    }
    crate::assets::apt_install(HOST_PACKAGES)?;
    arm64_sysroot(root)?;
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup")?;
    if String::from_utf8_lossy(&targets.stdout)
        .lines()
        .any(|l| l.trim() == Arch::Arm64.triple())
    {
        step(&format!("Rust target {}: present", Arch::Arm64.triple()));
    } else {
        step(&format!("rustup target add {}", Arch::Arm64.triple()));
        run(Command::new("rustup").args(["target", "add", Arch::Arm64.triple()]))?;
    }
    Ok(())
}

/// The sysroot's recipe, kept in `.cache/sysroot-arm64.recipe`: another list of packages makes
/// it again.
fn sysroot_recipe() -> String {
    format!(
        "mmdebstrap --variant=extract --arch=arm64 --include={}",
        SYSROOT_PACKAGES.join(",")
    )
}

fn arm64_sysroot(root: &Path) -> Result<()> {
    let dir = sysroot(root);
    let stamp = root.join(".cache/sysroot-arm64.recipe");
    let recipe = sysroot_recipe();
    if dir
        .join("usr/lib/aarch64-linux-gnu/pkgconfig/gstreamer-1.0.pc")
        .exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == recipe)
    {
        step("arm64 sysroot .cache/sysroot-arm64: present");
        return Ok(());
    }
    let (suite, sources) = host_archive()?;
    step(&format!(
        "extracting the arm64 sysroot (GStreamer and its -dev closure from {suite}, ~800 MB, ~30 s): {recipe}"
    ));
    let tmp = root.join(".cache/sysroot-arm64.part");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(root.join(".cache"))?;
    let include = format!("--include={}", SYSROOT_PACKAGES.join(","));
    let mut cmd = crate::assets::as_root(&[
        "mmdebstrap",
        "--variant=extract",
        "--arch=arm64",
        "--quiet",
        &include,
        &suite,
    ]);
    cmd.arg(&tmp).args(sources);
    run(&mut cmd)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    std::fs::write(&stamp, format!("{recipe}\n"))?;
    Ok(())
}

/// The host's release (`VERSION_CODENAME`) and where its arm64 packages are: the host's own
/// Debian sources (the same archive and versions as its amd64 packages), or Ubuntu's ports
/// archive (Ubuntu's main archive has no arm64).
fn host_archive() -> Result<(String, Vec<String>)> {
    let os = std::fs::read_to_string("/etc/os-release").context("/etc/os-release")?;
    let field = |k: &str| {
        os.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    let suite = field("VERSION_CODENAME").context("no VERSION_CODENAME in /etc/os-release")?;
    let sources = match field("ID").as_deref() {
        Some("ubuntu") => vec![format!(
            "deb http://ports.ubuntu.com/ubuntu-ports {suite} main universe"
        )],
        _ => {
            let own = Path::new("/etc/apt/sources.list.d/debian.sources");
            if own.exists() {
                vec![own.display().to_string()]
            } else {
                Vec::new() // mmdebstrap's default: deb.debian.org for the suite
            }
        }
    };
    Ok((suite, sources))
}

/// The environment of a cross build for `arch` (empty for the native one): the cross linker
/// linking against the sysroot, pkg-config reading the sysroot's `.pc` files, the C compiler
/// and archiver of the cc-built crates (ring, the bundled SQLite). Target-specific variables
/// only: build scripts and proc macros still build for the host.
pub fn build_env(root: &Path, arch: Arch) -> Vec<(String, String)> {
    if arch == Arch::Amd64 {
        return Vec::new();
    }
    let sys = sysroot(root);
    let s = sys.display();
    let t = arch.triple().replace('-', "_");
    let tu = t.to_uppercase();
    let gnu = arch.multiarch();
    vec![
        (format!("CARGO_TARGET_{tu}_LINKER"), format!("{gnu}-gcc")),
        (
            format!("CARGO_TARGET_{tu}_RUSTFLAGS"),
            format!("-C link-arg=--sysroot={s} -C link-arg=-Wl,-rpath-link,{s}/usr/lib/{gnu}"),
        ),
        ("PKG_CONFIG_ALLOW_CROSS".into(), "1".into()),
        (format!("PKG_CONFIG_SYSROOT_DIR_{t}"), s.to_string()),
        (
            format!("PKG_CONFIG_LIBDIR_{t}"),
            format!("{s}/usr/lib/{gnu}/pkgconfig:{s}/usr/share/pkgconfig"),
        ),
        (format!("CC_{t}"), format!("{gnu}-gcc")),
        (format!("AR_{t}"), format!("{gnu}-ar")),
    ]
}

/// Builds `vigil` (release) for `arch` and returns the binary: `target/release/vigil` for
/// amd64, `target/aarch64-unknown-linux-gnu/release/vigil` for arm64 (after [`setup_arm64`]).
pub fn build(root: &Path, arch: Arch) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "vigil"]);
    let bin = match arch {
        Arch::Amd64 => {
            step("building vigil (release, amd64)");
            root.join("target/release/vigil")
        }
        Arch::Arm64 => {
            setup_arm64(root)?;
            step("cross-building vigil (release, aarch64-unknown-linux-gnu)");
            cmd.args(["--target", arch.triple()]);
            root.join("target")
                .join(arch.triple())
                .join("release/vigil")
        }
    };
    cmd.envs(build_env(root, arch));
    run(&mut cmd)?;
    ensure!(bin.exists(), "{} was not built", bin.display());
    Ok(bin)
}

/// ONNX Runtime for `arch` (the file `ORT_DYLIB_PATH` names): amd64's is `cargo xtask setup`'s
/// (`.cache/onnxruntime/`); arm64's is the same version from the official aarch64 manylinux
/// wheel, downloaded once, sha256-checked, extracted to `.cache/onnxruntime-arm64/`.
pub fn ort_lib(root: &Path, arch: Arch) -> Result<PathBuf> {
    let version = crate::assets::ORT_VERSION;
    let (dir, wheel_sha) = match arch {
        Arch::Amd64 => (root.join(".cache/onnxruntime"), None),
        Arch::Arm64 => {
            ensure!(
                ORT_ARM64.0 == version,
                "ONNX Runtime is {version} but the aarch64 wheel pinned in xtask/src/cross.rs is {}: pin the {version} wheel's sha256 there",
                ORT_ARM64.0
            );
            (root.join(".cache/onnxruntime-arm64"), Some(ORT_ARM64.1))
        }
    };
    let lib = dir.join(format!("libonnxruntime.so.{version}"));
    let link = dir.join("libonnxruntime.so.1");
    if lib.exists() && link.exists() {
        step(&format!(
            "ONNX Runtime {version} ({}): present",
            arch.debian()
        ));
        return Ok(lib);
    }
    let Some(sha) = wheel_sha else {
        bail!("{} is missing: run `cargo xtask setup`", lib.display());
    };
    let dl = root.join(".cache/downloads");
    std::fs::create_dir_all(&dl)?;
    std::fs::create_dir_all(&dir)?;
    let wheel = dl.join(format!(
        "onnxruntime-{version}-cp311-cp311-{}.whl",
        arch.manylinux()
    ));
    if !wheel.exists() {
        step(&format!(
            "downloading onnxruntime=={version} for {} (PyPI)",
            arch.debian()
        ));
        run(Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
            .args([
                "--python-version",
                "3.11",
                "--platform",
                arch.manylinux(),
                "-d",
            ])
            .arg(&dl)
            .arg(format!("onnxruntime=={version}")))?;
    }
    let got = crate::assets::sha256(&wheel)?;
    ensure!(
        got == sha,
        "{}: sha256 {got}, expected {sha} (delete it and run again if the download was cut)",
        wheel.display()
    );
    step(&format!(
        "extracting libonnxruntime.so.{version} ({}) from the wheel",
        arch.debian()
    ));
    let tmp = lib.with_extension("part");
    let script = "import sys,zipfile,shutil\nz=zipfile.ZipFile(sys.argv[1])\nwith z.open(sys.argv[2]) as s, open(sys.argv[3],'wb') as d: shutil.copyfileobj(s,d)";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .arg(format!("onnxruntime/capi/libonnxruntime.so.{version}"))
        .arg(&tmp))?;
    std::fs::rename(&tmp, &lib)?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(lib.file_name().unwrap_or_default(), &link)?;
    Ok(lib)
}

/// The CPU qemu-user emulates: a Cortex-A76 (Armv8.2 with dot product and fp16, no SVE) is
/// the closest of qemu 7.2's models to the Jetson Orin's Cortex-A78AE, so ONNX Runtime picks
/// the kernels it picks there (qemu's default, `max`, offers SVE and more, which Orin lacks).
pub const QEMU_CPU: &str = "cortex-a76";

/// qemu-user's library prefix for arm64 programs (`target/aarch64-unknown-linux-gnu/qemu-root/`):
/// the sysroot's `lib`, `usr` and `etc`, and an arm64 `/proc/cpuinfo` (a Cortex-A76 for each
/// of the host's processors). qemu 7.2 passes `/proc/cpuinfo` through from the host, and
/// ONNX Runtime's cpuinfo, finding no ARM processor in x86's text, dies with a NULL
/// dereference while it starts (`uncaught target signal 11`): an artefact of emulation, a
/// real arm64 kernel writes its own.
pub fn qemu_prefix(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/aarch64-unknown-linux-gnu/qemu-root");
    let sys = sysroot(root);
    std::fs::create_dir_all(dir.join("proc"))?;
    for top in ["lib", "usr", "etc"] {
        let link = dir.join(top);
        if std::fs::read_link(&link).ok().as_deref() != Some(sys.join(top).as_path()) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(sys.join(top), &link)?;
        }
    }
    let host = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let n = host
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
        .max(1);
    let cpuinfo: String = (0..n)
        .map(|i| {
            format!(
                "processor\t: {i}\nBogoMIPS\t: 50.00\n\
                 Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n\
                 CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n"
            )
        })
        .collect();
    std::fs::write(dir.join("proc/cpuinfo"), cpuinfo)?;
    Ok(dir)
}

/// A command that runs `bin` built for `arch` on this host: directly for amd64; for arm64
/// under qemu-user ([`QEMU_CPU`], [`qemu_prefix`]), GStreamer's plugins from the sysroot, its
/// registry beside the build, and the plugin scan in-process (its helper is an arm64 program
/// the host cannot exec without binfmt).
pub fn runner(root: &Path, arch: Arch, bin: &Path) -> Result<Command> {
    Ok(match arch {
        Arch::Amd64 => Command::new(bin),
        Arch::Arm64 => {
            let mut c = Command::new(QEMU);
            c.args(["-cpu", QEMU_CPU, "-L"])
                .arg(qemu_prefix(root)?)
                .arg(bin);
            c.env(
                "GST_PLUGIN_SYSTEM_PATH",
                sysroot(root).join("usr/lib/aarch64-linux-gnu/gstreamer-1.0"),
            )
            .env(
                "GST_REGISTRY",
                root.join("target/aarch64-unknown-linux-gnu/gst-registry.bin"),
            )
            .env("GST_REGISTRY_FORK", "no");
            c
        }
    })
}

// ---------------------------------------------------------------------------------------------
// cargo xtask arm64-check

/// One line of `vigil detect`: `file frame class score x1 y1 x2 y2` (box corners as fractions
/// of the picture).
#[derive(Debug, Clone, PartialEq)]
pub struct Det {
    pub class: String,
    pub score: f32,
    pub bbox: [f32; 4],
}

pub fn parse_detections(out: &str) -> Result<Vec<Det>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ensure!(f.len() == 8, "not a detection line: {l:?}");
            let n = |i: usize| -> Result<f32> {
                f[i].parse().with_context(|| format!("{l:?}: field {i}"))
            };
            Ok(Det {
                class: f[2].to_string(),
                score: n(3)?,
                bbox: [n(4)?, n(5)?, n(6)?, n(7)?],
            })
        })
        .collect()
}

/// How far arm64's detections may be from amd64's: boxes within `px` pixels, scores within
/// `score`. ONNX Runtime's x86 (AVX2/AVX-512) and ARM (NEON) kernels sum in different orders
/// and fuse multiply-adds differently, so the outputs differ in the last bits of a float; the
/// detections must not differ in anything a consumer could see.
#[derive(Debug, Clone, Copy)]
pub struct Tolerance {
    pub px: f32,
    pub score: f32,
}

/// `vigil detect`'s threshold in the check (its default).
const MIN_SCORE: f32 = 0.35;

pub const TOLERANCE: Tolerance = Tolerance {
    px: 1.0,
    score: 0.01,
};

/// Whether `b` are the same detections as `a` on a `w`×`h` picture within `tol`: each of `a`
/// matched to its own detection of `b` of the same class (the closest box), none of `b` left
/// over. The order may differ (two scores within the tolerance may swap). A detection scored
/// within the tolerance of `min_score` may be missing on the other side (it may have fallen
/// below the threshold there). `Err` says what differs.
pub fn same_detections(
    a: &[Det],
    b: &[Det],
    (w, h): (u32, u32),
    min_score: f32,
    tol: Tolerance,
) -> Result<(), String> {
    let px = |d: &Det, e: &Det| {
        let s = [w as f32, h as f32, w as f32, h as f32];
        (0..4)
            .map(|i| (d.bbox[i] - e.bbox[i]).abs() * s[i])
            .fold(0f32, f32::max)
    };
    // The printed corners are rounded to 0.001 of the side: allow that on top.
    let slack = 0.0005 * w.max(h) as f32;
    let borderline = |d: &Det| d.score < min_score + tol.score;
    let mut used = vec![false; b.len()];
    for d in a {
        let best = b
            .iter()
            .enumerate()
            .filter(|(i, e)| !used[*i] && e.class == d.class)
            .min_by(|(_, x), (_, y)| px(d, x).total_cmp(&px(d, y)));
        match best {
            Some((i, e)) if px(d, e) <= tol.px + slack => {
                if (d.score - e.score).abs() > tol.score {
                    return Err(format!("score: {d:?} vs {e:?}"));
                }
                used[i] = true;
            }
            _ if borderline(d) => {}
            Some((_, e)) => return Err(format!("box: {d:?}, nearest {e:?}")),
            None => return Err(format!("missing on the other side: {d:?}")),
        }
    }
    match b.iter().zip(&used).find(|(e, u)| !**u && !borderline(e)) {
        Some((e, _)) => Err(format!("only on the other side: {e:?}")),
        None => Ok(()),
    }
}

/// Width and height of a PNG (its IHDR chunk).
fn png_size(path: &Path) -> Result<(u32, u32)> {
    let b = std::fs::read(path)?;
    ensure!(
        b.len() > 24 && &b[1..4] == b"PNG" && &b[12..16] == b"IHDR",
        "{} is not a PNG",
        path.display()
    );
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Ok((be(16), be(20)))
}

/// Frame 100 of `vtest.avi` (a dozen people on the plaza) as a PNG, made once with the host's
/// GStreamer: a picture with many detections, decoded losslessly on both architectures.
fn plaza_picture(root: &Path) -> Result<PathBuf> {
    let png = root.join(".cache/media/vtest-frame100.png");
    if png.exists() {
        return Ok(png);
    }
    let dir = root.join(".cache/media/vtest-frame100.part");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    step("making .cache/media/vtest-frame100.png (frame 100 of vtest.avi)");
    run(Command::new("gst-launch-1.0").args([
        "-q",
        "filesrc",
        "location=/usr/share/doc/opencv-doc/examples/data/vtest.avi",
        "!",
        "decodebin",
        "!",
        "videoconvert",
        "!",
        "identity",
        "eos-after=101",
        "!",
        "pngenc",
        "!",
        "multifilesink",
        "max-files=1",
        &format!("location={}/f%05d.png", dir.display()),
    ]))?;
    let last = dir.join("f00100.png");
    ensure!(last.exists(), "{} was not written", last.display());
    std::fs::rename(&last, &png)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(png)
}

fn output(mut cmd: Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {shown}"))
}

/// `cargo xtask arm64-check [--amd64 PATH]`: sets up, cross-builds, and runs the arm64 `vigil` under qemu-user
/// beside the native one: `--version`, `check-config` on every config of the corpus (same exit
/// code, same stdout and stderr), `detect` on two pictures (same detections within
/// [`TOLERANCE`]). Prints each step's time.
pub fn arm64_check(root: &Path, args: &[String]) -> Result<()> {
    // `--amd64 PATH`: compare with that native binary (e.g. a CI build's) instead of building
    // one here.
    let given = match args {
        [] => None,
        [flag, path] if flag == "--amd64" => Some(PathBuf::from(path)),
        _ => bail!("usage: cargo xtask arm64-check [--amd64 PATH-OF-A-NATIVE-VIGIL]"),
    };
    let t0 = Instant::now();
    let mut times: Vec<(String, f64)> = Vec::new();
    let mut lap = |name: &str, t: &mut Instant| {
        times.push((name.to_string(), t.elapsed().as_secs_f64()));
        *t = Instant::now();
    };
    let mut t = Instant::now();
    crate::assets::setup(root)?;
    lap("setup (assets)", &mut t);
    setup_arm64(root)?;
    lap("setup (arm64)", &mut t);
    let native = match given {
        Some(p) => {
            ensure!(p.exists(), "{} does not exist", p.display());
            step(&format!("the native vigil: {}", p.display()));
            p
        }
        None => build(root, Arch::Amd64)?,
    };
    lap("build amd64", &mut t);
    let arm = build(root, Arch::Arm64)?;
    lap("build arm64", &mut t);
    let ort = [ort_lib(root, Arch::Amd64)?, ort_lib(root, Arch::Arm64)?];
    lap("ONNX Runtime", &mut t);
    let arches = [(Arch::Amd64, &native), (Arch::Arm64, &arm)];
    let vigil = |i: usize| -> Result<Command> {
        let (arch, bin) = arches[i];
        let mut c = runner(root, arch, bin)?;
        c.current_dir(root)
            .env("ORT_DYLIB_PATH", &ort[i])
            .env("VIGIL_LOG", "warn");
        Ok(c)
    };

    // 1. --version
    let mut versions = Vec::new();
    for (i, (arch, _)) in arches.iter().enumerate() {
        let mut c = vigil(i)?;
        c.arg("--version");
        let out = output(c)?;
        ensure!(
            out.status.success(),
            "vigil --version ({}) failed: {}",
            arch.debian(),
            String::from_utf8_lossy(&out.stderr)
        );
        versions.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    ensure!(
        versions[0] == versions[1],
        "vigil --version: amd64 {:?}, arm64 {:?}",
        versions[0],
        versions[1]
    );
    step(&format!("vigil --version: {} (both)", versions[1]));
    lap("--version", &mut t);

    // 2. check-config on the corpus
    let mut files = Vec::new();
    for dir in [
        "tests/data/bad-configs",
        "crates/vigil-fuzz/corpus/config",
        "configs",
    ] {
        let mut in_dir: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .with_context(|| dir.to_string())?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
            .map(|p| p.strip_prefix(root).map(Path::to_path_buf).unwrap_or(p))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    let (mut ok, mut errors) = (0, 0);
    let mut differ = Vec::new();
    for f in &files {
        let outs: Vec<Output> = (0..2)
            .map(|i| {
                let mut c = vigil(i)?;
                c.arg("check-config").arg(f);
                output(c)
            })
            .collect::<Result<_>>()?;
        let (a, b) = (&outs[0], &outs[1]);
        if a.status.code() != b.status.code() || a.stdout != b.stdout || a.stderr != b.stderr {
            differ.push(format!(
                "{}: amd64 {:?} {:?}, arm64 {:?} {:?}",
                f.display(),
                a.status.code(),
                String::from_utf8_lossy(&a.stderr),
                b.status.code(),
                String::from_utf8_lossy(&b.stderr)
            ));
        }
        match a.status.code() {
            Some(0) => ok += 1,
            _ => errors += 1,
        }
    }
    ensure!(
        differ.is_empty(),
        "check-config differs on {} of {} files:\n{}",
        differ.len(),
        files.len(),
        differ.join("\n")
    );
    step(&format!(
        "vigil check-config: {} files ({ok} ok, {errors} rejected): same exit code, stdout and stderr on both",
        files.len()
    ));
    lap("check-config", &mut t);

    // 3. detect
    let model = root.join("models/nanodet.onnx");
    let pictures = [
        root.join(".cache/media/astronaut.png"),
        plaza_picture(root)?,
    ];
    for pic in &pictures {
        let (w, h) = png_size(pic)?;
        let mut dets = Vec::new();
        for (i, (arch, _)) in arches.iter().enumerate() {
            let mut c = vigil(i)?;
            c.args(["detect", "--threads", "2", "--min-score"])
                .arg(MIN_SCORE.to_string())
                .arg("--model")
                .arg(&model)
                .arg(pic);
            let started = Instant::now();
            let out = output(c)?;
            ensure!(
                out.status.success(),
                "vigil detect ({}) failed: {}",
                arch.debian(),
                String::from_utf8_lossy(&out.stderr)
            );
            let d = parse_detections(&String::from_utf8_lossy(&out.stdout))?;
            println!(
                "{} {} ({:.1}s): {} detections",
                arch.debian(),
                pic.file_name().unwrap_or_default().to_string_lossy(),
                started.elapsed().as_secs_f64(),
                d.len()
            );
            dets.push(d);
        }
        println!(
            "  {:<10} {:>6} {:>6}  box amd64 → arm64 (px)",
            "class", "amd64", "arm64"
        );
        for (k, a) in dets[0].iter().enumerate() {
            let b = dets[1].get(k);
            let px = |d: &Det| {
                format!(
                    "{:.0},{:.0},{:.0},{:.0}",
                    d.bbox[0] * w as f32,
                    d.bbox[1] * h as f32,
                    d.bbox[2] * w as f32,
                    d.bbox[3] * h as f32
                )
            };
            println!(
                "  {:<10} {:>6.3} {:>6}  {} → {}",
                a.class,
                a.score,
                b.map(|b| format!("{:.3}", b.score)).unwrap_or_default(),
                px(a),
                b.map(px).unwrap_or_default()
            );
        }
        same_detections(&dets[0], &dets[1], (w, h), MIN_SCORE, TOLERANCE).map_err(|e| {
            anyhow::anyhow!(
                "vigil detect {}: arm64 differs from amd64: {e}",
                pic.display()
            )
        })?;
        step(&format!(
            "vigil detect {}: {} detections, the same on both (boxes within {} px, scores within {})",
            pic.file_name().unwrap_or_default().to_string_lossy(),
            dets[0].len(),
            TOLERANCE.px,
            TOLERANCE.score
        ));
    }
    lap("detect", &mut t);

    println!();
    for (name, s) in &times {
        println!("  {name:<16} {s:>7.1} s");
    }
    step(&format!(
        "arm64 check passed in {:.0}s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class: &str, score: f32, bbox: [f32; 4]) -> Det {
        Det {
            class: class.into(),
            score,
            bbox,
        }
    }

    #[test]
    fn the_arm64_wheel_is_pinned_for_the_version_setup_installs() {
        assert_eq!(
            ORT_ARM64.0,
            crate::assets::ORT_VERSION,
            "pin the aarch64 wheel of the new ONNX Runtime version (its sha256) in ORT_ARM64"
        );
    }

    #[test]
    fn detection_lines_parse() {
        let d = parse_detections("a.png 0 person 0.712 0.020 0.101 0.650 0.998\n\n").unwrap();
        assert_eq!(d, vec![det("person", 0.712, [0.02, 0.101, 0.65, 0.998])]);
        assert!(parse_detections("a.png 0 person 0.7").is_err());
    }

    #[test]
    fn detections_match_within_the_tolerance_in_any_order() {
        let same = |a: &[Det], b: &[Det]| same_detections(a, b, (500, 500), 0.35, TOLERANCE);
        let a = [
            det("person", 0.80, [0.1, 0.1, 0.2, 0.5]),
            det("person", 0.79, [0.5, 0.1, 0.6, 0.5]),
        ];
        // Swapped, a pixel (of 500) off, scores 0.005 off.
        let b = [
            det("person", 0.795, [0.502, 0.1, 0.6, 0.5]),
            det("person", 0.795, [0.1, 0.1, 0.2, 0.5]),
        ];
        assert_eq!(same(&a, &b), Ok(()));
        // Three pixels off.
        let far = [a[0].clone(), det("person", 0.79, [0.506, 0.1, 0.6, 0.5])];
        assert!(same(&a, &far).is_err());
        // Another class, one missing, one more, another score.
        let class = [a[0].clone(), det("car", 0.79, [0.5, 0.1, 0.6, 0.5])];
        assert!(same(&a, &class).is_err());
        assert!(same(&a, &a[..1]).is_err());
        assert!(same(&a[..1], &a).is_err());
        let score = [a[0].clone(), det("person", 0.77, [0.5, 0.1, 0.6, 0.5])];
        assert!(same(&a, &score).is_err());
        // A detection just above the threshold may be missing on the other side.
        let edge = [a[0].clone(), det("dog", 0.355, [0.7, 0.7, 0.8, 0.8])];
        assert_eq!(same(&edge, &a[..1]), Ok(()));
        assert_eq!(same(&a[..1], &edge), Ok(()));
    }

    #[test]
    fn the_cross_environment_names_the_target_and_the_sysroot() {
        let env = build_env(Path::new("/r"), Arch::Arm64);
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{k} not set"))
        };
        assert_eq!(
            get("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"),
            "aarch64-linux-gnu-gcc"
        );
        assert_eq!(
            get("PKG_CONFIG_SYSROOT_DIR_aarch64_unknown_linux_gnu"),
            "/r/.cache/sysroot-arm64"
        );
        assert_eq!(
            get("PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu"),
            "/r/.cache/sysroot-arm64/usr/lib/aarch64-linux-gnu/pkgconfig:/r/.cache/sysroot-arm64/usr/share/pkgconfig"
        );
        assert_eq!(get("CC_aarch64_unknown_linux_gnu"), "aarch64-linux-gnu-gcc");
        assert!(build_env(Path::new("/r"), Arch::Amd64).is_empty());
        assert_eq!("aarch64".parse::<Arch>().unwrap(), Arch::Arm64);
        assert!("riscv64".parse::<Arch>().is_err());
    }
}
