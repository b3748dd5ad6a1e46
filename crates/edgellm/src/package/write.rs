//! `export`: a model source (GGUF file or HF directory) → an engine package, one layer at a
//! time. Each layer is read, quantized (optionally AWQ-scaled first) and appended to a data file,
//! so memory holds one layer (and, at the start, the embedding table) — never the whole model.
//! The safetensors header, which must precede the data, is written last into the final file,
//! followed by the data, hashed on the way. Output is deterministic: the same source and options
//! give byte-identical packages (no timestamps, no paths, a fixed tensor order).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::{
    hex, sha256_of, FileDigest, Manifest, WeightGroups, FORMAT, FORMAT_VERSION, MANIFEST_FILE, WEIGHTS_FILE,
};
use crate::backend::cpu::{Matrix, MatrixData};
use crate::engine::OpenedSource;
use crate::model::{Layer, LoadOptions, Loader};
use crate::quant::awq::{self, Calibration};
use crate::quant::WeightFormat;
use crate::source::safetensors::SafetensorsSource;
use crate::{Error, Result};

/// What `export` produces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportOptions {
    /// Storage of the layers' matrices.
    pub weights: WeightFormat,
    /// Storage of the LM head (`None`: [`LoadOptions::head_format`]'s default).
    pub lm_head: Option<WeightFormat>,
    /// Default KV-cache dtype recorded for runtimes: `fp16`, `bf16` or `fp8`.
    pub kv_dtype: String,
    /// Calibration before quantization (AWQ scales, GPTQ rounding): the calibration text's name,
    /// token count and what it is used for.
    pub awq: Option<awq::AwqOptions>,
}

/// Progress of one stage: `done` of `total` units (bytes or layers).
#[derive(Debug, Clone, Copy)]
pub struct ExportEvent {
    /// `hash source`, `layers` or `write weights`.
    pub stage: &'static str,
    /// Units done.
    pub done: u64,
    /// Units in the stage.
    pub total: u64,
}

/// The KV dtypes a package may name.
const KV_DTYPES: [&str; 3] = ["fp16", "bf16", "fp8"];

/// Exports the model at `src` into the package directory `out`. An existing `out` is replaced
/// only with `force`, and only when it is a package. The package is built in `out.partial` and
/// renamed into place at the end, so an interrupted export leaves no half package at `out`.
/// `calib_text` is the calibration text (used with `opts.awq`, and with `kv_dtype` fp8 to
/// measure the per-layer KV scales).
pub fn export(
    src: &Path,
    out: &Path,
    opts: &ExportOptions,
    calib_text: Option<&str>,
    force: bool,
    progress: &mut dyn FnMut(ExportEvent),
) -> Result<Manifest> {
    if !KV_DTYPES.contains(&opts.kv_dtype.as_str()) {
        return Err(Error::Invalid {
            what: "kv dtype",
            why: format!("`{}` is not one of {KV_DTYPES:?}", opts.kv_dtype),
        });
    }
    check_replaceable(out, force)?;
    let source = OpenedSource::open(src)?;
    let cfg = &source.config;
    let sources = hash_sources(src, progress)?;

    let partial = partial_dir(out);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;

    let load = LoadOptions { weight_format: opts.weights, lm_head_format: opts.lm_head };
    let ld = Loader::new(source.weights.as_ref(), cfg, load)?;
    let mut w = TensorWriter::create(&partial.join("weights.data"))?;
    let g = ld.globals()?;
    let groups = WeightGroups {
        layers: opts.weights.to_string(),
        embed: format_of(&g.embed),
        lm_head: g.lm_head.as_ref().map(format_of),
    };
    w.matrix("embed", &g.embed)?;
    if let Some(head) = &g.lm_head {
        w.matrix("lm_head", head)?;
    }
    w.vector("final_norm", &g.final_norm)?;
    w.vector("rope_full", &g.rope_full)?;
    w.vector("rope_local", &g.rope_local)?;
    let embed_scale = g.embed_scale;
    // a calibration pass runs for AWQ/GPTQ and to measure fp8 KV scales
    let kv_fp8 = opts.kv_dtype == "fp8";
    let calib_opts = opts.awq.clone().or_else(|| {
        kv_fp8.then(|| awq::AwqOptions { awq: false, gptq: false, ..awq::AwqOptions::default() })
    });
    let mut calibration = match (&calib_opts, calib_text) {
        (Some(a), Some(text)) => Some(Calibration::new(&ld, g, &source.tokenizer, text, a)?),
        (Some(_), None) => {
            return Err(Error::Invalid { what: "calibration", why: "no calibration text given".into() })
        }
        _ => None,
    };
    let n = cfg.num_hidden_layers;
    for i in 0..n {
        let layer = match &mut calibration {
            Some(c) => c.layer(&ld, i, opts.weights, kv_fp8)?,
            None => ld.layer(i)?,
        };
        w.layer(i, &layer)?;
        progress(ExportEvent { stage: "layers", done: i as u64 + 1, total: n as u64 });
    }
    drop(calibration);
    let weights_file = w.finish(&partial.join(WEIGHTS_FILE), progress)?;

    source.tokenizer.save(&partial)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        edgellm_version: env!("CARGO_PKG_VERSION").into(),
        config: cfg.clone(),
        weights: groups,
        kv_dtype: opts.kv_dtype.clone(),
        eos_token_ids: source.tokenizer.eos_ids().to_vec(),
        embed_scale,
        source: sources,
        weights_file,
        export: opts.clone(),
    };
    let text = serde_json::to_string_pretty(&manifest).expect("the manifest serializes") + "\n";
    let manifest_path = partial.join(MANIFEST_FILE);
    std::fs::write(&manifest_path, text).map_err(|e| Error::io(&manifest_path, e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&partial, out).map_err(|e| Error::io(out, e))?;
    Ok(manifest)
}

