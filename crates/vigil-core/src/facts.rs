//! Facts about the box that validation and OTA need (is there a usable GPU? which ONNX Runtime
//! is installed?). The core never probes hardware or loads libraries: whoever calls it finds the
//! facts (the data plane's `facts::ThisBox`) and hands them in, and tests hand in fixed ones.

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

/// What a box offers, asked for lazily: probing a GPU or loading ONNX Runtime costs time, and a
/// check that does not need a fact never asks for it.
pub trait BoxFacts: Send + Sync {
    /// Whether CUDA device 0 is usable, and if not, why.
    fn gpu(&self) -> GpuProbe;
    /// The ONNX Runtime version installed (`MAJOR.MINOR.PATCH`); None when unknown.
    fn onnxruntime_version(&self) -> Option<String>;
    /// TensorRT's version (`MAJOR.MINOR.PATCH`) where ONNX Runtime's TensorRT provider can use
    /// it; else why not.
    fn tensorrt(&self) -> Result<String, String>;
}

/// Fixed facts: for tests, and for tools that must not probe.
#[derive(Debug, Clone)]
pub struct KnownFacts {
    pub gpu: GpuProbe,
    pub onnxruntime_version: Option<String>,
    pub tensorrt: Result<String, String>,
}

impl KnownFacts {
    /// A box without a GPU and with an unknown ONNX Runtime.
    pub fn cpu_only() -> Self {
        Self {
            gpu: GpuProbe::Unavailable("no GPU (fixed facts)".into()),
            onnxruntime_version: None,
            tensorrt: Err("no TensorRT (fixed facts)".into()),
        }
    }
}

impl BoxFacts for KnownFacts {
    fn gpu(&self) -> GpuProbe {
        self.gpu.clone()
    }
    fn onnxruntime_version(&self) -> Option<String> {
        self.onnxruntime_version.clone()
    }
    fn tensorrt(&self) -> Result<String, String> {
        self.tensorrt.clone()
    }
}
