//! Per-column weight ranges handed from the optimizer's update to the next forward's fake
//! quantization, so that a per-channel weight quantizer on the CPU need not sweep the whole
//! weight for its min/max before quantizing it.
//!
//! **Why.** A `Linear` weight `[d_in, d_out]` quantized per output channel needs the min and
//! max of every column before the first element can be quantized: a full read of the weight,
//! straight after the optimizer wrote it and (on a 784-512-512-10 MLP, 2.7 MB of weights next
//! to 8 MB of moments and gradients) mostly from memory rather than cache. That sweep was about
//! 6 points of the QAT MLP's 15 % cost over its fp32 step. The optimizer already holds every
//! value in a register as it writes it: [`column_ranges`] of each block it just updated (still
//! in L1/L2) costs a fraction of that.
//!
//! **Keyed by buffer.** The optimizer does not know which tensor a quantizer will get, so a
//! hint is keyed by the address and length of the buffer it describes. Only buffers a
//! quantizer has read ([`want`]) get hints: the optimizer updates a weight in place, so its
//! buffer is the same from step to step, and the weights of an fp32 model (or of another
//! model of the same shapes in the same process) cost their optimizer nothing.
//!
//! **Held hints are the range.** The optimizer leaves its hints with [`publish_for`], which
//! holds the weight's buffer until the hint is taken: while held, the buffer can neither be
//! freed (so its address names no other tensor) nor written in place (Flex copies a shared
//! buffer before writing to it, and quench's in-place host updates take only unshared ones).
//! The values a quantizer finds at that address are then the very values the range was taken
//! over, and it quantizes with it straight away. Checking the range in the quantizing pass (as
//! below) cost about a third of that pass: 118 µs instead of 74 µs for a 784×512 weight on 2
//! threads with warm caches. The optimizer drops a weight's untaken hint before it updates the
//! weight ([`prepare_update`]), so a hint nobody took (an evaluation in between) costs no copy.
//!
//! **Other hints are checked.** A hint left by address alone ([`publish`]) is checked: the
//! quantizer computes the actual per-column min/max in the same pass that quantizes with the
//! hint, and keeps the result only when they are equal bit for bit (else it quantizes again
//! from the actual range, which that pass already has). A stale hint (a buffer freed and
//! reused, a weight changed in place) therefore costs one more pass and never changes a value.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

use burn::tensor::Tensor;

use crate::qparams::HostCopy;

/// At most this many unconsumed hints are kept (the oldest go first): a model's quantized
/// weights each leave one per step and take it in the next forward.
const MAX_HINTS: usize = 64;

/// The per-column `(min, max)` of one buffer, as the optimizer left it.
struct Hint {
    addr: usize,
    len: usize,
    min: Vec<f32>,
    max: Vec<f32>,
    /// The buffer itself, for a hint of [`publish_for`] (see the module docs).
    held: Option<HostCopy>,
}

/// A taken hint: the range, and whether it was held (then it is exact; else it must be
/// checked against the values).
pub(crate) struct Taken {
    pub(crate) range: ColumnRanges,
    pub(crate) held: bool,
}

/// How the hints a thread's quantizers took were used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    /// Held hints, used as the range without a check.
    pub held: usize,
    /// Hints that checked out in the quantizing pass.
    pub checked: usize,
    /// Hints that did not: the weight was quantized again from its actual range.
    pub failed: usize,
}

/// What became of one taken hint.
pub(crate) enum Outcome {
    Held,
    Checked,
    Failed,
}

/// At most this many wanted buffers are remembered (the oldest go first).
const MAX_WANTED: usize = 256;

/// Buffers `(address, length, columns)` whose per-column ranges some quantizer wants.
static WANTED: Mutex<Vec<(usize, usize, usize)>> = Mutex::new(Vec::new());
/// Published, not yet taken hints, oldest first.
static HINTS: Mutex<Vec<Hint>> = Mutex::new(Vec::new());

