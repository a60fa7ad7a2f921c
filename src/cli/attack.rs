//! `eio attack ...`: the robustness protocols (white-box, transfer-set generation, black-box
//! evaluation, transferability matrices). Settings: docs/attacks.md.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::resolve;
use super::model::{routing, RouteArgs};
use super::{check_new_output, check_new_outputs, DataArgs};
use eio::attack::{AttackConfig, AttackLoss};
use eio::data::{Dataset, Split};
use eio::eval::report::Report;
use eio::eval::transfer::{
    save_examples, transfer_eval, transfer_files, transfer_gen_with, Named, TransferFile,
    TransferGenConfig, TransferVersion,
};
use eio::eval::transferability::{members, transferability, TransferabilityConfig};
use eio::eval::whitebox::{named_attack, whitebox_detailed, whitebox_resumable, WhiteboxConfig};
use eio::model::io::write_atomic;
use eio::model::{Model, Target};
use eio::seed::Seed;

#[derive(Debug, Subcommand)]
pub enum AttackCommand {
    /// White-box attack with restarts over a list of eps; an image is robust only if correct
    /// under every restart (defaults: PGD, eps 0.01..0.07, 50 steps of eps/5, 5 restarts, CE;
    /// --attack fgsm|apgd|mpgd for FGSM, APGD or momentum PGD).
    Whitebox(Box<WhiteboxArgs>),
    /// Craft adversarial examples on surrogate models and store them (paper suite: momentum PGD
    /// x3 restarts, M-DI2-FGSM, SGM; CE and CW; 100 steps of eps/5; eps 0.01..0.07).
    TransferGen(TransferGenArgs),
    /// Black-box accuracy of a model on a stored transfer set: correct on all versions, per eps
    /// and per attack.
    TransferEval(TransferEvalArgs),
    /// Attack success rate of PGD examples made on member i against member j, for the members
    /// of an ensemble or K random paths of an RGN (default eps 0.03, PGD-50, 5 restarts).
    Transferability(TransferabilityArgs),
}

pub fn run(cmd: AttackCommand) -> Result<()> {
    match cmd {
        AttackCommand::Whitebox(a) => run_whitebox(*a),
        AttackCommand::TransferGen(a) => run_transfer_gen(a),
        AttackCommand::TransferEval(a) => run_transfer_eval(a),
        AttackCommand::Transferability(a) => run_transferability(a),
    }
}

/// Which test images to use.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Number of test images drawn at random with --seed.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = super::positive)]
    images: usize,
    /// Use the first N test images of each class instead of a random draw.
    #[arg(long, value_name = "N", value_parser = super::positive, conflicts_with = "images")]
    first_per_class: Option<usize>,
    #[command(flatten)]
    data: DataArgs,
}

impl ImagesArgs {
    /// The test split and the indices of the chosen images.
    fn select(&self, seed: Seed) -> Result<(Dataset, Vec<usize>)> {
        let test = self.data.load(Split::Test, None)?;
        let idx = match self.first_per_class {
            Some(n) => test.first_per_class_index(n),
            None => test.random_index(self.images, seed),
        };
        if idx.is_empty() {
            bail!("no test images selected");
        }
        Ok((test, idx))
    }
}

/// Where reports go.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Write the report as JSON. `attack whitebox` also keeps its progress in FILE's
    /// `.state.json` sibling after every restart, so that the same command, run again after a
    /// stop, continues from there (not with --save-adv or a random-route target).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Write the result table as CSV.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

impl OutputArgs {
    /// Checks --json and --csv, and `more` (the command's other output files) with them.
    fn check(&self, more: &[(&str, Option<&Path>)]) -> Result<()> {
        let mut all = vec![("--json", self.json.as_deref()), ("--csv", self.csv.as_deref())];
        all.extend_from_slice(more);
        check_new_outputs(&all, self.force)
    }

