//! GGUF reader: well-formed files built in the test read back exactly; corrupt ones (truncated at
//! every byte, lying offsets, absurd counts, unknown types, old versions) give a typed error that
//! names the file and the problem, never a panic.

use std::path::Path;

use edgellm::source::gguf::{GgufArray, GgufFile, GgufValue};
use edgellm::source::{DType, GgmlType, WeightSource};
use edgellm::{Error, ModelConfig};

/// Builds GGUF bytes. Values are raw (type id + payload) so that tests can write lies.
struct Gguf {
    version: u32,
    tensor_count: Option<u64>, // overrides the real count
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<Tensor>,
    alignment: u64,
}

struct Tensor {
    name: String,
    dims: Vec<u64>, // innermost first, as GGUF stores them
    type_id: u32,
    data: Vec<u8>,
    offset: Option<u64>, // overrides the computed offset
}

fn str_bytes(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend(s.as_bytes());
    b
}

fn array(elem_type: u32, count: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = elem_type.to_le_bytes().to_vec();
    b.extend(count.to_le_bytes());
    b.extend(payload);
    b
}

fn str_array(items: &[&str]) -> Vec<u8> {
    array(8, items.len() as u64, &items.iter().flat_map(|s| str_bytes(s)).collect::<Vec<_>>())
}

impl Gguf {
    fn new() -> Self {
        Gguf { version: 3, tensor_count: None, kv: Vec::new(), tensors: Vec::new(), alignment: 32 }
    }

    fn kv(mut self, key: &str, type_id: u32, payload: Vec<u8>) -> Self {
        self.kv.push((key.to_string(), type_id, payload));
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.kv(key, 4, v.to_le_bytes().to_vec())
    }

    fn kv_f32(self, key: &str, v: f32) -> Self {
        self.kv(key, 6, v.to_le_bytes().to_vec())
    }

    fn kv_str(self, key: &str, v: &str) -> Self {
        self.kv(key, 8, str_bytes(v))
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(Tensor { name: name.into(), dims: dims.to_vec(), type_id, data, offset: None });
        self
    }

    fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        self.tensor(name, dims, 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.tensor_count.unwrap_or(self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (key, ty, payload) in &self.kv {
            b.extend(str_bytes(key));
            b.extend(ty.to_le_bytes());
            b.extend(payload);
        }
        let align = |n: u64| n.div_ceil(self.alignment) * self.alignment;
        let mut offset = 0;
        for t in &self.tensors {
            b.extend(str_bytes(&t.name));
            b.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(t.type_id.to_le_bytes());
            b.extend(t.offset.unwrap_or(offset).to_le_bytes());
            offset = align(offset + t.data.len() as u64);
        }
        for t in &self.tensors {
            // pad to the data section, then between tensors; no padding after the last one
            b.resize(align(b.len() as u64) as usize, 0);
            b.extend(&t.data);
        }
        b
    }

    fn write(&self, dir: &tempfile::TempDir, name: &str) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }
}

