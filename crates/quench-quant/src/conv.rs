//! 2×2 max-pooling for the CPU (Flex) backend as one host arg-max pass and one `select`, used
//! by the conv nets; and a convolution as im2col + one GEMM, kept as the measured alternative to
//! burn's `conv2d` (not used by the layers — see below).
//!
//! **Pooling.** Flex's `max_pool2d` evaluates a generic 3-d window per output and its backward
//! is a generic scatter; `perf` put it at 14 % of a LeNet-5 training step. [`max_pool2x2`] finds
//! each window's arg-max in one branch-free host pass and gathers those positions with `select`,
//! whose backward is one scatter of the output gradient. LeNet-5's pool (128×6×28×28), forward +
//! backward: 5.7 ms with burn's op, 3.5 ms with this one (`cargo bench --bench hot_paths --
//! pool`, 1 thread); values and gradients equal burn's, ties and NaN included.
//!
//! **Convolution: measured, not adopted.** [`conv2d_fast`] gathers every patch with one
//! `select` (or, for an untracked input, on the host) and multiplies once; both backward
//! products are GEMMs. Against burn's `conv2d` on the same shapes (`hot_paths`, 1 thread, glibc
//! tuned as in `quench`): LeNet-5 training convolutions forward + backward 6.6 vs 6.5 ms (conv1)
//! and 9.4 vs 9.6 ms (conv2) — equal; forward only 3.8 vs 2.3 ms (conv1, burn faster), 1.8 vs
//! 4.5 ms (conv2), 6.8 vs 11.5 ms and 23.9 vs 20.0 ms (the wider teacher CNN's two). No shape
//! rule wins consistently, so [`crate::layer::QuantConv2d`] keeps burn's op (one numerics for
//! every backend). An earlier end-to-end gain credited to this path came from the allocator
//! setting in `quench`'s `main` and from the pool.
//!
//! Other backends, grouped convolutions and other dtypes take burn's ops unchanged.

use std::cell::RefCell;
use std::collections::HashMap;

use rayon::prelude::*;

use burn::tensor::module::{conv2d, max_pool2d};
use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::qparams::HostCopy;

/// Geometry of one im2col gather, the key of the index cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Geometry {
    channels: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    /// Top and left padding (bottom/right follow from the output size).
    pad: [usize; 2],
    dilation: [usize; 2],
    ho: usize,
    wo: usize,
}

impl Geometry {
    /// Stride and dilation 1 on both axes (the host im2col's case).
    fn unit_steps(&self) -> bool {
        self.stride == [1, 1] && self.dilation == [1, 1]
    }

    /// Gather indices into `[C·H·W + 1]` (the last entry is the zero pad), ordered
    /// `(oy, ox, c, ky, kx)` so a row of the gathered matrix is one output pixel's patch in the
    /// order of burn's `[O, C, Kh, Kw]` weight.
    fn indices(&self) -> Vec<i64> {
        let zero = (self.channels * self.h * self.w) as i64;
        let mut idx = Vec::with_capacity(self.ho * self.wo * self.channels * self.kh * self.kw);
        for oy in 0..self.ho {
            for ox in 0..self.wo {
                for c in 0..self.channels {
                    for ky in 0..self.kh {
                        let y = (oy * self.stride[0] + ky * self.dilation[0]) as i64
                            - self.pad[0] as i64;
                        for kx in 0..self.kw {
                            let x = (ox * self.stride[1] + kx * self.dilation[1]) as i64
                                - self.pad[1] as i64;
                            let inside =
                                (0..self.h as i64).contains(&y) && (0..self.w as i64).contains(&x);
                            idx.push(if inside {
                                (c * self.h * self.w) as i64 + y * self.w as i64 + x
                            } else {
                                zero
                            });
                        }
                    }
                }
            }
        }
        idx
    }
}

thread_local! {
    /// Index tensors per geometry: built once per shape instead of once per step.
    static INDICES: RefCell<HashMap<Geometry, Tensor<1, Int>>> = RefCell::new(HashMap::new());
}

