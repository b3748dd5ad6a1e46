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
        s.submit(Request::new(Prompt::Text(p.to_string()), params.clone(), sink)).unwrap();
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
    assert_eq!(m.kv_blocks_used, 0);
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
fn preemption_finishes_every_request_with_the_tokens_of_alone() {
    // KV for 96 positions (6 blocks): one request at a time fits (prompt + 40 tokens ≤ 4
    // blocks), four at once do not; the newest are preempted and recompute later
    let params = greedy(40);
    let alone: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| {
            let s = Scheduler::spawn(engine(1, 0), SchedulerConfig::default()).unwrap();
            collect(&submit_all(&s, &[p], &params), 1).0.remove(0)
        })
        .collect();
    let s = Scheduler::spawn(engine(4, 96), SchedulerConfig::default()).unwrap();
    let (together, _) = collect(&submit_all(&s, PROMPTS, &params), PROMPTS.len());
    assert_eq!(together, alone);
    wait_until("idle", || s.metrics().running() == 0);
    let m = s.metrics().snapshot();
    assert!(m.preemptions > 0, "the pool was never short: {m:?}");
    assert_eq!(m.kv_blocks_used, 0);
    assert_eq!(m.finished.iter().find(|(r, _)| *r == "length").unwrap().1, PROMPTS.len() as u64);
}

/// A prompt of `n` token ids that no other test uses.
fn ids(first: u32, n: usize) -> Vec<u32> {
    (first..first + n as u32).collect()
}

fn run_ids(s: &Scheduler, prompt: Vec<u32>, params: &SamplingParams) -> (Vec<u32>, Completion) {
    let (tx, rx) = mpsc::channel();
    s.submit(Request::new(Prompt::Ids(prompt), params.clone(), Box::new(tx))).unwrap();
    let mut tokens = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)).expect("event") {
            RequestEvent::Token(t) => tokens.push(t.id),
            RequestEvent::Done(c) => return (tokens, c),
            RequestEvent::Error(e) => panic!("{e}"),
            RequestEvent::Accepted { .. } => {}
        }
    }
}

#[test]
fn shared_prefix_is_reused_and_counted() {
    let s = Scheduler::spawn(engine(2, 0), SchedulerConfig::default()).unwrap();
    let params = greedy(6);
    let mut prompt = ids(100, 70);
    let (first, c) = run_ids(&s, prompt.clone(), &params);
    assert_eq!(c.usage.cached_tokens, 0);
    // the same 70 tokens: 4 full blocks are cached, but never the block of the last token
    let (again, c) = run_ids(&s, prompt.clone(), &params);
    assert_eq!((again, c.usage.cached_tokens), (first, 64));
    prompt.extend(ids(300, 10));
    let (_, c) = run_ids(&s, prompt, &params);
    assert_eq!(c.usage.cached_tokens, 64);
    wait_until("idle", || s.metrics().running() == 0);
    let m = s.metrics().snapshot();
    assert_eq!((m.prompt_tokens, m.prompt_tokens_cached), (70 + 70 + 80, 128));
    assert!((m.prefix_hit_rate() - 128.0 / 220.0).abs() < 1e-9);
    assert_eq!(m.kv_blocks_used, 0);
    assert!(m.kv_blocks_cached >= 4, "{m:?}");
}

#[test]
fn queue_limit_refuses_with_busy() {
    let s = Scheduler::spawn(engine(1, 0), SchedulerConfig { max_waiting: 1 }).unwrap();
    let (tx, _rx) = mpsc::channel();
    let mut results = Vec::new();
    for i in 0..4 {
        let sink = Box::new(Tagged(i, tx.clone()));
        let request = Request::new(Prompt::Text("hi".into()), greedy(200), sink);
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
    s.submit(Request::new(Prompt::Text("hello".into()), greedy(400), Box::new(tx))).unwrap();
    let mut tokens = 0;
    while tokens < 3 {
        if let RequestEvent::Token(_) = rx.recv().unwrap() {
            tokens += 1;
        }
    }
    drop(rx);

    // an explicit cancel
    let (tx, rx) = mpsc::channel();
    let handle = s.submit(Request::new(Prompt::Text("world".into()), greedy(400), Box::new(tx))).unwrap();
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
    s.submit(Request::new(long, greedy(4), Box::new(tx.clone()))).unwrap();
    match rx.recv().unwrap() {
        RequestEvent::Error(Error::Invalid { what: "prompt", why }) => assert!(why.contains("512"), "{why}"),
        other => panic!("expected a prompt error, got {other:?}"),
    }
    let bad = SamplingParams { top_p: 0.0, ..greedy(4) };
    s.submit(Request::new(Prompt::Text("x".into()), bad, Box::new(tx))).unwrap();
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

#[test]
fn pinned_system_prompt_survives_eviction() {
    use crate::tokenizer::ChatMessage;
    for pin in [false, true] {
        // 12 blocks; each flood request below takes 7
        let s = Scheduler::spawn(engine(1, 192), SchedulerConfig::default()).unwrap();
        let system = ChatMessage::system("you are a helpful assistant that answers briefly. ".repeat(4));
        let chat = |user: &str| Prompt::Chat(vec![system.clone(), ChatMessage::user(user)]);
        let (tx, rx) = mpsc::channel();
        let request = Request { pin_system_prompt: pin, ..Request::new(chat("hi"), greedy(4), Box::new(tx)) };
        s.submit(request).unwrap();
        while !matches!(rx.recv().unwrap(), RequestEvent::Done(_)) {}
        let pinned = s.metrics().snapshot().kv_blocks_pinned;
        for k in 0..3 {
            run_ids(&s, ids(10 + 100 * k, 100), &greedy(6));
        }
        let (tx, rx) = mpsc::channel();
        s.submit(Request::new(chat("hello again"), greedy(4), Box::new(tx))).unwrap();
        let done = loop {
            if let RequestEvent::Done(c) = rx.recv().unwrap() {
                break c;
            }
        };
        if pin {
            assert!(pinned >= 2, "the system prompt spans at least two blocks: {pinned}");
            assert_eq!(done.usage.cached_tokens, 16 * pinned, "pinned blocks were evicted");
        } else {
            assert_eq!(pinned, 0);
            assert_eq!(done.usage.cached_tokens, 0, "unpinned blocks survived three floods");
        }
    }
}
