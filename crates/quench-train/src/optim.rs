//! Builds burn's optimizers and learning-rate schedulers from a recipe's `[train]` table.

use burn::grad_clipping::GradientClippingConfig;
use burn::lr_scheduler::LrSchedulerConfig;
use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::lr_scheduler::linear::LinearLrSchedulerConfig;
use burn::lr_scheduler::module_lr_scheduler::{ModuleLrScheduler, ModuleLrSchedulerConfig};
use burn::lr_scheduler::sequential::SequentialLrSchedulerConfig;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Gradients, Tensor};

use crate::TrainError;
use crate::adam::FusedAdam;
use crate::recipe::{LrScheduleKind, OptimizerKind, TrainConfig};

/// The gradients of `module`'s parameters in `grads`, as burn's `GradientsParams::from_grads`
/// collects them, except that a lazy parameter not yet made is skipped rather than made: no
/// graph can hold it, and a saved state that changed this step (an observer's range, its update
/// count: `quench_quant::observer::HostState`) is visited as one, so that collecting gradients
/// does not rebuild its device copy every step.
///
/// Written here rather than taken from burn because burn's collector asks every parameter
/// whether it requires a gradient, which makes it.
pub fn gradients<M: Module>(grads: Gradients, module: &M) -> GradientsParams {
    struct Collect {
        grads: Gradients,
        out: GradientsParams,
    }
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if !param.is_initialized() || !param.is_require_grad() {
                return;
            }
            if let Some(grad) = param.val().grad_remove(&mut self.grads) {
                self.out.register(param.id, grad);
            }
        }
    }
    let mut collect = Collect {
        grads,
        out: GradientsParams::new(),
    };
    module.visit(&mut collect);
    collect.out
}

/// The optimizer the recipe asks for (burn's own Adam / AdamW / SGD-momentum).
pub fn build_optimizer(t: &TrainConfig) -> ModuleOptimizer {
    let clip =
        (t.grad_clip_norm > 0.0).then_some(GradientClippingConfig::Norm(t.grad_clip_norm as f32));
    let decay = (t.weight_decay > 0.0).then(|| WeightDecayConfig::new(t.weight_decay as f32));
    match t.optimizer {
        // burn's Adam, with the update fused into one pass on the CPU (bit-identical).
        OptimizerKind::Adam => {
            let adam = ModuleOptimizer::from(FusedAdam::new(
                t.beta1 as f32,
                t.beta2 as f32,
                t.eps as f32,
                decay.map(|d| d.penalty),
            ));
            match clip {
                Some(c) => adam.with_grad_clipping(c.init()),
                None => adam,
            }
        }
        OptimizerKind::Adamw => AdamWConfig::new()
            .with_beta_1(t.beta1 as f32)
            .with_beta_2(t.beta2 as f32)
            .with_epsilon(t.eps as f32)
            .with_weight_decay(t.weight_decay as f32)
            .with_grad_clipping(clip)
            .init(),
        // PyTorch's SGD momentum has no dampening; burn's default is 0.1, so set it explicitly.
        OptimizerKind::Sgd => SgdConfig::new()
            .with_momentum((t.momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(t.momentum)
                    .with_dampening(0.0)
            }))
            .with_weight_decay(decay)
            .with_gradient_clipping(clip)
            .init(),
    }
}

