//! Attacks and robustness protocols: invariants, closed forms, finite differences, protocol
//! consistency. Tiny models and inputs, CPU only.

use eio::attack::{
    check_output, loss_and_grad, ApgdConfig, Attack, AttackConfig, AttackLoss, DiversityConfig,
    FgsmConfig, PgdConfig,
};
use eio::data::{Dataset, IMAGE_BYTES};
use eio::eval::report::Report;
use eio::eval::transfer::{
    transfer_eval, transfer_files, transfer_gen, Named, TransferFile, TransferGenConfig, PLAN_KEY,
    TRANSFER_KEY,
};
use eio::eval::transferability::{transferability, TransferabilityConfig};
use eio::eval::whitebox::{
    named_attack, whitebox, whitebox_resumable, WhiteboxConfig, ATTACK_NAMES,
};
use eio::model::io::TensorFile;
use eio::model::{ArchConfig, Classifier, Model, ModelSpec, Routing, Target};
use eio::seed::{Rng, Seed, Stream};
use rand::Rng as _;
use tch::{Device, Kind, Tensor};

use crate::util::{assert_user_error, cifar_jpeg, eio, tempdir};

/// Logits `W x + b` of the flattened input.
struct Linear {
    w: Tensor,
    b: Tensor,
}

/// A test generator (tests run in parallel threads: never use libtorch's global generator).
fn rng(seed: u64) -> Rng {
    Seed(seed).rng(Stream::Eval, 0, 0)
}

/// U[lo, hi) values of `kind`, drawn from `seed`.
fn uniform(shape: &[i64], lo: f64, hi: f64, kind: Kind, seed: u64) -> Tensor {
    let mut r = rng(seed);
    let n: i64 = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| r.gen_range(lo..hi)).collect();
    Tensor::from_slice(&v).view(shape).to_kind(kind)
}

impl Linear {
    fn new(classes: i64, dim: i64, kind: Kind, seed: u64) -> Self {
        Linear {
            w: uniform(&[classes, dim], -0.1, 0.1, kind, seed),
            b: uniform(&[classes], -0.2, 0.2, kind, seed + 1000),
        }
    }
}

impl Classifier for Linear {
    fn logits(&self, x: &Tensor, _sgm: Option<f64>) -> Tensor {
        x.flatten(1, -1).matmul(&self.w.tr()) + &self.b
    }
}

/// conv3x3 (3 -> 4) - tanh - 2x2 average pool - linear, in float64.
struct TinyConv {
    k: Tensor,
    w: Tensor,
}

impl Classifier for TinyConv {
    fn logits(&self, x: &Tensor, _sgm: Option<f64>) -> Tensor {
        let h = x.conv2d(&self.k, None::<Tensor>, [1, 1], [1, 1], [1, 1], 1).tanh();
        h.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
            .flatten(1, -1)
            .matmul(&self.w)
    }
}

fn rand_images(n: i64, seed: u64) -> Tensor {
    // About 5% of the pixels exactly 0 and 5% exactly 1.
    uniform(&[n, 3, 32, 32], -0.05, 1.05, Kind::Float, seed).clamp(0.0, 1.0)
}

fn labels(n: i64, seed: u64) -> Tensor {
    let mut r = rng(seed);
    Tensor::from_slice(&(0..n).map(|_| r.gen_range(0..10i64)).collect::<Vec<_>>())
}

fn plain_model() -> Model {
    Model::new(&ModelSpec { arch: ArchConfig::plain(), members: 1 }, Device::Cpu, Seed(3)).unwrap()
}

fn ce_of(t: &dyn Classifier, x: &Tensor, y: &Tensor) -> f64 {
    let _g = tch::no_grad_guard();
    AttackLoss::CrossEntropy.per_sample(&t.logits(x, None), y).sum(Kind::Double).double_value(&[])
}

fn all_attacks(eps: f64) -> Vec<AttackConfig> {
    let short = |c: PgdConfig| PgdConfig { steps: 3, ..c };
    let mut v = vec![
        AttackConfig::Fgsm(FgsmConfig { eot: 2, ..FgsmConfig::new(eps) }),
        AttackConfig::Pgd(PgdConfig { restarts: 2, eot: 2, ..short(PgdConfig::whitebox(eps)) }),
        AttackConfig::Pgd(short(PgdConfig::whitebox(eps)).with_loss(AttackLoss::cw())),
        AttackConfig::Pgd(short(PgdConfig::momentum(eps, 1.0))),
        AttackConfig::Pgd(short(PgdConfig::diversity(eps, 1.0))),
        AttackConfig::Pgd(PgdConfig { eot: 2, ..short(PgdConfig::sgm(eps, 0.2)) }),
        AttackConfig::Apgd(ApgdConfig {
            steps: 4,
            restarts: 2,
            eot: 2,
            ..ApgdConfig::new(eps, AttackLoss::CrossEntropy)
        }),
        AttackConfig::Apgd(ApgdConfig { steps: 4, ..ApgdConfig::new(eps, AttackLoss::Dlr) }),
    ];
    // What the white-box protocol runs per restart, for each of its named attacks.
    for name in ATTACK_NAMES {
        let cfg = WhiteboxConfig {
            attack: named_attack(name).unwrap().with_steps(3),
            ..Default::default()
        };
        v.push(cfg.restart_attack(eps));
    }
    v
}

#[test]
fn every_attack_stays_in_the_ball_and_the_unit_box() {
    let rgn = Model::new(&ModelSpec { arch: ArchConfig::rgn(2), members: 1 }, Device::Cpu, Seed(1))
        .unwrap();
    let random = Target::new(&rgn, Routing::Random, Seed(5)).unwrap();
    assert!(random.is_random());
    let plain = plain_model();
    let fixed = Target::fixed_zero(&plain);
    let linear = Linear::new(10, 3072, Kind::Float, 0);
    let targets: [(&str, &dyn Classifier); 3] =
        [("linear", &linear), ("resnet20", &fixed), ("rgn-random", &random)];
    for (case, eps) in [0.004, 0.03, 0.3].into_iter().enumerate() {
        let x = rand_images(3, 10 + case as u64);
        let y = labels(3, 20 + case as u64);
        for (name, t) in targets {
            for a in all_attacks(eps) {
                a.validate().unwrap();
                let xa = a.perturb(t, &x, &y, &mut rng(case as u64));
                check_output(&x, &xa, eps).unwrap_or_else(|e| panic!("{name} {a:?}: {e}"));
                let d = (&xa - &x).abs().max().double_value(&[]);
                assert!(d <= eps + 1e-6, "{name} {a:?}: {d}");
                assert!(xa.min().double_value(&[]) >= 0.0 && xa.max().double_value(&[]) <= 1.0);
            }
        }
    }
}

