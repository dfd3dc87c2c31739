//! Jetson's `memory:NVMM` frames (`NvBufSurface`) for the GPU path. **Untested here: never run
//! on a Jetson.** No Jetson exists on our machines; this module is compiled and unit-tested on
//! x86-64 (struct layouts, the plane arithmetic on a fake surface in host memory, the loader's
//! error on a box without JetPack), nothing more.
//!
//! Written against NVIDIA's public `nvbufsurface.h` of **JetPack 6** (L4T r36; the header's
//! notice reads "Copyright (c) 2019-2023"), read as vendored in
//! `fastvideo/gpu-camera-sample`, `src/CameraSample/jetson_api/NvBufSurface.h`, commit
//! `d6e339a3476423b0ff0346f62ac876e35ac0a09d` ("update jetson support"; that repository names
//! JetPack 6.0+), and the `CUeglFrame` of CUDA's `cudaEGL.h`, read as mirrored in
//! `FFmpeg/nv-codec-headers`, `include/ffnvcodec/dynlink_cuda.h`, commit
//! `f2fb9b36d5e08d6211f7cf6377971c0570939e65` (the same struct as in CUDA's driver API
//! documentation of `cuEGLStreamProducerPresentFrame`).
//!
//! The GStreamer buffer of an NVMM frame (`nvv4l2decoder`'s output) holds one memory whose
//! mapped bytes are an `NvBufSurface`: a batch header pointing to one `NvBufSurfaceParams` per
//! buffer. Where the pixels are depends on the surface's `memType`:
//! - `NVBUF_MEM_CUDA_DEVICE` / `NVBUF_MEM_CUDA_UNIFIED` (DeepStream on a dGPU): device memory at
//!   `dataPtr`, plane `i` at `planeParams.offset[i]` with `planeParams.pitch[i]`
//!   ([`planes_of`], pure, no library needed).
//! - `NVBUF_MEM_SURFACE_ARRAY` (Jetson): no device pointer in the surface. The buffer is turned
//!   into an EGLImage (`NvBufSurfaceMapEglImage`, `libnvbufsurface.so.1`), registered with CUDA
//!   (`cuGraphicsEGLRegisterImage`, libcuda) and read back as a pitch-linear `CUeglFrame`
//!   (`cuGraphicsResourceGetMappedEglFrame`): plane pointers `frame.pPitch[0]`, `[1]`, pitch
//!   `frame.pitch`. Both libraries are loaded on first use; a box without them gets an error,
//!   never a panic.
//!
//! [`NvmmMapping`] has the same public fields and the same `planes()` (the preprocessing
//! kernel's [`DevicePlanes`]) as [`super::gst_cuda::CudaMapping`], so the detector reads both
//! kinds of frame the same way.

use super::preprocess_kernel::DevicePlanes;
use gstreamer as gst;
use gstreamer_video as gst_video;
use std::ffi::c_void;
use std::mem::{align_of, size_of};
use std::sync::{Arc, OnceLock};

/// Why an NVMM frame could not be mapped (or JetPack's libraries could not be loaded).
#[derive(Debug, thiserror::Error)]
pub enum NvmmError {
    #[error(
        "NvBufSurface: buffer {index} asked for, but numFilled is {filled} (batchSize {batch})"
    )]
    NoBuffer {
        index: usize,
        filled: u32,
        batch: u32,
    },
    #[error(
        "NvBufSurface: colour format {0} is not NV12 (6, 7, 33 or 34): ask the decoder for format=NV12"
    )]
    NotNv12(NvBufSurfaceColorFormat),
    #[error("NvBufSurface: NV12 buffer with {0} planes, expected 2")]
    Planes(u32),
    #[error(
        "NvBufSurface in NVBUF_MEM_SURFACE_ARRAY (Jetson): no device pointer in the surface; its planes are reached through an EGLImage (NvBufSurfaceMapEglImage → cuGraphicsEGLRegisterImage)"
    )]
    SurfaceArray,
    #[error("NvBufSurface in {} ({}): not device memory the GPU path reads", mem_type_name(*.0), .0)]
    NotDevice(NvBufSurfaceMemType),
    #[error("NvBufSurface: null dataPtr")]
    NullData,
    #[error("NvBufSurface: layout {0} is not pitch-linear")]
    NotPitchLinear(NvBufSurfaceLayout),
    #[error(
        "NvBufSurface: plane {plane} (offset {offset}, pitch {pitch}) does not hold {width}×{rows} bytes in {data_size} bytes"
    )]
    Plane {
        plane: usize,
        offset: u64,
        pitch: u64,
        width: u64,
        rows: u64,
        data_size: u32,
    },
    /// `libnvbufsurface` did not load (the dynamic linker's words, then JetPack's hint: the
    /// loader's error is in the message, not also a source, which would repeat it).
    #[error("{name}: {} — memory:NVMM needs NVIDIA JetPack", dl_error(.error))]
    NoJetPack {
        name: String,
        error: libloading::Error,
    },
    /// libcuda's EGL interop did not load (as [`NvmmError::NoJetPack`]).
    #[error("{CUDA_LIB}: {} — the EGL interop of memory:NVMM needs NVIDIA's CUDA driver", dl_error(.0))]
    NoCudaEgl(libloading::Error),
    /// A library's error, kept from its first load.
    #[error(transparent)]
    Shared(Arc<NvmmError>),
    #[error("NVMM frame in {0:?}, expected NV12")]
    Format(gst_video::VideoFormat),
    #[error("{0} memories in an NVMM buffer, expected 1")]
    Memories(usize),
    /// A C call that reports failure by its result (its name).
    #[error("{0} failed")]
    Call(&'static str),
    #[error("NVMM buffer maps to {size} bytes at {address:#x}, not an NvBufSurface ({} bytes)", size_of::<NvBufSurface>())]
    NotASurface { size: usize, address: usize },
    #[error("NvBufSurface of {}×{}, the caps say {}×{}", surface.0, surface.1, caps.0, caps.1)]
    Size {
        surface: (usize, usize),
        caps: (usize, usize),
    },
    #[error("NvBufSurface with no buffer list")]
    NoList,
    #[error("NvBufSurfaceMapEglImage gave no EGLImage")]
    NoEglImage,
    #[error("cuGraphicsEGLRegisterImage failed (CUresult {0})")]
    Register(u32),
    #[error("cuGraphicsResourceGetMappedEglFrame failed (CUresult {0})")]
    MappedFrame(u32),
    #[error("the EGL frame is of type {0} (a CUDA array: block-linear), not pitch-linear")]
    FrameType(u32),
    #[error("the EGL frame has {planes} planes of {}×{}, expected 2 of {}×{}", got.0, got.1, want.0, want.1)]
    FrameShape {
        planes: u32,
        got: (u32, u32),
        want: (usize, usize),
    },
}

