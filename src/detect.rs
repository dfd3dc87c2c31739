//! One-shot detection on pictures or clip frames, off the live path (`vigil detect`): the same
//! preprocessing, backend and decoder as the live pipeline.

use crate::analytics::{COCO_CLASSES, Detections};
use crate::infer::Backend;
use crate::infer::nanodet::{NanodetDecoder, input_spec};
use crate::infer::onnx::OnnxBackend;
use crate::infer::preprocess::{Preprocessor, YuvView};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

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
    pub fn load(model: &Path, threads: usize, size: usize) -> Result<Self> {
        let backend = OnnxBackend::load_cpu(model, threads)?;
        let (size, dynamic) = crate::infer::nanodet::input_size(backend.inputs(), size)?;
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
    ) -> Result<()> {
        self.decoder.score_threshold = min_score;
        let lb = self.pre.run(frame, &mut self.input);
        let decoder = &mut self.decoder;
        let mut decoded = Ok(());
        self.backend
            .run(&self.input, [1, 3, lb.in_h, lb.in_w], &mut |o| {
                decoded = decoder.decode(o, &lb, out)
            })?;
        decoded.map_err(anyhow::Error::msg)
    }
}

/// Prints `file frame class score x1 y1 x2 y2` for every detection.
pub fn detect_files(model: &Path, min_score: f32, threads: usize, files: &[PathBuf]) -> Result<()> {
    let mut det = Detector::load(model, threads, 416)?;
    let mut dets = Detections::new();
    for f in files {
        let frames = crate::media::still::decode_file(f, 1, 1)
            .map_err(anyhow::Error::msg)
            .with_context(|| f.display().to_string())?;
        for (i, fr) in frames.iter().enumerate() {
            det.detect(&fr.view(), min_score, &mut dets)?;
            for d in &dets {
                println!(
                    "{} {i} {} {:.3} {:.3} {:.3} {:.3} {:.3}",
                    f.display(),
                    COCO_CLASSES
                        .get(d.class_id as usize)
                        .unwrap_or(&"?")
                        .replace(' ', "_"),
                    d.score,
                    d.bbox.x1,
                    d.bbox.y1,
                    d.bbox.x2,
                    d.bbox.y2
                );
            }
        }
    }
    Ok(())
}
