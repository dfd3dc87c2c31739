//! nvJPEG, CUDA's JPEG library, loaded at run time: a build needs no CUDA, and a box without
//! the library gets a reason (the start-up log says it) and the CPU encoder.
//!
//! Written against `nvjpeg.h` of CUDA 12/13 (the encoder API has not changed since CUDA 10):
//! `nvjpegCreateSimple`, `nvjpegEncoderStateCreate(handle, &state, stream)`,
//! `nvjpegEncoderParamsCreate` + `SetQuality` + `SetSamplingFactors(NVJPEG_CSS_420)` +
//! `SetOptimizedHuffman(0)`, `nvjpegEncodeYUV` of planar 4:2:0 in device memory, then
//! `nvjpegEncodeRetrieveBitstream` twice (the length, then the bytes into host memory) with the
//! stream synchronised between, as GStreamer's own `nvjpegenc` (1.24) does. Every function
//! returns `nvjpegStatus_t` (a C enum; 0 is success).
//!
//! The library is looked for as `VIGIL_NVJPEG` (a path) if set, then `libnvjpeg.so.13`,
//! `libnvjpeg.so.12`, `libnvjpeg.so` on the dynamic linker's path, then in
//! `/usr/local/cuda/lib64`; a candidate that opens but lacks the encoder's symbols (Jetson's
//! `tegra/libnvjpeg.so` is a libjpeg-style library of the same name) is skipped with its reason.
//!
//! Only the JPEG's bytes cross to the host here (counted by the caller apart from pixels).

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use std::ffi::{c_int, c_uchar, c_void};
use std::sync::{Arc, OnceLock};

/// Why nvJPEG cannot be used, or a call of it failed.
#[derive(Debug, thiserror::Error)]
pub enum NvjpegError {
    #[error("nvJPEG not found ({0})")]
    NotFound(String),
    #[error("{call} returned nvjpegStatus {status} ({})", status_name(*status))]
    Call { call: &'static str, status: c_int },
    #[error("a {}×{} picture in a buffer of {len} bytes (I420, even sides)", size.0, size.1)]
    Picture { size: (u32, u32), len: usize },
    #[error(transparent)]
    Shared(Arc<NvjpegError>),
}

fn status_name(s: c_int) -> &'static str {
    match s {
        1 => "NOT_INITIALIZED",
        2 => "INVALID_PARAMETER",
        3 => "BAD_JPEG",
        4 => "JPEG_NOT_SUPPORTED",
        5 => "ALLOCATOR_FAILURE",
        6 => "EXECUTION_FAILED",
        7 => "ARCH_MISMATCH",
        8 => "INTERNAL_ERROR",
        9 => "IMPLEMENTATION_NOT_SUPPORTED",
        _ => "unknown",
    }
}

type Handle = *mut c_void;
type Stream = *mut c_void;

/// `nvjpegImage_t`: up to 4 planes (device pointers) and their pitches.
#[repr(C)]
struct NvjpegImage {
    channel: [*mut c_uchar; 4],
    pitch: [usize; 4],
}

/// `NVJPEG_CSS_420` of `nvjpegChromaSubsampling_t`.
const CSS_420: c_int = 2;

type CreateSimple = unsafe extern "C" fn(*mut Handle) -> c_int;
type Destroy = unsafe extern "C" fn(Handle) -> c_int;
type Create = unsafe extern "C" fn(Handle, *mut Handle, Stream) -> c_int;
type SetInt = unsafe extern "C" fn(Handle, c_int, Stream) -> c_int;
type EncodeYuv = unsafe extern "C" fn(
    Handle,
    Handle,
    Handle,
    *const NvjpegImage,
    c_int,
    c_int,
    c_int,
    Stream,
) -> c_int;
type Retrieve = unsafe extern "C" fn(Handle, Handle, *mut c_uchar, *mut usize, Stream) -> c_int;
type GetProperty = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;

/// The functions of the library used, resolved once.
pub struct NvjpegLib {
    _lib: libloading::Library,
    /// Where it was found, and its version (`nvjpegGetProperty`), for the start-up log.
    pub name: String,
    pub version: (i32, i32, i32),
    create_simple: CreateSimple,
    destroy: Destroy,
    state_create: Create,
    state_destroy: Destroy,
    params_create: Create,
    params_destroy: Destroy,
    set_quality: SetInt,
    set_sampling: SetInt,
    set_huffman: SetInt,
    encode_yuv: EncodeYuv,
    retrieve: Retrieve,
}

fn candidates() -> Vec<String> {
    let mut c: Vec<String> = std::env::var("VIGIL_NVJPEG").into_iter().collect();
    for v in ["libnvjpeg.so.13", "libnvjpeg.so.12", "libnvjpeg.so"] {
        c.push(v.to_string());
    }
    for v in ["libnvjpeg.so.13", "libnvjpeg.so.12"] {
        c.push(format!("/usr/local/cuda/lib64/{v}"));
    }
    c
}

