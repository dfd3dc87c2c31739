//! Vigil's release version, as `vigil --version`, the status topic and the OTA manifest say it.
//!
//! It is the workspace's version (`CARGO_PKG_VERSION`) unless a packager stamped another into the
//! built binary: `cargo xtask deb --version V` (and `image --version V`) writes `V` into
//! [`STAMP`]'s slot in the copy it packs, so one build can be released under the package's
//! version without compiling again. The slot follows a marker that occurs once in the binary;
//! the stamping side (`xtask/src/stamp.rs`, which holds the same marker) finds it by that marker
//! and refuses a binary with none or several.

/// What precedes the version in the binary (unique: nothing else in the binary holds it).
pub const MARKER: &[u8; 24] = b"@@vigil-release-version:";
/// The most bytes a stamped version may have (NUL-padded in the slot).
pub const MAX_LEN: usize = 64;

const fn stamp() -> [u8; MARKER.len() + MAX_LEN] {
    let mut s = [0u8; MARKER.len() + MAX_LEN];
    let mut i = 0;
    while i < MARKER.len() {
        s[i] = MARKER[i];
        i += 1;
    }
    let v = env!("CARGO_PKG_VERSION").as_bytes();
    assert!(v.len() <= MAX_LEN);
    let mut j = 0;
    while j < v.len() {
        s[MARKER.len() + j] = v[j];
        j += 1;
    }
    s
}

/// The marker and the version slot. Read through [`std::hint::black_box`] so that the compiler
/// cannot fold the build-time value into the code: the bytes in the binary are what counts.
#[used]
static STAMP: [u8; MARKER.len() + MAX_LEN] = stamp();

/// Whether `v` is acceptable as a version: `MAJOR.MINOR.PATCH` (what OTA constraints compare),
/// optionally followed by a `-`, `+` or `~` suffix, in at most [`MAX_LEN`] bytes of a Debian
/// version's characters (`0-9 A-Z a-z . + ~ -`).
pub fn valid(v: &str) -> bool {
    let core = v.split(['-', '+', '~']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    v.len() <= MAX_LEN
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~-".contains(&b))
}

/// The release version of this binary.
pub fn version() -> &'static str {
    let stamp: &'static [u8; MARKER.len() + MAX_LEN] = std::hint::black_box(&STAMP);
    let slot = &stamp[MARKER.len()..];
    let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
    match std::str::from_utf8(&slot[..end]) {
        Ok(v) if valid(v) => v,
        // A damaged slot: the version the binary was built as.
        _ => env!("CARGO_PKG_VERSION"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unstamped_build_says_the_workspace_version() {
        assert_eq!(version(), env!("CARGO_PKG_VERSION"));
        assert_eq!(&STAMP[..MARKER.len()], MARKER);
    }

    #[test]
    fn versions_are_debian_versions_of_bounded_length() {
        for ok in [
            "0.1.0",
            "0.1.1+b1",
            "1.0.0~rc1",
            "2.0.0-3",
            "10.20.30+next1",
        ] {
            assert!(valid(ok), "{ok}");
        }
        for bad in [
            "",
            "v0.1",
            "0.1 0",
            "0.1\n",
            "0.1/2",
            &"9".repeat(MAX_LEN + 1),
            "1:0.1",
        ] {
            assert!(!valid(bad), "{bad:?}");
        }
    }
}
