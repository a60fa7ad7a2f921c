//! Optimisers with PyTorch semantics (SGD with momentum, Adam with L2 weight decay) and step
//! learning-rate schedules. The optimiser keeps its state (momentum buffers; Adam's moments and
//! step counts) as named tensors so that checkpoints restore it exactly.
//!
//! One optimiser over a whole model is the same computation as one optimiser per ensemble member
//! (what the DVERGE code builds): both update rules are per tensor, every member follows the same
//! schedule, and a tensor's state never depends on another tensor. So members are not grouped.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};
use crate::model::io::{TensorFile, STATE_PREFIX};
use crate::model::Model;

/// The update rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// SGD with (optionally Nesterov) momentum, `torch.optim.SGD`.
    #[default]
    Sgd,
    /// Adam with L2 weight decay added to the gradient, `torch.optim.Adam` (ADP, GAL, TRS).
    Adam,
}

impl std::str::FromStr for Algorithm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(Algorithm::Sgd),
            "adam" => Ok(Algorithm::Adam),
            _ => Err(Error::config(format!("optimiser must be 'sgd' or 'adam', got '{s}'"))),
        }
    }
}

fn is_sgd(a: &Algorithm) -> bool {
    *a == Algorithm::Sgd
}

fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn default_adam_eps() -> f64 {
    1e-8
}

/// Optimiser settings (the `[optim]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Update rule (default `sgd`).
    #[serde(default, skip_serializing_if = "is_sgd")]
    pub algorithm: Algorithm,
    /// Initial learning rate.
    pub lr: f64,
    /// SGD momentum factor (unused by Adam).
    pub momentum: f64,
    /// L2 weight decay, added to the gradient of every trainable tensor (PyTorch default).
    pub weight_decay: f64,
    /// Nesterov momentum (the EIO code's choice; SGD only).
    pub nesterov: bool,
    /// Epochs at which the learning rate is multiplied by `gamma`; empty = at 50% and 75% of
    /// the run (100 and 150 of 200).
    #[serde(default)]
    pub milestones: Vec<usize>,
    /// Learning-rate decay factor at each milestone.
    pub gamma: f64,
    /// Adam's moment decay rates (beta1, beta2).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's denominator offset.
    #[serde(default = "default_adam_eps")]
    pub eps: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            algorithm: Algorithm::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            nesterov: false,
            milestones: Vec::new(),
            gamma: 0.1,
            betas: default_betas(),
            eps: default_adam_eps(),
        }
    }
}

impl OptimConfig {
    /// Adam as the ADP, GAL and TRS codes use it: lr 1e-3, weight decay 1e-4, eps 1e-7.
    pub fn adam() -> Self {
        OptimConfig { algorithm: Algorithm::Adam, lr: 1e-3, eps: 1e-7, ..OptimConfig::default() }
    }

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
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight_decay must be >= 0"));
        }
        if !(self.gamma > 0.0 && self.gamma.is_finite()) {
            return Err(Error::config(format!(
                "gamma (learning-rate decay factor) must be positive, got {}",
                self.gamma
            )));
        }
        if self.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(Error::config(format!(
                "Adam betas must be in [0,1), got {:?}",
                self.betas
            )));
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(Error::config(format!("Adam eps must be positive, got {}", self.eps)));
        }
        if self.milestones.first() == Some(&0) || self.milestones.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::config(format!(
                "milestones must be increasing epochs from 1, got {:?}",
                self.milestones
            )));
        }
        Ok(())
    }

    /// Checks that every milestone falls inside a run of `epochs` (one past it would never
    /// decay the learning rate, silently).
    pub fn check_milestones(&self, epochs: usize) -> Result<()> {
        match self.milestones.iter().find(|&&m| m >= epochs) {
            Some(m) => Err(Error::config(format!(
                "milestones {:?}: epoch {m} is not inside the run's {epochs} epochs (a milestone \
                 m decays the learning rate from epoch m + 1 on)",
                self.milestones
            ))),
            None => Ok(()),
        }
    }
}

