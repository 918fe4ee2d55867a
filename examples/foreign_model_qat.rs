//! QAT on a burn model quench did not define, in one call: `quench::quant::reparam::prepare`.
//!
//!     cargo run --release --example foreign_model_qat
//!
//! A user's two-layer network learns a two-class spiral in float, is prepared for W4
//! (per-output-channel) fake quantization, fine-tuned with the quantizer in the loop, and
//! materialized back into a plain burn model whose weights are the 4-bit values.

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use quench::quant::reparam::{QuantPlan, materialize, prepare};
use quench::quant::spec::{Granularity, QuantSpec};

/// The user's model: nothing quench-specific in it.
#[derive(Module, Debug)]
struct MyNet {
    a: Linear,
    b: Linear,
    c: Linear,
    act: Relu,
}

impl MyNet {
    fn new(device: &Device) -> Self {
        Self {
            a: LinearConfig::new(2, 64).init(device),
            b: LinearConfig::new(64, 64).init(device),
            c: LinearConfig::new(64, 2).init(device),
            act: Relu::new(),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = self.act.forward(self.a.forward(x));
        let x = self.act.forward(self.b.forward(x));
        self.c.forward(x)
    }
}

/// Two interleaved spirals, 1000 points.
fn spiral(device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let n = 500;
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for class in 0..2 {
        for i in 0..n {
            let t = i as f32 / n as f32 * 3.0 * std::f32::consts::PI;
            let r = t / (3.0 * std::f32::consts::PI) * 2.0;
            let phase = class as f32 * std::f32::consts::PI;
            xs.push(r * (t + phase).cos());
            xs.push(r * (t + phase).sin());
            ys.push(class as i64);
        }
    }
    (
        Tensor::from_data(TensorData::new(xs, [2 * n, 2]), device),
        Tensor::from_data(TensorData::new(ys, [2 * n]), device),
    )
}

fn train(model: MyNet, steps: usize, x: &Tensor<2>, y: &Tensor<1, Int>) -> (MyNet, f32) {
    let device = x.device();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut model = model;
    let mut last = f32::NAN;
    for _ in 0..steps {
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        last = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(3e-3, model, grads);
    }
    (model, last)
}

fn eval(model: &MyNet, x: &Tensor<2>, y: &Tensor<1, Int>) -> (f32, f32) {
    let loss_fn = CrossEntropyLossConfig::new().init(&x.device());
    let logits = model.forward(x.clone());
    let loss = loss_fn
        .forward(logits.clone(), y.clone())
        .into_scalar::<f32>();
    let acc = logits
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(y.clone())
        .int()
        .float()
        .mean()
        .into_scalar::<f32>();
    (loss, acc)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::flex().autodiff();
    device.seed(0);
    let (x, y) = spiral(&device);

    let (model, _) = train(MyNet::new(&device), 600, &x, &y);
    let (l, a) = eval(
        &model.clone().valid(),
        &x.clone().without_autodiff(),
        &y.clone().without_autodiff(),
    );
    println!("float:                 loss {l:.4}  accuracy {a:.3}");

    let spec = QuantSpec {
        bits: 4,
        granularity: Granularity::PerChannel,
        ..QuantSpec::default()
    };
    let plan = QuantPlan::new().weights("*.weight", spec)?;
    let model = prepare(model, &plan)?;
    let (l, a) = eval(
        &model.clone().valid(),
        &x.clone().without_autodiff(),
        &y.clone().without_autodiff(),
    );
    println!("W4 right after prepare: loss {l:.4}  accuracy {a:.3}");

    let (model, _) = train(model, 300, &x, &y);
    let (l, a) = eval(
        &model.clone().valid(),
        &x.clone().without_autodiff(),
        &y.clone().without_autodiff(),
    );
    println!("W4 after QAT:          loss {l:.4}  accuracy {a:.3}");

    let plain = materialize(model);
    let (lp, ap) = eval(
        &plain,
        &x.clone().without_autodiff(),
        &y.clone().without_autodiff(),
    );
    println!("materialized (plain burn model, 4-bit values): loss {lp:.4}  accuracy {ap:.3}");
    let w = plain
        .b
        .weight
        .val()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()?;
    let mut col: Vec<i64> = (0..64).map(|r| (w[r * 64] * 1e6).round() as i64).collect();
    col.sort();
    col.dedup();
    println!(
        "distinct values in one output column of b.weight: {} (≤ 16 for 4 bits)",
        col.len()
    );
    Ok(())
}
