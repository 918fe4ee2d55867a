//! The hot pieces of a quench training step, each against its float baseline in one run:
//! forward + backward of a 512×512 `QuantLinear` on a batch of 128 — float, W4A8 with weight
//! scales per tensor / per channel / per group of 128, A8 per token, BitNet ternary (with and
//! without SubLN) — plus mask application to a 512×512 weight and the KD loss
//! (T = 4, α = 0.9) forward + backward on 128×10 logits.
//!
//! `cargo bench --bench hot_paths -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use burn::nn::LinearConfig;
use burn::tensor::{Bool, Device, Distribution, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use quench_distill::KdLoss;
use quench_prune::apply_mask;
use quench_quant::layer::{LayerQuant, QuantLinear};
use quench_quant::{Estimator, Granularity, QuantSpec};

const D: usize = 512;
const BATCH: usize = 128;

fn weight_spec(granularity: Granularity) -> QuantSpec {
    QuantSpec {
        bits: 4,
        granularity,
        group_size: (granularity == Granularity::PerGroup).then_some(128),
        estimator: Estimator::MinMax,
        ..QuantSpec::default()
    }
}

fn input_spec(granularity: Granularity) -> QuantSpec {
    QuantSpec {
        bits: 8,
        granularity,
        estimator: if granularity == Granularity::PerToken {
            Estimator::MinMax
        } else {
            Estimator::MovingAverage
        },
        momentum: 0.01,
        symmetric: false,
        ..QuantSpec::default()
    }
}

fn bench_layers(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(0);
    let x = Tensor::<2>::random([BATCH, D], Distribution::Normal(0.0, 1.0), &device);
    let kinds: Vec<(&str, LayerQuant)> = vec![
        ("float", LayerQuant::Float),
        (
            "w4_per_tensor_a8",
            LayerQuant::Qat {
                weight: Some(weight_spec(Granularity::PerTensor)),
                input: Some(input_spec(Granularity::PerTensor)),
            },
        ),
        (
            "w4_per_channel_a8",
            LayerQuant::Qat {
                weight: Some(weight_spec(Granularity::PerChannel)),
                input: Some(input_spec(Granularity::PerTensor)),
            },
        ),
        (
            "w4_per_group128_a8",
            LayerQuant::Qat {
                weight: Some(weight_spec(Granularity::PerGroup)),
                input: Some(input_spec(Granularity::PerTensor)),
            },
        ),
        (
            "w4_per_channel_a8_per_token",
            LayerQuant::Qat {
                weight: Some(weight_spec(Granularity::PerChannel)),
                input: Some(input_spec(Granularity::PerToken)),
            },
        ),
        ("ternary", LayerQuant::Ternary { norm: false }),
        ("ternary_subln", LayerQuant::Ternary { norm: true }),
    ];
    let mut group = c.benchmark_group("quant_linear_512x512_b128_fwd_bwd");
    for (name, kind) in kinds {
        let layer = QuantLinear::from_linear(LinearConfig::new(D, D).init(&device), &kind)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        group.bench_function(name, |b| {
            b.iter(|| {
                let y = layer.forward(x.clone());
                let grads = y.sum().backward();
                let g = layer.inner.weight.grad(&grads);
                // Reading one value forces the work.
                black_box(g.map(|g| g.slice([0..1, 0..1]).into_scalar::<f32>()))
            })
        });
    }
    group.finish();
}

fn bench_mask_and_kd(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let w = Tensor::<2>::random([D, D], Distribution::Normal(0.0, 1.0), &device);
    let keep: Tensor<2, Bool> = w.clone().abs().greater_elem(1.0);
    c.bench_function("mask_apply_512x512", |b| {
        b.iter(|| {
            black_box(
                apply_mask(w.clone(), keep.clone())
                    .slice([0..1, 0..1])
                    .into_scalar::<f32>(),
            )
        })
    });
    // What pruning runs after every optimizer step: masks applied to a module's parameters.
    let linear = burn::nn::LinearConfig::new(D, D).init(&Device::flex().autodiff());
    let mut masks = quench_prune::Masks::new();
    let keep: Vec<bool> = (0..D * D).map(|i| i % 10 != 0).collect();
    masks.insert(
        "weight".to_string(),
        quench_prune::Mask::new(&[D, D], keep).expect("mask shape"),
    );
    c.bench_function("mask_module_512x512", |b| {
        b.iter(|| {
            let m = quench_prune::apply_masks_to_module(linear.clone(), &masks).expect("masks fit");
            black_box(m.weight.val().slice([0..1, 0..1]).into_scalar::<f32>())
        })
    });
    let ad = Device::flex().autodiff();
    let student = Tensor::<2>::random([BATCH, 10], Distribution::Normal(0.0, 2.0), &ad);
    let teacher = Tensor::<2>::random([BATCH, 10], Distribution::Normal(0.0, 2.0), &ad);
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..BATCH as i64).map(|i| i % 10).collect(), [BATCH]),
        &ad,
    );
    let kd = match KdLoss::new(4.0, 0.9) {
        Ok(kd) => kd,
        Err(e) => panic!("KD loss: {e}"),
    };
    c.bench_function("kd_loss_128x10_fwd_bwd", |b| {
        b.iter(|| {
            let s = student.clone().require_grad();
            let out = kd.forward(s.clone(), teacher.clone(), labels.clone());
            let grads = out.total.backward();
            black_box(
                s.grad(&grads)
                    .map(|g| g.slice([0..1, 0..1]).into_scalar::<f32>()),
            )
        })
    });
}

criterion_group!(benches, bench_layers, bench_mask_and_kd);
criterion_main!(benches);
