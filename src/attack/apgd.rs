/*!
Auto-PGD in L-infinity (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", arXiv:2003.01690), mirroring `APGDAttack` in
`autoattack/autopgd_base.py` of fra31/auto-attack:

- start: `x + eps * t / ||t||_inf` with `t` uniform in [-1,1]^d, clipped to [0, 1];
- initial step size `2 eps`; step `z = P(x_k + eta * sign(g))`, then the momentum update
  `x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))` with alpha 0.75 (1 at the
  first step);
- checkpoints every `k` iterations, `k` starting at `max(floor(0.22 N), 1)` and shrinking by
  `max(floor(0.03 N), 1)` down to `max(floor(0.06 N), 1)`; at a checkpoint the step size of a sample is halved
  (and it restarts from its best point) if the loss increased in at most `rho = 0.75` of the
  last `k` steps, or if the best loss did not improve since the previous checkpoint and the
  step size was not reduced there;
- restarts on the images not yet fooled.

Returned per image: the last iterate that fooled the target if any, else the highest-loss
iterate. One deviation: the first oscillation check compares the first iterate with the
starting point, where the reference code compares with an unset (zero) entry.
*/

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{check_eot, check_eps, rows, with_restarts, Attack, AttackLoss, Ball, Objective};
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::seed::Rng;

/// APGD settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApgdConfig {
    /// L-infinity radius in [0, 1] pixel units (default 0.03).
    pub eps: f64,
    /// Iterations per restart (default 100).
    pub steps: usize,
    /// Restarts on the images not yet fooled (default 1).
    pub restarts: usize,
    /// Loss: `ce` (APGD-CE, default) or `dlr` (APGD-DLR); `cw` also works.
    pub loss: AttackLoss,
    /// Fraction of increasing steps below which the step size is halved (default 0.75).
    pub rho: f64,
    /// Weight alpha of the new step against the previous one (default 0.75).
    pub momentum: f64,
    /// Gradient samples averaged per step for a random target (default 1; AutoAttack's "rand"
    /// version uses 20).
    pub eot: usize,
}

impl Default for ApgdConfig {
    fn default() -> Self {
        ApgdConfig {
            eps: 0.03,
            steps: 100,
            restarts: 1,
            loss: AttackLoss::CrossEntropy,
            rho: 0.75,
            momentum: 0.75,
            eot: 1,
        }
    }
}

impl ApgdConfig {
    /// APGD with radius `eps` and `loss` (`CrossEntropy` or `Dlr`), other values default.
    pub fn new(eps: f64, loss: AttackLoss) -> Self {
        ApgdConfig { eps, loss, ..Default::default() }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        check_eot(self.eot)?;
        self.loss.validate()?;
        if self.steps == 0 || self.restarts == 0 {
            return Err(Error::config("APGD needs at least one step and one restart"));
        }
        if !(0.0..=1.0).contains(&self.rho) || !(0.0..=1.0).contains(&self.momentum) {
            return Err(Error::config(format!(
                "APGD rho and momentum must be in [0, 1], got {} and {}",
                self.rho, self.momentum
            )));
        }
        Ok(())
    }

    /// One run: per image the last fooling iterate, else the best-loss iterate.
    fn run(&self, obj: &Objective, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        let _guard = tch::no_grad_guard();
        let n = self.steps;
        let n2 = ((0.22 * n as f64) as usize).max(1);
        let n_min = ((0.06 * n as f64) as usize).max(1);
        let size_decr = ((0.03 * n as f64) as usize).max(1);
        let dim = x.dim();
        let b = x.size()[0];
        let ball = Ball::new(x, self.eps);

        let t = super::uniform_like(x, rng) * 2.0 - 1.0;
        let tmax = t.abs().amax(super::sample_dims(dim).as_slice(), true).clamp_min(1e-12);
        let mut xa = x + t / tmax * self.eps;
        ball.project_(&mut xa);

        let e = obj.eval(&xa, y, rng);
        let mut grad = e.grad;
        let mut fooled = e.logits.argmax(-1, false).ne_tensor(y);
        let mut x_best = xa.copy();
        let mut x_best_adv = xa.copy();
        let mut grad_best = grad.copy();
        let mut loss_best = e.loss.copy();
        let mut history = vec![e.loss];
        let mut shape = vec![b];
        shape.resize(dim, 1);
        let mut step = Tensor::full(shape.as_slice(), 2.0 * self.eps, (x.kind(), x.device()));
        let mut x_old = xa.copy();
        let mut k = n2;
        let mut since_check = 0usize;
        let mut loss_best_last_check = loss_best.copy();
        let mut reduced_last_check = Tensor::zeros([b], (Kind::Bool, x.device()));

        for i in 0..n {
            let prev_step = &xa - &x_old;
            x_old = xa.copy();
            let a = if i > 0 { self.momentum } else { 1.0 };
            let mut z = &xa + &step * grad.sign();
            ball.project_(&mut z);
            let mut next = &xa + (z - &xa) * a + prev_step * (1.0 - a);
            ball.project_(&mut next);
            xa = next;

            let e = obj.eval(&xa, y, rng);
            grad = e.grad;
            let wrong = e.logits.argmax(-1, false).ne_tensor(y);
            x_best_adv = xa.where_self(&rows(&wrong, dim), &x_best_adv);
            fooled = fooled.logical_or(&wrong);
            let improved = e.loss.gt_tensor(&loss_best);
            let im = rows(&improved, dim);
            x_best = xa.where_self(&im, &x_best);
            grad_best = grad.where_self(&im, &grad_best);
            loss_best = e.loss.where_self(&improved, &loss_best);
            history.push(e.loss);

            since_check += 1;
            if since_check == k {
                // history[j] is the loss after step j - 1 (history[0]: the start).
                let mut increases = Tensor::zeros([b], (Kind::Float, x.device()));
                for c in 0..k {
                    let j = i + 1 - c;
                    increases += history[j].gt_tensor(&history[j - 1]).to_kind(Kind::Float);
                }
                let oscillating = increases.le(k as f64 * self.rho);
                let stalled = reduced_last_check
                    .logical_not()
                    .logical_and(&loss_best_last_check.ge_tensor(&loss_best));
                let reduce = oscillating.logical_or(&stalled);
                reduced_last_check = reduce.copy();
                loss_best_last_check = loss_best.copy();
                let r = rows(&reduce, dim);
                step = (&step / 2.0).where_self(&r, &step);
                xa = x_best.where_self(&r, &xa);
                grad = grad_best.where_self(&r, &grad);
                k = k.saturating_sub(size_decr).max(n_min);
                since_check = 0;
            }
        }
        x_best_adv.where_self(&rows(&fooled, dim), &x_best)
    }
}

impl Attack for ApgdConfig {
    fn perturb(&self, target: &dyn Classifier, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        let obj = Objective { target, loss: self.loss, sgm: None, eot: self.eot, diversity: None };
        with_restarts(&obj, x, y, self.restarts, rng, |xs, ys, rng| self.run(&obj, xs, ys, rng))
    }

    fn eps(&self) -> f64 {
        self.eps
    }
}
