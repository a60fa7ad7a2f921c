//! `eio train <method>` and `eio finetune`: flags -> [`TrainSpec`] -> [`fit`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::DataArgs;
use eio::attack::AttackConfig;
use eio::data::Split;
use eio::model::{Augment, Model};
use eio::seed::Seed;
use eio::train::adp::AdpConfig;
use eio::train::adv::AdvTerm;
use eio::train::config::{resolve, resolve_finetune};
use eio::train::diversify::LayerPer;
use eio::train::dverge::DvergeConfig;
use eio::train::eio::EioConfig;
use eio::train::gal::GalConfig;
use eio::train::trs::TrsConfig;
use eio::train::{fit, MethodConfig, RunDir, TrainSpec};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// ResNet-20, or an ensemble of N independently trained ones (SGD 0.1, momentum 0.9,
    /// wd 1e-4, x0.1 at 50% and 75% of the epochs, crop+flip augmentation).
    Baseline(MethodArgs<NoFlags>),
    /// Warm up a Random Gated Network: a fresh uniformly random path per batch, clean data
    /// (paper Alg. 1, lines 1-7).
    RgnWarmup(MethodArgs<NoFlags>),
    /// Ensemble-in-One vulnerability diversification of an RGN (paper Alg. 1, lines 8-26):
    /// per batch a distillation layer, p paths with distinct gate prefixes, feature-distilled
    /// data per path, round-robin cross-training, one optimiser step. Starts from --init (a
    /// warm-up model or checkpoint), or warms up first for --warmup-epochs into OUT/warmup.
    Eio(Box<MethodArgs<EioFlags>>),
    /// DVERGE (Yang et al. 2020): every member distils its non-robust features and trains on
    /// the other members' distilled batches (layer drawn per epoch, DVERGE distillation, one
    /// SGD per member). Starts from a trained baseline ensemble (--init), or trains one first
    /// for --warmup-epochs into OUT/warmup. --adv true gives DVERGE+AdvT.
    Dverge(Box<MethodArgs<DvergeFlags>>),
    /// ADP (Pang et al. 2019): sum of CE - alpha * ensemble entropy - beta * log-det of the
    /// members' non-maximal predictions; Adam lr 1e-3. --adv true gives ADP+AdvT.
    Adp(Box<MethodArgs<AdpFlags>>),
    /// GAL (Kariyappa & Qureshi 2019): mean CE + lambda * log-sum-exp of the pairwise cosine
    /// similarities of the members' input gradients (double backprop); leaky ReLU 0.1, Gaussian
    /// noise augmentation; Adam lr 1e-3. --adv true gives GAL+AdvT.
    Gal(Box<MethodArgs<GalFlags>>),
    /// TRS (Yang et al. 2021): sum of CE + scale * (coeff * gradient similarity + lamda *
    /// gradient magnitude on a PGD vicinity); Adam lr 1e-3.
    Trs(Box<MethodArgs<TrsFlags>>),
    /// PGD adversarial training (Madry et al. 2018) of one ResNet-20 or an ensemble: every
    /// member trains on PGD examples (8/255, step 2/255, 10 steps, random start) made against
    /// the whole model.
    Adv(Box<MethodArgs<AdvOnlyFlags>>),
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
    /// TOML configuration (warmup_epochs, members, [arch], [train], [optim], [method.<name>];
    /// for `eio finetune` only [train] and [optim]); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

impl RunArgs {
    fn run_dir(&self) -> RunDir {
        RunDir { dir: self.out.clone(), resume: self.resume, force: self.force }
    }
}

/// Overrides of [`eio::train::TrainConfig`].
#[derive(Debug, Default, Clone, Args, Serialize)]
pub struct TrainFlags {
    /// The global --seed (filled in by [`TrainFlags::with_seed`]).
    #[arg(skip)]
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
    /// Also checkpoint every N steps within an epoch (and at least every 10 minutes).
    #[arg(long, value_name = "N", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Random crop + flip of training images (true/false).
    #[arg(long = "data-augment", id = "data_augment", value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
}

impl TrainFlags {
    /// These flags with the global `--seed` (when given it overrides the --config file's).
    fn with_seed(&self) -> TrainFlags {
        TrainFlags { seed: super::seed_override(), ..self.clone() }
    }
}