/// Inputs outside [0, 1] (GAL's noise-augmented training images, which its +AdvT term attacks)
/// land in [0, 1], within eps of their clipped selves: the reference codes clip to the ball, then
/// to [0, 1].
#[test]
fn attacks_from_inputs_outside_the_unit_box_land_in_it() {
    let plain = plain_model();
    let fixed = Target::fixed_zero(&plain);
    let linear = Linear::new(10, 3072, Kind::Float, 0);
    let targets: [(&str, &dyn Classifier); 2] = [("linear", &linear), ("resnet20", &fixed)];
    let eps = 0.03;
    let x = rand_images(3, 31) * 1.2 - 0.1;
    let clipped = x.clamp(0.0, 1.0);
    let y = labels(3, 32);
    for (name, t) in targets {
        for a in all_attacks(eps) {
            let xa = a.perturb(t, &x, &y, &mut rng(3));
            let d = (&xa - &clipped).abs().max().double_value(&[]);
            assert!(d <= eps + 1e-6, "{name} {a:?}: {d} from the clipped input");
            let (lo, hi) = (xa.min().double_value(&[]), xa.max().double_value(&[]));
            assert!(lo >= 0.0 && hi <= 1.0, "{name} {a:?}: [{lo}, {hi}]");
        }
    }
}

#[test]
fn attacks_never_touch_weight_gradients() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let (x, y) = (rand_images(2, 1), labels(2, 2));
    let _ = PgdConfig { steps: 2, restarts: 2, ..PgdConfig::whitebox(0.03) }.perturb(
        &t,
        &x,
        &y,
        &mut rng(0),
    );
    for (name, v) in m.vs.variables() {
        assert!(!v.grad().defined(), "{name} got a gradient");
    }
}

#[test]
fn pgd_on_a_linear_model_is_monotone_and_reaches_the_box_optimum() {
    // Cross-entropy of a linear model is convex in x, so a projected sign step never lowers it.
    let m = Linear::new(10, 3072, Kind::Double, 7);
    let x = rand_images(4, 3).to_kind(Kind::Double);
    let y = labels(4, 4);
    let eps = 0.02;
    let mut last = ce_of(&m, &x, &y);
    for steps in 1..=12 {
        let a = PgdConfig::ifgsm(eps, eps / 4.0, steps);
        let l = ce_of(&m, &a.perturb(&m, &x, &y, &mut rng(0)), &y);
        assert!(l >= last - 1e-12, "step {steps}: {l} < {last}");
        last = l;
    }

    // Two classes: CE = softplus(d . x + c) with d = w_1 - w_0, maximised over the box at the
    // vertex x_i = hi_i where d_i > 0 and lo_i where d_i < 0.
    let m2 = Linear::new(2, 3072, Kind::Double, 8);
    let y0 = Tensor::zeros([4], (Kind::Int64, Device::Cpu));
    let d = (m2.w.get(1) - m2.w.get(0)).view([1, 3, 32, 32]);
    let lo = (&x - eps).clamp_min(0.0);
    let hi = (&x + eps).clamp_max(1.0);
    let best = hi.where_self(&d.gt(0.0), &lo);
    let optimum = ce_of(&m2, &best, &y0);
    for random_start in [false, true] {
        let a = PgdConfig { steps: 12, random_start, restarts: 1, ..PgdConfig::whitebox(eps) };
        let xa = a.perturb(&m2, &x, &y0, &mut rng(0));
        let l = ce_of(&m2, &xa, &y0);
        assert!((l - optimum).abs() < 1e-6 * optimum.abs().max(1.0), "{l} vs {optimum}");
        assert!(xa.allclose(&best, 0.0, 1e-12, false));
    }
    // APGD's first step (2 eps) lands on the vertex and later steps cannot leave it, so both its
    // last fooling iterate and its best-loss iterate are the optimum.
    let ap = ApgdConfig { steps: 10, ..ApgdConfig::new(eps, AttackLoss::CrossEntropy) };
    let xa = ap.perturb(&m2, &x, &y0, &mut rng(0));
    assert!(xa.allclose(&best, 0.0, 1e-12, false));
}

#[test]
fn fgsm_is_the_analytic_sign_step() {
    let m = Linear::new(10, 3072, Kind::Double, 9);
    let x = rand_images(3, 5).to_kind(Kind::Double);
    let y = labels(3, 6);
    let eps = 0.03;
    // d CE / d x = W^T (softmax(z) - onehot(y)).
    let p = m.logits(&x, None).softmax(-1, Kind::Double) - y.one_hot(10).to_kind(Kind::Double);
    let g = p.matmul(&m.w).view([3, 3, 32, 32]);
    let want = (&x + g.sign() * eps).clamp(0.0, 1.0);
    let got = FgsmConfig::new(eps).perturb(&m, &x, &y, &mut rng(0));
    assert!(got.allclose(&want, 0.0, 1e-12, false));
}

