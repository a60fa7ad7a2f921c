/*!
The paper's comparison in one resumable command (`eio reproduce --preset NAME --out DIR`): run
the [`Plan`] of a [`Preset`](super::preset::Preset) in `DIR`: train every arm the preset lists,
derive and fine-tune the EIO model, craft the black-box transfer set once from baseline
surrogate ensembles, evaluate every model (clean and white-box, then black-box on the transfer
set as a job of its own, so that white-box results do not wait for the transfer set; whole
ensembles and one selected member, as the paper's Fig. 9), transferability matrices and the
stability of derived paths, then write `summary.json` (see [`super::summary`]) and the report.

A job whose outputs exist is skipped, so a rerun continues where it stopped (training runs also
resume inside an epoch from their checkpoints, white-box evaluations from their last restart).
`only` runs a subset of the jobs by name, so a plan can be spread over machines and the folders
merged ([`load_from`]): every job's result is a file under `DIR`.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Device;

use super::plan::{blackbox_output, JobKind, Plan};
use super::summary::{epoch_cost, Curve, MatrixResult, ModelResult, StabilityResult, Summary};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::transfer::{transfer_eval, transfer_files, transfer_gen, Named};
use crate::eval::transferability::{eligible, members, transferability_on, TransferabilityConfig};
use crate::eval::whitebox::whitebox_resumable;
use crate::fsx::{read_json, write_json};
use crate::model::io::{write_atomic, TensorFile};
use crate::model::{Model, Route, Target};
use crate::seed::{Seed, Stream};
use crate::train::{fit, git_rev, EpochRecord, RunDir};

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
    let selected = plan.selected(only);
    let mut loaded = Vec::new();
    for job in plan.jobs.iter().zip(&selected).filter_map(|(j, &s)| s.then_some(j)) {
        if matches!(job.kind, JobKind::TransferGen { .. }) || job.is_done(out) || !job.is_done(from)
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
    plan.claim_folder(out)?;
    let p = &plan.preset;
    let eval_set = data.test.first_per_class(p.eval_per_class);
    let test = data.test.first_per_class(p.test_per_class);
    let seed = Seed(p.seed);
    let needed = plan.needed_for(out, only);
    let selected = plan.selected(only);
    for k in plan.order(only).into_iter().filter(|&k| selected[k]) {
        let job = &plan.jobs[k];
        if job.is_done(out) {
            eprintln!("[{}/{}] {}: done", k + 1, plan.jobs.len(), job.name);
            continue;
        }
        if !needed[k] {
            let of = if only.is_empty() { "" } else { " of --only" };
            eprintln!(
                "[{}/{}] {}: not needed (every job{of} that reads its files is done)",
                k + 1,
                plan.jobs.len(),
                job.name
            );
            continue;
        }
        if let Some(d) = plan.dependencies(k).into_iter().find(|&d| !plan.jobs[d].is_done(out)) {
            return Err(Error::config(format!(
                "{}: needs {}, which is not done (add it to --only)",
                job.name, plan.jobs[d].name
            )));
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
                // Without an image every member gets right there is no matrix (an empty one in
                // the summary, which the report says), rather than a failed reproduction.
                let index = eligible(&named, &eval_set, cfg.batch, device)?;
                let success = if index.is_empty() {
                    eprintln!(
                        "warning: {}: no evaluation image is classified correctly by every \
                         member: no matrix",
                        job.name
                    );
                    Vec::new()
                } else {
                    transferability_on(&named, None, &eval_set, index, &cfg, device, seed)?.success
                };
                let res = MatrixResult {
                    name: name.clone(),
                    labels: named.iter().map(|m| m.name.clone()).collect(),
                    eps: cfg.eps,
                    success,
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
                    false,
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
