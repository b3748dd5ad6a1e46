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
mod lru;
pub mod prefix;

pub use allocator::{BlockAllocator, BlockTable, KvStats};

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

    /// Bytes of the whole pool (K and V, all layers, f32).
    pub fn size_bytes(&self) -> usize {
        2 * self.n_layers * self.layer_len() * std::mem::size_of::<f32>()
    }
}

/// K and V storage for every layer, allocated once.
pub struct KvCache {
    /// The pool's shape.
    pub shape: KvShape,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl KvCache {
    /// Allocates (zeroed) storage for the whole pool.
    pub fn new(shape: KvShape) -> Self {
        let layer = || vec![0f32; shape.layer_len()];
        KvCache {
            shape,
            k: (0..shape.n_layers).map(|_| layer()).collect(),
            v: (0..shape.n_layers).map(|_| layer()).collect(),
        }
    }

    /// One layer's K and V pools, mutable.
    pub fn layer_mut(&mut self, layer: usize) -> (&mut [f32], &mut [f32]) {
        (&mut self.k[layer], &mut self.v[layer])
    }

    /// One layer's K and V pools.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }

    /// Copies the first `n_positions` of block `src` into block `dst` in every layer
    /// (copy-on-write of a shared, partly filled block).
    pub fn copy_block(&mut self, src: u32, dst: u32, n_positions: usize) {
        let s = self.shape;
        for layer in 0..s.n_layers {
            for pool in [&mut self.k[layer], &mut self.v[layer]] {
                for head in 0..s.n_kv_heads {
                    let from = s.offset(src as usize, head, 0);
                    let to = s.offset(dst as usize, head, 0);
                    pool.copy_within(from..from + n_positions * s.head_dim, to);
                }
            }
        }
    }
}
