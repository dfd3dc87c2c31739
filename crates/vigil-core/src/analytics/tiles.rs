//! Tiled detection (`[models.<name>.tiles]`): a frame cut into overlapping tiles, each detected
//! at the model's input size so that small, far objects get more input pixels, and (optionally)
//! the whole frame for objects bigger than a tile. One object seen in several passes (two
//! neighbouring tiles, a tile and the whole frame) becomes one box: boxes of the same class
//! whose intersection covers at least [`MERGE_IOS`] of the smaller one (intersection over
//! smaller: a box a tile's edge cut in half still matches the whole one) are merged, keeping
//! the better one or, for parts that tile edges cut, their union ([`Merge`]). Boxes of one pass
//! are never merged with each other: its own NMS already decided those.

use super::{BBox, Detection, Detections};

/// Most tiles of a frame (a 4×4 grid).
pub const MAX_TILES: usize = 16;

/// Intersection over the smaller box at which boxes of two passes are one object.
pub const MERGE_IOS: f32 = 0.5;

/// A tile in pixels of the frame; `x` and `y` even (4:2:0 chroma).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub x: usize,
    pub y: usize,
    pub w: usize,
    pub h: usize,
}

/// Start and length of `n` tiles along a side of `len` pixels, each sharing `overlap` of its
/// length with the next; the last one ends at the side's end.
fn axis(len: usize, n: usize, overlap: f32, out: &mut heapless::Vec<(usize, usize), 4>) {
    out.clear();
    let n = n.clamp(1, 4);
    let overlap = overlap.clamp(0.0, 0.5);
    let t = len as f32 / (n as f32 - (n as f32 - 1.0) * overlap);
    let size = ((t.ceil() as usize).div_ceil(2) * 2).clamp(2.min(len), len);
    for i in 0..n {
        let start = ((i as f32 * t * (1.0 - overlap)) as usize & !1).min((len - size) & !1);
        let end = if i == n - 1 { len } else { start + size };
        let _ = out.push((start, end - start));
    }
}

/// The tiles of a `w`×`h` frame for a `cols`×`rows` grid (row by row).
pub fn layout(
    w: usize,
    h: usize,
    cols: usize,
    rows: usize,
    overlap: f32,
) -> heapless::Vec<Tile, MAX_TILES> {
    let (mut xs, mut ys) = (heapless::Vec::new(), heapless::Vec::new());
    axis(w, cols, overlap, &mut xs);
    axis(h, rows, overlap, &mut ys);
    let mut out = heapless::Vec::new();
    for &(y, th) in &ys {
        for &(x, tw) in &xs {
            let _ = out.push(Tile { x, y, w: tw, h: th });
        }
    }
    out
}

/// Whether a detection (in the tile's normalised coordinates) touches an edge of the tile that
/// lies inside the frame, within 2 pixels: the tile's edge may have cut the object.
pub fn cut_by_tile(d: &Detection, t: &Tile, frame_w: usize, frame_h: usize) -> bool {
    let (ex, ey) = (2.0 / t.w as f32, 2.0 / t.h as f32);
    (t.x > 0 && d.bbox.x1 <= ex)
        || (t.y > 0 && d.bbox.y1 <= ey)
        || (t.x + t.w < frame_w && d.bbox.x2 >= 1.0 - ex)
        || (t.y + t.h < frame_h && d.bbox.y2 >= 1.0 - ey)
}

/// A detection in a tile's normalised coordinates → the frame's.
pub fn to_frame(d: &Detection, t: &Tile, frame_w: usize, frame_h: usize) -> Detection {
    let (fw, fh) = (frame_w as f32, frame_h as f32);
    let fx = |x: f32| ((t.x as f32 + x * t.w as f32) / fw).clamp(0.0, 1.0);
    let fy = |y: f32| ((t.y as f32 + y * t.h as f32) / fh).clamp(0.0, 1.0);
    Detection {
        bbox: BBox::new(fx(d.bbox.x1), fy(d.bbox.y1), fx(d.bbox.x2), fy(d.bbox.y2)),
        ..*d
    }
}

fn ios(a: &BBox, b: &BBox) -> f32 {
    let ix = (a.x2.min(b.x2) - a.x1.max(b.x1)).max(0.0);
    let iy = (a.y2.min(b.y2) - a.y1.max(b.y1)).max(0.0);
    let smaller = a.area().min(b.area());
    if smaller <= 0.0 {
        0.0
    } else {
        ix * iy / smaller
    }
}

