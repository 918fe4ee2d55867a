//! Datasets for quench: IDX image files (MNIST, Fashion-MNIST), character-level text corpora,
//! and deterministic batching helpers that turn them into burn tensors.
//!
//! Every loader validates what it reads and reports failures as [`DataError`], which always says
//! which file is wrong and how, so a bad or missing dataset never surfaces as a panic.

#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod idx;
pub mod image;
pub mod text;

pub use batch::{ImageBatch, epoch_order};
pub use error::DataError;
pub use image::{FASHION_MNIST_DEBIAN_DIR, ImageSet, Split, locate_dataset};
pub use text::{CharCorpus, eval_windows, locate_text, sample_windows};

/// `../shared/datasets/<rel>` beside the checkout, for the tests on the real data sets; found
/// when the test runs (cargo sets `CARGO_MANIFEST_DIR` then too): `env!` would bake in the path
/// of the checkout that compiled the test, stale when a target dir is reused by another clone.
#[cfg(test)]
pub(crate) fn shared_dataset(rel: &str) -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || env!("CARGO_MANIFEST_DIR").into(),
            std::path::PathBuf::from,
        )
        .join("../../../shared/datasets")
        .join(rel)
}
