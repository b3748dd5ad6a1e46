//! Causal paged attention for a flattened batch: each token attends to the cached positions of
//! its own sequence up to its own position (within the sliding window where the layer has one).
//! Prefill, decode and chunked prefill are the same computation — this step's keys and values
//! are written to the cache before attention runs.
//!
//! One task per (token, KV head): the task walks the sequence's blocks once and updates every
//! query head of the GQA group with an online (streaming) softmax, so no score buffer is needed
//! and each key/value row is read once per group.

use rayon::prelude::*;

use super::simd::{axpy, dot};
use crate::kv::KvShape;

/// Query heads per KV head that one task can hold state for.
pub const MAX_GROUP: usize = 32;

/// Where each token of a batch sits: its position and its sequence's block table.
#[derive(Debug, Clone, Copy)]
pub struct TokenLayout<'a> {
    /// Position of each token in its sequence.
    pub positions: &'a [u32],
    /// Sequence index of each token.
    pub token_seq: &'a [u32],
    /// All block tables, concatenated.
    pub block_table_data: &'a [u32],
    /// `block_table_data[offsets[s]..offsets[s + 1]]` is sequence `s`'s table.
    pub block_table_offsets: &'a [u32],
}

impl TokenLayout<'_> {
    fn table(&self, seq: usize) -> &[u32] {
        let (a, b) = (self.block_table_offsets[seq] as usize, self.block_table_offsets[seq + 1] as usize);
        &self.block_table_data[a..b]
    }
}

/// Attention parameters of one layer.
#[derive(Debug, Clone, Copy)]
pub struct AttnParams {
    /// Query heads.
    pub n_heads: usize,
    /// Multiplier of `q·k`.
    pub scale: f32,
    /// Attend only to the last `window` positions (the token's own included).
    pub window: Option<usize>,
    /// `tanh` soft cap of the scores.
    pub softcap: Option<f32>,
}

/// `out[t, h·d..]` = softmax over cached positions of `q[t, h]·k` applied to `v`.
pub fn paged_attention(
    q: &[f32],
    k_pool: &[f32],
    v_pool: &[f32],
    kv: &KvShape,
    layout: TokenLayout<'_>,
    p: AttnParams,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let group = p.n_heads / kv.n_kv_heads;
    assert!(group <= MAX_GROUP, "GQA group of {group} heads exceeds {MAX_GROUP}");
    let q_width = p.n_heads * hd;
    out.par_chunks_mut(group * hd).enumerate().for_each(|(task, out_g)| {
        let (t, kvh) = (task / kv.n_kv_heads, task % kv.n_kv_heads);
        let q_g = &q[t * q_width + kvh * group * hd..][..group * hd];
        let pos = layout.positions[t] as usize;
        let first = p.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = layout.table(layout.token_seq[t] as usize);

        let mut max = [f32::NEG_INFINITY; MAX_GROUP];
        let mut sum = [0f32; MAX_GROUP];
        out_g.fill(0.0);
        let mut j = first;
        while j <= pos {
            let block = table[j / kv.block_size] as usize;
            let slot = j % kv.block_size;
            let n = (kv.block_size - slot).min(pos + 1 - j);
            let base = kv.offset(block, kvh, slot);
            for s in 0..n {
                let k = &k_pool[base + s * hd..][..hd];
                let v = &v_pool[base + s * hd..][..hd];
                for h in 0..group {
                    let mut score = dot(&q_g[h * hd..(h + 1) * hd], k) * p.scale;
                    if let Some(cap) = p.softcap {
                        score = cap * (score / cap).tanh();
                    }
                    let acc = &mut out_g[h * hd..(h + 1) * hd];
                    if score > max[h] {
                        let rescale = (max[h] - score).exp();
                        sum[h] *= rescale;
                        acc.iter_mut().for_each(|a| *a *= rescale);
                        max[h] = score;
                    }
                    let w = (score - max[h]).exp();
                    sum[h] += w;
                    axpy(acc, w, v);
                }
            }
            j += n;
        }
        for h in 0..group {
            let inv = 1.0 / sum[h];
            out_g[h * hd..(h + 1) * hd].iter_mut().for_each(|a| *a *= inv);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain softmax attention over contiguous keys, the reference for the paged kernel.
    fn reference(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let scores: Vec<f32> =
            keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale).collect();
        let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f32 = e.iter().sum();
        let mut out = vec![0f32; q.len()];
        for (w, v) in e.iter().zip(vals) {
            for (o, x) in out.iter_mut().zip(v) {
                *o += w / z * x;
            }
        }
        out
    }

    #[test]
    fn paged_matches_contiguous_with_gqa_and_window() {
        let kv = KvShape { n_layers: 1, n_blocks: 6, block_size: 4, n_kv_heads: 2, head_dim: 8 };
        let n_heads = 4;
        let table = [5u32, 1, 3]; // scrambled blocks: positions 0..12
        let len = 11;
        let val = |p: usize, h: usize, d: usize, salt: f32| ((p * 31 + h * 7 + d) as f32 * 0.37 + salt).sin();
        let mut k_pool = vec![0f32; kv.layer_len()];
        let mut v_pool = vec![0f32; kv.layer_len()];
        for p in 0..len {
            for h in 0..2 {
                let off = kv.offset(table[p / 4] as usize, h, p % 4);
                for d in 0..8 {
                    k_pool[off + d] = val(p, h, d, 0.0);
                    v_pool[off + d] = val(p, h, d, 1.0);
                }
            }
        }
        let positions = [10u32, 7];
        let q: Vec<f32> = (0..2 * n_heads * 8).map(|i| (i as f32 * 0.21).cos()).collect();
        for window in [None, Some(3)] {
            let layout = TokenLayout {
                positions: &positions,
                token_seq: &[0, 0],
                block_table_data: &table,
                block_table_offsets: &[0, 3],
            };
            let params = AttnParams { n_heads, scale: 0.3, window, softcap: None };
            let mut out = vec![0f32; q.len()];
            paged_attention(&q, &k_pool, &v_pool, &kv, layout, params, &mut out);
            for (t, &pos) in positions.iter().enumerate() {
                let first = window.map_or(0, |w| pos as usize + 1 - w);
                for h in 0..n_heads {
                    let kvh = h / 2;
                    let keys: Vec<Vec<f32>> = (first..=pos as usize)
                        .map(|p| (0..8).map(|d| val(p, kvh, d, 0.0)).collect())
                        .collect();
                    let vals: Vec<Vec<f32>> = (first..=pos as usize)
                        .map(|p| (0..8).map(|d| val(p, kvh, d, 1.0)).collect())
                        .collect();
                    let qh = &q[(t * n_heads + h) * 8..][..8];
                    let want = reference(qh, &keys, &vals, 0.3);
                    let got = &out[(t * n_heads + h) * 8..][..8];
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "t={t} h={h} window={window:?}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
