//! What is drawn on a picture of a camera: a [`DrawList`] of primitives in output pixels, built
//! once per picture from what the analysis knows ([`Scene`]: tracks with class, score and id,
//! the event's tracks highlighted, zones, lines with their direction arrow and counts, camera
//! name and time), and the CPU renderer that draws it on a [`Picture420`] (YUV 4:2:0, planar).
//!
//! The GPU renderer of the data plane draws the same list with the same arithmetic: every
//! coverage test ([`Prim::covers`]) is integer-only, so both backends colour exactly the same
//! pixels; chroma sample `(cx, cy)` takes the colour of luma pixel `(2cx, 2cy)`. Later
//! primitives are drawn over earlier ones. Pure host code: no I/O, no allocation per picture
//! (the list and the picture are allocated once and reused).

use crate::analytics::rules::{RuleEngine, RuleShape};
use crate::analytics::tracker::TrackView;
use crate::model::preprocess::YuvView;
use std::fmt::Write as _;

/// Most primitives in one list; primitives past it are dropped and counted
/// ([`DrawList::overflow`]). The header goes first, then the rules, then the tracks (every
/// track of a full tracker fits while ids have at most 12 digits; rules with hundreds of
/// vertices may crowd tracks out).
pub const MAX_PRIMS: usize = 4096;

/// A colour as BT.601 limited-range Y, Cb, Cr (what decoders hand out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv {
    pub y: u8,
    pub u: u8,
    pub v: u8,
}

impl Yuv {
    /// From 8-bit sRGB-ish RGB, BT.601 limited range, rounded.
    pub const fn rgb(r: u8, g: u8, b: u8) -> Self {
        let (r, g, b) = (r as i32, g as i32, b as i32);
        let y = (66 * r + 129 * g + 25 * b + 128) >> 8;
        let u = (-38 * r - 74 * g + 112 * b + 128) >> 8;
        let v = (112 * r - 94 * g - 18 * b + 128) >> 8;
        Self {
            y: (y + 16) as u8,
            u: (u + 128) as u8,
            v: (v + 128) as u8,
        }
    }
}

/// The overlay's colours.
pub mod colours {
    use super::Yuv;
    /// A tracked object.
    pub const TRACK: Yuv = Yuv::rgb(0, 230, 0);
    /// A track that fired the event this picture is for.
    pub const HIGHLIGHT: Yuv = Yuv::rgb(255, 0, 0);
    pub const ZONE: Yuv = Yuv::rgb(255, 220, 0);
    pub const LINE: Yuv = Yuv::rgb(0, 200, 255);
    pub const TEXT: Yuv = Yuv::rgb(255, 255, 255);
    pub const LABEL_BG: Yuv = Yuv::rgb(0, 0, 0);
}

/// One drawing primitive in output pixels (integer: see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    /// The outline of `x0..=x1` × `y0..=y1`, `t` pixels thick, inwards.
    Rect {
        x0: i32,
        y0: i32,
        x1: i32,
        y1: i32,
        t: i32,
        colour: Yuv,
    },
    /// `x0..=x1` × `y0..=y1` filled.
    Fill {
        x0: i32,
        y0: i32,
        x1: i32,
        y1: i32,
        colour: Yuv,
    },
    /// A segment between two points given in half pixels (pixel centre of `(x, y)` is
    /// `(2x + 1, 2y + 1)`), covering pixels whose centre is within `r2` half pixels of it.
    Seg {
        ax: i32,
        ay: i32,
        bx: i32,
        by: i32,
        r2: i32,
        colour: Yuv,
    },
    /// An 8×8 glyph (row `i` is `rows[i]`, bit `j` = column `j`) at `(x, y)`, each bit a
    /// `scale`×`scale` square.
    Glyph {
        x: i32,
        y: i32,
        scale: i32,
        rows: [u8; 8],
        colour: Yuv,
    },
}

