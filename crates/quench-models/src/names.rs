//! Stable layer names and pattern selection (`fc*`, `conv?`), shared by every technique.

use std::collections::BTreeMap;

use quench_quant::layer::LayerQuant;

use crate::ModelError;

/// What each named layer computes with (`fc1` → W8A8, …); layers not in the plan are float.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerPlan {
    /// Layer name → kind.
    pub layers: BTreeMap<String, LayerQuant>,
}

impl LayerPlan {
    /// All layers float.
    pub fn float() -> Self {
        Self::default()
    }

    /// The kind of layer `name` (float when absent).
    pub fn get(&self, name: &str) -> LayerQuant {
        self.layers.get(name).cloned().unwrap_or_default()
    }
}

/// What kind of weight layer a named layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A fully connected layer (`burn::nn::Linear`, weight `[d_in, d_out]`).
    Linear,
    /// A 2-D convolution (`burn::nn::conv::Conv2d`, weight `[out, in, kh, kw]`).
    Conv2d,
}

/// A named weight layer of a model: its user-facing name and where its params live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The name recipes use (`fc1`, `conv2`).
    pub name: String,
    /// The module path of the layer inside the model record (`layers.0`, `conv2`).
    pub path: String,
    /// The module path of burn's float layer inside it, whose `.weight`/`.bias` are the latent
    /// parameters (`layers.0.inner`).
    pub param_path: String,
    /// Linear or Conv2d.
    pub kind: LayerKind,
    /// Weight shape as burn stores it.
    pub weight_shape: Vec<usize>,
}

impl LayerInfo {
    /// A quench layer `name` at module `path` (burn's layer is its `inner` field).
    pub fn new(name: String, path: String, kind: LayerKind, weight_shape: Vec<usize>) -> Self {
        let param_path = format!("{path}.inner");
        Self {
            name,
            path,
            param_path,
            kind,
            weight_shape,
        }
    }

    /// Path of the latent weight parameter (`Mlp.layers.0.inner.weight`).
    pub fn weight_path(&self) -> String {
        format!("{}.weight", self.param_path)
    }

    /// Path of the bias parameter.
    pub fn bias_path(&self) -> String {
        format!("{}.bias", self.param_path)
    }
}

/// Returns the layers whose names match `pattern` (glob syntax: `*`, `?`, `[..]`).
///
/// A pattern that matches nothing is an error that lists the model's layer names, so a typo
/// in a recipe is caught before any training starts.
pub fn select_layers<'a>(
    layers: &'a [LayerInfo],
    pattern: &str,
) -> Result<Vec<&'a LayerInfo>, ModelError> {
    let glob = glob::Pattern::new(pattern).map_err(|e| ModelError::BadPattern {
        pattern: pattern.to_string(),
        detail: e.to_string(),
    })?;
    let hits: Vec<&LayerInfo> = layers.iter().filter(|l| glob.matches(&l.name)).collect();
    if hits.is_empty() {
        return Err(ModelError::NoSuchLayer {
            pattern: pattern.to_string(),
            available: layers
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<LayerInfo> {
        ["conv1", "conv2", "fc1", "fc2", "fc3"]
            .iter()
            .map(|n| {
                LayerInfo::new(
                    n.to_string(),
                    n.to_string(),
                    if n.starts_with("conv") {
                        LayerKind::Conv2d
                    } else {
                        LayerKind::Linear
                    },
                    vec![1, 1],
                )
            })
            .collect()
    }

    #[test]
    fn glob_patterns_select_by_name() {
        let l = layers();
        let names = |p| {
            select_layers(&l, p)
                .unwrap()
                .iter()
                .map(|x| x.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("fc*"), ["fc1", "fc2", "fc3"]);
        assert_eq!(names("conv?"), ["conv1", "conv2"]);
        assert_eq!(names("fc[12]"), ["fc1", "fc2"]);
        assert_eq!(names("*"), ["conv1", "conv2", "fc1", "fc2", "fc3"]);
    }

    #[test]
    fn unknown_pattern_lists_layer_names() {
        let err = select_layers(&layers(), "dense*").unwrap_err().to_string();
        assert!(err.contains("dense*"), "{err}");
        assert!(err.contains("conv1, conv2, fc1, fc2, fc3"), "{err}");
    }
}
