//! Subcommands. Each parses its flags, resolves its configuration and calls the library.

mod attack;
mod bench;
mod config;
mod model;
mod reproduce;
mod stability;
mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use eio::data::{default_data_dir, Dataset, Split};
use eio::model::MemoryFormat;

/// Ensemble-in-One: train and evaluate adversarially robust CIFAR-10 classifiers.
///
/// Typical pipeline: `eio train rgn-warmup`, `eio train eio`, `eio derive`, `eio finetune`,
/// `eio eval` / `eio attack`; the baselines: `eio train baseline|dverge|adp|gal|trs|adv`; the
/// whole comparison with its report: `eio reproduce --preset NAME`. Every training command takes
/// a TOML file (`--config`) whose values any flag overrides; the resolved configuration is
/// saved as `config.toml` in the run folder.
#[derive(Debug, Parser)]
#[command(name = "eio", version, about, long_about)]
pub struct Cli {
    /// CPU threads libtorch uses (default: libtorch's choice, usually one per core; also
    /// OMP_NUM_THREADS).
    #[arg(long, global = true, value_name = "N", value_parser = thread_count)]
    threads: Option<usize>,
    /// Master seed of every random choice: paths, image draws, attack starts, training (where
    /// it overrides the --config file's seed). Default 0 (training: the config's, else 0).
    #[arg(long, global = true, value_name = "N")]
    seed: Option<u64>,
    /// Where to compute: auto (the first CUDA GPU when libtorch has CUDA and one is present,
    /// else the CPU), cpu or cuda.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Layout of conv weights and activations: channels-last trains faster on CPUs (oneDNN) and
    /// on GPUs (cuDNN) but sums in another order, so its numbers differ from contiguous ones
    /// within float rounding (auto: the layout measured fastest, channels-last on CPU and CUDA,
    /// but contiguous for GAL and TRS training on the CPU, whose double backprop is slower in
    /// channels-last there).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "auto", value_parser = parsed::<MemoryFormat>)]
    memory_format: MemoryFormat,
    /// Let cuDNN time its convolution algorithms for each shape and keep the fastest (CUDA only;
    /// faster steps after the first, but the algorithm, and so the last bits of the numbers, can
    /// differ from run to run).
    #[arg(long, global = true)]
    cudnn_benchmark: bool,
    /// Deterministic algorithms only (CUDA: cuDNN's and libtorch's deterministic kernels, as
    /// torch.use_deterministic_algorithms): a rerun gives the same bits, at some cost in speed.
    /// Without it some CUDA backward kernels sum with atomics and reruns differ in the last
    /// bits, which training amplifies (the CPU is deterministic either way).
    #[arg(long, global = true)]
    deterministic: bool,
    /// Attack and evaluate a plain ensemble's members as one grouped network (one launch per
    /// layer for all members; measured slower on 2 CPU cores and on an H100, kept to measure).
    #[arg(long, global = true)]
    group_members: bool,
    /// Capture fixed-shape CUDA steps once and replay them as CUDA graphs: PGD iterations
    /// against a deterministic target, training steps of every method but EIO (CUDA only; the
    /// same kernels on the same inputs, so the same numbers as eager steps).
    #[arg(long, global = true)]
    cuda_graphs: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model: baseline ResNet-20s, RGN warm-up, Ensemble-in-One, and the baselines DVERGE,
    /// ADP, GAL, TRS and PGD adversarial training.
    #[command(subcommand)]
    Train(train::TrainCommand),
    /// Fine-tune a plain (derived) model: SGD lr 1e-3, decays at 50% and 75%, 40 epochs.
    Finetune(train::FinetuneArgs),
    /// Clean accuracy of a model, an ensemble, or an RGN along chosen or random paths.
    Eval(model::EvalArgs),
    /// Robustness protocols: white-box PGD, transfer sets, black-box evaluation,
    /// transferability matrices.
    #[command(subcommand)]
    Attack(attack::AttackCommand),
    /// Convert a released EIO RGN checkpoint or a DVERGE-layout state dict into an eio file.
    Import(model::ImportArgs),
    /// Write a plain ResNet-20 holding the weights of one RGN path (PyTorch layout).
    Derive(model::DeriveArgs),
    /// Re-estimate a model's BatchNorm running statistics on clean training images (the
    /// average over batches, as PyTorch's update_bn), weights unchanged.
    Recalibrate(model::RecalibrateArgs),
    /// Reproduce the paper's comparison from a preset: train every arm, craft the transfer set,
    /// evaluate every model, write summary.json (resumable; --only runs some jobs).
    Reproduce(reproduce::ReproduceArgs),
    /// Time train steps, input-gradient steps and inference for ResNet-20 and an RGN.
    Bench(bench::BenchArgs),
    /// Derive K random paths of an RGN, fine-tune each (or not), and report the clean and
    /// white-box accuracy of each with mean, min and max (paper Appendix A.1).
    Stability(stability::StabilityArgs),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    // cuBLAS is deterministic only with a fixed workspace configuration, read when it first
    // runs (PyTorch's reproducibility notes): set before any work, while no thread reads the
    // environment. The device check compares runs that must agree to the bit.
    let check = matches!(&cli.cmd, Command::Bench(a) if a.check);
    if (cli.deterministic || check) && std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", ":4096:8");
    }
    if let Some(n) = cli.threads {
        tch::set_num_threads(n as i32);
    }
    DEVICE.set(cli.device).expect("run is called once");
    SEED.set(cli.seed).expect("run is called once");
    eio::model::set_default_memory_format(cli.memory_format);
    eio::model::set_group_members(cli.group_members);
    eio::graph::set_enabled(cli.cuda_graphs);
    if cli.cudnn_benchmark {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    if cli.deterministic {
        eio::shim::Numerics { deterministic: true, ..eio::shim::Numerics::current() }.set();
    }
    match cli.cmd {
        Command::Train(c) => train::run(c),
        Command::Finetune(a) => train::finetune(a),
        Command::Eval(a) => model::eval(a),
        Command::Import(a) => model::import(a),
        Command::Derive(a) => model::derive(a),
        Command::Recalibrate(a) => model::recalibrate(a),
        Command::Bench(a) => bench::run(a),
        Command::Reproduce(a) => reproduce::run_cmd(a),
        Command::Attack(c) => attack::run(c),
        Command::Stability(a) => stability::run(a),
    }
}

