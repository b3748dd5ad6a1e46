//! `run`, `chat`, `tokenize`, `inspect`, `eval ppl` and `eval kl` from the command line, on the tiny HF
//! fixtures (fast, no download).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(name)
}

fn edgellm(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_edgellm")).args(args).env("EDGELLM_HOME", home.path()).output().unwrap()
}

fn ok_stdout(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn run_json_reports_ids_text_timings_and_logprobs() {
    let model = fixture("tiny-llama");
    let args =
        ["run", model.to_str().unwrap(), "--raw", "-p", "the quick brown fox", "-n", "6", "--ignore-eos"];
    let out = ok_stdout(&edgellm(&[&args[..], &["--json", "--logprobs", "3"]].concat()));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 6);
    assert_eq!(v["finish_reason"], "length");
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 6);
    assert_eq!(v["logprobs"][0]["top"].as_array().unwrap().len(), 3);
    assert!(v["timings"]["generation_tok_s"].as_f64().unwrap() > 0.0);
    // greedy by default: the same ids again, and the streamed text equals the JSON text
    let again: serde_json::Value =
        serde_json::from_str(&ok_stdout(&edgellm(&[&args[..], &["--json"]].concat()))).unwrap();
    assert_eq!(again["generated_ids"], v["generated_ids"]);
    let streamed = ok_stdout(&edgellm(&args));
    assert_eq!(streamed.trim_end_matches('\n'), v["text"].as_str().unwrap());
}

#[test]
fn run_rejects_bad_sampling_flags() {
    let model = fixture("tiny-qwen2");
    let out = edgellm(&["run", model.to_str().unwrap(), "-p", "hi", "--top-p", "1.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("top_p"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chat_keeps_earlier_turns() {
    let model = fixture("tiny-qwen2");
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(["chat", model.to_str().unwrap(), "-n", "4", "--system", "You are terse."])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\nand again\n/exit\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reused: Vec<usize> =
        stderr.lines().filter_map(|l| l.split(" reused)").next()?.rsplit('(').next()?.parse().ok()).collect();
    assert_eq!(reused.len(), 2, "{stderr}");
    assert_eq!(reused[0], 0);
    assert!(reused[1] > 10, "second turn reused {} tokens: {stderr}", reused[1]);
}

#[test]
fn tokenize_and_inspect() {
    let model = fixture("tiny-llama");
    let out = ok_stdout(&edgellm(&["tokenize", model.to_str().unwrap(), "hello world", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ids"].as_array().unwrap().len(), v["n_tokens"].as_u64().unwrap() as usize);
    let table = ok_stdout(&edgellm(&["inspect", model.join("model.safetensors").to_str().unwrap()]));
    assert!(
        table.contains("model.layers.0.self_attn.q_proj.weight") && table.contains("[128, 128]"),
        "{table}"
    );
    let missing = edgellm(&["inspect", "/nonexistent.gguf"]);
    assert_eq!(missing.status.code(), Some(1));
}

#[test]
fn eval_ppl_prints_a_perplexity() {
    let model = fixture("tiny-gemma3");
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), "Licensed under the Apache License, Version 2.0. ".repeat(8)).unwrap();
    let out = ok_stdout(&edgellm(&[
        "eval",
        "ppl",
        model.to_str().unwrap(),
        "--text",
        text.path().to_str().unwrap(),
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ppl = v["ppl"].as_f64().unwrap();
    // a random 512-token model: near-uniform, so close to the vocabulary size
    assert!(ppl > 1.0 && ppl < 2000.0, "{ppl}");
    assert!(v["predicted_tokens"].as_u64().unwrap() > 50);
}

#[test]
fn eval_kl_is_zero_against_itself_and_small_against_f16() {
    let model = fixture("tiny-gemma3");
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), "Licensed under the Apache License, Version 2.0. ".repeat(8)).unwrap();
    let kl = |extra: &[&str]| {
        let (m, t) = (model.to_str().unwrap(), text.path().to_str().unwrap());
        let args =
            [&["eval", "kl", m, "--reference", m, "--text", t, "--ctx", "40", "--json"], extra].concat();
        let out = edgellm(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (serde_json::from_str::<serde_json::Value>(&ok_stdout(&out)).unwrap(), stderr)
    };
    let (same, stderr) = kl(&[]);
    assert_eq!((same["kl_mean"].as_f64(), same["kl_max"].as_f64()), (Some(0.0), Some(0.0)), "{same}");
    assert_eq!(same["same_top1"].as_f64(), Some(1.0));
    assert_eq!(same["ppl_model"], same["ppl_reference"]);
    let windows = same["windows"].as_u64().unwrap();
    assert!(windows >= 2 && stderr.contains(&format!("window {windows}/{windows}")), "{stderr}");

    let (f16, _) = kl(&["--dtype", "f16", "--reference-dtype", "f32"]);
    let mean = f16["kl_mean"].as_f64().unwrap();
    assert!(mean > 0.0 && f16["kl_max"].as_f64().unwrap() < 0.01, "{f16}");
    assert_eq!(f16["ppl_reference"], same["ppl_reference"]);
    assert_ne!(f16["ppl_model"], same["ppl_model"]);
}
