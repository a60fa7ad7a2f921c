//! Issue 10: bad inputs, overwrites, crashes. One table of bad inputs (command, expected exit
//! code, expected words of the one error line), the run-folder rules (no overwrite without
//! --force, one process per folder, repair of a run that finished without its model), the NaN
//! stop, and kill -9 at several moments of a run followed by --resume, compared byte for byte
//! with an uninterrupted run. Every run uses a tiny copy of the data (fast start-up).

use std::path::{Path, PathBuf};
use std::process::Command;

use tch::Tensor;

use eio::model::io::TensorFile;

use crate::util::{cifar_jpeg, tempdir};

/// A copy of the first `train` / `test` images of each CIFAR-10 class (and, with `extra`, an
/// eleventh class folder).
fn tiny_data(dir: &Path, train: usize, test: usize, extra: bool) -> PathBuf {
    let src = cifar_jpeg();
    for (split, n) in [("train", train), ("test", test)] {
        let mut classes: Vec<_> = std::fs::read_dir(src.join(split))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        classes.sort();
        for c in &classes {
            let mut files: Vec<_> = std::fs::read_dir(src.join(split).join(c))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let to = dir.join(split).join(c);
            std::fs::create_dir_all(&to).unwrap();
            for f in files.iter().take(n) {
                std::fs::copy(f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
        if extra {
            let to = dir.join(split).join("zebra");
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(dir.join(split).join("cat/0000.jpg"), to.join("0000.jpg")).unwrap();
        }
    }
    dir.to_path_buf()
}

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_eio"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR")).env("OMP_NUM_THREADS", "1");
    c
}

/// Runs eio; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = cmd(args).output().expect("run eio");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, 0, "{args:?} failed: {err}");
    out + &err
}

/// Asserts exit code `code` and one `error: ` line holding every word of `words`, no panic.
fn expect_error(args: &[&str], code: i32, words: &[&str]) {
    let (got, _, err) = run(args);
    assert_eq!(got, code, "{args:?}: exit code {got}, expected {code}: {err}");
    assert!(!err.contains("panicked") && !err.contains("backtrace"), "{args:?} panicked: {err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: expected one 'error: ' line: {err}");
    for w in words {
        assert!(errors[0].contains(w), "{args:?}: '{}' lacks '{w}'", errors[0]);
    }
}

const TINY: [&str; 10] = [
    "--train-per-class",
    "2",
    "--test-per-class",
    "1",
    "--epochs",
    "1",
    "--batch-size",
    "10",
    "--device",
    "cpu",
];

fn train_args<'a>(out: &'a str, data: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "baseline", "--out", out, "--data", data];
    v.extend(TINY);
    v.extend(more);
    v
}

/// `t` with its first element set to `v`.
fn poison(t: &Tensor, v: f64) -> Tensor {
    let c = t.copy();
    let mut first = c.view([-1]).get(0);
    let _ = first.fill_(v);
    c
}

fn leak(x: String) -> &'static str {
    Box::leak(x.into_boxed_str())
}

fn wb(m: &'static str, d: &'static str) -> Vec<&'static str> {
    vec![
        "attack",
        "whitebox",
        "--model",
        m,
        "--data",
        d,
        "--images",
        "3",
        "--steps",
        "1",
        "--restarts",
        "1",
        "--eps",
        "0.01",
        "--device",
        "cpu",
    ]
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `file` with tensor `key` changed by `f`, metadata changed by `m`, written to `out`.
fn tamper(
    file: &Path,
    out: &Path,
    key: &str,
    f: impl FnOnce(&Tensor) -> Tensor,
    m: impl FnOnce(&mut std::collections::BTreeMap<String, String>),
) {
    let mut tf = TensorFile::read(file).unwrap();
    let t = f(&tf.tensors[key]);
    tf.tensors.insert(key.to_string(), t);
    m(&mut tf.meta);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    tf.write(out).unwrap();
}