impl Prim {
    pub fn colour(&self) -> Yuv {
        match *self {
            Prim::Rect { colour, .. }
            | Prim::Fill { colour, .. }
            | Prim::Seg { colour, .. }
            | Prim::Glyph { colour, .. } => colour,
        }
    }

    /// The pixels it may cover, inclusive: `(x0, y0, x1, y1)` (not clipped).
    pub fn bounds(&self) -> (i32, i32, i32, i32) {
        match *self {
            Prim::Rect { x0, y0, x1, y1, .. } | Prim::Fill { x0, y0, x1, y1, .. } => {
                (x0, y0, x1, y1)
            }
            Prim::Seg {
                ax, ay, bx, by, r2, ..
            } => {
                let r = r2;
                (
                    (ax.min(bx) - r - 1).div_euclid(2),
                    (ay.min(by) - r - 1).div_euclid(2),
                    (ax.max(bx) + r).div_euclid(2),
                    (ay.max(by) + r).div_euclid(2),
                )
            }
            Prim::Glyph { x, y, scale, .. } => (x, y, x + 8 * scale - 1, y + 8 * scale - 1),
        }
    }

    /// Whether it covers pixel `(x, y)`: integer arithmetic only (the GPU kernel has the same).
    pub fn covers(&self, x: i32, y: i32) -> bool {
        match *self {
            Prim::Rect {
                x0, y0, x1, y1, t, ..
            } => {
                let outer = x >= x0 && x <= x1 && y >= y0 && y <= y1;
                let inner = x >= x0 + t && x <= x1 - t && y >= y0 + t && y <= y1 - t;
                outer && !inner
            }
            Prim::Fill { x0, y0, x1, y1, .. } => x >= x0 && x <= x1 && y >= y0 && y <= y1,
            Prim::Seg {
                ax, ay, bx, by, r2, ..
            } => {
                let (px, py) = (2 * x as i64 + 1, 2 * y as i64 + 1);
                let (ax, ay, bx, by) = (ax as i64, ay as i64, bx as i64, by as i64);
                let (dx, dy) = (bx - ax, by - ay);
                let (qx, qy) = (px - ax, py - ay);
                let len2 = dx * dx + dy * dy;
                let dot = qx * dx + qy * dy;
                let r2 = r2 as i64 * r2 as i64;
                if dot <= 0 || len2 == 0 {
                    qx * qx + qy * qy <= r2
                } else if dot >= len2 {
                    let (ex, ey) = (px - bx, py - by);
                    ex * ex + ey * ey <= r2
                } else {
                    let c = qx * dy - qy * dx;
                    // dist² = c² / len2 <= r2, in i128 (c² may exceed i64 for long segments).
                    (c as i128) * (c as i128) <= (r2 as i128) * (len2 as i128)
                }
            }
            Prim::Glyph {
                x: gx,
                y: gy,
                scale,
                rows,
                ..
            } => {
                if x < gx || y < gy || scale <= 0 {
                    return false;
                }
                let (col, row) = ((x - gx) / scale, (y - gy) / scale);
                col < 8 && row < 8 && (rows[row as usize] >> col) & 1 == 1
            }
        }
    }
}

/// The primitives of one picture, in drawing order.
#[derive(Debug, Clone, Default)]
pub struct DrawList {
    prims: heapless::Vec<Prim, MAX_PRIMS>,
    overflow: u32,
}

impl DrawList {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn clear(&mut self) {
        self.prims.clear();
        self.overflow = 0;
    }
    pub fn prims(&self) -> &[Prim] {
        &self.prims
    }
    /// Primitives dropped because the list was full.
    pub fn overflow(&self) -> u32 {
        self.overflow
    }
    pub fn push(&mut self, p: Prim) {
        if self.prims.push(p).is_err() {
            self.overflow += 1;
        }
    }

