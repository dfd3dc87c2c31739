//! `vigil detect`: detections in pictures or clip frames, one line each.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vigil_core::analytics::{COCO_CLASSES, Detections};
use vigil_dataplane::detect::Detector;

/// Prints `file frame class score x1 y1 x2 y2` for every detection.
pub fn detect_files(model: &Path, min_score: f32, threads: usize, files: &[PathBuf]) -> Result<()> {
    let mut det = Detector::load(model, threads, 416)?;
    let mut dets = Detections::new();
    for f in files {
        let frames = vigil_dataplane::media::still::decode_file(f, 1, 1)
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
