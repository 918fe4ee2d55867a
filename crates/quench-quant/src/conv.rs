//! 2×2 max-pooling for the CPU (Flex) backend as one host arg-max pass and one `select`, used
//! by the conv nets.
//!
//! Flex's `max_pool2d` evaluates a generic 3-d window per output and its backward is a generic
//! scatter; `perf` put it at 14 % of a LeNet-5 training step. [`max_pool2x2`] finds each
//! window's arg-max in one branch-free host pass and gathers those positions with `select`,
//! whose backward is one scatter of the output gradient. LeNet-5's pool (128×6×28×28), forward +
//! backward: 5.7 ms with burn's op, 3.5 ms with this one (`cargo bench --bench hot_paths --
//! pool`, 1 thread); values and gradients equal burn's, ties and NaN included.
//!
//! The convolution itself is [`crate::flexconv`]. (An earlier im2col + `select` + burn-matmul
//! version, `conv2d_fast`, only tied burn's `conv2d` in training and was removed when the
//! custom autodiff op replaced it.) Other backends and dtypes take burn's pool unchanged.

use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::qparams::HostCopy;

/// 2×2 max pooling with stride 2 (floor), burn's `max_pool2d` semantics (the first maximum of
/// a window in row-major order wins, NaN wins over numbers). On Flex the arg-max of every window
/// is found in one host pass and the output is one `select` of those positions, so the backward
/// is one scatter of the output gradient, not burn's generic 3-d window loop.
pub fn max_pool2x2(x: Tensor<4>) -> Tensor<4> {
    let [batch, channels, h, w] = x.dims();
    let (ho, wo) = (h / 2, w / 2);
    let host = (ho > 0 && wo > 0).then(|| HostCopy::of(&x)).flatten();
    let Some(HostCopy { values, .. }) = host else {
        return max_pool2d(x, pool_options());
    };
    let idx = pool_argmax(&values, batch * channels, h, w);
    let n = idx.len();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &x.device());
    x.reshape([batch * channels * h * w])
        .select(0, idx)
        .reshape([batch, channels, ho, wo])
}

/// Flat index of the maximum of every 2×2 window of `planes` row-major `h×w` planes.
fn pool_argmax(values: &[f32], planes: usize, h: usize, w: usize) -> Vec<i64> {
    let (ho, wo) = (h / 2, w / 2);
    let mut idx = Vec::with_capacity(planes * ho * wo);
    for p in 0..planes {
        for oy in 0..ho {
            let start = p * h * w + 2 * oy * w;
            let (top, bottom) = values[start..start + 2 * w].split_at(w);
            // Pairs of columns; a trailing odd column is dropped (floor), as `chunks_exact` does.
            let windows = top.chunks_exact(2).zip(bottom.chunks_exact(2));
            idx.extend(windows.enumerate().map(|(ox, (t, b))| {
                let k = window_argmax([t[0], t[1], b[0], b[1]]);
                (start + (k / 2) * w + 2 * ox + k % 2) as i64
            }));
        }
    }
    idx
}

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

    fn rand4(dims: [usize; 4], seed: u64) -> Tensor<4> {
        let n: usize = dims.iter().product();
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_data(TensorData::new(v, dims), &Device::flex().autodiff())
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
    fn pool_matches_burn_values_and_gradient() {
        for dims in [[2, 3, 8, 8], [1, 2, 5, 7]] {
            let run = |fast: bool| {
                let xt = rand4(dims, 7).require_grad();
                let y = if fast {
                    max_pool2x2(xt.clone())
                } else {
                    max_pool2d(xt.clone(), pool_options())
                };
                let g = rand4(y.dims(), 8);
                let grads = (y.clone() * g).sum().backward();
                (y.inner().into_data(), xt.grad(&grads).unwrap().into_data())
            };
            let (y0, g0) = run(false);
            let (y1, g1) = run(true);
            assert_eq!(y1, y0);
            assert_eq!(g1, g0);
        }
    }
}
