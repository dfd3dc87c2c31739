//! NanoDet output decoding: per level (stride 8, 16, 32) a class-score tensor `[1, N, C]`
//! (sigmoid already applied) and a box tensor `[1, N, 4 × (R + 1)]` holding, per side
//! (left, top, right, bottom), a distribution over R + 1 bins: softmax, expected bin × stride =
//! distance from the cell's point at (col × stride, row × stride). Then class-aware NMS.
//!
//! The outputs are matched to levels by shape, not by name, so a re-export of the same network
//! with other tensor names still loads; a model that does not fit is a clear load error. The
//! network is fully convolutional: exported with dynamic height and width (as `cargo xtask
//! setup` does), it takes any input whose sides are multiples of 32, and the levels are then
//! worked out per input size.

use super::preprocess::{InputSpec, Letterbox};
use super::{InferError, OutputViews, TensorDesc};
use crate::analytics::nms::{Candidates, nms, push_candidate};
use crate::analytics::{BBox, Detection, Detections};

/// Strides of NanoDet's three output levels.
pub const STRIDES: [usize; 3] = [8, 16, 32];

/// NanoDet's input normalisation (BGR planes); `dynamic` = the model takes any H and W that are
/// multiples of 32.
pub fn input_spec(size: usize, dynamic: bool) -> InputSpec {
    InputSpec {
        size,
        align: if dynamic { 32 } else { 0 },
        bgr: true,
        mean: [103.53, 116.28, 123.675],
        std: [57.375, 57.12, 58.395],
        pad_value: 114.0,
    }
}

/// The input side to use and whether the model's height and width are dynamic, from its input
/// description: a fixed square input must be `size`×`size`... unless `size` is what it has.
pub fn input_size(inputs: &[TensorDesc], size: usize) -> Result<(usize, bool), InferError> {
    let shape = &inputs[0].shape;
    let (h, w) = (shape[2], shape[3]);
    if shape[1] != 3 {
        return Err(InferError::Run(format!(
            "input {} is not 3-channel NCHW",
            inputs[0]
        )));
    }
    match (h, w) {
        (h, w) if h < 0 && w < 0 => Ok((size, true)),
        (h, w) if h == w && h > 0 => Ok((h as usize, false)),
        _ => Err(InferError::Run(format!(
            "input {}: expected a square or dynamic height and width",
            inputs[0]
        ))),
    }
}

/// One output level for one input size: which outputs hold its class scores and boxes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LevelInfo {
    pub stride: usize,
    pub grid_w: usize,
    pub cells: usize,
    /// Index of its class-score output.
    pub scores: usize,
    /// Index of its box output.
    pub boxes: usize,
}

/// How to read one NanoDet model's outputs.
#[derive(Debug, Clone)]
pub struct NanodetDecoder {
    /// Per output: its channel count (last dimension).
    channels: heapless::Vec<usize, { super::MAX_OUTPUTS }>,
    /// Levels for the input size they were worked out for.
    levels: heapless::Vec<LevelInfo, 3>,
    levels_for: (usize, usize),
    classes: usize,
    bins: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
    candidates: Candidates,
}