#[test]
fn input_gradients_match_central_finite_differences() {
    let net = TinyConv {
        k: uniform(&[4, 3, 3, 3], -0.8, 0.8, Kind::Double, 11),
        w: uniform(&[64, 10], -0.8, 0.8, Kind::Double, 12),
    };
    let x = uniform(&[2, 3, 8, 8], 0.0, 1.0, Kind::Double, 13);
    let y = Tensor::from_slice(&[3i64, 7]);
    for loss in [AttackLoss::CrossEntropy, AttackLoss::Cw { kappa: 50.0 }, AttackLoss::Dlr] {
        let g = loss_and_grad(&net, &x, &y, loss, None, 1).grad;
        let f = |x: &Tensor| {
            loss.per_sample(&net.logits(x, None), &y).sum(Kind::Double).double_value(&[])
        };
        let h = 1e-6;
        let flat = x.view([-1]);
        let gflat = g.view([-1]);
        let mut worst = 0f64;
        for i in (0..flat.size()[0]).step_by(7) {
            let e = Tensor::zeros_like(&flat).index_fill(0, &Tensor::from_slice(&[i]), h);
            let fd = (f(&(&flat + &e).view([2, 3, 8, 8])) - f(&(&flat - &e).view([2, 3, 8, 8])))
                / (2.0 * h);
            let an = gflat.double_value(&[i]);
            worst = worst.max((fd - an).abs() / (1e-6 + an.abs()).max(1e-3));
        }
        assert!(worst < 1e-5, "{loss}: relative error {worst}");
    }
}

#[test]
fn sgm_with_gamma_one_is_plain_pgd() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let (x, y) = (rand_images(3, 8), labels(3, 9));
    let base = PgdConfig { steps: 4, restarts: 2, ..PgdConfig::whitebox(0.03) };
    let plain = base.perturb(&t, &x, &y, &mut rng(4));
    let sgm1 = PgdConfig { sgm: Some(1.0), ..base.clone() }.perturb(&t, &x, &y, &mut rng(4));
    assert!(plain.equal(&sgm1));
    let sgm = PgdConfig { sgm: Some(0.2), ..base }.perturb(&t, &x, &y, &mut rng(4));
    assert!(!plain.equal(&sgm), "gamma 0.2 should change the gradients");
}

#[test]
fn mdi2_without_diversity_or_momentum_is_ifgsm() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let (x, y) = (rand_images(3, 12), labels(3, 13));
    let ifgsm = PgdConfig::ifgsm(0.03, 0.006, 5);
    let degenerate = PgdConfig {
        momentum: Some(0.0),
        diversity: Some(DiversityConfig { prob: 0.0, ..Default::default() }),
        ..ifgsm.clone()
    };
    let a = ifgsm.perturb(&t, &x, &y, &mut rng(1));
    let b = degenerate.perturb(&t, &x, &y, &mut rng(1));
    assert!(a.equal(&b));
    // The real thing differs, and is reproducible from the seed.
    let mdi2 = PgdConfig { steps: 5, ..PgdConfig::diversity(0.03, 0.5) };
    let c = mdi2.perturb(&t, &x, &y, &mut rng(2));
    let d = mdi2.perturb(&t, &x, &y, &mut rng(2));
    assert!(c.equal(&d) && !c.equal(&a));
}

#[test]
fn eot_averages_gradients_of_a_random_target() {
    let rgn = Model::new(&ModelSpec { arch: ArchConfig::rgn(2), members: 1 }, Device::Cpu, Seed(2))
        .unwrap();
    let (x, y) = (rand_images(2, 14), labels(2, 15));
    let a = Target::new(&rgn, Routing::Random, Seed(9)).unwrap();
    let avg = loss_and_grad(&a, &x, &y, AttackLoss::CrossEntropy, None, 3).grad;
    let b = Target::new(&rgn, Routing::Random, Seed(9)).unwrap();
    let gs: Vec<Tensor> =
        (0..3).map(|_| loss_and_grad(&b, &x, &y, AttackLoss::CrossEntropy, None, 1).grad).collect();
    let mean = (&gs[0] + &gs[1] + &gs[2]) / 3.0;
    assert!(avg.allclose(&mean, 1e-5, 1e-9, false));
    assert!(!gs[0].allclose(&gs[1], 1e-5, 1e-9, false), "routes should differ");
    // A deterministic target ignores eot.
    let plain = plain_model();
    let t = Target::fixed_zero(&plain);
    let g1 = loss_and_grad(&t, &x, &y, AttackLoss::CrossEntropy, None, 1).grad;
    let g5 = loss_and_grad(&t, &x, &y, AttackLoss::CrossEntropy, None, 5).grad;
    assert!(g1.equal(&g5));
}

/// A data set of `n` random images labelled with `t`'s own predictions (all clean-correct).
fn self_labelled(t: &dyn Classifier, n: usize, seed: u64) -> Dataset {
    labelled(t, n, seed, 0)
}

/// As [`self_labelled`], but the first `wrong` images get another label than `t` predicts.
fn labelled(t: &dyn Classifier, n: usize, seed: u64, wrong: usize) -> Dataset {
    let x = rand_images(n as i64, seed);
    let bytes = (&x * 255.0).round().to_kind(Kind::Uint8);
    let mut pixels = vec![0u8; n * IMAGE_BYTES];
    bytes.copy_data(&mut pixels, n * IMAGE_BYTES);
    let xq = bytes.to_kind(Kind::Float) / 255.0;
    let pred: Vec<i64> = Vec::try_from(t.logits(&xq, None).argmax(-1, false)).unwrap();
    let classes = (0..10).map(|c| c.to_string()).collect();
    let labels =
        pred.iter().enumerate().map(|(i, &p)| ((p + (i < wrong) as i64) % 10) as u8).collect();
    Dataset::from_raw(pixels, labels, classes).unwrap()
}

