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

use super::adv::{against_ensemble, AdvTerm};
use super::methods::{ensemble_correct, sum, summed_ce};
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
    let b = y.size()[0];
    let probs: Vec<Tensor> = logits.iter().map(|l| l.softmax(-1, Kind::Float)).collect();
    let mean = Tensor::stack(&probs, 0).mean_dim([0].as_slice(), false, Kind::Float);
    let entropy = (-(&mean * (&mean + 1e-20).log())).sum_dim_intlist([-1].as_slice(), false, None);
    let keep = y.one_hot(k).eq(0);
    let non_max: Vec<Tensor> =
        probs.iter().map(|p| p.masked_select(&keep).view([b, k - 1])).collect();
    let m = Tensor::stack(&non_max, 1);
    let m = &m / m.norm_scalaropt_dim(2, [-1].as_slice(), true);
    let gram = m.matmul(&m.transpose(1, 2));
    let eye = Tensor::eye(n, (Kind::Float, gram.device())).unsqueeze(0);
    let log_det = (gram + eye * det_offset).logdet();
    (entropy.mean(Kind::Float), log_det.mean(Kind::Float))
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

    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats> {
        if model.nets.len() < 2 || model.gates() > 0 {
            return Err(Error::config("ADP trains an ensemble of at least 2 plain ResNet-20s"));
        }
        let xa = self.cfg.adv.as_ref().map(|a| against_ensemble(model, a, batch, at, None));
        let route = Route::zeros(0);
        let logits: Vec<Tensor> =
            model.nets.iter().map(|n| n.forward(&batch.x, &route, true)).collect();
        let ce = sum(logits.iter().map(|l| l.cross_entropy_for_logits(&batch.y)), batch.x.device());
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
