//! Sampling one token from a vocabulary-sized logits row: greedy, and temperature with top-k and
//! top-p; reports vocabulary entries per second.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use edgellm::sampling::{Sampler, TokenHistory};
use edgellm::SamplingParams;

use super::values;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sampling");
    let top = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: Some(1),
        ..SamplingParams::default()
    };
    for (label, n_vocab) in [("qwen2.5", 151_936usize), ("llama-3", 128_256)] {
        let row = values(n_vocab, 1);
        let mut logits = row.clone();
        let history = [1u32, 2, 3, 4];
        for (kind, params) in [("greedy", SamplingParams::greedy()), ("top-k40-p0.95", top.clone())] {
            let mut sampler = Sampler::new(&params, n_vocab).unwrap();
            g.throughput(Throughput::Elements(n_vocab as u64));
            g.bench_function(BenchmarkId::new(kind, label), |b| {
                b.iter(|| {
                    logits.copy_from_slice(&row);
                    sampler.sample(&mut logits, TokenHistory::split(&history, 2))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(name = benches; config = super::config(); targets = bench);
