//! The signed manifest of an OTA bundle: what the bundle is (version, monotonic sequence number,
//! creation and expiry times), where it may be installed (target constraints) and every file it
//! carries (path, size, sha256). Signed with ed25519 over its exact bytes (`manifest.json`).

use super::OtaError;
use super::text::quote;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::{Duration, SystemTime};
use vigil_core::facts::{BoxFacts, GpuProbe};
pub use vigil_core::keys::{encode_key, parse_public_key, parse_secret_key};

/// The manifest format this build reads and writes.
pub const FORMAT: u32 = 1;

/// Highest sequence a bundle may have: 2^53 - 1, the largest integer every JSON consumer
/// (JavaScript's numbers) holds exactly. A counter or a Unix time in milliseconds stays far
/// below it; a sequence near 2^64 is a mistake that would leave no room above it (every later
/// bundle would need `allow_rollback`), so it is refused rather than installed.
pub const MAX_SEQUENCE: u64 = (1 << 53) - 1;

/// Most bytes of a file's path in the manifest (Linux's `PATH_MAX`, counting the slot's own
/// prefix only loosely: a path this long is already refused by the file system).
pub const MAX_PATH: usize = 4096;

/// Most bytes of one part of a path (Linux's `NAME_MAX`).
pub const MAX_PART: usize = 255;

/// Most bytes of the free-text version.
pub const MAX_VERSION: usize = 128;

/// How far a bundle's `created` may be ahead of this device's clock (clocks of boxes and of
/// the machine that signs drift; a bundle created further in the future is refused).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);

/// Names of the slot's own files, which no file of a bundle may take.
pub const RESERVED: [&str; 2] = ["manifest.json", "manifest.sig"];

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
    /// Prefix of the TensorRT version the bundle's prebuilt engines were built with, e.g.
    /// `10.3` (a box without TensorRT refuses such a bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensorrt_version: Option<String>,
    /// The GPU compute capability the prebuilt engines were built for, e.g. `8.7`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
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
    /// TensorRT's version where it is usable; None: no TensorRT (a constraint then fails).
    pub tensorrt_version: Option<String>,
    /// `MAJOR.MINOR` of the GPU; None without one.
    pub compute_capability: Option<String>,
}

