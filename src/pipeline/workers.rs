/*!
A [`Plan`]'s jobs side by side, each in a process of its own (`eio reproduce --workers N`).

A ResNet-20 at batch 128 keeps a GPU busy only between kernel launches (results/bench.md: 5 ms
per train step on an H100, most of it launch overhead), and a many-core CPU scales poorly past a
few threads per job; independent jobs side by side fill both. A job starts when the jobs that
write the files it reads ([`Plan::dependencies`]) are done, at most `workers` at a time, in plan
order. Each job's output is appended to `DIR/logs/<job>.log`. A failed job stops only the jobs
that need it; the others run to the end, and the error names every job that failed or could
not run.
What the caller runs for a job is its business (the CLI starts `eio reproduce --only JOB`), so
the numbers are those of a sequential run: each job computes from its own files and seed.
*/

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::plan::{Job, Plan};
use crate::error::{Error, Result};

/// How one job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Its outputs existed before the start.
    AlreadyDone,
    /// It ran and exited successfully, in this many seconds.
    Ran(f64),
    /// It ran and failed (exit status text).
    Failed(String),
    /// It could not run: why.
    NotRun(String),
    /// Nothing that reads its files is left to run ([`Plan::needed`]).
    NotNeeded,
}

/// The log of `job` under `out`.
pub fn log_path(out: &Path, job: &Job) -> PathBuf {
    out.join("logs").join(format!("{}.log", job.name.replace(['/', ' '], "-")))
}

