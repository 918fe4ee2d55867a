//! LeNet-5 for 28×28 single-channel images (padded first conv, as in the common PyTorch port),
//! and a wider CNN of the same shape used as a distillation teacher.

use burn::nn::conv::Conv2dConfig;
use burn::nn::{PaddingConfig2d, Relu};
use burn::prelude::*;
use quench_quant::conv::{max_pool2x2, max_pool2x2_relu};
use quench_quant::layer::{QuantConv2d, QuantLinear};

use crate::ModelError;
use crate::names::{LayerInfo, LayerKind, LayerPlan};

/// Two conv+pool stages and three fully connected layers. LeNet-5 is
/// `channels = [6, 16], kernel = 5, fc = [120, 84]`; the teacher CNN is
/// `channels = [32, 64], kernel = 3, fc = [256]`… (any sizes).
#[derive(Config, Debug)]
pub struct ConvNetConfig {
    /// Output channels of conv1 and conv2.
    pub channels: [usize; 2],
    /// Square kernel size of both convolutions.
    pub kernel: usize,
    /// Hidden widths of the fully connected layers after the convolutions.
    pub fc: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

/// The conv net; layer names are `conv1`, `conv2`, `fc1`…`fcN`.
#[derive(Module, Debug)]
pub struct ConvNet {
    /// 1 → channels[0]; LeNet-5 pads it so 28×28 stays 28×28.
    pub conv1: QuantConv2d,
    /// channels[0] → channels[1].
    pub conv2: QuantConv2d,
    /// Fully connected layers, first to last.
    pub fcs: Vec<QuantLinear>,
    activation: Relu,
    /// Flattened features after the second pool.
    flat: usize,
}

/// The LeNet-5 model (conv1 1→6 5×5 pad 2, conv2 6→16 5×5, fc 400→120→84→classes).
pub type LeNet5 = ConvNet;

impl ConvNetConfig {
    /// LeNet-5.
    pub fn lenet5(classes: usize) -> Self {
        Self::new([6, 16], 5, vec![120, 84], classes)
    }

    /// Padding of conv1 ("same") and conv2: LeNet-5 pads only conv1; 3×3 nets pad both.
    fn paddings(&self) -> (usize, usize) {
        let same = self.kernel / 2;
        if self.kernel == 5 {
            (same, 0)
        } else {
            (same, same)
        }
    }

    /// Features after conv2 + pool for 28×28 input.
    fn flat(&self) -> usize {
        let (p1, p2) = self.paddings();
        // Convolution output size, then a 2×2 pool (floor).
        let conv1 = 28 + 2 * p1 + 1 - self.kernel;
        let s1 = conv1 / 2;
        let conv2 = s1 + 2 * p2 + 1 - self.kernel;
        let s2 = conv2 / 2;
        self.channels[1] * s2 * s2
    }

    fn fc_dims(&self) -> Vec<usize> {
        let mut dims = vec![self.flat()];
        dims.extend(&self.fc);
        dims.push(self.classes);
        dims
    }

    /// Checks the sizes (kernel odd and ≤ 7, channels > 0).
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.kernel.is_multiple_of(2) || !(1..=7).contains(&self.kernel) {
            return Err(ModelError::Invalid(format!(
                "model.kernel = {}: must be odd and at most 7",
                self.kernel
            )));
        }
        if self.channels.contains(&0) || self.fc.contains(&0) {
            return Err(ModelError::Invalid(
                "model.channels and model.fc must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// The named weight layers this config builds.
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let k = self.kernel;
        let mut v = vec![
            LayerInfo::new(
                "conv1".into(),
                "conv1".into(),
                LayerKind::Conv2d,
                vec![self.channels[0], 1, k, k],
            ),
            LayerInfo::new(
                "conv2".into(),
                "conv2".into(),
                LayerKind::Conv2d,
                vec![self.channels[1], self.channels[0], k, k],
            ),
        ];
        for (i, w) in self.fc_dims().windows(2).enumerate() {
            v.push(LayerInfo::new(
                format!("fc{}", i + 1),
                format!("fcs.{i}"),
                LayerKind::Linear,
                vec![w[0], w[1]],
            ));
        }
        v
    }

    /// Builds the net on `device`, each layer as `plan` says.
    pub fn init(&self, plan: &LayerPlan, device: &Device) -> Result<ConvNet, ModelError> {
        let (p1, p2) = self.paddings();
        let k = self.kernel;
        let conv = |name: &str, c: [usize; 2], p: usize| {
            QuantConv2d::from_conv(
                Conv2dConfig::new(c, [k, k])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .init(device),
                &plan.get(name),
            )
            .map_err(|e| ModelError::Quant(name.to_string(), e))
        };
        let fcs = crate::mlp::linear_stack(&self.fc_dims(), plan, device)?;
        Ok(ConvNet {
            conv1: conv("conv1", [1, self.channels[0]], p1)?,
            conv2: conv("conv2", self.channels, p2)?,
            fcs,
            activation: Relu::new(),
            flat: self.flat(),
        })
    }
}

impl ConvNet {
    /// Logits `[batch, classes]` from flattened 28×28 images `[batch, 784]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let [batch, _] = x.dims();
        let x = x.reshape([batch, 1, 28, 28]);
        // ReLU after pooling is the same function with the same gradient as before it (max
        // commutes with a monotone map, and both give zero gradient where the window's maximum
        // is ≤ 0); fused with the pool it is one pass over the conv output and one backward.
        let x = max_pool2x2_relu(self.conv1.forward(x));
        let x = max_pool2x2_relu(self.conv2.forward(x));
        let mut x = x.reshape([batch, self.flat]);
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            x = fc.forward(x);
            if i != last {
                x = self.activation.forward(x);
            }
        }
        x
    }

    /// Name of the first layer whose output (on `x`) holds NaN or ±inf, for divergence reports.
    pub fn first_nonfinite_layer(&self, x: Tensor<2>) -> Option<String> {
        use crate::classifier::has_nonfinite;
        let names: Vec<String> = self.layer_infos().into_iter().map(|i| i.name).collect();
        let [batch, _] = x.dims();
        let x = self.conv1.forward(x.reshape([batch, 1, 28, 28]));
        if has_nonfinite(&x) {
            return names.first().cloned();
        }
        let x = self.conv2.forward(self.activation.forward(max_pool2x2(x)));
        if has_nonfinite(&x) {
            return names.get(1).cloned();
        }
        let mut x = self
            .activation
            .forward(max_pool2x2(x))
            .reshape([batch, self.flat]);
        let last = self.fcs.len() - 1;
        for (i, fc) in self.fcs.iter().enumerate() {
            x = fc.forward(x);
            if has_nonfinite(&x) {
                return names.get(2 + i).cloned();
            }
            if i != last {
                x = self.activation.forward(x);
            }
        }
        None
    }

    /// The named weight layers, in forward order.
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let mut v = vec![
            LayerInfo::new(
                "conv1".into(),
                "conv1".into(),
                LayerKind::Conv2d,
                self.conv1.inner.weight.val().dims().to_vec(),
            ),
            LayerInfo::new(
                "conv2".into(),
                "conv2".into(),
                LayerKind::Conv2d,
                self.conv2.inner.weight.val().dims().to_vec(),
            ),
        ];
        for (i, fc) in self.fcs.iter().enumerate() {
            v.push(LayerInfo::new(
                format!("fc{}", i + 1),
                format!("fcs.{i}"),
                LayerKind::Linear,
                fc.inner.weight.val().dims().to_vec(),
            ));
        }
        v
    }
}