/// A small valid file with one value of every type and two tensors.
fn sample() -> Gguf {
    let f16 = |x: f32| half::f16::from_f32(x).to_le_bytes();
    // one Q8_0 block: d = 0.5, q = -16..16
    let mut q8 = f16(0.5).to_vec();
    q8.extend((-16i8..16).map(|q| q as u8));
    Gguf::new()
        .kv_str("general.architecture", "llama")
        .kv("u8", 0, vec![200])
        .kv("i8", 1, vec![0xfe])
        .kv("u16", 2, 60000u16.to_le_bytes().to_vec())
        .kv("i16", 3, (-300i16).to_le_bytes().to_vec())
        .kv_u32("u32", 4_000_000_000)
        .kv("i32", 5, (-7i32).to_le_bytes().to_vec())
        .kv_f32("f32", 0.25)
        .kv("bool", 7, vec![1])
        .kv("u64", 10, (1u64 << 40).to_le_bytes().to_vec())
        .kv("i64", 11, (-(1i64 << 40)).to_le_bytes().to_vec())
        .kv("f64", 12, 1e300f64.to_le_bytes().to_vec())
        .kv("tokens", 9, str_array(&["a", "<|im_end|>", "ü"]))
        .kv("scores", 9, array(6, 2, &[1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat()))
        .kv("types", 9, array(5, 2, &[1i32.to_le_bytes(), 3i32.to_le_bytes()].concat()))
        .kv("nested", 9, array(9, 2, &[array(4, 1, &7u32.to_le_bytes()), str_array(&["x", "y"])].concat()))
        .f32_tensor("a", &[3, 2], &[1., 2., 3., 4., 5., 6.])
        .tensor("b", &[32], 8, q8)
}

fn open_err(path: &Path) -> Error {
    match GgufFile::open(path) {
        Ok(_) => panic!("{} opened but must fail", path.display()),
        Err(e) => e,
    }
}

/// Asserts the error is `Malformed` (or `Unsupported` when `unsupported`) and its message names
/// the file and contains `needle`.
fn assert_err(e: &Error, path: &Path, needle: &str, unsupported: bool) {
    let msg = e.to_string();
    let kind_ok = if unsupported {
        matches!(e, Error::Unsupported { .. })
    } else {
        matches!(e, Error::Malformed { format: "GGUF", .. })
    };
    assert!(kind_ok, "wrong error kind: {e:?}");
    assert!(msg.contains(&path.display().to_string()), "message does not name the file: {msg}");
    assert!(msg.contains(needle), "message lacks `{needle}`: {msg}");
}

#[test]
fn reads_every_value_type_and_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = sample().write(&dir, "ok.gguf");
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.data_offset() % 32, 0);
    assert_eq!(g.architecture(), Some("llama"));
    assert_eq!(g.get("u8"), Some(&GgufValue::U8(200)));
    assert_eq!(g.get("i8"), Some(&GgufValue::I8(-2)));
    assert_eq!(g.get_u64("u16"), Some(60000));
    assert_eq!(g.get_i64("i16"), Some(-300));
    assert_eq!(g.get_u64("u32"), Some(4_000_000_000));
    assert_eq!((g.get_i64("i32"), g.get_u64("i32")), (Some(-7), None));
    assert_eq!(g.get_f32("f32"), Some(0.25));
    assert_eq!(g.get_bool("bool"), Some(true));
    assert_eq!(g.get_u64("u64"), Some(1 << 40));
    assert_eq!(g.get_i64("i64"), Some(-(1 << 40)));
    assert_eq!(g.get("f64").and_then(GgufValue::as_f64), Some(1e300));
    assert_eq!(g.get_str("general.architecture"), Some("llama"));
    assert_eq!(g.get_str("u32"), None, "wrong type reads as absent");
    assert_eq!(g.get_str_array("tokens").unwrap(), ["a", "<|im_end|>", "ü"]);
    assert_eq!(g.get_f32_array("scores").unwrap(), [1.5, -2.0]);
    assert_eq!(g.get_i32_array("types").unwrap(), [1, 3]);
    let nested = g.get_array("nested").unwrap().as_arrays().unwrap();
    assert_eq!(nested[0], GgufArray::U32(vec![7]));
    assert_eq!(nested[1].as_strs().unwrap(), ["x", "y"]);
    assert_eq!(g.get("nested").unwrap().type_name(), "array<array<u32>>");

    let a = g.tensor_info("a").unwrap();
    assert_eq!((a.shape.clone(), a.dtype), (vec![2, 3], DType::Ggml(GgmlType::F32)));
    assert_eq!(g.read_f32("a").unwrap(), [1., 2., 3., 4., 5., 6.]);
    assert_eq!(g.read_raw("a").unwrap().len(), 24);
    let b = g.read_f32("b").unwrap();
    assert_eq!(b, (-16..16).map(|q| q as f32 * 0.5).collect::<Vec<_>>());
    assert_eq!(g.tensor_infos().len(), 2);
    assert!(matches!(g.read_f32("c"), Err(Error::MissingTensor { .. })));
}

