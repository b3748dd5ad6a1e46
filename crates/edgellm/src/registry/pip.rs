//! Downloading one wheel with `python -m pip download`. pip brings the user's index settings,
//! proxies and certificates (`pip.conf`, `PIP_*` variables) for free.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a download failed.
#[derive(Debug)]
pub(crate) enum PipError {
    /// pip could not be started at all: retrying will not help.
    Spawn(String),
    /// pip ran and failed (network, no such version, …): worth retrying.
    Failed(String),
}

/// Downloads the wheel for `requirement` into the empty directory `dir` and returns its path.
pub(crate) fn download(python: &Path, requirement: &str, dir: &Path) -> Result<PathBuf, PipError> {
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        // we keep our own per-part copy; pip's cache would hold a second one of every part
        .args(["--no-cache-dir", "--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| {
            PipError::Spawn(format!(
                "could not run `{} -m pip`: {e}; install Python 3 with pip (Debian: `apt-get install \
                 python3-pip`)",
                python.display()
            ))
        })?;
    if !output.status.success() {
        return Err(PipError::Failed(format!(
            "`pip download {requirement}` failed ({}):\n{}",
            output.status,
            tail(&String::from_utf8_lossy(&output.stderr), 6)
        )));
    }
    let wheels: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| PipError::Failed(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(found) => Err(PipError::Failed(format!(
            "`pip download {requirement}` left {} wheels in {}, expected one",
            found.len(),
            dir.display()
        ))),
    }
}

/// The last `n` non-empty lines of `text`, indented.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "  (pip wrote nothing to stderr)".to_string();
    }
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "  b\n  c");
        assert_eq!(tail("", 2), "  (pip wrote nothing to stderr)");
    }
}