#[test]
fn whitebox_report_is_consistent() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let data = self_labelled(&t, 6, 30);
    let cfg = WhiteboxConfig {
        eps: vec![0.001, 0.05],
        attack: AttackConfig::paper_whitebox(1.0).with_steps(3).with_restarts(3),
        batch: 4,
    };
    let r = whitebox(&t, &data, &cfg, Device::Cpu, Seed(1)).unwrap();
    assert_eq!(r.images, 6);
    assert_eq!(r.clean_accuracy, 1.0);
    for row in &r.rows {
        assert_eq!(row.accuracy_after_restart.len(), 3);
        assert!(row.accuracy_after_restart.windows(2).all(|w| w[1] <= w[0]));
        assert_eq!(row.robust_accuracy, *row.accuracy_after_restart.last().unwrap());
        assert_eq!(row.robust as f64 / 6.0, row.robust_accuracy);
    }
    assert!(r.rows[1].robust_accuracy <= r.rows[0].robust_accuracy);
    // Reproducible from the seed.
    let again = whitebox(&t, &data, &cfg, Device::Cpu, Seed(1)).unwrap();
    assert_eq!(
        again.rows.iter().map(|r| r.robust).collect::<Vec<_>>(),
        r.rows.iter().map(|r| r.robust).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().unwrap();
    r.write_json(&dir.path().join("wb.json")).unwrap();
    r.write_csv(&dir.path().join("wb.csv")).unwrap();
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("wb.json")).unwrap())
            .unwrap();
    assert_eq!((&back["attack"], &back["restarts"]), (&"pgd".into(), &3.into()));
    let csv = std::fs::read_to_string(dir.path().join("wb.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.starts_with("eps,"));
    // Invalid settings are errors, not panics.
    let bad = WhiteboxConfig { eps: vec![], ..Default::default() };
    assert!(whitebox(&t, &data, &bad, Device::Cpu, Seed(1)).is_err());
}

/// A classifier that stops the process (a panic here) at its `calls`-th forward pass.
struct StopsAt<'a> {
    inner: &'a dyn Classifier,
    calls: std::cell::Cell<usize>,
}

impl Classifier for StopsAt<'_> {
    fn logits(&self, x: &Tensor, sgm: Option<f64>) -> Tensor {
        let left = self.calls.get();
        assert!(left > 0, "stopped");
        self.calls.set(left - 1);
        self.inner.logits(x, sgm)
    }
    // The wrapped model's: its progress is resumed by the model itself.
    fn identity(&self) -> Option<String> {
        self.inner.identity()
    }
}

/// A white-box evaluation stopped part-way continues from its state file to the numbers of an
/// uninterrupted run; the state of another run is not used.
#[test]
fn whitebox_resumes_exactly_after_a_stop() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let data = labelled(&t, 8, 32, 1);
    let cfg = WhiteboxConfig {
        eps: vec![0.01, 0.03, 0.06],
        attack: AttackConfig::paper_whitebox(1.0).with_steps(3).with_restarts(3),
        batch: 4,
    };
    let whole = whitebox(&t, &data, &cfg, Device::Cpu, Seed(5)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("wb.state.json");
    // The forward passes of a whole run, then three stops a quarter of them apart.
    let counting = StopsAt { inner: &t, calls: usize::MAX.into() };
    whitebox(&counting, &data, &cfg, Device::Cpu, Seed(5)).unwrap();
    let calls = (usize::MAX - counting.calls.get()) / 4;
    assert!(calls > 10);
    for _ in 0..3 {
        let stops = StopsAt { inner: &t, calls: calls.into() };
        let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            whitebox_resumable(&stops, &data, &cfg, Device::Cpu, Seed(5), &state)
        }));
        assert!(stopped.is_err() && state.exists());
    }
    let (resumed, detail) =
        whitebox_resumable(&t, &data, &cfg, Device::Cpu, Seed(5), &state).unwrap();
    assert_eq!(detail.robust.len(), 3);
    assert!(!state.exists());
    let rows = |r: &eio::eval::whitebox::WhiteboxReport| {
        r.rows.iter().map(|w| (w.robust, w.accuracy_after_restart.clone())).collect::<Vec<_>>()
    };
    assert_eq!(rows(&resumed), rows(&whole));
    assert_eq!(resumed.clean_accuracy, whole.clean_accuracy);
    // Another seed's state: started over, the same numbers as that seed's own run.
    let stops = StopsAt { inner: &t, calls: (2 * calls).into() };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        whitebox_resumable(&stops, &data, &cfg, Device::Cpu, Seed(5), &state)
    }));
    let other = whitebox_resumable(&t, &data, &cfg, Device::Cpu, Seed(6), &state).unwrap().0;
    assert_eq!(rows(&other), rows(&whitebox(&t, &data, &cfg, Device::Cpu, Seed(6)).unwrap()));
}

