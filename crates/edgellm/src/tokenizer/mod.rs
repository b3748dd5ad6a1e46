//! Text ↔ token ids, and chat messages → prompt text.
//!
//! [`Tokenizer`] wraps an HF `tokenizers` tokenizer, loaded from a `tokenizer.json` (with the
//! `tokenizer_config.json`, `generation_config.json` and `chat_template.jinja` beside it) or rebuilt
//! from a GGUF file's metadata ([`GgufVocab`]), and knows what the engine needs besides the
//! vocabulary: BOS and whether to add it, every end-of-generation id, and the chat template.
//! [`DecodeStream`] turns generated ids into text one id at a time without splitting a UTF-8
//! character; [`ChatTemplate`] renders a model's Jinja chat template over [`ChatMessage`]s.
//!
//! Whatever the source, [`Tokenizer::save`] writes HF files (`tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`, `chat_template.jinja`) that
//! [`Tokenizer::from_file`] reads back to the same tokenizer: that is what an engine package stores.

pub mod chat_template;
mod gguf_vocab;
mod stream;

use std::collections::HashSet;
use std::path::Path;

use serde_json::Value;

pub use chat_template::{ChatMessage, ChatTemplate, FunctionCall, MessageContent, ToolCall};
pub use gguf_vocab::GgufVocab;
pub(crate) use gguf_vocab::END_OF_GENERATION;
pub use stream::DecodeStream;

use crate::source::gguf::GgufFile;
use crate::{Error, Result};

/// A tokenizer with the special-token facts the engine needs. Cheap to share behind an `Arc`;
/// every method takes `&self`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    n_vocab: usize,
    bos_id: Option<u32>,
    /// BOS is prepended by hand with `add_special` (when the post-processor does not do it itself).
    prepend_bos: bool,
    adds_bos: bool,
    eos_ids: Vec<u32>,
    special_ids: HashSet<u32>,
    /// Per id, whether it is a byte-fallback piece (`<0xE6>`); empty without byte fallback.
    byte_pieces: Vec<bool>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("n_vocab", &self.n_vocab)
            .field("bos_id", &self.bos_id)
            .field("adds_bos", &self.adds_bos)
            .field("eos_ids", &self.eos_ids)
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .finish()
    }
}

