//! Continuous batching: one thread owns the [`Engine`] and runs its step loop; requests arrive on
//! a channel from any thread and their events go back through each request's own sink.
//!
//! Each iteration the loop
//! 1. takes new requests from the channel, tokenizes them into [`Sequence`]s (a bad request gets
//!    [`RequestEvent::Error`] at once; a good one [`RequestEvent::Accepted`]) and queues them;
//! 2. drops cancelled requests (explicit [`RequestHandle::cancel`], or a sink whose receiver is
//!    gone), returning their KV blocks;
//! 3. admits queued requests, oldest first, while fewer than `max_seqs` run and the free KV
//!    blocks cover every running sequence up to its next token plus the new one's prompt (less
//!    what the prefix cache already holds of it: a shared system prompt or earlier chat turns
//!    are not computed again, see [`crate::kv::prefix`]);
//! 4. makes room for the step: while the running sequences' next step needs more KV blocks than
//!    are free, the newest one is preempted — its blocks are released and it goes back to the
//!    front of the queue, to recompute its KV (mostly from the prefix cache) when it is admitted
//!    again; its client sees nothing but a pause;
//! 5. runs one [`Engine::step`] (prefill chunks under `max_batch_tokens` and decode tokens of every
//!    running sequence in one forward pass), forwarding token and completion events;
//! 6. releases finished sequences at once, so the next iteration can admit more.
//!
//! Not in this version: priorities, swapping KV out instead of recomputing it. When every
//! [`Scheduler`] handle has been dropped the loop finishes the requests it holds, then exits.

mod metrics;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use metrics::{Histogram, HistogramSnapshot, Metrics, MetricsSnapshot, TPOT_BUCKETS, TTFT_BUCKETS};

use crate::engine::{Completion, Engine, EngineConfig, Event, Prompt, Sequence, Timings, Usage};
use crate::sampling::{FinishReason, TokenLogprob};
use crate::{Error, Result, SamplingParams, Tokenizer};

/// What a request reports, in order: `Accepted` or `Error` first; then `Token`s and one `Done`
/// (or an `Error` if the engine fails mid-way).
#[derive(Debug)]
pub enum RequestEvent {
    /// The prompt was tokenized and the request queued.
    Accepted {
        /// Tokens in the prompt.
        prompt_tokens: usize,
    },
    /// A generated token.
    Token(GeneratedToken),
    /// The request finished. After an explicit cancel the completion's `text` is empty (the text
    /// was streamed already) and its timings are zero.
    Done(Completion),
    /// The request could not be run.
    Error(Error),
}

/// One generated token, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    /// Token id.
    pub id: u32,
    /// Text that became safe to show with this token (may be empty).
    pub text: String,
    /// Its log-probability, when asked for.
    pub logprob: Option<f32>,
    /// The most likely alternatives, when asked for.
    pub top_logprobs: Vec<TokenLogprob>,
}

/// Where a request's events go. `send` returning `false` (the receiver is gone) cancels the
/// request, as does `is_closed`, which the loop checks between steps so that a queued or
/// prefilling request is dropped without waiting for its next token.
pub trait EventSink: Send + 'static {
    /// Delivers an event; `false` when nobody listens any more.
    fn send(&mut self, event: RequestEvent) -> bool;
    /// Whether the receiver is gone.
    fn is_closed(&self) -> bool {
        false
    }
}

impl EventSink for mpsc::Sender<RequestEvent> {
    fn send(&mut self, event: RequestEvent) -> bool {
        mpsc::Sender::send(self, event).is_ok()
    }
}

/// A generation request.
pub struct Request {
    /// What to continue.
    pub prompt: Prompt,
    /// How to sample and when to stop (validated by the loop).
    pub params: SamplingParams,
    /// Where the events go.
    pub sink: Box<dyn EventSink>,
    /// Keep the KV of the prompt's system messages in the cache for good (TensorRT-Edge-LLM's
    /// `save_system_prompt_kv_cache`), so later requests with the same system prompt never
    /// recompute it; see [`Sequence::pin_prefix`].
    pub pin_system_prompt: bool,
}

impl Request {
    /// A request for `prompt` with `params`, its events going to `sink`.
    pub fn new(prompt: Prompt, params: SamplingParams, sink: Box<dyn EventSink>) -> Self {
        Request { prompt, params, sink, pin_system_prompt: false }
    }
}

