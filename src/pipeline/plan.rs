/*!
The work of a reproduction: a [`Plan`] is a list of [`Job`]s made from a
[`super::preset::Preset`], each with the files it reads and writes, saved as `DIR/plan.toml`.
It knows each job's dependencies (the jobs that write what it reads), which jobs are still
needed in a folder, the order jobs start in ([`Plan::order`]), and refuses a folder that holds
another preset's reproduction. [`super::reproduce`] runs the jobs, [`super::workers`] runs them
side by side.
*/

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::preset::{Arm, Preset};
use super::studies::EioVariant;
use crate::distill::DistillConfig;
use crate::error::{Error, Result};
use crate::model::ArchConfig;
use crate::train::adv::AdvTerm;
use crate::train::dverge::DvergeConfig;
use crate::train::{MethodConfig, TrainSpec};

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
pub(super) fn blackbox_output(key: &str) -> String {
    format!("eval/{key}-blackbox.json")
}

pub(super) fn run_model(name: &str) -> String {
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
        let rank: Vec<Option<usize>> =
            self.jobs.iter().map(|j| only.iter().position(|o| *o == j.name)).collect();
        let mut wanted: Vec<usize> = (0..n).filter(|&k| rank[k].is_some()).collect();
        wanted.sort_by_key(|&k| rank[k]);
        let deps: Vec<Vec<usize>> = (0..n).map(|k| self.dependencies(k)).collect();
        let mut placed = vec![false; n];
        let mut order = Vec::with_capacity(n);
        // Each round places the first named job whose named dependencies are placed; one
        // always exists, since dependencies come earlier in the plan.
        while let Some(i) =
            wanted.iter().position(|&k| deps[k].iter().all(|&d| placed[d] || rank[d].is_none()))
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
    /// all done (for instance loaded with [`load_from`](super::reproduce::load_from)) is not
    /// needed.
    pub fn needed(&self, out: &Path) -> Vec<bool> {
        self.needed_for(out, &[])
    }

    /// Which jobs `only` names (every job when it is empty), by plan index: the scope of
    /// `--only` that running, loading and the workers share.
    pub fn selected(&self, only: &[String]) -> Vec<bool> {
        self.jobs.iter().map(|j| only.is_empty() || only.contains(&j.name)).collect()
    }

    /// [`Plan::needed`] within the jobs of `only` (all when empty), as `--only` runs them: the
    /// jobs left out neither run nor ask for anything, so a job of `only` is needed when it is
    /// not done and a job of `only` still to run reads its files, or when no job of `only`
    /// reads them (it was asked for itself). A training whose evaluations of `only` are all
    /// done (loaded from a folder that kept them without the model) is not run again.
    pub fn needed_for(&self, out: &Path, only: &[String]) -> Vec<bool> {
        let n = self.jobs.len();
        let deps: Vec<Vec<usize>> = (0..n).map(|k| self.dependencies(k)).collect();
        let in_scope = self.selected(only);
        let mut needed = vec![false; n];
        // Dependencies come earlier in the plan (every_input_is_an_earlier_jobs_output), so a
        // job's readers are decided before it.
        for k in (0..n).rev() {
            let readers: Vec<usize> =
                (k + 1..n).filter(|&r| in_scope[r] && deps[r].contains(&k)).collect();
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
        crate::fsx::check_folder_or_absent(out)?;
        if !file.exists() {
            // A folder of other files: a reproduction would write summary.json, report.html,
            // runs/ and eval/ among them.
            let stray = std::fs::read_dir(out)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name())
                .find(|name| name != ".lock");
            return match stray {
                Some(name) => Err(Error::config(format!(
                    "--out {}: holds {} but no reproduction (no plan.toml): use a new or empty \
                     folder",
                    out.display(),
                    name.to_string_lossy()
                ))),
                None => Ok(()),
            };
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

    /// Makes `out` this plan's folder: checks it ([`Plan::check_folder`]) and writes plan.toml
    /// (unless it holds this plan already), before anything else (loaded results, job workers)
    /// writes there.
    pub fn claim_folder(&self, out: &Path) -> Result<()> {
        self.check_folder(out)?;
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let text =
            toml::to_string(self).map_err(|e| Error::config(format!("internal: plan: {e}")))?;
        let file = out.join("plan.toml");
        // Claimed already (by the CLI before --from, or by this run's parent): nothing to write.
        if std::fs::read_to_string(&file).is_ok_and(|t| t == text) {
            return Ok(());
        }
        crate::model::io::write_atomic(&file, text.as_bytes())
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

    /// Within `--only`, the jobs left out ask for nothing: a training whose evaluations of
    /// `--only` are done is not needed though a black-box job outside reads its model, and a
    /// job of `--only` that nothing of `--only` reads is needed (asked for itself).
    #[test]
    fn only_scopes_what_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(Preset::named("smoke").unwrap());
        let pos = |name: &str| plan.jobs.iter().position(|j| j.name == name).unwrap();
        let only: Vec<String> = ["train/adp", "eval/adp"].map(String::from).into();
        assert!(plan.needed_for(dir.path(), &only)[pos("train/adp")]);
        std::fs::create_dir_all(dir.path().join("eval")).unwrap();
        std::fs::write(dir.path().join("eval/adp.json"), b"").unwrap();
        let (all, scoped) = (plan.needed(dir.path()), plan.needed_for(dir.path(), &only));
        assert!(all[pos("train/adp")], "blackbox/adp still reads it");
        assert!(!scoped[pos("train/adp")] && !scoped[pos("eval/adp")]);
        let alone = plan.needed_for(dir.path(), &["train/adp".to_string()]);
        assert!(alone[pos("train/adp")]);
        assert_eq!(plan.needed_for(dir.path(), &[]), all);
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