/// `out` may be written: absent, or (with `force`) an existing package or an empty directory.
fn check_replaceable(out: &Path, force: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    let empty_dir = out.is_dir() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_none();
    if !force && !empty_dir {
        return Err(Error::Invalid {
            what: "output",
            why: format!("{} already exists; pass --force to replace it", out.display()),
        });
    }
    if !empty_dir && !super::is_package(out) {
        return Err(Error::Invalid {
            what: "output",
            why: format!("{} exists and is not an engine package; refusing to replace it", out.display()),
        });
    }
    Ok(())
}

fn partial_dir(out: &Path) -> PathBuf {
    let name = out.file_name().map_or("package".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!("{name}.partial"))
}

/// Name, size and SHA-256 of every source weight file (the GGUF file, or the safetensors shards).
fn hash_sources(src: &Path, progress: &mut dyn FnMut(ExportEvent)) -> Result<Vec<FileDigest>> {
    let files: Vec<PathBuf> = if src.is_dir() {
        SafetensorsSource::open(src)?.shard_paths().into_iter().map(Path::to_path_buf).collect()
    } else {
        vec![src.to_path_buf()]
    };
    let sizes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).map_err(|e| Error::io(f, e)))
        .collect::<Result<Vec<_>>>()?;
    let total: u64 = sizes.iter().sum();
    let mut before = 0;
    let mut digests = Vec::new();
    for (file, bytes) in files.iter().zip(sizes) {
        let reader = File::open(file).map_err(|e| Error::io(file, e))?;
        let sha = sha256_of(reader, &mut |done| {
            progress(ExportEvent { stage: "hash source", done: before + done, total })
        })
        .map_err(|e| Error::io(file, e))?;
        let name = file.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned());
        digests.push(FileDigest { name, bytes, sha256: sha });
        before += bytes;
    }
    Ok(digests)
}

/// The [`WeightFormat`] name of a matrix's storage.
fn format_of(m: &Matrix) -> String {
    match &m.data {
        MatrixData::F32(_) => WeightFormat::F32,
        MatrixData::BF16(_) => WeightFormat::BF16,
        MatrixData::F16(_) => WeightFormat::F16,
        MatrixData::Int8 { .. } => WeightFormat::Int8,
        MatrixData::Int4 { group, .. } => WeightFormat::Int4 { group: *group },
        MatrixData::Fp8 { .. } => WeightFormat::Fp8,
    }
    .to_string()
}

/// Appends tensors to a data file and remembers their header entries.
struct TensorWriter {
    data_path: PathBuf,
    data: BufWriter<File>,
    header: serde_json::Map<String, serde_json::Value>,
    offset: u64,
}

