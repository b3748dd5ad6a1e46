//! HF `config.json` → [`ModelConfig`].
//!
//! Reads the configs of `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM` and
//! `Gemma3ForCausalLM` (`model_type` `gemma3_text`) in both the classic layout (`rope_theta` +
//! `rope_scaling`) and the transformers-5 layout (`rope_parameters`, per layer type for Gemma 3).
//! A field that is absent or `null` takes the default of the HF config class of that architecture;
//! the shape fields (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
//! `num_attention_heads`) are required, because HF's defaults for them describe some 7B model and
//! would silently build the wrong one.

use std::path::Path;

use serde_json::{Map, Value};

use super::model::{Activation, Architecture, LayerAttention, ModelConfig, RopeScaling};
use crate::{Error, Result};

/// The defaults of an HF config class that differ between architectures.
struct ArchDefaults {
    max_position_embeddings: usize,
    rope_theta: f32,
    tie_word_embeddings: bool,
    /// `None`: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    bos_token_id: Option<u32>,
    eos_token_ids: &'static [u32],
    hidden_act: &'static str,
}

impl ArchDefaults {
    fn of(arch: Architecture) -> Self {
        match arch {
            Architecture::Llama => ArchDefaults {
                max_position_embeddings: 2048,
                rope_theta: 10_000.0,
                tie_word_embeddings: false,
                head_dim: None,
                bos_token_id: Some(1),
                eos_token_ids: &[2],
                hidden_act: "silu",
            },
            Architecture::Qwen2 => ArchDefaults {
                max_position_embeddings: 32_768,
                rope_theta: 10_000.0,
                tie_word_embeddings: false,
                head_dim: None,
                bos_token_id: None,
                eos_token_ids: &[],
                hidden_act: "silu",
            },
            Architecture::Qwen3 => ArchDefaults {
                max_position_embeddings: 32_768,
                rope_theta: 10_000.0,
                tie_word_embeddings: false,
                head_dim: Some(128),
                bos_token_id: None,
                eos_token_ids: &[],
                hidden_act: "silu",
            },
            Architecture::Gemma3 => ArchDefaults {
                max_position_embeddings: 131_072,
                rope_theta: 1_000_000.0,
                tie_word_embeddings: true,
                head_dim: Some(256),
                bos_token_id: Some(2),
                eos_token_ids: &[1],
                hidden_act: "gelu_pytorch_tanh",
            },
        }
    }
}

impl ModelConfig {
    /// Parses the text of an HF `config.json`; `source_name` (usually its path) names the file in
    /// errors. EOS ids come from `eos_token_id` only; [`ModelConfig::from_hf_dir`] adds those of
    /// `generation_config.json`.
    pub fn from_hf_json(text: &str, source_name: &str) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::malformed(source_name, "config.json", e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| Error::malformed(source_name, "config.json", "the top level is not an object"))?;
        parse(&Fields { obj, source: source_name, prefix: String::new() })
    }

    /// Reads `dir/config.json`, then adds the EOS ids of `dir/generation_config.json` (if present)
    /// that `config.json` lacks — instruct models often list their end-of-turn tokens only there.
    pub fn from_hf_dir(dir: &Path) -> Result<ModelConfig> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let mut config = Self::from_hf_json(&text, &path.display().to_string())?;

        let gen_path = dir.join("generation_config.json");
        let gen_text = match std::fs::read_to_string(&gen_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(config),
            Err(e) => return Err(Error::io(&gen_path, e)),
        };
        let source = gen_path.display().to_string();
        let value: Value = serde_json::from_str(&gen_text)
            .map_err(|e| Error::malformed(&gen_path, "generation_config.json", e.to_string()))?;
        let obj = value.as_object().ok_or_else(|| {
            Error::malformed(&gen_path, "generation_config.json", "the top level is not an object")
        })?;
        let fields = Fields { obj, source: &source, prefix: String::new() };
        for id in fields.token_ids("eos_token_id")?.unwrap_or_default() {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
        Ok(config)
    }
}

