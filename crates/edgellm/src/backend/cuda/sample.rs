//! Sampling on the device: the buffers of the sampling kernels (kernels/sample.cu, second half),
//! allocated once at load, and their four launches. Each logit row carries its request's
//! [`DeviceParams`] as [`SAMPLE_WORDS`] words of the step's one input copy ([`encode`]), so the
//! launches are the same every step and sit in the captured decode graph; only the ids come
//! back. The kernels choose exactly the token the CPU sampler (`sampling/logits.rs`) chooses
//! from the same logits; a row whose cut bins hold more than [`CAP`] candidates comes back as
//! [`HOST_ROW`] and is sampled on the host from its logits.

use super::gpu::{CudaOptions, DevBuf, Gpu};
use crate::sampling::DeviceParams;
use crate::{Error, Result};

/// Words per row of sampling parameters (kernels/sample.cu `SAMPLE_WORDS`).
pub const SAMPLE_WORDS: usize = 9;
/// The id of a row the device left to the host.
pub const HOST_ROW: u32 = u32::MAX;
/// Distance bins (`SAMPLE_BINS`), most candidates sorted on the device (`SAMPLE_CAP`), words of
/// a row's plan (`PLAN_WORDS`), most blocks per row.
const BINS: usize = 2048;
const CAP: usize = 4096;
const PLAN_WORDS: usize = 10;
const MAX_SPLITS: usize = 32;

/// Writes `p` in the layout the kernels read (`sample_row`).
pub fn encode(p: &DeviceParams, out: &mut [u32]) {
    out[..SAMPLE_WORDS].copy_from_slice(&[
        u32::from(!p.greedy),
        p.temperature.to_bits(),
        p.top_k,
        p.top_p,
        p.max_distance.to_bits(),
        p.seed as u32,
        (p.seed >> 32) as u32,
        p.counter as u32,
        (p.counter >> 32) as u32,
    ]);
}

/// Blocks per row: the chip busy at batch 1, one wave at batch 8. The result does not depend
/// on it (the draw is exact), only the speed.
fn splits(rows: usize) -> u32 {
    (128 / rows.max(1)).clamp(4, MAX_SPLITS) as u32
}

/// The sampling kernels' device state for up to `max_rows` rows; every buffer is left as the
/// kernels expect it at the start of a step (zeroed counters and histograms).
pub(crate) struct DeviceSampler {
    max_rows: usize,
    rowmax: DevBuf,     // u64 [R] best (key << 32 | ~id), 0 between steps
    hist_cnt: DevBuf,   // u32 [R, BINS], 0 between steps
    hist_mass: DevBuf,  // u64 [R, BINS], 0 between steps
    plan: DevBuf,       // u64 [R, PLAN_WORDS]
    cand: DevBuf,       // u32 [R, CAP] keys, then u32 [R, CAP] ids
    n_cand: DevBuf,     // u32 [R], 0 between steps
    done: DevBuf,       // i32 [3, R] blocks finished per kernel, 0 between steps
    chunk_mass: DevBuf, // u64 [R, MAX_SPLITS]
}

fn zeros(gpu: &Gpu, bytes: usize) -> Result<DevBuf> {
    gpu.upload(&vec![0u8; bytes])
}

impl DeviceSampler {
    pub(crate) fn new(gpu: &Gpu, max_rows: usize) -> Result<Self> {
        let r = max_rows.max(1);
        Ok(DeviceSampler {
            max_rows: r,
            rowmax: zeros(gpu, r * 8)?,
            hist_cnt: zeros(gpu, r * BINS * 4)?,
            hist_mass: zeros(gpu, r * BINS * 8)?,
            plan: zeros(gpu, r * PLAN_WORDS * 8)?,
            cand: DevBuf::new(2 * r * CAP * 4)?,
            n_cand: zeros(gpu, r * 4)?,
            done: zeros(gpu, 3 * r * 4)?,
            chunk_mass: DevBuf::new(r * MAX_SPLITS * 8)?,
        })
    }

