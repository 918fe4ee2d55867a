//! BitNet weights and activations: b1.58 ternary `{-1, 0, 1}·γ` and b1 binary `±β` weights, and
//! per-token absmax 8-bit activations, all with straight-through gradients.
//!
//! Follows the reference implementation of "The Era of 1-bit LLMs" (Ma et al. 2024) and BitNet
//! (Wang et al. 2023): scales are clamped below at [`BITNET_EPS`] rather than offset by it, so a
//! weight is exactly `code·γ` and integer inference reproduces the fake forward bit-for-bit.

use std::mem::MaybeUninit;

use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

use crate::flexops::{TASK_ELEMENTS, task_len, with_avx2};
use crate::qparams::HostCopy;
use crate::ste::{round_add_zp, straight_through};

/// Lower bound of BitNet scales (`mean|W|`, `max|x|`), so all-zero tensors do not divide by 0.
pub const BITNET_EPS: f32 = 1e-5;

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// Ternary codes `clamp(round(W/γ), -1, 1)` and `γ = max(mean|W|, eps)` (one-element), detached.
///
/// On Flex both come from one host pass ([`ternary_host`]); elsewhere from tensor ops. Every
/// consumer (forward, export, reports) goes through here, so they agree on γ to the bit.
fn ternary_parts<const D: usize>(w: Tensor<D>) -> (Tensor<D>, Tensor<1>) {
    let w = w.detach();
    if let Some((codes, gamma, device)) = ternary_host(&w, false) {
        let codes = Tensor::from_data(TensorData::new(codes, w.dims()), &device);
        let gamma = Tensor::from_data(TensorData::new(vec![gamma], [1]), &device);
        return (codes, gamma);
    }
    let gamma = w.clone().abs().mean().clamp_min(BITNET_EPS);
    // `round_add_zp` + one-sided clamps: bit-for-bit `round().clamp(-1, 1)`, without burn's
    // scalar CPU `round` and `clamp` kernels.
    let codes = round_add_zp(w / gamma.clone().reshape([1; D]), None, -1, 1)
        .clamp_min(-1.0)
        .clamp_max(1.0);
    (codes, gamma)
}

/// Rounding by `(t + M) - M` with `M = 1.5·2^23` is exact half-to-even (the FPU's mode) for
/// `|t| < 2^22`, and vectorizes, where `round_ties_even` is a libm call per element on baseline
/// x86_64.
const M: f32 = 12_582_912.0;

/// [`absmax_host`]'s rows of `last` values: `amax`, `s = (qb−1)/amax`, `clamp(round(v·s))/s`.
#[inline(always)]
fn absmax_rows(src: &[f32], out: &mut [MaybeUninit<f32>], last: usize, qb: f32) {
    for (row, out) in src.chunks_exact(last).zip(out.chunks_exact_mut(last)) {
        // `max` skips NaN; a NaN anywhere makes the row's amax NaN, as through the tensor
        // ops' `max_dim`. (Folds, not `any`, which stops early and does not vectorize.)
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let amax = if row.iter().fold(false, |n, v| n | v.is_nan()) {
            f32::NAN
        } else {
            amax.max(BITNET_EPS)
        };
        let scale = (qb - 1.0) / amax;
        for (o, v) in out.iter_mut().zip(row) {
            let t = v * scale;
            o.write(((t + M) - M).clamp(-qb, qb - 1.0) / scale);
        }
    }
}

