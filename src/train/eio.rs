/*!
Ensemble-in-One vulnerability diversification (Cai et al., "Ensemble-in-One: Learning Ensemble
within Random Gated Networks for Enhanced Adversarial Robustness", arXiv:2103.14795, Sec. 3.3,
Alg. 1 lines 8-26, Eq. 2-5). Mirrors `EnsembleInOneRunManager.train` of `rgn_manager.py` in
cai-y13/Ensemble-in-One.

Per batch (source `x_s, y_s` and an independent target batch `x_t`):

1. draw the distillation layer `l` uniformly from 1..=20 (1..=min(k, 20) for a top-k RGN), per
   batch (EIO code) or once per epoch (DVERGE); [`EioConfig::layer`] fixes it;
2. draw `p` routes whose gates among the first [`Net::gates_through`]`(l)` gates (those that
   layer `l` depends on) pairwise differ ([`sample_distinct`]); `p` is capped at
   `n^gates_through(l)`;
3. distil `x'_i` along each route `P_i` (Eq. 2, [`distill`]);
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

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::methods::ce_and_correct;
use super::{Batch, Method, StepAt, StepStats};
use crate::attack::{Attack, PgdConfig};
use crate::data::Dataset;
use crate::distill::{check_layer, distill, DistillConfig};
use crate::error::{Error, Result};
use crate::eval::whitebox::{whitebox, WhiteboxConfig};
use crate::model::route::sample_distinct;
use crate::model::{Augment, Classifier, Model, Net, Route, Routing, Target, FEATURE_LAYERS};
use crate::seed::{Rng, Seed, Stream};

/// How often the distillation layer is redrawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// L-infinity PGD settings of the adversarial-training term (Eq. 5). Defaults: eps 8/255, step
/// 2/255, 10 steps, random start, BatchNorm in train mode (as the EIO and DVERGE codes, which
/// craft the examples while the network is in `train()` mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvConfig {
    /// Radius of the L-infinity ball (pixel units).
    pub eps: f64,
    /// Size of each sign step.
    pub step_size: f64,
    /// Number of steps.
    pub steps: usize,
    /// Start from a uniformly random point of the eps ball.
    pub random_start: bool,
    /// Craft with train-mode BatchNorm (batch statistics; updates running statistics).
    pub bn_train: bool,
}

impl Default for AdvConfig {
    fn default() -> Self {
        AdvConfig {
            eps: 8.0 / 255.0,
            step_size: 2.0 / 255.0,
            steps: 10,
            random_start: true,
            bn_train: true,
        }
    }
}

impl AdvConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps <= 1.0) {
            return Err(Error::config(format!("PGD eps must be in (0, 1], got {}", self.eps)));
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) || self.steps == 0 {
            return Err(Error::config("PGD needs a positive step size and at least one step"));
        }
        Ok(())
    }
}

impl AdvConfig {
    /// The same attack as a [`PgdConfig`] (one run, cross-entropy).
    pub fn pgd_config(&self) -> PgdConfig {
        PgdConfig {
            eps: self.eps,
            step_size: self.step_size,
            steps: self.steps,
            random_start: self.random_start,
            restarts: 1,
            ..PgdConfig::whitebox(self.eps)
        }
    }
}

/// One route of an RGN as a [`Classifier`], with BatchNorm in train or eval mode.
struct RouteClassifier<'a> {
    net: &'a Net,
    route: &'a Route,
    train: bool,
}

impl Classifier for RouteClassifier<'_> {
    fn logits(&self, x: &Tensor, sgm: Option<f64>) -> Tensor {
        match sgm {
            Some(g) if !self.train => self.net.forward_sgm(x, self.route, g),
            _ => self.net.forward(x, self.route, self.train),
        }
    }
}

/// The adversarial examples of Eq. 5: untargeted L-infinity PGD ([`crate::attack::PgdConfig`],
/// cross-entropy, one run, the last iterate) against `net` along `route`, with BatchNorm in the
/// mode `cfg.bn_train` asks for. Gradients are taken with respect to the input only; the random
/// start comes from `rng`.
///
/// # Shapes
/// `x`: `[B, 3, 32, 32]` in [0,1]; `y`: `[B]` i64 -> `[B, 3, 32, 32]`.
pub fn pgd(
    net: &Net,
    route: &Route,
    x: &Tensor,
    y: &Tensor,
    cfg: &AdvConfig,
    rng: &mut Rng,
) -> Tensor {
    let target = RouteClassifier { net, route, train: cfg.bn_train };
    cfg.pgd_config().perturb(&target, x, y, rng).detach()
}

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
    pub adv: Option<AdvConfig>,
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
        if self.paths < 2 {
            return Err(Error::config(format!(
                "vulnerability diversification needs at least 2 paths per batch, got {}",
                self.paths
            )));
        }
        if let Some(l) = self.layer {
            check_layer(l)?;
        }
        self.distill.validate()?;
        if let Some(a) = &self.adv {
            a.validate()?;
        }
        Ok(())
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

/// What one batch of diversification uses: the layer and the routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Distillation layer, 1..=20.
    pub layer: usize,
    /// The sampled routes (pairwise different among the gates layer `layer` depends on).
    pub routes: Vec<Route>,
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
        let layer = match self.cfg.layer {
            Some(l) => l,
            None => {
                let step = match self.cfg.layer_per {
                    LayerPer::Batch => at.step as u64,
                    LayerPer::Epoch => u64::MAX,
                };
                let mut rng = at.seed.rng(Stream::Layer, at.epoch as u64, step);
                rng.gen_range(1..=max_layer(model.spec.arch.augment))
            }
        };
        let mut rng = at.seed.rng(Stream::Route, at.epoch as u64, at.step as u64);
        let routes = sample_distinct(
            model.gates(),
            model.spec.arch.copies,
            net.gates_through(layer),
            self.cfg.paths,
            &mut rng,
        );
        Plan { layer, routes }
    }

    /// Distilled batches, one per route of `plan` (Eq. 2). The random start of route `i` comes
    /// from a generator derived from `at` and `i`.
    pub fn distill_all(
        &self,
        net: &Net,
        plan: &Plan,
        x_s: &Tensor,
        x_t: &Tensor,
        at: StepAt,
    ) -> Vec<Tensor> {
        plan.routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut rng = start_seed(at).rng(Stream::Start, 0, i as u64);
                distill(net, r, plan.layer, x_s, x_t, &self.cfg.distill, &mut rng)
            })
            .collect()
    }

    /// PGD examples against each route of `plan` (Eq. 5), or `None` when adversarial training
    /// is off. The random starts of route `j` come from a generator derived from `at` and `j`.
    pub fn adversarial_all(
        &self,
        net: &Net,
        plan: &Plan,
        x: &Tensor,
        y: &Tensor,
        at: StepAt,
    ) -> Option<Vec<Tensor>> {
        let a = self.cfg.adv.as_ref()?;
        Some(
            plan.routes
                .iter()
                .enumerate()
                .map(|(j, r)| {
                    pgd(net, r, x, y, a, &mut start_seed(at).rng(Stream::Eval, 0, j as u64))
                })
                .collect(),
        )
    }
}

/// The seed of the random starts (distillation, adversarial examples) of the batch at `at`.
fn start_seed(at: StepAt) -> Seed {
    Seed(at.seed.derive(Stream::Start, at.epoch as u64, at.step as u64))
}

/// Accumulates into the weights' `.grad` the cross-training gradient of route `j`:
/// `sum_{i != j} CE(f_Pj(x'_i), y) / p` (+ `CE(f_Pj(adv_j), y) / p`), `p = routes.len()`, each
/// term back-propagated on its own (train-mode forwards). With a single route it trains on its
/// own distilled batch. Returns the summed cross-entropy (not divided by p), the correct
/// predictions and the predictions made on distilled data.
///
/// # Shapes
/// `distilled[i]`, `adv[j]`: `[B, 3, 32, 32]`; `y`: `[B]` i64.
pub fn cross_train_route(
    net: &Net,
    routes: &[Route],
    j: usize,
    distilled: &[Tensor],
    adv: Option<&[Tensor]>,
    y: &Tensor,
) -> (f64, i64, i64) {
    let p = routes.len() as f64;
    let (mut loss_sum, mut correct, mut seen) = (0.0, 0i64, 0i64);
    let route = &routes[j];
    let single = routes.len() == 1;
    for (i, xd) in distilled.iter().enumerate() {
        if i == j && !single {
            continue;
        }
        let (loss, c) = ce_and_correct(&net.forward(xd, route, true), y);
        (&loss / p).backward();
        loss_sum += loss.double_value(&[]);
        correct += c;
        seen += y.size()[0];
    }
    if let Some(adv) = adv {
        let loss = net.forward(&adv[j], route, true).cross_entropy_for_logits(y);
        (&loss / p).backward();
    }
    (loss_sum, correct, seen)
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
        let net = &model.nets[0];
        let plan = self.plan(model, at);
        let distilled = self.distill_all(net, &plan, &batch.x, x_t, at);
        let adv = self.adversarial_all(net, &plan, &batch.x, &batch.y, at);
        let mut st = StepStats::default();
        for j in 0..plan.routes.len() {
            let (l, c, s) =
                cross_train_route(net, &plan.routes, j, &distilled, adv.as_deref(), &batch.y);
            st.loss += l;
            st.correct += c;
            st.seen += s;
        }
        // Mean cross-entropy per (path, distilled batch) pair.
        let pairs = (st.seen / batch.y.size()[0].max(1)).max(1) as f64;
        st.loss /= pairs;
        st.note = format!("layer {} p {}", plan.layer, plan.routes.len());
        Ok(st)
    }

    fn eval_routing(&self, _model: &Model) -> Routing {
        Routing::Random
    }

    fn needs_target(&self) -> bool {
        true
    }
}

/// How a candidate route fared on a validation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteScore {
    /// The route (`0,1,...`).
    pub route: String,
    /// Clean accuracy.
    pub clean: f64,
    /// Accuracy under the screening PGD.
    pub robust: f64,
}

/// Scores each of `routes` of the RGN `model` by clean and white-box accuracy on `data`
/// ([`crate::eval::whitebox::whitebox`] with `cfg`, in eval mode, the same `seed` for every
/// route, so every route faces the same random starts) and returns the scores best first:
/// higher robust accuracy (at the first eps of `cfg`), then higher clean accuracy, then
/// candidate order.
pub fn screen_routes(
    model: &Model,
    routes: &[Route],
    data: &Dataset,
    cfg: &WhiteboxConfig,
    device: tch::Device,
    seed: Seed,
) -> Result<Vec<RouteScore>> {
    let mut scores = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let target = Target::new(model, Routing::Fixed(r.clone()), seed)?;
        let rep = whitebox(&target, data, cfg, device, seed)?;
        let robust = rep.rows.first().map_or(rep.clean_accuracy, |row| row.robust_accuracy);
        scores.push((i, RouteScore { route: r.to_string(), clean: rep.clean_accuracy, robust }));
    }
    scores.sort_by(|(i, a), (j, b)| {
        b.robust.total_cmp(&a.robust).then(b.clean.total_cmp(&a.clean)).then(i.cmp(j))
    });
    Ok(scores.into_iter().map(|(_, s)| s).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ArchConfig, ModelSpec};
    use crate::seed::Seed;

    #[test]
    fn config_round_trips_and_validates() {
        let c =
            EioConfig { adv: Some(AdvConfig::default()), layer: Some(4), ..EioConfig::default() };
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
            (ArchConfig { augment: Augment::Conv3x3, share_conv: true, copies: 2 }, 20),
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
                assert_eq!(plan.routes.len(), 3.min(cap), "layer {} prefix {k}", plan.layer);
                for (a, ra) in plan.routes.iter().enumerate() {
                    assert_eq!(ra.len(), model.gates());
                    for rb in &plan.routes[..a] {
                        assert_ne!(ra.0[..k], rb.0[..k]);
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
        assert_eq!(plan.routes.len(), 2);
        assert_ne!(plan.routes[0].0[0], plan.routes[1].0[0]);
        // Per-epoch layers stay fixed within an epoch.
        let eio = Eio::new(EioConfig { layer_per: LayerPer::Epoch, ..Default::default() }).unwrap();
        let l0 = eio.plan(&model, StepAt { epoch: 3, step: 0, seed: Seed(1) }).layer;
        for step in 1..20 {
            assert_eq!(eio.plan(&model, StepAt { epoch: 3, step, seed: Seed(1) }).layer, l0);
        }
    }
}
