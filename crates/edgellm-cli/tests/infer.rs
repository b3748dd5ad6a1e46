//! `edgellm infer` on the tiny-qwen2 fixture: a TensorRT-Edge-LLM request file, batched, gives
//! each request the text `edgellm run` gives it alone; the profile shows the shared system
//! prompt reused; bad files are refused with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-qwen2")
}

fn edgellm(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_edgellm")).args(args).env("EDGELLM_HOME", home.path()).output().unwrap()
}

fn infer(dir: &Path, requests: &Value, extra: &[&str]) -> Output {
    let (input, output) = (dir.join("requests.json"), dir.join("responses.json"));
    std::fs::write(&input, requests.to_string()).unwrap();
    let model = fixture();
    let args = ["infer", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    edgellm(&[&args[..], &["--output", output.to_str().unwrap(), "-t", "1"], extra].concat())
}

const SYSTEM: &str = "you are a helpful assistant that answers briefly and never makes things up. ";

#[test]
fn batch_file_matches_run_alone_and_reuses_the_system_prompt() {
    let system = SYSTEM.repeat(3);
    let users = ["what is a cache?", "hello there", "and a block table?"];
    let requests = json!({
        "batch_size": 2, "temperature": 0.0, "max_generate_length": 6,
        "requests": [
            {"messages": [{"role": "system", "content": system}, {"role": "user", "content": users[0]}],
             "save_system_prompt_kv_cache": true},
            {"messages": [{"role": "user", "content": users[1]}]},
            {"messages": [{"role": "system", "content": system}, {"role": "user", "content": users[2]}]},
        ]
    });
    let dir = tempfile::tempdir().unwrap();
    let out = infer(dir.path(), &requests, &["--profile"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("responses.json")).unwrap()).unwrap();
    let responses = v["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);

    // each request alone through `edgellm run` (greedy by default)
    let model = fixture();
    for (i, user) in users.iter().enumerate() {
        let mut args = vec!["run", model.to_str().unwrap(), "-p", user, "-n", "6", "--json", "-t", "1"];
        if i != 1 {
            args.extend(["--system", &system]);
        }
        let alone = edgellm(&args);
        assert!(alone.status.success(), "{}", String::from_utf8_lossy(&alone.stderr));
        let alone: Value = serde_json::from_slice(&alone.stdout).unwrap();
        assert_eq!(responses[i]["output_text"], alone["text"], "request {i}");
        assert_eq!(responses[i]["finish_reason"], alone["finish_reason"], "request {i}");
        assert_eq!(responses[i]["request_idx"], i);
    }

    let profile = &v["profile"];
    assert_eq!(profile["requests"], 3);
    let reused = profile["per_request"][2]["reused_tokens"].as_u64().unwrap();
    assert!(reused >= 32, "the third request reused {reused} tokens of the shared system prompt");
    assert_eq!(profile["reused_prompt_tokens"].as_u64().unwrap(), reused);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reused from the prefix cache"));
}

#[test]
fn bad_request_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (json!({"batch_size": 1}), "requests"),
        (json!({"requests": [], "max_new_tokens": 5}), "max_new_tokens"),
        (json!({"requests": [{"messages": []}]}), "no messages"),
        (json!({"top_p": 0.0, "requests": [{"messages": [{"role": "user", "content": "hi"}]}]}), "top_p"),
    ];
    for (requests, says) in cases {
        let out = infer(dir.path(), &requests, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{requests}: {stderr}");
        assert!(stderr.contains(says), "{requests}: {stderr}");
    }
}
