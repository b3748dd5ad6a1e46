//! Weight matrices on the GPU in the format the model (or engine package) stores them: fp16,
//! bf16, int8 per channel, int4 in groups, fp8 E4M3 per channel — uploaded in the CPU layout
//! (`quant::*`), which the kernels of `kernels/quant.cu` read with 16-byte loads as it is.
//!
//! [`GpuMatrix::matmul`] is the one projection entry point for formats other than the model's
//! own 16-bit type: the quantized GEMV for up to [`MAX_GEMV_TOKENS`] tokens, and above that a
//! dequantization into the fp16 scratch followed by the cuBLAS GEMM — or, for a matrix larger
//! than the scratch (a large-vocabulary LM head asked for many logit rows), the GEMV over groups
//! of [`MAX_GEMV_TOKENS`] tokens. Activations are fp16 for these kernels.

use super::gpu::{DevBuf, Gpu};
use super::model::warps_per_row;
use crate::backend::cpu::{Matrix, MatrixData};
use crate::{Error, Result};

/// Most tokens a step may have for the GEMV kernels and graph capture (`gemv_*_n1..n8`).
pub const MAX_GEMV_TOKENS: usize = 8;

/// How a matrix's elements are stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    F16,
    BF16,
    Int8,
    Int4 { group: usize },
    Fp8,
}

/// A weight matrix `[rows, cols]` on the device.
pub(crate) struct GpuMatrix {
    pub w: DevBuf,          // elements or codes, the CPU layout
    scales: Option<DevBuf>, // f32 [rows] (int8, fp8) or [rows, cols / group] (int4)
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
}

fn unsupported(why: String) -> Error {
    Error::Invalid { what: "dtype", why }
}

impl GpuMatrix {
    /// Uploads `m` as it is stored.
    pub fn upload(gpu: &Gpu, m: &Matrix) -> Result<Self> {
        let (rows, cols) = (m.rows, m.cols);
        let (format, w, scales): (Format, &[u8], Option<&[f32]>) = match &m.data {
            MatrixData::F16(v) => (Format::F16, bytemuck::cast_slice(v), None),
            MatrixData::BF16(v) => (Format::BF16, bytemuck::cast_slice(v), None),
            MatrixData::Int8 { q, scales } => (Format::Int8, bytemuck::cast_slice(q), Some(scales)),
            MatrixData::Int4 { q, scales, group } => (Format::Int4 { group: *group }, q, Some(scales)),
            MatrixData::Fp8 { q, scales } => (Format::Fp8, q, Some(scales)),
            MatrixData::F32(_) => {
                return Err(unsupported(
                    "the CUDA backend runs f16, bf16, int8, int4 or fp8 weights, not f32; pass --dtype"
                        .into(),
                ))
            }
        };
        let g = GpuMatrix {
            w: gpu.upload(w)?,
            scales: scales.map(|s| gpu.upload(s)).transpose()?,
            format,
            rows,
            cols,
        };
        if cols % g.elems_per_vector() != 0 {
            return Err(unsupported(format!(
                "a {rows}x{cols} {format:?} matrix: the CUDA kernels need columns in multiples of {}",
                g.elems_per_vector()
            )));
        }
        Ok(g)
    }

    /// Elements per 16-byte vector of a row (kernels/quant.cu `P::ELEMS`).
    fn elems_per_vector(&self) -> usize {
        match self.format {
            Format::F16 | Format::BF16 => 8,
            Format::Int8 | Format::Fp8 => 16,
            Format::Int4 { .. } => 32,
        }
    }

    /// Whether the matrix is in the model's 16-bit activation type (`"f16"` | `"bf16"`), which
    /// the plain fp16/bf16 kernels (gemv.cu, cuBLAS) take as it is.
    pub fn is_native(&self, dt: &str) -> bool {
        matches!((self.format, dt), (Format::F16, "f16") | (Format::BF16, "bf16"))
    }

    /// Bytes of its weights (codes or elements; not the scales).
    pub fn weight_bytes(&self) -> usize {
        self.len() * 16 / self.elems_per_vector()
    }

