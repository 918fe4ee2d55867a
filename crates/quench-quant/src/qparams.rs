//! Scales and zero-points: which elements share one (the layout of a granularity) and how they
//! follow from a `(min, max)` range.
//!
//! Every granularity is expressed as a reshape of the tensor into a rank-4 *view*
//! `[P, G, S, Q]` (no data movement) plus a *stat shape* with 1s on the reduced axes, so a
//! per-scale tensor broadcasts onto the view with plain elementwise ops:
//!
//! | granularity           | view                              | stat shape       |
//! |-----------------------|-----------------------------------|------------------|
//! | per_tensor            | `[1, 1, N, 1]`                    | `[1, 1, 1, 1]`   |
//! | per_channel (axis a)  | `[pre, C, 1, post]`               | `[1, C, 1, 1]`   |
//! | per_group (axis a, g) | `[pre, d_a/g, g, post]`           | `[pre, d_a/g, 1, post]` |
//! | per_token             | `[T, 1, last, 1]`                 | `[T, 1, 1, 1]`   |
//!
//! (`pre`/`post` are the products of the dims before/after `a`; `T` of all dims but the last.)
//! Per-group therefore groups `g` *consecutive* elements along the input axis `a` — for burn's
//! `Linear` weight `[d_in, d_out]` that is axis 0 — separately for every index of the other axes.
//! Flattened per-scale vectors are in the row-major order of the stat shape.

use burn::tensor::{DType, Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::error::QuantError;
use crate::flexops::TASK_ELEMENTS;
use crate::spec::{Granularity, QuantSpec};

/// Smallest scale ever used, so an all-zero range does not divide by zero.
pub const MIN_SCALE: f32 = f32::EPSILON;

/// How a tensor of a given shape is split into groups that share one scale (see module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantLayout {
    granularity: Granularity,
    shape: Vec<usize>,
    view: [usize; 4],
}

impl QuantLayout {
    /// The layout of `granularity` on `shape`; `axis` is the channel axis (per_channel) or the
    /// input axis the groups run along (per_group), ignored otherwise.
    pub fn new(
        shape: &[usize],
        granularity: Granularity,
        axis: usize,
        group_size: Option<usize>,
    ) -> Result<Self, QuantError> {
        if shape.is_empty() || shape.contains(&0) {
            return Err(QuantError::invalid(
                "shape",
                format!("{shape:?}"),
                "cannot quantize an empty tensor",
            ));
        }
        let numel: usize = shape.iter().product();
        let uses_axis = matches!(granularity, Granularity::PerChannel | Granularity::PerGroup);
        if uses_axis && axis >= shape.len() {
            return Err(QuantError::invalid(
                "axis",
                axis,
                format!(
                    "out of range for a rank-{} tensor of shape {shape:?}",
                    shape.len()
                ),
            ));
        }
        let pre: usize = shape[..axis.min(shape.len())].iter().product();
        let post: usize = shape[(axis + 1).min(shape.len())..].iter().product();
        let view = match granularity {
            Granularity::PerTensor => [1, 1, numel, 1],
            Granularity::PerChannel => [pre, shape[axis], 1, post],
            Granularity::PerGroup => {
                let g = group_size.unwrap_or(0);
                if g == 0 {
                    return Err(QuantError::invalid(
                        "group_size",
                        g,
                        "per_group needs a group_size of at least 1",
                    ));
                }
                let d = shape[axis];
                if !d.is_multiple_of(g) {
                    return Err(QuantError::invalid(
                        "group_size",
                        g,
                        format!(
                            "does not divide the input dimension {d} (axis {axis} of shape {shape:?})"
                        ),
                    ));
                }
                [pre, d / g, g, post]
            }
            Granularity::PerToken => {
                let last = shape[shape.len() - 1];
                [numel / last, 1, last, 1]
            }
        };
        Ok(Self {
            granularity,
            shape: shape.to_vec(),
            view,
        })
    }

    /// The layout `spec` gives a tensor of `shape`, with `axis` as in [`QuantLayout::new`].
    pub fn for_spec(spec: &QuantSpec, shape: &[usize], axis: usize) -> Result<Self, QuantError> {
        Self::new(shape, spec.granularity, axis, spec.group_size)
    }

    /// The granularity this layout implements.
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The tensor shape this layout was made for.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The rank-4 view the tensor is reshaped to.
    pub fn view_shape(&self) -> [usize; 4] {
        self.view
    }

    /// The shape of per-scale tensors: the view with 1s on the reduced axes.
    pub fn stat_shape(&self) -> [usize; 4] {
        let [p, g, _, q] = self.view;
        match self.granularity {
            Granularity::PerChannel => [1, g, 1, 1],
            _ => [p, g, 1, q],
        }
    }

    /// How many scales this layout has.
    pub fn num_scales(&self) -> usize {
        self.stat_shape().iter().product()
    }

    /// How many elements share each scale.
    pub fn per_scale(&self) -> usize {
        self.shape.iter().product::<usize>() / self.num_scales()
    }

    /// Reshapes `x` (of this layout's shape) to the rank-4 view.
    pub fn view<const D: usize>(&self, x: Tensor<D>) -> Tensor<4> {
        debug_assert_eq!(x.dims().as_slice(), self.shape.as_slice());
        x.reshape(self.view)
    }

    /// Reshapes a view back to the tensor's own shape.
    pub fn unview<const D: usize>(&self, v: Tensor<4>) -> Tensor<D> {
        let mut dims = [0; D];
        dims.copy_from_slice(&self.shape);
        v.reshape(dims)
    }

    /// Broadcastable per-scale tensor (stat shape) from a flat per-scale vector.
    pub fn broadcast(&self, flat: Tensor<1>) -> Tensor<4> {
        flat.reshape(self.stat_shape())
    }

    /// `x` as a `[num_scales, per_scale]` matrix, one row per scale (for statistics; per-channel
    /// and per-group with trailing axes need a transpose copy).
    pub fn rows<const D: usize>(&self, x: Tensor<D>) -> Tensor<2> {
        let [p, g, s, q] = self.view;
        match self.granularity {
            Granularity::PerChannel => x.reshape([p, g, q]).swap_dims(0, 1).reshape([g, p * q]),
            _ if q == 1 => x.reshape([p * g, s]),
            _ => x
                .reshape([p, g, s, q])
                .swap_dims(2, 3)
                .reshape([p * g * q, s]),
        }
    }