    /// Enqueues the sampling of `rows` rows of `logits` (f32 `[rows, vocab]`) with parameters
    /// at `params` (u32 `[rows, SAMPLE_WORDS]`) into `ids` (u32 `[rows]`).
    pub(crate) fn enqueue(
        &self,
        gpu: &Gpu,
        logits: u64,
        vocab: usize,
        rows: usize,
        params: u64,
        ids: u64,
    ) -> Result<()> {
        debug_assert!(rows <= self.max_rows);
        let grid = (rows as u32, splits(rows));
        let v = vocab as i32;
        let (cand_key, cand_id) = (self.cand.ptr(), self.cand.ptr() + (self.max_rows * CAP * 4) as u64);
        let done = |k: usize| self.done.ptr() + (k * self.max_rows * 4) as u64;
        let (done_hist, done_gather, done_walk) = (done(0), done(1), done(2));
        launch!(gpu, "sample_max", grid, 1024, 0; logits, v, params, self.rowmax.ptr())?;
        launch!(gpu, "sample_hist", grid, 1024, 0; logits, v, params, self.rowmax.ptr(),
            self.hist_cnt.ptr(), self.hist_mass.ptr(), self.plan.ptr(), done_hist)?;
        launch!(gpu, "sample_gather", grid, 1024, 0; logits, v, params, self.rowmax.ptr(), self.plan.ptr(),
            cand_key, cand_id, self.n_cand.ptr(), done_gather, ids)?;
        launch!(gpu, "sample_walk", grid, 1024, 0; logits, v, params, self.rowmax.ptr(), self.plan.ptr(),
            self.chunk_mass.ptr(), done_walk, ids)
    }
}

/// The device sampler alone, on logits copied from the host: for parity tests against the CPU
/// sampler and for timing the kernels without a model.
pub struct StandaloneSampler {
    gpu: Gpu,
    sampler: DeviceSampler,
    vocab: usize,
    logits: DevBuf,
    params: DevBuf,
    ids: DevBuf,
    words: Vec<u32>,
    host_ids: Vec<u32>,
}

impl StandaloneSampler {
    /// Opens device `ordinal` for up to `max_rows` rows of `vocab` logits.
    pub fn new(ordinal: usize, opts: &CudaOptions, max_rows: usize, vocab: usize) -> Result<Self> {
        let gpu = Gpu::new(ordinal, opts)?;
        let sampler = DeviceSampler::new(&gpu, max_rows)?;
        Ok(StandaloneSampler {
            logits: DevBuf::new(max_rows * vocab * 4)?,
            params: DevBuf::new(max_rows * SAMPLE_WORDS * 4)?,
            ids: DevBuf::new(max_rows * 4)?,
            words: vec![0; max_rows * SAMPLE_WORDS],
            host_ids: vec![0; max_rows],
            gpu,
            sampler,
            vocab,
        })
    }

    /// Copies `logits` (`[rows, vocab]`) to the device, where [`StandaloneSampler::run`] samples
    /// them.
    pub fn upload(&mut self, logits: &[f32]) -> Result<()> {
        let rows = logits.len() / self.vocab;
        if rows * self.vocab != logits.len() || rows > self.sampler.max_rows {
            return Err(Error::Invalid {
                what: "logits",
                why: format!(
                    "{} values are not up to {} rows of {}",
                    logits.len(),
                    self.sampler.max_rows,
                    self.vocab
                ),
            });
        }
        self.gpu.bind()?;
        self.gpu.htod(self.logits.ptr(), logits)
    }

    /// Samples the first `params.len()` uploaded rows, one request each; `HOST_ROW` marks a row
    /// left to the host.
    pub fn run(&mut self, params: &[DeviceParams]) -> Result<&[u32]> {
        let rows = params.len();
        if rows == 0 || rows > self.sampler.max_rows {
            return Err(Error::Invalid {
                what: "rows",
                why: format!("{rows}; 1..={}", self.sampler.max_rows),
            });
        }
        self.gpu.bind()?;
        for (p, w) in params.iter().zip(self.words.chunks_mut(SAMPLE_WORDS)) {
            encode(p, w);
        }
        self.gpu.htod(self.params.ptr(), &self.words[..rows * SAMPLE_WORDS])?;
        self.enqueue(rows)?;
        self.gpu.dtoh(&mut self.host_ids[..rows], self.ids.ptr())?;
        Ok(&self.host_ids[..rows])
    }

    /// Queues the sampling of the first `rows` rows of the logits with the parameters in place.
    fn enqueue(&self, rows: usize) -> Result<()> {
        self.sampler.enqueue(
            &self.gpu,
            self.logits.ptr(),
            self.vocab,
            rows,
            self.params.ptr(),
            self.ids.ptr(),
        )
    }

    /// Mean wall time in µs of `reps` back-to-back samplings of `params` (launches included,
    /// one synchronisation at the end).
    pub fn time(&mut self, params: &[DeviceParams], reps: usize) -> Result<f64> {
        self.run(params)?; // warm-up, and the parameters in place
        let start = std::time::Instant::now();
        for _ in 0..reps {
            self.enqueue(params.len())?;
        }
        self.gpu.sync()?;
        Ok(start.elapsed().as_secs_f64() * 1e6 / reps.max(1) as f64)
    }
}

// SAFETY: as CudaModel: every entry point binds the context first; `&mut self` keeps one thread.
unsafe impl Send for StandaloneSampler {}
