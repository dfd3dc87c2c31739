//! What a model takes and gives: a [`Backend`] (implemented by the data plane's ONNX Runtime
//! engines) runs a model on a prepared input tensor; [`preprocess`] turns a decoded frame into
//! that tensor on the CPU; [`nanodet`] turns the model's raw outputs into detections.
//!
//! Knows nothing of GStreamer, ONNX Runtime or CUDA. The CPU preprocessing here is the
//! reference the GPU kernels are checked against.

pub mod nanodet;
pub mod preprocess;

use std::fmt;

/// Shape and name of one model input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    /// Dimensions; -1 where the model leaves one dynamic.
    pub shape: Vec<i64>,
}

impl fmt::Display for TensorDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.name, self.shape)
    }
}

/// Most outputs a model may have.
pub const MAX_OUTPUTS: usize = 8;

/// The outputs of one run, in [`Backend::outputs`] order, borrowed from the backend.
pub type OutputViews<'a> = heapless::Vec<&'a [f32], MAX_OUTPUTS>;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error("inference runtime unavailable: {0}")]
    Runtime(String),
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("model {path} does not fit {kind}: {reason}")]
    Layout {
        path: String,
        kind: &'static str,
        reason: String,
    },
    #[error("inference failed: {0}")]
    Run(String),
    /// The outputs of a run could not be decoded (wrong sizes, a layout that does not fit).
    #[error("{0}")]
    Output(String),
}

/// An inference engine holding one loaded model.
pub trait Backend: Send {
    /// Short description for logs, e.g. `onnxruntime 1.32 cpu (2 threads)`.
    fn describe(&self) -> String;
    fn inputs(&self) -> &[TensorDesc];
    fn outputs(&self) -> &[TensorDesc];
    /// Runs the model on `input`, an NCHW f32 tensor of `shape` (which must fit `inputs()[0]`:
    /// equal where that is fixed, anything where it is dynamic), and hands the outputs, in
    /// `outputs()` order, to `consume`.
    fn run(
        &mut self,
        input: &[f32],
        shape: [usize; 4],
        consume: &mut dyn FnMut(&OutputViews<'_>),
    ) -> Result<(), InferError>;
}