fn parse(f: &Fields) -> Result<ModelConfig> {
    let architecture = architecture(f)?;
    let d = ArchDefaults::of(architecture);

    let vocab_size = f.required(f.usize("vocab_size")?, "vocab_size")?;
    let hidden_size = f.required(f.usize("hidden_size")?, "hidden_size")?;
    let intermediate_size = f.required(f.usize("intermediate_size")?, "intermediate_size")?;
    let num_hidden_layers = f.required(f.usize("num_hidden_layers")?, "num_hidden_layers")?;
    let num_attention_heads = f.required(f.usize("num_attention_heads")?, "num_attention_heads")?;
    let num_key_value_heads = f.usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
    for (field, value) in [
        ("vocab_size", vocab_size),
        ("hidden_size", hidden_size),
        ("num_hidden_layers", num_hidden_layers),
        ("num_attention_heads", num_attention_heads),
        ("num_key_value_heads", num_key_value_heads),
    ] {
        if value == 0 {
            return Err(f.err(field, "must be positive".into()));
        }
    }
    if num_attention_heads % num_key_value_heads != 0 {
        return Err(f.err(
            "num_key_value_heads",
            format!("{num_key_value_heads} does not divide num_attention_heads = {num_attention_heads}"),
        ));
    }
    let head_dim = match f.usize("head_dim")?.or(d.head_dim) {
        Some(head_dim) => head_dim,
        None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
        None => {
            return Err(f.err(
                "head_dim",
                format!(
                    "absent, and hidden_size {hidden_size} is not a multiple of {num_attention_heads} heads"
                ),
            ))
        }
    };

    // Gemma's HF class reads `hidden_activation`; the others `hidden_act`.
    let act_field = if architecture == Architecture::Gemma3 { "hidden_activation" } else { "hidden_act" };
    let act_name = f.str(act_field)?.or(f.str("hidden_act")?).unwrap_or(d.hidden_act);
    let hidden_act = match act_name {
        "silu" | "swish" => Activation::Silu,
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Activation::GeluTanh,
        other => {
            return Err(f.err(
                act_field,
                format!("unsupported activation `{other}`; supported: silu, gelu_pytorch_tanh"),
            ))
        }
    };

    let rope = rope(f, architecture, &d)?;
    let (sliding_window, layer_types) = layers(f, architecture, num_hidden_layers)?;
    let gemma = architecture == Architecture::Gemma3;

    Ok(ModelConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size,
        num_hidden_layers,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        max_position_embeddings: f.usize("max_position_embeddings")?.unwrap_or(d.max_position_embeddings),
        rms_norm_eps: f.f32("rms_norm_eps")?.unwrap_or(1e-6),
        rope_theta: rope.theta.unwrap_or(d.rope_theta),
        rope_local_theta: rope.local_theta,
        rope_scaling: rope.scaling,
        tie_word_embeddings: f.bool("tie_word_embeddings")?.unwrap_or(d.tie_word_embeddings),
        // Qwen2's q/k/v projections always carry a bias; its config has no switch for it.
        attention_bias: architecture == Architecture::Qwen2 || f.bool("attention_bias")?.unwrap_or(false),
        hidden_act,
        sliding_window,
        layer_types,
        query_pre_attn_scalar: if gemma {
            Some(f.f32("query_pre_attn_scalar")?.unwrap_or(256.0))
        } else {
            None
        },
        attn_logit_softcapping: if gemma { f.f32("attn_logit_softcapping")? } else { None },
        final_logit_softcapping: if gemma { f.f32("final_logit_softcapping")? } else { None },
        bos_token_id: match f.get("bos_token_id") {
            Some(_) => f.token_ids("bos_token_id")?.and_then(|ids| ids.first().copied()),
            None if f.obj.contains_key("bos_token_id") => None, // explicit null
            None => d.bos_token_id,
        },
        eos_token_ids: match f.token_ids("eos_token_id")? {
            Some(ids) => ids,
            None if f.obj.contains_key("eos_token_id") => Vec::new(),
            None => d.eos_token_ids.to_vec(),
        },
    })
}

