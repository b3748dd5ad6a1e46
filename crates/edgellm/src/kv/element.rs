//! Element types of the KV cache: f32 (exact), f16, bf16 and fp8 E4M3 with a per-tensor scale.
//!
//! The cache stores `value / scale` ([`KvElement::encode`]); attention reads rows back to f32
//! ([`KvElement::row`]) one 16-byte chunk at a time (8 f16 or bf16, 16 fp8 codes) and multiplies
//! the scale in once — into the score scale for K, into the output for V — rather than per element.
//! f16 and bf16 run with scale 1; fp8 with the package's calibrated `kv_scale` (max |K| or |V|
//! over a calibration text ÷ 448), saturating at ±448.

use half::{bf16, f16};

use crate::quant::fp8;

/// An fp8 E4M3 code ([`crate::quant::fp8`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Fp8(pub u8);

/// A KV-cache element: encoded from f32 (already divided by the tensor's scale) on write, read
/// back as f32 rows by attention.
pub trait KvElement: Copy + Default + Send + Sync + 'static {
    /// Bytes per element.
    const BYTES: usize;
    /// The element nearest to `x` (saturating where the type has a finite range).
    fn encode(x: f32) -> Self;
    /// `src` as f32 into `dst` (same length); `simd`: AVX2/F16C may be used
    /// ([`simd_available`]).
    fn decode_into(simd: bool, src: &[Self], dst: &mut [f32]);
    /// `src` as f32: `src` itself for f32, else decoded into `buf` (at least `src.len()` long).
    #[inline(always)]
    fn row<'a>(simd: bool, src: &'a [Self], buf: &'a mut [f32]) -> &'a [f32] {
        let out = &mut buf[..src.len()];
        Self::decode_into(simd, src, out);
        out
    }
}

impl KvElement for f32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn encode(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn decode_into(_: bool, src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn row<'a>(_: bool, src: &'a [f32], _: &'a mut [f32]) -> &'a [f32] {
        src
    }
}

impl KvElement for bf16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn encode(x: f32) -> Self {
        bf16::from_f32(x)
    }
    /// bf16 is the upper half of an f32: a shift, which the compiler vectorizes.
    #[inline(always)]
    fn decode_into(_: bool, src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits((s.to_bits() as u32) << 16);
        }
    }
}

impl KvElement for f16 {
    const BYTES: usize = 2;
    #[inline(always)]
    fn encode(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn decode_into(simd: bool, src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is only true where AVX2 and F16C were detected.
            return unsafe { x86::f16_into(src, dst) };
        }
        let _ = simd;
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

impl KvElement for Fp8 {
    const BYTES: usize = 1;
    #[inline(always)]
    fn encode(x: f32) -> Self {
        Fp8(fp8::encode(x))
    }
    #[inline(always)]
    fn decode_into(simd: bool, src: &[Fp8], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: `simd` is only true where AVX2 and F16C were detected.
            return unsafe { x86::fp8_into(src, dst) };
        }
        let _ = simd;
        let table = fp8_table();
        for (d, s) in dst.iter_mut().zip(src) {
            *d = table[s.0 as usize];
        }
    }
}

/// Every E4M3 code's value.
fn fp8_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| fp8::decode(c as u8)))
}

/// Whether [`KvElement::decode_into`] may take its AVX2/F16C path on this CPU.
pub fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return crate::backend::cpu::simd::has_avx2();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Fp8, KvElement};
    use half::f16;

    /// 8 f16 (16 bytes) per conversion.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub(super) unsafe fn f16_into(src: &[f16], dst: &mut [f32]) {
        let n8 = src.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= len of both slices (equal lengths); unaligned loads and stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
        }
        for (d, s) in dst[n8..].iter_mut().zip(&src[n8..]) {
            *d = s.to_f32();
        }
    }

    /// 16 codes (16 bytes) per step: each code becomes the f16 of its value ÷ 256
    /// ([`crate::quant::fp8::to_f16_bits`]), widened by F16C and multiplied back.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub(super) unsafe fn fp8_into(src: &[Fp8], dst: &mut [f32]) {
        let n16 = src.len() / 16 * 16;
        let (low7, sign) = (_mm256_set1_epi16(0x3F80), _mm256_set1_epi16(i16::MIN));
        let factor = _mm256_set1_ps(crate::quant::fp8::F16_FACTOR);
        for i in (0..n16).step_by(16) {
            // SAFETY: i + 16 <= len of both slices (equal lengths); unaligned loads and stores.
            unsafe {
                let codes = _mm_loadu_si128(src.as_ptr().add(i).cast());
                let s = _mm256_cvtepi8_epi16(codes);
                let h = _mm256_or_si256(
                    _mm256_and_si256(_mm256_slli_epi16(s, 7), low7),
                    _mm256_and_si256(s, sign),
                );
                let a = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), factor);
                let b = _mm256_mul_ps(_mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), factor);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), a);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i + 8), b);
            }
        }
        Fp8::decode_into(false, &src[n16..], &mut dst[n16..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<E: KvElement>(simd: bool, x: &[f32]) -> Vec<f32> {
        let e: Vec<E> = x.iter().map(|&v| E::encode(v)).collect();
        let mut out = vec![0f32; x.len()];
        E::decode_into(simd, &e, &mut out);
        out
    }

    /// Every element type, SIMD and portable decode, odd lengths (chunk tails): within the
    /// type's rounding of the input.
    #[test]
    fn encode_decode_within_rounding() {
        let x: Vec<f32> =
            (0..103).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173 * (i as f32 * 0.4).sin()).collect();
        for simd in [false, simd_available()] {
            assert_eq!(round_trip::<f32>(simd, &x), x);
            for (name, got, rel) in [
                ("f16", round_trip::<f16>(simd, &x), 2f32.powi(-11)),
                ("bf16", round_trip::<bf16>(simd, &x), 2f32.powi(-8)),
                ("fp8", round_trip::<Fp8>(simd, &x), 2f32.powi(-4)),
            ] {
                for (a, b) in got.iter().zip(&x) {
                    assert!((a - b).abs() <= b.abs() * rel + 2f32.powi(-9), "{name} simd={simd}: {b} -> {a}");
                }
            }
        }
        // every fp8 code decodes the same on both paths
        let codes: Vec<Fp8> = (0..=255u8).filter(|c| c & 0x7F != 0x7F).map(Fp8).collect();
        let (mut a, mut b) = (vec![0f32; codes.len()], vec![0f32; codes.len()]);
        Fp8::decode_into(false, &codes, &mut a);
        Fp8::decode_into(simd_available(), &codes, &mut b);
        assert_eq!(a, b);
        // fp8 saturates instead of overflowing
        assert_eq!(round_trip::<Fp8>(false, &[1e6, -1e6]), vec![448.0, -448.0]);
    }
}
