//! AWQ (activation-aware weight quantization, Lin et al. 2023) at export time.
//!
//! Weight columns that meet large activations matter most. For each group of linear layers that
//! share an input `X` (fused QKV after the attention norm, fused gate/up after the MLP norm, the
//! down projection after the gated activation), a per-input-channel scale
//! `s = mean|X|^α / mean|Ŵ|^(1−α)` (AutoAWQ's "duo scaling", `Ŵ` each weight relative to its
//! group's largest; normalised by `√(max·min)`) is searched over `α ∈ {0, 1/grid, …}`: the
//! weights become `W·diag(s)` before quantization and the input `X·diag(1/s)`, and the candidate
//! whose quantized output `Q(W·diag(s))·(X/s)` is closest to `W·X` wins (squared error, each
//! token's relative to the residual stream the block adds it to). `s = 1` (plain quantization)
//! is a candidate too, so no block's calibration error grows (the perplexity can:
//! BENCHMARKS.md). llm-awq's `s = mean|X|^α` alone measured worse on every text. The `1/s`
//! is folded into what produces `X` — the norm weight, or the up rows of `w_gate_up` for the
//! down projection — so the runtime and the package layout are unchanged. The output projection
//! is not scaled: with grouped-query attention its input channels do not map one-to-one to V rows
//! (llm-awq skips it likewise).
//!
//! llm-awq's weight-clipping search (`auto_clip`) was tried after the scales — per (row, group)
//! clamp ratio in `{1, 0.95, …, 0.5}` minimising the group's output error `dᵀ·XᵀX·d` over the
//! calibration tokens — and made Qwen2.5-Coder-0.5B worse every time (session 4 on 64 tokens;
//! session 5 on 256 of 2,048 tokens, raw or with each token's row normalised: golden-text
//! perplexity 4.64 against 4.30 without it), so it is not done (BENCHMARKS.md).
//!
//! The same calibration pass serves two more uses: with `gptq`, int4 matrices are rounded by
//! GPTQ ([`super::gptq`]) against the inputs each matrix gets with the matrices before it already
//! quantized; and for an fp8 KV cache it measures each layer's largest |K| (after RoPE) and |V|,
//! from which the per-tensor `kv_scale`s are set.
//!
//! Calibration runs layer by layer like the export: the hidden states of the calibration tokens
//! go through each layer in full precision (its scales folded, its weights not rounded), so that
//! every layer calibrates on the full-precision model's activations as in llm-awq — on the
//! quantized model's, AWQ measured worse on every text (BENCHMARKS.md); only GPTQ carries them
//! through the quantized layer, to compensate the errors of the layers before. Memory holds one
//! layer and `[tokens, hidden]` activations. The text is cut into sequences of
//! `seq_len` tokens, each attended on its own, so that 2,048 tokens cost four times 512 tokens
//! rather than sixteen times.

use serde::{Deserialize, Serialize};

use crate::backend::cpu::{matmul, ops, Matrix, MatrixData};
use crate::config::ModelConfig;
use crate::kv::{KvCache, KvShape, LayerView};
use crate::model::{ForwardBatch, Globals, Layer, Loader, Model, Scratch};
use crate::quant::{fp8, gptq, int4, WeightFormat};
use crate::{Error, Result, Tokenizer};

/// The calibration text used when none is given: prose, code and dialogue written for edgellm.
pub const DEFAULT_CALIBRATION: &str = include_str!("awq_calibration.txt");

/// AWQ settings, recorded in the package manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AwqOptions {
    /// Name of the calibration text (`built-in` or the file's name).
    pub calibration: String,
    /// Most calibration tokens (the text is cut there).
    pub max_tokens: usize,
    /// Tokens (evenly spaced) on which the output error of each candidate scale is measured.
    pub loss_tokens: usize,
    /// Grid points for `α` in `[0, 1)`.
    pub grid: usize,
    /// Search and fold AWQ scales (false: the calibration only measures, e.g. KV scales).
    #[serde(default = "yes")]
    pub awq: bool,
    /// Round int4 weights by GPTQ against the calibration inputs instead of to nearest.
    #[serde(default)]
    pub gptq: bool,
    /// Tokens per calibration sequence: the text is cut into sequences of this many tokens,
    /// each attended on its own (attention cost grows with the square of a sequence's length).
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
}

