//! Engines built from a model's config: the GPU path (NVDEC frames → fused preprocessing →
//! ONNX Runtime's CUDA provider → decode + NMS, all on the GPU) where the backend asks for it
//! and the box can, else ONNX Runtime on the CPU. Loads and checks the model before anything
//! that runs is touched, so a model that fails to load changes nothing.

use crate::gpu::GpuError;
use crate::gpu::detector::GpuDetector;
use crate::media::camera::GpuFrames;
use crate::onnx::{OnnxBackend, OnnxError};
use crate::worker::Engine;
use vigil_core::config::{BackendKind, ModelConfig};
use vigil_core::error::chain;
use vigil_core::model::nanodet::{NanodetDecoder, input_spec};
use vigil_core::model::preprocess::Preprocessor;
use vigil_core::model::{Backend, InferError};

/// Why a model could not be made into an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `backend = "cuda"` and the GPU runtime or the GPU path failed.
    #[error("model {model}: backend \"cuda\"")]
    Cuda {
        model: String,
        #[source]
        source: GpuError,
    },
    /// ONNX Runtime could not load the model on the CPU.
    #[error("model {model}")]
    Load {
        model: String,
        #[source]
        source: OnnxError,
    },
    /// The model's input is fixed at another size than the config's.
    #[error(
        "model {model}: its input is fixed at {size}×{size}, but input_size = {configured} (expected {size})"
    )]
    InputSize {
        model: String,
        size: usize,
        configured: u32,
    },
    /// The model's inputs or outputs do not fit NanoDet.
    #[error(transparent)]
    Layout(#[from] InferError),
}

/// A model loaded and checked, ready to be given a worker.
pub struct Built {
    pub engine: Engine,
    /// The GPU path: the cameras' decoders share this CUDA context.
    pub cuda: Option<GpuFrames>,
}

/// Loads a model for its backend choice: `cpu`; `cuda` (the config check refuses it on a box
/// without a GPU); `auto` = the GPU path where the GPU runtime comes up and ONNX Runtime's CUDA
/// provider loads the model, else the CPU, saying why.
pub fn build(name: &str, m: &ModelConfig) -> Result<Built, EngineError> {
    let gpu = match m.backend {
        BackendKind::Cpu => None,
        BackendKind::Cuda => Some(crate::gpu::runtime().map_err(|source| EngineError::Cuda {
            model: name.to_string(),
            source,
        })?),
        BackendKind::Auto => match crate::gpu::runtime() {
            Ok(rt) => Some(rt),
            Err(why) => {
                tracing::info!(model = name, "backend auto → cpu: {}", chain(&why));
                None
            }
        },
    };
    if let Some(rt) = gpu {
        match GpuDetector::new(&rt.ctx, &m.path, m.input_size as usize) {
            Ok(g) => {
                let (size, dynamic) = g.input();
                check_input_size(name, m, size)?;
                tracing::info!(
                    model = name,
                    backend = "cuda",
                    sync = rt.sync,
                    "model loaded: onnxruntime CUDA provider, NVDEC frames → fused preprocessing → inference → decode + NMS on the GPU; input {}",
                    describe_input(size, dynamic)
                );
                return Ok(Built {
                    engine: Engine::Gpu(Box::new(g)),
                    cuda: Some(rt.frames()),
                });
            }
            Err(source) if m.backend == BackendKind::Cuda => {
                return Err(EngineError::Cuda {
                    model: name.to_string(),
                    source,
                });
            }
            Err(e) => tracing::warn!(
                model = name,
                "backend auto → cpu: the GPU path failed: {}",
                chain(&e)
            ),
        }
    }
    let backend =
        OnnxBackend::load_cpu(&m.path, m.threads as usize).map_err(|source| EngineError::Load {
            model: name.to_string(),
            source,
        })?;
    let (size, dynamic) =
        vigil_core::model::nanodet::input_size(backend.inputs(), m.input_size as usize)?;
    check_input_size(name, m, size)?;
    tracing::info!(model = name, backend = "cpu", engine = %backend.describe(), "model loaded; input {}", describe_input(size, dynamic));
    let decoder = NanodetDecoder::new(&m.path.display().to_string(), size, backend.outputs())?;
    Ok(Built {
        engine: Engine::Cpu {
            backend: Box::new(backend),
            pre: Preprocessor::new(input_spec(size, dynamic)),
            decoder,
        },
        cuda: None,
    })
}

fn check_input_size(name: &str, m: &ModelConfig, size: usize) -> Result<(), EngineError> {
    if size != m.input_size as usize {
        return Err(EngineError::InputSize {
            model: name.to_string(),
            size,
            configured: m.input_size,
        });
    }
    Ok(())
}

fn describe_input(size: usize, dynamic: bool) -> String {
    if dynamic {
        format!("{size} on the long side, the short side padded to a multiple of 32")
    } else {
        format!("{size}×{size}")
    }
}
