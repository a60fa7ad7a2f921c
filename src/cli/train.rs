//! `eio train ...` and `eio finetune`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};

use super::config::resolve;
use super::{DataArgs, DeviceArg};
use eio::data::Split;
use eio::model::{ArchConfig, Augment, Model, ModelSpec};
use eio::optim::SgdConfig;
use eio::seed::Seed;
use eio::train::eio::{Eio, EioConfig, LayerPer};
use eio::train::methods::{Independent, RgnWarmup};
use eio::train::{fit, Method, RunDir, TrainConfig};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// ResNet-20, or an ensemble of N independently trained ones (SGD 0.1, momentum 0.9,
    /// wd 1e-4, x0.1 at 50% and 75% of the epochs, crop+flip augmentation).
    Baseline(BaselineArgs),
    /// Warm up a Random Gated Network: a fresh uniformly random path per batch, clean data
    /// (paper Alg. 1, lines 1-7).
    RgnWarmup(RgnWarmupArgs),
    /// Ensemble-in-One vulnerability diversification of an RGN (paper Alg. 1, lines 8-26):
    /// per batch a distillation layer, p paths with distinct gate prefixes, feature-distilled
    /// data per path, round-robin cross-training, one optimiser step. Starts from --init (a
    /// warm-up model or checkpoint), or warms up first for --warmup-epochs into OUT/warmup.
    Eio(Box<EioArgs>),
}

/// Flags every training run takes (not part of the configuration).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run folder: checkpoint.safetensors, model.safetensors, config.toml, metrics.csv, train.log.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Start over even if --out holds a run.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// TOML configuration ([train], [optim], ... tables); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    #[command(flatten)]
    pub data: DataArgs,
}

impl RunArgs {
    fn run_dir(&self) -> RunDir {
        RunDir { dir: self.out.clone(), resume: self.resume, force: self.force }
    }
}

/// Overrides of [`TrainConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct TrainFlags {
    /// Master seed of every random choice.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Number of epochs.
    #[arg(long, value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Batch size.
    #[arg(long, value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Use only the first N training images of each class.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_per_class: Option<usize>,
    /// Evaluate on the first N test images of each class after each epoch.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_per_class: Option<usize>,
    /// Also checkpoint every N steps within an epoch.
    #[arg(long, value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Random crop + flip of training images (true/false).
    #[arg(long = "data-augment", id = "data_augment", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
}

/// Overrides of [`SgdConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct OptimFlags {
    /// Initial learning rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// SGD momentum.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// Weight decay.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Nesterov momentum (true/false).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
    /// Epochs where the learning rate decays, e.g. 100,150 (default: 50% and 75% of the run).
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milestones: Option<Vec<usize>>,
    /// Learning-rate decay factor.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
}

/// Overrides of [`ArchConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct ArchFlags {
    /// Copies per Random Gated Block (augmentation factor n).
    #[arg(long, value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<usize>,
    /// Gated layers: all (21), conv3x3 (19), top<k> (first k of 21), none.
    #[arg(long, value_parser = parse_augment)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Copies share the conv weight and differ in BatchNorm only (released-code variant).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_conv: Option<bool>,
}

fn parse_augment(s: &str) -> std::result::Result<Augment, String> {
    s.parse().map_err(|e: eio::Error| e.to_string())
}

/// `eio train baseline` configuration file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// Number of independently trained ResNet-20s.
    pub members: usize,
    /// Loop settings.
    pub train: TrainConfig,
    /// Optimiser.
    pub optim: SgdConfig,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig { members: 1, train: TrainConfig::default(), optim: SgdConfig::default() }
    }
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Number of independently trained ResNet-20s.
    #[arg(long, value_parser = super::positive)]
    members: Option<usize>,
    #[command(flatten)]
    train: TrainFlags,
    #[command(flatten)]
    optim: OptimFlags,
}

#[derive(Serialize)]
struct BaselineOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<usize>,
    train: &'a TrainFlags,
    optim: &'a OptimFlags,
}

