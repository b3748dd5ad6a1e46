//! `out[m, n] = x[m, k] · W[n, k]ᵀ`: the projection of every linear layer. Weights are stored
//! row-major by output feature (PyTorch's `[out, in]`).
//!
//! Two regimes: few activation rows (decode, batched decode) should be memory-bound — the
//! weights stream once per call, work split over chunks of weight rows, and inside a chunk
//! register tiles of up to 4 activation rows × a few weight rows (`run_tiles`) load each
//! weight element once for all the tile's activation rows (explicit intrinsics: an earlier
//! auto-vectorized four-rows kernel did not vectorize). Many rows (prefill) are compute-bound:
//! float weights go to a packed, cache-blocked GEMM (the `gemm` crate, runtime-dispatched
//! AVX2/AVX-512/NEON) from `GEMM_MIN_ROWS` (32) rows, half-precision ones widened to f32 one slab
//! of rows at a time. int8 / int4 weights (`quant`) take the integer tiles of `qmatmul` — at
//! every row count where the CPU has AVX-512 VNNI, else below the GEMM threshold, above which
//! they are dequantized one slab at a time for the GEMM.

use half::{bf16, f16};
use rayon::prelude::*;

use super::fp8::matmul_fp8;
use super::qmatmul::{matmul_quant, QLevel, QK};
use super::simd::{dot_tile, Element};
use super::SharedMut;
use crate::quant::{fp8, int4, int8, Buf, WeightFormat};

/// Element storage of a weight matrix ([`Buf`]: owned, or mapped from an engine package).
#[derive(Debug, Clone)]
pub enum MatrixData {
    /// f32 elements.
    F32(Buf<f32>),
    /// bf16 elements.
    BF16(Buf<bf16>),
    /// f16 elements.
    F16(Buf<f16>),
    /// int8 per output channel: `q` `[rows, cols]`, `scales` `[rows]` (layout in `quant::int8`).
    Int8 {
        /// Values in `[-127, 127]`.
        q: Buf<i8>,
        /// One per row.
        scales: Buf<f32>,
    },
    /// int4 in groups along the input: `q` `[rows, cols / 2]` packed, `scales`
    /// `[rows, cols / group]` (layout in `quant::int4`).
    Int4 {
        /// Two biased nibbles per byte.
        q: Buf<u8>,
        /// One per (row, group).
        scales: Buf<f32>,
        /// Input features per scale.
        group: usize,
    },
    /// fp8 E4M3 per output channel: `q` `[rows, cols]` codes, `scales` `[rows]` (layout in
    /// `quant::fp8`).
    Fp8 {
        /// E4M3 codes.
        q: Buf<u8>,
        /// One per row.
        scales: Buf<f32>,
    },
}

/// A weight matrix `[rows, cols]`, row-major (`rows` = output features).
#[derive(Debug, Clone)]
pub struct Matrix {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// The elements, `rows * cols` of them.
    pub data: MatrixData,
}

impl Matrix {
    /// An f32 matrix.
    pub fn from_f32(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Matrix { rows, cols, data: MatrixData::F32(data.into()) }
    }

    /// The same values stored in the given format (`F32` keeps them as they are). Quantized
    /// formats need whole activation blocks: int4 falls back to int8 when its group does not
    /// divide the columns, and int8 to bf16 when the columns are not a multiple of 32.
    pub fn converted(self, format: WeightFormat) -> Self {
        if format == WeightFormat::F32 || !matches!(self.data, MatrixData::F32(_)) {
            return self;
        }
        self.copy_as(format)
    }