impl TensorWriter {
    fn create(data_path: &Path) -> Result<Self> {
        let file = File::create(data_path).map_err(|e| Error::io(data_path, e))?;
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({ "format": FORMAT }));
        Ok(TensorWriter { data_path: data_path.to_path_buf(), data: BufWriter::new(file), header, offset: 0 })
    }

    fn put(&mut self, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Result<()> {
        self.data.write_all(bytes).map_err(|e| Error::io(&self.data_path, e))?;
        let end = self.offset + bytes.len() as u64;
        let entry = serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [self.offset, end] });
        self.header.insert(name.to_string(), entry);
        self.offset = end;
        Ok(())
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<()> {
        self.put(name, "F32", &[v.len()], bytemuck::cast_slice(v))
    }

    /// A matrix under the names and dtypes of the module docs.
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<()> {
        let (r, c) = (m.rows, m.cols);
        let weight = format!("{name}.weight");
        let (qweight, scales) = (format!("{name}.qweight"), format!("{name}.scales"));
        match &m.data {
            MatrixData::F32(v) => self.put(&weight, "F32", &[r, c], bytemuck::cast_slice(v)),
            MatrixData::BF16(v) => self.put(&weight, "BF16", &[r, c], bytemuck::cast_slice(v)),
            MatrixData::F16(v) => self.put(&weight, "F16", &[r, c], bytemuck::cast_slice(v)),
            MatrixData::Int8 { q, scales: s } => {
                self.put(&qweight, "I8", &[r, c], bytemuck::cast_slice(q))?;
                self.put(&scales, "F32", &[r], bytemuck::cast_slice(s))
            }
            MatrixData::Int4 { q, scales: s, group } => {
                self.put(&qweight, "U8", &[r, c / 2], q)?;
                self.put(&scales, "F32", &[r, c / group], bytemuck::cast_slice(s))
            }
            MatrixData::Fp8 { q, scales: s } => {
                self.put(&qweight, "F8_E4M3", &[r, c], q)?;
                self.put(&scales, "F32", &[r], bytemuck::cast_slice(s))
            }
        }
    }

    fn layer(&mut self, i: usize, l: &Layer) -> Result<()> {
        let name = |part: &str| format!("layers.{i}.{part}");
        self.vector(&name("attn_norm"), &l.attn_norm)?;
        self.matrix(&name("wqkv"), &l.wqkv)?;
        let optional = [
            ("bqkv", &l.bqkv),
            ("q_norm", &l.q_norm),
            ("k_norm", &l.k_norm),
            ("post_attn_norm", &l.post_attn_norm),
        ];
        for (part, v) in optional {
            if let Some(v) = v {
                self.vector(&name(part), v)?;
            }
        }
        self.matrix(&name("wo"), &l.wo)?;
        self.vector(&name("ffn_norm"), &l.ffn_norm)?;
        self.matrix(&name("w_gate_up"), &l.w_gate_up)?;
        self.matrix(&name("w_down"), &l.w_down)?;
        if let Some(v) = &l.post_ffn_norm {
            self.vector(&name("post_ffn_norm"), v)?;
        }
        if let Some(s) = &l.kv_scale {
            self.vector(&name("kv_scale"), s)?;
        }
        Ok(())
    }

    /// Writes `path`: header length, header (space-padded to a multiple of 8, so the data that
    /// follows is 8-byte aligned for in-place f32 views), then the data file, hashing all of it.
    fn finish(mut self, path: &Path, progress: &mut dyn FnMut(ExportEvent)) -> Result<FileDigest> {
        self.data.flush().map_err(|e| Error::io(&self.data_path, e))?;
        drop(self.data);
        let mut header = serde_json::to_string(&self.header).expect("a JSON map serializes");
        while !(8 + header.len()).is_multiple_of(8) {
            header.push(' ');
        }
        let mut hasher = sha2::Sha256::new();
        let mut out = BufWriter::new(File::create(path).map_err(|e| Error::io(path, e))?);
        let mut emit = |bytes: &[u8]| -> Result<()> {
            hasher.update(bytes);
            out.write_all(bytes).map_err(|e| Error::io(path, e))
        };
        emit(&(header.len() as u64).to_le_bytes())?;
        emit(header.as_bytes())?;
        let total = self.offset;
        let mut data = File::open(&self.data_path).map_err(|e| Error::io(&self.data_path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = std::io::Read::read(&mut data, &mut buf).map_err(|e| Error::io(&self.data_path, e))?;
            if n == 0 {
                break;
            }
            emit(&buf[..n])?;
            done += n as u64;
            progress(ExportEvent { stage: "write weights", done, total });
        }
        out.flush().map_err(|e| Error::io(path, e))?;
        std::fs::remove_file(&self.data_path).map_err(|e| Error::io(&self.data_path, e))?;
        let bytes = 8 + header.len() as u64 + total;
        Ok(FileDigest { name: WEIGHTS_FILE.into(), bytes, sha256: hex(&hasher.finalize()) })
    }
}
