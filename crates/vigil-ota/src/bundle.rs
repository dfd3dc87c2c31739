//! The bundle: one uncompressed tar, read as a stream and never unpacked blindly.
//!
//! Entries, in this order and nothing else: `manifest.json` (the signed bytes), `manifest.sig`
//! (64 bytes, ed25519 over exactly those bytes), then one `files/<path>` regular file per manifest
//! entry. The signature is checked before any file is read, then the caller's checks (expiry,
//! sequence, target), then every file is streamed to the staging directory while it is hashed.
//! Refused: any other entry type (links, directories, devices), absolute or `..` paths, a name
//! not in the manifest or seen twice, a size other than the declared one or above the limit, a
//! file the manifest lists but the bundle lacks, and anything but zeros after the archive's end.
//!
//! The tar is read raw: extension entries are handled here, not by the `tar` crate (which reads
//! them whole into memory, whatever size their header announces). A GNU long name is read only
//! if its header says at most [`MAX_LONG_NAME`] bytes; GNU long link names and PAX headers are
//! refused from their header alone (`vigil ota pack` writes neither). Every name in a refusal is
//! quoted and bounded ([`crate::text::quote`]).

use super::OtaError;
use super::manifest::{FileEntry, MAX_PATH, Manifest, check_rel_path, hex, verify_signature};
use super::text::quote;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Most bytes of `manifest.json`.
const MAX_MANIFEST: u64 = 1 << 20;

/// Most bytes of a GNU long name entry: `files/`, a path of at most [`MAX_PATH`] bytes and
/// the terminating NUL.
pub const MAX_LONG_NAME: u64 = ("files/".len() + MAX_PATH + 1) as u64;

/// A bundle whose signature, policy and every file checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    pub manifest: Manifest,
    /// Index of the trusted key that signed it.
    pub key_index: usize,
}

fn bad(msg: impl Into<String>) -> OtaError {
    OtaError::bundle(msg)
}

/// A refusal whose cause is a failed read of the archive.
fn bad_read(msg: impl Into<String>, e: std::io::Error) -> OtaError {
    OtaError::Bundle {
        msg: msg.into(),
        source: Some(e),
    }
}

