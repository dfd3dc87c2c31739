//! The fused preprocessing kernel (`gpu::preprocess`'s): its CUDA C, the parameter block that
//! describes a batch's frames to it ([`BatchDesc`], passed by value: a kernel parameter of 512
//! bytes), the frames' planes as it reads them ([`DevicePlanes`], made only from memory that
//! holds them) and its launch ([`PreprocessKernels::launch`]), which checks everything the
//! kernel's reads and writes depend on before queuing it.
//!
//! The source and the launch are here together, so that the argument list pushed is checked
//! against the signature it was compiled from: [`PreprocessKernels`] can only be made by
//! compiling [`KERNEL`].

use super::cuda::DeviceViewMut;
use crate::gpu::ort_cuda::MAX_BATCH;
use crate::gpu::{GpuError, LaunchError};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, SyncOnDrop,
};
use std::marker::PhantomData;
use std::sync::Arc;
use vigil_core::model::preprocess::{InputSpec, Letterbox};

/// CUDA C of the kernels; `fmad=false` so products and sums round as on the CPU. The f16 entry
/// point rounds each f32 result to nearest (`cvt.rn.f16.f32`), without needing `cuda_fp16.h`.
pub const KERNEL: &str = r#"
struct Img {
    unsigned long long y, u, v;
    int y_stride, uv_stride, uv_step, src_w, src_h, new_w, new_h, pad_x, pad_y, _pad;
};
struct Batch { Img img[8]; };

__device__ __forceinline__ void letterbox_pixel(
    const Img& im, int x, int r, float m0, float m1, float m2, float k0, float k1, float k2,
    float pad_value, int bgr, float* o0, float* o1, float* o2)
{
    float c0, c1, c2;
    if (x < im.pad_x || x >= im.pad_x + im.new_w || r < im.pad_y || r >= im.pad_y + im.new_h) {
        c0 = pad_value; c1 = pad_value; c2 = pad_value;
    } else {
        const unsigned char* y = (const unsigned char*)im.y;
        const unsigned char* u = (const unsigned char*)im.u;
        const unsigned char* v = (const unsigned char*)im.v;
        int src_w = im.src_w, src_h = im.src_h;
        float sxs = (float)src_w / (float)im.new_w;
        float sys = (float)src_h / (float)im.new_h;
        int dx = x - im.pad_x, dy = r - im.pad_y;
        float sx = fminf(fmaxf(((float)dx + 0.5f) * sxs - 0.5f, 0.0f), (float)(src_w - 1));
        float sy = fminf(fmaxf(((float)dy + 0.5f) * sys - 0.5f, 0.0f), (float)(src_h - 1));
        int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
        int x1 = min(x0 + 1, src_w - 1), y1 = min(y0 + 1, src_h - 1);
        float wx = sx - (float)x0, wy = sy - (float)y0;
        int cx = (int)floorf(fminf(fmaxf(((float)dx + 0.5f) * sxs, 0.0f), (float)(src_w - 1))) / 2;
        int cy = (int)floorf(fminf(fmaxf(((float)dy + 0.5f) * sys, 0.0f), (float)(src_h - 1))) / 2;
        const unsigned char* r0 = y + y0 * im.y_stride;
        const unsigned char* r1 = y + y1 * im.y_stride;
        float top = (float)r0[x0] + ((float)r0[x1] - (float)r0[x0]) * wx;
        float bot = (float)r1[x0] + ((float)r1[x1] - (float)r1[x0]) * wx;
        float yv = top + (bot - top) * wy;
        int ci = cy * im.uv_stride + cx * im.uv_step;
        float c = 1.164383f * (yv - 16.0f);
        float d = (float)u[ci] - 128.0f;
        float e = (float)v[ci] - 128.0f;
        float rr = fminf(fmaxf(c + 1.596027f * e, 0.0f), 255.0f);
        float gg = fminf(fmaxf(c - 0.391762f * d - 0.812968f * e, 0.0f), 255.0f);
        float bb = fminf(fmaxf(c + 2.017232f * d, 0.0f), 255.0f);
        c0 = bgr ? bb : rr; c1 = gg; c2 = bgr ? rr : bb;
    }
    *o0 = (c0 - m0) * k0;
    *o1 = (c1 - m1) * k1;
    *o2 = (c2 - m2) * k2;
}

