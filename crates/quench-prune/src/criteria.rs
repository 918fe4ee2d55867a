//! Pruning criteria: from weights (host `f32` values + burn shape) to masks.
//!
//! - [`magnitude_mask`]: exactly `round(s·numel)` smallest `|w|` pruned per layer.
//! - [`global_magnitude_masks`]: one threshold over all given layers (`round(s·Σnumel)` pruned).
//! - [`n_m_mask`]: in every group of `m` consecutive elements along the *input* axis keep the `n`
//!   largest `|w|` (Linear `[d_in, d_out]`: axis 0; Conv2d `[out, in, kh, kw]`: axis 1, the
//!   layout NVIDIA's 2:4 sparse tensor cores expect after burn's transpose).
//! - [`structured_mask`]: remove whole output units (Linear columns, axis 1; Conv2d output
//!   channels, axis 0) with the smallest L1 / L2 norm; never all of them.
//!
//! Ranking is total and deterministic: already-pruned elements (per `prev`) first, then by
//! `|w|` (or unit norm) ascending, then by index (layer order, then row-major index, for the
//! global scope). `round` is half away from zero. Every function returns `prev AND new`.

use crate::error::PruneError;
use crate::mask::{Mask, Masks, split_axis};

/// One weight tensor as criteria read it: its key (parameter path), values and shape.
#[derive(Debug, Clone, Copy)]
pub struct WeightRef<'a> {
    /// Parameter path (`Mlp.layers.0.inner.weight`); also the key of its mask.
    pub key: &'a str,
    /// Values, row-major.
    pub values: &'a [f32],
    /// Shape as burn stores it.
    pub shape: &'a [usize],
}

impl<'a> WeightRef<'a> {
    /// A weight view; values and shape must agree.
    pub fn new(key: &'a str, values: &'a [f32], shape: &'a [usize]) -> Result<Self, PruneError> {
        let w = Self { key, values, shape };
        if values.len() != shape.iter().product::<usize>() {
            return Err(PruneError::ShapeMismatch {
                what: key.to_string(),
                expected: shape.to_vec(),
                got: vec![values.len()],
            });
        }
        Ok(w)
    }

    fn prev_keep<'m>(&self, prev: Option<&'m Mask>) -> Result<Option<&'m [bool]>, PruneError> {
        match prev {
            None => Ok(None),
            Some(m) if m.shape() == self.shape => Ok(Some(m.keep())),
            Some(m) => Err(PruneError::ShapeMismatch {
                what: format!("previous mask of `{}`", self.key),
                expected: self.shape.to_vec(),
                got: m.shape().to_vec(),
            }),
        }
    }
}

/// Which norm ranks output units in structured pruning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Norm {
    /// Sum of `|w|`.
    L1,
    /// Square root of the sum of `w²`.
    L2,
}

/// Number of elements pruned at sparsity `s` out of `n`: `round(s·n)` (half away from zero).
pub fn prune_count(sparsity: f64, n: usize) -> usize {
    ((sparsity * n as f64).round() as usize).min(n)
}

fn check_sparsity(s: f64) -> Result<(), PruneError> {
    if (0.0..=1.0).contains(&s) {
        Ok(())
    } else {
        Err(PruneError::invalid("sparsity", s, "must be in [0, 1]"))
    }
}

/// Per-layer unstructured magnitude pruning: exactly `round(s·numel)` elements pruned (or the
/// previously pruned ones, if more), smallest `|w|` first, ties by lower index.
pub fn magnitude_mask(
    w: WeightRef,
    sparsity: f64,
    prev: Option<&Mask>,
) -> Result<Mask, PruneError> {
    global_magnitude_masks(&[w], sparsity, &prev_map(w.key, prev))
        .map(|mut m| m.remove(w.key).expect("mask for the only layer"))
}

fn prev_map(key: &str, prev: Option<&Mask>) -> Masks {
    prev.map(|m| Masks::from([(key.to_string(), m.clone())]))
        .unwrap_or_default()
}