/// How [`merge_pass`] makes one box of two that are one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Their union, with the higher score: parts of an object that tile edges cut.
    Union,
    /// The higher-scoring box: whole boxes of one object from two passes (the whole frame's
    /// pass has cut boxes dropped; a union would widen a tile's box by a coarser one).
    Best,
}

/// Adds one pass's detections (in frame coordinates) to `merged`, whose first `earlier`
/// entries come from the passes before it: a detection that is one object with one of those
/// (same class, intersection ≥ [`MERGE_IOS`] of the smaller box) is merged into it as `how`
/// says; the others are added. When `merged` is full, a detection replaces the lowest-scoring
/// one if it scores higher.
pub fn merge_pass(merged: &mut Detections, earlier: usize, pass: &Detections, how: Merge) {
    let earlier = earlier.min(merged.len());
    for d in pass {
        let same = merged[..earlier]
            .iter_mut()
            .filter(|k| k.class_id == d.class_id && ios(&k.bbox, &d.bbox) >= MERGE_IOS)
            .max_by(|a, b| ios(&a.bbox, &d.bbox).total_cmp(&ios(&b.bbox, &d.bbox)));
        if let Some(k) = same {
            match how {
                Merge::Union => {
                    k.bbox = BBox::new(
                        k.bbox.x1.min(d.bbox.x1),
                        k.bbox.y1.min(d.bbox.y1),
                        k.bbox.x2.max(d.bbox.x2),
                        k.bbox.y2.max(d.bbox.y2),
                    );
                    k.score = k.score.max(d.score);
                }
                Merge::Best if d.score > k.score => *k = *d,
                Merge::Best => {}
            }
        } else if let Err(d) = merged.push(*d)
            && let Some(low) = merged.iter_mut().min_by(|a, b| a.score.total_cmp(&b.score))
            && low.score < d.score
        {
            *low = d;
        }
    }
}

