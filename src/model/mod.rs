//! Models: ResNet-20, its Random Gated Network, ensembles, and the [`Classifier`] contract that
//! attacks and evaluation use.
//!
//! Contract: inputs are NCHW f32 in [0, 1]; normalisation is the model's first operation; outputs
//! are logits (for an ensemble, the log of the averaged softmax).

pub mod branch;
pub mod io;
pub mod pth;
pub mod resnet;
pub mod route;

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::error::{Error, Result};
use crate::seed::{Rng, Seed, Stream};
pub use branch::{Branch, BranchView};
pub use resnet::{Net, Tap, FEATURE_LAYERS};
pub use route::Route;

/// How the 4-D tensors (conv weights, activations) lie in memory: a choice of speed, not of
/// model. Files hold the same tensors either way. Channels-last (NHWC) makes a train step about
/// a fifth faster on 2 CPU cores (oneDNN) and a quarter to two thirds faster on an H100 (cuDNN;
/// results/bench.md); its sums run in another order, so numbers agree with the contiguous
/// layout within float rounding, not bit for bit, and a run's numbers are reproducible only
/// with the same layout (the run log names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// The layout measured fastest on the device: channels-last on the CPU and on CUDA (but
    /// see [`crate::train::layout_for`]: GAL and TRS train contiguous on the CPU).
    #[default]
    Auto,
    /// NCHW, libtorch's default layout.
    Contiguous,
    /// NHWC strides under NCHW shapes (`torch.channels_last`).
    ChannelsLast,
}

impl MemoryFormat {
    /// Whether `device` computes in channels-last under this choice.
    pub fn channels_last_on(self, device: Device) -> bool {
        match self {
            MemoryFormat::Auto => matches!(device, Device::Cpu | Device::Cuda(_)),
            MemoryFormat::Contiguous => false,
            MemoryFormat::ChannelsLast => true,
        }
    }
}

impl FromStr for MemoryFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(MemoryFormat::Auto),
            "contiguous" | "nchw" => Ok(MemoryFormat::Contiguous),
            "channels-last" | "channels_last" | "nhwc" => Ok(MemoryFormat::ChannelsLast),
            _ => Err(Error::config(format!(
                "unknown memory format '{s}': expected auto, contiguous or channels-last"
            ))),
        }
    }
}

static DEFAULT_FORMAT: AtomicU8 = AtomicU8::new(0);

/// Sets the layout of the models built from now on in this process (the CLI's
/// `--memory-format`); [`Model::set_memory_format`] changes one model.
pub fn set_default_memory_format(f: MemoryFormat) {
    DEFAULT_FORMAT.store(f as u8, Ordering::Relaxed);
}

/// The layout new models get.
pub fn default_memory_format() -> MemoryFormat {
    match DEFAULT_FORMAT.load(Ordering::Relaxed) {
        1 => MemoryFormat::Contiguous,
        2 => MemoryFormat::ChannelsLast,
        _ => MemoryFormat::Auto,
    }
}

/// Runs `f` with libtorch's one global generator seeded with `seed`, under a process-wide lock
/// that every eio use of that generator takes ([`Model::new`]'s initial weights too): what `f`
/// draws is a function of `seed` even while other threads draw, and their draws do not depend
/// on `f`. Code that draws from the global generator without it (`Tensor::rand`, `randn_like`)
/// while models are built elsewhere makes their weights, and so whole runs, irreproducible.
pub fn with_global_seed<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

static GROUP_MEMBERS: AtomicBool = AtomicBool::new(false);

/// Whether attacks and evaluation compute a plain ensemble's members as one grouped network
/// ([`Net::grouped_logits`]; the CLI's `--group-members`). Off by default: slower than one
/// member after the other both on 2 CPU cores and on an H100 (results/bench.md).
pub fn set_group_members(on: bool) {
    GROUP_MEMBERS.store(on, Ordering::Relaxed);
}

/// Whether plain ensembles are computed as one grouped network.
pub fn group_members() -> bool {
    GROUP_MEMBERS.load(Ordering::Relaxed)
}

/// `t` (4-D) with channels-last strides, or contiguous ones.
pub(crate) fn with_layout(t: &Tensor, channels_last: bool) -> Tensor {
    if channels_last {
        t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
    } else {
        t.contiguous()
    }
}

/// Which conv+BN slots of ResNet-20 become Random Gated Blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Augment {
    /// No gated block: a plain ResNet-20.
    None,
    /// All 21 convolutions, the 2 projection shortcuts included (paper).
    All,
    /// The 19 3x3 convolutions (released code).
    Conv3x3,
    /// The first k of the 21 slots in forward order (paper appendix, "topk").
    Top(usize),
}