// --- nvbufsurface.h -------------------------------------------------------------------------

/// `STRUCTURE_PADDING`: the length of the `_reserved` arrays.
pub const STRUCTURE_PADDING: usize = 4;
/// `NVBUF_MAX_PLANES`.
pub const NVBUF_MAX_PLANES: usize = 4;

/// `NvBufSurfaceMemType` (a C enum: 4 bytes on the LP64 ABIs of x86-64 and aarch64).
pub type NvBufSurfaceMemType = u32;
pub const NVBUF_MEM_DEFAULT: NvBufSurfaceMemType = 0;
pub const NVBUF_MEM_CUDA_PINNED: NvBufSurfaceMemType = 1;
pub const NVBUF_MEM_CUDA_DEVICE: NvBufSurfaceMemType = 2;
pub const NVBUF_MEM_CUDA_UNIFIED: NvBufSurfaceMemType = 3;
pub const NVBUF_MEM_SURFACE_ARRAY: NvBufSurfaceMemType = 4;
pub const NVBUF_MEM_HANDLE: NvBufSurfaceMemType = 5;
pub const NVBUF_MEM_SYSTEM: NvBufSurfaceMemType = 6;

/// `NvBufSurfaceColorFormat` (C enum, 4 bytes): the values used here, counted from
/// `NVBUF_COLOR_FORMAT_INVALID = 0` in the header's order.
pub type NvBufSurfaceColorFormat = u32;
/// BT.601 YUV 4:2:0, three planes (I420).
pub const NVBUF_COLOR_FORMAT_YUV420: NvBufSurfaceColorFormat = 2;
/// BT.601 Y/CbCr 4:2:0, two planes (NV12), and its extended-range and BT.709 variants.
pub const NVBUF_COLOR_FORMAT_NV12: NvBufSurfaceColorFormat = 6;
pub const NVBUF_COLOR_FORMAT_NV12_ER: NvBufSurfaceColorFormat = 7;
pub const NVBUF_COLOR_FORMAT_YUV420_709: NvBufSurfaceColorFormat = 31;
pub const NVBUF_COLOR_FORMAT_NV12_709: NvBufSurfaceColorFormat = 33;
pub const NVBUF_COLOR_FORMAT_NV12_709_ER: NvBufSurfaceColorFormat = 34;

/// `NvBufSurfaceLayout` (C enum, 4 bytes).
pub type NvBufSurfaceLayout = u32;
pub const NVBUF_LAYOUT_PITCH: NvBufSurfaceLayout = 0;
pub const NVBUF_LAYOUT_BLOCK_LINEAR: NvBufSurfaceLayout = 1;

// Layouts on LP64 (x86-64, aarch64): u32 and C enums 4 bytes, bool 1, pointers and u64 8
// (aligned to 8). Derivations (offsets in bytes), checked by the tests below:
//
// NvBufSurfacePlaneParams: num_planes 0; width[4] 4; height[4] 20; pitch[4] 36; offset[4] 52;
//   psize[4] 68; bytesPerPix[4] 84 (ends at 100); _reserved[4 * 4] pointers aligned to 8: 104,
//   16 × 8 = 128 → size 232, align 8.
// NvBufSurfaceMappedAddr: addr[4] 0; eglImage 32; _reserved[4] 40 → size 72.
// NvBufSurfaceParams: width 0; height 4; pitch 8; colorFormat 12; layout 16 (ends at 20);
//   bufferDesc (u64) 24; dataSize 32; dataPtr 40; planeParams 48 (+232); mappedAddr 280 (+72);
//   paramex 352; _reserved[3] 360 → size 384.
// NvBufSurface: gpuId 0; batchSize 4; numFilled 8; isContiguous (bool) 12; memType 16
//   (aligned to 4); surfaceList 24 (aligned to 8); _reserved[4] 32 → size 64.
// CUeglFrame: frame (union of two arrays of 3 pointers) 0; width 24; height 28; depth 32;
//   pitch 36; planeCount 40; numChannels 44; frameType 48; eglColorFormat 52; cuFormat 56
//   (ends at 60) → size 64 (align 8).
// (The same numbers came out of `offsetof`/`sizeof` of the two headers compiled with gcc on
// x86-64; not compiled for aarch64, whose LP64 rules are the same for these types.)

/// `NvBufSurfacePlaneParams`: per-plane geometry of one buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct NvBufSurfacePlaneParams {
    pub num_planes: u32,
    pub width: [u32; NVBUF_MAX_PLANES],
    pub height: [u32; NVBUF_MAX_PLANES],
    /// Bytes per row.
    pub pitch: [u32; NVBUF_MAX_PLANES],
    /// Bytes from the buffer's start (`dataPtr`).
    pub offset: [u32; NVBUF_MAX_PLANES],
    pub psize: [u32; NVBUF_MAX_PLANES],
    pub bytesPerPix: [u32; NVBUF_MAX_PLANES],
    pub _reserved: [*mut c_void; STRUCTURE_PADDING * NVBUF_MAX_PLANES],
}