    /// Per-scale `(min, max)` of `x`, flattened in stat-shape order.
    ///
    /// Reductions along the contiguous last axis use burn's row-scan kernels: per-tensor ranges
    /// reduce the rows of the tensor's own last axis, then the row results. Reductions across
    /// leading axes with a contiguous trailing block — the output channels of a `Linear` weight
    /// `[d_in, d_out]`, the groups of a per-group weight — are strided walks or a transposed
    /// copy with burn's ops (the dominant cost of a fake-quant training step on CPU); on the
    /// Flex CPU backend, whose tensors already live in host memory, they are one pass over the
    /// data instead ([`host_min_max`]). Both give the same values (min/max are exact, NaN
    /// propagates).
    pub fn min_max<const D: usize>(&self, x: Tensor<D>) -> (Tensor<1>, Tensor<1>) {
        let n = self.num_scales();
        let [p, g, s, q] = self.view;
        let last = self.shape[self.shape.len() - 1];
        if self.host_reduction().is_some()
            && let Some(host) = HostCopy::of(&x)
            && let Some(range) = self.min_max_host(&host)
        {
            return range;
        }
        match self.granularity {
            Granularity::PerTensor if last > 1 && last < p * g * s * q => {
                let rows = x.reshape([p * g * s * q / last, last]);
                (
                    rows.clone().min_dim(1).min().reshape([1]),
                    rows.max_dim(1).max().reshape([1]),
                )
            }
            Granularity::PerTensor => {
                let x = x.reshape([p * g * s * q]);
                (x.clone().min(), x.max())
            }
            Granularity::PerChannel if p == 1 => {
                let rows = x.reshape([g, q]);
                (
                    rows.clone().min_dim(1).reshape([n]),
                    rows.max_dim(1).reshape([n]),
                )
            }
            _ => {
                let rows = self.rows(x);
                (
                    rows.clone().min_dim(1).reshape([n]),
                    rows.max_dim(1).reshape([n]),
                )
            }
        }
    }

    /// `(outer, len, inner)` when this layout's ranges are a reduction over the middle axis of
    /// the data seen as `[outer, len, inner]` and worth doing on the host (see [`Self::min_max`]):
    /// per-channel with leading axes and nothing after the channel, per-group with trailing axes,
    /// and per-tensor (as 16-wide columns, then those 16) on tensors of at least 1024 elements.
    fn host_reduction(&self) -> Option<(usize, usize, usize)> {
        let [p, g, s, q] = self.view;
        let numel = p * g * s * q;
        match self.granularity {
            Granularity::PerChannel if p > 1 && q == 1 => Some((1, p, g)),
            Granularity::PerGroup if q > 1 => Some((p * g, s, q)),
            Granularity::PerTensor if numel % 16 == 0 && numel >= 1024 => Some((1, numel / 16, 16)),
            _ => None,
        }
    }

    /// [`Self::min_max`] from a host copy of the tensor, where the layout has a host reduction.
    pub(crate) fn min_max_host(&self, host: &HostCopy) -> Option<(Tensor<1>, Tensor<1>)> {
        let (min, max) = self.min_max_values(host)?;
        let n = self.num_scales();
        let flat = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n]), &host.device);
        Some((flat(min), flat(max)))
    }

    /// [`Self::min_max_host`] as host values, in layout order.
    pub(crate) fn min_max_values(&self, host: &HostCopy) -> Option<(Vec<f32>, Vec<f32>)> {
        let (outer, len, inner) = self.host_reduction()?;
        let (mut min, mut max) = host_min_max(host.values(), outer, len, inner);
        if self.granularity == Granularity::PerTensor {
            min = vec![min.into_iter().reduce(nan_min).unwrap_or(f32::NAN)];
            max = vec![max.into_iter().reduce(nan_max).unwrap_or(f32::NAN)];
        }
        Some((min, max))
    }

    /// The shape of per-scale tensors in the tensor's own rank `D`, when one broadcasts onto the
    /// tensor without the rank-4 view (every granularity but per-group): fake quantization then
    /// needs no reshape of the operand.
    pub(crate) fn native_stat_dims<const D: usize>(&self) -> Option<[usize; D]> {
        if D != self.shape.len() {
            return None;
        }
        let mut dims = [1; D];
        match self.granularity {
            Granularity::PerTensor => Some(dims),
            Granularity::PerToken => {
                dims.copy_from_slice(&self.shape);
                dims[D - 1] = 1;
                Some(dims)
            }
            Granularity::PerChannel => {
                // The channel axis: the one whose leading product is `pre` and size is `C`
                // (any choice among equivalent size-1 positions broadcasts the same).
                let [pre, c, _, _] = self.view;
                let mut lead = 1;
                for (i, &d) in self.shape.iter().enumerate() {
                    if lead == pre && d == c {
                        dims[i] = c;
                        return Some(dims);
                    }
                    lead *= d;
                }
                None
            }
            Granularity::PerGroup => None,
        }
    }
}

/// A tensor's values on the host, for the fused CPU paths: taken only for f32 tensors on the
/// Flex CPU backend, whose tensors already live in host memory. It shares the tensor's buffer
/// (a copy only when the tensor is strided): one view feeds both the observer's reduction and
/// the fake-quant kernel, which writes its output to a new buffer in the same pass that reads
/// this one (an earlier version copied the values first and quantized the copy in place; that
/// `memcpy` was 4 % of a QAT MLP step, on the step's thread).
#[derive(Clone)]
pub(crate) struct HostCopy {
    tensor: burn_flex::FlexTensor,
    /// The plain (non-autodiff) device the tensor was on.
    pub(crate) device: Device,
}

impl HostCopy {
    /// The values of `x` if it is an f32 tensor on the Flex CPU backend.
    pub(crate) fn of<const D: usize>(x: &Tensor<D>) -> Option<Self> {
        if x.dtype() != DType::F32 || x.device() != Device::flex() {
            return None;
        }
        let p = crate::flexops::primitive(x.clone())?.into_plain();
        Some(Self {
            tensor: crate::flexops::contiguous(&p),
            device: Device::flex(),
        })
    }

    /// The values, row-major.
    pub(crate) fn values(&self) -> &[f32] {
        crate::flexops::slice(&self.tensor)
    }
}

