//! 2×2 max-pooling for the CPU (Flex) backend, alone or fused with the ReLU that follows it,
//! used by the conv nets.
//!
//! Flex's `max_pool2d` evaluates a generic 3-d window per output and its backward is a generic
//! scatter; `perf` put it at 14 % of a LeNet-5 training step. [`max_pool2x2`] and
//! [`max_pool2x2_relu`] find each window's arg-max in one host pass (branch-free, vectorized
//! across windows, AVX2 when present) that also writes the output, and record one autodiff node
//! (`crate::flexops` plumbing) whose backward puts each output gradient on its window's
//! arg-max. Values and gradients equal burn's `max_pool2d` (and `relu` after it) bit for bit,
//! ties and NaN included (tests). An earlier version gathered the arg-max positions with
//! `select` (5.7 → 3.5 ms for LeNet-5's pool); the recorded node drops the index tensor, the
//! gather and its scatter backward, and the separate ReLU pass.
//!
//! The convolution itself is [`crate::flexops::conv2d`]. (An earlier im2col + `select` +
//! burn-matmul version, `conv2d_fast`, only tied burn's `conv2d` in training and was removed
//! when the custom autodiff op replaced it.) Other backends and dtypes take burn's ops.

use std::mem::MaybeUninit;
use std::sync::Arc;

use burn::backend::Flex;
use burn::backend::tensor::FloatTensor;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::flexops::{self, Ad, Input};

/// 2×2 max pooling with stride 2 (floor), burn's `max_pool2d` semantics (the first maximum of
/// a window in row-major order wins, NaN wins over numbers). On Flex (f32) one host pass finds
/// every window's arg-max and writes the output, recorded as one autodiff node whose backward
/// puts each output gradient on its window's arg-max; elsewhere burn's `max_pool2d`.
pub fn max_pool2x2(x: Tensor<4>) -> Tensor<4> {
    pool(x, false)
}

/// `relu(max_pool2x2(x))` in one pass (and one backward pass), with burn Flex's ReLU semantics:
/// NaN passes, and the gradient is zero where the output is not `> 0` (and not NaN). Pooling
/// first is the same function as `max_pool2x2(relu(x))` with the same gradient: max commutes
/// with the monotone ReLU, and both give zero gradient where the window's maximum is ≤ 0.
pub fn max_pool2x2_relu(x: Tensor<4>) -> Tensor<4> {
    pool(x, true)
}

fn pool(x: Tensor<4>, relu: bool) -> Tensor<4> {
    let [batch, channels, h, w] = x.dims();
    let fallback = |x: Tensor<4>| {
        let y = max_pool2d(x, pool_options());
        if relu {
            burn::tensor::activation::relu(y)
        } else {
            y
        }
    };
    // Gradient routes are u32 indices (BLOCKED = u32::MAX is reserved).
    let too_large = batch * channels * h * w >= BLOCKED as usize;
    if h < 2 || w < 2 || too_large || x.dtype() != DType::F32 || x.device() != Device::flex() {
        return fallback(x);
    }
    let shape = PoolShape {
        h,
        w,
        dims: [batch, channels, h / 2, w / 2],
        relu,
    };
    #[cfg(test)]
    tests::HOST_CALLS.with(|n| n.set(n.get() + 1));
    match flexops::primitive(x.clone()) {
        Some(Input::Plain(p)) => Tensor::from_primitive::<Flex>(pool_forward(&p, &shape, false).0),
        Some(Input::Tracked(t)) => Tensor::from_primitive::<Ad>(record_pool(t, shape)),
        None => fallback(x),
    }
}

/// Sizes of one pooling: row-major `h×w` input planes, output `dims` (`[B, C, h/2, w/2]`).
#[derive(Debug, Clone, Copy)]
struct PoolShape {
    h: usize,
    w: usize,
    dims: [usize; 4],
    relu: bool,
}

impl PoolShape {
    fn outputs(&self) -> usize {
        self.dims.iter().product()
    }
}

