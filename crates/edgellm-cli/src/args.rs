//! The command line: global options and one subcommand. Each subcommand's own arguments live
//! next to its code in `commands/<name>.rs`; adding a command is one file there plus one variant
//! here and one arm in `commands::run`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands;

const ABOUT: &str = "edgellm: run LLMs from GGUF files or HF checkpoints on CPUs and NVIDIA GPUs";

const LONG_ABOUT: &str = "\
edgellm: run LLMs from GGUF files or HF checkpoints on CPUs and NVIDIA GPUs.

A model is named by a registry name (see `edgellm models`; `edgellm pull NAME` downloads it), \
the path of a GGUF file, an HF checkpoint directory (config.json + *.safetensors), or an engine \
package directory written by `edgellm export` (edgellm.json + weights.safetensors).";

const AFTER_HELP: &str = "\
Models are stored under $EDGELLM_HOME/models/<name>/model.gguf (default ~/.cache/edgellm).

Examples:
  edgellm run -p \"Write a Python function that reverses a string.\"
                                          answer with the default model (pulled on first use)
  edgellm chat gemma-3-270m               chat with another registry model
  edgellm run ./model.gguf --raw -p \"def fib(n):\" -n 64 --json
  edgellm infer --input requests.json --output responses.json --profile
                                          a batch request file, TensorRT-Edge-LLM's format
  edgellm eval ppl --text license.txt     perplexity of the default model on a text
  edgellm tokenize qwen2.5-coder-0.5b-instruct \"hello world\" --json
  edgellm inspect ./model.gguf            metadata and tensor table
  edgellm export qwen2.5-coder-0.5b-instruct -o qwen-int4 --weights int4 --awq
                                          quantize once into a package; `edgellm run qwen-int4`
  edgellm build qwen-int4 --device cuda   fix its limits for this GPU and compile its kernels
                                          (--arch sm_87: cross-build for Jetson, no GPU needed)
  edgellm models                          list the known models and which are downloaded
  edgellm pull qwen2.5-coder-0.5b-instruct  download and verify a model";

/// `edgellm [OPTIONS] <COMMAND>`.
#[derive(Debug, Parser)]
#[command(name = "edgellm", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Args {
    /// Where models are stored [default: ~/.cache/edgellm]
    #[arg(long, global = true, env = "EDGELLM_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// One variant per file in `commands/`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download a model from the registry, assemble and verify it
    Pull(commands::pull::PullArgs),
    /// List the registry's models and which of them are downloaded
    Models(commands::models::ModelsArgs),
    /// Generate text from a prompt (streams to stdout, timings on stderr)
    Run(commands::run::RunArgs),
    /// Chat interactively; earlier turns' KV is kept, not recomputed
    Chat(commands::chat::ChatArgs),
    /// Serve a model over an OpenAI-compatible HTTP API
    Serve(commands::serve::ServeArgs),
    /// Run a file of requests (TensorRT-Edge-LLM's input JSON) and write the responses
    Infer(commands::infer::InferArgs),
    /// Evaluate a model (perplexity)
    Eval(commands::eval::EvalArgs),
    /// Print the token ids (and pieces) of a text
    Tokenize(commands::tokenize::TokenizeArgs),
    /// Print a GGUF or safetensors file's metadata and tensor table
    Inspect(commands::inspect::InspectArgs),
    /// Export a model (GGUF, HF directory or registry name) to an engine package: weights
    /// quantized and laid out for the runtime, loaded later without conversion
    Export(commands::export::ExportArgs),
    /// Build a package for CUDA: fix its limits (batch, context, KV pool) against a device and
    /// compile its kernels into it (plan.json, kernels/), for the device's arch or --arch
    Build(commands::build::BuildArgs),
    /// Benchmark a model or a synthetic shape: TTFT, prefill/decode tok/s, TPOT, memory
    Bench(commands::bench::BenchArgs),
}