    fn write(&self, report: &impl Report) -> Result<()> {
        if let Some(p) = &self.json {
            report.write_json(p)?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &self.csv {
            report.write_csv(p)?;
            eprintln!("wrote {}", p.display());
        }
        Ok(())
    }
}

/// Checks `--attack` against the library's white-box attack names.
fn attack_name(s: &str) -> std::result::Result<String, String> {
    named_attack(s).map(|a| a.name().to_string()).map_err(|e| e.to_string())
}

/// The attack flags a command takes; each one given sets that field of an attack.
#[derive(Default)]
struct AttackOverrides {
    steps: Option<usize>,
    step_ratio: Option<f64>,
    restarts: Option<usize>,
    loss: Option<AttackLoss>,
    eot: Option<usize>,
}

impl AttackOverrides {
    fn apply(&self, mut attack: AttackConfig) -> AttackConfig {
        if let Some(steps) = self.steps {
            attack = attack.with_steps(steps);
        }
        if let Some(ratio) = self.step_ratio {
            attack = attack.with_step_ratio(ratio);
        }
        if let Some(restarts) = self.restarts {
            attack = attack.with_restarts(restarts);
        }
        if let Some(loss) = self.loss {
            attack = attack.with_loss(loss);
        }
        if let Some(eot) = self.eot {
            attack = attack.with_eot(eot);
        }
        attack
    }
}

/// The protocol's settings: the `--config` file, or the library's defaults.
fn load_config<C: Serialize + DeserializeOwned + Default>(file: Option<&Path>) -> Result<C> {
    Ok(resolve::<C>(file, &toml::Table::new())?.0)
}

#[derive(Debug, Default, Args)]
pub struct WhiteboxFlags {
    /// Radii in [0, 1] units, comma-separated (e.g. 0.01,0.02,0.03 or 8/255 as 0.0314)
    /// [default: 0.01,0.02,...,0.07].
    #[arg(long, value_delimiter = ',')]
    eps: Option<Vec<f64>>,
    /// Attack of each restart [default: pgd]: pgd (PGD, sign steps of --step-ratio*eps), fgsm
    /// (one sign step of eps; no random start, so it runs once whatever --restarts says), apgd
    /// (APGD with AutoAttack's step-size schedule; --loss ce for APGD-CE, dlr for APGD-DLR),
    /// mpgd (momentum PGD / MI-FGSM, decay --momentum).
    #[arg(long, value_name = "ATTACK", value_parser = attack_name)]
    attack: Option<String>,
    /// Momentum decay mu of --attack mpgd [default: 1.0]; only valid with mpgd.
    #[arg(long, value_name = "MU")]
    momentum: Option<f64>,
    /// Iterations of pgd, mpgd and apgd [default: 50].
    #[arg(long, value_parser = super::positive)]
    steps: Option<usize>,
    /// Step size of pgd and mpgd as a fraction of eps [default: 0.2].
    #[arg(long)]
    step_ratio: Option<f64>,
    /// Independent random restarts; robust = correct under all [default: 5].
    #[arg(long, value_parser = super::positive)]
    restarts: Option<usize>,
    /// Uniform random start of pgd and mpgd (true/false) [default: true].
    #[arg(long)]
    random_start: Option<bool>,
    /// Loss: ce, cw, cw:<kappa>, dlr [default: ce].
    #[arg(long, value_parser = super::parsed::<AttackLoss>)]
    loss: Option<AttackLoss>,
    /// Gradient samples per step against a random-path RGN (EOT) [default: 1].
    #[arg(long, value_parser = super::positive)]
    eot: Option<usize>,
    /// Images per batch [default: 500].
    #[arg(long, value_parser = super::positive)]
    batch: Option<usize>,
}

/// Common flags of commands that attack one model.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The model: eio file, released EIO RGN, DVERGE-layout state dict; ensembles are attacked
    /// through the log of their averaged softmax.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    #[command(flatten)]
    route: RouteArgs,
}

#[derive(Debug, Args)]
pub struct WhiteboxArgs {
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    images: ImagesArgs,
    /// TOML file with the protocol's settings (WhiteboxConfig fields); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: WhiteboxFlags,
    #[command(flatten)]
    out: OutputArgs,
    /// Per-image results as CSV: index in the test split, label, clean prediction,
    /// clean_correct, robust_eps<e> (1 = correct clean and under every restart at eps e).
    #[arg(long, value_name = "FILE")]
    per_image: Option<PathBuf>,
    /// Save each image's adversarial example per eps (the restart that fooled the model, else
    /// the last one) as transfer files DIR/<model>_eps<e>.safetensors, which `eio attack
    /// transfer-eval --set DIR` and Python readers take (format: docs/attacks.md).
    #[arg(long, value_name = "DIR")]
    save_adv: Option<PathBuf>,
}

