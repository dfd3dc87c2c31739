//! `vigil bench --pictures`: the CPU cost of what a person sees, on decoded frames of real
//! clips with the model's real detections drawn: an event snapshot (`[snapshots]` defaults:
//! 1280 wide, quality 80), a live picture (640 wide, quality 70) and the same at 360 lines,
//! each as scale + draw + JPEG on one thread, against one inference of the same frame in the
//! same run (the ratio is what carries to other machines).

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;
use vigil_core::analytics::Detections;
use vigil_core::analytics::rules::RuleEngine;
use vigil_core::analytics::tracker::TrackView;
use vigil_core::overlay::Scene;
use vigil_dataplane::picture::{PictureSettings, Picturer};

/// One output size: its label, width, quality.
const OUTPUTS: [(&str, u32, u8); 3] = [
    ("snapshot 1280w q80", 1280, 80),
    ("live 640w q70", 640, 70),
    ("live 480w q70 (360 lines of 16:9)", 480, 70),
];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn p90(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 9 / 10).copied().unwrap_or(f64::NAN)
}

/// Runs the bench on `clips` (frames every `every`-th, at most `frames`) with `model`'s
/// detections and the rules of `rules` drawn.
pub fn run(clips: &[PathBuf], model: &Path, rules: &Path, frames: usize) -> Result<()> {
    let text = std::fs::read_to_string(rules).with_context(|| rules.display().to_string())?;
    #[derive(serde::Deserialize)]
    struct Rules {
        cameras: Vec<vigil_core::config::CameraConfig>,
    }
    let cam: Rules = toml::from_str(&format!(
        "[[cameras]]\nname = \"bench\"\nurl = \"file:///x\"\nmodel = \"m\"\n{}",
        text.replacen("[[cameras]]", "", 1)
    ))
    .context("rules")?;
    let cam = &cam.cameras[0];
    let engine = RuleEngine::new(&cam.zones, &cam.lines, 0.3);
    let mut det = vigil_dataplane::detect::Detector::load(model, 1, 416)?;
    println!(
        "| source | output | picture | µs per picture (median / p90) | KB | vs one inference (1 thread) |"
    );
    println!("|---|---|---|---|---|---|");
    for clip in clips {
        let decoded = vigil_dataplane::media::still::decode_file(clip, 10, frames)
            .with_context(|| clip.display().to_string())?;
        let Some(first) = decoded.first() else {
            continue;
        };
        let (sw, sh) = (first.width, first.height);
        // Detections and inference time per frame.
        let mut infer_us = Vec::new();
        let mut tracks: Vec<Vec<TrackView>> = Vec::new();
        for f in &decoded {
            let mut d = Detections::new();
            let t0 = Instant::now();
            det.detect(&f.view(), 0.4, &mut d)?;
            infer_us.push(t0.elapsed().as_secs_f64() * 1e6);
            tracks.push(
                d.iter()
                    .enumerate()
                    .map(|(i, d)| TrackView {
                        id: 100 + i as u64,
                        bbox: d.bbox,
                        score: d.score,
                        class_id: d.class_id,
                        hits: 3,
                        mean_score: d.score,
                    })
                    .collect(),
            );
        }
        let infer = median(&mut infer_us);
        for (label, width, quality) in OUTPUTS {
            let mut p = Picturer::new(PictureSettings {
                max_width: width,
                quality,
            });
            let mut us = Vec::new();
            let mut bytes = Vec::new();
            let mut size = (0, 0);
            // Twice over the frames: the first pass warms the caches and allocations.
            for pass in 0..2 {
                for (f, t) in decoded.iter().zip(&tracks) {
                    let highlight = t.first().map(|t| [t.id]).unwrap_or_default();
                    let scene = Scene {
                        camera: "bench",
                        clock: "2026-12-06 04:00:00Z",
                        tracks: t,
                        highlight: &highlight,
                        rules: Some(&engine),
                    };
                    let t0 = Instant::now();
                    let j = p.picture_of(&f.view(), Some(&scene))?;
                    if pass == 1 {
                        us.push(t0.elapsed().as_secs_f64() * 1e6);
                        bytes.push(j.bytes.len() as f64);
                        size = (j.width, j.height);
                    }
                }
            }
            // Scale and draw alone (the rest is the JPEG encoder).
            let mut draw_us = Vec::new();
            let mut pic = vigil_core::overlay::Picture420::new(size.0, size.1);
            let mut list = vigil_core::overlay::DrawList::new();
            for (f, t) in decoded.iter().zip(&tracks) {
                let scene = Scene {
                    camera: "bench",
                    clock: "2026-12-06 04:00:00Z",
                    tracks: t,
                    highlight: &[],
                    rules: Some(&engine),
                };
                let t0 = Instant::now();
                pic.scale_from(&f.view());
                list.build(&scene, size.0, size.1);
                pic.draw(&list);
                draw_us.push(t0.elapsed().as_secs_f64() * 1e6);
            }
            let d = median(&mut draw_us);
            let (m, q) = (median(&mut us), p90(&mut us));
            println!(
                "| {sw}x{sh} ({} frames) | {label} | {}x{} | {m:.0} / {q:.0} (scale + draw {d:.0}) | {:.0} | {:.1} % |",
                decoded.len(),
                size.0,
                size.1,
                median(&mut bytes) / 1024.0,
                100.0 * m / infer
            );
        }
        println!(
            "| {sw}x{sh} | one inference (NanoDet, ONNX Runtime, 1 thread) | — | {infer:.0} | — | 100 % |"
        );
    }
    Ok(())
}
