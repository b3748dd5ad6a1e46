//! Choosing a token from a row of (processed) logits: argmax, the truncations min-p → top-k →
//! top-p (vLLM's order), inverse-CDF sampling, and the log-softmax helpers for logprobs.
//!
//! The kept set is defined by rank: tokens ordered by logit, descending, ties broken by lower id.
//! - min-p keeps tokens with `p ≥ min_p · p_max`, i.e. `logit − max ≥ ln(min_p)`;
//! - top-k keeps the first `k` of those;
//! - top-p keeps the shortest prefix of those whose probability (renormalized over the set that
//!   min-p and top-k left) reaches `top_p`: a token is kept iff the mass ranked before it is below
//!   `top_p` (HF's and vLLM's rule). The most likely token always survives.
//!
//! Sampling then walks the kept tokens **in ascending id order** with weights `exp(logit − max)`
//! (f32 `exp`, f64 running sum) and returns the first token whose running sum exceeds `u · total`
//! for a uniform `u ∈ [0, 1)`. The order is fixed by ids, not by how the CPU happened to partition
//! the candidates, so the same `(logits, u)` picks the same token on any backend.
//!
//! Top-k uses a partial selection (`select_nth_unstable`, O(n)); top-p sorts the candidates in
//! growing chunks (64, 256, 1024, …) and stops once the mass is reached, so neither fully sorts a
//! 150k vocabulary when the distribution is peaked.

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

/// Draws from the distribution `softmax(w)` over `(logit, id)` pairs given in walking order;
/// `None` when every weight is zero.
fn inverse_cdf<I>(cands: I, max: f32, u: f64) -> Option<u32>
where
    I: Iterator<Item = (f32, u32)> + Clone,
{
    let weight = |l: f32| (l - max).exp() as f64;
    let total: f64 = cands.clone().map(|(l, _)| weight(l)).sum();
    let target = u * total;
    let mut cum = 0.0;
    let mut last = None;
    for (l, id) in cands {
        let w = weight(l);
        if w > 0.0 {
            cum += w;
            last = Some(id);
            if cum > target {
                return last;
            }
        }
    }
    last // only reached through rounding when u is just below 1
}

/// Min-p, top-k and top-p truncation and sampling, with a reusable candidate buffer.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    top_k: usize,
    top_p: f32,
    min_p: f32,
    /// `(logit, id)` candidates; capacity `n_vocab` when a filter is on, so pushes never allocate.
    cand: Vec<(f32, u32)>,
}

impl Selector {
    pub(crate) fn new(top_k: usize, top_p: f32, min_p: f32, n_vocab: usize) -> Self {
        let mut s = Selector { top_k, top_p, min_p, cand: Vec::new() };
        if s.filters() {
            s.cand.reserve_exact(n_vocab);
        }
        s
    }

    fn filters(&self) -> bool {
        self.top_k > 0 || self.top_p < 1.0 || self.min_p > 0.0
    }

    /// Samples a token from `logits` (already divided by the temperature) with the uniform `u`.
    pub(crate) fn sample(&mut self, logits: &[f32], u: f64) -> u32 {
        let max = max_logit(logits);
        if max == f32::NEG_INFINITY {
            return argmax(logits); // everything masked: nothing to sample from
        }
        let picked = if self.filters() {
            let kept = self.truncate(logits, max);
            inverse_cdf(kept.iter().copied(), max, u)
        } else {
            let all = logits.iter().enumerate().map(|(i, &l)| (l, i as u32));
            inverse_cdf(all.filter(|(l, _)| *l > f32::NEG_INFINITY), max, u)
        };
        picked.unwrap_or_else(|| argmax(logits))
    }

    /// The tokens that survive min-p, top-k and top-p as `(logit, id)`, in ascending id order.
    /// `max` is the largest logit.
    pub(crate) fn truncate(&mut self, logits: &[f32], max: f32) -> &[(f32, u32)] {
        let ln_min_p = if self.min_p > 0.0 { self.min_p.ln() } else { f32::NEG_INFINITY };
        self.cand.clear();
        for (i, &l) in logits.iter().enumerate() {
            // also drops −∞ (masked) and NaN
            if l > f32::NEG_INFINITY && l - max >= ln_min_p {
                self.cand.push((l, i as u32));
            }
        }
        let mut reordered = false;
        if self.top_k > 0 && self.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.top_k - 1, by_rank);
            self.cand.truncate(self.top_k);
            reordered = true;
        }
        if self.top_p < 1.0 {
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

/// Reorders `cand` so that its first `n` entries are the top-p set in rank order, and returns `n`.
fn top_p_len(cand: &mut [(f32, u32)], max: f32, top_p: f32) -> usize {
    let weight = |c: &(f32, u32)| (c.0 - max).exp() as f64;
    let total: f64 = cand.iter().map(weight).sum();
    let target = top_p as f64 * total;
    let mut cum = 0.0;
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
            cum += weight(c);
            if cum >= target {
                return done + i + 1;
            }
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

    #[test]
    fn sampling_walks_ids_in_order() {
        // equal weights: u in [0, 1/3) → 0, [1/3, 2/3) → 1, else 2
        let mut s = Selector::new(0, 1.0, 0.0, 3);
        assert_eq!(s.sample(&[0.0; 3], 0.0), 0);
        assert_eq!(s.sample(&[0.0; 3], 0.34), 1);
        assert_eq!(s.sample(&[0.0; 3], 0.999_999), 2);
        // masked tokens are never drawn
        assert_eq!(s.sample(&[f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY], 0.999), 1);
        let mut k = Selector::new(2, 1.0, 0.0, 3);
        assert_eq!(k.sample(&[0.0, 0.0, 0.0], 0.999), 1);
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
