//! Causal paged attention for a flattened batch: each token attends to the cached positions of
//! its own sequence up to its own position (within the sliding window where the layer has one).
//! Prefill, decode and chunked prefill are the same computation — this step's keys and values
//! are written to the cache before attention runs.
//!
//! One work item per (token, KV head): it walks the sequence's blocks once and updates every
//! query head of the GQA group, so each key/value row is read once per group. Positions go in
//! runs of up to `SCORE_BLOCK` (64): the scores of a run are computed first, the running maximum
//! and the accumulator rescale once per run (online softmax), then the weighted values are
//! summed — dot products, `exp` and `axpy` inside one `target_feature` function.
//!
//! The cache may hold f32, f16, bf16 or fp8 elements ([`crate::kv::KvElement`]): each key and
//! value row is converted to f32 once (16 bytes at a time, into a stack buffer; f32 rows are read
//! in place) and shared by every query head of the group; the fp8 scales are folded into the
//! score scale (K) and the output (V).
//!
//! Decode has few items (one token × 2 KV heads for Qwen2.5-0.5B) and long contexts: when
//! there are fewer items than twice the threads, each item's context is split (flash-decoding)
//! into parts of at least `MIN_SPLIT` (128) positions, each part keeps its own maximum, sum and
//! unnormalized output, and a merge step combines them.

use std::ops::Range;

use rayon::prelude::*;

use super::simd::{axpy, dot_generic};
use crate::kv::{simd_available, KvElement, KvShape, LayerKv, LayerView};

/// Query heads per KV head that one task can hold state for.
pub const MAX_GROUP: usize = 32;

/// Positions scored at once (the score buffer is `MAX_GROUP × SCORE_BLOCK` on the stack).
const SCORE_BLOCK: usize = 64;

/// Widest head a converted K/V row buffer holds.
pub const MAX_HEAD_DIM: usize = 512;

/// Fewest positions per part of a split context: below this, merging costs more than the
/// extra thread gains.
const MIN_SPLIT: usize = 128;

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

/// `out[t, h·d..]` = softmax over cached positions of `q[t, h]·k` applied to `v`, with one
/// layer's cache `pools` in whatever element type it holds.
pub fn paged_attention(
    q: &[f32],
    pools: LayerView<'_>,
    kv: &KvShape,
    layout: TokenLayout<'_>,
    p: AttnParams,
    out: &mut [f32],
) {
    match pools {
        LayerView::F32(l) => attention_typed(q, l, kv, layout, p, out),
        LayerView::F16(l) => attention_typed(q, l, kv, layout, p, out),
        LayerView::Bf16(l) => attention_typed(q, l, kv, layout, p, out),
        LayerView::Fp8(l) => attention_typed(q, l, kv, layout, p, out),
    }
}

