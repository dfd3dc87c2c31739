//! Config loading and semantic validation, with errors that point at the offending value.
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

use super::{Config, Dur, LineConfig, ModelConfig, ZoneConfig, ZoneEventKind};
use crate::analytics::{COCO_CLASSES, coco_class_id, geometry};
use crate::facts::{BoxFacts, GpuProbe};
use crate::redact::redact;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

// ---------------------------------------------------------------------------------------------
// Errors

/// One problem in a config file, located at a 1-based line and column (0:0 when the file
/// could not be read at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    /// Field path such as `cameras[0].zones[1].polygon`; empty when no field is concerned.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.col)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config file, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<ConfigError>);

impl ConfigErrors {
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A problem found by a check, located by field path only.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Issue {
    path: String,
    message: String,
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Parses and validates config text. `file` is only used in error messages; nothing is read
/// from disk (model files are checked by [`load`]).
pub fn parse(text: &str, file: &Path, facts: &dyn BoxFacts) -> Result<Config, ConfigErrors> {
    parse_located(text, file, facts).map(|(config, _)| config)
}

/// Reads, parses and validates a config file; relative model paths in the result are made
/// absolute (relative to the config file's directory), and the model files of enabled cameras
/// must exist.
pub fn load(path: &Path, facts: &dyn BoxFacts) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            path: String::new(),
            message: format!("cannot read config file: {e} (expected a readable UTF-8 TOML file)"),
        }])
    })?;
    let (mut config, source) = parse_located(&text, path, facts)?;
    let issues = resolve_model_paths(&mut config, path);
    source.report(issues)?;
    Ok(config)
}

/// Tables an OTA overlay may not set: they need a restart or name the device itself.
const NOT_IN_OVERLAY: [&str; 5] = ["device", "mqtt", "storage", "http", "ota.dir"];

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
    let slot = overlay.parent().unwrap_or(Path::new("."));
    if let Some(toml::Value::Table(models)) = over.get_mut("models") {
        for (_, m) in models.iter_mut() {
            if let Some(toml::Value::String(p)) = m.get_mut("path") {
                let joined = slot.join(p.as_str()).display().to_string();
                *p = joined;
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
    let (mut config, merged_src) = parse_located(&text, base, facts).map_err(relocate)?;
    let issues = resolve_model_paths(&mut config, base);
    merged_src.report(issues).map_err(relocate)?;
    Ok(config)
}

/// Deep merge: tables key by key, anything else replaced.
fn merge_tables(into: &mut toml::Table, from: toml::Table) {
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
fn from_overlay(over: &SpanIndex, base: &SpanIndex, path: &str) -> bool {
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

fn parse_located<'t>(
    text: &'t str,
    file: &'t Path,
    facts: &dyn BoxFacts,
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
    let config = Config::deserialize(toml::de::Deserializer::from(doc))
        .map_err(|e| ConfigErrors(vec![source.serde_error(&e)]))?;
    let mut issues = check_config(&config, facts);
    issues.extend(check_point_arity(&config, &source.index));
    source.report(issues)?;
    Ok((config, source))
}

/// The text being parsed, with what is needed to turn spans and paths into positions.
struct Source<'t> {
    text: &'t str,
    file: &'t Path,
    index: SpanIndex,
}

impl Source<'_> {
    fn error_at(&self, offset: usize, path: String, message: String) -> ConfigError {
        let (line, col) = line_col(self.text, offset);
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            path,
            message,
        }
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
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

    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
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

    /// `Ok` when there are no issues; otherwise every issue, located, in file order.
    fn report(&self, issues: Vec<Issue>) -> Result<(), ConfigErrors> {
        if issues.is_empty() {
            return Ok(());
        }
        let mut errors: Vec<ConfigError> = issues
            .into_iter()
            .map(|issue| {
                let offset = self.index.span_of(&issue.path).map_or(0, |s| s.start);
                self.error_at(offset, issue.path, issue.message)
            })
            .collect();
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
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
// Field paths and their spans

/// Where one key path sits in the text.
#[derive(Debug, Clone)]
struct Node {
    path: String,
    /// The key's span; `None` for array elements.
    key: Option<Range<usize>>,
    /// The value's span (for a `[table]` or `[[array]]` only its header).
    value: Range<usize>,
    /// Element count when the value is an array.
    array_len: Option<usize>,
}

/// Every key path of a parsed document, with its spans.
#[derive(Debug, Default)]
struct SpanIndex {
    nodes: Vec<Node>,
    by_path: HashMap<String, usize>,
}

impl SpanIndex {
    fn build(root: &DeTable<'_>) -> Self {
        let mut index = SpanIndex::default();
        index.add_table("", root);
        index
    }

    fn add_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table.iter() {
            let path = join_key(prefix, key.get_ref());
            self.add_value(path, Some(key.span()), value);
        }
    }

    fn add_value(
        &mut self,
        path: String,
        key: Option<Range<usize>>,
        value: &toml::Spanned<DeValue<'_>>,
    ) {
        let array_len = value.get_ref().as_array().map(|a| a.len());
        self.by_path.insert(path.clone(), self.nodes.len());
        self.nodes.push(Node {
            path: path.clone(),
            key,
            value: value.span(),
            array_len,
        });
        match value.get_ref() {
            DeValue::Table(table) => self.add_table(&path, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add_value(format!("{path}[{i}]"), None, item);
                }
            }
            _ => {}
        }
    }

    /// The innermost key path whose key or value span contains `span`; `""` when none does.
    fn path_at(&self, span: &Range<usize>) -> &str {
        self.nodes
            .iter()
            .flat_map(|n| n.key.iter().chain([&n.value]).map(move |r| (n, r)))
            .filter(|(_, r)| span_contains(r, span))
            .min_by_key(|(n, r)| (r.len(), usize::MAX - n.path.len()))
            .map_or("", |(n, _)| n.path.as_str())
    }

    /// The value span of `path`, or of its nearest ancestor present in the text (a field left
    /// to its default is reported at its table).
    fn span_of(&self, path: &str) -> Option<Range<usize>> {
        if let Some(&i) = self.by_path.get(path) {
            return Some(self.nodes[i].value.clone());
        }
        self.nodes
            .iter()
            .filter(|n| is_ancestor(&n.path, path))
            .max_by_key(|n| n.path.len())
            .map(|n| n.value.clone())
    }

    fn array_len(&self, path: &str) -> Option<usize> {
        self.by_path
            .get(path)
            .and_then(|&i| self.nodes[i].array_len)
    }
}

/// Whether `outer` contains `inner`; an empty `inner` may also touch `outer`'s end (a syntax
/// error just after an unterminated value).
fn span_contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start
        && inner.end <= outer.end
        && (inner.start < outer.end || inner.is_empty())
}

