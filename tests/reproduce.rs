//! `eio reproduce` (issue 9): the smoke preset end to end, resume, --only, the summary's
//! numbers are the evaluation files' numbers.

use eio::pipeline::reproduce::Evaluation;
use eio::pipeline::summary::Summary;

use crate::util::{assert_user_error, eio, tempdir};

#[test]
fn smoke_preset_runs_resumes_and_summarises() {
    let dir = tempdir();
    let out = dir.path().join("r");
    let out_s = out.to_str().unwrap();
    let (ok, stdout, err) = eio(&["reproduce", "--preset", "smoke", "--out", out_s]);
    assert!(ok, "{err}");
    assert!(stdout.contains("EIO (derived, fine-tuned)") && stdout.contains("DVERGE (1 of 2)"));
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary.preset, "smoke");
    assert_eq!(summary.models.len(), 8, "{:?}", summary.models);
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
    }
    // The summary holds exactly what the evaluation jobs wrote.
    let eio_ft: Evaluation =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval/eio-finetune.json")).unwrap())
            .unwrap();
    assert!(summary.models.contains(&eio_ft.result));
    assert_eq!(summary.transferability.len(), 3);
    assert_eq!(summary.stability.as_ref().map(|s| s.paths.len()), Some(2));
    assert!(summary.training.iter().any(|c| c.method == "eio" && !c.epochs.is_empty()));
    assert!(out.join("robustbench/eio-finetune.json").exists());
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
}
