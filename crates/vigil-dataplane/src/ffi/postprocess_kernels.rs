//! The NanoDet decode and class-aware NMS kernels (`gpu::postprocess`'s): their CUDA C and
//! their launches ([`PostprocessKernels::decode`], [`PostprocessKernels::nms`]), which check
//! every length the kernels' reads and writes depend on (the model outputs against the layout
//! given, the candidate, count and result buffers) before queuing them.
//!
//! The source and the launches are here together, so that the argument lists pushed are checked
//! against the signatures they were compiled from: [`PostprocessKernels`] can only be made by
//! compiling [`KERNELS`].

use super::cuda::DeviceView;
use crate::gpu::error::{DecodeFit, GpuError, LaunchError};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;
use vigil_core::model::nanodet::LevelInfo;
use vigil_core::model::preprocess::Letterbox;

/// Floats per candidate in the candidate buffer (`CAND` of [`KERNELS`]).
pub const CANDIDATE_FLOATS: usize = 7;
/// Threads of the one NMS block, and so the most candidates it sorts (`nms_sorted`'s shared
/// arrays).
const NMS_THREADS: usize = 1024;

pub const KERNELS: &str = r#"
#define CAND 7
#define NEG_INF __int_as_float(0xff800000)
extern "C" __global__ void nanodet_candidates(
    unsigned long long s0, unsigned long long b0, unsigned long long s1, unsigned long long b1,
    unsigned long long s2, unsigned long long b2,
    int gw0, int gw1, int gw2, int c0, int c1, int c2, int st0, int st1, int st2,
    int classes, int bins, float thr,
    float pad_x, float pad_y, float new_w, float new_h,
    float* cand, unsigned int* count, int cap)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= c0 + c1 + c2) return;
    const float* s; const float* b; int gw, stride, cell;
    if (i < c0) { s = (const float*)s0; b = (const float*)b0; gw = gw0; stride = st0; cell = i; }
    else if (i < c0 + c1) { s = (const float*)s1; b = (const float*)b1; gw = gw1; stride = st1; cell = i - c0; }
    else { s = (const float*)s2; b = (const float*)b2; gw = gw2; stride = st2; cell = i - c0 - c1; }
    const float* row = s + (unsigned long long)cell * classes;
    float best = 0.0f; int cls = 0;
    bool finite = true;
    for (int c = 0; c < classes; c++) {
        float v = row[c];
        finite = finite && (v - v == 0.0f);
        if (v > best) { best = v; cls = c; }
    }
    if (!finite) count[1] = 1u;
    if (best < thr) return;
    const float* dist = b + (unsigned long long)cell * 4 * bins;
    float d[4];
    for (int side = 0; side < 4; side++) {
        const float* l = dist + side * bins;
        float mx = NEG_INF;
        for (int k = 0; k < bins; k++) {
            if (!(l[k] - l[k] == 0.0f)) count[1] = 1u;
            mx = fmaxf(mx, l[k]);
        }
        float sum = 0.0f, acc = 0.0f;
        for (int k = 0; k < bins; k++) { float e = expf(l[k] - mx); sum += e; acc += e * (float)k; }
        d[side] = acc / sum * (float)stride;
    }
    float px = (float)((cell % gw) * stride), py = (float)((cell / gw) * stride);
    float x1 = fminf(fmaxf((px - d[0] - pad_x) / new_w, 0.0f), 1.0f);
    float y1 = fminf(fmaxf((py - d[1] - pad_y) / new_h, 0.0f), 1.0f);
    float x2 = fminf(fmaxf((px + d[2] - pad_x) / new_w, 0.0f), 1.0f);
    float y2 = fminf(fmaxf((py + d[3] - pad_y) / new_h, 0.0f), 1.0f);
    if (!(x2 > x1 && y2 > y1)) return;
    unsigned int k = atomicAdd(count, 1u);
    if (k >= (unsigned int)cap) return;
    float* o = cand + (unsigned long long)k * CAND;
    o[0] = x1; o[1] = y1; o[2] = x2; o[3] = y2; o[4] = best; o[5] = (float)cls; o[6] = (float)i;
}

__device__ float iou(const float* a, const float* b) {
    float ix = fmaxf(fminf(a[2], b[2]) - fmaxf(a[0], b[0]), 0.0f);
    float iy = fmaxf(fminf(a[3], b[3]) - fmaxf(a[1], b[1]), 0.0f);
    float inter = ix * iy;
    float uni = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    return uni <= 0.0f ? 0.0f : inter / uni;
}

