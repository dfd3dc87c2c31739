//! `vigil gpu-check --pictures`: the GPU renderer and nvJPEG against the CPU renderer and the CPU
//! encoder on the same frames.
//!
//! 1. Synthetic frames (NV12 and I420, odd and even sizes) uploaded to the device, scaled and
//!    drawn by the kernels, copied back: **byte for byte** the CPU renderer's picture (the two
//!    share their arithmetic, so no tolerance is needed or allowed).
//! 2. NVDEC frames of a clip in CUDA memory (the production path: `Picturer` maps them) against
//!    the same frames decoded on the CPU (H.264 decoding is bit-exact): again byte for byte.
//! 3. nvJPEG against the CPU encoder on those identical pictures, both decoded again: JPEG is
//!    lossy and the two encoders round their DCTs differently, so they cannot agree exactly.
//!    The tolerance: the nvJPEG picture must be as faithful to the drawn picture as the CPU
//!    encoder's (PSNR against it at most 1 dB lower), and the two decoded JPEGs must agree
//!    within 35 dB PSNR (differences of about one level on average), and the highlighted box
//!    must be red in the nvJPEG picture where the CPU renderer drew it.
//! 4. Time per annotated JPEG from a 1080p frame at 1280x720 and 640x360: GPU wall time and
//!    the process's CPU time per picture, against the CPU path on the same frame; device→host
//!    bytes (JPEG bytes only, pixel bytes 0).

use anyhow::{Context, Result, bail};
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;
use vigil_core::analytics::BBox;
use vigil_core::analytics::rules::RuleEngine;
use vigil_core::analytics::tracker::TrackView;
use vigil_core::config::{LineConfig, ZoneConfig};
use vigil_core::overlay::{DrawList, Picture420, Scene};
use vigil_dataplane::gpu::picture::{GpuPicturer, Output};
use vigil_dataplane::gpu::preprocess::DevicePlanes;
use vigil_dataplane::picture::{PictureSettings, Picturer, STATS, encode_cpu};

/// The nvJPEG picture may be this much less faithful (PSNR, dB) than the CPU encoder's.
const FAITHFUL_DB: f64 = 1.0;
/// The two decoded JPEGs agree at least this well (PSNR, dB).
const AGREE_DB: f64 = 35.0;
const QUALITY: u8 = 80;

struct Scenery {
    rules: RuleEngine,
    tracks: Vec<TrackView>,
}

fn scenery() -> Result<Scenery> {
    let zone: ZoneConfig = toml::from_str(
        "name = \"door\"\npolygon = [[0.1, 0.5], [0.45, 0.55], [0.4, 0.95], [0.05, 0.9]]",
    )?;
    let line: LineConfig =
        toml::from_str("name = \"crosswalk\"\nfrom = [0.55, 0.1]\nto = [0.7, 0.9]")?;
    let t = |id: u64, b: [f32; 4], class_id: u16| TrackView {
        id,
        bbox: BBox::new(b[0], b[1], b[2], b[3]),
        score: 0.42 + id as f32 / 100.0,
        class_id,
        hits: 3,
        mean_score: 0.42 + id as f32 / 100.0,
    };
    Ok(Scenery {
        rules: RuleEngine::new(&[zone], &[line], 0.3),
        tracks: vec![
            t(7, [0.6, 0.2, 0.8, 0.6], 0),
            t(9, [0.05, 0.05, 0.3, 0.3], 2),
            t(12, [-0.1, 0.7, 0.2, 1.1], 0),
            t(123_456, [0.85, 0.4, 1.05, 0.75], 0),
        ],
    })
}

impl Scenery {
    fn scene(&self) -> Scene<'_> {
        Scene {
            camera: "gpu-check ÄÖ",
            clock: "2026-12-06 06:00:00Z",
            tracks: &self.tracks,
            highlight: &[7],
            rules: Some(&self.rules),
        }
    }
}

fn diff_bytes(a: &Picture420, b: &Picture420) -> usize {
    let d = |x: &[u8], y: &[u8]| x.iter().zip(y).filter(|(p, q)| p != q).count();
    d(&a.y, &b.y) + d(&a.u, &b.u) + d(&a.v, &b.v)
}

