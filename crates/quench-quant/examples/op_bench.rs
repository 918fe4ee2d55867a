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

fn tree_min(mut x: Tensor<2>) -> Tensor<2> {
    let mut tail: Option<Tensor<2>> = None;
    loop {
        let [p, c] = x.dims();
        if p <= 4 {
            let m = x.min_dim(0);
            return match tail {
                Some(t) => m.min_pair(t),
                None => m,
            };
        }
        let h = p / 2;
        if p % 2 == 1 {
            let last = x.clone().slice([2 * h..p, 0..c]);
            tail = Some(match tail {
                Some(t) => t.min_pair(last),
                None => last,
            });
        }
        x = x
            .clone()
            .slice([0..h, 0..c])
            .min_pair(x.slice([h..2 * h, 0..c]));
    }
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
    t("max_dim(1).max_dim(0)", it, || {
        x.clone().max_dim(1).max_dim(0)
    });
    t("reshape[n*n/8,8] max_dim(1) max_dim(0)", it, || {
        x.clone().reshape([n * n / 8, 8]).max_dim(0).max_dim(1)
    });
    t("magic round", it, || {
        x.clone().add_scalar(12582912.0).sub_scalar(12582912.0)
    });
    t("add_scalar", it, || x.clone().add_scalar(1.0));
    t("clamp_min", it, || x.clone().clamp_min(-8));
    t("equal", it, || x.clone().equal(x.clone()));
    let e = x.clone().equal(x.clone());
    t("bool.float", it, || e.clone().float());
    t("min_pair", it, || x.clone().min_pair(x.clone()));
    t("tree min axis 0", it, || tree_min(x.clone()));
    t("transpose copy", it, || {
        x.clone().swap_dims(0, 1).reshape([n * n])
    });
    let xt = x.clone().swap_dims(0, 1).reshape([n, n]);
    t("min_dim(1)+max_dim(1) contiguous", it, || {
        (xt.clone().min_dim(1), xt.clone().max_dim(1))
    });
    t("host into_data+loop", it, || {
        let v = x.clone().into_data().into_vec::<f32>().unwrap();
        let mut mn = vec![f32::INFINITY; n];
        let mut mx = vec![f32::NEG_INFINITY; n];
        for row in v.chunks_exact(n) {
            for ((a, b), &x) in mn.iter_mut().zip(mx.iter_mut()).zip(row) {
                *a = a.min(x);
                *b = b.max(x);
            }
        }
        (mn, mx)
    });
    {
        use quench_quant::{Estimator, Granularity, QuantSpec, Quantizer};
        let sp = QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            estimator: Estimator::MinMax,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_weight(&sp, &[n, n], 1, &d).unwrap();
        t("wq forward observe (plain)", it, || {
            q.forward(x.clone(), true)
        });
        t("wq forward (plain)", it, || q.forward(x.clone(), false));
        let l = q.layout().unwrap().clone();
        t("layout.min_max", it, || l.min_max(x.clone()));
        let ad = d.clone().autodiff();
        let qa = Quantizer::for_weight(&sp, &[n, n], 1, &ad).unwrap();
        let xa = Tensor::<2>::from_data(x.to_data(), &ad).require_grad();
        t("wq fwd+bwd observe (autodiff)", it, || {
            let g = qa.forward(xa.clone(), true).sum().backward();
            xa.grad(&g)
                .unwrap()
                .slice([0..1, 0..1])
                .into_scalar::<f32>()
        });
        t("sum fwd+bwd (autodiff)", it, || {
            let g = xa.clone().sum().backward();
            xa.grad(&g)
                .unwrap()
                .slice([0..1, 0..1])
                .into_scalar::<f32>()
        });
    }
    t("x/s round clamp *s", it, || {
        ((x.clone() / s.clone()).round().clamp(-8, 7)) * s.clone()
    });
    let xa = x.clone().autodiff().require_grad();
    t("ad: mask_fill+sub+add", it, || {
        let i = xa.clone().mask_fill(m.clone(), 0.0);
        x.clone().autodiff() + (i.clone() - i.detach())
    });
}
