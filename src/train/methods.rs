//! Standard training methods: independent members on clean data (baseline ensembles and
//! fine-tuning) and the Random Gated Network warm-up (paper Alg. 1, lines 1-7).

use tch::{Kind, Tensor};

use super::{stat, Batch, Method, StepAt, StepStats};
use crate::error::Result;
use crate::model::{Model, Route, Routing};
use crate::seed::Stream;

/// Correct predictions of the ensemble of the members' `logits` (averaged softmax), on the
/// device.
pub fn ensemble_correct(logits: &[Tensor], y: &Tensor) -> Tensor {
    let _guard = tch::no_grad_guard();
    let ens = crate::model::ensemble_logits(logits.iter().map(|l| l.detach()).collect());
    ens.argmax(-1, false).eq_tensor(y).sum(Kind::Int64)
}

/// Mean cross-entropy of `logits` against `y` in the logits' precision (tch's
/// `cross_entropy_for_logits` computes in f32: the same numbers for an f32 model, but a
/// double-precision one, as the tests check against PyTorch, would lose its precision).
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.log_softmax(-1, logits.kind()).nll_loss(y)
}

/// Cross-entropy of `logits` against `y`, with the count of correct predictions (on the device).
pub fn ce_and_correct(logits: &Tensor, y: &Tensor) -> (Tensor, Tensor) {
    let loss = cross_entropy(logits, y);
    let correct = logits.detach().argmax(-1, false).eq_tensor(y).sum(Kind::Int64);
    (loss, correct)
}

/// Each member's cross-entropy at `x`, its input gradient flattened to `[B, 3*32*32]`, and its
/// logits (detached), with the gradient's graph kept (`create_graph`) so that a loss on the gradients can be back-propagated to
/// the weights (double backprop; GAL, TRS). `x` must require grad. Train-mode forwards along
/// the all-zero route.
pub fn input_grads(model: &Model, x: &Tensor, y: &Tensor) -> Vec<(Tensor, Tensor, Tensor)> {
    let route = Route::zeros(model.gates());
    model
        .nets
        .iter()
        .map(|net| {
            let logits = net.forward(x, &route, true);
            let loss = cross_entropy(&logits, y);
            let g = Tensor::run_backward(&[&loss], &[x], true, true)
                .pop()
                .expect("one gradient per input");
            (loss, g.flatten(1, -1), logits.detach())
        })
        .collect()
}

/// A train-mode forward of every member at `x` without a graph: it moves the BatchNorm running
/// statistics as a forward a reference code runs for another purpose does (TRS's accuracy, GAL's
/// second cross-entropy), where eio takes what that forward computes from an earlier one.
pub fn move_running_stats(model: &Model, x: &Tensor) {
    let route = Route::zeros(model.gates());
    tch::no_grad(|| {
        for net in &model.nets {
            let _ = net.forward(x, &route, true);
        }
    });
}

/// The sum of scalar tensors `ts` (a zero scalar on `device` when there are none).
pub fn sum(ts: impl IntoIterator<Item = Tensor>, device: tch::Device) -> Tensor {
    ts.into_iter().fold(Tensor::zeros([], (Kind::Float, device)), |a, b| a + b)
}

/// The sum over members of each member's train-mode cross-entropy at `x` along the all-zero
/// route (the adversarial terms of ADP+AdvT and GAL+AdvT).
pub fn summed_ce(model: &Model, x: &Tensor, y: &Tensor) -> Tensor {
    let route = Route::zeros(model.gates());
    sum(model.nets.iter().map(|n| cross_entropy(&n.forward(x, &route, true), y)), x.device())
}

/// The pairs `(i, j)`, `i < j`, of `n` members.
pub fn pairs(n: usize) -> Vec<(usize, usize)> {
    (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))).collect()
}

/// Back-propagates each member's clean cross-entropy along `route`.
fn clean_step(model: &Model, batch: &Batch, route: &Route) -> StepStats {
    let mut st = StepStats::default();
    for net in &model.nets {
        let (loss, correct) = ce_and_correct(&net.forward(&batch.x, route, true), &batch.y);
        loss.backward();
        st.loss = &st.loss + stat(&loss) / model.nets.len() as f64;
        st.correct = &st.correct + correct;
        st.seen += batch.y.size()[0];
    }
    st
}

/// Every member trained independently with clean cross-entropy on the same batches (baseline
/// ensembles; fine-tuning of a derived model). Members of an RGN use the all-zero route.
#[derive(Debug, Default)]
pub struct Independent;

impl Method for Independent {
    fn name(&self) -> &'static str {
        "baseline"
    }

    fn step(&mut self, model: &Model, batch: &Batch, _at: StepAt) -> Result<StepStats> {
        Ok(clean_step(model, batch, &Route::zeros(model.gates())))
    }

    fn graphable(&self) -> bool {
        true
    }
}

/// RGN warm-up: a fresh uniformly random route per batch, clean cross-entropy.
#[derive(Debug, Default)]
pub struct RgnWarmup;

impl Method for RgnWarmup {
    fn name(&self) -> &'static str {
        "rgn-warmup"
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        let mut rng = at.seed.rng(Stream::Route, at.epoch as u64, at.step as u64);
        let route = Route::random(model.gates(), model.spec.arch.copies, &mut rng);
        Ok(clean_step(model, batch, &route))
    }

    fn eval_routing(&self, _model: &Model) -> Routing {
        Routing::Random
    }
}
