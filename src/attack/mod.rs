/*!
L-infinity evasion attacks on any [`Classifier`].

Every attack is a stateless, serialisable config implementing [`Attack::perturb`]: given clean
images `x` (`[B,3,H,W]` in [0, 1]) and labels `y` (`[B]`, i64) it returns `x_adv` with
`||x_adv - x||_inf <= eps` and `x_adv` in [0, 1]; every iterate is projected onto that box. eps is
in [0, 1] pixel units (`8.0 / 255.0`, or `0.03`). Attacks are untargeted and maximise an
[`AttackLoss`].

| attack | config | paper |
|---|---|---|
| FGSM | [`FgsmConfig`] | Goodfellow et al., arXiv:1412.6572 |
| PGD (random start, restarts) | [`PgdConfig`] | Madry et al., arXiv:1706.06083 |
| momentum PGD / MI-FGSM | [`PgdConfig::momentum`] | Dong et al., arXiv:1710.06081 |
| M-DI2-FGSM (input diversity) | [`PgdConfig::diversity`] | Xie et al., arXiv:1803.06978 |
| SGM (skip gradient method) | [`PgdConfig::sgm`] | Wu et al., arXiv:2002.05990 |
| APGD-CE / APGD-DLR | [`ApgdConfig`] | Croce & Hein, arXiv:2003.01690 |

[`AttackConfig`] holds any one of them; it is the attack type of the evaluation protocols and
transfer files, and carries the paper's presets ([`AttackConfig::paper_whitebox`],
[`AttackConfig::paper_transfer_suite`]).

Conventions shared by all attacks:

- **Gradients** are taken with respect to the input only (`x.set_requires_grad(true)` and
  `Tensor::run_backward(&[loss], &[&x], false, false)`); model weights never receive a `.grad`,
  and no autograd graph outlives the step that built it. The per-sample losses are summed over
  the batch, so each image's gradient is independent of the others.
- **Model mode**: the target is used as given; [`crate::model::Target`] runs networks in eval
  mode (BatchNorm running statistics).
- **Randomness** (random starts, input diversity) is drawn only from the generator passed to
  [`Attack::perturb`] (a ChaCha8 [`Rng`], e.g. `seed.rng(Stream::Eval, a, b)`), never from a
  global generator: a run is reproducible, independent of other threads, and the same on CPU
  and GPU up to floating point (noise is drawn on the host and then moved to the input's
  device). The protocols in [`crate::eval`] derive one generator per batch from their seed. A
  random-route target draws its routes from its own seeded generator.
- **EOT**: when [`Classifier::is_random`] is true (an RGN with a fresh random route per
  forward), every gradient is the average over `eot` forward/backward passes (expectation over
  transformation); `eot = 1` (the default) is a plain gradient. Deterministic targets always use
  one pass. Input diversity, when enabled, is redrawn for each of these passes.
- **Restarts** keep the per-sample worst case: a later restart only runs on images that no
  earlier restart fooled, and an image's returned example comes from a restart that fooled the
  target when there is one, otherwise from the restart with the highest loss.
*/

mod apgd;
mod config;
mod diversity;
mod fgsm;
mod loss;
mod pgd;

use tch::{Kind, Tensor};

pub use apgd::ApgdConfig;
pub use config::AttackConfig;
pub use diversity::DiversityConfig;
pub use fgsm::FgsmConfig;
pub use loss::{AttackLoss, DEFAULT_CW_KAPPA};
pub use pgd::PgdConfig;

use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::seed::{Rng, Seed, Stream};

/// An untargeted L-infinity attack.
pub trait Attack {
    /// Adversarial examples for `x` with labels `y`, inside the eps ball around `x` and in [0, 1].
    ///
    /// Random choices come from `rng` only.
    ///
    /// # Shapes
    /// `x`: `[B, C, H, W]` float in [0, 1]; `y`: `[B]` i64, on the device of `x` -> `[B, C, H, W]`.
    fn perturb(&self, target: &dyn Classifier, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor;

    /// The radius of the L-infinity ball.
    fn eps(&self) -> f64;
}

pub(crate) fn check_eps(eps: f64) -> Result<()> {
    if !(eps.is_finite() && eps > 0.0 && eps <= 1.0) {
        return Err(Error::config(format!(
            "attack eps must be in (0, 1] (pixel units), got {eps}"
        )));
    }
    Ok(())
}

pub(crate) fn check_eot(eot: usize) -> Result<()> {
    if eot == 0 {
        return Err(Error::config("eot (gradient samples per step) must be at least 1"));
    }
    Ok(())
}

/// Loss and input gradient of one attack objective.
#[derive(Debug)]
pub struct LossGrad {
    /// Per-sample loss `[B]` (averaged over EOT samples), detached.
    pub loss: Tensor,
    /// Gradient of the summed loss with respect to the input, `[B, C, H, W]`.
    pub grad: Tensor,
    /// Logits `[B, classes]` of the forward passes (averaged over EOT samples), detached.
    pub logits: Tensor,
}

/// What an attack differentiates: a target, a loss, and the gradient options.
#[derive(Clone, Copy)]
pub(crate) struct Objective<'a> {
    pub target: &'a dyn Classifier,
    pub loss: AttackLoss,
    pub sgm: Option<f64>,
    pub eot: usize,
    pub diversity: Option<&'a DiversityConfig>,
}

