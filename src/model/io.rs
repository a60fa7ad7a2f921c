//! Model files: safetensors with the eio model spec in the metadata, written atomically; readers
//! for the released Ensemble-in-One RGN checkpoint and for ResNet-20 state dicts (DVERGE layout,
//! option-A akamaster layout), stored as safetensors or as PyTorch `torch.save` files (see
//! [`super::pth`]); derivation of a plain ResNet-20 from one route of an RGN.
//!
//! Input normalisation travels with the model: an eio file's spec carries it (CIFAR-10's when
//! left out), a foreign state dict's `normalizer.mean` / `normalizer.std` buffers are honoured,
//! and a requested normalisation that disagrees with the one a file carries is an error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

use super::{pth, ArchConfig, Augment, Model, ModelSpec, Normalization, Route, Shortcut};
use crate::error::{Error, Result};
use crate::seed::Seed;
use crate::validate::is_float;

/// Metadata key holding the JSON [`ModelSpec`].
pub const SPEC_KEY: &str = "eio.model";
/// Prefix of non-model tensors (optimiser state) in training checkpoints.
pub const STATE_PREFIX: &str = "optim.";

/// Tensors and string metadata of one safetensors file.
#[derive(Debug, Default)]
pub struct TensorFile {
    /// Tensors by name (on the CPU).
    pub tensors: BTreeMap<String, Tensor>,
    /// The `__metadata__` map.
    pub meta: BTreeMap<String, String>,
}

fn kind_to_dtype(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn dtype_to_kind(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

impl TensorFile {
    /// Reads `path`; errors name the file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
            // A file that starts like a safetensors file is a damaged one (typically cut short
            // by an interrupted copy), not a file of another format.
            let msg = match inspect(&bytes, bytes.len() as u64) {
                Shape::Other => format!("not a safetensors file ({e})"),
                Shape::Damaged(why) => format!("{DAMAGED}: {why}"),
                Shape::Whole(_) => format!("{DAMAGED} ({e})"),
            };
            Error::checkpoint(path, msg)
        })?;
        let meta = header.metadata().clone().unwrap_or_default().into_iter().collect();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::checkpoint(path, format!("{DAMAGED} ({e})")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let kind = dtype_to_kind(view.dtype()).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!("tensor '{name}' has unsupported dtype {:?}", view.dtype()),
                )
            })?;
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
            tensors.insert(name, t);
        }
        Ok(TensorFile { tensors, meta })
    }

    /// Writes to `path` atomically (temporary file in the same folder, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, t) in &self.tensors {
            let t = t.to_device(Device::Cpu).contiguous();
            let dtype = kind_to_dtype(t.kind()).ok_or_else(|| {
                Error::config(format!("cannot store tensor '{name}' of kind {:?}", t.kind()))
            })?;
            let numel = t.numel();
            let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut data, numel)?;
            bufs.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect(), data));
        }
        let views: Vec<(String, TensorView)> = bufs
            .iter()
            .map(|(n, d, s, b)| {
                Ok((
                    n.clone(),
                    TensorView::new(*d, s.clone(), b).map_err(|e| Error::config(e.to_string()))?,
                ))
            })
            .collect::<Result<_>>()?;
        let meta: HashMap<String, String> = self.meta.clone().into_iter().collect();
        let bytes =
            safetensors::serialize(views, &Some(meta)).map_err(|e| Error::config(e.to_string()))?;
        write_atomic(path, &sorted_header(bytes))
    }
}

/// How errors about a safetensors file that cannot be read start, when the file is one.
const DAMAGED: &str = "damaged safetensors file";

/// Largest header the safetensors format allows (the crate's limit).
const MAX_HEADER: u64 = 100 << 20;

/// What the first bytes of a file say about it as a safetensors file.
enum Shape {
    /// It does not start like one (an 8-byte header length, then a JSON object): another format.
    Other,
    /// It starts like one but is cut short or damaged; why, in words.
    Damaged(String),
    /// Its header parses and the file holds exactly the bytes the header describes.
    Whole(serde_json::Value),
}

