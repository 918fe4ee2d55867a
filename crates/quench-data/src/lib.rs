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