    /// `text` at `(x, y)` in white on a black box, `scale`× the 8×8 font; characters the font
    /// lacks are drawn as `?`. Returns the box's right edge.
    pub fn text(&mut self, x: i32, y: i32, scale: i32, text: &str) -> i32 {
        let n = text.chars().count() as i32;
        let pad = scale;
        let (w, h) = (n * 8 * scale + 2 * pad, 8 * scale + 2 * pad);
        self.push(Prim::Fill {
            x0: x,
            y0: y,
            x1: x + w - 1,
            y1: y + h - 1,
            colour: colours::LABEL_BG,
        });
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c);
            if rows == [0; 8] {
                continue; // a space
            }
            self.push(Prim::Glyph {
                x: x + pad + i as i32 * 8 * scale,
                y: y + pad,
                scale,
                rows,
                colour: colours::TEXT,
            });
        }
        x + w
    }

    /// A segment between two points in pixels (f32, rounded to half pixels), `thickness` wide.
    /// Coordinates are clamped to ±2^20 half pixels (far outside any picture), so the coverage
    /// test's products stay within 64 bits on both renderers.
    pub fn segment(&mut self, a: [f32; 2], b: [f32; 2], thickness: i32, colour: Yuv) {
        const LIMIT: f32 = (1 << 20) as f32;
        let h = |v: f32| (v * 2.0).round().clamp(-LIMIT, LIMIT) as i32;
        self.push(Prim::Seg {
            ax: h(a[0]),
            ay: h(a[1]),
            bx: h(b[0]),
            by: h(b[1]),
            r2: thickness.max(1),
            colour,
        });
    }

    /// The whole overlay of `scene` for a `w`×`h` picture: header (camera, time), zones with
    /// the count inside, lines with their "in" arrow and counts, then every track's box and
    /// label (highlighted ones last, on top). Clears the list first. Text is 1× the font up to
    /// 360 lines, 2× to 720, and so on; lines are at least 2 pixels wide, so every one of them
    /// has chroma samples.
    pub fn build(&mut self, scene: &Scene<'_>, w: u32, h: u32) {
        self.clear();
        let (wf, hf) = (w as f32, h as f32);
        let px = |p: [f32; 2]| [p[0] * wf, p[1] * hf];
        let s = ((h as i32) / 360).max(1);
        let t = s.max(2);
        let mut label: heapless::String<96> = heapless::String::new();
        let _ = write!(label, "{} {}", clip(scene.camera, 40), scene.clock);
        self.text(0, 0, s, &label);
        for (name, shape) in scene.rules.into_iter().flat_map(|r| r.shapes()) {
            label.clear();
            match shape {
                RuleShape::Zone { polygon, inside } => {
                    for (i, &a) in polygon.iter().enumerate() {
                        let b = polygon[(i + 1) % polygon.len()];
                        self.segment(px(a), px(b), t, colours::ZONE);
                    }
                    let _ = write!(label, "{} {inside}", clip(name, 24));
                    if let Some(&p0) = polygon.first() {
                        let p = px(p0);
                        self.text(p[0] as i32, p[1] as i32, s, &label);
                    }
                }
                RuleShape::Line {
                    from,
                    to,
                    ins,
                    outs,
                } => {
                    let (a, b) = (px(from), px(to));
                    self.segment(a, b, t, colours::LINE);
                    // The arrow points to the "in" side: the right-hand side walking from
                    // `from` to `to` (image y down), i.e. along (-dy, dx).
                    let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
                    let len = (dx * dx + dy * dy).sqrt().max(1e-3);
                    let (nx, ny) = (-dy / len, dx / len);
                    let m = [(a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0];
                    let l = 12.0 * s as f32;
                    let tip = [m[0] + nx * l, m[1] + ny * l];
                    self.segment(m, tip, t, colours::LINE);
                    let back = [tip[0] - nx * l * 0.5, tip[1] - ny * l * 0.5];
                    let (ux, uy) = (dx / len * l * 0.4, dy / len * l * 0.4);
                    self.segment(tip, [back[0] + ux, back[1] + uy], t, colours::LINE);
                    self.segment(tip, [back[0] - ux, back[1] - uy], t, colours::LINE);
                    let _ = write!(label, "{} in {ins} out {outs}", clip(name, 24));
                    self.text(m[0] as i32 + 4 * s, m[1] as i32 + 4 * s, s, &label);
                }
            }
        }
        for pass in [false, true] {
            for tv in scene.tracks {
                if scene.highlight.contains(&tv.id) != pass {
                    continue;
                }
                let colour = if pass {
                    colours::HIGHLIGHT
                } else {
                    colours::TRACK
                };
                let (x0, y0) = ((tv.bbox.x1 * wf) as i32, (tv.bbox.y1 * hf) as i32);
                let (x1, y1) = ((tv.bbox.x2 * wf) as i32, (tv.bbox.y2 * hf) as i32);
                self.push(Prim::Rect {
                    x0,
                    y0,
                    x1,
                    y1,
                    t,
                    colour,
                });
                label.clear();
                let class = crate::analytics::COCO_CLASSES
                    .get(tv.class_id as usize)
                    .copied()
                    .unwrap_or("?");
                let pct = (tv.score.clamp(0.0, 1.0) * 100.0).round() as u32;
                let _ = write!(label, "{class} {pct}% #{}", tv.id);
                let ly = (y0 - 10 * s).max(0);
                self.text(x0, ly, s, &label);
            }
        }
    }
}

