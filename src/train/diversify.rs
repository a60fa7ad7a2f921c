/*!
The vulnerability-diversification engine shared by DVERGE (Yang et al., "DVERGE: Diversifying
Vulnerabilities for Enhanced Robust Generation of Ensembles", arXiv:2009.14720; reference code
`train/train_dverge.py` of zjysteven/DVERGE) and Ensemble-in-One (Cai et al., arXiv:2103.14795,
Alg. 1 lines 8-26; reference code `rgn_manager.py` of cai-y13/Ensemble-in-One).

Both methods work on *branches*: a branch is one member network of a [`Model`] along one route.
An RGN path is a branch of member 0; an ensemble member is a branch with the empty route. Per
batch (source `x_s, y_s`, independent target batch `x_t`), given a distillation layer `l` and a
list of branches:

1. distil `x'_i` on each branch `i` (Eq. 2, [`crate::distill::distill`]);
2. optionally craft an adversarial example `x_adv,j` against each branch `j` ([`AdvTerm`]);
3. each branch `j` accumulates the gradient of
   `(sum_{i != j} CE(f_j(x'_i), y_s) + CE(f_j(x_adv,j), y_s)) / div` (train-mode forwards),
   every term back-propagated as soon as it is computed (one forward graph alive at a time; the
   gradient is additive);
4. the training loop then takes one optimiser step.

The methods differ only in which branches a batch uses and how the terms are scaled:
[`super::eio::Eio`] samples `p` routes with distinct prefixes and divides by `p` (one SGD step
for the whole RGN); [`super::dverge::Dverge`] takes every member and does not divide (each member
minimises its own sum, as each DVERGE optimiser does). Since the distilled and adversarial
batches are detached, the loss of branch `j` reaches only branch `j`'s weights.
*/

use rand::Rng as _;
use tch::Tensor;

use super::adv::AdvTerm;
use super::methods::{ce_and_correct, cross_entropy};
use super::{stat, StepAt, StepStats};
use crate::distill::{distill, DistillConfig};
use crate::error::{Error, Result};
use crate::model::{Branch, BranchView, Model};
use crate::seed::{Seed, Stream};

/// How often the distillation layer is redrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerPer {
    /// A fresh layer for every batch (EIO code).
    Batch,
    /// One layer per epoch (DVERGE).
    Epoch,
}

impl std::str::FromStr for LayerPer {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "batch" => Ok(LayerPer::Batch),
            "epoch" => Ok(LayerPer::Epoch),
            _ => Err(Error::config(format!("layer-per must be 'batch' or 'epoch', got '{s}'"))),
        }
    }
}

/// What one batch of diversification uses: the layer and the branches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Distillation layer, 1..=20.
    pub layer: usize,
    /// The branches trained on each other's distilled data.
    pub branches: Vec<Branch>,
}

/// The distillation layer of the batch at `at`: `fixed`, else drawn uniformly from 1..=`max`
/// once per batch or once per epoch, from the seed and position only (so a resumed run draws
/// what the uninterrupted one drew).
pub fn draw_layer(fixed: Option<usize>, per: LayerPer, max: usize, at: StepAt) -> usize {
    match fixed {
        Some(l) => l,
        None => {
            let step = match per {
                LayerPer::Batch => at.step as u64,
                LayerPer::Epoch => u64::MAX,
            };
            at.seed.rng(Stream::Layer, at.epoch as u64, step).gen_range(1..=max)
        }
    }
}

/// Checks the settings EIO and DVERGE share: a fixed layer (when given), the distillation and
/// the adversarial term (when given).
pub fn validate(
    layer: Option<usize>,
    distill: &DistillConfig,
    adv: Option<&AdvTerm>,
) -> Result<()> {
    if let Some(l) = layer {
        crate::distill::check_layer(l)?;
    }
    distill.validate()?;
    adv.map_or(Ok(()), AdvTerm::validate)
}

/// The seed of the random starts (distillation, adversarial examples) of the batch at `at`.
fn start_seed(at: StepAt) -> Seed {
    Seed(at.seed.derive(Stream::Start, at.epoch as u64, at.step as u64))
}

/// Distilled batches, one per branch of `plan` (Eq. 2). The random start of branch `i` comes
/// from a generator derived from `at` and `i`.
pub fn distill_all(
    model: &Model,
    plan: &Plan,
    cfg: &DistillConfig,
    x_s: &Tensor,
    x_t: &Tensor,
    at: StepAt,
) -> Vec<Tensor> {
    plan.branches
        .iter()
        .enumerate()
        .map(|(i, b)| {
            distill(b.net(model), &b.route, plan.layer, x_s, x_t, cfg, &mut distill_rng(at, i))
        })
        .collect()
}