impl NanodetDecoder {
    /// Checks the model's outputs against NanoDet's layout: three class-score and three box
    /// outputs of shape `[1, N, C]`, and, where N is fixed, the cell counts of a `size`×`size`
    /// input.
    pub fn new(path: &str, size: usize, outputs: &[TensorDesc]) -> Result<Self, InferError> {
        let bad = |reason: String| InferError::Layout {
            path: path.to_string(),
            kind: "nanodet",
            reason,
        };
        let listed = || {
            outputs
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if outputs.len() != 6
            || outputs
                .iter()
                .any(|o| o.shape.len() != 3 || o.shape[2] <= 0)
        {
            return Err(bad(format!(
                "expected six outputs [1, N, C], found {}",
                listed()
            )));
        }
        let channels: heapless::Vec<usize, { super::MAX_OUTPUTS }> =
            outputs.iter().map(|o| o.shape[2] as usize).collect();
        let mut distinct: Vec<usize> = channels.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        // The box outputs have 4 × bins channels with few bins; the score outputs one per class.
        let (box_ch, classes) = match distinct.as_slice() {
            [a, b] if a % 4 == 0 && *a < 128 => (*a, *b),
            [a, b] if b % 4 == 0 && *b < 128 => (*b, *a),
            _ => {
                return Err(bad(format!(
                    "expected class-score and box outputs, found {}",
                    listed()
                )));
            }
        };
        if channels.iter().filter(|&&c| c == box_ch).count() != 3 || box_ch < 8 {
            return Err(bad(format!(
                "expected three box outputs of 4 × bins channels, found {}",
                listed()
            )));
        }
        let mut dec = Self {
            channels,
            levels: heapless::Vec::new(),
            levels_for: (0, 0),
            classes,
            bins: box_ch / 4,
            score_threshold: 0.35,
            nms_iou: 0.5,
            candidates: Candidates::new(),
        };
        let fixed: Vec<usize> = outputs
            .iter()
            .filter(|o| o.shape[1] > 0)
            .map(|o| o.shape[1] as usize)
            .collect();
        if !fixed.is_empty() {
            let lens: Vec<usize> = outputs
                .iter()
                .map(|o| (o.shape[1].max(0) as usize).saturating_mul(o.shape[2] as usize))
                .collect();
            dec.layout(size, size, &lens).map_err(bad)?;
        }
        Ok(dec)
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Bins per box side.
    pub fn bins(&self) -> usize {
        self.bins
    }

    /// The levels worked out by the last [`Self::layout`].
    pub fn levels(&self) -> &[LevelInfo] {
        &self.levels
    }

    /// Works out which output holds which level for an `in_w`×`in_h` input, from the outputs'
    /// lengths. Kept while the input size and the lengths of the outputs it reads stay the same
    /// (a model's run may hand back outputs of other lengths than its last: they are laid out
    /// again, or refused).
    pub fn layout(&mut self, in_w: usize, in_h: usize, lens: &[usize]) -> Result<(), String> {
        let fits = |lv: &LevelInfo| {
            lens.get(lv.scores) == Some(&lv.cells.saturating_mul(self.classes))
                && lens.get(lv.boxes) == Some(&lv.cells.saturating_mul(self.bins * 4))
        };
        if self.levels_for == (in_w, in_h)
            && !self.levels.is_empty()
            && self.levels.iter().all(fits)
        {
            return Ok(());
        }
        self.levels_for = (0, 0);
        self.levels.clear();
        for stride in STRIDES {
            let grid_w = in_w.div_ceil(stride);
            let cells = grid_w * in_h.div_ceil(stride);
            let find = |ch: usize| {
                (0..lens.len().min(self.channels.len()))
                    .find(|&i| self.channels[i] == ch && lens[i] == cells.saturating_mul(ch))
            };
            let (Some(scores), Some(boxes)) = (find(self.classes), find(self.bins * 4)) else {
                return Err(format!(
                    "no class-score/box outputs with {cells} cells for stride {stride} of a {in_w}×{in_h} input"
                ));
            };
            let _ = self.levels.push(LevelInfo {
                stride,
                grid_w,
                cells,
                scores,
                boxes,
            });
        }
        self.levels_for = (in_w, in_h);
        Ok(())
    }

    /// Decodes one image's outputs into `out` (normalised source coordinates). `lb` is the
    /// letterbox the input was made with (its `in_w`×`in_h` is the input size).
    pub fn decode(
        &mut self,
        outputs: &OutputViews<'_>,
        lb: &Letterbox,
        out: &mut Detections,
    ) -> Result<(), String> {
        out.clear();
        let mut lens = heapless::Vec::<usize, { super::MAX_OUTPUTS }>::new();
        for o in outputs.iter() {
            let _ = lens.push(o.len());
        }
        self.layout(lb.in_w, lb.in_h, &lens)?;
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
        Ok(())
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
        assert_eq!(d.levels_for, (416, 416));
        assert_eq!(
            d.levels[0],
            LevelInfo {
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
    fn dynamic_outputs_are_laid_out_per_input_size() {
        let dynamic: Vec<TensorDesc> = outputs(64)
            .into_iter()
            .map(|mut d| {
                d.shape[1] = -1;
                d
            })
            .collect();
        let mut dec = NanodetDecoder::new("m", 64, &dynamic).unwrap();
        assert!(
            dec.levels.is_empty(),
            "no layout before the input size is known"
        );
        // A 64×32 input: stride 8 → 8×4 cells, 16 → 4×2, 32 → 2×1. Outputs in model order
        // (s32, b32, s8, b8, s16, b16) with lengths cells × channels.
        let cells = [2usize, 2, 32, 32, 8, 8];
        let chans = [80usize, 44, 80, 44, 80, 44];
        let mut data: Vec<Vec<f32>> = cells
            .iter()
            .zip(chans)
            .map(|(n, c)| vec![0.0; n * c])
            .collect();
        // Stride 16, cell (row 1, col 2) → point (32, 16): class 0 at 0.8, every side 1 bin = 16.
        let cell = 4 + 2;
        data[4][cell * 80] = 0.8;
        for side in 0..4 {
            data[5][cell * 44 + side * 11 + 1] = 50.0;
        }
        let views: OutputViews = data.iter().map(|v| v.as_slice()).collect();
        let lb = Letterbox::new(64, 32, 64, 32);
        let mut out = Detections::new();
        dec.decode(&views, &lb, &mut out).unwrap();
        assert_eq!(dec.levels_for, (64, 32));
        assert_eq!(out.len(), 1);
        let b = out[0].bbox;
        // (16, 0, 48, 32) in a 64×32 input = (0.25, 0, 0.75, 1).
        assert!(
            (b.x1 - 0.25).abs() < 1e-3
                && b.y1.abs() < 1e-3
                && (b.x2 - 0.75).abs() < 1e-3
                && (b.y2 - 1.0).abs() < 1e-3,
            "{b:?}"
        );
        // The same outputs cannot be read as a 64×64 input.
        let square = Letterbox::new(64, 64, 64, 64);
        assert!(
            dec.decode(&views, &square, &mut out)
                .unwrap_err()
                .contains("stride 8")
        );
    }

    /// Found by the `nanodet` fuzz target: a run whose outputs are shorter than the ones the
    /// layout was worked out for (same input size) made the decoder slice past their end.
    #[test]
    fn outputs_of_other_lengths_than_the_layout_are_an_error_not_a_panic() {
        let descs = outputs(64);
        let mut dec = NanodetDecoder::new("m", 64, &descs).unwrap();
        let lb = Letterbox::new(64, 64, 64, 64);
        let mut out = Detections::new();
        let full: Vec<Vec<f32>> = descs
            .iter()
            .map(|d| vec![0.9; (d.shape[1] * d.shape[2]) as usize])
            .collect();
        let views: OutputViews = full.iter().map(|v| v.as_slice()).collect();
        dec.decode(&views, &lb, &mut out).unwrap();
        for (i, cut) in [(0, 80), (3, 1), (5, 44)] {
            let mut short = full.clone();
            let n = short[i].len();
            short[i].truncate(n - cut);
            let views: OutputViews = short.iter().map(|v| v.as_slice()).collect();
            let e = dec.decode(&views, &lb, &mut out).unwrap_err();
            assert!(e.contains("no class-score/box outputs"), "{e}");
            let views: OutputViews = full[..5].iter().map(|v| v.as_slice()).collect();
            assert!(dec.decode(&views, &lb, &mut out).is_err(), "five outputs");
        }
        let views: OutputViews = full.iter().map(|v| v.as_slice()).collect();
        dec.decode(&views, &lb, &mut out).unwrap();
    }

    /// Output shapes whose cells × channels overflow are a layout error.
    #[test]
    fn huge_output_shapes_are_an_error_not_an_overflow() {
        let mut descs = outputs(64);
        descs[0].shape[1] = i64::MAX;
        descs[0].shape[2] = 80;
        assert!(NanodetDecoder::new("m", 64, &descs).is_err());
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
        let lb = Letterbox::new(64, 64, 64, 64);
        let mut out = Detections::new();
        dec.decode(&views, &lb, &mut out).unwrap();
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
