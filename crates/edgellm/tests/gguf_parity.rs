//! Dequantization parity with gguf-py (`gguf.quants.dequantize`, which follows ggml's reference
//! `dequantize_row_*`): one tensor of every type in the real Qwen2.5-Coder-0.5B and Gemma 3 270M
//! GGUFs, and random blocks of every block type. `tests/scripts/gguf_dequant.py` writes the
//! references. Without python3 + gguf (or without the model files) the tests skip with a message,
//! unless `CI` is set.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgellm::source::ggml::{dequantize, GgmlType};
use edgellm::source::gguf::GgufFile;
use edgellm::source::WeightSource;

const TOLERANCE: f32 = 1e-6;

fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why} (CI is set, so this is a failure)");
    eprintln!("skipping: {why}");
}

/// Runs the reference script; `None` (after a skip message) when python3 or gguf is missing.
fn run_script(args: &[&str]) -> Option<serde_json::Value> {
    let probe = Command::new("python3").args(["-c", "import gguf, numpy"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        skip("python3 with the `gguf` package is not available (pip install gguf)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/gguf_dequant.py");
    let out = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    assert!(out.status.success(), "gguf_dequant.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let out_dir = Path::new(args.last().expect("out dir"));
    let manifest = std::fs::read_to_string(out_dir.join("manifest.json")).unwrap();
    Some(serde_json::from_str(&manifest).unwrap())
}

fn read_f32s(path: &Path) -> Vec<f32> {
    std::fs::read(path).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Max |a − b|, with NaN equal to NaN and anything else against NaN infinite.
fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() && y.is_nan() {
                0.0
            } else if x.is_nan() || y.is_nan() {
                f32::INFINITY
            } else {
                (x - y).abs()
            }
        })
        .fold(0.0, f32::max)
}

fn model_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("EDGELLM_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/edgellm")))?;
    let path = home.join("models").join(name).join("model.gguf");
    if path.is_file() {
        return Some(path);
    }
    skip(&format!("{} not found (run `edgellm pull {name}`)", path.display()));
    None
}

fn check_model(name: &str) {
    let Some(path) = model_file(name) else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let Some(manifest) = run_script(&["model", path.to_str().unwrap(), out]) else { return };
    let g = GgufFile::open(&path).unwrap();
    let present: BTreeSet<String> = g.tensors().iter().map(|t| format!("{:?}", t.ggml_type)).collect();
    let mut checked = BTreeSet::new();
    for entry in manifest.as_array().unwrap() {
        let tensor = entry["tensor"].as_str().unwrap();
        let want = read_f32s(&dir.path().join(entry["f32"].as_str().unwrap()));
        let got = g.read_f32(tensor).unwrap();
        let diff = max_abs_diff(&got, &want);
        eprintln!("{name} {tensor} ({}): {} values, max |diff| {diff:e}", entry["type"], got.len());
        assert!(diff <= TOLERANCE, "{tensor}: max |diff| {diff} > {TOLERANCE}");
        checked.insert(entry["type"].as_str().unwrap().to_string());
    }
    assert_eq!(checked, present, "every type in the file is checked");
}

#[test]
fn qwen2_5_coder_0_5b_matches_gguf_py() {
    check_model("qwen2.5-coder-0.5b-instruct");
}

#[test]
fn gemma_3_270m_matches_gguf_py() {
    check_model("gemma-3-270m");
}

#[test]
fn random_blocks_of_every_type_match_gguf_py() {
    let dir = tempfile::tempdir().unwrap();
    let Some(manifest) = run_script(&["random", dir.path().to_str().unwrap()]) else { return };
    let mut types = BTreeSet::new();
    for entry in manifest.as_array().unwrap() {
        let name = entry["type"].as_str().unwrap();
        let ty = (0..64).filter_map(GgmlType::from_id).find(|t| format!("{t:?}") == name).unwrap();
        let bytes = std::fs::read(dir.path().join(entry["bin"].as_str().unwrap())).unwrap();
        let want = read_f32s(&dir.path().join(entry["f32"].as_str().unwrap()));
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got).unwrap();
        let diff = max_abs_diff(&got, &want);
        eprintln!("{name} ({}): {} values, max |diff| {diff:e}", entry["how"], got.len());
        assert!(diff <= TOLERANCE, "{name} {}: max |diff| {diff} > {TOLERANCE}", entry["how"]);
        types.insert(name.to_string());
    }
    for t in [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "F16", "BF16",
    ] {
        assert!(types.contains(t), "{t} not covered");
    }
}
