//! `Quantizer`: one operand's fake quantization — its spec plus the state that finds its range
//! (an observer, a learned LSQ step or a learned PACT clip) — as a burn module whose state is
//! saved in records.

use std::sync::{Arc, Mutex};

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Device, Shape, Tensor, TensorData};

use crate::error::QuantError;
use crate::observer::{HostScalar, RangeObserver};
use crate::qparams::{
    ColumnRanges, HostCopy, MIN_SCALE, QuantLayout, qparams_from_range, scale_from_range,
};
use crate::range_hint::{Outcome, Taken};
use crate::spec::{Estimator, Granularity, QuantSpec};
use crate::ste::{
    affine_codes, affine_codes_opt, fake_quantize, fake_quantize_affine_with, lsq_codes,
    lsq_quantize, pact_clip,
};

/// Integer codes of a tensor (row-major, the tensor's own shape) with the per-scale scales and
/// zero-points (layout order) they dequantize with: `x ≈ (code - zp)·scale`.
pub type IntCodes = (Vec<i32>, Vec<f32>, Vec<i32>);

/// What a quantizer quantizes: a weight of a fixed shape, or activations of any shape.
#[derive(Debug, Clone)]
enum Operand {
    Weight(QuantLayout),
    Activation,
}

/// The one-shot data an LSQ step is lazily initialized from: filled by the first forward,
/// consumed by the step parameter's lazy initializer.
#[derive(Clone, Default)]
struct LazyStep(Arc<Mutex<Option<Vec<f32>>>>);

impl core::fmt::Debug for LazyStep {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("LazyStep")
    }
}

impl LazyStep {
    fn put(&self, values: Vec<f32>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(values);
    }