/// What `tokenizer_config.json` and `generation_config.json` add to a `tokenizer.json`.
#[derive(Debug, Default)]
struct SideConfig {
    bos_token: Option<String>,
    eos_token: Option<String>,
    add_bos_token: Option<bool>,
    chat_template: Option<String>,
    generation_eos_ids: Vec<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`, plus, from the same directory when present, `tokenizer_config.json`
    /// (BOS/EOS tokens, `add_bos_token`, `chat_template`), `generation_config.json`
    /// (`eos_token_id`, one id or a list) and `chat_template.jinja` (preferred over the config's).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let side = SideConfig::read(dir)?;
        Self::from_hf(inner, side)
    }

    /// Parses a `tokenizer.json` held in memory, with no side files: no BOS/EOS facts beyond what the
    /// post-processor does, no chat template.
    pub fn from_json_str(json: &str) -> Result<Self> {
        let inner: tokenizers::Tokenizer =
            json.parse().map_err(|e| Error::Tokenizer(format!("tokenizer.json: {e}")))?;
        Self::from_hf(inner, SideConfig::default())
    }

    /// Rebuilds the tokenizer a GGUF file's metadata describes, chat template included.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        Self::from_gguf_vocab(&GgufVocab::from_gguf(file)?)
    }

    /// Rebuilds the tokenizer a GGUF vocabulary describes (see [`GgufVocab`]).
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self> {
        let inner = gguf_vocab::build(vocab)?;
        let mut tokenizer = Self::assemble(inner, vocab.bos_id, vocab.eos_ids(), vocab.chat_template.clone());
        tokenizer.adds_bos = vocab.adds_bos();
        Ok(tokenizer)
    }

    /// A stand-in vocabulary of `n_vocab` word-level tokens (`t0`, `t1`, …; text is the pieces
    /// joined by spaces) for models without a tokenizer, such as synthetic benchmark weights: the
    /// engine can stream and detokenize any id, and `eos_ids` end generation as usual.
    pub fn synthetic(n_vocab: usize, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Result<Self> {
        let vocab: serde_json::Map<String, Value> =
            (0..n_vocab).map(|i| (format!("t{i}"), Value::from(i as u64))).collect();
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "WhitespaceSplit"},
            "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
        });
        let inner: tokenizers::Tokenizer =
            json.to_string().parse().map_err(|e| Error::Tokenizer(format!("synthetic tokenizer: {e}")))?;
        Ok(Self::assemble(inner, bos_id, eos_ids, None))
    }

    fn from_hf(inner: tokenizers::Tokenizer, side: SideConfig) -> Result<Self> {
        let id = |token: &Option<String>| token.as_deref().and_then(|t| inner.token_to_id(t));
        let bos_id = id(&side.bos_token);
        let mut eos_ids: Vec<u32> = id(&side.eos_token).into_iter().collect();
        for eos in side.generation_eos_ids {
            if !eos_ids.contains(&eos) {
                eos_ids.push(eos);
            }
        }
        let mut tokenizer = Self::assemble(inner, bos_id, eos_ids, side.chat_template);
        // The post-processor may add BOS itself; `add_bos_token` asks for it when it does not.
        let by_post = tokenizer.raw_encode("", true)?;
        let post_adds_bos = bos_id.is_some_and(|b| by_post.first() == Some(&b));
        tokenizer.prepend_bos = side.add_bos_token == Some(true) && bos_id.is_some() && !post_adds_bos;
        tokenizer.adds_bos = post_adds_bos || tokenizer.prepend_bos;
        Ok(tokenizer)
    }

    fn assemble(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
        chat_template: Option<String>,
    ) -> Self {
        let added = inner.get_added_tokens_decoder();
        let special_ids = added.iter().filter(|(_, t)| t.special).map(|(&id, _)| id).collect();
        let n_vocab = inner.get_vocab(true).values().max().map_or(0, |&m| m as usize + 1);
        let byte_fallback = serde_json::to_string(&inner.get_decoder())
            .is_ok_and(|decoder| decoder.contains("\"ByteFallback\""));
        let byte_pieces = if byte_fallback {
            (0..n_vocab as u32).map(|id| inner.id_to_token(id).is_some_and(|t| is_byte_piece(&t))).collect()
        } else {
            Vec::new()
        };
        Tokenizer {
            inner,
            n_vocab,
            bos_id,
            prepend_bos: false,
            adds_bos: false,
            eos_ids,
            special_ids,
            byte_pieces,
            chat_template,
        }
    }

    /// Whether `id` is a byte-fallback piece that the decoder joins with its neighbours.
    pub(crate) fn is_byte_piece(&self, id: u32) -> bool {
        self.byte_pieces.get(id as usize).copied().unwrap_or(false)
    }

    fn raw_encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their ids.
    /// With `add_special`, BOS (and whatever else the model's post-processor adds) is added when the
    /// model wants it; see [`Tokenizer::adds_bos`].
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let mut ids = self.raw_encode(text, add_special)?;
        if add_special && self.prepend_bos {
            if let Some(bos) = self.bos_id {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; with `skip_special`, special tokens (BOS, `<|im_end|>`) are left out.
    /// An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.n_vocab) {
            return Err(Error::Tokenizer(format!(
                "decode: id {bad} outside the vocabulary of {}",
                self.n_vocab
            )));
        }
        self.inner.decode(ids, skip_special).map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    /// Starts an incremental decode of generated ids (see [`DecodeStream`]).
    pub fn decode_stream(&self, skip_special: bool) -> DecodeStream {
        DecodeStream::new(skip_special)
    }

    /// The vocabulary's spelling of a token (`Ġworld`, `▁world`, `<0x0A>`, `<|im_end|>`), or `None`
    /// for an id outside the vocabulary. Use [`Tokenizer::decode`] for its text.
    pub fn token_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token spelled as the vocabulary spells it.
    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Number of ids: one more than the largest, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.n_vocab
    }

    /// The BOS id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether `encode(.., add_special = true)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.adds_bos
    }

    /// Every id that ends generation (EOS first, then end-of-turn tokens and the like).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether `id` ends generation.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// Whether `id` is a special (control) token, which `decode(.., skip_special = true)` drops.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The model's own chat template (Jinja source), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The model's chat template compiled, with `bos_token`/`eos_token` set from this tokenizer;
    /// `None` when the model has no template.
    pub fn chat_template_renderer(&self) -> Result<Option<ChatTemplate>> {
        let Some(source) = &self.chat_template else { return Ok(None) };
        let token = |id: Option<u32>| id.and_then(|id| self.token_to_piece(id));
        let template = ChatTemplate::new(source)?
            .with_special_tokens(token(self.bos_id), token(self.eos_ids.first().copied()));
        Ok(Some(template))
    }

    /// The HF `tokenizer.json` of this tokenizer (also for one rebuilt from GGUF).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| Error::Tokenizer(format!("serializing tokenizer.json: {e}")))
    }

    /// Writes `tokenizer.json`, `tokenizer_config.json` (BOS/EOS tokens, `add_bos_token`),
    /// `generation_config.json` (`eos_token_id`: every EOS id) and, when the model has one,
    /// `chat_template.jinja` into `dir`, which [`Tokenizer::from_file`] reads back.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| Error::io(path, e))
        };
        write("tokenizer.json", &self.to_json()?)?;
        let token = |id: Option<u32>| id.and_then(|id| self.token_to_piece(id));
        let config = serde_json::json!({
            "bos_token": token(self.bos_id),
            "eos_token": token(self.eos_ids.first().copied()),
            // The exported post-processor already adds BOS when the model wants it.
            "add_bos_token": self.prepend_bos,
        });
        let generation = serde_json::json!({ "eos_token_id": self.eos_ids });
        let pretty = |v: &Value| serde_json::to_string_pretty(v).expect("a JSON value serializes");
        write("tokenizer_config.json", &pretty(&config))?;
        write("generation_config.json", &pretty(&generation))?;
        if let Some(template) = &self.chat_template {
            write("chat_template.jinja", template)?;
        }
        Ok(())
    }

    /// The wrapped HF tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

