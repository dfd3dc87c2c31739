//! Media: one GStreamer pipeline per camera, from its URL to decoded frames handed out as
//! [`FrameRef`]s through a bounded latest-frame-wins [`FrameQueue`]. Reconnection, stall
//! detection and the camera's visible state live here.
//!
//! Knows nothing of models, tracking, rules or MQTT.

pub mod backoff;
pub mod camera;
pub mod frame;
pub mod probe;
pub mod reach;
pub mod restream;
pub mod rtsp_server;
pub mod still;
pub mod view;

pub use camera::{CameraHandle, CameraState, CameraStats};
pub use frame::{DropPolicy, FrameQueue, FrameRef};

/// GStreamer could not be initialised.
#[derive(Debug, thiserror::Error)]
#[error("GStreamer init failed")]
pub struct InitError(#[from] gstreamer::glib::Error);

/// A media file that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("{}", .path.display())]
pub struct OpenError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The absolute path of a media file that exists (for GStreamer's `filesrc` and URIs).
pub fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, OpenError> {
    std::fs::canonicalize(path).map_err(|source| OpenError {
        path: path.to_path_buf(),
        source,
    })
}

/// Initialises GStreamer (idempotent).
pub fn init() -> Result<(), InitError> {
    Ok(gstreamer::init()?)
}