impl WhiteboxFlags {
    /// `cfg` with the flags given: `--attack` replaces its attack by the named one, the other
    /// attack flags then set the fields they name.
    fn apply(&self, mut cfg: WhiteboxConfig) -> Result<WhiteboxConfig> {
        if let Some(name) = &self.attack {
            cfg.attack = named_attack(name)?;
        }
        if self.momentum.is_some() && cfg.attack.name() != "mpgd" {
            bail!("--momentum applies only to --attack mpgd, not {}", cfg.attack.name());
        }
        // FGSM steps eps and APGD adapts its step, from the clean image: these would be
        // ignored silently (the attack may come from a --config file, not --attack).
        if !matches!(cfg.attack, AttackConfig::Pgd(_)) {
            let given = [
                ("--step-ratio", self.step_ratio.is_some()),
                ("--random-start", self.random_start.is_some()),
            ];
            if let Some((flag, _)) = given.into_iter().find(|(_, g)| *g) {
                bail!(
                    "{flag} applies only to the PGD attacks (pgd, mpgd), not {}",
                    cfg.attack.name()
                );
            }
        }
        if matches!(cfg.attack, AttackConfig::Fgsm(_)) && self.steps.is_some() {
            bail!("--steps applies to pgd, mpgd and apgd; fgsm takes one step of eps");
        }
        let mut attack = AttackOverrides {
            steps: self.steps,
            step_ratio: self.step_ratio,
            restarts: self.restarts,
            loss: self.loss,
            eot: self.eot,
        }
        .apply(cfg.attack);
        if let AttackConfig::Pgd(p) = &mut attack {
            p.random_start = self.random_start.unwrap_or(p.random_start);
            p.momentum = self.momentum.or(p.momentum);
        }
        cfg.attack = attack;
        if let Some(eps) = &self.eps {
            cfg.eps = eps.clone();
        }
        if let Some(batch) = self.batch {
            cfg.batch = batch;
        }
        Ok(cfg)
    }
}

