/*!
The sizes of a reproduction: a [`Preset`] (`smoke` for CI, `demo`, `cpu`, `gpu`, `paper`:
[`Preset::named`]) names the [`Arm`]s it compares, its data, epochs and evaluation sizes, and
gives every job of its [`super::plan::Plan`] its settings (training specs, the white-box
protocol, the transfer set). A preset may add ensemble sizes (`more_members`: the paper's 5 and
8) and the EIO hyper-parameter studies (`eio_variants`, [`EioVariant`]: Table 2, Fig. 5, Fig. 6,
EIO(top-k)).
*/

use serde::{Deserialize, Serialize};

use super::studies::{paper_variants, EioVariant};
use crate::attack::{AttackConfig, AttackLoss};
use crate::distill::DistillConfig;
use crate::error::{Error, Result};
use crate::eval::transfer::TransferGenConfig;
use crate::eval::whitebox::WhiteboxConfig;
use crate::model::ArchConfig;
use crate::train::adv::AdvTerm;
use crate::train::eio::EioConfig;
use crate::train::{MethodConfig, TrainSpec};

/// An arm of the comparison: one trained model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// Independently trained baseline ensemble (also DVERGE's starting point).
    Baseline,
    /// Ensemble-in-One: RGN warm-up, diversification, derived path (fine-tuned when the preset
    /// fine-tunes).
    Eio,
    /// EIO with the adversarial term (Eq. 5).
    EioAdvt,
    /// DVERGE from the baseline ensemble.
    Dverge,
    /// DVERGE+AdvT.
    DvergeAdvt,
    /// ADP.
    Adp,
    /// GAL.
    Gal,
    /// TRS.
    Trs,
    /// PGD adversarial training of one ResNet-20.
    Adv,
}

/// Sizes of a reproduction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    /// Name (`smoke`, `demo`, `cpu`, `gpu`, `paper`).
    pub name: String,
    /// Master seed.
    pub seed: u64,
    /// Training batch size.
    pub batch_size: usize,
    /// Train on the first N images of each class (`None` = all 50,000).
    pub train_per_class: Option<usize>,
    /// Evaluate on the first N test images of each class (100 = the paper's 1,000 images).
    pub eval_per_class: usize,
    /// Per-epoch test accuracy of training runs on the first N test images of each class.
    pub test_per_class: usize,
    /// Epochs of baselines, RGN warm-up, ADP, GAL, TRS and adversarial training.
    pub epochs: usize,
    /// Epochs of EIO and DVERGE diversification.
    pub div_epochs: usize,
    /// Fine-tuning epochs of the derived EIO path (0 = none).
    pub finetune_epochs: usize,
    /// Distillation steps (paper 10).
    pub distill_steps: usize,
    /// Members of the baseline, DVERGE, ADP, GAL and TRS ensembles.
    pub members: usize,
    /// Sizes of the surrogate baseline ensembles of the black-box protocol (paper 3, 5, 8).
    pub surrogates: Vec<usize>,
    /// The arms trained and compared.
    pub arms: Vec<Arm>,
    /// White-box radii.
    pub eps_whitebox: Vec<f64>,
    /// White-box PGD steps (paper 50, step eps/5).
    pub whitebox_steps: usize,
    /// White-box restarts (paper 5).
    pub whitebox_restarts: usize,
    /// Black-box radii.
    pub eps_blackbox: Vec<f64>,
    /// Steps of every transfer attack (paper 100, step eps/5).
    pub transfer_steps: usize,
    /// Images of each transferability matrix (paper 1,000), at eps 0.03.
    pub transferability_images: usize,
    /// Derived paths of the stability check (paper 8; 0 = skip).
    pub stability_paths: usize,
    /// Further ensemble sizes of the baseline, DVERGE, ADP, GAL and TRS arms (paper 5 and 8,
    /// beside `members` = 3); their runs are named `<arm>-n<size>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_members: Vec<usize>,
    /// EIO configurations of the hyper-parameter studies, each trained, derived, fine-tuned and
    /// evaluated beside the default EIO arm (Table 2, Fig. 5, Fig. 6, EIO(top-k)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eio_variants: Vec<EioVariant>,
}

