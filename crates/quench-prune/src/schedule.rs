//! Sparsity schedules: the target sparsity at each training step, and at which steps the masks
//! are recomputed.
//!
//! Steps are the trainer's global optimizer-step counter. Before `start_step` every schedule
//! targets 0 (pruning has not started; no masks exist). Between mask updates the target is held
//! constant, so `target(step)` only changes on steps where `should_update(step)` is true.
//!
//! - **one_shot**: `s_f` from `start_step` on; one update, at `start_step`.
//! - **cubic** (Zhu & Gupta 2017): with `t0 = start_step`, `n·Δt = end_step - start_step`,
//!   `Δt = frequency`: `s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))³`, evaluated at the last
//!   update step `u ≤ t`; updates at `t0, t0 + Δt, …` and at `end_step` (so `s_f` is reached
//!   exactly even when `Δt` does not divide the span); `s_f` from `end_step` on.
//! - **linear**: the same stepping, `s_t = s_i + (s_f - s_i)(u - t0)/(n·Δt)`.
//! - **iterative** (lottery ticket, Frankle & Carbin 2019): round `k = 1..=iterations` begins at
//!   `start_step + ⌊k·(end_step - start_step)/iterations⌋` and prunes to
//!   `1 - (1 - s_f)^(k/iterations)` (the same fraction of the *surviving* weights each round);
//!   `[start_step, first round)` trains dense. With `rewind`, the surviving weights are reset to
//!   their initial values at every round (`rewind_at`).

use crate::error::PruneError;
use crate::spec::{PruneSpec, ScheduleKind};

/// A validated sparsity schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    kind: ScheduleKind,
    start: u64,
    end: u64,
    frequency: u64,
    initial: f64,
    target: f64,
    iterations: u32,
    rewind: bool,
}

impl Schedule {
    /// The schedule a spec describes (validates the spec first).
    pub fn new(spec: &PruneSpec) -> Result<Self, PruneError> {
        spec.validate()?;
        Ok(Self {
            kind: spec.schedule,
            start: spec.start_step,
            end: spec.end_step,
            frequency: spec.frequency,
            initial: spec.initial_sparsity,
            target: spec.target_sparsity,
            iterations: spec.iterations,
            rewind: spec.rewind,
        })
    }

    /// Which schedule this is.
    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// The final sparsity `s_f`.
    pub fn final_sparsity(&self) -> f64 {
        self.target
    }

    /// Iterative: the step at which round `k` (`1..=iterations`) prunes.
    pub fn round_start(&self, k: u32) -> u64 {
        let span = self.end - self.start;
        // u128 so `k · span` cannot overflow for any u64 span.
        self.start + (u128::from(k) * u128::from(span) / u128::from(self.iterations)) as u64
    }

    /// Iterative: how many rounds have pruned by `step` (0 before the first round).
    fn rounds_done(&self, step: u64) -> u32 {
        (1..=self.iterations)
            .take_while(|&k| self.round_start(k) <= step)
            .count() as u32
    }

    /// Whether the masks are (re)computed at `step`.
    pub fn should_update(&self, step: u64) -> bool {
        match self.kind {
            ScheduleKind::OneShot => step == self.start,
            ScheduleKind::Cubic | ScheduleKind::Linear => {
                step >= self.start
                    && step <= self.end
                    && ((step - self.start).is_multiple_of(self.frequency) || step == self.end)
            }
            ScheduleKind::Iterative => (1..=self.iterations).any(|k| self.round_start(k) == step),
        }
    }

    /// Whether the surviving weights are rewound to their initial values at `step` (iterative
    /// schedule with `rewind = true`, at every prune round; always false otherwise).
    pub fn rewind_at(&self, step: u64) -> bool {
        self.rewind && self.kind == ScheduleKind::Iterative && self.should_update(step)
    }

