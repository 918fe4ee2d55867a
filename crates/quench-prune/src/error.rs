//! Errors of the pruning crate. Every message names the offending field / layer and its value,
//! so a bad recipe is fixable from the message alone.

use thiserror::Error;

/// Why a pruning spec, a mask computation or a sparse encoding is rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PruneError {
    /// A spec field holds a value that cannot work.
    #[error("prune spec field `{field}` = {value}: {reason}")]
    Invalid {
        /// The field as spelled in a recipe (`target_sparsity`, `n`, `frequency`, …).
        field: String,
        /// The offending value, as written.
        value: String,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// `end_step <= start_step` for a schedule that ramps over time.
    #[error(
        "prune spec: schedule ends before it starts: end_step = {end_step} must be greater than \
         start_step = {start_step}"
    )]
    ScheduleEndsBeforeStart {
        /// `start_step` as written.
        start_step: u64,
        /// `end_step` as written.
        end_step: u64,
    },
    /// N:M groups of `m` do not tile the input dimension of a weight.
    #[error("N:M pruning of `{layer}`: dimension {dim} (size {size}) is not divisible by m = {m}")]
    NotDivisible {
        /// Parameter path / layer name.
        layer: String,
        /// The axis the groups run along.
        dim: usize,
        /// Its size.
        size: usize,
        /// The group size.
        m: usize,
    },
    /// Structured pruning at this sparsity would remove every output unit of a layer.
    #[error(
        "structured pruning of `{layer}` at sparsity {sparsity} would remove all {units} output \
         units (neurons/channels); lower target_sparsity or exclude the layer"
    )]
    AllUnitsPruned {
        /// Parameter path / layer name.
        layer: String,
        /// The requested sparsity.
        sparsity: f64,
        /// Number of output units of the layer.
        units: usize,
    },
    /// A `layers` pattern selects nothing.
    #[error("prune layer pattern `{pattern}` matches no layer; available layers: {available}")]
    NoMatchingLayer {
        /// The pattern as written.
        pattern: String,
        /// Comma-separated names of the layers that could have been selected.
        available: String,
    },
    /// Values and shape (or a mask and a weight) disagree.
    #[error("`{what}`: shape mismatch, expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// What was being matched (parameter path, …).
        what: String,
        /// The expected shape (or `[len]` for a flat buffer).
        expected: Vec<usize>,
        /// The shape found.
        got: Vec<usize>,
    },
    /// An axis argument is out of range for a weight's rank.
    #[error("`{layer}`: axis {axis} is out of range for shape {shape:?}")]
    BadAxis {
        /// Parameter path / layer name.
        layer: String,
        /// The axis asked for.
        axis: usize,
        /// The weight's shape.
        shape: Vec<usize>,
    },
    /// A mask names a parameter the module does not have.
    #[error("mask for `{path}` matches no float parameter of the module; parameters: {available}")]
    UnknownParam {
        /// The mask's parameter path.
        path: String,
        /// Comma-separated float parameter paths of the module.
        available: String,
    },
    /// A sparse byte buffer is truncated or malformed.
    #[error("sparse tensor bytes: {0}")]
    Corrupt(String),
}

impl PruneError {
    /// Builds a [`PruneError::Invalid`] from anything printable.
    pub fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_field_and_value() {
        let e = PruneError::invalid("target_sparsity", 1.5, "must be in [0, 1)");
        assert_eq!(
            e.to_string(),
            "prune spec field `target_sparsity` = 1.5: must be in [0, 1)"
        );
        let e = PruneError::ScheduleEndsBeforeStart {
            start_step: 10,
            end_step: 5,
        };
        let s = e.to_string();
        assert!(s.contains("schedule ends before it starts"), "{s}");
        assert!(
            s.contains("end_step = 5") && s.contains("start_step = 10"),
            "{s}"
        );
        let e = PruneError::NotDivisible {
            layer: "fc1.weight".into(),
            dim: 0,
            size: 10,
            m: 4,
        };
        let s = e.to_string();
        assert!(
            s.contains("dimension 0 (size 10)") && s.contains("m = 4"),
            "{s}"
        );
    }
}
