//! Scheduler tests on the tiny-qwen2 fixture (random weights: gibberish, but deterministic).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/tiny-qwen2")
}

fn engine(max_seqs: usize, kv_tokens: usize) -> Engine {
    let cfg =
        EngineConfig { max_seqs, kv_tokens, threads: 1, max_batch_tokens: 64, ..EngineConfig::default() };
    Engine::load(&fixture(), cfg).unwrap()
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(max_tokens), ignore_eos: true, ..SamplingParams::greedy() }
}

const PROMPTS: &[&str] = &[
    "hello world",
    "the quick brown fox jumps over the lazy dog, again and again and again",
    "1 2 3",
    "a",
    "def fib(n):",
    "once upon a time there was",
];

/// Every event of a request, tagged with its index, on one shared channel (so tests see the
/// order in which the loop produced them).
struct Tagged(usize, mpsc::Sender<(usize, RequestEvent)>);

impl EventSink for Tagged {
    fn send(&mut self, event: RequestEvent) -> bool {
        self.1.send((self.0, event)).is_ok()
    }
}

fn submit_all(
    s: &Scheduler,
    prompts: &[&str],
    params: &SamplingParams,
) -> mpsc::Receiver<(usize, RequestEvent)> {
    let (tx, rx) = mpsc::channel();
    for (i, p) in prompts.iter().enumerate() {
        let sink = Box::new(Tagged(i, tx.clone()));
        s.submit(Request { prompt: Prompt::Text(p.to_string()), params: params.clone(), sink }).unwrap();
    }
    rx
}

