//! Engines built from a model's config: the GPU path (NVDEC frames → fused preprocessing →
//! ONNX Runtime's CUDA provider → decode + NMS, all on the GPU) where the backend asks for it
//! and the box can, else ONNX Runtime on the CPU. Loads and checks the model before anything
//! that runs is touched, so a model that fails to load changes nothing.

use crate::gpu::GpuError;
use crate::gpu::detector::GpuDetector;
use crate::media::camera::GpuFrames;
use crate::onnx::{OnnxBackend, OnnxError};
use crate::worker::Engine;
use vigil_core::config::{BackendKind, InputSize, ModelConfig};
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
    /// `backend = "tensorrt"` and TensorRT is not usable here, or its engine failed.
    #[error("model {model}: backend \"tensorrt\": {why}")]
    Tensorrt { model: String, why: String },
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
    /// `input_size = "native"` with a model whose input size is fixed.
    #[error(
        "model {model}: input_size = \"native\" needs a model that takes any input size, and this one is fixed at {size}×{size} (expected input_size = {size}, or the model exported with dynamic height and width)"
    )]
    NativeFixed { model: String, size: usize },
    /// The model's inputs or outputs do not fit NanoDet.
    #[error(transparent)]
    Layout(#[from] InferError),
}

/// A model loaded and checked, ready to be given a worker.
pub struct Built {
    pub engine: Engine,
    /// The GPU path: the cameras' decoders share this CUDA context.
    pub cuda: Option<GpuFrames>,
    /// The backend it runs on, and why not a better one (`auto`'s fallbacks).
    pub backend: BackendUsed,
}

/// Which backend a model runs on (`tensorrt`, `cuda`, `cpu`) and, when `auto` fell back, why
/// (for the start-up log, telemetry and `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUsed {
    pub name: &'static str,
    pub fallback: Option<String>,
    /// The ONNX file loaded: the model's `path`, or its `cpu_path` on the CPU.
    pub file: std::path::PathBuf,
}

/// Where TensorRT engines are cached: `<state>/engines`, bounded (`[storage]
/// engine_cache_bytes`). Set by the control plane at start-up; unset (tools, tests): a
/// directory under the system's temporary directory.
static ENGINE_CACHE: std::sync::Mutex<Option<(std::path::PathBuf, u64)>> =
    std::sync::Mutex::new(None);

/// Sets the engine cache's directory and bound.
pub fn set_engine_cache(dir: &std::path::Path, max_bytes: u64) {
    *ENGINE_CACHE.lock().unwrap_or_else(|e| e.into_inner()) = Some((dir.to_path_buf(), max_bytes));
}

/// The engine cache's directory and bound.
pub fn engine_cache() -> (std::path::PathBuf, u64) {
    ENGINE_CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| (std::env::temp_dir().join("vigil-engines"), 2 << 30))
}

/// TensorRT for `m` on this box: the engine cache and key, or why not.
fn tensorrt_options(m: &ModelConfig) -> Result<crate::gpu::ort_cuda::TrtOptions, String> {
    let trt = crate::facts::tensorrt()?;
    let (gpu, cc) = match crate::gpu::probe() {
        vigil_core::facts::GpuProbe::Available {
            name,
            compute_capability,
            ..
        } => (
            name,
            format!("{}.{}", compute_capability.0, compute_capability.1),
        ),
        vigil_core::facts::GpuProbe::Unavailable(why) => return Err(why),
    };
    let sha =
        crate::engines::file_sha256(&m.path).map_err(|e| format!("{}: {e}", m.path.display()))?;
    let (dir, max) = engine_cache();
    let cache = crate::engines::EngineCache::open(&dir, max)?;
    use vigil_core::facts::BoxFacts;
    let key = crate::engines::EngineKey {
        model_sha256: sha,
        tensorrt: trt.version.clone(),
        onnxruntime: crate::facts::ThisBox
            .onnxruntime_version()
            .unwrap_or_else(|| "unknown".into()),
        gpu,
        compute_capability: cc,
        precision: if m.calibration_table.is_some() {
            crate::engines::Precision::Int8
        } else {
            crate::engines::Precision::Fp16
        },
        profile: String::new(),
    };
    // Engines shipped in the OTA set the model comes from (`<slot>/engines/`, the slot being
    // the directory with the set's `manifest.json`): those built for this box go in the cache.
    if let Some(slot) = m
        .path
        .ancestors()
        .skip(1)
        .take(4)
        .find(|d| d.join("manifest.json").is_file())
    {
        let (installed, skipped) = cache.install_shipped(&slot.join("engines"), &key);
        for id in installed {
            tracing::info!(entry = %id, "engine cache: installed an engine shipped in the OTA set");
        }
        for (id, why) in skipped {
            tracing::info!(entry = %id, "engine cache: a shipped engine is not for this box ({why}); it builds its own");
        }
    }
    Ok(crate::gpu::ort_cuda::TrtOptions {
        cache,
        key,
        calibration: m.calibration_table.clone(),
    })
}

