//! Coverage-guided fuzz targets for every parser that faces the outside: the config (TOML,
//! validation, the OTA overlay merge, the diff against a running config), MQTT command payloads,
//! the OTA manifest and bundle (tar) reader, the HTTP API's paths and queries, and the NanoDet
//! decoder fed hostile tensors.
//!
//! Each target is a function `run(&[u8])` here that must never panic, hang or use unbounded
//! memory for any input; `src/bin/<target>.rs` hands it to libFuzzer. `cargo xtask fuzz` builds
//! the binaries with coverage instrumentation on the stable toolchain and runs them on the
//! committed corpora (`corpus/<target>/`); the unit tests below replay every corpus file, so a
//! crash once found stays a regression test.
#![forbid(unsafe_code)]

pub mod commands;
pub mod config;
pub mod http;
pub mod nanodet;
pub mod ota;

use std::path::PathBuf;

/// A target's body: one input, which must not make it panic.
pub type Target = fn(&[u8]);

/// Every target: its name (binary `fuzz_<name>`, corpus `corpus/<name>/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config::run),
    ("mqtt_command", commands::run),
    ("ota_manifest", ota::run_manifest),
    ("ota_bundle", ota::run_bundle),
    ("http_query", http::run),
    ("nanodet", nanodet::run),
];

/// A scratch directory of this process for `what` (created), on `/dev/shm` where there is one
/// (the targets that write files then do not wait on a disk's fsync).
pub fn scratch(what: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| remove_stale(&base));
    let dir = base.join(format!("vigil-fuzz-{}-{what}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// Removes the scratch directories of processes that are gone (test runs leave theirs).
fn remove_stale(base: &std::path::Path) {
    for e in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("vigil-fuzz-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The committed corpus of a target.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed input (seeds, and the inputs of crashes found and fixed) still runs
    /// through its target without a panic.
    #[test]
    fn every_corpus_file_replays_without_a_panic() {
        for (name, run) in TARGETS {
            let dir = corpus_dir(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{}: no seed", dir.display());
            for f in files {
                let data = std::fs::read(&f).unwrap();
                eprintln!("{name}: {}", f.display());
                run(&data);
            }
        }
    }
}

/// Writes the seeds that are not plain text (signed bundles, a manifest, decoder inputs) into
/// `corpus/`: `cargo test -p vigil-fuzz --release -- --ignored write_seeds`.
#[cfg(test)]
mod seeds {
    use super::*;
    use ed25519_dalek::SigningKey;
    use std::time::Duration;
    use vigil_ota::bundle::{PackInfo, pack};
    use vigil_ota::manifest::Target;

    fn bundle(name: &str, files: &[(&str, &[u8])], target: Target) {
        let src = scratch("seeds").join(name);
        let _ = std::fs::remove_dir_all(&src);
        for (path, bytes) in files {
            let p = src.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let info = PackInfo {
            version: "2026.12.0".into(),
            sequence: 7,
            valid_for: Duration::from_secs(100 * 365 * 86400),
            target,
        };
        let out = corpus_dir("ota_bundle").join(format!("{name}.vigil"));
        let key = SigningKey::from_bytes(&ota::SEED_KEY);
        let m = pack(&src, &key, &info, &out).unwrap();
        let manifest = corpus_dir("ota_manifest").join(format!("{name}.json"));
        std::fs::write(manifest, m.to_bytes()).unwrap();
        let _ = std::fs::remove_dir_all(&src);
    }

    /// A decoder input that selects NanoDet's layout for a fixed `size` input (20 × 32 at
    /// most), then outputs of the shapes' lengths; `fill` bytes follow for the values.
    fn nanodet(name: &str, size_byte: u8, dynamic: bool, fill: &[u8]) {
        let mut d = vec![size_byte, if dynamic { 0 } else { 1 }];
        for i in 0..6 {
            d.extend([2, 2, if i % 2 == 0 { 0 } else { 2 }]);
        }
        d.extend(640u16.to_le_bytes());
        d.extend(480u16.to_le_bytes());
        for _run in 0..2 {
            d.extend([1, 0].repeat(6));
        }
        d.extend(fill);
        std::fs::write(corpus_dir("nanodet").join(name), d).unwrap();
    }

    #[test]
    #[ignore = "writes the committed seeds; run by hand"]
    fn write_seeds() {
        for t in ["ota_bundle", "ota_manifest", "nanodet"] {
            std::fs::create_dir_all(corpus_dir(t)).unwrap();
        }
        let overlay = b"[models.nanodet]\npath = \"models/tiny.onnx\"\nkind = \"nanodet\"\n";
        bundle(
            "model-and-overlay",
            &[
                ("config.toml", overlay),
                ("models/tiny.onnx", b"\x08\x07onnx"),
            ],
            Target::default(),
        );
        bundle(
            "targeted",
            &[("config.toml", b"[ota]\nprobation = \"30s\"\n")],
            Target {
                device_class: Some("default".into()),
                min_vigil_version: Some("0.1.0".into()),
                gpu: Some("none".into()),
                ort_version: Some("1.22".into()),
                ..Target::default()
            },
        );
        nanodet("fixed-320-zeros", 9, false, &[]);
        nanodet("dynamic-416-scores", 12, true, &[4, 1, 5, 0x00, 0x04, 3, 2]);
    }
}
