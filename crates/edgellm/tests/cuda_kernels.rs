//! Every CUDA kernel against its CPU twin on fresh random inputs (a new seed each run, printed
//! so a failure can be replayed with `EDGELLM_TEST_SEED`): embedding, RMSNorm (plain and with
//! the residual), the GEMV of every weight format at 1-8 tokens with the soft cap and the fused
//! gate/up (and, for 16-bit weights, with a decode layer's input norm and residual add folded in), the prefill path of quantized matrices (dequantize + GEMM, or the GEMV over groups of
//! tokens), RoPE with the paged KV write and paged attention for prefill and split-K decode over
//! fp16 and fp8 caches (GQA, sliding window, soft cap), and the argmax. Outputs start poisoned
//! (NaN), so an element a kernel does not write fails. Errors are ‖got − want‖ / ‖want‖ against
//! an f64 (or f32) reference, bounded as /work/.library/device/METHOD.md says: fp32 arithmetic
//! 1e-4, results stored in fp16 2e-3. Skipped with a message where no CUDA device is present.

mod common;

use edgellm::backend::cpu::attention::{paged_attention, AttnParams, TokenLayout};
use edgellm::backend::cpu::{ops, Matrix, MatrixData};
use edgellm::backend::cuda::harness::{
    attention_shared_bytes, Arg, Buffer, Epilogue, Fusion, GemvKernel, Kernels, ATTENTION_THREADS,
};
use edgellm::backend::cuda::CudaOptions;
use edgellm::kv::{KvShape, LayerKv, LayerView};
use edgellm::quant::{fp8, WeightFormat};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn kernels() -> Option<Kernels> {
    if !common::have_gpu() {
        return None;
    }
    Some(
        Kernels::new(0, &CudaOptions { kernel_cache: Some(common::kernel_cache()), ..CudaOptions::new() })
            .unwrap(),
    )
}