/// `NvBufSurfaceMappedAddr`: CPU mappings and the EGLImage of one buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct NvBufSurfaceMappedAddr {
    pub addr: [*mut c_void; NVBUF_MAX_PLANES],
    /// `EGLImageKHR`, set by `NvBufSurfaceMapEglImage`.
    pub eglImage: *mut c_void,
    pub _reserved: [*mut c_void; STRUCTURE_PADDING],
}

/// `NvBufSurfaceParams`: one buffer of the batch.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct NvBufSurfaceParams {
    pub width: u32,
    pub height: u32,
    pub pitch: u32,
    pub colorFormat: NvBufSurfaceColorFormat,
    pub layout: NvBufSurfaceLayout,
    /// DMABUF fd (SURFACE_ARRAY and HANDLE only).
    pub bufferDesc: u64,
    pub dataSize: u32,
    /// The memory (not valid for SURFACE_ARRAY or HANDLE).
    pub dataPtr: *mut c_void,
    pub planeParams: NvBufSurfacePlaneParams,
    pub mappedAddr: NvBufSurfaceMappedAddr,
    /// `NvBufSurfaceParamsEx *`: pointed to, never read here.
    pub paramex: *mut c_void,
    pub _reserved: [*mut c_void; STRUCTURE_PADDING - 1],
}

/// `NvBufSurface`: the batch header a mapped NVMM buffer's bytes hold.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_snake_case)]
pub struct NvBufSurface {
    pub gpuId: u32,
    pub batchSize: u32,
    pub numFilled: u32,
    /// C `bool` (1 byte), read as `u8` so that no byte value read from C can be invalid.
    pub isContiguous: u8,
    pub memType: NvBufSurfaceMemType,
    /// `batchSize` buffers.
    pub surfaceList: *mut NvBufSurfaceParams,
    pub _reserved: [*mut c_void; STRUCTURE_PADDING],
}

// --- cudaEGL.h ------------------------------------------------------------------------------

/// `MAX_PLANES` of cudaEGL.h (`CU_EGL_FRAME_MAX_PLANES` in nv-codec-headers).
pub const CU_EGL_FRAME_MAX_PLANES: usize = 3;
/// `CUeglFrameType`.
pub const CU_EGL_FRAME_TYPE_ARRAY: u32 = 0;
pub const CU_EGL_FRAME_TYPE_PITCH: u32 = 1;
/// `CU_GRAPHICS_MAP_RESOURCE_FLAGS_NONE` (cuda.h).
pub const CU_GRAPHICS_MAP_RESOURCE_FLAGS_NONE: u32 = 0;
/// `CUgraphicsResource`: an opaque handle.
pub type CUgraphicsResource = *mut c_void;

/// The anonymous `frame` union of `CUeglFrame`: `CUarray`s or pitch-linear plane pointers.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_snake_case)]
pub union CUeglFrameData {
    pub pArray: [*mut c_void; CU_EGL_FRAME_MAX_PLANES],
    pub pPitch: [*mut c_void; CU_EGL_FRAME_MAX_PLANES],
}

/// `CUeglFrame` (`CUeglFrame_v1`).
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_snake_case)]
pub struct CUeglFrame {
    pub frame: CUeglFrameData,
    pub width: u32,
    pub height: u32,
    pub depth: u32,
    /// Pitch of the first plane, in bytes.
    pub pitch: u32,
    pub planeCount: u32,
    pub numChannels: u32,
    /// `CUeglFrameType`.
    pub frameType: u32,
    /// `CUeglColorFormat`.
    pub eglColorFormat: u32,
    /// `CUarray_format`.
    pub cuFormat: u32,
}

// --- the plane arithmetic (pure) ------------------------------------------------------------

/// Where the two planes of an NV12 buffer in device memory are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NvmmPlanes {
    pub y: u64,
    pub uv: u64,
    pub y_stride: usize,
    pub uv_stride: usize,
    pub width: usize,
    pub height: usize,
}

fn mem_type_name(t: NvBufSurfaceMemType) -> &'static str {
    match t {
        NVBUF_MEM_DEFAULT => "NVBUF_MEM_DEFAULT",
        NVBUF_MEM_CUDA_PINNED => "NVBUF_MEM_CUDA_PINNED",
        NVBUF_MEM_CUDA_DEVICE => "NVBUF_MEM_CUDA_DEVICE",
        NVBUF_MEM_CUDA_UNIFIED => "NVBUF_MEM_CUDA_UNIFIED",
        NVBUF_MEM_SURFACE_ARRAY => "NVBUF_MEM_SURFACE_ARRAY",
        NVBUF_MEM_HANDLE => "NVBUF_MEM_HANDLE",
        NVBUF_MEM_SYSTEM => "NVBUF_MEM_SYSTEM",
        _ => "unknown",
    }
}

/// The NV12 colour formats (BT.601/BT.709, limited/extended range). Like the
/// `memory:CUDAMemory` path, the GPU path reads the samples as they are.
fn is_nv12(f: NvBufSurfaceColorFormat) -> bool {
    matches!(
        f,
        NVBUF_COLOR_FORMAT_NV12
            | NVBUF_COLOR_FORMAT_NV12_ER
            | NVBUF_COLOR_FORMAT_NV12_709
            | NVBUF_COLOR_FORMAT_NV12_709_ER
    )
}

