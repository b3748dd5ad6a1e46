//! One file per subcommand: its clap `Args` struct and `fn run(args, &Context)`.

pub mod models;
pub mod pull;

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use edgellm::registry::ModelStore;

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
}

/// Runs the command `args` names.
pub fn run(args: Args) -> Result<()> {
    let ctx = Context::from_args(&args)?;
    match args.command {
        Command::Pull(a) => pull::run(a, &ctx),
        Command::Models(a) => models::run(a, &ctx),
    }
}
