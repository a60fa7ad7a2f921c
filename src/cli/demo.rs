//! `eio demo`: the main job on embedded defaults — a baseline ResNet-20 and an RGN warm-up on a
//! CIFAR-10 subset, then clean evaluation of both (fixed, random and derived paths), as a table.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::{write_json, DataArgs, DeviceArg};
use eio::data::Split;
use eio::eval::accuracy;
use eio::model::io::write_atomic;
use eio::model::{ArchConfig, Model, ModelSpec, Route, Routing, Target};
use eio::optim::OptimConfig;
use eio::seed::{Seed, Stream};
use eio::train::methods::{Independent, RgnWarmup};
use eio::train::{fit, Method, RunDir, TrainConfig};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Output folder (re-running continues the runs found there).
    #[arg(long, default_value = "runs/demo", value_name = "DIR")]
    out: PathBuf,
    /// Training images per class.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = super::positive)]
    train_per_class: usize,
    /// Test images per class.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = super::positive)]
    test_per_class: usize,
    /// Epochs of each training run.
    #[arg(long, default_value_t = 5, value_parser = super::positive)]
    epochs: usize,
    /// Master seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random paths evaluated one by one.
    #[arg(long, default_value_t = 4, value_name = "K", value_parser = super::positive)]
    paths: usize,
    #[command(flatten)]
    data: DataArgs,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

#[derive(Debug, Serialize)]
struct Row {
    model: String,
    evaluation: String,
    clean_accuracy: f64,
}

#[derive(Debug, Serialize)]
struct Summary {
    git: &'static str,
    train_images: usize,
    test_images: usize,
    epochs: usize,
    seed: u64,
    rows: Vec<Row>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let device = a.device.device()?;
    let train = a.data.load(Split::Train, Some(a.train_per_class))?;
    let test = a.data.load(Split::Test, Some(a.test_per_class))?;
    let tcfg = TrainConfig {
        seed: a.seed,
        epochs: a.epochs,
        train_per_class: Some(a.train_per_class),
        test_per_class: Some(a.test_per_class),
        ..TrainConfig::default()
    };
    let sgd = OptimConfig::default();
    let train_one = |name: &str, spec: ModelSpec, method: &mut dyn Method| -> Result<Model> {
        eprintln!("== {name} ==");
        let run = RunDir { dir: a.out.join(name), resume: true, force: false };
        let text = format!(
            "# eio demo\n[arch]\n{}\n[train]\n{}\n[optim]\n{}",
            toml::to_string(&spec.arch)?,
            toml::to_string(&tcfg)?,
            toml::to_string(&sgd)?
        );
        let mut model = Model::new(&spec, device, Seed(a.seed))?;
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
    let seed = Seed(a.seed);
    let mut rows = Vec::new();
    let mut eval = |name: &str, what: String, model: &Model, routing: Routing| -> Result<()> {
        let t = Target::new(model, routing, seed)?;
        let acc = accuracy(&t, &test, 500, device);
        rows.push(Row { model: name.into(), evaluation: what, clean_accuracy: acc });
        Ok(())
    };
    eval("baseline ResNet-20", "plain".into(), &base, Routing::Fixed(Route::default()))?;
    let zeros = Route::zeros(rgn.gates());
    eval("RGN (n=2, 21 blocks)", "path 0,...,0".into(), &rgn, Routing::Fixed(zeros.clone()))?;
    eval("RGN (n=2, 21 blocks)", "random path per batch".into(), &rgn, Routing::Random)?;
    let mut rng = seed.rng(Stream::Route, 1, 0);
    for _ in 0..a.paths {
        let r = Route::random(rgn.gates(), 2, &mut rng);
        eval("RGN (n=2, 21 blocks)", format!("path {r}"), &rgn, Routing::Fixed(r))?;
    }
    let derived = rgn.derive(&zeros)?;
    let derived_path = a.out.join("derived-path0.safetensors");
    derived.save(&derived_path, Default::default())?;
    eval(
        "derived ResNet-20 (path 0,...,0)",
        "plain".into(),
        &derived,
        Routing::Fixed(Route::default()),
    )?;

    let mut md = String::from("| model | evaluation | clean accuracy |\n|---|---|---|\n");
    for r in &rows {
        md += &format!("| {} | {} | {:.2}% |\n", r.model, r.evaluation, 100.0 * r.clean_accuracy);
    }
    println!(
        "\neio demo: {} training images, {} epochs per run, {} test images, seed {}\n\n{md}",
        train.len(),
        a.epochs,
        test.len(),
        a.seed
    );
    write_atomic(&a.out.join("summary.md"), md.as_bytes())?;
    let summary = Summary {
        git: eio::train::git_rev(),
        train_images: train.len(),
        test_images: test.len(),
        epochs: a.epochs,
        seed: a.seed,
        rows,
    };
    write_json(&a.out.join("summary.json"), &summary)?;
    Ok(())
}