extern "C" __global__ void letterbox_batch_f32(
    Batch b, float* __restrict__ out, int in_w, int in_h,
    float m0, float m1, float m2, float k0, float k1, float k2, float pad_value, int bgr)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= in_w || r >= in_h) return;
    long long plane = (long long)in_w * in_h;
    float* o = out + 3 * plane * blockIdx.z + (long long)r * in_w + x;
    float a, g, c;
    letterbox_pixel(b.img[blockIdx.z], x, r, m0, m1, m2, k0, k1, k2, pad_value, bgr, &a, &g, &c);
    o[0] = a; o[plane] = g; o[2 * plane] = c;
}

__device__ __forceinline__ unsigned short to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

extern "C" __global__ void letterbox_batch_f16(
    Batch b, unsigned short* __restrict__ out, int in_w, int in_h,
    float m0, float m1, float m2, float k0, float k1, float k2, float pad_value, int bgr)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= in_w || r >= in_h) return;
    long long plane = (long long)in_w * in_h;
    unsigned short* o = out + 3 * plane * blockIdx.z + (long long)r * in_w + x;
    float a, g, c;
    letterbox_pixel(b.img[blockIdx.z], x, r, m0, m1, m2, k0, k1, k2, pad_value, bgr, &a, &g, &c);
    o[0] = to_f16(a); o[plane] = to_f16(g); o[2 * plane] = to_f16(c);
}
"#;

/// Element type of the network input the kernel writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    /// IEEE half, rounded to nearest.
    F16,
}

impl Precision {
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// One frame of a batch as the kernel reads it (`struct Img` of [`KERNEL`], field for field).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct ImageDesc {
    y: u64,
    u: u64,
    v: u64,
    y_stride: i32,
    uv_stride: i32,
    uv_step: i32,
    src_w: i32,
    src_h: i32,
    new_w: i32,
    new_h: i32,
    pad_x: i32,
    pad_y: i32,
    _pad: i32,
}

/// The frames of one launch (`struct Batch` of [`KERNEL`]); entries past the launch's image
/// count are not read.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchDesc {
    img: [ImageDesc; MAX_BATCH],
}

// SAFETY: `BatchDesc` is `repr(C)` plain data (integers only, no padding: 3 × u64 then 10 × i32
// = 64 bytes per image) laid out exactly as the kernel's `struct Batch`, so it can be passed by
// value as a kernel parameter.
unsafe impl DeviceRepr for BatchDesc {}

/// A 4:2:0 frame in device memory, laid out as [`vigil_core::model::preprocess::YuvView`] describes
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

/// Device pointers of a 4:2:0 frame's planes (NV12: `v = u + 1`, `uv_step = 2`), borrowed for
/// `'a` from the memory that holds them: made by [`DevicePlanes::of_yuv`] (a `CudaSlice`,
/// bounds checked) or by the frame mappings of `ffi/` (`gpu::MappedFrame::planes`).
#[derive(Debug, Clone, Copy)]
pub struct DevicePlanes<'a> {
    pub(in crate::ffi) y: u64,
    pub(in crate::ffi) u: u64,
    pub(in crate::ffi) v: u64,
    pub(in crate::ffi) width: usize,
    pub(in crate::ffi) height: usize,
    pub(in crate::ffi) y_stride: usize,
    pub(in crate::ffi) uv_stride: usize,
    pub(in crate::ffi) uv_step: usize,
    _memory: PhantomData<&'a [u8]>,
}

/// How far past the start of its planes the kernel reads a `width`×`height` frame, in bytes:
/// `(Y, U and V each)`; `None` for an empty frame (or one whose reach overflows). The kernel
/// clamps its sample positions to the frame, so: Y rows `0..height` of `width` bytes, and the
/// chroma sample of every second row and column (`(height - 1) / 2` rows of `uv_stride`,
/// `(width - 1) / 2` samples of `uv_step`, one byte each).
fn reach(
    width: usize,
    height: usize,
    y_stride: usize,
    uv_stride: usize,
    uv_step: usize,
) -> Option<(usize, usize)> {
    if width == 0 || height == 0 {
        return None;
    }
    let y = (height - 1).checked_mul(y_stride)?.checked_add(width)?;
    let uv = ((height - 1) / 2)
        .checked_mul(uv_stride)?
        .checked_add(((width - 1) / 2).checked_mul(uv_step)?)?
        .checked_add(1)?;
    Some((y, uv))
}

