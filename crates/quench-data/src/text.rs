//! Character-level text corpora (TinyShakespeare) and (input, target) windows for a char LM.

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::DataError;

/// One batch of `(inputs, targets)` token windows, each `[batch, context]`; targets are the
/// inputs shifted by one token.
pub type TokenWindows = (Tensor<2, Int>, Tensor<2, Int>);

/// A text corpus tokenized by character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CharCorpus {
    /// The distinct characters of the corpus, sorted; a token id is an index into this.
    pub vocab: Vec<char>,
    /// The whole corpus as token ids.
    pub ids: Vec<u32>,
}

impl CharCorpus {
    /// Reads a UTF-8 text file and tokenizes it by character.
    pub fn from_file(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| DataError::InvalidUtf8 {
            path: path.to_path_buf(),
            offset: e.valid_up_to(),
        })?;
        Self::from_text(text, path)
    }

    /// Tokenizes `text`; `path_for_errors` names its source in errors.
    pub fn from_text(text: &str, path_for_errors: &Path) -> Result<Self, DataError> {
        if text.is_empty() {
            return Err(DataError::EmptyCorpus {
                path: path_for_errors.to_path_buf(),
            });
        }
        let mut vocab: Vec<char> = text.chars().collect();
        vocab.sort_unstable();
        vocab.dedup();
        let mut corpus = CharCorpus {
            vocab,
            ids: Vec::new(),
        };
        corpus.ids = corpus.encode(text)?;
        Ok(corpus)
    }

    /// Number of distinct characters (the embedding / output size of the model).
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Encodes text with this corpus' vocabulary; every character must be in it.
    pub fn encode(&self, s: &str) -> Result<Vec<u32>, DataError> {
        let mut ids = Vec::with_capacity(s.len());
        let mut unknown: Vec<char> = Vec::new();
        for c in s.chars() {
            match self.vocab.binary_search(&c) {
                Ok(i) => ids.push(i as u32),
                Err(_) if !unknown.contains(&c) => unknown.push(c),
                Err(_) => {}
            }
        }
        if unknown.is_empty() {
            Ok(ids)
        } else {
            // Debug formatting quotes and escapes, so '\n' or a combining mark stays visible.
            let chars: Vec<String> = unknown.iter().map(|c| format!("{c:?}")).collect();
            Err(DataError::UnknownChars {
                chars: chars.join(", "),
            })
        }
    }

    /// Decodes token ids; an id outside the vocabulary becomes U+FFFD (a model sampling over a
    /// larger output than the vocabulary should not make decoding fail).
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&i| {
                self.vocab
                    .get(i as usize)
                    .copied()
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect()
    }

    /// Contiguous `(train, validation)` split: the first `floor(n * (1 - val_fraction))` tokens
    /// train, the rest validate (as nanoGPT does; contiguous so validation text is unseen).
    ///
    /// # Panics
    /// If `val_fraction` is not within `[0, 1]`.
    pub fn split(&self, val_fraction: f64) -> (Vec<u32>, Vec<u32>) {
        assert!(
            (0.0..=1.0).contains(&val_fraction),
            "val_fraction must be within [0, 1], got {val_fraction}"
        );
        let n_train = ((self.ids.len() as f64) * (1.0 - val_fraction)) as usize;
        let (a, b) = self.ids.split_at(n_train.min(self.ids.len()));
        (a.to_vec(), b.to_vec())
    }
}

/// Where TinyShakespeare is looked for when a recipe names no path: `input.txt` under
/// `../shared/datasets/tinyshakespeare` relative to the current directory or one of its parents
/// (so the workspace root and a crate's tests both find it), then `datasets/tinyshakespeare`.
pub const TINYSHAKESPEARE_FILE: &str = "tinyshakespeare/input.txt";

/// Finds a text corpus: `explicit` (a file, or a directory holding `input.txt`) when given,
/// else TinyShakespeare in the standard places. The error lists every place it looked.
pub fn locate_text(explicit: Option<&Path>) -> Result<std::path::PathBuf, DataError> {
    if let Some(p) = explicit {
        let file = if p.is_dir() {
            p.join("input.txt")
        } else {
            p.to_path_buf()
        };
        if file.is_file() {
            return Ok(file);
        }
        return Err(DataError::Missing {
            dir: p.to_path_buf(),
            detail: format!(
                "no text file at {} (data.path names a UTF-8 text file, or a directory holding \
                 input.txt)",
                file.display()
            ),
        });
    }
    let mut candidates = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        for base in cwd.ancestors() {
            candidates.push(base.join("../shared/datasets").join(TINYSHAKESPEARE_FILE));
        }
        candidates.push(cwd.join("datasets").join(TINYSHAKESPEARE_FILE));
    }
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    let tried: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
    Err(DataError::Missing {
        dir: candidates
            .first()
            .cloned()
            .unwrap_or_else(|| TINYSHAKESPEARE_FILE.into()),
        detail: format!(
            "tinyshakespeare not found; looked at {}. Put the corpus (input.txt of karpathy's \
             char-rnn, 1,115,394 bytes) anywhere and set data.path = \"FILE\"",
            tried.join(", ")
        ),
    })
}

