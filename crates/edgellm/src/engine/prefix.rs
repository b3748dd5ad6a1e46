//! The engine's side of prefix caching, on top of [`crate::kv`]'s block bookkeeping: a new
//! sequence takes the longest run of its leading full blocks that the cache holds
//! ([`Engine::attach_cached_prefix`]) and computes only the rest; after each forward pass the
//! blocks that filled up are offered to the cache ([`Engine::register_full_blocks`]), pinned when
//! the sequence asked to save its system prompt. Everything here is host-side: block tables,
//! reference counts and hashes, the same for every KV storage.

use super::{Engine, Prompt, Sequence};
use crate::kv::prefix::{block_hash, ROOT_HASH};
use crate::kv::KvStats;
use crate::tokenizer::ChatMessage;
use crate::Result;

/// What the prefix cache holds of a sequence's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefixHit {
    /// Leading full blocks found.
    pub blocks: usize,
    /// Of those, how many nobody holds now (taking them uses up free blocks).
    pub unheld: usize,
}

impl Sequence {
    /// The chain hash of full block `i` (hashes of earlier blocks are computed and kept first).
    fn block_hash(&mut self, i: usize, block_size: usize) -> u64 {
        while self.block_hashes.len() <= i {
            let j = self.block_hashes.len();
            let parent = self.parent_hash(j);
            let hash = block_hash(parent, &self.tokens[j * block_size..(j + 1) * block_size]);
            self.block_hashes.push(hash);
        }
        self.block_hashes[i]
    }

    fn parent_hash(&self, i: usize) -> u64 {
        if i == 0 {
            ROOT_HASH
        } else {
            self.block_hashes[i - 1]
        }
    }

    /// Full blocks that may come from the cache: never the one holding the last token, which
    /// must be computed for its logits.
    fn cacheable_blocks(&self, block_size: usize) -> usize {
        (self.tokens.len() - 1) / block_size
    }

    /// Keeps the KV of the first `n_tokens` tokens (in whole blocks) in the cache for good once
    /// computed: TensorRT-Edge-LLM's saved system prompt. At most half the KV pool is pinned;
    /// beyond that the blocks are cached like any others.
    pub fn pin_prefix(&mut self, n_tokens: usize) {
        self.pin_tokens = n_tokens.min(self.n_prompt);
    }
}

impl Engine {
    /// Block counts: used, free, cached, pinned.
    pub fn kv_stats(&self) -> KvStats {
        self.alloc.stats()
    }

    /// How much of `seq`'s tokens the prefix cache holds, without taking it.
    pub fn cached_prefix(&self, seq: &mut Sequence) -> PrefixHit {
        let mut hit = PrefixHit::default();
        if seq.prefix_attached {
            return hit;
        }
        let bs = self.cfg.kv_block_size;
        for i in 0..seq.cacheable_blocks(bs) {
            let hash = seq.block_hash(i, bs);
            let Some(block) = self.alloc.lookup(hash, seq.parent_hash(i), &seq.tokens[i * bs..(i + 1) * bs])
            else {
                break;
            };
            hit.blocks += 1;
            hit.unheld += usize::from(self.alloc.is_unheld(block));
        }
        hit
    }

    /// Makes `seq` hold the longest cached prefix of its tokens, which then counts as computed;
    /// returns the tokens reused. Done once per run of a sequence; [`Engine::step`] does it for
    /// sequences that have not.
    pub fn attach_cached_prefix(&mut self, seq: &mut Sequence) -> usize {
        if seq.prefix_attached {
            return 0;
        }
        seq.prefix_attached = true;
        let bs = self.cfg.kv_block_size;
        debug_assert!(seq.table.blocks.is_empty(), "attach to a sequence that holds blocks");
        for i in 0..seq.cacheable_blocks(bs) {
            let hash = seq.block_hash(i, bs);
            let tokens = &seq.tokens[i * bs..(i + 1) * bs];
            let Some(block) = self.alloc.lookup(hash, seq.parent_hash(i), tokens) else { break };
            seq.table.push_cached(block, bs, &mut self.alloc);
            if (i + 1) * bs <= seq.pin_tokens {
                self.alloc.pin(block);
            }
        }
        let reused = seq.table.len;
        seq.n_cached = reused;
        seq.n_registered = seq.table.blocks.len();
        // a preempted sequence recomputing its KV reports the reuse of its first run
        seq.n_reused.get_or_insert(reused);
        reused
    }

    /// Offers the blocks of `seq` that filled up since the last call to the prefix cache.
    pub(super) fn register_full_blocks(&mut self, seq: &mut Sequence) {
        let bs = self.cfg.kv_block_size;
        let full = seq.n_cached / bs;
        while seq.n_registered < full {
            let i = seq.n_registered;
            let hash = seq.block_hash(i, bs);
            let block = seq.table.blocks[i];
            self.alloc.register(block, hash, seq.parent_hash(i), &seq.tokens[i * bs..(i + 1) * bs]);
            if (i + 1) * bs <= seq.pin_tokens {
                self.alloc.pin(block);
            }
            seq.n_registered += 1;
        }
    }

    /// KV blocks the next [`Engine::step`] over `seqs` would take from the pool: the same
    /// oldest-first split of `max_batch_tokens` that the step makes.
    pub fn kv_blocks_for_step<'a>(&self, seqs: impl IntoIterator<Item = &'a Sequence>) -> usize {
        let mut budget = self.cfg.max_batch_tokens;
        let mut blocks = 0;
        for seq in seqs {
            if budget == 0 {
                break;
            }
            let take = seq.step_tokens(budget);
            blocks += seq.table.blocks_needed(take, self.cfg.kv_block_size);
            budget -= take;
        }
        blocks
    }

    /// Tokens at the start of `prompt` that its system messages render to (0 for a prompt that
    /// is not a chat or has no leading system message): what `pin_prefix` saves for
    /// TensorRT-Edge-LLM's `save_system_prompt_kv_cache`.
    pub fn system_prompt_len(&self, prompt: &Prompt, ids: &[u32]) -> Result<usize> {
        let Prompt::Chat(messages) = prompt else { return Ok(0) };
        let n_system = messages.iter().take_while(|m| m.role == "system").count();
        let Some(template) = self.template.as_ref().filter(|_| n_system > 0) else { return Ok(0) };
        let system: &[ChatMessage] = &messages[..n_system];
        let text = template.render(system, false, None)?;
        let system_ids = self.tokenizer.encode(&text, false)?;
        Ok(system_ids.iter().zip(ids).take_while(|(a, b)| a == b).count())
    }
}

impl Engine {
    /// KV blocks `seq` still has to take from the pool before its next token is sampled and
    /// stored: its uncomputed tokens plus one position, less what the prefix cache gives a
    /// sequence that has not run yet (cached blocks nobody holds count, as taking them uses up
    /// free blocks).
    pub fn kv_blocks_to_continue(&self, seq: &mut Sequence) -> usize {
        let bs = self.cfg.kv_block_size;
        if seq.prefix_attached {
            return seq.table.blocks_needed(seq.tokens.len() - seq.n_cached + 1, bs);
        }
        let hit = self.cached_prefix(seq);
        (seq.tokens.len() + 1).div_ceil(bs) - hit.blocks + hit.unheld
    }
}