fn default_seq_len() -> usize {
    512
}

fn yes() -> bool {
    true
}

impl Default for AwqOptions {
    fn default() -> Self {
        AwqOptions {
            calibration: "built-in".into(),
            max_tokens: 2048,
            loss_tokens: 256,
            grid: 20,
            awq: true,
            gptq: false,
            seq_len: default_seq_len(),
        }
    }
}

/// The calibration tokens' hidden states, carried from layer to layer.
pub(crate) struct Calibration {
    cfg: ModelConfig,
    opts: AwqOptions,
    tokens: usize,
    x: Vec<f32>, // [tokens, hidden] residual stream entering the next layer
    rope_full: Vec<f32>,
    rope_local: Vec<f32>,
}

impl Calibration {
    /// Tokenizes `text` and embeds its tokens with `g`'s embedding table.
    pub fn new(
        ld: &Loader,
        g: Globals,
        tokenizer: &Tokenizer,
        text: &str,
        opts: &AwqOptions,
    ) -> Result<Self> {
        let cfg = ld.config().clone();
        let mut opts = opts.clone();
        opts.seq_len = opts.seq_len.clamp(16, cfg.max_position_embeddings);
        let mut ids = tokenizer.encode(text, false)?;
        ids.truncate(opts.max_tokens);
        if ids.len() < 16 {
            return Err(Error::Invalid {
                what: "calibration text",
                why: format!("{} tokens; AWQ needs at least 16", ids.len()),
            });
        }
        let hidden = cfg.hidden_size;
        let mut x = vec![0f32; ids.len() * hidden];
        for (row, &id) in x.chunks_exact_mut(hidden).zip(&ids) {
            g.embed.row_into(id as usize, row);
            row.iter_mut().for_each(|v| *v *= g.embed_scale);
        }
        Ok(Calibration { tokens: ids.len(), cfg, opts, x, rope_full: g.rope_full, rope_local: g.rope_local })
    }

    /// Layer `i` in `format`: AWQ scales folded in (with `opts.awq`), int4 rounded by GPTQ
    /// (with `opts.gptq`), and with fp8 KV-cache scales measured over the calibration tokens
    /// (with `kv_scales`); advances the hidden states past the layer in full precision (scales
    /// folded, weights not rounded), or as quantized with `opts.gptq`.
    pub fn layer(&mut self, ld: &Loader, i: usize, format: WeightFormat, kv_scales: bool) -> Result<Layer> {
        let mut layer = ld.layer_f32(i)?;
        let gptq_group = match format {
            WeightFormat::Int4 { group } if self.opts.gptq => Some(group),
            _ => None,
        };
        // the full-precision pass (AWQ's scales leave it unchanged): the residual stream AWQ
        // weighs errors against and, without GPTQ, the next layer's inputs and the KV ranges
        let full = (self.opts.awq || gptq_group.is_none()).then(|| self.run(&layer, false));
        if let (true, Some(full)) = (self.opts.awq, &full) {
            self.fold_scales(&mut layer, format, &full.x);
        }
        // AWQ and the KV scales calibrate on the full-precision model's activations (llm-awq's
        // choice; on the quantized model's, AWQ measured worse on every text, BENCHMARKS.md);
        // GPTQ on the quantized model's, so that it compensates the errors before it
        let (mut layer, pass) = match gptq_group {
            Some(group) => {
                let layer = self.gptq_layer(layer, group);
                let pass = self.run(&layer, false);
                (layer, pass)
            }
            // (`full` is always there without GPTQ; the scaled f32 layer computes the same)
            None => {
                let pass = full.unwrap_or_else(|| self.run(&layer, false));
                (layer.converted(format), pass)
            }
        };
        self.x = pass.x;
        if kv_scales {
            // 2× headroom: a value beyond the calibration maximum would saturate, while halving
            // the resolution only moves values below 2⁻⁶ of the scale into fp8's subnormals
            layer.kv_scale = Some(pass.kv_amax.map(|a| if a > 0.0 { 2.0 * a / fp8::MAX } else { 1.0 }));
        }
        Ok(layer)
    }

