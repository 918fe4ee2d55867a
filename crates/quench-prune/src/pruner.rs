//! `Pruner`: a validated spec applied to a model's layers over training — the one object the
//! trainer drives.
//!
//! Per optimizer step the trainer does:
//! ```text
//! model = optim.step(lr, model, grads);
//! pruner.update_module(step, &model)?;               // recomputes masks when the schedule says
//! if pruner.schedule().rewind_at(step) { model = rewind_module(&init_model, pruner.masks())?; /* reset optimizer */ }
//! model = apply_masks_to_module(model, pruner.masks())?;
//! ```

use std::collections::{BTreeMap, BTreeSet};

use burn::module::Module;

use crate::criteria::{
    Norm, WeightRef, global_magnitude_masks, magnitude_mask, n_m_mask, prune_count,
    structured_mask, units_to_mask,
};
use crate::error::PruneError;
use crate::mask::{Mask, Masks, split_axis};
use crate::module::{ParamData, read_float_params};
use crate::pattern;
use crate::schedule::Schedule;
use crate::spec::{PruneMethod, PruneScope, PruneSpec, ScheduleKind};
use crate::stats::{SparsityReport, report};

/// A prunable weight layer of a model: its name (what `layers` patterns match), its parameter
/// paths and which axes hold output units and inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneLayer {
    /// Name recipes use (`fc1`, `conv2`).
    pub name: String,
    /// Module path of the weight parameter (`Mlp.layers.0.inner.weight`); the mask key.
    pub weight_path: String,
    /// Module path of the bias, masked along with its unit by structured pruning.
    pub bias_path: Option<String>,
    /// Weight shape as burn stores it.
    pub shape: Vec<usize>,
    /// Axis of output units (neurons / channels).
    pub output_axis: usize,
    /// Axis N:M groups run along.
    pub input_axis: usize,
}

impl PruneLayer {
    /// A burn `Linear` (weight `[d_in, d_out]`: outputs on axis 1, inputs on axis 0).
    pub fn linear(
        name: impl Into<String>,
        weight_path: impl Into<String>,
        bias_path: Option<String>,
        shape: [usize; 2],
    ) -> Self {
        Self {
            name: name.into(),
            weight_path: weight_path.into(),
            bias_path,
            shape: shape.to_vec(),
            output_axis: 1,
            input_axis: 0,
        }
    }

    /// A burn `Conv2d` (weight `[out, in/groups, kh, kw]`: outputs on axis 0, inputs on axis 1).
    pub fn conv2d(
        name: impl Into<String>,
        weight_path: impl Into<String>,
        bias_path: Option<String>,
        shape: [usize; 4],
    ) -> Self {
        Self {
            name: name.into(),
            weight_path: weight_path.into(),
            bias_path,
            shape: shape.to_vec(),
            output_axis: 0,
            input_axis: 1,
        }
    }
}

/// Masks of the selected layers, evolving over steps according to a [`PruneSpec`].
#[derive(Debug, Clone)]
pub struct Pruner {
    spec: PruneSpec,
    schedule: Schedule,
    layers: Vec<PruneLayer>,
    masks: Masks,
}

impl Pruner {
    /// Validates `spec`, selects the layers its patterns name from `model_layers`, and checks
    /// up front that the method can work on each (N:M divisibility, structured not removing
    /// every unit at the final sparsity), so a bad recipe fails before training.
    pub fn new(spec: PruneSpec, model_layers: &[PruneLayer]) -> Result<Self, PruneError> {
        let schedule = Schedule::new(&spec)?;
        let names: Vec<&str> = model_layers.iter().map(|l| l.name.as_str()).collect();
        let layers: Vec<PruneLayer> = pattern::select(&names, &spec.layers)?
            .into_iter()
            .map(|i| model_layers[i].clone())
            .collect();
        for l in &layers {
            let (_, units, _) = split_axis(&l.shape, l.output_axis, &l.weight_path)?;
            let (_, inputs, _) = split_axis(&l.shape, l.input_axis, &l.weight_path)?;
            match spec.method {
                PruneMethod::NM if !inputs.is_multiple_of(spec.m) => {
                    return Err(PruneError::NotDivisible {
                        layer: l.name.clone(),
                        dim: l.input_axis,
                        size: inputs,
                        m: spec.m,
                    });
                }
                m if m.is_structured() && prune_count(spec.target_sparsity, units) >= units => {
                    return Err(PruneError::AllUnitsPruned {
                        layer: l.name.clone(),
                        sparsity: spec.target_sparsity,
                        units,
                    });
                }
                _ => {}
            }
        }
        Ok(Self {
            spec,
            schedule,
            layers,
            masks: Masks::new(),
        })
    }

