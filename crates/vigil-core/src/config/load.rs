//! Config loading, with errors that point at the offending value.
//!
//! [`parse`] turns TOML text into a [`Config`] in three steps:
//!
//! 1. The text is parsed into a spanned document ([`toml::de::DeTable`]); a [`SpanIndex`]
//!    records, for every key path (`cameras[0].zones[1].polygon[2]`), where its key and its
//!    value sit in the text.
//! 2. The document is deserialized into the serde types of `schema.rs`. A syntax or serde
//!    error (unknown field, missing field, wrong type, bad enum value, bad duration) stops here
//!    and becomes one [`ConfigError`]; its field path is the innermost key path whose key or
//!    value span contains the error's span.
//! 3. Semantic checks (names, ranges, references, geometry) run on the typed config and report
//!    every problem at once, each as a field path that the index turns back into a position.
//!
//! [`load`] reads the file, parses it, makes relative model paths absolute (relative to the
//! config file's directory) and checks that the model files of enabled cameras exist.
//!
//! Every error prints as one line: `FILE:LINE:COL: field.path: what is wrong (expected …)`.

use super::Config;
use super::checks::*;
use super::diagnostics::*;
use super::secrets::{Mode, SecretSource, overlay_file_references, resolve};
use super::spans::*;
use crate::facts::BoxFacts;
use crate::redact::redact;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Component, Path};
use toml::de::DeTable;

// ---------------------------------------------------------------------------------------------
// Entry points

/// Parses and validates config text. `file` is only used in error messages; nothing is read
/// from disk (model files are checked by [`load`]).
///
/// Secret references (`${credential:…}`, `${file:…}`) are checked but not read: they stay in
/// the result as written.
pub fn parse(text: &str, file: &Path, facts: &dyn BoxFacts) -> Result<Config, ConfigErrors> {
    parse_located(text, file, facts, Mode::Placeholder).map(|(config, _)| config)
}

/// Reads, parses and validates a config file; relative model paths in the result are made
/// absolute (relative to the config file's directory), and the model files of enabled cameras
/// must exist.
///
/// A client certificate outside its validity period by this box's clock is not an error here
/// (a box that boots with a wrong clock, or whose renewal is late, must still start): `vigil
/// check-config` ([`load_with_warnings`]) reports it as one.
pub fn load(path: &Path, facts: &dyn BoxFacts) -> Result<Config, ConfigErrors> {
    load_checked(path, facts, super::tls::Validity::Warn).map(|(config, _)| config)
}

/// [`load`], with what the config allows but is probably not meant (MQTT over plain TCP, a
/// client certificate about to expire), located like errors: `vigil check-config` prints them
/// and still exits 0. The MQTT TLS files are read and checked here (a missing file, a key that
/// does not parse, a certificate not valid now, a CA file without certificates are errors).
pub fn load_with_warnings(
    path: &Path,
    facts: &dyn BoxFacts,
) -> Result<(Config, Vec<ConfigWarning>), ConfigErrors> {
    load_checked(path, facts, super::tls::Validity::Required)
}

fn load_checked(
    path: &Path,
    facts: &dyn BoxFacts,
    validity: super::tls::Validity,
) -> Result<(Config, Vec<ConfigWarning>), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read config file: {e} (expected a readable UTF-8 TOML file)"),
        }])
    })?;
    // Secret references are resolved (`secrets.rs`): the result holds the secrets.
    let secrets = SecretSource::from_env(path);
    let (mut config, source) = parse_located(&text, path, facts, Mode::Read(&secrets))?;
    let mut issues = resolve_model_paths(&mut config, path);
    issues.extend(super::http::check_http_files(&config));
    let now = std::time::SystemTime::now();
    let mut warnings = warn_config(&config);
    match super::tls::TlsFiles::read(&config.mqtt, now, validity) {
        Ok(Some(files)) => warnings.extend(
            files
                .warnings(&config.mqtt, &config.device.id, now)
                .into_iter()
                .map(tls_issue),
        ),
        Ok(None) => {}
        Err(tls) => issues.extend(tls.into_iter().map(tls_issue)),
    }
    source.report(issues)?;
    let warnings = warnings
        .into_iter()
        .map(|w| ConfigWarning(source.locate(w)))
        .collect();
    Ok((config, warnings))
}

fn tls_issue(t: super::tls::TlsIssue) -> Issue {
    Issue {
        path: t.field.to_string(),
        message: t.message,
    }
}

