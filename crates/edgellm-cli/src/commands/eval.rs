//! `edgellm eval ppl`: perplexity of a model on a text file; `edgellm eval kl`: how far a model's
//! next-token distributions are from a reference model's on a text (KL divergence).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgellm::engine::kl_divergence;
use edgellm::quant::WeightFormat;
use edgellm::Tokenizer;

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
    /// KL divergence of a model's next-token distributions from a reference's (a quantized
    /// package against its full-precision source) at every predicted position of a text; also
    /// how often both pick the same most likely token and both perplexities on the same tokens.
    /// Far finer than comparing perplexities: it ranks quantizations whose perplexities differ
    /// by less than the noise of one text.
    Kl(KlArgs),
}

/// `eval ppl` flags.
#[derive(Debug, Args)]
pub struct PplArgs {
    /// Model: a name from `edgellm models`, a .gguf file, or an HF checkpoint directory.
    pub model: Option<String>,
    #[command(flatten)]
    pub scored: ScoredText,
}

/// `eval kl` flags.
#[derive(Debug, Args)]
pub struct KlArgs {
    /// The model judged: a name from `edgellm models`, a .gguf file, an HF checkpoint directory
    /// or an engine package.
    pub model: String,
    /// The reference (usually the full-precision source of MODEL), in any form MODEL takes; it
    /// must share MODEL's tokenizer. Loaded with the same engine flags but --dtype.
    #[arg(long)]
    pub reference: String,
    /// Weight storage of the reference when quantized at load (default: --dtype); an engine
    /// package loads as stored.
    #[arg(long)]
    pub reference_dtype: Option<WeightFormat>,
    #[command(flatten)]
    pub scored: ScoredText,
}

/// What every `eval` command scores, and how.
#[derive(Debug, Args)]
pub struct ScoredText {
    /// The text file to score.
    #[arg(long)]
    pub text: PathBuf,
    /// Prepend BOS to each window even for models that do not add it by default.
    #[arg(long)]
    pub bos: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Engine flags (`eval kl`: of both models); `--ctx N` is also the window: the text is scored
    /// in independent windows of N tokens (default: the whole text, up to the model's context or
    /// 4096).
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ScoredText {
    /// The text file's contents.
    fn read(&self) -> Result<String> {
        std::fs::read_to_string(&self.text).with_context(|| format!("reading {}", self.text.display()))
    }

    /// `text`'s tokens as `tokenizer` encodes them, to be scored in windows of the returned
    /// length (the whole text, up to `max_context`); with BOS (`--bos` or the model's default) at
    /// the start of every window, as the model saw text in training.
    fn tokens(&self, text: &str, tokenizer: &Tokenizer, max_context: usize) -> Result<(Vec<u32>, usize)> {
        let add_bos = self.bos || tokenizer.adds_bos();
        let mut tokens = tokenizer.encode(text, false)?;
        let ctx = (tokens.len() + add_bos as usize).min(max_context);
        if add_bos {
            let bos = tokenizer.bos_id().context("--bos: the model has no BOS token")?;
            let body = ctx - 1;
            tokens =
                tokens.chunks(body).flat_map(|w| std::iter::once(bos).chain(w.iter().copied())).collect();
        }
        Ok((tokens, ctx))
    }
}

/// Runs `eval ppl` on the resolved model path.
pub fn ppl(args: &PplArgs, model: &Path) -> Result<()> {
    let args = &args.scored;
    let text = args.read()?; // before the model loads: a wrong path fails at once
    let mut engine = args.engine.load(model, 1)?;
    let (tokens, ctx) = args.tokens(&text, engine.tokenizer(), engine.config().max_context())?;
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

/// Runs `eval kl` on the resolved model and reference paths.
pub fn kl(args: &KlArgs, model: &Path, reference: &Path) -> Result<()> {
    let (scored, engine_args) = (&args.scored, &args.scored.engine);
    let ref_engine_args =
        EngineArgs { dtype: args.reference_dtype.unwrap_or(engine_args.dtype), ..engine_args.clone() };
    let text = scored.read()?; // before the models load: a wrong path fails at once
    let mut ref_engine = ref_engine_args.load(reference, 1)?;
    let mut engine = engine_args.load(model, 1)?;
    let max_context = ref_engine.config().max_context().min(engine.config().max_context());
    let (tokens, ctx) = scored.tokens(&text, ref_engine.tokenizer(), max_context)?;
    // the same vocabulary size with another tokenizer would compare unrelated distributions
    if scored.tokens(&text, engine.tokenizer(), max_context)?.0 != tokens {
        bail!(
            "{} and the reference {} tokenize the text differently; KL divergence needs one tokenizer",
            model.display(),
            reference.display()
        );
    }
    let started = std::time::Instant::now();
    let r = kl_divergence(&mut ref_engine, &mut engine, &tokens, ctx, &mut |done, total| {
        eprintln!("window {done}/{total} scored by both models, {:.1} s", started.elapsed().as_secs_f64())
    })?;
    let secs = started.elapsed().as_secs_f64();
    if scored.json {
        let out = serde_json::json!({
            "model": model.display().to_string(), "reference": reference.display().to_string(),
            "text": scored.text.display().to_string(),
            "kl_mean": r.mean, "kl_mean_stderr": r.mean_stderr, "kl_median": r.median, "kl_p99": r.p99,
            "kl_max": r.max, "same_top1": r.same_top1, "ppl_model": r.model_ppl, "ppl_reference": r.ref_ppl,
            "predicted_tokens": r.predicted, "windows": r.windows, "ctx": ctx, "seconds": secs,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "KL divergence {:.6} ± {:.6} nats (median {:.6}, p99 {:.6}, max {:.6}), same top-1 {:.2} % \
             over {} predicted tokens in {} window(s) of {ctx}; {:.1} s",
            r.mean,
            r.mean_stderr,
            r.median,
            r.p99,
            r.max,
            100.0 * r.same_top1,
            r.predicted,
            r.windows,
            secs
        );
        println!("perplexity: model {:.4}, reference {:.4}", r.model_ppl, r.ref_ppl);
    }
    Ok(())
}
