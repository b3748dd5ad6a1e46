//! `edgellm serve`: the OpenAI-compatible HTTP server (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`, `/health`, `/metrics`) over one model.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use edgellm::scheduler::{Scheduler, SchedulerConfig};
use edgellm_server::ServerConfig;

use crate::engine_args::EngineArgs;

/// Serve a model over HTTP.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model: a name from `edgellm models` (pulled when absent), a .gguf file, or an HF
    /// checkpoint directory. Default: qwen2.5-coder-0.5b-instruct.
    pub model: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* requests.
    #[arg(long, env = "EDGELLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Most sequences generating at once (continuous batching) [default: a built package's
    /// plan.json, else 8].
    #[arg(long, default_value_t = 0, hide_default_value = true)]
    pub max_seqs: usize,
    /// Most requests waiting for a slot; more get 503.
    #[arg(long, default_value_t = 256)]
    pub max_waiting: usize,
    /// Name the model is served as [default: the registry name or file name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Runs the server on the resolved model path until ctrl-c.
pub fn run(args: &ServeArgs, model: &Path) -> Result<()> {
    let engine = args.engine.load(model, args.max_seqs)?;
    let scheduler = Scheduler::spawn(engine, SchedulerConfig { max_waiting: args.max_waiting })?;
    let model_name =
        args.served_model_name.clone().unwrap_or_else(|| model_name(args.model.as_deref(), model));
    let cfg = ServerConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone(),
        model_name,
        ..ServerConfig::default()
    };
    edgellm_server::serve(scheduler, cfg)
}

/// A registry name as given; for a path, the file (or directory) name; for a registry model
/// stored as `<name>/model.gguf`, the directory's name.
fn model_name(spec: Option<&str>, path: &Path) -> String {
    if let Some(spec) = spec.filter(|s| !Path::new(s).exists()) {
        return spec.to_string();
    }
    let name = |p: &Path| p.file_stem().map(|s| s.to_string_lossy().into_owned());
    match name(path) {
        Some(stem) if stem == "model" => path.parent().and_then(name).unwrap_or(stem),
        Some(stem) => stem,
        None => "edgellm".into(),
    }
}
