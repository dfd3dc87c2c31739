//! `vigil gpu-check`: probe the GPU and check the fused preprocessing kernel against the CPU
//! reference on NV12 and I420 frames of several sizes; time it. On a box without CUDA it says
//! so and succeeds (the CPU path is used there).

use super::preprocess::{DeviceYuv, GpuPreprocessor};
use super::{GpuProbe, probe};
use crate::infer::nanodet::input_spec;
use crate::infer::preprocess::{Preprocessor, YuvView};
use anyhow::{Result, bail};
use std::time::Instant;

/// Largest difference allowed between GPU and CPU outputs (normalised units; one 8-bit level
/// is about 0.017).
pub const TOLERANCE: f32 = 1e-3;

/// A deterministic test picture: gradients plus a little noise, so every sampling path matters.
fn picture(w: usize, h: usize, nv12: bool) -> (Vec<u8>, usize, usize, usize, usize) {
    let mut seed = 0x2545_f491_u32;
    let mut noise = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        (seed % 23) as i32 - 11
    };
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut data = Vec::with_capacity(w * h + 2 * cw * ch);
    for r in 0..h {
        for c in 0..w {
            data.push((16 + (c * 200 / w + r * 19 / h) as i32 + noise()).clamp(0, 255) as u8);
        }
    }
    let u: Vec<u8> = (0..cw * ch)
        .map(|i| (90 + (i % cw) * 80 / cw) as u8)
        .collect();
    let v: Vec<u8> = (0..cw * ch)
        .map(|i| (170 - (i / cw) * 80 / ch) as u8)
        .collect();
    let y_len = w * h;
    if nv12 {
        for (a, b) in u.iter().zip(&v) {
            data.push(*a);
            data.push(*b);
        }
        (data, y_len, y_len + 1, 2 * cw, 2)
    } else {
        data.extend_from_slice(&u);
        data.extend_from_slice(&v);
        (data, y_len, y_len + cw * ch, cw, 1)
    }
}

/// Returns whether a GPU was there (and checked).
pub fn run() -> Result<bool> {
    let GpuProbe::Available {
        name,
        compute_capability,
        memory_mib,
    } = probe()
    else {
        let GpuProbe::Unavailable(why) = probe() else {
            unreachable!()
        };
        println!("GPU: unavailable ({why}); the CPU path is used");
        return Ok(false);
    };
    println!(
        "GPU: {name}, compute capability {}.{}, {memory_mib} MiB",
        compute_capability.0, compute_capability.1
    );
    let ctx = super::context().map_err(anyhow::Error::msg)?;
    let mut worst = 0.0f32;
    for dynamic in [true, false] {
        let spec = input_spec(416, dynamic);
        let t0 = Instant::now();
        let gpu =
            GpuPreprocessor::new(&ctx, spec, ctx.default_stream()).map_err(anyhow::Error::msg)?;
        if dynamic {
            println!(
                "kernel compiled by NVRTC in {:.0} ms",
                t0.elapsed().as_secs_f64() * 1000.0
            );
        }
        let stream = gpu.stream().clone();
        let mut cpu = Preprocessor::new(spec);
        for (w, h) in [
            (768, 576),
            (1920, 1080),
            (640, 272),
            (1280, 720),
            (333, 201),
        ] {
            for nv12 in [true, false] {
                let (data, u_off, v_off, uv_stride, uv_step) = picture(w, h, nv12);
                let view = YuvView {
                    width: w,
                    height: h,
                    y: &data[..u_off.min(v_off)],
                    y_stride: w,
                    u: &data[u_off..],
                    v: &data[v_off..],
                    uv_stride,
                    uv_step,
                };
                let mut want = vec![0.0f32; cpu.input_len()];
                let lb = cpu.run(&view, &mut want);
                let dev = stream.clone_htod(&data)?;
                let mut out = stream.alloc_zeros::<f32>(cpu.input_len())?;
                let frame = DeviceYuv {
                    data: &dev,
                    width: w,
                    height: h,
                    y_stride: w,
                    u_offset: u_off,
                    v_offset: v_off,
                    uv_stride,
                    uv_step,
                };
                let glb = gpu.run(&frame, &mut out).map_err(anyhow::Error::msg)?;
                let got = stream.clone_dtoh(&out)?;
                let n = 3 * lb.in_w * lb.in_h;
                let diff = want[..n]
                    .iter()
                    .zip(&got[..n])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                worst = worst.max(diff);
                println!(
                    "{:>9} {w}x{h} {} → {}x{}: max |gpu - cpu| = {diff:.2e}{}",
                    if dynamic { "rect" } else { "square" },
                    if nv12 { "NV12" } else { "I420" },
                    glb.in_w,
                    glb.in_h,
                    if glb != lb {
                        " (LETTERBOX DIFFERS)"
                    } else {
                        ""
                    }
                );
                if glb != lb {
                    bail!("GPU and CPU letterboxes differ: {glb:?} vs {lb:?}");
                }
            }
        }
        if dynamic {
            let (data, u_off, v_off, uv_stride, uv_step) = picture(1920, 1080, true);
            let dev = stream.clone_htod(&data)?;
            let mut out = stream.alloc_zeros::<f32>(cpu.input_len())?;
            let frame = DeviceYuv {
                data: &dev,
                width: 1920,
                height: 1080,
                y_stride: 1920,
                u_offset: u_off,
                v_offset: v_off,
                uv_stride,
                uv_step,
            };
            let runs = 500;
            gpu.run(&frame, &mut out).map_err(anyhow::Error::msg)?;
            stream.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..runs {
                gpu.run(&frame, &mut out).map_err(anyhow::Error::msg)?;
            }
            stream.synchronize()?;
            let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
            let mut cpu_out = vec![0.0f32; cpu.input_len()];
            let view = YuvView {
                width: 1920,
                height: 1080,
                y: &data,
                y_stride: 1920,
                u: &data[u_off..],
                v: &data[v_off..],
                uv_stride,
                uv_step,
            };
            let t1 = Instant::now();
            for _ in 0..20 {
                cpu.run(&view, &mut cpu_out);
            }
            let cpu_us = t1.elapsed().as_secs_f64() * 1e6 / 20.0;
            println!(
                "1080p NV12 → 416x256: GPU kernel {us:.1} µs per frame (wall, {runs} back to back), CPU reference {cpu_us:.0} µs"
            );
        }
    }
    println!("worst difference {worst:.2e} (tolerance {TOLERANCE:.0e})");
    if worst > TOLERANCE {
        bail!(
            "GPU preprocessing differs from the CPU reference by {worst:.2e} (> {TOLERANCE:.0e})"
        );
    }
    println!("gpu-check: ok");
    Ok(true)
}
