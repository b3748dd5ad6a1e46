//! What distinguishes the supported architectures. They share one block structure (see
//! `transformer.rs`); each architecture only switches pieces on and sets constants:
//!
//! - **Llama 3.x**: the plain block. Llama-3 RoPE scaling comes from the config. GGUF files store
//!   Q/K rows permuted for llama.cpp's interleaved RoPE; the loader undoes that.
//! - **Qwen2/2.5**: Llama plus a bias on Q, K and V (`attention_bias` in the config).
//! - **Qwen3**: Llama plus an RMSNorm over each query and key head before RoPE.
//! - **Gemma 3**: q/k norms, norms around both sub-blocks ("sandwich"), embeddings scaled by
//!   `sqrt(hidden)`, GELU-tanh, RMSNorm weights parametrised as `1 + w` (GGUF files store `1 + w`
//!   already), sliding-window layers with their own RoPE base, attention scale from
//!   `query_pre_attn_scalar`, optional soft caps.

use crate::config::Architecture;

/// The architecture switches of the shared block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchSpec {
    /// RMSNorm over each q and k head before RoPE.
    pub qk_norm: bool,
    /// Extra norms on the attention and MLP outputs before each residual add.
    pub sandwich_norms: bool,
    /// Multiply embeddings by `sqrt(hidden)`.
    pub scale_embeddings: bool,
    /// Added to RMSNorm weights read from HF checkpoints (Gemma's `1 + w`).
    pub hf_norm_offset: f32,
    /// GGUF Q/K rows are permuted for interleaved RoPE (llama.cpp's `llama` arch).
    pub gguf_qk_permuted: bool,
}

impl ArchSpec {
    /// The switches of `arch`.
    pub fn of(arch: Architecture) -> Self {
        let plain = ArchSpec {
            qk_norm: false,
            sandwich_norms: false,
            scale_embeddings: false,
            hf_norm_offset: 0.0,
            gguf_qk_permuted: false,
        };
        match arch {
            Architecture::Llama => ArchSpec { gguf_qk_permuted: true, ..plain },
            Architecture::Qwen2 => plain,
            Architecture::Qwen3 => ArchSpec { qk_norm: true, ..plain },
            Architecture::Gemma3 => ArchSpec {
                qk_norm: true,
                sandwich_norms: true,
                scale_embeddings: true,
                hf_norm_offset: 1.0,
                ..plain
            },
        }
    }
}
