//! The image classifiers a recipe can name, behind one module type the trainer drives.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::gpt::GptConfig;
use crate::lenet::{ConvNet, ConvNetConfig};
use crate::mlp::{Mlp, MlpConfig};
use crate::names::{LayerInfo, LayerPlan};
use quench_quant::layer::{
    ExportedInput, ExportedWeight, LayerQuant, LayerReport, QuantConv2d, QuantLinear,
};

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
    /// A layer's quantization could not be set up.
    #[error("layer `{0}`: {1}")]
    Quant(String, quench_quant::QuantError),
}

/// Which model to build, as a recipe's `[model]` table says: an image classifier (`mlp`,
/// `lenet5`, `cnn`) or a character-level language model (`gpt`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "lowercase", deny_unknown_fields)]
pub enum ModelConfig {
    /// `arch = "mlp"`, `hidden = [512, 512]`.
    Mlp {
        /// Hidden widths.
        hidden: Vec<usize>,
    },
    /// `arch = "lenet5"`.
    Lenet5,
    /// `arch = "cnn"`: two conv+pool stages then fully connected layers (the teacher shape).
    Cnn {
        /// Output channels of conv1 and conv2.
        channels: [usize; 2],
        /// Square kernel size (odd).
        #[serde(default = "default_kernel")]
        kernel: usize,
        /// Hidden widths of the fully connected layers.
        fc: Vec<usize>,
    },
    /// `arch = "gpt"`: a char-level GPT (the vocabulary comes from the corpus).
    Gpt {
        /// Transformer blocks.
        layers: usize,
        /// Attention heads.
        heads: usize,
        /// Embedding width.
        width: usize,
        /// Context length in characters.
        context: usize,
    },
}

/// The `[model]` table's type under its first name (every variant but `gpt` is a classifier).
pub type ClassifierConfig = ModelConfig;

fn default_kernel() -> usize {
    3
}

/// A built classifier (any reference architecture) for 28×28 grey images.
// One model value per run: the size difference between variants costs nothing, and boxing
// would change the module's record layout.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Classifier {
    /// An MLP.
    Mlp(Mlp),
    /// LeNet-5 or another two-stage conv net.
    ConvNet(ConvNet),
}

impl ModelConfig {
    fn conv_config(&self, classes: usize) -> Option<ConvNetConfig> {
        match self {
            Self::Mlp { .. } | Self::Gpt { .. } => None,
            Self::Lenet5 => Some(ConvNetConfig::lenet5(classes)),
            Self::Cnn {
                channels,
                kernel,
                fc,
            } => Some(ConvNetConfig::new(*channels, *kernel, fc.clone(), classes)),
        }
    }

