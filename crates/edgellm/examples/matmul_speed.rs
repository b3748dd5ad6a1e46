//! Matmul throughput at Qwen2.5-0.5B shapes: `cargo run --release -p edgellm --example matmul_speed`.
use edgellm::backend::cpu::{matmul, Matrix};
use edgellm::quant::WeightFormat;
use std::time::Instant;

fn main() {
    for dtype in [WeightFormat::F32, WeightFormat::BF16, WeightFormat::Int8, WeightFormat::INT4] {
        for (m, n, k) in [
            (1, 1152, 896),
            (1, 9728, 896),
            (1, 896, 4864),
            (1, 151936, 896),
            (2, 9728, 896),
            (4, 9728, 896),
            (8, 9728, 896),
            (16, 9728, 896),
            (31, 9728, 896),
            (4, 896, 4864),
            (32, 9728, 896),
            (128, 9728, 896),
        ] {
            let w =
                Matrix::from_f32(n, k, (0..n * k).map(|i| (i % 17) as f32 * 0.01).collect()).converted(dtype);
            let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
            let mut out = vec![0f32; m * n];
            matmul(&x, m, &w, &mut out);
            let iters = 20;
            let t = Instant::now();
            for _ in 0..iters {
                matmul(&x, m, &w, &mut out);
            }
            let s = t.elapsed().as_secs_f64() / iters as f64;
            println!(
                "{dtype:?} {m}x{n}x{k}: {:.3} ms, {:.1} GB/s weights, {:.1} GFLOP/s",
                s * 1e3,
                w.size_bytes() as f64 / s / 1e9,
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