fn open(name: &str) -> Result<NvjpegLib, String> {
    let why = |e: libloading::Error| match std::error::Error::source(&e) {
        Some(s) => s.to_string(),
        None => e.to_string(),
    };
    // SAFETY: loads CUDA's nvJPEG (its initialisers set up only its own state and the CUDA
    // runtime it carries) and looks up its encoder functions with the C signatures of
    // nvjpeg.h: every one returns nvjpegStatus_t (int); handles, states and parameters are
    // opaque pointers, streams are cudaStream_t (= CUstream), quality and sampling are int,
    // lengths size_t.
    unsafe {
        let lib = libloading::Library::new(name).map_err(why)?;
        macro_rules! sym {
            ($n:literal) => {
                *lib.get(concat!($n, "\0").as_bytes()).map_err(why)?
            };
        }
        let get_property: Option<GetProperty> = lib
            .get::<GetProperty>(b"nvjpegGetProperty\0")
            .ok()
            .map(|s| *s);
        let mut version = (0, 0, 0);
        if let Some(get) = get_property {
            // libraryPropertyType: MAJOR_VERSION 0, MINOR_VERSION 1, PATCH_LEVEL 2.
            let _ = get(0, &mut version.0);
            let _ = get(1, &mut version.1);
            let _ = get(2, &mut version.2);
        }
        Ok(NvjpegLib {
            create_simple: sym!("nvjpegCreateSimple"),
            destroy: sym!("nvjpegDestroy"),
            state_create: sym!("nvjpegEncoderStateCreate"),
            state_destroy: sym!("nvjpegEncoderStateDestroy"),
            params_create: sym!("nvjpegEncoderParamsCreate"),
            params_destroy: sym!("nvjpegEncoderParamsDestroy"),
            set_quality: sym!("nvjpegEncoderParamsSetQuality"),
            set_sampling: sym!("nvjpegEncoderParamsSetSamplingFactors"),
            set_huffman: sym!("nvjpegEncoderParamsSetOptimizedHuffman"),
            encode_yuv: sym!("nvjpegEncodeYUV"),
            retrieve: sym!("nvjpegEncodeRetrieveBitstream"),
            name: name.to_string(),
            version,
            _lib: lib,
        })
    }
}

/// nvJPEG, loaded on first use (once per process; the outcome, or every candidate's reason
/// for failing, is kept).
pub fn library() -> Result<&'static NvjpegLib, NvjpegError> {
    static LIB: OnceLock<Result<NvjpegLib, Arc<NvjpegError>>> = OnceLock::new();
    LIB.get_or_init(|| {
        let mut why = Vec::new();
        for name in candidates() {
            match open(&name) {
                Ok(l) => return Ok(l),
                Err(e) => why.push(format!("{name}: {e}")),
            }
        }
        Err(Arc::new(NvjpegError::NotFound(why.join("; "))))
    })
    .as_ref()
    .map_err(|e| NvjpegError::Shared(e.clone()))
}

fn check(call: &'static str, status: c_int) -> Result<(), NvjpegError> {
    match status {
        0 => Ok(()),
        status => Err(NvjpegError::Call { call, status }),
    }
}

/// One nvJPEG encoder (library handle, encoder state and parameters) for work on one stream;
/// freed on drop. The CUDA context of that stream must be current on the calling thread.
pub struct JpegEncoder {
    lib: &'static NvjpegLib,
    handle: Handle,
    state: Handle,
    params: Handle,
    quality: u8,
}

// SAFETY: the encoder's handles are used by one thread at a time (`&mut self` for every call);
// nvJPEG handles are not tied to the thread that made them.
unsafe impl Send for JpegEncoder {}

impl JpegEncoder {
    /// A baseline 4:2:0 encoder for `stream` at `quality` (1..=100).
    pub fn new(stream: &CudaStream, quality: u8) -> Result<Self, NvjpegError> {
        let lib = library()?;
        let s = stream.cu_stream() as Stream;
        let mut e = Self {
            lib,
            handle: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            params: std::ptr::null_mut(),
            quality: quality.clamp(1, 100),
        };
        // SAFETY: each call gets the out-pointer of a field of `e` and the live stream; a
        // failure leaves the pointers made so far in `e`, whose Drop frees exactly those.
        unsafe {
            check("nvjpegCreateSimple", (lib.create_simple)(&mut e.handle))?;
            check(
                "nvjpegEncoderStateCreate",
                (lib.state_create)(e.handle, &mut e.state, s),
            )?;
            check(
                "nvjpegEncoderParamsCreate",
                (lib.params_create)(e.handle, &mut e.params, s),
            )?;
            check(
                "nvjpegEncoderParamsSetQuality",
                (lib.set_quality)(e.params, c_int::from(e.quality), s),
            )?;
            check(
                "nvjpegEncoderParamsSetSamplingFactors",
                (lib.set_sampling)(e.params, CSS_420, s),
            )?;
            check(
                "nvjpegEncoderParamsSetOptimizedHuffman",
                (lib.set_huffman)(e.params, 0, s),
            )?;
        }
        Ok(e)
    }