impl Objective<'_> {
    /// Forward/backward passes averaged: `eot` of them for a random target, else one.
    fn samples(&self) -> usize {
        if self.target.is_random() {
            self.eot.max(1)
        } else {
            1
        }
    }

    /// Whether [`Objective::eval`] draws random numbers on the host (routes of a random target,
    /// input diversity): such a step differs from one call to the next beyond its tensors.
    pub fn draws_on_host(&self) -> bool {
        self.target.is_random() || self.diversity.is_some()
    }

    /// Loss, input gradient and logits at `x`; `rng` draws the input diversity.
    pub fn eval(&self, x: &Tensor, y: &Tensor, rng: &mut Rng) -> LossGrad {
        tch::with_grad(|| {
            let k = self.samples();
            let mut acc: Option<LossGrad> = None;
            for _ in 0..k {
                let xr = x.detach().set_requires_grad(true);
                let input = match self.diversity {
                    Some(d) => d.apply(&xr, rng),
                    None => xr.shallow_clone(),
                };
                let logits = self.target.logits(&input, self.sgm);
                let loss = self.loss.per_sample(&logits, y);
                let total = loss.sum(loss.kind());
                let grad = Tensor::run_backward(&[&total], &[&xr], false, false)
                    .pop()
                    .expect("one gradient per input");
                let (loss, logits) = (loss.detach(), logits.detach());
                acc = Some(match acc {
                    None => LossGrad { loss, grad, logits },
                    Some(a) => LossGrad {
                        loss: a.loss + loss,
                        grad: a.grad + grad,
                        logits: a.logits + logits,
                    },
                });
            }
            let a = acc.expect("at least one sample");
            if k == 1 {
                a
            } else {
                let k = k as f64;
                LossGrad { loss: a.loss / k, grad: a.grad / k, logits: a.logits / k }
            }
        })
    }

    /// Whether `target` misclassifies `x`, and the loss there (one plain forward, no gradient).
    pub fn score(&self, x: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
        let _guard = tch::no_grad_guard();
        let logits = self.target.logits(x, None);
        (logits.argmax(-1, false).ne_tensor(y), self.loss.per_sample(&logits, y))
    }
}

/// Per-sample loss and its input gradient at `x` for `target`, averaged over `eot` samples when
/// the target is random; `sgm` as in [`Classifier::logits`]. Exposed for diagnostics and tests
/// (e.g. finite-difference checks).
///
/// # Shapes
/// `x`: `[B, C, H, W]`; `y`: `[B]` i64.
pub fn loss_and_grad(
    target: &dyn Classifier,
    x: &Tensor,
    y: &Tensor,
    loss: AttackLoss,
    sgm: Option<f64>,
    eot: usize,
) -> LossGrad {
    // No input diversity: the generator is never used.
    let mut rng = Seed(0).rng(Stream::Eval, 0, 0);
    Objective { target, loss, sgm, eot, diversity: None }.eval(&x.detach(), y, &mut rng)
}

/// The L-infinity ball of radius eps around `x`, intersected with [0, 1].
pub(crate) struct Ball {
    lo: Tensor,
    hi: Tensor,
}

impl Ball {
    pub fn new(x: &Tensor, eps: f64) -> Self {
        let _guard = tch::no_grad_guard();
        // Both bounds into [0, 1]: an input outside it (GAL's noise-augmented training images)
        // then projects into [0, 1], as the reference codes' clip to the ball, then to [0, 1].
        Ball { lo: (x - eps).clamp(0.0, 1.0), hi: (x + eps).clamp(0.0, 1.0) }
    }

    /// Projects `xa` onto the ball in place.
    pub fn project_(&self, xa: &mut Tensor) {
        let _ = xa.clamp_tensor_(Some(&self.lo), Some(&self.hi));
    }

