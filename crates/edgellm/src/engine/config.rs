//! `EngineConfig`: how the engine runs — device, threads, batch limits, KV pool size, weight
//! storage.

use crate::backend::cuda::CudaOptions;
use crate::backend::Device;
use crate::package::PlanLimits;
use crate::quant::WeightFormat;
use crate::{Error, ModelConfig, Result};

/// How the engine runs. Build it from flags or a file, then [`EngineConfig::resolve`] it
/// against the model.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// Most tokens in one forward pass (prefill chunk size); 0 = the package plan's, else 512.
    pub max_batch_tokens: usize,
    /// Most sequences in one batch; 0 = the package plan's, else 8.
    pub max_seqs: usize,
    /// Longest sequence (prompt + generated); 0 = the package plan's, else the model's limit
    /// capped at 4096.
    pub max_context: usize,
    /// Token positions in the KV pool; 0 = the package plan's, else `max_seqs × max_context`.
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
    /// Load a package without its `plan.json` (limits and prebuilt kernels), as if never built.
    pub ignore_plan: bool,
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
            max_batch_tokens: 0,
            max_seqs: 0,
            max_context: 0,
            kv_tokens: 0,
            kv_block_size: 16,
            weight_format: WeightFormat::F32,
            device: Device::Cpu,
            kv_dtype: KvDtype::Auto,
            cuda: CudaOptions::new(),
            ignore_plan: false,
        }
    }
}

/// Context used when neither the user nor the model sets a smaller one: KV for 32k positions of
/// a 0.5B model is 400 MB per sequence in f32, too much to reserve by default.
const DEFAULT_MAX_CONTEXT: usize = 4096;

/// Tokens per forward pass when neither the caller nor a plan sets them.
const DEFAULT_MAX_BATCH_TOKENS: usize = 512;

/// Sequences per batch when neither the caller nor a plan sets them.
const DEFAULT_MAX_SEQS: usize = 8;

impl EngineConfig {
    /// Checks the values and fills the defaults that depend on the model.
    pub fn resolve(self, model: &ModelConfig) -> Result<Self> {
        self.resolve_within(model, None)
    }