/// Inspects a file of `len` bytes from its first bytes `head`, which hold its whole header
/// when the file does.
fn inspect(head: &[u8], len: u64) -> Shape {
    let Some(n) = head.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))) else {
        return Shape::Other;
    };
    if n > MAX_HEADER || head.get(8) != Some(&b'{') {
        return Shape::Other;
    }
    let header_end = 8 + n;
    if len < header_end {
        return Shape::Damaged(format!(
            "it holds {len} bytes, fewer than its own {header_end}-byte header: the file was cut \
             short"
        ));
    }
    let Some(Ok(header)) =
        head.get(8..header_end as usize).map(serde_json::from_slice::<serde_json::Value>)
    else {
        return Shape::Damaged("its header is not valid JSON".into());
    };
    let Some(entries) = header.as_object() else {
        return Shape::Damaged("its header is not a JSON object".into());
    };
    // The data section ends where the last tensor ends.
    let mut data_end = 0u64;
    for (name, entry) in entries.iter().filter(|(k, _)| *k != "__metadata__") {
        match entry["data_offsets"].as_array().map(|o| o.iter().map(|v| v.as_u64()).collect()) {
            Some(Some::<Vec<u64>>(o)) if o.len() == 2 => data_end = data_end.max(o[1]),
            _ => return Shape::Damaged(format!("tensor '{name}' has no valid data_offsets")),
        }
    }
    let want = header_end.saturating_add(data_end);
    if len != want {
        let how = if len < want { "the file was cut short" } else { "trailing bytes" };
        return Shape::Damaged(format!(
            "it holds {len} bytes, its header describes {want} ({how})"
        ));
    }
    Shape::Whole(header)
}

/// The JSON header of the safetensors file `path`, read without its tensors, once the file is
/// known to hold the bytes the header describes: a file cut short is an error that says so,
/// not a file that reads as complete.
pub fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::new();
    (&mut f).take(8).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
    if let Ok(b) = <[u8; 8]>::try_from(&head[..]) {
        let n = u64::from_le_bytes(b);
        if n <= MAX_HEADER {
            f.take(n).read_to_end(&mut head).map_err(|e| Error::io(path, e))?;
        }
    }
    match inspect(&head, len) {
        Shape::Whole(header) => Ok(header),
        Shape::Damaged(why) => Err(Error::checkpoint(path, format!("{DAMAGED}: {why}"))),
        Shape::Other => Err(Error::checkpoint(path, what_is(&head))),
    }
}

/// The safetensors `bytes` with the keys of their JSON header in sorted order (the metadata is a
/// hash map in the safetensors crate, so its order changes from run to run): the same tensors
/// and metadata always give the same bytes, which `md5sum` can compare.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return bytes;
    };
    let end = 8 + len as usize;
    // serde_json's map (without `preserve_order`) is a BTreeMap: parsing sorts the keys.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes[8..end]) else { return bytes };
    let mut header = serde_json::to_vec(&v).expect("JSON serialises");
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[end..]);
    out
}

pub use crate::fsx::write_atomic;

