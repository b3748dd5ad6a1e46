//! Paged attention of one decode token over a cached context, at model head layouts; reports GB/s
//! of K and V read.

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use edgellm::backend::cpu::attention::{paged_attention, AttnParams, TokenLayout};
use edgellm::kv::{KvShape, LayerKv, LayerView};

use super::values;

/// (label, query heads, KV heads, head dim).
const LAYOUTS: [(&str, usize, usize, usize); 3] =
    [("qwen2.5-0.5b", 14, 2, 64), ("llama-3.2-1b", 32, 8, 64), ("qwen3-8b", 32, 8, 128)];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention/decode");
    for (label, n_heads, n_kv_heads, head_dim) in LAYOUTS {
        for ctx in [512usize, 2048] {
            let block_size = 16;
            let kv = KvShape { n_layers: 1, n_blocks: ctx / block_size, block_size, n_kv_heads, head_dim };
            let (k, v) = (values(kv.layer_len(), 1), values(kv.layer_len(), 2));
            let q = values(n_heads * head_dim, 3);
            let table: Vec<u32> = (0..kv.n_blocks as u32).collect();
            let positions = [ctx as u32 - 1];
            let layout = TokenLayout {
                positions: &positions,
                token_seq: &[0],
                block_table_data: &table,
                block_table_offsets: &[0, table.len() as u32],
            };
            let p = AttnParams { n_heads, scale: (head_dim as f32).powf(-0.5), window: None, softcap: None };
            let mut out = vec![0f32; n_heads * head_dim];
            g.throughput(Throughput::Bytes((2 * ctx * n_kv_heads * head_dim * 4) as u64));
            g.bench_function(BenchmarkId::new(label, format!("ctx{ctx}")), |b| {
                let pools = LayerView::F32(LayerKv { k: &k, v: &v, scale: [1.0; 2] });
                b.iter(|| paged_attention(&q, pools, &kv, layout, p, &mut out))
            });
        }
    }
    g.finish();
}

criterion_group!(name = benches; config = super::config(); targets = bench);
