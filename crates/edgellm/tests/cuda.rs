//! The CUDA backend against the CPU reference and HF: the tiny fixtures' golden logits in fp16
//! and bf16, greedy tokens of random-weight models of real shapes against the CPU engine (fp16,
//! int8, int4 and fp8 weights, the same quantized weights on both; fp16 and fp8 KV caches),
//! CUDA-graph replay against eager execution, a batch of 8 against 8 single runs, and no device
//! allocation during decode. Skipped with a message where no CUDA device is present.

mod common;

use edgellm::backend::cpu::Matrix;
use edgellm::backend::cuda::{self, CudaOptions};
use edgellm::backend::Device;
use edgellm::engine::{Engine, EngineConfig, KvDtype, Prompt, Sequence};
use edgellm::quant::WeightFormat;
use edgellm::source::synthetic::{presets, SyntheticSource};
use edgellm::source::{TensorInfo, WeightSource};
use edgellm::SamplingParams;

fn gpu_cfg(format: WeightFormat, graphs: bool) -> EngineConfig {
    EngineConfig {
        device: Device::Cuda(0),
        weight_format: format,
        // compiled once per test run, not once per engine
        cuda: CudaOptions { graphs, kernel_cache: Some(common::kernel_cache()), ..CudaOptions::new() },
        max_seqs: 8,
        max_context: 512,
        max_batch_tokens: 512,
        ..Default::default()
    }
}

fn greedy(n: usize) -> SamplingParams {
    SamplingParams { max_tokens: Some(n), ignore_eos: true, ..SamplingParams::greedy() }
}

fn generate(engine: &mut Engine, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Sequence> =
        prompts.iter().map(|p| engine.new_sequence(&Prompt::Ids(p.clone()), greedy(n)).unwrap()).collect();
    common::run_to_end(engine, &mut seqs)
}

/// Teacher-forced logits of every golden position against HF's: returns the largest |Δlogit|;
/// with `greedy`, asserts the greedy ids too.
fn check_fixture(name: &str, format: WeightFormat, greedy: bool) -> f32 {
    let dir = common::fixture(name);
    let mut engine = Engine::load(&dir, gpu_cfg(format, true)).unwrap();
    let n_vocab = engine.model().config.vocab_size;
    let mut worst = 0f32;
    for case in common::fixture_cases(name) {
        let (prompt, want_ids, want) = (&case.prompt, &case.greedy, &case.logits);
        let all: Vec<u32> = prompt.iter().chain(want_ids).copied().collect();
        let got = engine.logits_all(&all).unwrap();
        let rows = want.len() / n_vocab;
        let (diff, at) = common::max_abs_diff(&got[..rows * n_vocab], want);
        eprintln!("{name} {format:?} {}: max |Δlogit| {diff:.2e} at position {}", case.name, at / n_vocab);
        worst = worst.max(diff);
        // greedy ids, teacher-forced: the golden continuation is the argmax at each step (the
        // fixtures' vocabularies are smaller than their logit rows, so text streaming is skipped)
        let argmax: Vec<u32> = (prompt.len() - 1..all.len() - 1)
            .map(|p| edgellm::sampling::logits::argmax(&got[p * n_vocab..(p + 1) * n_vocab]))
            .collect();
        if greedy {
            assert_eq!(&argmax, want_ids, "{name} {} greedy ids", case.name);
        }
    }
    worst
}

// Both formats must hold every fixture within the 2e-2 (H100: fp16 at most 5.0e-3; bf16
// at most 2.2e-3, with activations carried as bf16 hi + lo halves and an fp16 KV cache; plain bf16
// activations had reached 3.05e-2); fp16 must also give HF's greedy ids (bf16 weights may flip a
// near-tie)
#[test]
fn tiny_fixtures_match_hf_in_f16_and_bf16() {
    if !common::have_gpu() {
        return;
    }
    let names = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"];
    let f16: Vec<f32> = names.iter().map(|n| check_fixture(n, WeightFormat::F16, true)).collect();
    let bf16: Vec<f32> = names.iter().map(|n| check_fixture(n, WeightFormat::BF16, false)).collect();
    for (name, (a, b)) in names.iter().zip(f16.iter().zip(&bf16)) {
        assert!(*a <= 2e-2, "{name} f16: max |Δlogit| {a}");
        assert!(*b <= 2e-2, "{name} bf16: max |Δlogit| {b}");
    }
}

