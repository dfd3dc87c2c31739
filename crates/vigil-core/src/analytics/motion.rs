//! Motion gate of one camera: decides, from the luma plane alone, whether a frame is worth an
//! inference. What a CPU box saves most by (Frigate's main saving): a scene where nothing moves
//! near the camera's rules needs no detector.
//!
//! The frame's luma is reduced to a grid of block means (at most [`GRID`]×[`GRID`] blocks, each
//! the mean of up to 4×4 sampled pixels: a few thousand reads per frame whatever the
//! resolution). A block **moved** when its mean differs from the same block's mean in the last
//! *analysed* frame by at least `threshold` (0–255 luma levels): slow changes add up until they
//! count, and compression noise, averaged over a block, stays far below a few levels. Only
//! blocks inside the **watched region** count: the bounding boxes of the camera's zones and
//! lines grown by [`MARGIN`] of the frame on each side (a person is tracked before reaching a
//! rule), or the whole frame for a camera without rules.
//!
//! [`MotionGate::check`] says `true` (analyse) on the first frame (of a new size, or with time
//! going backwards), when at least
//! `min_blocks` watched blocks moved, or when the last analysed frame is `max_skip_s` old or
//! more (a person standing still is still seen; a dwell comes at most that late); else `false`.
//! Fixed-size state: no allocation per frame.

use super::BBox;

/// Most blocks along each side of the grid.
pub const GRID: usize = 64;
/// How far the watched region reaches past the rules, as a fraction of the frame.
pub const MARGIN: f32 = 0.1;
/// Most rule regions looked at (more are merged into the last).
pub const MAX_REGIONS: usize = 32;

/// The gate's settings (from the camera's `[cameras.motion]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionSettings {
    /// Block-mean change, in luma levels, that counts as motion.
    pub threshold: u8,
    /// Moved blocks in the watched region needed to analyse.
    pub min_blocks: u16,
    /// Longest time (stream seconds) between two analysed frames.
    pub max_skip_s: f64,
}

pub struct MotionGate {
    cfg: MotionSettings,
    regions: heapless::Vec<BBox, MAX_REGIONS>,
    /// Grid size and frame size the mask was made for.
    cols: usize,
    rows: usize,
    frame: (usize, usize),
    mask: [bool; GRID * GRID],
    cur: [u8; GRID * GRID],
    /// Block means of the last analysed frame.
    reference: [u8; GRID * GRID],
    have_reference: bool,
    last_analysed_t: f64,
    /// Watched blocks that moved in the last frame checked.
    pub last_moved: u32,
}

impl MotionGate {
    pub fn new(cfg: MotionSettings, regions: &[BBox]) -> Self {
        let mut g = Self {
            cfg,
            regions: heapless::Vec::new(),
            cols: 0,
            rows: 0,
            frame: (0, 0),
            mask: [false; GRID * GRID],
            cur: [0; GRID * GRID],
            reference: [0; GRID * GRID],
            have_reference: false,
            last_analysed_t: f64::NEG_INFINITY,
            last_moved: 0,
        };
        g.set_regions(regions);
        g
    }

    /// The rules' boxes (normalised); empty = the whole frame is watched. Grown by [`MARGIN`].
    pub fn set_regions(&mut self, regions: &[BBox]) {
        self.regions.clear();
        for r in regions {
            let grown = BBox::new(
                (r.x1 - MARGIN).max(0.0),
                (r.y1 - MARGIN).max(0.0),
                (r.x2 + MARGIN).min(1.0),
                (r.y2 + MARGIN).min(1.0),
            );
            if self.regions.push(grown).is_err() {
                // Beyond MAX_REGIONS: the last region grows to cover this one too.
                if let Some(last) = self.regions.last_mut() {
                    *last = BBox::new(
                        last.x1.min(grown.x1),
                        last.y1.min(grown.y1),
                        last.x2.max(grown.x2),
                        last.y2.max(grown.y2),
                    );
                }
            }
        }
        // The mask is remade on the next frame.
        self.frame = (0, 0);
    }