    /// Folds AWQ's per-input-channel scales into `layer` (f32): the QKV and gate/up columns
    /// with their norms, the down columns with the up rows of `w_gate_up`. As in llm-awq, each
    /// candidate is judged on the output of the block the matrix feeds — attention through the
    /// output projection for QKV (its errors pass through RoPE, softmax and the heads' mixing;
    /// before the output projection it measured worse), the whole MLP for gate/up (through the gated
    /// activation and the down projection) — not on the matrix's own outputs: judged on those,
    /// the QKV and gate/up scales made Qwen2.5-Coder-0.5B's perplexity worse (BENCHMARKS.md).
    /// Each token's error counts relative to the residual stream it is added to (the mean square
    /// of its row after attention, or of `x_out`, after the layer): the next norm divides it by
    /// that stream's RMS, so raw errors would let a few tokens with huge hidden states (the
    /// attention sink) choose the scales; weighted so, AWQ measured better on the held-out texts.
    fn fold_scales(&self, layer: &mut Layer, format: WeightFormat, x_out: &[f32]) {
        let (t, hidden, ffn) = (self.tokens, self.cfg.hidden_size, self.cfg.intermediate_size);
        let eps = self.cfg.rms_norm_eps;
        let act_fn = self.cfg.hidden_act;
        // inputs of the QKV projection; the candidates' attention block outputs over all tokens
        let mut h_attn = vec![0f32; t * hidden];
        ops::rmsnorm(&self.x, &layer.attn_norm, 0.0, eps, &mut h_attn);
        // the residual stream after attention (the layer with its MLP output zeroed); folding
        // scales does not change it
        let x_mid = self.run(layer, true).x;
        let attention = |s: &[f32], q: Matrix| {
            let mut l = layer.clone();
            l.wqkv = q;
            l.attn_norm.iter_mut().zip(s).for_each(|(w, s)| *w /= s);
            let mut out = vec![0f32; t * hidden];
            matmul(&self.run(&l, true).attn, t, &layer.wo, &mut out);
            out
        };
        let s_qkv = self.search(&h_attn, &layer.wqkv, format, None, &attention, &inv_ms(&x_mid, hidden));
        scale_columns(&mut layer.wqkv, &s_qkv);
        layer.attn_norm.iter_mut().zip(&s_qkv).for_each(|(w, s)| *w /= s);
        let mut h_ffn = vec![0f32; t * hidden];
        ops::rmsnorm(&x_mid, &layer.ffn_norm, 0.0, eps, &mut h_ffn);
        let mut gate_up = vec![0f32; t * 2 * ffn];
        matmul(&h_ffn, t, &layer.w_gate_up, &mut gate_up);
        let mut act = vec![0f32; t * ffn];
        ops::gated_act(&gate_up, ffn, act_fn, &mut act);
        // the MLP's output for loss rows `h` (already divided by the scales) through gate/up `q`
        let w_down = &layer.w_down;
        let mlp = |h: &[f32], q: Matrix| {
            let m = h.len() / hidden;
            let (mut gu, mut a, mut out) =
                (vec![0f32; m * 2 * ffn], vec![0f32; m * ffn], vec![0f32; m * hidden]);
            matmul(h, m, &q, &mut gu);
            ops::gated_act(&gu, ffn, act_fn, &mut a);
            matmul(&a, m, w_down, &mut out);
            out
        };
        let w_out = inv_ms(x_out, hidden);
        let s_gu = self.search(&h_ffn, &layer.w_gate_up, format, Some(&mlp), &|_, _| unreachable!(), &w_out);
        let own = |x: &[f32], q: Matrix| {
            let mut out = vec![0f32; x.len() / q.cols * q.rows];
            matmul(x, x.len() / q.cols, &q, &mut out);
            out
        };
        let s_down = self.search(&act, &layer.w_down, format, Some(&own), &|_, _| unreachable!(), &w_out);
        scale_columns(&mut layer.w_gate_up, &s_gu);
        layer.ffn_norm.iter_mut().zip(&s_gu).for_each(|(w, s)| *w /= s);
        scale_columns(&mut layer.w_down, &s_down);
        let MatrixData::F32(gu) = &layer.w_gate_up.data else { unreachable!("f32 layer") };
        let mut up = gu.to_vec();
        for (row, s) in up[ffn * hidden..].chunks_exact_mut(hidden).zip(&s_down) {
            row.iter_mut().for_each(|w| *w /= s);
        }
        layer.w_gate_up = Matrix::from_f32(2 * ffn, hidden, up);
    }