/// `architectures[0]` if present, else `model_type`.
fn architecture(f: &Fields) -> Result<Architecture> {
    let unsupported = |name: &str| Error::UnsupportedArchitecture {
        name: name.to_string(),
        supported: Architecture::supported_list(),
    };
    if let Some(list) = f.get("architectures") {
        let names =
            list.as_array().ok_or_else(|| f.err("architectures", "expected a list of strings".into()))?;
        let Some(first) = names.first() else {
            return Err(f.err("architectures", "empty list".into()));
        };
        let name = first
            .as_str()
            .ok_or_else(|| f.err("architectures", format!("expected a string, got {first}")))?;
        return Architecture::ALL
            .iter()
            .find(|(_, hf, _)| *hf == name)
            .map(|(arch, _, _)| *arch)
            .ok_or_else(|| unsupported(name));
    }
    match f.str("model_type")? {
        Some("llama") => Ok(Architecture::Llama),
        Some("qwen2") => Ok(Architecture::Qwen2),
        Some("qwen3") => Ok(Architecture::Qwen3),
        Some("gemma3_text") => Ok(Architecture::Gemma3),
        Some(other) => Err(unsupported(other)),
        None => Err(f.err("architectures", "missing (and no `model_type` either)".into())),
    }
}

/// RoPE settings as read; `theta` `None` takes the architecture's default.
struct Rope {
    theta: Option<f32>,
    scaling: Option<RopeScaling>,
    local_theta: Option<f32>,
}

fn rope(f: &Fields, arch: Architecture, d: &ArchDefaults) -> Result<Rope> {
    let gemma = arch == Architecture::Gemma3;
    // Gemma 3's sliding layers use their own base (classic key `rope_local_base_freq`).
    let classic_local = if gemma { Some(f.f32("rope_local_base_freq")?.unwrap_or(10_000.0)) } else { None };

    let Some(params) = f.object("rope_parameters")? else {
        // classic layout
        let scaling = match f.object("rope_scaling")? {
            Some(block) => scaling(&f.nested(block, "rope_scaling"))?,
            None => None,
        };
        return Ok(Rope { theta: f.f32("rope_theta")?, scaling, local_theta: classic_local });
    };
    let per_layer_type =
        ["full_attention", "sliding_attention"].iter().any(|k| params.get(*k).is_some_and(Value::is_object));
    if !per_layer_type {
        let p = f.nested(params, "rope_parameters");
        return Ok(Rope { theta: p.f32("rope_theta")?, scaling: scaling(&p)?, local_theta: classic_local });
    }

    // transformers 5, one block per layer type
    let p = f.nested(params, "rope_parameters");
    let (theta, scaling_full) = match p.object("full_attention")? {
        Some(block) => {
            let full = f.nested(block, "rope_parameters.full_attention");
            (full.f32("rope_theta")?, scaling(&full)?)
        }
        None => (Some(d.rope_theta), None),
    };
    let local_theta = match p.object("sliding_attention")? {
        Some(block) => {
            let sliding = f.nested(block, "rope_parameters.sliding_attention");
            if scaling(&sliding)?.is_some() {
                return Err(sliding.err("rope_type", "scaled RoPE on sliding layers is not supported".into()));
            }
            Some(sliding.f32("rope_theta")?.unwrap_or(10_000.0))
        }
        None => classic_local,
    };
    Ok(Rope { theta, scaling: scaling_full, local_theta })
}

/// A `rope_scaling` block (classic) or `rope_parameters` block (transformers 5).
fn scaling(f: &Fields) -> Result<Option<RopeScaling>> {
    let (key, kind) = match f.str("rope_type")? {
        Some(kind) => ("rope_type", kind),
        None => ("type", f.str("type")?.unwrap_or("default")),
    };
    let factor = || f.required(f.f32("factor")?, "factor");
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: f.required(f.f32("low_freq_factor")?, "low_freq_factor")?,
            high_freq_factor: f.required(f.f32("high_freq_factor")?, "high_freq_factor")?,
            original_max_position_embeddings: f
                .required(f.usize("original_max_position_embeddings")?, "original_max_position_embeddings")?,
        })),
        other => {
            Err(f.err(key, format!("unsupported RoPE scaling `{other}`; supported: default, linear, llama3")))
        }
    }
}

