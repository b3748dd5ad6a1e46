//! A generation in progress: tokens, KV blocks, sampler, streamed-text state, and the events it
//! reports.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::Engine;
use crate::config::SamplingParams;
use crate::kv::BlockTable;
use crate::sampling::{FinishReason, SampledToken, Sampler, StopMatcher, StopStatus, TokenLogprob};
use crate::tokenizer::{ChatMessage, DecodeStream, Tokenizer};
use crate::{Error, Result};

/// What to generate from.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text, tokenized as is (BOS added when the model wants one).
    Text(String),
    /// Chat messages, rendered with the model's chat template and a generation prompt.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as given.
    Ids(Vec<u32>),
}

/// One generated token, as streamed.
#[derive(Debug, Clone)]
pub struct TokenEvent<'a> {
    /// The token id.
    pub id: u32,
    /// Text this token completes that is safe to show (may be empty: a partial character, a
    /// possible stop-string prefix, a special token).
    pub text: &'a str,
    /// Log-probability of the token under the model, when asked for.
    pub logprob: Option<f32>,
    /// The most likely alternatives, when asked for.
    pub top_logprobs: Option<&'a [TokenLogprob]>,
}

/// Token counts of a finished sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Of those, how many had their KV reused instead of computed.
    pub cached_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// Where a sequence's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// From the start of generation to the first sampled token (prefill).
    pub prefill: Duration,
    /// From the first to the last sampled token.
    pub decode: Duration,
}

impl Timings {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self, tokens: usize) -> f64 {
        tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Tokens per second after the first (each step produces one token).
    pub fn decode_tok_s(&self, completion_tokens: usize) -> f64 {
        completion_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// The final record of a sequence.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
    /// Timings.
    pub timings: Timings,
    /// The whole generated text (stop string and what follows cut off).
    pub text: String,
}

/// What [`Engine::generate`] reports.
#[derive(Debug)]
pub enum Event<'a> {
    /// A token was generated.
    Token(TokenEvent<'a>),
    /// The sequence finished.
    Done(&'a Completion),
}

/// A generation request in progress. See the module docs of [`crate::engine`].
pub struct Sequence {
    /// Every token of the sequence: prompt, then generated.
    pub tokens: Vec<u32>,
    pub(super) n_prompt: usize,
    /// Leading tokens whose KV is in the cache.
    pub(super) n_cached: usize,
    /// Prompt tokens whose KV came from the prefix cache (set when the sequence first runs).
    pub(super) n_reused: Option<usize>,
    pub(super) table: BlockTable,
    /// Chain hashes of the full blocks of `tokens`, computed as needed (see [`crate::kv::prefix`]).
    pub(super) block_hashes: Vec<u64>,
    /// Leading blocks of `table` already offered to the prefix cache.
    pub(super) n_registered: usize,
    /// Whether this run of the sequence has looked up the prefix cache.
    pub(super) prefix_attached: bool,
    /// Leading tokens whose blocks are pinned in the cache once computed.
    pub(super) pin_tokens: usize,
    pub(super) sampler: Sampler,
    params: SamplingParams,
    detok: DecodeStream,
    stop: StopMatcher,
    delta: String,
    text: String,
    generated: usize,
    pub(super) finish: Option<FinishReason>,
    started: Option<Instant>,
    first_token: Option<Instant>,
    completion: Option<Completion>,
    /// The token sampled by the last forward step, waiting for [`Sequence::accept`].
    last: Option<SampledToken>,
}

impl Sequence {
    /// A sequence over `ids` with `params` (validated).
    pub(super) fn from_ids(engine: &Engine, ids: Vec<u32>, params: SamplingParams) -> Result<Sequence> {
        params.validate()?;
        let max = engine.cfg.max_context();
        let max_tokens = params.max_tokens.unwrap_or(0);
        if ids.is_empty() {
            return Err(Error::Invalid { what: "prompt", why: "the prompt has no tokens".into() });
        }
        if ids.len() + max_tokens.min(1) > max {
            return Err(Error::Invalid {
                what: "prompt",
                why: format!("{} prompt tokens exceed the context of {max} tokens", ids.len()),
            });
        }
        let n_vocab = engine.model.config.vocab_size;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= n_vocab) {
            return Err(Error::Invalid {
                what: "prompt",
                why: format!("token id {bad} outside the vocabulary of {n_vocab}"),
            });
        }
        let sampler = Sampler::new(&params, n_vocab)?.with_eos_token_ids(engine.tokenizer.eos_ids());
        let blocks = max.div_ceil(engine.cfg.kv_block_size);
        let mut tokens = Vec::with_capacity(max);
        tokens.extend_from_slice(&ids);
        Ok(Sequence {
            n_prompt: ids.len(),
            tokens,
            n_cached: 0,
            n_reused: None,
            table: BlockTable::with_capacity(blocks),
            block_hashes: Vec::with_capacity(blocks),
            n_registered: 0,
            prefix_attached: false,
            pin_tokens: 0,
            sampler,
            stop: StopMatcher::new(&params.stop),
            params,
            detok: DecodeStream::new(true),
            delta: String::with_capacity(256),
            text: String::new(),
            generated: 0,
            finish: None,
            started: None,
            first_token: None,
            completion: None,
            last: None,
        })
    }

    /// Prompt tokens.
    pub fn n_prompt(&self) -> usize {
        self.n_prompt
    }

    /// Generated token ids.
    pub fn generated_ids(&self) -> &[u32] {
        &self.tokens[self.n_prompt..]
    }

    /// Whether the sequence has finished (its completion has been reported).
    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Tokens whose KV is in the cache.
    pub fn n_cached(&self) -> usize {
        self.n_cached
    }

    /// Prompt tokens whose KV came from the prefix cache (0 before the sequence first runs).
    pub fn n_reused(&self) -> usize {
        self.n_reused.unwrap_or(0)
    }

    /// All tokens so far, prompt and generated.
    pub fn n_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// KV blocks the sequence holds.
    pub fn n_blocks(&self) -> usize {
        self.table.blocks.len()
    }

    /// Tokens the next step would compute for this sequence, given `budget` tokens left.
    pub(super) fn step_tokens(&self, budget: usize) -> usize {
        if self.finish.is_some() {
            return 0;
        }
        (self.tokens.len() - self.n_cached).min(budget)
    }

    /// The completion, once finished.
    pub fn completion(&self) -> Option<&Completion> {
        self.completion.as_ref()
    }

    /// The sampling parameters.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub(super) fn start(&mut self, now: Instant) {
        if self.finish.is_none() && self.started.is_none() {
            self.started = Some(now);
        }
    }

