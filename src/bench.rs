//! Speed measurements (`eio bench`) and the CUDA correctness check a developer runs on a lent
//! GPU machine (`eio bench --check`, `scripts/gpu-check`).

use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::attack::{loss_and_grad, Attack, AttackLoss, PgdConfig};
use crate::error::Result;
use crate::model::{ArchConfig, Classifier, Model, ModelSpec, Route, Target};
use crate::optim::{OptimConfig, Optimizer};
use crate::seed::{Seed, Stream};
use crate::shim::Numerics;
use crate::train::{Batch, MethodConfig, StepAt, TrainSpec};

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Mean milliseconds of `f` over `iters` runs after 3 warm-up runs (CUDA-synchronised).
pub fn time_ms(iters: usize, device: Device, f: impl FnMut()) -> f64 {
    time_ms_warm(iters, 3, device, f)
}

/// Mean milliseconds of `f` over `iters` runs after `warm` warm-up runs (CUDA-synchronised).
pub fn time_ms_warm(iters: usize, warm: usize, device: Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    sync(device);
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    sync(device);
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

/// One row of `eio bench`.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// The model measured.
    pub model: String,
    /// Milliseconds per SGD train step (forward, backward, update).
    pub train_ms: f64,
    /// Milliseconds per input-gradient step (one PGD iteration).
    pub input_grad_ms: f64,
    /// Milliseconds per inference batch.
    pub infer_ms: f64,
    /// Images per second of a PGD-50 evaluation (one random start).
    pub pgd50_images_per_sec: f64,
}

/// Mean milliseconds of `f` over `iters` runs: run eagerly ([`time_ms`]), or with `graphs`
/// once eagerly, then captured as a CUDA graph whose replays are timed ([`crate::graph`]).
fn step_ms(graphs: bool, iters: usize, device: Device, mut f: impl FnMut()) -> Result<f64> {
    if !graphs {
        return Ok(time_ms(iters, device, f));
    }
    f();
    let g = match crate::graph::CudaGraph::capture(device, &mut f) {
        Ok((g, ())) => g,
        Err(e) => {
            // Counted, and named in the row by the caller.
            crate::graph::warn_fallback(&e);
            return Ok(time_ms(iters, device, f));
        }
    };
    let mut failed = None;
    let ms = time_ms(iters, device, || {
        if let Err(e) = g.replay() {
            failed = Some(e);
        }
    });
    failed.map_or(Ok(ms), Err)
}

/// Times a ResNet-20, an RGN (n = 2, 21 gated blocks) and an ensemble of 3 ResNet-20s at
/// `batch` images; on CUDA also the ResNet-20 and the ensemble with their fixed-shape steps
/// replayed from CUDA graphs (`... (CUDA graph)` rows; PGD through `--cuda-graphs`).
pub fn timings(batch: usize, iters: usize, device: Device) -> Result<Vec<Timing>> {
    let was = crate::graph::enabled();
    let mut rows = Vec::new();
    let before = crate::graph::failures();
    let mut run = || -> Result<()> {
        for graphs in [false, true] {
            if graphs && !device.is_cuda() {
                break;
            }
            crate::graph::set_enabled(graphs);
            let suffix = if graphs { " (CUDA graph)" } else { "" };
            for (name, arch) in
                [("resnet20", ArchConfig::plain()), ("rgn n=2 (21 blocks)", ArchConfig::rgn(2))]
            {
                // A fresh random route per step cannot be replayed.
                if graphs && arch.copies > 1 {
                    continue;
                }
                let model = Model::new(&ModelSpec { arch, members: 1 }, device, Seed(0))?;
                let net = &model.nets[0];
                let mut rng = Seed(0).rng(Stream::Route, 0, 0);
                let (x, y) = random_batch(batch, device);
                let mut opt = Optimizer::new(&model, OptimConfig::default());
                let (copies, gates) = (model.spec.arch.copies, model.gates());
                let train_ms = step_ms(graphs, iters, device, || {
                    let r = Route::random(gates, copies, &mut rng);
                    opt.zero_grad();
                    net.forward(&x, &r, true).cross_entropy_for_logits(&y).backward();
                    opt.step(0.01);
                })?;
                let target = Target::fixed_zero(&model);
                let name = format!("{name}{suffix}");
                rows.push(attacked_row(name, train_ms, &target, &x, &y, iters, device, graphs)?);
            }
            rows.push(ensemble_timing(3, batch, iters, device, graphs)?);
        }
        Ok(())
    };
    let out = run();
    crate::graph::set_enabled(was);
    if crate::graph::failures() > before {
        for r in rows.iter_mut().filter(|r| r.model.ends_with("(CUDA graph)")) {
            r.model += " [some captures failed: eager]";
        }
    }
    out.map(|()| rows)
}

