//! Running one configuration: `batch` sequences of `prompt` tokens, each generating `gen` tokens
//! greedily with EOS ignored, all in one [`Engine::generate`] call; times taken from the event
//! callback. Also the machine-level measurements: copy bandwidth and peak RSS.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use edgellm::engine::{Engine, Event, Prompt, Sequence};
use edgellm::sampling::{Sampler, TokenHistory};
use edgellm::{DecodeStream, SamplingParams};

/// Timings of one run.
#[derive(Debug, Clone, Default)]
pub struct RunTimes {
    /// Start of generation to the first token of the batch.
    pub ttft: Duration,
    /// First to last token of the batch.
    pub decode: Duration,
    /// Duration of each decode step (between consecutive tokens of the first sequence).
    pub steps: Vec<f64>,
    /// Generated token ids of each sequence.
    pub generated: Vec<Vec<u32>>,
}

/// The sampling of every benchmark sequence: `base` (greedy by default), exactly `gen` tokens.
pub fn params(gen: usize, base: &SamplingParams) -> SamplingParams {
    SamplingParams { max_tokens: Some(gen), ignore_eos: true, ..base.clone() }
}

/// Runs `prompts` (one sequence each) to `gen` tokens and times it.
pub fn run_once(
    engine: &mut Engine,
    prompts: &[Vec<u32>],
    gen: usize,
    sampling: &SamplingParams,
) -> Result<RunTimes> {
    let mut seqs = prompts
        .iter()
        .map(|ids| engine.new_sequence(&Prompt::Ids(ids.clone()), params(gen, sampling)))
        .collect::<edgellm::Result<Vec<Sequence>>>()?;
    let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut stamps: Vec<Instant> = Vec::with_capacity(gen);
    let start = Instant::now();
    let result = engine.generate(&mut refs, &mut |i, event| {
        if let Event::Token(_) = event {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            if i == 0 {
                stamps.push(now);
            }
        }
        ControlFlow::Continue(())
    });
    let generated = seqs.iter().map(|s| s.generated_ids().to_vec()).collect();
    for seq in &mut seqs {
        engine.release(seq);
    }
    result?;
    let first = first.context("the run generated no token")?;
    Ok(RunTimes {
        ttft: first - start,
        decode: last - first,
        steps: stamps.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect(),
        generated,
    })
}

/// Seconds to sample one token from a vocabulary-sized logits row with the benchmark's
/// sampler (best of a few, each over `n` samples).
pub fn sampling_seconds(n_vocab: usize, n: usize, sampling: &SamplingParams) -> Result<f64> {
    let mut sampler = Sampler::new(&params(n, sampling), n_vocab)?;
    let row: Vec<f32> = (0..n_vocab).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let mut logits = row.clone();
    let history: Vec<u32> = vec![1; 8];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        for _ in 0..n {
            logits.copy_from_slice(&row);
            std::hint::black_box(sampler.sample(&mut logits, TokenHistory::split(&history, 4)));
        }
        best = best.min(start.elapsed().as_secs_f64() / n as f64);
    }
    Ok(best)
}

/// Seconds to stream-decode `ids` to text, as the engine does token by token.
pub fn detokenize_seconds(engine: &Engine, ids: &[Vec<u32>]) -> Result<f64> {
    let start = Instant::now();
    for seq in ids {
        let mut stream = DecodeStream::new(true);
        for &id in seq {
            std::hint::black_box(stream.step(engine.tokenizer(), id)?);
        }
        std::hint::black_box(stream.finish(engine.tokenizer())?);
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Copy bandwidth in GB/s: 2 × `bytes` (read + write) ÷ the best of three copies of a `bytes`
/// buffer, split into one contiguous chunk per thread.
pub fn copy_bandwidth(bytes: usize, threads: usize) -> f64 {
    let threads = threads.max(1);
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(c));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    // the first copy only faults `dst` in; best-of keeps the three warm ones
    std::hint::black_box(&dst);
    2.0 * bytes as f64 / best / 1e9
}

/// Resets the process's peak RSS to its current RSS (Linux `clear_refs` 5); false when the
/// kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident set size in MB (`VmHWM` of /proc/self/status), 0 when unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map_or(0.0, |kb| kb * 1024.0 / 1e6)
}

/// `n` pseudo-random token ids below `n_vocab` (deterministic in `seed`).
pub fn random_ids(n: usize, n_vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % n_vocab as u64) as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_deterministic_and_in_range() {
        let a = random_ids(100, 50, 3);
        assert_eq!(a, random_ids(100, 50, 3));
        assert_ne!(a, random_ids(100, 50, 4));
        assert!(a.iter().all(|&t| t < 50));
    }

    #[test]
    fn peak_rss_is_read() {
        assert!(peak_rss_mb() > 0.0);
    }
}