/// The learning-rate schedule over `total_steps` optimizer steps: optional linear warm-up from
/// lr/100, then constant or cosine to `min_lr`.
pub fn build_scheduler(
    t: &TrainConfig,
    total_steps: usize,
) -> Result<ModuleLrScheduler, TrainError> {
    let warmup = t.warmup_steps.min(total_steps.saturating_sub(1));
    let rest = total_steps.saturating_sub(warmup).max(1);
    let main = match t.lr_schedule {
        LrScheduleKind::Constant => LrSchedulerConfig::Constant(t.lr),
        LrScheduleKind::Cosine => LrSchedulerConfig::Cosine(
            CosineAnnealingLrSchedulerConfig::new(t.lr, rest).with_min_lr(t.min_lr),
        ),
    };
    let config = if warmup > 0 {
        LrSchedulerConfig::Sequential(SequentialLrSchedulerConfig::new(
            vec![
                LrSchedulerConfig::Linear(LinearLrSchedulerConfig::new(t.lr / 100.0, t.lr, warmup)),
                main,
            ],
            vec![warmup],
        ))
    } else {
        main
    };
    ModuleLrSchedulerConfig::new(config)
        .init()
        .map_err(|e| TrainError::Config(format!("learning-rate schedule: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::Experiment;
    use std::path::Path;

    #[test]
    fn gradients_are_burns_for_a_quantized_layer() {
        use burn::nn::LinearConfig;
        use burn::tensor::{Device, TensorData};
        use quench_quant::layer::{LayerQuant, QuantLinear};
        use quench_quant::{Estimator, QuantSpec};
        let device = Device::flex().autodiff();
        let spec = QuantSpec {
            estimator: Estimator::MinMax,
            ..QuantSpec::default()
        };
        let kind = LayerQuant::Qat {
            weight: Some(spec.clone()),
            input: Some(spec),
        };
        device.seed(3);
        let layer = QuantLinear::from_linear(LinearConfig::new(6, 4).init(&device), &kind).unwrap();
        let xs: Vec<f32> = (0..12).map(|i| (i * 7 % 12) as f32 / 5.0 - 1.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(xs, [2, 6]), &device);
        // The same input twice: the observers see the same ranges, so the same gradients.
        let loss = |l: &QuantLinear| l.forward(x.clone()).powi_scalar(2).sum().backward();
        let mut ours = gradients(loss(&layer), &layer);
        let mut burns = GradientsParams::from_grads(loss(&layer), &layer);
        assert_eq!((ours.len(), burns.len()), (2, 2));
        let w = layer.inner.weight.id;
        let b = layer.inner.bias.as_ref().unwrap().id;
        let vals = |t: Option<Tensor<2>>| t.unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(vals(ours.remove::<2>(w)), vals(burns.remove::<2>(w)));
        let vals = |t: Option<Tensor<1>>| t.unwrap().into_data().to_vec::<f32>().unwrap();
        let (ob, bb) = (vals(ours.remove::<1>(b)), vals(burns.remove::<1>(b)));
        assert_eq!(ob, bb);
        assert!(ob.iter().any(|g| *g != 0.0));
    }

    fn train(sets: &[&str]) -> TrainConfig {
        let base = "name='t'\n[data]\ndataset='mnist'\n[model]\narch='lenet5'\n[train]\nepochs=1\nbatch_size=8\nlr=0.1\n";
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Experiment::from_toml_str(base, Path::new("t"), &sets)
            .unwrap()
            .train
    }

    fn lrs(t: &TrainConfig, total: usize) -> Vec<f64> {
        let mut s = build_scheduler(t, total).unwrap();
        (0..total).map(|_| s.step().base()).collect()
    }

    #[test]
    fn constant_schedule() {
        assert!(
            lrs(&train(&[]), 5)
                .iter()
                .all(|&lr| (lr - 0.1).abs() < 1e-12)
        );
    }

    #[test]
    fn warmup_then_cosine() {
        let t = train(&[
            "train.lr_schedule=\"cosine\"",
            "train.warmup_steps=4",
            "train.min_lr=0.0",
        ]);
        let v = lrs(&t, 14);
        // Warm-up rises linearly from lr/100 towards lr.
        assert!((v[0] - 0.001).abs() < 1e-9, "{v:?}");
        assert!(v[0] < v[1] && v[1] < v[2] && v[2] < v[3], "{v:?}");
        // Cosine starts at lr right after warm-up and decays to min_lr.
        assert!((v[4] - 0.1).abs() < 1e-9, "{v:?}");
        assert!(v[4..].windows(2).all(|w| w[1] <= w[0]), "{v:?}");
        // Half way through the 10 cosine steps the lr is half the peak.
        assert!((v[9] - 0.05).abs() < 1e-9, "{v:?}");
    }
}