/// Wall-clock time as the overlay shows it: `2026-12-06 03:01:02Z` (UTC, no allocation).
pub fn clock(t: std::time::SystemTime) -> heapless::String<32> {
    let mut s: heapless::String<32> = heapless::String::new();
    let _ = write!(s, "{}", humantime::format_rfc3339_seconds(t));
    // RFC 3339's `T` between date and time reads badly on a picture.
    let mut out = heapless::String::new();
    for c in s.chars() {
        let _ = out.push(if c == 'T' { ' ' } else { c });
    }
    out
}

/// The first `n` characters of `s`.
fn clip(s: &str, n: usize) -> &str {
    s.char_indices().nth(n).map_or(s, |(i, _)| &s[..i])
}

/// The 8×8 bitmap of `c` (public-domain font8x8 glyphs); `?` for what it lacks.
pub fn glyph(c: char) -> [u8; 8] {
    use font8x8::UnicodeFonts;
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// What the overlay shows for one picture of one camera.
pub struct Scene<'a> {
    pub camera: &'a str,
    /// Wall-clock time as shown (e.g. `2026-12-06 03:01:02Z`).
    pub clock: &'a str,
    pub tracks: &'a [TrackView],
    /// Ids of the tracks the picture is about (drawn in [`colours::HIGHLIGHT`]).
    pub highlight: &'a [u64],
    /// The camera's rules (zones, lines, counts), if any.
    pub rules: Option<&'a RuleEngine>,
}