/// Checks that windows of `context` tokens can be cut from `len` tokens in batches of `batch`.
fn check_window_args(len: usize, context: usize, batch: usize) -> Result<(), DataError> {
    if context == 0 || batch == 0 {
        return Err(DataError::BadArgument {
            detail: format!("context ({context}) and batch size ({batch}) must both be at least 1"),
        });
    }
    if len < context + 1 {
        return Err(DataError::CorpusTooShort {
            len,
            needed: context + 1,
        });
    }
    Ok(())
}

/// Builds `(x, y)` of shape `[starts.len(), context]`: `x` = `ids[s..s+context]`, `y` the same
/// window shifted by one token (the next-character targets).
///
/// # Panics
/// If a window runs past the end of `ids` (callers check with [`check_window_args`]).
fn windows_at(ids: &[u32], starts: &[usize], context: usize, device: &Device) -> TokenWindows {
    let b = starts.len();
    let mut x = Vec::with_capacity(b * context);
    let mut y = Vec::with_capacity(b * context);
    for &s in starts {
        x.extend(ids[s..s + context].iter().map(|&t| i64::from(t)));
        y.extend(ids[s + 1..s + context + 1].iter().map(|&t| i64::from(t)));
    }
    (
        Tensor::<2, Int>::from_data(TensorData::new(x, [b, context]), device),
        Tensor::<2, Int>::from_data(TensorData::new(y, [b, context]), device),
    )
}

/// A random training batch: `batch` windows at uniformly random offsets, as `(x, y)` of shape
/// `[batch, context]` where `y` is `x` shifted by one token.
pub fn sample_windows(
    ids: &[u32],
    context: usize,
    batch: usize,
    rng: &mut impl rand::Rng,
    device: &Device,
) -> Result<TokenWindows, DataError> {
    check_window_args(ids.len(), context, batch)?;
    let last_start = ids.len() - context - 1;
    let starts: Vec<usize> = (0..batch)
        .map(|_| rng.random_range(0..=last_start))
        .collect();
    Ok(windows_at(ids, &starts, context, device))
}