/// 256 greedy CUDA tokens, each checked against the CPU engine's argmax given the same history
/// (teacher-forced, so one early near-tie does not derail the rest): ≥ 95% must agree. Then the
/// same 287 tokens as one prompt (the prefill path: cuBLAS GEMMs, tensor-core attention over 5
/// tiles of 64 tokens where the cache is fp16): ≥ 95% of its rows' argmaxes must equal the CPU's.
/// Both engines quantize the same weights the same way; the CPU keeps its f32 KV cache, except
/// with an fp8 cache on the GPU, where it keeps an fp8 cache too (the same E4M3 codes and scales).
fn check_shape_against_cpu(preset: &str, format: WeightFormat, kv_dtype: KvDtype) {
    if !common::have_gpu() {
        return;
    }
    let config = presets::config(preset).unwrap();
    let source = SyntheticSource::new(config.clone(), 7);
    let mut gpu = Engine::from_source(
        config.clone(),
        &source,
        None,
        EngineConfig { kv_dtype, ..gpu_cfg(format, true) },
    )
    .unwrap();
    let prompt: Vec<u32> = (0..32).map(|i| (i * 7919 + 13) % config.vocab_size as u32).collect();
    let tokens = generate(&mut gpu, std::slice::from_ref(&prompt), 256).remove(0);
    let all: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
    let prefill = gpu.logits_all(&all[..all.len() - 1]).unwrap();
    drop(gpu);
    let cpu_kv = if kv_dtype == KvDtype::Fp8 { KvDtype::Fp8 } else { KvDtype::F32 };
    let cpu_cfg = |weight_format| EngineConfig {
        weight_format,
        kv_dtype: cpu_kv,
        max_context: 512,
        max_batch_tokens: 512,
        ..Default::default()
    };
    let mut cpu = if format.is_quantized() {
        // the CPU's int8/int4 kernels also quantize the activations (qmatmul.rs); the GPU keeps
        // them in fp16: compare against f32 arithmetic over the weights exactly as stored
        let stored = AsStored::new(&source, format);
        Engine::from_source(stored.config.clone(), &stored, None, cpu_cfg(WeightFormat::F32)).unwrap()
    } else {
        Engine::from_source(config.clone(), &source, None, cpu_cfg(format)).unwrap()
    };
    let logits = cpu.logits_all(&all[..all.len() - 1]).unwrap();
    let v = config.vocab_size;
    let agree = tokens
        .iter()
        .enumerate()
        .filter(|&(i, &t)| {
            let row = &logits[(prompt.len() - 1 + i) * v..][..v];
            edgellm::sampling::logits::argmax(row) == t
        })
        .count();
    eprintln!("{preset} {format} KV {kv_dtype:?}: {agree}/256 CUDA greedy tokens equal the CPU argmax");
    let need = 95;
    assert!(agree * 100 >= need * 256, "{preset} {format} KV {kv_dtype:?}: only {agree}/256 agree");
    let rows = all.len() - 1;
    let argmax = |l: &[f32], i: usize| edgellm::sampling::logits::argmax(&l[i * v..][..v]);
    let same = (0..rows).filter(|&i| argmax(&prefill, i) == argmax(&logits, i)).count();
    let (diff, at) = common::max_abs_diff(&prefill, &logits);
    eprintln!(
        "{preset} {format} KV {kv_dtype:?}: {same}/{rows} prefill rows' argmax equal the CPU's; max |Δlogit| {diff:.2e} at row {}",
        at / v
    );
    assert!(same * 100 >= need * rows, "{preset}: only {same}/{rows} prefill rows agree");
}

