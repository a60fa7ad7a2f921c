/*!
The demo job (`eio demo`, `scripts/demo`): a baseline ResNet-20 and an RGN warm-up (n = 2, all 21
slots gated) trained on a CIFAR-10 subset, then the clean accuracy of the baseline, of the RGN on
the all-zero path, on a random path per batch, on K random paths one by one, and of the plain
ResNet-20 derived from the all-zero path, as a table.

Its output folder holds one run folder per model (a rerun continues them),
`derived-path0.safetensors`, and the summary `summary.md` / `summary.json`.
*/

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::accuracy;
use crate::model::io::write_atomic;
use crate::model::{ArchConfig, Model, ModelSpec, Route, Routing, Target};
use crate::optim::OptimConfig;
use crate::seed::{Seed, Stream};
use crate::train::methods::{Independent, RgnWarmup};
use crate::train::{fit, Method, RunDir, TrainConfig};

/// Demo settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoConfig {
    /// Training images per class (default 1000).
    pub train_per_class: usize,
    /// Test images per class (default 100).
    pub test_per_class: usize,
    /// Epochs of each training run (default 5).
    pub epochs: usize,
    /// Master seed (default 0).
    pub seed: u64,
    /// Random paths evaluated one by one (default 4).
    pub paths: usize,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { train_per_class: 1000, test_per_class: 100, epochs: 5, seed: 0, paths: 4 }
    }
}

/// One line of the demo table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoRow {
    /// The model, e.g. `baseline ResNet-20`.
    pub model: String,
    /// How it was evaluated, e.g. `random path per batch`.
    pub evaluation: String,
    /// Clean accuracy.
    pub clean_accuracy: f64,
}

/// Result of [`demo`] (`summary.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoReport {
    /// The git revision of the binary.
    pub git: String,
    /// Training images.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Epochs of each training run.
    pub epochs: usize,
    /// Master seed.
    pub seed: u64,
    /// The table.
    pub rows: Vec<DemoRow>,
}

impl DemoReport {
    /// The table in Markdown (`summary.md`).
    pub fn markdown(&self) -> String {
        let mut md = String::from("| model | evaluation | clean accuracy |\n|---|---|---|\n");
        for r in &self.rows {
            md +=
                &format!("| {} | {} | {:.2}% |\n", r.model, r.evaluation, 100.0 * r.clean_accuracy);
        }
        md
    }
}

/// `v` as TOML.
fn toml_text(v: &impl Serialize) -> Result<String> {
    toml::to_string(v).map_err(|e| Error::config(format!("a config does not serialise: {e}")))
}

/// Runs the demo into `out` on the first `train_per_class` / `test_per_class` images of each
/// class of the splits `train` and `test`, on `device`. Writes `summary.md` and `summary.json`
/// and returns the report.
pub fn demo(
    cfg: &DemoConfig,
    train: &Dataset,
    test: &Dataset,
    out: &Path,
    device: Device,
) -> Result<DemoReport> {
    let train = train.first_per_class(cfg.train_per_class);
    let test = test.first_per_class(cfg.test_per_class);
    let tcfg = TrainConfig {
        seed: cfg.seed,
        epochs: cfg.epochs,
        train_per_class: Some(cfg.train_per_class),
        test_per_class: Some(cfg.test_per_class),
        ..TrainConfig::default()
    };
    let sgd = OptimConfig::default();
    let train_one = |name: &str, spec: ModelSpec, method: &mut dyn Method| -> Result<Model> {
        eprintln!("== {name} ==");
        let run = RunDir { dir: out.join(name), resume: true, force: false };
        let text = format!(
            "# eio demo\n[arch]\n{}\n[train]\n{}\n[optim]\n{}",
            toml_text(&spec.arch)?,
            toml_text(&tcfg)?,
            toml_text(&sgd)?
        );
        let mut model = Model::new(&spec, device, Seed(cfg.seed))?;
        fit(&mut model, method, &tcfg, &sgd, &text, &train, &test, &run)?;
        Ok(model)
    };
    let base = train_one(
        "baseline",
        ModelSpec { arch: ArchConfig::plain(), members: 1 },
        &mut Independent,
    )?;
    let rgn = train_one(
        "rgn-warmup",
        ModelSpec { arch: ArchConfig::rgn(2), members: 1 },
        &mut RgnWarmup,
    )?;

    eprintln!("== evaluation on {} test images ==", test.len());
    let seed = Seed(cfg.seed);
    let mut rows = Vec::new();
    let mut eval = |name: &str, what: String, model: &Model, routing: Routing| -> Result<()> {
        let t = Target::new(model, routing, seed)?;
        let acc = accuracy(&t, &test, 500, device);
        rows.push(DemoRow { model: name.into(), evaluation: what, clean_accuracy: acc });
        Ok(())
    };
    eval("baseline ResNet-20", "plain".into(), &base, Routing::Fixed(Route::default()))?;
    let zeros = Route::zeros(rgn.gates());
    eval("RGN (n=2, 21 blocks)", "path 0,...,0".into(), &rgn, Routing::Fixed(zeros.clone()))?;
    eval("RGN (n=2, 21 blocks)", "random path per batch".into(), &rgn, Routing::Random)?;
    let mut rng = seed.rng(Stream::Route, 1, 0);
    for _ in 0..cfg.paths {
        let r = Route::random(rgn.gates(), 2, &mut rng);
        eval("RGN (n=2, 21 blocks)", format!("path {r}"), &rgn, Routing::Fixed(r))?;
    }
    let derived = rgn.derive(&zeros)?;
    derived.save(&out.join("derived-path0.safetensors"), Default::default())?;
    eval(
        "derived ResNet-20 (path 0,...,0)",
        "plain".into(),
        &derived,
        Routing::Fixed(Route::default()),
    )?;

    let report = DemoReport {
        git: crate::train::git_rev().to_string(),
        train_images: train.len(),
        test_images: test.len(),
        epochs: cfg.epochs,
        seed: cfg.seed,
        rows,
    };
    write_atomic(&out.join("summary.md"), report.markdown().as_bytes())?;
    let json = serde_json::to_string_pretty(&report).expect("reports serialise");
    write_atomic(&out.join("summary.json"), json.as_bytes())?;
    Ok(report)
}