/// Collects events until every request is done: (per-request ids, the order of (index, done)).
fn collect(rx: &mpsc::Receiver<(usize, RequestEvent)>, n: usize) -> (Vec<Vec<u32>>, Vec<(usize, bool)>) {
    let mut ids = vec![Vec::new(); n];
    let mut order = Vec::new();
    let mut done = 0;
    while done < n {
        let (i, event) = rx.recv_timeout(Duration::from_secs(60)).expect("event");
        match event {
            RequestEvent::Accepted { .. } => {}
            RequestEvent::Token(t) => {
                ids[i].push(t.id);
                order.push((i, false));
            }
            RequestEvent::Done(c) => {
                assert_eq!(c.usage.completion_tokens, ids[i].len());
                order.push((i, true));
                done += 1;
            }
            RequestEvent::Error(e) => panic!("request {i}: {e}"),
        }
    }
    (ids, order)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_greedy_matches_alone() {
    let params = greedy(12);
    let mut alone = Vec::new();
    let s = Scheduler::spawn(engine(4, 0), SchedulerConfig::default()).unwrap();
    for p in PROMPTS {
        let (ids, _) = collect(&submit_all(&s, &[p], &params), 1);
        alone.push(ids.into_iter().next().unwrap());
    }
    // six at once on four slots: batching, queueing and chunked prefill all at work
    let (together, _) = collect(&submit_all(&s, PROMPTS, &params), PROMPTS.len());
    assert_eq!(together, alone);
    wait_until("idle", || s.metrics().running() == 0);
    let m = s.metrics().snapshot();
    assert_eq!(m.kv_blocks_used(), 0);
    assert_eq!(m.generated_tokens, 2 * 12 * PROMPTS.len() as u64);
    assert_eq!(m.ttft.count, 2 * PROMPTS.len() as u64);
    assert_eq!(m.finished.iter().find(|(r, _)| *r == "length").unwrap().1, 2 * PROMPTS.len() as u64);
}

#[test]
fn queues_beyond_max_seqs() {
    // one slot: each request runs to completion before the next one's first token
    let s = Scheduler::spawn(engine(1, 0), SchedulerConfig::default()).unwrap();
    let (_, order) = collect(&submit_all(&s, &PROMPTS[..3], &greedy(5)), 3);
    let expect: Vec<(usize, bool)> = (0..3).flat_map(|i| (0..6).map(move |k| (i, k == 5))).collect();
    assert_eq!(order, expect);

    // two slots: the third request starts only after one of the first two is done
    let s = Scheduler::spawn(engine(2, 0), SchedulerConfig::default()).unwrap();
    let (_, order) = collect(&submit_all(&s, &PROMPTS[..3], &greedy(5)), 3);
    let first_done = order.iter().position(|&(_, d)| d).unwrap();
    let third_starts = order.iter().position(|&(i, _)| i == 2).unwrap();
    assert!(third_starts > first_done, "{order:?}");
}

#[test]
fn admission_waits_for_kv() {
    // four slots, but KV for one worst case (16 prompt-ish + 40 tokens ≈ 4 blocks of 16) only
    let s = Scheduler::spawn(engine(4, 80), SchedulerConfig::default()).unwrap();
    let (_, order) = collect(&submit_all(&s, &["hello world", "1 2 3", "a"], &greedy(40)), 3);
    let mut seen_done = 0;
    for (k, &(i, done)) in order.iter().enumerate() {
        if done {
            seen_done += 1;
        } else {
            assert_eq!(i, seen_done, "request {i} ran before {seen_done} finished (event {k})");
        }
    }
}

#[test]
fn queue_limit_refuses_with_busy() {
    let s = Scheduler::spawn(engine(1, 0), SchedulerConfig { max_waiting: 1 }).unwrap();
    let (tx, _rx) = mpsc::channel();
    let mut results = Vec::new();
    for i in 0..4 {
        let sink = Box::new(Tagged(i, tx.clone()));
        let request = Request { prompt: Prompt::Text("hi".into()), params: greedy(200), sink };
        results.push(s.submit(request));
    }
    // at most one runs and one waits; the others are refused
    assert!(results.iter().filter(|r| matches!(r, Err(Error::Busy { .. }))).count() >= 2);
    assert!(s.metrics().snapshot().rejected >= 2);
}

#[test]
fn cancellation_frees_kv() {
    let s = Scheduler::spawn(engine(4, 0), SchedulerConfig::default()).unwrap();
    let total = s.metrics().snapshot().kv_blocks_total;

    // the client goes away: its receiver is dropped after a few tokens
    let (tx, rx) = mpsc::channel();
    s.submit(Request { prompt: Prompt::Text("hello".into()), params: greedy(400), sink: Box::new(tx) })
        .unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if let RequestEvent::Token(_) = rx.recv().unwrap() {
            tokens += 1;
        }
    }
    drop(rx);

    // an explicit cancel
    let (tx, rx) = mpsc::channel();
    let handle = s
        .submit(Request { prompt: Prompt::Text("world".into()), params: greedy(400), sink: Box::new(tx) })
        .unwrap();
    assert!(matches!(rx.recv().unwrap(), RequestEvent::Accepted { prompt_tokens } if prompt_tokens > 0));
    assert!(matches!(rx.recv().unwrap(), RequestEvent::Token(_)));
    handle.cancel();
    let done = loop {
        if let RequestEvent::Done(c) = rx.recv().unwrap() {
            break c;
        }
    };
    assert_eq!(done.finish_reason, FinishReason::Cancelled);

    wait_until("all KV blocks free", || {
        let m = s.metrics().snapshot();
        m.running == 0 && m.kv_blocks_free == total
    });
    let m = s.metrics().snapshot();
    assert_eq!(m.finished.iter().find(|(r, _)| *r == "cancelled").unwrap().1, 2);
    assert!(m.generated_tokens < 100, "cancelled requests kept generating: {}", m.generated_tokens);
}

#[test]
fn bad_requests_report_errors() {
    let s = Scheduler::spawn(engine(2, 0), SchedulerConfig::default()).unwrap();
    let (tx, rx) = mpsc::channel();
    let long = Prompt::Ids(vec![1; 600]); // the fixture's context is 512
    s.submit(Request { prompt: long, params: greedy(4), sink: Box::new(tx.clone()) }).unwrap();
    match rx.recv().unwrap() {
        RequestEvent::Error(Error::Invalid { what: "prompt", why }) => assert!(why.contains("512"), "{why}"),
        other => panic!("expected a prompt error, got {other:?}"),
    }
    let bad = SamplingParams { top_p: 0.0, ..greedy(4) };
    s.submit(Request { prompt: Prompt::Text("x".into()), params: bad, sink: Box::new(tx) }).unwrap();
    assert!(matches!(rx.recv().unwrap(), RequestEvent::Error(Error::Invalid { what: "top_p", .. })));
    assert_eq!(s.metrics().waiting(), 0);
}

#[test]
fn shutdown_finishes_in_flight_requests() {
    let s = Scheduler::spawn(engine(2, 0), SchedulerConfig::default()).unwrap();
    let rx = submit_all(&s, &PROMPTS[..2], &greedy(6));
    s.shutdown();
    let (ids, _) = collect(&rx, 2);
    assert!(ids.iter().all(|ids| ids.len() == 6));
}
