//! Prefix caching end to end on the tiny fixtures: a sequence that takes its leading KV blocks
//! from the cache generates exactly the tokens it generates computing everything (greedy), on
//! every architecture (Gemma 3's sliding windows included); blocks shared by running sequences
//! are reference counted back to zero; cached blocks give way under pressure; a second request
//! sharing a 200-token system prompt reuses at least 190 tokens.

mod common;

use std::ops::ControlFlow;

use edgellm::engine::{Engine, EngineConfig, Prompt, Sequence};
use edgellm::SamplingParams;

fn engine(name: &str, kv_tokens: usize) -> Engine {
    let cfg = EngineConfig {
        max_seqs: 4,
        max_context: 512,
        kv_tokens,
        threads: 2,
        max_batch_tokens: 128,
        ..Default::default()
    };
    Engine::load(&common::fixture(name), cfg).unwrap()
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(n), ignore_eos: true, ..SamplingParams::greedy() }
}

/// Token ids `first..first + n` (the fixtures' vocabularies hold 512 ids).
fn ids(first: u32, n: usize) -> Vec<u32> {
    (first..first + n as u32).map(|i| i % 500 + 3).collect()
}

/// Runs `prompts` as one batch to completion; the sequences still hold their blocks.
fn generate(engine: &mut Engine, prompts: &[Vec<u32>], n: usize) -> Vec<Sequence> {
    let mut seqs: Vec<Sequence> =
        prompts.iter().map(|p| engine.new_sequence(&Prompt::Ids(p.clone()), greedy(n)).unwrap()).collect();
    let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
    engine.generate(&mut refs, &mut |_, _| ControlFlow::Continue(())).unwrap();
    seqs
}

/// Each sequence's generated ids and reused prompt tokens.
fn outcome(seqs: &[Sequence]) -> (Vec<Vec<u32>>, Vec<usize>) {
    let out = seqs.iter().map(|s| s.generated_ids().to_vec()).collect();
    (out, seqs.iter().map(|s| s.completion().unwrap().usage.cached_tokens).collect())
}

/// [`generate`], then release: each one's generated ids and reused prompt tokens.
fn run(engine: &mut Engine, prompts: &[Vec<u32>], n: usize) -> (Vec<Vec<u32>>, Vec<usize>) {
    let mut seqs = generate(engine, prompts, n);
    let result = outcome(&seqs);
    for s in &mut seqs {
        engine.release(s);
    }
    result
}

fn concat(a: &[u32], b: &[u32]) -> Vec<u32> {
    [a, b].concat()
}

#[test]
fn reuse_gives_the_tokens_of_no_reuse() {
    for name in ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"] {
        let shared = ids(7, 90);
        let a = concat(&shared, &ids(200, 9));
        let b = concat(&shared, &ids(300, 21));
        // computed from scratch, each on a fresh engine
        let fresh_b = run(&mut engine(name, 0), std::slice::from_ref(&b), 24).0;
        let mut e = engine(name, 0);
        let (_, reused) = run(&mut e, &[a], 24);
        assert_eq!(reused, [0]);
        let (cached_b, reused) = run(&mut e, std::slice::from_ref(&b), 24);
        assert_eq!(reused, [80], "{name}: 5 full blocks of the shared 90 tokens");
        assert_eq!(cached_b, fresh_b, "{name}: tokens differ with reused KV");
        // the whole of b again, including blocks holding generated tokens' neighbours: all but
        // the block of its last prompt token come from the cache
        let (again, reused) = run(&mut e, std::slice::from_ref(&b), 24);
        assert_eq!((again, reused), (fresh_b, vec![96]), "{name}");
        let stats = e.kv_stats();
        assert_eq!(stats.used, 0, "{name}: blocks still held: {stats:?}");
    }
}

#[test]
fn running_sequences_share_blocks_and_counts_return_to_zero() {
    let mut e = engine("tiny-qwen2", 0);
    let prompt = ids(11, 70);
    let mut first = generate(&mut e, std::slice::from_ref(&prompt), 10);
    assert_eq!(e.kv_stats().used, 5, "70 + 9 positions");
    // two more sequences over the same prompt, in one batch, while the first still holds its
    // blocks: the 4 full prompt blocks are shared, not copied
    let mut others = generate(&mut e, &[prompt.clone(), prompt], 10);
    let (ids_first, _) = outcome(&first);
    let (ids_others, reused) = outcome(&others);
    assert_eq!(ids_others, vec![ids_first[0].clone(), ids_first[0].clone()]);
    assert_eq!(reused, [64, 64]);
    assert_eq!(e.kv_stats().used, 5 + 2, "each adds only its own last block");
    e.release(&mut first[0]);
    assert_eq!(e.kv_stats().used, 4 + 2, "the shared blocks are still held");
    for s in &mut others {
        e.release(s);
    }
    let s = e.kv_stats();
    assert_eq!((s.used, s.free, s.cached), (0, s.total, 4), "{s:?}");
}

#[test]
fn cached_blocks_give_way_under_pressure() {
    // 12 blocks of 16 positions
    let mut e = engine("tiny-llama", 192);
    let a = ids(5, 70);
    let (first, _) = run(&mut e, std::slice::from_ref(&a), 8);
    assert_eq!(e.kv_stats().cached, 4);
    // three other 100-token prompts (7 blocks each) need the space: a's blocks, released
    // longest ago, are evicted first
    for k in 0..3 {
        run(&mut e, &[ids(100 + 97 * k, 100)], 6);
    }
    let (again, reused) = run(&mut e, &[a], 8);
    assert_eq!((again, reused), (first, vec![0]));
    assert_eq!(e.kv_stats().used, 0);
}

#[test]
fn second_request_with_a_200_token_system_prompt_reuses_190() {
    let mut e = engine("tiny-qwen2", 0);
    let system = ids(40, 200);
    let (_, reused) = run(&mut e, &[concat(&system, &ids(400, 30))], 4);
    assert_eq!(reused, [0]);
    let (_, reused) = run(&mut e, &[concat(&system, &ids(450, 12))], 4);
    assert!(reused[0] >= 190, "reused {}", reused[0]);
}
