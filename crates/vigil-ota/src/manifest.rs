//! The signed manifest of an OTA bundle: what the bundle is (version, monotonic sequence number,
//! creation and expiry times), where it may be installed (target constraints) and every file it
//! carries (path, size, sha256). Signed with ed25519 over its exact bytes (`manifest.json`).

use super::OtaError;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;
use vigil_core::facts::{BoxFacts, GpuProbe};
pub use vigil_core::keys::{encode_key, parse_public_key, parse_secret_key};

/// The manifest format this build reads and writes.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Free text shown to operators, e.g. `2026.11.2`.
    pub version: String,
    /// Monotonic: a device installs only a higher sequence than its active one, unless the
    /// command explicitly allows a rollback.
    pub sequence: u64,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339; a bundle past it is refused.
    pub expires: String,
    #[serde(default)]
    pub target: Target,
    /// Sorted by path.
    pub files: Vec<FileEntry>,
}

/// Where a bundle may be installed; an absent field means "any".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    /// Lowest Vigil version (`MAJOR.MINOR.PATCH`) that can use the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vigil_version: Option<String>,
    /// `"none"` (CPU-only boxes) or `"nvidia"` (an NVIDIA driver must be present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<String>,
    /// Prefix of the ONNX Runtime version the models were checked with, e.g. `1.32`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ort_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the bundle's `files/` and the slot, e.g. `models/nanodet.onnx`.
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// What the device offers to a bundle's target constraints.
#[derive(Debug, Clone)]
pub struct DeviceFacts {
    pub device_class: String,
    pub vigil_version: String,
    /// `"none"` or `"nvidia"`.
    pub gpu: String,
    /// None: unknown (the runtime library was not loaded); a constraint then fails.
    pub ort_version: Option<String>,
}

impl DeviceFacts {
    /// This box, for the given `[ota] device_class`, from the facts its caller found.
    pub fn of(device_class: &str, facts: &dyn BoxFacts) -> Self {
        Self {
            device_class: device_class.to_string(),
            vigil_version: env!("CARGO_PKG_VERSION").to_string(),
            gpu: match facts.gpu() {
                GpuProbe::Available { .. } => "nvidia",
                GpuProbe::Unavailable(_) => "none",
            }
            .to_string(),
            ort_version: facts.onnxruntime_version(),
        }
    }
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, OtaError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| OtaError::Manifest(format!("manifest.json: {e}")))?;
        if m.format != FORMAT {
            return Err(OtaError::Manifest(format!(
                "manifest.json: format {} (expected {FORMAT})",
                m.format
            )));
        }
        for (i, f) in m.files.iter().enumerate() {
            check_rel_path(&f.path)
                .map_err(|e| OtaError::Manifest(format!("manifest.json: files[{i}].path: {e}")))?;
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(OtaError::Manifest(format!(
                    "manifest.json: files[{i}].sha256: {:?} is not 64 hex digits",
                    f.sha256
                )));
            }
            if m.files[..i].iter().any(|g| g.path == f.path) {
                return Err(OtaError::Manifest(format!(
                    "manifest.json: files[{i}].path: {:?} is listed twice",
                    f.path
                )));
            }
        }
        if m.files.is_empty() {
            return Err(OtaError::Manifest(
                "manifest.json: no files (expected at least one)".into(),
            ));
        }
        Ok(m)
    }

    /// The canonical bytes that are signed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Expiry against `now`.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), OtaError> {
        let expires = humantime::parse_rfc3339_weak(&self.expires).map_err(|e| {
            OtaError::Manifest(format!("manifest.json: expires {:?}: {e}", self.expires))
        })?;
        if now > expires {
            return Err(OtaError::Expired(self.expires.clone()));
        }
        Ok(())
    }

    /// Target constraints against this device.
    pub fn check_target(&self, dev: &DeviceFacts) -> Result<(), OtaError> {
        let t = &self.target;
        let wrong = |what: &str, want: &str, have: &str| {
            Err(OtaError::Target(format!(
                "{what}: the bundle is for {want:?}, this device is {have:?}"
            )))
        };
        if let Some(c) = &t.device_class
            && c != &dev.device_class
        {
            return wrong("device_class", c, &dev.device_class);
        }
        if let Some(v) = &t.min_vigil_version {
            let (need, have) = (parse_version(v)?, parse_version(&dev.vigil_version)?);
            if have < need {
                return Err(OtaError::Target(format!(
                    "min_vigil_version: the bundle needs Vigil {v} or later, this device runs {}",
                    dev.vigil_version
                )));
            }
        }
        if let Some(g) = &t.gpu
            && g != &dev.gpu
        {
            return wrong("gpu", g, &dev.gpu);
        }
        if let Some(o) = &t.ort_version {
            let have = dev.ort_version.as_deref().unwrap_or("unknown");
            let matches = have == o || have.starts_with(&format!("{o}."));
            if !matches {
                return wrong("ort_version", o, have);
            }
        }
        Ok(())
    }
}

