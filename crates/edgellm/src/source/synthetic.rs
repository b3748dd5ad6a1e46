//! Random weights of a real model's shapes, for benchmarks that need no download.
//!
//! [`SyntheticSource`] implements [`WeightSource`] for any [`ModelConfig`]: it lists every tensor
//! the loader asks for under its HF name, with its shape, and generates the values on read from a
//! hash of `(seed, tensor, index)` — small normal-ish values (σ ≈ 0.02) for matrices and biases,
//! 1.0 for norm weights. Nothing is stored: the engine's own copy is the only one. The same seed
//! gives the same weights on every machine.
//!
//! [`presets`] holds the configurations of well-known models (`llama-3.2-1b`, `qwen2.5-0.5b`, …)
//! as the `config.json` text they are published with, parsed by [`ModelConfig::from_hf_json`].

use std::path::{Path, PathBuf};

use super::{DType, TensorInfo, WeightSource};
use crate::config::Architecture;
use crate::model::{tensor_name, ArchSpec, Key, Scheme};
use crate::{Error, ModelConfig, Result};

/// Standard deviation of generated matrix and bias values.
const WEIGHT_STD: f32 = 0.02;

/// A weight source that generates deterministic random tensors of `config`'s shapes.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    config: ModelConfig,
    seed: u64,
    path: PathBuf,
    /// Every tensor, in load order, with the kind of values it holds.
    tensors: Vec<(TensorInfo, Fill)>,
}

/// What a tensor's values look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Norm weights: all 1.0 (0.0 for Gemma, whose HF norms are stored as `w` in `1 + w`).
    Ones,
    /// Matrices and biases: hash-generated, σ = [`WEIGHT_STD`].
    Random,
}

impl SyntheticSource {
    /// The tensors of `config` with values from `seed`.
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        let tensors = tensor_list(&config);
        let path = PathBuf::from(
            format!(
                "synthetic:{:?}-{}x{}",
                config.architecture, config.num_hidden_layers, config.hidden_size
            )
            .to_lowercase(),
        );
        SyntheticSource { config, seed, path, tensors }
    }

    /// The configuration the tensors follow.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn find(&self, name: &str) -> Result<&(TensorInfo, Fill)> {
        self.tensors
            .iter()
            .find(|(info, _)| info.name == name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.path.clone() })
    }
}

/// Every tensor [`crate::model::Model::load`] reads for `c`, with HF names.
fn tensor_list(c: &ModelConfig) -> Vec<(TensorInfo, Fill)> {
    let spec = ArchSpec::of(c.architecture);
    let (hidden, q, kv, ffn, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.head_dim);
    let mut out = Vec::new();
    let mut add = |key: Key, layer: usize, shape: &[usize], fill: Fill| {
        let name = tensor_name(Scheme::Hf, c.architecture, key, layer);
        out.push((TensorInfo { name, shape: shape.to_vec(), dtype: DType::F32 }, fill));
    };
    add(Key::Embed, 0, &[c.vocab_size, hidden], Fill::Random);
    for i in 0..c.num_hidden_layers {
        add(Key::AttnNorm, i, &[hidden], Fill::Ones);
        add(Key::Q, i, &[q, hidden], Fill::Random);
        add(Key::K, i, &[kv, hidden], Fill::Random);
        add(Key::V, i, &[kv, hidden], Fill::Random);
        if c.attention_bias {
            add(Key::QBias, i, &[q], Fill::Random);
            add(Key::KBias, i, &[kv], Fill::Random);
            add(Key::VBias, i, &[kv], Fill::Random);
        }
        if spec.qk_norm {
            add(Key::QNorm, i, &[hd], Fill::Ones);
            add(Key::KNorm, i, &[hd], Fill::Ones);
        }
        add(Key::O, i, &[hidden, q], Fill::Random);
        if spec.sandwich_norms {
            add(Key::PostAttnNorm, i, &[hidden], Fill::Ones);
        }
        add(Key::FfnNorm, i, &[hidden], Fill::Ones);
        if spec.sandwich_norms {
            add(Key::PostFfnNorm, i, &[hidden], Fill::Ones);
        }
        add(Key::Gate, i, &[ffn, hidden], Fill::Random);
        add(Key::Up, i, &[ffn, hidden], Fill::Random);
        add(Key::Down, i, &[hidden, ffn], Fill::Random);
    }
    add(Key::FinalNorm, 0, &[hidden], Fill::Ones);
    if !c.tie_word_embeddings {
        add(Key::LmHead, 0, &[c.vocab_size, hidden], Fill::Random);
    }
    out
}

