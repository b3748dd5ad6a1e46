//! A decode step — the batched forward pass and sampling — allocates nothing once warm. In a
//! test binary of its own, so no other test's allocations are counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use edgellm::engine::{Engine, EngineConfig, Prompt, Sequence};
use edgellm::quant::WeightFormat;
use edgellm::SamplingParams;

/// Counts heap allocations while `COUNTING` is set, on the threads of a rayon pool only: the
/// steps run inside the engine's pool, and the test harness's own threads (reporting the test
/// before, starting the next) allocate concurrently — counting those made the test flaky on a
/// loaded machine.
struct CountingAlloc;

fn counting() -> bool {
    COUNTING.load(Ordering::Relaxed) && rayon::current_thread_index().is_some()
}

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const PROMPTS: [&str; 4] =
    ["Licensed under the Apache License", "the quick brown fox", "fn main() {}", "a b c d e f g"];

/// Serializes the tests: the allocation counter is global.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn decode_steps_do_not_allocate() {
    decode_steps_do_not_allocate_with(WeightFormat::F32);
}

// int8/int4 weights quantize the activations into a per-thread buffer, reused once warm
#[test]
fn decode_steps_do_not_allocate_int8() {
    decode_steps_do_not_allocate_with(WeightFormat::Int8);
}

#[test]
fn decode_steps_do_not_allocate_int4() {
    decode_steps_do_not_allocate_with(WeightFormat::INT4);
}

fn decode_steps_do_not_allocate_with(weight_format: WeightFormat) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cfg = EngineConfig { max_seqs: 4, max_context: 256, threads: 2, weight_format, ..Default::default() };
    let mut engine = Engine::load(&common::fixture("tiny-llama"), cfg).unwrap();
    let mut seqs: Vec<Sequence> = PROMPTS
        .iter()
        .map(|p| {
            engine
                .new_sequence(
                    &Prompt::Text(p.to_string()),
                    SamplingParams { max_tokens: Some(200), ignore_eos: true, ..SamplingParams::greedy() },
                )
                .unwrap()
        })
        .collect();
    let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
    // prefill and a few decode steps to warm up
    // steps run inside the engine's pool, as `Engine::generate` runs them
    let pool = engine.thread_pool();
    pool.install(|| {
        for _ in 0..4 {
            engine.forward_step(&mut refs).unwrap();
        }
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(engine.forward_step(&mut refs).unwrap(), 4);
        }
        COUNTING.store(false, Ordering::Relaxed);
    });
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "heap allocations in 100 decode steps of a batch of 4 ({weight_format} weights)"
    );
}
