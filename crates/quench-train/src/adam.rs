//! Adam with the whole update in one pass over host memory on the CPU (Flex) backend.
//!
//! burn's `Adam` updates a parameter with thirteen tensor ops (scale and add the first moment,
//! square / scale / add the second, bias-correct, `sqrt`, add ε, divide, scale by the learning
//! rate, subtract, plus two for L2 weight decay), each a full read and write of a tensor the size
//! of the parameter. On the 784-512-512-10 MLP that was about a fifth of a training step
//! (`perf`: `scalar_op`, `binary_op`, `unary_op`, `memmove`). [`FusedAdam`] reads the parameter,
//! its gradient and both moments once, and writes them once.
//!
//! It is the same optimizer, not an approximation: the state is burn's `AdamState` (so
//! checkpoints, `--resume` and `init_from` read the same records), and each value goes through
//! the same IEEE f32 operations in the same order as burn's op sequence, so parameters and moments
//! are bit-identical to burn's `Adam` (tested over several steps, with and without weight decay).
//! Other backends, other dtypes and AMSGrad take burn's `Adam` unchanged.

use burn::optim::{Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor, TensorData};
use quench_quant::flexops::HostBuffer as Host;
use rayon::prelude::*;

/// burn's Adam hyper-parameters, with a fused host update on Flex.
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// L2 penalty added to the gradient (`g + λ·p`), as burn's `WeightDecay`.
    weight_decay: Option<f32>,
    /// burn's own Adam for everything the fused path does not cover.
    reference: Adam,
}

impl FusedAdam {
    /// The optimizer `AdamConfig::new().with_beta_1(beta_1)…` would build (no AMSGrad).
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: Option<f32>) -> Self {
        let reference = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .with_weight_decay(weight_decay.map(burn::optim::decay::WeightDecayConfig::new))
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            reference,
        }
    }

    /// Whether the fused update applies: Flex, f32, no AMSGrad state.
    fn applies<const D: usize>(
        tensor: &Tensor<D>,
        grad: &Tensor<D>,
        state: Option<&AdamState<D>>,
    ) -> bool {
        tensor.device() == Device::flex()
            && tensor.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && grad.dims() == tensor.dims()
            && state.is_none_or(|s| {
                let m = &s.momentum;
                m.max_moment_2.is_none()
                    && m.moment_1.dims() == tensor.dims()
                    && m.moment_2.dims() == tensor.dims()
                    && m.moment_1.dtype() == DType::F32
                    && m.moment_2.dtype() == DType::F32
            })
    }

    /// The fused update (the caller checked [`Self::applies`]). The tensors are taken by value:
    /// a buffer nobody else holds becomes the host `Vec` and the result without a copy.
    fn fused_step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<AdamState<D>>,
    ) -> (Tensor<D>, Option<AdamState<D>>) {
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        // A weight whose per-column range a quantizer wants (`range_hint`); its untaken hint
        // from the last step must not hold the buffer this update writes.
        let cols = quench_quant::range_hint::prepare_update(&tensor);
        let mut p = host(tensor);
        let g = host(grad);
        let (time, mut m, mut v) = match state {
            Some(s) => {
                let mo = s.momentum;
                (mo.time + 1, host(mo.moment_1), host(mo.moment_2))
            }
            None => (1, Host::zeros(&dims), Host::zeros(&dims)),
        };
        // The scalars exactly as burn's `AdaptiveMomentum::transform` computes them.
        let t = time as i32;
        let bc2_sqrt = (1.0 - self.beta_2.powi(t)).sqrt();
        let c = Scalars {
            b1: self.beta_1,
            b2: self.beta_2,
            f1: 1.0 - self.beta_1,
            f2: 1.0 - self.beta_2,
            combined: bc2_sqrt / (1.0 - self.beta_1.powi(t)),
            eps: self.epsilon * bc2_sqrt,
            lr: lr as f32,
            decay: self.weight_decay.unwrap_or(0.0),
        };
        let kernel = match (time == 1, self.weight_decay.is_some()) {
            (true, true) => dispatch::<true, true>,
            (true, false) => dispatch::<true, false>,
            (false, true) => dispatch::<false, true>,
            (false, false) => dispatch::<false, false>,
        };
        // Large parameters are split over the pool: each value is independent, so the result
        // does not depend on the split.
        const CHUNK: usize = 1 << 15;
        // Such a weight is updated in chunks of whole rows, each one's range taken right after
        // its update, while it is in cache.
        let chunk = cols.map_or(CHUNK, |cols| (CHUNK / cols).max(1) * cols);
        let (pv, gv) = (p.values_mut(), g.values());
        let (mv, vv) = (m.values_mut(), v.values_mut());
        let step = |p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            kernel(p, g, m, v, &c);
            cols.map(|cols| quench_quant::range_hint::column_ranges(p, cols))
        };
        let ranges: Vec<_> = if n >= 4 * CHUNK {
            pv.par_chunks_mut(chunk)
                .zip(gv.par_chunks(chunk))
                .zip(mv.par_chunks_mut(chunk).zip(vv.par_chunks_mut(chunk)))
                .map(|((p, g), (m, v))| step(p, g, m, v))
                .collect()
        } else {
            vec![step(pv, gv, mv, vv)]
        };
        let mut ranges = ranges.into_iter().flatten();
        let range = ranges.next().map(|mut total| {
            ranges.for_each(|part| quench_quant::range_hint::merge_ranges(&mut total, &part));
            total
        });
        let state = AdamState::new(AdaptiveMomentumState::new(
            time,
            m.into_tensor(),
            v.into_tensor(),
        ));
        let tensor = p.into_tensor();
        if let Some((min, max)) = range {
            quench_quant::range_hint::publish_for(&tensor, min, max);
        }
        (tensor, Some(state))
    }
}

