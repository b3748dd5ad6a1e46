//! The CPU engine on the real GGUF models against HF transformers' reference outputs
//! (`../shared/golden`): greedy ids, top-5 ids and logits at every prompt and generated
//! position, one full logits row, and perplexity.

mod common;

use common::ids;

use std::ops::ControlFlow;

use edgellm::engine::{Engine, EngineConfig, KvDtype, Prompt};
use edgellm::quant::WeightFormat;
use edgellm::SamplingParams;
use serde_json::Value;

fn load(name: &str) -> Option<(Engine, Value)> {
    let path = common::model_gguf(name)?;
    let cfg = EngineConfig { max_context: 2048, max_batch_tokens: 256, max_seqs: 2, ..Default::default() };
    let engine = Engine::load(&path, cfg).unwrap();
    let golden_path = common::golden_dir(name).join("golden.json");
    let golden = serde_json::from_str(&std::fs::read_to_string(golden_path).unwrap()).unwrap();
    Some((engine, golden))
}

/// Greedy generation from the prompt ids gives exactly the reference ids.
fn check_greedy(engine: &mut Engine, case: &Value) {
    let prompt = ids(&case["prompt_ids"]);
    let want = ids(&case["greedy_ids"]);
    let params = SamplingParams { max_tokens: Some(want.len()), ..SamplingParams::greedy() };
    let mut seq = engine.new_sequence(&Prompt::Ids(prompt), params).unwrap();
    engine.generate(&mut [&mut seq], &mut |_, _| ControlFlow::Continue(())).unwrap();
    assert_eq!(seq.generated_ids(), &want[..], "case {}", case["name"]);
    engine.release(&mut seq);
}

/// Top-5 ids and their logits at every prompt and generated position, teacher-forced.
fn check_top5(engine: &mut Engine, case: &Value) -> f32 {
    let prompt = ids(&case["prompt_ids"]);
    let greedy = ids(&case["greedy_ids"]);
    let all: Vec<u32> = prompt.iter().chain(&greedy).copied().collect();
    let logits = engine.logits_all(&all).unwrap();
    let n_vocab = engine.model().config.vocab_size;
    let tops: Vec<&Value> =
        case["prompt_top"].as_array().unwrap().iter().chain(case["step_top"].as_array().unwrap()).collect();
    let positions: Vec<usize> = (0..prompt.len()).chain(prompt.len() - 1..all.len() - 1).collect();
    let mut worst = 0f32;
    for (top, &pos) in tops.iter().zip(&positions) {
        let row = &logits[pos * n_vocab..(pos + 1) * n_vocab];
        let want: Vec<(u32, f32)> = top
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap() as f32))
            .collect();
        let mut order: Vec<u32> = (0..n_vocab as u32).collect();
        order.select_nth_unstable_by(5, |&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        let mut got: Vec<u32> = order[..5].to_vec();
        got.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        for (k, &(id, logit)) in want.iter().enumerate() {
            let diff = (row[id as usize] - logit).abs();
            worst = worst.max(diff);
            assert!(
                diff <= 2e-2,
                "case {} position {pos}: logit of {id} is {} vs {logit}",
                case["name"],
                row[id as usize]
            );
            // a swap between logits closer than 1e-3 is not a disagreement
            if got[k] != id {
                let other = row[got[k] as usize];
                assert!(
                    (other - row[id as usize]).abs() < 1e-3,
                    "case {} position {pos}: top-{k} is {} not {id}",
                    case["name"],
                    got[k]
                );
            }
        }
    }
    worst
}