/// A fresh generator per test: `EDGELLM_TEST_SEED` or the clock.
fn rng(test: &str) -> StdRng {
    let seed = std::env::var("EDGELLM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-a..a)).collect()
}

fn f16_round(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

fn f16_bits_to_f32(h: &[u16]) -> Vec<f32> {
    h.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect()
}

/// ‖got − want‖ / ‖want‖; any non-finite output fails.
fn rel_err(what: &str, got: &[f32], want: &[f64], bound: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} is {} (unwritten or overflowed)", got[i]);
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    let err = (num / den.max(1e-300)).sqrt();
    assert!(err <= bound, "{what}: relative error {err:.3e} > {bound:.0e}");
    err
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// `x[n, cols] · wᵀ` in f64 over the dequantized weights.
fn reference_matmul(m: &Matrix, x: &[f32], n: usize) -> Vec<f64> {
    let mut w = vec![0f32; m.rows * m.cols];
    for (r, row) in w.chunks_exact_mut(m.cols).enumerate() {
        m.row_into(r, row);
    }
    let mut out = vec![0f64; n * m.rows];
    for t in 0..n {
        let xt = &x[t * m.cols..(t + 1) * m.cols];
        for (r, wr) in w.chunks_exact(m.cols).enumerate() {
            out[t * m.rows + r] = xt.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
    }
    out
}

fn format_kept(m: &Matrix, f: WeightFormat) -> bool {
    matches!(
        (&m.data, f),
        (MatrixData::Int8 { .. }, WeightFormat::Int8)
            | (MatrixData::Int4 { .. }, WeightFormat::Int4 { .. })
            | (MatrixData::Fp8 { .. }, WeightFormat::Fp8)
            | (MatrixData::BF16(_), WeightFormat::BF16)
            | (MatrixData::F16(_), WeightFormat::F16)
    )
}

const FORMATS: [WeightFormat; 7] = [
    WeightFormat::Int8,
    WeightFormat::Int4 { group: 64 },
    WeightFormat::INT4,
    WeightFormat::Int4 { group: 256 },
    WeightFormat::Fp8,
    WeightFormat::BF16,
    WeightFormat::F16,
];

#[test]
fn gemv_of_every_format_and_token_count_matches_the_cpu_twin() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("gemv");
    // 1, 2 and 4 warps per row for the int8 rows (1, 4.5 and 8 KB)
    for (rows, cols) in [(300, 1024), (77, 2304), (40, 8192)] {
        let w = uniform(&mut rng, rows * cols, 0.5);
        for format in FORMATS {
            let m = Matrix::from_f32(rows, cols, w.clone()).converted(format);
            assert!(format_kept(&m, format), "{format} fell back at {rows}x{cols}");
            let mut worst = 0f64;
            for n in 1..=8 {
                let x = f16_round(&uniform(&mut rng, n * cols, 1.0));
                let want = reference_matmul(&m, &x, n);
                let what = format!("{format} {rows}x{cols} n={n}");
                worst = worst.max(rel_err(&what, &k.matmul(&m, &x, n, 0.0, 0).unwrap(), &want, 1e-4));
                // soft cap: cap · tanh(v / cap), with a cap the sums reach
                let cap = 3.0;
                let capped: Vec<f64> = want.iter().map(|v| cap * (v / cap).tanh()).collect();
                let got = k.matmul(&m, &x, n, cap as f32, 0).unwrap();
                worst = worst.max(rel_err(&format!("{what} softcap"), &got, &capped, 1e-4));
            }
            // prefill sizes: dequantized to fp16 for the GEMM (fp16 weights: 2e-3), or the GEMV
            // over groups of 8 tokens when the scratch is too small
            let n = 13;
            let x = f16_round(&uniform(&mut rng, n * cols, 1.0));
            let want = reference_matmul(&m, &x, n);
            let gemm = k.matmul(&m, &x, n, 0.0, rows * cols).unwrap();
            let e_gemm = rel_err(&format!("{format} {rows}x{cols} n={n} gemm"), &gemm, &want, 2e-3);
            let chunked = k.matmul(&m, &x, n, 0.0, 0).unwrap();
            worst = worst.max(rel_err(&format!("{format} {rows}x{cols} n={n} gemv"), &chunked, &want, 1e-4));
            eprintln!("{format} {rows}x{cols}: GEMV worst {worst:.2e}, dequant+GEMM {e_gemm:.2e}");
        }
    }
}

#[test]
fn gated_gemv_of_every_format_matches_the_cpu_twin() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("gated");
    for (ffn, cols) in [(160, 1024), (96, 8192)] {
        let w = uniform(&mut rng, 2 * ffn * cols, 0.5);
        for format in FORMATS {
            let m = Matrix::from_f32(2 * ffn, cols, w.clone()).converted(format);
            let mut worst = 0f64;
            for n in 1..=8 {
                for (act, activation) in
                    [(0, edgellm::config::Activation::Silu), (1, edgellm::config::Activation::GeluTanh)]
                {
                    let x = f16_round(&uniform(&mut rng, n * cols, 0.2));
                    let gu = reference_matmul(&m, &x, n);
                    let gu32: Vec<f32> = gu.iter().map(|&v| v as f32).collect();
                    let mut want = vec![0f32; n * ffn];
                    for t in 0..n {
                        let row = &gu32[t * 2 * ffn..(t + 1) * 2 * ffn];
                        ops::gated_act(row, ffn, activation, &mut want[t * ffn..(t + 1) * ffn]);
                    }
                    let got = k.gated(&m, &x, n, act).unwrap();
                    let what = format!("{format} gated {ffn}x{cols} n={n} act={act}");
                    worst = worst.max(rel_err(&what, &got, &f64s(&want), 2e-3));
                }
            }
            eprintln!("{format} gated {ffn}x{cols}: worst {worst:.2e}");
        }
    }
}

#[test]
fn embedding_and_norms_match_the_cpu_twins() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("norms");
    let (vocab, hidden, n) = (1000, 896, 5);
    let table: Vec<f32> = uniform(&mut rng, vocab * hidden, 1.0);
    let table_bf16: Vec<u16> = table.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
    let ids: Vec<i32> = (0..n).map(|_| rng.gen_range(0..vocab as i32)).collect();
    let (ids_d, table_d) = (k.upload(&ids).unwrap(), k.upload(&table_bf16).unwrap());
    let x = k.poisoned(n * hidden * 4).unwrap();
    let scale = 1.7f32;
    // SAFETY: embed_bf16(ids, table, x, hidden, scale) with x [n, hidden] f32.
    unsafe {
        k.launch(
            "embed_bf16",
            (n as u32, 1),
            1024,
            0,
            &[
                Arg::Ptr(ids_d.ptr()),
                Arg::Ptr(table_d.ptr()),
                Arg::Ptr(x.ptr()),
                Arg::I32(hidden as i32),
                Arg::F32(scale),
            ],
        )
        .unwrap();
    }
    let want: Vec<f64> = ids
        .iter()
        .flat_map(|&i| {
            table_bf16[i as usize * hidden..][..hidden]
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32() as f64 * scale as f64)
        })
        .collect();
    rel_err("embed_bf16", &k.download(&x, n * hidden).unwrap(), &want, 1e-6);

    // rmsnorm over selected rows, fp16 out
    let xs = uniform(&mut rng, n * hidden, 3.0);
    let w = uniform(&mut rng, hidden, 1.0);
    let rows: Vec<i32> = vec![4, 0, 2];
    let (xd, wd, rd) = (k.upload(&xs).unwrap(), k.upload(&w).unwrap(), k.upload(&rows).unwrap());
    let out = k.poisoned(rows.len() * hidden * 2).unwrap();
    // SAFETY: rmsnorm_f16(x, w, out, rows, hidden, eps), out [rows, hidden] fp16.
    unsafe {
        k.launch(
            "rmsnorm_f16",
            (rows.len() as u32, 1),
            1024,
            0,
            &[
                Arg::Ptr(xd.ptr()),
                Arg::Ptr(wd.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::Ptr(rd.ptr()),
                Arg::I32(hidden as i32),
                Arg::F32(1e-6),
            ],
        )
        .unwrap();
    }
    let mut want = vec![0f32; rows.len() * hidden];
    for (i, &r) in rows.iter().enumerate() {
        ops::rmsnorm(&xs[r as usize * hidden..][..hidden], &w, 0.0, 1e-6, &mut want[i * hidden..][..hidden]);
    }
    let got = f16_bits_to_f32(&k.download(&out, rows.len() * hidden).unwrap());
    rel_err("rmsnorm_f16", &got, &f64s(&want), 2e-3);

    // residual + post-norm, then the next norm
    let h = uniform(&mut rng, n * hidden, 3.0);
    let post = uniform(&mut rng, hidden, 1.0);
    let (hd_, pd) = (k.upload(&h).unwrap(), k.upload(&post).unwrap());
    let out = k.poisoned(n * hidden * 2).unwrap();
    // SAFETY: residual_rmsnorm_f16(x, h, post_w, next_w, out, hidden, eps) on [n, hidden].
    unsafe {
        k.launch(
            "residual_rmsnorm_f16",
            (n as u32, 1),
            1024,
            0,
            &[
                Arg::Ptr(xd.ptr()),
                Arg::Ptr(hd_.ptr()),
                Arg::Ptr(pd.ptr()),
                Arg::Ptr(wd.ptr()),
                Arg::Ptr(out.ptr()),
                Arg::I32(hidden as i32),
                Arg::F32(1e-6),
            ],
        )
        .unwrap();
    }
    let mut normed_h = vec![0f32; n * hidden];
    ops::rmsnorm(&h, &post, 0.0, 1e-6, &mut normed_h);
    let x_want: Vec<f32> = xs.iter().zip(&normed_h).map(|(a, b)| a + b).collect();
    let mut out_want = vec![0f32; n * hidden];
    ops::rmsnorm(&x_want, &w, 0.0, 1e-6, &mut out_want);
    rel_err("residual_rmsnorm_f16 x", &k.download(&xd, n * hidden).unwrap(), &f64s(&x_want), 1e-6);
    let got = f16_bits_to_f32(&k.download(&out, n * hidden).unwrap());
    rel_err("residual_rmsnorm_f16 out", &got, &f64s(&out_want), 2e-3);
}

