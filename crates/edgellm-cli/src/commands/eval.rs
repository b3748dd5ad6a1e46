//! `edgellm eval ppl`: perplexity of a model on a text file.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};

use crate::engine_args::EngineArgs;

/// Evaluate a model.
#[derive(Debug, Args)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub what: EvalCommand,
}

/// What to evaluate.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Perplexity on a text: exp(mean negative log-likelihood of each next token).
    Ppl(PplArgs),
}

/// `eval ppl` flags.
#[derive(Debug, Args)]
pub struct PplArgs {
    /// Model: a name from `edgellm models`, a .gguf file, or an HF checkpoint directory.
    pub model: Option<String>,
    /// The text file to score.
    #[arg(long)]
    pub text: std::path::PathBuf,
    /// Prepend BOS to each window even for models that do not add it by default.
    #[arg(long)]
    pub bos: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Engine flags; `--ctx N` is also the window: the text is scored in independent windows of
    /// N tokens (default: the whole text, up to the model's context or 4096).
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs `eval ppl` on the resolved model path.
pub fn ppl(args: &PplArgs, model: &std::path::Path) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.text).with_context(|| format!("reading {}", args.text.display()))?;
    let mut engine = args.engine.load(model, 1)?;
    let tokenizer = engine.tokenizer();
    let add_bos = args.bos || tokenizer.adds_bos();
    let mut tokens = tokenizer.encode(&text, false)?;
    let ctx = (tokens.len() + add_bos as usize).min(engine.config().max_context());
    if add_bos {
        // one BOS at the start of every window, as the model saw text in training
        let bos = tokenizer.bos_id().context("--bos: the model has no BOS token")?;
        let body = ctx - 1;
        tokens = tokens.chunks(body).flat_map(|w| std::iter::once(bos).chain(w.iter().copied())).collect();
    }
    let started = std::time::Instant::now();
    let r = engine.perplexity(&tokens, ctx)?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let out = serde_json::json!({
            "model": model.display().to_string(), "text": args.text.display().to_string(),
            "ppl": r.ppl, "nll": r.nll, "predicted_tokens": r.predicted, "windows": r.windows, "ctx": ctx,
            "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "perplexity {:.4} (nll {:.4}) over {} predicted tokens in {} window(s) of {ctx}; {:.1} s, {:.0} tok/s",
            r.ppl,
            r.nll,
            r.predicted,
            r.windows,
            secs,
            tokens.len() as f64 / secs
        );
    }
    Ok(())
}