    /// The spec this pruner follows.
    pub fn spec(&self) -> &PruneSpec {
        &self.spec
    }

    /// Its schedule (`should_update`, `target`, `rewind_at`).
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The selected layers, in model order.
    pub fn layers(&self) -> &[PruneLayer] {
        &self.layers
    }

    /// The current masks by parameter path (empty until the first update).
    pub fn masks(&self) -> &Masks {
        &self.masks
    }

    /// Replaces the masks (e.g. restored from a checkpoint).
    pub fn set_masks(&mut self, masks: Masks) {
        self.masks = masks;
    }

    /// Per-layer and global sparsity of the weight masks (bias masks excluded).
    pub fn report(&self) -> SparsityReport {
        let weights: Masks = self
            .layers
            .iter()
            .filter_map(|l| {
                self.masks
                    .get(&l.weight_path)
                    .map(|m| (l.weight_path.clone(), m.clone()))
            })
            .collect();
        report(&weights)
    }

    /// The weight paths of the selected layers.
    pub fn weight_paths(&self) -> BTreeSet<String> {
        self.layers.iter().map(|l| l.weight_path.clone()).collect()
    }

    /// Recomputes the masks from `module`'s current weights if the schedule updates at `step`;
    /// returns whether it did.
    pub fn update_module<M: Module>(&mut self, step: u64, module: &M) -> Result<bool, PruneError> {
        if !self.schedule.should_update(step) {
            return Ok(false);
        }
        let weights = read_float_params(module, &self.weight_paths())?;
        self.update(step, &weights)
    }