    /// Encodes the I420 `w`×`h` picture in `pic` (full-range YCbCr, tightly packed: Y, then U,
    /// then V) at `quality` into `out` (cleared first; its capacity is reused). Queued on
    /// `stream`, which is synchronised before the bytes are read back.
    pub fn encode_i420(
        &mut self,
        stream: &CudaStream,
        pic: &CudaSlice<u8>,
        w: u32,
        h: u32,
        quality: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), NvjpegError> {
        let n = w as usize * h as usize;
        if w < 2
            || h < 2
            || !w.is_multiple_of(2)
            || !h.is_multiple_of(2)
            || pic.len() < n + n / 2
            || w > 65535
        {
            return Err(NvjpegError::Picture {
                size: (w, h),
                len: pic.len(),
            });
        }
        let s = stream.cu_stream() as Stream;
        let quality = quality.clamp(1, 100);
        let (base, sync) = pic.device_ptr(stream);
        let ptr = |off: usize| (base + off as u64) as *mut c_uchar;
        let img = NvjpegImage {
            channel: [ptr(0), ptr(n), ptr(n + n / 4), std::ptr::null_mut()],
            pitch: [w as usize, w as usize / 2, w as usize / 2, 0],
        };
        let lib = self.lib;
        // SAFETY: `img` points at the three planes of `pic`, a device allocation holding the
        // w×h I420 picture (checked above), borrowed for this call; the encoder reads them on
        // `s`, which is synchronised below before `pic` can be released. The handles are this
        // encoder's own. The first retrieve only writes `len`; after the stream is synchronised
        // the second writes at most `len` bytes into `out`'s spare capacity (reserved), and
        // `set_len` covers exactly the bytes it reports written.
        unsafe {
            if quality != self.quality {
                check(
                    "nvjpegEncoderParamsSetQuality",
                    (lib.set_quality)(self.params, c_int::from(quality), s),
                )?;
                self.quality = quality;
            }
            check(
                "nvjpegEncodeYUV",
                (lib.encode_yuv)(
                    self.handle,
                    self.state,
                    self.params,
                    &img,
                    CSS_420,
                    w as c_int,
                    h as c_int,
                    s,
                ),
            )?;
            let mut len = 0usize;
            check(
                "nvjpegEncodeRetrieveBitstream",
                (lib.retrieve)(self.handle, self.state, std::ptr::null_mut(), &mut len, s),
            )?;
            super::cuda::stream_synchronize(stream);
            out.clear();
            out.reserve(len);
            let mut got = len;
            check(
                "nvjpegEncodeRetrieveBitstream",
                (lib.retrieve)(self.handle, self.state, out.as_mut_ptr(), &mut got, s),
            )?;
            super::cuda::stream_synchronize(stream);
            out.set_len(got.min(len));
        }
        drop(sync);
        Ok(())
    }
}

impl Drop for JpegEncoder {
    fn drop(&mut self) {
        // SAFETY: frees what `new` made (null pointers are skipped), once; nothing uses the
        // encoder afterwards.
        unsafe {
            if !self.params.is_null() {
                let _ = (self.lib.params_destroy)(self.params);
            }
            if !self.state.is_null() {
                let _ = (self.lib.state_destroy)(self.state);
            }
            if !self.handle.is_null() {
                let _ = (self.lib.destroy)(self.handle);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_struct_is_nvjpegs() {
        // unsigned char* channel[4]; size_t pitch[4];
        assert_eq!(std::mem::size_of::<NvjpegImage>(), 64);
    }

    #[test]
    fn the_library_is_looked_for_by_versioned_name_first() {
        let c = candidates();
        let i = |n: &str| c.iter().position(|x| x == n).unwrap();
        assert!(i("libnvjpeg.so.13") < i("libnvjpeg.so.12"));
        assert!(i("libnvjpeg.so.12") < i("libnvjpeg.so"));
    }

    #[test]
    fn a_box_without_nvjpeg_gets_every_candidates_reason() {
        // No CUDA here (CI): the library is absent, and the error names what was tried.
        if library().is_ok() {
            return; // a box with nvJPEG: nothing to check here (gpu-check covers it).
        }
        let e = library().err().unwrap().to_string();
        assert!(
            e.contains("libnvjpeg.so.13") && e.contains("libnvjpeg.so.12"),
            "{e}"
        );
    }
}
