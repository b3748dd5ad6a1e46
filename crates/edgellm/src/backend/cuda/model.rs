//! The forward pass on the GPU: the CPU [`Model`]'s plan (model/transformer.rs) with the same
//! paged KV layout and block tables, over fp16 or bf16 weights, or int8 / int4 / fp8 ones
//! ([`GpuMatrix`]; a model with any matrix not in bf16 runs fp16 activations). The KV cache is
//! fp16, or fp8 E4M3 with the layers' per-tensor `kv_scale`s (1.0 where the model has none).
//!
//! Everything is allocated in [`CudaModel::new`]: weights, the KV pool, the activation arena for
//! `max_tokens` tokens, the step inputs and the sampling buffers. A step copies its inputs
//! (tokens, positions, block tables, sampling parameters) into fixed device buffers, runs the
//! layers, chooses each row's token on the device (argmax, or the request's sampling:
//! `sample.rs`) and reads back only those ids (and the logits rows when a host sampler needs
//! them). Steps of up to [`MAX_GEMV_TOKENS`] tokens that all need logits (decode) are captured
//! once per token count as a CUDA graph and replayed; larger steps (prefill) run eagerly with
//! cuBLASLt GEMMs and tensor-core attention.

use super::gpu::{CudaOptions, DevBuf, Gpu, Graph};
use super::qweights::{Format, GpuMatrix, MAX_GEMV_TOKENS};
use super::sample::{self, DeviceSampler, SAMPLE_WORDS};
use crate::backend::cpu::{Matrix, MatrixData};
use crate::config::{Activation, LayerAttention, ModelConfig};
use crate::kv::KvShape;
use crate::model::{ForwardBatch, Model};
use crate::sampling::DeviceParams;
use crate::{Error, Result};

/// Blocks per logit row of the argmax (kernels/sample.cu).
const ARGMAX_SPLITS: usize = 32;
/// Widest residual stream a decode GEMV normalises itself (common.cuh `NORM_VECS` float4s per
/// thread of 128).
const FUSED_NORM_MAX: usize = 4 * 8 * 128;
/// Largest output projection (weight bytes) that decode attention releases at its start rather
/// than its end: a larger one's early weight loads slow the latency-bound attention blocks more
/// than its earlier start gains (Llama-3.2-1B f16, 8.4 MB: late +0.5-1.3%; Qwen2.5-0.5B f16,
/// 1.6 MB: early +3%; Llama int8 4.2 MB and int4 2.1 MB: early +1-2%; NOTES.md "at2", "tf").
const EARLY_RELEASE_MAX_BYTES: usize = 6 << 20;
/// Most split-K partitions of decode attention (kernels/attention.cu `ATTN_MAX_SPLITS`).
const MAX_SPLITS: usize = 16;

/// Threads per block of the split-K attention kernel (kernels/attention.cu).
pub const ATTENTION_THREADS: u32 = 256;

/// Dynamic shared memory of the split-K attention kernel at [`ATTENTION_THREADS`]: the query,
/// the scores, the accumulator reduction and a chunk's key and value rows (threads / TP
/// positions of `head_dim` elements padded by 16 * TP bytes, TP = 1, 2, 4 threads per position
/// up to 64, 128, 256 dims).
pub fn attention_shared_bytes(head_dim: usize, kv_fp8: bool) -> u32 {
    let threads = ATTENTION_THREADS as usize;
    let tp = match head_dim {
        0..=64 => 1,
        65..=128 => 2,
        _ => 4,
    };
    let row = head_dim * if kv_fp8 { 1 } else { 2 } + 16 * tp;
    ((head_dim + threads + threads * 8) * 4 + 2 * (threads / tp) * row) as u32
}

struct LayerBufs {
    sliding: bool,
    attn_norm: DevBuf,              // f32 [hidden]
    wqkv: GpuMatrix,                // [q_dim + 2·kv_dim, hidden]
    bqkv: Option<DevBuf>,           // f32 [q_dim + 2·kv_dim]
    q_norm: Option<DevBuf>,         // f32 [head_dim]
    k_norm: Option<DevBuf>,         // f32 [head_dim]
    wo: GpuMatrix,                  // [hidden, q_dim]
    post_attn_norm: Option<DevBuf>, // f32 [hidden]
    ffn_norm: DevBuf,               // f32 [hidden]
    w_gate_up: GpuMatrix,           // [2·intermediate, hidden]
    w_down: GpuMatrix,              // [hidden, intermediate]
    post_ffn_norm: Option<DevBuf>,  // f32 [hidden]
    k_cache: DevBuf,                // [n_blocks, n_kv_heads, block_size, head_dim] fp16 or fp8
    v_cache: DevBuf,
    kv_scale: [f32; 2], // fp8 cache: stored = value / scale (K, V)
}

