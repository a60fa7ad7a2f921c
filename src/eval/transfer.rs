/*!
Black-box transfer evaluation (Ensemble-in-One Sec. 4.1, DVERGE `eval/eval_bbox.py`).

1. [`transfer_gen`] crafts adversarial examples on surrogate models (the paper: baseline
   ensembles of 3, 5 and 8 ResNet-20s) with every attack x loss x eps of a
   [`TransferGenConfig`], each restart of an attack a version of its own (the paper's suite,
   [`AttackConfig::paper_transfer_suite`]: momentum PGD from 3 random starts; M-DI2-FGSM with
   p = 0.5; SGM with gamma = 0.2; CE and CW losses; 100 steps of eps/5; eps 0.01..0.07: 10
   versions per surrogate, 30 per image and eps) and stores them, one safetensors file per
   (surrogate, eps).
2. [`transfer_eval`] reads such files and reports, for a target, the clean accuracy and per eps
   the fraction of images classified correctly clean and on ALL versions; also per attack and
   per source (surrogate, attack, loss).

File layout (`<out_dir>/<surrogate>_eps<eps>.safetensors`):

| tensor | shape, kind | content |
|---|---|---|
| `images` | `[N,3,32,32]` u8 | the clean images (exact) |
| `labels` | `[N]` i64 | true labels |
| `index` | `[N]` i64 | index of each image in the source split |
| `adv.<attack>.<loss>.<restart>` | `[N,3,32,32]` f32 | one adversarial version (exact f32) |

The metadata key `eio.transfer` holds a JSON [`TransferFile`] (surrogate, eps, seed, and per
version its attack, loss, restart, full [`AttackConfig`] and the surrogate's own fooling rate);
`eio.transfer.plan` identifies what was asked for, so an interrupted generation resumes by
skipping the files already complete, and, within a file, the versions already made (each is
saved under `<out_dir>/.partial/` as soon as it is made). Files written before attacks were
[`AttackConfig`]s hold a bare `PgdConfig` per version; they read as `AttackConfig::Pgd`, and
their plans still match.
*/

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::aggregate::{all_or_nothing, fraction};
use super::report::{csv_field, Report};
use super::run::{attack_and_judge, clean_correct};
use super::whitebox::paper_eps;
use crate::attack::{AttackConfig, AttackLoss, PgdConfig};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::io::{read_header, TensorFile};
use crate::model::Classifier;
use crate::progress::Progress;
use crate::seed::Seed;

/// Metadata key of the JSON [`TransferFile`].
pub const TRANSFER_KEY: &str = "eio.transfer";
/// Metadata key of the generation plan (resume check).
pub const PLAN_KEY: &str = "eio.transfer.plan";

/// A model with a name (surrogate, ensemble member, route).
pub struct Named<'a> {
    /// Name used in file names, metadata and reports.
    pub name: String,
    /// The model.
    pub target: &'a dyn Classifier,
}

impl<'a> Named<'a> {
    /// Pairs `name` with `target`.
    pub fn new(name: impl Into<String>, target: &'a dyn Classifier) -> Self {
        Named { name: name.into(), target }
    }
}

/// Transfer-set generation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferGenConfig {
    /// Radii (default 0.01..=0.07 step 0.01).
    pub eps: Vec<f64>,
    /// Losses; each attack runs with each of them in place of its own (default `ce` and `cw`
    /// with confidence 0.1).
    pub losses: Vec<AttackLoss>,
    /// The attacks at unit radius, scaled to each eps; each restart is stored as a version, so
    /// names must be distinct (default the paper's suite,
    /// [`AttackConfig::paper_transfer_suite`] at eps 1).
    pub attacks: Vec<AttackConfig>,
    /// Images per batch (default 500).
    pub batch: usize,
}

impl Default for TransferGenConfig {
    fn default() -> Self {
        TransferGenConfig {
            eps: paper_eps(),
            losses: vec![AttackLoss::CrossEntropy, AttackLoss::cw()],
            attacks: AttackConfig::paper_transfer_suite(1.0),
            batch: 500,
        }
    }
}

/// One adversarial version stored in a transfer file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferVersion {
    /// Tensor name (`adv.<attack>.<loss>.<restart>`).
    pub key: String,
    /// Attack family name.
    pub attack: String,
    /// Loss.
    pub loss: AttackLoss,
    /// Restart number (0 for single-version attacks).
    pub restart: usize,
    /// The exact attack settings of this version (one run).
    #[serde(deserialize_with = "stored_attack")]
    pub config: AttackConfig,
    /// Fraction of images that fool the surrogate itself (absent in plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub surrogate_fooled: Option<f64>,
}

