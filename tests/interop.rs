//! Interoperability with PyTorch: `torch.save` checkpoints in (zip and legacy formats, wrappers,
//! ensembles, pickled modules), normalisation carried by model files, the option-A ResNet-20,
//! the `eio_torch` Python package (python/), decoded pixels against PIL, and one training step
//! of every method against its published code's loop, restated in PyTorch.
//!
//! Tests that need the project's Python (the pinned torch, from `VIRTUAL_ENV`, which `scripts/test`
//! sets) skip with a message without it. Their reference models are defined independently in
//! `tests/interop.py`.

use std::path::{Path, PathBuf};

use eio::data::{decode_image, Dataset, Split, CIFAR10_CLASSES};
use eio::error::Error;
use eio::model::io::{describe, TensorFile};
use eio::model::{pth, ArchConfig, Augment, Model, ModelSpec, Normalization, Route, Shortcut};
use eio::seed::Seed;
use eio::train::{Batch, Method, StepAt};
use tch::{Device, Kind, Tensor};

use crate::util::{assert_user_error, cifar_jpeg, eio, probe_input, tempdir};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn err_text<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    r.expect_err("should fail").to_string()
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn rows(v: &serde_json::Value) -> Tensor {
    let r: Vec<Vec<f64>> = serde_json::from_value(v.clone()).unwrap();
    let n = r.len() as i64;
    Tensor::from_slice(&r.concat()).view([n, -1]).to_kind(Kind::Float)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// The project's Python (the pinned torch), or `None` (the test then skips).
fn python() -> Option<PathBuf> {
    match std::env::var_os("VIRTUAL_ENV") {
        Some(v) => Some(Path::new(&v).join("bin/python")),
        None => {
            eprintln!("skipped: VIRTUAL_ENV not set (run through scripts/test)");
            None
        }
    }
}

/// Runs `python args...` with `python/` on the path; returns its stdout parsed as JSON.
fn run_python(py: &Path, args: &[&str]) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(py)
        .args(args)
        .env("PYTHONPATH", root.join("python"))
        .current_dir(root)
        .output()
        .expect("run python");
    assert!(out.status.success(), "python {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("python {args:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout))
    })
}

fn logits(m: &Model, route: &Route) -> Tensor {
    let x = probe_input(2);
    if m.nets.len() == 1 {
        return m.nets[0].forward(&x, route, false);
    }
    eio::model::ensemble_logits(m.nets.iter().map(|n| n.forward(&x, route, false)).collect())
}

/// Deterministic, non-trivial BatchNorm statistics (no global RNG: tests run in parallel).
fn vary_bn(m: &Model) {
    let _g = tch::no_grad_guard();
    for (i, (name, mut t)) in m.vs.variables().into_iter().enumerate() {
        let n = t.numel() as i64;
        let wave = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.7 + i as f64).sin();
        if name.ends_with("running_mean") {
            t.copy_(&(wave * 0.1));
        } else if name.ends_with("running_var") {
            t.copy_(&(wave.abs() + 0.5));
        } else if name.contains("bn") && name.ends_with("bias") {
            t.copy_(&(wave * 0.05));
        }
    }
}

// --- torch.save reader ------------------------------------------------------------------------

#[test]
fn torch_save_zip_and_legacy_checkpoints_read_alike() {
    // tests/data/make_pth_fixtures.py: {'epoch', 'state_dict', 'optimizer', 'args': Namespace}.
    for file in ["tiny_zip.pt", "tiny_legacy.pt"] {
        let t = pth::read(&data(file)).unwrap();
        let keys: Vec<&str> = t.keys().map(String::as_str).collect();
        assert_eq!(keys, ["b", "h", "idx", "s0", "s1", "scalar", "w", "wt"], "{file}");
        assert_eq!(floats(&t["w"]), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "{file}");
        assert_eq!(t["wt"].size(), [3, 2]);
        assert_eq!(floats(&t["wt"]), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0], "{file}: transposed view");
        assert_eq!(t["idx"].kind(), Kind::Int64);
        assert_eq!(floats(&t["idx"]), [1.0, -2.0, 3.0]);
        assert_eq!(t["h"].kind(), Kind::Half);
        assert_eq!(floats(&t["h"]), [0.5, -1.5]);
        assert_eq!(floats(&t["b"]), [1.0, 0.0]);
        assert_eq!(t["scalar"].size(), Vec::<i64>::new());
        assert_eq!(floats(&t["scalar"]), [7.0]);
        assert_eq!(floats(&t["s0"]), [1.0, 2.0], "{file}: slice of a shared storage");
        assert_eq!(floats(&t["s1"]), [3.0, 4.0, 5.0], "{file}: slice at an offset");
    }
}

