//! `eio eval`, `eio import`, `eio derive`, `eio recalibrate`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use super::{check_new_output, check_new_outputs, write_json, DataArgs};
use eio::data::Split;
use eio::eval::clean::{clean_eval, CleanRow, Routings};
use eio::model::io::TensorFile;
use eio::model::{Model, Route, Routing};
use eio::pipeline::derive::{derive as derive_paths, PathChoice, Screening};
use eio::seed::Seed;

/// How to route an RGN.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// RGN path: one gate per block, e.g. 0,1,0,... (default: all zeros).
    #[arg(long = "path", value_name = "GATES", conflicts_with = "random_path")]
    pub path: Option<Route>,
    /// A fresh random path for every batch.
    #[arg(long)]
    pub random_path: bool,
    /// Use member K (0-based) of an ensemble file on its own (paper Fig. 9: one selected
    /// member of an ensemble).
    #[arg(long, value_name = "K")]
    pub member: Option<usize>,
}

/// Loads `file`, or member `--member K` of it.
pub fn load_model(file: &std::path::Path, r: &RouteArgs, device: tch::Device) -> Result<Model> {
    let (model, _) = Model::load(file, device)?;
    Ok(match r.member {
        Some(k) => {
            model.member(k).map_err(|e| anyhow::anyhow!("{}: --member: {e}", file.display()))?
        }
        None => model,
    })
}

/// The routing an attack or single evaluation uses: `--path`, `--random-path`, or all zeros.
pub fn routing(model: &Model, r: &RouteArgs, file: &std::path::Path) -> Result<Routing> {
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
    /// Evaluate each of K distinct random paths of an RGN separately (seeded by --seed).
    #[arg(long, value_name = "K", value_parser = super::positive, conflicts_with_all = ["path", "random_path"])]
    paths: Option<usize>,
    /// Evaluate on the first N test images of each class only.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    test_per_class: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500, value_parser = super::positive)]
    batch_size: usize,
    /// Also write the numbers to this JSON file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Per-image results as CSV (index among the evaluated images, label, prediction, correct,
    /// and the logits), for one path or a plain model or ensemble (not with --paths).
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    per_image: Option<PathBuf>,
    /// Overwrite --json / --per-image if they exist.
    #[arg(long)]
    force: bool,
}

pub fn eval(a: EvalArgs) -> Result<()> {
    check_new_outputs(
        &[("--json", a.json.as_deref()), ("--per-image", a.per_image.as_deref())],
        a.force,
    )?;
    let device = super::device()?;
    let model = load_model(&a.model, &a.route, device)?;
    let test = a.data.load(Split::Test, a.test_per_class)?;
    let routings = match (a.paths, a.route.random_path) {
        (Some(k), _) => Routings::Paths(k),
        (None, true) => Routings::RandomPerBatch,
        (None, false) => {
            Routings::Fixed(a.route.path.clone().unwrap_or_else(|| Route::zeros(model.gates())))
        }
    };
    let name = a.model.display().to_string();
    let print = |r: &CleanRow| println!("{:<48} {:>7.2}%", r.what, 100.0 * r.accuracy);
    let seed = Seed(super::seed());
    let report = clean_eval(&model, &name, &routings, &test, a.batch_size, device, seed, print)?;
    if let Routings::Paths(_) = routings {
        let s = report.spread();
        println!(
            "{} paths: mean {:.2}%  min {:.2}%  max {:.2}%",
            report.rows.len(),
            100.0 * s.mean,
            100.0 * s.min,
            100.0 * s.max
        );
    }
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    if let Some(f) = &a.per_image {
        let routing = routing(&model, &a.route, &a.model)?;
        let target = eio::model::Target::new(&model, routing, seed)?;
        let csv = eio::eval::clean::per_image_csv(&target, &test, a.batch_size, device)?;
        eio::model::io::write_atomic(f, csv.as_bytes())?;
        eprintln!("wrote {}", f.display());
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
    /// Store the weights in half precision (half the size; a model within f16 rounding of the
    /// input), as for the checkpoints shipped in the repository. Also takes eio files.
    #[arg(long)]
    half: bool,
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
    if a.half {
        model.save_half(&a.output, extra)?;
    } else {
        model.save(&a.output, extra)?;
    }
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
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = super::positive, requires = "best_of")]
    val_images: usize,
    /// Screening PGD radius (L-infinity, pixel units).
    #[arg(long, value_name = "EPS", default_value_t = 0.01, requires = "best_of")]
    val_eps: f64,
    /// Screening PGD steps (of eps/4, uniform random start, eval-mode BatchNorm, one run).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = super::positive, requires = "best_of")]
    val_steps: usize,
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
}

