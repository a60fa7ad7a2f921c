/*!
Gradient Alignment Loss (GAL: Kariyappa & Qureshi, "Improving Adversarial Robustness of
Ensembles with Diversity Training", arXiv:1901.09981); mirrors `GAL_Trainer` of
`train/train_gal.py` in zjysteven/DVERGE.

Members use leaky ReLU 0.1 (`ArchConfig::relu_slope`) and train jointly (one Adam, lr 1e-3,
wd 1e-4, eps 1e-7) on

```text
loss = sum_i CE(f_i(x), y) / N + lambda * mean_b log(sum_{i<j} exp(cos(g_i, g_j)) + 1e-20)
```

with `g_i = d CE(f_i(x), y) / dx` per image, taken with `create_graph` so the coherence term is
back-propagated through the input gradients (double backprop; lambda 0.5). Training images get
Gaussian noise (std 0.045) with probability 0.5 each, as the code's `AddGaussianNoise`
transform (not clipped to [0, 1], as there). With the adversarial term (GAL+AdvT) the loss adds
`sum_i CE(f_i(x_adv), y) / N`, `x_adv` made against the whole ensemble.

The code runs a second forward of every member on the detached input for the cross-entropy term;
eio takes that term from the first forward (the same gradient: same input, same batch
statistics) and runs the second without a graph, only for what it does to the BatchNorm running
statistics, so they move as in the code (per member: the clean batch twice, then the adversarial
batch).
*/

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::adv::{against_ensemble, against_ensemble_start, AdvTerm};
use super::methods::{ensemble_correct, input_grads, move_running_stats, pairs, sum, summed_ce};
use super::{stat, Batch, Method, StepAt, StepStats};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::seed::{Rng, Stream};

/// GAL settings. `Default` = the GAL defaults of the DVERGE code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GalConfig {
    /// Weight of the gradient-coherence term (lambda).
    pub lambda: f64,
    /// Standard deviation of the Gaussian-noise augmentation (0 = off).
    pub noise_std: f64,
    /// Probability that an image gets noise.
    pub noise_prob: f64,
    /// Adversarial-training term (GAL+AdvT); `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTerm>,
}

impl Default for GalConfig {
    fn default() -> Self {
        GalConfig { lambda: 0.5, noise_std: 0.045, noise_prob: 0.5, adv: None }
    }
}

impl GalConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::config("GAL lambda must be >= 0"));
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(Error::config("GAL noise_std must be >= 0"));
        }
        if !(0.0..=1.0).contains(&self.noise_prob) {
            return Err(Error::config("GAL noise_prob must be in [0,1]"));
        }
        if let Some(a) = &self.adv {
            a.validate()?;
        }
        Ok(())
    }
}