/// An optimiser over every trainable variable of a model.
#[derive(Debug)]
pub struct Optimizer {
    cfg: OptimConfig,
    /// SGD updates all tensors with libtorch's multi-tensor kernels (on CUDA, where launches
    /// dominate; on the CPU the per-tensor loop computes the same numbers).
    multi_tensor: bool,
    params: Vec<(String, Tensor)>,
    /// SGD: the momentum buffer; Adam: the first moment.
    bufs: Vec<Tensor>,
    /// Adam: the second moment (empty for SGD).
    sq: Vec<Tensor>,
    /// Adam: updates taken per tensor (empty for SGD).
    steps: Vec<i64>,
    /// Adam on CUDA: per tensor `[sqrt(1 - b2^t), lr / (1 - b1^t)]` on the device, written by
    /// [`Optimizer::prepare`] before each update, so that the update itself reads no host
    /// number and can be replayed from a CUDA graph.
    scalars: Option<Tensor>,
    /// The learning rate of the update [`Optimizer::prepare`] set up.
    lr: f64,
}

impl Optimizer {
    /// An optimiser for `model`'s trainable variables, with zero state.
    pub fn new(model: &Model, cfg: OptimConfig) -> Self {
        let params = model.vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        Optimizer::over(params, cfg)
    }

    /// An optimiser for the named tensors `params` (trainable leaves), with zero state.
    pub fn over(mut params: Vec<(String, Tensor)>, cfg: OptimConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let bufs = params.iter().map(|(_, t)| t.zeros_like()).collect();
        let adam = cfg.algorithm == Algorithm::Adam;
        let sq = if adam { params.iter().map(|(_, t)| t.zeros_like()).collect() } else { vec![] };
        let steps = if adam { vec![0; params.len()] } else { vec![] };
        let cuda = params.first().is_some_and(|(_, t)| t.device().is_cuda());
        let mut opt =
            Optimizer { cfg, multi_tensor: cuda, params, bufs, sq, steps, scalars: None, lr: 0.0 };
        if cuda {
            opt.use_device_scalars();
        }
        opt
    }

