//! `edgellm models`: the registry as a table, with what is on disk.

use anyhow::Result;
use clap::Args;
use edgellm::registry::ModelState;
use indicatif::HumanBytes;

use super::Context;

/// Arguments of `edgellm models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Print JSON (one object per model) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// Prints the table (or JSON) on stdout.
pub fn run(args: ModelsArgs, ctx: &Context) -> Result<()> {
    let store = ctx.store();
    let registry = store.registry();
    let default = &registry.default_model().name;
    let rows: Vec<_> = registry
        .models()
        .iter()
        .map(|m| {
            let state = store.state(m);
            let path = store.model_path(&m.name);
            (m, state, path)
        })
        .collect();

    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(m, state, path)| {
                serde_json::json!({
                    "name": m.name, "description": m.description, "architecture": m.architecture,
                    "chat": m.chat, "license": m.license, "size": m.size, "sha256": m.sha256,
                    "default": &m.name == default, "status": status(*state), "path": path,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }

    let mut table = vec![["NAME", "SIZE", "ARCH", "CHAT", "STATUS", "PATH"].map(String::from)];
    for (m, state, path) in &rows {
        let star = if &m.name == default { "*" } else { "" };
        let shown_path =
            if *state == ModelState::Absent { "-".to_string() } else { path.display().to_string() };
        table.push([
            format!("{}{star}", m.name),
            HumanBytes(m.size).to_string(),
            m.architecture.clone(),
            if m.chat { "yes" } else { "no" }.to_string(),
            status(*state).to_string(),
            shown_path,
        ]);
    }
    let widths: Vec<usize> =
        (0..6).map(|c| table.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in &table {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
    println!();
    println!("* default model (used when a command names none)");
    println!("models live in {}/models (set EDGELLM_HOME or --home to change)", ctx.home.display());
    println!("download one with `edgellm pull NAME`");
    Ok(())
}

fn status(state: ModelState) -> &'static str {
    match state {
        ModelState::Absent => "absent",
        ModelState::Unverified => "present (unverified)",
        ModelState::Verified => "present",
        ModelState::Damaged => "damaged (pull again)",
    }
}
