//! `vigil detect`: detections in pictures or clip frames, one line each.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use vigil_core::analytics::{COCO_CLASSES, Detections};
use vigil_core::config::{InputSize, TilesConfig};
use vigil_dataplane::detect::Detector;

/// `--input-size`: a side in pixels (a multiple of 32, 32..=2048) or "native".
pub fn parse_input_size(s: &str) -> Result<InputSize, String> {
    if s == "native" {
        return Ok(InputSize::Native);
    }
    match s.parse::<u32>() {
        Ok(n) if (32..=2048).contains(&n) && n.is_multiple_of(32) => Ok(InputSize::Pixels(n)),
        _ => Err(format!(
            "{s:?}: expected a multiple of 32 from 32 to 2048, or \"native\""
        )),
    }
}

/// `--tiles`: `COLSxROWS`, 1 to 4 each, at least two tiles.
pub fn parse_grid(s: &str) -> Result<[u32; 2], String> {
    let bad =
        || format!("{s:?}: expected COLSxROWS, 1 to 4 each and at least two tiles (e.g. 2x1)");
    let (c, r) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    let (c, r) = (
        c.parse::<u32>().map_err(|_| bad())?,
        r.parse::<u32>().map_err(|_| bad())?,
    );
    if (1..=4).contains(&c) && (1..=4).contains(&r) && c * r >= 2 {
        Ok([c, r])
    } else {
        Err(bad())
    }
}

/// Prints `file frame class score x1 y1 x2 y2` for every detection.
pub fn detect_files(
    model: &Path,
    min_score: f32,
    threads: usize,
    input_size: InputSize,
    tiles: Option<TilesConfig>,
    files: &[PathBuf],
) -> Result<()> {
    if let Some(t) = &tiles
        && !(0.0..=0.5).contains(&t.overlap)
    {
        anyhow::bail!("--tile-overlap {}: expected 0 to 0.5", t.overlap);
    }
    let mut det = Detector::load_sized(model, threads, input_size, tiles)?;
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
