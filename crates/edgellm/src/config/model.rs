//! `ModelConfig`: what a model *is* — its shapes and constants — read from an HF `config.json` or
//! from GGUF metadata, immutable afterwards. Field names follow the upstream (HF) names.

use serde::{Deserialize, Serialize};

/// The model families edgellm implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Llama 2/3.x (`LlamaForCausalLM`, GGUF `llama`).
    Llama,
    /// Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`, GGUF `qwen2`): QKV bias.
    Qwen2,
    /// Qwen3 (`Qwen3ForCausalLM`, GGUF `qwen3`): per-head q/k RMSNorm.
    Qwen3,
    /// Gemma 3 text (`Gemma3ForCausalLM`, GGUF `gemma3`): sliding windows, sandwich norms, GELU.
    Gemma3,
}

impl Architecture {
    /// Every supported architecture with its HF class name and GGUF name.
    pub const ALL: [(Architecture, &'static str, &'static str); 4] = [
        (Architecture::Llama, "LlamaForCausalLM", "llama"),
        (Architecture::Qwen2, "Qwen2ForCausalLM", "qwen2"),
        (Architecture::Qwen3, "Qwen3ForCausalLM", "qwen3"),
        (Architecture::Gemma3, "Gemma3ForCausalLM", "gemma3"),
    ];

    /// The supported names, for error messages.
    pub fn supported_list() -> String {
        Self::ALL.iter().map(|(_, hf, gguf)| format!("{hf} (GGUF `{gguf}`)")).collect::<Vec<_>>().join(", ")
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// SiLU (`silu`).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How a layer attends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerAttention {
    /// Causal attention over the whole context.
    Full,
    /// Causal attention over the last `sliding_window` positions only.
    Sliding,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        /// Overall scale.
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// The context length the model was pre-trained at.
        original_max_position_embeddings: usize,
    },
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f32,
    },
}

/// What the model is: shapes, constants and special tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The family, which decides the layer structure.
    pub architecture: Architecture,
    /// Rows of the embedding table and of the LM head.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA groups).
    pub num_key_value_heads: usize,
    /// Width of one head (not always `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base of full-attention layers.
    pub rope_theta: f32,
    /// RoPE base of sliding-window layers where it differs (Gemma 3: 10 000).
    pub rope_local_theta: Option<f32>,
    /// RoPE scaling of full-attention layers.
    pub rope_scaling: Option<RopeScaling>,
    /// The LM head shares the embedding table.
    pub tie_word_embeddings: bool,
    /// Q, K and V projections carry a bias (Qwen2).
    pub attention_bias: bool,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Window of sliding-window layers.
    pub sliding_window: Option<usize>,
    /// Attention kind of each layer (`num_hidden_layers` entries).
    pub layer_types: Vec<LayerAttention>,
    /// Attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of `head_dim^-0.5` (Gemma).
    pub query_pre_attn_scalar: Option<f32>,
    /// `tanh` soft cap of attention scores.
    pub attn_logit_softcapping: Option<f32>,
    /// `tanh` soft cap of the final logits.
    pub final_logit_softcapping: Option<f32>,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_token_id: Option<u32>,
    /// Every token id that ends generation.
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// The scale applied to `q·k`.
    pub fn attn_scale(&self) -> f32 {
        self.query_pre_attn_scalar.unwrap_or(self.head_dim as f32).powf(-0.5)
    }
}
