//! Errors of the distillation crate.

use std::path::PathBuf;

use thiserror::Error;

/// Why a distillation setting, a teacher/student pairing or a logit cache is rejected.
#[derive(Debug, Error)]
pub enum DistillError {
    /// The softmax temperature cannot work (it divides the logits).
    #[error("`distill.temperature` = {value}: must be finite and > 0 (typical: 1–20, default 4)")]
    Temperature {
        /// The offending temperature.
        value: f64,
    },
    /// The final temperature of a schedule cannot work.
    #[error("`distill.temperature_end` = {value}: must be finite and > 0")]
    TemperatureEnd {
        /// The offending temperature.
        value: f64,
    },
    /// The soft-loss weight is not a convex-combination weight.
    #[error(
        "`distill.alpha` = {value}: must be in [0, 1] (weight of the soft loss; the hard CE gets 1 − alpha)"
    )]
    Alpha {
        /// The offending alpha.
        value: f64,
    },
    /// The recipe names no teacher checkpoint.
    #[error("`distill.teacher` is empty: give the path of the teacher checkpoint")]
    EmptyTeacher,
    /// Teacher and student predict over a different number of classes, so KL is undefined.
    #[error("teacher has {teacher} classes but the student has {student}: they must agree")]
    ClassMismatch {
        /// Classes the teacher predicts.
        teacher: usize,
        /// Classes the student predicts.
        student: usize,
    },
    /// A logit cache file is unusable (corrupt, or made for another teacher / data set / shape).
    #[error("logit cache {}: {what}", path.display())]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        what: CacheProblem,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl DistillError {
    /// Builds a [`DistillError::Cache`] for `path`.
    pub fn cache(path: impl Into<PathBuf>, what: CacheProblem) -> Self {
        Self::Cache {
            path: path.into(),
            what,
        }
    }

    /// Builds a [`DistillError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// The cache problem, when this is a [`DistillError::Cache`].
    pub fn cache_problem(&self) -> Option<&CacheProblem> {
        match self {
            Self::Cache { what, .. } => Some(what),
            _ => None,
        }
    }
}

/// What is wrong with a logit cache file (integrity) or why it is refused (identity).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CacheProblem {
    /// The file does not start with the cache magic: not a quench logit cache.
    #[error("bad magic {found:02x?}: not a quench teacher-logit cache")]
    BadMagic {
        /// The first bytes found.
        found: Vec<u8>,
    },
    /// The file was written by a format version this build cannot read.
    #[error("unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The file is shorter than its header says it should be.
    #[error("truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes on disk.
        actual: u64,
    },
    /// The file is longer than its header says it should be.
    #[error("{actual} bytes, expected {expected}: trailing bytes after the logits")]
    TrailingBytes {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes on disk.
        actual: u64,
    },
    /// A stored CRC32C does not match the bytes (the file was corrupted).
    #[error(
        "{part} checksum mismatch: stored {stored:08x}, computed {computed:08x} (file corrupted)"
    )]
    Checksum {
        /// `"header"` or `"payload"`.
        part: &'static str,
        /// CRC32C stored in the file.
        stored: u32,
        /// CRC32C of the bytes read.
        computed: u32,
    },
    /// The cache was made with another teacher checkpoint.
    #[error(
        "refused: made with a different teacher (fingerprint {cached:016x}, expected {expected:016x}); delete it or point at the right teacher"
    )]
    TeacherMismatch {
        /// Teacher fingerprint stored in the cache.
        cached: u64,
        /// Fingerprint of the teacher in use.
        expected: u64,
    },
    /// The cache was made for another data set (or another ordering of it).
    #[error(
        "refused: made with a different dataset (fingerprint {cached:016x}, expected {expected:016x})"
    )]
    DataMismatch {
        /// Data fingerprint stored in the cache.
        cached: u64,
        /// Fingerprint of the data set in use.
        expected: u64,
    },
    /// The cache holds logits for a different number of samples.
    #[error("refused: made for {cached} samples, the dataset has {expected}")]
    SamplesMismatch {
        /// Sample count stored in the cache.
        cached: u64,
        /// Sample count of the data set in use.
        expected: u64,
    },
    /// The cache holds logits over a different number of classes.
    #[error("refused: made for {cached} classes, expected {expected}")]
    ClassesMismatch {
        /// Class count stored in the cache.
        cached: u64,
        /// Class count expected.
        expected: u64,
    },
    /// The logits handed to `create` do not fill an `n × c` matrix.
    #[error("{len} logits do not form a {n} × {c} matrix")]
    Shape {
        /// Number of logits given.
        len: usize,
        /// Samples claimed.
        n: usize,
        /// Classes claimed.
        c: usize,
    },
    /// A logit is NaN or infinite; a teacher producing those is broken, so it is not cached.
    #[error("logit {index} (sample {sample}, class {class}) is {value}: not finite")]
    NonFinite {
        /// Flat index of the logit.
        index: usize,
        /// Its sample (row).
        sample: usize,
        /// Its class (column).
        class: usize,
        /// The value.
        value: f32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field_and_value() {
        let e = DistillError::Temperature { value: -1.0 };
        assert!(e.to_string().contains("distill.temperature"), "{e}");
        assert!(e.to_string().contains("-1"), "{e}");
        let e = DistillError::Alpha { value: 1.5 };
        assert!(e.to_string().contains("distill.alpha") && e.to_string().contains("1.5"));
        let e = DistillError::ClassMismatch {
            teacher: 10,
            student: 100,
        };
        assert!(e.to_string().contains("10") && e.to_string().contains("100"));
    }

    #[test]
    fn cache_messages_name_path_and_problem() {
        let e = DistillError::cache(
            "/tmp/t.qlc",
            CacheProblem::TeacherMismatch {
                cached: 0xab,
                expected: 0xcd,
            },
        );
        let s = e.to_string();
        assert!(s.contains("/tmp/t.qlc"), "{s}");
        assert!(s.contains("refused") && s.contains("teacher"), "{s}");
        assert!(
            s.contains("00000000000000ab") && s.contains("00000000000000cd"),
            "{s}"
        );
        assert!(matches!(
            e.cache_problem(),
            Some(CacheProblem::TeacherMismatch { .. })
        ));
    }
}
