//! Secrets out of the config file: a secret field may hold a reference instead of the secret,
//! resolved when the file is loaded, so that the rest of the code reads plain values and the
//! file (what `config/get` and backups show) holds no secret.
//!
//! - `${credential:NAME}`: the file `NAME` of systemd's credentials directory
//!   (`$CREDENTIALS_DIRECTORY`, filled by `LoadCredential=NAME:/path` in the unit);
//! - `${file:PATH}`: a file of the box (a relative path is relative to the config file's
//!   directory) that group and others cannot access (mode 0600 or stricter);
//! - `$${` is a literal `${`.
//!
//! References are resolved in `mqtt.username`, `mqtt.password`, `http.tokens[].sha256` and in
//! the user and password of a camera URL (`rtsp://admin:${credential:cam1}@10.0.0.5/live`),
//! nowhere else. One trailing line break of the file is dropped; a file larger than
//! [`MAX_SECRET_BYTES`], empty or not UTF-8 is an error located at the field, and no error
//! quotes a secret. An OTA overlay may use `${credential:…}` (the credentials the unit hands
//! the service), not `${file:…}` (a path of the box chosen by a bundle).
//!
//! [`redact_secrets`] is the config file's text with every inline secret masked: what
//! `config/get` shows.

use super::Config;
use super::diagnostics::Issue;
use super::spans::SpanIndex;
use crate::redact::redact;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest secret file read.
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// What a field whose secret could not be resolved holds, so that the other checks still run.
const PLACEHOLDER: &str = "secret";

/// Where references are read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretSource {
    /// systemd's credentials directory (`$CREDENTIALS_DIRECTORY`), when there is one.
    pub credentials_dir: Option<PathBuf>,
    /// The directory relative `${file:…}` paths are relative to (the config file's).
    pub base_dir: PathBuf,
}

impl SecretSource {
    /// The credentials directory from the environment; relative paths against `config_file`'s
    /// directory.
    pub fn from_env(config_file: &Path) -> Self {
        Self {
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from),
            base_dir: config_file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        }
    }
}

/// A reference inside a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reference<'a> {
    Credential(&'a str),
    File(&'a str),
}

/// A string cut into literal text and references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Part<'a> {
    Text(String),
    Ref(Reference<'a>),
}

const SYNTAX: &str = "expected ${credential:NAME} or ${file:PATH}; write $${ for a literal ${";

/// Cuts `s` into text and references; an unknown or unclosed `${…` is an error.
pub(super) fn parse_references(s: &str) -> Result<Vec<Part<'_>>, String> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        text.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            text.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!("unclosed secret reference ({SYNTAX})"));
            };
            let body = &tail[..end];
            let reference = if let Some(name) = body.strip_prefix("credential:") {
                credential_name_problem(name).map_or(Ok(Reference::Credential(name)), Err)?
            } else if let Some(path) = body.strip_prefix("file:") {
                if path.is_empty() {
                    return Err(format!("empty path in ${{file:}} ({SYNTAX})"));
                }
                Reference::File(path)
            } else {
                let kind = body.split(':').next().unwrap_or("");
                return Err(format!("unknown secret reference kind {kind:?} ({SYNTAX})"));
            };
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Ref(reference));
            rest = &tail[end + 1..];
        } else {
            text.push('$');
            rest = &after[1..];
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    Ok(parts)
}

/// systemd's credential names: a file name in the credentials directory.
fn credential_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    (!ok).then(|| {
        format!(
            "credential name {name:?} is not usable (expected 1 to 64 characters from A-Z, a-z, \
             0-9, _ - . @, not starting with a dot: the name given to LoadCredential=)"
        )
    })
}

/// Why the file at `path` may not hold a secret (it is readable or writable by group or
/// others), or `None`.
pub fn private_file_problem(meta: &std::fs::Metadata, path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} is accessible to group or others (mode {mode:04o}; expected 0600 or stricter: \
             chmod 600 {})",
            path.display(),
            path.display()
        )
    })
}