#[test]
fn bad_inputs_get_one_clear_error() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = leak(s(&tiny_data(&t.join("data"), 2, 1, false)));
    let data11 = leak(s(&tiny_data(&t.join("data11"), 2, 1, true)));
    // A FIFO named like an image (would block a reader forever).
    let fifo = leak(s(&tiny_data(&t.join("fifo"), 2, 1, false)));
    let status = Command::new("mkfifo").arg(t.join("fifo/test/cat/zz.jpg")).status().unwrap();
    assert!(status.success());
    let m = t.join("m");
    ok(&train_args(&s(&m), data, &[]));
    let model = leak(s(&m.join("model.safetensors")));
    let nan = t.join("nan.safetensors");
    tamper(Path::new(&model), &nan, "layer1.0.conv1.weight", |w| poison(w, f64::NAN), |_| {});
    let negvar = t.join("negvar.safetensors");
    tamper(Path::new(&model), &negvar, "layer2.1.bn2.running_var", |v| v - 100.0, |_| {});
    let inf = t.join("inf.safetensors");
    tamper(Path::new(&model), &inf, "linear.bias", |b| b * f64::INFINITY, |_| {});
    let (nan, negvar, inf) = (s(&nan), s(&negvar), s(&inf));
    // A transfer set, and tampered copies of it.
    let set = t.join("set");
    let set_s = s(&set);
    let gen = [
        "attack",
        "transfer-gen",
        "--out",
        &set_s,
        "--data",
        data,
        "--images",
        "5",
        "--steps",
        "2",
        "--eps",
        "0.03",
        "--losses",
        "ce",
        "--device",
        "cpu",
    ];
    let surrogate = format!("a={model}");
    let mut g = gen.to_vec();
    g.extend(["--surrogate", &surrogate]);
    ok(&g);
    let tfile = set.join("a_eps0.03.safetensors");
    let key = TensorFile::read(&tfile)
        .unwrap()
        .tensors
        .keys()
        .find(|k| k.starts_with("adv."))
        .unwrap()
        .clone();
    let sets = |name: &str| s(&t.join(name));
    let target = |n: &str| t.join(n).join("a_eps0.03.safetensors");
    tamper(&tfile, &target("far"), &key, |x| (x + 0.2).clamp(0.0, 1.0), |_| {});
    tamper(&tfile, &target("nanx"), &key, |x| poison(x, f64::NAN), |_| {});
    tamper(&tfile, &target("above"), &key, |x| x + 1.5, |_| {});
    tamper(&tfile, &target("label"), "labels", |l| l + 10, |_| {});
    tamper(
        &tfile,
        &target("meta"),
        &key,
        |x| x.shallow_clone(),
        |meta| {
            let j = meta["eio.transfer"].replace("\"eps\":0.03", "\"eps\":0.3");
            meta.insert("eio.transfer".into(), j);
        },
    );
    // TOML files that the flags would refuse.
    let toml = |name: &str, text: &str| {
        let p = t.join(name);
        std::fs::write(&p, text).unwrap();
        s(&p)
    };
    let tpc0 = leak(toml("tpc0.toml", "[train]\ntrain_per_class = 0\n"));
    let vpc0 = toml("vpc0.toml", "[train]\ntest_per_class = 0\n");
    let gamma0 = toml("gamma0.toml", "[optim]\ngamma = 0.0\n");
    let afile = t.join("afile");
    std::fs::write(&afile, b"x").unwrap();
    let under_file = s(&afile.join("out.json"));
    let out = |n: &str| s(&t.join(n));

    let o = out("o");
    let with = |mut v: Vec<&'static str>, more: &[&'static str]| {
        v.extend_from_slice(more);
        v
    };
    let (nan, negvar, inf) = (leak(nan), leak(negvar), leak(inf));
    let o = leak(o);
    let te = |set: String| -> Vec<&'static str> {
        vec!["attack", "transfer-eval", "--model", model, "--set", leak(set), "--device", "cpu"]
    };
    #[rustfmt::skip]
    let cases: Vec<(Vec<&str>, i32, Vec<&str>)> = vec![
        // 4. class count of the data against the model, everywhere.
        (train_args(o, data11, &[]), 1, vec!["11 classes", "10"]),
        (vec!["eval", "--model", model, "--data", data11], 1, vec!["11 classes"]),
        (wb(model, data11), 1, vec!["11 classes"]),
        // 5. non-finite weights and negative BatchNorm variance, named, at load.
        (vec!["eval", "--model", nan, "--data", data], 1, vec!["layer1.0.conv1.weight", "NaN"]),
        (vec!["eval", "--model", inf, "--data", data], 1, vec!["linear.bias", "infinite"]),
        (vec!["import", "--input", negvar, "--output", leak(out("imp.safetensors"))], 1, vec!["layer2.1.bn2.running_var", "negative"]),
        (wb(nan, data), 1, vec!["layer1.0.conv1.weight"]),
        // 5. stored transfer examples are validated.
        (te(sets("far")), 1, vec![&key, "outside the eps 0.03 ball"]),
        (te(sets("nanx")), 1, vec!["NaN"]),
        (te(sets("above")), 1, vec!["expected [0,1]"]),
        (te(sets("label")), 1, vec!["labels range"]),
        (te(sets("meta")), 1, vec!["eps 0.3", "eps 0.03", "contradicts"]),
        // 5. one validation for flags and files.
        (vec!["train", "baseline", "--out", o, "--data", data, "--epochs", "1", "--config", tpc0], 1, vec!["train_per_class must be at least 1"]),
        (vec!["train", "baseline", "--out", o, "--data", data, "--epochs", "1", "--config", leak(vpc0)], 1, vec!["test_per_class must be at least 1"]),
        (vec!["train", "baseline", "--out", o, "--data", data, "--epochs", "1", "--config", leak(gamma0)], 1, vec!["gamma"]),
        (train_args(o, data, &["--gamma=-0.5"]), 1, vec!["gamma", "positive"]),
        // 5. empty names and conflicting flags are refused.
        (vec!["attack", "transfer-gen", "--surrogate", leak(format!("={model}")), "--out", o, "--data", data], 1, vec!["non-empty name"]),
        (vec!["attack", "transfer-gen", "--surrogate", leak(format!(" ={model}")), "--out", o, "--data", data], 1, vec!["non-empty name"]),
        (with(wb(model, data), &["--first-per-class", "1"]), 2, vec!["--first-per-class", "--images"]),
        (vec!["stability", "--model", model, "--out", o, "--finetune-config", tpc0], 1, vec!["--finetune-epochs"]),
        (vec!["derive", "--model", model, "--output", o, "--val-images", "5"], 2, vec!["required arguments"]),
        // 6. bounds before allocation, and files that are not regular files.
        (train_args(o, data, &["--members", "100000"]), 1, vec!["members must be in 1..=64"]),
        (vec!["derive", "--model", model, "--paths", "1000000", "--output", leak(out("d.safetensors"))], 1, vec!["--paths 1000000", "1..=64"]),
        (vec!["eval", "--model", model, "--data", data, "--paths", "100000"], 1, vec!["--paths 100000"]),
        (vec!["eval", "--model", model, "--data", fifo], 1, vec!["zz.jpg", "not a regular file"]),
        // 7. outputs are checked before the work.
        (with(wb(model, data), &["--json", leak(under_file.clone())]), 1, vec!["afile", "is a file"]),
        (vec!["attack", "transfer-gen", "--surrogate", leak(surrogate.clone()), "--out", leak(s(&afile)), "--data", data], 1, vec!["afile", "is a file"]),
        // 7. two flags naming one file (the second write would replace the first).
        (vec!["derive", "--model", model, "--output", leak(out("same")), "--json", leak(out("./same"))], 1, vec!["--output and --json both name"]),
        (vec!["eval", "--model", model, "--data", data, "--json", leak(out("e.json")), "--per-image", leak(out("e.json"))], 1, vec!["--json and --per-image"]),
        (with(wb(model, data), &["--json", leak(out("w.json")), "--csv", leak(out("w.json"))]), 1, vec!["--json and --csv"]),
        (vec!["bench", "--device", "cpu", "--iters", "1", "--json", leak(s(&afile))], 1, vec!["afile", "already exists", "--force"]),
        // 7. output folders that are files, or hold something else.
        (train_args(leak(s(&afile)), data, &[]), 1, vec!["afile", "is a file, expected a folder"]),
        (vec!["reproduce", "--preset", "smoke", "--out", leak(s(t)), "--data", data], 1, vec!["no plan.toml", "new or empty folder"]),
        (vec!["reproduce", "--preset", "smoke", "--out", leak(out("r1")), "--data", data, "--only", "eval/baseline"], 1, vec!["eval/baseline", "needs train/baseline", "--only"]),
        // 6. sizes past what the machine holds are an error, not a panic.
        (vec!["bench", "--device", "cpu", "--iters", "1", "--batch-size", "100000000000"], 1, vec!["out of memory", "--batch-size"]),
        (vec!["--threads", "100000", "eval", "--model", model, "--data", data], 2, vec!["--threads", "use at most"]),
        // 5. flags checked as a whole.
        (vec!["eval", "--model", model, "--data", data, "--classes", "cat,,dog"], 1, vec!["--classes", "empty class name"]),
        (vec!["eval", "--model", model, "--data", data, "--classes", "cat,dog,cat"], 1, vec!["--classes", "cat is named twice"]),
        (train_args(o, data, &["--milestones", "5,2"]), 1, vec!["milestones", "increasing"]),
        (train_args(o, data, &["--milestones", "3"]), 1, vec!["milestones [3]", "1 epochs"]),
        (with(wb(model, data), &["--paths", "2"]), 2, vec!["--paths"]),
        // 8. OS errors once.
        (vec!["eval", "--model", leak(out("missing.safetensors"))], 1, vec!["missing.safetensors", "No such file"]),
    ];
    for (args, code, words) in &cases {
        expect_error(args, *code, words);
    }
    // --from a folder with nothing to load says so.
    std::fs::create_dir_all(t.join("empty")).unwrap();
    let from = ["reproduce", "--preset", "smoke", "--data", data, "--only", "eval/baseline"];
    let (_, _, err) =
        run(&with(from.to_vec(), &["--out", leak(out("r2")), "--from", leak(out("empty"))]));
    assert!(err.contains("warning: --from") && err.contains("nothing loaded"), "{err}");
    let (_, _, err) = run(&["eval", "--model", leak(out("missing.safetensors"))]);
    assert_eq!(err.matches("os error 2").count(), 1, "OS error printed once: {err}");

    // 2. a transfer set made with other settings is not replaced without --force.
    let mut other = gen.to_vec();
    other[7] = "4";
    other.extend(["--surrogate", &surrogate]);
    expect_error(&other, 1, &["a_eps0.03.safetensors", "other settings", "--force"]);
    other.push("--force");
    ok(&other);
    // 2. a finished stability report is not replaced without --force.
    std::fs::create_dir_all(t.join("st")).unwrap();
    std::fs::write(t.join("st/report.json"), b"{}").unwrap();
    expect_error(
        &["stability", "--model", model, "--out", leak(out("st")), "--data", data],
        1,
        &["report.json", "already exists", "--force"],
    );
}

