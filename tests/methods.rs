//! The baseline methods (issue 8): loss terms against PyTorch golden values, GAL's double
//! backprop against finite differences, DVERGE's per-member isolation, Adam against PyTorch,
//! and a few steps of every method lowering its loss.

use std::collections::BTreeMap;

use tch::{Device, Kind, Tensor};

use eio::model::Branch;
use eio::model::{with_global_seed, ArchConfig, Model, ModelSpec};
use eio::optim::{OptimConfig, Optimizer};
use eio::seed::Seed;
use eio::train::adp::regularisers;
use eio::train::diversify::{self, Plan};
use eio::train::dverge::DvergeConfig;
use eio::train::gal::{coherence, Gal, GalConfig};
use eio::train::trs::{magnitude, similarity};
use eio::train::{Batch, MethodConfig, StepAt, TrainSpec};

fn ensemble(members: usize, seed: u64) -> Model {
    Model::new(&ModelSpec { arch: ArchConfig::plain(), members }, Device::Cpu, Seed(seed)).unwrap()
}

fn fixed(n: usize, b: usize, d: usize, f: impl Fn(usize, usize, usize) -> f64) -> Vec<Tensor> {
    (0..n)
        .map(|i| {
            let v: Vec<f32> = (0..b * d).map(|j| f(i, j / d, j % d) as f32).collect();
            Tensor::from_slice(&v).view([b as i64, d as i64])
        })
        .collect()
}

fn close(got: &Tensor, want: f64, what: &str) {
    let g = got.double_value(&[]);
    assert!((g - want).abs() < 2e-5 * want.abs().max(1.0), "{what}: {g} vs PyTorch {want}");
}

/// Golden values from PyTorch 2.13 (CPU), computed with the reference codes' formulas:
///
/// ```python
/// import math, torch, torch.nn.functional as F
/// N, B, K, D = 3, 4, 10, 6
/// logits = [torch.tensor([[2 * math.sin(i * 7 + b * 3 + k) for k in range(K)] for b in range(B)]) for i in range(N)]
/// y = torch.tensor([1, 4, 7, 0])
/// grads = [torch.tensor([[math.cos(i * 5 + b * 2 + d * 0.7) + 0.1 * i for d in range(D)] for b in range(B)]) for i in range(N)]
/// y_true = torch.zeros(B, K); y_true.scatter_(1, y.view(-1, 1), 1)          # ADP (train_adp.py)
/// probs = [F.softmax(l, dim=-1) for l in logits]; ens = sum(probs) / N
/// entropy = torch.sum(-ens * torch.log(ens + 1e-20), dim=-1).mean()
/// mask = torch.eq(torch.ones_like(y_true) - y_true, torch.ones_like(y_true))
/// m = torch.stack([torch.masked_select(p, mask).reshape(-1, K - 1) for p in probs], dim=1)
/// m = m / torch.norm(m, p=2, dim=-1, keepdim=True)
/// log_det = torch.logdet(m @ m.permute(0, 2, 1) + 1e-6 * torch.eye(N).unsqueeze(0)).mean()
/// cos = torch.stack([F.cosine_similarity(grads[i], grads[j], dim=-1)            # GAL
///                    for i in range(N) for j in range(i + 1, N)], dim=-1)
/// coh = torch.log(cos.exp().sum(dim=-1) + 1e-20).mean()
/// sim = sum(torch.abs(F.cosine_similarity(grads[i], grads[j])).mean()           # TRS
///           for i in range(N) for j in range(i + 1, N)) / 3
/// mag = (torch.sum(grads[1] ** 2, 1)).mean() * 2
/// # entropy 1.9291053 log_det -2.7865763 coh 1.1461183 sim 0.4660455 mag 6.0416727
/// ```
#[test]
fn loss_terms_match_pytorch() {
    let logits = fixed(3, 4, 10, |i, b, k| 2.0 * ((i * 7 + b * 3 + k) as f64).sin());
    let grads =
        fixed(3, 4, 6, |i, b, d| ((i * 5 + b * 2) as f64 + d as f64 * 0.7).cos() + 0.1 * i as f64);
    let y = Tensor::from_slice(&[1i64, 4, 7, 0]);
    let (entropy, log_det) = regularisers(&logits, &y, 1e-6);
    close(&entropy, 1.9291053, "ADP entropy");
    close(&log_det, -2.7865763, "ADP log-det");
    close(&coherence(&grads), 1.1461183, "GAL coherence");
    close(&similarity(&grads), 0.4660455, "TRS similarity");
    close(&magnitude(&grads[1]), 6.0416727, "TRS magnitude");
}

