//! Reader for the IDX format used by MNIST and Fashion-MNIST, raw or gzip-compressed.
//!
//! The header of an IDX file dictates how much data follows; a corrupt or hostile header must
//! not make us allocate gigabytes, so the payload is read through a length-limited reader into a
//! buffer that only grows as bytes actually arrive.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::DataError;

/// Largest payload (after decompression) [`read_idx`] accepts: 1 GiB, far above any image set
/// quench trains on, low enough that a lying header cannot exhaust memory.
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// IDX type code for unsigned bytes, the only element type image datasets use.
const TYPE_U8: u8 = 0x08;

/// Upper bound on the initial payload buffer; beyond it the buffer grows with the data read.
const INITIAL_CAPACITY_CAP: u64 = 16 << 20;

/// Upper bound on how many trailing bytes are counted for the error message, so that a
/// decompression bomb after a valid payload cannot keep us busy.
const TRAILING_COUNT_CAP: u64 = 64 << 20;

/// A parsed IDX file of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxFile {
    /// Dimensions from the header, outermost first (e.g. `[n, rows, cols]`).
    pub dims: Vec<usize>,
    /// The payload, row-major, `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes, gzip-compressed (detected by magic `1f 8b`) or raw.
pub fn read_idx(path: &Path) -> Result<IdxFile, DataError> {
    let file = File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_idx_reader(BufReader::new(file), path)
}

/// Parses IDX bytes from any reader (gzip or raw); `path` only names the source in errors.
///
/// Exposed so that fuzz targets and tests can feed arbitrary bytes without touching the disk.
pub fn parse_idx_reader(mut reader: impl Read, path: &Path) -> Result<IdxFile, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Peek at two bytes to tell gzip from raw, then put them back in front of the stream.
    let mut head = [0u8; 2];
    let n = read_up_to(&mut reader, &mut head).map_err(io_err)?;
    let stream = io::Cursor::new(head).take(n as u64).chain(reader);
    if n == 2 && head == [0x1f, 0x8b] {
        parse_raw(MultiGzDecoder::new(stream), path)
    } else {
        parse_raw(stream, path)
    }
}

