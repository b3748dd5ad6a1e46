//! `edgellm tokenize MODEL TEXT`: the token ids (and pieces) the model's tokenizer gives.

use anyhow::Result;
use clap::Args;
use edgellm::engine::OpenedSource;
use edgellm::tokenizer::ChatMessage;
use serde_json::json;

/// Arguments of `edgellm tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Model: a registry name, a .gguf file, or an HF checkpoint directory
    pub model: String,
    /// The text to tokenize
    pub text: String,
    /// Render TEXT as a user message with the model's chat template first
    #[arg(long)]
    pub chat: bool,
    /// Do not add BOS even where the model adds it by default
    #[arg(long)]
    pub no_special: bool,
    /// Print JSON: ids, pieces and the decoded text
    #[arg(long)]
    pub json: bool,
}

/// Runs the command on the resolved model path.
pub fn run(args: &TokenizeArgs, model: &std::path::Path) -> Result<()> {
    let tokenizer = OpenedSource::open(model)?.tokenizer;
    let (text, add_special) = if args.chat {
        let template = tokenizer
            .chat_template_renderer()?
            .ok_or_else(|| anyhow::anyhow!("{} has no chat template", model.display()))?;
        (template.render(&[ChatMessage::user(args.text.clone())], true, None)?, false)
    } else {
        (args.text.clone(), !args.no_special)
    };
    let ids = tokenizer.encode(&text, add_special)?;
    let pieces: Vec<String> =
        ids.iter().map(|&id| tokenizer.token_to_piece(id).unwrap_or_default()).collect();
    if args.json {
        let out = json!({"text": text, "ids": ids, "pieces": pieces, "n_tokens": ids.len()});
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for (id, piece) in ids.iter().zip(&pieces) {
            println!("{id:>8}  {piece:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
