//! The libtorch entry points eio needs that tch does not bind (`csrc/shim.cpp`, compiled by
//! build.rs against the libtorch torch-sys links): clearing a gradient, PyTorch's
//! multi-tensor SGD update, CUDA graphs (wrapped by [`crate::graph`]), the CUDA allocator's
//! peak memory (read by [`crate::memory`]) and libtorch's global numerics switches
//! ([`Numerics`]).

use std::ffi::{c_char, c_double, c_int, c_void, CStr};

use tch::Tensor;

use crate::error::{Error, Result};

type CTensor = torch_sys::C_tensor;

extern "C" {
    fn eio_grad_reset(t: *mut CTensor) -> *mut c_char;
    fn eio_foreach_sgd(
        params: *const *mut CTensor,
        grads: *const *mut CTensor,
        bufs: *const *mut CTensor,
        n: c_int,
        lr: c_double,
        momentum: c_double,
        weight_decay: c_double,
        nesterov: c_int,
    ) -> *mut c_char;
    fn free(p: *mut c_void);
    pub(crate) fn eio_graph_begin(device: c_int, out: *mut *mut c_void) -> *mut c_char;
    pub(crate) fn eio_graph_end(graph: *mut c_void) -> *mut c_char;
    pub(crate) fn eio_graph_replay(graph: *mut c_void) -> *mut c_char;
    pub(crate) fn eio_graph_free(graph: *mut c_void);
    fn eio_cuda_peak_allocated(device: c_int, reset: c_int, out: *mut i64) -> *mut c_char;
    fn eio_numerics_get(deterministic: *mut c_int, cudnn_tf32: *mut c_int) -> *mut c_char;
    fn eio_numerics_set(deterministic: c_int, cudnn_tf32: c_int) -> *mut c_char;
}

/// libtorch's process-wide numerics switches, PyTorch's `torch.use_deterministic_algorithms`
/// with `torch.backends.cudnn.deterministic`, and `torch.backends.cudnn.allow_tf32`. They
/// matter on CUDA: some cuDNN convolution backward kernels sum with atomics (two runs differ in
/// the last bits, and training amplifies that), and TF32 convolutions round their inputs to 10
/// mantissa bits (about 1e-3 relative). PyTorch's defaults, kept by eio unless asked
/// (`--deterministic`): not deterministic, TF32 on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Numerics {
    /// Deterministic algorithms only (an op without one warns once and runs as it is).
    pub deterministic: bool,
    /// TF32 in cuDNN convolutions.
    pub cudnn_tf32: bool,
}

impl Numerics {
    /// The switches as they are now.
    pub fn current() -> Numerics {
        let (mut d, mut t) = (0, 0);
        // SAFETY: both outlive the call; the shim writes one int to each.
        check(unsafe { eio_numerics_get(&mut d, &mut t) }).expect("reading libtorch's context");
        Numerics { deterministic: d != 0, cudnn_tf32: t != 0 }
    }

    /// Sets the switches for the whole process; returns what they were.
    pub fn set(self) -> Numerics {
        let was = Numerics::current();
        // SAFETY: plain ints; the shim only sets flags of libtorch's global context.
        check(unsafe { eio_numerics_set(self.deterministic as c_int, self.cudnn_tf32 as c_int) })
            .expect("setting libtorch's context");
        was
    }

    /// Runs `f` under these switches and restores the earlier ones.
    pub fn within<T>(self, f: impl FnOnce() -> T) -> T {
        let was = self.set();
        let out = f();
        was.set();
        out
    }
}

/// The most bytes the CUDA caching allocator had allocated at once on `device` since the last
/// reset (`torch.cuda.max_memory_allocated`); with `reset`, the peak then restarts from what is
/// allocated now (`torch.cuda.reset_peak_memory_stats`). An error without CUDA.
pub fn cuda_peak_allocated(device: usize, reset: bool) -> Result<u64> {
    let mut out = 0i64;
    // SAFETY: `out` outlives the call; the shim writes one i64 there.
    check(unsafe { eio_cuda_peak_allocated(device as c_int, reset as c_int, &mut out) })?;
    Ok(out.max(0) as u64)
}

/// The shim's error message, if any (it allocates it with malloc; freed here).
pub(crate) fn check(msg: *mut c_char) -> Result<()> {
    if msg.is_null() {
        return Ok(());
    }
    // SAFETY: a non-null return is a NUL-terminated string from malloc, owned by us.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    unsafe { free(msg.cast()) };
    Err(Error::Tch(tch::TchError::Torch(text)))
}

/// Drops `t`'s gradient (PyTorch's `zero_grad(set_to_none=True)`): until the next backward
/// pass reaches `t`, `t.grad()` is undefined, which the host can see without reading the device.
pub fn grad_reset(t: &mut Tensor) {
    // SAFETY: the pointer is a live tensor owned by `t`; resetting its grad cannot throw.
    check(unsafe { eio_grad_reset(t.as_mut_ptr()) }).expect("resetting a gradient");
}

/// For every i: `d = g + wd * p; buf = m * buf + d; p -= lr * (nesterov ? d + m * buf : buf)`
/// with libtorch's `_foreach_*` kernels (one launch per operation on CUDA, for all tensors).
/// The slices have equal lengths; the tensors of index i share a device, shape and kind.
pub fn foreach_sgd(
    params: &mut [Tensor],
    grads: &[Tensor],
    bufs: &mut [Tensor],
    lr: f64,
    momentum: f64,
    weight_decay: f64,
    nesterov: bool,
) -> Result<()> {
    assert!(params.len() == grads.len() && grads.len() == bufs.len());
    let p: Vec<*mut CTensor> = params.iter_mut().map(|t| t.as_mut_ptr()).collect();
    let g: Vec<*mut CTensor> = grads.iter().map(|t| t.as_ptr() as *mut CTensor).collect();
    let b: Vec<*mut CTensor> = bufs.iter_mut().map(|t| t.as_mut_ptr()).collect();
    // SAFETY: the pointers are live tensors for the duration of the call; the shim reads the
    // gradients and updates the parameters and buffers in place, as the tensor API would.
    check(unsafe {
        eio_foreach_sgd(
            p.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            p.len() as c_int,
            lr,
            momentum,
            weight_decay,
            nesterov as c_int,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::Numerics;

    /// The switches reach libtorch's context and come back as they were. PyTorch's defaults
    /// hold at the start (nothing else in the tests sets them for good).
    #[test]
    fn numerics_are_set_and_restored() {
        let was = Numerics::current();
        assert_eq!(was, Numerics { deterministic: false, cudnn_tf32: true });
        let flipped = Numerics { deterministic: true, cudnn_tf32: false };
        assert_eq!(flipped.within(Numerics::current), flipped);
        assert_eq!(Numerics::current(), was);
    }
}