/// Flex fast path of [`absmax_quant_activation`]'s value: per row of the last axis, the same
/// f32 operations as the tensor path (`amax`, `s = (qb−1)/amax`, `clamp(round(v·s))/s`), so the
/// result is bit-for-bit identical, in one pass instead of ten tensor ops.
fn absmax_host<const D: usize>(x: &Tensor<D>, qb: f32) -> Option<Tensor<D>> {
    let dims = x.dims();
    let last = dims[D - 1];
    if last == 0 {
        return None;
    }
    let host = HostCopy::of(x)?;
    let src = host.values();
    // Written row by row from the source (one pass, no copy first), in tasks of whole rows
    // across threads for large inputs (each row on its own: the same bits).
    let quantize_rows =
        |src: &[f32], out: &mut [MaybeUninit<f32>]| with_avx2!(absmax_rows(src, out, last, qb));
    let len = src.len();
    let mut values: Vec<f32> = Vec::with_capacity(len);
    let slots = &mut values.spare_capacity_mut()[..len];
    // One task (up to `chunk` elements) runs right here.
    let chunk = task_len(last);
    slots
        .par_chunks_mut(chunk)
        .zip(src.par_chunks(chunk))
        .for_each(|(out, src)| quantize_rows(src, out));
    // SAFETY: `len` is a multiple of `last` (the last axis), and `quantize_rows` wrote every
    // slot of every row.
    unsafe { values.set_len(len) };
    let device = host.device;
    Some(Tensor::from_data(TensorData::new(values, dims), &device))
}

/// Flex fast path: the codes (as f32; times γ when `scaled`) and γ of `w` in one pass over a
/// host copy, instead of nine tensor ops (the ternary layer's training step was 2.4× a float
/// layer's). `|W|` is summed in f64 (eight partial sums, added in a fixed order), then
/// `γ = max(sum / n, eps)` in f32; codes round half to even like `round`.
fn ternary_host<const D: usize>(w: &Tensor<D>, scaled: bool) -> Option<(Vec<f32>, f32, Device)> {
    let host = HostCopy::of(w)?;
    let src = host.values();
    if src.is_empty() {
        return None;
    }
    let gamma = ((abs_sum_f64(src) / src.len() as f64) as f32).max(BITNET_EPS);
    let unit = if scaled { gamma } else { 1.0 };
    // Elementwise, so splitting over threads changes no bit. A loop over slices, which
    // vectorizes, where `par_iter().map().collect()` wrote one element at a time (11 % of a
    // ternary MLP step).
    let codes = |src: &[f32], out: &mut [MaybeUninit<f32>]| {
        with_avx2!(ternary_codes_into(src, out, gamma, unit))
    };
    let len = src.len();
    let mut values: Vec<f32> = Vec::with_capacity(len);
    // One task runs right here.
    values.spare_capacity_mut()[..len]
        .par_chunks_mut(TASK_ELEMENTS)
        .zip(src.par_chunks(TASK_ELEMENTS))
        .for_each(|(out, src)| codes(src, out));
    // SAFETY: the chunks cover all `len` slots and `codes` writes each.
    unsafe { values.set_len(len) };
    let device = host.device;
    Some((values, gamma, device))
}

/// `clamp(round(v/γ), −1, 1)·unit` of each value. Clamping to ±2 first keeps `|t|` small for the
/// rounding ([`M`]) and changes no code: round(±2) clamps to ±1 as round(anything beyond) does.
/// NaN stays NaN, as through the tensor ops. `code·γ` is exact (the code is −1, 0 or 1), the
/// value `codes * γ` gives through the tensor ops. (A compare against `γ/2` instead of the
/// division gives the same codes, but measured no faster: the pass is bound by memory.)
#[inline(always)]
fn ternary_codes_into(src: &[f32], out: &mut [MaybeUninit<f32>], gamma: f32, unit: f32) {
    for (o, v) in out.iter_mut().zip(src) {
        let t = (v / gamma).clamp(-2.0, 2.0);
        o.write(((t + M) - M).clamp(-1.0, 1.0) * unit);
    }
}

/// `Σ|v|` in f64: blocks of [`TASK_ELEMENTS`] summed on their own (across threads), then the
/// block sums added in order, so the result depends on the block size only, never on the thread
/// count (one block: [`abs_sum_block`]'s result exactly).
fn abs_sum_f64(values: &[f32]) -> f64 {
    let blocks: Vec<f64> = values
        .par_chunks(TASK_ELEMENTS)
        .map(abs_sum_block)
        .collect();
    blocks.into_iter().fold(0.0, |sum, b| sum + b)
}

/// `Σ|v|` in f64 with eight independent partial sums, combined in a fixed order: the same result
/// on every run, and vectorizable, where one running sum is bound by the latency of each add (it
/// was 80 % of the ternary weight pass). (Explicit 4-lane f64 AVX adds measured no faster: the
/// pass is bound by reading the weight.)
fn abs_sum_block(values: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v.abs() as f64;
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for v in rest {
        sum += v.abs() as f64;
    }
    sum
}

