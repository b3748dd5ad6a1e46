//! Embeds the short git commit of the source tree as `EDGELLM_GIT_COMMIT` ("unknown" outside a
//! git checkout or without git), for `edgellm bench` records.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EDGELLM_GIT_COMMIT={commit}");
    // rebuild when HEAD moves: HEAD itself (checkout) and the branch it points to (commit);
    // `--git-path` resolves both inside worktrees too
    let mut watched = vec!["HEAD".to_string()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
