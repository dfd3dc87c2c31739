//! Frame → network input, on the CPU: YUV 4:2:0 (I420 or NV12) → letterboxed, normalised,
//! planar BGR or RGB f32, in one pass over the output (colour conversion, bilinear resize,
//! padding and normalisation fused). This is the reference the GPU kernel is tested against.

/// A borrowed 4:2:0 frame. For I420 `u` and `v` are separate planes with `uv_step` 1; for NV12
/// `u` starts at the interleaved plane and `v` one byte later, with `uv_step` 2.
#[derive(Debug, Clone, Copy)]
pub struct YuvView<'a> {
    pub width: usize,
    pub height: usize,
    pub y: &'a [u8],
    pub y_stride: usize,
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub uv_stride: usize,
    pub uv_step: usize,
}

impl<'a> YuvView<'a> {
    /// The `w`×`h` part of the frame at (`x`, `y`), a view of the same memory; `x` and `y` are
    /// rounded down to even (4:2:0 chroma covers 2×2 pixels) and the size cut to the frame.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> YuvView<'a> {
        let x = (x & !1).min(self.width.saturating_sub(2) & !1);
        let y = (y & !1).min(self.height.saturating_sub(2) & !1);
        let w = w.clamp(1, self.width - x);
        let h = h.clamp(1, self.height - y);
        let c = (y / 2) * self.uv_stride + (x / 2) * self.uv_step;
        YuvView {
            width: w,
            height: h,
            y: &self.y[y * self.y_stride + x..],
            y_stride: self.y_stride,
            u: &self.u[c..],
            v: &self.v[c..],
            uv_stride: self.uv_stride,
            uv_step: self.uv_step,
        }
    }
}

/// How a `src_w`×`src_h` frame sits in the `in_w`×`in_h` network input: scaled by `scale` to
/// `new_w`×`new_h`, offset by (`pad_x`, `pad_y`) pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    pub in_w: usize,
    pub in_h: usize,
    pub src_w: usize,
    pub src_h: usize,
    pub scale: f32,
    pub new_w: usize,
    pub new_h: usize,
    pub pad_x: usize,
    pub pad_y: usize,
}

impl Letterbox {
    pub fn new(src_w: usize, src_h: usize, in_w: usize, in_h: usize) -> Self {
        let scale = (in_w as f32 / src_w as f32).min(in_h as f32 / src_h as f32);
        let new_w = ((src_w as f32 * scale).round() as usize).clamp(1, in_w);
        let new_h = ((src_h as f32 * scale).round() as usize).clamp(1, in_h);
        Self {
            in_w,
            in_h,
            src_w,
            src_h,
            scale,
            new_w,
            new_h,
            pad_x: (in_w - new_w) / 2,
            pad_y: (in_h - new_h) / 2,
        }
    }

    /// Network-input pixel coordinates → normalised source coordinates (clamped to 0..=1).
    pub fn to_source(&self, x: f32, y: f32) -> (f32, f32) {
        let sx = (x - self.pad_x as f32) / self.new_w as f32;
        let sy = (y - self.pad_y as f32) / self.new_h as f32;
        (sx.clamp(0.0, 1.0), sy.clamp(0.0, 1.0))
    }
}

/// Channel order, size and normalisation of the network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSpec {
    /// Side of a square input, or the long side of a rectangular one.
    pub size: usize,
    /// The model takes any height and width that are multiples of `align`: the frame is scaled
    /// to `size` on its long side and the short side is padded only up to the next multiple of
    /// `align` (no square padding to compute on). 0 = square `size`×`size` input.
    pub align: usize,
    /// true: planes B, G, R; false: R, G, B.
    pub bgr: bool,
    /// Per output plane, in plane order.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Raw 0..255 value of the padding.
    pub pad_value: f32,
}

