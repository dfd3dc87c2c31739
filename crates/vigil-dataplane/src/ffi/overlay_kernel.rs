//! The GPU renderer's kernels (`gpu::picture`'s): a frame's planes scaled into a separate,
//! smaller I420 picture (never the inference input), then the overlay's [`DrawList`] drawn over
//! it while it is turned into the full-range YCbCr a JPEG encoder takes. Their CUDA C, the
//! device form of a primitive ([`DevPrim`]) and the checked launches.
//!
//! The arithmetic is the CPU renderer's, integer for integer (`vigil_core::overlay`): the same
//! 16.16 fixed-point bilinear samples ([`vigil_core::overlay::sample`]), the same coverage
//! tests ([`vigil_core::overlay::Prim::covers`], the segment's 128-bit comparison done as a
//! high/low pair of 64-bit products), the last covering primitive wins, chroma sample
//! `(cx, cy)` takes the colour of luma pixel `(2cx, 2cy)`, and the same limited → full range
//! tables. So the GPU picture equals the CPU one byte for byte (`vigil gpu-check --pictures`).

use crate::gpu::{GpuError, LaunchError};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use std::sync::Arc;
use vigil_core::overlay::{DrawList, MAX_PRIMS, Prim};

use super::preprocess_kernel::DevicePlanes;

/// CUDA C of the kernels (compiled by NVRTC with `fmad=false`; integer arithmetic only).
pub const KERNEL: &str = r#"
struct Prim { int kind, a, b, c, d, e; unsigned int colour, pad; unsigned long long rows; };

__device__ __forceinline__ void sample(int o, int sn, int dn, int* i0, int* i1, unsigned* f) {
    long long pos = ((2LL * o + 1) * (long long)sn * 65536LL) / (2LL * dn) - 32768LL;
    if (pos < 0) pos = 0;
    int a = (int)(pos >> 16);
    if (a > sn - 1) a = sn - 1;
    *i0 = a;
    *i1 = min(a + 1, sn - 1);
    unsigned w = (unsigned)(((pos & 0xffff) + 128) >> 8);
    *f = w > 255u ? 255u : w;
}

__device__ __forceinline__ unsigned char bilinear(
    const unsigned char* p, int stride, int step, int sw, int sh, int dw, int dh, int ox, int oy)
{
    int x0, x1, y0, y1; unsigned fx, fy;
    sample(ox, sw, dw, &x0, &x1, &fx);
    sample(oy, sh, dh, &y0, &y1, &fy);
    const unsigned char* r0 = p + (long long)y0 * stride;
    const unsigned char* r1 = p + (long long)y1 * stride;
    unsigned top = (unsigned)r0[x0 * step] * (256u - fx) + (unsigned)r0[x1 * step] * fx;
    unsigned bot = (unsigned)r1[x0 * step] * (256u - fx) + (unsigned)r1[x1 * step] * fx;
    return (unsigned char)((top * (256u - fy) + bot * fy + 32768u) >> 16);
}

// Output I420, tightly packed: Y (dw x dh), then U and V (dw/2 x dh/2 each). One thread per
// luma pixel; those of the top-left quarter also make one chroma sample of each plane.
extern "C" __global__ void scale_420(
    unsigned long long y, unsigned long long u, unsigned long long v,
    int y_stride, int uv_stride, int uv_step, int sw, int sh,
    unsigned char* __restrict__ out, int dw, int dh)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int r = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dw || r >= dh) return;
    out[(long long)r * dw + x] =
        bilinear((const unsigned char*)y, y_stride, 1, sw, sh, dw, dh, x, r);
    int cw = dw / 2, ch = dh / 2;
    if (x < cw && r < ch) {
        int csw = (sw + 1) / 2, csh = (sh + 1) / 2;
        long long plane = (long long)dw * dh, i = (long long)r * cw + x;
        out[plane + i] =
            bilinear((const unsigned char*)u, uv_stride, uv_step, csw, csh, cw, ch, x, r);
        out[plane + (long long)cw * ch + i] =
            bilinear((const unsigned char*)v, uv_stride, uv_step, csw, csh, cw, ch, x, r);
    }
}