/// Output gradient routing of one pooling: per output, the flat input index its gradient goes
/// to, or [`BLOCKED`] where the fused ReLU zeroes it.
#[derive(Debug, Clone)]
struct PoolRouting {
    to: Arc<Vec<u32>>,
    input_dims: [usize; 4],
}

const BLOCKED: u32 = u32::MAX;

#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = PoolRouting;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else { return };
        let dy = flexops::contiguous(&dy);
        let dy = flexops::slice(&dy);
        let routing = ops.state;
        let [b, c, h, w] = routing.input_dims;
        let dx = route_gradient(&routing.to, dy, b * c, h * w);
        let dx = FlexTensor::from_data(TensorData::new(dx, routing.input_dims));
        grads.register::<Flex>(node.id, dx);
    }
}

/// The input gradient of `planes` planes of `plane_len` inputs: each output gradient on the
/// input its route names, zero elsewhere. Windows do not overlap and stay inside their plane,
/// so each plane is one independent task: zeroed while it is in cache and then scattered (no
/// separate zero-filling pass over the whole gradient), across threads when it is large.
fn route_gradient(to: &[u32], dy: &[f32], planes: usize, plane_len: usize) -> Vec<f32> {
    let total = planes * plane_len;
    let per_plane = to.len() / planes.max(1);
    let mut dx = Vec::with_capacity(total);
    let scatter = |(p, dxp): (usize, &mut [MaybeUninit<f32>])| {
        for v in dxp.iter_mut() {
            v.write(0.0);
        }
        let base = p * plane_len;
        let routes = &to[p * per_plane..][..per_plane];
        for (&to, &g) in routes.iter().zip(&dy[p * per_plane..][..per_plane]) {
            if to != BLOCKED {
                dxp[to as usize - base].write(g);
            }
        }
    };
    let spare = &mut dx.spare_capacity_mut()[..total];
    if to.len() >= PARALLEL_MIN_OUTPUTS {
        spare
            .par_chunks_mut(plane_len)
            .enumerate()
            .for_each(scatter);
    } else {
        spare.chunks_mut(plane_len).enumerate().for_each(scatter);
    }
    // SAFETY: `spare` is the first `total` slots of `dx`'s capacity, and `scatter` wrote every
    // slot of every plane (the zero fill) before the routed values.
    unsafe { dx.set_len(total) };
    dx
}

fn record_pool(x: FloatTensor<Ad>, shape: PoolShape) -> FloatTensor<Ad> {
    let (y, to) = pool_forward(x.primitive(), &shape, true);
    let [b, c, _, _] = shape.dims;
    flexops::record_unary(PoolBackward, &x, y, || PoolRouting {
        to: Arc::new(to),
        input_dims: [b, c, shape.h, shape.w],
    })
}

/// The pooled (and, if fused, rectified) output and each output's gradient routing.
fn pool_forward(x: &FlexTensor, s: &PoolShape, routes: bool) -> (FlexTensor, Vec<u32>) {
    let x = flexops::contiguous(x);
    let values = flexops::slice(&x);
    let (ho, wo) = (s.h / 2, s.w / 2);
    let mut y = vec![0.0f32; s.outputs()];
    let plane_pass = |p: usize, y: &mut [f32], to: &mut [u32]| pool_plane(values, p, s, y, to);
    let per_plane = ho * wo;
    let parallel = s.outputs() >= PARALLEL_MIN_OUTPUTS;
    if !routes {
        // A forward without autodiff (evaluation, a distillation teacher) keeps no routes:
        // each task's planes write theirs into one scratch plane that stays in cache.
        let scratch = || vec![0u32; per_plane];
        if parallel {
            y.par_chunks_mut(per_plane)
                .enumerate()
                .for_each_init(scratch, |to, (p, y)| plane_pass(p, y, to));
        } else {
            let mut to = scratch();
            for (p, y) in y.chunks_mut(per_plane).enumerate() {
                plane_pass(p, y, &mut to);
            }
        }
        return (
            FlexTensor::from_data(TensorData::new(y, s.dims)),
            Vec::new(),
        );
    }
    let mut to = vec![0u32; s.outputs()];
    if parallel {
        y.par_chunks_mut(per_plane)
            .zip(to.par_chunks_mut(per_plane))
            .enumerate()
            .for_each(|(p, (y, to))| plane_pass(p, y, to));
    } else {
        for (p, (y, to)) in y
            .chunks_mut(per_plane)
            .zip(to.chunks_mut(per_plane))
            .enumerate()
        {
            plane_pass(p, y, to);
        }
    }
    (FlexTensor::from_data(TensorData::new(y, s.dims)), to)
}