/// A random batch of `batch` images and labels on `device`, the same on every call (drawn from
/// libtorch's global generator under [`crate::model::with_global_seed`]).
fn random_batch(batch: usize, device: Device) -> (Tensor, Tensor) {
    crate::model::with_global_seed(0, || {
        let x = Tensor::rand([batch as i64, 3, 32, 32], (Kind::Float, device));
        let y = Tensor::randint(10, [batch as i64], (Kind::Int64, device));
        (x, y)
    })
}

/// The row of a plain ensemble of `n` ResNet-20s: a train step of every member on the batch,
/// and the ensemble (averaged softmax) as the attacked model, computed member by member or,
/// with `--group-members`, as one grouped network.
fn ensemble_timing(
    n: usize,
    batch: usize,
    iters: usize,
    device: Device,
    graphs: bool,
) -> Result<Timing> {
    let model = Model::new(&ModelSpec { arch: ArchConfig::plain(), members: n }, device, Seed(0))?;
    let (x, y) = random_batch(batch, device);
    let mut opt = Optimizer::new(&model, OptimConfig::default());
    let r = Route::zeros(0);
    let train_ms = step_ms(graphs, iters, device, || {
        opt.zero_grad();
        let losses =
            model.nets.iter().map(|m| m.forward(&x, &r, true).cross_entropy_for_logits(&y));
        losses.reduce(|a, b| a + b).expect("members").backward();
        opt.step(0.01);
    })?;
    let target = Target::fixed_zero(&model);
    let name = format!("ensemble of {n}{}", if graphs { " (CUDA graph)" } else { "" });
    attacked_row(name, train_ms, &target, &x, &y, iters, device, graphs)
}

/// A row of `eio bench`: `train_ms` measured by the caller, then the input-gradient step, the
/// inference batch and PGD-50 throughput of `target` (eval mode, fixed all-zero route) on
/// `(x, y)`, eagerly or replayed from CUDA graphs.
#[allow(clippy::too_many_arguments)]
fn attacked_row(
    model: String,
    train_ms: f64,
    target: &Target,
    x: &Tensor,
    y: &Tensor,
    iters: usize,
    device: Device,
    graphs: bool,
) -> Result<Timing> {
    let input_grad_ms = step_ms(graphs, iters, device, || {
        let xa = x.detach().set_requires_grad(true);
        let loss = target.logits(&xa, None).cross_entropy_for_logits(y);
        let g = Tensor::run_backward(&[loss], &[&xa], false, false);
        let _ = g[0].sign();
    })?;
    let infer_ms = step_ms(graphs, iters, device, || {
        let _guard = tch::no_grad_guard();
        let _ = target.logits(x, None).argmax(-1, false);
    })?;
    // With graphs on, each PGD run captures its iteration once and replays it 49 times.
    let pgd = PgdConfig { restarts: 1, ..PgdConfig::whitebox(0.03) };
    let mut arng = Seed(0).rng(Stream::Eval, 0, 0);
    let pgd_ms = time_ms((iters / 10).max(1), device, || {
        let xa = pgd.perturb(target, x, y, &mut arng);
        let _guard = tch::no_grad_guard();
        let _ = target.logits(&xa, None).argmax(-1, false);
    });
    Ok(Timing {
        model,
        train_ms,
        input_grad_ms,
        infer_ms,
        pgd50_images_per_sec: x.size()[0] as f64 / (pgd_ms / 1e3),
    })
}

