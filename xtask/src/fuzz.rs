//! `cargo xtask fuzz [--seconds N] [TARGET…]`: builds the libFuzzer targets of
//! `crates/vigil-fuzz` with coverage instrumentation and runs each for N seconds (default 10)
//! on its committed corpus, one after the other; fails on the first crash, timeout or memory
//! blow-up, naming the input libFuzzer saved.
//!
//! Stable Rust, no cargo-fuzz: libFuzzer itself comes from the `libfuzzer-sys` crate (built
//! from its bundled sources with the system C++ compiler, pinned by Cargo.lock), and the
//! instrumentation is LLVM's SanitizerCoverage pass asked for with stable codegen flags
//! (`-Cpasses=sancov-module` and its `-Cllvm-args`), the flags cargo-fuzz passes. What needs
//! nightly is only `-Zsanitizer=address`; the code under test forbids `unsafe`, so panics,
//! overflow checks, timeouts and the RSS limit are what find faults here.
//!
//! Built with `--target <host>` so the flags reach the target crates only (not build scripts
//! and proc macros), in a target folder of its own, `target/fuzz-build/` (Cargo locks a target
//! folder while it builds: there the build can run while the test suite uses `target/`); the
//! binaries land in `target/fuzz-build/<host>/release/fuzz_<target>`. New inputs go to
//! `target/fuzz/corpus/<target>/` (the committed corpus is only read), crashes to
//! `target/fuzz/artifacts/<target>/` (`target/` is `CARGO_TARGET_DIR` when that is set).
//!
//! `cargo xtask test` starts the build in the background as soon as the tests are compiled, at
//! the lowest CPU priority, and runs the targets once the tests have passed
//! ([`Background`]).

use crate::{cargo, run, step};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The targets, as `crates/vigil-fuzz` names them (binary `fuzz_<name>`, corpus
/// `crates/vigil-fuzz/corpus/<name>/`).
pub const TARGETS: [&str; 6] = [
    "config",
    "mqtt_command",
    "ota_manifest",
    "ota_bundle",
    "http_query",
    "nanodet",
];

/// SanitizerCoverage as cargo-fuzz asks for it, plus `cfg(fuzzing)`, debug assertions and
/// overflow checks in the instrumented crates.
const RUSTFLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing -Cdebug-assertions -Coverflow-checks";

fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host line")
}

/// The instrumented build: `cargo build` of the fuzz binaries with the coverage flags, in
/// their own target folder; with the folder that will hold the binaries.
fn build_command(root: &Path) -> Result<(Command, std::path::PathBuf)> {
    let host = host_triple()?;
    let dir = target_dir(root).join("fuzz-build");
    let mut cmd = cargo();
    cmd.current_dir(root)
        .env("RUSTFLAGS", RUSTFLAGS)
        .env("CARGO_TARGET_DIR", &dir)
        .args([
            "build",
            "--release",
            "-p",
            "vigil-fuzz",
            "--bins",
            "--target",
        ])
        .arg(&host);
    Ok((cmd, dir.join(host).join("release")))
}

/// Builds the instrumented targets; returns the folder holding the binaries.
pub fn build(root: &Path) -> Result<std::path::PathBuf> {
    let (mut cmd, bins) = build_command(root)?;
    step("building the fuzz targets with coverage instrumentation");
    run(&mut cmd)?;
    Ok(bins)
}

/// The instrumented build running in the background (`nice -n 19`: it takes the CPU that the
/// tests beside it leave idle), its output in `target/fuzz-build.log`. Killed if dropped
/// before [`Background::wait`] (a failed test ends `cargo xtask test` early).
pub struct Background {
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    bins: std::path::PathBuf,
    t0: Instant,
}

impl Background {
    pub fn start(root: &Path) -> Result<Background> {
        let (cmd, bins) = build_command(root)?;
        let log = target_dir(root).join("fuzz-build.log");
        std::fs::create_dir_all(target_dir(root))?;
        let out = std::fs::File::create(&log)?;
        let mut niced = Command::new("nice");
        niced
            .args(["-n", "19"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => niced.env(k, v),
                None => niced.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            niced.current_dir(d);
        }
        let child = niced
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start the fuzz build (nice, cargo)")?;
        step(&format!(
            "building the fuzz targets in the background (nice -n 19; log {})",
            log.display()
        ));
        Ok(Background {
            child: Some(child),
            log,
            bins,
            t0: Instant::now(),
        })
    }

    /// Waits for the build; the folder holding the binaries, or the build's error with the end
    /// of its log.
    pub fn wait(mut self) -> Result<std::path::PathBuf> {
        let status = self.child.take().expect("waited once").wait()?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "the fuzz build failed ({status}); the end of {}:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        step(&format!(
            "fuzz targets built (in the background, {:.0} s after it started)",
            self.t0.elapsed().as_secs_f64()
        ));
        Ok(self.bins.clone())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Cargo's target folder: `CARGO_TARGET_DIR`, or `target/` in the workspace.
fn target_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Runs `target` for `seconds`; the executions it made.
pub fn run_target(root: &Path, bins: &Path, target: &str, seconds: u64) -> Result<u64> {
    let work = target_dir(root).join("fuzz");
    let (new, artifacts) = (
        work.join("corpus").join(target),
        work.join("artifacts").join(target),
    );
    std::fs::create_dir_all(&new)?;
    std::fs::create_dir_all(&artifacts)?;
    let seeds = root.join("crates/vigil-fuzz/corpus").join(target);
    let out = Command::new(bins.join(format!("fuzz_{target}")))
        .current_dir(root)
        .arg(format!("-max_total_time={seconds}"))
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&new)
        .arg(&seeds)
        .output()
        .with_context(|| format!("cannot start fuzz_{target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz_{target} failed ({}) after {execs} executions; the input is under {}; add it to {} and fix the fault:\n{}",
            out.status,
            artifacts.display(),
            seeds.display(),
            tail.join("\n")
        );
    }
    Ok(execs)
}

/// `cargo xtask fuzz [--seconds N] [TARGET…]`.
pub fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let mut seconds = 10;
    let mut targets: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            seconds = it
                .next()
                .and_then(|n| n.parse().ok())
                .context("--seconds N")?;
        } else if let Some(t) = TARGETS.iter().find(|t| **t == a.as_str()) {
            targets.push(t);
        } else {
            bail!(
                "unknown fuzz target {a:?} (expected one of {})",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let bins = build(root)?;
    run_targets(root, &bins, &targets, seconds)
}

/// Runs each of `targets` for `seconds`, one after the other.
pub fn run_targets(root: &Path, bins: &Path, targets: &[&str], seconds: u64) -> Result<()> {
    for &t in targets {
        step(&format!("fuzz_{t}: {seconds} s"));
        let t0 = Instant::now();
        let execs = run_target(root, bins, t, seconds)?;
        println!(
            "fuzz_{t}: {execs} executions in {:.0} s, no crash",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