#[test]
fn version_2_and_custom_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = sample().kv_u32("general.alignment", 256);
    gguf.version = 2;
    gguf.alignment = 256;
    let g = GgufFile::open(gguf.write(&dir, "v2.gguf")).unwrap();
    assert_eq!((g.version(), g.alignment(), g.data_offset() % 256), (2, 256, 0));
    assert_eq!(g.read_f32("a").unwrap()[5], 6.0);
}

#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = sample().bytes();
    let path = dir.path().join("cut.gguf");
    for len in 0..bytes.len() {
        std::fs::write(&path, &bytes[..len]).unwrap();
        let e = open_err(&path);
        assert!(matches!(e, Error::Malformed { .. }), "cut at {len}: {e:?}");
        assert!(e.to_string().contains("cut.gguf"), "cut at {len}: {e}");
    }
    std::fs::write(&path, &bytes).unwrap();
    GgufFile::open(&path).unwrap();
}

#[test]
fn truncated_metadata_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = Gguf::new().kv_str("general.architecture", "llama").bytes();
    let path = dir.path().join("t.gguf");
    std::fs::write(&path, &bytes[..40]).unwrap(); // inside the first key
    assert_err(
        &open_err(&path),
        &path,
        "metadata key #0: string length 20 at offset 24 exceeds the 8 bytes left",
        false,
    );
    std::fs::write(&path, &bytes[..60]).unwrap(); // inside its value
    assert_err(&open_err(&path), &path, "metadata `general.architecture`: truncated", false);
}

#[test]
fn tensor_offset_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = sample();
    gguf.tensors[1].offset = Some(1 << 20);
    let path = gguf.write(&dir, "offset.gguf");
    assert_err(&open_err(&path), &path, "tensor `b`", false);
    assert_err(&open_err(&path), &path, "claims bytes 1048576..+34", false);
    // an offset so large that offset + size overflows
    gguf.tensors[1].offset = Some(u64::MAX - 31);
    let path = gguf.write(&dir, "offset2.gguf");
    assert_err(&open_err(&path), &path, "tensor `b`", false);
}

#[test]
fn empty_tensor_before_a_missing_data_section() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Gguf::new().tensor("e", &[0], 0, vec![]).bytes();
    bytes.truncate(bytes.len() - 1); // infos end 1 byte short of the aligned data section
    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, &bytes).unwrap();
    assert_err(&open_err(&path), &path, "data section starts at", false);
    let path = Gguf::new().tensor("e", &[0], 0, vec![]).write(&dir, "empty_ok.gguf");
    let g = GgufFile::open(&path).unwrap();
    assert!(g.read_f32("e").unwrap().is_empty());
}

#[test]
fn unknown_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let path = Gguf::new().tensor("w", &[4], 99, vec![0; 16]).write(&dir, "type.gguf");
    assert_err(&open_err(&path), &path, "tensor type id 99 of tensor `w`", true);
}

#[test]
fn absurd_string_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = Gguf::new().kv("s", 8, (1u64 << 60).to_le_bytes().to_vec()).write(&dir, "str.gguf");
    assert_err(&open_err(&path), &path, "string length 1152921504606846976", false);
    assert_err(&open_err(&path), &path, "metadata `s`", false);
    // a key whose length is absurd
    let mut bytes = Gguf::new().kv_u32("k", 1).bytes();
    bytes[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let path = dir.path().join("key.gguf");
    std::fs::write(&path, bytes).unwrap();
    assert_err(&open_err(&path), &path, "metadata key #0: string length", false);
}

#[test]
fn absurd_array_counts() {
    let dir = tempfile::tempdir().unwrap();
    for (elem_type, name) in [(4u32, "u32"), (8, "string"), (9, "array"), (0, "u8"), (7, "bool")] {
        let path =
            Gguf::new().kv("a", 9, array(elem_type, 1 << 60, &[])).write(&dir, &format!("{name}.gguf"));
        assert_err(&open_err(&path), &path, "array count 1152921504606846976", false);
    }
    // counts that fit the file but not once multiplied by the element size
    let path = Gguf::new().kv("a", 9, array(10, u64::MAX / 4, &[0; 64])).write(&dir, "mul.gguf");
    assert_err(&open_err(&path), &path, "array count", false);
    // a nested element lying about its count
    let inner = array(8, 1 << 40, &[]);
    let path = Gguf::new().kv("a", 9, array(9, 1, &inner)).write(&dir, "nested.gguf");
    assert_err(&open_err(&path), &path, "element 0: array count 1099511627776", false);
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut value = array(4, 0, &[]);
    for _ in 0..1000 {
        value = array(9, 1, &value);
    }
    let path = Gguf::new().kv("deep", 9, value).write(&dir, "deep.gguf");
    assert_err(&open_err(&path), &path, "nested deeper than", false);
}

