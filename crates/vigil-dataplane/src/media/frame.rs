//! Decoded frames and the queue that carries them from the camera pipelines to inference.

use gstreamer as gst;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};
use vigil_core::model::preprocess::YuvView;

/// Where a frame's pixels live.
// Not boxed: a frame moves through the queue by value, and boxing would allocate per frame.
#[allow(clippy::large_enum_variant)]
pub enum FrameMemory {
    /// System memory, mapped for reading for as long as the frame lives.
    Host(gst_video::VideoFrame<gst_video::video_frame::Readable>),
    /// NVDEC output in CUDA device memory (`memory:CUDAMemory`, NV12): the buffer, kept alive
    /// (so not returned to the decoder's pool) until the GPU path is done with it.
    Cuda {
        buffer: gst::Buffer,
        info: gst_video::VideoInfo,
    },
    /// Jetson decoder output (`memory:NVMM`, an `NvBufSurface`, NV12): the buffer, kept alive
    /// until the GPU path is done with it (`gpu::jetson_nvmm`, untested here).
    Nvmm {
        buffer: gst::Buffer,
        info: gst_video::VideoInfo,
    },
}

/// Which memory a decoded sample's caps said its buffers are in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsMemory {
    /// System memory.
    Host,
    /// `memory:CUDAMemory` (NVDEC).
    Cuda,
    /// `memory:NVMM` (Jetson's `nvv4l2decoder`).
    Nvmm,
}

impl CapsMemory {
    pub fn of(caps: &gst::CapsRef) -> Self {
        if crate::ffi::gst_cuda::is_cuda_caps(caps) {
            Self::Cuda
        } else if caps.features(0).is_some_and(|f| f.contains("memory:NVMM")) {
            Self::Nvmm
        } else {
            Self::Host
        }
    }
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
            FrameMemory::Cuda { info, .. } | FrameMemory::Nvmm { info, .. } => {
                info.width() as usize
            }
        }
    }
    pub fn height(&self) -> usize {
        match &self.memory {
            FrameMemory::Host(f) => f.height() as usize,
            FrameMemory::Cuda { info, .. } | FrameMemory::Nvmm { info, .. } => {
                info.height() as usize
            }
        }
    }

    /// A view of the pixels if they are in host memory as I420 or NV12.
    pub fn host_yuv(&self) -> Option<YuvView<'_>> {
        let FrameMemory::Host(f) = &self.memory else {
            return None;
        };
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

    /// Wraps a decoded sample's buffer: host memory is mapped for reading; device memory (CUDA
    /// or NVMM, as the caps said: `memory`) is kept as is for the GPU path to map.
    pub fn from_buffer(
        slot: usize,
        session: u64,
        buffer: gst::Buffer,
        info: &gst_video::VideoInfo,
        memory: CapsMemory,
    ) -> Option<Self> {
        let pts = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
        let memory = match memory {
            CapsMemory::Cuda => FrameMemory::Cuda {
                buffer,
                info: info.clone(),
            },
            CapsMemory::Nvmm => FrameMemory::Nvmm {
                buffer,
                info: info.clone(),
            },
            CapsMemory::Host => {
                FrameMemory::Host(gst_video::VideoFrame::from_buffer_readable(buffer, info).ok()?)
            }
        };
        Some(Self {
            slot,
            pts,
            session,
            received: Instant::now(),
            memory,
        })
    }
}

/// What a camera's slot does when a new frame arrives before the last one was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPolicy {
    /// Replace it and count a drop: live cameras, where only the present matters.
    LatestWins,
    /// Queue up to [`RECORDING_DEPTH`] frames, then wait until one is taken (back-pressure
    /// into the decoder): recordings, where every sampled frame is analysed and a file is read
    /// no faster than it is analysed.
    Block,
}

/// Frames a recording's slot holds before its pipeline waits. More than one lets the decoder
/// work on the next frames while the worker runs a batch (which may then take several frames of
/// one recording, in order), so a recording is decoded and analysed in parallel rather than
/// in turn. A live camera's slot holds one frame: only the newest matters.
pub const RECORDING_DEPTH: usize = 4;