impl<'a> DevicePlanes<'a> {
    /// # Safety
    /// The planes of a `width`×`height` frame at `y`, `u`, `v` with these strides must be
    /// device memory that stays allocated (and mapped) for `'a`, each plane reaching at least as
    /// far as [`reach`] says the kernel reads.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::ffi) unsafe fn from_raw(
        y: u64,
        u: u64,
        v: u64,
        width: usize,
        height: usize,
        y_stride: usize,
        uv_stride: usize,
        uv_step: usize,
    ) -> Self {
        Self {
            y,
            u,
            v,
            width,
            height,
            y_stride,
            uv_stride,
            uv_step,
            _memory: PhantomData,
        }
    }

    /// The planes of `f`, for work on `stream`, with cudarc's guard: drop it after the launch is
    /// queued (where cudarc tracks events, it records the read then). An error if the planes
    /// do not lie within `f.data` as far as the kernel reads them.
    pub fn of_yuv(
        f: &DeviceYuv<'a>,
        stream: &'a CudaStream,
    ) -> Result<(Self, SyncOnDrop<'a>), LaunchError> {
        let (base, sync) = f.data.device_ptr(stream);
        let len = f.data.len();
        let within =
            reach(f.width, f.height, f.y_stride, f.uv_stride, f.uv_step).is_some_and(|(y, uv)| {
                y <= len
                    && f.u_offset.checked_add(uv).is_some_and(|e| e <= len)
                    && f.v_offset.checked_add(uv).is_some_and(|e| e <= len)
            });
        if !within {
            return Err(LaunchError::PlanesOutside {
                size: (f.width, f.height),
                strides: (f.y_stride, f.uv_stride),
                chroma: (f.u_offset, f.v_offset),
                len,
            });
        }
        // SAFETY: the three planes lie within `f.data` as far as the kernel reads (checked just
        // above), a device allocation of `len` bytes borrowed for 'a.
        let planes = unsafe {
            Self::from_raw(
                base,
                base + f.u_offset as u64,
                base + f.v_offset as u64,
                f.width,
                f.height,
                f.y_stride,
                f.uv_stride,
                f.uv_step,
            )
        };
        Ok((planes, sync))
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The `w`×`h` part of the frame at (`x`, `y`) (a tile), as planes of its own: the same
    /// memory with the same strides, borrowed as long. `None` unless it is not empty, lies
    /// within the frame, and starts on a whole chroma sample (`x` and `y` even, 4:2:0).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Option<DevicePlanes<'a>> {
        let inside = x.checked_add(w).is_some_and(|r| r <= self.width)
            && y.checked_add(h).is_some_and(|b| b <= self.height);
        if w == 0 || h == 0 || !x.is_multiple_of(2) || !y.is_multiple_of(2) || !inside {
            return None;
        }
        let luma = (y * self.y_stride + x) as u64;
        let chroma = ((y / 2) * self.uv_stride + (x / 2) * self.uv_step) as u64;
        // SAFETY: everything the kernel reads of the crop ([`reach`] from its origin) lies
        // within what it may read of the whole frame, which `self` vouches for: luma rows
        // y..y+h and columns x..x+w of the frame (x + w ≤ width, y + h ≤ height); chroma row
        // y/2 + (h-1)/2 ≤ (height-1)/2 and sample x/2 + (w-1)/2 ≤ (width-1)/2, as x and y are
        // even. Same memory, same lifetime 'a.
        Some(unsafe {
            Self::from_raw(
                self.y + luma,
                self.u + chroma,
                self.v + chroma,
                w,
                h,
                self.y_stride,
                self.uv_stride,
                self.uv_step,
            )
        })
    }
}

/// The two entry points of [`KERNEL`], compiled for one device.
pub struct PreprocessKernels {
    f32_fn: CudaFunction,
    f16_fn: CudaFunction,
}