/// The generator of the distillation on branch `i` at `at` (its random start, when it has
/// one, is the generator's first draw: [`crate::attack::uniform_like`] of the source batch).
pub fn distill_rng(at: StepAt, i: usize) -> crate::seed::Rng {
    start_seed(at).rng(Stream::Start, 0, i as u64)
}

/// Adversarial examples against each branch of `plan` (Eq. 5; DVERGE+AdvT). The random starts
/// of branch `j` come from a generator derived from `at` and `j`.
pub fn adversarial_all(
    model: &Model,
    plan: &Plan,
    term: &AdvTerm,
    x: &Tensor,
    y: &Tensor,
    at: StepAt,
    starts: Option<&[Tensor]>,
) -> Vec<Tensor> {
    plan.branches
        .iter()
        .enumerate()
        .map(|(j, b)| {
            let view = BranchView::new(model, std::slice::from_ref(b), term.bn_train);
            term.examples(&view, x, y, &mut adversarial_rng(at, j), starts.map(|s| &s[j]))
        })
        .collect()
}

/// The generator of the adversarial examples against branch `j` at `at`.
fn adversarial_rng(at: StepAt, j: usize) -> crate::seed::Rng {
    start_seed(at).rng(Stream::Eval, 0, j as u64)
}

/// The random starts [`adversarial_all`] draws at `at` for `branches` branches, drawn ahead
/// (`None` when the term draws otherwise).
pub fn adversarial_starts(
    branches: usize,
    term: &AdvTerm,
    x: &Tensor,
    at: StepAt,
) -> Option<Vec<Tensor>> {
    (0..branches).map(|j| term.start_noise(x, &mut adversarial_rng(at, j))).collect()
}

/// Accumulates into the weights' `.grad` the cross-training gradient of branch `j`:
/// `(sum_{i != j} CE(f_j(x'_i), y) + CE(f_j(adv_j), y)) / div`, each term back-propagated on
/// its own (train-mode forwards). With a single branch it trains on its own distilled batch.
/// Returns the summed distillation cross-entropy (not divided), the correct predictions and the
/// predictions made on distilled data.
///
/// # Shapes
/// `distilled[i]`, `adv[j]`: `[B, 3, 32, 32]`; `y`: `[B]` i64.
pub fn cross_train(
    model: &Model,
    branches: &[Branch],
    j: usize,
    distilled: &[Tensor],
    adv: Option<&[Tensor]>,
    y: &Tensor,
    div: f64,
) -> StepStats {
    let mut st = StepStats::default();
    let (net, route) = (branches[j].net(model), &branches[j].route);
    let single = branches.len() == 1;
    for (i, xd) in distilled.iter().enumerate() {
        if i == j && !single {
            continue;
        }
        let (loss, c) = ce_and_correct(&net.forward(xd, route, true), y);
        (&loss / div).backward();
        st.loss = &st.loss + stat(&loss);
        st.correct = &st.correct + c;
        st.seen += y.size()[0];
    }
    if let Some(adv) = adv {
        let loss = cross_entropy(&net.forward(&adv[j], route, true), y);
        (&loss / div).backward();
    }
    st
}

/// One diversification batch over `plan`: distil on every branch, craft the adversarial
/// examples when `adv` is given (from its random starts drawn ahead, when given), cross-train
/// every branch (terms divided by `div`). The loss reported is the mean cross-entropy per
/// (branch, distilled batch) pair.
#[allow(clippy::too_many_arguments)]
pub fn step(
    model: &Model,
    plan: &Plan,
    distill_cfg: &DistillConfig,
    adv: Option<(&AdvTerm, Option<&[Tensor]>)>,
    x: &Tensor,
    y: &Tensor,
    x_t: &Tensor,
    at: StepAt,
    div: f64,
) -> StepStats {
    let distilled = distill_all(model, plan, distill_cfg, x, x_t, at);
    let adv = adv.map(|(a, starts)| adversarial_all(model, plan, a, x, y, at, starts));
    let mut st = StepStats::default();
    for j in 0..plan.branches.len() {
        let b = cross_train(model, &plan.branches, j, &distilled, adv.as_deref(), y, div);
        st.loss = &st.loss + b.loss;
        st.correct = &st.correct + b.correct;
        st.seen += b.seen;
    }
    let pairs = (st.seen / y.size()[0].max(1)).max(1) as f64;
    st.loss = &st.loss / pairs;
    st.note = format!("layer {} branches {}", plan.layer, plan.branches.len());
    st
}
