//! KV-cache element types through the whole engine on the fixtures' golden prompts: f16 and
//! bf16 KV give the f32 cache's greedy tokens; fp8 KV (with the per-layer scales `export --kv
//! fp8` calibrates) its next tokens at nearly every position and logits within 10% of their
//! range; a package's recorded `kv_dtype` is what `auto` runs, and the pool's bytes shrink with
//! the element.

mod common;

use std::path::Path;

use edgellm::engine::{Engine, EngineConfig, KvDtype};
use edgellm::package::{export, ExportOptions};
use edgellm::quant::awq::DEFAULT_CALIBRATION;
use edgellm::quant::WeightFormat;

const FIXTURES: [&str; 4] = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"];

/// Tokens generated per prompt (the fixtures' golden greedy length).
const N: usize = 12;

/// Positions (of `N`) at which fp8 KV must predict f32 KV's next token when both read the f32
/// continuation (teacher-forced). The fixtures are random models whose top logits lie close
/// together, so fp8's 3-bit mantissa flips near ties: run free, fp8's greedy tokens leave f32's
/// after 0 to 12 tokens (0, 3, 3, 6 and 9 on five of the twelve prompts, all 12 on the rest;
/// the test prints them), teacher-forced it agrees at 10 to 12 of 12. f16 and bf16 KV give all
/// `N` greedy tokens of f32 KV.
const FP8_FORCED: usize = 10;

/// Greedy continuation of `prompt` (argmax of the last logits row, the whole sequence run again
/// each step: the fixtures' vocabularies are smaller than their models', so the text path
/// cannot decode every id), the KV dtype that ran and the KV pool's bytes.
fn greedy_tokens(model: &Path, kv_dtype: KvDtype, prompt: &[u32]) -> (Vec<u32>, KvDtype, usize) {
    let cfg = EngineConfig { max_context: 256, max_seqs: 1, threads: 2, kv_dtype, ..Default::default() };
    let mut engine = Engine::load(model, cfg).unwrap();
    let vocab = engine.model().config.vocab_size;
    let mut ids = prompt.to_vec();
    for _ in 0..N {
        let logits = engine.logits_all(&ids).unwrap();
        let last = &logits[logits.len() - vocab..];
        let best = (0..vocab).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap();
        ids.push(best as u32);
    }
    let (dtype, bytes) = engine.kv_cache().unwrap();
    (ids[prompt.len()..].to_vec(), dtype, bytes)
}

/// Logits of every position of `ids` with the given KV dtype.
fn logits(model: &Path, kv_dtype: KvDtype, ids: &[u32]) -> (Vec<f32>, usize) {
    let cfg = EngineConfig { max_context: 256, max_seqs: 1, threads: 2, kv_dtype, ..Default::default() };
    let mut engine = Engine::load(model, cfg).unwrap();
    (engine.logits_all(ids).unwrap(), engine.model().config.vocab_size)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

#[test]
fn reduced_kv_greedy_tokens_match_f32_kv() {
    let tmp = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for fixture in FIXTURES {
        let pkg = tmp.path().join(fixture);
        let opts =
            ExportOptions { weights: WeightFormat::F32, lm_head: None, kv_dtype: "fp8".into(), awq: None };
        export(&common::fixture(fixture), &pkg, &opts, Some(DEFAULT_CALIBRATION), false, &mut |_| {})
            .unwrap();
        for case in common::fixture_cases(fixture) {
            let (want, dtype, f32_bytes) = greedy_tokens(&pkg, KvDtype::F32, &case.prompt);
            assert_eq!(dtype, KvDtype::F32);
            let seq: Vec<u32> = case.prompt.iter().chain(&want).copied().collect();
            let (ref_logits, vocab) = logits(&pkg, KvDtype::F32, &seq);
            for (kv, bytes) in [(KvDtype::F16, 2), (KvDtype::Bf16, 2), (KvDtype::Auto, 1)] {
                let (got, ran, kv_bytes) = greedy_tokens(&pkg, kv, &case.prompt);
                if kv == KvDtype::Auto {
                    assert_eq!(ran, KvDtype::Fp8, "{fixture}: auto runs the package's kv_dtype");
                }
                assert_eq!(kv_bytes, f32_bytes / 4 * bytes, "{fixture} {ran:?}: KV bytes");
                let agree = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
                // teacher-forced on the f32 continuation: same next token at how many positions
                let (l, _) = logits(&pkg, kv, &seq);
                let p0 = case.prompt.len() - 1;
                let forced = (p0..seq.len() - 1)
                    .filter(|&p| {
                        argmax(&l[p * vocab..][..vocab]) == argmax(&ref_logits[p * vocab..][..vocab])
                    })
                    .count();
                let err = l.iter().zip(&ref_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                let amax = ref_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
                eprintln!(
                    "{fixture} {}: {ran:?} KV: first {agree} of {N} greedy tokens as f32 KV; teacher-forced \
                     {forced} of {N}; max logit error {err:.4} (max |logit| {amax:.3})",
                    case.name
                );
                // logit error bounds: ~4x the largest measured
                let (ok, bound) = match ran {
                    KvDtype::Fp8 => (forced >= FP8_FORCED, 0.1),
                    KvDtype::Bf16 => (agree == N, 1e-2),
                    _ => (agree == N, 2e-3),
                };
                if !ok || err > bound * amax {
                    failures.push(format!("{fixture} {}: {ran:?} KV {got:?} vs f32 KV {want:?}", case.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