/// Activations for one step, sized for `max_tokens` tokens and `max_rows` logit rows. Those
/// marked "activations" are the projections' inputs in the storage type, followed under bf16 by
/// as many low halves (kernels/common.cuh `store_act`): [n, dim] then [n, dim] for an n-token step.
struct Arena {
    x: DevBuf,        // f32 [T, hidden] residual stream
    h: DevBuf,        // f32 [T, hidden] sub-block output
    hn: DevBuf,       // activations [T, hidden] normed input of a projection
    qkv: DevBuf,      // f32 [T, q_dim + 2·kv_dim]
    q: DevBuf,        // f32 [T, q_dim] roped queries
    attn: DevBuf,     // activations [T, q_dim]
    gate_up: DevBuf,  // f32 [T, 2·intermediate] (prefill)
    act: DevBuf,      // activations [T, intermediate]
    part: DevBuf,     // f32 [MAX_GEMV_TOKENS, n_heads, MAX_SPLITS, head_dim + 2] split-K partials
    done: DevBuf,     // i32 [MAX_GEMV_TOKENS, n_heads] splits finished (0 between steps)
    rows: DevBuf,     // activations [R, hidden] normed rows that need logits
    logits: DevBuf,   // f32 [R, vocab]
    ids: DevBuf,      // i32 [R] argmax of each row
    cand: DevBuf,     // f32 [R, ARGMAX_SPLITS] then i32 [R, ARGMAX_SPLITS]: each split's best logit
    row_done: DevBuf, // i32 [R] argmax splits finished (0 between steps)
    wscratch: DevBuf, // fp16 [wscratch_len] a quantized matrix dequantized for a prefill GEMM
    // step inputs, one copy per step: u32 [tokens T | positions T | token_seq T | logit_rows R |
    // sampling parameters max_seqs × SAMPLE_WORDS | tables max_seqs × max_blocks]
    inputs: DevBuf,
    tokens: u64,
    positions: u64,
    token_seq: u64,
    logit_rows: u64,
    sampling: u64,
    tables: u64,
}

/// A model resident on one GPU, with its KV pool and buffers.
pub struct CudaModel {
    gpu: Gpu,
    cfg: ModelConfig,
    kv: KvShape,
    dt: &'static str, // kernel suffix of the activation type: "f16" | "bf16"
    kv_fp8: bool,     // the KV cache holds fp8 E4M3 codes
    embed: GpuMatrix,
    embed_scale: f32,
    lm_head: Option<GpuMatrix>,
    wscratch_len: usize,
    final_norm: DevBuf,
    rope: [DevBuf; 2], // inv_freq of full and sliding layers
    layers: Vec<LayerBufs>,
    a: Arena,
    max_tokens: usize,
    max_rows: usize,
    max_seqs: usize,
    max_blocks: usize,
    graphs: Vec<Option<Graph>>, // by token count - 1, then the same with device sampling
    sampler: DeviceSampler,
    use_graphs: bool,
    // the tensor-core prefill attention (`EDGELLM_CUDA_FLASH=0` turns it off, to measure it)
    flash_prefill: bool,
    // decode steps fold the layers' norms and residual adds into their projections (`Fusion`):
    // where every projection is 16-bit on `GemvKernel::Rows` (the quantized GEMVs' register
    // budget of 8 blocks per SM leaves no room for the norm's registers: NOTES.md "fn"), no
    // post-norms (Gemma 3), and the normalised input fits a block's shared memory;
    // `EDGELLM_CUDA_FUSE_NORM=0` turns it off, to measure it
    fuse_norms: bool,
    // the decode GEMV family, fixed at load for every batch size (see `GemvKernel`)
    gemv_kernel: GemvKernel,
    // decode attention releases the output projection at its start (`pdl_trigger` after its
    // wait) instead of at its end where that projection is small (`EARLY_RELEASE_MAX_BYTES`);
    // `EDGELLM_CUDA_ATTN_RELEASE=early|late` overrides it, to measure it
    attention_release_early: Option<bool>,
    staging: Vec<u32>, // host image of `Arena::inputs`
    host_ids: Vec<u32>,
}

/// Decode GEMV launch shape (kernels/gemv.cu): a block per 8 rows, its warps splitting the
/// columns so that each takes one round of U 32-column groups (U = 8 loads in flight per lane,
/// 4 + 4 for gate/up) where 16 warps allow it. It depends on the shape only, so a token's sums
/// are the same at every batch size.
fn gemv_layout(rows: usize, cols: usize, gated: bool) -> ((u32, u32), u32) {
    let u = if gated { 4 } else { 8 };
    let warps = cols.div_ceil(32).div_ceil(u).clamp(1, 16);
    ((rows.div_ceil(8) as u32, 1), 32 * warps as u32)
}

/// The decode GEMV family of an engine. Tensor cores (kernels/gemv.cu) are 40% faster at 8
/// tokens, CUDA cores with 2-4 warps per row (kernels/gemv_rows.cu) 6-13% faster at 1-2 tokens
/// (NOTES.md v8c), so an engine for at most [`SMALL_BATCH_SEQS`] sequences takes the latter. One
/// family serves every batch size of an engine: a token's sums never depend on its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvKernel {
    /// kernels/gemv.cu: mma over 8-row tiles.
    TensorCores,
    /// kernels/gemv_rows.cu: 2-4 warps of FMAs per row.
    Rows,
}

/// Most sequences of an engine that decodes with [`GemvKernel::Rows`].
const SMALL_BATCH_SEQS: usize = 2;