impl Model {
    /// The model's tensors by name (BatchNorms get `num_batches_tracked` so that PyTorch's
    /// strict `load_state_dict` accepts the file).
    pub fn named_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        let bns: Vec<String> =
            out.keys().filter_map(|k| k.strip_suffix(".running_var").map(str::to_string)).collect();
        for bn in bns {
            out.insert(format!("{bn}.num_batches_tracked"), Tensor::from(0i64));
        }
        out
    }

    /// Saves the weights and spec to `path` atomically, with `extra` tensors and metadata.
    pub fn save(&self, path: &Path, extra: TensorFile) -> Result<()> {
        self.save_as(path, extra, false)
    }

    /// [`Model::save`] with the float tensors stored in half precision: half the size, for the
    /// small checkpoints shipped in the repository. Loading computes in f32 from the rounded
    /// values, so the file holds a model within f16 rounding of this one (metadata
    /// `eio.storage = f16` says so).
    pub fn save_half(&self, path: &Path, mut extra: TensorFile) -> Result<()> {
        extra.meta.insert("eio.storage".into(), "f16".into());
        self.save_as(path, extra, true)
    }

    fn save_as(&self, path: &Path, extra: TensorFile, half: bool) -> Result<()> {
        let mut file = extra;
        file.tensors.extend(self.named_tensors().into_iter().map(|(k, t)| {
            let t = if half && t.kind() == Kind::Float { t.to_kind(Kind::Half) } else { t };
            (k, t)
        }));
        file.meta
            .insert(SPEC_KEY.into(), serde_json::to_string(&self.spec).expect("spec serialises"));
        file.meta.entry("eio.version".into()).or_insert_with(|| env!("CARGO_PKG_VERSION").into());
        file.write(path)
    }

    /// Loads an eio model file, the released EIO RGN checkpoint or a ResNet-20 state dict
    /// (DVERGE or option-A layout; an ensemble when keys carry `model_{i}.` / `member{i}.`
    /// prefixes), stored as safetensors or as a PyTorch `torch.save` file. Returns the model and
    /// what the file held besides it (optimiser state, metadata).
    pub fn load(path: &Path, device: Device) -> Result<(Model, TensorFile)> {
        Model::load_with(path, device, None)
    }

    /// [`Model::load`] with a requested input normalisation: it is used for a foreign state
    /// dict that carries none, and it must agree with the one an eio file or a state dict's
    /// `normalizer.*` buffers carry (else an error names both). Without a request, a foreign
    /// file without `normalizer.*` buffers gets CIFAR-10's statistics.
    pub fn load_with(
        path: &Path,
        device: Device,
        normalization: Option<Normalization>,
    ) -> Result<(Model, TensorFile)> {
        if let Some(n) = &normalization {
            n.validate()?;
        }
        let mut file = read_model_file(path)?;
        let mismatch = |carried: &Normalization, want: &Normalization, how: &str| {
            Error::checkpoint(
                path,
                format!(
                    "{how} normalisation {carried}, but {want} was requested; drop the request \
                     or convert the model"
                ),
            )
        };
        let spec = match file.meta.get(SPEC_KEY) {
            Some(json) => {
                let bad = |e: &dyn std::fmt::Display| {
                    Error::checkpoint(path, format!("bad '{SPEC_KEY}' metadata: {e}"))
                };
                let spec = serde_json::from_str::<ModelSpec>(json).map_err(|e| bad(&e))?;
                // Checked here so that the error names the file: a spec that is not usable is
                // a damaged or edited file, not a bad flag.
                spec.validate().map_err(|e| bad(&e))?;
                let carried = spec.arch.normalization();
                match normalization {
                    Some(want) if !carried.matches(&want) => {
                        return Err(mismatch(&carried, &want, "the model's spec carries"))
                    }
                    _ => spec,
                }
            }
            None => {
                let (spec, carried) = convert_foreign(path, &mut file)?;
                let n = match (carried, normalization) {
                    (Some(c), Some(w)) if !c.matches(&w) => {
                        return Err(mismatch(&c, &w, "the file's normalizer buffers carry"))
                    }
                    (Some(c), _) => c,
                    (None, Some(w)) => w,
                    (None, None) => Normalization::CIFAR10,
                };
                ModelSpec { arch: spec.arch.with_normalization(n), ..spec }
            }
        };
        crate::validate::check_weights(path, &file.tensors)?;
        let model = Model::new(&spec, device, Seed(0))?;
        model.fill_from(path, &mut file)?;
        Ok((model, file))
    }

    /// Copies the tensors of `file` into the model's variables, consuming them. Every variable
    /// must be present with its shape; leftover tensors other than optimiser state are an error.
    fn fill_from(&self, path: &Path, file: &mut TensorFile) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let t = file.tensors.remove(&name).ok_or_else(|| {
                Error::checkpoint(
                    path,
                    format!(
                        "missing tensor '{name}' (file does not match a {})",
                        describe(&self.spec)
                    ),
                )
            })?;
            // Every variable is floating point and stored values are converted to its
            // precision: from another floating-point storage (f16 files of `save_half`, f64 or
            // bf16 state dicts) that is a rounding, from integers it would load other numbers.
            if !is_float(t.kind()) {
                let stored =
                    kind_to_dtype(t.kind()).map_or(format!("{:?}", t.kind()), |d| format!("{d:?}"));
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "tensor '{name}' is stored as {stored}, expected floating point (F32, \
                         F16, BF16 or F64)"
                    ),
                ));
            }
            if t.size() != var.size() {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor '{name}' has shape {:?}, expected {:?}", t.size(), var.size()),
                ));
            }
            var.copy_(&t.to_kind(var.kind()));
        }
        file.tensors.retain(|k, _| !k.ends_with(".num_batches_tracked"));
        if let Some(k) = file.tensors.keys().find(|k| !k.starts_with(STATE_PREFIX)) {
            return Err(Error::checkpoint(
                path,
                format!("unexpected tensor '{k}' for a {}", describe(&self.spec)),
            ));
        }
        Ok(())
    }

    /// A plain ResNet-20 (or ensemble of them) holding the weights of `route` of each member.
    pub fn derive(&self, route: &Route) -> Result<Model> {
        route.check(self.gates(), self.spec.arch.copies.max(1))?;
        let spec = ModelSpec { arch: self.plain_arch(), members: self.spec.members };
        let plain = Model::new(&spec, self.device(), Seed(0))?;
        let src = self.vs.variables();
        let _guard = tch::no_grad_guard();
        for (name, mut var) in plain.vs.variables() {
            let key = self.nets[0].routed_name(&name, route);
            let t = src.get(&key).unwrap_or_else(|| panic!("derive: no '{key}' for '{name}'"));
            var.copy_(t);
        }
        Ok(plain)
    }

    /// The plain ResNet-20 a route of this network derives: same activation, shortcuts and
    /// normalisation, no gates.
    fn plain_arch(&self) -> ArchConfig {
        ArchConfig {
            copies: 1,
            augment: Augment::None,
            share_conv: false,
            ..self.spec.arch.clone()
        }
    }

    /// Member `i` of an ensemble as a model of its own.
    pub fn member(&self, i: usize) -> Result<Model> {
        if i >= self.nets.len() {
            return Err(Error::config(format!("member {i} of a {}-member model", self.nets.len())));
        }
        let one = Model::new(
            &ModelSpec { arch: self.spec.arch.clone(), members: 1 },
            self.device(),
            Seed(0),
        )?;
        let all = self.vs.variables();
        let _guard = tch::no_grad_guard();
        for (name, mut v) in one.vs.variables() {
            let key = if self.nets.len() == 1 { name.clone() } else { format!("member{i}.{name}") };
            v.copy_(&all[&key]);
        }
        Ok(one)
    }

    /// Several derived routes stacked into one ensemble of plain networks (average of softmax).
    pub fn derive_ensemble(&self, routes: &[Route]) -> Result<Model> {
        if self.spec.members != 1 {
            return Err(Error::config(
                "derive an ensemble of routes from a single RGN, not an ensemble",
            ));
        }
        let spec = ModelSpec { arch: self.plain_arch(), members: routes.len() };
        let out = Model::new(&spec, self.device(), Seed(0))?;
        let dst = out.vs.variables();
        let _guard = tch::no_grad_guard();
        for (i, r) in routes.iter().enumerate() {
            let one = self.derive(r)?;
            for (name, t) in one.vs.variables() {
                let mut v = dst[&format!("member{i}.{name}")].shallow_clone();
                v.copy_(&t);
            }
        }
        Ok(out)
    }
}

