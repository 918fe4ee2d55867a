//! `PruneSpec`: a recipe's `[prune]` table — which criterion, over which scope, how sparse, on
//! which schedule, on which layers.

use serde::{Deserialize, Serialize};

use crate::error::PruneError;
use crate::pattern::Pattern;

/// How the weights to remove are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PruneMethod {
    /// Unstructured: the smallest `|w|`.
    #[default]
    #[serde(rename = "magnitude")]
    Magnitude,
    /// Whole output neurons / channels with the smallest L1 norm.
    #[serde(rename = "structured_l1")]
    StructuredL1,
    /// Whole output neurons / channels with the smallest L2 norm.
    #[serde(rename = "structured_l2")]
    StructuredL2,
    /// Semi-structured N:M: keep the `n` largest `|w|` of every `m` consecutive input weights.
    #[serde(rename = "n_m")]
    NM,
    /// Unstructured, uniformly random (seeded): the baseline every criterion should beat.
    #[serde(rename = "random")]
    Random,
}

impl PruneMethod {
    /// The recipe spelling (used in error messages).
    pub fn name(self) -> &'static str {
        match self {
            Self::Magnitude => "magnitude",
            Self::StructuredL1 => "structured_l1",
            Self::StructuredL2 => "structured_l2",
            Self::NM => "n_m",
            Self::Random => "random",
        }
    }

    /// Whether this method removes whole output units (and so also masks their biases).
    pub fn is_structured(self) -> bool {
        matches!(self, Self::StructuredL1 | Self::StructuredL2)
    }
}

/// Over which set of weights one sparsity target is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PruneScope {
    /// Each selected layer gets the target sparsity.
    #[default]
    Layer,
    /// One magnitude threshold across all selected weights (unstructured `magnitude` only).
    Global,
}

/// How sparsity grows over training steps (see `schedule.rs` for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Prune to `target_sparsity` once, at `start_step`.
    #[default]
    OneShot,
    /// Zhu & Gupta (2017) cubic ramp from `initial_sparsity` to `target_sparsity`.
    Cubic,
    /// Linear ramp from `initial_sparsity` to `target_sparsity`.
    Linear,
    /// Lottery-ticket style: `iterations` prune rounds, optionally rewinding to the init weights.
    Iterative,
}

impl ScheduleKind {
    /// The recipe spelling (used in error messages).
    pub fn name(self) -> &'static str {
        match self {
            Self::OneShot => "one_shot",
            Self::Cubic => "cubic",
            Self::Linear => "linear",
            Self::Iterative => "iterative",
        }
    }
}

/// A pruning recipe.
///
/// Fields a method or schedule does not use (`n`/`m` for magnitude, `frequency` for one-shot)
/// are ignored; `validate` rejects values and combinations that cannot work. N:M always yields
/// sparsity `1 - n/m` on the selected layers; for it `target_sparsity` is ignored and the
/// schedule only decides *when* the pattern is imposed (at its first update step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PruneSpec {
    /// Criterion: `magnitude`, `structured_l1`, `structured_l2`, `n_m`.
    pub method: PruneMethod,
    /// `layer` (per-layer target) or `global` (one threshold; magnitude only).
    pub scope: PruneScope,
    /// Final fraction of weights (or output units, for structured) removed, in `[0, 1)`.
    pub target_sparsity: f64,
    /// N:M: weights kept per group.
    pub n: usize,
    /// N:M: group size along the input dimension.
    pub m: usize,
    /// `one_shot`, `cubic`, `linear` or `iterative`.
    pub schedule: ScheduleKind,
    /// First step at which masks are computed.
    pub start_step: u64,
    /// Step at which `target_sparsity` is reached (cubic, linear, iterative).
    pub end_step: u64,
    /// Steps between mask updates (cubic, linear).
    pub frequency: u64,
    /// Sparsity at `start_step` for cubic / linear, in `[0, target_sparsity]`.
    pub initial_sparsity: f64,
    /// Iterative: number of prune rounds between `start_step` and `end_step`.
    pub iterations: u32,
    /// Iterative: after each prune round, reset the surviving weights to their initial values.
    pub rewind: bool,
    /// Glob patterns over layer names selecting the layers to prune.
    pub layers: Vec<String>,
    /// Seed of the `random` criterion.
    pub seed: u64,
}

impl Default for PruneSpec {
    fn default() -> Self {
        Self {
            method: PruneMethod::Magnitude,
            scope: PruneScope::Layer,
            target_sparsity: 0.5,
            n: 2,
            m: 4,
            schedule: ScheduleKind::OneShot,
            start_step: 0,
            end_step: 0,
            frequency: 100,
            initial_sparsity: 0.0,
            iterations: 1,
            rewind: false,
            layers: vec!["*".to_string()],
            seed: 0,
        }
    }
}

impl burn::config::Config for PruneSpec {}

