//! This box's facts for the core's checks ([`vigil_core::facts::BoxFacts`]): the GPU probe and
//! the ONNX Runtime version, each found on first use.

use vigil_core::facts::{BoxFacts, GpuProbe};

/// The box this process runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisBox;

impl BoxFacts for ThisBox {
    fn gpu(&self) -> GpuProbe {
        crate::gpu::probe()
    }

    fn onnxruntime_version(&self) -> Option<String> {
        onnxruntime_version()
    }

    fn tensorrt(&self) -> Result<String, String> {
        tensorrt().map(|t| t.version.clone())
    }
}

/// TensorRT for ONNX Runtime's provider, probed once per process.
pub fn tensorrt() -> Result<&'static crate::ffi::tensorrt::TensorRt, String> {
    static PROBE: std::sync::OnceLock<Result<crate::ffi::tensorrt::TensorRt, String>> =
        std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let ort = crate::onnx::init_runtime().map(|(p, _)| std::path::PathBuf::from(p));
            match ort {
                Ok(p) => crate::ffi::tensorrt::probe(Some(&p)),
                Err(e) => Err(format!("ONNX Runtime did not load: {e}")),
            }
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The ONNX Runtime version, from the file name of the library loaded (ONNX Runtime ships it
/// as `libonnxruntime.so.MAJOR.MINOR.PATCH`, reached through the `libonnxruntime.so.1` link;
/// its build info carries no version). None when the name does not tell.
fn onnxruntime_version() -> Option<String> {
    let (path, _) = crate::onnx::init_runtime().ok()?;
    let real = std::fs::canonicalize(path).ok()?;
    let version = real
        .file_name()?
        .to_str()?
        .strip_prefix("libonnxruntime.so.")?
        .to_string();
    let parts: Vec<&str> = version.split('.').collect();
    (parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok())).then_some(version)
}
