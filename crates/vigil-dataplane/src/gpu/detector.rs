//! The GPU path of one model: frame → detections with the pixels on the GPU throughout.
//!
//! NVDEC frames (CUDA memory, or Jetson NVMM, mapped) → one fused preprocessing launch for the
//! batch writing straight into ONNX Runtime's bound input → CUDA execution provider on our
//! stream → NanoDet decode + NMS kernels → one small device→host copy of the detections per
//! frame. Everything is queued on one CUDA stream and synchronised once per batch (by the result
//! copies). Frames already in host memory (a camera
//! whose codec NVDEC lacks, or a still image) are uploaded first; those bytes are counted apart.
//!
//! Every device→host byte of the GPU path is counted here, in [`GpuCounters`], and nowhere else
//! copies from the device.
//!
//! Safe Rust: the kernels get the frames as [`DevicePlanes`] borrowed from their mappings (or
//! from the staging buffer of an uploaded frame) and ONNX Runtime's tensors as views borrowed
//! from the session's `Bound`; the launches' checks and `unsafe` are in `ffi/`.

use super::ort_cuda::{BATCHES, CudaOnnx, MAX_BATCH};
use super::postprocess::GpuPostprocessor;
use super::preprocess::{DevicePlanes, DeviceYuv, GpuPreprocessor, Precision};
use super::{GpuError, MappedFrame};
use crate::media::FrameRef;
use crate::media::frame::FrameMemory;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vigil_core::analytics::{Detections, tiles};
use vigil_core::config::{InputSize, TilesConfig};
use vigil_core::model::InferError;
use vigil_core::model::nanodet::{NanodetDecoder, input_spec};
use vigil_core::model::preprocess::YuvView;

/// Byte counters of the GPU path: the one place every device→host byte is counted (all
/// detectors of the process), read by `/metrics` and the bench.
pub static COUNTERS: GpuCounters = GpuCounters {
    d2h_bytes: AtomicU64::new(0),
    h2d_bytes: AtomicU64::new(0),
    device_frames: AtomicU64::new(0),
    nvmm_frames: AtomicU64::new(0),
    host_frames: AtomicU64::new(0),
};

#[derive(Debug)]
pub struct GpuCounters {
    /// Device→host bytes (only detections: [`super::postprocess::RESULT_FLOATS`] × 4 a frame).
    pub d2h_bytes: AtomicU64,
    /// Host→device bytes (uploads of frames that arrived in host memory).
    pub h2d_bytes: AtomicU64,
    /// Frames analysed from CUDA memory (zero-copy).
    pub device_frames: AtomicU64,
    /// Frames analysed from Jetson's NVMM memory (zero-copy; untested here).
    pub nvmm_frames: AtomicU64,
    /// Frames analysed after an upload from host memory.
    pub host_frames: AtomicU64,
}

pub struct GpuDetector {
    /// Everything holding GPU resources, dropped in [`Drop`] under the shared GPU lock (taken
    /// out there: `Some` for as long as the detector is usable).
    g: Option<Parts>,
    ctx: Arc<CudaContext>,
    /// `input_size` of the model's table (`"native"`: each picture's own long side).
    input_size: InputSize,
    /// `[models.<name>.tiles]`: each frame cut into overlapping tiles (and the whole frame),
    /// every tile of every frame of a batch run as batches of their own, the boxes merged as
    /// on the CPU path ([`vigil_core::analytics::tiles`]).
    tiles: Option<TilesConfig>,
    /// The detections of one batch of tiles, reused from batch to batch (made once).
    pass: Box<[Detections; MAX_BATCH]>,
}

/// `slots` of a batch whose results go to the first entries of their own buffer.
const IN_ORDER: [usize; MAX_BATCH] = [0, 1, 2, 3, 4, 5, 6, 7];

struct Parts {
    // Field order is drop order: the session and kernels go before the stream they use.
    infer: Infer,
    staging: Option<CudaSlice<u8>>,
    stream: Arc<CudaStream>,
}

/// What a batch runs through (apart from the staging buffer an uploaded frame's planes borrow).
struct Infer {
    // Field order is drop order (as `Parts`', which this begins).
    onnx: CudaOnnx,
    pre: GpuPreprocessor,
    post: GpuPostprocessor,
    decoder: NanodetDecoder,
}

