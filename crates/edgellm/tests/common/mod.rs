//! Helpers shared by the integration tests: fixture paths and model files.

#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared` beside the repository root, or `$EDGELLM_SHARED_DIR` where the tests run away
/// from the checkout (a copied test binary on a GPU machine).
pub fn shared_dir() -> PathBuf {
    match std::env::var_os("EDGELLM_SHARED_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
    }
}

/// A tiny HF fixture directory.
pub fn fixture(name: &str) -> PathBuf {
    shared_dir().join("fixtures").join(name)
}

/// A golden directory.
pub fn golden_dir(name: &str) -> PathBuf {
    shared_dir().join("golden").join(name)
}

/// The assembled GGUF of a registry model, or `None` (with a message) when it was not pulled.
/// Under CI the models are pulled by `.ci/run`, so absence is a failure there.
pub fn model_gguf(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("EDGELLM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/edgellm"));
    let path = home.join("models").join(name).join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!("{} missing under CI: .ci/run must pull {name}", path.display());
    }
    eprintln!("skipping: {} not present (run `edgellm pull {name}`)", path.display());
    None
}

/// A JSON file, parsed.
pub fn read_json(path: PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Largest |a - b| and its index.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).enumerate().fold((0.0, 0), |(m, mi), (i, (x, y))| {
        let d = (x - y).abs();
        if d > m {
            (d, i)
        } else {
            (m, mi)
        }
    })
}
