//! [`ModelConfig::from_gguf`]: a model's shapes and constants from GGUF metadata
//! (`{arch}.block_count`, `{arch}.attention.head_count`, …), following llama.cpp's reading of the
//! keys, with the values GGUF does not store (Gemma 3's layer pattern) filled in as llama.cpp does.

use super::{Activation, Architecture, LayerAttention, ModelConfig, RopeScaling};
use crate::source::gguf::{GgufFile, GgufValue};
use crate::tokenizer::END_OF_GENERATION;
use crate::{Error, Result};

/// Gemma 3 GGUFs do not store the attention pattern: like llama.cpp, every 6th layer is global
/// and the others slide.
const GEMMA3_SLIDING_PATTERN: usize = 6;
/// RoPE base of Gemma 3's sliding-window layers (not in GGUF; llama.cpp hard-codes it too).
const GEMMA3_ROPE_LOCAL_THETA: f32 = 10_000.0;

/// Typed access to `{arch}.*` keys with errors that name the key.
struct Keys<'a> {
    g: &'a GgufFile,
    arch: &'a str,
    source_name: String,
}

impl Keys<'_> {
    fn err(&self, field: &str, what: impl Into<String>) -> Error {
        Error::Config { source_name: self.source_name.clone(), field: field.to_string(), what: what.into() }
    }

    fn value(&self, field: &str) -> Option<&GgufValue> {
        self.g.get(field)
    }

    /// A non-negative integer at the full key `field`; `None` when absent.
    fn usize_at(&self, field: &str) -> Result<Option<usize>> {
        let Some(v) = self.value(field) else { return Ok(None) };
        match v.as_u64().map(usize::try_from) {
            Some(Ok(n)) => Ok(Some(n)),
            _ if v.as_array().is_some() => Err(self.err(field, "per-layer values are not supported")),
            _ => Err(self.err(field, format!("expected a non-negative integer, found {}", v.type_name()))),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.usize_at(&format!("{}.{key}", self.arch))
    }

    fn req_usize(&self, key: &str) -> Result<usize> {
        let field = format!("{}.{key}", self.arch);
        self.usize_at(&field)?.ok_or_else(|| self.err(&field, "missing"))
    }

    /// A positive integer: a zero here would divide by zero downstream.
    fn req_positive(&self, key: &str) -> Result<usize> {
        match self.req_usize(key)? {
            0 => Err(self.err(&format!("{}.{key}", self.arch), "must be positive")),
            n => Ok(n),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        let field = format!("{}.{key}", self.arch);
        let Some(v) = self.value(&field) else { return Ok(None) };
        match v.as_f32() {
            Some(x) if x.is_finite() => Ok(Some(x)),
            Some(x) => Err(self.err(&field, format!("{x} is not finite"))),
            None => Err(self.err(&field, format!("expected a float, found {}", v.type_name()))),
        }
    }

    fn token_id(&self, field: &str) -> Result<Option<u32>> {
        let Some(id) = self.usize_at(field)? else { return Ok(None) };
        u32::try_from(id).map(Some).map_err(|_| self.err(field, format!("token id {id} does not fit u32")))
    }
}

impl ModelConfig {
    /// Reads the configuration of a GGUF model (`llama`, `qwen2`, `qwen3`, `gemma3`).
    ///
    /// Choices where GGUF says less than `config.json`:
    /// - `bos_token_id` is `tokenizer.ggml.bos_token_id` whether or not `tokenizer.ggml.add_bos_token`
    ///   is set: the tokenizer reads that flag and decides whether to prepend it.
    /// - `eos_token_ids` holds `tokenizer.ggml.eos_token_id`, `eot_token_id` and `eom_token_id`, then
    ///   every token whose text is an end-of-turn marker in llama.cpp's list
    ///   (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, `<|eot_id|>`, …).
    /// - `vocab_size` is the length of `tokenizer.ggml.tokens`, else the rows of `token_embd.weight`.
    /// - `tie_word_embeddings` is true when the file has no `output.weight`.
    /// - `attention_bias` is true for `qwen2` and whenever `blk.0.attn_q.bias` exists.
    /// - RoPE scaling comes from `{arch}.rope.scaling.type` (`linear`, with `.factor`) or the older
    ///   `{arch}.rope.scale_linear`. Llama 3.x GGUFs carry no scaling keys: the converter bakes the
    ///   llama3 frequency factors into a `rope_freqs.weight` tensor ([head_dim / 2] f32 divisors of
    ///   the inverse frequencies), which the model must apply; `rope_scaling` is then `None`.
    /// - Gemma 3: layer i slides unless (i + 1) % 6 == 0, sliding layers use RoPE base 10 000,
    ///   `query_pre_attn_scalar` is `head_dim` (hidden / heads for the 62-layer 27B, as llama.cpp),
    ///   and the activation is GELU (tanh).
    pub fn from_gguf(g: &GgufFile) -> Result<ModelConfig> {
        let source_name = format!("GGUF metadata of {}", g.path().display());
        let arch = g.architecture().ok_or_else(|| Error::Config {
            source_name: source_name.clone(),
            field: "general.architecture".into(),
            what: "missing or not a string".into(),
        })?;
        let architecture =
            Architecture::ALL.iter().find(|(_, _, name)| *name == arch).map(|(a, _, _)| *a).ok_or_else(
                || Error::UnsupportedArchitecture {
                    name: arch.to_string(),
                    supported: Architecture::supported_list(),
                },
            )?;
        let k = Keys { g, arch, source_name };

        let num_hidden_layers = k.req_positive("block_count")?;
        let hidden_size = k.req_positive("embedding_length")?;
        let intermediate_size = k.req_positive("feed_forward_length")?;
        let num_attention_heads = k.req_positive("attention.head_count")?;
        let num_key_value_heads = k.opt_usize("attention.head_count_kv")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(k.err(
                &format!("{arch}.attention.head_count_kv"),
                format!("{num_key_value_heads} does not divide the {num_attention_heads} query heads"),
            ));
        }
        let head_dim = match k.opt_usize("attention.key_length")? {
            Some(0) => return Err(k.err(&format!("{arch}.attention.key_length"), "must be positive")),
            Some(d) => d,
            None => hidden_size / num_attention_heads,
        };
        let rms_norm_eps = k
            .opt_f32("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| k.err(&format!("{arch}.attention.layer_norm_rms_epsilon"), "missing"))?;
        let rope_theta = k.opt_f32("rope.freq_base")?.unwrap_or(10_000.0);
        let rope_scaling = rope_scaling(&k)?;

        let gemma3 = architecture == Architecture::Gemma3;
        let sliding_window = if gemma3 { k.opt_usize("attention.sliding_window")? } else { None };
        let layer_types = (0..num_hidden_layers)
            .map(|i| {
                if sliding_window.is_some() && (i + 1) % GEMMA3_SLIDING_PATTERN != 0 {
                    LayerAttention::Sliding
                } else {
                    LayerAttention::Full
                }
            })
            .collect();
        let query_pre_attn_scalar = gemma3.then(|| {
            // llama.cpp: Gemma 3 27B scales by hidden / heads, the other sizes by head_dim
            if num_hidden_layers == 62 {
                (hidden_size / num_attention_heads) as f32
            } else {
                head_dim as f32
            }
        });

        Ok(ModelConfig {
            architecture,
            vocab_size: vocab_size(&k)?,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: k.req_positive("context_length")?,
            rms_norm_eps,
            rope_theta,
            rope_local_theta: gemma3.then_some(GEMMA3_ROPE_LOCAL_THETA),
            rope_scaling,
            tie_word_embeddings: g.tensor("output.weight").is_none(),
            attention_bias: architecture == Architecture::Qwen2 || g.tensor("blk.0.attn_q.bias").is_some(),
            hidden_act: if gemma3 { Activation::GeluTanh } else { Activation::Silu },
            sliding_window,
            layer_types,
            query_pre_attn_scalar,
            attn_logit_softcapping: k.opt_f32("attn_logit_softcapping")?,
            final_logit_softcapping: k.opt_f32("final_logit_softcapping")?,
            bos_token_id: k.token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: eos_token_ids(&k)?,
        })
    }
}

fn rope_scaling(k: &Keys<'_>) -> Result<Option<RopeScaling>> {
    let type_key = format!("{}.rope.scaling.type", k.arch);
    let factor = match k.opt_f32("rope.scaling.factor")? {
        Some(f) => Some(f),
        None => k.opt_f32("rope.scale_linear")?, // pre-2024 files
    };
    let kind = match k.value(&type_key) {
        None => factor.map(|_| "linear"),
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| k.err(&type_key, format!("expected a string, found {}", v.type_name())))?,
        ),
    };
    match (kind, factor) {
        (None | Some("none"), _) => Ok(None),
        (Some("linear"), Some(1.0)) => Ok(None),
        (Some("linear"), Some(factor)) if factor > 0.0 => Ok(Some(RopeScaling::Linear { factor })),
        (Some("linear"), f) => {
            Err(k.err(&format!("{}.rope.scaling.factor", k.arch), format!("{f:?} is not a positive factor")))
        }
        (Some(other), _) => Err(k.err(&type_key, format!("RoPE scaling `{other}` is not supported"))),
    }
}

