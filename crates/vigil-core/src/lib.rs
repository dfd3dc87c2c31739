//! Vigil's core: what the appliance knows without touching hardware, a network or a thread.
//!
//! [`config`] (schema, loading with located errors, validation), [`analytics`] (geometry, NMS,
//! tracking, rules), [`events`] (the event and its JSON shape), [`health`] (the heartbeat
//! registry, output counters), [`model`] (what a model takes and gives: tensor descriptions, the
//! CPU preprocessing reference, NanoDet output decoding), [`keys`] (OTA signing keys as text),
//! [`facts`] (what the box offers, handed in by the caller) and [`redact`].
//!
//! No GStreamer, no CUDA, no tokio, no unsafe: everything here is plain data and arithmetic,
//! tested on its own.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod config;
pub mod error;
pub mod events;
pub mod facts;
pub mod health;
pub mod keys;
pub mod model;
pub mod overlay;
pub mod redact;
pub mod version;
pub mod wire;
