//! The engine: loads a model source into a [`Model`], allocates everything up front (KV pool,
//! activation arena, step buffers) and runs generation for one or many sequences at once.
//!
//! A [`Sequence`] is a request in progress: its tokens, KV blocks, sampler and text state. The
//! caller creates sequences with [`Engine::new_sequence`], runs them with [`Engine::generate`]
//! (any number at once; every step is one batched forward pass over all of them, prefill chunks
//! and decode tokens mixed), reads [`Event`]s from a callback, and releases them with
//! [`Engine::release`]. A finished sequence keeps its KV, so a chat can append the next turn and
//! continue without recomputing earlier turns ([`Engine::extend_sequence`]).

mod config;
mod eval;
mod executor;
mod load;
mod prefix;
mod sequence;

use std::ops::ControlFlow;
use std::time::Instant;

pub use config::{EngineConfig, KvDtype};
pub use eval::{kl_divergence, KlDivergence, Perplexity};
pub use load::OpenedSource;
pub use prefix::PrefixHit;
pub use sequence::{Completion, Event, Prompt, Sequence, Timings, TokenEvent, Usage};

use crate::kv::BlockAllocator;
use crate::model::{ForwardBatch, Model};
use crate::sampling::FinishReason;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use crate::{Error, Result};
use executor::Executor;

/// Per-step batch description, reused across steps so a decode step allocates nothing.
#[derive(Default)]
struct StepBuffers {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    token_seq: Vec<u32>,
    block_table_data: Vec<u32>,
    block_table_offsets: Vec<u32>,
    logit_rows: Vec<u32>,
    /// For each logit row, the index (into the caller's slice) of the sequence it samples for.
    row_owner: Vec<usize>,
    /// Index into the caller's slice of each batch sequence slot.
    seq_index: Vec<usize>,
    /// Sequences that could not get KV blocks this step.
    failed: Vec<usize>,
}

impl StepBuffers {
    fn with_capacity(cfg: &EngineConfig) -> Self {
        let blocks_per_seq = cfg.max_context().div_ceil(cfg.kv_block_size);
        StepBuffers {
            tokens: Vec::with_capacity(cfg.max_batch_tokens),
            positions: Vec::with_capacity(cfg.max_batch_tokens),
            token_seq: Vec::with_capacity(cfg.max_batch_tokens),
            block_table_data: Vec::with_capacity(cfg.max_seqs * blocks_per_seq),
            block_table_offsets: Vec::with_capacity(cfg.max_seqs + 1),
            logit_rows: Vec::with_capacity(cfg.max_seqs),
            row_owner: Vec::with_capacity(cfg.max_seqs),
            seq_index: Vec::with_capacity(cfg.max_seqs),
            failed: Vec::with_capacity(cfg.max_seqs),
        }
    }

    fn clear(&mut self) {
        self.tokens.clear();
        self.positions.clear();
        self.token_seq.clear();
        self.block_table_data.clear();
        self.block_table_offsets.clear();
        self.block_table_offsets.push(0);
        self.logit_rows.clear();
        self.row_owner.clear();
        self.seq_index.clear();
        self.failed.clear();
    }
}

/// A loaded model with its tokenizer, KV pool and buffers.
pub struct Engine {
    model: Model,
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    cfg: EngineConfig,
    exec: Executor,
    alloc: BlockAllocator,
    step: StepBuffers,
    pool: std::sync::Arc<rayon::ThreadPool>,
    load_time: std::time::Duration,
}

impl Engine {
    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    /// The configuration in force (with defaults resolved).
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// How long [`Engine::load`] took.
    pub fn load_time(&self) -> std::time::Duration {
        self.load_time
    }

    /// The GPU the engine runs on (name, memory in bytes), or `None` on the CPU.
    pub fn device(&self) -> Option<(String, usize)> {
        self.exec.device()
    }

    /// On a GPU, where its kernels came from (a package's `kernels/`, NVRTC's cache or a compile).
    pub fn kernels(&self) -> Option<&crate::backend::cuda::KernelOrigin> {
        self.exec.kernels()
    }

