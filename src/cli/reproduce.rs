//! `eio reproduce`: the paper's comparison from one preset, resumable.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::DataArgs;
use eio::data::Split;
use eio::pipeline::plan::{JobState, Plan};
use eio::pipeline::preset::Preset;
use eio::pipeline::reproduce::{load_from, report, run, Data};
use eio::pipeline::summary::Summary;
use eio::pipeline::workers;

/// Set by `--workers` for its job processes: the folder whose lock the parent holds.
const WORKER_OF: &str = "EIO_REPRODUCE_WORKER_OF";

#[derive(Debug, Args)]
pub struct ReproduceArgs {
    /// Sizes: smoke (CI, seconds), demo (scripts/demo, minutes on 2 cores), cpu (results/eio-cpu
    /// scale, every arm, hours on 2 cores), gpu (about 10 minutes of one H100/H200), paper
    /// (the published 200+200 epochs).
    #[arg(long, value_name = "NAME")]
    preset: String,
    /// Output folder (plan.toml, runs/, models/, transfer/, eval/, summary.json, report).
    /// A rerun continues where the last one stopped; one reproduction runs in a folder at a
    /// time, and a folder of another preset is refused.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Run only these jobs (names as listed by --list), in the order named (a job never before
    /// one it needs: so the cheap jobs of a long run can go first); the others are left as they
    /// are and ask for nothing (a job whose readers among these are all done is skipped).
    #[arg(long, value_name = "JOB", value_delimiter = ',')]
    only: Vec<String>,
    /// First copy in, from this folder, the outputs of every job it holds whole (shipped
    /// checkpoints, another machine's results): those jobs count as done, and jobs that only
    /// they needed are skipped. The transfer set is always made here.
    #[arg(long, value_name = "DIR")]
    from: Option<PathBuf>,
    /// Print the plan's jobs, each done, to do or not needed in --out (with the last line of
    /// its log for a job begun by --workers) and how many are in each state, and exit.
    #[arg(long)]
    list: bool,
    /// Write summary.json and the report from the jobs done so far in --out, and exit: the
    /// partial results of a reproduction still running (it reads the jobs' files only).
    #[arg(long, conflicts_with_all = ["list", "only", "from"])]
    report: bool,
    /// Run up to N jobs side by side, each in its own eio process (logs in DIR/logs/), as soon
    /// as the jobs whose files it reads are done; the numbers are those of one job after the
    /// other. Pays on a GPU (a ResNet-20 at batch 128 leaves it idle between launches) and on
    /// many cores; each job gets cores / N threads unless --threads is given.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = super::positive)]
    workers: usize,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run_cmd(a: ReproduceArgs) -> Result<()> {
    let plan = Plan::new(Preset::named(&a.preset)?);
    plan.check_folder(&a.out)?;
    if a.list {
        let states = plan.states(&a.out);
        for (j, &state) in plan.jobs.iter().zip(&states) {
            println!("{:<28} {:<10} -> {}", j.name, state.label(), j.outputs.join(", "));
            if let (JobState::ToDo, Some((line, age))) = (state, workers::last_log_line(&a.out, j))
            {
                println!(
                    "{:<28} log, {} ago: {line}",
                    "",
                    eio::report::duration(age.as_secs_f64())
                );
            }
        }
        let count = |s: JobState| states.iter().filter(|&&t| t == s).count();
        println!(
            "{} jobs: {} done, {} to do, {} not needed",
            states.len(),
            count(JobState::Done),
            count(JobState::ToDo),
            count(JobState::NotNeeded)
        );
        return Ok(());
    }
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    if a.report {
        if !a.out.join("plan.toml").exists() {
            anyhow::bail!("--out {}: no reproduction there (no plan.toml)", a.out.display());
        }
        let summary = report(&plan, &a.out, &command)?;
        return print_summary(&summary, &a.out);
    }
    // One reproduction per folder at a time (its jobs' files would be written twice); a job
    // of a --workers run works under its parent's lock.
    let _lock = match std::env::var_os(WORKER_OF) {
        Some(dir) if Path::new(&dir) == a.out => None,
        _ => Some(eio::fsx::RunLock::acquire(&a.out)?),
    };
    let device = super::device()?;
    if _lock.is_some() {
        plan.claim_folder(&a.out)?;
    }
    if let Some(from) = &a.from {
        let loaded = load_from(&plan, from, &a.out, &a.only)?;
        if loaded.is_empty() {
            eprintln!(
                "warning: --from {}: nothing loaded (no finished job there that is not done here)",
                from.display()
            );
        } else {
            eprintln!("loaded from {}: {}", from.display(), loaded.join(", "));
        }
    }
    if a.workers > 1 {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let child = child_args(&args, a.workers);
        let exe = std::env::current_exe()?;
        workers::run_workers(&plan, &a.out, &a.only, a.workers, &|job, log| {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(&child).args(["--only", &job.name]).stdout(log.try_clone()?).stderr(log);
            cmd.env(WORKER_OF, &a.out);
            die_with_parent(&mut cmd);
            cmd.spawn()
        })?;
    }
    let data =
        Data { train: a.data.load(Split::Train, None)?, test: a.data.load(Split::Test, None)? };
    let summary = run(&plan, &a.out, &a.only, &data, device, &command)?;
    print_summary(&summary, &a.out)
}

fn print_summary(summary: &Summary, out: &Path) -> Result<()> {
    println!("{}", summary.table());
    println!("summary: {}", out.join("summary.json").display());
    println!("report: {} (open it in a browser)", out.join(eio::report::HTML_FILE).display());
    Ok(())
}

/// Has the kernel kill the process `cmd` starts when this one ends, however it ends (a
/// timeout's SIGKILL included): workers never run on unseen.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls only the
    // async-signal-safe prctl, getppid and _exit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have ended before prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut std::process::Command) {}

/// The arguments of one job's process: this command's, less `--workers`, `--only` and `--from`
/// (done once, here), plus `--threads` (cores / workers) when not given. Every flag of
/// `eio reproduce` takes its value as the next argument or after `=`.
fn child_args(args: &[String], workers: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--workers" | "--only" | "--from" => {
                it.next();
            }
            _ if ["--workers=", "--only=", "--from="].iter().any(|p| a.starts_with(p)) => {}
            _ => out.push(a.clone()),
        }
    }
    if !out.iter().any(|a| a == "--threads" || a.starts_with("--threads=")) {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        out.push(format!("--threads={}", (cores / workers).max(1)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::child_args;

    #[test]
    fn child_args_drop_workers_and_only_and_share_the_cores() {
        let a = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            child_args(&a("reproduce --preset gpu --workers 4 --only a,b --out d --only=c"), 4)
                [..5],
            a("reproduce --preset gpu --out d")[..]
        );
        assert!(child_args(&a("--threads 2 reproduce --workers=3"), 3)
            .iter()
            .all(|x| !x.starts_with("--workers") && !x.starts_with("--threads=")));
        let t = child_args(&a("reproduce --workers 2"), 2);
        assert!(t.last().unwrap().starts_with("--threads="), "{t:?}");
    }
}
