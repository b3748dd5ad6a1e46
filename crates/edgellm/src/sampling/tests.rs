//! Sampler tests: determinism, greedy limits, penalties, bias, logprobs and draw frequencies.

use super::*;

/// `n` logits uniform in [-5, 5), reproducible from `seed`.
fn random_logits(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_f64() * 10.0 - 5.0) as f32).collect()
}

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams { seed: Some(1), ..SamplingParams::default() };
    f(&mut p);
    p
}

/// Samples `steps` tokens, each from fresh random logits, feeding them back as history.
fn generate(p: &SamplingParams, n_vocab: usize, steps: usize) -> Vec<u32> {
    let mut s = Sampler::new(p, n_vocab).unwrap();
    let mut out = Vec::new();
    for step in 0..steps {
        let mut logits = random_logits(1000 + step as u64, n_vocab);
        let t = s.sample(&mut logits, TokenHistory::new(&[1, 2, 3], &out)).id;
        out.push(t);
    }
    out
}

#[test]
fn same_seed_same_tokens() {
    let p = params(|p| {
        p.seed = Some(42);
        p.top_p = 0.95;
        p.top_k = 50;
        p.repetition_penalty = 1.1;
    });
    let a = generate(&p, 1000, 64);
    assert_eq!(a, generate(&p, 1000, 64));
    let b = generate(&SamplingParams { seed: Some(43), ..p.clone() }, 1000, 64);
    assert_ne!(a, b);
    let unseeded = Sampler::new(&SamplingParams::default(), 10).unwrap();
    assert_ne!(unseeded.seed(), Sampler::new(&SamplingParams::default(), 10).unwrap().seed());
}

#[test]
fn greedy_is_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(&SamplingParams::greedy(), 5).unwrap();
    let mut logits = [0.5, 2.0, -1.0, 2.0, 1.0];
    assert_eq!(s.sample(&mut logits, TokenHistory::default()).id, 1);
    let mut s = Sampler::new(&SamplingParams::greedy(), 300).unwrap();
    for seed in 0..20 {
        let logits = random_logits(seed, 300);
        let expected = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(s.sample(&mut logits.clone(), TokenHistory::default()).id, expected as u32);
    }
}

#[test]
fn top_k_one_equals_greedy() {
    let greedy = generate(&SamplingParams::greedy(), 500, 50);
    for temperature in [0.5, 1.0, 2.0] {
        assert_eq!(greedy, generate(&params(|p| (p.top_k, p.temperature) = (1, temperature)), 500, 50));
    }
    // min_p = 1 keeps only the most likely token too
    assert_eq!(greedy, generate(&params(|p| p.min_p = 1.0), 500, 50));
}

#[test]
fn temperature_to_zero_is_greedy() {
    let n_vocab = 200;
    let greedy = Sampler::new(&SamplingParams::greedy(), n_vocab).unwrap();
    let cold = Sampler::new(&params(|p| p.temperature = 1e-4), n_vocab).unwrap();
    let below_eps = Sampler::new(&params(|p| p.temperature = 1e-6), n_vocab).unwrap();
    let warm = Sampler::new(&params(|p| p.temperature = 1.0), n_vocab).unwrap();
    let mut samplers = [greedy, cold, below_eps, warm];
    let mut differs = 0;
    for seed in 0..100 {
        // distinct logits 0.01 apart: at T = 1e-4 the runner-up is e^-100 times less likely
        let keys = random_logits(seed, n_vocab);
        let mut order: Vec<usize> = (0..n_vocab).collect();
        order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        let mut logits = vec![0.0; n_vocab];
        for (rank, &i) in order.iter().enumerate() {
            logits[i] = rank as f32 * 0.01;
        }
        let ids: Vec<u32> =
            samplers.iter_mut().map(|s| s.sample(&mut logits.clone(), TokenHistory::default()).id).collect();
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[2]);
        differs += usize::from(ids[0] != ids[3]);
    }
    assert!(differs > 50, "temperature 1 should rarely pick the argmax of a flat distribution");
}

#[test]
fn logit_bias_forces_and_bans() {
    let p = params(|p| _ = p.logit_bias.insert(7, 100.0));
    assert!(generate(&p, 50, 30).iter().all(|&t| t == 7));
    let p = params(|p| {
        p.temperature = 0.0;
        p.logit_bias.insert(3, -100.0);
    });
    let mut s = Sampler::new(&p, 5).unwrap();
    assert_eq!(s.sample(&mut [0.0, 0.0, 0.0, 10.0, 1.0], TokenHistory::default()).id, 4);
    let out_of_vocab = params(|p| _ = p.logit_bias.insert(50, 1.0));
    assert!(matches!(Sampler::new(&out_of_vocab, 50), Err(Error::Invalid { what: "logit_bias", .. })));
}

