//! `edgellm bench`: end-to-end prefill and decode speed, TTFT, TPOT, memory and memory-bandwidth
//! use of a model — a real one, or random weights of a known model's shapes (`--synthetic`) —
//! swept over prompt lengths, generated lengths, batch sizes, weight precisions and devices.
//! Prints a table, and writes JSON (`--json`), Markdown (`--markdown`) and an SVG or PNG chart
//! (`--plot`); `--compare A.json B.json` prints the ratios between two runs. The machinery is in
//! `crate::bench`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use edgellm::backend::Device;
use edgellm::engine::{Engine, EngineConfig, KvDtype};
use edgellm::package::PLAN_FILE;
use edgellm::quant::WeightFormat;
use edgellm::source::synthetic::{presets, SyntheticSource};
use edgellm::{ModelConfig, SamplingParams};

use super::Context;
use crate::bench::record::{compare, Machine, Profile, Record, Results};
use crate::bench::stats::{percentile, sorted, Spread};
use crate::bench::{measure, plot, report};

/// Benchmark a model: prefill/decode speed, TTFT, TPOT, memory and bandwidth use.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  edgellm bench --synthetic qwen2.5-0.5b -p 128 -n 64 -b 1,4
  edgellm bench qwen2.5-coder-0.5b-instruct -p 128,512 -n 128 --dtype f32,bf16 --json cpu.json
  edgellm bench --shape-file config.json -p 64 -n 32 --plot bench.svg
  edgellm bench --compare before.json after.json

Synthetic shapes: llama-3.2-1b llama-3.2-3b llama-3.1-8b qwen2.5-0.5b qwen2.5-1.5b qwen2.5-7b
qwen3-0.6b qwen3-8b (random weights, no download).")]
pub struct BenchArgs {
    /// Model: a registry name, a .gguf file or an HF checkpoint directory (default:
    /// qwen2.5-coder-0.5b-instruct).
    pub model: Option<String>,
    /// Random weights with the shapes of a known model instead of a real one.
    #[arg(long, value_name = "SHAPE", conflicts_with = "model")]
    pub synthetic: Option<String>,
    /// Random weights with the shapes of an HF config.json.
    #[arg(long, value_name = "CONFIG_JSON", conflicts_with_all = ["model", "synthetic"])]
    pub shape_file: Option<PathBuf>,
    /// Prompt lengths in tokens (comma-separated sweep).
    #[arg(short = 'p', long = "prompt-tokens", value_delimiter = ',', default_value = "128")]
    pub prompt_tokens: Vec<usize>,
    /// Generated tokens per sequence (comma-separated sweep).
    #[arg(short = 'n', long = "gen-tokens", value_delimiter = ',', default_value = "64")]
    pub gen_tokens: Vec<usize>,
    /// Batch sizes: sequences generated at once (comma-separated sweep).
    #[arg(short = 'b', long = "batch", value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Weight formats (comma-separated sweep): f32, bf16, f16, int8, int4, int4-gN, fp8.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = parse_format)]
    pub dtype: Vec<String>,
    /// Devices (comma-separated sweep): cpu, cuda, cuda:N or auto.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = parse_device)]
    pub device: Vec<String>,
    /// KV-cache element type: auto, f32, f16, bf16 or fp8 (as `run --kv-dtype`).
    #[arg(long, default_value = "auto")]
    pub kv_dtype: KvDtype,
    /// Timed repetitions of each configuration.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub reps: usize,
    /// Untimed warm-up runs before them (same batch and prompt, at most 8 generated tokens).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Worker threads (0: one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Most tokens per forward pass (0: batch × prompt of the largest configuration, at most
    /// 8192, so a batch's prefill is one pass; a built package's plan.json's on CUDA).
    #[arg(long, default_value_t = 0)]
    pub batch_tokens: usize,
    /// Also time each stage: tokenize, prefill, decode, sampling, detokenize.
    #[arg(long)]
    pub profile: bool,
    /// Write one JSON record per configuration to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Print the table as Markdown.
    #[arg(long)]
    pub markdown: bool,
    /// Draw decode throughput and TTFT against batch size into FILE.svg or FILE.png (the labels
    /// need a TrueType font: fonts-dejavu-core on Debian, or EDGELLM_FONT=file.ttf).
    #[arg(long, value_name = "FILE.svg|FILE.png")]
    pub plot: Option<PathBuf>,
    /// Print B ÷ A for each configuration of two --json files, and run nothing.
    #[arg(long, num_args = 2, value_names = ["A.json", "B.json"])]
    pub compare: Option<Vec<PathBuf>>,
    /// Seed of synthetic weights and random prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Size of the buffer the copy-bandwidth yardstick copies (MiB).
    #[arg(long, default_value_t = 512)]
    pub copy_mib: usize,
    /// Sampling temperature of every sequence (0: greedy). With a GPU, sampling runs on the
    /// device; the sampling seed is --seed.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-k of every sequence (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p of every sequence (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
}

