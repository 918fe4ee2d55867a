//! Straight-through estimators: the one place where quench decides what gradient a
//! non-differentiable quantizer has. They are built from burn ops, so burn's autodiff gives the
//! gradients documented here; on Flex the two hottest ones are recorded as single autodiff nodes
//! instead (`crate::flexops`: [`straight_through`], and the clipped estimator of the fused
//! fake-quant), with the same values and gradient bits and none of the forward ops.
//!
//! Two value-exact tricks are used throughout:
//! * `q.detach() + (x - x.detach())` has the value of `q` *exactly* (the second term is `0.0`;
//!   only a `-0.0` in `q` becomes `0.0`) and the gradient of `x`. The textbook
//!   `x + (q - x).detach()` has the same gradient but its value can be one ulp off `q`, which
//!   would break bit-exact integer export.
//! * `x.detach() + (x·g - (x·g).detach())` has the value of `x` exactly and `g` times its gradient.

use burn::tensor::{Bool, DType, Tensor};

use crate::qparams::{ColumnRanges, HostCopy};

/// Forward `q`, backward the identity to `x` (the straight-through estimator in its general form).
///
/// On Flex a tracked `x` gets one recorded node (value `q`, gradient handed on unchanged)
/// instead of the two tracked ops of `q.detach() + (x - x.detach())`; same value and gradient.
pub fn straight_through<const D: usize>(x: Tensor<D>, q: Tensor<D>) -> Tensor<D> {
    match crate::flexops::identity_straight_through(&x, &q) {
        Some(y) => y,
        None => q.detach() + (x.clone() - x.detach()),
    }
}

/// Rounds half-to-even in the forward pass and passes the gradient straight through.
pub fn round_ste<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let rounded = x.clone().detach().round();
    straight_through(x, rounded)
}

/// Keeps the value of `x` and multiplies its gradient by `g` (LSQ's step-size gradient scale).
pub fn scale_grad<const D: usize>(x: Tensor<D>, g: f32) -> Tensor<D> {
    let xg = x.clone().mul_scalar(g);
    x.detach() + (xg.clone() - xg.detach())
}

/// Affine fake quantization `(clamp(round(x/s) + zp, qmin, qmax) - zp)·s` with the clipped STE.
///
/// `scale` and `zero_point` broadcast onto `x` (1s on the reduced axes) and are constants here
/// (detached). The gradient wrt `x` is 1 where `qmin <= round(x/s) + zp <= qmax` and 0 outside,
/// as in `torch.fake_quantize_per_channel_affine` (the clamp bounds are inside).
pub fn fake_quantize<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Tensor<D>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    fake_quantize_affine(x, scale, Some(zero_point), qmin, qmax)
}

/// [`fake_quantize`] with an optional zero-point (`None`: zero, and no ops spent on it).
///
/// The forward value is computed off the autodiff graph, on the plain backend, and the gradient
/// is attached with one masked straight-through: `q + (x·k - (x·k).detach())`, `k` = 1 where
/// the code is in range and 0 where it was clamped. The value is `q` exactly (the bracket is
/// `0.0`) and the gradient wrt `x` is the upstream one times `k`: three tracked ops (one in the
/// backward pass) instead of a tracked op per step of the formula.
pub(crate) fn fake_quantize_affine<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Option<Tensor<D>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    fake_quantize_affine_with(x, None, scale, zero_point, qmin, qmax)
}

/// [`fake_quantize_affine`] given, on the CPU backend, a host copy of `x` already taken (its
/// values, in `x`'s row-major order; the copy is consumed as the output buffer).
pub(crate) fn fake_quantize_affine_with<const D: usize>(
    x: Tensor<D>,
    host: Option<HostCopy>,
    scale: Tensor<D>,
    zero_point: Option<Tensor<D>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    let scale = scale.without_autodiff();
    let zero_point = zero_point.map(Tensor::without_autodiff);
    let tracked = x.is_tracked();
    let fused = cpu::fake_quantize(
        &x,
        host,
        &scale,
        zero_point.as_ref(),
        qmin,
        qmax,
        tracked,
        None,
    );
    match fused {
        Some((q, mask, _)) => with_gradient(x, q, mask),
        None => {
            let (raw, codes) =
                raw_and_codes(x.clone(), scale.clone(), zero_point.clone(), qmin, qmax);
            let in_range = tracked.then(|| InRange::Bool(raw.equal(codes.clone())));
            let q = match zero_point {
                Some(zp) => codes - zp,
                None => codes,
            } * scale;
            attach(x, q, in_range)
        }
    }
}

/// [`fake_quantize_affine_with`] on the CPU path with host scales (and zero-points) of shape
/// `scale_dims`, broadcasting onto `x` in its own rank. With `check`, an expected per-column
/// range `(min, max)` of `x` (scales along the last axis; a range hint, `crate::range_hint`) is
/// compared with the values' own in the same pass: `Ok` only when they are equal bit for bit,
/// else `Err` with the actual range when it has no NaN and no zero. `Err(None)` also when the
/// CPU kernel does not apply (the caller then takes the tensor path).
#[allow(clippy::too_many_arguments)]
pub(crate) fn fake_quantize_affine_values<const D: usize>(
    x: Tensor<D>,
    host: HostCopy,
    scale: &[f32],
    zero_point: Option<&[f32]>,
    scale_dims: [usize; D],
    qmin: i32,
    qmax: i32,
    check: Option<(&[f32], &[f32])>,
) -> Result<Tensor<D>, Option<ColumnRanges>> {
    let tracked = x.is_tracked();
    let (zp, dims) = (zero_point, &scale_dims[..]);
    match cpu::fake_quantize_values(&x, Some(host), scale, dims, zp, qmin, qmax, tracked, check) {
        Some((q, mask, cpu::Check::Same | cpu::Check::NotAsked)) => Ok(with_gradient(x, q, mask)),
        Some((_, _, cpu::Check::Differs(actual))) => Err(actual),
        None => Err(None),
    }
}

/// The fused kernel's output `q` with the clipped straight-through gradient wrt `x`, as `mask`
/// says where the codes were clamped.
fn with_gradient<const D: usize>(x: Tensor<D>, q: Tensor<D>, mask: cpu::Mask) -> Tensor<D> {
    let in_range = match mask {
        cpu::Mask::AllIn => return straight_through(x, q),
        cpu::Mask::Clamped(at) => {
            // One recorded node whose backward zeroes the clamped positions' gradients, instead
            // of the three tracked ops of `clipped_straight_through` (same value, same
            // gradient bits).
            let dims = q.dims();
            match crate::flexops::masked_straight_through(x.clone(), q.clone(), at) {
                Ok(y) => return y,
                Err(at) => {
                    let keep = cpu::Mask::Clamped(at).to_floats(q.shape().num_elements());
                    let device = q.device();
                    let keep =
                        Tensor::from_data(burn::tensor::TensorData::new(keep, dims), &device);
                    Some(InRange::Float(keep))
                }
            }
        }
        cpu::Mask::NotWanted => None,
    };
    attach(x, q, in_range)
}

/// `q` with the clipped straight-through gradient wrt `x` (`in_range`: where it passes; `None`:
/// `x` is not tracked).
fn attach<const D: usize>(x: Tensor<D>, q: Tensor<D>, in_range: Option<InRange<D>>) -> Tensor<D> {
    match in_range {
        Some(in_range) => clipped_straight_through(x, q, in_range),
        None if x.is_autodiff() => q.autodiff(),
        None => q,
    }
}