    /// Checks sizes; `input` is pixels per image, `classes` the label count.
    pub fn validate(&self, input: usize, classes: usize) -> Result<(), ModelError> {
        if let Some(gpt) = self.gpt(classes) {
            return gpt.validate();
        }
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
            _ if input != 28 * 28 => Err(ModelError::Invalid(format!(
                "conv nets take 28×28 images, the data has {input} pixels per image"
            ))),
            _ => self.conv_config(classes).map_or(Ok(()), |c| c.validate()),
        }
    }

    /// The named weight layers of the model this config builds (names, paths, shapes).
    ///
    /// For `gpt`, `classes` is the vocabulary size and `input` is unused.
    pub fn layer_infos(&self, input: usize, classes: usize) -> Vec<LayerInfo> {
        if let Some(gpt) = self.gpt(classes) {
            return gpt.layer_infos();
        }
        let (variant, mut infos) = match self {
            Self::Mlp { hidden } => (
                "Mlp",
                MlpConfig::new(input, hidden.clone(), classes).layer_infos(),
            ),
            _ => (
                "ConvNet",
                self.conv_config(classes)
                    .map(|c| c.layer_infos())
                    .unwrap_or_default(),
            ),
        };
        for info in &mut infos {
            *info = LayerInfo::new(
                info.name.clone(),
                format!("{variant}.{}", info.path),
                info.kind,
                info.weight_shape.clone(),
            );
        }
        infos
    }

    /// Builds the classifier on `device`, each layer float / QAT / ternary / binary per `plan`.
    pub fn init(
        &self,
        input: usize,
        classes: usize,
        plan: &LayerPlan,
        device: &Device,
    ) -> Result<Classifier, ModelError> {
        match self {
            Self::Mlp { hidden } => Ok(Classifier::Mlp(
                MlpConfig::new(input, hidden.clone(), classes).init(plan, device)?,
            )),
            Self::Gpt { .. } => Err(ModelError::Invalid(
                "arch = \"gpt\" is a language model, not an image classifier".into(),
            )),
            _ => {
                let c = self
                    .conv_config(classes)
                    .ok_or_else(|| ModelError::Invalid("not a conv net".into()))?;
                Ok(Classifier::ConvNet(c.init(plan, device)?))
            }
        }
    }

    /// Builds the all-float classifier (no layer quantized).
    pub fn init_float(&self, input: usize, classes: usize, device: &Device) -> Classifier {
        // A float plan creates no quantizer, so there is nothing that can fail.
        match self.init(input, classes, &LayerPlan::float(), device) {
            Ok(m) => m,
            Err(e) => unreachable!("float model construction failed: {e}"),
        }
    }

    /// True for a language model (`arch = "gpt"`), false for an image classifier.
    pub fn is_language_model(&self) -> bool {
        matches!(self, Self::Gpt { .. })
    }

    /// The GPT sizes with vocabulary `vocab`, when this is `arch = "gpt"`.
    pub fn gpt(&self, vocab: usize) -> Option<GptConfig> {
        match *self {
            Self::Gpt {
                layers,
                heads,
                width,
                context,
            } => Some(GptConfig {
                vocab,
                layers,
                heads,
                width,
                context,
            }),
            _ => None,
        }
    }

    /// A short human-readable name (`mlp 784-512-512-10`, `lenet5`, `cnn 32-64 k3 fc256`,
    /// `gpt 4x128 h4 ctx64`).
    pub fn describe(&self, input: usize, classes: usize) -> String {
        match self {
            Self::Gpt {
                layers,
                heads,
                width,
                context,
            } => format!("gpt {layers}x{width} h{heads} ctx{context} vocab{classes}"),
            Self::Mlp { hidden } => {
                let mut dims = vec![input.to_string()];
                dims.extend(hidden.iter().map(|h| h.to_string()));
                dims.push(classes.to_string());
                format!("mlp {}", dims.join("-"))
            }
            Self::Lenet5 => "lenet5".to_string(),
            Self::Cnn {
                channels,
                kernel,
                fc,
            } => format!(
                "cnn {}-{} k{} fc{}",
                channels[0],
                channels[1],
                kernel,
                fc.iter()
                    .map(|f| f.to_string())
                    .collect::<Vec<_>>()
                    .join("-")
            ),
        }
    }
}

/// One layer of a model as exported: name, shape, kind, weight, bias and input quantization.
#[derive(Debug, Clone)]
pub struct ExportedLayer {
    /// Layer name and shape.
    pub info: LayerInfo,
    /// What the layer computes with.
    pub kind: LayerQuant,
    /// Weight (integer codes or f32).
    pub weight: ExportedWeight,
    /// Bias, f32.
    pub bias: Option<Vec<f32>>,
    /// Input quantization at inference.
    pub input: ExportedInput,
    /// Symmetric zero padding of a convolution (`None` for Linear).
    pub padding: Option<usize>,
}

fn conv_padding(c: &QuantConv2d) -> Option<usize> {
    match c.inner.padding {
        burn::nn::PaddingConfig2d::Explicit(p, _, _, _) => Some(p),
        _ => Some(0),
    }
}

fn bias_values(b: &Option<burn::module::Param<Tensor<1>>>) -> Option<Vec<f32>> {
    b.as_ref().and_then(|b| {
        b.val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .ok()
    })
}

impl Classifier {
    /// Each weight layer's name and the quench layer's operands with its latent weight, as a
    /// closure result (Linear and Conv2d weights differ in rank).
    fn each_layer<T>(
        &self,
        mut linear: impl FnMut(LayerInfo, &QuantLinear) -> T,
        mut conv: impl FnMut(LayerInfo, &QuantConv2d) -> T,
    ) -> Vec<T> {
        let infos = self.layer_infos();
        match self {
            Self::Mlp(m) => m
                .layers
                .iter()
                .zip(infos)
                .map(|(l, i)| linear(i, l))
                .collect(),
            Self::ConvNet(m) => {
                let mut it = infos.into_iter();
                let mut out = Vec::new();
                for c in [&m.conv1, &m.conv2] {
                    if let Some(i) = it.next() {
                        out.push(conv(i, c));
                    }
                }
                for (l, i) in m.fcs.iter().zip(it) {
                    out.push(linear(i, l));
                }
                out
            }
        }
    }

    /// Per-layer quantization numbers (scales, zero-points, error, ternary fractions).
    pub fn quant_reports(&self) -> Vec<(LayerInfo, LayerQuant, LayerReport)> {
        self.each_layer(
            |i, l| (i, l.ops.kind().clone(), l.ops.report(l.inner.weight.val())),
            |i, c| (i, c.ops.kind().clone(), c.ops.report(c.inner.weight.val())),
        )
    }

