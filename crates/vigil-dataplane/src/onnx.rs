//! ONNX Runtime backend (the `ort` crate, loading `libonnxruntime` at run time).
//!
//! The library is found through `ORT_DYLIB_PATH`, else next to the executable
//! (`libonnxruntime.so.1`), else `.cache/onnxruntime/` as installed by `cargo xtask setup`
//! (an aarch64 build looks at `.cache/onnxruntime-arm64/` first: see [`repo_runtime_dirs`]).
//! Loading a model (here and for the CUDA provider, `gpu::ort_cuda`) fails with an
//! [`OnnxError`] that keeps ONNX Runtime's own error as its source.

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use vigil_core::model::{Backend, InferError, MAX_OUTPUTS, OutputViews, TensorDesc};

/// The library loaded, with its path, or why not (the first attempt's outcome, for the process).
static RUNTIME: OnceLock<Result<(String, ort::environment::Environment), Arc<RuntimeError>>> =
    OnceLock::new();

/// Why ONNX Runtime's library could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "libonnxruntime not found (looked at {}); run `cargo xtask setup` or set ORT_DYLIB_PATH",
        candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { candidates: Vec<PathBuf> },
    /// The file is there but did not load as ONNX Runtime.
    #[error("{}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    /// ONNX Runtime loaded but its environment could not be made.
    #[error("{}", path.display())]
    Environment {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
}

/// Why ONNX Runtime could not load, bind or run a model (CPU or CUDA provider).
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("inference runtime unavailable")]
    Runtime(#[source] Arc<RuntimeError>),
    #[error("cannot load model {}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    /// The model loaded but its inputs or outputs are not what Vigil runs.
    #[error("cannot load model {}", path.display())]
    Describe {
        path: PathBuf,
        #[source]
        source: DescribeError,
    },
    /// The CUDA provider's session for one input size could not be bound to its tensors.
    #[error("inference failed: binding a {in_w}×{in_h} input")]
    Bind {
        in_w: usize,
        in_h: usize,
        #[source]
        source: ort::Error,
    },
    #[error("inference failed")]
    Run(#[source] ort::Error),
    /// The TensorRT engine could not be built or loaded from its cache.
    #[error("model {}: TensorRT engine: {reason}", path.display())]
    Engine { path: PathBuf, reason: String },
}

/// A model's inputs or outputs that Vigil does not run.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error(
        "expected one NCHW input, found {}",
        .0.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ")
    )]
    Inputs(Vec<TensorDesc>),
    #[error("{0} outputs, at most {MAX_OUTPUTS} supported")]
    Outputs(usize),
}

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
        // The repository is two folders up (target/release/vigil) or three
        // (target/release/deps/<test binary>, target/<triple>/release/vigil).
        let repos = [
            dir.parent().and_then(Path::parent),
            dir.parent().and_then(Path::parent).and_then(Path::parent),
        ];
        for repo in repos.into_iter().flatten() {
            for d in repo_runtime_dirs(std::env::consts::ARCH) {
                c.push(repo.join(d).join("libonnxruntime.so.1"));
            }
        }
    }
    c.push(PathBuf::from("/usr/lib/vigil/libonnxruntime.so.1"));
    c
}

/// The folders of a repository checkout where `cargo xtask` puts ONNX Runtime for a build of
/// the architecture `arch` (`std::env::consts::ARCH`), in the order tried. `cargo xtask
/// arm64-check` keeps the arm64 library in `.cache/onnxruntime-arm64/` beside the host's
/// amd64 one in `.cache/onnxruntime/`, which an aarch64 build cannot load (it failed on it,
/// `dlopen failed`, under qemu-user); `.cache/onnxruntime/` stays a candidate for a checkout
/// on an arm64 machine.
pub fn repo_runtime_dirs(arch: &str) -> &'static [&'static str] {
    match arch {
        "aarch64" => &[".cache/onnxruntime-arm64", ".cache/onnxruntime"],
        _ => &[".cache/onnxruntime"],
    }
}

/// Loads the ONNX Runtime library once per process; returns its path or why it failed (the
/// first attempt's error, shared).
pub fn init_runtime() -> Result<(String, ort::environment::Environment), OnnxError> {
    RUNTIME
        .get_or_init(|| load_runtime().map_err(Arc::new))
        .clone()
        .map_err(OnnxError::Runtime)
}

