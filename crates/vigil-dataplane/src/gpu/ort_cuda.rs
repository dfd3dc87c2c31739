//! ONNX Runtime with the CUDA execution provider, run on our CUDA stream, its input and outputs
//! bound once per input size to device tensors it allocated itself (so ONNX Runtime owns them
//! and never copies them): the preprocessing kernel writes into the input's device pointer and
//! the postprocessing kernels read the outputs' — no host staging, no allocation per frame.
//!
//! Binding a tensor that merely borrows our memory (`TensorRefMut::from_raw`) is what we tried
//! first: `ort`'s `IoBinding::bind_input` clones borrowed tensors it may alias, which for device
//! memory hung (seen on the H100). Tensors from the session's CUDA allocator are owned: bound
//! without a copy.
//!
//! The calls that need `unsafe` (the provider on our stream, the allocation-free
//! `RunWithBinding`, the tensors' device pointers) are `ffi::ort`'s: its [`CudaSession`] holds
//! the stream it runs on, and the tensors are lent to the kernels as views borrowed from the
//! [`Bound`] that owns them ([`Bound::input`], [`Bound::outputs`]).

use crate::engines::{EngineBuilder, EngineCache, EngineKey};
use crate::ffi::cuda::{DeviceView, DeviceViewMut};
use crate::ffi::ort::{CudaAllocator, CudaBinding, CudaSession, CudaTensor, TrtProvider};
use crate::onnx::OnnxError;
use cudarc::driver::CudaStream;
use ort::session::Session;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vigil_core::model::TensorDesc;

/// TensorRT for a model's sessions: the engine cache and the key every session's engine is
/// filed under (its shape profile filled in per session), the INT8 calibration table.
#[derive(Debug, Clone)]
pub struct TrtOptions {
    pub cache: EngineCache,
    /// The key without its profile.
    pub key: EngineKey,
    pub calibration: Option<PathBuf>,
}

/// Sessions kept at once: input sizes (cameras of different aspect ratios use different sizes)
/// × batch sizes.
const MAX_SIZES: usize = 4 * BATCHES.len();

/// Batch sizes a session is made for (each a fixed shape, so a CUDA graph); a batch of n frames
/// runs in the smallest that holds it, the spare images left as they are (their results unread).
pub const BATCHES: [usize; 4] = [1, 2, 4, 8];
/// Most frames per inference.
pub const MAX_BATCH: usize = BATCHES[BATCHES.len() - 1];

/// Whether sessions capture and replay a CUDA graph (`VIGIL_CUDA_GRAPH=0` turns it off: a
/// diagnostic switch; the bench compares both).
pub static CUDA_GRAPH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// One input size: its own session, made for that size (the model's free height/width fixed,
/// so every node runs on the GPU and the run can be one CUDA graph), with device tensors bound.
pub struct Bound {
    pub in_w: usize,
    pub in_h: usize,
    pub batch: usize,
    shapes: Vec<Vec<i64>>,
    // Drop order: binding and tensors before their session (which holds the stream it runs
    // on, synchronised in Drop before the session is dropped).
    binding: CudaBinding,
    /// The `[batch, 3, in_h, in_w]` f32 input.
    input: CudaTensor,
    /// The outputs (whole batch), in the model's output order; image i's part starts at
    /// i × length / batch.
    outputs: Vec<CudaTensor>,
    _allocator: CudaAllocator,
    session: CudaSession,
}

pub struct CudaOnnx {
    path: std::path::PathBuf,
    /// The stream the sessions run on (each holds it too, until it is dropped).
    stream: Arc<CudaStream>,
    inputs: Vec<TensorDesc>,
    outputs: Vec<TensorDesc>,
    /// Names of the input's free batch, height and width (empty where fixed).
    free_dims: [String; 3],
    bound: Vec<Bound>,
    /// TensorRT first, when the box has it and the model asks.
    trt: Option<TrtOptions>,
}

fn load_err(path: &Path, source: ort::Error) -> OnnxError {
    OnnxError::Load {
        path: path.to_path_buf(),
        source,
    }
}