/// Whether `ancestor` is a proper prefix of `path` ending at a path-segment boundary.
fn is_ancestor(ancestor: &str, path: &str) -> bool {
    path.len() > ancestor.len()
        && path.starts_with(ancestor)
        && (ancestor.is_empty() || matches!(path.as_bytes()[ancestor.len()], b'.' | b'['))
}

/// `prefix.key`, with the key quoted when it is not a bare TOML key.
fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

// ---------------------------------------------------------------------------------------------
// Serde and syntax error messages

/// Duration fields: a wrong type there means "not a duration string".
const DURATION_FIELDS: [&str; 9] = [
    "keep_alive",
    "telemetry_interval",
    "stall_timeout",
    "rtsp_latency",
    "initial_backoff",
    "max_backoff",
    "circuit_open",
    "dwell",
    "cooldown",
];

/// Rewrites a serde message into `what is wrong (expected …)` and fixes up the path for
/// missing and unknown fields (serde names the field; the span points at its table or key).
fn describe_serde_error(msg: &str, located: String) -> Issue {
    if let Some((field, rest)) = backticked(msg, "unknown field `") {
        let path = if last_segment(&located) == join_key("", field) {
            located
        } else {
            join_key(&located, field)
        };
        let expected = match rest.trim_start_matches(", ") {
            r if r.starts_with("there are no fields") => "no fields here".to_owned(),
            r => r.trim_start_matches("expected ").replace('`', ""),
        };
        let message = format!("unknown field (expected {expected})");
        return Issue { path, message };
    }
    if let Some((field, _)) = backticked(msg, "missing field `") {
        // Every top-level field is a table.
        let message = if located.is_empty() {
            format!("missing table (expected a [{field}] table)")
        } else {
            format!("missing field (expected `{field} = …` in this table)")
        };
        let path = join_key(&located, field);
        return Issue { path, message };
    }
    if let Some((value, rest)) = backticked(msg, "unknown variant `") {
        let expected = rest
            .trim_start_matches(", ")
            .trim_start_matches("expected ")
            .replace('`', "\"");
        let message = format!("unknown value {value:?} (expected {expected})");
        return Issue {
            path: located,
            message,
        };
    }
    let message = match split_expected(msg) {
        (what, _) if msg.contains("(expected") => what,
        (what, Some(expected)) => {
            let what = what.replace("invalid type: ", "wrong type: found ");
            let expected = if DURATION_FIELDS.contains(&last_segment(&located)) {
                "a duration string such as \"500ms\", \"10s\", \"2m\"".to_owned()
            } else {
                friendly_expected(&expected)
            };
            format!("{what} (expected {expected})")
        }
        (what, None) => what,
    };
    Issue {
        path: located,
        message,
    }
}