impl SideConfig {
    fn read(dir: &Path) -> Result<Self> {
        let mut side = SideConfig::default();
        if let Some(config) = read_json(&dir.join("tokenizer_config.json"))? {
            side.bos_token = token_field(&config["bos_token"]);
            side.eos_token = token_field(&config["eos_token"]);
            side.add_bos_token = config["add_bos_token"].as_bool();
            side.chat_template = template_field(&config["chat_template"]);
        }
        if let Some(generation) = read_json(&dir.join("generation_config.json"))? {
            side.generation_eos_ids = match &generation["eos_token_id"] {
                Value::Number(n) => n.as_u64().map(|id| id as u32).into_iter().collect(),
                Value::Array(ids) => ids.iter().filter_map(Value::as_u64).map(|id| id as u32).collect(),
                _ => Vec::new(),
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            side.chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
        }
        Ok(side)
    }
}

/// `<0xHH>`: a byte-fallback piece, as the `ByteFallback` decoder recognises one.
fn is_byte_piece(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && u8::from_str_radix(&token[3..5], 16).is_ok()
}

/// A JSON file's value, `None` when the file does not exist.
fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::malformed(path, "JSON", e.to_string()))
}

/// A special-token field of `tokenizer_config.json`: a string, or an `AddedToken` object.
fn token_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// `chat_template` of `tokenizer_config.json`: a string, or a list of `{name, template}` of which
/// the one named `default` (else the first) is the chat template.
fn template_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => {
            let named = |name: &str| list.iter().find(|t| t["name"].as_str() == Some(name));
            named("default").or(list.first())?["template"].as_str().map(str::to_string)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_field_picks_default() {
        let list = serde_json::json!([
            {"name": "tool_use", "template": "T"},
            {"name": "default", "template": "D"},
        ]);
        assert_eq!(template_field(&list).as_deref(), Some("D"));
        assert_eq!(template_field(&serde_json::json!("S")).as_deref(), Some("S"));
        assert_eq!(template_field(&Value::Null), None);
    }

    #[test]
    fn token_field_reads_added_token_objects() {
        assert_eq!(
            token_field(&serde_json::json!({"content": "<s>", "lstrip": false})).as_deref(),
            Some("<s>")
        );
        assert_eq!(token_field(&serde_json::json!("</s>")).as_deref(), Some("</s>"));
        assert_eq!(token_field(&Value::Null), None);
    }
}
