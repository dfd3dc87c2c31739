//! ONNX Runtime on our CUDA stream, for `gpu::ort_cuda`: a session whose CUDA execution
//! provider runs on a stream it keeps alive ([`CudaSession`]), its run straight through the C
//! API (`RunWithBinding`: nothing allocated per run), and device tensors from the session's
//! CUDA allocator ([`CudaAllocator`], [`CudaTensor`]) lent to our kernels as typed views.
//!
//! Lifetimes. ONNX Runtime's CUDA provider uses the stream it was given until the session is
//! released: every ONNX Runtime object made here ([`CudaSession`]; [`CudaBinding`], whose
//! `IoBinding` keeps the session alive too; [`CudaAllocator`] and [`CudaTensor`], the session's
//! memory) holds a strong reference to the stream, dropped after its own handle, so the stream
//! outlives all of them. (The output values of [`CudaSession::run_binding`], `ort`'s, also keep
//! the session: the one discovery run per session drops them at once.) Tensors and their
//! allocator must go before the session (ONNX Runtime's rule, which `ort`'s own API also leaves
//! to its user): `gpu::ort_cuda::Bound`'s field order.

use cudarc::driver::CudaStream;
use ort::AsPointer;
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;
use ort::session::{IoBinding, Session, SessionOutputs};
use ort::value::{IntoShape, Outlet, Tensor};
use std::path::Path;
use std::sync::Arc;

use super::cuda::{DeviceView, DeviceViewMut};

/// A session whose CUDA execution provider runs on `stream` (device 0), holding the stream for
/// as long as the session lives.
pub struct CudaSession {
    // Drop order: the session before the stream it runs on.
    session: Session,
    stream: Arc<CudaStream>,
}

/// ONNX Runtime's TensorRT execution provider for a session: its engine (and timing) cache
/// directory, the precision, an INT8 calibration table.
#[derive(Debug, Clone)]
pub struct TrtProvider {
    pub cache_dir: std::path::PathBuf,
    pub fp16: bool,
    /// INT8 with this calibration table (its file name; the table must be in `cache_dir`'s
    /// parent's view: ONNX Runtime looks it up beside the engine cache).
    pub int8_table: Option<String>,
}

impl CudaSession {
    /// Commits `builder` (its options set) with the CUDA execution provider on `stream`, device
    /// 0, a CUDA graph or not, failing if the provider cannot be registered; loads `path`.
    /// With `trt`, ONNX Runtime's TensorRT provider comes first (on the same stream; what it
    /// does not take runs on the CUDA provider), its engines cached in `trt.cache_dir`.
    ///
    /// **Untested with a real TensorRT** (none here): the options are those ONNX Runtime
    /// documents for `OrtTensorRTProviderOptionsV2` (`trt_engine_cache_enable`,
    /// `trt_engine_cache_path`, `trt_timing_cache_enable`, `trt_timing_cache_path`,
    /// `trt_fp16_enable`, `trt_int8_enable`, `trt_int8_calibration_table_name`,
    /// `user_compute_stream`).
    pub fn commit(
        builder: SessionBuilder,
        stream: &Arc<CudaStream>,
        graph: bool,
        path: &Path,
        trt: Option<&TrtProvider>,
    ) -> ort::Result<Self> {
        let mut eps = Vec::with_capacity(2);
        if let Some(t) = trt {
            let dir = t.cache_dir.display().to_string();
            // SAFETY: as for the CUDA provider below: `stream` is a live CUstream and the
            // session holds its `CudaStream` for as long as it lives.
            let mut ep = unsafe {
                ort::ep::TensorRT::default().with_compute_stream(stream.cu_stream() as *mut ())
            }
            .with_device_id(0)
            .with_engine_cache(true)
            .with_engine_cache_path(&dir)
            .with_timing_cache(true)
            .with_timing_cache_path(&dir)
            .with_fp16(t.fp16)
            .with_cuda_graph(graph);
            if let Some(table) = &t.int8_table {
                ep = ep
                    .with_int8(true)
                    .with_int8_calibration_table_name(table)
                    .with_int8_use_native_calibration_table(false);
            }
            eps.push(ep.build().error_on_failure());
        }
        // SAFETY: `stream` is a live CUstream (its `CudaStream` is borrowed here), and the
        // session made with this provider holds a strong reference to that `CudaStream`
        // (`Self`'s field, dropped after the session; as do the bindings, allocators and
        // tensors made from it), so the stream outlives the session. Building the provider's
        // options makes no ONNX Runtime call.
        let ep =
            unsafe { ort::ep::CUDA::default().with_compute_stream(stream.cu_stream() as *mut ()) }
                .with_device_id(0)
                .with_cuda_graph(graph && trt.is_none())
                .build()
                .error_on_failure();
        eps.push(ep);
        let session = builder
            .with_execution_providers(eps)?
            .commit_from_file(path)?;
        Ok(Self {
            session,
            stream: stream.clone(),
        })
    }

    /// The stream the session runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The model's inputs.
    pub fn inputs(&self) -> &[Outlet] {
        self.session.inputs()
    }

    /// The model's inputs and outputs, as `crate::onnx::describe` gives them.
    pub fn describe(
        &self,
    ) -> Result<
        (
            Vec<vigil_core::model::TensorDesc>,
            Vec<vigil_core::model::TensorDesc>,
        ),
        crate::onnx::DescribeError,
    > {
        crate::onnx::describe(&self.session)
    }

