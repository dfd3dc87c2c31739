//! The CUDA driver calls of the GPU path that cudarc offers no safe function for, and the
//! typed views of device memory that the kernel launches ([`super::preprocess_kernel`],
//! [`super::postprocess_kernels`]) take instead of raw pointers.
//!
//! The driver calls: whether the driver library is there at all (before cudarc touches it), the
//! primary context's scheduling flags, cudarc's event tracking, the calling thread's stream
//! capture mode, a capture left open on a stream, a stream's synchronisation and page-locked
//! host memory. All but [`driver_present`] must come after a successful `gpu::probe()`: they go
//! through cudarc's loader of the driver library, which panics where there is none.
//!
//! [`DeviceView`] and [`DeviceViewMut`]: `len` elements of device memory borrowed for `'a` from
//! what owns or maps them (a `CudaSlice`, an ONNX Runtime tensor, a mapped frame). They are made
//! only in `ffi/`, from such an owner, so a launch given one knows the memory exists and is that
//! large when the launch is queued. That it stays so until the kernel has *run* is the GPU path's
//! one-stream discipline, the one thing the types cannot say: a detector queues all its work on
//! its one stream, and whatever owns device memory read or written there frees it stream-ordered
//! (a `CudaSlice`) or only after that stream has been synchronised (ONNX Runtime's sessions,
//! `gpu::ort_cuda::Bound`'s Drop; the frame mappings, dropped by the detector after the batch's
//! synchronisation; the detector's parts, its Drop).

use cudarc::driver::sys;
use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtrMut, DriverError, PinnedHostSlice, SyncOnDrop,
};
use std::marker::PhantomData;
use std::sync::Arc;

/// Whether the CUDA driver library (libcuda.so) can be loaded: the one call allowed before the
/// probe (cudarc panics when asked to use a driver library it cannot load).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made if it is absent.
    unsafe { sys::is_culib_present() }
}

/// Sets device 0's primary-context scheduling flags (how the host waits for the GPU), before
/// anything makes that context active. The driver must be present (after a successful probe):
/// device 0 exists. Fails harmlessly, and silently, if the context is already active (then the
/// driver's choice stays; [`current_context_flags`] tells).
pub(crate) fn set_primary_context_flags(flags: sys::CUctx_flags) {
    // SAFETY: the driver is present (probe); device 0 exists; setting the primary
    // context's flags has no other effect than how the host waits for the GPU. It fails
    // harmlessly if the context is already active (then the driver's choice stays).
    unsafe {
        let mut dev = 0;
        if sys::cuDeviceGet(&mut dev, 0) == sys::CUresult::CUDA_SUCCESS {
            let _ = sys::cuDevicePrimaryCtxSetFlags_v2(dev, flags as u32);
        }
    }
}

/// The flags of the context current on this thread (`None` if the driver refuses: no context).
pub(crate) fn current_context_flags() -> Option<u32> {
    let mut got = 0u32;
    // SAFETY: the context is current on this thread (cudarc binds it on creation); the
    // call only writes the flags word.
    let r = unsafe { sys::cuCtxGetFlags(&mut got) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(got)
}

/// Turns off cudarc's cross-stream event tracking for the slices `ctx` allocates from now on.
/// Done once, by `gpu::runtime()`, for the process's one context.
pub(crate) fn disable_event_tracking(ctx: &CudaContext) {
    // SAFETY: each GPU detector queues all its work on its one stream, so cudarc's
    // cross-stream event tracking (an event record per launch) has nothing to order. (The
    // other users of the context, `vigil gpu-check`'s kernel check and the bench, also use
    // one stream each.)
    unsafe { ctx.disable_event_tracking() };
}

/// Sets the calling thread's stream-capture mode to relaxed (ONNX Runtime captures in global
/// mode, which otherwise forbids, process-wide, calls such as allocations and synchronous
/// copies). Only once the driver is loaded (the GPU runtime exists).
pub(crate) fn relax_thread_capture_mode() {
    let mut mode = sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
    // SAFETY: only called once the driver is loaded (the GPU runtime exists); the call
    // exchanges this thread's capture mode and writes the previous one into `mode`.
    unsafe {
        let _ = sys::cuThreadExchangeStreamCaptureMode(&mut mode);
    }
}

/// Ends a stream capture left open on `stream` and discards what it recorded; returns whether
/// one was open.
pub fn end_dangling_capture(stream: &CudaStream) -> bool {
    let stream = stream.cu_stream();
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: `stream` is live: the `CudaStream` it comes from is borrowed for this call
    // (it destroys its stream only when dropped); the call writes its capture status.
    let r = unsafe { sys::cuStreamIsCapturing(stream, &mut status) };
    if r != sys::CUresult::CUDA_SUCCESS
        || status == sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE
    {
        return false;
    }
    let mut graph: sys::CUgraph = std::ptr::null_mut();
    // SAFETY: ending the capture of a capturing (or invalidated) stream, live as above; it
    // writes a graph handle (null when the capture was invalidated), which we destroy at once.
    unsafe {
        let _ = sys::cuStreamEndCapture(stream, &mut graph);
        if !graph.is_null() {
            let _ = sys::cuGraphDestroy(graph);
        }
    }
    true
}

/// Waits for the work queued on `stream` with the bare driver call (no context binding: the
/// caller binds it first), the result ignored. `gpu::ort_cuda::Bound`'s Drop, before its
/// session goes.
pub fn stream_synchronize(stream: &CudaStream) {
    // SAFETY: `stream` is live: the `CudaStream` it comes from is borrowed for this call;
    // synchronising it has no other effect.
    unsafe {
        let _ = sys::cuStreamSynchronize(stream.cu_stream());
    }
}

/// `len` `f32` of page-locked (cacheable: no write-combining, the CPU reads it) host memory in
/// `ctx`. Its contents are unspecified until a copy into it has completed.
pub fn alloc_pinned_f32(
    ctx: &Arc<CudaContext>,
    len: usize,
) -> Result<PinnedHostSlice<f32>, DriverError> {
    // SAFETY: plain page-locked memory (no write-combining: the CPU reads it); its
    // contents are only read after a copy into it has completed. (cudarc calls the
    // allocation unsafe because the memory is left unset: any bit pattern is an `f32`, and
    // the bytes of memory the driver hands over are whatever its pages hold.)
    unsafe { ctx.alloc_pinned_with_flags::<f32>(len, 0) }
}

/// `len` elements of `T` in device memory, borrowed for `'a` from what owns or maps them (see
/// the module docs): readable by a kernel queued while this lives.
#[derive(Debug)]
pub struct DeviceView<'a, T> {
    ptr: u64,
    len: usize,
    _memory: PhantomData<&'a [T]>,
}

