//! Block bookkeeping: which pool blocks are free, which sequences hold each block (reference
//! counts, so a block of a shared prefix serves many sequences), and the prefix cache of full
//! blocks kept after their sequences end.
//!
//! Every block is in exactly one of four states:
//! - *empty*: on the free stack, holding nothing reusable;
//! - *held*: referenced by one or more block tables (indexed in the prefix cache or not);
//! - *cached*: indexed, referenced by nobody, on the LRU list — free to take, and evicted (least
//!   recently released first) only when no empty block is left;
//! - *pinned*: indexed and never evicted (a saved system prompt), whether held or not.
//!
//! Nothing here allocates after construction, so a decode step stays allocation-free.

use super::lru::Lru;
use super::prefix::PrefixIndex;
use crate::{Error, Result};

/// Block counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Blocks in the pool.
    pub total: usize,
    /// Blocks held by at least one sequence.
    pub used: usize,
    /// Blocks that can be handed out: empty ones plus cached ones nobody holds.
    pub free: usize,
    /// Of the free blocks, those still holding a reusable prefix.
    pub cached: usize,
    /// Pinned blocks (held or not); they are never evicted.
    pub pinned: usize,
}

/// Hands out KV blocks from a fixed pool, counts references and keeps the prefix cache. See the
/// module docs for the block states.
#[derive(Debug)]
pub struct BlockAllocator {
    empty: Vec<u32>,
    refs: Vec<u32>,
    pinned: Vec<bool>,
    index: PrefixIndex,
    lru: Lru,
    n_used: usize,
    n_pinned: usize,
    max_pinned: usize,
}