impl GemvKernel {
    /// The family for an engine of `max_seqs` sequences; `EDGELLM_CUDA_GEMV=tc|rows` overrides it
    /// (to measure one against the other).
    fn for_engine(max_seqs: usize) -> Result<GemvKernel> {
        match std::env::var("EDGELLM_CUDA_GEMV").as_deref() {
            Ok("tc") => Ok(GemvKernel::TensorCores),
            Ok("rows") => Ok(GemvKernel::Rows),
            Ok(other) => Err(Error::Invalid {
                what: "EDGELLM_CUDA_GEMV",
                why: format!("`{other}` is not `tc` or `rows`"),
            }),
            Err(_) if max_seqs <= SMALL_BATCH_SEQS => Ok(GemvKernel::Rows),
            Err(_) => Ok(GemvKernel::TensorCores),
        }
    }
}

/// Warps per output row of the CUDA-core decode GEMVs (gemv_rows.cu, quant.cu), from the row's
/// bytes alone (so a token's sums are the same at every batch size): long rows split 4 ways keep
/// enough loads in flight (NOTES.md v3); a row under 2 KB takes one warp, whose lanes then hold
/// twice the loads that two warps' lanes would at the same number of resident warps (16-bit
/// Qwen2.5-0.5B, 896 columns: +12%, NOTES.md ks1).
pub(super) fn warps_per_row(row_bytes: usize) -> i32 {
    match row_bytes {
        8192.. => 4,
        2048.. => 2,
        _ => 1,
    }
}

/// The decode GEMV of `family` for 16-bit weights `w` in `dt`: `x[n, cols] · wᵀ` over the `rows`
/// output rows (the gate rows for [`Epilogue::Gated`], activation `act`: 0 SiLU, 1 GELU-tanh)
/// into `out` as `epi` says. The one place that launches either family, for the model and for
/// the kernel parity tests.
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_gemv(
    gpu: &Gpu,
    family: GemvKernel,
    dt: &str,
    epi: Epilogue,
    act: i32,
    (x, n): (u64, usize),
    w: u64,
    out: u64,
    (rows, cols): (usize, usize),
    fuse: Fusion,
) -> Result<()> {
    let (kind, cap, gated) = match epi {
        Epilogue::Plain { cap } => ("", cap, false),
        Epilogue::Gated => ("_gated", 0.0, true),
    };
    match family {
        GemvKernel::TensorCores => {
            if fuse.norm != 0 || fuse.residual {
                return Err(Error::Invalid {
                    what: "GEMV",
                    why: "the tensor-core decode GEMV folds in no norm or residual add".into(),
                });
            }
            let (grid, threads) = gemv_layout(rows, cols, gated);
            launch!(gpu, format!("gemv{kind}_{dt}_n{n}"), grid, threads, 0;
                w, x, out, rows as i32, cols as i32, cap, act)
        }
        GemvKernel::Rows => {
            let ks = warps_per_row(2 * cols);
            let name = format!("gemv_rows{kind}_{dt}_n{n}");
            let shmem = fuse.shared_bytes(n, cols, dt == "bf16");
            let grid = gpu.row_group_grid(&name, (rows as u32 * ks as u32).div_ceil(4), 128, shmem)?;
            launch!(gpu, name, (grid, 1), 128, shmem;
                w, x, out, rows as i32, cols as i32, cap, act, ks, fuse.norm, fuse.eps, fuse.residual as i32)
        }
    }
}

/// What a decode GEMV folds in around its sums (kernels/gemv_rows.cu `norm`, `residual`): the
/// input's RMSNorm (`x` is then the fp32 residual stream, normalised with the weights at device
/// address `norm` into the block's shared memory) and the residual add (the sums are added to
/// the fp32 output). Saves a norm kernel per projection input in a decode layer.
#[derive(Debug, Clone, Copy)]
pub struct Fusion {
    /// RMSNorm weights (f32) of the input, 0 for none.
    pub norm: u64,
    /// The norm's epsilon.
    pub eps: f32,
    /// Add the sums to the output.
    pub residual: bool,
}

impl Fusion {
    /// Nothing folded in: activations in, sums stored.
    pub const NONE: Fusion = Fusion { norm: 0, eps: 0.0, residual: false };

    /// The dynamic shared memory of a GEMV over `n` tokens of `cols` inputs: the normalised
    /// input ([`Fusion::normed_input_bytes`]), none without `norm`.
    pub fn shared_bytes(&self, n: usize, cols: usize, split: bool) -> u32 {
        if self.norm == 0 {
            return 0;
        }
        Self::normed_input_bytes(n, cols, split) as u32
    }

    /// `n` tokens of `cols` 16-bit activations, two arrays of them under bf16's `split`.
    pub fn normed_input_bytes(n: usize, cols: usize, split: bool) -> usize {
        n * cols * 2 * if split { 2 } else { 1 }
    }
}

/// What a decode GEMV does with its sums (kernels/gemv.cu `EPI_*`).
#[derive(Clone, Copy)]
pub enum Epilogue {
    /// `out` = x·wᵀ in fp32, soft-capped when `cap` > 0.
    Plain {
        /// Soft cap (0: none).
        cap: f32,
    },
    /// `out` = act(gate)·up as activations, `w` being [gate; up].
    Gated,
}

/// Token tiles of the tensor-core prefill attention (kernels/attention.cu).
const PREFILL_TILE: usize = 64;

// SAFETY: the raw driver handles (module, graphs) belong to this model's context, which every
// entry point binds to the calling thread first (`Gpu::bind`); `&mut self` keeps one thread at a
// time.
unsafe impl Send for CudaModel {}

