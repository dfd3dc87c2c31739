//! The small FFI with GStreamer's CUDA library (`libgstcuda-1.0`, loaded at run time so that a
//! box without it still runs the CPU path): share our CUDA context with the decoders
//! (`gst.cuda.context`), and map a decoded `memory:CUDAMemory` buffer for its device pointer
//! (`GST_MAP_CUDA`) for as long as our kernels read it, as the planes the preprocessing kernel
//! reads ([`CudaMapping::planes`]).

use super::preprocess_kernel::DevicePlanes;
use crate::gpu::GpuError;
use gstreamer as gst;
use gstreamer_video as gst_video;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// `GST_MAP_CUDA` (gstcudamemory.h): `GST_MAP_FLAG_LAST << 1`.
const GST_MAP_CUDA: u32 = gst::ffi::GST_MAP_FLAG_LAST << 1;

// The C signatures of the three libgstcuda functions used (types only: each call through them
// is in an `unsafe` block with its own SAFETY comment, in `lib` and `shared_context`).
type NewWrapped = unsafe extern "C" fn(*mut c_void, i32) -> *mut gst::ffi::GstObject;
type NewContext = unsafe extern "C" fn(*mut gst::ffi::GstObject) -> *mut gst::ffi::GstContext;
type LoadLibrary = unsafe extern "C" fn() -> gst::glib::ffi::gboolean;

struct Lib {
    _lib: libloading::Library,
    new_wrapped: NewWrapped,
    new_context: NewContext,
}

/// The library, loaded on first use (once per process; its error is kept).
static LIB: OnceLock<Result<Lib, Arc<GpuError>>> = OnceLock::new();

fn lib() -> Result<&'static Lib, GpuError> {
    LIB.get_or_init(|| load_lib().map_err(GpuError::shared))
        .as_ref()
        .map_err(|e| GpuError::Shared(e.clone()))
}

fn load_lib() -> Result<Lib, GpuError> {
    const NAME: &str = "libgstcuda-1.0.so.0";
    // SAFETY: loading GStreamer's own CUDA helper library, whose initialisers only set up
    // GObject types; the symbols are looked up with the C signatures of gstcudacontext.h,
    // gstcudautils.h and gstcudaloader.h (GStreamer 1.22).
    unsafe {
        let lib = libloading::Library::new(NAME)
            .map_err(|source| GpuError::Library { name: NAME, source })?;
        let load: LoadLibrary = *lib
            .get(b"gst_cuda_load_library\0")
            .map_err(GpuError::Symbol)?;
        if load() == 0 {
            return Err(GpuError::GstCudaLoad);
        }
        let new_wrapped: NewWrapped = *lib
            .get(b"gst_cuda_context_new_wrapped\0")
            .map_err(GpuError::Symbol)?;
        let new_context: NewContext = *lib
            .get(b"gst_context_new_cuda_context\0")
            .map_err(GpuError::Symbol)?;
        Ok(Lib {
            _lib: lib,
            new_wrapped,
            new_context,
        })
    }
}

/// A `gst.cuda.context` wrapping `ctx` (our primary context), to set on each camera pipeline
/// so that the decoders allocate their frames in the context our kernels and ONNX Runtime use.
pub fn shared_context(ctx: &cudarc::driver::CudaContext) -> Result<gst::Context, GpuError> {
    let lib = lib()?;
    // SAFETY: `cu_ctx()` is the live primary context that `ctx` retains for the process's
    // lifetime (the GPU detector holds it); the wrapped GstCudaContext does not own it. The
    // returned GstCudaContext is ours (transfer full): the GstContext takes its own reference,
    // so we drop ours after making it.
    unsafe {
        let cuda = (lib.new_wrapped)(ctx.cu_ctx().cast(), ctx.cu_device());
        if cuda.is_null() {
            return Err(GpuError::Call("gst_cuda_context_new_wrapped"));
        }
        let c = (lib.new_context)(cuda);
        gst::ffi::gst_object_unref(cuda.cast());
        if c.is_null() {
            return Err(GpuError::Call("gst_context_new_cuda_context"));
        }
        Ok(gst::glib::translate::from_glib_full(c))
    }
}

