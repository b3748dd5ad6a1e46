//! GGUF files (versions 2 and 3): header, metadata, tensor infos, memory-mapped tensor data.
//!
//! In: a path. Out: a [`GgufFile`] holding the typed metadata ([`GgufValue`]), the tensor infos
//! (shapes reversed from GGUF's innermost-first order to row-major) and the mapped file, through
//! which [`WeightSource`] hands out raw blocks or f32 values dequantized by [`super::ggml`].
//!
//! The file is untrusted: every count, length and offset is checked against the bytes that remain
//! before anything is allocated from it, so a corrupt or hostile file gives an [`Error`] naming the
//! file and the problem, never a panic or an allocation larger than the file itself justifies.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::ggml::{self, GgmlType};
use super::{DType, TensorInfo, WeightSource};
use crate::{Error, Result};

/// `general.alignment` when the file does not set it.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays nested deeper than this are refused (real files nest at most once); the limit
/// keeps a file of nested array headers from overflowing the stack.
const MAX_ARRAY_DEPTH: usize = 8;
/// Bytes of the fixed header: magic, version, tensor count, metadata count.
const HEADER_BYTES: u64 = 24;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored as one typed vector so that large arrays (a 262 144-token vocabulary)
/// cost one allocation per element at most and can be borrowed as slices.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufValue {
    /// The GGUF type name (`u32`, `string`, `array<string>`, …), for error messages.
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "string".into(),
            GgufValue::Array(a) => format!("array<{}>", a.elem_type_name()),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F64(_) => "f64".into(),
        }
    }

    /// Any integer that is non-negative, widened to u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// An `f32`, or an `f64` narrowed to f32.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(v) => Some(v),
            GgufValue::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// An `f64`, or an `f32` widened.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A `bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A `string`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array of any element type.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// True when the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The element type name (`string`, `i32`, `array<f32>` …).
    pub fn elem_type_name(&self) -> String {
        match self {
            GgufArray::U8(_) => "u8".into(),
            GgufArray::I8(_) => "i8".into(),
            GgufArray::U16(_) => "u16".into(),
            GgufArray::I16(_) => "i16".into(),
            GgufArray::U32(_) => "u32".into(),
            GgufArray::I32(_) => "i32".into(),
            GgufArray::F32(_) => "f32".into(),
            GgufArray::Bool(_) => "bool".into(),
            GgufArray::String(_) => "string".into(),
            GgufArray::Array(v) => {
                format!("array<{}>", v.first().map_or("?".into(), |a| a.elem_type_name()))
            }
            GgufArray::U64(_) => "u64".into(),
            GgufArray::I64(_) => "i64".into(),
            GgufArray::F64(_) => "f64".into(),
        }
    }

    /// The elements of a string array.
    pub fn as_strs(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an f32 array.
    pub fn as_f32s(&self) -> Option<&[f32]> {
        match self {
            GgufArray::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an i32 array.
    pub fn as_i32s(&self) -> Option<&[i32]> {
        match self {
            GgufArray::I32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of a u32 array.
    pub fn as_u32s(&self) -> Option<&[u32]> {
        match self {
            GgufArray::U32(v) => Some(v),
            _ => None,
        }
    }

    /// The elements of an array of arrays.
    pub fn as_arrays(&self) -> Option<&[GgufArray]> {
        match self {
            GgufArray::Array(v) => Some(v),
            _ => None,
        }
    }

    /// Element `i` as a value (copies it; use the slice accessors for bulk access).
    pub fn get(&self, i: usize) -> Option<GgufValue> {
        Some(match self {
            GgufArray::U8(v) => GgufValue::U8(*v.get(i)?),
            GgufArray::I8(v) => GgufValue::I8(*v.get(i)?),
            GgufArray::U16(v) => GgufValue::U16(*v.get(i)?),
            GgufArray::I16(v) => GgufValue::I16(*v.get(i)?),
            GgufArray::U32(v) => GgufValue::U32(*v.get(i)?),
            GgufArray::I32(v) => GgufValue::I32(*v.get(i)?),
            GgufArray::F32(v) => GgufValue::F32(*v.get(i)?),
            GgufArray::Bool(v) => GgufValue::Bool(*v.get(i)?),
            GgufArray::String(v) => GgufValue::String(v.get(i)?.clone()),
            GgufArray::Array(v) => GgufValue::Array(v.get(i)?.clone()),
            GgufArray::U64(v) => GgufValue::U64(*v.get(i)?),
            GgufArray::I64(v) => GgufValue::I64(*v.get(i)?),
            GgufArray::F64(v) => GgufValue::F64(*v.get(i)?),
        })
    }
}

/// One tensor of a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    /// Name, row-major shape and dtype (`DType::Ggml`).
    pub info: TensorInfo,
    /// The dims as the file stores them, innermost (contiguous) first.
    pub dims: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: usize,
    /// Bytes of data.
    pub n_bytes: usize,
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensor>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: usize,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

/// A parse failure before the path is attached.
#[derive(Debug)]
enum Bad {
    Malformed(String),
    Unsupported(String),
}

impl Bad {
    /// Prefixes the message with where the parser was.
    fn within(self, ctx: impl fmt::Display) -> Bad {
        match self {
            Bad::Malformed(m) => Bad::Malformed(format!("{ctx}: {m}")),
            Bad::Unsupported(m) => Bad::Unsupported(format!("{ctx}: {m}")),
        }
    }

    fn into_error(self, path: &Path) -> Error {
        match self {
            Bad::Malformed(what) => Error::malformed(path, "GGUF", what),
            Bad::Unsupported(what) => Error::Unsupported { path: path.to_path_buf(), what },
        }
    }
}

type Parse<T> = std::result::Result<T, Bad>;

/// Reads little-endian values from the mapped bytes, refusing to read past the end.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Parse<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(Bad::Malformed(format!(
                "truncated: {n} bytes needed at offset {} but the file ends at {}",
                self.pos,
                self.buf.len()
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Parse<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("take returns exactly N bytes"))
    }

    fn u32(&mut self) -> Parse<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u64` count of items of at least `min_bytes` each, checked against the bytes left.
    fn count(&mut self, what: &str, min_bytes: u64) -> Parse<usize> {
        let at = self.pos;
        let n = self.u64()?;
        match n.checked_mul(min_bytes) {
            Some(need) if need <= self.remaining() as u64 => Ok(n as usize),
            _ => Err(Bad::Malformed(format!(
                "{what} {n} at offset {at} cannot fit in the {} bytes left in the file",
                self.remaining()
            ))),
        }
    }

    fn string(&mut self) -> Parse<String> {
        let at = self.pos;
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(Bad::Malformed(format!(
                "string length {len} at offset {at} exceeds the {} bytes left in the file",
                self.remaining()
            )));
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| Bad::Malformed(format!("string at offset {at} is not valid UTF-8: {e}")))
    }

    /// `n` fixed-size little-endian elements decoded by `f`.
    fn elems<T, const N: usize>(&mut self, n: usize, f: fn([u8; N]) -> T) -> Parse<Vec<T>> {
        let bytes = self.take(n as u64 * N as u64)?; // n was checked by `count` with min N
        Ok(bytes.chunks_exact(N).map(|c| f(c.try_into().expect("chunks of N bytes"))).collect())
    }

    fn value(&mut self, ty: u32) -> Parse<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(self.array::<1>()?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => GgufValue::Array(self.array_value(0)?),
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            _ => return Err(Bad::Malformed(format!("unknown metadata value type {ty}"))),
        })
    }

    fn array_value(&mut self, depth: usize) -> Parse<GgufArray> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Bad::Malformed(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
        }
        let ty = self.u32()?;
        let min_bytes = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12, // element type + count
            _ => return Err(Bad::Malformed(format!("unknown array element type {ty}"))),
        };
        let n = self.count("array count", min_bytes)?;
        Ok(match ty {
            0 => GgufArray::U8(self.take(n as u64)?.to_vec()),
            1 => GgufArray::I8(self.elems(n, i8::from_le_bytes)?),
            2 => GgufArray::U16(self.elems(n, u16::from_le_bytes)?),
            3 => GgufArray::I16(self.elems(n, i16::from_le_bytes)?),
            4 => GgufArray::U32(self.elems(n, u32::from_le_bytes)?),
            5 => GgufArray::I32(self.elems(n, i32::from_le_bytes)?),
            6 => GgufArray::F32(self.elems(n, f32::from_le_bytes)?),
            7 => GgufArray::Bool(self.elems(n, |[b]: [u8; 1]| b != 0)?),
            8 => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.string().map_err(|e| e.within(format_args!("element {i}")))?);
                }
                GgufArray::String(v)
            }
            9 => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(self.array_value(depth + 1).map_err(|e| e.within(format_args!("element {i}")))?);
                }
                GgufArray::Array(v)
            }
            10 => GgufArray::U64(self.elems(n, u64::from_le_bytes)?),
            11 => GgufArray::I64(self.elems(n, i64::from_le_bytes)?),
            12 => GgufArray::F64(self.elems(n, f64::from_le_bytes)?),
            _ => unreachable!("element type checked above"),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; tensor data stays mapped, not read.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < HEADER_BYTES {
            return Err(Error::malformed(
                path,
                "GGUF",
                format!("truncated: file is {len} bytes, shorter than the {HEADER_BYTES}-byte header"),
            ));
        }
        // SAFETY: the file is opened read-only; edgellm never writes model files while they are
        // mapped, and a concurrent external writer is outside the contract of every mmap reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path, mmap).map_err(|bad| bad.into_error(path))
    }

    fn parse(path: &Path, mmap: Mmap) -> Parse<GgufFile> {
        let mut c = Cursor { buf: &mmap, pos: 0 };
        let magic: [u8; 4] = c.array()?;
        if &magic != b"GGUF" {
            return Err(Bad::Malformed(format!("bad magic {magic:02x?}, expected \"GGUF\"")));
        }
        let version = c.u32()?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(Bad::Unsupported(
                    "GGUF version 1 (only versions 2 and 3 are read; re-convert the model with a current llama.cpp)"
                        .into(),
                ))
            }
            v if (1..=3).contains(&v.swap_bytes()) => {
                return Err(Bad::Unsupported(format!("big-endian GGUF (version {})", v.swap_bytes())))
            }
            v => return Err(Bad::Unsupported(format!("GGUF version {v} (only versions 2 and 3 are read)"))),
        }
        // a tensor info is at least: name length 8, n_dims 4, type 4, offset 8
        let n_tensors = c.count("tensor count", 24)?;
        // a metadata entry is at least: key length 8, value type 4, one byte of value
        let n_kv = c.count("metadata count", 13)?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string().map_err(|e| e.within(format_args!("metadata key #{i}")))?;
            let value =
                c.u32().and_then(|ty| c.value(ty)).map_err(|e| e.within(format_args!("metadata `{key}`")))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(Bad::Malformed(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(Bad::Malformed(format!("`general.alignment` is {v:?}, not a power of two"))),
            },
        };

        let mut raw = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let t = read_tensor_info(&mut c, alignment).map_err(|e| e.within(format_args!("tensor #{i}")))?;
            if by_name.insert(t.info.name.clone(), i).is_some() {
                return Err(Bad::Malformed(format!("tensor `{}` appears twice", t.info.name)));
            }
            raw.push(t);
        }

        let data_offset = (c.pos as u64).checked_next_multiple_of(alignment).ok_or_else(|| {
            Bad::Malformed(format!("data section offset overflows with alignment {alignment}"))
        })?;
        if !raw.is_empty() && data_offset > mmap.len() as u64 {
            return Err(Bad::Malformed(format!(
                "truncated: the data section starts at {data_offset} but the file ends at {}",
                mmap.len()
            )));
        }
        let data_len = (mmap.len() as u64).saturating_sub(data_offset);
        for t in &raw {
            let end = (t.offset as u64).checked_add(t.n_bytes as u64);
            if end.is_none_or(|end| end > data_len) {
                return Err(Bad::Malformed(format!(
                    "tensor `{}` ({:?} {:?}) claims bytes {}..+{} of the data section, which has {data_len} bytes (starts at {data_offset}, file is {} bytes)",
                    t.info.name,
                    t.ggml_type,
                    t.dims,
                    t.offset,
                    t.n_bytes,
                    mmap.len()
                )));
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors: raw,
            by_name,
            alignment,
            data_offset: data_offset as usize, // ≤ file length whenever a tensor exists
            mmap,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section begins.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// Every metadata entry, by key.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A string value; `None` when absent or of another type.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// A non-negative integer value of any width; `None` when absent or of another type.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer value of any width; `None` when absent or of another type.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// A float value (`f32`, or `f64` narrowed); `None` when absent or of another type.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    /// A bool value; `None` when absent or of another type.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// An array value of any element type.
    pub fn get_array(&self, key: &str) -> Option<&GgufArray> {
        self.get(key)?.as_array()
    }

    /// A string array (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`), borrowed.
    pub fn get_str_array(&self, key: &str) -> Option<&[String]> {
        self.get_array(key)?.as_strs()
    }

    /// An f32 array (`tokenizer.ggml.scores`), borrowed.
    pub fn get_f32_array(&self, key: &str) -> Option<&[f32]> {
        self.get_array(key)?.as_f32s()
    }

    /// An i32 array (`tokenizer.ggml.token_type`), borrowed.
    pub fn get_i32_array(&self, key: &str) -> Option<&[i32]> {
        self.get_array(key)?.as_i32s()
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[GgufTensor] {
        &self.tensors
    }

    /// One tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    fn tensor_or_err(&self, name: &str) -> Result<&GgufTensor> {
        self.tensor(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.path.clone() })
    }
}

