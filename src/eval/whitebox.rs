/*!
White-box robustness (Ensemble-in-One Sec. 4.1, DVERGE `eval/eval_wbox.py`): for every eps,
an attack with restarts (default the paper's PGD: 50 steps of eps/5 from a uniform random start,
5 restarts, cross-entropy). All-or-nothing: an image is robust only if the target classifies it
correctly clean and under every restart.

The attack is an [`AttackConfig`] at unit radius ([`WhiteboxConfig::attack`]), scaled to each
eps. The protocol runs the attack's restarts itself, one seeded run each, so that it can report
the accuracy after every restart; each restart runs only on the images still robust (the
others are already counted as broken), which gives the same accuracy as running them all. FGSM
has no random start and runs once. [`named_attack`] gives the attacks the command line offers
by name.

[`whitebox_resumable`] keeps its progress in a state file after every restart, so a long
evaluation (hours on a CPU) that is stopped continues where it was: each restart draws from its
own labelled seed and attacks the images still robust, so the result is the same as an
uninterrupted run's.

Random-route targets are attacked with EOT (the attack's `eot` gradient samples per step) and
judged with one random forward per adversarial image.
*/

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use super::aggregate::fraction;
use super::report::{csv_field, Report};
use super::run::{attack_and_judge, where_true};
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

/// The names [`named_attack`] knows, the default first.
pub const ATTACK_NAMES: [&str; 4] = ["pgd", "fgsm", "apgd", "mpgd"];

/// A white-box attack by name, at unit radius with the protocol's defaults (50 steps, steps of
/// 0.2*eps, uniform random start, 5 restarts, cross-entropy, where they apply):
///
/// - `pgd`: the paper's PGD ([`AttackConfig::paper_whitebox`]);
/// - `mpgd`: momentum PGD (MI-FGSM, Dong et al.), as PGD with momentum decay 1;
/// - `apgd`: APGD (Croce & Hein), AutoAttack's step-size schedule from a random point;
/// - `fgsm`: FGSM (Goodfellow et al.), one sign step of eps from the clean image.
pub fn named_attack(name: &str) -> Result<AttackConfig> {
    let pgd = PgdConfig::whitebox(1.0);
    let name = name.trim().to_ascii_lowercase();
    Ok(match name.as_str() {
        "pgd" => AttackConfig::Pgd(pgd),
        "mpgd" => AttackConfig::Pgd(PgdConfig { momentum: Some(1.0), ..pgd }),
        "apgd" => AttackConfig::Apgd(ApgdConfig {
            steps: pgd.steps,
            restarts: pgd.restarts,
            ..ApgdConfig::new(1.0, AttackLoss::CrossEntropy)
        }),
        "fgsm" => AttackConfig::Fgsm(FgsmConfig::new(1.0)),
        _ => {
            return Err(Error::config(format!(
                "unknown white-box attack '{name}': expected {}",
                ATTACK_NAMES.join(", ")
            )))
        }
    })
}

/// White-box protocol settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WhiteboxConfig {
    /// Radii in [0, 1] pixel units (default 0.01..=0.07 step 0.01).
    pub eps: Vec<f64>,
    /// The attack at unit radius, scaled to each eps; robust = correct under all its restarts
    /// (default the paper's PGD, [`AttackConfig::paper_whitebox`] at eps 1).
    pub attack: AttackConfig,
    /// Images per batch (default 500).
    pub batch: usize,
}

impl Default for WhiteboxConfig {
    fn default() -> Self {
        WhiteboxConfig { eps: paper_eps(), attack: AttackConfig::paper_whitebox(1.0), batch: 500 }
    }
}

impl WhiteboxConfig {
    /// The attack of one restart at `eps` (itself without restarts).
    pub fn restart_attack(&self, eps: f64) -> AttackConfig {
        self.attack.at_eps(eps).with_restarts(1)
    }

    /// The number of restarts the protocol runs (1 for FGSM, which has no random start; against
    /// a random-path RGN raise `eot` instead).
    pub fn runs(&self) -> usize {
        self.attack.restarts()
    }