/// The sliding window and each layer's attention kind. Layers are all full when the model has no
/// sliding window; a window no layer uses is reported as `None`.
fn layers(f: &Fields, arch: Architecture, n_layers: usize) -> Result<(Option<usize>, Vec<LayerAttention>)> {
    let all_full = || (None, vec![LayerAttention::Full; n_layers]);
    let (window, types) = match arch {
        Architecture::Llama => return Ok(all_full()),
        Architecture::Qwen2 | Architecture::Qwen3 => {
            // HF: `sliding_window = sliding_window if use_sliding_window else None`
            if !f.bool("use_sliding_window")?.unwrap_or(false) {
                return Ok(all_full());
            }
            let Some(window) = sliding_window(f)? else { return Ok(all_full()) };
            let types = match layer_types(f, n_layers)? {
                Some(types) => types,
                None => {
                    let max_window_layers = f.usize("max_window_layers")?.unwrap_or(28);
                    (0..n_layers)
                        .map(|i| {
                            if i >= max_window_layers {
                                LayerAttention::Sliding
                            } else {
                                LayerAttention::Full
                            }
                        })
                        .collect()
                }
            };
            (window, types)
        }
        Architecture::Gemma3 => {
            let Some(window) = sliding_window(f)? else { return Ok(all_full()) };
            let types = match layer_types(f, n_layers)? {
                Some(types) => types,
                None => {
                    let key = if f.get("sliding_window_pattern").is_some() {
                        "sliding_window_pattern"
                    } else {
                        "_sliding_window_pattern"
                    };
                    let pattern = f.usize(key)?.unwrap_or(6);
                    if pattern == 0 {
                        return Err(f.err(key, "must be positive".into()));
                    }
                    (0..n_layers)
                        .map(|i| {
                            if (i + 1) % pattern == 0 {
                                LayerAttention::Full
                            } else {
                                LayerAttention::Sliding
                            }
                        })
                        .collect()
                }
            };
            (window, types)
        }
    };
    let window = types.contains(&LayerAttention::Sliding).then_some(window);
    Ok((window, types))
}

/// `sliding_window`: HF's default 4096 when absent, `None` when explicitly `null`.
fn sliding_window(f: &Fields) -> Result<Option<usize>> {
    if f.obj.contains_key("sliding_window") {
        f.usize("sliding_window")
    } else {
        Ok(Some(4096))
    }
}