#[test]
fn qwen25_coder_05b_matches_hf() {
    let Some((mut engine, golden)) = load("qwen2.5-coder-0.5b-instruct") else { return };
    for case in golden["cases"].as_array().unwrap() {
        check_greedy(&mut engine, case);
        let worst = check_top5(&mut engine, case);
        eprintln!("{}: greedy ids equal, top-5 agree, max |Δlogit| {worst:.2e}", case["name"]);
    }
    // the full logits row at the last prompt position of case 0
    let case0 = &golden["cases"][0];
    let prompt = ids(&case0["prompt_ids"]);
    let logits = engine.logits_all(&prompt).unwrap();
    let n_vocab = engine.model().config.vocab_size;
    let row = &logits[(prompt.len() - 1) * n_vocab..];
    let bytes =
        std::fs::read(common::golden_dir("qwen2.5-coder-0.5b-instruct").join("case0_last_prompt_logits.f32"))
            .unwrap();
    let want: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let (diff, at) = common::max_abs_diff(row, &want);
    assert!(diff <= 2e-2, "full row: max |Δ| {diff} at id {at}");
    eprintln!("case0 full row: max |Δlogit| {diff:.2e}");
    // perplexity over exactly the golden text's 1,024 tokens
    let text = std::fs::read_to_string(
        common::golden_dir("qwen2.5-coder-0.5b-instruct").join("ppl-apache-1024.txt"),
    )
    .unwrap();
    let tokens = engine.tokenizer().encode(&text, false).unwrap();
    assert_eq!(tokens.len(), 1024);
    let ppl = engine.perplexity(&tokens, tokens.len()).unwrap().ppl;
    let want = golden["perplexity"]["ppl"].as_f64().unwrap();
    eprintln!("perplexity {ppl:.4} (reference {want:.4})");
    assert!((ppl / want - 1.0).abs() <= 0.002, "perplexity {ppl} vs {want}");
}

/// Issue 5's int8 line (perplexity of the golden text within +1.5 %), as `export --weights
/// int8` stores the model (int8 LM head, f16 KV cache) and `eval ppl` runs it (512-token
/// chunks). With every row's scale at `max / 127` it was +1.57 %; `quant::int8`'s scale search
/// brought it to +0.40 %.
#[test]
fn issue_5_int8_perplexity_within_bound() {
    let Some(path) = common::model_gguf("qwen2.5-coder-0.5b-instruct") else { return };
    let cfg = EngineConfig {
        max_context: 1024,
        max_batch_tokens: 512,
        weight_format: WeightFormat::Int8,
        kv_dtype: KvDtype::F16,
        ..Default::default()
    };
    let mut engine = Engine::load(&path, cfg).unwrap();
    let dir = common::golden_dir("qwen2.5-coder-0.5b-instruct");
    let text = std::fs::read_to_string(dir.join("ppl-apache-1024.txt")).unwrap();
    let tokens = engine.tokenizer().encode(&text, false).unwrap();
    let ppl = engine.perplexity(&tokens, tokens.len()).unwrap().ppl;
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let want = golden["perplexity"]["ppl"].as_f64().unwrap();
    eprintln!("int8 perplexity {ppl:.4} (reference {want:.4}, {:+.2} %)", 100.0 * (ppl / want - 1.0));
    assert!(ppl <= want * 1.015, "int8 perplexity {ppl} is more than 1.5 % above {want}");
}

#[test]
fn gemma3_270m_matches_hf() {
    let Some((mut engine, golden)) = load("gemma-3-270m") else { return };
    for case in golden["cases"].as_array().unwrap() {
        check_greedy(&mut engine, case);
        let worst = check_top5(&mut engine, case);
        eprintln!("{}: greedy ids equal, top-5 agree, max |Δlogit| {worst:.2e}", case["name"]);
    }
    let text = std::fs::read_to_string(common::golden_dir("gemma-3-270m").join("ppl-apache.txt")).unwrap();
    let mut tokens = engine.tokenizer().encode(&text, false).unwrap();
    tokens.truncate(1023);
    tokens.insert(0, engine.tokenizer().bos_id().unwrap());
    let ppl = engine.perplexity(&tokens, tokens.len()).unwrap().ppl;
    let want = golden["perplexity"]["ppl"].as_f64().unwrap();
    eprintln!("perplexity {ppl:.4} (reference {want:.4})");
    assert!((ppl / want - 1.0).abs() <= 0.002, "perplexity {ppl} vs {want}");
}
