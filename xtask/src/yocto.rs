//! The Yocto layer's tasks (`yocto/meta-vigil`, described in yocto/README.md):
//!
//! - `yocto-crates`: writes `vigil-crates.inc`, the vigil recipe's list of every crates.io crate
//!   of `Cargo.lock` (`crate://crates.io/NAME/VERSION` and the lock's sha256), which the Yocto
//!   `cargo` class fetches and vendors. A dependency from git or another registry is refused:
//!   the list would not build.
//! - `yocto-lint`: the committed list matches `Cargo.lock`; oelint-adv (pinned, in
//!   `.cache/yocto-venv`) finds nothing in any recipe, append or include of the layer; the kas
//!   files are valid against kas's own JSON schema. Nothing here runs bitbake: it is not
//!   installable here, and a build fetches from the network (see yocto/README.md).

use crate::{run, step};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The layer, relative to the workspace root.
const LAYER: &str = "yocto/meta-vigil";
/// The generated crate list, relative to the workspace root.
const CRATES_INC: &str = "yocto/meta-vigil/recipes-vigil/vigil/vigil-crates.inc";
/// The kas files, relative to the workspace root.
const KAS_DIR: &str = "yocto/kas";
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// The lint tools and every package they pull in, pinned (`pip freeze` of a fresh venv with
/// `kas==5.5 oelint-adv==9.11.2`).
const LINT_PIP: &[&str] = &[
    "kas==5.5",
    "oelint-adv==9.11.2",
    "oelint-parser==8.13.2",
    "oelint_data==1.5.26",
    "anytree==2.13.0",
    "argcomplete==3.7.2",
    "attrs==26.1.0",
    "colorama==0.4.6",
    "colorlog==6.12.0",
    "Deprecated==1.3.1",
    "distro==1.9.0",
    "gitdb==4.0.12",
    "GitPython==3.2.1",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "PyYAML==6.0.4",
    "referencing==0.37.0",
    "regex==2026.9.29",
    "rpds-py==2026.9.1",
    "smmap==5.0.3",
    "typing_extensions==4.16.0",
    "urllib3==2.8.0",
    "wrapt==2.5.2",
];
/// The version `oelint-adv --version` must print.
const OELINT_VERSION: &str = "9.11.2";

/// oelint-adv's rules that the layer turns off everywhere, each with why (a finding that only
/// one line earns is suppressed on that line instead, with `# nooelint:` and a reason).
const SUPPRESSED: &[(&str, &str)] = &[
    (
        "oelint.vars.homepageping",
        "pings HOMEPAGE over the network, which CI does not have: the result would depend on the machine",
    ),
    (
        "oelint.var.mandatoryvar.HOMEPAGE",
        "Vigil and the layer's own recipes (image, bundle, data partition) have no public home page; \
         the recipes that package others' work (ONNX Runtime, the model) set theirs",
    ),
    (
        "oelint.var.suggestedvar.BUGTRACKER",
        "no public bug tracker for Vigil; upstream ones are not where a packaging fault goes",
    ),
    (
        "oelint.var.suggestedvar.CVE_PRODUCT",
        "Vigil and the layer's own recipes are not products in the CVE database (onnxruntime-bin sets it)",
    ),
    (
        "oelint.var.bbclassextend",
        "every recipe is for the target only (the service, an image, a bundle, prebuilt binaries); \
         none has a native or nativesdk use",
    ),
    (
        "oelint.vars.specific",
        "the `tegra` override comes from meta-tegra's machine configurations, which oelint-adv's \
         layer data does not include",
    ),
    (
        "oelint.func.specific",
        "the same `tegra` override, on a function (rauc-conf.bbappend's do_install:append:tegra)",
    ),
    (
        "oelint.vars.noncoreoverride",
        "a Yocto Project Compatible rule for BSP and distro layers; meta-vigil is a product layer, and \
         its rauc-conf.bbappend configures RAUC for every machine it builds, as meta-rauc asks",
    ),
    (
        "oelint.var.mandatoryvar.SRC_URI",
        "the bundle (made from the image) and the GRUB environment (made by grub-editenv) have no sources",
    ),
    (
        "oelint.file.underscores",
        "vigil-bundle.bb is unversioned like meta-rauc's own bundle examples: a bundle's version is \
         RAUC_BUNDLE_VERSION, not PV",
    ),
];

