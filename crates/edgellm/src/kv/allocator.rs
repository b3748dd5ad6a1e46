//! Block bookkeeping: which pool blocks are free, and which blocks each sequence owns.

use crate::{Error, Result};

/// Hands out KV blocks from a fixed pool. Free blocks sit on a stack, so allocation and release
/// are O(1) and never allocate memory after construction.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    n_blocks: usize,
}

impl BlockAllocator {
    /// All `n_blocks` blocks free.
    pub fn new(n_blocks: usize) -> Self {
        // reversed so that block 0 is handed out first
        BlockAllocator { free: (0..n_blocks as u32).rev().collect(), n_blocks }
    }

    /// Blocks not in use.
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.n_blocks
    }

    /// Takes one block.
    pub fn alloc(&mut self) -> Result<u32> {
        self.free.pop().ok_or(Error::KvFull { needed: 1, free: 0 })
    }

    /// Returns a block to the pool.
    pub fn release(&mut self, block: u32) {
        debug_assert!(
            (block as usize) < self.n_blocks && !self.free.contains(&block),
            "double free of block {block}"
        );
        self.free.push(block);
    }
}

/// The blocks of one sequence, in position order, and how many positions are filled.
#[derive(Debug, Default, Clone)]
pub struct BlockTable {
    /// Block ids, `blocks[i]` holds positions `i * block_size ..`.
    pub blocks: Vec<u32>,
    /// Positions written so far.
    pub len: usize,
}

impl BlockTable {
    /// An empty table with room for `max_blocks` entries, so growing it never reallocates.
    pub fn with_capacity(max_blocks: usize) -> Self {
        BlockTable { blocks: Vec::with_capacity(max_blocks), len: 0 }
    }

    /// Makes room for `n_new` more positions, allocating blocks as needed. On failure nothing
    /// is allocated.
    pub fn reserve(&mut self, n_new: usize, block_size: usize, alloc: &mut BlockAllocator) -> Result<()> {
        let needed = (self.len + n_new).div_ceil(block_size).saturating_sub(self.blocks.len());
        if needed > alloc.n_free() {
            return Err(Error::KvFull { needed, free: alloc.n_free() });
        }
        for _ in 0..needed {
            self.blocks.push(alloc.alloc()?);
        }
        Ok(())
    }

    /// Releases every block and empties the table.
    pub fn free(&mut self, alloc: &mut BlockAllocator) {
        for &b in &self.blocks {
            alloc.release(b);
        }
        self.blocks.clear();
        self.len = 0;
    }

    /// Drops positions from `new_len` on, releasing blocks no longer needed.
    pub fn truncate(&mut self, new_len: usize, block_size: usize, alloc: &mut BlockAllocator) {
        let keep = new_len.div_ceil(block_size);
        for b in self.blocks.drain(keep.min(self.blocks.len())..) {
            alloc.release(b);
        }
        self.len = self.len.min(new_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserve_fails_atomically() {
        let mut a = BlockAllocator::new(2);
        let mut t = BlockTable::default();
        assert!(matches!(t.reserve(33, 16, &mut a), Err(Error::KvFull { needed: 3, free: 2 })));
        assert_eq!(a.n_free(), 2);
        t.reserve(32, 16, &mut a).unwrap();
        assert_eq!((t.blocks.len(), a.n_free()), (2, 0));
        t.free(&mut a);
        assert_eq!(a.n_free(), 2);
    }

    proptest! {
        #[test]
        fn no_block_is_handed_out_twice(ops in proptest::collection::vec((0usize..4, 0usize..40), 1..60)) {
            let mut a = BlockAllocator::new(24);
            let mut tables = vec![BlockTable::default(); 4];
            for (seq, n) in ops {
                if n % 5 == 0 {
                    tables[seq].free(&mut a);
                } else if tables[seq].reserve(n, 16, &mut a).is_ok() {
                    tables[seq].len += n;
                }
                let mut seen: Vec<u32> = tables.iter().flat_map(|t| t.blocks.iter().copied()).collect();
                let used = seen.len();
                seen.sort();
                seen.dedup();
                prop_assert_eq!(seen.len(), used);
                prop_assert_eq!(used + a.n_free(), 24);
            }
        }
    }
}
