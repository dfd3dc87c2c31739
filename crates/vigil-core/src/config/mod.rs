//! Config: TOML text → typed, validated [`Config`], with errors that point at file, line,
//! column and field. Knows nothing of GStreamer, inference or MQTT.

mod schema;
mod validate;

pub use schema::*;
pub use validate::{ConfigError, ConfigErrors, load, load_overlaid, parse};