/// For `prefix NAME` + "`" + rest: `(NAME, rest)`.
fn backticked<'m>(msg: &'m str, prefix: &str) -> Option<(&'m str, &'m str)> {
    msg.strip_prefix(prefix)?.split_once('`')
}

/// `"what, expected x"` → `("what", Some("x"))`.
fn split_expected(msg: &str) -> (String, Option<String>) {
    match msg.split_once(", expected ") {
        Some((what, expected)) => (what.to_owned(), Some(expected.to_owned())),
        None => (msg.to_owned(), None),
    }
}

/// Serde's Rust-flavoured type names in words a config author knows.
fn friendly_expected(expected: &str) -> String {
    match expected {
        "f32" | "f64" => "a number".to_owned(),
        "u16" => "an integer from 0 to 65535".to_owned(),
        "u32" | "u64" | "usize" => "a non-negative integer".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "a table".to_owned(),
        e if e.starts_with("struct ") => "a table".to_owned(),
        e => e.to_owned(),
    }
}

fn one_line(msg: &str) -> String {
    msg.trim().lines().collect::<Vec<_>>().join("; ")
}

/// The last segment of a path: `cameras[0].fps` → `fps`, `cameras[0]` → `cameras[0]`.
fn last_segment(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(_, last)| last)
}

// ---------------------------------------------------------------------------------------------
// Semantic checks

/// Collects issues; each check method reports at a field path.
#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

impl Checker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn check_config(config: &Config, facts: &dyn BoxFacts) -> Vec<Issue> {
    let mut c = Checker::default();
    check_name(&mut c, "device.id", &config.device.id, "device id");
    check_mqtt(&mut c, config);
    check_storage(&mut c, config);
    check_http(&mut c, config);
    check_ota(&mut c, config);
    for (name, model) in &config.models {
        check_model(&mut c, &join_key("models", name), model, facts);
    }
    check_camera_names(&mut c, config);
    for i in 0..config.cameras.len() {
        check_camera(&mut c, config, i);
    }
    c.issues
}

const NAME_RULE: &str = "1 to 64 characters from A-Z, a-z, 0-9, _ and -";

/// Names used in MQTT topics: `[A-Za-z0-9_-]`, 1..=64 characters.
fn check_name(c: &mut Checker, path: &str, name: &str, what: &str) {
    let len = name.chars().count();
    if name.is_empty() {
        c.err(path, format!("empty {what} (expected {NAME_RULE})"));
    } else if len > 64 {
        c.err(
            path,
            format!("{what} is {len} characters long (expected {NAME_RULE})"),
        );
    } else if let Some(bad) = name
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
    {
        c.err(
            path,
            format!("{what} {name:?} contains {bad:?} (expected {NAME_RULE})"),
        );
    }
}

fn fmt_dur(d: Dur) -> String {
    humantime::format_duration(d.0).to_string()
}

fn check_min_duration(c: &mut Checker, path: &str, value: Dur, min: Duration) {
    if value.0 < min {
        let min = humantime::format_duration(min);
        c.err(
            path,
            format!("{} is too short (expected at least {min})", fmt_dur(value)),
        );
    }
}

fn check_http(c: &mut Checker, config: &Config) {
    let l = &config.http.listen;
    if !l.is_empty() && l.parse::<std::net::SocketAddr>().is_err() {
        c.err("http.listen", format!("{l:?} is not an address:port (expected e.g. \"127.0.0.1:8080\" or \"\" for no HTTP API)"));
    }
}

