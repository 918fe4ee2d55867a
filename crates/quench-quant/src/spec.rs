//! `QuantSpec`: what one operand (a weight or an activation) is quantized to, and how its range
//! is found. A recipe writes it as a flat TOML table, so `--set quant.….bits=4` overrides work.

use serde::{Deserialize, Serialize};

use crate::error::QuantError;
use crate::qparams::QuantLayout;

/// Which elements share one scale / zero-point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One scale for the whole tensor.
    #[default]
    PerTensor,
    /// One scale per index of `axis` (output channel for weights).
    PerChannel,
    /// One scale per `group_size` consecutive elements along the input axis (and per index of
    /// every other axis).
    PerGroup,
    /// One scale per token: per index of every axis except the last (dynamic, for activations).
    PerToken,
}

/// How the quantization range is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Estimator {
    /// Running min / max over every observed batch.
    #[default]
    #[serde(rename = "minmax")]
    MinMax,
    /// Exponential moving average of each batch's min / max.
    #[serde(rename = "moving_average")]
    MovingAverage,
    /// Moving average of each batch's `percentile` / `100 - percentile` values (clips outliers).
    #[serde(rename = "percentile")]
    Percentile,
    /// LSQ (Esser et al. 2020): the step size is a trained parameter.
    #[serde(rename = "lsq")]
    Lsq,
    /// PACT (Choi et al. 2018): the activation clip `alpha` is a trained parameter.
    #[serde(rename = "pact")]
    Pact,
}

impl Estimator {
    /// Whether this estimator learns its range by gradient descent instead of observing it.
    pub fn is_learned(self) -> bool {
        matches!(self, Self::Lsq | Self::Pact)
    }

    /// The recipe spelling of this estimator (used in error messages).
    pub fn name(self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::MovingAverage => "moving_average",
            Self::Percentile => "percentile",
            Self::Lsq => "lsq",
            Self::Pact => "pact",
        }
    }
}

impl Granularity {
    /// The recipe spelling of this granularity (used in error messages).
    pub fn name(self) -> &'static str {
        match self {
            Self::PerTensor => "per_tensor",
            Self::PerChannel => "per_channel",
            Self::PerGroup => "per_group",
            Self::PerToken => "per_token",
        }
    }
}

/// The quantization of one operand: bit width, signedness, range shape and range estimator.
///
/// Plain serde (`#[serde(deny_unknown_fields, default)]`) rather than `#[derive(Config)]`: burn's
/// derive writes its own `Deserialize` through a shadow struct that drops field attributes, so
/// defaults and unknown-key rejection would be lost. burn's [`burn::config::Config`] trait is
/// implemented by hand instead (it only needs serde), so `save`/`load` as JSON still work.
///
/// Fields a combination does not use (e.g. `momentum` with `minmax`, `axis` with `per_tensor`)
/// are ignored; `validate` rejects only values and combinations that cannot work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuantSpec {
    /// Bit width of the integer codes, 2..=8.
    pub bits: u32,
    /// Signed codes (`[-2^(b-1), 2^(b-1)-1]`) or unsigned (`[0, 2^b-1]`, e.g. after ReLU).
    pub signed: bool,
    /// Zero-point fixed at 0 (symmetric) or fitted to the range (asymmetric / affine).
    pub symmetric: bool,
    /// Signed symmetric codes drop the most negative value: `[-(2^(b-1)-1), 2^(b-1)-1]`.
    pub narrow_range: bool,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Per-channel: the channel axis; per-group: the input axis the groups run along.
    /// `None`: the layer decides (see `Quantizer::for_weight`).
    pub axis: Option<usize>,
    /// Elements per group for `per_group` (must divide the input dimension).
    pub group_size: Option<usize>,
    /// How the range is found.
    pub estimator: Estimator,
    /// Moving-average weight of a new batch: `new = (1 - m)·old + m·batch`, in (0, 1].
    pub momentum: f64,
    /// Percentile kept by the `percentile` estimator, in (0, 100].
    pub percentile: f64,
    /// The observer stops updating after this many updates (`None`: never freezes).
    pub freeze_at_step: Option<u64>,
    /// Initial PACT clip `alpha` (also the initial activation range of LSQ before it has data).
    pub pact_init: f64,
}

