//! Shared helpers for the integration tests: real-data paths, probe inputs, temp folders.

use std::path::PathBuf;

use tch::Tensor;

use eio::model::{Model, Routing};
use eio::train::{Batch, Method, StepAt, StepStats};

/// The shared CIFAR-10 JPEG folder.
pub fn cifar_jpeg() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpeg")
}

/// The released EIO RGN checkpoint.
pub fn official_rgn() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models/eio-official-rgn.safetensors")
}

/// The deterministic input of `bench/common.py::probe_input`.
pub fn probe_input(n: usize) -> Tensor {
    let v: Vec<f32> =
        (0..n * 3072).map(|i| (((i as u64 * 7919) % 251) as f64 / 250.0) as f32).collect();
    Tensor::from_slice(&v).view([n as i64, 3, 32, 32])
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Runs the `eio` binary; returns (exit success, stdout, stderr).
pub fn eio(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eio"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run eio");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts a failed command printed one `error: ...` line containing `needle` and no panic.
pub fn assert_user_error(args: &[&str], needle: &str) {
    let (ok, _, err) = eio(args);
    assert!(!ok, "{args:?} should fail");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: expected one 'error: ' line: {err}");
    assert!(errors[0].contains(needle), "{args:?}: '{}' lacks '{needle}'", errors[0]);
}

/// Wraps a training method and fails at step `fail_at` of the first epoch, to simulate an
/// interrupted run.
pub struct Interrupted<M> {
    pub inner: M,
    pub fail_at: usize,
}

impl<M: Method> Method for Interrupted<M> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> eio::Result<StepStats> {
        if at.epoch == 0 && at.step == self.fail_at {
            return Err(eio::Error::config("simulated interruption"));
        }
        self.inner.step(model, batch, at)
    }
    fn eval_routing(&self, model: &Model) -> Routing {
        self.inner.eval_routing(model)
    }
    fn needs_target(&self) -> bool {
        self.inner.needs_target()
    }
}
