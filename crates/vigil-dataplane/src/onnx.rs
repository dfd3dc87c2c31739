//! ONNX Runtime backend (the `ort` crate, loading `libonnxruntime` at run time).
//!
//! The library is found through `ORT_DYLIB_PATH`, else next to the executable
//! (`libonnxruntime.so.1`), else `.cache/onnxruntime/` as installed by `cargo xtask setup`.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use vigil_core::model::{Backend, InferError, MAX_OUTPUTS, OutputViews, TensorDesc};

static RUNTIME: OnceLock<Result<(String, ort::environment::Environment), String>> = OnceLock::new();

/// Where `libonnxruntime` is looked for, in order.
pub fn runtime_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        c.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        c.push(dir.join("libonnxruntime.so.1"));
        // target/release/vigil → <repo>/.cache/onnxruntime
        if let Some(repo) = dir.parent().and_then(Path::parent) {
            c.push(repo.join(".cache/onnxruntime/libonnxruntime.so.1"));
        }
        // target/release/deps/test-binary → <repo>/.cache/onnxruntime
        if let Some(repo) = dir.parent().and_then(Path::parent).and_then(Path::parent) {
            c.push(repo.join(".cache/onnxruntime/libonnxruntime.so.1"));
        }
    }
    c.push(PathBuf::from("/usr/lib/vigil/libonnxruntime.so.1"));
    c
}

/// Loads the ONNX Runtime library once per process; returns its path or why it failed.
pub fn init_runtime() -> Result<(String, ort::environment::Environment), InferError> {
    RUNTIME
        .get_or_init(|| {
            let candidates = runtime_candidates();
            let Some(found) = candidates.iter().find(|p| p.exists()) else {
                return Err(format!(
                    "libonnxruntime not found (looked at {}); run `cargo xtask setup` or set ORT_DYLIB_PATH",
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ));
            };
            let env = ort::init_from(found)
                .map_err(|e| format!("{}: {e}", found.display()))?
                .with_name("vigil")
                .build()
                .map_err(|e| format!("{}: {e}", found.display()))?;
            Ok((found.display().to_string(), env))
        })
        .clone()
        .map_err(InferError::Runtime)
}

/// The session's inputs and outputs, checked to be one NCHW input and at most
/// [`MAX_OUTPUTS`] outputs.
pub fn describe(session: &Session) -> Result<(Vec<TensorDesc>, Vec<TensorDesc>), String> {
    let desc = |o: &ort::value::Outlet| TensorDesc {
        name: o.name().to_string(),
        shape: o
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default(),
    };
    let inputs: Vec<TensorDesc> = session.inputs().iter().map(desc).collect();
    let outputs: Vec<TensorDesc> = session.outputs().iter().map(desc).collect();
    if inputs.len() != 1 || inputs[0].shape.len() != 4 {
        return Err(format!(
            "expected one NCHW input, found {}",
            inputs
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if outputs.len() > MAX_OUTPUTS {
        return Err(format!(
            "{} outputs, at most {MAX_OUTPUTS} supported",
            outputs.len()
        ));
    }
    Ok((inputs, outputs))
}

pub struct OnnxBackend {
    session: Session,
    inputs: Vec<TensorDesc>,
    outputs: Vec<TensorDesc>,
    threads: usize,
}

impl OnnxBackend {
    /// Loads `path` for the CPU with `threads` intra-op threads (0 = one per core).
    pub fn load_cpu(path: &Path, threads: usize) -> Result<Self, InferError> {
        let (_, env) = init_runtime()?;
        let load_err = |e: &dyn std::fmt::Display| InferError::Load {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let session = Session::builder(&env)
            .map_err(|e| load_err(&e))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(&e))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(&e))?
            // Spinning threads burn the CPU we are trying to save between frames.
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(&e))?
            .commit_from_file(path)
            .map_err(|e| load_err(&e))?;
        let (inputs, outputs) = describe(&session).map_err(|e| load_err(&e))?;
        Ok(Self {
            session,
            inputs,
            outputs,
            threads,
        })
    }
}

impl Backend for OnnxBackend {
    fn describe(&self) -> String {
        format!("onnxruntime cpu ({} threads)", self.threads)
    }
    fn inputs(&self) -> &[TensorDesc] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorDesc] {
        &self.outputs
    }
    fn run(
        &mut self,
        input: &[f32],
        shape: [usize; 4],
        consume: &mut dyn FnMut(&OutputViews<'_>),
    ) -> Result<(), InferError> {
        let err = |e: ort::Error| InferError::Run(e.to_string());
        let fits = self.inputs[0]
            .shape
            .iter()
            .zip(shape)
            .all(|(&want, got)| want < 0 || want as usize == got);
        let len: usize = shape.iter().product();
        if !fits || input.len() < len {
            return Err(InferError::Run(format!(
                "input of shape {shape:?} does not fit {} ({} values given)",
                self.inputs[0],
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view((shape, &input[..len])).map_err(err)?;
        let name = self.inputs[0].name.as_str();
        let outs = self
            .session
            .run(ort::inputs![name => tensor])
            .map_err(err)?;
        let mut views = OutputViews::new();
        for desc in &self.outputs {
            let (_, data) = outs[desc.name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(err)?;
            // Capacity checked at load time.
            let _ = views.push(data);
        }
        consume(&views);
        Ok(())
    }
}