    /// Recomputes the masks from `weights` (by weight path, as [`read_float_params`] returns
    /// them) if the schedule updates at `step`; returns whether it did.
    pub fn update(
        &mut self,
        step: u64,
        weights: &BTreeMap<String, ParamData>,
    ) -> Result<bool, PruneError> {
        if !self.schedule.should_update(step) {
            return Ok(false);
        }
        let target = self.schedule.target(step);
        let mut refs = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let data = weights
                .get(&l.weight_path)
                .ok_or_else(|| PruneError::UnknownParam {
                    path: l.weight_path.clone(),
                    available: weights.keys().cloned().collect::<Vec<_>>().join(", "),
                })?;
            if data.shape != l.shape {
                return Err(PruneError::ShapeMismatch {
                    what: l.weight_path.clone(),
                    expected: l.shape.clone(),
                    got: data.shape.clone(),
                });
            }
            refs.push(WeightRef::new(&l.weight_path, &data.values, &data.shape)?);
        }
        let mut new = Masks::new();
        match (self.spec.method, self.spec.scope) {
            (PruneMethod::Magnitude, PruneScope::Global) => {
                new = global_magnitude_masks(&refs, target, &self.masks)?;
            }
            (method, _) => {
                for (l, w) in self.layers.iter().zip(&refs) {
                    let prev = self.masks.get(&l.weight_path);
                    let mask = match method {
                        PruneMethod::Magnitude => magnitude_mask(*w, target, prev)?,
                        PruneMethod::Random => {
                            crate::criteria::random_mask(*w, target, self.spec.seed, prev)?
                        }
                        PruneMethod::NM => {
                            n_m_mask(*w, self.spec.n, self.spec.m, l.input_axis, prev)?
                        }
                        PruneMethod::StructuredL1 | PruneMethod::StructuredL2 => {
                            let norm = if method == PruneMethod::StructuredL1 {
                                Norm::L1
                            } else {
                                Norm::L2
                            };
                            let mask = structured_mask(*w, norm, l.output_axis, target, prev)?;
                            if let Some(bias) = &l.bias_path {
                                let units = mask.kept_units(l.output_axis)?;
                                let mut bm = units_to_mask(&[units.len()], 0, &units)?;
                                if let Some(old) = self.masks.get(bias) {
                                    bm = bm.and(old)?;
                                }
                                new.insert(bias.clone(), bm);
                            }
                            mask
                        }
                    };
                    new.insert(l.weight_path.clone(), mask);
                }
            }
        }
        self.masks.extend(new);
        Ok(true)
    }

    /// After resuming from a checkpoint at `step`: rebuilds the masks from the weights that are
    /// exactly zero (masked weights are stored as `+0.0`), if pruning had started by `step`.
    pub fn resume_from_module<M: Module>(
        &mut self,
        step: u64,
        module: &M,
    ) -> Result<(), PruneError> {
        let first_update = match self.schedule.kind() {
            ScheduleKind::Iterative => self.schedule.round_start(1),
            _ => self.spec.start_step,
        };
        self.masks.clear();
        if step < first_update {
            return Ok(());
        }
        let mut paths = self.weight_paths();
        if self.spec.method.is_structured() {
            paths.extend(self.layers.iter().filter_map(|l| l.bias_path.clone()));
        }
        for (path, data) in read_float_params(module, &paths)? {
            let keep = data.values.iter().map(|v| *v != 0.0).collect();
            self.masks.insert(path, Mask::new(&data.shape, keep)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::apply_masks_to_module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::Device;

    #[derive(Module, Debug)]
    struct Mlp {
        layers: Vec<Linear>,
    }

    fn layers() -> Vec<PruneLayer> {
        vec![
            PruneLayer::linear(
                "fc1",
                "layers.0.weight",
                Some("layers.0.bias".into()),
                [8, 6],
            ),
            PruneLayer::linear(
                "fc2",
                "layers.1.weight",
                Some("layers.1.bias".into()),
                [6, 4],
            ),
        ]
    }

    fn mlp(dev: &Device) -> Mlp {
        Mlp {
            layers: vec![
                LinearConfig::new(8, 6).init(dev),
                LinearConfig::new(6, 4).init(dev),
            ],
        }
    }

    #[test]
    fn new_checks_patterns_and_feasibility() {
        let e = Pruner::new(
            PruneSpec {
                layers: vec!["conv*".into()],
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "prune layer pattern `conv*` matches no layer; available layers: fc1, fc2"
        );
        // fc2 has 6 inputs: 6 % 4 != 0.
        let e = Pruner::new(
            PruneSpec {
                method: PruneMethod::NM,
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "N:M pruning of `fc2`: dimension 0 (size 6) is not divisible by m = 4"
        );
        // 0.9 of fc2's 4 output neurons rounds to all 4.
        let e = Pruner::new(
            PruneSpec {
                method: PruneMethod::StructuredL1,
                target_sparsity: 0.9,
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap_err();
        assert!(matches!(e, PruneError::AllUnitsPruned { ref layer, .. } if layer == "fc2"));
        let p = Pruner::new(
            PruneSpec {
                method: PruneMethod::NM,
                layers: vec!["fc1".into()],
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap();
        assert_eq!(p.layers().len(), 1);
    }

    #[test]
    fn cubic_magnitude_over_steps_on_a_module() {
        let dev = Device::flex();
        let mut model = mlp(&dev);
        let mut p = Pruner::new(
            PruneSpec {
                schedule: ScheduleKind::Cubic,
                target_sparsity: 0.75,
                end_step: 20,
                frequency: 10,
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap();
        let mut seen = Vec::new();
        for step in 0..=25u64 {
            if p.update_module(step, &model).unwrap() {
                model = apply_masks_to_module(model, p.masks()).unwrap();
                seen.push((step, p.report().sparsity));
            }
        }
        // Targets 0, 0.75·(1 − 0.125) = 0.65625, 0.75; fc1 48 and fc2 24 weights:
        // round(0.65625·48) = 32 (31.5), round(0.65625·24) = 16 (15.75) → 48/72.
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], (0, 0.0));
        assert_eq!(seen[1], (10, 48.0 / 72.0));
        assert_eq!(seen[2], (20, 0.75));
        let zeros = crate::stats::value_sparsity(
            &read_float_params(&model, &p.weight_paths()).unwrap()["layers.0.weight"].values,
        );
        assert_eq!(zeros, 0.75);
        // Resume rebuilds the same masks from the zeros.
        let mut q = p.clone();
        q.resume_from_module(25, &model).unwrap();
        assert_eq!(q.masks(), p.masks());
    }

    #[test]
    fn structured_masks_biases_and_global_scope() {
        let dev = Device::flex();
        let model = mlp(&dev);
        let mut p = Pruner::new(
            PruneSpec {
                method: PruneMethod::StructuredL2,
                target_sparsity: 0.5,
                layers: vec!["fc1".into()],
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap();
        assert!(p.update_module(0, &model).unwrap());
        let w = &p.masks()["layers.0.weight"];
        let b = &p.masks()["layers.0.bias"];
        assert_eq!(w.kept_units(1).unwrap(), b.keep().to_vec());
        assert_eq!(b.kept(), 3);
        assert!(!p.masks().contains_key("layers.1.weight"));

        let mut g = Pruner::new(
            PruneSpec {
                scope: PruneScope::Global,
                target_sparsity: 0.5,
                ..PruneSpec::default()
            },
            &layers(),
        )
        .unwrap();
        assert!(g.update_module(0, &model).unwrap());
        assert!(!g.update_module(1, &model).unwrap());
        assert_eq!(g.report().kept, 36);
    }
}