impl PreprocessKernels {
    /// Compiles [`KERNEL`] for `ctx`'s device (NVRTC at run time) and loads its entry points.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let module = crate::gpu::compile(ctx, KERNEL)?;
        let load = |name: &str| module.load_function(name).map_err(GpuError::Driver);
        Ok(Self {
            f32_fn: load("letterbox_batch_f32")?,
            f16_fn: load("letterbox_batch_f16")?,
        })
    }

    /// Queues on `stream` one launch writing the network inputs of `frames` (at most
    /// [`MAX_BATCH`], all with the same input size under `spec`) into `out`, image i at
    /// i × 3 × in_h × in_w elements of `precision`; returns their letterboxes. Checks, before
    /// launching, that `out` holds them in elements of that size and that each frame's reach
    /// fits the kernel's 32-bit indexing.
    pub fn launch<T>(
        &self,
        stream: &CudaStream,
        spec: &InputSpec,
        frames: &[DevicePlanes<'_>],
        out: DeviceViewMut<'_, T>,
        precision: Precision,
    ) -> Result<heapless::Vec<Letterbox, MAX_BATCH>, GpuError> {
        let Some(first) = frames.first() else {
            return Ok(heapless::Vec::new());
        };
        if frames.len() > MAX_BATCH {
            return Err(LaunchError::TooManyFrames(frames.len()).into());
        }
        check_precision::<T>(precision)?;
        let out_len = out.len();
        let (in_w, in_h) = spec.input_dims(first.width, first.height);
        if out_len < frames.len() * 3 * in_w * in_h {
            return Err(LaunchError::InputBuffer {
                len: out_len,
                needed: frames.len() * 3 * in_w * in_h,
            }
            .into());
        }
        let mut desc = BatchDesc::default();
        let mut lbs = heapless::Vec::<Letterbox, MAX_BATCH>::new();
        for (d, f) in desc.img.iter_mut().zip(frames) {
            if spec.input_dims(f.width, f.height) != (in_w, in_h) {
                return Err(LaunchError::MixedSizes {
                    size: (f.width, f.height),
                    first: (first.width, first.height),
                }
                .into());
            }
            let fits = |n: usize| n <= i32::MAX as usize;
            let indexable = fits(f.width)
                && fits(f.height)
                && reach(f.width, f.height, f.y_stride, f.uv_stride, f.uv_step)
                    .is_some_and(|(y, uv)| fits(y) && fits(uv));
            if !indexable {
                return Err(LaunchError::Unindexable {
                    size: (f.width, f.height),
                    strides: (f.y_stride, f.uv_stride),
                }
                .into());
            }
            let lb = Letterbox::new(f.width, f.height, in_w, in_h);
            *d = ImageDesc {
                y: f.y,
                u: f.u,
                v: f.v,
                y_stride: f.y_stride as i32,
                uv_stride: f.uv_stride as i32,
                uv_step: f.uv_step as i32,
                src_w: f.width as i32,
                src_h: f.height as i32,
                new_w: lb.new_w as i32,
                new_h: lb.new_h as i32,
                pad_x: lb.pad_x as i32,
                pad_y: lb.pad_y as i32,
                _pad: 0,
            };
            let _ = lbs.push(lb);
        }
        let s = *spec;
        let out = out.addr();
        let (w, h, bgr) = (in_w as i32, in_h as i32, i32::from(s.bgr));
        let inv = [1.0 / s.std[0], 1.0 / s.std[1], 1.0 / s.std[2]];
        let cfg = LaunchConfig {
            grid_dim: (
                (in_w as u32).div_ceil(32),
                (in_h as u32).div_ceil(8),
                frames.len() as u32,
            ),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        };
        let func = match precision {
            Precision::F32 => &self.f32_fn,
            Precision::F16 => &self.f16_fn,
        };
        let mut b = stream.launch_builder(func);
        b.arg(&desc).arg(&out).arg(&w).arg(&h);
        b.arg(&s.mean[0])
            .arg(&s.mean[1])
            .arg(&s.mean[2])
            .arg(&inv[0])
            .arg(&inv[1])
            .arg(&inv[2]);
        b.arg(&s.pad_value).arg(&bgr);
        // SAFETY: the argument list matches the kernel's signature in order and type (the
        // batch descriptor by value, the output pointer as a 64-bit integer, i32, f32): `func`
        // is an entry point of `KERNEL`, the only source this type compiles. `out` holds one
        // input per frame of the launch (checked above) in the element type the chosen entry
        // point writes; the planes are device memory reaching as far as the kernel reads
        // (`DevicePlanes`' invariant), within its 32-bit indexing (checked above). All of it
        // is borrowed for this call; that it stays allocated until the stream has run the
        // kernel is the one-stream discipline of `ffi::cuda`'s module docs.
        unsafe { b.launch(cfg) }?;
        Ok(lbs)
    }
}

