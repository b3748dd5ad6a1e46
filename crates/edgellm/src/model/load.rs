//! Building a [`Model`] from a weight source: names resolved through `names`, shapes checked
//! against the config, Q/K/V and gate/up fused into single matrices.

use super::arch::ArchSpec;
use super::names::{tensor_name, Key, Scheme};
use super::rope::inv_freq;
use super::transformer::{Layer, Model};
use crate::backend::cpu::Matrix;
use crate::config::{LayerAttention, ModelConfig};
use crate::quant::WeightFormat;
use crate::source::{DType, WeightSource};
use crate::{Error, Result};

/// How weights are held in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Storage of the matrices: `F32` (exact), `BF16` or `F16` (half the memory and bandwidth),
    /// `Int8`, `Int4` or `Fp8` (quantized at load; the embedding table then stays bf16 for the
    /// row gather and a tied LM head gets a quantized copy of its own).
    pub weight_format: WeightFormat,
    /// Storage of the LM head; `None`: [`LoadOptions::head_format`]'s default.
    pub lm_head_format: Option<WeightFormat>,
}

impl LoadOptions {
    /// The LM head's storage: as asked, or the layers' format except that int4 keeps the head in
    /// int8 (llama.cpp likewise keeps `output.weight` at a higher precision than the layers):
    /// Qwen2.5-Coder-0.5B perplexity 4.82 instead of 4.98 with an int4 head, for 64 MB more.
    pub fn head_format(&self) -> WeightFormat {
        match (self.lm_head_format, self.weight_format) {
            (Some(f), _) => f,
            (None, WeightFormat::Int4 { .. }) => WeightFormat::Int8,
            (None, f) => f,
        }
    }
}

/// Everything of a model but its decoder layers.
pub(crate) struct Globals {
    pub embed: Matrix,           // [vocab, hidden]
    pub lm_head: Option<Matrix>, // [vocab, hidden]; None: tied to `embed`
    pub final_norm: Vec<f32>,    // [hidden]
    pub rope_full: Vec<f32>,     // [head_dim / 2]
    pub rope_local: Vec<f32>,    // [head_dim / 2]
    pub embed_scale: f32,
}

impl Model {
    /// A model from its parts (the loader's, or an engine package's).
    pub(crate) fn from_parts(config: ModelConfig, g: Globals, layers: Vec<Layer>) -> Model {
        let Globals { embed, lm_head, final_norm, rope_full, rope_local, embed_scale } = g;
        Model { embed, embed_scale, lm_head, layers, final_norm, rope_full, rope_local, config }
    }
}

impl Layer {
    /// The same layer with its four matrices stored in `format`.
    pub(crate) fn converted(self, format: WeightFormat) -> Layer {
        Layer {
            wqkv: self.wqkv.converted(format),
            wo: self.wo.converted(format),
            w_gate_up: self.w_gate_up.converted(format),
            w_down: self.w_down.converted(format),
            ..self
        }
    }
}

/// Reads a source's tensors into runtime-layout parts, one layer at a time (the engine package
/// writer streams them out as they come).
pub(crate) struct Loader<'a> {
    src: &'a dyn WeightSource,
    cfg: &'a ModelConfig,
    scheme: Scheme,
    spec: ArchSpec,
    opts: LoadOptions,
}