/// `eio train rgn-warmup` configuration file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmupConfig {
    /// The RGN.
    pub arch: ArchConfig,
    /// Loop settings.
    pub train: TrainConfig,
    /// Optimiser.
    pub optim: SgdConfig,
}

impl Default for WarmupConfig {
    fn default() -> Self {
        WarmupConfig {
            arch: ArchConfig::rgn(2),
            train: TrainConfig::default(),
            optim: SgdConfig::default(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RgnWarmupArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    arch: ArchFlags,
    #[command(flatten)]
    train: TrainFlags,
    #[command(flatten)]
    optim: OptimFlags,
}

#[derive(Serialize)]
struct WarmupOverrides<'a> {
    arch: &'a ArchFlags,
    train: &'a TrainFlags,
    optim: &'a OptimFlags,
}

/// Trains `spec` from scratch (or resumes) with `method`.
pub fn train_new(
    run: &RunArgs,
    spec: &ModelSpec,
    method: &mut dyn Method,
    train: &TrainConfig,
    optim: &SgdConfig,
    text: &str,
) -> Result<()> {
    let device = run.device.device()?;
    let mut model = Model::new(spec, device, Seed(train.seed))?;
    train_model(run, &mut model, method, train, optim, text)
}

/// Trains an existing `model` (or resumes its run) with `method`.
pub fn train_model(
    run: &RunArgs,
    model: &mut Model,
    method: &mut dyn Method,
    train: &TrainConfig,
    optim: &SgdConfig,
    text: &str,
) -> Result<()> {
    train.validate()?;
    optim.validate()?;
    let train_set = run.data.load(Split::Train, train.train_per_class)?;
    let test_set = run.data.load(Split::Test, train.test_per_class)?;
    fit(model, method, train, optim, text, &train_set, &test_set, &run.run_dir())?;
    Ok(())
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Eio(a) => train_eio(*a),
        TrainCommand::Baseline(a) => {
            let o = BaselineOverrides { members: a.members, train: &a.train, optim: &a.optim };
            let (cfg, text) = resolve::<BaselineConfig>(a.run.config.as_deref(), &o)?;
            if cfg.members == 0 {
                bail!("--members must be at least 1");
            }
            let spec = ModelSpec { arch: ArchConfig::plain(), members: cfg.members };
            train_new(&a.run, &spec, &mut Independent, &cfg.train, &cfg.optim, &text)
        }
        TrainCommand::RgnWarmup(a) => {
            let o = WarmupOverrides { arch: &a.arch, train: &a.train, optim: &a.optim };
            let (cfg, text) = resolve::<WarmupConfig>(a.run.config.as_deref(), &o)?;
            cfg.arch.validate()?;
            if cfg.arch.is_plain() {
                bail!("rgn-warmup needs gated blocks: --copies >= 2 and --augment other than none");
            }
            let spec = ModelSpec { arch: cfg.arch.clone(), members: 1 };
            train_new(&a.run, &spec, &mut RgnWarmup, &cfg.train, &cfg.optim, &text)
        }
    }
}

/// `eio finetune` configuration file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Loop settings.
    pub train: TrainConfig,
    /// Optimiser.
    pub optim: SgdConfig,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            train: TrainConfig { epochs: 40, ..TrainConfig::default() },
            optim: SgdConfig { lr: 1e-3, ..SgdConfig::default() },
        }
    }
}

#[derive(Debug, Args)]
pub struct FinetuneArgs {
    /// The plain model (or ensemble of plain models) to fine-tune, e.g. from `eio derive`.
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    train: TrainFlags,
    #[command(flatten)]
    optim: OptimFlags,
}

