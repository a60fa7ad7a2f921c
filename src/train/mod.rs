//! Training: one loop (data order, augmentation, optimiser, schedule, per-epoch evaluation,
//! atomic checkpoints, exact resume, NaN stop) shared by every method. A method only defines what
//! one batch contributes to the gradient.

pub mod adp;
pub mod adv;
pub mod config;
pub mod diversify;
pub mod dverge;
pub mod eio;
pub mod gal;
pub mod methods;
pub mod trs;

pub use config::{MethodConfig, TrainSpec};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::data::{draw_augment, epoch_order, Dataset, DeviceData};
use crate::error::{Error, Result};
use crate::eval;
use crate::fsx::{clean_stale_temps, RunLock};
use crate::model::io::{write_atomic, TensorFile};
use crate::model::{MemoryFormat, Model, Routing, Target};
use crate::optim::{OptimConfig, Optimizer};
use crate::progress::Progress;
use crate::seed::{Seed, Stream};

/// With in-epoch checkpoints on ([`TrainConfig::checkpoint_every`]), the longest a run trains
/// without writing one.
pub const CHECKPOINT_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Settings shared by every training method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Master seed of every random choice.
    pub seed: u64,
    /// Number of epochs.
    pub epochs: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Train on the first N images of each class only.
    pub train_per_class: Option<usize>,
    /// Evaluate on the first N test images of each class only.
    pub test_per_class: Option<usize>,
    /// Also checkpoint every this many steps inside an epoch, and after any step that ends
    /// [`CHECKPOINT_AT_LEAST_EVERY`] or more after the last checkpoint, so that slow steps
    /// (DVERGE on a CPU: about 40 s each at one thread) lose little to an interruption (0 = at
    /// epoch ends only). Where a run checkpoints does not change its numbers (exact resume).
    pub checkpoint_every: usize,
    /// Random crop and flip of training images.
    pub augment: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            epochs: 200,
            batch_size: 128,
            train_per_class: None,
            test_per_class: None,
            checkpoint_every: 0,
            augment: true,
        }
    }
}

impl TrainConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::config("epochs must be at least 1"));
        }
        if self.batch_size < 2 {
            return Err(Error::config("batch_size must be at least 2 (BatchNorm needs 2 images)"));
        }
        for (key, v) in
            [("train_per_class", self.train_per_class), ("test_per_class", self.test_per_class)]
        {
            if v == Some(0) {
                return Err(Error::config(format!(
                    "{key} must be at least 1 (0 would train or evaluate on no image)"
                )));
            }
        }
        Ok(())
    }
}

/// A training batch: images in [0, 1] on the model's device, and labels.
pub struct Batch {
    /// Source images `[B,3,32,32]`.
    pub x: Tensor,
    /// Source labels `[B]`.
    pub y: Tensor,
    /// An independent target batch (second shuffle), for methods that ask for it.
    pub target: Option<(Tensor, Tensor)>,
    /// The step's random tensors ([`Method::draw`]) when they were drawn before the step (a
    /// step replayed from a CUDA graph reads them as inputs); empty: the step draws them itself.
    pub draws: Vec<Tensor>,
}

impl Batch {
    /// A batch with an optional target batch and no pre-drawn random tensors.
    pub fn new(x: Tensor, y: Tensor, target: Option<(Tensor, Tensor)>) -> Self {
        Batch { x, y, target, draws: Vec::new() }
    }

    /// The same batch with `map` applied to each tensor (`Tensor::shallow_clone` to share them,
    /// `Tensor::copy` for tensors of its own).
    fn mapped(&self, map: impl Fn(&Tensor) -> Tensor) -> Batch {
        Batch {
            x: map(&self.x),
            y: map(&self.y),
            target: self.target.as_ref().map(|(x, y)| (map(x), map(y))),
            draws: self.draws.iter().map(&map).collect(),
        }
    }

    /// Its tensors in a fixed order: images, labels, the target batch's, then the draws.
    fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        let target = self.target.iter().flat_map(|(x, y)| [x, y]);
        [&self.x, &self.y].into_iter().chain(target).chain(&self.draws)
    }

    /// Copies `from`'s tensors into this batch's own, in place (the static inputs of a step
    /// replayed from a CUDA graph; the two batches have the same shapes).
    fn copy_from(&mut self, from: &Batch) {
        let target = self.target.iter_mut().flat_map(|(x, y)| [x, y]);
        let own = [&mut self.x, &mut self.y].into_iter().chain(target).chain(&mut self.draws);
        for (to, t) in own.zip(from.tensors()) {
            to.copy_(t);
        }
    }

    /// The random tensors of `method`'s step at `at`: those drawn before the step, else drawn
    /// now (the same numbers).
    pub fn draws_of<M: Method + ?Sized>(
        &self,
        method: &M,
        model: &Model,
        at: StepAt,
    ) -> Vec<Tensor> {
        if self.draws.is_empty() {
            method.draw(model, self, at)
        } else {
            self.draws.iter().map(|t| t.shallow_clone()).collect()
        }
    }
}

/// Where in the run a step is.
#[derive(Debug, Clone, Copy)]
pub struct StepAt {
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Step within the epoch, 0-based.
    pub step: usize,
    /// The run's master seed.
    pub seed: Seed,
}

