//! Choosing a token from a row of (processed) logits: argmax, the truncations min-p → top-k →
//! top-p (vLLM's order), the seeded draw, and the log-softmax helpers for logprobs.
//!
//! Sampling is specified in exact arithmetic so that the CUDA sampler (`kernels/sample.cu`)
//! picks the same token from the same logits, whatever the batch and however a device splits
//! the row. With `M` the largest logit (already divided by the temperature):
//! - a token is a candidate iff `d = M − l` (one f32 subtraction) is at most
//!   [`MAX_DISTANCE`] and at most `−ln(min_p)` (min-p: `p ≥ min_p · p_max`); NaN and −∞ never are;
//! - its weight is the integer [`weight`]`(d)` ≈ `2⁴⁰ · e^(−d)`, computed with a fixed sequence of
//!   correctly rounded f32 operations (the device performs the same ones, unfused), so weights
//!   are bit-identical on every backend and every sum of them is exact in `u64`;
//! - rank order is higher logit first, lower id on ties; top-k keeps the first `k` candidates;
//! - top-p keeps a candidate iff the weight ranked before it is below `top_p` (as the 32-bit
//!   fraction [`top_p_fraction`]) of the top-k set's total: exactly, with 128-bit products. The
//!   most likely token always survives;
//! - the draw: the 53 high bits `u` of the request's 64-bit random number give the target
//!   `⌊u · S / 2⁵³⌋` for the kept set's total `S`, and the token is the first kept one **in
//!   ascending id order** whose running weight exceeds it.
//!
//! Tokens with `e^(−d)` below `e^−27 ≈ 1.9·10⁻¹²` of the best are never drawn. Top-k uses a
//! partial selection (`select_nth_unstable`, O(n)); top-p sorts the candidates in growing chunks
//! (64, 256, 1024, …) and stops once the mass is reached, so neither fully sorts a 150k
//! vocabulary when the distribution is peaked.

use std::cmp::Ordering;

/// Index of the largest logit, the lowest such index on ties; NaNs are skipped, and 0 is returned
/// when nothing is larger than −∞.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = f32::NEG_INFINITY;
    let mut best_id = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > best {
            best = l;
            best_id = i;
        }
    }
    best_id as u32
}

/// The largest logit, ignoring NaNs (−∞ when there is none).
fn max_logit(logits: &[f32]) -> f32 {
    logits.iter().fold(f32::NEG_INFINITY, |m, &l| if l > m { l } else { m })
}

/// `ln Σ exp(logits)`, computed stably (max subtracted, f64 sum).
pub fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = max_logit(logits);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (l - max).exp() as f64).sum();
    max + sum.ln() as f32
}