impl FromStr for Augment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Augment::None),
            "all" | "21" => Ok(Augment::All),
            "conv3x3" | "19" => Ok(Augment::Conv3x3),
            _ => match s.strip_prefix("top").and_then(|k| k.parse::<usize>().ok()) {
                Some(k) if (1..=resnet::SLOTS).contains(&k) => Ok(Augment::Top(k)),
                _ => Err(Error::config(format!(
                    "unknown augmentation '{s}': expected all, conv3x3, none or top<k> with k in 1..=21"
                ))),
            },
        }
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Augment::None => f.write_str("none"),
            Augment::All => f.write_str("all"),
            Augment::Conv3x3 => f.write_str("conv3x3"),
            Augment::Top(k) => write!(f, "top{k}"),
        }
    }
}

impl TryFrom<String> for Augment {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Augment> for String {
    fn from(a: Augment) -> String {
        a.to_string()
    }
}

/// How a block adds its input where the shape changes (stride 2, more channels): the two
/// options of He et al. (arXiv:1512.03385, Sec. 3.3) used by CIFAR ResNet-20s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shortcut {
    /// Option B: a strided 1x1 convolution and BatchNorm (`shortcut.0`, `shortcut.1`), as in
    /// DVERGE's and the Ensemble-in-One code.
    #[default]
    Projection,
    /// Option A: the input subsampled by 2 and zero-padded with the new channels, no weights,
    /// as in akamaster/pytorch_resnet_cifar10 (`resnet.py`, `LambdaLayer`).
    Identity,
}

impl FromStr for Shortcut {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "projection" | "b" | "B" => Ok(Shortcut::Projection),
            "identity" | "a" | "A" => Ok(Shortcut::Identity),
            _ => Err(Error::config(format!(
                "unknown shortcut '{s}': expected projection (option B) or identity (option A)"
            ))),
        }
    }
}

/// Per-channel input normalisation `(x - mean) / std`, the first operation of every network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalization {
    /// Channel means (R, G, B) of [0, 1] inputs.
    pub mean: [f64; 3],
    /// Channel standard deviations (R, G, B).
    pub std: [f64; 3],
}

impl Normalization {
    /// The CIFAR-10 statistics eio trains with (DVERGE's and the EIO code's constants).
    pub const CIFAR10: Normalization = Normalization { mean: resnet::MEAN, std: resnet::STD };

    /// Parses `mean` and `std` written as three comma-separated numbers each (`0.5,0.5,0.5`).
    pub fn parse(mean: &str, std: &str) -> Result<Self> {
        let triple = |name: &str, s: &str| -> Result<[f64; 3]> {
            let v: Vec<f64> = s
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    Error::config(format!("{name} '{s}': expected three numbers a,b,c"))
                })?;
            v.try_into()
                .map_err(|_| Error::config(format!("{name} '{s}': expected three numbers a,b,c")))
        };
        let n = Normalization { mean: triple("mean", mean)?, std: triple("std", std)? };
        n.validate()?;
        Ok(n)
    }

    /// Checks the values are finite and the deviations positive.
    pub fn validate(&self) -> Result<()> {
        if self.mean.iter().chain(&self.std).any(|x| !x.is_finite())
            || self.std.iter().any(|&s| s <= 0.0)
        {
            return Err(Error::config(format!(
                "normalisation {self} is not usable: values must be finite and std positive"
            )));
        }
        Ok(())
    }

    /// True when `other` agrees to within the precision files store (f32).
    pub fn matches(&self, other: &Normalization) -> bool {
        self.mean
            .iter()
            .chain(&self.std)
            .zip(other.mean.iter().chain(&other.std))
            .all(|(a, b)| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0))
    }
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let j = |v: &[f64; 3]| v.map(|x| format!("{x}")).join(",");
        write!(f, "mean {} std {}", j(&self.mean), j(&self.std))
    }
}