#[test]
fn run_folders_are_never_overwritten_shared_or_left_without_a_model() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let other_data = s(&tiny_data(&t.join("other"), 2, 1, false));
    let cat = t.join("other/train/cat");
    std::fs::copy(cat.join("0001.jpg"), cat.join("0000.jpg")).unwrap();
    let r = s(&t.join("r"));
    let log = ok(&train_args(&r, &data, &[]));
    assert!(log.contains("finished"));
    let model = std::fs::read(t.join("r/model.safetensors")).unwrap();

    // 1. a run stopped between its last checkpoint and its model file: --resume writes it.
    std::fs::remove_file(t.join("r/model.safetensors")).unwrap();
    let log = ok(&train_args(&r, &data, &["--resume"]));
    assert!(log.contains("without its model file"), "{log}");
    assert_eq!(std::fs::read(t.join("r/model.safetensors")).unwrap(), model, "same bytes");
    // ... also when the model path was unwritable (a folder) during the first attempt.
    let r2 = s(&t.join("r2"));
    std::fs::create_dir_all(t.join("r2/model.safetensors")).unwrap();
    expect_error(&train_args(&r2, &data, &[]), 1, &["model.safetensors", "is a folder"]);
    std::fs::remove_dir(t.join("r2/model.safetensors")).unwrap();
    ok(&train_args(&r2, &data, &["--resume"]));
    assert_eq!(std::fs::read(t.join("r2/model.safetensors")).unwrap(), model);

    // 5. --resume with other data is refused.
    expect_error(&train_args(&r, &other_data, &["--resume"]), 1, &["other data", "--data"]);

    // 2. a run whose checkpoint is gone, or stray run files, are not replaced without --force.
    std::fs::remove_file(t.join("r/checkpoint.safetensors")).unwrap();
    expect_error(&train_args(&r, &data, &[]), 1, &["no checkpoint", "--force"]);
    expect_error(&train_args(&r, &data, &["--resume"]), 1, &["no checkpoint", "--force"]);
    assert_eq!(std::fs::read(t.join("r/model.safetensors")).unwrap(), model);
    let r3 = t.join("r3");
    std::fs::create_dir_all(&r3).unwrap();
    std::fs::write(r3.join("train.log"), b"precious\n").unwrap();
    expect_error(&train_args(&s(&r3), &data, &[]), 1, &["train.log", "--force"]);
    assert_eq!(std::fs::read(r3.join("train.log")).unwrap(), b"precious\n");
    ok(&train_args(&r, &data, &["--force"]));

    // 2. one process per run folder: while another holds the lock, training refuses at once.
    let lock = std::fs::OpenOptions::new().write(true).open(t.join("r/.lock")).unwrap();
    lock.try_lock().unwrap();
    expect_error(&train_args(&r, &data, &["--force"]), 1, &["in use by another eio process"]);
    drop(lock);

    // 8. a model written twice from the same weights has the same bytes (two processes, so
    // two hash-map orders of the metadata).
    let m = s(&t.join("r/model.safetensors"));
    let (a, b) = (s(&t.join("a.safetensors")), s(&t.join("b.safetensors")));
    ok(&["import", "--input", &m, "--output", &a]);
    ok(&["import", "--input", &m, "--output", &b]);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

