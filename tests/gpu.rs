//! Every technique on the wgpu backend against the same computation on Flex (CPU).
//!
//! Built only with `--features wgpu`; CI runs it on Mesa's software Vulkan (lavapipe, adapter
//! "llvmpipe"). Each test builds identical inputs and modules on both devices (modules are made
//! on Flex and copied with `to_device`, so the initial weights are the same bits) and compares:
//! float values and gradients within a stated tolerance (GPU reductions sum in another order,
//! and WGSL's division and `exp` are not correctly rounded), integer codes and masks exactly.
//! Kernels that lavapipe cannot compile are listed in docs/gpu.md.
#![cfg(feature = "wgpu")]

use std::path::PathBuf;
use std::process::Command;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2dConfig;
use burn::nn::loss::{MseLoss, Reduction};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use quench::distill::KdLoss;
use quench::prune::criteria::{WeightRef, magnitude_mask};
use quench::prune::{Masks, apply_masks_to_module};
use quench::quant::layer::{LayerQuant, QuantConv2d, QuantLinear};
use quench::quant::ternary::{binary_codes, ternary_codes};
use quench::quant::{Estimator, Granularity, QuantSpec, Quantizer};
use serde_json::Value;

/// Float results agree to this (absolute, on values of order 1).
const TOL: f32 = 1e-4;

/// The GPU device under test: `vulkan` (pinned to Vulkan, SPIR-V shaders) in a `vulkan` build,
/// else `wgpu` (wgpu's choice of API, WGSL shaders).
const GPU: &str = if cfg!(feature = "vulkan") {
    "vulkan"
} else {
    "wgpu"
};

fn gpu() -> Device {
    quench::train::device::resolve_device(GPU).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic values in about [-1.5, 1.5) with varied magnitudes, away from exact ties.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (u - 0.5) * 3.0 * (1.0 + ((s >> 20) & 3) as f32) / 2.0
        })
        .collect()
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], d: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), d)
}

fn vals<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_else(|e| panic!("{e:?}"))
}

#[track_caller]
fn assert_close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
    assert_eq!(cpu.len(), gpu.len(), "{what}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(b.is_finite(), "{what}[{i}]: GPU gave {b}");
        let d = (a - b).abs() / a.abs().max(1.0);
        if d > worst.1 {
            worst = (i, d);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: element {} differs: flex {} vs wgpu {} (rel {:e} > {tol:e})",
        worst.0,
        cpu[worst.0],
        gpu[worst.0],
        worst.1
    );
}