/// What one step reports. The numbers stay on the compute device as 0-dim tensors (a step
/// enqueues work and returns); the loop reads them back in one transfer per log interval.
#[derive(Debug)]
pub struct StepStats {
    /// Mean loss of the step (f64).
    pub loss: Tensor,
    /// Correct predictions among `seen` (i64).
    pub correct: Tensor,
    /// Predictions made.
    pub seen: i64,
    /// Extra status for the progress line (e.g. the distillation layer).
    pub note: String,
    /// The method's named loss terms (ADP's entropy, GAL's coherence, ...), each a mean over
    /// the step; the loop averages them over the epoch into the log and `metrics.csv`.
    pub terms: Vec<(&'static str, Tensor)>,
}

impl StepStats {
    /// The same numbers in tensors of their own (a graph's outputs are overwritten by its next
    /// replay).
    fn copied(&self) -> StepStats {
        StepStats {
            loss: self.loss.copy(),
            correct: self.correct.copy(),
            seen: self.seen,
            note: self.note.clone(),
            terms: self.terms.iter().map(|(k, t)| (*k, t.copy())).collect(),
        }
    }
}

/// A training step replayed from a CUDA graph ([`crate::graph`]), for a [`Method::graphable`]
/// method with a [replayable](Optimizer::replayable) optimiser: each full batch (its target
/// batch and its random tensors, [`Method::draw`], drawn ahead) is copied into static tensors
/// and the captured forward, backward and update run with one launch. The first step of a run runs
/// eagerly (lazy initialisation), the next is captured; each epoch is captured anew (the graph
/// holds the learning rate and the method's per-epoch draws, such as DVERGE's layer, as
/// constants). Replays compute what the eager step computes: same kernels, same inputs.
pub(crate) struct GraphedStep {
    device: Device,
    warm: bool,
    failed: bool,
    captured: Option<Captured>,
}

/// A captured step: the graph, the epoch and rate it holds, its static inputs and its outputs.
struct Captured {
    graph: crate::graph::CudaGraph,
    epoch: usize,
    lr: f64,
    batch: Batch,
    stats: StepStats,
}

impl GraphedStep {
    pub(crate) fn new(device: Device) -> Self {
        GraphedStep { device, warm: false, failed: false, captured: None }
    }

    /// Whether a capture failed (the steps then run eagerly).
    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    /// One step on a full batch, its update included.
    pub(crate) fn step(
        &mut self,
        model: &Model,
        method: &mut dyn Method,
        opt: &mut Optimizer,
        batch: &Batch,
        at: StepAt,
        lr: f64,
    ) -> Result<StepStats> {
        // A captured step reads its random tensors from its inputs: draw them now.
        let mut batch = batch.mapped(Tensor::shallow_clone);
        batch.draws = method.draw(model, &batch, at);
        let batch = &batch;
        if let Some(c) = &mut self.captured {
            if c.epoch == at.epoch && c.lr == lr {
                c.batch.copy_from(batch);
                opt.prepare(lr, true);
                c.graph.replay()?;
                return Ok(c.stats.copied());
            }
        }
        self.captured = None;
        let eager = |method: &mut dyn Method, opt: &mut Optimizer| -> Result<StepStats> {
            opt.zero_grad();
            let st = method.step(model, batch, at)?;
            opt.step(lr);
            Ok(st)
        };
        if self.failed || !self.warm {
            self.warm = true;
            return eager(method, opt);
        }
        opt.zero_grad();
        let fixed = batch.mapped(Tensor::copy);
        // The update's host half runs before the capture (and before every replay).
        let counts = opt.counts();
        opt.prepare(lr, true);
        let captured = crate::graph::CudaGraph::capture(self.device, || {
            let st = method.step(model, &fixed, at)?;
            if !opt.all_grads_defined() {
                return Err(Error::config("a replayed step must give every tensor a gradient"));
            }
            opt.apply();
            Ok::<_, Error>(st)
        });
        match captured.and_then(|(g, st)| st.map(|st| (g, st))) {
            Ok((graph, stats)) => {
                graph.replay()?;
                let out = stats.copied();
                self.captured = Some(Captured { graph, epoch: at.epoch, lr, batch: fixed, stats });
                Ok(out)
            }
            Err(e) => {
                crate::graph::warn_fallback(&e);
                self.failed = true;
                opt.set_counts(counts);
                eager(method, opt)
            }
        }
    }
}

impl Default for StepStats {
    fn default() -> Self {
        let zero = |k| Tensor::zeros([], (k, Device::Cpu));
        StepStats {
            loss: zero(Kind::Double),
            correct: zero(Kind::Int64),
            seen: 0,
            note: String::new(),
            terms: Vec::new(),
        }
    }
}

/// `t` (a 0-dim loss) as a detached f64 tensor for [`StepStats`].
pub fn stat(t: &Tensor) -> Tensor {
    t.detach().to_kind(Kind::Double)
}

/// Checkpoint metadata: the device kind and memory layout the run computes in.
const LAYOUT_KEY: &str = "eio.layout";

/// `cpu/channels-last`, `cuda/contiguous`, ...
fn layout(model: &Model) -> String {
    let dev = if model.device().is_cuda() { "cuda" } else { "cpu" };
    format!("{dev}/{}", memory_format(model))
}

/// The model's memory format, as logs and [`layout`] name it.
fn memory_format(model: &Model) -> &'static str {
    if model.is_channels_last() {
        "channels-last"
    } else {
        "contiguous"
    }
}

/// An epoch's batch order and augmentation draws, made on the host from the seeded streams in
/// the order [`Dataset::batch`] draws them (per step: the batch's images, then the target
/// batch's), and moved to the device in one transfer per epoch: a step then gathers and augments
/// its batch on the device ([`DeviceData`]) without touching the host.
struct EpochDraws {
    /// The batches' draws.
    batch: Draws,
    /// The target batches' draws (methods with a target batch: EIO, DVERGE).
    target: Option<Draws>,
}