// Copy without requiring `T: Copy` (derive would): a view is an address and a length.
impl<T> Clone for DeviceView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DeviceView<'_, T> {}

impl<'a, T> DeviceView<'a, T> {
    /// # Safety
    /// `ptr` must be the device address of `len` elements of `T` that stay allocated (and
    /// mapped) for `'a`.
    pub(in crate::ffi) unsafe fn from_raw(ptr: u64, len: usize) -> Self {
        Self {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// Elements of `T`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address (for logs and comparisons; using it needs `ffi/`).
    pub fn addr(&self) -> u64 {
        self.ptr
    }

    /// Part `k` of `parts` equal parts (`len / parts` elements each: image `k`'s part of a
    /// batch output), `None` if `k ≥ parts`.
    pub fn part(self, k: usize, parts: usize) -> Option<Self> {
        if k >= parts {
            return None;
        }
        let len = self.len / parts;
        Some(Self {
            ptr: self.ptr + (k * len * std::mem::size_of::<T>()) as u64,
            len,
            _memory: PhantomData,
        })
    }
}

/// `len` elements of `T` in device memory, borrowed exclusively for `'a` from what owns them
/// (see the module docs): writable by a kernel queued while this lives.
#[derive(Debug)]
pub struct DeviceViewMut<'a, T> {
    ptr: u64,
    len: usize,
    _memory: PhantomData<&'a mut [T]>,
}

impl<'a, T> DeviceViewMut<'a, T> {
    /// # Safety
    /// `ptr` must be the device address of `len` elements of `T` that stay allocated for `'a`
    /// and that nothing else uses meanwhile but work queued on the stream of the launch.
    pub(in crate::ffi) unsafe fn from_raw(ptr: u64, len: usize) -> Self {
        Self {
            ptr,
            len,
            _memory: PhantomData,
        }
    }

    /// All of `slice`, for work on `stream`, with cudarc's guard: drop it after the launch is
    /// queued (where cudarc tracks events, it records the write then).
    pub fn of_slice(slice: &'a mut CudaSlice<T>, stream: &'a CudaStream) -> (Self, SyncOnDrop<'a>) {
        let len = slice.len();
        let (ptr, sync) = slice.device_ptr_mut(stream);
        // SAFETY: cudarc's slice is `len` device elements of `T`, exclusively borrowed for 'a.
        (unsafe { Self::from_raw(ptr, len) }, sync)
    }

    /// Elements of `T`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address (for the launch).
    pub(in crate::ffi) fn addr(&self) -> u64 {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_one_image_of_the_batch() {
        // SAFETY: never given to a kernel: only its arithmetic is tested.
        let v = unsafe { DeviceView::<f32>::from_raw(0x1000, 10) };
        let p = v.part(1, 2).unwrap();
        assert_eq!((p.addr(), p.len()), (0x1000 + 5 * 4, 5));
        let p = v.part(2, 3).unwrap();
        assert_eq!((p.addr(), p.len()), (0x1000 + 2 * 3 * 4, 3));
        assert!(v.part(2, 2).is_none());
        assert!(v.part(0, 0).is_none());
    }
}
