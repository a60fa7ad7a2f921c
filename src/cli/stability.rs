//! `eio stability`: the flags of [`eio::pipeline::stability`] (derive K random paths of one RGN,
//! fine-tune each or not, evaluate each; paper Appendix A.1).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::train::TrainFlags;
use super::DataArgs;
use eio::attack::AttackConfig;
use eio::data::Split;
use eio::eval::whitebox::WhiteboxConfig;
use eio::pipeline::stability::{stability, StabilityConfig};
use eio::train::config::resolve_finetune;

#[derive(Debug, Args)]
pub struct StabilityArgs {
    /// The trained RGN.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Number of random paths to derive (distinct, drawn with --seed like `eio derive --paths`).
    #[arg(short = 'k', long = "paths", value_name = "K", default_value_t = 8, value_parser = super::positive)]
    paths: usize,
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
    /// Redo everything in --out (derivations, fine-tuning runs, evaluations) rather than reuse
    /// it, and replace the report (report.json, report.md) of a finished run.
    #[arg(long)]
    force: bool,
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
    #[command(flatten)]
    data: DataArgs,
}

/// Fine-tuning overrides: only the flags this command takes.
#[derive(Serialize)]
struct FinetuneOverrides<'a> {
    train: &'a TrainFlags,
}

pub fn run(a: StabilityArgs) -> Result<()> {
    super::check_new_output(&a.out.join("report.json"), a.force)?;
    if a.finetune_epochs == 0
        && (a.finetune_config.is_some()
            || a.train_per_class.is_some()
            || a.checkpoint_every.is_some())
    {
        anyhow::bail!(
            "--finetune-config, --train-per-class and --checkpoint-every set the fine-tuning: \
             give --finetune-epochs N (N >= 1) with them"
        );
    }
    let cfg = StabilityConfig {
        paths: a.paths,
        seed: super::seed(),
        test_per_class: a.test_per_class,
        whitebox: WhiteboxConfig {
            eps: a.eps.clone(),
            attack: AttackConfig::paper_whitebox(1.0)
                .with_steps(a.steps)
                .with_step_ratio(a.step_ratio)
                .with_restarts(a.restarts),
            batch: a.batch_size,
        },
        references: a.references.clone(),
    };
    let finetuning = if a.finetune_epochs > 0 {
        let flags = TrainFlags {
            seed: Some(super::seed()),
            epochs: Some(a.finetune_epochs),
            train_per_class: a.train_per_class,
            checkpoint_every: a.checkpoint_every,
            ..Default::default()
        };
        let ft =
            resolve_finetune(a.finetune_config.as_deref(), &FinetuneOverrides { train: &flags })?;
        ft.train.validate()?;
        ft.optim.validate()?;
        let train = a.data.load(Split::Train, None)?;
        Some((ft, train))
    } else {
        None
    };
    let device = super::device()?;
    let test = a.data.load(Split::Test, None)?;
    let finetune = finetuning.as_ref().map(|(ft, train)| (ft, train));
    let report = stability(&a.model, &cfg, finetune, &test, &a.out, device, a.force)?;
    print!("{}", report.markdown());
    eprintln!("wrote {}", a.out.join("report.json").display());
    Ok(())
}