/// A pipeline of `filesrc location=CLIP ! qtdemux ! h264parse ! nvh264dec ! TAIL` decoding
/// into CUDA memory in the process's shared context (the bench's bare decoder, the equality
/// check's NVDEC frames).
pub fn nvdec_pipeline(clip: &std::path::Path, tail: &str) -> Result<gst::Pipeline, GpuError> {
    let rt = crate::gpu::runtime()?;
    let p = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! qtdemux ! h264parse ! nvh264dec ! {tail}",
        clip.display()
    ))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| GpuError::NotAPipeline)?;
    use gst::prelude::*;
    p.set_context(rt.gst.as_ref().ok_or(GpuError::NoGstContext)?);
    Ok(p)
}

/// A CUDA buffer mapped for reading on the device; unmapped on drop. Plane pointers come from
/// the buffer's video meta (the decoder's real pitch) or, without one, from the caps.
pub struct CudaMapping {
    buffer: *mut gst::ffi::GstBuffer,
    info: gst::ffi::GstMapInfo,
    pub y: u64,
    pub uv: u64,
    pub y_stride: usize,
    pub uv_stride: usize,
    /// The frame's size, from the caps it was mapped with.
    width: usize,
    height: usize,
}

impl CudaMapping {
    /// Maps an NV12 buffer whose memory is CUDA memory (the caller's caps said so).
    pub fn nv12(buffer: &gst::Buffer, info: &gst_video::VideoInfo) -> Result<Self, GpuError> {
        let (offsets, strides) = match buffer.meta::<gst_video::VideoMeta>() {
            Some(m) => (
                [m.offset()[0], m.offset()[1]],
                [m.stride()[0] as usize, m.stride()[1] as usize],
            ),
            None => (
                [info.offset()[0], info.offset()[1]],
                [info.stride()[0] as usize, info.stride()[1] as usize],
            ),
        };
        if buffer.n_memory() != 1 {
            return Err(GpuError::CudaMemories(buffer.n_memory()));
        }
        let raw = buffer.as_ptr().cast_mut();
        // SAFETY: `raw` is a live buffer we hold a reference to (in the FrameRef) for longer
        // than this mapping; GstMapInfo is plain data filled by gst_buffer_map. Mapping with
        // READ|CUDA does not need a writable buffer and yields the device pointer of its one
        // CUDA memory (after the decoder's copy into it has completed).
        unsafe {
            let mut map = std::mem::MaybeUninit::<gst::ffi::GstMapInfo>::zeroed();
            if gst::ffi::gst_buffer_map(
                raw,
                map.as_mut_ptr(),
                gst::ffi::GST_MAP_READ | GST_MAP_CUDA,
            ) == 0
            {
                return Err(GpuError::Call("gst_buffer_map(GST_MAP_CUDA)"));
            }
            let map = map.assume_init();
            let base = map.data as u64;
            Ok(Self {
                buffer: gst::ffi::gst_buffer_ref(raw),
                info: map,
                y: base + offsets[0] as u64,
                uv: base + offsets[1] as u64,
                y_stride: strides[0],
                uv_stride: strides[1],
                width: info.width() as usize,
                height: info.height() as usize,
            })
        }
    }

    /// The frame's planes as the preprocessing kernel reads them (NV12: Y, then U and V
    /// interleaved), for as long as this mapping lives.
    pub fn planes(&self) -> DevicePlanes<'_> {
        // SAFETY: `y` and `uv` are the device pointers of the mapped frame's planes, from
        // GStreamer's map of a buffer of `width`×`height` NV12 (its video meta's offsets and
        // pitches, or the caps'): the decoder's frame, which holds what the kernel reads of
        // it. They stay mapped while `self` lives, which the returned planes borrow.
        unsafe {
            DevicePlanes::from_raw(
                self.y,
                self.uv,
                self.uv + 1,
                self.width,
                self.height,
                self.y_stride,
                self.uv_stride,
                2,
            )
        }
    }
}

impl Drop for CudaMapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `nv12` mapped, then drops the reference it took.
        unsafe {
            gst::ffi::gst_buffer_unmap(self.buffer, &mut self.info);
            gst::ffi::gst_buffer_unref(self.buffer);
        }
    }
}

/// Whether caps carry `memory:CUDAMemory`.
pub fn is_cuda_caps(caps: &gst::CapsRef) -> bool {
    caps.features(0)
        .is_some_and(|f| f.contains("memory:CUDAMemory"))
}
