//! NanoDet decoding and class-aware NMS on the GPU, so that only the detections cross to the
//! host: a fixed block of `3 + 6 × MAX_DETECTIONS` floats (3 084 bytes) per frame. The kernels
//! also flag a non-finite model output (a broken model: OTA probation rolls it back).
//!
//! The same arithmetic as the CPU decoder (`vigil_core::model::nanodet`) and NMS
//! (`vigil_core::analytics::nms`): per cell the best class, softmax expectation of the box bins,
//! letterbox back to normalised source coordinates; then greedy suppression in score order,
//! which is what the CPU's "keep if no kept box of the same class overlaps" does. Differences:
//! `expf` may differ from Rust's `exp` in the last bit, and when more than
//! [`MAX_CANDIDATES`] cells pass the threshold the GPU keeps the first ones found rather than the
//! best ones (the threshold makes it rare; the number found comes back in the result block's
//! header, not counted yet).
//!
//! The kernels' CUDA C and their launches are in `ffi::postprocess_kernels` (with the length
//! checks their soundness rests on), the page-locked result buffers come from `ffi::cuda`.

use super::ort_cuda::MAX_BATCH;
use super::{GpuError, LaunchError};
use crate::ffi::cuda::{DeviceView, alloc_pinned_f32};
use crate::ffi::postprocess_kernels::{CANDIDATE_FLOATS, PostprocessKernels};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PinnedHostSlice};
use std::sync::Arc;
use vigil_core::analytics::nms::MAX_CANDIDATES;
use vigil_core::analytics::{BBox, Detection, Detections, MAX_DETECTIONS};
use vigil_core::model::nanodet::LevelInfo;
use vigil_core::model::preprocess::Letterbox;

pub use crate::ffi::postprocess_kernels::KERNELS;

/// Floats copied to the host per frame: a header of three and six per detection.
pub const RESULT_FLOATS: usize = 3 + 6 * MAX_DETECTIONS;

pub struct GpuPostprocessor {
    stream: Arc<CudaStream>,
    kernels: PostprocessKernels,
    cand: CudaSlice<f32>,
    count: CudaSlice<u32>,
    /// One result block per image of a batch.
    result: CudaSlice<f32>,
    /// Page-locked (cacheable) host copies of the result blocks: a pageable copy goes through
    /// the driver's shared staging buffer, which serialises the workers.
    host: Vec<PinnedHostSlice<f32>>,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

impl GpuPostprocessor {
    pub fn new(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, GpuError> {
        Ok(Self {
            kernels: PostprocessKernels::new(ctx)?,
            cand: stream.alloc_zeros::<f32>(MAX_CANDIDATES * CANDIDATE_FLOATS)?,
            count: stream.alloc_zeros::<u32>(2)?,
            result: stream.alloc_zeros::<f32>(RESULT_FLOATS * MAX_BATCH)?,
            host: (0..MAX_BATCH)
                // Plain page-locked memory (no write-combining: the CPU reads it); its
                // contents are only read after a copy into it has completed.
                .map(|_| alloc_pinned_f32(ctx, RESULT_FLOATS))
                .collect::<Result<_, _>>()?,
            stream,
            score_threshold: 0.35,
            nms_iou: 0.5,
        })
    }

    /// Queues, for image `i` of a batch, the decoding of the model outputs `outs` (this image's
    /// part of each, in the model's output order; it was made with `lb`) and NMS, then the copy
    /// of its result block to the host (the one device→host copy of the GPU path).
    /// [`Self::finish`] waits for them.
    pub fn enqueue(
        &mut self,
        i: usize,
        levels: &[LevelInfo],
        classes: usize,
        bins: usize,
        outs: &[DeviceView<'_, f32>],
        lb: &Letterbox,
    ) -> Result<(), GpuError> {
        if i >= MAX_BATCH {
            return Err(LaunchError::Image(i).into());
        }
        let Ok(levels) = <&[LevelInfo; 3]>::try_from(levels) else {
            return Err(LaunchError::Levels(levels.len()).into());
        };
        let cap = MAX_CANDIDATES as i32;
        self.kernels.decode(
            &self.stream,
            levels,
            classes,
            bins,
            outs,
            lb,
            self.score_threshold,
            &mut self.cand,
            &mut self.count,
            cap,
        )?;
        let max_out = MAX_DETECTIONS as i32;
        let mut block = self
            .result
            .slice_mut(i * RESULT_FLOATS..(i + 1) * RESULT_FLOATS);
        // Image i's block holds 3 + 6 × max_out floats. The kernel resets the candidate count
        // for the next image (same stream: in order).
        self.kernels.nms(
            &self.stream,
            &self.cand,
            &mut self.count,
            cap,
            self.nms_iou,
            max_out,
            &mut block,
        )?;
        self.stream.memcpy_dtoh(
            &self
                .result
                .slice(i * RESULT_FLOATS..(i + 1) * RESULT_FLOATS),
            &mut self.host[i],
        )?;
        Ok(())
    }

    /// Waits for the queued work; returns the bytes copied to the host for `n` images.
    pub fn finish(&mut self, n: usize) -> Result<usize, GpuError> {
        self.stream.synchronize()?;
        Ok(n * RESULT_FLOATS * 4)
    }

    /// Image `i`'s detections (after [`Self::finish`]); false if its model outputs held a
    /// non-finite value.
    pub fn read(&mut self, i: usize, out: &mut Detections) -> Result<bool, GpuError> {
        out.clear();
        let host = self.host[i].as_slice()?;
        let n = (host[0] as usize).min(MAX_DETECTIONS);
        for d in host[3..3 + 6 * n].chunks_exact(6) {
            let _ = out.push(Detection {
                bbox: BBox::new(d[0], d[1], d[2], d[3]),
                score: d[4],
                class_id: d[5] as u16,
            });
        }
        Ok(host[2] == 0.0)
    }
}