    /// Records a sampled token (the compute half of a step; no text yet).
    pub(super) fn push_sampled(&mut self, sampled: SampledToken) {
        self.first_token.get_or_insert_with(Instant::now);
        self.generated += 1;
        self.tokens.push(sampled.id);
        self.last = Some(sampled);
    }

    /// Streams the text of the token just sampled, decides whether the sequence ends, and
    /// reports the token.
    pub(super) fn accept(
        &mut self,
        tokenizer: &Tokenizer,
        index: usize,
        on_event: &mut dyn FnMut(usize, super::Event<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        let Some(sampled) = self.last.take() else { return Ok(()) };
        let id = sampled.id;
        let mut finish = self.sampler.finish_reason(id, self.generated);
        if finish.is_none() && self.tokens.len() >= self.tokens.capacity() {
            finish = Some(FinishReason::Length); // the context is full
        }
        self.delta.clear();
        // a stop token's text is never shown
        if !self.sampler.is_stop_token(id) {
            if let Some(piece) = self.detok.step(tokenizer, id)? {
                if let StopStatus::Stopped { .. } = self.stop.push(&piece, &mut self.delta) {
                    finish = Some(FinishReason::Stop);
                }
            }
        }
        if finish.is_some() && self.stop.stopped().is_none() {
            if let Some(rest) = self.detok.finish(tokenizer)? {
                if let StopStatus::Stopped { .. } = self.stop.push(&rest, &mut self.delta) {
                    finish = Some(FinishReason::Stop);
                }
            }
            if self.stop.stopped().is_none() {
                self.stop.finish(&mut self.delta);
            }
        }
        self.text.push_str(&self.delta);
        let event = TokenEvent {
            id,
            text: &self.delta,
            logprob: sampled.logprob,
            top_logprobs: sampled.top_logprobs.as_deref(),
        };
        if on_event(index, super::Event::Token(event)).is_break() {
            finish = Some(FinishReason::Cancelled);
        }
        self.finish = finish;
        Ok(())
    }

    /// Builds the completion record and reports it.
    pub(super) fn emit_completion(
        &mut self,
        index: usize,
        on_event: &mut dyn FnMut(usize, super::Event<'_>) -> ControlFlow<()>,
    ) {
        let now = Instant::now();
        let started = self.started.unwrap_or(now);
        let first = self.first_token.unwrap_or(now);
        let completion = Completion {
            finish_reason: self.finish.unwrap_or(FinishReason::Stop),
            usage: Usage {
                prompt_tokens: self.n_prompt,
                cached_tokens: self.n_reused(),
                completion_tokens: self.generated,
            },
            timings: Timings { prefill: first - started, decode: now - first },
            text: std::mem::take(&mut self.text),
        };
        let _ = on_event(index, super::Event::Done(&completion));
        self.completion = Some(completion);
    }
}

impl Engine {
    /// Tokenizes `prompt` (rendering chat messages with the model's template) into a new
    /// sequence.
    pub fn new_sequence(&self, prompt: &Prompt, params: SamplingParams) -> Result<Sequence> {
        Sequence::from_ids(self, self.prompt_ids(prompt)?, params)
    }

    /// The token ids of `prompt`.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Text(text) => self.tokenizer.encode(text, true),
            Prompt::Chat(messages) => {
                let template = self.template.as_ref().ok_or_else(|| Error::Invalid {
                    what: "prompt",
                    why: "the model has no chat template; send plain text".into(),
                })?;
                let text = template.render(messages, true, None)?;
                // the template writes BOS itself where the model wants one
                self.tokenizer.encode(&text, false)
            }
        }
    }

    /// Makes `seq` continue from `ids` (for example a whole chat re-rendered with a new turn):
    /// the KV of the longest common prefix with the sequence's tokens is kept, the rest is
    /// dropped, and generation restarts with fresh `params`.
    pub fn extend_sequence(
        &mut self,
        seq: &mut Sequence,
        ids: Vec<u32>,
        params: SamplingParams,
    ) -> Result<()> {
        let common = seq.tokens.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        // keep at least one token to compute, so there are logits to sample from
        let keep = common.min(seq.n_cached).min(ids.len().saturating_sub(1));
        let mut fresh = Sequence::from_ids(self, ids, params)?;
        let bs = self.cfg.kv_block_size;
        // a kept block that the prefix cache shares is never written into
        let keep = seq.table.truncate(keep, bs, &mut self.alloc);
        fresh.table = std::mem::take(&mut seq.table);
        fresh.n_cached = keep;
        fresh.n_reused = Some(keep);
        fresh.n_registered = keep / bs;
        fresh.prefix_attached = true;
        fresh.pin_tokens = seq.pin_tokens.min(keep);
        self.release(seq);
        *seq = fresh;
        Ok(())
    }
}
