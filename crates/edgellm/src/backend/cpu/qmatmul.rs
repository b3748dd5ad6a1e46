//! Decode-time matmul over int8 / int4 weights (`quant::int8`, `quant::int4`): each activation
//! row is quantized to int8 in blocks of [`QK`] = 32 (symmetric, one f32 scale per block, like
//! llama.cpp's q8_0), then every output is an integer dot product scaled per block.
//!
//! - int8 weights: `Σ_b xs_b · Σ_{i∈b} xq_i·wq_i`, times the row's scale.
//! - int4 weights are stored biased (`u = w + 8`, unsigned), which is what the unsigned×signed
//!   instructions want: `Σ u·x = Σ w·x + 8·Σ x`, and the activation block sums `Σ x` are
//!   computed once per call (`gsum`, per weight group) and subtracted per row.
//!
//! Instruction sets ([`QLevel`]), chosen at run time: AVX-512 VNNI (`vpdpbusd`, 64 bytes per
//! instruction; int8 weights use |x| and x's sign moved onto w), AVX2 (`vpmaddubsw` +
//! `vpmaddwd`, the same sign trick), on aarch64 NEON (`smull`/`sadalp` on every CPU, `sdot`
//! where the dotprod extension exists; CI runs these under qemu), and a portable scalar fallback
//! that is also the reference the SIMD levels are tested against. Work is split over chunks of weight rows with rayon, as in
//! `matmul`.
//!
//! At the VNNI level the kernels are register tiles (`tile_i8_vnni`, `tile_i4_vnni`): 4
//! activation rows × 4 weight rows per inner loop, each weight vector loaded (and, for int4,
//! unpacked) once for the 4 activation rows. They serve every row count — prefill too: at
//! 128×9728×896 they are 1.4× faster than dequantizing for the f32 GEMM (BENCHMARKS.md) —
//! while the other levels hand 32 rows and more to the dequantized GEMM.
//!
//! The quantized activations live in a per-thread buffer that grows at first use and is
//! reused, so a warm decode step does not allocate.

use std::cell::RefCell;

use super::matmul::{run_tiles, store_tile, Matrix, MatrixData, Tile, TileAt};
use crate::quant::int8;

/// Activation quantization block (elements per activation scale).
pub const QK: usize = 32;

/// Instruction set of the quantized dot products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QLevel {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512 F/BW + VNNI (x86-64).
    Avx512Vnni,
    /// NEON widening multiplies (every aarch64 CPU).
    Neon,
    /// NEON `sdot`, the dotprod extension (aarch64: Cortex-A76/A78 and later, e.g. Jetson Orin).
    NeonDotprod,
}

impl QLevel {
    /// Every level; within one architecture, fastest last.
    pub const ALL: [QLevel; 5] =
        [QLevel::Scalar, QLevel::Avx2, QLevel::Avx512Vnni, QLevel::Neon, QLevel::NeonDotprod];

    /// Whether this CPU can run the level.
    pub fn supported(self) -> bool {
        match self {
            QLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            QLevel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            QLevel::Avx512Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && QLevel::Avx2.supported()
            }
            #[cfg(target_arch = "aarch64")]
            QLevel::Neon => true,
            #[cfg(target_arch = "aarch64")]
            QLevel::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            _ => false,
        }
    }

    /// The fastest supported level (detected once).
    pub fn best() -> QLevel {
        use std::sync::OnceLock;
        static BEST: OnceLock<QLevel> = OnceLock::new();
        *BEST.get_or_init(|| QLevel::ALL.into_iter().rev().find(|l| l.supported()).unwrap_or(QLevel::Scalar))
    }
}

/// `m` activation rows quantized to int8 in blocks of [`QK`].
#[derive(Default)]
struct QActs {
    k: usize,
    group: usize,
    q: Vec<i8>,       // [m, k]
    qu: Vec<u8>,      // [m, k]: q + 128, the unsigned operand of `vpdpbusd` against int8 weights
    scale: Vec<f32>,  // [m, k / QK]
    scale8: Vec<f32>, // [m, k / QK * 8]: each block's scale repeated for the 8 i32 lanes of its sums
    gsum: Vec<f32>,   // [m, k / group]: Σ_{b∈g} scale_b · Σ_{i∈b} q_i (int4 bias correction)
}

/// One quantized activation row.
#[derive(Clone, Copy)]
struct ActRow<'a> {
    q: &'a [i8],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // x86 kernels only
    qu: &'a [u8],
    scale: &'a [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // x86 kernels only
    scale8: &'a [f32],
    gsum: &'a [f32],
}

