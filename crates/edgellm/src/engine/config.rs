//! `EngineConfig`: how the engine runs — device, threads, batch limits, KV pool size, weight
//! storage.

use crate::backend::cuda::CudaOptions;
use crate::backend::Device;
use crate::quant::WeightFormat;
use crate::{Error, ModelConfig, Result};

/// How the engine runs. Build it from flags or a file, then [`EngineConfig::resolve`] it
/// against the model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// Most tokens in one forward pass (prefill chunk size).
    pub max_batch_tokens: usize,
    /// Most sequences in one batch.
    pub max_seqs: usize,
    /// Longest sequence (prompt + generated); 0 = the model's limit, capped at 4096.
    pub max_context: usize,
    /// Token positions in the KV pool; 0 = `max_seqs × max_context`.
    pub kv_tokens: usize,
    /// Positions per KV block.
    pub kv_block_size: usize,
    /// Storage of weight matrices: `F32`, `BF16`, `F16`, `Int8` or `Int4`.
    pub weight_format: WeightFormat,
    /// Where the forward pass runs.
    pub device: Device,
    /// Element type of the KV cache.
    pub kv_dtype: KvDtype,
    /// Kernel compilation and graph options of the CUDA backend.
    pub cuda: CudaOptions,
}

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDtype {
    /// The backend's own choice: f32 on the CPU, f16 on CUDA.
    #[default]
    Auto,
    /// f32 elements.
    F32,
    /// f16 elements.
    F16,
    /// bf16 elements.
    Bf16,
    /// fp8 E4M3 with per-tensor scales (the package's calibrated `kv_scale`s).
    Fp8,
}

impl KvDtype {
    /// Bytes per element (`Auto` as the CPU's f32).
    pub fn element_bytes(self) -> usize {
        match self {
            KvDtype::Auto | KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
            KvDtype::Fp8 => 1,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;

    /// `auto`, `f32`, `f16` (or `fp16`), `bf16` or `fp8`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "auto" => KvDtype::Auto,
            "f32" => KvDtype::F32,
            "f16" | "fp16" => KvDtype::F16,
            "bf16" => KvDtype::Bf16,
            "fp8" => KvDtype::Fp8,
            _ => return Err(format!("unknown KV-cache dtype `{s}` (auto, f32, f16, bf16, fp8)")),
        })
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 0,
            max_batch_tokens: 512,
            max_seqs: 8,
            max_context: 0,
            kv_tokens: 0,
            kv_block_size: 16,
            weight_format: WeightFormat::F32,
            device: Device::Cpu,
            kv_dtype: KvDtype::Auto,
            cuda: CudaOptions::new(),
        }
    }
}

/// Context used when neither the user nor the model sets a smaller one: KV for 32k positions of
/// a 0.5B model is 400 MB per sequence in f32, too much to reserve by default.
const DEFAULT_MAX_CONTEXT: usize = 4096;

impl EngineConfig {
    /// Checks the values and fills the defaults that depend on the model.
    pub fn resolve(mut self, model: &ModelConfig) -> Result<Self> {
        let invalid = |what, why: String| Err(Error::Invalid { what, why });
        if self.max_batch_tokens == 0 || self.max_seqs == 0 || self.kv_block_size == 0 {
            return invalid(
                "engine config",
                "max_batch_tokens, max_seqs and kv_block_size must be positive".into(),
            );
        }
        if let WeightFormat::Int4 { group } = self.weight_format {
            if group == 0 || !group.is_multiple_of(crate::quant::int4::CHUNK) {
                return invalid(
                    "weight format",
                    format!("int4 group {group} is not a positive multiple of 64"),
                );
            }
        }
        let model_max = model.max_position_embeddings.max(1);
        if self.max_context == 0 {
            self.max_context = model_max.min(DEFAULT_MAX_CONTEXT);
        } else if self.max_context > model_max {
            return invalid(
                "max context",
                format!("{} exceeds the model's {model_max} positions", self.max_context),
            );
        }
        if self.kv_tokens == 0 {
            self.kv_tokens = self.max_seqs * self.max_context;
        }
        if self.kv_tokens < self.max_context.min(self.max_batch_tokens) {
            return invalid("kv tokens", format!("{} KV positions cannot hold one batch", self.kv_tokens));
        }
        if self.threads == 0 {
            self.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        Ok(self)
    }

    /// Longest sequence.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Blocks in the KV pool.
    pub fn kv_blocks(&self) -> usize {
        self.kv_tokens.div_ceil(self.kv_block_size)
    }
}
