//! Vigil's control plane (tokio): the [`supervisor`] that owns the running config and plan,
//! the durable event [`spool`], the [`mqtt`] link and its commands, the [`http`] API, and the
//! [`control`] API through which commands reach the supervisor.
//!
//! Knows nothing of pixel formats, CUDA or model output layouts: it builds engines through the
//! data plane and reads their counters.
#![forbid(unsafe_code)]

pub mod control;
pub mod error;
pub mod http;
pub mod mqtt;
pub mod plan;
pub mod slot;
pub mod spool;
pub mod supervisor;
pub mod system;
pub mod system_update;
