//! QAT for any burn model in one call: weight fake quantization attached to parameters through
//! burn's `Reparameterization`, selected by parameter-path pattern.
//!
//! ```text
//! let plan = QuantPlan::new().weights("*.weight", QuantSpec { bits: 4, granularity: PerChannel, .. })?;
//! let model = quench_quant::reparam::prepare(model, &plan)?;   // train as usual: STE, observers, LSQ
//! let plain = materialize(model);                              // plain burn model, f32 weights = q(w)
//! ```
//!
//! Integer export is exact for quench's own layers (`QuantLinear` / `QuantConv2d`, used by every
//! reference model and `quench export`). For a foreign model, `materialize` gives the plain
//! weights (exactly the fake-quantized values); its integer codes are not collected here: burn's
//! module visitor hands over parameters without their reparameterization, so the quantizer
//! cannot be reached generically.
//!
//! Parameter paths are the module field path burn's mapper sees, joined with `.` (e.g.
//! `a.weight`, `blocks.0.proj.weight` for a `Vec` field). The channel axis is 1 for rank-2
//! weights (burn's `Linear` stores `[d_in, d_out]`; per-channel = per output) and 0 for other
//! ranks (`Conv2d` `[out, in, kh, kw]`). An `Embedding` weight `[n_embeddings, d_model]` is rank 2,
//! so per-channel there means per model dimension; give it its own rule with
//! `granularity = "per_tensor"` (or `axis = 0` for per-embedding scales) when that is wanted.

use burn::module::{Module, Param, Reparameterization, Reparameterizer};
use burn::tensor::Tensor;

use crate::error::QuantError;
use crate::quantizer::Quantizer;
use crate::spec::QuantSpec;

/// A weight's fake quantizer as a burn reparameterization: `param.val()` returns `q(base)`.
#[derive(Module, Debug)]
pub struct WeightFakeQuant {
    /// The quantizer (observer ranges or LSQ steps are saved with the model's record).
    pub quantizer: Quantizer,
}

impl Reparameterization for WeightFakeQuant {
    const NAME: &'static str = "fake_quant";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        // A trainable (autodiff, require-grad) weight is a training forward: observe it.
        let training = base.is_require_grad();
        self.quantizer.forward(base, training)
    }
}

/// Which parameters get which weight spec: `(glob over parameter paths, spec)` rules, the last
/// matching rule winning.
#[derive(Debug, Clone, Default)]
pub struct QuantPlan {
    rules: Vec<(glob::Pattern, String, QuantSpec)>,
}

impl QuantPlan {
    /// An empty plan (nothing quantized).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: parameters whose path matches `pattern` get weight fake-quant `spec`.
    pub fn weights(mut self, pattern: &str, spec: QuantSpec) -> Result<Self, QuantError> {
        spec.validate()?;
        let glob = glob::Pattern::new(pattern)
            .map_err(|e| QuantError::invalid("pattern", pattern, e.to_string()))?;
        self.rules.push((glob, pattern.to_string(), spec));
        Ok(self)
    }
}

struct Planner<'a> {
    state: &'a mut PlanState,
    plan: &'a QuantPlan,
}

/// What a traversal found: parameter paths, which rules matched, the first error.
#[derive(Default)]
struct PlanState {
    seen: Vec<String>,
    used: Vec<bool>,
    error: Option<QuantError>,
}

impl Reparameterizer for Planner<'_> {
    type Reparam = WeightFakeQuant;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Self::Reparam>) {
        self.state.seen.push(path.to_string());
        let Some(i) = self
            .plan
            .rules
            .iter()
            .rposition(|(g, _, _)| g.matches(path))
        else {
            return (param, None);
        };
        self.state.used[i] = true;
        let spec = &self.plan.rules[i].2;
        let dims = param.val().dims().to_vec();
        let axis = if D == 2 { 1 } else { 0 };
        match Quantizer::for_weight(spec, &dims, axis, &param.lazy_device()) {
            Ok(quantizer) => (param, Some(WeightFakeQuant { quantizer })),
            Err(e) => {
                if self.state.error.is_none() {
                    let QuantError::Invalid {
                        field,
                        value,
                        reason,
                    } = e;
                    self.state.error = Some(QuantError::invalid(
                        field,
                        value,
                        format!("{reason} (parameter `{path}`, shape {dims:?})"),
                    ));
                }
                (param, None)
            }
        }
    }
}

/// Attaches weight fake quantization to every parameter of `model` that `plan` selects. Errors:
/// a rule that matches no parameter (the message lists the parameter paths), or a spec that
/// does not fit a parameter's shape (naming it).
pub fn prepare<M: Module>(model: M, plan: &QuantPlan) -> Result<M, QuantError> {
    let mut state = PlanState {
        used: vec![false; plan.rules.len()],
        ..PlanState::default()
    };
    // The mapper takes the reparameterizer by value; it borrows `state` so the findings stay.
    let model = model.apply_reparameterization(Planner {
        state: &mut state,
        plan,
    });
    if let Some(e) = state.error {
        return Err(e);
    }
    if let Some(i) = state.used.iter().position(|u| !u) {
        return Err(QuantError::invalid(
            "pattern",
            &plan.rules[i].1,
            format!(
                "matches no parameter; the model's parameters are: {}",
                state.seen.join(", ")
            ),
        ));
    }
    Ok(model)
}