impl PruneSpec {
    /// Checks every field and combination that cannot work; the error names field and value.
    pub fn validate(&self) -> Result<(), PruneError> {
        if !(0.0..1.0).contains(&self.target_sparsity) {
            return Err(PruneError::invalid(
                "target_sparsity",
                self.target_sparsity,
                "must be in [0, 1)",
            ));
        }
        if self.method == PruneMethod::NM {
            if self.n == 0 {
                return Err(PruneError::invalid("n", 0, "N:M needs n >= 1"));
            }
            if self.n >= self.m {
                return Err(PruneError::invalid(
                    "n",
                    self.n,
                    format!("N:M needs n < m (m = {})", self.m),
                ));
            }
        }
        if self.scope == PruneScope::Global && self.method != PruneMethod::Magnitude {
            return Err(PruneError::invalid(
                "scope",
                "global",
                format!(
                    "a global threshold is for unstructured magnitude pruning only, not method {}",
                    self.method.name()
                ),
            ));
        }
        if self.frequency == 0 {
            return Err(PruneError::invalid("frequency", 0, "must be at least 1"));
        }
        let ramps = !matches!(self.schedule, ScheduleKind::OneShot);
        if ramps && self.end_step <= self.start_step {
            return Err(PruneError::ScheduleEndsBeforeStart {
                start_step: self.start_step,
                end_step: self.end_step,
            });
        }
        if matches!(self.schedule, ScheduleKind::Cubic | ScheduleKind::Linear)
            && !(self.initial_sparsity >= 0.0 && self.initial_sparsity <= self.target_sparsity)
        {
            return Err(PruneError::invalid(
                "initial_sparsity",
                self.initial_sparsity,
                format!("must be in [0, target_sparsity = {}]", self.target_sparsity),
            ));
        }
        if self.schedule == ScheduleKind::Iterative {
            if self.iterations == 0 {
                return Err(PruneError::invalid("iterations", 0, "must be at least 1"));
            }
            let span = self.end_step - self.start_step;
            if u64::from(self.iterations) > span {
                return Err(PruneError::invalid(
                    "iterations",
                    self.iterations,
                    format!(
                        "more rounds than steps between start_step and end_step ({span}); \
                         rounds would coincide"
                    ),
                ));
            }
        }
        if self.rewind && self.schedule != ScheduleKind::Iterative {
            return Err(PruneError::invalid(
                "rewind",
                true,
                format!(
                    "rewinding applies to schedule = \"iterative\" only, not {:?}",
                    self.schedule.name()
                ),
            ));
        }
        if self.layers.is_empty() {
            return Err(PruneError::invalid(
                "layers",
                "[]",
                "must hold at least one layer pattern (use [\"*\"] for every layer)",
            ));
        }
        for p in &self.layers {
            Pattern::new(p)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<PruneSpec, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn defaults_and_toml() {
        let s = parse("").unwrap();
        assert_eq!(s, PruneSpec::default());
        s.validate().unwrap();
        let s = parse(
            r#"
            method = "n_m"
            n = 2
            m = 4
            schedule = "cubic"
            start_step = 100
            end_step = 1100
            frequency = 50
            layers = ["fc*"]
            "#,
        )
        .unwrap();
        assert_eq!(s.method, PruneMethod::NM);
        assert_eq!(s.schedule, ScheduleKind::Cubic);
        assert_eq!(s.layers, vec!["fc*".to_string()]);
        s.validate().unwrap();
        let s = parse(r#"method = "structured_l2""#).unwrap();
        assert_eq!(s.method, PruneMethod::StructuredL2);
        let s = parse(r#"scope = "global""#).unwrap();
        assert_eq!(s.scope, PruneScope::Global);
    }

    #[test]
    fn unknown_fields_and_values_rejected() {
        assert!(parse("sparsity = 0.5").is_err());
        assert!(parse(r#"method = "random_walk""#).is_err());
        assert!(parse(r#"schedule = "exponential""#).is_err());
    }

    fn err(spec: PruneSpec) -> String {
        spec.validate().unwrap_err().to_string()
    }

    #[test]
    fn validation_names_field_and_value() {
        let d = PruneSpec::default;
        let e = err(PruneSpec {
            target_sparsity: 1.0,
            ..d()
        });
        assert_eq!(
            e,
            "prune spec field `target_sparsity` = 1: must be in [0, 1)"
        );
        let e = err(PruneSpec {
            target_sparsity: -0.1,
            ..d()
        });
        assert!(e.contains("`target_sparsity` = -0.1"), "{e}");
        let nm = || PruneSpec {
            method: PruneMethod::NM,
            ..d()
        };
        let e = err(PruneSpec { n: 4, m: 4, ..nm() });
        assert_eq!(e, "prune spec field `n` = 4: N:M needs n < m (m = 4)");
        let e = err(PruneSpec { n: 0, ..nm() });
        assert!(e.contains("`n` = 0"), "{e}");
        let e = err(PruneSpec {
            schedule: ScheduleKind::Cubic,
            start_step: 10,
            end_step: 10,
            ..d()
        });
        assert!(e.contains("schedule ends before it starts"), "{e}");
        assert!(
            e.contains("end_step = 10") && e.contains("start_step = 10"),
            "{e}"
        );
        let e = err(PruneSpec {
            frequency: 0,
            ..d()
        });
        assert_eq!(e, "prune spec field `frequency` = 0: must be at least 1");
        let e = err(PruneSpec {
            scope: PruneScope::Global,
            method: PruneMethod::StructuredL1,
            ..d()
        });
        assert!(
            e.contains("`scope` = global") && e.contains("structured_l1"),
            "{e}"
        );
        let e = err(PruneSpec {
            schedule: ScheduleKind::Linear,
            end_step: 10,
            initial_sparsity: 0.7,
            ..d()
        });
        assert!(e.contains("`initial_sparsity` = 0.7"), "{e}");
        let e = err(PruneSpec {
            schedule: ScheduleKind::Iterative,
            end_step: 3,
            iterations: 4,
            ..d()
        });
        assert!(e.contains("`iterations` = 4"), "{e}");
        let e = err(PruneSpec {
            rewind: true,
            ..d()
        });
        assert!(e.contains("`rewind` = true"), "{e}");
        let e = err(PruneSpec {
            layers: vec![],
            ..d()
        });
        assert!(e.contains("`layers`"), "{e}");
        // One-shot needs no end_step.
        PruneSpec {
            start_step: 500,
            ..d()
        }
        .validate()
        .unwrap();
    }
}
