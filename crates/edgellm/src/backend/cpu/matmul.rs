//! `out[m, n] = x[m, k] · W[n, k]ᵀ`: the projection of every linear layer. Weights are stored
//! row-major by output feature (PyTorch's `[out, in]`).
//!
//! Two regimes: few activation rows (decode) are memory-bound — each output element is one dot
//! product over contiguous memory, work split over chunks of weight rows so the weights stream
//! once, each weight row meeting every activation row while it is in L1. (A four-rows-at-once
//! `dot4` kernel was tried first: 7× slower than four `dot` calls at m = 4 — it did not
//! vectorize.) Many rows (prefill) are compute-bound and go to a packed, register-blocked GEMM (the
//! `gemm` crate, runtime-dispatched AVX2/AVX-512/NEON); half-precision weights are widened to
//! f32 one slab of rows at a time for it. int8 / int4 weights (`quant`) take the integer kernels
//! of `qmatmul` for few rows and are dequantized one slab at a time for the GEMM.

use half::{bf16, f16};
use rayon::prelude::*;

use super::fp8::matmul_fp8;
use super::qmatmul::{matmul_quant, QK};
use super::simd::{dot, Element};
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
    let gemm_min_rows = match w.data {
        MatrixData::F32(_) => GEMM_MIN_ROWS,
        // widening the weights to f32 for the GEMM costs a full pass over them
        _ => GEMM_MIN_ROWS_WIDENED,
    };
    if m >= gemm_min_rows {
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

/// From this many activation rows on, the blocked GEMM beats one dot product per output (f32
/// weights: 8.5 ms vs 12 ms at 8×9728×896 on the 2-core VM; `examples/matmul_speed.rs`).
const GEMM_MIN_ROWS: usize = 8;

/// The same for half-precision weights, which must be widened to f32 for the GEMM.
const GEMM_MIN_ROWS_WIDENED: usize = 32;

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

fn matmul_typed<W: Element>(x: &[f32], m: usize, n: usize, k: usize, w: &[W], out: &mut [f32]) {
    let out_ptr = SharedMut::new(out);
    let n_tasks = n.div_ceil(ROWS_PER_TASK);
    (0..n_tasks).into_par_iter().for_each(|task| {
        let rows = task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(n);
        for j in rows {
            // one weight row stays in L1 while every activation row meets it
            let wj = &w[j * k..(j + 1) * k];
            for i in 0..m {
                // SAFETY: (i, j) is in bounds, and column j belongs to this task alone.
                unsafe { out_ptr.write(i * n + j, dot(&x[i * k..(i + 1) * k], wj)) };
            }
        }
    });
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
}
