//! Reference models built so that each Linear/Conv2d is addressable by a stable layer name
//! (`fc1`, `conv2`, …) — later techniques select layers by name pattern from a recipe.

pub mod classifier;
pub mod gpt;
pub mod lenet;
pub mod mlp;
pub mod names;

pub use classifier::{Classifier, ClassifierConfig, ExportedLayer, ModelConfig, ModelError};
pub use gpt::{CharGpt, GptConfig};
pub use lenet::{ConvNet, ConvNetConfig, LeNet5};
pub use mlp::{Mlp, MlpConfig};
pub use names::{LayerInfo, LayerKind, LayerPlan, select_layers};
pub use quench_quant::layer::LayerQuant;
