//! Exported low-bit files: arbitrary bytes → `PackedModel::from_bytes` (classifier) and
//! `PackedGpt::from_bytes` (char GPT); errors only, no panics, no header-sized allocations.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.safetensors");
    let _ = quench_train::export::PackedModel::from_bytes(data, path);
    let _ = quench_train::lm_export::PackedGpt::from_bytes(data, path);
});
