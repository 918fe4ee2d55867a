//! Range observers: running statistics of the values a quantizer sees, from which its scale and
//! zero-point follow. They are burn modules whose state is saved in records, updated through
//! `&self` in the forward pass, and never trained.
//!
//! The forward pass must not wait on the device: the ranges stay on the device (updated with
//! tensor ops on the non-autodiff backend, so no autodiff graph ever records them), and the small
//! values the forward *branches* on — update count, frozen flag, a quantizer's enable flag — live
//! on the host in a [`HostScalar`], whose device copy exists only for records.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId,
};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::QuantError;
use crate::qparams::{ColumnRanges, HostCopy, QuantLayout};
use crate::spec::{Estimator, QuantSpec};

/// A saved state the forward pass reads and writes on the host: a flag, a counter, an
/// observer's ranges.
///
/// It is recorded like a `RunningState<Tensor<1>>` (a float tensor under the field's name), so
/// records are the same either way. Its values are held either on the host (set by host
/// arithmetic; the device copy is rebuilt from them only when it is read: by a record, by
/// [`Self::tensor`]) or on the device (set by tensor ops where reading them back would wait on the device;
/// they are read to the host once, when host code asks for them). A step of the host path
/// therefore makes no tensor op for its observers: a `RunningState` made four per range
/// (upload, `update`, and its sync's sum and division by the thread count), and its reads two
/// device reads.
///
/// Loading a record (detected as a mapper that hands back another parameter id than the one it
/// was given) reads the loaded values back to the host once. Other mappers (optimizers, device
/// moves) keep the values. Clones share the values, as `RunningState` clones do;
/// `valid()`/`train()` copies do not.
#[derive(Clone, Debug)]
pub struct HostState {
    id: ParamId,
    cell: Arc<Mutex<StateCell>>,
}

/// A one-value [`HostState`] (a flag or a counter).
pub type HostScalar = HostState;

#[derive(Debug)]
struct StateCell {
    /// The device copy (also the device, dtype and kind template); out of date while `stale`.
    tensor: Tensor<1>,
    /// The values on the host, when known (always, while `stale`).
    host: Option<Vec<f32>>,
    /// Whether `host` is newer than `tensor`.
    stale: bool,
}

impl StateCell {
    /// The host values, read from the device copy the first time after it was set.
    fn host(&mut self) -> &[f32] {
        let tensor = &self.tensor;
        self.host.get_or_insert_with(|| {
            tensor
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default()
        })
    }

    /// The device copy, rebuilt from the host values if they are newer (same device, dtype and
    /// kind as before).
    fn tensor(&mut self) -> Tensor<1> {
        if self.stale
            && let Some(values) = &self.host
        {
            let template = &self.tensor;
            let n = values.len();
            let fresh =
                Tensor::<1>::from_data(TensorData::new(values.clone(), [n]), &template.device());
            let fresh = if fresh.dtype() == template.dtype() {
                fresh
            } else {
                fresh.cast(template.dtype())
            };
            self.tensor = match (template.is_autodiff(), fresh.is_autodiff()) {
                (true, false) => fresh.autodiff(),
                (false, true) => fresh.without_autodiff(),
                _ => fresh,
            };
            self.stale = false;
        }
        self.tensor.clone()
    }
}

impl HostState {
    /// A one-value state holding `value`, recorded on `device`.
    pub fn new(value: f32, device: &Device) -> Self {
        Self::from_values(vec![value], device)
    }

    /// A state holding `values`, recorded on `device`.
    pub fn from_values(values: Vec<f32>, device: &Device) -> Self {
        let n = values.len();
        let tensor = Tensor::from_data(TensorData::new(values.clone(), [n]), device);
        Self::from_parts(ParamId::new(), Some(values), tensor)
    }

