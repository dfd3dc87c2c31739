//! Pictures of what a camera saw: a frame scaled down to a separate picture (never the
//! inference input), the overlay drawn on it (the core's [`DrawList`]), encoded as JPEG.
//!
//! The CPU path: host frames (I420/NV12) → [`Picture420::scale_from`] → [`Picture420::draw`] →
//! `jpeg-encoder` (full-range YCbCr, 4:2:0). Frames in device memory (NVDEC, NVMM) get no
//! picture here: their pixels never cross to the host, the GPU renderer and nvJPEG are the way
//! for them (not built yet); such a request is counted as `unsupported`.
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
    /// Requests that made no picture (the worker logs the first).
    pub failures: u64,
}

/// Why no picture was made.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    #[error("the frame is in device memory: pictures of it need the GPU renderer")]
    DeviceMemory,
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
    /// size changes) with the overlay of `scene` drawn: the re-stream's raw pictures.
    pub fn draw_into(
        &mut self,
        frame: &FrameRef,
        scene: &Scene<'_>,
        max_width: u32,
        pic: &mut Option<Picture420>,
    ) -> Result<(), PictureError> {
        let Some(yuv) = frame.host_yuv() else {
            STATS.unsupported.fetch_add(1, Ordering::Relaxed);
            self.failures += 1;
            return Err(PictureError::DeviceMemory);
        };
        let (w, h) = Picture420::fit(yuv.width as u32, yuv.height as u32, max_width);
        let pic = match pic {
            Some(p) if (p.width, p.height) == (w, h) => p,
            _ => pic.insert(Picture420::new(w, h)),
        };
        pic.scale_from(&yuv);
        self.list.build(scene, w, h);
        pic.draw(&self.list);
        STATS.drawn.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// A JPEG of `frame`, with the overlay of `scene` drawn when given (a clean picture
    /// without).
    pub fn picture(
        &mut self,
        frame: &FrameRef,
        scene: Option<&Scene<'_>>,
    ) -> Result<Jpeg, PictureError> {
        let Some(yuv) = frame.host_yuv() else {
            STATS.unsupported.fetch_add(1, Ordering::Relaxed);
            self.failures += 1;
            return Err(PictureError::DeviceMemory);
        };
        self.picture_of(&yuv, scene)
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
        let jpeg = match encode_cpu(&self.pic, self.settings.quality, &mut self.out) {
            Ok(j) => j,
            Err(e) => {
                STATS.failed.fetch_add(1, Ordering::Relaxed);
                self.failures += 1;
                return Err(e);
            }
        };
        let s = &STATS;
        s.cpu_jpegs.fetch_add(1, Ordering::Relaxed);
        s.cpu_jpeg_bytes
            .fetch_add(jpeg.bytes.len() as u64, Ordering::Relaxed);
        s.cpu_jpeg_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(jpeg)
    }
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
const LUTS: ([u8; 256], [u8; 256]) = full_range_luts();

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
