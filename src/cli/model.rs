//! `eio eval`, `eio import`, `eio derive`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{check_new_output, write_json, DataArgs, DeviceArg};
use eio::attack::AttackConfig;
use eio::data::Split;
use eio::eval::accuracy;
use eio::eval::whitebox::WhiteboxConfig;
use eio::model::io::TensorFile;
use eio::model::route::sample_distinct;
use eio::model::{Model, Route, Routing, Target};
use eio::seed::{Seed, Stream};
use eio::train::eio::{screen_routes, RouteScore};

/// How to route an RGN.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// RGN path: one gate per block, e.g. 0,1,0,... (default: all zeros).
    #[arg(long = "path", value_name = "GATES", conflicts_with_all = ["random_path", "paths"])]
    pub path: Option<Route>,
    /// A fresh random path for every batch.
    #[arg(long, conflicts_with = "paths")]
    pub random_path: bool,
    /// Evaluate each of K random paths separately (seeded by --seed).
    #[arg(long, value_name = "K", value_parser = super::positive)]
    pub paths: Option<usize>,
    /// Seed of random paths.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The routing an attack or single evaluation uses: `--path`, `--random-path`, or all zeros.
pub fn routing(model: &Model, r: &RouteArgs, file: &std::path::Path) -> Result<Routing> {
    if r.paths.is_some() {
        bail!("--paths is not supported here: pick one --path or --random-path");
    }
    if model.gates() == 0 && (r.random_path || r.path.as_ref().is_some_and(|p| !p.is_empty())) {
        bail!("{} is a plain model: --path and --random-path need an RGN", file.display());
    }
    Ok(if r.random_path {
        Routing::Random
    } else {
        Routing::Fixed(r.path.clone().unwrap_or_else(|| Route::zeros(model.gates())))
    })
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model file: eio model or checkpoint, released EIO RGN checkpoint, DVERGE-layout state dict.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    route: RouteArgs,
    /// Evaluate on the first N test images of each class only.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    test_per_class: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500, value_parser = super::positive)]
    batch_size: usize,
    /// Also write the numbers to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Overwrite --json if it exists.
    #[arg(long)]
    force: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

#[derive(Debug, Serialize)]
struct EvalRow {
    what: String,
    accuracy: f64,
}

#[derive(Debug, Serialize)]
struct EvalReport {
    model: String,
    images: usize,
    rows: Vec<EvalRow>,
    git: &'static str,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    if let Some(j) = &a.json {
        check_new_output(j, a.force)?;
    }
    let device = a.device.device()?;
    let (model, _) = Model::load(&a.model, device)?;
    let test = a.data.load(Split::Test, a.test_per_class)?;
    let seed = Seed(a.route.seed);
    let mut rows = Vec::new();
    let mut run = |what: String, routing: Routing| -> Result<()> {
        let target = Target::new(&model, routing, seed)?;
        let acc = accuracy(&target, &test, a.batch_size, device);
        println!("{what:<48} {:>7.2}%", 100.0 * acc);
        rows.push(EvalRow { what, accuracy: acc });
        Ok(())
    };
    let gated = model.gates() > 0;
    if let Some(k) = a.route.paths {
        if !gated {
            bail!("--paths needs an RGN; {} is a plain model", a.model.display());
        }
        let mut rng = seed.rng(Stream::Route, 0, 0);
        let (gates, copies) = (model.gates(), model.spec.arch.copies);
        for r in sample_distinct(gates, copies, gates, k, &mut rng) {
            run(format!("path {r}"), Routing::Fixed(r))?;
        }
        let accs: Vec<f64> = rows.iter().map(|r| r.accuracy).collect();
        let mean = accs.iter().sum::<f64>() / accs.len() as f64;
        let min = accs.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{} paths: mean {:.2}%  min {:.2}%  max {:.2}%",
            accs.len(),
            100.0 * mean,
            100.0 * min,
            100.0 * max
        );
    } else if a.route.random_path {
        if !gated {
            bail!("--random-path needs an RGN; {} is a plain model", a.model.display());
        }
        run("random path per batch".into(), Routing::Random)?;
    } else {
        let r = a.route.path.clone().unwrap_or_else(|| Route::zeros(model.gates()));
        let what = if gated {
            format!("path {r}")
        } else if model.nets.len() > 1 {
            format!("ensemble of {} (average of softmax)", model.nets.len())
        } else {
            "model".into()
        };
        run(what, Routing::Fixed(r))?;
    }
    if let Some(j) = &a.json {
        let report = EvalReport {
            model: a.model.display().to_string(),
            images: test.len(),
            rows,
            git: eio::train::git_rev(),
        };
        write_json(j, &report)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Foreign checkpoint (safetensors or torch.save .pt/.pth/.pth.tar): EIO RGN (net.model.*),
    /// DVERGE-layout or option-A (akamaster) ResNet-20(s).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// eio model file to write.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Overwrite --output if it exists.
    #[arg(long)]
    force: bool,
    /// Channel means the model expects, for a state dict without normalizer buffers (with
    /// --std); a file's own buffers or spec must agree. Default: CIFAR-10's.
    #[arg(long, value_name = "R,G,B", requires = "std")]
    mean: Option<String>,
    /// Channel standard deviations the model expects (with --mean).
    #[arg(long, value_name = "R,G,B", requires = "mean")]
    std: Option<String>,
}

