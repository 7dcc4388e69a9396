//! Reads `pytorch_model.bin` in both formats `torch.save` has written:
//! - the zip archive (torch >= 1.6), whose `data.pkl` is a pickle of the state dict and whose
//!   `data/<key>` entries hold the raw storages;
//! - the legacy format (torch < 1.6, and `_use_new_zipfile_serialization=False` since), as
//!   `torch.serialization._legacy_save` writes it: five things one after the other, a pickled
//!   magic number, a pickled protocol version, a pickled dict of system information, the
//!   pickled state dict (storages as persistent ids), the pickled list of storage keys, then
//!   each storage in that order as its element count (int64, little-endian) and raw bytes.
//!
//! libtorch's own C++ unpickler cannot read most such files: it turns
//! `collections.OrderedDict` (what `model.state_dict()` is) into None. This is a small pickle
//! machine for the opcodes `torch.save` emits, building tensors with
//! `torch._utils._rebuild_tensor_v2`'s arguments and no code execution.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Kind, Tensor};

/// What the pickle builds; only what a state dict needs is kept apart (the other values are
/// kept for error messages).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for i64 (the legacy format's magic number), little-endian.
    Long(Vec<u8>),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    /// A persistent id resolved to a storage: its dtype and archive key.
    Storage {
        kind: Kind,
        key: String,
    },
    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    Tensor {
        kind: Kind,
        key: String,
        offset: i64,
        size: Vec<i64>,
        stride: Vec<i64>,
    },
    /// Anything else a reduce or newobj made (ignored when not a tensor).
    Object,
}

/// The pickle opcodes torch.save's files use, by the names Python's `pickle` module gives them.
mod opcode {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const BINSTRING: u8 = b'T';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const EMPTY_DICT: u8 = b'}';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const POP: u8 = b'0';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE3: u8 = 0x87;
}

/// Why a `torch.save` file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file cannot be opened or mapped.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Neither of torch.save's formats: another kind of file.
    #[error("neither format torch.save writes (a zip archive, or the legacy pickle sequence of torch < 1.6)")]
    NotTorchSave,
    /// What torch.save can write but this reader does not read (a pickle opcode, a storage
    /// type, a storage view, a big-endian or another protocol's file): convert it elsewhere.
    #[error("{0}")]
    Unsupported(String),
    /// Bytes that do not decode as torch.save writes them (a damaged or truncated file).
    #[error("{0}")]
    Malformed(String),
    /// The format the file is in, and what failed within it.
    #[error("{format}: {source}")]
    In { format: &'static str, source: Box<PickleError> },
}

impl From<String> for PickleError {
    fn from(message: String) -> Self {
        PickleError::Malformed(message)
    }
}

impl From<&str> for PickleError {
    fn from(message: &str) -> Self {
        PickleError::Malformed(message.to_string())
    }
}

/// A damaged file, in words.
macro_rules! malformed {
    ($($arg:tt)*) => { PickleError::Malformed(format!($($arg)*)) };
}

/// What this reader does not read, in words.
macro_rules! unsupported {
    ($($arg:tt)*) => { PickleError::Unsupported(format!($($arg)*)) };
}

type Fail = PickleError;

impl Value {
    /// What the value is, in a few words (for errors: a state dict's dump would be huge).
    fn describe(&self) -> String {
        match self {
            Value::Dict(d) => format!("a dict of {} entries", d.len()),
            Value::List(l) => format!("a list of {} items", l.len()),
            Value::Tuple(t) => format!("a tuple of {} items", t.len()),
            Value::Str(s) if s.len() > 60 => format!("a string of {} bytes", s.len()),
            Value::Long(b) => format!("a {}-byte integer", b.len()),
            Value::Tensor { size, .. } => format!("a tensor of shape {size:?}"),
            Value::Object => "an object".into(),
            small => format!("{small:?}"),
        }
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>, Fail> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                other => Err(malformed!("{what}: expected an integer, found {}", other.describe())),
            })
            .collect(),
        other => Err(malformed!("{what}: expected a tuple of integers, found {}", other.describe())),
    }
}

fn storage_kind(class: &str) -> Result<Kind, Fail> {
    Ok(match class {
        "FloatStorage" => Kind::Float,
        "DoubleStorage" => Kind::Double,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => return Err(unsupported!("unsupported storage type torch.{other}")),
    })
}

