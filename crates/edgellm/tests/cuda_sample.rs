//! Sampling on the device against the CPU sampler. The kernels alone: the same random logits
//! and parameters give the same ids as `Sampler::sample`, over many seeds, draw counters,
//! vocabularies (up to Gemma-3's 262,144), distributions and parameter sets, 8 rows at a time.
//! Through the engine: a seeded sampled generation gives the same tokens when the device samples
//! as when the host samples the device's logits, with graphs or eagerly, alone or in a batch of 8.
//! Skipped with a message where no CUDA device is present.

mod common;

use edgellm::backend::cuda::{self, CudaOptions, StandaloneSampler, HOST_ROW};
use edgellm::backend::Device;
use edgellm::engine::{Engine, EngineConfig, Prompt, Sequence};
use edgellm::quant::WeightFormat;
use edgellm::sampling::rng::splitmix64;
use edgellm::sampling::{Sampler, TokenHistory};
use edgellm::source::synthetic::{presets, SyntheticSource};
use edgellm::SamplingParams;

/// Kernels compiled once for every test of this file (the cache is keyed by the sources' hash).
fn opts(graphs: bool) -> CudaOptions {
    CudaOptions { graphs, kernel_cache: Some(common::kernel_cache()), ..CudaOptions::new() }
}

/// A uniform number in [0, 1) from `(seed, i)`.
fn unit(seed: u64, i: u64) -> f32 {
    (splitmix64(seed, i) >> 40) as f32 / (1u64 << 24) as f32
}

/// One row of `vocab` logits of kind `kind`: spread, peaked, tied, flat, masked, constant.
fn logits_row(kind: usize, vocab: usize, seed: u64) -> Vec<f32> {
    let gauss = |i: usize| (0..4).map(|k| unit(seed, 4 * i as u64 + k)).sum::<f32>() * 1.7 - 3.4;
    (0..vocab)
        .map(|i| match kind {
            0 => 3.0 * gauss(i),
            1 => gauss(i) + if splitmix64(seed ^ 1, i as u64).is_multiple_of(5000) { 12.0 } else { 0.0 },
            2 => (gauss(i) * 8.0).round() / 4.0, // steps of 0.25: many equal logits
            3 => 0.3 * gauss(i),                 // like a random-weight model's
            4 => match splitmix64(seed ^ 2, i as u64) % 7 {
                0 => f32::NEG_INFINITY,
                1 => f32::NAN,
                _ => 2.0 * gauss(i),
            },
            _ => 0.5, // every token equally likely
        })
        .collect()
}

fn sampling(temperature: f32, top_k: usize, top_p: f32, min_p: f32) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, min_p, ..SamplingParams::default() }
}

fn param_sets() -> Vec<SamplingParams> {
    vec![
        SamplingParams::greedy(),
        sampling(1.0, 0, 1.0, 0.0),
        sampling(0.7, 0, 1.0, 0.0),
        sampling(1.5, 40, 1.0, 0.0),
        sampling(0.8, 40, 0.95, 0.0),
        sampling(1.0, 0, 0.9, 0.0),
        sampling(0.6, 0, 0.5, 0.0),
        sampling(0.9, 0, 1.0, 0.05),
        sampling(1.2, 1000, 0.99, 0.01),
        sampling(1.0, 1, 1.0, 0.0),
        sampling(1.0, 5000, 0.8, 0.0),
    ]
}

/// The CPU sampler of `params` with `seed`, at draw `counter`.
fn cpu_sampler(params: &SamplingParams, seed: u64, counter: u64, vocab: usize) -> Sampler {
    let p = SamplingParams { seed: Some(seed), ..params.clone() };
    let mut s = Sampler::new(&p, vocab).unwrap();
    for _ in 0..counter {
        s.take_device_token(0);
    }
    s
}