/// One row of [`method_timings`].
#[derive(Debug, Clone, Serialize)]
pub struct MethodTiming {
    /// The method, its member count, and whether its step was replayed from a CUDA graph.
    pub method: String,
    /// Milliseconds per step.
    pub ms: f64,
    /// Peak memory over the timed steps ([`crate::memory::peak`]: allocated device memory on
    /// CUDA, weights and optimiser state included; the process's resident set on the CPU).
    pub peak_memory_bytes: Option<u64>,
}

/// Milliseconds and peak memory of one training step (method step plus optimiser step) of
/// every training method at its defaults (EIO: n = 2, p = 3, 10 distillation steps; DVERGE,
/// ADP, GAL, TRS: 3 members), on `batch` random images, mean of `iters` after one warm-up
/// step. On CUDA the methods whose step can be replayed ([`crate::train::Method::graphable`]:
/// all but EIO) get a second row with the step replayed from a CUDA graph, as `--cuda-graphs`
/// trains them.
pub fn method_timings(batch: usize, iters: usize, device: Device) -> Result<Vec<MethodTiming>> {
    let mut rows = Vec::new();
    let (x, y) = random_batch(batch, device);
    for method in MethodConfig::every() {
        let spec = TrainSpec::defaults(method);
        let label = match &spec.method {
            MethodConfig::Eio(c) if c.adv.is_some() => "eio+advt".to_string(),
            m => m.name().to_string(),
        };
        for graphs in [false, true] {
            let mut model = Model::new(&spec.model_spec(), device, Seed(0))?;
            let mut m = spec.build()?;
            // As training lays it out (GAL and TRS contiguous on the CPU under auto).
            crate::train::layout_for(&mut model, m.as_ref());
            if graphs && !(device.is_cuda() && m.graphable()) {
                continue;
            }
            let mut opt = Optimizer::new(&model, spec.optim.clone());
            let batch =
                Batch::new(x.shallow_clone(), y.shallow_clone(), Some((x.flip([0]), y.flip([0]))));
            let mut replay = graphs.then(|| crate::train::GraphedStep::new(device));
            let mut step = 0;
            let mut failed = None;
            // Warm-up and capture are the first two steps.
            let warm = if graphs { 2 } else { 1 };
            crate::memory::reset_peak(device);
            let ms = time_ms_warm(iters, warm, device, || {
                let at = StepAt { epoch: 0, step, seed: Seed(1) };
                let out = match &mut replay {
                    Some(g) => g.step(&model, m.as_mut(), &mut opt, &batch, at, spec.optim.lr),
                    None => {
                        opt.zero_grad();
                        m.step(&model, &batch, at).inspect(|_| opt.step(spec.optim.lr))
                    }
                };
                if let Err(e) = out {
                    failed = Some(e);
                }
                step += 1;
            });
            if let Some(e) = failed {
                return Err(e);
            }
            let suffix = match &replay {
                Some(g) if g.failed() => ", CUDA graph capture failed: eager",
                Some(_) => ", CUDA graph",
                None => "",
            };
            rows.push(MethodTiming {
                method: format!("{label} ({} member(s){suffix})", spec.members),
                ms,
                peak_memory_bytes: crate::memory::peak(device),
            });
        }
    }
    Ok(rows)
}

/// One comparison of the device check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    /// What was compared or run.
    pub what: String,
    /// Largest difference relative to the largest CPU value (0 for method steps).
    pub rel_diff: f64,
    /// The tolerance it had to meet.
    pub tolerance: f64,
    /// Whether it met it (method steps: finite losses).
    pub ok: bool,
}

/// The deterministic probe images of the tests (`bench/common.py::probe_input`).
pub fn probe_input(n: usize) -> Tensor {
    let v: Vec<f32> =
        (0..n * 3072).map(|i| (((i as u64 * 7919) % 251) as f64 / 250.0) as f32).collect();
    Tensor::from_slice(&v).view([n as i64, 3, 32, 32])
}