/// SplitMix64: a cheap, well-mixed hash of a counter.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a of a tensor name, so each tensor has its own stream.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Fills `out` with values of mean 0 and standard deviation `std`: the sum of four uniform
/// variables (Irwin–Hall, close enough to normal for weights) from one 64-bit hash per element.
fn fill_random(seed: u64, name: &str, std: f32, out: &mut [f32]) {
    let base = splitmix(seed ^ name_hash(name));
    // four 16-bit uniforms in [0, 1) sum to mean 2, variance 4/12
    let scale = std / (4.0f32 / 12.0).sqrt();
    for (i, v) in out.iter_mut().enumerate() {
        let h = splitmix(base.wrapping_add(i as u64));
        let u = |k: u32| ((h >> (16 * k)) & 0xFFFF) as f32 / 65536.0;
        *v = (u(0) + u(1) + u(2) + u(3) - 2.0) * scale;
    }
}

impl WeightSource for SyntheticSource {
    fn path(&self) -> &Path {
        &self.path
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        self.tensors.iter().map(|(info, _)| info.clone()).collect()
    }

    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.find(name).ok().map(|(info, _)| info.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (info, _) = self.find(name)?;
        let mut out = vec![0f32; info.numel()];
        self.read_f32_into(name, &mut out)?;
        Ok(out)
    }

    fn read_f32_into(&self, name: &str, out: &mut [f32]) -> Result<()> {
        let (info, fill) = self.find(name)?;
        if out.len() != info.numel() {
            return Err(Error::Shape {
                what: name.to_string(),
                expected: vec![info.numel()],
                got: vec![out.len()],
            });
        }
        match fill {
            // Gemma's HF norm weights are the `w` of `1 + w`
            Fill::Ones if self.config.architecture == Architecture::Gemma3 => out.fill(0.0),
            Fill::Ones => out.fill(1.0),
            Fill::Random => fill_random(self.seed, name, WEIGHT_STD, out),
        }
        Ok(())
    }

    fn read_raw(&self, name: &str) -> Result<&[u8]> {
        Err(Error::Invalid {
            what: "synthetic source",
            why: format!("`{name}` has no stored bytes; read it with read_f32"),
        })
    }
}

/// Configurations of well-known models, for synthetic benchmarks.
pub mod presets {
    use crate::{Error, ModelConfig, Result};

    /// `(name, config.json)` of every preset: the published shapes and constants.
    pub const ALL: [(&str, &str); 8] = [
        ("llama-3.2-1b", LLAMA_3_2_1B),
        ("llama-3.2-3b", LLAMA_3_2_3B),
        ("llama-3.1-8b", LLAMA_3_1_8B),
        ("qwen2.5-0.5b", QWEN2_5_0_5B),
        ("qwen2.5-1.5b", QWEN2_5_1_5B),
        ("qwen2.5-7b", QWEN2_5_7B),
        ("qwen3-0.6b", QWEN3_0_6B),
        ("qwen3-8b", QWEN3_8B),
    ];

