//! Where a step's forward pass runs: the engine's one seam between the CPU reference and the
//! CUDA backend. Both take the same [`ForwardBatch`] and leave the same thing behind — a chosen
//! token for every logit row — so planning, sampling state, streaming and scheduling above this
//! are shared.

use crate::backend::cuda::{self, CudaLimits, CudaModel};
use crate::backend::Device;
use crate::kv::{KvCache, KvShape};
use crate::model::{ForwardBatch, Model, Scratch};
use crate::quant::WeightFormat;
use crate::sampling::{DeviceParams, TokenHistory};
use crate::{Error, Result};

use super::{EngineConfig, KvDtype, Sequence};

/// Per-layer (K, V) scales of the KV cache: the package's calibrated `kv_scale` for fp8 (1.0,
/// with one warning, where a layer has none), 1.0 for the other element types.
fn kv_scales(model: &Model, dtype: KvDtype) -> Vec<[f32; 2]> {
    if dtype != KvDtype::Fp8 {
        return vec![[1.0; 2]; model.layers.len()];
    }
    if model.layers.iter().any(|l| l.kv_scale.is_none()) {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            eprintln!(
                "warning: fp8 KV cache without calibrated scales: using 1.0 (values beyond ±448 \
                 saturate); export with --kv fp8 to calibrate them"
            )
        });
    }
    model.layers.iter().map(|l| l.kv_scale.unwrap_or([1.0; 2])).collect()
}

/// Whether the CUDA backend keeps a KV cache of `dtype` (fp16 or fp8 E4M3; `Auto` is fp16 there).
fn gpu_kv(dtype: KvDtype) -> bool {
    matches!(dtype, KvDtype::Auto | KvDtype::F16 | KvDtype::Fp8)
}

/// The CUDA device `cfg` runs on, `None` for the CPU: `auto` takes the GPU when there is one, for
/// every weight format it runs (all but f32) and a KV dtype it keeps.
pub(crate) fn cuda_ordinal(cfg: &EngineConfig) -> Option<usize> {
    match cfg.device {
        Device::Cpu => None,
        Device::Cuda(n) => Some(n),
        Device::Auto => {
            (cuda::device_count() > 0 && cfg.weight_format != WeightFormat::F32 && gpu_kv(cfg.kv_dtype))
                .then_some(0)
        }
    }
}

/// The forward pass and the memory it runs on.
pub(crate) enum Executor {
    Cpu {
        kv: KvCache,
        scratch: Box<Scratch>,
    },
    Cuda {
        model: Box<CudaModel>,
        logits: Vec<f32>,          // [max_rows, vocab] rows a host sampler reads
        params: Vec<DeviceParams>, // one per row, capacity max_rows
        ids: Vec<u32>,             // the step's ids, capacity max_rows
    },
}

impl Executor {
    /// Allocates the KV pool and buffers on the configured device.
    pub(crate) fn new(model: &Model, cfg: &EngineConfig, kv: KvShape) -> Result<Executor> {
        let max_rows = cfg.max_batch_tokens.max(cfg.max_seqs);
        let gpu_kv = gpu_kv(cfg.kv_dtype);
        let Some(ordinal) = cuda_ordinal(cfg) else {
            let scratch = Scratch::new(&model.config, cfg.max_batch_tokens, max_rows);
            let cache = KvCache::with_dtype(kv, cfg.kv_dtype, kv_scales(model, cfg.kv_dtype));
            return Ok(Executor::Cpu { kv: cache, scratch: Box::new(scratch) });
        };
        // the CUDA backend keeps the KV cache in fp16 or fp8; say so rather than silently use another
        if !gpu_kv {
            return Err(Error::Invalid {
                what: "kv dtype",
                why: format!("the CUDA backend keeps the KV cache in f16 or fp8, not {:?}", cfg.kv_dtype),
            });
        }
        let limits = CudaLimits {
            max_tokens: cfg.max_batch_tokens,
            max_rows,
            max_seqs: cfg.max_seqs.max(1),
            max_context: cfg.max_context(),
        };
        let kv_fp8 = cfg.kv_dtype == KvDtype::Fp8;
        let gpu = CudaModel::new(model, kv, kv_fp8, limits, ordinal, &cfg.cuda)?;
        let logits = vec![0.0; max_rows * model.config.vocab_size];
        let (params, ids) = (Vec::with_capacity(max_rows), Vec::with_capacity(max_rows));
        Ok(Executor::Cuda { model: Box::new(gpu), logits, params, ids })
    }

    /// The KV cache's element type on either backend.
    pub(crate) fn kv_dtype(&self) -> KvDtype {
        match self {
            Executor::Cpu { kv, .. } => kv.dtype(),
            Executor::Cuda { model, .. } if model.kv_fp8() => KvDtype::Fp8,
            Executor::Cuda { .. } => KvDtype::F16,
        }
    }

