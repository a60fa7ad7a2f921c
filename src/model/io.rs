//! Model files: safetensors with the eio model spec in the metadata, written atomically; readers
//! for the released Ensemble-in-One RGN checkpoint and for DVERGE-layout ResNet-20 state dicts;
//! derivation of a plain ResNet-20 from one route of an RGN.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use tch::{Device, Kind, Tensor};

use super::{ArchConfig, Augment, Model, ModelSpec, Route};
use crate::error::{Error, Result};
use crate::seed::Seed;

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
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::checkpoint(path, format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default().into_iter().collect();
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::checkpoint(path, format!("corrupt safetensors file ({e})")))?;
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
        let mut file = extra;
        file.tensors.extend(self.named_tensors());
        file.meta
            .insert(SPEC_KEY.into(), serde_json::to_string(&self.spec).expect("spec serialises"));
        file.meta.entry("eio.version".into()).or_insert_with(|| env!("CARGO_PKG_VERSION").into());
        file.write(path)
    }

    /// Loads an eio model file, the released EIO RGN checkpoint or a DVERGE-layout ResNet-20
    /// state dict (an ensemble when keys carry `model_{i}.` / `member{i}.` prefixes).
    /// Returns the model and what the file held besides it (optimiser state, metadata).
    pub fn load(path: &Path, device: Device) -> Result<(Model, TensorFile)> {
        let mut file = TensorFile::read(path)?;
        let spec = match file.meta.get(SPEC_KEY) {
            Some(json) => serde_json::from_str::<ModelSpec>(json)
                .map_err(|e| Error::checkpoint(path, format!("bad '{SPEC_KEY}' metadata: {e}")))?,
            None => convert_foreign(path, &mut file)?,
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
        let arch = ArchConfig { relu_slope: self.spec.arch.relu_slope, ..ArchConfig::plain() };
        let spec = ModelSpec { arch, members: self.spec.members };
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
        let spec = ModelSpec { arch: ArchConfig::plain(), members: routes.len() };
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
    let net = if spec.arch.is_plain() && spec.arch.relu_slope != 0.0 {
        format!("plain ResNet-20 (leaky ReLU {})", spec.arch.relu_slope)
    } else if spec.arch.is_plain() {
        "plain ResNet-20".to_string()
    } else {
        format!(
            "ResNet-20 RGN (copies {}, augment {}, {} conv)",
            spec.arch.copies,
            spec.arch.augment,
            if spec.arch.share_conv { "shared" } else { "independent" }
        )
    };
    if spec.members > 1 {
        format!("ensemble of {} x {net}", spec.members)
    } else {
        net
    }
}

/// Renames the tensors of a foreign checkpoint to eio names and infers its spec.
fn convert_foreign(path: &Path, file: &mut TensorFile) -> Result<ModelSpec> {
    let tensors = std::mem::take(&mut file.tensors);
    if tensors.keys().any(|k| k.starts_with("net.model.")) {
        return convert_official_rgn(path, tensors, file);
    }
    // DVERGE / PyTorch layout, possibly wrapped (module.), possibly an ensemble (model_{i}.).
    let mut members: BTreeMap<usize, BTreeMap<String, Tensor>> = BTreeMap::new();
    for (k, t) in tensors {
        let k = k.strip_prefix("module.").unwrap_or(&k).to_string();
        let (member, rest) = match split_member(&k) {
            Some((i, rest)) => (i, rest.to_string()),
            None => (usize::MAX, k.clone()),
        };
        if rest.starts_with("normalizer.") || rest.ends_with("num_batches_tracked") {
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
    Ok(ModelSpec { arch: ArchConfig::plain(), members: n })
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
) -> Result<ModelSpec> {
    let mut copies = 0usize;
    let mut gated_slots = std::collections::BTreeSet::new();
    let mut convs: BTreeMap<String, Vec<(usize, Tensor)>> = BTreeMap::new();
    for (k, t) in tensors {
        let Some(k) = k.strip_prefix("net.model.") else {
            if k.starts_with("net.normalizer.") {
                check_normalizer(path, &k, &t)?;
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
    Ok(ModelSpec {
        arch: ArchConfig { copies, augment, share_conv: share, relu_slope: 0.0 },
        members: 1,
    })
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

fn check_normalizer(path: &Path, key: &str, t: &Tensor) -> Result<()> {
    let want = if key.ends_with("mean") { super::resnet::MEAN } else { super::resnet::STD };
    let got: Vec<f64> = Vec::try_from(&t.to_kind(Kind::Double).flatten(0, -1)).unwrap_or_default();
    if got.len() != 3 || got.iter().zip(want).any(|(a, b)| (a - b).abs() > 1e-4) {
        return Err(Error::checkpoint(
            path,
            format!("'{key}' = {got:?}, but eio models normalise with {want:?}"),
        ));
    }
    Ok(())
}