#[test]
fn absurd_tensor_and_metadata_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = sample();
    gguf.tensor_count = Some(1 << 60);
    let path = gguf.write(&dir, "tcount.gguf");
    assert_err(&open_err(&path), &path, "tensor count 1152921504606846976", false);
    gguf.tensor_count = Some(1000); // fits 24-byte infos? no: the file is far smaller
    let path = gguf.write(&dir, "tcount2.gguf");
    assert_err(&open_err(&path), &path, "tensor count 1000", false);
    let mut bytes = sample().bytes();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    let path = dir.path().join("kvcount.gguf");
    std::fs::write(&path, bytes).unwrap();
    assert_err(&open_err(&path), &path, "metadata count 18446744073709551615", false);
}

#[test]
fn overflowing_and_bad_dims() {
    let dir = tempfile::tempdir().unwrap();
    let big = 1u64 << 32;
    let path = Gguf::new().tensor("w", &[big, big, big], 0, vec![]).write(&dir, "dims.gguf");
    assert_err(&open_err(&path), &path, "`w` dims [4294967296, 4294967296, 4294967296] overflow", false);
    // element count fits, byte count does not
    let path = Gguf::new().tensor("w", &[1 << 32, 1 << 31], 0, vec![]).write(&dir, "bytes.gguf");
    assert_err(&open_err(&path), &path, "overflow", false);
    let path = Gguf::new().tensor("w", &[1, 1, 1, 1, 1], 0, vec![0; 4]).write(&dir, "ndims.gguf");
    assert_err(&open_err(&path), &path, "5 dims", false);
    let path = Gguf::new().tensor("w", &[33], 8, vec![0; 68]).write(&dir, "row.gguf");
    assert_err(&open_err(&path), &path, "not a multiple of the Q8_0 block size 32", false);
}

#[test]
fn old_and_foreign_versions() {
    let dir = tempfile::tempdir().unwrap();
    let mut gguf = sample();
    gguf.version = 1;
    let path = gguf.write(&dir, "v1.gguf");
    assert_err(&open_err(&path), &path, "GGUF version 1", true);
    gguf.version = 3u32.swap_bytes();
    let path = gguf.write(&dir, "be.gguf");
    assert_err(&open_err(&path), &path, "big-endian", true);
    gguf.version = 4;
    let path = gguf.write(&dir, "v4.gguf");
    assert_err(&open_err(&path), &path, "GGUF version 4", true);
    let mut bytes = sample().bytes();
    bytes[..4].copy_from_slice(b"GGML");
    let path = dir.path().join("magic.gguf");
    std::fs::write(&path, bytes).unwrap();
    assert_err(&open_err(&path), &path, "bad magic", false);
}

#[test]
fn other_lies() {
    let dir = tempfile::tempdir().unwrap();
    let path = Gguf::new().kv("x", 13, vec![0; 8]).write(&dir, "vtype.gguf");
    assert_err(&open_err(&path), &path, "unknown metadata value type 13", false);
    let path = Gguf::new().kv_u32("x", 1).kv_u32("x", 2).write(&dir, "dupkey.gguf");
    assert_err(&open_err(&path), &path, "`x` appears twice", false);
    let path = sample().kv_u32("general.alignment", 48).write(&dir, "align.gguf");
    assert_err(&open_err(&path), &path, "general.alignment", false);
    let mut gguf = sample();
    gguf.tensors[1].offset = Some(8);
    let path = gguf.write(&dir, "misaligned.gguf");
    assert_err(&open_err(&path), &path, "not a multiple of the alignment 32", false);
    let not_utf8 = [2u64.to_le_bytes().as_slice(), &[0xff, 0xfe]].concat();
    let path = Gguf::new().kv("s", 8, not_utf8).write(&dir, "utf8.gguf");
    assert_err(&open_err(&path), &path, "UTF-8", false);
    let path =
        Gguf::new().f32_tensor("w", &[1], &[1.0]).f32_tensor("w", &[1], &[1.0]).write(&dir, "dup.gguf");
    assert_err(&open_err(&path), &path, "tensor `w` appears twice", false);
}