/// Architecture of one network: ResNet-20, gated or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchConfig {
    /// Copies per gated block (the augmentation factor n); 1 = plain network.
    pub copies: usize,
    /// Which slots are gated.
    pub augment: Augment,
    /// Copies share the convolution weight and differ only in BatchNorm (released-code variant).
    pub share_conv: bool,
    /// Negative slope of the activations: 0 = ReLU; GAL's members use leaky ReLU 0.1. Left out
    /// of files when 0, so plain models keep their metadata.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub relu_slope: f64,
    /// Shortcut of the blocks that change shape; `identity` (option A) needs a plain network.
    /// Left out of files when `projection`.
    #[serde(default, skip_serializing_if = "is_projection")]
    pub shortcut: Shortcut,
    /// Channel means subtracted from the [0, 1] input (see [`Normalization`]). Left out of files
    /// when CIFAR-10's, so existing files keep their metadata.
    #[serde(default = "cifar_mean", skip_serializing_if = "is_cifar_mean")]
    pub mean: [f64; 3],
    /// Channel standard deviations dividing the input. Left out of files when CIFAR-10's.
    #[serde(default = "cifar_std", skip_serializing_if = "is_cifar_std")]
    pub std: [f64; 3],
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn is_projection(s: &Shortcut) -> bool {
    *s == Shortcut::Projection
}

fn cifar_mean() -> [f64; 3] {
    resnet::MEAN
}

fn cifar_std() -> [f64; 3] {
    resnet::STD
}

fn is_cifar_mean(m: &[f64; 3]) -> bool {
    *m == resnet::MEAN
}

fn is_cifar_std(s: &[f64; 3]) -> bool {
    *s == resnet::STD
}

impl ArchConfig {
    /// Plain ResNet-20.
    pub fn plain() -> Self {
        ArchConfig {
            copies: 1,
            augment: Augment::None,
            share_conv: false,
            relu_slope: 0.0,
            shortcut: Shortcut::Projection,
            mean: resnet::MEAN,
            std: resnet::STD,
        }
    }

    /// The paper's RGN: `copies` independent copies in all 21 slots.
    pub fn rgn(copies: usize) -> Self {
        ArchConfig { copies, augment: Augment::All, ..ArchConfig::plain() }
    }

    /// The input normalisation.
    pub fn normalization(&self) -> Normalization {
        Normalization { mean: self.mean, std: self.std }
    }

    /// The same architecture with input normalisation `n`.
    pub fn with_normalization(self, n: Normalization) -> Self {
        ArchConfig { mean: n.mean, std: n.std, ..self }
    }

    /// True when the network has no gated block.
    pub fn is_plain(&self) -> bool {
        self.copies < 2 || self.augment == Augment::None
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if self.copies == 0 || self.copies > 255 {
            return Err(Error::config(format!("copies must be in 1..=255, got {}", self.copies)));
        }
        if !(0.0..1.0).contains(&self.relu_slope) {
            return Err(Error::config(format!(
                "relu_slope (leaky ReLU negative slope) must be in [0,1), got {}",
                self.relu_slope
            )));
        }
        if self.shortcut == Shortcut::Identity && !self.is_plain() {
            return Err(Error::config(
                "identity (option-A) shortcuts are supported for plain ResNet-20s only (copies 1 \
                 or augment none): an RGN gates the projection shortcuts",
            ));
        }
        self.normalization().validate()
    }
}

/// Number of classes every eio model classifies (CIFAR-10).
pub const NUM_CLASSES: usize = 10;

/// Most member networks one model may hold (ensembles, derived path ensembles): bounds memory
/// before anything is allocated.
pub const MAX_MEMBERS: usize = 64;

/// Most random paths a command evaluates or screens one by one (`eval --paths`, `stability -k`,
/// `derive --best-of`): bounds the time and the memory of the path list.
pub const MAX_PATHS: usize = 4096;

/// What a model file holds: `members` networks of one architecture (1 = a single network).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Architecture of every member.
    pub arch: ArchConfig,
    /// Number of members; more than one is an ensemble (average of softmax).
    pub members: usize,
}

impl ModelSpec {
    /// Checks the architecture and the member count.
    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        if self.members == 0 {
            return Err(Error::config("an ensemble needs at least one member"));
        }
        if self.members > MAX_MEMBERS {
            return Err(Error::config(format!(
                "an ensemble of {} members: at most {MAX_MEMBERS} are supported",
                self.members
            )));
        }
        Ok(())
    }
}

/// Networks and the variable store that owns their weights.
pub struct Model {
    /// The weights (names follow the PyTorch layout; ensemble members under `member{i}`).
    pub vs: nn::VarStore,
    /// The member networks.
    pub nets: Vec<Net>,
    /// What was built.
    pub spec: ModelSpec,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model").field("spec", &self.spec).finish()
    }
}