#[derive(Serialize)]
struct FinetuneOverrides<'a> {
    train: &'a TrainFlags,
    optim: &'a OptimFlags,
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let o = FinetuneOverrides { train: &a.train, optim: &a.optim };
    let (cfg, text) = resolve::<FinetuneConfig>(a.run.config.as_deref(), &o)?;
    let text = format!("# fine-tuning {}\n{text}", a.model.display());
    let (mut model, _) = Model::load(&a.model, a.run.device.device()?)?;
    if !model.spec.arch.is_plain() {
        bail!(
            "{}: fine-tune a plain model; derive one from the RGN first (eio derive)",
            a.model.display()
        );
    }
    train_model(&a.run, &mut model, &mut Independent, &cfg.train, &cfg.optim, &text)
}

/// `eio train eio` configuration file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EioTrainConfig {
    /// Without --init: warm-up epochs (random path per batch, clean data) run first, into
    /// OUT/warmup, with the same [train] (but this many epochs) and [optim] settings; 0 = start
    /// diversification from a freshly initialised RGN.
    pub warmup_epochs: usize,
    /// The RGN (must match the --init model).
    pub arch: ArchConfig,
    /// Loop settings.
    pub train: TrainConfig,
    /// Optimiser.
    pub optim: SgdConfig,
    /// Vulnerability diversification.
    pub eio: EioConfig,
}

impl Default for EioTrainConfig {
    fn default() -> Self {
        EioTrainConfig {
            warmup_epochs: 0,
            arch: ArchConfig::rgn(2),
            train: TrainConfig::default(),
            optim: SgdConfig::default(),
            eio: EioConfig::default(),
        }
    }
}

/// Overrides of [`EioConfig`] and of its distillation and adversarial-training settings.
#[derive(Debug, Default, Args, Serialize)]
pub struct EioFlags {
    /// Paths sampled per batch (p).
    #[arg(long, value_name = "P", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<usize>,
    /// Redraw the distillation layer every batch (EIO code) or every epoch (DVERGE).
    #[arg(long, value_parser = parse_layer_per, value_name = "batch|epoch")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_per: Option<LayerPer>,
    /// Always distil at this feature layer (1..=20) instead of drawing it.
    #[arg(long, value_name = "L")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    #[command(flatten)]
    #[serde(skip_serializing_if = "DistillFlags::is_empty")]
    pub distill: DistillFlags,
    #[command(flatten)]
    #[serde(skip_serializing_if = "AdvFlags::is_empty")]
    pub adv: AdvFlags,
}

fn parse_layer_per(s: &str) -> std::result::Result<LayerPer, String> {
    s.parse().map_err(|e: eio::Error| e.to_string())
}

/// Overrides of [`eio::distill::DistillConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct DistillFlags {
    /// Distillation radius eps_d (L-infinity, pixel units).
    #[arg(id = "distill_eps", long = "distill-eps", value_name = "EPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// Distillation steps.
    #[arg(id = "distill_steps", long = "distill-steps", value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Distillation step size.
    #[arg(id = "distill_step_size", long = "distill-step-size", value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    /// Random start in the eps_d ball (true: EIO code; false: DVERGE).
    #[arg(id = "distill_random_start", long = "distill-random-start", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_start: Option<bool>,
    /// L1-normalised gradient momentum, mu = 1 (true: DVERGE; false: EIO code).
    #[arg(id = "distill_momentum", long = "distill-momentum", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub momentum: Option<bool>,
    /// BatchNorm in train mode while distilling (true: DVERGE; false: EIO code).
    #[arg(id = "distill_bn_train", long = "distill-bn-train", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_train: Option<bool>,
    /// Match features before the ReLU (true: DVERGE; false: EIO code).
    #[arg(id = "distill_before_relu", long = "distill-before-relu", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_relu: Option<bool>,
}

impl DistillFlags {
    fn is_empty(&self) -> bool {
        self.eps.is_none()
            && self.steps.is_none()
            && self.step_size.is_none()
            && self.random_start.is_none()
            && self.momentum.is_none()
            && self.bn_train.is_none()
            && self.before_relu.is_none()
    }
}