/// Cancels a submitted request.
#[derive(Debug, Clone)]
pub struct RequestHandle {
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// Asks the loop to stop the request before its next step; it then reports `Done` with
    /// finish reason `cancelled`.
    pub fn cancel(&self) {
        self.cancel.store(true, Relaxed);
    }
}

/// How the scheduler runs, beyond the engine's own limits.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Most requests waiting for a slot; more are refused with [`Error::Busy`].
    pub max_waiting: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig { max_waiting: 256 }
    }
}

/// Handle to the loop thread. Dropping it (or [`Scheduler::shutdown`]) lets the loop finish the
/// requests it holds and waits for the thread.
pub struct Scheduler {
    tx: Option<mpsc::Sender<Submitted>>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    tokenizer: Tokenizer,
    engine_config: EngineConfig,
    cfg: SchedulerConfig,
}

struct Submitted {
    request: Request,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
}

impl Scheduler {
    /// Moves `engine` onto a new thread and starts the loop.
    pub fn spawn(engine: Engine, cfg: SchedulerConfig) -> Result<Scheduler> {
        let metrics = Arc::new(Metrics::new(engine.config().kv_blocks()));
        let tokenizer = engine.tokenizer().clone();
        let engine_config = engine.config().clone();
        let (tx, rx) = mpsc::channel();
        let loop_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("edgellm-scheduler".into())
            .spawn(move || Loop::new(engine, rx, loop_metrics).run())
            .map_err(|e| Error::Invalid {
                what: "scheduler",
                why: format!("cannot start its thread: {e}"),
            })?;
        Ok(Scheduler { tx: Some(tx), thread: Some(thread), metrics, tokenizer, engine_config, cfg })
    }

