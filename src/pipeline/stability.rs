/*!
Stability of derived paths (paper Appendix A.1, Fig. 10): derive K distinct random paths of one
RGN, fine-tune each (or not), and evaluate the clean and white-box accuracy of each, with mean,
min and max over the paths; reference models (e.g. the baseline) are evaluated on the same
images with the same attack.

Everything lives in the output folder: `path{i}/derived.safetensors`, `path{i}/finetune/` (a
resumable training run), `path{i}/eval.json`, `reference{j}-eval.json`, and the summary
`report.json` / `report.md`. A rerun reuses what is there (finished derivations, fine-tuning
runs, evaluations done with the same settings), so an interrupted run picks up where it was.
Each is reused only for what it was made from: a derivation for the same route of the same RGN
(its [`Model::fingerprint`] is in the derived file), a fine-tuning run for the same derived
weights, an evaluation for the same settings and the same evaluated weights. Anything else
(another model, seed or route, a damaged file) is made again, saying so; `force` remakes all.
*/

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::attack::AttackConfig;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::aggregate::Spread;
use crate::eval::whitebox::{whitebox, WhiteboxConfig};
use crate::fsx::write_json;
use crate::model::io::{write_atomic, TensorFile};
use crate::model::route::distinct_paths;
use crate::model::{Model, Target};
use crate::seed::{Seed, Stream};
use crate::train::{fit, RunDir, TrainSpec};

/// Stability settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StabilityConfig {
    /// Distinct random paths to derive, drawn from `seed` (as `eio derive --paths`).
    pub paths: usize,
    /// Seed of the paths and of the attacks' random starts (the same for every model).
    pub seed: u64,
    /// Evaluate on the first N test images of each class (100 = the 1,000-image protocol).
    pub test_per_class: usize,
    /// The white-box evaluation of every model.
    pub whitebox: WhiteboxConfig,
    /// Models evaluated beside the paths (plain, ensembles, or RGNs on the all-zero path).
    pub references: Vec<PathBuf>,
}

impl Default for StabilityConfig {
    fn default() -> Self {
        StabilityConfig {
            paths: 8,
            seed: 0,
            test_per_class: 100,
            whitebox: WhiteboxConfig {
                eps: vec![0.01, 0.02, 0.03],
                attack: AttackConfig::paper_whitebox(1.0),
                ..WhiteboxConfig::default()
            },
            references: Vec::new(),
        }
    }
}

/// One evaluated model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityRow {
    /// `path 3` or `reference 0`.
    pub name: String,
    /// The evaluated file.
    pub file: String,
    /// The RGN path it was derived from.
    pub route: Option<String>,
    /// Clean accuracy.
    pub clean: f64,
    /// Robust accuracy per eps.
    pub robust: Vec<f64>,
    /// The evaluation settings (a cached row is reused only with the same ones).
    pub settings: String,
    /// The evaluated weights' [`Model::fingerprint`] (a cached row is reused only for them).
    #[serde(default)]
    pub fingerprint: String,
    /// Seconds spent evaluating.
    pub eval_secs: f64,
}

/// Spread of each column over the derived paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilitySummary {
    /// Clean accuracy.
    pub clean: Spread,
    /// Robust accuracy, per eps.
    pub robust: Vec<Spread>,
}

/// Result of [`stability`] (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StabilityReport {
    /// The RGN file.
    pub model: String,
    /// Derived paths.
    pub paths: usize,
    /// Seed.
    pub seed: u64,
    /// Fine-tuning epochs of each path (0: evaluated as derived).
    pub finetune_epochs: usize,
    /// Test images.
    pub images: usize,
    /// Radii.
    pub eps: Vec<f64>,
    /// Attack iterations.
    pub steps: usize,
    /// Attack step as a fraction of eps (`None` for APGD, which adapts its step).
    pub step_ratio: Option<f64>,
    /// Attack restarts.
    pub restarts: usize,
    /// The white-box attack ([`WhiteboxConfig::describe`]).
    pub attack: String,
    /// The paths, then the references.
    pub rows: Vec<StabilityRow>,
    /// Spread over the paths.
    pub summary: StabilitySummary,
    /// The git revision of the binary.
    pub git: String,
}