impl Drop for GpuDetector {
    /// Its sessions, buffers and modules are freed under the shared GPU lock, so never while a
    /// CUDA graph is captured (a model swap or reload drops a detector on the supervisor's
    /// thread while other workers run).
    fn drop(&mut self) {
        super::release(&self.ctx, &mut self.g, |g| &g.stream);
    }
}

impl GpuDetector {
    /// Loads `model` with the CUDA execution provider (TensorRT's first with `trt`) on a stream
    /// of its own in `ctx`, and
    /// compiles the kernels. `input_size` as configured (checked against the model as on the
    /// CPU path, `nanodet::input_size`).
    pub fn new(
        ctx: &Arc<CudaContext>,
        model: &Path,
        input_size: usize,
        trt: Option<super::ort_cuda::TrtOptions>,
    ) -> Result<Self, GpuError> {
        ctx.bind_to_thread()?;
        // Loading a model with the CUDA provider allocates and makes cuDNN/cuBLAS handles: not
        // while another worker captures a CUDA graph (see `ort_cuda::CudaOnnx::bind`). On
        // failure the half-made parts are dropped here too, still under the lock.
        super::relax_capture_mode();
        let _exclusive = super::GPU_LOCK.write().unwrap_or_else(|e| e.into_inner());
        let stream = ctx.new_stream()?;
        let onnx = CudaOnnx::load(model, &stream, trt)?;
        let (size, dynamic) = vigil_core::model::nanodet::input_size(onnx.inputs(), input_size)?;
        let decoder = NanodetDecoder::new(&model.display().to_string(), size, onnx.outputs())?;
        let pre = GpuPreprocessor::new(ctx, input_spec(size, dynamic), stream.clone())?;
        let post = GpuPostprocessor::new(ctx, stream.clone())?;
        Ok(Self {
            g: Some(Parts {
                infer: Infer {
                    onnx,
                    pre,
                    post,
                    decoder,
                },
                staging: None,
                stream,
            }),
            ctx: ctx.clone(),
            input_size: InputSize::Pixels(size as u32),
            tiles: None,
            pass: Box::new(std::array::from_fn(|_| Detections::new())),
        })
    }

    /// How frames are sized and cut, as the model's table says: `input_size` (a number must
    /// be the model's, [`Self::input`]; `"native"` needs a model of dynamic input size) and
    /// `tiles`. Sessions for the sizes this needs are made with each new frame size.
    pub fn set_sizing(&mut self, input_size: InputSize, tiles: Option<TilesConfig>) {
        if let InputSize::Native = input_size {
            self.input_size = input_size;
        }
        self.tiles = tiles;
    }

    /// The parts (there until the detector is dropped).
    fn g(&self) -> &Parts {
        self.g
            .as_ref()
            .expect("a detector's parts are only taken by its Drop")
    }

    fn g_mut(&mut self) -> &mut Parts {
        self.g
            .as_mut()
            .expect("a detector's parts are only taken by its Drop")
    }

    /// The model's input side and whether its height and width are dynamic.
    pub fn input(&self) -> (usize, bool) {
        let s = self.g().infer.pre.spec();
        (s.size, s.align != 0)
    }

    /// Lowest score kept by the decoder (the tracker's second stage uses low ones).
    pub fn set_score_threshold(&mut self, t: f32) {
        self.g_mut().infer.post.score_threshold = t;
    }

