//! Tokenizer against reference ids: the tiny fixtures' `tokenizer.json` and the real Qwen2.5 and
//! Gemma 3 GGUF vocabularies (reference ids from HF transformers), plus streaming detokenization.

mod common;

use common::ids;

use std::sync::OnceLock;
use std::time::Instant;

use edgellm::source::gguf::GgufFile;
use edgellm::tokenizer::Tokenizer;
use edgellm::ModelConfig;
use proptest::prelude::*;
use serde_json::Value;

/// The tokenizer of a pulled GGUF model, timing its construction.
fn load_gguf(name: &str) -> Option<Tokenizer> {
    let file = GgufFile::open(common::model_gguf(name)?).unwrap();
    let start = Instant::now();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    eprintln!("{name}: tokenizer built from GGUF metadata in {:?}", start.elapsed());
    Some(tokenizer)
}

const QWEN: &str = "qwen2.5-coder-0.5b-instruct";
const GEMMA: &str = "gemma-3-270m";

fn qwen() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| load_gguf(QWEN)).as_ref()
}

fn gemma() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| load_gguf(GEMMA)).as_ref()
}

fn golden(name: &str) -> Value {
    common::read_json(common::shared_dir().join("golden").join(name).join("golden.json"))
}

/// Every `tokenizer_cases` entry (no special tokens added) and every case's `prompt_ids`.
fn check_golden(tokenizer: &Tokenizer, golden: &Value) {
    for case in golden["tokenizer_cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(tokenizer.encode(text, false).unwrap(), ids(&case["ids"]), "tokenizer case {text:?}");
        assert_eq!(tokenizer.decode(&ids(&case["ids"]), false).unwrap(), text, "decode of {text:?}");
    }
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["prompt_ids"]);
        assert_eq!(tokenizer.encode(text, true).unwrap(), expected, "case {}", case["name"]);
        let body = if tokenizer.adds_bos() { &expected[1..] } else { &expected[..] };
        assert_eq!(tokenizer.decode(body, false).unwrap(), text, "decode of case {}", case["name"]);
    }
}

const TINY: [&str; 4] = ["tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"];

fn tiny(name: &str) -> Tokenizer {
    Tokenizer::from_file(common::shared_dir().join("fixtures").join(name).join("tokenizer.json")).unwrap()
}

#[test]
fn tiny_fixtures_prompt_ids() {
    for name in TINY {
        let tokenizer = tiny(name);
        let golden = common::read_json(common::shared_dir().join("fixtures").join(name).join("golden.json"));
        for case in golden["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let expected = ids(&case["prompt_ids"]);
            assert_eq!(tokenizer.encode(text, true).unwrap(), expected, "{name} case {}", case["name"]);
            assert_eq!(tokenizer.decode(&expected, false).unwrap(), text, "{name} decode");
        }
        // tokenizer_config.json: eos `<|im_end|>`, no BOS; generation_config.json: eos 2.
        assert_eq!(tokenizer.eos_ids(), &[2], "{name}");
        assert_eq!(tokenizer.bos_id(), None);
        assert!(!tokenizer.adds_bos());
        assert!(tokenizer.is_special(1) && !tokenizer.is_special(46));
        assert!(tokenizer.chat_template().is_some(), "{name}: chat_template.jinja");
        assert_eq!(tokenizer.vocab_size(), 509);
    }
}

#[test]
fn qwen_gguf_matches_reference_ids() {
    let Some(tokenizer) = qwen() else { return };
    check_golden(tokenizer, &golden(QWEN));
}

#[test]
fn qwen_gguf_special_tokens() {
    let Some(t) = qwen() else { return };
    assert_eq!(t.vocab_size(), 151_936);
    assert_eq!(t.eos_ids(), &[151_645, 151_643]);
    assert!(!t.adds_bos());
    assert_eq!(t.encode("<|im_start|>", true).unwrap(), vec![151_644]);
    assert!(t.is_special(151_644) && t.is_special(151_645) && !t.is_special(8948));
    // User-defined tokens are one id too, but text: decoding with skip_special keeps them.
    assert_eq!(t.encode("<tool_call>", false).unwrap(), vec![151_657]);
    assert!(!t.is_special(151_657));
    assert_eq!(t.decode(&[151_644, 151_657, 151_645], true).unwrap(), "<tool_call>");
    assert_eq!(t.token_to_piece(12_095).as_deref(), t.hf().id_to_token(12_095).as_deref());
    assert!(t.chat_template().unwrap().contains("<|im_start|>"));
}

#[test]
fn gemma_gguf_matches_reference_ids() {
    let Some(tokenizer) = gemma() else { return };
    check_golden(tokenizer, &golden(GEMMA));
}

#[test]
fn perplexity_texts_have_the_reference_token_counts() {
    if let Some(t) = qwen() {
        let text = std::fs::read_to_string(
            common::shared_dir().join("golden").join(QWEN).join("ppl-apache-1024.txt"),
        )
        .unwrap();
        // golden.json: "over exactly the tokens of ppl-apache-1024.txt (1,024 tokens)".
        assert_eq!(t.encode(&text, false).unwrap().len(), 1024);
    }
    if let Some(t) = gemma() {
        let text =
            std::fs::read_to_string(common::shared_dir().join("golden").join(GEMMA).join("ppl-apache.txt"))
                .unwrap();
        let start = Instant::now();
        let ids = t.encode(&text, true).unwrap();
        eprintln!("gemma: {} bytes -> {} tokens in {:?}", text.len(), ids.len(), start.elapsed());
        // Cut to 1,023 tokens after BOS for the reference: the text has at least that many.
        assert!(ids.len() >= 1024 && ids[0] == 2);
        assert_eq!(t.decode(&ids[1..], false).unwrap(), text);
    }
}

