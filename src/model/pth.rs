//! Reader for PyTorch `torch.save` files (`.pt`, `.pth`, `.pth.tar`, `.th`): the zip format of
//! PyTorch 1.6+ and the older "legacy" format (a sequence of pickles followed by raw storages).
//!
//! Only what a checkpoint of weights needs is interpreted: dicts (`OrderedDict` included),
//! lists, tuples, numbers, strings, tensors and parameters (`torch._utils._rebuild_tensor_v2`,
//! `_rebuild_parameter`, ...), and pickled `nn.Module`s (their `_parameters`, `_buffers` and
//! `_modules`). Any other object (an `argparse.Namespace`, a NumPy scalar) becomes an opaque
//! placeholder, so a checkpoint that also stores training arguments still reads; no Python code
//! is ever run. The state dict is found inside the usual wrappers (`state_dict`, `model`, `net`,
//! ...), and nested dicts are flattened with `.` (`{'model_0': sd}` gives `model_0.conv1.weight`).
//!
//! Written here rather than taken from a crate: `serde-pickle` stops at the persistent-id opcode
//! torch uses for storages and drops the arguments of unknown callables; `candle-core`'s reader
//! would bring a second tensor library. The zip container is read with `zip`, which `tch`
//! already depends on.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// The magic number that opens a legacy (pre-1.6) `torch.save` file, little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zip archive (a PyTorch 1.6+ `torch.save` file, a TorchScript archive, or other zip).
    Zip,
    /// A pickle stream (a legacy `torch.save` file, or a plain pickle).
    Pickle,
    /// Something else (safetensors files start with their header length).
    Other,
}

/// Sniffs the container format from the first bytes.
pub fn sniff(head: &[u8]) -> Format {
    // safetensors: an 8-byte header length, then the JSON header (whose length bytes may
    // themselves look like a pickle's PROTO opcode).
    if head.get(8) == Some(&b'{') {
        return Format::Other;
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Format::Zip
    } else if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
        Format::Pickle
    } else {
        Format::Other
    }
}

/// Reads the tensors of a `torch.save` file at `path` (on the CPU, contiguous), named as in the
/// state dict it holds. Errors name the file, say what was found and how to convert it.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let fail = |msg: String| Error::checkpoint(path, msg);
    let (root, storages) = match sniff(&bytes) {
        Format::Zip => read_zip(&bytes).map_err(fail)?,
        Format::Pickle => read_legacy(&bytes).map_err(fail)?,
        Format::Other => return Err(fail("not a torch.save file".into())),
    };
    let mut found = Vec::new();
    collect(&state_dict_root(root.clone()), "", &mut found);
    if found.is_empty() {
        return Err(fail(format!(
            "a torch.save file without tensors (it holds {}); save the model's state_dict()",
            root.describe()
        )));
    }
    let mut out = BTreeMap::new();
    for (name, t) in found {
        let data = storages.get(&t.storage.key).ok_or_else(|| {
            fail(format!("tensor '{name}' refers to missing storage '{}'", t.storage.key))
        })?;
        let tensor = build_tensor(&t, data).map_err(|e| fail(format!("tensor '{name}': {e}")))?;
        out.insert(name, tensor);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Containers

/// Reads the pickle and the storages of a zip-format file.
fn read_zip(bytes: &[u8]) -> std::result::Result<(Value, BTreeMap<String, Vec<u8>>), String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        // torch.save writes the zip's directory last: a file cut short loses it first.
        .map_err(|e| format!("a damaged zip archive, probably cut short ({e})"))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    if names.iter().any(|n| n.ends_with("/constants.pkl") || n.contains("/code/")) {
        return Err(
            "a TorchScript archive (torch.jit.save), not a torch.save state dict; in Python: \
             torch.save(torch.jit.load(F).state_dict(), 'model.pt')"
                .into(),
        );
    }
    let pkl = names
        .iter()
        .filter(|n| n.ends_with("data.pkl"))
        .min_by_key(|n| n.len())
        .ok_or("a zip archive but not a torch.save file (no data.pkl)")?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| -> std::result::Result<Vec<u8>, String> {
        let mut f = zip.by_name(name).map_err(|e| format!("zip entry '{name}': {e}"))?;
        let mut v = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut v).map_err(|e| format!("zip entry '{name}': {e}"))?;
        Ok(v)
    };
    if names.contains(&format!("{prefix}byteorder")) {
        let order = read_entry(&format!("{prefix}byteorder"))?;
        if order.trim_ascii() != b"little" {
            return Err(format!(
                "a big-endian torch.save file ({}); re-save it on a little-endian machine",
                String::from_utf8_lossy(&order)
            ));
        }
    }
    let data = read_entry(&pkl)?;
    let mut storages: BTreeMap<String, Rc<StorageRef>> = BTreeMap::new();
    let root = {
        let mut persistent = |pid: Value| storage_from_pid(pid, &mut storages);
        Unpickler::new(&data, &mut persistent).load()?
    };
    let mut out = BTreeMap::new();
    for (key, s) in &storages {
        let bytes = read_entry(&format!("{prefix}data/{key}"))?;
        let need = s.numel * s.kind.elt_size_in_bytes();
        if bytes.len() < need {
            return Err(format!("storage '{key}' has {} bytes, expected {need}", bytes.len()));
        }
        out.insert(key.clone(), bytes);
    }
    Ok((root, out))
}

