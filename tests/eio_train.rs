//! Ensemble-in-One (issue 5): a diversification step touches only the sampled copies, gradient
//! accumulation over paths, exact resume, and the train -> derive -> fine-tune -> eval ->
//! stability pipeline through the CLI on a few real images.

use std::collections::{BTreeMap, BTreeSet};

use tch::{Device, Kind, Tensor};

use eio::attack::{AttackConfig, PgdConfig};
use eio::data::{Dataset, Split};
use eio::distill::DistillConfig;
use eio::model::{with_global_seed, ArchConfig, Model, ModelSpec, Route};
use eio::optim::{OptimConfig, Optimizer};
use eio::seed::Seed;
use eio::train::adv::AdvTerm;
use eio::train::diversify::{cross_train, distill_all};
use eio::train::eio::{Eio, EioConfig};
use eio::train::{fit, Batch, Method, RunDir, StepAt, TrainConfig};

use crate::util::{assert_user_error, cifar_jpeg, eio, tempdir, Interrupted};

fn rgn(copies: usize) -> Model {
    Model::new(&ModelSpec { arch: ArchConfig::rgn(copies), members: 1 }, Device::Cpu, Seed(4))
        .unwrap()
}

fn snapshot(m: &Model) -> BTreeMap<String, Tensor> {
    m.vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect()
}

fn random_batch(n: i64) -> Batch {
    with_global_seed(11, || {
        let x = Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        let xt = Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
        let yt = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        Batch::new(x, y, Some((xt, yt)))
    })
}

/// RGN variable names used by `routes` (gated copies on the routes and every ungated variable).
fn names_on(model: &Model, routes: &[Route]) -> BTreeSet<String> {
    let plain =
        Model::new(&ModelSpec { arch: ArchConfig::plain(), members: 1 }, Device::Cpu, Seed(0))
            .unwrap();
    let mut out = BTreeSet::new();
    for name in plain.vs.variables().keys() {
        for r in routes {
            out.insert(model.nets[0].routed_name(name, r));
        }
    }
    out
}

#[test]
fn one_step_changes_only_the_copies_on_the_sampled_paths() {
    // n = 3 copies and p = 2 paths: every gate keeps at least one copy off the sampled paths.
    let configs = [
        EioConfig {
            paths: 2,
            adv: Some(AdvTerm {
                attack: AttackConfig::Pgd(PgdConfig { steps: 2, ..AdvTerm::pgd(8.0 / 255.0) }),
                ..Default::default()
            }),
            ..Default::default()
        },
        EioConfig { paths: 2, distill: DistillConfig::dverge(), ..Default::default() },
    ];
    for cfg in configs {
        let model = rgn(3);
        let before = snapshot(&model);
        let mut eio = Eio::new(cfg.clone()).unwrap();
        let at = StepAt { epoch: 0, step: 5, seed: Seed(2) };
        let plan = eio.plan(&model, at);
        assert_eq!(plan.branches.len(), 2);
        let batch = random_batch(4);
        let mut opt = Optimizer::new(&model, OptimConfig::default());
        opt.zero_grad();
        let st = eio.step(&model, &batch, at).unwrap();
        assert!(st.loss.double_value(&[]).is_finite() && st.seen == 2 * 4, "{st:?}");
        assert!(st.note.contains(&format!("layer {}", plan.layer)), "{}", st.note);
        opt.step(0.1);
        let on =
            names_on(&model, &plan.branches.iter().map(|b| b.route.clone()).collect::<Vec<_>>());
        let after = model.vs.variables();
        let mut off = 0;
        for (name, old) in &before {
            let new = &after[name];
            if on.contains(name) {
                // Weights get gradients; BatchNorm statistics move with the train-mode forwards.
                assert!(
                    !new.equal(old),
                    "{name} is on a sampled path but did not change ({cfg:?})"
                );
            } else {
                off += 1;
                assert!(new.equal(old), "{name} is off the sampled paths but changed ({cfg:?})");
                assert!(!new.grad().defined(), "{name} got a gradient");
            }
        }
        // 21 gates x (conv + BN weight, bias, mean, var) copies on no sampled path.
        assert!(off >= 21 * 5, "only {off} variables off the sampled paths");
    }
}

fn zero_grads(model: &Model) {
    for mut v in model.vs.trainable_variables() {
        v.zero_grad();
    }
}

fn grads_by_name(model: &Model) -> BTreeMap<String, Tensor> {
    model
        .vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, v)| {
            let g = v.grad();
            (k, if g.defined() { g.copy() } else { v.zeros_like() })
        })
        .collect()
}