#[test]
fn device_sampler_picks_the_cpu_samplers_tokens() {
    if !common::have_gpu() {
        return;
    }
    let sets = param_sets();
    let (mut compared, mut host_rows, mut case) = (0usize, 0usize, 0u64);
    for vocab in [1000, 32_000, 151_936, 262_144] {
        let mut dev = StandaloneSampler::new(0, &opts(true), 8, vocab).unwrap();
        let batches = if vocab > 100_000 { 12 } else { 24 };
        for batch in 0..batches {
            let mut logits = Vec::with_capacity(8 * vocab);
            let mut cpu = Vec::new();
            let mut params = Vec::new();
            for r in 0..8 {
                case += 1;
                let kind = (batch + r) % 5;
                logits.extend(logits_row(kind, vocab, case));
                let p = &sets[(batch * 8 + r) % sets.len()];
                let s = cpu_sampler(p, splitmix64(case, 99), splitmix64(case, 98) % 1000, vocab);
                params.push(s.device_params().unwrap());
                cpu.push((s, kind, p.clone()));
            }
            dev.upload(&logits).unwrap();
            let ids = dev.run(&params).unwrap().to_vec();
            for (r, ((s, kind, p), id)) in cpu.iter_mut().zip(ids).enumerate() {
                let row = &mut logits[r * vocab..(r + 1) * vocab];
                let want = s.sample(row, TokenHistory::default()).id;
                if id == HOST_ROW {
                    host_rows += 1;
                    continue;
                }
                assert_eq!(id, want, "vocab {vocab}, batch {batch}, row {r} (kind {kind}), {p:?}");
                compared += 1;
            }
        }
    }
    eprintln!("{compared} device ids equal the CPU sampler's; {host_rows} rows left to the host");
    assert!(host_rows * 20 <= compared, "the device left {host_rows} rows to the host");
}

#[test]
fn too_many_tied_candidates_are_left_to_the_host() {
    if !common::have_gpu() {
        return;
    }
    // 150k equal logits and top-k 100,000: the cut falls inside one bin of 150k candidates
    let vocab = 151_936;
    let mut dev = StandaloneSampler::new(0, &opts(true), 2, vocab).unwrap();
    let mut logits = logits_row(5, vocab, 1);
    logits.extend(logits_row(0, vocab, 2));
    let p = sampling(1.0, 100_000, 1.0, 0.0);
    let params: Vec<_> = (0..2).map(|r| cpu_sampler(&p, r, 0, vocab).device_params().unwrap()).collect();
    dev.upload(&logits).unwrap();
    let ids = dev.run(&params).unwrap().to_vec();
    assert_eq!(ids[0], HOST_ROW);
    let want = cpu_sampler(&p, 1, 0, vocab).sample(&mut logits[vocab..], TokenHistory::default()).id;
    assert_eq!(ids[1], want, "the other row is unaffected");
    // and the next step starts clean
    dev.upload(&logits_row(0, vocab, 2)).unwrap();
    let ids = dev.run(&params[1..]).unwrap().to_vec();
    assert_eq!(ids[0], want);
}

#[test]
fn device_sampling_time() {
    if !common::have_gpu() {
        return;
    }
    let vocab = 151_936;
    let mut dev = StandaloneSampler::new(0, &opts(true), 8, vocab).unwrap();
    let logits: Vec<f32> = (0..8).flat_map(|r| logits_row(3, vocab, r)).collect();
    dev.upload(&logits).unwrap();
    for (name, p) in [
        ("greedy", SamplingParams::greedy()),
        ("t0.8", sampling(0.8, 0, 1.0, 0.0)),
        ("t0.8 k40 p0.95", sampling(0.8, 40, 0.95, 0.0)),
        ("t0.8 p0.95", sampling(0.8, 0, 0.95, 0.0)),
    ] {
        for rows in [1, 8] {
            let params: Vec<_> =
                (0..rows).map(|r| cpu_sampler(&p, r as u64, 0, vocab).device_params().unwrap()).collect();
            let us = dev.time(&params, 200).unwrap();
            eprintln!(
                "device sampling, vocab {vocab}, {name}, {rows} rows: {us:.1} us per step (eager launches)"
            );
        }
    }
}

