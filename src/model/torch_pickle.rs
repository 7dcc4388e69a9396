//! Reads `pytorch_model.bin`: the zip archive `torch.save` writes (torch >= 1.6), whose
//! `data.pkl` is a pickle of the state dict and whose `data/<key>` entries hold the raw
//! storages. libtorch's own C++ unpickler cannot read most such files: it turns
//! `collections.OrderedDict` (what `model.state_dict()` is) into None. This is a small pickle
//! machine for the opcodes `torch.save` emits, building tensors with
//! `torch._utils._rebuild_tensor_v2`'s arguments and no code execution.

use std::collections::HashMap;
use std::io::Read;
use tch::{Kind, Tensor};

/// What the pickle builds; only what a state dict needs is kept apart (the other values are
/// kept for error messages).
#[derive(Clone, Debug)]
#[allow(dead_code)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
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

type Fail = String;

fn ints(v: &Value, what: &str) -> Result<Vec<i64>, Fail> {
    match v {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|i| match i {
                Value::Int(n) => Ok(*n),
                other => Err(format!("{what}: expected an integer, found {other:?}")),
            })
            .collect(),
        other => Err(format!("{what}: expected a tuple of integers, found {other:?}")),
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
        other => return Err(format!("unsupported storage type torch.{other}")),
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
                return Err(format!("{name}: {} arguments", args.len()));
            };
            let Value::Storage { kind, key } = storage else {
                return Err(format!("{name}: expected a storage, found {storage:?}"));
            };
            let Value::Int(offset) = offset else { return Err(format!("{name}: bad storage offset {offset:?}")) };
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

/// Runs the pickle program; returns the object STOP leaves.
fn unpickle(data: &[u8]) -> Result<Value, Fail> {
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let mut pos = 0usize;
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
            0x80 => pos += 1,                // PROTO
            0x95 => pos += 8,                // FRAME
            b'(' => marks.push(stack.len()), // MARK
            b'.' => return stack.pop().ok_or_else(|| "STOP with an empty stack".to_string()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'K' => stack.push(Value::Int(i64::from(take(&mut pos, 1)?[0]))),
            b'M' => {
                let b = take(&mut pos, 2)?;
                stack.push(Value::Int(i64::from(u16::from_le_bytes([b[0], b[1]]))))
            }
            b'J' => stack.push(Value::Int(i64::from(u32_le(take(&mut pos, 4)?) as i32))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = usize::from(take(&mut pos, 1)?[0]);
                let b = take(&mut pos, n)?;
                let mut v: i64 = if b.last().is_some_and(|&x| x & 0x80 != 0) { -1 } else { 0 };
                for &byte in b.iter().rev() {
                    v = (v << 8) | i64::from(byte);
                }
                stack.push(Value::Int(v))
            }
            b'G' => {
                let b = take(&mut pos, 8)?;
                stack.push(Value::Float(f64::from_be_bytes(b.try_into().map_err(|_| "bad float")?)))
            }
            b'X' | 0x8c | b'U' | b'T' | b'B' | b'C' => {
                let n = match op {
                    0x8c | b'U' | b'C' => usize::from(take(&mut pos, 1)?[0]),
                    _ => u32_le(take(&mut pos, 4)?) as usize,
                };
                stack.push(Value::Str(String::from_utf8_lossy(take(&mut pos, n)?).into_owned()))
            }
            b'c' => {
                let module = line(&mut pos)?;
                let name = line(&mut pos)?;
                stack.push(Value::Global(module, name))
            }
            0x93 => {
                let name = pop!();
                let module = pop!();
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(m, n)),
                    _ => return Err(format!("STACK_GLOBAL without strings at byte {at}")),
                }
            }
            b'q' => {
                let k = u32::from(take(&mut pos, 1)?[0]);
                memo.insert(k, stack.last().cloned().ok_or("BINPUT on an empty stack")?);
            }
            b'r' => {
                let k = u32_le(take(&mut pos, 4)?);
                memo.insert(k, stack.last().cloned().ok_or("LONG_BINPUT on an empty stack")?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or("MEMOIZE on an empty stack")?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' { u32::from(take(&mut pos, 1)?[0]) } else { u32_le(take(&mut pos, 4)?) };
                stack.push(memo.get(&k).cloned().ok_or_else(|| format!("memo {k} unset at byte {at}"))?)
            }
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b't' => {
                let items = since_mark!();
                stack.push(Value::Tuple(items))
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let items = stack.split_off(stack.len().checked_sub(n).ok_or("TUPLEn on a short stack")?);
                stack.push(Value::Tuple(items))
            }
            b's' | b'u' => {
                let items = if op == b's' {
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
                    other => return Err(format!("SETITEM(S) on {other:?} at byte {at}")),
                }
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop!()] } else { since_mark!() };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    Some(Value::Object) => {}
                    other => return Err(format!("APPEND(S) on {other:?} at byte {at}")),
                }
            }
            b'R' => {
                let args = pop!();
                let callable = pop!();
                stack.push(reduce(callable, args)?)
            }
            0x81 => {
                let _args = pop!();
                let _class = pop!();
                stack.push(Value::Object)
            }
            b'b' => {
                // BUILD: an object's state (e.g. a state dict's `_metadata`), not needed here.
                let _state = pop!();
            }
            b'Q' => {
                let pid = pop!();
                let Value::Tuple(parts) = pid else { return Err(format!("persistent id {pid:?} at byte {at}")) };
                match parts.as_slice() {
                    [Value::Str(tag), Value::Global(_, class), Value::Str(key), ..] if tag == "storage" => {
                        stack.push(Value::Storage { kind: storage_kind(class)?, key: key.clone() })
                    }
                    other => return Err(format!("unsupported persistent id {other:?} at byte {at}")),
                }
            }
            b'0' => {
                let _ = pop!();
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x} at byte {at}")),
        }
    }
}

/// The named tensors of a `torch.save`d state dict (zip format), on the CPU.
pub fn read_state_dict(path: &std::path::Path) -> Result<Vec<(String, Tensor)>, Fail> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| format!("not a zip-format torch.save file (torch < 1.6 wrote another format): {e}"))?;
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
    let root = unpickle(&read(&pkl)?)?;
    let Value::Dict(entries) = root else { return Err(format!("data.pkl holds {root:?}, not a state dict")) };
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut out = Vec::new();
    for (name, value) in entries {
        let (Value::Str(name), Value::Tensor { kind, key, offset, size, stride }) = (name, value) else { continue };
        if !storages.contains_key(&key) {
            let bytes = read(&format!("{prefix}data/{key}"))?;
            let numel = (bytes.len() / kind.elt_size_in_bytes()) as i64;
            let storage = Tensor::f_from_data_size(&bytes, &[numel], kind).map_err(|e| e.to_string())?;
            storages.insert(key.clone(), storage);
        }
        let tensor = storages[&key].f_as_strided(&size, &stride, offset).map_err(|e| format!("{name}: {e}"))?;
        out.push((name, tensor));
    }
    Ok(out)
}