/// Where the codes were in range (not clamped): a bool mask, or the same as 1.0/0.0 floats.
enum InRange<const D: usize> {
    Bool(Tensor<D, Bool>),
    Float(Tensor<D>),
}

/// `1.5·2^23`: adding and subtracting it rounds an f32 of magnitude below `2^22` to an integer,
/// half to even (the sum lands where the f32 spacing is exactly 1, and IEEE addition rounds to
/// nearest even), bit-for-bit what `round` gives.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `round(v) + zp` (half to even; `zp` an optional integer-valued tensor broadcasting onto `v`).
///
/// On f32 with a small code range (`|qmin|, |qmax| < 2^20`) this is two additions,
/// `(v + M) - (M - zp)`, instead of burn's `round` (a scalar `roundf` loop on CPU backends, 10x
/// slower) plus an add: for `|v| < 2^22` both are exact integer arithmetic, and every larger
/// `|v|`, where the trick could be a unit off, lands far outside `[qmin, qmax]` either way — so
/// the clamped codes and the in-range mask are bit-for-bit those of `round(v) + zp`.
pub(crate) fn round_add_zp<const D: usize>(
    v: Tensor<D>,
    zero_point: Option<Tensor<D>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    let magic = v.dtype() == DType::F32 && qmin.unsigned_abs().max(qmax.unsigned_abs()) < (1 << 20);
    match (magic, zero_point) {
        (true, None) => v.add_scalar(ROUND_MAGIC).sub_scalar(ROUND_MAGIC),
        // `M - zp` is exact (integers below 2^24), so is the subtraction of it.
        (true, Some(zp)) => v.add_scalar(ROUND_MAGIC) - zp.neg().add_scalar(ROUND_MAGIC),
        (false, None) => v.round(),
        (false, Some(zp)) => v.round() + zp,
    }
}

/// The unclamped `round(x/s) + zp` and the clamped codes, both off the autodiff graph.
fn raw_and_codes<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Option<Tensor<D>>,
    qmin: i32,
    qmax: i32,
) -> (Tensor<D>, Tensor<D>) {
    let v = x.without_autodiff() / scale.without_autodiff();
    let raw = round_add_zp(v, zero_point.map(Tensor::without_autodiff), qmin, qmax);
    // Two one-sided clamps: the same values as `clamp`, whose CPU kernel is far slower.
    let codes = raw.clone().clamp_min(qmin).clamp_max(qmax);
    (raw, codes)
}

/// Forward `q` (a constant), backward the upstream gradient to `x` where `in_range`, 0 elsewhere.
fn clipped_straight_through<const D: usize>(
    x: Tensor<D>,
    q: Tensor<D>,
    in_range: InRange<D>,
) -> Tensor<D> {
    let inside = match in_range {
        // A multiply by a 0/1 mask: elementwise products are fast kernels, masked fills are not.
        InRange::Float(keep) => x * keep,
        InRange::Bool(keep) if x.dtype() == DType::F32 => x * keep.float(),
        InRange::Bool(keep) => x.mask_fill(keep.bool_not(), 0.0),
    };
    q.autodiff() + (inside.clone() - inside.detach())
}

/// The integer codes `clamp(round(x/s) + zp, qmin, qmax)` that [`fake_quantize`] uses, as floats.
pub fn affine_codes<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Tensor<D>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    affine_codes_opt(x, scale, Some(zero_point), qmin, qmax)
}

/// [`affine_codes`] with an optional zero-point, matching [`fake_quantize_affine`] bit for bit
/// (the same ops in the same order).
pub(crate) fn affine_codes_opt<const D: usize>(
    x: Tensor<D>,
    scale: Tensor<D>,
    zero_point: Option<Tensor<D>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    raw_and_codes(x, scale, zero_point, qmin, qmax).1
}

/// LSQ fake quantization (Esser et al. 2020): `round(clamp(x/s, qmin, qmax))·s` with `s` learned.
///
/// `step` broadcasts onto `x`. Gradients, times the upstream gradient:
/// * wrt `x`: 1 where `qmin <= x/s <= qmax`, 0 outside;
/// * wrt `s`: `(round(x/s) - x/s)·g` inside, `qmin·g` below, `qmax·g` above,
///
/// with `g = grad_scale` (the paper's `1/sqrt(N·Qp)`), applied through [`scale_grad`].
pub fn lsq_quantize<const D: usize>(
    x: Tensor<D>,
    step: Tensor<D>,
    qmin: i32,
    qmax: i32,
    grad_scale: f32,
) -> Tensor<D> {
    let s = scale_grad(step, grad_scale);
    round_ste((x / s.clone()).clamp(qmin, qmax)) * s
}

/// The integer codes `round(clamp(x/s, qmin, qmax))` that [`lsq_quantize`] uses, as floats.
pub fn lsq_codes<const D: usize>(x: Tensor<D>, step: Tensor<D>, qmin: i32, qmax: i32) -> Tensor<D> {
    (x.detach() / step.detach()).clamp(qmin, qmax).round()
}

/// PACT clip (Choi et al. 2018): `clamp(x, 0, alpha)` (unsigned) or `clamp(x, -alpha, alpha)`
/// (signed), with `alpha` a one-element learned tensor.
///
/// Gradients: wrt `x` 1 strictly inside the clip, 0 outside; wrt `alpha` 1 where `x >= alpha`
/// (signed: also -1 where `x <= -alpha`), 0 inside. Built with `mask_where`, which routes the
/// gradient of the clipped positions to the broadcast `alpha`.
pub fn pact_clip<const D: usize>(x: Tensor<D>, alpha: Tensor<1>, signed: bool) -> Tensor<D> {
    let shape = x.shape();
    let alpha: Tensor<D> = alpha.reshape([1; D]).expand(shape);
    let x_value = x.clone().detach();
    let upper = x_value.clone().greater_equal(alpha.clone().detach());
    let y = x.mask_where(upper, alpha.clone());
    if signed {
        let neg_alpha = alpha.neg();
        let lower = x_value.lower_equal(neg_alpha.clone().detach());
        y.mask_where(lower, neg_alpha)
    } else {
        let below_zero = x_value.lower_elem(0.0);
        y.mask_fill(below_zero, 0.0)
    }
}

/// The fused CPU path of [`fake_quantize_affine`] on the Flex backend, whose tensors live in
/// host memory: one pass over `x`'s values computes the fake-quantized values and the positions
/// of clamped codes (the clipped estimator's zeros), where burn's ops take nine (divide, round, add, two clamps, compare, convert, subtract,
/// multiply), each a full read and write of the operand. The arithmetic is the same IEEE f32
/// sequence as the op-by-op path (`x / s`, round half to even, `+ zp`, NaN-propagating clamps,
/// `(c - zp)·s`), so both give bit-identical values, codes and masks — `quantize_to_int`, which
/// takes the op-by-op path, reproduces this forward exactly.
mod cpu {
    use std::mem::MaybeUninit;

    use burn::tensor::{DType, Device, Tensor, TensorData};
    use rayon::prelude::*;

    use crate::flexops::task_len;
    use crate::qparams::{ColumnRanges, HostCopy};