    /// Elements of the matrix.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    fn kernel(&self) -> &'static str {
        match self.format {
            Format::Int8 => "i8",
            Format::Int4 { .. } => "i4",
            Format::Fp8 => "fp8",
            // 16-bit weights against fp16 activations (the model sends fp16 ones to gemv.cu)
            Format::BF16 => "bf16",
            Format::F16 => "f16",
        }
    }

    /// Vectors per scale group (int4), 0 for a scale per row.
    fn vpg(&self) -> i32 {
        match self.format {
            Format::Int4 { group } => (group / 32) as i32,
            _ => 0,
        }
    }

    /// fp8 codes unpack as value / 256 (kernels/fp8.cuh): the row scales carry the 256.
    fn row_factor(&self) -> f32 {
        if self.format == Format::Fp8 {
            crate::quant::fp8::F16_FACTOR
        } else {
            1.0
        }
    }

    fn scales_ptr(&self) -> u64 {
        self.scales.as_ref().map_or(0, |s| s.ptr())
    }

    /// Warps per GEMV row ([`warps_per_row`] of the packed row's bytes).
    fn ksplit(&self) -> i32 {
        warps_per_row(self.cols * 16 / self.elems_per_vector())
    }

    /// Groups of rows of the GEMV (a block's 4 warps cover 4 / ksplit rows).
    fn row_groups(rows: usize, ksplit: i32) -> u32 {
        (rows as u32 * ksplit as u32).div_ceil(4)
    }

    /// `out[n, rows] = x[n, cols] · wᵀ` (fp32, soft-capped when `cap > 0`) for n ≤
    /// [`MAX_GEMV_TOKENS`]; `x` fp16 activations.
    pub fn gemv(&self, gpu: &Gpu, x: u64, n: usize, out: u64, cap: f32) -> Result<()> {
        debug_assert!((1..=MAX_GEMV_TOKENS).contains(&n));
        let ks = self.ksplit();
        let name = format!("qgemv_{}_n{n}", self.kernel());
        let grid = gpu.row_group_grid(&name, Self::row_groups(self.rows, ks), 128, 0)?;
        launch!(gpu, name, (grid, 1), 128, 0;
            self.w.ptr(), self.scales_ptr(), x, out, self.rows as i32, self.cols as i32, self.vpg(),
            self.row_factor(), cap, ks)
    }

    /// The fused gate/up projection: this matrix is `[gate; up]` (`2 · ffn` rows) and
    /// `act[n, ffn] = act(gate) · up` as fp16 activations, for n ≤ [`MAX_GEMV_TOKENS`].
    pub fn gemv_gated(&self, gpu: &Gpu, x: u64, n: usize, act_out: u64, act: i32) -> Result<()> {
        debug_assert!((1..=MAX_GEMV_TOKENS).contains(&n));
        let (ks, ffn) = (self.ksplit(), self.rows / 2);
        let name = format!("qgemv_gated_{}_n{n}", self.kernel());
        let grid = gpu.row_group_grid(&name, Self::row_groups(ffn, ks), 128, 0)?;
        launch!(gpu, name, (grid, 1), 128, 0;
            self.w.ptr(), self.scales_ptr(), x, act_out, ffn as i32, self.cols as i32, self.vpg(),
            self.row_factor(), act, ks)
    }

    /// The matrix in fp16 into `out` (at least [`Self::len`] elements).
    pub fn dequant(&self, gpu: &Gpu, out: u64) -> Result<()> {
        let vectors = self.len() / self.elems_per_vector();
        launch!(gpu, format!("dequant_{}", self.kernel()), (vectors.div_ceil(256) as u32, 1), 256, 0;
            self.w.ptr(), self.scales_ptr(), out, self.rows as i32, self.cols as i32, self.vpg(),
            self.row_factor())
    }

    /// `out[n, rows] = x[n, cols] · wᵀ` in fp32 for any n, soft-capped when `cap > 0`; `x` fp16
    /// activations; `scratch` an fp16 buffer of `scratch_len` elements.
    pub fn matmul(
        &self,
        gpu: &Gpu,
        x: u64,
        n: usize,
        out: u64,
        cap: f32,
        scratch: (u64, usize),
    ) -> Result<()> {
        if n <= MAX_GEMV_TOKENS {
            return self.gemv(gpu, x, n, out, cap);
        }
        if self.len() > scratch.1 {
            // too large to dequantize whole: the GEMV, a group of tokens at a time
            for t0 in (0..n).step_by(MAX_GEMV_TOKENS) {
                let nt = MAX_GEMV_TOKENS.min(n - t0);
                let (xo, oo) = ((t0 * self.cols * 2) as u64, (t0 * self.rows * 4) as u64);
                self.gemv(gpu, x + xo, nt, out + oo, cap)?;
            }
            return Ok(());
        }
        self.dequant(gpu, scratch.0)?;
        gpu.gemm(false, x, scratch.0, out, (n, self.rows, self.cols), false)?;
        if cap > 0.0 {
            let len = (n * self.rows) as i32;
            launch!(gpu, "softcap_f32", ((len as u32).div_ceil(256), 1), 256, 0; out, len, cap)?;
        }
        Ok(())
    }
}