impl Loader<'_> {
    /// The model's configuration.
    pub(crate) fn config(&self) -> &ModelConfig {
        self.cfg
    }

    fn name(&self, key: Key, layer: usize) -> String {
        tensor_name(self.scheme, self.cfg.architecture, key, layer)
    }

    fn has(&self, key: Key, layer: usize) -> bool {
        self.src.tensor_info(&self.name(key, layer)).is_some()
    }

    /// Checks that `key` exists with `shape`; returns its source name.
    fn checked_name(&self, key: Key, layer: usize, shape: &[usize]) -> Result<String> {
        let name = self.name(key, layer);
        let info = self.src.tensor_info(&name).ok_or_else(|| Error::MissingTensor {
            name: name.clone(),
            path: self.src.path().to_path_buf(),
        })?;
        if info.shape != shape {
            return Err(Error::Shape { what: name, expected: shape.to_vec(), got: info.shape });
        }
        Ok(name)
    }

    /// A tensor as f32, checked against the expected shape.
    fn tensor(&self, key: Key, layer: usize, shape: &[usize]) -> Result<Vec<f32>> {
        self.src.read_f32(&self.checked_name(key, layer, shape)?)
    }

    fn norm(&self, key: Key, layer: usize, width: usize) -> Result<Vec<f32>> {
        let mut w = self.tensor(key, layer, &[width])?;
        if self.scheme == Scheme::Hf && self.spec.hf_norm_offset != 0.0 {
            w.iter_mut().for_each(|v| *v += self.spec.hf_norm_offset);
        }
        Ok(w)
    }

    /// Several `[rows_i, cols]` matrices stacked into one f32 `[Σ rows_i, cols]`, each dequantized
    /// straight into its place.
    fn fused(&self, parts: &[(Key, usize, usize)], cols: usize) -> Result<Matrix> {
        let mut data = vec![0f32; parts.iter().map(|p| p.2).sum::<usize>() * cols];
        let mut at = 0;
        for &(key, layer, rows) in parts {
            let dst = &mut data[at..at + rows * cols];
            self.src.read_f32_into(&self.checked_name(key, layer, &[rows, cols])?, dst)?;
            if self.scheme == Scheme::Gguf && self.spec.gguf_qk_permuted && matches!(key, Key::Q | Key::K) {
                let unpermuted = unpermute_rows(dst, rows / self.cfg.head_dim, cols);
                dst.copy_from_slice(&unpermuted);
            }
            at += rows * cols;
        }
        let rows = data.len() / cols;
        Ok(Matrix::from_f32(rows, cols, data))
    }

    /// Layer `i` in the options' weight format.
    pub(crate) fn layer(&self, i: usize) -> Result<Layer> {
        Ok(self.layer_f32(i)?.converted(self.opts.weight_format))
    }

    /// Layer `i` with f32 matrices.
    pub(crate) fn layer_f32(&self, i: usize) -> Result<Layer> {
        let c = self.cfg;
        let (hidden, q, kv, ffn, hd) =
            (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.head_dim);
        let bias = if c.attention_bias || self.has(Key::QBias, i) {
            let mut b = self.tensor(Key::QBias, i, &[q])?;
            b.extend(self.tensor(Key::KBias, i, &[kv])?);
            b.extend(self.tensor(Key::VBias, i, &[kv])?);
            Some(b)
        } else {
            None
        };
        let qk_norm = self.spec.qk_norm;
        let sandwich = self.spec.sandwich_norms;
        Ok(Layer {
            attention: c.layer_types.get(i).copied().unwrap_or(LayerAttention::Full),
            attn_norm: self.norm(Key::AttnNorm, i, hidden)?,
            wqkv: self.fused(&[(Key::Q, i, q), (Key::K, i, kv), (Key::V, i, kv)], hidden)?,
            bqkv: bias,
            q_norm: if qk_norm { Some(self.norm(Key::QNorm, i, hd)?) } else { None },
            k_norm: if qk_norm { Some(self.norm(Key::KNorm, i, hd)?) } else { None },
            wo: self.fused(&[(Key::O, i, hidden)], q)?,
            post_attn_norm: if sandwich { Some(self.norm(Key::PostAttnNorm, i, hidden)?) } else { None },
            ffn_norm: self.norm(Key::FfnNorm, i, hidden)?,
            w_gate_up: self.fused(&[(Key::Gate, i, ffn), (Key::Up, i, ffn)], hidden)?,
            w_down: self.fused(&[(Key::Down, i, hidden)], ffn)?,
            post_ffn_norm: if sandwich { Some(self.norm(Key::PostFfnNorm, i, hidden)?) } else { None },
            kv_scale: None,
        })
    }
}