/// Adds one tile's detections (in the tile's normalised coordinates, `pass`, changed in place)
/// to its frame's `merged`: with the whole frame detected too (`full_frame`), a box the tile's
/// inner edge cut is dropped (an object narrower than the overlap is whole in the neighbouring
/// tile, a bigger one in the whole frame's pass) and two boxes of one object keep the better
/// one; without it, cut boxes are joined with their other parts ([`Merge`]). Both the CPU and
/// the GPU path merge their tiles with this.
pub fn add_tile_pass(
    merged: &mut Detections,
    pass: &mut Detections,
    t: &Tile,
    frame_w: usize,
    frame_h: usize,
    full_frame: bool,
) {
    if full_frame {
        pass.retain(|d| !cut_by_tile(d, t, frame_w, frame_h));
    }
    for d in pass.iter_mut() {
        *d = to_frame(d, t, frame_w, frame_h);
    }
    let earlier = merged.len();
    let how = if full_frame {
        Merge::Best
    } else {
        Merge::Union
    };
    merge_pass(merged, earlier, pass, how);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x1: f32, y1: f32, x2: f32, y2: f32, score: f32, class_id: u16) -> Detection {
        Detection {
            bbox: BBox::new(x1, y1, x2, y2),
            score,
            class_id,
        }
    }

    #[test]
    fn tiles_cover_the_frame_overlap_and_start_even() {
        for (w, h, cols, rows, overlap) in [
            (1920, 1080, 2, 1, 0.2),
            (1921, 1081, 3, 2, 0.25),
            (640, 360, 4, 4, 0.5),
            (640, 360, 2, 2, 0.0),
        ] {
            let tiles = layout(w, h, cols, rows, overlap);
            assert_eq!(tiles.len(), cols * rows);
            // Every pixel is in some tile; neighbours share at least `overlap` of a tile.
            for px in (0..w).step_by(7) {
                for py in (0..h).step_by(7) {
                    assert!(
                        tiles
                            .iter()
                            .any(|t| (t.x..t.x + t.w).contains(&px)
                                && (t.y..t.y + t.h).contains(&py)),
                        "{w}x{h} {cols}x{rows}: ({px}, {py}) in no tile: {tiles:?}"
                    );
                }
            }
            for t in &tiles {
                assert!(t.x % 2 == 0 && t.y % 2 == 0 && t.x + t.w <= w && t.y + t.h <= h);
            }
            let (a, b) = (tiles[0], tiles[1]);
            let shared = (a.x + a.w).saturating_sub(b.x) as f32;
            assert!(shared + 2.0 >= overlap * a.w as f32, "{tiles:?}");
        }
        // A 2×1 grid of a 1920×1080 frame at 20 %: two tiles of ~1067 px sharing ~213.
        let t = layout(1920, 1080, 2, 1, 0.2);
        assert_eq!((t[0].x, t[0].w, t[1].x, t[1].w), (0, 1068, 852, 1068));
        assert_eq!((t[0].h, t[1].h), (1080, 1080));
    }

    #[test]
    fn a_box_at_an_inner_tile_edge_is_cut_and_one_at_the_frame_edge_is_not() {
        let left = Tile {
            x: 0,
            y: 0,
            w: 1068,
            h: 1080,
        };
        let right = Tile { x: 852, ..left };
        let at_right_edge = det(0.9, 0.2, 1.0, 0.4, 0.9, 0);
        let at_left_edge = det(0.0, 0.2, 0.1, 0.4, 0.9, 0);
        let inside = det(0.4, 0.2, 0.6, 0.4, 0.9, 0);
        assert!(cut_by_tile(&at_right_edge, &left, 1920, 1080));
        assert!(!cut_by_tile(&at_left_edge, &left, 1920, 1080)); // the frame's own edge
        assert!(cut_by_tile(&at_left_edge, &right, 1920, 1080));
        assert!(!cut_by_tile(&at_right_edge, &right, 1920, 1080));
        assert!(!cut_by_tile(&inside, &left, 1920, 1080));
        assert!(!cut_by_tile(
            &det(0.4, 0.0, 0.6, 1.0, 0.9, 0),
            &left,
            1920,
            1080
        ));
    }

    #[test]
    fn tile_coordinates_map_back_to_the_frame() {
        let t = Tile {
            x: 852,
            y: 0,
            w: 1068,
            h: 1080,
        };
        let d = to_frame(&det(0.0, 0.5, 1.0, 1.0, 0.9, 0), &t, 1920, 1080);
        assert!((d.bbox.x1 - 852.0 / 1920.0).abs() < 1e-6);
        assert!((d.bbox.x2 - 1.0).abs() < 1e-6 && (d.bbox.y1 - 0.5).abs() < 1e-6);
    }

    #[test]
    fn one_object_in_two_passes_is_one_box_and_neighbours_stay_apart() {
        // The whole frame found a person; a tile found its left half (cut by the tile's edge)
        // and another person beside it; a car on the same spot is another class.
        let mut merged = Detections::new();
        let _ = merged.push(det(0.40, 0.40, 0.50, 0.80, 0.6, 0));
        let earlier = merged.len();
        let mut tile = Detections::new();
        let _ = tile.push(det(0.38, 0.39, 0.45, 0.80, 0.8, 0)); // the same person, cut
        let _ = tile.push(det(0.52, 0.40, 0.60, 0.80, 0.7, 0)); // another person
        let _ = tile.push(det(0.40, 0.40, 0.50, 0.80, 0.5, 2)); // a car
        let before = merged.clone();
        merge_pass(&mut merged, earlier, &tile, Merge::Union);
        assert_eq!(merged.len(), 3, "{merged:?}");
        assert_eq!(merged[0].bbox, BBox::new(0.38, 0.39, 0.50, 0.80));
        assert_eq!(merged[0].score, 0.8);
        assert_eq!(merged[1].bbox, BBox::new(0.52, 0.40, 0.60, 0.80));
        assert_eq!(merged[2].class_id, 2);
        // Whole boxes of one object: the better one is kept as it is.
        let mut best = before;
        merge_pass(&mut best, earlier, &tile, Merge::Best);
        assert_eq!(best.len(), 3, "{best:?}");
        assert_eq!(best[0], tile[0]);
        // Two boxes of one pass that overlap are not merged: that pass's NMS kept both.
        let mut one = Detections::new();
        let mut pass = Detections::new();
        let _ = pass.push(det(0.1, 0.1, 0.3, 0.5, 0.9, 0));
        let _ = pass.push(det(0.15, 0.1, 0.25, 0.3, 0.8, 0));
        merge_pass(&mut one, 0, &pass, Merge::Union);
        assert_eq!(one.len(), 2);
    }
}