impl Model {
    /// Builds freshly initialised networks; initial weights come from `seed`.
    pub fn new(spec: &ModelSpec, device: Device, seed: Seed) -> Result<Self> {
        spec.validate()?;
        // libtorch draws initial weights from its one global generator.
        let (vs, nets) = with_global_seed((seed.derive(Stream::Init, 0, 0) >> 1) as i64, || {
            let vs = nn::VarStore::new(device);
            let nets = if spec.members == 1 {
                vec![Net::new(&vs.root(), &spec.arch)]
            } else {
                (0..spec.members)
                    .map(|i| Net::new(&(vs.root() / format!("member{i}")), &spec.arch))
                    .collect()
            };
            (vs, nets)
        });
        let mut model = Model { vs, nets, spec: spec.clone() };
        model.set_memory_format(default_memory_format());
        Ok(model)
    }

    /// A fingerprint of what the model computes: its spec and every weight and buffer (names,
    /// kinds, shapes, values; not their memory layout), as 16 hex digits. Results kept between
    /// runs (a resumed evaluation, a cached stability row, a derived path) are keyed on it, so
    /// that another model's are never taken for this one's.
    pub fn fingerprint(&self) -> String {
        use crate::seed::fnv1a;
        let _guard = tch::no_grad_guard();
        let spec = serde_json::to_string(&self.spec).expect("specs serialise");
        let mut h = fnv1a(crate::seed::FNV1A_START, spec.as_bytes());
        let vars: std::collections::BTreeMap<String, Tensor> =
            self.vs.variables().into_iter().collect();
        let mut buf = Vec::new();
        for (name, t) in &vars {
            let t = t.to_device(Device::Cpu).contiguous();
            let numel = t.numel();
            buf.resize(numel * t.kind().elt_size_in_bytes(), 0);
            t.copy_data_u8(&mut buf, numel);
            h = fnv1a(h, name.as_bytes());
            h = fnv1a(h, format!("{:?}{:?}", t.kind(), t.size()).as_bytes());
            h = fnv1a(h, &buf);
        }
        format!("{h:016x}")
    }

    /// Lays the weights out for `f` and makes the networks compute in that layout (values
    /// unchanged; optimiser state made afterwards follows the weights).
    pub fn set_memory_format(&mut self, f: MemoryFormat) {
        let cl = f.channels_last_on(self.device());
        let _guard = tch::no_grad_guard();
        for (_, mut t) in self.vs.variables() {
            if t.dim() == 4 {
                let laid = with_layout(&t, cl);
                t.set_data(&laid);
            }
        }
        for n in &mut self.nets {
            n.channels_last = cl;
        }
    }

    /// Whether the networks compute in channels-last.
    pub fn is_channels_last(&self) -> bool {
        self.nets[0].channels_last
    }

    /// Route length of each member (0 for plain networks).
    pub fn gates(&self) -> usize {
        self.nets[0].gates()
    }

    /// Device holding the weights.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Re-estimates every BatchNorm's running statistics from `batches` of clean images
    /// (`[B,3,32,32]` in [0, 1]), leaving the weights as they are: the statistics are reset and
    /// become the plain average of the batches' statistics, as PyTorch's
    /// `torch.optim.swa_utils.update_bn` makes them (momentum `None`), whatever they were
    /// before. Why: a method whose train-mode forwards include perturbed inputs (TRS's vicinity
    /// PGD) leaves running statistics that describe those inputs, not the clean images a
    /// deployed model sees. Returns the number of images seen. Plain models and ensembles only:
    /// an RGN's BatchNorm copies are each on many paths (derive a path first).
    pub fn recalibrate_batchnorm(
        &self,
        batches: impl IntoIterator<Item = Tensor>,
    ) -> Result<usize> {
        if self.gates() > 0 {
            return Err(Error::config(
                "recalibrating an RGN's BatchNorms is not supported: derive a path first",
            ));
        }
        let _guard = tch::no_grad_guard();
        // libtorch moves a statistic r to (1 - m) r + m b; with r set to the running average c
        // before each forward, b = (r' - (1 - m) c) / m, and c takes b into its average.
        let m = resnet::BN_MOMENTUM;
        // Reset as PyTorch's reset_running_stats: means 0, variances 1.
        let mut stats: Vec<Tensor> = self
            .vs
            .variables()
            .into_iter()
            .filter_map(|(name, mut t)| {
                let start = match () {
                    _ if name.ends_with(".running_mean") => 0.0,
                    _ if name.ends_with(".running_var") => 1.0,
                    _ => return None,
                };
                let _ = t.fill_(start);
                Some(t)
            })
            .collect();
        let route = Route::zeros(0);
        let (mut seen, mut k) = (0usize, 0.0f64);
        for x in batches {
            let x = x.to_device(self.device());
            let before: Vec<Tensor> = stats.iter().map(Tensor::copy).collect();
            for net in &self.nets {
                let _ = net.forward(&x, &route, true);
            }
            k += 1.0;
            for (t, c) in stats.iter_mut().zip(&before) {
                let b = (&*t - c * (1.0 - m)) / m;
                t.copy_(&(c + (b - c) / k));
            }
            seen += x.size()[0] as usize;
        }
        if seen == 0 {
            return Err(Error::config("recalibrating BatchNorms needs at least one image"));
        }
        Ok(seen)
    }
}