fn assert_close(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, what: &str) {
    for (k, x) in a {
        let d = (x - &b[k]).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1e-6);
        assert!(d <= 1e-5 * scale.max(1.0), "{what}: {k} differs by {d} (scale {scale})");
    }
}

#[test]
fn accumulated_gradient_is_the_sum_of_per_path_gradients() {
    let model = rgn(2);
    let eio = Eio::new(EioConfig::default()).unwrap();
    let at = StepAt { epoch: 1, step: 0, seed: Seed(3) };
    let plan = eio.plan(&model, at);
    let p = plan.branches.len();
    assert!(p >= 2);
    let b = random_batch(4);
    let net = &model.nets[0];
    let distilled =
        distill_all(&model, &plan, &eio.config().distill, &b.x, &b.target.as_ref().unwrap().0, at);

    // All paths accumulated.
    zero_grads(&model);
    for j in 0..p {
        cross_train(&model, &plan.branches, j, &distilled, None, &b.y, p as f64);
    }
    let total = grads_by_name(&model);

    // Path by path, from zero gradients; and path j's summed loss in one backward.
    let mut sum: BTreeMap<String, Tensor> =
        total.iter().map(|(k, v)| (k.clone(), v.zeros_like())).collect();
    for j in 0..p {
        zero_grads(&model);
        cross_train(&model, &plan.branches, j, &distilled, None, &b.y, p as f64);
        let gj = grads_by_name(&model);
        zero_grads(&model);
        let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for (i, xd) in distilled.iter().enumerate() {
            if i != j {
                loss +=
                    net.forward(xd, &plan.branches[j].route, true).cross_entropy_for_logits(&b.y);
            }
        }
        (loss / p as f64).backward();
        assert_close(&gj, &grads_by_name(&model), "per-term vs summed backward");
        for (k, g) in gj {
            sum.insert(k.clone(), &sum[&k] + g);
        }
    }
    assert_close(&total, &sum, "accumulated vs sum of per-path gradients");

    // One SGD step (fresh momentum) on the accumulated gradient: w - lr * (g + wd * w).
    zero_grads(&model);
    for j in 0..p {
        cross_train(&model, &plan.branches, j, &distilled, None, &b.y, p as f64);
    }
    let g = grads_by_name(&model);
    let w0 = snapshot(&model);
    let cfg = OptimConfig::default();
    let mut opt = Optimizer::new(&model, cfg.clone());
    opt.step(0.05);
    let w1 = snapshot(&model);
    for (k, gk) in &g {
        let moved = gk.abs().max().double_value(&[]) > 0.0;
        let want =
            if moved { &w0[k] - (gk + &w0[k] * cfg.weight_decay) * 0.05 } else { w0[k].copy() };
        let d = (&w1[k] - want).abs().max().double_value(&[]);
        assert!(d < 1e-6, "{k}: SGD step off by {d}");
    }
}

#[test]
fn interrupted_diversification_resumes_exactly() {
    let train = Dataset::load(&cifar_jpeg(), Split::Train, None).unwrap().first_per_class(3);
    let test = train.first_per_class(1);
    let t =
        TrainConfig { epochs: 2, batch_size: 10, checkpoint_every: 1, ..TrainConfig::default() };
    let o = OptimConfig { lr: 0.05, ..OptimConfig::default() };
    let cfg = EioConfig {
        distill: DistillConfig { steps: 3, ..Default::default() },
        ..Default::default()
    };
    let dir = tempdir();
    let run =
        |name: &str, resume: bool| RunDir { dir: dir.path().join(name), resume, force: false };

    let mut a = rgn(2);
    let mut m = Eio::new(cfg.clone()).unwrap();
    fit(&mut a, &mut m, &t, &o, "cfg", &train, &test, &run("a", false)).unwrap();

    let mut b = rgn(2);
    let mut crash = Interrupted { inner: Eio::new(cfg.clone()).unwrap(), fail_at: 2 };
    assert!(fit(&mut b, &mut crash, &t, &o, "cfg", &train, &test, &run("b", false)).is_err());
    let mut b = rgn(2);
    let mut m = Eio::new(cfg).unwrap();
    let hist = fit(&mut b, &mut m, &t, &o, "cfg", &train, &test, &run("b", true)).unwrap();
    assert_eq!(hist.len(), 2);
    // Each epoch records where it ran, once, across the stop.
    let here = eio::train::compute_label(tch::Device::Cpu);
    assert!(hist.iter().all(|e| e.devices == [here.clone()]), "{hist:?}");
    // Every random draw of a step (layer, routes, data, random starts) is a function of the seed
    // and the step, so the resumed run is bit-identical to the uninterrupted one.
    let vb = b.vs.variables();
    for (k, v) in a.vs.variables() {
        let d = (&v - &vb[&k]).abs().max().double_value(&[]);
        assert!(v.equal(&vb[&k]), "{k} differs by {d} after resume");
    }
}