fn on_cpu(a: &Tensor, b: &Tensor) -> (Tensor, Tensor) {
    (a.to_device(Device::Cpu).to_kind(Kind::Double), b.to_device(Device::Cpu).to_kind(Kind::Double))
}

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = on_cpu(a, b);
    (&a - &b).abs().max().double_value(&[]) / a.abs().max().double_value(&[]).max(1e-12)
}

/// The largest [`rel`] difference over the variables of two models of one spec.
fn rel_models(a: &Model, b: &Model) -> f64 {
    let theirs = b.vs.variables();
    a.vs.variables().iter().map(|(k, v)| rel(v, &theirs[k])).fold(0.0, f64::max)
}

/// 1 - cosine similarity. Input gradients are compared by direction: they jump where a
/// pre-activation lies within rounding of a ReLU kink, which a few of the ~10^6 activations of
/// a batch do under any change of summation order (layout, device, f32 against f64).
fn angle(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = on_cpu(a, b);
    1.0 - ((&a * &b).sum(Kind::Double) / (a.norm() * b.norm()).clamp_min(1e-300)).double_value(&[])
}

/// Checks that `device` computes what the CPU computes: eval-mode logits and cross-entropy
/// input gradients of a ResNet-20, an RGN and a 3-member ensemble on fixed images, in IEEE
/// float32 (TF32 convolutions off: they round to about 1e-3, and on an H100 in channels-last
/// put the gradients' direction 2e-3 off; relative tolerance 1e-3 for logits, gradients within
/// 1e-3 of the CPU's direction, 1 - cosine: other summation orders and algorithms), and that two
/// steps of every training method run there with finite losses. On CUDA also the CUDA-graph
/// check (CUDA graphs against eager steps).
pub fn device_check(device: Device) -> Result<Vec<CheckRow>> {
    // The switches are process-wide: left alone on the CPU, where they change nothing.
    if !device.is_cuda() {
        return device_check_now(device);
    }
    let exact = Numerics { cudnn_tf32: false, ..Numerics::current() };
    exact.within(|| device_check_now(device))
}

fn device_check_now(device: Device) -> Result<Vec<CheckRow>> {
    let mut rows = Vec::new();
    let x = probe_input(16);
    let y = Tensor::from_slice(&(0..16).map(|i| i % 10).collect::<Vec<i64>>());
    for (name, spec) in [
        ("resnet20", ModelSpec { arch: ArchConfig::plain(), members: 1 }),
        ("rgn n=2", ModelSpec { arch: ArchConfig::rgn(2), members: 1 }),
        ("ensemble of 3", ModelSpec { arch: ArchConfig::plain(), members: 3 }),
    ] {
        let cpu = Model::new(&spec, Device::Cpu, Seed(1))?;
        let mut dev = Model::new(&spec, device, Seed(1))?;
        dev.vs.copy(&cpu.vs)?;
        let (tc, td) = (Target::fixed_zero(&cpu), Target::fixed_zero(&dev));
        let (xd, yd) = (x.to_device(device), y.to_device(device));
        let lc = tch::no_grad(|| tc.logits(&x, None));
        let ld = tch::no_grad(|| td.logits(&xd, None));
        let d = rel(&lc, &ld);
        rows.push(CheckRow {
            what: format!("{name} logits"),
            rel_diff: d,
            tolerance: 1e-3,
            ok: d <= 1e-3,
        });
        let gc = loss_and_grad(&tc, &x, &y, AttackLoss::CrossEntropy, None, 1).grad;
        let gd = loss_and_grad(&td, &xd, &yd, AttackLoss::CrossEntropy, None, 1).grad;
        let d = angle(&gc, &gd);
        rows.push(CheckRow {
            what: format!("{name} input gradient (1 - cos)"),
            rel_diff: d,
            tolerance: 1e-3,
            ok: d <= 1e-3,
        });
    }
    // The grouped ensemble (--group-members) against the per-member forward, on the device.
    let ens = Model::new(&ModelSpec { arch: ArchConfig::plain(), members: 3 }, device, Seed(1))?;
    let xd = x.to_device(device);
    let (each, grouped) = tch::no_grad(|| {
        let r = Route::zeros(0);
        let nets: Vec<&crate::model::Net> = ens.nets.iter().collect();
        (
            crate::model::ensemble_logits(
                ens.nets.iter().map(|n| n.forward(&xd, &r, false)).collect(),
            ),
            crate::model::ensemble_logits(
                crate::model::Net::grouped_logits(&nets, &xd, None).unbind(0),
            ),
        )
    });
    let d = rel(&each, &grouped);
    rows.push(CheckRow {
        what: "ensemble of 3 grouped vs per member".into(),
        rel_diff: d,
        tolerance: 1e-3,
        ok: d <= 1e-3,
    });
    if device.is_cuda() {
        rows.extend(graph_check(device)?);
    }
    for method in MethodConfig::every() {
        let spec = TrainSpec::defaults(method);
        let model = Model::new(&spec.model_spec(), device, Seed(2))?;
        let mut m = spec.build()?;
        let mut opt = Optimizer::new(&model, spec.optim.clone());
        let xd = probe_input(16).to_device(device);
        let batch = Batch::new(
            xd.shallow_clone(),
            y.to_device(device),
            Some((xd.flip([0]), y.to_device(device))),
        );
        let mut ok = true;
        for step in 0..2 {
            opt.zero_grad();
            let st = m.step(&model, &batch, StepAt { epoch: 0, step, seed: Seed(3) })?;
            ok &= st.loss.double_value(&[]).is_finite();
            opt.step(spec.optim.lr);
        }
        rows.push(CheckRow {
            what: format!("{} steps", spec.method.name()),
            rel_diff: 0.0,
            tolerance: 0.0,
            ok,
        });
    }
    Ok(rows)
}