    /// The CPU KV pool's element type and bytes; `None` on a GPU.
    pub(crate) fn kv_cache(&self) -> Option<(KvDtype, usize)> {
        match self {
            Executor::Cpu { kv, .. } => Some((kv.dtype(), kv.size_bytes())),
            Executor::Cuda { .. } => None,
        }
    }

    /// Where the GPU's kernels came from, when running on one.
    pub(crate) fn kernels(&self) -> Option<&cuda::KernelOrigin> {
        match self {
            Executor::Cpu { .. } => None,
            Executor::Cuda { model, .. } => Some(model.kernels()),
        }
    }

    /// The device name and memory in bytes, when running on a GPU.
    pub(crate) fn device(&self) -> Option<(String, usize)> {
        match self {
            Executor::Cpu { .. } => None,
            Executor::Cuda { model, .. } => Some((model.device_name(), model.device_memory())),
        }
    }

    /// The device's copy bandwidth (GB/s, read + write) over `bytes`-sized buffers; `None` on
    /// the CPU.
    pub(crate) fn device_copy_bandwidth(&self, bytes: usize) -> Option<Result<f64>> {
        match self {
            Executor::Cpu { .. } => None,
            Executor::Cuda { model, .. } => Some(model.copy_bandwidth(bytes)),
        }
    }

    /// Device memory in use (all processes), in bytes; `None` on the CPU.
    pub(crate) fn device_memory_in_use(&self) -> Option<Result<usize>> {
        match self {
            Executor::Cpu { .. } => None,
            Executor::Cuda { model, .. } => Some(model.memory_in_use()),
        }
    }

    /// Runs `batch` and samples a token for each logit row `r`, whose sequence is
    /// `seqs[owner[r]]`; `push(seq, token)` records it.
    pub(crate) fn forward_sample(
        &mut self,
        model: &Model,
        pool: &rayon::ThreadPool,
        batch: &ForwardBatch<'_>,
        seqs: &mut [&mut Sequence],
        owner: &[usize],
    ) -> Result<()> {
        let n_vocab = model.config.vocab_size;
        match self {
            Executor::Cpu { kv, scratch } => {
                pool.install(|| {
                    model.forward(batch, kv, scratch);
                });
                for (row, &i) in owner.iter().enumerate() {
                    let seq = &mut *seqs[i];
                    let logits = &mut scratch.logits_mut()[row * n_vocab..(row + 1) * n_vocab];
                    let sampled = seq.sampler.sample(logits, TokenHistory::split(&seq.tokens, seq.n_prompt));
                    seq.push_sampled(sampled);
                }
            }
            Executor::Cuda { model: gpu, logits, params, ids } => {
                // the device chooses every token unless a row needs the host (bias, penalties,
                // logprobs): then every row's logits come back and the host samples
                let plain = owner.iter().all(|&i| seqs[i].sampler.is_plain_argmax());
                params.clear();
                params.extend(owner.iter().map_while(|&i| seqs[i].sampler.device_params()));
                let on_device =
                    plain || (params.len() == owner.len() && owner.len() <= gpu.max_sampled_rows());
                let chosen = match (plain, on_device) {
                    (true, _) => gpu.forward(batch, None, None)?,
                    (false, true) => gpu.forward(batch, Some(params), None)?,
                    (false, false) => gpu.forward(batch, None, Some(&mut logits[..]))?,
                };
                ids.clear();
                ids.extend_from_slice(chosen);
                for (row, &i) in owner.iter().enumerate() {
                    let seq = &mut *seqs[i];
                    let id = ids[row];
                    let row_logits = &mut logits[row * n_vocab..(row + 1) * n_vocab];
                    let sampled = if on_device && id != cuda::HOST_ROW {
                        seq.sampler.take_device_token(id)
                    } else {
                        if on_device {
                            // too many candidates near the cut for the device's sort
                            gpu.logits_row(row, row_logits)?;
                        }
                        seq.sampler.sample(row_logits, TokenHistory::split(&seq.tokens, seq.n_prompt))
                    };
                    seq.push_sampled(sampled);
                }
            }
        }
        Ok(())
    }

    /// The logits of every row of `batch` (`[rows, vocab]`).
    pub(crate) fn forward_logits(
        &mut self,
        model: &Model,
        pool: &rayon::ThreadPool,
        batch: &ForwardBatch<'_>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        match self {
            Executor::Cpu { kv, scratch } => {
                out.extend_from_slice(pool.install(|| model.forward(batch, kv, scratch)))
            }
            Executor::Cuda { model: gpu, logits, .. } => {
                gpu.forward(batch, None, Some(&mut logits[..]))?;
                out.extend_from_slice(&logits[..batch.logit_rows.len() * model.config.vocab_size]);
            }
        }
        Ok(())
    }

    /// Most logit rows of one step.
    pub(crate) fn max_logit_rows(&self, cfg: &EngineConfig) -> usize {
        match self {
            Executor::Cpu { scratch, .. } => scratch.max_logit_rows(),
            Executor::Cuda { .. } => cfg.max_batch_tokens.max(cfg.max_seqs),
        }
    }
}