#[test]
fn torch_save_of_a_whole_module_gives_its_state_dict() {
    let t = pth::read(&data("tiny_module.pt")).unwrap();
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "0.bias",
            "0.weight",
            "1.bias",
            "1.num_batches_tracked",
            "1.running_mean",
            "1.running_var",
            "1.weight"
        ]
    );
    assert_eq!(t["0.weight"].size(), [2, 3]);
    assert_eq!(floats(&t["1.running_var"]), [1.0, 1.0]);
}

#[test]
fn unreadable_model_files_say_what_they_are() {
    let dir = tempdir();
    let cases: [(&str, &[u8], &str); 4] = [
        ("weights.h5", b"\x89HDF\r\n\x1a\n\0\0\0\0\0\0\0\0", "an HDF5 file"),
        ("x.npy", b"\x93NUMPY\x01\x00v\x00{'descr'", "a NumPy .npy array"),
        ("notes.txt", b"just some text\n", "a text file"),
        ("p.pkl", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x05.", "a Python pickle"),
    ];
    for (name, bytes, what) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = err_text(Model::load(&p, Device::Cpu));
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        assert!(e.contains(what), "{name}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
    // A zip that is not a torch.save file, and a TorchScript archive.
    for (name, entry, what) in [
        ("other.zip", "readme.txt", "not a torch.save file"),
        ("scripted.pt", "m/code/__torch__.py", "a TorchScript archive"),
    ] {
        let p = dir.path().join(name);
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        z.start_file(entry, zip::write::FileOptions::default()).unwrap();
        std::io::Write::write_all(&mut z, b"x").unwrap();
        z.finish().unwrap();
        let e = err_text(Model::load(&p, Device::Cpu));
        assert!(e.contains(what), "{name}: {e}");
    }
    // A torch.save file of weights that are not a ResNet-20.
    let e = err_text(Model::load(&data("tiny_zip.pt"), Device::Cpu));
    assert!(e.contains("not an eio model") && e.contains("ResNet-20 state dict"), "{e}");
    assert_user_error(
        &["eval", "--model", data("tiny_module.pt").to_str().unwrap()],
        "tiny_module.pt",
    );
}

// --- normalisation ----------------------------------------------------------------------------

#[test]
fn default_normalisation_and_shortcut_leave_spec_metadata_unchanged() {
    let spec = ModelSpec { arch: ArchConfig::plain(), members: 1 };
    assert_eq!(
        serde_json::to_string(&spec).unwrap(),
        r#"{"arch":{"copies":1,"augment":"none","share_conv":false},"members":1}"#
    );
    let custom = ArchConfig {
        shortcut: Shortcut::Identity,
        ..ArchConfig::plain()
            .with_normalization(Normalization::parse("0.5,0.5,0.5", "0.25,0.25,0.25").unwrap())
    };
    let j = serde_json::to_string(&custom).unwrap();
    assert!(j.contains(r#""shortcut":"identity","mean":[0.5,0.5,0.5],"std":[0.25,0.25,0.25]"#));
    assert_eq!(serde_json::from_str::<ArchConfig>(&j).unwrap(), custom);
    // Training configs take them in [arch].
    let t: ArchConfig = toml::from_str(
        "copies = 1\naugment = \"none\"\nshare_conv = false\nmean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]",
    )
    .unwrap();
    assert_eq!(t.normalization().mean, [0.5; 3]);
    assert!(Normalization::parse("0.5,0.5", "1,1,1").is_err());
    assert!(Normalization::parse("0.5,0.5,0.5", "1,0,1").is_err());
    let rgn_a = ArchConfig { shortcut: Shortcut::Identity, ..ArchConfig::rgn(2) };
    assert!(rgn_a.validate().unwrap_err().to_string().contains("plain ResNet-20s only"));
}

#[test]
fn normalizer_buffers_are_honoured_and_mismatches_refused() {
    let dir = tempdir();
    let half = Normalization::parse("0.5,0.5,0.5", "0.5,0.5,0.5").unwrap();
    let spec = ModelSpec { arch: ArchConfig::plain().with_normalization(half), members: 1 };
    let want = Model::new(&spec, Device::Cpu, Seed(5)).unwrap();
    vary_bn(&want);
    // A foreign (DVERGE-layout) state dict with normalizer buffers, no eio metadata.
    let mut f = TensorFile { tensors: want.named_tensors(), ..TensorFile::default() };
    f.tensors.insert("normalizer.mean".into(), Tensor::from_slice(&[0.5f32; 3]));
    f.tensors.insert("normalizer.std".into(), Tensor::from_slice(&[0.5f32; 3]).view([1, 3, 1, 1]));
    let p = dir.path().join("dverge.safetensors");
    f.write(&p).unwrap();
    let (m, _) = Model::load(&p, Device::Cpu).unwrap();
    assert!(m.spec.arch.normalization().matches(&half), "{:?}", m.spec.arch);
    assert!(logits(&m, &Route::default()).equal(&logits(&want, &Route::default())));
    assert!(describe(&m.spec).contains("normalisation mean 0.5"), "{}", describe(&m.spec));
    // Asking for the statistics it carries is fine; asking for others is an error naming both.
    Model::load_with(&p, Device::Cpu, Some(half)).unwrap();
    let e = err_text(Model::load_with(&p, Device::Cpu, Some(Normalization::CIFAR10)));
    assert!(e.contains("normalizer buffers carry normalisation mean 0.5,0.5,0.5"), "{e}");
    assert!(e.contains("but mean 0.4914"), "{e}");
    // Saved by eio, the spec carries them; a request that differs is refused there too.
    let q = dir.path().join("eio.safetensors");
    m.save(&q, TensorFile::default()).unwrap();
    let (m2, _) = Model::load(&q, Device::Cpu).unwrap();
    assert_eq!(m2.spec, m.spec);
    let e = err_text(Model::load_with(&q, Device::Cpu, Some(Normalization::CIFAR10)));
    assert!(e.contains("the model's spec carries"), "{e}");
    // A foreign file without buffers takes a request, else CIFAR-10's statistics.
    f.tensors.remove("normalizer.mean");
    f.tensors.remove("normalizer.std");
    f.write(&p).unwrap();
    let (m3, _) = Model::load_with(&p, Device::Cpu, Some(half)).unwrap();
    assert!(logits(&m3, &Route::default()).equal(&logits(&want, &Route::default())));
    let (m4, _) = Model::load(&p, Device::Cpu).unwrap();
    assert_eq!(m4.spec.arch.normalization(), Normalization::CIFAR10);
    // Derived models keep the normalisation of their RGN.
    let rgn_spec = ModelSpec { arch: ArchConfig::rgn(2).with_normalization(half), members: 1 };
    let rgn = Model::new(&rgn_spec, Device::Cpu, Seed(6)).unwrap();
    let r = Route::zeros(rgn.gates());
    assert_eq!(rgn.derive(&r).unwrap().spec.arch.normalization(), half);
    assert_eq!(rgn.derive_ensemble(&[r.clone(), r]).unwrap().spec.arch.normalization(), half);
}

// --- option-A ResNet-20 and torch.save files made by PyTorch ----------------------------------

#[test]
fn option_a_resnet20_from_torch_save_matches_pytorch() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let out = run_python(&py, &["tests/interop.py", "akamaster", dir.path().to_str().unwrap()]);
    let torch_logits = rows(&out["logits"]);
    let mean: Vec<f64> = serde_json::from_value(out["mean"].clone()).unwrap();
    let std: Vec<f64> = serde_json::from_value(out["std"].clone()).unwrap();
    let imagenet = Normalization { mean: mean.try_into().unwrap(), std: std.try_into().unwrap() };
    for key in ["zip", "legacy"] {
        let file = PathBuf::from(out[key].as_str().unwrap());
        let (m, _) = Model::load_with(&file, Device::Cpu, Some(imagenet)).unwrap();
        assert_eq!(m.spec.arch.shortcut, Shortcut::Identity, "{key}");
        assert_eq!((m.spec.members, m.gates()), (1, 0));
        let err = max_diff(&logits(&m, &Route::default()), &torch_logits);
        assert!(err < 1e-4, "{key}: max logit error {err}");
    }
    // Through the command line: import with the normalisation the model was trained with.
    let model = dir.path().join("akamaster.safetensors");
    let (ok, stdout, stderr) = eio(&[
        "import",
        "--input",
        out["zip"].as_str().unwrap(),
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--output",
        model.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("option-A"), "{stdout}");
    let (m, _) = Model::load(&model, Device::Cpu).unwrap();
    assert!(max_diff(&logits(&m, &Route::default()), &torch_logits) < 1e-4);
}

#[test]
fn dverge_torch_save_files_load_with_their_normalizers() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let out = run_python(&py, &["tests/interop.py", "dverge", dir.path().to_str().unwrap()]);
    let half = Normalization { mean: [0.5; 3], std: [0.5; 3] };
    let file = |k: &str| PathBuf::from(out[k].as_str().unwrap());
    let (ens, _) = Model::load(&file("ensemble"), Device::Cpu).unwrap();
    assert_eq!(ens.spec.members, 2);
    assert!(ens.spec.arch.normalization().matches(&half));
    let err = max_diff(&logits(&ens, &Route::default()), &rows(&out["ensemble_logits"]));
    assert!(err < 1e-4, "ensemble: max logit error {err}");
    // A training checkpoint: state dict under 'net', optimiser state and arguments beside it.
    let (one, _) = Model::load(&file("checkpoint"), Device::Cpu).unwrap();
    assert_eq!(one.spec.members, 1);
    let err = max_diff(&logits(&one, &Route::default()), &rows(&out["checkpoint_logits"]));
    assert!(err < 1e-4, "checkpoint: max logit error {err}");
    // Members that normalise differently, and a request against the carried statistics.
    let e = err_text(Model::load(&file("mixed"), Device::Cpu));
    assert!(e.contains("ensemble members normalise differently"), "{e}");
    let e =
        err_text(Model::load_with(&file("ensemble"), Device::Cpu, Some(Normalization::CIFAR10)));
    assert!(e.contains("normalizer buffers carry"), "{e}");
    assert_user_error(
        &[
            "import",
            "--input",
            out["ensemble"].as_str().unwrap(),
            "--mean",
            "0.4914,0.4822,0.4465",
            "--std",
            "0.2023,0.1994,0.2010",
            "--output",
            dir.path().join("x.safetensors").to_str().unwrap(),
        ],
        "normalizer buffers carry normalisation mean 0.5,0.5,0.5",
    );
}

// --- the eio_torch Python package -------------------------------------------------------------

#[test]
fn python_package_logits_equal_eio() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let half = Normalization { mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] };
    let cases: Vec<(&str, ModelSpec, &str)> = vec![
        ("plain", ModelSpec { arch: ArchConfig::plain(), members: 1 }, ""),
        (
            "rgn_all",
            ModelSpec { arch: ArchConfig::rgn(2), members: 1 },
            "0,1,1,0,1,0,0,1,1,0,1,0,1,1,0,0,1,0,1,1,0",
        ),
        (
            "rgn_conv3x3_shared",
            ModelSpec {
                arch: ArchConfig {
                    copies: 3,
                    augment: Augment::Conv3x3,
                    share_conv: true,
                    ..ArchConfig::plain()
                },
                members: 1,
            },
            "2,1,0,1,2,0,0,1,2,2,1,0,1,0,2,1,0,1,2",
        ),
        (
            "rgn_top7_ensemble",
            ModelSpec {
                arch: ArchConfig { augment: Augment::Top(7), ..ArchConfig::rgn(2) },
                members: 2,
            },
            "1,0,1,1,0,1,1",
        ),
        (
            "leaky_ensemble",
            ModelSpec {
                arch: ArchConfig { relu_slope: 0.1, ..ArchConfig::plain() }
                    .with_normalization(half),
                members: 3,
            },
            "",
        ),
        (
            "option_a",
            ModelSpec {
                arch: ArchConfig { shortcut: Shortcut::Identity, ..ArchConfig::plain() }
                    .with_normalization(half),
                members: 1,
            },
            "",
        ),
    ];
    for (i, (name, spec, route)) in cases.into_iter().enumerate() {
        let m = Model::new(&spec, Device::Cpu, Seed(40 + i as u64)).unwrap();
        vary_bn(&m);
        let p = dir.path().join(format!("{name}.safetensors"));
        m.save(&p, TensorFile::default()).unwrap();
        let mut args = vec!["-m", "eio_torch", "logits", p.to_str().unwrap()];
        if !route.is_empty() {
            args.extend(["--route", route]);
        }
        let theirs = rows(&run_python(&py, &args));
        let r: Route = if route.is_empty() { Route::default() } else { route.parse().unwrap() };
        let err = max_diff(&logits(&m, &r), &theirs);
        assert!(err < 1e-4, "{name}: max logit error {err}");
    }
}

/// `Model::recalibrate_batchnorm` against PyTorch's `torch.optim.swa_utils.update_bn` (momentum
/// `None`: each running statistic the plain average of the batches') on one model file and
/// the same three batches; the file's own statistics are far from them, so neither side can
/// pass by keeping them.
#[test]
fn batchnorm_recalibration_matches_pytorch_update_bn() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let spec = ModelSpec { arch: ArchConfig::plain(), members: 2 };
    let m = Model::new(&spec, Device::Cpu, Seed(71)).unwrap();
    vary_bn(&m);
    let p = dir.path().join("m.safetensors");
    m.save(&p, TensorFile::default()).unwrap();
    let x = probe_input(24);
    m.recalibrate_batchnorm(x.split(8, 0)).unwrap();
    let script = format!(
        "import json, torch, eio_torch\n\
         from torch.optim.swa_utils import update_bn\n\
         net = eio_torch.load({p:?})\n\
         update_bn(list(eio_torch.probe_input(24).split(8)), net)\n\
         print(json.dumps({{k: v.flatten().tolist() for k, v in net.state_dict().items()\n\
             if k.endswith(('running_mean', 'running_var'))}}))\n",
        p = p.to_str().unwrap()
    );
    let theirs = run_python(&py, &["-c", &script]);
    let theirs = theirs.as_object().unwrap();
    let ours: Vec<(String, Tensor)> =
        m.vs.variables()
            .into_iter()
            .filter(|(k, _)| k.ends_with("running_mean") || k.ends_with("running_var"))
            .collect();
    assert_eq!(ours.len(), theirs.len());
    assert_eq!(ours.len(), 2 * 2 * 21, "two statistics of 21 BatchNorms per member");
    for (name, t) in &ours {
        let want = Tensor::from_slice(
            &theirs[name]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect::<Vec<_>>(),
        )
        .to_kind(Kind::Float);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        let err = max_diff(t, &want) / scale;
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
}

#[test]
fn python_converter_and_transfer_writer_feed_eio() {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    let out = run_python(&py, &["tests/interop.py", "akamaster", d]);
    // convert: torch.save -> safetensors state dict with the normalisation as buffers.
    let conv = dir.path().join("converted.safetensors");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new(&py)
        .args(["-m", "eio_torch", "convert", out["legacy"].as_str().unwrap()])
        .arg(&conv)
        .args(["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"])
        .env("PYTHONPATH", root.join("python"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let (m, _) = Model::load(&conv, Device::Cpu).unwrap();
    assert_eq!(m.spec.arch.shortcut, Shortcut::Identity);
    let err = max_diff(&logits(&m, &Route::default()), &rows(&out["logits"]));
    assert!(err < 1e-4, "converted: max logit error {err}");
    // write_transfer: a file eio's transfer evaluation reads.
    let tf = dir.path().join("py_eps0.03.safetensors");
    let script = format!(
        "import torch, eio_torch\n\
         x = eio_torch.probe_input(4)\n\
         adv = (x + 0.03 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)\n\
         eio_torch.write_transfer({tf:?}, x, torch.tensor([0, 1, 2, 3]), torch.arange(4),\n\
             [{{'adv': adv, 'attack': 'noise', 'loss': 'ce'}}], surrogate='py', eps=0.03)\n\
         im, lab, idx, vers, meta = eio_torch.read_transfer({tf:?})\n\
         import json; print(json.dumps({{'keys': list(vers), 'n': meta['images']}}))\n",
        tf = tf.to_str().unwrap()
    );
    let back = run_python(&py, &["-c", &script]);
    assert_eq!(back["keys"][0], "adv.noise.ce.0");
    let target = eio::model::Target::fixed_zero(&m);
    let report =
        eio::eval::transfer::transfer_eval(&target, std::slice::from_ref(&tf), 4, Device::Cpu)
            .unwrap();
    assert_eq!(report.images, 4);
    assert!(report.accuracy(0.03).is_some());
}

// --- decoded pixels -----------------------------------------------------------------------------

#[test]
fn decoded_jpeg_pixels_equal_pil() {
    // tests/data/make_pil_fixtures.py: PIL's pixels of the first image of each class, test
    // split then train split. (On all 60,000 shared images eio's and PIL's pixels are equal;
    // before eio decoded like libjpeg-turbo, 21.7% of the values differed, by up to 5 levels.)
    let want = std::fs::read(data("pil/cifar.bin")).unwrap();
    let mut got = Vec::new();
    for split in ["test", "train"] {
        for class in CIFAR10_CLASSES {
            let dir = cifar_jpeg().join(split).join(class);
            let mut files: Vec<PathBuf> =
                std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
            files.sort();
            let (w, h, rgb) = decode_image(&files[0]).unwrap();
            assert_eq!((w, h), (32, 32));
            got.extend(rgb);
        }
    }
    assert!(
        got == want,
        "{} of {} values differ",
        got.iter().zip(&want).filter(|(a, b)| a != b).count(),
        want.len()
    );
    // The data set holds the same pixels (CHW, /255).
    let test = Dataset::load(&cifar_jpeg(), Split::Test, None).unwrap().first_per_class(1);
    let (x, _) = test.tensors();
    let chw = Tensor::from_slice(&want[..10 * 3072]).view([10, 32, 32, 3]).permute([0, 3, 1, 2]);
    assert!(x.equal(&(chw.to_kind(Kind::Float) / 255.0)));
    // Other layouts PIL writes decode alike; progressive files go through the `image` crate.
    for name in ["s444", "s422", "s420_33x17", "gray", "restart", "q95", "progressive"] {
        let (_, _, rgb) = decode_image(&data(&format!("pil/{name}.jpg"))).unwrap();
        let pil = std::fs::read(data(&format!("pil/{name}.rgb"))).unwrap();
        assert_eq!(rgb.len(), pil.len(), "{name}");
        let max = rgb.iter().zip(&pil).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        if name == "progressive" {
            assert!(max <= 8, "{name}: max difference {max}");
        } else {
            assert_eq!(max, 0, "{name}");
        }
    }
}

// --- training steps against the published code's loops --------------------------------------

/// The batch size of the reference steps (`N_STEP` in tests/interop.py).
const N_STEP: i64 = 4;

/// Where in a run the reference steps are.
fn step_at() -> StepAt {
    StepAt { epoch: 1, step: 0, seed: Seed(0) }
}

/// `step_noise` of tests/interop.py: the fixed stand-in for a step's random draw.
fn step_noise(n: i64, scale: f64, offset: f64) -> Tensor {
    let i = Tensor::arange(n * 3072, (Kind::Double, Device::Cpu));
    ((i * 104729.0).fmod(997.0) / 997.0 + offset).view([n, 3, 32, 32]) * scale
}

/// One step of `method` in float64 on a model of `spec` and the probe batch of [`N_STEP`]
/// (`draws`: its random tensors), against `tests/interop.py step MODEL --method METHOD args..`
/// (the method's published code, as it runs a step): loss and terms, every parameter's
/// gradient and the BatchNorm running statistics after the step (which check the number and
/// order of train-mode forwards).
fn step_matches_reference(
    method: &mut dyn Method,
    spec: ModelSpec,
    args: &[&str],
    draws: Vec<Tensor>,
) {
    let Some(py) = python() else { return };
    let dir = tempdir();
    let mut m = Model::new(&spec, Device::Cpu, Seed(9)).unwrap();
    vary_bn(&m);
    let p = dir.path().join("model.safetensors");
    m.save(&p, TensorFile::default()).unwrap();
    let mut py_args =
        vec!["tests/interop.py", "step", p.to_str().unwrap(), "--method", method.name()];
    py_args.extend(args);
    let want = run_python(&py, &py_args);

    m.vs.double();
    let n = N_STEP;
    let x = probe_input(n as usize).to_kind(Kind::Double);
    let y = Tensor::from_slice(&(0..n).map(|i| (3 * i) % 10).collect::<Vec<i64>>());
    let target = method.needs_target().then(|| (step_noise(n, 1.0, 0.0), y.zeros_like()));
    let mut batch = Batch::new(x, y, target);
    batch.draws = draws;
    let stats = method.step(&m, &batch, step_at()).unwrap();

    let what = format!("{} {args:?}", method.name());
    let close = |got: f64, want: f64, term: &str| {
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{what}, {term}: eio {got} vs reference {want}"
        );
    };
    close(stats.loss.double_value(&[]), want["loss"].as_f64().unwrap(), "loss");
    let terms = want["terms"].as_object().unwrap();
    let mut names: Vec<&str> = stats.terms.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    assert_eq!(names, terms.keys().map(String::as_str).collect::<Vec<_>>(), "{what}: terms");
    for (name, t) in &stats.terms {
        close(t.double_value(&[]), terms[*name].as_f64().unwrap(), name);
    }
    let vars = m.vs.variables();
    let running = vars.keys().filter(|k| k.contains("running")).count();
    let with_grad = m.vs.trainable_variables().iter().filter(|v| v.grad().defined()).count();
    for (key, grad, count) in [("grads", true, with_grad), ("stats", false, running)] {
        let want = want[key].as_object().unwrap();
        assert_eq!(want.len(), count, "{what}: {key}");
        for (name, values) in want {
            let t = if grad { vars[name].grad() } else { vars[name].shallow_clone() };
            let got = floats(&t.flatten(0, -1).narrow(0, 0, t.numel().min(16) as i64));
            let values: Vec<f64> = serde_json::from_value(values.clone()).unwrap();
            assert_eq!(got.len(), values.len(), "{what}, {key} {name}");
            for (g, w) in got.iter().zip(&values) {
                assert!(
                    (g - w).abs() <= 1e-7 * w.abs().max(1e-3),
                    "{what}, {key} {name}: eio {got:?} vs reference {values:?}"
                );
            }
        }
    }
}

/// TRS at eps 0.125 (epoch 1 of 4), with the vicinity PGD along the summed gradients (the
/// code's) and along each step's own gradient (`--no-accumulate` there).
#[test]
fn trs_step_matches_the_published_loop() {
    use eio::train::trs::{Trs, TrsConfig};
    for accumulate in [true, false] {
        let mut trs = Trs::new(TrsConfig { accumulate, ..TrsConfig::default() }, 4).unwrap();
        let args: &[&str] =
            if accumulate { &["--eps", "0.125"] } else { &["--eps", "0.125", "--no-accumulate"] };
        step_matches_reference(
            &mut trs,
            three(ArchConfig::plain()),
            args,
            vec![step_noise(N_STEP / 2, 1.0, 0.0)],
        );
    }
}

/// The +AdvT terms' PGD start (`adv_start` in tests/interop.py).
fn adv_start() -> Tensor {
    step_noise(N_STEP, 1.0, 0.0).roll([1], [0])
}

/// GAL (leaky ReLU 0.1) with Gaussian-noise augmentation on the first half of the batch, and
/// GAL+AdvT.
#[test]
fn gal_step_matches_the_published_loop() {
    use eio::train::adv::AdvTerm;
    use eio::train::gal::{Gal, GalConfig};
    for adv in [false, true] {
        let mut gal =
            Gal::new(GalConfig { adv: adv.then(AdvTerm::default), ..GalConfig::default() })
                .unwrap();
        let first_half = Tensor::arange(N_STEP, (Kind::Double, Device::Cpu))
            .lt(N_STEP / 2)
            .to_kind(Kind::Double);
        let mut draws = vec![step_noise(N_STEP, 0.09, -0.5) * first_half.view([N_STEP, 1, 1, 1])];
        draws.extend(adv.then(adv_start));
        let arch = ArchConfig { relu_slope: 0.1, ..ArchConfig::plain() };
        let args: &[&str] = if adv { &["--adv"] } else { &[] };
        step_matches_reference(&mut gal, three(arch), args, draws);
    }
}

/// ADP and ADP+AdvT.
#[test]
fn adp_step_matches_the_published_loop() {
    use eio::train::adp::{Adp, AdpConfig};
    use eio::train::adv::AdvTerm;
    for adv in [false, true] {
        let mut adp =
            Adp::new(AdpConfig { adv: adv.then(AdvTerm::default), ..AdpConfig::default() })
                .unwrap();
        let args: &[&str] = if adv { &["--adv"] } else { &[] };
        let draws = adv.then(adv_start).into_iter().collect();
        step_matches_reference(&mut adp, three(ArchConfig::plain()), args, draws);
    }
}

fn three(arch: ArchConfig) -> ModelSpec {
    ModelSpec { arch, members: 3 }
}

/// DVERGE at distillation layers 9 (a block's output, through a projection shortcut) and 4 (a
/// block's first BatchNorm), and DVERGE+AdvT (PGD 8/255 against each member from the starts
/// given) at layer 9.
#[test]
fn dverge_step_matches_the_published_loop() {
    use eio::train::adv::AdvTerm;
    use eio::train::dverge::{Dverge, DvergeConfig};
    for (layer, adv) in [(9, false), (4, false), (9, true)] {
        let cfg = DvergeConfig {
            layer: Some(layer),
            adv: adv.then(AdvTerm::default),
            ..DvergeConfig::default()
        };
        let l = layer.to_string();
        let mut args = vec!["--layer", l.as_str()];
        let mut starts = Vec::new();
        if adv {
            args.push("--adv");
            starts = (1..=3).map(|i| step_noise(N_STEP, 1.0, 0.0).roll([i], [0])).collect();
        }
        step_matches_reference(
            &mut Dverge::new(cfg).unwrap(),
            three(ArchConfig::plain()),
            &args,
            starts,
        );
    }
}

/// PGD adversarial training of one network and of an ensemble attacked as a whole.
#[test]
fn adversarial_training_step_matches_the_published_loop() {
    use eio::train::adv::{AdvTerm, AdvTrain};
    for members in [1, 3] {
        let mut adv = AdvTrain::new(AdvTerm::default()).unwrap();
        let spec = ModelSpec { arch: ArchConfig::plain(), members };
        step_matches_reference(&mut adv, spec, &[], vec![step_noise(N_STEP, 1.0, 0.0)]);
    }
}

/// Ensemble-in-One's diversification through the engine on given paths of an RGN (its own step
/// draws them), for the reference test.
struct EioPaths {
    plan: eio::train::diversify::Plan,
    adv: Option<(eio::train::adv::AdvTerm, Vec<Tensor>)>,
}

impl Method for EioPaths {
    fn name(&self) -> &'static str {
        "eio"
    }
    fn needs_target(&self) -> bool {
        true
    }
    fn step(
        &mut self,
        model: &Model,
        batch: &Batch,
        at: StepAt,
    ) -> eio::error::Result<eio::train::StepStats> {
        let adv = self.adv.as_ref().map(|(a, s)| (a, Some(s.as_slice())));
        let x_t = &batch.target.as_ref().unwrap().0;
        let p = self.plan.branches.len() as f64;
        let cfg = eio::distill::DistillConfig::eio();
        Ok(eio::train::diversify::step(
            model, &self.plan, &cfg, adv, &batch.x, &batch.y, x_t, at, p,
        ))
    }
}

/// An EIO step (eval-mode distillation from a random start, features after the ReLU, terms
/// divided by the number of paths) at layers 1 (the stem, before its ReLU in the code's
/// numbering) and 9, and with the adversarial term (EIO+AdvT, Eq. 5) at 9, against the EIO
/// code's loop on the same paths and starts.
#[test]
fn eio_step_matches_the_published_loop() {
    use eio::train::adv::AdvTerm;
    use eio::train::diversify::{distill_rng, Plan};
    let dir = tempdir();
    let routes: Vec<Route> = (0..3)
        .map(|p| (0..21).map(|g| ((g * 7 + g / (p + 2)) % 2).to_string()).collect::<Vec<_>>())
        .map(|r| r.join(",").parse().unwrap())
        .collect();
    assert!(routes[0] != routes[1] && routes[1] != routes[2] && routes[0] != routes[2]);
    let x = probe_input(N_STEP as usize).to_kind(Kind::Double);
    for (layer, adv) in [(1, false), (9, false), (9, true)] {
        let mut starts: Vec<(String, Tensor)> = (0..3)
            .map(|i| {
                (
                    format!("distill{i}"),
                    eio::attack::uniform_like(&x, &mut distill_rng(step_at(), i)),
                )
            })
            .collect();
        let adv_starts: Vec<Tensor> =
            (1..=3).map(|i| step_noise(N_STEP, 1.0, 0.0).roll([i], [0])).collect();
        if adv {
            starts.extend(
                adv_starts.iter().enumerate().map(|(i, t)| (format!("adv{i}"), t.shallow_clone())),
            );
        }
        let file = dir.path().join(format!("starts-{layer}-{adv}.safetensors"));
        Tensor::write_safetensors(&starts, &file).unwrap();
        let plan = Plan {
            layer,
            branches: routes
                .iter()
                .map(|r| eio::model::Branch { member: 0, route: r.clone() })
                .collect(),
        };
        let mut method = EioPaths { plan, adv: adv.then(|| (AdvTerm::default(), adv_starts)) };
        let l = layer.to_string();
        let r: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
        let r = r.join(";");
        let args =
            ["--layer", l.as_str(), "--routes", r.as_str(), "--starts", file.to_str().unwrap()];
        let spec = ModelSpec { arch: ArchConfig::rgn(2), members: 1 };
        step_matches_reference(&mut method, spec, &args, Vec::new());
    }
}
