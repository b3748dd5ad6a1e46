//! Rebuilding an HF `tokenizers` tokenizer from the vocabulary a GGUF file carries in its metadata.
//!
//! A GGUF file has no `tokenizer.json`: it stores the tokens, their types, and either BPE merges
//! (`tokenizer.ggml.model` = `gpt2`, byte-level) or SentencePiece scores (`llama`). [`GgufVocab`]
//! holds those keys; [`build`] assembles the same tokenizer HF transformers builds from them
//! (`integrations/ggml.py`), because the reference token ids were produced that way:
//!
//! - `gpt2`: byte-level BPE with the file's merges, cut first by the pre-tokenizer regex that
//!   `tokenizer.ggml.pre` names (`qwen2`, `llama-bpe`, …).
//! - `llama`: a BPE with byte fallback whose merges are derived from the vocabulary — every split of
//!   a token into two tokens is a merge — ranked by score, or, for Gemma's vocabulary (recognised by
//!   its runs of literal spaces), by vocabulary position.
//!
//! Control tokens (type 3) become special added tokens, so that `<|im_start|>` in a prompt is one
//! id and `decode(.., skip_special)` drops them. User-defined tokens (type 4) of a byte-level
//! vocabulary (Qwen's `<tool_call>`) become plain added tokens — one id, but text that decoding
//! keeps, as in the model's own `tokenizer.json`; Gemma's (whitespace runs, `<b>`) are left to the
//! merges, as the reference conversion leaves them.

use rayon::prelude::*;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::source::gguf::GgufFile;
use crate::{Error, Result};

