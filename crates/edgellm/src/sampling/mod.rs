//! Sampling: from one row of logits to the next token, and deciding when a sequence ends.
//!
//! In: a request's [`SamplingParams`], the model's vocabulary size and EOS ids, then at every step
//! the logits row of the sequence and its [`TokenHistory`]. Out: a [`SampledToken`] (id, and the
//! logprobs when asked for), a [`FinishReason`] once a stop token or the token limit is reached,
//! and, through [`StopMatcher`], the streamed text cut at stop strings.
//!
//! One step of [`Sampler::sample`], in order (vLLM's):
//! 1. raw logprobs, if requested: log-softmax of the logits as the model produced them;
//! 2. logit bias, then repetition, presence and frequency penalties (`penalties`);
//! 3. greedy (temperature below `1e-5`): the argmax, lowest id on ties; otherwise
//! 4. logits / temperature → min-p → top-k → top-p → one draw in exact integer arithmetic
//!    ([`logits`]) with the 64 random bits of the request's counter-based RNG ([`rng`]): draw `i`
//!    for output token `i`, so a seed reproduces a generation exactly — on the CPU, and on a GPU
//!    that samples the same logits on the device ([`Sampler::device_params`]).
//!
//! A sampler allocates its scratch buffers (`n_vocab` entries for each feature in use) once, in
//! [`Sampler::new`]; [`Sampler::sample`] then allocates nothing unless logprobs are requested.

pub mod logits;
mod penalties;
pub mod rng;
mod stop;

pub use crate::config::SamplingParams;
use crate::{Error, Result};
use logits::{argmax, log_sum_exp, top_n, Selector};
use penalties::{LogitBias, Penalties};
use rng::Rng;
pub use stop::{StopMatcher, StopStatus};

/// The tokens a sequence has seen: the prompt and what was generated after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenHistory<'a> {
    /// Prompt tokens (the repetition penalty sees them; presence and frequency do not).
    pub prompt: &'a [u32],
    /// Generated tokens, oldest first.
    pub generated: &'a [u32],
}

impl<'a> TokenHistory<'a> {
    /// A history from its two parts.
    pub fn new(prompt: &'a [u32], generated: &'a [u32]) -> Self {
        TokenHistory { prompt, generated }
    }

    /// A history from one sequence whose first `n_prompt` tokens are the prompt.
    pub fn split(tokens: &'a [u32], n_prompt: usize) -> Self {
        let (prompt, generated) = tokens.split_at(n_prompt.min(tokens.len()));
        TokenHistory { prompt, generated }
    }
}

/// A token and its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenLogprob {
    /// Token id.
    pub id: u32,
    /// Natural-log probability under the raw model distribution.
    pub logprob: f32,
}

/// The result of one sampling step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    /// The chosen token.
    pub id: u32,
    /// Its log-probability under the raw model distribution (log-softmax of the logits before bias,
    /// penalties, temperature and truncation); `Some` only when `logprobs` was requested.
    pub logprob: Option<f32>,
    /// The `logprobs` most likely tokens of that same raw distribution, best first (ties: lower
    /// id); `Some` only when requested.
    pub top_logprobs: Option<Vec<TokenLogprob>>,
}

/// Why a sequence ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string (`"stop"`).
    Stop,
    /// `max_tokens` reached, or the context is full (`"length"`).
    Length,
    /// The caller stopped the sequence (`"cancelled"`).
    Cancelled,
    /// The engine could not go on (no KV blocks left) (`"error"`).
    Error,
}

impl FinishReason {
    /// The name clients see (OpenAI's `finish_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
            FinishReason::Error => "error",
        }
    }
}

/// One request's sampling as a device reads it: what [`Sampler::sample`] does without bias,
/// penalties or logprobs, reduced to numbers (see [`logits`] for their meaning).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceParams {
    /// Argmax of the raw logits (the other fields are then unused).
    pub greedy: bool,
    /// The logits are divided by it.
    pub temperature: f32,
    /// Top-k (0: off).
    pub top_k: u32,
    /// [`logits::top_p_fraction`] (0: off).
    pub top_p: u32,
    /// [`logits::min_p_distance`].
    pub max_distance: f32,
    /// The RNG's seed.
    pub seed: u64,
    /// The index of this token's draw.
    pub counter: u64,
}

/// One request's sampler: the processors its [`SamplingParams`] turn on, their scratch buffers and
/// its RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    n_vocab: usize,
    greedy: bool,
    temperature: f32,
    bias: LogitBias,
    penalties: Option<Penalties>,
    selector: Selector,
    rng: Rng,
    /// Top-n raw logprobs to return, if requested.
    logprobs: Option<usize>,
    /// Copy of the raw logits (`n_vocab`) when logprobs are requested.
    raw: Vec<f32>,
    /// Top-n scratch (`logprobs + 1`).
    top: Vec<(f32, u32)>,
    eos_token_ids: Vec<u32>,
    stop_token_ids: Vec<u32>,
    ignore_eos: bool,
    max_tokens: Option<usize>,
}