/// torch.optim.Adam, PyTorch 2.13:
/// ```python
/// w = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
/// opt = torch.optim.Adam([w], lr=0.1, weight_decay=1e-4, eps=1e-7)
/// for k in range(5):
///     opt.zero_grad()
///     ((w - torch.tensor([1.0, 2.0, -3.0, 0.5])) ** 2 * torch.tensor([1.0, 0.5, 2.0, 3.0])).sum().backward()
///     opt.step()
/// # [0.972179830, -0.501779675, 1.500983000, 0.472184628]
/// ```
#[test]
fn adam_matches_pytorch() {
    let w = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0]).set_requires_grad(true);
    let cfg = OptimConfig { lr: 0.1, ..OptimConfig::adam() };
    let mut opt = Optimizer::over(vec![("w".into(), w.shallow_clone())], cfg);
    let target = Tensor::from_slice(&[1.0f32, 2.0, -3.0, 0.5]);
    let weight = Tensor::from_slice(&[1.0f32, 0.5, 2.0, 3.0]);
    for _ in 0..5 {
        opt.zero_grad();
        ((&w - &target).pow_tensor_scalar(2) * &weight).sum(Kind::Float).backward();
        opt.step(0.1);
    }
    let got = Vec::<f32>::try_from(&w.detach()).unwrap();
    for (g, want) in got.iter().zip([0.972_179_83, -0.501_779_675, 1.500_983, 0.472_184_628]) {
        assert!((f64::from(*g) - want).abs() < 2e-6, "{got:?}");
    }
}

#[test]
fn gal_double_backprop_matches_finite_differences() {
    let mut model = ensemble(2, 6);
    model.vs.double();
    let gal = Gal::new(GalConfig::default()).unwrap();
    let x = with_global_seed(3, || Tensor::rand([3, 3, 32, 32], (Kind::Double, Device::Cpu)));
    let y = Tensor::from_slice(&[2i64, 5, 9]);
    let loss = |m: &Model| gal.loss(m, &x, &y).total;
    let vars = model.vs.variables();
    for name in ["member0.layer1.0.conv1.weight", "member1.linear.weight", "member0.bn1.weight"] {
        for mut v in model.vs.trainable_variables() {
            v.zero_grad();
        }
        loss(&model).backward();
        let w = &vars[name];
        let grad = w.grad().flatten(0, -1);
        for idx in [0i64, 7] {
            let h = 1e-6;
            let orig = w.flatten(0, -1).double_value(&[idx]);
            let at = |delta: f64| {
                let set = |v: f64| {
                    tch::no_grad(|| {
                        // Through a copy: the weights may be laid out channels-last.
                        let f = w.flatten(0, -1).copy();
                        let _ = f.narrow(0, idx, 1).fill_(v);
                        w.shallow_clone().copy_(&f.reshape(w.size()));
                    })
                };
                set(orig + delta);
                let l = loss(&model).double_value(&[]);
                set(orig);
                l
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let ad = grad.double_value(&[idx]);
            assert!(
                (fd - ad).abs() <= 1e-5 * ad.abs().max(1e-3) + 1e-7,
                "{name}[{idx}]: autograd {ad} vs finite differences {fd}"
            );
        }
    }
}

fn snapshot(m: &Model) -> BTreeMap<String, Tensor> {
    m.vs.variables().into_iter().map(|(k, v)| (k, v.copy())).collect()
}

fn batch(n: i64, seed: i64) -> Batch {
    with_global_seed(seed, || {
        let x = Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::randint(10, [n], (Kind::Int64, Device::Cpu));
        let xt = Tensor::rand([n, 3, 32, 32], (Kind::Float, Device::Cpu));
        Batch::new(x, y.shallow_clone(), Some((xt, y)))
    })
}

#[test]
fn dverge_moves_each_member_only_by_its_own_loss() {
    let model = ensemble(3, 2);
    let cfg = DvergeConfig {
        distill: eio::distill::DistillConfig { steps: 2, ..DvergeConfig::default().distill },
        ..Default::default()
    };
    let b = batch(4, 5);
    let at = StepAt { epoch: 0, step: 0, seed: Seed(1) };
    // A plan over members 0 and 2: member 1 is off the plan and must not move.
    let plan = Plan {
        layer: 7,
        branches: vec![
            Branch { member: 0, route: Default::default() },
            Branch { member: 2, route: Default::default() },
        ],
    };
    let before = snapshot(&model);
    let mut opt = Optimizer::new(&model, OptimConfig::default());
    opt.zero_grad();
    let xt = &b.target.as_ref().unwrap().0;
    diversify::step(&model, &plan, &cfg.distill, None, &b.x, &b.y, xt, at, 1.0);
    // Member 0's gradient is that of CE(f_0(x'_2)) alone: rebuild it from the same distilled data.
    let g0: BTreeMap<String, Tensor> = model
        .vs
        .variables()
        .into_iter()
        .filter(|(k, _)| k.starts_with("member0.") && !k.contains("running"))
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, v)| (k, v.grad().copy()))
        .collect();
    opt.step(0.1);
    for (k, v) in snapshot(&model) {
        let moved = !v.equal(&before[&k]);
        let trainable = !k.contains("running") && !k.contains("num_batches");
        if k.starts_with("member1.") {
            assert!(!moved, "{k}: member 1 is off the plan but moved");
        } else if trainable && k.ends_with("weight") {
            assert!(moved, "{k}: a planned member did not move");
        }
    }
    assert!(!g0.is_empty() && g0.values().all(|g| g.defined()));
}