/// A model spec in words, e.g. `ensemble of 3 x plain ResNet-20`.
pub fn describe(spec: &ModelSpec) -> String {
    let a = &spec.arch;
    let mut net = if a.is_plain() {
        "plain ResNet-20".to_string()
    } else {
        format!(
            "ResNet-20 RGN (copies {}, augment {}, {} conv)",
            a.copies,
            a.augment,
            if a.share_conv { "shared" } else { "independent" }
        )
    };
    if a.relu_slope != 0.0 {
        net = format!("{net} (leaky ReLU {})", a.relu_slope);
    }
    if a.shortcut == Shortcut::Identity {
        net = format!("{net} (option-A identity shortcuts)");
    }
    if a.normalization() != Normalization::CIFAR10 {
        net = format!("{net} (normalisation {})", a.normalization());
    }
    if spec.members > 1 {
        format!("ensemble of {} x {net}", spec.members)
    } else {
        net
    }
}

/// Reads a model file as named tensors and metadata: safetensors, or a PyTorch `torch.save`
/// file (zip or legacy format). Anything else is an error that says what the file looks like.
pub fn read_model_file(path: &Path) -> Result<TensorFile> {
    let mut head = [0u8; 16];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        f.read(&mut head).map_err(|e| Error::io(path, e))?
    };
    let head = &head[..n];
    match pth::sniff(head) {
        pth::Format::Zip | pth::Format::Pickle => {
            Ok(TensorFile { tensors: pth::read(path)?, meta: BTreeMap::new() })
        }
        pth::Format::Other => TensorFile::read(path).map_err(|e| match e {
            Error::Checkpoint { path, msg } if msg.starts_with("not a safetensors file") => {
                Error::checkpoint(
                    path,
                    format!(
                        "{}; eio reads safetensors files and PyTorch torch.save state dicts \
                         (other files: convert with `python -m eio_torch convert IN OUT`, see \
                         python/README.md)",
                        what_is(head)
                    ),
                )
            }
            e => e,
        }),
    }
}