    /// Queues a request. Fails with [`Error::Busy`] when `max_waiting` requests already wait;
    /// everything else about the request (prompt length, parameters) is reported through its
    /// sink.
    pub fn submit(&self, request: Request) -> Result<RequestHandle> {
        let limit = self.cfg.max_waiting;
        let waiting = self.metrics.waiting.fetch_add(1, Relaxed);
        if waiting >= limit {
            self.metrics.waiting.fetch_sub(1, Relaxed);
            self.metrics.rejected.fetch_add(1, Relaxed);
            return Err(Error::Busy { waiting, limit });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let submitted = Submitted { request, cancel: cancel.clone(), arrived: Instant::now() };
        let tx = self.tx.as_ref().expect("tx lives until shutdown");
        if tx.send(submitted).is_err() {
            self.metrics.waiting.fetch_sub(1, Relaxed);
            return Err(Error::SchedulerStopped);
        }
        Ok(RequestHandle { cancel })
    }

    /// The live counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The engine's tokenizer (for turning token ids into text, e.g. in logprobs).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The engine's configuration.
    pub fn engine_config(&self) -> &EngineConfig {
        &self.engine_config
    }

    /// Stops taking requests, lets the loop finish those it holds, and waits for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request that has a sequence, queued or running.
struct Slot {
    sink: Box<dyn EventSink>,
    cancel: Arc<AtomicBool>,
    arrived: Instant,
    /// Whether it has been admitted before (a preempted request waits again).
    admitted: bool,
    first_token: Option<Instant>,
    /// Set when the request has ended: its last event, sent once its KV is released.
    last: Option<RequestEvent>,
}

struct Loop {
    engine: Engine,
    rx: mpsc::Receiver<Submitted>,
    metrics: Arc<Metrics>,
    waiting: VecDeque<(Sequence, Slot)>,
    /// Running sequences, oldest first (the engine gives prefill budget in this order).
    seqs: Vec<Sequence>,
    slots: Vec<Slot>,
    open: bool,
    /// Throughput window: its start and the tokens generated since.
    window: (Instant, u64),
}

impl Loop {
    fn new(engine: Engine, rx: mpsc::Receiver<Submitted>, metrics: Arc<Metrics>) -> Self {
        let max_seqs = engine.config().max_seqs;
        Loop {
            engine,
            rx,
            metrics,
            waiting: VecDeque::new(),
            seqs: Vec::with_capacity(max_seqs),
            slots: Vec::with_capacity(max_seqs),
            open: true,
            window: (Instant::now(), 0),
        }
    }

    fn run(mut self) {
        // the whole loop runs on a pool thread, so steps do not inject jobs from outside
        let pool = self.engine.thread_pool();
        pool.install(|| {
            while self.receive() {
                self.drop_cancelled();
                self.admit();
                self.make_room();
                self.step();
                self.publish();
            }
        });
    }

    /// Takes new requests; blocks when there is nothing to do. `false` when the loop should end.
    fn receive(&mut self) -> bool {
        let idle = self.seqs.is_empty() && self.waiting.is_empty();
        if idle {
            if !self.open {
                return false;
            }
            self.metrics.set_tokens_per_s(0.0);
            match self.rx.recv() {
                Ok(s) => self.accept(s),
                Err(_) => return false,
            }
            self.window = (Instant::now(), 0);
        }
        loop {
            match self.rx.try_recv() {
                Ok(s) => self.accept(s),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.open = false;
                    return !(self.seqs.is_empty() && self.waiting.is_empty());
                }
            }
        }
    }

    /// Tokenizes a new request and queues it, or reports why it cannot run.
    fn accept(&mut self, s: Submitted) {
        let Submitted { request: Request { prompt, params, mut sink, pin_system_prompt }, cancel, arrived } =
            s;
        let sequence = self.engine.new_sequence(&prompt, params).and_then(|mut seq| {
            if pin_system_prompt {
                seq.pin_prefix(self.engine.system_prompt_len(&prompt, &seq.tokens)?);
            }
            Ok(seq)
        });
        match sequence {
            Ok(seq) => {
                if sink.send(RequestEvent::Accepted { prompt_tokens: seq.n_prompt() }) {
                    let slot = Slot { sink, cancel, arrived, admitted: false, first_token: None, last: None };
                    self.waiting.push_back((seq, slot));
                    return;
                }
            }
            Err(e) => {
                // counted out before the client hears, so metrics never lag the error it sees
                self.metrics.waiting.fetch_sub(1, Relaxed);
                sink.send(RequestEvent::Error(e));
                return;
            }
        }
        self.metrics.waiting.fetch_sub(1, Relaxed);
    }

    fn is_cancelled(slot: &Slot) -> bool {
        slot.cancel.load(Relaxed) || slot.sink.is_closed()
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain_mut(|(seq, slot)| {
            if !Self::is_cancelled(slot) {
                return true;
            }
            slot.sink.send(RequestEvent::Done(cancelled(seq)));
            false
        });
        let dropped = before - self.waiting.len();
        for _ in 0..dropped {
            self.metrics.count_finished(FinishReason::Cancelled);
        }
        self.metrics.waiting.fetch_sub(dropped, Relaxed);
        for i in 0..self.slots.len() {
            if Self::is_cancelled(&self.slots[i]) {
                self.slots[i].last = Some(RequestEvent::Done(cancelled(&self.seqs[i])));
                self.metrics.count_finished(FinishReason::Cancelled);
            }
        }
        self.remove_done();
    }

    /// Admits queued requests, oldest first, while a slot is free and the free KV blocks cover
    /// every running sequence up to its next token plus the new one (less its cached prefix).
    /// With nothing running the oldest request is admitted whatever it needs, so a request too
    /// big for the pool fails rather than waits forever.
    fn admit(&mut self) {
        let max_seqs = self.engine.config().max_seqs;
        let engine = &self.engine;
        let mut promised: usize = self.seqs.iter_mut().map(|seq| engine.kv_blocks_to_continue(seq)).sum();
        while self.seqs.len() < max_seqs {
            let Some((seq, _)) = self.waiting.front_mut() else { break };
            let cost = self.engine.kv_blocks_to_continue(seq);
            if !self.seqs.is_empty() && promised + cost > self.engine.free_kv_blocks() {
                break;
            }
            promised += cost;
            let (mut seq, mut slot) = self.waiting.pop_front().expect("front exists");
            self.metrics.waiting.fetch_sub(1, Relaxed);
            self.engine.attach_cached_prefix(&mut seq);
            if !slot.admitted {
                slot.admitted = true;
                self.metrics.prompt_tokens.fetch_add(seq.n_prompt() as u64, Relaxed);
                self.metrics.prompt_tokens_cached.fetch_add(seq.n_reused() as u64, Relaxed);
            }
            // running sequences stay in arrival order: the step gives prefill budget to the
            // oldest first, and preemption takes the newest
            let at = self.slots.partition_point(|s| s.arrived <= slot.arrived);
            self.seqs.insert(at, seq);
            self.slots.insert(at, slot);
        }
    }

    /// Preempts the newest running sequences until the next step's KV fits in the free blocks
    /// (one sequence always stays: if it alone does not fit, the step ends it with an error).
    fn make_room(&mut self) {
        while self.seqs.len() > 1 && self.engine.kv_blocks_for_step(&self.seqs) > self.engine.free_kv_blocks()
        {
            let mut seq = self.seqs.pop().expect("more than one runs");
            let slot = self.slots.pop().expect("slots follow seqs");
            self.engine.release(&mut seq);
            self.metrics.preemptions.fetch_add(1, Relaxed);
            self.metrics.waiting.fetch_add(1, Relaxed);
            self.waiting.push_front((seq, slot));
        }
    }

    /// One engine step over the running sequences, events forwarded to their sinks.
    fn step(&mut self) {
        if self.seqs.is_empty() {
            return;
        }
        let mut refs: Vec<&mut Sequence> = self.seqs.iter_mut().collect();
        let slots = &mut self.slots;
        let metrics = &*self.metrics;
        let mut generated = 0;
        let mut on_event = |i: usize, event: Event<'_>| {
            let slot = &mut slots[i];
            match event {
                Event::Token(t) => {
                    generated += 1;
                    metrics.generated_tokens.fetch_add(1, Relaxed);
                    if slot.first_token.is_none() {
                        let now = Instant::now();
                        slot.first_token = Some(now);
                        metrics.ttft.observe(now - slot.arrived);
                    }
                    let token = GeneratedToken {
                        id: t.id,
                        text: t.text.to_string(),
                        logprob: t.logprob,
                        top_logprobs: t.top_logprobs.map(<[_]>::to_vec).unwrap_or_default(),
                    };
                    if slot.sink.send(RequestEvent::Token(token)) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                }
                Event::Done(c) => {
                    if c.usage.completion_tokens > 1 {
                        metrics.tpot.observe(c.timings.decode / (c.usage.completion_tokens as u32 - 1));
                    }
                    metrics.count_finished(c.finish_reason);
                    slot.last = Some(RequestEvent::Done(c.clone()));
                    ControlFlow::Continue(())
                }
            }
        };
        let result = self.engine.step(&mut refs, &mut on_event);
        drop(refs);
        self.window.1 += generated;
        if let Err(e) = result {
            // the batch is in an unknown state: every running request fails
            let why = e.to_string();
            for slot in &mut self.slots {
                slot.last = Some(RequestEvent::Error(Error::Generation(why.clone())));
                self.metrics.count_finished(FinishReason::Error);
            }
        }
        for (seq, slot) in self.seqs.iter().zip(&mut self.slots) {
            if seq.is_finished() && slot.last.is_none() {
                // finished without a Done (cannot happen today): not kept forever
                slot.last = Some(RequestEvent::Error(Error::Generation("ended without a completion".into())));
            }
        }
        self.remove_done();
    }