/// Temporary files (`.NAME.tmp<pid>`) left in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.') && n.contains(".tmp"))
        .collect()
}

/// The inode of `path` (a new one per atomic write), if it exists.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[test]
fn kill_9_at_any_moment_then_resume_gives_the_same_model() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 10, 1, false));
    // 100 images, batch 10: 10 steps per epoch, 3 epochs, a checkpoint after every step (the
    // watcher below polls every 2 ms and can miss a write of a fast step: the third epoch keeps
    // the run going past the 15th write it sees).
    let args = |out: &str, resume: bool| -> Vec<String> {
        let mut v: Vec<String> = [
            "train",
            "baseline",
            "--out",
            out,
            "--data",
            &data,
            "--train-per-class",
            "10",
            "--test-per-class",
            "1",
            "--epochs",
            "3",
            "--batch-size",
            "10",
            "--checkpoint-every",
            "1",
            "--seed",
            "3",
            "--device",
            "cpu",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if resume {
            v.push("--resume".into());
        }
        v
    };
    let call = |v: &[String]| ok(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let reference = s(&t.join("ref"));
    use std::time::{Duration, Instant};
    let t0 = Instant::now();
    call(&args(&reference, false));
    let whole = t0.elapsed();
    let want = std::fs::read(t.join("ref/model.safetensors")).unwrap();

    // Kill after the 1st, 7th and 15th checkpoint write seen (7: mid-epoch 1; 15: in epoch 2), and at
    // half the uninterrupted run's time after the start (data loading or training, whichever it
    // is then; a fixed time would outlast the whole run on a fast machine).
    enum When {
        Checkpoints(usize),
        After(Duration),
    }
    for (i, when) in
        [When::Checkpoints(1), When::Checkpoints(7), When::Checkpoints(15), When::After(whole / 2)]
            .into_iter()
            .enumerate()
    {
        let out = t.join(format!("k{i}"));
        let ckpt = out.join("checkpoint.safetensors");
        let v = args(&s(&out), false);
        let mut child = cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let (mut writes, mut last) = (0usize, None);
        loop {
            let ino = inode(&ckpt);
            if ino.is_some() && ino != last {
                writes += 1;
                last = ino;
            }
            let due = match when {
                When::Checkpoints(n) => writes >= n,
                When::After(d) => start.elapsed() >= d,
            };
            if due || child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        assert!(!finished, "run {i} finished before the kill; make it longer");
        // A killed run resumes (or, killed before its first checkpoint, restarts) to the same
        // bytes as the uninterrupted run, and leaves no temporary file behind.
        call(&args(&s(&out), true));
        let got = std::fs::read(out.join("model.safetensors")).unwrap();
        assert!(got == want, "kill {i}: resumed model differs from the uninterrupted run");
        assert!(temps(&out).is_empty(), "kill {i}: temporary files left: {:?}", temps(&out));
    }

    // A temporary file of a dead writer (a kill during a checkpoint write) is removed at start.
    let out = t.join("k0");
    std::fs::write(out.join(".checkpoint.safetensors.tmp4294967290"), b"partial").unwrap();
    let log = call(&args(&s(&out), true));
    assert!(log.contains("already finished"));
    assert!(temps(&out).is_empty(), "{:?}", temps(&out));
}

#[test]
fn nan_stop_keeps_a_finite_checkpoint() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 10, 1, false));
    let out = s(&t.join("nan"));
    let args = [
        "train",
        "baseline",
        "--out",
        &out,
        "--data",
        &data,
        "--train-per-class",
        "10",
        "--test-per-class",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "10",
        "--checkpoint-every",
        "1",
        "--lr",
        "1000",
        "--device",
        "cpu",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(line.contains("training stopped") && line.contains("last good checkpoint"), "{line}");
    // The checkpoint it names holds finite weights and optimiser state, and loads.
    let ckpt = t.join("nan/checkpoint.safetensors");
    let tf = TensorFile::read(&ckpt).unwrap();
    assert_eq!(eio::validate::bad_tensor(&tf.tensors), None);
    eio::model::Model::load(&ckpt, tch::Device::Cpu).unwrap();
    assert!(std::fs::read_to_string(t.join("nan/train.log")).unwrap().contains("training stopped"));
}