fn attention_typed<E: KvElement>(
    q: &[f32],
    pools: LayerKv<'_, E>,
    kv: &KvShape,
    layout: TokenLayout<'_>,
    p: AttnParams,
    out: &mut [f32],
) {
    let hd = kv.head_dim;
    let group = p.n_heads / kv.n_kv_heads;
    assert!(group <= MAX_GROUP, "GQA group of {group} heads exceeds {MAX_GROUP}");
    assert!(hd <= MAX_HEAD_DIM, "head_dim {hd} exceeds {MAX_HEAD_DIM}");
    let job = Job { q, pools, kv, layout, p, group, simd: simd_available() };
    let n_items = layout.positions.len() * kv.n_kv_heads;
    let longest = (0..layout.positions.len()).map(|t| job.span(t).len()).max().unwrap_or(0);
    let threads = rayon::current_num_threads();
    let splits = if n_items >= 2 * threads {
        1
    } else {
        (2 * threads).div_ceil(n_items).min(longest / MIN_SPLIT).max(1)
    };
    let width = group * hd;
    if splits == 1 {
        out.par_chunks_mut(width).enumerate().for_each(|(item, out_g)| {
            let max_sum = job.attend(item, job.span(item / kv.n_kv_heads), out_g);
            normalize(out_g, &max_sum[group..2 * group], hd);
        });
        return;
    }
    // each part: the unnormalized output of its positions, then its maxima and sums; the
    // buffer is reused across calls (taken out, not borrowed, as in `qmatmul`) so a warm decode
    // step does not allocate
    let part_len = width + 2 * group;
    let mut parts = PARTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
    parts.resize(n_items * splits * part_len, 0.0);
    parts.par_chunks_mut(part_len).enumerate().for_each(|(w, part)| {
        let (item, s) = (w / splits, w % splits);
        let span = job.span(item / kv.n_kv_heads);
        let len = span.len();
        let range = span.start + len * s / splits..span.start + len * (s + 1) / splits;
        let (acc, stats) = part.split_at_mut(width);
        let max_sum = job.attend(item, range, acc);
        stats.copy_from_slice(&max_sum[..2 * group]);
    });
    out.par_chunks_mut(width).enumerate().for_each(|(item, out_g)| {
        let parts = &parts[item * splits * part_len..(item + 1) * splits * part_len];
        for h in 0..group {
            let stat = |s: usize, i: usize| parts[s * part_len + width + i * group + h];
            let top = (0..splits).map(|s| stat(s, 0)).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut out_g[h * hd..(h + 1) * hd];
            o.fill(0.0);
            let mut sum = 0f32;
            for s in 0..splits {
                // parts left empty have max -inf and weight 0
                let wgt = (stat(s, 0) - top).exp();
                sum += wgt * stat(s, 1);
                axpy(o, wgt, &parts[s * part_len + h * hd..][..hd]);
            }
            o.iter_mut().for_each(|v| *v /= sum);
        }
    });
    PARTS.with(|p| *p.borrow_mut() = parts);
}

