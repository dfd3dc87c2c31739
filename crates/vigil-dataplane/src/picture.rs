//! Pictures of what a camera saw: a frame scaled down to a separate picture (never the
//! inference input), the overlay drawn on it (the core's [`DrawList`]), encoded as JPEG.
//!
//! The CPU path: host frames (I420/NV12) → [`Picture420::scale_from`] → [`Picture420::draw`] →
//! `jpeg-encoder` (full-range YCbCr, 4:2:0). Frames in device memory (NVDEC, NVMM) go through
//! the GPU renderer ([`crate::gpu::picture`], made on the first such frame) with the same draw
//! list and the same arithmetic, and nvJPEG: only the JPEG's bytes cross to the host. Without
//! nvJPEG the drawn picture is copied to the host and encoded here (counted as pixel bytes);
//! without a GPU runtime such a request is counted as `unsupported`.
//!
//! Allocated once per [`Picturer`] (the picture, the list, the output buffer); each JPEG is one
//! shared allocation ([`Jpeg::bytes`]) handed to whoever publishes or stores it.

use crate::media::FrameRef;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use vigil_core::model::preprocess::YuvView;
use vigil_core::overlay::{DrawList, Picture420, Scene};

/// Pictures of other sizes a [`Picturer`] keeps for reuse.
const SPARE_PICTURES: usize = 4;

/// An encoded picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Jpeg {
    pub bytes: Arc<[u8]>,
    pub width: u32,
    pub height: u32,
}

/// Counters of every picture the process makes (metrics), in one place.
pub static STATS: PictureStats = PictureStats::new();

/// Counters of pictures.
#[derive(Debug, Default)]
pub struct PictureStats {
    /// Pictures with the overlay drawn.
    pub drawn: AtomicU64,
    /// JPEGs made by the CPU encoder, their bytes and the µs spent (scale + draw + encode).
    pub cpu_jpegs: AtomicU64,
    pub cpu_jpeg_bytes: AtomicU64,
    pub cpu_jpeg_us: AtomicU64,
    /// JPEGs made by nvJPEG from pictures drawn on the GPU, their bytes (the only device→host
    /// bytes of such a picture) and the µs spent (map + scale + draw + encode + copy back).
    pub gpu_jpegs: AtomicU64,
    pub gpu_jpeg_bytes: AtomicU64,
    pub gpu_jpeg_us: AtomicU64,
    /// Pixels of pictures drawn on the GPU copied to the host (no nvJPEG, or the re-stream's
    /// software encoder), in bytes: 0 while nvJPEG encodes every picture.
    pub gpu_pixel_d2h_bytes: AtomicU64,
    /// Requests for a frame this path cannot read (device memory) or that failed to encode.
    pub unsupported: AtomicU64,
    pub failed: AtomicU64,
    /// Primitives dropped because a draw list was full.
    pub overflow: AtomicU64,
}

impl PictureStats {
    pub const fn new() -> Self {
        Self {
            drawn: AtomicU64::new(0),
            cpu_jpegs: AtomicU64::new(0),
            cpu_jpeg_bytes: AtomicU64::new(0),
            cpu_jpeg_us: AtomicU64::new(0),
            gpu_jpegs: AtomicU64::new(0),
            gpu_jpeg_bytes: AtomicU64::new(0),
            gpu_jpeg_us: AtomicU64::new(0),
            gpu_pixel_d2h_bytes: AtomicU64::new(0),
            unsupported: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            overflow: AtomicU64::new(0),
        }
    }
}

/// How pictures are made: at most `max_width` wide (never upscaled), JPEG `quality` (1..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureSettings {
    pub max_width: u32,
    pub quality: u8,
}

impl Default for PictureSettings {
    fn default() -> Self {
        Self {
            max_width: 1280,
            quality: 80,
        }
    }
}

/// Makes pictures for one worker, reusing its buffers.
pub struct Picturer {
    settings: PictureSettings,
    /// A width for the next pictures over `settings.max_width` ([`Picturer::set_width`]).
    width: Option<u32>,
    pic: Picture420,
    /// Pictures of other sizes kept for reuse (cameras of different sizes or widths take
    /// turns), at most [`SPARE_PICTURES`].
    spare: Vec<Picture420>,
    list: Box<DrawList>,
    out: Vec<u8>,
    /// The GPU renderer, made on the first frame in device memory.
    gpu: Gpu,
    /// Requests that made no picture (the worker logs the first).
    pub failures: u64,
}