    /// A point drawn uniformly from the eps cube around `x`, then projected.
    pub fn uniform(&self, x: &Tensor, eps: f64, rng: &mut Rng) -> Tensor {
        self.start(x, eps, &uniform_like(x, rng))
    }

    /// The point of the eps cube around `x` that U[0,1) noise `u` (shaped like `x`) picks, then
    /// projected: [`Ball::uniform`] with its draw made ahead.
    pub fn start(&self, x: &Tensor, eps: f64, u: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let mut xa = x + (u * 2.0 - 1.0) * eps;
        self.project_(&mut xa);
        xa
    }
}

/// U[0,1) noise shaped, typed and placed like `x`, drawn from `rng` on the host.
pub fn uniform_like(x: &Tensor, rng: &mut Rng) -> Tensor {
    use rand::Rng as _;
    let n = x.numel();
    let t = if x.kind() == Kind::Double {
        Tensor::from_slice(&(0..n).map(|_| rng.gen::<f64>()).collect::<Vec<_>>())
    } else {
        Tensor::from_slice(&(0..n).map(|_| rng.gen::<f32>()).collect::<Vec<_>>())
    };
    // Without waiting for the device: a blocking copy would sync the stream at every draw.
    t.view(x.size().as_slice()).to_kind(x.kind()).to_device_(x.device(), x.kind(), true, false)
}

/// `mask` (`[B]`) reshaped to broadcast over a tensor of `dim` dimensions.
pub(crate) fn rows(mask: &Tensor, dim: usize) -> Tensor {
    let mut shape = vec![-1i64];
    shape.resize(dim, 1);
    mask.view(shape.as_slice())
}

/// Dimensions 1.. of a tensor of `dim` dimensions (per-sample reductions).
pub(crate) fn sample_dims(dim: usize) -> Vec<i64> {
    (1..dim as i64).collect()
}

/// Runs `once` and then `restarts - 1` more times on the images not yet fooled, keeping per
/// image an example that fooled the target if any, else the one with the highest loss.
pub(crate) fn with_restarts(
    obj: &Objective,
    x: &Tensor,
    y: &Tensor,
    restarts: usize,
    rng: &mut Rng,
    mut once: impl FnMut(&Tensor, &Tensor, &mut Rng) -> Tensor,
) -> Tensor {
    let mut best = once(x, y, rng);
    if restarts <= 1 {
        return best;
    }
    let (mut fooled, mut loss) = obj.score(&best, y);
    for _ in 1..restarts {
        let active = fooled.logical_not().nonzero().squeeze_dim(1);
        if active.numel() == 0 {
            break;
        }
        let (xs, ys) = (x.index_select(0, &active), y.index_select(0, &active));
        let cand = once(&xs, &ys, rng);
        let (f, l) = obj.score(&cand, &ys);
        let better = f.logical_or(&l.gt_tensor(&loss.index_select(0, &active)));
        let which = better.nonzero().squeeze_dim(1);
        let at = active.index_select(0, &which);
        let _ = best.index_copy_(0, &at, &cand.index_select(0, &which));
        let _ = fooled.index_copy_(0, &at, &f.index_select(0, &which));
        let _ = loss.index_copy_(0, &at, &l.index_select(0, &which));
    }
    best
}

/// Checks an attack's output: same shape, finite, in [0, 1], and within `eps` (plus a rounding
/// tolerance) of `x` in L-infinity. The evaluation protocols run it on every batch.
pub fn check_output(x: &Tensor, x_adv: &Tensor, eps: f64) -> Result<()> {
    let _guard = tch::no_grad_guard();
    if x.size() != x_adv.size() {
        return Err(Error::Diverged(format!(
            "attack returned shape {:?} for input {:?}",
            x_adv.size(),
            x.size()
        )));
    }
    if x_adv.numel() == 0 {
        return Ok(());
    }
    let xa = x_adv.to_kind(Kind::Double);
    if !bool::try_from(xa.isfinite().all()).unwrap_or(false) {
        return Err(Error::Diverged("attack produced NaN or infinite pixels".into()));
    }
    let (lo, hi) = (xa.min().double_value(&[]), xa.max().double_value(&[]));
    let tol = if x_adv.kind() == Kind::Double { 1e-12 } else { 1e-6 };
    if lo < -tol || hi > 1.0 + tol {
        return Err(Error::Diverged(format!("attack left [0,1]: pixel range [{lo}, {hi}]")));
    }
    let dist = (xa - x.to_kind(Kind::Double)).abs().max().double_value(&[]);
    if dist > eps + tol {
        return Err(Error::Diverged(format!(
            "attack left the eps ball: ||x_adv - x||_inf = {dist} > eps = {eps}"
        )));
    }
    Ok(())
}
