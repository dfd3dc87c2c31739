//! The GPU renderer: pictures of frames in device memory without their pixels crossing to the
//! host. The frame's planes → a separate, smaller I420 picture (`scale_420`) → the overlay's
//! [`DrawList`] drawn over it (`draw_full`, the CPU renderer's arithmetic: the two give the same
//! bytes) → nvJPEG → only the JPEG's bytes come back.
//!
//! Where nvJPEG is not available (the reason is logged once at start-up), or where raw pixels
//! are wanted (the re-stream's software encoder), the drawn picture is copied to the host
//! instead; those bytes are counted as pixel bytes ([`crate::picture::STATS`]), so the count
//! stays 0 where nvJPEG encodes.
//!
//! Buffers are allocated once and grown only when a larger picture is asked for; the drawing
//! list is staged in a reused host vector and copied up (host → device, at most
//! [`MAX_PRIMS`] × 40 bytes). Everything is queued on this renderer's own stream and
//! synchronised before returning, so the frame's mapping can be released right after.

use super::GpuError;
use crate::ffi::nvjpeg::{self, JpegEncoder};
use crate::ffi::overlay_kernel::{DevPrim, OverlayKernels, device_prims, i420_len};
use crate::ffi::preprocess_kernel::DevicePlanes;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use std::sync::Arc;
use vigil_core::overlay::{DrawList, MAX_PRIMS, Picture420};

/// What a rendered picture becomes.
pub enum Output<'a> {
    /// A JPEG at this quality into the vector (nvJPEG; an error if it is not available).
    Jpeg { quality: u8, out: &'a mut Vec<u8> },
    /// The drawn picture, limited range, copied into a host picture of the same size.
    Host(&'a mut Picture420),
}

/// One renderer (per picture maker: a worker has one for events and one for live pictures).
pub struct GpuPicturer {
    /// Everything holding GPU resources, dropped in [`Drop`] under the shared GPU lock.
    g: Option<Parts>,
    ctx: Arc<CudaContext>,
}

struct Parts {
    // Field order is drop order: buffers, kernels and the encoder before their stream.
    /// The scaled frame (limited range) and the drawn picture, I420; grown as needed.
    scaled: Option<CudaSlice<u8>>,
    drawn: Option<CudaSlice<u8>>,
    prims: CudaSlice<DevPrim>,
    jpeg: Result<JpegEncoder, Arc<nvjpeg::NvjpegError>>,
    kernels: OverlayKernels,
    staged: Vec<DevPrim>,
    stream: Arc<CudaStream>,
}

impl GpuPicturer {
    /// Compiles the kernels and makes the stream and buffers in `ctx`; nvJPEG is loaded if
    /// there (else [`GpuPicturer::nvjpeg`] says why, and only [`Output::Host`] works).
    pub fn new(ctx: &Arc<CudaContext>, quality: u8) -> Result<Self, GpuError> {
        ctx.bind_to_thread()?;
        super::relax_capture_mode();
        let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let stream = ctx.new_stream()?;
        let kernels = OverlayKernels::new(ctx)?;
        let prims = stream.alloc_zeros::<DevPrim>(MAX_PRIMS)?;
        let jpeg = JpegEncoder::new(&stream, quality).map_err(Arc::new);
        Ok(Self {
            g: Some(Parts {
                scaled: None,
                drawn: None,
                prims,
                jpeg,
                kernels,
                staged: Vec::with_capacity(MAX_PRIMS),
                stream,
            }),
            ctx: ctx.clone(),
        })
    }

    fn g(&mut self) -> &mut Parts {
        self.g
            .as_mut()
            .expect("a renderer's parts are only taken by its Drop")
    }

    /// Why nvJPEG is not used (`None`: it is).
    pub fn nvjpeg(&self) -> Option<String> {
        self.g.as_ref().and_then(|g| {
            g.jpeg
                .as_ref()
                .err()
                .map(|e| vigil_core::error::chain(e.as_ref()))
        })
    }

    /// `src` scaled to `w`×`h` (even), `list` drawn over it when given, into `output`.
    /// Returns the device→host bytes it copied (the JPEG's, or the picture's).
    pub fn render(
        &mut self,
        src: &DevicePlanes<'_>,
        list: Option<&DrawList>,
        w: u32,
        h: u32,
        output: Output<'_>,
    ) -> Result<usize, GpuError> {
        self.ctx.bind_to_thread()?;
        super::relax_capture_mode();
        let _shared = super::GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
        let g = self.g();
        let need = i420_len(w, h);
        let stream = &g.stream;
        let scaled = fit(&mut g.scaled, stream, need)?;
        let drawn = fit(&mut g.drawn, stream, need)?;
        g.kernels.scale(stream, src, scaled, w, h)?;
        match list {
            Some(l) => device_prims(l, &mut g.staged),
            None => g.staged.clear(),
        }
        let n = g.staged.len();
        if n > 0 {
            let mut dst = g.prims.slice_mut(..n);
            stream.memcpy_htod(&g.staged[..], &mut dst)?;
        }
        let full = matches!(output, Output::Jpeg { .. });
        g.kernels
            .draw(stream, scaled, drawn, w, h, &g.prims, n, full)?;
        let bytes = match output {
            Output::Jpeg { quality, out } => {
                let enc = g
                    .jpeg
                    .as_mut()
                    .map_err(|e| nvjpeg::NvjpegError::Shared(e.clone()))?;
                enc.encode_i420(stream, drawn, w, h, quality, out)?;
                out.len()
            }
            Output::Host(pic) => {
                if (pic.width, pic.height) != (w, h) {
                    *pic = Picture420::new(w, h);
                }
                let (ny, nc) = ((w * h) as usize, (w * h / 4) as usize);
                stream.memcpy_dtoh(&drawn.slice(..ny), &mut pic.y[..])?;
                stream.memcpy_dtoh(&drawn.slice(ny..ny + nc), &mut pic.u[..])?;
                stream.memcpy_dtoh(&drawn.slice(ny + nc..ny + 2 * nc), &mut pic.v[..])?;
                ny + 2 * nc
            }
        };
        stream.synchronize()?;
        Ok(bytes)
    }
}

/// `slot`'s buffer if it holds `need` bytes, else a new one that does.
fn fit<'a>(
    slot: &'a mut Option<CudaSlice<u8>>,
    stream: &Arc<CudaStream>,
    need: usize,
) -> Result<&'a mut CudaSlice<u8>, GpuError> {
    if slot.as_ref().is_none_or(|s| s.len() < need) {
        *slot = None;
        *slot = Some(stream.alloc_zeros::<u8>(need)?);
    }
    Ok(slot.as_mut().expect("just filled"))
}

impl Drop for GpuPicturer {
    /// Freed under the shared GPU lock, never while a CUDA graph is captured.
    fn drop(&mut self) {
        super::release(&self.ctx, &mut self.g, |g| &g.stream);
    }
}
