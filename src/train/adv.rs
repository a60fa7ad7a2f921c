/*!
Adversarial training (PGD-AT: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", arXiv:1706.06083; for ensembles as `train/train_adv.py` of
zjysteven/DVERGE) and the adversarial-training term that every "+AdvT" variant adds (EIO+AdvT,
Eq. 5 of arXiv:2103.14795; DVERGE+AdvT, ADP+AdvT, GAL+AdvT as the DVERGE code's `--plus-adv`).

The term is an attack from [`crate::attack`] (the same [`AttackConfig`] the evaluation
protocols take; default: L-infinity PGD, eps 8/255, step 2/255, 10 steps, random start, one
run, cross-entropy) run against the networks being trained with BatchNorm in train mode, as the
reference codes craft their examples while the models are in `train()` mode.

[`AdvTrain`] is PGD-AT on its own: every member is trained with cross-entropy on examples made
against the whole model (one network, or an ensemble through its averaged softmax), the source
images themselves unused, as `train_adv.py` does.
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::methods::ce_and_correct;
use super::{stat, Batch, Method, StepAt, StepStats};
use crate::attack::{Attack, AttackConfig, AttackLoss, PgdConfig};
use crate::error::{Error, Result};
use crate::model::{Branch, BranchView, Classifier, Model};
use crate::seed::{Rng, Seed, Stream};

/// The adversarial-training term: which attack, and the BatchNorm mode it sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvTerm {
    /// The attack (default PGD 8/255, step 2/255, 10 steps, random start, one run, CE).
    pub attack: AttackConfig,
    /// Craft with train-mode BatchNorm (batch statistics; running statistics updated), as the
    /// EIO and DVERGE codes do (default true).
    pub bn_train: bool,
}

impl Default for AdvTerm {
    fn default() -> Self {
        AdvTerm { attack: AttackConfig::Pgd(AdvTerm::pgd(8.0 / 255.0)), bn_train: true }
    }
}

impl AdvTerm {
    /// The training PGD of the reference codes at radius `eps`: step eps/4 (2/255 for 8/255),
    /// 10 steps, uniform random start, one run, cross-entropy.
    pub fn pgd(eps: f64) -> PgdConfig {
        PgdConfig {
            eps,
            step_size: eps / 4.0,
            steps: 10,
            random_start: true,
            restarts: 1,
            loss: AttackLoss::CrossEntropy,
            ..PgdConfig::whitebox(eps)
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        self.attack.validate()
    }

    /// Adversarial examples against `target` (detached), random starts from `rng`, or from
    /// `start` when drawn ahead ([`AdvTerm::start_noise`]).
    pub fn examples(
        &self,
        target: &dyn Classifier,
        x: &Tensor,
        y: &Tensor,
        rng: &mut Rng,
        start: Option<&Tensor>,
    ) -> Tensor {
        match (&self.attack, start) {
            (AttackConfig::Pgd(p), Some(u)) => p.perturb_from(target, x, y, u),
            _ => self.attack.perturb(target, x, y, rng),
        }
        .detach()
    }

    /// The term's random start for examples of `x`, drawn ahead from `rng` (what
    /// [`AdvTerm::examples`] would draw first), when that is its only draw: a single PGD run
    /// from a random start. `None` otherwise.
    pub fn start_noise(&self, x: &Tensor, rng: &mut Rng) -> Option<Tensor> {
        match &self.attack {
            AttackConfig::Pgd(p) => p.start_noise(x, rng),
            _ => None,
        }
    }

    /// Whether [`AdvTerm::start_noise`] can draw the term's randomness ahead.
    pub fn draws_ahead(&self) -> bool {
        matches!(&self.attack, AttackConfig::Pgd(p) if p.draws_start_only())
    }
}

/// The generator of the examples against the whole model at `at`.
fn ensemble_rng(at: StepAt) -> Rng {
    Seed(at.seed.derive(Stream::Start, at.epoch as u64, at.step as u64)).rng(Stream::Eval, 1, 0)
}

/// Examples of `term` against every member of `model` together, drawn from the batch position
/// (or from `start`, drawn ahead by [`against_ensemble_start`]).
pub fn against_ensemble(
    model: &Model,
    term: &AdvTerm,
    batch: &Batch,
    at: StepAt,
    start: Option<&Tensor>,
) -> Tensor {
    let members = Branch::members(model);
    let view = BranchView::new(model, &members, term.bn_train);
    term.examples(&view, &batch.x, &batch.y, &mut ensemble_rng(at), start)
}

/// The random start [`against_ensemble`] draws at `at` for images `x`, drawn ahead.
pub fn against_ensemble_start(term: &AdvTerm, x: &Tensor, at: StepAt) -> Option<Tensor> {
    term.start_noise(x, &mut ensemble_rng(at))
}

/// PGD adversarial training of a network or an ensemble.
#[derive(Debug, Clone)]
pub struct AdvTrain {
    term: AdvTerm,
}

impl AdvTrain {
    /// The method with `term` (validated).
    pub fn new(term: AdvTerm) -> Result<Self> {
        term.validate()?;
        Ok(AdvTrain { term })
    }
}

impl Method for AdvTrain {
    fn name(&self) -> &'static str {
        "adv"
    }

    /// The PGD start, when the attack draws nothing else.
    fn draw(&self, _model: &Model, batch: &Batch, at: StepAt) -> Vec<Tensor> {
        against_ensemble_start(&self.term, &batch.x, at).into_iter().collect()
    }

    fn graphable(&self) -> bool {
        self.term.draws_ahead()
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.gates() > 0 {
            return Err(Error::config(
                "adversarial training takes plain ResNet-20s; for an RGN use eio with --adv true",
            ));
        }
        let start = batch.draws_of(self, model, at).pop();
        let xa = against_ensemble(model, &self.term, batch, at, start.as_ref());
        let mut st = StepStats::default();
        let route = crate::model::Route::zeros(0);
        for net in &model.nets {
            let (loss, correct) = ce_and_correct(&net.forward(&xa, &route, true), &batch.y);
            loss.backward();
            st.loss = &st.loss + stat(&loss) / model.nets.len() as f64;
            st.correct = &st.correct + correct;
            st.seen += batch.y.size()[0];
        }
        Ok(st)
    }
}
