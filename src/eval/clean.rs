/*!
Clean accuracy of one model routed one or several ways (`eio eval`): a plain model or an
ensemble (average of softmax), an RGN on a fixed path, on a fresh random path per batch, or on K
distinct random paths evaluated one by one.
*/

use serde::{Deserialize, Serialize};
use tch::Device;

use super::accuracy;
use super::aggregate::Spread;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::route::distinct_paths;
use crate::model::{Model, Route, Routing, Target, MAX_PATHS};
use crate::seed::{Seed, Stream};

/// How the evaluated model is routed.
#[derive(Debug, Clone, PartialEq)]
pub enum Routings {
    /// One fixed route: an RGN path, or the empty route of a plain model or ensemble.
    Fixed(Route),
    /// A fresh random path for every batch (an RGN).
    RandomPerBatch,
    /// K distinct random paths drawn from the seed, each evaluated on its own (an RGN).
    Paths(usize),
}

/// The accuracy of one routing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanRow {
    /// What was evaluated, e.g. `path 0,1,...`, `random path per batch`, `model`.
    pub what: String,
    /// Fraction of the images classified correctly.
    pub accuracy: f64,
}

/// Result of [`clean_eval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanReport {
    /// The model file.
    pub model: String,
    /// Number of images.
    pub images: usize,
    /// One row per routing.
    pub rows: Vec<CleanRow>,
    /// The git revision of the binary.
    pub git: String,
}

impl CleanReport {
    /// Mean, min and max accuracy over the rows (the paths of [`Routings::Paths`]).
    pub fn spread(&self) -> Spread {
        Spread::of(&self.rows.iter().map(|r| r.accuracy).collect::<Vec<_>>())
    }
}

/// Evaluates `model` (read from the file `name`) on `test` under `routings`, in batches of
/// `batch` on `device`; random paths come from `seed`. `each` sees every row as it is done.
#[allow(clippy::too_many_arguments)]
pub fn clean_eval(
    model: &Model,
    name: &str,
    routings: &Routings,
    test: &Dataset,
    batch: usize,
    device: Device,
    seed: Seed,
    mut each: impl FnMut(&CleanRow),
) -> Result<CleanReport> {
    crate::validate::check_classes(test)?;
    if let Routings::Paths(k) = routings {
        if *k > MAX_PATHS {
            return Err(Error::config(format!(
                "--paths {k}: at most {MAX_PATHS} random paths are evaluated one by one"
            )));
        }
    }
    let gated = model.gates() > 0;
    let list: Vec<(String, Routing)> = match routings {
        Routings::Fixed(r) => {
            let what = if gated {
                format!("path {r}")
            } else if model.nets.len() > 1 {
                format!("ensemble of {} (average of softmax)", model.nets.len())
            } else {
                "model".into()
            };
            vec![(what, Routing::Fixed(r.clone()))]
        }
        Routings::RandomPerBatch | Routings::Paths(_) if !gated => {
            return Err(Error::config(format!("{name} is a plain model: random paths need an RGN")))
        }
        Routings::RandomPerBatch => vec![("random path per batch".into(), Routing::Random)],
        Routings::Paths(k) => {
            let mut rng = seed.rng(Stream::Route, 0, 0);
            let (gates, copies) = (model.gates(), model.spec.arch.copies);
            distinct_paths(gates, copies, *k, "--paths", &mut rng)?
                .into_iter()
                .map(|r| (format!("path {r}"), Routing::Fixed(r)))
                .collect()
        }
    };
    let mut rows = Vec::with_capacity(list.len());
    for (what, routing) in list {
        let target = Target::new(model, routing, seed)?;
        let row = CleanRow { what, accuracy: accuracy(&target, test, batch, device) };
        each(&row);
        rows.push(row);
    }
    Ok(CleanReport {
        model: name.to_string(),
        images: test.len(),
        rows,
        git: crate::train::git_rev().to_string(),
    })
}

/// One CSV row per image of `data`: `index,label,prediction,correct,logit0..logit9` (index in
/// `data`, logits of the target's forward in eval mode).
pub fn per_image_csv(
    target: &dyn crate::model::Classifier,
    data: &Dataset,
    batch: usize,
    device: tch::Device,
) -> Result<String> {
    let (x, y) = data.tensors();
    let mut logits = Vec::new();
    let _guard = tch::no_grad_guard();
    for start in (0..data.len()).step_by(batch.max(1)) {
        let len = batch.min(data.len() - start) as i64;
        let xb = x.narrow(0, start as i64, len).to_device(device);
        logits.push(target.logits(&xb, None).to_device(tch::Device::Cpu));
    }
    let k = logits.first().map_or(10, |l| l.size()[1]);
    let mut s = String::from("index,label,prediction,correct");
    for c in 0..k {
        s += &format!(",logit{c}");
    }
    s.push('\n');
    if logits.is_empty() {
        return Ok(s);
    }
    let all = tch::Tensor::cat(&logits, 0).to_kind(tch::Kind::Float);
    let pred = Vec::<i64>::try_from(all.argmax(-1, false))?;
    let labels = Vec::<i64>::try_from(&y)?;
    let vals = Vec::<f32>::try_from(all.flatten(0, -1))?;
    for (i, (l, p)) in labels.iter().zip(&pred).enumerate() {
        s += &format!("{i},{l},{p},{}", u8::from(l == p));
        for v in &vals[i * k as usize..(i + 1) * k as usize] {
            s += &format!(",{v}");
        }
        s.push('\n');
    }
    Ok(s)
}