    /// For benchmarks, on a GPU: the device's copy bandwidth in GB/s (read + write, between two
    /// `bytes`-sized buffers allocated for the measurement); `None` on the CPU.
    pub fn device_copy_bandwidth(&self, bytes: usize) -> Option<Result<f64>> {
        self.exec.device_copy_bandwidth(bytes)
    }

    /// On a GPU, its memory in use by all processes, in bytes; `None` on the CPU.
    pub fn device_memory_in_use(&self) -> Option<Result<usize>> {
        self.exec.device_memory_in_use()
    }

    /// The KV cache's element type on the engine's device (resolved: never `Auto`).
    pub fn kv_dtype(&self) -> KvDtype {
        self.exec.kv_dtype()
    }

    /// The CPU KV pool's element type (resolved: never `Auto`) and size in bytes; `None` on a GPU.
    pub fn kv_cache(&self) -> Option<(KvDtype, usize)> {
        self.exec.kv_cache()
    }

    /// KV blocks not in use.
    pub fn free_kv_blocks(&self) -> usize {
        self.alloc.n_free()
    }

    /// The engine's thread pool. Code running inside it (`pool.install`) calls the kernels
    /// without crossing threads; calling in from outside costs an injection, which allocates.
    pub fn thread_pool(&self) -> std::sync::Arc<rayon::ThreadPool> {
        self.pool.clone()
    }

    /// Returns a sequence's KV blocks to the pool (full ones stay in the prefix cache until the
    /// pool needs them). An unfinished sequence released this way (preempted) can run again: it
    /// recomputes its KV, taking what the prefix cache still holds.
    pub fn release(&mut self, seq: &mut Sequence) {
        seq.table.free(&mut self.alloc);
        seq.n_cached = 0;
        seq.n_registered = 0;
        seq.prefix_attached = false;
    }