/// Buffer `index` of a surface whose buffer list is `list` (`surf.surfaceList[..batchSize]`),
/// checked to be a filled NV12 buffer in two planes.
fn nv12_buffer<'a>(
    surf: &NvBufSurface,
    list: &'a [NvBufSurfaceParams],
    index: usize,
) -> Result<&'a NvBufSurfaceParams, NvmmError> {
    let filled = surf.numFilled.min(surf.batchSize) as usize;
    if index >= filled || index >= list.len() {
        return Err(NvmmError::NoBuffer {
            index,
            filled: surf.numFilled,
            batch: surf.batchSize,
        });
    }
    let p = &list[index];
    if !is_nv12(p.colorFormat) {
        return Err(NvmmError::NotNv12(p.colorFormat));
    }
    if p.planeParams.num_planes != 2 {
        return Err(NvmmError::Planes(p.planeParams.num_planes));
    }
    Ok(p)
}

/// The planes of NV12 buffer `index` of a surface in CUDA device or unified memory (DeepStream
/// on a dGPU): `dataPtr` + `planeParams.offset[i]`, with `planeParams.pitch[i]`. `list` is the
/// surface's buffer list (`surf.surfaceList[..batchSize]`). A Jetson surface
/// (`NVBUF_MEM_SURFACE_ARRAY`) has no device pointer here: it needs the EGL path of
/// [`NvmmMapping`].
pub fn planes_of(
    surf: &NvBufSurface,
    list: &[NvBufSurfaceParams],
    index: usize,
) -> Result<NvmmPlanes, NvmmError> {
    let p = nv12_buffer(surf, list, index)?;
    match surf.memType {
        NVBUF_MEM_CUDA_DEVICE | NVBUF_MEM_CUDA_UNIFIED => {}
        NVBUF_MEM_SURFACE_ARRAY => return Err(NvmmError::SurfaceArray),
        t => return Err(NvmmError::NotDevice(t)),
    }
    if p.dataPtr.is_null() {
        return Err(NvmmError::NullData);
    }
    if p.layout != NVBUF_LAYOUT_PITCH {
        return Err(NvmmError::NotPitchLinear(p.layout));
    }
    let pp = &p.planeParams;
    let (w, h) = (p.width as u64, p.height as u64);
    // Each plane within the allocation, each row at least as long as the image.
    for (i, rows) in [(0, h), (1, h.div_ceil(2))] {
        let (pitch, offset) = (pp.pitch[i] as u64, pp.offset[i] as u64);
        if pitch < w || (p.dataSize != 0 && offset + pitch * rows > p.dataSize as u64) {
            return Err(NvmmError::Plane {
                plane: i,
                offset,
                pitch,
                width: w,
                rows,
                data_size: p.dataSize,
            });
        }
    }
    let base = p.dataPtr as u64;
    Ok(NvmmPlanes {
        y: base + pp.offset[0] as u64,
        uv: base + pp.offset[1] as u64,
        y_stride: pp.pitch[0] as usize,
        uv_stride: pp.pitch[1] as usize,
        width: p.width as usize,
        height: p.height as usize,
    })
}

// --- run-time loading -----------------------------------------------------------------------

// C signatures (types only: every call through them is in an `unsafe` block with its own SAFETY
// comment, in `NvmmMapping::map_egl` and its Drop).
type MapEglImage = unsafe extern "C" fn(*mut NvBufSurface, i32) -> i32;
type RegisterEglImage = unsafe extern "C" fn(*mut CUgraphicsResource, *mut c_void, u32) -> u32;
type GetMappedEglFrame = unsafe extern "C" fn(*mut CUeglFrame, CUgraphicsResource, u32, u32) -> u32;
type UnregisterResource = unsafe extern "C" fn(CUgraphicsResource) -> u32;

/// `libnvbufsurface.so.1` (JetPack; also DeepStream on a dGPU).
pub const NVBUFSURFACE_LIB: &str = "libnvbufsurface.so.1";
const CUDA_LIB: &str = "libcuda.so.1";

/// The two functions of `libnvbufsurface` used.
struct NvBufSurfaceLib {
    _lib: libloading::Library,
    map_egl: MapEglImage,
    unmap_egl: MapEglImage,
}

/// libcuda's EGL interop (cudaEGL.h).
struct CudaEglLib {
    _lib: libloading::Library,
    register: RegisterEglImage,
    mapped_frame: GetMappedEglFrame,
    unregister: UnregisterResource,
}

/// A loader error with the dynamic linker's own words (libloading keeps them as the source).
fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(why) => format!("{e} ({why})"),
        None => e.to_string(),
    }
}

fn load_nvbufsurface(name: &str) -> Result<NvBufSurfaceLib, NvmmError> {
    let missing = |error: libloading::Error| NvmmError::NoJetPack {
        name: name.to_string(),
        error,
    };
    // SAFETY: loads NVIDIA's buffer library (its initialisers only set up its own state; on a
    // Jetson the nvv4l2decoder plugin has loaded it into the process already); the two symbols
    // are looked up with the C signatures of nvbufsurface.h:
    // `int NvBufSurfaceMapEglImage(NvBufSurface *surf, int index)` and its UnMap twin.
    unsafe {
        let lib = libloading::Library::new(name).map_err(missing)?;
        let map_egl: MapEglImage = *lib.get(b"NvBufSurfaceMapEglImage\0").map_err(missing)?;
        let unmap_egl: MapEglImage = *lib.get(b"NvBufSurfaceUnMapEglImage\0").map_err(missing)?;
        Ok(NvBufSurfaceLib {
            _lib: lib,
            map_egl,
            unmap_egl,
        })
    }
}

/// `libnvbufsurface.so.1`, loaded on first use (once per process; the outcome is kept).
fn nvbufsurface() -> Result<&'static NvBufSurfaceLib, NvmmError> {
    static LIB: OnceLock<Result<NvBufSurfaceLib, Arc<NvmmError>>> = OnceLock::new();
    LIB.get_or_init(|| load_nvbufsurface(NVBUFSURFACE_LIB).map_err(Arc::new))
        .as_ref()
        .map_err(|e| NvmmError::Shared(e.clone()))
}

