/*!
White-box robustness (Ensemble-in-One Sec. 4.1, DVERGE `eval/eval_wbox.py`): for every eps,
an attack with `restarts` independent runs (default PGD, 50 steps of eps/5 from a uniform random
start, 5 restarts, cross-entropy). All-or-nothing: an image is robust only if the target
classifies it correctly clean and under every restart. Each restart runs only on the images
still robust (the others are already counted as broken), which gives the same accuracy as
running them all.

The attack ([`WhiteboxAttack`], field `attack`) is PGD (default), momentum PGD (MI-FGSM), APGD
or FGSM; [`WhiteboxConfig::attack`] builds the attack of one restart.

Random-route targets are attacked with EOT (`eot` gradient samples per step) and judged with one
random forward per adversarial image.
*/

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::aggregate::fraction;
use super::report::Report;
use super::run::{attack_and_judge, clean_correct, where_true};
use crate::attack::{ApgdConfig, AttackConfig, AttackLoss, FgsmConfig, PgdConfig};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Classifier;
use crate::progress::Progress;
use crate::seed::Seed;

/// The paper's eps list: 0.01, 0.02, ..., 0.07.
pub fn paper_eps() -> Vec<f64> {
    (1..=7).map(|i| i as f64 / 100.0).collect()
}

/// One plain PGD run (no restarts, momentum, diversity or SGM) with step `eps * step_ratio`:
/// the attack the white-box and transferability protocols repeat once per restart.
pub(crate) fn single_run(
    eps: f64,
    step_ratio: f64,
    steps: usize,
    random_start: bool,
    loss: AttackLoss,
    eot: usize,
) -> PgdConfig {
    PgdConfig {
        eps,
        step_size: eps * step_ratio,
        steps,
        random_start,
        restarts: 1,
        loss,
        momentum: None,
        diversity: None,
        sgm: None,
        eot,
    }
}

/// The attack the white-box protocol repeats once per restart.
///
/// Serialises as a lowercase string: `pgd`, `fgsm`, `apgd` or `mpgd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhiteboxAttack {
    /// PGD (Madry et al.): `steps` sign steps of `step_ratio * eps`, optional random start.
    #[default]
    Pgd,
    /// FGSM (Goodfellow et al.): one sign step of size eps from the clean image. It has no
    /// random start, so the protocol runs it once whatever `restarts` says.
    Fgsm,
    /// APGD (Croce & Hein, AutoAttack's step-size schedule): `steps` iterations from a random
    /// point of the eps ball, with the config's loss (`ce` for APGD-CE, `dlr` for APGD-DLR).
    Apgd,
    /// Momentum PGD (MI-FGSM, Dong et al.): as PGD, stepping along the sign of a momentum with
    /// decay `momentum`.
    Mpgd,
}

impl WhiteboxAttack {
    /// Every attack, the default first.
    pub const ALL: [WhiteboxAttack; 4] =
        [WhiteboxAttack::Pgd, WhiteboxAttack::Fgsm, WhiteboxAttack::Apgd, WhiteboxAttack::Mpgd];

    /// The short name (`pgd`, `fgsm`, `apgd`, `mpgd`), as in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            WhiteboxAttack::Pgd => "pgd",
            WhiteboxAttack::Fgsm => "fgsm",
            WhiteboxAttack::Apgd => "apgd",
            WhiteboxAttack::Mpgd => "mpgd",
        }
    }
}

impl fmt::Display for WhiteboxAttack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WhiteboxAttack {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
            Error::config(format!("unknown white-box attack '{s}': expected {}", names.join(", ")))
        })
    }
}