fn run_whitebox(a: WhiteboxArgs) -> Result<()> {
    a.out.check(&[("--per-image", a.per_image.as_deref())])?;
    let cfg = a.flags.apply(load_config(a.config.as_deref())?)?;
    cfg.validate()?;
    let device = super::device()?;
    let model = super::model::load_model(&a.target.model, &a.target.route, device)?;
    let seed = Seed(super::seed());
    let routing = routing(&model, &a.target.route, &a.target.model)?;
    let describe = routing.to_string();
    let target = Target::new(&model, routing, seed)?;
    let (test, idx) = a.images.select(seed)?;
    let data = test.select(&idx);
    let stem: String = a
        .target
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .collect();
    let adv_file = |dir: &Path, eps: f64| dir.join(format!("{stem}_eps{eps}.safetensors"));
    if let Some(dir) = &a.save_adv {
        eio::fsx::check_dir_writable(dir)?;
        for &e in &cfg.eps {
            check_new_output(&adv_file(dir, e), a.out.force)?;
        }
    }
    // With a report file, a stopped run continues on the next start (see --json).
    let state = a.out.json.as_ref().map(|j| j.with_extension("state.json"));
    let (report, detail) = match (&state, &a.save_adv) {
        (Some(state), None) => whitebox_resumable(&target, &data, &cfg, device, seed, state)?,
        _ => whitebox_detailed(&target, &data, &cfg, device, seed, a.save_adv.is_some())?,
    };
    if let Some(p) = &a.per_image {
        write_atomic(p, detail.to_csv(&cfg.eps, &idx).as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(dir) = &a.save_adv {
        for (k, (&eps, adv)) in cfg.eps.iter().zip(&detail.adversarial).enumerate() {
            let attack = cfg.restart_attack(eps);
            let version = TransferVersion {
                key: format!("adv.{}.{}.0", attack.name(), attack.loss()),
                attack: attack.name().into(),
                loss: attack.loss(),
                restart: 0,
                config: cfg.attack.at_eps(eps),
                surrogate_fooled: Some(1.0 - report.rows[k].robust_accuracy),
            };
            let file = TransferFile {
                surrogate: stem.clone(),
                eps,
                seed: seed.0,
                images: data.len(),
                versions: vec![version.clone()],
            };
            let path = adv_file(dir, eps);
            save_examples(&path, &test, &idx, &file, vec![(version.key, adv.shallow_clone())])?;
            eprintln!("wrote {}", path.display());
        }
    }
    println!(
        "white-box {} ({describe}): {} images, {}",
        a.target.model.display(),
        report.images,
        cfg.describe()
    );
    println!("{:>8} {:>10}", "eps", "accuracy");
    println!("{:>8} {:>9.2}%", "clean", 100.0 * report.clean_accuracy);
    for r in &report.rows {
        println!("{:>8} {:>9.2}%", r.eps, 100.0 * r.robust_accuracy);
    }
    a.out.write(&report)
}

#[derive(Debug, Default, Args)]
pub struct TransferGenFlags {
    /// Radii, comma-separated.
    #[arg(long, value_delimiter = ',')]
    eps: Option<Vec<f64>>,
    /// Losses, comma-separated (ce, cw, cw:<kappa>).
    #[arg(long, value_delimiter = ',', value_parser = super::parsed::<AttackLoss>)]
    losses: Option<Vec<AttackLoss>>,
    /// Iterations per attack.
    #[arg(long, value_parser = super::positive)]
    steps: Option<usize>,
    /// Step size as a fraction of eps.
    #[arg(long)]
    step_ratio: Option<f64>,
    /// Images per batch.
    #[arg(long, value_parser = super::positive)]
    batch: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TransferGenArgs {
    /// Surrogate as NAME=FILE (repeat for several, e.g. base3=b3.safetensors); each file is a
    /// model or ensemble, attacked through its averaged softmax.
    #[arg(long = "surrogate", value_name = "NAME=FILE", required = true)]
    surrogates: Vec<String>,
    /// Output folder of the transfer set (one file per surrogate and eps; reruns resume).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    images: ImagesArgs,
    /// TOML file with TransferGenConfig fields (attacks, losses, eps, ...); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: TransferGenFlags,
    /// Replace files of --out made with other settings (by default they are an error).
    #[arg(long)]
    force: bool,
}

impl TransferGenFlags {
    /// `cfg` with the flags given; `--steps` and `--step-ratio` apply to every attack.
    fn apply(&self, mut cfg: TransferGenConfig) -> TransferGenConfig {
        if let Some(eps) = &self.eps {
            cfg.eps = eps.clone();
        }
        if let Some(losses) = &self.losses {
            cfg.losses = losses.clone();
        }
        let overrides = AttackOverrides {
            steps: self.steps,
            step_ratio: self.step_ratio,
            ..Default::default()
        };
        cfg.attacks = cfg.attacks.into_iter().map(|a| overrides.apply(a)).collect();
        if let Some(batch) = self.batch {
            cfg.batch = batch;
        }
        cfg
    }
}

fn run_transfer_gen(a: TransferGenArgs) -> Result<()> {
    let cfg = a.flags.apply(load_config(a.config.as_deref())?);
    let device = super::device()?;
    let seed = Seed(super::seed());
    let mut models = Vec::new();
    for s in &a.surrogates {
        let (name, file) =
            s.split_once('=').with_context(|| format!("--surrogate '{s}': expected NAME=FILE"))?;
        if name.trim().is_empty() || file.is_empty() {
            bail!("--surrogate '{s}': expected NAME=FILE with a non-empty name and file");
        }
        let (model, _) = Model::load(Path::new(file), device)?;
        models.push((name.to_string(), model));
    }
    let targets: Vec<Target> = models.iter().map(|(_, m)| Target::fixed_zero(m)).collect();
    let named: Vec<Named> =
        models.iter().zip(&targets).map(|((n, _), t)| Named::new(n.clone(), t)).collect();
    let (test, idx) = a.images.select(seed)?;
    let report = transfer_gen_with(&named, &test, &idx, &cfg, &a.out, device, seed, a.force)?;
    println!(
        "transfer set in {}: {} images, {} files, {:.0}s",
        a.out.display(),
        report.images,
        report.files.len(),
        report.seconds
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct TransferEvalArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Folder of a transfer set made by `eio attack transfer-gen`.
    #[arg(long, value_name = "DIR")]
    set: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 500, value_parser = super::positive)]
    batch: usize,
    #[command(flatten)]
    out: OutputArgs,
}

fn run_transfer_eval(a: TransferEvalArgs) -> Result<()> {
    a.out.check(&[])?;
    let device = super::device()?;
    let model = super::model::load_model(&a.target.model, &a.target.route, device)?;
    let routing = routing(&model, &a.target.route, &a.target.model)?;
    let target = Target::new(&model, routing, Seed(super::seed()))?;
    let files = transfer_files(&a.set)?;
    let report = transfer_eval(&target, &files, a.batch, device)?;
    println!(
        "black-box {} on {}: {} images",
        a.target.model.display(),
        a.set.display(),
        report.images
    );
    println!("{:>8} {:>14} {:>9} {:>10}", "eps", "attack", "versions", "accuracy");
    println!("{:>8} {:>14} {:>9} {:>9.2}%", "clean", "-", 1, 100.0 * report.clean_accuracy);
    for r in report.rows.iter().filter(|r| r.surrogate.is_none() && r.loss.is_none()) {
        let attack = r.attack.clone().unwrap_or_else(|| "all".into());
        println!(
            "{:>8} {:>14} {:>9} {:>9.2}%",
            r.eps,
            attack,
            r.versions,
            100.0 * r.robust_accuracy
        );
    }
    a.out.write(&report)
}

#[derive(Debug, Default, Args)]
pub struct TransferabilityFlags {
    /// Radius.
    #[arg(long)]
    eps: Option<f64>,
    /// PGD iterations.
    #[arg(long, value_parser = super::positive)]
    steps: Option<usize>,
    /// Random restarts.
    #[arg(long, value_parser = super::positive)]
    restarts: Option<usize>,
    /// Loss: ce, cw, cw:<kappa>.
    #[arg(long, value_parser = super::parsed::<AttackLoss>)]
    loss: Option<AttackLoss>,
    /// Images that every member classifies correctly.
    #[arg(long, value_parser = super::positive)]
    images: Option<usize>,
}

#[derive(Debug, Args)]
pub struct TransferabilityArgs {
    /// An ensemble (its members), or an RGN (K random paths, see --paths).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// For an RGN: number of random paths to compare.
    #[arg(long, default_value_t = 3, value_name = "K", value_parser = super::positive)]
    paths: usize,
    #[command(flatten)]
    data: DataArgs,
    /// TOML file with TransferabilityConfig fields; flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: TransferabilityFlags,
    #[command(flatten)]
    out: OutputArgs,
}

impl TransferabilityFlags {
    /// `cfg` with the flags given.
    fn apply(&self, mut cfg: TransferabilityConfig) -> TransferabilityConfig {
        cfg.eps = self.eps.unwrap_or(cfg.eps);
        cfg.attack = AttackOverrides {
            steps: self.steps,
            restarts: self.restarts,
            loss: self.loss,
            ..Default::default()
        }
        .apply(cfg.attack);
        cfg.images = self.images.unwrap_or(cfg.images);
        cfg
    }
}

fn run_transferability(a: TransferabilityArgs) -> Result<()> {
    a.out.check(&[])?;
    let cfg = a.flags.apply(load_config(a.config.as_deref())?);
    let device = super::device()?;
    let seed = Seed(super::seed());
    let (model, _) = Model::load(&a.model, device)?;
    let members = members(&model, &a.model.display().to_string(), a.paths, seed)?;
    let targets: Vec<Target> = members.iter().map(|(_, m)| Target::fixed_zero(m)).collect();
    let named: Vec<Named> =
        members.iter().zip(&targets).map(|((n, _), t)| Named::new(n.clone(), t)).collect();
    let whole = Target::fixed_zero(&model);
    let ensemble: Option<&dyn eio::model::Classifier> =
        (model.gates() == 0).then_some(&whole as &dyn eio::model::Classifier);
    let test = a.data.load(Split::Test, None)?;
    let report = transferability(&named, ensemble, &test, &cfg, device, seed)?;
    println!(
        "transferability (attack success rate, row = source, column = judge), eps {}, {} images",
        cfg.eps, report.images
    );
    for (i, row) in report.success.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{:6.1}%", 100.0 * v)).collect();
        println!("{:<4} {}", i, cells.join(" "));
    }
    a.out.write(&report)
}