    /// Runs `seqs` until each has finished, calling `on_event(index, event)` for every generated
    /// token and each completion. Returning `ControlFlow::Break` from the callback cancels that
    /// sequence (finish reason `cancelled`); the others go on.
    pub fn generate(
        &mut self,
        seqs: &mut [&mut Sequence],
        on_event: &mut (dyn FnMut(usize, Event<'_>) -> ControlFlow<()> + Send),
    ) -> Result<()> {
        // `step` checks the batch size and starts each sequence's clock; the whole loop runs on
        // a pool thread, so steps do not inject jobs from outside
        let pool = self.pool.clone();
        pool.install(|| {
            while seqs.iter().any(|s| s.finish.is_none()) {
                self.step(seqs, on_event)?;
            }
            Ok(())
        })
    }

    /// One step: the batched forward pass and sampling ([`Engine::forward_step`]), then text
    /// streaming, stop checks and events for each sequence that received a token. Finished
    /// sequences in `seqs` are skipped, so a scheduler can call this in a loop, adding and
    /// removing sequences between steps (continuous batching). Call it inside
    /// [`Engine::thread_pool`]'s `install` to avoid a cross-thread injection per step.
    pub fn step(
        &mut self,
        seqs: &mut [&mut Sequence],
        on_event: &mut dyn FnMut(usize, Event<'_>) -> ControlFlow<()>,
    ) -> Result<()> {
        if seqs.len() > self.cfg.max_seqs {
            return Err(Error::Invalid {
                what: "batch",
                why: format!("{} sequences exceed max_seqs = {}", seqs.len(), self.cfg.max_seqs),
            });
        }
        let now = Instant::now();
        for seq in seqs.iter_mut() {
            seq.start(now);
        }
        self.forward_step(seqs)?;
        for k in 0..self.step.failed.len() {
            let i = self.step.failed[k];
            seqs[i].emit_completion(i, on_event);
        }
        for row in 0..self.step.row_owner.len() {
            let i = self.step.row_owner[row];
            let seq = &mut *seqs[i];
            seq.accept(&self.tokenizer, i, on_event)?;
            if seq.finish.is_some() {
                seq.emit_completion(i, on_event);
            }
        }
        Ok(())
    }

    /// The compute half of a step: one batched forward pass over every running sequence's
    /// pending tokens, then a sampled token appended to each sequence whose pending tokens were
    /// all consumed. Allocates nothing once the sequences' buffers exist (a test counts this);
    /// text, stop strings and events are [`Engine::generate`]'s business. Returns the number of
    /// tokens sampled.
    #[doc(hidden)]
    pub fn forward_step(&mut self, seqs: &mut [&mut Sequence]) -> Result<usize> {
        self.plan_step(seqs)?;
        if self.step.tokens.is_empty() {
            return Ok(0);
        }
        let b = &self.step;
        let batch = ForwardBatch {
            tokens: &b.tokens,
            positions: &b.positions,
            token_seq: &b.token_seq,
            block_table_data: &b.block_table_data,
            block_table_offsets: &b.block_table_offsets,
            logit_rows: &b.logit_rows,
        };
        self.exec.forward_sample(&self.model, &self.pool, &batch, seqs, &b.row_owner)?;
        for k in 0..self.step.seq_index.len() {
            self.register_full_blocks(seqs[self.step.seq_index[k]]);
        }
        Ok(self.step.row_owner.len())
    }

    /// Fills the step buffers: up to `max_batch_tokens` pending tokens, oldest sequences first,
    /// and the logit rows of sequences whose pending tokens all fit.
    fn plan_step(&mut self, seqs: &mut [&mut Sequence]) -> Result<()> {
        self.step.clear();
        let mut budget = self.cfg.max_batch_tokens;
        let block_size = self.cfg.kv_block_size;
        for (i, seq) in seqs.iter_mut().enumerate() {
            if seq.finish.is_some() || budget == 0 {
                continue;
            }
            self.attach_cached_prefix(seq);
            let take = seq.step_tokens(budget);
            if seq.table.reserve(take, block_size, &mut self.alloc).is_err() {
                // the pool is exhausted: this sequence ends, the others go on
                seq.finish = Some(FinishReason::Error);
                self.step.failed.push(i);
                continue;
            }
            let slot = self.step.seq_index.len() as u32;
            self.step.seq_index.push(i);
            for p in seq.n_cached..seq.n_cached + take {
                self.step.tokens.push(seq.tokens[p]);
                self.step.positions.push(p as u32);
                self.step.token_seq.push(slot);
            }
            self.step.block_table_data.extend_from_slice(&seq.table.blocks);
            self.step.block_table_offsets.push(self.step.block_table_data.len() as u32);
            seq.n_cached += take;
            seq.table.len = seq.n_cached;
            budget -= take;
            if seq.n_cached == seq.tokens.len() {
                self.step.logit_rows.push(self.step.tokens.len() as u32 - 1);
                self.step.row_owner.push(i);
            }
        }
        Ok(())
    }

    /// Logits of every position of `tokens` run as one fresh sequence (perplexity, tests).
    /// Returns `[tokens.len(), vocab]`.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let mut seq = Sequence::from_ids(self, tokens.to_vec(), Default::default())?;
        let n_vocab = self.model.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * n_vocab);
        let chunk = self.cfg.max_batch_tokens.min(self.exec.max_logit_rows(&self.cfg));
        let result = (|| {
            for start in (0..tokens.len()).step_by(chunk) {
                let end = (start + chunk).min(tokens.len());
                seq.table.reserve(end - start, self.cfg.kv_block_size, &mut self.alloc)?;
                seq.table.len = end;
                let positions: Vec<u32> = (start as u32..end as u32).collect();
                let rows: Vec<u32> = (0..(end - start) as u32).collect();
                let batch = ForwardBatch {
                    tokens: &tokens[start..end],
                    positions: &positions,
                    token_seq: &vec![0; end - start],
                    block_table_data: &seq.table.blocks,
                    block_table_offsets: &[0, seq.table.blocks.len() as u32],
                    logit_rows: &rows,
                };
                self.exec.forward_logits(&self.model, &self.pool, &batch, &mut out)?;
            }
            Ok(())
        })();
        self.release(&mut seq);
        result.map(|()| out)
    }
}

/// Why generation of a sequence ended, as reported in its [`Completion`].
pub type Finish = FinishReason;
