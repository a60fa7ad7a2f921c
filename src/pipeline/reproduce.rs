/*!
The paper's comparison in one resumable command (`eio reproduce --preset NAME --out DIR`): train
every arm a [`Preset`] lists, derive and fine-tune the EIO model, craft the black-box transfer
set once from baseline surrogate ensembles, evaluate every model (clean and white-box, then
black-box on the transfer set as a job of its own, so that white-box results do not wait for the
transfer set; whole ensembles and one selected member, as the paper's Fig. 9), transferability
matrices and
the stability of derived paths, then write `summary.json` (see [`super::summary`]). A preset may
add ensemble sizes (`more_members`: the paper's 5 and 8) and the EIO hyper-parameter studies
(`eio_variants`, [`EioVariant`]: Table 2, Fig. 5, Fig. 6, EIO(top-k)).

The work is a [`Plan`]: a list of [`Job`]s, each with the files it reads and writes, saved as
`DIR/plan.toml`. A job whose outputs exist is skipped, so a rerun continues where it stopped
(training runs also resume inside an epoch from their checkpoints). `only` runs a subset of the
jobs by name, so a plan can be spread over machines and the folders merged: every job's result
is a file under `DIR`.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

pub use super::studies::{paper_variants, EioVariant};
use super::summary::{epoch_cost, Curve, MatrixResult, ModelResult, StabilityResult, Summary};
use crate::attack::{AttackConfig, AttackLoss};
use crate::data::Dataset;
use crate::distill::DistillConfig;
use crate::error::{Error, Result};
use crate::eval::transfer::{
    transfer_eval, transfer_files, transfer_gen, Named, TransferGenConfig,
};
use crate::eval::transferability::{members, transferability, TransferabilityConfig};
use crate::eval::whitebox::{whitebox_resumable, WhiteboxConfig};
use crate::fsx::{read_json, write_json};
use crate::model::io::{write_atomic, TensorFile};
use crate::model::{ArchConfig, Model, Route, Target};
use crate::seed::{Seed, Stream};
use crate::train::adv::AdvTerm;
use crate::train::dverge::DvergeConfig;
use crate::train::eio::EioConfig;
use crate::train::{fit, git_rev, EpochRecord, MethodConfig, RunDir, TrainSpec};

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
    fn distill(&self, base: DistillConfig) -> DistillConfig {
        DistillConfig {
            steps: self.distill_steps,
            step_size: base.eps / self.distill_steps as f64,
            ..base
        }
    }

    /// The RGN of an EIO variant: the preset's, with the variant's copies and gated slots.
    fn variant_arch(&self, v: &EioVariant) -> ArchConfig {
        let mut arch = self.spec(MethodConfig::RgnWarmup, 1, 1).arch;
        arch.copies = v.copies;
        arch.augment = v.augment;
        arch
    }

    /// The diversification run of an EIO variant (with the adversarial term: EIO+AdvT).
    fn eio_spec(&self, v: &EioVariant, adv: bool) -> TrainSpec {
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

    fn spec(&self, method: MethodConfig, members: usize, epochs: usize) -> TrainSpec {
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

/// What a job does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum JobKind {
    /// A training run into `runs/<name>`, from `init` (a model file under the output folder)
    /// when given.
    Train {
        /// The run's configuration.
        spec: Box<TrainSpec>,
        /// Starting weights.
        init: Option<String>,
    },
    /// A plain model from one random path (from `seed`) of the RGN `rgn`, or an ensemble of
    /// `paths` distinct random paths.
    Derive {
        /// The RGN file.
        rgn: String,
        /// Seed of the path.
        seed: u64,
        /// Paths derived (1 = one plain network).
        #[serde(default = "one", skip_serializing_if = "is_one")]
        paths: usize,
    },
    /// The transfer set, from the surrogate ensembles.
    TransferGen {
        /// Surrogate model files.
        surrogates: Vec<String>,
    },
    /// Clean and white-box accuracy of one model (or one member of it), and its training cost.
    Evaluate {
        /// Display name (`label` in plan.toml, where `name` is the job's).
        #[serde(rename = "label")]
        name: String,
        /// Method of the model.
        method: String,
        /// Adversarial training was part of the method.
        adv_training: bool,
        /// The model file.
        model: String,
        /// Evaluate this member alone.
        member: Option<usize>,
        /// Training runs the model needed (for its cost).
        runs: Vec<String>,
        /// The RGN a derived model comes from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rgn: Option<ArchConfig>,
        /// The EIO configuration of a hyper-parameter study's model (`None`: the paper's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<Box<EioVariant>>,
    },
    /// Black-box accuracy of one model (or one member of it) on the transfer set.
    Blackbox {
        /// The model file.
        model: String,
        /// Evaluate this member alone.
        member: Option<usize>,
    },
    /// The transferability matrix of an ensemble's members or an RGN's paths.
    Transferability {
        /// Display name (`label` in plan.toml, where `name` is the job's).
        #[serde(rename = "label")]
        name: String,
        /// The model file.
        model: String,
    },
    /// The stability of derived paths of an RGN.
    Stability {
        /// The RGN file.
        rgn: String,
    },
}

/// One job of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique name, e.g. `train/baseline`, `eval/eio-finetune`.
    pub name: String,
    /// What it does.
    #[serde(flatten)]
    pub kind: JobKind,
    /// Files it writes, relative to the output folder; all present = done.
    pub outputs: Vec<String>,
}

/// The jobs of a reproduction, in an order that satisfies their inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The sizes.
    pub preset: Preset,
    /// The jobs.
    pub jobs: Vec<Job>,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Where the black-box job of evaluation `key` writes (beside `eval/<key>.json`).
fn blackbox_output(key: &str) -> String {
    format!("eval/{key}-blackbox.json")
}

fn run_model(name: &str) -> String {
    format!("runs/{name}/model.safetensors")
}

impl Plan {
    /// The plan of `preset`.
    pub fn new(preset: Preset) -> Plan {
        let p = &preset;
        let mut jobs = Vec::new();
        let train = |jobs: &mut Vec<Job>, name: &str, spec: TrainSpec, init: Option<String>| {
            jobs.push(Job {
                name: format!("train/{name}"),
                kind: JobKind::Train { spec: Box::new(spec), init },
                outputs: vec![run_model(name), format!("runs/{name}/history.json")],
            });
        };
        let rgn_arch = p.spec(MethodConfig::RgnWarmup, 1, 1).arch;
        let eval = |jobs: &mut Vec<Job>,
                    key: &str,
                    name: String,
                    method: &str,
                    advt: bool,
                    model: String,
                    member: Option<usize>,
                    runs: Vec<&str>,
                    variant: Option<&EioVariant>| {
            let model_file = model;
            let rgn = variant
                .map(|v| p.variant_arch(v))
                .or_else(|| (method == "eio").then(|| rgn_arch.clone()));
            jobs.push(Job {
                name: format!("eval/{key}"),
                kind: JobKind::Evaluate {
                    name,
                    method: method.into(),
                    adv_training: advt,
                    model: model_file.clone(),
                    member,
                    runs: runs.into_iter().map(String::from).collect(),
                    rgn,
                    variant: variant.cloned().map(Box::new),
                },
                outputs: vec![format!("eval/{key}.json")],
            });
            jobs.push(Job {
                name: format!("blackbox/{key}"),
                kind: JobKind::Blackbox { model: model_file, member },
                outputs: vec![blackbox_output(key)],
            });
        };
        let n = p.members;
        let needs_baseline =
            p.arms.iter().any(|a| matches!(a, Arm::Baseline | Arm::Dverge | Arm::DvergeAdvt));
        if needs_baseline {
            train(&mut jobs, "baseline", p.spec(MethodConfig::Baseline, n, p.epochs), None);
        }
        // Surrogates: independent baseline ensembles with seeds of their own.
        for &k in &p.surrogates {
            let mut s = p.spec(MethodConfig::Baseline, k, p.epochs);
            s.train.seed = p.seed + 100 + k as u64;
            train(&mut jobs, &format!("surrogate{k}"), s, None);
        }
        let eio_arms: Vec<(Arm, &str)> = [(Arm::Eio, "eio"), (Arm::EioAdvt, "eio-advt")]
            .into_iter()
            .filter(|(a, _)| p.arms.contains(a))
            .collect();
        if !eio_arms.is_empty() {
            train(&mut jobs, "rgn-warmup", p.spec(MethodConfig::RgnWarmup, 1, p.epochs), None);
        }
        for (arm, key) in &eio_arms {
            let spec = p.eio_spec(&EioVariant::paper(), *arm == Arm::EioAdvt);
            train(&mut jobs, key, spec, Some(run_model("rgn-warmup")));
            let derived = format!("models/{key}-derived.safetensors");
            jobs.push(Job {
                name: format!("derive/{key}"),
                kind: JobKind::Derive { rgn: run_model(key), seed: p.seed, paths: 1 },
                outputs: vec![derived.clone()],
            });
            let advt = *arm == Arm::EioAdvt;
            let label = if advt { "EIO+AdvT" } else { "EIO" };
            if p.finetune_epochs > 0 {
                let mut ft = TrainSpec::finetune();
                ft.train = p.spec(MethodConfig::Baseline, 1, p.finetune_epochs).train;
                let ft_name = format!("{key}-finetune");
                train(&mut jobs, &ft_name, ft, Some(derived.clone()));
                eval(
                    &mut jobs,
                    &ft_name,
                    format!("{label} (derived, fine-tuned)"),
                    "eio",
                    advt,
                    run_model(&ft_name),
                    None,
                    vec!["rgn-warmup", key, &ft_name],
                    None,
                );
            }
            eval(
                &mut jobs,
                &format!("{key}-derived"),
                format!("{label} (derived)"),
                "eio",
                advt,
                derived,
                None,
                vec!["rgn-warmup", key],
                None,
            );
        }
        // The hyper-parameter studies: each variant's warm-up and training unless an arm or an
        // earlier variant has it, then its derived model, fine-tuned, evaluated.
        for v in &p.eio_variants {
            let has = |jobs: &Vec<Job>, name: &str| jobs.iter().any(|j| j.name == name);
            let warmup = format!("rgn-warmup{}", v.arch_suffix());
            if !has(&jobs, &format!("train/{warmup}")) {
                let mut s = p.spec(MethodConfig::RgnWarmup, 1, p.epochs);
                s.arch = p.variant_arch(v);
                train(&mut jobs, &warmup, s, None);
            }
            let tkey = v.train_key();
            if !has(&jobs, &format!("train/{tkey}")) {
                train(&mut jobs, &tkey, p.eio_spec(v, false), Some(run_model(&warmup)));
            }
            let key = v.key();
            let derived = format!("models/{key}-derived.safetensors");
            if !has(&jobs, &format!("derive/{key}")) {
                jobs.push(Job {
                    name: format!("derive/{key}"),
                    kind: JobKind::Derive {
                        rgn: run_model(&tkey),
                        seed: p.seed,
                        paths: v.sub_models,
                    },
                    outputs: vec![derived.clone()],
                });
            }
            let (model, eval_key, runs, what) = if p.finetune_epochs > 0 {
                let ft_name = format!("{key}-finetune");
                let mut ft = TrainSpec::finetune();
                ft.members = v.sub_models;
                ft.train = p.spec(MethodConfig::Baseline, 1, p.finetune_epochs).train;
                if !has(&jobs, &format!("train/{ft_name}")) {
                    train(&mut jobs, &ft_name, ft, Some(derived.clone()));
                }
                (
                    run_model(&ft_name),
                    ft_name.clone(),
                    vec![warmup.clone(), tkey.clone(), ft_name],
                    "derived, fine-tuned",
                )
            } else {
                (
                    derived.clone(),
                    format!("{key}-derived"),
                    vec![warmup.clone(), tkey.clone()],
                    "derived",
                )
            };
            if !has(&jobs, &format!("eval/{eval_key}")) {
                eval(
                    &mut jobs,
                    &eval_key,
                    format!("{} ({what})", v.label()),
                    "eio",
                    false,
                    model,
                    None,
                    runs.iter().map(String::as_str).collect(),
                    Some(v),
                );
            }
        }
        let ensembles: Vec<(Arm, &str, &str, MethodConfig)> = vec![
            (
                Arm::Dverge,
                "dverge",
                "DVERGE",
                MethodConfig::Dverge(DvergeConfig {
                    distill: p.distill(DistillConfig::dverge()),
                    ..Default::default()
                }),
            ),
            (
                Arm::DvergeAdvt,
                "dverge-advt",
                "DVERGE+AdvT",
                MethodConfig::Dverge(DvergeConfig {
                    distill: p.distill(DistillConfig::dverge()),
                    adv: Some(AdvTerm::default()),
                    ..Default::default()
                }),
            ),
            (Arm::Adp, "adp", "ADP", MethodConfig::Adp(Default::default())),
            (Arm::Gal, "gal", "GAL", MethodConfig::Gal(Default::default())),
            (Arm::Trs, "trs", "TRS", MethodConfig::Trs(Default::default())),
        ];
        // Each ensemble size: the first is `members`, whose runs have the arms' plain names.
        for size in std::iter::once(n).chain(p.more_members.iter().copied()) {
            let sfx = if size == n { String::new() } else { format!("-n{size}") };
            let base = format!("baseline{sfx}");
            if size != n && needs_baseline {
                train(&mut jobs, &base, p.spec(MethodConfig::Baseline, size, p.epochs), None);
            }
            if p.arms.contains(&Arm::Baseline) {
                eval(
                    &mut jobs,
                    &base,
                    format!("baseline (ensemble of {size})"),
                    "baseline",
                    false,
                    run_model(&base),
                    None,
                    vec![&base],
                    None,
                );
                eval(
                    &mut jobs,
                    &format!("{base}-member0"),
                    format!("baseline (1 of {size})"),
                    "baseline",
                    false,
                    run_model(&base),
                    Some(0),
                    vec![&base],
                    None,
                );
            }
            for (arm, key, label, method) in &ensembles {
                if !p.arms.contains(arm) {
                    continue;
                }
                let key = format!("{key}{sfx}");
                let method_name = method.name();
                let from_baseline = matches!(arm, Arm::Dverge | Arm::DvergeAdvt);
                let epochs = if from_baseline { p.div_epochs } else { p.epochs };
                let init = from_baseline.then(|| run_model(&base));
                train(&mut jobs, &key, p.spec(method.clone(), size, epochs), init);
                let runs: Vec<&str> = if from_baseline { vec![&base, &key] } else { vec![&key] };
                let advt = matches!(arm, Arm::DvergeAdvt);
                eval(
                    &mut jobs,
                    &key,
                    format!("{label} (ensemble of {size})"),
                    method_name,
                    advt,
                    run_model(&key),
                    None,
                    runs.clone(),
                    None,
                );
                eval(
                    &mut jobs,
                    &format!("{key}-member0"),
                    format!("{label} (1 of {size})"),
                    method_name,
                    advt,
                    run_model(&key),
                    Some(0),
                    runs,
                    None,
                );
            }
        }
        if p.arms.contains(&Arm::Adv) {
            train(
                &mut jobs,
                "adv",
                p.spec(MethodConfig::Adv(AdvTerm::default()), 1, p.epochs),
                None,
            );
            eval(
                &mut jobs,
                "adv",
                "PGD-AT (1 model)".into(),
                "adv",
                true,
                run_model("adv"),
                None,
                vec!["adv"],
                None,
            );
        }
        // The transfer set depends only on the surrogates; black-box evaluations read it.
        let pos = jobs
            .iter()
            .position(|j| matches!(j.kind, JobKind::Blackbox { .. }))
            .unwrap_or(jobs.len());
        jobs.insert(
            pos,
            Job {
                name: "transfer-gen".into(),
                kind: JobKind::TransferGen {
                    surrogates: p
                        .surrogates
                        .iter()
                        .map(|k| run_model(&format!("surrogate{k}")))
                        .collect(),
                },
                outputs: vec!["transfer/report.json".into()],
            },
        );
        if p.transferability_images > 0 {
            for (key, name) in [("baseline", "baseline"), ("dverge", "DVERGE"), ("eio", "EIO")] {
                let has = match key {
                    "eio" => p.arms.contains(&Arm::Eio),
                    "baseline" => p.arms.contains(&Arm::Baseline),
                    _ => p.arms.contains(&Arm::Dverge),
                };
                if has {
                    jobs.push(Job {
                        name: format!("transferability/{key}"),
                        kind: JobKind::Transferability { name: name.into(), model: run_model(key) },
                        outputs: vec![format!("eval/transferability-{key}.json")],
                    });
                }
            }
        }
        if p.stability_paths > 0 && p.arms.contains(&Arm::Eio) {
            jobs.push(Job {
                name: "stability".into(),
                kind: JobKind::Stability { rgn: run_model("eio") },
                outputs: vec!["stability/report.json".into()],
            });
        }
        Plan { preset, jobs }
    }

    /// The job names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    /// The jobs that must finish before job `k` starts (indices): those that write a file it
    /// reads; a black-box evaluation also waits for the transfer set, which it reads as a folder.
    pub fn dependencies(&self, k: usize) -> Vec<usize> {
        let job = &self.jobs[k];
        let inputs = job.inputs();
        let evaluates = matches!(job.kind, JobKind::Blackbox { .. });
        (0..self.jobs.len())
            .filter(|&i| {
                let j = &self.jobs[i];
                i != k
                    && (j.outputs.iter().any(|o| inputs.contains(o))
                        || evaluates && matches!(j.kind, JobKind::TransferGen { .. }))
            })
            .collect()
    }

    /// The order the jobs run in (indices of every job): with `only` empty, the plan's; else the
    /// jobs `only` names first, in the order it names them except that a job never comes before
    /// one it needs, then the others in plan order. So `--only` also says which jobs to start
    /// first (the cheap ones of a long run, say).
    pub fn order(&self, only: &[String]) -> Vec<usize> {
        let n = self.jobs.len();
        let rank = |k: usize| only.iter().position(|o| *o == self.jobs[k].name);
        let mut wanted: Vec<usize> = (0..n).filter(|&k| rank(k).is_some()).collect();
        wanted.sort_by_key(|&k| rank(k));
        let deps: Vec<Vec<usize>> = (0..n).map(|k| self.dependencies(k)).collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        // Each round places the first named job whose named dependencies are placed; one
        // always exists, since dependencies come earlier in the plan.
        while let Some(i) =
            wanted.iter().position(|&k| deps[k].iter().all(|&d| placed[d] || rank(d).is_none()))
        {
            let k = wanted.remove(i);
            placed[k] = true;
            order.push(k);
        }
        order.extend((0..n).filter(|&k| !placed[k]));
        order
    }

    /// Which jobs still have to run for the plan to finish in `out`: a job not done that is
    /// final (nothing reads its files) or that a job still to run reads. A job whose readers are
    /// all done (for instance loaded with [`load_from`]) is not needed.
    pub fn needed(&self, out: &Path) -> Vec<bool> {
        let n = self.jobs.len();
        let deps: Vec<Vec<usize>> = (0..n).map(|k| self.dependencies(k)).collect();
        let mut needed = vec![false; n];
        // Dependencies come earlier in the plan (every_input_is_an_earlier_jobs_output), so a
        // job's readers are decided before it.
        for k in (0..n).rev() {
            let readers: Vec<usize> = (k + 1..n).filter(|&r| deps[r].contains(&k)).collect();
            needed[k] = !self.jobs[k].is_done(out)
                && (readers.is_empty() || readers.iter().any(|&r| needed[r]));
        }
        needed
    }

    /// Where each job stands in `out` (what `eio reproduce --list` prints).
    pub fn states(&self, out: &Path) -> Vec<JobState> {
        self.jobs
            .iter()
            .zip(self.needed(out))
            .map(|(j, needed)| match (j.is_done(out), needed) {
                (true, _) => JobState::Done,
                (false, true) => JobState::ToDo,
                (false, false) => JobState::NotNeeded,
            })
            .collect()
    }

    /// Refuses an output folder that holds a reproduction of another preset (or of this one's
    /// name with other sizes, from another eio version): its files would count as this plan's.
    pub fn check_folder(&self, out: &Path) -> Result<()> {
        let file = out.join("plan.toml");
        if !file.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        let theirs = toml::from_str::<toml::Table>(&text)
            .ok()
            .and_then(|t| t.get("preset").cloned())
            .and_then(|p| p.try_into::<Preset>().ok());
        match theirs {
            Some(p) if p == self.preset => Ok(()),
            Some(p) if p.name != self.preset.name => Err(Error::config(format!(
                "--out {}: holds a reproduction of preset '{}', not '{}': use another folder",
                out.display(),
                p.name,
                self.preset.name
            ))),
            _ => Err(Error::data(
                &file,
                format!(
                    "a reproduction with other sizes than this eio's preset '{}' (another eio \
                     version's?): use another folder",
                    self.preset.name
                ),
            )),
        }
    }

    /// Refuses names in `only` that are not jobs of this plan.
    pub fn check_only(&self, only: &[String]) -> Result<()> {
        match only.iter().find(|n| !self.jobs.iter().any(|j| &j.name == *n)) {
            Some(name) => Err(Error::config(format!(
                "--only {name}: no such job; the plan has {}",
                self.names().join(", ")
            ))),
            None => Ok(()),
        }
    }
}

/// Where a job stands in an output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Every output exists.
    Done,
    /// Not done, and the plan needs it.
    ToDo,
    /// Not done, but every job that reads its files is ([`Plan::needed`]).
    NotNeeded,
}

impl JobState {
    /// As `--list` prints it.
    pub fn label(self) -> &'static str {
        match self {
            JobState::Done => "done",
            JobState::ToDo => "to do",
            JobState::NotNeeded => "not needed",
        }
    }
}

impl Job {
    /// The files it reads, relative to the output folder (besides the data set, and for an
    /// black-box evaluation the transfer set's folder).
    pub fn inputs(&self) -> Vec<String> {
        match &self.kind {
            JobKind::Train { init, .. } => init.iter().cloned().collect(),
            JobKind::Derive { rgn, .. } | JobKind::Stability { rgn } => vec![rgn.clone()],
            JobKind::TransferGen { surrogates } => surrogates.clone(),
            JobKind::Evaluate { model, runs, .. } => std::iter::once(model.clone())
                .chain(runs.iter().map(|r| format!("runs/{r}/history.json")))
                .collect(),
            JobKind::Transferability { model, .. } | JobKind::Blackbox { model, .. } => {
                vec![model.clone()]
            }
        }
    }

    /// Whether every output exists under `out`.
    pub fn is_done(&self, out: &Path) -> bool {
        self.outputs.iter().all(|o| out.join(o).exists())
    }
}

/// The data a reproduction uses.
pub struct Data {
    /// Training split (the preset's subset).
    pub train: Dataset,
    /// Test split (all of it).
    pub test: Dataset,
}

/// What one evaluation job writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The model's row of the summary.
    pub result: ModelResult,
}

/// Sets the training cost of `m` from the histories of the training `runs` it needed (folders
/// under `out/runs`): their wall time, epochs and peak memory, and the time per epoch of the
/// method's own run ([`epoch_cost`]).
fn add_cost(m: &mut ModelResult, out: &Path, runs: &[String]) -> Result<()> {
    let (mut secs, mut epochs, mut cost, mut peak) = (0.0, 0, None, None);
    // A chain is [warm-up or baseline, ] the method's run[, its fine-tuning]; the fine-tuning
    // runs are the ones this module names `<key>-finetune`.
    let own = runs.iter().rposition(|r| !r.ends_with("-finetune"));
    for (k, r) in runs.iter().enumerate() {
        let h: Vec<EpochRecord> = read_json(&out.join("runs").join(r).join("history.json"))?;
        secs += h.iter().map(|e| e.train_secs).sum::<f64>();
        epochs += h.len();
        peak = h.iter().filter_map(|e| e.peak_memory_bytes).chain(peak).max();
        if Some(k) == own {
            cost = epoch_cost(&h);
        }
    }
    m.train_secs = secs;
    m.train_epochs = epochs;
    m.epoch_secs = cost.as_ref().map(|c| c.0);
    m.epoch_device = cost.and_then(|c| c.1);
    m.peak_memory_bytes = peak;
    Ok(())
}

/// What one black-box job writes: the model's accuracy on the transfer set at each of the
/// preset's black-box eps (robust = correct on every version of the image).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Blackbox {
    /// Accuracy at each `eps_blackbox`, in order.
    pub accuracy: Vec<f64>,
}

/// Copies into `out` the outputs of every job (of `only`, or all) that `from` holds whole and
/// `out` lacks, so that those jobs count as done: a folder of shipped checkpoints (the demo's)
/// or another machine's results. The transfer set is always made in `out` (its files are not
/// outputs of the plan). Returns the loaded jobs' names.
pub fn load_from(plan: &Plan, from: &Path, out: &Path, only: &[String]) -> Result<Vec<String>> {
    plan.check_only(only)?;
    if !from.is_dir() {
        return Err(Error::config(format!("--from {}: no such folder", from.display())));
    }
    let mut loaded = Vec::new();
    for job in &plan.jobs {
        if (!only.is_empty() && !only.contains(&job.name))
            || matches!(job.kind, JobKind::TransferGen { .. })
            || job.is_done(out)
            || !job.is_done(from)
        {
            continue;
        }
        for o in &job.outputs {
            let (src, dst) = (from.join(o), out.join(o));
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            std::fs::create_dir_all(dst.parent().expect("under out"))
                .map_err(|e| Error::io(&dst, e))?;
            write_atomic(&dst, &bytes)?;
        }
        loaded.push(job.name.clone());
    }
    if !loaded.is_empty() {
        // Kept beside the results, so that the summary says which numbers came from loaded
        // models (the summary is rewritten by later runs too).
        let file = out.join("loaded.json");
        let mut all: BTreeMap<String, String> =
            if file.exists() { read_json(&file)? } else { BTreeMap::new() };
        for name in &loaded {
            all.insert(name.clone(), from.display().to_string());
        }
        write_json(&file, &all)?;
    }
    Ok(loaded)
}

/// Runs the jobs of `plan` (those named in `only`, or all) that are not done, in `out`, then
/// writes `summary.json` from every finished job's files and returns the summary.
pub fn run(
    plan: &Plan,
    out: &Path,
    only: &[String],
    data: &Data,
    device: Device,
    command: &str,
) -> Result<Summary> {
    plan.check_only(only)?;
    plan.check_folder(out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let text = toml::to_string(plan).map_err(|e| Error::config(format!("internal: plan: {e}")))?;
    write_atomic(&out.join("plan.toml"), text.as_bytes())?;
    let p = &plan.preset;
    let eval_set = data.test.first_per_class(p.eval_per_class);
    let test = data.test.first_per_class(p.test_per_class);
    let seed = Seed(p.seed);
    let needed = plan.needed(out);
    for k in plan.order(only) {
        let job = &plan.jobs[k];
        if !only.is_empty() && !only.contains(&job.name) {
            continue;
        }
        if job.is_done(out) {
            eprintln!("[{}/{}] {}: done", k + 1, plan.jobs.len(), job.name);
            continue;
        }
        if only.is_empty() && !needed[k] {
            eprintln!(
                "[{}/{}] {}: not needed (every job that reads its files is done)",
                k + 1,
                plan.jobs.len(),
                job.name
            );
            continue;
        }
        eprintln!("[{}/{}] {}", k + 1, plan.jobs.len(), job.name);
        let t0 = std::time::Instant::now();
        match &job.kind {
            JobKind::Train { spec, init } => {
                let name = job.name.trim_start_matches("train/");
                let dir = out.join("runs").join(name);
                let mut model = match init {
                    Some(f) => Model::load(&out.join(f), device)?.0,
                    None => Model::new(&spec.model_spec(), device, Seed(spec.train.seed))?,
                };
                let text = spec.to_toml()?;
                let mut method = spec.build()?;
                let train = match spec.train.train_per_class {
                    Some(n) => data.train.first_per_class(n),
                    None => data.train.clone(),
                };
                let rd = RunDir { dir: dir.clone(), resume: true, force: false };
                let history = fit(
                    &mut model,
                    method.as_mut(),
                    &spec.train,
                    &spec.optim,
                    &text,
                    &train,
                    &test,
                    &rd,
                )?;
                write_json(&dir.join("history.json"), &history)?;
            }
            JobKind::Derive { rgn, seed: s, paths } => {
                let (m, _) = Model::load(&out.join(rgn), device)?;
                // Paths drawn one after the other from one generator, repeats drawn again: the
                // first is the one a single derivation takes.
                let mut rng = Seed(*s).rng(Stream::Route, 0, 0);
                let mut routes: Vec<Route> = Vec::new();
                while routes.len() < *paths {
                    let r = Route::random(m.gates(), m.spec.arch.copies, &mut rng);
                    if !routes.contains(&r) {
                        routes.push(r);
                    }
                }
                let mut extra = TensorFile::default();
                extra.meta.insert("eio.derived_from".into(), rgn.clone());
                let shown: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
                extra.meta.insert("eio.path".into(), shown.join(" "));
                let file = out.join(&job.outputs[0]);
                std::fs::create_dir_all(file.parent().expect("under out"))
                    .map_err(|e| Error::io(&file, e))?;
                let derived =
                    if *paths == 1 { m.derive(&routes[0])? } else { m.derive_ensemble(&routes)? };
                derived.save(&file, extra)?;
            }
            JobKind::TransferGen { surrogates } => {
                let models: Vec<Model> = surrogates
                    .iter()
                    .map(|f| Ok(Model::load(&out.join(f), device)?.0))
                    .collect::<Result<_>>()?;
                let targets: Vec<Target> = models.iter().map(Target::fixed_zero).collect();
                let named: Vec<Named> = targets
                    .iter()
                    .zip(surrogates)
                    .map(|(t, f)| {
                        Named::new(
                            f.trim_start_matches("runs/").trim_end_matches("/model.safetensors"),
                            t as &dyn crate::model::Classifier,
                        )
                    })
                    .collect();
                let index: Vec<usize> = (0..eval_set.len()).collect();
                let rep = transfer_gen(
                    &named,
                    &eval_set,
                    &index,
                    &p.transfer(),
                    &out.join("transfer"),
                    device,
                    seed,
                )?;
                write_json(&out.join(&job.outputs[0]), &rep)?;
            }
            JobKind::Evaluate { name, method, adv_training, model, member, runs, rgn, variant } => {
                let (m, _) = Model::load(&out.join(model), device)?;
                let ensemble_size = m.nets.len();
                let m = match member {
                    Some(i) => m.member(*i)?,
                    None => m,
                };
                let target = Target::fixed_zero(&m);
                // Hours on a CPU: a stopped evaluation continues from its last restart.
                let state = out.join(&job.outputs[0]).with_extension("state.json");
                let wb =
                    whitebox_resumable(&target, &eval_set, &p.whitebox(), device, seed, &state)?.0;
                let mut result = ModelResult {
                    name: name.clone(),
                    method: method.clone(),
                    members: ensemble_size,
                    selected: *member,
                    adv_training: *adv_training,
                    file: model.clone(),
                    clean: wb.clean_accuracy,
                    whitebox: wb.rows.iter().map(|r| r.robust_accuracy).collect(),
                    // The black-box job's, joined in by `summarise`.
                    blackbox: Vec::new(),
                    train_secs: 0.0,
                    train_epochs: 0,
                    epoch_secs: None,
                    epoch_device: None,
                    rgn: rgn.clone(),
                    variant: variant.as_deref().cloned(),
                    peak_memory_bytes: None,
                };
                add_cost(&mut result, out, runs)?;
                write_json(&out.join(&job.outputs[0]), &Evaluation { result })?;
            }
            JobKind::Blackbox { model, member } => {
                let (m, _) = Model::load(&out.join(model), device)?;
                let m = match member {
                    Some(i) => m.member(*i)?,
                    None => m,
                };
                let files = transfer_files(&out.join("transfer"))?;
                let bb = transfer_eval(&Target::fixed_zero(&m), &files, 500, device)?;
                let accuracy = p
                    .eps_blackbox
                    .iter()
                    .map(|e| {
                        bb.accuracy(*e).ok_or_else(|| {
                            Error::config(format!("the transfer set has no eps {e}"))
                        })
                    })
                    .collect::<Result<_>>()?;
                write_json(&out.join(&job.outputs[0]), &Blackbox { accuracy })?;
            }
            JobKind::Transferability { name, model } => {
                let (m, _) = Model::load(&out.join(model), device)?;
                let parts = members(&m, name, p.members.max(3), seed)?;
                let targets: Vec<(String, Target)> =
                    parts.iter().map(|(n, m)| (n.clone(), Target::fixed_zero(m))).collect();
                let named: Vec<Named> = targets
                    .iter()
                    .map(|(n, t)| Named::new(n.clone(), t as &dyn crate::model::Classifier))
                    .collect();
                let cfg = TransferabilityConfig {
                    images: p.transferability_images,
                    attack: p.whitebox().attack,
                    ..TransferabilityConfig::default()
                };
                let rep = transferability(&named, None, &eval_set, &cfg, device, seed)?;
                let res = MatrixResult {
                    name: name.clone(),
                    labels: rep.members.clone(),
                    eps: cfg.eps,
                    success: rep.success.clone(),
                };
                write_json(&out.join(&job.outputs[0]), &res)?;
            }
            JobKind::Stability { rgn } => {
                let cfg = super::stability::StabilityConfig {
                    paths: p.stability_paths,
                    seed: p.seed,
                    test_per_class: p.eval_per_class,
                    whitebox: p.whitebox(),
                    references: Vec::new(),
                };
                super::stability::stability(
                    &out.join(rgn),
                    &cfg,
                    None,
                    &data.test,
                    &out.join("stability"),
                    device,
                )?;
            }
        }
        eprintln!("{}: {:.1}s", job.name, t0.elapsed().as_secs_f64());
    }
    report(plan, out, command)
}

/// Writes `summary.json`, the report and the RobustBench cards from the jobs of `plan` done so
/// far in `out` (a finished run's, or a running one's partial results: it only reads the jobs'
/// files), and returns the summary.
pub fn report(plan: &Plan, out: &Path, command: &str) -> Result<Summary> {
    plan.check_folder(out)?;
    let summary = summarise(plan, out, command)?;
    // Writes summary.json beside the page and its CSVs.
    let html = crate::report::write(&summary, out)?;
    eprintln!("report: {}", html.display());
    for m in summary.models.iter().filter(|m| m.members == 1 && m.selected.is_none()) {
        let key = m.file.trim_start_matches("runs/").trim_start_matches("models/");
        let key = key.trim_end_matches(".safetensors").trim_end_matches("/model");
        write_json(
            &out.join("robustbench").join(format!("{key}.json")),
            &robustbench(&summary, m),
        )?;
    }
    Ok(summary)
}

/// A single model's result in RobustBench's model-card format (`model_info/cifar10/Linf/*.json`
/// of RobustBench), so it can be set beside the leaderboard. eio's robust accuracy is PGD's (the
/// preset's white-box attack at eps 8/255 when evaluated there, else the largest eps), not
/// AutoAttack's: `autoattack_acc` stays empty and `footnote` names the attack.
pub fn robustbench(summary: &Summary, m: &ModelResult) -> serde_json::Value {
    let target = 8.0 / 255.0;
    let k = summary
        .eps_whitebox
        .iter()
        .position(|e| (e - target).abs() < 1e-4)
        .unwrap_or(summary.eps_whitebox.len().saturating_sub(1));
    let robust = m.whitebox.get(k).copied();
    let eps = summary.eps_whitebox.get(k).copied();
    serde_json::json!({
        "name": m.name,
        "link": "",
        "authors": "",
        "additional_data": false,
        "number_forward_passes": 1,
        "dataset": "cifar10",
        "venue": "",
        "architecture": "ResNet-20",
        "threat_model": "Linf",
        "eps": eps.map(|e| format!("{e}")),
        "clean_acc": format!("{:.2}", 100.0 * m.clean),
        "reported": "",
        "autoattack_acc": null,
        "robust_acc": robust.map(|r| format!("{:.2}", 100.0 * r)),
        "footnote": format!(
            "eio {} preset '{}', seed {}: {} on the first {} test images; robust_acc is not AutoAttack",
            summary.git, summary.preset, summary.seed, summary.whitebox_attack, summary.images
        ),
    })
}

/// The summary of what the jobs of `plan` have written in `out` so far.
pub fn summarise(plan: &Plan, out: &Path, command: &str) -> Result<Summary> {
    let p = &plan.preset;
    let mut s = Summary {
        preset: p.name.clone(),
        seed: p.seed,
        git: git_rev().into(),
        command: command.into(),
        images: 10 * p.eval_per_class,
        eps_whitebox: p.eps_whitebox.clone(),
        eps_blackbox: p.eps_blackbox.clone(),
        whitebox_attack: p.whitebox().describe(),
        blackbox_protocol: format!(
            "transfer from baseline ensembles of {:?} ResNet-20s: momentum PGD (3 starts), M-DI2-FGSM, SGM, each with CE and CW, {} steps of eps/5; robust = correct on every version",
            p.surrogates, p.transfer_steps
        ),
        ..Summary::default()
    };
    let loaded = out.join("loaded.json");
    if loaded.exists() {
        let all: BTreeMap<String, String> = read_json(&loaded)?;
        s.loaded = all.into_iter().map(|(job, from)| format!("{job} ({from})")).collect();
    }
    let mut curves: BTreeMap<String, Curve> = BTreeMap::new();
    for job in &plan.jobs {
        let path = out.join(&job.outputs[0]);
        match &job.kind {
            JobKind::Evaluate { runs, .. } if path.exists() => {
                let mut result = read_json::<Evaluation>(&path)?.result;
                // From the runs' records as they are now (a history repaired since counts),
                // where they are here (a published folder may hold the results alone).
                if runs.iter().all(|r| out.join("runs").join(r).join("history.json").exists()) {
                    add_cost(&mut result, out, runs)?;
                }
                let bb = out.join(blackbox_output(job.name.trim_start_matches("eval/")));
                if bb.exists() {
                    result.blackbox = read_json::<Blackbox>(&bb)?.accuracy;
                }
                s.models.push(result);
            }
            JobKind::Transferability { .. } if path.exists() => {
                s.transferability.push(read_json(&path)?);
            }
            JobKind::Stability { .. } if path.exists() => {
                let rep: super::stability::StabilityReport = read_json(&path)?;
                s.stability = Some(StabilityResult {
                    eps: rep.eps.clone(),
                    paths: rep
                        .rows
                        .iter()
                        .filter(|r| r.route.is_some())
                        .map(|r| (r.clean, r.robust.clone()))
                        .collect(),
                });
            }
            JobKind::Train { spec, .. } => {
                let h = out.join(&job.outputs[1]);
                if h.exists() {
                    let name = job.name.trim_start_matches("train/").to_string();
                    curves.insert(
                        name.clone(),
                        Curve { name, method: spec.method.name().into(), epochs: read_json(&h)? },
                    );
                }
            }
            _ => {}
        }
    }
    s.training = curves.into_values().collect();
    Ok(s)
}

/// The folder a preset's reproduction is committed under.
pub fn results_dir(preset: &str) -> PathBuf {
    PathBuf::from(format!("results/reproduce-{preset}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// plan.toml reads back as the plan it was written from (job names and display names
    /// included).
    #[test]
    fn plan_file_round_trips() {
        for name in ["smoke", "cpu", "paper"] {
            let plan = Plan::new(Preset::named(name).unwrap());
            let text = toml::to_string(&plan).unwrap();
            let back: Plan = toml::from_str(&text).unwrap();
            assert_eq!(back, plan, "{name}");
        }
    }

    /// The paper preset holds the studies: Table 2's n = 3 on its own warm-up, Fig. 5's p and
    /// derived ensembles, Fig. 6's eps_d, EIO(top-k), and ensembles of 5 and 8 for every
    /// ensemble arm (DVERGE from the baseline of its size); job names are unique.
    #[test]
    fn the_paper_preset_plans_its_studies() {
        let plan = Plan::new(Preset::named("paper").unwrap());
        let names = plan.names();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "job names are unique");
        let job = |n: &str| {
            plan.jobs.iter().find(|j| j.name == n).unwrap_or_else(|| panic!("no job {n}"))
        };
        for n in [
            "train/rgn-warmup-n3",
            "train/eio-n3",
            "eval/eio-n3-sub3-finetune",
            "train/eio-p2",
            "eval/eio-p4-sub3-finetune",
            "eval/eio-epsd0.05-finetune",
            "train/rgn-warmup-top7",
            "eval/eio-top14-finetune",
            "eval/eio-sub3-finetune",
            "eval/trs-n8-member0",
            "eval/gal-n5",
        ] {
            job(n);
        }
        match &job("derive/eio-p4-sub3").kind {
            JobKind::Derive { rgn, paths, .. } => {
                assert_eq!((rgn.as_str(), *paths), ("runs/eio-p4/model.safetensors", 3))
            }
            k => panic!("{k:?}"),
        }
        // The paper's choice with three derived models shares the default arm's training.
        match &job("derive/eio-sub3").kind {
            JobKind::Derive { rgn, .. } => assert_eq!(rgn, "runs/eio/model.safetensors"),
            k => panic!("{k:?}"),
        }
        match &job("train/eio-epsd0.05").kind {
            JobKind::Train { spec, init } => {
                let MethodConfig::Eio(c) = &spec.method else { panic!() };
                assert_eq!((c.distill.eps, c.distill.step_size, c.paths), (0.05, 0.005, 3));
                assert_eq!(init.as_deref(), Some("runs/rgn-warmup/model.safetensors"));
            }
            k => panic!("{k:?}"),
        }
        match &job("train/eio-n3").kind {
            JobKind::Train { spec, init } => {
                assert_eq!(spec.arch.copies, 3);
                assert_eq!(init.as_deref(), Some("runs/rgn-warmup-n3/model.safetensors"));
            }
            k => panic!("{k:?}"),
        }
        match &job("train/dverge-n8").kind {
            JobKind::Train { spec, init } => {
                assert_eq!(spec.members, 8);
                assert_eq!(init.as_deref(), Some("runs/baseline-n8/model.safetensors"));
            }
            k => panic!("{k:?}"),
        }
        // Without studies a preset's plan is what it was (the cpu preset's run folders).
        let cpu = Plan::new(Preset::named("cpu").unwrap());
        assert!(!cpu.names().iter().any(|n| n.contains("-n5") || n.contains("-p2")));
        assert!(!toml::to_string(&cpu).unwrap().contains("eio_variants"));
    }

    #[test]
    fn variants_are_named_by_what_differs() {
        let v = EioVariant::paper;
        assert_eq!((v().key(), v().label()), ("eio".to_string(), "EIO/1".to_string()));
        let w = v().with(|v| {
            v.copies = 3;
            v.paths = 2;
            v.sub_models = 3;
        });
        assert_eq!((w.train_key(), w.key()), ("eio-n3-p2".into(), "eio-n3-p2-sub3".into()));
        assert_eq!(w.label(), "EIO(n=3, p=2)/3");
        let t = v().with(|v| v.augment = crate::model::Augment::Top(7));
        assert_eq!((t.key(), t.label()), ("eio-top7".into(), "EIO(top7)/1".into()));
        assert!(v().with(|v| v.copies = 1).validate().is_err());
        let tiny = v().with(|v| v.augment = crate::model::Augment::Top(1));
        assert!(tiny.clone().with(|v| v.sub_models = 2).validate().is_ok());
        assert!(tiny.with(|v| v.sub_models = 3).validate().is_err());
        let mut p = Preset::named("smoke").unwrap();
        p.more_members = vec![p.members];
        assert!(p.validate().is_err());
    }

    /// `only` orders the jobs it names, never before what they need; the rest follow in plan
    /// order.
    #[test]
    fn only_orders_the_jobs_it_names() {
        let plan = Plan::new(Preset::named("smoke").unwrap());
        let k = |name: &str| plan.jobs.iter().position(|j| j.name == name).unwrap();
        assert_eq!(plan.order(&[]), (0..plan.jobs.len()).collect::<Vec<_>>());
        let only: Vec<String> = ["eval/adp", "train/adp", "train/dverge"].map(String::from).into();
        let order = plan.order(&only);
        assert_eq!(order[..3], [k("train/adp"), k("eval/adp"), k("train/dverge")]);
        let mut all = order.clone();
        all.sort();
        assert_eq!(all, (0..plan.jobs.len()).collect::<Vec<_>>());
        assert!(order[3..].windows(2).all(|w| w[0] < w[1]));
    }

    /// A job is needed while something that reads its files is still to run.
    #[test]
    fn jobs_whose_readers_are_done_are_not_needed() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(Preset::named("smoke").unwrap());
        assert!(plan.needed(dir.path()).iter().all(|&n| n));
        let finals: Vec<&Job> = plan
            .jobs
            .iter()
            .enumerate()
            .filter(|&(k, _)| (0..plan.jobs.len()).all(|r| !plan.dependencies(r).contains(&k)))
            .map(|(_, j)| j)
            .collect();
        assert!(finals.iter().any(|j| j.name == "eval/adp") && finals.len() > 5);
        for j in &finals {
            for o in &j.outputs {
                let f = dir.path().join(o);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, b"").unwrap();
            }
        }
        assert!(plan.needed(dir.path()).iter().all(|&n| !n));
        std::fs::remove_file(dir.path().join("eval/adp.json")).unwrap();
        let needed = plan.needed(dir.path());
        let is = |name: &str| needed[plan.jobs.iter().position(|j| j.name == name).unwrap()];
        assert!(is("eval/adp") && is("train/adp") && !is("transfer-gen"));
        std::fs::write(dir.path().join("eval/adp.json"), b"").unwrap();
        std::fs::remove_file(dir.path().join("eval/adp-blackbox.json")).unwrap();
        let needed = plan.needed(dir.path());
        let is = |name: &str| needed[plan.jobs.iter().position(|j| j.name == name).unwrap()];
        assert!(is("blackbox/adp") && is("transfer-gen") && !is("eval/adp"));
        assert!(!is("train/eio") && !is("eval/baseline"));
    }

    /// Every file a job reads is written by an earlier job of the plan, for every preset: the
    /// plan's order is one the jobs can run in, and [`Plan::dependencies`] sees every input.
    #[test]
    fn every_input_is_an_earlier_jobs_output() {
        for name in ["smoke", "demo", "cpu", "gpu", "paper"] {
            let plan = Plan::new(Preset::named(name).unwrap());
            for (k, job) in plan.jobs.iter().enumerate() {
                for input in job.inputs() {
                    let by: Vec<usize> = (0..plan.jobs.len())
                        .filter(|&i| plan.jobs[i].outputs.contains(&input))
                        .collect();
                    assert_eq!(
                        by.len(),
                        1,
                        "{name}: {} reads {input}, written by {by:?}",
                        job.name
                    );
                    assert!(by[0] < k, "{name}: {} runs before {input} is written", job.name);
                    assert!(plan.dependencies(k).contains(&by[0]));
                }
                let deps = plan.dependencies(k);
                assert!(deps.iter().all(|&d| d < k), "{name}: {} {deps:?}", job.name);
                // White-box results never wait for the transfer set; black-box ones do.
                let waits = deps.iter().any(|&d| plan.jobs[d].name == "transfer-gen");
                match job.kind {
                    JobKind::Evaluate { .. } => assert!(!waits, "{name}: {}", job.name),
                    JobKind::Blackbox { .. } => assert!(waits, "{name}: {}", job.name),
                    _ => {}
                }
            }
        }
    }
}