/// Min and max of `values` seen as `[outer, len, inner]`, over the middle axis: `outer·inner`
/// results in row-major order. NaN propagates, as in burn's reductions.
///
/// Each block of rows is swept in memory order, updating `inner` running minima and maxima
/// (they stay in L1): reducing one column at a time instead reads the rows at a stride that
/// defeats the prefetcher, and was 6 % of a QAT MLP step. Min and max are exact, so how the rows
/// are split over tasks changes no bit.
fn host_min_max(values: &[f32], outer: usize, len: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(values.len(), outer * len * inner);
    let mut min = vec![f32::INFINITY; outer * inner];
    let mut max = vec![f32::NEG_INFINITY; outer * inner];
    let inner = inner.max(1);
    let block = len * inner;
    if outer == 1 && block > TASK_ELEMENTS {
        // One long reduction: tasks of whole rows, each into its own partial results, merged.
        let rows = (TASK_ELEMENTS / inner).max(1) * inner;
        let parts: Vec<ColumnRanges> = values
            .par_chunks(rows)
            .map(|rows| column_ranges(rows, inner))
            .collect();
        let mut total = (min, max);
        for part in &parts {
            merge_ranges(&mut total, part);
        }
        return total;
    } else if block > 0 {
        // Many reductions (groups): tasks of whole blocks. One task runs right here.
        min.par_chunks_mut(inner)
            .zip(max.par_chunks_mut(inner))
            .zip(values.par_chunks(block))
            .with_min_len((TASK_ELEMENTS / block).max(1))
            .for_each(|((mn, mx), rows)| fold_rows_min_max(rows, mn, mx));
    }
    (min, max)
}

/// Per-column `(min, max)` of a matrix (or per-scale ranges in layout order).
pub type ColumnRanges = (Vec<f32>, Vec<f32>);

/// Per-column `(min, max)` of the row-major `[rows, cols]` block `rows` (NaN propagates; all
/// NaN when `rows` is not whole rows): one task's part of a reduction, merged with
/// [`merge_ranges`].
pub fn column_ranges(rows: &[f32], cols: usize) -> ColumnRanges {
    let mut min = vec![f32::INFINITY; cols];
    let mut max = vec![f32::NEG_INFINITY; cols];
    if cols > 0 && rows.len().is_multiple_of(cols) {
        fold_rows_min_max(rows, &mut min, &mut max);
    } else {
        min.fill(f32::NAN);
        max.fill(f32::NAN);
    }
    (min, max)
}

/// Folds the ranges `part` into `total` (NaN propagates).
pub fn merge_ranges(total: &mut ColumnRanges, part: &ColumnRanges) {
    for (a, &b) in total.0.iter_mut().zip(&part.0) {
        *a = nan_min(*a, b);
    }
    for (a, &b) in total.1.iter_mut().zip(&part.1) {
        *a = nan_max(*a, b);
    }
}

/// `min` that propagates NaN (`f32::min` drops it).
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// `max` that propagates NaN (`f32::max` drops it).
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// Folds the rows of the row-major `[rows, min.len()]` matrix `rows` into the running per-column
/// `min` and `max` (NaN sticks).
fn fold_rows_min_max(rows: &[f32], min: &mut [f32], max: &mut [f32]) {
    let cols = min.len();
    assert!(cols > 0 && max.len() == cols && rows.len().is_multiple_of(cols));
    if cols == 1 {
        // One running result (a per-tensor range, or one per row of an axis-0 layout): the
        // values are folded eight lanes at a time instead, then the lanes.
        let (lo, hi) = flat_min_max(rows);
        min[0] = nan_min(min[0], lo);
        max[0] = nan_max(max[0], hi);
        return;
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is available (checked above); the lengths are asserted above.
        done = unsafe { avx::rows_min_max(rows, min, max) };
    }
    if done < cols {
        for row in rows.chunks_exact(cols) {
            for j in done..cols {
                min[j] = nan_min(min[j], row[j]);
                max[j] = nan_max(max[j], row[j]);
            }
        }
    }
}

/// Min and max of all of `values` (NaN propagates; `(inf, -inf)` when empty).
///
/// A scalar fold did one value per compare: a per-tensor activation range took about 80 µs of
/// a 2-thread QAT MLP step, as long as its fake-quant pass. Min and max are exact, so folding
/// lane-wise changes no bit beyond the sign of a zero result (either zero is the minimum of
/// `-0.0` and `0.0`), which no scale or zero-point depends on.
fn flat_min_max(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: AVX is available (checked above).
        (lo, hi, done) = unsafe { avx::flat_min_max(values) };
    }
    for &v in &values[done..] {
        lo = nan_min(lo, v);
        hi = nan_max(hi, v);
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// [`super::flat_min_max`] of the leading multiple of 32 values, with four pairs of
    /// accumulators (independent dependency chains): `(min, max, how many values)`.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn flat_min_max(values: &[f32]) -> (f32, f32, usize) {
        let n = values.len() / 32 * 32;
        let src = values.as_ptr();
        let mut lo = [_mm256_set1_ps(f32::INFINITY); 4];
        let mut hi = [_mm256_set1_ps(f32::NEG_INFINITY); 4];
        let mut nan = _mm256_setzero_ps();
        for i in (0..n).step_by(32) {
            for k in 0..4 {
                // SAFETY: `i + 8·k + 8 <= n <= values.len()`.
                let v = unsafe { _mm256_loadu_ps(src.add(i + 8 * k)) };
                lo[k] = _mm256_min_ps(v, lo[k]);
                hi[k] = _mm256_max_ps(v, hi[k]);
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            }
        }
        let a = _mm256_min_ps(_mm256_min_ps(lo[0], lo[1]), _mm256_min_ps(lo[2], lo[3]));
        let b = _mm256_max_ps(_mm256_max_ps(hi[0], hi[1]), _mm256_max_ps(hi[2], hi[3]));
        let (mut l, mut h) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: eight lanes into arrays of eight.
        unsafe {
            _mm256_storeu_ps(l.as_mut_ptr(), a);
            _mm256_storeu_ps(h.as_mut_ptr(), b);
        }
        if _mm256_movemask_ps(nan) != 0 {
            return (f32::NAN, f32::NAN, n);
        }
        let lo = l.into_iter().fold(f32::INFINITY, f32::min);
        let hi = h.into_iter().fold(f32::NEG_INFINITY, f32::max);
        (lo, hi, n)
    }

    /// Rows folded per load and store of the running results.
    const ROWS: usize = 8;

    /// [`super::fold_rows_min_max`] for the leading multiple of 8 of the columns; returns how many
    /// columns it did.
    ///
    /// # Safety
    /// The CPU must support AVX; `max` is as long as `min`, and `rows.len()` a multiple of it.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn rows_min_max(rows: &[f32], min: &mut [f32], max: &mut [f32]) -> usize {
        let cols = min.len();
        let n = rows.len() / cols;
        let vcols = cols / 8 * 8;
        let (src, mn, mx) = (rows.as_ptr(), min.as_mut_ptr(), max.as_mut_ptr());
        let mut r = 0;
        while r < n {
            let k = ROWS.min(n - r);
            for j in (0..vcols).step_by(8) {
                // SAFETY: `j + 8 <= vcols <= cols`, the length of `min` and `max`; row
                // `r + i < n` starts at `(r + i)·cols`, so its column `j + 7` is in `rows`.
                unsafe {
                    let at = src.add(r * cols + j);
                    let (a, b) = if k == ROWS {
                        fold::<ROWS>(
                            at,
                            cols,
                            _mm256_loadu_ps(mn.add(j)),
                            _mm256_loadu_ps(mx.add(j)),
                        )
                    } else {
                        let (mut a, mut b) =
                            (_mm256_loadu_ps(mn.add(j)), _mm256_loadu_ps(mx.add(j)));
                        for i in 0..k {
                            (a, b) = fold::<1>(at.add(i * cols), cols, a, b);
                        }
                        (a, b)
                    };
                    _mm256_storeu_ps(mn.add(j), a);
                    _mm256_storeu_ps(mx.add(j), b);
                }
            }
            r += k;
        }
        vcols
    }

    /// Folds `K` rows of eight values (`at`, `at + stride`, ...) into the running `(min, max)`.
    /// A NaN sticks: `min_ps(v, a)` returns `a` when either is NaN (so a NaN already in `a`
    /// stays), and a NaN among the values is caught by the unordered compare and OR-ed in as
    /// all ones.
    ///
    /// # Safety
    /// The CPU must support AVX; the `K` rows of eight values are readable.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn fold<const K: usize>(
        at: *const f32,
        stride: usize,
        mut a: __m256,
        mut b: __m256,
    ) -> (__m256, __m256) {
        let mut nan = _mm256_setzero_ps();
        for i in 0..K {
            // SAFETY: the caller's.
            let v = unsafe { _mm256_loadu_ps(at.add(i * stride)) };
            a = _mm256_min_ps(v, a);
            b = _mm256_max_ps(v, b);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        }
        (_mm256_or_ps(a, nan), _mm256_or_ps(b, nan))
    }
}

