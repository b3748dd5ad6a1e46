//! ggml tensor types as stored in GGUF files: type ids, block geometry and dequantization to f32.
//!
//! In: the raw bytes of a tensor (a whole number of blocks). Out: f32 values in storage order.
//! Every `dequant_*` function follows ggml's reference `dequantize_row_*` (ggml-quants.c) bit for
//! bit, including the order of float operations, so results equal gguf-py's `gguf.quants.dequantize`
//! exactly. Large tensors are split over rayon tasks by groups of blocks.

use half::{bf16, f16};
use rayon::prelude::*;

use crate::{Error, Result};

/// A ggml tensor type. Block types store `block_size` elements in `type_size` bytes.
#[allow(non_camel_case_types, missing_docs)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
}

impl GgmlType {
    /// The type for a GGUF type id, `None` for ids this reader does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2_K,
            11 => Q3_K,
            12 => Q4_K,
            13 => Q5_K,
            14 => Q6_K,
            15 => Q8_K,
            30 => BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | BF16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2_K => 84,
            Q3_K => 110,
            Q4_K => 144,
            Q5_K => 176,
            Q6_K => 210,
            Q8_K => 292,
        }
    }
}

/// Elements per K-quant super-block.
const QK_K: usize = 256;
/// Blocks per rayon task: big enough that task overhead is noise, small enough to balance.
const BLOCKS_PER_TASK: usize = 4096;

/// Dequantizes `bytes` (whole blocks of `ty`) into `out`, which must hold exactly
/// `bytes.len() / ty.type_size() * ty.block_size()` values.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let (block, size) = (ty.block_size(), ty.type_size());
    if !bytes.len().is_multiple_of(size) || bytes.len() / size * block != out.len() {
        return Err(Error::Invalid {
            what: "dequantize buffers",
            why: format!(
                "{} bytes of {ty:?} ({size} bytes per {block} values) cannot fill {} f32s",
                bytes.len(),
                out.len()
            ),
        });
    }
    let f: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => dequant_f32,
        GgmlType::F16 => dequant_f16,
        GgmlType::BF16 => dequant_bf16,
        GgmlType::Q4_0 => dequant_q4_0,
        GgmlType::Q4_1 => dequant_q4_1,
        GgmlType::Q5_0 => dequant_q5_0,
        GgmlType::Q5_1 => dequant_q5_1,
        GgmlType::Q8_0 => dequant_q8_0,
        GgmlType::Q8_1 => dequant_q8_1,
        GgmlType::Q2_K => dequant_q2_k,
        GgmlType::Q3_K => dequant_q3_k,
        GgmlType::Q4_K => dequant_q4_k,
        GgmlType::Q5_K => dequant_q5_k,
        GgmlType::Q6_K => dequant_q6_k,
        GgmlType::Q8_K => dequant_q8_k,
    };
    // plain types are converted many "blocks" (elements) per call; the split only needs to
    // respect block boundaries
    let per_task = BLOCKS_PER_TASK * if block == 1 { 64 } else { 1 };
    if bytes.len() <= size * per_task {
        run_blocks(f, size, block, bytes, out);
    } else {
        bytes
            .par_chunks(size * per_task)
            .zip(out.par_chunks_mut(block * per_task))
            .for_each(|(b, o)| run_blocks(f, size, block, b, o));
    }
    Ok(())
}