    /// Detections of up to [`MAX_BATCH`] frames, `outs[i]` and `res[i]` for `frames[i]`. Frames
    /// in CUDA or NVMM memory of one size run as one batch (one inference); frames in host
    /// memory are uploaded and run alone. The worker thread must be the one that made the detector.
    /// An error of a whole batch is given to each of its frames ([`GpuError::Shared`]).
    pub fn detect_batch(
        &mut self,
        frames: &[FrameRef],
        outs: &mut [Detections],
        res: &mut [Result<(), GpuError>],
    ) {
        let n = frames.len().min(MAX_BATCH);
        if let Err(e) = self.ctx.bind_to_thread() {
            res.iter_mut().for_each(|r| *r = Err(GpuError::Driver(e)));
            return;
        }
        super::relax_capture_mode();
        let mut done = [false; MAX_BATCH];
        for i in 0..n {
            if done[i] {
                continue;
            }
            if matches!(frames[i].memory, FrameMemory::Host(_)) {
                done[i] = true;
                res[i] = match frames[i].host_yuv() {
                    Some(yuv) => self.detect_host(&yuv, &mut outs[i]),
                    None => Err(GpuError::HostFormat),
                };
                continue;
            }
            // Every device (CUDA or NVMM) frame of this one's size, as one batch.
            let size = (frames[i].width(), frames[i].height());
            let mut group = heapless::Vec::<usize, MAX_BATCH>::new();
            for (j, f) in frames.iter().enumerate().take(n).skip(i) {
                if !done[j]
                    && matches!(
                        f.memory,
                        FrameMemory::Cuda { .. } | FrameMemory::Nvmm { .. }
                    )
                    && (f.width(), f.height()) == size
                {
                    done[j] = true;
                    let _ = group.push(j);
                }
            }
            if let Err(e) = self.ready_for(size.0, size.1) {
                let e = e.shared();
                group
                    .iter()
                    .for_each(|&j| res[j] = Err(GpuError::Shared(e.clone())));
                continue;
            }
            let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
            let mut maps = heapless::Vec::<MappedFrame, MAX_BATCH>::new();
            let mut mapped = heapless::Vec::<usize, MAX_BATCH>::new();
            for &j in &group {
                match MappedFrame::nv12(&frames[j].memory) {
                    Ok(m) => {
                        let _ = maps.push(m);
                        let _ = mapped.push(j);
                    }
                    Err(e) => res[j] = Err(e),
                }
            }
            // Each frame's planes (its size as mapped: the frame's), borrowed from its mapping.
            let mut planes = heapless::Vec::<DevicePlanes, MAX_BATCH>::new();
            for m in &maps {
                let _ = planes.push(m.planes());
            }
            let mut ok = [true; MAX_BATCH];
            // The mappings live until `run` has synchronised the stream.
            let (input_size, tiles) = (self.input_size, self.tiles);
            let infer = &mut self
                .g
                .as_mut()
                .expect("a detector's parts are only taken by its Drop")
                .infer;
            match Self::run(
                infer,
                &mut self.pass,
                input_size,
                tiles,
                &planes,
                outs,
                &mapped,
                &mut ok,
            ) {
                Ok(()) => {
                    for (k, &j) in mapped.iter().enumerate() {
                        res[j] = if ok[k] {
                            Ok(())
                        } else {
                            Err(GpuError::NonFinite)
                        };
                    }
                    let nvmm = mapped
                        .iter()
                        .filter(|&&j| matches!(frames[j].memory, FrameMemory::Nvmm { .. }))
                        .count();
                    COUNTERS
                        .device_frames
                        .fetch_add((mapped.len() - nvmm) as u64, Ordering::Relaxed);
                    COUNTERS
                        .nvmm_frames
                        .fetch_add(nvmm as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    // Kernels may still read the frames: wait before they are unmapped.
                    let _ = self.g().stream.synchronize();
                    let e = e.shared();
                    mapped
                        .iter()
                        .for_each(|&j| res[j] = Err(GpuError::Shared(e.clone())));
                }
            }
            // The planes borrow the mappings: gone first (plain data).
            drop(planes);
            drop(maps);
        }
    }

    /// Detections of a frame in host memory: uploaded once (counted), then run alone.
    pub fn detect_host(&mut self, yuv: &YuvView<'_>, out: &mut Detections) -> Result<(), GpuError> {
        self.ctx.bind_to_thread()?;
        super::relax_capture_mode();
        self.ready_for(yuv.width, yuv.height)?;
        let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
        // The planes as they are (NV12: Y then interleaved UV; I420: Y, U, V), one after the
        // other in a staging buffer grown to the largest frame seen.
        let (w, h) = (yuv.width, yuv.height);
        let y_len = (yuv.y_stride * h).min(yuv.y.len());
        let uv_len = (yuv.uv_stride * h.div_ceil(2)).min(yuv.u.len());
        let nv12 = yuv.uv_step == 2;
        let need = y_len + if nv12 { uv_len } else { 2 * uv_len };
        let (input_size, tiles) = (self.input_size, self.tiles);
        let Parts {
            infer,
            staging,
            stream,
        } = self
            .g
            .as_mut()
            .expect("a detector's parts are only taken by its Drop");
        if staging.as_ref().is_none_or(|s| s.len() < need) {
            *staging = Some(stream.alloc_zeros::<u8>(need)?);
        }
        let staging = staging.as_mut().expect("allocated above");
        stream.memcpy_htod(&yuv.y[..y_len], &mut staging.slice_mut(0..))?;
        stream.memcpy_htod(&yuv.u[..uv_len], &mut staging.slice_mut(y_len..))?;
        if !nv12 {
            stream.memcpy_htod(&yuv.v[..uv_len], &mut staging.slice_mut(y_len + uv_len..))?;
        }
        COUNTERS.h2d_bytes.fetch_add(need as u64, Ordering::Relaxed);
        let frame = DeviceYuv {
            data: staging,
            width: w,
            height: h,
            y_stride: yuv.y_stride,
            u_offset: y_len,
            v_offset: if nv12 { y_len + 1 } else { y_len + uv_len },
            uv_stride: yuv.uv_stride,
            uv_step: yuv.uv_step,
        };
        let (planes, sync) = DevicePlanes::of_yuv(&frame, stream)?;
        // The staging buffer is only reused after `run` has synchronised the stream.
        drop(sync);
        let mut ok = [true; MAX_BATCH];
        Self::run(
            infer,
            &mut self.pass,
            input_size,
            tiles,
            &[planes],
            std::slice::from_mut(out),
            &[0],
            &mut ok,
        )?;
        COUNTERS.host_frames.fetch_add(1, Ordering::Relaxed);
        if !ok[0] {
            return Err(GpuError::NonFinite);
        }
        Ok(())
    }

    /// Makes the sessions a `width`×`height` frame needs, for every batch size, if they are
    /// new (before the shared GPU lock is taken: making one takes it exclusively): its input
    /// size, and with tiles each tile's (and the whole frame's only if it is detected too).
    fn ready_for(&mut self, width: usize, height: usize) -> Result<(), GpuError> {
        let (input_size, tiles) = (self.input_size, self.tiles);
        let g = &mut self.g_mut().infer;
        let batches: &[usize] = if g.onnx.batches() { &BATCHES } else { &[1] };
        let mut bind = |w: usize, h: usize| -> Result<(), GpuError> {
            g.pre.set_size(input_size.for_picture(w, h));
            let (in_w, in_h) = g.pre.spec().input_dims(w, h);
            for &b in batches {
                g.onnx.bind(in_w, in_h, b)?;
            }
            Ok(())
        };
        match tiles {
            None => bind(width, height),
            Some(t) => {
                if t.full_frame {
                    bind(width, height)?;
                }
                for tile in crate::sized::layout(width, height, &t) {
                    bind(tile.w, tile.h)?;
                }
                Ok(())
            }
        }
    }

    /// Detections of `planes` (frames of one size, at most [`MAX_BATCH`]) as the model's
    /// sizing says, `outs[slots[k]]` for `planes[k]`, `ok[k]` false where the model's outputs
    /// were not finite: the whole frames as one batch; with tiles, every tile of every frame
    /// as batches of up to [`MAX_BATCH`] tiles of one input size, each tile's boxes in frame
    /// coordinates merged into its frame's as the CPU path does ([`crate::sized`]). Returns
    /// after the stream is synchronised (the planes may be released then).
    #[allow(clippy::too_many_arguments)]
    fn run(
        infer: &mut Infer,
        pass: &mut [Detections; MAX_BATCH],
        input_size: InputSize,
        tiles: Option<TilesConfig>,
        planes: &[DevicePlanes<'_>],
        outs: &mut [Detections],
        slots: &[usize],
        ok: &mut [bool; MAX_BATCH],
    ) -> Result<(), GpuError> {
        let n = planes.len().min(MAX_BATCH);
        let Some(first) = planes.first() else {
            return Ok(());
        };
        let (w, h) = (first.width(), first.height());
        let Some(t) = tiles else {
            infer.pre.set_size(input_size.for_picture(w, h));
            return infer.batch(&planes[..n], outs, slots, ok);
        };
        if t.full_frame {
            infer.pre.set_size(input_size.for_picture(w, h));
            infer.batch(&planes[..n], outs, slots, ok)?;
        } else {
            slots.iter().take(n).for_each(|&s| outs[s].clear());
            ok.fill(true);
        }
        let layout = crate::sized::layout(w, h, &t);
        // Pass e is tile e % T of frame e / T; a batch takes passes in order while their input
        // size is the first one's (a grid's last column or row may be a pixel wider).
        let total = n * layout.len();
        let mut next = 0;
        while next < total {
            let lead = layout[next % layout.len()];
            let size = input_size.for_picture(lead.w, lead.h);
            infer.pre.set_size(size);
            let dims = infer.pre.spec().input_dims(lead.w, lead.h);
            let mut crops = heapless::Vec::<DevicePlanes, MAX_BATCH>::new();
            let mut which = heapless::Vec::<(usize, usize), MAX_BATCH>::new();
            while next < total && !crops.is_full() {
                let (k, ti) = (next / layout.len(), next % layout.len());
                let tile = layout[ti];
                if input_size.for_picture(tile.w, tile.h) != size
                    || infer.pre.spec().input_dims(tile.w, tile.h) != dims
                {
                    break;
                }
                let crop =
                    planes[k]
                        .crop(tile.x, tile.y, tile.w, tile.h)
                        .ok_or(GpuError::Tile {
                            x: tile.x,
                            y: tile.y,
                            w: tile.w,
                            h: tile.h,
                            frame_w: w,
                            frame_h: h,
                        })?;
                let _ = crops.push(crop);
                let _ = which.push((k, ti));
                next += 1;
            }
            let mut pass_ok = [true; MAX_BATCH];
            let m = crops.len();
            infer.batch(&crops, &mut pass[..], &IN_ORDER[..m], &mut pass_ok)?;
            for (i, &(k, ti)) in which.iter().enumerate() {
                if !pass_ok[i] {
                    ok[k] = false;
                    continue;
                }
                let (out, tile) = (&mut outs[slots[k]], &layout[ti]);
                tiles::add_tile_pass(out, &mut pass[i], tile, w, h, t.full_frame);
            }
        }
        Ok(())
    }
}

impl Infer {
    /// Preprocess `planes` (all of one size) into one batched input → one inference → decode +
    /// NMS per image, all on the stream; returns after the detections are on the host:
    /// `outs[slots[k]]` for `planes[k]`, `ok[k]` false where the model's outputs were not finite.
    fn batch(
        &mut self,
        planes: &[DevicePlanes<'_>],
        outs: &mut [Detections],
        slots: &[usize],
        ok: &mut [bool; MAX_BATCH],
    ) -> Result<(), GpuError> {
        let g = self;
        let n = planes.len();
        if n == 0 {
            return Ok(());
        }
        let (in_w, in_h) = g
            .pre
            .spec()
            .input_dims(planes[0].width(), planes[0].height());
        let batch = if g.onnx.batches() {
            BATCHES
                .iter()
                .copied()
                .find(|&b| b >= n)
                .unwrap_or(MAX_BATCH)
        } else {
            1
        };
        if n > batch {
            return Err(GpuError::BatchTooLarge { frames: n, batch });
        }
        let bound = g
            .onnx
            .get_mut(in_w, in_h, batch)
            .ok_or(GpuError::NoSession { batch, in_w, in_h })?;
        let mut lens = heapless::Vec::<usize, { vigil_core::model::MAX_OUTPUTS }>::new();
        for o in bound.outputs() {
            let _ = lens.push(o.len() / batch);
        }
        // The planes are mapped/uploaded device memory of each frame's size (caller); ONNX
        // Runtime's bound `[batch, 3, in_h, in_w]` f32 input (alive in `g.onnx`) holds
        // `batch` ≥ n images.
        let lbs = g.pre.run_planes(planes, bound.input(), Precision::F32)?;
        bound.run()?;
        g.decoder
            .layout(in_w, in_h, &lens)
            .map_err(|e| GpuError::Infer(InferError::Output(e)))?;
        let mut image_outs = heapless::Vec::<_, { vigil_core::model::MAX_OUTPUTS }>::new();
        for (k, lb) in lbs.iter().enumerate() {
            image_outs.clear();
            // Image k's part of each output: length / batch floats from k × length / batch.
            for o in bound.outputs() {
                let part = o
                    .part(k, batch)
                    .ok_or(GpuError::NoOutputPart { image: k, batch })?;
                let _ = image_outs.push(part);
            }
            g.post.enqueue(
                k,
                g.decoder.levels(),
                g.decoder.classes(),
                g.decoder.bins(),
                &image_outs,
                lb,
            )?;
        }
        let bytes = g.post.finish(n)?;
        COUNTERS
            .d2h_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        for (k, &slot) in slots.iter().enumerate().take(n) {
            ok[k] = g.post.read(k, &mut outs[slot])?;
        }
        Ok(())
    }
}