/// A message about `field` (a key path such as `mqtt.cert_file`) of the config file at
/// `file`, located like a load error (0:0 when the file cannot be read or parsed).
pub fn locate(file: &Path, field: &str, message: impl Into<String>) -> ConfigError {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let (doc, _) = DeTable::parse_recoverable(&text);
    let source = Source {
        text: &text,
        file,
        index: SpanIndex::build(doc.get_ref()),
    };
    source.locate(Issue {
        path: field.to_string(),
        message: message.into(),
    })
}

/// Tables an OTA overlay may not set: they need a restart or name the device itself.
pub(super) const NOT_IN_OVERLAY: [&str; 5] = ["device", "mqtt", "storage", "http", "ota.dir"];

/// Reads, parses and validates the device config at `base` with an OTA overlay (a bundle's
/// `config.toml`) deep-merged over it: tables merged key by key, scalars and arrays replaced.
/// Relative model paths in the overlay resolve against the overlay's directory (the slot).
/// Each error is located in the file its value came from.
pub fn load_overlaid(
    base: &Path,
    overlay: &Path,
    facts: &dyn BoxFacts,
) -> Result<Config, ConfigErrors> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: p.to_path_buf(),
                line: 0,
                col: 0,
                path: String::new(),
                message: format!(
                    "cannot read config file: {e} (expected a readable UTF-8 TOML file)"
                ),
            }])
        })
    };
    let (base_text, over_text) = (read(base)?, read(overlay)?);
    let source = |text, file| {
        let (doc, _) = DeTable::parse_recoverable(text);
        Source {
            text,
            file,
            index: SpanIndex::build(doc.get_ref()),
        }
    };
    let (base_src, over_src) = (source(&base_text, base), source(&over_text, overlay));
    let mut merged: toml::Table = match base_text.parse() {
        Ok(t) => t,
        Err(e) => return Err(ConfigErrors(vec![base_src.syntax_error(&e)])),
    };
    let mut over: toml::Table = match over_text.parse() {
        Ok(t) => t,
        Err(e) => return Err(ConfigErrors(vec![over_src.syntax_error(&e)])),
    };
    let forbidden: Vec<Issue> = NOT_IN_OVERLAY
        .iter()
        .filter(|p| over_src.index.by_path.contains_key(**p))
        .map(|p| Issue {
            path: p.to_string(),
            message: format!("an OTA bundle may not set [{p}] (expected only models, cameras and ota keys; [{p}] is the device's own)"),
        })
        .collect();
    over_src.report(forbidden)?;
    over_src.report(overlay_file_references(&over))?;
    let slot = overlay.parent().unwrap_or(Path::new("."));
    over_src.report(overlay_model_paths(&over, slot))?;
    if let Some(toml::Value::Table(models)) = over.get_mut("models") {
        for (_, m) in models.iter_mut() {
            for field in MODEL_FILES {
                if let Some(toml::Value::String(p)) = m.get_mut(field) {
                    let joined = slot.join(p.as_str()).display().to_string();
                    *p = joined;
                }
            }
        }
    }
    merge_tables(&mut merged, over);
    let text = toml::to_string(&merged).map_err(|e| {
        ConfigErrors(vec![over_src.error_at(
            0,
            String::new(),
            format!("cannot merge over {}: {e}", base.display()),
        )])
    })?;
    let relocate = |errors: ConfigErrors| {
        let mut v: Vec<ConfigError> = errors
            .into_errors()
            .into_iter()
            .map(|e| {
                let src = if from_overlay(&over_src.index, &base_src.index, &e.path) {
                    &over_src
                } else {
                    &base_src
                };
                let offset = src.index.span_of(&e.path).map_or(0, |s| s.start);
                src.error_at(offset, e.path, e.message)
            })
            .collect();
        v.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        ConfigErrors(v)
    };
    let secrets = SecretSource::from_env(base);
    let (mut config, merged_src) =
        parse_located(&text, base, facts, Mode::Read(&secrets)).map_err(relocate)?;
    let issues = resolve_model_paths(&mut config, base);
    merged_src.report(issues).map_err(relocate)?;
    Ok(config)
}

/// An OTA overlay's model paths must stay inside its set (`slot`): relative, without `..`
/// (after dropping `.` parts), and not leading out of it through a symbolic link.
pub(super) fn overlay_model_paths(over: &toml::Table, slot: &Path) -> Vec<Issue> {
    let Some(toml::Value::Table(models)) = over.get("models") else {
        return Vec::new();
    };
    let root = slot.canonicalize().unwrap_or_else(|_| slot.to_path_buf());
    let mut issues = Vec::new();
    for (name, m) in models {
        for field in MODEL_FILES {
            let Some(toml::Value::String(p)) = m.get(field) else {
                continue;
            };
            if let Some(i) = overlay_model_path(&root, name, field, p) {
                issues.push(i);
            }
        }
    }
    issues
}