/// Reads a version's attack: an [`AttackConfig`], or the bare `PgdConfig` of files written before
/// attacks were `AttackConfig`s.
fn stored_attack<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<AttackConfig, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Any(AttackConfig),
        Pgd(PgdConfig),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Any(a) => a,
        Stored::Pgd(p) => AttackConfig::Pgd(p),
    })
}

/// What a transfer file holds (its `eio.transfer` metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferFile {
    /// Surrogate name.
    pub surrogate: String,
    /// Radius of every version.
    pub eps: f64,
    /// Master seed.
    pub seed: u64,
    /// Number of images.
    pub images: usize,
    /// The stored versions.
    pub versions: Vec<TransferVersion>,
}

impl TransferGenConfig {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<()> {
        if self.eps.is_empty() || self.losses.is_empty() || self.attacks.is_empty() {
            return Err(Error::config("transfer generation needs eps, losses and attacks"));
        }
        if self.batch == 0 {
            return Err(Error::config("batch must be at least 1"));
        }
        for (i, a) in self.attacks.iter().enumerate() {
            a.validate()?;
            if self.attacks[..i].iter().any(|b| b.name() == a.name()) {
                return Err(Error::config(format!(
                    "two transfer attacks are named {}: their versions would share tensor names",
                    a.name()
                )));
            }
        }
        for &eps in &self.eps {
            for v in self.versions(eps) {
                v.config.validate()?;
            }
        }
        Ok(())
    }

    /// The versions made at `eps` (attacks x losses x restarts), in storage order.
    pub fn versions(&self, eps: f64) -> Vec<TransferVersion> {
        let mut out = Vec::new();
        for a in &self.attacks {
            for &loss in &self.losses {
                let run = a.at_eps(eps).with_loss(loss).with_restarts(1);
                for r in 0..a.restarts() {
                    out.push(TransferVersion {
                        key: format!("adv.{}.{}.{}", a.name(), loss, r),
                        attack: a.name().to_string(),
                        loss,
                        restart: r,
                        config: run.clone(),
                        surrogate_fooled: None,
                    });
                }
            }
        }
        out
    }
}

/// What a transfer file was made to hold (its `eio.transfer.plan` metadata). A rerun keeps a file
/// whose plan equals the new one; comparing parsed plans, not their text, lets the plans of
/// older files (bare `PgdConfig`s) match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Plan {
    surrogate: String,
    /// The surrogate's [`Classifier::identity`] (its weights), so that a rerun with another model
    /// under the same name does not keep this one's examples. Absent in files written before it
    /// was recorded (see [`Plan::keeps`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    eps: f64,
    seed: u64,
    images: usize,
    /// [`fingerprint`] of the images, as a decimal string.
    fingerprint: String,
    versions: Vec<TransferVersion>,
}

impl Plan {
    /// True when a file made with the plan `saved` holds what this plan asks for: the same plan,
    /// or one written before surrogates were identified that matches in everything else (such a
    /// file cannot tell which model made it; it is kept, as it was before).
    fn keeps(&self, saved: &Plan) -> bool {
        saved == self || (saved.model.is_none() && *saved == Plan { model: None, ..self.clone() })
    }
}

/// One file written (or found complete) by [`transfer_gen`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferFileReport {
    /// The file.
    pub path: PathBuf,
    /// True when it already existed with the same plan and was kept.
    pub skipped: bool,
    /// Its contents.
    pub file: TransferFile,
}

/// Result of [`transfer_gen`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferGenReport {
    /// Images per version.
    pub images: usize,
    /// The files, per surrogate and eps.
    pub files: Vec<TransferFileReport>,
    /// The settings.
    pub config: TransferGenConfig,
    /// Master seed.
    pub seed: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl Report for TransferGenReport {
    fn to_csv(&self) -> String {
        let mut s = String::from("surrogate,eps,attack,loss,restart,surrogate_fooled,file\n");
        for f in &self.files {
            for v in &f.file.versions {
                s += &format!(
                    "{},{},{},{},{},{},{}\n",
                    csv_field(&f.file.surrogate),
                    f.file.eps,
                    v.attack,
                    csv_field(&v.loss.to_string()),
                    v.restart,
                    v.surrogate_fooled.map(|x| format!("{x:.6}")).unwrap_or_default(),
                    csv_field(&f.path.display().to_string())
                );
            }
        }
        s
    }
}