/// Loads a model for its backend choice: `cpu`; `cuda` and `tensorrt` (the config check
/// refuses them on a box without a GPU, or without TensorRT); `auto` = the first of TensorRT,
/// the CUDA provider and the CPU that loads the model, saying why each one before it did not.
pub fn build(name: &str, m: &ModelConfig) -> Result<Built, EngineError> {
    let cuda_err = |source| EngineError::Cuda {
        model: name.to_string(),
        source,
    };
    let mut fallback: Vec<String> = Vec::new();
    let gpu = match m.backend {
        BackendKind::Cpu => None,
        BackendKind::Cuda => Some(crate::gpu::runtime().map_err(cuda_err)?),
        BackendKind::Tensorrt => {
            Some(crate::gpu::runtime().map_err(|e| EngineError::Tensorrt {
                model: name.to_string(),
                why: format!("no GPU: {}", chain(&e)),
            })?)
        }
        BackendKind::Auto => match crate::gpu::runtime() {
            Ok(rt) => Some(rt),
            Err(why) => {
                let why = format!("no GPU: {}", chain(&why));
                tracing::info!(model = name, "backend auto → cpu: {why}");
                fallback.push(why);
                None
            }
        },
    };
    if let Some(rt) = gpu {
        // TensorRT first where it is asked for or `auto` may use it.
        if matches!(m.backend, BackendKind::Tensorrt | BackendKind::Auto) {
            let tried = tensorrt_options(m).and_then(|t| {
                crate::engines::for_model(name, || {
                    GpuDetector::new(&rt.ctx, &m.path, gpu_size(m), Some(t)).map_err(|e| chain(&e))
                })
            });
            match tried {
                Ok(mut g) => {
                    let described = gpu_sizing(name, m, &mut g)?;
                    tracing::info!(
                        model = name,
                        backend = "tensorrt",
                        "model loaded: onnxruntime TensorRT provider (CUDA provider for what it does not take), engines cached per box; input {described}"
                    );
                    return Ok(Built {
                        engine: Engine::Gpu(Box::new(g)),
                        cuda: Some(rt.frames()),
                        backend: BackendUsed {
                            name: "tensorrt",
                            fallback: None,
                            file: m.path.clone(),
                        },
                    });
                }
                Err(why) if m.backend == BackendKind::Tensorrt => {
                    return Err(EngineError::Tensorrt {
                        model: name.to_string(),
                        why,
                    });
                }
                Err(why) => {
                    let why = format!("TensorRT not available: {why}");
                    tracing::info!(model = name, "backend auto → cuda: {why}");
                    fallback.push(why);
                }
            }
        }
        match GpuDetector::new(&rt.ctx, &m.path, gpu_size(m), None) {
            Ok(mut g) => {
                let described = gpu_sizing(name, m, &mut g)?;
                tracing::info!(
                    model = name,
                    backend = "cuda",
                    sync = rt.sync,
                    "model loaded: onnxruntime CUDA provider, NVDEC frames → fused preprocessing → inference → decode + NMS on the GPU; input {described}"
                );
                return Ok(Built {
                    engine: Engine::Gpu(Box::new(g)),
                    cuda: Some(rt.frames()),
                    backend: BackendUsed {
                        name: "cuda",
                        fallback: (!fallback.is_empty()).then(|| fallback.join("; ")),
                        file: m.path.clone(),
                    },
                });
            }
            Err(source) if m.backend != BackendKind::Auto => return Err(cuda_err(source)),
            Err(e) => {
                let why = format!("the GPU path failed: {}", chain(&e));
                tracing::warn!(model = name, "backend auto → cpu: {why}");
                fallback.push(why);
            }
        }
    }
    // On the CPU: the model's CPU form where the config names one (`cpu_path`, e.g. int8).
    let file = m.cpu_path.as_ref().unwrap_or(&m.path);
    let backend =
        OnnxBackend::load_cpu(file, m.threads as usize).map_err(|source| EngineError::Load {
            model: name.to_string(),
            source,
        })?;
    // "native": the model must take any size; 416 stands for it until the first frame.
    let (size, dynamic) = vigil_core::model::nanodet::input_size(
        backend.inputs(),
        m.input_size.pixels().unwrap_or(416) as usize,
    )?;
    check_input_size(name, m, size, dynamic)?;
    let described = describe_sizing(m, size, dynamic);
    tracing::info!(model = name, backend = "cpu", engine = %backend.describe(), file = %file.display(), "model loaded; input {described}");
    let decoder = NanodetDecoder::new(&file.display().to_string(), size, backend.outputs())?;
    Ok(Built {
        engine: Engine::Cpu {
            backend: Box::new(backend),
            pre: Preprocessor::new(input_spec(size, dynamic)),
            decoder,
            sizing: crate::worker::Sizing::new(m.input_size, m.tiles),
        },
        cuda: None,
        backend: BackendUsed {
            name: "cpu",
            fallback: (!fallback.is_empty()).then(|| fallback.join("; ")),
            file: file.clone(),
        },
    })
}

