//! Class-aware non-maximum suppression over a fixed-capacity candidate list.

use super::{Detection, Detections, MAX_DETECTIONS};

/// Most candidates considered per frame before NMS.
pub const MAX_CANDIDATES: usize = 1024;
pub type Candidates = heapless::Vec<Detection, MAX_CANDIDATES>;

/// Adds a candidate; when full, it replaces the lowest-scoring one if it scores higher.
pub fn push_candidate(c: &mut Candidates, d: Detection) {
    if let Err(d) = c.push(d)
        && let Some((i, low)) = c
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.score.total_cmp(&b.1.score))
        && low.score < d.score
    {
        c[i] = d;
    }
}

/// Sorts `cands` by score and keeps, per class, the boxes that overlap no higher-scoring box of
/// the same class by more than `iou`. At most [`MAX_DETECTIONS`] are written to `out`.
pub fn nms(cands: &mut Candidates, iou: f32, out: &mut Detections) {
    out.clear();
    cands.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    for d in cands.iter() {
        if out.len() == MAX_DETECTIONS {
            break;
        }
        let suppressed = out
            .iter()
            .any(|k| k.class_id == d.class_id && k.bbox.iou(&d.bbox) > iou);
        if !suppressed {
            let _ = out.push(*d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::BBox;

    fn det(x: f32, score: f32, class_id: u16) -> Detection {
        Detection {
            bbox: BBox::new(x, 0.1, x + 0.2, 0.5),
            score,
            class_id,
        }
    }

    #[test]
    fn suppresses_overlaps_of_the_same_class_only() {
        let mut c = Candidates::new();
        for d in [
            det(0.10, 0.6, 0),
            det(0.11, 0.9, 0),
            det(0.11, 0.8, 2),
            det(0.6, 0.5, 0),
        ] {
            push_candidate(&mut c, d);
        }
        let mut out = Detections::new();
        nms(&mut c, 0.5, &mut out);
        let got: Vec<(f32, u16)> = out.iter().map(|d| (d.score, d.class_id)).collect();
        assert_eq!(got, vec![(0.9, 0), (0.8, 2), (0.5, 0)]);
    }

    #[test]
    fn full_candidate_list_keeps_the_best() {
        let mut c = Candidates::new();
        for i in 0..MAX_CANDIDATES {
            push_candidate(&mut c, det(0.0, 0.1 + i as f32 * 1e-4, 0));
        }
        push_candidate(&mut c, det(0.5, 0.99, 1));
        assert_eq!(c.len(), MAX_CANDIDATES);
        assert!(c.iter().any(|d| d.score == 0.99));
        assert!(!c.iter().any(|d| d.score == 0.1));
    }
}