impl InputSpec {
    /// Network input width and height for a `src_w`×`src_h` frame.
    pub fn input_dims(&self, src_w: usize, src_h: usize) -> (usize, usize) {
        if self.align == 0 {
            return (self.size, self.size);
        }
        let scale = self.size as f32 / src_w.max(src_h) as f32;
        let fit = |v: usize| {
            let scaled = (v as f32 * scale).round() as usize;
            scaled.div_ceil(self.align).max(1) * self.align
        };
        (fit(src_w).min(self.size), fit(src_h).min(self.size))
    }
}

#[derive(Clone, Copy, Default)]
struct Tap {
    i0: u32,
    i1: u32,
    w1: f32,
    c: u32,
}

/// Precomputed sampling tables for one source size: built when the source size changes, never
/// per frame.
pub struct Preprocessor {
    spec: InputSpec,
    lb: Option<Letterbox>,
    xs: Vec<Tap>,
    ys: Vec<Tap>,
}

impl Preprocessor {
    pub fn new(spec: InputSpec) -> Self {
        Self {
            spec,
            lb: None,
            xs: Vec::new(),
            ys: Vec::new(),
        }
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Another input side (`input_size = "native"`): the sampling tables are rebuilt on the
    /// next frame only if it changed.
    pub fn set_size(&mut self, size: usize) {
        if size != self.spec.size {
            self.spec.size = size;
            self.lb = None;
        }
    }

    /// Capacity an input buffer needs for any frame (3 × size × size).
    pub fn input_len(&self) -> usize {
        3 * self.spec.size * self.spec.size
    }

    fn taps(dst: usize, src: usize, scale_src_per_dst: f32) -> Vec<Tap> {
        (0..dst)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale_src_per_dst - 0.5).clamp(0.0, (src - 1) as f32);
                let i0 = s.floor() as usize;
                let i1 = (i0 + 1).min(src - 1);
                let c = ((d as f32 + 0.5) * scale_src_per_dst)
                    .floor()
                    .clamp(0.0, (src - 1) as f32) as usize
                    / 2;
                Tap {
                    i0: i0 as u32,
                    i1: i1 as u32,
                    w1: s - i0 as f32,
                    c: c as u32,
                }
            })
            .collect()
    }

    /// The letterbox for a frame size, rebuilding the sampling tables when it changed.
    pub fn prepare(&mut self, w: usize, h: usize) -> Letterbox {
        match self.lb {
            Some(lb) if lb.src_w == w && lb.src_h == h => lb,
            _ => {
                let (in_w, in_h) = self.spec.input_dims(w, h);
                let lb = Letterbox::new(w, h, in_w, in_h);
                self.xs = Self::taps(lb.new_w, w, w as f32 / lb.new_w as f32);
                self.ys = Self::taps(lb.new_h, h, h as f32 / lb.new_h as f32);
                self.lb = Some(lb);
                lb
            }
        }
    }

    /// Writes the network input for `frame` into the start of `out` (3 × in_h × in_w values,
    /// NCHW) and returns the letterbox used: its `in_w`/`in_h` are the input's dimensions and it
    /// maps detections back to the frame.
    pub fn run(&mut self, frame: &YuvView<'_>, out: &mut [f32]) -> Letterbox {
        let lb = self.prepare(frame.width, frame.height);
        let s = self.spec;
        let (w, h) = (lb.in_w, lb.in_h);
        let plane = w * h;
        assert!(out.len() >= 3 * plane, "input buffer too small");
        let (p0, rest) = out.split_at_mut(plane);
        let (p1, rest) = rest.split_at_mut(plane);
        let p2 = &mut rest[..plane];
        let inv = [1.0 / s.std[0], 1.0 / s.std[1], 1.0 / s.std[2]];
        let pad = [
            (s.pad_value - s.mean[0]) * inv[0],
            (s.pad_value - s.mean[1]) * inv[1],
            (s.pad_value - s.mean[2]) * inv[2],
        ];
        for row in 0..h {
            let o = row * w;
            let inside_row = row >= lb.pad_y && row < lb.pad_y + lb.new_h;
            if !inside_row {
                p0[o..o + w].fill(pad[0]);
                p1[o..o + w].fill(pad[1]);
                p2[o..o + w].fill(pad[2]);
                continue;
            }
            let ty = self.ys[row - lb.pad_y];
            let y0 = &frame.y[ty.i0 as usize * frame.y_stride..];
            let y1 = &frame.y[ty.i1 as usize * frame.y_stride..];
            let crow = ty.c as usize * frame.uv_stride;
            for col in 0..w {
                let i = o + col;
                if col < lb.pad_x || col >= lb.pad_x + lb.new_w {
                    p0[i] = pad[0];
                    p1[i] = pad[1];
                    p2[i] = pad[2];
                    continue;
                }
                let tx = self.xs[col - lb.pad_x];
                let (a, b) = (tx.i0 as usize, tx.i1 as usize);
                let top = y0[a] as f32 + (y0[b] as f32 - y0[a] as f32) * tx.w1;
                let bot = y1[a] as f32 + (y1[b] as f32 - y1[a] as f32) * tx.w1;
                let yv = top + (bot - top) * ty.w1;
                let ci = crow + tx.c as usize * frame.uv_step;
                let (r, g, b) = yuv_to_rgb(yv, frame.u[ci] as f32, frame.v[ci] as f32);
                let (c0, c2) = if s.bgr { (b, r) } else { (r, b) };
                p0[i] = (c0 - s.mean[0]) * inv[0];
                p1[i] = (g - s.mean[1]) * inv[1];
                p2[i] = (c2 - s.mean[2]) * inv[2];
            }
        }
        lb
    }
}

