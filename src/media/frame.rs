//! Decoded frames and the queue that carries them from the camera pipelines to inference.

use crate::infer::preprocess::YuvView;
use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where a frame's pixels live.
pub enum FrameMemory {
    /// System memory, mapped for reading for as long as the frame lives.
    Host(gst_video::VideoFrame<gst_video::video_frame::Readable>),
    // `Cuda` (device pointer + the GStreamer buffer kept alive until our stream is done) is
    // added by the GPU path.
}

/// One decoded frame of one camera. Holding it keeps the GStreamer buffer alive.
pub struct FrameRef {
    /// Index of the camera within its [`FrameQueue`].
    pub slot: usize,
    /// Presentation time within the current pipeline session.
    pub pts: Option<Duration>,
    /// Which pipeline build of this camera produced it (bumped on every reconnect).
    pub session: u64,
    pub received: Instant,
    pub memory: FrameMemory,
}

impl FrameRef {
    pub fn width(&self) -> usize {
        match &self.memory {
            FrameMemory::Host(f) => f.width() as usize,
        }
    }
    pub fn height(&self) -> usize {
        match &self.memory {
            FrameMemory::Host(f) => f.height() as usize,
        }
    }

    /// A view of the pixels if they are in host memory as I420 or NV12.
    pub fn host_yuv(&self) -> Option<YuvView<'_>> {
        let FrameMemory::Host(f) = &self.memory;
        let (w, h) = (f.width() as usize, f.height() as usize);
        match f.format() {
            gst_video::VideoFormat::I420 => Some(YuvView {
                width: w,
                height: h,
                y: f.plane_data(0).ok()?,
                y_stride: f.plane_stride()[0] as usize,
                u: f.plane_data(1).ok()?,
                v: f.plane_data(2).ok()?,
                uv_stride: f.plane_stride()[1] as usize,
                uv_step: 1,
            }),
            gst_video::VideoFormat::Nv12 => {
                let uv = f.plane_data(1).ok()?;
                Some(YuvView {
                    width: w,
                    height: h,
                    y: f.plane_data(0).ok()?,
                    y_stride: f.plane_stride()[0] as usize,
                    u: uv,
                    v: &uv[1..],
                    uv_stride: f.plane_stride()[1] as usize,
                    uv_step: 2,
                })
            }
            _ => None,
        }
    }

    /// Wraps a decoded sample's buffer, mapping it for reading.
    pub fn from_buffer(
        slot: usize,
        session: u64,
        buffer: gst::Buffer,
        info: &gst_video::VideoInfo,
    ) -> Option<Self> {
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let frame = gst_video::VideoFrame::from_buffer_readable(buffer, info).ok()?;
        Some(Self {
            slot,
            pts,
            session,
            received: Instant::now(),
            memory: FrameMemory::Host(frame),
        })
    }
}

/// Bounded hand-over from N camera pipelines to one inference worker: one slot per camera, a
/// new frame replaces an unconsumed one (latest frame wins) and the replaced one is counted as
/// dropped. Capacity is fixed at N frames; nothing blocks the pipelines.
pub struct FrameQueue {
    slots: Mutex<QueueInner>,
    ready: Condvar,
    dropped: Vec<AtomicU64>,
}

struct QueueInner {
    frames: Vec<Option<FrameRef>>,
    next: usize,
    closed: bool,
}

impl FrameQueue {
    pub fn new(cameras: usize) -> Self {
        Self {
            slots: Mutex::new(QueueInner {
                frames: (0..cameras).map(|_| None).collect(),
                next: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            dropped: (0..cameras).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.dropped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// Offers a frame; returns true if it replaced an unconsumed one (a drop).
    pub fn push(&self, frame: FrameRef) -> bool {
        let slot = frame.slot;
        let old = {
            let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            if g.closed {
                return false;
            }
            g.frames[slot].replace(frame)
        };
        self.ready.notify_one();
        let dropped = old.is_some();
        if dropped {
            self.dropped[slot].fetch_add(1, Ordering::Relaxed);
        }
        // `old` (and its GStreamer buffer) is released here, outside the lock.
        dropped
    }

    /// Frames of camera `slot` replaced before inference took them.
    pub fn dropped(&self, slot: usize) -> u64 {
        self.dropped[slot].load(Ordering::Relaxed)
    }

    /// Takes the next waiting frame, cameras served round-robin; waits up to `timeout`.
    /// `None` on timeout or when closed.
    pub fn pop(&self, timeout: Duration) -> Option<FrameRef> {
        let deadline = Instant::now() + timeout;
        let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.closed {
                return None;
            }
            let n = g.frames.len();
            for k in 0..n {
                let i = (g.next + k) % n;
                if let Some(f) = g.frames[i].take() {
                    g.next = (i + 1) % n;
                    return Some(f);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .ready
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Drops waiting frames of one camera (its pipeline is being torn down).
    pub fn clear(&self, slot: usize) {
        let old = self.slots.lock().unwrap_or_else(|e| e.into_inner()).frames[slot].take();
        drop(old);
    }

    /// Wakes the consumer and refuses further frames.
    pub fn close(&self) {
        let old: Vec<Option<FrameRef>> = {
            let mut g = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            g.closed = true;
            g.frames.iter_mut().map(Option::take).collect()
        };
        drop(old);
        self.ready.notify_all();
    }
}
