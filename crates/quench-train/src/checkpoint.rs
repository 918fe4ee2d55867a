//! Checkpoints: one self-describing file per epoch (recipe, counters, history, model,
//! optimizer and scheduler records), written atomically and verified by checksums on read.
//!
//! Why a small container of our own: burn's burnpack holds one record, but a resumable
//! checkpoint is several records plus metadata that must appear together or not at all. One
//! file renamed into place gives that atomicity; CRC32C per section turns a flipped byte into a
//! clear error instead of silently wrong weights.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"QUENCHCK";
const FORMAT: u32 = 1;
/// Prefix: magic, format, header length, header CRC.
const PREFIX_LEN: usize = 8 + 4 + 8 + 4;
/// A header larger than this is corrupt (it is a few KB of JSON in practice).
const MAX_HEADER: u64 = 16 << 20;
/// Checkpoint file extension.
pub const EXTENSION: &str = "qck";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O failed on the named file.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a quench checkpoint, is truncated or fails its checksum.
    #[error("checkpoint {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No checkpoint where one was expected.
    #[error("no checkpoint in {dir}")]
    NoneFound {
        /// The directory searched.
        dir: PathBuf,
    },
    /// Checkpoints exist but none can be read: resuming would silently restart the run.
    #[error(
        "no checkpoint in {dir} can be read, so the run cannot resume (move them away to \
         start over): {reasons}"
    )]
    AllDamaged {
        /// The directory searched.
        dir: PathBuf,
        /// Each file and why it was refused.
        reasons: String,
    },
}

/// serde's JSON writes a non-finite f64 as `null`; read it back as NaN (a metric that was not
/// measured) instead of refusing the whole checkpoint.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Metrics of one finished epoch, kept in every later checkpoint so a resumed run's summary
/// and TensorBoard history are complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Global optimizer steps after this epoch.
    pub step: u64,
    /// Mean training loss over the epoch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub train_accuracy: f64,
    /// Evaluation loss (validation split, or test set when there is none).
    #[serde(deserialize_with = "f64_or_nan")]
    pub eval_loss: f64,
    /// Evaluation accuracy.
    #[serde(deserialize_with = "f64_or_nan")]
    pub eval_accuracy: f64,
    /// Training samples per second during this epoch (excluding eval).
    #[serde(deserialize_with = "f64_or_nan")]
    pub samples_per_sec: f64,
}

/// Everything in a checkpoint except the tensor records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The recipe (TOML) that produced the run.
    pub experiment_toml: String,
    /// Completed epochs.
    pub epoch: usize,
    /// Completed optimizer steps.
    pub global_step: u64,
    /// One record per completed epoch.
    pub history: Vec<EpochRecord>,
    /// Version of quench that wrote it.
    pub quench_version: String,
    /// Named byte sections that follow the header, in order.
    pub sections: Vec<SectionInfo>,
    /// Learning-rate multiplier left by skipped non-finite batches (`train.on_nonfinite =
    /// "skip"` halves it per skip); 1 otherwise.
    #[serde(default = "one")]
    pub lr_factor: f64,
    /// Batches skipped for a non-finite loss so far.
    #[serde(default)]
    pub skipped_batches: u64,
}

fn one() -> f64 {
    1.0
}

/// Length and checksum of one section.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SectionInfo {
    /// `model`, `optimizer`, `scheduler`, …
    pub name: String,
    /// Byte length.
    pub len: u64,
    /// CRC32C of the bytes.
    pub crc32c: u32,
}

/// A checkpoint in memory: metadata plus its named sections.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Counters, recipe, history.
    pub meta: CheckpointMeta,
    /// `(name, bytes)` in file order.
    pub sections: Vec<(String, Vec<u8>)>,
}

