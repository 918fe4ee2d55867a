//! A fully connected layer's product as one autodiff node on Flex: `y = x·W + b`.
//!
//! **Why by hand.** burn's `linear` is a `matmul` and a broadcast bias add, each a tracked
//! op. Every burn-flex `matmul` output (the forward, and both products of its backward) is
//! allocated as a zero-filled byte vector and then copied into an aligned buffer before `gemm`
//! overwrites it: `perf` put that `memset` + `memcpy` at about 9 % of an MLP training step, all
//! of it on the thread that runs the step while the other one waits. Here each product is one
//! `gemm` call into a fresh, unfilled buffer, the bias is added in place, and its gradient is a
//! column sum of the output gradient: no broadcast op and no reduction op on the graph.
//!
//! **Same numbers as burn.** The products are the `gemm` calls burn-flex makes for
//! `x.matmul(W)`, `dy.matmul(Wᵀ)` and `xᵀ.matmul(dy)` (same kernels, strides and thread
//! split), and the bias is added after the product as in `matmul(x, W) + b`, so the output and
//! the input and weight gradients equal burn's bit for bit (tests); the bias gradient sums the
//! rows in order.
//!
//! **Scope.** A 2-d f32 input on Flex, with autodiff disabled or without gradient
//! checkpointing; anything else (another backend, dtype or rank, a checkpointing strategy)
//! takes burn's `linear` unchanged.

use burn::tensor::module::linear as burn_linear;
use burn::tensor::{DType, Device, Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::flexops::{
    Grads, MatRef, Needs, WeightedOp, contiguous, matmul_new, run_weighted, slice,
};

/// `linear(x, weight, bias)` with burn's semantics (`weight: [d_in, d_out]`, `y = x·W + b`):
/// one recorded node on Flex for a 2-d f32 input, burn's op elsewhere.
pub fn linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    match sizes(&x, &weight, bias.as_ref()) {
        Some(sizes) => host_linear(x, weight, bias, sizes),
        None => burn_linear(x, weight, bias),
    }
}

/// `rows × d_in` times `d_in × d_out`.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    rows: usize,
    d_in: usize,
    d_out: usize,
}

/// The sizes if the host path applies.
fn sizes<const D: usize>(x: &Tensor<D>, w: &Tensor<2>, b: Option<&Tensor<1>>) -> Option<Sizes> {
    let flex = Device::flex();
    let f32_on_flex = |dtype: DType, device: Device| dtype == DType::F32 && device == flex;
    if D != 2
        || !f32_on_flex(x.dtype(), x.device())
        || !f32_on_flex(w.dtype(), w.device())
        || b.is_some_and(|b| !f32_on_flex(b.dtype(), b.device()))
    {
        return None;
    }
    let dims = x.dims();
    let [d_in, d_out] = w.dims();
    let sizes = Sizes {
        rows: dims[0],
        d_in: dims[1],
        d_out,
    };
    let fits = sizes.d_in == d_in && b.is_none_or(|b| b.dims() == [d_out]);
    // A mismatch is left to burn's op to report; empty products are left to it as well.
    (fits && sizes.rows > 0 && d_in > 0 && d_out > 0).then_some(sizes)
}

fn host_linear<const D: usize>(
    x: Tensor<D>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    sizes: Sizes,
) -> Tensor<D> {
    match run_weighted(Dense(sizes), x, weight, bias) {
        Ok(y) => {
            #[cfg(test)]
            tests::HOST_CALLS.with(|n| n.set(n.get() + 1));
            y
        }
        Err(inputs) => {
            let (x, w, b) = *inputs;
            burn_linear(x, w, b)
        }
    }
}

/// `x·W (+ b)`: the product into a fresh buffer, then the bias added row by row.
fn forward(x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>, s: Sizes) -> FlexTensor {
    let (x, w) = (contiguous(x), contiguous(w));
    let mut y = matmul_new(
        MatRef::row_major(slice(&x), s.rows, s.d_in),
        MatRef::row_major(slice(&w), s.d_in, s.d_out),
    );
    if let Some(b) = b {
        let b = contiguous(b);
        let bs = slice(&b);
        for row in y.chunks_exact_mut(s.d_out) {
            for (v, bias) in row.iter_mut().zip(bs) {
                *v += bias;
            }
        }
    }
    FlexTensor::from_data(TensorData::new(y, [s.rows, s.d_out]))
}