    /// The target sparsity in force at `step`.
    pub fn target(&self, step: u64) -> f64 {
        if step < self.start {
            return 0.0;
        }
        match self.kind {
            ScheduleKind::OneShot => self.target,
            ScheduleKind::Cubic | ScheduleKind::Linear => {
                if step >= self.end {
                    return self.target;
                }
                let span = (self.end - self.start) as f64;
                let last_update =
                    self.start + (step - self.start) / self.frequency * self.frequency;
                let frac = (last_update - self.start) as f64 / span;
                if self.kind == ScheduleKind::Cubic {
                    self.target + (self.initial - self.target) * (1.0 - frac).powi(3)
                } else {
                    self.initial + (self.target - self.initial) * frac
                }
            }
            ScheduleKind::Iterative => {
                let k = self.rounds_done(step);
                1.0 - (1.0 - self.target).powf(f64::from(k) / f64::from(self.iterations))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    fn sched(kind: ScheduleKind, f: impl FnOnce(&mut PruneSpec)) -> Schedule {
        let mut s = PruneSpec {
            schedule: kind,
            ..PruneSpec::default()
        };
        f(&mut s);
        Schedule::new(&s).unwrap()
    }

    #[test]
    fn cubic_hand_computed() {
        let s = sched(ScheduleKind::Cubic, |s| {
            s.target_sparsity = 0.8;
            s.start_step = 100;
            s.end_step = 1100;
            s.frequency = 100;
        });
        close(s.target(50), 0.0);
        close(s.target(100), 0.0); // s_i
        close(s.target(150), 0.0); // held until the next update
        close(s.target(200), 0.8 * (1.0 - 0.729)); // 0.2168
        close(s.target(200), 0.2168);
        close(s.target(600), 0.7); // 0.8·(1 − 0.5³)
        close(s.target(1000), 0.7992); // 0.8·(1 − 0.1³)
        close(s.target(1099), 0.7992);
        close(s.target(1100), 0.8);
        close(s.target(5000), 0.8);
        assert!(!s.should_update(99));
        assert!(s.should_update(100));
        assert!(!s.should_update(150));
        assert!(s.should_update(200));
        assert!(s.should_update(1100));
        assert!(!s.should_update(1200));
        assert!(!s.rewind_at(200));
    }

    #[test]
    fn cubic_with_initial_and_ragged_span() {
        let s = sched(ScheduleKind::Cubic, |s| {
            s.target_sparsity = 0.5;
            s.initial_sparsity = 0.1;
            s.start_step = 0;
            s.end_step = 250;
            s.frequency = 100;
        });
        close(s.target(0), 0.1);
        // u = 100, frac = 0.4: 0.5 + (0.1 − 0.5)·0.6³ = 0.5 − 0.4·0.216 = 0.4136
        close(s.target(199), 0.4136);
        // u = 200, frac = 0.8: 0.5 − 0.4·0.008 = 0.4968
        close(s.target(249), 0.4968);
        close(s.target(250), 0.5);
        let updates: Vec<u64> = (0..400).filter(|&t| s.should_update(t)).collect();
        assert_eq!(updates, vec![0, 100, 200, 250]);
    }

    #[test]
    fn linear_hand_computed() {
        let s = sched(ScheduleKind::Linear, |s| {
            s.target_sparsity = 0.6;
            s.initial_sparsity = 0.2;
            s.end_step = 100;
            s.frequency = 25;
        });
        close(s.target(0), 0.2);
        close(s.target(24), 0.2);
        close(s.target(25), 0.3);
        close(s.target(50), 0.4);
        close(s.target(99), 0.5);
        close(s.target(100), 0.6);
        let updates: Vec<u64> = (0..200).filter(|&t| s.should_update(t)).collect();
        assert_eq!(updates, vec![0, 25, 50, 75, 100]);
    }

    #[test]
    fn one_shot() {
        let s = sched(ScheduleKind::OneShot, |s| {
            s.target_sparsity = 0.3;
            s.start_step = 500;
        });
        close(s.target(499), 0.0);
        close(s.target(500), 0.3);
        close(s.target(10_000), 0.3);
        let updates: Vec<u64> = (0..2000).filter(|&t| s.should_update(t)).collect();
        assert_eq!(updates, vec![500]);
    }

    #[test]
    fn iterative_rounds() {
        // s_f = 1 − 1/8: each of 3 rounds removes half of the survivors.
        let s = sched(ScheduleKind::Iterative, |s| {
            s.target_sparsity = 0.875;
            s.end_step = 300;
            s.iterations = 3;
            s.rewind = true;
        });
        assert_eq!(
            (s.round_start(1), s.round_start(2), s.round_start(3)),
            (100, 200, 300)
        );
        close(s.target(0), 0.0);
        close(s.target(99), 0.0);
        close(s.target(100), 0.5);
        close(s.target(250), 0.75);
        close(s.target(300), 0.875);
        close(s.target(9999), 0.875);
        let updates: Vec<u64> = (0..1000).filter(|&t| s.should_update(t)).collect();
        assert_eq!(updates, vec![100, 200, 300]);
        let rewinds: Vec<u64> = (0..1000).filter(|&t| s.rewind_at(t)).collect();
        assert_eq!(rewinds, vec![100, 200, 300]);
        // Uneven span: 10 + ⌊k·10/3⌋.
        let s = sched(ScheduleKind::Iterative, |s| {
            s.start_step = 10;
            s.end_step = 20;
            s.iterations = 3;
        });
        let updates: Vec<u64> = (0..100).filter(|&t| s.should_update(t)).collect();
        assert_eq!(updates, vec![13, 16, 20]);
        assert!(!s.rewind_at(13)); // rewind = false
    }
}