/// Reads one secret file: a regular file, private, at most [`MAX_SECRET_BYTES`], UTF-8, not
/// empty; one trailing line break dropped.
/// Reads a regular file of at most `max` bytes; with `private`, one that group and others
/// cannot access. Each problem names the file.
pub(super) fn read_file_bounded(path: &Path, max: u64, private: bool) -> Result<Vec<u8>, String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if private && let Some(p) = private_file_problem(&meta, path) {
        return Err(p);
    }
    let mut bytes = Vec::new();
    (&mut f)
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// Reads one secret file: see [`read_file_bounded`]; UTF-8, not empty, one trailing line
/// break dropped.
fn read_secret_file(path: &Path, what: &str) -> Result<String, String> {
    let bytes =
        read_file_bounded(path, MAX_SECRET_BYTES, true).map_err(|e| format!("{what}: {e}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("{what}: {} is not UTF-8 text", path.display()))?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.is_empty() {
        return Err(format!(
            "{what}: {} is empty (expected the secret)",
            path.display()
        ));
    }
    Ok(text.to_owned())
}

/// How references are treated.
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode<'s> {
    /// Read each one.
    Read(&'s SecretSource),
    /// Nothing read (`parse`): the syntax is checked and a placeholder stands in.
    Placeholder,
}

fn read_reference(r: Reference<'_>, mode: Mode<'_>, placeholder: &str) -> Result<String, String> {
    let src = match mode {
        Mode::Placeholder => return Ok(placeholder.to_owned()),
        Mode::Read(src) => src,
    };
    match r {
        Reference::Credential(name) => {
            let what = format!("credential {name:?}");
            let Some(dir) = &src.credentials_dir else {
                return Err(format!(
                    "{what}: $CREDENTIALS_DIRECTORY is not set (expected Vigil started by systemd \
                     with LoadCredential={name}:/path/to/file in its unit)"
                ));
            };
            read_secret_file(&dir.join(name), &what)
        }
        Reference::File(path) => {
            let path = src.base_dir.join(path);
            read_secret_file(&path, "secret file")
        }
    }
}

/// A field that may hold references: `check` vets each secret, `placeholder` stands for one
/// that is not read.
struct Field<'a> {
    check: &'a dyn Fn(&str) -> Option<String>,
    placeholder: &'a str,
}

/// The string with its references replaced by their secrets.
fn resolve_str(s: &str, mode: Mode<'_>, field: &Field<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    for part in parse_references(s)? {
        match part {
            Part::Text(t) => out.push_str(&t),
            Part::Ref(r) => {
                let secret = read_reference(r, mode, field.placeholder)?;
                if let Some(problem) = (field.check)(&secret) {
                    return Err(problem);
                }
                out.push_str(&secret);
            }
        }
    }
    Ok(out)
}

/// A secret placed in a URL's user or password is used verbatim: these would end the user or
/// password early (GStreamer splits at the first `@`, `/`, `?`) or hide it from redaction.
fn url_secret_problem(secret: &str) -> Option<String> {
    let bad = secret.chars().find(|c| {
        matches!(c, '@' | '/' | '?' | '#' | '"' | '\'' | '>' | ')') || c.is_whitespace()
    })?;
    Some(format!(
        "the secret holds {bad:?}, which cannot stand in a URL's user or password (expected none \
         of @ / ? # \" ' > ) or whitespace; percent-encode it in the file, e.g. %40 for @)"
    ))
}

/// Where a camera URL may hold references: between `://` and the `@` that ends the user and
/// password.
fn url_references_problem(url: &str) -> Option<String> {
    let parts = parse_references(url).ok()?;
    // The URL's shape, each reference standing as one character.
    let mut shape = String::new();
    let mut refs = Vec::new();
    for p in &parts {
        match p {
            Part::Text(t) => shape.push_str(t),
            Part::Ref(_) => {
                refs.push(shape.len());
                shape.push('\u{1}');
            }
        }
    }
    if refs.is_empty() {
        return None;
    }
    let start = shape.find("://").map(|i| i + 3)?;
    let authority_end = shape[start..]
        .find(['/', '?', '#'])
        .map_or(shape.len(), |i| start + i);
    let at = shape[start..authority_end].rfind('@').map(|i| start + i);
    let inside = |pos: usize| at.is_some_and(|at| pos >= start && pos < at);
    (!refs.iter().all(|&r| inside(r))).then(|| {
        "a secret reference outside the URL's user and password (expected \
         rtsp://USER:${credential:NAME}@host/path)"
            .to_owned()
    })
}

fn sha256_secret_problem(secret: &str) -> Option<String> {
    let ok = secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
    (!ok).then(|| {
        "the secret is not a SHA-256 digest (expected the 64 hex digits `vigil token new` prints)"
            .to_owned()
    })
}

