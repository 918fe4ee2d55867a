//! Deterministic sample orders and the image batch type.
//!
//! Orders depend only on `(seed, epoch)`, never on how many batches were drawn before, so a run
//! resumed from a checkpoint at epoch `e` sees exactly the batches the uninterrupted run would.
//! They are reproducible for a fixed `rand` version (StdRng's algorithm may change across
//! `rand` major versions; the workspace pins one).

use burn::tensor::{Int, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// One batch of images and their labels, ready for a classifier.
#[derive(Debug, Clone)]
pub struct ImageBatch {
    /// Flattened images, shape `[batch, rows * cols]`, values in `[0, 1]`.
    pub images: Tensor<2>,
    /// Class labels, shape `[batch]`.
    pub labels: Tensor<1, Int>,
}

/// Domain tags keep the streams of different uses of one user seed independent.
const TAG_EPOCH: u64 = 0x45_50_4F_43_48; // "EPOCH"
/// Domain tag for the train/validation split.
pub(crate) const TAG_SPLIT: u64 = 0x53_50_4C_49_54; // "SPLIT"

/// SplitMix64 finalizer: spreads nearby inputs (seed 1 vs 2, epoch 3 vs 4) over all 64 bits so
/// that the derived RNG seeds are unrelated.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniformly random permutation of `0..n` determined by `(seed, tag, stream)` alone.
pub(crate) fn seeded_permutation(n: usize, seed: u64, tag: u64, stream: u64) -> Vec<usize> {
    let mixed = splitmix64(splitmix64(seed ^ tag) ^ stream);
    let mut rng = StdRng::seed_from_u64(mixed);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng); // Fisher–Yates
    order
}

/// The sample order for one epoch: a permutation of `0..n` that depends only on `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    seeded_permutation(n, seed, TAG_EPOCH, epoch as u64)
}

/// Splits an order into batches of `batch_size` indices; `drop_last` drops a short final batch.
///
/// # Panics
/// If `batch_size` is 0.
pub fn batches(
    order: &[usize],
    batch_size: usize,
    drop_last: bool,
) -> impl Iterator<Item = &[usize]> {
    assert!(batch_size > 0, "batch_size must be at least 1");
    order
        .chunks(batch_size)
        .filter(move |c| !drop_last || c.len() == batch_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(order: &[usize], n: usize) -> bool {
        let mut seen = vec![false; n];
        order.len() == n
            && order
                .iter()
                .all(|&i| i < n && !std::mem::replace(&mut seen[i], true))
    }

    #[test]
    fn epoch_order_is_a_permutation() {
        for n in [0, 1, 2, 17, 1000] {
            assert!(is_permutation(&epoch_order(n, 42, 3), n), "n = {n}");
        }
    }

    #[test]
    fn epoch_order_is_deterministic() {
        assert_eq!(epoch_order(500, 7, 2), epoch_order(500, 7, 2));
    }

    #[test]
    fn epoch_order_differs_across_epochs_and_seeds() {
        let base = epoch_order(500, 7, 0);
        assert_ne!(base, epoch_order(500, 7, 1));
        assert_ne!(base, epoch_order(500, 8, 0));
        assert_ne!(epoch_order(500, 7, 1), epoch_order(500, 8, 0));
        // Actually shuffled, not the identity.
        assert_ne!(base, (0..500).collect::<Vec<_>>());
    }

    #[test]
    fn epoch_order_is_not_a_split_order() {
        // Same seed, different use: the validation split must not reuse epoch 0's order.
        assert_ne!(
            epoch_order(500, 7, 0),
            seeded_permutation(500, 7, TAG_SPLIT, 0)
        );
    }

    #[test]
    fn batches_chunk_and_drop_last() {
        let order: Vec<usize> = (0..10).collect();
        let all: Vec<&[usize]> = batches(&order, 4, false).collect();
        assert_eq!(all, vec![&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
        let full: Vec<&[usize]> = batches(&order, 4, true).collect();
        assert_eq!(full, vec![&[0, 1, 2, 3][..], &[4, 5, 6, 7]]);
        assert_eq!(batches(&order, 5, true).count(), 2);
        assert_eq!(batches(&order[..3], 4, true).count(), 0);
    }
}