/// White-box protocol settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhiteboxConfig {
    /// Radii in [0,1] pixel units (default 0.01..=0.07 step 0.01).
    pub eps: Vec<f64>,
    /// The attack of each restart: `pgd` (default), `fgsm`, `apgd` or `mpgd`.
    pub attack: WhiteboxAttack,
    /// Iterations of pgd, mpgd and apgd (default 50; FGSM takes one step).
    pub steps: usize,
    /// Step size of pgd and mpgd as a fraction of eps (default 0.2, i.e. eps/5; APGD adapts
    /// its own step from 2 eps, FGSM steps eps).
    pub step_ratio: f64,
    /// Independent restarts; robust = correct under all of them (default 5; FGSM runs once).
    pub restarts: usize,
    /// Uniform random start in the eps ball for pgd and mpgd (default true; APGD always starts
    /// at a random point, FGSM never).
    pub random_start: bool,
    /// Momentum decay mu of mpgd (default 1.0, as MI-FGSM); ignored by the other attacks.
    pub momentum: f64,
    /// Attack loss (default `ce`; the paper's option: `cw`, confidence 0.1).
    pub loss: AttackLoss,
    /// Gradient samples per step for a random-route target (default 1).
    pub eot: usize,
    /// Images per batch (default 500).
    pub batch: usize,
}

impl Default for WhiteboxConfig {
    fn default() -> Self {
        WhiteboxConfig {
            eps: paper_eps(),
            attack: WhiteboxAttack::Pgd,
            steps: 50,
            step_ratio: 0.2,
            restarts: 5,
            random_start: true,
            momentum: 1.0,
            loss: AttackLoss::CrossEntropy,
            eot: 1,
            batch: 500,
        }
    }
}

impl WhiteboxConfig {
    /// The attack of one restart at `eps` (itself without restarts).
    pub fn attack(&self, eps: f64) -> AttackConfig {
        let pgd =
            || single_run(eps, self.step_ratio, self.steps, self.random_start, self.loss, self.eot);
        match self.attack {
            WhiteboxAttack::Pgd => AttackConfig::Pgd(pgd()),
            WhiteboxAttack::Mpgd => {
                AttackConfig::Pgd(PgdConfig { momentum: Some(self.momentum), ..pgd() })
            }
            WhiteboxAttack::Fgsm => {
                AttackConfig::Fgsm(FgsmConfig { eps, loss: self.loss, eot: self.eot })
            }
            WhiteboxAttack::Apgd => AttackConfig::Apgd(ApgdConfig {
                steps: self.steps,
                restarts: 1,
                eot: self.eot,
                ..ApgdConfig::new(eps, self.loss)
            }),
        }
    }

    /// The number of restarts the protocol runs: `restarts`, or 1 for FGSM (it has no random
    /// start; against a random-path RGN raise `eot` instead).
    pub fn runs(&self) -> usize {
        match self.attack {
            WhiteboxAttack::Fgsm => 1,
            _ => self.restarts,
        }
    }

    /// A one-line summary, e.g. `PGD-50, step 0.2*eps, random start, 5 restart(s), loss ce`.
    pub fn describe(&self) -> String {
        let start = if self.random_start { "random start" } else { "start at x" };
        let attack = match self.attack {
            WhiteboxAttack::Pgd => {
                format!("PGD-{}, step {}*eps, {start}", self.steps, self.step_ratio)
            }
            WhiteboxAttack::Mpgd => format!(
                "momentum PGD (MI-FGSM, mu {})-{}, step {}*eps, {start}",
                self.momentum, self.steps, self.step_ratio
            ),
            WhiteboxAttack::Apgd => format!("APGD-{}", self.steps),
            WhiteboxAttack::Fgsm => "FGSM".into(),
        };
        format!("{attack}, {} restart(s), loss {}", self.runs(), self.loss)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.eps.is_empty() {
            return Err(Error::config("white-box evaluation needs at least one eps"));
        }
        if self.restarts == 0 || self.batch == 0 {
            return Err(Error::config("white-box restarts and batch must be at least 1"));
        }
        if !(self.momentum.is_finite() && self.momentum >= 0.0) {
            return Err(Error::config(format!(
                "momentum decay must be >= 0, got {}",
                self.momentum
            )));
        }
        for &eps in &self.eps {
            self.attack(eps).validate()?;
        }
        Ok(())
    }
}

