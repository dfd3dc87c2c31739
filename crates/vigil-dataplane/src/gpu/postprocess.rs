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

use super::ort_cuda::MAX_BATCH;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use std::sync::Arc;
use vigil_core::analytics::nms::MAX_CANDIDATES;
use vigil_core::analytics::{BBox, Detection, Detections, MAX_DETECTIONS};
use vigil_core::model::nanodet::LevelInfo;
use vigil_core::model::preprocess::Letterbox;

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

/// Floats copied to the host per frame: a header of three and six per detection.
pub const RESULT_FLOATS: usize = 3 + 6 * MAX_DETECTIONS;

pub struct GpuPostprocessor {
    stream: Arc<CudaStream>,
    candidates: CudaFunction,
    nms: CudaFunction,
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
    pub fn new(ctx: &Arc<CudaContext>, stream: Arc<CudaStream>) -> Result<Self, String> {
        let module = super::compile(ctx, KERNELS)?;
        let f = |n: &str| module.load_function(n).map_err(|e| e.to_string());
        let e = |e: cudarc::driver::DriverError| e.to_string();
        Ok(Self {
            candidates: f("nanodet_candidates")?,
            nms: f("nms_sorted")?,
            cand: stream.alloc_zeros::<f32>(MAX_CANDIDATES * 7).map_err(e)?,
            count: stream.alloc_zeros::<u32>(2).map_err(e)?,
            result: stream
                .alloc_zeros::<f32>(RESULT_FLOATS * MAX_BATCH)
                .map_err(e)?,
            host: (0..MAX_BATCH)
                // SAFETY: plain page-locked memory (no write-combining: the CPU reads it); its
                // contents are only read after a copy into it has completed.
                .map(|_| unsafe { ctx.alloc_pinned_with_flags::<f32>(RESULT_FLOATS, 0) })
                .collect::<Result<_, _>>()
                .map_err(e)?,
            stream,
            score_threshold: 0.35,
            nms_iou: 0.5,
        })
    }

    /// Queues, for image `i` of a batch, the decoding of the model outputs at `outs` (device
    /// pointers to this image's part, in the model's output order; it was made with `lb`) and
    /// NMS, then the copy of its result block to the host (the one device→host copy of the GPU
    /// path). [`Self::finish`] waits for them.
    pub fn enqueue(
        &mut self,
        i: usize,
        levels: &[LevelInfo],
        classes: usize,
        bins: usize,
        outs: &[u64],
        lb: &Letterbox,
    ) -> Result<(), String> {
        if i >= MAX_BATCH {
            return Err(format!("image {i} of a batch of at most {MAX_BATCH}"));
        }
        if levels.len() != 3 {
            return Err(format!("expected 3 output levels, got {}", levels.len()));
        }
        let e = |e: cudarc::driver::DriverError| e.to_string();
        let total: usize = levels.iter().map(|l| l.cells).sum();
        let ptrs: [u64; 6] = [
            outs[levels[0].scores],
            outs[levels[0].boxes],
            outs[levels[1].scores],
            outs[levels[1].boxes],
            outs[levels[2].scores],
            outs[levels[2].boxes],
        ];
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
            self.score_threshold,
            lb.pad_x as f32,
            lb.pad_y as f32,
            lb.new_w as f32,
            lb.new_h as f32,
        ];
        let cap = MAX_CANDIDATES as i32;
        let mut b = self.stream.launch_builder(&self.candidates);
        for p in &ptrs {
            b.arg(p);
        }
        for i in &ints {
            b.arg(i);
        }
        for f in &floats {
            b.arg(f);
        }
        b.arg(&mut self.cand).arg(&mut self.count).arg(&cap);
        let cfg = LaunchConfig {
            grid_dim: ((total as u32).div_ceil(128), 1, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `nanodet_candidates` in order and type; each output pointer
        // holds `cells × classes` (scores) or `cells × 4 × bins` (boxes) floats for this input
        // size (the layout was worked out from the bound outputs' lengths); `cand` holds `cap`
        // candidates of 7 floats.
        unsafe { b.launch(cfg) }.map_err(e)?;
        let max_out = MAX_DETECTIONS as i32;
        let mut block = self
            .result
            .slice_mut(i * RESULT_FLOATS..(i + 1) * RESULT_FLOATS);
        let mut b = self.stream.launch_builder(&self.nms);
        b.arg(&self.cand)
            .arg(&mut self.count)
            .arg(&cap)
            .arg(&self.nms_iou)
            .arg(&max_out)
            .arg(&mut block);
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: arguments match `nms_sorted`; one block of 1024 threads = MAX_CANDIDATES (the
        // shared arrays' size); image i's block holds 3 + 6 × max_out floats. The kernel
        // resets the candidate count for the next image (same stream: in order).
        unsafe { b.launch(cfg) }.map_err(e)?;
        self.stream
            .memcpy_dtoh(
                &self
                    .result
                    .slice(i * RESULT_FLOATS..(i + 1) * RESULT_FLOATS),
                &mut self.host[i],
            )
            .map_err(e)?;
        Ok(())
    }

    /// Waits for the queued work; returns the bytes copied to the host for `n` images.
    pub fn finish(&mut self, n: usize) -> Result<usize, String> {
        self.stream.synchronize().map_err(|e| e.to_string())?;
        Ok(n * RESULT_FLOATS * 4)
    }

    /// Image `i`'s detections (after [`Self::finish`]); false if its model outputs held a
    /// non-finite value.
    pub fn read(&mut self, i: usize, out: &mut Detections) -> Result<bool, String> {
        out.clear();
        let host = self.host[i].as_slice().map_err(|e| e.to_string())?;
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
