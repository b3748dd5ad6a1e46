//! Decode-time matmul over fp8 E4M3 weights (`quant::fp8`): f32 activations times weight codes
//! widened to f32 in registers, one dot product per output, threads over chunks of weight rows as
//! in `matmul`. (Prefill goes to the GEMM through `Matrix::row_into`, like every other format.)
//!
//! Widening: a code's low 7 bits shifted to bits 7..13 with the sign at bit 15 is an f16 equal
//! to the E4M3 value / 256 (`quant::fp8::to_f16_bits`), so AVX2 + F16C widen 8 codes with two
//! shifts, two masks and one `vcvtph2ps`, and the 256 joins the row scale. The portable version
//! reads a 256-entry table; it is also the reference the SIMD version is tested against.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::matmul::{Matrix, MatrixData, ROWS_PER_TASK};
use super::SharedMut;
use crate::quant::fp8;

/// `out[m, w.rows] = x[m, w.cols] · wᵀ` for an fp8 `w`.
pub(crate) fn matmul_fp8(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    matmul_fp8_with(simd_supported(), x, m, w, out)
}

/// [`matmul_fp8`] with the SIMD dot product (when the CPU has it) or the portable one.
pub fn matmul_fp8_with(simd: bool, x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: x is not [m, cols]");
    assert_eq!(out.len(), m * n, "matmul: out is not [m, rows]");
    let MatrixData::Fp8 { q, scales } = &w.data else { panic!("matmul_fp8: weights are not fp8") };
    let simd = simd && simd_supported();
    let out_ptr = SharedMut::new(out);
    (0..n.div_ceil(ROWS_PER_TASK)).into_par_iter().for_each(|task| {
        for j in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(n) {
            let wj = &q[j * k..(j + 1) * k];
            for i in 0..m {
                let v = scales[j] * dot(simd, &x[i * k..(i + 1) * k], wj);
                // SAFETY: (i, j) is in bounds of out [m, n], and column j belongs to this task alone.
                unsafe { out_ptr.write(i * n + j, v) };
            }
        }
    });
}

/// Whether the SIMD dot product can run here.
fn simd_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `Σ x_i · decode(w_i)`.
fn dot(simd: bool, x: &[f32], w: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only true when `simd_supported` found AVX2, FMA and F16C.
        return unsafe { dot_avx2(x, w) };
    }
    let _ = simd;
    dot_scalar(x, w)
}

fn dot_scalar(x: &[f32], w: &[u8]) -> f32 {
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| std::array::from_fn(|c| fp8::decode(c as u8)));
    x.iter().zip(w).map(|(a, &c)| a * table[c as usize]).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(x: &[f32], w: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    let n16 = x.len() / 16 * 16;
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (low7, sign) = (_mm256_set1_epi16(0x3F80), _mm256_set1_epi16(i16::MIN));
    let mut i = 0;
    while i < n16 {
        // SAFETY: i + 16 <= len of both slices; unaligned loads.
        let (codes, xa, xb) = unsafe {
            (
                _mm_loadu_si128(w.as_ptr().add(i) as *const __m128i),
                _mm256_loadu_ps(x.as_ptr().add(i)),
                _mm256_loadu_ps(x.as_ptr().add(i + 8)),
            )
        };
        // sign-extended codes: bit 15 is the sign, bits 0..6 the magnitude
        let s = _mm256_cvtepi8_epi16(codes);
        let h = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(s, 7), low7), _mm256_and_si256(s, sign));
        let wa = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
        let wb = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
        acc0 = _mm256_fmadd_ps(xa, wa, acc0);
        acc1 = _mm256_fmadd_ps(xb, wb, acc1);
        i += 16;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let hi = _mm256_extractf128_ps(acc, 1);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
    _mm_cvtss_f32(s1) * fp8::F16_FACTOR + dot_scalar(&x[n16..], &w[n16..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_match_the_f32_reference() {
        for (m, n, k) in [(1, 1, 1), (1, 33, 70), (3, 17, 64), (2, 40, 896)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0).collect();
            let w: Vec<f32> =
                (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 7.0 * (1 + i % 3) as f32).collect();
            let mat = Matrix::from_f32(n, k, w).converted(crate::quant::WeightFormat::Fp8);
            // reference: the dequantized weights in f32
            let mut deq = vec![0f32; n * k];
            for (r, row) in deq.chunks_exact_mut(k).enumerate() {
                mat.row_into(r, row);
            }
            let want = Matrix::from_f32(n, k, deq);
            let mut reference = vec![0f32; m * n];
            crate::backend::cpu::matmul(&x, m, &want, &mut reference);
            for simd in [false, true] {
                let mut out = vec![0f32; m * n];
                matmul_fp8_with(simd, &x, m, &mat, &mut out);
                for (a, b) in out.iter().zip(&reference) {
                    assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{m}x{n}x{k} simd={simd}: {a} vs {b}");
                }
            }
        }
    }
}
