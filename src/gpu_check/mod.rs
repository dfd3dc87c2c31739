//! `vigil gpu-check`: probe the GPU and check the fused preprocessing kernel against the CPU
//! reference on NV12 and I420 frames of several sizes; time it. On a box without CUDA it says
//! so and succeeds (the CPU path is used there).

pub mod equality;
pub mod pictures;

use anyhow::{Result, bail};
use cudarc::driver::CudaSlice;
use std::time::Instant;
use vigil_core::model::nanodet::input_spec;
use vigil_core::model::preprocess::{Preprocessor, YuvView};
use vigil_dataplane::gpu::preprocess::{DeviceYuv, GpuPreprocessor, Precision};
use vigil_dataplane::gpu::{GpuProbe, probe};

/// Largest difference allowed between GPU and CPU outputs (normalised units; one 8-bit level
/// is about 0.017).
pub const TOLERANCE: f32 = 1e-3;

/// The clip decoded by NVDEC into CUDA memory, playing into an appsink (the checks pull its
/// frames with [`next_cuda_frame`]).
fn nvdec_sink(clip: &std::path::Path) -> Result<(gstreamer::Pipeline, gstreamer_app::AppSink)> {
    use anyhow::Context;
    use gstreamer::prelude::*;
    let pipeline = vigil_dataplane::ffi::gst_cuda::nvdec_pipeline(
        clip,
        "appsink name=sink sync=false caps=\"video/x-raw(memory:CUDAMemory),format=NV12\"",
    )?;
    let sink = pipeline
        .by_name("sink")
        .context("appsink")?
        .downcast::<gstreamer_app::AppSink>()
        .map_err(|_| anyhow::anyhow!("not an appsink"))?;
    pipeline.set_state(gstreamer::State::Playing)?;
    Ok((pipeline, sink))
}

/// The next NVDEC frame of `sink`, as the camera pipelines hand frames over (CUDA memory).
fn next_cuda_frame(sink: &gstreamer_app::AppSink) -> Result<vigil_dataplane::media::FrameRef> {
    use anyhow::Context;
    let sample = sink
        .try_pull_sample(gstreamer::ClockTime::from_seconds(10))
        .context("no frame from nvh264dec within 10 s")?;
    let caps = sample.caps().context("caps")?;
    let info = gstreamer_video::VideoInfo::from_caps(caps)?;
    if !vigil_dataplane::ffi::gst_cuda::is_cuda_caps(caps) {
        bail!("nvh264dec gave {caps}, not CUDA memory");
    }
    let buffer = sample.buffer_owned().context("buffer")?;
    vigil_dataplane::media::FrameRef::from_buffer(
        0,
        1,
        buffer,
        &info,
        vigil_dataplane::media::frame::CapsMemory::Cuda,
    )
    .context("frame")
}

/// A deterministic test picture: gradients plus a little noise, so every sampling path matters.
/// A 4:2:0 test picture in one host allocation, as [`picture`] makes it.
struct Picture {
    data: Vec<u8>,
    w: usize,
    h: usize,
    u_off: usize,
    v_off: usize,
    uv_stride: usize,
    uv_step: usize,
}

impl Picture {
    fn view(&self) -> YuvView<'_> {
        YuvView {
            width: self.w,
            height: self.h,
            y: &self.data[..self.u_off.min(self.v_off)],
            y_stride: self.w,
            u: &self.data[self.u_off..],
            v: &self.data[self.v_off..],
            uv_stride: self.uv_stride,
            uv_step: self.uv_step,
        }
    }

    /// The same layout over `dev`, a device copy of `data`.
    fn on_device<'a>(&self, dev: &'a CudaSlice<u8>) -> DeviceYuv<'a> {
        DeviceYuv {
            data: dev,
            width: self.w,
            height: self.h,
            y_stride: self.w,
            u_offset: self.u_off,
            v_offset: self.v_off,
            uv_stride: self.uv_stride,
            uv_step: self.uv_step,
        }
    }
}

fn picture(w: usize, h: usize, nv12: bool) -> Picture {
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
        Picture {
            data,
            w,
            h,
            u_off: y_len,
            v_off: y_len + 1,
            uv_stride: 2 * cw,
            uv_step: 2,
        }
    } else {
        data.extend_from_slice(&u);
        data.extend_from_slice(&v);
        Picture {
            data,
            w,
            h,
            u_off: y_len,
            v_off: y_len + cw * ch,
            uv_stride: cw,
            uv_step: 1,
        }
    }
}

/// IEEE half → f32 (for reading the f16 kernel's output).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f32.powi(-24),
        31 if frac == 0.0 => f32::INFINITY,
        31 => f32::NAN,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// One launch for a batch of frames of the given sizes, NV12 and I420 alternating, in f32 and
