//! Fused preprocessing on the GPU: NV12 or I420 → letterboxed, normalised, planar BGR/RGB f32,
//! written straight into the inference input buffer, one thread per output pixel. The same
//! arithmetic as the CPU reference (`crate::infer::preprocess`), which the tests compare it with.

use crate::infer::preprocess::{InputSpec, Letterbox};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use std::sync::Arc;

/// CUDA C of the kernel; `fmad=false` so products and sums round as on the CPU.
pub const KERNEL: &str = r#"
extern "C" __global__ void yuv420_letterbox(
    const unsigned char* __restrict__ y, int y_stride,
    const unsigned char* __restrict__ u, const unsigned char* __restrict__ v, int uv_stride, int uv_step,
    int src_w, int src_h,
    float* __restrict__ out, int in_w, int in_h, int new_w, int new_h, int pad_x, int pad_y,
    float m0, float m1, float m2, float k0, float k1, float k2, float pad_value, int bgr)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= in_w || r >= in_h) return;
    int plane = in_w * in_h;
    int i = r * in_w + x;
    float c0, c1, c2;
    if (x < pad_x || x >= pad_x + new_w || r < pad_y || r >= pad_y + new_h) {
        c0 = pad_value; c1 = pad_value; c2 = pad_value;
    } else {
        float sxs = (float)src_w / (float)new_w;
        float sys = (float)src_h / (float)new_h;
        int dx = x - pad_x, dy = r - pad_y;
        float sx = fminf(fmaxf(((float)dx + 0.5f) * sxs - 0.5f, 0.0f), (float)(src_w - 1));
        float sy = fminf(fmaxf(((float)dy + 0.5f) * sys - 0.5f, 0.0f), (float)(src_h - 1));
        int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
        int x1 = min(x0 + 1, src_w - 1), y1 = min(y0 + 1, src_h - 1);
        float wx = sx - (float)x0, wy = sy - (float)y0;
        int cx = (int)floorf(fminf(fmaxf(((float)dx + 0.5f) * sxs, 0.0f), (float)(src_w - 1))) / 2;
        int cy = (int)floorf(fminf(fmaxf(((float)dy + 0.5f) * sys, 0.0f), (float)(src_h - 1))) / 2;
        const unsigned char* r0 = y + y0 * y_stride;
        const unsigned char* r1 = y + y1 * y_stride;
        float top = (float)r0[x0] + ((float)r0[x1] - (float)r0[x0]) * wx;
        float bot = (float)r1[x0] + ((float)r1[x1] - (float)r1[x0]) * wx;
        float yv = top + (bot - top) * wy;
        int ci = cy * uv_stride + cx * uv_step;
        float c = 1.164383f * (yv - 16.0f);
        float d = (float)u[ci] - 128.0f;
        float e = (float)v[ci] - 128.0f;
        float rr = fminf(fmaxf(c + 1.596027f * e, 0.0f), 255.0f);
        float gg = fminf(fmaxf(c - 0.391762f * d - 0.812968f * e, 0.0f), 255.0f);
        float bb = fminf(fmaxf(c + 2.017232f * d, 0.0f), 255.0f);
        c0 = bgr ? bb : rr; c1 = gg; c2 = bgr ? rr : bb;
    }
    out[i] = (c0 - m0) * k0;
    out[plane + i] = (c1 - m1) * k1;
    out[2 * plane + i] = (c2 - m2) * k2;
}
"#;

/// A 4:2:0 frame in device memory, laid out as [`crate::infer::preprocess::YuvView`] describes
/// (offsets of the planes within one allocation).
pub struct DeviceYuv<'a> {
    pub data: &'a CudaSlice<u8>,
    pub width: usize,
    pub height: usize,
    pub y_stride: usize,
    pub u_offset: usize,
    pub v_offset: usize,
    pub uv_stride: usize,
    pub uv_step: usize,
}

/// Device pointers of a 4:2:0 frame's planes (NV12: `v = u + 1`, `uv_step = 2`).
#[derive(Debug, Clone, Copy)]
pub struct DevicePlanes {
    pub y: u64,
    pub u: u64,
    pub v: u64,
    pub width: usize,
    pub height: usize,
    pub y_stride: usize,
    pub uv_stride: usize,
    pub uv_step: usize,
}