#[test]
fn argmax_matches_the_cpu_sampler() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("argmax");
    let (rows, vocab) = (5, 151_936);
    let mut logits = uniform(&mut rng, rows * vocab, 10.0);
    // a tie in row 1 (the lower id wins) and a NaN in row 2 (never wins)
    let best = 30.0;
    logits[vocab + 777] = best;
    logits[vocab + 150_000] = best;
    logits[2 * vocab + 5] = f32::NAN;
    let ld = k.upload(&logits).unwrap();
    let (cand, done, ids) = (
        k.poisoned(rows * 32 * 8).unwrap(),
        k.upload(&vec![0i32; rows]).unwrap(),
        k.poisoned(rows * 4).unwrap(),
    );
    let cand_i = cand.ptr() + (rows * 32 * 4) as u64;
    for _ in 0..2 {
        // SAFETY: argmax_f32(logits, vocab, cand_v, cand_i, done, ids) with grid (rows, 32).
        unsafe {
            k.launch(
                "argmax_f32",
                (rows as u32, 32),
                256,
                0,
                &[
                    Arg::Ptr(ld.ptr()),
                    Arg::I32(vocab as i32),
                    Arg::Ptr(cand.ptr()),
                    Arg::Ptr(cand_i),
                    Arg::Ptr(done.ptr()),
                    Arg::Ptr(ids.ptr()),
                ],
            )
            .unwrap();
        }
        let got: Vec<u32> = k.download(&ids, rows).unwrap();
        let want: Vec<u32> = (0..rows)
            .map(|r| edgellm::sampling::logits::argmax(&logits[r * vocab..(r + 1) * vocab]))
            .collect();
        assert_eq!(got, want, "argmax ids");
        assert_eq!(got[1], 777);
        // the counters are back at 0 for the next step
        assert_eq!(k.download::<i32>(&done, rows).unwrap(), vec![0; rows]);
    }
}