thread_local! {
    /// Whether this thread publishes and takes hints (on unless switched off).
    static ENABLED: Cell<bool> = const { Cell::new(true) };
    /// How this thread's taken hints were used.
    static OUTCOMES: Cell<Outcomes> = const {
        Cell::new(Outcomes { held: 0, checked: 0, failed: 0 })
    };
}

/// Switches hints on or off for the calling thread (the thread that runs the optimizer step
/// and the forward): off, every quantizer sweeps its weight as without this module. For
/// comparisons; the values are the same either way.
pub fn set_enabled_on_this_thread(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// How the calling thread's quantizers used the hints they took, so far.
pub fn outcomes_on_this_thread() -> Outcomes {
    OUTCOMES.with(Cell::get)
}

/// Counts one taken hint on this thread.
pub(crate) fn record(outcome: Outcome) {
    OUTCOMES.with(|o| {
        let mut n = o.get();
        match outcome {
            Outcome::Held => n.held += 1,
            Outcome::Checked => n.checked += 1,
            Outcome::Failed => n.failed += 1,
        }
        o.set(n);
    });
}

fn enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// A lock that survives a panic elsewhere (the data is a cache: any state of it is valid).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What names a buffer here: the address and length of its values.
fn key(values: &[f32]) -> (usize, usize) {
    (values.as_ptr() as usize, values.len())
}

/// Asks for the per-column ranges of the buffer of `values` (row-major, `cols` columns)
/// whenever an optimizer updates it from now on.
pub(crate) fn want(values: &[f32], cols: usize) {
    let (addr, len) = key(values);
    let key = (addr, len, cols);
    let mut wanted = lock(&WANTED);
    if !wanted.contains(&key) {
        if wanted.len() >= MAX_WANTED {
            wanted.remove(0);
        }
        wanted.push(key);
    }
}

/// Whether ranges `min`/`max` have neither a NaN nor a zero: then they are the same bits
/// whatever order the values were folded in (`min(-0.0, 0.0)` is either zero), so a hint that
/// checks out equals what the quantizer's own reduction would give.
pub(crate) fn order_free(min: &[f32], max: &[f32]) -> bool {
    min.iter().chain(max).all(|v| !v.is_nan() && *v != 0.0)
}

/// Leaves the per-column `min`/`max` of `values` (row-major, `min.len()` columns) for the next
/// [`take`] of the same buffer, to be checked there. Ranges that are not [`order_free`] are not
/// left.
pub fn publish(values: &[f32], min: Vec<f32>, max: Vec<f32>) {
    publish_hint(key(values), min, max, None);
}

/// Leaves the per-column `min`/`max` of the plain Flex `weight` (row-major, `min.len()`
/// columns) for the next [`take`] of its buffer, holding the buffer until then (see the module
/// docs): the quantizer uses it without a check. Ranges that are not [`order_free`] are not
/// left.
pub fn publish_for<const D: usize>(weight: &Tensor<D>, min: Vec<f32>, max: Vec<f32>) {
    if let Some(host) = HostCopy::of(weight) {
        publish_hint(key(host.values()), min, max, Some(host));
    }
}

/// Leaves a hint for the buffer `(addr, len)`.
fn publish_hint((addr, len): (usize, usize), min: Vec<f32>, max: Vec<f32>, held: Option<HostCopy>) {
    if !enabled()
        || min.is_empty()
        || min.len() != max.len()
        || !order_free(&min, &max)
        || !len.is_multiple_of(min.len())
    {
        return;
    }
    let mut hints = lock(&HINTS);
    hints.retain(|h| h.addr != addr);
    if hints.len() >= MAX_HINTS {
        hints.remove(0);
    }
    hints.push(Hint {
        addr,
        len,
        min,
        max,
        held,
    });
}

/// For an optimizer about to update the plain Flex `weight` in place: drops a hint left for
/// its buffer, so that a held hint nobody took does not make the update copy it, and returns
/// the column count when a quantizer wants the per-column range of that buffer ([`want`]).
pub fn prepare_update<const D: usize>(weight: &Tensor<D>) -> Option<usize> {
    let (addr, cols) = {
        let wanted = lock(&WANTED);
        if wanted.is_empty() {
            return None;
        }
        let (addr, len) = key(HostCopy::of(weight)?.values());
        let cols = wanted
            .iter()
            .find(|&&(a, l, _)| a == addr && l == len)
            .map(|&(_, _, cols)| cols);
        (addr, cols)
    };
    let gone = {
        let mut hints = lock(&HINTS);
        hints
            .iter()
            .position(|h| h.addr == addr)
            .map(|at| hints.remove(at))
    };
    // (`gone`'s hold on the buffer ends here: after the lock.)
    drop(gone);
    cols
}

/// The hint left for `values`' buffer, if one was, with `cols` columns. It is removed; unless
/// it was held, the caller must check it against the values (see the module docs).
pub(crate) fn take(values: &[f32], cols: usize) -> Option<Taken> {
    if !enabled() {
        return None;
    }
    let (addr, len) = key(values);
    let hint = {
        let mut hints = lock(&HINTS);
        let at = hints.iter().position(|h| h.addr == addr)?;
        hints.remove(at)
    };
    (hint.len == len && hint.min.len() == cols).then(|| Taken {
        range: (hint.min, hint.max),
        held: hint.held.is_some(),
    })
}

/// What an optimizer computes over each block it has just updated ([`column_ranges`]) and
/// folds into the weight's range ([`merge_ranges`]) before [`publish`]ing it.
pub use crate::qparams::{ColumnRanges, column_ranges, merge_ranges};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_are_taken_once_for_the_same_buffer_and_shape() {
        let values = vec![1.0f32, -2.0, 3.0, 4.0, 0.5, -6.0];
        let (min, max) = column_ranges(&values, 3);
        assert_eq!(min, [1.0, -2.0, -6.0]);
        assert_eq!(max, [4.0, 0.5, 3.0]);
        publish(&values, min.clone(), max.clone());
        // Another buffer of the same contents has no hint.
        let copy = values.clone();
        assert!(take(&copy, 3).is_none());
        // The wrong column count: taken (removed) but not handed out.
        publish(&values, min.clone(), max.clone());
        assert!(take(&values, 2).is_none());
        assert!(take(&values, 3).is_none());
        publish(&values, min.clone(), max.clone());
        let taken = take(&values, 3).map(|t| (t.range, t.held));
        assert_eq!(taken, Some(((min, max), false)));
        assert!(take(&values, 3).is_none(), "a hint is used once");
    }

    #[test]
    fn nan_ranges_are_not_published_and_merge_propagates_nan() {
        let values = vec![1.0f32, f32::NAN, 3.0, 4.0];
        let (min, max) = column_ranges(&values, 2);
        assert!(min[1].is_nan() && max[1].is_nan());
        assert_eq!((min[0], max[0]), (1.0, 3.0));
        publish(&values, min, max);
        assert!(take(&values, 2).is_none());
        // A zero in a range: not published either.
        let values = vec![0.0f32, 1.0, -1.0, 2.0];
        let (min, max) = column_ranges(&values, 2);
        publish(&values, min, max);
        assert!(take(&values, 2).is_none());
        let mut total = column_ranges(&[1.0, 2.0], 2);
        merge_ranges(&mut total, &column_ranges(&[f32::NAN, -1.0], 2));
        assert!(total.0[0].is_nan() && total.1[0].is_nan());
        assert_eq!((total.0[1], total.1[1]), (-1.0, 2.0));
    }

    #[test]
    fn wanted_buffers() {
        let d = burn::tensor::Device::flex();
        let values = vec![1.0f32; 7 * 13];
        let t = Tensor::<2>::from_data(burn::tensor::TensorData::new(values, [7, 13]), &d);
        let other = t.clone().mul_scalar(2.0);
        let host = HostCopy::of(&t).unwrap();
        assert_eq!(prepare_update(&t), None);
        want(host.values(), 13);
        want(host.values(), 13);
        assert_eq!(prepare_update(&t), Some(13));
        // Another buffer of the same shape is not wanted.
        assert_eq!(prepare_update(&other), None);
    }
}