/// Reads a whole small entry (at most `max` bytes).
fn read_small(entry: &mut impl Read, name: &str, size: u64, max: u64) -> Result<Vec<u8>, OtaError> {
    if size > max {
        return Err(bad(format!(
            "{name} is {size} bytes (expected at most {max})"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    entry
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad_read(format!("{name} (truncated bundle?)"), e))?;
    if buf.len() as u64 != size {
        return Err(bad(format!(
            "{name}: {} bytes read, header says {size} (truncated bundle?)",
            buf.len()
        )));
    }
    Ok(buf)
}

fn describe_kind(k: tar::EntryType) -> &'static str {
    match k {
        tar::EntryType::Symlink => "symbolic link",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Directory => "directory",
        tar::EntryType::Char | tar::EntryType::Block => "device",
        tar::EntryType::Fifo => "FIFO",
        _ => "special entry",
    }
}

/// The entries of a raw archive, GNU long names applied, every other extension refused.
struct Entries<'a, R: Read> {
    raw: tar::Entries<'a, R>,
    /// Index of the next entry (extension entries are not counted).
    index: usize,
}

impl<'a, R: Read> Entries<'a, R> {
    /// The next entry with its name: a regular file with a UTF-8 name; `what` names the
    /// expected entry in a refusal.
    fn next(&mut self, what: &str) -> Result<Option<(String, tar::Entry<'a, R>)>, OtaError> {
        let index = self.index;
        let mut long_name: Option<Vec<u8>> = None;
        loop {
            let mut e = match self.raw.next() {
                Some(Ok(e)) => e,
                Some(Err(e)) => {
                    return Err(bad_read(
                        format!("{what} (truncated or corrupt bundle?)"),
                        e,
                    ));
                }
                None if long_name.is_some() => {
                    return Err(bad(format!(
                        "entry {index}: a GNU long name with no entry after it (truncated bundle?)"
                    )));
                }
                None => return Ok(None),
            };
            let kind = e.header().entry_type();
            // Raw entries: the size is the header's own (no PAX override is ever applied).
            let size = e.size();
            if kind.is_gnu_longname() {
                if long_name.is_some() {
                    return Err(bad(format!(
                        "entry {index}: two GNU long names for one entry"
                    )));
                }
                if size > MAX_LONG_NAME {
                    return Err(bad(format!(
                        "entry {index}: a GNU long name of {size} bytes (expected at most {MAX_LONG_NAME})"
                    )));
                }
                let mut name = read_small(
                    &mut e,
                    &format!("entry {index}: its GNU long name"),
                    size,
                    MAX_LONG_NAME,
                )?;
                while name.last() == Some(&0) {
                    name.pop();
                }
                long_name = Some(name);
                continue;
            }
            let extension = if kind.is_gnu_longlink() {
                Some("GNU long link name")
            } else if kind.is_pax_local_extensions() || kind.is_pax_global_extensions() {
                Some("PAX extended header")
            } else {
                None
            };
            if let Some(ext) = extension {
                return Err(bad(format!(
                    "entry {index}: a {ext} of {size} bytes (expected none: bundles hold plain file entries)"
                )));
            }
            self.index += 1;
            let raw = long_name.unwrap_or_else(|| e.path_bytes().into_owned());
            let name = String::from_utf8(raw)
                .map_err(|_| bad(format!("entry {index}: name is not UTF-8")))?;
            if !kind.is_file() {
                return Err(bad(format!(
                    "entry {index} {}: a {} (expected regular files only)",
                    quote(&name),
                    describe_kind(kind)
                )));
            }
            return Ok(Some((name, e)));
        }
    }
}

/// Reads and checks a bundle from `r`. `policy` runs on the manifest once its signature holds,
/// before any file is read. Files go to `dest/<path>` (created; must not exist) with
/// `manifest.json` and `manifest.sig` beside them, each fsynced; with `dest` None they are only
/// hashed. `on_file` is told each file's path before it is streamed.
pub fn read_bundle(
    r: impl Read,
    trusted: &[VerifyingKey],
    max_file: u64,
    policy: impl FnOnce(&Manifest) -> Result<(), OtaError>,
    dest: Option<&Path>,
    on_file: impl FnMut(&FileEntry),
) -> Result<Verified, OtaError> {
    let never = AtomicBool::new(false);
    read_bundle_cancellable(r, trusted, max_file, policy, dest, on_file, &never)
}

/// [`read_bundle`] that stops with [`OtaError::Cancelled`] once `cancel` is set (checked
/// before each entry and every 64 KiB of a file).
pub fn read_bundle_cancellable(
    r: impl Read,
    trusted: &[VerifyingKey],
    max_file: u64,
    policy: impl FnOnce(&Manifest) -> Result<(), OtaError>,
    dest: Option<&Path>,
    mut on_file: impl FnMut(&FileEntry),
    cancel: &AtomicBool,
) -> Result<Verified, OtaError> {
    let cancelled = || {
        if cancel.load(Ordering::Relaxed) {
            Err(OtaError::Cancelled)
        } else {
            Ok(())
        }
    };
    let mut archive = tar::Archive::new(r);
    let mut entries = Entries {
        raw: archive
            .entries()
            .map_err(|e| bad_read("not a tar archive", e))?
            .raw(true),
        index: 0,
    };
    // 1. The manifest and its signature, checked before anything else is read.
    let (name, mut e) = entries
        .next("manifest.json")?
        .ok_or_else(|| bad("empty archive (expected manifest.json first)"))?;
    if name != "manifest.json" {
        return Err(bad(format!(
            "entry 0 is {} (expected manifest.json)",
            quote(&name)
        )));
    }
    let size = e.size();
    let manifest_bytes = read_small(&mut e, "manifest.json", size, MAX_MANIFEST)?;
    drop(e);
    let (name, mut e) = entries
        .next("manifest.sig")?
        .ok_or_else(|| bad("no manifest.sig (expected it second)"))?;
    if name != "manifest.sig" {
        return Err(bad(format!(
            "entry 1 is {} (expected manifest.sig)",
            quote(&name)
        )));
    }
    let size = e.size();
    let sig = read_small(&mut e, "manifest.sig", size, 64)?;
    drop(e);
    let key_index = verify_signature(&manifest_bytes, &sig, trusted)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    policy(&manifest)?;
    cancelled()?;
    if let Some(d) = dest {
        std::fs::create_dir_all(d).map_err(|e| OtaError::io(d.display(), e))?;
        write_synced(&d.join("manifest.json"), &manifest_bytes)?;
        write_synced(&d.join("manifest.sig"), &sig)?;
    }
    // 2. The files, each listed, each once, each its declared size and digest.
    let mut seen: Vec<&str> = Vec::new();
    while let Some((name, mut e)) = entries.next("a file entry")? {
        cancelled()?;
        let index = entries.index - 1;
        let rel = name.strip_prefix("files/").ok_or_else(|| {
            bad(format!(
                "entry {index} {} is outside files/ (expected files/<path>)",
                quote(&name)
            ))
        })?;
        check_rel_path(rel).map_err(|m| bad(format!("entry {index}: {m}")))?;
        let Some(listed) = manifest.file(rel) else {
            return Err(bad(format!(
                "entry {index} {} is not listed in the manifest",
                quote(&name)
            )));
        };
        if seen.contains(&listed.path.as_str()) {
            return Err(bad(format!("entry {index} {} appears twice", quote(&name))));
        }
        let size = e.size();
        if size != listed.size {
            return Err(bad(format!(
                "{name}: {size} bytes in the archive, {} in the manifest",
                listed.size
            )));
        }
        if size > max_file {
            return Err(bad(format!(
                "{name}: {size} bytes (expected at most {max_file}, [ota] max_bundle_bytes)"
            )));
        }
        on_file(listed);
        let digest = copy_hashed(
            &mut e,
            &name,
            size,
            dest.map(|d| d.join(rel)).as_deref(),
            cancel,
        )?;
        if digest != listed.sha256.to_ascii_lowercase() {
            return Err(OtaError::Digest(format!(
                "{name}: sha256 {digest}, the manifest says {}",
                listed.sha256
            )));
        }
        seen.push(&listed.path);
    }
    if let Some(missing) = manifest
        .files
        .iter()
        .find(|f| !seen.contains(&f.path.as_str()))
    {
        return Err(bad(format!(
            "files/{} is listed in the manifest but not in the bundle (truncated bundle?)",
            missing.path
        )));
    }
    // 3. Nothing but the zero padding after the end of the archive.
    let mut rest = archive.into_inner();
    let mut buf = [0u8; 8192];
    loop {
        let n = rest
            .read(&mut buf)
            .map_err(|e| OtaError::io("reading the end of the bundle", e))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Err(bad("trailing data after the end of the archive"));
        }
    }
    Ok(Verified {
        manifest,
        key_index,
    })
}

