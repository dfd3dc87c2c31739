//! Targets `ota_manifest` and `ota_bundle`: what an update server (or anyone who can publish
//! `cmd/ota/apply` with a URL of their own) hands the box.
//!
//! `ota_manifest`: `manifest.json` bytes through `Manifest::parse` and every check decided from
//! the manifest alone (expiry, sequence against an active set, target), then the canonical bytes
//! parsed back. `ota_bundle`: a whole bundle file through `bundle::read_bundle`, staging into a
//! scratch directory, with one trusted key whose secret is [`SEED_KEY`]: the committed seed
//! bundles are signed with it, so mutations of their tar headers and files get past the
//! signature, while other inputs exercise the refusals before it. A bundle that stages goes on
//! to the box's next checks (`check_staged`: the device config merged with the set's overlay,
//! the key floor).

use ed25519_dalek::SigningKey;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;
use vigil_core::facts::KnownFacts;
use vigil_ota::manifest::{DeviceFacts, Manifest};
use vigil_ota::store::SlotInfo;

/// The secret key the `ota_bundle` seeds are signed with (fuzzing only; trusted by nothing else).
pub const SEED_KEY: [u8; 32] = [7; 32];

/// Most bytes of one staged file.
const MAX_FILE: u64 = 1 << 20;

fn device() -> DeviceFacts {
    DeviceFacts {
        device_class: "default".into(),
        vigil_version: "0.1.0".into(),
        gpu: "none".into(),
        ort_version: Some("1.22.0".into()),
        tensorrt_version: None,
        compute_capability: None,
    }
}

fn active() -> SlotInfo {
    SlotInfo {
        slot: "s-active".into(),
        sequence: 5,
        version: "2026.1.0".into(),
    }
}

pub fn run_manifest(data: &[u8]) {
    let Ok(m) = Manifest::parse(data) else {
        return;
    };
    let _ = vigil_ota::check_manifest(&m, SystemTime::now());
    let _ = m.check_expiry(SystemTime::now());
    let _ = m.check_target(&device());
    for rollback in [false, true] {
        let _ = vigil_ota::check_policy(&m, &device(), Some(&active()), rollback);
    }
    let _ = vigil_ota::check_policy(&m, &device(), None, false);
    for f in &m.files {
        let _ = m.file(&f.path);
    }
    let again = Manifest::parse(&m.to_bytes()).expect("a parsed manifest's own bytes parse");
    assert_eq!(again, m, "the canonical bytes do not round-trip");
}

pub fn run_bundle(data: &[u8]) {
    static TRUSTED: OnceLock<Vec<ed25519_dalek::VerifyingKey>> = OnceLock::new();
    let trusted = TRUSTED.get_or_init(|| vec![SigningKey::from_bytes(&SEED_KEY).verifying_key()]);
    let stage = crate::scratch("bundle").join("stage");
    let _ = std::fs::remove_dir_all(&stage);
    let result = vigil_ota::bundle::read_bundle(
        data,
        trusted,
        MAX_FILE,
        |m| vigil_ota::check_policy(m, &device(), Some(&active()), false),
        Some(&stage),
        |_| {},
    );
    match result {
        // What the box checks next of a staged set: the device config with the set's overlay
        // (model paths inside the set, no table the device owns), and the key floor.
        Ok(verified) => {
            let seq = verified.manifest.sequence;
            let facts = KnownFacts::cpu_only();
            let config = base_config();
            for floor in [0, u64::MAX] {
                let _ = vigil_ota::check_staged(&config, &stage, &facts, seq, &[], floor);
            }
        }
        Err(e) => {
            let _ = (e.kind(), e.reason());
        }
    }
    let _ = std::fs::remove_dir_all(&stage);
}

/// The device's config file a staged set's overlay is merged over (written once).
fn base_config() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = crate::scratch("bundle-base");
        let model = dir.join("base.onnx");
        std::fs::write(&model, b"").expect("model file");
        let path = dir.join("vigil.toml");
        let text = format!(
            "[device]\nid = \"fuzz\"\n\n[storage]\ndir = \"{}\"\n\n\
             [models.nanodet]\npath = \"{}\"\nkind = \"nanodet\"\n",
            dir.join("state").display(),
            model.display()
        );
        std::fs::write(&path, text).expect("config file");
        path
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed bundles get past the signature and the policy and stage (so the fuzzer's
    /// mutations of them reach the file checks and `check_staged`), and their overlay loads.
    #[test]
    fn the_seed_bundles_stage_and_their_overlays_load() {
        let trusted = [SigningKey::from_bytes(&SEED_KEY).verifying_key()];
        for name in ["model-and-overlay.vigil", "targeted.vigil"] {
            let bytes = std::fs::read(crate::corpus_dir("ota_bundle").join(name)).unwrap();
            let stage = crate::scratch("bundle-seed-test").join(name);
            let _ = std::fs::remove_dir_all(&stage);
            let verified = vigil_ota::bundle::read_bundle(
                bytes.as_slice(),
                &trusted,
                MAX_FILE,
                |m| vigil_ota::check_policy(m, &device(), Some(&active()), false),
                Some(&stage),
                |_| {},
            )
            .unwrap_or_else(|e| panic!("{name}: {}", e.reason()));
            let seq = verified.manifest.sequence;
            let facts = KnownFacts::cpu_only();
            vigil_ota::check_staged(&base_config(), &stage, &facts, seq, &[], 0)
                .unwrap_or_else(|e| panic!("{name}: {}", e.reason()));
            let _ = std::fs::remove_dir_all(&stage);
        }
    }
}