/// Overrides of [`eio::optim::OptimConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct OptimFlags {
    /// Update rule: sgd or adam (default: the method's).
    #[arg(long = "optimizer", id = "optimizer", value_name = "sgd|adam", value_parser = super::parsed::<eio::optim::Algorithm>)]
    #[serde(rename = "algorithm", skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<eio::optim::Algorithm>,
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
    /// Learning-rate decay factor (> 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
}

/// Overrides of the model: ensemble size and [`eio::model::ArchConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct ModelFlags {
    /// Number of member networks (ensembles; default: 1, or 3 for DVERGE, ADP, GAL and TRS).
    #[arg(long, value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    #[command(flatten)]
    #[serde(rename = "arch")]
    pub arch: ArchFlags,
}

/// Overrides of [`eio::model::ArchConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct ArchFlags {
    /// Copies per Random Gated Block (augmentation factor n).
    #[arg(long, value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<usize>,
    /// Gated layers: all (21), conv3x3 (19), top<k> (first k of 21), none.
    #[arg(long, value_parser = super::parsed::<Augment>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub augment: Option<Augment>,
    /// Copies share the conv weight and differ in BatchNorm only (released-code variant).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_conv: Option<bool>,
    /// Negative slope of leaky-ReLU activations (0 = ReLU; GAL's default 0.1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relu_slope: Option<f64>,
}

/// A method's own flags: the TOML table they override, and their adversarial-term flags.
pub trait MethodFlags: Args + Serialize {
    /// The method's default settings.
    fn method() -> MethodConfig;
    /// The adversarial-training flags, for methods that have them.
    fn adv(&self) -> Option<&AdvFlags> {
        None
    }
    /// True when no flag was given (nothing to override).
    fn is_empty(&self) -> bool {
        none_given(self)
    }
}

/// True when `flags` serialise to no value: no flag was given (flag groups count by what they
/// hold; flags marked `serde(skip)`, the --adv ones, are applied apart and do not count).
fn none_given(flags: &impl Serialize) -> bool {
    fn empty(v: &toml::Value) -> bool {
        match v {
            toml::Value::Table(t) => t.values().all(empty),
            _ => false,
        }
    }
    toml::Value::try_from(flags).is_ok_and(|v| empty(&v))
}

/// The flags of a `eio train <method>` command.
#[derive(Debug, Args)]
pub struct MethodArgs<F: MethodFlags> {
    /// Start from this model file or checkpoint (its architecture and ensemble size must match
    /// the configuration): the warm-up model for eio, the baseline ensemble for dverge.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Without --init: epochs of the warm-up run first into OUT/warmup (RGN warm-up for eio,
    /// baseline training for dverge; 0 = none).
    #[arg(long, value_name = "N")]
    warmup_epochs: Option<usize>,
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    model: ModelFlags,
    #[command(flatten)]
    train: TrainFlags,
    #[command(flatten)]
    optim: OptimFlags,
    #[command(flatten)]
    method: F,
}

/// No method flags.
#[derive(Debug, Default, Args, Serialize)]
pub struct NoFlags {}

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

/// The adversarial-training term ("+AdvT"). Any --adv-* flag turns it on; the flags change the
/// configured term, or the default one (PGD 8/255, step 2/255, 10 steps, random start,
/// train-mode BatchNorm).
#[derive(Debug, Default, Args, Serialize)]
pub struct AdvFlags {
    /// Add CE on PGD examples (EIO/DVERGE: against each path/member; ADP/GAL: against the
    /// ensemble). false removes a configured one.
    #[arg(id = "adv", long = "adv", value_name = "BOOL")]
    #[serde(skip)]
    pub on: Option<bool>,
    /// PGD radius of the adversarial term.
    #[arg(id = "adv_eps", long = "adv-eps", value_name = "EPS")]
    #[serde(skip)]
    pub eps: Option<f64>,
    /// PGD step size of the adversarial term.
    #[arg(id = "adv_step_size", long = "adv-step-size", value_name = "S")]
    #[serde(skip)]
    pub step_size: Option<f64>,
    /// PGD steps of the adversarial term.
    #[arg(id = "adv_steps", long = "adv-steps", value_name = "N", value_parser = super::positive)]
    #[serde(skip)]
    pub steps: Option<usize>,
    /// Random start of the adversarial term's PGD.
    #[arg(id = "adv_random_start", long = "adv-random-start", value_name = "BOOL")]
    #[serde(skip)]
    pub random_start: Option<bool>,
    /// BatchNorm in train mode while crafting the adversarial examples.
    #[arg(id = "adv_bn_train", long = "adv-bn-train", value_name = "BOOL")]
    #[serde(skip)]
    pub bn_train: Option<bool>,
}