fn parse_version(v: &str) -> Result<(u64, u64, u64), OtaError> {
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [Some(a), Some(b), Some(c)] => Ok((*a, *b, *c)),
        _ => Err(OtaError::Manifest(format!(
            "version {v:?} is not MAJOR.MINOR.PATCH"
        ))),
    }
}

/// A relative path of normal components only (no `..`, no absolute path, no empty or `.`
/// component, no backslash or NUL).
pub fn check_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.starts_with('/') {
        return Err(format!("{p:?} is absolute (expected a relative path)"));
    }
    if p.contains('\\') || p.contains('\0') {
        return Err(format!("{p:?} contains a backslash or NUL"));
    }
    for c in p.split('/') {
        match c {
            "" | "." => return Err(format!("{p:?} has an empty or \".\" component")),
            ".." => return Err(format!("{p:?} escapes its directory (\"..\")")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks `sig` over `manifest` against the trusted keys; returns the index of the key that
/// signed it.
pub fn verify_signature(
    manifest: &[u8],
    sig: &[u8],
    trusted: &[VerifyingKey],
) -> Result<usize, OtaError> {
    let sig: [u8; 64] = sig.try_into().map_err(|_| {
        OtaError::Signature(format!("manifest.sig is {} bytes (expected 64)", sig.len()))
    })?;
    let sig = Signature::from_bytes(&sig);
    if trusted.is_empty() {
        return Err(OtaError::Signature(
            "no trusted keys configured ([ota] trusted_keys is empty)".into(),
        ));
    }
    trusted
        .iter()
        .position(|k| k.verify(manifest, &sig).is_ok())
        .ok_or_else(|| {
            OtaError::Signature(format!(
                "manifest.sig does not verify with any of the {} trusted key(s)",
                trusted.len()
            ))
        })
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    #[test]
    fn relative_paths_only() {
        assert!(check_rel_path("models/a.onnx").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn any_trusted_key_verifies_so_keys_can_rotate() {
        use ed25519_dalek::Signer;
        let (old, new) = (
            SigningKey::from_bytes(&[1; 32]),
            SigningKey::from_bytes(&[2; 32]),
        );
        let bytes = b"{\"manifest\": 1}";
        let sig = new.sign(bytes).to_bytes();
        let both = [old.verifying_key(), new.verifying_key()];
        assert_eq!(verify_signature(bytes, &sig, &both).unwrap(), 1);
        let e = verify_signature(bytes, &sig, &both[..1]).unwrap_err();
        assert_eq!(e.kind(), "signature");
        let e = verify_signature(b"{\"manifest\": 2}", &sig, &both).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        let round = parse_public_key(&encode_key(new.verifying_key().as_bytes())).unwrap();
        assert_eq!(round, new.verifying_key());
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("0.10.0").unwrap() > parse_version("0.9.9").unwrap());
        assert!(parse_version("1.2").is_err());
    }
}