    /// A copy of an f32 matrix stored in `format` (as [`Self::converted`], which consumes the
    /// original; the export keeps the f32 embedding table while it makes a tied LM head).
    pub fn copy_as(&self, format: WeightFormat) -> Self {
        let (rows, cols) = (self.rows, self.cols);
        let format = match format {
            WeightFormat::Int4 { group } if !int4::fits(cols, group) => WeightFormat::Int8,
            WeightFormat::Int8 if cols % QK != 0 => WeightFormat::BF16,
            f => f,
        };
        let MatrixData::F32(v) = &self.data else { return self.clone() };
        let data = match format {
            WeightFormat::F32 => MatrixData::F32(v.clone()),
            WeightFormat::BF16 => {
                MatrixData::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>().into())
            }
            WeightFormat::F16 => {
                MatrixData::F16(v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>().into())
            }
            WeightFormat::Int8 => {
                let (q, scales) = int8::quantize(v, rows, cols);
                MatrixData::Int8 { q: q.into(), scales: scales.into() }
            }
            WeightFormat::Int4 { group } => {
                let (q, scales) = int4::quantize(v, rows, cols, group);
                MatrixData::Int4 { q: q.into(), scales: scales.into(), group }
            }
            WeightFormat::Fp8 => {
                let (q, scales) = fp8::quantize(v, rows, cols);
                MatrixData::Fp8 { q: q.into(), scales: scales.into() }
            }
        };
        Matrix { rows, cols, data }
    }

    /// Row `r` dequantized into `out` (embedding lookups).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            MatrixData::F32(v) => out.copy_from_slice(&v[range]),
            MatrixData::BF16(v) => out.iter_mut().zip(&v[range]).for_each(|(o, w)| *o = w.to_f32()),
            MatrixData::F16(v) => out.iter_mut().zip(&v[range]).for_each(|(o, w)| *o = w.to_f32()),
            MatrixData::Int8 { q, scales } => int8::dequantize_row(&q[range], scales[r], out),
            MatrixData::Int4 { q, scales, group } => {
                let ng = self.cols / group;
                let qr = &q[r * self.cols / 2..(r + 1) * self.cols / 2];
                int4::dequantize_row(qr, &scales[r * ng..(r + 1) * ng], *group, out)
            }
            MatrixData::Fp8 { q, scales } => fp8::dequantize_row(&q[range], scales[r], out),
        }
    }

    /// Bytes the elements occupy.
    pub fn size_bytes(&self) -> usize {
        match &self.data {
            MatrixData::F32(v) => v.len() * 4,
            MatrixData::BF16(v) => v.len() * 2,
            MatrixData::F16(v) => v.len() * 2,
            MatrixData::Int8 { q, scales } => q.len() + scales.len() * 4,
            MatrixData::Int4 { q, scales, .. } => q.len() + scales.len() * 4,
            MatrixData::Fp8 { q, scales } => q.len() + scales.len() * 4,
        }
    }
}

/// Weight rows per parallel task: small enough to spread 900-row matrices over the threads,
/// large enough that a task's rows stay in L2 while the activation rows stream past.
pub(super) const ROWS_PER_TASK: usize = 16;

/// `out[m, w.rows] = x[m, w.cols] · wᵀ`.
pub fn matmul(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    assert_eq!(x.len(), m * w.cols, "matmul: x is not [m, cols]");
    assert_eq!(out.len(), m * w.rows, "matmul: out is not [m, rows]");
    let quant = matches!(w.data, MatrixData::Int8 { .. } | MatrixData::Int4 { .. });
    // the VNNI tiles beat dequantize + GEMM at every row count (qmatmul's module docs)
    if m >= GEMM_MIN_ROWS && !(quant && QLevel::best() == QLevel::Avx512Vnni) {
        return gemm_rows(x, m, w, out);
    }
    match &w.data {
        MatrixData::F32(v) => matmul_typed(x, m, w.rows, w.cols, &v[..], out),
        MatrixData::BF16(v) => matmul_typed(x, m, w.rows, w.cols, &v[..], out),
        MatrixData::F16(v) => matmul_typed(x, m, w.rows, w.cols, &v[..], out),
        MatrixData::Int8 { .. } | MatrixData::Int4 { .. } => matmul_quant(x, m, w, out),
        MatrixData::Fp8 { .. } => matmul_fp8(x, m, w, out),
    }
}

/// From this many activation rows on, float weights go to the packed GEMM, which blocks for
/// the caches; below it the register tiles are as fast or faster (8–31 rows at 9728×896: 1.3–2.6×
/// faster than the GEMM on a quiet Xeon; BENCHMARKS.md).
const GEMM_MIN_ROWS: usize = 32;