/// Calls a global with its arguments, as REDUCE does, for the callables a state dict uses.
fn reduce(callable: Value, args: Value) -> Result<Value, Fail> {
    let Value::Global(module, name) = callable else { return Ok(Value::Object) };
    let Value::Tuple(args) = args else { return Ok(Value::Object) };
    Ok(match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") => Value::Dict(Vec::new()),
        ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
            let [storage, offset, size, stride, ..] = args.as_slice() else {
                return Err(malformed!("{name}: {} arguments", args.len()));
            };
            let Value::Storage { kind, key } = storage else {
                return Err(malformed!("{name}: expected a storage, found {}", storage.describe()));
            };
            let Value::Int(offset) = offset else {
                return Err(malformed!("{name}: bad storage offset {}", offset.describe()));
            };
            Value::Tensor {
                kind: *kind,
                key: key.clone(),
                offset: *offset,
                size: ints(size, "tensor size")?,
                stride: ints(stride, "tensor stride")?,
            }
        }
        // A saved nn.Parameter: its data.
        ("torch._utils", "_rebuild_parameter") => args.into_iter().next().unwrap_or(Value::None),
        _ => Value::Object,
    })
}

/// Runs the pickle program that starts at byte `start` of `data`; returns the object STOP
/// leaves and the byte after the STOP.
fn unpickle(data: &[u8], start: usize) -> Result<(Value, usize), Fail> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = start;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], Fail> {
        let bytes = data.get(*pos..*pos + n).ok_or_else(|| format!("truncated at byte {pos}"))?;
        *pos += n;
        Ok(bytes)
    };
    let line = |pos: &mut usize| -> Result<String, Fail> {
        let end = data[*pos..].iter().position(|&b| b == b'\n').ok_or("unterminated line")?;
        let s = String::from_utf8_lossy(&data[*pos..*pos + end]).into_owned();
        *pos += end + 1;
        Ok(s)
    };
    let u32_le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| format!("stack empty at byte {pos}"))?
        };
    }
    macro_rules! since_mark {
        () => {{
            let mark = marks.pop().ok_or_else(|| format!("no mark at byte {pos}"))?;
            stack.split_off(mark)
        }};
    }
    loop {
        let at = pos;
        let op = *take(&mut pos, 1)?.first().ok_or("empty pickle")?;
        match op {
            opcode::PROTO => pos += 1,
            opcode::FRAME => pos += 8,
            opcode::MARK => marks.push(stack.len()),
            opcode::STOP => return Ok((stack.pop().ok_or("STOP with an empty stack")?, pos)),
            opcode::NONE => stack.push(Value::None),
            opcode::NEWTRUE => stack.push(Value::Bool(true)),
            opcode::NEWFALSE => stack.push(Value::Bool(false)),
            opcode::BININT1 => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            opcode::BININT2 => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))))
            }
            opcode::BININT => stack.push(Value::Int(i64::from(u32_le(take(&mut pos, 4)?) as i32))),
            opcode::LONG1 => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(take(&mut pos, 1)?[0]);
                let b = take(&mut pos, n)?;
                if n > 8 {
                    stack.push(Value::Long(b.to_vec()));
                    continue;
                }
                let mut v: i64 = if b.last().is_some_and(|&x| x & 0x80 != 0) { -1 } else { 0 };
                for &byte in b.iter().rev() {
                    v = (v << 8) | i64::from(byte);
                }
                stack.push(Value::Int(v))
            }
            opcode::BINFLOAT => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| "bad float")?)))
            }
            opcode::BINUNICODE
            | opcode::SHORT_BINUNICODE
            | opcode::SHORT_BINSTRING
            | opcode::BINSTRING
            | opcode::BINBYTES
            | opcode::SHORT_BINBYTES => {
                let n = match op {
                    opcode::SHORT_BINUNICODE | opcode::SHORT_BINSTRING | opcode::SHORT_BINBYTES => {
                        usize::from(take(&mut pos, 1)?[0])
                    }
                    _ => u32_le(take(&mut pos, 4)?) as usize,
                };
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()))
            }
            opcode::GLOBAL => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(module, name))
            }
            opcode::STACK_GLOBAL => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err(malformed!("STACK_GLOBAL without strings at byte {at}")),
                }
            }
            opcode::BINPUT => {
                let k = u32::from(take(&mut pos, 1)?[0]);
                memo.insert(k, stack.last().cloned().ok_or("BINPUT on an empty stack")?);
            }
            opcode::LONG_BINPUT => {
                let k = u32_le(take(&mut pos, 4)?);
                memo.insert(k, stack.last().cloned().ok_or("LONG_BINPUT on an empty stack")?);
            }
            opcode::MEMOIZE => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or("MEMOIZE on an empty stack")?);
            }
            opcode::BINGET | opcode::LONG_BINGET => {
                let k =
                    if op == opcode::BINGET { u32::from(take(&mut pos, 1)?[0]) } else { u32_le(take(&mut pos, 4)?) };
                stack.push(memo.get(&k).cloned().ok_or_else(|| format!("memo {k} unset at byte {at}"))?)
            }
            opcode::EMPTY_DICT => stack.push(Value::Dict(Vec::new())),
            opcode::EMPTY_LIST => stack.push(Value::List(Vec::new())),
            opcode::EMPTY_TUPLE => stack.push(Value::Tuple(Vec::new())),
            opcode::TUPLE => {
                let items = since_mark!();
                stack.push(Value::Tuple(items))
            }
            opcode::TUPLE1..=opcode::TUPLE3 => {
                let n = usize::from(op - opcode::TUPLE1 + 1);
                let items = stack.split_off(stack.len().checked_sub(n).ok_or("TUPLEn on a short stack")?);
                stack.push(Value::Tuple(items))
            }
            opcode::SETITEM | opcode::SETITEMS => {
                let items = if op == opcode::SETITEM {
                    let v = pop!();
                    let k = pop!();
                    vec![k, v]
                } else {
                    since_mark!()
                };
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    Some(Value::Object) => {}
                    other => {
                        return Err(malformed!(
                            "SETITEM(S) on {} at byte {at}",
                            other.map_or("nothing".into(), |v| v.describe())
                        ))
                    }
                }
            }
            opcode::APPEND | opcode::APPENDS => {
                let items = if op == opcode::APPEND { vec![pop!()] } else { since_mark!() };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    Some(Value::Object) => {}
                    other => {
                        return Err(malformed!(
                            "APPEND(S) on {} at byte {at}",
                            other.map_or("nothing".into(), |v| v.describe())
                        ))
                    }
                }
            }
            opcode::REDUCE => {
                let args = pop!();
                let callable = pop!();
                stack.push(reduce(callable, args)?)
            }
            opcode::NEWOBJ => {
                let _args = pop!();
                let _class = pop!();
                stack.push(Value::Object)
            }
            opcode::BUILD => {
                // BUILD: an object's state (e.g. a state dict's `_metadata`), not needed here.
                let _state = pop!();
            }
            opcode::BINPERSID => {
                let pid = pop!();
                let Value::Tuple(parts) = pid else {
                    return Err(malformed!("persistent id {} at byte {at}", pid.describe()));
                };
                match parts.as_slice() {
                    // Legacy ids end in a view's (key, offset, size), which torch >= 0.4 never
                    // writes: refused rather than guessed (its offset unit changed over time).
                    [Value::Str(tag), _, _, _, _, view] if tag == "storage" && !matches!(view, Value::None) => {
                        return Err(unsupported!("a storage view {view:?} at byte {at} (not supported)"))
                    }
                    [Value::Str(tag), Value::Global(_, class), Value::Str(key), ..] if tag == "storage" => {
                        stack.push(Value::Storage { kind: storage_kind(class)?, key: key.clone() })
                    }
                    other => return Err(unsupported!("unsupported persistent id {other:?} at byte {at}")),
                }
            }
            opcode::POP => {
                let _ = pop!();
            }
            other => return Err(unsupported!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
        }
    }
}