#[test]
fn gemma_gguf_special_tokens() {
    let Some(t) = gemma() else { return };
    assert_eq!(t.vocab_size(), 262_144);
    assert_eq!(t.bos_id(), Some(2));
    assert!(t.adds_bos());
    assert_eq!(t.encode("Hi", true).unwrap()[0], 2);
    assert_eq!(t.eos_ids(), &[1, 106]);
    assert!(t.is_special(2) && t.is_special(105) && !t.is_special(107));
    assert_eq!(t.decode(&[2, 9259, 1], true).unwrap(), "Hello");
    // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes and back.
    let text = "\u{10FFFD}x";
    let ids = t.encode(text, false).unwrap();
    assert!(ids.len() >= 4, "{ids:?}");
    assert_eq!(t.decode(&ids, false).unwrap(), text);
    assert_eq!(t.chat_template(), None);
}

#[test]
fn gguf_tokenizer_agrees_with_model_config() {
    for name in [QWEN, GEMMA] {
        let Some(path) = common::model_gguf(name) else { continue };
        let file = GgufFile::open(path).unwrap();
        let config = ModelConfig::from_gguf(&file).unwrap();
        let tokenizer = if name == QWEN { qwen() } else { gemma() }.unwrap();
        assert_eq!(tokenizer.eos_ids(), config.eos_token_ids, "{name}");
        assert_eq!(tokenizer.bos_id(), config.bos_token_id, "{name}");
        assert_eq!(tokenizer.vocab_size(), config.vocab_size, "{name}");
    }
}

#[test]
fn gguf_tokenizers_survive_tokenizer_json() {
    for (name, tokenizer) in [(QWEN, qwen()), (GEMMA, gemma())] {
        let Some(tokenizer) = tokenizer else { continue };
        let dir = tempfile::tempdir().unwrap();
        tokenizer.save(dir.path()).unwrap();
        let start = Instant::now();
        let reloaded = Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        eprintln!("{name}: tokenizer.json loaded in {:?}", start.elapsed());
        check_golden(&reloaded, &golden(name));
        assert_eq!(reloaded.eos_ids(), tokenizer.eos_ids(), "{name}");
        assert_eq!(reloaded.bos_id(), tokenizer.bos_id(), "{name}");
        assert_eq!(reloaded.adds_bos(), tokenizer.adds_bos(), "{name}");
        assert_eq!(reloaded.chat_template(), tokenizer.chat_template(), "{name}");
        assert_eq!(reloaded.vocab_size(), tokenizer.vocab_size(), "{name}");
    }
}

// --- streaming ---

/// Feeds `ids` one by one; returns the concatenated deltas and checks none splits a character.
fn stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut stream = tokenizer.decode_stream(skip_special);
    let mut out = String::new();
    for &id in ids {
        if let Some(delta) = stream.step(tokenizer, id).unwrap() {
            out.push_str(&delta);
        }
    }
    if let Some(rest) = stream.finish(tokenizer).unwrap() {
        out.push_str(&rest);
    }
    out
}

#[test]
fn stream_emits_whole_characters() {
    let tokenizer = tiny("tiny-qwen2");
    let text = "Grüße aus 東京 🚀🔥 — naïve";
    let ids = tokenizer.encode(text, false).unwrap();
    let mut stream = tokenizer.decode_stream(false);
    let mut deltas = Vec::new();
    for &id in &ids {
        deltas.extend(stream.step(&tokenizer, id).unwrap());
    }
    assert_eq!(stream.finish(&tokenizer).unwrap(), None);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(deltas.concat(), text);
}

/// The stream's text equals `decode` of the ids that have a token: ids past the tokenizer's
/// vocabulary (the padded rows of a wider LM head, which a model can generate) have no text.
fn check_stream(tokenizer: &Tokenizer, ids: &[u32], skip_special: bool) -> Result<(), TestCaseError> {
    let known: Vec<u32> = ids.iter().copied().filter(|&id| (id as usize) < tokenizer.vocab_size()).collect();
    let whole = tokenizer.decode(&known, skip_special).unwrap();
    prop_assert_eq!(stream(tokenizer, ids, skip_special), whole);
    Ok(())
}

/// No failure files: integration tests have no `lib.rs` for proptest to put them beside.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    // The tiny models' LM heads have 512 rows for a 509-token vocabulary.
    fn stream_equals_decode_tiny(ids in prop::collection::vec(0u32..512, 0..48), skip in any::<bool>()) {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        check_stream(T.get_or_init(|| tiny("tiny-qwen2")), &ids, skip)?;
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn stream_equals_decode_qwen(ids in prop::collection::vec(0u32..151_936, 0..32), skip in any::<bool>()) {
        if let Some(t) = qwen() {
            check_stream(t, &ids, skip)?;
        }
    }

    #[test]
    fn stream_equals_decode_gemma(
        // Mostly byte-fallback pieces (238..494) to exercise partial characters, plus any id.
        ids in prop::collection::vec(prop_oneof![238u32..494, 0u32..262_144], 0..32),
        skip in any::<bool>(),
    ) {
        if let Some(t) = gemma() {
            check_stream(t, &ids, skip)?;
        }
    }
}
