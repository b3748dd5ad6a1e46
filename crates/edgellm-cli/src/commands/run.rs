//! `edgellm run`: one prompt in, streamed text out; timings on stderr; `--json` for machines.

use std::io::Write;
use std::ops::ControlFlow;

use anyhow::{Context, Result};
use clap::Args;
use edgellm::engine::{Completion, Event, Prompt};
use edgellm::tokenizer::ChatMessage;
use serde_json::json;

use crate::engine_args::{EngineArgs, SamplingArgs};

/// Generate text from a prompt.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Model: a name from `edgellm models` (pulled when absent), a .gguf file, or an HF
    /// checkpoint directory. Default: qwen2.5-coder-0.5b-instruct.
    pub model: Option<String>,
    /// The prompt (read from standard input when absent).
    #[arg(short, long)]
    pub prompt: Option<String>,
    /// System message (chat models).
    #[arg(long)]
    pub system: Option<String>,
    /// Send the prompt as plain text, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object (prompt and generated ids, text, finish reason, timings,
    /// logprobs) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs the command on the resolved model path.
pub fn run(args: &RunArgs, model: &std::path::Path) -> Result<()> {
    let mut engine = args.engine.load(model, 1)?;
    let text = match &args.prompt {
        Some(p) => p.clone(),
        None => std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?,
    };
    let prompt = if args.raw || engine.chat_template().is_none() {
        if args.system.is_some() && !args.raw {
            eprintln!("warning: the model has no chat template; --system is ignored");
        }
        Prompt::Text(text)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::system(system.clone()));
        }
        messages.push(ChatMessage::user(text));
        Prompt::Chat(messages)
    };
    let params = args.sampling.params()?;
    let mut seq = engine.new_sequence(&prompt, params)?;
    let mut logprobs = Vec::new();
    let mut completion: Option<Completion> = None;
    let stdout = std::io::stdout();
    let json_mode = args.json;
    engine.generate(&mut [&mut seq], &mut |_, event| {
        match event {
            Event::Token(t) => {
                if json_mode {
                    if let Some(lp) = t.logprob {
                        let top: Vec<_> = t
                            .top_logprobs
                            .unwrap_or_default()
                            .iter()
                            .map(|x| json!({"id": x.id, "logprob": x.logprob}))
                            .collect();
                        logprobs.push(json!({"id": t.id, "logprob": lp, "top": top}));
                    }
                } else if !t.text.is_empty() {
                    let mut out = stdout.lock();
                    let _ = out.write_all(t.text.as_bytes());
                    let _ = out.flush();
                }
            }
            Event::Done(c) => completion = Some(c.clone()),
        }
        ControlFlow::Continue(())
    })?;
    let c = completion.context("generation ended without a completion record")?;
    let (prefill_tps, decode_tps) =
        (c.timings.prefill_tok_s(c.usage.prompt_tokens), c.timings.decode_tok_s(c.usage.completion_tokens));
    if json_mode {
        let out = json!({
            "prompt_ids": &seq.tokens[..seq.n_prompt()],
            "generated_ids": seq.generated_ids(),
            "text": c.text,
            "finish_reason": format!("{:?}", c.finish_reason).to_lowercase(),
            "usage": {"prompt_tokens": c.usage.prompt_tokens, "completion_tokens": c.usage.completion_tokens},
            "timings": {
                "prefill_ms": c.timings.prefill.as_secs_f64() * 1e3,
                "decode_ms": c.timings.decode.as_secs_f64() * 1e3,
                "prompt_tok_s": prefill_tps,
                "generation_tok_s": decode_tps,
                "load_ms": engine.load_time().as_secs_f64() * 1e3,
            },
            "logprobs": if args.sampling.logprobs.is_some() { json!(logprobs) } else { serde_json::Value::Null },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
    }
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generated: {} tokens, {:.1} tok/s | finish: {:?}",
        c.usage.prompt_tokens, prefill_tps, c.usage.completion_tokens, decode_tps, c.finish_reason
    );
    engine.release(&mut seq);
    Ok(())
}