/// Whether the GEMM path applies: Flex, f32, no groups.
fn gemm_path_applies(x: &Tensor<4>, weight: &Tensor<4>, groups: usize) -> bool {
    groups == 1
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && x.device() == Device::flex()
}

/// `conv2d` with burn's semantics (`options` padding may be asymmetric); im2col + GEMM on Flex.
pub fn conv2d_fast(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    if !gemm_path_applies(&x, &weight, options.groups) {
        return conv2d(x, weight, bias, options);
    }
    let [batch, channels, h, w] = x.dims();
    let [out_channels, _, kh, kw] = weight.dims();
    let begin = options.padding_begin();
    let end = options.padding_end();
    // Output size along an axis; `None` when the kernel is larger than the padded input.
    let size = |axis: usize, n: usize, k: usize| {
        (n + begin[axis] + end[axis])
            .checked_sub(options.dilation[axis] * (k - 1) + 1)
            .map(|v| v / options.stride[axis] + 1)
    };
    let (Some(ho), Some(wo)) = (size(0, h, kh), size(1, w, kw)) else {
        // Let burn report it.
        return conv2d(x, weight, bias, options);
    };
    let geometry = Geometry {
        channels,
        h,
        w,
        kh,
        kw,
        stride: options.stride,
        pad: begin,
        dilation: options.dilation,
        ho,
        wo,
    };
    let patch = channels * kh * kw;
    let cols = match (x.is_tracked(), geometry.unit_steps()) {
        // No gradient flows to `x` (the image batch, a frozen teacher, evaluation): build the
        // patch matrix on the host, a window row at a time.
        (false, true) => match HostCopy::of(&x) {
            Some(HostCopy { values, .. }) => Tensor::from_data(
                TensorData::new(
                    im2col_host(&values, batch, &geometry),
                    [batch * ho * wo, patch],
                ),
                &x.device(),
            ),
            None => gather_columns(x, &geometry, batch),
        },
        _ => gather_columns(x, &geometry, batch),
    };
    let w2 = weight.reshape([out_channels, patch]).transpose();
    let mut y = cols.matmul(w2);
    if let Some(b) = bias {
        y = y + b.unsqueeze::<2>();
    }
    y.reshape([batch, ho * wo, out_channels])
        .swap_dims(1, 2)
        .reshape([batch, out_channels, ho, wo])
}

/// The patch matrix `[B·Ho·Wo, C·Kh·Kw]` of `x` by one `select` (autodiff records it).
fn gather_columns(x: Tensor<4>, geometry: &Geometry, batch: usize) -> Tensor<2> {
    let Geometry {
        channels,
        h,
        w,
        kh,
        kw,
        ho,
        wo,
        ..
    } = *geometry;
    let device = x.device();
    let idx = INDICES.with(|cache| {
        cache
            .borrow_mut()
            .entry(*geometry)
            .or_insert_with(|| {
                let v = geometry.indices();
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), &device)
            })
            .clone()
    });
    let flat = x.reshape([batch, channels * h * w]);
    let padded = Tensor::cat(vec![flat, Tensor::zeros([batch, 1], &device)], 1);
    padded
        .select(1, idx)
        .reshape([batch * ho * wo, channels * kh * kw])
}

/// The patch matrix of host `values` (`[B, C, H, W]`) for stride and dilation 1: row
/// `(b, oy, ox)`, column `(c, ky, kx)`, zero where the window reaches into the padding. Each
/// window row is a run of `kw` consecutive inputs, copied as a fixed-size array for the common
/// kernel widths (a `memcpy` call per 3 or 5 values cost more than `select`'s gather). One sample
/// per rayon task.
fn im2col_host(values: &[f32], batch: usize, g: &Geometry) -> Vec<f32> {
    match g.kw {
        3 => im2col_rows::<3>(values, batch, g),
        5 => im2col_rows::<5>(values, batch, g),
        _ => im2col_rows::<0>(values, batch, g),
    }
}

