//! `eio reproduce` (issue 9): the smoke preset end to end, resume, --only, the summary's
//! numbers are the evaluation files' numbers.

use eio::pipeline::plan::Plan;
use eio::pipeline::preset::Preset;
use eio::pipeline::reproduce::{Blackbox, Evaluation};
use eio::pipeline::summary::Summary;

use crate::util::{assert_user_error, eio, tempdir};

#[test]
fn smoke_preset_runs_resumes_and_summarises() {
    let dir = tempdir();
    let out = dir.path().join("r");
    let out_s = out.to_str().unwrap();
    // One thread, so that --workers below (each job its own process) computes with the same.
    let (ok, stdout, err) =
        eio(&["--threads", "1", "reproduce", "--preset", "smoke", "--out", out_s]);
    assert!(ok, "{err}");
    assert!(stdout.contains("EIO (derived, fine-tuned)") && stdout.contains("DVERGE (1 of 2)"));
    // It ends with the path of the report.
    let report = out.join("report.html");
    assert!(stdout.trim_end().lines().last().unwrap().contains(report.to_str().unwrap()));
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.preset, "smoke");
    // 8 of the arms, 6 of the second ensemble size (3), 1 EIO variant.
    assert_eq!(summary.models.len(), 15, "{:?}", summary.models);
    assert!(summary.models.iter().any(|m| m.name == "DVERGE (ensemble of 3)" && m.members == 3));
    // The variant (p = 2) trained on its own and deployed as an ensemble of 2 derived paths.
    let variant = summary.models.iter().find(|m| m.variant.is_some()).expect("the EIO variant");
    assert_eq!((variant.name.as_str(), variant.members), ("EIO(p=2)/2 (derived, fine-tuned)", 2));
    let cfg = std::fs::read_to_string(out.join("runs/eio-p2/config.toml")).unwrap();
    assert!(cfg.contains("paths = 2"), "{cfg}");
    for m in &summary.models {
        assert_eq!(m.whitebox.len(), 2);
        assert_eq!(m.blackbox.len(), 1);
        for v in std::iter::once(m.clean)
            .chain(m.whitebox.iter().copied())
            .chain(m.blackbox.iter().copied())
        {
            assert!((0.0..=1.0).contains(&v), "{}: {v}", m.name);
        }
        assert!(m.train_secs > 0.0 && m.train_epochs > 0, "{}", m.name);
        let per_epoch = m.epoch_secs.expect("recorded");
        // Linux reports a resident set: at least libtorch's and the data set's 100 MB.
        #[cfg(target_os = "linux")]
        assert!(m.peak_memory_bytes.expect("measured") > 100 << 20, "{}", m.name);
        assert!(per_epoch > 0.0 && per_epoch <= m.train_secs, "{}", m.name);
    }
    // DVERGE's cost per epoch is that of its diversification, not of the baseline it starts from.
    let history: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/dverge/history.json")).unwrap(),
    )
    .unwrap();
    let own = history.iter().map(|e| e["train_secs"].as_f64().unwrap()).sum::<f64>()
        / history.len() as f64;
    let dverge = summary.models.iter().find(|m| m.name == "DVERGE (ensemble of 2)").unwrap();
    assert_eq!(dverge.epoch_secs, Some(own));
    // The summary holds exactly what the evaluation jobs wrote: the white-box job's row with the
    // black-box job's accuracies.
    let mut eio_ft: Evaluation =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/eio-finetune.json")).unwrap())
            .unwrap();
    assert!(eio_ft.result.blackbox.is_empty());
    let bb: Blackbox = serde_json::from_str(
        &std::fs::read_to_string(out.join("eval/eio-finetune-blackbox.json")).unwrap(),
    )
    .unwrap();
    eio_ft.result.blackbox = bb.accuracy;
    assert!(summary.models.contains(&eio_ft.result));
    assert_eq!(summary.transferability.len(), 3);
    assert_eq!(summary.stability.as_ref().map(|s| s.paths.len()), Some(2));
    assert!(summary.training.iter().any(|c| c.method == "eio" && !c.epochs.is_empty()));
    assert!(out.join("robustbench/eio-finetune.json").exists());
    // The report is made from this summary.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 4, "figures missing");
    assert!(html.contains(&eio::report::pct(eio_ft.result.clean)));
    // A rerun finds every job done and changes nothing.
    let before = std::fs::read(out.join("eval/eio-finetune.json")).unwrap();
    let (ok, _, err) = eio(&["reproduce", "--preset", "smoke", "--out", out_s]);
    assert!(ok, "{err}");
    assert!(
        !err.contains("train/")
            || err.lines().filter(|l| l.contains("train/")).all(|l| l.ends_with(": done")),
        "{err}"
    );
    assert_eq!(before, std::fs::read(out.join("eval/eio-finetune.json")).unwrap());
    // --list ends with the count of jobs in each state.
    let (ok, stdout, err) = eio(&["reproduce", "--preset", "smoke", "--out", out_s, "--list"]);
    let n = Plan::new(Preset::named("smoke").unwrap()).jobs.len();
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(ok && last == format!("{n} jobs: {n} done, 0 to do, 0 not needed"), "{err}{stdout}");
    // --report rewrites the summary from the jobs' files alone: the same models, nothing run.
    std::fs::remove_file(out.join("summary.json")).unwrap();
    let (ok, stdout, err) = eio(&["reproduce", "--preset", "smoke", "--out", out_s, "--report"]);
    assert!(ok && !err.contains("started") && stdout.contains("report:"), "{err}");
    let again: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(again.models, summary.models);
    assert_user_error(
        &["reproduce", "--preset", "smoke", "--out", "/no/such/run", "--report"],
        "no plan.toml",
    );
    // --only runs a subset; unknown job names and presets are refused.
    std::fs::remove_file(out.join("eval/adp.json")).unwrap();
    let (ok, _, err) =
        eio(&["reproduce", "--preset", "smoke", "--out", out_s, "--only", "eval/adp"]);
    assert!(ok && out.join("eval/adp.json").exists(), "{err}");
    assert_user_error(
        &["reproduce", "--preset", "smoke", "--out", out_s, "--only", "train/x"],
        "no such job",
    );
    assert_user_error(&["reproduce", "--preset", "huge", "--out", out_s], "unknown preset");
    // A folder of another preset, or of this one with other sizes, is not taken for this one's.
    assert_user_error(
        &["reproduce", "--preset", "demo", "--out", out_s, "--list"],
        "holds a reproduction of preset 'smoke', not 'demo'",
    );
    let plan = std::fs::read_to_string(out.join("plan.toml")).unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("plan.toml"), plan.replacen("seed = ", "seed = 9", 1)).unwrap();
    let other_s = other.to_str().unwrap();
    assert_user_error(&["reproduce", "--preset", "smoke", "--out", other_s], "other sizes");
    assert_user_error(
        &["reproduce", "--preset", "smoke", "--out", other_s, "--report"],
        "other sizes",
    );

    // --from: jobs whose outputs a folder holds are loaded from it, not run, and evaluate to
    // the same numbers. The white-box evaluation runs without the transfer set, the black-box
    // one after it.
    let zoo = dir.path().join("zoo");
    for run in ["baseline", "surrogate2"] {
        std::fs::create_dir_all(zoo.join("runs").join(run)).unwrap();
        for f in ["model.safetensors", "history.json"] {
            std::fs::copy(out.join("runs").join(run).join(f), zoo.join("runs").join(run).join(f))
                .unwrap();
        }
    }
    let loaded = dir.path().join("loaded");
    let (loaded_s, zoo_s) = (loaded.to_str().unwrap(), zoo.to_str().unwrap());
    let from_zoo = |only: &str| {
        let args = ["--threads", "1", "reproduce", "--preset", "smoke", "--out", loaded_s];
        eio(&[&args[..], &["--from", zoo_s, "--only", only]].concat())
    };
    let (ok, _, err) = from_zoo("train/baseline,train/surrogate2,eval/baseline");
    assert!(ok, "{err}");
    assert!(
        err.contains("loaded from") && err.contains("train/baseline, train/surrogate2"),
        "{err}"
    );
    assert!(!loaded.join("runs/baseline/train.log").exists(), "trained instead of loaded");
    assert!(loaded.join("eval/baseline.json").exists() && !loaded.join("transfer").exists());
    let (ok, _, err) = from_zoo("transfer-gen,blackbox/baseline");
    assert!(ok, "{err}");
    let s: Summary =
        serde_json::from_str(&std::fs::read_to_string(loaded.join("summary.json")).unwrap())
            .unwrap();
    assert!(s.loaded.iter().any(|l| l.starts_with("train/baseline (")), "{:?}", s.loaded);
    let html = std::fs::read_to_string(loaded.join("report.html")).unwrap();
    assert!(html.contains("loaded, not computed here"));
    let eval = |d: &std::path::Path| -> Evaluation {
        serde_json::from_str(&std::fs::read_to_string(d.join("eval/baseline.json")).unwrap())
            .unwrap()
    };
    let (a, b) = (eval(&out).result, eval(&loaded).result);
    assert_eq!((a.clean, &a.whitebox), (b.clean, &b.whitebox));
    let bb = |d: &std::path::Path| {
        std::fs::read_to_string(d.join("eval/baseline-blackbox.json")).unwrap()
    };
    assert_eq!(bb(&out), bb(&loaded));
    assert!(s.models.iter().any(|m| m.name == a.name && m.blackbox.len() == 1));
    assert_user_error(
        &["reproduce", "--preset", "smoke", "--out", out_s, "--from", "/no/such/zoo"],
        "--from /no/such/zoo",
    );

    // A folder that kept an evaluation without its model (scripts/experiment-baselines keeps
    // evaluations in git, ensembles' model files not): on a fresh folder the evaluation is
    // loaded and the training only it needed within --only is not run again, with or without
    // workers.
    let kept = dir.path().join("kept");
    std::fs::create_dir_all(kept.join("eval")).unwrap();
    std::fs::copy(out.join("eval/adp.json"), kept.join("eval/adp.json")).unwrap();
    for (name, workers) in [("fresh", "1"), ("fresh-workers", "2")] {
        let fresh = dir.path().join(name);
        let args = ["reproduce", "--preset", "smoke", "--out", fresh.to_str().unwrap()];
        let more = ["--from", kept.to_str().unwrap(), "--only", "train/adp,eval/adp"];
        let (ok, _, err) = eio(&[&args[..], &more, &["--workers", workers]].concat());
        assert!(ok, "{err}");
        assert!(err.contains("not needed") || err.contains("nothing to run"), "{err}");
        assert!(!fresh.join("runs/adp").exists(), "trained what a loaded evaluation needed");
        let s: Summary =
            serde_json::from_str(&std::fs::read_to_string(fresh.join("summary.json")).unwrap())
                .unwrap();
        let b = s.models.iter().find(|m| m.name.contains("ADP")).expect("the loaded row");
        let a = summary.models.iter().find(|m| m.name == b.name).unwrap();
        assert_eq!((a.clean, &a.whitebox), (b.clean, &b.whitebox));
    }

    // The same plan with its jobs side by side, each in its own process: the same numbers.
    let side = dir.path().join("side");
    let side_s = side.to_str().unwrap();
    let args = ["--threads", "1", "reproduce", "--preset", "smoke", "--out", side_s];
    let (ok, _, err) = eio(&[&args[..], &["--workers", "3"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("running") && side.join("logs/train-baseline.log").exists(), "{err}");
    let side_summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(side.join("summary.json")).unwrap()).unwrap();
    assert_eq!(side_summary.models.len(), summary.models.len());
    for (a, b) in summary.models.iter().zip(&side_summary.models) {
        assert_eq!(
            (&a.name, a.clean, &a.whitebox, &a.blackbox),
            (&b.name, b.clean, &b.whitebox, &b.blackbox)
        );
    }
}

