//! Evaluation: clean accuracy of any [`Classifier`], and the robustness protocols with their
//! reports.

pub mod aggregate;
pub mod clean;
pub mod report;
mod run;
pub mod transfer;
pub mod transferability;
pub mod whitebox;

use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::model::Classifier;

/// Predicted labels of `x` (`[N,3,32,32]` in [0, 1]) in batches of `batch` (at least 1), under
/// `no_grad`: `[N]` i64 on the CPU (empty when `N = 0`).
pub fn predict(target: &dyn Classifier, x: &Tensor, batch: usize, device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let batch = batch.max(1) as i64;
    let out: Vec<Tensor> = (0..n)
        .step_by(batch as usize)
        .map(|i| {
            let xb = x.narrow(0, i, batch.min(n - i)).to_device(device);
            target.logits(&xb, None).argmax(-1, false).to_device(Device::Cpu)
        })
        .collect();
    if out.is_empty() {
        return Tensor::zeros([0], (Kind::Int64, Device::Cpu));
    }
    Tensor::cat(&out, 0)
}

/// Fraction of `data` that `target` classifies correctly (NaN for an empty set).
pub fn accuracy(target: &dyn Classifier, data: &Dataset, batch: usize, device: Device) -> f64 {
    let (x, y) = data.tensors();
    let pred = predict(target, &x, batch, device);
    pred.eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
