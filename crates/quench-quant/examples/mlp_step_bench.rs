//! Training-step time of the fashion_mlp recipes' model — MLP 784-512-512-10 of `QuantLinear`s,
//! batch 128, cross-entropy, Adam — fp32 vs W4A8 (weights int4 per-channel minmax, inputs int8
//! per-tensor moving-average asymmetric), on random data, with the two models' steps
//! interleaved in one process so that load from other processes hits both alike.
//!
//! `cargo run -p quench-quant --example mlp_step_bench -- [steps] [hidden]`
//! (defaults: 200 steps, hidden 512). Prints the median and best step time of each model and
//! the throughput W4A8 loses against fp32.

use std::time::{Duration, Instant};

use burn::module::Module;
use burn::nn::LinearConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor};
use quench_quant::layer::{LayerQuant, QuantLinear};
use quench_quant::{Estimator, Granularity, QuantSpec};

#[derive(Module, Debug)]
struct Mlp {
    layers: Vec<QuantLinear>,
}

impl Mlp {
    fn new(dims: &[usize], kind: &LayerQuant, device: &Device) -> Self {
        let layers = dims
            .windows(2)
            .map(|w| {
                let inner = LinearConfig::new(w[0], w[1]).init(device);
                QuantLinear::from_linear(inner, kind).expect("valid layer")
            })
            .collect();
        Self { layers }
    }

    fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }
}

fn w4a8() -> LayerQuant {
    LayerQuant::Qat {
        weight: Some(QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            estimator: Estimator::MinMax,
            ..QuantSpec::default()
        }),
        input: Some(QuantSpec {
            bits: 8,
            granularity: Granularity::PerTensor,
            estimator: Estimator::MovingAverage,
            momentum: 0.01,
            symmetric: false,
            ..QuantSpec::default()
        }),
    }
}

struct Run {
    name: &'static str,
    model: Option<Mlp>,
    optim: ModuleOptimizer,
    times: Vec<Duration>,
}

impl Run {
    fn step(&mut self, x: &Tensor<2>, y: &Tensor<1, Int>) {
        let start = Instant::now();
        let model = self.model.take().expect("model");
        let logits = model.forward(x.clone());
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, y.clone());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = self.optim.step(1e-3, model, grads);
        // the optimizer's output is lazy on no backend here, but read one value to be sure
        let _ = model.layers[0]
            .inner
            .weight
            .val()
            .slice([0..1, 0..1])
            .into_scalar::<f32>();
        self.model = Some(model);
        self.times.push(start.elapsed());
    }

    fn stats(&self, warmup: usize) -> (f64, f64) {
        let mut t: Vec<f64> = self.times[warmup..]
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        t.sort_by(f64::total_cmp);
        (t[t.len() / 2], t[0])
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric argument"))
        .collect();
    let steps = args.first().copied().unwrap_or(200);
    let hidden = args.get(1).copied().unwrap_or(512);
    // Put glibc's allocator in the state of a training process (whose dataset buffers raised
    // its mmap threshold to the 32 MiB cap): freed tensor buffers are then reused instead of
    // being returned to the OS and faulted in again on every step, which would otherwise
    // dominate this small process and penalize the model that allocates more.
    drop(std::hint::black_box(vec![1u8; 30 << 20]));
    let device = Device::flex().autodiff();
    device.seed(0);
    let dims = [784, hidden, hidden, 10];
    let batch = 128;
    let x = Tensor::<2>::random([batch, 784], Distribution::Uniform(0.0, 1.0), &device);
    let y = Tensor::<1, Int>::random([batch], Distribution::Uniform(0.0, 10.0), &device);
    let mut runs = [("fp32", LayerQuant::Float), ("w4a8", w4a8())].map(|(name, kind)| Run {
        name,
        model: Some(Mlp::new(&dims, &kind, &device)),
        optim: AdamConfig::new().init(),
        times: Vec::with_capacity(steps),
    });
    // `ONLY=fp32|w4a8` steps one model only (for profiling); its stats are then the only ones.
    let only = std::env::var("ONLY").ok();
    for _ in 0..steps {
        for run in &mut runs {
            if only.as_deref().is_none_or(|o| o == run.name) {
                run.step(&x, &y);
            }
        }
    }
    if let Some(only) = only {
        let run = runs
            .iter()
            .find(|r| r.name == only)
            .expect("ONLY is fp32 or w4a8");
        let (median, best) = run.stats((steps / 10).max(1));
        println!("{only}: median {median:7.2} ms/step, best {best:7.2} ms");
        return;
    }
    let warmup = (steps / 10).max(1);
    println!("MLP {dims:?}, batch {batch}, {steps} interleaved steps (first {warmup} skipped)");
    for run in &runs {
        let (median, best) = run.stats(warmup);
        println!(
            "{:>5}: median {median:7.2} ms/step ({:6.0} samples/s), best {best:7.2} ms",
            run.name,
            batch as f64 / median * 1e3,
        );
    }
    let (f, _) = runs[0].stats(warmup);
    let (q, _) = runs[1].stats(warmup);
    println!(
        "fake quant costs {:.1} % of fp32 throughput (step time +{:.1} %)",
        (1.0 - f / q) * 100.0,
        (q / f - 1.0) * 100.0
    );
}
