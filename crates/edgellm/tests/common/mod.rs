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

/// A JSON array of token ids.
pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// One case of a tiny fixture's `golden.json`: HF's greedy continuation of the prompt and its
/// logits at every position, rows flattened.
pub struct FixtureCase {
    pub name: String,
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    pub logits: Vec<f32>,
}

/// The cases of a tiny fixture's `golden.json`.
pub fn fixture_cases(name: &str) -> Vec<FixtureCase> {
    let golden = read_json(fixture(name).join("golden.json"));
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| FixtureCase {
            name: case["name"].as_str().unwrap_or_default().to_string(),
            prompt: ids(&case["prompt_ids"]),
            greedy: ids(&case["greedy_ids"]),
            logits: case["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32))
                .collect(),
        })
        .collect()
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

/// A kernel cache for the CUDA tests, so NVRTC compiles the kernels once per run rather than once
/// per engine (entries are keyed by source hash, arch and NVRTC version: never stale).
pub fn kernel_cache() -> PathBuf {
    std::env::temp_dir().join("edgellm-test-kernels")
}

/// Whether a CUDA device is present; where none is, says that the calling test skips.
pub fn have_gpu() -> bool {
    if edgellm::backend::cuda::device_count() > 0 {
        return true;
    }
    eprintln!("skipping: no CUDA device");
    false
}

/// Runs `seqs` together to their end on `engine`, releases them and returns each one's generated
/// ids.
pub fn run_to_end(
    engine: &mut edgellm::engine::Engine,
    seqs: &mut [edgellm::engine::Sequence],
) -> Vec<Vec<u32>> {
    let mut refs: Vec<&mut edgellm::engine::Sequence> = seqs.iter_mut().collect();
    engine.generate(&mut refs, &mut |_, _| std::ops::ControlFlow::Continue(())).unwrap();
    let out = seqs.iter().map(|s| s.generated_ids().to_vec()).collect();
    for s in seqs.iter_mut() {
        engine.release(s);
    }
    out
}