/// CUDA graphs (`--cuda-graphs`) against eager steps on `device`: a PGD-10 attack, and two
/// epochs of training 2-member ensembles (baseline, DVERGE, GAL, TRS, ADP, PGD-AT: SGD and
/// Adam, noise and PGD starts drawn ahead) on 50 synthetic images in batches of 16 (eager
/// warm-up, capture, replays, a partial batch, a new learning rate in epoch 2). The same
/// kernels on the same inputs: with deterministic algorithms ([`Numerics`]) the results should
/// agree to the last bit. Without them, two eager runs already differ (an H100's cuDNN sums some
/// weight gradients with atomics; 2 epochs at these rates amplified it to 0.3-1 relative in the
/// most-changed tensor): the row before the training rows, two eager runs of the baseline,
/// shows that the deterministic runs the graphs are compared with do repeat.
fn graph_check(device: Device) -> Result<Vec<CheckRow>> {
    if !device.is_cuda() {
        return graph_check_now(device);
    }
    let deterministic = Numerics { deterministic: true, ..Numerics::current() };
    deterministic.within(|| graph_check_now(device))
}

fn graph_check_now(device: Device) -> Result<Vec<CheckRow>> {
    let was = crate::graph::enabled();
    let mut rows = Vec::new();
    // A failed capture falls back to eager steps (equal numbers, nothing replayed): the row
    // says so and fails, since the graphs it is about were not checked. (On the CPU nothing is
    // captured, so the process-wide count can only have moved elsewhere, as in parallel tests.)
    let row = |what: &str, d: f64, failures_before: usize| {
        let failed = device.is_cuda() && crate::graph::failures() > failures_before;
        CheckRow {
            what: if failed {
                format!("{what} (capture failed: ran eagerly)")
            } else {
                what.into()
            },
            rel_diff: d,
            tolerance: 1e-6,
            ok: d <= 1e-6 && !failed,
        }
    };
    let model = Model::new(&ModelSpec { arch: ArchConfig::plain(), members: 1 }, device, Seed(1))?;
    let target = Target::fixed_zero(&model);
    let x = probe_input(16).to_device(device);
    let y = Tensor::from_slice(&(0..16).map(|i| i % 10).collect::<Vec<i64>>()).to_device(device);
    let pgd = PgdConfig { steps: 10, restarts: 1, ..PgdConfig::whitebox(0.03) };
    let attack = |on: bool| {
        crate::graph::set_enabled(on);
        pgd.perturb(&target, &x, &y, &mut Seed(4).rng(Stream::Eval, 0, 0))
    };
    let before = crate::graph::failures();
    let (eager, replayed) = (attack(false), attack(true));
    rows.push(row("PGD-10 from a CUDA graph vs eager", rel(&eager, &replayed), before));

    let n = 50;
    let pixels: Vec<u8> = (0..n * 3072).map(|i| ((i as u64 * 7919) % 251) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let classes = (0..10).map(|c| format!("c{c}")).collect();
    let data = crate::data::Dataset::from_raw(pixels, labels, classes)?;
    let train = |spec: &TrainSpec, on: bool| -> Result<Model> {
        crate::graph::set_enabled(on);
        let mut m = Model::new(&spec.model_spec(), device, Seed(2))?;
        let dir = std::env::temp_dir().join(format!("eio-graph-check-{}-{on}", std::process::id()));
        let run = crate::train::RunDir { dir: dir.clone(), resume: false, force: true };
        let text = spec.to_toml()?;
        let out = crate::train::fit(
            &mut m,
            spec.build()?.as_mut(),
            &spec.train,
            &spec.optim,
            &text,
            &data,
            &data,
            &run,
        );
        let _ = std::fs::remove_dir_all(&dir);
        out.map(|_| m)
    };
    // Fewer inner steps than the defaults: a capture records them all the same way.
    let dverge = crate::train::dverge::DvergeConfig {
        distill: crate::distill::DistillConfig {
            steps: 3,
            ..crate::distill::DistillConfig::dverge()
        },
        ..Default::default()
    };
    let trs = crate::train::trs::TrsConfig { steps: 2, ..Default::default() };
    let adv = crate::train::adv::AdvTerm {
        attack: crate::attack::AttackConfig::Pgd(PgdConfig {
            steps: 3,
            ..crate::train::adv::AdvTerm::pgd(8.0 / 255.0)
        }),
        ..Default::default()
    };
    let methods = [
        ("a baseline ensemble of 2", MethodConfig::Baseline),
        ("DVERGE, 2 members", MethodConfig::Dverge(dverge)),
        ("GAL, 2 members", MethodConfig::Gal(Default::default())),
        ("TRS, 2 members", MethodConfig::Trs(trs)),
        ("ADP, 2 members", MethodConfig::Adp(Default::default())),
        ("PGD-AT, 2 members", MethodConfig::Adv(adv)),
    ];
    let small = |method| {
        let mut spec = TrainSpec::defaults(method);
        spec.members = 2;
        spec.train.epochs = 2;
        spec.train.batch_size = 16;
        spec.train.checkpoint_every = 0;
        spec.optim.milestones = vec![1];
        spec
    };
    let spec = small(MethodConfig::Baseline);
    let (a, b) = (train(&spec, false)?, train(&spec, false)?);
    crate::graph::set_enabled(was);
    let d = rel_models(&a, &b);
    rows.push(row(
        "2 epochs of a baseline ensemble of 2, eager twice",
        d,
        crate::graph::failures(),
    ));
    for (name, method) in methods {
        let spec = small(method);
        let before = crate::graph::failures();
        let trained = (train(&spec, false), train(&spec, true));
        crate::graph::set_enabled(was);
        let (eager, replayed) = (trained.0?, trained.1?);
        let d = rel_models(&eager, &replayed);
        rows.push(row(&format!("2 epochs of {name} from CUDA graphs vs eager"), d, before));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    /// On the CPU the graph check runs every comparison eagerly both ways (capture needs CUDA):
    /// each must then agree exactly, which checks the comparison itself.
    #[test]
    fn graph_check_compares_equal_runs_as_equal() {
        for row in super::graph_check(tch::Device::Cpu).unwrap() {
            assert!(row.ok && row.rel_diff == 0.0, "{row:?}");
        }
    }
}