    /// Every weight layer as exported (integer codes where quantized).
    pub fn export_layers(&self) -> Vec<ExportedLayer> {
        self.each_layer(export_linear, |info, c| ExportedLayer {
            info,
            kind: c.ops.kind().clone(),
            weight: c.ops.export_weight(c.inner.weight.val()),
            bias: bias_values(&c.inner.bias),
            input: c.ops.export_input(),
            padding: conv_padding(c),
        })
    }

    /// Logits `[batch, classes]` from flattened images `[batch, pixels]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Self::Mlp(m) => m.forward(x),
            Self::ConvNet(m) => m.forward(x),
        }
    }

    /// Name of the first weight layer whose output on `x` holds NaN or ±inf (`None`: every
    /// layer's output is finite), to say where a diverging run broke.
    pub fn first_nonfinite_layer(&self, x: Tensor<2>) -> Option<String> {
        match self {
            Self::Mlp(m) => m.first_nonfinite_layer(x),
            Self::ConvNet(m) => m.first_nonfinite_layer(x),
        }
    }

    /// The named weight layers of the model, in forward order; `path` is the full module
    /// path inside this enum (`Mlp.layers.0`, `ConvNet.conv1`), as records and visitors see it.
    pub fn layer_infos(&self) -> Vec<LayerInfo> {
        let (variant, infos) = match self {
            Self::Mlp(m) => ("Mlp", m.layer_infos()),
            Self::ConvNet(m) => ("ConvNet", m.layer_infos()),
        };
        infos
            .into_iter()
            .map(|i| {
                LayerInfo::new(
                    i.name,
                    format!("{variant}.{}", i.path),
                    i.kind,
                    i.weight_shape,
                )
            })
            .collect()
    }
}

/// A [`QuantLinear`] as exported: its kind, integer codes (or f32 weights), bias and input
/// quantization.
pub(crate) fn export_linear(info: LayerInfo, l: &QuantLinear) -> ExportedLayer {
    ExportedLayer {
        info,
        kind: l.ops.kind().clone(),
        weight: l.ops.export_weight(l.inner.weight.val()),
        bias: bias_values(&l.inner.bias),
        input: l.ops.export_input(),
        padding: None,
    }
}

/// True when `t` holds a NaN or an infinity.
pub(crate) fn has_nonfinite<const D: usize>(t: &Tensor<D>) -> bool {
    !t.clone().is_finite().all().into_scalar::<bool>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_nonfinite_layer_names_where_activations_break() {
        let device = Device::flex();
        let cfg = ClassifierConfig::Mlp { hidden: vec![4, 4] };
        let x = Tensor::<2>::ones([2, 784], &device);
        let m = cfg.init_float(784, 10, &device);
        assert_eq!(m.first_nonfinite_layer(x.clone()), None);
        let Classifier::Mlp(mut mlp) = m else {
            unreachable!("an MLP config builds an MLP")
        };
        // An infinite weight in fc2: fc1's outputs stay finite, fc2's do not.
        let w = mlp.layers[1].inner.weight.val();
        let inf = w.clone().mul_scalar(0.0).add_scalar(f32::INFINITY);
        mlp.layers[1].inner.weight = burn::module::Param::from_tensor(inf);
        let m = Classifier::Mlp(mlp);
        assert_eq!(m.first_nonfinite_layer(x.clone()).as_deref(), Some("fc2"));
        // A NaN input breaks fc1 already; LeNet-5 names its convolution.
        let nan = x.clone().mul_scalar(f32::NAN);
        assert_eq!(m.first_nonfinite_layer(nan.clone()).as_deref(), Some("fc1"));
        let lenet = ClassifierConfig::Lenet5.init_float(784, 10, &device);
        assert_eq!(lenet.first_nonfinite_layer(x), None);
        assert_eq!(lenet.first_nonfinite_layer(nan).as_deref(), Some("conv1"));
    }

    #[test]
    fn mlp_shapes_names_and_params() {
        let device = Device::flex();
        let cfg = ClassifierConfig::Mlp {
            hidden: vec![512, 512],
        };
        let m = cfg.init_float(784, 10, &device);
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
        let m = ClassifierConfig::Lenet5.init_float(784, 10, &device);
        let infos = m.layer_infos();
        let names: Vec<_> = infos.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["conv1", "conv2", "fc1", "fc2", "fc3"]);
        assert_eq!(infos[0].weight_shape, [6, 1, 5, 5]);
        assert_eq!(infos[2].weight_shape, [400, 120]);
        assert_eq!(infos[2].path, "ConvNet.fcs.0");
        assert_eq!(infos[2].weight_path(), "ConvNet.fcs.0.inner.weight");
        assert_eq!(ClassifierConfig::Lenet5.layer_infos(784, 10), infos);
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
