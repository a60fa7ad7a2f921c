/*!
Attack losses: per-sample objectives that an untargeted attack maximises.

- Cross-entropy (`ce`): `-log softmax(z)_y`.
- Carlini-Wagner margin loss with confidence kappa (`cw`, `cw:<kappa>`; Carlini & Wagner,
  "Towards Evaluating the Robustness of Neural Networks", arXiv:1608.04644, objective f6):
  `-max(z_y - max_{i != y} z_i + kappa, 0)`. It is 0 (and flat) once the best wrong logit beats
  the true one by kappa, as in the DVERGE evaluation code (`CarliniWagnerLoss` in
  `eval/eval_wbox.py` of zjysteven/DVERGE, which takes the max over the wrong classes).
- Difference of logits ratio (`dlr`; Croce & Hein, "Reliable evaluation of adversarial
  robustness with an ensemble of diverse parameter-free attacks", arXiv:2003.01690):
  `-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)` with `z_pi` the sorted logits; needs at
  least 3 classes.
*/

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The CW confidence used by the paper's protocols.
pub const DEFAULT_CW_KAPPA: f64 = 0.1;

/// A per-sample loss that an untargeted attack maximises.
///
/// Serialises as a string: `ce`, `cw` (kappa 0.1), `cw:<kappa>` or `dlr`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum AttackLoss {
    /// Cross-entropy of the true label.
    #[default]
    CrossEntropy,
    /// Carlini-Wagner margin loss with confidence `kappa`.
    Cw {
        /// Confidence margin (>= 0).
        kappa: f64,
    },
    /// Difference of logits ratio (APGD-DLR); scale invariant.
    Dlr,
}

impl AttackLoss {
    /// The CW loss with the paper's confidence (0.1).
    pub fn cw() -> Self {
        AttackLoss::Cw { kappa: DEFAULT_CW_KAPPA }
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        match self {
            AttackLoss::Cw { kappa } if !(kappa.is_finite() && *kappa >= 0.0) => {
                Err(Error::config(format!("CW confidence must be >= 0, got {kappa}")))
            }
            _ => Ok(()),
        }
    }

    /// Per-sample loss, to be maximised.
    ///
    /// # Shapes
    /// `logits`: `[B, C]`, `y`: `[B]` (i64) -> `[B]` (the kind of `logits`).
    pub fn per_sample(&self, logits: &Tensor, y: &Tensor) -> Tensor {
        let kind = logits.kind();
        let yi = y.unsqueeze(1);
        let true_logit = || logits.gather(1, &yi, false).squeeze_dim(1);
        let best_wrong = || {
            let mask = y.one_hot(logits.size()[1]).to_kind(Kind::Bool);
            logits.masked_fill(&mask, f64::NEG_INFINITY).amax([1].as_slice(), false)
        };
        match *self {
            AttackLoss::CrossEntropy => {
                -logits.log_softmax(-1, kind).gather(1, &yi, false).squeeze_dim(1)
            }
            AttackLoss::Cw { kappa } => -(true_logit() - best_wrong() + kappa).relu(),
            AttackLoss::Dlr => {
                let (sorted, _) = logits.sort(1, true);
                let top = sorted.select(1, 0);
                let third = sorted.select(1, 2);
                -(true_logit() - best_wrong()) / (top - third + 1e-12)
            }
        }
    }

    /// Short name used in file metadata and reports (`ce`, `cw`, `cw:0.5`, `dlr`).
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AttackLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttackLoss::CrossEntropy => f.write_str("ce"),
            AttackLoss::Cw { kappa } if *kappa == DEFAULT_CW_KAPPA => f.write_str("cw"),
            AttackLoss::Cw { kappa } => write!(f, "cw:{kappa}"),
            AttackLoss::Dlr => f.write_str("dlr"),
        }
    }
}

impl FromStr for AttackLoss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let loss = match s.trim().to_ascii_lowercase().as_str() {
            "ce" | "xent" | "cross-entropy" | "cross_entropy" => AttackLoss::CrossEntropy,
            "cw" => AttackLoss::cw(),
            "dlr" => AttackLoss::Dlr,
            other => match other.strip_prefix("cw:").map(str::parse::<f64>) {
                Some(Ok(kappa)) => AttackLoss::Cw { kappa },
                _ => {
                    return Err(Error::config(format!(
                        "unknown attack loss '{s}': expected ce, cw, cw:<kappa> or dlr"
                    )))
                }
            },
        };
        loss.validate()?;
        Ok(loss)
    }
}

impl TryFrom<String> for AttackLoss {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<AttackLoss> for String {
    fn from(l: AttackLoss) -> String {
        l.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> (Tensor, Tensor) {
        let z = Tensor::from_slice(&[3.0f64, 1.0, 0.5, 0.0, 2.0, 2.5]).view([2, 3]);
        (z, Tensor::from_slice(&[0i64, 1]))
    }

    #[test]
    fn losses_by_hand() {
        let (z, y) = table();
        let ce = Vec::<f64>::try_from(AttackLoss::CrossEntropy.per_sample(&z, &y)).unwrap();
        let lse0 = (3f64.exp() + 1f64.exp() + 0.5f64.exp()).ln();
        let lse1 = (1.0f64 + 2f64.exp() + 2.5f64.exp()).ln();
        assert!((ce[0] - (lse0 - 3.0)).abs() < 1e-12);
        assert!((ce[1] - (lse1 - 2.0)).abs() < 1e-12);
        // CW: sample 0 margin 3-1 = 2 -> -(2+0.1); sample 1 margin 2-2.5 = -0.5 -> 0.
        let cw = Vec::<f64>::try_from(AttackLoss::cw().per_sample(&z, &y)).unwrap();
        assert!((cw[0] + 2.1).abs() < 1e-12 && cw[1] == 0.0);
        let cw = Vec::<f64>::try_from(AttackLoss::Cw { kappa: 1.0 }.per_sample(&z, &y)).unwrap();
        assert!((cw[1] + 0.5).abs() < 1e-12);
        // DLR: sample 0: -(3-1)/(3-0.5); sample 1: -(2-2.5)/(2.5-0).
        let dlr = Vec::<f64>::try_from(AttackLoss::Dlr.per_sample(&z, &y)).unwrap();
        assert!((dlr[0] + 2.0 / 2.5).abs() < 1e-9 && (dlr[1] - 0.5 / 2.5).abs() < 1e-9);
    }

    #[test]
    fn parse_and_print() {
        for s in ["ce", "cw", "cw:0.5", "dlr"] {
            assert_eq!(s.parse::<AttackLoss>().unwrap().to_string(), s);
        }
        assert_eq!("cw".parse::<AttackLoss>().unwrap(), AttackLoss::Cw { kappa: 0.1 });
        assert!("cw:-1".parse::<AttackLoss>().is_err());
        assert!("hinge".parse::<AttackLoss>().is_err());
        let j = serde_json::to_string(&AttackLoss::cw()).unwrap();
        assert_eq!(j, "\"cw\"");
        assert_eq!(serde_json::from_str::<AttackLoss>(&j).unwrap(), AttackLoss::cw());
    }
}