    fn layout(&mut self, width: usize, height: usize) {
        if self.frame == (width, height) {
            return;
        }
        self.frame = (width, height);
        self.have_reference = false;
        // Square-ish blocks, at most GRID along the longer side.
        let long = width.max(height).max(1);
        self.cols = (GRID * width / long).clamp(1, GRID);
        self.rows = (GRID * height / long).clamp(1, GRID);
        for by in 0..self.rows {
            for bx in 0..self.cols {
                let (x1, x2) = (
                    bx as f32 / self.cols as f32,
                    (bx + 1) as f32 / self.cols as f32,
                );
                let (y1, y2) = (
                    by as f32 / self.rows as f32,
                    (by + 1) as f32 / self.rows as f32,
                );
                self.mask[by * GRID + bx] = self.regions.is_empty()
                    || self
                        .regions
                        .iter()
                        .any(|r| x1 < r.x2 && x2 > r.x1 && y1 < r.y2 && y2 > r.y1);
            }
        }
    }

    /// Whether the frame at stream time `t` (luma plane `y`, `stride` bytes a row) should be
    /// analysed. Call [`Self::analysed`] when it was.
    pub fn check(&mut self, t: f64, y: &[u8], width: usize, height: usize, stride: usize) -> bool {
        if width == 0 || height == 0 || stride < width || y.len() < stride * (height - 1) + width {
            return true;
        }
        self.layout(width, height);
        let (cols, rows) = (self.cols, self.rows);
        let mut moved = 0u32;
        for by in 0..rows {
            let (py0, py1) = (
                by * height / rows,
                ((by + 1) * height / rows).max(by * height / rows + 1),
            );
            let ystep = ((py1 - py0) / 4).max(1);
            for bx in 0..cols {
                let (px0, px1) = (
                    bx * width / cols,
                    ((bx + 1) * width / cols).max(bx * width / cols + 1),
                );
                let xstep = ((px1 - px0) / 4).max(1);
                let (mut sum, mut n) = (0u32, 0u32);
                let mut py = py0 + ystep / 2;
                while py < py1 {
                    let row = &y[py * stride..py * stride + width];
                    let mut px = px0 + xstep / 2;
                    while px < px1 {
                        sum += row[px] as u32;
                        n += 1;
                        px += xstep;
                    }
                    py += ystep;
                }
                let mean = (sum / n.max(1)) as u8;
                let i = by * GRID + bx;
                self.cur[i] = mean;
                if self.mask[i] && self.reference[i].abs_diff(mean) >= self.cfg.threshold {
                    moved += 1;
                }
            }
        }
        self.last_moved = moved;
        // Time going backwards (a new pipeline session) analyses too.
        !self.have_reference
            || moved >= self.cfg.min_blocks as u32
            || t - self.last_analysed_t >= self.cfg.max_skip_s
            || t < self.last_analysed_t
    }