/// Global unstructured magnitude pruning: one threshold over all `weights`, so exactly
/// `round(s·Σnumel)` elements are pruned in total, distributed wherever `|w|` is smallest.
/// `prev` holds the previous masks by key (missing keys: nothing pruned yet).
pub fn global_magnitude_masks(
    weights: &[WeightRef],
    sparsity: f64,
    prev: &Masks,
) -> Result<Masks, PruneError> {
    check_sparsity(sparsity)?;
    let mut prev_keeps = Vec::with_capacity(weights.len());
    for w in weights {
        prev_keeps.push(w.prev_keep(prev.get(w.key))?);
    }
    // (layer, index) pairs ordered by (already pruned first, |w|, layer, index).
    let mut order: Vec<(u32, u32)> = Vec::new();
    for (l, w) in weights.iter().enumerate() {
        order.extend((0..w.values.len()).map(|i| (l as u32, i as u32)));
    }
    let total = order.len();
    let key = |&(l, i): &(u32, u32)| {
        let alive = prev_keeps[l as usize].is_none_or(|k| k[i as usize]);
        (alive, weights[l as usize].values[i as usize].abs())
    };
    order.sort_unstable_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.cmp(&kb.0).then(ka.1.total_cmp(&kb.1)).then(a.cmp(b))
    });
    let mut keeps: Vec<Vec<bool>> = weights.iter().map(|w| vec![true; w.values.len()]).collect();
    for &(l, i) in &order[..prune_count(sparsity, total)] {
        keeps[l as usize][i as usize] = false;
    }
    let mut out = Masks::new();
    for ((w, keep), prev_keep) in weights.iter().zip(keeps).zip(prev_keeps) {
        let keep = and_prev(keep, prev_keep);
        out.insert(w.key.to_string(), Mask::new(w.shape, keep)?);
    }
    Ok(out)
}

fn and_prev(mut keep: Vec<bool>, prev: Option<&[bool]>) -> Vec<bool> {
    if let Some(p) = prev {
        for (k, &p) in keep.iter_mut().zip(p) {
            *k &= p;
        }
    }
    keep
}

/// N:M semi-structured pruning: in every group of `m` consecutive elements along `input_axis`
/// (for every index of the other axes) keep the `n` largest `|w|` (ties: lower index kept).
///
/// Sparsity is `1 - n/m` regardless of any target. The size of `input_axis` must be a multiple
/// of `m`.
pub fn n_m_mask(
    w: WeightRef,
    n: usize,
    m: usize,
    input_axis: usize,
    prev: Option<&Mask>,
) -> Result<Mask, PruneError> {
    if n == 0 {
        return Err(PruneError::invalid("n", 0, "N:M needs n >= 1"));
    }
    if n >= m {
        return Err(PruneError::invalid(
            "n",
            n,
            format!("N:M needs n < m (m = {m})"),
        ));
    }
    let prev_keep = w.prev_keep(prev)?;
    let (outer, size, inner) = split_axis(w.shape, input_axis, w.key)?;
    if !size.is_multiple_of(m) {
        return Err(PruneError::NotDivisible {
            layer: w.key.to_string(),
            dim: input_axis,
            size,
            m,
        });
    }
    let mut keep = vec![false; w.values.len()];
    let mut group: Vec<usize> = Vec::with_capacity(m);
    for o in 0..outer {
        for i in 0..inner {
            for g in 0..size / m {
                group.clear();
                group.extend((0..m).map(|j| (o * size + g * m + j) * inner + i));
                // Keep priority: alive first, then largest |w|, then lower index.
                group.sort_by(|&a, &b| {
                    let alive = |x: usize| prev_keep.is_none_or(|k| k[x]);
                    alive(b)
                        .cmp(&alive(a))
                        .then(w.values[b].abs().total_cmp(&w.values[a].abs()))
                        .then(a.cmp(&b))
                });
                for &x in &group[..n] {
                    keep[x] = true;
                }
            }
        }
    }
    Mask::new(w.shape, and_prev(keep, prev_keep))
}