/// Standard normal draws from `rng` (Box-Muller), so noise comes from the run's seed on any
/// device.
fn normals(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// GAL's augmentation noise for a batch shaped like `x`: N(0, std^2) per pixel on each image
/// with probability `prob`, zero on the others; drawn on the host from `rng`, returned on `x`'s
/// device in its kind. Add it to `x`.
pub fn gaussian_noise(x: &Tensor, std: f64, prob: f64, rng: &mut Rng) -> Tensor {
    let b = x.size()[0];
    let per = (x.numel() / b as usize) as i64;
    let pick: Vec<f32> = (0..b).map(|_| f32::from(rng.gen::<f64>() < prob)).collect();
    let noise = Tensor::from_slice(&normals(x.numel(), rng)).view([b, per]);
    let mask = Tensor::from_slice(&pick).view([b, 1]);
    let noise = (noise * mask * std).view(x.size().as_slice());
    // Without waiting for the device (a blocking copy syncs the stream), then in x's kind.
    noise.to_device_(x.device(), noise.kind(), true, false).to_kind(x.kind())
}

/// The coherence term: mean over images of `log(sum_{i<j} exp(cos(g_i, g_j)) + 1e-20)`.
///
/// # Shapes
/// `grads[i]`: `[B, D]` -> scalar.
pub fn coherence(grads: &[Tensor]) -> Tensor {
    let cos: Vec<Tensor> = pairs(grads.len())
        .into_iter()
        .map(|(i, j)| Tensor::cosine_similarity(&grads[i], &grads[j], -1, 1e-8))
        .collect();
    let kind = grads[0].kind();
    (Tensor::stack(&cos, -1).exp().sum_dim_intlist([-1].as_slice(), false, None) + 1e-20)
        .log()
        .mean(kind)
}

/// The parts of the GAL loss of a batch.
pub struct GalLoss {
    /// `sum_i CE_i / N + lambda * coherence`.
    pub total: Tensor,
    /// `sum_i CE_i`.
    pub ce: Tensor,
    /// The coherence term.
    pub coherence: Tensor,
    /// Each member's logits (detached).
    pub logits: Vec<Tensor>,
}

/// GAL training of an ensemble.
#[derive(Debug, Clone)]
pub struct Gal {
    cfg: GalConfig,
}

impl Gal {
    /// Whether the augmentation noise is on.
    fn noisy(&self) -> bool {
        self.cfg.noise_std > 0.0 && self.cfg.noise_prob > 0.0
    }

    /// The method with `cfg` (validated).
    pub fn new(cfg: GalConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Gal { cfg })
    }

    /// The GAL loss of the (already augmented) batch `x, y` without the adversarial term:
    /// (total, summed cross-entropy, coherence, the members' detached logits). Differentiable
    /// in the weights.
    pub fn loss(&self, model: &Model, x: &Tensor, y: &Tensor) -> GalLoss {
        let xr = x.detach().set_requires_grad(true);
        let lg = input_grads(model, &xr, y);
        let n = lg.len() as f64;
        let ce = sum(lg.iter().map(|(l, _, _)| l.shallow_clone()), x.device());
        let grads: Vec<Tensor> = lg.iter().map(|(_, g, _)| g.shallow_clone()).collect();
        let coh = coherence(&grads);
        GalLoss {
            total: &ce / n + &coh * self.cfg.lambda,
            ce,
            coherence: coh,
            logits: lg.into_iter().map(|(_, _, l)| l).collect(),
        }
    }
}

impl Method for Gal {
    fn name(&self) -> &'static str {
        "gal"
    }

    fn double_backprop(&self) -> bool {
        true
    }

    /// The augmentation noise ([`gaussian_noise`]) when on, then the adversarial term's random
    /// start (GAL+AdvT) when it draws nothing else.
    fn draw(&self, _model: &Model, batch: &Batch, at: StepAt) -> Vec<Tensor> {
        let mut out = Vec::new();
        if self.noisy() {
            let mut rng = at.seed.rng(Stream::Noise, at.epoch as u64, at.step as u64);
            out.push(gaussian_noise(&batch.x, self.cfg.noise_std, self.cfg.noise_prob, &mut rng));
        }
        out.extend(self.cfg.adv.as_ref().and_then(|a| against_ensemble_start(a, &batch.x, at)));
        out
    }

    /// Its draws per batch are the noise and the adversarial start ([`Method::draw`]).
    fn graphable(&self) -> bool {
        self.cfg.adv.as_ref().is_none_or(AdvTerm::draws_ahead)
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() < 2 || model.gates() > 0 {
            return Err(Error::config("GAL trains an ensemble of at least 2 plain ResNet-20s"));
        }
        let mut draws = batch.draws_of(self, model, at).into_iter();
        let x = match self.noisy().then(|| draws.next()).flatten() {
            Some(noise) => &batch.x + noise,
            None => batch.x.shallow_clone(),
        };
        let start = draws.next();
        let batch = Batch::new(x, batch.y.shallow_clone(), None);
        let xa =
            self.cfg.adv.as_ref().map(|a| against_ensemble(model, a, &batch, at, start.as_ref()));
        let GalLoss { total: mut loss, ce, coherence, logits } =
            self.loss(model, &batch.x, &batch.y);
        move_running_stats(model, &batch.x); // the code's second forward (module doc)
        let n = model.nets.len() as f64;
        let mut terms = vec![("ce", stat(&ce)), ("coherence", stat(&coherence))];
        if let Some(xa) = &xa {
            let adv = summed_ce(model, xa, &batch.y);
            terms.push(("adv", stat(&adv)));
            loss += adv / n;
        }
        loss.backward();
        let correct = ensemble_correct(&logits, &batch.y);
        Ok(StepStats {
            loss: stat(&loss),
            correct,
            seen: batch.y.size()[0],
            note: String::new(),
            terms,
        })
    }
}