/// `stability` args on `model` into `out`, tiny: 2 paths, PGD-1, one restart, 10 test images.
fn stability_args<'a>(
    model: &'a str,
    out: &'a str,
    data: &'a str,
    more: &[&'a str],
) -> Vec<&'a str> {
    let mut v = vec![
        "stability",
        "--model",
        model,
        "--out",
        out,
        "--data",
        data,
        "--device",
        "cpu",
        "--steps",
        "1",
        "--restarts",
        "1",
        "--eps",
        "0.01",
        "--test-per-class",
        "1",
        "-k",
        "2",
    ];
    v.extend(more);
    v
}

/// A tiny `eio train <method>` run into `out`.
fn train_method(method: &'static str, out: &Path, data: &str, more: &[&str]) -> PathBuf {
    let out_s = s(out);
    let mut v = train_args(&out_s, data, more);
    v[1] = method;
    ok(&v);
    out.join("model.safetensors")
}

/// Asking for more distinct paths than an RGN has is one error everywhere.
#[test]
fn more_paths_than_an_rgn_has_is_an_error() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let rgn = s(&train_method("rgn-warmup", &t.join("rgn1"), &data, &["--augment", "top1"]));
    let out = s(&t.join("out.safetensors"));
    let only = "this RGN has only 2 distinct paths";
    let cpu = ["--data", data.as_str(), "--device", "cpu"];
    let with = |mut v: Vec<&'static str>| {
        v.extend(cpu.iter().map(|a| leak(a.to_string())));
        v
    };
    let (rgn_l, out_l) = (leak(rgn.clone()), leak(out.clone()));
    let tf = ["attack", "transferability", "--model", rgn_l, "--paths", "5", "--steps", "1"];
    expect_error(&with(tf.to_vec()), 1, &["--paths 5", only]);
    expect_error(&with(vec!["eval", "--model", rgn_l, "--paths", "5"]), 1, &["--paths 5", only]);
    let derive = vec!["derive", "--model", rgn_l, "--paths", "5", "--output", out_l];
    expect_error(&derive, 1, &["--paths 5", only]);
    let best = vec!["derive", "--model", rgn_l, "--best-of", "3", "--output", out_l];
    expect_error(&with(best), 1, &["--best-of 3", only]);
    let st = s(&t.join("st"));
    let mut k8 = stability_args(&rgn, &st, &data, &[]);
    k8[18] = "8";
    expect_error(&k8, 1, &["-k 8", only]);
    // As many as there are is fine.
    ok(&["derive", "--model", rgn_l, "--paths", "2", "--output", out_l]);
}