/// Rank order: higher logit first, lower id first on ties.
fn by_rank(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Writes the `n` highest-ranked `(logit, id)` of `logits` into `out`, best first.
pub(crate) fn top_n(logits: &[f32], n: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    if n == 0 {
        return;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() {
            continue;
        }
        let c = (l, i as u32);
        if out.len() == n {
            if by_rank(&c, &out[n - 1]) != Ordering::Less {
                continue;
            }
            out.pop();
        }
        let at = out.partition_point(|o| by_rank(o, &c) == Ordering::Less);
        out.insert(at, c);
    }
}

/// Candidates lie at most this far below the best logit (in nats, after the temperature); the
/// device sampler bins the distances `0..=MAX_DISTANCE`.
pub const MAX_DISTANCE: f32 = 27.0;

/// `log₂ e` and the Taylor coefficients `(−ln 2)ᵏ / k!` of `2^(−f)`, as exact f32 bit patterns
/// (kernels/sample.cu uses the same bits).
const LOG2_E: u32 = 0x3fb8_aa3b;
const EXP2_NEG: [u32; 7] =
    [0x3f80_0000, 0xbf31_7218, 0x3e75_fdf0, 0xbd63_5847, 0x3c1d_955b, 0xbaae_c3ff, 0x3921_8489];

/// The integer weight `⌊2⁴⁰ · 2^(−d·log₂e)⌋` of a candidate `d` nats below the best,
/// `0 ≤ d ≤ MAX_DISTANCE` (relative error below 2·10⁻⁶, from rounding `y`). Every step is one correctly rounded f32
/// operation, in this order, so the device reproduces it bit for bit: `y = d·log₂e`,
/// `n = ⌊y + ½⌋`, `f = y − n ∈ [−½, ½]`, Horner's degree-6 polynomial for `2^(−f)`, times
/// `2^(40−n)` (exact), truncated to an integer. At most `2⁴⁰` (at `d = 0`) and at least 2.
pub fn weight(d: f32) -> u64 {
    debug_assert!((0.0..=MAX_DISTANCE).contains(&d));
    let y = d * f32::from_bits(LOG2_E);
    let n = (y + 0.5).floor();
    let f = y - n;
    let mut p = f32::from_bits(EXP2_NEG[6]);
    for &c in EXP2_NEG[..6].iter().rev() {
        p = p * f + f32::from_bits(c);
    }
    let scale = f32::from_bits(((127 + 40 - n as i32) as u32) << 23);
    (p * scale) as u64
}

/// `top_p` as the fraction `⌊top_p · 2³² + ½⌋` of the mass that top-p keeps, in `1..2³²`
/// (`0`: off, when `top_p ≥ 1`).
pub fn top_p_fraction(top_p: f32) -> u32 {
    if top_p >= 1.0 {
        return 0;
    }
    ((top_p as f64 * 4_294_967_296.0).round() as u64).clamp(1, u32::MAX as u64) as u32
}

/// The largest distance below the best logit that min-p keeps: `min(MAX_DISTANCE, −ln min_p)`.
pub fn min_p_distance(min_p: f32) -> f32 {
    if min_p > 0.0 {
        MAX_DISTANCE.min(-min_p.ln())
    } else {
        MAX_DISTANCE
    }
}

/// The running weight the draw must exceed: `⌊u · total / 2⁵³⌋` for the 53 high bits `u` of
/// `draw`; below `total` whenever `total > 0`.
pub fn draw_target(draw: u64, total: u64) -> u64 {
    (((draw >> 11) as u128 * total as u128) >> 53) as u64
}

/// The first `(id, weight)` whose running weight exceeds `target`, walking in the given order.
fn walk(cands: impl Iterator<Item = (u32, u64)>, target: u64) -> Option<u32> {
    let mut cum = 0u64;
    for (id, w) in cands {
        cum += w;
        if cum > target {
            return Some(id);
        }
    }
    None
}

/// Min-p, top-k and top-p truncation and the seeded draw, with a reusable candidate buffer.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    top_k: usize,
    /// [`top_p_fraction`] (0: off).
    top_p: u32,
    /// [`min_p_distance`].
    max_d: f32,
    /// `(logit, id)` candidates; capacity `n_vocab` when top-k or top-p is on, so pushes never
    /// allocate.
    cand: Vec<(f32, u32)>,
}

impl Selector {
    pub(crate) fn new(top_k: usize, top_p: f32, min_p: f32, n_vocab: usize) -> Self {
        let mut s =
            Selector { top_k, top_p: top_p_fraction(top_p), max_d: min_p_distance(min_p), cand: Vec::new() };
        if s.ranks() {
            s.cand.reserve_exact(n_vocab);
        }
        s
    }

    /// Whether the kept set depends on rank (top-k or top-p), not only on the distance.
    fn ranks(&self) -> bool {
        self.top_k > 0 || self.top_p > 0
    }

    /// The parameters as the device sampler reads them: `(top_k, top-p fraction, max distance)`.
    pub(crate) fn device_params(&self) -> (u32, u32, f32) {
        (self.top_k.min(u32::MAX as usize) as u32, self.top_p, self.max_d)
    }

    /// Samples a token from `logits` (already divided by the temperature) with the 64 random
    /// bits `draw`.
    pub(crate) fn sample(&mut self, logits: &[f32], draw: u64) -> u32 {
        let max = max_logit(logits);
        if !max.is_finite() {
            return argmax(logits); // everything masked, or +∞: nothing to weigh
        }
        let max_d = self.max_d;
        let picked = if self.ranks() {
            let kept = self.truncate(logits, max);
            let weighed = kept.iter().map(|&(l, id)| (id, weight(max - l)));
            let total = weighed.clone().map(|c| c.1).sum();
            walk(weighed, draw_target(draw, total))
        } else {
            // every candidate is kept: two passes over the row in id order, no buffer
            let weighed = logits.iter().enumerate().filter_map(|(i, &l)| {
                let d = max - l;
                (d <= max_d).then(|| (i as u32, weight(d)))
            });
            let total = weighed.clone().map(|c| c.1).sum();
            walk(weighed, draw_target(draw, total))
        };
        picked.expect("the best logit is a candidate of positive weight")
    }

