//! [`GpuError`]: why the GPU path could not come up, load a model or run a batch, with the
//! error of the library that failed (CUDA's driver, NVRTC, ONNX Runtime, GStreamer, the
//! dynamic linker) kept as its source. `ffi/` returns it too.
//!
//! Shown as [`vigil_core::error::chain`] shows errors (`outer: source: ...`), the texts are the
//! ones the path has always logged and reported. Nothing here is built unless something fails:
//! the checks before each kernel launch keep their numbers, and the text is made only when it
//! is shown.

use crate::ffi::preprocess_kernel::Precision;
use crate::gpu::ort_cuda::MAX_BATCH;
use crate::onnx::OnnxError;
use std::sync::Arc;
use vigil_core::error::chain;
use vigil_core::model::InferError;

/// Why the GPU path failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The probe found no usable GPU (its reason).
    #[error("{0}")]
    Unavailable(String),
    /// One error for several results: kept from the first attempt (the GPU runtime, a library
    /// loaded once) or given to every frame of a batch.
    #[error(transparent)]
    Shared(Arc<GpuError>),
    #[error(transparent)]
    GstInit(#[from] crate::media::InitError),
    /// A CUDA driver call failed.
    #[error(transparent)]
    Driver(#[from] cudarc::driver::DriverError),
    /// NVRTC could not compile a kernel.
    #[error("NVRTC")]
    Nvrtc(#[source] cudarc::nvrtc::CompileError),
    /// A box with `nvv4l2decoder` where neither kind of device frame can be mapped.
    #[error(
        "neither GStreamer's CUDA library ({}) nor Jetson's NVMM mapping ({})",
        chain(gst.as_ref()),
        chain(nvmm.as_ref())
    )]
    NoFrameMapping {
        gst: Box<GpuError>,
        nvmm: Box<GpuError>,
    },
    #[error("GStreamer's CUDA library is needed to keep NVDEC frames on the GPU")]
    NeedGstCuda(#[source] Box<GpuError>),
    #[error("this build has no Jetson NVMM support (built without the `jetson` feature)")]
    NoJetson,
    #[error("frame in host memory, not device memory")]
    HostFrame,
    #[error("frame in a host format other than I420/NV12")]
    HostFormat,
    /// A library loaded at run time could not be opened.
    #[error("{name}")]
    Library {
        name: &'static str,
        #[source]
        source: libloading::Error,
    },
    /// A function of a library loaded at run time is missing.
    #[error(transparent)]
    Symbol(libloading::Error),
    #[error("gst_cuda_load_library failed (no CUDA driver for GStreamer)")]
    GstCudaLoad,
    /// A C call that reports failure by a null or false result (its name).
    #[error("{0} failed")]
    Call(&'static str),
    /// A pipeline description GStreamer could not parse.
    #[error(transparent)]
    Parse(#[from] gstreamer::glib::Error),
    #[error("not a pipeline")]
    NotAPipeline,
    #[error("no GStreamer CUDA context (libgstcuda-1.0) on this box")]
    NoGstContext,
    #[error("{0} memories in a CUDA buffer, expected 1")]
    CudaMemories(usize),
    /// ONNX Runtime could not load, bind or run the model.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The model does not fit NanoDet, or its outputs could not be decoded.
    #[error(transparent)]
    Infer(#[from] InferError),
    #[error("the model returned non-finite values")]
    NonFinite,
    #[error("{frames} frames for a model that takes {batch}")]
    BatchTooLarge { frames: usize, batch: usize },
    #[error("no session made for {batch} × {in_w}×{in_h} inputs")]
    NoSession {
        batch: usize,
        in_w: usize,
        in_h: usize,
    },
    #[error("image {image} of a batch of {batch}")]
    NoOutputPart { image: usize, batch: usize },
    #[error(
        "tile {w}×{h} at ({x}, {y}) is not within the {frame_w}×{frame_h} frame on whole chroma samples"
    )]
    Tile {
        x: usize,
        y: usize,
        w: usize,
        h: usize,
        frame_w: usize,
        frame_h: usize,
    },
    /// The checks before a kernel launch (a launch that would read or write out of bounds).
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[cfg(feature = "jetson")]
    #[error(transparent)]
    Nvmm(#[from] crate::ffi::jetson_nvmm::NvmmError),
    /// nvJPEG could not be loaded or failed to encode.
    #[error(transparent)]
    Nvjpeg(#[from] crate::ffi::nvjpeg::NvjpegError),
}

/// A kernel launch refused before it was queued: what it was given does not hold what the
/// kernel would read or write.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{precision:?} output into a buffer of {element}-byte elements")]
    Precision {
        precision: Precision,
        element: usize,
    },
    #[error("more than {MAX_BATCH} frames in one batch")]
    BatchFull,
    #[error("{0} frames in one batch, at most {MAX_BATCH}")]
    TooManyFrames(usize),
    #[error("input buffer of {len} elements, {needed} needed")]
    InputBuffer { len: usize, needed: usize },
    #[error("a {}×{} frame in a batch of {}×{} ones (input sizes differ)", size.0, size.1, first.0, first.1)]
    MixedSizes {
        size: (usize, usize),
        first: (usize, usize),
    },
    #[error("a {}×{} frame (strides {}/{}) beyond the kernel's 32-bit indexing", size.0, size.1, strides.0, strides.1)]
    Unindexable {
        size: (usize, usize),
        strides: (usize, usize),
    },
    #[error(
        "a {}×{} frame (strides {}/{}, chroma at {} and {}) does not fit its {len}-byte buffer",
        size.0, size.1, strides.0, strides.1, chroma.0, chroma.1
    )]
    PlanesOutside {
        size: (usize, usize),
        strides: (usize, usize),
        chroma: (usize, usize),
        len: usize,
    },
    /// The decode kernel's model outputs or buffers (boxed: the largest, and rare).
    #[error(transparent)]
    Decode(Box<DecodeFit>),
    #[error(
        "NMS of {cap} candidates into {max_out} detections with buffers of {}/{}/{} floats",
        lens.0, lens.1, lens.2
    )]
    Nms {
        cap: i32,
        max_out: i32,
        /// Candidates, count and result block.
        lens: (usize, usize, usize),
    },
    #[error("image {0} of a batch of at most {MAX_BATCH}")]
    Image(usize),
    #[error("a {}×{} picture (even sides of at least 2, within 32-bit indexing) in a buffer of {len} bytes", size.0, size.1)]
    Picture { size: (u32, u32), len: usize },
    #[error("{n} overlay primitives asked for, {len} in the buffer")]
    Prims { n: usize, len: usize },
    #[error("expected 3 output levels, got {0}")]
    Levels(usize),
}

