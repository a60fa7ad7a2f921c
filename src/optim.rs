//! SGD with momentum (PyTorch semantics) and step learning-rate schedules. The optimiser keeps its
//! momentum buffers as named tensors so that checkpoints restore them exactly.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::model::io::{TensorFile, STATE_PREFIX};
use crate::model::Model;

/// Stochastic gradient descent settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SgdConfig {
    /// Initial learning rate.
    pub lr: f64,
    /// Momentum factor.
    pub momentum: f64,
    /// L2 weight decay, applied to every trainable tensor (PyTorch default).
    pub weight_decay: f64,
    /// Nesterov momentum (the EIO code's choice).
    pub nesterov: bool,
    /// Epochs at which the learning rate is multiplied by `gamma`; empty = at 50% and 75% of
    /// the run (100 and 150 of 200).
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// Learning-rate decay factor at each milestone.
    pub gamma: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
            milestones: Vec::new(),
            gamma: 0.1,
        }
    }
}

impl SgdConfig {
    /// Learning rate during `epoch` (0-based) of a run of `epochs`.
    pub fn lr_at(&self, epoch: usize, epochs: usize) -> f64 {
        let default = [epochs.div_ceil(2), (3 * epochs).div_ceil(4)];
        let ms: &[usize] = if self.milestones.is_empty() { &default } else { &self.milestones };
        let passed = ms.iter().filter(|&&m| epoch >= m).count();
        self.lr * self.gamma.powi(passed as i32)
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::config(format!("lr must be positive, got {}", self.lr)));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::config(format!("momentum must be in [0,1), got {}", self.momentum)));
        }
        if self.weight_decay < 0.0 {
            return Err(Error::config("weight_decay must be >= 0"));
        }
        Ok(())
    }
}

/// SGD over every trainable variable of a model.
#[derive(Debug)]
pub struct Sgd {
    cfg: SgdConfig,
    params: Vec<(String, Tensor)>,
    bufs: Vec<Tensor>,
}

impl Sgd {
    /// An optimiser for `model`'s trainable variables, with zero momentum.
    pub fn new(model: &Model, cfg: SgdConfig) -> Self {
        let mut params: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bufs = params.iter().map(|(_, t)| t.zeros_like()).collect();
        Sgd { cfg, params, bufs }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr`: d = g + wd*w; buf = m*buf + d;
    /// w -= lr * (nesterov ? d + m*buf : buf).
    ///
    /// Tensors that received no gradient this step (absent, or exactly zero after
    /// [`Sgd::zero_grad`]) are left untouched, weight decay and momentum included: that is
    /// PyTorch's `zero_grad(set_to_none=True)` behaviour, so RGN copies off the sampled routes do
    /// not move, and a resumed run (where such gradients are absent) matches an uninterrupted one.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        let m = self.cfg.momentum;
        for ((_, p), buf) in self.params.iter_mut().zip(&mut self.bufs) {
            let g = p.grad();
            if !g.defined() || g.abs().max().double_value(&[]) == 0.0 {
                continue;
            }
            let d = if self.cfg.weight_decay != 0.0 { &g + &*p * self.cfg.weight_decay } else { g };
            let _ = buf.g_mul_scalar_(m).g_add_(&d);
            let upd = if self.cfg.nesterov { d + &*buf * m } else { buf.shallow_clone() };
            let _ = p.g_sub_(&(upd * lr));
        }
    }

    /// The momentum buffers as `optim.<name>` tensors.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.bufs)
            .map(|((n, _), b)| (format!("{STATE_PREFIX}{n}"), b.shallow_clone()))
            .collect()
    }

    /// Restores the momentum buffers from a checkpoint's tensors.
    pub fn load_state(&mut self, file: &TensorFile) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((n, _), b) in self.params.iter().zip(&mut self.bufs) {
            let key = format!("{STATE_PREFIX}{n}");
            let t = file.tensors.get(&key).ok_or_else(|| {
                Error::config(format!("checkpoint lacks optimiser state '{key}'"))
            })?;
            b.copy_(t);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_default_to_half_and_three_quarters() {
        let c = SgdConfig::default();
        assert_eq!(c.lr_at(0, 200), 0.1);
        assert!((c.lr_at(100, 200) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(150, 200) - 0.001).abs() < 1e-12);
        let c = SgdConfig { milestones: vec![20, 30], lr: 1e-3, ..c };
        assert!((c.lr_at(25, 40) - 1e-4).abs() < 1e-15);
    }
}