/// [`pool_rows`] for plane `p`, compiled for AVX2 when the CPU has it (the window loop
/// vectorizes; the baseline x86-64 target has only 4-lane SSE).
fn pool_plane(values: &[f32], p: usize, s: &PoolShape, y: &mut [f32], to: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        unsafe { pool_rows_avx2(values, p, s, y, to) };
        return;
    }
    pool_rows::<false>(values, p, s, y, to);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pool_rows_avx2(values: &[f32], p: usize, s: &PoolShape, y: &mut [f32], to: &mut [u32]) {
    pool_rows::<true>(values, p, s, y, to);
}

/// Every output row of plane `p`: the window maxima (rectified if fused) into `y`, each one's
/// gradient routing into `to`. A row whose inputs are all finite takes branch-free selects,
/// four windows at a time with `SSE41` (the scalar selects did not vectorize: the window pairs
/// are interleaved); a row with NaN or ±inf takes [`window_argmax`]'s literal rule.
#[inline(always)]
fn pool_rows<const SSE41: bool>(
    values: &[f32],
    p: usize,
    s: &PoolShape,
    y: &mut [f32],
    to: &mut [u32],
) {
    let (h, w) = (s.h, s.w);
    let (ho, wo) = (h / 2, w / 2);
    for oy in 0..ho {
        let start = p * h * w + 2 * oy * w;
        // Pairs of columns; a trailing odd column is dropped (floor), as burn's pool does.
        let top = &values[start..start + 2 * wo];
        let bottom = &values[start + w..start + w + 2 * wo];
        let (y, to) = (&mut y[oy * wo..][..wo], &mut to[oy * wo..][..wo]);
        // Four windows at a time where the CPU allows, which also tells whether the row pair
        // is finite (if not, the row is redone below by the literal rule).
        let mut finite = None;
        #[cfg(target_arch = "x86_64")]
        if SSE41 && wo >= 4 {
            // SAFETY: the caller checked the CPU (AVX2 implies SSE4.1); the rows hold `wo`
            // windows, `y` and `to` `wo` outputs.
            finite = Some(unsafe {
                sse41::pool_row(top, bottom, y, to, start as u32, w as u32, s.relu)
            });
        }
        let vectorized = finite.is_some();
        let non_finite = match finite {
            Some(finite) => !finite,
            None => {
                let exponent = 0x7f80_0000u32;
                top.iter()
                    .chain(bottom)
                    .fold(false, |any, v| any | (v.to_bits() & exponent == exponent))
            }
        };
        if non_finite {
            for (ox, (yv, tv)) in y.iter_mut().zip(to.iter_mut()).enumerate() {
                let v = [
                    top[2 * ox],
                    top[2 * ox + 1],
                    bottom[2 * ox],
                    bottom[2 * ox + 1],
                ];
                let k = window_argmax(v);
                let m = v[k];
                let pass = !s.relu || m.is_nan() || m > 0.0;
                *yv = if pass { m } else { 0.0 };
                *tv = if pass {
                    (start + (k / 2) * w + 2 * ox + k % 2) as u32
                } else {
                    BLOCKED
                };
            }
            continue;
        }
        if vectorized {
            continue;
        }
        let (start, w) = (start as u32, w as u32);
        let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
        let outputs = y.iter_mut().zip(to.iter_mut());
        for (ox, ((t, b), (yv, tv))) in windows.zip(outputs).enumerate() {
            // The first maximum in row-major order, as `window_argmax` for finite values.
            let (m01, c01) = if t[1] > t[0] { (t[1], 1) } else { (t[0], 0) };
            let (m23, c23) = if b[1] > b[0] { (b[1], 1) } else { (b[0], 0) };
            let (m, row, col) = if m23 > m01 {
                (m23, w, c23)
            } else {
                (m01, 0, c01)
            };
            let pass = !s.relu || m > 0.0;
            *yv = if pass { m } else { 0.0 };
            *tv = if pass {
                start + row + 2 * ox as u32 + col
            } else {
                BLOCKED
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse41 {
    use std::arch::x86_64::*;

    use super::BLOCKED;

    /// All windows of one row pair, four at a time (a last, overlapping four where the count
    /// is not a multiple of four: they rewrite the same values): the same selects as
    /// [`super::pool_rows`]'s scalar loop, so the same maxima and routes where every value is
    /// finite, which it returns (else the outputs are to be redone by the literal rule).
    ///
    /// # Safety
    /// The CPU must support SSE4.1; `top` and `bottom` hold at least `2·n` values and `y`,
    /// `to` exactly `n ≥ 4`.
    #[target_feature(enable = "sse4.1")]
    pub(super) unsafe fn pool_row(
        top: &[f32],
        bottom: &[f32],
        y: &mut [f32],
        to: &mut [u32],
        start: u32,
        w: u32,
        relu: bool,
    ) -> bool {
        let n = y.len();
        assert!(n >= 4 && to.len() == n && top.len() >= 2 * n && bottom.len() >= 2 * n);
        let mut ox = 0;
        let mut non_finite = _mm_setzero_si128();
        loop {
            // SAFETY: `ox + 4 <= n`: values `2·ox .. 2·ox + 8` of each row, outputs
            // `ox .. ox + 4`.
            let bad = unsafe { four(top, bottom, y, to, ox, start, w, relu) };
            non_finite = _mm_or_si128(non_finite, bad);
            if ox + 4 == n {
                break;
            }
            ox = (ox + 4).min(n - 4);
        }
        _mm_testz_si128(non_finite, non_finite) == 1
    }

    /// Windows `ox .. ox + 4`; returns lanes set where one of their values is NaN or ±inf.
    ///
    /// # Safety
    /// SSE4.1; `ox + 4 <= y.len() = to.len()`, and the rows hold `2·ox + 8` values.
    #[inline]
    #[target_feature(enable = "sse4.1")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn four(
        top: &[f32],
        bottom: &[f32],
        y: &mut [f32],
        to: &mut [u32],
        ox: usize,
        start: u32,
        w: u32,
        relu: bool,
    ) -> __m128i {
        // SAFETY: in range (the caller's).
        let (ta, tb, ba, bb) = unsafe {
            (
                _mm_loadu_ps(top.as_ptr().add(2 * ox)),
                _mm_loadu_ps(top.as_ptr().add(2 * ox + 4)),
                _mm_loadu_ps(bottom.as_ptr().add(2 * ox)),
                _mm_loadu_ps(bottom.as_ptr().add(2 * ox + 4)),
            )
        };
        // Left and right values of the four windows.
        let (t0, t1) = (
            _mm_shuffle_ps::<0b10_00_10_00>(ta, tb),
            _mm_shuffle_ps::<0b11_01_11_01>(ta, tb),
        );
        let (b0, b1) = (
            _mm_shuffle_ps::<0b10_00_10_00>(ba, bb),
            _mm_shuffle_ps::<0b11_01_11_01>(ba, bb),
        );
        // `t1 > t0`, `b1 > b0`, then `m23 > m01`: the first maximum in row-major order.
        let c01 = _mm_cmpgt_ps(t1, t0);
        let m01 = _mm_blendv_ps(t0, t1, c01);
        let c23 = _mm_cmpgt_ps(b1, b0);
        let m23 = _mm_blendv_ps(b0, b1, c23);
        let row = _mm_castps_si128(_mm_cmpgt_ps(m23, m01));
        let m = _mm_blendv_ps(m01, m23, _mm_castsi128_ps(row));
        let col = _mm_castps_si128(_mm_blendv_ps(c01, c23, _mm_castsi128_ps(row)));
        // start + 2·(ox + lane) + (row ? w : 0) + (col ? 1 : 0); `col` is −1 where set.
        let base = _mm_add_epi32(
            _mm_set1_epi32(start.wrapping_add(2 * ox as u32) as i32),
            _mm_setr_epi32(0, 2, 4, 6),
        );
        let at = _mm_sub_epi32(
            _mm_add_epi32(base, _mm_and_si128(row, _mm_set1_epi32(w as i32))),
            col,
        );
        let (m, at) = if relu {
            // `m > 0` passes; else the output is +0.0 and no gradient flows.
            let pass = _mm_cmpgt_ps(m, _mm_setzero_ps());
            let blocked = _mm_castsi128_ps(_mm_set1_epi32(BLOCKED as i32));
            let at = _mm_blendv_ps(blocked, _mm_castsi128_ps(at), pass);
            (_mm_and_ps(m, pass), _mm_castps_si128(at))
        } else {
            (m, at)
        };
        // SAFETY: in range (the caller's).
        unsafe {
            _mm_storeu_ps(y.as_mut_ptr().add(ox), m);
            _mm_storeu_si128(to.as_mut_ptr().add(ox).cast(), at);
        }
        // An all-ones exponent: NaN or ±inf.
        let exponent = _mm_set1_epi32(0x7f80_0000);
        let special = |v: __m128| {
            let e = _mm_and_si128(_mm_castps_si128(v), exponent);
            _mm_cmpeq_epi32(e, exponent)
        };
        _mm_or_si128(
            _mm_or_si128(special(ta), special(tb)),
            _mm_or_si128(special(ba), special(bb)),
        )
    }
}

/// Below this many outputs the pool runs on the calling thread only. (LeNet-5's second pool,
/// 51 200 outputs at batch 128, is split: from a pool worker a split is a cheap local join.)
const PARALLEL_MIN_OUTPUTS: usize = 1 << 14;

/// Position (row-major, 0..4) of the maximum of one window: the first of equal maxima, or the
/// last NaN. Branch-free selects on the common path (where the arg-max is data-dependent and a
/// branch would be mispredicted about half the time); a NaN or infinity anywhere makes the sum
/// non-finite and takes the literal rule instead.
#[inline]
fn window_argmax(v: [f32; 4]) -> usize {
    if !(v[0] + v[1] + v[2] + v[3]).is_finite() {
        let mut best = 0;
        for k in 1..4 {
            if v[k] > v[best] || v[k].is_nan() {
                best = k;
            }
        }
        return best;
    }
    let (m01, k01) = if v[1] > v[0] { (v[1], 1) } else { (v[0], 0) };
    let (m23, k23) = if v[3] > v[2] { (v[3], 3) } else { (v[2], 2) };
    if m23 > m01 { k23 } else { k01 }
}

/// burn's options for a 2×2, stride-2, unpadded pool.
fn pool_options() -> MaxPoolOptions<2> {
    MaxPoolOptions::new([2, 2]).with_stride([2, 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flexops::tests::rand4;

    thread_local! {
        /// Poolings that reached the host path's dispatch on this thread.
        pub(super) static HOST_CALLS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn fused_relu_matches_burn_relu_of_pool() {
        // Random windows plus hand-made ones: all negative (output 0, no gradient), a zero
        // maximum (burn's ReLU passes no gradient at 0), NaN (passes), ties.
        #[rustfmt::skip]
        let hand = vec![
            -1.0f32, -2.0,   0.0, -1.0,   f32::NAN, 1.0,   2.0, 2.0,
            -3.0,    -0.5,  -4.0, -0.0,   3.0,      4.0,   2.0, 1.0,
        ];
        let random = rand4([2, 3, 6, 7], 9)
            .inner()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (values, dims) in [(hand, [1, 1, 2, 8]), (random, [2, 3, 6, 7])] {
            let run = |fused: bool| {
                let d = Device::flex().autodiff();
                let xt = Tensor::<4>::from_data(TensorData::new(values.clone(), dims), &d)
                    .require_grad();
                let before = HOST_CALLS.with(|n| n.get());
                let y = if fused {
                    max_pool2x2_relu(xt.clone())
                } else {
                    burn::tensor::activation::relu(max_pool2d(xt.clone(), pool_options()))
                };
                assert_eq!(HOST_CALLS.with(|n| n.get()) - before, usize::from(fused));
                let g = rand4(y.dims(), 10).inner();
                let g = Tensor::<4>::from_data(g.into_data(), &d);
                let grads = (y.clone() * g).sum().backward();
                let y = y.inner().into_data().try_to_vec::<f32>().unwrap();
                let gx = xt
                    .grad(&grads)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                (y, gx)
            };
            let (y0, g0) = run(false);
            let (y1, g1) = run(true);
            // Bit for bit, NaN included.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y1), bits(&y0));
            assert_eq!(bits(&g1), bits(&g0));
        }
    }

    #[test]
    fn pool_ties_and_nan_follow_burn() {
        // Window 1: all equal (ties after a ReLU): the gradient goes to the first position.
        // Window 2: two equal maxima: the first in row-major order wins. Window 3: a NaN wins.
        // Window 4: ordinary.
        #[rustfmt::skip]
        let v = vec![
            0.0f32, 0.0,   1.0, 3.0,
            0.0,    0.0,   3.0, 2.0,
            5.0,    f32::NAN, -1.0, -2.0,
            7.0,    1.0,   -3.0, -0.5,
        ];
        let run = |fast: bool| {
            let d = Device::flex().autodiff();
            let xt =
                Tensor::<4>::from_data(TensorData::new(v.clone(), [1, 1, 4, 4]), &d).require_grad();
            let y = if fast {
                max_pool2x2(xt.clone())
            } else {
                max_pool2d(xt.clone(), pool_options())
            };
            let grads = y.clone().sum().backward();
            let y = y.inner().into_data().try_to_vec::<f32>().unwrap();
            let g = xt
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            (y, g)
        };
        let (y0, g0) = run(false);
        let (y1, g1) = run(true);
        assert_eq!(y1[0], 0.0);
        assert_eq!(y1[1], 3.0);
        assert!(y1[2].is_nan());
        assert_eq!(y1[3], -0.5);
        assert!(y0[2].is_nan());
        assert_eq!([y0[0], y0[1], y0[3]], [y1[0], y1[1], y1[3]]);
        #[rustfmt::skip]
        let expect = vec![
            1.0f32, 0.0, 0.0, 1.0,
            0.0,    0.0, 0.0, 0.0,
            0.0,    1.0, 0.0, 0.0,
            0.0,    0.0, 0.0, 1.0,
        ];
        assert_eq!(g1, expect);
        assert_eq!(g0, expect);
    }

    #[test]
    fn vectorized_rows_keep_burns_ties_and_routes() {
        // Values from {-1, -0, 0, 1, 2}: ties in most windows, so the first maximum in
        // row-major order must win four windows at a time too; rows with NaN or ±inf redone by the
        // literal rule. Widths with 8 windows (two
        // fours), 5 and 7 (an overlapping last four) and an odd width (a dropped column).
        let d = Device::flex().autodiff();
        for dims in [[2, 3, 4, 16], [1, 4, 6, 10], [2, 2, 4, 14], [1, 3, 4, 9]] {
            let n: usize = dims.iter().product();
            let mut values: Vec<f32> = (0..n)
                .map(|i| [-1.0, -0.0, 0.0, 1.0, 2.0][(i * i * 31 + 7 * i / 3) % 5])
                .collect();
            // and rows with ±inf or NaN (the literal rule, after the vector pass found them)
            values[dims[3] * 2 + 3] = f32::INFINITY;
            values[n - 4] = f32::NEG_INFINITY;
            values[n / 2 + 1] = f32::NAN;
            for relu in [false, true] {
                let run = |fast: bool| {
                    let xt = Tensor::<4>::from_data(TensorData::new(values.clone(), dims), &d)
                        .require_grad();
                    let y = match (fast, relu) {
                        (true, true) => max_pool2x2_relu(xt.clone()),
                        (true, false) => max_pool2x2(xt.clone()),
                        (false, true) => {
                            burn::tensor::activation::relu(max_pool2d(xt.clone(), pool_options()))
                        }
                        (false, false) => max_pool2d(xt.clone(), pool_options()),
                    };
                    let g = rand4(y.dims(), 14).inner();
                    let g = Tensor::<4>::from_data(g.into_data(), &d);
                    let grads = (y.clone() * g).sum().backward();
                    let bits = |t: TensorData| {
                        t.try_to_vec::<f32>()
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>()
                    };
                    (
                        bits(y.inner().into_data()),
                        bits(xt.grad(&grads).unwrap().into_data()),
                    )
                };
                let (fast, reference) = (run(true), run(false));
                assert_eq!(fast.0, reference.0, "values, {dims:?} relu {relu}");
                assert_eq!(fast.1, reference.1, "gradients, {dims:?} relu {relu}");
            }
        }
    }

    #[test]
    fn pool_matches_burn_small_large_and_without_autodiff() {
        // Small pools run on one thread; 16 384 and 32 400 outputs are at or above the
        // threshold, so planes are split over threads in the forward and the backward; odd
        // sizes leave a dropped row and column.
        let outputs = |d: [usize; 4]| d[0] * d[1] * (d[2] / 2) * (d[3] / 2);
        let all = [[2, 3, 8, 8], [1, 2, 5, 7], [2, 8, 64, 64], [3, 8, 61, 91]];
        assert_eq!(
            outputs(all[0]) < PARALLEL_MIN_OUTPUTS,
            outputs(all[2]) >= PARALLEL_MIN_OUTPUTS
        );
        for dims in all {
            for relu in [false, true] {
                let pool = |x: Tensor<4>| {
                    if relu {
                        max_pool2x2_relu(x)
                    } else {
                        max_pool2x2(x)
                    }
                };
                let reference = |x: Tensor<4>| {
                    let y = max_pool2d(x, pool_options());
                    if relu {
                        burn::tensor::activation::relu(y)
                    } else {
                        y
                    }
                };
                // Autodiff: values and gradient.
                let run = |fast: bool| {
                    let xt = rand4(dims, 11).require_grad();
                    let y = if fast {
                        pool(xt.clone())
                    } else {
                        reference(xt.clone())
                    };
                    let g = rand4(y.dims(), 12);
                    let grads = (y.clone() * g).sum().backward();
                    (y.inner().into_data(), xt.grad(&grads).unwrap().into_data())
                };
                let (y0, g0) = run(false);
                let (y1, g1) = run(true);
                assert_eq!(y1, y0);
                assert_eq!(g1, g0);
                // Without autodiff (no routes kept).
                let plain = Tensor::<4>::from_data(rand4(dims, 13).into_data(), &Device::flex());
                let before = HOST_CALLS.with(|n| n.get());
                let fast = pool(plain.clone()).into_data();
                assert_eq!(HOST_CALLS.with(|n| n.get()) - before, 1);
                assert_eq!(fast, reference(plain).into_data());
            }
        }
    }
}
