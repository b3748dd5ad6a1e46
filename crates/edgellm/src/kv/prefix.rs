//! The prefix index: which pool blocks hold the KV of which token prefix.
//!
//! A full block is named by a chain hash, `block_hash(parent, tokens)`, where `parent` is the
//! hash of the block before it ([`ROOT_HASH`] for the first): equal hashes mean equal whole
//! prefixes, so a new sequence can take over every leading block of another sequence's prompt
//! whose chain matches, without copying. The index keeps each block's parent hash and tokens and
//! checks them on lookup, so a 64-bit hash collision is a miss, not wrong KV.
//!
//! Only bookkeeping lives here: it never touches the KV storage, so it serves any backend.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// The parent hash of a sequence's first block.
pub const ROOT_HASH: u64 = 0x6564_6765_6c6c_6d00;

/// The chain hash of a full block of `tokens` that follows the block hashed `parent`.
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: deterministic within a process, which is all the index needs
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
pub(super) struct PrefixIndex {
    by_hash: HashMap<u64, u32>,
    /// Per block: whether it is indexed, its hash and its parent's.
    indexed: Vec<bool>,
    hash: Vec<u64>,
    parent: Vec<u64>,
    /// Per block: the tokens it holds, `[n_blocks, block_size]`.
    tokens: Vec<u32>,
    block_size: usize,
}

impl PrefixIndex {
    pub(super) fn new(n_blocks: usize, block_size: usize) -> Self {
        PrefixIndex {
            // twice the most entries it can hold, so that inserting after removals rehashes in
            // place rather than growing: a decode step allocates nothing
            by_hash: HashMap::with_capacity(2 * n_blocks + 1),
            indexed: vec![false; n_blocks],
            hash: vec![0; n_blocks],
            parent: vec![0; n_blocks],
            tokens: vec![0; n_blocks * block_size],
            block_size,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub(super) fn contains(&self, block: u32) -> bool {
        self.indexed[block as usize]
    }

    fn block_tokens(&self, block: u32) -> &[u32] {
        let start = block as usize * self.block_size;
        &self.tokens[start..start + self.block_size]
    }

    /// The block holding `tokens` after the prefix hashed `parent`, if any.
    pub(super) fn lookup(&self, hash: u64, parent: u64, tokens: &[u32]) -> Option<u32> {
        let &block = self.by_hash.get(&hash)?;
        (self.parent[block as usize] == parent && self.block_tokens(block) == tokens).then_some(block)
    }

    /// Indexes `block` under `hash`. `false` when another block already holds that prefix (two
    /// sequences computed it at once): `block` then stays private.
    pub(super) fn insert(&mut self, block: u32, hash: u64, parent: u64, tokens: &[u32]) -> bool {
        debug_assert_eq!(tokens.len(), self.block_size);
        if self.contains(block) || self.by_hash.contains_key(&hash) {
            return false;
        }
        let b = block as usize;
        self.by_hash.insert(hash, block);
        self.indexed[b] = true;
        self.hash[b] = hash;
        self.parent[b] = parent;
        self.tokens[b * self.block_size..(b + 1) * self.block_size].copy_from_slice(tokens);
        true
    }

    /// Forgets `block` (evicted, or about to be overwritten).
    pub(super) fn remove(&mut self, block: u32) {
        let b = block as usize;
        if self.indexed[b] {
            self.by_hash.remove(&self.hash[b]);
            self.indexed[b] = false;
        }
    }
}