    /// [`Self::resolve`] under a package plan's limits: every limit left at 0 takes the plan's
    /// value, and one set beyond it is an error — the plan fixes the memory the engine was built
    /// to take on its device, so exceeding it would allocate what was never measured there.
    pub(crate) fn resolve_within(mut self, model: &ModelConfig, plan: Option<&PlanLimits>) -> Result<Self> {
        let invalid = |what, why: String| Err(Error::Invalid { what, why });
        if let Some(p) = plan {
            self.take_plan(p)?;
        }
        if self.max_batch_tokens == 0 {
            self.max_batch_tokens = DEFAULT_MAX_BATCH_TOKENS;
        }
        if self.max_seqs == 0 {
            self.max_seqs = DEFAULT_MAX_SEQS;
        }
        if self.kv_block_size == 0 {
            return invalid("engine config", "kv_block_size must be positive".into());
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

    /// Fills the limits left at 0 from `plan` and refuses those beyond it.
    fn take_plan(&mut self, plan: &PlanLimits) -> Result<()> {
        let limits = [
            ("max_seqs", &mut self.max_seqs, plan.max_seqs, "--max-seqs"),
            ("max_batch_tokens", &mut self.max_batch_tokens, plan.max_batch_tokens, "--max-batch-tokens"),
            ("max_context", &mut self.max_context, plan.max_context, "--max-context"),
            ("kv_tokens", &mut self.kv_tokens, plan.kv_tokens, "--kv-pool-tokens"),
        ];
        for (name, value, limit, flag) in limits {
            if *value == 0 {
                *value = limit;
            } else if *value > limit {
                return Err(Error::Invalid {
                    what: "engine config",
                    why: format!(
                        "{name} {value} exceeds the package plan's {limit} (plan.json fixes the memory \
                         the engine takes); rebuild it with `edgellm build PKG {flag} {value} --force`, \
                         or load without it: --no-plan"
                    ),
                });
            }
        }
        if self.kv_block_size != plan.kv_block_size {
            return Err(Error::Invalid {
                what: "engine config",
                why: format!(
                    "kv_block_size {} differs from the package plan's {}",
                    self.kv_block_size, plan.kv_block_size
                ),
            });
        }
        let planned: KvDtype =
            plan.kv_dtype.parse().map_err(|why| Error::Invalid { what: "plan kv_dtype", why })?;
        if self.kv_dtype == KvDtype::Auto {
            self.kv_dtype = planned;
        } else if self.kv_dtype.element_bytes() > planned.element_bytes() {
            return Err(Error::Invalid {
                what: "engine config",
                why: format!(
                    "KV dtype {:?} takes more memory than the package plan's {} (rebuild it with \
                     `edgellm build PKG --kv-dtype ... --force`, or load without it: --no-plan)",
                    self.kv_dtype, plan.kv_dtype
                ),
            });
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::synthetic::presets;

    fn plan() -> PlanLimits {
        PlanLimits {
            max_seqs: 4,
            max_batch_tokens: 256,
            max_context: 2048,
            kv_tokens: 4096,
            kv_block_size: 16,
            kv_dtype: "fp16".into(),
        }
    }

    fn resolve(cfg: EngineConfig) -> Result<EngineConfig> {
        cfg.resolve_within(&presets::config("qwen2.5-0.5b").unwrap(), Some(&plan()))
    }

    #[test]
    fn unset_limits_take_the_plan_and_smaller_ones_stay() {
        let c = resolve(EngineConfig::default()).unwrap();
        let got = (c.max_seqs, c.max_batch_tokens, c.max_context, c.kv_tokens, c.kv_dtype);
        assert_eq!(got, (4, 256, 2048, 4096, KvDtype::F16));
        let c = resolve(EngineConfig { max_seqs: 1, max_context: 512, ..EngineConfig::default() }).unwrap();
        assert_eq!((c.max_seqs, c.max_context, c.kv_tokens), (1, 512, 4096));
        let fp8 = resolve(EngineConfig { kv_dtype: KvDtype::Fp8, ..EngineConfig::default() }).unwrap();
        assert_eq!(fp8.kv_dtype, KvDtype::Fp8);
        // without a plan, the engine's own defaults
        let c = EngineConfig::default().resolve(&presets::config("qwen2.5-0.5b").unwrap()).unwrap();
        assert_eq!((c.max_seqs, c.max_batch_tokens, c.max_context), (8, 512, 4096));
    }

    #[test]
    fn limits_beyond_the_plan_are_refused_with_the_fix() {
        let over = [
            EngineConfig { max_seqs: 5, ..EngineConfig::default() },
            EngineConfig { max_batch_tokens: 257, ..EngineConfig::default() },
            EngineConfig { max_context: 4096, ..EngineConfig::default() },
            EngineConfig { kv_tokens: 8192, ..EngineConfig::default() },
        ];
        for (cfg, flag) in over.into_iter().zip([
            "--max-seqs 5",
            "--max-batch-tokens 257",
            "--max-context 4096",
            "--kv-pool-tokens 8192",
        ]) {
            let e = resolve(cfg).unwrap_err().to_string();
            assert!(
                e.contains("exceeds the package plan's") && e.contains(flag) && e.contains("--no-plan"),
                "{e}"
            );
        }
        let f32_kv = resolve(EngineConfig { kv_dtype: KvDtype::F32, ..EngineConfig::default() });
        assert!(f32_kv.unwrap_err().to_string().contains("more memory than the package plan's fp16"));
        let blocks = resolve(EngineConfig { kv_block_size: 32, ..EngineConfig::default() });
        assert!(blocks.unwrap_err().to_string().contains("kv_block_size 32 differs"));
    }
}
