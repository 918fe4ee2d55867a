//! The one error type of quench-data.

use std::path::PathBuf;

/// Everything that can go wrong while locating, reading or batching a dataset.
///
/// Variants about a file carry its path so that the message alone tells the user which file to
/// look at; the binary adds no guesswork on top.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read (including corrupt gzip streams).
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not an IDX magic number (`00 00 <type> <ndim>`).
    #[error(
        "{} is not an IDX file: magic number is 0x{found:08x}, expected 0x0000TTNN \
         (two zero bytes, a type code and a dimension count)",
        path.display()
    )]
    BadMagic {
        /// The file being read.
        path: PathBuf,
        /// The magic number found, big endian.
        found: u32,
    },

    /// The IDX element type is not unsigned byte (0x08), the only type image datasets use.
    #[error(
        "{}: IDX element type 0x{code:02x} is not supported (only 0x08, unsigned byte)",
        path.display()
    )]
    UnsupportedType {
        /// The file being read.
        path: PathBuf,
        /// The type code found in the header.
        code: u8,
    },

    /// The file (after gzip decompression, if compressed) ends before its header says it should.
    #[error(
        "{} is truncated: its header promises {expected} bytes (after decompression), \
         but the file has only {got}",
        path.display()
    )]
    Truncated {
        /// The file being read.
        path: PathBuf,
        /// How many bytes the header implies.
        expected: u64,
        /// How many bytes were actually there.
        got: u64,
    },

    /// Bytes follow the payload: the header's dimensions do not describe the file.
    #[error(
        "{}: at least {extra} unexpected bytes follow the data its header describes \
         (the header's dimensions are wrong or the file is corrupt)",
        path.display()
    )]
    TrailingBytes {
        /// The file being read.
        path: PathBuf,
        /// How many extra bytes were found (counting stops at a cap).
        extra: u64,
    },

    /// The dimensions in the header are not what this kind of file needs.
    #[error("{}: bad dimensions: {detail}", path.display())]
    BadDims {
        /// The file being read.
        path: PathBuf,
        /// What is wrong with them.
        detail: String,
    },

    /// The header claims more data than quench is willing to load.
    #[error(
        "{}: header claims {bytes} bytes of data, more than the limit of {limit} bytes",
        path.display()
    )]
    TooLarge {
        /// The file being read.
        path: PathBuf,
        /// Size implied by the header.
        bytes: u64,
        /// The limit ([`crate::idx::MAX_IDX_BYTES`]).
        limit: u64,
    },

    /// Two files that belong together disagree (e.g. image count vs label count).
    #[error("{detail}")]
    Mismatch {
        /// Which files disagree and how; names both files.
        detail: String,
    },

    /// A dataset directory or file is missing; the message says how to get it.
    #[error("dataset not found in {}: {detail}", dir.display())]
    Missing {
        /// The directory that was searched (or the first of several).
        dir: PathBuf,
        /// What was expected and how to obtain it.
        detail: String,
    },

    /// A text corpus is not valid UTF-8.
    #[error("{} is not valid UTF-8: invalid byte sequence at byte offset {offset}", path.display())]
    InvalidUtf8 {
        /// The corpus file.
        path: PathBuf,
        /// Byte offset of the first invalid sequence.
        offset: usize,
    },

    /// A text corpus contains no characters.
    #[error("{} is empty: a character corpus needs at least one character", path.display())]
    EmptyCorpus {
        /// The corpus file.
        path: PathBuf,
    },

    /// A token sequence is shorter than one training window.
    #[error(
        "token sequence too short: {len} tokens, but one window needs {needed} \
         (context + 1); use a shorter context or a smaller validation fraction"
    )]
    CorpusTooShort {
        /// Tokens available.
        len: usize,
        /// Tokens needed for one (input, target) window.
        needed: usize,
    },

    /// Text to encode contains characters that are not in the corpus vocabulary.
    #[error("characters not in the vocabulary: {chars}")]
    UnknownChars {
        /// Each distinct unknown character, quoted and escaped, comma separated.
        chars: String,
    },

    /// A label is outside `0..num_classes`.
    #[error(
        "{}: label {label} at index {index} is out of range for {num_classes} classes",
        path.display()
    )]
    BadLabel {
        /// The label file.
        path: PathBuf,
        /// Position of the label in the file.
        index: usize,
        /// The offending label.
        label: u8,
        /// Number of classes the dataset is supposed to have.
        num_classes: usize,
    },

    /// A caller-supplied parameter (batch size, context length, …) cannot work.
    #[error("invalid argument: {detail}")]
    BadArgument {
        /// Which parameter and why.
        detail: String,
    },
}
