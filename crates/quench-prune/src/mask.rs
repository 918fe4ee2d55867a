//! Pruning masks: which elements of one parameter are kept.
//!
//! **Representation.** The canonical mask is host-side: a shape plus one `bool` per element
//! (row-major, `true` = kept). It is exact, rank-free (one map holds Linear `[d_in, d_out]` and
//! Conv2d `[out, in, kh, kw]` masks side by side) and is what criteria produce and stats read.
//! On a device a mask becomes a `Tensor<D, Bool>` (`true` = kept) and is applied with
//! `mask_fill(!keep, 0.0)`, which writes an exact `+0.0` (a multiply by a 0/1 float tensor would
//! leave `-0.0` for negative weights and `NaN` for non-finite ones).
//!
//! **Keys.** A [`Masks`] map is keyed by the parameter's module path, the dotted names burn's
//! `ModuleMapper::enter_module` reports from the root (`Mlp.layers.0.inner.weight`).
//!
//! **Monotonicity.** Masks only ever lose elements: every criterion takes the previous mask and
//! returns `old AND new`, where the new criterion ranks already-pruned elements first (so the
//! count of pruned elements is exactly the target whenever the old mask pruned fewer).

use std::collections::BTreeMap;

use burn::tensor::{Bool, Device, Tensor, TensorData};

use crate::error::PruneError;

/// Masks of a model, keyed by parameter path.
pub type Masks = BTreeMap<String, Mask>;

/// Which elements of one parameter are kept (`true`) or pruned (`false`), row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    shape: Vec<usize>,
    keep: Vec<bool>,
}

impl Mask {
    /// A mask keeping every element of a tensor of `shape`.
    pub fn ones(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            keep: vec![true; shape.iter().product()],
        }
    }

    /// A mask from explicit keep flags (row-major); the length must match the shape.
    pub fn new(shape: &[usize], keep: Vec<bool>) -> Result<Self, PruneError> {
        let numel: usize = shape.iter().product();
        if keep.len() != numel {
            return Err(PruneError::ShapeMismatch {
                what: "mask".into(),
                expected: shape.to_vec(),
                got: vec![keep.len()],
            });
        }
        Ok(Self {
            shape: shape.to_vec(),
            keep,
        })
    }

    /// The shape of the parameter this mask belongs to.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Keep flags, row-major.
    pub fn keep(&self) -> &[bool] {
        &self.keep
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.keep.len()
    }

    /// Number of kept elements.
    pub fn kept(&self) -> usize {
        self.keep.iter().filter(|&&k| k).count()
    }

    /// Number of pruned elements.
    pub fn pruned(&self) -> usize {
        self.numel() - self.kept()
    }

    /// Fraction of elements pruned (0 for an empty tensor).
    pub fn sparsity(&self) -> f64 {
        if self.numel() == 0 {
            0.0
        } else {
            self.pruned() as f64 / self.numel() as f64
        }
    }

    /// Elementwise AND (kept only where both keep); shapes must match.
    pub fn and(&self, other: &Mask) -> Result<Mask, PruneError> {
        if self.shape != other.shape {
            return Err(PruneError::ShapeMismatch {
                what: "mask AND".into(),
                expected: self.shape.clone(),
                got: other.shape.clone(),
            });
        }
        Ok(Mask {
            shape: self.shape.clone(),
            keep: self
                .keep
                .iter()
                .zip(&other.keep)
                .map(|(&a, &b)| a && b)
                .collect(),
        })
    }

    /// Zeroes the pruned elements of `values` in place (exact `+0.0`).
    pub fn apply_to(&self, values: &mut [f32]) -> Result<(), PruneError> {
        if values.len() != self.numel() {
            return Err(PruneError::ShapeMismatch {
                what: "masked values".into(),
                expected: self.shape.clone(),
                got: vec![values.len()],
            });
        }
        for (v, &k) in values.iter_mut().zip(&self.keep) {
            if !k {
                *v = 0.0;
            }
        }
        Ok(())
    }

    /// Per output unit along `axis` (a column of a Linear `[d_in, d_out]` for `axis = 1`, an
    /// output channel of a Conv2d for `axis = 0`): whether any of its elements is kept.
    pub fn kept_units(&self, axis: usize) -> Result<Vec<bool>, PruneError> {
        let (outer, size, inner) = split_axis(&self.shape, axis, "mask")?;
        let mut units = vec![false; size];
        for o in 0..outer {
            for (u, unit) in units.iter_mut().enumerate() {
                let base = (o * size + u) * inner;
                *unit |= self.keep[base..base + inner].iter().any(|&k| k);
            }
        }
        Ok(units)
    }

    /// The mask as a device tensor, `true` = kept (`D` must equal the mask's rank).
    pub fn to_tensor<const D: usize>(
        &self,
        device: &Device,
    ) -> Result<Tensor<D, Bool>, PruneError> {
        self.check_rank::<D>()?;
        Ok(Tensor::from_data(
            TensorData::new(self.keep.clone(), self.shape.clone()),
            device,
        ))
    }

    /// The pruned elements as a device tensor (`true` = pruned), what `mask_fill` wants.
    pub(crate) fn pruned_tensor<const D: usize>(
        &self,
        device: &Device,
    ) -> Result<Tensor<D, Bool>, PruneError> {
        self.check_rank::<D>()?;
        let pruned: Vec<bool> = self.keep.iter().map(|&k| !k).collect();
        Ok(Tensor::from_data(
            TensorData::new(pruned, self.shape.clone()),
            device,
        ))
    }

    /// Reads a mask back from a device tensor (`true` = kept).
    pub fn from_tensor<const D: usize>(tensor: Tensor<D, Bool>) -> Result<Self, PruneError> {
        let shape = tensor.dims().to_vec();
        let keep = tensor
            .into_data()
            .convert::<bool>()
            .try_into_vec::<bool>()
            .map_err(|e| PruneError::Corrupt(format!("mask tensor is not boolean: {e:?}")))?;
        Self::new(&shape, keep)
    }

    fn check_rank<const D: usize>(&self) -> Result<(), PruneError> {
        if self.shape.len() != D {
            return Err(PruneError::ShapeMismatch {
                what: format!("mask of rank {}", self.shape.len()),
                expected: self.shape.clone(),
                got: vec![D],
            });
        }
        Ok(())
    }
}

