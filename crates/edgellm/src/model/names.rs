//! Tensor names: the one table from a model's logical weights to what HF checkpoints and GGUF
//! files call them.

use crate::config::Architecture;

/// The naming scheme of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// HF transformers (`model.layers.0.self_attn.q_proj.weight`).
    Hf,
    /// llama.cpp's GGUF (`blk.0.attn_q.weight`).
    Gguf,
}

/// A logical weight of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// Token embedding table `[vocab, hidden]`.
    Embed,
    /// Final norm `[hidden]`.
    FinalNorm,
    /// LM head `[vocab, hidden]`.
    LmHead,
    /// Norm before attention.
    AttnNorm,
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Query bias.
    QBias,
    /// Key bias.
    KBias,
    /// Value bias.
    VBias,
    /// Per-head query norm `[head_dim]`.
    QNorm,
    /// Per-head key norm `[head_dim]`.
    KNorm,
    /// Attention output projection.
    O,
    /// Norm of the attention output before the residual add (Gemma).
    PostAttnNorm,
    /// Norm before the MLP.
    FfnNorm,
    /// Norm of the MLP output before the residual add (Gemma).
    PostFfnNorm,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

/// The source's name for `key` (of layer `layer` for per-layer weights).
pub fn tensor_name(scheme: Scheme, arch: Architecture, key: Key, layer: usize) -> String {
    let gemma = arch == Architecture::Gemma3;
    let (hf, gguf) = match key {
        Key::Embed => return global(scheme, "model.embed_tokens.weight", "token_embd.weight"),
        Key::FinalNorm => return global(scheme, "model.norm.weight", "output_norm.weight"),
        Key::LmHead => return global(scheme, "lm_head.weight", "output.weight"),
        Key::AttnNorm => ("input_layernorm.weight", "attn_norm.weight"),
        Key::Q => ("self_attn.q_proj.weight", "attn_q.weight"),
        Key::K => ("self_attn.k_proj.weight", "attn_k.weight"),
        Key::V => ("self_attn.v_proj.weight", "attn_v.weight"),
        Key::QBias => ("self_attn.q_proj.bias", "attn_q.bias"),
        Key::KBias => ("self_attn.k_proj.bias", "attn_k.bias"),
        Key::VBias => ("self_attn.v_proj.bias", "attn_v.bias"),
        Key::QNorm => ("self_attn.q_norm.weight", "attn_q_norm.weight"),
        Key::KNorm => ("self_attn.k_norm.weight", "attn_k_norm.weight"),
        Key::O => ("self_attn.o_proj.weight", "attn_output.weight"),
        Key::PostAttnNorm => ("post_attention_layernorm.weight", "post_attention_norm.weight"),
        // HF Llama/Qwen call the pre-MLP norm `post_attention_layernorm`; Gemma has both
        Key::FfnNorm if gemma => ("pre_feedforward_layernorm.weight", "ffn_norm.weight"),
        Key::FfnNorm => ("post_attention_layernorm.weight", "ffn_norm.weight"),
        Key::PostFfnNorm => ("post_feedforward_layernorm.weight", "post_ffw_norm.weight"),
        Key::Gate => ("mlp.gate_proj.weight", "ffn_gate.weight"),
        Key::Up => ("mlp.up_proj.weight", "ffn_up.weight"),
        Key::Down => ("mlp.down_proj.weight", "ffn_down.weight"),
    };
    match scheme {
        Scheme::Hf => format!("model.layers.{layer}.{hf}"),
        Scheme::Gguf => format!("blk.{layer}.{gguf}"),
    }
}

fn global(scheme: Scheme, hf: &str, gguf: &str) -> String {
    match scheme {
        Scheme::Hf => hf.to_string(),
        Scheme::Gguf => gguf.to_string(),
    }
}
