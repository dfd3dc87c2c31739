//! Fused preprocessing on the GPU: NV12 or I420 → letterboxed, normalised, planar BGR/RGB in
//! f32 or f16, written straight into the inference input buffer, for a whole batch of frames in
//! one launch (one thread per output pixel, `blockIdx.z` the image). The same arithmetic as the
//! CPU reference (`vigil_core::model::preprocess`), which `vigil gpu-check` compares it with.
//!
//! The frames of a batch are described in one [`BatchDesc`] passed to the kernel by value (a
//! kernel parameter, 512 bytes): nothing is copied to the device for it and nothing allocated.
//!
//! The kernel's CUDA C, its parameter types and its launch are in `ffi::preprocess_kernel`
//! (re-exported here), with the checks the launch's soundness rests on; this is the safe front:
//! frames from `CudaSlice`s ([`GpuPreprocessor::run_batch`]) or as [`DevicePlanes`] of mapped
//! frames into a device output ([`GpuPreprocessor::run_planes`]).

use super::ort_cuda::MAX_BATCH;
use super::{GpuError, LaunchError};
use crate::ffi::cuda::DeviceViewMut;
use crate::ffi::preprocess_kernel::{PreprocessKernels, check_precision};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use std::sync::Arc;
use vigil_core::model::preprocess::{InputSpec, Letterbox};

pub use crate::ffi::preprocess_kernel::{BatchDesc, DevicePlanes, DeviceYuv, KERNEL, Precision};

pub struct GpuPreprocessor {
    spec: InputSpec,
    kernels: PreprocessKernels,
    stream: Arc<CudaStream>,
}

impl GpuPreprocessor {
    /// Compiles the kernels for `ctx`'s device (once; NVRTC at run time); launches go on
    /// `stream`.
    pub fn new(
        ctx: &Arc<CudaContext>,
        spec: InputSpec,
        stream: Arc<CudaStream>,
    ) -> Result<Self, GpuError> {
        Ok(Self {
            spec,
            kernels: PreprocessKernels::new(ctx)?,
            stream,
        })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Another input side (`input_size = "native"`: each picture's own, set before its batch).
    pub fn set_size(&mut self, size: usize) {
        self.spec.size = size;
    }

    /// Writes the network inputs of `frames` (at most [`MAX_BATCH`], all with the same input
    /// size) into `out`, image i at i × 3 × in_h × in_w elements, in one launch on the stream,
    /// asynchronously; returns their letterboxes. An error if a frame's planes do not lie
    /// within its `data` as far as the kernel reads them.
    pub fn run_batch<T: DeviceRepr>(
        &self,
        frames: &[DeviceYuv<'_>],
        out: &mut CudaSlice<T>,
        precision: Precision,
    ) -> Result<heapless::Vec<Letterbox, MAX_BATCH>, GpuError> {
        check_precision::<T>(precision)?;
        let mut planes = heapless::Vec::<DevicePlanes, MAX_BATCH>::new();
        // Kept until the launch is queued (where cudarc tracks events, each records then).
        let mut guards = heapless::Vec::<_, MAX_BATCH>::new();
        for f in frames {
            let (p, sync) = DevicePlanes::of_yuv(f, &self.stream)?;
            let _ = guards.push(sync);
            planes.push(p).map_err(|_| LaunchError::BatchFull)?;
        }
        let (dst, _sync) = DeviceViewMut::of_slice(out, &self.stream);
        // The slices are borrowed for this call, and their guards (`guards`, `_sync`), dropped
        // after the launch is queued, record their use where event tracking is on.
        let r = self.run_planes(&planes, dst, precision);
        drop(guards);
        r
    }

    /// As [`Self::run_batch`] for one frame in f32.
    pub fn run(
        &self,
        frame: &DeviceYuv<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<Letterbox, GpuError> {
        let lbs = self.run_batch(std::slice::from_ref(frame), out, Precision::F32)?;
        Ok(lbs[0])
    }

    /// As [`Self::run_batch`], on frames' device planes (mapped decoder output, an uploaded
    /// frame) into a device output (ONNX Runtime's input tensor) of elements of `precision`.
    /// The planes and the output are borrowed for the call; they must stay allocated until the
    /// stream has run the kernel (the caller synchronises the stream before it drops them).
    pub fn run_planes<T>(
        &self,
        frames: &[DevicePlanes<'_>],
        out: DeviceViewMut<'_, T>,
        precision: Precision,
    ) -> Result<heapless::Vec<Letterbox, MAX_BATCH>, GpuError> {
        self.kernels
            .launch(&self.stream, &self.spec, frames, out, precision)
    }
}