#[test]
fn repetition_penalty_hand_example() {
    // token 0 (logit 3) appeared in the prompt: 3 / 2 = 1.5 < 2, so token 1 wins
    let p = params(|p| (p.temperature, p.repetition_penalty) = (0.0, 2.0));
    let mut s = Sampler::new(&p, 3).unwrap();
    let mut logits = [3.0, 2.0, -1.0];
    assert_eq!(s.sample(&mut logits, TokenHistory::new(&[0, 2], &[])).id, 1);
    assert_eq!(logits, [1.5, 2.0, -2.0]);
}

#[test]
fn presence_and_frequency_penalties_hand_example() {
    let p = params(|p| (p.temperature, p.presence_penalty, p.frequency_penalty) = (0.0, 1.0, 0.5));
    let mut s = Sampler::new(&p, 3).unwrap();
    // token 0 generated twice: 3 − 2·0.5 − 1 = 1; token 1 once: 2.5 − 0.5 − 1 = 1; token 2 only in prompt
    let mut logits = [3.0, 2.5, 0.9];
    assert_eq!(s.sample(&mut logits, TokenHistory::new(&[2, 2], &[0, 1, 0])).id, 0);
    assert_eq!(logits, [1.0, 1.0, 0.9]);
}

#[test]
fn logprobs_are_raw_log_softmax() {
    let n_vocab = 12;
    let p = params(|p| {
        p.logprobs = Some(n_vocab);
        p.temperature = 0.7;
        p.repetition_penalty = 1.3;
        p.logit_bias.insert(5, 3.0);
    });
    let p = SamplingParams { logprobs: Some(12), ..p };
    let mut s = Sampler::new(&p, n_vocab).unwrap();
    let raw = random_logits(9, n_vocab);
    let tok = s.sample(&mut raw.clone(), TokenHistory::new(&[4], &[5]));

    let max = raw.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + raw.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    let direct: Vec<f64> = raw.iter().map(|&l| l as f64 - lse).collect();

    let top = tok.top_logprobs.unwrap();
    assert_eq!(top.len(), n_vocab);
    let total: f64 = top.iter().map(|t| (t.logprob as f64).exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    assert!(top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
    for t in &top {
        assert!((t.logprob as f64 - direct[t.id as usize]).abs() < 1e-5);
    }
    assert!((tok.logprob.unwrap() as f64 - direct[tok.id as usize]).abs() < 1e-5);

    // top 3 only, and nothing when not requested
    let mut s3 = Sampler::new(&SamplingParams { logprobs: Some(3), ..p.clone() }, n_vocab).unwrap();
    let t3 = s3.sample(&mut raw.clone(), TokenHistory::default());
    assert_eq!(t3.top_logprobs.unwrap(), top[..3]);
    let mut s0 = Sampler::new(&SamplingParams { logprobs: None, ..p }, n_vocab).unwrap();
    let t0 = s0.sample(&mut raw.clone(), TokenHistory::default());
    assert_eq!((t0.logprob, t0.top_logprobs), (None, None));
}

/// Draw frequencies over `draws` samples of fixed logits.
fn frequencies(p: &SamplingParams, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut s = Sampler::new(p, logits.len()).unwrap();
    let mut counts = vec![0usize; logits.len()];
    let mut scratch = logits.to_vec();
    for _ in 0..draws {
        scratch.copy_from_slice(logits);
        counts[s.sample(&mut scratch, TokenHistory::default()).id as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / draws as f64).collect()
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.iter().map(|x| x / sum).collect()
}

#[test]
fn temperature_one_matches_softmax_frequencies() {
    let logits = [1.0, 2.0, 0.5, -1.0, 1.5];
    let expected = softmax(&logits);
    let got = frequencies(&params(|p| p.seed = Some(2024)), &logits, 20_000);
    for (g, e) in got.iter().zip(&expected) {
        // one standard deviation is at most 0.0035 here
        assert!((g - e).abs() < 0.015, "got {got:?}, expected {expected:?}");
    }
}

#[test]
fn temperature_and_top_k_reshape_frequencies() {
    let logits = [1.0, 2.0, 0.5, -1.0, 1.5];
    // T = 2: softmax(logits / 2); top_k = 2 keeps tokens 1 and 4
    let expected = softmax(&logits.map(|l| l / 2.0));
    let got = frequencies(&params(|p| p.temperature = 2.0), &logits, 20_000);
    for (g, e) in got.iter().zip(&expected) {
        assert!((g - e).abs() < 0.015, "got {got:?}, expected {expected:?}");
    }
    let got = frequencies(&params(|p| p.top_k = 2), &logits, 20_000);
    let p1 = 1.0 / (1.0 + (-0.5f64).exp());
    assert_eq!((got[0], got[2], got[3]), (0.0, 0.0, 0.0));
    assert!((got[1] - p1).abs() < 0.015 && (got[4] - (1.0 - p1)).abs() < 0.015, "{got:?}");
}

#[test]
fn stop_tokens_and_max_tokens() {
    let p = params(|p| {
        p.stop_token_ids = vec![9];
        p.max_tokens = Some(4);
    });
    let s = Sampler::new(&p, 10).unwrap().with_eos_token_ids(&[2, 3]);
    assert_eq!(s.finish_reason(2, 1), Some(FinishReason::Stop));
    assert_eq!(s.finish_reason(3, 1), Some(FinishReason::Stop));
    assert_eq!(s.finish_reason(9, 1), Some(FinishReason::Stop));
    assert_eq!(s.finish_reason(5, 3), None);
    assert_eq!(s.finish_reason(5, 4), Some(FinishReason::Length));

    let s = Sampler::new(&SamplingParams { ignore_eos: true, ..p }, 10).unwrap().with_eos_token_ids(&[2]);
    assert!(!s.is_stop_token(2));
    assert!(s.is_stop_token(9), "explicit stop ids still stop");
}

#[test]
fn token_history_split() {
    let tokens = [1, 2, 3, 4];
    let h = TokenHistory::split(&tokens, 3);
    assert_eq!((h.prompt, h.generated), (&[1, 2, 3][..], &[4][..]));
    assert_eq!(TokenHistory::split(&tokens, 9).generated, &[] as &[u32]);
}

/// The distribution the sampler should draw from, computed the plain way in f64: softmax of
/// `logits / t` over the top-k tokens, cut to the shortest rank prefix holding `top_p` of it.
fn truncated_softmax(logits: &[f32], t: f32, top_k: usize, top_p: f64) -> Vec<f64> {
    let scaled: Vec<f64> = logits.iter().map(|&l| (l / t) as f64).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
    order.truncate(if top_k == 0 { logits.len() } else { top_k });
    let max = scaled[order[0]];
    let total: f64 = order.iter().map(|&i| (scaled[i] - max).exp()).sum();
    let mut p = vec![0.0; logits.len()];
    let mut before = 0.0;
    for &i in &order {
        if before >= top_p {
            break;
        }
        p[i] = (scaled[i] - max).exp() / total;
        before += p[i];
    }
    let kept: f64 = p.iter().sum();
    p.iter().map(|x| x / kept).collect()
}

#[test]
fn seeded_frequencies_match_the_truncated_softmax() {
    // a fixed seed: the frequencies are deterministic, the tolerance is what makes the test
    // meaningful (4.5 standard deviations of each frequency, plus the weights' 2e-6)
    let logits = [1.0, 2.0, 0.5, -1.0, 1.5, 0.0, 2.5, -0.5];
    let draws = 40_000;
    for (t, k, top_p) in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 3, 1.0), (1.0, 0, 0.8), (0.9, 5, 0.7)] {
        let p = params(|p| (p.temperature, p.top_k, p.top_p, p.seed) = (t, k, top_p, Some(77)));
        let got = frequencies(&p, &logits, draws);
        let want = truncated_softmax(&logits, t, k, top_p as f64);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if w == 0.0 {
                assert_eq!(g, 0.0, "T {t} k {k} p {top_p}: token {i} is outside the kept set");
            }
            let sd = (w * (1.0 - w) / draws as f64).sqrt();
            assert!((g - w).abs() <= 4.5 * sd + 1e-5, "T {t} k {k} p {top_p}: token {i}: {g} vs {w}");
        }
    }
}

