//! Criterion micro-benchmarks of the CPU kernels at real model shapes:
//! `cargo bench -p edgellm` (or `-- matmul` for one group). GEMV and attention report GB/s of
//! weights / KV read, prefill GEMM reports FLOP/s (as elements), norms GB/s, sampling vocab
//! entries per second.

mod benchmarks;

criterion::criterion_main!(
    benchmarks::matmul::benches,
    benchmarks::attention::benches,
    benchmarks::rmsnorm::benches,
    benchmarks::sampling::benches
);
