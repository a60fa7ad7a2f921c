/*!
Deriving plain ResNet-20s from an RGN (`eio derive`): choosing the paths (a given one, a random
one, K distinct random ones, or the best of K candidates by a screening attack) and writing the
derived model, a single ResNet-20 or an ensemble of them, with its provenance.
*/

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::attack::AttackConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::whitebox::{whitebox, WhiteboxConfig};
use crate::model::io::TensorFile;
use crate::model::route::distinct_paths;
use crate::model::{Model, Route, Routing, Target};
use crate::seed::{Seed, Stream};

/// Which paths of an RGN to derive.
#[derive(Debug, Clone, PartialEq)]
pub enum PathChoice {
    /// The all-zero path.
    Zeros,
    /// This path.
    Given(Route),
    /// One random path.
    Random,
    /// K distinct random paths (an ensemble when K > 1).
    Distinct(usize),
    /// The `keep` best of `candidates` distinct random paths by [`Screening`] accuracy (ties:
    /// clean accuracy, then candidate order); an ensemble when `keep` > 1.
    BestOf {
        /// Distinct random candidate paths.
        candidates: usize,
        /// How many of the best to keep.
        keep: usize,
    },
}

/// How best-of derivation ranks candidate paths: clean accuracy and accuracy under a short PGD
/// on a seeded random subset of the training images (which the RGN was trained on: it ranks
/// paths, it is not a held-out estimate; test images are never used).
#[derive(Debug, Clone, PartialEq)]
pub struct Screening {
    /// Training images drawn (default 1000).
    pub images: usize,
    /// PGD radius (default 0.01).
    pub eps: f64,
    /// PGD steps of eps/4 from a uniform random start, one run (default 10).
    pub steps: usize,
}

impl Default for Screening {
    fn default() -> Self {
        Screening { images: 1000, eps: 0.01, steps: 10 }
    }
}

impl Screening {
    /// The screening as a white-box protocol.
    pub fn whitebox(&self) -> WhiteboxConfig {
        WhiteboxConfig {
            eps: vec![self.eps],
            attack: AttackConfig::paper_whitebox(1.0)
                .with_steps(self.steps)
                .with_step_ratio(0.25)
                .with_restarts(1),
            ..WhiteboxConfig::default()
        }
    }
}

/// What `eio derive --json` writes: the chosen paths and, for best-of, every candidate's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeriveReport {
    /// The RGN file.
    pub model: String,
    /// The derived model file.
    pub output: String,
    /// The derived paths.
    pub chosen: Vec<String>,
    /// Best-of candidates, best first (empty otherwise).
    pub candidates: Vec<RouteScore>,
    /// Screening images.
    pub val_images: usize,
    /// Screening radius.
    pub val_eps: f64,
    /// Screening PGD steps.
    pub val_steps: usize,
    /// Seed of the random paths and of the screening.
    pub seed: u64,
    /// The git revision of the binary.
    pub git: String,
}

/// Derives the paths `choice` picks in the RGN file `source` and writes them to `output`: the
/// plain ResNet-20 of one path, or the ensemble of several, with the source and the paths in
/// its metadata. The RGN is loaded on `device` (where best-of screens); random paths and the
/// screening images come from `seed`; best-of needs the training images `train`.
pub fn derive(
    source: &Path,
    choice: &PathChoice,
    screening: &Screening,
    train: Option<&Dataset>,
    output: &Path,
    device: Device,
    seed: Seed,
) -> Result<DeriveReport> {
    let (keep, candidates) = match choice {
        PathChoice::Distinct(k) => (*k, *k),
        PathChoice::BestOf { candidates, keep } => (*keep, *candidates),
        _ => (1, 1),
    };
    if keep == 0 || keep > crate::model::MAX_MEMBERS {
        return Err(Error::config(format!(
            "--paths {keep}: a derived ensemble has 1..={} members",
            crate::model::MAX_MEMBERS
        )));
    }
    if candidates > crate::model::MAX_PATHS {
        return Err(Error::config(format!(
            "--best-of {candidates}: at most {} candidate paths are screened",
            crate::model::MAX_PATHS
        )));
    }
    crate::fsx::check_writable(output)?;
    let (model, _) = Model::load(source, device)?;
    if model.gates() == 0 {
        return Err(Error::config(format!(
            "{} is a plain model: nothing to derive",
            source.display()
        )));
    }
    let mut rng = seed.rng(Stream::Route, 0, 0);
    let (gates, copies) = (model.gates(), model.spec.arch.copies);
    let mut candidates = Vec::new();
    let routes = match choice {
        PathChoice::Zeros => vec![Route::zeros(gates)],
        PathChoice::Given(r) => vec![r.clone()],
        PathChoice::Random => vec![Route::random(gates, copies, &mut rng)],
        PathChoice::Distinct(k) => distinct_paths(gates, copies, *k, "--paths", &mut rng)?,
        PathChoice::BestOf { candidates: k, keep } => {
            if keep > k {
                return Err(Error::config(format!(
                    "cannot keep the {keep} best of {k} candidate paths"
                )));
            }
            let cfg = screening.whitebox();
            cfg.validate()?;
            let cands = distinct_paths(gates, copies, *k, "--best-of", &mut rng)?;
            let train =
                train.ok_or_else(|| Error::config("best-of derivation needs training images"))?;
            let val = train.random_subset(screening.images, seed);
            eprintln!(
                "screening {} paths on {} training images: clean and PGD-{} accuracy at eps {}",
                cands.len(),
                val.len(),
                screening.steps,
                screening.eps
            );
            candidates = screen_routes(&model, &cands, &val, &cfg, device, seed)?;
            candidates.iter().take(*keep).map(|s| s.route.parse()).collect::<Result<_>>()?
        }
    };
    let plain = match &routes[..] {
        [one] => model.derive(one)?,
        _ => model.derive_ensemble(&routes)?,
    };
    let chosen: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.derived_from".into(), source.display().to_string());
    extra.meta.insert("eio.path".into(), chosen.join(";"));
    plain.save(output, extra)?;
    Ok(DeriveReport {
        model: source.display().to_string(),
        output: output.display().to_string(),
        chosen,
        candidates,
        val_images: screening.images,
        val_eps: screening.eps,
        val_steps: screening.steps,
        seed: seed.0,
        git: crate::train::git_rev().to_string(),
    })
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
