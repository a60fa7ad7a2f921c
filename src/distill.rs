/*!
Feature distillation (DVERGE, Yang et al., "DVERGE: Diversifying Vulnerabilities for Enhanced
Robust Generation of Ensembles", arXiv:2009.14720; Ensemble-in-One, Cai et al.,
arXiv:2103.14795, Eq. 2).

Given a source batch `x_s` and an independent target batch `x_t`, [`distill`] finds `x'` with
`||x' - x_s||_inf <= eps` whose layer-`l` features along one route match those of `x_t`:

```text
x' = argmin_z MSE(f_l(z), f_l(x_t))   subject to ||z - x_s||_inf <= eps, z in [0, 1]
```

by sign-gradient descent (a PGD that *decreases* a feature MSE). Mirrors
`linf_distillation` of `distillation.py` in cai-y13/Ensemble-in-One and `Linf_distillation` of
`distillation.py` in zjysteven/DVERGE.

| setting | EIO code ([`DistillConfig::eio`], the default) | DVERGE ([`DistillConfig::dverge`]) |
|---|---|---|
| start | uniform random in the eps ball | at `x_s` |
| direction | sign of the gradient | sign of the L1-normalised gradient momentum, mu = 1 |
| BatchNorm | eval mode (running statistics) | train mode (batch statistics) |
| features | after the ReLU | before the ReLU |
| eps / steps / step | 0.07 / 10 / 0.007 | 0.07 / 10 / 0.007 |

Efficiency: the forward pass stops at layer `l` ([`Net::features`]); gradients are taken with
respect to the input only (`Tensor::run_backward(&[loss], &[&x], ..)`), so the weights' `.grad`
is never touched; no graph outlives a step. In eval mode the target features are computed once;
in train mode they are recomputed at every step, after the source forward, as DVERGE does
(batch statistics depend on the batch, so they cannot be cached).

Running statistics: in train mode every distillation forward (source and target, up to layer
`l`) updates the running mean and variance of the BatchNorms on the route, exactly as the DVERGE
code does (its models are in `train()` mode while distilling). Only BatchNorms of the route's
copies are touched. In eval mode nothing in the network changes.
*/

use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use crate::attack::Ball;
use crate::error::{Error, Result};
use crate::model::{Net, Route, Tap, FEATURE_LAYERS};
use crate::seed::Rng;

/// Momentum decay of DVERGE's distillation (`mu = 1`).
pub const DVERGE_MU: f64 = 1.0;

/// Settings of feature distillation. `Default` = the released EIO code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistillConfig {
    /// Radius of the L-infinity ball around the source images (eps_d, pixel units).
    pub eps: f64,
    /// Sign-gradient steps.
    pub steps: usize,
    /// Size of each step.
    pub step_size: f64,
    /// Start from a uniformly random point of the eps ball (EIO code) instead of `x_s` (DVERGE).
    pub random_start: bool,
    /// Step along the sign of the accumulated L1-normalised gradient, `g <- mu*g + grad/|grad|_1`
    /// with mu = 1 (DVERGE), instead of the sign of the gradient (EIO code).
    pub momentum: bool,
    /// BatchNorm in train mode (batch statistics, running statistics updated; DVERGE) instead
    /// of eval mode (running statistics; EIO code).
    pub bn_train: bool,
    /// Match the features before the ReLU (DVERGE) instead of after it (EIO code).
    pub before_relu: bool,
}

impl Default for DistillConfig {
    fn default() -> Self {
        DistillConfig::eio()
    }
}

impl DistillConfig {
    /// The released Ensemble-in-One code: random start, plain sign steps, eval-mode BatchNorm,
    /// features after the ReLU; eps 0.07, 10 steps of 0.007.
    pub fn eio() -> Self {
        DistillConfig {
            eps: 0.07,
            steps: 10,
            step_size: 0.007,
            random_start: true,
            momentum: false,
            bn_train: false,
            before_relu: false,
        }
    }

    /// The DVERGE code: start at `x_s`, L1-normalised momentum (mu = 1), train-mode BatchNorm,
    /// features before the ReLU; eps 0.07, 10 steps of 0.007.
    pub fn dverge() -> Self {
        DistillConfig {
            random_start: false,
            momentum: true,
            bn_train: true,
            before_relu: true,
            ..DistillConfig::eio()
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps > 0.0 && self.eps <= 1.0) {
            return Err(Error::config(format!(
                "distillation eps must be in (0, 1] (pixel units), got {}",
                self.eps
            )));
        }
        if self.steps == 0 {
            return Err(Error::config("distillation needs at least one step"));
        }
        if !(self.step_size.is_finite() && self.step_size > 0.0) {
            return Err(Error::config(format!(
                "distillation step size must be > 0, got {}",
                self.step_size
            )));
        }
        Ok(())
    }

    /// Where the features are taken for layer `layer`.
    pub fn tap(&self, layer: usize) -> Tap {
        Tap { layer, before_relu: self.before_relu }
    }
}

/// Checks that `layer` is a feature layer (1..=20).
pub fn check_layer(layer: usize) -> Result<()> {
    if !(1..=FEATURE_LAYERS).contains(&layer) {
        return Err(Error::config(format!(
            "distillation layer must be in 1..={FEATURE_LAYERS}, got {layer}"
        )));
    }
    Ok(())
}