/// BitNet b1.58 weight: `clamp(round(W/γ), -1, 1)·γ` with `γ = mean|W|` per tensor; the
/// gradient wrt `W` is the identity (STE).
pub fn ternary_weight<const D: usize>(w: Tensor<D>) -> Tensor<D> {
    // On Flex the host pass yields `code·γ` directly (one tensor op fewer per step).
    if let Some((q, _, device)) = ternary_host(&w, true) {
        let q = Tensor::from_data(TensorData::new(q, w.dims()), &device);
        return straight_through(w, q);
    }
    let (codes, gamma) = ternary_parts(w.clone());
    straight_through(w, codes * gamma.reshape([1; D]))
}

/// The codes (`-1`, `0`, `1`, row-major) and `γ` that [`ternary_weight`] used:
/// `code as f32 * γ` is exactly its output.
pub fn ternary_codes<const D: usize>(w: Tensor<D>) -> (Vec<i8>, f32) {
    let (codes, gamma) = ternary_parts(w);
    let codes = to_vec(codes).into_iter().map(|c| c as i8).collect();
    (codes, to_vec(gamma)[0])
}

/// Binary codes `sign(W - α)` with `sign(0) = +1`, `α = mean(W)`, and `β = mean|W|`, detached.
fn binary_parts<const D: usize>(w: Tensor<D>) -> (Tensor<D>, Tensor<1>) {
    let w = w.detach();
    let alpha = w.clone().mean();
    let beta = w.clone().abs().mean();
    let centred = w - alpha.reshape([1; D]);
    // sign() would send 0 to 0; BitNet's binarization has no zero code.
    let codes = centred
        .clone()
        .ones_like()
        .mask_fill(centred.lower_elem(0.0), -1.0);
    (codes, beta)
}

/// BitNet b1 weight: `sign(W - mean(W))·mean|W|` (`sign(0) = +1`); STE gradient wrt `W`.
pub fn binary_weight<const D: usize>(w: Tensor<D>) -> Tensor<D> {
    let (codes, beta) = binary_parts(w.clone());
    straight_through(w, codes * beta.reshape([1; D]))
}

/// The `±1` codes (row-major) and `β` that [`binary_weight`] used: `code as f32 * β` is exactly
/// its output.
pub fn binary_codes<const D: usize>(w: Tensor<D>) -> (Vec<i8>, f32) {
    let (codes, beta) = binary_parts(w);
    let codes = to_vec(codes).into_iter().map(|c| c as i8).collect();
    (codes, to_vec(beta)[0])
}

/// BitNet per-token absmax activation quantization to `bits` bits: with `Qb = 2^(bits-1)`,
/// `scale = (Qb - 1)/max|x|` over the last axis, `x̂ = clamp(round(x·scale), -Qb, Qb - 1)/scale`;
/// STE gradient (absmax never clips, so the plain identity is the clipped STE too).
///
/// # Panics
/// If `bits` is not in 2..=16.
pub fn absmax_quant_activation<const D: usize>(x: Tensor<D>, bits: u32) -> Tensor<D> {
    assert!(
        (2..=16).contains(&bits),
        "absmax activation bits must be in 2..=16, got {bits}"
    );
    let qb = (1_i32 << (bits - 1)) as f32;
    let q = match absmax_host(&x, qb) {
        Some(q) => q,
        None => absmax_ops(x.clone().detach(), qb),
    };
    straight_through(x, q)
}

