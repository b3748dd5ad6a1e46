//! The JSON record of one benchmarked configuration, the machine it ran on, and the ratios
//! between two result files (`--compare`).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::stats::Spread;

/// Where a benchmark ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`model name` of /proc/cpuinfo).
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Device kind the engine ran on (`cpu`).
    pub device: String,
    /// The device's name (the CPU model on `cpu`).
    pub device_name: String,
    /// `edgellm` version.
    pub edgellm_version: String,
    /// Git commit the binary was built from ("unknown" outside a checkout).
    pub git_commit: String,
    /// Copy bandwidth measured at start: 2 × buffer size ÷ time of the best of 3 copies of a
    /// large buffer split over the engine's threads (read + write, STREAM "Copy" convention).
    pub copy_gbs: f64,
}

impl Machine {
    /// This machine, with the copy bandwidth measured by the caller.
    pub fn detect(copy_gbs: f64) -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Machine {
            device_name: cpu.clone(),
            cpu,
            cores,
            device: "cpu".into(),
            edgellm_version: env!("CARGO_PKG_VERSION").into(),
            git_commit: env!("EDGELLM_GIT_COMMIT").into(),
            copy_gbs,
        }
    }
}

/// Time spent per stage of one run (medians over the repetitions), in milliseconds. Stages the
/// run does not have (tokenize and detokenize on synthetic models, which take token ids) are
/// `None`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Tokenizing the prompts.
    pub tokenize_ms: Option<f64>,
    /// Prefill: start of generation to the first token (the first sampling included).
    pub prefill_ms: f64,
    /// Decode forward passes: decode wall time less sampling and detokenizing.
    pub decode_ms: f64,
    /// Sampling every generated token (timed by replaying the sampler on a vocabulary-sized row).
    pub sampling_ms: f64,
    /// Turning generated ids into text (timed by replaying the ids through a decode stream).
    pub detokenize_ms: Option<f64>,
}

/// One configuration's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Model name: a registry name, a path, or `synthetic:<shape>`.
    pub model: String,
    /// Random weights of the model's shapes.
    pub synthetic: bool,
    /// Weight storage.
    pub dtype: String,
    /// Device.
    pub device: String,
    /// Engine threads.
    pub threads: usize,
    /// Prompt tokens per sequence.
    pub prompt_tokens: usize,
    /// Generated tokens per sequence.
    pub gen_tokens: usize,
    /// Sequences generated at once.
    pub batch: usize,
    /// Untimed warm-up runs before the timed ones.
    pub warmup: usize,
    /// Timed runs.
    pub reps: usize,
    /// Time to first token of the batch (ms).
    pub ttft_ms: Spread,
    /// Prompt tokens of the whole batch per second of prefill.
    pub prefill_tok_s: Spread,
    /// Tokens per second of one sequence during decode: (n − 1) ÷ decode time.
    pub decode_tok_s: Spread,
    /// Time per output token, median over every decode step of every run (ms).
    pub tpot_ms_p50: f64,
    /// Time per output token, 90th percentile (ms).
    pub tpot_ms_p90: f64,
    /// Batch decode throughput: batch × (n − 1) ÷ decode time.
    pub batch_tok_s: Spread,
    /// End to end: batch × n generated tokens ÷ (prefill + decode) time.
    pub e2e_tok_s: Spread,
    /// Peak resident host memory during this configuration's runs (VmHWM, MB).
    pub peak_rss_mb: f64,
    /// Peak device memory (MB); `None` on the CPU, where it is host memory.
    pub device_mem_mb: Option<f64>,
    /// Bytes one decode step reads: streamed weights + the KV of every sequence at the mean
    /// decode context (prompt + n/2).
    pub decode_bytes_per_step: u64,
    /// `decode_bytes_per_step` ÷ median TPOT (GB/s).
    pub decode_gbs: f64,
    /// `decode_gbs` ÷ the machine's copy bandwidth.
    pub bandwidth_util: f64,
    /// Engine load time (s), shared by the configurations of one model and dtype.
    pub load_s: f64,
    /// Per-stage times, with `--profile`.
    pub profile: Option<Profile>,
    /// Where it ran.
    pub machine: Machine,
}

impl Record {
    /// What identifies a configuration across result files.
    pub fn key(&self) -> String {
        format!(
            "{} {} {} p{} n{} b{}",
            self.model, self.dtype, self.device, self.prompt_tokens, self.gen_tokens, self.batch
        )
    }
}