#[test]
fn a_few_steps_of_every_method_lower_its_loss() {
    for (name, method) in [
        ("dverge", MethodConfig::Dverge(DvergeConfig::default())),
        ("adp", MethodConfig::Adp(Default::default())),
        ("gal", MethodConfig::Gal(Default::default())),
        ("trs", MethodConfig::Trs(Default::default())),
        ("adv", MethodConfig::Adv(Default::default())),
    ] {
        let mut spec = TrainSpec::defaults(method);
        spec.members = if name == "adv" { 1 } else { 2 };
        if let MethodConfig::Trs(t) = &mut spec.method {
            t.steps = 2;
        }
        let model = Model::new(&spec.model_spec(), Device::Cpu, Seed(8)).unwrap();
        let mut m = spec.build().unwrap();
        let mut opt = Optimizer::new(&model, spec.optim.clone());
        let b = batch(8, 4);
        let at = StepAt { epoch: 0, step: 0, seed: Seed(2) };
        let lr = if spec.optim.algorithm == eio::optim::Algorithm::Adam { 2e-3 } else { 0.02 };
        let mut losses = vec![];
        for _ in 0..6 {
            opt.zero_grad();
            let st = m.step(&model, &b, at).unwrap();
            let loss = st.loss.double_value(&[]);
            assert!(loss.is_finite(), "{name}: {st:?}");
            losses.push(loss);
            opt.step(lr);
        }
        assert!(losses[5] < losses[0], "{name}: loss {losses:?} did not decrease");
    }
}

#[test]
fn every_method_trains_end_to_end_through_the_cli() {
    let dir = crate::util::tempdir();
    let small = [
        "--train-per-class",
        "2",
        "--test-per-class",
        "1",
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--members",
        "2",
    ];
    for (method, extra, columns) in [
        (
            "dverge",
            vec![
                "--warmup-epochs",
                "1",
                "--distill-steps",
                "1",
                "--adv",
                "true",
                "--adv-steps",
                "1",
            ],
            "",
        ),
        ("adp", vec!["--adv", "true", "--adv-steps", "1"], "adv,ce,entropy,log_det"),
        ("gal", vec![], "ce,coherence"),
        ("trs", vec!["--vicinity-steps", "1"], "ce,cos,smooth"),
        ("adv", vec!["--adv-steps", "1"], ""),
    ] {
        let out = dir.path().join(method);
        let out = out.to_str().unwrap();
        let mut args = vec!["train", method, "--out", out];
        args.extend(small);
        args.extend(extra);
        let (ok, _, err) = crate::util::eio(&args);
        assert!(ok, "eio train {method}: {err}");
        let metrics = std::fs::read_to_string(dir.path().join(method).join("metrics.csv")).unwrap();
        assert!(metrics.lines().next().unwrap().ends_with(columns), "{method}: {metrics}");
        assert!(dir.path().join(method).join("model.safetensors").exists());
        let cfg = std::fs::read_to_string(dir.path().join(method).join("config.toml")).unwrap();
        assert!(cfg.contains(&format!("[method.{method}]")), "{cfg}");
        // Under --memory-format auto the CPU computes double backprop contiguous, the rest
        // channels-last (train::layout_for).
        let log = std::fs::read_to_string(dir.path().join(method).join("train.log")).unwrap();
        let layout = if ["gal", "trs"].contains(&method) { "contiguous" } else { "channels-last" };
        assert!(log.contains(&format!("; {layout} on cpu, ")), "{method}: {log}");
    }
    // The DVERGE warm-up is a baseline ensemble; GAL's members are leaky.
    assert!(dir.path().join("dverge/warmup/model.safetensors").exists());
    let gal = dir.path().join("gal/model.safetensors");
    let (m, _) = Model::load(&gal, Device::Cpu).unwrap();
    assert_eq!((m.spec.members, m.spec.arch.relu_slope), (2, 0.1));
    let (ok, _, err) =
        crate::util::eio(&["eval", "--model", gal.to_str().unwrap(), "--test-per-class", "1"]);
    assert!(ok, "{err}");
    // One selected member (paper Fig. 9), and a member that is not there.
    let g = gal.to_str().unwrap();
    let (ok, _, err) = crate::util::eio(&[
        "attack",
        "whitebox",
        "--model",
        g,
        "--member",
        "1",
        "--first-per-class",
        "1",
        "--eps",
        "0.01",
        "--steps",
        "2",
        "--restarts",
        "1",
    ]);
    assert!(ok, "{err}");
    crate::util::assert_user_error(
        &["eval", "--model", g, "--member", "2", "--test-per-class", "1"],
        "member 2 of a 2-member model",
    );
}
