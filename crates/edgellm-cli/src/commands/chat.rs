//! `edgellm chat`: an interactive multi-turn conversation. Every turn re-renders the whole
//! conversation with the chat template, and the engine keeps the KV of the part it has already
//! seen, so earlier turns are not recomputed.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use anyhow::{bail, Result};
use clap::Args;
use edgellm::engine::{Event, Prompt, Sequence};
use edgellm::tokenizer::ChatMessage;

use crate::engine_args::{EngineArgs, SamplingArgs};

/// Chat with a model interactively (`/reset` starts over, `/exit` or Ctrl-D quits).
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Model: a name from `edgellm models` (pulled when absent), a .gguf file, or an HF
    /// checkpoint directory. Default: qwen2.5-coder-0.5b-instruct.
    pub model: Option<String>,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs the chat loop on the resolved model path.
pub fn run(args: &ChatArgs, model: &std::path::Path) -> Result<()> {
    let mut engine = args.engine.load(model, 1)?;
    if engine.chat_template().is_none() {
        bail!("{} has no chat template; use `edgellm run --raw` for plain completion", model.display());
    }
    let params = args.sampling.params()?;
    let initial: Vec<ChatMessage> = args.system.iter().map(|s| ChatMessage::system(s.clone())).collect();
    let mut messages = initial.clone();
    let mut seq: Option<Sequence> = None;
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        eprint!("> ");
        line.clear();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let input = line.trim_end_matches(['\r', '\n']);
        match input.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = initial.clone();
                if let Some(mut s) = seq.take() {
                    engine.release(&mut s);
                }
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(input.to_string()));
        let ids = engine.prompt_ids(&Prompt::Chat(messages.clone()))?;
        let current = match seq.as_mut() {
            Some(s) => {
                engine.extend_sequence(s, ids, params.clone())?;
                s
            }
            None => seq.insert(engine.new_sequence(&Prompt::Ids(ids), params.clone())?),
        };
        let mut reply = String::new();
        let mut stats = String::new();
        engine.generate(&mut [current], &mut |_, event| {
            match event {
                Event::Token(t) => {
                    print!("{}", t.text);
                    let _ = std::io::stdout().flush();
                }
                Event::Done(c) => {
                    reply = c.text.clone();
                    stats = format!(
                        "[{} prompt tokens ({} reused), {:.1} tok/s prompt, {} generated at {:.1} tok/s]",
                        c.usage.prompt_tokens,
                        c.usage.cached_tokens,
                        c.timings.prefill_tok_s(c.usage.prompt_tokens - c.usage.cached_tokens),
                        c.usage.completion_tokens,
                        c.timings.decode_tok_s(c.usage.completion_tokens),
                    );
                }
            }
            ControlFlow::Continue(())
        })?;
        println!();
        eprintln!("{stats}");
        messages.push(ChatMessage::assistant(reply));
    }
    if let Some(mut s) = seq {
        engine.release(&mut s);
    }
    Ok(())
}
