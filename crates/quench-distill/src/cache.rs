//! Teacher-logit cache: the frozen teacher's logits for a whole training set, on disk.
//!
//! A distillation run spends a large share of its time in the teacher's forward pass, and the
//! teacher never changes; with (un-augmented) training data its logits never change either. The
//! cache stores them once, in dataset index order, so later epochs (and later runs) gather rows
//! instead of running the teacher. A cache is only valid for one teacher and one data set, so
//! both are fingerprinted into the header and `open` refuses any mismatch.
//!
//! File layout (all integers little endian), `HEADER_LEN` = 52 bytes then the payload:
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! | 0      | 8    | magic `QNCHKDLC`                                   |
//! | 8      | 4    | format version (`1`)                               |
//! | 12     | 4    | CRC32C of the payload                              |
//! | 16     | 8    | number of samples `n`                              |
//! | 24     | 8    | number of classes `c`                              |
//! | 32     | 8    | teacher fingerprint                                |
//! | 40     | 8    | dataset fingerprint                                |
//! | 48     | 4    | CRC32C of bytes 0..48 (so a corrupt header is not misread as a mismatch) |
//! | 52     | 4·n·c| logits, `f32` LE, row-major `[n, c]`               |

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{CacheProblem, DistillError};

const MAGIC: [u8; 8] = *b"QNCHKDLC";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 52;
/// Floats of payload converted per read/write (keeps memory flat for big caches).
const CHUNK_FLOATS: usize = 16 * 1024;

/// Teacher logits for a whole data set (`n × c`, dataset index order), loaded from or written to disk.
#[derive(Clone, PartialEq)]
pub struct LogitCache {
    path: PathBuf,
    teacher_fp: u64,
    data_fp: u64,
    n: usize,
    c: usize,
    logits: Vec<f32>,
}

impl fmt::Debug for LogitCache {
    // The logits themselves would flood any log; show what identifies the cache.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogitCache")
            .field("path", &self.path)
            .field("teacher_fp", &format_args!("{:016x}", self.teacher_fp))
            .field("data_fp", &format_args!("{:016x}", self.data_fp))
            .field("n", &self.n)
            .field("c", &self.c)
            .finish_non_exhaustive()
    }
}

/// The header fields, in file order.
struct Header {
    payload_crc: u32,
    n: u64,
    c: u64,
    teacher_fp: u64,
    data_fp: u64,
}

impl Header {
    fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.n.to_le_bytes());
        b[24..32].copy_from_slice(&self.c.to_le_bytes());
        b[32..40].copy_from_slice(&self.teacher_fp.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_fp.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a header whose magic and version were already checked.
    fn from_bytes(b: &[u8; HEADER_LEN]) -> Result<Self, CacheProblem> {
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let stored = u32_at(48);
        let computed = crc32c::crc32c(&b[0..48]);
        if stored != computed {
            return Err(CacheProblem::Checksum {
                part: "header",
                stored,
                computed,
            });
        }
        Ok(Self {
            payload_crc: u32_at(12),
            n: u64_at(16),
            c: u64_at(24),
            teacher_fp: u64_at(32),
            data_fp: u64_at(40),
        })
    }
}

impl LogitCache {
    /// Writes `logits` (`n × c`, row-major, dataset index order) to `path` atomically and returns
    /// the cache; the parent directory is created if needed, an existing file is replaced.
    ///
    /// Atomic: the bytes go to a temporary file in the same directory, which is fsynced and then
    /// renamed over `path`, so a crash leaves either the old file or the complete new one.
    pub fn create(
        path: impl AsRef<Path>,
        teacher_fp: u64,
        data_fp: u64,
        logits: Vec<f32>,
        n: usize,
        c: usize,
    ) -> Result<Self, DistillError> {
        let path = path.as_ref();
        if n.checked_mul(c) != Some(logits.len()) {
            let what = CacheProblem::Shape {
                len: logits.len(),
                n,
                c,
            };
            return Err(DistillError::cache(path, what));
        }
        if let Some(index) = logits.iter().position(|x| !x.is_finite()) {
            let what = CacheProblem::NonFinite {
                index,
                sample: index / c,
                class: index % c,
                value: logits[index],
            };
            return Err(DistillError::cache(path, what));
        }
        let cache = Self {
            path: path.to_path_buf(),
            teacher_fp,
            data_fp,
            n,
            c,
            logits,
        };
        write_atomically(path, |file| cache.write_to(file))?;
        Ok(cache)
    }

