/*!
Transferability among sub-models (DVERGE `eval/eval_transferability.py`, Ensemble-in-One Fig. 4):
for the members of an ensemble (or K fixed routes of an RGN), on N test images that every member
classifies correctly, entry (i, j) is the success rate on member j of adversarial examples
crafted on member i (default eps 0.03 and the paper's PGD: 50 steps of eps/5, random start, 5
restarts; any [`crate::attack::AttackConfig`] at unit radius). An image counts as a success for
(i, j) when any restart's example fools member j. The diagonal is the white-box success rate.
An optional extra column judges the whole ensemble.

Each restart r > 0 runs only on the images whose examples from member i have not yet fooled
every judge (the others cannot change any entry).
*/

use std::time::Instant;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tch::Device;

use super::report::{csv_field, Report};
use super::run::{attack_and_judge, clean_correct, key, where_true};
use super::transfer::Named;
use crate::attack::AttackConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::route::distinct_paths;
use crate::model::{Classifier, Model};
use crate::progress::Progress;
use crate::seed::{Seed, Stream};

/// Transferability-matrix settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferabilityConfig {
    /// Radius (default 0.03).
    pub eps: f64,
    /// The attack at unit radius, scaled to `eps`; an image counts for (i, j) when any of its
    /// restarts fools j (default the paper's PGD, [`AttackConfig::paper_whitebox`] at eps 1).
    pub attack: AttackConfig,
    /// Images to use, drawn (seeded) among those every member classifies correctly
    /// (default 1000; fewer when fewer qualify).
    pub images: usize,
    /// Images per batch (default 500).
    pub batch: usize,
}

impl Default for TransferabilityConfig {
    fn default() -> Self {
        TransferabilityConfig {
            eps: 0.03,
            attack: AttackConfig::paper_whitebox(1.0),
            images: 1000,
            batch: 500,
        }
    }
}

impl TransferabilityConfig {
    /// The attack of one restart.
    pub fn restart_attack(&self) -> AttackConfig {
        self.attack.at_eps(self.eps).with_restarts(1)
    }

    /// The number of restarts the protocol runs.
    pub fn runs(&self) -> usize {
        self.attack.restarts()
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.images == 0 {
            return Err(Error::config("batch and images must be at least 1"));
        }
        self.attack.validate()?;
        self.restart_attack().validate()
    }
}

/// Result of [`transferability`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferabilityReport {
    /// Member names (rows: source; columns: judge).
    pub members: Vec<String>,
    /// `success[i][j]`: fraction of images where an example made on member i fools judge j;
    /// judges are the members, then the ensemble when given.
    pub success: Vec<Vec<f64>>,
    /// True when the last column judges the whole ensemble.
    pub ensemble_column: bool,
    /// Images used.
    pub images: usize,
    /// Images of the data that every member classified correctly.
    pub eligible: usize,
    /// Indices (into the given data) of the images used.
    pub index: Vec<usize>,
    /// The settings.
    pub config: TransferabilityConfig,
    /// Master seed.
    pub seed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Report for TransferabilityReport {
    fn to_csv(&self) -> String {
        let mut cols: Vec<String> = self.members.iter().map(|m| csv_field(m)).collect();
        if self.ensemble_column {
            cols.push("ensemble".into());
        }
        let mut s = format!("source,{}\n", cols.join(","));
        for (name, row) in self.members.iter().zip(&self.success) {
            let vals: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            s += &format!("{},{}\n", csv_field(name), vals.join(","));
        }
        s
    }
}

/// The members to compare in `model` (read from the file `name`), each its own plain model: the
/// networks of an ensemble (`member <i>`), or `paths` distinct random paths of an RGN drawn from
/// `seed` (`path <route>`).
pub fn members(
    model: &Model,
    name: &str,
    paths: usize,
    seed: Seed,
) -> Result<Vec<(String, Model)>> {
    if model.gates() > 0 {
        if paths > crate::model::MAX_MEMBERS {
            return Err(Error::config(format!(
                "--paths {paths}: at most {} paths are compared",
                crate::model::MAX_MEMBERS
            )));
        }
        let mut rng = seed.rng(Stream::Route, 0, 0);
        distinct_paths(model.gates(), model.spec.arch.copies, paths, "--paths", &mut rng)?
            .into_iter()
            .map(|r| Ok((format!("path {r}"), model.derive(&r)?)))
            .collect()
    } else if model.nets.len() > 1 {
        (0..model.nets.len()).map(|i| Ok((format!("member {i}"), model.member(i)?))).collect()
    } else {
        Err(Error::config(format!("{name}: transferability needs an ensemble or an RGN")))
    }
}