    /// The frame last checked was analysed: it becomes the reference.
    pub fn analysed(&mut self, t: f64) {
        self.reference = self.cur;
        self.have_reference = true;
        self.last_analysed_t = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: usize = 320;
    const H: usize = 180;

    fn settings() -> MotionSettings {
        MotionSettings {
            threshold: 8,
            min_blocks: 1,
            max_skip_s: 1.0,
        }
    }

    /// A grey frame with noise of ±2 levels and a dark square at (x, y) of side `s` px.
    fn frame(seed: u32, square: Option<(usize, usize, usize)>) -> Vec<u8> {
        let mut f = vec![0u8; W * H];
        let mut r = seed.wrapping_mul(2_654_435_761).max(1);
        for (i, p) in f.iter_mut().enumerate() {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            *p = (128 + (r % 5) as i32 - 2) as u8;
            if let Some((x, y, s)) = square {
                let (px, py) = (i % W, i / W);
                if px >= x && px < x + s && py >= y && py < y + s {
                    *p = 30;
                }
            }
        }
        f
    }

    fn run(g: &mut MotionGate, t: f64, f: &[u8]) -> bool {
        let go = g.check(t, f, W, H, W);
        if go {
            g.analysed(t);
        }
        go
    }

    #[test]
    fn a_still_noisy_scene_is_skipped_until_max_skip() {
        let mut g = MotionGate::new(settings(), &[]);
        assert!(run(&mut g, 0.0, &frame(1, None)), "first frame");
        let mut analysed = vec![];
        for k in 1..=12 {
            let t = k as f64 / 5.0;
            if run(&mut g, t, &frame(k, None)) {
                analysed.push(k);
            }
        }
        // 0.2 s a frame, at most 1 s without one: frames 5 and 10.
        assert_eq!(analysed, vec![5, 10]);
    }

    #[test]
    fn motion_inside_the_watched_region_is_analysed_outside_it_is_not() {
        // One zone on the left half (x 0..0.3, grown by MARGIN to 0.4).
        let zone = BBox::new(0.05, 0.2, 0.3, 0.8);
        let mut g = MotionGate::new(settings(), &[zone]);
        assert!(run(&mut g, 0.0, &frame(1, None)));
        // A 20 px object appears at the far right (x 0.9): not watched.
        assert!(!run(&mut g, 0.2, &frame(2, Some((290, 80, 20)))));
        // It appears in the zone: analysed.
        assert!(run(&mut g, 0.4, &frame(3, Some((40, 80, 20)))));
        // It stays there, still: nothing moved since the analysed frame.
        assert!(!run(&mut g, 0.6, &frame(4, Some((40, 80, 20)))));
        // It moves by half its size: analysed.
        assert!(run(&mut g, 0.8, &frame(5, Some((50, 80, 20)))));
    }

    #[test]
    fn slow_change_adds_up_against_the_last_analysed_frame() {
        let mut g = MotionGate::new(
            MotionSettings {
                max_skip_s: 100.0,
                ..settings()
            },
            &[],
        );
        let lit = |level: u8| vec![level; W * H];
        assert!(run(&mut g, 0.0, &lit(100)));
        // +3 levels a frame: 3 and 6 are below the threshold of 8, 9 is not.
        assert!(!run(&mut g, 0.2, &lit(103)));
        assert!(!run(&mut g, 0.4, &lit(106)));
        assert!(run(&mut g, 0.6, &lit(109)));
    }

    #[test]
    fn a_new_frame_size_starts_over_and_bad_planes_are_analysed() {
        let mut g = MotionGate::new(settings(), &[]);
        assert!(run(&mut g, 0.0, &frame(1, None)));
        assert!(!run(&mut g, 0.2, &frame(2, None)));
        let small = vec![128u8; 160 * 90];
        assert!(
            g.check(0.4, &small, 160, 90, 160),
            "a new size has no reference"
        );
        g.analysed(0.4);
        assert!(!g.check(0.6, &small, 160, 90, 160));
        assert!(g.check(0.3, &small, 160, 90, 160), "time going backwards");
        assert!(
            g.check(0.6, &small[..10], 160, 90, 160),
            "a short plane is never skipped"
        );
        assert!(
            g.check(0.6, &small, 160, 90, 100),
            "a stride below the width is never skipped"
        );
    }

    #[test]
    fn many_regions_merge_instead_of_being_dropped() {
        let regions: Vec<BBox> = (0..40)
            .map(|i| {
                let x = i as f32 / 40.0;
                BBox::new(x, 0.45, x + 0.01, 0.55)
            })
            .collect();
        let mut g = MotionGate::new(settings(), &regions);
        assert!(run(&mut g, 0.0, &frame(1, None)));
        // Motion near the last regions' x (0.95+) is still watched.
        assert!(run(&mut g, 0.2, &frame(2, Some((305, 80, 12)))));
    }
}