    /// Writes header and payload; the payload CRC is known only after streaming the payload,
    /// so the header is written twice (placeholder, then the real one).
    fn write_to(&self, file: &mut File) -> io::Result<()> {
        let mut header = Header {
            payload_crc: 0,
            n: self.n as u64,
            c: self.c as u64,
            teacher_fp: self.teacher_fp,
            data_fp: self.data_fp,
        };
        let mut w = BufWriter::new(&mut *file);
        w.write_all(&header.to_bytes())?;
        let mut crc = 0u32;
        let mut buf = Vec::with_capacity(CHUNK_FLOATS * 4);
        for chunk in self.logits.chunks(CHUNK_FLOATS) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|x| x.to_le_bytes()));
            crc = crc32c::crc32c_append(crc, &buf);
            w.write_all(&buf)?;
        }
        w.flush()?;
        drop(w);
        header.payload_crc = crc;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&header.to_bytes())?;
        Ok(())
    }

    /// Loads a cache, refusing it unless it is intact and was made for exactly this teacher,
    /// data set, sample count and class count (the error names the first difference found).
    pub fn open(
        path: impl AsRef<Path>,
        expected_teacher_fp: u64,
        expected_data_fp: u64,
        expected_n: usize,
        expected_c: usize,
    ) -> Result<Self, DistillError> {
        let path = path.as_ref();
        let io_err = |e| DistillError::io(path, e);
        let bad = |what| DistillError::cache(path, what);
        let file = File::open(path).map_err(io_err)?;
        let actual_len = file.metadata().map_err(io_err)?.len();
        let mut r = BufReader::new(file);

        // Magic and version first: a newer format may lay its header out differently.
        let mut head = [0u8; HEADER_LEN];
        let got = read_up_to(&mut r, &mut head).map_err(io_err)?;
        let truncated_header = CacheProblem::Truncated {
            expected: HEADER_LEN as u64,
            actual: actual_len,
        };
        if got < MAGIC.len() {
            return Err(bad(if head[..got] == MAGIC[..got] {
                truncated_header
            } else {
                CacheProblem::BadMagic {
                    found: head[..got].to_vec(),
                }
            }));
        }
        if head[..8] != MAGIC {
            let found = head[..8].to_vec();
            return Err(bad(CacheProblem::BadMagic { found }));
        }
        if got < 12 {
            return Err(bad(truncated_header));
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version != VERSION {
            return Err(bad(CacheProblem::UnsupportedVersion {
                found: version,
                supported: VERSION,
            }));
        }
        if got < HEADER_LEN {
            return Err(bad(truncated_header));
        }
        let header = Header::from_bytes(&head).map_err(bad)?;

        // Identity before payload integrity: "made with another teacher" is the actionable news.
        if header.teacher_fp != expected_teacher_fp {
            return Err(bad(CacheProblem::TeacherMismatch {
                cached: header.teacher_fp,
                expected: expected_teacher_fp,
            }));
        }
        if header.data_fp != expected_data_fp {
            return Err(bad(CacheProblem::DataMismatch {
                cached: header.data_fp,
                expected: expected_data_fp,
            }));
        }
        if header.n != expected_n as u64 {
            return Err(bad(CacheProblem::SamplesMismatch {
                cached: header.n,
                expected: expected_n as u64,
            }));
        }
        if header.c != expected_c as u64 {
            return Err(bad(CacheProblem::ClassesMismatch {
                cached: header.c,
                expected: expected_c as u64,
            }));
        }

        let (n, c) = (expected_n, expected_c);
        let count = n.checked_mul(c);
        // An overflowing size cannot be on disk: treat it as "longer than any file".
        let expected_len = count
            .and_then(|k| k.checked_mul(4))
            .and_then(|b| b.checked_add(HEADER_LEN))
            .map_or(u64::MAX, |b| b as u64);
        if actual_len < expected_len {
            return Err(bad(CacheProblem::Truncated {
                expected: expected_len,
                actual: actual_len,
            }));
        }
        if actual_len > expected_len {
            return Err(bad(CacheProblem::TrailingBytes {
                expected: expected_len,
                actual: actual_len,
            }));
        }
        // The length matched, so the size did not overflow.
        let count = count.unwrap_or(0);

        let mut logits = Vec::with_capacity(count);
        let mut crc = 0u32;
        let mut buf = vec![0u8; CHUNK_FLOATS * 4];
        while logits.len() < count {
            let floats = CHUNK_FLOATS.min(count - logits.len());
            let bytes = &mut buf[..floats * 4];
            r.read_exact(bytes).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    // The file shrank after we measured it.
                    bad(CacheProblem::Truncated {
                        expected: expected_len,
                        actual: (HEADER_LEN + logits.len() * 4) as u64,
                    })
                } else {
                    io_err(e)
                }
            })?;
            crc = crc32c::crc32c_append(crc, bytes);
            logits.extend(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        if crc != header.payload_crc {
            return Err(bad(CacheProblem::Checksum {
                part: "payload",
                stored: header.payload_crc,
                computed: crc,
            }));
        }
        Ok(Self {
            path: path.to_path_buf(),
            teacher_fp: header.teacher_fp,
            data_fp: header.data_fp,
            n,
            c,
            logits,
        })
    }

    /// Teacher logits of the samples `indices` (dataset indices), as a `[indices.len(), c]` tensor.
    ///
    /// # Panics
    /// If an index is `>= num_samples()` (the batcher and the cache disagree on the data set).
    pub fn batch(&self, indices: &[usize], device: &Device) -> Tensor<2> {
        let mut data = Vec::with_capacity(indices.len() * self.c);
        for &i in indices {
            data.extend_from_slice(self.row(i));
        }
        Tensor::from_data(TensorData::new(data, [indices.len(), self.c]), device)
    }

    /// The `c` logits of sample `index`.
    ///
    /// # Panics
    /// If `index >= num_samples()`.
    pub fn row(&self, index: usize) -> &[f32] {
        assert!(
            index < self.n,
            "logit cache {}: sample index {index} out of range (cache holds {} samples)",
            self.path.display(),
            self.n
        );
        &self.logits[index * self.c..(index + 1) * self.c]
    }

    /// All logits, row-major `[n, c]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Where the cache lives on disk.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of samples `n` (rows).
    pub fn num_samples(&self) -> usize {
        self.n
    }

    /// Number of classes `c` (columns).
    pub fn num_classes(&self) -> usize {
        self.c
    }

    /// Fingerprint of the teacher the logits came from.
    pub fn teacher_fingerprint(&self) -> u64 {
        self.teacher_fp
    }

    /// Fingerprint of the data set the logits are for.
    pub fn data_fingerprint(&self) -> u64 {
        self.data_fp
    }
}