/// What the decode kernel was given that does not fit the levels it was to decode.
#[derive(Debug, thiserror::Error)]
#[error(
    "model outputs of {outputs:?} floats, or buffers of {}/{} for {cap} candidates, do not fit levels of {}/{}/{} cells × {classes} classes, {bins} bins",
    buffers.0, buffers.1, cells[0], cells[1], cells[2]
)]
pub struct DecodeFit {
    /// The six outputs' lengths (scores and boxes of each level).
    pub outputs: [usize; 6],
    /// The candidate and count buffers' lengths.
    pub buffers: (usize, usize),
    pub cap: i32,
    pub cells: [i64; 3],
    pub classes: usize,
    pub bins: usize,
}

impl GpuError {
    /// This error, to be given to several results or kept for the process.
    pub fn shared(self) -> Arc<GpuError> {
        match self {
            GpuError::Shared(e) => e,
            e => Arc::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts the GPU path always gave, now with the failing library's own words after them.
    #[test]
    fn texts_are_the_chains_of_their_sources() {
        let library = || GpuError::Library {
            name: "libgstcuda-1.0.so.0",
            source: libloading::Error::DlOpenUnknown,
        };
        let need = GpuError::NeedGstCuda(Box::new(GpuError::Shared(library().shared())));
        assert_eq!(
            chain(&need),
            "GStreamer's CUDA library is needed to keep NVDEC frames on the GPU: libgstcuda-1.0.so.0: dlopen failed, but system did not report the error"
        );
        let neither = GpuError::NoFrameMapping {
            gst: Box::new(library()),
            nvmm: Box::new(GpuError::NoJetson),
        };
        assert_eq!(
            chain(&neither),
            "neither GStreamer's CUDA library (libgstcuda-1.0.so.0: dlopen failed, but system did not report the error) nor Jetson's NVMM mapping (this build has no Jetson NVMM support (built without the `jetson` feature))"
        );
        let decode = GpuError::from(LaunchError::Decode(Box::new(DecodeFit {
            outputs: [1, 2, 3, 4, 5, 6],
            buffers: (7, 8),
            cap: 9,
            cells: [10, 11, 12],
            classes: 80,
            bins: 8,
        })));
        assert_eq!(
            chain(&decode),
            "model outputs of [1, 2, 3, 4, 5, 6] floats, or buffers of 7/8 for 9 candidates, do not fit levels of 10/11/12 cells × 80 classes, 8 bins"
        );
        let engine = crate::engine::EngineError::Cuda {
            model: "m".into(),
            source: GpuError::Shared(
                GpuError::Unavailable(
                    "no NVIDIA CUDA driver library (libcuda.so) on this box".into(),
                )
                .shared(),
            ),
        };
        assert_eq!(
            chain(&engine),
            "model m: backend \"cuda\": no NVIDIA CUDA driver library (libcuda.so) on this box"
        );
    }

    /// A batch's error is given to each of its frames, a kept error to each caller: the same
    /// value, not copies.
    #[test]
    fn a_shared_error_is_one_value() {
        let shared = GpuError::NonFinite.shared();
        let again = GpuError::Shared(shared.clone()).shared();
        assert!(Arc::ptr_eq(&again, &shared));
        assert_eq!(
            chain(&GpuError::Shared(again)),
            "the model returned non-finite values"
        );
    }

    /// Without a GPU (this box, CI) the runtime says why, and every call gets the first
    /// attempt's error.
    #[test]
    fn without_a_gpu_the_runtime_keeps_the_probes_reason() {
        let vigil_core::facts::GpuProbe::Unavailable(why) = crate::gpu::probe() else {
            eprintln!("a GPU here: not checked");
            return;
        };
        let (Err(GpuError::Shared(a)), Err(GpuError::Shared(b))) =
            (crate::gpu::runtime(), crate::gpu::runtime())
        else {
            panic!("the runtime came up without a GPU, or its error is not kept");
        };
        assert!(Arc::ptr_eq(&a, &b));
        assert!(matches!(*a, GpuError::Unavailable(_)), "{a:?}");
        assert_eq!(chain(&*a), why);
    }
}
