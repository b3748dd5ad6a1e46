//! One file per subcommand: its clap `Args` struct and `fn run(args, &Context)`.

pub mod bench;
pub mod build;
pub mod chat;
pub mod eval;
pub mod export;
pub mod infer;
pub mod inspect;
pub mod models;
pub mod pull;
pub mod run;
pub mod serve;
pub mod tokenize;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use edgellm::registry::{ModelStore, PullOptions};

use crate::progress::PullBars;

use crate::args::{Args, Command};

/// What every command may need, built once from the global options and the environment.
pub struct Context {
    /// `--home`, `$EDGELLM_HOME`, or `~/.cache/edgellm`.
    pub home: PathBuf,
}

impl Context {
    fn from_args(args: &Args) -> Result<Self> {
        let home = match &args.home {
            Some(home) => home.clone(),
            None => {
                let user_home = std::env::var_os("HOME")
                    .context("neither EDGELLM_HOME nor HOME is set; pass --home DIR")?;
                PathBuf::from(user_home).join(".cache").join("edgellm")
            }
        };
        Ok(Context { home })
    }

    /// The models directory under the home, with the built-in registry.
    pub fn store(&self) -> ModelStore {
        ModelStore::new(&self.home)
    }

    /// The file or directory a model argument names: a registry name (pulled when absent), a
    /// GGUF file or an HF checkpoint directory; no argument means the registry's default model.
    pub fn resolve_model(&self, spec: Option<&str>) -> Result<PathBuf> {
        let store = self.store();
        let spec = spec.unwrap_or(&store.registry().default_model().name).to_string();
        let mut bars = PullBars::new(&spec);
        let resolved = store
            .resolve(&spec, Some((&PullOptions::default(), &mut bars)))
            .with_context(|| format!("model `{spec}`"))?;
        bars.finish();
        Ok(resolved.path().to_path_buf())
    }
}

/// Runs the command `args` names.
pub fn run(args: Args) -> Result<()> {
    let ctx = Context::from_args(&args)?;
    match args.command {
        Command::Pull(a) => pull::run(a, &ctx),
        Command::Bench(a) => bench::run(&a, &ctx),
        Command::Models(a) => models::run(a, &ctx),
        Command::Run(a) => run::run(&a, &ctx.resolve_model(a.model.as_deref())?),
        Command::Chat(a) => chat::run(&a, &ctx.resolve_model(a.model.as_deref())?),
        Command::Serve(a) => serve::run(&a, &ctx.resolve_model(a.model.as_deref())?),
        Command::Infer(a) => infer::run(&a, &ctx.resolve_model(a.model.as_deref())?),
        Command::Eval(a) => match &a.what {
            eval::EvalCommand::Ppl(p) => eval::ppl(p, &ctx.resolve_model(p.model.as_deref())?),
            eval::EvalCommand::Kl(k) => {
                eval::kl(k, &ctx.resolve_model(Some(&k.model))?, &ctx.resolve_model(Some(&k.reference))?)
            }
        },
        Command::Tokenize(a) => tokenize::run(&a, &ctx.resolve_model(Some(&a.model))?),
        Command::Inspect(a) => inspect::run(&a),
        Command::Export(a) => export::run(&a, &ctx.resolve_model(Some(&a.source))?),
        Command::Build(a) => build::run(&a),
    }
}