/// Undoes llama.cpp's Q/K row permutation: within each head GGUF stores row `2i + s` where HF
/// has row `s · d/2 + i`.
fn unpermute_rows(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let head_rows = w.len() / cols / n_heads;
    let half = head_rows / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for s in 0..2 {
            for i in 0..half {
                let src = (h * head_rows + 2 * i + s) * cols;
                let dst = (h * head_rows + s * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

impl<'a> Loader<'a> {
    /// A loader of `cfg`'s weights from `src` (HF or GGUF naming, detected from the tensors).
    pub(crate) fn new(src: &'a dyn WeightSource, cfg: &'a ModelConfig, opts: LoadOptions) -> Result<Self> {
        let scheme = if src.tensor_info("token_embd.weight").is_some() { Scheme::Gguf } else { Scheme::Hf };
        if !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads) {
            return Err(Error::Config {
                source_name: src.path().display().to_string(),
                field: "num_key_value_heads".into(),
                what: format!(
                    "{} query heads are not a multiple of {}",
                    cfg.num_attention_heads, cfg.num_key_value_heads
                ),
            });
        }
        Ok(Loader { src, cfg, scheme, spec: ArchSpec::of(cfg.architecture), opts })
    }

    /// The embedding table, LM head, final norm and RoPE tables.
    pub(crate) fn globals(&self) -> Result<Globals> {
        let (cfg, scheme, spec) = (self.cfg, self.scheme, self.spec);
        let (vocab, hidden) = (cfg.vocab_size, cfg.hidden_size);
        let format = self.opts.weight_format;
        let head_format = self.opts.head_format();
        let embed = self.fused(&[(Key::Embed, 0, vocab)], hidden)?;
        let mut lm_head = if self.has(Key::LmHead, 0) && !(cfg.tie_word_embeddings && scheme == Scheme::Hf) {
            Some(self.fused(&[(Key::LmHead, 0, vocab)], hidden)?.converted(head_format))
        } else {
            None
        };
        let embed = if format.is_quantized() || head_format != format {
            // the tied LM head is the largest matrix read per decode step: a quantized copy
            // halves its bytes against the bf16 table the gather uses
            if lm_head.is_none() {
                lm_head = Some(embed.copy_as(head_format));
            }
            embed.converted(if format.is_quantized() { WeightFormat::BF16 } else { format })
        } else {
            embed.converted(format)
        };
        let final_norm = self.norm(Key::FinalNorm, 0, hidden)?;
        let mut rope_full = inv_freq(cfg.rope_theta, cfg.head_dim, cfg.rope_scaling);
        let mut rope_local = inv_freq(cfg.rope_local_theta.unwrap_or(cfg.rope_theta), cfg.head_dim, None);
        let mut embed_scale = if spec.scale_embeddings { (hidden as f32).sqrt() } else { 1.0 };
        // HF transformers keeps the buffers RoPE `inv_freq` and Gemma's `embed_scale` in the
        // checkpoint's dtype, so a bf16 checkpoint runs with bf16-rounded constants; without the
        // same rounding the reference logits drift by ~1e-2 within 30 positions
        let embed_dtype = self.src.tensor_info(&self.name(Key::Embed, 0)).map(|i| i.dtype);
        if scheme == Scheme::Hf && embed_dtype == Some(DType::BF16) {
            let round = |f: &mut f32| *f = half::bf16::from_f32(*f).to_f32();
            rope_full.iter_mut().chain(rope_local.iter_mut()).for_each(round);
            round(&mut embed_scale);
        }
        Ok(Globals { embed, lm_head, final_norm, rope_full, rope_local, embed_scale })
    }
}

impl Model {
    /// Loads every weight of `cfg` from `src` (HF or GGUF naming, detected from the tensors).
    pub fn load(src: &dyn WeightSource, cfg: ModelConfig, opts: LoadOptions) -> Result<Model> {
        let ld = Loader::new(src, &cfg, opts)?;
        let globals = ld.globals()?;
        let layers = (0..cfg.num_hidden_layers).map(|i| ld.layer(i)).collect::<Result<Vec<_>>>()?;
        Ok(Model::from_parts(cfg, globals, layers))
    }
}
