//! The hot pieces of a quench training step, each against its float baseline in one run:
//! forward + backward of a 512×512 `QuantLinear` on a batch of 128 — float, W4A8 with weight
//! scales per tensor / per channel / per group of 128, A8 per token, BitNet ternary (with and
//! without SubLN) — plus mask application to a 512×512 weight and the KD loss
//! (T = 4, α = 0.9) forward + backward on 128×10 logits; and the minimal reproduction of the
//! conv-net bottleneck: LeNet-5's two convolutions and a 2×2 max-pool, forward + backward at
//! batch 128, with burn's `conv2d` / `max_pool2d` against quench's host convolution
//! (`quench_quant::flexops::conv2d`, a custom autodiff op) / `max_pool2x2` (`conv_*`,
//! `pool_*`).
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

/// burn's `conv2d` / `max_pool2d` against quench's host convolution and arg-max pool, on
/// LeNet-5's shapes (batch 128), forward + backward with the input tracked as in conv2.
fn bench_conv(c: &mut Criterion) {
    use burn::tensor::module::{conv2d, max_pool2d};
    use burn::tensor::ops::{ConvOptions, MaxPoolOptions};
    use quench_quant::conv::max_pool2x2;
    use quench_quant::flexops::conv2d as host_conv2d;

    let ad = Device::flex().autodiff();
    ad.seed(0);
    // conv1 sees the image batch (no input gradient), conv2 a tracked activation.
    let shapes = [
        ("conv1", [BATCH, 1, 28, 28], [6, 1, 5, 5], 2, false),
        ("conv2", [BATCH, 6, 14, 14], [16, 6, 5, 5], 0, true),
    ];
    for (name, xd, wd, pad, input_grad) in shapes {
        let x = Tensor::<4>::random(xd, Distribution::Normal(0.0, 1.0), &ad);
        let w = Tensor::<4>::random(wd, Distribution::Normal(0.0, 0.2), &ad);
        let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
        for fast in [false, true] {
            let label = format!("{name}_{}_fwd_bwd", if fast { "quench" } else { "burn" });
            c.bench_function(&label, |b| {
                b.iter(|| {
                    let x = if input_grad {
                        x.clone().require_grad()
                    } else {
                        x.clone()
                    };
                    let w = w.clone().require_grad();
                    let y = if fast {
                        host_conv2d(x.clone(), w.clone(), None, options.clone())
                    } else {
                        conv2d(x.clone(), w.clone(), None, options.clone())
                    };
                    let grads = y.sum().backward();
                    black_box(
                        w.grad(&grads)
                            .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>()),
                    )
                })
            });
        }
    }
    // A frozen teacher's forward (no autodiff at all): LeNet-5's convolutions and those of the
    // wider teacher CNN (channels [32, 64], 3×3, padded).
    let plain = Device::flex();
    let teacher_shapes = [
        ("conv1", [BATCH, 1, 28, 28], [6, 1, 5, 5], 2),
        ("conv2", [BATCH, 6, 14, 14], [16, 6, 5, 5], 0),
        ("cnn_conv1", [BATCH, 1, 28, 28], [32, 1, 3, 3], 1),
        ("cnn_conv2", [BATCH, 32, 14, 14], [64, 32, 3, 3], 1),
    ];
    for (name, xd, wd, pad) in teacher_shapes {
        let x = Tensor::<4>::random(xd, Distribution::Normal(0.0, 1.0), &plain);
        let w = Tensor::<4>::random(wd, Distribution::Normal(0.0, 0.2), &plain);
        let options = ConvOptions::new([1, 1], [pad, pad], [1, 1], 1);
        for fast in [false, true] {
            let label = format!("{name}_{}_fwd_only", if fast { "quench" } else { "burn" });
            c.bench_function(&label, |b| {
                b.iter(|| {
                    let y = if fast {
                        host_conv2d(x.clone(), w.clone(), None, options.clone())
                    } else {
                        conv2d(x.clone(), w.clone(), None, options.clone())
                    };
                    black_box(y.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>())
                })
            });
        }
    }
    let x = Tensor::<4>::random([BATCH, 6, 28, 28], Distribution::Normal(0.0, 1.0), &ad);
    for fast in [false, true] {
        let label = format!("pool_{}_fwd_bwd", if fast { "quench" } else { "burn" });
        c.bench_function(&label, |b| {
            b.iter(|| {
                let x = x.clone().require_grad();
                let y = if fast {
                    max_pool2x2(x.clone())
                } else {
                    max_pool2d(x.clone(), MaxPoolOptions::new([2, 2]).with_stride([2, 2]))
                };
                let grads = y.sum().backward();
                black_box(
                    x.grad(&grads)
                        .map(|g| g.slice([0..1, 0..1, 0..1, 0..1]).into_scalar::<f32>()),
                )
            })
        });
    }
}

criterion_group!(benches, bench_layers, bench_mask_and_kd, bench_conv);
criterion_main!(benches);
