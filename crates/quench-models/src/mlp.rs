//! Multi-layer perceptron with configurable hidden sizes; layers are named `fc1..fcN`.

use burn::nn::{LinearConfig, Relu};
use burn::prelude::*;
use quench_quant::layer::QuantLinear;

use crate::ModelError;
use crate::names::{LayerInfo, LayerKind, LayerPlan};

/// Shape of an MLP: `input → hidden[0] → … → classes`, ReLU between layers.
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// Input features (784 for 28×28 images).
    pub input: usize,
    /// Hidden layer widths, in order (e.g. `[512, 512]`).
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
}

/// The MLP. `layers[i]` is the layer recipes call `fc{i+1}`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// The fully connected layers, first to last.
    pub layers: Vec<QuantLinear>,
    activation: Relu,
}

/// Fully connected layers `dims[0] → dims[1] → …`, named `fc1`, `fc2`, …, each built as `plan`
/// says (shared by the MLP and the conv nets' heads).
pub(crate) fn linear_stack(
    dims: &[usize],
    plan: &LayerPlan,
    device: &Device,
) -> Result<Vec<QuantLinear>, ModelError> {
    dims.windows(2)
        .enumerate()
        .map(|(i, w)| {
            let name = format!("fc{}", i + 1);
            QuantLinear::from_linear(LinearConfig::new(w[0], w[1]).init(device), &plan.get(&name))
                .map_err(|e| ModelError::Quant(name, e))
        })
        .collect()
}

impl MlpConfig {
    /// Builds the MLP on `device` with burn's default (Kaiming-uniform) initialisation; each
    /// layer is float, fake-quantized, ternary or binary as `plan` says for its name.
    pub fn init(&self, plan: &LayerPlan, device: &Device) -> Result<Mlp, ModelError> {
        let mut dims = vec![self.input];
        dims.extend(&self.hidden);
        dims.push(self.classes);
        let layers = linear_stack(&dims, plan, device)?;
        Ok(Mlp {
            layers,
            activation: Relu::new(),
        })
    }

    /// The named weight layers this config builds (without building it).
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let mut dims = vec![self.input];
        dims.extend(&self.hidden);
        dims.push(self.classes);
        dims.windows(2)
            .enumerate()
            .map(|(i, w)| {
                LayerInfo::new(
                    format!("fc{}", i + 1),
                    format!("layers.{i}"),
                    LayerKind::Linear,
                    vec![w[0], w[1]],
                )
            })
            .collect()
    }
}

impl Mlp {
    /// Logits `[batch, classes]` from flattened inputs `[batch, input]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len() - 1;
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i != last {
                x = self.activation.forward(x);
            }
        }
        x
    }

    /// Name of the first layer whose output (on `x`) holds NaN or ±inf, for divergence reports.
    pub fn first_nonfinite_layer(&self, x: Tensor<2>) -> Option<String> {
        let last = self.layers.len() - 1;
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if crate::classifier::has_nonfinite(&x) {
                return Some(format!("fc{}", i + 1));
            }
            if i != last {
                x = self.activation.forward(x);
            }
        }
        None
    }

    /// The named weight layers (`fc1` is `layers.0`, …).
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                LayerInfo::new(
                    format!("fc{}", i + 1),
                    format!("layers.{i}"),
                    LayerKind::Linear,
                    l.inner.weight.val().dims().to_vec(),
                )
            })
            .collect()
    }
}
