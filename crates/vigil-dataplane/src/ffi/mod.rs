//! The only code of Vigil with `unsafe`: calls into C libraries (the CUDA driver, GStreamer's
//! CUDA library, Jetson's NvBufSurface, ONNX Runtime's C API, libc) and the launches of our CUDA
//! kernels, each behind a safe wrapper, each block with a `// SAFETY:` comment saying why it
//! holds. Everything else in the workspace is safe Rust (`cargo xtask tidy` checks the list of
//! files).
//!
//! - [`crash`]: a report with a native backtrace when the process dies of a fatal signal.
//! - [`cuda`]: the CUDA driver calls cudarc has no safe function for (driver presence, context
//!   flags, event tracking, capture mode, dangling captures, stream sync, pinned memory) and the
//!   typed device-memory views the kernel launches take instead of raw pointers.
//! - [`gst_cuda`]: GStreamer's CUDA library: the shared `gst.cuda.context`, `GST_MAP_CUDA`
//!   mapping of NVDEC frames (and their planes for the preprocessing kernel).
//! - `jetson_nvmm` (`jetson` feature): Jetson `memory:NVMM` frames, `NvBufSurface` and EGL.
//! - [`ort`]: ONNX Runtime's C API for the GPU path: a session on our CUDA stream (which it
//!   keeps alive), its allocation-free `RunWithBinding`, device tensors lent to the kernels.
//! - [`preprocess_kernel`]: the fused preprocessing kernel: its CUDA C, its batch descriptor
//!   (`DeviceRepr`), the frames' device planes and the checked launch.
//! - [`postprocess_kernels`]: the NanoDet decode and NMS kernels: their CUDA C and checked
//!   launches.
//! - [`rusage`]: CPU time used, from `getrusage(2)`.
//! - [`statvfs`]: free space of a file system, from `statvfs(3)`.

pub mod crash;
pub mod cuda;
pub mod gst_cuda;
// Jetson `memory:NVMM` frames: compiled with the `jetson` feature only (CI compiles it; no
// Jetson here has ever run it). (A `//` comment: an outer doc here would make rustdoc resolve
// the module's own doc links from this module instead.)
#[cfg(feature = "jetson")]
pub mod jetson_nvmm;
pub mod nvjpeg;
pub mod ort;
pub mod overlay_kernel;
pub mod postprocess_kernels;
pub mod preprocess_kernel;
pub mod rusage;
pub mod statvfs;
pub mod tensorrt;