    /// The tokens that survive min-p, top-k and top-p as `(logit, id)`, in ascending id order.
    /// `max` is the largest logit (finite).
    pub(crate) fn truncate(&mut self, logits: &[f32], max: f32) -> &[(f32, u32)] {
        self.cand.clear();
        for (i, &l) in logits.iter().enumerate() {
            // also drops −∞ (masked) and NaN
            if max - l <= self.max_d {
                self.cand.push((l, i as u32));
            }
        }
        let mut reordered = false;
        if self.top_k > 0 && self.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.top_k - 1, by_rank);
            self.cand.truncate(self.top_k);
            reordered = true;
        }
        if self.top_p > 0 {
            let keep = top_p_len(&mut self.cand, max, self.top_p);
            self.cand.truncate(keep);
            reordered = true;
        }
        if reordered {
            self.cand.sort_unstable_by_key(|c| c.1); // ids are distinct: the order is unique
        }
        &self.cand
    }
}

/// Reorders `cand` so that its first `n` entries are the top-p set in rank order, and returns `n`:
/// a candidate is kept iff `2³² · (weight ranked before it) < top_p · (total weight)`.
fn top_p_len(cand: &mut [(f32, u32)], max: f32, top_p: u32) -> usize {
    let w = |c: &(f32, u32)| weight(max - c.0);
    let total: u64 = cand.iter().map(w).sum();
    let target = top_p as u128 * total as u128;
    let mut before = 0u64;
    let mut done = 0;
    let mut chunk = 64;
    while done < cand.len() {
        // bring the next `chunk` best candidates to the front of the rest, in rank order
        let end = (done + chunk).min(cand.len());
        if end < cand.len() {
            cand[done..].select_nth_unstable_by(end - done - 1, by_rank);
        }
        cand[done..end].sort_unstable_by(by_rank);
        for (i, c) in cand[done..end].iter().enumerate() {
            if (before as u128) << 32 >= target {
                return done + i;
            }
            before += w(c);
        }
        done = end;
        chunk *= 4;
    }
    cand.len()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn softmax(logits: &[f32]) -> Vec<f64> {
        let lse = log_sum_exp(logits);
        logits.iter().map(|&l| ((l - lse) as f64).exp()).collect()
    }

    /// The top-p set by a full sort, the obvious way.
    fn top_p_reference(logits: &[f32], top_p: f32) -> Vec<u32> {
        let mut c: Vec<(f32, u32)> = logits.iter().enumerate().map(|(i, &l)| (l, i as u32)).collect();
        c.sort_by(by_rank);
        let p = softmax(logits);
        let mut cum = 0.0;
        let mut kept = Vec::new();
        for (_, id) in c {
            if cum >= top_p as f64 {
                break;
            }
            kept.push(id);
            cum += p[id as usize];
        }
        kept.sort();
        kept
    }

    #[test]
    fn argmax_ties_go_to_lowest_id_and_nan_is_skipped() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }

    #[test]
    fn top_n_is_sorted_with_ties_by_id() {
        let mut out = Vec::new();
        top_n(&[0.5, 2.0, 1.0, 2.0, -1.0], 3, &mut out);
        assert_eq!(out, vec![(2.0, 1), (2.0, 3), (1.0, 2)]);
        top_n(&[0.5, 2.0], 5, &mut out);
        assert_eq!(out, vec![(2.0, 1), (0.5, 0)]);
    }

    #[test]
    fn top_k_keeps_the_k_best() {
        let logits = [0.1, 5.0, 3.0, 4.0, 3.0, -2.0];
        let mut s = Selector::new(3, 1.0, 0.0, logits.len());
        let ids: Vec<u32> = s.truncate(&logits, 5.0).iter().map(|c| c.1).collect();
        assert_eq!(ids, vec![1, 2, 3]); // 3.0 tie: id 2 before id 4
    }

    #[test]
    fn min_p_threshold_relative_to_max() {
        // probabilities ∝ exp: relative to the max, token 1 is e^-1 ≈ 0.37, token 2 e^-3 ≈ 0.05
        let logits = [0.0, -1.0, -3.0, f32::NEG_INFINITY];
        let kept = |min_p: f32| {
            let mut s = Selector::new(0, 1.0, min_p, 4);
            s.truncate(&logits, 0.0).iter().map(|c| c.1).collect::<Vec<_>>()
        };
        assert_eq!(kept(0.01), vec![0, 1, 2]);
        assert_eq!(kept(0.1), vec![0, 1]);
        assert_eq!(kept(0.5), vec![0]);
        assert_eq!(kept(1.0), vec![0]);
    }

    #[test]
    fn top_p_hand_example() {
        // probabilities 0.5, 0.25, 0.125, 0.125
        let logits = [2f32.ln() + 1.0, 1.0, 0.5f32.ln() + 1.0, 0.5f32.ln() + 1.0];
        let max = logits[0];
        let kept = |p: f32| {
            let mut s = Selector::new(0, p, 0.0, 4);
            s.truncate(&logits, max).iter().map(|c| c.1).collect::<Vec<_>>()
        };
        assert_eq!(kept(0.4), vec![0]);
        assert_eq!(kept(0.6), vec![0, 1]);
        assert_eq!(kept(0.8), vec![0, 1, 2]);
        assert_eq!(kept(0.9), vec![0, 1, 2, 3]);
    }

    /// The 64-bit draw whose 53 high bits are `u · 2⁵³`.
    fn draw(u: f64) -> u64 {
        ((u * (1u64 << 53) as f64) as u64) << 11
    }

    #[test]
    fn sampling_walks_ids_in_order() {
        // equal weights: u in [0, 1/3) → 0, [1/3, 2/3) → 1, else 2
        let mut s = Selector::new(0, 1.0, 0.0, 3);
        assert_eq!(s.sample(&[0.0; 3], draw(0.0)), 0);
        assert_eq!(s.sample(&[0.0; 3], draw(0.34)), 1);
        assert_eq!(s.sample(&[0.0; 3], draw(0.999_999)), 2);
        assert_eq!(s.sample(&[0.0; 3], u64::MAX), 2);
        // masked tokens are never drawn
        assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], draw(0.999)), 1);
        let mut k = Selector::new(2, 1.0, 0.0, 3);
        assert_eq!(k.sample(&[0.0, 0.0, 0.0], draw(0.999)), 1);
        // nothing more than MAX_DISTANCE below the best is ever drawn
        assert_eq!(s.sample(&[0.0, -27.5, -26.0], u64::MAX), 2);
    }

    #[test]
    fn weight_is_two_to_the_forty_times_exp() {
        assert_eq!(weight(0.0), 1 << 40);
        let mut last = u64::MAX;
        for i in 0..=2700 {
            let d = i as f32 / 100.0;
            let w = weight(d);
            let exact = (-(d as f64)).exp() * (1u64 << 40) as f64;
            assert!((w as f64 - exact).abs() <= exact * 2e-6 + 1.0, "d {d}: {w} vs {exact}");
            assert!(w <= last, "weights fall with the distance");
            last = w;
        }
        assert!(weight(MAX_DISTANCE) >= 2);
    }

    #[test]
    fn top_p_fraction_and_min_p_distance() {
        assert_eq!(top_p_fraction(1.0), 0);
        assert_eq!(top_p_fraction(0.5), 1 << 31);
        assert_eq!(top_p_fraction(1e-12), 1);
        assert_eq!(min_p_distance(0.0), MAX_DISTANCE);
        assert_eq!(min_p_distance(1.0), 0.0);
        assert_eq!(min_p_distance(0.5), 2f32.ln());
    }

    proptest! {
        #[test]
        fn top_p_keeps_at_least_p_and_only_what_it_needs(
            logits in prop::collection::vec(-4.0f32..4.0, 1..600),
            top_p in 0.01f32..1.0,
        ) {
            let max = max_logit(&logits);
            let mut s = Selector::new(0, top_p, 0.0, logits.len());
            let kept: Vec<u32> = s.truncate(&logits, max).iter().map(|c| c.1).collect();
            let p = softmax(&logits);
            let mass: f64 = kept.iter().map(|&i| p[i as usize]).sum();
            prop_assert!(mass >= top_p as f64 - 1e-5, "kept {mass} < {top_p}");
            // minimal: without its least likely member the set falls short
            let least = kept.iter().map(|&i| p[i as usize]).fold(f64::INFINITY, f64::min);
            prop_assert!(mass - least < top_p as f64 + 1e-5);
            // a prefix in rank order: every kept token ranks above every dropped one
            let worst_kept = kept.iter().map(|&i| logits[i as usize]).fold(f32::INFINITY, f32::min);
            for (i, &l) in logits.iter().enumerate() {
                if !kept.contains(&(i as u32)) {
                    prop_assert!(l <= worst_kept);
                }
            }
            // agrees with the full sort except where rounding decides the boundary
            let reference = top_p_reference(&logits, top_p);
            prop_assert!((kept.len() as i64 - reference.len() as i64).abs() <= 1);
        }

        #[test]
        fn top_k_then_top_p_is_ascending_and_within_k(
            logits in prop::collection::vec(-4.0f32..4.0, 1..300),
            top_k in 1usize..50,
            top_p in 0.05f32..1.0,
        ) {
            let max = max_logit(&logits);
            let mut s = Selector::new(top_k, top_p, 0.0, logits.len());
            let kept = s.truncate(&logits, max).to_vec();
            prop_assert!(!kept.is_empty() && kept.len() <= top_k);
            prop_assert!(kept.windows(2).all(|w| w[0].1 < w[1].1));
            prop_assert!(kept.iter().any(|c| c.0 == max));
        }
    }
}
