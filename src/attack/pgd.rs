/*!
Projected gradient descent in L-infinity (Madry et al., "Towards Deep Learning Models Resistant
to Adversarial Attacks", arXiv:1706.06083) and the transfer-attack variants built on it, all in
one config:

- **PGD / I-FGSM**: `x <- Proj(x + step * sign(g))`, optionally from a uniform random start in
  the eps ball, with restarts (per-sample worst case, see [`crate::attack`]). The final iterate
  of each restart is returned (as advertorch's `LinfPGDAttack`, used by the DVERGE evaluation).
- **Momentum (MI-FGSM)** (Dong et al., "Boosting Adversarial Attacks with Momentum",
  arXiv:1710.06081; advertorch `MomentumIterativeAttack`): `m <- mu * m + g / ||g||_1` per
  sample, step along `sign(m)`.
- **Input diversity (M-DI2-FGSM)** (Xie et al., arXiv:1803.06978): the gradient is taken at a
  randomly resized and padded input, see [`DiversityConfig`].
- **SGM** (Wu et al., "Skip Connections Matter: On the Transferability of Adversarial Examples
  Generated with ResNets", arXiv:2002.05990): gradients through residual branches scaled by
  gamma in the backward pass ([`Classifier::logits`] with `Some(gamma)`).
- **EOT** for random targets: gradients averaged over `eot` passes.

Presets: [`PgdConfig::whitebox`] (paper white-box: 50 steps of eps/5, random start, 5 restarts),
[`PgdConfig::momentum`], [`PgdConfig::diversity`], [`PgdConfig::sgm`] (paper transfer suite:
100 steps of eps/5), [`PgdConfig::ifgsm`].
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{
    check_eot, check_eps, sample_dims, with_restarts, Attack, AttackLoss, Ball, DiversityConfig,
    Objective,
};
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::seed::Rng;

/// PGD settings (also momentum PGD, M-DI2-FGSM and SGM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PgdConfig {
    /// L-infinity radius in [0, 1] pixel units (default 0.03).
    pub eps: f64,
    /// Step size in pixel units (default 0.006 = eps/5).
    pub step_size: f64,
    /// Iterations per restart (default 50).
    pub steps: usize,
    /// Start each restart at a uniform random point of the eps ball (default true).
    pub random_start: bool,
    /// Restarts; an image is fooled if any restart fools it (default 5).
    pub restarts: usize,
    /// Loss to increase (default cross-entropy).
    pub loss: AttackLoss,
    /// Momentum decay mu of MI-FGSM; `None` = plain sign steps (default `None`).
    pub momentum: Option<f64>,
    /// Input diversity of DI2-FGSM; `None` = off (default `None`).
    pub diversity: Option<DiversityConfig>,
    /// SGM residual-gradient scale gamma; `None` = plain gradients (default `None`).
    pub sgm: Option<f64>,
    /// Gradient samples averaged per step for a random target (default 1).
    pub eot: usize,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig::whitebox(0.03)
    }
}

/// The paper's transfer attacks: 100 steps of eps/5.
const TRANSFER_STEPS: usize = 100;

impl PgdConfig {
    /// The paper's white-box PGD: 50 steps of eps/5, uniform random start, 5 restarts, CE.
    pub fn whitebox(eps: f64) -> Self {
        PgdConfig {
            eps,
            step_size: eps / 5.0,
            steps: 50,
            random_start: true,
            restarts: 5,
            loss: AttackLoss::CrossEntropy,
            momentum: None,
            diversity: None,
            sgm: None,
            eot: 1,
        }
    }

    /// Iterative FGSM (BIM): `steps` sign steps of `step_size` from `x`, one run.
    pub fn ifgsm(eps: f64, step_size: f64, steps: usize) -> Self {
        PgdConfig { step_size, steps, random_start: false, restarts: 1, ..Self::whitebox(eps) }
    }

    /// Momentum PGD of the transfer suite: MI-FGSM with decay `mu` (paper 1.0) from a uniform
    /// random start, 100 steps of eps/5, one run (the suite stores each restart separately).
    pub fn momentum(eps: f64, mu: f64) -> Self {
        PgdConfig {
            steps: TRANSFER_STEPS,
            random_start: true,
            restarts: 1,
            momentum: Some(mu),
            ..Self::whitebox(eps)
        }
    }

    /// M-DI2-FGSM of the transfer suite: momentum 1.0 and input diversity with probability
    /// `prob` (paper 0.5), from `x`, 100 steps of eps/5.
    pub fn diversity(eps: f64, prob: f64) -> Self {
        PgdConfig {
            steps: TRANSFER_STEPS,
            random_start: false,
            restarts: 1,
            momentum: Some(1.0),
            diversity: Some(DiversityConfig { prob, ..Default::default() }),
            ..Self::whitebox(eps)
        }
    }

    /// SGM of the transfer suite: residual gradients scaled by `gamma` (paper 0.2), from `x`,
    /// 100 steps of eps/5, no momentum (as `attack_sgm.py` of csdongxian/skip-connections-matter).
    pub fn sgm(eps: f64, gamma: f64) -> Self {
        PgdConfig {
            steps: TRANSFER_STEPS,
            random_start: false,
            restarts: 1,
            sgm: Some(gamma),
            ..Self::whitebox(eps)
        }
    }

    /// The same attack with another loss.
    pub fn with_loss(self, loss: AttackLoss) -> Self {
        PgdConfig { loss, ..self }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        check_eot(self.eot)?;
        self.loss.validate()?;
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(Error::config(format!(
                "PGD step size must be > 0, got {}",
                self.step_size
            )));
        }
        if self.steps == 0 || self.restarts == 0 {
            return Err(Error::config("PGD needs at least one step and one restart"));
        }
        if let Some(mu) = self.momentum {
            if !(mu.is_finite() && mu >= 0.0) {
                return Err(Error::config(format!("momentum decay must be >= 0, got {mu}")));
            }
        }
        if let Some(g) = self.sgm {
            if !(g.is_finite() && g >= 0.0) {
                return Err(Error::config(format!("SGM gamma must be >= 0, got {g}")));
            }
        }
        if let Some(d) = &self.diversity {
            d.validate()?;
        }
        Ok(())
    }

    fn objective<'a>(&'a self, target: &'a dyn Classifier) -> Objective<'a> {
        Objective {
            target,
            loss: self.loss,
            sgm: self.sgm,
            eot: self.eot,
            diversity: self.diversity.as_ref(),
        }
    }

    /// One run (no restarts): the final iterate. Against a deterministic target without input
    /// diversity an iteration draws nothing on the host, so with CUDA graphs on
    /// ([`crate::graph`]) it is captured once and replayed.
    fn run(&self, obj: &Objective, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        self.run_from(obj, x, y, rng, None)
    }

    /// [`PgdConfig::run`] with its random start drawn ahead when `noise` is given.
    fn run_from(
        &self,
        obj: &Objective,
        x: &Tensor,
        y: &Tensor,
        rng: &mut Rng,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let _guard = tch::no_grad_guard();
        let ball = Ball::new(x, self.eps);
        let mut xa = match (self.random_start, noise) {
            (true, Some(u)) => ball.start(x, self.eps, u),
            (true, None) => ball.uniform(x, self.eps, rng),
            (false, _) => x.copy(),
        };
        let mut m = self.momentum.map(|_| x.zeros_like());
        let dims = sample_dims(x.dim());
        let mut iteration = |rng: &mut Rng| {
            let g = obj.eval(&xa, y, rng).grad;
            let dir = match (&mut m, self.momentum) {
                (Some(m), Some(mu)) => {
                    let l1 = g.abs().sum_dim_intlist(dims.as_slice(), true, None).clamp_min(1e-12);
                    *m *= mu;
                    *m += g / l1;
                    m.sign()
                }
                _ => g.sign(),
            };
            xa += dir * self.step_size;
            ball.project_(&mut xa);
        };
        if obj.draws_on_host() {
            (0..self.steps).for_each(|_| iteration(rng));
        } else {
            // The generator is not used: the iterations may be replayed.
            crate::graph::repeat(x.device(), self.steps, || iteration(rng));
        }
        xa
    }
}

impl PgdConfig {
    /// The one random draw of a single run from a random start without input diversity:
    /// its start, U[0,1) noise shaped like `x`, drawn from `rng` as [`Attack::perturb`] draws it
    /// first. `None` for attacks that draw otherwise (restarts, input diversity, no random
    /// start).
    pub fn start_noise(&self, x: &Tensor, rng: &mut Rng) -> Option<Tensor> {
        self.draws_start_only().then(|| super::uniform_like(x, rng))
    }

    /// Whether the attack's only random draw is its start: a single run from a random start
    /// without input diversity ([`PgdConfig::start_noise`] can draw it ahead).
    pub fn draws_start_only(&self) -> bool {
        self.random_start && self.restarts == 1 && self.diversity.is_none()
    }

    /// [`Attack::perturb`] of a single run from the start [`PgdConfig::start_noise`] drew, against
    /// a deterministic target: the same example, with nothing drawn during the run (so that a
    /// training step holding it can be replayed from a CUDA graph).
    pub fn perturb_from(
        &self,
        target: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        noise: &Tensor,
    ) -> Tensor {
        // Nothing is drawn from it: the start is given, the target deterministic.
        let mut unused = crate::seed::Seed(0).rng(crate::seed::Stream::Eval, 0, 0);
        self.run_from(&self.objective(target), x, y, &mut unused, Some(noise))
    }
}

impl Attack for PgdConfig {
    fn perturb(&self, target: &dyn Classifier, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        let obj = self.objective(target);
        with_restarts(&obj, x, y, self.restarts, rng, |xs, ys, rng| self.run(&obj, xs, ys, rng))
    }

    fn eps(&self) -> f64 {
        self.eps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A single run from a start drawn ahead is the run that draws its start itself.
    #[test]
    fn a_start_drawn_ahead_gives_the_same_example() {
        use crate::model::{ArchConfig, Model, ModelSpec, Target};
        use crate::seed::{Seed, Stream};
        let spec = ModelSpec { arch: ArchConfig::plain(), members: 1 };
        let model = Model::new(&spec, tch::Device::Cpu, Seed(1)).unwrap();
        let target = Target::fixed_zero(&model);
        let x = crate::bench::probe_input(4);
        let y = Tensor::from_slice(&[1i64, 3, 5, 7]);
        let pgd = PgdConfig { steps: 3, restarts: 1, ..PgdConfig::whitebox(0.03) };
        let rng = || Seed(5).rng(Stream::Eval, 2, 0);
        let drawn = pgd.perturb(&target, &x, &y, &mut rng());
        let noise = pgd.start_noise(&x, &mut rng()).expect("a single run from a random start");
        assert!(drawn.equal(&pgd.perturb_from(&target, &x, &y, &noise)));
        assert!(PgdConfig { restarts: 2, ..pgd.clone() }.start_noise(&x, &mut rng()).is_none());
        assert!(PgdConfig::diversity(0.03, 0.5).start_noise(&x, &mut rng()).is_none());
    }

    #[test]
    fn presets_validate_and_round_trip() {
        for c in [
            PgdConfig::default(),
            PgdConfig::ifgsm(0.03, 0.01, 10),
            PgdConfig::momentum(0.03, 1.0),
            PgdConfig::diversity(0.03, 0.5),
            PgdConfig::sgm(0.03, 0.2).with_loss(AttackLoss::cw()),
        ] {
            c.validate().unwrap();
            let s = toml::to_string(&c).unwrap();
            assert_eq!(toml::from_str::<PgdConfig>(&s).unwrap(), c, "{s}");
        }
        let partial: PgdConfig = toml::from_str("eps = 0.05\nloss = \"cw\"").unwrap();
        assert_eq!(partial.steps, 50);
        assert!(toml::from_str::<PgdConfig>("epsilon = 0.05").is_err());
        assert!(PgdConfig { steps: 0, ..Default::default() }.validate().is_err());
        assert!(PgdConfig { eps: 2.0, ..Default::default() }.validate().is_err());
    }
}