/// One RoPE + KV-write + attention case.
#[derive(Clone, Copy, Debug)]
struct AttnCase {
    head_dim: usize,
    bias: bool,
    qk_norm: bool,
    window: Option<usize>,
    cap: Option<f32>,
    /// fp8 cache with these (K, V) scales; None: fp16 cache.
    fp8: Option<[f32; 2]>,
}

#[test]
fn rope_kv_and_attention_match_the_cpu_twins_over_fp16_and_fp8_caches() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("attention");
    let plain = AttnCase { head_dim: 64, bias: true, qk_norm: false, window: None, cap: None, fp8: None };
    let gemma =
        AttnCase { head_dim: 128, bias: false, qk_norm: true, window: Some(24), cap: Some(20.0), fp8: None };
    for case in [
        plain,
        gemma,
        AttnCase { fp8: Some([1.0, 1.0]), ..plain },
        // small scales: the largest values saturate at 448
        AttnCase { fp8: Some([0.004, 0.006]), ..plain },
        AttnCase { fp8: Some([0.05, 0.02]), ..gemma },
    ] {
        attention_case(&k, &mut rng, case);
    }
}

fn attention_case(k: &Kernels, rng: &mut StdRng, c: AttnCase) {
    let (n_heads, n_kv, hd, bs) = (8usize, 2usize, c.head_dim, 16usize);
    let width = (n_heads + 2 * n_kv) * hd;
    // two sequences, blocks out of order; sequence 0 (300 tokens) spans several of the split-K
    // kernel's chunks (256 positions at head_dim 64, 128 at 128)
    let max_blocks = 20;
    let shape = KvShape { n_layers: 1, n_blocks: 24, block_size: bs, n_kv_heads: n_kv, head_dim: hd };
    let mut tables: Vec<i32> = (0..19).map(|i| (i * 7 + 5) % 24).collect(); // 19 distinct blocks
    tables.resize(max_blocks as usize, 0);
    tables.extend([8, 1]); // not among sequence 0's
    tables.resize(2 * max_blocks as usize, 0);
    let kv_elt = if c.fp8.is_some() { 1 } else { 2 };
    let kc = k.upload(&vec![0u8; shape.layer_len() * kv_elt]).unwrap();
    let vc = k.upload(&vec![0u8; shape.layer_len() * kv_elt]).unwrap();
    let bias = c.bias.then(|| uniform(rng, width, 0.5));
    let (q_norm, k_norm) =
        if c.qk_norm { (Some(uniform(rng, hd, 1.5)), Some(uniform(rng, hd, 1.5))) } else { (None, None) };
    let inv_freq: Vec<f32> = (0..hd / 2).map(|i| 10000f32.powf(-(2.0 * i as f32) / hd as f32)).collect();
    let dev = |v: &Option<Vec<f32>>| v.as_ref().map(|v| k.upload(v).unwrap());
    let (bias_d, qn_d, kn_d, freq_d) = (dev(&bias), dev(&q_norm), dev(&k_norm), k.upload(&inv_freq).unwrap());
    let ptr = |b: &Option<Buffer>| Arg::Ptr(b.as_ref().map_or(0, |b| b.ptr()));
    let tables_d = k.upload(&tables).unwrap();
    let [k_scale, v_scale] = c.fp8.unwrap_or([1.0, 1.0]);
    let dt = "f16";
    // the step's K and V (in the reference pools, f32) accumulate over the two steps
    let mut k_ref = vec![0f32; shape.layer_len()];
    let mut v_ref = vec![0f32; shape.layer_len()];
    // prefill: 300 and 20 tokens; then one decode token per sequence, split-K
    let steps: [(Vec<i32>, Vec<i32>, u32); 2] = [
        ((0..300).chain(0..20).collect(), [vec![0; 300], vec![1; 20]].concat(), 1),
        (vec![300, 20], vec![0, 1], 4),
    ];
    for (positions, token_seq, splits) in steps {
        let n = positions.len();
        let qkv = uniform(rng, n * width, 2.0);
        let (qkv_d, pos_d, seq_d) =
            (k.upload(&qkv).unwrap(), k.upload(&positions).unwrap(), k.upload(&token_seq).unwrap());
        let q_out = k.poisoned(n * n_heads * hd * 4).unwrap();
        let mut args = vec![
            Arg::Ptr(qkv_d.ptr()),
            ptr(&bias_d),
            ptr(&qn_d),
            ptr(&kn_d),
            Arg::Ptr(freq_d.ptr()),
            Arg::Ptr(pos_d.ptr()),
            Arg::Ptr(seq_d.ptr()),
            Arg::Ptr(tables_d.ptr()),
            Arg::I32(max_blocks),
            Arg::Ptr(kc.ptr()),
            Arg::Ptr(vc.ptr()),
            Arg::Ptr(q_out.ptr()),
            Arg::I32(n_heads as i32),
            Arg::I32(n_kv as i32),
            Arg::I32(hd as i32),
            Arg::I32(bs as i32),
            Arg::F32(1e-6),
        ];
        // an fp8 cache's kernels are named `*_fp8kv_*`; the fp16 ones ignore the scales
        let fp8kv = if c.fp8.is_some() { "fp8kv_" } else { "" };
        args.extend([Arg::F32(k_scale), Arg::F32(v_scale)]);
        let rope = format!("rope_kv_{fp8kv}{dt}");
        // SAFETY: the arguments follow rope_kv.cu's signature; buffers hold the shapes above.
        unsafe { k.launch(&rope, (n as u32, (n_heads + 2 * n_kv) as u32), hd as u32, 0, &args).unwrap() };

        // CPU twin: bias, q/k norm, RoPE
        let mut q_want = vec![0f32; n * n_heads * hd];
        let (mut cos, mut sin) = (vec![0f32; n * hd / 2], vec![0f32; n * hd / 2]);
        let upos: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        ops::rope_cos_sin(&upos, &inv_freq, &mut cos, &mut sin);
        for t in 0..n {
            let mut row = qkv[t * width..(t + 1) * width].to_vec();
            if let Some(b) = &bias {
                row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
            }
            let (cs, sn) = (&cos[t * hd / 2..(t + 1) * hd / 2], &sin[t * hd / 2..(t + 1) * hd / 2]);
            let pos = positions[t] as usize;
            let block = tables[token_seq[t] as usize * max_blocks as usize + pos / bs] as usize;
            for h in 0..n_heads + 2 * n_kv {
                let head = &mut row[h * hd..(h + 1) * hd];
                let (is_q, is_k) = (h < n_heads, (n_heads..n_heads + n_kv).contains(&h));
                if let (Some(qn), Some(kn)) = (&q_norm, &k_norm) {
                    if is_q || is_k {
                        ops::rmsnorm_inplace(head, if is_q { qn } else { kn }, 0.0, 1e-6);
                    }
                }
                if is_q || is_k {
                    ops::rope_apply(head, cs, sn);
                }
                if is_q {
                    q_want[(t * n_heads + h) * hd..][..hd].copy_from_slice(head);
                } else {
                    let kvh = if is_k { h - n_heads } else { h - n_heads - n_kv };
                    let at = shape.offset(block, kvh, pos % bs);
                    (if is_k { &mut k_ref } else { &mut v_ref })[at..at + hd].copy_from_slice(head);
                }
            }
        }
        let q_got = k.download::<f32>(&q_out, n * n_heads * hd).unwrap();
        rel_err(&format!("{c:?} rope q"), &q_got, &f64s(&q_want), 1e-5);

        // the cache as written, decoded to f32 (the attention reference reads exactly this)
        let (k_pool, v_pool) = (
            decode_cache(k, &kc, &shape, c.fp8.map(|s| s[0])),
            decode_cache(k, &vc, &shape, c.fp8.map(|s| s[1])),
        );
        for (what, pool, want, scale) in [("K", &k_pool, &k_ref, k_scale), ("V", &v_pool, &v_ref, v_scale)] {
            check_cache_write(&format!("{c:?} {what}"), pool, want, c.fp8.map(|_| scale));
        }

        // attention over the written cache
        let out = k.poisoned(n * n_heads * hd * 2).unwrap();
        let part = k.poisoned(n * n_heads * splits as usize * (hd + 2) * 4).unwrap();
        let done = k.upload(&vec![0i32; n * n_heads]).unwrap();
        let attn_scale = 1.0 / (hd as f32).sqrt();
        // the operands the decode and the prefill kernels share: first q, the caches, where the
        // tokens' rows are and the output; last the scores' scale, window and cap and the cache's
        // multipliers
        let lead = |out: &Buffer| {
            vec![
                Arg::Ptr(q_out.ptr()),
                Arg::Ptr(kc.ptr()),
                Arg::Ptr(vc.ptr()),
                Arg::Ptr(pos_d.ptr()),
                Arg::Ptr(seq_d.ptr()),
                Arg::Ptr(tables_d.ptr()),
                Arg::I32(max_blocks),
                Arg::Ptr(out.ptr()),
            ]
        };
        // what a stored unit is worth (fp8 codes decode as value / 256)
        let (k_mul, v_mul) = if c.fp8.is_some() { (k_scale * 256.0, v_scale * 256.0) } else { (1.0, 1.0) };
        let scores = [
            Arg::F32(attn_scale),
            Arg::I32(c.window.unwrap_or(0) as i32),
            Arg::F32(c.cap.unwrap_or(0.0)),
            Arg::F32(k_mul),
            Arg::F32(v_mul),
        ];
        let mut args = lead(&out);
        args.extend([
            Arg::Ptr(part.ptr()),
            Arg::Ptr(done.ptr()),
            Arg::I32(n_heads as i32),
            Arg::I32(n_kv as i32),
            Arg::I32(hd as i32),
            Arg::I32(bs as i32),
        ]);
        args.extend(&scores);
        let attn = format!("attention_{fp8kv}{dt}");
        // the release point changes only when the next kernel may start: both must compute alike
        let release_early = splits % 2 == 0;
        args.push(Arg::I32(release_early as i32));
        let shmem = attention_shared_bytes(hd, c.fp8.is_some());
        // SAFETY: the arguments follow attention.cu's signature; buffers hold the shapes above.
        unsafe { k.launch(&attn, ((n * n_heads) as u32, splits), ATTENTION_THREADS, shmem, &args).unwrap() };
        let offsets: Vec<u32> = vec![0, max_blocks as u32, 2 * max_blocks as u32];
        let table_data: Vec<u32> = tables.iter().map(|&b| b as u32).collect();
        let useq: Vec<u32> = token_seq.iter().map(|&s| s as u32).collect();
        let layout = TokenLayout {
            positions: &upos,
            token_seq: &useq,
            block_table_data: &table_data,
            block_table_offsets: &offsets,
        };
        let p = AttnParams { n_heads, scale: attn_scale, window: c.window, softcap: c.cap };
        let mut want = vec![0f32; n * n_heads * hd];
        let pools = LayerView::F32(LayerKv { k: &k_pool, v: &v_pool, scale: [1.0; 2] });
        paged_attention(&q_got, pools, &shape, layout, p, &mut want);
        let got = f16_bits_to_f32(&k.download(&out, n * n_heads * hd).unwrap());
        let err = rel_err(&format!("{c:?} {attn} splits={splits}"), &got, &f64s(&want), 2e-3);
        assert_eq!(
            k.download::<i32>(&done, n * n_heads).unwrap(),
            vec![0; n * n_heads],
            "split counters reset"
        );
        eprintln!("{attn} hd={hd} n={n} splits={splits} fp8={:?}: {err:.2e}", c.fp8);
        if splits == 1 {
            // the prompt again on tensor cores (P in fp16, q as two fp16 parts)
            let flash_out = k.poisoned(n * n_heads * hd * 2).unwrap();
            let mut args = lead(&flash_out);
            args.extend([
                Arg::I32(n as i32),
                Arg::I32(n_heads as i32),
                Arg::I32(n_kv as i32),
                Arg::I32(bs as i32),
            ]);
            args.extend(&scores);
            let flash = format!("attention_prefill_{fp8kv}{dt}_hd{hd}");
            // SAFETY: the arguments follow attention.cu's prefill signature; buffers as above.
            unsafe { k.launch(&flash, (n.div_ceil(64) as u32, n_heads as u32), 128, 0, &args).unwrap() };
            let got = f16_bits_to_f32(&k.download(&flash_out, n * n_heads * hd).unwrap());
            let err = rel_err(&format!("{c:?} {flash}"), &got, &f64s(&want), 5e-3);
            eprintln!("{flash} n={n} fp8={:?}: {err:.2e}", c.fp8);
        }
    }
}