fn check_ota(c: &mut Checker, config: &Config) {
    let o = &config.ota;
    for (i, k) in o.trusted_keys.iter().enumerate() {
        if let Err(e) = crate::keys::parse_public_key(k) {
            c.err(
                format!("ota.trusted_keys[{i}]"),
                format!("{e} (expected a base64 ed25519 public key from `vigil ota keygen`)"),
            );
        }
    }
    check_min_duration(c, "ota.probation", o.probation, Duration::from_secs(1));
    if o.probation_min_inferences == 0 {
        c.err(
            "ota.probation_min_inferences",
            "0 would accept a model that never ran (expected at least 1)",
        );
    }
    check_name(c, "ota.device_class", &o.device_class, "device class");
    if o.max_bundle_bytes < 1024 {
        c.err(
            "ota.max_bundle_bytes",
            format!(
                "{} bytes is too small (expected at least 1024)",
                o.max_bundle_bytes
            ),
        );
    }
}

fn check_storage(c: &mut Checker, config: &Config) {
    let s = &config.storage;
    if s.max_events == 0 {
        c.err("storage.max_events", "0 events (expected at least 1)");
    }
    if s.max_bytes < 4096 {
        c.err(
            "storage.max_bytes",
            format!(
                "{} bytes is too small (expected at least 4096)",
                s.max_bytes
            ),
        );
    }
    check_min_duration(c, "storage.max_age", s.max_age, Duration::from_secs(60));
}

fn check_mqtt(c: &mut Checker, config: &Config) {
    let mqtt = &config.mqtt;
    if mqtt.host.trim().is_empty() {
        c.err(
            "mqtt.host",
            "empty host (expected a broker host name or IP address)",
        );
    }
    if mqtt.port == 0 {
        c.err(
            "mqtt.port",
            "port 0 is not a valid port (expected 1 to 65535)",
        );
    }
    if mqtt.topic_prefix.is_empty()
        || mqtt.topic_prefix.starts_with('/')
        || mqtt.topic_prefix.ends_with('/')
    {
        c.err(
            "mqtt.topic_prefix",
            format!(
                "topic prefix {:?} is empty or starts or ends with '/' (expected e.g. \"vigil\")",
                mqtt.topic_prefix
            ),
        );
    }
    if mqtt.topic_prefix.contains(['+', '#']) {
        c.err(
            "mqtt.topic_prefix",
            format!(
                "topic prefix {:?} contains an MQTT wildcard (expected no '+' or '#')",
                mqtt.topic_prefix
            ),
        );
    }
    check_min_duration(
        c,
        "mqtt.keep_alive",
        mqtt.keep_alive,
        Duration::from_secs(5),
    );
    check_min_duration(
        c,
        "mqtt.telemetry_interval",
        mqtt.telemetry_interval,
        Duration::from_secs(1),
    );
}

fn check_model(c: &mut Checker, path: &str, model: &ModelConfig, facts: &dyn BoxFacts) {
    if model.path.as_os_str().is_empty() {
        c.err(
            format!("{path}.path"),
            "empty model path (expected the path of an ONNX file)",
        );
    }
    if model.backend == crate::config::BackendKind::Cuda
        && let GpuProbe::Unavailable(why) = facts.gpu()
    {
        c.err(
            format!("{path}.backend"),
            format!(
                "backend \"cuda\" needs an NVIDIA GPU, and this box has none usable: {why} (expected \"cpu\" or \"auto\")"
            ),
        );
    }
    if model.threads > 256 {
        c.err(
            format!("{path}.threads"),
            format!(
                "{} threads is too many (expected 0 for one per core, or 1 to 256)",
                model.threads
            ),
        );
    }
    let size = model.input_size;
    if !(32..=2048).contains(&size) {
        c.err(
            format!("{path}.input_size"),
            format!("input size {size} out of range (expected a multiple of 32 from 32 to 2048)"),
        );
    } else if !size.is_multiple_of(32) {
        c.err(
            format!("{path}.input_size"),
            format!("input size {size} is not a multiple of 32 (expected e.g. 320, 416)"),
        );
    }
}

