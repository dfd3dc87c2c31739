//! NanoDet output decoding: per level (stride 8, 16, 32) a class-score tensor `[1, N, C]`
//! (sigmoid already applied) and a box tensor `[1, N, 4 × (R + 1)]` holding, per side
//! (left, top, right, bottom), a distribution over R + 1 bins: softmax, expected bin × stride =
//! distance from the cell's point at (col × stride, row × stride). Then class-aware NMS.
//!
//! The outputs are matched to levels by shape, not by name, so a re-export of the same network
//! with other tensor names still loads; a model that does not fit is a clear load error.

use super::preprocess::{InputSpec, Letterbox};
use super::{InferError, OutputViews, TensorDesc};
use crate::analytics::nms::{Candidates, nms, push_candidate};
use crate::analytics::{BBox, Detection, Detections};

/// NanoDet's input normalisation (BGR planes).
pub fn input_spec(size: usize) -> InputSpec {
    InputSpec {
        size,
        bgr: true,
        mean: [103.53, 116.28, 123.675],
        std: [57.375, 57.12, 58.395],
        pad_value: 114.0,
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Level {
    stride: usize,
    grid_w: usize,
    cells: usize,
    scores: usize,
    boxes: usize,
}

/// How to read one NanoDet model's outputs.
#[derive(Debug, Clone)]
pub struct NanodetDecoder {
    levels: heapless::Vec<Level, 4>,
    classes: usize,
    bins: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
    candidates: Candidates,
}

impl NanodetDecoder {
    /// Checks the model's outputs against NanoDet's layout for a `size`×`size` input.
    pub fn new(path: &str, size: usize, outputs: &[TensorDesc]) -> Result<Self, InferError> {
        let bad = |reason: String| InferError::Layout {
            path: path.to_string(),
            kind: "nanodet",
            reason,
        };
        let mut levels = heapless::Vec::new();
        let mut classes = 0;
        let mut box_ch = 0;
        for stride in [8usize, 16, 32] {
            let grid_w = size.div_ceil(stride);
            let cells = grid_w * grid_w;
            let of_level: Vec<usize> = (0..outputs.len())
                .filter(|&i| outputs[i].shape.len() == 3 && outputs[i].shape[1] == cells as i64)
                .collect();
            if of_level.len() != 2 {
                return Err(bad(format!(
                    "expected 2 outputs with {cells} cells for stride {stride}, found {}: outputs are {}",
                    of_level.len(),
                    outputs
                        .iter()
                        .map(|t| t.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let (a, b) = (of_level[0], of_level[1]);
            let (ca, cb) = (outputs[a].shape[2] as usize, outputs[b].shape[2] as usize);
            // The box tensor is the one whose channels are 4 × bins with bins small (< 32).
            let (scores, boxes, c, bc) = if cb % 4 == 0 && cb < 128 && (ca % 4 != 0 || ca > cb) {
                (a, b, ca, cb)
            } else {
                (b, a, cb, ca)
            };
            if classes != 0 && (c != classes || bc != box_ch) {
                return Err(bad(format!(
                    "stride {stride} has {c} classes / {bc} box channels, others {classes} / {box_ch}"
                )));
            }
            classes = c;
            box_ch = bc;
            let _ = levels.push(Level {
                stride,
                grid_w,
                cells,
                scores,
                boxes,
            });
        }
        if box_ch % 4 != 0 || box_ch < 8 {
            return Err(bad(format!("box channels {box_ch} are not 4 × bins")));
        }
        Ok(Self {
            levels,
            classes,
            bins: box_ch / 4,
            score_threshold: 0.35,
            nms_iou: 0.5,
            candidates: Candidates::new(),
        })
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Decodes one image's outputs into `out` (normalised source coordinates).
    pub fn decode(&mut self, outputs: &OutputViews<'_>, lb: &Letterbox, out: &mut Detections) {
        self.candidates.clear();
        let bins = self.bins;
        for lv in &self.levels {
            let scores = outputs[lv.scores];
            let boxes = outputs[lv.boxes];
            for cell in 0..lv.cells {
                let row_s = &scores[cell * self.classes..(cell + 1) * self.classes];
                let (mut best, mut cls) = (0.0f32, 0usize);
                for (c, &s) in row_s.iter().enumerate() {
                    if s > best {
                        best = s;
                        cls = c;
                    }
                }
                if best < self.score_threshold {
                    continue;
                }
                let dist = &boxes[cell * 4 * bins..(cell + 1) * 4 * bins];
                let mut d = [0.0f32; 4];
                for (side, v) in d.iter_mut().enumerate() {
                    *v = expected_bin(&dist[side * bins..(side + 1) * bins]) * lv.stride as f32;
                }
                let px = (cell % lv.grid_w * lv.stride) as f32;
                let py = (cell / lv.grid_w * lv.stride) as f32;
                let (x1, y1) = lb.to_source(px - d[0], py - d[1]);
                let (x2, y2) = lb.to_source(px + d[2], py + d[3]);
                if x2 > x1 && y2 > y1 {
                    push_candidate(
                        &mut self.candidates,
                        Detection {
                            bbox: BBox::new(x1, y1, x2, y2),
                            score: best,
                            class_id: cls as u16,
                        },
                    );
                }
            }
        }
        nms(&mut self.candidates, self.nms_iou, out);
    }
}

/// Softmax over the bins, then the expected bin index.
fn expected_bin(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut sum, mut acc) = (0.0f32, 0.0f32);
    for (i, &l) in logits.iter().enumerate() {
        let e = (l - max).exp();
        sum += e;
        acc += e * i as f32;
    }
    acc / sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outputs(size: usize) -> Vec<TensorDesc> {
        let mut v = Vec::new();
        for (i, s) in [32usize, 8, 16].into_iter().enumerate() {
            let n = (size / s) * (size / s);
            v.push(TensorDesc {
                name: format!("s{i}"),
                shape: vec![1, n as i64, 80],
            });
            v.push(TensorDesc {
                name: format!("b{i}"),
                shape: vec![1, n as i64, 44],
            });
        }
        v
    }

    #[test]
    fn layout_is_found_by_shape() {
        let d = NanodetDecoder::new("m", 416, &outputs(416)).unwrap();
        assert_eq!((d.classes, d.bins), (80, 11));
        assert_eq!(
            d.levels[0],
            Level {
                stride: 8,
                grid_w: 52,
                cells: 2704,
                scores: 2,
                boxes: 3
            }
        );
    }

    #[test]
    fn wrong_model_is_a_layout_error() {
        let e = NanodetDecoder::new("m.onnx", 320, &outputs(416)).unwrap_err();
        assert!(e.to_string().contains("stride 8"), "{e}");
    }

    #[test]
    fn one_confident_cell_decodes_to_its_box() {
        let size = 64;
        let descs = outputs(size);
        let mut data: Vec<Vec<f32>> = descs
            .iter()
            .map(|d| vec![0.0; (d.shape[1] * d.shape[2]) as usize])
            .collect();
        // Stride 16 level = descs 4 (scores) and 5 (boxes), 4×4 grid; cell (row 1, col 2) → point (32, 16).
        let cell = 4 + 2;
        data[4][cell * 80 + 3] = 0.9;
        for side in 0..4 {
            // All the mass on bin 2 → distance 2 × 16 = 32.
            data[5][cell * 44 + side * 11 + 2] = 50.0;
        }
        let views: OutputViews = data.iter().map(|v| v.as_slice()).collect();
        let mut dec = NanodetDecoder::new("m", size, &descs).unwrap();
        let lb = Letterbox::new(64, 64, 64);
        let mut out = Detections::new();
        dec.decode(&views, &lb, &mut out);
        assert_eq!(out.len(), 1);
        let d = out[0];
        assert_eq!(d.class_id, 3);
        // (32-32, 16-32, 32+32, 16+32) clamped, / 64
        assert!((d.bbox.x1 - 0.0).abs() < 1e-3 && (d.bbox.y1 - 0.0).abs() < 1e-3);
        assert!(
            (d.bbox.x2 - 1.0).abs() < 1e-3 && (d.bbox.y2 - 0.75).abs() < 1e-3,
            "{:?}",
            d.bbox
        );
    }
}
