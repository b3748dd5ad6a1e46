//! Incremental detokenization for streaming: generated ids go in one at a time, newly completed text
//! comes out, and the concatenation of everything emitted (with [`DecodeStream::finish`]) equals
//! `decode(all ids)`.
//!
//! A token can end in the middle of a UTF-8 character (byte-level pieces, `<0xE6>` byte-fallback
//! pieces), and some decoders treat the first token of a text specially (SentencePiece strips its
//! leading space). So the stream decodes a short window of recent ids and emits only the part past
//! what the window already produced, holding back text that ends in U+FFFD — an incomplete
//! character — and runs of byte-fallback pieces, which the decoder validates only as a whole run.
//! The window restarts after every emission, so each step costs a few tokens, not the whole text.

use super::Tokenizer;
use crate::Result;

/// The state of one streamed decode. It does not borrow the tokenizer: pass the same
/// [`Tokenizer`] to every call.
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    skip_special: bool,
    /// Ids since the window start; `ids[..read]` have been emitted.
    ids: Vec<u32>,
    read: usize,
    /// `decode(ids[..read])`.
    prefix_text: String,
}

impl DecodeStream {
    /// A stream that leaves special tokens out when `skip_special`.
    pub fn new(skip_special: bool) -> Self {
        DecodeStream { skip_special, ..Default::default() }
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        if id as usize >= tokenizer.vocab_size() {
            // A row of the model's padded vocabulary that no token spells (the LM head is often
            // wider than the tokenizer): it has no text, as HF tokenizers decode it.
            return Ok(None);
        }
        self.ids.push(id);
        if self.skip_special && tokenizer.is_special(id) {
            // Invisible to the decoder: it changes no text and does not end a byte run.
            return Ok(None);
        }
        if tokenizer.is_byte_piece(id) {
            return Ok(None);
        }
        let text = tokenizer.decode(&self.ids, self.skip_special)?;
        if text.len() <= self.prefix_text.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(delta) = text.strip_prefix(self.prefix_text.as_str()) else {
            // The decoder rewrote text it already produced; wait for more ids.
            return Ok(None);
        };
        let delta = delta.to_string();
        self.ids.drain(..self.read);
        self.read = self.ids.len();
        self.prefix_text = tokenizer.decode(&self.ids, self.skip_special)?;
        Ok(Some(delta))
    }

    /// Emits whatever is held back (an incomplete character becomes U+FFFD, as `decode` writes it)
    /// and resets the stream.
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let text = tokenizer.decode(&self.ids, self.skip_special)?;
        let prefix = std::mem::take(&mut self.prefix_text);
        self.ids.clear();
        self.read = 0;
        let common = common_prefix_len(&text, &prefix);
        Ok(if text.len() > common { Some(text[common..].to_string()) } else { None })
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` that ends on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

#[cfg(test)]
mod tests {
    use super::common_prefix_len;

    #[test]
    fn common_prefix_respects_char_boundaries() {
        assert_eq!(common_prefix_len("abc", "abd"), 2);
        assert_eq!(common_prefix_len("ab", "abc"), 2);
        assert_eq!(common_prefix_len("é", "è"), 0);
        assert_eq!(common_prefix_len("", "x"), 0);
    }
}
