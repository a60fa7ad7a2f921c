//! `eio stability`: derive K random paths of one RGN, fine-tune each (or not), and evaluate the
//! clean and white-box accuracy of each (paper Appendix A.1, Fig. 10); optional reference models
//! (e.g. the baseline) are evaluated on the same images with the same attack.
//!
//! Everything it writes lives in `--out`: `path{i}/derived.safetensors`, `path{i}/finetune/`
//! (a resumable training run), `path{i}/eval.json`, `reference{j}-eval.json`, and the summary
//! `report.json` / `report.md`. A re-run reuses what is there (finished derivations, fine-tuning
//! runs, evaluations done with the same settings), so an interrupted run picks up where it was.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::train::TrainFlags;
use super::{write_json, DataArgs, DeviceArg};
use eio::attack::AttackConfig;
use eio::data::{Dataset, Split};
use eio::eval::whitebox::{whitebox, WhiteboxConfig};
use eio::model::io::{write_atomic, TensorFile};
use eio::model::route::sample_distinct;
use eio::model::{Model, Target};
use eio::seed::{Seed, Stream};
use eio::train::methods::Independent;
use eio::train::{fit, RunDir};

#[derive(Debug, Args)]
pub struct StabilityArgs {
    /// The trained RGN.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Number of random paths to derive (distinct, drawn with --seed like `eio derive --paths`).
    #[arg(short = 'k', long = "paths", value_name = "K", default_value_t = 8, value_parser = super::positive)]
    paths: usize,
    /// Seed of the paths, of the fine-tuning runs and of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fine-tune each derived path for this many epochs before evaluating (0 = evaluate the
    /// derived weights as they are). Settings: `eio finetune`'s (SGD lr 1e-3, momentum 0.9,
    /// wd 1e-4, x0.1 at 50% and 75%), or --finetune-config.
    #[arg(long, value_name = "E", default_value_t = 0)]
    finetune_epochs: usize,
    /// TOML file with `eio finetune`'s [train] and [optim] tables for the fine-tuning runs.
    #[arg(long, value_name = "FILE")]
    finetune_config: Option<PathBuf>,
    /// Fine-tune on the first N training images of each class only.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    train_per_class: Option<usize>,
    /// Also checkpoint fine-tuning runs every N steps.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    checkpoint_every: Option<usize>,
    /// Also evaluate these models (plain, ensembles, or RGNs on the all-zero path) on the same
    /// images with the same attack, e.g. the baseline.
    #[arg(long = "reference", value_name = "FILE")]
    references: Vec<PathBuf>,
    /// White-box radii (L-infinity, pixel units).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.03")]
    eps: Vec<f64>,
    /// PGD steps (paper: 50).
    #[arg(long, default_value_t = 50, value_parser = super::positive)]
    steps: usize,
    /// PGD step size as a fraction of eps (paper: 0.2 = eps/5).
    #[arg(long, default_value_t = 0.2)]
    step_ratio: f64,
    /// PGD restarts from uniform random starts; robust = correct under all (paper: 5).
    #[arg(long, default_value_t = 5, value_parser = super::positive)]
    restarts: usize,
    /// Evaluate on the first N test images of each class (100 = the 1,000-image protocol).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = super::positive)]
    test_per_class: usize,
    /// Images per attack batch.
    #[arg(long, default_value_t = 500, value_parser = super::positive)]
    batch_size: usize,
    /// Output folder (derived models, fine-tuning runs, evaluations, report.json, report.md).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[command(flatten)]
    data: DataArgs,
}