    /// The names of the presets.
    pub fn names() -> Vec<&'static str> {
        ALL.iter().map(|(n, _)| *n).collect()
    }

    /// The configuration of preset `name`.
    pub fn config(name: &str) -> Result<ModelConfig> {
        let (_, json) = ALL.iter().find(|(n, _)| *n == name).ok_or_else(|| Error::Invalid {
            what: "synthetic shape",
            why: format!("unknown preset `{name}`; known: {}", names().join(", ")),
        })?;
        ModelConfig::from_hf_json(json, &format!("preset {name}"))
    }

    const LLAMA_3_2_1B: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009]}"#;

    const LLAMA_3_2_3B: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
        "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": true, "hidden_act": "silu", "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009]}"#;

    const LLAMA_3_1_8B: &str = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 128256,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "tie_word_embeddings": false, "hidden_act": "silu", "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009]}"#;

    const QWEN2_5_0_5B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
        "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643}"#;

    const QWEN2_5_1_5B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": true,
        "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643}"#;

    const QWEN2_5_7B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064,
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
        "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643}"#;

    const QWEN3_0_6B: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "hidden_act": "silu", "attention_bias": false,
        "bos_token_id": 151643, "eos_token_id": 151645}"#;

    const QWEN3_8B: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936,
        "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": false, "hidden_act": "silu", "attention_bias": false,
        "bos_token_id": 151643, "eos_token_id": 151645}"#;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoadOptions, Model};

    /// A preset shrunk to a few small layers, keeping its architecture switches.
    fn tiny(name: &str) -> ModelConfig {
        let mut c = presets::config(name).unwrap();
        c.vocab_size = 64;
        c.hidden_size = 32;
        c.intermediate_size = 48;
        c.num_hidden_layers = 2;
        c.layer_types.truncate(2);
        c.num_key_value_heads = c.num_attention_heads.min(2);
        c.num_attention_heads = 2 * c.num_key_value_heads;
        c.head_dim = 8;
        c
    }

    #[test]
    fn presets_have_published_shapes() {
        let params = |name: &str| -> usize {
            let src = SyntheticSource::new(presets::config(name).unwrap(), 0);
            src.tensor_infos().iter().map(TensorInfo::numel).sum()
        };
        // parameter counts as published (embedding counted once when tied)
        for (name, billions) in [
            ("llama-3.2-1b", 1.236),
            ("llama-3.2-3b", 3.213),
            ("llama-3.1-8b", 8.030),
            ("qwen2.5-0.5b", 0.494),
            ("qwen2.5-1.5b", 1.544),
            ("qwen2.5-7b", 7.616),
            ("qwen3-0.6b", 0.596),
            ("qwen3-8b", 8.191),
        ] {
            let got = params(name) as f64 / 1e9;
            assert!((got - billions).abs() < 0.01, "{name}: {got:.3} B parameters, expected {billions}");
        }
    }

    #[test]
    fn values_are_deterministic_small_and_norms_are_one() {
        let src = SyntheticSource::new(presets::config("qwen3-0.6b").unwrap(), 7);
        let name = "model.layers.3.mlp.up_proj.weight";
        let a = src.read_f32(name).unwrap();
        assert_eq!(a, src.read_f32(name).unwrap());
        assert_ne!(a, SyntheticSource::new(src.config().clone(), 8).read_f32(name).unwrap());
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let std = (a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "mean {mean}, std {std}");
        assert!(src.read_f32("model.layers.0.self_attn.q_norm.weight").unwrap().iter().all(|&x| x == 1.0));
        assert!(src.tensor_info("lm_head.weight").is_none(), "qwen3-0.6b ties its LM head");
    }

    #[test]
    fn every_preset_loads_at_tiny_scale() {
        for name in presets::names() {
            let cfg = tiny(name);
            let src = SyntheticSource::new(cfg.clone(), 1);
            let model = Model::load(&src, cfg, LoadOptions::default()).unwrap();
            assert!(model.weight_bytes() > 0, "{name}");
        }
        assert!(presets::config("gpt-5").is_err());
    }
}