/// Structured pruning of whole output units along `output_axis` (Linear `[d_in, d_out]`: 1,
/// Conv2d `[out, in, kh, kw]`: 0): the `round(s·units)` units with the smallest norm (computed on
/// the given, already-masked weights; previously pruned units first) are removed entirely.
///
/// Removing every unit of a layer is an error.
pub fn structured_mask(
    w: WeightRef,
    norm: Norm,
    output_axis: usize,
    sparsity: f64,
    prev: Option<&Mask>,
) -> Result<Mask, PruneError> {
    check_sparsity(sparsity)?;
    let prev_keep = w.prev_keep(prev)?;
    let (outer, units, inner) = split_axis(w.shape, output_axis, w.key)?;
    let k = prune_count(sparsity, units);
    if units > 0 && k >= units {
        return Err(PruneError::AllUnitsPruned {
            layer: w.key.to_string(),
            sparsity,
            units,
        });
    }
    let mut norms = vec![0.0f64; units];
    let mut alive = vec![false; units];
    for o in 0..outer {
        for (u, (nrm, al)) in norms.iter_mut().zip(alive.iter_mut()).enumerate() {
            let base = (o * units + u) * inner;
            for x in base..base + inner {
                let v = f64::from(w.values[x]);
                *nrm += match norm {
                    Norm::L1 => v.abs(),
                    Norm::L2 => v * v,
                };
                *al |= prev_keep.is_none_or(|p| p[x]);
            }
        }
    }
    // (L2 ranks by the squared norm: same order, no sqrt needed.)
    let mut order: Vec<usize> = (0..units).collect();
    order.sort_by(|&a, &b| {
        alive[a]
            .cmp(&alive[b])
            .then(norms[a].total_cmp(&norms[b]))
            .then(a.cmp(&b))
    });
    let mut keep_units = vec![true; units];
    for &u in &order[..k] {
        keep_units[u] = false;
    }
    let mask = units_to_mask(w.shape, output_axis, &keep_units)?;
    match prev {
        Some(p) => mask.and(p),
        None => Ok(mask),
    }
}

