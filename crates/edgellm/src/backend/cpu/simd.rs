//! Dot products, the inner loop of every matmul and attention score. One generic body is
//! compiled twice: for the baseline target and with AVX2+FMA enabled, chosen once at run time.
//! Eight independent accumulators let the compiler keep a full vector pipeline busy.

use half::{bf16, f16};

/// A weight element type the dot kernels read: converted to f32 in registers.
pub trait Element: Copy + Send + Sync {
    /// The value as f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

const LANES: usize = 16;

#[inline(always)]
fn dot_generic<W: Element>(x: &[f32], w: &[W]) -> f32 {
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
mod x86 {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<W: Element>(x: &[f32], w: &[W]) -> f32 {
        dot_generic(x, w)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
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

/// `y[i] += a · x[i]` (the accumulate step of attention's weighted value sum).
#[inline]
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
}