#[test]
fn train_derive_finetune_eval_stability_through_the_cli() {
    let dir = tempdir();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let data = cifar_jpeg().display().to_string();
    let common = ["--device", "cpu", "--data", data.as_str()];
    let run = |args: &[&str]| {
        let all: Vec<&str> = args.iter().chain(common.iter()).copied().collect();
        let (ok, out, err) = eio(&all);
        assert!(ok, "eio {all:?} failed:\n{err}");
        out + &err
    };
    let small =
        ["--train-per-class", "2", "--test-per-class", "1", "--epochs", "1", "--batch-size", "10"];

    // Warm-up then diversification, with tiny distillation.
    let eio_dir = d("eio");
    let mut args = vec!["train", "eio", "--out", eio_dir.as_str(), "--warmup-epochs", "1"];
    args.extend(small);
    args.extend(["--distill-steps", "2", "--paths", "3", "--layer-per", "epoch"]);
    let out = run(&args);
    assert!(out.contains("rgn-warmup") && out.contains(" eio on 20 training images"), "{out}");
    let cfg = std::fs::read_to_string(dir.path().join("eio/config.toml")).unwrap();
    assert!(
        cfg.contains("[method.eio.distill]")
            && cfg.contains("steps = 2")
            && cfg.contains("layer_per = \"epoch\""),
        "{cfg}"
    );
    let mut again = args.clone();
    again.push("--resume");
    assert!(run(&again).contains("already finished"));

    // The same from --init: a checkpoint of the warm-up run.
    let warm_ckpt = d("eio/warmup/checkpoint.safetensors");
    let init_dir = d("eio-init");
    let mut args = vec!["train", "eio", "--init", warm_ckpt.as_str(), "--out", init_dir.as_str()];
    args.extend(small);
    args.extend(["--distill-steps", "1", "--adv", "true", "--adv-steps", "1"]);
    run(&args);
    let cfg = std::fs::read_to_string(dir.path().join("eio-init/config.toml")).unwrap();
    assert!(cfg.starts_with("# initialised from") && cfg.contains("[method.eio.adv]"), "{cfg}");

    // Derive the best of 3 paths, fine-tune it, evaluate it.
    let model = d("eio/model.safetensors");
    let derived = d("derived.safetensors");
    let json = d("derive.json");
    let out = run(&[
        "derive",
        "--model",
        &model,
        "--best-of",
        "3",
        "--val-images",
        "20",
        "--val-steps",
        "2",
        "--output",
        &derived,
        "--json",
        &json,
    ]);
    assert_eq!(out.matches("derived path").count(), 1, "{out}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["candidates"].as_array().unwrap().len(), 3);
    let ft = d("ft");
    let mut args = vec!["finetune", "--model", derived.as_str(), "--out", ft.as_str()];
    args.extend(small);
    run(&args);
    let ft_model = d("ft/model.safetensors");
    let out = run(&["eval", "--model", &ft_model, "--test-per-class", "2"]);
    assert!(out.contains("model") && out.contains('%'), "{out}");

    // An ensemble of 2 derived paths.
    let ens = d("ens.safetensors");
    run(&["derive", "--model", &model, "--paths", "2", "--seed", "5", "--output", &ens]);
    let out = run(&["eval", "--model", &ens, "--test-per-class", "1"]);
    assert!(out.contains("ensemble of 2"), "{out}");

    // Stability of 2 paths with fine-tuning, the fine-tuned model as reference.
    let stab = d("stab");
    run(&[
        "stability",
        "--model",
        &model,
        "-k",
        "2",
        "--finetune-epochs",
        "1",
        "--train-per-class",
        "1",
        "--steps",
        "2",
        "--restarts",
        "2",
        "--test-per-class",
        "1",
        "--reference",
        &ft_model,
        "--out",
        &stab,
    ]);
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("stab/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 3);
    let s = &report["summary"]["robust"][0];
    assert!(s["min"].as_f64().unwrap() <= s["mean"].as_f64().unwrap());
    assert!(dir.path().join("stab/path1/finetune/model.safetensors").exists());

    // User errors are one line.
    let bad = d("bad");
    assert_user_error(
        &["train", "eio", "--out", &bad, "--paths", "1", "--data", &data],
        "2 to 64 paths",
    );
    assert_user_error(
        &["train", "eio", "--out", &bad, "--paths", "100000", "--data", &data],
        "2 to 64 paths",
    );
    assert_user_error(
        &["train", "eio", "--init", &model, "--copies", "3", "--out", &bad, "--data", &data],
        "--copies",
    );
}