/// A transferability matrix without an eligible image (none classified correctly by
/// every member) is an error, not a matrix of zeros.
#[test]
fn transferability_without_eligible_images_is_an_error() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let ens = train_method("baseline", &t.join("ens"), &data, &["--members", "2"]);
    // Member 0 always says class 0, member 1 always class 1.
    let split = t.join("split.safetensors");
    let biased = |c: i64| {
        move |b: &Tensor| {
            let b = b.copy();
            let _ = b.get(c).fill_(1e4);
            b
        }
    };
    tamper(&ens, &split, "member0.linear.bias", biased(0), |_| {});
    tamper(&split, &split, "member1.linear.bias", biased(1), |_| {});
    let split = s(&split);
    let mut args = vec!["attack", "transferability", "--model", &split, "--data", &data];
    args.extend(["--device", "cpu", "--steps", "1", "--restarts", "1"]);
    expect_error(&args, 1, &["no image is eligible", "more test images"]);
}

/// A fine-tuning configuration holds [train] and [optim] only; another run's
/// configuration (another method) is one error naming the file, not a switch of method.
#[test]
fn finetune_configs_hold_only_train_and_optim() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let rgn = s(&train_method("rgn-warmup", &t.join("rgn"), &data, &[]));
    let plain = s(&t.join("plain.safetensors"));
    ok(&["derive", "--model", &rgn, "--output", &plain]);
    let adp = t.join("adp.toml");
    std::fs::write(&adp, "members = 3\n[train]\nepochs = 1\n[method.adp]\nalpha = 2.0\n").unwrap();
    let adp = s(&adp);
    let rgn_cfg = s(&t.join("rgn/config.toml"));
    let out = s(&t.join("ft"));
    for cfg in [&adp, &rgn_cfg] {
        let mut ft = vec!["finetune", "--model", &plain, "--out", &out, "--config", cfg];
        ft.extend(["--data", &data, "--device", "cpu", "--test-per-class", "1"]);
        expect_error(&ft, 1, &[cfg, "[train] and [optim]", "method"]);
        let more = ["--finetune-epochs", "1", "--finetune-config", cfg];
        expect_error(&stability_args(&rgn, &out, &data, &more), 1, &[cfg, "[train] and [optim]"]);
    }
    assert!(!t.join("ft/model.safetensors").exists());
    // A file with only those tables is taken.
    let good = t.join("good.toml");
    std::fs::write(&good, "[train]\nepochs = 1\ntrain_per_class = 2\n[optim]\nlr = 0.01\n")
        .unwrap();
    let good = s(&good);
    let mut ft = vec!["finetune", "--model", &plain, "--out", &out, "--config", &good];
    ft.extend(["--data", &data, "--device", "cpu", "--test-per-class", "1"]);
    ok(&ft);
}

