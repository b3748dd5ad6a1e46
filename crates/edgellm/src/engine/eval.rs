//! Perplexity: how well the model predicts a text, `exp(mean negative log-likelihood)`.

use super::Engine;
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
        if ctx < 2 || ctx > self.cfg.max_context() {
            return Err(Error::Invalid {
                what: "perplexity context",
                why: format!(
                    "{ctx} tokens; it must be between 2 and the engine's context {}",
                    self.cfg.max_context()
                ),
            });
        }
        if tokens.len() < 2 {
            return Err(Error::Invalid { what: "perplexity text", why: "fewer than 2 tokens".into() });
        }
        let n_vocab = self.model.config.vocab_size;
        let (mut nll, mut predicted, mut windows) = (0f64, 0usize, 0usize);
        for window in tokens.chunks(ctx).filter(|w| w.len() >= 2) {
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
}

/// `-log softmax(row)[target]`, in f64.
fn neg_log_prob(row: &[f32], target: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    max + sum.ln() - row[target as usize] as f64
}

#[cfg(test)]
mod tests {
    use super::neg_log_prob;

    #[test]
    fn uniform_row_costs_log_n() {
        let row = [0.5f32; 8];
        assert!((neg_log_prob(&row, 3) - 8f64.ln()).abs() < 1e-12);
    }
}
