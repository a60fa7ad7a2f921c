/*!
[`AttackConfig`]: any attack as one serialisable value. It is the one attack type of the crate:
the evaluation protocols, the transfer files and the command line all describe their attacks with
it, and the paper's settings are preset functions ([`AttackConfig::paper_whitebox`],
[`AttackConfig::paper_transfer_suite`]).

Protocols that sweep a list of radii take the attack **at unit radius** (eps 1, so that a step
size reads as a fraction of eps) and scale it to each radius with [`AttackConfig::at_eps`]. At
unit radius the scaled step is `ratio * eps` exactly, the same floating-point value as computing
it from a step ratio.
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{ApgdConfig, Attack, AttackLoss, FgsmConfig, PgdConfig};
use crate::error::Result;
use crate::model::Classifier;
use crate::seed::Rng;

/// Any attack, as one serialisable value (`kind = "fgsm" | "pgd" | "apgd"` plus its fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttackConfig {
    /// Fast gradient sign method.
    Fgsm(FgsmConfig),
    /// PGD and its momentum / input-diversity / skip-gradient variants.
    Pgd(PgdConfig),
    /// Auto-PGD.
    Apgd(ApgdConfig),
}

impl AttackConfig {
    /// The paper's white-box attack (Sec. 4.1): PGD, 50 steps of eps/5 from a uniform random
    /// start, 5 restarts, cross-entropy.
    pub fn paper_whitebox(eps: f64) -> Self {
        AttackConfig::Pgd(PgdConfig::whitebox(eps))
    }

    /// The paper's three transfer attacks at radius `eps`, each 100 steps of eps/5 with
    /// cross-entropy: momentum PGD (MI-FGSM, mu 1) from 3 uniform random starts, M-DI2-FGSM
    /// (momentum 1, input diversity with p 0.5) and SGM (gamma 0.2), both from the clean image.
    pub fn paper_transfer_suite(eps: f64) -> Vec<Self> {
        vec![
            AttackConfig::Pgd(PgdConfig { restarts: 3, ..PgdConfig::momentum(eps, 1.0) }),
            AttackConfig::Pgd(PgdConfig::diversity(eps, 0.5)),
            AttackConfig::Pgd(PgdConfig::sgm(eps, 0.2)),
        ]
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            AttackConfig::Fgsm(c) => c.validate(),
            AttackConfig::Pgd(c) => c.validate(),
            AttackConfig::Apgd(c) => c.validate(),
        }
    }

    /// The short name reports and transfer files use: `fgsm`, `apgd`, or for the PGD family
    /// `mdi2` (input diversity), `sgm` (skip gradients), `mpgd` (momentum) or `pgd`.
    pub fn name(&self) -> &'static str {
        match self {
            AttackConfig::Fgsm(_) => "fgsm",
            AttackConfig::Apgd(_) => "apgd",
            AttackConfig::Pgd(p) if p.diversity.is_some() => "mdi2",
            AttackConfig::Pgd(p) if p.sgm.is_some() => "sgm",
            AttackConfig::Pgd(p) if p.momentum.is_some() => "mpgd",
            AttackConfig::Pgd(_) => "pgd",
        }
    }

    /// The loss the attack increases.
    pub fn loss(&self) -> AttackLoss {
        match self {
            AttackConfig::Fgsm(c) => c.loss,
            AttackConfig::Pgd(c) => c.loss,
            AttackConfig::Apgd(c) => c.loss,
        }
    }

    /// Iterations per run (1 for FGSM).
    pub fn steps(&self) -> usize {
        match self {
            AttackConfig::Fgsm(_) => 1,
            AttackConfig::Pgd(c) => c.steps,
            AttackConfig::Apgd(c) => c.steps,
        }
    }

    /// Runs from independent starts (1 for FGSM, which has no random start).
    pub fn restarts(&self) -> usize {
        match self {
            AttackConfig::Fgsm(_) => 1,
            AttackConfig::Pgd(c) => c.restarts,
            AttackConfig::Apgd(c) => c.restarts,
        }
    }

    /// Step size as a fraction of eps: the PGD step over eps, 1 for FGSM, `None` for APGD
    /// (it adapts its own step).
    pub fn step_ratio(&self) -> Option<f64> {
        match self {
            AttackConfig::Fgsm(_) => Some(1.0),
            AttackConfig::Pgd(c) => Some(c.step_size / c.eps),
            AttackConfig::Apgd(_) => None,
        }
    }

    /// The same attack at radius `eps`; a PGD step size scales with it (multiplied by
    /// `eps / self.eps()`, which is exactly `eps` at unit radius).
    pub fn at_eps(&self, eps: f64) -> Self {
        let scale = eps / self.eps();
        match self.clone() {
            AttackConfig::Fgsm(c) => AttackConfig::Fgsm(FgsmConfig { eps, ..c }),
            AttackConfig::Pgd(c) => {
                AttackConfig::Pgd(PgdConfig { eps, step_size: c.step_size * scale, ..c })
            }
            AttackConfig::Apgd(c) => AttackConfig::Apgd(ApgdConfig { eps, ..c }),
        }
    }

    /// The same attack with another loss.
    pub fn with_loss(self, loss: AttackLoss) -> Self {
        match self {
            AttackConfig::Fgsm(c) => AttackConfig::Fgsm(FgsmConfig { loss, ..c }),
            AttackConfig::Pgd(c) => AttackConfig::Pgd(PgdConfig { loss, ..c }),
            AttackConfig::Apgd(c) => AttackConfig::Apgd(ApgdConfig { loss, ..c }),
        }
    }

    /// The same attack with `steps` iterations per run (FGSM takes one step whatever).
    pub fn with_steps(self, steps: usize) -> Self {
        match self {
            AttackConfig::Fgsm(c) => AttackConfig::Fgsm(c),
            AttackConfig::Pgd(c) => AttackConfig::Pgd(PgdConfig { steps, ..c }),
            AttackConfig::Apgd(c) => AttackConfig::Apgd(ApgdConfig { steps, ..c }),
        }
    }

    /// The same attack with `restarts` runs (FGSM runs once whatever). Protocols that run the
    /// restarts themselves, each with its own seed, attack with `with_restarts(1)`.
    pub fn with_restarts(self, restarts: usize) -> Self {
        match self {
            AttackConfig::Fgsm(c) => AttackConfig::Fgsm(c),
            AttackConfig::Pgd(c) => AttackConfig::Pgd(PgdConfig { restarts, ..c }),
            AttackConfig::Apgd(c) => AttackConfig::Apgd(ApgdConfig { restarts, ..c }),
        }
    }

    /// The same attack with PGD steps of `ratio * eps` (FGSM steps eps and APGD adapts its
    /// step, so they are unchanged).
    pub fn with_step_ratio(self, ratio: f64) -> Self {
        match self {
            AttackConfig::Pgd(c) => AttackConfig::Pgd(PgdConfig { step_size: ratio * c.eps, ..c }),
            other => other,
        }
    }

    /// The same attack averaging `eot` gradient samples per step against a random target.
    pub fn with_eot(self, eot: usize) -> Self {
        match self {
            AttackConfig::Fgsm(c) => AttackConfig::Fgsm(FgsmConfig { eot, ..c }),
            AttackConfig::Pgd(c) => AttackConfig::Pgd(PgdConfig { eot, ..c }),
            AttackConfig::Apgd(c) => AttackConfig::Apgd(ApgdConfig { eot, ..c }),
        }
    }

    /// A one-line summary of one run, without radius, restarts and loss, e.g.
    /// `PGD-50, step 0.2*eps, random start` or `APGD-100`.
    pub fn describe(&self) -> String {
        match self {
            AttackConfig::Fgsm(_) => "FGSM".into(),
            AttackConfig::Apgd(c) => format!("APGD-{}", c.steps),
            AttackConfig::Pgd(p) => {
                let mu =
                    |p: &PgdConfig| p.momentum.map(|m| format!(", mu {m}")).unwrap_or_default();
                let family = match self.name() {
                    "mdi2" => format!(
                        "input-diversity PGD (M-DI2-FGSM, p {}{})",
                        p.diversity.map_or(0.0, |d| d.prob),
                        mu(p)
                    ),
                    "sgm" => format!("SGM (gamma {}{})", p.sgm.unwrap_or(1.0), mu(p)),
                    "mpgd" => format!("momentum PGD (MI-FGSM, mu {})", p.momentum.unwrap_or(0.0)),
                    _ => "PGD".into(),
                };
                let start = if p.random_start { "random start" } else { "start at x" };
                format!("{family}-{}, step {}*eps, {start}", p.steps, p.step_size / p.eps)
            }
        }
    }
}

impl Attack for AttackConfig {
    fn perturb(&self, target: &dyn Classifier, x: &Tensor, y: &Tensor, rng: &mut Rng) -> Tensor {
        match self {
            AttackConfig::Fgsm(c) => c.perturb(target, x, y, rng),
            AttackConfig::Pgd(c) => c.perturb(target, x, y, rng),
            AttackConfig::Apgd(c) => c.perturb(target, x, y, rng),
        }
    }

    fn eps(&self) -> f64 {
        match self {
            AttackConfig::Fgsm(c) => c.eps,
            AttackConfig::Pgd(c) => c.eps,
            AttackConfig::Apgd(c) => c.eps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_named_and_validate() {
        let names: Vec<&str> =
            AttackConfig::paper_transfer_suite(0.03).iter().map(|a| a.name()).collect();
        assert_eq!(names, ["mpgd", "mdi2", "sgm"]);
        for a in AttackConfig::paper_transfer_suite(1.0) {
            a.validate().unwrap();
            assert_eq!((a.steps(), a.step_ratio()), (100, Some(0.2)));
        }
        let wb = AttackConfig::paper_whitebox(1.0);
        assert_eq!((wb.name(), wb.steps(), wb.restarts()), ("pgd", 50, 5));
        assert_eq!(wb.describe(), "PGD-50, step 0.2*eps, random start");
        let fgsm = AttackConfig::Fgsm(FgsmConfig::new(0.03));
        assert_eq!((fgsm.steps(), fgsm.restarts()), (1, 1));
        assert_eq!(fgsm.clone().with_restarts(5).with_steps(9), fgsm);
    }

    #[test]
    fn unit_radius_scales_exactly() {
        let unit = AttackConfig::paper_whitebox(1.0).with_step_ratio(0.3);
        for i in 1..=70 {
            let eps = i as f64 / 1000.0;
            match unit.at_eps(eps) {
                AttackConfig::Pgd(p) => {
                    assert_eq!(p.eps, eps);
                    assert_eq!(p.step_size.to_bits(), (eps * 0.3).to_bits(), "eps {eps}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn round_trips_through_toml() {
        for a in AttackConfig::paper_transfer_suite(1.0) {
            let a = a.with_loss(AttackLoss::cw());
            let s = toml::to_string(&a).unwrap();
            assert_eq!(toml::from_str::<AttackConfig>(&s).unwrap(), a, "{s}");
        }
        assert!(toml::from_str::<AttackConfig>("kind = \"pgd\"\nstep = 1").is_err());
        assert!(toml::from_str::<AttackConfig>("kind = \"cw\"").is_err());
    }
}
