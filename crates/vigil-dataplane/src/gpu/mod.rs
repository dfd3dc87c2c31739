//! The GPU path: a probe that never crashes a box without NVIDIA's driver, the process's one
//! CUDA runtime (context, its GStreamer wrapper where there is one, [`GPU_LOCK`]), the frame
//! mappings, and the modules of the path (kernels, ONNX Runtime's CUDA provider, the detector).
//!
//! cudarc panics when it cannot load the driver library, so [`probe`] checks for it first and
//! nothing here touches CUDA before a successful probe. Knows nothing of tracking, rules or
//! MQTT. Its errors, and `ffi/`'s, are [`GpuError`]s.
//!
//! Safe Rust only: the raw driver calls (the probe's library check, the context's flags, event
//! tracking, the threads' capture mode, dangling captures) are `ffi::cuda`'s, the kernels'
//! launches `ffi::preprocess_kernel`'s and `ffi::postprocess_kernels`', ONNX Runtime's C API
//! `ffi::ort`'s, the frame mappings `ffi::gst_cuda`'s and `ffi::jetson_nvmm`'s.

pub mod detector;
pub mod error;
pub mod ort_cuda;
pub mod picture;
pub mod postprocess;
pub mod preprocess;

use crate::ffi::cuda;
use crate::ffi::gst_cuda;
#[cfg(feature = "jetson")]
use crate::ffi::jetson_nvmm;
use std::sync::Arc;

pub use error::{GpuError, LaunchError};
pub use vigil_core::facts::GpuProbe;

/// Looks for a CUDA driver and device 0 without ever panicking (once per process; the result
/// is kept).
pub fn probe() -> GpuProbe {
    static PROBE: std::sync::OnceLock<GpuProbe> = std::sync::OnceLock::new();
    PROBE.get_or_init(probe_now).clone()
}

fn probe_now() -> GpuProbe {
    // Only tries to dlopen the driver library; no CUDA call is made if it is absent.
    let present = cuda::driver_present();
    if !present {
        return GpuProbe::Unavailable(
            "no NVIDIA CUDA driver library (libcuda.so) on this box".into(),
        );
    }
    match std::panic::catch_unwind(cudarc_device) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => GpuProbe::Unavailable(format!("CUDA driver present but unusable: {e}")),
        Err(_) => GpuProbe::Unavailable("CUDA driver present but failed to load".into()),
    }
}

fn cudarc_device() -> Result<GpuProbe, cudarc::driver::DriverError> {
    let ctx = cudarc::driver::CudaContext::new(0)?;
    let memory_mib = ctx.total_mem().map(|b| b as u64 >> 20).unwrap_or(0);
    Ok(GpuProbe::Available {
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        memory_mib,
    })
}

/// A frame in device memory mapped for the kernels, for as long as this lives: NVDEC's
/// `memory:CUDAMemory` or Jetson's `memory:NVMM` (untested here, see [`jetson_nvmm`]).
pub enum MappedFrame {
    Cuda(gst_cuda::CudaMapping),
    #[cfg(feature = "jetson")]
    Nvmm(jetson_nvmm::NvmmMapping),
}

/// Whether Jetson's NVMM frames can be mapped here (JetPack's libraries load).
fn nvmm_available() -> Result<(), GpuError> {
    #[cfg(feature = "jetson")]
    return Ok(jetson_nvmm::available()?);
    #[cfg(not(feature = "jetson"))]
    Err(GpuError::NoJetson)
}

impl MappedFrame {
    /// Maps an NV12 frame in device memory; an error for a frame in host memory.
    pub fn nv12(memory: &crate::media::frame::FrameMemory) -> Result<Self, GpuError> {
        use crate::media::frame::FrameMemory;
        match memory {
            FrameMemory::Cuda { buffer, info } => {
                gst_cuda::CudaMapping::nv12(buffer, info).map(Self::Cuda)
            }
            #[cfg(feature = "jetson")]
            FrameMemory::Nvmm { buffer, info } => {
                Ok(Self::Nvmm(jetson_nvmm::NvmmMapping::nv12(buffer, info)?))
            }
            #[cfg(not(feature = "jetson"))]
            FrameMemory::Nvmm { .. } => Err(GpuError::NoJetson),
            FrameMemory::Host(_) => Err(GpuError::HostFrame),
        }
    }