#[test]
fn whitebox_runs_every_attack_below_clean_accuracy() {
    // A linear model, 8 images of which 2 are misclassified clean.
    let m = Linear::new(10, 3072, Kind::Float, 21);
    let data = labelled(&m, 8, 31, 2);
    let (x, y) = data.tensors();
    for (attack, loss) in [
        ("apgd", AttackLoss::CrossEntropy),
        ("apgd", AttackLoss::Dlr),
        ("fgsm", AttackLoss::CrossEntropy),
        ("mpgd", AttackLoss::CrossEntropy),
        ("pgd", AttackLoss::cw()),
    ] {
        let cfg = WhiteboxConfig {
            eps: vec![0.002, 0.1],
            attack: named_attack(attack).unwrap().with_steps(5).with_restarts(2).with_loss(loss),
            batch: 3,
        };
        let name = format!("{attack} {loss}");
        let r = whitebox(&m, &data, &cfg, Device::Cpu, Seed(3)).unwrap();
        assert_eq!(r.clean_accuracy, 0.75, "{name}");
        for row in &r.rows {
            assert!(row.robust_accuracy <= r.clean_accuracy, "{name}: {row:?}");
        }
        // The large radius fools the linear model on some clean-correct image.
        assert!(r.rows[1].robust_accuracy < r.clean_accuracy, "{name}: {:?}", r.rows);
        // FGSM has no random start: it runs once, and the report says so.
        let runs = if attack == "fgsm" { 1 } else { 2 };
        assert_eq!((r.restarts, r.rows[0].accuracy_after_restart.len()), (runs, runs));
        assert_eq!(r.attack, attack);
        let csv = r.to_csv();
        assert!(csv.starts_with("eps,images,clean_accuracy,robust_accuracy,attack,"), "{csv}");
        assert!(csv.lines().skip(1).all(|l| l.contains(&format!(",{attack},"))), "{csv}");
        // The attack of one restart stays in the ball and the unit box.
        for &eps in &cfg.eps {
            let xa = cfg.restart_attack(eps).perturb(&m, &x, &y, &mut rng(5));
            check_output(&x, &xa, eps).unwrap_or_else(|e| panic!("{name} eps {eps}: {e}"));
        }
    }
    // What each name builds, and what one restart of it is at eps 0.03.
    let at = |name: &str| {
        let attack = named_attack(name).unwrap().with_loss(AttackLoss::Dlr);
        WhiteboxConfig { attack, ..Default::default() }.restart_attack(0.03)
    };
    match at("apgd") {
        AttackConfig::Apgd(a) => {
            assert_eq!((a.eps, a.steps, a.restarts, a.loss), (0.03, 50, 1, AttackLoss::Dlr))
        }
        other => panic!("{other:?}"),
    }
    match at("mpgd") {
        AttackConfig::Pgd(p) => assert_eq!((p.momentum, p.restarts), (Some(1.0), 1)),
        other => panic!("{other:?}"),
    }
    match at("pgd") {
        AttackConfig::Pgd(p) => {
            assert_eq!((p.momentum, p.steps, p.restarts), (None, 50, 1));
            assert_eq!(p.step_size, 0.03 * 0.2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        at("fgsm"),
        AttackConfig::Fgsm(FgsmConfig { eps: 0.03, loss: AttackLoss::Dlr, eot: 1 })
    );
    // Config files: the attack is a table; names round-trip; unknown names are errors.
    let cfg: WhiteboxConfig =
        toml::from_str("eps = [0.03]\n[attack]\nkind = \"apgd\"\neps = 1.0\nloss = \"dlr\"")
            .unwrap();
    assert_eq!((cfg.attack.name(), cfg.attack.loss()), ("apgd", AttackLoss::Dlr));
    assert_eq!(toml::from_str::<WhiteboxConfig>("").unwrap(), WhiteboxConfig::default());
    assert!(toml::from_str::<WhiteboxConfig>("attack = \"pgd\"").is_err());
    for name in ATTACK_NAMES {
        assert_eq!(named_attack(name).unwrap().name(), name);
    }
    assert!(named_attack("cw").is_err());
    let bad = WhiteboxConfig {
        attack: AttackConfig::Pgd(PgdConfig { momentum: Some(-1.0), ..PgdConfig::whitebox(1.0) }),
        ..Default::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn whitebox_cli_runs_apgd_fgsm_and_mpgd() {
    let dir = tempdir();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let model = d("plain.safetensors");
    plain_model().save(std::path::Path::new(&model), TensorFile::default()).unwrap();
    let data = cifar_jpeg().display().to_string();
    let base = [
        "attack",
        "whitebox",
        "--model",
        &model,
        "--device",
        "cpu",
        "--data",
        &data,
        "--first-per-class",
        "1",
        "--eps",
        "0.01,0.05",
        "--restarts",
        "2",
    ];
    for (attack, extra, says) in [
        ("apgd", &["--steps", "2", "--loss", "dlr"][..], "APGD-2, 2 restart(s), loss dlr"),
        ("fgsm", &[][..], "FGSM, 1 restart(s), loss ce"),
        ("mpgd", &["--steps", "2", "--momentum", "0.5"][..], "mu 0.5"),
    ] {
        let (json, csv) = (d(&format!("{attack}.json")), d(&format!("{attack}.csv")));
        // The state file of some other run (here unreadable) is not used, and is gone after.
        let state = d(&format!("{attack}.state.json"));
        std::fs::write(&state, "{}").unwrap();
        let mut args: Vec<&str> = base.to_vec();
        args.extend(["--attack", attack, "--json", &json, "--csv", &csv]);
        args.extend(extra);
        let (ok, out, err) = eio(&args);
        assert!(ok, "eio {args:?} failed:\n{err}");
        assert!(out.contains(says), "{out}");
        assert!(err.contains("starting over") && !std::path::Path::new(&state).exists(), "{err}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(report["attack"], attack, "{report}");
        assert_eq!(report["images"], 10);
        let runs = if attack == "fgsm" { 1 } else { 2 };
        assert_eq!(report["restarts"], runs);
        let clean = report["clean_accuracy"].as_f64().unwrap();
        for row in report["rows"].as_array().unwrap() {
            assert!(row["robust_accuracy"].as_f64().unwrap() <= clean, "{report}");
        }
        let table = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.lines().skip(1).all(|l| l.contains(&format!(",{attack},"))), "{table}");
    }
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--attack", "cw"]);
    assert_user_error(&args, "invalid value 'cw'");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--momentum", "0.5"]);
    assert_user_error(&args, "--momentum applies only to --attack mpgd");
}

#[test]
fn transferability_of_a_model_with_itself_has_the_whitebox_rate() {
    let m = plain_model();
    let t = Target::fixed_zero(&m);
    let data = self_labelled(&t, 8, 40);
    let attack =
        PgdConfig { steps: 4, restarts: 2, random_start: false, ..PgdConfig::whitebox(1.0) };
    let cfg =
        TransferabilityConfig { eps: 0.1, attack: AttackConfig::Pgd(attack), images: 6, batch: 4 };
    let members = [Named::new("a", &t), Named::new("b", &t)];
    let r = transferability(&members, Some(&t), &data, &cfg, Device::Cpu, Seed(2)).unwrap();
    assert_eq!((r.images, r.eligible, r.index.len()), (6, 8, 6));
    let wb_cfg =
        WhiteboxConfig { eps: vec![cfg.eps], attack: cfg.attack.clone(), ..Default::default() };
    let wb = whitebox(&t, &data.select(&r.index), &wb_cfg, Device::Cpu, Seed(2)).unwrap();
    let rate = 1.0 - wb.rows[0].robust_accuracy;
    assert!(rate > 0.0, "the attack should fool some images");
    for row in &r.success {
        assert_eq!(row.len(), 3);
        for &v in row {
            assert!((v - rate).abs() < 1e-12, "{:?} vs {rate}", r.success);
        }
    }
    let csv = r.to_csv();
    assert!(csv.starts_with("source,a,b,ensemble\n"), "{csv}");
}

/// Predicts class 1 when the mean pixel exceeds 0.5, else class 0.
struct Threshold;

impl Classifier for Threshold {
    fn logits(&self, x: &Tensor, _sgm: Option<f64>) -> Tensor {
        let m = x.mean_dim([1, 2, 3].as_slice(), false, Kind::Float) - 0.5;
        Tensor::stack(&[-&m, m], 1) * 10.0
    }
}

#[test]
fn transfer_eval_applies_all_or_nothing_on_a_hand_made_file() {
    let img = |vals: &[f32]| {
        let t = Tensor::from_slice(vals).view([-1, 1, 1, 1]);
        t.expand([vals.len() as i64, 3, 32, 32], false).contiguous()
    };
    let clean = img(&[0.9, 0.8, 0.1, 0.2]);
    let labels = Tensor::from_slice(&[1i64, 1, 0, 0]);
    let versions = [
        ("adv.mpgd.ce.0", "mpgd", 0, [0.9f32, 0.3, 0.1, 0.2]), // image 1 broken
        ("adv.mpgd.ce.1", "mpgd", 1, [0.9, 0.8, 0.7, 0.2]),    // image 2 broken
        ("adv.sgm.ce.0", "sgm", 0, [0.9, 0.8, 0.1, 0.2]),      // nothing broken
    ];
    // Radius 0.6: every hand-made version lies within it (transfer-eval checks the eps ball).
    let mut f = TensorFile::default();
    f.tensors.insert("images".into(), (&clean * 255.0).round().to_kind(Kind::Uint8));
    f.tensors.insert("labels".into(), labels);
    f.tensors.insert("index".into(), Tensor::from_slice(&[5i64, 6, 7, 8]));
    let mut meta_versions = Vec::new();
    for (key, attack, restart, vals) in versions {
        f.tensors.insert(key.into(), img(&vals));
        meta_versions.push(serde_json::json!({
            "key": key, "attack": attack, "loss": "ce", "restart": restart,
            "config": PgdConfig { eps: 0.6, step_size: 0.12, ..PgdConfig::default() },
        }));
    }
    let meta = serde_json::json!({
        "surrogate": "hand", "eps": 0.6, "seed": 0, "images": 4, "versions": meta_versions,
    });
    f.meta.insert(TRANSFER_KEY.into(), meta.to_string());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hand_eps0.6.safetensors");
    f.write(&path).unwrap();
    let r = transfer_eval(&Threshold, &[path], 3, Device::Cpu).unwrap();
    assert_eq!(r.clean_accuracy, 1.0);
    assert_eq!(r.accuracy(0.6), Some(0.5));
    let acc = |attack: &str| {
        r.rows
            .iter()
            .find(|w| w.surrogate.is_none() && w.attack.as_deref() == Some(attack))
            .unwrap()
    };
    assert_eq!((acc("mpgd").robust_accuracy, acc("mpgd").versions), (0.5, 2));
    assert_eq!((acc("sgm").robust_accuracy, acc("sgm").versions), (1.0, 1));
    assert!(r.to_csv().lines().nth(1).unwrap().starts_with("0.6,all,all,all,3,4,"));
}

#[test]
fn transfer_sets_round_trip_and_resume() {
    let m = plain_model();
    let surrogate = Target::fixed_zero(&m);
    let linear = Linear::new(10, 3072, Kind::Float, 3);
    let data = self_labelled(&surrogate, 5, 50);
    let index = [4usize, 0, 2];
    let mut attacks: Vec<AttackConfig> =
        AttackConfig::paper_transfer_suite(1.0).into_iter().map(|a| a.with_steps(2)).collect();
    attacks[0] = attacks[0].clone().with_restarts(2);
    let cfg = TransferGenConfig { eps: vec![0.02, 0.05], attacks, batch: 2, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    let sur = [Named::new("resnet", &surrogate), Named::new("lin", &linear)];
    let r = transfer_gen(&sur, &data, &index, &cfg, dir.path(), Device::Cpu, Seed(4)).unwrap();
    assert_eq!(r.files.len(), 4);
    assert!(r.files.iter().all(|f| !f.skipped && f.file.versions.len() == 8));
    let files = transfer_files(dir.path()).unwrap();
    assert_eq!(files.len(), 4);

    // File contents: exact clean images, labels, source indices, versions in the ball.
    let f = TensorFile::read(&dir.path().join("resnet_eps0.05.safetensors")).unwrap();
    let sub = data.select(&index);
    let (x, y) = sub.tensors();
    assert!((f.tensors["images"].to_kind(Kind::Float) / 255.0).equal(&x));
    assert!(f.tensors["labels"].equal(&y));
    assert_eq!(Vec::<i64>::try_from(&f.tensors["index"]).unwrap(), vec![4, 0, 2]);
    let meta: TransferFile = serde_json::from_str(&f.meta[TRANSFER_KEY]).unwrap();
    assert_eq!((meta.surrogate.as_str(), meta.eps, meta.versions.len()), ("resnet", 0.05, 8));
    for v in &meta.versions {
        check_output(&x, &f.tensors[&v.key], 0.05).unwrap();
        assert_eq!((v.config.steps(), v.config.restarts()), (2, 1));
        assert!((v.config.step_ratio().unwrap() - 0.2).abs() < 1e-12);
    }
    assert!(meta.versions.iter().any(|v| v.key == "adv.mpgd.cw.1"));

    // A second run keeps the complete files.
    let mtime = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
    let again = transfer_gen(&sur, &data, &index, &cfg, dir.path(), Device::Cpu, Seed(4)).unwrap();
    assert!(again.files.iter().all(|f| f.skipped));
    assert_eq!(again.files[0].file, r.files[0].file);
    assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), mtime);
    assert!(f.meta.contains_key(PLAN_KEY));

    // An interrupted generation resumes within a file: versions saved under .partial/ (the
    // format `transfer_gen` writes after each version) are taken, not made again; a saved
    // version of another plan is made again; the rest equals an uninterrupted run bit for bit.
    let dir2 = tempfile::tempdir().unwrap();
    let saved = |file: &str, key: &str, plan: &str, adv: &Tensor| {
        let mut p = TensorFile::default();
        p.tensors.insert("adv".into(), adv.shallow_clone());
        p.meta.insert(PLAN_KEY.into(), plan.to_string());
        p.meta.insert("eio.transfer.fooled".into(), "0.25".into());
        p.write(&dir2.path().join(".partial").join(file).join(format!("{key}.safetensors")))
            .unwrap();
    };
    let plan_of = |file: &str| {
        TensorFile::read(&dir.path().join(format!("{file}.safetensors"))).unwrap().meta[PLAN_KEY]
            .clone()
    };
    // The clean images as a "version": no attack makes them, so the file shows where it came from.
    saved("resnet_eps0.05", "adv.mpgd.ce.0", &plan_of("resnet_eps0.05"), &x);
    saved("lin_eps0.02", "adv.sgm.cw.0", &plan_of("resnet_eps0.05"), &x);
    transfer_gen(&sur, &data, &index, &cfg, dir2.path(), Device::Cpu, Seed(4)).unwrap();
    assert!(!dir2.path().join(".partial").exists(), "the saved versions are removed at the end");
    for file in &files {
        let name = file.file_name().unwrap();
        let a = TensorFile::read(file).unwrap();
        let b = TensorFile::read(&dir2.path().join(name)).unwrap();
        let (ma, mb): (TransferFile, TransferFile) = (
            serde_json::from_str(&a.meta[TRANSFER_KEY]).unwrap(),
            serde_json::from_str(&b.meta[TRANSFER_KEY]).unwrap(),
        );
        for (va, vb) in ma.versions.iter().zip(&mb.versions) {
            let resumed = name == "resnet_eps0.05.safetensors" && va.key == "adv.mpgd.ce.0";
            if resumed {
                assert!(b.tensors[&vb.key].equal(&x));
                assert_eq!(vb.surrogate_fooled, Some(0.25));
            } else {
                assert!(a.tensors[&va.key].equal(&b.tensors[&vb.key]), "{name:?} {}", va.key);
                assert_eq!(va, vb);
            }
        }
    }

    // Evaluating the surrogate on its own white-box versions.
    let ev = transfer_eval(&surrogate, &files, 2, Device::Cpu).unwrap();
    assert_eq!((ev.images, ev.clean_accuracy), (3, 1.0));
    let eps_rows = |eps: f64| ev.rows.iter().filter(|w| w.eps == eps).count();
    // all + 3 attacks + 2 surrogates x 3 attacks x 2 losses
    assert_eq!(eps_rows(0.02), 1 + 3 + 12);
    for w in ev.rows.iter().filter(|w| w.surrogate.is_none() && w.attack.is_none()) {
        assert_eq!(w.versions, 16);
    }
    // The overall row is no higher than any group of the same eps.
    for &eps in &cfg.eps {
        let all = ev.accuracy(eps).unwrap();
        assert!(ev.rows.iter().filter(|w| w.eps == eps).all(|w| w.robust_accuracy >= all));
    }
    // Files made from other images are refused.
    let other = dir.path().join("other");
    transfer_gen(
        &sur[..1],
        &data,
        &[1, 2, 3],
        &TransferGenConfig { eps: vec![0.02], ..cfg },
        &other,
        Device::Cpu,
        Seed(4),
    )
    .unwrap();
    let mut mixed = files.clone();
    mixed.extend(transfer_files(&other).unwrap());
    assert!(transfer_eval(&surrogate, &mixed, 2, Device::Cpu).is_err());
}

#[test]
fn whitebox_per_image_and_saved_examples_agree_with_the_report() {
    let dir = crate::util::tempdir();
    let d = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    let model = crate::util::official_rgn();
    let model = model.to_str().unwrap();
    let (ok, _, err) = crate::util::eio(&[
        "attack",
        "whitebox",
        "--model",
        model,
        "--first-per-class",
        "2",
        "--eps",
        "0.01,0.03",
        "--steps",
        "3",
        "--restarts",
        "2",
        "--seed",
        "1",
        "--per-image",
        &d("p.csv"),
        "--save-adv",
        &d("adv"),
        "--json",
        &d("wb.json"),
    ]);
    assert!(ok, "{err}");
    let report: eio::eval::whitebox::WhiteboxReport =
        serde_json::from_str(&std::fs::read_to_string(d("wb.json")).unwrap()).unwrap();
    let csv = std::fs::read_to_string(d("p.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 20);
    let frac = |col: usize| rows.iter().filter(|r| r[col] == "1").count() as f64 / 20.0;
    assert_eq!(frac(3), report.clean_accuracy);
    assert_eq!(frac(4), report.rows[0].robust_accuracy);
    assert_eq!(frac(5), report.rows[1].robust_accuracy);
    // The saved examples are a transfer set: judged by the attacked model itself they give the
    // white-box accuracy back, and they lie in the eps ball of the clean images.
    let (ok, _, err) = crate::util::eio(&[
        "attack",
        "transfer-eval",
        "--model",
        model,
        "--set",
        &d("adv"),
        "--json",
        &d("te.json"),
    ]);
    assert!(ok, "{err}");
    let te: eio::eval::transfer::TransferEvalReport =
        serde_json::from_str(&std::fs::read_to_string(d("te.json")).unwrap()).unwrap();
    assert_eq!(te.clean_accuracy, report.clean_accuracy);
    for r in &report.rows {
        assert_eq!(te.accuracy(r.eps), Some(r.robust_accuracy), "eps {}", r.eps);
    }
    let f = eio::model::io::TensorFile::read(
        &dir.path().join("adv/eio-official-rgn_eps0.03.safetensors"),
    )
    .unwrap();
    let clean = f.tensors["images"].to_kind(tch::Kind::Float) / 255.0;
    let adv = &f.tensors["adv.pgd.ce.0"];
    let dist = (adv - clean).abs().max().double_value(&[]);
    assert!(dist <= 0.03 + 1e-5, "{dist}");
}

#[test]
fn eval_per_image_rows_give_the_reported_accuracy() {
    let dir = crate::util::tempdir();
    let csv = dir.path().join("p.csv");
    let json = dir.path().join("e.json");
    let model = crate::util::official_rgn();
    let (ok, _, err) = crate::util::eio(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--test-per-class",
        "2",
        "--per-image",
        csv.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.len() == 14));
    let correct = rows.iter().filter(|r| r[3] == "1").count() as f64 / 20.0;
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let acc = report["rows"][0]["accuracy"].as_f64().unwrap();
    assert_eq!(correct, acc, "{report}");
    // The prediction is the arg-max of the logits written beside it.
    for r in &rows {
        let logits: Vec<f32> = r[4..].iter().map(|v| v.parse().unwrap()).collect();
        let best = (0..10).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
        assert_eq!(best.to_string(), r[2]);
    }
}

#[test]
fn transfer_gen_force_replaces_a_damaged_file() {
    use eio::eval::transfer::transfer_gen_with;
    let linear = Linear::new(10, 3072, Kind::Float, 7);
    let data = self_labelled(&linear, 4, 60);
    let index = [0usize, 1, 2];
    let attack = AttackConfig::Pgd(PgdConfig { steps: 2, restarts: 1, ..PgdConfig::whitebox(1.0) });
    let cfg = TransferGenConfig {
        eps: vec![0.03],
        losses: vec![AttackLoss::CrossEntropy],
        attacks: vec![attack],
        batch: 2,
    };
    let dir = tempdir();
    let sur = [Named::new("lin", &linear)];
    let gen = |force: bool| {
        transfer_gen_with(&sur, &data, &index, &cfg, dir.path(), Device::Cpu, Seed(1), force)
    };
    gen(false).unwrap();
    let path = dir.path().join("lin_eps0.03.safetensors");
    let good = std::fs::read(&path).unwrap();
    let header = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // Cut in the tensors (the header and its plan intact: it must not be kept as complete), cut
    // in the header, emptied.
    for (keep, says) in [
        (good.len() - 100, "its header describes"),
        (header - 100, "fewer than its own"),
        (0, "an empty file"),
    ] {
        std::fs::write(&path, &good[..keep]).unwrap();
        let e = gen(false).unwrap_err().to_string();
        assert!(e.starts_with(&path.display().to_string()), "{e}");
        assert!(e.contains("cannot be read") && e.contains(says), "{keep} bytes: {e}");
        assert!(e.contains("pass --force to replace it") && !e.contains("other settings"), "{e}");
        let r = gen(true).unwrap();
        assert!(!r.files[0].skipped);
        assert_eq!(std::fs::read(&path).unwrap(), good, "{keep} bytes: replaced as made before");
    }
    // Once whole, a rerun keeps it.
    assert!(gen(false).unwrap().files[0].skipped);
}

/// `v` without its nulls (TOML has none; they are the `None`s of the JSON report).
fn without_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        v => v,
    }
}

#[test]
fn whitebox_config_files_choose_any_attack_and_reports_feed_back() {
    let dir = tempdir();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let model = d("plain.safetensors");
    plain_model().save(std::path::Path::new(&model), TensorFile::default()).unwrap();
    let data = cifar_jpeg().display().to_string();
    let run = |config: &str, json: &str, extra: &[&str]| {
        let mut args = vec!["attack", "whitebox", "--model", &model, "--device", "cpu"];
        args.extend(["--data", &data, "--first-per-class", "1", "--config", config]);
        args.extend(["--json", json]);
        args.extend(extra);
        let (ok, out, err) = eio(&args);
        assert!(ok, "eio {args:?} failed:\n{err}");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
        (out, report)
    };
    for (kind, text, says) in [
        ("fgsm", "eps = [0.01]\n[attack]\nkind = \"fgsm\"\n", "FGSM, 1 restart(s), loss ce"),
        ("apgd", "eps = [0.01]\n[attack]\nkind = \"apgd\"\nsteps = 2\n", "APGD-2, 1 restart(s)"),
        ("pgd", "eps = [0.01]\n[attack]\nsteps = 2\nrestarts = 1\n", "PGD-2, step 0.2*eps"),
    ] {
        let config = d(&format!("{kind}.toml"));
        std::fs::write(&config, text).unwrap();
        let (out, report) = run(&config, &d(&format!("{kind}.json")), &[]);
        assert!(out.contains(says), "{out}");
        assert_eq!(report["attack"], kind, "{report}");
        // The report's config block, as TOML, runs the same protocol again.
        let block: toml::Value =
            toml::Value::try_from(without_nulls(report["config"].clone())).unwrap();
        let again = d(&format!("{kind}-again.toml"));
        std::fs::write(&again, toml::to_string(&block).unwrap()).unwrap();
        let (_, back) = run(&again, &d(&format!("{kind}-again.json")), &[]);
        assert_eq!(back["config"], report["config"], "{kind}");
        assert_eq!(back["rows"][0]["robust_accuracy"], report["rows"][0]["robust_accuracy"]);
    }
    // Flags that would do nothing to the configured attack are errors naming the flag.
    for (kind, flag, value) in
        [("fgsm", "--step-ratio", "0.1"), ("apgd", "--random-start", "false")]
    {
        let mut args = vec!["attack", "whitebox", "--model", &model, "--device", "cpu"];
        let config = d(&format!("{kind}.toml"));
        args.extend(["--data", &data, "--first-per-class", "1", "--config", &config]);
        args.extend([flag, value]);
        assert_user_error(
            &args,
            &format!("{flag} applies only to the PGD attacks (pgd, mpgd), not {kind}"),
        );
    }
    let config = d("fgsm.toml");
    let mut args = vec!["attack", "whitebox", "--model", &model, "--device", "cpu"];
    args.extend(["--data", &data, "--first-per-class", "1", "--config", &config, "--steps", "7"]);
    assert_user_error(&args, "--steps applies to pgd, mpgd and apgd; fgsm takes one step");
}
