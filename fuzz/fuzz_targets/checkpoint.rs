//! Checkpoint: arbitrary bytes → `Checkpoint::from_bytes`, then decoded as resume/eval do
//! (recipe, then the classifier or language model loaded from the `model` section).
//!
//! First byte selects the mode: even → the bytes as a file; odd → the harness repairs the
//! checksums (header CRC, per-section CRCs) first, so mutations reach the header JSON and the
//! burnpack decoder instead of stopping at a checksum mismatch.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quench_train::checkpoint::{Checkpoint, CheckpointMeta};

/// Rebuilds a consistent file from a possibly inconsistent one: header JSON re-serialized with
/// section lengths clamped to the bytes present and checksums recomputed.
fn repaired(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 24 || &bytes[..8] != b"QUENCHCK" {
        return None;
    }
    let header_len = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    let rest = &bytes[24..];
    let header_len = usize::try_from(header_len).ok()?.min(rest.len());
    let mut meta: CheckpointMeta = serde_json::from_slice(&rest[..header_len]).ok()?;
    let mut body = &rest[header_len..];
    let mut sections = Vec::new();
    for s in &meta.sections {
        let n = usize::try_from(s.len).unwrap_or(usize::MAX).min(body.len());
        sections.push((s.name.clone(), body[..n].to_vec()));
        body = &body[n..];
    }
    meta.sections.clear();
    Some(Checkpoint { meta, sections }.to_bytes())
}

fn decode(bytes: &[u8]) {
    let path = Path::new("fuzz.qck");
    let Ok(ckpt) = Checkpoint::from_bytes(bytes, path) else {
        return;
    };
    let Ok(exp) = quench_train::Experiment::from_toml_str(&ckpt.meta.experiment_toml, path, &[])
    else {
        return;
    };
    let device = burn::tensor::Device::flex();
    if exp.model.is_language_model() {
        let _ = quench_train::lm::lm_checkpoint_from(&ckpt, path, &device);
    } else {
        let _ = quench_train::run::model_from_checkpoint(&exp, &ckpt, path, &device);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        decode(rest);
    } else if let Some(fixed) = repaired(rest) {
        decode(&fixed);
    }
});