/// Overrides of the adversarial-training term (Eq. 5). Any --adv-* flag turns it on.
#[derive(Debug, Default, Args, Serialize)]
pub struct AdvFlags {
    /// Add CE on PGD examples made against each sampled path (Eq. 5; default PGD: eps 8/255,
    /// step 2/255, 10 steps, random start, train-mode BatchNorm). false removes a configured one.
    #[arg(id = "adv", long = "adv", value_name = "BOOL")]
    #[serde(skip)]
    pub on: Option<bool>,
    /// PGD radius of the adversarial term.
    #[arg(id = "adv_eps", long = "adv-eps", value_name = "EPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// PGD step size of the adversarial term.
    #[arg(id = "adv_step_size", long = "adv-step-size", value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_size: Option<f64>,
    /// PGD steps of the adversarial term.
    #[arg(id = "adv_steps", long = "adv-steps", value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Random start of the adversarial term's PGD.
    #[arg(id = "adv_random_start", long = "adv-random-start", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_start: Option<bool>,
    /// BatchNorm in train mode while crafting the adversarial examples.
    #[arg(id = "adv_bn_train", long = "adv-bn-train", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bn_train: Option<bool>,
}

impl AdvFlags {
    /// True when no flag turns the term on or changes it (`--adv false` alone counts as empty:
    /// it is applied after the merge).
    fn is_empty(&self) -> bool {
        self.on != Some(true)
            && self.eps.is_none()
            && self.step_size.is_none()
            && self.steps.is_none()
            && self.random_start.is_none()
            && self.bn_train.is_none()
    }
}

#[derive(Debug, Args)]
pub struct EioArgs {
    /// RGN to diversify: the warm-up run's model.safetensors or checkpoint.safetensors (or any
    /// eio RGN file, e.g. an imported released checkpoint). Without it the RGN is built fresh and
    /// warmed up for --warmup-epochs first.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Without --init: warm-up epochs run first into OUT/warmup (0 = none).
    #[arg(long, value_name = "N")]
    warmup_epochs: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    arch: ArchFlags,
    #[command(flatten)]
    train: TrainFlags,
    #[command(flatten)]
    optim: OptimFlags,
    #[command(flatten)]
    eio: EioFlags,
}

#[derive(Serialize)]
struct EioOverrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_epochs: Option<usize>,
    arch: &'a ArchFlags,
    train: &'a TrainFlags,
    optim: &'a OptimFlags,
    eio: &'a EioFlags,
}

fn train_eio(a: EioArgs) -> Result<()> {
    let o = EioOverrides {
        warmup_epochs: a.warmup_epochs,
        arch: &a.arch,
        train: &a.train,
        optim: &a.optim,
        eio: &a.eio,
    };
    let (mut cfg, _) = resolve::<EioTrainConfig>(a.run.config.as_deref(), &o)?;
    if a.eio.adv.on == Some(false) {
        cfg.eio.adv = None;
    }
    let text = toml::to_string(&cfg)?;
    cfg.arch.validate()?;
    cfg.eio.validate()?;
    if cfg.arch.is_plain() {
        bail!("eio needs an RGN: --copies >= 2 and --augment other than none");
    }
    let spec = ModelSpec { arch: cfg.arch.clone(), members: 1 };
    let device = a.run.device.device()?;
    let mut method = Eio::new(cfg.eio.clone())?;
    let (mut model, text) = match &a.init {
        Some(init) => {
            if cfg.warmup_epochs > 0 {
                bail!("--init starts from a warmed-up RGN: drop --warmup-epochs / warmup_epochs");
            }
            let (model, _) = Model::load(init, device)?;
            if model.spec != spec {
                bail!(
                    "{} holds {:?} but the configuration asks for {:?}: pass matching \
                     --copies/--augment/--share-conv (or a config with a matching [arch])",
                    init.display(),
                    model.spec,
                    spec
                );
            }
            (model, format!("# initialised from {}\n{text}", init.display()))
        }
        None if cfg.warmup_epochs > 0 => {
            let warm = RunArgs {
                out: a.run.out.join("warmup"),
                resume: a.run.resume,
                force: a.run.force,
                config: None,
                device: a.run.device,
                data: a.run.data.clone(),
            };
            let wcfg = WarmupConfig {
                arch: cfg.arch.clone(),
                train: TrainConfig { epochs: cfg.warmup_epochs, ..cfg.train.clone() },
                optim: cfg.optim.clone(),
            };
            let wtext = toml::to_string(&wcfg)?;
            train_new(&warm, &spec, &mut RgnWarmup, &wcfg.train, &wcfg.optim, &wtext)?;
            let (model, _) = Model::load(&warm.run_dir().model(), device)?;
            (model, text)
        }
        None => (Model::new(&spec, device, Seed(cfg.train.seed))?, text),
    };
    train_model(&a.run, &mut model, &mut method, &cfg.train, &cfg.optim, &text)
}