/// What a file that is neither safetensors nor `torch.save` looks like, from its first bytes.
fn what_is(head: &[u8]) -> &'static str {
    if head.starts_with(b"\x89HDF") {
        "an HDF5 file (Keras / h5py), not a safetensors file"
    } else if head.starts_with(b"\x93NUMPY") {
        "a NumPy .npy array, not a safetensors file"
    } else if head.starts_with(b"\x08") && head.get(1).is_some_and(|&b| b < 16) {
        "probably an ONNX model (protobuf), not a safetensors file"
    } else if head.is_empty() {
        "an empty file, not a safetensors file"
    } else if head.iter().all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) {
        "a text file, not a safetensors file"
    } else {
        "not a safetensors file (unknown format)"
    }
}

/// Renames the tensors of a foreign checkpoint to eio names and infers its spec and the input
/// normalisation its `normalizer.*` buffers carry (`None` when it has none).
fn convert_foreign(
    path: &Path,
    file: &mut TensorFile,
) -> Result<(ModelSpec, Option<Normalization>)> {
    let tensors = std::mem::take(&mut file.tensors);
    if tensors.keys().any(|k| k.starts_with("net.model.")) {
        return convert_official_rgn(path, tensors, file);
    }
    // DVERGE / PyTorch layout, possibly wrapped (module.), possibly an ensemble (model_{i}.).
    let mut members: BTreeMap<usize, BTreeMap<String, Tensor>> = BTreeMap::new();
    let mut norms: BTreeMap<usize, [Option<[f64; 3]>; 2]> = BTreeMap::new();
    for (k, t) in tensors {
        let k = k.strip_prefix("module.").unwrap_or(&k).to_string();
        let (member, rest) = match split_member(&k) {
            Some((i, rest)) => (i, rest.to_string()),
            None => (usize::MAX, k.clone()),
        };
        if rest.ends_with("num_batches_tracked") {
            continue;
        }
        if let Some(which) = normalizer_key(&rest) {
            norms.entry(member).or_default()[which] = Some(channel_values(path, &k, &t)?);
            continue;
        }
        let rest = pytorch_to_eio(&rest);
        members.entry(member).or_default().insert(rest, t);
    }
    if !members.values().any(|m| m.contains_key("layer1.0.conv1.weight")) {
        return Err(Error::checkpoint(
            path,
            "not an eio model, an Ensemble-in-One RGN checkpoint (net.model.*) or a ResNet-20 state \
             dict (conv1.weight, layer1.0.conv1.weight, ...)",
        ));
    }
    // Option A (akamaster) has no weights in its shape-changing shortcuts.
    let shortcut = if members.values().all(|m| {
        m.contains_key("layer2.0.conv1.weight") && !m.contains_key("layer2.0.shortcut.0.weight")
    }) {
        Shortcut::Identity
    } else {
        Shortcut::Projection
    };
    let normalization = member_normalization(path, &members, &norms)?;
    let n = members.len();
    if n == 1 {
        file.tensors = members.into_values().next().unwrap_or_default();
    } else {
        if members.contains_key(&usize::MAX) {
            return Err(Error::checkpoint(
                path,
                "mix of ensemble-member keys (model_{i}.) and plain keys",
            ));
        }
        for (j, (_, m)) in members.into_iter().enumerate() {
            file.tensors.extend(m.into_iter().map(|(k, t)| (format!("member{j}.{k}"), t)));
        }
    }
    let arch = ArchConfig { shortcut, ..ArchConfig::plain() };
    Ok((ModelSpec { arch, members: n }, normalization))
}

