//! Evaluation on a text cut into independent windows: perplexity (how well the model predicts
//! the text, `exp(mean negative log-likelihood)`) and KL divergence against a reference model
//! (how far a quantized model's next-token distributions are from the full-precision ones,
//! position by position, as llama.cpp's `llama-perplexity --kl-divergence` measures it).

use super::Engine;
use crate::sampling::logits::argmax;
use crate::{Error, Result};

/// The result of [`Engine::perplexity`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// Mean negative log-likelihood per predicted token (nats).
    pub nll: f64,
    /// `exp(nll)`.
    pub ppl: f64,
    /// Tokens predicted.
    pub predicted: usize,
    /// Windows the text was cut into.
    pub windows: usize,
}

impl Engine {
    /// Perplexity of `tokens`, cut into independent windows of `ctx` tokens (each window is a
    /// fresh sequence; every token of a window but its first is predicted).
    pub fn perplexity(&mut self, tokens: &[u32], ctx: usize) -> Result<Perplexity> {
        let n_vocab = self.model.config.vocab_size;
        let (mut nll, mut predicted, mut windows) = (0f64, 0usize, 0usize);
        for window in self.windows(tokens, ctx)? {
            let logits = self.logits_all(window)?;
            for (i, &next) in window.iter().enumerate().skip(1) {
                nll += neg_log_prob(&logits[(i - 1) * n_vocab..i * n_vocab], next);
            }
            predicted += window.len() - 1;
            windows += 1;
        }
        let nll = nll / predicted as f64;
        Ok(Perplexity { nll, ppl: nll.exp(), predicted, windows })
    }

    /// `tokens` cut into the independent windows of `ctx` tokens that [`Engine::perplexity`]
    /// and [`kl_divergence`] score; a last window of one token predicts nothing and is dropped.
    fn windows<'t>(&self, tokens: &'t [u32], ctx: usize) -> Result<impl Iterator<Item = &'t [u32]>> {
        if ctx < 2 || ctx > self.cfg.max_context() {
            return Err(Error::Invalid {
                what: "evaluation context",
                why: format!(
                    "{ctx} tokens; it must be between 2 and the engine's context {}",
                    self.cfg.max_context()
                ),
            });
        }
        if tokens.len() < 2 {
            return Err(Error::Invalid { what: "evaluation text", why: "fewer than 2 tokens".into() });
        }
        Ok(tokens.chunks(ctx).filter(|w| w.len() >= 2))
    }
}

/// The result of [`kl_divergence`]: how the model's next-token distributions differ from the
/// reference's over the same predicted positions. KL values are in nats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlDivergence {
    /// Mean of KL(P_ref || P_model) over the predicted positions.
    pub mean: f64,
    /// Standard error of `mean` (sample standard deviation / sqrt(positions)).
    pub mean_stderr: f64,
    /// Median of the per-position KL.
    pub median: f64,
    /// 99th percentile of the per-position KL.
    pub p99: f64,
    /// Largest per-position KL.
    pub max: f64,
    /// Fraction of positions where both models' most likely token is the same.
    pub same_top1: f64,
    /// The reference's perplexity on the predicted tokens.
    pub ref_ppl: f64,
    /// The model's perplexity on the same tokens.
    pub model_ppl: f64,
    /// Positions (tokens) predicted.
    pub predicted: usize,
    /// Windows the text was cut into.
    pub windows: usize,
}

/// KL(P_ref || P_model) at every predicted position of `tokens`, windowed as by
/// [`Engine::perplexity`] (the same windows are run through both engines, one window at a time,
/// so memory holds two windows' logits, never the whole text's). Both engines must share the
/// vocabulary. `progress(done, total)` is called after each window.
pub fn kl_divergence(
    reference: &mut Engine,
    model: &mut Engine,
    tokens: &[u32],
    ctx: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<KlDivergence> {
    let n_vocab = reference.model.config.vocab_size;
    if model.model.config.vocab_size != n_vocab {
        return Err(Error::Invalid {
            what: "KL divergence",
            why: format!(
                "the model's vocabulary has {} tokens and the reference's {n_vocab}; \
                 both must share one tokenizer",
                model.model.config.vocab_size
            ),
        });
    }
    let total = reference.windows(tokens, ctx)?.count();
    let mut acc = KlAccumulator::default();
    for (done, window) in model.windows(tokens, ctx)?.enumerate() {
        let ref_logits = reference.logits_all(window)?;
        let logits = model.logits_all(window)?;
        for (i, &next) in window.iter().enumerate().skip(1) {
            let rows = (i - 1) * n_vocab..i * n_vocab;
            acc.push(&ref_logits[rows.clone()], &logits[rows], next);
        }
        progress(done + 1, total);
    }
    Ok(acc.finish(total))
}

/// Per-position figures of [`kl_divergence`], summed as the windows go by.
#[derive(Default)]
struct KlAccumulator {
    kl: Vec<f64>,
    same_top1: usize,
    ref_nll: f64,
    model_nll: f64,
}

impl KlAccumulator {
    /// Adds one position: the two logits rows and the token that came next.
    fn push(&mut self, ref_row: &[f32], row: &[f32], next: u32) {
        let (log_p, log_q) = (log_softmax(ref_row), log_softmax(row));
        let kl: f64 = log_p.iter().zip(&log_q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum();
        // rounding can leave a sum of tiny terms a hair below zero; KL itself never is
        self.kl.push(kl.max(0.0));
        self.same_top1 += (argmax(ref_row) == argmax(row)) as usize;
        self.ref_nll -= log_p[next as usize];
        self.model_nll -= log_q[next as usize];
    }

    fn finish(mut self, windows: usize) -> KlDivergence {
        let n = self.kl.len() as f64;
        let mean = self.kl.iter().sum::<f64>() / n;
        let var = self.kl.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        self.kl.sort_by(f64::total_cmp);
        KlDivergence {
            mean,
            mean_stderr: (var / n).sqrt(),
            median: percentile(&self.kl, 0.5),
            p99: percentile(&self.kl, 0.99),
            max: self.kl[self.kl.len() - 1],
            same_top1: self.same_top1 as f64 / n,
            ref_ppl: (self.ref_nll / n).exp(),
            model_ppl: (self.model_nll / n).exp(),
            predicted: self.kl.len(),
            windows,
        }
    }
}

/// `log softmax(row)`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let log_sum = log_sum_exp(row);
    row.iter().map(|&v| v as f64 - log_sum).collect()
}

/// `ln Σ exp(row)` in f64 (max subtracted); the sampler's `logits::log_sum_exp` is its f32 twin,
/// too coarse for nats summed over a text.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// The `q` quantile of ascending `sorted` (not empty), interpolating linearly between ranks.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let at = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo as f64)
}