/// The value of [`absmax_quant_activation`] by tensor ops (any backend).
fn absmax_ops<const D: usize>(value: Tensor<D>, qb: f32) -> Tensor<D> {
    let amax = value.clone().abs().max_dim(D - 1).clamp_min(BITNET_EPS);
    let scale = amax.ones_like().mul_scalar(qb - 1.0) / amax;
    round_add_zp(value * scale.clone(), None, -(qb as i32), qb as i32 - 1)
        .clamp_min(-qb)
        .clamp_max(qb - 1.0)
        / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ste::tests::{assert_close, t1, t2, vals};
    use burn::tensor::Device;

    #[test]
    fn abs_sum_is_the_same_on_any_thread_count() {
        // 3.5 blocks of mixed magnitudes: the block sums, added in order, on 1 and 3 threads;
        // one block alone is `abs_sum_block` exactly.
        let n = TASK_ELEMENTS * 7 / 2;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 10007) as f32 - 5000.0) * 10f32.powi((i % 9) as i32 - 4))
            .collect();
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| abs_sum_f64(&v))
        };
        let by_blocks = v
            .chunks(TASK_ELEMENTS)
            .map(abs_sum_block)
            .fold(0.0, |s, b| s + b);
        assert_eq!(on(1).to_bits(), by_blocks.to_bits());
        assert_eq!(on(3).to_bits(), by_blocks.to_bits());
        let exact: f64 = v.iter().map(|x| x.abs() as f64).sum();
        assert!((by_blocks - exact).abs() <= exact * 1e-12);
        let one = &v[..TASK_ELEMENTS];
        assert_eq!(abs_sum_f64(one).to_bits(), abs_sum_block(one).to_bits());
    }

    #[test]
    fn host_fast_paths_equal_the_tensor_ops_bit_for_bit() {
        let d = Device::flex();
        d.seed(7);
        // 400 random rows: more than one task of whole rows (the pass splits over threads).
        let x = burn::tensor::Tensor::<2>::random(
            [400, 96],
            burn::tensor::Distribution::Normal(0.0, 3.0),
            &d,
        );
        // Exact ties: a row whose values land on k + 0.5 after scaling (amax 127 → scale 1).
        let ties: Vec<f32> = (0..96)
            .map(|i| {
                if i == 0 {
                    127.0
                } else {
                    (i as f32 - 48.0) + 0.5
                }
            })
            .collect();
        // Non-finite rows: a NaN in the middle (the row becomes NaN), an infinity.
        let mut nan_row = vec![1.0f32; 96];
        nan_row[40] = f32::NAN;
        let mut inf_row = vec![-2.0f32; 96];
        inf_row[7] = f32::INFINITY;
        let x = burn::tensor::Tensor::cat(
            vec![
                x,
                t2(&ties, [1, 96], &d),
                t2(&nan_row, [1, 96], &d),
                t2(&inf_row, [1, 96], &d),
            ],
            0,
        );
        for bits in [8, 4] {
            let qb = (1_i32 << (bits - 1)) as f32;
            let a = vals(absmax_host(&x, qb).unwrap());
            let b = vals(absmax_ops(x.clone(), qb));
            // NaN payloads aside, the same bits (NaN rows compare as NaN on both sides).
            let canon = |v: &[f32]| {
                v.iter()
                    .map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() })
                    .collect::<Vec<_>>()
            };
            assert!(canon(&a) == canon(&b), "{bits}-bit activations differ");
            assert!(a[400 * 96 + 96..400 * 96 + 192].iter().all(|v| v.is_nan()));
        }
        // Ternary: the host codes are round-half-even(W/γ) clamped, γ = mean|W|.
        let w = vec![0.5f32, -1.5, 0.25, 2.0, -0.0, 0.75];
        let gamma = w.iter().map(|v| v.abs()).sum::<f32>() / 6.0; // 0.8333
        let (codes, g, _) = ternary_host(&t1(&w, &d), false).unwrap();
        assert!((g - gamma).abs() < 1e-7);
        let want: Vec<f32> = w
            .iter()
            .map(|v| (v / g).round_ties_even().clamp(-1.0, 1.0))
            .collect();
        assert_eq!(codes, want);
        // The forward's scaled pass gives exactly `code·γ`, what the tensor path multiplies out.
        let (q, g2, _) = ternary_host(&t1(&w, &d), true).unwrap();
        assert_eq!(g2.to_bits(), g.to_bits());
        let want_q: Vec<u32> = codes.iter().map(|c| (c * g).to_bits()).collect();
        assert_eq!(q.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want_q);
        assert_eq!(vals(ternary_weight(t1(&w, &d))), q);
        // A weight large enough to split the code pass over threads: every code as above.
        let big = burn::tensor::Tensor::<2>::random(
            [300, 200],
            burn::tensor::Distribution::Normal(0.0, 0.05),
            &d,
        );
        let (codes, g, _) = ternary_host(&big, false).unwrap();
        let want: Vec<f32> = vals(big)
            .iter()
            .map(|v| (v / g).round_ties_even().clamp(-1.0, 1.0))
            .collect();
        assert_eq!(codes, want);
    }

    #[test]
    fn ternary_values_codes_and_passthrough_gradient() {
        let d = Device::flex().autodiff();
        // mean|w| = (0.9 + 0.1 + 0.4 + 0.6 + 2.0 + 0.0) / 6 = 0.6666667
        let ws = [0.9_f32, -0.1, 0.4, -0.6, 2.0, 0.0];
        let w = t2(&ws, [2, 3], &d).require_grad();
        let y = ternary_weight(w.clone());
        let g = 4.0_f32 / 6.0;
        // w/γ: 1.35 -> 1, -0.15 -> 0, 0.6 -> 1, -0.9 -> -1, 3 -> 1 (clamp), 0 -> 0
        assert_close(&vals(y.clone()), &[g, 0.0, g, -g, g, 0.0], 1e-6);
        let up = t2(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], &d);
        let grad = w.grad(&(y.clone() * up).sum().backward()).unwrap();
        assert_eq!(vals(grad), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let (codes, gamma) = ternary_codes(w);
        assert_eq!(codes, vec![1, 0, 1, -1, 1, 0]);
        assert!((gamma - g).abs() < 1e-7);
        for (c, yv) in codes.iter().zip(vals(y)) {
            assert_eq!(*c as f32 * gamma, yv);
        }
    }

    #[test]
    fn ternary_of_zeros_is_zero() {
        let d = Device::flex();
        let (codes, gamma) = ternary_codes(t1(&[0.0, 0.0], &d));
        assert_eq!((codes, gamma), (vec![0, 0], BITNET_EPS));
        assert_eq!(vals(ternary_weight(t1(&[0.0, 0.0], &d))), vec![0.0, 0.0]);
    }

    #[test]
    fn binary_values_sign_of_zero_and_gradient() {
        let d = Device::flex().autodiff();
        // mean = 0.5, mean|w| = (1 + 0.5 + 2 + 2.5) / 4 = 1.5; w - mean = [0.5, 0, -2.5, 2]
        let ws = [1.0_f32, 0.5, -2.0, 2.5];
        let w = t1(&ws, &d).require_grad();
        let y = binary_weight(w.clone());
        assert_eq!(vals(y.clone()), vec![1.5, 1.5, -1.5, 1.5]);
        let grad = w.grad(&(y * t1(&[1.0, 2.0, 3.0, 4.0], &d)).sum().backward());
        assert_eq!(vals(grad.unwrap()), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(binary_codes(w), (vec![1, 1, -1, 1], 1.5));
    }

    #[test]
    fn absmax_per_token_values_and_gradient() {
        let d = Device::flex().autodiff();
        // token 0: max|x| = 2.54 -> scale 127/2.54 = 50: x·50 = [127, -25, 15]
        // token 1: max|x| = 1.27 -> scale 100: x·100 = [-127, 33.3 -> 33, 0]
        let x = t2(&[2.54, -0.5, 0.3, -1.27, 0.333, 0.0], [2, 3], &d).require_grad();
        let y = absmax_quant_activation(x.clone(), 8);
        assert_close(&vals(y.clone()), &[2.54, -0.5, 0.3, -1.27, 0.33, 0.0], 1e-6);
        let grad = x.grad(&y.sum().backward()).unwrap();
        assert_eq!(vals(grad), vec![1.0; 6]);
        // 4 bits: Qb = 8, scale 7/max: token 0 [7, -1.38 -> -1, 0.69 -> 1]
        let d = Device::flex();
        let y = absmax_quant_activation(t1(&[3.5, -0.69, 0.345], &d), 4);
        assert_close(&vals(y), &[3.5, -0.5, 0.5], 1e-6);
    }
}
