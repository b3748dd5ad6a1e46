//! The CUDA backend against the CPU reference and HF: the tiny fixtures' golden logits in fp16
//! and bf16, greedy tokens of random-weight models of real shapes against the CPU engine,
//! CUDA-graph replay against eager execution, a batch of 8 against 8 single runs, and no device
//! allocation during decode. Skipped with a message where no CUDA device is present.

mod common;

use std::ops::ControlFlow;

use edgellm::backend::cuda::{self, CudaOptions};
use edgellm::backend::Device;
use edgellm::engine::{Engine, EngineConfig, Prompt, Sequence};
use edgellm::quant::WeightFormat;
use edgellm::source::synthetic::{presets, SyntheticSource};
use edgellm::SamplingParams;

fn have_gpu() -> bool {
    if cuda::device_count() > 0 {
        return true;
    }
    eprintln!("skipping: no CUDA device");
    false
}

fn gpu_cfg(format: WeightFormat, graphs: bool) -> EngineConfig {
    EngineConfig {
        device: Device::Cuda(0),
        weight_format: format,
        cuda: CudaOptions { graphs, ..CudaOptions::new() },
        max_seqs: 8,
        max_context: 512,
        max_batch_tokens: 512,
        ..Default::default()
    }
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(n), ignore_eos: true, ..SamplingParams::greedy() }
}

fn generate(engine: &mut Engine, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Sequence> =
        prompts.iter().map(|p| engine.new_sequence(&Prompt::Ids(p.clone()), greedy(n)).unwrap()).collect();
    let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
    engine.generate(&mut refs, &mut |_, _| ControlFlow::Continue(())).unwrap();
    let out = seqs.iter().map(|s| s.generated_ids().to_vec()).collect();
    for s in seqs.iter_mut() {
        engine.release(s);
    }
    out
}

/// Teacher-forced logits of every golden position against HF's: returns the largest |Δlogit|;
/// with `greedy`, asserts the greedy ids too.
fn check_fixture(name: &str, format: WeightFormat, greedy: bool) -> f32 {
    let dir = common::fixture(name);
    let mut engine = Engine::load(&dir, gpu_cfg(format, true)).unwrap();
    let n_vocab = engine.model().config.vocab_size;
    let mut worst = 0f32;
    for case in common::fixture_cases(name) {
        let (prompt, want_ids, want) = (&case.prompt, &case.greedy, &case.logits);
        let all: Vec<u32> = prompt.iter().chain(want_ids).copied().collect();
        let got = engine.logits_all(&all).unwrap();
        let rows = want.len() / n_vocab;
        let (diff, at) = common::max_abs_diff(&got[..rows * n_vocab], want);
        eprintln!("{name} {format:?} {}: max |Δlogit| {diff:.2e} at position {}", case.name, at / n_vocab);
        worst = worst.max(diff);
        // greedy ids, teacher-forced: the golden continuation is the argmax at each step (the
        // fixtures' vocabularies are smaller than their logit rows, so text streaming is skipped)
        let argmax: Vec<u32> = (prompt.len() - 1..all.len() - 1)
            .map(|p| edgellm::sampling::logits::argmax(&got[p * n_vocab..(p + 1) * n_vocab]))
            .collect();
        if greedy {
            assert_eq!(&argmax, want_ids, "{name} {} greedy ids", case.name);
        }
    }
    worst
}

// Both formats must hold every fixture within the 2e-2 (H100: fp16 at most 5.0e-3; bf16
// at most 2.2e-3, with activations carried as bf16 hi + lo halves and an fp16 KV cache; plain bf16
// activations had reached 3.05e-2); fp16 must also give HF's greedy ids (bf16 weights may flip a
// near-tie)
#[test]
fn tiny_fixtures_match_hf_in_f16_and_bf16() {
    if !have_gpu() {
        return;
    }
    let names = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"];
    let f16: Vec<f32> = names.iter().map(|n| check_fixture(n, WeightFormat::F16, true)).collect();
    let bf16: Vec<f32> = names.iter().map(|n| check_fixture(n, WeightFormat::BF16, false)).collect();
    for (name, (a, b)) in names.iter().zip(f16.iter().zip(&bf16)) {
        assert!(*a <= 2e-2, "{name} f16: max |Δlogit| {a}");
        assert!(*b <= 2e-2, "{name} bf16: max |Δlogit| {b}");
    }
}