/// The images of `data` that every one of `members` classifies correctly (the images a
/// transferability matrix is computed on), as indices into `data`, in order.
pub fn eligible(
    members: &[Named],
    data: &Dataset,
    batch: usize,
    device: Device,
) -> Result<Vec<usize>> {
    let (x, y) = data.tensors();
    let mut eligible = vec![true; data.len()];
    for m in members {
        for (e, ok) in eligible.iter_mut().zip(clean_correct(m.target, (&x, &y), batch, device)?) {
            *e &= ok;
        }
    }
    Ok(where_true(&eligible).into_iter().map(|i| i as usize).collect())
}

/// Computes the transferability matrix among `members` on images of `data` (e.g. the test
/// split) that every member classifies correctly; with `ensemble`, adds a column judging it.
/// The image draw uses `seed` (evaluation stream, label `transferability/images`); the random
/// starts of restart `r` on member `i` use the label `transferability/source=<i>/restart=<r>`.
pub fn transferability(
    members: &[Named],
    ensemble: Option<&dyn Classifier>,
    data: &Dataset,
    cfg: &TransferabilityConfig,
    device: Device,
    seed: Seed,
) -> Result<TransferabilityReport> {
    check(members, data, cfg)?;
    let start = Instant::now();
    let index = eligible(members, data, cfg.batch, device)?;
    let mut report = transferability_on(members, ensemble, data, index, cfg, device, seed)?;
    report.seconds = start.elapsed().as_secs_f64(); // the eligibility pass included
    Ok(report)
}

/// The settings and data [`transferability`] can work with.
fn check(members: &[Named], data: &Dataset, cfg: &TransferabilityConfig) -> Result<()> {
    cfg.validate()?;
    crate::validate::check_classes(data)?;
    if members.is_empty() {
        return Err(Error::config("the transferability matrix needs at least one member"));
    }
    Ok(())
}

/// [`transferability`] on the images `eligible` (indices into `data`) that [`eligible`] found,
/// for a caller that looked at them first.
pub fn transferability_on(
    members: &[Named],
    ensemble: Option<&dyn Classifier>,
    data: &Dataset,
    eligible: Vec<usize>,
    cfg: &TransferabilityConfig,
    device: Device,
    seed: Seed,
) -> Result<TransferabilityReport> {
    check(members, data, cfg)?;
    let start = Instant::now();
    if eligible.is_empty() {
        // Every entry would be 0 of 0: a matrix of zeros would read as "nothing transfers".
        return Err(Error::config(format!(
            "no image is eligible for the transferability matrix: none of the {} test images is \
             classified correctly by every member; use more test images",
            data.len()
        )));
    }
    let mut index = eligible;
    let n_eligible = index.len();
    if index.len() > cfg.images {
        index.shuffle(&mut seed.rng(Stream::Eval, key("transferability/images"), 0));
        index.truncate(cfg.images);
        index.sort_unstable();
    }
    let subset = data.select(&index);
    let (x, y) = subset.tensors();
    let n = subset.len();

    let mut judges: Vec<&dyn Classifier> = members.iter().map(|m| m.target).collect();
    if let Some(e) = ensemble {
        judges.push(e);
    }
    let attack = cfg.restart_attack();
    let restarts = cfg.runs();
    let total = (members.len() * restarts * n) as u64;
    let mut progress = Progress::new(total, "transferability");
    let mut pos = 0u64;
    let mut success = Vec::new();
    for (i, m) in members.iter().enumerate() {
        // fooled[j][k]: judge j fooled on image k by some restart so far.
        let mut fooled = vec![vec![false; n]; judges.len()];
        for r in 0..restarts {
            let open: Vec<bool> = (0..n).map(|k| fooled.iter().any(|f| !f[k])).collect();
            let idx = where_true(&open);
            let skipped = (n - idx.len()) as u64;
            let base = pos;
            let label = format!("transferability/source={i}/restart={r}");
            let msg = format!("source {} restart {}/{}", m.name, r + 1, restarts);
            let judged = attack_and_judge(
                &attack,
                m.target,
                &judges,
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
            for (f, ok) in fooled.iter_mut().zip(&judged.correct) {
                for (&k, &c) in idx.iter().zip(ok) {
                    f[k as usize] |= !c;
                }
            }
        }
        success.push(fooled.iter().map(|f| super::aggregate::fraction(f)).collect());
    }
    progress.finish();
    Ok(TransferabilityReport {
        members: members.iter().map(|m| m.name.clone()).collect(),
        success,
        ensemble_column: ensemble.is_some(),
        images: n,
        eligible: n_eligible,
        index,
        config: cfg.clone(),
        seed: seed.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}
