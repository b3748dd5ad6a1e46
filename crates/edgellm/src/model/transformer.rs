//! The shared decoder block and the forward pass over a flattened batch.
//!
//! Per layer: rmsnorm → fused QKV (+bias) → q/k norm → RoPE → KV-cache write → paged attention
//! → output projection (→ post-norm) + residual → rmsnorm → fused gate/up → act·mul → down
//! (→ post-norm) + residual. Then the final norm and the LM head for the requested rows only.

use super::ForwardBatch;
use crate::backend::cpu::attention::{paged_attention, AttnParams, TokenLayout};
use crate::backend::cpu::{matmul, ops, Matrix};
use crate::config::{LayerAttention, ModelConfig};
use crate::kv::KvCache;

/// One decoder block's weights. Matrices are `[out, in]`.
#[derive(Clone)]
pub(crate) struct Layer {
    pub attention: LayerAttention,
    pub attn_norm: Vec<f32>,              // [hidden]
    pub wqkv: Matrix,                     // [q_dim + 2·kv_dim, hidden]
    pub bqkv: Option<Vec<f32>>,           // [q_dim + 2·kv_dim]
    pub q_norm: Option<Vec<f32>>,         // [head_dim]
    pub k_norm: Option<Vec<f32>>,         // [head_dim]
    pub wo: Matrix,                       // [hidden, q_dim]
    pub post_attn_norm: Option<Vec<f32>>, // [hidden]
    pub ffn_norm: Vec<f32>,               // [hidden]
    pub w_gate_up: Matrix,                // [2·intermediate, hidden]
    pub w_down: Matrix,                   // [hidden, intermediate]
    pub post_ffn_norm: Option<Vec<f32>>,  // [hidden]
    /// Per-tensor fp8 KV-cache scales (K, V), calibrated at export: stored = value / scale.
    /// None where the source carries no calibration.
    pub kv_scale: Option<[f32; 2]>,
}

/// A loaded model: configuration and runtime-layout weights.
pub struct Model {
    /// What the model is.
    pub config: ModelConfig,
    pub(crate) embed: Matrix, // [vocab, hidden]
    pub(crate) embed_scale: f32,
    pub(crate) lm_head: Option<Matrix>, // [vocab, hidden]; None: tied to `embed`
    pub(crate) layers: Vec<Layer>,
    pub(crate) final_norm: Vec<f32>, // [hidden]
    pub(crate) rope_full: Vec<f32>,  // [head_dim / 2] inverse frequencies
    pub(crate) rope_local: Vec<f32>, // [head_dim / 2], sliding-window layers
}

/// Activation buffers for one step, sized once for the largest batch.
pub struct Scratch {
    max_tokens: usize,
    max_logit_rows: usize,
    x: Vec<f32>,        // [T, hidden] residual stream
    h: Vec<f32>,        // [T, hidden] normed input / sub-block output
    qkv: Vec<f32>,      // [T, q_dim + 2·kv_dim]
    q: Vec<f32>,        // [T, q_dim]
    attn: Vec<f32>,     // [T, q_dim]
    gate_up: Vec<f32>,  // [T, 2·intermediate]
    act: Vec<f32>,      // [T, intermediate]
    cos: [Vec<f32>; 2], // [T, head_dim / 2] for full and sliding layers
    sin: [Vec<f32>; 2],
    rows: Vec<f32>,   // [R, hidden] normed rows that need logits
    logits: Vec<f32>, // [R, vocab]
}

impl Scratch {
    /// Buffers for batches of up to `max_tokens` tokens and `max_logit_rows` logit rows.
    pub fn new(cfg: &ModelConfig, max_tokens: usize, max_logit_rows: usize) -> Self {
        let t = max_tokens;
        let half = cfg.head_dim / 2;
        Scratch {
            max_tokens,
            max_logit_rows,
            x: vec![0.0; t * cfg.hidden_size],
            h: vec![0.0; t * cfg.hidden_size],
            qkv: vec![0.0; t * (cfg.q_dim() + 2 * cfg.kv_dim())],
            q: vec![0.0; t * cfg.q_dim()],
            attn: vec![0.0; t * cfg.q_dim()],
            gate_up: vec![0.0; t * 2 * cfg.intermediate_size],
            act: vec![0.0; t * cfg.intermediate_size],
            cos: [vec![0.0; t * half], vec![0.0; t * half]],
            sin: [vec![0.0; t * half], vec![0.0; t * half]],
            rows: vec![0.0; max_logit_rows * cfg.hidden_size],
            logits: vec![0.0; max_logit_rows * cfg.vocab_size],
        }
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        let v = [
            &self.x,
            &self.h,
            &self.qkv,
            &self.q,
            &self.attn,
            &self.gate_up,
            &self.act,
            &self.rows,
            &self.logits,
        ];
        4 * (v.iter().map(|b| b.len()).sum::<usize>() + 4 * self.cos[0].len())
    }