    /// A binding of this session's inputs and outputs.
    pub fn create_binding(&self) -> ort::Result<CudaBinding> {
        Ok(CudaBinding {
            binding: self.session.create_binding()?,
            _stream: self.stream.clone(),
        })
    }

    /// Runs the model through `ort`'s `Session::run_binding`, its outputs as values (a map of
    /// them, built per run: for the discovery run only).
    pub fn run_binding<'b, 's: 'b>(
        &'s mut self,
        binding: &'b CudaBinding,
    ) -> ort::Result<SessionOutputs<'b>> {
        self.session.run_binding(&binding.binding)
    }

    /// Runs the model on what is bound in `binding`, into the outputs bound there. Allocates
    /// nothing (the error path aside): the C API is called directly, since `run_binding` builds
    /// a map of output values on every run. The error is ONNX Runtime's (made only on failure).
    pub fn run(&mut self, binding: &CudaBinding) -> ort::Result<()> {
        let api = ort::api();
        // SAFETY: the session and binding pointers are live (borrowed for this call); no run
        // options. The same call `ort`'s safe `Session::run_binding` makes with any session
        // and binding it is given, and like it with the session borrowed exclusively (ONNX
        // Runtime's runs with a binding are not to overlap).
        let status = unsafe {
            (api.RunWithBinding)(
                self.session.ptr().cast_mut(),
                std::ptr::null(),
                binding.binding.ptr(),
            )
        };
        // SAFETY: `status` was just returned by an ONNX Runtime API call and is used nowhere
        // else: `result_from_status` takes it (null: success; else its message is copied into
        // the error, which releases the status when dropped).
        unsafe { ort::Error::result_from_status(status) }
    }
}

/// An `IoBinding` of a [`CudaSession`], holding its stream too (the binding keeps the session
/// alive: the stream must outlive it as well).
pub struct CudaBinding {
    // Drop order: the binding (and the session it holds) before the stream.
    binding: IoBinding,
    _stream: Arc<CudaStream>,
}

impl CudaBinding {
    /// Binds output `name` to ONNX Runtime's own allocation on `mem`'s device, per run.
    pub fn bind_output_to_device(&mut self, name: &str, mem: &MemoryInfo) -> ort::Result<()> {
        self.binding.bind_output_to_device(name, mem)
    }

    pub fn clear_outputs(&mut self) {
        self.binding.clear_outputs();
    }
}

/// A session's allocator of CUDA device memory (device 0).
pub struct CudaAllocator {
    // Drop order: the allocator before the stream.
    allocator: Allocator,
    stream: Arc<CudaStream>,
}

impl CudaAllocator {
    pub fn new(session: &CudaSession) -> ort::Result<Self> {
        let mem = MemoryInfo::new(
            AllocationDevice::CUDA,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )?;
        Ok(Self {
            allocator: Allocator::new(&session.session, mem)?,
            stream: session.stream.clone(),
        })
    }

    pub fn memory_info(&self) -> &MemoryInfo<'_> {
        self.allocator.memory_info()
    }
}

/// An f32 tensor in CUDA device memory, from a [`CudaAllocator`]: ONNX Runtime owns it, so a
/// binding takes it without a copy, and our kernels get it as a [`DeviceView`] or
/// [`DeviceViewMut`] borrowed from it.
pub struct CudaTensor {
    // Drop order: the tensor (which holds its allocator) before the stream.
    tensor: Tensor<f32>,
    _stream: Arc<CudaStream>,
    /// Its device address and element count (of its shape).
    ptr: u64,
    len: usize,
}

impl CudaTensor {
    pub fn new(allocator: &CudaAllocator, shape: impl IntoShape) -> ort::Result<Self> {
        let mut tensor = Tensor::<f32>::new(&allocator.allocator, shape)?;
        let len = tensor.shape().iter().product::<i64>().max(0) as usize;
        let ptr = tensor.data_ptr_mut() as u64;
        Ok(Self {
            tensor,
            _stream: allocator.stream.clone(),
            ptr,
            len,
        })
    }

    /// Elements (of the whole tensor).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tensor for a kernel to read.
    pub fn view(&self) -> DeviceView<'_, f32> {
        // SAFETY: `ptr` is the data of this tensor, `len` f32 in CUDA device memory (its
        // allocator's), allocated for as long as the tensor lives, which the view borrows.
        unsafe { DeviceView::from_raw(self.ptr, self.len) }
    }

    /// The tensor for a kernel to write (ONNX Runtime reads it in a later run on the stream).
    pub fn view_mut(&mut self) -> DeviceViewMut<'_, f32> {
        // SAFETY: as in `view`, borrowed exclusively; ONNX Runtime uses it only in runs queued
        // on the session's stream, which is the kernels' stream.
        unsafe { DeviceViewMut::from_raw(self.ptr, self.len) }
    }

    /// Binds the tensor to input `name` (owned by ONNX Runtime: bound without a copy).
    pub fn bind_input(&self, binding: &mut CudaBinding, name: &str) -> ort::Result<()> {
        binding.binding.bind_input(name, &self.tensor)
    }

    /// Binds the tensor to output `name`.
    pub fn bind_output(&mut self, binding: &mut CudaBinding, name: &str) -> ort::Result<()> {
        binding.binding.bind_output(name, &mut self.tensor)
    }
}