    /// A one-line summary, e.g. `PGD-50, step 0.2*eps, random start, 5 restart(s), loss ce`.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} restart(s), loss {}",
            self.attack.describe(),
            self.runs(),
            self.attack.loss()
        )
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.eps.is_empty() {
            return Err(Error::config("white-box evaluation needs at least one eps"));
        }
        if self.batch == 0 {
            return Err(Error::config("white-box batch must be at least 1"));
        }
        self.attack.validate()?;
        for &eps in &self.eps {
            self.restart_attack(eps).validate()?;
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
    /// The attack's name ([`AttackConfig::name`]: `pgd`, `mpgd`, `apgd`, `fgsm`, ...).
    pub attack: String,
    /// Restarts run (1 for FGSM).
    pub restarts: usize,
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
            "eps,images,clean_accuracy,robust_accuracy,attack,restarts,steps,step_ratio,loss,seconds\n",
        );
        let attack = &self.config.attack;
        let ratio = attack.step_ratio().map(|r| r.to_string()).unwrap_or_default();
        for r in &self.rows {
            s += &format!(
                "{},{},{:.6},{:.6},{},{},{},{},{},{:.1}\n",
                r.eps,
                self.images,
                self.clean_accuracy,
                r.robust_accuracy,
                self.attack,
                self.restarts,
                attack.steps(),
                ratio,
                csv_field(&attack.loss().to_string()),
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
    Ok(run(target, data, cfg, device, seed, false, None)?.0)
}

/// [`whitebox`] with per-image results, that keeps its progress in `state` (JSON, written
/// atomically after every restart) and, when `state` holds the progress of the same protocol on
/// the same target ([`Classifier::identity`]: model and route), images and clean predictions,
/// continues from it (else it says why not and starts over); the file is removed when the run
/// ends. The result is the same as an uninterrupted run's, but for its `seconds` (the runs' wall
/// time, summed). A random-route target draws its routes from a stream a stop would lose: it
/// runs from the start, without a state file.
pub fn whitebox_resumable(
    target: &dyn Classifier,
    data: &Dataset,
    cfg: &WhiteboxConfig,
    device: Device,
    seed: Seed,
    state: &Path,
) -> Result<(WhiteboxReport, WhiteboxDetail)> {
    if target.is_random() {
        return run(target, data, cfg, device, seed, false, None);
    }
    let done = run(target, data, cfg, device, seed, false, Some(state))?;
    if state.exists() {
        std::fs::remove_file(state).map_err(|e| Error::io(state, e))?;
    }
    Ok(done)
}

/// The progress of a [`whitebox_resumable`] run: what it ran on, and what it found so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct WhiteboxState {
    /// The target's [`Classifier::identity`] (model and routing); absent in states written
    /// before it was kept, which a model's run therefore does not continue.
    #[serde(default)]
    model: Option<String>,
    config: WhiteboxConfig,
    seed: u64,
    labels: Vec<i64>,
    /// Clean predictions: a different model (or data) shows here.
    predictions: Vec<i64>,
    /// Finished eps, in order: the row and which images stayed robust.
    done: Vec<(WhiteboxRow, Vec<bool>)>,
    /// The eps under way (the next after `done`), when one restart or more of it ran.
    current: Option<Current>,
    /// Wall-clock seconds spent so far.
    seconds: f64,
}

/// An eps part-way through its restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Current {
    /// Robust after the restarts done.
    robust: Vec<bool>,
    /// Accuracy after each restart done.
    after: Vec<f64>,
    /// Wall-clock seconds spent on this eps.
    seconds: f64,
}

/// Per-image results of the white-box protocol.
#[derive(Debug)]
pub struct WhiteboxDetail {
    /// True labels.
    pub labels: Vec<i64>,
    /// Clean predictions.
    pub predictions: Vec<i64>,
    /// `robust[k][i]`: image `i` is classified correctly clean and under every restart at
    /// `eps[k]`.
    pub robust: Vec<Vec<bool>>,
    /// Per eps, when asked for: each image's adversarial example (`[N,3,32,32]`, CPU): the one
    /// of the restart that fooled the target, else the last restart's; the clean image for
    /// images misclassified clean (they are not attacked).
    pub adversarial: Vec<Tensor>,
}

impl WhiteboxDetail {
    /// One CSV row per image: `index,label,prediction,clean_correct,robust_eps<e>...`, with
    /// `index` each image's index in its source split.
    pub fn to_csv(&self, eps: &[f64], index: &[usize]) -> String {
        let mut s = String::from("index,label,prediction,clean_correct");
        for e in eps {
            s += &format!(",robust_eps{e}");
        }
        s.push('\n');
        for (i, (l, p)) in self.labels.iter().zip(&self.predictions).enumerate() {
            s += &format!("{},{l},{p},{}", index[i], u8::from(l == p));
            for r in &self.robust {
                s += &format!(",{}", u8::from(r[i]));
            }
            s.push('\n');
        }
        s
    }
}

/// [`whitebox`], with per-image results and, with `keep_adv`, the adversarial examples.
pub fn whitebox_detailed(
    target: &dyn Classifier,
    data: &Dataset,
    cfg: &WhiteboxConfig,
    device: Device,
    seed: Seed,
    keep_adv: bool,
) -> Result<(WhiteboxReport, WhiteboxDetail)> {
    run(target, data, cfg, device, seed, keep_adv, None)
}