/// `layer_types`, checked against `num_hidden_layers`.
fn layer_types(f: &Fields, n_layers: usize) -> Result<Option<Vec<LayerAttention>>> {
    let Some(list) = f.get("layer_types") else { return Ok(None) };
    let items = list.as_array().ok_or_else(|| f.err("layer_types", "expected a list of strings".into()))?;
    if items.len() != n_layers {
        return Err(f.err("layer_types", format!("{} entries for {n_layers} layers", items.len())));
    }
    items
        .iter()
        .map(|item| match item.as_str() {
            Some("full_attention") => Ok(LayerAttention::Full),
            Some("sliding_attention") => Ok(LayerAttention::Sliding),
            _ => Err(f.err(
                "layer_types",
                format!("unsupported entry {item}; supported: full_attention, sliding_attention"),
            )),
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Typed access to one JSON object of a config file. `null` reads as absent.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
    source: &'a str,
    /// Path of `obj` inside the file (`rope_scaling.`), for error messages.
    prefix: String,
}

impl<'a> Fields<'a> {
    fn nested(&self, obj: &'a Map<String, Value>, name: &str) -> Fields<'a> {
        Fields { obj, source: self.source, prefix: format!("{name}.") }
    }

    fn err(&self, key: &str, what: String) -> Error {
        Error::Config { source_name: self.source.to_string(), field: format!("{}{key}", self.prefix), what }
    }

    fn required<T>(&self, value: Option<T>, key: &str) -> Result<T> {
        value.ok_or_else(|| self.err(key, "missing".into()))
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.err(key, format!("expected a non-negative integer, got {v}")))
            })
            .transpose()
    }

    fn f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.err(key, format!("expected a number, got {v}")))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.err(key, format!("expected true or false, got {v}"))))
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.err(key, format!("expected a string, got {v}"))))
            .transpose()
    }

    fn object(&self, key: &str) -> Result<Option<&'a Map<String, Value>>> {
        self.get(key)
            .map(|v| v.as_object().ok_or_else(|| self.err(key, format!("expected an object, got {v}"))))
            .transpose()
    }

    /// A token id or a list of them.
    fn token_ids(&self, key: &str) -> Result<Option<Vec<u32>>> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.err(key, format!("expected a token id or a list of them, got {v}")))
        };
        match v {
            Value::Array(items) => items.iter().map(one).collect::<Result<Vec<_>>>().map(Some),
            v => Ok(Some(vec![one(v)?])),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> ModelConfig {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name);
        ModelConfig::from_hf_dir(&dir).unwrap()
    }

    /// The fields the four tiny fixtures share.
    fn check_tiny_shapes(c: &ModelConfig) {
        assert_eq!(c.vocab_size, 512);
        assert_eq!(c.hidden_size, 128);
        assert_eq!(c.intermediate_size, 256);
        assert_eq!(c.num_hidden_layers, 2);
        assert_eq!(c.num_attention_heads, 2);
        assert_eq!(c.num_key_value_heads, 1);
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.max_position_embeddings, 512);
        assert_eq!(c.rope_scaling, None);
        assert_eq!(c.bos_token_id, None);
        assert_eq!(c.eos_token_ids, vec![2]);
    }

    #[test]
    fn tiny_llama() {
        let c = fixture("tiny-llama");
        check_tiny_shapes(&c);
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!(c.rms_norm_eps, 1e-5);
        assert_eq!(c.rope_theta, 10_000.0);
        assert_eq!(c.rope_local_theta, None);
        assert!(!c.tie_word_embeddings);
        assert!(!c.attention_bias);
        assert_eq!(c.hidden_act, Activation::Silu);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.layer_types, vec![LayerAttention::Full; 2]);
        assert_eq!(c.query_pre_attn_scalar, None);
        assert_eq!(c.attn_scale(), 64f32.powf(-0.5));
    }

    #[test]
    fn tiny_qwen2() {
        let c = fixture("tiny-qwen2");
        check_tiny_shapes(&c); // head_dim absent: 128 / 2
        assert_eq!(c.architecture, Architecture::Qwen2);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert!(c.tie_word_embeddings);
        assert!(c.attention_bias, "Qwen2 always has a QKV bias");
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.layer_types, vec![LayerAttention::Full; 2]);
    }

    #[test]
    fn tiny_qwen3() {
        let c = fixture("tiny-qwen3");
        check_tiny_shapes(&c);
        assert_eq!(c.architecture, Architecture::Qwen3);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert!(c.tie_word_embeddings);
        assert!(!c.attention_bias);
        assert_eq!(c.sliding_window, None);
        assert_eq!(c.layer_types, vec![LayerAttention::Full; 2]);
    }

    #[test]
    fn tiny_gemma3() {
        let c = fixture("tiny-gemma3");
        check_tiny_shapes(&c);
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(c.rope_theta, 1_000_000.0);
        assert_eq!(c.rope_local_theta, Some(10_000.0));
        assert!(c.tie_word_embeddings);
        assert_eq!(c.hidden_act, Activation::GeluTanh);
        assert_eq!(c.sliding_window, Some(8));
        assert_eq!(c.layer_types, vec![LayerAttention::Sliding, LayerAttention::Full]);
        assert_eq!(c.query_pre_attn_scalar, Some(64.0));
        assert_eq!(c.attn_logit_softcapping, None);
        assert_eq!(c.final_logit_softcapping, None);
    }

    /// meta-llama/Llama-3.2-1B's config.json (transformers 4.45, classic layout).
    const LLAMA_3_2_1B: &str = r#"{
      "architectures": ["LlamaForCausalLM"],
      "attention_bias": false,
      "attention_dropout": 0.0,
      "bos_token_id": 128000,
      "eos_token_id": 128001,
      "head_dim": 64,
      "hidden_act": "silu",
      "hidden_size": 2048,
      "initializer_range": 0.02,
      "intermediate_size": 8192,
      "max_position_embeddings": 131072,
      "mlp_bias": false,
      "model_type": "llama",
      "num_attention_heads": 32,
      "num_hidden_layers": 16,
      "num_key_value_heads": 8,
      "pretraining_tp": 1,
      "rms_norm_eps": 1e-05,
      "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3"
      },
      "rope_theta": 500000.0,
      "tie_word_embeddings": true,
      "torch_dtype": "bfloat16",
      "transformers_version": "4.45.0.dev0",
      "use_cache": true,
      "vocab_size": 128256
    }"#;

    #[test]
    fn llama_3_2_classic_rope_scaling() {
        let c = ModelConfig::from_hf_json(LLAMA_3_2_1B, "Llama-3.2-1B/config.json").unwrap();
        assert_eq!(c.architecture, Architecture::Llama);
        assert_eq!((c.hidden_size, c.num_hidden_layers, c.vocab_size), (2048, 16, 128_256));
        assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (32, 8, 64));
        assert_eq!(c.rope_theta, 500_000.0);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            })
        );
        assert_eq!(c.bos_token_id, Some(128_000));
        assert_eq!(c.eos_token_ids, vec![128_001]);
        assert!(c.tie_word_embeddings);
    }

    #[test]
    fn old_style_scaling_type_key_and_eos_list() {
        let text = LLAMA_3_2_1B
            .replace(r#""rope_type": "llama3""#, r#""type": "llama3""#)
            .replace(r#""eos_token_id": 128001"#, r#""eos_token_id": [128001, 128008, 128009]"#);
        let c = ModelConfig::from_hf_json(&text, "x").unwrap();
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor: 32.0, .. })));
        assert_eq!(c.eos_token_ids, vec![128_001, 128_008, 128_009]);
    }

    #[test]
    fn transformers5_llama3_rope_parameters() {
        let text = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
            "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
        let c = ModelConfig::from_hf_json(text, "x").unwrap();
        assert_eq!(c.rope_theta, 500_000.0);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor: 8.0, .. })));
        // LlamaConfig defaults
        assert_eq!((c.head_dim, c.num_key_value_heads), (16, 4));
        assert_eq!(c.max_position_embeddings, 2048);
        assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(1), &[2][..]));
    }

    /// google/gemma-3-270m's config.json (classic layout), without `layer_types` so the pattern
    /// decides.
    #[test]
    fn gemma3_classic_with_sliding_window_pattern() {
        let text = r#"{"architectures": ["Gemma3ForCausalLM"], "_sliding_window_pattern": 6,
            "attn_logit_softcapping": null, "bos_token_id": 2, "eos_token_id": 1,
            "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 640, "intermediate_size": 2048, "max_position_embeddings": 32768,
            "model_type": "gemma3_text", "num_attention_heads": 4, "num_hidden_layers": 18,
            "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0,
            "sliding_window": 512, "vocab_size": 262144}"#;
        let c = ModelConfig::from_hf_json(text, "x").unwrap();
        let full: Vec<usize> = (0..18).filter(|&i| c.layer_types[i] == LayerAttention::Full).collect();
        assert_eq!(full, vec![5, 11, 17]);
        assert_eq!(c.sliding_window, Some(512));
        assert_eq!((c.rope_theta, c.rope_local_theta), (1_000_000.0, Some(10_000.0)));
        assert_eq!(c.rope_scaling, None);
        assert!(c.tie_word_embeddings);
        assert_eq!((c.bos_token_id, c.eos_token_ids.as_slice()), (Some(2), &[1][..]));
    }

    #[test]
    fn model_type_without_architectures() {
        let text = r#"{"model_type": "gemma3_text", "vocab_size": 10, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
            "sliding_window_pattern": 3, "final_logit_softcapping": 30.0}"#;
        let c = ModelConfig::from_hf_json(text, "x").unwrap();
        assert_eq!(c.architecture, Architecture::Gemma3);
        assert_eq!(c.head_dim, 256); // Gemma3TextConfig default
        assert_eq!(c.query_pre_attn_scalar, Some(256.0));
        assert_eq!(c.final_logit_softcapping, Some(30.0));
        assert_eq!(c.sliding_window, Some(4096));
        assert_eq!(c.layer_types[2], LayerAttention::Full);
        assert_eq!(c.hidden_act, Activation::GeluTanh);
    }

    #[test]
    fn qwen2_sliding_window_only_when_enabled() {
        let base = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "sliding_window": 32, "max_window_layers": 2,
            "use_sliding_window": USE}"#;
        let off = ModelConfig::from_hf_json(&base.replace("USE", "false"), "x").unwrap();
        assert_eq!(off.sliding_window, None);
        assert_eq!(off.layer_types, vec![LayerAttention::Full; 4]);
        assert!(off.attention_bias);
        let on = ModelConfig::from_hf_json(&base.replace("USE", "true"), "x").unwrap();
        assert_eq!(on.sliding_window, Some(32));
        use LayerAttention::{Full, Sliding};
        assert_eq!(on.layer_types, vec![Full, Full, Sliding, Sliding]);
    }

    #[test]
    fn missing_field_names_field_and_file() {
        let text = LLAMA_3_2_1B.replace(r#""hidden_size": 2048,"#, "");
        let err = ModelConfig::from_hf_json(&text, "models/llama/config.json").unwrap_err();
        match &err {
            Error::Config { source_name, field, what } => {
                assert_eq!(source_name, "models/llama/config.json");
                assert_eq!(field, "hidden_size");
                assert_eq!(what, "missing");
            }
            other => panic!("unexpected error {other:?}"),
        }
        assert!(err.to_string().contains("hidden_size"));

        let text = LLAMA_3_2_1B.replace(r#""low_freq_factor": 1.0,"#, "");
        let err = ModelConfig::from_hf_json(&text, "c.json").unwrap_err();
        assert!(
            matches!(err, Error::Config { ref field, .. } if field == "rope_scaling.low_freq_factor"),
            "{err}"
        );
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let text = LLAMA_3_2_1B.replace("LlamaForCausalLM", "MistralForCausalLM");
        let err = ModelConfig::from_hf_json(&text, "x").unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedArchitecture { ref name, .. } if name == "MistralForCausalLM")
        );
        let msg = err.to_string();
        for (_, hf, _) in Architecture::ALL {
            assert!(msg.contains(hf), "{msg}");
        }
    }

    #[test]
    fn bad_values_are_errors() {
        let yarn = LLAMA_3_2_1B.replace(r#""rope_type": "llama3""#, r#""rope_type": "yarn""#);
        let err = ModelConfig::from_hf_json(&yarn, "x").unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
        let gqa = LLAMA_3_2_1B.replace(r#""num_key_value_heads": 8"#, r#""num_key_value_heads": 5"#);
        assert!(matches!(
            ModelConfig::from_hf_json(&gqa, "x"),
            Err(Error::Config { ref field, .. }) if field == "num_key_value_heads"
        ));
        let typed = LLAMA_3_2_1B.replace(r#""hidden_size": 2048"#, r#""hidden_size": "2048""#);
        assert!(ModelConfig::from_hf_json(&typed, "x").is_err());
        assert!(matches!(ModelConfig::from_hf_json("{", "x"), Err(Error::Malformed { .. })));
    }

    #[test]
    fn generation_config_adds_eos_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), LLAMA_3_2_1B).unwrap();
        std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [128001, 128009]}"#)
            .unwrap();
        let c = ModelConfig::from_hf_dir(dir.path()).unwrap();
        assert_eq!(c.eos_token_ids, vec![128_001, 128_009]);

        let err = ModelConfig::from_hf_dir(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, Error::Io { .. }));
    }
}
