//! The GPU path's foundation: a probe that never crashes a box without NVIDIA's driver, and the
//! fused preprocessing kernel (NVRTC, compiled once per process for the device's architecture).
//!
//! cudarc panics when it cannot load the driver library, so [`probe`] checks for it first and
//! nothing else here touches CUDA before a successful probe. Knows nothing of GStreamer, models
//! or MQTT.

pub mod check;
pub mod preprocess;

use std::sync::Arc;

/// What the probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum GpuProbe {
    /// A usable CUDA device.
    Available {
        name: String,
        compute_capability: (i32, i32),
        memory_mib: u64,
    },
    /// No CUDA: why, in words (for the start-up log and config errors).
    Unavailable(String),
}

/// Looks for a CUDA driver and device 0 without ever panicking.
pub fn probe() -> GpuProbe {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made if it is absent.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
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

/// The process's CUDA context (the primary context of device 0).
pub fn context() -> Result<Arc<cudarc::driver::CudaContext>, String> {
    match probe() {
        GpuProbe::Available { .. } => {
            cudarc::driver::CudaContext::new(0).map_err(|e| e.to_string())
        }
        GpuProbe::Unavailable(why) => Err(why),
    }
}