__device__ __forceinline__ bool within(const Prim& p, int x, int y) {
    int x0, y0, x1, y1;
    if (p.kind == 2) {
        int r = p.e;
        // floor division by 2 (Rust's div_euclid): an arithmetic shift.
        x0 = (min(p.a, p.c) - r - 1) >> 1; y0 = (min(p.b, p.d) - r - 1) >> 1;
        x1 = (max(p.a, p.c) + r) >> 1;     y1 = (max(p.b, p.d) + r) >> 1;
    } else if (p.kind == 3) {
        x0 = p.a; y0 = p.b; x1 = p.a + 8 * p.c - 1; y1 = p.b + 8 * p.c - 1;
    } else {
        x0 = p.a; y0 = p.b; x1 = p.c; y1 = p.d;
    }
    return x >= x0 && x <= x1 && y >= y0 && y <= y1;
}

// a <= b for two unsigned 128-bit products given as (high, low).
__device__ __forceinline__ bool le128(unsigned long long ah, unsigned long long al,
                                      unsigned long long bh, unsigned long long bl) {
    return ah < bh || (ah == bh && al <= bl);
}

__device__ __forceinline__ bool covers(const Prim& p, int x, int y) {
    if (!within(p, x, y)) return false;
    if (p.kind == 0) {
        int t = p.e;
        bool inner = x >= p.a + t && x <= p.c - t && y >= p.b + t && y <= p.d - t;
        return !inner;
    }
    if (p.kind == 1) return true;
    if (p.kind == 2) {
        long long px = 2LL * x + 1, py = 2LL * y + 1;
        long long ax = p.a, ay = p.b, bx = p.c, by = p.d;
        long long dx = bx - ax, dy = by - ay, qx = px - ax, qy = py - ay;
        long long len2 = dx * dx + dy * dy, dot = qx * dx + qy * dy;
        long long r2 = (long long)p.e * (long long)p.e;
        if (dot <= 0 || len2 == 0) return qx * qx + qy * qy <= r2;
        if (dot >= len2) { long long ex = px - bx, ey = py - by; return ex * ex + ey * ey <= r2; }
        long long c = qx * dy - qy * dx;
        unsigned long long ac = (unsigned long long)(c < 0 ? -c : c);
        unsigned long long ur = (unsigned long long)r2, ul = (unsigned long long)len2;
        return le128(__umul64hi(ac, ac), ac * ac, __umul64hi(ur, ul), ur * ul);
    }
    if (p.kind == 3) {
        int s = p.c;
        if (x < p.a || y < p.b || s <= 0) return false;
        int col = (x - p.a) / s, row = (y - p.b) / s;
        return col < 8 && row < 8 && ((p.rows >> (row * 8 + col)) & 1ULL) == 1ULL;
    }
    return false;
}

__device__ __forceinline__ unsigned char full_y(int v) {
    int f = ((v - 16) * 255 * 2 + 219) / (2 * 219);
    return (unsigned char)(f < 0 ? 0 : (f > 255 ? 255 : f));
}

__device__ __forceinline__ unsigned char full_c(int v) {
    int f = 128 + ((v - 128) * 255 * 2 + (v >= 128 ? 224 : -224)) / (2 * 224);
    return (unsigned char)(f < 0 ? 0 : (f > 255 ? 255 : f));
}

// `pic` (limited range, as scaled) with prims[0..n) drawn over it (the last covering one wins)
// into `out`, in full range if `full` (what a JPEG takes), else as is; both I420 w x h, tightly
// packed.
extern "C" __global__ void draw_full(
    const unsigned char* __restrict__ pic, unsigned char* __restrict__ out, int w, int h,
    const Prim* __restrict__ prims, int n, int full)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    int hit = -1;
    for (int i = n - 1; i >= 0; --i) {
        if (covers(prims[i], x, y)) { hit = i; break; }
    }
    long long plane = (long long)w * h, i = (long long)y * w + x;
    int yv = hit >= 0 ? (int)(prims[hit].colour & 0xff) : (int)pic[i];
    out[i] = full ? full_y(yv) : (unsigned char)yv;
    if ((x & 1) == 0 && (y & 1) == 0) {
        int cw = w / 2, ch = h / 2;
        long long c = (long long)(y / 2) * cw + x / 2, vp = plane + (long long)cw * ch;
        int uv = hit >= 0 ? (int)((prims[hit].colour >> 8) & 0xff) : (int)pic[plane + c];
        int vv = hit >= 0 ? (int)((prims[hit].colour >> 16) & 0xff) : (int)pic[vp + c];
        out[plane + c] = full ? full_c(uv) : (unsigned char)uv;
        out[vp + c] = full ? full_c(vv) : (unsigned char)vv;
    }
}
"#;