/// Min, mean and max of one column over the derived paths.
#[derive(Debug, Clone, Serialize)]
struct Stat {
    mean: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        let n = v.len().max(1) as f64;
        Stat {
            mean: v.iter().sum::<f64>() / n,
            min: v.iter().cloned().fold(f64::INFINITY, f64::min),
            max: v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// One evaluated model.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    /// `path 3` or `reference 0`.
    name: String,
    /// The evaluated file.
    file: String,
    /// The RGN path it was derived from.
    route: Option<String>,
    /// Clean accuracy.
    clean: f64,
    /// Robust accuracy per eps.
    robust: Vec<f64>,
    /// The evaluation settings (a cached row is reused only with the same ones).
    settings: String,
    /// Seconds spent evaluating.
    eval_secs: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    clean: Stat,
    robust: Vec<Stat>,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    paths: usize,
    seed: u64,
    finetune_epochs: usize,
    images: usize,
    eps: Vec<f64>,
    steps: usize,
    step_ratio: f64,
    restarts: usize,
    rows: Vec<Row>,
    summary: Summary,
    git: &'static str,
}

/// Fine-tuning overrides: only the flags this command takes.
#[derive(Serialize)]
struct FinetuneOverrides<'a> {
    train: &'a TrainFlags,
}

pub fn run(a: StabilityArgs) -> Result<()> {
    if a.paths == 0 {
        bail!("--paths must be at least 1");
    }
    if a.eps.is_empty() {
        bail!("--eps needs at least one radius");
    }
    let device = a.device.device()?;
    let (rgn, _) = Model::load(&a.model, device)?;
    if rgn.gates() == 0 || rgn.spec.members != 1 {
        bail!("{} is not a single RGN: nothing to derive", a.model.display());
    }
    let wb = WhiteboxConfig {
        eps: a.eps.clone(),
        attack: AttackConfig::paper_whitebox(1.0)
            .with_steps(a.steps)
            .with_step_ratio(a.step_ratio)
            .with_restarts(a.restarts),
        batch: a.batch_size,
    };
    wb.validate()?;
    let settings = format!(
        "test_per_class={} eps={:?} steps={} step_ratio={} restarts={} seed={}",
        a.test_per_class, a.eps, a.steps, a.step_ratio, a.restarts, a.seed
    );
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let test = a.data.load(Split::Test, Some(a.test_per_class))?;
    let evaluate =
        |name: String, file: &Path, route: Option<String>, cache: &Path| -> Result<Row> {
            if let Ok(text) = std::fs::read_to_string(cache) {
                if let Ok(row) = serde_json::from_str::<Row>(&text) {
                    if row.settings == settings && row.file == file.display().to_string() {
                        eprintln!("{name}: reusing {}", cache.display());
                        return Ok(row);
                    }
                }
            }
            let t = Instant::now();
            let (model, _) = Model::load(file, device)?;
            let target = Target::fixed_zero(&model);
            // The same random starts for every model.
            let rep = whitebox(&target, &test, &wb, device, Seed(a.seed))?;
            let clean = rep.clean_accuracy;
            let robust: Vec<f64> = rep.rows.iter().map(|r| r.robust_accuracy).collect();
            let accs: Vec<String> = robust.iter().map(|r| format!("{:.2}%", 100.0 * r)).collect();
            eprintln!(
                "{name}: clean {:.2}%, robust {} at eps {:?}",
                100.0 * clean,
                accs.join(" "),
                a.eps
            );
            let row = Row {
                name,
                file: file.display().to_string(),
                route,
                clean,
                robust,
                settings: settings.clone(),
                eval_secs: t.elapsed().as_secs_f64(),
            };
            write_atomic(cache, serde_json::to_string_pretty(&row)?.as_bytes())?;
            Ok(row)
        };

    let mut rng = Seed(a.seed).rng(Stream::Route, 0, 0);
    let routes = sample_distinct(rgn.gates(), rgn.spec.arch.copies, rgn.gates(), a.paths, &mut rng);
    let mut train_set: Option<Dataset> = None;
    let mut rows = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let dir = a.out.join(format!("path{i}"));
        let derived = dir.join("derived.safetensors");
        if !derived.exists() {
            let plain = rgn.derive(route)?;
            let mut extra = TensorFile::default();
            extra.meta.insert("eio.derived_from".into(), a.model.display().to_string());
            extra.meta.insert("eio.path".into(), route.to_string());
            plain.save(&derived, extra)?;
            eprintln!("derived path {i}: {route} -> {}", derived.display());
        }
        let file = if a.finetune_epochs > 0 {
            let flags = TrainFlags {
                seed: Some(a.seed),
                epochs: Some(a.finetune_epochs),
                train_per_class: a.train_per_class,
                checkpoint_every: a.checkpoint_every,
                ..Default::default()
            };
            let mut cfg = eio::train::config::resolve(
                &eio::train::TrainSpec::finetune(),
                a.finetune_config.as_deref(),
                &FinetuneOverrides { train: &flags },
            )?;
            let (mut model, _) = Model::load(&derived, device)?;
            cfg.members = model.spec.members;
            cfg.arch = model.spec.arch.clone();
            cfg.validate()?;
            let text = format!("# fine-tuning {}\n{}", derived.display(), cfg.to_toml()?);
            if train_set.is_none() {
                train_set = Some(a.data.load(Split::Train, cfg.train.train_per_class)?);
            }
            let ft = RunDir { dir: dir.join("finetune"), resume: true, force: false };
            let ft_test = test.clone();
            let train = train_set.as_ref().expect("loaded above");
            fit(&mut model, &mut Independent, &cfg.train, &cfg.optim, &text, train, &ft_test, &ft)?;
            ft.model()
        } else {
            derived
        };
        rows.push(evaluate(
            format!("path {i}"),
            &file,
            Some(route.to_string()),
            &dir.join("eval.json"),
        )?);
    }
    let summary = Summary {
        clean: Stat::of(&rows.iter().map(|r| r.clean).collect::<Vec<_>>()),
        robust: (0..a.eps.len())
            .map(|k| Stat::of(&rows.iter().map(|r| r.robust[k]).collect::<Vec<_>>()))
            .collect(),
    };
    for (j, f) in a.references.iter().enumerate() {
        rows.push(evaluate(
            format!("reference {j}"),
            f,
            None,
            &a.out.join(format!("reference{j}-eval.json")),
        )?);
    }
    let report = Report {
        model: a.model.display().to_string(),
        paths: a.paths,
        seed: a.seed,
        finetune_epochs: a.finetune_epochs,
        images: test.len(),
        eps: a.eps.clone(),
        steps: a.steps,
        step_ratio: a.step_ratio,
        restarts: a.restarts,
        rows,
        summary,
        git: eio::train::git_rev(),
    };
    let md = markdown(&report);
    print!("{md}");
    write_atomic(&a.out.join("report.md"), md.as_bytes())?;
    write_json(&a.out.join("report.json"), &report)?;
    Ok(())
}

fn markdown(r: &Report) -> String {
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    let mut s = format!(
        "Stability of {} paths derived from {} ({}; fine-tuned {} epochs). {} test images, \
         white-box PGD-{} (step eps*{}, random start, {} restarts, CE), accuracy in %.\n\n",
        r.paths, r.model, r.git, r.finetune_epochs, r.images, r.steps, r.step_ratio, r.restarts
    );
    s += "| model | clean |";
    for e in &r.eps {
        s += &format!(" eps {e} |");
    }
    s += "\n|---|---|";
    s += &"---|".repeat(r.eps.len());
    s += "\n";
    for row in &r.rows {
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
        ("mean", (|t: &Stat| t.mean) as fn(&Stat) -> f64),
        ("min", |t: &Stat| t.min),
        ("max", |t: &Stat| t.max),
    ] {
        s += &format!("| {label} of {} paths | {} |", r.paths, pct(pick(&r.summary.clean)));
        for t in &r.summary.robust {
            s += &format!(" {} |", pct(pick(t)));
        }
        s += "\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        let s = Stat::of(&[0.5, 0.7, 0.6]);
        assert!((s.mean - 0.6).abs() < 1e-12 && s.min == 0.5 && s.max == 0.7);
    }
}