/// Per-scale `(min, max)` of `x` in the stat shape of its layout, i.e. broadcastable onto
/// `QuantLayout::view(x)` (per-group ranges cannot broadcast onto `x` itself without the view).
pub fn reduce_min_max<const D: usize>(
    x: Tensor<D>,
    granularity: Granularity,
    axis: usize,
    group_size: Option<usize>,
) -> Result<(Tensor<4>, Tensor<4>), QuantError> {
    let layout = QuantLayout::new(&x.dims(), granularity, axis, group_size)?;
    let (min, max) = layout.min_max(x);
    Ok((layout.broadcast(min), layout.broadcast(max)))
}

/// Scale and zero-point (as a float tensor of integers) for the range `[min, max]` under `spec`.
///
/// The range is first widened to include 0 (so 0 is exactly representable: padding and ReLU
/// zeros stay exact). Then, with `(qmin, qmax) = spec.qrange()`:
/// * signed symmetric: `s = max(|min|, |max|) / ((qmax - qmin) / 2)`, `zp = 0` (torch's
///   convention: 127.5 for int8, 127 with a narrow range);
/// * unsigned symmetric: `s = max / qmax`, `zp = 0` — the zero-point-free unsigned grid for
///   non-negative inputs (torch would instead centre the grid at 128);
/// * asymmetric: `s = (max - min) / (qmax - qmin)`, `zp = clamp(qmin - round(min / s), qmin, qmax)`.
///
/// `s` is never below [`MIN_SCALE`].
pub fn qparams_from_range<const D: usize>(
    min: Tensor<D>,
    max: Tensor<D>,
    spec: &QuantSpec,
) -> (Tensor<D>, Tensor<D>) {
    let (scale, zero_point) = scale_from_range(min, max, spec);
    let zero_point = zero_point.unwrap_or_else(|| scale.zeros_like());
    (scale, zero_point)
}

/// [`qparams_from_range`] without the all-zero zero-point of symmetric specs (`None`), so the
/// fake-quant forward can skip adding and subtracting it.
pub(crate) fn scale_from_range<const D: usize>(
    min: Tensor<D>,
    max: Tensor<D>,
    spec: &QuantSpec,
) -> (Tensor<D>, Option<Tensor<D>>) {
    let (qmin, qmax) = spec.qrange();
    let min = min.clamp_max(0.0);
    let max = max.clamp_min(0.0);
    if spec.symmetric {
        let scale = if spec.signed {
            let amax = min.abs().max_pair(max);
            amax.div_scalar((qmax - qmin) as f32 / 2.0)
        } else {
            max.div_scalar(qmax as f32)
        }
        .clamp_min(MIN_SCALE);
        (scale, None)
    } else {
        let scale = (max - min.clone())
            .div_scalar((qmax - qmin) as f32)
            .clamp_min(MIN_SCALE);
        let zero_point = (min / scale.clone())
            .round()
            .neg()
            .add_scalar(qmin)
            .clamp(qmin, qmax);
        (scale, Some(zero_point))
    }
}

/// [`scale_from_range`] on host values, each step written as the f32 operation burn-flex runs
/// for the tensor op (the same comparisons for the clamps and the pair maximum, its
/// ties-to-even rounding), so the bits are the same (tested against the tensor version). `None`
/// when a value is not finite: those keep the tensor version, whose NaN paths are not copied.
///
/// Why by hand: the tensor version is six to ten ops on tensors of a few values, each with its
/// dispatch and allocation; with the observer's update and the reads back for the fused
/// kernel they cost more per step than the fake-quant passes of the activations.
pub(crate) fn host_scale_from_range(
    min: &[f32],
    max: &[f32],
    spec: &QuantSpec,
) -> Option<(Vec<f32>, Option<Vec<f32>>)> {
    if min.len() != max.len() || min.iter().chain(max).any(|v| !v.is_finite()) {
        return None;
    }
    let (qmin, qmax) = spec.qrange();
    // burn-flex's `clamp_max(0)` / `clamp_min(0)` (a NaN-first test, then a strict compare).
    let clamp_max0 = |x: f32| if x.is_nan() || x < 0.0 { x } else { 0.0 };
    let clamp_min0 = |x: f32| if x.is_nan() || x > 0.0 { x } else { 0.0 };
    let at_least = |x: f32| {
        if x.is_nan() || x > MIN_SCALE {
            x
        } else {
            MIN_SCALE
        }
    };
    let lo = min.iter().map(|&v| clamp_max0(v));
    let hi = max.iter().map(|&v| clamp_min0(v));
    if spec.symmetric {
        let scale = if spec.signed {
            let half = (qmax - qmin) as f32 / 2.0;
            // `max_pair(a, b)`: `b` where `a < b`, else `a`.
            lo.zip(hi)
                .map(|(l, h)| {
                    let a = l.abs();
                    at_least((if a < h { h } else { a }) / half)
                })
                .collect()
        } else {
            hi.map(|h| at_least(h / qmax as f32)).collect()
        };
        Some((scale, None))
    } else {
        let span = (qmax - qmin) as f32;
        let (lo_f, hi_f) = (qmin as f32, qmax as f32);
        let (scale, zero_point) = lo
            .zip(hi)
            .map(|(l, h)| {
                let s = at_least((h - l) / span);
                let z = (-flex_round(l / s) + lo_f).clamp(lo_f, hi_f);
                (s, z)
            })
            .unzip();
        Some((scale, Some(zero_point)))
    }
}