impl Sampler {
    /// Validates `params` against a vocabulary of `n_vocab` tokens and allocates every buffer the
    /// request needs. An unseeded request draws its seed from the OS.
    pub fn new(params: &SamplingParams, n_vocab: usize) -> Result<Sampler> {
        params.validate()?;
        if n_vocab == 0 {
            return Err(Error::Invalid { what: "n_vocab", why: "the vocabulary is empty".into() });
        }
        if let Some(id) = params.logit_bias.keys().find(|&&id| id as usize >= n_vocab) {
            return Err(Error::Invalid {
                what: "logit_bias",
                why: format!("token {id} is outside the vocabulary of {n_vocab} tokens"),
            });
        }
        let greedy = params.is_greedy();
        let selector = if greedy {
            Selector::new(0, 1.0, 0.0, 0) // unused
        } else {
            Selector::new(params.top_k, params.top_p, params.min_p, n_vocab)
        };
        Ok(Sampler {
            n_vocab,
            greedy,
            temperature: params.temperature,
            bias: LogitBias::new(params.logit_bias.iter().map(|(&id, &b)| (id, b)).collect()),
            penalties: Penalties::new(
                params.repetition_penalty,
                params.presence_penalty,
                params.frequency_penalty,
                n_vocab,
            ),
            selector,
            rng: Rng::new(params.seed.unwrap_or_else(rand::random)),
            logprobs: params.logprobs,
            raw: if params.logprobs.is_some() { vec![0.0; n_vocab] } else { Vec::new() },
            top: Vec::with_capacity(params.logprobs.map_or(0, |n| n + 1)),
            eos_token_ids: Vec::new(),
            stop_token_ids: params.stop_token_ids.clone(),
            ignore_eos: params.ignore_eos,
            max_tokens: params.max_tokens,
        })
    }

    /// The model's EOS ids, which end generation unless `ignore_eos` is set.
    pub fn with_eos_token_ids(mut self, ids: &[u32]) -> Self {
        self.eos_token_ids = ids.to_vec();
        self
    }

    /// The RNG seed (the request's, or the one drawn for it), to report or replay a generation.
    pub fn seed(&self) -> u64 {
        self.rng.seed()
    }

    /// Chooses the next token. `logits` (`n_vocab` entries) is used as scratch: on return it holds
    /// the processed logits (biased, penalized, divided by the temperature).
    ///
    /// # Panics
    /// If `logits.len()` is not the `n_vocab` given to [`Sampler::new`].
    pub fn sample(&mut self, logits: &mut [f32], history: TokenHistory<'_>) -> SampledToken {
        assert_eq!(logits.len(), self.n_vocab, "logits row length differs from n_vocab");
        if self.logprobs.is_some() {
            self.raw.copy_from_slice(logits);
        }
        self.bias.apply(logits);
        if let Some(penalties) = &mut self.penalties {
            penalties.apply(logits, history);
        }
        // one draw per token, greedy or not, so that draw i always belongs to token i
        let draw = self.rng.next_u64();
        let id = if self.greedy {
            argmax(logits)
        } else {
            if self.temperature != 1.0 {
                let t = self.temperature;
                logits.iter_mut().for_each(|l| *l /= t);
            }
            self.selector.sample(logits, draw)
        };
        let Some(n) = self.logprobs else {
            return SampledToken { id, logprob: None, top_logprobs: None };
        };
        let lse = log_sum_exp(&self.raw);
        top_n(&self.raw, n, &mut self.top);
        SampledToken {
            id,
            logprob: Some(self.raw[id as usize] - lse),
            top_logprobs: Some(
                self.top.iter().map(|&(l, id)| TokenLogprob { id, logprob: l - lse }).collect(),
            ),
        }
    }

    /// Whether [`Sampler::sample`] reduces to the argmax of the raw logits (greedy, no bias,
    /// no penalties, no logprobs), so a device that computed the argmax can choose the token.
    pub fn is_plain_argmax(&self) -> bool {
        self.greedy && self.bias.is_empty() && self.penalties.is_none() && self.logprobs.is_none()
    }

    /// The request as a device sampler reads it (kernels/sample.cu), or `None` when sampling
    /// needs the host: logit bias, penalties or logprobs. The counter is the index of the next
    /// draw, i.e. of the token being generated, so the device draws what [`Sampler::sample`]
    /// would.
    pub fn device_params(&self) -> Option<DeviceParams> {
        if !(self.bias.is_empty() && self.penalties.is_none() && self.logprobs.is_none()) {
            return None;
        }
        let (top_k, top_p, max_distance) = self.selector.device_params();
        Some(DeviceParams {
            greedy: self.greedy,
            temperature: self.temperature,
            top_k,
            top_p,
            max_distance,
            seed: self.rng.seed(),
            counter: self.rng.counter(),
        })
    }

    /// Takes the token a device chose (only when [`Sampler::device_params`] is `Some`, or for a
    /// device argmax when [`Sampler::is_plain_argmax`]), drawing from the RNG as
    /// [`Sampler::sample`] does so later draws stay aligned with their tokens.
    pub fn take_device_token(&mut self, id: u32) -> SampledToken {
        debug_assert!(self.device_params().is_some());
        let _ = self.rng.next_u64();
        SampledToken { id, logprob: None, top_logprobs: None }
    }

    /// Whether `id` ends generation: a `stop_token_ids` entry, or an EOS id unless `ignore_eos`.
    pub fn is_stop_token(&self, id: u32) -> bool {
        self.stop_token_ids.contains(&id) || (!self.ignore_eos && self.eos_token_ids.contains(&id))
    }

    /// Whether generation ends after token `id`, the `n_generated`-th generated token. Stop strings
    /// are the [`StopMatcher`]'s business.
    pub fn finish_reason(&self, id: u32, n_generated: usize) -> Option<FinishReason> {
        if self.is_stop_token(id) {
            Some(FinishReason::Stop)
        } else if self.max_tokens.is_some_and(|max| n_generated >= max) {
            Some(FinishReason::Length)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests;