/// One stream of batches of an epoch, on the device.
struct Draws {
    /// Image indices by position in the epoch.
    idx: Tensor,
    /// `[N, 3]` augmentation draws (dy, dx, flip) by position, when augmenting.
    aug: Option<Tensor>,
}

impl EpochDraws {
    fn new(
        order: &[usize],
        target: Option<&[usize]>,
        bs: usize,
        augment: bool,
        seed: Seed,
        epoch: usize,
        device: Device,
    ) -> Self {
        let n = order.len();
        let ix = |o: &[usize]| {
            Tensor::from_slice(&o.iter().map(|&i| i as i64).collect::<Vec<_>>()).to_device(device)
        };
        let aug = augment.then(|| {
            let (mut a, mut t) = (Vec::with_capacity(3 * n), Vec::with_capacity(3 * n));
            for (step, lo) in (0..n).step_by(bs).enumerate() {
                let mut rng = seed.rng(Stream::Augment, epoch as u64, step as u64);
                let len = bs.min(n - lo);
                (0..len).for_each(|_| a.extend(draw_augment(&mut rng)));
                if target.is_some() {
                    (0..len).for_each(|_| t.extend(draw_augment(&mut rng)));
                }
            }
            let to = |v: Vec<i64>| Tensor::from_slice(&v).view([-1, 3]).to_device(device);
            (to(a), target.map(|_| to(t)))
        });
        let (aug, target_aug) = match aug {
            Some((a, t)) => (Some(a), t),
            None => (None, None),
        };
        EpochDraws {
            batch: Draws { idx: ix(order), aug },
            target: target.map(|o| Draws { idx: ix(o), aug: target_aug }),
        }
    }

    /// The batch (or, with `target`, the target batch) at positions `lo..lo + len`.
    fn batch(&self, data: &DeviceData, target: bool, lo: usize, len: usize) -> (Tensor, Tensor) {
        let d =
            if target { self.target.as_ref().expect("target batches drawn") } else { &self.batch };
        let idx = d.idx.narrow(0, lo as i64, len as i64);
        let aug = d.aug.as_ref().map(|a| a.narrow(0, lo as i64, len as i64));
        data.batch(&idx, aug.as_ref())
    }
}

/// An epoch's running sums, on the host: loss and terms weighted by the predictions made.
#[derive(Debug, Default)]
struct Totals {
    loss_sum: f64,
    correct: i64,
    seen: i64,
    terms: BTreeMap<String, f64>,
}

impl Totals {
    /// Reads the `pending` steps' numbers (on `device`) back in one transfer and adds them, in
    /// step order. A non-finite loss stops at its step: `Err((step, loss))`, nothing of it or
    /// later added.
    fn take(
        &mut self,
        pending: &mut Vec<(usize, StepStats)>,
        device: Device,
    ) -> std::result::Result<(), (usize, f64)> {
        if pending.is_empty() {
            return Ok(());
        }
        let mut all = Vec::new();
        for (_, st) in pending.iter() {
            all.push(st.loss.shallow_clone());
            all.push(st.correct.shallow_clone());
            all.extend(st.terms.iter().map(|(_, t)| t.shallow_clone()));
        }
        let all: Vec<Tensor> =
            all.iter().map(|t| t.to_device(device).to_kind(Kind::Double)).collect();
        let host = Tensor::stack(&all, 0).to_device(Device::Cpu);
        let vals = Vec::<f64>::try_from(host).expect("f64 values");
        let mut v = vals.into_iter();
        for (step, st) in pending.drain(..) {
            let (loss, correct) = (v.next().expect("loss"), v.next().expect("correct"));
            if !loss.is_finite() {
                return Err((step, loss));
            }
            for (name, _) in &st.terms {
                let t = v.next().expect("term");
                *self.terms.entry((*name).to_string()).or_insert(0.0) += t * st.seen as f64;
            }
            self.loss_sum += loss * st.seen as f64;
            self.correct += correct as i64;
            self.seen += st.seen;
        }
        Ok(())
    }
}

/// A training method: what one batch contributes to the gradients.
pub trait Method {
    /// Name used in logs and checkpoints.
    fn name(&self) -> &'static str;
    /// Accumulates the gradients of the batch's loss into the model (the loop clears gradients
    /// before and takes one optimiser step after). Randomness must come from `at`.
    fn step(&mut self, model: &Model, batch: &Batch, at: StepAt) -> Result<StepStats>;
    /// How the model is evaluated after each epoch.
    fn eval_routing(&self, model: &Model) -> Routing {
        Routing::Fixed(crate::model::Route::zeros(model.gates()))
    }
    /// True when the method needs an independent target batch.
    fn needs_target(&self) -> bool {
        false
    }
    /// True when its loss holds input gradients that are back-propagated to the weights
    /// (double backprop: GAL, TRS), which [`layout_for`] computes contiguous on the CPU.
    fn double_backprop(&self) -> bool {
        false
    }
    /// True when a step's host-side choices depend on nothing but the epoch (random numbers
    /// drawn per batch come through [`Method::draw`]), so that the loop may capture it once
    /// per epoch as a CUDA graph and replay it ([`crate::graph`]).
    fn graphable(&self) -> bool {
        false
    }
    /// The random tensors (noise drawn on the host from the run's seed, moved to the batch's
    /// device) that the step at `at` on `batch` uses, in a fixed order. The step reads them
    /// through [`Batch::draws_of`]; a loop that replays steps draws them beforehand into
    /// [`Batch::draws`]. Default: none.
    fn draw(&self, _model: &Model, _batch: &Batch, _at: StepAt) -> Vec<Tensor> {
        Vec::new()
    }
}