/// Where the data is and which part of it to use.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// CIFAR-10 folder: official binary batches or image folders (train/<class>/, test/<class>/).
    /// Default: $EIO_DATA, else ../shared/data/cifar10-jpeg.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Label order of an image folder, e.g. airplane,automobile,... (default: the class
    /// folders of train/ sorted by name, which is the CIFAR-10 order for CIFAR-10).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
}

impl DataArgs {
    /// Loads `split`, keeping the first `per_class` images of each class when given.
    pub fn load(&self, split: Split, per_class: Option<usize>) -> Result<Dataset> {
        let dir = match &self.data {
            Some(d) => d.clone(),
            None => default_data_dir()?,
        };
        if let Some(names) = &self.classes {
            if names.iter().any(|n| n.is_empty()) {
                bail!("--classes: an empty class name (a stray comma?)");
            }
            if let Some(n) =
                names.iter().enumerate().find_map(|(i, n)| names[..i].contains(n).then_some(n))
            {
                bail!("--classes: {n} is named twice");
            }
        }
        let t = std::time::Instant::now();
        let d = Dataset::load(&dir, split, self.classes.as_deref())?;
        let d = match per_class {
            Some(n) => d.first_per_class(n),
            None => d,
        };
        eprintln!(
            "loaded {} {} images from {} ({:.1}s)",
            d.len(),
            if split == Split::Train { "training" } else { "test" },
            dir.display(),
            t.elapsed().as_secs_f64()
        );
        Ok(d)
    }
}

static DEVICE: std::sync::OnceLock<DeviceArg> = std::sync::OnceLock::new();

/// The device of the global `--device` flag (resolved when a command needs it, so that
/// `--device cuda` fails only where a command computes).
pub fn device() -> Result<tch::Device> {
    DEVICE.get().copied().unwrap_or_default().device()
}

static SEED: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// The global `--seed`, default 0.
pub fn seed() -> u64 {
    seed_override().unwrap_or(0)
}

/// The global `--seed` when given.
pub fn seed_override() -> Option<u64> {
    SEED.get().copied().flatten()
}

/// Device selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum DeviceArg {
    /// CUDA when available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The first CUDA GPU.
    Cuda,
}

impl DeviceArg {
    /// The tch device.
    pub fn device(self) -> Result<tch::Device> {
        Ok(match self {
            DeviceArg::Auto => tch::Device::cuda_if_available(),
            DeviceArg::Cpu => tch::Device::Cpu,
            DeviceArg::Cuda => {
                if !tch::Cuda::is_available() {
                    bail!("--device cuda: no CUDA device is available");
                }
                tch::Device::Cuda(0)
            }
        })
    }
}

/// Parses a whole number of at least 1 (sizes, counts, steps): a zero batch size would never
/// advance and an empty subset has no accuracy, so both are refused at the flag.
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of at least 1, got '{s}'")),
    }
}

/// `--threads`: at least 1, at most 4 threads per core of this machine (more only makes the
/// threads wait for each other: 1,000 on 2 cores took 30 s to evaluate 40 images).
fn thread_count(s: &str) -> std::result::Result<usize, String> {
    let n = positive(s)?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    if n > 4 * cores {
        return Err(format!("{n} threads on {cores} core(s): use at most {}", 4 * cores));
    }
    Ok(n)
}

/// Parses a flag value with the library's `FromStr` (its error names the accepted values).
pub fn parsed<T: std::str::FromStr<Err = eio::Error>>(s: &str) -> std::result::Result<T, String> {
    s.parse().map_err(|e: eio::Error| e.to_string())
}

/// Refuses to replace an existing output file unless `force`, and an output that cannot be
/// written (checked before the work that produces it).
pub fn check_new_output(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        bail!("{} already exists: pass --force to overwrite it", path.display());
    }
    eio::fsx::check_writable(path)?;
    Ok(())
}

/// Checks a command's output files before its work: each with [`check_new_output`], and no two
/// flags naming the same file (the second write would silently replace the first: `derive
/// --output m --json m` would leave a JSON file where the model should be).
pub fn check_new_outputs(outputs: &[(&str, Option<&Path>)], force: bool) -> Result<()> {
    let mut seen: Vec<(&str, std::path::PathBuf)> = Vec::new();
    for &(flag, path) in outputs {
        let Some(path) = path else { continue };
        let key = file_identity(path);
        if let Some((other, _)) = seen.iter().find(|(_, k)| *k == key) {
            bail!("{other} and {flag} both name {}: give each its own file", path.display());
        }
        check_new_output(path, force)?;
        seen.push((flag, key));
    }
    Ok(())
}

/// The absolute path of `path` with its folder resolved (`./a`, `b/../a` and a linked folder
/// name one file), for files that may not exist yet.
fn file_identity(path: &Path) -> std::path::PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (abs.parent().and_then(|d| d.canonicalize().ok()), abs.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => abs,
    }
}

/// Writes a JSON report atomically.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    eio::fsx::write_json(path, value)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        // Catches clashing flag names and ids, which release builds of clap do not check.
        super::Cli::command().debug_assert();
    }
}