/// A layer's K or V pool read back as f32: fp16 elements, or fp8 codes times `scale`.
fn decode_cache(k: &Kernels, buf: &Buffer, shape: &KvShape, fp8_scale: Option<f32>) -> Vec<f32> {
    match fp8_scale {
        None => f16_bits_to_f32(&k.download::<u16>(buf, shape.layer_len()).unwrap()),
        Some(s) => {
            k.download::<u8>(buf, shape.layer_len()).unwrap().iter().map(|&c| fp8::decode(c) * s).collect()
        }
    }
}

/// The written cache against the CPU's rotated K / V: fp16 within rounding; fp8 within half a
/// step of E4M3 of value / scale (saturated at 448), and the same codes as `fp8::encode` except
/// where the GPU's and the CPU's f32 rotations straddle a rounding boundary.
fn check_cache_write(what: &str, pool: &[f32], want: &[f32], fp8_scale: Option<f32>) {
    let Some(s) = fp8_scale else {
        rel_err(&format!("{what} fp16 cache"), pool, &f64s(want), 1e-3);
        return;
    };
    let (mut same, mut total) = (0, 0);
    for (&got, &v) in pool.iter().zip(want) {
        if v == 0.0 {
            continue; // a slot no step wrote
        }
        let target = (v / s).clamp(-fp8::MAX, fp8::MAX);
        let err = (got / s - target).abs();
        assert!(
            err <= target.abs() / 16.0 + 2f32.powi(-10) + 1e-4 * target.abs(),
            "{what}: {v} / {s} stored as {}",
            got / s
        );
        total += 1;
        same += (fp8::decode(fp8::encode(v / s)) * s == got) as usize;
    }
    assert!(same * 1000 >= total * 995, "{what}: only {same}/{total} codes equal fp8::encode's");
}