impl AdvFlags {
    fn changes(&self) -> bool {
        self.eps.is_some()
            || self.step_size.is_some()
            || self.steps.is_some()
            || self.random_start.is_some()
            || self.bn_train.is_some()
    }

    /// The term after these flags: `--adv false` removes it; `--adv true` or any other flag
    /// turns it on (starting from the configured term, else the default).
    pub fn apply(&self, term: Option<AdvTerm>) -> Result<Option<AdvTerm>> {
        if self.on == Some(false) {
            if self.changes() {
                bail!("--adv false contradicts the --adv-* flags given with it");
            }
            return Ok(None);
        }
        if self.on != Some(true) && !self.changes() {
            return Ok(term);
        }
        let mut t = term.unwrap_or_default();
        if let Some(b) = self.bn_train {
            t.bn_train = b;
        }
        let AttackConfig::Pgd(p) = &mut t.attack else {
            if self.changes() {
                bail!("--adv-eps/--adv-step-size/--adv-steps/--adv-random-start set a PGD term; the configured term is not PGD");
            }
            return Ok(Some(t));
        };
        if let Some(e) = self.eps {
            p.eps = e;
            p.step_size = e / 4.0;
        }
        if let Some(s) = self.step_size {
            p.step_size = s;
        }
        if let Some(n) = self.steps {
            p.steps = n;
        }
        if let Some(r) = self.random_start {
            p.random_start = r;
        }
        t.validate()?;
        Ok(Some(t))
    }
}

/// Shared flags of the two diversification methods.
#[derive(Debug, Default, Args, Serialize)]
pub struct LayerFlags {
    /// Redraw the distillation layer every batch (EIO code) or every epoch (DVERGE).
    #[arg(long, value_parser = super::parsed::<LayerPer>, value_name = "batch|epoch")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_per: Option<LayerPer>,
    /// Always distil at this feature layer (1..=20) instead of drawing it.
    #[arg(long, value_name = "L")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
}

/// Overrides of [`EioConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct EioFlags {
    /// Paths sampled per batch (p).
    #[arg(long, value_name = "P", value_parser = super::positive)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paths: Option<usize>,
    #[command(flatten)]
    #[serde(flatten)]
    pub layer: LayerFlags,
    #[command(flatten)]
    pub distill: DistillFlags,
    #[command(flatten)]
    #[serde(skip)]
    pub adv: AdvFlags,
}

impl MethodFlags for EioFlags {
    fn method() -> MethodConfig {
        MethodConfig::Eio(EioConfig::default())
    }
    fn adv(&self) -> Option<&AdvFlags> {
        Some(&self.adv)
    }
}

/// Overrides of [`DvergeConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct DvergeFlags {
    #[command(flatten)]
    #[serde(flatten)]
    pub layer: LayerFlags,
    #[command(flatten)]
    pub distill: DistillFlags,
    #[command(flatten)]
    #[serde(skip)]
    pub adv: AdvFlags,
}

impl MethodFlags for DvergeFlags {
    fn method() -> MethodConfig {
        MethodConfig::Dverge(DvergeConfig::default())
    }
    fn adv(&self) -> Option<&AdvFlags> {
        Some(&self.adv)
    }
}

/// Overrides of [`AdpConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct AdpFlags {
    /// Weight of the ensemble entropy.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Weight of the log-determinant of the non-maximal predictions.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Offset added to the diagonal before the log-determinant.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub det_offset: Option<f64>,
    #[command(flatten)]
    #[serde(skip)]
    pub adv: AdvFlags,
}

impl MethodFlags for AdpFlags {
    fn method() -> MethodConfig {
        MethodConfig::Adp(AdpConfig::default())
    }
    fn adv(&self) -> Option<&AdvFlags> {
        Some(&self.adv)
    }
}

/// Overrides of [`GalConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct GalFlags {
    /// Weight of the gradient-coherence term.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// Standard deviation of the Gaussian-noise augmentation (0 = off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_std: Option<f64>,
    /// Probability that an image gets noise.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_prob: Option<f64>,
    #[command(flatten)]
    #[serde(skip)]
    pub adv: AdvFlags,
}

