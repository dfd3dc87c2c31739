//! How the CPU path sizes and cuts a picture before detection: `input_size = "native"` (the
//! network input follows the picture's own size) and `[models.<name>.tiles]` (overlapping tiles
//! and the whole picture, their boxes merged: [`vigil_core::analytics::tiles`]). Shared by the
//! analysis worker and `vigil detect`.

use std::time::Instant;
use vigil_core::analytics::{Detections, tiles};
use vigil_core::config::{InputSize, TilesConfig};
use vigil_core::model::nanodet::NanodetDecoder;
use vigil_core::model::preprocess::{Preprocessor, YuvView};
use vigil_core::model::{Backend, InferError};

/// How the CPU path sizes and cuts each frame: `input_size = "native"` (the input side follows
/// the picture) and `[models.<name>.tiles]`.
pub struct Sizing {
    input_size: InputSize,
    tiles: Option<TilesConfig>,
    /// One pass's detections (the whole frame's or a tile's), reused from frame to frame.
    pass: Detections,
}

impl Sizing {
    pub fn new(input_size: InputSize, tiles: Option<TilesConfig>) -> Self {
        Self {
            input_size,
            tiles,
            pass: Detections::new(),
        }
    }
}

/// Detections of one picture on the CPU path: preprocessing → backend → decoding (non-finite
/// outputs refused), on the whole picture or on each tile (and the whole picture) with the
/// passes' boxes merged; returns (preprocessing, inference) µs summed over the passes.
#[allow(clippy::too_many_arguments)]
pub fn detect(
    backend: &mut dyn Backend,
    pre: &mut Preprocessor,
    decoder: &mut NanodetDecoder,
    sizing: &mut Sizing,
    yuv: &YuvView<'_>,
    input: &mut Vec<f32>,
    dets: &mut Detections,
) -> Result<(u64, u64), InferError> {
    let size = sizing.input_size;
    let Some(t) = sizing.tiles else {
        return one_pass(backend, pre, decoder, size, yuv, input, dets);
    };
    let (mut pre_us, mut inf_us) = (0, 0);
    dets.clear();
    if t.full_frame {
        (pre_us, inf_us) = one_pass(backend, pre, decoder, size, yuv, input, dets)?;
    }
    let (w, h) = (yuv.width, yuv.height);
    for tile in layout(w, h, &t) {
        let view = yuv.crop(tile.x, tile.y, tile.w, tile.h);
        let (p, i) = one_pass(backend, pre, decoder, size, &view, input, &mut sizing.pass)?;
        pre_us += p;
        inf_us += i;
        tiles::add_tile_pass(dets, &mut sizing.pass, &tile, w, h, t.full_frame);
    }
    Ok((pre_us, inf_us))
}

/// The tiles of a `w`×`h` frame for `t` (the CPU path here, the GPU path in `gpu/detector.rs`).
pub(crate) fn layout(
    w: usize,
    h: usize,
    t: &TilesConfig,
) -> heapless::Vec<tiles::Tile, { tiles::MAX_TILES }> {
    tiles::layout(w, h, t.grid[0] as usize, t.grid[1] as usize, t.overlap)
}

/// Detection on one picture (a frame or a tile of it) into `dets`.
fn one_pass(
    backend: &mut dyn Backend,
    pre: &mut Preprocessor,
    decoder: &mut NanodetDecoder,
    size: InputSize,
    yuv: &YuvView<'_>,
    input: &mut Vec<f32>,
    dets: &mut Detections,
) -> Result<(u64, u64), InferError> {
    if size == InputSize::Native {
        pre.set_size(size.for_picture(yuv.width, yuv.height));
    }
    if input.len() < pre.input_len() {
        input.resize(pre.input_len(), 0.0);
    }
    let t_pre = Instant::now();
    let lb = pre.run(yuv, input);
    let pre_us = t_pre.elapsed().as_micros() as u64;
    let t0 = Instant::now();
    let mut decoded = Ok(());
    let shape = [1, 3, lb.in_h, lb.in_w];
    backend
        .run(input, shape, &mut |outs| {
            decoded = match outs.iter().all(|o| o.iter().all(|v| v.is_finite())) {
                true => decoder.decode(outs, &lb, dets),
                false => Err("the model returned non-finite values".into()),
            }
        })
        .and_then(|()| decoded.map_err(InferError::Run))?;
    Ok((pre_us, t0.elapsed().as_micros() as u64))
}
