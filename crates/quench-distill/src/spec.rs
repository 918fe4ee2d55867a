//! The `[distill]` part of a recipe: which teacher, how soft, how much weight, whether to cache.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::DistillError;
use crate::kd_loss::KdLoss;

/// Distillation settings as written in a recipe; `validate()` before use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistillSpec {
    /// Checkpoint of the frozen teacher.
    pub teacher: PathBuf,
    /// Softmax temperature `T` for both teacher and student (soft loss is scaled by `T²`).
    #[serde(default = "DistillSpec::default_temperature")]
    pub temperature: f64,
    /// Weight of the soft (KL) loss; the hard-label cross entropy gets `1 − alpha`.
    #[serde(default = "DistillSpec::default_alpha")]
    pub alpha: f64,
    /// Compute the teacher's logits once, store them next to the run and reuse them.
    #[serde(default)]
    pub cache_logits: bool,
}

impl DistillSpec {
    /// Default temperature (Hinton et al. use 2–20; 4 works well for small image classifiers).
    pub const DEFAULT_TEMPERATURE: f64 = 4.0;
    /// Default soft-loss weight.
    pub const DEFAULT_ALPHA: f64 = 0.9;

    fn default_temperature() -> f64 {
        Self::DEFAULT_TEMPERATURE
    }

    fn default_alpha() -> f64 {
        Self::DEFAULT_ALPHA
    }

    /// A spec for `teacher` with the default temperature, alpha and no caching.
    pub fn new(teacher: impl Into<PathBuf>) -> Self {
        Self {
            teacher: teacher.into(),
            temperature: Self::DEFAULT_TEMPERATURE,
            alpha: Self::DEFAULT_ALPHA,
            cache_logits: false,
        }
    }

    /// Checks every field; the error names the recipe key and the value.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.teacher.as_os_str().is_empty() {
            return Err(DistillError::EmptyTeacher);
        }
        KdLoss::new(self.temperature, self.alpha).map(|_| ())
    }

    /// The loss these settings describe (validates temperature and alpha).
    pub fn kd_loss(&self) -> Result<KdLoss, DistillError> {
        KdLoss::new(self.temperature, self.alpha)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<DistillSpec, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let s = parse(r#"teacher = "checkpoints/teacher.bpk""#).unwrap();
        assert_eq!(s, DistillSpec::new("checkpoints/teacher.bpk"));
        assert_eq!(s.temperature, 4.0);
        assert_eq!(s.alpha, 0.9);
        assert!(!s.cache_logits);
        s.validate().unwrap();
    }

    #[test]
    fn all_fields_parse_and_round_trip() {
        let s = parse(
            r#"
            teacher = "t.bpk"
            temperature = 2.5
            alpha = 0.5
            cache_logits = true
            "#,
        )
        .unwrap();
        assert_eq!(s.temperature, 2.5);
        assert_eq!(s.alpha, 0.5);
        assert!(s.cache_logits);
        let back: DistillSpec = parse(&toml::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unknown_and_missing_fields_are_rejected() {
        let e = parse("teacher = \"t.bpk\"\ntemprature = 3.0").unwrap_err();
        assert!(e.to_string().contains("temprature"), "{e}");
        assert!(parse("temperature = 3.0").is_err());
    }

    #[test]
    fn validate_rejects_bad_values() {
        let mut s = DistillSpec::new("t.bpk");
        for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            s.temperature = t;
            assert!(
                matches!(s.validate(), Err(DistillError::Temperature { .. })),
                "T = {t}"
            );
        }
        s.temperature = 1.0;
        for a in [-0.01, 1.01, f64::NAN] {
            s.alpha = a;
            assert!(
                matches!(s.validate(), Err(DistillError::Alpha { .. })),
                "alpha = {a}"
            );
        }
        for a in [0.0, 1.0] {
            s.alpha = a;
            s.validate().unwrap();
        }
        s.teacher = PathBuf::new();
        assert!(matches!(s.validate(), Err(DistillError::EmptyTeacher)));
    }
}
