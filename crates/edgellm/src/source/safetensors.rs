//! safetensors checkpoints: one file, or the shards listed by `model.safetensors.index.json`.
//! Files are memory-mapped; every header entry is checked against the file size before use.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::Deserialize;

use super::{DType, TensorInfo, WeightSource};
use crate::{Error, Result};

/// Headers larger than this are refused before they are read (real ones are a few MiB).
const MAX_HEADER_BYTES: u64 = 256 << 20;

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
}

struct Entry {
    info: TensorInfo,
    shard: usize,
    begin: usize, // absolute byte offsets into the shard's mmap
    end: usize,
}

/// A memory-mapped safetensors checkpoint (one or more shards).
pub struct SafetensorsSource {
    root: PathBuf,
    shards: Vec<Shard>,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

impl SafetensorsSource {
    /// Opens a `.safetensors` file, a `model.safetensors.index.json`, or a directory holding
    /// either.
    pub fn open(path: &Path) -> Result<Self> {
        let (root, files) = Self::shard_files(path)?;
        let mut source =
            SafetensorsSource { root, shards: Vec::new(), entries: Vec::new(), by_name: HashMap::new() };
        for file in files {
            source.add_shard(&file)?;
        }
        Ok(source)
    }

    /// The files that make up the checkpoint at `path`.
    fn shard_files(path: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
        let index_path = if path.is_dir() {
            let single = path.join("model.safetensors");
            if single.is_file() {
                return Ok((path.to_path_buf(), vec![single]));
            }
            path.join("model.safetensors.index.json")
        } else if path.extension().is_some_and(|e| e == "json") {
            path.to_path_buf()
        } else {
            return Ok((path.to_path_buf(), vec![path.to_path_buf()]));
        };
        let text = std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
        let index: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| Error::malformed(&index_path, "safetensors index", e.to_string()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<PathBuf> = index.weight_map.values().map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        if files.is_empty() {
            return Err(Error::malformed(&index_path, "safetensors index", "`weight_map` lists no files"));
        }
        Ok((path.to_path_buf(), files))
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only; edgellm never writes model files while they are
        // mapped, and a concurrent external writer is outside the contract of every mmap reader.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let bad = |what: String| Error::malformed(path, "safetensors", what);
        if mmap.len() < 8 {
            return Err(bad(format!("file is {} bytes, shorter than the 8-byte header length", mmap.len())));
        }
        let header_len = u64::from_le_bytes(mmap[..8].try_into().expect("8 bytes"));
        if header_len > MAX_HEADER_BYTES || header_len > (mmap.len() - 8) as u64 {
            return Err(bad(format!("header length {header_len} exceeds the file ({} bytes)", mmap.len())));
        }
        let data_start = 8 + header_len as usize;
        let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&mmap[8..data_start])
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        let data_len = mmap.len() - data_start;
        let shard = self.shards.len();
        for (name, value) in header {
            if name == "__metadata__" {
                continue;
            }
            let raw: RawEntry =
                serde_json::from_value(value).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            let (dtype, elem_bytes) = parse_dtype(&raw.dtype).ok_or_else(|| Error::Unsupported {
                path: path.to_path_buf(),
                what: format!("dtype `{}` of tensor `{name}`", raw.dtype),
            })?;
            let [begin, end] = raw.data_offsets;
            let numel = raw.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            let expected = numel.and_then(|n| n.checked_mul(elem_bytes));
            if begin > end || end > data_len || expected != Some(end - begin) {
                return Err(bad(format!(
                    "tensor `{name}` ({} {:?}) claims bytes {begin}..{end} but its shape needs {} and the data section is {data_len} bytes",
                    raw.dtype,
                    raw.shape,
                    expected.map_or("an overflowing count".to_string(), |n| n.to_string()),
                )));
            }
            if self.by_name.contains_key(&name) {
                return Err(bad(format!("tensor `{name}` appears in more than one shard")));
            }
            self.by_name.insert(name.clone(), self.entries.len());
            self.entries.push(Entry {
                info: TensorInfo { name, shape: raw.shape, dtype },
                shard,
                begin: data_start + begin,
                end: data_start + end,
            });
        }
        self.shards.push(Shard { path: path.to_path_buf(), mmap, data_start });
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.by_name
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.root.clone() })
    }

    /// The shard files, in load order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Byte offset where a shard's tensor data begins (after the header).
    pub fn data_start(&self, shard: usize) -> usize {
        self.shards[shard].data_start
    }
}