/// Runs `f` on Flex and on wgpu (both with autodiff) and compares every named output.
fn both(tol: f32, f: impl Fn(&Device) -> Vec<(&'static str, Vec<f32>)>) {
    let cpu = f(&Device::flex().autodiff());
    let gpu = f(&gpu().autodiff());
    for ((name, a), (_, b)) in cpu.iter().zip(&gpu) {
        assert_close(name, a, b, tol);
    }
}

fn spec(bits: u32, granularity: Granularity) -> QuantSpec {
    QuantSpec {
        bits,
        granularity,
        ..QuantSpec::default()
    }
}

/// Forward (observing) + backward of one quantizer on a `[din, dout]` tensor; values, input
/// gradient, the quantizer's own parameter gradients, and codes/scales/zero-points.
fn quantizer_outputs(
    q: Quantizer,
    x: &[f32],
    shape: [usize; 2],
    d: &Device,
) -> Vec<(&'static str, Vec<f32>)> {
    let xt = tensor(x, shape, d).require_grad();
    let y = q.forward(xt.clone(), true);
    let r = tensor(&data(x.len(), 99), shape, d);
    let grads = (y.clone() * r).sum().backward();
    let gx = xt.grad(&grads).map(vals).unwrap_or_default();
    let (codes, scales, zps) = q.quantize_to_int(xt.clone());
    let (step, alpha) = q.trained_params();
    let grad_of =
        |p: Option<Tensor<1>>| p.and_then(|p| p.grad(&grads)).map(vals).unwrap_or_default();
    let (step_grad, alpha_grad) = (grad_of(step), grad_of(alpha));
    vec![
        ("fake-quant values", vals(y)),
        ("input gradient", gx),
        ("codes", codes.iter().map(|&c| c as f32).collect()),
        ("scales", scales),
        ("zero-points", zps.iter().map(|&z| z as f32).collect()),
        ("LSQ step gradient", step_grad),
        ("PACT alpha gradient", alpha_grad),
    ]
}

#[test]
fn a_wgpu_adapter_is_found_and_named() {
    let lines = quench::train::device::describe_devices();
    eprintln!("{}", lines.join("\n"));
    let wgpu = lines
        .iter()
        .find(|l| l.starts_with("wgpu: adapters found: "))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(!wgpu.contains("adapters found: none"), "{wgpu}");
    gpu();
}

#[test]
fn fake_quant_every_granularity_and_estimator_matches_flex() {
    let (din, dout) = (64, 48);
    let w = data(din * dout, 1);
    let per_group = QuantSpec {
        bits: 3,
        signed: false,
        symmetric: false,
        group_size: Some(16),
        ..spec(3, Granularity::PerGroup)
    };
    let weight_specs = [
        ("w4 per-tensor", spec(4, Granularity::PerTensor)),
        ("w4 per-channel", spec(4, Granularity::PerChannel)),
        ("w3 per-group asym", per_group),
        (
            "w4 per-channel LSQ",
            QuantSpec {
                estimator: Estimator::Lsq,
                ..spec(4, Granularity::PerChannel)
            },
        ),
        (
            "w8 percentile",
            QuantSpec {
                estimator: Estimator::Percentile,
                percentile: 99.0,
                ..spec(8, Granularity::PerTensor)
            },
        ),
    ];
    for (name, s) in weight_specs {
        eprintln!("weight quantizer: {name}");
        both(TOL, |d| {
            let q = Quantizer::for_weight(&s, &[din, dout], 1, d).unwrap_or_else(|e| panic!("{e}"));
            quantizer_outputs(q, &w, [din, dout], d)
        });
    }
    let x = data(32 * 64, 2);
    let act_specs = [
        (
            "a8 per-tensor asym minmax",
            QuantSpec {
                signed: false,
                symmetric: false,
                ..spec(8, Granularity::PerTensor)
            },
        ),
        ("a8 per-token", spec(8, Granularity::PerToken)),
        (
            "a8 LSQ unsigned",
            QuantSpec {
                signed: false,
                estimator: Estimator::Lsq,
                ..spec(8, Granularity::PerTensor)
            },
        ),
        (
            "a4 PACT",
            QuantSpec {
                signed: false,
                estimator: Estimator::Pact,
                pact_init: 1.0,
                ..spec(4, Granularity::PerTensor)
            },
        ),
    ];
    for (name, s) in act_specs {
        eprintln!("activation quantizer: {name}");
        both(TOL, |d| {
            let q = Quantizer::for_activation(&s, d).unwrap_or_else(|e| panic!("{e}"));
            quantizer_outputs(q, &x, [32, 64], d)
        });
    }
}

/// Weights from host data (the same bits on both devices; burn's own initializers draw from each
/// backend's RNG, and lazily on the device a module is moved to), scaled like Kaiming init.
fn param<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    seed: u64,
    d: &Device,
) -> Param<Tensor<D>> {
    let n = shape.iter().product();
    let k = 1.0 / (fan_in as f32).sqrt();
    let v: Vec<f32> = data(n, seed).iter().map(|x| x * k).collect();
    Param::from_tensor(tensor(&v, shape, d))
}

/// A `Linear` `[din, dout]` with host-made weights, on `d`.
fn linear(din: usize, dout: usize, seed: u64, d: &Device) -> Linear {
    let mut l = LinearConfig::new(din, dout).init(d);
    l.weight = param([din, dout], din, seed, d);
    l.bias = Some(param([dout], din, seed + 1, d));
    l
}