/// BT.601 limited-range YUV → RGB, each 0..=255.
#[inline]
pub fn yuv_to_rgb(y: f32, u: f32, v: f32) -> (f32, f32, f32) {
    let c = 1.164_383 * (y - 16.0);
    let d = u - 128.0;
    let e = v - 128.0;
    (
        (c + 1.596_027 * e).clamp(0.0, 255.0),
        (c - 0.391_762 * d - 0.812_968 * e).clamp(0.0, 255.0),
        (c + 2.017_232 * d).clamp(0.0, 255.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: usize) -> InputSpec {
        InputSpec {
            size,
            align: 0,
            bgr: true,
            mean: [0.0; 3],
            std: [1.0; 3],
            pad_value: 114.0,
        }
    }

    /// The U and V planes as NV12's one interleaved plane.
    fn interleave(u: &[u8], v: &[u8]) -> Vec<u8> {
        u.iter().zip(v).flat_map(|(a, b)| [*a, *b]).collect()
    }

    /// One `w`×`h` picture as I420 (planes `y`, `u`, `v`) and as NV12 (`y`, `uv`).
    fn both<'a>(
        w: usize,
        h: usize,
        y: &'a [u8],
        u: &'a [u8],
        v: &'a [u8],
        uv: &'a [u8],
    ) -> (YuvView<'a>, YuvView<'a>) {
        let i420 = YuvView {
            width: w,
            height: h,
            y,
            y_stride: w,
            u,
            v,
            uv_stride: w / 2,
            uv_step: 1,
        };
        let nv12 = YuvView {
            u: uv,
            v: &uv[1..],
            uv_stride: w,
            uv_step: 2,
            ..i420
        };
        (i420, nv12)
    }

    #[test]
    fn a_crop_reads_the_same_pixels_as_the_frame() {
        // 8×6 I420 with distinct values everywhere; and the same as NV12.
        let (w, h) = (8usize, 6usize);
        let y: Vec<u8> = (0..w * h).map(|i| i as u8).collect();
        let u: Vec<u8> = (0..(w / 2) * (h / 2)).map(|i| 100 + i as u8).collect();
        let v: Vec<u8> = (0..(w / 2) * (h / 2)).map(|i| 200 + i as u8).collect();
        let uv = interleave(&u, &v);
        let (i420, nv12) = both(w, h, &y, &u, &v, &uv);
        for f in [i420, nv12] {
            let c = f.crop(3, 2, 4, 10); // x rounded down to 2, height cut to the frame
            assert_eq!((c.width, c.height), (4, 4));
            for row in 0..c.height {
                for col in 0..c.width {
                    assert_eq!(c.y[row * c.y_stride + col], f.y[(row + 2) * w + col + 2]);
                    let ci = (row / 2) * c.uv_stride + (col / 2) * c.uv_step;
                    let fi = ((row + 2) / 2) * f.uv_stride + ((col + 2) / 2) * f.uv_step;
                    assert_eq!((c.u[ci], c.v[ci]), (f.u[fi], f.v[fi]));
                }
            }
        }
    }

    #[test]
    fn letterbox_of_a_wide_frame_pads_top_and_bottom() {
        let lb = Letterbox::new(768, 576, 416, 416);
        assert_eq!((lb.new_w, lb.new_h, lb.pad_x, lb.pad_y), (416, 312, 0, 52));
        let (x, y) = lb.to_source(208.0, 52.0 + 156.0);
        assert!((x - 0.5).abs() < 1e-4 && (y - 0.5).abs() < 1e-4, "{x} {y}");
    }

    #[test]
    fn rectangular_input_pads_only_to_the_alignment() {
        let s = InputSpec {
            align: 32,
            ..spec(416)
        };
        // 4:3 → 416×312, padded to 416×320; 16:9 1080p → 416×234 → 416×256; portrait flips.
        assert_eq!(s.input_dims(768, 576), (416, 320));
        assert_eq!(s.input_dims(1920, 1080), (416, 256));
        assert_eq!(s.input_dims(576, 768), (320, 416));
        assert_eq!(spec(416).input_dims(768, 576), (416, 416));
        let lb = Letterbox::new(768, 576, 416, 320);
        assert_eq!((lb.new_w, lb.new_h, lb.pad_x, lb.pad_y), (416, 312, 0, 4));
        let (x, y) = lb.to_source(416.0, 316.0);
        assert!((x - 1.0).abs() < 1e-6 && (y - 1.0).abs() < 1e-6, "{x} {y}");
    }

    #[test]
    fn uniform_grey_frame_gives_grey_input_and_grey_padding() {
        let (w, h) = (64, 32);
        let y = vec![126u8; w * h];
        let uv = vec![128u8; w * h / 4];
        let f = YuvView {
            width: w,
            height: h,
            y: &y,
            y_stride: w,
            u: &uv,
            v: &uv,
            uv_stride: w / 2,
            uv_step: 1,
        };
        let mut p = Preprocessor::new(spec(32));
        let mut out = vec![0.0; p.input_len()];
        let lb = p.run(&f, &mut out);
        assert_eq!((lb.pad_y, lb.new_h), (8, 16));
        // Y=126 → RGB 128.08 (BT.601 limited range), padding 114.
        let centre = 16 * 32 + 16;
        assert!((out[centre] - 128.08).abs() < 0.1, "{}", out[centre]);
        assert_eq!(out[0], 114.0);
        assert_eq!(out[32 * 32 + 31 * 32], 114.0);
    }

    #[test]
    fn nv12_and_i420_of_the_same_picture_agree() {
        let (w, h) = (8, 4);
        let y: Vec<u8> = (0..w * h).map(|i| (i * 7 % 220) as u8 + 16).collect();
        let u: Vec<u8> = (0..w * h / 4).map(|i| 100 + i as u8 * 5).collect();
        let v: Vec<u8> = (0..w * h / 4).map(|i| 160 - i as u8 * 3).collect();
        let uv = interleave(&u, &v);
        let (i420, nv12) = both(w, h, &y, &u, &v, &uv);
        let mut p = Preprocessor::new(spec(16));
        let (mut a, mut b) = (vec![0.0; p.input_len()], vec![0.0; p.input_len()]);
        p.run(&i420, &mut a);
        p.run(&nv12, &mut b);
        assert_eq!(a, b);
        // A red-ish chroma sample must give R > B in the BGR planes (plane 2 = R, plane 0 = B).
        let i = 8 * 16 + 1;
        assert!(a[2 * 256 + i] != a[i]);
    }
}