impl Default for QuantSpec {
    fn default() -> Self {
        Self {
            bits: 8,
            signed: true,
            symmetric: true,
            narrow_range: false,
            granularity: Granularity::PerTensor,
            axis: None,
            group_size: None,
            estimator: Estimator::MinMax,
            momentum: 0.1,
            percentile: 99.99,
            freeze_at_step: None,
            pact_init: 6.0,
        }
    }
}

impl burn::config::Config for QuantSpec {}

impl QuantSpec {
    /// A default (int8, signed, symmetric, per-tensor, minmax) spec with `bits` bits.
    pub fn with_bits(bits: u32) -> Self {
        Self {
            bits,
            ..Self::default()
        }
    }

    /// Checks every field and every combination that cannot work; the error names the field.
    pub fn validate(&self) -> Result<(), QuantError> {
        if !(2..=8).contains(&self.bits) {
            return Err(QuantError::invalid("bits", self.bits, "must be in 2..=8"));
        }
        if self.granularity == Granularity::PerGroup {
            match self.group_size {
                None => {
                    return Err(QuantError::invalid(
                        "group_size",
                        "none",
                        "granularity per_group needs a group_size",
                    ));
                }
                Some(0) => {
                    return Err(QuantError::invalid("group_size", 0, "must be at least 1"));
                }
                Some(_) => {}
            }
        }
        if !(self.percentile > 0.0 && self.percentile <= 100.0) {
            return Err(QuantError::invalid(
                "percentile",
                self.percentile,
                "must be in (0, 100]",
            ));
        }
        if !(self.momentum > 0.0 && self.momentum <= 1.0) {
            return Err(QuantError::invalid(
                "momentum",
                self.momentum,
                "must be in (0, 1]",
            ));
        }
        if self.freeze_at_step == Some(0) {
            return Err(QuantError::invalid(
                "freeze_at_step",
                0,
                "must be at least 1 (leave it out to never freeze)",
            ));
        }
        if !(self.pact_init.is_finite() && self.pact_init > 0.0) {
            return Err(QuantError::invalid(
                "pact_init",
                self.pact_init,
                "must be a positive number",
            ));
        }
        if self.estimator.is_learned() && !self.symmetric {
            // LSQ and PACT learn a step / clip only; there is no learned zero-point.
            return Err(QuantError::invalid(
                "symmetric",
                false,
                format!(
                    "estimator {} learns a scale only and needs symmetric = true",
                    self.estimator.name()
                ),
            ));
        }
        match (self.estimator, self.granularity) {
            (Estimator::Pact, Granularity::PerTensor) => {}
            (Estimator::Pact, g) => {
                return Err(QuantError::invalid(
                    "granularity",
                    g.name(),
                    "estimator pact learns a single clip per tensor: use per_tensor",
                ));
            }
            (Estimator::Lsq, Granularity::PerToken) => {
                return Err(QuantError::invalid(
                    "granularity",
                    "per_token",
                    "estimator lsq learns fixed step sizes; per_token ranges change with \
                     every input (use minmax)",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Checks this spec against a tensor shape with `axis` the per-channel / per-group axis:
    /// the axis must exist and a group size must divide the input dimension.
    pub fn validate_for_shape(&self, shape: &[usize], axis: usize) -> Result<(), QuantError> {
        self.validate()?;
        QuantLayout::new(shape, self.granularity, axis, self.group_size).map(|_| ())
    }

    /// The integer code range `(qmin, qmax)`.
    ///
    /// Signed: `[-2^(b-1), 2^(b-1)-1]`, narrowed to `[-(2^(b-1)-1), 2^(b-1)-1]` when symmetric
    /// and `narrow_range` (so `-qmax` is representable and the grid is symmetric around 0);
    /// unsigned: `[0, 2^b-1]` (`narrow_range` does not apply).
    pub fn qrange(&self) -> (i32, i32) {
        let b = self.bits as i32;
        if self.signed {
            let lo = -(1 << (b - 1));
            let hi = (1 << (b - 1)) - 1;
            if self.symmetric && self.narrow_range {
                (lo + 1, hi)
            } else {
                (lo, hi)
            }
        } else {
            (0, (1 << b) - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml_text: &str) -> Result<QuantSpec, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn qrange_for_bits_signedness_and_narrow() {
        let s = |bits, signed, symmetric, narrow_range| QuantSpec {
            bits,
            signed,
            symmetric,
            narrow_range,
            ..QuantSpec::default()
        };
        assert_eq!(s(8, true, true, false).qrange(), (-128, 127));
        assert_eq!(s(8, true, true, true).qrange(), (-127, 127));
        assert_eq!(s(8, false, true, false).qrange(), (0, 255));
        assert_eq!(s(8, true, false, false).qrange(), (-128, 127));
        // narrow applies to signed symmetric only
        assert_eq!(s(8, true, false, true).qrange(), (-128, 127));
        assert_eq!(s(8, false, false, true).qrange(), (0, 255));
        assert_eq!(s(4, true, true, false).qrange(), (-8, 7));
        assert_eq!(s(4, true, true, true).qrange(), (-7, 7));
        assert_eq!(s(4, false, false, false).qrange(), (0, 15));
        assert_eq!(s(2, true, true, false).qrange(), (-2, 1));
        assert_eq!(s(2, true, true, true).qrange(), (-1, 1));
        assert_eq!(s(2, false, true, false).qrange(), (0, 3));
        assert_eq!(s(3, true, true, false).qrange(), (-4, 3));
    }

    #[test]
    fn toml_defaults() {
        let s = spec("").unwrap();
        assert_eq!(s, QuantSpec::default());
        assert_eq!(s.bits, 8);
        assert!(s.signed && s.symmetric && !s.narrow_range);
        assert_eq!(s.granularity, Granularity::PerTensor);
        assert_eq!(s.estimator, Estimator::MinMax);
        assert_eq!(s.momentum, 0.1);
        assert_eq!(s.percentile, 99.99);
        assert_eq!(s.pact_init, 6.0);
        assert_eq!((s.axis, s.group_size, s.freeze_at_step), (None, None, None));
        s.validate().unwrap();
    }

    #[test]
    fn toml_all_fields() {
        let s = spec(
            r#"
            bits = 4
            signed = false
            symmetric = false
            narrow_range = true
            granularity = "per_group"
            axis = 1
            group_size = 32
            estimator = "moving_average"
            momentum = 0.01
            percentile = 99.9
            freeze_at_step = 1000
            pact_init = 4.0
            "#,
        )
        .unwrap();
        assert_eq!(s.bits, 4);
        assert!(!s.signed && !s.symmetric && s.narrow_range);
        assert_eq!(s.granularity, Granularity::PerGroup);
        assert_eq!(s.axis, Some(1));
        assert_eq!(s.group_size, Some(32));
        assert_eq!(s.estimator, Estimator::MovingAverage);
        assert_eq!(s.momentum, 0.01);
        assert_eq!(s.percentile, 99.9);
        assert_eq!(s.freeze_at_step, Some(1000));
        assert_eq!(s.pact_init, 4.0);
        let names = [
            ("minmax", Estimator::MinMax),
            ("percentile", Estimator::Percentile),
            ("lsq", Estimator::Lsq),
            ("pact", Estimator::Pact),
        ];
        for (name, e) in names {
            assert_eq!(
                spec(&format!("estimator = \"{name}\"")).unwrap().estimator,
                e
            );
        }
        for g in ["per_tensor", "per_channel", "per_token"] {
            let s = spec(&format!("granularity = \"{g}\"")).unwrap();
            assert_eq!(s.granularity.name(), g);
        }
    }

    #[test]
    fn toml_rejects_unknown_keys_and_values() {
        let e = spec("bits = 4\nbitz = 3").unwrap_err().to_string();
        assert!(e.contains("bitz"), "{e}");
        let e = spec("estimator = \"min_max\"").unwrap_err().to_string();
        assert!(e.contains("min_max"), "{e}");
        assert!(spec("granularity = \"perchannel\"").is_err());
    }

    #[test]
    fn json_round_trip_through_burn_config() {
        use burn::config::Config;
        let s = QuantSpec {
            bits: 3,
            estimator: Estimator::Lsq,
            ..QuantSpec::default()
        };
        let json = burn::config::config_to_json(&s);
        let back = QuantSpec::load_binary(json.as_bytes()).unwrap();
        assert_eq!(back, s);
    }

    fn field_of(s: QuantSpec) -> String {
        s.validate().unwrap_err().field().to_string()
    }

    #[test]
    fn validation_names_the_field() {
        let e = QuantSpec::with_bits(1).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "quant spec field `bits` = 1: must be in 2..=8"
        );
        let e = QuantSpec::with_bits(9).validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "quant spec field `bits` = 9: must be in 2..=8"
        );
        QuantSpec::with_bits(2).validate().unwrap();

        let d = QuantSpec::default;
        let e = QuantSpec {
            percentile: 0.0,
            ..d()
        }
        .validate()
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "quant spec field `percentile` = 0: must be in (0, 100]"
        );
        assert_eq!(
            field_of(QuantSpec {
                percentile: 100.5,
                ..d()
            }),
            "percentile"
        );
        QuantSpec {
            percentile: 100.0,
            ..d()
        }
        .validate()
        .unwrap();
        assert_eq!(
            field_of(QuantSpec {
                momentum: 0.0,
                ..d()
            }),
            "momentum"
        );
        assert_eq!(
            field_of(QuantSpec {
                momentum: 1.5,
                ..d()
            }),
            "momentum"
        );
        let per_group = || QuantSpec {
            granularity: Granularity::PerGroup,
            ..d()
        };
        assert_eq!(field_of(per_group()), "group_size");
        assert_eq!(
            field_of(QuantSpec {
                group_size: Some(0),
                ..per_group()
            }),
            "group_size"
        );
        let pact = || QuantSpec {
            estimator: Estimator::Pact,
            ..d()
        };
        let e = QuantSpec {
            granularity: Granularity::PerChannel,
            ..pact()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field(), "granularity");
        assert!(e.to_string().contains("per_channel"), "{e}");
        assert_eq!(
            field_of(QuantSpec {
                granularity: Granularity::PerGroup,
                group_size: Some(4),
                ..pact()
            }),
            "granularity"
        );
        assert_eq!(
            field_of(QuantSpec {
                symmetric: false,
                ..pact()
            }),
            "symmetric"
        );
        assert_eq!(
            field_of(QuantSpec {
                symmetric: false,
                estimator: Estimator::Lsq,
                ..d()
            }),
            "symmetric"
        );
        assert_eq!(
            field_of(QuantSpec {
                granularity: Granularity::PerToken,
                estimator: Estimator::Lsq,
                ..d()
            }),
            "granularity"
        );
        assert_eq!(
            field_of(QuantSpec {
                pact_init: 0.0,
                ..pact()
            }),
            "pact_init"
        );
        assert_eq!(
            field_of(QuantSpec {
                pact_init: -1.0,
                ..d()
            }),
            "pact_init"
        );
        assert_eq!(
            field_of(QuantSpec {
                freeze_at_step: Some(0),
                ..d()
            }),
            "freeze_at_step"
        );
    }

    #[test]
    fn shape_validation_names_value_and_dimension() {
        let s = QuantSpec {
            granularity: Granularity::PerGroup,
            group_size: Some(48),
            ..QuantSpec::default()
        };
        let e = s.validate_for_shape(&[100, 10], 0).unwrap_err();
        assert_eq!(e.field(), "group_size");
        let msg = e.to_string();
        assert!(msg.contains("= 48") && msg.contains("100"), "{msg}");
        s.validate_for_shape(&[96, 10], 0).unwrap();

        let c = QuantSpec {
            granularity: Granularity::PerChannel,
            ..QuantSpec::default()
        };
        let e = c.validate_for_shape(&[4, 5], 2).unwrap_err();
        assert_eq!(e.field(), "axis");
        assert!(e.to_string().contains("= 2"), "{e}");
        c.validate_for_shape(&[4, 5], 1).unwrap();
    }
}
