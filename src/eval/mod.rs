//! Evaluation: clean accuracy of any [`Classifier`].

pub mod aggregate;
pub mod report;
mod run;
pub mod transfer;
pub mod transferability;
pub mod whitebox;

use tch::{Device, Kind, Tensor};

use crate::data::Dataset;
use crate::model::Classifier;

/// Predicted labels of `x` (`[N,3,32,32]` in [0,1]) in batches of `batch`, under `no_grad`.
pub fn predict(target: &dyn Classifier, x: &Tensor, batch: i64, device: Device) -> Tensor {
    let _guard = tch::no_grad_guard();
    let n = x.size()[0];
    let mut out = Vec::new();
    let mut i = 0;
    while i < n {
        let len = batch.min(n - i);
        let xb = x.narrow(0, i, len).to_device(device);
        out.push(target.logits(&xb, None).argmax(-1, false).to_device(Device::Cpu));
        i += len;
    }
    Tensor::cat(&out, 0)
}

/// Fraction of `data` that `target` classifies correctly.
pub fn accuracy(target: &dyn Classifier, data: &Dataset, batch: i64, device: Device) -> f64 {
    let (x, y) = data.tensors();
    let pred = predict(target, &x, batch, device);
    pred.eq_tensor(&y).to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}
