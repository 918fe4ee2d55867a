//! Times forward + backward of a fake-quantized `QuantLinear` (W4 per-channel minmax, A8
//! per-tensor moving-average asymmetric: the fashion_mlp_w4a8 recipe) against the same float
//! layer, side by side, so the cost of fake quantization is measured on one machine in one run.
//!
//! `cargo run -p quench-quant --example fq_bench -- [d_in] [d_out] [batch] [iters] [rounds]`

use std::time::Instant;

use burn::nn::LinearConfig;
use burn::tensor::{Device, Distribution, Tensor};
use quench_quant::layer::{LayerQuant, QuantLinear};
use quench_quant::{Estimator, Granularity, QuantSpec};

fn w4a8(weight: bool, input: bool) -> LayerQuant {
    LayerQuant::Qat {
        weight: weight.then(|| QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            estimator: Estimator::MinMax,
            ..QuantSpec::default()
        }),
        input: input.then(|| QuantSpec {
            bits: 8,
            granularity: Granularity::PerTensor,
            estimator: Estimator::MovingAverage,
            momentum: 0.01,
            symmetric: false,
            ..QuantSpec::default()
        }),
    }
}

/// Seconds per forward + backward of `layer` on `x` (mean over `iters`).
fn time(layer: &QuantLinear, x: &Tensor<2>, iters: usize) -> f64 {
    let step = || {
        let y = layer.forward(x.clone());
        let grads = y.sum().backward();
        let g = layer.inner.weight.grad(&grads).expect("weight gradient");
        // reading one value forces the work on lazy backends
        let _ = g.slice([0..1, 0..1]).into_scalar::<f32>();
    };
    for _ in 0..3 {
        step();
    }
    let t = Instant::now();
    for _ in 0..iters {
        step();
    }
    t.elapsed().as_secs_f64() / iters as f64
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let arg = |i: usize, default: usize| args.get(i).copied().unwrap_or(default);
    let (d_in, d_out, batch) = (arg(0, 512), arg(1, 512), arg(2, 128));
    let (iters, rounds) = (arg(3, 50), arg(4, 3));

    let device = Device::flex().autodiff();
    device.seed(0);
    let make = |kind: &LayerQuant| {
        QuantLinear::from_linear(LinearConfig::new(d_in, d_out).init(&device), kind)
            .expect("valid layer")
    };
    let float = make(&LayerQuant::Float);
    let quant = make(&w4a8(true, true));
    let w_only = make(&w4a8(true, false));
    let a_only = make(&w4a8(false, true));
    let x = Tensor::<2>::random([batch, d_in], Distribution::Normal(0.0, 1.0), &device);

    println!("QuantLinear {d_in}x{d_out}, batch {batch}, {iters} iters x {rounds} rounds");
    for r in 0..rounds {
        let f = time(&float, &x, iters);
        let q = time(&quant, &x, iters);
        let w = time(&w_only, &x, iters);
        let a = time(&a_only, &x, iters);
        println!(
            "round {r}: float {:8.1} us  w4a8 {:8.1} us  overhead {:6.1} %  \
             (w4 only +{:6.1} us, a8 only +{:6.1} us)",
            f * 1e6,
            q * 1e6,
            (q / f - 1.0) * 100.0,
            (w - f) * 1e6,
            (a - f) * 1e6,
        );
    }
}
