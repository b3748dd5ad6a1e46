//! Element-wise and per-row kernels of the forward pass: RMSNorm, RoPE, the gated MLP
//! activations, soft-capping. Each works on f32 rows in place or into a given output.

use rayon::prelude::*;

/// `out = x / rms(x) · (offset + w)` per row of width `w.len()`. `offset` is 1 for Gemma's
/// `(1 + w)` parametrisation, 0 otherwise.
pub fn rmsnorm(x: &[f32], w: &[f32], offset: f32, eps: f32, out: &mut [f32]) {
    let width = w.len();
    debug_assert_eq!(x.len(), out.len());
    let run = |(xr, or): (&[f32], &mut [f32])| {
        let scale = inv_rms(xr, eps);
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * (offset + g);
        }
    };
    if x.len() >= 64 * 1024 {
        x.par_chunks(width).zip(out.par_chunks_mut(width)).for_each(run);
    } else {
        x.chunks(width).zip(out.chunks_mut(width)).for_each(run);
    }
}

/// [`rmsnorm`] in place (per-head q/k norms).
pub fn rmsnorm_inplace(x: &mut [f32], w: &[f32], offset: f32, eps: f32) {
    for row in x.chunks_mut(w.len()) {
        let scale = inv_rms(row, eps);
        for (v, &g) in row.iter_mut().zip(w) {
            *v = *v * scale * (offset + g);
        }
    }
}

#[inline]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let sum_sq: f32 = x.iter().map(|v| v * v).sum();
    1.0 / (sum_sq / x.len() as f32 + eps).sqrt()
}

/// `cos`/`sin` of `position · inv_freq[i]` for each token: `[n_tokens, inv_freq.len()]` each.
pub fn rope_cos_sin(positions: &[u32], inv_freq: &[f32], cos: &mut [f32], sin: &mut [f32]) {
    let half = inv_freq.len();
    for (t, &p) in positions.iter().enumerate() {
        for (i, &f) in inv_freq.iter().enumerate() {
            // one f32 product, as HF computes `inv_freq @ position_ids` in float32
            let angle = p as f32 * f;
            cos[t * half + i] = angle.cos();
            sin[t * half + i] = angle.sin();
        }
    }
}

/// Rotates one head in place, NeoX / HF `rotate_half` pairing: element `i` with `i + d/2`.
#[inline]
pub fn rope_apply(head: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    let (lo, hi) = head.split_at_mut(half);
    for i in 0..half {
        let (a, b) = (lo[i], hi[i]);
        lo[i] = a * cos[i] - b * sin[i];
        hi[i] = b * cos[i] + a * sin[i];
    }
}

/// The gated MLP activation: `gate_up` rows hold `[gate | up]`; writes `act(gate) · up`.
pub fn gated_act(gate_up: &[f32], ffn: usize, act: crate::config::Activation, out: &mut [f32]) {
    use crate::config::Activation;
    for (gu, o) in gate_up.chunks(2 * ffn).zip(out.chunks_mut(ffn)) {
        let (gate, up) = gu.split_at(ffn);
        match act {
            Activation::Silu => {
                for i in 0..ffn {
                    let g = gate[i];
                    o[i] = g / (1.0 + (-g).exp()) * up[i];
                }
            }
            Activation::GeluTanh => {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                for i in 0..ffn {
                    let g = gate[i];
                    let inner = SQRT_2_OVER_PI * (g + 0.044715 * g * g * g);
                    o[i] = 0.5 * g * (1.0 + inner.tanh()) * up[i];
                }
            }
        }
    }
}

/// `x = cap · tanh(x / cap)`.
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_unit_rows() {
        let x = [3.0, 4.0, 0.0, 0.0];
        let mut out = [0.0; 4];
        rmsnorm(&x, &[1.0, 1.0], 0.0, 1e-12, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 4.0 / r).abs() < 1e-6);
        assert_eq!(&out[2..], &[0.0, 0.0]);
        rmsnorm(&x, &[0.0, 1.0], 1.0, 1e-12, &mut out);
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let mut head = [1.0, 2.0, 3.0, 4.0];
        let (mut c, mut s) = ([0.0; 2], [0.0; 2]);
        rope_cos_sin(&[3], &[1.0, 0.5], &mut c, &mut s);
        rope_apply(&mut head, &c, &s);
        // pair (1, 3) by angle 3, pair (2, 4) by angle 1.5
        assert!((head[0] - (3f32.cos() - 3.0 * 3f32.sin())).abs() < 1e-6);
        assert!((head[2] - (3.0 * 3f32.cos() + 3f32.sin())).abs() < 1e-6);
        let norm: f32 = head.iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4);
    }
}