/// 256 greedy CUDA tokens, each checked against the CPU engine's argmax given the same history
/// (teacher-forced, so one early near-tie does not derail the rest): ≥ 95% must agree. Then the
/// same 287 tokens as one prompt (the prefill path: cuBLAS GEMMs, tensor-core attention over 5
/// tiles of 64 tokens): ≥ 95% of its rows' argmaxes must equal the CPU's.
fn check_shape_against_cpu(preset: &str) {
    if !have_gpu() {
        return;
    }
    let config = presets::config(preset).unwrap();
    let source = SyntheticSource::new(config.clone(), 7);
    let mut gpu =
        Engine::from_source(config.clone(), &source, None, gpu_cfg(WeightFormat::F16, true)).unwrap();
    let prompt: Vec<u32> = (0..32).map(|i| (i * 7919 + 13) % config.vocab_size as u32).collect();
    let tokens = generate(&mut gpu, std::slice::from_ref(&prompt), 256).remove(0);
    let all: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
    let prefill = gpu.logits_all(&all[..all.len() - 1]).unwrap();
    drop(gpu);
    let cpu_cfg = EngineConfig {
        weight_format: WeightFormat::F16,
        max_context: 512,
        max_batch_tokens: 512,
        ..Default::default()
    };
    let mut cpu = Engine::from_source(config.clone(), &source, None, cpu_cfg).unwrap();
    let logits = cpu.logits_all(&all[..all.len() - 1]).unwrap();
    let v = config.vocab_size;
    let agree = tokens
        .iter()
        .enumerate()
        .filter(|&(i, &t)| {
            let row = &logits[(prompt.len() - 1 + i) * v..][..v];
            edgellm::sampling::logits::argmax(row) == t
        })
        .count();
    eprintln!("{preset}: {agree}/256 CUDA greedy tokens equal the CPU argmax");
    assert!(agree * 100 >= 95 * 256, "{preset}: only {agree}/256 agree");
    let rows = all.len() - 1;
    let argmax = |l: &[f32], i: usize| edgellm::sampling::logits::argmax(&l[i * v..][..v]);
    let same = (0..rows).filter(|&i| argmax(&prefill, i) == argmax(&logits, i)).count();
    let (diff, at) = common::max_abs_diff(&prefill, &logits);
    eprintln!(
        "{preset}: {same}/{rows} prefill rows' argmax equal the CPU's; max |Δlogit| {diff:.2e} at row {}",
        at / v
    );
    assert!(same * 100 >= 95 * rows, "{preset}: only {same}/{rows} prefill rows agree");
}

#[test]
fn qwen2_5_0_5b_shape_agrees_with_cpu() {
    check_shape_against_cpu("qwen2.5-0.5b");
}

#[test]
fn llama_3_2_1b_shape_agrees_with_cpu() {
    check_shape_against_cpu("llama-3.2-1b");
}

fn tiny_prompts(engine: &Engine, n: usize) -> Vec<Vec<u32>> {
    let texts = [
        "Licensed under the Apache License",
        "the quick brown fox",
        "fn main() {}",
        "a b c d e f g",
        "1 2 3 4 5 6 7 8 9",
        "hello world",
        "once upon a time there was",
        "x",
    ];
    texts.iter().take(n).map(|t| engine.tokenizer().encode(t, true).unwrap()).collect()
}

#[test]
fn graph_replay_equals_eager_and_batch_of_8_equals_singles() {
    if !have_gpu() {
        return;
    }
    let dir = common::fixture("tiny-qwen2");
    let mut graphs = Engine::load(&dir, gpu_cfg(WeightFormat::F16, true)).unwrap();
    let mut eager = Engine::load(&dir, gpu_cfg(WeightFormat::F16, false)).unwrap();
    let prompts = tiny_prompts(&graphs, 8);
    let batched = generate(&mut graphs, &prompts, 64);
    assert_eq!(batched, generate(&mut eager, &prompts, 64), "graph replay vs eager");
    for (p, want) in prompts.iter().zip(&batched) {
        assert_eq!(&generate(&mut graphs, std::slice::from_ref(p), 64)[0], want, "single vs batch of 8");
    }
}

#[test]
fn decode_steps_do_not_allocate_on_the_device() {
    if !have_gpu() {
        return;
    }
    let mut engine = Engine::load(&common::fixture("tiny-llama"), gpu_cfg(WeightFormat::BF16, true)).unwrap();
    let prompt = tiny_prompts(&engine, 1).remove(0);
    let mut seq = engine.new_sequence(&Prompt::Ids(prompt), greedy(120)).unwrap();
    // prefill and the first decode steps (graph capture) may allocate
    for _ in 0..3 {
        engine.forward_step(&mut [&mut seq]).unwrap();
    }
    let (before, free_before) = (cuda::allocations(), cuda::free_memory().unwrap());
    for _ in 0..100 {
        assert_eq!(engine.forward_step(&mut [&mut seq]).unwrap(), 1);
    }
    assert_eq!(cuda::allocations(), before, "device allocations during 100 decode steps");
    assert_eq!(cuda::free_memory().unwrap(), free_before, "device memory taken during 100 decode steps");
}

#[test]
fn asking_for_a_missing_device_is_a_clear_error() {
    let n = cuda::device_count();
    let cfg =
        EngineConfig { device: Device::Cuda(n), weight_format: WeightFormat::F16, ..Default::default() };
    let err = Engine::load(&common::fixture("tiny-llama"), cfg).err().expect("no such device");
    assert!(err.to_string().contains("CUDA unavailable"), "{err}");
}