/// A model's synthetic weights as an engine holds them in a quantized `format`, in f32: every
/// matrix quantized and dequantized row by row (per-row and per-group scales are the same in the
/// fused matrices the engine quantizes), the embedding table rounded to bf16 (the row gather's
/// table) and the tied LM head as a tensor of its own in the head's format.
struct AsStored<'a> {
    src: &'a SyntheticSource,
    config: edgellm::ModelConfig,
    format: WeightFormat,
}

const EMBED: &str = "model.embed_tokens.weight";
const HEAD: &str = "lm_head.weight";

impl<'a> AsStored<'a> {
    fn new(src: &'a SyntheticSource, format: WeightFormat) -> Self {
        let config = edgellm::ModelConfig { tie_word_embeddings: false, ..src.config().clone() };
        AsStored { src, config, format }
    }
}

impl WeightSource for AsStored<'_> {
    fn path(&self) -> &std::path::Path {
        self.src.path()
    }
    fn tensor_infos(&self) -> Vec<TensorInfo> {
        let mut infos = self.src.tensor_infos();
        if self.src.tensor_info(HEAD).is_none() {
            infos.push(TensorInfo { name: HEAD.into(), ..self.src.tensor_info(EMBED).unwrap() });
        }
        infos
    }
    fn tensor_info(&self, name: &str) -> Option<TensorInfo> {
        self.tensor_infos().into_iter().find(|i| i.name == name)
    }
    fn read_f32(&self, name: &str) -> edgellm::Result<Vec<f32>> {
        let from = if name == HEAD && self.src.tensor_info(HEAD).is_none() { EMBED } else { name };
        let info = self.src.tensor_info(from).unwrap();
        let v = self.src.read_f32(from)?;
        let &[rows, cols] = &info.shape[..] else { return Ok(v) };
        let head =
            edgellm::model::LoadOptions { weight_format: self.format, lm_head_format: None }.head_format();
        let stored = match name {
            EMBED => WeightFormat::BF16,
            HEAD => head,
            _ => self.format,
        };
        let m = Matrix::from_f32(rows, cols, v).converted(stored);
        let mut out = vec![0f32; rows * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            m.row_into(r, row);
        }
        Ok(out)
    }
    fn read_raw(&self, name: &str) -> edgellm::Result<&[u8]> {
        self.src.read_raw(name)
    }
}

#[test]
fn qwen2_5_0_5b_shape_agrees_with_cpu() {
    check_shape_against_cpu("qwen2.5-0.5b", WeightFormat::F16, KvDtype::Auto);
}

#[test]
fn llama_3_2_1b_shape_agrees_with_cpu() {
    check_shape_against_cpu("llama-3.2-1b", WeightFormat::F16, KvDtype::Auto);
}

#[test]
fn quantized_qwen2_5_0_5b_shape_agrees_with_cpu() {
    for format in [WeightFormat::Int8, WeightFormat::INT4, WeightFormat::Fp8] {
        check_shape_against_cpu("qwen2.5-0.5b", format, KvDtype::Auto);
    }
}

#[test]
fn quantized_llama_3_2_1b_shape_agrees_with_cpu() {
    for format in [WeightFormat::Int8, WeightFormat::INT4, WeightFormat::Fp8] {
        check_shape_against_cpu("llama-3.2-1b", format, KvDtype::Auto);
    }
}

// fp8 KV with the default scales of 1.0 (synthetic weights carry no calibrated kv_scale), against
// the CPU with an fp8 cache of its own: both write the same E4M3 codes (software round-to-nearest-
// even with saturation), so only the f16-vs-f32 K/V arithmetic before the rounding differs. (Against
// the CPU's f32 cache the H100 gave qwen 227-235/256 and llama 186/256: E4M3's own rounding.)
#[test]
fn fp8_kv_cache_agrees_with_cpu() {
    check_shape_against_cpu("qwen2.5-0.5b", WeightFormat::F16, KvDtype::Fp8);
    check_shape_against_cpu("llama-3.2-1b", WeightFormat::F16, KvDtype::Fp8);
}