/// One epoch's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, 1-based.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Training accuracy (on augmented data, along the routes trained).
    pub train_acc: f64,
    /// Test accuracy after the epoch.
    pub test_acc: f64,
    /// Wall time of the epoch's training steps, seconds.
    pub train_secs: f64,
    /// Training images per second.
    pub images_per_sec: f64,
    /// Epoch means of the method's named loss terms.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub terms: BTreeMap<String, f64>,
    /// Peak memory of the epoch (its training steps and test evaluation), bytes, as
    /// [`crate::memory::peak`] measures it: allocated device memory on CUDA, the process's
    /// resident set on the CPU. Absent where not measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// Where the epoch's steps ran ([`compute_label`]): more than one when the epoch was
    /// resumed elsewhere (its `train_secs` then mixes them); empty in records written before
    /// eio kept it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// Where training runs, as run records name it: `cpu, N thread(s)` or `cuda`; an epoch's wall
/// time means little without it.
pub fn compute_label(device: Device) -> String {
    match device {
        Device::Cpu => {
            let n = tch::get_num_threads();
            format!("cpu, {n} thread{}", if n == 1 { "" } else { "s" })
        }
        _ => "cuda".into(),
    }
}

/// Progress of a run, stored in its checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    /// Epoch in progress (0-based); equals `epochs` when finished.
    pub epoch: usize,
    /// Next step within the epoch.
    pub step: usize,
    /// Running sums of the epoch in progress: loss*seen, correct, seen, seconds.
    pub partial: (f64, i64, i64, f64),
    /// Running sums of the named loss terms (term*seen) of the epoch in progress.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub partial_terms: BTreeMap<String, f64>,
    /// Where the epoch in progress has run so far ([`compute_label`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial_devices: Vec<String>,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
}

/// Where a run lives and how to treat an existing one.
#[derive(Debug, Clone)]
pub struct RunDir {
    /// Output folder: `checkpoint.safetensors`, `model.safetensors`, `config.toml`,
    /// `metrics.csv`, `train.log`.
    pub dir: PathBuf,
    /// Continue the run found in `dir`.
    pub resume: bool,
    /// Start over even if `dir` holds a run.
    pub force: bool,
}

impl RunDir {
    /// The run's checkpoint file.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }
    /// The final model file.
    pub fn model(&self) -> PathBuf {
        self.dir.join("model.safetensors")
    }
}

const STATE_KEY: &str = "eio.run";
const CONFIG_KEY: &str = "eio.config";
const DATA_KEY: &str = "eio.data";

/// The files of a run besides its checkpoint: a fresh run never replaces them without `force`.
const RUN_FILES: [&str; 4] = ["model.safetensors", "metrics.csv", "train.log", "config.toml"];

/// What a run was trained on (checkpoint metadata): sizes, classes and a fingerprint of the
/// labels and of 64 images spread over each split, so that `--resume` refuses other data.
fn data_identity(train: &Dataset, test: &Dataset) -> String {
    let mut h = crate::seed::FNV1A_START;
    let mut eat = |bytes: &[u8]| h = crate::seed::fnv1a(h, bytes);
    for d in [train, test] {
        eat(d.labels());
        let n = d.len();
        let idx: Vec<usize> = (0..n.min(64)).map(|i| i * n / n.min(64)).collect();
        if !idx.is_empty() {
            let (x, _) = d.batch(&idx, None);
            let x = (x * 255.0).round().to_kind(tch::Kind::Uint8).flatten(0, -1);
            eat(&Vec::<u8>::try_from(&x).unwrap_or_default());
        }
    }
    format!(
        "{} training and {} test images, classes {}, fingerprint {h:016x}",
        train.len(),
        test.len(),
        train.classes.join(",")
    )
}

/// The first model variable or optimiser tensor that is not finite, as a sentence.
fn non_finite(model: &Model, opt: &Optimizer) -> Option<String> {
    let vars: BTreeMap<String, Tensor> = model.vs.variables().into_iter().collect();
    let state = opt.state();
    crate::validate::bad_tensor(vars.iter().chain(state.iter().map(|(k, t)| (k, t))))
        .map(|(name, why)| format!("tensor '{name}' {why}"))
}

fn log_line(dir: &Path, line: &str) -> Result<()> {
    let path = dir.join("train.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
}

fn say(dir: &Path, line: &str) -> Result<()> {
    eprintln!("{line}");
    log_line(dir, line)
}

fn write_metrics(dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let names: std::collections::BTreeSet<&String> =
        history.iter().flat_map(|r| r.terms.keys()).collect();
    let mut s = String::from("epoch,lr,train_loss,train_acc,test_acc,train_secs,images_per_sec");
    for n in &names {
        s += &format!(",{n}");
    }
    s.push('\n');
    for r in history {
        s += &format!(
            "{},{},{:.5},{:.5},{:.5},{:.2},{:.1}",
            r.epoch,
            short(r.lr),
            r.train_loss,
            r.train_acc,
            r.test_acc,
            r.train_secs,
            r.images_per_sec
        );
        for n in &names {
            s += &r.terms.get(*n).map_or_else(|| ",".to_string(), |v| format!(",{v:.5}"));
        }
        s.push('\n');
    }
    write_atomic(&dir.join("metrics.csv"), s.as_bytes())
}

/// `x` to 10 significant digits, shortest form: a decayed rate prints as 0.001, not as
/// 0.0010000000000000002.
fn short(x: f64) -> String {
    format!("{:.9e}", x).parse::<f64>().map_or_else(|_| x.to_string(), |v| v.to_string())
}

/// The git revision this binary was built from.
pub fn git_rev() -> &'static str {
    env!("EIO_GIT_REV")
}

