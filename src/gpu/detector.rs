//! The GPU path of one model: frame → detections with the pixels on the GPU throughout.
//!
//! NVDEC frame (CUDA memory, mapped) → fused preprocessing kernel writing straight into ONNX
//! Runtime's bound input → CUDA execution provider on our stream → NanoDet decode + NMS kernels
//! → one small device→host copy of the detections. Everything is queued on one CUDA stream and
//! synchronised once per frame (by the result copy). Frames already in host memory (a camera
//! whose codec NVDEC lacks, or a still image) are uploaded first; those bytes are counted apart.
//!
//! Every device→host byte of the GPU path is counted here, in [`GpuCounters`], and nowhere else
//! copies from the device.

use super::gst_cuda::CudaMapping;
use super::ort_cuda::CudaOnnx;
use super::postprocess::GpuPostprocessor;
use super::preprocess::{DevicePlanes, GpuPreprocessor};
use crate::analytics::Detections;
use crate::infer::nanodet::{NanodetDecoder, input_spec};
use crate::infer::preprocess::{Letterbox, YuvView};
use crate::media::FrameRef;
use crate::media::frame::FrameMemory;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Byte counters of the GPU path: the one place every device→host byte is counted (all
/// detectors of the process), read by `/metrics` and the bench.
pub static COUNTERS: GpuCounters = GpuCounters {
    d2h_bytes: AtomicU64::new(0),
    h2d_bytes: AtomicU64::new(0),
    device_frames: AtomicU64::new(0),
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
    /// Frames analysed after an upload from host memory.
    pub host_frames: AtomicU64,
}

pub struct GpuDetector {
    // Field order is drop order: the session and kernels go before the stream they use.
    onnx: CudaOnnx,
    pre: GpuPreprocessor,
    post: GpuPostprocessor,
    decoder: NanodetDecoder,
    staging: Option<CudaSlice<u8>>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl GpuDetector {
    /// Loads `model` with the CUDA execution provider on a stream of its own in `ctx`, and
    /// compiles the kernels. `input_size` as configured (checked against the model as on the
    /// CPU path, `nanodet::input_size`).
    pub fn new(ctx: &Arc<CudaContext>, model: &Path, input_size: usize) -> Result<Self, String> {
        ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let stream = ctx.new_stream().map_err(|e| e.to_string())?;
        let onnx = CudaOnnx::load(model, stream.cu_stream().cast()).map_err(|e| e.to_string())?;
        let (size, dynamic) = crate::infer::nanodet::input_size(onnx.inputs(), input_size)
            .map_err(|e| e.to_string())?;
        let decoder = NanodetDecoder::new(&model.display().to_string(), size, onnx.outputs())
            .map_err(|e| e.to_string())?;
        let pre = GpuPreprocessor::new(ctx, input_spec(size, dynamic), stream.clone())?;
        let post = GpuPostprocessor::new(ctx, stream.clone())?;
        Ok(Self {
            onnx,
            pre,
            post,
            decoder,
            staging: None,
            stream,
            ctx: ctx.clone(),
        })
    }

    /// The model's input side and whether its height and width are dynamic.
    pub fn input(&self) -> (usize, bool) {
        let s = self.pre.spec();
        (s.size, s.align != 0)
    }

    /// Lowest score kept by the decoder (the tracker's second stage uses low ones).
    pub fn set_score_threshold(&mut self, t: f32) {
        self.post.score_threshold = t;
    }

    /// Frames whose candidates overflowed the GPU candidate list.
    pub fn overflows(&self) -> u64 {
        self.post.overflows
    }

    /// Detections of one frame. The worker thread must be the one that made the detector (the
    /// CUDA context is bound to it).
    pub fn detect(&mut self, frame: &FrameRef, out: &mut Detections) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        super::relax_capture_mode();
        self.ready_for(frame.width(), frame.height())?;
        let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
        match &frame.memory {
            FrameMemory::Cuda { buffer, info } => {
                let map = CudaMapping::nv12(buffer, info)?;
                let planes = DevicePlanes {
                    y: map.y,
                    u: map.uv,
                    v: map.uv + 1,
                    width: info.width() as usize,
                    height: info.height() as usize,
                    y_stride: map.y_stride,
                    uv_stride: map.uv_stride,
                    uv_step: 2,
                };
                // The mapping lives until `infer` has synchronised the stream.
                self.infer(&planes, out)?;
                drop(map);
                COUNTERS.device_frames.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            FrameMemory::Host(_) => {
                let yuv = frame
                    .host_yuv()
                    .ok_or("frame in a host format other than I420/NV12")?;
                self.detect_host(&yuv, out)
            }
        }
    }

    /// Detections of a frame in host memory: uploaded once (counted), then as [`Self::detect`].
    pub fn detect_host(&mut self, yuv: &YuvView<'_>, out: &mut Detections) -> Result<(), String> {
        self.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        super::relax_capture_mode();
        self.ready_for(yuv.width, yuv.height)?;
        let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let e = |e: cudarc::driver::DriverError| e.to_string();
        // The planes as they are (NV12: Y then interleaved UV; I420: Y, U, V), one after the
        // other in a staging buffer grown to the largest frame seen.
        let (w, h) = (yuv.width, yuv.height);
        let y_len = (yuv.y_stride * h).min(yuv.y.len());
        let uv_len = (yuv.uv_stride * h.div_ceil(2)).min(yuv.u.len());
        let nv12 = yuv.uv_step == 2;
        let need = y_len + if nv12 { uv_len } else { 2 * uv_len };
        if self.staging.as_ref().is_none_or(|s| s.len() < need) {
            self.staging = Some(self.stream.alloc_zeros::<u8>(need).map_err(e)?);
        }
        let staging = self.staging.as_mut().expect("allocated above");
        self.stream
            .memcpy_htod(&yuv.y[..y_len], &mut staging.slice_mut(0..))
            .map_err(e)?;
        self.stream
            .memcpy_htod(&yuv.u[..uv_len], &mut staging.slice_mut(y_len..))
            .map_err(e)?;
        if !nv12 {
            self.stream
                .memcpy_htod(&yuv.v[..uv_len], &mut staging.slice_mut(y_len + uv_len..))
                .map_err(e)?;
        }
        COUNTERS.h2d_bytes.fetch_add(need as u64, Ordering::Relaxed);
        let (base, sync) = staging.device_ptr(&self.stream);
        // The staging buffer is only reused after `infer` has synchronised the stream.
        drop(sync);
        let planes = DevicePlanes {
            y: base,
            u: base + y_len as u64,
            v: if nv12 {
                base + y_len as u64 + 1
            } else {
                base + (y_len + uv_len) as u64
            },
            width: w,
            height: h,
            y_stride: yuv.y_stride,
            uv_stride: yuv.uv_stride,
            uv_step: yuv.uv_step,
        };
        self.infer(&planes, out)?;
        COUNTERS.host_frames.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the session for a `width`×`height` frame's input size if it is new (before the
    /// shared GPU lock is taken: making one may capture a CUDA graph, which takes it
    /// exclusively).
    fn ready_for(&mut self, width: usize, height: usize) -> Result<(), String> {
        let (in_w, in_h) = self.pre.spec().input_dims(width, height);
        self.onnx
            .bind(in_w, in_h)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Preprocess → inference → decode + NMS, all on the stream; returns after the detections
    /// are on the host.
    fn infer(&mut self, planes: &DevicePlanes, out: &mut Detections) -> Result<Letterbox, String> {
        let (in_w, in_h) = self.pre.spec().input_dims(planes.width, planes.height);
        let bound = self.onnx.bind(in_w, in_h).map_err(|e| e.to_string())?;
        let input = bound.input_ptr;
        let mut outs = heapless::Vec::<u64, { crate::infer::MAX_OUTPUTS }>::new();
        let mut lens = heapless::Vec::<usize, { crate::infer::MAX_OUTPUTS }>::new();
        for (p, l) in &bound.outputs {
            let _ = outs.push(*p);
            let _ = lens.push(*l);
        }
        // SAFETY: the planes are mapped/uploaded device memory of the frame's size (caller),
        // `input` is ONNX Runtime's bound `[1, 3, in_h, in_w]` tensor, alive in `self.onnx`.
        let lb = unsafe { self.pre.run_ptrs(planes, input, 3 * in_w * in_h)? };
        self.onnx.run(in_w, in_h).map_err(|e| e.to_string())?;
        self.decoder.layout(in_w, in_h, &lens)?;
        let bytes = self.post.run(
            self.decoder.levels(),
            self.decoder.classes(),
            self.decoder.bins(),
            &outs,
            &lb,
            out,
        )?;
        COUNTERS
            .d2h_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        if self.post.nonfinite {
            return Err("the model returned non-finite values".into());
        }
        Ok(lb)
    }

    /// Free and total device memory (bytes), for the bench and telemetry.
    pub fn memory(&self) -> Option<(usize, usize)> {
        let _ = &self.ctx;
        cudarc::driver::result::mem_get_info().ok()
    }
}
