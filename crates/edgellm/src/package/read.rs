//! Opening a package: manifest checks, checksum, and the model's matrices mapped in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{sha256_of, Manifest, FORMAT, FORMAT_VERSION, MANIFEST_FILE, WEIGHTS_FILE};
use crate::backend::cpu::{Matrix, MatrixData};
use crate::config::LayerAttention;
use crate::model::{Globals, Layer, Model};
use crate::quant::{int4, Buf};
use crate::source::safetensors::SafetensorsSource;
use crate::source::{DType, WeightSource};
use crate::{Error, Result, Tokenizer};

/// An opened, verified engine package.
pub struct Package {
    dir: PathBuf,
    manifest: Manifest,
    weights: Arc<SafetensorsSource>,
}

impl Package {
    /// Opens the package in `dir`: reads the manifest, checks its format version, and checks the
    /// size and SHA-256 of `weights.safetensors` against it before mapping the file.
    pub fn open(dir: &Path) -> Result<Package> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
        let bad = |what: String| Error::malformed(&manifest_path, "engine package manifest", what);
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if value["format"] != FORMAT {
            return Err(bad(format!("`format` is {}, not \"{FORMAT}\"", value["format"])));
        }
        if value["format_version"] != FORMAT_VERSION {
            return Err(Error::Unsupported {
                path: manifest_path,
                what: format!(
                    "package format version {} (this edgellm reads {FORMAT_VERSION}); re-export the model",
                    value["format_version"]
                ),
            });
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let path = dir.join(WEIGHTS_FILE);
        let expected = &manifest.weights_file;
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if size != expected.bytes {
            return Err(Error::malformed(
                &path,
                "engine package",
                format!("{size} bytes where the manifest says {} (truncated or replaced?)", expected.bytes),
            ));
        }
        let sha = sha256_of(std::io::BufReader::new(file), &mut |_| {}).map_err(|e| Error::io(&path, e))?;
        if sha != expected.sha256 {
            return Err(Error::malformed(
                &path,
                "engine package",
                format!(
                    "SHA-256 {sha} differs from the manifest's {} (corrupted; re-export)",
                    expected.sha256
                ),
            ));
        }
        let weights = Arc::new(SafetensorsSource::open(&path)?);
        Ok(Package { dir: dir.to_path_buf(), manifest, weights })
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The package's tokenizer.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        super::tokenizer_in(&self.dir)
    }