fn load_runtime() -> Result<(String, ort::environment::Environment), RuntimeError> {
    let candidates = runtime_candidates();
    let Some(found) = candidates.iter().find(|p| p.exists()) else {
        return Err(RuntimeError::NotFound { candidates });
    };
    let env = ort::init_from(found)
        .map_err(|source| RuntimeError::Load {
            path: found.clone(),
            source,
        })?
        .with_name("vigil")
        .build()
        .map_err(|source| RuntimeError::Environment {
            path: found.clone(),
            source,
        })?;
    Ok((found.display().to_string(), env))
}

/// The session's inputs and outputs, checked to be one NCHW input and at most
/// [`MAX_OUTPUTS`] outputs.
pub fn describe(session: &Session) -> Result<(Vec<TensorDesc>, Vec<TensorDesc>), DescribeError> {
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
        return Err(DescribeError::Inputs(inputs));
    }
    if outputs.len() > MAX_OUTPUTS {
        return Err(DescribeError::Outputs(outputs.len()));
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
    pub fn load_cpu(path: &Path, threads: usize) -> Result<Self, OnnxError> {
        let (_, env) = init_runtime()?;
        let load_err = |source: ort::Error| OnnxError::Load {
            path: path.to_path_buf(),
            source,
        };
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let session = Session::builder(&env)
            .map_err(load_err)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| load_err(e.into()))?
            .with_intra_threads(threads)
            .map_err(|e| load_err(e.into()))?
            // Spinning threads burn the CPU we are trying to save between frames.
            .with_intra_op_spinning(false)
            .map_err(|e| load_err(e.into()))?
            .commit_from_file(path)
            .map_err(load_err)?;
        let (inputs, outputs) = describe(&session).map_err(|source| OnnxError::Describe {
            path: path.to_path_buf(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_core::error::chain;

    /// A file that is not a model: ONNX Runtime's error is kept as the source, and the text
    /// is the one the CPU path has always given (`cannot load model PATH: ONNX Runtime's words`).
    #[test]
    fn a_file_that_is_no_model_keeps_onnx_runtimes_error() {
        if init_runtime().is_err() {
            eprintln!("no libonnxruntime here (cargo xtask setup): not checked");
            return;
        }
        let path =
            std::env::temp_dir().join(format!("vigil-not-a-model-{}.onnx", std::process::id()));
        std::fs::write(&path, b"not a model").unwrap();
        let e = OnnxBackend::load_cpu(&path, 1)
            .err()
            .expect("garbage does not load");
        std::fs::remove_file(&path).unwrap();
        let OnnxError::Load { source, .. } = &e else {
            panic!("not a load error: {e:?}");
        };
        assert_eq!(
            chain(&e),
            format!("cannot load model {}: {source}", path.display())
        );
    }

    #[test]
    fn an_aarch64_build_looks_for_the_arm64_runtime_before_the_hosts() {
        assert_eq!(
            repo_runtime_dirs("aarch64"),
            [".cache/onnxruntime-arm64", ".cache/onnxruntime"]
        );
        assert_eq!(repo_runtime_dirs("x86_64"), [".cache/onnxruntime"]);
        // This build's own candidates: its architecture's folders, in that order.
        let ort_dylib_path = usize::from(std::env::var_os("ORT_DYLIB_PATH").is_some());
        let here: Vec<PathBuf> = runtime_candidates()
            .into_iter()
            .skip(ort_dylib_path)
            .filter(|p| p.to_string_lossy().contains("/.cache/onnxruntime"))
            .collect();
        let want = repo_runtime_dirs(std::env::consts::ARCH);
        assert_eq!(here.len() % want.len(), 0, "{here:?}");
        for (p, d) in here.iter().zip(want.iter().cycle()) {
            assert!(
                p.ends_with(Path::new(d).join("libonnxruntime.so.1")),
                "{p:?}"
            );
        }
    }

    #[test]
    fn without_the_library_the_runtime_error_names_where_it_looked() {
        let e = OnnxError::Runtime(Arc::new(RuntimeError::NotFound {
            candidates: vec![
                "/a/libonnxruntime.so.1".into(),
                "/b/libonnxruntime.so.1".into(),
            ],
        }));
        assert_eq!(
            chain(&e),
            "inference runtime unavailable: libonnxruntime not found (looked at /a/libonnxruntime.so.1, /b/libonnxruntime.so.1); run `cargo xtask setup` or set ORT_DYLIB_PATH"
        );
    }
}