    /// Chooses the multi-tensor SGD path (default: on CUDA) or the per-tensor loop.
    pub fn set_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on;
    }

    /// The settings.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Drops every gradient (PyTorch's `zero_grad(set_to_none=True)`).
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            crate::shim::grad_reset(p);
        }
    }

    /// One update with learning rate `lr`: [`Optimizer::prepare`] for the tensors that received
    /// a gradient, then [`Optimizer::apply`].
    ///
    /// Tensors that received no gradient since [`Optimizer::zero_grad`] are left untouched,
    /// weight decay and state included (PyTorch's behaviour after `set_to_none`): RGN copies off
    /// the sampled routes do not move, and a resumed run matches an uninterrupted one. Which
    /// tensors those are is known on the host (an undefined gradient), so a step reads nothing
    /// back from the device.
    pub fn step(&mut self, lr: f64) {
        self.prepare(lr, false);
        self.apply();
    }

    /// Adam: takes the bias corrections from a device tensor written by [`Optimizer::prepare`]
    /// (the default on CUDA; on the CPU the same numbers as the host path, which tests check).
    pub fn use_device_scalars(&mut self) {
        if self.cfg.algorithm == Algorithm::Adam && self.scalars.is_none() {
            let (_, t) = &self.params[0];
            self.scalars =
                Some(Tensor::zeros([self.params.len() as i64, 2], (t.kind(), t.device())));
        }
    }

    /// Whether [`Optimizer::apply`] enqueues device work only, its host numbers set by
    /// [`Optimizer::prepare`]: SGD's multi-tensor path, and Adam on CUDA. Such an update can be
    /// replayed from a CUDA graph ([`crate::graph`]).
    pub fn replayable(&self) -> bool {
        match self.cfg.algorithm {
            Algorithm::Sgd => self.multi_tensor,
            Algorithm::Adam => self.scalars.is_some(),
        }
    }

    /// The host half of an update at rate `lr`: counts the update of every tensor with a
    /// gradient (with `all`, of every tensor: before a replayed step, whose gradients do not
    /// exist yet) and, for Adam on CUDA, writes the bias corrections to the device.
    pub fn prepare(&mut self, lr: f64, all: bool) {
        self.lr = lr;
        if self.cfg.algorithm != Algorithm::Adam {
            return;
        }
        for (i, (_, p)) in self.params.iter().enumerate() {
            if all || p.grad().defined() {
                self.steps[i] += 1;
            }
        }
        if let Some(sc) = &mut self.scalars {
            let [b1, b2] = self.cfg.betas;
            let host: Vec<f64> = self
                .steps
                .iter()
                .flat_map(|&t| [(1.0 - b2.powi(t as i32)).sqrt(), lr / (1.0 - b1.powi(t as i32))])
                .collect();
            // Without waiting for the device (a blocking copy would sync every step).
            let v = Tensor::from_slice(&host).view([-1, 2]);
            sc.copy_(&v.to_device_(sc.device(), sc.kind(), true, false));
        }
    }

    /// The update counts of every tensor, to restore when a prepared update is not taken.
    pub fn counts(&self) -> Vec<i64> {
        self.steps.clone()
    }

    /// Restores update counts saved by [`Optimizer::counts`].
    pub fn set_counts(&mut self, counts: Vec<i64>) {
        self.steps = counts;
    }

    /// Whether every tensor has a gradient (what a replayed update with `prepare(lr, true)`
    /// assumes).
    pub fn all_grads_defined(&self) -> bool {
        self.params.iter().all(|(_, p)| p.grad().defined())
    }

    /// The device half of an update: every tensor with a gradient moves, with the numbers the
    /// last [`Optimizer::prepare`] set.
    pub fn apply(&mut self) {
        let _guard = tch::no_grad_guard();
        let c = &self.cfg;
        let lr = self.lr;
        if self.multi_tensor && c.algorithm == Algorithm::Sgd {
            let (mut ps, mut gs, mut bs) = (Vec::new(), Vec::new(), Vec::new());
            for ((_, p), buf) in self.params.iter().zip(&self.bufs) {
                let g = p.grad();
                if g.defined() {
                    ps.push(p.shallow_clone());
                    gs.push(g);
                    bs.push(buf.shallow_clone());
                }
            }
            crate::shim::foreach_sgd(
                &mut ps,
                &gs,
                &mut bs,
                lr,
                c.momentum,
                c.weight_decay,
                c.nesterov,
            )
            .expect("multi-tensor SGD on tensors of matching shapes");
            return;
        }
        for (i, ((_, p), buf)) in self.params.iter_mut().zip(&mut self.bufs).enumerate() {
            let g = p.grad();
            if !g.defined() {
                continue;
            }
            let d = if c.weight_decay != 0.0 { &g + &*p * c.weight_decay } else { g };
            match c.algorithm {
                // d = g + wd*w; buf = m*buf + d; w -= lr * (nesterov ? d + m*buf : buf).
                Algorithm::Sgd => {
                    let m = c.momentum;
                    let _ = buf.g_mul_scalar_(m).g_add_(&d);
                    let upd = if c.nesterov { d + &*buf * m } else { buf.shallow_clone() };
                    let _ = p.g_sub_(&(upd * lr));
                }
                // torch.optim.Adam (single-tensor path): m = b1*m + (1-b1)*d;
                // v = b2*v + (1-b2)*d^2; w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
                Algorithm::Adam => {
                    let [b1, b2] = c.betas;
                    let sq = &mut self.sq[i];
                    let _ = buf.lerp_(&d, 1.0 - b1);
                    let _ = sq.g_mul_scalar_(b2).g_add_(&(&d * &d * (1.0 - b2)));
                    match &self.scalars {
                        // On CUDA the corrections come from the device (see `scalars`).
                        Some(sc) => {
                            let denom = sq.sqrt() / sc.get(i as i64).get(0) + c.eps;
                            let _ = p.g_sub_(&(&*buf / denom * sc.get(i as i64).get(1)));
                        }
                        None => {
                            let t = self.steps[i] as i32;
                            let bc1 = 1.0 - b1.powi(t);
                            let bc2 = 1.0 - b2.powi(t);
                            let denom = sq.sqrt() / bc2.sqrt() + c.eps;
                            let _ = p.g_sub_(&(&*buf / denom * (lr / bc1)));
                        }
                    }
                }
            }
        }
    }

    /// The state as `optim.<name>` tensors (`optim.<name>.sq` and a `[step]` count
    /// `optim.<name>.step` for Adam).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 3);
        for (i, ((n, _), b)) in self.params.iter().zip(&self.bufs).enumerate() {
            out.push((format!("{STATE_PREFIX}{n}"), b.shallow_clone()));
            if self.cfg.algorithm == Algorithm::Adam {
                out.push((format!("{STATE_PREFIX}{n}.sq"), self.sq[i].shallow_clone()));
                out.push((
                    format!("{STATE_PREFIX}{n}.step"),
                    Tensor::from_slice(&[self.steps[i]]).to_kind(Kind::Int64),
                ));
            }
        }
        out
    }

    /// Restores the state from a checkpoint's tensors.
    pub fn load_state(&mut self, file: &TensorFile) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let get = |key: String| {
            file.tensors
                .get(&key)
                .ok_or_else(|| Error::config(format!("checkpoint lacks optimiser state '{key}'")))
        };
        for (i, ((n, _), b)) in self.params.iter().zip(&mut self.bufs).enumerate() {
            b.copy_(get(format!("{STATE_PREFIX}{n}"))?);
            if self.cfg.algorithm == Algorithm::Adam {
                self.sq[i].copy_(get(format!("{STATE_PREFIX}{n}.sq"))?);
                self.steps[i] = get(format!("{STATE_PREFIX}{n}.step"))?.int64_value(&[0]);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milestones_default_to_half_and_three_quarters() {
        let c = OptimConfig::default();
        assert_eq!(c.lr_at(0, 200), 0.1);
        assert!((c.lr_at(100, 200) - 0.01).abs() < 1e-12);
        assert!((c.lr_at(150, 200) - 0.001).abs() < 1e-12);
        let c = OptimConfig { milestones: vec![20, 30], lr: 1e-3, ..c };
        assert!((c.lr_at(25, 40) - 1e-4).abs() < 1e-15);
    }

    #[test]
    fn config_round_trips_and_old_tables_parse() {
        let old = "lr = 0.1\nmomentum = 0.9\nweight_decay = 0.0001\nnesterov = false\n\
                   milestones = []\ngamma = 0.1\n";
        assert_eq!(toml::from_str::<OptimConfig>(old).unwrap(), OptimConfig::default());
        let a = OptimConfig::adam();
        assert_eq!(toml::from_str::<OptimConfig>(&toml::to_string(&a).unwrap()).unwrap(), a);
        assert!(OptimConfig { gamma: -0.1, ..a.clone() }.validate().is_err());
        assert!(OptimConfig { gamma: 0.0, ..a }.validate().is_err());
    }

    /// Three SGD steps on two tensors, the second taking part only in the first step; returns
    /// the final values and momentum buffers.
    fn three_steps(multi_tensor: bool, nesterov: bool) -> Vec<Tensor> {
        let (a, b) = crate::model::with_global_seed(5, || {
            (
                Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
                Tensor::randn([5], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true),
            )
        });
        let params =
            vec![("a".to_string(), a.shallow_clone()), ("b".to_string(), b.shallow_clone())];
        let cfg = OptimConfig { nesterov, ..OptimConfig::default() };
        let mut opt = Optimizer::over(params, cfg);
        opt.set_multi_tensor(multi_tensor);
        for step in 0..3 {
            opt.zero_grad();
            let loss = if step == 0 {
                (&a * &a).sum(Kind::Float) + b.sin().sum(Kind::Float)
            } else {
                a.exp().sum(Kind::Float)
            };
            loss.backward();
            if step > 0 {
                assert!(!b.grad().defined(), "zero_grad leaves no gradient behind");
            }
            opt.step(0.1);
        }
        let mut out = vec![a.detach(), b.detach()];
        out.extend(opt.state().into_iter().map(|(_, t)| t));
        out
    }

    /// The multi-tensor (CUDA) path computes, bit for bit, what the per-tensor loop computes,
    /// and both leave a tensor without a gradient untouched (its momentum included).
    #[test]
    fn multi_tensor_sgd_equals_the_per_tensor_loop() {
        for nesterov in [false, true] {
            let (one, many) = (three_steps(false, nesterov), three_steps(true, nesterov));
            for (x, y) in one.iter().zip(&many) {
                assert!(x.equal(y), "nesterov {nesterov}: {x:?} vs {y:?}");
            }
        }
        // `b` moved in step 1 only: two steps with b's gradient undefined changed nothing.
        let b0 = crate::model::with_global_seed(5, || {
            let _a = Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu));
            Tensor::randn([5], (Kind::Float, tch::Device::Cpu))
        });
        let g = b0.cos();
        let buf = &g + &b0 * 1e-4;
        let want = &b0 - &buf * 0.1;
        assert!(three_steps(true, false)[1].allclose(&want, 1e-6, 1e-7, false));
    }
}