    /// The model, its matrices mapped from `weights.safetensors` (no copy, no conversion).
    pub fn model(&self) -> Result<Model> {
        let c = self.manifest.config.clone();
        let (hidden, vocab, hd) = (c.hidden_size, c.vocab_size, c.head_dim);
        let (q, kv, ffn) = (c.q_dim(), c.kv_dim(), c.intermediate_size);
        let globals = Globals {
            embed: self.matrix("embed", vocab, hidden)?,
            lm_head: if self.has("lm_head.weight") || self.has("lm_head.qweight") {
                Some(self.matrix("lm_head", vocab, hidden)?)
            } else {
                None
            },
            final_norm: self.vector("final_norm", hidden)?,
            rope_full: self.vector("rope_full", hd / 2)?,
            rope_local: self.vector("rope_local", hd / 2)?,
            embed_scale: self.manifest.embed_scale,
        };
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let name = |part: &str| format!("layers.{i}.{part}");
                let optional = |part: &str, len: usize| -> Result<Option<Vec<f32>>> {
                    let n = name(part);
                    if self.has(&n) {
                        Ok(Some(self.vector(&n, len)?))
                    } else {
                        Ok(None)
                    }
                };
                Ok(Layer {
                    attention: c.layer_types.get(i).copied().unwrap_or(LayerAttention::Full),
                    attn_norm: self.vector(&name("attn_norm"), hidden)?,
                    wqkv: self.matrix(&name("wqkv"), q + 2 * kv, hidden)?,
                    bqkv: optional("bqkv", q + 2 * kv)?,
                    q_norm: optional("q_norm", hd)?,
                    k_norm: optional("k_norm", hd)?,
                    wo: self.matrix(&name("wo"), hidden, q)?,
                    post_attn_norm: optional("post_attn_norm", hidden)?,
                    ffn_norm: self.vector(&name("ffn_norm"), hidden)?,
                    w_gate_up: self.matrix(&name("w_gate_up"), 2 * ffn, hidden)?,
                    w_down: self.matrix(&name("w_down"), hidden, ffn)?,
                    post_ffn_norm: optional("post_ffn_norm", hidden)?,
                    kv_scale: optional("kv_scale", 2)?.map(|s| [s[0], s[1]]),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model::from_parts(c, globals, layers))
    }

    fn has(&self, name: &str) -> bool {
        self.weights.tensor_info(name).is_some()
    }

    /// A tensor's dtype, checked against its expected shape.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<DType> {
        let info = self.weights.tensor_info(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.weights.path().to_path_buf(),
        })?;
        if info.shape != shape {
            return Err(Error::Shape { what: name.to_string(), expected: shape.to_vec(), got: info.shape });
        }
        Ok(info.dtype)
    }

    /// [`Self::checked`] for a tensor that must be `F32` (scales, read in place as f32).
    fn checked_f32(&self, name: &str, shape: &[usize]) -> Result<()> {
        match self.checked(name, shape)? {
            DType::F32 => Ok(()),
            d => Err(Error::Unsupported {
                path: self.weights.path().to_path_buf(),
                what: format!("{d:?} for `{name}` (scales are F32)"),
            }),
        }
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        self.checked(name, &[len])?;
        self.weights.read_f32(name)
    }

    /// The elements of tensor `name` (present, checked), mapped in place.
    fn buf<T: bytemuck::Pod>(&self, name: &str) -> Buf<T> {
        Buf::from_owner(self.weights.clone(), |w| w.read_raw(name).expect("tensor checked before"))
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix> {
        let unsupported = |dtype: DType, what: &str| Error::Unsupported {
            path: self.weights.path().to_path_buf(),
            what: format!("{dtype:?} for `{name}.{what}`"),
        };
        let plain = format!("{name}.weight");
        if self.has(&plain) {
            let data = match self.checked(&plain, &[rows, cols])? {
                DType::F32 => MatrixData::F32(self.buf(&plain)),
                DType::BF16 => MatrixData::BF16(self.buf(&plain)),
                DType::F16 => MatrixData::F16(self.buf(&plain)),
                d => return Err(unsupported(d, "weight")),
            };
            return Ok(Matrix { rows, cols, data });
        }
        let (qname, sname) = (format!("{name}.qweight"), format!("{name}.scales"));
        let qinfo = self.weights.tensor_info(&qname).ok_or_else(|| Error::MissingTensor {
            name: format!("{plain} or {qname}"),
            path: self.weights.path().to_path_buf(),
        })?;
        let data = match qinfo.dtype {
            DType::I8 => {
                self.checked(&qname, &[rows, cols])?;
                self.checked_f32(&sname, &[rows])?;
                MatrixData::Int8 { q: self.buf(&qname), scales: self.buf(&sname) }
            }
            DType::F8E4M3 => {
                self.checked(&qname, &[rows, cols])?;
                self.checked_f32(&sname, &[rows])?;
                MatrixData::Fp8 { q: self.buf(&qname), scales: self.buf(&sname) }
            }
            DType::U8 => {
                self.checked(&qname, &[rows, cols / 2])?;
                let groups =
                    self.weights.tensor_info(&sname).map_or(0, |i| i.shape.get(1).copied().unwrap_or(0));
                let group = cols.checked_div(groups).unwrap_or(0);
                if groups == 0 || group * groups != cols || !int4::fits(cols, group) {
                    return Err(Error::malformed(
                        self.weights.path(),
                        "engine package",
                        format!("`{sname}` does not give a valid int4 group for {cols} columns"),
                    ));
                }
                self.checked_f32(&sname, &[rows, groups])?;
                MatrixData::Int4 { q: self.buf(&qname), scales: self.buf(&sname), group }
            }
            d => return Err(unsupported(d, "qweight")),
        };
        Ok(Matrix { rows, cols, data })
    }
}