/// Bounded hand-over from N camera pipelines to one inference worker: one slot per camera, so
/// capacity is fixed at N × [`RECORDING_DEPTH`] frames at most. Per slot a [`DropPolicy`]: for
/// live cameras a new frame replaces an unconsumed one (latest frame wins) and the replaced one
/// is counted as dropped; for recordings the pipeline waits once the slot is full.
pub struct FrameQueue {
    slots: Mutex<QueueInner>,
    ready: Condvar,
    /// One per slot: a producer blocked on a full slot is woken alone when it empties.
    space: Vec<Condvar>,
    dropped: Vec<AtomicU64>,
}

struct QueueInner {
    /// Oldest first; capacity [`RECORDING_DEPTH`], allocated once.
    frames: Vec<VecDeque<FrameRef>>,
    policy: Vec<DropPolicy>,
    /// A flushing slot refuses frames at once (its pipeline is being torn down).
    flushing: Vec<bool>,
    next: usize,
    closed: bool,
}

impl FrameQueue {
    pub fn new(policies: &[DropPolicy]) -> Self {
        let n = policies.len();
        Self {
            slots: Mutex::new(QueueInner {
                frames: (0..n)
                    .map(|_| VecDeque::with_capacity(RECORDING_DEPTH))
                    .collect(),
                policy: policies.to_vec(),
                flushing: vec![false; n],
                next: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            space: (0..n).map(|_| Condvar::new()).collect(),
            dropped: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueInner> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.dropped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dropped.is_empty()
    }

    /// Offers a frame; returns true if it replaced an unconsumed one (a drop). With
    /// [`DropPolicy::Block`] it waits for room in the slot instead (or for a flush or close).
    pub fn push(&self, frame: FrameRef) -> bool {
        let slot = frame.slot;
        let old = {
            let mut g = self.lock();
            if g.policy[slot] == DropPolicy::Block {
                g = self.space[slot]
                    .wait_while(g, |q| {
                        q.policy[slot] == DropPolicy::Block
                            && q.frames[slot].len() >= RECORDING_DEPTH
                            && !q.flushing[slot]
                            && !q.closed
                    })
                    .unwrap_or_else(|e| e.into_inner());
            }
            if g.closed || g.flushing[slot] {
                return false;
            }
            // Latest wins: the slot holds one frame (several only if the policy just changed
            // from Block: all of them are replaced).
            let mut old = heapless::Vec::<FrameRef, RECORDING_DEPTH>::new();
            if g.policy[slot] == DropPolicy::LatestWins {
                while let Some(f) = g.frames[slot].pop_front() {
                    let _ = old.push(f);
                }
            }
            g.frames[slot].push_back(frame);
            old
        };
        self.ready.notify_one();
        let dropped = !old.is_empty();
        if dropped {
            self.dropped[slot].fetch_add(old.len() as u64, Ordering::Relaxed);
        }
        // `old` (and its GStreamer buffers) is released here, outside the lock.
        dropped
    }

    /// Frames of camera `slot` replaced before inference took them.
    pub fn dropped(&self, slot: usize) -> u64 {
        self.dropped[slot].load(Ordering::Relaxed)
    }

    /// Changes a slot's drop policy (its camera was rebuilt with another kind of source).
    pub fn set_policy(&self, slot: usize, policy: DropPolicy) {
        self.lock().policy[slot] = policy;
        self.space[slot].notify_all();
    }

    /// Frames waiting for the worker.
    pub fn pending(&self) -> usize {
        self.lock().frames.iter().map(VecDeque::len).sum()
    }

    /// Takes the next waiting frame, cameras served round-robin; waits up to `timeout`.
    /// `None` on timeout or when closed.
    pub fn pop(&self, timeout: Duration) -> Option<FrameRef> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.closed {
                return None;
            }
            if let Some(f) = self.take_next(&mut g) {
                return Some(f);
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

    /// Takes the next waiting frame as [`Self::pop`] does (waiting up to `timeout`), then,
    /// without waiting, up to `max - 1` more, round-robin over the cameras (a recording with
    /// several frames waiting gives one per round, oldest first), into `out` (cleared first;
    /// its capacity is kept). Returns how many were taken.
    pub fn pop_batch(&self, timeout: Duration, max: usize, out: &mut Vec<FrameRef>) -> usize {
        out.clear();
        let Some(first) = self.pop(timeout) else {
            return 0;
        };
        out.push(first);
        let mut g = self.lock();
        while out.len() < max {
            match self.take_next(&mut g) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        out.len()
    }

    /// Takes the oldest waiting frame of the next camera in round-robin order, if any, and
    /// wakes a thread waiting on that slot: its producer (for room) or its camera (for it to
    /// drain at the end of a recording; that wait re-checks every 100 ms, so a wake that went
    /// to the producer only delays it).
    fn take_next(&self, g: &mut QueueInner) -> Option<FrameRef> {
        let n = g.frames.len();
        for k in 0..n {
            let i = (g.next + k) % n;
            if let Some(f) = g.frames[i].pop_front() {
                g.next = (i + 1) % n;
                self.space[i].notify_one();
                return Some(f);
            }
        }
        None
    }

    /// Waits up to `timeout` for the worker to take every frame of `slot`; true once it is
    /// empty (or the queue closed).
    pub fn wait_drained(&self, slot: usize, timeout: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self.space[slot]
            .wait_timeout_while(g, timeout, |q| !q.frames[slot].is_empty() && !q.closed)
            .unwrap_or_else(|e| e.into_inner());
        g.frames[slot].is_empty() || g.closed
    }

    /// While flushing, the slot refuses frames and a producer waiting on it returns: set before
    /// tearing a camera's pipeline down (its streaming thread may be waiting here), cleared when
    /// the next pipeline starts. Setting it drops the waiting frames (counted as dropped).
    pub fn set_flushing(&self, slot: usize, flushing: bool) {
        let old: Vec<FrameRef> = {
            let mut g = self.lock();
            g.flushing[slot] = flushing;
            if flushing {
                g.frames[slot].drain(..).collect()
            } else {
                Vec::new()
            }
        };
        self.space[slot].notify_all();
        self.dropped[slot].fetch_add(old.len() as u64, Ordering::Relaxed);
        drop(old);
    }

    /// Wakes the consumer and every producer, and refuses further frames.
    pub fn close(&self) {
        let old: Vec<FrameRef> = {
            let mut g = self.lock();
            g.closed = true;
            g.frames.iter_mut().flat_map(|f| f.drain(..)).collect()
        };
        drop(old);
        self.ready.notify_all();
        for c in &self.space {
            c.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn frame(slot: usize, n: u64) -> FrameRef {
        gst::init().unwrap();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::I420, 4, 4)
            .build()
            .unwrap();
        let mut buf = gst::Buffer::with_size(info.size()).unwrap();
        buf.get_mut()
            .unwrap()
            .set_pts(gst::ClockTime::from_mseconds(n));
        FrameRef::from_buffer(slot, 1, buf, &info, CapsMemory::Host).unwrap()
    }

    #[test]
    fn caps_memory_picks_the_frame_memory() {
        gst::init().unwrap();
        let caps = |feature: Option<&str>| {
            let b = gst::Caps::builder("video/x-raw").field("format", "NV12");
            match feature {
                Some(f) => b.features([f]).build(),
                None => b.build(),
            }
        };
        assert_eq!(CapsMemory::of(&caps(None)), CapsMemory::Host);
        assert_eq!(
            CapsMemory::of(&caps(Some("memory:CUDAMemory"))),
            CapsMemory::Cuda
        );
        assert_eq!(CapsMemory::of(&caps(Some("memory:NVMM"))), CapsMemory::Nvmm);
        // An NVMM buffer is kept as it is (its bytes are an NvBufSurface, not pixels).
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 64, 48)
            .build()
            .unwrap();
        let buf = gst::Buffer::with_size(64).unwrap();
        let f = FrameRef::from_buffer(0, 1, buf, &info, CapsMemory::Nvmm).unwrap();
        assert!(matches!(f.memory, FrameMemory::Nvmm { .. }));
        assert_eq!((f.width(), f.height()), (64, 48));
        assert!(f.host_yuv().is_none());
    }

    #[test]
    fn latest_wins_replaces_and_counts_drops() {
        let q = FrameQueue::new(&[DropPolicy::LatestWins, DropPolicy::LatestWins]);
        assert!(!q.push(frame(0, 1)));
        assert!(q.push(frame(0, 2)));
        assert!(!q.push(frame(1, 3)));
        assert_eq!((q.dropped(0), q.dropped(1), q.pending()), (1, 0, 2));
        // Round-robin, and the survivor of slot 0 is the newest frame.
        let a = q.pop(Duration::ZERO).unwrap();
        let b = q.pop(Duration::ZERO).unwrap();
        assert_eq!(
            (a.slot, a.pts, b.slot),
            (0, Some(Duration::from_millis(2)), 1)
        );
        assert!(q.pop(Duration::from_millis(10)).is_none());
    }

    #[test]
    fn block_queues_up_to_the_depth_then_waits_and_flushing_releases_the_producer() {
        let q = Arc::new(FrameQueue::new(&[DropPolicy::Block]));
        for n in 1..=RECORDING_DEPTH as u64 {
            assert!(!q.push(frame(0, n)));
        }
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push(frame(0, 99)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !producer.is_finished(),
            "a full Block slot makes the producer wait"
        );
        assert_eq!(
            q.pop(Duration::ZERO).unwrap().pts,
            Some(Duration::from_millis(1))
        );
        assert!(!producer.join().unwrap());
        let rest: Vec<_> = std::iter::from_fn(|| q.pop(Duration::ZERO))
            .map(|f| f.pts.unwrap().as_millis())
            .collect();
        assert_eq!(rest, [2, 3, 4, 99], "oldest first, nothing lost");
        assert_eq!(q.dropped(0), 0);

        for n in 1..=RECORDING_DEPTH as u64 {
            q.push(frame(0, n));
        }
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push(frame(0, 100)))
        };
        std::thread::sleep(Duration::from_millis(50));
        q.set_flushing(0, true);
        producer.join().unwrap();
        assert_eq!(
            q.pending(),
            0,
            "flushing empties the slot and refuses frames"
        );
        assert_eq!(
            q.dropped(0),
            RECORDING_DEPTH as u64,
            "what a flush empties is counted"
        );
    }

    #[test]
    fn an_ended_recording_waits_for_its_last_frames_to_be_taken() {
        let q = Arc::new(FrameQueue::new(&[DropPolicy::Block]));
        for n in 1..=3 {
            q.push(frame(0, n));
        }
        assert!(!q.wait_drained(0, Duration::from_millis(20)));
        let worker = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 3 {
                    if let Some(f) = q.pop(Duration::from_millis(500)) {
                        got.push(f.pts.unwrap().as_millis());
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                got
            })
        };
        assert!(q.wait_drained(0, Duration::from_secs(5)));
        assert_eq!(worker.join().unwrap(), [1, 2, 3]);
        q.set_flushing(0, true);
        assert_eq!(q.dropped(0), 0, "nothing was left to drop");
    }

    #[test]
    fn switching_a_full_recording_to_latest_wins_releases_its_producer() {
        let q = Arc::new(FrameQueue::new(&[DropPolicy::Block]));
        for n in 1..=RECORDING_DEPTH as u64 {
            q.push(frame(0, n));
        }
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || q.push(frame(0, 50)))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!producer.is_finished());
        q.set_policy(0, DropPolicy::LatestWins);
        assert!(
            producer.join().unwrap(),
            "its frame replaced the queued ones"
        );
        assert_eq!((q.pending(), q.dropped(0)), (1, RECORDING_DEPTH as u64));
    }

