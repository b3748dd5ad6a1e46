//! Dot products, the inner loop of every matmul and attention score. One generic body is
//! compiled twice: for the baseline target and with AVX2+FMA enabled, chosen once at run time.
//! Eight independent accumulators let the compiler keep a full vector pipeline busy.
//!
//! [`dot_tile`] is the few-rows matmul kernel: `MR` activation rows against `NR` weight rows,
//! `MR × NR` accumulators in registers, so each weight element is loaded (and widened) once for
//! all `MR` activation rows instead of once per row.

use half::{bf16, f16};

/// Storage formats of [`Element`], which the SIMD kernels switch on (at compile time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementKind {
    /// IEEE single.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
}

/// A weight element type the dot kernels read: converted to f32 in registers.
pub trait Element: Copy + Send + Sync {
    /// The storage format.
    const KIND: ElementKind;
    /// The value as f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    const KIND: ElementKind = ElementKind::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    const KIND: ElementKind = ElementKind::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl Element for f16 {
    const KIND: ElementKind = ElementKind::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

const LANES: usize = 16;

/// The dot product body, inlined into the caller so that a caller compiled with wider vector
/// features (attention's `target_feature` functions) vectorizes it with them.
#[inline(always)]
pub(crate) fn dot_generic<W: Element>(x: &[f32], w: &[W]) -> f32 {
    debug_assert_eq!(x.len(), w.len());
    let mut acc = [0f32; LANES];
    let xc = x.chunks_exact(LANES);
    let wc = w.chunks_exact(LANES);
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for l in 0..LANES {
            acc[l] = xs[l].mul_add(ws[l].to_f32(), acc[l]);
        }
    }
    let mut tail = 0f32;
    for (a, b) in xr.iter().zip(wr) {
        tail = a.mul_add(b.to_f32(), tail);
    }
    reduce(acc) + tail
}

#[inline(always)]
fn reduce(acc: [f32; LANES]) -> f32 {
    let mut v = acc;
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            v[l] += v[l + width];
        }
        width /= 2;
    }
    v[0]
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;

    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<W: Element>(x: &[f32], w: &[W]) -> f32 {
        dot_generic(x, w)
    }

    /// Eight elements at `p` widened to f32.
    ///
    /// # Safety
    /// `p` is valid for reading 8 elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn load8<W: Element>(p: *const W) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements (unaligned loads).
        unsafe {
            match W::KIND {
                ElementKind::F32 => _mm256_loadu_ps(p.cast()),
                // bf16 is the upper half of an f32
                ElementKind::BF16 => _mm256_castsi256_ps(_mm256_slli_epi32(
                    _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
                    16,
                )),
                ElementKind::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            }
        }
    }

    /// The sum of the 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    /// See [`super::dot_tile`]. With `MR · NR` ≤ 12 the accumulators, the `NR` widened weight
    /// vectors and the activation operand fit the 16 ymm registers.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C; every slice has the same length.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_tile<W: Element, const MR: usize, const NR: usize>(
        x: [&[f32]; MR],
        w: [&[W]; NR],
    ) -> [[f32; NR]; MR] {
        let k = w[0].len();
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let mut e = 0;
        while e + 8 <= k {
            let mut wv = [_mm256_setzero_ps(); NR];
            for r in 0..NR {
                // SAFETY: e + 8 ≤ k, the length of every weight row.
                wv[r] = unsafe { load8(w[r].as_ptr().add(e)) };
            }
            for i in 0..MR {
                // SAFETY: e + 8 ≤ k, the length of every activation row.
                let xv = unsafe { _mm256_loadu_ps(x[i].as_ptr().add(e)) };
                for r in 0..NR {
                    acc[i][r] = _mm256_fmadd_ps(xv, wv[r], acc[i][r]);
                }
            }
            e += 8;
        }
        let mut out = [[0f32; NR]; MR];
        for i in 0..MR {
            for r in 0..NR {
                let tail = (e..k).fold(0f32, |s, t| x[i][t].mul_add(w[r][t].to_f32(), s));
                out[i][r] = hsum(acc[i][r]) + tail;
            }
        }
        out
    }
}