/// Distilled images: `x'` near `x_s` whose layer-`layer` features along `route` imitate those of
/// `x_t` (Eq. 2). The result is detached, within `cfg.eps` of `x_s` in L-infinity and in [0, 1].
/// The random start comes from `rng` (drawn on the host), so a seeded generator gives the same
/// result on every device and whatever else runs in the process.
///
/// # Shapes
/// `x_s`, `x_t`: `[B, 3, 32, 32]` in [0, 1], on the network's device -> `[B, 3, 32, 32]`.
pub fn distill(
    net: &Net,
    route: &Route,
    layer: usize,
    x_s: &Tensor,
    x_t: &Tensor,
    cfg: &DistillConfig,
    rng: &mut Rng,
) -> Tensor {
    let tap = cfg.tap(layer);
    let train = cfg.bn_train;
    let x_s = x_s.detach();
    let ball = Ball::new(&x_s, cfg.eps);
    let mut x = if cfg.random_start { ball.uniform(&x_s, cfg.eps, rng) } else { x_s.copy() };
    // Eval mode: the target features do not depend on the step; compute them once.
    let fixed_target = (!train).then(|| tch::no_grad(|| net.features(x_t, route, false, tap)));
    let mut g = cfg.momentum.then(|| x_s.zeros_like());
    let dims: Vec<i64> = (1..x_s.dim() as i64).collect();
    for _ in 0..cfg.steps {
        let grad = tch::with_grad(|| {
            let xr = x.detach().set_requires_grad(true);
            let out = net.features(&xr, route, train, tap);
            let target = match &fixed_target {
                Some(t) => t.shallow_clone(),
                None => tch::no_grad(|| net.features(x_t, route, true, tap)),
            };
            let loss = out.mse_loss(&target, Reduction::Mean);
            Tensor::run_backward(&[&loss], &[&xr], false, false)
                .pop()
                .expect("one gradient per input")
        });
        let _guard = tch::no_grad_guard();
        let dir = match &mut g {
            Some(m) => {
                let l1 = grad.abs().sum_dim_intlist(dims.as_slice(), true, None).clamp_min(1e-12);
                *m *= DVERGE_MU;
                *m += grad / l1;
                m.sign()
            }
            None => grad.sign(),
        };
        x = &x - dir * cfg.step_size;
        ball.project_(&mut x);
    }
    x.detach()
}

/// The objective of [`distill`]: mean squared error between the layer-`layer` features of `x`
/// and `x_t` along `route`, with BatchNorm in the mode of `cfg` (for reports and tests; in train
/// mode the two forwards update the running statistics, as distillation does).
pub fn feature_mse(
    net: &Net,
    route: &Route,
    layer: usize,
    x: &Tensor,
    x_t: &Tensor,
    cfg: &DistillConfig,
) -> f64 {
    let _guard = tch::no_grad_guard();
    let tap = cfg.tap(layer);
    let a = net.features(x, route, cfg.bn_train, tap);
    let b = net.features(x_t, route, cfg.bn_train, tap);
    a.mse_loss(&b, Reduction::Mean).to_kind(Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ArchConfig, Model, ModelSpec};
    use crate::seed::{Seed, Stream};
    use tch::Device;

    fn tiny_rgn() -> Model {
        let spec = ModelSpec { arch: ArchConfig::rgn(2), members: 1 };
        Model::new(&spec, Device::Cpu, Seed(3)).unwrap()
    }

    #[test]
    fn distilled_inside_ball_and_closer_in_feature_space() {
        let model = tiny_rgn();
        let net = &model.nets[0];
        let (x_s, x_t) = crate::model::with_global_seed(5, || {
            let r = || Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
            (r(), r())
        });
        let route = Route(vec![1; model.gates()]);
        for (layer, cfg) in [
            (1, DistillConfig::eio()),
            (7, DistillConfig::eio()),
            (20, DistillConfig::eio()),
            (5, DistillConfig::dverge()),
        ] {
            let before = feature_mse(net, &route, layer, &x_s, &x_t, &cfg);
            let x = distill(
                net,
                &route,
                layer,
                &x_s,
                &x_t,
                &cfg,
                &mut Seed(2).rng(Stream::Start, 0, 0),
            );
            assert!(!x.requires_grad());
            let dist = (&x - &x_s).abs().max().double_value(&[]);
            assert!(dist <= cfg.eps + 1e-6, "layer {layer}: ||x'-x_s|| = {dist}");
            assert!(x.min().double_value(&[]) >= 0.0 && x.max().double_value(&[]) <= 1.0);
            let after = feature_mse(net, &route, layer, &x, &x_t, &cfg);
            assert!(after < before, "layer {layer}: MSE {before} -> {after}");
        }
    }

    #[test]
    fn eval_mode_leaves_network_untouched_and_weights_without_grad() {
        let model = tiny_rgn();
        let net = &model.nets[0];
        let before: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect();
        let (x_s, x_t) = crate::model::with_global_seed(1, || {
            let r = || Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
            (r(), r())
        });
        let mut rng = Seed(1).rng(Stream::Start, 0, 0);
        let _ = distill(
            net,
            &Route::zeros(model.gates()),
            9,
            &x_s,
            &x_t,
            &DistillConfig::eio(),
            &mut rng,
        );
        let now = model.vs.variables();
        for (k, v) in before {
            assert!(now[&k].equal(&v), "{k} changed");
            assert!(!now[&k].grad().defined(), "{k} got a gradient");
        }
    }

    #[test]
    fn presets_validate_and_round_trip() {
        for c in [DistillConfig::eio(), DistillConfig::dverge()] {
            c.validate().unwrap();
            let s = toml::to_string(&c).unwrap();
            assert_eq!(toml::from_str::<DistillConfig>(&s).unwrap(), c);
        }
        assert!(DistillConfig { steps: 0, ..Default::default() }.validate().is_err());
        assert!(check_layer(0).is_err() && check_layer(21).is_err() && check_layer(20).is_ok());
    }
}
