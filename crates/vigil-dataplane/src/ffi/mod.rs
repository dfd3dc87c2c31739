//! The only code of Vigil with `unsafe`: calls into C libraries (the CUDA driver, GStreamer's
//! CUDA library, Jetson's NvBufSurface, ONNX Runtime's C API, libc), each behind a safe
//! wrapper, each block with a `// SAFETY:` comment saying why it holds. Everything else in the
//! workspace is safe Rust (`cargo xtask tidy` checks the list of files).

pub mod gst_cuda;
/// Jetson `memory:NVMM` frames: compiled with the `jetson` feature only (CI compiles it; no
/// Jetson here has ever run it).
#[cfg(feature = "jetson")]
pub mod jetson_nvmm;
pub mod rusage;