/// burn-flex's `round` on f32: `round` (half away from zero), then ties moved to the even
/// neighbour by `r - signum(x)` (so a tie rounding to zero gives `+0.0` either side).
fn flex_round(x: f32) -> f32 {
    let r = x.round();
    // A tie has |x| < 2^23, so `r as i64` is exact where burn-flex's `to_i64` is `Some`.
    if (x - r).abs() == 0.5 {
        if (r as i64) % 2 != 0 {
            r - x.signum()
        } else {
            r
        }
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Granularity::*;
    use crate::ste::fake_quantize;
    use crate::ste::tests::{assert_close, t1, t2, vals};
    use burn::tensor::{Device, TensorData};

    fn t3(v: &[f32], shape: [usize; 3], d: &Device) -> Tensor<3> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), d)
    }

    /// Fake-quantizes `x` with qparams from its own per-scale range (what a dynamic or freshly
    /// observed quantizer does).
    fn fq<const D: usize>(x: Tensor<D>, spec: &QuantSpec, axis: usize) -> Tensor<D> {
        let layout = QuantLayout::for_spec(spec, &x.dims(), axis).unwrap();
        let (min, max) = layout.min_max(x.clone());
        let (s, zp) = qparams_from_range(min, max, spec);
        let (qmin, qmax) = spec.qrange();
        let y = fake_quantize(
            layout.view(x),
            layout.broadcast(s),
            layout.broadcast(zp),
            qmin,
            qmax,
        );
        layout.unview(y)
    }

    fn spec(bits: u32, symmetric: bool, g: Granularity, group: Option<usize>) -> QuantSpec {
        QuantSpec {
            bits,
            symmetric,
            granularity: g,
            group_size: group,
            ..QuantSpec::default()
        }
    }

    #[test]
    fn layouts_shapes() {
        let l = QuantLayout::new(&[2, 3, 4], PerChannel, 1, None).unwrap();
        assert_eq!(
            (l.view_shape(), l.stat_shape()),
            ([2, 3, 1, 4], [1, 3, 1, 1])
        );
        assert_eq!((l.num_scales(), l.per_scale()), (3, 8));
        let l = QuantLayout::new(&[8, 3], PerGroup, 0, Some(4)).unwrap();
        assert_eq!(
            (l.view_shape(), l.stat_shape()),
            ([1, 2, 4, 3], [1, 2, 1, 3])
        );
        assert_eq!((l.num_scales(), l.per_scale()), (6, 4));
        let l = QuantLayout::new(&[2, 3, 5], PerToken, 0, None).unwrap();
        assert_eq!(l.stat_shape(), [6, 1, 1, 1]);
        let l = QuantLayout::new(&[2, 3, 5], PerTensor, 7, None).unwrap();
        assert_eq!((l.num_scales(), l.per_scale()), (1, 30));
        assert!(QuantLayout::new(&[2, 0], PerTensor, 0, None).is_err());
    }

    /// Per-scale extremes by burn's row reductions over `rows()` (the device-agnostic path).
    fn by_rows<const D: usize>(l: &QuantLayout, x: Tensor<D>) -> (Vec<f32>, Vec<f32>) {
        let rows = l.rows(x);
        (vals(rows.clone().min_dim(1)), vals(rows.max_dim(1)))
    }

    #[test]
    fn host_reductions_match_burn_row_reductions() {
        let d = Device::flex();
        // 37 columns: two 16-wide strips and a scalar tail; a NaN in one column
        let (r, c) = (29, 37);
        let mut xs: Vec<f32> = (0..r * c)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        xs[5 * c + 3] = f32::NAN; // column 3 (a strip)
        xs[7 * c + 35] = f32::NAN; // column 35 (the tail)
        let x = t2(&xs, [r, c], &d);
        let same = |a: Vec<f32>, b: Vec<f32>| {
            assert_eq!(a.len(), b.len());
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert!(
                    u == v || (u.is_nan() && v.is_nan()),
                    "scale {i}: {u} vs {v}"
                );
            }
        };
        for (g, axis, group) in [
            (PerChannel, 1, None),
            (PerChannel, 0, None),
            (PerGroup, 0, Some(29)),
            (PerTensor, 0, None),
        ] {
            let l = QuantLayout::new(&[r, c], g, axis, group).unwrap();
            let (mn, mx) = l.min_max(x.clone());
            let (want_mn, want_mx) = by_rows(&l, x.clone());
            if g == PerTensor {
                // burn's full reduction, NaN included
                assert!(vals(mn).iter().all(|v| v.is_nan()));
                assert!(vals(mx).iter().all(|v| v.is_nan()));
                continue;
            }
            same(vals(mn), want_mn);
            same(vals(mx), want_mx);
        }
        // Large enough to split over threads: 300 × 200 per-channel along the columns (tasks
        // of 163 rows, a ragged last one) and per-group along the rows, with NaNs.
        let (r2, c2) = (300, 200);
        let mut big: Vec<f32> = (0..r2 * c2)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        big[17 * c2 + 70] = f32::NAN;
        big[250 * c2 + 199] = f32::NAN;
        assert!(big.len() >= TASK_ELEMENTS);
        let xb = t2(&big, [r2, c2], &d);
        for (g, axis, group) in [(PerChannel, 1, None), (PerGroup, 0, Some(100))] {
            let l = QuantLayout::new(&[r2, c2], g, axis, group).unwrap();
            let (mn, mx) = l.min_max(xb.clone());
            let (want_mn, want_mx) = by_rows(&l, xb.clone());
            same(vals(mn), want_mn);
            same(vals(mx), want_mx);
        }
        // per-tensor over several tasks of rows: a NaN in one task reaches the result, and
        // without it the result is burn's full reduction
        let l = QuantLayout::new(&[r2, c2], PerTensor, 0, None).unwrap();
        let (mn, mx) = l.min_max(xb.clone());
        assert!(vals(mn)[0].is_nan() && vals(mx)[0].is_nan());
        let clean: Vec<f32> = big
            .iter()
            .map(|v| if v.is_nan() { 0.5 } else { *v })
            .collect();
        let xc = t2(&clean, [r2, c2], &d);
        let (mn, mx) = l.min_max(xc.clone());
        same(vals(mn), vec![vals(xc.clone().min())[0]]);
        same(vals(mx), vec![vals(xc.max())[0]]);
        // per-tensor without NaN, large enough for the host path, and on an autodiff device
        // (`f32::max` drops the NaNs)
        let x = t2(
            &xs[..16 * 64]
                .iter()
                .map(|v| v.max(-4.0))
                .collect::<Vec<_>>(),
            [16, 64],
            &d,
        );
        let l = QuantLayout::new(&[16, 64], PerTensor, 0, None).unwrap();
        let (mn, mx) = l.min_max(x.clone().autodiff());
        same(vals(mn), vec![vals(x.clone().min())[0]]);
        same(vals(mx), vec![vals(x.clone().max())[0]]);
        let with_nan = x.slice_assign([3..4, 50..51], Tensor::full([1, 1], f32::NAN, &d));
        let (mn, mx) = l.min_max(with_nan);
        assert!(vals(mn)[0].is_nan() && vals(mx)[0].is_nan());
        // per-group with trailing axes: groups of 4 along axis 1 of [3, 8, 20]
        let xs3: Vec<f32> = (0..480).map(|i| ((i * 31) % 97) as f32 - 40.0).collect();
        let x3 = t3(&xs3, [3, 8, 20], &d);
        let l = QuantLayout::new(&[3, 8, 20], PerGroup, 1, Some(4)).unwrap();
        let (mn, mx) = l.min_max(x3.clone());
        let (want_mn, want_mx) = by_rows(&l, x3);
        same(vals(mn), want_mn);
        same(vals(mx), want_mx);
    }

    #[test]
    fn reduce_min_max_per_granularity() {
        let d = Device::flex();
        // [[1, -2, 3], [-4, 5, 0.5]]
        let x = t2(&[1.0, -2.0, 3.0, -4.0, 5.0, 0.5], [2, 3], &d);
        let (mn, mx) = reduce_min_max(x.clone(), PerTensor, 0, None).unwrap();
        assert_eq!(mn.dims(), [1, 1, 1, 1]);
        assert_eq!((vals(mn), vals(mx)), (vec![-4.0], vec![5.0]));
        let (mn, mx) = reduce_min_max(x.clone(), PerChannel, 0, None).unwrap();
        assert_eq!(mn.dims(), [1, 2, 1, 1]);
        assert_eq!((vals(mn), vals(mx)), (vec![-2.0, -4.0], vec![3.0, 5.0]));
        let (mn, mx) = reduce_min_max(x.clone(), PerChannel, 1, None).unwrap();
        assert_eq!(mn.dims(), [1, 3, 1, 1]);
        assert_eq!(
            (vals(mn), vals(mx)),
            (vec![-4.0, -2.0, 0.5], vec![1.0, 5.0, 3.0])
        );
        let (mn, mx) = reduce_min_max(x.clone(), PerToken, 0, None).unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![-2.0, -4.0], vec![3.0, 5.0]));
        // groups of 2 along axis 0 (the input axis of a [d_in, d_out] weight): per column
        let x = t2(&[1.0, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, -8.0], [4, 2], &d);
        let (mn, mx) = reduce_min_max(x, PerGroup, 0, Some(2)).unwrap();
        assert_eq!(mn.dims(), [1, 2, 1, 2]);
        // groups: col0 {1,-3} {5,7}; col1 {2,4} {6,-8}; order [group][col]
        assert_eq!(
            (vals(mn), vals(mx)),
            (vec![-3.0, 2.0, 5.0, -8.0], vec![1.0, 4.0, 7.0, 6.0])
        );
        let e = reduce_min_max(t1(&[1.0; 6], &d), PerGroup, 0, Some(4)).unwrap_err();
        assert_eq!(e.field(), "group_size");
    }

    /// The host scales and zero-points are the tensor ops' bits for every spec kind, over
    /// ranges with ±0, ties of the zero-point's rounding, tiny and large values.
    #[test]
    fn host_scale_from_range_matches_the_tensor_ops_bit_for_bit() {
        let d = Device::flex();
        let mut mins = vec![
            0.0f32, -0.0, -1.0, -0.5, -2.5, -3.5, -1e-30, -1e-3, -7.0, -1e6, 0.25,
        ];
        let mut maxs = vec![
            0.0f32, -0.0, 1.0, 0.5, 2.5, 127.5, 1e-30, 3e-3, 7.0, 1e6, -0.25,
        ];
        // Ranges whose zero-point lands on ties: min/s = k + 0.5 for the 8-bit asymmetric grid.
        for k in 0..40 {
            let s = 0.0137 * (k + 1) as f32;
            mins.push(-(k as f32 + 0.5) * s);
            maxs.push((255.0 - k as f32 - 0.5) * s);
        }
        for i in 0..200u32 {
            let h = i.wrapping_mul(2_654_435_761);
            mins.push(-((h % 10_007) as f32) / 977.0);
            maxs.push(((h >> 8) % 8_191) as f32 / 313.0);
        }
        let n = mins.len();
        for bits in [2, 4, 8] {
            for (signed, symmetric, narrow_range) in [
                (true, true, false),
                (true, true, true),
                (false, true, false),
                (true, false, false),
                (false, false, false),
            ] {
                let spec = QuantSpec {
                    bits,
                    signed,
                    symmetric,
                    narrow_range,
                    ..QuantSpec::default()
                };
                let t = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [n]), &d);
                let (scale, zp) = scale_from_range(t(&mins), t(&maxs), &spec);
                let (hs, hz) = host_scale_from_range(&mins, &maxs, &spec).unwrap();
                let bits = |v: Vec<f32>| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(vals(scale)), bits(hs), "scale, {spec:?}");
                assert_eq!(
                    zp.map(|z| bits(vals(z))),
                    hz.map(bits),
                    "zero-point, {spec:?}"
                );
            }
        }
        // Not finite: left to the tensor ops.
        let spec = QuantSpec::default();
        assert!(host_scale_from_range(&[f32::NAN], &[1.0], &spec).is_none());
        assert!(host_scale_from_range(&[-1.0], &[f32::INFINITY], &spec).is_none());
    }

    #[test]
    fn qparams_symmetric_asymmetric_and_unsigned() {
        let d = Device::flex();
        let s8 = QuantSpec::default();
        let (s, zp) = qparams_from_range(t1(&[-2.55, 0.5], &d), t1(&[1.0, 1.275], &d), &s8);
        // amax / 127.5; the second range is widened to include 0
        assert_close(&vals(s), &[0.02, 0.01], 1e-7);
        assert_eq!(vals(zp), vec![0.0, 0.0]);
        let narrow = QuantSpec {
            narrow_range: true,
            ..s8.clone()
        };
        let (s, _) = qparams_from_range(t1(&[-2.54], &d), t1(&[1.0], &d), &narrow);
        assert_close(&vals(s), &[0.02], 1e-7);
        let unsigned = QuantSpec {
            signed: false,
            ..s8.clone()
        };
        let (s, zp) = qparams_from_range(t1(&[-1.0], &d), t1(&[5.1], &d), &unsigned);
        assert_close(&vals(s), &[0.02], 1e-7);
        assert_eq!(vals(zp), vec![0.0]);
        // asymmetric uint4-style: [0, 15], range [-1, 2]: s = 0.2, zp = 0 - round(-5) = 5
        let asym = QuantSpec {
            bits: 4,
            signed: false,
            symmetric: false,
            ..s8.clone()
        };
        let (s, zp) = qparams_from_range(t1(&[-1.0, 0.3], &d), t1(&[2.0, 3.3], &d), &asym);
        // second: widened to [0, 3.3]: s = 0.22, zp = 0
        assert_close(&vals(s), &[0.2, 0.22], 1e-7);
        assert_eq!(vals(zp), vec![5.0, 0.0]);
        // asymmetric signed int8: range [-1, 2.4]: s = 3.4/255, zp = -128 - round(-1/s) = -53
        let asym8 = QuantSpec {
            symmetric: false,
            ..s8.clone()
        };
        let (s, zp) = qparams_from_range(t1(&[-1.0], &d), t1(&[2.4], &d), &asym8);
        assert_close(&vals(s), &[3.4 / 255.0], 1e-7);
        assert_eq!(vals(zp), vec![-53.0]);
        // degenerate all-zero range
        let (s, _) = qparams_from_range(t1(&[0.0], &d), t1(&[0.0], &d), &s8);
        assert_eq!(vals(s), vec![MIN_SCALE]);
    }

    #[test]
    fn fake_quant_per_tensor_symmetric() {
        let d = Device::flex();
        // int4 symmetric: amax 3.75 -> s = 3.75 / 7.5 = 0.5, codes in [-8, 7]
        let x = t1(&[-3.75, -1.3, 0.2, 0.8, 2.6, 3.7], &d);
        let y = vals(fq(x, &spec(4, true, PerTensor, None), 0));
        // /0.5: -7.5->-8, -2.6->-3, 0.4->0, 1.6->2, 5.2->5, 7.4->7
        assert_close(&y, &[-4.0, -1.5, 0.0, 1.0, 2.5, 3.5], 1e-6);
    }

    #[test]
    fn fake_quant_per_tensor_asymmetric() {
        let d = Device::flex();
        // uint2-style asym [0, 3] on range [-0.3, 0.6]: s = 0.3, zp = 0 - round(-1) = 1
        let sp = QuantSpec {
            bits: 2,
            signed: false,
            symmetric: false,
            ..QuantSpec::default()
        };
        let x = t1(&[-0.3, -0.1, 0.16, 0.44, 0.6], &d);
        // x/0.3+1 rounded: round(-1)+1=0, round(-0.33)+1=1, round(0.53)+1=2, round(1.47)+1=2, 3
        assert_close(&vals(fq(x, &sp, 0)), &[-0.3, 0.0, 0.3, 0.3, 0.6], 1e-6);
    }

    /// Hand formula of symmetric fake quantization with the f32 ops burn uses (IEEE division,
    /// half-to-even rounding), for the entries whose `x/s` lands near a rounding tie.
    fn qz(v: f32, s: f32, lo: f32, hi: f32) -> f32 {
        (v / s).round_ties_even().clamp(lo, hi) * s
    }

    #[test]
    fn fake_quant_per_channel_axis_0_and_1() {
        let d = Device::flex();
        let sp = spec(4, true, PerChannel, None);
        let x = t2(&[7.5, -2.4, 1.6, 0.75, -0.33, 0.06], [2, 3], &d);
        // axis 0, rows: amax 7.5 (s = 1) and 0.75 (s = 0.1)
        // row 0: 7.5 -> 8 -> clamp 7, -2.4 -> -2, 1.6 -> 2; row 1: 7.5 -> 7 either way,
        // -3.3 -> -3, 0.6 -> 1
        let y = vals(fq(x.clone(), &sp, 0));
        assert_close(&y, &[7.0, -2.0, 2.0, 0.7, -0.3, 0.1], 1e-6);
        // axis 1, columns: amax 7.5 (s = 1), 2.4 (s = 2.4/7.5), 1.6 (s = 1.6/7.5)
        let y = vals(fq(x, &sp, 1));
        let (s1, s2) = (2.4_f32 / 7.5, 1.6_f32 / 7.5);
        let want = [
            7.0,
            qz(-2.4, s1, -8.0, 7.0),
            qz(1.6, s2, -8.0, 7.0),
            1.0, // 0.75 -> 1
            qz(-0.33, s1, -8.0, 7.0),
            qz(0.06, s2, -8.0, 7.0),
        ];
        // the hand values: -7.5 -> -8, 7.5 -> 8 -> 7, -1.03 -> -1, 0.28 -> 0
        assert_close(&want, &[7.0, -8.0 * s1, 7.0 * s2, 1.0, -s1, 0.0], 1e-6);
        assert_close(&y, &want, 1e-6);
    }

    #[test]
    fn fake_quant_per_group_symmetric_and_asymmetric() {
        let d = Device::flex();
        // [4, 2] weight, groups of 2 along axis 0 -> 4 scales
        let x = t2(&[0.7, 3.0, -0.35, 1.0, 1.5, 0.2, 0.1, -0.4], [4, 2], &d);
        // int2 [-2, 1], s = amax / 1.5. Groups (rows 0-1 | rows 2-3) x (col 0 | col 1):
        //   {0.7, -0.35}: a = 0.7/1.5, codes 1.5 -> 2 -> 1 (or 1), -0.75 -> -1
        //   {3, 1}: s = 2, codes 1.5 -> 2 -> 1, 0.5 -> 0
        //   {1.5, 0.1}: s = 1, codes 1.5 -> 2 -> 1, 0
        //   {0.2, -0.4}: b = 0.4/1.5, codes 0.75 -> 1, -1.5 -> -2
        let y = vals(fq(x.clone(), &spec(2, true, PerGroup, Some(2)), 0));
        let (a, b) = (0.7_f32 / 1.5, 0.4_f32 / 1.5);
        let want = [a, 2.0, -a, 0.0, 1.0, b, 0.0, qz(-0.4, b, -2.0, 1.0)];
        assert_close(&want, &[a, 2.0, -a, 0.0, 1.0, b, 0.0, -2.0 * b], 1e-6);
        assert_close(&y, &want, 1e-6);
        // asymmetric uint2 [0, 3] on the same groups
        let asym = QuantSpec {
            bits: 2,
            signed: false,
            symmetric: false,
            granularity: PerGroup,
            group_size: Some(2),
            ..QuantSpec::default()
        };
        let y = vals(fq(x, &asym, 0));
        // {0.7,-0.35}: s = .35, zp = 1: codes 3, 0 ; {3,1}: [0,3], s = 1, zp = 0: 3, 1
        // {1.5,0.1}: [0,1.5], s = .5: 3, 0 ; {0.2,-0.4}: s = .2, zp = 2: 3, 0
        assert_close(&y, &[0.7, 3.0, -0.35, 1.0, 1.5, 0.2, 0.0, -0.4], 1e-6);
    }

    /// The lane-wise fold of one running range gives the scalar fold's min and max: every
    /// length around the 32-value blocks, a NaN anywhere (in the blocks or the tail), and equal
    /// values for an all-zero input.
    #[test]
    fn flat_min_max_matches_a_scalar_fold() {
        let scalar = |v: &[f32]| {
            v.iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                    (nan_min(lo, x), nan_max(hi, x))
                })
        };
        let bits = |(a, b): (f32, f32)| (a.to_bits(), b.to_bits());
        for len in (0..100usize).chain([1000, 4099]) {
            let v: Vec<f32> = (0..len)
                .map(|i| ((i * 7919 + 13) % 1009) as f32 / 37.0 - 13.5)
                .collect();
            assert_eq!(bits(flat_min_max(&v)), bits(scalar(&v)), "len {len}");
            for at in [0, len / 2, len.saturating_sub(1)] {
                if len > 0 {
                    let mut v = v.clone();
                    v[at] = f32::NAN;
                    let (lo, hi) = flat_min_max(&v);
                    assert!(lo.is_nan() && hi.is_nan(), "len {len}, NaN at {at}");
                }
            }
            let zeros = vec![0.0f32; len];
            assert_eq!(flat_min_max(&zeros), scalar(&zeros));
        }
        // Through the per-tensor reduction (one column) and with a running range folded in.
        let v: Vec<f32> = (0..5000).map(|i| ((i * 31) % 977) as f32 - 400.0).collect();
        let (mut min, mut max) = ([-500.0f32], [100.0f32]);
        fold_rows_min_max(&v, &mut min, &mut max);
        assert_eq!((min[0], max[0]), (-500.0, 576.0));
    }

    #[test]
    fn fake_quant_per_token() {
        let d = Device::flex();
        // [2 batch, 2 tokens, 3 features]; int8 symmetric per token: s = amax / 127.5
        let x = t3(
            &[
                1.275, -0.5, 0.1, 0.0, 0.0, 0.0, -25.5, 10.0, 3.0, 0.01, 0.02, -0.0255,
            ],
            [2, 2, 3],
            &d,
        );
        let y = vals(fq(x, &QuantSpec::with_bits(8).clone_with(PerToken), 0));
        let q = |v: f32, s: f32| qz(v, s, -128.0, 127.0);
        let (s0, s2, s3) = (1.275_f32 / 127.5, 25.5_f32 / 127.5, 0.0255_f32 / 127.5);
        let want = [
            q(1.275, s0),
            q(-0.5, s0),
            q(0.1, s0),
            0.0, // an all-zero token keeps its zeros (scale MIN_SCALE)
            0.0,
            0.0,
            q(-25.5, s2),
            q(10.0, s2),
            q(3.0, s2),
            q(0.01, s3),
            q(0.02, s3),
            q(-0.0255, s3),
        ];
        // hand: 127.5 -> 127 (clamp), -50, 10 ; -127.5 -> -128, 50, 15 ; 50, 100, -127.5 -> -128
        let hand = [
            1.27, -0.5, 0.1, 0.0, 0.0, 0.0, -25.6, 10.0, 3.0, 0.01, 0.02, -0.0256,
        ];
        assert_close(&want, &hand, 1e-5);
        assert_close(&y, &want, 1e-6);
    }

    #[test]
    fn fake_quant_per_channel_and_per_token_asymmetric() {
        let d = Device::flex();
        // uint2 [0, 3] asymmetric. [2, 3]:
        //   row 0 [-0.3, 0.6, 0.2]: s = 0.3, zp = 1 -> codes 0, 3, round(.67)+1 = 2
        //   row 1 [1.2, 0.4, 0.9] (widened to [0, 1.2]): s = 0.4, zp = 0 -> 3, 1, round(2.25) = 2
        let x = t2(&[-0.3, 0.6, 0.2, 1.2, 0.4, 0.9], [2, 3], &d);
        let asym = |g| QuantSpec {
            bits: 2,
            signed: false,
            symmetric: false,
            granularity: g,
            ..QuantSpec::default()
        };
        let want = [-0.3, 0.6, 0.3, 1.2, 0.4, 0.8];
        assert_close(&vals(fq(x.clone(), &asym(PerChannel), 0)), &want, 1e-6);
        assert_close(&vals(fq(x.clone(), &asym(PerToken), 0)), &want, 1e-6);
        // per channel on axis 1: columns [-0.3, 1.2]: s = 0.5, zp = 0 - round(-0.6) = 1;
        // [0.6, 0.4] -> [0, 0.6]: s = 0.2, zp = 0; [0.2, 0.9] -> [0, 0.9]: s = 0.3, zp = 0
        // codes: -1+1 = 0, round(2.4)+1 = 3 ; 3, 2 ; round(.67) = 1, 3
        let y = vals(fq(x, &asym(PerChannel), 1));
        assert_close(&y, &[-0.5, 0.6, 0.3, 1.0, 0.4, 0.9], 1e-6);
    }

    impl QuantSpec {
        fn clone_with(&self, g: Granularity) -> Self {
            Self {
                granularity: g,
                ..self.clone()
            }
        }
    }
}