/// A primitive as the kernel reads it (`struct Prim` of [`KERNEL`], field for field): `kind`
/// 0 rect (`x0 y0 x1 y1 t`), 1 fill (`x0 y0 x1 y1`), 2 segment (`ax ay bx by r2`), 3 glyph
/// (`x y scale`, the rows packed little-end first); colour `y | u << 8 | v << 16`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DevPrim {
    kind: i32,
    a: i32,
    b: i32,
    c: i32,
    d: i32,
    e: i32,
    colour: u32,
    pad: u32,
    rows: u64,
}

// SAFETY: `DevPrim` is `repr(C)` plain data (6 × i32, 2 × u32, then a u64 at offset 32: no
// padding, 40 bytes, 8-aligned) laid out exactly as the kernel's `struct Prim`.
unsafe impl DeviceRepr for DevPrim {}
// SAFETY: all-zero bytes are a valid `DevPrim` (integers only).
unsafe impl ValidAsZeroBits for DevPrim {}

impl From<&Prim> for DevPrim {
    fn from(p: &Prim) -> Self {
        let c = p.colour();
        let colour = u32::from(c.y) | u32::from(c.u) << 8 | u32::from(c.v) << 16;
        let (kind, a, b, cc, d, e, rows) = match *p {
            Prim::Rect {
                x0, y0, x1, y1, t, ..
            } => (0, x0, y0, x1, y1, t, 0),
            Prim::Fill { x0, y0, x1, y1, .. } => (1, x0, y0, x1, y1, 0, 0),
            Prim::Seg {
                ax, ay, bx, by, r2, ..
            } => (2, ax, ay, bx, by, r2, 0),
            Prim::Glyph {
                x, y, scale, rows, ..
            } => (3, x, y, scale, 0, 0, u64::from_le_bytes(rows)),
        };
        Self {
            kind,
            a,
            b,
            c: cc,
            d,
            e,
            colour,
            pad: 0,
            rows,
        }
    }
}

/// Bytes of an I420 picture of `w`×`h` (both even).
pub fn i420_len(w: u32, h: u32) -> usize {
    let n = w as usize * h as usize;
    n + n / 2
}

/// The two entry points of [`KERNEL`], compiled for one device.
pub struct OverlayKernels {
    scale: CudaFunction,
    draw: CudaFunction,
}

impl OverlayKernels {
    /// Compiles [`KERNEL`] for `ctx`'s device (NVRTC at run time) and loads its entry points.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let module = crate::gpu::compile(ctx, KERNEL)?;
        let load = |name: &str| module.load_function(name).map_err(GpuError::Driver);
        Ok(Self {
            scale: load("scale_420")?,
            draw: load("draw_full")?,
        })
    }

    /// Queues on `stream` the scaling of `src` into `pic`, an I420 `w`×`h` picture (even sizes,
    /// `pic` at least [`i420_len`] bytes). Checked first: the sizes, the buffer, and that the
    /// frame's reach fits the kernel's 32-bit strides.
    pub fn scale(
        &self,
        stream: &CudaStream,
        src: &DevicePlanes<'_>,
        pic: &mut CudaSlice<u8>,
        w: u32,
        h: u32,
    ) -> Result<(), GpuError> {
        check_picture(pic.len(), w, h)?;
        let (y, u, v) = (src.y, src.u, src.v);
        let (sw, sh, ys, uvs, step) = (
            src.width,
            src.height,
            src.y_stride,
            src.uv_stride,
            src.uv_step,
        );
        let fits = |n: usize| n <= i32::MAX as usize;
        if !(fits(sw) && fits(sh) && fits(ys) && fits(uvs) && fits(step)) || sw == 0 || sh == 0 {
            return Err(LaunchError::Unindexable {
                size: (sw, sh),
                strides: (ys, uvs),
            }
            .into());
        }
        let (sw, sh, ys, uvs, step) = (sw as i32, sh as i32, ys as i32, uvs as i32, step as i32);
        let (dw, dh) = (w as i32, h as i32);
        let mut b = stream.launch_builder(&self.scale);
        b.arg(&y).arg(&u).arg(&v);
        b.arg(&ys).arg(&uvs).arg(&step).arg(&sw).arg(&sh);
        b.arg(pic).arg(&dw).arg(&dh);
        // SAFETY: the arguments match `scale_420`'s signature in order and type (three plane
        // addresses as 64-bit integers, eight i32 with the output pointer between). The planes
        // are device memory reaching as far as the kernel reads (`DevicePlanes`' invariant:
        // the kernel clamps its samples to the frame, as the preprocessing kernel does) and
        // within i32 strides (checked above); `pic` holds the w×h I420 picture it writes
        // (checked above). All of it is borrowed for this call and stays allocated until the
        // stream has run the kernel (the caller synchronises before releasing the frame).
        unsafe { b.launch(grid(w, h)) }?;
        Ok(())
    }

    /// Queues on `stream`: `pic` (I420 `w`×`h`, limited range) with the first `n` primitives
    /// of `prims` drawn over it, into `out`, turned into full range if `full`. Checked first:
    /// sizes and buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn draw(
        &self,
        stream: &CudaStream,
        pic: &CudaSlice<u8>,
        out: &mut CudaSlice<u8>,
        w: u32,
        h: u32,
        prims: &CudaSlice<DevPrim>,
        n: usize,
        full: bool,
    ) -> Result<(), GpuError> {
        check_picture(pic.len(), w, h)?;
        check_picture(out.len(), w, h)?;
        if n > prims.len() {
            return Err(LaunchError::Prims {
                n,
                len: prims.len(),
            }
            .into());
        }
        let (dw, dh, n, full) = (w as i32, h as i32, n as i32, i32::from(full));
        let mut b = stream.launch_builder(&self.draw);
        b.arg(pic)
            .arg(out)
            .arg(&dw)
            .arg(&dh)
            .arg(prims)
            .arg(&n)
            .arg(&full);
        // SAFETY: the arguments match `draw_full`'s signature in order and type (two byte
        // pointers, i32, i32, the primitives' pointer, i32, i32); `pic` and `out` hold w×h I420
        // pictures and `prims` at least `n` primitives in the kernel's layout (`DevPrim`), all
        // checked above and borrowed for this call (cudarc orders their later use on the
        // stream).
        unsafe { b.launch(grid(w, h)) }?;
        Ok(())
    }
}

