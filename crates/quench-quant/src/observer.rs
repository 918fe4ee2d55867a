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
    Param, ParamId, RunningState,
};
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::QuantError;
use crate::qparams::{ColumnRanges, HostCopy, QuantLayout};
use crate::spec::{Estimator, QuantSpec};

/// A saved one-element state that the forward pass branches on (a flag or a counter).
///
/// Its value is kept on the host, so reading it never syncs with the device; it is recorded
/// like a `RunningState<Tensor<1>>` (a one-element float tensor under the field's name), and the
/// device copy is rebuilt from the host value only when a record or a mapper asks for it.
/// Loading a record (detected as a mapper that hands back another parameter id than the one it
/// was given) reads the loaded value back to the host once. Clones share the value, as
/// `RunningState` clones do; `valid()`/`train()` copies do not.
#[derive(Clone, Debug)]
pub struct HostScalar {
    id: ParamId,
    cell: Arc<Mutex<HostCell>>,
}

#[derive(Debug)]
struct HostCell {
    value: f32,
    /// The device copy (also the device and dtype template); out of date while `stale`.
    tensor: Tensor<1>,
    stale: bool,
}

impl HostScalar {
    /// A state holding `value`, recorded on `device`.
    pub fn new(value: f32, device: &Device) -> Self {
        Self::from_tensor(ParamId::new(), value, Tensor::full([1], value, device))
    }

    fn from_tensor(id: ParamId, value: f32, tensor: Tensor<1>) -> Self {
        Self {
            id,
            cell: Arc::new(Mutex::new(HostCell {
                value,
                tensor,
                stale: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HostCell> {
        self.cell.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value (no device access).
    pub fn get(&self) -> f32 {
        self.lock().value
    }

    /// Sets the value in place (seen by clones, like a `RunningState` update).
    pub fn set(&self, value: f32) {
        let mut cell = self.lock();
        if cell.value.to_bits() != value.to_bits() {
            cell.value = value;
            cell.stale = true;
        }
    }

    /// A state of its own (not shared with clones of `self`) holding `value`.
    pub fn with_value(&self, value: f32) -> Self {
        let tensor = self.lock().tensor.clone();
        let fresh = Self::from_tensor(self.id, value, tensor);
        fresh.lock().stale = true;
        fresh
    }

    /// The device copy of the value.
    fn tensor(&self) -> Tensor<1> {
        let mut cell = self.lock();
        if cell.stale {
            cell.tensor = cell.tensor.full_like(cell.value);
            cell.stale = false;
        }
        cell.tensor.clone()
    }
}

impl Module for HostScalar {
    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        visitor.visit_float(&Param::initialized(self.id, self.tensor()));
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        // A probe id tells a record load (which hands back the recorded id) from every other
        // mapper (optimizers, device moves), which hand back the parameter they were given.
        let probe = ParamId::new();
        let (id, tensor, _) = mapper
            .map_float(Param::initialized(probe, self.tensor()))
            .consume();
        // A saved state is a buffer, never an optimizer target.
        let tensor = tensor.set_require_grad(false);
        let loaded = (id != probe).then(|| tensor.clone().into_scalar::<f32>());
        let mut cell = self.lock();
        if let Some(value) = loaded {
            cell.value = value;
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
        let tensor = self.tensor().without_autodiff();
        Self::from_tensor(self.id, self.get(), tensor)
    }

    fn train(self) -> Self {
        let tensor = self.tensor().autodiff();
        Self::from_tensor(self.id, self.get(), tensor)
    }
}

impl ModuleDisplayDefault for HostScalar {
    fn content(&self, content: Content) -> Option<Content> {
        content
            .add_formatted(&format!("HostScalar({})", self.get()))
            .optional()
    }
}

impl ModuleDisplay for HostScalar {}

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
    min: RunningState<Tensor<1>>,
    /// Per-scale maximum, flattened in layout order.
    max: RunningState<Tensor<1>>,
    /// How many updates were made (recorded as a one-element float tensor, exact up to 2^24).
    updates: HostScalar,
    /// 1.0 once frozen by [`RangeObserver::freeze_observer`], else 0.0.
    frozen: HostScalar,
    #[module(skip)]
    spec: QuantSpec,
    #[module(skip)]
    num_scales: usize,
}

/// Writes a `RunningState` and syncs its thread map at once (no device read): the state the
/// record visitor reads is the synced value, so an unsynced update would be missing from a record
/// taken right after it. The value keeps the kind (autodiff or not) the state had, so the
/// module's devices do not change.
fn store(state: &RunningState<Tensor<1>>, like_autodiff: bool, value: Tensor<1>) {
    let value = if like_autodiff {
        value.autodiff()
    } else {
        value
    };
    state.update(value);
    let _ = state.value_sync();
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
            min: RunningState::new(Tensor::zeros([num_scales], device)),
            max: RunningState::new(Tensor::zeros([num_scales], device)),
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
        (self.updates() > 0).then(|| (self.min.value(), self.max.value()))
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
        let (omin, omax) = (self.min.value(), self.max.value());
        let autodiff = omin.is_autodiff();
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
        store(&self.min, autodiff, min);
        store(&self.max, autodiff, max);
        self.updates.set(n + 1.0);
    }

    /// [`Self::range`] as host values (read from the device copies).
    pub(crate) fn range_values(&self) -> Option<ColumnRanges> {
        let (min, max) = self.range()?;
        let values = |t: Tensor<1>| t.into_data().try_into_vec::<f32>().ok();
        Some((values(min)?, values(max)?))
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
    pub(crate) fn store_values(&self, min: Vec<f32>, max: Vec<f32>, device: &Device) {
        let autodiff = self.min.value().is_autodiff();
        let n = self.num_scales;
        let flat = |v: Vec<f32>| Tensor::<1>::from_data(TensorData::new(v, [n]), device);
        store(&self.min, autodiff, flat(min));
        store(&self.max, autodiff, flat(max));
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

    struct NoopMapper;

    impl ModuleMapper for NoopMapper {}

    #[test]
    fn learned_estimators_have_no_observer() {
        let e = RangeObserver::new(&spec(Estimator::Lsq), 1, &Device::flex()).unwrap_err();
        assert_eq!(e.field(), "estimator");
    }
}