impl MethodFlags for GalFlags {
    fn method() -> MethodConfig {
        MethodConfig::Gal(GalConfig::default())
    }
    fn adv(&self) -> Option<&AdvFlags> {
        Some(&self.adv)
    }
}

/// Overrides of [`TrsConfig`].
#[derive(Debug, Default, Args, Serialize)]
pub struct TrsFlags {
    /// Weight of the gradient-similarity term.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coeff: Option<f64>,
    /// Weight of the smoothness term.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lamda: Option<f64>,
    /// Overall weight of both regularisers.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// Smoothness on the PGD vicinity batch (true, the published setting) or on clean inputs.
    #[arg(long, value_name = "BOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vicinity: Option<bool>,
    /// Vicinity radius at the first epoch.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_eps: Option<f64>,
    /// Vicinity radius reached at the last epoch.
    #[arg(long = "vicinity-eps", id = "vicinity_eps")]
    #[serde(rename = "adv_eps", skip_serializing_if = "Option::is_none")]
    pub adv_eps: Option<f64>,
    /// Steps of the vicinity PGD.
    #[arg(long = "vicinity-steps", id = "vicinity_steps", value_parser = super::positive)]
    #[serde(rename = "steps", skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Vicinity steps follow the sign of the gradients summed over the steps so far (true, the
    /// published code) or of each step's own gradient.
    #[arg(long = "vicinity-accumulate", id = "vicinity_accumulate", value_name = "BOOL")]
    #[serde(rename = "accumulate", skip_serializing_if = "Option::is_none")]
    pub accumulate: Option<bool>,
}

impl MethodFlags for TrsFlags {
    fn method() -> MethodConfig {
        MethodConfig::Trs(TrsConfig::default())
    }
}

/// Flags of `eio train adv`: the attack it trains on.
#[derive(Debug, Default, Args, Serialize)]
pub struct AdvOnlyFlags {
    #[command(flatten)]
    #[serde(skip)]
    pub adv: AdvFlags,
}

impl MethodFlags for AdvOnlyFlags {
    fn method() -> MethodConfig {
        MethodConfig::Adv(AdvTerm::default())
    }
    fn adv(&self) -> Option<&AdvFlags> {
        Some(&self.adv)
    }
}

impl MethodFlags for NoFlags {
    fn method() -> MethodConfig {
        MethodConfig::Baseline
    }
}

#[derive(Serialize)]
struct Overrides<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_epochs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    members: Option<usize>,
    arch: &'a ArchFlags,
    train: &'a TrainFlags,
    optim: &'a OptimFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<toml::Table>,
}

/// The configuration a command's flags ask for, on top of `base` and the --config file.
fn spec_of<F: MethodFlags>(a: &MethodArgs<F>, base: MethodConfig) -> Result<TrainSpec> {
    let name = base.name();
    let method = (!a.method.is_empty())
        .then(|| -> Result<toml::Table> {
            let mut t = toml::Table::new();
            t.insert(name.into(), toml::Value::try_from(&a.method)?);
            Ok(t)
        })
        .transpose()?;
    let o = Overrides {
        warmup_epochs: a.warmup_epochs,
        members: a.model.members,
        arch: &a.model.arch,
        train: &a.train.with_seed(),
        optim: &a.optim,
        method,
    };
    let mut spec = resolve(&TrainSpec::defaults(base), a.run.config.as_deref(), &o)?;
    if spec.method.name() != name {
        bail!(
            "{}: configures method '{}', but this is `eio train {name}`",
            a.run.config.as_deref().map_or("--config".into(), |p| p.display().to_string()),
            spec.method.name()
        );
    }
    if let Some(flags) = a.method.adv() {
        match &mut spec.method {
            MethodConfig::Adv(t) => match flags.apply(Some(t.clone()))? {
                Some(n) => *t = n,
                None => bail!("--adv false: `eio train adv` is adversarial training"),
            },
            m => {
                let slot = m.adv_mut().expect("methods with --adv flags have a term");
                *slot = flags.apply(slot.take())?;
            }
        }
    }
    spec.validate()?;
    Ok(spec)
}