    /// The loss rows: `loss_tokens` tokens, evenly spaced.
    fn loss_rows(&self) -> Vec<usize> {
        let m = self.opts.loss_tokens.clamp(1, self.tokens);
        (0..m).map(|i| i * self.tokens / m).collect()
    }

    /// `layer` (f32) with its four matrices rounded to int4 by GPTQ, in the order the forward
    /// pass uses them, each against the inputs it gets with the matrices before it quantized.
    fn gptq_layer(&self, mut layer: Layer, group: usize) -> Layer {
        let (t, hidden, ffn) = (self.tokens, self.cfg.hidden_size, self.cfg.intermediate_size);
        let eps = self.cfg.rms_norm_eps;
        let mut h = vec![0f32; t * hidden];
        ops::rmsnorm(&self.x, &layer.attn_norm, 0.0, eps, &mut h);
        layer.wqkv = gptq_matrix(&layer.wqkv, &h, group);
        // the output projection's inputs: attention under the quantized QKV
        let attn = self.run(&layer, true).attn;
        layer.wo = gptq_matrix(&layer.wo, &attn, group);
        let x_mid = self.run(&layer, true).x;
        ops::rmsnorm(&x_mid, &layer.ffn_norm, 0.0, eps, &mut h);
        layer.w_gate_up = gptq_matrix(&layer.w_gate_up, &h, group);
        let mut gate_up = vec![0f32; t * 2 * ffn];
        matmul(&h, t, &layer.w_gate_up, &mut gate_up);
        let mut act = vec![0f32; t * ffn];
        ops::gated_act(&gate_up, ffn, self.cfg.hidden_act, &mut act);
        layer.w_down = gptq_matrix(&layer.w_down, &act, group);
        layer
    }