/// Reads one tensor info and checks its shape, type and alignment (not yet its bounds: the data
/// section starts after the last info).
fn read_tensor_info(c: &mut Cursor<'_>, alignment: u64) -> Parse<GgufTensor> {
    let name = c.string().map_err(|e| e.within("name"))?;
    let in_tensor = |e: Bad| e.within(format_args!("`{name}`"));
    let n_dims = c.u32().map_err(in_tensor)?;
    if n_dims > MAX_DIMS {
        return Err(Bad::Malformed(format!("`{name}` has {n_dims} dims, at most {MAX_DIMS} are allowed")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64().map_err(in_tensor)?);
    }
    let type_id = c.u32().map_err(in_tensor)?;
    let offset = c.u64().map_err(in_tensor)?;
    let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
        Bad::Unsupported(format!(
            "tensor type id {type_id} of tensor `{name}` (not a ggml type this reader knows)"
        ))
    })?;
    let numel = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= usize::MAX as u64);
    let Some(numel) = numel else {
        return Err(Bad::Malformed(format!(
            "`{name}` dims {dims:?} overflow: their product does not fit 64 bits"
        )));
    };
    let (block, type_size) = (ggml_type.block_size() as u64, ggml_type.type_size() as u64);
    let row = dims.first().copied().unwrap_or(1);
    if row % block != 0 {
        return Err(Bad::Malformed(format!(
            "`{name}` row length {row} is not a multiple of the {ggml_type:?} block size {block}"
        )));
    }
    let n_bytes = (numel / block).checked_mul(type_size).filter(|&n| n <= usize::MAX as u64);
    let Some(n_bytes) = n_bytes else {
        return Err(Bad::Malformed(format!(
            "`{name}` dims {dims:?} overflow: its byte size does not fit 64 bits"
        )));
    };
    if offset % alignment != 0 {
        return Err(Bad::Malformed(format!(
            "`{name}` data offset {offset} is not a multiple of the alignment {alignment}"
        )));
    }
    // Offsets and sizes beyond usize fail the bounds check against the file later.
    let dims: Vec<usize> = dims.into_iter().map(|d| d as usize).collect();
    let shape = dims.iter().rev().copied().collect();
    Ok(GgufTensor {
        info: TensorInfo { name, shape, dtype: DType::Ggml(ggml_type) },
        dims,
        ggml_type,
        offset: usize::try_from(offset).unwrap_or(usize::MAX),
        n_bytes: n_bytes as usize,
    })
}

impl WeightSource for GgufFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.tensors.iter().map(|t| t.info.clone()).collect()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.tensor(name).map(|t| t.info.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor_or_err(name)?;
        let bytes = self.read_raw(name)?;
        let mut out = vec![0f32; t.info.numel()];
        ggml::dequantize(t.ggml_type, bytes, &mut out)?;
        Ok(out)
    }

    fn read_raw(&self, name: &str) -> Result<&[u8]> {
        let t = self.tensor_or_err(name)?;
        // bounds were checked against the file in `parse`
        let start = self.data_offset + t.offset;
        Ok(&self.mmap[start..start + t.n_bytes])
    }
}