impl QActs {
    /// Quantizes `x: [m, k]`; `group` > 0 also computes the per-group sums int4 needs. Grows the
    /// buffers only when `m · k` exceeds what they held before.
    fn quantize(&mut self, x: &[f32], m: usize, k: usize, group: usize) {
        debug_assert_eq!(k % QK, 0);
        let nb = k / QK;
        let ng = k.checked_div(group).unwrap_or(0);
        (self.k, self.group) = (k, group);
        self.q.resize(m * k, 0);
        self.qu.resize(if group == 0 { m * k } else { 0 }, 0);
        self.scale.resize(m * nb, 0.0);
        self.scale8.resize(m * nb * 8, 0.0);
        self.gsum.resize(m * ng, 0.0);
        for b in 0..m * nb {
            let s = int8::quantize_into(&x[b * QK..(b + 1) * QK], &mut self.q[b * QK..(b + 1) * QK]);
            self.scale[b] = s;
            self.scale8[b * 8..b * 8 + 8].fill(s);
        }
        for (u, &q) in self.qu.iter_mut().zip(&self.q) {
            *u = (q as u8) ^ 0x80;
        }
        for g in 0..m * ng {
            let bpg = group / QK;
            self.gsum[g] = (g * bpg..(g + 1) * bpg)
                .map(|b| {
                    let sum: i32 = self.q[b * QK..(b + 1) * QK].iter().map(|&v| v as i32).sum();
                    sum as f32 * self.scale[b]
                })
                .sum();
        }
    }

    fn row(&self, i: usize) -> ActRow<'_> {
        let (k, nb) = (self.k, self.k / QK);
        let ng = k.checked_div(self.group).unwrap_or(0);
        ActRow {
            q: &self.q[i * k..(i + 1) * k],
            qu: self.qu.get(i * k..(i + 1) * k).unwrap_or(&[]),
            scale: &self.scale[i * nb..(i + 1) * nb],
            scale8: &self.scale8[i * nb * 8..(i + 1) * nb * 8],
            gsum: &self.gsum[i * ng..(i + 1) * ng],
        }
    }
}

thread_local! {
    static ACTS: RefCell<QActs> = RefCell::new(QActs::default());
}

/// `out[m, w.rows] = x[m, w.cols] · wᵀ` for an int8 or int4 `w`, at the best level.
pub(crate) fn matmul_quant(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    matmul_quant_at(QLevel::best(), x, m, w, out)
}

/// [`matmul_quant`] at a given level (which the CPU must support).
pub fn matmul_quant_at(level: QLevel, x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    assert!(level.supported(), "{level:?} is not supported by this CPU");
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul: x is not [m, cols]");
    assert_eq!(out.len(), m * n, "matmul: out is not [m, rows]");
    let group = match w.data {
        MatrixData::Int4 { group, .. } => group,
        MatrixData::Int8 { .. } => 0,
        _ => panic!("matmul_quant: weights are not quantized"),
    };
    // taken out of the thread-local (not borrowed) so a nested call on this thread, from a task
    // rayon steals while we wait, cannot hit a held borrow
    let mut acts = ACTS.with(|a| std::mem::take(&mut *a.borrow_mut()));
    acts.quantize(x, m, k, group);
    run_tiles::<_, QUANT_NR>(&QuantTiles { level, acts: &acts, w }, m, n, out);
    ACTS.with(|a| *a.borrow_mut() = acts);
}

/// Weight rows per quantized tile: 4 × 4 accumulators and the 4 weight vectors (with their
/// bias terms) fit the 32 AVX-512 registers.
const QUANT_NR: usize = 4;

/// Quantized weights against the quantized activations of one call.
struct QuantTiles<'a> {
    level: QLevel,
    acts: &'a QActs,
    w: &'a Matrix,
}