    /// The residual stream after `layer` over the calibration tokens, the attention output (the
    /// output projection's input) and the largest |K| and |V| written to the cache;
    /// `attention_only` zeroes the MLP's contribution.
    fn run(&self, layer: &Layer, attention_only: bool) -> Pass {
        let (t, hidden) = (self.tokens, self.cfg.hidden_size);
        let mut layer = layer.clone();
        let mut cfg = self.cfg.clone();
        if attention_only {
            // a one-row MLP of zeros: nothing added, and no time spent on the real one
            cfg.intermediate_size = 1;
            layer.w_gate_up = Matrix::from_f32(2, hidden, vec![0.0; 2 * hidden]);
            layer.w_down = Matrix::from_f32(hidden, 1, vec![0.0; hidden]);
        }
        let g = Globals {
            embed: Matrix::from_f32(t, hidden, self.x.clone()),
            lm_head: None,
            final_norm: vec![1.0; hidden],
            rope_full: self.rope_full.clone(),
            rope_local: self.rope_local.clone(),
            embed_scale: 1.0,
        };
        cfg.num_hidden_layers = 1;
        cfg.layer_types = vec![layer.attention];
        let model = Model::from_parts(cfg, g, vec![layer]);
        // consecutive sequences of `seq_len` tokens (the last one shorter), each in its own
        // run of cache blocks
        let (block, len) = (16, self.opts.seq_len);
        let seqs: Vec<usize> = (0..t.div_ceil(len)).map(|s| len.min(t - s * len)).collect();
        let mut offsets = vec![0u32];
        for &n in &seqs {
            offsets.push(offsets.last().unwrap() + n.div_ceil(block) as u32);
        }
        let n_blocks = *offsets.last().unwrap() as usize;
        let mut kv = KvCache::new(KvShape {
            n_layers: 1,
            n_blocks,
            block_size: block,
            n_kv_heads: self.cfg.num_key_value_heads,
            head_dim: self.cfg.head_dim,
        });
        let mut scratch = Scratch::new(&model.config, t, 1);
        let ids: Vec<u32> = (0..t as u32).collect();
        let positions: Vec<u32> = (0..t).map(|r| (r % len) as u32).collect();
        let token_seq: Vec<u32> = (0..t).map(|r| (r / len) as u32).collect();
        let table: Vec<u32> = (0..n_blocks as u32).collect();
        let batch = ForwardBatch {
            tokens: &ids,
            positions: &positions,
            token_seq: &token_seq,
            block_table_data: &table,
            block_table_offsets: &offsets,
            logit_rows: &[],
        };
        model.forward(&batch, &mut kv, &mut scratch);
        let LayerView::F32(pools) = kv.layer(0) else { unreachable!("an f32 cache") };
        let amax = |p: &[f32]| p.iter().fold(0f32, |m, v| m.max(v.abs()));
        Pass {
            x: scratch.hidden_states(t).to_vec(),
            attn: scratch.attention_output(t).to_vec(),
            kv_amax: [amax(pools.k), amax(pools.v)],
        }
    }

