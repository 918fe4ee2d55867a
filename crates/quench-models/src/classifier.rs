//! The image classifiers a recipe can name, behind one module type the trainer drives.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::lenet::{LeNet5, LeNet5Config};
use crate::mlp::{Mlp, MlpConfig};
use crate::names::LayerInfo;

/// Errors from building or addressing models.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A layer-name pattern matched no layer.
    #[error("layer pattern `{pattern}` matches no layer; the model's layers are: {available}")]
    NoSuchLayer {
        /// The pattern as written in the recipe.
        pattern: String,
        /// Comma-separated layer names of the model.
        available: String,
    },
    /// A layer-name pattern is not valid glob syntax.
    #[error("invalid layer pattern `{pattern}`: {detail}")]
    BadPattern {
        /// The pattern as written.
        pattern: String,
        /// What the glob parser said.
        detail: String,
    },
    /// The model description is invalid.
    #[error("invalid model: {0}")]
    Invalid(String),
}

/// Which classifier to build, as a recipe's `[model]` table says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClassifierConfig {
    /// `arch = "mlp"`, `hidden = [512, 512]`.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
    },
    /// `arch = "lenet5"`.
    Lenet5,
}

/// A built classifier (any reference architecture) for 28×28 grey images.
// One model value per run: the size difference between variants costs nothing, and boxing
// would change the module's record layout.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    /// An MLP.
    Mlp(Mlp),
    /// LeNet-5.
    LeNet5(LeNet5),
}

impl ClassifierConfig {
    /// Checks sizes; `input` is pixels per image, `classes` the label count.
    pub fn validate(&self, input: usize, classes: usize) -> Result<(), ModelError> {
        if classes < 2 {
            return Err(ModelError::Invalid(format!(
                "classes = {classes}, need ≥ 2"
            )));
        }
        match self {
            Self::Mlp { hidden } => {
                if let Some(i) = hidden.iter().position(|&h| h == 0) {
                    return Err(ModelError::Invalid(format!(
                        "model.hidden[{i}] = 0: every hidden layer needs at least one unit"
                    )));
                }
                Ok(())
            }
            Self::Lenet5 if input != 28 * 28 => Err(ModelError::Invalid(format!(
                "lenet5 takes 28×28 images, the data has {input} pixels per image"
            ))),
            Self::Lenet5 => Ok(()),
        }
    }

    /// Builds the classifier on `device`.
    pub fn init(&self, input: usize, classes: usize, device: &Device) -> Classifier {
        match self {
            Self::Mlp { hidden } => {
                Classifier::Mlp(MlpConfig::new(input, hidden.clone(), classes).init(device))
            }
            Self::Lenet5 => {
                Classifier::LeNet5(LeNet5Config::new().with_classes(classes).init(device))
            }
        }
    }

    /// A short human-readable name (`mlp 784-512-512-10`, `lenet5`).
    pub fn describe(&self, input: usize, classes: usize) -> String {
        match self {
            Self::Mlp { hidden } => {
                let mut dims = vec![input.to_string()];
                dims.extend(hidden.iter().map(|h| h.to_string()));
                dims.push(classes.to_string());
                format!("mlp {}", dims.join("-"))
            }
            Self::Lenet5 => "lenet5".to_string(),
        }
    }
}

impl Classifier {
    /// Logits `[batch, classes]` from flattened images `[batch, pixels]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward(x),
            Self::LeNet5(m) => m.forward(x),
        }
    }

    /// The named weight layers of the model, in forward order; `path` is the full module
    /// path inside this enum (`Mlp.layers.0`, `LeNet5.conv1`), as records and visitors see it.
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let (variant, mut infos) = match self {
            Self::Mlp(m) => ("Mlp", m.layer_infos()),
            Self::LeNet5(m) => ("LeNet5", m.layer_infos()),
        };
        for info in &mut infos {
            info.path = format!("{variant}.{}", info.path);
        }
        infos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_shapes_names_and_params() {
        let device = Device::flex();
        let cfg = ClassifierConfig::Mlp {
            hidden: vec![512, 512],
        };
        let m = cfg.init(784, 10, &device);
        let names: Vec<_> = m.layer_infos().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["fc1", "fc2", "fc3"]);
        // 784·512+512 + 512·512+512 + 512·10+10
        assert_eq!(
            m.num_params(),
            784 * 512 + 512 + 512 * 512 + 512 + 5120 + 10
        );
        let y = m.forward(Tensor::zeros([3, 784], &device));
        assert_eq!(y.dims(), [3, 10]);
        assert_eq!(cfg.describe(784, 10), "mlp 784-512-512-10");
    }

    #[test]
    fn lenet5_shapes_names_and_params() {
        let device = Device::flex();
        let m = ClassifierConfig::Lenet5.init(784, 10, &device);
        let infos = m.layer_infos();
        let names: Vec<_> = infos.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["conv1", "conv2", "fc1", "fc2", "fc3"]);
        assert_eq!(infos[0].weight_shape, [6, 1, 5, 5]);
        assert_eq!(infos[2].weight_shape, [400, 120]);
        assert_eq!(infos[2].path, "LeNet5.fc1");
        // The classic LeNet-5 (padded conv1) parameter count.
        assert_eq!(m.num_params(), 61_706);
        let y = m.forward(Tensor::zeros([2, 784], &device));
        assert_eq!(y.dims(), [2, 10]);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(
            ClassifierConfig::Mlp { hidden: vec![8, 0] }
                .validate(784, 10)
                .unwrap_err()
                .to_string()
                .contains("hidden[1]")
        );
        assert!(ClassifierConfig::Lenet5.validate(100, 10).is_err());
        assert!(ClassifierConfig::Lenet5.validate(784, 1).is_err());
    }

    #[test]
    fn recipe_table_deserializes() {
        let c: ClassifierConfig = toml::from_str("arch = \"mlp\"\nhidden = [64]").unwrap();
        assert_eq!(c, ClassifierConfig::Mlp { hidden: vec![64] });
        let err = toml::from_str::<ClassifierConfig>("arch = \"mlp\"\nhiden = [64]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hiden"), "{err}");
    }
}
