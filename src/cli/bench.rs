//! `eio bench`: milliseconds per train step, per input-gradient (PGD) step and per inference
//! batch, for ResNet-20 and for an RGN; `--check`: CPU vs device agreement.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = super::positive)]
    batch_size: usize,
    /// Timed repetitions of each measurement (after 3 warm-up runs).
    #[arg(long, default_value_t = 20, value_parser = super::positive)]
    iters: usize,
    /// Instead of timing: check that --device computes what the CPU computes (logits and input
    /// gradients of a ResNet-20, an RGN and an ensemble on fixed images) and that two steps of
    /// every training method run there; exits 1 when a check fails.
    #[arg(long)]
    pub(super) check: bool,
    /// Instead of the model rows: ms per training step of every method at its defaults, and
    /// the peak memory of its steps (iterations: --iters / 10, at least 1).
    #[arg(long, conflicts_with = "check")]
    methods: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Overwrite --json if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(f) = &a.json {
        super::check_new_output(f, a.force)?;
    }
    let device = super::device()?;
    if a.check {
        println!("eio device check: {device:?} against the CPU");
        let rows = eio::bench::device_check(device)?;
        for r in &rows {
            println!(
                "{:<36} rel. diff {:>10.2e} (tolerance {:.0e}) {}",
                r.what,
                r.rel_diff,
                r.tolerance,
                if r.ok { "ok" } else { "FAILED" }
            );
        }
        if let Some(f) = &a.json {
            super::write_json(f, &rows)?;
        }
        let bad: Vec<&str> = rows.iter().filter(|r| !r.ok).map(|r| r.what.as_str()).collect();
        if !bad.is_empty() {
            bail!("device check failed on {device:?}: {}", bad.join(", "));
        }
        return Ok(());
    }
    let mut layout =
        String::from(if eio::model::default_memory_format().channels_last_on(device) {
            "channels-last"
        } else {
            "contiguous"
        });
    if eio::model::group_members() {
        layout += ", grouped members";
    }
    if a.methods {
        let iters = (a.iters / 10).max(1);
        println!(
            "eio bench --methods: batch {}, {iters} iteration(s), device {device:?}, {} threads, {layout}",
            a.batch_size,
            tch::get_num_threads()
        );
        println!("{:<44} {:>12} {:>14}", "method", "ms per step", "peak memory");
        let rows = eio::bench::method_timings(a.batch_size, iters, device)?;
        for r in &rows {
            let peak = r.peak_memory_bytes.map(eio::memory::bytes).unwrap_or_default();
            println!("{:<44} {:>12.1} {peak:>14}", r.method, r.ms);
        }
        if let Some(f) = &a.json {
            super::write_json(f, &rows)?;
        }
        return Ok(());
    }
    println!(
        "eio bench: batch {}, {} iterations, device {:?}, {} threads, {layout}",
        a.batch_size,
        a.iters,
        device,
        tch::get_num_threads()
    );
    println!(
        "{:<24} {:>12} {:>16} {:>14} {:>14}",
        "model", "train ms", "input-grad ms", "infer ms", "PGD-50 img/s"
    );
    let rows = eio::bench::timings(a.batch_size, a.iters, device)?;
    for r in &rows {
        println!(
            "{:<24} {:>12.1} {:>16.1} {:>14.1} {:>14.1}",
            r.model, r.train_ms, r.input_grad_ms, r.infer_ms, r.pgd50_images_per_sec
        );
    }
    if let Some(f) = &a.json {
        super::write_json(f, &rows)?;
    }
    Ok(())
}
