//! IDX reader: arbitrary bytes, raw and gzip-wrapped, must give `Ok` or an error — never a
//! panic, a hang, or an allocation sized by a header the bytes do not back.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.idx");
    let _ = quench_data::idx::parse_idx_reader(data, path);
    // The same bytes behind gzip: the reader detects the magic and decompresses.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if enc.write_all(data).is_ok()
        && let Ok(gz) = enc.finish()
    {
        let _ = quench_data::idx::parse_idx_reader(gz.as_slice(), Path::new("fuzz.idx.gz"));
    }
});
