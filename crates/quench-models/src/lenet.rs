//! LeNet-5 for 28×28 single-channel images (padded first conv, as in the common PyTorch port).

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

use crate::names::{LayerInfo, LayerKind};

/// LeNet-5: conv1 (1→6, 5×5, pad 2) → pool → conv2 (6→16, 5×5) → pool → fc1 400→120 → fc2 →84 → fc3.
#[derive(Config, Debug)]
pub struct LeNet5Config {
    /// Output classes.
    #[config(default = 10)]
    pub classes: usize,
}

/// The LeNet-5 model; field names are the layer names recipes use.
#[derive(Module, Debug)]
pub struct LeNet5 {
    /// 1→6 channels, 5×5, padding 2 (keeps 28×28).
    pub conv1: Conv2d,
    /// 6→16 channels, 5×5.
    pub conv2: Conv2d,
    /// 16·5·5 → 120.
    pub fc1: Linear,
    /// 120 → 84.
    pub fc2: Linear,
    /// 84 → classes.
    pub fc3: Linear,
    pool: MaxPool2d,
    activation: Relu,
}

impl LeNet5Config {
    /// Builds LeNet-5 on `device`.
    pub fn init(&self, device: &Device) -> LeNet5 {
        LeNet5 {
            conv1: Conv2dConfig::new([1, 6], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(device),
            conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
            fc1: LinearConfig::new(16 * 5 * 5, 120).init(device),
            fc2: LinearConfig::new(120, 84).init(device),
            fc3: LinearConfig::new(84, self.classes).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            activation: Relu::new(),
        }
    }
}

impl LeNet5 {
    /// Logits `[batch, classes]` from flattened 28×28 images `[batch, 784]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let x = x.reshape([batch, 1, 28, 28]);
        let x = self
            .pool
            .forward(self.activation.forward(self.conv1.forward(x)));
        let x = self
            .pool
            .forward(self.activation.forward(self.conv2.forward(x)));
        let x = x.reshape([batch, 16 * 5 * 5]);
        let x = self.activation.forward(self.fc1.forward(x));
        let x = self.activation.forward(self.fc2.forward(x));
        self.fc3.forward(x)
    }

    /// The named weight layers, in forward order.
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let conv = |name: &str, c: &Conv2d| LayerInfo {
            name: name.to_string(),
            path: name.to_string(),
            kind: LayerKind::Conv2d,
            weight_shape: c.weight.val().dims().to_vec(),
        };
        let fc = |name: &str, l: &Linear| LayerInfo {
            name: name.to_string(),
            path: name.to_string(),
            kind: LayerKind::Linear,
            weight_shape: l.weight.val().dims().to_vec(),
        };
        vec![
            conv("conv1", &self.conv1),
            conv("conv2", &self.conv2),
            fc("fc1", &self.fc1),
            fc("fc2", &self.fc2),
            fc("fc3", &self.fc3),
        ]
    }
}
