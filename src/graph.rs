/*!
CUDA graphs: a fixed-shape step captured once and then replayed with one launch.

At batch 128 a ResNet-20 step on an H100 is bound by kernel launches, not by arithmetic
(PyTorch: 8.3 ms eager, 3.9 ms replayed from a CUDA graph per train step; 4.6 and 1.6 ms per
input-gradient step; issue 12). libtorch's `at::cuda::CUDAGraph`, which `torch.cuda.graph`
wraps, records every kernel a step enqueues, with its arguments, and replays them all with one
launch. tch does not bind it; `csrc/shim.cpp` does.

What a graph can replay (the rules of `torch.cuda.graph`, PyTorch's CUDA graphs notes):
- the step's inputs and outputs live in tensors allocated before the capture ("static"
  tensors) that the step reads and updates in place; a replay reads what they hold then;
- nothing on the host may change from one step to the next: host numbers (a learning rate, an
  Adam step count, a random route or random noise drawn on the host) are baked into the
  capture, so steps that draw on the host are never captured;
- no host syncs inside the step (eio's steps have none: results/bench.md, "Host syncs").

Off unless asked for (`--cuda-graphs`): [`set_enabled`]. Used by PGD iterations against a
deterministic target ([`crate::attack::PgdConfig`]) and by the training loop
([`crate::train::fit`]) for every method whose step draws nothing on the host per batch beyond
what [`crate::train::Method::draw`] draws ahead (all but EIO). A capture that fails falls back
to eager steps with one warning, and is counted ([`failures`]).
*/

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tch::Device;

use crate::error::{Error, Result};

static ENABLED: AtomicBool = AtomicBool::new(false);
static WARNED: AtomicBool = AtomicBool::new(false);
static FAILURES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread is inside [`CudaGraph::capture`]: steps run as they are, into that capture.
    static CAPTURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Turns the capture of fixed-shape CUDA steps on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether graphs are turned on ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether fixed-shape steps on `device` are captured and replayed: graphs are on, `device` is
/// a CUDA device, and this thread is not already capturing (a PGD run inside a captured
/// training step is part of that capture).
pub fn active(device: Device) -> bool {
    enabled() && device.is_cuda() && !CAPTURING.with(|c| c.get())
}

/// Counts a failed capture and reports the first of the process (the step then runs eagerly).
pub fn warn_fallback(e: &Error) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    if !WARNED.swap(true, Ordering::Relaxed) {
        // libtorch's message goes on with its C++ stack: its first line says what failed.
        let e = e.to_string();
        let first = e.lines().next().unwrap_or_default().trim();
        eprintln!("warning: CUDA graph capture failed, running eagerly: {first}");
    }
}

/// Captures that failed in this process so far ([`warn_fallback`]).
pub fn failures() -> usize {
    FAILURES.load(Ordering::Relaxed)
}

/// A captured CUDA graph (libtorch's `at::cuda::CUDAGraph`).
#[derive(Debug)]
pub struct CudaGraph {
    ptr: *mut c_void,
}

impl CudaGraph {
    /// Captures the work `f` enqueues on `device` without running it; [`CudaGraph::replay`]
    /// runs it. Everything enqueued before finishes first (one wait, before the capture). A
    /// panic or error inside `f` ends the capture and comes back as an error.
    pub fn capture<T>(device: Device, f: impl FnOnce() -> T) -> Result<(CudaGraph, T)> {
        let index = match device {
            Device::Cuda(i) => i as i32,
            _ => return Err(Error::config("CUDA graphs need a CUDA device")),
        };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: the shim writes a fresh graph into `ptr` or returns an error and writes
        // nothing.
        crate::shim::check(unsafe { crate::shim::eio_graph_begin(index, &mut ptr) })?;
        let graph = CudaGraph { ptr };
        CAPTURING.with(|c| c.set(true));
        // A failed capture is reported once, as an error ([`warn_fallback`]): the default hook
        // would print each panic's message and backtrace (libtorch's run to many kilobytes).
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let out = catch_unwind(AssertUnwindSafe(f));
        std::panic::set_hook(hook);
        CAPTURING.with(|c| c.set(false));
        // SAFETY: `graph.ptr` is the live graph begun above; ending always restores the stream.
        let ended = crate::shim::check(unsafe { crate::shim::eio_graph_end(graph.ptr) });
        match out {
            Ok(v) => ended.map(|()| (graph, v)),
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Tch(tch::TchError::Torch(format!("during capture: {what}"))))
            }
        }
    }

    /// Runs the captured work once on the current stream, after the work enqueued there.
    pub fn replay(&self) -> Result<()> {
        // SAFETY: `self.ptr` is a graph whose capture ended successfully.
        crate::shim::check(unsafe { crate::shim::eio_graph_replay(self.ptr) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `self.ptr` came from eio_graph_begin and is freed once, here.
        unsafe { crate::shim::eio_graph_free(self.ptr) }
    }
}

/// Runs `step` `n` times on `device`. When graphs are [`active`] and `n >= 3`: the first call
/// eagerly (lazy initialisation, cuDNN's choice of algorithms), the second under capture, then
/// `n - 1` replays; `step` must then read and write only tensors that outlive it, in place. A
/// failed capture falls back to eager calls. Elsewhere: `n` eager calls.
pub fn repeat(device: Device, n: usize, mut step: impl FnMut()) {
    if !(active(device) && n >= 3) {
        (0..n).for_each(|_| step());
        return;
    }
    step();
    match CudaGraph::capture(device, &mut step) {
        Ok((g, ())) => {
            for _ in 1..n {
                if let Err(e) = g.replay() {
                    // A replay only fails when the device does; nothing sensible to go on with.
                    panic!("CUDA graph replay failed: {e}");
                }
            }
        }
        Err(e) => {
            warn_fallback(&e);
            (1..n).for_each(|_| step());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_needs_a_cuda_device_and_leaves_cpu_steps_eager() {
        let err = CudaGraph::capture(Device::Cpu, || ()).unwrap_err();
        assert!(err.to_string().contains("CUDA device"), "{err}");
        set_enabled(true);
        assert!(!active(Device::Cpu));
        let mut calls = 0;
        repeat(Device::Cpu, 5, || calls += 1);
        assert_eq!(calls, 5);
        set_enabled(false);
    }
}