/// With `--memory-format auto`, lays `model` out for `method` on its device: channels-last,
/// except on the CPU for methods that back-propagate through input gradients (GAL, TRS), which
/// compute contiguous. libtorch's CPU double backward of BatchNorm and ReLU is several times
/// slower on channels-last tensors (its reductions; PyTorch profile of a GAL step at batch 64:
/// aten::sum 629 ms channels-last vs 118 ms contiguous), more than oneDNN's channels-last
/// convolutions gain. `eio bench --methods`, 1 thread, batch 128, busy 2-core machine, two
/// runs of each layout: GAL 7.1/6.8 s per step contiguous vs 8.0/7.6 s channels-last, TRS
/// 25.3/23.8 s vs 31.4/29.4 s (results/bench.md). A resumed run keeps the layout it was
/// started in.
pub fn layout_for(model: &mut Model, method: &dyn Method) {
    let cpu = !model.device().is_cuda();
    if crate::model::default_memory_format() == MemoryFormat::Auto
        && cpu
        && method.double_backprop()
    {
        model.set_memory_format(MemoryFormat::Contiguous);
    }
}

/// Trains `model` with `method`, resuming from (or refusing to overwrite) the run in
/// `run.dir`. `config_text` is the resolved configuration: it is saved with the run and a resumed
/// run must have the same one (only `epochs` may grow). Returns the epoch records.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    model: &mut Model,
    method: &mut dyn Method,
    cfg: &TrainConfig,
    optim: &OptimConfig,
    config_text: &str,
    train: &Dataset,
    test: &Dataset,
    run: &RunDir,
) -> Result<Vec<EpochRecord>> {
    cfg.validate()?;
    optim.validate()?;
    optim.check_milestones(cfg.epochs)?;
    crate::validate::check_classes(train)?;
    crate::validate::check_classes(test)?;
    if train.len() < 2 {
        return Err(Error::config(format!(
            "{} training image(s): training needs at least 2 (BatchNorm)",
            train.len()
        )));
    }
    let device = model.device();
    let data = DeviceData::new(train, device);
    let seed = Seed(cfg.seed);
    layout_for(model, method);
    let mut opt = Optimizer::new(model, optim.clone());
    let ckpt = run.checkpoint();
    let mut state = RunState::default();
    // One process per run folder; what killed writers left behind goes first.
    let _lock = RunLock::acquire(&run.dir)?;
    clean_stale_temps(&run.dir)?;
    for f in [run.checkpoint(), run.model()] {
        crate::fsx::check_writable(&f)?;
    }
    let data_id = data_identity(train, test);
    if ckpt.exists() && run.resume {
        let (loaded, file) = Model::load(&ckpt, device)?;
        if loaded.spec != model.spec {
            return Err(Error::checkpoint(
                &ckpt,
                format!(
                    "the checkpoint holds: {}; this run is configured for: {} (resume with the \
                     options the run was started with)",
                    crate::model::io::describe(&loaded.spec),
                    crate::model::io::describe(&model.spec)
                ),
            ));
        }
        if let Some(saved) = file.meta.get(DATA_KEY) {
            if *saved != data_id {
                return Err(Error::config(format!(
                    "{}: the run was trained on other data ({saved}) than given now ({data_id}): \
                     resume with the same --data and --classes, or use a new --out folder",
                    ckpt.display()
                )));
            }
        }
        let saved_cfg = file.meta.get(CONFIG_KEY).cloned().unwrap_or_default();
        if strip_epochs(&saved_cfg) != strip_epochs(config_text) {
            return Err(Error::config(format!(
                "{}: the run was started with another configuration; resume with the same options \
                 (saved in {}), or use a new --out folder",
                ckpt.display(),
                run.dir.join("config.toml").display()
            )));
        }
        model.vs.copy(&loaded.vs)?;
        // Exact resume needs the layout the run computed in (on the same kind of device; across
        // devices numbers agree only within rounding anyway, and each keeps its faster layout).
        if let Some(saved) = file.meta.get(LAYOUT_KEY) {
            let here = layout(model);
            if *saved != here && saved.split('/').next() == here.split('/').next() {
                let f = if saved.ends_with("channels-last") {
                    MemoryFormat::ChannelsLast
                } else {
                    MemoryFormat::Contiguous
                };
                model.set_memory_format(f);
                opt = Optimizer::new(model, optim.clone());
                say(
                    &run.dir,
                    &format!("resuming in the run's layout ({saved}) rather than {here}"),
                )?;
            }
        }
        opt.load_state(&file)?;
        state = serde_json::from_str(file.meta.get(STATE_KEY).map(String::as_str).unwrap_or("{}"))
            .map_err(|e| Error::checkpoint(&ckpt, format!("bad run state: {e}")))?;
        if state.epoch >= cfg.epochs {
            // A run stopped between its last checkpoint and its model file gets the model now.
            let model_ok = run.model().is_file()
                && Model::load(&run.model(), device)
                    .is_ok_and(|(m, _)| m.spec == model.spec && fingerprint_eq(&m, model));
            if !model_ok {
                model.save(&run.model(), TensorFile::default())?;
                say(
                    &run.dir,
                    &format!(
                        "run in {} had finished {} epochs without its model file: wrote {}",
                        run.dir.display(),
                        state.epoch,
                        run.model().display()
                    ),
                )?;
            }
            say(
                &run.dir,
                &format!("run in {} already finished {} epochs", run.dir.display(), state.epoch),
            )?;
            return Ok(state.history);
        }
        say(
            &run.dir,
            &format!(
                "resuming {} at epoch {} step {} ({} on {})",
                ckpt.display(),
                state.epoch + 1,
                state.step,
                memory_format(model),
                compute_label(model.device())
            ),
        )?;
    } else if ckpt.exists() && !run.force {
        return Err(Error::config(format!(
            "{} already holds a run: pass --resume to continue it or --force to start over",
            run.dir.display()
        )));
    } else {
        // No checkpoint (or --force). Results of an earlier run are never replaced silently:
        // without --force a model or metrics refuse; a run that stopped before its first
        // checkpoint (config.toml, train.log) restarts under --resume, appending to its log.
        let present: Vec<&str> =
            RUN_FILES.iter().copied().filter(|f| run.dir.join(f).exists()).collect();
        let results = present.iter().any(|f| ["model.safetensors", "metrics.csv"].contains(f));
        if !run.force && !present.is_empty() && (!run.resume || results) {
            return Err(Error::config(format!(
                "{} holds files of an earlier run ({}) but no checkpoint to resume: pass --force \
                 to start over (replaces them) or use a new --out folder",
                run.dir.display(),
                present.join(", ")
            )));
        }
        if run.force {
            for f in RUN_FILES.iter().copied().chain(["checkpoint.safetensors"]) {
                let p = run.dir.join(f);
                if p.is_file() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        say(
            &run.dir,
            &format!(
                "eio {} ({}), {} on {} training images; seed {}; {} on {}",
                env!("CARGO_PKG_VERSION"),
                git_rev(),
                method.name(),
                train.len(),
                cfg.seed,
                memory_format(model),
                compute_label(model.device())
            ),
        )?;
    }
    write_atomic(&run.dir.join("config.toml"), config_text.as_bytes())?;

    let n = train.len();
    let bs = cfg.batch_size;
    // A trailing batch of one image cannot go through train-mode BatchNorm.
    let steps = if n % bs == 1 { n / bs } else { n.div_ceil(bs) };
    let method_name = method.name();
    let save = |model: &Model, opt: &Optimizer, state: &RunState| -> Result<()> {
        let mut extra = TensorFile::default();
        extra.tensors.extend(opt.state());
        extra
            .meta
            .insert(STATE_KEY.into(), serde_json::to_string(state).expect("state serialises"));
        extra.meta.insert(CONFIG_KEY.into(), config_text.to_string());
        extra.meta.insert(DATA_KEY.into(), data_id.clone());
        extra.meta.insert("eio.git".into(), git_rev().into());
        extra.meta.insert("eio.method".into(), method_name.into());
        extra.meta.insert(LAYOUT_KEY.into(), layout(model));
        model.save(&ckpt, extra)
    };
    // The NaN stop: a checkpoint is written only from finite weights, so the last one written is
    // always a good one to resume or use.
    let diverged = |why: &str, at: String| -> Error {
        let msg = format!(
            "{why} at {at}: training stopped; the last good checkpoint is {}",
            if ckpt.exists() {
                ckpt.display().to_string()
            } else {
                "none (no checkpoint written yet)".into()
            }
        );
        let _ = log_line(&run.dir, &msg);
        Error::Diverged(msg)
    };

    let mut graphed = (crate::graph::active(device) && method.graphable() && opt.replayable())
        .then(|| GraphedStep::new(device));
    while state.epoch < cfg.epochs {
        let epoch = state.epoch;
        let lr = optim.lr_at(epoch, cfg.epochs);
        let order = epoch_order(n, seed, Stream::Order, epoch as u64);
        let target_order =
            method.needs_target().then(|| epoch_order(n, seed, Stream::TargetOrder, epoch as u64));
        let draws =
            EpochDraws::new(&order, target_order.as_deref(), bs, cfg.augment, seed, epoch, device);
        let mut bar = Progress::new(steps as u64, format!("epoch {}/{}", epoch + 1, cfg.epochs));
        bar.skip_to(state.step as u64);
        crate::memory::reset_peak(device);
        let (loss_sum, correct, seen, secs_before) = state.partial;
        let terms = std::mem::take(&mut state.partial_terms);
        let mut acc = Totals { loss_sum, correct, seen, terms };
        let mut devices = std::mem::take(&mut state.partial_devices);
        let here = compute_label(device);
        if !devices.contains(&here) {
            devices.push(here);
        }
        let mut pending: Vec<(usize, StepStats)> = Vec::new();
        let mut last_read = Instant::now();
        // Adds the pending steps' numbers; a non-finite loss ends the run at its step.
        let read = |acc: &mut Totals, pending: &mut Vec<(usize, StepStats)>| {
            acc.take(pending, device).map_err(|(at_step, loss)| {
                diverged(&format!("loss is {loss}"), format!("epoch {} step {at_step}", epoch + 1))
            })
        };
        let t0 = Instant::now();
        let mut last_save = Instant::now();
        let mut note = String::new();
        for step in state.step..steps {
            let (lo, len) = (step * bs, ((step + 1) * bs).min(n) - step * bs);
            let (x, y) = draws.batch(&data, false, lo, len);
            let target = target_order.is_some().then(|| draws.batch(&data, true, lo, len));
            let at = StepAt { epoch, step, seed };
            let batch = Batch::new(x, y, target);
            let replayed = graphed.as_mut().filter(|_| len == bs);
            let updated = replayed.is_some();
            let st = match replayed {
                Some(g) => g.step(model, method, &mut opt, &batch, at, lr)?,
                None => {
                    opt.zero_grad();
                    method.step(model, &batch, at)?
                }
            };
            note.clone_from(&st.note);
            pending.push((step, st));
            // Reading a number back waits for the device. On the CPU that costs nothing: read
            // every step, so a NaN loss stops the run before its update. On a GPU read about
            // once a second (and before every checkpoint): a step only enqueues work.
            if !device.is_cuda() || last_read.elapsed().as_secs_f64() >= 1.0 {
                if let Err(e) = read(&mut acc, &mut pending) {
                    bar.finish();
                    return Err(e);
                }
                last_read = Instant::now();
            }
            if !updated {
                opt.step(lr);
            }
            let secs = secs_before + t0.elapsed().as_secs_f64();
            let done = (step + 1 - state.step) * bs;
            bar.update(
                (step + 1) as u64,
                &format!(
                    "loss {:.3} acc {:.1}% {:.0} img/s{}{}",
                    acc.loss_sum / acc.seen.max(1) as f64,
                    100.0 * acc.correct as f64 / acc.seen.max(1) as f64,
                    done as f64 / t0.elapsed().as_secs_f64().max(1e-9),
                    if note.is_empty() { "" } else { " " },
                    note
                ),
            );
            if cfg.checkpoint_every > 0
                && ((step + 1) % cfg.checkpoint_every == 0
                    || last_save.elapsed() >= CHECKPOINT_AT_LEAST_EVERY)
                && step + 1 < steps
            {
                last_save = Instant::now();
                if let Err(e) = read(&mut acc, &mut pending) {
                    bar.finish();
                    return Err(e);
                }
                let st = RunState {
                    epoch,
                    step: step + 1,
                    partial: (acc.loss_sum, acc.correct, acc.seen, secs),
                    partial_terms: acc.terms.clone(),
                    partial_devices: devices.clone(),
                    history: state.history.clone(),
                };
                if let Some(bad) = non_finite(model, &opt) {
                    bar.finish();
                    return Err(diverged(&bad, format!("epoch {} step {}", epoch + 1, step + 1)));
                }
                save(model, &opt, &st)?;
            }
        }
        if let Err(e) = read(&mut acc, &mut pending) {
            bar.finish();
            return Err(e);
        }
        bar.finish();
        let train_secs = secs_before + t0.elapsed().as_secs_f64();
        let Totals { loss_sum, correct, seen, terms: term_sums } = acc;
        let target = Target::new(
            model,
            method.eval_routing(model),
            Seed(seed.derive(Stream::Eval, epoch as u64, 0)),
        )?;
        let test_acc = eval::accuracy(&target, test, 500, device);
        let rec = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_acc,
            train_secs,
            images_per_sec: n as f64 / train_secs.max(1e-9),
            terms: term_sums.iter().map(|(k, v)| (k.clone(), v / seen.max(1) as f64)).collect(),
            peak_memory_bytes: crate::memory::peak(device),
            devices,
        };
        let terms: String = rec.terms.iter().map(|(k, v)| format!(" {k} {v:.4}")).collect();
        say(
            &run.dir,
            &format!(
                "epoch {}/{} lr {} loss {:.4}{terms} train acc {:.2}% test acc {:.2}% ({:.1}s, {:.0} img/s{}){}",
                rec.epoch, cfg.epochs, short(lr), rec.train_loss, 100.0 * rec.train_acc, 100.0 * rec.test_acc,
                rec.train_secs, rec.images_per_sec,
                rec.peak_memory_bytes.map(|b| format!(", peak {}", crate::memory::bytes(b))).unwrap_or_default(),
                if note.is_empty() { String::new() } else { format!(" {note}") }
            ),
        )?;
        state.history.push(rec);
        state.epoch += 1;
        state.step = 0;
        state.partial = (0.0, 0, 0, 0.0);
        state.partial_terms.clear();
        if let Some(bad) = non_finite(model, &opt) {
            return Err(diverged(&bad, format!("the end of epoch {}", epoch + 1)));
        }
        save(model, &opt, &state)?;
        write_metrics(&run.dir, &state.history)?;
    }
    model.save(&run.model(), TensorFile::default())?;
    say(&run.dir, &format!("finished: model written to {}", run.model().display()))?;
    Ok(state.history)
}

/// True when two models of one spec hold the same weights.
fn fingerprint_eq(a: &Model, b: &Model) -> bool {
    let va = a.vs.variables();
    b.vs.variables()
        .iter()
        .all(|(k, t)| va.get(k).is_some_and(|u| u.equal(&t.to_device(u.device()))))
}

/// The configuration text without its `epochs` line, so a run can be extended.
fn strip_epochs(cfg: &str) -> String {
    cfg.lines().filter(|l| !l.trim_start().starts_with("epochs")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replayed step's static batch takes every tensor of the new batch: images, labels,
    /// the target batch and the draws.
    #[test]
    fn a_batch_copies_every_tensor_in_place() {
        let t = |v: f64, n: i64| Tensor::full([n], v, (Kind::Float, Device::Cpu));
        let mut fixed = Batch::new(t(0.0, 2), t(0.0, 2), Some((t(0.0, 3), t(0.0, 3))));
        fixed.draws = vec![t(0.0, 4), t(0.0, 5)];
        let kept = fixed.x.data_ptr();
        let mut new = Batch::new(t(1.0, 2), t(2.0, 2), Some((t(3.0, 3), t(4.0, 3))));
        new.draws = vec![t(5.0, 4), t(6.0, 5)];
        fixed.copy_from(&new);
        assert_eq!(fixed.x.data_ptr(), kept, "copied in place");
        let got: Vec<f64> =
            fixed.tensors().map(|t| t.mean(Kind::Double).double_value(&[])).collect();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    /// Where a capture fails (here: always, on the CPU) the graphed step falls back to eager
    /// steps and trains exactly as the plain loop does: target batches (DVERGE), random tensors
    /// drawn ahead (GAL's noise, TRS's vicinity start, the PGD starts of the adversarial terms)
    /// and Adam with its bias corrections on the device (prepared for every tensor, restored
    /// when the capture fails).
    #[test]
    fn graphed_step_falls_back_to_the_eager_step() {
        let dverge = MethodConfig::Dverge(dverge::DvergeConfig {
            distill: crate::distill::DistillConfig {
                steps: 2,
                ..crate::distill::DistillConfig::dverge()
            },
            ..Default::default()
        });
        let trs = MethodConfig::Trs(trs::TrsConfig { steps: 2, ..Default::default() });
        let term = adv::AdvTerm {
            attack: crate::attack::AttackConfig::Pgd(crate::attack::PgdConfig {
                steps: 2,
                ..adv::AdvTerm::pgd(8.0 / 255.0)
            }),
            ..Default::default()
        };
        let mut dverge_advt = dverge.clone();
        if let MethodConfig::Dverge(c) = &mut dverge_advt {
            c.adv = Some(term.clone());
        }
        let gal_advt =
            MethodConfig::Gal(gal::GalConfig { adv: Some(term.clone()), ..Default::default() });
        for method in [
            dverge,
            dverge_advt,
            MethodConfig::Gal(Default::default()),
            gal_advt,
            trs,
            MethodConfig::Adp(adp::AdpConfig { adv: Some(term.clone()), ..Default::default() }),
            MethodConfig::Adv(term),
        ] {
            let mut spec = TrainSpec::defaults(method);
            spec.members = 2;
            let batches: Vec<Batch> = (0..4)
                .map(|i| {
                    let (x, y) = crate::model::with_global_seed(i, || {
                        let x = Tensor::rand([8, 3, 32, 32], (Kind::Float, Device::Cpu));
                        (x, Tensor::randint(10, [8], (Kind::Int64, Device::Cpu)))
                    });
                    Batch::new(
                        x.shallow_clone(),
                        y.shallow_clone(),
                        Some((x.flip([0]), y.flip([0]))),
                    )
                })
                .collect();
            let train = |graphed: bool| {
                let model = Model::new(&spec.model_spec(), Device::Cpu, Seed(3)).unwrap();
                let mut m = spec.build().unwrap();
                assert!(m.graphable());
                let mut opt = Optimizer::new(&model, spec.optim.clone());
                let mut g = GraphedStep::new(Device::Cpu);
                if graphed {
                    opt.use_device_scalars();
                }
                for (step, b) in batches.iter().enumerate() {
                    let at = StepAt { epoch: 0, step, seed: Seed(1) };
                    if graphed {
                        g.step(&model, m.as_mut(), &mut opt, b, at, 1e-3).unwrap();
                    } else {
                        opt.zero_grad();
                        m.step(&model, b, at).unwrap();
                        opt.step(1e-3);
                    }
                }
                assert_eq!(g.failed, graphed, "the CPU capture failed once and was not retried");
                (model, opt.counts())
            };
            let (eager, replayed) = (train(false), train(true));
            assert!(fingerprint_eq(&eager.0, &replayed.0), "{}", spec.method.name());
            assert_eq!(eager.1, replayed.1, "{}: Adam step counts", spec.method.name());
        }
    }

    #[test]
    fn rates_print_short() {
        assert_eq!(super::short(0.1 * 0.1 * 0.1), "0.001");
        assert_eq!(super::short(0.1), "0.1");
        assert_eq!(super::short(2.5e-7), "0.00000025");
    }

    /// Steps read back together add up as if read one by one; a NaN loss stops at its own step
    /// with nothing of it or of later steps added (the GPU reads once a second).
    #[test]
    fn deferred_step_numbers_add_in_order_and_stop_at_a_nan() {
        use super::{StepStats, Totals};
        use tch::{Device, Tensor};
        let st = |loss: f64, correct: i64, ent: f64| StepStats {
            loss: Tensor::from(loss),
            correct: Tensor::from(correct),
            seen: 10,
            note: String::new(),
            terms: vec![("entropy", Tensor::from(ent))],
        };
        let mut acc = Totals::default();
        let mut pending = vec![(0, st(2.0, 3, 0.5)), (1, st(1.0, 5, 0.25))];
        assert!(acc.take(&mut pending, Device::Cpu).is_ok() && pending.is_empty());
        assert_eq!((acc.loss_sum, acc.correct, acc.seen), (30.0, 8, 20));
        assert_eq!(acc.terms["entropy"], 7.5);
        let mut pending =
            vec![(2, st(1.0, 1, 0.0)), (3, st(f64::NAN, 9, 0.0)), (4, st(1.0, 9, 0.0))];
        let err = acc.take(&mut pending, Device::Cpu).unwrap_err();
        assert!(err.0 == 3 && err.1.is_nan(), "{err:?}");
        assert_eq!((acc.correct, acc.seen), (9, 30));
    }
}