/// Workers end with the command that started them, also when it is killed with SIGKILL (a
/// timeout): none computes on unseen. (The demo preset's first jobs run for minutes, so a worker
/// that survived would be seen.) Meanwhile the folder is locked against a second reproduction;
/// the workers run under their parent's lock.
#[cfg(target_os = "linux")]
#[test]
fn killing_reproduce_kills_its_workers() {
    let dir = tempdir();
    let out = dir.path().join("r");
    let mut parent = std::process::Command::new(env!("CARGO_BIN_EXE_eio"))
        .args(["--threads", "1", "reproduce", "--preset", "demo", "--workers", "2", "--out"])
        .arg(&out)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Processes (other than the parent) whose command line names the run folder.
    let parent_pid = parent.id();
    let workers = || -> Vec<u32> {
        let needle = out.to_str().unwrap().as_bytes().to_vec();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != parent_pid)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle.as_slice()))
            })
            .collect()
    };
    let t0 = std::time::Instant::now();
    while workers().is_empty() {
        assert!(t0.elapsed().as_secs() < 60, "no worker started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // While it runs, a second reproduction of the folder is refused; looking at it is not.
    let out_s = out.to_str().unwrap();
    assert_user_error(&["reproduce", "--preset", "demo", "--out", out_s], "in use by another eio");
    let (ok, _, err) = eio(&["reproduce", "--preset", "demo", "--out", out_s, "--list"]);
    assert!(ok, "{err}");
    parent.kill().unwrap(); // SIGKILL
    parent.wait().unwrap();
    let t1 = std::time::Instant::now();
    while !workers().is_empty() {
        if t1.elapsed().as_secs() >= 10 {
            let left = workers();
            for pid in &left {
                let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            panic!("workers outlived the parent: {left:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Output into a closed pipe (`eio reproduce --list | head -1`) ends the command quietly.
#[cfg(target_os = "linux")]
#[test]
fn a_closed_pipe_is_no_panic() {
    let dir = tempdir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_eio"))
        .args(["reproduce", "--preset", "paper", "--list", "--out"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before eio writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}