/// A file-name-safe version of `name`.
fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect()
}

/// Reads only the `__metadata__` of a safetensors file (not its tensors); a file cut short or
/// otherwise damaged is an error (see [`read_header`]).
pub fn read_metadata(path: &Path) -> Result<BTreeMap<String, String>> {
    let header = read_header(path)?;
    let mut out = BTreeMap::new();
    if let Some(m) = header.get("__metadata__").and_then(|m| m.as_object()) {
        for (k, v) in m {
            if let Some(s) = v.as_str() {
                out.insert(k.clone(), s.to_string());
            }
        }
    }
    Ok(out)
}

/// A stable fingerprint of the chosen images (FNV-1a over indices and labels).
fn fingerprint(index: &[usize], labels: &[u8]) -> u64 {
    let mut h = crate::seed::FNV1A_START;
    for (&i, &l) in index.iter().zip(labels) {
        h = crate::seed::fnv1a(h, &(i as u64).to_le_bytes());
        h = crate::seed::fnv1a(h, &[l]);
    }
    h
}

/// Crafts the transfer set: for every surrogate and eps, every version of `cfg` on the images
/// `index` of `data` (e.g. the test split), written to `out_dir` (see the module docs for the
/// layout). Files that already exist with the same plan are kept (resume). Version `v` of
/// surrogate `s` at eps `e`, batch `b`, is seeded from `seed` with the label
/// `transfer/<s>/eps=<e>/<key of v>`.
pub fn transfer_gen(
    surrogates: &[Named],
    data: &Dataset,
    index: &[usize],
    cfg: &TransferGenConfig,
    out_dir: &Path,
    device: Device,
    seed: Seed,
) -> Result<TransferGenReport> {
    transfer_gen_with(surrogates, data, index, cfg, out_dir, device, seed, false)
}

