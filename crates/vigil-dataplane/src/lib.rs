//! Vigil's data plane: from a camera's URL to events, on OS threads, without async.
//!
//! [`media`] (one GStreamer pipeline per camera, frames and their queue), [`gpu`] (the CUDA
//! runtime, the preprocessing and postprocessing kernels, ONNX Runtime's CUDA provider, the
//! batched detector), [`onnx`] (the CPU ONNX Runtime backend), [`engine`] (an engine built
//! from a model's config), [`worker`] (the analysis worker: frames → engine → tracker → rules →
//! events), [`facts`] (what this box offers, for the core's checks) and [`ffi`], the only place
//! with `unsafe`, each block behind a safe wrapper.
//!
//! Knows nothing of MQTT, HTTP, the spool, OTA or how a config is reloaded: it builds what it
//! is given and runs it.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod detect;
pub mod engine;
pub mod engines;
pub mod facts;
pub mod ffi;
pub mod gpu;
pub mod live;
pub mod media;
pub mod onnx;
pub mod picture;
pub mod sized;
pub mod worker;