impl DeviceFacts {
    /// This box, for the given `[ota] device_class`, from the facts its caller found.
    pub fn of(device_class: &str, facts: &dyn BoxFacts) -> Self {
        Self {
            device_class: device_class.to_string(),
            vigil_version: vigil_core::version::version().to_string(),
            gpu: match facts.gpu() {
                GpuProbe::Available { .. } => "nvidia",
                GpuProbe::Unavailable(_) => "none",
            }
            .to_string(),
            ort_version: facts.onnxruntime_version(),
            tensorrt_version: facts.tensorrt().ok(),
            compute_capability: match facts.gpu() {
                GpuProbe::Available {
                    compute_capability: (a, b),
                    ..
                } => Some(format!("{a}.{b}")),
                GpuProbe::Unavailable(_) => None,
            },
        }
    }
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Self, OtaError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| OtaError::Manifest {
            msg: "manifest.json".into(),
            source: Some(e.into()),
        })?;
        if m.format != FORMAT {
            return Err(OtaError::manifest(format!(
                "manifest.json: format {} (expected {FORMAT})",
                m.format
            )));
        }
        let mut paths = HashSet::with_capacity(m.files.len());
        for (i, f) in m.files.iter().enumerate() {
            check_rel_path(&f.path).map_err(|e| OtaError::Manifest {
                msg: format!("manifest.json: files[{i}].path"),
                source: Some(e.into()),
            })?;
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(OtaError::manifest(format!(
                    "manifest.json: files[{i}].sha256: {} is not 64 hex digits",
                    quote(&f.sha256)
                )));
            }
            if RESERVED.contains(&f.path.as_str()) {
                return Err(OtaError::manifest(format!(
                    "manifest.json: files[{i}].path: {} is reserved (the slot keeps the signed manifest under that name)",
                    quote(&f.path)
                )));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(OtaError::manifest(format!(
                    "manifest.json: files[{i}].path: {} is listed twice",
                    quote(&f.path)
                )));
            }
        }
        // A file may not also be a directory of another one's path ("a" and "a/b").
        for (i, f) in m.files.iter().enumerate() {
            let dirs = f.path.match_indices('/').map(|(at, _)| &f.path[..at]);
            if let Some(dir) = dirs.into_iter().find(|d| paths.contains(d)) {
                return Err(OtaError::manifest(format!(
                    "manifest.json: files[{i}].path: {} is inside {}, which is also listed as a file (a path cannot be both a file and a directory)",
                    quote(&f.path),
                    quote(dir)
                )));
            }
        }
        if m.files.is_empty() {
            return Err(OtaError::manifest(
                "manifest.json: no files (expected at least one)",
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
        let expires = self.time("expires", &self.expires)?;
        if now > expires {
            return Err(OtaError::Expired(super::text::bounded(
                &self.expires,
                super::text::MAX_NAME,
            )));
        }
        Ok(())
    }

    /// `created` is an RFC 3339 date, not after `expires`, and not ahead of `now` by more than
    /// [`MAX_CLOCK_SKEW`].
    pub fn check_created(&self, now: SystemTime) -> Result<(), OtaError> {
        let created = self.time("created", &self.created)?;
        let expires = self.time("expires", &self.expires)?;
        if created > expires {
            return Err(OtaError::manifest(format!(
                "manifest.json: created {} is after it expires ({}) (expected created <= expires)",
                quote(&self.created),
                quote(&self.expires)
            )));
        }
        if created > now + MAX_CLOCK_SKEW {
            return Err(OtaError::manifest(format!(
                "manifest.json: created {} is in the future (this device's clock says {}; expected at most {} ahead)",
                quote(&self.created),
                humantime::format_rfc3339_seconds(now),
                humantime::format_duration(MAX_CLOCK_SKEW)
            )));
        }
        Ok(())
    }

    /// The sequence is at most [`MAX_SEQUENCE`] and the version at most [`MAX_VERSION`] bytes.
    pub fn check_sequence(&self) -> Result<(), OtaError> {
        if self.sequence > MAX_SEQUENCE {
            return Err(OtaError::manifest(format!(
                "manifest.json: sequence {} is too large (expected at most {MAX_SEQUENCE} = 2^53 - 1)",
                self.sequence
            )));
        }
        if self.version.len() > MAX_VERSION {
            return Err(OtaError::manifest(format!(
                "manifest.json: version is {} bytes long (expected at most {MAX_VERSION})",
                self.version.len()
            )));
        }
        Ok(())
    }

    fn time(&self, field: &str, value: &str) -> Result<SystemTime, OtaError> {
        humantime::parse_rfc3339_weak(value).map_err(|e| OtaError::Manifest {
            msg: format!("manifest.json: {field} {}", quote(value)),
            source: Some(e.into()),
        })
    }

    /// Target constraints against this device.
    pub fn check_target(&self, dev: &DeviceFacts) -> Result<(), OtaError> {
        let t = &self.target;
        let wrong = |what: &str, want: &str, have: &str| {
            Err(OtaError::Target(format!(
                "{what}: the bundle is for {}, this device is {}",
                quote(want),
                quote(have)
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
                    "min_vigil_version: the bundle needs Vigil {} or later, this device runs {}",
                    super::text::bounded(v, super::text::MAX_NAME),
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
        if let Some(t) = &t.tensorrt_version {
            let have = dev.tensorrt_version.as_deref().unwrap_or("no TensorRT");
            if !(have == t || have.starts_with(&format!("{t}."))) {
                return wrong("tensorrt_version", t, have);
            }
        }
        if let Some(c) = &t.compute_capability {
            let have = dev.compute_capability.as_deref().unwrap_or("no GPU");
            if have != c {
                return wrong("compute_capability", c, have);
            }
        }
        Ok(())
    }
}

fn parse_version(v: &str) -> Result<(u64, u64, u64), OtaError> {
    let core = v.split(['-', '+', '~']).next().unwrap_or(v);
    let parts: Vec<Option<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [Some(a), Some(b), Some(c)] => Ok((*a, *b, *c)),
        _ => Err(OtaError::manifest(format!(
            "version {} is not MAJOR.MINOR.PATCH",
            quote(v)
        ))),
    }
}

/// Why a path is not a plain relative path (each path shown quoted and bounded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("{0} is absolute (expected a relative path)")]
    Absolute(String),
    #[error("{0} contains a backslash or NUL")]
    BackslashOrNul(String),
    #[error("{0} has an empty or \".\" component")]
    EmptyPart(String),
    #[error("{0} escapes its directory (\"..\")")]
    Escapes(String),
    #[error("{path} is {len} bytes long (expected at most {MAX_PATH})")]
    TooLong { path: String, len: usize },
    #[error("{path} has a part of {len} bytes (expected at most {MAX_PART})")]
    PartTooLong { path: String, len: usize },
}

/// A relative path of normal components only (no `..`, no absolute path, no empty or `.`
/// component, no backslash or NUL), at most [`MAX_PATH`] bytes with parts of at most
/// [`MAX_PART`].
pub fn check_rel_path(p: &str) -> Result<(), PathError> {
    if p.is_empty() {
        return Err(PathError::Empty);
    }
    if p.len() > MAX_PATH {
        return Err(PathError::TooLong {
            path: quote(p),
            len: p.len(),
        });
    }
    if p.starts_with('/') {
        return Err(PathError::Absolute(quote(p)));
    }
    if p.contains('\\') || p.contains('\0') {
        return Err(PathError::BackslashOrNul(quote(p)));
    }
    for c in p.split('/') {
        match c {
            "" | "." => return Err(PathError::EmptyPart(quote(p))),
            ".." => return Err(PathError::Escapes(quote(p))),
            c if c.len() > MAX_PART => {
                return Err(PathError::PartTooLong {
                    path: quote(p),
                    len: c.len(),
                });
            }
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

    /// A manifest with one file, the given sequence and times.
    fn manifest(sequence: u64, created: &str, expires: &str) -> Manifest {
        Manifest {
            format: FORMAT,
            version: "v".into(),
            sequence,
            created: created.into(),
            expires: expires.into(),
            target: Target::default(),
            files: vec![FileEntry {
                path: "models/a.onnx".into(),
                size: 1,
                sha256: "0".repeat(64),
            }],
        }
    }

    fn device() -> DeviceFacts {
        DeviceFacts {
            device_class: "generic".into(),
            vigil_version: "0.1.0".into(),
            gpu: "none".into(),
            ort_version: None,
            tensorrt_version: None,
            compute_capability: None,
        }
    }

    #[test]
    fn tensorrt_targets_need_that_tensorrt_and_gpu() {
        let mut m = manifest(5, "2026-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
        m.target.tensorrt_version = Some("10.3".into());
        m.target.compute_capability = Some("8.7".into());
        let e = m.check_target(&device()).unwrap_err().to_string();
        assert!(
            e.contains("tensorrt_version") && e.contains("no TensorRT"),
            "{e}"
        );
        let orin = DeviceFacts {
            gpu: "nvidia".into(),
            tensorrt_version: Some("10.3.0".into()),
            compute_capability: Some("8.7".into()),
            ..device()
        };
        assert!(m.check_target(&orin).is_ok());
        let h200 = DeviceFacts {
            compute_capability: Some("9.0".into()),
            ..orin.clone()
        };
        let e = m.check_target(&h200).unwrap_err().to_string();
        assert!(e.contains("compute_capability"), "{e}");
        let newer = DeviceFacts {
            tensorrt_version: Some("10.30.1".into()),
            ..orin
        };
        assert!(
            m.check_target(&newer).is_err(),
            "10.3 is not a prefix of 10.30"
        );
    }

    #[test]
    fn created_must_be_a_date_before_expires_and_not_in_the_future() {
        let ok = manifest(5, "2026-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
        assert!(crate::check_policy(&ok, &device(), None, false).is_ok());
        for (created, expires, needle) in [
            (
                "not a date",
                "2099-01-01T00:00:00Z",
                "created \"not a date\"",
            ),
            (
                "2099-02-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "after it expires",
            ),
            (
                "2098-01-01T00:00:00Z",
                "2099-01-01T00:00:00Z",
                "in the future",
            ),
        ] {
            let m = manifest(5, created, expires);
            let e = crate::check_policy(&m, &device(), None, false)
                .expect_err(&format!("created {created} accepted"));
            assert_eq!(e.kind(), "manifest", "{created}: {e}");
            assert!(e.to_string().contains(needle), "{created}: {e}");
        }
    }

    #[test]
    fn a_sequence_beyond_the_cap_is_refused() {
        let times = ("2026-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
        assert!(
            crate::check_policy(
                &manifest((1 << 53) - 1, times.0, times.1),
                &device(),
                None,
                false
            )
            .is_ok()
        );
        for seq in [1 << 53, u64::MAX] {
            let e = crate::check_policy(&manifest(seq, times.0, times.1), &device(), None, false)
                .expect_err("accepted");
            assert_eq!(e.kind(), "manifest", "{e}");
            assert!(
                e.to_string().contains("expected at most 9007199254740991"),
                "{e}"
            );
        }
    }

    #[test]
    fn paths_the_box_cannot_stage_are_refused_by_the_manifest_itself() {
        let with = |paths: &[&str]| {
            let mut m = manifest(5, "2026-01-01T00:00:00Z", "2099-01-01T00:00:00Z");
            m.files = paths
                .iter()
                .map(|p| FileEntry {
                    path: p.to_string(),
                    size: 1,
                    sha256: "0".repeat(64),
                })
                .collect();
            Manifest::parse(&m.to_bytes())
        };
        assert!(with(&["models/a.onnx", "config.toml"]).is_ok());
        let long = format!("{}/x", "d/".repeat(2100));
        let part = "p".repeat(256);
        for (paths, needle) in [
            (vec![long.as_str()], "expected at most 4096"),
            (vec![part.as_str()], "expected at most 255"),
            (vec!["manifest.json"], "reserved"),
            (vec!["manifest.sig"], "reserved"),
            (
                vec!["models", "models/a.onnx"],
                "both a file and a directory",
            ),
            (
                vec!["models/a.onnx", "models"],
                "both a file and a directory",
            ),
        ] {
            let e = with(&paths).expect_err(&format!("{paths:.60?} accepted"));
            assert_eq!(e.kind(), "manifest");
            let text = e.reason();
            assert!(text.contains(needle), "{text:.300}");
            assert!(text.len() < 1024, "{} bytes of text", text.len());
        }
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("0.10.0").unwrap() > parse_version("0.9.9").unwrap());
        assert!(parse_version("1.2").is_err());
        // Packaged releases (vigil-core's version stamp): the suffix is not compared.
        for v in ["0.1.0+next1", "0.1.0-3", "0.1.0~rc1"] {
            assert_eq!(parse_version(v).unwrap(), (0, 1, 0), "{v}");
        }
    }
}
