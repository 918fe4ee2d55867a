//! Stable layer names and pattern selection (`fc*`, `conv?`), shared by every technique.

use crate::ModelError;

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
    /// Linear or Conv2d.
    pub kind: LayerKind,
    /// Weight shape as burn stores it.
    pub weight_shape: Vec<usize>,
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
            .map(|n| LayerInfo {
                name: n.to_string(),
                path: n.to_string(),
                kind: if n.starts_with("conv") {
                    LayerKind::Conv2d
                } else {
                    LayerKind::Linear
                },
                weight_shape: vec![1, 1],
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
