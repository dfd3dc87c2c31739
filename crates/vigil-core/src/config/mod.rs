//! Config: TOML text → typed, validated [`Config`], with errors that point at file, line,
//! column and field; and what a reload must do to go from one config's plan to another's
//! ([`diff`], [`PlanDiff`]). Knows nothing of GStreamer, inference or MQTT.

mod checks;
mod diagnostics;
mod diff;
mod http;
mod load;
mod schema;
mod secrets;
mod spans;
mod tls;

pub use diagnostics::{ConfigError, ConfigErrors, ConfigWarning};
pub use diff::{
    CameraChange, CameraStep, GroupView, ModelAction, PlanDiff, PlanView, Section, diff,
    diff_plans, restart_sections, same_source,
};
pub use load::{load, load_overlaid, load_with_warnings, locate, parse};
pub use schema::*;
pub use secrets::{MAX_SECRET_BYTES, SecretSource, private_file_problem, redact_secrets};
pub use tls::{Identity, TlsFiles, TlsIssue, Validity, rfc3339, tls_contents, tls_paths};