/// A session builder for `path` with our options, the input's free dimensions `dims` fixed.
fn builder(
    path: &Path,
    dims: &[(String, usize)],
) -> Result<ort::session::builder::SessionBuilder, OnnxError> {
    let (_, env) = crate::onnx::init_runtime()?;
    let err = |e: ort::Error| load_err(path, e);
    // Every node runs on the GPU, launched from the calling worker thread: a pool of intra-op
    // threads (one per core by default, spinning between runs) would only burn CPU, and its
    // threads would make CUDA calls outside the capture-mode relaxation of our threads.
    let mut b = Session::builder(&env)
        .map_err(err)?
        .with_intra_threads(1)
        .map_err(|e| err(e.into()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.into()))?
        .with_intra_op_spinning(false)
        .map_err(|e| err(e.into()))?
        .with_inter_op_spinning(false)
        .map_err(|e| err(e.into()))?;
    for (name, v) in dims {
        b = b
            .with_dimension_override(name, *v as i64)
            .map_err(|e| err(e.into()))?;
    }
    Ok(b)
}

/// A session of `path` with the CUDA execution provider on `stream` (device 0; a CUDA graph or
/// not), the input's free dimensions `dims` fixed; with `trt`, TensorRT's provider first, its
/// engine for these shapes from the engine cache (built there on a miss).
fn session(
    path: &Path,
    stream: &Arc<CudaStream>,
    dims: &[(String, usize)],
    graph: bool,
    trt: Option<&TrtOptions>,
) -> Result<CudaSession, OnnxError> {
    let Some(t) = trt else {
        // The provider runs on `stream`; the session holds it (`ffi::ort::CudaSession`), so
        // the stream outlives the session.
        return CudaSession::commit(builder(path, dims)?, stream, graph, path, None)
            .map_err(|e| load_err(path, e));
    };
    let profile: Vec<String> = dims.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let key = EngineKey {
        profile: format!(
            "{};{}",
            profile.join(","),
            if graph { "graph" } else { "nograph" }
        ),
        ..t.key.clone()
    };
    let b = OrtTrtBuilder {
        path,
        stream,
        dims,
        graph,
        calibration: t.calibration.as_deref(),
    };
    let (s, outcome, dir) = t
        .cache
        .get_or_build(&key, &b)
        .map_err(|reason| OnnxError::Engine {
            path: path.to_path_buf(),
            reason,
        })?;
    tracing::info!(model = %path.display(), entry = %dir.display(), ?outcome, "TensorRT engine ready");
    Ok(s)
}

/// Builds and loads TensorRT engines through ONNX Runtime's TensorRT provider: building is
/// making a session with the engine cache pointed at the new entry's directory (ONNX Runtime
/// writes the engine there), loading is making one pointed at a whole entry.
struct OrtTrtBuilder<'a> {
    path: &'a Path,
    stream: &'a Arc<CudaStream>,
    dims: &'a [(String, usize)],
    graph: bool,
    calibration: Option<&'a Path>,
}

impl OrtTrtBuilder<'_> {
    fn open(&self, dir: &Path) -> Result<CudaSession, String> {
        let provider = TrtProvider {
            cache_dir: dir.to_path_buf(),
            fp16: true,
            int8_table: self
                .calibration
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().to_string())),
        };
        let b = builder(self.path, self.dims).map_err(|e| vigil_core::error::chain(&e))?;
        CudaSession::commit(b, self.stream, self.graph, self.path, Some(&provider))
            .map_err(|e| e.to_string())
    }
}

impl EngineBuilder for OrtTrtBuilder<'_> {
    type Loaded = CudaSession;
    fn build(&self, dir: &Path) -> Result<(), String> {
        // ONNX Runtime reads the calibration table from the engine cache directory.
        if let Some(c) = self.calibration {
            let to = dir.join(c.file_name().unwrap_or_default());
            std::fs::copy(c, &to).map_err(|e| format!("{}: {e}", c.display()))?;
        }
        self.open(dir).map(drop)
    }
    fn load(&self, dir: &Path) -> Result<CudaSession, String> {
        self.open(dir)
    }
}