pub fn import(a: ImportArgs) -> Result<()> {
    check_new_output(&a.output, a.force)?;
    let norm = match (&a.mean, &a.std) {
        (Some(m), Some(s)) => Some(eio::model::Normalization::parse(m, s)?),
        _ => None,
    };
    let (model, _) = Model::load_with(&a.input, tch::Device::Cpu, norm)?;
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.imported_from".into(), a.input.display().to_string());
    model.save(&a.output, extra)?;
    println!(
        "imported {} -> {} ({}): {} member(s), {} gated blocks, {} copies, augment {}, {} conv",
        a.input.display(),
        a.output.display(),
        eio::model::io::describe(&model.spec),
        model.spec.members,
        model.gates(),
        model.spec.arch.copies,
        model.spec.arch.augment,
        if model.spec.arch.share_conv { "shared" } else { "independent" }
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct DeriveArgs {
    /// The trained RGN.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Path to derive, e.g. 0,1,0,... (default: all zeros).
    #[arg(long = "path", value_name = "GATES", conflicts_with_all = ["random_path", "paths", "best_of"])]
    path: Option<Route>,
    /// Derive a random path drawn with --seed.
    #[arg(long, conflicts_with_all = ["paths", "best_of"])]
    random_path: bool,
    /// Derive k paths as one ensemble of plain ResNet-20s (average of softmax): k distinct
    /// random paths drawn with --seed, or the k best of --best-of candidates.
    #[arg(long, value_name = "K", value_parser = super::positive)]
    paths: Option<usize>,
    /// Draw K distinct random candidate paths (--seed) and keep the best (or the --paths best)
    /// by PGD accuracy on --val-images training images (ties: clean accuracy).
    #[arg(long, value_name = "K", value_parser = super::positive)]
    best_of: Option<usize>,
    /// Screening set for --best-of: this many training images drawn with --seed (a seeded
    /// random subset of the 50,000 training images, which the RGN was trained on: it ranks
    /// paths, it is not a held-out estimate; test images are never used).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = super::positive)]
    val_images: usize,
    /// Screening PGD radius (L-infinity, pixel units).
    #[arg(long, value_name = "EPS", default_value_t = 0.01)]
    val_eps: f64,
    /// Screening PGD steps (of eps/4, uniform random start, eval-mode BatchNorm, one run).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = super::positive)]
    val_steps: usize,
    /// Seed of random paths and of the screening set.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Plain ResNet-20 file to write (PyTorch layout; loads with load_state_dict).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Also write the candidates' scores (--best-of) to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Overwrite --output and --json if they exist.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    data: DataArgs,
    /// Where to compute (screening only).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

#[derive(Debug, Serialize)]
struct DeriveReport {
    model: String,
    output: String,
    chosen: Vec<String>,
    candidates: Vec<RouteScore>,
    val_images: usize,
    val_eps: f64,
    val_steps: usize,
    seed: u64,
    git: &'static str,
}

pub fn derive(a: DeriveArgs) -> Result<()> {
    check_new_output(&a.output, a.force)?;
    if let Some(j) = &a.json {
        check_new_output(j, a.force)?;
    }
    if a.paths == Some(0) || a.best_of == Some(0) {
        bail!("--paths and --best-of must be at least 1");
    }
    let screen = a.best_of.is_some();
    let device = if screen { a.device.device()? } else { tch::Device::Cpu };
    let (model, _) = Model::load(&a.model, device)?;
    if model.gates() == 0 {
        bail!("{} is a plain model: nothing to derive", a.model.display());
    }
    let mut rng = Seed(a.seed).rng(Stream::Route, 0, 0);
    let (gates, copies) = (model.gates(), model.spec.arch.copies);
    let mut candidates = Vec::new();
    let routes = if let Some(k) = a.best_of {
        let keep = a.paths.unwrap_or(1);
        if keep > k {
            bail!("--paths {keep} cannot exceed --best-of {k}");
        }
        let cands = sample_distinct(gates, copies, gates, k, &mut rng);
        let val = a.data.load(Split::Train, None)?.random_subset(a.val_images, Seed(a.seed));
        let cfg = WhiteboxConfig {
            eps: vec![a.val_eps],
            attack: AttackConfig::paper_whitebox(1.0)
                .with_steps(a.val_steps)
                .with_step_ratio(0.25)
                .with_restarts(1),
            ..WhiteboxConfig::default()
        };
        cfg.validate()?;
        eprintln!(
            "screening {} paths on {} training images: clean and PGD-{} accuracy at eps {}",
            cands.len(),
            val.len(),
            a.val_steps,
            a.val_eps
        );
        candidates = screen_routes(&model, &cands, &val, &cfg, device, Seed(a.seed))?;
        for s in &candidates {
            println!(
                "path {}  clean {:6.2}%  pgd {:6.2}%",
                s.route,
                100.0 * s.clean,
                100.0 * s.robust
            );
        }
        candidates
            .iter()
            .take(keep)
            .map(|s| s.route.parse::<Route>())
            .collect::<eio::Result<Vec<Route>>>()?
    } else if let Some(k) = a.paths {
        sample_distinct(gates, copies, gates, k, &mut rng)
    } else if a.random_path {
        vec![Route::random(gates, copies, &mut rng)]
    } else {
        vec![a.path.clone().unwrap_or_else(|| Route::zeros(gates))]
    };
    let plain = if routes.len() == 1 {
        model.derive(&routes[0])?
    } else {
        model.derive_ensemble(&routes)?
    };
    let joined: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.derived_from".into(), a.model.display().to_string());
    extra.meta.insert("eio.path".into(), joined.join(";"));
    plain.save(&a.output, extra)?;
    for r in &joined {
        println!("derived path {r} of {} -> {}", a.model.display(), a.output.display());
    }
    if let Some(j) = &a.json {
        let report = DeriveReport {
            model: a.model.display().to_string(),
            output: a.output.display().to_string(),
            chosen: joined,
            candidates,
            val_images: a.val_images,
            val_eps: a.val_eps,
            val_steps: a.val_steps,
            seed: a.seed,
            git: eio::train::git_rev(),
        };
        write_json(j, &report)?;
    }
    Ok(())
}