/// The named tensors of a `torch.save`d state dict (either format), on the CPU.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, Fail> {
    let file = std::fs::File::open(path)?;
    // Safety: the map is read once, while this function holds the file open; torch.save's
    // files are not written in place.
    let bytes = unsafe { memmap2::Mmap::map(&file) }?;
    match bytes.get(..4) {
        Some(b"PK\x03\x04") => {
            read_zip(file).map_err(|e| PickleError::In { format: "zip-format torch.save file", source: e.into() })
        }
        Some([opcode::PROTO, ..]) => {
            let format = "legacy-format torch.save file (torch < 1.6)";
            read_legacy(&bytes).map_err(|e| PickleError::In { format, source: e.into() })
        }
        _ => Err(PickleError::NotTorchSave),
    }
}

fn read_zip(file: std::fs::File) -> Result<Vec<(String, Tensor)>, Fail> {
    let mut zip = zip::ZipArchive::new(file).map_err(|e| e.to_string())?;
    let pkl = (0..zip.len())
        .filter_map(|i| zip.by_index(i).ok().map(|f| f.name().to_string()))
        .find(|n| n.ends_with("data.pkl"))
        .ok_or("no data.pkl in the archive")?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let mut read = |name: &str| -> Result<Vec<u8>, Fail> {
        let mut entry = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(|e| format!("{name}: {e}"))?;
        Ok(bytes)
    };
    let (root, _) = unpickle(&read(&pkl)?, 0)?;
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    assemble(root, |key, kind| {
        if !storages.contains_key(key) {
            let bytes = read(&format!("{prefix}data/{key}"))?;
            storages.insert(key.to_string(), storage(&bytes, kind)?);
        }
        Ok(storages[key].shallow_clone())
    })
}

