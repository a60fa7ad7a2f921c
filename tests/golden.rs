//! Golden fingerprints of whole training runs, recorded from the implementation before the
//! issue-8 reshaping (git d5ad9d7): the reshaping must leave the numbers bit-identical (same
//! seed; one libtorch thread, as scripts/test sets). A fingerprint is FNV-1a over every
//! variable's name and f32 bytes, in name order.

use tch::{Device, Kind};

use eio::attack::{AttackConfig, PgdConfig};
use eio::data::{Dataset, Split};
use eio::distill::DistillConfig;
use eio::model::{ArchConfig, MemoryFormat, Model, ModelSpec};
use eio::optim::OptimConfig;
use eio::seed::Seed;
use eio::train::adv::AdvTerm;
use eio::train::eio::{Eio, EioConfig};
use eio::train::methods::{Independent, RgnWarmup};
use eio::train::{fit, Method, RunDir, TrainConfig};

use crate::util::{cifar_jpeg, tempdir};

/// FNV-1a over the raw bytes of every variable, in name order.
pub fn fingerprint(m: &Model) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let vars: std::collections::BTreeMap<_, _> = m.vs.variables().into_iter().collect();
    for (k, v) in vars {
        let v = v.to_kind(Kind::Float).flatten(0, -1).to_device(Device::Cpu);
        let vals = Vec::<f32>::try_from(&v).unwrap();
        for b in k.bytes().chain(vals.iter().flat_map(|f| f.to_le_bytes())) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn run(spec: ModelSpec, method: &mut dyn Method, format: MemoryFormat) -> u64 {
    let train = Dataset::load(&cifar_jpeg(), Split::Train, None).unwrap().first_per_class(3);
    let test = train.first_per_class(1);
    let t = TrainConfig { epochs: 2, batch_size: 10, seed: 3, ..TrainConfig::default() };
    let o = OptimConfig { lr: 0.05, ..OptimConfig::default() };
    let dir = tempdir();
    let rd = RunDir { dir: dir.path().join("r"), resume: false, force: false };
    let mut model = Model::new(&spec, Device::Cpu, Seed(4)).unwrap();
    model.set_memory_format(format);
    fit(&mut model, method, &t, &o, "cfg", &train, &test, &rd).unwrap();
    fingerprint(&model)
}

/// The three runs (two independent members, RGN warm-up, EIO+AdvT) in one layout.
fn golden_runs(format: MemoryFormat) -> [u64; 3] {
    let plain = |members| ModelSpec { arch: ArchConfig::plain(), members };
    let rgn = ModelSpec { arch: ArchConfig::rgn(2), members: 1 };
    let eio_cfg = EioConfig {
        distill: DistillConfig { steps: 2, ..Default::default() },
        adv: Some(AdvTerm {
            attack: AttackConfig::Pgd(PgdConfig { steps: 2, ..AdvTerm::pgd(8.0 / 255.0) }),
            ..Default::default()
        }),
        ..Default::default()
    };
    [
        run(plain(2), &mut Independent, format),
        run(rgn.clone(), &mut RgnWarmup, format),
        run(rgn, &mut Eio::new(eio_cfg).unwrap(), format),
    ]
}

#[test]
fn golden_runs_are_unchanged() {
    let got = golden_runs(MemoryFormat::Contiguous);
    println!("golden fingerprints: {got:?}");
    // Re-recorded when JPEG decoding became PIL-exact (issue 11): the training pixels changed.
    // With the previous decoder this code still gives the d5ad9d7 numbers
    // [12011306286816027851, 3583027598789401917, 2765691892938843034].
    let want: [u64; 3] = [6771656509483460178, 5226893833399117110, 7450054502643455848];
    assert_eq!(got, want);
}

/// Channels-last (the CPU default since issue 12) sums in another order than the contiguous
/// layout, so it has fingerprints of its own, recorded when it was introduced: they pin its
/// numbers as the ones above pin the contiguous layout's.
#[test]
fn golden_runs_are_unchanged_in_channels_last() {
    let got = golden_runs(MemoryFormat::ChannelsLast);
    println!("golden fingerprints (channels-last): {got:?}");
    let want: [u64; 3] = [12870796446506069306, 16960131802226116323, 3778881591198778379];
    assert_eq!(got, want);
}