impl BlockAllocator {
    /// All `n_blocks` blocks of `block_size` positions empty. At most half of them may be
    /// pinned, so saved prompts never starve generation.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        BlockAllocator {
            // reversed so that block 0 is handed out first
            empty: (0..n_blocks as u32).rev().collect(),
            refs: vec![0; n_blocks],
            pinned: vec![false; n_blocks],
            index: PrefixIndex::new(n_blocks, block_size),
            lru: Lru::new(n_blocks),
            n_used: 0,
            n_pinned: 0,
            max_pinned: n_blocks / 2,
        }
    }

    /// Blocks that can be handed out (empty or cached and unheld).
    pub fn n_free(&self) -> usize {
        self.empty.len() + self.lru.len()
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.refs.len()
    }

    /// The counts of each state.
    pub fn stats(&self) -> KvStats {
        KvStats {
            total: self.n_blocks(),
            used: self.n_used,
            free: self.n_free(),
            cached: self.lru.len(),
            pinned: self.n_pinned,
        }
    }

    /// Sequences holding `block`.
    pub fn refs(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    /// Takes one block, evicting the least recently released cached block when none is empty.
    pub fn alloc(&mut self) -> Result<u32> {
        let block = match self.empty.pop() {
            Some(b) => b,
            None => {
                let b = self.lru.pop_front().ok_or(Error::KvFull { needed: 1, free: 0 })?;
                self.index.remove(b);
                b
            }
        };
        self.refs[block as usize] = 1;
        self.n_used += 1;
        Ok(block)
    }

    /// Adds a holder to a block found in the prefix cache.
    pub fn retain(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.refs[b] > 0 || self.index.contains(block), "retain of empty block {block}");
        if self.refs[b] == 0 {
            if self.lru.contains(block) {
                self.lru.remove(block);
            }
            self.n_used += 1;
        }
        self.refs[b] += 1;
    }

    /// Drops a holder; a block nobody holds becomes cached (when indexed) or empty.
    pub fn release(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.refs[b] > 0, "double free of block {block}");
        self.refs[b] -= 1;
        if self.refs[b] > 0 {
            return;
        }
        self.n_used -= 1;
        if !self.index.contains(block) {
            self.empty.push(block);
        } else if !self.pinned[b] {
            self.lru.push_back(block);
        }
    }

    /// The cached block holding `tokens` after the prefix hashed `parent` (chain hash `hash`).
    pub fn lookup(&self, hash: u64, parent: u64, tokens: &[u32]) -> Option<u32> {
        self.index.lookup(hash, parent, tokens)
    }

    /// Whether `block` is held by nobody (a cache hit on it takes a free block).
    pub fn is_unheld(&self, block: u32) -> bool {
        self.refs[block as usize] == 0
    }

    /// Offers a full, held block to the prefix cache. `false` when that prefix is cached in
    /// another block already.
    pub fn register(&mut self, block: u32, hash: u64, parent: u64, tokens: &[u32]) -> bool {
        debug_assert!(self.refs[block as usize] > 0, "register of unheld block {block}");
        self.index.insert(block, hash, parent, tokens)
    }

    /// Keeps an indexed block from ever being evicted. `false` when the block is not indexed or
    /// half the pool is pinned already.
    pub fn pin(&mut self, block: u32) -> bool {
        let b = block as usize;
        if self.pinned[b] {
            return true;
        }
        if !self.index.contains(block) || self.n_pinned >= self.max_pinned {
            return false;
        }
        if self.lru.contains(block) {
            self.lru.remove(block);
        }
        self.pinned[b] = true;
        self.n_pinned += 1;
        true
    }

    /// Makes a held block private to its only holder, which is about to overwrite part of it.
    /// `false` (nothing changed) when others hold it too or it is pinned.
    pub fn make_private(&mut self, block: u32) -> bool {
        let b = block as usize;
        if self.refs[b] != 1 || self.pinned[b] {
            return false;
        }
        self.index.remove(block);
        true
    }

    /// Whether `block` is indexed in the prefix cache.
    pub fn is_indexed(&self, block: u32) -> bool {
        self.index.contains(block)
    }

    /// Blocks in the prefix index (held, cached or pinned).
    pub fn n_indexed(&self) -> usize {
        self.index.len()
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

    /// Blocks that `n_new` more positions would take from the pool.
    pub fn blocks_needed(&self, n_new: usize, block_size: usize) -> usize {
        (self.len + n_new).div_ceil(block_size).saturating_sub(self.blocks.len())
    }

    /// Makes room for `n_new` more positions, allocating blocks as needed. On failure nothing
    /// is allocated.
    pub fn reserve(&mut self, n_new: usize, block_size: usize, alloc: &mut BlockAllocator) -> Result<()> {
        let needed = self.blocks_needed(n_new, block_size);
        if needed > alloc.n_free() {
            return Err(Error::KvFull { needed, free: alloc.n_free() });
        }
        for _ in 0..needed {
            self.blocks.push(alloc.alloc()?);
        }
        Ok(())
    }

    /// Appends a full block found in the prefix cache, holding it.
    pub fn push_cached(&mut self, block: u32, block_size: usize, alloc: &mut BlockAllocator) {
        debug_assert_eq!(self.len, self.blocks.len() * block_size, "cached blocks go after full ones");
        alloc.retain(block);
        self.blocks.push(block);
        self.len += block_size;
    }

    /// Releases every block and empties the table.
    pub fn free(&mut self, alloc: &mut BlockAllocator) {
        for &b in &self.blocks {
            alloc.release(b);
        }
        self.blocks.clear();
        self.len = 0;
    }

    /// Drops positions from `new_len` on, releasing blocks no longer needed, so that the
    /// positions from the returned length on can be written. A partly kept block that the
    /// prefix cache shares is not written into: the table then ends before it (the returned
    /// length is smaller than `new_len`).
    pub fn truncate(&mut self, new_len: usize, block_size: usize, alloc: &mut BlockAllocator) -> usize {
        let mut new_len = new_len.min(self.len);
        let partial = !new_len.is_multiple_of(block_size);
        if partial {
            let last = self.blocks[new_len / block_size];
            if alloc.is_indexed(last) && !alloc.make_private(last) {
                new_len -= new_len % block_size;
            }
        }
        let keep = new_len.div_ceil(block_size);
        for b in self.blocks.drain(keep.min(self.blocks.len())..) {
            alloc.release(b);
        }
        self.len = new_len;
        new_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reserve_fails_atomically() {
        let mut a = BlockAllocator::new(2, 16);
        let mut t = BlockTable::default();
        assert!(matches!(t.reserve(33, 16, &mut a), Err(Error::KvFull { needed: 3, free: 2 })));
        assert_eq!(a.n_free(), 2);
        t.reserve(32, 16, &mut a).unwrap();
        assert_eq!((t.blocks.len(), a.n_free()), (2, 0));
        t.free(&mut a);
        assert_eq!(a.n_free(), 2);
    }

    fn toks(first: u32) -> Vec<u32> {
        (first..first + 4).collect()
    }

    #[test]
    fn shared_blocks_are_counted_and_cached_after_release() {
        let mut a = BlockAllocator::new(4, 4);
        let b0 = a.alloc().unwrap();
        assert!(a.register(b0, 7, 0, &toks(0)));
        assert_eq!(a.lookup(7, 0, &toks(0)), Some(b0));
        assert_eq!(a.lookup(7, 1, &toks(0)), None, "another parent is a miss");
        assert_eq!(a.lookup(7, 0, &toks(1)), None, "other tokens are a miss");
        a.retain(b0);
        assert_eq!((a.refs(b0), a.stats().used), (2, 1));
        a.release(b0);
        a.release(b0);
        // unheld but cached: free to take, still found
        assert_eq!(a.stats(), KvStats { total: 4, used: 0, free: 4, cached: 1, pinned: 0 });
        assert_eq!(a.lookup(7, 0, &toks(0)), Some(b0));
        a.retain(b0);
        assert_eq!(a.stats(), KvStats { total: 4, used: 1, free: 3, cached: 0, pinned: 0 });
        a.release(b0);
    }

    #[test]
    fn eviction_takes_empty_blocks_first_then_the_oldest_cached() {
        let mut a = BlockAllocator::new(3, 4);
        let blocks: Vec<u32> = (0..3).map(|_| a.alloc().unwrap()).collect();
        for (i, &b) in blocks.iter().enumerate() {
            assert!(a.register(b, i as u64, 0, &toks(i as u32)));
        }
        a.release(blocks[1]);
        a.release(blocks[0]);
        // blocks[1] was released first: evicted first
        assert_eq!(a.alloc().unwrap(), blocks[1]);
        assert_eq!(a.lookup(1, 0, &toks(1)), None);
        assert_eq!(a.lookup(0, 0, &toks(0)), Some(blocks[0]));
        assert_eq!(a.alloc().unwrap(), blocks[0]);
        assert!(a.alloc().is_err());
        assert_eq!(a.n_indexed(), 1);
    }

    #[test]
    fn pinned_blocks_survive_pressure() {
        let mut a = BlockAllocator::new(4, 4);
        let b = a.alloc().unwrap();
        assert!(!a.pin(b), "only indexed blocks can be pinned");
        a.register(b, 9, 0, &toks(0));
        assert!(a.pin(b));
        a.release(b);
        assert_eq!(a.stats(), KvStats { total: 4, used: 0, free: 3, cached: 0, pinned: 1 });
        let taken: Vec<u32> = (0..3).map(|_| a.alloc().unwrap()).collect();
        assert!(!taken.contains(&b) && a.alloc().is_err());
        assert_eq!(a.lookup(9, 0, &toks(0)), Some(b));
        // half the pool at most
        a.register(taken[0], 10, 0, &toks(1));
        a.register(taken[1], 11, 0, &toks(2));
        assert!(a.pin(taken[0]));
        assert!(!a.pin(taken[1]));
    }

    #[test]
    fn truncate_never_writes_into_a_shared_block() {
        let mut a = BlockAllocator::new(4, 4);
        let mut t = BlockTable::default();
        t.reserve(8, 4, &mut a).unwrap();
        t.len = 8;
        a.register(t.blocks[1], 5, 0, &toks(4));
        let mut other = BlockTable::default();
        other.push_cached(t.blocks[1], 4, &mut a);
        // the second block is shared: cut before it
        assert_eq!(t.truncate(6, 4, &mut a), 4);
        assert_eq!((t.blocks.len(), a.refs(other.blocks[0])), (1, 1));
        // held by `other` alone: it may overwrite it, and the cache forgets it
        other.len = 4;
        assert_eq!(other.truncate(2, 4, &mut a), 2);
        assert!(!a.is_indexed(other.blocks[0]));
    }

    proptest! {
        #[test]
        fn no_block_is_handed_out_twice(ops in proptest::collection::vec((0usize..4, 0usize..40), 1..60)) {
            let mut a = BlockAllocator::new(24, 16);
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

        /// Sequences sharing cached prefixes: references always equal the number of tables
        /// holding each block, and every block is in exactly one state.
        #[test]
        fn refcounts_match_holders(ops in proptest::collection::vec((0usize..4, 0u32..3, 0usize..3), 1..80)) {
            const BS: usize = 4;
            let mut a = BlockAllocator::new(10, BS);
            let mut tables = vec![BlockTable::default(); 4];
            for (seq, prefix, op) in ops {
                let t = &mut tables[seq];
                match op {
                    0 => t.free(&mut a),
                    1 => {
                        // start over on a prefix: take its cached block or compute (allocate
                        // and register) it
                        t.free(&mut a);
                        let (hash, tokens) = (u64::from(prefix), toks(prefix));
                        match a.lookup(hash, 0, &tokens) {
                            Some(b) => t.push_cached(b, BS, &mut a),
                            None => {
                                if t.reserve(BS, BS, &mut a).is_ok() {
                                    t.len = BS;
                                    a.register(t.blocks[0], hash, 0, &tokens);
                                }
                            }
                        }
                    }
                    _ => {
                        if t.reserve(BS, BS, &mut a).is_ok() {
                            t.len += BS;
                        }
                    }
                }
                let mut held = [0u32; 10];
                for b in tables.iter().flat_map(|t| &t.blocks) {
                    held[*b as usize] += 1;
                }
                for b in 0..10u32 {
                    prop_assert_eq!(a.refs(b), held[b as usize]);
                }
                let s = a.stats();
                prop_assert_eq!(s.used, held.iter().filter(|&&n| n > 0).count());
                prop_assert_eq!(s.used + s.free, 10);
            }
            for t in &mut tables {
                t.free(&mut a);
            }
            prop_assert_eq!(a.stats().used, 0);
        }
    }
}
