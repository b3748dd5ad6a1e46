//! The model: weights laid out for the runtime (fused QKV, fused gate/up) and the batch-first
//! forward pass. One call runs any mix of prefill and decode tokens from any number of
//! sequences: tokens are flattened to `[n_tokens, hidden]` and carry their own position and
//! sequence; only the rows listed in `logit_rows` go through the LM head.

mod arch;
mod load;
mod names;
mod rope;
mod transformer;

pub use arch::ArchSpec;
pub use load::LoadOptions;
pub(crate) use load::{Globals, Loader};
pub use names::{tensor_name, Key, Scheme};
pub(crate) use transformer::Layer;
pub use transformer::{Model, Scratch};

/// One step's tokens, flattened across sequences.
#[derive(Debug, Clone, Copy)]
pub struct ForwardBatch<'a> {
    /// Token ids, `n_tokens` of them.
    pub tokens: &'a [u32],
    /// Position of each token in its sequence.
    pub positions: &'a [u32],
    /// Sequence index (into the block tables) of each token.
    pub token_seq: &'a [u32],
    /// All sequences' block tables, concatenated.
    pub block_table_data: &'a [u32],
    /// Sequence `s`'s table is `block_table_data[offsets[s]..offsets[s + 1]]`.
    pub block_table_offsets: &'a [u32],
    /// Token indices whose logits are wanted, in output order.
    pub logit_rows: &'a [u32],
}