/// What a `--json` file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// One record per configuration.
    pub records: Vec<Record>,
}

impl Results {
    /// Reads a `--json` file.
    pub fn read(path: &Path) -> Result<Results> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not an `edgellm bench --json` file", path.display()))
    }

    /// Writes a `--json` file.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }
}

/// B ÷ A of the main figures of one configuration present in both files.
#[derive(Debug, Clone, PartialEq)]
pub struct Ratio {
    /// [`Record::key`].
    pub key: String,
    /// TTFT (lower is better).
    pub ttft: f64,
    /// Prefill tok/s.
    pub prefill: f64,
    /// Decode tok/s of one sequence.
    pub decode: f64,
    /// Median TPOT (lower is better).
    pub tpot: f64,
    /// Batch decode throughput.
    pub batch: f64,
    /// Peak RSS.
    pub rss: f64,
}

/// Ratios B ÷ A for every configuration of `a` that `b` also has, in `a`'s order; also the keys
/// found in only one of them.
pub fn compare(a: &Results, b: &Results) -> (Vec<Ratio>, Vec<String>) {
    let div = |x: f64, y: f64| if y != 0.0 { x / y } else { f64::NAN };
    let mut ratios = Vec::new();
    let mut unmatched = Vec::new();
    for ra in &a.records {
        match b.records.iter().find(|rb| rb.key() == ra.key()) {
            Some(rb) => ratios.push(Ratio {
                key: ra.key(),
                ttft: div(rb.ttft_ms.median, ra.ttft_ms.median),
                prefill: div(rb.prefill_tok_s.median, ra.prefill_tok_s.median),
                decode: div(rb.decode_tok_s.median, ra.decode_tok_s.median),
                tpot: div(rb.tpot_ms_p50, ra.tpot_ms_p50),
                batch: div(rb.batch_tok_s.median, ra.batch_tok_s.median),
                rss: div(rb.peak_rss_mb, ra.peak_rss_mb),
            }),
            None => unmatched.push(format!("only in A: {}", ra.key())),
        }
    }
    for rb in &b.records {
        if !a.records.iter().any(|ra| ra.key() == rb.key()) {
            unmatched.push(format!("only in B: {}", rb.key()));
        }
    }
    (ratios, unmatched)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(batch: usize, decode: f64) -> Record {
        // values that survive a decimal round trip exactly
        let s = |v: f64| Spread { median: v, min: v * 0.5, max: v * 2.0 };
        Record {
            model: "synthetic:qwen2.5-0.5b".into(),
            synthetic: true,
            dtype: "f32".into(),
            device: "cpu".into(),
            threads: 2,
            prompt_tokens: 128,
            gen_tokens: 64,
            batch,
            warmup: 1,
            reps: 3,
            ttft_ms: s(100.0),
            prefill_tok_s: s(1280.0),
            decode_tok_s: s(decode),
            tpot_ms_p50: 1e3 / decode,
            tpot_ms_p90: 1.1e3 / decode,
            batch_tok_s: s(decode * batch as f64),
            e2e_tok_s: s(decode * batch as f64 * 0.5),
            peak_rss_mb: 2000.0,
            device_mem_mb: None,
            decode_bytes_per_step: 2_000_000_000,
            decode_gbs: 2.0 * decode,
            bandwidth_util: 0.5,
            load_s: 1.5,
            profile: Some(Profile {
                tokenize_ms: None,
                prefill_ms: 100.0,
                decode_ms: 900.0,
                sampling_ms: 5.0,
                detokenize_ms: None,
            }),
            machine: Machine::detect(20.0),
        }
    }

    #[test]
    fn json_round_trip_and_compare_ratios() {
        let a = Results { records: vec![record(1, 10.0), record(4, 8.0)] };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        a.write(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), a);

        let b = Results { records: vec![record(4, 12.0), record(8, 5.0)] };
        let (ratios, unmatched) = compare(&a, &b);
        assert_eq!(ratios.len(), 1);
        assert_eq!(ratios[0].key, "synthetic:qwen2.5-0.5b f32 cpu p128 n64 b4");
        assert!((ratios[0].decode - 1.5).abs() < 1e-12);
        assert!((ratios[0].tpot - 8.0 / 12.0).abs() < 1e-12);
        assert!((ratios[0].ttft - 1.0).abs() < 1e-12);
        assert_eq!(unmatched.len(), 2, "{unmatched:?}");
    }
}