/// Whether this box can map NVMM frames: `libnvbufsurface.so.1` and libcuda's EGL interop
/// load (the reason where not).
pub fn available() -> Result<(), NvmmError> {
    nvbufsurface()?;
    cuda_egl()?;
    Ok(())
}

/// libcuda's EGL interop, loaded on first use.
fn cuda_egl() -> Result<&'static CudaEglLib, NvmmError> {
    static LIB: OnceLock<Result<CudaEglLib, Arc<NvmmError>>> = OnceLock::new();
    LIB.get_or_init(|| {
        let missing = |e: libloading::Error| Arc::new(NvmmError::NoCudaEgl(e));
        // SAFETY: loads the CUDA driver library (already loaded by the GPU runtime, which is up
        // before any NVMM frame is mapped); the symbols are looked up with the C signatures of
        // cudaEGL.h: cuGraphicsEGLRegisterImage(CUgraphicsResource *, EGLImageKHR, unsigned
        // int), cuGraphicsResourceGetMappedEglFrame(CUeglFrame *, CUgraphicsResource, unsigned
        // int, unsigned int) and cuGraphicsUnregisterResource(CUgraphicsResource) (cuda.h),
        // each returning CUresult (a C enum, read as u32).
        unsafe {
            let lib = libloading::Library::new(CUDA_LIB).map_err(missing)?;
            let register: RegisterEglImage =
                *lib.get(b"cuGraphicsEGLRegisterImage\0").map_err(missing)?;
            let mapped_frame: GetMappedEglFrame = *lib
                .get(b"cuGraphicsResourceGetMappedEglFrame\0")
                .map_err(missing)?;
            let unregister: UnregisterResource = *lib
                .get(b"cuGraphicsUnregisterResource\0")
                .map_err(missing)?;
            Ok(CudaEglLib {
                _lib: lib,
                register,
                mapped_frame,
                unregister,
            })
        }
    })
    .as_ref()
    .map_err(|e| NvmmError::Shared(e.clone()))
}

// --- the mapping ----------------------------------------------------------------------------

/// What the EGL path holds until the mapping is dropped.
struct EglHold {
    surf: *mut NvBufSurface,
    nvbuf: &'static NvBufSurfaceLib,
    cuda: &'static CudaEglLib,
    /// Null until registration succeeded.
    resource: CUgraphicsResource,
}

/// An NVMM buffer mapped for reading on the device; everything undone on drop. Same public
/// fields as [`super::gst_cuda::CudaMapping`].
pub struct NvmmMapping {
    buffer: *mut gst::ffi::GstBuffer,
    info: gst::ffi::GstMapInfo,
    egl: Option<EglHold>,
    pub y: u64,
    pub uv: u64,
    pub y_stride: usize,
    pub uv_stride: usize,
    /// The frame's size, from the caps (the surface's is checked against it).
    width: usize,
    height: usize,
}

impl NvmmMapping {
    /// Maps an NV12 buffer whose memory is NVMM (the caller's caps said so). CUDA device or
    /// unified surfaces are read directly ([`planes_of`]); Jetson surfaces
    /// (`NVBUF_MEM_SURFACE_ARRAY`) go through an EGLImage registered with CUDA, which needs the
    /// GPU runtime's CUDA context current on this thread (the detector binds it).
    pub fn nv12(buffer: &gst::Buffer, info: &gst_video::VideoInfo) -> Result<Self, NvmmError> {
        if info.format() != gst_video::VideoFormat::Nv12 {
            return Err(NvmmError::Format(info.format()));
        }
        if buffer.n_memory() != 1 {
            return Err(NvmmError::Memories(buffer.n_memory()));
        }
        let raw = buffer.as_ptr().cast_mut();
        // SAFETY: `raw` is a live buffer we hold a reference to (in the FrameRef) for longer
        // than this mapping, and take one more below; GstMapInfo is plain data filled by
        // gst_buffer_map. A READ map of NVMM memory yields the NvBufSurface that describes it.
        let mut m = unsafe {
            let mut map = std::mem::MaybeUninit::<gst::ffi::GstMapInfo>::zeroed();
            if gst::ffi::gst_buffer_map(raw, map.as_mut_ptr(), gst::ffi::GST_MAP_READ) == 0 {
                return Err(NvmmError::Call("gst_buffer_map(READ) of an NVMM buffer"));
            }
            Self {
                buffer: gst::ffi::gst_buffer_ref(raw),
                info: map.assume_init(),
                egl: None,
                y: 0,
                uv: 0,
                y_stride: 0,
                uv_stride: 0,
                width: info.width() as usize,
                height: info.height() as usize,
            }
        };
        // From here on, an early return drops `m`, which unmaps.
        let surf = m.info.data.cast::<NvBufSurface>();
        if surf.is_null()
            || m.info.size < size_of::<NvBufSurface>()
            || !(surf as usize).is_multiple_of(align_of::<NvBufSurface>())
        {
            return Err(NvmmError::NotASurface {
                size: m.info.size,
                address: surf as usize,
            });
        }
        let (w, h) = (info.width() as usize, info.height() as usize);
        let size_check = |pw: usize, ph: usize| {
            if (pw, ph) == (w, h) {
                Ok(())
            } else {
                Err(NvmmError::Size {
                    surface: (pw, ph),
                    caps: (w, h),
                })
            }
        };
        // The surface and its list are read through shared references only inside this block;
        // the EGL calls below (which write the list's `mappedAddr`) come after it.
        let egl_size = {
            // SAFETY: `surf` is non-null, aligned and spans an NvBufSurface in the mapped
            // memory, which stays mapped while `m` lives; nothing writes it during this block.
            let s = unsafe { &*surf };
            if s.surfaceList.is_null() || s.batchSize == 0 {
                return Err(NvmmError::NoList);
            }
            // SAFETY: the header: `surfaceList` points to an array of `batchSize` buffers,
            // owned by the surface (so alive as long as it is).
            let list = unsafe { std::slice::from_raw_parts(s.surfaceList, s.batchSize as usize) };
            if s.memType == NVBUF_MEM_SURFACE_ARRAY {
                let p = nv12_buffer(s, list, 0)?;
                size_check(p.width as usize, p.height as usize)?;
                (p.width as usize, p.height as usize)
            } else {
                let p = planes_of(s, list, 0)?;
                size_check(p.width, p.height)?;
                (m.y, m.uv, m.y_stride, m.uv_stride) = (p.y, p.uv, p.y_stride, p.uv_stride);
                return Ok(m);
            }
        };
        m.map_egl(surf, egl_size)?;
        Ok(m)
    }

