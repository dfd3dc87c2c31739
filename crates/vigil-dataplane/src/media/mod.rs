//! Media: one GStreamer pipeline per camera, from its URL to decoded frames handed out as
//! [`FrameRef`]s through a bounded latest-frame-wins [`FrameQueue`]. Reconnection, stall
//! detection and the camera's visible state live here.
//!
//! Knows nothing of models, tracking, rules or MQTT.

pub mod backoff;
pub mod camera;
pub mod frame;
pub mod probe;
pub mod rtsp_server;
pub mod still;

pub use camera::{CameraHandle, CameraState, CameraStats};
pub use frame::{DropPolicy, FrameQueue, FrameRef};

/// GStreamer could not be initialised.
#[derive(Debug, thiserror::Error)]
#[error("GStreamer init failed")]
pub struct InitError(#[from] gstreamer::glib::Error);

/// Initialises GStreamer (idempotent).
pub fn init() -> Result<(), InitError> {
    Ok(gstreamer::init()?)
}
