//! `rmsnorm` over rows of model widths; reports GB/s (rows read and written, weights read).

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use edgellm::backend::cpu::ops::rmsnorm;

use super::values;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rmsnorm");
    for (label, hidden) in [("qwen2.5-0.5b", 896), ("llama-3.2-1b", 2048), ("llama-3.1-8b", 4096)] {
        for rows in [1, 128] {
            let x = values(rows * hidden, 1);
            let w = values(hidden, 2);
            let mut out = vec![0f32; rows * hidden];
            g.throughput(Throughput::Bytes((4 * (2 * rows * hidden + hidden)) as u64));
            g.bench_function(BenchmarkId::new(label, format!("{rows}x{hidden}")), |b| {
                b.iter(|| {
                    for (xr, or) in x.chunks(hidden).zip(out.chunks_mut(hidden)) {
                        rmsnorm(xr, &w, 0.0, 1e-6, or);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(name = benches; config = super::config(); targets = bench);
