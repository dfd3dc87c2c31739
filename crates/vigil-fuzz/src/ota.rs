//! Targets `ota_manifest` and `ota_bundle`: what an update server (or anyone who can publish
//! `cmd/ota/apply` with a URL of their own) hands the box.
//!
//! `ota_manifest`: `manifest.json` bytes through `Manifest::parse` and every check decided from
//! the manifest alone (expiry, sequence against an active set, target), then the canonical bytes
//! parsed back. `ota_bundle`: a whole bundle file through `bundle::read_bundle`, staging into a
//! scratch directory, with one trusted key whose secret is [`SEED_KEY`]: the committed seed
//! bundles are signed with it, so mutations of their tar headers and files get past the
//! signature, while other inputs exercise the refusals before it.

use ed25519_dalek::SigningKey;
use std::sync::OnceLock;
use std::time::SystemTime;
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
    if let Err(e) = result {
        let _ = (e.kind(), e.to_string());
    }
    let _ = std::fs::remove_dir_all(&stage);
}