/// One raw 512-byte tar header in the GNU format (`name` at most 100 bytes, `size` under
/// 8 GiB, `kind` the type flag: `b'0'` a file, `b'L'` a GNU long name, `b'x'` a PAX header),
/// its checksum set: for building archives byte by byte, hostile ones included (the tests,
/// fuzzing seeds). [`pack`] writes bundles with the `tar` crate.
pub fn raw_header(name: &[u8], size: u64, kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Streams exactly `size` bytes of `r` into `to` (created, fsynced) while hashing; returns the
/// hex sha256.
fn copy_hashed(
    r: &mut impl Read,
    name: &str,
    size: u64,
    to: Option<&Path>,
    cancel: &AtomicBool,
) -> Result<String, OtaError> {
    let mut out = match to {
        Some(p) => {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| OtaError::io(parent.display(), e))?;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p)
                .map_err(|e| OtaError::io(p.display(), e))?;
            Some(f)
        }
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    let mut limited = r.take(size);
    loop {
        let n = limited
            .read(&mut buf)
            .map_err(|e| bad_read(format!("{name} (truncated or corrupt bundle?)"), e))?;
        if n == 0 {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(OtaError::Cancelled);
        }
        hasher.update(&buf[..n]);
        if let Some(f) = out.as_mut() {
            f.write_all(&buf[..n]).map_err(|e| OtaError::io(name, e))?;
        }
        total += n as u64;
        super::test_hook_pause("stage");
    }
    if total != size {
        return Err(bad(format!(
            "{name}: {total} bytes read, {size} declared (truncated bundle?)"
        )));
    }
    if let Some(f) = out {
        f.sync_all().map_err(|e| OtaError::io(name, e))?;
    }
    Ok(hex(&hasher.finalize()))
}

