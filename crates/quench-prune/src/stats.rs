//! Sparsity accounting: per layer and global, from masks or from the weights themselves.

use serde::{Deserialize, Serialize};

use crate::mask::{Mask, Masks};

/// Sparsity of one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Parameter path (mask key).
    pub key: String,
    /// Number of elements.
    pub numel: usize,
    /// Number of kept (nonzero-allowed) elements.
    pub kept: usize,
    /// Fraction pruned.
    pub sparsity: f64,
}

/// Sparsity of a set of masks: each one, and all of them pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// Per mask, in key order.
    pub layers: Vec<LayerSparsity>,
    /// Elements over all masks.
    pub numel: usize,
    /// Kept elements over all masks.
    pub kept: usize,
    /// Pooled fraction pruned (`1 - kept/numel`; 0 when empty).
    pub sparsity: f64,
}

/// Fraction of `mask` pruned.
pub fn mask_sparsity(mask: &Mask) -> f64 {
    mask.sparsity()
}

/// Per-layer and global sparsity of `masks`.
pub fn report(masks: &Masks) -> SparsityReport {
    let layers: Vec<LayerSparsity> = masks
        .iter()
        .map(|(k, m)| LayerSparsity {
            key: k.clone(),
            numel: m.numel(),
            kept: m.kept(),
            sparsity: m.sparsity(),
        })
        .collect();
    let numel: usize = layers.iter().map(|l| l.numel).sum();
    let kept: usize = layers.iter().map(|l| l.kept).sum();
    SparsityReport {
        layers,
        numel,
        kept,
        sparsity: fraction_zero(numel, kept),
    }
}

/// Number of nonzero values (`-0.0` counts as zero here; NaN as nonzero).
pub fn nonzero_count(values: &[f32]) -> usize {
    values.iter().filter(|&&v| v != 0.0).count()
}

/// Fraction of `values` equal to zero (0 for an empty slice).
pub fn value_sparsity(values: &[f32]) -> f64 {
    fraction_zero(values.len(), nonzero_count(values))
}

fn fraction_zero(numel: usize, nonzero: usize) -> f64 {
    if numel == 0 {
        0.0
    } else {
        (numel - nonzero) as f64 / numel as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_layer_and_global() {
        let masks = Masks::from([
            (
                "a".to_string(),
                Mask::new(&[4], vec![true, false, false, false]).unwrap(),
            ),
            ("b".to_string(), Mask::ones(&[2, 2])),
        ]);
        let r = report(&masks);
        assert_eq!(r.layers.len(), 2);
        assert_eq!(r.layers[0].kept, 1);
        assert_eq!(r.layers[0].sparsity, 0.75);
        assert_eq!(r.layers[1].sparsity, 0.0);
        assert_eq!((r.numel, r.kept), (8, 5));
        assert_eq!(r.sparsity, 3.0 / 8.0);
        assert_eq!(mask_sparsity(&masks["a"]), 0.75);
        assert_eq!(report(&Masks::new()).sparsity, 0.0);
    }

    #[test]
    fn value_counts() {
        let v = [0.0, -0.0, 1.0, f32::NAN, 0.5];
        assert_eq!(nonzero_count(&v), 3);
        assert_eq!(value_sparsity(&v), 0.4);
        assert_eq!(value_sparsity(&[]), 0.0);
    }
}