    /// The frame's planes as the preprocessing kernel reads them (NV12: Y, then U and V
    /// interleaved; the frame's size as mapped, from its caps), for as long as the mapping
    /// lives.
    pub fn planes(&self) -> preprocess::DevicePlanes<'_> {
        match self {
            Self::Cuda(m) => m.planes(),
            #[cfg(feature = "jetson")]
            Self::Nvmm(m) => m.planes(),
        }
    }
}

/// The process's CUDA context (the primary context of device 0).
pub fn context() -> Result<Arc<cudarc::driver::CudaContext>, GpuError> {
    runtime().map(|r| r.ctx.clone())
}

/// What the GPU path shares process-wide: one CUDA context (device 0's primary context, which
/// ONNX Runtime's CUDA provider also uses) and the same context wrapped for GStreamer.
pub struct GpuRuntime {
    pub ctx: Arc<cudarc::driver::CudaContext>,
    /// `gst.cuda.context` for the camera pipelines (their decoders allocate frames in it);
    /// `None` on a Jetson without GStreamer's CUDA library, whose `nvv4l2decoder` frames are
    /// in NVMM memory and mapped by `jetson_nvmm` instead.
    pub gst: Option<gstreamer::Context>,
    /// How the host waits for the GPU (`VIGIL_CUDA_SYNC`: `blocking` (default), `spin`,
    /// `yield`).
    pub sync: &'static str,
}

impl GpuRuntime {
    /// Where the camera pipelines of the GPU path leave their frames.
    pub fn frames(&self) -> crate::media::camera::GpuFrames {
        match &self.gst {
            Some(c) => crate::media::camera::GpuFrames::Cuda(c.clone()),
            None => crate::media::camera::GpuFrames::Nvmm,
        }
    }
}

/// The process's GPU runtime, made once: the probe, then the primary context with the chosen
/// scheduling flags (set before anything makes it active), then its GStreamer wrapper. The
/// first attempt's error is kept, and given (shared) to every later call.
pub fn runtime() -> Result<&'static GpuRuntime, GpuError> {
    static RT: std::sync::OnceLock<Result<GpuRuntime, Arc<GpuError>>> = std::sync::OnceLock::new();
    RT.get_or_init(|| make_runtime().map_err(GpuError::shared))
        .as_ref()
        .map_err(|e| GpuError::Shared(e.clone()))
}