/// A YUV 4:2:0 picture, planar (I420), even width and height, tightly packed; allocated once
/// and reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture420 {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl Picture420 {
    /// A black picture; `width` and `height` are rounded down to even (at least 2).
    pub fn new(width: u32, height: u32) -> Self {
        let (w, h) = ((width & !1).max(2), (height & !1).max(2));
        let (n, c) = ((w * h) as usize, (w * h / 4) as usize);
        Self {
            width: w,
            height: h,
            y: vec![16; n],
            u: vec![128; c],
            v: vec![128; c],
        }
    }

    /// The size a picture of a `src_w`×`src_h` frame gets at most `max_w` wide: never larger
    /// than the source, aspect kept, both even.
    pub fn fit(src_w: u32, src_h: u32, max_w: u32) -> (u32, u32) {
        let w = src_w.min(max_w).max(2);
        let h = ((src_h as u64 * w as u64 + src_w as u64 / 2) / src_w.max(1) as u64) as u32;
        (w & !1, (h & !1).max(2))
    }

    /// Resamples `src` (I420 or NV12, any size) into this picture: bilinear, 8-bit weights,
    /// integer arithmetic (the GPU's downscale kernel does the same).
    pub fn scale_from(&mut self, src: &YuvView<'_>) {
        let (w, h) = (self.width as usize, self.height as usize);
        scale_plane(
            src.y,
            src.y_stride,
            1,
            src.width,
            src.height,
            &mut self.y,
            w,
            h,
        );
        let (cw, ch) = (src.width.div_ceil(2), src.height.div_ceil(2));
        scale_plane(
            src.u,
            src.uv_stride,
            src.uv_step,
            cw,
            ch,
            &mut self.u,
            w / 2,
            h / 2,
        );
        scale_plane(
            src.v,
            src.uv_stride,
            src.uv_step,
            cw,
            ch,
            &mut self.v,
            w / 2,
            h / 2,
        );
    }

    /// Draws `list` on this picture (the CPU renderer).
    pub fn draw(&mut self, list: &DrawList) {
        let (w, h) = (self.width as i32, self.height as i32);
        for p in list.prims() {
            let (bx0, by0, bx1, by1) = p.bounds();
            let (x0, y0) = (bx0.max(0), by0.max(0));
            let (x1, y1) = (bx1.min(w - 1), by1.min(h - 1));
            let c = p.colour();
            for y in y0..=y1 {
                for x in x0..=x1 {
                    if !p.covers(x, y) {
                        continue;
                    }
                    self.y[(y * w + x) as usize] = c.y;
                    if x % 2 == 0 && y % 2 == 0 {
                        let i = ((y / 2) * (w / 2) + x / 2) as usize;
                        self.u[i] = c.u;
                        self.v[i] = c.v;
                    }
                }
            }
        }
    }
}

/// One plane, bilinear: output pixel `x` samples source position `(x + 0.5) * sw / dw - 0.5`
/// in 16.16 fixed point, weights rounded to 8 bits. The column samples are computed once per
/// plane (one small allocation per picture, not per pixel).
#[allow(clippy::too_many_arguments)]
fn scale_plane(
    src: &[u8],
    stride: usize,
    step: usize,
    sw: usize,
    sh: usize,
    dst: &mut [u8],
    dw: usize,
    dh: usize,
) {
    if sw == 0 || sh == 0 {
        return;
    }
    let cols: Vec<(usize, usize, u32)> = (0..dw)
        .map(|ox| {
            let (x0, x1, fx) = sample(ox, sw, dw);
            (x0 * step, x1 * step, fx)
        })
        .collect();
    for (oy, out) in dst.chunks_exact_mut(dw).take(dh).enumerate() {
        let (y0, y1, fy) = sample(oy, sh, dh);
        let r0 = src.get(y0 * stride..).unwrap_or(&[]);
        let r1 = src.get(y1 * stride..).unwrap_or(&[]);
        for (o, &(a, b, fx)) in out.iter_mut().zip(&cols) {
            let at = |r: &[u8], i: usize| r.get(i).copied().unwrap_or(0) as u32;
            let top = at(r0, a) * (256 - fx) + at(r0, b) * fx;
            let bot = at(r1, a) * (256 - fx) + at(r1, b) * fx;
            *o = ((top * (256 - fy) + bot * fy + (1 << 15)) >> 16) as u8;
        }
    }
}

