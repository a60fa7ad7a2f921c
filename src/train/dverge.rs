/*!
DVERGE (Yang et al., "DVERGE: Diversifying Vulnerabilities for Enhanced Robust Generation of
Ensembles", NeurIPS 2020, arXiv:2009.14720); mirrors `DVERGE_Trainer` of
`train/train_dverge.py` in zjysteven/DVERGE.

Starts from a trained baseline ensemble (`eio train dverge --init`). Per batch (source
`x_s, y_s`, independent target batch `x_t`): the distillation layer `l` (drawn once per epoch
from 1..=20 by default, as the code does; per batch as an option); `x'_j` distilled on every
member `j` ([`DistillConfig::dverge`]: eps 0.07, 10 steps of 0.007, start at `x_s`, momentum 1
on the L1-normalised gradient, features before the ReLU, BatchNorm in train mode); member `i`
minimises `sum_{j != i} CE(f_i(x'_j), y_s)` (not averaged, as each DVERGE optimiser does). With
the adversarial term (DVERGE+AdvT) member `i` adds `CE(f_i(x_adv,i), y_s)` with `x_adv,i` a PGD
example made against member `i` ([`AdvTerm`], coefficient 1 as in the code's default).

All of it runs through the engine EIO uses ([`super::diversify`]), with every member a branch.
One optimiser over the ensemble equals the code's one optimiser per member (see
[`crate::optim`]).
*/

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::adv::AdvTerm;
use super::diversify::{self, draw_layer, LayerPer, Plan};
use super::{Batch, Method, StepAt, StepStats};
use crate::distill::DistillConfig;
use crate::error::{Error, Result};
use crate::model::Branch;
use crate::model::{Model, FEATURE_LAYERS};

/// DVERGE settings. `Default` = the DVERGE code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DvergeConfig {
    /// Draw the distillation layer once per epoch (DVERGE code) or per batch.
    pub layer_per: LayerPer,
    /// Always distil at this layer (1..=20) instead of drawing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Feature distillation (default [`DistillConfig::dverge`]).
    pub distill: DistillConfig,
    /// Adversarial-training term (DVERGE+AdvT); `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTerm>,
}

impl Default for DvergeConfig {
    fn default() -> Self {
        DvergeConfig {
            layer_per: LayerPer::Epoch,
            layer: None,
            distill: DistillConfig::dverge(),
            adv: None,
        }
    }
}

impl DvergeConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        diversify::validate(self.layer, &self.distill, self.adv.as_ref())
    }
}

/// DVERGE training of an ensemble of plain networks.
#[derive(Debug, Clone)]
pub struct Dverge {
    cfg: DvergeConfig,
}

impl Dverge {
    /// The method with `cfg` (validated).
    pub fn new(cfg: DvergeConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Dverge { cfg })
    }

    /// The layer and the branches (every member) of the batch at `at`.
    pub fn plan(&self, model: &Model, at: StepAt) -> Plan {
        Plan {
            layer: draw_layer(self.cfg.layer, self.cfg.layer_per, FEATURE_LAYERS, at),
            branches: Branch::members(model),
        }
    }
}

impl Method for Dverge {
    fn name(&self) -> &'static str {
        "dverge"
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() < 2 || model.gates() > 0 {
            return Err(Error::config(
                "DVERGE trains an ensemble of at least 2 plain ResNet-20s (--members N)",
            ));
        }
        let (x_t, _) =
            batch.target.as_ref().ok_or_else(|| Error::config("DVERGE needs a target batch"))?;
        let plan = self.plan(model, at);
        let starts = batch.draws_of(self, model, at);
        let starts = (!starts.is_empty()).then_some(starts.as_slice());
        Ok(diversify::step(
            model,
            &plan,
            &self.cfg.distill,
            self.cfg.adv.as_ref().map(|a| (a, starts)),
            &batch.x,
            &batch.y,
            x_t,
            at,
            1.0,
        ))
    }

    fn needs_target(&self) -> bool {
        true
    }

    /// The adversarial term's random starts (DVERGE+AdvT), one per member.
    fn draw(&self, model: &Model, batch: &Batch, at: StepAt) -> Vec<Tensor> {
        self.cfg
            .adv
            .as_ref()
            .and_then(|a| diversify::adversarial_starts(model.nets.len(), a, &batch.x, at))
            .unwrap_or_default()
    }

    /// The layer drawn per epoch (or fixed) and distillation from `x_s` leave nothing to draw
    /// per batch; the adversarial term's random starts are drawn ahead ([`Method::draw`]).
    fn graphable(&self) -> bool {
        self.cfg.layer_per == LayerPer::Epoch
            && !self.cfg.distill.random_start
            && self.cfg.adv.as_ref().is_none_or(AdvTerm::draws_ahead)
    }
}