impl BenchArgs {
    /// The sampling of every benchmark sequence, without its token count.
    fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: Some(self.seed),
            ..SamplingParams::greedy()
        }
    }
}

/// What is benchmarked.
enum Subject {
    /// Random weights of `config`.
    Synthetic { name: String, config: ModelConfig },
    /// A model file or directory.
    File { name: String, path: PathBuf },
}

/// Text that real-model prompts are cut from.
const PROSE: &str = "The quick brown fox jumps over the lazy dog while the committee reviews \
the quarterly report on renewable energy, noting that solar installations grew faster than \
expected and that storage remains the bottleneck for grids at night. ";

/// Runs the command.
pub fn run(args: &BenchArgs, ctx: &Context) -> Result<()> {
    if let Some(files) = &args.compare {
        let (a, b) = (Results::read(&files[0])?, Results::read(&files[1])?);
        let (ratios, unmatched) = compare(&a, &b);
        print!("{}", report::ratios(&ratios, args.markdown));
        for line in unmatched {
            eprintln!("{line}");
        }
        return Ok(());
    }
    for (flag, list) in [("-p", &args.prompt_tokens), ("-n", &args.gen_tokens), ("-b", &args.batch)] {
        if list.is_empty() || list.contains(&0) {
            bail!("{flag} needs positive values");
        }
    }
    if args.reps == 0 {
        bail!("-r must be at least 1");
    }
    let sampling = args.sampling();
    sampling.validate()?;
    if !sampling.is_greedy() {
        eprintln!(
            "sampling: temperature {}, top-k {}, top-p {}, seed {}",
            sampling.temperature, sampling.top_k, sampling.top_p, args.seed
        );
    }
    let subject = if let Some(shape) = &args.synthetic {
        Subject::Synthetic { name: format!("synthetic:{shape}"), config: presets::config(shape)? }
    } else if let Some(file) = &args.shape_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let config = ModelConfig::from_hf_json(&text, &file.display().to_string())?;
        let stem = file.file_stem().map_or("shape".into(), |s| s.to_string_lossy().into_owned());
        Subject::Synthetic { name: format!("synthetic:{stem}"), config }
    } else {
        let path = ctx.resolve_model(args.model.as_deref())?;
        let name = args.model.clone().unwrap_or_else(|| ctx.store().registry().default_model().name.clone());
        Subject::File { name, path }
    };

    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        t => t,
    };
    let copy_gbs = measure::copy_bandwidth(args.copy_mib << 20, threads);
    let machine = Machine::detect(copy_gbs);
    eprintln!(
        "{} ({} cores), edgellm {} ({}); copy bandwidth {copy_gbs:.1} GB/s (read + write, {} MiB, {threads} threads)",
        machine.cpu, machine.cores, machine.edgellm_version, machine.git_commit, args.copy_mib
    );

    let mut records = Vec::new();
    for device in &args.device {
        for dtype in &args.dtype {
            let mut engine = load(&subject, dtype, device, threads, args)?;
            // a package runs the format it stores whatever `--dtype` said (f32, the default):
            // report that one
            let format = engine.config().weight_format;
            let dtype = &match dtype.parse::<WeightFormat>() {
                Ok(asked) if asked == format => dtype.clone(),
                _ => format.to_string(),
            };
            // on a GPU, bandwidth use is measured against the GPU's own copy rate
            let mut machine = machine.clone();
            if let Some((gpu, mem)) = engine.device() {
                let gbs = engine.device_copy_bandwidth(args.copy_mib << 20).transpose()?.unwrap_or_default();
                eprintln!(
                    "device {device}: {gpu}, {:.1} GiB; copy bandwidth {gbs:.1} GB/s (read + write, {} MiB)",
                    mem as f64 / (1u64 << 30) as f64,
                    args.copy_mib
                );
                (machine.device_name, machine.copy_gbs) = (gpu, gbs);
            }
            let load_s = engine.load_time().as_secs_f64();
            eprintln!(
                "loaded {} ({dtype}, {device}) in {load_s:.2} s: {:.0} MB of weights",
                name(&subject),
                engine.model().weight_bytes() as f64 / 1e6
            );
            for &p in &args.prompt_tokens {
                for &n in &args.gen_tokens {
                    for &b in &args.batch {
                        let mut r = bench_one(&mut engine, &subject, (p, n, b), args, &machine)?;
                        if let Some(in_use) = engine.device_memory_in_use().transpose()? {
                            r.device_mem_mb = Some(in_use as f64 / 1e6);
                        }
                        r.dtype = dtype.clone();
                        r.device = device.clone();
                        r.load_s = load_s;
                        eprintln!(
                            "  p{p} n{n} b{b}: TTFT {:.1} ms, decode {:.2} tok/s, batch {:.2} tok/s",
                            r.ttft_ms.median, r.decode_tok_s.median, r.batch_tok_s.median
                        );
                        records.push(r);
                    }
                }
            }
        }
    }

    print!("{}", report::records(&records, args.profile, args.markdown));
    if matches!(subject, Subject::Synthetic { .. }) && args.profile {
        eprintln!("tokenize and detokenize are n/a: synthetic models are fed token ids");
    }
    let results = Results { records };
    if let Some(path) = &args.json {
        results.write(path)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot::write(&results.records, path)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn name(subject: &Subject) -> &str {
    match subject {
        Subject::Synthetic { name, .. } | Subject::File { name, .. } => name,
    }
}

/// An engine sized for the largest configuration of the sweep.
/// Checks a `--dtype` entry, keeping its spelling for the report.
fn parse_format(s: &str) -> Result<String, String> {
    s.parse::<WeightFormat>().map(|_| s.to_string())
}

/// Checks a `--device` entry, keeping its spelling for the report.
fn parse_device(s: &str) -> Result<String, String> {
    s.parse::<Device>().map(|_| s.to_string()).map_err(|e| e.to_string())
}

fn load(subject: &Subject, dtype: &str, device: &str, threads: usize, args: &BenchArgs) -> Result<Engine> {
    let max = |v: &[usize]| v.iter().copied().max().unwrap_or(1);
    let (p, n, b) = (max(&args.prompt_tokens), max(&args.gen_tokens), max(&args.batch));
    // on CUDA, a built package's plan fixes the pass size unless --batch-tokens says otherwise
    let planned =
        device != "cpu" && matches!(subject, Subject::File { path, .. } if path.join(PLAN_FILE).is_file());
    let batch_tokens = match args.batch_tokens {
        0 if planned => 0,
        0 => (b * p).clamp(p.min(8192), 8192),
        t => t,
    };
    let cfg = EngineConfig {
        threads,
        max_seqs: b,
        max_context: p + n + 1,
        max_batch_tokens: batch_tokens,
        weight_format: dtype.parse::<WeightFormat>().map_err(anyhow::Error::msg)?,
        device: device.parse::<Device>()?,
        kv_dtype: args.kv_dtype,
        cuda: crate::engine_args::cuda_options(true),
        ..EngineConfig::default()
    };
    match subject {
        Subject::Synthetic { name, config } => {
            let source = SyntheticSource::new(config.clone(), args.seed);
            Engine::from_source(config.clone(), &source, None, cfg)
                .with_context(|| format!("building {name}"))
        }
        Subject::File { path, .. } => {
            Engine::load(path, cfg).with_context(|| format!("loading {}", path.display()))
        }
    }
}

/// Sequences prompted so far in this process: every prompt starts differently from all earlier
/// ones, so no run is served from the prefix cache that earlier runs (warm-ups, repetitions,
/// other configurations) filled — TTFT always measures a cold prompt.
static PROMPTS_ISSUED: AtomicU64 = AtomicU64::new(0);

/// The prompt of each sequence and the seconds spent tokenizing them (`None` for token ids).
fn prompts(
    engine: &Engine,
    subject: &Subject,
    p: usize,
    b: usize,
    seed: u64,
) -> Result<(Vec<Vec<u32>>, Option<f64>)> {
    let n_vocab = engine.model().config.vocab_size;
    let first = PROMPTS_ISSUED.fetch_add(b as u64, Ordering::Relaxed);
    match subject {
        Subject::Synthetic { .. } => Ok((
            (0..b as u64).map(|i| measure::random_ids(p, n_vocab, seed.wrapping_add(first + i))).collect(),
            None,
        )),
        Subject::File { .. } => {
            let start = Instant::now();
            let mut out = Vec::with_capacity(b);
            for i in 0..b as u64 {
                // a different text per sequence, long enough for `p` tokens
                let text = format!("{}. {}", first + i, PROSE.repeat(p / 30 + 2));
                let mut ids = engine.tokenizer().encode(&text, true)?;
                ids.truncate(p);
                if ids.len() < p {
                    bail!("the prompt text gave only {} tokens", ids.len());
                }
                out.push(ids);
            }
            Ok((out, Some(start.elapsed().as_secs_f64())))
        }
    }
}

/// Warm-up runs, then `reps` timed runs of one configuration, summarised.
fn bench_one(
    engine: &mut Engine,
    subject: &Subject,
    (p, n, b): (usize, usize, usize),
    args: &BenchArgs,
    machine: &Machine,
) -> Result<Record> {
    measure::reset_peak_rss();
    for _ in 0..args.warmup {
        let (ids, _) = prompts(engine, subject, p, b, args.seed)?;
        measure::run_once(engine, &ids, n.min(8), &args.sampling())?;
    }
    let (mut ttft, mut decode, mut steps, mut tokenize, mut detok) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..args.reps {
        let (ids, tok_s) = prompts(engine, subject, p, b, args.seed)?;
        let t = measure::run_once(engine, &ids, n, &args.sampling())?;
        ttft.push(t.ttft.as_secs_f64());
        decode.push(t.decode.as_secs_f64());
        steps.extend(t.steps);
        tokenize.extend(tok_s);
        if args.profile && matches!(subject, Subject::File { .. }) {
            detok.push(measure::detokenize_seconds(engine, &t.generated)?);
        }
    }
    let peak_rss_mb = measure::peak_rss_mb();

    let map = |v: &[f64], f: &dyn Fn(f64) -> f64| Spread::of(&v.iter().map(|&x| f(x)).collect::<Vec<_>>());
    let (bf, pf, nf) = (b as f64, p as f64, n as f64);
    let steps = sorted(&steps);
    let (tpot50, tpot90) = (percentile(&steps, 50.0), percentile(&steps, 90.0));
    let e2e: Vec<f64> = ttft.iter().zip(&decode).map(|(a, d)| bf * nf / (a + d)).collect();

    let c = &engine.model().config;
    let kv_per_token = 2 * c.num_hidden_layers * c.kv_dim() * engine.kv_dtype().element_bytes();
    let mean_ctx = p + n / 2;
    let bytes = engine.model().streamed_weight_bytes() + b * kv_per_token * mean_ctx;
    let decode_gbs = if tpot50 > 0.0 { bytes as f64 / tpot50 / 1e9 } else { 0.0 };

    let profile = if args.profile {
        let sample_s = measure::sampling_seconds(c.vocab_size, 32, &args.sampling())?;
        let median = |v: &[f64]| Spread::of(v).median;
        let detok_s = (!detok.is_empty()).then(|| median(&detok));
        let decode_s = median(&decode) - sample_s * bf * (nf - 1.0) - detok_s.unwrap_or(0.0);
        Some(Profile {
            tokenize_ms: (!tokenize.is_empty()).then(|| median(&tokenize) * 1e3),
            prefill_ms: median(&ttft) * 1e3,
            decode_ms: decode_s.max(0.0) * 1e3,
            sampling_ms: sample_s * bf * nf * 1e3,
            detokenize_ms: detok_s.map(|s| s * 1e3),
        })
    } else {
        None
    };

    Ok(Record {
        model: name(subject).to_string(),
        synthetic: matches!(subject, Subject::Synthetic { .. }),
        dtype: String::new(),
        device: String::new(),
        threads: engine.config().threads,
        prompt_tokens: p,
        gen_tokens: n,
        batch: b,
        warmup: args.warmup,
        reps: args.reps,
        ttft_ms: map(&ttft, &|x| x * 1e3),
        prefill_tok_s: map(&ttft, &|x| bf * pf / x),
        decode_tok_s: map(&decode, &|x| (nf - 1.0) / x),
        tpot_ms_p50: tpot50 * 1e3,
        tpot_ms_p90: tpot90 * 1e3,
        batch_tok_s: map(&decode, &|x| bf * (nf - 1.0) / x),
        e2e_tok_s: Spread::of(&e2e),
        peak_rss_mb,
        device_mem_mb: None,
        decode_bytes_per_step: bytes as u64,
        decode_gbs,
        bandwidth_util: decode_gbs / machine.copy_gbs,
        load_s: 0.0,
        profile,
        machine: machine.clone(),
    })
}