impl CudaOnnx {
    /// Checks that `path` loads with the CUDA execution provider on device 0 and describes it;
    /// sessions are then made per input size, their kernels queued on `stream` (which each
    /// session holds).
    pub fn load(
        path: &Path,
        stream: &Arc<CudaStream>,
        trt: Option<TrtOptions>,
    ) -> Result<Self, OnnxError> {
        let probe = session(path, stream, &[], false, trt.as_ref())?;
        let (inputs, outputs) = probe.describe().map_err(|source| OnnxError::Describe {
            path: path.to_path_buf(),
            source,
        })?;
        let sym = |i: usize| match probe.inputs()[0].dtype() {
            ort::value::ValueType::Tensor {
                dimension_symbols, ..
            } => dimension_symbols.get(i).cloned().unwrap_or_default(),
            _ => String::new(),
        };
        let free_dims = [sym(0), sym(2), sym(3)];
        Ok(Self {
            path: path.to_path_buf(),
            stream: stream.clone(),
            inputs,
            outputs,
            free_dims,
            bound: Vec::with_capacity(MAX_SIZES),
            trt,
        })
    }

    pub fn inputs(&self) -> &[TensorDesc] {
        &self.inputs
    }
    pub fn outputs(&self) -> &[TensorDesc] {
        &self.outputs
    }

    /// The session and tensors for an `in_w`×`in_h` input, made on first use of that size
    /// (a session load and one discovery run; afterwards nothing is allocated). Takes
    /// [`super::GPU_LOCK`] exclusively while it makes one: call it without holding that lock.
    pub fn bind(&mut self, in_w: usize, in_h: usize, batch: usize) -> Result<&Bound, OnnxError> {
        if let Some(i) = self.position(in_w, in_h, batch) {
            return Ok(&self.bound[i]);
        }
        let graph = CUDA_GRAPH.load(std::sync::atomic::Ordering::Relaxed);
        // Making a session runs the model (cuDNN's algorithm search, allocations, then the
        // capture of a CUDA graph, which ONNX Runtime does in global mode): while one is made,
        // no other GPU worker runs anything. Work of another thread during a capture (seen
        // with 8 workers making sessions at once) made captures fail inside cuDNN.
        let _exclusive = super::GPU_LOCK.write().unwrap_or_else(|e| e.into_inner());
        let b = match self.make(in_w, in_h, batch, graph) {
            Err(e) if graph => {
                tracing::warn!(model = %self.path.display(), "CUDA graph refused ({}); running without", vigil_core::error::chain(&e));
                self.make(in_w, in_h, batch, false)?
            }
            r => r?,
        };
        if self.bound.len() == MAX_SIZES {
            self.bound.remove(0);
        }
        self.bound.push(b);
        Ok(self.bound.last().expect("just pushed"))
    }

    /// The session already made for that input size and batch, if any (never makes one: for
    /// callers that hold [`super::GPU_LOCK`]). Mutable: a run borrows its session exclusively.
    pub fn get_mut(&mut self, in_w: usize, in_h: usize, batch: usize) -> Option<&mut Bound> {
        self.position(in_w, in_h, batch).map(|i| &mut self.bound[i])
    }

    fn position(&self, in_w: usize, in_h: usize, batch: usize) -> Option<usize> {
        self.bound
            .iter()
            .position(|b| (b.in_w, b.in_h, b.batch) == (in_w, in_h, batch))
    }

    /// Whether the model takes a batch (its first input dimension is free).
    pub fn batches(&self) -> bool {
        !self.free_dims[0].is_empty()
    }