    /// The Jetson path: buffer 0 of `surf` as an EGLImage registered with CUDA, read as a
    /// pitch-linear frame. Each step is recorded in `self.egl` as soon as it is done, so that
    /// Drop undoes exactly what was done, whatever step fails.
    fn map_egl(&mut self, surf: *mut NvBufSurface, size: (usize, usize)) -> Result<(), NvmmError> {
        let nvbuf = nvbufsurface()?;
        let cuda = cuda_egl()?;
        // SAFETY: `surf` is the mapped NvBufSurface (checked by the caller) of a SURFACE_ARRAY
        // buffer, alive while the buffer is mapped (until Drop, which unmaps the EGLImage
        // first). NvBufSurfaceMapEglImage(surf, 0) writes the EGLImage into buffer 0's
        // `mappedAddr.eglImage` (nvbufsurface.h), as NVIDIA's DeepStream samples do on a
        // READ-mapped buffer; no Rust reference to the surface is alive across the call.
        if unsafe { (nvbuf.map_egl)(surf, 0) } != 0 {
            return Err(NvmmError::Call("NvBufSurfaceMapEglImage"));
        }
        let hold = self.egl.insert(EglHold {
            surf,
            nvbuf,
            cuda,
            resource: std::ptr::null_mut(),
        });
        // SAFETY: buffer 0 exists (checked by the caller); the field is read by value through
        // the raw pointer, after the call that wrote it has returned.
        let image = unsafe { (*(*surf).surfaceList).mappedAddr.eglImage };
        if image.is_null() {
            return Err(NvmmError::NoEglImage);
        }
        let mut resource: CUgraphicsResource = std::ptr::null_mut();
        // SAFETY: `image` is the live EGLImage made above (destroyed only in Drop, after the
        // resource is unregistered); `resource` is an out-parameter. The caller has the CUDA
        // context current (the detector binds it before mapping).
        let r =
            unsafe { (cuda.register)(&mut resource, image, CU_GRAPHICS_MAP_RESOURCE_FLAGS_NONE) };
        if r != 0 || resource.is_null() {
            return Err(NvmmError::Register(r));
        }
        hold.resource = resource;
        let mut frame = std::mem::MaybeUninit::<CUeglFrame>::zeroed();
        // SAFETY: `resource` is registered (unregistered only in Drop); `frame` is an
        // out-parameter of CUeglFrame's layout (see the tests); index 0, mip level 0.
        let r = unsafe { (cuda.mapped_frame)(frame.as_mut_ptr(), resource, 0, 0) };
        if r != 0 {
            return Err(NvmmError::MappedFrame(r));
        }
        // SAFETY: all-zero is a valid CUeglFrame (pointers and integers) and the call filled it.
        let frame = unsafe { frame.assume_init() };
        if frame.frameType != CU_EGL_FRAME_TYPE_PITCH {
            return Err(NvmmError::FrameType(frame.frameType));
        }
        if frame.planeCount < 2 || (frame.width as usize, frame.height as usize) != size {
            return Err(NvmmError::FrameShape {
                planes: frame.planeCount,
                got: (frame.width, frame.height),
                want: size,
            });
        }
        // SAFETY: frameType PITCH says `pPitch` is the union's member (both members are arrays
        // of three pointers, so the read is defined either way).
        let planes = unsafe { frame.frame.pPitch };
        self.y = planes[0] as u64;
        self.uv = planes[1] as u64;
        // `pitch` is the first plane's; NV12's interleaved UV plane has the same row length.
        self.y_stride = frame.pitch as usize;
        self.uv_stride = frame.pitch as usize;
        Ok(())
    }