fn make_runtime() -> Result<GpuRuntime, GpuError> {
    if let GpuProbe::Unavailable(why) = probe() {
        return Err(GpuError::Unavailable(why));
    }
    if std::env::var("VIGIL_CUDA_GRAPH").as_deref() == Ok("0") {
        ort_cuda::CUDA_GRAPH.store(false, std::sync::atomic::Ordering::Relaxed);
    }
    // GStreamer must be up before its CUDA context is made.
    crate::media::init()?;
    use cudarc::driver::sys::CUctx_flags as F;
    let (sync, flags) = match std::env::var("VIGIL_CUDA_SYNC").as_deref() {
        Ok("spin") => ("spin", F::CU_CTX_SCHED_SPIN),
        Ok("yield") => ("yield", F::CU_CTX_SCHED_YIELD),
        _ => ("blocking", F::CU_CTX_SCHED_BLOCKING_SYNC),
    };
    // The driver is present (probe); device 0 exists. Fails harmlessly if the context is
    // already active (then the driver's choice stays, as the check below says).
    cuda::set_primary_context_flags(flags);
    let ctx = cudarc::driver::CudaContext::new(0)?;
    // The context is current on this thread (cudarc binds it on creation).
    let sync = match cuda::current_context_flags() {
        Some(got) if got & 0x7 != flags as u32 => {
            tracing::warn!(
                "CUDA context scheduling flags are {got:#x}, not the {sync} wait asked for (the context was already active)"
            );
            "driver's choice"
        }
        _ => sync,
    };
    // Each GPU detector queues all its work on its one stream, so cudarc's cross-stream
    // event tracking (an event record per launch) has nothing to order.
    cuda::disable_event_tracking(&ctx);
    let gst = match gst_cuda::shared_context(&ctx) {
        Ok(c) => Some(c),
        // JetPack 6 ships GStreamer 1.20, without libgstcuda: NVMM frames need none.
        Err(e) if gstreamer::ElementFactory::find("nvv4l2decoder").is_some() => {
            match nvmm_available() {
                Ok(()) => {
                    tracing::info!(
                        "no GStreamer CUDA context ({}): Jetson nvv4l2decoder frames in NVMM memory, mapped through EGL",
                        vigil_core::error::chain(&e)
                    );
                    None
                }
                Err(nvmm) => {
                    return Err(GpuError::NoFrameMapping {
                        gst: Box::new(e),
                        nvmm: Box::new(nvmm),
                    });
                }
            }
        }
        Err(e) => return Err(GpuError::NeedGstCuda(Box::new(e))),
    };
    Ok(GpuRuntime { ctx, gst, sync })
}

/// Compiles CUDA C for `ctx`'s device with NVRTC (at start-up, once per kernel set) and loads
/// it. `fmad=false` so products and sums round as on the CPU, whose code is the reference.
pub fn compile(
    ctx: &Arc<cudarc::driver::CudaContext>,
    src: &str,
) -> Result<Arc<cudarc::driver::CudaModule>, GpuError> {
    let (major, minor) = ctx.compute_capability()?;
    let arch: &'static str = ARCH.get_or_init(|| {
        // CompileOptions wants a 'static name; one per process.
        Box::leak(format!("sm_{major}{minor}").into_boxed_str())
    });
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        fmad: Some(false),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(GpuError::Nvrtc)?;
    Ok(ctx.load_module(ptx)?)
}

static ARCH: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Lets the calling thread keep making CUDA calls while another thread captures a CUDA graph
/// (ONNX Runtime captures in global mode, which otherwise forbids, process-wide, calls such as
/// allocations and synchronous copies, and the capture then fails). Called once per thread by
/// the GPU workers and by the camera threads that receive NVDEC frames; a thread-local flag
/// makes repeated calls free. A no-op where no GPU runtime was made.
pub fn relax_capture_mode() {
    thread_local! {
        static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if DONE.with(|d| d.replace(true)) {
        return;
    }
    // Only called once the driver is loaded (the GPU runtime exists).
    cuda::relax_thread_capture_mode();
}

/// Drops `parts` (GPU resources in `ctx`, with the stream `stream` gives) once: with the context
/// current, after that stream's work, under the shared [`GPU_LOCK`], so never while a CUDA
/// graph is captured (a reload drops detectors and renderers on other threads while workers run).
pub(crate) fn release<T>(
    ctx: &cudarc::driver::CudaContext,
    parts: &mut Option<T>,
    stream: impl FnOnce(&T) -> &Arc<cudarc::driver::CudaStream>,
) {
    let _ = ctx.bind_to_thread();
    relax_capture_mode();
    let _shared = GPU_LOCK.read().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = parts.take() {
        let _ = stream(&g).synchronize();
        drop(g);
    }
}

/// Per-frame GPU work and dropping a detector hold this shared; loading a model and making a
/// session (cuDNN's search, then the CUDA graph capture) hold it exclusively (a capture in
/// global mode fails if another thread makes a forbidden CUDA call meanwhile).
pub static GPU_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());