    #[test]
    fn a_batch_takes_cameras_round_robin_and_each_recording_in_order() {
        let q = FrameQueue::new(&[DropPolicy::Block, DropPolicy::LatestWins, DropPolicy::Block]);
        for n in [1, 2, 3] {
            q.push(frame(0, n));
            q.push(frame(1, 10 + n));
            q.push(frame(2, 20 + n));
        }
        assert_eq!(
            q.dropped(1),
            2,
            "the live camera kept its newest frame only"
        );
        let mut out = Vec::new();
        assert_eq!(q.pop_batch(Duration::ZERO, 5, &mut out), 5);
        let got: Vec<_> = out
            .iter()
            .map(|f| (f.slot, f.pts.unwrap().as_millis()))
            .collect();
        assert_eq!(got, [(0, 1), (1, 13), (2, 21), (0, 2), (2, 22)]);
        assert_eq!(q.pop_batch(Duration::ZERO, 8, &mut out), 2);
        let got: Vec<_> = out
            .iter()
            .map(|f| (f.slot, f.pts.unwrap().as_millis()))
            .collect();
        assert_eq!(got, [(0, 3), (2, 23)]);

        // A recording switched to latest-wins drops all it had queued but the new frame.
        q.push(frame(0, 7));
        q.push(frame(0, 8));
        q.set_policy(0, DropPolicy::LatestWins);
        assert!(q.push(frame(0, 9)));
        assert_eq!((q.dropped(0), q.pending()), (2, 1));
    }
}