/// Weight rows widened to f32 per GEMM call for half-precision weights (bounds the temporary).
const WIDEN_ROWS: usize = 1024;

fn gemm_rows(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let mut widened = Vec::new();
    let mut row = 0;
    while row < n {
        let rows = match &w.data {
            MatrixData::F32(_) => n,
            _ => WIDEN_ROWS.min(n - row),
        };
        let slab: &[f32] = match &w.data {
            MatrixData::F32(v) => &v[..],
            // every other format widens one slab of rows through `row_into`
            _ => {
                widened.resize(rows * k, 0.0);
                for (r, dst) in widened.chunks_exact_mut(k).enumerate() {
                    w.row_into(row + r, dst);
                }
                &widened
            }
        };
        // SAFETY: dst is `out[.., row..row + rows]` (row stride n) — in bounds since out is
        // [m, n]; lhs is x [m, k] (row stride k); rhs is slabᵀ [k, rows]: element (kk, j) at
        // slab[j * k + kk]. No two of them alias.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                out.as_mut_ptr().add(row),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                slab.as_ptr(),
                k as isize,
                1,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        row += rows;
    }
}

/// One register tile of a few-rows matmul: activation rows `i0..i0 + MR` against weight rows
/// `j0..j0 + NR`, written into `out[i, j]` (row stride `n`).
pub(super) trait Tile: Sync {
    /// Computes and writes the tile.
    ///
    /// # Safety
    /// The tile is in bounds of `at.out` `[m, n]`, and no other task writes its elements.
    unsafe fn tile<const MR: usize, const NR: usize>(&self, at: TileAt);
}

/// Where a tile goes: its first activation row `i0` and weight row `j0` in `out[m, n]`.
#[derive(Clone, Copy)]
pub(super) struct TileAt {
    pub i0: usize,
    pub j0: usize,
    out: SharedMut<f32>,
    n: usize,
}

/// Activation rows per tile (`MR` of the kernels), at most.
pub(super) const TILE_M: usize = 4;

/// Activation rows one pass over a task's weight tiles covers: bounds the activations that
/// must stay in L2 while the task's weights (in L1/L2 after the first pass) meet them.
const CHUNK_M: usize = 64;

/// Runs `kernel` over every tile of `out[m, n]`: tasks of whole `NR`-row weight tiles (about
/// [`ROWS_PER_TASK`] rows) spread over the rayon pool; inside a task each weight tile meets
/// every activation tile of a [`CHUNK_M`]-row chunk while it is in L1, so the weights stream
/// from memory once per call. Leftover weight rows go one at a time, leftover activation rows
/// as a narrower tile.
pub(super) fn run_tiles<K: Tile, const NR: usize>(kernel: &K, m: usize, n: usize, out: &mut [f32]) {
    assert_eq!(out.len(), m * n, "matmul: out is not [m, rows]");
    let out_ptr = SharedMut::new(out);
    let per_task = (ROWS_PER_TASK / NR).max(1) * NR;
    (0..n.div_ceil(per_task)).into_par_iter().for_each(|task| {
        for chunk in (0..m).step_by(CHUNK_M) {
            let chunk_end = (chunk + CHUNK_M).min(m);
            let end = ((task + 1) * per_task).min(n);
            let mut j = task * per_task;
            while j < end {
                let nr = if j + NR <= end { NR } else { 1 };
                let mut i = chunk;
                while i < chunk_end {
                    let mr = (chunk_end - i).min(TILE_M);
                    // SAFETY: rows i..i + mr < m and columns j..j + nr ≤ end ≤ n are in bounds, and
                    // columns task * per_task..end belong to this task alone.
                    let at = TileAt { i0: i, j0: j, out: out_ptr, n };
                    unsafe {
                        match (mr, nr == NR) {
                            (4, true) => kernel.tile::<4, NR>(at),
                            (3, true) => kernel.tile::<3, NR>(at),
                            (2, true) => kernel.tile::<2, NR>(at),
                            (1, true) => kernel.tile::<1, NR>(at),
                            (4, false) => kernel.tile::<4, 1>(at),
                            (3, false) => kernel.tile::<3, 1>(at),
                            (2, false) => kernel.tile::<2, 1>(at),
                            _ => kernel.tile::<1, 1>(at),
                        }
                    }
                    i += mr;
                }
                j += nr;
            }
        }
    });
}