    fn take(&self) -> Option<Vec<f32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The quantization parameters of one forward: flat per-scale (affine, off the autodiff graph;
/// no zero-point for symmetric specs) or broadcastable onto the layout view (LSQ).
enum QParams {
    Affine {
        scale: Tensor<1>,
        zero_point: Option<Tensor<1>>,
    },
    Lsq {
        step: Tensor<4>,
        grad_scale: f32,
    },
    Pact {
        alpha: Tensor<1>,
        scale: Tensor<1>,
    },
}

/// Fake quantization of one operand: spec + range state + an on/off switch.
///
/// State in the record: the observer's ranges, update count and frozen flag; the LSQ step or
/// PACT alpha (trained `Param`s); and the fake-quant enable flag (a [`HostScalar`]: saved, kept
/// in `valid()` — a `Param<Flag>` is neither — and read without a device sync on every
/// forward). The spec and the weight layout are configuration: rebuild the quantizer from the
/// same spec before `load_record`.
///
/// LSQ steps are initialized lazily from the first tensor the quantizer sees (enabled, or
/// observing), as the paper does: `2·mean|x|/sqrt(Qp)` per scale. Until then the step is a lazy
/// `Param`; anything that reads it first (`valid()`, `into_record()`) initializes it to a
/// fallback instead — a `±1` range for weights, `±pact_init` for activations.
#[derive(Module, Debug)]
pub struct Quantizer {
    /// Range observer (minmax / moving_average / percentile with a fixed layout).
    observer: Option<RangeObserver>,
    /// LSQ step sizes, one per scale (flattened in layout order).
    step: Option<Param<Tensor<1>>>,
    /// PACT clip, one element.
    alpha: Option<Param<Tensor<1>>>,
    /// 1.0 when fake quantization is on, 0.0 when the forward is the identity.
    enabled: HostScalar,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    operand: Operand,
    #[module(skip)]
    lazy_step: LazyStep,
    /// LSQ gradient scale for weights: `1/sqrt(N·Qp)`, N = elements per scale.
    #[module(skip)]
    weight_grad_scale: f32,
}

fn flat(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

impl Quantizer {
    /// A quantizer for a weight of shape `weight_dims` whose output-channel axis is
    /// `channel_axis` (1 for burn's `Linear` `[d_in, d_out]`, 0 for `Conv2d` `[out, in, kh, kw]`).
    ///
    /// `spec.axis` overrides the layer's axis: for per_channel it is the channel axis; for
    /// per_group the input axis the groups run along, by default the first axis that is not
    /// the channel axis (0 for `Linear`, 1 for `Conv2d`). PACT is rejected (it clips
    /// activations; use LSQ for a learned weight range).
    pub fn for_weight(
        spec: &QuantSpec,
        weight_dims: &[usize],
        channel_axis: usize,
        device: &Device,
    ) -> Result<Self, QuantError> {
        spec.validate()?;
        if spec.estimator == Estimator::Pact {
            return Err(QuantError::invalid(
                "estimator",
                "pact",
                "pact learns an activation clip; use lsq for a learned weight range",
            ));
        }
        let layout = Self::weight_layout(spec, weight_dims, channel_axis)?;
        let n = layout.num_scales();
        let qp = spec.qrange().1 as f32;
        let lazy_step = LazyStep::default();
        let (observer, step) = match spec.estimator {
            Estimator::Lsq => (
                None,
                Some(lazy_step_param(n, 1.0 / qp, lazy_step.clone(), device)),
            ),
            _ => (Some(RangeObserver::new(spec, n, device)?), None),
        };
        Ok(Self {
            observer,
            step,
            alpha: None,
            enabled: HostScalar::new(1.0, device),
            spec: spec.clone(),
            weight_grad_scale: 1.0 / (layout.per_scale() as f32 * qp).sqrt(),
            operand: Operand::Weight(layout),
            lazy_step,
        })
    }

    /// The layout a weight quantizer for `spec` uses on a weight of `weight_dims` (so an exported
    /// weight's scales can be mapped back onto its codes).
    pub fn weight_layout(
        spec: &QuantSpec,
        weight_dims: &[usize],
        channel_axis: usize,
    ) -> Result<QuantLayout, QuantError> {
        let axis = match spec.granularity {
            Granularity::PerChannel => spec.axis.unwrap_or(channel_axis),
            Granularity::PerGroup => spec.axis.unwrap_or(if channel_axis == 0 { 1 } else { 0 }),
            _ => 0,
        };
        QuantLayout::for_spec(spec, weight_dims, axis)
    }

    /// A quantizer for activations of any shape: `per_tensor` (any estimator) or `per_token`
    /// (dynamic: each token's range from the tensor itself, so `minmax` only).
    pub fn for_activation(spec: &QuantSpec, device: &Device) -> Result<Self, QuantError> {
        spec.validate()?;
        match spec.granularity {
            Granularity::PerTensor => {}
            Granularity::PerToken if spec.estimator == Estimator::MinMax => {}
            Granularity::PerToken => {
                return Err(QuantError::invalid(
                    "estimator",
                    spec.estimator.name(),
                    "per_token activation ranges are dynamic (taken from each input): use minmax",
                ));
            }
            g => {
                return Err(QuantError::invalid(
                    "granularity",
                    g.name(),
                    "activation quantizers are per_tensor or per_token (the number of channels \
                     of an activation is not known in advance)",
                ));
            }
        }
        let qp = spec.qrange().1 as f32;
        let lazy_step = LazyStep::default();
        let dynamic = spec.granularity == Granularity::PerToken;
        let (observer, step, alpha) = match spec.estimator {
            Estimator::Lsq => {
                let fallback = spec.pact_init as f32 / qp;
                let step = lazy_step_param(1, fallback, lazy_step.clone(), device);
                (None, Some(step), None)
            }
            Estimator::Pact => {
                let alpha = Tensor::full([1], spec.pact_init, device);
                (None, None, Some(Param::from_tensor(alpha)))
            }
            _ if dynamic => (None, None, None),
            _ => (Some(RangeObserver::new(spec, 1, device)?), None, None),
        };
        Ok(Self {
            observer,
            step,
            alpha,
            enabled: HostScalar::new(1.0, device),
            spec: spec.clone(),
            operand: Operand::Activation,
            lazy_step,
            weight_grad_scale: 1.0,
        })
    }

    /// The spec this quantizer was built from.
    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }

    /// The fixed layout of a weight quantizer (`None` for activations).
    pub fn layout(&self) -> Option<&QuantLayout> {
        match &self.operand {
            Operand::Weight(layout) => Some(layout),
            Operand::Activation => None,
        }
    }

    /// The range observer, if this quantizer observes its range.
    pub fn observer(&self) -> Option<&RangeObserver> {
        self.observer.as_ref()
    }

    /// Turns fake quantization on or off (off: `forward` is the identity, observers still
    /// observe when asked — calibrate first, quantize later).
    pub fn set_enabled(mut self, enabled: bool) -> Self {
        self.enabled = self.enabled.with_value(enabled as u8 as f32);
        self
    }

    /// Whether fake quantization is on (a host value: no device sync).
    pub fn is_enabled(&self) -> bool {
        self.enabled.get() > 0.5
    }

    /// Stops the observer from updating (saved). Learned ranges are unaffected: stop their
    /// training with burn's `Module::no_grad`. (Not named `freeze`: that is `Module::freeze`.)
    pub fn freeze_observer(mut self) -> Self {
        self.observer = self.observer.map(RangeObserver::freeze_observer);
        self
    }

    /// Whether the observer stopped updating (`false` without an observer).
    pub fn is_observer_frozen(&self) -> bool {
        self.observer.as_ref().is_some_and(RangeObserver::is_frozen)
    }

    /// Observes `x` if `observe` (observer estimators), then fake-quantizes it if enabled.
    ///
    /// `observe` is the caller's "this is a training step" switch: pass `true` in training
    /// forwards, `false` in evaluation. An observer with no data yet quantizes with `x`'s own
    /// range. Gradients: clipped STE wrt `x`; LSQ/PACT also train their step/clip.
    ///
    /// # Panics
    /// If a weight quantizer gets a tensor of another shape than it was built for.
    pub fn forward<const D: usize>(&self, x: Tensor<D>, observe: bool) -> Tensor<D> {
        let enabled = self.is_enabled();
        if (!enabled && !observe) || x.shape().num_elements() == 0 {
            return x;
        }
        let layout = self.layout_for(&x.dims());
        // On the CPU backend one host copy of `x` feeds the observer's reduction and the fused
        // fake-quant kernel (affine estimators only; learned ones use burn's ops throughout).
        let affine = self.step.is_none() && self.alpha.is_none();
        let host = if affine { HostCopy::of(&x) } else { None };
        if enabled
            && let Some(host) = &host
            && let Some(y) = self.forward_host(&x, host, &layout, observe)
        {
            return y;
        }
        if observe && let Some(observer) = &self.observer {
            observer.observe_with(x.clone(), host.as_ref(), &layout);
        }
        self.init_step(&x, &layout);
        if !enabled {
            return x;
        }
        let (qmin, qmax) = self.spec.qrange();
        match self.qparams(&x, &layout, host.as_ref()) {
            QParams::Affine { scale, zero_point } => {
                affine_forward(&layout, x, host, scale, zero_point, qmin, qmax)
            }
            QParams::Lsq { step, grad_scale } => {
                layout.unview(lsq_quantize(layout.view(x), step, qmin, qmax, grad_scale))
            }
            QParams::Pact { alpha, scale } => {
                let y = pact_clip(x, alpha, self.spec.signed);
                let scale: Tensor<D> = scale.reshape([1; D]);
                let zero_point = scale.zeros_like();
                fake_quantize(y, scale, zero_point, qmin, qmax)
            }
        }
    }

    /// The trained parameters: the LSQ step sizes and the PACT clip `alpha` (each `None` when
    /// this estimator has none, or the LSQ step is not initialized yet). Their `.grad(..)` is
    /// what the optimizer sees.
    pub fn trained_params(&self) -> (Option<Tensor<1>>, Option<Tensor<1>>) {
        (
            self.step.as_ref().map(|p| p.val()),
            self.alpha.as_ref().map(|p| p.val()),
        )
    }

    /// Observing and fake quantization on host values, for an affine observer (min-max or
    /// moving average) on the CPU with scales that broadcast in `x`'s own shape (per tensor, per
    /// channel): the batch range from one pass over `x` (or from the optimizer's range hint,
    /// `crate::range_hint`, for a per-channel `Linear` weight), the observer's update and the
    /// scales and zero-points as host arithmetic that gives the tensor ops' bits
    /// ([`RangeObserver::combine_values`], [`crate::qparams::host_scale_from_range`]), then the
    /// fused pass. The observer is updated last, once the output is made.
    ///
    /// A range hint is checked against the values in the quantizing pass; one that does not
    /// check out is replaced by the actual range that pass found and the weight is quantized
    /// again. `None`, with nothing changed, when this path does not apply (another layout or
    /// estimator, a value that is not finite): the caller takes the tensor path.
    fn forward_host<const D: usize>(
        &self,
        x: &Tensor<D>,
        host: &HostCopy,
        layout: &QuantLayout,
        observe: bool,
    ) -> Option<Tensor<D>> {
        let observer = self.observer.as_ref()?;
        let dims = layout.native_stat_dims::<D>()?;
        if !matches!(
            self.spec.estimator,
            Estimator::MinMax | Estimator::MovingAverage
        ) {
            return None;
        }
        let observing = observe && !observer.is_frozen();
        let old = observer.range_values();
        let taken = if observing {
            self.range_hint(layout, host)
        } else {
            None
        };
        let (hint, held) = match taken {
            Some(taken) => (Some(taken.range), taken.held),
            None => (None, false),
        };
        // The range to quantize with, from this step's statistic `batch`: the observer's update
        // when observing, else its range, else (no data yet) the tensor's own.
        let range = |batch: Option<ColumnRanges>| match (observing, &old) {
            (true, _) => observer.combine_values(old.as_ref(), batch?),
            (false, Some(old)) => Some(old.clone()),
            (false, None) => batch,
        };
        let batch = match (&hint, observing || old.is_none()) {
            (Some(hint), _) => Some(hint.clone()),
            (None, true) => Some(layout.min_max_values(host)?),
            (None, false) => None,
        };
        let mut new = range(batch)?;
        // A held hint is the range of these very values (see `range_hint`); another is checked
        // in the quantizing pass.
        let check = match &hint {
            Some((min, max)) if !held => Some((&min[..], &max[..])),
            _ => None,
        };
        let y = match self.quantize_values(x, host, &new, dims, check) {
            Some(Ok(y)) => {
                if hint.is_some() {
                    crate::range_hint::record(if held {
                        Outcome::Held
                    } else {
                        Outcome::Checked
                    });
                }
                y
            }
            Some(Err(actual)) if hint.is_some() => {
                // A stale hint: this step's actual range (from that pass, or a sweep when it
                // met a NaN or a zero), and the weight quantized again.
                crate::range_hint::record(Outcome::Failed);
                let actual = match actual {
                    Some(actual) => Some(actual),
                    None => layout.min_max_values(host),
                };
                new = range(actual)?;
                self.quantize_values(x, host, &new, dims, None)?.ok()?
            }
            _ => return None,
        };
        if observing {
            observer.store_values(new.0, new.1);
        }
        #[cfg(test)]
        tests::HOST_PATH.with(|n| n.set(n.get() + 1));
        Some(y)
    }

    /// The fused fake-quant pass with the scales and zero-points of the host `range` (`None`
    /// when a value is not finite); see [`crate::ste::fake_quantize_affine_values`].
    fn quantize_values<const D: usize>(
        &self,
        x: &Tensor<D>,
        host: &HostCopy,
        range: &(Vec<f32>, Vec<f32>),
        dims: [usize; D],
        check: Option<(&[f32], &[f32])>,
    ) -> Option<Result<Tensor<D>, Option<ColumnRanges>>> {
        let (scale, zero_point) =
            crate::qparams::host_scale_from_range(&range.0, &range.1, &self.spec)?;
        let (qmin, qmax) = self.spec.qrange();
        Some(crate::ste::fake_quantize_affine_values(
            x.clone(),
            host.clone(),
            &scale,
            zero_point.as_deref(),
            dims,
            qmin,
            qmax,
            check,
        ))
    }

    /// The optimizer's per-column range of a per-channel `Linear` weight `[rows, cols]`, if it
    /// left one for this very buffer (asking for such ranges from now on).
    fn range_hint(&self, layout: &QuantLayout, host: &HostCopy) -> Option<Taken> {
        let (Operand::Weight(_), &[rows, cols]) = (&self.operand, layout.shape()) else {
            return None;
        };
        if self.spec.granularity != Granularity::PerChannel
            || layout.view_shape() != [rows, cols, 1, 1]
        {
            return None;
        }
        crate::range_hint::want(host.values(), cols);
        crate::range_hint::take(host.values(), cols)
    }

    /// Current scales and zero-points, flattened per channel / group (layout order); `None`
    /// while unknown (no observation, LSQ step not initialized, or dynamic per-token ranges).
    pub fn scale_zero_point(&self) -> Option<(Tensor<1>, Tensor<1>)> {
        if let Some(observer) = &self.observer {
            let (min, max) = observer.range()?;
            return Some(qparams_from_range(min, max, &self.spec));
        }
        if let Some(step) = &self.step {
            if !step.is_initialized() {
                return None;
            }
            let s = step.val().detach().clamp_min(MIN_SCALE);
            let zp = s.zeros_like();
            return Some((s, zp));
        }
        if let Some(alpha) = &self.alpha {
            let s = alpha.val().detach().div_scalar(self.spec.qrange().1);
            let zp = s.zeros_like();
            return Some((s, zp));
        }
        None
    }

    /// The integer codes, scales and zero-points that the fake-quant forward uses for `w` (not
    /// observing): `(code - zp)·scale` is bit-for-bit the forward's output, so integer inference
    /// reproduces the fake-quant model. Codes are in `w`'s row-major order, scales and
    /// zero-points in layout order (a single one for per-tensor and PACT).
    pub fn quantize_to_int<const D: usize>(&self, w: Tensor<D>) -> IntCodes {
        let w = w.detach();
        let layout = self.layout_for(&w.dims());
        self.init_step(&w, &layout);
        let (qmin, qmax) = self.spec.qrange();
        let (codes, scale, zero_point): (Tensor<D>, Tensor<1>, Tensor<1>) =
            match self.qparams(&w, &layout, None) {
                QParams::Affine { scale, zero_point } => {
                    let zp = zero_point.clone().unwrap_or_else(|| scale.zeros_like());
                    let codes = affine_int_codes(&layout, w, scale.clone(), zero_point, qmin, qmax);
                    (codes, scale, zp)
                }
                QParams::Lsq { step, .. } => {
                    let n = layout.num_scales();
                    let codes = lsq_codes(layout.view(w), step.clone(), qmin, qmax);
                    let step = step.reshape([n]);
                    let zp = step.zeros_like();
                    (layout.unview(codes), step, zp)
                }
                QParams::Pact { alpha, scale } => {
                    let y = pact_clip(w, alpha.detach(), self.spec.signed);
                    let s: Tensor<D> = scale.clone().reshape([1; D]);
                    let codes = affine_codes(y, s.clone(), s.zeros_like(), qmin, qmax);
                    let zp = scale.zeros_like();
                    (codes, scale, zp)
                }
            };
        let codes = to_vec(codes).into_iter().map(|c| c as i32).collect();
        let zero_points = to_vec(zero_point).into_iter().map(|z| z as i32).collect();
        (codes, to_vec(scale), zero_points)
    }

    /// The layout for a tensor of `dims`: the fixed one of a weight, or a fresh one for
    /// activations.
    fn layout_for(&self, dims: &[usize]) -> QuantLayout {
        match &self.operand {
            Operand::Weight(layout) => {
                assert_eq!(
                    layout.shape(),
                    dims,
                    "weight quantizer built for shape {:?} got a tensor of shape {dims:?}",
                    layout.shape()
                );
                layout.clone()
            }
            Operand::Activation => QuantLayout::new(dims, self.spec.granularity, 0, None)
                .expect("activation layouts (per_tensor, per_token) fit any non-empty shape"),
        }
    }

    /// Hands the LSQ step its initial value `2·mean|x|/sqrt(Qp)` (per scale) if it has none yet.
    fn init_step<const D: usize>(&self, x: &Tensor<D>, layout: &QuantLayout) {
        let Some(step) = &self.step else { return };
        if step.is_initialized() {
            return;
        }
        let qp = self.spec.qrange().1 as f32;
        let init = layout
            .rows(x.clone().without_autodiff())
            .abs()
            .mean_dim(1)
            .mul_scalar(2.0 / qp.sqrt())
            .clamp_min(MIN_SCALE);
        self.lazy_step.put(to_vec(init));
    }

    /// The quantization parameters for `x` right now.
    fn qparams<const D: usize>(
        &self,
        x: &Tensor<D>,
        layout: &QuantLayout,
        host: Option<&HostCopy>,
    ) -> QParams {
        if let Some(step) = &self.step {
            let step = layout.broadcast(step.val().clamp_min(MIN_SCALE));
            let grad_scale = match self.operand {
                Operand::Weight(_) => self.weight_grad_scale,
                Operand::Activation => {
                    // The paper's N for activations is the number of features of one example.
                    let dims = x.dims();
                    let per_example = if D >= 2 {
                        dims[1..].iter().product::<usize>()
                    } else {
                        dims[0]
                    };
                    1.0 / (per_example as f32 * self.spec.qrange().1 as f32).sqrt()
                }
            };
            return QParams::Lsq { step, grad_scale };
        }
        if let Some(alpha) = &self.alpha {
            let alpha = alpha.val();
            let scale = alpha.clone().detach().div_scalar(self.spec.qrange().1);
            return QParams::Pact { alpha, scale };
        }
        // Ranges and qparams on the plain backend: constants of the forward, never in a graph.
        let (min, max) = match self.observer.as_ref().and_then(RangeObserver::range) {
            Some((min, max)) => (min.without_autodiff(), max.without_autodiff()),
            None => host
                .and_then(|host| layout.min_max_host(host))
                .unwrap_or_else(|| layout.min_max(x.clone().without_autodiff())),
        };
        let (scale, zero_point) = scale_from_range(min, max, &self.spec);
        QParams::Affine { scale, zero_point }
    }
}

/// Affine fake quantization of `x` with flat per-scale qparams: broadcast in `x`'s own shape
/// where the layout allows (no reshapes of the operand), else through the rank-4 view.
fn affine_forward<const D: usize>(
    layout: &QuantLayout,
    x: Tensor<D>,
    host: Option<HostCopy>,
    scale: Tensor<1>,
    zero_point: Option<Tensor<1>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    match layout.native_stat_dims::<D>() {
        Some(dims) => fake_quantize_affine_with(
            x,
            host,
            scale.reshape(dims),
            zero_point.map(|z| z.reshape(dims)),
            qmin,
            qmax,
        ),
        // (the view is a reshape: the host copy's row-major values are the view's too)
        None => layout.unview(fake_quantize_affine_with(
            layout.view(x),
            host,
            layout.broadcast(scale),
            zero_point.map(|z| layout.broadcast(z)),
            qmin,
            qmax,
        )),
    }
}

/// The codes [`affine_forward`] dequantizes, through the same broadcast path (so bit-exact).
fn affine_int_codes<const D: usize>(
    layout: &QuantLayout,
    x: Tensor<D>,
    scale: Tensor<1>,
    zero_point: Option<Tensor<1>>,
    qmin: i32,
    qmax: i32,
) -> Tensor<D> {
    match layout.native_stat_dims::<D>() {
        Some(dims) => affine_codes_opt(
            x,
            scale.reshape(dims),
            zero_point.map(|z| z.reshape(dims)),
            qmin,
            qmax,
        ),
        None => layout.unview(affine_codes_opt(
            layout.view(x),
            layout.broadcast(scale),
            zero_point.map(|z| layout.broadcast(z)),
            qmin,
            qmax,
        )),
    }
}

/// A trainable step of `n` scales whose value is decided on first use: the data left in `cell`
/// by the first forward, else `fallback`.
fn lazy_step_param(n: usize, fallback: f32, cell: LazyStep, device: &Device) -> Param<Tensor<1>> {
    Param::uninitialized(
        ParamId::new(),
        move |device, require_grad| {
            let values = cell.take().unwrap_or_else(|| vec![fallback; n]);
            flat(values, device).set_require_grad(require_grad)
        },
        device.clone(),
        true,
        Shape::new([n]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ste::tests::{assert_close, t1, t2, vals};
    use burn::store::ModuleRecord;
    use burn::tensor::TensorData;

    fn round_trip(q: Quantizer, fresh: Quantizer) -> Quantizer {
        let bytes = q.into_record().into_bytes().unwrap();
        fresh.load_record(ModuleRecord::from_bytes(bytes).unwrap())
    }

    fn spec(estimator: Estimator, g: Granularity) -> QuantSpec {
        QuantSpec {
            estimator,
            granularity: g,
            ..QuantSpec::default()
        }
    }

    #[test]
    fn activation_minmax_observes_then_quantizes() {
        let d = Device::flex();
        let q = Quantizer::for_activation(&QuantSpec::with_bits(4), &d).unwrap();
        assert!(q.scale_zero_point().is_none());
        // int4 symmetric: first batch amax 3.75 -> s = 0.5
        let y = q.forward(t1(&[-3.75, 1.3, 0.2], &d), true);
        assert_close(&vals(y), &[-4.0, 1.5, 0.0], 1e-6);
        // not observing: the observed range (s = 0.5) is used, 10 is clipped to 7·0.5
        let y = q.forward(t1(&[10.0, 0.74], &d), false);
        assert_close(&vals(y), &[3.5, 0.5], 1e-6);
        let (s, zp) = q.scale_zero_point().unwrap();
        assert_eq!((vals(s), vals(zp)), (vec![0.5], vec![0.0]));
        assert_eq!(q.observer().unwrap().updates(), 1);
        // disabled: identity, but still observes
        let q = q.set_enabled(false);
        let y = q.forward(t1(&[7.5, 0.1], &d), true);
        assert_eq!(vals(y), vec![7.5, 0.1]);
        assert_eq!(q.observer().unwrap().updates(), 2);
        let (s, _) = q.scale_zero_point().unwrap();
        assert_eq!(vals(s), vec![1.0]);
    }

    #[test]
    fn weight_per_channel_default_axis_and_codes_reproduce_forward() {
        let d = Device::flex();
        let sp = QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            ..QuantSpec::default()
        };
        // Linear-style [d_in = 3, d_out = 2], channel axis 1
        let w = t2(&[7.5, 0.3, -2.0, -0.75, 1.2, 0.1], [3, 2], &d);
        let q = Quantizer::for_weight(&sp, &[3, 2], 1, &d).unwrap();
        let y = vals(q.forward(w.clone(), true));
        // col 0 amax 7.5 -> s = 1: 7.5 -> 7, -2 -> -2, 1.2 -> 1
        // col 1 amax 0.75 -> s = 0.1: 0.3 -> 3, -0.75 -> -7.5 -> -8, 0.1 -> 1
        assert_close(&y, &[7.0, 0.3, -2.0, -0.8, 1.0, 0.1], 1e-6);
        let (codes, scales, zps) = q.quantize_to_int(w);
        assert_eq!(codes, vec![7, 3, -2, -8, 1, 1]);
        assert_close(&scales, &[1.0, 0.1], 1e-7);
        assert_eq!(zps, vec![0, 0]);
        for (i, c) in codes.iter().enumerate() {
            let s = scales[i % 2];
            assert_eq!(y[i], (*c - zps[i % 2]) as f32 * s, "element {i}");
        }
    }

    thread_local! {
        /// Forwards that took the host path on this thread.
        pub(super) static HOST_PATH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn bits(t: Tensor<1>) -> Vec<u32> {
        vals(t).iter().map(|v| v.to_bits()).collect()
    }

    /// Output, weight-gradient and observer bits of one training forward of `q` on the tracked
    /// weight `w` (backward of `Σ y·g` with a non-uniform `g`).
    fn hinted_run(q: &Quantizer, w: Tensor<2>) -> [Vec<u32>; 4] {
        let d = w.device();
        let dims = w.dims();
        let y = q.forward(w.clone(), true);
        let n = dims[0] * dims[1];
        let g: Vec<f32> = (0..n).map(|i| (i % 7) as f32 - 2.5).collect();
        let g = Tensor::<2>::from_data(TensorData::new(g, dims), &d);
        let grads = (y.clone() * g).sum().backward();
        let dw = w.grad(&grads).map(|t| t.reshape([n])).unwrap();
        let (min, max) = q.observer().unwrap().range().unwrap();
        let flat = |t: Tensor<1>| bits(t.without_autodiff());
        [
            flat(y.reshape([n]).without_autodiff()),
            bits(dw),
            flat(min),
            flat(max),
        ]
    }

    /// The host path of an observing quantizer (range, observer update, scales on host values)
    /// gives the bits of the tensor path: an observer fed through burn's ops and `fake_quantize`
    /// with `qparams_from_range` of its range, step after step, per tensor and per channel,
    /// min-max and moving average, with ReLU-style zeros and a negative zero in the data.
    #[test]
    fn host_observer_path_matches_the_tensor_ops_bit_for_bit() {
        use crate::qparams::qparams_from_range;
        let d = Device::flex();
        // Per tensor, the host reduction needs at least 1024 values.
        let dims = [32, 48];
        for (granularity, estimator, momentum, symmetric, nbits) in [
            (
                Granularity::PerTensor,
                Estimator::MovingAverage,
                0.1,
                false,
                8,
            ),
            (Granularity::PerTensor, Estimator::MinMax, 0.1, false, 8),
            (
                Granularity::PerChannel,
                Estimator::MovingAverage,
                0.37,
                true,
                4,
            ),
            (Granularity::PerChannel, Estimator::MinMax, 0.1, true, 4),
            (
                Granularity::PerChannel,
                Estimator::MovingAverage,
                1.0,
                false,
                3,
            ),
        ] {
            let sp = QuantSpec {
                bits: nbits,
                granularity,
                estimator,
                momentum,
                symmetric,
                ..QuantSpec::default()
            };
            let q = if granularity == Granularity::PerTensor {
                Quantizer::for_activation(&sp, &d).unwrap()
            } else {
                Quantizer::for_weight(&sp, &dims, 1, &d).unwrap()
            };
            let layout = q.layout_for(&dims);
            let reference = RangeObserver::new(&sp, layout.num_scales(), &d).unwrap();
            for step in 0..4 {
                let mut v: Vec<f32> = (0..1536)
                    .map(|i| {
                        (((i * 7919 + step * 131) % 1009) as f32 / 97.0 - 4.0) * (1.0 + step as f32)
                    })
                    .collect();
                if granularity == Granularity::PerTensor {
                    v.iter_mut().for_each(|x| *x = x.max(0.0));
                }
                v[5] = -0.0;
                let x = t2(&v, dims, &d);
                let before = HOST_PATH.with(std::cell::Cell::get);
                let y = q.forward(x.clone(), true);
                assert_eq!(
                    HOST_PATH.with(std::cell::Cell::get),
                    before + 1,
                    "host path"
                );
                reference.observe(x.clone(), &layout);
                let (min, max) = reference.range().unwrap();
                let (s, z) = qparams_from_range(min.clone(), max.clone(), &sp);
                let stat = layout.native_stat_dims::<2>().unwrap();
                let (qmin, qmax) = sp.qrange();
                let want = fake_quantize(x, s.reshape(stat), z.reshape(stat), qmin, qmax);
                let b = |t: Tensor<2>| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                let case = format!("{granularity:?} {estimator:?} step {step}");
                assert_eq!(b(y), b(want), "output, {case}");
                let (hmin, hmax) = q.observer().unwrap().range().unwrap();
                assert_eq!(bits(hmin), bits(min), "observer min, {case}");
                assert_eq!(bits(hmax), bits(max), "observer max, {case}");
            }
        }
    }

    /// A weight whose range hint the optimizer left (`range_hint`) is quantized in one pass
    /// with the same output, gradient and observer bits as without it: a held hint
    /// (`publish_for`) as it is, another checked in that pass; a stale hint or a NaN among the
    /// values falls back to the sweep, again with the same bits.
    #[test]
    fn range_hints_change_no_bit_and_stale_ones_fall_back() {
        use crate::range_hint::set_enabled_on_this_thread as hints;
        use crate::range_hint::{column_ranges, outcomes_on_this_thread, publish, publish_for};
        // 37 rows of 20 columns: two 8-lane blocks and a scalar tail per row.
        let dims = [37, 20];
        let base: Vec<f32> = (0..740)
            .map(|i| ((i * 7919) % 401) as f32 / 97.0 - 2.0)
            .collect();
        for (estimator, symmetric) in [(Estimator::MinMax, true), (Estimator::MovingAverage, false)]
        {
            let sp = QuantSpec {
                bits: 4,
                granularity: Granularity::PerChannel,
                estimator,
                momentum: 0.5,
                symmetric,
                ..QuantSpec::default()
            };
            let d = Device::flex().autodiff();
            let plain = Quantizer::for_weight(&sp, &dims, 1, &d).unwrap();
            let hinted = Quantizer::for_weight(&sp, &dims, 1, &d).unwrap();
            for step in 0..5 {
                let mut w: Vec<f32> = base.iter().map(|v| v * (1.0 + step as f32 / 8.0)).collect();
                // step 2: a held hint; step 3: a stale hint (one column's max is off); step 4: a
                // NaN in the values.
                if step == 4 {
                    w[45] = f32::NAN;
                }
                let tensor =
                    || Tensor::<2>::from_data(TensorData::new(w.clone(), dims), &d).require_grad();
                hints(false);
                let want = hinted_run(&plain, tensor());
                hints(true);
                let before = outcomes_on_this_thread();
                // The hint must be for the very buffer the quantizer reads: publish it from
                // inside the forward's input, as the optimizer would for the weight it wrote.
                let t = tensor();
                let host = HostCopy::of(&t).unwrap();
                let clean: Vec<f32> = w
                    .iter()
                    .map(|v| if v.is_nan() { 0.5 } else { *v })
                    .collect();
                let (min, mut max) = column_ranges(&clean, dims[1]);
                if step == 3 {
                    max[3] += 1.0;
                }
                if step == 2 {
                    drop(host);
                    publish_for(&t.clone().inner(), min, max);
                } else {
                    publish(host.values(), min, max);
                }
                let got = hinted_run(&hinted, t);
                let after = outcomes_on_this_thread();
                let mut expect = before;
                match step {
                    0 | 1 => expect.checked += 1,
                    2 => expect.held += 1,
                    _ => expect.failed += 1,
                }
                assert_eq!(after, expect, "{estimator:?} step {step}");
                // Same output, gradient and observer state as the quantizer without hints.
                for (part, (g, w)) in ["output", "dW", "min", "max"]
                    .iter()
                    .zip(got.iter().zip(&want))
                {
                    let first = g.iter().zip(w).position(|(a, b)| a != b);
                    assert!(
                        g.len() == w.len() && first.is_none(),
                        "{estimator:?} step {step}: {part} differs at {first:?}"
                    );
                }
            }
        }
    }

    /// A held hint (`publish_for`) keeps its buffer from being written in place: a weight
    /// updated after the hint was left is a new buffer, which the hint does not describe, and
    /// is quantized from its own range; `prepare_update` drops the hold, and the update is in
    /// place.
    #[test]
    fn held_hints_pin_their_buffer_and_prepare_update_drops_them() {
        use crate::flexops::HostBuffer;
        use crate::range_hint::{
            column_ranges, outcomes_on_this_thread, prepare_update, publish_for,
        };
        let dims = [16, 24];
        let sp = QuantSpec {
            bits: 4,
            granularity: Granularity::PerChannel,
            ..QuantSpec::default()
        };
        let d = Device::flex();
        let w: Vec<f32> = (0..16 * 24)
            .map(|i| ((i * 7919) % 389) as f32 / 97.0 - 2.0)
            .collect();
        let (min, max) = column_ranges(&w, dims[1]);
        let tensor = Tensor::<2>::from_data(TensorData::new(w.clone(), dims), &d);
        let addr = |t: &Tensor<2>| HostCopy::of(t).unwrap().values().as_ptr() as usize;
        let at = addr(&tensor);
        publish_for(&tensor, min.clone(), max.clone());
        // An in-place update of the only other handle: the held buffer is copied first.
        let mut buffer = HostBuffer::take(tensor).unwrap();
        buffer.values_mut().iter_mut().for_each(|v| *v *= 3.0);
        let updated: Tensor<2> = buffer.into_tensor();
        assert_ne!(addr(&updated), at, "a held buffer was written in place");
        let q = Quantizer::for_weight(&sp, &dims, 1, &d).unwrap();
        let fresh = Quantizer::for_weight(&sp, &dims, 1, &d).unwrap();
        let before = outcomes_on_this_thread();
        let y = vals(q.forward(updated.clone(), true));
        assert_eq!(
            outcomes_on_this_thread(),
            before,
            "no hint for the new buffer"
        );
        let want = {
            crate::range_hint::set_enabled_on_this_thread(false);
            let want = vals(fresh.forward(updated.clone(), true));
            crate::range_hint::set_enabled_on_this_thread(true);
            want
        };
        assert_eq!(y, want);
        // Released: the only handle's buffer is unshared again and updated in place.
        publish_for(&updated, min, max);
        let at = addr(&updated);
        assert_eq!(
            prepare_update(&updated),
            Some(24),
            "a quantizer read this buffer"
        );
        let mut buffer = HostBuffer::take(updated).unwrap();
        buffer.values_mut()[0] = 1.0;
        assert_eq!(
            addr(&buffer.into_tensor()),
            at,
            "a released buffer was copied"
        );
    }

    #[test]
    fn weight_per_group_asymmetric_codes_reproduce_forward_bit_exactly() {
        let d = Device::flex();
        let sp = QuantSpec {
            bits: 3,
            signed: false,
            symmetric: false,
            granularity: Granularity::PerGroup,
            group_size: Some(4),
            ..QuantSpec::default()
        };
        let (din, dout) = (8, 3);
        let ws: Vec<f32> = (0..din * dout)
            .map(|i| ((i * 7919) % 97) as f32 / 31.0 - 1.3)
            .collect();
        let w = t2(&ws, [din, dout], &d);
        let q = Quantizer::for_weight(&sp, &[din, dout], 1, &d).unwrap();
        assert_eq!(q.layout().unwrap().stat_shape(), [1, 2, 1, 3]);
        let y = vals(q.forward(w.clone(), true));
        let (codes, scales, zps) = q.quantize_to_int(w);
        assert_eq!((scales.len(), zps.len()), (6, 6));
        for (i, c) in codes.iter().enumerate() {
            assert!((0..=7).contains(c));
            // element (r, col) is in group (r / 4, col)
            let k = (i / dout) / 4 * dout + i % dout;
            assert_eq!(y[i], (*c - zps[k]) as f32 * scales[k], "element {i}");
        }
    }

    #[test]
    fn lsq_weight_initializes_from_data_and_trains_step() {
        let d = Device::flex().autodiff();
        let sp = QuantSpec {
            bits: 4,
            estimator: Estimator::Lsq,
            ..QuantSpec::default()
        };
        let ws = [0.5_f32, -1.0, 0.25, 2.0];
        let q = Quantizer::for_weight(&sp, &[2, 2], 1, &d).unwrap();
        assert!(q.scale_zero_point().is_none());
        let w = t2(&ws, [2, 2], &d).require_grad();
        let y = q.forward(w.clone(), true);
        // step = 2·mean|w|/sqrt(7) = 2·0.9375/sqrt(7)
        let s0 = 2.0 * 0.9375 / 7.0_f32.sqrt();
        let (s, _) = q.scale_zero_point().unwrap();
        assert_close(&vals(s), &[s0], 1e-6);
        let want: Vec<f32> = ws
            .iter()
            .map(|w| (w / s0).clamp(-8.0, 7.0).round_ties_even() * s0)
            .collect();
        assert_close(&vals(y.clone()), &want, 1e-6);
        let grads = y.clone().sum().backward();
        let step = q.step.as_ref().unwrap().val();
        let gs = vals(step.grad(&grads).expect("step is trained"))[0];
        // g = 1/sqrt(N·Qp), N = 4 elements per scale
        let g = 1.0 / (4.0_f32 * 7.0).sqrt();
        let by_hand: f32 = ws
            .iter()
            .map(|w| {
                let v = w / s0;
                if v < -8.0 {
                    -8.0
                } else if v > 7.0 {
                    7.0
                } else {
                    v.round_ties_even() - v
                }
            })
            .sum::<f32>()
            * g;
        assert!((gs - by_hand).abs() < 1e-5, "{gs} vs {by_hand}");
        let (codes, scales, _) = q.quantize_to_int(w);
        let y = vals(y);
        for (i, c) in codes.iter().enumerate() {
            assert_eq!(y[i], *c as f32 * scales[0]);
        }
    }

    #[test]
    fn lsq_activation_per_tensor_init_and_grad_scale() {
        let d = Device::flex().autodiff();
        let sp = QuantSpec {
            bits: 8,
            signed: false,
            estimator: Estimator::Lsq,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_activation(&sp, &d).unwrap();
        // [batch 2, features 2]; mean|x| = 1 -> step = 2/sqrt(255)
        let x = t2(&[0.0, 2.0, 1.0, 1.0], [2, 2], &d);
        let y = q.forward(x, true);
        let s0 = 2.0 / 255.0_f32.sqrt();
        assert_close(&vals(q.scale_zero_point().unwrap().0), &[s0], 1e-7);
        let grads = y.sum().backward();
        let gs = vals(q.step.as_ref().unwrap().val().grad(&grads).unwrap())[0];
        // g = 1/sqrt(2 features · 255)
        let g = 1.0 / (2.0_f32 * 255.0).sqrt();
        let by_hand: f32 = [0.0_f32, 2.0, 1.0, 1.0]
            .iter()
            .map(|x| (x / s0).round_ties_even() - x / s0)
            .sum::<f32>()
            * g;
        assert!((gs - by_hand).abs() < 1e-5, "{gs} vs {by_hand}");
    }

    #[test]
    fn pact_activation_trains_alpha_and_exports() {
        let d = Device::flex().autodiff();
        let sp = QuantSpec {
            bits: 2,
            signed: false,
            estimator: Estimator::Pact,
            pact_init: 3.0,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_activation(&sp, &d).unwrap();
        // alpha 3, uint2 [0, 3] -> s = 1
        let x = t1(&[-1.0, 0.4, 1.6, 2.9, 3.0, 7.0], &d).require_grad();
        let y = q.forward(x.clone(), true);
        assert_eq!(vals(y.clone()), vec![0.0, 0.0, 2.0, 3.0, 3.0, 3.0]);
        let grads = y.sum().backward();
        let alpha = q.alpha.as_ref().unwrap().val();
        assert_eq!(vals(alpha.grad(&grads).unwrap()), vec![2.0]);
        assert_eq!(
            vals(x.grad(&grads).unwrap()),
            vec![0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
        );
        let (codes, scales, zps) = q.quantize_to_int(x);
        assert_eq!(
            (codes, scales, zps),
            (vec![0, 0, 2, 3, 3, 3], vec![1.0], vec![0])
        );
    }

    #[test]
    fn per_token_activation_is_dynamic() {
        let d = Device::flex();
        let sp = QuantSpec {
            bits: 4,
            granularity: Granularity::PerToken,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_activation(&sp, &d).unwrap();
        assert!(q.observer().is_none());
        // tokens: amax 7.5 (s = 1) and 0.75 (s = 0.1)
        let y = q.forward(t2(&[7.5, -2.4, 0.75, -0.33], [2, 2], &d), true);
        assert_close(&vals(y), &[7.0, -2.0, 0.7, -0.3], 1e-6);
        assert!(q.scale_zero_point().is_none());
        let bad = QuantSpec {
            estimator: Estimator::MovingAverage,
            ..sp
        };
        let e = Quantizer::for_activation(&bad, &d).unwrap_err();
        assert_eq!(e.field(), "estimator");
    }

    #[test]
    fn constructor_errors_name_the_field() {
        let d = Device::flex();
        let e = Quantizer::for_activation(&spec(Estimator::MinMax, Granularity::PerChannel), &d)
            .unwrap_err();
        assert_eq!(e.field(), "granularity");
        let e = Quantizer::for_weight(
            &spec(Estimator::Pact, Granularity::PerTensor),
            &[2, 2],
            1,
            &d,
        )
        .unwrap_err();
        assert_eq!(e.field(), "estimator");
        let g = QuantSpec {
            group_size: Some(3),
            ..spec(Estimator::MinMax, Granularity::PerGroup)
        };
        let e = Quantizer::for_weight(&g, &[8, 4], 1, &d).unwrap_err();
        assert_eq!(e.field(), "group_size");
        assert!(e.to_string().contains('8'), "{e}");
        let e = Quantizer::for_weight(&QuantSpec::with_bits(1), &[8, 4], 1, &d).unwrap_err();
        assert_eq!(e.field(), "bits");
    }

    #[test]
    fn record_round_trip_restores_observer_enable_and_frozen() {
        let d = Device::flex();
        let sp = QuantSpec {
            momentum: 0.5,
            ..spec(Estimator::MovingAverage, Granularity::PerChannel)
        };
        let q = Quantizer::for_weight(&sp, &[2, 2], 0, &d).unwrap();
        q.forward(t2(&[1.0, -2.0, 0.5, 0.25], [2, 2], &d), true);
        q.forward(t2(&[3.0, -1.0, 0.0, 0.75], [2, 2], &d), true);
        let q = q.freeze_observer().set_enabled(false);
        let fresh = Quantizer::for_weight(&sp, &[2, 2], 0, &d).unwrap();
        assert!(fresh.is_enabled() && !fresh.is_observer_frozen());
        let loaded = round_trip(q, fresh);
        assert!(!loaded.is_enabled());
        assert!(loaded.is_observer_frozen());
        assert_eq!(loaded.observer().unwrap().updates(), 2);
        let (min, max) = loaded.observer().unwrap().range().unwrap();
        // row 0: [-2, 1] then [-1, 3] -> [-1.5, 2]; row 1: [0.25, 0.5] -> [0, 0.75] -> [0.125, 0.625]
        assert_close(&vals(min), &[-1.5, 0.125], 1e-6);
        assert_close(&vals(max), &[2.0, 0.625], 1e-6);
    }

    #[test]
    fn record_round_trip_restores_learned_step_and_alpha() {
        let d = Device::flex();
        let sp = QuantSpec {
            estimator: Estimator::Lsq,
            granularity: Granularity::PerChannel,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_weight(&sp, &[2, 3], 0, &d).unwrap();
        q.forward(t2(&[1.0, -1.0, 1.0, 0.1, 0.2, 0.3], [2, 3], &d), true);
        let want = vals(q.scale_zero_point().unwrap().0);
        let qp = 127.0_f32.sqrt();
        assert_close(&want, &[2.0 / qp, 0.4 / qp], 1e-7);
        let loaded = round_trip(q, Quantizer::for_weight(&sp, &[2, 3], 0, &d).unwrap());
        assert_eq!(vals(loaded.scale_zero_point().unwrap().0), want);

        let pact = QuantSpec {
            estimator: Estimator::Pact,
            signed: false,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_activation(&pact, &d).unwrap();
        let alpha = q.alpha.clone().unwrap().map(|a| a.add_scalar(1.5));
        let q = Quantizer {
            alpha: Some(alpha),
            ..q
        };
        let loaded = round_trip(q, Quantizer::for_activation(&pact, &d).unwrap());
        let (s, _) = loaded.scale_zero_point().unwrap();
        assert_close(&vals(s), &[7.5 / 255.0], 1e-7);
    }

    #[test]
    fn weight_observer_forward_has_clipped_ste_gradient() {
        let d = Device::flex().autodiff();
        // observe amax 1.5 -> int2 s = 1: inputs outside [-2.5, 1.5] get no gradient later
        let q = Quantizer::for_weight(&QuantSpec::with_bits(2), &[4], 0, &d).unwrap();
        q.forward(t1(&[1.5, -1.0, 0.0, 0.2], &d), true);
        let w = t1(&[1.4, 1.6, -2.5, -2.6], &d).require_grad();
        let y = q.forward(w.clone(), false);
        // codes round(1.4) = 1, round(1.6) = 2 -> clip, round(-2.5) = -2, round(-2.6) = -3 -> clip
        assert_eq!(vals(y.clone()), vec![1.0, 1.0, -2.0, -2.0]);
        let g = vals(w.grad(&y.sum().backward()).unwrap());
        assert_eq!(g, vec![1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn optimizer_updates_lsq_step_and_pact_alpha() {
        use burn::optim::{GradientsParams, SgdConfig};
        let d = Device::flex().autodiff();
        let sp = QuantSpec {
            bits: 4,
            estimator: Estimator::Lsq,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_weight(&sp, &[4], 0, &d).unwrap();
        let w = t1(&[0.5, -1.0, 0.25, 2.0], &d);
        let y = q.forward(w.clone(), true);
        let s0 = vals(q.scale_zero_point().unwrap().0)[0];
        let step = q.step.as_ref().unwrap().val();
        let grads = y.sum().backward();
        let gs = vals(step.grad(&grads).unwrap())[0];
        let grads = GradientsParams::from_grads(grads, &q);
        let q = SgdConfig::new().init().step(0.5, q, grads);
        let s1 = vals(q.scale_zero_point().unwrap().0)[0];
        assert!(
            (s1 - (s0 - 0.5 * gs)).abs() < 1e-7,
            "{s1} vs {s0} - 0.5·{gs}"
        );
        assert!(gs.abs() > 1e-3);

        let pact = QuantSpec {
            estimator: Estimator::Pact,
            signed: false,
            pact_init: 1.0,
            ..QuantSpec::default()
        };
        let q = Quantizer::for_activation(&pact, &d).unwrap();
        // two of three inputs at or above alpha = 1 -> dL/dalpha = 2 -> alpha = 1 - 0.25·2
        let y = q.forward(t1(&[0.5, 1.0, 3.0], &d), true);
        let grads = GradientsParams::from_grads(y.sum().backward(), &q);
        let q = SgdConfig::new().init().step(0.25, q, grads);
        assert_eq!(vals(q.alpha.as_ref().unwrap().val()), vec![0.5]);
    }

    #[derive(Module, Debug)]
    struct Layer {
        weight_q: Quantizer,
        act_q: Quantizer,
    }

    #[test]
    fn nested_quantizers_save_to_file_and_survive_valid() {
        let d = Device::flex().autodiff();
        let lsq = QuantSpec {
            bits: 4,
            estimator: Estimator::Lsq,
            ..QuantSpec::default()
        };
        let make = || Layer {
            weight_q: Quantizer::for_weight(&lsq, &[2, 2], 1, &d).unwrap(),
            act_q: Quantizer::for_activation(&QuantSpec::default(), &d).unwrap(),
        };
        let layer = make();
        let w = t2(&[0.5, -1.0, 0.25, 2.0], [2, 2], &d);
        let yw = vals(layer.weight_q.forward(w.clone(), true));
        layer.act_q.forward(t1(&[-0.5, 2.55], &d), true);
        let valid = layer.valid();
        assert_eq!(vals(valid.weight_q.forward(w.clone().valid(), false)), yw);

        let path = std::env::temp_dir().join(format!("quench-quant-{}.bpk", std::process::id()));
        layer.save_file(&path).unwrap();
        // burn reads a loaded file lazily: keep it until the tensors were read
        let loaded = make().load_file(&path);
        // the loaded LSQ step is the trained one, not a fresh lazy init from this input
        assert_eq!(vals(loaded.weight_q.forward(w.clone() * 3.0, false)), {
            let s = vals(valid.weight_q.scale_zero_point().unwrap().0)[0];
            vals(w * 3.0)
                .iter()
                .map(|v| (v / s).clamp(-8.0, 7.0).round_ties_even() * s)
                .collect::<Vec<f32>>()
        });
        let (s, _) = loaded.act_q.scale_zero_point().unwrap();
        assert_close(&vals(s), &[0.02], 1e-7);
        assert_eq!(loaded.act_q.observer().unwrap().updates(), 1);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn activation_codes_reproduce_forward_bit_exactly() {
        let d = Device::flex().autodiff();
        let xs: Vec<f32> = (0..60)
            .map(|i| (i as f32 * 0.61).sin() * 3.3 + 0.4)
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(xs, [3, 4, 5]), &d);
        for sp in [
            QuantSpec {
                symmetric: false,
                estimator: Estimator::MovingAverage,
                ..QuantSpec::default()
            },
            QuantSpec {
                bits: 4,
                granularity: Granularity::PerToken,
                ..QuantSpec::default()
            },
            QuantSpec {
                bits: 3,
                signed: false,
                symmetric: false,
                granularity: Granularity::PerToken,
                ..QuantSpec::default()
            },
        ] {
            let q = Quantizer::for_activation(&sp, &d).unwrap();
            let y = vals(q.forward(x.clone(), true));
            let (codes, scales, zps) = q.quantize_to_int(x.clone());
            let per = if scales.len() == 1 { 60 } else { 5 };
            for (i, c) in codes.iter().enumerate() {
                let k = i / per;
                assert_eq!(y[i], (*c - zps[k]) as f32 * scales[k], "{sp:?} element {i}");
            }
        }
    }

    #[test]
    fn enable_flag_is_a_host_value_kept_by_valid_and_records() {
        let d = Device::flex().autodiff();
        let q = Quantizer::for_activation(&QuantSpec::default(), &d).unwrap();
        let off = q.set_enabled(false);
        assert!(!off.valid().is_enabled());
        let on = off.set_enabled(true);
        assert!(on.valid().is_enabled());
        let loaded = round_trip(
            on.set_enabled(false),
            Quantizer::for_activation(&QuantSpec::default(), &d).unwrap(),
        );
        assert!(!loaded.is_enabled());
    }

    #[test]
    fn unobserved_quantizer_uses_the_tensors_own_range() {
        let d = Device::flex();
        let q = Quantizer::for_activation(&QuantSpec::with_bits(4), &d).unwrap();
        let y = q.forward(t1(&[-3.75, 1.3], &d), false);
        assert_close(&vals(y), &[-4.0, 1.5], 1e-6);
        assert_eq!(q.observer().unwrap().updates(), 0);
    }
}