impl StabilityReport {
    /// The report as a Markdown paragraph and table, accuracies in %.
    pub fn markdown(&self) -> String {
        let pct = |v: f64| format!("{:.1}", 100.0 * v);
        let mut s = format!(
            "Stability of {} paths derived from {} ({}; fine-tuned {} epochs). {} test images, \
             white-box {}, accuracy in %.\n\n",
            self.paths, self.model, self.git, self.finetune_epochs, self.images, self.attack
        );
        s += "| model | clean |";
        for e in &self.eps {
            s += &format!(" eps {e} |");
        }
        s += "\n|---|---|";
        s += &"---|".repeat(self.eps.len());
        s += "\n";
        for row in &self.rows {
            let name = match &row.route {
                Some(route) => format!("{} ({route})", row.name),
                None => format!("{} ({})", row.name, row.file),
            };
            s += &format!("| {name} | {} |", pct(row.clean));
            for v in &row.robust {
                s += &format!(" {} |", pct(*v));
            }
            s += "\n";
        }
        for (label, pick) in [
            ("mean", (|t: &Spread| t.mean) as fn(&Spread) -> f64),
            ("min", |t: &Spread| t.min),
            ("max", |t: &Spread| t.max),
        ] {
            s += &format!(
                "| {label} of {} paths | {} |",
                self.paths,
                pct(pick(&self.summary.clean))
            );
            for t in &self.summary.robust {
                s += &format!(" {} |", pct(pick(t)));
            }
            s += "\n";
        }
        s
    }
}

/// Metadata key of a derived path's source: the RGN's [`Model::fingerprint`].
const SOURCE_KEY: &str = "eio.derived_from_model";
/// Metadata key of a derived path's route.
const PATH_KEY: &str = "eio.path";

/// Runs the stability experiment on the RGN file `rgn_file` into `out` (see the module docs):
/// `test` is the test split (its first `test_per_class` images of each class are used) and,
/// with `finetune`, each derived path is first fine-tuned on the training split given with it
/// (its first `train_per_class` images of each class when the fine-tuning config sets that).
/// With `force`, everything in `out` is made again rather than reused. Writes `report.json`
/// and `report.md` and returns the report.
pub fn stability(
    rgn_file: &Path,
    cfg: &StabilityConfig,
    finetune: Option<(&TrainSpec, &Dataset)>,
    test: &Dataset,
    out: &Path,
    device: Device,
    force: bool,
) -> Result<StabilityReport> {
    if cfg.paths == 0 || cfg.paths > crate::model::MAX_PATHS {
        return Err(Error::config(format!(
            "stability needs 1..={} paths, got {}",
            crate::model::MAX_PATHS,
            cfg.paths
        )));
    }
    cfg.whitebox.validate()?;
    let (rgn, _) = Model::load(rgn_file, device)?;
    if rgn.gates() == 0 || rgn.spec.members != 1 {
        return Err(Error::config(format!(
            "{} is not a single RGN: nothing to derive",
            rgn_file.display()
        )));
    }
    let mut rng = Seed(cfg.seed).rng(Stream::Route, 0, 0);
    let routes = distinct_paths(rgn.gates(), rgn.spec.arch.copies, cfg.paths, "-k", &mut rng)?;
    // The inputs read only after the paths' work, checked before it.
    for f in &cfg.references {
        Model::load(f, Device::Cpu)?;
    }
    for f in ["report.json", "report.md"] {
        crate::fsx::check_writable(&out.join(f))?;
    }
    let source = rgn.fingerprint();
    // Everything an evaluation depends on: a cached row is reused only when it matches.
    let settings = format!(
        "test_per_class={} seed={} whitebox={}",
        cfg.test_per_class,
        cfg.seed,
        serde_json::to_string(&cfg.whitebox).expect("configs serialise")
    );
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let _lock = crate::fsx::RunLock::acquire(out)?;
    crate::fsx::clean_stale_temps(out)?;
    let test = test.first_per_class(cfg.test_per_class);
    let finetune = finetune.map(|(ft, train)| match ft.train.train_per_class {
        Some(n) => (ft, Cow::Owned(train.first_per_class(n))),
        None => (ft, Cow::Borrowed(train)),
    });
    let evaluate = |name: String, file: &Path, route: Option<String>, cache: &Path| {
        evaluate_cached(name, file, route, cache, &settings, cfg, &test, device, force)
    };

    let mut rows = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let dir = out.join(format!("path{i}"));
        let derived = dir.join("derived.safetensors");
        // A derivation found here is reused only when it is this route of this RGN.
        let held = derived.exists().then(|| Model::load(&derived, Device::Cpu));
        let reuse = match &held {
            None => false,
            Some(_) if force => false,
            Some(Err(e)) => {
                eprintln!("path {i}: {e}; deriving it again");
                false
            }
            Some(Ok((_, f)))
                if f.meta.get(SOURCE_KEY) != Some(&source)
                    || f.meta.get(PATH_KEY) != Some(&route.to_string()) =>
            {
                eprintln!(
                    "path {i}: {} is not path {route} of {} (another model, seed or -k); \
                     deriving it again",
                    derived.display(),
                    rgn_file.display()
                );
                false
            }
            Some(Ok(_)) => true,
        };
        let before = held.and_then(|h| h.ok()).map(|(m, _)| m.fingerprint());
        let now = if reuse {
            before.clone()
        } else {
            let plain = rgn.derive(route)?;
            let mut extra = TensorFile::default();
            extra.meta.insert("eio.derived_from".into(), rgn_file.display().to_string());
            extra.meta.insert(SOURCE_KEY.into(), source.clone());
            extra.meta.insert(PATH_KEY.into(), route.to_string());
            plain.save(&derived, extra)?;
            eprintln!("derived path {i}: {route} -> {}", derived.display());
            Some(plain.fingerprint())
        };
        let file = match &finetune {
            Some((ft, train)) => {
                // A fine-tuning run continues only from the weights it started from.
                let restart = force || before != now;
                let run = RunDir { dir: dir.join("finetune"), resume: !restart, force: restart };
                let (mut model, _) = Model::load(&derived, device)?;
                // `eio finetune`'s configuration for this model, saved with the run.
                let spec = TrainSpec {
                    members: model.spec.members,
                    arch: model.spec.arch.clone(),
                    ..(*ft).clone()
                };
                spec.validate()?;
                let text = format!("# fine-tuning {}\n{}", derived.display(), spec.to_toml()?);
                let mut method = spec.build()?;
                fit(
                    &mut model,
                    method.as_mut(),
                    &spec.train,
                    &spec.optim,
                    &text,
                    train,
                    &test,
                    &run,
                )?;
                run.model()
            }
            None => derived,
        };
        rows.push(evaluate(
            format!("path {i}"),
            &file,
            Some(route.to_string()),
            &dir.join("eval.json"),
        )?);
    }
    let column =
        |f: &dyn Fn(&StabilityRow) -> f64| Spread::of(&rows.iter().map(f).collect::<Vec<_>>());
    let summary = StabilitySummary {
        clean: column(&|r| r.clean),
        robust: (0..cfg.whitebox.eps.len()).map(|k| column(&|r| r.robust[k])).collect(),
    };
    for (j, f) in cfg.references.iter().enumerate() {
        rows.push(evaluate(
            format!("reference {j}"),
            f,
            None,
            &out.join(format!("reference{j}-eval.json")),
        )?);
    }
    let attack = &cfg.whitebox.attack;
    let report = StabilityReport {
        model: rgn_file.display().to_string(),
        paths: cfg.paths,
        seed: cfg.seed,
        finetune_epochs: finetune.as_ref().map_or(0, |(ft, _)| ft.train.epochs),
        images: test.len(),
        eps: cfg.whitebox.eps.clone(),
        steps: attack.steps(),
        step_ratio: attack.step_ratio(),
        restarts: attack.restarts(),
        attack: cfg.whitebox.describe(),
        rows,
        summary,
        git: crate::train::git_rev().to_string(),
    };
    write_atomic(&out.join("report.md"), report.markdown().as_bytes())?;
    write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