/// Which statistic a state-dict key holds: 0 = mean, 1 = std (`normalizer.mean`, ...).
fn normalizer_key(k: &str) -> Option<usize> {
    let (module, stat) = k.rsplit_once('.')?;
    if !matches!(module, "normalizer" | "normalize" | "norm_layer") {
        return None;
    }
    match stat {
        "mean" | "mu" => Some(0),
        "std" | "sigma" => Some(1),
        _ => None,
    }
}

/// The three channel values of a normaliser buffer (`[3]` or `[1,3,1,1]`). Single-precision
/// values are read as the shortest decimal that rounds to them (`0.4914f32` -> `0.4914`), so a
/// buffer holding CIFAR-10's constants yields exactly [`Normalization::CIFAR10`].
fn channel_values(path: &Path, key: &str, t: &Tensor) -> Result<[f64; 3]> {
    let v: Vec<f64> = if t.kind() == Kind::Double {
        Vec::try_from(&t.flatten(0, -1)).unwrap_or_default()
    } else {
        let f: Vec<f32> = Vec::try_from(&t.to_kind(Kind::Float).flatten(0, -1)).unwrap_or_default();
        f.iter().map(|x| x.to_string().parse().unwrap_or(f64::NAN)).collect()
    };
    v.try_into().map_err(|v: Vec<f64>| {
        Error::checkpoint(path, format!("'{key}' has {} values, expected 3 channels", v.len()))
    })
}

/// The one normalisation the members' buffers carry; members that disagree, or a buffer without
/// its partner, are errors.
fn member_normalization(
    path: &Path,
    members: &BTreeMap<usize, BTreeMap<String, Tensor>>,
    norms: &BTreeMap<usize, [Option<[f64; 3]>; 2]>,
) -> Result<Option<Normalization>> {
    let mut found: Option<(usize, Normalization)> = None;
    for (&m, stats) in norms {
        let name = |m: usize| if m == usize::MAX { String::new() } else { format!("model_{m}.") };
        let (Some(mean), Some(std)) = (stats[0], stats[1]) else {
            return Err(Error::checkpoint(
                path,
                format!("{}normalizer carries only one of mean and std", name(m)),
            ));
        };
        let n = Normalization { mean, std };
        match &found {
            Some((m0, n0)) if !n0.matches(&n) => {
                return Err(Error::checkpoint(
                    path,
                    format!(
                        "ensemble members normalise differently ({}normalizer: {n0}; {}normalizer: \
                         {n}); eio ensembles share one normalisation",
                        name(*m0),
                        name(m)
                    ),
                ))
            }
            Some(_) => {}
            None => found = Some((m, n)),
        }
    }
    if found.is_some() && members.keys().any(|m| !norms.contains_key(m)) {
        return Err(Error::checkpoint(
            path,
            "some ensemble members carry normalizer buffers and others do not",
        ));
    }
    if let Some((_, n)) = &found {
        n.validate().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    }
    Ok(found.map(|(_, n)| n))
}

fn split_member(k: &str) -> Option<(usize, &str)> {
    for pre in ["model_", "models.", "member", "model"] {
        if let Some(rest) = k.strip_prefix(pre) {
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            if !digits.is_empty() && rest[digits.len()..].starts_with('.') {
                return Some((digits.parse().ok()?, &rest[digits.len() + 1..]));
            }
        }
    }
    None
}