/// `weight` with the elements where `keep` is false set to exactly `+0.0`.
///
/// Gradients flow to the kept elements only; use it in a forward pass, or on the stored value
/// (see [`crate::apply_masks_to_module`]) after each optimizer step.
pub fn apply_mask<const D: usize>(weight: Tensor<D>, keep: Tensor<D, Bool>) -> Tensor<D> {
    weight.mask_fill(keep.bool_not(), 0.0)
}

/// Splits `shape` around `axis` into `(product before, size of axis, product after)`.
pub(crate) fn split_axis(
    shape: &[usize],
    axis: usize,
    what: &str,
) -> Result<(usize, usize, usize), PruneError> {
    if axis >= shape.len() {
        return Err(PruneError::BadAxis {
            layer: what.to_string(),
            axis,
            shape: shape.to_vec(),
        });
    }
    Ok((
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_and() {
        let a = Mask::new(&[2, 2], vec![true, false, true, true]).unwrap();
        let b = Mask::new(&[2, 2], vec![true, true, false, true]).unwrap();
        assert_eq!(a.kept(), 3);
        assert_eq!(a.pruned(), 1);
        assert_eq!(a.sparsity(), 0.25);
        let c = a.and(&b).unwrap();
        assert_eq!(c.keep(), &[true, false, false, true]);
        assert!(a.and(&Mask::ones(&[4])).is_err());
        assert!(Mask::new(&[2, 2], vec![true]).is_err());
    }

    #[test]
    fn kept_units_along_axis() {
        // [2, 3] Linear weight, column 1 pruned entirely.
        let m = Mask::new(&[2, 3], vec![true, false, true, false, false, true]).unwrap();
        assert_eq!(m.kept_units(1).unwrap(), vec![true, false, true]);
        assert_eq!(m.kept_units(0).unwrap(), vec![true, true]);
        assert!(m.kept_units(2).is_err());
    }

    #[test]
    fn tensor_apply_gives_exact_positive_zero() {
        let dev = Device::flex();
        let w = Tensor::<2>::from_data([[-1.5f32, 2.0], [f32::NAN, -0.25]], &dev);
        let m = Mask::new(&[2, 2], vec![false, true, false, true]).unwrap();
        let out = apply_mask(w, m.to_tensor::<2>(&dev).unwrap());
        let v = out.into_data().try_into_vec::<f32>().unwrap();
        assert_eq!(v[0].to_bits(), 0.0f32.to_bits());
        assert_eq!(v[1], 2.0);
        assert_eq!(v[2].to_bits(), 0.0f32.to_bits());
        assert_eq!(v[3], -0.25);
        let back = Mask::from_tensor(m.to_tensor::<2>(&dev).unwrap()).unwrap();
        assert_eq!(back, m);
        assert!(m.to_tensor::<3>(&dev).is_err());
        let mut host = vec![-1.0f32, 1.0, -2.0, 2.0];
        m.apply_to(&mut host).unwrap();
        assert_eq!(host, vec![0.0, 1.0, 0.0, 2.0]);
        assert_eq!(host[0].to_bits(), 0.0f32.to_bits());
    }
}
