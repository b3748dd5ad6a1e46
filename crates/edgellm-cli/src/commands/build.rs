//! `edgellm build PKG --device cuda`: prepares an engine package for CUDA, like TensorRT's
//! engine build — fixes the engine's limits against the device's memory and compiles the kernels
//! ahead of time into the package (`plan.json`, `kernels/<arch>.cubin`; see `edgellm::package`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use edgellm::backend::Device;
use edgellm::engine::KvDtype;
use edgellm::package::{self, BuildOptions, Plan};

use crate::engine_args::cuda_options;

const AFTER_HELP: &str = "\
With a device (the default, cuda:0), its arch is built for and the KV pool is sized from its \
free memory once the model is loaded there: max-seqs × max-context positions, or fewer where \
fewer fit (keeping a tenth of the free memory, at least 256 MiB, for the rest). With --arch, \
the kernels are compiled for each arch named (no GPU needed: only NVRTC), and the device is \
measured only when its arch is among them; otherwise --kv-pool-tokens is required.

Afterwards, every command that loads PKG on CUDA (run, chat, serve, infer, bench, eval) takes \
the plan's limits as its defaults; a limit asked beyond the plan's is an error (rebuild with \
--force, or pass --no-plan). The CUBIN of the device's arch loads without NVRTC; one built \
from other kernel sources, damaged, or missing for the device's arch falls back to NVRTC with \
a warning, and is an error where NVRTC is absent or EDGELLM_CUDA_NVRTC=0.

Examples:
  edgellm build qwen-int4 --device cuda            measure this GPU, compile for its arch
  edgellm build qwen-int4 --arch sm_87 --max-context 2048 --kv-pool-tokens 8192
                                                   cross-build for Jetson Orin, here";

/// Arguments of `edgellm build`.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct BuildArgs {
    /// The engine package to build (a directory written by `edgellm export`).
    pub package: PathBuf,
    /// The CUDA device to measure and build for: cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    pub device: Device,
    /// Compile for this arch (repeatable: sm_87 for Jetson Orin, sm_89, sm_90a for H100, …)
    /// instead of the device's; works without a GPU.
    #[arg(long = "arch", value_name = "sm_XX")]
    pub archs: Vec<String>,
    /// Most sequences in one batch [default: 8].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_seqs: usize,
    /// Most tokens per forward pass (prompt chunk) [default: 512].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_batch_tokens: usize,
    /// Longest sequence, prompt plus generated [default: the model's limit, at most 4096].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_context: usize,
    /// KV pool positions shared by all sequences [default: from the device's free memory;
    /// required without a device].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub kv_pool_tokens: usize,
    /// KV-cache element type: f16 or fp8 [default: the package's recorded one].
    #[arg(long, default_value = "auto", hide_default_value = true)]
    pub kv_dtype: KvDtype,
    /// Replace an existing plan.json.
    #[arg(long)]
    pub force: bool,
}

/// Builds the package and prints the plan.
pub fn run(args: &BuildArgs) -> Result<()> {
    let ordinal = match args.device {
        Device::Cuda(n) => n,
        d => bail!("--device {d}: `edgellm build` prepares a package for CUDA; pass cuda or cuda:N"),
    };
    if !package::is_package(&args.package) {
        bail!(
            "{} is not an engine package (no {}); write one with `edgellm export`",
            args.package.display(),
            package::MANIFEST_FILE
        );
    }
    let opts = BuildOptions {
        ordinal,
        archs: args.archs.clone(),
        max_seqs: args.max_seqs,
        max_batch_tokens: args.max_batch_tokens,
        max_context: args.max_context,
        kv_tokens: args.kv_pool_tokens,
        kv_dtype: args.kv_dtype,
        cuda: cuda_options(true),
        force: args.force,
    };
    let started = Instant::now();
    let plan = package::build(&args.package, &opts, &mut |e| eprintln!("{e}"))
        .with_context(|| format!("building {}", args.package.display()))?;
    eprintln!("built {} in {:.1} s", args.package.display(), started.elapsed().as_secs_f64());
    print!("{}", describe(&plan));
    Ok(())
}

/// The plan in a few lines (also what `edgellm inspect` prints for a built package).
pub fn describe(plan: &Plan) -> String {
    let l = &plan.limits;
    let mut out = format!(
        "plan: {} seqs, {} batch tokens, context {}, KV pool {} positions of {} ({:.1} MB, blocks of {})\n",
        l.max_seqs,
        l.max_batch_tokens,
        l.max_context,
        l.kv_tokens,
        l.kv_dtype,
        plan.kv_bytes as f64 / 1e6,
        l.kv_block_size
    );
    match &plan.device {
        Some(d) => {
            out += &format!(
                "  measured on {} ({}, {:.1} GiB, {:.1} GiB free after loading the model)\n",
                d.name,
                d.arch,
                d.memory_bytes as f64 / (1u64 << 30) as f64,
                d.free_bytes as f64 / (1u64 << 30) as f64
            )
        }
        None => out += "  cross-built (no device measured)\n",
    }
    for k in &plan.kernels {
        out += &format!(
            "  {}: {} bytes, NVRTC {}, kernel sources {}\n",
            k.file,
            k.bytes,
            k.nvrtc,
            &k.source_sha256[..12.min(k.source_sha256.len())]
        );
    }
    out
}