/// The protocol, with per-image results, adversarial examples (`keep_adv`) or a state file
/// (`state`; not with `keep_adv`, whose examples it does not keep).
fn run(
    target: &dyn Classifier,
    data: &Dataset,
    cfg: &WhiteboxConfig,
    device: Device,
    seed: Seed,
    keep_adv: bool,
    state_file: Option<&Path>,
) -> Result<(WhiteboxReport, WhiteboxDetail)> {
    cfg.validate()?;
    debug_assert!(!(keep_adv && state_file.is_some()));
    crate::validate::check_classes(data)?;
    let start = Instant::now();
    let (x, y) = data.tensors();
    let n = data.len();
    let predictions = Vec::<i64>::try_from(super::predict(target, &x, cfg.batch, device))?;
    let labels = Vec::<i64>::try_from(&y)?;
    let clean: Vec<bool> = predictions.iter().zip(&labels).map(|(p, l)| p == l).collect();
    let model = state_file.and_then(|_| target.identity());
    let fresh = WhiteboxState {
        model: model.clone(),
        config: cfg.clone(),
        seed: seed.0,
        labels: labels.clone(),
        predictions: predictions.clone(),
        done: Vec::new(),
        current: None,
        seconds: 0.0,
    };
    let mut state = match state_file.filter(|f| f.exists()) {
        Some(f) => {
            let saved = crate::fsx::read_json::<WhiteboxState>(f);
            // Why the saved progress is not this run's, if it is not: the first difference.
            let why = match &saved {
                Err(_) => None,
                Ok(s) if s.model != model => Some("another model or route"),
                Ok(s) if s.config != *cfg => Some("other settings"),
                Ok(s) if s.seed != seed.0 => Some("another seed"),
                Ok(s) if s.labels != labels => Some("other images"),
                Ok(s) if s.predictions != predictions => Some("other clean predictions"),
                Ok(_) => None,
            };
            match (saved, why) {
                (Ok(s), None) => {
                    eprintln!(
                        "white-box: continuing from {} ({} of {} eps done)",
                        f.display(),
                        s.done.len(),
                        cfg.eps.len()
                    );
                    s
                }
                (Ok(_), Some(why)) => {
                    eprintln!(
                        "warning: {} is the state of another white-box run ({why}); starting over",
                        f.display()
                    );
                    fresh
                }
                (Err(e), _) => {
                    eprintln!("warning: {e}; starting over");
                    fresh
                }
            }
        }
        None => fresh,
    };
    let mut detail =
        WhiteboxDetail { labels, predictions, robust: Vec::new(), adversarial: Vec::new() };
    let runs = cfg.runs();
    let total = (cfg.eps.len() * runs * n) as u64;
    let mut progress = Progress::new(total, "white-box");
    let mut pos = 0u64;
    let mut rows = Vec::new();
    for (row, robust) in &state.done {
        rows.push(row.clone());
        detail.robust.push(robust.clone());
        pos += (runs * n) as u64;
    }
    let previous = state.seconds;
    for &eps in &cfg.eps[rows.len()..] {
        let t0 = Instant::now();
        let attack = cfg.restart_attack(eps);
        let (mut robust, mut after, spent) = match state.current.take() {
            Some(c) => (c.robust, c.after, c.seconds),
            None => (clean.clone(), Vec::new(), 0.0),
        };
        pos += (after.len() * n) as u64;
        let mut adv_all = keep_adv.then(|| x.copy());
        for r in after.len()..runs {
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
                keep_adv,
                |k| {
                    pos += k as u64;
                    progress.update(pos + skipped, &msg);
                },
            )?;
            pos = base + n as u64;
            if let (Some(all), Some(adv)) = (&mut adv_all, &judged.adv) {
                if !idx.is_empty() {
                    let _ = all.index_copy_(0, &Tensor::from_slice(&idx), adv);
                }
            }
            for (&i, &ok) in idx.iter().zip(&judged.correct[0]) {
                robust[i as usize] &= ok;
            }
            after.push(fraction(&robust));
            if let Some(f) = state_file {
                if r + 1 < runs {
                    state.current = Some(Current {
                        robust: robust.clone(),
                        after: after.clone(),
                        seconds: spent + t0.elapsed().as_secs_f64(),
                    });
                    state.seconds = previous + start.elapsed().as_secs_f64();
                    crate::fsx::write_json(f, &state)?;
                }
            }
        }
        let robust_count = robust.iter().filter(|&&b| b).count();
        detail.adversarial.extend(adv_all);
        detail.robust.push(robust.clone());
        let row = WhiteboxRow {
            eps,
            robust_accuracy: fraction(&robust),
            robust: robust_count,
            accuracy_after_restart: after,
            seconds: spent + t0.elapsed().as_secs_f64(),
        };
        if let Some(f) = state_file {
            state.current = None;
            state.done.push((row.clone(), robust));
            state.seconds = previous + start.elapsed().as_secs_f64();
            crate::fsx::write_json(f, &state)?;
        }
        rows.push(row);
    }
    progress.finish();
    let report = WhiteboxReport {
        images: n,
        clean_accuracy: fraction(&clean),
        rows,
        attack: cfg.attack.name().into(),
        restarts: runs,
        config: cfg.clone(),
        seed: seed.0,
        seconds: previous + start.elapsed().as_secs_f64(),
    };
    Ok((report, detail))
}