/// Applies a one-block function over matching chunks (plain types take whole slices at once).
fn run_blocks(f: fn(&[u8], &mut [f32]), size: usize, block: usize, bytes: &[u8], out: &mut [f32]) {
    if block == 1 {
        f(bytes, out);
        return;
    }
    for (b, o) in bytes.chunks_exact(size).zip(out.chunks_exact_mut(block)) {
        f(b, o);
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

fn dequant_f32(b: &[u8], y: &mut [f32]) {
    for (c, y) in b.chunks_exact(4).zip(y) {
        *y = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn dequant_f16(b: &[u8], y: &mut [f32]) {
    for (c, y) in b.chunks_exact(2).zip(y) {
        *y = f16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

fn dequant_bf16(b: &[u8], y: &mut [f32]) {
    for (c, y) in b.chunks_exact(2).zip(y) {
        *y = bf16::from_le_bytes([c[0], c[1]]).to_f32();
    }
}

/// Q4_0 (18 bytes): f16 d, 16 bytes of nibbles; element j is the low nibble of byte j, element
/// j + 16 the high nibble; y = (q − 8)·d.
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// Q4_1 (20 bytes): f16 d, f16 m, nibbles as Q4_0; y = q·d + m.
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0 (22 bytes): f16 d, u32 qh (bit j is the fifth bit of element j), nibbles as Q4_0;
/// y = (q − 16)·d.
fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// Q5_1 (24 bytes): f16 d, f16 m, u32 qh, nibbles; y = q·d + m.
fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// Q8_0 (34 bytes): f16 d, 32 × i8; y = q·d.
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// Q8_1 (36 bytes): f16 d, f16 s (= d·Σq, unused here), 32 × i8; y = q·d. ggml has no
/// `dequantize_row_q8_1` (it is an activation format); this is the obvious inverse.
fn dequant_q8_1(b: &[u8], y: &mut [f32]) {
    let d = half_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[4..36]) {
        *y = q as i8 as f32 * d;
    }
}

/// Q2_K (84 bytes): 16 scale bytes (low nibble scale, high nibble min, one per 16 values),
/// 64 bytes of 2-bit quants, f16 d, f16 dmin. Values 128h + 32j + l come from bits 2j of byte
/// 32h + l; y = d·sc·q − dmin·m.
fn dequant_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (half_at(b, 80), half_at(b, 82));
    for (i, y) in y.iter_mut().enumerate() {
        let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
        let sc = scales[i / 16];
        let dl = d * (sc & 0x0F) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let q = (qs[32 * h + l] >> (2 * j)) & 3;
        *y = dl * q as f32 - ml;
    }
}

/// Q3_K (110 bytes): 32 bytes hmask, 64 bytes of 2-bit quants, 12 bytes of 6-bit scales, f16 d.
/// Value i = 128h + 32j + l: low bits (qs[32h + l] >> 2j) & 3, minus 4 when bit (4h + j) of
/// hmask[l] is clear; scale s = i / 16 packed as low/high nibbles of bytes 0..8 plus two bits
/// of bytes 8..12, offset by 32; y = d·(sc − 32)·q.
fn dequant_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs, sb) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = half_at(b, 108);
    let mut scales = [0f32; 16];
    for (s, out) in scales.iter_mut().enumerate() {
        let lo = (sb[s % 8] >> (4 * (s / 8))) & 0x0F;
        let hi = (sb[8 + s % 4] >> (2 * (s / 4))) & 0x03;
        *out = d * ((lo | (hi << 4)) as i8 - 32) as f32;
    }
    for (i, y) in y.iter_mut().enumerate() {
        let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = ((qs[32 * h + l] >> (2 * j)) & 3) as i8;
        let high = if hmask[l] & (1 << (4 * h + j)) != 0 { 0 } else { 4 };
        *y = scales[i / 16] * (low - high) as f32;
    }
}

/// The 8 (scale, min) pairs of Q4_K / Q5_K, 6 bits each, packed in 12 bytes.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles. Sub-block
/// k (32 values) takes the low (k even) or high (k odd) nibbles of bytes 32·(k/2)..;
/// y = (d·sc)·q − dmin·m.
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let qs = &b[16..144];
    for k in 0..8 {
        let (d1, m1) = (d * sc[k] as f32, dmin * mn[k] as f32);
        let shift = 4 * (k % 2);
        let src = &qs[32 * (k / 2)..32 * (k / 2) + 32];
        for (y, &q) in y[32 * k..32 * k + 32].iter_mut().zip(src) {
            *y = d1 * ((q >> shift) & 0x0F) as f32 - m1;
        }
    }
}

/// Q5_K (176 bytes): as Q4_K with 32 bytes of high bits (bit k of qh[l] is the fifth bit of
/// value 32k + l) between the scales and the nibbles.
fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (half_at(b, 0), half_at(b, 2));
    let (sc, mn) = scale_min_k4(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for k in 0..8 {
        let (d1, m1) = (d * sc[k] as f32, dmin * mn[k] as f32);
        let shift = 4 * (k % 2);
        let src = &qs[32 * (k / 2)..32 * (k / 2) + 32];
        for (l, (y, &q)) in y[32 * k..32 * k + 32].iter_mut().zip(src).enumerate() {
            let v = ((q >> shift) & 0x0F) | (((qh[l] >> k) & 1) << 4);
            *y = d1 * v as f32 - m1;
        }
    }
}

/// Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 i8 scales, f16 d.
/// Value 128h + r: low nibble of ql[64h + r % 64] (high nibble when r ≥ 64), high bits
/// (qh[32h + r % 32] >> 2·(r / 32)) & 3; y = (d·sc)·(q − 32).
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = half_at(b, 208);
    for (i, y) in y.iter_mut().enumerate() {
        let (h, r) = (i / 128, i % 128);
        let lo = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
        let hi = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = (lo | (hi << 4)) as i8 - 32;
        *y = d * sc[i / 16] as i8 as f32 * q as f32;
    }
}

/// Q8_K (292 bytes): f32 d, 256 × i8, 16 × i16 block sums (unused here); y = d·q.
fn dequant_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *y = d * q as i8 as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn lengths_are_checked() {
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], &mut out).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 68], &mut out).is_err());
        assert!(dequantize(GgmlType::F32, &[0; 127], &mut out).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0; 34], &mut out).is_ok());
        assert!(dequantize(GgmlType::Q4_K, &[], &mut []).is_ok());
    }

    #[test]
    fn q4_0_and_q8_1_by_hand() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y).unwrap();
        assert_eq!(y[0], -16.0);
        assert_eq!(y[15], 14.0);
        assert_eq!(y[16], 14.0);
        assert_eq!(y[31], -16.0);

        let mut b = [f16_bytes(0.5), f16_bytes(99.0)].concat();
        b.extend((0..32).map(|q: i8| (q - 16) as u8));
        dequantize(GgmlType::Q8_1, &b, &mut y).unwrap();
        assert_eq!(y.to_vec(), (0..32).map(|q| (q - 16) as f32 * 0.5).collect::<Vec<_>>());
    }

    #[test]
    fn parallel_split_matches_block_by_block() {
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::F16, GgmlType::Q5_0] {
            let n_blocks = BLOCKS_PER_TASK * if ty.block_size() == 1 { 64 } else { 1 } * 2 + 3;
            let mut state = 0x9e37_79b9_7f4a_7c15u64;
            let bytes: Vec<u8> = (0..n_blocks * ty.type_size())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // keep every byte's f16 reading finite: clear the exponent's top bit
                    (state >> 32) as u8 & 0xbf
                })
                .collect();
            let mut whole = vec![0f32; n_blocks * ty.block_size()];
            dequantize(ty, &bytes, &mut whole).unwrap();
            let mut one = vec![0f32; ty.block_size()];
            for (i, b) in bytes.chunks_exact(ty.type_size()).enumerate().step_by(997) {
                dequantize(ty, b, &mut one).unwrap();
                assert_eq!(&whole[i * ty.block_size()..][..ty.block_size()], &one[..], "{ty:?} block {i}");
            }
        }
    }
}