#[test]
fn top_k_never_picks_outside_the_k_best() {
    for seed in 0..20 {
        let logits = random_logits(seed, 500);
        let mut best: Vec<usize> = (0..500).collect();
        best.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let p = params(|p| (p.top_k, p.seed) = (7, Some(seed)));
        let mut s = Sampler::new(&p, 500).unwrap();
        for _ in 0..200 {
            let id = s.sample(&mut logits.clone(), TokenHistory::default()).id as usize;
            assert!(best[..7].contains(&id), "seed {seed}: {id} is not among the 7 best");
        }
    }
}

#[test]
fn device_params_say_what_the_sampler_does() {
    let p = params(|p| (p.temperature, p.top_k, p.top_p, p.min_p, p.seed) = (0.8, 40, 0.5, 0.1, Some(9)));
    let mut s = Sampler::new(&p, 100).unwrap();
    let d = s.device_params().unwrap();
    assert_eq!(
        (d.greedy, d.temperature, d.top_k, d.top_p, d.seed, d.counter),
        (false, 0.8, 40, 1 << 31, 9, 0)
    );
    assert_eq!(d.max_distance, -(0.1f32.ln()));
    s.take_device_token(3);
    assert_eq!(s.device_params().unwrap().counter, 1, "the next token's draw");
    // bias, penalties and logprobs need the host
    for host in [
        params(|p| _ = p.logit_bias.insert(1, 1.0)),
        params(|p| p.repetition_penalty = 1.1),
        params(|p| p.frequency_penalty = 0.5),
        params(|p| p.logprobs = Some(0)),
    ] {
        assert!(Sampler::new(&host, 100).unwrap().device_params().is_none(), "{host:?}");
    }
    assert!(Sampler::new(&SamplingParams::greedy(), 100).unwrap().device_params().unwrap().greedy);
}