/// One registry crate of `Cargo.lock`.
#[derive(Debug, PartialEq)]
pub struct Crate {
    pub name: String,
    pub version: String,
    pub checksum: String,
}

/// The crates.io crates of a `Cargo.lock` in lock order; workspace members (no `source`) are
/// skipped; a git or other-registry source, or a crate without checksum, is an error.
pub fn lock_crates(lock: &str) -> Result<Vec<Crate>> {
    let mut out = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let rest = l.strip_prefix(key)?.trim_start().strip_prefix('=')?;
                Some(rest.trim().trim_matches('"').to_string())
            })
        };
        let name = field("name").context("Cargo.lock: a [[package]] without name")?;
        let version =
            field("version").with_context(|| format!("Cargo.lock: {name}: no version"))?;
        let Some(source) = field("source") else {
            continue;
        };
        if source != CRATES_IO {
            bail!(
                "Cargo.lock: {name} {version} comes from {source}: the Yocto recipe fetches crates.io crates only (crate://); vendor it, publish it, or teach `cargo xtask yocto-crates` that source"
            );
        }
        let checksum = field("checksum")
            .with_context(|| format!("Cargo.lock: {name} {version}: no checksum"))?;
        if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("Cargo.lock: {name} {version}: checksum {checksum:?} is not a sha256");
        }
        out.push(Crate {
            name,
            version,
            checksum,
        });
    }
    Ok(out)
}

/// The text of `vigil-crates.inc` for `crates`.
pub fn crates_inc(crates: &[Crate]) -> String {
    let mut s = String::from(
        "# Generated by `cargo xtask yocto-crates` from the workspace's Cargo.lock: do not edit.\n\
         # `cargo xtask yocto-lint` (run by `cargo xtask test`) fails when it is out of date.\n\n",
    );
    for c in crates {
        let _ = writeln!(
            s,
            "SRC_URI += \"crate://crates.io/{}/{}\"",
            c.name, c.version
        );
    }
    s.push('\n');
    for c in crates {
        let _ = writeln!(
            s,
            "SRC_URI[{}-{}.sha256sum] = \"{}\"",
            c.name, c.version, c.checksum
        );
    }
    s
}

fn expected_inc(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("reading Cargo.lock")?;
    Ok(crates_inc(&lock_crates(&lock)?))
}

/// `cargo xtask yocto-crates`: writes the crate list.
pub fn yocto_crates(root: &Path) -> Result<()> {
    let text = expected_inc(root)?;
    let n = text.lines().filter(|l| l.contains("crate://")).count();
    std::fs::write(root.join(CRATES_INC), text).with_context(|| format!("writing {CRATES_INC}"))?;
    step(&format!("{CRATES_INC}: {n} crates from Cargo.lock"));
    Ok(())
}

/// Fails when the committed crate list is not what Cargo.lock gives.
pub fn check_crates(root: &Path) -> Result<()> {
    let want = expected_inc(root)?;
    let have = std::fs::read_to_string(root.join(CRATES_INC)).unwrap_or_default();
    if have != want {
        bail!(
            "{CRATES_INC} is out of date with Cargo.lock: run `cargo xtask yocto-crates` and commit the result"
        );
    }
    Ok(())
}

/// The lint virtualenv with the pinned tools; returns its `bin/`.
pub fn lint_tools(root: &Path) -> Result<PathBuf> {
    let venv = root.join(".cache/yocto-venv");
    let bin = venv.join("bin");
    let version = Command::new(bin.join("oelint-adv"))
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if version
        .as_deref()
        .is_some_and(|v| v.ends_with(OELINT_VERSION))
        && bin.join("kas").exists()
    {
        step(&format!(
            "Yocto lint tools (oelint-adv {OELINT_VERSION}, kas): present"
        ));
        return Ok(bin);
    }
    step(
        "installing the Yocto lint tools into .cache/yocto-venv (pinned: kas 5.5, oelint-adv 9.11.2)",
    );
    if !bin.join("python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(bin.join("python"))
        .args(["-m", "pip", "install", "-q", "--no-deps"])
        .args(LINT_PIP))?;
    Ok(bin)
}