#[test]
fn bitlinear_ternary_and_binary_forward_backward_and_codes_match_flex() {
    let x = data(8 * 64, 3);
    for kind in [
        LayerQuant::Ternary { norm: false },
        LayerQuant::Ternary { norm: true },
        LayerQuant::Binary { norm: false },
    ] {
        eprintln!("BitLinear: {kind:?}");
        both(TOL, |d| {
            let layer = QuantLinear::from_linear(linear(64, 32, 20, d), &kind).unwrap();
            let xt = tensor(&x, [8, 64], d).require_grad();
            let y = layer.forward(xt.clone());
            let grads = (y.clone() * tensor(&data(8 * 32, 4), [8, 32], d))
                .sum()
                .backward();
            let w = layer.inner.weight.val();
            let gw = vals(w.grad(&grads).expect("weight gradient"));
            let (codes, scale) = match kind {
                LayerQuant::Binary { .. } => binary_codes(w.clone()),
                _ => ternary_codes(w.clone()),
            };
            let gnorm = layer
                .ops
                .norm
                .as_ref()
                .map(|n| vals(n.gamma.val().grad(&grads).expect("norm gradient")))
                .unwrap_or_default();
            vec![
                ("output", vals(y)),
                ("weight gradient", gw),
                (
                    "input gradient",
                    vals(xt.grad(&grads).expect("input gradient")),
                ),
                ("SubLN gamma gradient", gnorm),
                ("codes", codes.iter().map(|&c| c as f32).collect()),
                ("scale", vec![scale]),
            ]
        });
    }
}

#[test]
fn qat_conv2d_w4a8_forward_backward_matches_flex() {
    let x = data(4 * 3 * 12 * 12, 5);
    let kind = LayerQuant::Qat {
        weight: Some(spec(4, Granularity::PerChannel)),
        input: Some(QuantSpec {
            signed: false,
            symmetric: false,
            ..spec(8, Granularity::PerTensor)
        }),
    };
    both(TOL, |d| {
        let mut conv = Conv2dConfig::new([3, 6], [5, 5]).init(d);
        conv.weight = param([6, 3, 5, 5], 75, 30, d);
        conv.bias = Some(param([6], 75, 31, d));
        let layer = QuantConv2d::from_conv(conv, &kind).unwrap();
        let xt = tensor(&x, [4, 3, 12, 12], d).require_grad();
        let y = layer.forward(xt.clone());
        let n = y.dims().iter().product();
        let grads = (y.clone() * tensor(&data(n, 6), y.dims(), d))
            .sum()
            .backward();
        let w = layer.inner.weight.val();
        vec![
            ("output", vals(y)),
            (
                "weight gradient",
                vals(w.grad(&grads).expect("weight grad")),
            ),
            ("input gradient", vals(xt.grad(&grads).expect("input grad"))),
        ]
    });
}

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

