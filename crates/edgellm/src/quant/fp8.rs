//! fp8 E4M3 (the `float8_e4m3fn` of PyTorch and safetensors' `F8_E4M3`) weights, one f32 scale
//! per output channel.
//!
//! E4M3: 1 sign bit, 4 exponent bits (bias 7), 3 mantissa bits; subnormals at exponent 0, no
//! infinities, `0x7F`/`0xFF` are NaN, largest finite value 448. Layout of a `[rows, cols]`
//! matrix: `q: [rows * cols]` u8 codes, row-major; `scales: [rows]` f32 with
//! `scales[r] = max_c |w[r, c]| / 448`. Element `(r, c)` is `decode(q[r * cols + c]) · scales[r]`.
//!
//! Decoding needs no table: a code's low 7 bits shifted left by 7, with the sign moved to bit 15,
//! are the f16 whose value is exactly the E4M3 value divided by 256 (both formats have 3 mantissa
//! bits after the shift; the exponent biases differ by 8, and E4M3 subnormals land on f16 normals
//! with the same factor). Kernels therefore widen codes with the CPU's f16 conversion and fold
//! the 256 into the row scale ([`F16_FACTOR`]).

/// Largest finite E4M3 value.
pub const MAX: f32 = 448.0;

/// E4M3 value = (f16 from [`to_f16_bits`]) × this.
pub const F16_FACTOR: f32 = 256.0;

/// The f16 bit pattern whose value is `decode(code) / 256` (exact for every finite code).
#[inline]
pub fn to_f16_bits(code: u8) -> u16 {
    (((code & 0x7F) as u16) << 7) | (((code & 0x80) as u16) << 8)
}

/// The value of an E4M3 code (NaN codes decode as NaN).
pub fn decode(code: u8) -> f32 {
    if code & 0x7F == 0x7F {
        return f32::NAN;
    }
    half::f16::from_bits(to_f16_bits(code)).to_f32() * F16_FACTOR
}

/// Every non-negative finite value, indexed by code `0..=0x7E` (increasing).
fn positive_values() -> &'static [f32; 127] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<[f32; 127]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| decode(c as u8)))
}

/// The nearest E4M3 code to `x` (ties to the even code, saturating at ±448).
pub fn encode(x: f32) -> u8 {
    let table = positive_values();
    let a = x.abs().min(MAX);
    let sign = if x.is_sign_negative() && a > 0.0 { 0x80 } else { 0 };
    if a.is_nan() {
        return 0x7F;
    }
    let hi = table.partition_point(|&v| v < a); // first code with value >= a
    let code = if hi == 0 {
        0
    } else {
        let (lo_v, hi_v) = (table[hi - 1], table[hi]);
        let (d_lo, d_hi) = (a - lo_v, hi_v - a);
        if d_lo < d_hi || (d_lo == d_hi && (hi - 1) % 2 == 0) {
            hi - 1
        } else {
            hi
        }
    };
    sign | code as u8
}

/// Quantizes a row-major `[rows, cols]` matrix: `(q, scales)`.
pub fn quantize(w: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(w.len(), rows * cols, "fp8::quantize: data is not [rows, cols]");
    let mut q = vec![0u8; rows * cols];
    let mut scales = vec![0f32; rows];
    for ((row, qr), s) in w.chunks_exact(cols.max(1)).zip(q.chunks_exact_mut(cols.max(1))).zip(&mut scales) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        *s = amax / MAX;
        let inv = if amax == 0.0 { 0.0 } else { MAX / amax };
        for (o, v) in qr.iter_mut().zip(row) {
            *o = encode(v * inv);
        }
    }
    (q, scales)
}

/// Row `q` (one output channel) back to f32.
pub fn dequantize_row(q: &[u8], scale: f32, out: &mut [f32]) {
    for (o, &c) in out.iter_mut().zip(q) {
        *o = decode(c) * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_codes() {
        assert_eq!(decode(0x00), 0.0);
        assert_eq!(decode(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(decode(0x08), 2f32.powi(-6)); // smallest normal
        assert_eq!(decode(0x38), 1.0);
        assert_eq!(decode(0x7E), 448.0);
        assert_eq!(decode(0xB8), -1.0);
        assert!(decode(0x7F).is_nan() && decode(0xFF).is_nan());
        assert_eq!(encode(1.0), 0x38);
        assert_eq!(encode(1e9), 0x7E);
        assert_eq!(encode(-1e9), 0xFE);
        assert_eq!(encode(-0.0), 0);
        // 1.0625 is halfway between 1.0 (0x38, even) and 1.125 (0x39): ties go to even
        assert_eq!(encode(1.0625), 0x38);
        assert_eq!(encode(1.1875), 0x3A); // between 0x39 and 0x3A: to 0x3A (even)
    }

    #[test]
    fn every_finite_code_round_trips() {
        for c in 0..=255u8 {
            if c & 0x7F != 0x7F && c != 0x80 {
                assert_eq!(encode(decode(c)), c, "code {c:#x}");
            }
        }
    }

    proptest! {
        #[test]
        fn nearest_value_is_chosen(x in -500f32..500.0) {
            let got = decode(encode(x));
            let best = (0..=255u8).filter(|c| c & 0x7F != 0x7F)
                .map(|c| (decode(c) - x.clamp(-MAX, MAX)).abs()).fold(f32::INFINITY, f32::min);
            prop_assert_eq!((got - x.clamp(-MAX, MAX)).abs(), best);
        }

        #[test]
        fn relative_error_within_a_sixteenth(
            (rows, cols, w) in (1usize..5, 1usize..70).prop_flat_map(|(r, c)| {
                (Just(r), Just(c), proptest::collection::vec(-10f32..10.0, r * c))
            })
        ) {
            let (q, scales) = quantize(&w, rows, cols);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                dequantize_row(&q[r * cols..(r + 1) * cols], scales[r], &mut row);
                for c in 0..cols {
                    let x = w[r * cols + c];
                    // 3 mantissa bits: half a step is 1/16 of the value for normals; below the
                    // normal range the step is fixed at 2^-9 of the scale
                    let bound = x.abs() / 16.0 + scales[r] * 2f32.powi(-10) + 1e-6;
                    prop_assert!((row[c] - x).abs() <= bound * 1.0001, "({r},{c}) {x} -> {}", row[c]);
                }
            }
        }
    }
}