fn check_camera_names(c: &mut Checker, config: &Config) {
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (i, camera) in config.cameras.iter().enumerate() {
        let path = format!("cameras[{i}].name");
        check_name(c, &path, &camera.name, "camera name");
        if let Some(first) = first_use.get(camera.name.as_str()) {
            c.err(
                path,
                format!(
                    "duplicate camera name {:?} (expected unique camera names; first used by cameras[{first}])",
                    camera.name
                ),
            );
        } else {
            first_use.insert(&camera.name, i);
        }
    }
}

fn check_camera(c: &mut Checker, config: &Config, i: usize) {
    let camera = &config.cameras[i];
    let cp = format!("cameras[{i}]");
    if let Some(problem) = url_problem(&camera.url) {
        c.err(format!("{cp}.url"), problem);
    }
    if !config.models.contains_key(&camera.model) {
        let known: Vec<&str> = config.models.keys().map(String::as_str).collect();
        let expected = if known.is_empty() {
            format!("a [models.{}] table; none is defined", camera.model)
        } else {
            format!("one of the [models] tables: {}", known.join(", "))
        };
        c.err(
            format!("{cp}.model"),
            format!("unknown model {:?} (expected {expected})", camera.model),
        );
    }
    if !(camera.fps > 0.0 && camera.fps <= 120.0) {
        c.err(
            format!("{cp}.fps"),
            format!(
                "fps {} out of range (expected more than 0, at most 120)",
                camera.fps
            ),
        );
    }
    check_score(c, &format!("{cp}.min_score"), camera.min_score);
    check_min_duration(
        c,
        &format!("{cp}.stall_timeout"),
        camera.stall_timeout,
        Duration::from_secs(1),
    );
    check_reconnect(c, &cp, config, i);
    check_rule_names(c, &cp, config, i);
    for (j, zone) in camera.zones.iter().enumerate() {
        check_zone(c, &format!("{cp}.zones[{j}]"), zone);
    }
    for (j, line) in camera.lines.iter().enumerate() {
        check_line(c, &format!("{cp}.lines[{j}]"), line);
    }
}

/// Why a camera URL is unusable, if it is. Never quotes the URL (it may carry a password).
fn url_problem(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let expected = "expected rtsp://host/path, rtsps://host/path or file:///absolute/path";
    if let Some(rest) = lower
        .strip_prefix("rtsp://")
        .or_else(|| lower.strip_prefix("rtsps://"))
    {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        return host
            .is_empty()
            .then(|| format!("RTSP URL without a host ({expected})"));
    }
    if lower.starts_with("file://") {
        let rest = url.get("file://".len()..).unwrap_or("");
        return (!rest.starts_with('/') || rest.len() < 2).then(|| {
            "file:// URL without an absolute path (expected file:///absolute/path)".to_owned()
        });
    }
    let scheme = match url.split_once("://") {
        Some((scheme, _)) => format!("unsupported URL scheme {scheme:?}"),
        None => "URL without a scheme".to_owned(),
    };
    Some(format!("{scheme} ({expected})"))
}

fn check_score(c: &mut Checker, path: &str, score: f32) {
    if !(0.0..=1.0).contains(&score) {
        c.err(
            path,
            format!("score {score} out of range (expected 0 to 1)"),
        );
    }
}

fn check_reconnect(c: &mut Checker, cp: &str, config: &Config, i: usize) {
    let r = &config.cameras[i].reconnect;
    let rp = format!("{cp}.reconnect");
    if r.initial_backoff.0.is_zero() {
        c.err(
            format!("{rp}.initial_backoff"),
            "initial back-off of 0 (expected more than 0, e.g. \"1s\")",
        );
    }
    if r.max_backoff < r.initial_backoff {
        c.err(
            format!("{rp}.max_backoff"),
            format!(
                "max_backoff {} is shorter than initial_backoff {} (expected at least initial_backoff)",
                fmt_dur(r.max_backoff),
                fmt_dur(r.initial_backoff)
            ),
        );
    }
    check_min_duration(
        c,
        &format!("{rp}.circuit_open"),
        r.circuit_open,
        Duration::from_secs(1),
    );
    if r.circuit_after == 0 {
        c.err(
            format!("{rp}.circuit_after"),
            "circuit_after 0 (expected at least 1 failed attempt)",
        );
    }
}

