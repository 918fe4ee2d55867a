//! A header that lies about the payload size must not drive allocation: this test binary counts
//! every allocation and asserts that none comes near what the header claims.
//!
//! It lives in its own test binary because the counting allocator is global.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use quench_data::DataError;
use quench_data::idx::{parse_idx_reader, read_idx};

/// Wraps the system allocator and remembers the largest single request.
struct PeakAlloc;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakAlloc = PeakAlloc;

fn header(dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

#[test]
fn lying_headers_do_not_allocate_what_they_claim() {
    const LIMIT: usize = 32 << 20; // generous: the reader's initial buffer is capped at 16 MiB

    // 2^32 - 1 images in a 16-byte file: rejected before any payload buffer exists.
    let lie = header(&[u32::MAX, 28, 28]);
    assert_eq!(lie.len(), 16);
    let e = parse_idx_reader(&lie[..], Path::new("lie")).unwrap_err();
    assert!(matches!(e, DataError::TooLarge { .. }), "{e:?}");

    // Just under the 1 GiB cap (~1 GB claimed), 3 real bytes, raw and gzip, from disk.
    let mut small_lie = header(&[1_000_000, 1000]);
    small_lie.extend_from_slice(&[1, 2, 3]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&small_lie).unwrap();
    let gz = gz.finish().unwrap();

    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [("raw", &small_lie), ("lie.gz", &gz)] {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_idx(&p).unwrap_err();
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
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < LIMIT, "largest allocation was {largest} bytes");
}
