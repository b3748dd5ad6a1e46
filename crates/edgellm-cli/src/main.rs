//! `edgellm`: the command-line front end of the engine. Parses arguments (`args`), reads the
//! environment (`EDGELLM_HOME`), runs one command from `commands/` and turns its error into
//! `error: …` on stderr with exit code 1 (usage errors exit with 2, from clap).

mod args;
mod bench;
mod commands;
mod engine_args;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Args::parse();
    match commands::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain: "outer: inner: root cause"
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