fn decode(jpeg: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let mut d = zune_jpeg::JpegDecoder::new(jpeg);
    let rgb = d.decode().context("decoding a JPEG")?;
    let info = d.info().context("JPEG info")?;
    Ok((rgb, info.width as usize, info.height as usize))
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// The drawn picture as RGB (full range, chroma repeated: what a JPEG of it would decode to
/// without loss).
fn reference_rgb(p: &Picture420) -> Vec<u8> {
    let (ly, lc) = &vigil_dataplane::picture::LUTS;
    let w = p.width as usize;
    let mut out = Vec::with_capacity(p.y.len() * 3);
    for (i, &y) in p.y.iter().enumerate() {
        let (x, r) = (i % w, i / w);
        let c = (r / 2) * (w / 2) + x / 2;
        let y = f64::from(ly[y as usize]);
        let cb = f64::from(lc[p.u[c] as usize]) - 128.0;
        let cr = f64::from(lc[p.v[c] as usize]) - 128.0;
        for v in [
            y + 1.402 * cr,
            y - 0.344136 * cb - 0.714136 * cr,
            y + 1.772 * cb,
        ] {
            out.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    out
}

/// Compares the nvJPEG and CPU JPEGs of `pic` (the CPU renderer's); returns a report line.
fn compare_jpegs(gpu_jpeg: &[u8], pic: &Picture420, what: &str) -> Result<String> {
    let mut out = Vec::new();
    let cpu_jpeg = encode_cpu(pic, QUALITY, &mut out)?;
    let (g, gw, gh) = decode(gpu_jpeg)?;
    let (c, _, _) = decode(&cpu_jpeg.bytes)?;
    if (gw, gh) != (pic.width as usize, pic.height as usize) {
        bail!(
            "{what}: nvJPEG picture is {gw}x{gh}, expected {}x{}",
            pic.width,
            pic.height
        );
    }
    let reference = reference_rgb(pic);
    let (pg, pc, agree) = (psnr(&g, &reference), psnr(&c, &reference), psnr(&g, &c));
    let line = format!(
        "{what}: nvJPEG {} B vs CPU {} B; PSNR vs the drawn picture: nvJPEG {pg:.2} dB, CPU {pc:.2} dB; nvJPEG vs CPU {agree:.2} dB",
        gpu_jpeg.len(),
        cpu_jpeg.bytes.len()
    );
    if pg < pc - FAITHFUL_DB || agree < AGREE_DB {
        bail!("{line}: outside the tolerance ({FAITHFUL_DB} dB, {AGREE_DB} dB)");
    }
    Ok(line)
}

/// Runs the checks and the timing; fails on any difference beyond the tolerances above.
pub fn run(clip: &Path, frames: usize) -> Result<()> {
    let rt = vigil_dataplane::gpu::runtime()?;
    let t0 = Instant::now();
    let mut gpu = GpuPicturer::new(&rt.ctx, QUALITY)?;
    println!(
        "pictures: renderer made in {:.0} ms (kernels compiled by NVRTC); JPEG: {}",
        t0.elapsed().as_secs_f64() * 1000.0,
        match gpu.nvjpeg() {
            None => {
                let l = vigil_dataplane::ffi::nvjpeg::library()?;
                format!(
                    "nvJPEG {} {}.{}.{}",
                    l.name, l.version.0, l.version.1, l.version.2
                )
            }
            Some(why) => bail!("nvJPEG is not available: {why}"),
        }
    );
    let s = scenery()?;
    let stream = rt.ctx.default_stream();
    let mut list = DrawList::new();
    // 1. Synthetic frames, byte for byte.
    let mut host = Picture420::new(2, 2);
    for (sw, sh) in [
        (1920, 1080),
        (768, 576),
        (333, 201),
        (1280, 720),
        (3840, 2160),
    ] {
        for nv12 in [true, false] {
            let f = super::picture(sw, sh, nv12);
            let dev = stream.clone_htod(&f.data)?;
            let yuv = f.on_device(&dev);
            let (planes, _sync) = DevicePlanes::of_yuv(&yuv, &stream)?;
            for max_w in [1280, 640, 101] {
                let (w, h) = Picture420::fit(sw as u32, sh as u32, max_w);
                let mut cpu = Picture420::new(w, h);
                cpu.scale_from(&f.view());
                list.build(&s.scene(), w, h);
                cpu.draw(&list);
                gpu.render(&planes, Some(&list), w, h, Output::Host(&mut host))?;
                let d = diff_bytes(&cpu, &host);
                println!(
                    "{sw}x{sh} {} → {w}x{h}, {} primitives: {d} bytes differ",
                    if nv12 { "NV12" } else { "I420" },
                    list.prims().len()
                );
                if d > 0 {
                    bail!("the GPU renderer differs from the CPU renderer");
                }
                if max_w == 1280 {
                    let mut jpeg = Vec::new();
                    gpu.render(
                        &planes,
                        Some(&list),
                        w,
                        h,
                        Output::Jpeg {
                            quality: QUALITY,
                            out: &mut jpeg,
                        },
                    )?;
                    println!("  {}", compare_jpegs(&jpeg, &cpu, "  JPEG")?);
                }
            }
        }
    }
    // 2. NVDEC frames through the production path, against the same frames decoded on the CPU.
    nvdec(clip, frames, &s)?;
    // 3. Time per picture.
    timing(&mut gpu, &s)?;
    Ok(())
}

fn nvdec(clip: &Path, frames: usize, s: &Scenery) -> Result<()> {
    let cpu_frames = vigil_dataplane::media::still::decode_file(clip, 1, frames)?;
    let (pipeline, sink) = super::nvdec_sink(clip)?;
    let settings = PictureSettings {
        max_width: 1280,
        quality: QUALITY,
    };
    let (mut p, mut cpu_p) = (Picturer::new(settings), Picturer::new(settings));
    let (d2h0, jpegs0) = (
        STATS.gpu_pixel_d2h_bytes.load(Ordering::Relaxed),
        STATS.gpu_jpegs.load(Ordering::Relaxed),
    );
    let mut drawn: Option<Picture420> = None;
    let (mut worst, mut differing) = (f64::INFINITY, 0usize);
    for (k, cf) in cpu_frames.iter().enumerate() {
        let frame = super::next_cuda_frame(&sink)?;
        let scene = s.scene();
        // The annotated JPEG (nvJPEG) and the drawn picture (copied back for the comparison).
        let jpeg = p.picture(&frame, Some(&scene))?;
        p.draw_into(&frame, &scene, 1280, &mut drawn)?;
        let got = drawn.as_ref().context("drawn")?;
        let view = cf.view();
        let (w, h) = Picture420::fit(view.width as u32, view.height as u32, 1280);
        let mut want = Picture420::new(w, h);
        want.scale_from(&view);
        let mut list = DrawList::new();
        list.build(&scene, w, h);
        want.draw(&list);
        differing += diff_bytes(&want, got);
        let (g, _, _) = decode(&jpeg.bytes)?;
        let cpu_jpeg = cpu_p.picture_of(&view, Some(&scene))?;
        let (c, _, _) = decode(&cpu_jpeg.bytes)?;
        worst = worst.min(psnr(&g, &c));
        if k == 0 {
            println!("  {}", compare_jpegs(&jpeg.bytes, &want, "NVDEC frame 0")?);
        }
    }
    let _ = pipeline.set_state(gst::State::Null);
    let d2h = STATS.gpu_pixel_d2h_bytes.load(Ordering::Relaxed) - d2h0;
    println!(
        "NVDEC frames: {} pictures drawn on the GPU vs the CPU renderer on CPU-decoded frames: {differing} bytes differ; nvJPEG vs CPU JPEG worst {worst:.2} dB; {} nvJPEG pictures, pixel bytes copied back {d2h} (all from the comparison's draw_into)",
        cpu_frames.len(),
        STATS.gpu_jpegs.load(Ordering::Relaxed) - jpegs0,
    );
    if differing > 0 || worst < AGREE_DB || cpu_frames.is_empty() {
        bail!("GPU pictures of NVDEC frames differ from the CPU's");
    }
    Ok(())
}

fn timing(gpu: &mut GpuPicturer, s: &Scenery) -> Result<()> {
    let rt = vigil_dataplane::gpu::runtime()?;
    let stream = rt.ctx.default_stream();
    let f = super::picture(1920, 1080, true);
    let dev = stream.clone_htod(&f.data)?;
    let yuv = f.on_device(&dev);
    let (planes, _sync) = DevicePlanes::of_yuv(&yuv, &stream)?;
    let cpu_s =
        || vigil_dataplane::ffi::rusage::cpu_seconds(vigil_dataplane::ffi::rusage::Who::Process);
    let mut list = DrawList::new();
    let mut out = Vec::new();
    for max_w in [1280u32, 640] {
        let (w, h) = Picture420::fit(1920, 1080, max_w);
        list.build(&s.scene(), w, h);
        let runs = 300;
        let mut bytes = 0;
        let mut jpeg = |out: &mut Vec<u8>| {
            gpu.render(
                &planes,
                Some(&list),
                w,
                h,
                Output::Jpeg {
                    quality: QUALITY,
                    out,
                },
            )
        };
        for _ in 0..10 {
            jpeg(&mut out)?;
        }
        let (t0, c0) = (Instant::now(), cpu_s());
        for _ in 0..runs {
            bytes += jpeg(&mut out)?;
        }
        let (ms, cpu_us) = (
            t0.elapsed().as_secs_f64() * 1e3 / f64::from(runs),
            (cpu_s() - c0) * 1e6 / f64::from(runs),
        );
        let mut p = Picturer::new(PictureSettings {
            max_width: max_w,
            quality: QUALITY,
        });
        let cruns = 20;
        let (t1, c1) = (Instant::now(), cpu_s());
        for _ in 0..cruns {
            p.picture_of(&f.view(), Some(&s.scene()))?;
        }
        let (cms, ccpu) = (
            t1.elapsed().as_secs_f64() * 1e3 / f64::from(cruns),
            (cpu_s() - c1) * 1e6 / f64::from(cruns),
        );
        println!(
            "1080p → {w}x{h} annotated JPEG q{QUALITY}: GPU {ms:.3} ms wall and {cpu_us:.0} µs CPU per picture ({} B, {runs} back to back, the only device→host bytes); CPU path {cms:.2} ms wall, {ccpu:.0} µs CPU",
            bytes / runs as usize
        );
    }
    Ok(())
}
