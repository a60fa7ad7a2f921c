//! `eio reproduce`: the paper's comparison from one preset, resumable.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{DataArgs, DeviceArg};
use eio::data::Split;
use eio::pipeline::reproduce::{run, Data, Plan, Preset};

#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// Sizes: smoke (CI, seconds), demo (scripts/demo, minutes on 2 cores), cpu (results/eio-cpu
    /// scale, every arm, hours on 2 cores), gpu (about 10 minutes of one H100/H200), paper
    /// (the published 200+200 epochs).
    #[arg(long, value_name = "NAME")]
    preset: String,
    /// Output folder (plan.toml, runs/, models/, transfer/, eval/, summary.json, report).
    /// A rerun continues where the last one stopped.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Run only these jobs (names as listed by --list); the others are left as they are.
    #[arg(long, value_name = "JOB", value_delimiter = ',')]
    only: Vec<String>,
    /// Print the plan's jobs and exit.
    #[arg(long)]
    list: bool,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run_cmd(a: ReproduceArgs) -> Result<()> {
    let plan = Plan::new(Preset::named(&a.preset)?);
    if a.list {
        for j in &plan.jobs {
            println!("{:<28} -> {}", j.name, j.outputs.join(", "));
        }
        return Ok(());
    }
    let device = a.device.device()?;
    let data =
        Data { train: a.data.load(Split::Train, None)?, test: a.data.load(Split::Test, None)? };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let summary = run(&plan, &a.out, &a.only, &data, device, &command)?;
    println!("{}", summary.table());
    println!("summary: {}", a.out.join("summary.json").display());
    Ok(())
}
