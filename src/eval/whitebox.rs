/*!
White-box robustness (Ensemble-in-One Sec. 4.1, DVERGE `eval/eval_wbox.py`): for every eps,
PGD with `restarts` independent runs (default 50 steps of eps/5 from a uniform random start, 5
restarts, cross-entropy). All-or-nothing: an image is robust only if the target classifies it
correctly clean and under every restart. Each restart runs only on the images still robust
(the others are already counted as broken), which gives the same accuracy as running them all.

Random-route targets are attacked with EOT (`eot` gradient samples per step) and judged with one
random forward per adversarial image.
*/

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::aggregate::fraction;
use super::report::Report;
use super::run::{attack_and_judge, clean_correct, where_true};
use crate::attack::{AttackLoss, PgdConfig};
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

/// White-box protocol settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhiteboxConfig {
    /// Radii in [0,1] pixel units (default 0.01..=0.07 step 0.01).
    pub eps: Vec<f64>,
    /// PGD iterations (default 50).
    pub steps: usize,
    /// Step size as a fraction of eps (default 0.2, i.e. eps/5).
    pub step_ratio: f64,
    /// Independent restarts; robust = correct under all of them (default 5).
    pub restarts: usize,
    /// Uniform random start in the eps ball (default true).
    pub random_start: bool,
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
            steps: 50,
            step_ratio: 0.2,
            restarts: 5,
            random_start: true,
            loss: AttackLoss::CrossEntropy,
            eot: 1,
            batch: 500,
        }
    }
}

impl WhiteboxConfig {
    /// The attack of one restart at `eps`.
    pub fn attack(&self, eps: f64) -> PgdConfig {
        single_run(eps, self.step_ratio, self.steps, self.random_start, self.loss, self.eot)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.eps.is_empty() {
            return Err(Error::config("white-box evaluation needs at least one eps"));
        }
        if self.restarts == 0 || self.batch == 0 {
            return Err(Error::config("white-box restarts and batch must be at least 1"));
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
    /// The settings.
    pub config: WhiteboxConfig,
    /// Master seed of the attacks' random starts.
    pub seed: u64,
    /// Wall-clock seconds in all.
    pub seconds: f64,
}

impl Report for WhiteboxReport {
    fn to_csv(&self) -> String {
        let mut s = String::from(
            "eps,images,clean_accuracy,robust_accuracy,restarts,steps,step_ratio,loss,seconds\n",
        );
        for r in &self.rows {
            s += &format!(
                "{},{},{:.6},{:.6},{},{},{},{},{:.1}\n",
                r.eps,
                self.images,
                self.clean_accuracy,
                r.robust_accuracy,
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
    let total = (cfg.eps.len() * cfg.restarts * n) as u64;
    let mut progress = Progress::new(total, "white-box");
    let mut pos = 0u64;
    let mut rows = Vec::new();
    for &eps in &cfg.eps {
        let t0 = Instant::now();
        let attack = cfg.attack(eps);
        let mut robust = clean.clone();
        let mut after = Vec::new();
        for r in 0..cfg.restarts {
            let idx = where_true(&robust);
            let label = format!("whitebox/eps={eps}/restart={r}");
            let skipped = (n - idx.len()) as u64;
            let acc_before = fraction(&robust);
            let msg = format!(
                "eps {eps} restart {}/{} acc {:.1}%",
                r + 1,
                cfg.restarts,
                100.0 * acc_before
            );
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
        config: cfg.clone(),
        seed: seed.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}
