//! Config errors and their text: [`ConfigError`] (`FILE:LINE:COL: field.path: what is wrong
//! (expected …)`), [`ConfigErrors`], and the translation of TOML syntax and serde messages into
//! that form.

use super::spans::*;
use std::fmt;
use std::path::PathBuf;

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

/// Something a config allows but that is probably not meant (MQTT over plain TCP, a client
/// certificate about to expire), located like an error; prints as
/// `FILE:LINE:COL: warning: field.path: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = &self.0;
        write!(f, "{}:{}:{}: warning: ", e.file.display(), e.line, e.col)?;
        if !e.path.is_empty() {
            write!(f, "{}: ", e.path)?;
        }
        f.write_str(&e.message)
    }
}

/// Every problem found in a config file, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub(super) Vec<ConfigError>);

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
pub(super) struct Issue {
    pub(super) path: String,
    pub(super) message: String,
}

// ---------------------------------------------------------------------------------------------
// Serde and syntax error messages

/// Duration fields: a wrong type there means "not a duration string".
pub(super) const DURATION_FIELDS: [&str; 11] = [
    "idle_timeout",
    "header_timeout",
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
pub(super) fn describe_serde_error(msg: &str, located: String) -> Issue {
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
pub(super) fn backticked<'m>(msg: &'m str, prefix: &str) -> Option<(&'m str, &'m str)> {
    msg.strip_prefix(prefix)?.split_once('`')
}

/// `"what, expected x"` → `("what", Some("x"))`.
pub(super) fn split_expected(msg: &str) -> (String, Option<String>) {
    match msg.split_once(", expected ") {
        Some((what, expected)) => (what.to_owned(), Some(expected.to_owned())),
        None => (msg.to_owned(), None),
    }
}

/// Serde's Rust-flavoured type names in words a config author knows.
pub(super) fn friendly_expected(expected: &str) -> String {
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

pub(super) fn one_line(msg: &str) -> String {
    msg.trim().lines().collect::<Vec<_>>().join("; ")
}

/// The last segment of a path: `cameras[0].fps` → `fps`, `cameras[0]` → `cameras[0]`.
pub(super) fn last_segment(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(_, last)| last)
}