/// Source indices and the 8-bit weight of the second for output index `o` of `dn` over `sn`.
pub fn sample(o: usize, sn: usize, dn: usize) -> (usize, usize, u32) {
    let pos = ((2 * o as i64 + 1) * sn as i64 * 65536 / (2 * dn as i64) - 32768).max(0);
    let i0 = ((pos >> 16) as usize).min(sn - 1);
    let i1 = (i0 + 1).min(sn - 1);
    let f = (((pos & 0xffff) + 128) >> 8).min(255) as u32;
    (i0, i1, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::BBox;
    use crate::config::{LineConfig, ZoneConfig};

    fn track(id: u64, b: [f32; 4]) -> TrackView {
        TrackView {
            id,
            bbox: BBox::new(b[0], b[1], b[2], b[3]),
            score: 0.87,
            class_id: 0,
            hits: 3,
            mean_score: 0.87,
        }
    }

    #[test]
    fn colours_convert_like_bt601_limited_range() {
        assert_eq!(
            Yuv::rgb(0, 0, 0),
            Yuv {
                y: 16,
                u: 128,
                v: 128
            }
        );
        assert_eq!(
            Yuv::rgb(255, 255, 255),
            Yuv {
                y: 235,
                u: 128,
                v: 128
            }
        );
        let red = Yuv::rgb(255, 0, 0);
        assert_eq!((red.y, red.u, red.v), (82, 90, 240));
    }

    #[test]
    fn the_clock_reads_as_utc_date_and_time() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_526_062);
        assert_eq!(clock(t).as_str(), "2026-12-06 03:01:02Z");
    }

    #[test]
    fn a_rect_covers_its_border_and_not_its_inside() {
        let r = Prim::Rect {
            x0: 10,
            y0: 10,
            x1: 20,
            y1: 30,
            t: 2,
            colour: colours::TRACK,
        };
        assert!(r.covers(10, 10) && r.covers(11, 20) && r.covers(20, 30) && r.covers(15, 29));
        assert!(!r.covers(12, 12) && !r.covers(15, 20) && !r.covers(9, 10) && !r.covers(21, 30));
    }

    #[test]
    fn a_segment_covers_pixels_near_it_only() {
        let mut l = DrawList::new();
        l.segment([0.0, 10.0], [100.0, 10.0], 2, colours::LINE);
        let s = l.prims()[0];
        // Centre of row 9 is y = 9.5, 0.5 from the line (radius 1): covered; row 11 is 1.5 away.
        assert!(s.covers(50, 9) && s.covers(50, 10) && !s.covers(50, 11) && !s.covers(50, 8));
        assert!(!s.covers(102, 10), "past the end by more than the radius");
        let (x0, y0, x1, y1) = s.bounds();
        for y in y0 - 3..=y1 + 3 {
            for x in x0 - 3..=x1 + 3 {
                if s.covers(x, y) {
                    assert!(
                        x >= x0 && x <= x1 && y >= y0 && y <= y1,
                        "({x},{y}) outside bounds"
                    );
                }
            }
        }
    }

    #[test]
    fn glyphs_come_from_the_font_and_unknown_ones_are_question_marks() {
        assert_eq!(glyph('A'), font8x8::legacy::BASIC_LEGACY[b'A' as usize]);
        assert_eq!(glyph('\u{1F600}'), glyph('?'));
        assert_ne!(glyph('?'), [0; 8]);
        let g = Prim::Glyph {
            x: 4,
            y: 4,
            scale: 2,
            rows: glyph('I'),
            colour: colours::TEXT,
        };
        let lit = (0..30)
            .flat_map(|y| (0..30).map(move |x| (x, y)))
            .filter(|&(x, y)| g.covers(x, y))
            .count();
        let bits: u32 = glyph('I').iter().map(|r| r.count_ones()).sum();
        assert_eq!(lit as u32, bits * 4, "every bit a 2×2 square");
    }

    #[test]
    fn the_overlay_draws_boxes_highlights_and_rules_where_they_are() {
        let zone: ZoneConfig = toml::from_str(
            "name = \"door\"\npolygon = [[0.1, 0.5], [0.4, 0.5], [0.4, 0.9], [0.1, 0.9]]",
        )
        .unwrap();
        let line: LineConfig =
            toml::from_str("name = \"walk\"\nfrom = [0.5, 0.1]\nto = [0.5, 0.9]").unwrap();
        let rules = RuleEngine::new(&[zone], &[line], 0.3);
        let tracks = [
            track(7, [0.6, 0.2, 0.8, 0.6]),
            track(9, [0.05, 0.05, 0.3, 0.3]),
        ];
        let scene = Scene {
            camera: "plaza",
            clock: "2026-12-06 03:00:00Z",
            tracks: &tracks,
            highlight: &[7],
            rules: Some(&rules),
        };
        let mut list = DrawList::new();
        list.build(&scene, 640, 360);
        assert_eq!(list.overflow(), 0);
        let mut pic = Picture420::new(640, 360);
        pic.draw(&list);
        let y = |x: u32, yy: u32| pic.y[(yy * 640 + x) as usize];
        let uv = |x: u32, yy: u32| {
            let i = ((yy / 2) * 320 + x / 2) as usize;
            (pic.u[i], pic.v[i])
        };
        // Track 7's right edge (x = 512) is red; track 9's (x = 192) is green.
        let (red, green) = (colours::HIGHLIGHT, colours::TRACK);
        assert_eq!((y(511, 150), uv(512, 150)), (red.y, (red.u, red.v)));
        assert_eq!((y(191, 80), uv(192, 80)), (green.y, (green.u, green.v)));
        // The line at x = 320 is drawn; the zone's right edge at x = 256 too.
        assert_eq!(y(320, 250), colours::LINE.y);
        assert_eq!(y(256, 250), colours::ZONE.y);
        // Far from everything: untouched black.
        assert_eq!((y(600, 340), uv(600, 340)), (16, (128, 128)));
        // Inside a box: untouched.
        assert_eq!(y(450, 150), 16);
        // The header's text background at the top-left.
        assert_eq!(y(0, 0), colours::LABEL_BG.y);
    }

    #[test]
    fn every_track_fits_and_a_full_list_counts_what_it_dropped() {
        let tracks: Vec<TrackView> = (0..crate::analytics::MAX_TRACKS as u64)
            .map(|i| track(999_999_999_999 - i, [0.1, 0.1, 0.2, 0.2]))
            .collect();
        let scene = Scene {
            camera: "a-camera-with-a-rather-long-name-indeed",
            clock: "2026-12-06 03:00:00Z",
            tracks: &tracks,
            highlight: &[],
            rules: None,
        };
        let mut list = DrawList::new();
        list.build(&scene, 1280, 720);
        assert_eq!(list.overflow(), 0, "{} primitives", list.prims().len());
        let n = list.prims().len();
        for _ in 0..(MAX_PRIMS - n + 5) {
            list.push(list.prims()[0]);
        }
        assert_eq!((list.prims().len(), list.overflow()), (MAX_PRIMS, 5));
    }

    #[test]
    fn scaling_keeps_flat_planes_flat_and_halves_a_ramp() {
        let (sw, sh) = (64usize, 32usize);
        let y: Vec<u8> = (0..sw * sh).map(|i| (i % sw) as u8 * 4).collect();
        let u = vec![90u8; sw * sh / 4];
        let v = vec![200u8; sw * sh / 4];
        let src = YuvView {
            width: sw,
            height: sh,
            y: &y,
            y_stride: sw,
            u: &u,
            v: &v,
            uv_stride: sw / 2,
            uv_step: 1,
        };
        let mut pic = Picture420::new(32, 16);
        pic.scale_from(&src);
        assert!(pic.u.iter().all(|&c| c == 90) && pic.v.iter().all(|&c| c == 200));
        // Output x samples source 2x + 0.5: the mean of columns 2x and 2x + 1.
        for x in 0..32 {
            assert_eq!(pic.y[5 * 32 + x], (8 * x + 2) as u8, "x = {x}");
        }
        assert_eq!(Picture420::fit(1920, 1080, 1280), (1280, 720));
        assert_eq!(Picture420::fit(640, 360, 1280), (640, 360));
        assert_eq!(Picture420::fit(1921, 1081, 640), (640, 360));
    }
}