/// Whether this CPU has AVX2, FMA and F16C (detected once).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// `Σ x[i]·w[i]`; `x` and `w` have equal lengths.
#[inline]
pub fn dot<W: Element>(x: &[f32], w: &[W]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports every feature the function enables (checked above).
        return unsafe { x86::dot(x, w) };
    }
    dot_generic(x, w)
}

/// `out[i][r] = dot(x[i], w[r])` for `MR` activation rows and `NR` weight rows, all of one
/// length: each weight element is read once for the whole tile.
#[inline]
pub fn dot_tile<W: Element, const MR: usize, const NR: usize>(
    x: [&[f32]; MR],
    w: [&[W]; NR],
) -> [[f32; NR]; MR] {
    let k = w[0].len();
    assert!(x.iter().all(|r| r.len() == k) && w.iter().all(|r| r.len() == k), "dot_tile: row lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports every feature the function enables (checked above), and the
        // lengths are equal (asserted).
        return unsafe { x86::dot_tile(x, w) };
    }
    std::array::from_fn(|i| std::array::from_fn(|r| dot_generic(x[i], w[r])))
}

/// `y[i] += a · x[i]` (the accumulate step of attention's weighted value sum); inlined into
/// the caller like `dot_generic`.
#[inline(always)]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi = a.mul_add(*xi, *yi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_for_all_lengths() {
        for n in [0, 1, 7, 16, 17, 63, 64, 100, 896] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            assert!((dot(&x, &w) - naive).abs() < 1e-4, "n={n}");
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let naive_b: f32 = x.iter().zip(&wb).map(|(a, b)| a * b.to_f32()).sum();
            assert!((dot(&x, &wb) - naive_b).abs() < 1e-4, "bf16 n={n}");
        }
    }

    fn check_tile<W: Element, const MR: usize, const NR: usize>(x: &[Vec<f32>], w: &[Vec<W>]) {
        let xs: [&[f32]; MR] = std::array::from_fn(|i| &x[i][..]);
        let ws: [&[W]; NR] = std::array::from_fn(|r| &w[r][..]);
        let got = dot_tile(xs, ws);
        for i in 0..MR {
            for r in 0..NR {
                let want: f64 = x[i].iter().zip(&w[r]).map(|(&a, b)| a as f64 * b.to_f32() as f64).sum();
                let tol = 1e-5 * (1.0 + x[i].len() as f64);
                assert!((got[i][r] as f64 - want).abs() < tol, "{MR}x{NR} k={} [{i}][{r}]", x[i].len());
            }
        }
    }

    #[test]
    fn dot_tile_matches_naive_for_every_format_and_tail() {
        for k in [1, 7, 8, 9, 31, 64, 100, 896] {
            let x: Vec<Vec<f32>> =
                (0..4).map(|i| (0..k).map(|t| ((t * 3 + i) as f32 * 0.37).sin()).collect()).collect();
            let w: Vec<Vec<f32>> =
                (0..3).map(|r| (0..k).map(|t| ((t + 5 * r) as f32 * 0.11).cos()).collect()).collect();
            let wb: Vec<Vec<bf16>> =
                w.iter().map(|r| r.iter().map(|&v| bf16::from_f32(v)).collect()).collect();
            let wh: Vec<Vec<f16>> = w.iter().map(|r| r.iter().map(|&v| f16::from_f32(v)).collect()).collect();
            check_tile::<f32, 4, 3>(&x, &w);
            check_tile::<f32, 1, 1>(&x, &w);
            check_tile::<f32, 3, 2>(&x, &w);
            check_tile::<bf16, 4, 3>(&x, &wb);
            check_tile::<bf16, 2, 1>(&x, &wb);
            check_tile::<f16, 4, 3>(&x, &wh);
            check_tile::<f16, 1, 3>(&x, &wh);
        }
    }
}