impl Tile for QuantTiles<'_> {
    unsafe fn tile<const MR: usize, const NR: usize>(&self, at: TileAt) {
        let (k, i0, j0) = (self.w.cols, at.i0, at.j0);
        let a: [ActRow; MR] = std::array::from_fn(|i| self.acts.row(i0 + i));
        let vals: [[f32; NR]; MR] = match (&self.w.data, self.level) {
            #[cfg(target_arch = "x86_64")]
            (MatrixData::Int8 { q, scales }, QLevel::Avx512Vnni) if MR > 1 => {
                let w = std::array::from_fn(|r| &q[(j0 + r) * k..(j0 + r + 1) * k]);
                // SAFETY: `matmul_quant_at` checked the level; rows are k long, k a multiple of QK.
                let v: [[f32; NR]; MR] = unsafe { x86::tile_i8_vnni(a, w) };
                std::array::from_fn(|i| std::array::from_fn(|r| v[i][r] * scales[j0 + r]))
            }
            #[cfg(target_arch = "x86_64")]
            (MatrixData::Int4 { q, scales, group }, QLevel::Avx512Vnni) if MR > 1 => {
                let ng = k / group;
                let w = std::array::from_fn(|r| &q[(j0 + r) * k / 2..(j0 + r + 1) * k / 2]);
                let ws = std::array::from_fn(|r| &scales[(j0 + r) * ng..(j0 + r + 1) * ng]);
                // SAFETY: as above; `int4::fits` made the group a multiple of 64 dividing k.
                unsafe { x86::tile_i4_vnni(a, w, ws, *group) }
            }
            // the other levels, and single activation rows (decode at batch 1: the per-row
            // VNNI dot beats a 1 × 4 tile on the bias correction it skips), take one dot
            // product per output
            (MatrixData::Int8 { q, scales }, level) => std::array::from_fn(|i| {
                std::array::from_fn(|r| {
                    scales[j0 + r] * dot_i8(level, a[i], &q[(j0 + r) * k..(j0 + r + 1) * k])
                })
            }),
            (MatrixData::Int4 { q, scales, group }, level) => {
                let ng = k / group;
                std::array::from_fn(|i| {
                    std::array::from_fn(|r| {
                        let j = j0 + r;
                        dot_i4(
                            level,
                            a[i],
                            &q[j * k / 2..(j + 1) * k / 2],
                            &scales[j * ng..(j + 1) * ng],
                            *group,
                        )
                    })
                })
            }
            _ => unreachable!("matmul_quant_at checks the format"),
        };
        // SAFETY: forwarded from the caller.
        unsafe { store_tile(vals, at) }
    }
}

