//! One-shot detection on pictures or clip frames, off the live path (`vigil detect`, the GPU
//! check's reference, tests): the same preprocessing, backend and decoder as the live pipeline.

use crate::onnx::{OnnxBackend, OnnxError};
use crate::sized::Sizing;
use std::path::Path;
use vigil_core::analytics::Detections;
use vigil_core::config::{InputSize, TilesConfig};
use vigil_core::model::Backend;
use vigil_core::model::InferError;
use vigil_core::model::nanodet::{NanodetDecoder, input_spec};
use vigil_core::model::preprocess::{Preprocessor, YuvView};

/// Why a model could not be loaded for detection.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// ONNX Runtime could not load it.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// Its inputs or outputs do not fit NanoDet.
    #[error(transparent)]
    Layout(#[from] InferError),
}

/// A loaded NanoDet model with its preprocessing and decoder.
pub struct Detector {
    backend: OnnxBackend,
    pre: Preprocessor,
    decoder: NanodetDecoder,
    sizing: Sizing,
    input: Vec<f32>,
}

impl Detector {
    /// Loads a NanoDet model; `size` is the input's (long) side, used when the model's input
    /// size is dynamic.
    pub fn load(model: &Path, threads: usize, size: usize) -> Result<Self, LoadError> {
        Self::load_sized(model, threads, InputSize::Pixels(size as u32), None)
    }

    /// Loads a NanoDet model to detect as a `[models.<name>]` table with these `input_size`
    /// and `tiles` would (`"native"` needs a model of dynamic input size).
    pub fn load_sized(
        model: &Path,
        threads: usize,
        size: InputSize,
        tiles: Option<TilesConfig>,
    ) -> Result<Self, LoadError> {
        let backend = OnnxBackend::load_cpu(model, threads)?;
        let (side, dynamic) = vigil_core::model::nanodet::input_size(
            backend.inputs(),
            size.pixels().unwrap_or(416) as usize,
        )?;
        if size == InputSize::Native && !dynamic {
            return Err(LoadError::Layout(InferError::Run(format!(
                "input_size \"native\" needs a model that takes any input size; this one is fixed at {side}×{side}"
            ))));
        }
        let decoder = NanodetDecoder::new(&model.display().to_string(), side, backend.outputs())?;
        let pre = Preprocessor::new(input_spec(side, dynamic));
        let input = vec![0.0; pre.input_len()];
        Ok(Self {
            backend,
            pre,
            decoder,
            sizing: Sizing::new(size, tiles),
            input,
        })
    }

    /// Detections scoring at least `min_score` in one frame.
    pub fn detect(
        &mut self,
        frame: &YuvView<'_>,
        min_score: f32,
        out: &mut Detections,
    ) -> Result<(), InferError> {
        self.decoder.score_threshold = min_score;
        crate::sized::detect(
            &mut self.backend,
            &mut self.pre,
            &mut self.decoder,
            &mut self.sizing,
            frame,
            &mut self.input,
            out,
        )
        .map(|_| ())
    }
}