/// The released EIO checkpoint: `net.model.<slot>.candidate_ops.<i>.{0: conv, 1: BN}`.
fn convert_official_rgn(
    path: &Path,
    tensors: BTreeMap<String, Tensor>,
    file: &mut TensorFile,
) -> Result<(ModelSpec, Option<Normalization>)> {
    let mut copies = 0usize;
    let mut stats: [Option<[f64; 3]>; 2] = [None, None];
    let mut gated_slots = std::collections::BTreeSet::new();
    let mut convs: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
    for (k, t) in tensors {
        let Some(k) = k.strip_prefix("net.model.") else {
            if let Some(which) = k.strip_prefix("net.").and_then(normalizer_key) {
                stats[which] = Some(channel_values(path, &k, &t)?);
                continue;
            }
            return Err(Error::checkpoint(
                path,
                format!("unexpected key '{k}' in an EIO RGN checkpoint"),
            ));
        };
        if k.ends_with("num_batches_tracked") {
            continue;
        }
        if let Some((slot, rest)) = k.split_once(".candidate_ops.") {
            let (i, rest) = rest
                .split_once('.')
                .ok_or_else(|| Error::checkpoint(path, format!("bad key '{k}'")))?;
            let i: usize = i
                .parse()
                .map_err(|_| Error::checkpoint(path, format!("bad copy index in '{k}'")))?;
            copies = copies.max(i + 1);
            gated_slots.insert(slot.to_string());
            let (conv, bn) = slot_names(slot);
            if let Some(param) = rest.strip_prefix("0.") {
                if param != "weight" {
                    return Err(Error::checkpoint(path, format!("unexpected conv tensor '{k}'")));
                }
                convs.entry(conv).or_default().push((i, t));
            } else if let Some(param) = rest.strip_prefix("1.") {
                file.tensors.insert(format!("{bn}.{i}.{param}"), t);
            } else {
                return Err(Error::checkpoint(path, format!("unexpected key '{k}'")));
            }
        } else {
            file.tensors.insert(pytorch_to_eio(k), t);
        }
    }
    let share = convs.values().all(|v| v.iter().all(|(_, t)| t.equal(&v[0].1)));
    for (slot, v) in convs {
        for (i, t) in v {
            if share {
                if i == 0 {
                    file.tensors.insert(format!("{slot}.weight"), t);
                }
            } else {
                file.tensors.insert(format!("{slot}.{i}.weight"), t);
            }
        }
    }
    let augment = match gated_slots.len() {
        21 => Augment::All,
        19 if !gated_slots.iter().any(|s| s.contains("downsample")) => Augment::Conv3x3,
        k => Augment::Top(k),
    };
    let spec = ModelSpec {
        arch: ArchConfig { copies, augment, share_conv: share, ..ArchConfig::plain() },
        members: 1,
    };
    let norms = BTreeMap::from([(usize::MAX, stats)]);
    let members = BTreeMap::from([(usize::MAX, BTreeMap::new())]);
    let normalization =
        if stats == [None, None] { None } else { member_normalization(path, &members, &norms)? };
    Ok((spec, normalization))
}

/// Renames the EIO-code / DVERGE-code layer names (`fc`, `downsample`) to eio's (`linear`,
/// `shortcut`).
fn pytorch_to_eio(k: &str) -> String {
    let k = k.replace(".downsample.", ".shortcut.");
    match k.strip_prefix("fc.") {
        Some(rest) => format!("linear.{rest}"),
        None => k,
    }
}

/// eio conv and BatchNorm names of an EIO-code gated slot (`layer1.0.conv2` -> `layer1.0.conv2`,
/// `layer1.0.bn2`; `layer2.0.downsample` -> `layer2.0.shortcut.0`, `layer2.0.shortcut.1`).
fn slot_names(slot: &str) -> (String, String) {
    if let Some(pre) = slot.strip_suffix(".downsample") {
        return (format!("{pre}.shortcut.0"), format!("{pre}.shortcut.1"));
    }
    let bn = match slot.rsplit_once('.') {
        Some((pre, last)) => format!("{pre}.{}", last.replace("conv", "bn")),
        None => slot.replace("conv", "bn"),
    };
    (slot.to_string(), bn)
}