/// The GPU renderer of a [`Picturer`].
enum Gpu {
    Untried,
    Ready(Box<crate::gpu::picture::GpuPicturer>),
    /// Could not be made (the reason, logged once).
    Failed(Arc<str>),
}

/// Why no picture was made.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("the frame is in device memory and the GPU renderer is not available: {0}")]
    DeviceMemory(Arc<str>),
    #[error("GPU renderer")]
    Gpu(#[from] crate::gpu::GpuError),
    #[error("{width}x{height} is too large for a JPEG (at most 65535 a side)")]
    TooLarge { width: u32, height: u32 },
    #[error("JPEG encoding failed: {0}")]
    Encode(#[from] jpeg_encoder::EncodingError),
}

impl Picturer {
    pub fn new(settings: PictureSettings) -> Self {
        Self {
            settings,
            width: None,
            pic: Picture420::new(2, 2),
            spare: Vec::new(),
            list: Box::default(),
            out: Vec::new(),
            gpu: Gpu::Untried,
            failures: 0,
        }
    }

    pub fn settings(&self) -> PictureSettings {
        self.settings
    }

    /// The width of the next pictures: `Some` overrides the settings' (a camera's own limit).
    pub fn set_width(&mut self, width: Option<u32>) {
        self.width = width;
    }

    /// `frame` scaled into `pic` (made `max_width` wide at most, reallocated only when the
    /// size changes) with the overlay of `scene` drawn: the re-stream's raw pictures. A frame
    /// in device memory is drawn on the GPU and copied back (counted as pixel bytes).
    pub fn draw_into(
        &mut self,
        frame: &FrameRef,
        scene: &Scene<'_>,
        max_width: u32,
        pic: &mut Option<Picture420>,
    ) -> Result<(), PictureError> {
        let (w, h) = Picture420::fit(frame.width() as u32, frame.height() as u32, max_width);
        let pic = match pic {
            Some(p) if (p.width, p.height) == (w, h) => p,
            _ => pic.insert(Picture420::new(w, h)),
        };
        self.list.build(scene, w, h);
        let r = match frame.host_yuv() {
            Some(yuv) => {
                pic.scale_from(&yuv);
                pic.draw(&self.list);
                Ok(())
            }
            None => self
                .gpu_render(frame, true, w, h, GpuOut::Host(pic))
                .map(|_| ()),
        };
        self.counted(r.map(|_| ()))?;
        STATS.drawn.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a failure (and whether it was a frame no path here can read).
    fn counted<T>(&mut self, r: Result<T, PictureError>) -> Result<T, PictureError> {
        if let Err(e) = &r {
            self.failures += 1;
            let stat = match e {
                PictureError::DeviceMemory(_) => &STATS.unsupported,
                _ => &STATS.failed,
            };
            stat.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// `frame` (device memory) rendered `w`×`h` on the GPU with the current list (`annotate`)
    /// into `out`: a JPEG from nvJPEG where it is there (its bytes in `self.out`), else the
    /// drawn picture on the host (the given one, or `self.pic`). Returns whether a JPEG was
    /// made.
    fn gpu_render(
        &mut self,
        frame: &FrameRef,
        annotate: bool,
        w: u32,
        h: u32,
        out: GpuOut<'_>,
    ) -> Result<bool, PictureError> {
        let quality = self.settings.quality;
        let gpu = gpu(&mut self.gpu, quality)?;
        let mapped = crate::gpu::MappedFrame::nv12(&frame.memory)?;
        let planes = mapped.planes();
        let list = annotate.then_some(&*self.list);
        let output = match out {
            GpuOut::Jpeg if gpu.nvjpeg().is_none() => crate::gpu::picture::Output::Jpeg {
                quality,
                out: &mut self.out,
            },
            GpuOut::Jpeg => crate::gpu::picture::Output::Host(&mut self.pic),
            GpuOut::Host(p) => crate::gpu::picture::Output::Host(p),
        };
        let is_jpeg = matches!(output, crate::gpu::picture::Output::Jpeg { .. });
        let bytes = gpu.render(&planes, list, w, h, output)?;
        let counter = match is_jpeg {
            true => &STATS.gpu_jpeg_bytes,
            false => &STATS.gpu_pixel_d2h_bytes,
        };
        counter.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(is_jpeg)
    }

    /// A JPEG of `frame`, with the overlay of `scene` drawn when given (a clean picture
    /// without).
    pub fn picture(
        &mut self,
        frame: &FrameRef,
        scene: Option<&Scene<'_>>,
    ) -> Result<Jpeg, PictureError> {
        if let Some(yuv) = frame.host_yuv() {
            return self.picture_of(&yuv, scene);
        }
        let t0 = Instant::now();
        let max_width = self.width.unwrap_or(self.settings.max_width);
        let (w, h) = Picture420::fit(frame.width() as u32, frame.height() as u32, max_width);
        if let Some(scene) = scene {
            self.list.build(scene, w, h);
            STATS
                .overflow
                .fetch_add(self.list.overflow() as u64, Ordering::Relaxed);
        }
        let r = self.gpu_render(frame, scene.is_some(), w, h, GpuOut::Jpeg);
        let is_jpeg = self.counted(r)?;
        if scene.is_some() {
            STATS.drawn.fetch_add(1, Ordering::Relaxed);
        }
        if !is_jpeg {
            // No nvJPEG: the drawn picture came back to `self.pic`; the CPU encodes it.
            return self.encode_pic(t0);
        }
        let s = &STATS;
        s.gpu_jpegs.fetch_add(1, Ordering::Relaxed);
        s.gpu_jpeg_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(Jpeg {
            bytes: Arc::from(self.out.as_slice()),
            width: w,
            height: h,
        })
    }

    /// [`Picturer::picture`] of host pixels (the benches and tests decode their own).
    pub fn picture_of(
        &mut self,
        yuv: &YuvView<'_>,
        scene: Option<&Scene<'_>>,
    ) -> Result<Jpeg, PictureError> {
        let t0 = Instant::now();
        let max_width = self.width.unwrap_or(self.settings.max_width);
        let (w, h) = Picture420::fit(yuv.width as u32, yuv.height as u32, max_width);
        if (self.pic.width, self.pic.height) != (w, h) {
            let next = match self
                .spare
                .iter()
                .position(|p| (p.width, p.height) == (w, h))
            {
                Some(i) => self.spare.swap_remove(i),
                None => Picture420::new(w, h),
            };
            let old = std::mem::replace(&mut self.pic, next);
            if self.spare.len() >= SPARE_PICTURES {
                self.spare.remove(0);
            }
            self.spare.push(old);
        }
        self.pic.scale_from(yuv);
        if let Some(scene) = scene {
            self.list.build(scene, w, h);
            self.pic.draw(&self.list);
            STATS.drawn.fetch_add(1, Ordering::Relaxed);
            STATS
                .overflow
                .fetch_add(self.list.overflow() as u64, Ordering::Relaxed);
        }
        self.encode_pic(t0)
    }

    /// `self.pic` encoded by the CPU encoder (counted from `t0`).
    fn encode_pic(&mut self, t0: Instant) -> Result<Jpeg, PictureError> {
        let r = encode_cpu(&self.pic, self.settings.quality, &mut self.out);
        let jpeg = self.counted(r)?;
        let s = &STATS;
        s.cpu_jpegs.fetch_add(1, Ordering::Relaxed);
        s.cpu_jpeg_bytes
            .fetch_add(jpeg.bytes.len() as u64, Ordering::Relaxed);
        s.cpu_jpeg_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(jpeg)
    }
}

/// The GPU renderer in `slot`, made on first use (its failure is kept and given to every later
/// call).
fn gpu(slot: &mut Gpu, quality: u8) -> Result<&mut crate::gpu::picture::GpuPicturer, PictureError> {
    if let Gpu::Untried = slot {
        let made = crate::gpu::runtime()
            .and_then(|rt| crate::gpu::picture::GpuPicturer::new(&rt.ctx, quality));
        *slot = match made {
            Ok(g) => {
                if let Some(why) = g.nvjpeg() {
                    tracing::warn!(
                        "pictures of GPU frames are drawn on the GPU, then copied to the host for the CPU JPEG encoder: nvJPEG is not available ({why})"
                    );
                }
                Gpu::Ready(Box::new(g))
            }
            Err(e) => {
                let why: Arc<str> = vigil_core::error::chain(&e).into();
                tracing::warn!("frames in device memory get no pictures: {why}");
                Gpu::Failed(why)
            }
        };
    }
    match slot {
        Gpu::Ready(g) => Ok(g),
        Gpu::Failed(why) => Err(PictureError::DeviceMemory(why.clone())),
        Gpu::Untried => unreachable!("made just above"),
    }
}

/// Where [`Picturer::gpu_render`] puts its picture.
enum GpuOut<'a> {
    /// A JPEG (nvJPEG, else `Picturer::pic` for the CPU encoder).
    Jpeg,
    /// This host picture.
    Host(&'a mut Picture420),
}

/// Encodes `pic` as a baseline JFIF JPEG (4:2:0) with `out` as scratch.
pub fn encode_cpu(pic: &Picture420, quality: u8, out: &mut Vec<u8>) -> Result<Jpeg, PictureError> {
    let (w, h) = (pic.width, pic.height);
    let (Ok(w16), Ok(h16)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(PictureError::TooLarge {
            width: w,
            height: h,
        });
    };
    out.clear();
    let mut enc = jpeg_encoder::Encoder::new(&mut *out, quality.clamp(1, 100));
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.encode_image(FullRange {
        pic,
        w: w16,
        h: h16,
    })?;
    Ok(Jpeg {
        bytes: Arc::from(out.as_slice()),
        width: w,
        height: h,
    })
}

/// Limited-range (video) Y and CbCr → the full range JPEG expects.
const fn full_range_luts() -> ([u8; 256], [u8; 256]) {
    let (mut y, mut c) = ([0u8; 256], [0u8; 256]);
    let mut i = 0;
    while i < 256 {
        let v = i as i32;
        let fy = ((v - 16) * 255 * 2 + 219) / (2 * 219);
        let fc = 128 + ((v - 128) * 255 * 2 + if v >= 128 { 224 } else { -224 }) / (2 * 224);
        y[i] = if fy < 0 {
            0
        } else if fy > 255 {
            255
        } else {
            fy as u8
        };
        c[i] = if fc < 0 {
            0
        } else if fc > 255 {
            255
        } else {
            fc as u8
        };
        i += 1;
    }
    (y, c)
}
/// Limited (video) range → full range, for Y and for Cb/Cr (the GPU kernel computes the same).
pub const LUTS: ([u8; 256], [u8; 256]) = full_range_luts();

/// A picture as the encoder reads it: row by row, chroma repeated to full width.
struct FullRange<'a> {
    pic: &'a Picture420,
    w: u16,
    h: u16,
}

impl jpeg_encoder::ImageBuffer for FullRange<'_> {
    fn get_jpeg_color_type(&self) -> jpeg_encoder::JpegColorType {
        jpeg_encoder::JpegColorType::Ycbcr
    }
    fn width(&self) -> u16 {
        self.w
    }
    fn height(&self) -> u16 {
        self.h
    }
    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let (w, y) = (self.w as usize, y as usize);
        let (ly, lc) = (&LUTS.0, &LUTS.1);
        let row = &self.pic.y[y * w..(y + 1) * w];
        buffers[0].extend(row.iter().map(|&v| ly[v as usize]));
        let c0 = (y / 2) * (w / 2);
        let (u, v) = (&self.pic.u[c0..c0 + w / 2], &self.pic.v[c0..c0 + w / 2]);
        for x in 0..w {
            buffers[1].push(lc[u[x / 2] as usize]);
            buffers[2].push(lc[v[x / 2] as usize]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_tables_map_video_black_and_white_to_full_range() {
        let (y, c) = LUTS;
        assert_eq!((y[16], y[235], y[0], y[255]), (0, 255, 0, 255));
        assert_eq!((c[128], c[16], c[240]), (128, 0, 255));
        assert!(y.windows(2).all(|p| p[0] <= p[1]));
    }

    #[test]
    fn a_picture_encodes_to_a_jpeg_that_decodes_to_its_colours() {
        let mut pic = Picture420::new(64, 48);
        let red = vigil_core::overlay::colours::HIGHLIGHT;
        let mut list = DrawList::new();
        list.push(vigil_core::overlay::Prim::Fill {
            x0: 0,
            y0: 0,
            x1: 31,
            y1: 47,
            colour: red,
        });
        pic.draw(&list);
        let mut out = Vec::new();
        let jpeg = encode_cpu(&pic, 90, &mut out).unwrap();
        assert_eq!((jpeg.width, jpeg.height), (64, 48));
        let mut d = zune_jpeg::JpegDecoder::new(&jpeg.bytes[..]);
        let rgb = d.decode().unwrap();
        let info = d.info().unwrap();
        assert_eq!((info.width, info.height), (64, 48));
        let px = |x: usize, y: usize| &rgb[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3];
        let (l, r) = (px(8, 24), px(56, 24));
        assert!(l[0] > 230 && l[1] < 30 && l[2] < 30, "red half: {l:?}");
        assert!(r.iter().all(|&c| c < 20), "black half: {r:?}");
    }
}