/// Every `.bb`, `.bbappend` and `.inc` under `dir`, sorted.
fn recipe_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = e?.path();
            if path.is_dir() {
                todo.push(path);
            } else if path
                .extension()
                .is_some_and(|x| x == "bb" || x == "bbappend" || x == "inc")
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks each kas file against the JSON schema kas ships (offline: `kas dump` would clone the
/// `url:` layers).
fn check_kas(root: &Path, bin: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(KAS_DIR))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    let script = r#"import sys, json, yaml, jsonschema, importlib.resources as r
schema = json.loads(r.files('kas').joinpath('schema-kas.json').read_text())
bad = 0
for f in sys.argv[1:]:
    doc = yaml.safe_load(open(f))
    for e in jsonschema.Draft7Validator(schema).iter_errors(doc):
        print('%s: %s: %s' % (f, '/'.join(map(str, e.path)) or '(top)', e.message))
        bad += 1
sys.exit(1 if bad else 0)
"#;
    run(Command::new(bin.join("python"))
        .arg("-c")
        .arg(script)
        .args(&files))
    .context("a kas file does not match kas's schema")?;
    step(&format!("{} kas files valid (kas 5.5 schema)", files.len()));
    Ok(())
}

/// `cargo xtask yocto-lint`.
pub fn yocto_lint(root: &Path) -> Result<()> {
    check_crates(root)?;
    step(&format!("{CRATES_INC}: up to date with Cargo.lock"));
    let bin = lint_tools(root)?;
    let files = recipe_files(&root.join(LAYER))?;
    let mut cmd = Command::new(bin.join("oelint-adv"));
    cmd.current_dir(root).args([
        "--quiet",
        "--relpaths",
        "--release",
        "scarthgap",
        "--mode",
        "all",
    ]);
    for (rule, _why) in SUPPRESSED {
        cmd.args(["--suppress", rule]);
    }
    // The layers whose variables and classes the recipes use (meta-tegra has no data in
    // oelint-adv); last, since the option takes every argument after it.
    let out = cmd
        .args(&files)
        .args(["--extra-layer", "openembedded-layer", "rauc"])
        .output()
        .context("cannot start oelint-adv")?;
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !findings.trim().is_empty() {
        bail!(
            "oelint-adv: findings in {LAYER} (fix each, or suppress it on its line with `# nooelint: <rule>` and a comment saying why):\n{}",
            findings.trim_end()
        );
    }
    step(&format!(
        "oelint-adv {OELINT_VERSION}: {} files, no findings",
        files.len()
    ));
    check_kas(root, &bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"version = 4

[[package]]
name = "anyhow"
version = "1.0.100"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "a23eb6b1614318a8071c9b2521f36b424b2c83db5eb3a0fead4a6c0809af6e61"

[[package]]
name = "vigil"
version = "0.1.0"
dependencies = [
 "anyhow",
]
"#;

    #[test]
    fn registry_crates_listed_members_skipped() {
        let c = lock_crates(LOCK).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "anyhow");
        let inc = crates_inc(&c);
        assert!(inc.contains("SRC_URI += \"crate://crates.io/anyhow/1.0.100\"\n"));
        assert!(inc.contains(
            "SRC_URI[anyhow-1.0.100.sha256sum] = \"a23eb6b1614318a8071c9b2521f36b424b2c83db5eb3a0fead4a6c0809af6e61\""
        ));
    }

    #[test]
    fn git_source_refused() {
        let lock = LOCK.replace(
            "source = \"registry+https://github.com/rust-lang/crates.io-index\"",
            "source = \"git+https://example.org/anyhow?rev=1#abc\"",
        );
        let e = lock_crates(&lock).unwrap_err().to_string();
        assert!(e.contains("anyhow 1.0.100 comes from git+"), "{e}");
    }
}