/// Reads a legacy (PyTorch < 1.6) file: magic number, protocol version and system-info pickles,
/// the object pickle, the list of storage keys, then each storage as an i64 element count and
/// raw little-endian data.
fn read_legacy(bytes: &[u8]) -> std::result::Result<(Value, BTreeMap<String, Vec<u8>>), String> {
    let mut none = |_: Value| Ok(Value::None);
    let mut up = Unpickler::new(bytes, &mut none);
    let magic = up.load().map_err(|_| "a pickle file, not a torch.save file".to_string())?;
    if !matches!(&magic, Value::BigInt(b) if b[..] == LEGACY_MAGIC) {
        return Err(format!(
            "a Python pickle (of {}), not a torch.save file; eio reads tensors saved with \
             torch.save",
            magic.describe()
        ));
    }
    let pos = up.pos;
    let mut none = |_: Value| Ok(Value::None);
    let mut up = Unpickler::new(bytes, &mut none);
    up.pos = pos;
    match up.load()? {
        Value::Int(1001) => {}
        v => return Err(format!("unsupported legacy torch.save protocol {}", v.describe())),
    }
    let info = up.load()?;
    if let Some(Value::Bool(false)) = info.get("little_endian") {
        return Err("a big-endian torch.save file; re-save it on a little-endian machine".into());
    }
    let pos = up.pos;
    let mut storages: BTreeMap<String, Rc<StorageRef>> = BTreeMap::new();
    let (root, pos) = {
        let mut persistent = |pid: Value| storage_from_pid(pid, &mut storages);
        let mut up = Unpickler::new(bytes, &mut persistent);
        up.pos = pos;
        (up.load()?, up.pos)
    };
    let mut none = |_: Value| Ok(Value::None);
    let mut up = Unpickler::new(bytes, &mut none);
    up.pos = pos;
    let keys: Vec<String> = match up.load()? {
        Value::List(l) => l.borrow().iter().map(|k| k.as_str().map(str::to_string)).collect(),
        _ => None,
    }
    .ok_or("legacy torch.save file without its storage key list")?;
    let mut pos = up.pos;
    let mut out = BTreeMap::new();
    for key in keys {
        let s = storages.get(&key).ok_or(format!("storage '{key}' is not referenced"))?;
        let n = bytes
            .get(pos..pos + 8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or("truncated legacy torch.save file")?;
        let len = n as usize * s.kind.elt_size_in_bytes();
        let data = bytes.get(pos + 8..pos + 8 + len).ok_or("truncated legacy torch.save file")?;
        out.insert(key, data.to_vec());
        pos += 8 + len;
    }
    Ok((root, out))
}

/// Turns a persistent id `('storage', <torch.XStorage>, key, location, numel, ...)` into a
/// storage reference (shared by key).
fn storage_from_pid(
    pid: Value,
    storages: &mut BTreeMap<String, Rc<StorageRef>>,
) -> std::result::Result<Value, String> {
    let Value::Tuple(t) = &pid else {
        return Err(format!("unexpected persistent id {}", pid.describe()));
    };
    match t.first().and_then(Value::as_str) {
        Some("storage") => {}
        Some("module") => return Ok(Value::None),
        _ => return Err(format!("unexpected persistent id {}", pid.describe())),
    }
    let (ty, key, numel) = match (t.get(1), t.get(2), t.get(4)) {
        (Some(Value::Global(g)), Some(k), Some(Value::Int(n))) => {
            (g.1.clone(), k.as_str().map(str::to_string), *n)
        }
        _ => return Err(format!("unexpected storage id {}", pid.describe())),
    };
    let key = key.ok_or("storage key is not a string")?;
    if let Some(Value::Tuple(view)) = t.get(5) {
        if !view.is_empty() {
            return Err("storage views (legacy view_metadata) are not supported".into());
        }
    }
    let kind = storage_kind(&ty).ok_or(format!("unsupported storage type torch.{ty}"))?;
    let s = storages
        .entry(key.clone())
        .or_insert_with(|| Rc::new(StorageRef { key, kind, numel: numel.max(0) as usize }));
    Ok(Value::Storage(s.clone()))
}

fn storage_kind(ty: &str) -> Option<Kind> {
    Some(match ty {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" | "UntypedStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

fn build_tensor(t: &TensorRef, data: &[u8]) -> std::result::Result<Tensor, String> {
    let s = &t.storage;
    let flat = Tensor::f_from_data_size(
        &data[..s.numel * s.kind.elt_size_in_bytes()],
        &[s.numel as i64],
        s.kind,
    )
    .map_err(|e| e.to_string())?;
    if t.size.iter().product::<i64>() == 0 {
        return Ok(Tensor::zeros(&t.size, (s.kind, tch::Device::Cpu)));
    }
    let last: i64 =
        t.offset + t.size.iter().zip(&t.stride).map(|(&n, &st)| (n - 1) * st).sum::<i64>();
    if t.offset < 0 || t.stride.iter().any(|&st| st < 0) || last >= s.numel as i64 {
        return Err(format!(
            "size {:?} / stride {:?} / offset {} exceed its storage of {} elements",
            t.size, t.stride, t.offset, s.numel
        ));
    }
    flat.f_as_strided(&t.size, &t.stride, Some(t.offset))
        .and_then(|v| v.f_contiguous())
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Finding the state dict

/// Keys under which checkpoints commonly keep the model's state dict.
const WRAPPERS: [&str; 7] =
    ["state_dict", "model_state_dict", "model", "net", "module", "network", "state"];

/// The part of a checkpoint that holds the weights: the dict itself when it has tensors, else
/// the first usual wrapper key that holds a dict or module.
fn state_dict_root(v: Value) -> Value {
    let child = {
        let Value::Dict(d) = &v else { return v };
        let d = d.borrow();
        if d.iter().any(|(_, x)| matches!(x, Value::Tensor(_))) {
            return v.clone();
        }
        WRAPPERS.iter().find_map(|w| {
            d.iter()
                .find(|(k, x)| {
                    k.as_str() == Some(w)
                        && (matches!(x, Value::Dict(_)) || x.module_state().is_some())
                })
                .map(|(_, x)| x.clone())
        })
    };
    match child {
        Some(c) => state_dict_root(c),
        None => v,
    }
}

/// Flattens tensors under `v` into `out`, naming them by their dict keys joined with `.`.
/// Optimiser and scheduler entries are skipped.
fn collect(v: &Value, prefix: &str, out: &mut Vec<(String, Rc<TensorRef>)>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    match v {
        Value::Tensor(t) => out.push((prefix.to_string(), t.clone())),
        Value::Dict(d) => {
            for (k, x) in d.borrow().iter() {
                let Some(k) = k.key_string() else { continue };
                if prefix.is_empty() && (k.contains("optim") || k.contains("sched")) {
                    continue;
                }
                collect(x, &join(&k), out);
            }
        }
        Value::Object(_) => {
            if let Some(state) = v.module_state() {
                for part in ["_parameters", "_buffers", "_modules"] {
                    if let Some(x) = state.get(part) {
                        collect(&x, prefix, out);
                    }
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle machine

#[derive(Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    numel: usize,
}

#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// An instance of a class the reader does not know: its class, constructor arguments and the
/// state given by `BUILD`.
#[derive(Debug)]
struct Object {
    class: Rc<(String, String)>,
    state: Option<Value>,
}

#[derive(Debug, Clone)]
enum Value {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's-complement bytes.
    BigInt(Rc<Vec<u8>>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<Vec<u8>>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Rc<(String, String)>),
    Object(Rc<RefCell<Object>>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn key_string(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Int(i) => Some(i.to_string()),
            _ => None,
        }
    }

    fn dict(items: Vec<(Value, Value)>) -> Value {
        Value::Dict(Rc::new(RefCell::new(items)))
    }

    fn list(items: Vec<Value>) -> Value {
        Value::List(Rc::new(RefCell::new(items)))
    }

    /// Item `key` of a dict.
    fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => {
                d.borrow().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone())
            }
            _ => None,
        }
    }

    /// The `__dict__` of a pickled `nn.Module` (it has `_parameters` or `_modules`).
    fn module_state(&self) -> Option<Value> {
        let Value::Object(o) = self else { return None };
        let state = o.borrow().state.clone()?;
        (state.get("_parameters").is_some() || state.get("_modules").is_some()).then_some(state)
    }

    /// A short description for error messages.
    fn describe(&self) -> String {
        match self {
            Value::Dict(d) => {
                let d = d.borrow();
                let keys: Vec<String> =
                    d.iter().take(6).filter_map(|(k, _)| k.key_string()).collect();
                format!(
                    "a dict with keys [{}{}]",
                    keys.join(", "),
                    if d.len() > 6 { ", ..." } else { "" }
                )
            }
            Value::List(l) => format!("a list of {}", l.borrow().len()),
            Value::Tuple(t) => format!("a tuple of {}", t.len()),
            Value::Object(o) => {
                let c = &o.borrow().class;
                format!("a {}.{} object", c.0, c.1)
            }
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Str(s) => format!("'{s}'"),
            Value::Tensor(_) => "a tensor".into(),
            other => format!("{other:?}").chars().take(40).collect(),
        }
    }
}

type Persistent<'a> = dyn FnMut(Value) -> std::result::Result<Value, String> + 'a;

struct Unpickler<'a, 'p> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: BTreeMap<u32, Value>,
    persistent: &'p mut Persistent<'p>,
}

type R<T> = std::result::Result<T, String>;

impl<'a, 'p> Unpickler<'a, 'p> {
    fn new(data: &'a [u8], persistent: &'p mut Persistent<'p>) -> Self {
        Unpickler { data, pos: 0, stack: Vec::new(), memo: BTreeMap::new(), persistent }
    }

    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let s = self.data.get(self.pos..self.pos + n).ok_or("truncated pickle")?;
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle")?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| "bad text in pickle".to_string())
    }

    fn pop(&mut self) -> R<Value> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_string())
    }

    fn top(&mut self) -> R<&mut Value> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_string())
    }

    /// Pops everything down to the topmost mark.
    fn pop_mark(&mut self) -> R<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or("pickle mark missing")?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn str_of(bytes: &[u8]) -> Value {
        Value::Str(String::from_utf8_lossy(bytes).into())
    }

    fn int_of(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Int(0);
        }
        if bytes.len() > 8 {
            return Value::BigInt(Rc::new(bytes.to_vec()));
        }
        let neg = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = [if neg { 0xff } else { 0 }; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        Value::Int(i64::from_le_bytes(buf))
    }

    fn memo_put(&mut self, i: u32) -> R<()> {
        let v = self.stack.last().ok_or("pickle stack underflow")?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn memo_get(&mut self, i: u32) -> R<()> {
        let v = self.memo.get(&i).ok_or(format!("pickle memo {i} missing"))?.clone();
        self.stack.push(v);
        Ok(())
    }

    /// Runs the machine until STOP and returns the value.
    fn load(&mut self) -> R<Value> {
        self.stack.clear();
        self.memo.clear();
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let v = Self::int_of(self.take(n)?);
                    self.stack.push(v)
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let v = Self::int_of(self.take(n)?);
                    self.stack.push(v)
                }
                b'I' | b'L' => {
                    let l = self.line()?.trim_end_matches('L');
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(l.parse().map_err(|_| format!("bad integer '{l}'"))?),
                    };
                    self.stack.push(v)
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack
                        .push(Value::Float(l.parse().map_err(|_| format!("bad float '{l}'"))?))
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = Self::str_of(self.take(n)?);
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = Self::str_of(self.take(n)?);
                    self.stack.push(v)
                }
                0x8d => {
                    let n = self.u64()? as usize;
                    let v = Self::str_of(self.take(n)?);
                    self.stack.push(v)
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let v = Self::str_of(self.take(n)?);
                    self.stack.push(v)
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let v = Self::str_of(self.take(n)?);
                    self.stack.push(v)
                }
                b'S' | b'V' => {
                    let l = self.line()?;
                    let l = l.trim_matches(|c| c == '\'' || c == '"');
                    self.stack.push(Value::Str(l.into()))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(v)))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(v)))
                }
                0x8e | 0x96 => {
                    let n = self.u64()? as usize;
                    let v = self.take(n)?.to_vec();
                    self.stack.push(Value::Bytes(Rc::new(v)))
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b']' => self.stack.push(Value::list(Vec::new())),
                b'}' => self.stack.push(Value::dict(Vec::new())),
                0x8f => self.stack.push(Value::list(Vec::new())), // EMPTY_SET
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::list(items))
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0].clone(), c[1].clone()))
                        .collect();
                    self.stack.push(Value::dict(pairs))
                }
                b'a' => {
                    let v = self.pop()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().push(v);
                    }
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items);
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    if let Value::Dict(d) = self.top()? {
                        d.borrow_mut().push((k, v));
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if let Value::Dict(d) = self.top()? {
                        let mut d = d.borrow_mut();
                        for c in items.chunks(2).filter(|c| c.len() == 2) {
                            d.push((c[0].clone(), c[1].clone()));
                        }
                    }
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?
                }
                b'p' => {
                    let i = self.line()?.parse().map_err(|_| "bad memo index")?;
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'g' => {
                    let i = self.line()?.parse().map_err(|_| "bad memo index")?;
                    self.memo_get(i)?
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.stack.push(Value::Global(Rc::new((module, name))))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(m), Some(n)) => {
                            self.stack.push(Value::Global(Rc::new((m.into(), n.into()))))
                        }
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = call(&f, &args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(&cls, &args)?;
                    self.stack.push(v)
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = call(&cls, &args)?;
                    self.stack.push(v)
                }
                b'o' => {
                    let mut items = self.pop_mark()?;
                    if items.is_empty() {
                        return Err("OBJ without a class".into());
                    }
                    let cls = items.remove(0);
                    let v = call(&cls, &Value::Tuple(Rc::new(items)))?;
                    self.stack.push(v)
                }
                b'i' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    let items = self.pop_mark()?;
                    let cls = Value::Global(Rc::new((module, name)));
                    let v = call(&cls, &Value::Tuple(Rc::new(items)))?;
                    self.stack.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = (self.persistent)(pid)?;
                    self.stack.push(v)
                }
                b'P' => {
                    let pid = Value::Str(self.line()?.into());
                    let v = (self.persistent)(pid)?;
                    self.stack.push(v)
                }
                op => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{op:02x} at byte {}",
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn tuple_items(v: &Value) -> Vec<Value> {
    match v {
        Value::Tuple(t) => t.to_vec(),
        Value::List(l) => l.borrow().clone(),
        _ => Vec::new(),
    }
}