/// Zone and line names: non-empty, unique among the camera's zones and lines together.
fn check_rule_names(c: &mut Checker, cp: &str, config: &Config, i: usize) {
    let camera = &config.cameras[i];
    let zones = camera
        .zones
        .iter()
        .enumerate()
        .map(|(j, z)| (format!("zones[{j}]"), &z.name));
    let lines = camera
        .lines
        .iter()
        .enumerate()
        .map(|(j, l)| (format!("lines[{j}]"), &l.name));
    let mut first_use: HashMap<&str, String> = HashMap::new();
    for (rule, name) in zones.chain(lines) {
        let path = format!("{cp}.{rule}.name");
        if name.trim().is_empty() {
            c.err(
                path,
                "empty rule name (expected a name for this zone or line)",
            );
        } else if let Some(first) = first_use.get(name.as_str()) {
            c.err(
                path,
                format!(
                    "duplicate rule name {name:?} (expected names unique among this camera's zones and lines; first used by {first})"
                ),
            );
        } else {
            first_use.insert(name, rule);
        }
    }
}

fn in_unit(v: f32) -> bool {
    (0.0..=1.0).contains(&v)
}

fn point_in_frame(p: [f32; 2]) -> bool {
    in_unit(p[0]) && in_unit(p[1])
}

fn fmt_point(p: [f32; 2]) -> String {
    format!("[{}, {}]", p[0], p[1])
}

fn check_zone(c: &mut Checker, zp: &str, zone: &ZoneConfig) {
    check_polygon(c, &format!("{zp}.polygon"), &zone.polygon);
    check_classes(c, &format!("{zp}.classes"), &zone.classes);
    if let Some(score) = zone.min_score {
        check_score(c, &format!("{zp}.min_score"), score);
    }
    check_zone_events(c, zp, zone);
}

fn check_polygon(c: &mut Checker, pp: &str, polygon: &[[f32; 2]]) {
    if polygon.len() < 3 {
        c.err(
            pp,
            format!(
                "polygon has {} vertices (expected at least 3)",
                polygon.len()
            ),
        );
        return;
    }
    let mut in_frame = true;
    for (k, &p) in polygon.iter().enumerate() {
        if !point_in_frame(p) {
            in_frame = false;
            c.err(
                format!("{pp}[{k}]"),
                format!(
                    "vertex {} is outside the frame (expected coordinates from 0 to 1)",
                    fmt_point(p)
                ),
            );
        }
    }
    if !in_frame {
        return;
    }
    if let Some((first, k)) = repeated_vertex(polygon) {
        c.err(
            format!("{pp}[{k}]"),
            format!("vertex repeats polygon[{first}] (expected distinct vertices)"),
        );
        return;
    }
    match geometry::polygon_self_intersection(polygon) {
        Some((0, 0)) => c.err(
            pp,
            "polygon has no area (expected a simple polygon, vertices in order)",
        ),
        Some((a, b)) => c.err(
            pp,
            format!(
                "polygon edges {a} and {b} cross (expected a simple polygon, vertices in order)"
            ),
        ),
        None => {}
    }
}

/// The first pair `(i, j)`, `i < j`, of equal vertices.
fn repeated_vertex(polygon: &[[f32; 2]]) -> Option<(usize, usize)> {
    (0..polygon.len()).find_map(|j| (0..j).find(|&i| polygon[i] == polygon[j]).map(|i| (i, j)))
}

fn check_classes(c: &mut Checker, path: &str, classes: &[String]) {
    for (k, class) in classes.iter().enumerate() {
        if coco_class_id(class).is_none() {
            let hint = closest_class(class)
                .map(|s| format!("; did you mean {s:?}?"))
                .unwrap_or_default();
            c.err(
                format!("{path}[{k}]"),
                format!(
                    "unknown class {class:?} (expected a COCO class name such as \"person\", \"car\"{hint})"
                ),
            );
        }
    }
}

/// The COCO class name within edit distance 2 of `name`, if any.
fn closest_class(name: &str) -> Option<&'static str> {
    let name = name.to_lowercase();
    COCO_CLASSES
        .iter()
        .map(|&class| (edit_distance(&name, class), class))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, class)| class)
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

fn event_name(kind: ZoneEventKind) -> &'static str {
    match kind {
        ZoneEventKind::Enter => "enter",
        ZoneEventKind::Leave => "leave",
        ZoneEventKind::Dwell => "dwell",
    }
}