fn tiny_prompts(engine: &Engine, n: usize) -> Vec<Vec<u32>> {
    let texts = [
        "Licensed under the Apache License",
        "the quick brown fox",
        "fn main() {}",
        "a b c d e f g",
        "1 2 3 4 5 6 7 8 9",
        "hello world",
        "once upon a time there was",
        "x",
    ];
    texts.iter().take(n).map(|t| engine.tokenizer().encode(t, true).unwrap()).collect()
}

fn graph_replay_equals_eager_and_batch_of_8_equals_singles_with(format: WeightFormat, kv_dtype: KvDtype) {
    if !common::have_gpu() {
        return;
    }
    let dir = common::fixture("tiny-qwen2");
    let mut graphs = Engine::load(&dir, EngineConfig { kv_dtype, ..gpu_cfg(format, true) }).unwrap();
    let mut eager = Engine::load(&dir, EngineConfig { kv_dtype, ..gpu_cfg(format, false) }).unwrap();
    let prompts = tiny_prompts(&graphs, 8);
    let batched = generate(&mut graphs, &prompts, 64);
    assert_eq!(batched, generate(&mut eager, &prompts, 64), "{format}: graph replay vs eager");
    for (p, want) in prompts.iter().zip(&batched) {
        let single = &generate(&mut graphs, std::slice::from_ref(p), 64)[0];
        assert_eq!(single, want, "{format} KV {kv_dtype:?}: single vs batch of 8");
    }
}

#[test]
fn graph_replay_equals_eager_and_batch_of_8_equals_singles() {
    graph_replay_equals_eager_and_batch_of_8_equals_singles_with(WeightFormat::F16, KvDtype::Auto);
}

#[test]
fn quantized_graph_replay_equals_eager_and_batch_of_8_equals_singles() {
    for format in [WeightFormat::Int8, WeightFormat::INT4, WeightFormat::Fp8] {
        graph_replay_equals_eager_and_batch_of_8_equals_singles_with(format, KvDtype::Auto);
    }
    graph_replay_equals_eager_and_batch_of_8_equals_singles_with(WeightFormat::INT4, KvDtype::Fp8);
}

#[test]
fn decode_steps_do_not_allocate_on_the_device() {
    if !common::have_gpu() {
        return;
    }
    let mut engine = Engine::load(&common::fixture("tiny-llama"), gpu_cfg(WeightFormat::BF16, true)).unwrap();
    let prompt = tiny_prompts(&engine, 1).remove(0);
    let mut seq = engine.new_sequence(&Prompt::Ids(prompt), greedy(120)).unwrap();
    // prefill and the first decode steps (graph capture) may allocate
    for _ in 0..3 {
        engine.forward_step(&mut [&mut seq]).unwrap();
    }
    let (before, free_before) = (cuda::allocations(), cuda::free_memory().unwrap());
    for _ in 0..100 {
        assert_eq!(engine.forward_step(&mut [&mut seq]).unwrap(), 1);
    }
    assert_eq!(cuda::allocations(), before, "device allocations during 100 decode steps");
    assert_eq!(cuda::free_memory().unwrap(), free_before, "device memory taken during 100 decode steps");
}

#[test]
fn asking_for_a_missing_device_is_a_clear_error() {
    let n = cuda::device_count();
    let cfg =
        EngineConfig { device: Device::Cuda(n), weight_format: WeightFormat::F16, ..Default::default() };
    let err = Engine::load(&common::fixture("tiny-llama"), cfg).err().expect("no such device");
    assert!(err.to_string().contains("CUDA unavailable"), "{err}");
}
