//! Vigil's fleet console (`vigil-fleet`): reads every box's MQTT topics from the broker into a
//! store and shows the fleet, each box and their events in the browser.
//!
//! Knows Vigil only by its payloads (`vigil_core::wire`) and its topics: never the device's
//! internals (no data plane, no control plane, no OTA agent).
//!
//! - [`alerts`]: health and event rules, incidents, the webhook;
//! - [`auth`]: users, sessions, CSRF, roles;
//! - [`store`]: the `Store` trait, SQLite and PostgreSQL;
//! - [`ingest`]: the broker → the store, gap repair by replay requests;
//! - [`rollout`]: releases and staged OTA rollouts;
//! - [`web`]: the pages;
//! - [`simulate`]: many simulated boxes, for the scale bench.

#![forbid(unsafe_code)]

pub mod alerts;
pub mod auth;
pub mod ingest;
pub mod rollout;
pub mod simulate;
pub mod store;
pub mod web;