impl Preset {
    /// The named preset.
    pub fn named(name: &str) -> Result<Preset> {
        let p = Self::sizes(name)?;
        p.validate()?;
        Ok(p)
    }

    fn sizes(name: &str) -> Result<Preset> {
        let all = [
            Arm::Baseline,
            Arm::Eio,
            Arm::EioAdvt,
            Arm::Dverge,
            Arm::DvergeAdvt,
            Arm::Adp,
            Arm::Gal,
            Arm::Trs,
            Arm::Adv,
        ];
        let paper_eps = vec![0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07];
        Ok(match name {
            // CI: every job kind on a few images, in well under 2 minutes.
            "smoke" => Preset {
                name: name.into(),
                seed: 1,
                batch_size: 10,
                train_per_class: Some(2),
                eval_per_class: 1,
                test_per_class: 1,
                epochs: 1,
                div_epochs: 1,
                finetune_epochs: 1,
                distill_steps: 1,
                members: 2,
                surrogates: vec![2],
                arms: vec![Arm::Baseline, Arm::Eio, Arm::Dverge, Arm::Adp],
                eps_whitebox: vec![0.01, 0.03],
                whitebox_steps: 2,
                whitebox_restarts: 1,
                eps_blackbox: vec![0.03],
                transfer_steps: 2,
                transferability_images: 5,
                stability_paths: 2,
                // One of each: a second ensemble size, an EIO variant with its own training
                // (p = 2) deployed as an ensemble of two derived paths.
                more_members: vec![3],
                eio_variants: vec![EioVariant::paper().with(|v| {
                    v.paths = 2;
                    v.sub_models = 2;
                })],
            },
            // scripts/demo: baseline against EIO on a CIFAR-10 subset, 2 cores. Same model
            // geometry as the gpu preset (ensembles and surrogates of 3), so that the gpu
            // preset's models, shipped in zoo/demo (scripts/make-zoo), load into it with --from.
            "demo" => Preset {
                name: name.into(),
                seed: 1,
                batch_size: 128,
                train_per_class: Some(200),
                eval_per_class: 20,
                test_per_class: 20,
                epochs: 6,
                div_epochs: 1,
                finetune_epochs: 1,
                distill_steps: 5,
                members: 3,
                surrogates: vec![3],
                arms: vec![Arm::Baseline, Arm::Eio],
                eps_whitebox: vec![0.01, 0.02, 0.03],
                whitebox_steps: 10,
                whitebox_restarts: 1,
                eps_blackbox: vec![0.03],
                transfer_steps: 10,
                transferability_images: 100,
                stability_paths: 0,
                more_members: Vec::new(),
                eio_variants: Vec::new(),
            },
            // results/eio-cpu's scale with every arm: a long background run on 2 cores.
            "cpu" => Preset {
                name: name.into(),
                seed: 1,
                batch_size: 128,
                train_per_class: None,
                eval_per_class: 100,
                test_per_class: 100,
                epochs: 15,
                div_epochs: 2,
                finetune_epochs: 3,
                distill_steps: 10,
                members: 3,
                surrogates: vec![3],
                arms: all.to_vec(),
                eps_whitebox: vec![0.01, 0.02, 0.03],
                whitebox_steps: 50,
                whitebox_restarts: 5,
                eps_blackbox: vec![0.01, 0.03, 0.05, 0.07],
                transfer_steps: 100,
                transferability_images: 1000,
                stability_paths: 8,
                more_members: Vec::new(),
                eio_variants: Vec::new(),
            },
            // One lent H100/H200 session's worth: 10,000 training images, five arms, 500
            // evaluation images. Not yet run whole on a GPU; estimated from the H100 step times
            // in results/bench.md (5 ms per train step, 125 ms per EIO and 258 ms per DVERGE
            // iteration, 188 ms per GAL step, 590 PGD-50 images/s) at about 9 minutes one job
            // after the other, less with --workers. PGD-AT is left to the cpu preset.
            "gpu" => Preset {
                name: name.into(),
                train_per_class: Some(1000),
                eval_per_class: 50,
                test_per_class: 50,
                epochs: 10,
                div_epochs: 2,
                finetune_epochs: 2,
                surrogates: vec![3],
                arms: vec![Arm::Baseline, Arm::Eio, Arm::Dverge, Arm::Adp, Arm::Gal],
                whitebox_restarts: 2,
                eps_blackbox: vec![0.03, 0.05],
                transferability_images: 500,
                stability_paths: 4,
                ..Preset::named("cpu")?
            },
            // The published protocol: 200 + 200 epochs, N = 3, surrogates of 3, 5 and 8.
            "paper" => Preset {
                name: name.into(),
                seed: 0,
                batch_size: 128,
                train_per_class: None,
                eval_per_class: 100,
                test_per_class: 1000,
                epochs: 200,
                div_epochs: 200,
                finetune_epochs: 40,
                distill_steps: 10,
                members: 3,
                surrogates: vec![3, 5, 8],
                arms: all.to_vec(),
                eps_whitebox: vec![0.01, 0.02, 0.03],
                whitebox_steps: 50,
                whitebox_restarts: 5,
                eps_blackbox: paper_eps,
                transfer_steps: 100,
                transferability_images: 1000,
                stability_paths: 8,
                more_members: vec![5, 8],
                eio_variants: paper_variants(),
            },
            _ => {
                return Err(Error::config(format!(
                    "unknown preset '{name}': expected smoke, demo, cpu, gpu or paper"
                )))
            }
        })
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        if let Some(&k) = self.more_members.iter().find(|&&k| k < 2 || k == self.members) {
            return Err(Error::config(format!(
                "preset {}: further ensemble size {k} must be at least 2 and differ from members = {}",
                self.name, self.members
            )));
        }
        self.eio_variants.iter().try_for_each(EioVariant::validate)
    }