fn engine(graphs: bool) -> Engine {
    let mut config = presets::config("qwen2.5-0.5b").unwrap();
    config.num_hidden_layers = 2; // the full 151,936 vocabulary, fewer layers
    config.layer_types.truncate(2);
    let source = SyntheticSource::new(config.clone(), 3);
    let cfg = EngineConfig {
        device: Device::Cuda(0),
        weight_format: WeightFormat::F16,
        cuda: opts(graphs),
        max_seqs: 8,
        max_context: 256,
        max_batch_tokens: 256,
        ..Default::default()
    };
    Engine::from_source(config, &source, None, cfg).unwrap()
}

/// Eight requests with their own seeds and parameters (the ninth set, logprobs, is added by the
/// caller to force host sampling).
fn requests(n: usize) -> Vec<SamplingParams> {
    let sets = param_sets();
    (0..8)
        .map(|i| SamplingParams {
            seed: Some(1000 + i as u64),
            max_tokens: Some(n),
            ignore_eos: true,
            ..sets[(i + 1) % sets.len()].clone()
        })
        .collect()
}

fn generate(engine: &mut Engine, prompts: &[Vec<u32>], params: &[SamplingParams]) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Sequence> = prompts
        .iter()
        .zip(params)
        .map(|(p, s)| engine.new_sequence(&Prompt::Ids(p.clone()), s.clone()).unwrap())
        .collect();
    common::run_to_end(engine, &mut seqs)
}

#[test]
fn seeded_sampling_is_the_same_on_device_and_host_in_graphs_and_batches() {
    if !common::have_gpu() {
        return;
    }
    // One-token prompts: every step then runs the GEMV kernels, whose sums do not depend on the
    // batch (a longer prompt's prefill goes through cuBLAS, whose rounding depends on the token
    // count), and no prompt fills a KV block the prefix cache could hand to a later run (its
    // recomputed suffix would round differently). Sampling from a random model's flat
    // distribution over 151,936 tokens turns any rounding difference into another token.
    let n = 48;
    let prompts: Vec<Vec<u32>> = (0..8u32).map(|i| vec![i * 7919 + 5]).collect();
    let params = requests(n);
    let mut graphs = engine(true);
    let batched = generate(&mut graphs, &prompts, &params);
    // the host samples the same device logits when logprobs are asked for
    let host: Vec<SamplingParams> =
        params.iter().map(|p| SamplingParams { logprobs: Some(0), ..p.clone() }).collect();
    assert_eq!(batched, generate(&mut graphs, &prompts, &host), "device vs host sampling");
    for (i, want) in batched.iter().enumerate() {
        let single = generate(&mut graphs, &prompts[i..i + 1], &params[i..i + 1]);
        assert_eq!(&single[0], want, "request {i}: alone vs in a batch of 8");
    }
    drop(graphs);
    let mut eager = engine(false);
    assert_eq!(batched, generate(&mut eager, &prompts, &params), "graph replay vs eager");
    let distinct = batched.iter().map(|t| t.iter().collect::<std::collections::BTreeSet<_>>().len());
    eprintln!("distinct tokens per request: {:?}", distinct.collect::<Vec<_>>());
}

#[test]
fn sampled_decode_steps_do_not_allocate_on_the_device() {
    if !common::have_gpu() {
        return;
    }
    let mut engine = engine(true);
    let p = SamplingParams { max_tokens: Some(120), ignore_eos: true, ..requests(120)[4].clone() };
    let mut seq = engine.new_sequence(&Prompt::Ids(vec![1, 2, 3, 4]), p).unwrap();
    for _ in 0..3 {
        engine.forward_step(&mut [&mut seq]).unwrap();
    }
    let (before, free_before) = (cuda::allocations(), cuda::free_memory().unwrap());
    for _ in 0..100 {
        assert_eq!(engine.forward_step(&mut [&mut seq]).unwrap(), 1);
    }
    assert_eq!(cuda::allocations(), before, "device allocations during 100 sampled decode steps");
    assert_eq!(cuda::free_memory().unwrap(), free_before, "device memory taken during 100 sampled steps");
}
