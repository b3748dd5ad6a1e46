//! Engine packages: export → load gives exactly the logits of quantizing at load, for every
//! format; exports are byte-identical; damaged packages are refused with a clear error; AWQ's
//! folded scales leave the unquantized model's function unchanged.

mod common;

use std::path::{Path, PathBuf};

use edgellm::engine::{Engine, EngineConfig, KvDtype};
use edgellm::package::{export, ExportOptions, MANIFEST_FILE, WEIGHTS_FILE};
use edgellm::quant::awq::{AwqOptions, DEFAULT_CALIBRATION};
use edgellm::quant::WeightFormat;

const FORMATS: [WeightFormat; 6] = [
    WeightFormat::F32,
    WeightFormat::BF16,
    WeightFormat::F16,
    WeightFormat::Int8,
    WeightFormat::Int4 { group: 64 },
    WeightFormat::Fp8,
];

fn options(weights: WeightFormat) -> ExportOptions {
    ExportOptions { weights, lm_head: None, kv_dtype: "fp16".into(), awq: None }
}

fn export_to(src: &Path, out: &Path, opts: &ExportOptions, calib: Option<&str>) {
    export(src, out, opts, calib, false, &mut |_| {}).unwrap();
}

/// f32 KV on both sides: a package's `auto` KV dtype is its manifest's (fp16 here), a GGUF's f32.
fn config(weight_format: WeightFormat) -> EngineConfig {
    EngineConfig {
        max_context: 256,
        max_seqs: 1,
        threads: 2,
        weight_format,
        kv_dtype: KvDtype::F32,
        ..Default::default()
    }
}

fn logits(model: &Path, format: WeightFormat) -> Vec<f32> {
    let mut engine = Engine::load(model, config(format)).unwrap();
    let ids =
        engine.tokenizer().encode("Licensed under the Apache License, Version 2.0 (the", false).unwrap();
    engine.logits_all(&ids).unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    names
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into(), std::fs::read(p).unwrap()))
        .collect()
}

#[test]
fn package_logits_equal_quantize_at_load_for_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    for fixture in ["tiny-qwen2", "tiny-gemma3", "tiny-llama"] {
        let src = common::fixture(fixture);
        for format in FORMATS {
            let pkg = tmp.path().join(format!("{fixture}-{format}"));
            export_to(&src, &pkg, &options(format), None);
            let (got, want) = (logits(&pkg, WeightFormat::F32), logits(&src, format));
            assert_eq!(got.len(), want.len());
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{fixture} {format}: package logits differ from quantize-at-load");
        }
    }
}

#[test]
fn export_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture("tiny-qwen3");
    for format in [WeightFormat::Int4 { group: 64 }, WeightFormat::BF16] {
        let (a, b) = (tmp.path().join(format!("a-{format}")), tmp.path().join(format!("b-{format}")));
        export_to(&src, &a, &options(format), None);
        export_to(&src, &b, &options(format), None);
        let (fa, fb) = (files(&a), files(&b));
        assert_eq!(fa.iter().map(|f| &f.0).collect::<Vec<_>>(), fb.iter().map(|f| &f.0).collect::<Vec<_>>());
        for ((name, x), (_, y)) in fa.iter().zip(&fb) {
            assert!(x == y, "{format}: {name} differs between two exports");
        }
    }
}

#[test]
fn damaged_packages_are_refused_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture("tiny-qwen2");
    let pkg = tmp.path().join("pkg");
    export_to(&src, &pkg, &options(WeightFormat::Int8), None);
    let weights = pkg.join(WEIGHTS_FILE);
    let good = std::fs::read(&weights).unwrap();
    let load_err = || Engine::load(&pkg, config(WeightFormat::F32)).err().expect("must fail").to_string();

    // one flipped bit in the data
    let mut bad = good.clone();
    let at = bad.len() - 1000;
    bad[at] ^= 0x10;
    std::fs::write(&weights, &bad).unwrap();
    let err = load_err();
    assert!(err.contains("SHA-256") && err.contains("corrupted"), "{err}");

    // truncated
    std::fs::write(&weights, &good[..good.len() / 2]).unwrap();
    let err = load_err();
    assert!(err.contains("truncated"), "{err}");

    // a manifest from a future version
    std::fs::write(&weights, &good).unwrap();
    let manifest = pkg.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("\"format_version\": 1", "\"format_version\": 99")).unwrap();
    let err = load_err();
    assert!(err.contains("format version 99"), "{err}");
    std::fs::write(&manifest, &text).unwrap();

    // a --dtype that contradicts the package
    let err =
        Engine::load(&pkg, config(WeightFormat::Int4 { group: 64 })).err().expect("must fail").to_string();
    assert!(err.contains("stores int8"), "{err}");
    assert!(Engine::load(&pkg, config(WeightFormat::Int8)).is_ok());
}

#[test]
fn existing_output_needs_force_and_must_be_a_package() {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture("tiny-qwen2");
    let pkg = tmp.path().join("pkg");
    let opts = options(WeightFormat::Int8);
    export_to(&src, &pkg, &opts, None);
    let err = export(&src, &pkg, &opts, None, false, &mut |_| {}).expect_err("must refuse").to_string();
    assert!(err.contains("--force"), "{err}");
    export(&src, &pkg, &opts, None, true, &mut |_| {}).unwrap();
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let err = export(&src, &other, &opts, None, true, &mut |_| {}).expect_err("must refuse").to_string();
    assert!(err.contains("not an engine package"), "{err}");
    assert!(other.join("notes.txt").is_file());
}

#[test]
fn awq_int4_package_loads_and_records_its_calibration() {
    // that the folded scales preserve the model's function is tested in `quant::awq`
    let tmp = tempfile::tempdir().unwrap();
    let src = common::fixture("tiny-qwen2");
    let int4 = WeightFormat::Int4 { group: 64 };
    let (awq, plain) = (tmp.path().join("awq"), tmp.path().join("plain"));
    let opts = ExportOptions { awq: Some(AwqOptions::default()), ..options(int4) };
    export_to(&src, &awq, &opts, Some(DEFAULT_CALIBRATION));
    export_to(&src, &plain, &options(int4), None);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(awq.join(MANIFEST_FILE)).unwrap()).unwrap();
    assert_eq!(manifest["export"]["awq"]["calibration"], "built-in");
    assert_eq!(manifest["weights"]["layers"], "int4-g64");
    let got = logits(&awq, WeightFormat::F32);
    assert!(got.iter().all(|v| v.is_finite()));
    assert!(got != logits(&plain, WeightFormat::F32), "AWQ changed nothing");
}