/// [`transfer_gen`]; a file in `out_dir` made with other settings (another plan) is an error
/// unless `force`, which replaces it.
#[allow(clippy::too_many_arguments)]
pub fn transfer_gen_with(
    surrogates: &[Named],
    data: &Dataset,
    index: &[usize],
    cfg: &TransferGenConfig,
    out_dir: &Path,
    device: Device,
    seed: Seed,
    force: bool,
) -> Result<TransferGenReport> {
    cfg.validate()?;
    crate::validate::check_classes(data)?;
    if surrogates.is_empty() {
        return Err(Error::config("transfer generation needs at least one surrogate"));
    }
    if let Some(s) = surrogates.iter().find(|s| s.name.trim().is_empty()) {
        return Err(Error::config(format!(
            "surrogate name '{}' is empty: name each surrogate (NAME=FILE)",
            s.name
        )));
    }
    crate::fsx::check_dir_writable(out_dir)?;
    let _lock = crate::fsx::RunLock::acquire(out_dir)?;
    crate::fsx::clean_stale_temps(out_dir)?;
    if let Some(&bad) = index.iter().find(|&&i| i >= data.len()) {
        return Err(Error::config(format!(
            "image index {bad} out of range (data has {})",
            data.len()
        )));
    }
    let mut stems: Vec<String> = surrogates.iter().map(|s| file_stem(&s.name)).collect();
    stems.sort();
    stems.dedup();
    if stems.len() != surrogates.len() {
        return Err(Error::config("surrogate names must be distinct (after file-name cleaning)"));
    }
    let start = Instant::now();
    let subset = data.select(index);
    let (x, y) = subset.tensors();
    let n = subset.len();
    let images_u8 = (&x * 255.0).round().to_kind(Kind::Uint8);
    let index_t = Tensor::from_slice(&index.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let all: Vec<i64> = (0..n as i64).collect();
    let print = fingerprint(index, subset.labels());

    let per_file = cfg.versions(cfg.eps[0]).len();
    let total = (surrogates.len() * cfg.eps.len() * per_file * n) as u64;
    let mut progress = Progress::new(total, "transfer-gen");
    let mut pos = 0u64;
    let mut files = Vec::new();
    let mut jobs = Vec::new();
    for s in surrogates {
        let model = s.target.identity();
        for &eps in &cfg.eps {
            let path = out_dir.join(format!("{}_eps{eps}.safetensors", file_stem(&s.name)));
            let plan = Plan {
                surrogate: s.name.clone(),
                model: model.clone(),
                eps,
                seed: seed.0,
                images: n,
                fingerprint: print.to_string(),
                versions: cfg.versions(eps),
            };
            // Before any work: a file made with other settings is replaced only with `force`.
            if path.exists() && !force {
                let planned = match read_metadata(&path) {
                    Ok(m) => m.get(PLAN_KEY).and_then(|j| serde_json::from_str::<Plan>(j).ok()),
                    Err(e) => {
                        return Err(Error::data(
                            &path,
                            format!(
                                "already exists but cannot be read ({}): pass --force to replace \
                                 it, or use another --out folder",
                                e.detail()
                            ),
                        ))
                    }
                };
                if !planned.is_some_and(|p| plan.keeps(&p)) {
                    return Err(Error::data(
                        &path,
                        "already exists, made with other settings (surrogate model, images, seed \
                         or attacks): pass --force to replace it, or use another --out folder",
                    ));
                }
            }
            jobs.push((s, eps, path, plan));
        }
    }
    for (s, eps, path, plan) in jobs {
        {
            let versions = plan.versions.clone();
            // Only `force` gets here with a file that cannot be read: it is replaced.
            if let Ok(meta) = read_metadata(&path) {
                let planned = meta.get(PLAN_KEY).and_then(|j| serde_json::from_str::<Plan>(j).ok());
                if planned.is_some_and(|p| plan.keeps(&p)) {
                    if let Some(file) =
                        meta.get(TRANSFER_KEY).and_then(|j| serde_json::from_str(j).ok())
                    {
                        pos += (versions.len() * n) as u64;
                        progress.skip_to(pos);
                        progress.update(pos, &format!("{} eps {eps}: kept", s.name));
                        files.push(TransferFileReport { path, skipped: true, file });
                        continue;
                    }
                }
            }
            let mut out = transfer_header(&images_u8, &y, &index_t);
            let mut done_versions = Vec::new();
            let partial = Partial::dir(out_dir, &path);
            for mut v in versions {
                let label = format!("transfer/{}/eps={eps}/{}", s.name, v.key);
                let msg = format!("{} eps {eps} {}", s.name, v.key);
                let made = Partial { plan: &plan, key: &v.key };
                if let Some((adv, fooled)) = made.read(&partial, n) {
                    out.tensors.insert(v.key.clone(), adv);
                    v.surrogate_fooled = Some(fooled);
                    done_versions.push(v);
                    pos += n as u64;
                    progress.skip_to(pos);
                    progress.update(pos, &format!("{msg}: made before"));
                    continue;
                }
                let judged = attack_and_judge(
                    &v.config,
                    s.target,
                    &[s.target],
                    (&x, &y),
                    &all,
                    cfg.batch,
                    device,
                    (seed, &label),
                    true,
                    |k| {
                        pos += k as u64;
                        progress.update(pos, &msg);
                    },
                )?;
                let adv = judged.adv.expect("kept").to_kind(Kind::Float);
                let fooled = 1.0 - fraction(&judged.correct[0]);
                made.write(&partial, &adv, fooled)?;
                out.tensors.insert(v.key.clone(), adv);
                v.surrogate_fooled = Some(fooled);
                done_versions.push(v);
            }
            let file = TransferFile {
                surrogate: s.name.clone(),
                eps,
                seed: seed.0,
                images: n,
                versions: done_versions,
            };
            out.meta.insert(PLAN_KEY.into(), serde_json::to_string(&plan).expect("serialises"));
            write_transfer(out, &file, &path)?;
            Partial::remove(out_dir, &partial)?;
            files.push(TransferFileReport { path, skipped: false, file });
        }
    }
    progress.finish();
    Ok(TransferGenReport {
        images: n,
        files,
        config: cfg.clone(),
        seed: seed.0,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Checks what a transfer file stores before it is scored: labels in range, the metadata
/// consistent with the file (image count, one eps for the file, its plan and every version), and
/// every adversarial version finite, in [0, 1] and within eps of the clean images.
fn check_stored(
    path: &Path,
    tf: &TensorFile,
    meta: &TransferFile,
    x: &Tensor,
    labels: &Tensor,
    n: i64,
) -> Result<()> {
    let bad = |msg: String| Err(Error::data(path, msg));
    if !matches!(labels.kind(), Kind::Int64 | Kind::Int | Kind::Uint8 | Kind::Int8) {
        return bad(format!("labels have kind {:?}, expected integers", labels.kind()));
    }
    if n > 0 {
        let (lo, hi) = (labels.min().int64_value(&[]), labels.max().int64_value(&[]));
        if lo < 0 || hi >= crate::model::NUM_CLASSES as i64 {
            return bad(format!(
                "labels range over {lo}..={hi}, expected 0..={}",
                crate::model::NUM_CLASSES - 1
            ));
        }
    }
    if meta.images as i64 != n {
        return bad(format!("metadata says {} images, the file holds {n}", meta.images));
    }
    if !meta.eps.is_finite() || meta.eps < 0.0 {
        return bad(format!("metadata eps {} is not a radius", meta.eps));
    }
    let plan = tf.meta.get(PLAN_KEY).and_then(|j| serde_json::from_str::<Plan>(j).ok());
    if let Some(p) = plan.filter(|p| p.eps != meta.eps || p.images != meta.images) {
        return bad(format!(
            "metadata contradicts itself: eps {} and {} images, but its plan says eps {} and {} \
             images",
            meta.eps, meta.images, p.eps, p.images
        ));
    }
    for v in &meta.versions {
        let e = crate::attack::Attack::eps(&v.config);
        if (e - meta.eps).abs() > 1e-9 {
            return bad(format!(
                "version '{}' was made at eps {e}, but the file says eps {}",
                v.key, meta.eps
            ));
        }
        let Some(adv) = tf.tensors.get(&v.key) else {
            return bad(format!("missing tensor '{}'", v.key));
        };
        if adv.size() != x.size() {
            return bad(format!("tensor '{}' has shape {:?}", v.key, adv.size()));
        }
        let adv = adv.to_kind(Kind::Float);
        if n == 0 {
            continue;
        }
        if adv.isfinite().all().int64_value(&[]) == 0 {
            return bad(format!("tensor '{}' holds NaN or infinite values", v.key));
        }
        let (lo, hi) = (adv.min().double_value(&[]), adv.max().double_value(&[]));
        if lo < 0.0 || hi > 1.0 {
            return bad(format!("tensor '{}' has pixels in [{lo}, {hi}], expected [0,1]", v.key));
        }
        // The clean images are stored as u8: a writer that attacked unrounded images may be
        // half a grey level further from the stored ones.
        let dist = (&adv - x).abs().max().double_value(&[]);
        if dist > meta.eps + 0.5 / 255.0 + 1e-6 {
            return bad(format!(
                "tensor '{}' lies {dist:.6} from the clean images, outside the eps {} ball",
                v.key, meta.eps
            ));
        }
    }
    Ok(())
}

/// One version of a transfer file saved on its own as soon as it is made
/// (`<out_dir>/.partial/<file stem>/<key>.safetensors`: tensor `adv`, the file's plan and the
/// surrogate's fooling rate in the metadata), so that an interrupted generation loses at most
/// the version in progress. The finished file replaces them. A version is taken from here only
/// when its file's plan (surrogate, eps, seed, images, every version's attack) is the one asked
/// for; each version is seeded by its own label, so a resumed file equals an uninterrupted one.
struct Partial<'a> {
    plan: &'a Plan,
    key: &'a str,
}

/// Metadata key of a saved version's fooling rate.
const PARTIAL_FOOLED_KEY: &str = "eio.transfer.fooled";

impl Partial<'_> {
    /// The folder of the saved versions of the transfer file `path` in `out_dir`.
    fn dir(out_dir: &Path, path: &Path) -> PathBuf {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        out_dir.join(".partial").join(stem)
    }

    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.safetensors", self.key))
    }

    /// The saved version (images, fooling rate), if there is one made for this plan with `n`
    /// images. A saved version that does not read (or not for this plan) is made again.
    fn read(&self, dir: &Path, n: usize) -> Option<(Tensor, f64)> {
        let path = self.path(dir);
        if !path.is_file() {
            return None;
        }
        let found = TensorFile::read(&path).ok().and_then(|mut f| {
            let plan: Plan = serde_json::from_str(f.meta.get(PLAN_KEY)?).ok()?;
            let fooled: f64 = f.meta.get(PARTIAL_FOOLED_KEY)?.parse().ok()?;
            let adv = f.tensors.remove("adv")?;
            let shape_ok = adv.size() == [n as i64, 3, 32, 32] && adv.kind() == Kind::Float;
            (plan == *self.plan && shape_ok).then_some((adv, fooled))
        });
        if found.is_none() {
            eprintln!("{}: not from this plan or unreadable; made again", path.display());
        }
        found
    }

    /// Saves `adv` (the version's images) and `fooled` (atomically).
    fn write(&self, dir: &Path, adv: &Tensor, fooled: f64) -> Result<()> {
        let mut f = TensorFile::default();
        f.tensors.insert("adv".into(), adv.shallow_clone());
        f.meta.insert(PLAN_KEY.into(), serde_json::to_string(self.plan).expect("serialises"));
        // Rust prints an f64 with the fewest digits that read back to the same value.
        f.meta.insert(PARTIAL_FOOLED_KEY.into(), fooled.to_string());
        f.write(&self.path(dir))
    }

    /// Removes the saved versions of a finished file (and `.partial` when nothing is left).
    fn remove(out_dir: &Path, dir: &Path) -> Result<()> {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dir, e)),
        }
        // Fails, as it should, while other files' versions are there.
        let _ = std::fs::remove_dir(out_dir.join(".partial"));
        Ok(())
    }
}