/// The mask of a tensor of `shape` keeping exactly the units along `axis` flagged in
/// `keep_units` (e.g. a bias `[d_out]` with axis 0, or a Linear weight with axis 1).
pub fn units_to_mask(
    shape: &[usize],
    axis: usize,
    keep_units: &[bool],
) -> Result<Mask, PruneError> {
    let (outer, units, inner) = split_axis(shape, axis, "units")?;
    if keep_units.len() != units {
        return Err(PruneError::ShapeMismatch {
            what: format!("unit flags along axis {axis}"),
            expected: vec![units],
            got: vec![keep_units.len()],
        });
    }
    let mut keep = Vec::with_capacity(outer * units * inner);
    for _ in 0..outer {
        for &k in keep_units {
            keep.extend(std::iter::repeat_n(k, inner));
        }
    }
    Mask::new(shape, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: bool = true;
    const F: bool = false;

    fn w<'a>(values: &'a [f32], shape: &'a [usize]) -> WeightRef<'a> {
        WeightRef::new("w", values, shape).unwrap()
    }

    #[test]
    fn magnitude_exact_positions_and_ties() {
        let v = [0.5, -0.1, 0.3, -0.7, 0.1, 0.0, 0.9, -0.2];
        let s = [2, 4];
        // k = 2: |0.0| (5), then the tie |−0.1| = |0.1| goes to the lower index (1).
        let m = magnitude_mask(w(&v, &s), 0.25, None).unwrap();
        assert_eq!(m.keep(), &[T, F, T, T, T, F, T, T]);
        // k = 4: 5, 1, 4, 7.
        let m = magnitude_mask(w(&v, &s), 0.5, None).unwrap();
        assert_eq!(m.keep(), &[T, F, T, T, F, F, T, F]);
        assert_eq!(m.pruned(), 4);
        // round(0.3·8 = 2.4) = 2.
        assert_eq!(magnitude_mask(w(&v, &s), 0.3, None).unwrap().pruned(), 2);
        assert_eq!(prune_count(0.3125, 8), 3); // 2.5 rounds away from zero
        assert_eq!(
            magnitude_mask(w(&v, &s), 0.0, None).unwrap(),
            Mask::ones(&s)
        );
        assert!(WeightRef::new("x", &v, &[3, 3]).is_err());
    }

    #[test]
    fn global_threshold_across_two_layers() {
        let a = [0.1, 0.5, 0.9, 0.2];
        let b = [0.01, 0.05, 0.15, 0.4];
        let ws = [
            WeightRef::new("a", &a, &[4]).unwrap(),
            WeightRef::new("b", &b, &[4]).unwrap(),
        ];
        // 4 of 8 smallest overall: b0 0.01, b1 0.05, a0 0.1, b2 0.15 (per-layer would be 2+2).
        let masks = global_magnitude_masks(&ws, 0.5, &Masks::new()).unwrap();
        assert_eq!(masks["a"].keep(), &[F, T, T, T]);
        assert_eq!(masks["b"].keep(), &[F, F, F, T]);
    }

    #[test]
    fn two_four_exact_positions() {
        // Linear [d_in = 8, d_out = 2]; groups of 4 run down each column (input axis 0).
        #[rustfmt::skip]
        let v = [
            0.1, 1.0,
            -0.9, 2.0,
            0.5, -3.0,
            0.3, 4.0,
            0.0, 0.2,
            0.0, -0.2,
            0.7, 0.2,
            -0.7, 0.1,
        ];
        let s = [8, 2];
        let m = n_m_mask(w(&v, &s), 2, 4, 0, None).unwrap();
        #[rustfmt::skip]
        let expect = [
            F, F,
            T, F,
            T, T,
            F, T,
            F, T,  // col 0: 0.7, −0.7 kept; col 1: ties 0.2,−0.2,0.2 → lower rows 4, 5
            F, T,
            T, F,
            T, F,
        ];
        assert_eq!(m.keep(), &expect);
        for col in 0..2 {
            for g in 0..2 {
                let kept = (0..4).filter(|j| m.keep()[(g * 4 + j) * 2 + col]).count();
                assert_eq!(kept, 2, "column {col} group {g}");
            }
        }
        assert_eq!(m.sparsity(), 0.5);
        // Conv [out 1, in 4, 1, 2]: groups along axis 1 for each kernel position.
        let c = [0.4, 0.1, 0.3, 0.2, 0.2, 0.3, 0.1, 0.4];
        let m = n_m_mask(w(&c, &[1, 4, 1, 2]), 2, 4, 1, None).unwrap();
        // kw = 0: in-channels values 0.4, 0.3, 0.2, 0.1 → keep ch 0, 1; kw = 1: 0.1,0.2,0.3,0.4.
        assert_eq!(m.keep(), &[T, F, T, F, F, T, F, T]);
    }

    #[test]
    fn n_m_errors() {
        let v = [0.0; 12];
        let e = n_m_mask(w(&v, &[6, 2]), 2, 4, 0, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "N:M pruning of `w`: dimension 0 (size 6) is not divisible by m = 4"
        );
        assert!(n_m_mask(w(&v, &[6, 2]), 0, 4, 0, None).is_err());
        assert!(n_m_mask(w(&v, &[6, 2]), 3, 3, 0, None).is_err());
        assert!(n_m_mask(w(&v, &[6, 2]), 1, 2, 2, None).is_err());
    }

    #[test]
    fn structured_l1_linear_columns() {
        // [d_in = 2, d_out = 4]; column L1: 2, 0.3, 3, 1.
        let v = [1.0, 0.1, -3.0, 0.5, -1.0, 0.2, 0.0, 0.5];
        let s = [2, 4];
        let m = structured_mask(w(&v, &s), Norm::L1, 1, 0.5, None).unwrap();
        assert_eq!(m.keep(), &[T, F, T, F, T, F, T, F]);
        assert_eq!(m.kept_units(1).unwrap(), vec![T, F, T, F]);
        // round(0.25·4) = 1: only column 1.
        let m = structured_mask(w(&v, &s), Norm::L1, 1, 0.25, None).unwrap();
        assert_eq!(m.kept_units(1).unwrap(), vec![T, F, T, T]);
    }

    #[test]
    fn structured_conv_output_channels_l1_vs_l2() {
        // Conv [out 3, in 2, 1, 2]; ch0: four 1s (L1 4, L2 2), ch1: one 3 (L1 3, L2 3),
        // ch2: four 0.5s (L1 2, L2 1).
        let v = [1.0, 1.0, 1.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5];
        let s = [3, 2, 1, 2];
        let l1 = structured_mask(w(&v, &s), Norm::L1, 0, 2.0 / 3.0, None).unwrap();
        assert_eq!(l1.kept_units(0).unwrap(), vec![T, F, F]);
        assert_eq!(&l1.keep()[..4], &[T; 4]);
        assert_eq!(&l1.keep()[4..], &[F; 8]);
        let l2 = structured_mask(w(&v, &s), Norm::L2, 0, 2.0 / 3.0, None).unwrap();
        assert_eq!(l2.kept_units(0).unwrap(), vec![F, T, F]);
        let one = structured_mask(w(&v, &s), Norm::L2, 0, 1.0 / 3.0, None).unwrap();
        assert_eq!(one.kept_units(0).unwrap(), vec![T, T, F]);
    }

    #[test]
    fn structured_refuses_pruning_all_units() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // round(0.9·4) = 4 units.
        let e = structured_mask(w(&v, &[1, 4]), Norm::L1, 1, 0.9, None).unwrap_err();
        assert!(
            matches!(e, PruneError::AllUnitsPruned { units: 4, .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains("would remove all 4 output units"),
            "{e}"
        );
        assert!(structured_mask(w(&v, &[1, 4]), Norm::L1, 1, 0.7, None).is_ok());
    }

    #[test]
    fn masks_are_monotone() {
        let v = [0.5, -0.1, 0.3, -0.7, 0.1, 0.0, 0.9, -0.2];
        let s = [2, 4];
        let first = magnitude_mask(w(&v, &s), 0.25, None).unwrap(); // prunes 1, 5
        // Weights move (index 1 would now be the largest, 0 a small one).
        let v2 = [0.05, 10.0, 0.3, -0.7, 0.1, 0.0, 0.9, -0.2];
        let second = magnitude_mask(w(&v2, &s), 0.5, Some(&first)).unwrap();
        // Stays pruned: 1, 5; then the two smallest live: 0 (0.05), 4 (0.1).
        assert_eq!(second.keep(), &[F, F, T, T, F, F, T, T]);
        assert_eq!(second.pruned(), 4);
        // A lower target never revives anything.
        let third = magnitude_mask(w(&v2, &s), 0.0, Some(&second)).unwrap();
        assert_eq!(third, second);
        // Structured: a pruned column stays pruned even if it is now the largest.
        let lin = [1.0, 0.1, -3.0, 0.5, -1.0, 0.2, 0.0, 0.5];
        let m1 = structured_mask(w(&lin, &s), Norm::L1, 1, 0.25, None).unwrap();
        let lin2 = [1.0, 9.0, -3.0, 0.5, -1.0, 9.0, 0.0, 0.5];
        let m2 = structured_mask(w(&lin2, &s), Norm::L1, 1, 0.5, Some(&m1)).unwrap();
        assert_eq!(m2.kept_units(1).unwrap(), vec![T, F, T, F]);
        // N:M keeps the previously pruned positions pruned.
        let g = [0.1, 0.2, 0.3, 0.4];
        let prev = Mask::new(&[4, 1], vec![T, T, F, T]).unwrap();
        let m = n_m_mask(w(&g, &[4, 1]), 2, 4, 0, Some(&prev)).unwrap();
        assert_eq!(m.keep(), &[F, T, F, T]);
    }

    #[test]
    fn units_to_mask_layouts() {
        let m = units_to_mask(&[2, 3], 1, &[T, F, T]).unwrap();
        assert_eq!(m.keep(), &[T, F, T, T, F, T]);
        let m = units_to_mask(&[2, 1, 2], 0, &[F, T]).unwrap();
        assert_eq!(m.keep(), &[F, F, T, T]);
        assert!(units_to_mask(&[2, 3], 1, &[T]).is_err());
    }
}

/// Random unstructured mask: the `random` baseline. Each element gets a fixed pseudo-random
/// score from `(seed, key, index)` (SplitMix64, so runs are reproducible and later updates of
/// a schedule prune a superset), and the lowest scores are pruned exactly as magnitude pruning
/// prunes the smallest |w|.
pub fn random_mask(
    w: WeightRef,
    sparsity: f64,
    seed: u64,
    prev: Option<&Mask>,
) -> Result<Mask, PruneError> {
    let key_hash = w.key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let scores: Vec<f32> = (0..w.values.len() as u64)
        .map(|i| {
            let mut z = seed ^ key_hash ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            // 24 random bits → an exactly representable f32 in [1, 2^24].
            ((z >> 40) + 1) as f32
        })
        .collect();
    magnitude_mask(WeightRef::new(w.key, &scores, w.shape)?, sparsity, prev)
}

#[cfg(test)]
mod random_tests {
    use super::*;

    #[test]
    fn random_mask_prunes_the_exact_count_reproducibly_and_monotonically() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let w = WeightRef::new("l.weight", &values, &[10, 100]).unwrap();
        let a = random_mask(w, 0.3, 7, None).unwrap();
        assert_eq!(a.pruned(), 300);
        assert_eq!(
            random_mask(w, 0.3, 7, None).unwrap(),
            a,
            "same seed, same mask"
        );
        let other = random_mask(w, 0.3, 8, None).unwrap();
        assert_ne!(other, a, "another seed, another mask");
        // Not magnitude: some of the 300 largest weights are pruned.
        assert!(a.keep()[700..].iter().any(|k| !k));
        let b = random_mask(w, 0.6, 7, Some(&a)).unwrap();
        assert_eq!(b.pruned(), 600);
        assert!(
            a.keep().iter().zip(b.keep()).all(|(ka, kb)| *ka || !*kb),
            "monotone"
        );
    }
}