/// The per-step scalars of the update.
struct Scalars {
    b1: f32,
    b2: f32,
    f1: f32,
    f2: f32,
    combined: f32,
    eps: f32,
    lr: f32,
    decay: f32,
}

/// [`update`] compiled for AVX when the CPU has it (8 lanes for the `sqrt` and the division,
/// which bound the loop; the baseline x86-64 target has 4), else the baseline build. Same
/// operations either way (no FMA contraction), so the same bits.
fn dispatch<const FIRST: bool, const DECAY: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &Scalars,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU supports AVX (checked just above).
        unsafe { update_avx::<FIRST, DECAY>(p, g, m, v, c) };
        return;
    }
    update::<FIRST, DECAY>(p, g, m, v, c);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn update_avx<const FIRST: bool, const DECAY: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &Scalars,
) {
    update::<FIRST, DECAY>(p, g, m, v, c);
}

/// One Adam update of `p` (with its moments) in burn's operation order. `FIRST`: burn starts
/// the moments at `g·(1−β)` rather than `0·β + g·(1−β)` (they differ for g = −0). `DECAY`:
/// `g ← p·λ + g`. The branches are compile-time, so the loop is straight-line and vectorizes.
#[inline(always)]
fn update<const FIRST: bool, const DECAY: bool>(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    c: &Scalars,
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = if DECAY { p[i] * c.decay + g[i] } else { g[i] };
        if FIRST {
            m[i] = gi * c.f1;
            v[i] = (gi * gi) * c.f2;
        } else {
            m[i] = m[i] * c.b1 + gi * c.f1;
            v[i] = v[i] * c.b2 + (gi * gi) * c.f2;
        }
        let step = (m[i] * c.combined) / (v[i].sqrt() + c.eps);
        p[i] -= step * c.lr;
    }
}

