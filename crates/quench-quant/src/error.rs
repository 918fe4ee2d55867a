//! Errors of the quantization crate.

use thiserror::Error;

/// Why a quantization spec (or its use on a tensor) is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantError {
    /// A spec field holds a value that cannot work; names the field so a recipe error is findable.
    #[error("quant spec field `{field}` = {value}: {reason}")]
    Invalid {
        /// The offending field, as spelled in a recipe (`bits`, `group_size`, …).
        field: String,
        /// The offending value, as written.
        value: String,
        /// What is wrong with it and what would be accepted.
        reason: String,
    },
}

impl QuantError {
    /// Builds an [`QuantError::Invalid`] from anything printable.
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

    /// The spec field this error is about.
    pub fn field(&self) -> &str {
        match self {
            Self::Invalid { field, .. } => field,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_field_value_and_reason() {
        let e = QuantError::invalid("bits", 1, "must be in 2..=8");
        assert_eq!(
            e.to_string(),
            "quant spec field `bits` = 1: must be in 2..=8"
        );
        assert_eq!(e.field(), "bits");
    }
}