/// The row of one model: read from `cache` when it holds one with the same `settings`, file,
/// route and weights (unless `force`), else evaluated (white-box on `test`, seeded with
/// `cfg.seed` so that every model faces the same random starts) and written there.
#[allow(clippy::too_many_arguments)]
fn evaluate_cached(
    name: String,
    file: &Path,
    route: Option<String>,
    cache: &Path,
    settings: &str,
    cfg: &StabilityConfig,
    test: &Dataset,
    device: Device,
    force: bool,
) -> Result<StabilityRow> {
    let t = Instant::now();
    let (model, _) = Model::load(file, device)?;
    let fingerprint = model.fingerprint();
    if cache.exists() && !force {
        match crate::fsx::read_json::<StabilityRow>(cache) {
            Ok(row)
                if row.settings == settings
                    && row.file == file.display().to_string()
                    && row.route == route
                    && row.fingerprint == fingerprint =>
            {
                eprintln!("{name}: reusing {}", cache.display());
                return Ok(row);
            }
            Ok(_) => eprintln!(
                "{name}: {} is the evaluation of another model or settings; evaluating again",
                cache.display()
            ),
            Err(e) => eprintln!("{name}: {e}; evaluating again"),
        }
    }
    let target = Target::fixed_zero(&model);
    let rep = whitebox(&target, test, &cfg.whitebox, device, Seed(cfg.seed))?;
    let clean = rep.clean_accuracy;
    let robust: Vec<f64> = rep.rows.iter().map(|r| r.robust_accuracy).collect();
    let accs: Vec<String> = robust.iter().map(|r| format!("{:.2}%", 100.0 * r)).collect();
    eprintln!(
        "{name}: clean {:.2}%, robust {} at eps {:?}",
        100.0 * clean,
        accs.join(" "),
        cfg.whitebox.eps
    );
    let row = StabilityRow {
        name,
        file: file.display().to_string(),
        route,
        clean,
        robust,
        settings: settings.to_string(),
        fingerprint,
        eval_secs: t.elapsed().as_secs_f64(),
    };
    write_json(cache, &row)?;
    Ok(row)
}
