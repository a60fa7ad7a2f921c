//! `eio eval`, `eio import`, `eio derive`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::{check_new_output, write_json, DataArgs, DeviceArg};
use eio::data::Split;
use eio::eval::accuracy;
use eio::model::io::TensorFile;
use eio::model::{Model, Route, Routing, Target};
use eio::seed::{Seed, Stream};

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
    #[arg(long, value_name = "K")]
    pub paths: Option<usize>,
    /// Seed of random paths.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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
    #[arg(long, value_name = "N")]
    test_per_class: Option<usize>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 500)]
    batch_size: i64,
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
        for _ in 0..k {
            let r = Route::random(model.gates(), model.spec.arch.copies, &mut rng);
            run(format!("path {r}"), Routing::Fixed(r))?;
        }
        let accs: Vec<f64> = rows.iter().map(|r| r.accuracy).collect();
        let mean = accs.iter().sum::<f64>() / accs.len().max(1) as f64;
        let min = accs.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = accs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "{k} paths: mean {:.2}%  min {:.2}%  max {:.2}%",
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
    /// Foreign checkpoint (safetensors): EIO RGN (net.model.*) or DVERGE-layout ResNet-20(s).
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// eio model file to write.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Overwrite --output if it exists.
    #[arg(long)]
    force: bool,
}

pub fn import(a: ImportArgs) -> Result<()> {
    check_new_output(&a.output, a.force)?;
    let (model, _) = Model::load(&a.input, tch::Device::Cpu)?;
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.imported_from".into(), a.input.display().to_string());
    model.save(&a.output, extra)?;
    println!(
        "imported {} -> {}: {} member(s), {} gated blocks, {} copies, augment {}, {} conv",
        a.input.display(),
        a.output.display(),
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
    #[arg(long = "path", value_name = "GATES", conflicts_with = "random_path")]
    path: Option<Route>,
    /// Derive a random path drawn with --seed.
    #[arg(long)]
    random_path: bool,
    /// Seed of --random-path.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Plain ResNet-20 file to write (PyTorch layout; loads with load_state_dict).
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Overwrite --output if it exists.
    #[arg(long)]
    force: bool,
}

pub fn derive(a: DeriveArgs) -> Result<()> {
    check_new_output(&a.output, a.force)?;
    let (model, _) = Model::load(&a.model, tch::Device::Cpu)?;
    if model.gates() == 0 {
        bail!("{} is a plain model: nothing to derive", a.model.display());
    }
    let route = if a.random_path {
        Route::random(
            model.gates(),
            model.spec.arch.copies,
            &mut Seed(a.seed).rng(Stream::Route, 0, 0),
        )
    } else {
        a.path.clone().unwrap_or_else(|| Route::zeros(model.gates()))
    };
    let plain = model.derive(&route)?;
    let mut extra = TensorFile::default();
    extra.meta.insert("eio.derived_from".into(), a.model.display().to_string());
    extra.meta.insert("eio.path".into(), route.to_string());
    plain.save(&a.output, extra)?;
    println!("derived path {route} of {} -> {}", a.model.display(), a.output.display());
    Ok(())
}