/// Sizes fixed at load.
#[derive(Debug, Clone, Copy)]
pub struct CudaLimits {
    /// Most tokens per step.
    pub max_tokens: usize,
    /// Most logit rows per step.
    pub max_rows: usize,
    /// Most sequences per step.
    pub max_seqs: usize,
    /// Longest sequence.
    pub max_context: usize,
}

/// The activation type: bf16 when every projection matrix is bf16 (the plain bf16 kernels),
/// otherwise fp16, which the quantized kernels read.
fn activation_type(model: &Model) -> &'static str {
    let bf16 = |m: &Matrix| matches!(m.data, MatrixData::BF16(_));
    let layers =
        model.layers.iter().all(|l| bf16(&l.wqkv) && bf16(&l.wo) && bf16(&l.w_gate_up) && bf16(&l.w_down));
    if layers && bf16(model.lm_head.as_ref().unwrap_or(&model.embed)) {
        "bf16"
    } else {
        "f16"
    }
}

impl CudaModel {
    /// Uploads `model` to device `ordinal` and allocates the KV pool of `kv` (fp8 E4M3 with
    /// `kv_fp8`, else fp16) and every buffer for `limits`.
    pub fn new(
        model: &Model,
        kv: KvShape,
        kv_fp8: bool,
        limits: CudaLimits,
        ordinal: usize,
        opts: &CudaOptions,
    ) -> Result<Self> {
        let c = &model.config;
        let dt = activation_type(model);
        let bf16 = dt == "bf16";
        if !matches!(model.embed.data, MatrixData::F16(_) | MatrixData::BF16(_)) {
            return Err(Error::Invalid {
                what: "dtype",
                why: "the CUDA backend gathers embeddings from an f16 or bf16 table; pass --dtype".into(),
            });
        }
        for (what, d) in [
            ("hidden_size", c.hidden_size),
            ("intermediate_size", c.intermediate_size),
            ("head_dim", c.head_dim),
        ] {
            if d % 8 != 0 || c.head_dim > 256 {
                return Err(Error::Invalid {
                    what: "model shape",
                    why: format!(
                        "the CUDA kernels need {what} = {d} to be a multiple of 8 (head_dim <= 256)"
                    ),
                });
            }
        }
        let gpu = Gpu::new(ordinal, opts)?;
        let mat = |m: &Matrix| GpuMatrix::upload(&gpu, m);
        let vec = |v: &[f32]| gpu.upload(v);
        let opt = |v: &Option<Vec<f32>>| v.as_deref().map(vec).transpose();
        let elt = 2; // bytes of a storage element
        let act_elt = if bf16 { 2 * elt } else { elt }; // bf16 activations carry a low half
        let kv_elt = if kv_fp8 { 1 } else { 2 };
        let layers = model
            .layers
            .iter()
            .map(|l| {
                Ok(LayerBufs {
                    sliding: l.attention == LayerAttention::Sliding,
                    attn_norm: vec(&l.attn_norm)?,
                    wqkv: mat(&l.wqkv)?,
                    bqkv: opt(&l.bqkv)?,
                    q_norm: opt(&l.q_norm)?,
                    k_norm: opt(&l.k_norm)?,
                    wo: mat(&l.wo)?,
                    post_attn_norm: opt(&l.post_attn_norm)?,
                    ffn_norm: vec(&l.ffn_norm)?,
                    w_gate_up: mat(&l.w_gate_up)?,
                    w_down: mat(&l.w_down)?,
                    post_ffn_norm: opt(&l.post_ffn_norm)?,
                    k_cache: DevBuf::new(kv.layer_len() * kv_elt)?,
                    v_cache: DevBuf::new(kv.layer_len() * kv_elt)?,
                    kv_scale: l.kv_scale.unwrap_or([1.0, 1.0]),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (t, r) = (limits.max_tokens, limits.max_rows);
        let (hidden, q_dim, ffn) = (c.hidden_size, c.q_dim(), c.intermediate_size);
        let qkv_dim = q_dim + 2 * c.kv_dim();
        let max_blocks = limits.max_context.div_ceil(kv.block_size);
        // device sampling takes up to one row per sequence
        let sample_words = limits.max_seqs * SAMPLE_WORDS;
        // the largest layer matrix that a prefill GEMM reads dequantized (the LM head, when not
        // native, goes by the GEMV instead: GpuMatrix::matmul)
        let wscratch_len = layers
            .iter()
            .flat_map(|l| [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down])
            .filter(|m| !m.is_native(dt))
            .map(|m| m.len())
            .max()
            .unwrap_or(0);
        let a = Arena {
            x: DevBuf::new(t * hidden * 4)?,
            h: DevBuf::new(t * hidden * 4)?,
            hn: DevBuf::new(t * hidden * act_elt)?,
            qkv: DevBuf::new(t * qkv_dim * 4)?,
            q: DevBuf::new(t * q_dim * 4)?,
            attn: DevBuf::new(t * q_dim * act_elt)?,
            gate_up: DevBuf::new(t * 2 * ffn * 4)?,
            act: DevBuf::new(t * ffn * act_elt)?,
            part: DevBuf::new(MAX_GEMV_TOKENS * c.num_attention_heads * MAX_SPLITS * (c.head_dim + 2) * 4)?,
            done: gpu.upload(&vec![0i32; MAX_GEMV_TOKENS * c.num_attention_heads])?,
            rows: DevBuf::new(r * hidden * act_elt)?,
            logits: DevBuf::new(r * c.vocab_size * 4)?,
            ids: DevBuf::new(r * 4)?,
            cand: DevBuf::new(r * ARGMAX_SPLITS * 8)?,
            row_done: gpu.upload(&vec![0i32; r])?,
            wscratch: DevBuf::new(wscratch_len * 2)?,
            inputs: DevBuf::new((3 * t + r + sample_words + limits.max_seqs * max_blocks) * 4)?,
            tokens: 0,
            positions: 0,
            token_seq: 0,
            logit_rows: 0,
            sampling: 0,
            tables: 0,
        };
        let base = a.inputs.ptr();
        let at = |words: usize| base + 4 * words as u64;
        let a = Arena {
            tokens: at(0),
            positions: at(t),
            token_seq: at(2 * t),
            logit_rows: at(3 * t),
            sampling: at(3 * t + r),
            tables: at(3 * t + r + sample_words),
            ..a
        };
        let gemv_kernel = GemvKernel::for_engine(limits.max_seqs)?;
        let split = dt == "bf16";
        let fuse_norms = std::env::var("EDGELLM_CUDA_FUSE_NORM").map_or(true, |v| v != "0")
            && layers.iter().all(|l| {
                l.post_attn_norm.is_none()
                    && l.post_ffn_norm.is_none()
                    && [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down].iter().all(|m| m.is_native(dt))
            })
            && gemv_kernel == GemvKernel::Rows
            && hidden <= FUSED_NORM_MAX
            && Fusion::normed_input_bytes(MAX_GEMV_TOKENS, hidden, split) <= gpu.max_shared;
        let out = CudaModel {
            embed: mat(&model.embed)?,
            embed_scale: model.embed_scale,
            lm_head: model.lm_head.as_ref().map(mat).transpose()?,
            final_norm: vec(&model.final_norm)?,
            rope: [vec(&model.rope_full)?, vec(&model.rope_local)?],
            layers,
            a,
            cfg: c.clone(),
            kv,
            dt,
            kv_fp8,
            wscratch_len,
            max_tokens: t,
            max_rows: r,
            max_seqs: limits.max_seqs,
            max_blocks,
            graphs: (0..2 * MAX_GEMV_TOKENS).map(|_| None).collect(),
            sampler: DeviceSampler::new(&gpu, limits.max_seqs)?,
            use_graphs: opts.graphs,
            flash_prefill: std::env::var("EDGELLM_CUDA_FLASH").map_or(true, |v| v != "0"),
            fuse_norms,
            gemv_kernel,
            attention_release_early: match std::env::var("EDGELLM_CUDA_ATTN_RELEASE").as_deref() {
                Ok("early") => Some(true),
                Ok("late") => Some(false),
                _ => None,
            },
            staging: vec![0; 3 * t + r + sample_words + limits.max_seqs * max_blocks],
            host_ids: vec![0; r],
            gpu,
        };
        out.gpu.sync()?;
        Ok(out)
    }

    /// Whether the KV cache holds fp8 E4M3 codes (else fp16).
    pub fn kv_fp8(&self) -> bool {
        self.kv_fp8
    }

    /// The device's name and NVRTC target, e.g. `NVIDIA H100 80GB HBM3 (sm_90a)`.
    pub fn device_name(&self) -> String {
        format!("{} ({})", self.gpu.name, super::arch_name(self.gpu.cc))
    }

    /// The device's memory in bytes.
    pub fn device_memory(&self) -> usize {
        self.gpu.total_mem
    }

    /// Where the kernels came from (package CUBIN, NVRTC cache or a fresh compile).
    pub fn kernels(&self) -> &super::compile::KernelOrigin {
        &self.gpu.kernels
    }

    /// The device's own copy bandwidth (GB/s, read + write) over `bytes`-sized buffers.
    pub fn copy_bandwidth(&self, bytes: usize) -> Result<f64> {
        self.gpu.copy_bandwidth(bytes, 3)
    }

    /// Device memory in use (all processes), in bytes.
    pub fn memory_in_use(&self) -> Result<usize> {
        self.gpu.memory_in_use()
    }

    /// Runs one step: writes the batch's keys and values into the device KV pool, chooses a
    /// token for each logit row on the device and returns those ids: the argmax, or with
    /// `sampling` (one entry per row) what the CPU sampler would choose from the same logits
    /// ([`sample::HOST_ROW`] where the device leaves the row to the host: see
    /// [`CudaModel::logits_row`]). With `logits`, the rows' logits (`[rows, vocab]`) are copied
    /// there too.
    pub fn forward(
        &mut self,
        batch: &ForwardBatch<'_>,
        sampling: Option<&[DeviceParams]>,
        logits: Option<&mut [f32]>,
    ) -> Result<&[u32]> {
        let n = batch.tokens.len();
        let r = batch.logit_rows.len();
        let n_seqs = batch.block_table_offsets.len().saturating_sub(1);
        if n == 0 || n > self.max_tokens || r > self.max_rows || n_seqs > self.max_seqs {
            return Err(Error::Invalid {
                what: "batch",
                why: format!(
                    "{n} tokens, {r} logit rows, {n_seqs} sequences exceed the CUDA buffers ({}, {}, {})",
                    self.max_tokens, self.max_rows, self.max_seqs
                ),
            });
        }
        self.gpu.bind()?;
        // the step's inputs in one host image (block tables padded to max_blocks), one copy
        let (t, rr) = (self.max_tokens, self.max_rows);
        let st = &mut self.staging;
        st[..n].copy_from_slice(batch.tokens);
        st[t..t + n].copy_from_slice(batch.positions);
        st[2 * t..2 * t + n].copy_from_slice(batch.token_seq);
        st[3 * t..3 * t + r].copy_from_slice(batch.logit_rows);
        if let Some(params) = sampling {
            if params.len() != r || r > self.max_seqs {
                return Err(Error::Invalid {
                    what: "sampling",
                    why: format!(
                        "{} parameter sets for {r} rows (the device samples at most {})",
                        params.len(),
                        self.max_seqs
                    ),
                });
            }
            for (p, words) in params.iter().zip(st[3 * t + rr..].chunks_mut(SAMPLE_WORDS)) {
                sample::encode(p, words);
            }
        }
        let tables = 3 * t + rr + self.max_seqs * SAMPLE_WORDS;
        for s in 0..n_seqs {
            let (lo, hi) = (batch.block_table_offsets[s] as usize, batch.block_table_offsets[s + 1] as usize);
            if hi - lo > self.max_blocks {
                return Err(Error::Invalid {
                    what: "batch",
                    why: format!("a block table of {} blocks exceeds {}", hi - lo, self.max_blocks),
                });
            }
            st[tables + s * self.max_blocks..][..hi - lo].copy_from_slice(&batch.block_table_data[lo..hi]);
        }
        self.gpu.htod(self.a.inputs.ptr(), &st[..tables + n_seqs * self.max_blocks])?;

        let sampled = sampling.is_some();
        if self.use_graphs && n <= MAX_GEMV_TOKENS && r == n {
            let g = n - 1 + MAX_GEMV_TOKENS * sampled as usize;
            if self.graphs[g].is_none() {
                self.gpu.begin_capture()?;
                let enqueued = self.enqueue(n, r, n_seqs, sampled);
                let graph = self.gpu.end_capture();
                enqueued?;
                self.graphs[g] = Some(graph?);
            }
            let graph = self.graphs[g].as_ref().expect("captured above");
            self.gpu.replay(graph)?;
        } else {
            self.enqueue(n, r, n_seqs, sampled)?;
        }
        if r > 0 {
            self.gpu.dtoh(&mut self.host_ids[..r], self.a.ids.ptr())?;
        }
        if let Some(out) = logits {
            let len = r * self.cfg.vocab_size;
            self.gpu.dtoh(&mut out[..len], self.a.logits.ptr())?;
        }
        Ok(&self.host_ids[..r])
    }

    /// Most rows a step may sample on the device (one per sequence).
    pub fn max_sampled_rows(&self) -> usize {
        self.max_seqs
    }

    /// Copies logit row `row` of the last step (`vocab` values) into `out`.
    pub fn logits_row(&self, row: usize, out: &mut [f32]) -> Result<()> {
        let vocab = self.cfg.vocab_size;
        self.gpu.dtoh(&mut out[..vocab], self.a.logits.ptr() + (row * vocab * 4) as u64)
    }

    /// Enqueues a whole step of `n` tokens of `n_seqs` sequences and `r` logit rows on the
    /// stream, choosing the rows' tokens by argmax or, when `sampled`, by the sampling
    /// parameters in the step's inputs.
    fn enqueue(&self, n: usize, r: usize, n_seqs: usize, sampled: bool) -> Result<()> {
        let c = &self.cfg;
        let (g, a, dt) = (&self.gpu, &self.a, self.dt);
        let (hidden, hd) = (c.hidden_size as i32, c.head_dim as i32);
        let (n_heads, n_kv) = (c.num_attention_heads as i32, c.num_key_value_heads as i32);
        let ffn = c.intermediate_size;
        let eps = c.rms_norm_eps;
        let opt = |b: &Option<DevBuf>| b.as_ref().map_or(0u64, |b| b.ptr());
        let nu = n as u32;

        // embed (the table's own type: bf16 in a quantized model whose activations are fp16)
        let table = if self.embed.format == Format::BF16 { "bf16" } else { "f16" };
        launch!(g, format!("embed_{table}"), (nu, 1), 1024, 0; a.tokens, self.embed.w.ptr(), a.x.ptr(), hidden, self.embed_scale)?;
        // decode: each projection normalises its own input from the residual stream and the
        // output projections add into it (`Fusion`); prefill: norm kernels between GEMMs
        let fused = self.fuse_norms && n <= MAX_GEMV_TOKENS;
        let normed = |norm: &DevBuf| match fused {
            true => (a.x.ptr(), Fusion { norm: norm.ptr(), eps, residual: false }),
            false => (a.hn.ptr(), Fusion::NONE),
        };
        let (residual, add) = match fused {
            true => (a.x.ptr(), Fusion { residual: true, ..Fusion::NONE }),
            false => (a.h.ptr(), Fusion::NONE),
        };
        if !fused {
            let first = &self.layers[0];
            launch!(g, format!("rmsnorm_{dt}"), (nu, 1), 1024, 0; a.x.ptr(), first.attn_norm.ptr(), a.hn.ptr(), 0u64, hidden, eps)?;
        }
        for (li, l) in self.layers.iter().enumerate() {
            // QKV projection, then bias, q/k norms, RoPE and the KV write in one kernel
            let (x_in, fuse) = normed(&l.attn_norm);
            self.project(x_in, n, &l.wqkv, a.qkv.ptr(), fuse)?;
            let n_rows = (c.num_attention_heads + 2 * c.num_key_value_heads) as u32;
            let [k_scale, v_scale] = l.kv_scale;
            // kernels for an fp8 cache are named `*_fp8kv_*` and take the same arguments
            let kv = if self.kv_fp8 { "fp8kv_" } else { "" };
            launch!(g, format!("rope_kv_{kv}{dt}"), (nu, n_rows), hd as u32, 0;
                a.qkv.ptr(), opt(&l.bqkv), opt(&l.q_norm), opt(&l.k_norm), self.rope[l.sliding as usize].ptr(),
                a.positions, a.token_seq, a.tables, self.max_blocks as i32,
                l.k_cache.ptr(), l.v_cache.ptr(), a.q.ptr(), n_heads, n_kv, hd, self.kv.block_size as i32, eps,
                k_scale, v_scale)?;
            // attend over cached keys
            let window = if l.sliding { c.sliding_window.unwrap_or(0) as i32 } else { 0 };
            let cap = c.attn_logit_softcapping.unwrap_or(0.0);
            // decode splits each head's positions so the chip is busy at batch 1 (at most this many
            // splits: the kernel takes fewer for short contexts); the count does not depend on the
            // batch, so a sequence's tokens are the same alone or batched
            let splits = if n <= MAX_GEMV_TOKENS {
                (g.sm_count / c.num_attention_heads).clamp(1, MAX_SPLITS)
            } else {
                1
            };
            // prompts on tensor cores where the head size has a kernel (fp16 or fp8 cache) and the
            // tokens are not mostly single decode rows of many sequences (a block makes a pass per
            // sequence)
            let flash = self.flash_prefill
                && n > MAX_GEMV_TOKENS
                && matches!(c.head_dim, 64 | 128)
                && n >= 16 * n_seqs;
            let shmem = attention_shared_bytes(c.head_dim, self.kv_fp8);
            let grid = (nu * n_heads as u32, splits as u32);
            let release_early =
                self.attention_release_early.unwrap_or(l.wo.weight_bytes() <= EARLY_RELEASE_MAX_BYTES) as i32;
            // what a stored unit of the cache is worth: fp8 codes decode as value / 256 (kernels/fp8.cuh)
            let (k_mul, v_mul) = if self.kv_fp8 { (k_scale * 256.0, v_scale * 256.0) } else { (1.0, 1.0) };
            if flash {
                let tiles = n.div_ceil(PREFILL_TILE) as u32;
                launch!(g, format!("attention_prefill_{kv}{dt}_hd{hd}"), (tiles, n_heads as u32), 128, 0;
                    a.q.ptr(), l.k_cache.ptr(), l.v_cache.ptr(), a.positions, a.token_seq, a.tables,
                    self.max_blocks as i32, a.attn.ptr(), n as i32, n_heads, n_kv, self.kv.block_size as i32,
                    c.attn_scale(), window, cap, k_mul, v_mul)?;
            } else {
                launch!(g, format!("attention_{kv}{dt}"), grid, ATTENTION_THREADS, shmem;
                    a.q.ptr(), l.k_cache.ptr(), l.v_cache.ptr(), a.positions, a.token_seq, a.tables,
                    self.max_blocks as i32, a.attn.ptr(), a.part.ptr(), a.done.ptr(), n_heads, n_kv, hd, self.kv.block_size as i32,
                    c.attn_scale(), window, cap, k_mul, v_mul, release_early)?;
            }
            // output projection; residual (+ post-norm) fused with the MLP's input norm
            self.project(a.attn.ptr(), n, &l.wo, residual, add)?;
            if !fused {
                launch!(g, format!("residual_rmsnorm_{dt}"), (nu, 1), 1024, 0;
                    a.x.ptr(), a.h.ptr(), opt(&l.post_attn_norm), l.ffn_norm.ptr(), a.hn.ptr(), hidden, eps)?;
            }
            // MLP: fused gate/up with the activation, down projection
            let (x_in, fuse) = normed(&l.ffn_norm);
            if n <= MAX_GEMV_TOKENS && !l.w_gate_up.is_native(dt) {
                l.w_gate_up.gemv_gated(g, x_in, n, a.act.ptr(), self.act_code())?;
            } else if n <= MAX_GEMV_TOKENS {
                self.gemv(Epilogue::Gated, x_in, n, &l.w_gate_up.w, a.act.ptr(), (ffn, c.hidden_size), fuse)?;
            } else {
                self.gemm(a.hn.ptr(), &l.w_gate_up, a.gate_up.ptr(), (n, 2 * ffn, c.hidden_size))?;
                launch!(g, format!("gated_act_{dt}"), ((ffn as u32).div_ceil(256), nu), 256, 0;
                    a.gate_up.ptr(), a.act.ptr(), ffn as i32, self.act_code())?;
            }
            self.project(a.act.ptr(), n, &l.w_down, residual, add)?;
            if !fused {
                let next_norm = self.layers.get(li + 1).map_or(0u64, |nl| nl.attn_norm.ptr());
                launch!(g, format!("residual_rmsnorm_{dt}"), (nu, 1), 1024, 0;
                    a.x.ptr(), a.h.ptr(), opt(&l.post_ffn_norm), next_norm, a.hn.ptr(), hidden, eps)?;
            }
        }
        if r == 0 {
            return Ok(());
        }
        // final norm and LM head for the requested rows, then the ids: greedy or sampled
        let ru = r as u32;
        launch!(g, format!("rmsnorm_{dt}"), (ru, 1), 1024, 0;
            a.x.ptr(), self.final_norm.ptr(), a.rows.ptr(), a.logit_rows, hidden, eps)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let cap = c.final_logit_softcapping.unwrap_or(0.0);
        self.matmul(a.rows.ptr(), r, head, a.logits.ptr(), cap)?;
        if sampled {
            return self.sampler.enqueue(g, a.logits.ptr(), c.vocab_size, r, a.sampling, a.ids.ptr());
        }
        let cand_i = a.cand.ptr() + (r * ARGMAX_SPLITS * 4) as u64;
        launch!(g, "argmax_f32", (ru, ARGMAX_SPLITS as u32), 256, 0;
            a.logits.ptr(), c.vocab_size as i32, a.cand.ptr(), cand_i, a.row_done.ptr(), a.ids.ptr())
    }

    /// `out[n, m] = x[n, k] · wᵀ` in fp32 by cuBLAS, `x` activations: under bf16, the high and
    /// the low halves are two products summed in `out`. A matrix not in the activation type is
    /// dequantized to fp16 first ([`GpuMatrix::matmul`]).
    fn gemm(&self, x: u64, w: &GpuMatrix, out: u64, (n, m, k): (usize, usize, usize)) -> Result<()> {
        if !w.is_native(self.dt) {
            return w.matmul(&self.gpu, x, n, out, 0.0, (self.a.wscratch.ptr(), self.wscratch_len));
        }
        let bf16 = self.dt == "bf16";
        self.gpu.gemm(bf16, x, w.w.ptr(), out, (n, m, k), false)?;
        if bf16 {
            self.gpu.gemm(bf16, x + (n * k * 2) as u64, w.w.ptr(), out, (n, m, k), true)?;
        }
        Ok(())
    }

    /// The MLP activation's code in the kernels (common.cuh `activation`).
    fn act_code(&self) -> i32 {
        match self.cfg.hidden_act {
            Activation::Silu => 0,
            Activation::GeluTanh => 1,
        }
    }

    /// The decode GEMV over `n` <= [`MAX_GEMV_TOKENS`] tokens of this engine's family
    /// ([`launch_gemv`]).
    #[allow(clippy::too_many_arguments)]
    fn gemv(
        &self,
        epi: Epilogue,
        x: u64,
        n: usize,
        w: &DevBuf,
        out: u64,
        shape: (usize, usize),
        fuse: Fusion,
    ) -> Result<()> {
        launch_gemv(
            &self.gpu,
            self.gemv_kernel,
            self.dt,
            epi,
            self.act_code(),
            (x, n),
            w.ptr(),
            out,
            shape,
            fuse,
        )
    }

    /// A layer projection `out[n, rows] = x[n, cols] · wᵀ` in fp32 ([`Self::matmul`]), or with
    /// `fuse` (decode steps of `fuse_norms` engines: 16-bit matrices on `GemvKernel::Rows`) its
    /// input normalised and / or its sums added to `out`.
    fn project(&self, x: u64, n: usize, w: &GpuMatrix, out: u64, fuse: Fusion) -> Result<()> {
        if fuse.norm == 0 && !fuse.residual {
            return self.matmul(x, n, w, out, 0.0);
        }
        self.gemv(Epilogue::Plain { cap: 0.0 }, x, n, &w.w, out, (w.rows, w.cols), fuse)
    }

    /// `out[n, rows] = x[n, cols] · wᵀ` in fp32, soft-capped when `cap > 0`: the GEMV kernels
    /// up to [`MAX_GEMV_TOKENS`] tokens, cuBLAS above.
    fn matmul(&self, x: u64, n: usize, w: &GpuMatrix, out: u64, cap: f32) -> Result<()> {
        let (dt, rows, cols) = (self.dt, w.rows, w.cols);
        if !w.is_native(dt) {
            return w.matmul(&self.gpu, x, n, out, cap, (self.a.wscratch.ptr(), self.wscratch_len));
        }
        if n <= MAX_GEMV_TOKENS {
            return self.gemv(Epilogue::Plain { cap }, x, n, &w.w, out, (rows, cols), Fusion::NONE);
        }
        self.gemm(x, w, out, (n, rows, cols))?;
        if cap > 0.0 {
            let len = (n * rows) as i32;
            launch!(self.gpu, "softcap_f32", ((len as u32).div_ceil(256), 1), 256, 0; out, len, cap)?;
        }
        Ok(())
    }
}