/// Writes a small file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), OtaError> {
    let mut f = std::fs::File::create(path).map_err(|e| OtaError::io(path.display(), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| OtaError::io(path.display(), e))
}

/// The sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<(String, u64), OtaError> {
    let mut f = std::fs::File::open(path).map_err(|e| OtaError::io(path.display(), e))?;
    let mut hasher = Sha256::new();
    let n = std::io::copy(&mut f, &mut hasher).map_err(|e| OtaError::io(path.display(), e))?;
    Ok((hex(&hasher.finalize()), n))
}

/// What `vigil ota pack` puts in the manifest besides the files.
#[derive(Debug, Clone)]
pub struct PackInfo {
    pub version: String,
    pub sequence: u64,
    pub valid_for: std::time::Duration,
    pub target: super::manifest::Target,
}

/// Every regular file under `dir`, relative paths sorted; links and special files refused.
fn list_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, OtaError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| OtaError::io(d.display(), e))?;
        for ent in rd {
            let ent = ent.map_err(|e| OtaError::io(d.display(), e))?;
            let p = ent.path();
            let ft = ent.file_type().map_err(|e| OtaError::io(p.display(), e))?;
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(dir)
                    .ok()
                    .and_then(|r| r.to_str())
                    .ok_or_else(|| bad(format!("{}: name is not UTF-8", p.display())))?
                    .to_string();
                out.push((rel, p));
            } else {
                return Err(bad(format!(
                    "{}: not a regular file (links and special files cannot be packed)",
                    p.display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `vigil ota pack`: signs a manifest of every file under `dir` and writes the bundle to `out`.
pub fn pack(
    dir: &Path,
    key: &SigningKey,
    info: &PackInfo,
    out: &Path,
) -> Result<Manifest, OtaError> {
    let files = list_files(dir)?;
    if files.is_empty() {
        return Err(bad(format!("{}: no files to pack", dir.display())));
    }
    let mut entries = Vec::new();
    for (rel, p) in &files {
        let (sha256, size) = file_sha256(p)?;
        entries.push(FileEntry {
            path: rel.clone(),
            size,
            sha256,
        });
    }
    let now = std::time::SystemTime::now();
    let manifest = Manifest {
        format: super::manifest::FORMAT,
        version: info.version.clone(),
        sequence: info.sequence,
        created: humantime::format_rfc3339_seconds(now).to_string(),
        expires: humantime::format_rfc3339_seconds(now + info.valid_for).to_string(),
        target: info.target.clone(),
        files: entries,
    };
    let bytes = manifest.to_bytes();
    // What a box would refuse is not packed: the same checks as on the box.
    Manifest::parse(&bytes)?;
    manifest.check_sequence()?;
    let sig = key.sign(&bytes).to_bytes();
    let file = std::fs::File::create(out).map_err(|e| OtaError::io(out.display(), e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(file));
    let mut append = |name: &str, size: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(0);
        b.append_data(&mut h, name, data)
            .map_err(|e| OtaError::io(format!("{}: {name}", out.display()), e))
    };
    append("manifest.json", bytes.len() as u64, &mut bytes.as_slice())?;
    append("manifest.sig", sig.len() as u64, &mut sig.as_slice())?;
    for (f, (_, p)) in manifest.files.iter().zip(&files) {
        let mut src = std::fs::File::open(p).map_err(|e| OtaError::io(p.display(), e))?;
        append(&format!("files/{}", f.path), f.size, &mut src)?;
    }
    let w = b.into_inner().map_err(|e| OtaError::io(out.display(), e))?;
    w.into_inner()
        .map_err(|e| OtaError::io(out.display(), e.into_error()))?
        .sync_all()
        .map_err(|e| OtaError::io(out.display(), e))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Target;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    /// A packed bundle of `files` (path, content) with sequence 5.
    fn packed(name: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("vigil-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (p, data) in files {
            let f = dir.join("in").join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, data).unwrap();
        }
        let info = PackInfo {
            version: "t".into(),
            sequence: 5,
            valid_for: std::time::Duration::from_secs(3600),
            target: Target::default(),
        };
        let out = dir.join("b.vigil");
        pack(&dir.join("in"), &key(), &info, &out).unwrap();
        std::fs::read(out).unwrap()
    }

    /// Offsets of each entry header in a tar made of small entries.
    fn headers(tar: &[u8]) -> Vec<usize> {
        let mut v = Vec::new();
        let mut off = 0;
        while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|&b| b != 0) {
            v.push(off);
            let size = std::str::from_utf8(&tar[off + 124..off + 135]).unwrap();
            let size = u64::from_str_radix(size.trim_matches(char::from(0)).trim(), 8).unwrap();
            off += 512 + (size as usize).div_ceil(512) * 512;
        }
        v
    }

    /// Rewrites one header field (name or type) and its checksum, as an attacker would.
    fn patch(tar: &mut [u8], at: usize, name: Option<&str>, kind: Option<u8>) {
        let h = &mut tar[at..at + 512];
        if let Some(n) = name {
            h[..100].fill(0);
            h[..n.len()].copy_from_slice(n.as_bytes());
        }
        if let Some(k) = kind {
            h[156] = k;
        }
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    fn check(bytes: &[u8], dest: Option<&Path>) -> Result<Verified, OtaError> {
        read_bundle(
            bytes,
            &[key().verifying_key()],
            1 << 20,
            |_| Ok(()),
            dest,
            |_| {},
        )
    }

    #[test]
    fn a_good_bundle_stages_every_file_with_its_manifest() {
        let b = packed(
            "good",
            &[("models/a.onnx", b"aaaa"), ("config.toml", b"x = 1\n")],
        );
        let dest =
            std::env::temp_dir().join(format!("vigil-bundle-good-dest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dest);
        let v = check(&b, Some(&dest)).unwrap();
        assert_eq!(v.manifest.sequence, 5);
        assert_eq!(std::fs::read(dest.join("models/a.onnx")).unwrap(), b"aaaa");
        assert!(dest.join("manifest.sig").is_file());
    }

    #[test]
    fn hostile_entries_are_refused_with_the_reason() {
        let b = packed(
            "hostile",
            &[("models/a.onnx", b"aaaa"), ("models/b.onnx", b"bbbb")],
        );
        let h = headers(&b);
        assert_eq!(h.len(), 4);
        type Mutation<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            (
                "traversal",
                Box::new(|t: &mut Vec<u8>| patch(t, h[2], Some("files/../../etc/passwd"), None)),
                "escapes its directory",
            ),
            (
                "absolute",
                Box::new(|t: &mut Vec<u8>| patch(t, h[2], Some("/etc/passwd"), None)),
                "outside files/",
            ),
            (
                "symlink",
                Box::new(|t: &mut Vec<u8>| patch(t, h[2], None, Some(b'2'))),
                "symbolic link",
            ),
            (
                "hard link",
                Box::new(|t: &mut Vec<u8>| patch(t, h[3], None, Some(b'1'))),
                "hard link",
            ),
            (
                "device",
                Box::new(|t: &mut Vec<u8>| patch(t, h[3], None, Some(b'3'))),
                "device",
            ),
            (
                "unlisted",
                Box::new(|t: &mut Vec<u8>| patch(t, h[3], Some("files/models/c.onnx"), None)),
                "not listed in the manifest",
            ),
            (
                "duplicate",
                Box::new(|t: &mut Vec<u8>| patch(t, h[3], Some("files/models/a.onnx"), None)),
                "appears twice",
            ),
            (
                "manifest not first",
                Box::new(|t: &mut Vec<u8>| patch(t, h[0], Some("files/x"), None)),
                "expected manifest.json",
            ),
            (
                "corrupt byte",
                Box::new(|t: &mut Vec<u8>| t[h[2] + 513] ^= 0x01),
                "sha256",
            ),
            (
                "trailing garbage",
                Box::new(|t: &mut Vec<u8>| t.extend_from_slice(&[0x55; 700])),
                "trailing data",
            ),
            (
                "truncated",
                Box::new(|t: &mut Vec<u8>| t.truncate(h[3] + 514)),
                "truncated",
            ),
            (
                "missing file",
                Box::new(|t: &mut Vec<u8>| t.truncate(h[3])),
                "not in the bundle",
            ),
            (
                "signature",
                Box::new(|t: &mut Vec<u8>| t[h[1] + 512] ^= 0x01),
                "does not verify",
            ),
        ];
        for (what, f, needle) in cases {
            let mut t = b.clone();
            f(&mut t);
            let dest =
                std::env::temp_dir().join(format!("vigil-bundle-bad-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dest);
            let e = check(&t, None)
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(e.to_string().contains(needle), "{what}: {e}");
        }
    }

    #[test]
    fn an_oversize_file_is_refused_before_it_is_read() {
        let big = vec![1u8; 2 << 20];
        let b = packed("big", &[("models/big.onnx", &big)]);
        let e = check(&b, None).unwrap_err();
        assert!(e.to_string().contains("expected at most 1048576"), "{e}");
    }

    #[test]
    fn the_policy_runs_before_any_file_is_written() {
        let b = packed("policy", &[("models/a.onnx", b"aaaa")]);
        let dest = std::env::temp_dir().join(format!("vigil-bundle-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dest);
        let e = read_bundle(
            b.as_slice(),
            &[key().verifying_key()],
            1 << 20,
            |_| Err(OtaError::Target("no".into())),
            Some(&dest),
            |_| {},
        )
        .unwrap_err();
        assert_eq!(e.kind(), "target");
        assert!(!dest.exists());
    }
}

/// Hostile archives an outsider can send without any key: headers that announce huge
/// extension entries, and names that would make the refusal too long to publish.
#[cfg(test)]
mod hostile {
    use super::*;
    use crate::bundle::raw_header as header;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// `head`, then `body` bytes of `fill`, then zeros forever; counts what was read.
    struct Lazy {
        head: Vec<u8>,
        body: u64,
        fill: u8,
        pos: Arc<AtomicU64>,
    }

    impl Read for Lazy {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let pos = self.pos.load(Ordering::Relaxed);
            let head = self.head.len() as u64;
            let n = buf.len().min(64 << 10);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let p = pos + i as u64;
                *b = if p < head {
                    self.head[p as usize]
                } else if p < head + self.body {
                    self.fill
                } else {
                    0
                };
            }
            self.pos.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    fn refuse(r: impl Read) -> OtaError {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        read_bundle(r, &[key], 1 << 20, |_| Ok(()), None, |_| {}).unwrap_err()
    }

    #[test]
    fn a_huge_long_name_or_pax_header_is_refused_after_its_header_only() {
        for (kind, what) in [(b'L', "GNU long name"), (b'x', "PAX")] {
            let pos = Arc::new(AtomicU64::new(0));
            let e = refuse(std::io::BufReader::new(Lazy {
                head: header(b"././@LongLink", 256 << 20, kind),
                body: 256 << 20,
                fill: b'a',
                pos: pos.clone(),
            }));
            let read = pos.load(Ordering::Relaxed);
            assert!(
                read <= 64 << 10,
                "{what}: {read} bytes read before the refusal"
            );
            let text = e.to_string();
            assert_eq!(e.kind(), "bundle", "{what}: {text}");
            assert!(text.len() < 300, "{what}: {} bytes of text", text.len());
            assert!(text.contains("268435456 bytes"), "{what}: {text}");
        }
    }

    #[test]
    fn a_long_hostile_name_never_makes_a_long_refusal() {
        // A 1 MiB GNU long name of control characters (each escaped to 6 bytes by {:?}).
        let name = vec![1u8; 1 << 20];
        let mut tar = header(b"././@LongLink", name.len() as u64, b'L');
        tar.extend_from_slice(&name);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        tar.extend(header(b"x", 4, b'0'));
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let text = refuse(tar.as_slice()).to_string();
        assert!(text.len() <= 1024, "{} bytes of text", text.len());
        assert!(text.starts_with("bundle: entry 0"), "{}", &text[..100]);
    }
}
