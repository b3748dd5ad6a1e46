//! Logits processors that depend on the request, not on the distribution: logit bias and the
//! repetition, presence and frequency penalties. They edit a logits row in place, in this order
//! (vLLM's): bias, repetition, presence/frequency.
//!
//! - repetition (HF `RepetitionPenaltyLogitsProcessor`): every distinct token of prompt + output
//!   has its logit divided by the penalty when positive, multiplied when negative — once per
//!   distinct token, however often it occurs.
//! - presence and frequency (OpenAI): over *generated* tokens only,
//!   `logit -= frequency · count + presence · (count > 0)`.
//!
//! Scratch buffers of `n_vocab` entries are allocated once, at construction, and left zeroed after
//! each call, so a call allocates nothing.

use super::TokenHistory;

/// Logit bias as sorted `(token, bias)` pairs.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogitBias {
    entries: Vec<(u32, f32)>,
}

impl LogitBias {
    pub(crate) fn new(entries: Vec<(u32, f32)>) -> Self {
        LogitBias { entries }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn apply(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.entries {
            logits[id as usize] += bias;
        }
    }
}

/// Repetition, presence and frequency penalties with their scratch buffers.
#[derive(Debug, Clone)]
pub(crate) struct Penalties {
    repetition: f32,
    presence: f32,
    frequency: f32,
    /// Per token: already penalized in this call (repetition). All false between calls.
    seen: Vec<bool>,
    /// Per token: occurrences among the generated tokens (presence/frequency). All 0 between calls.
    counts: Vec<u32>,
}

impl Penalties {
    /// `None` when every penalty is off.
    pub(crate) fn new(repetition: f32, presence: f32, frequency: f32, n_vocab: usize) -> Option<Self> {
        let use_repetition = repetition != 1.0;
        let use_counts = presence != 0.0 || frequency != 0.0;
        if !use_repetition && !use_counts {
            return None;
        }
        Some(Penalties {
            repetition,
            presence,
            frequency,
            seen: if use_repetition { vec![false; n_vocab] } else { Vec::new() },
            counts: if use_counts { vec![0; n_vocab] } else { Vec::new() },
        })
    }

    /// Applies the penalties to `logits` (ids outside the vocabulary in `history` are ignored).
    pub(crate) fn apply(&mut self, logits: &mut [f32], history: TokenHistory<'_>) {
        let all = || history.prompt.iter().chain(history.generated).map(|&t| t as usize);
        if !self.seen.is_empty() {
            let r = self.repetition;
            for t in all() {
                if let Some(seen) = self.seen.get_mut(t) {
                    if !*seen {
                        *seen = true;
                        let l = &mut logits[t];
                        *l = if *l < 0.0 { *l * r } else { *l / r };
                    }
                }
            }
            for t in all() {
                if let Some(seen) = self.seen.get_mut(t) {
                    *seen = false;
                }
            }
        }
        if !self.counts.is_empty() {
            for &t in history.generated {
                if let Some(c) = self.counts.get_mut(t as usize) {
                    *c += 1;
                }
            }
            // the second pass applies each distinct token once and zeroes its count
            for &t in history.generated {
                if let Some(c) = self.counts.get_mut(t as usize) {
                    if *c > 0 {
                        logits[t as usize] -= self.frequency * *c as f32 + self.presence;
                        *c = 0;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_divides_positive_multiplies_negative_once_per_token() {
        let mut p = Penalties::new(2.0, 0.0, 0.0, 6).unwrap();
        let mut logits = [4.0, -1.0, 3.0, 0.0, 1.0, -2.0];
        // token 0 three times, 1 in prompt, 3 (logit 0), 2 only generated
        let history = TokenHistory::new(&[0, 1, 0, 3], &[0, 2]);
        p.apply(&mut logits, history);
        assert_eq!(logits, [2.0, -2.0, 1.5, 0.0, 1.0, -2.0]);
        // scratch is clean: a second call penalizes exactly once again
        p.apply(&mut logits, history);
        assert_eq!(logits, [1.0, -4.0, 0.75, 0.0, 1.0, -2.0]);
    }

    #[test]
    fn presence_and_frequency_over_generated_only() {
        let mut p = Penalties::new(1.0, 0.5, 0.25, 5).unwrap();
        let mut logits = [1.0; 5];
        // prompt tokens 3 and 4 are not penalized; 0 generated 3 times, 1 once
        p.apply(&mut logits, TokenHistory::new(&[3, 4, 3], &[0, 1, 0, 0]));
        // 0: 1 − 0.25·3 − 0.5 = −0.25; 1: 1 − 0.25 − 0.5 = 0.25
        assert_eq!(logits, [-0.25, 0.25, 1.0, 1.0, 1.0]);
        p.apply(&mut logits, TokenHistory::new(&[], &[2]));
        assert_eq!(logits, [-0.25, 0.25, 0.25, 1.0, 1.0]);
    }

    #[test]
    fn off_is_none_and_bias_adds() {
        assert!(Penalties::new(1.0, 0.0, 0.0, 10).is_none());
        let mut logits = [0.0, 1.0, 2.0];
        LogitBias::new(vec![(0, 5.0), (2, -100.0)]).apply(&mut logits);
        assert_eq!(logits, [5.0, 1.0, -98.0]);
    }
}
