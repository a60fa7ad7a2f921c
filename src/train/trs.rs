/*!
Transferability Reduced Smooth ensembles (TRS: Yang et al., "TRS: Transferability Reduced
Ensemble via Promoting Gradient Diversity and Model Smoothness", NeurIPS 2021,
arXiv:2104.00671); mirrors `TRS_Trainer` of `train/Empirical/trainer.py` in
AI-secure/Transferability-Reduced-Smooth-Ensemble, with its published defaults (coeff 2,
lamda 2, scale 5, init eps 0.1, adv eps 0.2; Adam lr 1e-3, wd 1e-4, eps 1e-7).

All members train jointly on

```text
loss = sum_i CE(f_i(x), y) + scale * (coeff * cos + lamda * smooth)
cos    = mean over pairs i<j of mean_b |cos(g_i, g_j)|        g_i = d CE(f_i(x), y) / dx
smooth = mean over members of mean_b 2 * ||d CE(f_i(x~), y) / dx~||^2
```

with double backprop through the input gradients. `x~` is the "vicinity" batch of the code's
`--plus-adv` mode (the default here, as in the paper's min-max training): the first half of the
batch clean, the second half moved by a 6-step PGD of step eps/3 that *maximises* the summed
gradient magnitude of the members, from a uniform random start, with eps growing linearly from
`init_eps` to `adv_eps` over the run. The code never zeroes the PGD input's gradient between
steps, so each step moves along the sign of the gradients *summed* over the steps so far; eio
does the same (`accumulate = false`: each step's own gradient). With `vicinity = false` the
smoothness term uses the clean gradients `g_i` (the code still runs the PGD then, for nothing but
BatchNorm running statistics; eio skips it).

All forwards are in train mode, so each moves the BatchNorm running statistics, in the code's
order: the clean batch, the PGD's steps, the smoothness batch, then once more the clean batch
(the code takes its accuracy from that extra forward; eio runs it without a graph for the
statistics, the logits being the first forward's).
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::methods::{ensemble_correct, input_grads, move_running_stats, pairs, sum};
use super::{stat, Batch, Method, StepAt, StepStats};
use crate::attack::Ball;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::seed::{Seed, Stream};

/// TRS settings. `Default` = the published TRS code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrsConfig {
    /// Weight of the gradient-similarity term (coeff).
    pub coeff: f64,
    /// Weight of the smoothness term (lamda).
    pub lamda: f64,
    /// Overall weight of both regularisers (scale).
    pub scale: f64,
    /// Smoothness on the PGD vicinity batch (the code's `--plus-adv`) instead of clean inputs.
    pub vicinity: bool,
    /// Vicinity radius at the first epoch.
    pub init_eps: f64,
    /// Vicinity radius reached at the last epoch.
    pub adv_eps: f64,
    /// Steps of the vicinity PGD (step eps/3).
    pub steps: usize,
    /// Each vicinity step follows the sign of the gradients summed over the steps so far (the
    /// published code, whose PGD input keeps its gradient between steps); false: the sign of
    /// the step's own gradient.
    pub accumulate: bool,
}

impl Default for TrsConfig {
    fn default() -> Self {
        TrsConfig {
            coeff: 2.0,
            lamda: 2.0,
            scale: 5.0,
            vicinity: true,
            init_eps: 0.1,
            adv_eps: 0.2,
            steps: 6,
            accumulate: true,
        }
    }
}

impl TrsConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("coeff", self.coeff), ("lamda", self.lamda), ("scale", self.scale)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::config(format!("TRS {name} must be >= 0, got {v}")));
            }
        }
        // adv_eps is `eio train trs --vicinity-eps` (--adv-eps is the AdvT term's radius).
        for (name, v) in [("init_eps", self.init_eps), ("adv_eps (--vicinity-eps)", self.adv_eps)] {
            if !(v.is_finite() && v > 0.0 && v <= 1.0) {
                return Err(Error::config(format!("TRS {name} must be in (0, 1], got {v}")));
            }
        }
        if self.steps == 0 {
            return Err(Error::config("TRS steps (--vicinity-steps) must be at least 1"));
        }
        Ok(())
    }

    /// The vicinity radius in `epoch` (0-based) of `epochs`, as the code's `cureps`.
    pub fn eps_at(&self, epoch: usize, epochs: usize) -> f64 {
        (self.adv_eps - self.init_eps) * epoch as f64 / epochs.max(1) as f64 + self.init_eps
    }
}

/// Mean over images of twice the squared L2 norm of `g` (`[B, D]`), the code's `Magnitude`.
pub fn magnitude(g: &Tensor) -> Tensor {
    g.pow_tensor_scalar(2).sum_dim_intlist([1].as_slice(), false, None).mean(g.kind()) * 2.0
}

/// Mean over pairs of the mean absolute cosine similarity of the members' input gradients.
pub fn similarity(grads: &[Tensor]) -> Tensor {
    let p = pairs(grads.len());
    let n = p.len() as f64;
    let cos = p.into_iter().map(|(i, j)| {
        Tensor::cosine_similarity(&grads[i], &grads[j], -1, 1e-8).abs().mean(grads[i].kind())
    });
    sum(cos, grads[0].device()) / n
}

/// The smoothness term at `x`: the members' mean gradient [`magnitude`], differentiable in the
/// weights and in `x` (which must require grad).
fn smoothness(model: &Model, x: &Tensor, y: &Tensor) -> Tensor {
    mean_magnitude(input_grads(model, x, y).iter().map(|(_, g, _)| g), x.device())
}

/// The mean of [`magnitude`] over the members' input gradients `grads`.
fn mean_magnitude<'a>(
    grads: impl ExactSizeIterator<Item = &'a Tensor>,
    device: tch::Device,
) -> Tensor {
    let n = grads.len() as f64;
    sum(grads.map(magnitude), device) / n
}

/// TRS training of an ensemble.
#[derive(Debug, Clone)]
pub struct Trs {
    cfg: TrsConfig,
    epochs: usize,
}

impl Trs {
    /// The method with `cfg` (validated) for a run of `epochs` (the vicinity radius grows over
    /// the run).
    pub fn new(cfg: TrsConfig, epochs: usize) -> Result<Self> {
        cfg.validate()?;
        Ok(Trs { cfg, epochs })
    }

    /// The vicinity PGD: moves `x` within `eps` to maximise the members' mean gradient
    /// magnitude (6 sign steps of eps/3 from the uniform random start `noise`, U[0,1) shaped
    /// like `x`, in [0, 1]; the steps follow the summed gradients when `accumulate`).
    fn vicinity(&self, model: &Model, x: &Tensor, y: &Tensor, eps: f64, noise: &Tensor) -> Tensor {
        let ball = Ball::new(x, eps);
        let mut adv = ball.start(x, eps, noise).detach();
        let mut summed: Option<Tensor> = None;
        for _ in 0..self.cfg.steps {
            let xr = adv.detach().set_requires_grad(true);
            let m = smoothness(model, &xr, y);
            let g = Tensor::run_backward(&[&m], &[&xr], false, false).pop().expect("one gradient");
            let _guard = tch::no_grad_guard();
            let g = match summed.take() {
                Some(s) => s + g,
                None => g,
            };
            adv = &adv + g.sign() * (eps / 3.0);
            ball.project_(&mut adv);
            summed = self.cfg.accumulate.then_some(g);
        }
        adv.detach()
    }
}

impl Method for Trs {
    fn name(&self) -> &'static str {
        "trs"
    }

    fn double_backprop(&self) -> bool {
        true
    }

    /// The vicinity PGD's uniform random start for the second half of the batch.
    fn draw(&self, _model: &Model, batch: &Batch, at: StepAt) -> Vec<Tensor> {
        if !self.cfg.vicinity {
            return Vec::new();
        }
        let b = batch.x.size()[0];
        let far = batch.x.narrow(0, b / 2, b - b / 2);
        let seed = Seed(at.seed.derive(Stream::Start, at.epoch as u64, at.step as u64));
        vec![crate::attack::uniform_like(&far, &mut seed.rng(Stream::Start, 0, 0))]
    }

    /// Its only draw per batch is the vicinity start; the radius changes per epoch.
    fn graphable(&self) -> bool {
        true
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() < 2 || model.gates() > 0 {
            return Err(Error::config("TRS trains an ensemble of at least 2 plain ResNet-20s"));
        }
        let (x, y) = (&batch.x, &batch.y);
        let xr = x.detach().set_requires_grad(true);
        let lg = input_grads(model, &xr, y);
        let ce = sum(lg.iter().map(|(l, _, _)| l.shallow_clone()), x.device());
        let grads: Vec<Tensor> = lg.iter().map(|(_, g, _)| g.shallow_clone()).collect();
        let cos = similarity(&grads);
        let smooth = if self.cfg.vicinity {
            let b = x.size()[0];
            let h = b / 2;
            let eps = self.cfg.eps_at(at.epoch, self.epochs);
            let noise = batch.draws_of(self, model, at).pop().expect("the vicinity start is drawn");
            let far =
                self.vicinity(model, &x.narrow(0, h, b - h), &y.narrow(0, h, b - h), eps, &noise);
            let xv = Tensor::cat(&[x.narrow(0, 0, h).detach(), far], 0).set_requires_grad(true);
            smoothness(model, &xv, y)
        } else {
            mean_magnitude(grads.iter(), x.device())
        };
        move_running_stats(model, x); // the code's accuracy forward (module doc)
        let c = &self.cfg;
        let loss = &ce + (&cos * c.coeff + &smooth * c.lamda) * c.scale;
        loss.backward();
        let logits: Vec<Tensor> = lg.into_iter().map(|(_, _, l)| l).collect();
        Ok(StepStats {
            loss: stat(&loss),
            correct: ensemble_correct(&logits, y),
            seen: y.size()[0],
            note: String::new(),
            terms: vec![("ce", stat(&ce)), ("cos", stat(&cos)), ("smooth", stat(&smooth))],
        })
    }
}