    /// Largest batch in tokens.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Most logit rows per step.
    pub fn max_logit_rows(&self) -> usize {
        self.max_logit_rows
    }

    /// The residual stream after the last step's layers, `[n_tokens, hidden]` (AWQ calibration
    /// carries it from one layer to the next).
    pub(crate) fn hidden_states(&self, n_tokens: usize) -> &[f32] {
        &self.x[..n_tokens * (self.x.len() / self.max_tokens.max(1))]
    }

    /// The attention output of the last step's last layer, `[n_tokens, q_dim]` (the output
    /// projection's input; GPTQ calibration reads it).
    pub(crate) fn attention_output(&self, n_tokens: usize) -> &[f32] {
        &self.attn[..n_tokens * (self.attn.len() / self.max_tokens.max(1))]
    }

    /// The logits of the last step, writable (samplers process them in place).
    pub fn logits_mut(&mut self) -> &mut [f32] {
        &mut self.logits
    }
}

impl Model {
    /// Runs one step: writes the batch's keys and values into `kv` and returns the logits of
    /// `batch.logit_rows`, `[rows, vocab]` row-major.
    pub fn forward<'s>(&self, batch: &ForwardBatch<'_>, kv: &mut KvCache, s: &'s mut Scratch) -> &'s [f32] {
        let c = &self.config;
        let n = batch.tokens.len();
        let n_rows = batch.logit_rows.len();
        assert!(n <= s.max_tokens && n_rows <= s.max_logit_rows, "batch exceeds the scratch buffers");
        let (hidden, hd) = (c.hidden_size, c.head_dim);
        let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
        let qkv_dim = q_dim + 2 * kv_dim;
        let half = hd / 2;
        let eps = c.rms_norm_eps;
        let layout = TokenLayout {
            positions: batch.positions,
            token_seq: batch.token_seq,
            block_table_data: batch.block_table_data,
            block_table_offsets: batch.block_table_offsets,
        };

        // embed
        let x = &mut s.x[..n * hidden];
        let scale = self.embed_scale;
        for (t, &tok) in batch.tokens.iter().enumerate() {
            let row = &mut x[t * hidden..(t + 1) * hidden];
            self.embed.row_into(tok as usize, row);
            if scale != 1.0 {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        // rotary tables for this step's positions
        for (i, freqs) in [&self.rope_full, &self.rope_local].into_iter().enumerate() {
            ops::rope_cos_sin(batch.positions, freqs, &mut s.cos[i][..n * half], &mut s.sin[i][..n * half]);
        }

        for (li, layer) in self.layers.iter().enumerate() {
            let h = &mut s.h[..n * hidden];
            ops::rmsnorm(&s.x[..n * hidden], &layer.attn_norm, 0.0, eps, h);
            let qkv = &mut s.qkv[..n * qkv_dim];
            matmul(h, n, &layer.wqkv, qkv);
            let rope = if layer.attention == LayerAttention::Sliding { 1 } else { 0 };
            for t in 0..n {
                let row = &mut qkv[t * qkv_dim..(t + 1) * qkv_dim];
                if let Some(b) = &layer.bqkv {
                    ops::add_inplace(row, b);
                }
                let (qk, _) = row.split_at_mut(q_dim + kv_dim);
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    ops::rmsnorm_inplace(&mut qk[..q_dim], qn, 0.0, eps);
                    ops::rmsnorm_inplace(&mut qk[q_dim..], kn, 0.0, eps);
                }
                let (cos, sin) =
                    (&s.cos[rope][t * half..(t + 1) * half], &s.sin[rope][t * half..(t + 1) * half]);
                for head in qk.chunks_mut(hd) {
                    ops::rope_apply(head, cos, sin);
                }
                s.q[t * q_dim..(t + 1) * q_dim].copy_from_slice(&row[..q_dim]);
            }
            // write this step's keys and values into the cache
            let shape = kv.shape;
            for t in 0..n {
                let pos = batch.positions[t] as usize;
                let seq = batch.token_seq[t] as usize;
                let table = &batch.block_table_data
                    [batch.block_table_offsets[seq] as usize..batch.block_table_offsets[seq + 1] as usize];
                let (block, slot) = (table[pos / shape.block_size] as usize, pos % shape.block_size);
                let row = &qkv[t * qkv_dim..(t + 1) * qkv_dim];
                for kvh in 0..c.num_key_value_heads {
                    let off = shape.offset(block, kvh, slot);
                    kv.write(
                        li,
                        off,
                        &row[q_dim + kvh * hd..][..hd],
                        &row[q_dim + kv_dim + kvh * hd..][..hd],
                    );
                }
            }
            // attend over cached keys
            let window = if layer.attention == LayerAttention::Sliding { c.sliding_window } else { None };
            let params = AttnParams {
                n_heads: c.num_attention_heads,
                scale: c.attn_scale(),
                window,
                softcap: c.attn_logit_softcapping,
            };
            paged_attention(
                &s.q[..n * q_dim],
                kv.layer(li),
                &shape,
                layout,
                params,
                &mut s.attn[..n * q_dim],
            );
            // output projection, residual
            let h = &mut s.h[..n * hidden];
            matmul(&s.attn[..n * q_dim], n, &layer.wo, h);
            self.residual_add(layer.post_attn_norm.as_deref(), n, s);
            // MLP
            let h = &mut s.h[..n * hidden];
            ops::rmsnorm(&s.x[..n * hidden], &layer.ffn_norm, 0.0, eps, h);
            let ffn = c.intermediate_size;
            matmul(h, n, &layer.w_gate_up, &mut s.gate_up[..n * 2 * ffn]);
            ops::gated_act(&s.gate_up[..n * 2 * ffn], ffn, c.hidden_act, &mut s.act[..n * ffn]);
            matmul(&s.act[..n * ffn], n, &layer.w_down, &mut s.h[..n * hidden]);
            self.residual_add(layer.post_ffn_norm.as_deref(), n, s);
        }

        // final norm and LM head, for the requested rows only
        for (r, &t) in batch.logit_rows.iter().enumerate() {
            let t = t as usize;
            ops::rmsnorm(
                &s.x[t * hidden..(t + 1) * hidden],
                &self.final_norm,
                0.0,
                eps,
                &mut s.rows[r * hidden..(r + 1) * hidden],
            );
        }
        let vocab = c.vocab_size;
        let logits = &mut s.logits[..n_rows * vocab];
        matmul(&s.rows[..n_rows * hidden], n_rows, self.lm_head.as_ref().unwrap_or(&self.embed), logits);
        if let Some(cap) = c.final_logit_softcapping {
            ops::softcap(logits, cap);
        }
        &s.logits[..n_rows * vocab]
    }

    /// `x += norm(h)` (or `x += h` without a post-norm).
    fn residual_add(&self, post_norm: Option<&[f32]>, n: usize, s: &mut Scratch) {
        let hidden = self.config.hidden_size;
        let (x, h) = (&mut s.x[..n * hidden], &mut s.h[..n * hidden]);
        if let Some(w) = post_norm {
            for row in h.chunks_mut(hidden) {
                ops::rmsnorm_inplace(row, w, 0.0, self.config.rms_norm_eps);
            }
        }
        ops::add_inplace(x, h);
    }

    /// Bytes of weights one decode step streams from memory: every layer matrix and the LM head.
    /// The embedding table counts only when it is also the LM head (tied); otherwise a step
    /// gathers just one row of it per token. Norm weights and biases are left out (< 0.1%).
    pub fn streamed_weight_bytes(&self) -> usize {
        let m = |m: &Matrix| m.size_bytes();
        let layers: usize =
            self.layers.iter().map(|l| m(&l.wqkv) + m(&l.wo) + m(&l.w_gate_up) + m(&l.w_down)).sum();
        layers + m(self.lm_head.as_ref().unwrap_or(&self.embed))
    }

    /// Bytes of all weights.
    pub fn weight_bytes(&self) -> usize {
        let m = |m: &Matrix| m.size_bytes();
        let layers: usize =
            self.layers.iter().map(|l| m(&l.wqkv) + m(&l.wo) + m(&l.w_gate_up) + m(&l.w_down)).sum();
        layers + m(&self.embed) + self.lm_head.as_ref().map_or(0, m)
    }
}
