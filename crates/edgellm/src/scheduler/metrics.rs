//! Counters the scheduler loop updates and any thread reads: queue depth, running sequences, KV
//! blocks (used, free, cached, pinned), token counts and the prefix cache's hit rate,
//! preemptions, throughput, and time-to-first-token / time-per-output-token histograms.
//! Everything is an atomic, so reading never blocks the loop; [`Metrics::snapshot`] copies them
//! into plain numbers (the server renders those as Prometheus text).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::kv::KvStats;
use crate::sampling::FinishReason;

/// Bucket upper bounds (seconds) of the time-to-first-token histogram.
pub const TTFT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Bucket upper bounds (seconds) of the time-per-output-token histogram.
pub const TPOT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5];

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

/// A histogram's values at one moment, in Prometheus' shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in seconds, observations ≤ bound)`, cumulative, without `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// All observations (the `+Inf` bucket).
    pub count: u64,
    /// Sum of the observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (seconds, ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = self.bounds.iter().position(|&b| secs <= b).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            total += count.load(Relaxed);
            buckets.push((*bound, total));
        }
        total += self.counts[self.bounds.len()].load(Relaxed);
        HistogramSnapshot { buckets, count: total, sum: self.sum_ns.load(Relaxed) as f64 * 1e-9 }
    }
}

/// The scheduler's live counters, shared through an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    pub(super) waiting: AtomicUsize,
    pub(super) running: AtomicUsize,
    pub(super) kv_blocks_total: AtomicUsize,
    pub(super) kv_blocks_free: AtomicUsize,
    pub(super) kv_blocks_used: AtomicUsize,
    pub(super) kv_blocks_cached: AtomicUsize,
    pub(super) kv_blocks_pinned: AtomicUsize,
    pub(super) prompt_tokens: AtomicU64,
    pub(super) prompt_tokens_cached: AtomicU64,
    pub(super) preemptions: AtomicU64,
    pub(super) generated_tokens: AtomicU64,
    pub(super) rejected: AtomicU64,
    /// Finished requests per [`FinishReason`] (stop, length, cancelled, error).
    pub(super) finished: [AtomicU64; 4],
    /// Generated tokens per second over the last second or so, as `f64` bits.
    pub(super) tokens_per_s: AtomicU64,
    pub(super) ttft: Histogram,
    pub(super) tpot: Histogram,
}

/// The metrics at one moment, as plain numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Requests accepted but not yet running.
    pub waiting: usize,
    /// Sequences in the running batch.
    pub running: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// KV blocks that can be handed out (empty, or cached and held by no sequence).
    pub kv_blocks_free: usize,
    /// KV blocks held by sequences.
    pub kv_blocks_used: usize,
    /// Of the free blocks, those holding a reusable prefix (evicted least recently used first).
    pub kv_blocks_cached: usize,
    /// Blocks of saved system prompts, never evicted.
    pub kv_blocks_pinned: usize,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: u64,
    /// Of those, the tokens whose KV came from the prefix cache.
    pub prompt_tokens_cached: u64,
    /// Times a running sequence was preempted (its KV released, to be recomputed).
    pub preemptions: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Requests refused because the queue was full.
    pub rejected: u64,
    /// Finished requests by finish reason (`"stop"`, `"length"`, `"cancelled"`, `"error"`).
    pub finished: Vec<(&'static str, u64)>,
    /// Recent generation throughput, tokens per second (0 when idle).
    pub tokens_per_s: f64,
    /// Time from arrival (queueing included) to the first generated token.
    pub ttft: HistogramSnapshot,
    /// Time per output token after the first.
    pub tpot: HistogramSnapshot,
}

impl MetricsSnapshot {
    /// Share of prompt tokens served from the prefix cache (0 before any request).
    pub fn prefix_hit_rate(&self) -> f64 {
        self.prompt_tokens_cached as f64 / self.prompt_tokens.max(1) as f64
    }
}

const REASONS: [FinishReason; 4] =
    [FinishReason::Stop, FinishReason::Length, FinishReason::Cancelled, FinishReason::Error];

impl Metrics {
    pub(super) fn new(kv_blocks_total: usize) -> Self {
        Metrics {
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            kv_blocks_total: AtomicUsize::new(kv_blocks_total),
            kv_blocks_free: AtomicUsize::new(kv_blocks_total),
            kv_blocks_used: AtomicUsize::new(0),
            kv_blocks_cached: AtomicUsize::new(0),
            kv_blocks_pinned: AtomicUsize::new(0),
            prompt_tokens: AtomicU64::new(0),
            prompt_tokens_cached: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            finished: Default::default(),
            tokens_per_s: AtomicU64::new(0f64.to_bits()),
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
        }
    }

    pub(super) fn count_finished(&self, reason: FinishReason) {
        let i = REASONS.iter().position(|&r| r == reason).expect("every reason is listed");
        self.finished[i].fetch_add(1, Relaxed);
    }

    pub(super) fn set_kv(&self, kv: KvStats) {
        self.kv_blocks_free.store(kv.free, Relaxed);
        self.kv_blocks_used.store(kv.used, Relaxed);
        self.kv_blocks_cached.store(kv.cached, Relaxed);
        self.kv_blocks_pinned.store(kv.pinned, Relaxed);
    }

    pub(super) fn set_tokens_per_s(&self, rate: f64) {
        self.tokens_per_s.store(rate.to_bits(), Relaxed);
    }

    /// Requests accepted but not yet running.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Sequences in the running batch.
    pub fn running(&self) -> usize {
        self.running.load(Relaxed)
    }

    /// The current values.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            waiting: self.waiting.load(Relaxed),
            running: self.running.load(Relaxed),
            kv_blocks_total: self.kv_blocks_total.load(Relaxed),
            kv_blocks_free: self.kv_blocks_free.load(Relaxed),
            kv_blocks_used: self.kv_blocks_used.load(Relaxed),
            kv_blocks_cached: self.kv_blocks_cached.load(Relaxed),
            kv_blocks_pinned: self.kv_blocks_pinned.load(Relaxed),
            prompt_tokens: self.prompt_tokens.load(Relaxed),
            prompt_tokens_cached: self.prompt_tokens_cached.load(Relaxed),
            preemptions: self.preemptions.load(Relaxed),
            generated_tokens: self.generated_tokens.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            finished: REASONS
                .iter()
                .zip(&self.finished)
                .map(|(r, n)| (r.as_str(), n.load(Relaxed)))
                .collect(),
            tokens_per_s: f64::from_bits(self.tokens_per_s.load(Relaxed)),
            ttft: self.ttft.snapshot(),
            tpot: self.tpot.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.1, 1), (1.0, 3)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 6.05).abs() < 1e-9);
    }
}
