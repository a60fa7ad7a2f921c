/*!
Adaptive Diversity Promoting regularisation (ADP: Pang et al., "Improving Adversarial Robustness
via Promoting Ensemble Diversity", ICML 2019, arXiv:1901.08846); mirrors `ADP_Trainer` of
`train/train_adp.py` in zjysteven/DVERGE.

All members train jointly (one Adam, lr 1e-3, wd 1e-4, eps 1e-7) on

```text
loss = sum_i CE(f_i(x), y) - alpha * H(mean_i softmax_i) - beta * log det(M M^T + 1e-6 I)
```

averaged over the batch, where `H` is the entropy of the ensemble's averaged prediction and row
`i` of `M` is member `i`'s softmax with the true class removed, L2-normalised (the "non-maximal
predictions"; alpha 2, beta 0.5). With the adversarial term (ADP+AdvT) the loss adds
`sum_i CE(f_i(x_adv), y)` with `x_adv` made against the whole ensemble, as the code's
`--plus-adv` does.
*/

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::adv::{against_ensemble, against_ensemble_start, AdvTerm};
use super::methods::{cross_entropy, ensemble_correct, sum, summed_ce};
use super::{stat, Batch, Method, StepAt, StepStats};
use crate::error::{Error, Result};
use crate::model::{Model, Route};

/// ADP settings. `Default` = the ADP defaults of the DVERGE code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdpConfig {
    /// Weight of the ensemble entropy (alpha).
    pub alpha: f64,
    /// Weight of the log-determinant of the non-maximal predictions (beta).
    pub beta: f64,
    /// Offset added to the diagonal before the log-determinant.
    pub det_offset: f64,
    /// Adversarial-training term (ADP+AdvT); `None` = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adv: Option<AdvTerm>,
}

impl Default for AdpConfig {
    fn default() -> Self {
        AdpConfig { alpha: 2.0, beta: 0.5, det_offset: 1e-6, adv: None }
    }
}

impl AdpConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha.is_finite() && self.beta.is_finite() && self.alpha >= 0.0) {
            return Err(Error::config("ADP alpha and beta must be finite, alpha >= 0"));
        }
        if !(self.det_offset > 0.0 && self.det_offset.is_finite()) {
            return Err(Error::config("ADP det_offset must be positive"));
        }
        if let Some(a) = &self.adv {
            a.validate()?;
        }
        Ok(())
    }
}

/// The ADP regularisers of a batch from the members' logits: (mean entropy of the averaged
/// softmax, mean log-determinant of the normalised non-maximal predictions).
///
/// # Shapes
/// `logits[i]`: `[B, K]`; `y`: `[B]` i64 -> two scalars.
pub fn regularisers(logits: &[Tensor], y: &Tensor, det_offset: f64) -> (Tensor, Tensor) {
    let n = logits.len() as i64;
    let k = logits[0].size()[1];
    // In the logits' precision (f32 in training; f64 where tests compare with PyTorch).
    let kind = logits[0].kind();
    let probs: Vec<Tensor> = logits.iter().map(|l| l.softmax(-1, kind)).collect();
    let mean = Tensor::stack(&probs, 0).mean_dim([0].as_slice(), false, kind);
    let entropy = (-(&mean * (&mean + 1e-20).log())).sum_dim_intlist([-1].as_slice(), false, None);
    // Every class but the true one, in order: column c of a row is class c, or c + 1 from the
    // true class on. A gather of fixed shape, where a boolean mask select would read the number
    // of selected entries back from the device (a host sync, and no CUDA graph).
    let idx = all_but(y, k);
    let non_max: Vec<Tensor> = probs.iter().map(|p| p.gather(1, &idx, false)).collect();
    let m = Tensor::stack(&non_max, 1);
    let m = &m / m.norm_scalaropt_dim(2, [-1].as_slice(), true);
    let gram = m.matmul(&m.transpose(1, 2));
    let eye = Tensor::eye(n, (kind, gram.device())).unsqueeze(0);
    let log_det = (gram + eye * det_offset).logdet();
    (entropy.mean(kind), log_det.mean(kind))
}

/// `[B, K-1]` indices of every class but `y`'s, in increasing order.
fn all_but(y: &Tensor, k: i64) -> Tensor {
    let cols = Tensor::arange(k - 1, (Kind::Int64, y.device())).unsqueeze(0);
    &cols + cols.ge_tensor(&y.unsqueeze(1)).to_kind(Kind::Int64)
}

/// ADP training of an ensemble.
#[derive(Debug, Clone)]
pub struct Adp {
    cfg: AdpConfig,
}

impl Adp {
    /// The method with `cfg` (validated).
    pub fn new(cfg: AdpConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(Adp { cfg })
    }
}

impl Method for Adp {
    fn name(&self) -> &'static str {
        "adp"
    }

    /// The adversarial term's random start (ADP+AdvT), when it draws nothing else.
    fn draw(&self, _model: &Model, batch: &Batch, at: StepAt) -> Vec<Tensor> {
        self.cfg
            .adv
            .as_ref()
            .and_then(|a| against_ensemble_start(a, &batch.x, at))
            .into_iter()
            .collect()
    }

    /// Nothing drawn per batch but the adversarial start; the log-determinant's batched LU runs
    /// on the device (whether cuSOLVER's kernels capture is for `eio bench --check` to tell).
    fn graphable(&self) -> bool {
        self.cfg.adv.as_ref().is_none_or(AdvTerm::draws_ahead)
    }

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() < 2 || model.gates() > 0 {
            return Err(Error::config("ADP trains an ensemble of at least 2 plain ResNet-20s"));
        }
        let start = batch.draws_of(self, model, at).pop();
        let xa =
            self.cfg.adv.as_ref().map(|a| against_ensemble(model, a, batch, at, start.as_ref()));
        let route = Route::zeros(0);
        let logits: Vec<Tensor> =
            model.nets.iter().map(|n| n.forward(&batch.x, &route, true)).collect();
        let ce = sum(logits.iter().map(|l| cross_entropy(l, &batch.y)), batch.x.device());
        let (entropy, log_det) = regularisers(&logits, &batch.y, self.cfg.det_offset);
        let mut loss = &ce - &entropy * self.cfg.alpha - &log_det * self.cfg.beta;
        let mut terms =
            vec![("ce", stat(&ce)), ("entropy", stat(&entropy)), ("log_det", stat(&log_det))];
        if let Some(xa) = &xa {
            let adv = summed_ce(model, xa, &batch.y);
            terms.push(("adv", stat(&adv)));
            loss += adv;
        }
        loss.backward();
        let correct = ensemble_correct(&logits, &batch.y);
        Ok(StepStats {
            loss: stat(&loss),
            correct,
            seen: batch.y.size()[0],
            note: String::new(),
            terms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The gather picks what a boolean mask of the non-true classes selects, in its order.
    #[test]
    fn all_but_the_true_class_as_a_mask_would_select() {
        let y = Tensor::from_slice(&[0i64, 9, 4, 4, 7]);
        let p = Tensor::arange(50, (Kind::Float, tch::Device::Cpu)).view([5, 10]);
        let masked = p.masked_select(&y.one_hot(10).eq(0)).view([5, 9]);
        assert!(p.gather(1, &all_but(&y, 10), false).equal(&masked));
    }
}