/// The fields of a `[models.NAME]` table that name a file: in an OTA overlay each must stay
/// inside the set, and is read relative to it.
const MODEL_FILES: [&str; 3] = ["path", "cpu_path", "calibration_table"];

/// The issue with one file field of an overlay's model (`field` = `p`), if it leaves the set.
fn overlay_model_path(root: &Path, name: &str, field: &str, p: &str) -> Option<Issue> {
    let path = Path::new(p);
    let inside = path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    let through_link = inside && leaves(root, &root.join(path));
    if inside && !through_link {
        return None;
    }
    let how = if through_link {
        "leads out of its OTA set through a symbolic link"
    } else {
        "leaves its OTA set"
    };
    Some(Issue {
        path: join_key(&join_key("models", name), field),
        message: format!(
            "{:?} {how} (expected a path relative to the bundle's files, without \"..\", e.g. \"models/detector.onnx\")",
            p.chars().take(200).collect::<String>()
        ),
    })
}

/// Whether `path` (inside `root` by its text) resolves outside `root`: its deepest existing
/// ancestor, symbolic links followed, is not under `root`.
fn leaves(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .find_map(|a| a.canonicalize().ok())
        .is_some_and(|real| !real.starts_with(root))
}

/// Deep merge: tables key by key, anything else replaced.
pub(super) fn merge_tables(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge_tables(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Whether the value at `path` of a merged document came from the overlay: the overlay holds
/// it (or an array or value above it, which replaced the base's), or holds a deeper part of
/// it than the base does.
pub(super) fn from_overlay(over: &SpanIndex, base: &SpanIndex, path: &str) -> bool {
    let deepest = |ix: &SpanIndex| {
        ix.nodes
            .iter()
            .filter(|n| n.path == path || is_ancestor(&n.path, path))
            .map(|n| (n.path.len(), n.array_len.is_some()))
            .collect::<Vec<_>>()
    };
    let o = deepest(over);
    if o.iter().any(|(_, array)| *array) {
        return true;
    }
    let o = o.iter().map(|(l, _)| *l).max();
    let b = deepest(base).iter().map(|(l, _)| *l).max();
    o.is_some() && o >= b
}

/// Parses, resolves secret references as `mode` says, and checks. With
/// [`Mode::Placeholder`] the checks see placeholders and the result keeps the references.
pub(super) fn parse_located<'t>(
    text: &'t str,
    file: &'t Path,
    facts: &dyn BoxFacts,
    mode: Mode<'_>,
) -> Result<(Config, Source<'t>), ConfigErrors> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    let source = Source {
        text,
        file,
        index: SpanIndex::build(doc.get_ref()),
    };
    // Recovery can cascade: only the first syntax error in the file is trustworthy.
    let first_syntax_error = syntax_errors
        .iter()
        .min_by_key(|e| e.span().map_or(0, |s| s.start));
    if let Some(e) = first_syntax_error {
        return Err(ConfigErrors(vec![source.syntax_error(e)]));
    }
    let mut config = Config::deserialize(toml::de::Deserializer::from(doc))
        .map_err(|e| ConfigErrors(vec![source.serde_error(&e)]))?;
    let as_written = matches!(mode, Mode::Placeholder).then(|| config.clone());
    let mut issues = resolve(&mut config, mode);
    issues.extend(check_config(&config, facts));
    issues.extend(check_point_arity(&config, &source.index));
    source.report(issues)?;
    Ok((as_written.unwrap_or(config), source))
}

/// The text being parsed, with what is needed to turn spans and paths into positions.
pub(super) struct Source<'t> {
    pub(super) text: &'t str,
    pub(super) file: &'t Path,
    pub(super) index: SpanIndex,
}

