//! `matmul` at model shapes: decode GEMV (1 row; reports GB/s of weights streamed), batched
//! decode (4 and 8 rows, the register-tiled path; GB/s of weights, which a memory-bound step
//! keeps near the 1-row figure) and prefill GEMM (128 rows; reports FLOP/s as elements/s), in
//! every storage format.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use edgellm::backend::cpu::{matmul, Matrix};
use edgellm::quant::WeightFormat;

use super::values;

/// (label, out features, in features).
const SHAPES: [(&str, usize, usize); 5] = [
    ("qwen2.5-0.5b qkv", 1152, 896),
    ("qwen2.5-0.5b gate_up", 9728, 896),
    ("qwen2.5-0.5b down", 896, 4864),
    ("llama-3.2-1b gate_up", 16384, 2048),
    ("llama-3.1-8b o", 4096, 4096),
];

fn bench(c: &mut Criterion) {
    for (dtype, name) in [
        (WeightFormat::F32, "f32"),
        (WeightFormat::BF16, "bf16"),
        (WeightFormat::F16, "f16"),
        (WeightFormat::Int8, "int8"),
        (WeightFormat::INT4, "int4"),
    ] {
        let mut g = c.benchmark_group(format!("matmul/gemv/{name}"));
        for (label, rows, cols) in SHAPES {
            let w = Matrix::from_f32(rows, cols, values(rows * cols, 1)).converted(dtype);
            let x = values(cols, 2);
            let mut out = vec![0f32; rows];
            g.throughput(Throughput::Bytes(w.size_bytes() as u64));
            g.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(|| matmul(&x, 1, &w, &mut out)));
        }
        g.finish();
        for m in [4, 8] {
            let mut g = c.benchmark_group(format!("matmul/batch{m}/{name}"));
            for (label, rows, cols) in &SHAPES[..3] {
                let w = Matrix::from_f32(*rows, *cols, values(rows * cols, 1)).converted(dtype);
                let x = values(m * cols, 2);
                let mut out = vec![0f32; m * rows];
                g.throughput(Throughput::Bytes(w.size_bytes() as u64));
                g.bench_function(BenchmarkId::from_parameter(label), |b| {
                    b.iter(|| matmul(&x, m, &w, &mut out))
                });
            }
            g.finish();
        }
        let mut g = c.benchmark_group(format!("matmul/gemm128/{name}"));
        let m = 128;
        for (label, rows, cols) in &SHAPES[..3] {
            let w = Matrix::from_f32(*rows, *cols, values(rows * cols, 1)).converted(dtype);
            let x = values(m * cols, 2);
            let mut out = vec![0f32; m * rows];
            g.throughput(Throughput::Elements((2 * m * rows * cols) as u64));
            g.bench_function(BenchmarkId::from_parameter(label), |b| b.iter(|| matmul(&x, m, &w, &mut out)));
        }
        g.finish();
    }
}

criterion_group!(name = benches; config = super::config(); targets = bench);