pub fn derive(a: DeriveArgs) -> Result<()> {
    check_new_outputs(&[("--output", Some(&a.output)), ("--json", a.json.as_deref())], a.force)?;
    let choice = match (a.best_of, a.paths) {
        (Some(candidates), keep) => PathChoice::BestOf { candidates, keep: keep.unwrap_or(1) },
        (None, Some(k)) => PathChoice::Distinct(k),
        (None, None) if a.random_path => PathChoice::Random,
        (None, None) => a.path.clone().map_or(PathChoice::Zeros, PathChoice::Given),
    };
    let screening = Screening { images: a.val_images, eps: a.val_eps, steps: a.val_steps };
    // Only best-of computes anything (the screening): the others derive on the CPU.
    let (train, device) = match choice {
        PathChoice::BestOf { .. } => (Some(a.data.load(Split::Train, None)?), super::device()?),
        _ => (None, tch::Device::Cpu),
    };
    let seed = Seed(super::seed());
    let report =
        derive_paths(&a.model, &choice, &screening, train.as_ref(), &a.output, device, seed)?;
    for s in &report.candidates {
        println!("path {}  clean {:6.2}%  pgd {:6.2}%", s.route, 100.0 * s.clean, 100.0 * s.robust);
    }
    for r in &report.chosen {
        println!("derived path {r} of {} -> {}", a.model.display(), a.output.display());
    }
    if let Some(j) = &a.json {
        write_json(j, &report)?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct RecalibrateArgs {
    /// Plain model or ensemble whose BatchNorm statistics to re-estimate.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Model file to write (the same weights, new running statistics).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Use this many training images drawn with --seed (default: all of them).
    #[arg(long, value_name = "N", value_parser = super::positive)]
    images: Option<usize>,
    /// Images per batch (the statistics are the average of the batches').
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = super::positive)]
    batch_size: usize,
    /// Use the images as they are. By default they are cropped and flipped as in training
    /// (seeded by --seed), so that the statistics describe the inputs the weights were trained
    /// on: re-estimated so, a baseline ensemble keeps its accuracy (84.3% against 84.2%), while
    /// unaugmented images cost it 1.6 points (results/baselines/README.md).
    #[arg(long)]
    no_augment: bool,
    /// Overwrite --output if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    data: DataArgs,
}

pub fn recalibrate(a: RecalibrateArgs) -> Result<()> {
    check_new_output(&a.output, a.force)?;
    let (model, _) = Model::load(&a.model, super::device()?)?;
    let seed = Seed(super::seed());
    let train = a.data.load(Split::Train, None)?;
    let train = match a.images {
        Some(n) if n > train.len() => {
            bail!("--images {n}: the training set has {} images", train.len())
        }
        Some(n) => train.random_subset(n, seed),
        None => train,
    };
    let augment = (!a.no_augment).then_some(seed);
    let seen = model
        .recalibrate_batchnorm(train.batches(a.batch_size, augment).map(|(x, _)| x))
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.recalibrated_from".into(), a.model.display().to_string());
    extra.meta.insert("eio.recalibration_images".into(), seen.to_string());
    model.save(&a.output, extra)?;
    println!(
        "recalibrated the BatchNorm statistics of {} on {seen} training images -> {}",
        a.model.display(),
        a.output.display()
    );
    Ok(())
}