/// The tensors every transfer file starts with: the clean images as exact u8, their labels and
/// their indices in the source split.
fn transfer_header(images_u8: &Tensor, labels: &Tensor, index: &Tensor) -> TensorFile {
    let mut out = TensorFile::default();
    out.tensors.insert("images".into(), images_u8.shallow_clone());
    out.tensors.insert("labels".into(), labels.shallow_clone());
    out.tensors.insert("index".into(), index.shallow_clone());
    out
}

/// Adds `file` as the metadata of `out` (header plus versions) and writes it to `path`.
fn write_transfer(mut out: TensorFile, file: &TransferFile, path: &Path) -> Result<()> {
    out.meta.insert(TRANSFER_KEY.into(), serde_json::to_string(file).expect("serialises"));
    out.meta.insert("eio.version".into(), env!("CARGO_PKG_VERSION").into());
    out.write(path)
}

/// Writes adversarial examples made elsewhere (e.g. the white-box protocol's, one version per
/// file) as a transfer file, so `transfer_eval` and Python readers take them like a transfer
/// set: `data`'s images at `index` (clean), and `versions` (key, `[N,3,32,32]` f32 images)
/// described by `file`.
pub fn save_examples(
    path: &Path,
    data: &Dataset,
    index: &[usize],
    file: &TransferFile,
    versions: Vec<(String, Tensor)>,
) -> Result<()> {
    let subset = data.select(index);
    let (x, y) = subset.tensors();
    let images_u8 = (&x * 255.0).round().to_kind(Kind::Uint8);
    let index_t = Tensor::from_slice(&index.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let mut out = transfer_header(&images_u8, &y, &index_t);
    for (k, t) in versions {
        out.tensors.insert(k, t.to_device(Device::Cpu).to_kind(Kind::Float));
    }
    write_transfer(out, file, path)
}

/// The `.safetensors` files of a transfer-set folder, sorted by name.
pub fn transfer_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::data(dir, "no .safetensors transfer files in this folder"));
    }
    Ok(out)
}