// One block of 1024 threads: bitonic sort of the candidates by score (ties: lower cell first),
// then greedy class-aware suppression in that order. out[0] = kept, out[1] = candidates
// found (may exceed cap), out[2] = 1 if the model gave a non-finite value, then 6 floats per
// detection.
extern "C" __global__ void nms_sorted(const float* cand, unsigned int* count, int cap,
                                      float iou_thr, int max_out, float* out)
{
    __shared__ float key[1024];
    __shared__ float cell[1024];
    __shared__ int idx[1024];
    __shared__ unsigned char supp[1024];
    __shared__ int kept;
    int t = threadIdx.x;
    int n = min((int)*count, cap);
    key[t] = t < n ? cand[t * CAND + 4] : NEG_INF;
    cell[t] = t < n ? cand[t * CAND + 6] : 3.0e38f;
    idx[t] = t;
    supp[t] = 0;
    if (t == 0) kept = 0;
    __syncthreads();
    for (int k = 2; k <= 1024; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            int p = t ^ j;
            if (p > t) {
                bool a_first = key[t] > key[p] || (key[t] == key[p] && cell[t] <= cell[p]);
                bool desc = (t & k) == 0;
                if (desc != a_first) {
                    float tk = key[t]; key[t] = key[p]; key[p] = tk;
                    float tc = cell[t]; cell[t] = cell[p]; cell[p] = tc;
                    int ti = idx[t]; idx[t] = idx[p]; idx[p] = ti;
                }
            }
            __syncthreads();
        }
    }
    for (int i = 0; i < n; i++) {
        if (!supp[i]) {
            const float* a = cand + idx[i] * CAND;
            if (t == 0) {
                float* o = out + 3 + kept * 6;
                for (int q = 0; q < 6; q++) o[q] = a[q];
            }
            for (int j = i + 1 + t; j < n; j += blockDim.x) {
                const float* b = cand + idx[j] * CAND;
                if (!supp[j] && a[5] == b[5] && iou(a, b) > iou_thr) supp[j] = 1;
            }
            __syncthreads();
            if (t == 0) kept++;
        }
        __syncthreads();
        if (kept >= max_out) break;
    }
    if (t == 0) { out[0] = (float)kept; out[1] = (float)count[0]; out[2] = (float)count[1]; count[0] = 0; count[1] = 0; }
}
"#;

/// The two entry points of [`KERNELS`], compiled for one device.
pub struct PostprocessKernels {
    candidates: CudaFunction,
    nms: CudaFunction,
}