/// `-log softmax(row)[target]`, in f64.
fn neg_log_prob(row: &[f32], target: u32) -> f64 {
    log_sum_exp(row) - row[target as usize] as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::quant::WeightFormat;

    #[test]
    fn uniform_row_costs_log_n() {
        let row = [0.5f32; 8];
        assert!((neg_log_prob(&row, 3) - 8f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn kl_of_two_known_distributions() {
        // P = (1/2, 1/4, 1/4), Q = (1/4, 1/2, 1/4): KL(P || Q) = ln2/2 - ln2/4 = ln2/4;
        // logits are the log-probabilities plus any constant, which softmax removes
        let p = [0.5f32.ln() + 3.0, 0.25f32.ln() + 3.0, 0.25f32.ln() + 3.0];
        let q = [0.25f32.ln(), 0.5f32.ln(), 0.25f32.ln()];
        let mut acc = KlAccumulator::default();
        acc.push(&p, &q, 2);
        acc.push(&p, &p, 0);
        let r = acc.finish(1);
        assert!((r.max - 2f64.ln() / 4.0).abs() < 1e-7, "{r:?}");
        assert!((r.mean - 2f64.ln() / 8.0).abs() < 1e-7, "{r:?}");
        assert_eq!(r.same_top1, 0.5);
        // the reference predicts 1/4 then 1/2, the model 1/4 then 1/2 as well
        assert!((r.ref_ppl - 8f64.sqrt()).abs() < 1e-6, "{r:?}");
        assert!((r.model_ppl - 8f64.sqrt()).abs() < 1e-6, "{r:?}");
        assert_eq!(r.predicted, 2);
    }

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let sorted = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&sorted, 0.5), 2.0);
        assert_eq!(percentile(&sorted, 0.99), 3.96);
        assert_eq!(percentile(&[0.0, 1.0], 0.5), 0.5);
    }

    fn tiny(weight_format: WeightFormat) -> Engine {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-qwen2");
        let cfg = EngineConfig { threads: 1, max_seqs: 1, weight_format, ..EngineConfig::default() };
        Engine::load(&dir, cfg).unwrap()
    }

    #[test]
    fn kl_of_an_engine_against_itself_is_zero_and_against_f16_small() {
        let mut f32_ref = tiny(WeightFormat::F32);
        let tokens: Vec<u32> = (0..100).map(|i| (i * 37 % 500) as u32).collect();
        let mut windows_seen = vec![];
        let same = kl_divergence(&mut f32_ref, &mut tiny(WeightFormat::F32), &tokens, 40, &mut |d, n| {
            windows_seen.push((d, n))
        })
        .unwrap();
        assert_eq!(windows_seen, [(1, 3), (2, 3), (3, 3)]);
        assert_eq!((same.mean, same.max, same.same_top1), (0.0, 0.0, 1.0));
        assert_eq!((same.predicted, same.windows), (97, 3));
        let ppl = f32_ref.perplexity(&tokens, 40).unwrap();
        assert!((same.ref_ppl - ppl.ppl).abs() < 1e-9 * ppl.ppl, "{same:?} {ppl:?}");

        let mut f16 = tiny(WeightFormat::F16);
        let r = kl_divergence(&mut f32_ref, &mut f16, &tokens, 40, &mut |_, _| {}).unwrap();
        assert!(r.mean > 0.0 && r.max < 0.01 && r.median <= r.p99 && r.p99 <= r.max, "{r:?}");
        let f16_ppl = f16.perplexity(&tokens, 40).unwrap().ppl;
        assert!((r.model_ppl - f16_ppl).abs() < 1e-9 * f16_ppl, "{r:?} {f16_ppl}");
    }
}