/// Folds the fake quantization into plain weights (`valid().materialize()`): a float burn model
/// whose weights are exactly the quantized values.
pub fn materialize<M: Module>(model: M) -> M {
    model.valid().materialize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Estimator, Granularity};
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::{Device, Int};

    /// A model quench did not define: embedding → linear, and a conv.
    #[derive(Module, Debug)]
    struct UserNet {
        emb: Embedding,
        proj: Linear,
        conv: Conv2d,
    }

    fn net(device: &Device) -> UserNet {
        UserNet {
            emb: EmbeddingConfig::new(10, 8).init(device),
            proj: LinearConfig::new(8, 4).init(device),
            conv: Conv2dConfig::new([2, 3], [3, 3]).init(device),
        }
    }

    fn int4() -> QuantSpec {
        QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            ..QuantSpec::default()
        }
    }

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    }

    fn plan() -> QuantPlan {
        QuantPlan::new()
            .weights("proj.weight", int4())
            .unwrap()
            .weights("conv.weight", int4())
            .unwrap()
    }

    #[test]
    fn prepare_fake_quantizes_selected_weights_only() {
        let device = Device::flex();
        let model = net(&device);
        let w = model.proj.weight.val();
        let q = prepare(model, &plan()).unwrap();
        // The effective weight is the int4 per-output-channel fake quantization of the base.
        let manual = Quantizer::for_weight(&int4(), &[8, 4], 1, &device)
            .unwrap()
            .forward(w.clone(), false);
        assert_eq!(host(q.proj.weight.val()), host(manual));
        assert_ne!(host(q.proj.weight.val()), host(w));
        // 16 levels at most per output column.
        let vals = host(q.proj.weight.val());
        for c in 0..4 {
            let mut col: Vec<i64> = (0..8).map(|r| (vals[r * 4 + c] * 1e6) as i64).collect();
            col.sort();
            col.dedup();
            assert!(col.len() <= 16);
        }
        // Not selected: the embedding and the biases stay float.
        assert!(
            q.emb
                .weight
                .reparameterization::<WeightFakeQuant>()
                .is_none()
        );
        assert!(
            q.proj
                .weight
                .reparameterization::<WeightFakeQuant>()
                .is_some()
        );
    }

    #[test]
    fn training_reaches_base_weights_and_lsq_steps_and_state_survives_records() {
        let device = Device::flex().autodiff();
        let lsq = QuantSpec {
            estimator: Estimator::Lsq,
            ..int4()
        };
        let plan = QuantPlan::new().weights("proj.weight", lsq).unwrap();
        let mut model = prepare(net(&device), &plan).unwrap();
        let mut optim = AdamConfig::new().init();
        let ids = Tensor::<2, Int>::from_data([[1i64, 2, 3]], &device);
        let before = host(model.proj.weight.base());
        for _ in 0..3 {
            let y = model.proj.forward(model.emb.forward(ids.clone()));
            let loss = y.powf_scalar(2.0).mean();
            let grads = loss.backward();
            assert!(
                model.proj.weight.base().grad(&grads).is_some(),
                "STE reaches the base"
            );
            let grads = GradientsParams::from_grads(grads, &model);
            model = optim.step(1e-2, model, grads);
        }
        assert_ne!(
            host(model.proj.weight.base()),
            before,
            "base weights trained"
        );
        let r = model
            .proj
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap();
        assert!(
            r.quantizer.scale_zero_point().is_some(),
            "LSQ step initialised"
        );
        // Record round trip into a freshly prepared model: same effective weights.
        let record = model.clone().into_record();
        let fresh = prepare(net(&device), &plan).unwrap().load_record(record);
        assert_eq!(host(fresh.proj.weight.val()), host(model.proj.weight.val()));
    }

    #[test]
    fn materialize_gives_plain_weights_equal_to_the_fake_quant_ones() {
        let device = Device::flex();
        let q = prepare(net(&device), &plan()).unwrap();
        let fq = host(q.proj.weight.val());
        let codes = q
            .proj
            .weight
            .reparameterization::<WeightFakeQuant>()
            .unwrap()
            .quantizer
            .quantize_to_int(q.proj.weight.base());
        // Per output channel (axis 1 of [8, 4]): element (r, c) uses scale c.
        let (c, s, z) = codes;
        let deq: Vec<f32> = c
            .iter()
            .enumerate()
            .map(|(i, &k)| (k - z[i % 4]) as f32 * s[i % 4])
            .collect();
        assert_eq!(deq, fq);
        let plain = materialize(q);
        assert!(plain.proj.weight.reparameterization_dyn_is_none());
        assert_eq!(host(plain.proj.weight.val()), fq);
    }

    trait NoReparam {
        fn reparameterization_dyn_is_none(&self) -> bool;
    }

    impl<const D: usize> NoReparam for Param<Tensor<D>> {
        fn reparameterization_dyn_is_none(&self) -> bool {
            self.reparameterization::<WeightFakeQuant>().is_none()
        }
    }

    #[test]
    fn bad_patterns_and_specs_are_errors_naming_the_parameter() {
        let device = Device::flex();
        let plan = QuantPlan::new().weights("nope.weight", int4()).unwrap();
        let err = prepare(net(&device), &plan).unwrap_err().to_string();
        assert!(
            err.contains("nope.weight") && err.contains("proj.weight"),
            "{err}"
        );
        let group = QuantSpec {
            granularity: Granularity::PerGroup,
            group_size: Some(3),
            ..int4()
        };
        let plan = QuantPlan::new().weights("proj.weight", group).unwrap();
        let err = prepare(net(&device), &plan).unwrap_err().to_string();
        assert!(
            err.contains("proj.weight") && err.contains("group_size"),
            "{err}"
        );
        assert!(
            QuantPlan::new()
                .weights("x", QuantSpec::with_bits(1))
                .is_err()
        );
    }
}