/// Resolves every reference of `config` in place; each problem as an issue at its field (the
/// field then holds a placeholder).
pub(super) fn resolve(config: &mut Config, mode: Mode<'_>) -> Vec<Issue> {
    // The problem with one field, if any; on a problem the field holds the placeholder.
    let one = |value: &mut String, field: &Field<'_>| -> Option<String> {
        if !value.contains('$') {
            return None;
        }
        match resolve_str(value, mode, field) {
            Ok(v) => {
                *value = v;
                None
            }
            Err(message) => {
                *value = field.placeholder.to_owned();
                Some(message)
            }
        }
    };
    let mut issues = Vec::new();
    let mut report = |path: String, problem: Option<String>| {
        if let Some(message) = problem {
            issues.push(Issue { path, message });
        }
    };
    let plain = Field {
        check: &|_| None,
        placeholder: PLACEHOLDER,
    };
    if let Some(p) = config.mqtt.password.as_mut() {
        report("mqtt.password".into(), one(p, &plain));
    }
    if let Some(u) = config.mqtt.username.as_mut() {
        report("mqtt.username".into(), one(u, &plain));
    }
    let zeros = "0".repeat(64);
    let digest = Field {
        check: &sha256_secret_problem,
        placeholder: &zeros,
    };
    for (i, t) in config.http.tokens.iter_mut().enumerate() {
        report(
            format!("http.tokens[{i}].sha256"),
            one(&mut t.sha256, &digest),
        );
    }
    let in_url = Field {
        check: &url_secret_problem,
        placeholder: PLACEHOLDER,
    };
    for (i, c) in config.cameras.iter_mut().enumerate() {
        let urls = std::iter::once(("url", &mut c.url))
            .chain(c.view_url.as_mut().map(|u| ("view_url", u)));
        for (field, url) in urls {
            let written = url.clone();
            let problem = url_references_problem(url).or_else(|| one(url, &in_url));
            if problem.is_some() {
                // Keep the URL checkable: each reference stands as a plain password.
                *url = url_with_placeholders(&written);
            }
            report(format!("cameras[{i}].{field}"), problem);
        }
    }
    issues
}

fn url_with_placeholders(url: &str) -> String {
    match parse_references(url) {
        Ok(parts) => parts
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => t,
                Part::Ref(_) => PLACEHOLDER.to_owned(),
            })
            .collect(),
        Err(_) => url.to_owned(),
    }
}

/// The `${file:…}` references of an OTA overlay's camera URLs, each as an issue: a bundle may
/// name credentials, not paths of the box.
pub(super) fn overlay_file_references(over: &toml::Table) -> Vec<Issue> {
    let Some(toml::Value::Array(cameras)) = over.get("cameras") else {
        return Vec::new();
    };
    cameras
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            ["url", "view_url"].into_iter().filter_map(move |field| {
                let url = c.get(field)?.as_str()?;
                let reads_file = parse_references(url)
                    .ok()?
                    .iter()
                    .any(|p| matches!(p, Part::Ref(Reference::File(_))));
                reads_file.then(|| Issue {
                    path: format!("cameras[{i}].{field}"),
                    message: "an OTA bundle may not read files of the box (expected \
                              ${credential:NAME}, a credential the unit hands Vigil)"
                        .to_owned(),
                })
            })
        })
        .collect()
}

/// The config file's text with every inline secret masked, everything else as written:
/// an `mqtt.password` that is not references alone becomes `"***"`, and the user
/// and password of every URL in the text (values and comments) become `***`, except a camera
/// URL whose password is given by references alone (shown as written: it holds no secret).
pub fn redact_secrets(text: &str) -> String {
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let index = SpanIndex::build(doc.get_ref());
    // (span, replacement); None keeps the span as written.
    let mut spans: Vec<(std::ops::Range<usize>, Option<&str>)> = Vec::new();
    for node in &index.nodes {
        let span = node.value.clone();
        let written = text.get(span.clone()).unwrap_or("");
        let plain = written.trim_matches(['"', '\'']);
        if node.path == "mqtt.password" && !refs_only(plain) {
            spans.push((span, Some("\"***\"")));
        } else if node.path.starts_with("cameras[")
            && (node.path.ends_with("].url") || node.path.ends_with("].view_url"))
            && password_is_references(plain)
        {
            spans.push((span, None));
        }
    }
    spans.sort_by_key(|(s, _)| s.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, replacement) in spans {
        if span.start < at || span.end > text.len() {
            continue;
        }
        out.push_str(&redact(&text[at..span.start]));
        out.push_str(replacement.unwrap_or(&text[span.clone()]));
        at = span.end;
    }
    out.push_str(&redact(&text[at..]));
    out
}

