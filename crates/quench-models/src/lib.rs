//! Reference models built so that each Linear/Conv2d is addressable by a stable layer name
//! (`fc1`, `conv2`, …) — later techniques select layers by name pattern from a recipe.

pub mod classifier;
pub mod lenet;
pub mod mlp;
pub mod names;

pub use classifier::{Classifier, ClassifierConfig, ModelError};
pub use lenet::{LeNet5, LeNet5Config};
pub use mlp::{Mlp, MlpConfig};
pub use names::{LayerInfo, LayerKind, select_layers};