    fn make(
        &self,
        in_w: usize,
        in_h: usize,
        batch: usize,
        graph: bool,
    ) -> Result<Bound, OnnxError> {
        let err = |source: ort::Error| OnnxError::Bind { in_w, in_h, source };
        // The output shapes for this size: from one run of a session without a graph (a graph
        // is captured with the output buffers of its first run, so those must be final).
        let known = if graph {
            Some(std::mem::take(
                &mut self.make(in_w, in_h, batch, false)?.shapes,
            ))
        } else {
            None
        };
        let mut dims = Vec::new();
        for (name, v) in self.free_dims.iter().zip([batch, in_h, in_w]) {
            if !name.is_empty() {
                dims.push((name.clone(), v));
            }
        }
        let mut session = session(&self.path, &self.stream, &dims, graph, self.trt.as_ref())?;
        // Device memory of CUDA device 0, from the session's allocator.
        let allocator = CudaAllocator::new(&session).map_err(err)?;
        let input = CudaTensor::new(&allocator, [batch, 3, in_h, in_w]).map_err(err)?;
        let mut binding = session.create_binding().map_err(err)?;
        input
            .bind_input(&mut binding, self.inputs[0].name.as_str())
            .map_err(err)?;
        let shapes: Vec<Vec<i64>> = match known {
            Some(s) => s,
            None => {
                let mem = allocator.memory_info();
                for o in &self.outputs {
                    binding
                        .bind_output_to_device(o.name.as_str(), mem)
                        .map_err(err)?;
                }
                let shapes = {
                    let outs = session.run_binding(&binding).map_err(err)?;
                    self.outputs
                        .iter()
                        .map(|o| outs[o.name.as_str()].shape().iter().copied().collect())
                        .collect()
                };
                binding.clear_outputs();
                shapes
            }
        };
        let mut tensors = Vec::new();
        for (o, shape) in self.outputs.iter().zip(&shapes) {
            let mut t = CudaTensor::new(&allocator, shape.clone()).map_err(err)?;
            t.bind_output(&mut binding, o.name.as_str()).map_err(err)?;
            tensors.push(t);
        }
        let mut b = Bound {
            in_w,
            in_h,
            batch,
            shapes,
            binding,
            input,
            outputs: tensors,
            _allocator: allocator,
            session,
        };
        if graph {
            // Capture now (and replay once), so that a refusal shows here and not mid-stream.
            if let Err(e) = b.run().and_then(|()| b.run()) {
                // A capture that failed part-way can leave our stream capturing; ONNX Runtime's
                // teardown of the session then throws (cudaGraphExecDestroy on a capturing
                // stream) and that ends the process (onnxruntime PR #32081). End it first.
                if crate::ffi::cuda::end_dangling_capture(&self.stream) {
                    tracing::warn!(model = %self.path.display(), "ended a CUDA graph capture the failed run left open");
                }
                drop(b);
                return Err(e);
            }
        }
        tracing::info!(
            model = %self.path.display(),
            "CUDA session for {batch} × {in_w}×{in_h} inputs ({})",
            if graph { "CUDA graph" } else { "no CUDA graph" }
        );
        Ok(b)
    }
}

impl Drop for Bound {
    /// Waits for the stream before the session goes. ONNX Runtime frees a run's temporary
    /// page-locked buffers from a host callback queued on the stream; if the session (and its
    /// page-locked arena) were gone before that callback ran, the arena would be destroyed on
    /// the driver's callback thread, where `cudaFreeHost` is refused (error 800), and the C++
    /// exception thrown there ends the process. Seen on the H100 when the discovery session
    /// was dropped right after its run.
    fn drop(&mut self) {
        if let Ok(rt) = super::runtime() {
            let _ = rt.ctx.bind_to_thread();
        }
        // The stream the session runs on (the session holds it; the detector's stream);
        // synchronising it has no other effect.
        crate::ffi::cuda::stream_synchronize(self.session.stream());
    }
}

impl Bound {
    /// Runs the model on what is in the bound input, into the bound outputs. Allocates
    /// nothing: the C API is called directly (`ffi::ort::CudaSession::run`), since
    /// `Session::run_binding` builds a map of output values on every run.
    pub fn run(&mut self) -> Result<(), OnnxError> {
        self.session.run(&self.binding).map_err(OnnxError::Run)
    }

    /// The `[batch, 3, in_h, in_w]` f32 input, for the preprocessing kernel to write.
    pub fn input(&mut self) -> DeviceViewMut<'_, f32> {
        self.input.view_mut()
    }

    /// The outputs (floats, whole batch), in the model's output order; image i's part is
    /// `part(i, batch)`.
    pub fn outputs(&self) -> impl Iterator<Item = DeviceView<'_, f32>> {
        self.outputs.iter().map(CudaTensor::view)
    }
}
