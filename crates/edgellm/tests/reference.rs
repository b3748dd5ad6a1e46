//! The CPU reference against HF transformers: the tiny fixtures' golden logits at every
//! position, and their greedy continuations.

mod common;

use edgellm::kv::{BlockAllocator, BlockTable, KvCache, KvShape};
use edgellm::model::{ForwardBatch, LoadOptions, Model, Scratch};
use edgellm::source::safetensors::SafetensorsSource;
use edgellm::ModelConfig;

/// Runs one sequence through `model`, chunk by chunk, returning the logits of every token.
struct OneSeq {
    kv: KvCache,
    alloc: BlockAllocator,
    table: BlockTable,
    scratch: Scratch,
}

impl OneSeq {
    fn new(model: &Model, max_tokens: usize) -> Self {
        let c = &model.config;
        let shape = KvShape {
            n_layers: c.num_hidden_layers,
            n_blocks: 64,
            block_size: 16,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        OneSeq {
            kv: KvCache::new(shape),
            alloc: BlockAllocator::new(shape.n_blocks, shape.block_size),
            table: BlockTable::default(),
            scratch: Scratch::new(c, max_tokens, max_tokens),
        }
    }

    fn step(&mut self, model: &Model, tokens: &[u32]) -> Vec<f32> {
        self.table.reserve(tokens.len(), 16, &mut self.alloc).unwrap();
        let positions: Vec<u32> = (self.table.len..self.table.len + tokens.len()).map(|p| p as u32).collect();
        let seq = vec![0u32; tokens.len()];
        let rows: Vec<u32> = (0..tokens.len() as u32).collect();
        let offsets = [0, self.table.blocks.len() as u32];
        let batch = ForwardBatch {
            tokens,
            positions: &positions,
            token_seq: &seq,
            block_table_data: &self.table.blocks,
            block_table_offsets: &offsets,
            logit_rows: &rows,
        };
        let logits = model.forward(&batch, &mut self.kv, &mut self.scratch).to_vec();
        self.table.len += tokens.len();
        logits
    }
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
        .0 as u32
}

fn check_fixture(name: &str) {
    let dir = common::fixture(name);
    let cfg = ModelConfig::from_hf_dir(&dir).unwrap();
    let src = SafetensorsSource::open(&dir).unwrap();
    let model = Model::load(&src, cfg.clone(), LoadOptions::default()).unwrap();
    for case in common::fixture_cases(name) {
        let (prompt, greedy, want) = (&case.prompt, &case.greedy, &case.logits);
        // teacher-forced: prompt + greedy tokens, chunks of 7 to cross block and chunk borders
        let all: Vec<u32> = prompt.iter().chain(greedy).copied().collect();
        let mut run = OneSeq::new(&model, 64);
        let mut got = Vec::new();
        for chunk in all.chunks(7) {
            got.extend(run.step(&model, chunk));
        }
        let rows = want.len() / cfg.vocab_size;
        if std::env::var_os("EDGELLM_DEBUG").is_some() {
            let v = cfg.vocab_size;
            let per: Vec<String> = (0..rows)
                .map(|r| {
                    format!(
                        "{:.0e}",
                        common::max_abs_diff(&got[r * v..(r + 1) * v], &want[r * v..(r + 1) * v]).0
                    )
                })
                .collect();
            eprintln!("{name} {} per-position: {}", case.name, per.join(" "));
        }
        let (diff, at) = common::max_abs_diff(&got[..rows * cfg.vocab_size], want);
        assert!(
            diff <= 1e-3,
            "{name} {}: max |Δlogit| {diff} at position {} id {}",
            case.name,
            at / cfg.vocab_size,
            at % cfg.vocab_size
        );
        // greedy generation: prefill, then one token at a time
        let mut run = OneSeq::new(&model, 64);
        let logits = run.step(&model, prompt);
        let mut next = argmax(&logits[(prompt.len() - 1) * cfg.vocab_size..]);
        let mut generated = vec![next];
        while generated.len() < greedy.len() {
            next = argmax(&run.step(&model, &[next]));
            generated.push(next);
        }
        assert_eq!(&generated, greedy, "{name} {}", case.name);
        eprintln!("{name} {}: max |Δlogit| {diff:.2e}, greedy ids equal", case.name);
    }
}

#[test]
fn tiny_llama_matches_hf() {
    check_fixture("tiny-llama");
}

#[test]
fn tiny_qwen2_matches_hf() {
    check_fixture("tiny-qwen2");
}

#[test]
fn tiny_qwen3_matches_hf() {
    check_fixture("tiny-qwen3");
}

#[test]
fn tiny_gemma3_matches_hf() {
    check_fixture("tiny-gemma3");
}