/// The safetensors dtypes edgellm reads, with their element sizes. Integer and fp8 dtypes are
/// listed so that package files (`I8`, `U8`, `F8_E4M3`) open; `read_f32` widens them value by
/// value (no scales: those are separate tensors).
fn parse_dtype(name: &str) -> Option<(DType, usize)> {
    Some(match name {
        "F32" => (DType::F32, 4),
        "F16" => (DType::F16, 2),
        "BF16" => (DType::BF16, 2),
        "I8" => (DType::I8, 1),
        "U8" => (DType::U8, 1),
        "F8_E4M3" => (DType::F8E4M3, 1),
        _ => return None,
    })
}

impl WeightSource for SafetensorsSource {
    fn path(&self) -> &Path {
        &self.root
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.entries.iter().map(|e| e.info.clone()).collect()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.by_name.get(name).map(|&i| self.entries[i].info.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let entry = self.entry(name)?;
        let bytes = self.read_raw(name)?;
        Ok(match entry.info.dtype {
            DType::F32 => {
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect()
            }
            DType::F16 => {
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            DType::BF16 => {
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            DType::I8 => bytes.iter().map(|&b| b as i8 as f32).collect(),
            DType::U8 => bytes.iter().map(|&b| b as f32).collect(),
            DType::F8E4M3 => bytes.iter().map(|&b| crate::quant::fp8::decode(b)).collect(),
            DType::Ggml(t) => {
                return Err(Error::Unsupported {
                    path: self.root.clone(),
                    what: format!("ggml type {t:?} in safetensors"),
                })
            }
        })
    }

    fn read_raw(&self, name: &str) -> Result<&[u8]> {
        let entry = self.entry(name)?;
        Ok(&self.shards[entry.shard].mmap[entry.begin..entry.end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_file(header: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
        f.write_all(header.as_bytes()).unwrap();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn reads_f32_and_bf16() {
        let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}}"#;
        let mut data = Vec::new();
        data.extend(1.5f32.to_le_bytes());
        data.extend((-2.0f32).to_le_bytes());
        data.extend(half::bf16::from_f32(0.25).to_le_bytes());
        data.extend(half::bf16::from_f32(4.0).to_le_bytes());
        let f = write_file(header, &data);
        let src = SafetensorsSource::open(f.path()).unwrap();
        assert_eq!(src.read_f32("a").unwrap(), vec![1.5, -2.0]);
        assert_eq!(src.read_f32("b").unwrap(), vec![0.25, 4.0]);
        assert_eq!(src.tensor_info("b").unwrap().shape, vec![1, 2]);
        assert!(matches!(src.read_f32("c"), Err(Error::MissingTensor { .. })));
    }

    #[test]
    fn header_that_lies_about_sizes_is_an_error() {
        // shape needs 16 bytes, offsets give 8
        let f = write_file(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#, &[0; 8]);
        let err = SafetensorsSource::open(f.path()).err().expect("must fail").to_string();
        assert!(err.contains("tensor `a`") && err.contains("needs 16"), "{err}");
        // offsets past the end of the data
        let f = write_file(r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
        assert!(SafetensorsSource::open(f.path()).is_err());
        // header length past the end of the file
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&u64::MAX.to_le_bytes()).unwrap();
        let err = SafetensorsSource::open(f.path()).err().expect("must fail").to_string();
        assert!(err.contains("header length"), "{err}");
        // overflowing shape
        let f = write_file(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
        );
        assert!(SafetensorsSource::open(f.path()).is_err());
    }
}
