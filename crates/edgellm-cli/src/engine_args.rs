//! Flags shared by every command that runs a model (`run`, `chat`, `eval`, `bench`, `serve`):
//! which model, how the engine runs, how tokens are sampled.

use anyhow::{Context, Result};
use clap::Args;
use edgellm::backend::cuda::CudaOptions;
use edgellm::backend::Device;
use edgellm::engine::{Engine, EngineConfig, KvDtype};
use edgellm::quant::WeightFormat;
use edgellm::SamplingParams;

/// How the engine runs.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Worker threads (0: one per core).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Longest sequence, prompt plus generated tokens (0: a built package's plan.json, else
    /// the model's limit, at most 4096).
    #[arg(short = 'c', long = "ctx", default_value_t = 0)]
    pub max_context: usize,
    /// Weight storage: f32 (exact; CPU only), bf16 or f16 (half the memory, faster decode),
    /// int8 (per-channel), int4 (groups of 128; int4-gN for groups of N) or fp8 (E4M3,
    /// per-channel), quantized at load; every format but f32 also runs on CUDA. Engine packages
    /// (`edgellm export`) load as stored.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightFormat,
    /// Most tokens per forward pass (prompt chunk size) [default: a built package's plan.json,
    /// else 512].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub batch_tokens: usize,
    /// Where to run: auto (a CUDA GPU when present and --dtype is not f32, else the CPU),
    /// cpu, cuda or cuda:N. Asking for CUDA where there is none is an error.
    #[arg(long, default_value = "auto")]
    pub device: Device,
    /// KV-cache element type: auto (f32 on the CPU, f16 on CUDA), f32, f16, bf16 or fp8
    /// (E4M3, half of f16's memory, with the package's calibrated per-tensor scales
    /// `layers.N.kv_scale`; on CUDA a layer without one uses 1.0, values saturating at +-448).
    #[arg(long, default_value = "auto")]
    pub kv_dtype: KvDtype,
    /// Run every CUDA decode step eagerly instead of replaying captured CUDA graphs.
    #[arg(long)]
    pub no_cuda_graphs: bool,
    /// Ignore a package's plan.json (`edgellm build`): neither its limits nor its compiled
    /// kernels. With a plan, on CUDA, the plan's limits are the defaults and exceeding one is an
    /// error; its kernels load without NVRTC (EDGELLM_CUDA_NVRTC=0 forbids NVRTC, to prove it).
    #[arg(long)]
    pub no_plan: bool,
}

/// CUDA kernel options from the environment: NVRTC headers under `$CUDA_HOME/include`
/// (default /usr/local/cuda), compiled kernels cached under `$EDGELLM_HOME/kernels`, NVRTC
/// forbidden by `EDGELLM_CUDA_NVRTC=0` (only a built package's kernels then load).
pub fn cuda_options(graphs: bool) -> CudaOptions {
    let home = std::env::var_os("EDGELLM_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/edgellm")));
    CudaOptions {
        include_dir: std::env::var_os("CUDA_HOME").map(|h| std::path::PathBuf::from(h).join("include")),
        kernel_cache: home.map(|h| h.join("kernels")),
        graphs,
        nvrtc: std::env::var_os("EDGELLM_CUDA_NVRTC").is_none_or(|v| v != "0"),
        ..CudaOptions::new()
    }
}

impl EngineArgs {
    /// The engine configuration these flags describe, for at most `max_seqs` sequences at once
    /// (0: a plan's, else the engine's default).
    pub fn config(&self, max_seqs: usize) -> EngineConfig {
        EngineConfig {
            threads: self.threads,
            max_context: self.max_context,
            max_batch_tokens: self.batch_tokens,
            max_seqs,
            weight_format: self.dtype,
            device: self.device,
            kv_dtype: self.kv_dtype,
            cuda: cuda_options(!self.no_cuda_graphs),
            ignore_plan: self.no_plan,
            ..EngineConfig::default()
        }
    }

    /// Loads `model` (already resolved to a file or directory), reporting the load time on stderr.
    pub fn load(&self, model: &std::path::Path, max_seqs: usize) -> Result<Engine> {
        let engine = Engine::load(model, self.config(max_seqs))
            .with_context(|| format!("loading {}", model.display()))?;
        eprintln!(
            "loaded {} in {:.2} s ({:.0} MB of weights, {} threads)",
            model.display(),
            engine.load_time().as_secs_f64(),
            engine.model().weight_bytes() as f64 / 1e6,
            engine.config().threads,
        );
        if let Some((name, mem)) = engine.device() {
            eprintln!("running on {name}, {:.1} GiB", mem as f64 / (1u64 << 30) as f64);
            let c = engine.config();
            eprintln!(
                "kernels {}; limits: {} seqs, {} batch tokens, context {}, {} KV positions ({:?})",
                engine.kernels().map_or("?".into(), |k| k.to_string()),
                c.max_seqs,
                c.max_batch_tokens,
                c.max_context(),
                c.kv_blocks() * c.kv_block_size,
                engine.kv_dtype(),
            );
        }
        if let Some((dtype, bytes)) = engine.kv_cache() {
            let c = engine.config();
            eprintln!(
                "KV cache: {dtype:?}, {} positions, {:.1} MB",
                c.kv_blocks() * c.kv_block_size,
                bytes as f64 / 1e6
            );
        }
        Ok(engine)
    }
}

/// How tokens are chosen.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Divide the logits of tokens already present by this (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Subtract this from the logits of tokens already generated (OpenAI presence penalty).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Subtract this times the count of each generated token (OpenAI frequency penalty).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Bias a token's logit: `ID=BIAS`, repeatable.
    #[arg(long = "logit-bias", value_name = "ID=BIAS")]
    pub logit_bias: Vec<String>,
    /// RNG seed: the same seed gives the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 512)]
    pub max_tokens: usize,
    /// Stop before this text (repeatable); it is never printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Report the log-probabilities of the N most likely tokens at each step (with --json).
    #[arg(long, value_name = "N")]
    pub logprobs: Option<usize>,
}

impl SamplingArgs {
    /// The sampling parameters, validated.
    pub fn params(&self) -> Result<SamplingParams> {
        let mut logit_bias = std::collections::BTreeMap::new();
        for item in &self.logit_bias {
            let (id, bias) =
                item.split_once('=').with_context(|| format!("--logit-bias `{item}`: expected ID=BIAS"))?;
            let id: u32 =
                id.trim().parse().with_context(|| format!("--logit-bias `{item}`: bad token id"))?;
            let bias: f32 =
                bias.trim().parse().with_context(|| format!("--logit-bias `{item}`: bad bias"))?;
            logit_bias.insert(id, bias);
        }
        let params = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias,
            seed: self.seed,
            max_tokens: Some(self.max_tokens),
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            ..SamplingParams::default()
        };
        params.validate()?;
        Ok(params)
    }
}