/// A stopped white-box run is continued only by the same model: another model with
/// the same clean predictions (here: every logit shifted alike) starts over, saying why.
#[test]
fn whitebox_resumes_only_for_the_same_model() {
    use std::time::{Duration, Instant};
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let model = train_method("baseline", &t.join("m"), &data, &[]);
    let shifted = t.join("shifted.safetensors");
    tamper(&model, &shifted, "linear.bias", |b| b + 0.5, |_| {});
    let (model, shifted) = (s(&model), s(&shifted));
    let json = s(&t.join("wb/r.json"));
    let state = t.join("wb/r.state.json");
    let args = |m: &str| -> Vec<String> {
        let mut v: Vec<String> =
            wb(leak(m.to_string()), leak(data.clone())).into_iter().map(String::from).collect();
        v[7] = "10".into(); // --images
        v[9] = "10".into(); // --steps
        v[11] = "2".into(); // --restarts
        v[13] = "0.01,0.02,0.03,0.04,0.05,0.06,0.07,0.08".into(); // --eps
        v.extend(["--json".into(), json.clone()]);
        v
    };
    // Stop a run on `model` as soon as it has saved its progress.
    let v = args(&model);
    let mut child = cmd(&v.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !state.exists() && child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no state file");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().ok();
    child.wait().unwrap();
    assert!(state.exists(), "the run finished before the stop; make it longer");
    let saved = std::fs::read(&state).unwrap();

    let log = ok(&args(&shifted).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!log.contains("continuing"), "{log}");
    let line = log.lines().find(|l| l.contains("starting over")).expect(&log);
    assert!(line.contains("r.state.json") && line.contains("another model"), "{line}");
    // The same model continues.
    std::fs::write(&state, saved).unwrap();
    std::fs::remove_file(t.join("wb/r.json")).unwrap();
    let log = ok(&args(&model).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(log.contains("continuing from"), "{log}");
}

/// Transfer sets: a rerun of `transfer-gen` keeps a file only when the same surrogate
/// model made it, not merely a surrogate of the same name.
#[test]
fn transfer_sets_are_kept_only_for_the_same_surrogate_model() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let a = s(&train_method("baseline", &t.join("a"), &data, &[]));
    let b = s(&train_method("baseline", &t.join("b"), &data, &["--seed", "1"]));
    let set = s(&t.join("set"));
    let gen = |model: &str, more: &[&str]| {
        let surrogate = format!("s={model}");
        let mut v = vec!["attack", "transfer-gen", "--surrogate", &surrogate, "--out", &set];
        v.extend(["--data", &data, "--images", "3", "--steps", "1", "--eps", "0.03"]);
        v.extend(["--losses", "ce", "--device", "cpu"]);
        v.extend(more);
        v.iter().map(|a| a.to_string()).collect::<Vec<_>>()
    };
    let strs = |v: &[String]| v.iter().map(|a| leak(a.clone())).collect::<Vec<&str>>();
    ok(&strs(&gen(&a, &[])));
    ok(&strs(&gen(&a, &[])));
    let words = ["s_eps0.03.safetensors", "other settings", "--force"];
    expect_error(&strs(&gen(&b, &[])), 1, &words);
    ok(&strs(&gen(&b, &["--force"])));
    ok(&strs(&gen(&b, &[])));
}

/// The stability report's rows in `dir`: (name, route, clean, robust) of each.
fn stability_rows(dir: &Path) -> Vec<(String, String, String)> {
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let acc = format!("{} {}", row["clean"], row["robust"]);
            (row["name"].to_string(), row["route"].to_string(), acc)
        })
        .collect()
}

