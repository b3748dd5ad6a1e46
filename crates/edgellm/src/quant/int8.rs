//! int8 weights, symmetric per output channel.
//!
//! Layout: `q: [rows * cols]` i8, row-major; `scales: [rows]` f32. Element `(r, c)` is
//! `q[r * cols + c] as f32 * scales[r]`, with `scales[r] = max_c |w[r, c]| / 127`. The quantizer
//! never emits -128 (the values are symmetric in `[-127, 127]`); the AVX2 kernel's sign trick
//! relies on that.

/// Quantizes a row-major `[rows, cols]` matrix: `(q, scales)`.
pub fn quantize(w: &[f32], rows: usize, cols: usize) -> (Vec<i8>, Vec<f32>) {
    assert_eq!(w.len(), rows * cols, "int8::quantize: data is not [rows, cols]");
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; rows];
    for ((row, qr), s) in w.chunks_exact(cols.max(1)).zip(q.chunks_exact_mut(cols.max(1))).zip(&mut scales) {
        *s = quantize_into(row, qr);
    }
    (q, scales)
}

/// Quantizes `x` into `q` with one symmetric scale, which it returns (0 for an all-zero `x`).
#[inline]
pub fn quantize_into(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        q.fill(0);
        return 0.0;
    }
    let scale = amax / 127.0;
    let inv = 127.0 / amax;
    for (o, v) in q.iter_mut().zip(x) {
        *o = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// Row `q` (one output channel) back to f32.
pub fn dequantize_row(q: &[i8], scale: f32, out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(q) {
        *o = *v as f32 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn error_within_half_a_step(
            (rows, cols, w) in (1usize..6, 1usize..80).prop_flat_map(|(r, c)| {
                (Just(r), Just(c), proptest::collection::vec(-100f32..100.0, r * c))
            })
        ) {
            let (q, scales) = quantize(&w, rows, cols);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                dequantize_row(&q[r * cols..(r + 1) * cols], scales[r], &mut row);
                let amax = w[r * cols..(r + 1) * cols].iter().fold(0f32, |m, v| m.max(v.abs()));
                prop_assert!((scales[r] - amax / 127.0).abs() <= 1e-6 * amax);
                for c in 0..cols {
                    let err = (row[c] - w[r * cols + c]).abs();
                    // half a step, plus f32 rounding of the scale and product
                    prop_assert!(err <= scales[r] * 0.5 * (1.0 + 1e-4) + 1e-6, "({r},{c}): err {err}, scale {}", scales[r]);
                    prop_assert!(q[r * cols + c] != i8::MIN);
                }
            }
        }
    }

    #[test]
    fn zero_rows_have_zero_scale() {
        let (q, s) = quantize(&[0.0; 8], 2, 4);
        assert_eq!(s, vec![0.0, 0.0]);
        assert!(q.iter().all(|&v| v == 0));
    }
}