impl Source<'_> {
    pub(super) fn error_at(&self, offset: usize, path: String, message: String) -> ConfigError {
        let (line, col) = line_col(self.text, offset);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            path,
            message,
        }
    }

    pub(super) fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let path = self.index.path_at(&span).to_owned();
        let message = match split_expected(&one_line(e.message())) {
            (what, Some(expected)) => format!("TOML syntax error: {what} (expected {expected})"),
            (what, None) if what.starts_with("duplicate key") => {
                format!("TOML syntax error: {what} (expected each key at most once per table)")
            }
            (what, None) => format!("TOML syntax error: {what} (expected valid TOML)"),
        };
        self.error_at(span.start, path, message)
    }

    pub(super) fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        // Only the document root has an empty span (a missing top-level table).
        let located = if span.is_empty() {
            String::new()
        } else {
            self.index.path_at(&span).to_owned()
        };
        let issue = describe_serde_error(&redact(&one_line(e.message())), located);
        self.error_at(span.start, issue.path, issue.message)
    }

    /// An issue at the position of its field path (or of the nearest ancestor written).
    pub(super) fn locate(&self, issue: Issue) -> ConfigError {
        let offset = self.index.span_of(&issue.path).map_or(0, |s| s.start);
        self.error_at(offset, issue.path, issue.message)
    }

    /// `Ok` when there are no issues; otherwise every issue, located, in file order.
    pub(super) fn report(&self, issues: Vec<Issue>) -> Result<(), ConfigErrors> {
        if issues.is_empty() {
            return Ok(());
        }
        let mut errors: Vec<ConfigError> = issues.into_iter().map(|i| self.locate(i)).collect();
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let col = text
        .get(line_start..offset)
        .map_or(offset - line_start, |s| s.chars().count());
    (line, col + 1)
}

// ---------------------------------------------------------------------------------------------
// Model files (load only)

/// Makes model paths absolute (relative ones against the config file's directory) and reports
/// missing model files of models that an enabled camera uses.
pub(super) fn resolve_model_paths(config: &mut Config, config_file: &Path) -> Vec<Issue> {
    let dir = config_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let used: BTreeSet<String> = config
        .cameras
        .iter()
        .filter(|cam| cam.enabled)
        .map(|cam| cam.model.clone())
        .collect();
    let absolute = |p: &mut std::path::PathBuf| {
        let joined = dir.join(&*p);
        *p = std::path::absolute(&joined).unwrap_or(joined);
    };
    for d in [
        config.storage.dir.as_mut(),
        config.ota.dir.as_mut(),
        config.mqtt.ca_file.as_mut(),
        config.mqtt.cert_file.as_mut(),
        config.mqtt.key_file.as_mut(),
    ]
    .into_iter()
    .flatten()
    .chain(
        config
            .http
            .tls
            .iter_mut()
            .flat_map(|t| [&mut t.cert, &mut t.key]),
    ) {
        absolute(d);
    }
    let mut c = Checker::default();
    for (name, model) in config.models.iter_mut() {
        absolute(&mut model.path);
        model.cpu_path.iter_mut().for_each(absolute);
        if let Some(t) = model.calibration_table.as_mut() {
            absolute(t);
            if used.contains(name) && !t.is_file() {
                c.err(
                    format!("{}.calibration_table", join_key("models", name)),
                    format!(
                        "calibration table {} not found (expected a TensorRT INT8 calibration table; a relative path is relative to the config file's directory)",
                        t.display()
                    ),
                );
            }
        }
        if !used.contains(name) {
            continue;
        }
        // The ONNX files: `path`, and `cpu_path` where set.
        for (field, file) in [
            ("path", Some(&model.path)),
            ("cpu_path", model.cpu_path.as_ref()),
        ] {
            if let Some(problem) = file.and_then(|f| model_file_problem(f)) {
                c.err(format!("{}.{field}", join_key("models", name)), problem);
            }
        }
    }
    c.issues
}