/// The last line of `job`'s log under `out` and how long ago the log was written, when it has
/// one: where a job running (or stopped) in the background stands.
pub fn last_log_line(out: &Path, job: &Job) -> Option<(String, Duration)> {
    use std::io::{Read, Seek, SeekFrom};
    let path = log_path(out, job);
    let mut file = File::open(&path).ok()?;
    let meta = file.metadata().ok()?;
    // Progress lines are short: the end of the file holds the last one.
    file.seek(SeekFrom::Start(meta.len().saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let tail = String::from_utf8_lossy(&tail);
    let line = tail.split(['\n', '\r']).map(str::trim).rfind(|l| !l.is_empty())?;
    let age = meta.modified().ok()?.elapsed().unwrap_or_default();
    Some((line.to_string(), age))
}

/// Opens `log` for appending, after a line that marks this start: a job resumed after an
/// interruption keeps the log of its earlier runs.
fn open_log(log: &Path) -> std::io::Result<File> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let t = time::OffsetDateTime::now_utc();
    writeln!(
        file,
        "--- started {:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC ---",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )?;
    Ok(file)
}

enum State {
    /// Left out by `only`.
    Unselected,
    Pending,
    Running(Child, Instant),
    Ended(Outcome),
}

/// Runs the jobs of `plan` named in `only` (or all) that are not done, up to `workers` at a time,
/// each as soon as its inputs are done, in the order of [`Plan::order`], through
/// `spawn(job, log)` (a process writing to `log`). Returns each selected job's outcome, in plan
/// order, or an error naming the jobs that failed or could not run.
pub fn run_workers(
    plan: &Plan,
    out: &Path,
    only: &[String],
    workers: usize,
    spawn: &dyn Fn(&Job, File) -> std::io::Result<Child>,
) -> Result<Vec<(String, Outcome)>> {
    plan.check_only(only)?;
    let logs = out.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| Error::io(&logs, e))?;
    let selected = plan.selected(only);
    let needed = plan.needed_for(out, only);
    let deps: Vec<Vec<usize>> = (0..plan.jobs.len()).map(|k| plan.dependencies(k)).collect();
    let mut state: Vec<State> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(k, j)| {
            if !selected[k] {
                State::Unselected
            } else if j.is_done(out) {
                State::Ended(Outcome::AlreadyDone)
            } else if !needed[k] {
                State::Ended(Outcome::NotNeeded)
            } else {
                State::Pending
            }
        })
        .collect();
    let total = state.iter().filter(|s| matches!(s, State::Pending)).count();
    let order = plan.order(only);
    let (mut started, t0) = (0, Instant::now());
    loop {
        // Reap.
        for (k, s) in state.iter_mut().enumerate() {
            if let State::Running(child, t) = s {
                let status =
                    child.try_wait().map_err(|e| Error::io(log_path(out, &plan.jobs[k]), e))?;
                if let Some(status) = status {
                    let secs = t.elapsed().as_secs_f64();
                    let o = if status.success() {
                        eprintln!("{}: done in {secs:.0}s", plan.jobs[k].name);
                        Outcome::Ran(secs)
                    } else {
                        eprintln!(
                            "{}: failed ({status}) after {secs:.0}s; log {}",
                            plan.jobs[k].name,
                            log_path(out, &plan.jobs[k]).display()
                        );
                        Outcome::Failed(status.to_string())
                    };
                    *s = State::Ended(o);
                }
            }
        }
        // Start what can start, in the order of --only (else the plan's).
        let mut running = state.iter().filter(|s| matches!(s, State::Running(..))).count();
        for &k in &order {
            if !matches!(state[k], State::Pending) {
                continue;
            }
            let mut ready = true;
            let mut blocked = None;
            for &d in &deps[k] {
                let dep = &plan.jobs[d];
                match &state[d] {
                    // A job not needed has no reader left to run: never a dependency here.
                    State::Ended(Outcome::AlreadyDone | Outcome::Ran(_) | Outcome::NotNeeded) => {}
                    State::Ended(Outcome::Failed(_)) => {
                        blocked = Some(format!("needs {}, which failed", dep.name))
                    }
                    // Not selected but done (e.g. merged from another machine): fine.
                    State::Unselected if dep.is_done(out) => {}
                    State::Unselected => {
                        blocked = Some(format!(
                            "needs {}, which is not done (add it to --only)",
                            dep.name
                        ))
                    }
                    State::Ended(Outcome::NotRun(_)) => {
                        blocked = Some(format!("needs {}, which could not run", dep.name))
                    }
                    State::Pending | State::Running(..) => ready = false,
                }
            }
            if let Some(why) = blocked {
                eprintln!("{}: not run: {why}", plan.jobs[k].name);
                state[k] = State::Ended(Outcome::NotRun(why));
            } else if ready && running < workers {
                let job = &plan.jobs[k];
                let log = log_path(out, job);
                let file = open_log(&log).map_err(|e| Error::io(&log, e))?;
                let child = spawn(job, file).map_err(|e| Error::io(&log, e))?;
                started += 1;
                running += 1;
                eprintln!(
                    "[{started}/{total}] {} started ({running} running, {:.0}s elapsed); log {}",
                    job.name,
                    t0.elapsed().as_secs_f64(),
                    log.display()
                );
                state[k] = State::Running(child, Instant::now());
            }
        }
        if !state.iter().any(|s| matches!(s, State::Pending | State::Running(..))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ended: Vec<(&Job, Outcome)> = state
        .into_iter()
        .zip(&plan.jobs)
        .filter_map(|(s, job)| match s {
            State::Unselected => None,
            State::Ended(o) => Some((job, o)),
            _ => unreachable!("the loop ends when no job is pending or running"),
        })
        .collect();
    let bad: Vec<String> = ended
        .iter()
        .filter_map(|(job, o)| match o {
            Outcome::Failed(s) => {
                Some(format!("{} ({s}; log {})", job.name, log_path(out, job).display()))
            }
            Outcome::NotRun(why) => Some(format!("{} ({why})", job.name)),
            _ => None,
        })
        .collect();
    let outcomes: Vec<(String, Outcome)> =
        ended.into_iter().map(|(job, o)| (job.name.clone(), o)).collect();
    if bad.is_empty() {
        Ok(outcomes)
    } else {
        Err(Error::config(format!("{} job(s) did not finish: {}", bad.len(), bad.join("; "))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::preset::Preset;
    use std::process::{Command, Stdio};

    /// A stand-in for `eio reproduce --only JOB`: checks that the job's inputs exist, waits a
    /// little (so that jobs overlap) and writes its outputs; `fail` names a job that exits 3
    /// instead.
    fn fake(out: &Path, fail: &'static str) -> impl Fn(&Job, File) -> std::io::Result<Child> {
        let out = out.to_path_buf();
        move |job: &Job, log: File| {
            let mut script = format!("set -e\necho running {0}\necho {0} >> started\n", job.name);
            for i in job.inputs() {
                script += &format!("test -e '{i}' || {{ echo missing {i}; exit 2; }}\n");
            }
            if job.name == fail {
                script += "exit 3\n";
            }
            script += "sleep 0.3\n";
            for o in &job.outputs {
                script += &format!("mkdir -p \"$(dirname '{o}')\" && touch '{o}'\n");
            }
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&out)
                .stdout(log.try_clone()?)
                .stderr(Stdio::from(log))
                .spawn()
        }
    }

    #[test]
    fn jobs_start_after_their_inputs_and_run_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(Preset::named("smoke").unwrap());
        let t0 = Instant::now();
        let outcomes = run_workers(&plan, dir.path(), &[], 4, &fake(dir.path(), "")).unwrap();
        assert!(outcomes.iter().all(|(_, o)| matches!(o, Outcome::Ran(_))), "{outcomes:?}");
        assert!(plan.jobs.iter().all(|j| j.is_done(dir.path())));
        // One after the other they would take 0.3 s each.
        let one_by_one = 0.3 * plan.jobs.len() as f64;
        assert!(t0.elapsed().as_secs_f64() < 0.8 * one_by_one, "{:?}", t0.elapsed());
        // A rerun finds everything done and starts nothing.
        let again = run_workers(&plan, dir.path(), &[], 4, &fake(dir.path(), "")).unwrap();
        assert!(again.iter().all(|(_, o)| *o == Outcome::AlreadyDone));
    }

    /// Jobs start in the order --only names them (a job after those it needs).
    #[test]
    fn jobs_start_in_the_order_named() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(Preset::named("smoke").unwrap());
        let only: Vec<String> =
            ["train/adp", "eval/baseline", "train/baseline"].map(String::from).into();
        run_workers(&plan, dir.path(), &only, 1, &fake(dir.path(), "")).unwrap();
        let started = std::fs::read_to_string(dir.path().join("started")).unwrap();
        assert_eq!(started, "train/adp\ntrain/baseline\neval/baseline\n");
    }

    #[test]
    fn a_failed_job_stops_only_the_jobs_that_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::new(Preset::named("smoke").unwrap());
        let err = run_workers(&plan, dir.path(), &[], 3, &fake(dir.path(), "train/baseline"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("train/baseline (exit status: 3"), "{err}");
        assert!(err.contains("needs train/baseline, which failed"), "{err}");
        // Independent of the baseline: trained all the same.
        assert!(dir.path().join("runs/rgn-warmup/model.safetensors").exists());
        // The rerun appends to the failed job's log: both runs are in it, each after its mark.
        run_workers(&plan, dir.path(), &[], 3, &fake(dir.path(), "")).unwrap();
        let job = plan.jobs.iter().find(|j| j.name == "train/baseline").unwrap();
        let log = std::fs::read_to_string(log_path(dir.path(), job)).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 4, "{log}");
        for run in lines.chunks(2) {
            assert!(run[0].starts_with("--- started 20") && run[0].ends_with(" UTC ---"), "{log}");
            assert_eq!(run[1], "running train/baseline");
        }
        let (last, age) = last_log_line(dir.path(), job).unwrap();
        assert_eq!(last, "running train/baseline");
        assert!(age < Duration::from_secs(60), "{age:?}");
        // --only with a job whose input no selected job makes is refused for that job.
        let dir = tempfile::tempdir().unwrap();
        let only = vec!["train/eio".to_string()];
        let err = run_workers(&plan, dir.path(), &only, 2, &fake(dir.path(), ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs train/rgn-warmup, which is not done (add it to --only)"),
            "{err}"
        );
    }
}