/// Trains the model of `spec` (from `init`, after its warm-up, or fresh) into `run`.
fn train(run: &RunArgs, init: Option<&Path>, spec: &TrainSpec) -> Result<()> {
    let device = super::device()?;
    let mut text = spec.to_toml()?;
    let mut model = match (init, spec.warmup()) {
        (Some(_), Some(_)) => {
            bail!("--init starts from a trained model: drop --warmup-epochs / warmup_epochs")
        }
        (Some(init), None) => {
            let (model, _) = Model::load(init, device)?;
            if model.spec != spec.model_spec() {
                bail!(
                    "{} holds {} but the configuration asks for {}: pass matching --members / \
                     --copies / --augment / --share-conv / --relu-slope (or a config that matches)",
                    init.display(),
                    eio::model::io::describe(&model.spec),
                    eio::model::io::describe(&spec.model_spec())
                );
            }
            text = format!("# initialised from {}\n{text}", init.display());
            model
        }
        (None, Some(warm)) => {
            let wrun = RunDir { dir: run.out.join("warmup"), resume: run.resume, force: run.force };
            fit_spec(
                run,
                &warm,
                &mut Model::new(&warm.model_spec(), device, Seed(warm.train.seed))?,
                &wrun,
                &warm.to_toml()?,
            )?;
            Model::load(&wrun.model(), device)?.0
        }
        (None, None) => Model::new(&spec.model_spec(), device, Seed(spec.train.seed))?,
    };
    fit_spec(run, spec, &mut model, &run.run_dir(), &text)
}

fn fit_spec(
    run: &RunArgs,
    spec: &TrainSpec,
    model: &mut Model,
    dir: &RunDir,
    text: &str,
) -> Result<()> {
    let train_set = run.data.load(Split::Train, spec.train.train_per_class)?;
    let test_set = run.data.load(Split::Test, spec.train.test_per_class)?;
    let mut method = spec.build()?;
    fit(model, method.as_mut(), &spec.train, &spec.optim, text, &train_set, &test_set, dir)?;
    Ok(())
}

fn command<F: MethodFlags>(a: &MethodArgs<F>, base: MethodConfig) -> Result<()> {
    let spec = spec_of(a, base)?;
    train(&a.run, a.init.as_deref(), &spec)
}

