/*!
Ensemble-in-One vulnerability diversification (Cai et al., "Ensemble-in-One: Learning Ensemble
within Random Gated Networks for Enhanced Adversarial Robustness", arXiv:2103.14795, Sec. 3.3,
Alg. 1 lines 8-26, Eq. 2-5). Mirrors `EnsembleInOneRunManager.train` of `rgn_manager.py` in
cai-y13/Ensemble-in-One.

Per batch (source `x_s, y_s` and an independent target batch `x_t`):

1. draw the distillation layer `l` uniformly from 1..=20 (1..=min(k, 20) for a top-k RGN), per
   batch (EIO code) or once per epoch (DVERGE); [`EioConfig::layer`] fixes it;
2. draw `p` routes whose gates among the first
   [`crate::model::Net::gates_through`]`(l)` gates (those that layer `l` depends on) pairwise
   differ ([`sample_distinct`]); `p` is capped at
   `n^gates_through(l)`;
3. distil `x'_i` along each route `P_i` (Eq. 2, [`crate::distill::distill`]);
4. each route `P_j` accumulates the gradient of `sum_{i != j} CE(f_Pj(x'_i), y_s) / p`
   (train-mode forward), plus `CE(f_Pj(x_w,j), y_s) / p` with `x_w,j` a PGD example made against
   `P_j` when adversarial training is on (Eq. 5);
5. the training loop takes ONE optimiser step for the batch.

The EIO code compares the first `l` gates (`sample[:distill_layer]`), which equals
`gates_through(l)` only while no projection shortcut precedes layer `l`; eio uses the gates layer
`l` really depends on, which is what Alg. 1 line 13 asks for.

Memory: every (i, j) term is back-propagated as soon as it is computed, so at most one training
forward graph is alive at a time; the gradient is the same as that of the summed loss (the
gradient is additive and each forward uses its own batch statistics, as in the EIO code, which
runs one forward per distilled batch). Peak memory does not depend on the number of copies n
beyond the n-fold weights.

Fallback when only one route is possible (`n^gates_through(l) = 1`, i.e. layer `l` depends on no
gate; impossible with the augmentations eio builds, all of which gate the stem): the single route
is trained on its own distilled batch, `CE(f_P(x'_P), y_s)`, so that the batch still counts.
*/

use serde::{Deserialize, Serialize};

use super::adv::AdvTerm;
use super::diversify::{self, draw_layer, LayerPer, Plan};
use super::{Batch, Method, StepAt, StepStats};
use crate::distill::DistillConfig;
use crate::error::{Error, Result};
use crate::model::route::sample_distinct;
use crate::model::Branch;
use crate::model::{Augment, Model, Routing, FEATURE_LAYERS};
use crate::seed::Stream;

/// Settings of vulnerability diversification. `Default` = the paper / EIO code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EioConfig {
    /// Routes sampled per batch (p).
    pub paths: usize,
    /// Draw the distillation layer per batch (EIO code) or per epoch (DVERGE).
    pub layer_per: LayerPer,
    /// Always distil at this layer (1..=20) instead of drawing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// Feature distillation (Eq. 2).
    pub distill: DistillConfig,
    /// Adversarial-training term (Eq. 5); `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTerm>,
}

impl Default for EioConfig {
    fn default() -> Self {
        EioConfig {
            paths: 3,
            layer_per: LayerPer::Batch,
            layer: None,
            distill: DistillConfig::eio(),
            adv: None,
        }
    }
}

impl EioConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        // Each path is a distillation and p - 1 training passes per batch: more than the 64
        // members an ensemble may have is a slip, not an experiment.
        if !(2..=64).contains(&self.paths) {
            return Err(Error::config(format!(
                "vulnerability diversification samples 2 to 64 paths per batch, got {}",
                self.paths
            )));
        }
        diversify::validate(self.layer, &self.distill, self.adv.as_ref())
    }
}

/// The highest distillation layer for an augmentation: 20, or min(k, 20) for a top-k RGN (paper
/// appendix A.3).
pub fn max_layer(augment: Augment) -> usize {
    match augment {
        Augment::Top(k) => k.clamp(1, FEATURE_LAYERS),
        _ => FEATURE_LAYERS,
    }
}

/// Ensemble-in-One vulnerability diversification of a single RGN.
#[derive(Debug, Clone)]
pub struct Eio {
    cfg: EioConfig,
}

impl Eio {
    /// The method with `cfg` (validated).
    pub fn new(cfg: EioConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Eio { cfg })
    }

    /// The settings.
    pub fn config(&self) -> &EioConfig {
        &self.cfg
    }

    /// The layer and routes of the batch at `at`: a pure function of the seed and position, so a
    /// resumed run draws what the uninterrupted one drew.
    pub fn plan(&self, model: &Model, at: StepAt) -> Plan {
        let net = &model.nets[0];
        let max = max_layer(model.spec.arch.augment);
        let layer = draw_layer(self.cfg.layer, self.cfg.layer_per, max, at);
        let mut rng = at.seed.rng(Stream::Route, at.epoch as u64, at.step as u64);
        let routes = sample_distinct(
            model.gates(),
            model.spec.arch.copies,
            net.gates_through(layer),
            self.cfg.paths,
            &mut rng,
        );
        Plan {
            layer,
            branches: routes.into_iter().map(|route| Branch { member: 0, route }).collect(),
        }
    }
}