impl Checkpoint {
    /// The bytes of the named section, if present.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
    }

    /// Serializes to the on-disk format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut meta = self.meta.clone();
        meta.sections = self
            .sections
            .iter()
            .map(|(name, b)| SectionInfo {
                name: name.clone(),
                len: b.len() as u64,
                crc32c: crc32c::crc32c(b),
            })
            .collect();
        // Serializing a struct of strings and numbers to JSON cannot fail.
        let header = serde_json::to_vec(&meta).unwrap_or_default();
        let body: usize = self.sections.iter().map(|(_, b)| b.len()).sum();
        let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + body);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&header).to_le_bytes());
        out.extend_from_slice(&header);
        for (_, b) in &self.sections {
            out.extend_from_slice(b);
        }
        out
    }

    /// Parses and verifies a checkpoint held in memory (`path` is for messages only).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let corrupt = |detail: String| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            detail,
        };
        let (meta, mut offset) = parse_header(bytes, bytes.len(), path)?;
        let mut sections = Vec::with_capacity(meta.sections.len().min(64));
        for s in &meta.sections {
            let left = (bytes.len() - offset) as u64;
            if s.len > left {
                return Err(corrupt(format!(
                    "section `{}` needs {} bytes, only {left} left (truncated file?)",
                    s.name, s.len
                )));
            }
            let data = &bytes[offset..offset + s.len as usize];
            if crc32c::crc32c(data) != s.crc32c {
                return Err(corrupt(format!("section `{}` checksum mismatch", s.name)));
            }
            sections.push((s.name.clone(), data.to_vec()));
            offset += s.len as usize;
        }
        if offset != bytes.len() {
            return Err(corrupt(format!(
                "{} unexpected trailing bytes",
                bytes.len() - offset
            )));
        }
        Ok(Self { meta, sections })
    }

    /// The verified metadata of the checkpoint file at `path`, reading only its prefix and
    /// header: what a caller needs to choose how to load it (its recipe, epoch, step), without
    /// reading the model and optimizer sections. The sections are verified by [`Self::read`].
    pub fn read_meta(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::open(path).map_err(io)?;
        let total = f.metadata().map_err(io)?.len() as usize;
        let mut head = vec![0u8; PREFIX_LEN.min(total)];
        f.read_exact(&mut head).map_err(io)?;
        // The header's length is in the prefix: read that much more when it is plausible
        // (`parse_header` reports why otherwise).
        if head.len() == PREFIX_LEN {
            let header_len = header_len(&head);
            if header_len <= MAX_HEADER && header_len <= (total - PREFIX_LEN) as u64 {
                let mut header = vec![0u8; header_len as usize];
                f.read_exact(&mut header).map_err(io)?;
                head.extend_from_slice(&header);
            }
        }
        parse_header(&head, total, path).map(|(meta, _)| meta)
    }

    /// True when the file at `path` starts with the checkpoint magic (it may still be damaged;
    /// [`Self::read`] verifies it).
    pub fn has_magic(path: &Path) -> Result<bool, CheckpointError> {
        let mut head = [0u8; 8];
        let mut f = File::open(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut got = 0;
        while got < head.len() {
            match f.read(&mut head[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(CheckpointError::Io {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Ok(got == head.len() && &head == MAGIC)
    }

    /// Reads and verifies a checkpoint file.
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let io = |source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io)?;
        Self::from_bytes(&bytes, path)
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<(), CheckpointError> {
        write_atomic(path, &self.to_bytes())
    }
}

/// The header length a checkpoint prefix (at least [`PREFIX_LEN`] bytes) claims.
fn header_len(prefix: &[u8]) -> u64 {
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&prefix[12..20]);
    u64::from_le_bytes(len8)
}

/// Verifies the prefix and header at the start of `bytes` (a file of `total` bytes; `bytes`
/// holds at least the prefix and header when they are valid) and returns the metadata and the
/// offset where the sections start.
fn parse_header(
    bytes: &[u8],
    total: usize,
    path: &Path,
) -> Result<(CheckpointMeta, usize), CheckpointError> {
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    if total < PREFIX_LEN || bytes.len() < PREFIX_LEN {
        return Err(corrupt(format!(
            "{total} bytes is shorter than the {PREFIX_LEN}-byte header"
        )));
    }
    if &bytes[..8] != MAGIC {
        return Err(corrupt("not a quench checkpoint (bad magic)".into()));
    }
    let format = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if format != FORMAT {
        return Err(corrupt(format!(
            "format version {format}, this quench reads {FORMAT}"
        )));
    }
    let header_len = header_len(bytes);
    let header_crc = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    let rest = (total - PREFIX_LEN) as u64;
    if header_len > MAX_HEADER || header_len > rest {
        return Err(corrupt(format!(
            "header claims {header_len} bytes, the file has {rest} after the prefix"
        )));
    }
    let end = PREFIX_LEN + header_len as usize;
    let header = bytes
        .get(PREFIX_LEN..end)
        .ok_or_else(|| corrupt("the header was not read whole".into()))?;
    if crc32c::crc32c(header) != header_crc {
        return Err(corrupt("header checksum mismatch".into()));
    }
    let meta: CheckpointMeta =
        serde_json::from_slice(header).map_err(|e| corrupt(format!("header is not valid: {e}")))?;
    Ok((meta, end))
}

/// Writes `bytes` to `path` so that `path` is either the old file or the complete new one:
/// write a temporary sibling, fsync it, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        write_with_test_hooks(&mut f, bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable; a failure to open a directory for sync is not fatal
        // on platforms that do not allow it.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        // Never leave a partial temporary behind (disk full, read-only directory).
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Bytes this process has written through [`write_atomic`], for the disk-full test hook.
static BYTES_WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes`, with two test-only hooks:
///
/// - `QUENCH_TEST_SLOW_WRITE_MS=MS` writes in small chunks with that many milliseconds between
///   them, so a kill test can land inside the write of a checkpoint;
/// - `QUENCH_TEST_FAIL_WRITE_AFTER_BYTES=N` makes the write fail like a full disk (`StorageFull`,
///   "No space left on device") once this process has written `N` bytes through
///   [`write_atomic`] in all, after writing the bytes that still fit — a partial file, as a real
///   full disk leaves.
fn write_with_test_hooks(f: &mut File, bytes: &[u8]) -> std::io::Result<()> {
    let env_u64 = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let mut bytes = bytes;
    let mut full = false;
    if let Some(limit) = env_u64("QUENCH_TEST_FAIL_WRITE_AFTER_BYTES") {
        let before = BYTES_WRITTEN.fetch_add(bytes.len() as u64, Ordering::SeqCst);
        let room = usize::try_from(limit.saturating_sub(before)).unwrap_or(usize::MAX);
        if room < bytes.len() {
            bytes = &bytes[..room];
            full = true;
        }
    }
    match env_u64("QUENCH_TEST_SLOW_WRITE_MS") {
        Some(ms) if ms > 0 => {
            for chunk in bytes.chunks(bytes.len().div_ceil(16).max(1)) {
                f.write_all(chunk)?;
                f.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
        _ => f.write_all(bytes)?,
    }
    if full {
        f.flush()?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "No space left on device (simulated by QUENCH_TEST_FAIL_WRITE_AFTER_BYTES)",
        ));
    }
    Ok(())
}

/// Proves `dir` can take new files by creating, writing and removing a probe file in it, so a
/// run fails before training rather than at its first checkpoint; the error names `dir`.
pub fn probe_writable(dir: &Path) -> Result<(), CheckpointError> {
    let probe = dir.join(format!(".quench-write-probe.{}", std::process::id()));
    let result = File::create(&probe).and_then(|mut f| {
        f.write_all(b"probe")?;
        f.sync_all()
    });
    let removed = fs::remove_file(&probe);
    result.and(removed).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::new(
            source.kind(),
            format!("directory is not writable: {source}"),
        ),
    })
}

/// The file name of the checkpoint after `epoch` completed epochs.
pub fn epoch_file_name(epoch: usize) -> String {
    format!("epoch-{epoch:05}.{EXTENSION}")
}

/// The file name of a language model's checkpoint after `iteration` optimizer steps.
pub fn iter_file_name(iteration: usize) -> String {
    format!("iter-{iteration:08}.{EXTENSION}")
}

/// Removes temporaries left in `dir` by a write that was killed (`.NAME.tmp-PID`); returns how
/// many. Only called by the run that owns `dir`, before it writes anything.
pub fn remove_stale_temporaries(dir: &Path) -> Result<usize, CheckpointError> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(0);
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(&format!(".{EXTENSION}.tmp-")) {
            fs::remove_file(entry.path()).map_err(|source| CheckpointError::Io {
                path: entry.path(),
                source,
            })?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Complete checkpoints in `dir`, oldest first (temporaries are ignored by name).
pub fn list_checkpoints(dir: &Path) -> Result<Vec<(usize, PathBuf)>, CheckpointError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `epoch-N` (classifiers) or `iter-N` (language models): one kind per run directory.
        let epoch = name
            .strip_prefix("epoch-")
            .or_else(|| name.strip_prefix("iter-"))
            .and_then(|r| r.strip_suffix(&format!(".{EXTENSION}")))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(epoch) = epoch {
            found.push((epoch, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The newest checkpoint in `dir` that reads back intact; corrupt newer files are reported
/// through `skipped` (path, reason) and passed over, so a damaged latest never blocks a resume
/// from the one before it.
pub fn latest_valid(
    dir: &Path,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<(PathBuf, Checkpoint), CheckpointError> {
    for (_, path) in list_checkpoints(dir)?.into_iter().rev() {
        match Checkpoint::read(&path) {
            Ok(c) => return Ok((path, c)),
            Err(e) => skipped.push((path, e.to_string())),
        }
    }
    if skipped.is_empty() {
        return Err(CheckpointError::NoneFound {
            dir: dir.to_path_buf(),
        });
    }
    Err(CheckpointError::AllDamaged {
        dir: dir.to_path_buf(),
        reasons: skipped
            .iter()
            .map(|(p, why)| format!("{}: {why}", p.display()))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// Deletes all but the newest `keep` checkpoints in `dir`.
pub fn prune_old(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let all = list_checkpoints(dir)?;
    let n = all.len().saturating_sub(keep);
    for (_, path) in all.into_iter().take(n) {
        fs::remove_file(&path).map_err(|source| CheckpointError::Io { path, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            meta: CheckpointMeta {
                experiment_toml: "name = \"x\"".into(),
                epoch: 2,
                global_step: 940,
                history: vec![],
                quench_version: "0".into(),
                sections: vec![],
                lr_factor: 1.0,
                skipped_batches: 0,
            },
            sections: vec![
                ("model".into(), (0..=255u8).collect()),
                ("optimizer".into(), vec![7; 1000]),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let c = sample();
        let back = Checkpoint::from_bytes(&c.to_bytes(), Path::new("m")).unwrap();
        assert_eq!(back.meta.global_step, 940);
        assert_eq!(back.section("model"), c.section("model"));
        assert_eq!(back.section("optimizer"), c.section("optimizer"));
        assert!(back.section("nope").is_none());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_detected() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert!(
                Checkpoint::from_bytes(&b, Path::new("f")).is_err(),
                "flip at {i} accepted"
            );
        }
        for n in 0..bytes.len() {
            assert!(
                Checkpoint::from_bytes(&bytes[..n], Path::new("t")).is_err(),
                "len {n}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Checkpoint::from_bytes(&longer, Path::new("l")).is_err());
    }

    #[test]
    fn read_meta_reads_the_header_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.qck");
        let c = sample();
        c.write(&path).unwrap();
        let meta = Checkpoint::read_meta(&path).unwrap();
        assert_eq!(
            serde_json::to_string(&meta).unwrap(),
            serde_json::to_string(&Checkpoint::read(&path).unwrap().meta).unwrap()
        );
        assert_eq!((meta.epoch, meta.global_step), (2, 940));
        // Damaged sections: the header still reads (the full read catches them).
        let bytes = c.to_bytes();
        let header_end = bytes.len() - 256 - 1000;
        let mut b = bytes.clone();
        b[header_end + 5] ^= 1;
        fs::write(&path, &b).unwrap();
        assert_eq!(Checkpoint::read_meta(&path).unwrap().global_step, 940);
        assert!(Checkpoint::read(&path).is_err());
        // A flipped header byte, or a file cut anywhere before the header's end, does not.
        for i in 0..header_end {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            fs::write(&path, &b).unwrap();
            assert!(
                Checkpoint::read_meta(&path).is_err(),
                "flip at {i} accepted"
            );
        }
        for n in 0..header_end {
            fs::write(&path, &bytes[..n]).unwrap();
            let err = Checkpoint::read_meta(&path).unwrap_err().to_string();
            assert!(err.contains("c.qck"), "len {n}: {err}");
        }
    }

    #[test]
    fn huge_header_claim_does_not_allocate() {
        let mut b = sample().to_bytes();
        b[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = Checkpoint::from_bytes(&b, Path::new("h"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("header claims"), "{err}");
    }

    #[test]
    fn atomic_write_listing_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        for e in 1..=4 {
            let mut c = sample();
            c.meta.epoch = e;
            c.write(&dir.path().join(epoch_file_name(e))).unwrap();
        }
        // A stray temporary (a killed write) is not a checkpoint.
        fs::write(dir.path().join(".epoch-00005.qck.tmp-1"), b"partial").unwrap();
        let list = list_checkpoints(dir.path()).unwrap();
        assert_eq!(list.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
        // Corrupt the newest: latest_valid falls back to epoch 3 and says why.
        let newest = dir.path().join(epoch_file_name(4));
        let mut b = fs::read(&newest).unwrap();
        let last = b.len() - 1;
        b[last] ^= 1;
        fs::write(&newest, b).unwrap();
        let mut skipped = vec![];
        let (path, c) = latest_valid(dir.path(), &mut skipped).unwrap();
        assert_eq!(c.meta.epoch, 3);
        assert!(path.ends_with(epoch_file_name(3)));
        assert_eq!(skipped.len(), 1);
        prune_old(dir.path(), 2).unwrap();
        let list = list_checkpoints(dir.path()).unwrap();
        assert_eq!(list.iter().map(|x| x.0).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn unmeasured_metrics_round_trip_and_all_damaged_is_an_error() {
        // A NaN metric is written as JSON null and must read back (as NaN), not make the whole
        // checkpoint unreadable.
        let dir = tempfile::tempdir().unwrap();
        let mut c = sample();
        c.meta.history = vec![EpochRecord {
            epoch: 1,
            step: 10,
            train_loss: 1.5,
            train_accuracy: f64::NAN,
            eval_loss: f64::INFINITY,
            eval_accuracy: 0.5,
            samples_per_sec: 3.0,
        }];
        let path = dir.path().join(iter_file_name(10));
        c.write(&path).unwrap();
        let back = Checkpoint::read(&path).unwrap();
        let h = &back.meta.history[0];
        assert!(h.train_accuracy.is_nan() && h.eval_loss.is_nan());
        assert_eq!((h.train_loss, h.eval_accuracy), (1.5, 0.5));
        // Every checkpoint damaged: an error naming each, never a silent restart.
        let mut b = fs::read(&path).unwrap();
        b[20] ^= 0xff;
        fs::write(&path, b).unwrap();
        let err = latest_valid(dir.path(), &mut vec![]).unwrap_err();
        assert!(matches!(err, CheckpointError::AllDamaged { .. }), "{err}");
        assert!(err.to_string().contains("iter-00000010.qck"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            latest_valid(empty.path(), &mut vec![]),
            Err(CheckpointError::NoneFound { .. })
        ));
    }

    #[test]
    fn write_into_missing_dir_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/x.qck");
        assert!(matches!(
            sample().write(&path),
            Err(CheckpointError::Io { .. })
        ));
    }

    #[test]
    fn probe_names_a_directory_that_cannot_take_files() {
        let tmp = tempfile::tempdir().unwrap();
        probe_writable(tmp.path()).unwrap();
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "probe left behind"
        );
        // Works as root too: nothing can be created "inside" a regular file.
        let file = tmp.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = probe_writable(&file).unwrap_err().to_string();
        assert!(err.contains(&*file.to_string_lossy()), "{err}");
        assert!(err.contains("not writable"), "{err}");
    }

    #[test]
    fn failed_atomic_write_leaves_neither_temporary_nor_target() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("gone").join("epoch-00001.qck");
        let err = write_atomic(&target, b"data").unwrap_err().to_string();
        assert!(err.contains(&*target.to_string_lossy()), "{err}");
        assert!(!target.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