/// Something an attack can attack: maps [0, 1] images to logits, in eval mode, differentiably.
pub trait Classifier {
    /// Logits for `x` (`[B,3,32,32]` in [0, 1]). With `sgm = Some(gamma)` the backward pass scales
    /// the gradient through residual branches by gamma (skip gradient method).
    fn logits(&self, x: &Tensor, sgm: Option<f64>) -> Tensor;
    /// True when repeated calls on one input can differ (random routes): attacks then average
    /// gradients over several calls (expectation over transformation).
    fn is_random(&self) -> bool {
        false
    }
    /// What this classifier is (e.g. a model's [`Model::fingerprint`] and its routing), for
    /// progress saved by one run and resumed by another: saved progress is used only for the
    /// same identity. `None`: unknown.
    fn identity(&self) -> Option<String> {
        None
    }
}

/// The logits of an ensemble from its members' logits: the log of the averaged softmax,
/// computed stably as `logsumexp_i(log_softmax_i) - log(N)`, in the members' precision.
pub fn ensemble_logits(members: Vec<Tensor>) -> Tensor {
    let n = members.len() as f64;
    let logp: Vec<Tensor> = members.into_iter().map(|l| l.log_softmax(-1, l.kind())).collect();
    Tensor::stack(&logp, 0).logsumexp([0].as_slice(), false) - n.ln()
}

/// How a model's routes are chosen at each forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// The same route every time (empty for plain networks).
    Fixed(Route),
    /// A fresh uniformly random route at every forward call.
    Random,
}

impl fmt::Display for Routing {
    /// `plain`, `path 0,1,...` or `random path per forward`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::Fixed(route) if route.is_empty() => f.write_str("plain"),
            Routing::Fixed(route) => write!(f, "path {route}"),
            Routing::Random => f.write_str("random path per forward"),
        }
    }
}

/// A [`Model`] seen as a [`Classifier`], with a routing policy.
pub struct Target<'a> {
    model: &'a Model,
    routing: Routing,
    rng: RefCell<Rng>,
}

impl<'a> Target<'a> {
    /// Wraps `model`; random routes draw from `seed`. Checks a fixed route's length.
    pub fn new(model: &'a Model, routing: Routing, seed: Seed) -> Result<Self> {
        if let Routing::Fixed(r) = &routing {
            r.check(model.gates(), model.spec.arch.copies.max(1))?;
        }
        Ok(Target { model, routing, rng: RefCell::new(seed.rng(Stream::Route, u64::MAX, 0)) })
    }

    /// A plain model, or an RGN on its all-zero route.
    pub fn fixed_zero(model: &'a Model) -> Self {
        let r = Route::zeros(model.gates());
        Target {
            model,
            routing: Routing::Fixed(r),
            rng: RefCell::new(Seed(0).rng(Stream::Route, 0, 0)),
        }
    }

    fn route(&self) -> Route {
        match &self.routing {
            Routing::Fixed(r) => r.clone(),
            Routing::Random => Route::random(
                self.model.gates(),
                self.model.spec.arch.copies,
                &mut self.rng.borrow_mut(),
            ),
        }
    }
}

impl Classifier for Target<'_> {
    fn logits(&self, x: &Tensor, sgm: Option<f64>) -> Tensor {
        let route = self.route();
        let run = |net: &Net| match sgm {
            Some(g) => net.forward_sgm(x, &route, g),
            None => net.forward(x, &route, false),
        };
        if self.model.nets.len() == 1 {
            return run(&self.model.nets[0]);
        }
        if group_members() && self.model.gates() == 0 {
            let nets: Vec<&Net> = self.model.nets.iter().collect();
            return ensemble_logits(Net::grouped_logits(&nets, x, sgm).unbind(0));
        }
        ensemble_logits(self.model.nets.iter().map(run).collect())
    }

    fn is_random(&self) -> bool {
        self.routing == Routing::Random && self.model.gates() > 0
    }

    fn identity(&self) -> Option<String> {
        Some(format!("model {}, {}", self.model.fingerprint(), self.routing))
    }
}