/// That `T`, the element type of an output buffer, is `precision`'s size.
pub fn check_precision<T>(precision: Precision) -> Result<(), LaunchError> {
    let element = std::mem::size_of::<T>();
    if element != precision.bytes() {
        return Err(LaunchError::Precision { precision, element });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_descriptor_matches_the_kernel_struct() {
        // struct Img: 3 × 8-byte pointers + 10 × int, no padding; struct Batch: 8 of them
        // (the kernel's `img[8]` is MAX_BATCH). The C fields in the order of `ImageDesc`'s:
        assert!(KERNEL.contains(
            "unsigned long long y, u, v;\n    int y_stride, uv_stride, uv_step, src_w, src_h, new_w, new_h, pad_x, pad_y, _pad;"
        ));
        assert_eq!(std::mem::size_of::<ImageDesc>(), 64);
        assert_eq!(std::mem::align_of::<ImageDesc>(), 8);
        assert_eq!(std::mem::size_of::<BatchDesc>(), 64 * MAX_BATCH);
        assert!(KERNEL.contains(&format!("Img img[{MAX_BATCH}]")));
        assert_eq!(std::mem::offset_of!(ImageDesc, y_stride), 24);
        assert_eq!(std::mem::offset_of!(ImageDesc, pad_y), 56);
    }

    #[test]
    fn a_crop_reads_only_within_its_frame() {
        // Addresses only (nothing is read here): an NV12 1920×1080 frame, pitch 2048.
        // SAFETY: never given to a kernel.
        let f = unsafe {
            DevicePlanes::from_raw(
                1 << 32,
                (1 << 32) + 2048 * 1080,
                (1 << 32) + 2048 * 1080 + 1,
                1920,
                1080,
                2048,
                2048,
                2,
            )
        };
        let c = f
            .crop(1066, 540, 854, 540)
            .expect("the bottom-right tile of a 2x2 grid");
        assert_eq!(
            (c.width, c.height, c.y_stride, c.uv_stride, c.uv_step),
            (854, 540, 2048, 2048, 2)
        );
        assert_eq!(c.y - f.y, 540 * 2048 + 1066);
        assert_eq!(
            (c.u - f.u, c.v - f.v),
            (270 * 2048 + 533 * 2, 270 * 2048 + 533 * 2)
        );
        // Its furthest reads are the frame's.
        let (fy, fuv) = reach(1920, 1080, 2048, 2048, 2).expect("frame");
        let (cy, cuv) = reach(c.width, c.height, 2048, 2048, 2).expect("crop");
        assert_eq!(c.y - f.y + cy as u64, f.y - f.y + fy as u64);
        assert_eq!(c.u - f.u + cuv as u64, fuv as u64);
        // Outside the frame, empty, or on half a chroma sample: refused.
        for (x, y, w, h) in [
            (1066, 540, 856, 540),
            (0, 0, 0, 10),
            (1, 0, 10, 10),
            (0, 3, 10, 10),
            (usize::MAX - 1, 0, 4, 4),
        ] {
            assert!(f.crop(x, y, w, h).is_none(), "{x},{y} {w}x{h}");
        }
    }

    #[test]
    fn reach_is_what_the_kernel_reads() {
        // The kernel's furthest samples: Y at row h-1, column w-1; chroma at ((h-1)/2, (w-1)/2).
        // NV12 1920×1080, pitch 2048: Y to 1079 × 2048 + 1920; UV to 539 × 2048 + 959 × 2 + 1.
        assert_eq!(
            reach(1920, 1080, 2048, 2048, 2),
            Some((1079 * 2048 + 1920, 539 * 2048 + 959 * 2 + 1))
        );
        // I420 333×201, tight: chroma rows of 167 bytes, 100 rows, 166 samples.
        assert_eq!(
            reach(333, 201, 333, 167, 1),
            Some((200 * 333 + 333, 100 * 167 + 166 + 1))
        );
        // A tight frame fits exactly: the last chroma byte is the last of its plane.
        let (w, h) = (333usize, 201usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (_, uv) = reach(w, h, w, cw, 1).unwrap();
        assert_eq!(uv, cw * ch);
        assert_eq!(reach(0, 1080, 2048, 2048, 2), None);
        assert_eq!(reach(1920, 0, 2048, 2048, 2), None);
        assert_eq!(reach(2, usize::MAX, usize::MAX, 1, 1), None);
    }
}