fn grid(w: u32, h: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(32), h.div_ceil(8), 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

/// That a `len`-byte buffer holds an I420 `w`×`h` picture the kernels can index.
fn check_picture(len: usize, w: u32, h: u32) -> Result<(), LaunchError> {
    let even = w >= 2 && h >= 2 && w.is_multiple_of(2) && h.is_multiple_of(2);
    let needed = i420_len(w, h);
    if !even || needed > i32::MAX as usize || len < needed {
        return Err(LaunchError::Picture { size: (w, h), len });
    }
    Ok(())
}

/// `list` in the kernel's form into `out` (cleared first; at most [`MAX_PRIMS`]).
pub fn device_prims(list: &DrawList, out: &mut Vec<DevPrim>) {
    out.clear();
    out.extend(list.prims().iter().take(MAX_PRIMS).map(DevPrim::from));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::overlay::Yuv;

    #[test]
    fn the_prim_struct_is_the_kernels() {
        assert_eq!(std::mem::size_of::<DevPrim>(), 40);
        assert_eq!(std::mem::align_of::<DevPrim>(), 8);
        assert_eq!(std::mem::offset_of!(DevPrim, rows), 32);
        assert!(KERNEL.contains(
            "struct Prim { int kind, a, b, c, d, e; unsigned int colour, pad; unsigned long long rows; };"
        ));
    }

    #[test]
    fn prims_carry_their_fields_and_colour() {
        let colour = Yuv { y: 1, u: 2, v: 3 };
        let g = DevPrim::from(&Prim::Glyph {
            x: 5,
            y: 6,
            scale: 2,
            rows: [1, 2, 3, 4, 5, 6, 7, 0x80],
            colour,
        });
        assert_eq!((g.kind, g.a, g.b, g.c), (3, 5, 6, 2));
        assert_eq!(g.colour, 0x03_02_01);
        // Row i is byte i; bit j of it is column j, as the kernel reads `rows >> (8i + j)`.
        assert_eq!((g.rows >> (7 * 8 + 7)) & 1, 1);
        assert_eq!((g.rows >> 8) & 0xff, 2);
        let s = DevPrim::from(&Prim::Seg {
            ax: -3,
            ay: 4,
            bx: 9,
            by: 10,
            r2: 2,
            colour,
        });
        assert_eq!((s.kind, s.a, s.b, s.c, s.d, s.e), (2, -3, 4, 9, 10, 2));
    }

    #[test]
    fn pictures_are_checked_before_a_launch() {
        assert!(check_picture(i420_len(64, 48), 64, 48).is_ok());
        assert!(check_picture(i420_len(64, 48) - 1, 64, 48).is_err());
        assert!(check_picture(1000, 63, 48).is_err());
        assert!(check_picture(1000, 0, 0).is_err());
    }
}