    /// Releases the KV of ended requests and removes them, keeping the others in order, then
    /// sends their last events: a client that has its `Done` sees the KV already free.
    fn remove_done(&mut self) {
        let mut ended = Vec::new();
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].last.is_some() {
                let mut seq = self.seqs.remove(i);
                ended.push(self.slots.remove(i));
                self.engine.release(&mut seq);
            } else {
                i += 1;
            }
        }
        self.metrics.running.store(self.seqs.len(), Relaxed);
        self.metrics.set_kv(self.engine.kv_stats());
        for mut slot in ended {
            let last = slot.last.take().expect("ended slots have a last event");
            slot.sink.send(last);
        }
    }

    fn publish(&mut self) {
        let m = &self.metrics;
        m.running.store(self.seqs.len(), Relaxed);
        m.set_kv(self.engine.kv_stats());
        let elapsed = self.window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            m.set_tokens_per_s(self.window.1 as f64 / elapsed.as_secs_f64());
            self.window = (Instant::now(), 0);
        }
    }
}

/// The completion reported for an explicitly cancelled request.
fn cancelled(seq: &Sequence) -> Completion {
    Completion {
        finish_reason: FinishReason::Cancelled,
        usage: Usage {
            prompt_tokens: seq.n_prompt(),
            cached_tokens: seq.n_reused(),
            completion_tokens: seq.generated_ids().len(),
        },
        timings: Timings::default(),
        text: String::new(),
    }
}
