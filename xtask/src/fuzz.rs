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
//! Built with `--target <host>` so the flags reach the target crates only (build scripts and
//! proc macros are shared with the ordinary release build); the binaries land in
//! `target/<host>/release/fuzz_<target>`. New inputs go to `target/fuzz/corpus/<target>/` (the
//! committed corpus is only read), crashes to `target/fuzz/artifacts/<target>/` (`target/` is
//! `CARGO_TARGET_DIR` when that is set).

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

/// Builds the instrumented targets; returns the folder holding the binaries.
pub fn build(root: &Path) -> Result<std::path::PathBuf> {
    let host = host_triple()?;
    step(&format!(
        "building the fuzz targets with coverage instrumentation (--target {host})"
    ));
    run(cargo()
        .current_dir(root)
        .env("RUSTFLAGS", RUSTFLAGS)
        .args([
            "build",
            "--release",
            "-p",
            "vigil-fuzz",
            "--bins",
            "--target",
        ])
        .arg(&host))?;
    Ok(target_dir(root).join(host).join("release"))
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
    for t in targets {
        step(&format!("fuzz_{t}: {seconds} s"));
        let t0 = Instant::now();
        let execs = run_target(root, &bins, t, seconds)?;
        println!(
            "fuzz_{t}: {execs} executions in {:.0} s, no crash",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
