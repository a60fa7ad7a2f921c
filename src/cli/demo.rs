//! `eio demo`: the flags of [`eio::pipeline::demo`] (a baseline ResNet-20 and an RGN warm-up
//! on a CIFAR-10 subset, then clean evaluation of both, as a table).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{DataArgs, DeviceArg};
use eio::data::Split;
use eio::pipeline::demo::{demo, DemoConfig};

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

pub fn run(a: DemoArgs) -> Result<()> {
    let cfg = DemoConfig {
        train_per_class: a.train_per_class,
        test_per_class: a.test_per_class,
        epochs: a.epochs,
        seed: a.seed,
        paths: a.paths,
    };
    let device = a.device.device()?;
    let train = a.data.load(Split::Train, None)?;
    let test = a.data.load(Split::Test, None)?;
    let report = demo(&cfg, &train, &test, &a.out, device)?;
    println!(
        "\neio demo: {} training images, {} epochs per run, {} test images, seed {}\n\n{}",
        report.train_images,
        report.epochs,
        report.test_images,
        report.seed,
        report.markdown()
    );
    eprintln!("wrote {}", a.out.join("summary.json").display());
    Ok(())
}