/// The magic number `_legacy_save` pickles first (0x1950a86a20f9469cfc6c), little-endian.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL: i64 = 1001;

fn read_legacy(data: &[u8]) -> Result<Vec<(String, Tensor)>, Fail> {
    let (magic, pos) = unpickle(data, 0)?;
    if !matches!(&magic, Value::Long(b) if b[..] == LEGACY_MAGIC) {
        return Err("a pickle, but not torch.save's: the magic number is missing".into());
    }
    let (protocol, pos) = unpickle(data, pos)?;
    if !matches!(protocol, Value::Int(LEGACY_PROTOCOL)) {
        return Err(unsupported!("legacy torch.save protocol {}, expected {LEGACY_PROTOCOL}", protocol.describe()));
    }
    let (sys_info, pos) = unpickle(data, pos)?;
    let Value::Dict(info) = sys_info else { return Err(malformed!("system information: {}", sys_info.describe())) };
    let little = info.iter().find(|(k, _)| matches!(k, Value::Str(k) if k == "little_endian"));
    if let Some((_, Value::Bool(false))) = little {
        return Err(PickleError::Unsupported("saved on a big-endian machine (not supported)".into()));
    }
    let (root, pos) = unpickle(data, pos)?;
    let (keys, mut pos) = unpickle(data, pos)?;
    let Value::List(keys) = keys else {
        return Err(malformed!("storage keys: expected a list, found {}", keys.describe()));
    };
    // The storages follow in the keys' order; their element types come from the tensors.
    let kinds = storage_kinds(&root);
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else { return Err(malformed!("storage key: {}", key.describe())) };
        let kind = *kinds.get(&key).ok_or_else(|| format!("storage {key} belongs to no tensor"))?;
        let at = pos;
        let numel = data.get(pos..pos + 8).ok_or_else(|| format!("storage {key}: truncated at byte {at}"))?;
        let numel = u64::from_le_bytes(numel.try_into().map_err(|_| "bad storage size")?);
        let bytes = usize::try_from(numel).ok().and_then(|n| n.checked_mul(kind.elt_size_in_bytes()));
        let end = bytes.and_then(|b| b.checked_add(pos + 8)).filter(|&end| end <= data.len()).ok_or_else(|| {
            format!(
                "storage {key}: {numel} elements from byte {at} run past the end of the file ({} bytes)",
                data.len()
            )
        })?;
        storages.insert(key, storage(&data[pos + 8..end], kind)?);
        pos = end;
    }
    if pos != data.len() {
        return Err(malformed!("{} bytes after the last storage", data.len() - pos));
    }
    assemble(root, |key, _| {
        storages.get(key).map(Tensor::shallow_clone).ok_or_else(|| malformed!("storage {key} is not in the file"))
    })
}

/// The element type of every storage a tensor of the state dict uses.
fn storage_kinds(root: &Value) -> HashMap<String, Kind> {
    let Value::Dict(entries) = root else { return HashMap::new() };
    entries
        .iter()
        .filter_map(|(_, v)| match v {
            Value::Tensor { kind, key, .. } => Some((key.clone(), *kind)),
            _ => None,
        })
        .collect()
}

/// A storage's raw bytes as a flat tensor of `kind`.
fn storage(bytes: &[u8], kind: Kind) -> Result<Tensor, Fail> {
    let numel = (bytes.len() / kind.elt_size_in_bytes()) as i64;
    Tensor::f_from_data_size(&bytes[..numel as usize * kind.elt_size_in_bytes()], &[numel], kind)
        .map_err(|e| malformed!("{e}"))
}

/// The state dict's tensors, each a strided view of its storage (`storage(key, kind)`),
/// checked to lie inside it.
fn assemble(
    root: Value,
    mut storage: impl FnMut(&str, Kind) -> Result<Tensor, Fail>,
) -> Result<Vec<(String, Tensor)>, Fail> {
    let Value::Dict(entries) = root else {
        return Err(malformed!("the pickle holds {}, not a state dict", root.describe()));
    };
    let mut out = Vec::new();
    for (name, value) in entries {
        let (Value::Str(name), Value::Tensor { kind, key, offset, size, stride }) = (name, value) else { continue };
        let data = storage(&key, kind)?;
        let last = size.iter().zip(&stride).map(|(&n, &s)| (n - 1).max(0) * s).sum::<i64>() + offset;
        let empty = size.contains(&0);
        if offset < 0 || (!empty && last >= data.numel() as i64) {
            return Err(malformed!(
                "{name}: shape {size:?} from element {offset} needs more than the {} elements its storage holds",
                data.numel()
            ));
        }
        let tensor = data.f_as_strided(&size, &stride, offset).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}