impl Method for Eio {
    fn name(&self) -> &'static str {
        "eio"
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() != 1 || model.gates() == 0 {
            return Err(Error::config(
                "Ensemble-in-One trains a single Random Gated Network (copies >= 2, gated layers)",
            ));
        }
        let (x_t, _) = batch
            .target
            .as_ref()
            .ok_or_else(|| Error::config("Ensemble-in-One needs a target batch"))?;
        let plan = self.plan(model, at);
        let p = plan.branches.len() as f64;
        let mut st = diversify::step(
            model,
            &plan,
            &self.cfg.distill,
            self.cfg.adv.as_ref().map(|a| (a, None)),
            &batch.x,
            &batch.y,
            x_t,
            at,
            p,
        );
        st.note = format!("layer {} p {}", plan.layer, plan.branches.len());
        Ok(st)
    }

    fn eval_routing(&self, _model: &Model) -> Routing {
        Routing::Random
    }

    fn needs_target(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ArchConfig, ModelSpec};
    use crate::seed::Seed;

    #[test]
    fn config_round_trips_and_validates() {
        let c = EioConfig { adv: Some(AdvTerm::default()), layer: Some(4), ..EioConfig::default() };
        let s = toml::to_string(&c).unwrap();
        assert_eq!(toml::from_str::<EioConfig>(&s).unwrap(), c, "{s}");
        let d: EioConfig = toml::from_str("paths = 4\nlayer_per = \"epoch\"").unwrap();
        assert_eq!(d.paths, 4);
        assert_eq!(d.layer_per, LayerPer::Epoch);
        assert_eq!(d.distill, DistillConfig::eio());
        assert!(EioConfig { paths: 1, ..Default::default() }.validate().is_err());
        assert!(toml::from_str::<EioConfig>("p = 3").is_err());
    }

    #[test]
    fn plans_follow_the_distinct_prefix_rule() {
        for (arch, top) in [
            (ArchConfig::rgn(2), 20),
            (ArchConfig { augment: Augment::Top(7), ..ArchConfig::rgn(2) }, 7),
            (ArchConfig { augment: Augment::Conv3x3, share_conv: true, ..ArchConfig::rgn(2) }, 20),
        ] {
            let spec = ModelSpec { arch, members: 1 };
            let model = Model::new(&spec, tch::Device::Cpu, Seed(0)).unwrap();
            let eio = Eio::new(EioConfig::default()).unwrap();
            let mut seen_layers = std::collections::BTreeSet::new();
            for step in 0..300 {
                let at = StepAt { epoch: 0, step, seed: Seed(9) };
                let plan = eio.plan(&model, at);
                assert_eq!(plan, eio.plan(&model, at), "plans are reproducible");
                assert!((1..=top).contains(&plan.layer));
                seen_layers.insert(plan.layer);
                let k = model.nets[0].gates_through(plan.layer);
                let cap = 2usize.pow(k.min(20) as u32);
                assert_eq!(plan.branches.len(), 3.min(cap), "layer {} prefix {k}", plan.layer);
                for (a, ra) in plan.branches.iter().enumerate() {
                    assert_eq!(ra.route.len(), model.gates());
                    for rb in &plan.branches[..a] {
                        assert_ne!(ra.route.0[..k], rb.route.0[..k]);
                    }
                }
            }
            assert_eq!(seen_layers.len(), top, "every layer 1..={top} is drawn");
        }
        // Layer 1 depends on the stem gate only: 2 distinct prefixes cap p at 2.
        let model = Model::new(
            &ModelSpec { arch: ArchConfig::rgn(2), members: 1 },
            tch::Device::Cpu,
            Seed(0),
        )
        .unwrap();
        let eio = Eio::new(EioConfig { layer: Some(1), ..Default::default() }).unwrap();
        let plan = eio.plan(&model, StepAt { epoch: 0, step: 0, seed: Seed(1) });
        assert_eq!(plan.branches.len(), 2);
        assert_ne!(plan.branches[0].route.0[0], plan.branches[1].route.0[0]);
        // Per-epoch layers stay fixed within an epoch.
        let eio = Eio::new(EioConfig { layer_per: LayerPer::Epoch, ..Default::default() }).unwrap();
        let l0 = eio.plan(&model, StepAt { epoch: 3, step: 0, seed: Seed(1) }).layer;
        for step in 1..20 {
            assert_eq!(eio.plan(&model, StepAt { epoch: 3, step, seed: Seed(1) }).layer, l0);
        }
    }
}