    /// The fake-quantized `x` as a plain tensor and (if `track`) where its codes were clamped;
    /// `None` when not applicable (another backend or dtype, scales varying along more than one
    /// axis, or more than `u32::MAX` elements), for the op-by-op path.
    ///
    /// One pass reads `x`'s values (shared with the graph, not copied) and writes the output
    /// into a new, unfilled buffer, split over rayon's threads in runs of whole rows.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fake_quantize<const D: usize>(
        x: &Tensor<D>,
        host: Option<HostCopy>,
        scale: &Tensor<D>,
        zero_point: Option<&Tensor<D>>,
        qmin: i32,
        qmax: i32,
        track: bool,
        check: Option<(&[f32], &[f32])>,
    ) -> Option<(Tensor<D>, Mask, Check)> {
        if scale.dtype() != DType::F32
            || zero_point.is_some_and(|z| z.dims() != scale.dims() || z.dtype() != DType::F32)
        {
            return None;
        }
        let values = |t: &Tensor<D>| t.to_data().try_to_vec::<f32>().ok();
        let zero_point = match zero_point {
            Some(z) => Some(values(z)?),
            None => None,
        };
        let (scale_dims, scale) = (scale.dims(), values(scale)?);
        let zp = zero_point.as_deref();
        fake_quantize_values(x, host, &scale, &scale_dims, zp, qmin, qmax, track, check)
    }

    /// [`fake_quantize`] with the scales (and zero-points) as host values, of shape
    /// `scale_dims` (broadcasting onto `x`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fake_quantize_values<const D: usize>(
        x: &Tensor<D>,
        host: Option<HostCopy>,
        scale: &[f32],
        scale_dims: &[usize],
        zero_point: Option<&[f32]>,
        qmin: i32,
        qmax: i32,
        track: bool,
        check: Option<(&[f32], &[f32])>,
    ) -> Option<(Tensor<D>, Mask, Check)> {
        if x.dtype() != DType::F32 || x.device() != Device::flex() {
            return None;
        }
        let dims = x.dims();
        let (channels, inner) = broadcast_axis(&dims, scale_dims)?;
        if scale.len() != channels || zero_point.is_some_and(|z| z.len() != channels) {
            return None;
        }
        let host = match host {
            Some(host) => host,
            None => HostCopy::of(x)?,
        };
        let src = host.values();
        let len = src.len();
        assert_eq!(len, dims.iter().product::<usize>());
        u32::try_from(len).ok()?;
        let (lo, hi) = (qmin as f32, qmax as f32);
        // Scales along the last axis: rows of `channels` elements, a scale per element. Else
        // runs of `inner` elements sharing one scale, run `r` using scale `r % channels`. One
        // scale (per tensor): any split is a run, so tasks need not hold the whole tensor.
        let per_element = inner == 1 && channels > 1;
        let single = channels == 1;
        // Checking a range hint: scales along the last axis only, one per column.
        if check.is_some_and(|(min, max)| {
            !per_element || min.len() != channels || max.len() != channels
        }) {
            return None;
        }
        let unit = if per_element {
            channels
        } else if single {
            1
        } else {
            inner
        }
        .max(1);
        let chunk = task_len(unit);
        let zero = vec![0.0; channels];
        let z_all = zero_point.unwrap_or(&zero);
        let zp = |k: usize| zero_point.map_or(0.0, |z| z[k]);
        // One task: its slice of the output, the clamped positions it met (if tracked), and
        // (if checking) its rows' per-column range.
        let task = |(t, out): (usize, &mut [MaybeUninit<f32>])| {
            let first = t * chunk;
            let src = &src[first..first + out.len()];
            let mut clamped = Vec::new();
            let mut track = track.then_some(&mut clamped);
            if single {
                per_run(src, out, scale[0], zp(0), lo, hi, first, track);
                return (clamped, None);
            }
            let mut range = check.map(|_| ColumnRange::new(channels));
            let units = src.chunks_exact(unit).zip(out.chunks_exact_mut(unit));
            for (i, (s, o)) in units.enumerate() {
                let base = first + i * unit;
                let track = track.as_deref_mut();
                if per_element {
                    per_element_row(s, o, scale, z_all, lo, hi, base, track, range.as_mut());
                } else {
                    let c = (first / unit + i) % channels;
                    per_run(s, o, scale[c], zp(c), lo, hi, base, track);
                }
            }
            (clamped, range)
        };
        let mut out: Vec<f32> = Vec::with_capacity(len);
        // One task (a pass of up to `chunk` elements) runs right here.
        let (clamped, ranges): (Vec<Vec<u32>>, Vec<Option<ColumnRange>>) = out.spare_capacity_mut()
            [..len]
            .par_chunks_mut(chunk)
            .enumerate()
            .map(task)
            .unzip();
        // SAFETY: the tasks cover the first `len` slots of `out` in whole units (`len` is a
        // multiple of `unit`: a dimension, the product of trailing ones, or 1), and `per_run` /
        // `per_element_row` write every slot of each unit.
        unsafe { out.set_len(len) };
        let q = Tensor::from_data(TensorData::new(out, dims), &host.device);
        let mask = if !track {
            Mask::NotWanted
        } else if clamped.iter().all(Vec::is_empty) {
            Mask::AllIn
        } else {
            Mask::Clamped(clamped.concat())
        };
        let check = match check {
            None => Check::NotAsked,
            Some((min, max)) => {
                ColumnRange::check(ColumnRange::merged(ranges.into_iter().flatten()), min, max)
            }
        };
        Some((q, mask, check))
    }

    /// Whether the values had the per-column range a [`fake_quantize`] caller expected.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Check {
        /// No range was given.
        NotAsked,
        /// The values' per-column min and max are the expected ones, bit for bit.
        Same,
        /// They are not: the actual `(min, max)` when it has no NaN and no zero (then any
        /// reduction of the values gives these bits), else `None`.
        Differs(Option<ColumnRanges>),
    }

    /// Running per-column min and max of rows, and whether a NaN was among the values (min/max
    /// themselves skip NaN here; the flag decides).
    pub(super) struct ColumnRange {
        min: Vec<f32>,
        max: Vec<f32>,
        nan: bool,
    }

    impl ColumnRange {
        fn new(cols: usize) -> Self {
            Self {
                min: vec![f32::INFINITY; cols],
                max: vec![f32::NEG_INFINITY; cols],
                nan: false,
            }
        }

        /// The tasks' ranges folded into one.
        fn merged(parts: impl Iterator<Item = ColumnRange>) -> Option<ColumnRange> {
            parts.reduce(|mut a, b| {
                for (x, y) in a.min.iter_mut().zip(b.min) {
                    *x = x.min(y);
                }
                for (x, y) in a.max.iter_mut().zip(b.max) {
                    *x = x.max(y);
                }
                a.nan |= b.nan;
                a
            })
        }

        /// This (merged) range against the expected one.
        fn check(range: Option<ColumnRange>, min: &[f32], max: &[f32]) -> Check {
            let Some(r) = range else {
                return Check::Differs(None);
            };
            let bits = |a: &[f32], b: &[f32]| {
                a.iter()
                    .map(|v| v.to_bits())
                    .eq(b.iter().map(|v| v.to_bits()))
            };
            if !r.nan && bits(&r.min, min) && bits(&r.max, max) {
                return Check::Same;
            }
            let clean = !r.nan && crate::range_hint::order_free(&r.min, &r.max);
            Check::Differs(clean.then_some((r.min, r.max)))
        }
    }

    /// Where [`fake_quantize`]'s codes were clamped: the positions whose gradient is zero.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Mask {
        /// Not asked for (an untracked input).
        NotWanted,
        /// Every code was in range: the gradient is the identity.
        AllIn,
        /// The row-major positions of the clamped codes (and NaNs), ascending. Min/max ranges
        /// clamp few or none (a symmetric grid's positive end: one weight per channel), so a
        /// list is smaller than a 0/1 mask and its backward touches only those gradients.
        Clamped(Vec<u32>),
    }

    impl Mask {
        /// As 1.0 (in range) / 0.0 (clamped) floats over `len` elements.
        pub(crate) fn to_floats(&self, len: usize) -> Vec<f32> {
            let mut keep = vec![1.0; len];
            if let Mask::Clamped(at) = self {
                for &i in at {
                    keep[i as usize] = 0.0;
                }
            }
            keep
        }
    }

    /// `(channels, inner)` when the scale shape `s` broadcasts onto `x` along at most one axis:
    /// element `i` then uses scale `(i / inner) % channels`.
    fn broadcast_axis(x: &[usize], s: &[usize]) -> Option<(usize, usize)> {
        let mut varying = x.iter().zip(s).enumerate().filter(|(_, (_, s))| **s != 1);
        match (varying.next(), varying.next()) {
            (None, _) => Some((1, x.iter().product::<usize>().max(1))),
            (Some((a, (xd, sd))), None) if xd == sd => Some((*sd, x[a + 1..].iter().product())),
            _ => None,
        }
    }

    /// One element: the fake-quantized value and whether its code was in range. `z` is 0.0
    /// without a zero-point: adding it turns a rounded `-0.0` into `0.0`, as the op-by-op path
    /// (whose rounding is `(v + M) - M`) does.
    #[inline]
    fn one(x: f32, s: f32, z: f32, lo: f32, hi: f32) -> (f32, bool) {
        let raw = (x / s).round_ties_even() + z;
        let c = if raw.is_nan() || raw > lo { raw } else { lo };
        let c = if c.is_nan() || c < hi { c } else { hi };
        ((c - z) * s, raw == c)
    }

    /// `src` (elements `base..` of the tensor) fake-quantized with one scale and zero-point
    /// into `out`, every slot written; the positions of clamped codes pushed onto `clamped`.
    #[allow(clippy::too_many_arguments)]
    fn per_run(
        src: &[f32],
        out: &mut [MaybeUninit<f32>],
        s: f32,
        z: f32,
        lo: f32,
        hi: f32,
        base: usize,
        mut clamped: Option<&mut Vec<u32>>,
    ) {
        assert_eq!(src.len(), out.len());
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: AVX is available (checked above); lengths checked above.
            done = unsafe { avx::per_run(src, out, s, z, lo, hi, base, clamped.as_deref_mut()) };
        }
        for i in done..src.len() {
            let (q, inside) = one(src[i], s, z, lo, hi);
            out[i].write(q);
            if !inside && let Some(c) = clamped.as_deref_mut() {
                c.push((base + i) as u32);
            }
        }
    }

    /// `src` (elements `base..` of the tensor) fake-quantized with a scale and zero-point per
    /// element into `out`, every slot written; the positions of clamped codes pushed onto
    /// `clamped`.
    /// With `range`, the row's values are folded into its per-column min and max as well.
    #[allow(clippy::too_many_arguments)]
    fn per_element_row(
        src: &[f32],
        out: &mut [MaybeUninit<f32>],
        s: &[f32],
        z: &[f32],
        lo: f32,
        hi: f32,
        base: usize,
        mut clamped: Option<&mut Vec<u32>>,
        mut range: Option<&mut ColumnRange>,
    ) {
        assert!(src.len() == out.len() && src.len() == s.len() && src.len() == z.len());
        assert!(
            range
                .as_ref()
                .is_none_or(|r| r.min.len() == src.len() && r.max.len() == src.len())
        );
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx") {
            let track = clamped.as_deref_mut();
            // SAFETY: AVX is available (checked above); lengths checked above.
            done = unsafe {
                match range.as_deref_mut() {
                    Some(r) => avx::per_element::<true>(
                        src, out, s, z, lo, hi, base, track, &mut r.min, &mut r.max, &mut r.nan,
                    ),
                    None => avx::per_element::<false>(
                        src,
                        out,
                        s,
                        z,
                        lo,
                        hi,
                        base,
                        track,
                        &mut [],
                        &mut [],
                        &mut false,
                    ),
                }
            };
        }
        for i in done..src.len() {
            let (q, inside) = one(src[i], s[i], z[i], lo, hi);
            out[i].write(q);
            if !inside && let Some(c) = clamped.as_deref_mut() {
                c.push((base + i) as u32);
            }
            if let Some(r) = range.as_deref_mut() {
                r.min[i] = r.min[i].min(src[i]);
                r.max[i] = r.max[i].max(src[i]);
                r.nan |= src[i].is_nan();
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod avx {
        use std::arch::x86_64::*;
        use std::mem::MaybeUninit;

        /// Eight lanes of [`super::one`]: (fake-quantized, the in-range lanes as bits 0..8).
        /// `max_ps(lo, v)` and `min_ps(hi, v)` return their second operand when it is NaN, so
        /// NaN propagates as in burn's clamps.
        #[inline]
        #[target_feature(enable = "avx")]
        fn lanes(x: __m256, s: __m256, z: __m256, lo: __m256, hi: __m256) -> (__m256, i32) {
            let v = _mm256_div_ps(x, s);
            let raw = _mm256_add_ps(
                _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
                z,
            );
            let c = _mm256_min_ps(hi, _mm256_max_ps(lo, raw));
            let inside = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(raw, c));
            (_mm256_mul_ps(_mm256_sub_ps(c, z), s), inside)
        }

        /// Pushes `at + lane` for each lane of eight not set in `inside` (some lane is not):
        /// out of line, as it is rare; the caller tests `inside != 0xff`.
        #[cold]
        #[inline(never)]
        fn push_clamped(clamped: &mut Option<&mut Vec<u32>>, inside: i32, at: usize) {
            if let Some(c) = clamped.as_deref_mut() {
                for lane in 0..8 {
                    if inside & (1 << lane) == 0 {
                        c.push((at + lane) as u32);
                    }
                }
            }
        }

        /// [`super::per_run`] on the leading multiple of 8 elements; returns how many it did.
        ///
        /// # Safety
        /// The CPU must support AVX; `out.len() == src.len()`.
        #[target_feature(enable = "avx")]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn per_run(
            src: &[f32],
            out: &mut [MaybeUninit<f32>],
            s: f32,
            z: f32,
            lo: f32,
            hi: f32,
            base: usize,
            mut clamped: Option<&mut Vec<u32>>,
        ) -> usize {
            let n = src.len() / 8 * 8;
            let (sv, zv) = (_mm256_set1_ps(s), _mm256_set1_ps(z));
            let (lov, hiv) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            let out = out.as_mut_ptr().cast::<f32>();
            for i in (0..n).step_by(8) {
                // SAFETY: `i + 8 <= n <= src.len()`, the length of `out`.
                let inside = unsafe {
                    let (q, inside) = lanes(_mm256_loadu_ps(src.as_ptr().add(i)), sv, zv, lov, hiv);
                    _mm256_storeu_ps(out.add(i), q);
                    inside
                };
                if inside != 0xff {
                    push_clamped(&mut clamped, inside, base + i);
                }
            }
            n
        }

        /// [`super::per_element_row`] on the leading multiple of 8 elements; returns how many
        /// it did. `RANGE`: also folds the values into the per-column `min`/`max` (`min_ps`
        /// and `max_ps` skip a NaN value; `nan` records one).
        ///
        /// # Safety
        /// The CPU must support AVX; `out`, `s` and `z` are as long as `src`, and so are `min`
        /// and `max` when `RANGE`.
        #[target_feature(enable = "avx")]
        #[allow(clippy::too_many_arguments)]
        pub(super) unsafe fn per_element<const RANGE: bool>(
            src: &[f32],
            out: &mut [MaybeUninit<f32>],
            s: &[f32],
            z: &[f32],
            lo: f32,
            hi: f32,
            base: usize,
            mut clamped: Option<&mut Vec<u32>>,
            min: &mut [f32],
            max: &mut [f32],
            nan: &mut bool,
        ) -> usize {
            let n = src.len() / 8 * 8;
            let (lov, hiv) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            let out = out.as_mut_ptr().cast::<f32>();
            let mut nans = _mm256_setzero_ps();
            for i in (0..n).step_by(8) {
                // SAFETY: `i + 8 <= n <= src.len()`, the length of `out`, `s` and `z` (and of
                // `min` and `max` when `RANGE`).
                let inside = unsafe {
                    let (sv, zv) = (
                        _mm256_loadu_ps(s.as_ptr().add(i)),
                        _mm256_loadu_ps(z.as_ptr().add(i)),
                    );
                    let x = _mm256_loadu_ps(src.as_ptr().add(i));
                    if RANGE {
                        let (mn, mx) = (min.as_mut_ptr().add(i), max.as_mut_ptr().add(i));
                        _mm256_storeu_ps(mn, _mm256_min_ps(x, _mm256_loadu_ps(mn)));
                        _mm256_storeu_ps(mx, _mm256_max_ps(x, _mm256_loadu_ps(mx)));
                        nans = _mm256_or_ps(nans, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                    }
                    let (q, inside) = lanes(x, sv, zv, lov, hiv);
                    _mm256_storeu_ps(out.add(i), q);
                    inside
                };
                if inside != 0xff {
                    push_clamped(&mut clamped, inside, base + i);
                }
            }
            if RANGE && _mm256_movemask_ps(nans) != 0 {
                *nan = true;
            }
            n
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    pub(crate) fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "got {got:?} want {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "index {i}: got {g} want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    pub(crate) fn t1(v: &[f32], device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
    }

    pub(crate) fn t2(v: &[f32], shape: [usize; 2], device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
    }

    fn ad() -> Device {
        Device::flex().autodiff()
    }

    #[test]
    fn round_ste_is_half_to_even_with_identity_grad() {
        let d = ad();
        let x = t1(&[0.5, 1.5, 2.5, -0.5, -1.7, 0.3], &d).require_grad();
        let y = round_ste(x.clone());
        assert_eq!(vals(y.clone()), vec![0.0, 2.0, 2.0, -0.0, -2.0, 0.0]);
        let w = t1(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &d);
        let g = x.grad(&(y * w).sum().backward()).unwrap();
        assert_eq!(vals(g), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn scale_grad_keeps_value_and_scales_gradient() {
        let d = ad();
        let x = t1(&[0.3, -0.7], &d).require_grad();
        let y = scale_grad(x.clone(), 0.25);
        assert_eq!(vals(y.clone()), vec![0.3, -0.7]);
        let g = x.grad(&y.sum().backward()).unwrap();
        assert_eq!(vals(g), vec![0.25, 0.25]);
    }

    #[test]
    fn fake_quantize_symmetric_per_tensor_values() {
        // int4 signed symmetric, s = 0.5: codes clamp(round(x/0.5), -8, 7).
        let d = Device::flex();
        let x = t1(&[0.1, 0.26, -0.74, 1.25, 3.9, -5.0, 0.75], &d);
        let y = fake_quantize(x, t1(&[0.5], &d), t1(&[0.0], &d), -8, 7);
        // 0.2->0, 0.52->1, -1.48->-1, 2.5->2 (half even), 7.8->8->7, -10->-8, 1.5->2
        assert_eq!(vals(y), vec![0.0, 0.5, -0.5, 1.0, 3.5, -4.0, 1.0]);
    }

    #[test]
    fn fake_quantize_asymmetric_values() {
        // uint8-style range [0, 15], s = 0.2, zp = 3 -> representable [-0.6, 2.4].
        let d = Device::flex();
        let x = t1(&[-1.0, -0.6, -0.05, 0.31, 2.4, 3.0], &d);
        let y = fake_quantize(x, t1(&[0.2], &d), t1(&[3.0], &d), 0, 15);
        // codes: -5+3=-2->0, -3+3=0, round(-0.25)=0 ->3, round(1.55)=2->5, 12+3=15, 15+3=18->15
        let want = [-0.6, -0.6, 0.0, 0.4, 2.4, 2.4];
        assert_close(&vals(y), &want, 1e-6);
    }

    #[test]
    fn fake_quantize_clipped_ste_gradient() {
        let d = ad();
        // s = 0.5, range [-4, 3] -> inside iff round(x/0.5) in [-4, 3]: x in [-2.25, 1.75]
        let x = t1(&[-3.0, -2.25, -2.26, 0.1, 1.74, 1.75, 1.76, 9.0], &d).require_grad();
        let y = fake_quantize(x.clone(), t1(&[0.5], &d), t1(&[0.0], &d), -4, 3);
        let g = vals(x.grad(&y.sum().backward()).unwrap());
        // round(-4.5) = -4 (even) -> inside; round(-4.52) = -5 -> outside;
        // round(3.5) = 4 -> outside; round(3.48) = 3 -> inside.
        assert_eq!(g, vec![0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn fake_quantize_grad_with_zero_point_and_non_power_of_two_scale() {
        let d = ad();
        // s = 0.3, zp = -2, range [-8, 7]: code = round(x/0.3) - 2 inside iff in [-8, 7].
        let x = t1(&[-1.9, -1.7, 0.0, 2.6, 2.8], &d).require_grad();
        let y = fake_quantize(x.clone(), t1(&[0.3], &d), t1(&[-2.0], &d), -8, 7);
        let g = vals(x.grad(&y.sum().backward()).unwrap());
        // codes: round(-6.33)-2=-8 in; round(-5.67)-2=-8 in; -2 in; round(8.67)-2=7 in;
        // round(9.33)-2=7 in. Then try outside: none here, so all 1 (to float rounding).
        assert_close(&g, &[1.0, 1.0, 1.0, 1.0, 1.0], 1e-6);
        let x = t1(&[-2.2, 3.0], &d).require_grad();
        let y = fake_quantize(x.clone(), t1(&[0.3], &d), t1(&[-2.0], &d), -8, 7);
        // round(-7.33)-2 = -9 out; round(10)-2 = 8 out
        assert_eq!(vals(x.grad(&y.sum().backward()).unwrap()), vec![0.0, 0.0]);
    }

    #[test]
    fn affine_codes_match_fake_quantize_exactly() {
        let d = Device::flex();
        let xs: Vec<f32> = (0..200).map(|i| (i as f32 * 0.37).sin() * 3.1).collect();
        let x = t1(&xs, &d);
        let (s, zp) = (t1(&[0.0437], &d), t1(&[3.0], &d));
        let y = vals(fake_quantize(x.clone(), s.clone(), zp.clone(), -8, 7));
        let c = vals(affine_codes(x, s, zp, -8, 7));
        for (yi, ci) in y.iter().zip(&c) {
            assert_eq!(*yi, (ci - 3.0) * 0.0437_f32);
        }
    }

    #[test]
    fn lsq_values_and_gradients_match_the_paper() {
        let d = ad();
        let (qmin, qmax, s0, g) = (-4, 3, 0.4_f32, 0.125_f32);
        // x/s = -5 (below), -2.25, -0.75, 0.25, 1.25, 2.75, 3.25 (above), 12.5 (above);
        // none sits on a rounding tie, so rounding is locally constant around s0.
        let xs = [-2.0_f32, -0.9, -0.3, 0.1, 0.5, 1.1, 1.3, 5.0];
        let up = [1.0_f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let x = t1(&xs, &d).require_grad();
        let s = t1(&[s0], &d).require_grad();
        let y = lsq_quantize(x.clone(), s.clone(), qmin, qmax, g);
        let grads = (y.clone() * t1(&up, &d)).sum().backward();

        assert_close(&vals(y), &[-1.6, -0.8, -0.4, 0.0, 0.4, 1.2, 1.2, 1.2], 1e-6);
        // dL/dx: upstream inside the clip, 0 outside (positions 0, 6, 7)
        assert_close(
            &vals(x.grad(&grads).unwrap()),
            &[0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0],
            1e-5,
        );
        // dL/ds by the paper: g·Σ u·{qmin | round(v)-v | qmax}
        //   = 0.125·(1·-4 + 2·0.25 + 3·-0.25 + 4·-0.25 + 5·-0.25 + 6·0.25 + 7·3 + 8·3) = 5.0
        let by_hand = 0.125 * (-4.0 + 0.5 - 0.75 - 1.0 - 1.25 + 1.5 + 21.0 + 24.0);
        assert_eq!(by_hand, 5.0);
        let gs = vals(s.grad(&grads).unwrap())[0] as f64;
        assert!((gs - by_hand).abs() < 1e-4, "{gs} vs {by_hand}");

        // Finite difference of the true loss L(s) = Σ u·q(s)·s. With rounding locally constant
        // its derivative is Σ u·q (the codes: -4,-2,-1,0,1,3,3,3); LSQ's gradient is that minus
        // the STE term Σ_inside u·x/s, times g.
        let loss_at = |sv: f32| -> f64 {
            let dev = Device::flex();
            let y = lsq_quantize(t1(&xs, &dev), t1(&[sv], &dev), qmin, qmax, g);
            vals(y)
                .iter()
                .zip(up)
                .map(|(a, b)| (*a as f64) * b as f64)
                .sum()
        };
        let h = 1e-3_f32;
        let fd = (loss_at(s0 + h) - loss_at(s0 - h)) / (2.0 * h as f64);
        let codes_sum = -4.0 - 2.0 * 2.0 - 3.0 + 0.0 + 5.0 + 6.0 * 3.0 + 7.0 * 3.0 + 8.0 * 3.0;
        assert!((fd - codes_sum).abs() < 1e-2, "fd {fd} vs {codes_sum}");
        let ste_term: f64 = [(1, -2.25), (2, -0.75), (3, 0.25), (4, 1.25), (5, 2.75)]
            .iter()
            .map(|&(i, v)| up[i] as f64 * v)
            .sum();
        assert!(
            ((fd - ste_term) * g as f64 - gs).abs() < 2e-3,
            "(fd - ste) g = {} vs autodiff {gs}",
            (fd - ste_term) * g as f64
        );
    }

    /// The textbook formula with burn's own `round` and `clamp`, for bit-exact comparisons.
    fn reference_fq(x: &[f32], s: f32, zp: f32, qmin: i32, qmax: i32) -> (Vec<f32>, Vec<f32>) {
        let d = Device::flex();
        let codes = (t1(x, &d).div_scalar(s).round() + zp).clamp(qmin, qmax);
        let inside = x
            .iter()
            .map(|v| {
                let c = (v / s).round_ties_even() + zp;
                if (qmin as f32..=qmax as f32).contains(&c) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        (vals((codes - zp) * s), inside)
    }

    #[test]
    fn fast_rounding_matches_burn_round_bit_for_bit() {
        let d = ad();
        // ties of every parity, signed zeros, values around the clamp bounds and far beyond
        // (2^22 and up, where the two-addition rounding would be a unit off), infinities
        let mut xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.25).collect();
        xs.extend([
            -0.0, 0.0, 1e-30, -1e-30, 4194303.5, 4194304.0, 4194305.0, -4194305.5,
        ]);
        xs.extend([
            6e6,
            -6e6,
            12582912.0,
            -12582912.0,
            3e7,
            -3e7,
            f32::MAX,
            f32::MIN,
        ]);
        xs.extend((0..500).map(|i| ((i * 7919) % 1000) as f32 / 37.0 - 13.5));
        for (s, zp, qmin, qmax) in [
            (0.5_f32, 0.0_f32, -8, 7),
            (0.25, 0.0, -128, 127),
            (0.3, -2.0, -8, 7),
            (0.1, 5.0, 0, 15),
            (1.0, 200.0, 0, 255),
            (0.7, -128.0, -128, 127),
        ] {
            let (want, want_grad) = reference_fq(&xs, s, zp, qmin, qmax);
            let x = t1(&xs, &d).require_grad();
            let y = fake_quantize(x.clone(), t1(&[s], &d), t1(&[zp], &d), qmin, qmax);
            let got = vals(y.clone());
            let grad = vals(x.grad(&y.sum().backward()).unwrap());
            for (i, v) in xs.iter().enumerate() {
                assert_eq!(got[i], want[i], "x = {v}, s = {s}, zp = {zp}");
                assert_eq!(
                    grad[i], want_grad[i],
                    "gradient at x = {v}, s = {s}, zp = {zp}"
                );
            }
            let c = vals(affine_codes(
                t1(&xs, &d),
                t1(&[s], &d),
                t1(&[zp], &d),
                qmin,
                qmax,
            ));
            for (i, ci) in c.iter().enumerate() {
                assert_eq!((ci - zp) * s, got[i], "codes at x = {}", xs[i]);
            }
            // without a zero-point tensor (symmetric specs) when zp is 0
            if zp == 0.0 {
                let y = fake_quantize_affine(t1(&xs, &d), t1(&[s], &d), None, qmin, qmax);
                assert_eq!(vals(y), want);
            }
            // Infinite inputs clamp like any other outside a plain forward. (A tracked forward
            // gives NaN for them, through `inf - inf` in the straight-through, as it always did.)
            let inf = [f32::INFINITY, f32::NEG_INFINITY];
            let y = fake_quantize(t1(&inf, &d), t1(&[s], &d), t1(&[zp], &d), qmin, qmax);
            assert_eq!(vals(y), reference_fq(&inf, s, zp, qmin, qmax).0);
        }
    }

    #[test]
    fn cpu_kernel_matches_op_by_op_path_bit_for_bit() {
        let d = Device::flex();
        // 117: fourteen 8-lane blocks and a scalar tail per row; 600 rows
        let (r, c) = (600, 117);
        let mut xs: Vec<f32> = (0..r * c)
            .map(|i| ((i * 7919) % 2003) as f32 / 61.0 - 16.0)
            .collect();
        xs[3] = f32::NAN;
        xs[40] = f32::INFINITY;
        xs[77] = f32::NEG_INFINITY;
        xs[90] = -0.0;
        xs[91] = 1e9;
        let x = t2(&xs, [r, c], &d);
        let col: Vec<f32> = (0..c).map(|j| 0.05 + j as f32 * 0.013).collect();
        let row: Vec<f32> = (0..r).map(|i| 0.3 + i as f32 * 0.11).collect();
        let cases: Vec<(Tensor<2>, Vec<f32>)> = vec![
            (
                t2(&col, [1, c], &d),
                (0..c).map(|j| (j % 5) as f32 - 2.0).collect(),
            ),
            (
                t2(&row, [r, 1], &d),
                (0..r).map(|i| i as f32 - 1.0).collect(),
            ),
            (t2(&[0.37], [1, 1], &d), vec![3.0]),
        ];
        for (scale, zps) in cases {
            let zp = Tensor::from_data(TensorData::new(zps, scale.dims()), &d);
            for (zp, qmin, qmax) in [
                (None, -8, 7),
                (Some(zp.clone()), -128, 127),
                (Some(zp), 0, 15),
            ] {
                let fq = |track| {
                    cpu::fake_quantize(&x, None, &scale, zp.as_ref(), qmin, qmax, track, None)
                        .map(|(q, mask, check)| {
                            assert_eq!(check, cpu::Check::NotAsked);
                            (q, mask)
                        })
                        .unwrap()
                };
                let (q, keep) = fq(true);
                let (q_alone, no_keep) = fq(false);
                assert_eq!(no_keep, cpu::Mask::NotWanted);
                let q_alone = vals(q_alone);
                let (raw, codes) = raw_and_codes(x.clone(), scale.clone(), zp.clone(), qmin, qmax);
                let want_keep = vals(raw.equal(codes.clone()).float());
                let want_q = vals(
                    match zp {
                        Some(z) => codes - z,
                        None => codes,
                    } * scale.clone(),
                );
                let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                let q = vals(q);
                assert_eq!(bits(q.clone()), bits(q_alone), "without the mask");
                assert_eq!(bits(q), bits(want_q), "values, scale {:?}", scale.dims());
                assert!(matches!(&keep, cpu::Mask::Clamped(at) if at.is_sorted()));
                assert_eq!(
                    keep.to_floats(r * c),
                    want_keep,
                    "mask, scale {:?}",
                    scale.dims()
                );
            }
        }
        // Checking an expected per-column range (a range hint) in the same pass: the same
        // output; `Same` for the exact range, else the actual one (or `None` with a NaN).
        let scale = t2(&col, [1, c], &d);
        let clean: Vec<f32> = xs
            .iter()
            .map(|v| if v.is_finite() { *v } else { 3.0 })
            .collect();
        let xc = t2(&clean, [r, c], &d);
        let (min, max) = crate::range_hint::column_ranges(&clean, c);
        let want = cpu::fake_quantize(&xc, None, &scale, None, -8, 7, true, None).unwrap();
        let bits = |t: Tensor<2>| vals(t).iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let mut off = max.clone();
        off[c - 1] = off[c - 1].next_up();
        for (expect_max, check) in [
            (&max, cpu::Check::Same),
            (&off, cpu::Check::Differs(Some((min.clone(), max.clone())))),
        ] {
            let (q, mask, got) = cpu::fake_quantize(
                &xc,
                None,
                &scale,
                None,
                -8,
                7,
                true,
                Some((&min, expect_max)),
            )
            .unwrap();
            assert_eq!(got, check);
            assert_eq!(bits(q), bits(want.0.clone()));
            assert_eq!(mask, want.1);
        }
        let (_, _, got) =
            cpu::fake_quantize(&x, None, &scale, None, -8, 7, true, Some((&min, &max))).unwrap();
        assert_eq!(got, cpu::Check::Differs(None), "a NaN among the values");
        // Row scales are not per column: no check there (the caller takes the plain path).
        let rows = t2(&row, [r, 1], &d);
        assert!(
            cpu::fake_quantize(&xc, None, &rows, None, -8, 7, true, Some((&min, &max))).is_none()
        );

        // scales along two axes are left to the op-by-op path
        let x3 = Tensor::<3>::zeros([2, 3, 4], &d);
        let s3 = Tensor::<3>::ones([2, 1, 4], &d);
        assert!(cpu::fake_quantize(&x3, None, &s3, None, -8, 7, true, None).is_none());
    }

    #[test]
    fn only_clamped_positions_are_listed() {
        // 100 000 elements in [-1, 1] with scale 1/7: every code in range, so no mask (the
        // gradient is the identity). One outlier, in the first or the last of the several
        // tasks: its position alone is listed — the op-by-op mask.
        let d = Device::flex();
        let n = 100_000;
        let mut xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let s = t1(&[1.0 / 7.0], &d);
        let (q, mask, _) =
            cpu::fake_quantize(&t1(&xs, &d), None, &s, None, -8, 7, true, None).unwrap();
        assert_eq!(mask, cpu::Mask::AllIn);
        let (want_q, _) = reference_fq(&xs, 1.0 / 7.0, 0.0, -8, 7);
        assert_eq!(vals(q), want_q);
        for outlier in [n - 3, 5] {
            xs[outlier] = 2.0;
            let x = t1(&xs, &d);
            let (q, mask, _) = cpu::fake_quantize(&x, None, &s, None, -8, 7, true, None).unwrap();
            let (want_q, want_keep) = reference_fq(&xs, 1.0 / 7.0, 0.0, -8, 7);
            assert_eq!(vals(q), want_q);
            assert_eq!(want_keep.iter().filter(|k| **k == 0.0).count(), 1);
            assert_eq!(mask.to_floats(n), want_keep);
            assert_eq!(mask, cpu::Mask::Clamped(vec![outlier as u32]));
            xs[outlier] = 0.5;
        }
    }

    /// The fused fake-quant of `x` (scale `s`, no zero-point, `[qmin, qmax]`) against
    /// `clipped_straight_through`'s op-by-op form, through `(y + w)·g` summed: the sum's
    /// backward hands one gradient buffer to both, so a node that zeroes clamped positions must
    /// do it in a copy, leaving `w`'s gradient whole. Checks that the fused one recorded
    /// `(identity, mask)` nodes, and returns each side's bits of (value, x's gradient, w's
    /// gradient), fused first.
    fn fused_vs_op_by_op(
        xs: &[f32],
        gs: &[f32],
        s: f32,
        (qmin, qmax): (i32, i32),
        nodes: (usize, usize),
    ) -> [(Vec<u32>, Vec<u32>, Vec<u32>); 2] {
        let d = ad();
        let s = t1(&[s], &d).without_autodiff();
        let run = |fused: bool| {
            let x = t1(xs, &d).require_grad();
            let y = if fused {
                let ids = || crate::flexops::tests::IDENTITY_CALLS.with(|n| n.get());
                let masks = || crate::flexops::tests::MASK_CALLS.with(|n| n.get());
                let (i, m) = (ids(), masks());
                let y = fake_quantize_affine(x.clone(), s.clone(), None, qmin, qmax);
                assert_eq!(
                    (ids() - i, masks() - m),
                    nodes,
                    "(identity, mask) nodes recorded"
                );
                y
            } else {
                let (raw, codes) = raw_and_codes(x.clone(), s.clone(), None, qmin, qmax);
                let keep = InRange::Bool(raw.equal(codes.clone()));
                clipped_straight_through(x.clone(), codes * s.clone(), keep)
            };
            let w = t1(&vec![0.0; xs.len()], &d).require_grad();
            let grads = ((y.clone() + w.clone()) * t1(gs, &d)).sum().backward();
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let gw = bits(vals(w.grad(&grads).unwrap()));
            (bits(vals(y)), bits(vals(x.grad(&grads).unwrap())), gw)
        };
        [run(true), run(false)]
    }

    #[test]
    fn in_range_fake_quant_is_recorded_as_the_identity_with_the_same_gradient() {
        // Nothing clamps (min/max ranges): one identity node, no mask, and the same gradient
        // bits as the op-by-op clipped straight-through.
        let n = 50_000;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let gs: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 29) as f32 - 14.0) * 0.7)
            .collect();
        let [a, b] = fused_vs_op_by_op(&xs, &gs, 0.5 / 127.0, (-128, 127), (1, 0));
        assert_eq!(a.0, b.0, "values");
        assert_eq!(a.1, b.1, "gradients");
        assert_eq!(a.2, b.2, "the other operand's gradient");
    }

    #[test]
    fn recorded_identity_node_equals_the_op_by_op_straight_through() {
        let d = ad();
        let xs: Vec<f32> = (0..100).map(|i| (i as f32 - 50.0) * 0.037).collect();
        let gs: Vec<f32> = (0..100)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.5)
            .collect();
        let run = |recorded: bool| {
            let x = t1(&xs, &d).require_grad();
            let q = (x.clone().detach() * 3.0).round() / 3.0;
            let y = if recorded {
                let calls = || crate::flexops::tests::IDENTITY_CALLS.with(|n| n.get());
                let before = calls();
                let y = straight_through(x.clone(), q);
                assert_eq!(calls(), before + 1, "recorded as one node");
                y
            } else {
                q.detach() + (x.clone() - x.clone().detach())
            };
            let grads = (y.clone() * t1(&gs, &d)).sum().backward();
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (vals(y), bits(vals(x.grad(&grads).unwrap())))
        };
        let (node, ops) = (run(true), run(false));
        // Equal values; the node returns `q` itself, where `q + (x − x)` turns a −0.0 into 0.0.
        assert_eq!(node.0, ops.0);
        assert!(node.0.iter().any(|v| v.to_bits() == (-0.0f32).to_bits()));
        assert_eq!(node.1, ops.1, "gradient bits");
    }

    #[test]
    fn recorded_mask_node_equals_the_op_by_op_straight_through() {
        // The custom autodiff node (Flex) against `clipped_straight_through`'s three tracked
        // ops: the same values and the same gradient bits, with an upstream gradient of mixed
        // signs (so clamped positions get -0.0 or 0.0 alike in both). 70 001 elements: the
        // forward's clamped positions come from several tasks, a ragged last one.
        let n = 70_001;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.11)
            .collect();
        let gs: Vec<f32> = (0..n)
            .map(|i| ((i * 53 % 29) as f32 - 14.0) * 0.7)
            .collect();
        let [a, b] = fused_vs_op_by_op(&xs, &gs, 0.35, (-8, 7), (0, 1));
        assert_eq!(a.0, b.0, "values");
        assert_eq!(a.1, b.1, "gradients");
        assert_eq!(a.2, b.2, "the other operand's gradient");
        assert_eq!(a.2, gs.iter().map(|g| g.to_bits()).collect::<Vec<_>>());
        assert!(a.1.contains(&0.0f32.to_bits()) && a.1.contains(&(-0.0f32).to_bits()));
    }

    #[test]
    fn fake_quantize_output_is_tracked_only_through_x() {
        // Scales come from observers (plain tensors) and must stay out of the graph; a plain
        // input gives a plain output, an untracked autodiff input an untracked one.
        let d = ad();
        let x = t2(&[0.3, -1.2, 2.5, 0.0], [2, 2], &d).require_grad();
        let s = t2(&[0.5, 0.25], [1, 2], &d).without_autodiff();
        let y = fake_quantize_affine(x.clone(), s.clone(), None, -8, 7);
        assert!(y.is_tracked() && y.is_autodiff());
        let y = fake_quantize_affine(
            x.clone().detach().set_require_grad(false),
            s.clone(),
            None,
            -8,
            7,
        );
        assert!(y.is_autodiff() && !y.is_tracked());
        let y = fake_quantize_affine(x.without_autodiff(), s, None, -8, 7);
        assert!(!y.is_autodiff());
    }

    #[test]
    fn lsq_codes_match_forward_exactly() {
        let d = Device::flex();
        let xs: Vec<f32> = (0..100).map(|i| (i as f32 * 0.77).cos() * 2.0).collect();
        let s = t1(&[0.0913], &d);
        let y = vals(lsq_quantize(t1(&xs, &d), s.clone(), -8, 7, 0.3));
        let c = vals(lsq_codes(t1(&xs, &d), s, -8, 7));
        for (yi, ci) in y.iter().zip(&c) {
            assert_eq!(*yi, ci * 0.0913_f32);
        }
    }

    #[test]
    fn pact_unsigned_values_and_alpha_gradient() {
        let d = ad();
        let x = t1(&[-1.0, 0.5, 1.9, 2.0, 3.5], &d).require_grad();
        let alpha = t1(&[2.0], &d).require_grad();
        let y = pact_clip(x.clone(), alpha.clone(), false);
        assert_eq!(vals(y.clone()), vec![0.0, 0.5, 1.9, 2.0, 2.0]);
        let up = t1(&[1.0, 2.0, 3.0, 4.0, 5.0], &d);
        let grads = (y * up).sum().backward();
        assert_eq!(vals(x.grad(&grads).unwrap()), vec![0.0, 2.0, 3.0, 0.0, 0.0]);
        // x >= alpha at positions 3 and 4: 4 + 5
        assert_eq!(vals(alpha.grad(&grads).unwrap()), vec![9.0]);
    }

    #[test]
    fn pact_signed_alpha_gradient_is_the_sign() {
        let d = ad();
        let x = t2(&[-3.0, -1.0, 0.2, 1.5, 2.0, -1.5], [2, 3], &d).require_grad();
        let alpha = t1(&[1.5], &d).require_grad();
        let y = pact_clip(x.clone(), alpha.clone(), true);
        assert_eq!(vals(y.clone()), vec![-1.5, -1.0, 0.2, 1.5, 1.5, -1.5]);
        let grads = y.sum().backward();
        assert_eq!(
            vals(x.grad(&grads).unwrap()),
            vec![0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
        );
        // +1 at 1.5 and 2.0, -1 at -3.0 and -1.5
        assert_eq!(vals(alpha.grad(&grads).unwrap()), vec![0.0]);
        let grads = (y_weighted(&x, &alpha, &d)).backward();
        // weights 1..6: +4 +5 -1 -6
        assert_eq!(vals(alpha.grad(&grads).unwrap()), vec![2.0]);
    }

    fn y_weighted(x: &Tensor<2>, alpha: &Tensor<1>, d: &Device) -> Tensor<1> {
        let y = pact_clip(x.clone(), alpha.clone(), true);
        (y * t2(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], d)).sum()
    }
}
