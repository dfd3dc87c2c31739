//! Target `nanodet`: a model whose outputs are hostile. The input chooses the model's six output
//! descriptions (shapes that fit NanoDet, nearly fit, or are nonsense: negative, huge, wrong
//! rank), the input size (fixed or dynamic), the camera's frame size, and the length and every
//! value (NaN and infinities included) of each output a run hands back; then the decoder is made
//! (`NanodetDecoder::new`, as at model load) and decodes two runs (as the worker does frame after
//! frame), the second with lengths of its own. A run with a non-finite value is refused by the
//! worker before it is decoded (`worker.rs`), and so here.
//!
//! Checked: no panic, and every detection lies in the frame with a finite score.

use vigil_core::analytics::Detections;
use vigil_core::model::nanodet::{NanodetDecoder, STRIDES, input_spec};
use vigil_core::model::preprocess::Letterbox;
use vigil_core::model::{OutputViews, TensorDesc};

/// Most floats of all outputs of one run together.
const MAX_FLOATS: usize = 1 << 20;

/// Reads the input as a stream of choices; zeros once it is used up.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn i64(&mut self) -> i64 {
        let mut b = [0u8; 8];
        b.iter_mut().for_each(|x| *x = self.u8());
        i64::from_le_bytes(b)
    }
}

/// Cells of one level for an `w`×`h` input.
fn cells(level: usize, w: usize, h: usize) -> usize {
    let s = STRIDES[level % 3];
    w.div_ceil(s) * h.div_ceil(s)
}

/// A channel count: a usual one (80 classes, 4 × 11 or 4 × 8 bins) or any.
fn channels(b: &mut Bytes) -> i64 {
    match b.u8() % 6 {
        0 | 1 => 80,
        2 | 3 => 44,
        4 => 32,
        _ => i64::from(b.u16() as i16),
    }
}

/// The length of one output of a run: what its shape says, one level's cells for its channels,
/// or any length.
fn run_len(b: &mut Bytes, desc: &TensorDesc, w: usize, h: usize) -> usize {
    let ch = desc.shape.get(2).copied().unwrap_or(1).clamp(1, 4096) as usize;
    match b.u8() % 4 {
        0 => {
            let n = desc.shape.get(1).copied().unwrap_or(0).clamp(0, 1 << 20) as usize;
            n * ch
        }
        1 | 2 => cells(b.u8() as usize, w, h) * ch,
        _ => b.u16() as usize,
    }
}

pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let size = 32 * (1 + usize::from(b.u8() % 20));
    let dynamic = b.u8() % 2 == 0;
    let mut descs = Vec::new();
    for i in 0..6 {
        let rank = match b.u8() % 16 {
            0 => 2,
            1 => 4,
            _ => 3,
        };
        let n = match b.u8() % 5 {
            0 | 1 if dynamic => -1,
            0..=2 => cells(i / 2, size, size) as i64,
            3 => i64::from(b.u16() as i16),
            _ => b.i64(),
        };
        let c = channels(&mut b);
        let mut shape = vec![1, n, c];
        shape.resize(rank, 1);
        descs.push(TensorDesc {
            name: format!("out{i}"),
            shape,
        });
    }
    let Ok(mut decoder) = NanodetDecoder::new("fuzz.onnx", size, &descs) else {
        return;
    };
    let (src_w, src_h) = (
        1 + usize::from(b.u16() % 4096),
        1 + usize::from(b.u16() % 4096),
    );
    let (in_w, in_h) = input_spec(size, dynamic).input_dims(src_w, src_h);
    let lb = Letterbox::new(src_w, src_h, in_w, in_h);
    for _run in 0..2 {
        let lens: Vec<usize> = descs
            .iter()
            .map(|d| run_len(&mut b, d, in_w, in_h))
            .collect();
        if lens.iter().sum::<usize>() > MAX_FLOATS {
            return;
        }
        let values: Vec<Vec<f32>> = lens
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| match b.u8() % 8 {
                        0 => 0.0,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => f32::NAN,
                        4 => 1.0,
                        _ => f32::from(b.u16() as i16) / 1024.0,
                    })
                    .collect()
            })
            .collect();
        // The worker refuses a run with a non-finite value before decoding (counted as a
        // malformed output): the decoder's contract starts there.
        if !values.iter().flatten().all(|v| v.is_finite()) {
            continue;
        }
        let views: OutputViews<'_> = values.iter().map(Vec::as_slice).collect();
        let mut out = Detections::new();
        if decoder.decode(&views, &lb, &mut out).is_err() {
            continue;
        }
        for d in &out {
            assert!(d.score.is_finite(), "score {}", d.score);
            let bb = &d.bbox;
            for v in [bb.x1, bb.y1, bb.x2, bb.y2] {
                assert!((0.0..=1.0).contains(&v), "box {bb:?} outside the frame");
            }
        }
    }
}