#[test]
fn masks_stay_exactly_zero_after_adam_steps_and_new_masks_match_flex() {
    let x = data(16 * 32, 8);
    let y = data(16 * 8, 9);
    let run = |d: &Device| {
        let mut net = Net {
            a: linear(32, 24, 40, d),
            b: linear(24, 8, 42, d),
        };
        // The mask is computed on this device's weights: it must come out the same.
        let w = vals(net.a.weight.val());
        let mask = magnitude_mask(
            WeightRef::new("a.weight", &w, &[32, 24]).unwrap(),
            0.6,
            None,
        )
        .unwrap();
        let masks = Masks::from([("a.weight".to_string(), mask.clone())]);
        net = apply_masks_to_module(net, &masks).unwrap();
        let mut optim = AdamConfig::new().init();
        for _ in 0..20 {
            let out = net.b.forward(net.a.forward(tensor(&x, [16, 32], d)));
            let loss = MseLoss::new().forward(out, tensor(&y, [16, 8], d), Reduction::Mean);
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optim.step(0.05, net, grads);
            net = apply_masks_to_module(net, &masks).unwrap();
        }
        let w = vals(net.a.weight.val());
        for (i, (v, keep)) in w.iter().zip(mask.keep()).enumerate() {
            if !keep {
                assert_eq!(v.to_bits(), 0, "pruned weight {i} is {v} after Adam");
            }
        }
        // The next schedule step's mask, from the trained weights.
        let next = magnitude_mask(
            WeightRef::new("a.weight", &w, &[32, 24]).unwrap(),
            0.8,
            Some(&mask),
        )
        .unwrap();
        (mask, next, w)
    };
    let (m_cpu, next_cpu, w_cpu) = run(&Device::flex().autodiff());
    let (m_gpu, next_gpu, w_gpu) = run(&gpu().autodiff());
    assert_eq!(m_cpu, m_gpu, "initial masks differ");
    assert_eq!(next_cpu, next_gpu, "masks after 20 Adam steps differ");
    assert_close("weights after 20 masked Adam steps", &w_cpu, &w_gpu, TOL);
}

#[test]
fn kd_loss_and_its_gradient_match_flex() {
    let s = data(32 * 10, 12);
    let t: Vec<f32> = data(32 * 10, 13).iter().map(|v| v * 4.0).collect();
    let targets: Vec<i64> = (0..32).map(|i| (i * 7 % 10) as i64).collect();
    both(TOL, |d| {
        let kd = KdLoss::new(4.0, 0.7).unwrap();
        let st = tensor(&s, [32, 10], d).require_grad();
        let tt = tensor(&t, [32, 10], d);
        let y = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [32]), d);
        let out = kd.forward(st.clone(), tt, y);
        let grads = out.total.clone().backward();
        vec![
            ("total", vals(out.total)),
            ("soft (KL·T²)", vals(out.soft)),
            ("hard (CE)", vals(out.hard)),
            (
                "student-logit gradient",
                vals(st.grad(&grads).expect("grad")),
            ),
        ]
    });
}

/// The checkout's root, read when the test runs (cargo sets it): `env!` bakes in the path of
/// the checkout that compiled the test, stale when a target dir is reused by another clone.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from)
}

/// `quench run <recipe> --device <device>` for one epoch (469 steps), the summary.
fn run_on(recipe: &str, device: &str, sets: &[&str], out: &std::path::Path) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quench"));
    cmd.current_dir(root())
        .args([
            "run",
            recipe,
            "--device",
            device,
            "--progress",
            "quiet",
            "--out",
        ])
        .arg(out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let o = cmd.output().unwrap_or_else(|e| panic!("spawn quench: {e}"));
    assert!(
        o.status.success(),
        "quench run {recipe} --device {device} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(out.join("summary.json")).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn one_epoch_of_w4a8_qat_on_wgpu_lands_in_the_flex_accuracy_band() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let recipe = "experiments/fashion_mlp_w4a8.toml";
    let sets = ["train.epochs=1", "log.every_steps=1000"];
    let cpu = run_on(recipe, "flex", &sets, &tmp.path().join("flex"));
    let gpu = run_on(recipe, GPU, &sets, &tmp.path().join("gpu"));
    let (a, b) = (
        cpu["test_accuracy"].as_f64().unwrap_or(0.0),
        gpu["test_accuracy"].as_f64().unwrap_or(0.0),
    );
    eprintln!(
        "one epoch W4A8 MLP: flex {a:.4} ({} samples/s), {GPU} {b:.4} ({} samples/s)",
        cpu["train_samples_per_sec"], gpu["train_samples_per_sec"]
    );
    assert!(a > 0.80, "flex accuracy {a}");
    assert!((a - b).abs() < 0.015, "flex {a} vs wgpu {b}");
    assert_eq!(gpu["device"], GPU, "{gpu}");
}