/// [`im2col_host`] with the window width `K` known at compile time (`0`: use `g.kw`).
fn im2col_rows<const K: usize>(values: &[f32], batch: usize, g: &Geometry) -> Vec<f32> {
    let kw = if K == 0 { g.kw } else { K };
    let plane = g.h * g.w;
    let patch = g.channels * g.kh * kw;
    let per_sample = g.ho * g.wo * patch;
    let mut cols = vec![0.0f32; batch * per_sample];
    let fill = |(b, out): (usize, &mut [f32])| {
        let xb = &values[b * g.channels * plane..(b + 1) * g.channels * plane];
        for (pixel, row) in out.chunks_exact_mut(patch).enumerate() {
            let (oy, ox) = (pixel / g.wo, pixel % g.wo);
            // Window columns inside the image: x = ox + kx − pad ∈ [0, w).
            let lo = g.pad[1].saturating_sub(ox);
            let hi = kw.min((g.w + g.pad[1]).saturating_sub(ox));
            for c in 0..g.channels {
                for ky in 0..g.kh {
                    let Some(y) = (oy + ky).checked_sub(g.pad[0]).filter(|&y| y < g.h) else {
                        continue;
                    };
                    let src = &xb[c * plane + y * g.w..][..g.w];
                    let dst = &mut row[(c * g.kh + ky) * kw..][..kw];
                    if K != 0 && lo == 0 && hi == K {
                        let start = ox - g.pad[1];
                        let window: &[f32; K] = src[start..start + K]
                            .try_into()
                            .unwrap_or_else(|_| unreachable!("a slice of length K"));
                        let dst: &mut [f32; K] = dst
                            .try_into()
                            .unwrap_or_else(|_| unreachable!("a slice of length K"));
                        *dst = *window;
                    } else if lo < hi {
                        let start = ox + lo - g.pad[1];
                        dst[lo..hi].copy_from_slice(&src[start..start + hi - lo]);
                    }
                }
            }
        }
    };
    if cols.len() >= PARALLEL_MIN_VALUES {
        cols.par_chunks_mut(per_sample).enumerate().for_each(fill);
    } else {
        cols.chunks_mut(per_sample).enumerate().for_each(fill);
    }
    cols
}