/// Whether `s` is made of references alone (and at least one).
fn refs_only(s: &str) -> bool {
    parse_references(s)
        .is_ok_and(|parts| !parts.is_empty() && parts.iter().all(|p| matches!(p, Part::Ref(_))))
}

/// Whether a URL's password (after the first `:` of its user and password) is references
/// alone.
fn password_is_references(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let Some(userinfo) = rest.rsplit_once('@').map(|(u, _)| u) else {
        return false;
    };
    match userinfo.split_once(':') {
        Some((_, password)) => refs_only(password),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vigil-secrets-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn references_are_parsed_and_escaped() {
        assert_eq!(
            parse_references("a${credential:x}b$${c}$d").unwrap(),
            vec![
                Part::Text("a".into()),
                Part::Ref(Reference::Credential("x")),
                Part::Text("b${c}$d".into()),
            ]
        );
        assert_eq!(
            parse_references("${file:/etc/p}").unwrap(),
            vec![Part::Ref(Reference::File("/etc/p"))]
        );
        for bad in [
            "${credential:x",
            "${env:HOME}",
            "${credential:../x}",
            "${file:}",
        ] {
            assert!(parse_references(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_and_files_are_read_and_checked() {
        let d = dir("read");
        write(&d.join("mqtt"), "pa55\n", 0o400);
        write(&d.join("open"), "x", 0o644);
        write(&d.join("empty"), "\n", 0o600);
        write(&d.join("big"), &"x".repeat(70_000), 0o600);
        let src = SecretSource {
            credentials_dir: Some(d.clone()),
            base_dir: d.clone(),
        };
        let plain = Field {
            check: &|_| None,
            placeholder: PLACEHOLDER,
        };
        let r = |s: &str| resolve_str(s, Mode::Read(&src), &plain);
        assert_eq!(r("${credential:mqtt}").unwrap(), "pa55");
        assert_eq!(r("${file:mqtt}").unwrap(), "pa55", "relative to base_dir");
        let open = r("${file:open}").unwrap_err();
        assert!(
            open.contains("mode 0644") && open.contains("0600"),
            "{open}"
        );
        assert!(r("${file:empty}").unwrap_err().contains("is empty"));
        assert!(r("${file:big}").unwrap_err().contains("larger than"));
        assert!(r("${credential:nope}").unwrap_err().contains("cannot open"));
        let unset = SecretSource::default();
        let e = resolve_str("${credential:mqtt}", Mode::Read(&unset), &plain).unwrap_err();
        assert!(e.contains("LoadCredential=mqtt:"), "{e}");
    }

    #[test]
    fn url_references_stay_in_the_user_and_password() {
        assert_eq!(
            url_references_problem("rtsp://admin:${credential:c}@10.0.0.5/live"),
            None
        );
        assert_eq!(
            url_references_problem("rtsp://${credential:u}:${credential:p}@h:554/x?y"),
            None
        );
        assert!(url_references_problem("rtsp://h/live?token=${credential:t}").is_some());
        assert!(url_references_problem("rtsp://${credential:h}/live").is_some());
        assert!(url_secret_problem("p@ss").is_some());
        assert!(url_secret_problem("p a").is_some());
        assert_eq!(url_secret_problem("pa:55!%40"), None);
    }

    #[test]
    fn inline_secrets_are_masked_and_references_kept() {
        let text = "[mqtt]\nusername = \"vigil\"\npassword = 'hunter2'\n\n\
                    # old: rtsp://admin:old@cam/x\n[[cameras]]\nurl = \"rtsp://admin:pw1@cam/live\"\n\
                    [[cameras]]\nurl = \"rtsp://admin:${credential:cam2}@cam2/live\"\n";
        let r = redact_secrets(text);
        for secret in ["hunter2", "pw1", "old@"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("password = \"***\""), "{r}");
        assert!(r.contains("rtsp://***@cam/live"), "{r}");
        assert!(
            r.contains("rtsp://admin:${credential:cam2}@cam2/live"),
            "{r}"
        );
        let refs = "[mqtt]\npassword = \"${credential:mqtt}\"\n";
        assert_eq!(redact_secrets(refs), refs);
    }
}