#[cfg(test)]
mod eio_tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        cmd: TrainCommand,
    }

    fn resolved(args: &[&str]) -> EioTrainConfig {
        let w = Wrap::try_parse_from(["eio"].iter().chain(args)).unwrap();
        let TrainCommand::Eio(a) = w.cmd else { panic!("not eio") };
        let o = EioOverrides {
            warmup_epochs: a.warmup_epochs,
            arch: &a.arch,
            train: &a.train,
            optim: &a.optim,
            eio: &a.eio,
        };
        let (mut cfg, _) = resolve::<EioTrainConfig>(a.run.config.as_deref(), &o).unwrap();
        if a.eio.adv.on == Some(false) {
            cfg.eio.adv = None;
        }
        cfg
    }

    #[test]
    fn every_eio_flag_reaches_the_config() {
        let c = resolved(&[
            "eio",
            "--out",
            "x",
            "--paths",
            "4",
            "--layer-per",
            "epoch",
            "--layer",
            "7",
            "--distill-eps",
            "0.05",
            "--distill-steps",
            "7",
            "--distill-step-size",
            "0.01",
            "--distill-random-start",
            "false",
            "--distill-momentum",
            "true",
            "--distill-bn-train",
            "true",
            "--distill-before-relu",
            "true",
            "--adv-eps",
            "0.02",
            "--adv-step-size",
            "0.005",
            "--adv-steps",
            "3",
            "--adv-random-start",
            "false",
            "--adv-bn-train",
            "false",
            "--momentum",
            "0.5",
            "--epochs",
            "9",
            "--copies",
            "3",
            "--augment",
            "top7",
            "--warmup-epochs",
            "2",
        ]);
        assert_eq!(c.warmup_epochs, 2);
        assert_eq!((c.arch.copies, c.arch.augment), (3, Augment::Top(7)));
        assert_eq!((c.optim.momentum, c.train.epochs), (0.5, 9));
        let e = &c.eio;
        assert_eq!((e.paths, e.layer_per, e.layer), (4, LayerPer::Epoch, Some(7)));
        let d = &e.distill;
        assert_eq!((d.eps, d.steps, d.step_size), (0.05, 7, 0.01));
        assert!(!d.random_start && d.momentum && d.bn_train && d.before_relu);
        let a = e.adv.as_ref().expect("--adv-* turns the term on");
        assert_eq!((a.eps, a.step_size, a.steps), (0.02, 0.005, 3));
        assert!(!a.random_start && !a.bn_train);

        let c = resolved(&["eio", "--out", "x"]);
        assert_eq!(c.eio, EioConfig::default());
        let c = resolved(&["eio", "--out", "x", "--adv", "true"]);
        assert_eq!(c.eio.adv, Some(Default::default()));
        let c = resolved(&["eio", "--out", "x", "--adv", "false", "--adv-steps", "2"]);
        assert_eq!(c.eio.adv, None);
    }

    #[test]
    fn presets_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for name in ["eio-paper.toml", "eio-code.toml", "eio-cpu.toml"] {
            let path = dir.join(name);
            let path = path.to_str().unwrap();
            let c = resolved(&["eio", "--out", "x", "--config", path]);
            c.eio.validate().unwrap();
            c.arch.validate().unwrap();
        }
    }
}