/// Reads until `buf` is full or EOF; returns how many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Runs `write` on a fresh temporary file next to `path`, fsyncs it and renames it over `path`.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), DistillError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |e| DistillError::io(path, e);
    let name = path.file_name().ok_or_else(|| {
        io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cache path has no file name",
        ))
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| DistillError::io(&dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create_new(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // Best effort: the temp file is ours and useless now.
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    // Persist the rename itself. Some filesystems refuse fsync on a directory; the data is
    // already safe in the file, so that is not worth failing the run over.
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Streaming 64-bit FNV-1a hasher for fingerprints of teachers and data sets.
///
/// FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) is simple, stable across
/// platforms and versions, and good enough to tell one checkpoint or data set from another. It is
/// **not** cryptographic: it detects accidental mismatches, not deliberate collisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprint {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    /// Feeds `bytes`; feeding in pieces gives the same result as feeding them at once.
    pub fn update(&mut self, bytes: &[u8]) -> &mut Self {
        let mut h = self.0;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(Self::PRIME);
        }
        self.0 = h;
        self
    }

    /// Feeds `f32` values as their little-endian bytes (for pixel data or logits).
    pub fn update_f32(&mut self, values: &[f32]) -> &mut Self {
        for v in values {
            self.update(&v.to_le_bytes());
        }
        self
    }

    /// The fingerprint of everything fed so far.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a 64 fingerprint of `bytes` (see [`Fingerprint`]; for mismatch detection, not security).
pub fn fingerprint_bytes(bytes: &[u8]) -> u64 {
    Fingerprint::new().update(bytes).finish()
}

/// FNV-1a 64 fingerprint of a file's contents, e.g. the teacher checkpoint (streamed).
pub fn fingerprint_file(path: impl AsRef<Path>) -> Result<u64, DistillError> {
    let path = path.as_ref();
    let io_err = |e| DistillError::io(path, e);
    let mut r = File::open(path).map_err(io_err)?;
    let mut fp = Fingerprint::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(fp.finish()),
            Ok(k) => {
                fp.update(&buf[..k]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TFP: u64 = 0x1234_5678_9abc_def0;
    const DFP: u64 = 0x0fed_cba9_8765_4321;

    fn sample(n: usize, c: usize) -> Vec<f32> {
        (0..n * c).map(|i| (i as f32 * 0.37).sin() * 5.0).collect()
    }

    fn make(dir: &Path, n: usize, c: usize) -> (PathBuf, Vec<f32>) {
        let path = dir.join("teacher.qlc");
        let logits = sample(n, c);
        LogitCache::create(&path, TFP, DFP, logits.clone(), n, c).unwrap();
        (path, logits)
    }

    fn problem(r: Result<LogitCache, DistillError>) -> CacheProblem {
        match r {
            Err(DistillError::Cache { what, .. }) => what,
            other => panic!("expected a cache error, got {other:?}"),
        }
    }

    fn vals(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn round_trip_and_batch_gather() {
        let dir = tempfile::tempdir().unwrap();
        let (path, logits) = make(dir.path(), 5, 3);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            (HEADER_LEN + 5 * 3 * 4) as u64
        );
        let cache = LogitCache::open(&path, TFP, DFP, 5, 3).unwrap();
        assert_eq!(cache.logits(), &logits[..]);
        assert_eq!((cache.num_samples(), cache.num_classes()), (5, 3));
        assert_eq!(cache.teacher_fingerprint(), TFP);
        assert_eq!(cache.data_fingerprint(), DFP);
        assert_eq!(cache.path(), path);

        let d = Device::flex();
        let b = cache.batch(&[4, 0, 4], &d);
        assert_eq!(b.dims(), [3, 3]);
        let want: Vec<f32> = [4, 0, 4]
            .iter()
            .flat_map(|&i| logits[i * 3..i * 3 + 3].to_vec())
            .collect();
        assert_eq!(vals(b), want);
        // Works on an autodiff device too (a constant there).
        let b = cache.batch(&[1], &Device::flex().autodiff());
        assert_eq!(vals(b), logits[3..6].to_vec());
        assert_eq!(cache.batch(&[], &d).dims(), [0, 3]);
    }

    #[test]
    fn large_cache_spanning_many_chunks_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (n, c) = (7_001, 10); // > 4 chunks, last one partial
        let (path, logits) = make(dir.path(), n, c);
        let cache = LogitCache::open(&path, TFP, DFP, n, c).unwrap();
        assert_eq!(cache.logits(), &logits[..]);
    }

    #[test]
    fn create_is_atomic_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/t.qlc");
        LogitCache::create(&path, 1, 2, vec![1.0; 6], 2, 3).unwrap();
        LogitCache::create(&path, TFP, DFP, vec![2.0; 4], 2, 2).unwrap();
        let cache = LogitCache::open(&path, TFP, DFP, 2, 2).unwrap();
        assert_eq!(cache.logits(), &[2.0; 4]);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.qlc")]);
    }

    #[test]
    fn create_rejects_bad_shape_and_non_finite_without_writing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.qlc");
        let e = LogitCache::create(&path, TFP, DFP, vec![0.0; 5], 2, 3).unwrap_err();
        assert_eq!(
            e.cache_problem(),
            Some(&CacheProblem::Shape { len: 5, n: 2, c: 3 })
        );
        let mut v = vec![0.0; 6];
        v[4] = f32::NAN;
        let e = LogitCache::create(&path, TFP, DFP, v, 2, 3).unwrap_err();
        assert!(
            matches!(
                e.cache_problem(),
                Some(CacheProblem::NonFinite {
                    index: 4,
                    sample: 1,
                    class: 1,
                    ..
                })
            ),
            "{e}"
        );
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let full = fs::read(&path).unwrap();
        for keep in [full.len() - 1, full.len() - 4, HEADER_LEN, 30, 10, 5, 0] {
            fs::write(&path, &full[..keep]).unwrap();
            let p = problem(LogitCache::open(&path, TFP, DFP, 4, 3));
            assert!(
                matches!(p, CacheProblem::Truncated { actual, .. } if actual == keep as u64),
                "keep {keep}: {p:?}"
            );
            assert!(p.to_string().contains("truncated"), "{p}");
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 0]);
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            problem(LogitCache::open(&path, TFP, DFP, 4, 3)),
            CacheProblem::TrailingBytes { .. }
        ));
    }

    #[test]
    fn flipped_bytes_fail_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let good = fs::read(&path).unwrap();
        // Payload bytes → payload checksum; header fields (even n or a fingerprint) → header
        // checksum, never a misleading "made with a different teacher".
        for (at, part) in [
            (HEADER_LEN, "payload"),
            (good.len() - 1, "payload"),
            (17, "header"),
            (33, "header"),
            (13, "header"),
            (50, "header"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let p = problem(LogitCache::open(&path, TFP, DFP, 4, 3));
            assert!(
                matches!(p, CacheProblem::Checksum { part: got, .. } if got == part),
                "byte {at}: {p:?}"
            );
            assert!(p.to_string().contains("checksum mismatch"), "{p}");
        }
    }

    #[test]
    fn bad_magic_and_unknown_version_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.qlc");
        fs::write(
            &path,
            b"definitely not a logit cache at all, no sir, not one bit",
        )
        .unwrap();
        assert!(matches!(
            problem(LogitCache::open(&path, TFP, DFP, 4, 3)),
            CacheProblem::BadMagic { .. }
        ));
        fs::write(&path, b"abc").unwrap();
        assert!(matches!(
            problem(LogitCache::open(&path, TFP, DFP, 4, 3)),
            CacheProblem::BadMagic { .. }
        ));

        let (path, _) = make(dir.path(), 4, 3);
        let mut bytes = fs::read(&path).unwrap();
        bytes[8] = 2;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            problem(LogitCache::open(&path, TFP, DFP, 4, 3)),
            CacheProblem::UnsupportedVersion {
                found: 2,
                supported: 1
            }
        );
    }

    #[test]
    fn wrong_fingerprints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let e = LogitCache::open(&path, TFP ^ 1, DFP, 4, 3).unwrap_err();
        assert_eq!(
            e.cache_problem(),
            Some(&CacheProblem::TeacherMismatch {
                cached: TFP,
                expected: TFP ^ 1
            })
        );
        let s = e.to_string();
        assert!(s.contains("refused") && s.contains("teacher"), "{s}");
        assert!(s.contains(&path.display().to_string()), "{s}");

        let e = LogitCache::open(&path, TFP, DFP + 1, 4, 3).unwrap_err();
        assert_eq!(
            e.cache_problem(),
            Some(&CacheProblem::DataMismatch {
                cached: DFP,
                expected: DFP + 1
            })
        );
        assert!(e.to_string().contains("refused") && e.to_string().contains("dataset"));
    }

    #[test]
    fn wrong_shape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let e = LogitCache::open(&path, TFP, DFP, 5, 3).unwrap_err();
        assert_eq!(
            e.cache_problem(),
            Some(&CacheProblem::SamplesMismatch {
                cached: 4,
                expected: 5
            })
        );
        assert!(e.to_string().contains("refused"));
        let e = LogitCache::open(&path, TFP, DFP, 4, 10).unwrap_err();
        assert_eq!(
            e.cache_problem(),
            Some(&CacheProblem::ClassesMismatch {
                cached: 3,
                expected: 10
            })
        );
    }

    #[test]
    fn missing_file_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.qlc");
        let e = LogitCache::open(&path, TFP, DFP, 1, 1).unwrap_err();
        assert!(matches!(e, DistillError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("nope.qlc"), "{e}");
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn batch_index_out_of_range_panics() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), 4, 3);
        let cache = LogitCache::open(&path, TFP, DFP, 4, 3).unwrap();
        let _ = cache.batch(&[0, 4], &Device::flex());
    }

    #[test]
    fn fingerprint_is_fnv1a64() {
        // Reference vectors of FNV-1a 64.
        assert_eq!(fingerprint_bytes(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fingerprint_bytes(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fingerprint_bytes(b"foobar"), 0x8594_4171_f739_67e8);
        let mut fp = Fingerprint::new();
        fp.update(b"foo").update(b"").update(b"bar");
        assert_eq!(fp.finish(), fingerprint_bytes(b"foobar"));
        let mut fp = Fingerprint::default();
        fp.update_f32(&[1.0, -2.5]);
        let bytes: Vec<u8> = [1.0f32, -2.5]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(fp.finish(), fingerprint_bytes(&bytes));
    }

    #[test]
    fn fingerprint_file_matches_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("teacher.bpk");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(&path, &bytes).unwrap();
        assert_eq!(fingerprint_file(&path).unwrap(), fingerprint_bytes(&bytes));
        assert!(matches!(
            fingerprint_file(dir.path().join("missing")),
            Err(DistillError::Io { .. })
        ));
    }
}