/// GGUF token type of a control token (`<|im_start|>`, `<bos>`).
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF token type of a user-defined token (`<tool_call>`, Gemma's whitespace runs).
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The tokenizer keys of a GGUF file's metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece-style).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer's name (`qwen2`, `llama-bpe`, `default`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte); empty when absent.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores`; empty when absent (required for `llama`).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges` as `"left right"`; empty when absent (required for `gpt2`).
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn).
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id` (end of message).
    pub eom_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// Token texts that end generation wherever they appear in a vocabulary, as in llama.cpp's
/// end-of-generation scan (`llama-vocab.cpp`). Qwen2.5 instruct stops at `<|im_end|>` and at
/// `<|endoftext|>`; Gemma at `<eos>` and `<end_of_turn>`; Llama 3 at `<|eot_id|>` and
/// `<|eom_id|>`. `ModelConfig::from_gguf` uses the same list, so config and tokenizer agree.
pub(crate) const END_OF_GENERATION: [&str; 12] = [
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

impl GgufVocab {
    /// Reads the tokenizer keys of a GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let bad = |key: &str, what: &str| Error::malformed(file.path(), "GGUF", format!("{key}: {what}"));
        let id = |key: &str| -> Result<Option<u32>> {
            match file.get(key) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| bad(key, "not a token id")),
            }
        };
        let strings = |key: &str| file.get_str_array(key).map(<[String]>::to_vec).unwrap_or_default();
        let token_types = match file.get_array("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(array) => match array.as_i32s() {
                Some(types) => types.to_vec(),
                None => (0..array.len())
                    .map(|i| array.get(i).and_then(|v| v.as_i64()).map(|t| t as i32))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("tokenizer.ggml.token_type", "not an integer array"))?,
            },
        };
        let vocab = GgufVocab {
            model: file
                .get_str("tokenizer.ggml.model")
                .ok_or_else(|| bad("tokenizer.ggml.model", "missing"))?
                .into(),
            pre: file.get_str("tokenizer.ggml.pre").map(str::to_string),
            tokens: strings("tokenizer.ggml.tokens"),
            token_types,
            scores: file.get_f32_array("tokenizer.ggml.scores").map(<[f32]>::to_vec).unwrap_or_default(),
            merges: strings("tokenizer.ggml.merges"),
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            eot_id: id("tokenizer.ggml.eot_token_id")?,
            eom_id: id("tokenizer.ggml.eom_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token"),
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token"),
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix"),
            chat_template: file.get_str("tokenizer.chat_template").map(str::to_string),
        };
        if !vocab.token_types.is_empty() && vocab.token_types.len() != vocab.tokens.len() {
            return Err(bad("tokenizer.ggml.token_type", "length differs from tokenizer.ggml.tokens"));
        }
        Ok(vocab)
    }

    /// Whether encoding with special tokens prepends BOS: the file's flag, else llama.cpp's default
    /// (yes for SentencePiece vocabularies, no for byte-level ones).
    pub fn adds_bos(&self) -> bool {
        self.add_bos.unwrap_or(self.model == "llama") && self.bos_id.is_some()
    }

    /// Every id that ends generation: EOS, EOT, EOM, then the tokens llama.cpp treats as end of
    /// generation (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, …), in vocabulary order.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = Vec::new();
        let named = self.tokens.iter().enumerate().filter(|(_, t)| END_OF_GENERATION.contains(&t.as_str()));
        let named = named.map(|(id, _)| id as u32);
        for id in [self.eos_id, self.eot_id, self.eom_id].into_iter().flatten().chain(named) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The token text of `id`, if in range.
    pub fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|id| self.tokens.get(id as usize)).map(String::as_str)
    }

    fn token_type(&self, id: usize) -> i32 {
        self.token_types.get(id).copied().unwrap_or(1)
    }
}

/// Builds the HF tokenizer a GGUF vocabulary describes (see the module docs).
pub fn build(vocab: &GgufVocab) -> Result<tokenizers::Tokenizer> {
    if vocab.tokens.is_empty() {
        return Err(Error::Tokenizer("GGUF metadata has no tokenizer.ggml.tokens".into()));
    }
    let mut tokenizer = match vocab.model.as_str() {
        "gpt2" => byte_level_bpe(vocab)?,
        "llama" => sentencepiece_bpe(vocab)?,
        other => {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer.ggml.model `{other}` is not supported; supported: gpt2, llama"
            )))
        }
    };
    if let Some(post) = bos_eos_template(vocab)? {
        tokenizer.with_post_processor(Some(post));
    }
    Ok(tokenizer)
}

/// The post-processor that adds BOS (and EOS when the file asks) with `add_special_tokens`.
fn bos_eos_template(vocab: &GgufVocab) -> Result<Option<PostProcessorWrapper>> {
    let add_eos = vocab.add_eos.unwrap_or(false);
    if !vocab.adds_bos() && !add_eos {
        return Ok(None);
    }
    let mut specials = Vec::new();
    let bos = vocab.bos_id.zip(vocab.token(vocab.bos_id)).filter(|_| vocab.adds_bos());
    let (mut single, mut pair) = match bos {
        Some((id, bos)) => {
            specials.push((bos.to_string(), id));
            (format!("{bos}:0 "), format!("{bos}:0 $A:0 {bos}:1 "))
        }
        None => (String::new(), "$A:0 ".to_string()),
    };
    single.push_str("$A:0");
    pair.push_str("$B:1");
    if let (true, Some(id), Some(eos)) = (add_eos, vocab.eos_id, vocab.token(vocab.eos_id)) {
        single.push_str(&format!(" {eos}:0"));
        pair.push_str(&format!(" {eos}:1"));
        if !specials.iter().any(|(t, _)| t == eos) {
            specials.push((eos.to_string(), id));
        }
    }
    let template = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| Error::Tokenizer(format!("BOS/EOS template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::Tokenizer(format!("BOS/EOS template: {e}")))?;
    Ok(Some(PostProcessorWrapper::Template(template)))
}

// --- byte-level BPE (`gpt2`) ---

/// Pre-tokenizer regex of Qwen2 (`tokenizer.ggml.pre` = `qwen2`): like Llama 3's but one digit per
/// chunk.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Pre-tokenizer regex of Llama 3 (`llama-bpe`): up to three digits per chunk.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a `tokenizer.ggml.pre` name; `None` means GPT-2's own, which `ByteLevel`
/// applies by itself.
fn pre_split_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
            Some(LLAMA3_SPLIT)
        }
        _ => None,
    }
}

/// Whether a byte is printable Latin-1, which GPT-2's byte-level alphabet keeps as itself.
fn printable_latin1(b: u32) -> bool {
    (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
}

/// Whether `c` is in GPT-2's byte-level alphabet: a printable Latin-1 char, or one of the 68 chars
/// from U+0100 standing for the other bytes.
pub(crate) fn is_byte_level_char(c: char) -> bool {
    printable_latin1(c as u32) || (0x100..0x144).contains(&(c as u32))
}

/// GPT-2's byte → printable-char table: bytes that are printable Latin-1 map to themselves, the
/// rest to U+0100 onwards, in byte order.
pub(crate) fn byte_level_chars() -> [char; 256] {
    let printable = printable_latin1;
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).expect("byte-level chars are below U+0200");
    }
    table
}

fn byte_level_bpe(vocab: &GgufVocab) -> Result<tokenizers::Tokenizer> {
    if vocab.merges.is_empty() {
        return Err(Error::Tokenizer("GGUF gpt2 tokenizer without tokenizer.ggml.merges".into()));
    }
    let table = byte_level_chars();
    let in_alphabet = |token: &str| token.chars().all(is_byte_level_char);
    // llama.cpp writes tokens in GPT-2's byte-level spelling, except a few whose bytes do not
    // decode: respell those so that the merges, written byte-level, find them.
    let mut bpe_vocab = Vocab::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        let key = if in_alphabet(token) {
            token.clone()
        } else {
            token.bytes().map(|b| table[b as usize]).collect()
        };
        bpe_vocab.insert(key, id as u32);
    }
    let merges = vocab
        .merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("GGUF merge `{m}` is not `left right`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(format!("byte-level BPE from GGUF: {e}")))?;

    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    let pre: PreTokenizerWrapper = match vocab.pre.as_deref().and_then(pre_split_regex) {
        Some(regex) => {
            let split =
                Split::new(SplitPattern::Regex(regex.into()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| Error::Tokenizer(format!("pre-tokenizer regex: {e}")))?;
            PreSequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, false, true)));

    // User-defined tokens (`<tool_call>`) are matched whole too, but are text, not control.
    let (special, user) = added_tokens(vocab, |t| in_alphabet(t));
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);
    Ok(tokenizer)
}

/// Control tokens as special added tokens and user-defined ones as plain added tokens, both matched
/// on the raw text; `keep` filters out tokens the model's vocabulary spells differently.
fn added_tokens(vocab: &GgufVocab, keep: impl Fn(&str) -> bool) -> (Vec<AddedToken>, Vec<AddedToken>) {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (id, token) in vocab.tokens.iter().enumerate() {
        let kind = vocab.token_type(id);
        if token.is_empty() || !keep(token) {
            continue;
        }
        if kind == TOKEN_TYPE_CONTROL {
            special.push(AddedToken::from(token.clone(), true).normalized(false));
        } else if kind == TOKEN_TYPE_USER_DEFINED {
            user.push(AddedToken::from(token.clone(), false).normalized(false));
        }
    }
    (special, user)
}

// --- SentencePiece-style vocabulary (`llama`) ---

/// Gemma's giveaway: runs of spaces written as spaces, where SentencePiece writes `▁`.
fn is_gemma_vocabulary(tokens: &[String]) -> bool {
    tokens.iter().any(|t| t.contains(' ') && t.trim().is_empty())
}

/// A run of spaces as the model's BPE spells it (`▁▁▁`); other tokens unchanged.
fn respell_spaces(token: &str) -> String {
    if token.contains(' ') && token.trim().is_empty() {
        "▁".repeat(token.chars().count())
    } else {
        token.to_string()
    }
}

/// BPE merges derived from a vocabulary without merges: every split of a token into two tokens is
/// a merge producing it. Within one token, splits whose halves score higher come first; across
/// tokens, merges rank by the produced token's score or, with `rank_by_position`, by its id (Gemma's
/// scores are ranks with -1000 placeholders punched through them). Sorts are stable, so ties keep
/// vocabulary order — exactly as transformers' `GGUFTokenizerSkeleton` orders them. `index` maps each
/// token to its id (the last one, for duplicates).
pub(crate) fn derive_merges(
    tokens: &[String],
    scores: &[f32],
    rank_by_position: bool,
    index: &Vocab,
) -> Vec<(String, String)> {
    let desc = |a: f64, b: f64| b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal);
    let score = |id: u32| scores[id as usize] as f64;
    // One token's merges, in order; empty for a later duplicate (the first produced them already).
    let local = |(id, token): (usize, &String)| -> Vec<(u32, u32, f64)> {
        let last = index[token.as_str()];
        if last as usize != id && tokens[..id].contains(token) {
            return Vec::new();
        }
        let mut local: Vec<(u32, u32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(pos, _)| {
                let (left, right) = token.split_at(pos);
                Some((*index.get(left)?, *index.get(right)?))
            })
            .collect();
        local.sort_by(|a, b| desc(score(a.0), score(b.0)).then(desc(score(a.1), score(b.1))));
        let rank = if rank_by_position { -(last as f64) } else { score(last) };
        local.into_iter().map(|(l, r)| (l, r, rank)).collect()
    };
    let mut merges: Vec<(u32, u32, f64)> =
        tokens.par_iter().enumerate().map(local).collect::<Vec<_>>().into_iter().flatten().collect();
    merges.par_sort_by(|a, b| desc(a.2, b.2)); // stable
    merges.into_par_iter().map(|(l, r, _)| (tokens[l as usize].clone(), tokens[r as usize].clone())).collect()
}

/// Token → id, the last id for a duplicated token (as a Python dict built in order keeps it).
fn vocab_index(tokens: &[String]) -> Vocab {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        vocab.insert(token.clone(), id as u32);
    }
    vocab
}

fn sentencepiece_bpe(vocab: &GgufVocab) -> Result<tokenizers::Tokenizer> {
    if vocab.scores.len() != vocab.tokens.len() {
        return Err(Error::Tokenizer(format!(
            "GGUF llama tokenizer: {} scores for {} tokens",
            vocab.scores.len(),
            vocab.tokens.len()
        )));
    }
    let gemma = is_gemma_vocabulary(&vocab.tokens);
    let tokens: Vec<String> =
        if gemma { vocab.tokens.iter().map(|t| respell_spaces(t)).collect() } else { vocab.tokens.clone() };
    let bpe_vocab = vocab_index(&tokens);
    let merges = derive_merges(&tokens, &vocab.scores, gemma, &bpe_vocab);
    let mut builder = BPE::builder().vocab_and_merges(bpe_vocab, merges).fuse_unk(true).byte_fallback(true);
    if let Some(unk) = vocab.token(vocab.unk_id) {
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| Error::Tokenizer(format!("SentencePiece BPE from GGUF: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);

    let add_prefix_space = vocab.add_space_prefix.unwrap_or(true);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| Error::Tokenizer(format!("replace `{from}`: {e}")))
    };
    let mut decoders: Vec<DecoderWrapper> = if gemma {
        // Spaces become `▁` in the text itself; nothing is split before the BPE.
        tokenizer.with_normalizer(Some(replace(" ", "▁")?));
        vec![replace("▁", " ")?.into(), ByteFallback::new().into(), Fuse::new().into()]
    } else {
        let scheme = if add_prefix_space { PrependScheme::First } else { PrependScheme::Never };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
        vec![ByteFallback::new().into(), Fuse::new().into(), replace("▁", " ")?.into()]
    };
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));

    // Only control tokens are registered: user-defined ones (Gemma's whitespace runs, `<b>`) are
    // reached through the merges, as in the reference conversion.
    let (special, _) = added_tokens(vocab, |t| !gemma || respell_spaces(t) == t);
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_gpt2s() {
        let t = byte_level_chars();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0], 'Ā');
        let mut sorted = t.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
        assert!(t.iter().all(|&c| is_byte_level_char(c)));
        assert!(!is_byte_level_char(' ') && !is_byte_level_char('\u{144}'));
    }

    #[test]
    fn merges_follow_scores_then_piece_scores() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"].iter().map(|s| s.to_string()).collect();
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -3.0];
        let merges = derive_merges(&tokens, &scores, false, &vocab_index(&tokens));
        let pairs: Vec<(&str, &str)> = merges.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        // Ranked by the produced token's score; "abc"'s splits by their left piece: a (0) > ab (-1).
        assert_eq!(pairs, vec![("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c")]);
    }
}
