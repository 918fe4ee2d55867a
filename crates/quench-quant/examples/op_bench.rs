//! Times the burn ops the fake-quant hot path is built from, on an `n×n` weight (default 512) on
//! the Flex CPU backend, and the weight quantizer itself — to see which kernels dominate and to
//! pick between equivalent formulations (e.g. `round` vs two additions, `clamp` vs two one-sided
//! clamps, a transposed copy vs a strided reduction).
//!
//! `cargo run -p quench-quant --example op_bench -- [n]`; `ONLY=<substring>` runs matching lines.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use quench_quant::{Estimator, Granularity, QuantSpec, Quantizer};

fn t<R>(name: &str, iters: usize, mut f: impl FnMut() -> R) {
    if let Ok(only) = std::env::var("ONLY")
        && !name.contains(only.as_str())
    {
        return;
    }
    for _ in 0..3 {
        drop(f());
    }
    let s = Instant::now();
    for _ in 0..iters {
        drop(f());
    }
    let us = s.elapsed().as_secs_f64() * 1e6 / iters as f64;
    println!("{name:>34}: {us:8.1} us");
}

fn main() {
    let d = Device::flex();
    let n: usize = std::env::args()
        .nth(1)
        .map_or(512, |a| a.parse().expect("n is a number"));
    let x = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &d);
    let s = Tensor::<2>::random([1, n], Distribution::Uniform(0.1, 0.2), &d);
    let it = 100;
    println!("{n}x{n} f32, plain Flex device");

    t("min_dim(0) (strided)", it, || x.clone().min_dim(0));
    t("min_dim(1) (row scan)", it, || x.clone().min_dim(1));
    t("min() (all)", it, || x.clone().min());
    t("transposed copy", it, || {
        x.clone().swap_dims(0, 1).reshape([n * n])
    });
    t("min_pair", it, || x.clone().min_pair(x.clone()));
    t("div (broadcast)", it, || x.clone() / s.clone());
    t("mul (broadcast)", it, || x.clone() * s.clone());
    t("add", it, || x.clone() + x.clone());
    t("add_scalar", it, || x.clone().add_scalar(1.0));
    t("round", it, || x.clone().round());
    t("round by two additions", it, || {
        x.clone().add_scalar(12_582_912.0).sub_scalar(12_582_912.0)
    });
    t("clamp", it, || x.clone().clamp(-8, 7));
    t("clamp_min + clamp_max", it, || {
        x.clone().clamp_min(-8).clamp_max(7)
    });
    t("equal", it, || x.clone().equal(x.clone()));
    let m = x.clone().greater_elem(1.0);
    t("bool -> float", it, || m.clone().float());
    t("mask_fill", it, || x.clone().mask_fill(m.clone(), 0.0));

    let sp = QuantSpec {
        bits: 4,
        granularity: Granularity::PerChannel,
        estimator: Estimator::MinMax,
        ..QuantSpec::default()
    };
    let q = Quantizer::for_weight(&sp, &[n, n], 1, &d).expect("valid spec");
    let layout = q.layout().expect("weight layout").clone();
    t("per-channel min_max (axis 1)", it, || {
        layout.min_max(x.clone())
    });
    t("weight quantizer, observing", it, || {
        q.forward(x.clone(), true)
    });
    t("weight quantizer, not observing", it, || {
        q.forward(x.clone(), false)
    });
    let ad = d.autodiff();
    let qa = Quantizer::for_weight(&sp, &[n, n], 1, &ad).expect("valid spec");
    let xa = Tensor::<2>::from_data(x.to_data(), &ad).require_grad();
    let backward = |y: Tensor<2>| {
        let g = y.sum().backward();
        let g = xa.grad(&g).expect("gradient");
        g.slice([0..1, 0..1]).into_scalar::<f32>()
    };
    t("sum fwd+bwd (autodiff baseline)", it, || {
        backward(xa.clone())
    });
    t("weight quantizer fwd+bwd (autodiff)", it, || {
        backward(qa.forward(xa.clone(), true))
    });
    let act = QuantSpec {
        estimator: Estimator::MovingAverage,
        momentum: 0.01,
        symmetric: false,
        ..QuantSpec::default()
    };
    let aq = Quantizer::for_activation(&act, &ad).expect("valid spec");
    t("activation quantizer fwd+bwd (autodiff)", it, || {
        backward(aq.forward(xa.clone(), true))
    });
}