/// Writes a computed tile: `vals[i][r]` is `out[i0 + i, j0 + r]`.
///
/// # Safety
/// As [`Tile::tile`].
#[inline(always)]
pub(super) unsafe fn store_tile<const MR: usize, const NR: usize>(vals: [[f32; NR]; MR], at: TileAt) {
    for (i, row) in vals.iter().enumerate() {
        for (r, &v) in row.iter().enumerate() {
            // SAFETY: the caller guarantees bounds and exclusivity.
            unsafe { at.out.write((at.i0 + i) * at.n + at.j0 + r, v) };
        }
    }
}

/// Half- or single-precision weights against f32 activations.
struct FloatTiles<'a, W> {
    x: &'a [f32],
    w: &'a [W],
    k: usize,
}

impl<W: Element> Tile for FloatTiles<'_, W> {
    unsafe fn tile<const MR: usize, const NR: usize>(&self, at: TileAt) {
        let (k, i0, j0) = (self.k, at.i0, at.j0);
        let x = std::array::from_fn(|i| &self.x[(i0 + i) * k..(i0 + i + 1) * k]);
        let w = std::array::from_fn(|r| &self.w[(j0 + r) * k..(j0 + r + 1) * k]);
        // SAFETY: forwarded from the caller.
        unsafe { store_tile::<MR, NR>(dot_tile(x, w), at) }
    }
}

/// Weight rows per float tile: 4 × 3 accumulators fit the 16 AVX2 registers (`simd::dot_tile`).
const FLOAT_NR: usize = 3;

fn matmul_typed<W: Element>(x: &[f32], m: usize, n: usize, k: usize, w: &[W], out: &mut [f32]) {
    run_tiles::<_, FLOAT_NR>(&FloatTiles { x, w, k }, m, n, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] =
                    (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum::<f64>() as f32;
            }
        }
        out
    }

    #[test]
    fn matches_naive_across_shapes_and_dtypes() {
        for (m, n, k) in [(1, 1, 1), (1, 33, 70), (3, 17, 64), (4, 16, 16), (9, 40, 130)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0).collect();
            let want = naive(&x, m, &w, n, k);
            for dtype in [WeightFormat::F32, WeightFormat::BF16] {
                let mat = Matrix::from_f32(n, k, w.clone()).converted(dtype);
                let mut out = vec![0f32; m * n];
                matmul(&x, m, &mat, &mut out);
                let tol = if dtype == WeightFormat::F32 { 1e-4 } else { 0.05 };
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() < tol, "{m}x{n}x{k} {dtype:?}: {a} vs {b}");
                }
            }
        }
    }

    /// Every float format at random shapes on both sides of the GEMM threshold, with tile tails
    /// in m (not a multiple of 4), n (not of 3) and k (not of 8): against the f32 reference of
    /// the stored (rounded) weights.
    #[test]
    fn tiles_match_the_reference_at_random_shapes() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..60 {
            let (m, n, k) = (rng.gen_range(1..=40), rng.gen_range(1..=50), rng.gen_range(1..=300));
            let x: Vec<f32> = (0..m * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0..1.0)).collect();
            for dtype in [WeightFormat::F32, WeightFormat::BF16, WeightFormat::F16] {
                let mat = Matrix::from_f32(n, k, w.clone()).converted(dtype);
                let mut stored = vec![0f32; n * k];
                for (j, row) in stored.chunks_exact_mut(k).enumerate() {
                    mat.row_into(j, row);
                }
                let want = naive(&x, m, &stored, n, k);
                let mut out = vec![0f32; m * n];
                matmul(&x, m, &mat, &mut out);
                for (e, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-5 * k as f32, "{m}x{n}x{k} {dtype:?} [{e}]: {a} vs {b}");
                }
            }
        }
    }
}