pub struct GpuPreprocessor {
    spec: InputSpec,
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl GpuPreprocessor {
    /// Compiles the kernel for `ctx`'s device (once; NVRTC at run time); launches go on
    /// `stream`.
    pub fn new(
        ctx: &Arc<CudaContext>,
        spec: InputSpec,
        stream: Arc<CudaStream>,
    ) -> Result<Self, String> {
        let module = super::compile(ctx, KERNEL)?;
        let func = module
            .load_function("yuv420_letterbox")
            .map_err(|e| e.to_string())?;
        Ok(Self { spec, func, stream })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Writes the network input for `frame` into `out` (at least 3 × in_h × in_w floats) on the
    /// stream, asynchronously, and returns the letterbox.
    pub fn run(
        &self,
        frame: &DeviceYuv<'_>,
        out: &mut CudaSlice<f32>,
    ) -> Result<Letterbox, String> {
        let (base, _sync) = frame.data.device_ptr(&self.stream);
        let planes = DevicePlanes {
            y: base,
            u: base + frame.u_offset as u64,
            v: base + frame.v_offset as u64,
            width: frame.width,
            height: frame.height,
            y_stride: frame.y_stride,
            uv_stride: frame.uv_stride,
            uv_step: frame.uv_step,
        };
        let len = out.len();
        let (dst, _sync) = out.device_ptr_mut(&self.stream);
        // SAFETY: `planes` lie within `frame.data` (the caller's contract, as for the CPU
        // reference) and `dst` holds `len` floats; both stay alive until the stream is synced
        // (the `_sync` guards record that).
        unsafe { self.run_ptrs(&planes, dst, len) }
    }

    /// As [`Self::run`], on raw device pointers (decoder output, ONNX Runtime's input tensor).
    ///
    /// # Safety
    /// The planes must be readable device memory of the frame's size and strides, and `out` must
    /// hold `out_len` floats, both until the stream has run the kernel.
    pub unsafe fn run_ptrs(
        &self,
        frame: &DevicePlanes,
        out: u64,
        out_len: usize,
    ) -> Result<Letterbox, String> {
        let (in_w, in_h) = self.spec.input_dims(frame.width, frame.height);
        let lb = Letterbox::new(frame.width, frame.height, in_w, in_h);
        if out_len < 3 * in_w * in_h {
            return Err(format!(
                "input buffer of {out_len} floats, {} needed",
                3 * in_w * in_h
            ));
        }
        let s = self.spec;
        let ints = [
            frame.y_stride as i32,
            frame.uv_stride as i32,
            frame.uv_step as i32,
            frame.width as i32,
            frame.height as i32,
            in_w as i32,
            in_h as i32,
            lb.new_w as i32,
            lb.new_h as i32,
            lb.pad_x as i32,
            lb.pad_y as i32,
            i32::from(s.bgr),
        ];
        let inv = [1.0 / s.std[0], 1.0 / s.std[1], 1.0 / s.std[2]];
        let cfg = LaunchConfig {
            grid_dim: ((in_w as u32).div_ceil(32), (in_h as u32).div_ceil(8), 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.stream.launch_builder(&self.func);
        b.arg(&frame.y)
            .arg(&ints[0])
            .arg(&frame.u)
            .arg(&frame.v)
            .arg(&ints[1])
            .arg(&ints[2])
            .arg(&ints[3])
            .arg(&ints[4]);
        b.arg(&out)
            .arg(&ints[5])
            .arg(&ints[6])
            .arg(&ints[7])
            .arg(&ints[8])
            .arg(&ints[9])
            .arg(&ints[10]);
        b.arg(&s.mean[0])
            .arg(&s.mean[1])
            .arg(&s.mean[2])
            .arg(&inv[0])
            .arg(&inv[1])
            .arg(&inv[2]);
        b.arg(&s.pad_value).arg(&ints[11]);
        // SAFETY: the argument list matches the kernel's signature in order and type (pointers
        // as 64-bit integers, i32, f32); `out` holds at least 3 × in_h × in_w floats (checked
        // above); the planes are valid per this function's contract.
        unsafe { b.launch(cfg) }.map_err(|e| e.to_string())?;
        Ok(lb)
    }
}