    /// The frame's planes as the preprocessing kernel reads them (NV12: Y, then U and V
    /// interleaved), for as long as this mapping lives.
    pub fn planes(&self) -> DevicePlanes<'_> {
        // SAFETY: a mapping exists only once `nv12` succeeded: `y` and `uv` are then the
        // device pointers and pitches of the planes of a `width`×`height` NV12 surface (its
        // size checked against the caps), CUDA device/unified memory or the EGL frame
        // registered with CUDA, which hold what the kernel reads of the frame. They stay
        // mapped and registered while `self` lives, which the returned planes borrow.
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

impl Drop for NvmmMapping {
    fn drop(&mut self) {
        // SAFETY: undoes, in reverse order, exactly what `nv12` and `map_egl` did: the CUDA
        // registration (if it succeeded), the EGLImage (if it was made), then the buffer map
        // and the reference taken. The kernels that read the planes have completed: the
        // detector drops mappings only after synchronising its stream.
        unsafe {
            if let Some(e) = &self.egl {
                if !e.resource.is_null() {
                    let _ = (e.cuda.unregister)(e.resource);
                }
                let _ = (e.nvbuf.unmap_egl)(e.surf, 0);
            }
            gst::ffi::gst_buffer_unmap(self.buffer, &mut self.info);
            gst::ffi::gst_buffer_unref(self.buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layouts_match_nvbufsurface_h_on_lp64() {
        // Numbers derived above from the header's field order (and seen with gcc's offsetof).
        assert_eq!(size_of::<NvBufSurfacePlaneParams>(), 232);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, width), 4);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, pitch), 36);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, offset), 52);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, psize), 68);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, bytesPerPix), 84);
        assert_eq!(offset_of!(NvBufSurfacePlaneParams, _reserved), 104);

        assert_eq!(size_of::<NvBufSurfaceMappedAddr>(), 72);
        assert_eq!(offset_of!(NvBufSurfaceMappedAddr, eglImage), 32);
        assert_eq!(offset_of!(NvBufSurfaceMappedAddr, _reserved), 40);

        assert_eq!(size_of::<NvBufSurfaceParams>(), 384);
        assert_eq!(offset_of!(NvBufSurfaceParams, colorFormat), 12);
        assert_eq!(offset_of!(NvBufSurfaceParams, layout), 16);
        assert_eq!(offset_of!(NvBufSurfaceParams, bufferDesc), 24);
        assert_eq!(offset_of!(NvBufSurfaceParams, dataSize), 32);
        assert_eq!(offset_of!(NvBufSurfaceParams, dataPtr), 40);
        assert_eq!(offset_of!(NvBufSurfaceParams, planeParams), 48);
        assert_eq!(offset_of!(NvBufSurfaceParams, mappedAddr), 280);
        assert_eq!(offset_of!(NvBufSurfaceParams, paramex), 352);
        assert_eq!(offset_of!(NvBufSurfaceParams, _reserved), 360);

        assert_eq!(size_of::<NvBufSurface>(), 64);
        assert_eq!(offset_of!(NvBufSurface, numFilled), 8);
        assert_eq!(offset_of!(NvBufSurface, isContiguous), 12);
        assert_eq!(offset_of!(NvBufSurface, memType), 16);
        assert_eq!(offset_of!(NvBufSurface, surfaceList), 24);
        assert_eq!(offset_of!(NvBufSurface, _reserved), 32);
    }

    #[test]
    fn layout_matches_cuda_egl_h_on_lp64() {
        assert_eq!(size_of::<CUeglFrame>(), 64);
        assert_eq!(offset_of!(CUeglFrame, width), 24);
        assert_eq!(offset_of!(CUeglFrame, pitch), 36);
        assert_eq!(offset_of!(CUeglFrame, planeCount), 40);
        assert_eq!(offset_of!(CUeglFrame, frameType), 48);
        assert_eq!(offset_of!(CUeglFrame, cuFormat), 56);
    }

    /// A FAKE 1920×1080 NV12 buffer description in host memory, laid out as a CUDA device
    /// surface would be (pitch 2048, UV plane after the Y plane's 1080 rows). The numbers are
    /// illustrative, not read from a real DeepStream surface; `dataPtr` is a made-up address.
    fn fake_nv12_params() -> NvBufSurfaceParams {
        let null = std::ptr::null_mut();
        let pitch = 2048u32;
        NvBufSurfaceParams {
            width: 1920,
            height: 1080,
            pitch,
            colorFormat: NVBUF_COLOR_FORMAT_NV12,
            layout: NVBUF_LAYOUT_PITCH,
            bufferDesc: 0,
            dataSize: pitch * 1080 * 3 / 2,
            dataPtr: 0x7f00_0000_0000usize as *mut c_void,
            planeParams: NvBufSurfacePlaneParams {
                num_planes: 2,
                width: [1920, 960, 0, 0],
                height: [1080, 540, 0, 0],
                pitch: [pitch, pitch, 0, 0],
                offset: [0, pitch * 1080, 0, 0],
                psize: [pitch * 1080, pitch * 540, 0, 0],
                bytesPerPix: [1, 2, 0, 0],
                _reserved: [null; STRUCTURE_PADDING * NVBUF_MAX_PLANES],
            },
            mappedAddr: NvBufSurfaceMappedAddr {
                addr: [null; NVBUF_MAX_PLANES],
                eglImage: null,
                _reserved: [null; STRUCTURE_PADDING],
            },
            paramex: null,
            _reserved: [null; STRUCTURE_PADDING - 1],
        }
    }

    fn fake_surface(mem: NvBufSurfaceMemType, list: &mut [NvBufSurfaceParams]) -> NvBufSurface {
        NvBufSurface {
            gpuId: 0,
            batchSize: list.len() as u32,
            numFilled: list.len() as u32,
            isContiguous: 0,
            memType: mem,
            surfaceList: list.as_mut_ptr(),
            _reserved: [std::ptr::null_mut(); STRUCTURE_PADDING],
        }
    }

    #[test]
    fn fake_nvbufsurface_cuda_device_planes() {
        let mut list = [fake_nv12_params()];
        for mem in [NVBUF_MEM_CUDA_DEVICE, NVBUF_MEM_CUDA_UNIFIED] {
            let surf = fake_surface(mem, &mut list);
            assert_eq!(
                planes_of(&surf, &list, 0).unwrap(),
                NvmmPlanes {
                    y: 0x7f00_0000_0000,
                    uv: 0x7f00_0000_0000 + 2048 * 1080,
                    y_stride: 2048,
                    uv_stride: 2048,
                    width: 1920,
                    height: 1080,
                }
            );
        }
    }

    #[test]
    fn fake_nvbufsurface_errors() {
        let err = |mem, list: &mut [NvBufSurfaceParams], index| {
            let surf = fake_surface(mem, list);
            planes_of(&surf, list, index).unwrap_err().to_string()
        };
        let mut list = [fake_nv12_params()];
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut list, 1).contains("buffer 1 asked for"));
        let surf = NvBufSurface {
            numFilled: 0,
            ..fake_surface(NVBUF_MEM_CUDA_DEVICE, &mut list)
        };
        assert!(
            planes_of(&surf, &list, 0)
                .unwrap_err()
                .to_string()
                .contains("numFilled is 0")
        );
        assert!(err(NVBUF_MEM_SURFACE_ARRAY, &mut list, 0).contains("EGLImage"));
        assert!(err(NVBUF_MEM_SYSTEM, &mut list, 0).contains("NVBUF_MEM_SYSTEM"));
        assert!(err(NVBUF_MEM_DEFAULT, &mut list, 0).contains("NVBUF_MEM_DEFAULT"));

        let mut list = [NvBufSurfaceParams {
            colorFormat: NVBUF_COLOR_FORMAT_YUV420,
            ..fake_nv12_params()
        }];
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut list, 0).contains("not NV12"));
        let mut p = fake_nv12_params();
        p.planeParams.num_planes = 3;
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut [p], 0).contains("3 planes"));
        let mut p = fake_nv12_params();
        p.dataPtr = std::ptr::null_mut();
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut [p], 0).contains("null dataPtr"));
        let mut p = fake_nv12_params();
        p.layout = NVBUF_LAYOUT_BLOCK_LINEAR;
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut [p], 0).contains("not pitch-linear"));
        let mut p = fake_nv12_params();
        p.planeParams.offset[1] += 2048;
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut [p], 0).contains("plane 1"));
        let mut p = fake_nv12_params();
        p.planeParams.pitch[0] = 1024;
        assert!(err(NVBUF_MEM_CUDA_DEVICE, &mut [p], 0).contains("plane 0"));
        // The 709 and extended-range NV12 variants are NV12.
        let mut list = [NvBufSurfaceParams {
            colorFormat: NVBUF_COLOR_FORMAT_NV12_709_ER,
            ..fake_nv12_params()
        }];
        let surf = fake_surface(NVBUF_MEM_CUDA_DEVICE, &mut list);
        assert!(planes_of(&surf, &list, 0).is_ok());
    }

    fn nvmm_info() -> gst_video::VideoInfo {
        gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 1920, 1080)
            .build()
            .unwrap()
    }

    /// A GStreamer buffer whose bytes are a FAKE NvBufSurface (as an NVMM memory's are).
    fn fake_nvmm_buffer(surf: &NvBufSurface) -> gst::Buffer {
        gst::init().unwrap();
        // GStreamer's system memory is aligned for it (8 bytes at least), as `nv12` checks.
        let mut buffer = gst::Buffer::with_size(size_of::<NvBufSurface>()).unwrap();
        {
            let mut map = buffer.get_mut().unwrap().map_writable().unwrap();
            // SAFETY: (test) `map` is exactly one NvBufSurface long (alignment is `nv12`'s
            // business: an unaligned one is an error there).
            unsafe {
                map.as_mut_ptr()
                    .cast::<NvBufSurface>()
                    .write_unaligned(*surf)
            };
        }
        buffer
    }

    #[test]
    fn fake_nvmm_buffer_maps_through_gstreamer() {
        let mut list = [fake_nv12_params()];
        let surf = fake_surface(NVBUF_MEM_CUDA_DEVICE, &mut list);
        let buffer = fake_nvmm_buffer(&surf);
        let m = NvmmMapping::nv12(&buffer, &nvmm_info()).unwrap();
        assert_eq!(
            (m.y, m.uv, m.y_stride, m.uv_stride),
            (0x7f00_0000_0000, 0x7f00_0000_0000 + 2048 * 1080, 2048, 2048)
        );
        drop(m);
        let other = gst_video::VideoInfo::builder(gst_video::VideoFormat::Nv12, 1280, 720)
            .build()
            .unwrap();
        let e = NvmmMapping::nv12(&buffer, &other)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("1920×1080, the caps say 1280×720"), "{e}");
        let short = gst::Buffer::from_mut_slice(vec![0u8; 16]);
        let e = NvmmMapping::nv12(&short, &nvmm_info())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not an NvBufSurface"), "{e}");
        assert!(e.starts_with("NVMM buffer maps to 16 bytes at 0x"), "{e}");
        // The buffer can be mapped again: every failed mapping unmapped it.
        assert!(buffer.map_readable().is_ok());
    }

    #[test]
    fn without_jetpack_the_loader_says_so_and_does_not_panic() {
        let e = load_nvbufsurface("libnvbufsurface-absent.so.1")
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("libnvbufsurface-absent.so.1: "), "{e}");
        assert!(e.ends_with(" — memory:NVMM needs NVIDIA JetPack"), "{e}");
        // Where the real library is absent (every box of ours: no JetPack, no DeepStream) the
        // real loader fails the same way, `available` says why, and a Jetson surface cannot
        // be mapped.
        let (e, first) = match nvbufsurface() {
            Ok(_) => {
                eprintln!("libnvbufsurface.so.1 is installed here: its absence is not checked");
                return;
            }
            Err(e) => (e.to_string(), e),
        };
        // The first load's error, kept: every later call gets the same one.
        match (available().err(), &first) {
            (Some(NvmmError::Shared(a)), NvmmError::Shared(b)) => assert!(Arc::ptr_eq(&a, b)),
            other => panic!("not the kept error: {other:?}"),
        }
        assert!(e.starts_with("libnvbufsurface.so.1: "), "{e}");
        assert!(e.ends_with(" — memory:NVMM needs NVIDIA JetPack"), "{e}");
        let mut list = [fake_nv12_params()];
        let surf = fake_surface(NVBUF_MEM_SURFACE_ARRAY, &mut list);
        let buffer = fake_nvmm_buffer(&surf);
        let got = NvmmMapping::nv12(&buffer, &nvmm_info())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(got, e, "the mapping reports the loader's error");
        assert!(e.contains("cannot open shared object file"), "{e}");
    }
}
