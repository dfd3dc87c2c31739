//! Vigil: an edge video-analytics appliance service.
//!
//! Data plane (OS threads, no async): [`media`] → [`infer`] → [`analytics`] → [`events`].
//! Control plane (tokio): [`supervisor`] owns the [`config`], the camera pipelines and
//! [`mqtt`]. See `ARCHITECTURE.md` for what each module deliberately does not know.

pub mod analytics;
pub mod bench;
pub mod bench_gpu;
pub mod config;
pub mod detect;
pub mod events;
pub mod gpu;
pub mod health;
pub mod http;
pub mod infer;
pub mod media;
pub mod mqtt;
pub mod ota;
pub mod pipeline;
pub mod redact;
pub mod supervisor;