/// Parses an uncompressed IDX stream.
fn parse_raw(mut reader: impl Read, path: &Path) -> Result<IdxFile, DataError> {
    let pb = || path.to_path_buf();
    let io_err = |source| DataError::Io { path: pb(), source };

    let mut magic = [0u8; 4];
    let got = read_up_to(&mut reader, &mut magic).map_err(io_err)?;
    if got < 4 {
        return Err(DataError::Truncated {
            path: pb(),
            expected: 4,
            got: got as u64,
        });
    }
    if magic[0] != 0 || magic[1] != 0 {
        return Err(DataError::BadMagic {
            path: pb(),
            found: u32::from_be_bytes(magic),
        });
    }
    if magic[2] != TYPE_U8 {
        return Err(DataError::UnsupportedType {
            path: pb(),
            code: magic[2],
        });
    }
    let ndim = magic[3] as usize;
    if !(1..=4).contains(&ndim) {
        return Err(DataError::BadDims {
            path: pb(),
            detail: format!("header declares {ndim} dimensions; supported are 1 to 4"),
        });
    }

    let header_len = 4 + 4 * ndim as u64;
    let mut dim_bytes = [0u8; 16];
    let dim_bytes = &mut dim_bytes[..4 * ndim];
    let got = read_up_to(&mut reader, dim_bytes).map_err(io_err)?;
    if got < dim_bytes.len() {
        return Err(DataError::Truncated {
            path: pb(),
            expected: header_len,
            got: 4 + got as u64,
        });
    }
    let dims_u32: Vec<u32> = dim_bytes
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();

    // Checked product: four u32 dimensions can overflow u64.
    let expected = dims_u32
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(u64::from(d)))
        .ok_or_else(|| DataError::BadDims {
            path: pb(),
            detail: format!("dimensions {dims_u32:?} multiply to more than 2^64 bytes"),
        })?;
    if expected > MAX_IDX_BYTES {
        return Err(DataError::TooLarge {
            path: pb(),
            bytes: expected,
            limit: MAX_IDX_BYTES,
        });
    }
    let dims = dims_u32.iter().map(|&d| d as usize).collect();

    // Read at most one byte more than promised (to detect trailing data); the buffer starts
    // small and grows only as real bytes arrive, so a lying header costs nothing.
    let mut data = Vec::with_capacity(expected.min(INITIAL_CAPACITY_CAP) as usize);
    (&mut reader)
        .take(expected + 1)
        .read_to_end(&mut data)
        .map_err(io_err)?;
    let got = data.len() as u64;
    if got < expected {
        return Err(DataError::Truncated {
            path: pb(),
            expected: header_len + expected,
            got: header_len + got,
        });
    }
    if got > expected {
        let rest =
            io::copy(&mut reader.take(TRAILING_COUNT_CAP), &mut io::sink()).map_err(io_err)?;
        return Err(DataError::TrailingBytes {
            path: pb(),
            extra: got - expected + rest,
        });
    }
    Ok(IdxFile { dims, data })
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Helpers that build IDX bytes, for this crate's tests.
#[cfg(test)]
pub(crate) mod testutil {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// Encodes a u8 IDX file with the given dimensions and payload.
    pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut out = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(data);
        out
    }

    /// Gzip-compresses bytes.
    pub fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Writes bytes to `dir/name` and returns the path.
    pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn sample() -> (Vec<u32>, Vec<u8>) {
        let dims = vec![3, 2, 4];
        let data: Vec<u8> = (0..24).map(|i| (i * 7 % 256) as u8).collect();
        (dims, data)
    }

    #[test]
    fn round_trip_raw() {
        let dir = tempfile::tempdir().unwrap();
        let (dims, data) = sample();
        let p = write(dir.path(), "a-idx3-ubyte", &idx_bytes(&dims, &data));
        let f = read_idx(&p).unwrap();
        assert_eq!(f.dims, vec![3, 2, 4]);
        assert_eq!(f.data, data);
    }

    #[test]
    fn round_trip_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let (dims, data) = sample();
        let p = write(dir.path(), "a.gz", &gzip(&idx_bytes(&dims, &data)));
        let f = read_idx(&p).unwrap();
        assert_eq!(f.dims, vec![3, 2, 4]);
        assert_eq!(f.data, data);
    }

    #[test]
    fn one_dimensional_labels() {
        let f = parse_idx_reader(&idx_bytes(&[5], &[1, 2, 3, 4, 5])[..], Path::new("x")).unwrap();
        assert_eq!(f.dims, vec![5]);
        assert_eq!(f.data, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn wrong_magic() {
        let mut b = idx_bytes(&[2], &[0, 0]);
        b[0] = 0x12;
        let e = parse_idx_reader(&b[..], Path::new("bad.idx")).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::BadMagic {
                    found: 0x1200_0801,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("bad.idx"));
    }

    #[test]
    fn unsupported_type() {
        let mut b = idx_bytes(&[2], &[0, 0]);
        b[2] = 0x0D; // float
        let e = parse_idx_reader(&b[..], Path::new("f.idx")).unwrap_err();
        assert!(
            matches!(e, DataError::UnsupportedType { code: 0x0D, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn bad_ndim() {
        for nd in [0u8, 5] {
            let b = [0, 0, 8, nd, 0, 0, 0, 1];
            let e = parse_idx_reader(&b[..], Path::new("d.idx")).unwrap_err();
            assert!(matches!(e, DataError::BadDims { .. }), "{e:?}");
        }
    }

    #[test]
    fn truncated_payload() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = idx_bytes(&[10, 2], &[7; 20]);
        b.truncate(b.len() - 5);
        for (name, bytes) in [("t", b.clone()), ("t.gz", gzip(&b))] {
            let p = write(dir.path(), name, &bytes);
            let e = read_idx(&p).unwrap_err();
            match e {
                DataError::Truncated { expected, got, .. } => {
                    assert_eq!(expected, 12 + 20);
                    assert_eq!(got, 12 + 15);
                }
                other => panic!("expected Truncated, got {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_header() {
        let b = idx_bytes(&[10, 2], &[]);
        let e = parse_idx_reader(&b[..9], Path::new("h")).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected: 12,
                    got: 9,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = idx_bytes(&[4], &[1, 2, 3, 4]);
        b.extend_from_slice(&[9; 6]);
        for (name, bytes) in [("t", b.clone()), ("t.gz", gzip(&b))] {
            let p = write(dir.path(), name, &bytes);
            let e = read_idx(&p).unwrap_err();
            assert!(
                matches!(e, DataError::TrailingBytes { extra: 6, .. }),
                "{e:?}"
            );
        }
    }

    #[test]
    fn zero_length_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "empty", &[]);
        let e = read_idx(&p).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected: 4,
                    got: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("empty"));
    }

    #[test]
    fn missing_file_is_io_error_naming_it() {
        let e = read_idx(Path::new("/nonexistent/quench/file.idx")).unwrap_err();
        assert!(matches!(e, DataError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/quench/file.idx"));
    }

    #[test]
    fn corrupt_gzip_is_io_error() {
        let mut g = gzip(&idx_bytes(&[100], &[5; 100]));
        let mid = g.len() / 2;
        for b in &mut g[10..mid] {
            *b ^= 0xA5;
        }
        let e = parse_idx_reader(&g[..], Path::new("c.gz")).unwrap_err();
        assert!(
            matches!(e, DataError::Io { .. } | DataError::Truncated { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn huge_header_in_tiny_file_is_rejected_without_allocating() {
        // 2^32-1 images of 28x28 claimed by a 16-byte file: over the cap.
        let b = idx_bytes(&[u32::MAX, 28, 28], &[]);
        assert_eq!(b.len(), 16);
        let t = std::time::Instant::now();
        let e = parse_idx_reader(&b[..], Path::new("lie")).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::TooLarge {
                    limit: MAX_IDX_BYTES,
                    ..
                }
            ),
            "{e:?}"
        );
        // Four maximal dims overflow u64.
        let b = idx_bytes(&[u32::MAX; 4], &[]);
        let e = parse_idx_reader(&b[..], Path::new("lie")).unwrap_err();
        assert!(matches!(e, DataError::BadDims { .. }), "{e:?}");
        // Just under the cap (1000 MB claimed) with 3 bytes of payload: must fail as truncated
        // and fast; a buffer sized by the header would touch ~1 GB.
        let b = idx_bytes(&[1_000_000, 1000], &[1, 2, 3]);
        let e = parse_idx_reader(&b[..], Path::new("lie")).unwrap_err();
        assert!(
            matches!(
                e,
                DataError::Truncated {
                    expected: 1_000_000_012,
                    got: 15,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn zero_sized_dims_are_valid_and_empty() {
        let f = parse_idx_reader(&idx_bytes(&[0, 28, 28], &[])[..], Path::new("z")).unwrap();
        assert_eq!(f.dims, vec![0, 28, 28]);
        assert!(f.data.is_empty());
    }
}