/// Below this many patch-matrix values im2col runs on the calling thread only.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

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
    use burn::tensor::Tolerance;

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

    /// How the input enters the convolution: a leaf that requires a gradient, an intermediate
    /// result of a tracked op (its gradient is read from the leaf), or a constant batch.
    #[derive(Clone, Copy, PartialEq)]
    enum Input {
        Leaf,
        Intermediate,
        Constant,
    }

    /// Forward, input gradient, weight gradient and bias gradient against burn's `conv2d`.
    fn check(x: [usize; 4], wd: [usize; 4], options: ConvOptions<2>) {
        for input in [Input::Leaf, Input::Intermediate, Input::Constant] {
            check_input(x, wd, options.clone(), input);
        }
    }

    fn check_input(x: [usize; 4], wd: [usize; 4], options: ConvOptions<2>, input: Input) {
        let run = |fast: bool| {
            let leaf = rand4(x, 1);
            let leaf = if input == Input::Constant {
                leaf
            } else {
                leaf.require_grad()
            };
            let xt = if input == Input::Intermediate {
                leaf.clone() * 2.0
            } else {
                leaf.clone()
            };
            let wt = rand4(wd, 2).require_grad();
            let bt: Tensor<1> = rand4([1, 1, 1, wd[0]], 3).reshape([wd[0]]).require_grad();
            let y = if fast {
                conv2d_fast(xt.clone(), wt.clone(), Some(bt.clone()), options.clone())
            } else {
                conv2d(xt.clone(), wt.clone(), Some(bt.clone()), options.clone())
            };
            // A non-uniform upstream gradient: weight the outputs.
            let g = rand4(y.dims(), 4);
            let grads = (y.clone() * g).sum().backward();
            (
                y.inner(),
                leaf.grad(&grads),
                wt.grad(&grads).unwrap(),
                bt.grad(&grads).unwrap(),
            )
        };
        let (y0, gx0, gw0, gb0) = run(false);
        let (y1, gx1, gw1, gb1) = run(true);
        let tol = Tolerance::<f32>::relative(1e-4).set_absolute(1e-4);
        y1.into_data().assert_approx_eq(&y0.into_data(), tol);
        match (gx1, gx0) {
            (Some(a), Some(b)) => a.into_data().assert_approx_eq(&b.into_data(), tol),
            (None, None) => assert!(input == Input::Constant),
            _ => panic!("input gradient present in only one of the two paths"),
        }
        gw1.into_data().assert_approx_eq(&gw0.into_data(), tol);
        gb1.into_data().assert_approx_eq(&gb0.into_data(), tol);
    }

    #[test]
    fn lenet_shapes_match_burn() {
        check(
            [3, 1, 28, 28],
            [6, 1, 5, 5],
            ConvOptions::new([1, 1], [2, 2], [1, 1], 1),
        );
        check(
            [3, 6, 14, 14],
            [16, 6, 5, 5],
            ConvOptions::new([1, 1], [0, 0], [1, 1], 1),
        );
    }

    #[test]
    fn host_im2col_widths_and_parallel_split_match_burn() {
        // 3-wide (fixed-size copy), 2- and 4-wide (general copy, asymmetric padding that cuts
        // windows on both sides), and a batch large enough to split over the pool.
        check(
            [4, 2, 9, 8],
            [3, 2, 3, 3],
            ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
        );
        check(
            [2, 3, 7, 6],
            [2, 3, 4, 2],
            ConvOptions::new_with_padding([1, 1], [(2, 1), (0, 1)], [1, 1], 1),
        );
        check(
            [2, 1, 6, 6],
            [2, 1, 3, 4],
            ConvOptions::new([1, 1], [1, 3], [1, 1], 1),
        );
        check(
            [40, 1, 28, 28],
            [6, 1, 5, 5],
            ConvOptions::new([1, 1], [2, 2], [1, 1], 1),
        );
    }

    #[test]
    fn stride_dilation_and_asymmetric_padding_match_burn() {
        check(
            [2, 3, 9, 8],
            [4, 3, 3, 3],
            ConvOptions::new([2, 1], [1, 0], [1, 2], 1),
        );
        check(
            [2, 2, 7, 6],
            [3, 2, 3, 2],
            ConvOptions::new_with_padding([1, 2], [(0, 1), (2, 0)], [1, 1], 1),
        );
    }

    #[test]
    fn hand_computed_padded_convolution() {
        // 1×1×2×2 input, 1×1×3×3 all-ones kernel, padding 1: every output is the sum of the
        // inputs its window covers, which with a 2×2 input is all four.
        let d = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [1, 1, 2, 2]), &d);
        let w = Tensor::<4>::ones([1, 1, 3, 3], &d);
        let y = conv2d_fast(x, w, None, ConvOptions::new([1, 1], [1, 1], [1, 1], 1));
        assert_eq!(y.dims(), [1, 1, 2, 2]);
        assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![10.0; 4]);
    }

    #[test]
    fn hand_computed_unpadded_convolution() {
        // x = 1..9 as 3×3, kernel [[1, 2], [3, 4]]: y[i][j] = x[i][j] + 2x[i][j+1] + 3x[i+1][j]
        // + 4x[i+1][j+1], e.g. y[0][0] = 1 + 4 + 12 + 20 = 37.
        let d = Device::flex();
        let x = Tensor::<4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &d,
        );
        let w = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4.], [1, 1, 2, 2]), &d);
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), &d);
        let y = conv2d_fast(x, w, Some(b), ConvOptions::new([1, 1], [0, 0], [1, 1], 1));
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![37.5, 47.5, 67.5, 77.5]
        );
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