/// Black-box accuracy of one group of versions at one eps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferEvalRow {
    /// Radius.
    pub eps: f64,
    /// Surrogate of the versions (`None`: all surrogates).
    pub surrogate: Option<String>,
    /// Attack family (`None`: all attacks).
    pub attack: Option<String>,
    /// Loss (`None`: all losses).
    pub loss: Option<String>,
    /// Number of versions combined.
    pub versions: usize,
    /// Fraction of images correct clean and on every version of the group.
    pub robust_accuracy: f64,
}

/// Result of [`transfer_eval`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferEvalReport {
    /// Images per version.
    pub images: usize,
    /// Clean accuracy on those images.
    pub clean_accuracy: f64,
    /// Per eps: first the overall row (all surrogates, attacks and losses), then one row per
    /// attack family, then one per (surrogate, attack, loss) source.
    pub rows: Vec<TransferEvalRow>,
    /// The transfer files read.
    pub files: Vec<PathBuf>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl TransferEvalReport {
    /// The overall black-box accuracy at `eps`.
    pub fn accuracy(&self, eps: f64) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| {
                r.eps == eps && r.surrogate.is_none() && r.attack.is_none() && r.loss.is_none()
            })
            .map(|r| r.robust_accuracy)
    }
}

impl Report for TransferEvalReport {
    fn to_csv(&self) -> String {
        let mut s = String::from(
            "eps,surrogate,attack,loss,versions,images,clean_accuracy,robust_accuracy\n",
        );
        let all = |o: &Option<String>| csv_field(o.as_deref().unwrap_or("all"));
        for r in &self.rows {
            s += &format!(
                "{},{},{},{},{},{},{:.6},{:.6}\n",
                r.eps,
                all(&r.surrogate),
                all(&r.attack),
                all(&r.loss),
                r.versions,
                self.images,
                self.clean_accuracy,
                r.robust_accuracy
            );
        }
        s
    }
}