fn int_list(v: Option<&Value>) -> R<Vec<i64>> {
    tuple_items(v.ok_or("missing tensor size")?)
        .iter()
        .map(|x| match x {
            Value::Int(i) => Ok(*i),
            other => Err(format!("bad tensor size entry {}", other.describe())),
        })
        .collect()
}

/// Applies callable `f` (a global) to `args`: tensors and dicts are built, anything else becomes
/// an opaque object.
fn call(f: &Value, args: &Value) -> R<Value> {
    let Value::Global(g) = f else {
        return Ok(Value::None);
    };
    let a = tuple_items(args);
    Ok(match (g.0.as_str(), g.1.as_str()) {
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => {
            let Some(Value::Storage(storage)) = a.first() else {
                return Err("tensor without a storage".into());
            };
            let offset = match a.get(1) {
                Some(Value::Int(o)) => *o,
                _ => return Err("bad tensor storage offset".into()),
            };
            let size = int_list(a.get(2))?;
            let stride = int_list(a.get(3))?;
            if size.len() != stride.len() {
                return Err("tensor size and stride differ in length".into());
            }
            Value::Tensor(Rc::new(TensorRef { storage: storage.clone(), offset, size, stride }))
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            a.into_iter().next().unwrap_or(Value::None)
        }
        ("torch._tensor", "_rebuild_from_type_v2") | ("torch._utils", "_rebuild_from_type_v2") => {
            match (a.first(), a.get(2)) {
                (Some(f), Some(args)) => call(f, args)?,
                _ => Value::None,
            }
        }
        ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
            // Python 2 pickles pass the items as a list of pairs.
            let items = a.first().map(tuple_items).unwrap_or_default();
            let pairs = items
                .iter()
                .filter_map(|p| {
                    let kv = tuple_items(p);
                    (kv.len() == 2).then(|| (kv[0].clone(), kv[1].clone()))
                })
                .collect();
            Value::dict(pairs)
        }
        ("builtins" | "__builtin__", "set" | "frozenset" | "list" | "tuple") => {
            Value::list(a.first().map(tuple_items).unwrap_or_default())
        }
        ("copy_reg" | "copyreg", "_reconstructor") => match a.first() {
            Some(Value::Global(cls)) => {
                Value::Object(Rc::new(RefCell::new(Object { class: cls.clone(), state: None })))
            }
            _ => Value::None,
        },
        _ => Value::Object(Rc::new(RefCell::new(Object { class: g.clone(), state: None }))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the machine on `bytes` with no persistent ids.
    fn unpickle(bytes: &[u8]) -> Value {
        let mut none = |_: Value| Ok(Value::None);
        Unpickler::new(bytes, &mut none).load().unwrap()
    }

    #[test]
    fn reads_protocol_2_dict_of_numbers() {
        // pickle.dumps({'a': 1, 'b': [2.5, 'x'], 'c': -300}, protocol=2)
        let v = unpickle(
            b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(G@\x04\
              \x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x04eX\x01\x00\x00\x00cq\x05J\xd4\xfe\
              \xff\xffu.",
        );
        assert!(matches!(v.get("a"), Some(Value::Int(1))));
        assert!(matches!(v.get("c"), Some(Value::Int(-300))));
        let Some(Value::List(l)) = v.get("b") else { panic!("list") };
        assert!(matches!(l.borrow()[0], Value::Float(f) if f == 2.5));
        assert_eq!(l.borrow()[1].as_str(), Some("x"));
    }

    #[test]
    fn memo_shares_mutable_containers() {
        // d = {}; pickle.dumps([d, d], protocol=2) with d filled after the first reference is
        // not expressible, so check the memo returns the same Rc instead.
        let v = unpickle(b"\x80\x02]q\x00(}q\x01h\x01e.");
        let Value::List(l) = v else { panic!("list") };
        let l = l.borrow();
        match (&l[0], &l[1]) {
            (Value::Dict(a), Value::Dict(b)) => assert!(Rc::ptr_eq(a, b)),
            _ => panic!("two dicts"),
        }
    }

    #[test]
    fn unknown_classes_become_placeholders() {
        // pickle.dumps(argparse.Namespace(lr=0.1), protocol=2)
        let v = unpickle(
            b"\x80\x02cargparse\nNamespace\nq\x00)\x81q\x01}q\x02X\x02\x00\x00\x00lrq\x03G?\xb9\
              \x99\x99\x99\x99\x99\x9asb.",
        );
        let Value::Object(o) = v else { panic!("object") };
        assert_eq!(o.borrow().class.1, "Namespace");
        assert!(o.borrow().state.as_ref().and_then(|s| s.get("lr")).is_some());
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(sniff(b"PK\x03\x04...."), Format::Zip);
        assert_eq!(sniff(b"\x80\x02\x8a\n"), Format::Pickle);
        assert_eq!(sniff(b"\x10\x00\x00\x00\x00\x00\x00\x00{"), Format::Other);
        // A safetensors header of 0x380 bytes starts like a protocol-3 pickle.
        assert_eq!(sniff(b"\x80\x03\x00\x00\x00\x00\x00\x00{\"a"), Format::Other);
    }
}