    fn from_parts(id: ParamId, host: Option<Vec<f32>>, tensor: Tensor<1>) -> Self {
        Self {
            id,
            cell: Arc::new(Mutex::new(StateCell {
                tensor,
                host,
                stale: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StateCell> {
        self.cell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first value (of a one-value state), without device access once known on the host.
    pub fn get(&self) -> f32 {
        self.lock().host().first().copied().unwrap_or(0.0)
    }

    /// The values on the host (read from the device the first time after [`Self::set_tensor`]).
    pub fn values(&self) -> Vec<f32> {
        self.lock().host().to_vec()
    }

    /// Sets a one-value state in place (seen by clones, like a `RunningState` update).
    pub fn set(&self, value: f32) {
        let mut cell = self.lock();
        if cell.host().len() != 1 || cell.host()[0].to_bits() != value.to_bits() {
            cell.host = Some(vec![value]);
            cell.stale = true;
        }
    }

    /// Sets the values in place from the host (seen by clones); the device copy follows when
    /// asked for.
    pub fn set_values(&self, values: Vec<f32>) {
        let mut cell = self.lock();
        cell.host = Some(values);
        cell.stale = true;
    }

    /// Sets the values in place from a tensor on the state's device, without reading it (seen
    /// by clones). The tensor is given the state's kind (autodiff or not).
    pub fn set_tensor(&self, value: Tensor<1>) {
        let mut cell = self.lock();
        let value = match (cell.tensor.is_autodiff(), value.is_autodiff()) {
            (true, false) => value.autodiff(),
            (false, true) => value.without_autodiff(),
            _ => value,
        };
        cell.tensor = value;
        cell.host = None;
        cell.stale = false;
    }

    /// A one-value state of its own (not shared with clones of `self`) holding `value`.
    pub fn with_value(&self, value: f32) -> Self {
        let tensor = self.lock().tensor.clone();
        let fresh = Self::from_parts(self.id, Some(vec![value]), tensor);
        fresh.lock().stale = true;
        fresh
    }

    /// The device copy of the values.
    pub fn tensor(&self) -> Tensor<1> {
        self.lock().tensor()
    }

    /// A state of its own holding the current values on a `tensor` of the wanted kind.
    fn snapshot(&self, kind: impl FnOnce(Tensor<1>) -> Tensor<1>) -> Self {
        let mut cell = self.lock();
        let tensor = kind(cell.tensor());
        Self::from_parts(self.id, cell.host.clone(), tensor)
    }
}

impl Module for HostState {
    /// A state whose device copy is out of date is visited as a lazy parameter that rebuilds
    /// it only when the visitor reads it (a record does; quench's gradient collection,
    /// `quench_train::optim::gradients`, skips parameters never made, which no graph can hold).
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        let cell = self.lock();
        if !cell.stale {
            let param = Param::initialized(self.id, cell.tensor.clone());
            drop(cell);
            visitor.visit_float(&param);
            return;
        }
        let (device, n) = (cell.tensor.device(), cell.tensor.dims()[0]);
        drop(cell);
        let state = Arc::clone(&self.cell);
        let param = Param::uninitialized(
            self.id,
            move |_, _| state.lock().unwrap_or_else(|e| e.into_inner()).tensor(),
            device,
            false,
            [n].into(),
        );
        visitor.visit_float(&param);
    }

    /// The mapper gets the device copy as it is, even when out of date: an optimizer hands it
    /// back, a device move moves it (the values are rebuilt on the new device when asked for),
    /// and a record load replaces it.
    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        // A probe id tells a record load (which hands back the recorded id) from every other
        // mapper (optimizers, device moves), which hand back the parameter they were given.
        let probe = ParamId::new();
        let template = self.lock().tensor.clone();
        let (id, tensor, _) = mapper
            .map_float(Param::initialized(probe, template))
            .consume();
        // A saved state is a buffer, never an optimizer target.
        let tensor = tensor.set_require_grad(false);
        let mut cell = self.lock();
        if id != probe {
            // Loaded: the record's values, read to the host when host code asks for them.
            cell.host = None;
            cell.stale = false;
        }
        cell.tensor = tensor;
        drop(cell);
        self
    }

    fn collect_devices(&self, mut devices: Devices) -> Devices {
        let device = self.lock().tensor.device();
        if !devices.contains(&device) {
            devices.push(device);
        }
        devices
    }

    fn to_device(self, device: &Device) -> Self {
        let mut cell = self.lock();
        cell.tensor = cell.tensor.clone().to_device(device);
        drop(cell);
        self
    }

    fn fork(self, device: &Device) -> Self {
        self.to_device(device)
    }

    fn materialize(self) -> Self {
        self
    }

    fn valid(&self) -> Self {
        self.snapshot(Tensor::without_autodiff)
    }

    fn train(self) -> Self {
        self.snapshot(Tensor::autodiff)
    }
}

impl ModuleDisplayDefault for HostState {
    fn content(&self, content: Content) -> Option<Content> {
        let values = self.values();
        let shown = match values.as_slice() {
            [one] => format!("HostState({one})"),
            many => format!("HostState([{}])", many.len()),
        };
        content.add_formatted(&shown).optional()
    }
}

impl ModuleDisplay for HostState {}

/// Per-scale `(min, max)` statistics of observed tensors, combined across updates by the spec's
/// estimator, with an update count and a freeze switch.
///
/// Update rules (`b` = this batch's per-scale statistic):
/// * `minmax`: running `min(old, b)` / `max(old, b)` over every update;
/// * `moving_average`: `new = (1 - m)·old + m·b` (the first update takes `b`);
/// * `percentile`: `b` is the batch's `p`-th / `(100 - p)`-th percentile per scale — the k-th
///   smallest value found by sorting each row, `k = ceil(p/100·n)` — combined as a moving
///   average like `moving_average`. Sorting costs `O(n log n)` per observed batch.
///
/// The observer stops updating once `freeze_at_step` updates were made or after
/// [`RangeObserver::freeze_observer`]. Observing never reads the device: the ranges are updated
/// with device ops, the count and the frozen flag are host values. Observe one quantizer from
/// one thread (as burn's trainers do): concurrent updates are not merged.
#[derive(Module, Debug)]
pub struct RangeObserver {
    /// Per-scale minimum, flattened in layout order.
    min: HostState,
    /// Per-scale maximum, flattened in layout order.
    max: HostState,
    /// How many updates were made (recorded as a one-element float tensor, exact up to 2^24).
    updates: HostScalar,
    /// 1.0 once frozen by [`RangeObserver::freeze_observer`], else 0.0.
    frozen: HostScalar,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    num_scales: usize,
}

impl RangeObserver {
    /// An observer with `num_scales` ranges, nothing observed yet; fails for learned estimators.
    pub fn new(spec: &QuantSpec, num_scales: usize, device: &Device) -> Result<Self, QuantError> {
        if spec.estimator.is_learned() {
            return Err(QuantError::invalid(
                "estimator",
                spec.estimator.name(),
                "is learned, not observed",
            ));
        }
        Ok(Self {
            min: HostState::from_values(vec![0.0; num_scales], device),
            max: HostState::from_values(vec![0.0; num_scales], device),
            updates: HostScalar::new(0.0, device),
            frozen: HostScalar::new(0.0, device),
            spec: spec.clone(),
            num_scales,
        })
    }

    /// How many ranges this observer keeps.
    pub fn num_scales(&self) -> usize {
        self.num_scales
    }

    /// How many updates were made.
    pub fn updates(&self) -> u64 {
        self.updates.get() as u64
    }

    /// Whether updates stopped (frozen explicitly or `freeze_at_step` reached).
    pub fn is_frozen(&self) -> bool {
        self.frozen.get() > 0.5
            || self
                .spec
                .freeze_at_step
                .is_some_and(|k| self.updates() >= k)
    }

    /// Stops all further updates (saved in the record).
    pub fn freeze_observer(mut self) -> Self {
        self.frozen = self.frozen.with_value(1.0);
        self
    }

    /// The observed per-scale `(min, max)`, or `None` before the first update.
    pub fn range(&self) -> Option<(Tensor<1>, Tensor<1>)> {
        (self.updates() > 0).then(|| (self.min.tensor(), self.max.tensor()))
    }

    /// Folds `x` (of `layout`'s shape, detached here) into the ranges; returns whether it did
    /// (false when frozen).
    ///
    /// # Panics
    /// If `layout` has a different number of scales than this observer.
    pub fn observe<const D: usize>(&self, x: Tensor<D>, layout: &QuantLayout) -> bool {
        self.observe_with(x, None, layout)
    }

    /// [`Self::observe`], taking min/max ranges from `host` (a host copy of `x`) where the layout
    /// reduces on the host.
    pub(crate) fn observe_with<const D: usize>(
        &self,
        x: Tensor<D>,
        host: Option<&HostCopy>,
        layout: &QuantLayout,
    ) -> bool {
        if self.is_frozen() {
            return false;
        }
        assert_eq!(
            layout.num_scales(),
            self.num_scales(),
            "observer has {} ranges, the layout of shape {:?} has {}",
            self.num_scales(),
            layout.shape(),
            layout.num_scales()
        );
        let host_range = match host {
            Some(host) if self.spec.estimator != Estimator::Percentile => layout.min_max_host(host),
            _ => None,
        };
        // Statistics on the plain backend: `detach` would keep a leaf weight's require-grad
        // root, and every op on it would join an autodiff graph that is never consumed.
        let (bmin, bmax) =
            host_range.unwrap_or_else(|| self.batch_range(x.without_autodiff(), layout));
        self.observe_range(bmin, bmax);
        true
    }

    /// Folds one batch's per-scale statistic `(bmin, bmax)` (plain tensors of `num_scales`
    /// values) into the ranges, by the estimator's rule. The caller checked `!is_frozen()`.
    pub(crate) fn observe_range(&self, bmin: Tensor<1>, bmax: Tensor<1>) {
        let n = self.updates.get();
        let (omin, omax) = (self.min.tensor(), self.max.tensor());
        let (min, max) = if n == 0.0 {
            (bmin, bmax)
        } else {
            let (omin, omax) = (omin.without_autodiff(), omax.without_autodiff());
            match self.spec.estimator {
                Estimator::MinMax => (omin.min_pair(bmin), omax.max_pair(bmax)),
                _ => {
                    let m = self.spec.momentum;
                    let ema =
                        |old: Tensor<1>, b: Tensor<1>| old.mul_scalar(1.0 - m).add(b.mul_scalar(m));
                    (ema(omin, bmin), ema(omax, bmax))
                }
            }
        };
        self.min.set_tensor(min);
        self.max.set_tensor(max);
        self.updates.set(n + 1.0);
    }

    /// [`Self::range`] as host values (without a device read when the host path set them).
    pub(crate) fn range_values(&self) -> Option<ColumnRanges> {
        (self.updates() > 0).then(|| (self.min.values(), self.max.values()))
    }

    /// The ranges [`Self::observe_range`] would store after `old` (the current range, `None`
    /// before the first update) for the batch statistic `batch`, computed on the host with the
    /// f32 operations the tensor ops run, in their order (`min_pair(a, b)`: `b` where
    /// `b < a`; `max_pair(a, b)`: `b` where `a < b`; the moving average
    /// `old·(1 − m) + b·m` with both factors rounded to f32 as burn's scalar ops round them).
    /// `None` when a value is not finite (the tensor path keeps those) or for the percentile
    /// estimator.
    pub(crate) fn combine_values(
        &self,
        old: Option<&ColumnRanges>,
        batch: ColumnRanges,
    ) -> Option<ColumnRanges> {
        let finite = |v: &ColumnRanges| v.0.iter().chain(&v.1).all(|x| x.is_finite());
        if !finite(&batch) || old.is_some_and(|o| !finite(o)) {
            return None;
        }
        let Some(old) = old else {
            return Some(batch);
        };
        let pairs = |o: &[f32], b: Vec<f32>, f: &dyn Fn(f32, f32) -> f32| -> Vec<f32> {
            o.iter().zip(b).map(|(&o, b)| f(o, b)).collect()
        };
        match self.spec.estimator {
            Estimator::MinMax => Some((
                pairs(&old.0, batch.0, &|o, b| if b < o { b } else { o }),
                pairs(&old.1, batch.1, &|o, b| if o < b { b } else { o }),
            )),
            Estimator::MovingAverage => {
                let m = self.spec.momentum;
                let (keep, take) = ((1.0 - m) as f32, m as f32);
                let ema = |o: f32, b: f32| o * keep + b * take;
                Some((pairs(&old.0, batch.0, &ema), pairs(&old.1, batch.1, &ema)))
            }
            _ => None,
        }
    }

    /// Stores host ranges from [`Self::combine_values`] as one update (the caller checked
    /// `!is_frozen()`).
    pub(crate) fn store_values(&self, min: Vec<f32>, max: Vec<f32>) {
        self.min.set_values(min);
        self.max.set_values(max);
        self.updates.set(self.updates.get() + 1.0);
    }

    /// This batch's per-scale statistic: min/max, or the percentile pair.
    fn batch_range<const D: usize>(
        &self,
        x: Tensor<D>,
        layout: &QuantLayout,
    ) -> (Tensor<1>, Tensor<1>) {
        if self.spec.estimator != Estimator::Percentile {
            return layout.min_max(x);
        }
        let rows = layout.rows(x).sort(1);
        let [n, m] = rows.dims();
        let k = percentile_rank(self.spec.percentile, m);
        (
            rows.clone().narrow(1, m - k, 1).reshape([n]),
            rows.narrow(1, k - 1, 1).reshape([n]),
        )
    }
}

/// 1-based rank of the `p`-th percentile among `m` sorted values: `ceil(p/100·m)` in `1..=m`.
/// The upper percentile is the `k`-th smallest value, the lower one the `k`-th largest.
fn percentile_rank(p: f64, m: usize) -> usize {
    // The small slack keeps e.g. 99.99% of 10000 at 9999 despite 99.99/100·10000 = 9999.000…02.
    let k = (p / 100.0 * m as f64 - 1e-6).ceil() as usize;
    k.clamp(1, m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Granularity;
    use crate::ste::tests::{assert_close, t1, t2, vals};

    fn layout(shape: &[usize], g: Granularity, axis: usize) -> QuantLayout {
        QuantLayout::new(shape, g, axis, None).unwrap()
    }

    fn spec(estimator: Estimator) -> QuantSpec {
        QuantSpec {
            estimator,
            ..QuantSpec::default()
        }
    }

    #[test]
    fn minmax_keeps_running_extremes() {
        let d = Device::flex();
        let o = RangeObserver::new(&spec(Estimator::MinMax), 1, &d).unwrap();
        let l = layout(&[3], Granularity::PerTensor, 0);
        assert!(o.range().is_none());
        assert!(o.observe(t1(&[-1.0, 2.0, 0.5], &d), &l));
        assert!(o.observe(t1(&[-0.5, 3.0, 0.0], &d), &l));
        assert!(o.observe(t1(&[-2.0, 1.0, 0.0], &d), &l));
        let (mn, mx) = o.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![-2.0], vec![3.0]));
        assert_eq!(o.updates(), 3);
    }

    #[test]
    fn moving_average_follows_the_momentum_formula() {
        let d = Device::flex();
        let s = QuantSpec {
            momentum: 0.25,
            ..spec(Estimator::MovingAverage)
        };
        // two channels along axis 1 of a [2, 2] tensor
        let o = RangeObserver::new(&s, 2, &d).unwrap();
        let l = layout(&[2, 2], Granularity::PerChannel, 1);
        o.observe(t2(&[-1.0, 4.0, 1.0, 2.0], [2, 2], &d), &l); // ch0 [-1, 1], ch1 [2, 4]
        let (mn, mx) = o.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![-1.0, 2.0], vec![1.0, 4.0]));
        o.observe(t2(&[-3.0, 0.0, 5.0, 8.0], [2, 2], &d), &l); // ch0 [-3, 5], ch1 [0, 8]
        let (mn, mx) = o.range().unwrap();
        // 0.75·old + 0.25·batch
        assert_close(&vals(mn), &[-1.5, 1.5], 1e-6);
        assert_close(&vals(mx), &[2.0, 5.0], 1e-6);
        o.observe(t2(&[1.0, 1.0, 1.0, 1.0], [2, 2], &d), &l); // both [1, 1]
        let (mn, mx) = o.range().unwrap();
        assert_close(&vals(mn), &[-0.875, 1.375], 1e-6);
        assert_close(&vals(mx), &[1.75, 4.0], 1e-6);
    }

    #[test]
    fn percentile_picks_the_kth_value() {
        let d = Device::flex();
        let s = QuantSpec {
            percentile: 90.0,
            momentum: 0.5,
            ..spec(Estimator::Percentile)
        };
        let o = RangeObserver::new(&s, 1, &d).unwrap();
        // 20 values: -10 (outlier), 0..=17, 100 (outlier). 90% of 20 = 18th smallest = 16,
        // the lower percentile is the 18th largest = 1.
        let mut xs: Vec<f32> = (0..18).map(|i| i as f32).collect();
        xs.push(100.0);
        xs.insert(7, -10.0);
        let l = layout(&[20], Granularity::PerTensor, 0);
        o.observe(t1(&xs, &d), &l);
        let (mn, mx) = o.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![1.0], vec![16.0]));
        // second batch: values 0..20 -> 18th smallest 17, 18th largest 2; EMA with m = 0.5
        let ys: Vec<f32> = (0..20).map(|i| i as f32).collect();
        o.observe(t1(&ys, &d), &l);
        let (mn, mx) = o.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![1.5], vec![16.5]));
        assert_eq!(percentile_rank(99.99, 10_000), 9_999);
        assert_eq!(percentile_rank(100.0, 7), 7);
        assert_eq!(percentile_rank(0.001, 7), 1);
    }

    #[test]
    fn percentile_per_channel_rows() {
        let d = Device::flex();
        let s = QuantSpec {
            percentile: 75.0,
            ..spec(Estimator::Percentile)
        };
        let o = RangeObserver::new(&s, 2, &d).unwrap();
        // channels on axis 0: rows [1,2,3,4] and [-8,0,5,9] -> k = 3: (2, 3) and (0, 5)
        let x = t2(&[4.0, 2.0, 1.0, 3.0, 9.0, -8.0, 5.0, 0.0], [2, 4], &d);
        o.observe(x, &layout(&[2, 4], Granularity::PerChannel, 0));
        let (mn, mx) = o.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![2.0, 0.0], vec![3.0, 5.0]));
    }

    #[test]
    fn freezes_at_step_and_on_request() {
        let d = Device::flex();
        let s = QuantSpec {
            freeze_at_step: Some(2),
            ..spec(Estimator::MinMax)
        };
        let o = RangeObserver::new(&s, 1, &d).unwrap();
        let l = layout(&[2], Granularity::PerTensor, 0);
        assert!(o.observe(t1(&[-1.0, 1.0], &d), &l));
        assert!(!o.is_frozen());
        assert!(o.observe(t1(&[-2.0, 1.0], &d), &l));
        assert!(o.is_frozen());
        assert!(!o.observe(t1(&[-9.0, 9.0], &d), &l));
        let (mn, mx) = o.range().unwrap();
        assert_eq!(
            (vals(mn), vals(mx), o.updates()),
            (vec![-2.0], vec![1.0], 2)
        );

        let o = RangeObserver::new(&spec(Estimator::MinMax), 1, &d).unwrap();
        o.observe(t1(&[-1.0, 1.0], &d), &l);
        let o = o.freeze_observer();
        assert!(o.is_frozen());
        assert!(!o.observe(t1(&[-9.0, 9.0], &d), &l));
        assert_eq!(vals(o.range().unwrap().1), vec![1.0]);
    }

    #[test]
    fn observes_detached_on_autodiff() {
        let d = Device::flex().autodiff();
        let o = RangeObserver::new(&spec(Estimator::MinMax), 1, &d).unwrap();
        let x = t1(&[-1.0, 2.0], &d).require_grad();
        o.observe(x, &layout(&[2], Granularity::PerTensor, 0));
        let (mn, _) = o.range().unwrap();
        assert!(!mn.is_require_grad());
        assert_eq!(vals(mn), vec![-1.0]);
    }

    #[test]
    fn record_round_trip_restores_ranges_count_and_frozen() {
        let d = Device::flex();
        let s = QuantSpec {
            freeze_at_step: Some(5),
            ..spec(Estimator::MovingAverage)
        };
        let o = RangeObserver::new(&s, 1, &d).unwrap();
        let l = layout(&[2], Granularity::PerTensor, 0);
        o.observe(t1(&[-1.0, 1.0], &d), &l);
        o.observe(t1(&[-2.0, 3.0], &d), &l);
        let o = o.freeze_observer();
        let bytes = o.into_record().into_bytes().unwrap();
        let record = burn::store::ModuleRecord::from_bytes(bytes).unwrap();
        let fresh = RangeObserver::new(&s, 1, &d).unwrap();
        assert!(fresh.range().is_none());
        let loaded = fresh.load_record(record);
        assert_eq!(loaded.updates(), 2);
        assert!(loaded.is_frozen());
        let (mn, mx) = loaded.range().unwrap();
        assert_close(&vals(mn), &[-1.1], 1e-6);
        assert_close(&vals(mx), &[1.2], 1e-6);
    }

    #[test]
    fn observing_a_trained_weight_builds_no_autodiff_graph() {
        // `detach` keeps a leaf parameter's require-grad; ranges computed from it would join an
        // autodiff graph that is never consumed and grows every step.
        let d = Device::flex().autodiff();
        let o = RangeObserver::new(&spec(Estimator::MinMax), 2, &d).unwrap();
        let l = layout(&[2, 2], Granularity::PerChannel, 1);
        for _ in 0..3 {
            o.observe(t2(&[1.0, -2.0, 0.5, 3.0], [2, 2], &d).require_grad(), &l);
        }
        let (mn, mx) = o.range().unwrap();
        assert!(!mn.is_tracked() && !mx.is_tracked());
        // the state keeps the module's device kind (autodiff here)
        assert!(mn.is_autodiff());
        assert_eq!((vals(mn), vals(mx)), (vec![0.5, -2.0], vec![1.0, 3.0]));
    }

    #[test]
    fn host_scalar_records_loads_and_shares_like_running_state() {
        let d = Device::flex();
        let a = HostScalar::new(0.0, &d);
        let shared = a.clone();
        a.set(3.0);
        assert_eq!(shared.get(), 3.0, "clones share the value");
        let own = a.with_value(5.0);
        assert_eq!((a.get(), own.get()), (3.0, 5.0));
        let valid = a.valid();
        a.set(4.0);
        assert_eq!(valid.get(), 3.0, "valid() is a snapshot");
        // record round trip: the last set value is recorded, and loading reads it back
        let bytes = a.clone().into_record().into_bytes().unwrap();
        let fresh = HostScalar::new(0.0, &d);
        let loaded = fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes).unwrap());
        assert_eq!(loaded.get(), 4.0);
        // other mappers (device moves, optimizers) keep the host value
        let moved = loaded.to_device(&d).map(&mut NoopMapper);
        assert_eq!(moved.get(), 4.0);
        assert_eq!(vals(moved.tensor()), vec![4.0]);
    }

    #[test]
    fn host_state_vectors_follow_host_and_device_writes() {
        let d = Device::flex().autodiff();
        let s = HostState::from_values(vec![1.0, 2.0, 3.0], &d);
        let shared = s.clone();
        // Host writes: the device copy follows when asked, with the state's kind.
        s.set_values(vec![4.0, -5.0, 6.5]);
        assert_eq!(shared.values(), [4.0, -5.0, 6.5]);
        let t = shared.tensor();
        assert!(t.is_autodiff() && !t.is_require_grad());
        assert_eq!(vals(t), [4.0, -5.0, 6.5]);
        // Recorded as the last host write; a load reads the record's values back.
        let bytes = s.clone().into_record().into_bytes().unwrap();
        let fresh = HostState::from_values(vec![0.0; 3], &d);
        let loaded = fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes).unwrap());
        assert_eq!(loaded.values(), [4.0, -5.0, 6.5]);
        // Device writes: kept as given (in the state's kind), read to the host once asked.
        s.set_tensor(t1(&[7.0, 8.0, 9.0], &Device::flex()));
        assert!(shared.tensor().is_autodiff());
        assert_eq!(shared.values(), [7.0, 8.0, 9.0]);
        // A state changed on the host is visited as a lazy parameter, made when read.
        struct Made(Vec<bool>);
        impl ModuleVisitor for Made {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.is_initialized());
            }
        }
        s.set_values(vec![7.5, 8.0, 9.0]);
        let mut made = Made(Vec::new());
        s.visit(&mut made);
        assert_eq!(made.0, [false]);
        assert_eq!(vals(shared.tensor()), [7.5, 8.0, 9.0]);
        s.visit(&mut made);
        assert_eq!(made.0, [false, true]);
        s.set_tensor(t1(&[7.0, 8.0, 9.0], &Device::flex()));
        // valid() is a snapshot on the plain device.
        let valid = s.valid();
        s.set_values(vec![0.0; 3]);
        assert!(!valid.tensor().is_autodiff());
        assert_eq!(valid.values(), [7.0, 8.0, 9.0]);
    }

    #[test]
    fn host_path_ranges_are_recorded() {
        // Ranges stored from host values (the CPU fast path) reach a record taken right after.
        let d = Device::flex();
        let o = RangeObserver::new(&spec(Estimator::MinMax), 2, &d).unwrap();
        o.store_values(vec![-1.0, -2.0], vec![3.0, 4.0]);
        let (mn, mx) = o.range_values().unwrap();
        assert_eq!((mn, mx), (vec![-1.0, -2.0], vec![3.0, 4.0]));
        let bytes = o.into_record().into_bytes().unwrap();
        let fresh = RangeObserver::new(&spec(Estimator::MinMax), 2, &d).unwrap();
        let loaded = fresh.load_record(burn::store::ModuleRecord::from_bytes(bytes).unwrap());
        let (mn, mx) = loaded.range().unwrap();
        assert_eq!((vals(mn), vals(mx)), (vec![-1.0, -2.0], vec![3.0, 4.0]));
        assert_eq!(loaded.range_values().unwrap().1, [3.0, 4.0]);
    }

    struct NoopMapper;

    impl ModuleMapper for NoopMapper {}

    #[test]
    fn learned_estimators_have_no_observer() {
        let e = RangeObserver::new(&spec(Estimator::Lsq), 1, &Device::flex()).unwrap_err();
        assert_eq!(e.field(), "estimator");
    }
}