type Group = (Option<String>, Option<String>, Option<String>);
/// Correctness rows (clean first) per group, for one eps.
type Groups = BTreeMap<Group, Vec<Vec<bool>>>;

/// Evaluates `target` on the transfer files `files` (all made from the same images; see
/// [`transfer_files`]). Needs no seed for a deterministic target; a random-route target is
/// judged with one random forward per image and version.
pub fn transfer_eval(
    target: &dyn Classifier,
    files: &[PathBuf],
    batch: usize,
    device: Device,
) -> Result<TransferEvalReport> {
    if files.is_empty() {
        return Err(Error::config("no transfer files to evaluate"));
    }
    let start = Instant::now();
    // (eps, group) -> correctness rows.
    let mut groups: Vec<(f64, Groups)> = Vec::new();
    let mut reference: Option<(Tensor, Tensor, Vec<bool>)> = None;
    let mut progress = Progress::new(files.len() as u64, "transfer-eval");
    for (fi, path) in files.iter().enumerate() {
        let tf = TensorFile::read(path)?;
        let meta: TransferFile = tf
            .meta
            .get(TRANSFER_KEY)
            .ok_or_else(|| {
                Error::data(
                    path,
                    format!("not an eio transfer file (no '{TRANSFER_KEY}' metadata)"),
                )
            })
            .and_then(|j| {
                serde_json::from_str(j)
                    .map_err(|e| Error::data(path, format!("bad '{TRANSFER_KEY}' metadata: {e}")))
            })?;
        let get = |k: &str| {
            tf.tensors.get(k).ok_or_else(|| Error::data(path, format!("missing tensor '{k}'")))
        };
        let (images, labels, index) = (get("images")?, get("labels")?, get("index")?);
        let n = match labels.size()[..] {
            [n] if index.size() == [n] && images.size() == [n, 3, 32, 32] => n,
            _ => {
                return Err(Error::data(
                    path,
                    format!(
                        "expected images [N,3,32,32], labels [N] and index [N], got {:?}, {:?} \
                         and {:?}",
                        images.size(),
                        labels.size(),
                        index.size()
                    ),
                ))
            }
        };
        let x = images.to_kind(Kind::Float) / 255.0;
        check_stored(path, &tf, &meta, &x, labels, n)?;
        let clean = match &reference {
            None => {
                let c = clean_correct(target, (&x, labels), batch, device)?;
                reference = Some((labels.shallow_clone(), index.shallow_clone(), c.clone()));
                c
            }
            Some((l, i, c)) => {
                if l.size() != labels.size() || !l.equal(labels) || !i.equal(index) {
                    return Err(Error::data(
                        path,
                        format!("made from other images than {}", files[0].display()),
                    ));
                }
                c.clone()
            }
        };
        let at = match groups.iter().position(|(e, _)| *e == meta.eps) {
            Some(p) => p,
            None => {
                groups.push((meta.eps, BTreeMap::new()));
                groups.len() - 1
            }
        };
        for v in &meta.versions {
            let adv = get(&v.key)?;
            if adv.size() != images.size() {
                return Err(Error::data(
                    path,
                    format!("tensor '{}' has shape {:?}", v.key, adv.size()),
                ));
            }
            let ok = clean_correct(target, (adv, labels), batch, device)?;
            debug_assert_eq!(ok.len() as i64, n);
            let loss = v.loss.to_string();
            let keys: [Group; 3] = [
                (None, None, None),
                (None, Some(v.attack.clone()), None),
                (Some(meta.surrogate.clone()), Some(v.attack.clone()), Some(loss)),
            ];
            for k in keys {
                groups[at].1.entry(k).or_insert_with(|| vec![clean.clone()]).push(ok.clone());
            }
        }
        progress.update(fi as u64 + 1, &format!("{}", path.display()));
    }
    progress.finish();
    let (_, _, clean) = reference.expect("at least one file");
    groups.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rows = Vec::new();
    for (eps, map) in groups {
        for ((surrogate, attack, loss), table) in map {
            rows.push(TransferEvalRow {
                eps,
                surrogate,
                attack,
                loss,
                versions: table.len() - 1,
                robust_accuracy: fraction(&all_or_nothing(&table)?),
            });
        }
    }
    Ok(TransferEvalReport {
        images: clean.len(),
        clean_accuracy: fraction(&clean),
        rows,
        files: files.to_vec(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_versions_read_back_exactly_and_only_for_their_plan() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TransferGenConfig::default();
        let plan = |seed| Plan {
            surrogate: "s".into(),
            model: None,
            eps: 0.03,
            seed,
            images: 2,
            fingerprint: "7".into(),
            versions: cfg.versions(0.03),
        };
        let (p1, p2) = (plan(1), plan(2));
        let adv = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let fooled = 1.0 / 3.0;
        let saved = Partial { plan: &p1, key: "adv.sgm.ce.0" };
        assert!(saved.read(dir.path(), 2).is_none(), "nothing saved yet");
        saved.write(dir.path(), &adv, fooled).unwrap();
        let (back, f) = saved.read(dir.path(), 2).unwrap();
        assert!(back.equal(&adv));
        assert_eq!(f, fooled);
        assert!(Partial { plan: &p2, key: "adv.sgm.ce.0" }.read(dir.path(), 2).is_none());
        assert!(saved.read(dir.path(), 3).is_none(), "another image count");
        Partial::remove(dir.path(), dir.path()).unwrap();
        assert!(saved.read(dir.path(), 2).is_none());
    }

    #[test]
    fn paper_suite_has_ten_versions_per_surrogate_and_eps() {
        let cfg = TransferGenConfig::default();
        cfg.validate().unwrap();
        let v = cfg.versions(0.03);
        assert_eq!(v.len(), 10);
        assert_eq!(v.iter().filter(|v| v.attack == "mpgd").count(), 6);
        let AttackConfig::Pgd(mpgd) = &v[0].config else { panic!("{:?}", v[0]) };
        assert!(mpgd.random_start && mpgd.momentum == Some(1.0) && mpgd.steps == 100);
        assert_eq!((mpgd.restarts, mpgd.step_size), (1, 0.03 * 0.2));
        let sgm = v.iter().find(|v| v.attack == "sgm").unwrap();
        let AttackConfig::Pgd(sgm) = &sgm.config else { panic!("{sgm:?}") };
        assert_eq!((sgm.sgm, sgm.random_start), (Some(0.2), false));
        assert_eq!(cfg.eps.len() * 3 * v.len(), 210);
        let twice = TransferGenConfig {
            attacks: vec![AttackConfig::paper_whitebox(1.0), AttackConfig::paper_whitebox(1.0)],
            ..Default::default()
        };
        assert!(twice.validate().is_err());
    }

    #[test]
    fn config_from_toml() {
        let cfg: TransferGenConfig = toml::from_str(
            r#"
            eps = [0.03]
            losses = ["ce", "cw:0.5"]
            [[attacks]]
            kind = "pgd"
            eps = 1.0
            step_size = 0.2
            momentum = 1.0
            restarts = 3
            [[attacks]]
            kind = "fgsm"
            eps = 1.0
            "#,
        )
        .unwrap();
        assert_eq!(cfg.attacks[0].name(), "mpgd");
        assert_eq!(cfg.attacks[1].name(), "fgsm");
        assert_eq!(cfg.versions(0.03).len(), 8);
        assert_eq!(cfg.losses[1], AttackLoss::Cw { kappa: 0.5 });
        assert!(
            toml::from_str::<TransferGenConfig>("[[attacks]]\nkind = \"pgd\"\ngama = 1.0").is_err()
        );
        assert!(toml::from_str::<TransferGenConfig>("step = 3").is_err());
        let back: TransferGenConfig = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn versions_of_older_files_still_read() {
        let legacy = serde_json::json!({
            "key": "adv.sgm.ce.0", "attack": "sgm", "loss": "ce", "restart": 0,
            "config": PgdConfig::sgm(0.03, 0.2),
        });
        let v: TransferVersion = serde_json::from_value(legacy).unwrap();
        assert_eq!(v.config, AttackConfig::Pgd(PgdConfig::sgm(0.03, 0.2)));
        let now = serde_json::to_string(&v).unwrap();
        assert!(now.contains("\"kind\":\"pgd\""), "{now}");
        assert_eq!(serde_json::from_str::<TransferVersion>(&now).unwrap(), v);
    }
}