/// The activations a 16-bit model's kernels read (`store_act`): fp16 bits, or bf16 high halves
/// followed by the low halves (`x − hi`); and the values they stand for.
fn activations(dt: &str, x: &[f32]) -> (Vec<u16>, Vec<f32>) {
    if dt == "f16" {
        let bits: Vec<u16> = x.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
        return (bits.clone(), f16_bits_to_f32(&bits));
    }
    let hi: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let lo: Vec<half::bf16> = x.iter().zip(&hi).map(|(&v, h)| half::bf16::from_f32(v - h.to_f32())).collect();
    let value = hi.iter().zip(&lo).map(|(h, l)| h.to_f32() + l.to_f32()).collect();
    (hi.iter().chain(&lo).map(|b| b.to_bits()).collect(), value)
}

#[test]
fn gemv_of_f16_and_bf16_models_matches_the_cpu_twin() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("gemv16");
    for (dt, format) in [("f16", WeightFormat::F16), ("bf16", WeightFormat::BF16)] {
        // both families, each at 2 and 4 warps per row for the CUDA-core one (4 from 4,096 columns)
        for (family, rows, cols) in [GemvKernel::TensorCores, GemvKernel::Rows]
            .into_iter()
            .flat_map(|f| [(f, 300usize, 2048usize), (f, 40, 4096)])
        {
            let m = Matrix::from_f32(rows, cols, uniform(&mut rng, rows * cols, 0.5)).converted(format);
            let bits: Vec<u16> = match &m.data {
                MatrixData::F16(v) => v.iter().map(|h| h.to_bits()).collect(),
                MatrixData::BF16(v) => v.iter().map(|h| h.to_bits()).collect(),
                _ => unreachable!(),
            };
            let w = k.upload(&bits).unwrap();
            let mut worst = 0f64;
            for n in 1..=8 {
                let (xa, xv) = activations(dt, &uniform(&mut rng, n * cols, 1.0));
                let x = k.upload(&xa).unwrap();
                let want = reference_matmul(&m, &xv, n);
                for cap in [0.0f32, 3.0] {
                    let out = k.poisoned(n * rows * 4).unwrap();
                    k.gemv16(family, dt, Epilogue::Plain { cap }, 0, (&x, n), &w, &out, (rows, cols))
                        .unwrap();
                    let capped: Vec<f64> = want
                        .iter()
                        .map(|&v| if cap > 0.0 { cap as f64 * (v / cap as f64).tanh() } else { v })
                        .collect();
                    let what = format!("gemv {family:?} {dt} n{n} {rows}x{cols} cap {cap}");
                    worst = worst.max(rel_err(&what, &k.download(&out, n * rows).unwrap(), &capped, 1e-4));
                }
                // the fused gate/up over the same matrix as [gate; up]
                let ffn = rows / 2;
                let out = k.poisoned(2 * n * ffn * 2).unwrap();
                k.gemv16(family, dt, Epilogue::Gated, 0, (&x, n), &w, &out, (ffn, cols)).unwrap();
                let gu: Vec<f32> = (0..n)
                    .flat_map(|t| (0..ffn).chain(ffn..2 * ffn).map(move |r| (t, r)))
                    .map(|(t, r)| want[t * rows + r] as f32)
                    .collect();
                let mut act = vec![0f32; n * ffn];
                for t in 0..n {
                    ops::gated_act(
                        &gu[t * 2 * ffn..(t + 1) * 2 * ffn],
                        ffn,
                        edgellm::config::Activation::Silu,
                        &mut act[t * ffn..(t + 1) * ffn],
                    );
                }
                let h: Vec<u16> = k.download(&out, 2 * n * ffn).unwrap();
                let got: Vec<f32> = if dt == "f16" {
                    f16_bits_to_f32(&h[..n * ffn])
                } else {
                    let b = |v: u16| half::bf16::from_bits(v).to_f32();
                    (0..n * ffn).map(|i| b(h[i]) + b(h[n * ffn + i])).collect()
                };
                worst = worst.max(rel_err(
                    &format!("gemv gated {family:?} {dt} n{n} {ffn}x{cols}"),
                    &got,
                    &f64s(&act),
                    2e-3,
                ));
            }
            eprintln!("gemv {family:?} {dt} {rows}x{cols}: worst {worst:.2e}");
        }
    }
}