/// `Σ_b scale_b · Σ_{i∈b} x_i · w_i` (the weight row's scale is applied by the caller).
fn dot_i8(level: QLevel, a: ActRow, w: &[i8]) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_quant_at` checked that the CPU supports the level's features.
        QLevel::Avx2 => unsafe { x86::dot_i8_avx2(a, w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QLevel::Avx512Vnni => unsafe { x86::dot_i8_vnni(a, w) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        QLevel::Neon => unsafe { neon::dot_i8_neon(a, w) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        QLevel::NeonDotprod => unsafe { neon::dot_i8_sdot(a, w) },
        _ => dot_i8_scalar(a, w),
    }
}

/// One int4 weight row (`cols / 2` bytes, `cols / group` scales) against an activation row.
fn dot_i4(level: QLevel, a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `matmul_quant_at` checked that the CPU supports the level's features.
        QLevel::Avx2 => unsafe { x86::dot_i4_avx2(a, w, ws, group) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        QLevel::Avx512Vnni => unsafe { x86::dot_i4_vnni(a, w, ws, group) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        QLevel::Neon => unsafe { neon::dot_i4_neon(a, w, ws, group) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        QLevel::NeonDotprod => unsafe { neon::dot_i4_sdot(a, w, ws, group) },
        _ => dot_i4_scalar(a, w, ws, group),
    }
}

fn dot_i8_scalar(a: ActRow, w: &[i8]) -> f32 {
    let mut acc = 0f32;
    for (b, (xq, wq)) in a.q.chunks_exact(QK).zip(w.chunks_exact(QK)).enumerate() {
        let s: i32 = xq.iter().zip(wq).map(|(&x, &w)| x as i32 * w as i32).sum();
        acc += s as f32 * a.scale[b];
    }
    acc
}

fn dot_i4_scalar(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
    let mut acc = 0f32;
    for (g, (gw, &s)) in w.chunks_exact(group / 2).zip(ws).enumerate() {
        let mut gacc = 0f32;
        for (c, cw) in gw.chunks_exact(32).enumerate() {
            let base = g * group + c * 64;
            let xq = &a.q[base..base + 64];
            let (mut lo, mut hi) = (0i32, 0i32);
            for i in 0..32 {
                lo += (cw[i] & 15) as i32 * xq[i] as i32;
                hi += (cw[i] >> 4) as i32 * xq[i + 32] as i32;
            }
            let b = base / QK;
            gacc += lo as f32 * a.scale[b] + hi as f32 * a.scale[b + 1];
        }
        acc += s * (gacc - 8.0 * a.gsum[g]);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::simd::x86::hsum as hsum256;
    use super::{ActRow, QK};
    use std::arch::x86_64::*;

    /// The 8 partial sums of one 32-element int8 block, as f32.
    ///
    /// # Safety
    /// `x` and `w` must be valid for reading 32 bytes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block_i8_avx2(x: *const i8, w: *const i8) -> __m256 {
        // SAFETY: the caller guarantees 32 readable bytes at each pointer (unaligned loads).
        let (x, w) = unsafe { (_mm256_loadu_si256(x.cast()), _mm256_loadu_si256(w.cast())) };
        // |x| · (w with x's sign) = x · w; |x| ≤ 127 and w ≠ -128, so pairs fit in i16
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `w.len() == a.q.len()`, a multiple of [`QK`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i8_avx2(a: ActRow, w: &[i8]) -> f32 {
        debug_assert_eq!(w.len(), a.q.len());
        let nb = w.len() / QK;
        let (xp, wp) = (a.q.as_ptr(), w.as_ptr());
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            // SAFETY: blocks b and b + 1 lie within both slices (b + 2 ≤ nb).
            let (p0, p1) = unsafe {
                (
                    block_i8_avx2(xp.add(b * QK), wp.add(b * QK)),
                    block_i8_avx2(xp.add((b + 1) * QK), wp.add((b + 1) * QK)),
                )
            };
            acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(a.scale[b]), acc0);
            acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(a.scale[b + 1]), acc1);
            b += 2;
        }
        if b < nb {
            // SAFETY: block b lies within both slices.
            let p = unsafe { block_i8_avx2(xp.add(b * QK), wp.add(b * QK)) };
            acc0 = _mm256_fmadd_ps(p, _mm256_set1_ps(a.scale[b]), acc0);
        }
        hsum256(_mm256_add_ps(acc0, acc1))
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `w.len() * 2 == a.q.len()`, `ws.len() * group == a.q.len()`,
    /// `group` a multiple of 64.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_i4_avx2(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
        debug_assert_eq!(w.len() * 2, a.q.len());
        debug_assert_eq!(ws.len() * group, a.q.len());
        let (xp, wp) = (a.q.as_ptr(), w.as_ptr());
        let (nibble, ones) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi16(1));
        let mut acc = _mm256_setzero_ps();
        let mut corr = 0f32;
        for (g, &s) in ws.iter().enumerate() {
            let (mut g0, mut g1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for c in 0..group / 64 {
                let e = g * group + c * 64;
                // SAFETY: e + 64 ≤ a.q.len() and e / 2 + 32 ≤ w.len() by the length contract.
                let (bytes, x0, x1) = unsafe {
                    (
                        _mm256_loadu_si256(wp.add(e / 2).cast()),
                        _mm256_loadu_si256(xp.add(e).cast()),
                        _mm256_loadu_si256(xp.add(e + 32).cast()),
                    )
                };
                let lo = _mm256_and_si256(bytes, nibble);
                let hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 4), nibble);
                // u ≤ 15 and |x| ≤ 127: pairs fit in i16
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x1), ones);
                g0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_set1_ps(a.scale[e / QK]), g0);
                g1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_set1_ps(a.scale[e / QK + 1]), g1);
            }
            acc = _mm256_fmadd_ps(_mm256_add_ps(g0, g1), _mm256_set1_ps(s), acc);
            corr += s * a.gsum[g];
        }
        hsum256(acc) - 8.0 * corr
    }

    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; `w.len() == a.q.len()`, a multiple of [`QK`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_i8_vnni(a: ActRow, w: &[i8]) -> f32 {
        debug_assert_eq!(w.len(), a.q.len());
        let n = w.len();
        let (xp, wp, sp) = (a.q.as_ptr(), w.as_ptr(), a.scale8.as_ptr());
        let zero = _mm512_setzero_si512();
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut e = 0;
        while e + 64 <= n {
            // SAFETY: e + 64 ≤ n = both slices' length; scale8 holds 8 floats per 32 elements,
            // so e / 4 + 16 ≤ its length.
            let (x, wv, sc) = unsafe {
                (
                    _mm512_loadu_si512(xp.add(e).cast()),
                    _mm512_loadu_si512(wp.add(e).cast()),
                    _mm512_loadu_ps(sp.add(e / 4)),
                )
            };
            // |x| (unsigned) · (w negated where x < 0) = x · w; w ≠ -128
            let sw = _mm512_mask_sub_epi8(wv, _mm512_movepi8_mask(x), zero, wv);
            let d = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(x), sw);
            let slot = &mut acc[(e / 64) & 1];
            *slot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, *slot);
            e += 64;
        }
        let mut r = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
        if e < n {
            // one block of 32 left
            let s: i32 = a.q[e..].iter().zip(&w[e..]).map(|(&x, &w)| x as i32 * w as i32).sum();
            r += s as f32 * a.scale[e / QK];
        }
        r
    }

    /// `MR` activation rows against `NR` int8 weight rows (row scales applied by the caller).
    /// The unsigned operand is the biased activation `x + 128`; its excess `128 · Σw` is
    /// computed once per weight vector (`vpdpbusd` against ones) and seeds every accumulator
    /// of that weight row, so the inner step is one `vpdpbusd`, a convert and an FMA per
    /// (activation row, weight row) — no per-row sign fix-up as in [`dot_i8_vnni`].
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; every `a[i].qu` and `w[r]` has the same length, a
    /// multiple of [`QK`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_i8_vnni<const MR: usize, const NR: usize>(
        a: [ActRow; MR],
        w: [&[i8]; NR],
    ) -> [[f32; NR]; MR] {
        let k = w[0].len();
        debug_assert!(
            k.is_multiple_of(QK) && a.iter().all(|a| a.qu.len() == k) && w.iter().all(|w| w.len() == k)
        );
        let (zero, ones) = (_mm512_setzero_si512(), _mm512_set1_epi8(1));
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        let mut e = 0;
        while e < k {
            // 64 elements (two activation blocks) per step; the last step may hold one block
            let (bytes, lanes): (u64, u16) = if e + 64 <= k { (!0, !0) } else { (u32::MAX as u64, 0xFF) };
            let mut wv = [zero; NR];
            let mut bias = [zero; NR];
            for r in 0..NR {
                // SAFETY: the mask covers only elements below k (the row length).
                wv[r] = unsafe { _mm512_maskz_loadu_epi8(bytes, w[r].as_ptr().add(e).cast()) };
                bias[r] =
                    _mm512_sub_epi32(zero, _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, wv[r]), 7));
            }
            for i in 0..MR {
                // SAFETY: as above; scale8 holds 8 floats per 32 elements, and the lane mask
                // covers those of the blocks below k.
                let (x, sc) = unsafe {
                    (
                        _mm512_maskz_loadu_epi8(bytes, a[i].qu.as_ptr().add(e).cast()),
                        _mm512_maskz_loadu_ps(lanes, a[i].scale8.as_ptr().add(e / 4)),
                    )
                };
                for r in 0..NR {
                    let d = _mm512_dpbusd_epi32(bias[r], x, wv[r]);
                    acc[i][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), sc, acc[i][r]);
                }
            }
            e += 64;
        }
        std::array::from_fn(|i| std::array::from_fn(|r| _mm512_reduce_add_ps(acc[i][r])))
    }

    /// `MR` activation rows against `NR` int4 weight rows, scales and bias correction included
    /// (see [`dot_i4_vnni`] for the nibble layout): each 32-byte weight chunk is unpacked once
    /// for all `MR` activation rows.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; for every row `w[r].len() * 2 == a[i].q.len()` and
    /// `ws[r].len() * group == a[i].q.len()`, `group` a multiple of 64.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn tile_i4_vnni<const MR: usize, const NR: usize>(
        a: [ActRow; MR],
        w: [&[u8]; NR],
        ws: [&[f32]; NR],
        group: usize,
    ) -> [[f32; NR]; MR] {
        let k = a[0].q.len();
        debug_assert!(a.iter().all(|a| a.q.len() == k) && w.iter().all(|w| w.len() * 2 == k));
        debug_assert!(ws.iter().all(|s| s.len() * group == k) && group.is_multiple_of(64));
        let zero = _mm512_setzero_si512();
        let nibble = _mm512_set1_epi8(0x0F);
        let shifts = _mm512_inserti64x4(zero, _mm256_set1_epi16(4), 1);
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        for g in 0..k / group {
            let sv: [__m512; NR] = std::array::from_fn(|r| _mm512_set1_ps(ws[r][g]));
            for c in 0..group / 64 {
                let e = g * group + c * 64;
                let mut u = [zero; NR];
                for r in 0..NR {
                    // SAFETY: e / 2 + 32 ≤ k / 2, the weight row's length.
                    let bytes = unsafe {
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(w[r].as_ptr().add(e / 2).cast()))
                    };
                    u[r] = _mm512_and_si512(_mm512_srlv_epi16(bytes, shifts), nibble);
                }
                for i in 0..MR {
                    // SAFETY: e + 64 ≤ k; scale8 holds 8 floats per 32 elements.
                    let (x, sc) = unsafe {
                        (
                            _mm512_loadu_si512(a[i].q.as_ptr().add(e).cast()),
                            _mm512_loadu_ps(a[i].scale8.as_ptr().add(e / 4)),
                        )
                    };
                    for r in 0..NR {
                        let d = _mm512_dpbusd_epi32(zero, u[r], x);
                        acc[i][r] =
                            _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sc, sv[r]), acc[i][r]);
                    }
                }
            }
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|r| {
                let corr: f32 = ws[r].iter().zip(a[i].gsum).map(|(s, g)| s * g).sum();
                _mm512_reduce_add_ps(acc[i][r]) - 8.0 * corr
            })
        })
    }

    /// # Safety
    /// The CPU supports AVX-512 F/BW/VNNI; `w.len() * 2 == a.q.len()`,
    /// `ws.len() * group == a.q.len()`, `group` a multiple of 64.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_i4_vnni(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
        debug_assert_eq!(w.len() * 2, a.q.len());
        debug_assert_eq!(ws.len() * group, a.q.len());
        let (xp, wp, sp) = (a.q.as_ptr(), w.as_ptr(), a.scale8.as_ptr());
        let zero = _mm512_setzero_si512();
        let nibble = _mm512_set1_epi8(0x0F);
        // shift the upper copy of the 32 bytes by 4: low nibbles (elements 0..32) in the lower
        // half, high nibbles (elements 32..64) in the upper half
        let shifts = _mm512_inserti64x4(zero, _mm256_set1_epi16(4), 1);
        let mut acc = [_mm512_setzero_ps(); 2];
        let mut corr = 0f32;
        for (g, &s) in ws.iter().enumerate() {
            let sv = _mm512_set1_ps(s);
            for c in 0..group / 64 {
                let e = g * group + c * 64;
                // SAFETY: e + 64 ≤ a.q.len(), e / 2 + 32 ≤ w.len() by the length contract, and
                // scale8 holds 8 floats per 32 elements, so e / 4 + 16 ≤ its length.
                let (bytes, x, sc) = unsafe {
                    (
                        _mm512_broadcast_i64x4(_mm256_loadu_si256(wp.add(e / 2).cast())),
                        _mm512_loadu_si512(xp.add(e).cast()),
                        _mm512_loadu_ps(sp.add(e / 4)),
                    )
                };
                let u = _mm512_and_si512(_mm512_srlv_epi16(bytes, shifts), nibble);
                let d = _mm512_dpbusd_epi32(zero, u, x);
                let slot = &mut acc[c & 1];
                *slot = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(sc, sv), *slot);
            }
            corr += s * a.gsum[g];
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1])) - 8.0 * corr
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! NEON int8 dot products. Every aarch64 CPU has NEON (`smull` + pairwise accumulate); the
    //! `dotprod` extension (Cortex-A76/A78 and later, so Jetson Orin) adds `sdot`, four int8
    //! products summed into each i32 lane. `vdotq_s32` is still unstable in Rust, hence the
    //! one-instruction `asm!`.
    use super::{ActRow, QK};
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// How one 16-byte int8 × int8 product is summed into four i32 lanes.
    trait Dot16 {
        /// # Safety
        /// The CPU supports the implementation's instructions.
        unsafe fn dot16(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t;
    }

    /// Baseline NEON: widening multiplies, pairwise-added into the lanes.
    struct Widening;
    impl Dot16 for Widening {
        #[inline(always)]
        unsafe fn dot16(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
            // SAFETY: NEON is part of every aarch64 target. |x|, |w| ≤ 127 (int8) or w ≤ 15
            // (int4 nibbles), so each pair of products fits in an i16 lane.
            unsafe {
                let lo = vmull_s8(vget_low_s8(x), vget_low_s8(w));
                vpadalq_s16(acc, vmlal_high_s8(lo, x, w))
            }
        }
    }

    /// `sdot` (the dotprod extension).
    struct Sdot;
    impl Dot16 for Sdot {
        #[inline(always)]
        unsafe fn dot16(mut acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
            // SAFETY: register-only instruction; the caller's target features include dotprod.
            unsafe {
                asm!("sdot {acc:v}.4s, {x:v}.16b, {w:v}.16b",
                    acc = inout(vreg) acc, x = in(vreg) x, w = in(vreg) w,
                    options(pure, nomem, nostack));
            }
            acc
        }
    }

    /// # Safety
    /// `D`'s instructions are supported; `w.len() == a.q.len()`, a multiple of [`QK`].
    #[inline(always)]
    unsafe fn dot_i8<D: Dot16>(a: ActRow, w: &[i8]) -> f32 {
        // SAFETY: NEON is part of every aarch64 target; loads as commented below.
        unsafe {
            debug_assert_eq!(w.len(), a.q.len());
            let (xp, wp) = (a.q.as_ptr(), w.as_ptr());
            let mut acc = vdupq_n_f32(0.0);
            for (b, &s) in a.scale.iter().enumerate() {
                let e = b * QK;
                // in bounds: e + 32 ≤ len for both rows by the length contract
                let d = {
                    let d = D::dot16(vdupq_n_s32(0), vld1q_s8(xp.add(e)), vld1q_s8(wp.add(e)));
                    D::dot16(d, vld1q_s8(xp.add(e + 16)), vld1q_s8(wp.add(e + 16)))
                };
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(d), s);
            }
            vaddvq_f32(acc)
        }
    }

    /// # Safety
    /// `D`'s instructions are supported; `w.len() * 2 == a.q.len()`, `ws.len() * group ==
    /// a.q.len()`, `group` a multiple of 64.
    #[inline(always)]
    unsafe fn dot_i4<D: Dot16>(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
        // SAFETY: NEON is part of every aarch64 target; loads as commented below.
        unsafe {
            debug_assert_eq!(w.len() * 2, a.q.len());
            debug_assert_eq!(ws.len() * group, a.q.len());
            let (xp, wp) = (a.q.as_ptr(), w.as_ptr());
            let nibble = vdupq_n_u8(0x0F);
            let mut acc = vdupq_n_f32(0.0);
            let mut corr = 0f32;
            for (g, &s) in ws.iter().enumerate() {
                let mut gacc = vdupq_n_f32(0.0);
                for c in 0..group / 64 {
                    let e = g * group + c * 64;
                    // in bounds: e + 64 ≤ a.q.len() and e / 2 + 32 ≤ w.len() by the length contract.
                    // The 32 bytes hold elements e..e+32 in their low nibbles and e+32..e+64 in the
                    // high ones (quant::int4's packing); values 0..=15 read as i8 unchanged.
                    let (lo, hi) = {
                        let (b0, b1) = (vld1q_u8(wp.add(e / 2)), vld1q_u8(wp.add(e / 2 + 16)));
                        let lo = D::dot16(
                            D::dot16(
                                vdupq_n_s32(0),
                                vld1q_s8(xp.add(e)),
                                vreinterpretq_s8_u8(vandq_u8(b0, nibble)),
                            ),
                            vld1q_s8(xp.add(e + 16)),
                            vreinterpretq_s8_u8(vandq_u8(b1, nibble)),
                        );
                        let hi = D::dot16(
                            D::dot16(
                                vdupq_n_s32(0),
                                vld1q_s8(xp.add(e + 32)),
                                vreinterpretq_s8_u8(vshrq_n_u8(b0, 4)),
                            ),
                            vld1q_s8(xp.add(e + 48)),
                            vreinterpretq_s8_u8(vshrq_n_u8(b1, 4)),
                        );
                        (lo, hi)
                    };
                    gacc = vfmaq_n_f32(gacc, vcvtq_f32_s32(lo), a.scale[e / QK]);
                    gacc = vfmaq_n_f32(gacc, vcvtq_f32_s32(hi), a.scale[e / QK + 1]);
                }
                acc = vfmaq_n_f32(acc, gacc, s);
                corr += s * a.gsum[g];
            }
            vaddvq_f32(acc) - 8.0 * corr
        }
    }

    /// # Safety
    /// As [`dot_i8`]; NEON is part of every aarch64 target.
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_i8_neon(a: ActRow, w: &[i8]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot_i8::<Widening>(a, w) }
    }

    /// # Safety
    /// As [`dot_i8`], and the CPU supports dotprod.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn dot_i8_sdot(a: ActRow, w: &[i8]) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot_i8::<Sdot>(a, w) }
    }

    /// # Safety
    /// As [`dot_i4`].
    #[target_feature(enable = "neon")]
    pub(super) unsafe fn dot_i4_neon(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot_i4::<Widening>(a, w, ws, group) }
    }

    /// # Safety
    /// As [`dot_i4`], and the CPU supports dotprod.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn dot_i4_sdot(a: ActRow, w: &[u8], ws: &[f32], group: usize) -> f32 {
        // SAFETY: forwarded contract.
        unsafe { dot_i4::<Sdot>(a, w, ws, group) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::WeightFormat;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand::rngs::StdRng) -> Vec<f32> {
        // mostly small values with a few outliers, as in real activations and weights
        (0..n)
            .map(|_| if rng.gen_bool(0.01) { rng.gen_range(-8.0..8.0) } else { rng.gen_range(-1.0..1.0) })
            .collect()
    }

    /// The f32 reference: the dequantized weights times the unquantized activations (f64 sums),
    /// and the bound activation quantization puts on the difference:
    /// `Σ_b (xs_b / 2) · Σ_{i∈b} |ŵ_i|`, since each activation moves by at most half its block's step.
    fn reference(x: &[f32], m: usize, w: &Matrix) -> (Vec<f32>, Vec<f32>) {
        let (n, k) = (w.rows, w.cols);
        let (mut want, mut bound) = (vec![0f32; m * n], vec![0f32; m * n]);
        let mut row = vec![0f32; k];
        for j in 0..n {
            w.row_into(j, &mut row);
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                want[i * n + j] = xi.iter().zip(&row).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() as f32;
                bound[i * n + j] = xi
                    .chunks_exact(QK)
                    .zip(row.chunks_exact(QK))
                    .map(|(xb, wb)| {
                        let half_step = xb.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 / 2.0;
                        half_step * wb.iter().map(|v| v.abs()).sum::<f32>()
                    })
                    .sum();
            }
        }
        (want, bound)
    }

    const FORMATS: [WeightFormat; 3] =
        [WeightFormat::Int8, WeightFormat::Int4 { group: 64 }, WeightFormat::Int4 { group: 128 }];

    #[test]
    fn every_level_within_the_activation_quantization_bound() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let levels: Vec<QLevel> = QLevel::ALL.into_iter().filter(|l| l.supported()).collect();
        eprintln!("testing levels {levels:?}");
        // m and n across the tile sizes and their tails; k with an odd number of 32-blocks
        for (m, n, k) in [
            (1, 37, 128),
            (3, 20, 256),
            (7, 33, 896),
            (2, 5, 96),
            (12, 19, 256),
            (4, 8, 160),
            (31, 13, 384),
            (17, 4, 128),
            (33, 9, 64),
        ] {
            let x = random(m * k, &mut rng);
            let wf = random(n * k, &mut rng);
            for format in FORMATS {
                let w = Matrix::from_f32(n, k, wf.clone()).converted(format);
                let (want, bound) = reference(&x, m, &w);
                let mut scalar = vec![0f32; m * n];
                matmul_quant_at(QLevel::Scalar, &x, m, &w, &mut scalar);
                for &level in &levels {
                    let mut out = vec![0f32; m * n];
                    matmul_quant_at(level, &x, m, &w, &mut out);
                    for e in 0..m * n {
                        // float rounding of k products on top of the quantization bound
                        let slack = 1e-5 * k as f32 * (1.0 + want[e].abs());
                        let err = (out[e] - want[e]).abs();
                        assert!(
                            err <= bound[e] + slack,
                            "{level:?} {format} {m}x{n}x{k} [{e}]: {} vs {} (err {err}, bound {})",
                            out[e],
                            want[e],
                            bound[e]
                        );
                        // the same integer sums: levels differ from scalar only by f32 rounding
                        assert!((out[e] - scalar[e]).abs() <= slack, "{level:?} vs scalar {format} [{e}]");
                    }
                }
            }
        }
    }

    #[test]
    fn prefill_rows_match_the_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // from 32 rows on: the VNNI tiles where the CPU has them (activations quantized, so
        // within the quantization bound), else the dequantized weights through the f32 GEMM
        let (m, n, k) = (70, 1030, 128);
        let x = random(m * k, &mut rng);
        let wf = random(n * k, &mut rng);
        for format in FORMATS {
            let w = Matrix::from_f32(n, k, wf.clone()).converted(format);
            let (want, bound) = reference(&x, m, &w);
            let mut out = vec![0f32; m * n];
            super::super::matmul(&x, m, &w, &mut out);
            for e in 0..m * n {
                let err = (out[e] - want[e]).abs();
                assert!(
                    err <= bound[e] + 1e-3 * (1.0 + want[e].abs()),
                    "{format} [{e}]: {} vs {}",
                    out[e],
                    want[e]
                );
            }
        }
    }

    #[test]
    fn unfit_shapes_fall_back() {
        let w = Matrix::from_f32(2, 96, vec![0.5; 192]).converted(WeightFormat::INT4);
        assert!(matches!(w.data, MatrixData::Int8 { .. }), "96 columns do not hold a group of 128");
        let w = Matrix::from_f32(2, 40, vec![0.5; 80]).converted(WeightFormat::Int8);
        assert!(matches!(w.data, MatrixData::BF16(_)), "40 columns are not whole activation blocks");
    }
}