/// The GPU path's input side to load the model with ("native": 416 stands for it until the
/// first frame, as on the CPU path).
fn gpu_size(m: &ModelConfig) -> usize {
    m.input_size.pixels().unwrap_or(416) as usize
}

/// Checks a loaded GPU model against the table's `input_size` and gives it the table's sizing
/// (`"native"`, tiles); returns how its input is described in the log.
fn gpu_sizing(name: &str, m: &ModelConfig, g: &mut GpuDetector) -> Result<String, EngineError> {
    let (size, dynamic) = g.input();
    check_input_size(name, m, size, dynamic)?;
    g.set_sizing(m.input_size, m.tiles);
    Ok(describe_sizing(m, size, dynamic))
}

/// The input as the log says it: its size (or "native"), and the tiles.
fn describe_sizing(m: &ModelConfig, size: usize, dynamic: bool) -> String {
    let described = match m.input_size {
        InputSize::Native => {
            "each frame's own long side, rounded up to a multiple of 32 (at most 2048)".to_string()
        }
        InputSize::Pixels(_) => describe_input(size, dynamic),
    };
    let tiled = m.tiles.map(|t| {
        format!(
            "; tiles {}×{} overlapping by {:.0} %{}",
            t.grid[0],
            t.grid[1],
            t.overlap * 100.0,
            if t.full_frame {
                " and the whole frame"
            } else {
                ""
            }
        )
    });
    described + &tiled.unwrap_or_default()
}

/// The table's `input_size` against the loaded model's (`size`, `dynamic` height and width):
/// a number must be the model's, `"native"` needs a dynamic model.
fn check_input_size(
    name: &str,
    m: &ModelConfig,
    size: usize,
    dynamic: bool,
) -> Result<(), EngineError> {
    match m.input_size {
        InputSize::Pixels(configured) if size != configured as usize => {
            Err(EngineError::InputSize {
                model: name.to_string(),
                size,
                configured,
            })
        }
        InputSize::Native if !dynamic => Err(EngineError::NativeFixed {
            model: name.to_string(),
            size,
        }),
        _ => Ok(()),
    }
}

fn describe_input(size: usize, dynamic: bool) -> String {
    if dynamic {
        format!("{size} on the long side, the short side padded to a multiple of 32")
    } else {
        format!("{size}×{size}")
    }
}
