//! Times the individual burn ops of the fake-quant path on a 512×512 weight (plain Flex), to see
//! which dominate.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

fn t<R>(name: &str, iters: usize, mut f: impl FnMut() -> R) {
    for _ in 0..3 {
        drop(f());
    }
    let s = Instant::now();
    for _ in 0..iters {
        drop(f());
    }
    println!(
        "{name:>24}: {:8.1} us",
        s.elapsed().as_secs_f64() * 1e6 / iters as f64
    );
}

fn main() {
    let d = Device::flex();
    let n = std::env::args().nth(1).map_or(512, |a| a.parse().unwrap());
    let x = Tensor::<2>::random([n, n], Distribution::Normal(0.0, 1.0), &d);
    let s = Tensor::<2>::random([1, n], Distribution::Uniform(0.1, 0.2), &d);
    let it = 100;
    t("min_dim(0)", it, || x.clone().min_dim(0));
    t("min_dim(1)", it, || x.clone().min_dim(1));
    t("transpose+min_dim(1)", it, || {
        x.clone().swap_dims(0, 1).reshape([n, n]).min_dim(1)
    });
    t("min()", it, || x.clone().min());
    t("div bcast", it, || x.clone() / s.clone());
    t("mul bcast", it, || x.clone() * s.clone());
    t("div_scalar", it, || x.clone().div_scalar(3.0));
    t("round", it, || x.clone().round());
    t("clamp", it, || x.clone().clamp(-8, 7));
    t("not_equal", it, || x.clone().not_equal(x.clone()));
    let m = x.clone().greater_elem(1.0);
    t("mask_fill", it, || x.clone().mask_fill(m.clone(), 0.0));
    t("add", it, || x.clone() + x.clone());
    t("abs", it, || x.clone().abs());
    t("x/s round clamp *s", it, || {
        ((x.clone() / s.clone()).round().clamp(-8, 7)) * s.clone()
    });
    let xa = x.clone().autodiff().require_grad();
    t("ad: mask_fill+sub+add", it, || {
        let i = xa.clone().mask_fill(m.clone(), 0.0);
        x.clone().autodiff() + (i.clone() - i.detach())
    });
}