/// The product as a recorded operation. Parents: input, weight, bias (a zero constant when
/// there is none).
#[derive(Debug, Clone, Copy)]
struct Dense(Sizes);

impl WeightedOp for Dense {
    fn bias_len(&self) -> usize {
        self.0.d_out
    }
    fn forward(&self, x: &FlexTensor, w: &FlexTensor, b: Option<&FlexTensor>) -> FlexTensor {
        forward(x, w, b, self.0)
    }
    fn backward(
        &self,
        x: Option<&FlexTensor>,
        w: Option<&FlexTensor>,
        dy: &FlexTensor,
        need: Needs,
    ) -> Grads {
        let s = self.0;
        let dy = contiguous(dy);
        let dys = slice(&dy);
        let dy_mat = MatRef::row_major(dys, s.rows, s.d_out);
        let flex = |values: Vec<f32>, shape: Vec<usize>| {
            FlexTensor::from_data(TensorData::new(values, shape))
        };
        // dx[rows, d_in] = dy[rows, d_out] · W[d_in, d_out]ᵀ
        let dx = w.filter(|_| need.dx).map(|w| {
            let w = contiguous(w);
            let dx = matmul_new(dy_mat, MatRef::col_major(slice(&w), s.d_out, s.d_in));
            flex(dx, vec![s.rows, s.d_in])
        });
        // dW[d_in, d_out] = x[rows, d_in]ᵀ · dy[rows, d_out]
        let dw = x.filter(|_| need.dw).map(|x| {
            let x = contiguous(x);
            let dw = matmul_new(MatRef::col_major(slice(&x), s.d_in, s.rows), dy_mat);
            flex(dw, vec![s.d_in, s.d_out])
        });
        // db[d_out] = Σ_rows dy, the rows added in order (vectorized across columns).
        let db = need.db.then(|| {
            let mut db = vec![0.0f32; s.d_out];
            for row in dys.chunks_exact(s.d_out) {
                for (acc, v) in db.iter_mut().zip(row) {
                    *acc += v;
                }
            }
            flex(db, vec![s.d_out])
        });
        (dx, dw, db)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::flexops::tests::rand;

    thread_local! {
        /// Products that took the host path on this thread (so a test cannot pass by silently
        /// falling back to burn's op).
        pub(super) static HOST_CALLS: Cell<usize> = const { Cell::new(0) };
    }

    fn host_calls() -> usize {
        HOST_CALLS.with(Cell::get)
    }

    fn bits<const D: usize>(t: Tensor<D>) -> Vec<u32> {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap_or_else(|e| panic!("f32 data: {e:?}"))
            .iter()
            .map(|v| v.to_bits())
            .collect()
    }

    /// What feeds the product: leaves that require gradients, or the input as a constant
    /// (no input gradient asked for), and with or without a bias.
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Case {
        rows: usize,
        d_in: usize,
        d_out: usize,
        bias: bool,
        x_tracked: bool,
    }

    /// Output, input, weight and bias gradients of the host op and of burn's `linear`.
    fn run(case: Case, host: bool) -> [Option<Vec<f32>>; 4] {
        let x = rand([case.rows, case.d_in], 1);
        let x = if case.x_tracked { x.require_grad() } else { x };
        let w = rand([case.d_in, case.d_out], 2).require_grad();
        let b = case.bias.then(|| rand([case.d_out], 3).require_grad());
        // A non-uniform upstream gradient: y·g summed.
        let g = rand([case.rows, case.d_out], 4).detach();
        let y = if host {
            linear(x.clone(), w.clone(), b.clone())
        } else {
            burn_linear(x.clone(), w.clone(), b.clone())
        };
        let grads = (y.clone() * g).sum().backward();
        let vec = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().ok();
        let grad_x = if case.x_tracked {
            x.grad(&grads).and_then(vec)
        } else {
            assert!(x.grad(&grads).is_none(), "no gradient for a constant input");
            None
        };
        [
            vec(y),
            grad_x,
            w.grad(&grads).and_then(vec),
            b.and_then(|b| b.grad(&grads))
                .and_then(|t| t.into_data().try_to_vec::<f32>().ok()),
        ]
    }

    fn check(case: Case) {
        let before = host_calls();
        let host = run(case, true);
        assert_eq!(host_calls() - before, 1, "host path taken for {case:?}");
        let burn = run(case, false);
        assert_eq!(host_calls() - before, 1, "burn's op stays burn's");
        let names = [
            "output",
            "input gradient",
            "weight gradient",
            "bias gradient",
        ];
        for (i, name) in names.iter().enumerate() {
            let (h, b) = (&host[i], &burn[i]);
            assert_eq!(h.is_some(), b.is_some(), "{name} present in both, {case:?}");
            let (Some(h), Some(b)) = (h, b) else { continue };
            assert_eq!(h.len(), b.len());
            if i < 3 {
                // Same gemm calls as burn-flex: the same bits.
                let hb: Vec<u32> = h.iter().map(|v| v.to_bits()).collect();
                let bb: Vec<u32> = b.iter().map(|v| v.to_bits()).collect();
                assert_eq!(hb, bb, "{name} bit for bit, {case:?}");
            } else {
                for (hv, bv) in h.iter().zip(b) {
                    assert!(
                        (hv - bv).abs() <= 1e-5 * (1.0 + bv.abs()),
                        "{name}: {hv} vs {bv}"
                    );
                }
            }
        }
    }

    #[test]
    fn equals_burns_linear_small_and_threaded() {
        for (rows, d_in, d_out) in [(1, 1, 1), (5, 7, 3), (33, 17, 10), (128, 784, 512)] {
            for bias in [true, false] {
                for x_tracked in [true, false] {
                    check(Case {
                        rows,
                        d_in,
                        d_out,
                        bias,
                        x_tracked,
                    });
                }
            }
        }
    }

    #[test]
    fn bias_gradient_is_the_column_sum() {
        // Hand-computed: dy = ones·g with g = [[1, 2], [3, 4], [5, 6]] → db = [9, 12].
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::from_data([[1.0f32], [2.0], [3.0]], &device);
        let w = Tensor::<2>::from_data([[0.5f32, -1.0]], &device).require_grad();
        let b = Tensor::<1>::from_data([0.25f32, 0.75], &device).require_grad();
        let g = Tensor::<2>::from_data([[1.0f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &device);
        let y = linear(x, w.clone(), Some(b.clone()));
        assert_eq!(
            y.clone().into_data().try_to_vec::<f32>().ok(),
            Some(vec![0.75, -0.25, 1.25, -1.25, 1.75, -2.25])
        );
        let grads = (y * g).sum().backward();
        let db = b
            .grad(&grads)
            .map(|t| t.into_data().try_to_vec::<f32>().ok());
        assert_eq!(db, Some(Some(vec![9.0, 12.0])));
        // dW = xᵀ·g = [1·1 + 2·3 + 3·5, 1·2 + 2·4 + 3·6] = [22, 28].
        let dw = w
            .grad(&grads)
            .map(|t| t.into_data().try_to_vec::<f32>().ok());
        assert_eq!(dw, Some(Some(vec![22.0, 28.0])));
    }

    #[test]
    fn without_autodiff_and_with_a_strided_input() {
        let device = Device::flex();
        let x = Tensor::<2>::from_data(rand([9, 6], 5).into_data(), &device);
        let w = Tensor::<2>::from_data(rand([9, 4], 6).into_data(), &device);
        let b = Tensor::<1>::from_data(rand([4], 7).into_data(), &device);
        // xᵀ is a strided view: the host op makes it contiguous first.
        let xt = x.transpose();
        let before = host_calls();
        let host = linear(xt.clone(), w.clone(), Some(b.clone()));
        assert_eq!(host_calls() - before, 1);
        assert_eq!(bits(host), bits(burn_linear(xt, w, Some(b))));
    }

    #[test]
    fn other_ranks_and_mismatches_go_to_burn() {
        let x = rand([2, 3, 4], 8);
        let w = rand([4, 5], 9);
        let before = host_calls();
        let y = linear(x.clone(), w.clone(), None);
        assert_eq!(host_calls(), before, "3-d input: burn's op");
        assert_eq!(bits(y), bits(burn_linear(x, w, None)));
    }
}