fn check_zone_events(c: &mut Checker, zp: &str, zone: &ZoneConfig) {
    let events_path = format!("{zp}.events");
    if zone.events.is_empty() {
        c.err(
            &events_path,
            "no events (expected at least one of \"enter\", \"leave\", \"dwell\")",
        );
    }
    let mut seen = BTreeSet::new();
    for (k, &kind) in zone.events.iter().enumerate() {
        if !seen.insert(event_name(kind)) {
            c.err(
                format!("{events_path}[{k}]"),
                format!(
                    "duplicate event \"{}\" (expected each event at most once)",
                    event_name(kind)
                ),
            );
        }
    }
    let dwell_event = zone.events.iter().position(|&e| e == ZoneEventKind::Dwell);
    match (dwell_event, zone.dwell) {
        (Some(k), None) => c.err(
            format!("{events_path}[{k}]"),
            "\"dwell\" event without a dwell duration (expected e.g. dwell = \"30s\" in this zone)",
        ),
        (_, Some(d)) if d.0.is_zero() => c.err(
            format!("{zp}.dwell"),
            "dwell of 0 (expected more than 0, e.g. \"30s\")",
        ),
        (None, Some(_)) => c.err(
            format!("{zp}.dwell"),
            "dwell is set but events has no \"dwell\" (expected \"dwell\" in events, or no dwell)",
        ),
        _ => {}
    }
}

fn check_line(c: &mut Checker, lp: &str, line: &LineConfig) {
    let mut in_frame = true;
    for (end, p) in [("from", line.from), ("to", line.to)] {
        if !point_in_frame(p) {
            in_frame = false;
            c.err(
                format!("{lp}.{end}"),
                format!(
                    "point {} is outside the frame (expected coordinates from 0 to 1)",
                    fmt_point(p)
                ),
            );
        }
    }
    let length = (line.to[0] - line.from[0]).hypot(line.to[1] - line.from[1]);
    if in_frame && length <= 1e-3 {
        c.err(
            format!("{lp}.to"),
            format!(
                "line from {} to {} has no length (expected two points at least 0.001 apart)",
                fmt_point(line.from),
                fmt_point(line.to)
            ),
        );
    }
    check_classes(c, &format!("{lp}.classes"), &line.classes);
    if let Some(score) = line.min_score {
        check_score(c, &format!("{lp}.min_score"), score);
    }
}

/// Points are `[f32; 2]`, and serde ignores extra array elements: check the text's arrays.
fn check_point_arity(config: &Config, index: &SpanIndex) -> Vec<Issue> {
    let mut c = Checker::default();
    let mut check = |path: String| {
        if let Some(n) = index.array_len(&path).filter(|&n| n != 2) {
            c.err(
                path,
                format!("point with {n} coordinates (expected [x, y])"),
            );
        }
    };
    for (i, camera) in config.cameras.iter().enumerate() {
        for (j, zone) in camera.zones.iter().enumerate() {
            for k in 0..zone.polygon.len() {
                check(format!("cameras[{i}].zones[{j}].polygon[{k}]"));
            }
        }
        for j in 0..camera.lines.len() {
            check(format!("cameras[{i}].lines[{j}].from"));
            check(format!("cameras[{i}].lines[{j}].to"));
        }
    }
    c.issues
}

// ---------------------------------------------------------------------------------------------
// Model files (load only)

/// Makes model paths absolute (relative ones against the config file's directory) and reports
/// missing model files of models that an enabled camera uses.
fn resolve_model_paths(config: &mut Config, config_file: &Path) -> Vec<Issue> {
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
    for d in [config.storage.dir.as_mut(), config.ota.dir.as_mut()]
        .into_iter()
        .flatten()
    {
        let joined = dir.join(&*d);
        *d = std::path::absolute(&joined).unwrap_or(joined);
    }
    let mut c = Checker::default();
    for (name, model) in config.models.iter_mut() {
        let joined = dir.join(&model.path);
        model.path = std::path::absolute(&joined).unwrap_or(joined);
        if used.contains(name)
            && let Some(problem) = model_file_problem(&model.path)
        {
            c.err(format!("{}.path", join_key("models", name)), problem);
        }
    }
    c.issues
}

fn model_file_problem(path: &Path) -> Option<String> {
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
