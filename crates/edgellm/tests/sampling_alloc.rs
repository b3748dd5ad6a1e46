//! `Sampler::sample` allocates nothing per token once the sampler is built (unless logprobs are
//! requested), and neither does `StopMatcher::push` once its buffers have grown. Counted with a
//! global allocator that tallies allocations made on the current thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edgellm::sampling::{Sampler, StopMatcher, TokenHistory};
use edgellm::SamplingParams;

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialized thread-local
// `Cell`, which needs no allocation to access.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

#[test]
fn sample_does_not_allocate() {
    let n_vocab = 32_000;
    let base: Vec<f32> = (0..n_vocab).map(|i| ((i * 7919 % 1000) as f32) / 100.0 - 5.0).collect();
    let mut logits = base.clone();
    let prompt: Vec<u32> = (0..100).collect();
    let mut generated: Vec<u32> = Vec::with_capacity(64);

    let mut configs = vec![
        SamplingParams::greedy(),
        SamplingParams { seed: Some(1), ..SamplingParams::default() },
        SamplingParams { seed: Some(1), top_k: 40, top_p: 0.9, min_p: 0.05, ..SamplingParams::default() },
        SamplingParams { seed: Some(1), top_p: 0.99, temperature: 0.8, ..SamplingParams::default() },
        SamplingParams {
            seed: Some(1),
            repetition_penalty: 1.2,
            presence_penalty: 0.5,
            frequency_penalty: 0.5,
            ..SamplingParams::default()
        },
    ];
    configs[2].logit_bias.insert(17, 2.0);
    for params in &configs {
        let mut sampler = Sampler::new(params, n_vocab).unwrap();
        generated.clear();
        let before = allocs();
        for _ in 0..64 {
            logits.copy_from_slice(&base);
            let t = sampler.sample(&mut logits, TokenHistory::new(&prompt, &generated));
            generated.push(t.id);
        }
        assert_eq!(allocs() - before, 0, "{params:?}");
    }

    // the counter works: requested logprobs do allocate (the returned top list)
    let params = SamplingParams { logprobs: Some(5), ..SamplingParams::greedy() };
    let mut sampler = Sampler::new(&params, n_vocab).unwrap();
    let before = allocs();
    sampler.sample(&mut logits, TokenHistory::new(&prompt, &generated));
    assert!(allocs() > before);
}

#[test]
fn stop_matcher_push_does_not_allocate_in_steady_state() {
    let mut m = StopMatcher::new(&["<|im_end|>".to_string(), "\n\nUser:".to_string()]);
    let mut out = String::with_capacity(4096);
    let deltas = ["Hello", " wor", "ld", " <", "|im", "_st", "art|>", "\n", "\n", "Us", "x"];
    let before = allocs();
    for d in deltas.iter().cycle().take(200) {
        m.push(d, &mut out);
    }
    assert_eq!(allocs() - before, 0);
}