pub(super) fn model_file_problem(path: &Path) -> Option<String> {
    let expected =
        "expected an ONNX file; a relative path is relative to the config file's directory";
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(_) => Some(format!(
            "model path {} is not a file ({expected})",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!(
            "model file {} not found ({expected})",
            path.display()
        )),
        Err(e) => Some(format!(
            "cannot read model file {}: {e} ({expected})",
            path.display()
        )),
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Range;

    fn index(text: &str) -> SpanIndex {
        let (doc, errors) = DeTable::parse_recoverable(text);
        assert!(errors.is_empty(), "{text}");
        SpanIndex::build(doc.get_ref())
    }

    fn offset_of(text: &str, needle: &str) -> Range<usize> {
        let start = text.find(needle).expect("needle in text");
        start..start + needle.len()
    }

    const DOC: &str = "[device]\nid = \"x\"\n\n[models.\"a.b\"]\npath = \"m.onnx\"\n\n\
        [[cameras]]\nname = \"c\"\n\n[[cameras.zones]]\nname = \"z\"\n\
        polygon = [[0, 0], [1, 0], [1, 1]]\n";

    #[test]
    fn every_file_of_an_overlays_model_must_stay_inside_its_set() {
        let slot = std::env::temp_dir().join(format!("vigil-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&slot).unwrap();
        let over: toml::Table = toml::from_str(
            "[models.m]\npath = \"models/a.onnx\"\ncpu_path = \"../../etc/a.onnx\"\n\
             calibration_table = \"/etc/table\"\n[models.ok]\npath = \"a.onnx\"\n\
             cpu_path = \"./models/a-int8.onnx\"\n",
        )
        .unwrap();
        let issues = overlay_model_paths(&over, &slot);
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["models.m.cpu_path", "models.m.calibration_table"]);
        assert!(issues[0].message.contains("leaves its OTA set"));
        let _ = std::fs::remove_dir_all(&slot);
    }

    #[test]
    fn path_at_finds_innermost_value() {
        let idx = index(DOC);
        let span = offset_of(DOC, "[1, 0]");
        assert_eq!(idx.path_at(&span), "cameras[0].zones[0].polygon[1]");
        let one = span.start + 1..span.start + 2;
        assert_eq!(idx.path_at(&one), "cameras[0].zones[0].polygon[1][0]");
        assert_eq!(
            idx.path_at(&offset_of(DOC, "\"m.onnx\"")),
            "models.\"a.b\".path"
        );
    }

    #[test]
    fn path_at_matches_keys_and_headers() {
        let idx = index(DOC);
        let key = offset_of(DOC, "polygon");
        assert_eq!(idx.path_at(&key), "cameras[0].zones[0].polygon");
        assert_eq!(
            idx.path_at(&offset_of(DOC, "[[cameras.zones]]")),
            "cameras[0].zones[0]"
        );
        assert_eq!(idx.path_at(&offset_of(DOC, "[[cameras]]")), "cameras[0]");
        assert_eq!(idx.path_at(&(0..0)), "device");
        assert_eq!(idx.path_at(&(DOC.len()..DOC.len())), "");
    }

    #[test]
    fn span_of_falls_back_to_ancestor() {
        let idx = index(DOC);
        let polygon = offset_of(DOC, "[[0, 0], [1, 0], [1, 1]]");
        assert_eq!(idx.span_of("cameras[0].zones[0].polygon"), Some(polygon));
        let zone = offset_of(DOC, "[[cameras.zones]]");
        assert_eq!(idx.span_of("cameras[0].zones[0].dwell"), Some(zone));
        let camera = offset_of(DOC, "[[cameras]]");
        assert_eq!(
            idx.span_of("cameras[0].reconnect.max_backoff"),
            Some(camera)
        );
        assert_eq!(idx.array_len("cameras[0].zones[0].polygon"), Some(3));
        // `cameras[0].name` must not be taken for an ancestor of `cameras[0].names`.
        assert!(!is_ancestor("cameras[0].name", "cameras[0].names"));
        assert!(is_ancestor("", "mqtt"));
    }

    #[test]
    fn keys_are_quoted_when_not_bare() {
        assert_eq!(join_key("", "device"), "device");
        assert_eq!(join_key("models", "nano-det_1"), "models.nano-det_1");
        assert_eq!(join_key("models", "a.b"), "models.\"a.b\"");
    }

    #[test]
    fn line_col_counts_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, text.find('"').unwrap_or(0)), (2, 6));
        assert_eq!(line_col(text, 10_000), (3, 1));
    }

    #[test]
    fn serde_messages_are_rewritten() {
        let unknown = describe_serde_error(
            "unknown field `fsp`, expected one of `name`, `url`",
            "cameras[0].fsp".into(),
        );
        assert_eq!(unknown.path, "cameras[0].fsp");
        assert_eq!(unknown.message, "unknown field (expected one of name, url)");
        let missing = describe_serde_error("missing field `id`", "device".into());
        assert_eq!(missing.path, "device.id");
        let variant = describe_serde_error(
            "unknown variant `sideways`, expected one of `in`, `out`, `both`",
            "x".into(),
        );
        assert_eq!(
            variant.message,
            "unknown value \"sideways\" (expected one of \"in\", \"out\", \"both\")"
        );
    }

    #[test]
    fn class_suggestions() {
        assert_eq!(closest_class("persn"), Some("person"));
        assert_eq!(closest_class("zebraa"), Some("zebra"));
        assert_eq!(closest_class("spaceship"), None);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn urls() {
        assert_eq!(url_problem("rtsp://u:p@cam.local:554/stream"), None);
        assert_eq!(url_problem("RTSPS://cam/x"), None);
        assert_eq!(url_problem("file:///videos/a.mp4"), None);
        assert!(url_problem("file://videos/a.mp4").is_some());
        assert!(url_problem("rtsp:///path").is_some());
        let http = url_problem("http://u:secret@cam/x").unwrap_or_default();
        assert!(
            http.contains("\"http\"") && !http.contains("secret"),
            "{http}"
        );
    }
}