pub fn run(cmd: TrainCommand) -> Result<()> {
    match cmd {
        TrainCommand::Baseline(a) => command(&a, MethodConfig::Baseline),
        TrainCommand::RgnWarmup(a) => command(&a, MethodConfig::RgnWarmup),
        TrainCommand::Eio(a) => command(&*a, EioFlags::method()),
        TrainCommand::Dverge(a) => command(&*a, DvergeFlags::method()),
        TrainCommand::Adp(a) => command(&*a, AdpFlags::method()),
        TrainCommand::Gal(a) => command(&*a, GalFlags::method()),
        TrainCommand::Trs(a) => command(&*a, TrsFlags::method()),
        TrainCommand::Adv(a) => command(&*a, AdvOnlyFlags::method()),
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
    let (mut model, _) = Model::load(&a.model, super::device()?)?;
    if !model.spec.arch.is_plain() {
        bail!(
            "{}: fine-tune a plain model; derive one from the RGN first (eio derive)",
            a.model.display()
        );
    }
    let o = FinetuneOverrides { train: &a.train.with_seed(), optim: &a.optim };
    let mut spec = resolve_finetune(a.run.config.as_deref(), &o)?;
    spec.members = model.spec.members;
    spec.arch = model.spec.arch.clone();
    spec.validate()?;
    let text = format!("# fine-tuning {}\n{}", a.model.display(), spec.to_toml()?);
    fit_spec(&a.run, &spec, &mut model, &a.run.run_dir(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(subcommand)]
        cmd: TrainCommand,
    }

    fn resolved(args: &[&str]) -> Result<TrainSpec> {
        let w = Wrap::try_parse_from(["eio"].iter().chain(args)).unwrap();
        match w.cmd {
            TrainCommand::Eio(a) => spec_of(&*a, EioFlags::method()),
            TrainCommand::Dverge(a) => spec_of(&*a, DvergeFlags::method()),
            TrainCommand::Adp(a) => spec_of(&*a, AdpFlags::method()),
            TrainCommand::Gal(a) => spec_of(&*a, GalFlags::method()),
            TrainCommand::Trs(a) => spec_of(&*a, TrsFlags::method()),
            TrainCommand::Adv(a) => spec_of(&*a, AdvOnlyFlags::method()),
            TrainCommand::Baseline(a) => spec_of(&a, MethodConfig::Baseline),
            TrainCommand::RgnWarmup(a) => spec_of(&a, MethodConfig::RgnWarmup),
        }
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
        ])
        .unwrap();
        assert_eq!(c.warmup_epochs, 2);
        assert_eq!((c.arch.copies, c.arch.augment), (3, Augment::Top(7)));
        assert_eq!((c.optim.momentum, c.train.epochs), (0.5, 9));
        let MethodConfig::Eio(e) = &c.method else { panic!("not eio") };
        assert_eq!((e.paths, e.layer_per, e.layer), (4, LayerPer::Epoch, Some(7)));
        let d = &e.distill;
        assert_eq!((d.eps, d.steps, d.step_size), (0.05, 7, 0.01));
        assert!(!d.random_start && d.momentum && d.bn_train && d.before_relu);
        let a = e.adv.as_ref().expect("--adv-* turns the term on");
        let AttackConfig::Pgd(p) = &a.attack else { panic!("PGD term") };
        assert_eq!((p.eps, p.step_size, p.steps), (0.02, 0.005, 3));
        assert!(!p.random_start && !a.bn_train);

        let c = resolved(&["eio", "--out", "x"]).unwrap();
        assert_eq!(c.method, MethodConfig::Eio(EioConfig::default()));
        let c = resolved(&["eio", "--out", "x", "--adv", "true"]).unwrap();
        let MethodConfig::Eio(e) = &c.method else { panic!("not eio") };
        assert_eq!(e.adv, Some(AdvTerm::default()));
        assert!(resolved(&["eio", "--out", "x", "--adv", "false", "--adv-steps", "2"]).is_err());
    }

    #[test]
    fn method_flags_reach_their_configs() {
        let c = resolved(&["adp", "--out", "x", "--alpha", "1.5", "--members", "5"]).unwrap();
        assert_eq!(c.members, 5);
        assert_eq!(c.optim.algorithm, eio::optim::Algorithm::Adam);
        let MethodConfig::Adp(a) = &c.method else { panic!() };
        assert_eq!((a.alpha, a.beta), (1.5, 0.5));
        let c = resolved(&["gal", "--out", "x", "--lambda", "0.2", "--adv", "true"]).unwrap();
        assert_eq!(c.arch.relu_slope, 0.1);
        let MethodConfig::Gal(g) = &c.method else { panic!() };
        assert!(g.lambda == 0.2 && g.adv.is_some());
        let c = resolved(&["trs", "--out", "x", "--vicinity", "false", "--vicinity-eps", "0.3"])
            .unwrap();
        let MethodConfig::Trs(t) = &c.method else { panic!() };
        assert!(!t.vicinity && t.adv_eps == 0.3 && t.accumulate);
        let c = resolved(&["trs", "--out", "x", "--vicinity-accumulate", "false"]).unwrap();
        let MethodConfig::Trs(t) = &c.method else { panic!() };
        assert!(t.vicinity && !t.accumulate);
        let c =
            resolved(&["dverge", "--out", "x", "--layer-per", "batch", "--adv", "true"]).unwrap();
        let MethodConfig::Dverge(d) = &c.method else { panic!() };
        assert!(d.layer_per == LayerPer::Batch && d.adv.is_some());
        let c = resolved(&["adv", "--out", "x", "--adv-eps", "0.0627", "--members", "3"]).unwrap();
        let MethodConfig::Adv(t) = &c.method else { panic!() };
        assert_eq!(eio::attack::Attack::eps(&t.attack), 0.0627);
        let c =
            resolved(&["baseline", "--out", "x", "--optimizer", "adam", "--lr", "0.01"]).unwrap();
        assert_eq!((c.optim.algorithm, c.optim.lr), (eio::optim::Algorithm::Adam, 0.01));
        // Ensembles of one are refused by the ensemble methods.
        assert!(resolved(&["dverge", "--out", "x", "--members", "1"]).is_err());
    }

    #[test]
    fn presets_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let spec: TrainSpec = toml::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.message()));
            spec.validate().unwrap();
            let cmd = spec.method.name().to_string();
            let c = resolved(&[&cmd, "--out", "x", "--config", path.to_str().unwrap()]).unwrap();
            assert_eq!(c, spec);
        }
    }
}
