//! The paged KV cache: one pool of fixed-size blocks allocated at load, a free list, and a block
//! table per sequence mapping its positions to blocks. Position `p` of a sequence lives in block
//! `table[p / block_size]` at slot `p % block_size`.
//!
//! Blocks are reference counted and full blocks are indexed by a chain hash of their whole token
//! prefix ([`prefix`]), so sequences with a common prefix (a system prompt, earlier chat turns)
//! share its blocks without copying; the blocks of ended sequences stay cached until the pool
//! needs them ([`BlockAllocator`]). That bookkeeping is host-side only and independent of where
//! the KV lives.
//!
//! Layout of each layer's K (and V) pool: `[n_blocks, n_kv_heads, block_size, head_dim]`, so the
//! keys one attention head reads from a block are contiguous.

mod allocator;
mod element;
mod lru;
pub mod prefix;

pub use allocator::{BlockAllocator, BlockTable, KvStats};
pub use element::{simd_available, Fp8, KvElement};

use half::{bf16, f16};

use crate::engine::KvDtype;

/// Shape of the KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    /// Layers (each has its own K and V pool).
    pub n_layers: usize,
    /// Blocks in the pool.
    pub n_blocks: usize,
    /// Token positions per block.
    pub block_size: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl KvShape {
    /// f32 elements of one layer's K (or V) pool.
    pub fn layer_len(&self) -> usize {
        self.n_blocks * self.n_kv_heads * self.block_size * self.head_dim
    }

    /// Element offset of (block, head, slot) inside a layer pool.
    #[inline]
    pub fn offset(&self, block: usize, head: usize, slot: usize) -> usize {
        ((block * self.n_kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Bytes of the whole pool (K and V, all layers) in f32 ([`KvCache::size_bytes`] for the
    /// cache's own element type).
    pub fn size_bytes(&self) -> usize {
        2 * self.n_layers * self.layer_len() * std::mem::size_of::<f32>()
    }
}

/// One layer's K and V pools in element type `E`, with the per-tensor scales (K, V) that turn
/// stored elements back into values.
#[derive(Clone, Copy)]
pub struct LayerKv<'a, E> {
    /// K pool, `[n_blocks, n_kv_heads, block_size, head_dim]`.
    pub k: &'a [E],
    /// V pool, same layout.
    pub v: &'a [E],
    /// Value = stored × scale, for K and V.
    pub scale: [f32; 2],
}

/// One layer's pools in whichever element type the cache holds.
#[derive(Clone, Copy)]
pub enum LayerView<'a> {
    /// f32 elements.
    F32(LayerKv<'a, f32>),
    /// f16 elements.
    F16(LayerKv<'a, f16>),
    /// bf16 elements.
    Bf16(LayerKv<'a, bf16>),
    /// fp8 E4M3 codes.
    Fp8(LayerKv<'a, Fp8>),
}

/// Every layer's K and V pools of one element type.
struct Pools<E> {
    k: Vec<Vec<E>>,
    v: Vec<Vec<E>>,
}

impl<E: KvElement> Pools<E> {
    fn new(shape: KvShape) -> Self {
        let layer = || vec![E::default(); shape.layer_len()];
        Pools {
            k: (0..shape.n_layers).map(|_| layer()).collect(),
            v: (0..shape.n_layers).map(|_| layer()).collect(),
        }
    }

    fn write(&mut self, layer: usize, off: usize, k: &[f32], v: &[f32], inv: [f32; 2]) {
        let enc = |dst: &mut [E], src: &[f32], inv: f32| {
            dst.iter_mut().zip(src).for_each(|(d, &x)| *d = E::encode(x * inv));
        };
        enc(&mut self.k[layer][off..off + k.len()], k, inv[0]);
        enc(&mut self.v[layer][off..off + v.len()], v, inv[1]);
    }

    fn view(&self, layer: usize, scale: [f32; 2]) -> LayerKv<'_, E> {
        LayerKv { k: &self.k[layer], v: &self.v[layer], scale }
    }

    fn copy_block(&mut self, s: &KvShape, src: u32, dst: u32, n_positions: usize) {
        for pool in self.k.iter_mut().chain(self.v.iter_mut()) {
            for head in 0..s.n_kv_heads {
                let from = s.offset(src as usize, head, 0);
                let to = s.offset(dst as usize, head, 0);
                pool.copy_within(from..from + n_positions * s.head_dim, to);
            }
        }
    }
}

enum Storage {
    F32(Pools<f32>),
    F16(Pools<f16>),
    Bf16(Pools<bf16>),
    Fp8(Pools<Fp8>),
}

/// Runs `$body` with `$p` bound to the storage's pools, whatever their element type.
macro_rules! with_pools {
    ($storage:expr, $p:ident => $body:expr) => {
        match $storage {
            Storage::F32($p) => $body,
            Storage::F16($p) => $body,
            Storage::Bf16($p) => $body,
            Storage::Fp8($p) => $body,
        }
    };
}

/// K and V storage for every layer, allocated once, in one element type.
pub struct KvCache {
    /// The pool's shape.
    pub shape: KvShape,
    dtype: KvDtype,
    storage: Storage,
    scales: Vec<[f32; 2]>, // per layer (K, V): value = stored × scale
}

impl KvCache {
    /// Allocates (zeroed) f32 storage for the whole pool.
    pub fn new(shape: KvShape) -> Self {
        Self::with_dtype(shape, KvDtype::F32, vec![[1.0; 2]; shape.n_layers])
    }

    /// Allocates (zeroed) storage of `dtype` (`Auto` is f32) with per-layer (K, V) `scales`
    /// (stored = value / scale; 1 for anything but fp8).
    pub fn with_dtype(shape: KvShape, dtype: KvDtype, scales: Vec<[f32; 2]>) -> Self {
        assert_eq!(scales.len(), shape.n_layers, "one (K, V) scale pair per layer");
        let (dtype, storage) = match dtype {
            KvDtype::Auto | KvDtype::F32 => (KvDtype::F32, Storage::F32(Pools::new(shape))),
            KvDtype::F16 => (dtype, Storage::F16(Pools::new(shape))),
            KvDtype::Bf16 => (dtype, Storage::Bf16(Pools::new(shape))),
            KvDtype::Fp8 => (dtype, Storage::Fp8(Pools::new(shape))),
        };
        KvCache { shape, dtype, storage, scales }
    }

    /// The element type.
    pub fn dtype(&self) -> KvDtype {
        self.dtype
    }

    /// Bytes of the whole pool (K and V, all layers).
    pub fn size_bytes(&self) -> usize {
        let elem = with_pools!(&self.storage, _p => elem_bytes(_p));
        2 * self.shape.n_layers * self.shape.layer_len() * elem
    }

    /// Stores one position's K and V rows (`head_dim` values each) of `layer` at element
    /// offset `off` ([`KvShape::offset`]), encoded in the cache's element type.
    pub fn write(&mut self, layer: usize, off: usize, k: &[f32], v: &[f32]) {
        let [sk, sv] = self.scales[layer];
        let inv = [1.0 / sk, 1.0 / sv];
        with_pools!(&mut self.storage, p => p.write(layer, off, k, v, inv))
    }

    /// One layer's pools, to read.
    pub fn layer(&self, layer: usize) -> LayerView<'_> {
        let s = self.scales[layer];
        match &self.storage {
            Storage::F32(p) => LayerView::F32(p.view(layer, s)),
            Storage::F16(p) => LayerView::F16(p.view(layer, s)),
            Storage::Bf16(p) => LayerView::Bf16(p.view(layer, s)),
            Storage::Fp8(p) => LayerView::Fp8(p.view(layer, s)),
        }
    }

    /// Copies the first `n_positions` of block `src` into block `dst` in every layer
    /// (copy-on-write of a shared, partly filled block).
    pub fn copy_block(&mut self, src: u32, dst: u32, n_positions: usize) {
        let s = self.shape;
        with_pools!(&mut self.storage, p => p.copy_block(&s, src, dst, n_positions))
    }
}

fn elem_bytes<E: KvElement>(_: &Pools<E>) -> usize {
    E::BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every element type stores what the f32 cache stores, within its rounding, and a block
    /// copy moves exactly the stored elements.
    #[test]
    fn element_types_match_the_f32_cache() {
        let shape = KvShape { n_layers: 2, n_blocks: 3, block_size: 4, n_kv_heads: 2, head_dim: 16 };
        let val = |i: usize, salt: f32| (i as f32 * 0.731 + salt).sin() * 3.0;
        let decode = |view: LayerView<'_>| -> (Vec<f32>, Vec<f32>) {
            fn dec<E: KvElement>(l: LayerKv<'_, E>) -> (Vec<f32>, Vec<f32>) {
                let mut k = vec![0f32; l.k.len()];
                let mut v = vec![0f32; l.v.len()];
                E::decode_into(false, l.k, &mut k);
                E::decode_into(false, l.v, &mut v);
                k.iter_mut().for_each(|x| *x *= l.scale[0]);
                v.iter_mut().for_each(|x| *x *= l.scale[1]);
                (k, v)
            }
            match view {
                LayerView::F32(l) => dec(l),
                LayerView::F16(l) => dec(l),
                LayerView::Bf16(l) => dec(l),
                LayerView::Fp8(l) => dec(l),
            }
        };
        let fill = |kv: &mut KvCache| {
            for layer in 0..2 {
                for (block, head, slot) in [(2, 1, 3), (0, 0, 0), (1, 1, 2)] {
                    let off = shape.offset(block, head, slot);
                    let k: Vec<f32> = (0..16).map(|d| val(off + d, layer as f32)).collect();
                    let v: Vec<f32> = (0..16).map(|d| val(off + d, 7.0 + layer as f32)).collect();
                    kv.write(layer, off, &k, &v);
                }
            }
            kv.copy_block(2, 0, 4);
        };
        let mut reference = KvCache::new(shape);
        fill(&mut reference);
        let scales = vec![[3.0 / 448.0, 3.0 / 448.0], [0.01, 0.02]];
        for (dtype, bytes, rel) in [
            (KvDtype::F16, 2, 2f32.powi(-11)),
            (KvDtype::Bf16, 2, 2f32.powi(-8)),
            (KvDtype::Fp8, 1, 2f32.powi(-4)),
        ] {
            let s = if dtype == KvDtype::Fp8 { scales.clone() } else { vec![[1.0; 2]; 2] };
            let mut kv = KvCache::with_dtype(shape, dtype, s);
            assert_eq!(kv.size_bytes(), reference.size_bytes() / 4 * bytes);
            fill(&mut kv);
            for layer in 0..2 {
                let (wk, wv) = decode(reference.layer(layer));
                let (gk, gv) = decode(kv.layer(layer));
                for (want, got) in [(&wk, &gk), (&wv, &gv)] {
                    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
                        let scale = kv.scales[layer][0].max(kv.scales[layer][1]);
                        let tol = b.abs() * rel + 2f32.powi(-9) * scale + 1e-6;
                        assert!((a - b).abs() <= tol, "{dtype:?} layer {layer} [{i}]: {b} -> {a}");
                    }
                }
            }
        }
    }
}