fn vocab_size(k: &Keys<'_>) -> Result<usize> {
    if let Some(tokens) = k.g.get_array("tokenizer.ggml.tokens") {
        return Ok(tokens.len());
    }
    match k.g.tensor("token_embd.weight") {
        Some(t) if t.info.shape.len() == 2 => Ok(t.info.shape[0]),
        _ => Err(k.err("tokenizer.ggml.tokens", "missing, and no 2-d `token_embd.weight` to count rows of")),
    }
}

fn eos_token_ids(k: &Keys<'_>) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for field in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
    {
        if let Some(id) = k.token_id(field)? {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    if let Some(tokens) = k.g.get_str_array("tokenizer.ggml.tokens") {
        for (id, text) in tokens.iter().enumerate() {
            if END_OF_GENERATION.contains(&text.as_str()) {
                let id = u32::try_from(id).map_err(|_| k.err("tokenizer.ggml.tokens", "over 2^32 tokens"))?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A model file pulled by `edgellm pull`, or `None` (with a message) when absent outside CI.
    fn model_file(name: &str) -> Option<PathBuf> {
        let home = std::env::var_os("EDGELLM_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgellm")))
            .expect("EDGELLM_HOME or HOME is set");
        let path = home.join("models").join(name).join("model.gguf");
        if path.is_file() {
            return Some(path);
        }
        assert!(std::env::var_os("CI").is_none(), "{} is missing and CI is set", path.display());
        eprintln!("skipping: {} not found (run `edgellm pull {name}`)", path.display());
        None
    }

    #[test]
    fn qwen2_5_coder_0_5b_config() {
        let Some(path) = model_file("qwen2.5-coder-0.5b-instruct") else { return };
        let c = ModelConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads),
            (24, 896, 14, 2)
        );
        assert_eq!((c.intermediate_size, c.head_dim, c.vocab_size), (4864, 64, 151936));
        assert_eq!((c.rope_theta, c.rms_norm_eps), (1e6, 1e-6));
        assert_eq!(c.max_position_embeddings, 32768);
        assert!(c.attention_bias);
        assert!(!c.tie_word_embeddings, "this GGUF stores output.weight");
        assert_eq!(c.hidden_act, Activation::Silu);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.sliding_window, None);
        assert!(c.layer_types.iter().all(|&t| t == LayerAttention::Full));
        assert_eq!(c.bos_token_id, Some(151643));
        assert_eq!(c.eos_token_ids, vec![151645, 151643]);
        assert_eq!(c.attn_scale(), 64f32.powf(-0.5));
    }

    #[test]
    fn gemma_3_270m_config() {
        let Some(path) = model_file("gemma-3-270m") else { return };
        let c = ModelConfig::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(
            (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads),
            (18, 640, 4, 1)
        );
        assert_eq!((c.head_dim, c.intermediate_size, c.vocab_size), (256, 2048, 262144));
        assert_eq!(c.sliding_window, Some(512));
        assert_eq!((c.rope_theta, c.rope_local_theta), (1e6, Some(10_000.0)));
        assert_eq!(c.query_pre_attn_scalar, Some(256.0));
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert!(c.tie_word_embeddings && !c.attention_bias);
        let full: Vec<usize> = (0..18).filter(|&i| c.layer_types[i] == LayerAttention::Full).collect();
        assert_eq!(full, vec![5, 11, 17]);
        assert_eq!(c.bos_token_id, Some(2));
        assert_eq!(c.eos_token_ids, vec![1, 106], "<eos> and <end_of_turn>");
    }
}
