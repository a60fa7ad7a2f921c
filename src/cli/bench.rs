//! `eio bench`: milliseconds per train step, per input-gradient (PGD) step and per inference
//! batch, for ResNet-20 and for an RGN.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use tch::{Kind, Tensor};

use super::DeviceArg;
use eio::attack::{Attack, PgdConfig};
use eio::model::{ArchConfig, Model, ModelSpec, Route, Target};
use eio::optim::{OptimConfig, Optimizer};
use eio::seed::{Seed, Stream};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Batch size.
    #[arg(long, default_value_t = 128, value_parser = super::positive)]
    batch_size: usize,
    /// Timed repetitions of each measurement (after 3 warm-up runs).
    #[arg(long, default_value_t = 20, value_parser = super::positive)]
    iters: usize,
    /// Where to compute.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
}

fn time_ms(iters: usize, device: tch::Device, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    if let tch::Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    if let tch::Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

pub fn run(a: BenchArgs) -> Result<()> {
    let device = a.device.device()?;
    println!(
        "eio bench: batch {}, {} iterations, device {:?}, {} threads",
        a.batch_size,
        a.iters,
        device,
        tch::get_num_threads()
    );
    println!(
        "{:<24} {:>12} {:>16} {:>14} {:>14}",
        "model", "train ms", "input-grad ms", "infer ms", "PGD-50 img/s"
    );
    for (name, arch) in
        [("resnet20", ArchConfig::plain()), ("rgn n=2 (21 blocks)", ArchConfig::rgn(2))]
    {
        let model = Model::new(&ModelSpec { arch, members: 1 }, device, Seed(0))?;
        let net = &model.nets[0];
        let mut rng = Seed(0).rng(Stream::Route, 0, 0);
        tch::manual_seed(0);
        let x = Tensor::rand([a.batch_size as i64, 3, 32, 32], (Kind::Float, device));
        let y = Tensor::randint(10, [a.batch_size as i64], (Kind::Int64, device));
        let mut opt = Optimizer::new(&model, OptimConfig::default());
        let copies = model.spec.arch.copies;
        let gates = model.gates();
        let train = time_ms(a.iters, device, || {
            let r = Route::random(gates, copies, &mut rng);
            opt.zero_grad();
            net.forward(&x, &r, true).cross_entropy_for_logits(&y).backward();
            opt.step(0.01);
        });
        let r = Route::zeros(gates);
        let grad = time_ms(a.iters, device, || {
            let xa = x.detach().set_requires_grad(true);
            let loss = net.forward(&xa, &r, false).cross_entropy_for_logits(&y);
            let g = Tensor::run_backward(&[loss], &[&xa], false, false);
            let _ = g[0].sign();
        });
        let infer = time_ms(a.iters, device, || {
            let _guard = tch::no_grad_guard();
            let _ = net.forward(&x, &r, false).argmax(-1, false);
        });
        // A PGD-50 evaluation (eps 0.03, step eps/5, one random start) through the attack code.
        let target = Target::fixed_zero(&model);
        let pgd = PgdConfig { restarts: 1, ..PgdConfig::whitebox(0.03) };
        let mut arng = Seed(0).rng(Stream::Eval, 0, 0);
        let pgd_ms = time_ms((a.iters / 10).max(1), device, || {
            let xa = pgd.perturb(&target, &x, &y, &mut arng);
            let _guard = tch::no_grad_guard();
            let _ = net.forward(&xa, &r, false).argmax(-1, false);
        });
        let pgd_rate = a.batch_size as f64 / (pgd_ms / 1e3);
        println!("{name:<24} {train:>12.1} {grad:>16.1} {infer:>14.1} {pgd_rate:>14.1}");
    }
    Ok(())
}