    /// The white-box protocol.
    pub fn whitebox(&self) -> WhiteboxConfig {
        WhiteboxConfig {
            eps: self.eps_whitebox.clone(),
            attack: AttackConfig::paper_whitebox(1.0)
                .with_steps(self.whitebox_steps)
                .with_restarts(self.whitebox_restarts),
            ..WhiteboxConfig::default()
        }
    }

    /// The transfer-set generation (the paper's suite, CE and CW losses).
    pub fn transfer(&self) -> TransferGenConfig {
        TransferGenConfig {
            eps: self.eps_blackbox.clone(),
            losses: vec![AttackLoss::CrossEntropy, AttackLoss::cw()],
            attacks: AttackConfig::paper_transfer_suite(1.0)
                .into_iter()
                .map(|a| a.with_steps(self.transfer_steps))
                .collect(),
            ..TransferGenConfig::default()
        }
    }

    /// `base` with the preset's number of distillation steps, each of eps / steps (the
    /// published 10 steps of 0.007 at eps 0.07).
    pub(super) fn distill(&self, base: DistillConfig) -> DistillConfig {
        DistillConfig {
            steps: self.distill_steps,
            step_size: base.eps / self.distill_steps as f64,
            ..base
        }
    }

    /// The RGN of an EIO variant: the preset's, with the variant's copies and gated slots.
    pub(super) fn variant_arch(&self, v: &EioVariant) -> ArchConfig {
        let mut arch = self.spec(MethodConfig::RgnWarmup, 1, 1).arch;
        arch.copies = v.copies;
        arch.augment = v.augment;
        arch
    }

    /// The diversification run of an EIO variant (with the adversarial term: EIO+AdvT).
    pub(super) fn eio_spec(&self, v: &EioVariant, adv: bool) -> TrainSpec {
        let cfg = EioConfig {
            paths: v.paths,
            distill: self.distill(DistillConfig { eps: v.eps_d, ..DistillConfig::eio() }),
            adv: adv.then(AdvTerm::default),
            ..Default::default()
        };
        let mut spec = self.spec(MethodConfig::Eio(cfg), 1, self.div_epochs);
        spec.arch = self.variant_arch(v);
        spec
    }

    pub(super) fn spec(&self, method: MethodConfig, members: usize, epochs: usize) -> TrainSpec {
        let mut s = TrainSpec::defaults(method);
        if s.members > 1 || matches!(s.method, MethodConfig::Baseline) {
            s.members = members;
        }
        s.train.seed = self.seed;
        s.train.epochs = epochs;
        s.train.batch_size = self.batch_size;
        s.train.train_per_class = self.train_per_class;
        s.train.test_per_class = Some(self.test_per_class);
        s.train.checkpoint_every = 50;
        s
    }
}