/// Stability's per-path cache (derived file, evaluation) is reused only for the same
/// RGN, route and settings: another seed (even with --force), another model in the same folder,
/// or a damaged derived file are made again; an identical rerun still reuses everything.
#[test]
fn stability_reuses_only_what_was_made_from_the_same_model_and_route() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let rgn = s(&train_method("rgn-warmup", &t.join("rgn"), &data, &[]));
    let other = s(&train_method("rgn-warmup", &t.join("other"), &data, &["--seed", "1"]));
    let (st, fresh) = (t.join("st"), t.join("fresh"));
    let (st_s, fresh_s) = (s(&st), s(&fresh));
    let derived = |dir: &Path, i: usize| dir.join(format!("path{i}/derived.safetensors"));
    let route_of = |f: &Path| TensorFile::read(f).unwrap().meta["eio.path"].clone();

    // (a) another seed with --force: the derived files are the new seed's routes.
    ok(&stability_args(&rgn, &st_s, &data, &[]));
    ok(&stability_args(&rgn, &st_s, &data, &["--seed", "7", "--force"]));
    for (i, (_, route, _)) in stability_rows(&st).iter().enumerate() {
        assert_eq!(*route, format!("\"{}\"", route_of(&derived(&st, i))), "path {i}");
    }

    // (b) another model in the same folder: nothing of the first is reused; the rows and the
    // derived files are those of a run in a fresh folder.
    ok(&stability_args(&other, &fresh_s, &data, &[]));
    std::fs::remove_file(st.join("report.json")).unwrap();
    let log = ok(&stability_args(&other, &st_s, &data, &[]));
    assert!(!log.contains("reusing"), "{log}");
    assert!(log.contains("deriving it again"), "{log}");
    assert_eq!(stability_rows(&st), stability_rows(&fresh));
    for i in 0..2 {
        assert_eq!(
            std::fs::read(derived(&st, i)).unwrap(),
            std::fs::read(derived(&fresh, i)).unwrap()
        );
    }

    // (c) a damaged derived file is made again, with --force and without.
    let damage = || {
        let bytes = std::fs::read(derived(&st, 0)).unwrap();
        std::fs::write(derived(&st, 0), &bytes[..bytes.len() / 2]).unwrap();
    };
    damage();
    ok(&stability_args(&other, &st_s, &data, &["--force"]));
    damage();
    std::fs::remove_file(st.join("report.json")).unwrap();
    let log = ok(&stability_args(&other, &st_s, &data, &[]));
    assert!(
        log.contains("path0/derived.safetensors") && log.contains("deriving it again"),
        "{log}"
    );
    assert_eq!(std::fs::read(derived(&st, 0)).unwrap(), std::fs::read(derived(&fresh, 0)).unwrap());
    assert_eq!(stability_rows(&st), stability_rows(&fresh));

    // An identical rerun (an interrupted run resumed) reuses every path.
    std::fs::remove_file(st.join("report.json")).unwrap();
    let log = ok(&stability_args(&other, &st_s, &data, &[]));
    assert_eq!(log.matches("reusing").count(), 2, "{log}");
    assert!(!log.contains("derived path") && !log.contains("again"), "{log}");
}

/// Stability's reference models are checked before any path is derived.
#[test]
fn stability_checks_its_references_before_the_work() {
    let tmp = tempdir();
    let t = tmp.path();
    let data = s(&tiny_data(&t.join("data"), 2, 1, false));
    let rgn = s(&train_method("rgn-warmup", &t.join("rgn"), &data, &[]));
    let out = s(&t.join("st"));
    let missing = s(&t.join("nonexist.safetensors"));
    let not_model = s(&t.join("data/test/cat/0000.jpg"));
    for (reference, word) in [(&missing, "No such file"), (&not_model, "not a safetensors file")] {
        let args = stability_args(&rgn, &out, &data, &["--reference", reference]);
        expect_error(&args, 1, &[reference, word]);
        assert!(!t.join("st/path0").exists(), "a path was derived before the check");
    }
}