/// The host buffer of an f32 Flex tensor: updated in place when nothing else holds it.
fn host<const D: usize>(t: Tensor<D>) -> Host {
    match Host::take(t) {
        Ok(buffer) => buffer,
        // An autodiff-wrapped operand (not what the optimizer is given): through its data.
        Err(t) => {
            let t = *t;
            let dims = t.dims();
            // Cannot fail: `applies` checked that every operand is f32.
            let values = t
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_else(|e| panic!("FusedAdam: f32 tensor data did not convert: {e:?}"));
            let plain = Tensor::<D>::from_data(TensorData::new(values, dims), &Device::flex());
            Host::take(plain).unwrap_or_else(|_| unreachable!("a plain Flex f32 tensor"))
        }
    }
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        if Self::applies(&tensor, &grad, state.as_ref()) {
            return self.fused_step(lr, tensor, grad, state);
        }
        self.reference.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Adam as Optimizer>::to_device(state, device)
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, ModuleOptimizer};

    use super::*;

    fn values(l: &Linear) -> Vec<u32> {
        let mut v: Vec<u32> = l
            .weight
            .val()
            .into_data()
            .iter::<f32>()
            .map(f32::to_bits)
            .collect();
        if let Some(b) = &l.bias {
            v.extend(b.val().into_data().iter::<f32>().map(f32::to_bits));
        }
        v
    }

    /// Trains the same layer with burn's Adam and with `FusedAdam`, comparing every parameter
    /// bit for bit after each step; then saves both optimizers' records and compares them.
    fn same_as_burn(decay: Option<f32>, d_in: usize, d_out: usize) {
        let device = Device::flex().autodiff();
        device.seed(7);
        let layer: Linear = LinearConfig::new(d_in, d_out).init(&device);
        let mut ours = ModuleOptimizer::from(FusedAdam::new(0.9, 0.99, 1e-7, decay));
        let mut theirs = AdamConfig::new()
            .with_beta_1(0.9)
            .with_beta_2(0.99)
            .with_epsilon(1e-7)
            .with_weight_decay(decay.map(burn::optim::decay::WeightDecayConfig::new))
            .init();
        let (mut a, mut b) = (layer.clone(), layer);
        for step in 0..5 {
            // Inputs with a zero and a negative zero row, so g = ±0 occurs.
            let mut xs: Vec<f32> = (0..4 * d_in)
                .map(|i| ((i * 37 + step * 11) % 17) as f32 / 8.0 - 1.0)
                .collect();
            xs[..d_in].fill(0.0);
            xs[d_in..2 * d_in].fill(-0.0);
            let x = Tensor::<2>::from_data(TensorData::new(xs, [4, d_in]), &device);
            let loss_a = a.forward(x.clone()).powi_scalar(2).sum();
            let loss_b = b.forward(x).powi_scalar(2).sum();
            let ga = GradientsParams::from_grads(loss_a.backward(), &a);
            let gb = GradientsParams::from_grads(loss_b.backward(), &b);
            a = ours.step(1e-2, a, ga);
            b = theirs.step(1e-2, b, gb);
            assert_eq!(values(&a), values(&b), "step {step}");
        }
        // Same state type, same record: burn Adam's saved state resumes `FusedAdam`, and the
        // next step still agrees bit for bit.
        let record = theirs.into_bytes().unwrap();
        let mut resumed = ModuleOptimizer::from(FusedAdam::new(0.9, 0.99, 1e-7, decay))
            .from_bytes(record)
            .unwrap();
        let x = Tensor::<2>::ones([2, d_in], &device);
        let ga = GradientsParams::from_grads(a.forward(x.clone()).sum().backward(), &a);
        let gb = GradientsParams::from_grads(b.forward(x).sum().backward(), &b);
        let a = resumed.step(1e-2, a, ga);
        let b = theirs.step(1e-2, b, gb);
        assert_eq!(values(&a), values(&b), "after resume");
    }

    /// With a per-channel W4 quantizer on each weight, `FusedAdam` leaves each updated weight's
    /// per-column range for the next forward (`range_hint`): training with those hints gives
    /// the same parameters and observer ranges, bit for bit, as training without them, and
    /// the hints were taken as held ones.
    #[test]
    fn range_hints_for_quantized_weights_change_no_bit() {
        use quench_quant::layer::{LayerQuant, QuantLinear};
        use quench_quant::range_hint::{outcomes_on_this_thread, set_enabled_on_this_thread};
        use quench_quant::{Estimator, Granularity, QuantSpec};
        let device = Device::flex().autodiff();
        let spec = QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            estimator: Estimator::MovingAverage,
            momentum: 1.0,
            ..QuantSpec::default()
        };
        let kind = LayerQuant::Qat {
            weight: Some(spec),
            input: None,
        };
        // Large enough for the parallel split (and rows of 300 columns: a chunk boundary
        // that is not a multiple of 2^15).
        device.seed(11);
        let layer =
            QuantLinear::from_linear(LinearConfig::new(600, 300).init(&device), &kind).unwrap();
        let train = |hints: bool| {
            set_enabled_on_this_thread(hints);
            let before = outcomes_on_this_thread();
            let mut optim = ModuleOptimizer::from(FusedAdam::new(0.9, 0.99, 1e-7, None));
            let mut l = layer.clone();
            for step in 0..4 {
                let xs: Vec<f32> = (0..8 * 600)
                    .map(|i| ((i * 37 + step * 11) % 17) as f32 / 8.0 - 1.0)
                    .collect();
                let x = Tensor::<2>::from_data(TensorData::new(xs, [8, 600]), &device);
                let grads =
                    GradientsParams::from_grads(l.forward(x).powi_scalar(2).sum().backward(), &l);
                l = optim.step(1e-2, l, grads);
            }
            let after = outcomes_on_this_thread();
            set_enabled_on_this_thread(true);
            let range = l
                .ops
                .weight_q
                .as_ref()
                .and_then(|q| q.observer()?.range())
                .unwrap();
            let bits = |t: Tensor<1>| -> Vec<u32> {
                t.into_data().iter::<f32>().map(f32::to_bits).collect()
            };
            let state = (values(&l.inner), bits(range.0), bits(range.1));
            let used = (
                after.held - before.held,
                after.checked - before.checked,
                after.failed - before.failed,
            );
            (state, used)
        };
        let (without, none) = train(false);
        let (with, used) = train(true);
        assert_eq!(none, (0, 0, 0));
        // Steps 2..4 find the range the previous update left, held (step 1 has none yet).
        assert_eq!(used, (3, 0, 0));
        assert!(without == with, "hints changed the training");
    }

    #[test]
    fn bit_identical_to_burn_adam() {
        same_as_burn(None, 3, 2);
        same_as_burn(Some(0.05), 3, 2);
        // Large enough for the parallel split.
        same_as_burn(None, 512, 300);
    }

    #[test]
    fn first_step_moves_each_weight_by_lr_against_its_gradient_sign() {
        // Adam's first step is lr·g/(|g| + ε'), i.e. ≈ lr·sign(g): hand-checkable.
        let device = Device::flex();
        let p = Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 1.0, 1.0], [3]), &device);
        let g = Tensor::<1>::from_data(TensorData::new(vec![2.0f32, -0.5, 0.0], [3]), &device);
        let adam = FusedAdam::new(0.9, 0.999, 1e-8, None);
        let (p, state) = adam.step(0.1, p, g, None);
        let p: Vec<f32> = p.into_data().iter::<f32>().collect();
        assert!((p[0] - 0.9).abs() < 1e-6, "{p:?}");
        assert!((p[1] - 1.1).abs() < 1e-6, "{p:?}");
        assert_eq!(p[2], 1.0);
        assert_eq!(state.unwrap().momentum.time, 1);
    }
}