/// Robust accuracy at one eps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhiteboxRow {
    /// Radius.
    pub eps: f64,
    /// Fraction of images correct clean and under every restart.
    pub robust_accuracy: f64,
    /// Number of such images.
    pub robust: usize,
    /// Robust accuracy after the first 1, 2, ..., `restarts` restarts.
    pub accuracy_after_restart: Vec<f64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Result of [`whitebox`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhiteboxReport {
    /// Number of images evaluated.
    pub images: usize,
    /// Clean accuracy.
    pub clean_accuracy: f64,
    /// One row per eps.
    pub rows: Vec<WhiteboxRow>,
    /// The settings (`restarts` as run: 1 for FGSM).
    pub config: WhiteboxConfig,
    /// Master seed of the attacks' random starts.
    pub seed: u64,
    /// Wall-clock seconds in all.
    pub seconds: f64,
}

impl Report for WhiteboxReport {
    fn to_csv(&self) -> String {
        let mut s = String::from(
            "eps,images,clean_accuracy,robust_accuracy,attack,restarts,steps,step_ratio,loss,seconds\n",
        );
        for r in &self.rows {
            s += &format!(
                "{},{},{:.6},{:.6},{},{},{},{},{},{:.1}\n",
                r.eps,
                self.images,
                self.clean_accuracy,
                r.robust_accuracy,
                self.config.attack,
                self.config.restarts,
                self.config.steps,
                self.config.step_ratio,
                self.config.loss,
                r.seconds
            );
        }
        s
    }
}

/// Runs the white-box protocol on every image of `data` (the caller picks the seeded subset,
/// e.g. `Dataset::random_subset(1000, seed)`), on `device`. The random starts of restart `r` at
/// eps `e`, batch `b` come from `seed` with the label `whitebox/eps=<e>/restart=<r>` (see
/// [`crate::attack`] for how attacks draw random numbers).
pub fn whitebox(
    target: &dyn Classifier,
    data: &Dataset,
    cfg: &WhiteboxConfig,
    device: Device,
    seed: Seed,
) -> Result<WhiteboxReport> {
    cfg.validate()?;
    let start = Instant::now();
    let (x, y) = data.tensors();
    let n = data.len();
    let clean = clean_correct(target, (&x, &y), cfg.batch, device)?;
    let runs = cfg.runs();
    let total = (cfg.eps.len() * runs * n) as u64;
    let mut progress = Progress::new(total, "white-box");
    let mut pos = 0u64;
    let mut rows = Vec::new();
    for &eps in &cfg.eps {
        let t0 = Instant::now();
        let attack = cfg.attack(eps);
        let mut robust = clean.clone();
        let mut after = Vec::new();
        for r in 0..runs {
            let idx = where_true(&robust);
            let label = format!("whitebox/eps={eps}/restart={r}");
            let skipped = (n - idx.len()) as u64;
            let acc_before = fraction(&robust);
            let msg =
                format!("eps {eps} restart {}/{} acc {:.1}%", r + 1, runs, 100.0 * acc_before);
            let base = pos;
            let judged = attack_and_judge(
                &attack,
                target,
                &[target],
                (&x, &y),
                &idx,
                cfg.batch,
                device,
                (seed, &label),
                false,
                |k| {
                    pos += k as u64;
                    progress.update(pos + skipped, &msg);
                },
            )?;
            pos = base + n as u64;
            for (&i, &ok) in idx.iter().zip(&judged.correct[0]) {
                robust[i as usize] &= ok;
            }
            after.push(fraction(&robust));
        }
        let robust_count = robust.iter().filter(|&&b| b).count();
        rows.push(WhiteboxRow {
            eps,
            robust_accuracy: fraction(&robust),
            robust: robust_count,
            accuracy_after_restart: after,
            seconds: t0.elapsed().as_secs_f64(),
        });
    }
    progress.finish();
    Ok(WhiteboxReport {
        images: n,
        clean_accuracy: fraction(&clean),
        rows,
        config: WhiteboxConfig { restarts: runs, ..cfg.clone() },
        seed: seed.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}
