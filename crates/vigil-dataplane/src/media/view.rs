//! A camera's main stream for what people see (Frigate's stream roles): detection runs on the
//! camera's `url` (its substream); live pictures, the re-stream and the `snapshot` command draw
//! the overlay on frames of its `view_url`. The main stream is opened only while pictures are
//! wanted (the first wanted picture opens it and, until its first frame, the detection frame
//! stands in) and closed [`IDLE`] after the last one, so a camera nobody looks at costs one
//! decoder, not two.
//!
//! Its frames go through a one-slot [`FrameQueue`] of their own (never the detection queue);
//! the worker keeps only the newest one, so at most [`super::frame::RECORDING_DEPTH`] + 1 frames
//! of the main stream are held at any time.

use super::camera::SourceSettings;
use super::{CameraHandle, FrameQueue, FrameRef};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the main stream stays open after the last picture was wanted.
pub const IDLE: Duration = Duration::from_secs(30);
/// A main-stream frame older than this is not drawn (the stream stalled): the detection frame
/// is used instead.
pub const FRESH: Duration = Duration::from_secs(2);

/// One camera's main stream, opened on demand by the analysis worker.
pub struct ViewStream {
    settings: SourceSettings,
    queue: Arc<FrameQueue>,
    handle: Option<CameraHandle>,
    wanted: Option<Instant>,
    frame: Option<FrameRef>,
}

impl ViewStream {
    /// The main stream of the camera whose source is `camera`, at `url` (same decoders, frame
    /// memory and reconnection as the camera; named `<camera>/view` in logs). Nothing is opened
    /// yet.
    pub fn new(camera: &SourceSettings, url: &str) -> Self {
        let settings = SourceSettings {
            name: format!("{}/view", camera.name),
            url: url.to_string(),
            ..camera.clone()
        };
        let queue = Arc::new(FrameQueue::new(&[settings.drop_policy()]));
        Self {
            settings,
            queue,
            handle: None,
            wanted: None,
            frame: None,
        }
    }

    /// Whether the main stream is open.
    pub fn is_open(&self) -> bool {
        self.handle.is_some()
    }

    /// Keeps the newest frame of the main stream and closes it [`IDLE`] after the last wanted
    /// picture. Called once per analysed frame of the camera (a recording's main stream is thus
    /// read no faster than the camera is analysed).
    pub fn tick(&mut self) {
        if self.handle.is_none() {
            return;
        }
        while let Some(f) = self.queue.pop(Duration::ZERO) {
            self.frame = Some(f);
        }
        if self.wanted.is_some_and(|t| t.elapsed() >= IDLE) {
            self.close();
        }
    }

    /// A fresh frame of the main stream for a picture now; opens the stream if it is closed
    /// (`None` until its first frame arrives, or while it is stalled).
    pub fn frame(&mut self) -> Option<&FrameRef> {
        self.wanted = Some(Instant::now());
        if self.handle.is_none() {
            self.open();
            return None;
        }
        self.tick();
        self.frame.as_ref().filter(|f| f.received.elapsed() < FRESH)
    }

    fn open(&mut self) {
        self.queue.set_flushing(0, false);
        match CameraHandle::spawn(self.settings.clone(), 0, self.queue.clone()) {
            Ok(h) => {
                tracing::info!(camera = %self.settings.name, "main stream opened for viewing");
                self.handle = Some(h);
            }
            Err(e) => {
                tracing::warn!(camera = %self.settings.name, "main stream not opened: {e}");
            }
        }
    }

    fn close(&mut self) {
        self.frame = None;
        self.wanted = None;
        if let Some(h) = self.handle.take() {
            h.request_stop();
            // Its pipeline may wait for room in the queue: flushing refuses its frames.
            self.queue.set_flushing(0, true);
            while self.queue.pop(Duration::ZERO).is_some() {}
            tracing::info!(camera = %self.settings.name, "main stream closed: nobody looked for {IDLE:?}");
            // Joining the pipeline's thread can take a moment: not on the worker's thread.
            let _ = std::thread::Builder::new()
                .name("view-close".into())
                .spawn(move || drop(h));
        }
    }
}

impl Drop for ViewStream {
    fn drop(&mut self) {
        self.close();
    }
}