/// The metadata of a minimal model of architecture `arch`.
fn model(arch: &str) -> Gguf {
    let k = |s: &str| format!("{arch}.{s}");
    Gguf::new()
        .kv_str("general.architecture", arch)
        .kv_u32(&k("block_count"), 2)
        .kv_u32(&k("context_length"), 128)
        .kv_u32(&k("embedding_length"), 64)
        .kv_u32(&k("feed_forward_length"), 128)
        .kv_u32(&k("attention.head_count"), 4)
        .kv_u32(&k("attention.head_count_kv"), 2)
        .kv_f32(&k("attention.layer_norm_rms_epsilon"), 1e-5)
        .kv("tokenizer.ggml.tokens", 9, str_array(&["<s>", "</s>", "<|eot_id|>", "a"]))
        .kv_u32("tokenizer.ggml.bos_token_id", 0)
        .kv_u32("tokenizer.ggml.eos_token_id", 1)
}

#[test]
fn config_from_synthetic_llama() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(model("llama").write(&dir, "llama.gguf")).unwrap();
    let c = ModelConfig::from_gguf(&g).unwrap();
    assert_eq!((c.head_dim, c.vocab_size, c.rope_theta), (16, 4, 10_000.0));
    assert_eq!(c.eos_token_ids, [1, 2]);
    assert!(c.tie_word_embeddings && !c.attention_bias && c.rope_scaling.is_none());

    let g = model("llama")
        .kv_str("llama.rope.scaling.type", "linear")
        .kv_f32("llama.rope.scaling.factor", 4.0)
        .f32_tensor("output.weight", &[1], &[0.0]);
    let c = ModelConfig::from_gguf(&GgufFile::open(g.write(&dir, "lin.gguf")).unwrap()).unwrap();
    assert_eq!(c.rope_scaling, Some(edgellm::config::RopeScaling::Linear { factor: 4.0 }));
    assert!(!c.tie_word_embeddings);

    let g = model("llama").kv_str("llama.rope.scaling.type", "yarn");
    let e = ModelConfig::from_gguf(&GgufFile::open(g.write(&dir, "yarn.gguf")).unwrap()).unwrap_err();
    assert!(e.to_string().contains("`yarn` is not supported"), "{e}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(model("mamba").write(&dir, "mamba.gguf")).unwrap();
    let e = ModelConfig::from_gguf(&g).unwrap_err();
    assert!(matches!(e, Error::UnsupportedArchitecture { .. }), "{e:?}");
    assert!(e.to_string().contains("`mamba`") && e.to_string().contains("gemma3"), "{e}");

    let mut g = model("qwen2");
    g.kv.retain(|(k, _, _)| k != "qwen2.block_count");
    let g = GgufFile::open(g.write(&dir, "nolayers.gguf")).unwrap();
    let e = ModelConfig::from_gguf(&g).unwrap_err().to_string();
    assert!(e.contains("qwen2.block_count") && e.contains("missing"), "{e}");

    let mut g = model("qwen3");
    g.kv.retain(|(k, _, _)| k != "qwen3.attention.head_count");
    let g = g.kv_str("qwen3.attention.head_count", "four");
    let e = ModelConfig::from_gguf(&GgufFile::open(g.write(&dir, "type.gguf")).unwrap()).unwrap_err();
    assert!(e.to_string().contains("qwen3.attention.head_count") && e.to_string().contains("string"), "{e}");
}
