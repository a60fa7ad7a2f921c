/*!
Fast gradient sign method (Goodfellow et al., "Explaining and Harnessing Adversarial Examples",
arXiv:1412.6572): one step of size eps along the sign of the input gradient,
`x_adv = clip_[0, 1](x + eps * sign(grad_x loss))`.
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{check_eot, check_eps, Attack, AttackLoss, Ball, Objective};
use crate::error::Result;
use crate::model::Classifier;
use crate::seed::Rng;

/// FGSM settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FgsmConfig {
    /// L-infinity radius in [0, 1] pixel units (default 0.03).
    pub eps: f64,
    /// Loss to increase (default cross-entropy).
    pub loss: AttackLoss,
    /// Gradient samples averaged for a random target (default 1).
    pub eot: usize,
}

impl Default for FgsmConfig {
    fn default() -> Self {
        FgsmConfig { eps: 0.03, loss: AttackLoss::CrossEntropy, eot: 1 }
    }
}

impl FgsmConfig {
    /// FGSM with radius `eps` and cross-entropy.
    pub fn new(eps: f64) -> Self {
        FgsmConfig { eps, ..Default::default() }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        check_eps(self.eps)?;
        check_eot(self.eot)?;
        self.loss.validate()
    }
}

impl Attack for FgsmConfig {
    fn perturb(&self, target: &dyn Classifier, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        let obj = Objective { target, loss: self.loss, sgm: None, eot: self.eot, diversity: None };
        let g = obj.eval(x, y, rng).grad;
        let _guard = tch::no_grad_guard();
        let mut xa = x + g.sign() * self.eps;
        Ball::new(x, self.eps).project_(&mut xa);
        xa
    }

    fn eps(&self) -> f64 {
        self.eps
    }
}