impl PostprocessKernels {
    /// Compiles [`KERNELS`] for `ctx`'s device (NVRTC at run time) and loads its entry points.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let module = crate::gpu::compile(ctx, KERNELS)?;
        let f = |n: &str| module.load_function(n).map_err(GpuError::Driver);
        Ok(Self {
            candidates: f("nanodet_candidates")?,
            nms: f("nms_sorted")?,
        })
    }

    /// Queues on `stream` the decoding of one image's model outputs `outs` (in the model's
    /// output order; the three `levels` say which is which and how large, `classes` scores and
    /// `4 × bins` box bins per cell; the input was made with `lb`) into candidates above
    /// `threshold`: up to `cap` in `cand`, their number in `count[0]`, a non-finite output
    /// flagged in `count[1]`. Checks first that each output holds its level's cells.
    #[allow(clippy::too_many_arguments)]
    pub fn decode(
        &self,
        stream: &CudaStream,
        levels: &[LevelInfo; 3],
        classes: usize,
        bins: usize,
        outs: &[DeviceView<'_, f32>],
        lb: &Letterbox,
        threshold: f32,
        cand: &mut CudaSlice<f32>,
        count: &mut CudaSlice<u32>,
        cap: i32,
    ) -> Result<(), GpuError> {
        let total: usize = levels.iter().map(|l| l.cells).sum();
        let views: [DeviceView<'_, f32>; 6] = [
            outs[levels[0].scores],
            outs[levels[0].boxes],
            outs[levels[1].scores],
            outs[levels[1].boxes],
            outs[levels[2].scores],
            outs[levels[2].boxes],
        ];
        let ptrs: [u64; 6] = views.map(|v| v.addr());
        let ints: [i32; 11] = [
            levels[0].grid_w as i32,
            levels[1].grid_w as i32,
            levels[2].grid_w as i32,
            levels[0].cells as i32,
            levels[1].cells as i32,
            levels[2].cells as i32,
            levels[0].stride as i32,
            levels[1].stride as i32,
            levels[2].stride as i32,
            classes as i32,
            bins as i32,
        ];
        let floats = [
            threshold,
            lb.pad_x as f32,
            lb.pad_y as f32,
            lb.new_w as f32,
            lb.new_h as f32,
        ];
        // What the kernel reads and writes, from the very integers it is given: thread i < c0 +
        // c1 + c2 reads cell i's `classes` scores and `4 × bins` box bins of its level, and
        // writes candidate k < cap (7 floats) and count[0..2].
        let [c0, c1, c2] = [ints[3], ints[4], ints[5]].map(i64::from);
        let (cls, nb) = (i64::from(ints[9]), i64::from(ints[10]));
        let holds = |v: &DeviceView<'_, f32>, n: i64| n >= 0 && v.len() as u64 >= n as u64;
        let fits = c0 >= 0
            && c1 >= 0
            && c2 >= 0
            && c0 + c1 + c2 <= i64::from(i32::MAX)
            && cls >= 0
            && nb >= 0
            && [c0, c1, c2].iter().enumerate().all(|(l, &c)| {
                holds(&views[2 * l], c * cls) && holds(&views[2 * l + 1], c * 4 * nb)
            })
            && cap >= 0
            && cand.len() as u64 >= cap as u64 * CANDIDATE_FLOATS as u64
            && count.len() >= 2;
        if !fits {
            return Err(LaunchError::Decode(Box::new(DecodeFit {
                outputs: views.map(|v| v.len()),
                buffers: (cand.len(), count.len()),
                cap,
                cells: [c0, c1, c2],
                classes,
                bins,
            }))
            .into());
        }
        let mut b = stream.launch_builder(&self.candidates);
        for p in &ptrs {
            b.arg(p);
        }
        for i in &ints {
            b.arg(i);
        }
        for f in &floats {
            b.arg(f);
        }
        b.arg(&mut *cand).arg(&mut *count).arg(&cap);
        let cfg = LaunchConfig {
            grid_dim: ((total as u32).div_ceil(128), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `nanodet_candidates` in order and type (`self.candidates` is
        // that entry point of `KERNELS`, the only source this type compiles); each output
        // pointer holds `cells × classes` (scores) or `cells × 4 × bins` (boxes) floats for
        // this input size (the layout was worked out from the bound outputs' lengths, and each
        // view's length is checked above against the integers passed); `cand` holds `cap`
        // candidates of 7 floats and `count` two words (checked above). The outputs are
        // borrowed for this call; that they stay allocated until the stream has run the kernel
        // is the one-stream discipline of `ffi::cuda`'s module docs.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Queues on `stream` the NMS of the candidates [`Self::decode`] left in `cand` and
    /// `count` (at most `cap`, which must be at most the block's 1 024 threads), writing the
    /// kept ones, at most `max_out`, into `block`: a header of 3 floats (kept, found,
    /// non-finite flag) and 6 per detection. Resets `count` for the next image.
    #[allow(clippy::too_many_arguments)]
    pub fn nms(
        &self,
        stream: &CudaStream,
        cand: &CudaSlice<f32>,
        count: &mut CudaSlice<u32>,
        cap: i32,
        iou: f32,
        max_out: i32,
        block: &mut CudaViewMut<'_, f32>,
    ) -> Result<(), GpuError> {
        // The kernel keeps (and writes) at least one detection before it compares with
        // `max_out`: a block for max(max_out, 1).
        let fits = cap >= 0
            && cap as usize <= NMS_THREADS
            && cand.len() >= cap as usize * CANDIDATE_FLOATS
            && count.len() >= 2
            && max_out >= 0
            && block.len() >= 3 + 6 * (max_out.max(1) as usize);
        if !fits {
            return Err(LaunchError::Nms {
                cap,
                max_out,
                lens: (cand.len(), count.len(), block.len()),
            }
            .into());
        }
        let mut b = stream.launch_builder(&self.nms);
        b.arg(cand)
            .arg(&mut *count)
            .arg(&cap)
            .arg(&iou)
            .arg(&max_out)
            .arg(&mut *block);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (NMS_THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `nms_sorted` (`self.nms` is that entry point of `KERNELS`,
        // the only source this type compiles); one block of 1024 threads = MAX_CANDIDATES (the
        // shared arrays' size), `cap` at most that and `cand` holding `cap` candidates
        // (checked above); the image's block holds 3 + 6 × max_out floats (checked above). The
        // kernel resets the candidate count for the next image (same stream: in order).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_kernels() {
        assert!(KERNELS.contains(&format!("#define CAND {CANDIDATE_FLOATS}\n")));
        assert!(KERNELS.contains(&format!("__shared__ float key[{NMS_THREADS}];")));
        assert!(KERNELS.contains(&format!("__shared__ unsigned char supp[{NMS_THREADS}];")));
        assert_eq!(vigil_core::analytics::nms::MAX_CANDIDATES, NMS_THREADS);
    }
}
