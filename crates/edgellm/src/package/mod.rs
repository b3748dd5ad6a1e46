//! Engine packages: what `edgellm export` writes and every command loads directly — a model
//! already quantized and laid out for the runtime, memory-mapped at load without conversion.
//!
//! A package is a directory:
//! - `edgellm.json` — the [`Manifest`]: format version, [`ModelConfig`], the storage of each
//!   weight group, default KV-cache dtype, EOS ids, SHA-256 of the source file(s) and of
//!   `weights.safetensors`, and the export options.
//! - `weights.safetensors` — the tensors below, in write order, dtypes `F32`, `BF16`, `F16`,
//!   `I8`, `U8`, `F8_E4M3`. The header is padded with spaces to a multiple of 8 bytes.
//! - `tokenizer.json` (HF format, also when the source was GGUF), `tokenizer_config.json`,
//!   `generation_config.json` and `chat_template.jinja` (see [`Tokenizer::save`]).
//!
//! Tensor names (`M` is a matrix, stored as described next):
//!
//! | name | shape | what |
//! |---|---|---|
//! | `embed` (M) | `[vocab, hidden]` | embedding table (bf16 when the layers are quantized) |
//! | `lm_head` (M) | `[vocab, hidden]` | absent when the head is the embedding table |
//! | `final_norm` | F32 `[hidden]` | |
//! | `rope_full`, `rope_local` | F32 `[head_dim / 2]` | RoPE inverse frequencies |
//! | `layers.{i}.attn_norm`, `.ffn_norm` | F32 `[hidden]` | RMSNorm weights as applied (Gemma's `1 + w` included) |
//! | `layers.{i}.wqkv` (M) | `[q_dim + 2·kv_dim, hidden]` | Q, K, V rows stacked (HF row order; GGUF's Q/K permutation undone) |
//! | `layers.{i}.bqkv` | F32 `[q_dim + 2·kv_dim]` | optional QKV bias |
//! | `layers.{i}.q_norm`, `.k_norm` | F32 `[head_dim]` | optional (Qwen3, Gemma 3) |
//! | `layers.{i}.wo` (M) | `[hidden, q_dim]` | |
//! | `layers.{i}.post_attn_norm`, `.post_ffn_norm` | F32 `[hidden]` | optional (Gemma 3) |
//! | `layers.{i}.w_gate_up` (M) | `[2·intermediate, hidden]` | gate rows, then up rows |
//! | `layers.{i}.w_down` (M) | `[hidden, intermediate]` | |
//! | `layers.{i}.kv_scale` | F32 `[2]` | optional fp8 KV-cache scales (K, V): stored = value / scale |
//!
//! A matrix `M` of `[rows, cols]` is stored by format:
//! - f32 / bf16 / f16: `M.weight`, `F32` / `BF16` / `F16` `[rows, cols]`.
//! - int8 (`quant::int8`): `M.qweight` `I8` `[rows, cols]` and `M.scales` `F32` `[rows]`.
//! - int4 (`quant::int4`): `M.qweight` `U8` `[rows, cols / 2]` (two biased nibbles per byte, in
//!   runs of 64 elements) and `M.scales` `F32` `[rows, cols / group]`; the group is
//!   `cols / scales.shape[1]`.
//! - fp8 (`quant::fp8`): `M.qweight` `F8_E4M3` `[rows, cols]` and `M.scales` `F32` `[rows]`.
//!
//! AWQ changes no layout: its per-input-channel scales are folded into the preceding norm (and,
//! for the down projection, into the up rows of `w_gate_up`) at export.
//!
//! Loading ([`Package::open`]) checks the format version, the size and the SHA-256 of
//! `weights.safetensors` against the manifest (always: a truncated or corrupted package is an
//! error, not garbage), and maps every matrix in place ([`crate::quant::Buf`]).
//!
//! `edgellm build` ([`build`]) adds a second layer for CUDA, outside the manifest (the weights
//! are the same on every device, and a package stays valid without it):
//! - `plan.json` — the [`Plan`]: the engine's limits (`max_seqs`, `max_batch_tokens`,
//!   `max_context`, `kv_tokens` KV pool positions, `kv_block_size`, `kv_dtype`), the device they
//!   were measured on, the SHA-256 of the `weights.safetensors` it was built for, and one record
//!   per compiled kernel image (arch, size, SHA-256, kernel source hash, NVRTC version).
//! - `kernels/<arch>.cubin` — every kernel compiled by NVRTC for `arch` (`sm_87`, `sm_90a`, …).
//!
//! On CUDA, a package with a plan runs with the plan's limits wherever the caller leaves one
//! unset; one set beyond the plan is an error (the plan fixed the memory the engine may take).
//! The CUBIN of the device's arch is loaded instead of compiling, when its size, SHA-256 and
//! source hash match; otherwise NVRTC compiles with a warning, or loading fails without NVRTC.
//! A plan for other weights, or a malformed one, is an error. `export --force` replaces the
//! whole directory, plan included.

mod plan;
mod read;
mod write;

use serde::{Deserialize, Serialize};

use crate::{ModelConfig, Tokenizer};

pub use plan::{build, BuildEvent, BuildOptions, BuiltOn, Plan, PlanLimits, PLAN_FILE};
pub use read::Package;
pub use write::{export, ExportEvent, ExportOptions};

/// The manifest file's name; a directory holding it is a package.
pub const MANIFEST_FILE: &str = "edgellm.json";

/// The weights file's name.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// The `format` value of every manifest.
pub const FORMAT: &str = "edgellm-package";

/// The manifest layout this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// `edgellm.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written.
    pub format_version: u32,
    /// The edgellm version that wrote it.
    pub edgellm_version: String,
    /// What the model is.
    pub config: ModelConfig,
    /// How each group of weights is stored.
    pub weights: WeightGroups,
    /// KV-cache element type a runtime should use by default (`fp16`, `bf16`, `fp8`).
    pub kv_dtype: String,
    /// Every id that ends generation.
    pub eos_token_ids: Vec<u32>,
    /// Factor applied to embedding rows (Gemma: √hidden).
    pub embed_scale: f32,
    /// The files the package was exported from.
    pub source: Vec<FileDigest>,
    /// `weights.safetensors`.
    pub weights_file: FileDigest,
    /// The options `export` ran with.
    pub export: ExportOptions,
}

/// Storage of each weight group, in [`crate::quant::WeightFormat`] names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightGroups {
    /// The four matrices of every layer.
    pub layers: String,
    /// The embedding table.
    pub embed: String,
    /// The LM head; `None` when it is the embedding table.
    pub lm_head: Option<String>,
}

/// A file's name (no directories, so packages compare equal across machines), size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// File name.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Whether `path` is a package directory.
pub fn is_package(path: &std::path::Path) -> bool {
    path.join(MANIFEST_FILE).is_file()
}

/// Hex SHA-256 of everything `reader` yields, reporting bytes hashed to `progress`.
pub(crate) fn sha256_of(
    mut reader: impl std::io::Read,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(done);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tokenizer stored in a package directory.
pub(crate) fn tokenizer_in(dir: &std::path::Path) -> crate::Result<Tokenizer> {
    Tokenizer::from_file(dir.join("tokenizer.json"))
}