/// in f16: each image of the batch against the CPU reference of that frame alone. Returns the
/// worst f32 difference; the f16 one is allowed half's rounding on top.
fn check_batch(
    gpu: &GpuPreprocessor,
    cpu: &mut Preprocessor,
    sizes: &[(usize, usize)],
) -> Result<f32> {
    let stream = gpu.stream().clone();
    let mut wants = Vec::new();
    let mut pics = Vec::new();
    let mut devs = Vec::new();
    for (i, &(w, h)) in sizes.iter().enumerate() {
        let pic = picture(w, h, i % 2 == 0);
        let mut want = vec![0.0f32; cpu.input_len()];
        let lb = cpu.run(&pic.view(), &mut want);
        want.truncate(3 * lb.in_w * lb.in_h);
        wants.push(want);
        devs.push(stream.clone_htod(&pic.data)?);
        pics.push(pic);
    }
    let frames: Vec<DeviceYuv> = pics
        .iter()
        .zip(&devs)
        .map(|(pic, dev)| pic.on_device(dev))
        .collect();
    let image = wants[0].len();
    let mut out32 = stream.alloc_zeros::<f32>(image * frames.len())?;
    let mut out16 = stream.alloc_zeros::<u16>(image * frames.len())?;
    gpu.run_batch(&frames, &mut out32, Precision::F32)?;
    gpu.run_batch(&frames, &mut out16, Precision::F16)?;
    let got32 = stream.clone_dtoh(&out32)?;
    let got16 = stream.clone_dtoh(&out16)?;
    let (mut worst32, mut worst16) = (0.0f32, 0.0f32);
    for (k, want) in wants.iter().enumerate() {
        if want.len() != image {
            bail!("batch check: frame {k}'s input size differs from frame 0's");
        }
        for (j, &w) in want.iter().enumerate() {
            worst32 = worst32.max((w - got32[k * image + j]).abs());
            // Half keeps 11 significant bits: rounding adds up to |w| × 2^-11.
            let d16 = (w - f16_to_f32(got16[k * image + j])).abs() - w.abs() * 2f32.powi(-11);
            worst16 = worst16.max(d16);
        }
    }
    println!(
        "batch of {} frames ({}, NV12/I420) in one launch: max |gpu - cpu| f32 {worst32:.2e}, f16 {worst16:.2e} beyond half's rounding",
        frames.len(),
        sizes
            .iter()
            .map(|(w, h)| format!("{w}x{h}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if worst16 > TOLERANCE {
        bail!("f16 preprocessing differs from the CPU reference by {worst16:.2e} beyond rounding");
    }
    Ok(worst32)
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
    let ctx = vigil_dataplane::gpu::context()?;
    let mut worst = 0.0f32;
    for dynamic in [true, false] {
        let spec = input_spec(416, dynamic);
        let t0 = Instant::now();
        let gpu = GpuPreprocessor::new(&ctx, spec, ctx.default_stream())?;
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
                let pic = picture(w, h, nv12);
                let mut want = vec![0.0f32; cpu.input_len()];
                let lb = cpu.run(&pic.view(), &mut want);
                let dev = stream.clone_htod(&pic.data)?;
                let mut out = stream.alloc_zeros::<f32>(cpu.input_len())?;
                let frame = pic.on_device(&dev);
                let glb = gpu.run(&frame, &mut out)?;
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
        // A rectangular input is one size per aspect ratio, so its batch is all 16:9; a square
        // one takes any frame, so its batch mixes aspect ratios (each its own letterbox).
        let sizes: &[(usize, usize)] = if dynamic {
            &[
                (1920, 1080),
                (1280, 720),
                (640, 360),
                (960, 540),
                (2560, 1440),
                (1024, 576),
                (3840, 2160),
                (1600, 900),
            ]
        } else {
            &[
                (1920, 1080),
                (768, 576),
                (1080, 1920),
                (640, 640),
                (333, 201),
                (720, 1280),
                (1280, 720),
                (201, 333),
            ]
        };
        worst = worst.max(check_batch(&gpu, &mut cpu, sizes)?);
        if dynamic {
            let pic = picture(1920, 1080, true);
            let dev = stream.clone_htod(&pic.data)?;
            let mut out = stream.alloc_zeros::<f32>(cpu.input_len())?;
            let frame = pic.on_device(&dev);
            let runs = 500;
            gpu.run(&frame, &mut out)?;
            stream.synchronize()?;
            let t0 = Instant::now();
            for _ in 0..runs {
                gpu.run(&frame, &mut out)?;
            }
            stream.synchronize()?;
            let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(runs);
            let mut cpu_out = vec![0.0f32; cpu.input_len()];
            let view = pic.view();
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

#[cfg(test)]
mod tests {
    #[test]
    fn half_to_float() {
        use super::f16_to_f32;
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
