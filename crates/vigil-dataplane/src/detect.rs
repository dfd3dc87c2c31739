//! One-shot detection on pictures or clip frames, off the live path (`vigil detect`, the GPU
//! check's reference, tests): the same preprocessing, backend and decoder as the live pipeline.

use crate::onnx::{OnnxBackend, OnnxError};
use std::path::Path;
use vigil_core::analytics::Detections;
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
    input: Vec<f32>,
}

impl Detector {
    /// Loads a NanoDet model; `size` is the input's (long) side, used when the model's input
    /// size is dynamic.
    pub fn load(model: &Path, threads: usize, size: usize) -> Result<Self, LoadError> {
        let backend = OnnxBackend::load_cpu(model, threads)?;
        let (size, dynamic) = vigil_core::model::nanodet::input_size(backend.inputs(), size)?;
        let decoder = NanodetDecoder::new(&model.display().to_string(), size, backend.outputs())?;
        let pre = Preprocessor::new(input_spec(size, dynamic));
        let input = vec![0.0; pre.input_len()];
        Ok(Self {
            backend,
            pre,
            decoder,
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
        let lb = self.pre.run(frame, &mut self.input);
        let decoder = &mut self.decoder;
        let mut decoded = Ok(());
        self.backend
            .run(&self.input, [1, 3, lb.in_h, lb.in_w], &mut |o| {
                decoded = decoder.decode(o, &lb, out)
            })?;
        decoded.map_err(InferError::Output)
    }
}
