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
    /// Temperature at the last step: `T` moves linearly from `temperature` (first step) to this
    /// (last step). Unset: constant `T`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_end: Option<f64>,
    /// Weight of the soft (KL) loss; the hard-label cross entropy gets `1 − alpha`.
    #[serde(default = "DistillSpec::default_alpha")]
    pub alpha: f64,
    /// Compute the teacher's logits once, store them next to the run and reuse them.
    #[serde(default)]
    pub cache_logits: bool,
    /// For a teacher that is not a quench checkpoint (a PyTorch state dict, safetensors or
    /// `.pt`): its architecture, as a `[model]` table (`{ arch = "mlp", hidden = [512, 512] }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher_model: Option<toml::Table>,
    /// Renames for a PyTorch teacher's tensors, `[regex, replacement]` pairs applied in order,
    /// onto quench's layer names (`fc1.weight`, `conv2.bias`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teacher_key_map: Vec<(String, String)>,
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
            temperature_end: None,
            teacher_model: None,
            teacher_key_map: Vec::new(),
        }
    }

    /// Checks every field; the error names the recipe key and the value.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.teacher.as_os_str().is_empty() {
            return Err(DistillError::EmptyTeacher);
        }
        if let Some(end) = self.temperature_end {
            KdLoss::new(end, self.alpha).map_err(|e| match e {
                DistillError::Temperature { value } => DistillError::TemperatureEnd { value },
                other => other,
            })?;
        }
        KdLoss::new(self.temperature, self.alpha).map(|_| ())
    }

    /// `T` at optimizer step `step` of `total` (linear from `temperature` to `temperature_end`;
    /// a function of the step alone, so a resumed run uses the same `T` as an uninterrupted one).
    pub fn temperature_at(&self, step: u64, total: u64) -> f64 {
        match self.temperature_end {
            None => self.temperature,
            Some(end) => {
                let f = (step as f64 / total.saturating_sub(1).max(1) as f64).clamp(0.0, 1.0);
                self.temperature + (end - self.temperature) * f
            }
        }
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
    fn temperature_schedule_is_linear_and_validated() {
        let mut s = DistillSpec::new("t.bpk");
        s.temperature = 4.0;
        assert_eq!(s.temperature_at(7, 100), 4.0);
        s.temperature_end = Some(1.0);
        assert_eq!(s.temperature_at(0, 101), 4.0);
        assert_eq!(s.temperature_at(50, 101), 2.5);
        assert_eq!(s.temperature_at(100, 101), 1.0);
        assert_eq!(s.temperature_at(500, 101), 1.0);
        s.validate().unwrap();
        s.temperature_end = Some(0.0);
        assert!(matches!(
            s.validate(),
            Err(DistillError::TemperatureEnd { .. })
        ));
        let e = parse("teacher = \"t\"\ntemperature_end = 2.0").unwrap();
        assert_eq!(e.temperature_end, Some(2.0));
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