/// Deterministic evaluation batches: up to `batch * max_batches` windows with evenly spaced
/// starts covering the sequence (fewer if it has fewer distinct starts), so validation loss is
/// comparable across runs and checkpoints. The last batch may be smaller than `batch`.
pub fn eval_windows(
    ids: &[u32],
    context: usize,
    batch: usize,
    max_batches: usize,
    device: &Device,
) -> Result<Vec<TokenWindows>, DataError> {
    check_window_args(ids.len(), context, batch)?;
    let positions = ids.len() - context; // distinct starts 0..positions
    let count = batch.saturating_mul(max_batches).min(positions);
    let starts: Vec<usize> = if count <= 1 {
        vec![0; count]
    } else {
        // Spread from 0 to the last start inclusive; u128 keeps i * (positions - 1) exact.
        (0..count)
            .map(|i| (i as u128 * (positions - 1) as u128 / (count - 1) as u128) as usize)
            .collect()
    };
    Ok(starts
        .chunks(batch)
        .map(|s| windows_at(ids, s, context, device))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ints(t: Tensor<2, Int>) -> Vec<i64> {
        t.into_data().try_into_vec_as::<i64>().unwrap()
    }

    #[test]
    fn vocab_encode_decode_round_trip() {
        let c = CharCorpus::from_text("hello, wörld\n", Path::new("mem")).unwrap();
        assert_eq!(
            c.vocab,
            vec!['\n', ' ', ',', 'd', 'e', 'h', 'l', 'o', 'r', 'w', 'ö']
        );
        assert_eq!(c.vocab_size(), 11);
        assert_eq!(c.ids.len(), 13);
        assert_eq!(c.decode(&c.ids), "hello, wörld\n");
        assert_eq!(c.encode("old").unwrap(), vec![7, 6, 3]);
        assert_eq!(c.decode(&[5, 99]), "h\u{FFFD}");
    }

    #[test]
    fn unknown_chars_are_listed_once_each() {
        let c = CharCorpus::from_text("abc", Path::new("mem")).unwrap();
        let e = c.encode("abxzx\t").unwrap_err();
        match &e {
            DataError::UnknownChars { chars } => assert_eq!(chars, r"'x', 'z', '\t'"),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("'z'"));
    }

    #[test]
    fn invalid_utf8_reports_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, b"abc\xff\xfedef").unwrap();
        let e = CharCorpus::from_file(&p).unwrap_err();
        assert!(
            matches!(e, DataError::InvalidUtf8 { offset: 3, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("bad.txt"));
    }

    #[test]
    fn empty_corpus() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.txt");
        std::fs::write(&p, b"").unwrap();
        let e = CharCorpus::from_file(&p).unwrap_err();
        assert!(matches!(e, DataError::EmptyCorpus { .. }), "{e:?}");
    }

    #[test]
    fn split_sizes_are_contiguous() {
        let text: String = "abcdefghij".repeat(10);
        let c = CharCorpus::from_text(&text, Path::new("mem")).unwrap();
        let (tr, va) = c.split(0.1);
        assert_eq!((tr.len(), va.len()), (90, 10));
        assert_eq!([tr.as_slice(), va.as_slice()].concat(), c.ids);
        let (tr, va) = c.split(0.0);
        assert_eq!((tr.len(), va.len()), (100, 0));
    }

    #[test]
    fn sampled_windows_are_shifted_by_one() {
        let ids: Vec<u32> = (0..50).collect(); // id == position makes shifts checkable
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(1);
        let (x, y) = sample_windows(&ids, 8, 16, &mut rng, &device).unwrap();
        assert_eq!(x.dims(), [16, 8]);
        assert_eq!(y.dims(), [16, 8]);
        let (x, y) = (ints(x), ints(y));
        let mut starts = Vec::new();
        for (xr, yr) in x.chunks(8).zip(y.chunks(8)) {
            starts.push(xr[0]);
            for k in 0..8 {
                assert_eq!(xr[k], xr[0] + k as i64, "x is a contiguous window");
                assert_eq!(yr[k], xr[k] + 1, "y is x shifted by one");
            }
            assert!(yr[7] < 50);
        }
        starts.dedup();
        assert!(starts.len() > 1, "random starts should vary");
    }

    #[test]
    fn windows_reject_short_corpus_and_bad_args() {
        let ids = vec![0u32; 8];
        let device = Device::flex();
        let mut rng = StdRng::seed_from_u64(1);
        let e = sample_windows(&ids, 8, 2, &mut rng, &device).unwrap_err();
        assert!(
            matches!(e, DataError::CorpusTooShort { len: 8, needed: 9 }),
            "{e:?}"
        );
        // Exactly context + 1 tokens is enough (one possible window).
        let (x, y) = sample_windows(&ids[..8], 7, 2, &mut rng, &device).unwrap();
        assert_eq!((x.dims(), y.dims()), ([2, 7], [2, 7]));
        let e = sample_windows(&ids, 0, 2, &mut rng, &device).unwrap_err();
        assert!(matches!(e, DataError::BadArgument { .. }), "{e:?}");
        let e = eval_windows(&ids, 4, 0, 2, &device).unwrap_err();
        assert!(matches!(e, DataError::BadArgument { .. }), "{e:?}");
    }

    #[test]
    fn eval_windows_are_deterministic_and_cover_the_sequence() {
        let ids: Vec<u32> = (0..100).collect();
        let device = Device::flex();
        let batches = eval_windows(&ids, 10, 4, 3, &device).unwrap();
        assert_eq!(batches.len(), 3);
        let starts: Vec<i64> = batches
            .into_iter()
            .flat_map(|(x, y)| {
                let (x, y) = (ints(x), ints(y));
                assert!(x.iter().zip(&y).all(|(a, b)| b - a == 1));
                x.chunks(10).map(|w| w[0]).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(starts.len(), 12);
        assert_eq!(starts[0], 0);
        assert_eq!(*starts.last().unwrap(), 89); // last window ends at the last token
        assert!(starts.windows(2).all(|w| w[0] < w[1]));
        // Few positions: every start once, last batch short.
        let b = eval_windows(&ids[..13], 10, 2, 10, &device).unwrap();
        let sizes: Vec<usize> = b.iter().map(|(x, _)| x.dims()[0]).collect();
        assert_eq!(sizes, vec![2, 1]);
    }

    #[test]
    fn real_tinyshakespeare() {
        let c = CharCorpus::from_file(&crate::shared_dataset("tinyshakespeare/input.txt")).unwrap();
        assert_eq!(c.ids.len(), 1_115_394); // pure ASCII: bytes == chars
        assert_eq!(c.vocab_size(), 65);
        assert_eq!(c.decode(&c.ids[..14]), "First Citizen:");
        let (tr, va) = c.split(0.1);
        assert_eq!((tr.len(), va.len()), (1_003_854, 111_540));
    }
}