    /// The per-input-channel scale for `w` with inputs `x: [tokens, w.cols]`. A candidate `s`
    /// is judged by the block output it gives against the f32 one: `rows(xs / s, Q(w·diag(s)))`
    /// on the loss rows `xs` when `rows` is given, else `whole(s, Q(w·diag(s)))` (a block that
    /// needs every token, e.g. attention), each output row's squared error times its token's
    /// `token_weight`.
    fn search(
        &self,
        x: &[f32],
        w: &Matrix,
        format: WeightFormat,
        rows: Option<&Block<'_>>,
        whole: &Block<'_>,
        token_weight: &[f32],
    ) -> Vec<f32> {
        let (n, k) = (w.rows, w.cols);
        let MatrixData::F32(wv) = &w.data else { unreachable!("f32 layer") };
        let mut mean = vec![0f32; k];
        for row in x.chunks_exact(k) {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v.abs());
        }
        mean.iter_mut().for_each(|m| *m /= self.tokens as f32);
        let loss = self.loss_rows();
        let xs: Vec<f32> = loss.iter().flat_map(|&r| x[r * k..][..k].iter().copied()).collect();
        let block = |s: &[f32], q: Matrix| match rows {
            Some(f) => {
                let xq: Vec<f32> =
                    xs.chunks_exact(k).flat_map(|row| row.iter().zip(s).map(|(x, s)| x / s)).collect();
                f(&xq, q)
            }
            None => whole(s, q),
        };
        let want = block(&vec![1.0; k], w.clone());
        // the weight of each output row: its token's, for the loss rows or for every token
        let row_weight: Vec<f64> = match rows {
            Some(_) => loss.iter().map(|&r| token_weight[r] as f64).collect(),
            None => token_weight.iter().map(|&w| w as f64).collect(),
        };
        let width = want.len() / row_weight.len();
        let (mut best, mut best_err) = (vec![1f32; k], f64::INFINITY);
        // AutoAWQ's "duo scaling": each input channel's mean weight magnitude, each weight taken
        // relative to its (row, group)'s largest, divides the scale with exponent `1 − α`
        let group = match format {
            WeightFormat::Int4 { group } => group,
            _ => k,
        };
        let mut w_mean = vec![0f32; k];
        for row in wv.chunks_exact(k) {
            for (wg, mg) in row.chunks(group).zip(w_mean.chunks_mut(group)) {
                let amax = wg.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
                mg.iter_mut().zip(wg).for_each(|(m, w)| *m += w.abs() / amax);
            }
        }
        w_mean.iter_mut().for_each(|m| *m /= n as f32);
        let grid = self.opts.grid.max(1);
        // candidate 0 is plain quantization (no scale), then α = 0, 1/grid, …
        for step in 0..=grid {
            let mut s: Vec<f32> = match step.checked_sub(1) {
                None => vec![1.0; k],
                Some(i) => {
                    let alpha = i as f32 / grid as f32;
                    mean.iter()
                        .zip(&w_mean)
                        .map(|(x, w)| (x.powf(alpha) / (w.powf(1.0 - alpha) + 1e-4)).max(1e-4))
                        .collect()
                }
            };
            let (lo, hi) = s.iter().fold((f32::MAX, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let norm = (lo * hi).sqrt();
            s.iter_mut().for_each(|v| *v /= norm);
            let scaled: Vec<f32> =
                wv.chunks_exact(k).flat_map(|row| row.iter().zip(&s).map(|(w, s)| w * s)).collect();
            let got = block(&s, Matrix::from_f32(n, k, scaled).converted(format));
            let err: f64 = got
                .chunks_exact(width)
                .zip(want.chunks_exact(width))
                .zip(&row_weight)
                .map(|((a, b), w)| w * a.iter().zip(b).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>())
                .sum();
            if err < best_err {
                (best, best_err) = (s, err);
            }
        }
        best
    }
}

/// A block output as a function of the scales (or the scaled inputs) and a candidate matrix.
type Block<'a> = dyn Fn(&[f32], Matrix) -> Vec<f32> + 'a;

/// What [`Calibration::run`] leaves behind.
struct Pass {
    x: Vec<f32>,       // [tokens, hidden] residual stream after the layer
    attn: Vec<f32>,    // [tokens, q_dim] attention output
    kv_amax: [f32; 2], // largest |K| (after RoPE) and |V|
}

/// `1 / mean(x²)` of each `[_, hidden]` row (0 for a zero row).
fn inv_ms(x: &[f32], hidden: usize) -> Vec<f32> {
    x.chunks_exact(hidden)
        .map(|r| {
            let ms = r.iter().map(|v| v * v).sum::<f32>() / hidden as f32;
            if ms > 0.0 {
                1.0 / ms
            } else {
                0.0
            }
        })
        .collect()
}

/// An f32 matrix rounded to int4 by GPTQ against inputs `x: [tokens, cols]` (plain conversion
/// where the group does not fit the columns).
fn gptq_matrix(w: &Matrix, x: &[f32], group: usize) -> Matrix {
    let MatrixData::F32(v) = &w.data else { unreachable!("f32 layer") };
    if !int4::fits(w.cols, group) {
        return w.copy_as(WeightFormat::Int4 { group });
    }
    let (q, scales) = gptq::quantize(v, w.rows, w.cols, group, x);
    Matrix {
        rows: w.rows,
        cols: w.cols,
        data: MatrixData::Int4 { q: q.into(), scales: scales.into(), group },
    }
}

/// `w[:, c] *= s[c]` for an f32 matrix.
fn scale_columns(w: &mut Matrix, s: &[f32]) {
    let k = w.cols;
    let MatrixData::F32(v) = &w.data else { unreachable!("f32 layer") };
    let scaled: Vec<f32> = v.chunks_exact(k).flat_map(|row| row.iter().zip(s).map(|(w, s)| w * s)).collect();
    *w = Matrix::from_f32(w.rows, k, scaled);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::OpenedSource;
    use crate::model::LoadOptions;

    /// A fixture model, its loader and a calibration pass over the built-in text with `opts`.
    fn calibrate(fixture: &str, opts: &AwqOptions, run: impl FnOnce(&OpenedSource, &Loader, Calibration)) {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(fixture);
        let src = OpenedSource::open(&dir).unwrap();
        let ld = Loader::new(src.weights.as_ref(), &src.config, LoadOptions::default()).unwrap();
        let cal =
            Calibration::new(&ld, ld.globals().unwrap(), &src.tokenizer, DEFAULT_CALIBRATION, opts).unwrap();
        run(&src, &ld, cal);
    }

    #[test]
    fn folded_scales_preserve_each_layers_function() {
        for fixture in ["tiny-qwen2", "tiny-gemma3"] {
            calibrate(fixture, &AwqOptions::default(), |src, ld, mut cal| {
                let mut changed = 0;
                for i in 0..src.config.num_hidden_layers {
                    let plain = ld.layer_f32(i).unwrap();
                    let want = cal.run(&plain, false).x;
                    let mut scaled = plain.clone();
                    cal.fold_scales(&mut scaled, WeightFormat::Int4 { group: 64 }, &want);
                    changed += (scaled.attn_norm != plain.attn_norm) as usize
                        + (scaled.ffn_norm != plain.ffn_norm) as usize;
                    let got = cal.run(&scaled, false).x;
                    cal.x = want.clone();
                    let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(
                        err <= 1e-4 * amax,
                        "{fixture} layer {i}: scaled layer differs by {err} (max {amax})"
                    );
                }
                assert!(changed > 0, "{fixture}: AWQ chose no scale anywhere");
            });
        }
    }

    /// The layer-by-layer calibration pass (several sequences, no scales) ends in the hidden
    /// states the whole f32 model computes for each sequence on its own — also when the layers
    /// it hands out are int4: it carries the full-precision activations.
    #[test]
    fn calibration_pass_matches_the_models_forward() {
        for (fixture, format) in [
            ("tiny-qwen2", WeightFormat::F32),
            ("tiny-gemma3", WeightFormat::F32),
            ("tiny-qwen2", WeightFormat::Int4 { group: 64 }),
        ] {
            let opts = AwqOptions { awq: false, max_tokens: 100, seq_len: 40, ..AwqOptions::default() };
            calibrate(fixture, &opts, |src, ld, mut cal| {
                for i in 0..src.config.num_hidden_layers {
                    let layer = cal.layer(ld, i, format, false).unwrap();
                    let int4 = matches!(layer.w_down.data, MatrixData::Int4 { .. });
                    assert_eq!(int4, format != WeightFormat::F32, "{fixture}: layer {i} not in {format}");
                }
                let model =
                    Model::load(src.weights.as_ref(), src.config.clone(), LoadOptions::default()).unwrap();
                let ids = src.tokenizer.encode(DEFAULT_CALIBRATION, false).unwrap();
                let hidden = src.config.hidden_size;
                for (s, seq) in ids[..100].chunks(40).enumerate() {
                    let n = seq.len();
                    let pos: Vec<u32> = (0..n as u32).collect();
                    let blocks = n.div_ceil(16);
                    let table: Vec<u32> = (0..blocks as u32).collect();
                    let mut kv = KvCache::new(KvShape {
                        n_layers: src.config.num_hidden_layers,
                        n_blocks: blocks,
                        block_size: 16,
                        n_kv_heads: src.config.num_key_value_heads,
                        head_dim: src.config.head_dim,
                    });
                    let mut scratch = Scratch::new(&model.config, n, 1);
                    let batch = ForwardBatch {
                        tokens: seq,
                        positions: &pos,
                        token_seq: &vec![0; n],
                        block_table_data: &table,
                        block_table_offsets: &[0, blocks as u32],
                        logit_rows: &[],
                    };
                    model.forward(&batch, &mut kv, &mut scratch);
                    let want = scratch.hidden_states(n);
                    let got = &cal.x[s * 40 * hidden..][..n * hidden];
                    let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(err <= 1e-4 * amax, "{fixture} sequence {s}: differs by {err} (max {amax})");
                }
            });
        }
    }
}