/// Activations (`activations`) read back from a gated GEMV's output: fp16, or bf16 hi + lo.
fn read_activations(k: &Kernels, dt: &str, out: &Buffer, len: usize) -> Vec<f32> {
    let h: Vec<u16> = k.download(out, if dt == "f16" { len } else { 2 * len }).unwrap();
    if dt == "f16" {
        return f16_bits_to_f32(&h);
    }
    let b = |v: u16| half::bf16::from_bits(v).to_f32();
    (0..len).map(|i| b(h[i]) + b(h[len + i])).collect()
}

#[test]
fn decode_gemv_folds_in_the_input_norm_and_the_residual_add() {
    let Some(k) = kernels() else { return };
    let mut rng = rng("fused");
    let eps = 1e-5f32;
    let cases = [("f16", WeightFormat::F16), ("bf16", WeightFormat::BF16)];
    for (rows, cols) in [(300, 896), (40, 4096)] {
        let w = uniform(&mut rng, rows * cols, 0.5);
        for (dt, format) in cases {
            let m = Matrix::from_f32(rows, cols, w.clone()).converted(format);
            let mut worst = 0f64;
            for n in [1, 2, 5, 8] {
                let what = format!("{format} as {dt} {rows}x{cols} n={n}");
                // the norm: x is the fp32 residual stream, g the norm's weights
                let x = uniform(&mut rng, n * cols, 2.0);
                let g = uniform(&mut rng, cols, 1.5);
                let mut normed = x.clone();
                for row in normed.chunks_mut(cols) {
                    ops::rmsnorm_inplace(row, &g, 0.0, eps);
                }
                let (_, xv) = activations(dt, &normed);
                let want = reference_matmul(&m, &xv, n);
                let (xb, gb) = (k.upload(&x).unwrap(), k.upload(&g).unwrap());
                let fuse = Fusion { norm: gb.ptr(), eps, residual: false };
                let out = k.poisoned(n * rows * 4).unwrap();
                k.project(&m, dt, &xb, n, &out, false, fuse).unwrap();
                let got = k.download::<f32>(&out, n * rows).unwrap();
                worst = worst.max(rel_err(&format!("{what} norm"), &got, &want, 1e-4));
                // the same input into the gate/up GEMV, `m` as [gate; up]
                let ffn = rows / 2;
                let mut act = vec![0f32; n * ffn];
                for t in 0..n {
                    let gu: Vec<f32> = want[t * rows..(t + 1) * rows].iter().map(|&v| v as f32).collect();
                    ops::gated_act(
                        &gu,
                        ffn,
                        edgellm::config::Activation::Silu,
                        &mut act[t * ffn..(t + 1) * ffn],
                    );
                }
                let out = k.poisoned(2 * n * ffn * 2).unwrap();
                k.project(&m, dt, &xb, n, &out, true, fuse).unwrap();
                let got = read_activations(&k, dt, &out, n * ffn);
                worst = worst.max(rel_err(&format!("{what} norm gated"), &got, &f64s(&act), 2e-3));
                // the residual add: the sums added to the fp32 output
                let (xa, xv) = activations(dt, &uniform(&mut rng, n * cols, 1.0));
                let base = uniform(&mut rng, n * rows, 4.0);
                let want: Vec<f64> =
                    reference_matmul(&m, &xv, n).iter().zip(&base).map(|(v, &b)| v + b as f64).collect();
                let (xb, out) = (k.upload(&xa).unwrap(), k.upload(&base).unwrap());
                k.project(&m, dt, &xb, n, &out, false, Fusion { residual: true, ..Fusion::NONE }).unwrap();
                let got = k.download::<f32>(&out, n * rows).unwrap();
                worst = worst.max(rel_err(&format!("{what} residual"), &got, &want, 1e-4));
            }
            eprintln!("fused {format} as {dt} {rows}x{cols}: worst {worst:.2e}");
        }
    }
}