thread_local! {
    static PARTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Divides each head's accumulated output by its softmax sum.
fn normalize(out_g: &mut [f32], sums: &[f32], hd: usize) {
    for (o, &sum) in out_g.chunks_exact_mut(hd).zip(sums) {
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

/// One call's inputs, shared by its work items.
struct Job<'a, E> {
    q: &'a [f32],
    pools: LayerKv<'a, E>,
    kv: &'a KvShape,
    layout: TokenLayout<'a>,
    p: AttnParams,
    group: usize,
    simd: bool, // rows may be converted with AVX2/F16C
}

impl<E: KvElement> Job<'_, E> {
    /// The positions token `t` attends to.
    fn span(&self, t: usize) -> Range<usize> {
        let pos = self.layout.positions[t] as usize;
        self.p.window.map_or(0, |w| (pos + 1).saturating_sub(w))..pos + 1
    }

    /// Attends item `item` (token × KV head) over `range` into `acc` (`[group, head_dim]`,
    /// unnormalized); returns the per-head maxima and sums (`[max; group] ++ [sum; group]` in
    /// the first `2 · group` entries).
    fn attend(&self, item: usize, range: Range<usize>, acc: &mut [f32]) -> [f32; 2 * MAX_GROUP] {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2() {
            // SAFETY: the CPU supports the features the function enables (checked above).
            return unsafe { self.attend_avx2(item, range, acc) };
        }
        self.attend_body(item, range, acc)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn attend_avx2(&self, item: usize, range: Range<usize>, acc: &mut [f32]) -> [f32; 2 * MAX_GROUP] {
        self.attend_body(item, range, acc)
    }

    #[inline(always)]
    fn attend_body(&self, item: usize, range: Range<usize>, acc: &mut [f32]) -> [f32; 2 * MAX_GROUP] {
        let (kv, p, group) = (self.kv, self.p, self.group);
        let hd = kv.head_dim;
        let (t, kvh) = (item / kv.n_kv_heads, item % kv.n_kv_heads);
        let q_g = &self.q[t * p.n_heads * hd + kvh * group * hd..][..group * hd];
        let table = self.layout.table(self.layout.token_seq[t] as usize);
        let mut max = [f32::NEG_INFINITY; MAX_GROUP];
        let mut sum = [0f32; MAX_GROUP];
        let mut scores = [[0f32; SCORE_BLOCK]; MAX_GROUP];
        let mut buf = [0f32; MAX_HEAD_DIM];
        // K's scale joins the score scale; V's multiplies the accumulated output at the end
        let [k_scale, v_scale] = self.pools.scale;
        let score_scale = p.scale * k_scale;
        acc.fill(0.0);
        let mut j = range.start;
        while j < range.end {
            let slot = j % kv.block_size;
            let n = (kv.block_size - slot).min(range.end - j).min(SCORE_BLOCK);
            let base = kv.offset(table[j / kv.block_size] as usize, kvh, slot);
            let keys = &self.pools.k[base..base + n * hd];
            let vals = &self.pools.v[base..base + n * hd];
            for (s, k) in keys.chunks_exact(hd).enumerate() {
                let k = E::row(self.simd, k, &mut buf);
                for h in 0..group {
                    let mut sc = dot_generic(&q_g[h * hd..(h + 1) * hd], k) * score_scale;
                    if let Some(cap) = p.softcap {
                        sc = cap * (sc / cap).tanh();
                    }
                    scores[h][s] = sc;
                }
            }
            for h in 0..group {
                let sc = &mut scores[h][..n];
                let run_max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if run_max > max[h] {
                    // rescale what was accumulated under the old maximum, once per run
                    let r = (max[h] - run_max).exp();
                    sum[h] *= r;
                    acc[h * hd..(h + 1) * hd].iter_mut().for_each(|a| *a *= r);
                    max[h] = run_max;
                }
                for s in sc.iter_mut() {
                    *s = (*s - max[h]).exp();
                    sum[h] += *s;
                }
            }
            for (s, v) in vals.chunks_exact(hd).enumerate() {
                let v = E::row(self.simd, v, &mut buf);
                for h in 0..group {
                    axpy(&mut acc[h * hd..(h + 1) * hd], scores[h][s], v);
                }
            }
            j += n;
        }
        if v_scale != 1.0 {
            acc.iter_mut().for_each(|a| *a *= v_scale);
        }
        let mut stats = [0f32; 2 * MAX_GROUP];
        stats[..group].copy_from_slice(&max[..group]);
        stats[group..2 * group].copy_from_slice(&sum[..group]);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvDtype;
    use crate::kv::KvCache;

    fn f32_view<'a>(k: &'a [f32], v: &'a [f32]) -> LayerView<'a> {
        LayerView::F32(LayerKv { k, v, scale: [1.0; 2] })
    }

    /// Every KV element type against the f32 cache on random data: one decode token over a
    /// 700-position context (split across threads) and a short prefill, with GQA. fp8 runs
    /// with scales from the data's maximum, as the export calibrates them.
    #[test]
    fn element_types_match_the_f32_cache() {
        use rand::{Rng, SeedableRng};
        let (block, n_heads, n_kv, hd) = (16, 6, 2, 64);
        let len = 700usize;
        let n_blocks = len.div_ceil(block);
        let kv = KvShape { n_layers: 1, n_blocks, block_size: block, n_kv_heads: n_kv, head_dim: hd };
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let rows: Vec<(Vec<f32>, Vec<f32>)> = (0..len * n_kv)
            .map(|_| {
                let k = (0..hd).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
                let v = (0..hd).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                (k, v)
            })
            .collect();
        let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
        let fill = |dtype: KvDtype, scale: [f32; 2]| {
            let mut cache = KvCache::with_dtype(kv, dtype, vec![scale]);
            for p in 0..len {
                for h in 0..n_kv {
                    let (k, v) = &rows[p * n_kv + h];
                    cache.write(0, kv.offset(table[p / block] as usize, h, p % block), k, v);
                }
            }
            cache
        };
        let positions: Vec<u32> = [len as u32 - 1].into_iter().chain(0..5).collect();
        let q: Vec<f32> = (0..positions.len() * n_heads * hd).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let layout = TokenLayout {
            positions: &positions,
            token_seq: &[0; 6],
            block_table_data: &table,
            block_table_offsets: &[0, n_blocks as u32],
        };
        let params = AttnParams { n_heads, scale: 0.125, window: None, softcap: None };
        let run = |cache: &KvCache| {
            let mut out = vec![0f32; q.len()];
            paged_attention(&q, cache.layer(0), &kv, layout, params, &mut out);
            out
        };
        let want = run(&fill(KvDtype::F32, [1.0; 2]));
        for (dtype, scale, tol) in [
            (KvDtype::F16, [1.0; 2], 2e-3),
            (KvDtype::Bf16, [1.0; 2], 2e-2),
            (KvDtype::Fp8, [4.0 / 448.0, 2.0 / 448.0], 8e-2),
        ] {
            let got = run(&fill(dtype, scale));
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let amax = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(err <= tol * amax, "{dtype:?}: max error {err} of {amax}");
        }
    }

    /// Plain softmax attention over contiguous keys, the reference for the paged kernel.
    fn reference(q: &[f32], keys: &[Vec<f32>], vals: &[Vec<f32>], scale: f32, cap: Option<f32>) -> Vec<f32> {
        let scores: Vec<f32> = keys
            .iter()
            .map(|k| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale)
            .map(|s| cap.map_or(s, |c| c * (s / c).tanh()))
            .collect();
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

    /// Long contexts split across threads (flash-decoding) and merged, with a soft cap, a
    /// window and a context that does not fill its last block, against the plain reference.
    #[test]
    fn split_contexts_match_contiguous() {
        let (block, n_heads, hd) = (16, 3, 8);
        for (len, window, cap) in [(700usize, None, None), (1000, Some(600), Some(2.0)), (257, None, None)] {
            let n_blocks = len.div_ceil(block) + 2;
            let kv = KvShape { n_layers: 1, n_blocks, block_size: block, n_kv_heads: 1, head_dim: hd };
            // blocks in reverse order
            let table: Vec<u32> = (0..n_blocks as u32).rev().collect();
            let val = |p: usize, d: usize, salt: f32| ((p * 13 + d) as f32 * 0.29 + salt).sin() * 2.0;
            let (mut k_pool, mut v_pool) = (vec![0f32; kv.layer_len()], vec![0f32; kv.layer_len()]);
            for p in 0..len {
                let off = kv.offset(table[p / block] as usize, 0, p % block);
                for d in 0..hd {
                    k_pool[off + d] = val(p, d, 0.0);
                    v_pool[off + d] = val(p, d, 1.0);
                }
            }
            let q: Vec<f32> = (0..n_heads * hd).map(|i| (i as f32 * 0.53).cos()).collect();
            let positions = [len as u32 - 1];
            let layout = TokenLayout {
                positions: &positions,
                token_seq: &[0],
                block_table_data: &table,
                block_table_offsets: &[0, n_blocks as u32],
            };
            let params = AttnParams { n_heads, scale: 0.4, window, softcap: cap };
            let mut out = vec![0f32; q.len()];
            paged_attention(&q, f32_view(&k_pool, &v_pool), &kv, layout, params, &mut out);
            let first = window.map_or(0, |w| len - w);
            let keys: Vec<Vec<f32>> =
                (first..len).map(|p| (0..hd).map(|d| val(p, d, 0.0)).collect()).collect();
            let vals: Vec<Vec<f32>> =
                (first..len).map(|p| (0..hd).map(|d| val(p, d, 1.0)).collect()).collect();
            for h in 0..n_heads {
                let want = reference(&q[h * hd..(h + 1) * hd], &keys, &vals, 0.4, cap);
                for (a, b) in out[h * hd..(h + 1) * hd].iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "len={len} h={h}: {a} vs {b}");
                }
            }
        }
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
            paged_attention(&q, f32_view(&k_pool, &v_pool), &kv, layout, params, &mut out);
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
                    let want = reference(qh, &keys, &vals, 0.3, None);
                    let got = &out[(t * n_heads + h) * 8..][..8];
                    for (a, b) in got.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-5, "t={t} h={h} window={window:?}: {a} vs {b}");
                    }
                }
            }
        }
    }
}
