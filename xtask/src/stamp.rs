//! Stamps a release version into a built Vigil binary (the packager's side of
//! `crates/vigil-core/src/version.rs`): `cargo xtask deb/image --version V` packs one build under
//! the package's version, and `vigil --version`, the status topic and the OTA manifest say `V`.
//! The marker and slot size must equal vigil-core's (`MARKER`, `MAX_LEN`); the deb test checks
//! it end to end (a stamped package's `vigil --version`).

use anyhow::{Context, Result, bail};
use std::path::Path;

const MARKER: &[u8] = b"@@vigil-release-version:";
const MAX_LEN: usize = 64;

/// Writes `version` into the version slot of `binary`'s bytes. Fails unless the marker occurs
/// exactly once and `version` fits (1 to 64 bytes; the Debian characters the caller checked).
pub fn stamp_bytes(binary: &mut [u8], version: &str) -> Result<()> {
    if version.is_empty() || version.len() > MAX_LEN || version.contains('\0') {
        bail!("version {version:?}: expected 1 to {MAX_LEN} bytes");
    }
    let at: Vec<usize> = binary
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, w)| *w == MARKER)
        .map(|(i, _)| i)
        .collect();
    let [at] = at[..] else {
        bail!(
            "Vigil's version marker occurs {} times in the binary (expected once: is it a Vigil build?)",
            at.len()
        );
    };
    let Some(slot) = binary.get_mut(at + MARKER.len()..at + MARKER.len() + MAX_LEN) else {
        bail!("the binary ends inside Vigil's version slot");
    };
    slot.fill(0);
    slot[..version.len()].copy_from_slice(version.as_bytes());
    Ok(())
}

/// [`stamp_bytes`] on a file, in place.
pub fn stamp_file(path: &Path, version: &str) -> Result<()> {
    let mut b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    stamp_bytes(&mut b, version).with_context(|| format!("stamping {}", path.display()))?;
    std::fs::write(path, b).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(version: &str) -> Vec<u8> {
        let mut b = b"\x7fELF....".to_vec();
        b.extend_from_slice(MARKER);
        let mut slot = [0u8; MAX_LEN];
        slot[..version.len()].copy_from_slice(version.as_bytes());
        b.extend_from_slice(&slot);
        b.extend_from_slice(b"tail");
        b
    }

    #[test]
    fn the_slot_takes_the_new_version_and_nothing_else_moves() {
        let mut b = binary("0.1.0");
        let before = b.clone();
        stamp_bytes(&mut b, "0.2.0+b1").unwrap();
        assert_eq!(b.len(), before.len());
        let s = 8 + MARKER.len();
        assert_eq!(&b[s..s + 9], b"0.2.0+b1\0");
        assert_eq!(&b[..s], &before[..s]);
        assert_eq!(&b[s + MAX_LEN..], b"tail");
        // Shorter again: the old bytes are cleared.
        stamp_bytes(&mut b, "1").unwrap();
        assert_eq!(&b[s..s + 3], b"1\0\0");
    }

    #[test]
    fn a_binary_without_or_with_two_markers_and_a_long_version_are_refused() {
        assert!(stamp_bytes(&mut b"no marker here".to_vec(), "0.1.0").is_err());
        let mut two = binary("0.1.0");
        two.extend(binary("0.1.0"));
        assert!(stamp_bytes(&mut two, "0.1.1").is_err());
        let mut cut = binary("0.1.0");
        cut.truncate(8 + MARKER.len() + 10);
        assert!(stamp_bytes(&mut cut, "0.1.1").is_err());
        assert!(stamp_bytes(&mut binary("0.1.0"), &"9".repeat(MAX_LEN + 1)).is_err());
        assert!(stamp_bytes(&mut binary("0.1.0"), "").is_err());
    }
}
