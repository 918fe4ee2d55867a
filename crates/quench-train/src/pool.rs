//! Where a training step runs: on a worker of rayon's global pool, not on the thread that
//! called it.
//!
//! burn Flex, `gemm` and quench's own host passes split their work with rayon. Called from a
//! thread outside the pool (the process's main thread), every parallel op is injected into the
//! pool from outside: the caller queues the job, wakes a sleeping worker through a futex and
//! then sleeps on a latch until the job is done, and that happens dozens of times per training
//! step. From a worker thread the same op is a local `join`: the worker pushes half of the work
//! on its own deque, runs the other half itself, and the second worker steals. `perf` showed the
//! cold path's futex wake-ups and scheduler switches on every step; measured side by side
//! (`quench bench`, 2 threads, five alternating rounds), running the loop on a worker gave
//! mlp-fp32 +15 %, lenet-fp32 +12 %, distill +8 % samples/s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Stack size of the pool's workers: the size of a Linux main thread's stack, since the whole
/// command runs on a worker (rayon's default is 2 MiB).
const WORKER_STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a worker thread of rayon's global pool and returns its result.
///
/// Sets up the global pool first when nothing has used it yet: the thread count as rayon
/// decides it (`RAYON_NUM_THREADS`, else one per CPU) and worker stacks as large as a main
/// thread's. When the pool already exists (built elsewhere, or `f` is called from inside it),
/// it is used as it is; called from a worker, `f` runs right there.
pub fn in_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // An error here only means the global pool was already built; then it is used as built.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(WORKER_STACK_BYTES)
        .build_global();
    // `scope` runs its body on a worker of the current pool (injecting it when the caller is
    // outside the pool) and returns once the body and anything it spawned are done.
    rayon::scope(|_| f())
}

/// Runs `f` (one training step) on the calling thread while every other worker of the pool
/// polls for work instead of going to sleep.
///
/// Between two parallel ops of a step there is serial work (the autodiff bookkeeping, small
/// tensor ops), long enough for an idle rayon worker to fall asleep (it yields a few dozen
/// times, then waits on a futex). The next parallel op then pushes half of its work for a
/// sleeping worker, and on this VM the wake-up takes about as long as the half itself: `perf`
/// showed the step's thread running both halves of short ops (a 100 000-element product, a
/// min/max pass) while the second worker slept. During `f`, each other worker runs a polling
/// job that executes whatever work the pool has ([`rayon::yield_now`]) and spins when there is
/// none, so a pushed half is stolen at once — what OpenMP runtimes (PyTorch's included) do by
/// spinning for a while after each parallel region. Workers sleep again between steps, in
/// evaluation and in I/O.
///
/// **Why each poll is bounded.** A worker can pick a polling job up while it waits inside a
/// join (rayon runs any pending job while it waits), and the join it waits in may be one the
/// step's thread needs finished. A poller that only returned at the end of the step would then
/// never return: the step would wait for the join, the join for the poller. So a poller returns
/// after [`IDLE_POLLS`] polls in a row that found no work (about 0.1 ms), first queueing its
/// successor on its own thread: at the top of a worker's loop the successor runs next and the
/// polling goes on; inside a join, the join gets its turn to finish first. A successor taken by
/// the step's own thread returns at once (that thread must not spin: it runs `f`).
///
/// **Only with a core per worker.** A poller keeps its core busy, so with more pool threads
/// than CPUs (`RAYON_NUM_THREADS` above the core count) the pollers would take time from the
/// step itself: measured at 4 threads on this 2-core VM, mlp-fp32 fell from 40 k to 9.7 k
/// samples/s. Then `f` just runs, as it does with one thread or outside the pool. An idle
/// poller also yields its core (`sched_yield`) after a few spins, for other processes.
pub fn hot<R>(f: impl FnOnce() -> R) -> R {
    let Some(runner) = rayon::current_thread_index() else {
        return f();
    };
    if !worth_polling(rayon::current_num_threads(), cores()) {
        return f();
    }
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    rayon::spawn_broadcast(move |_| poll(Arc::clone(&flag), runner));
    /// Stops the pollers when `f` returns or unwinds.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop = Stop(done);
    f()
}

/// The CPUs this process may use, read once: `available_parallelism` reads the affinity mask
/// and the cgroup quota files on every call, and [`hot`] asks once per training step.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// Whether [`hot`] polls: with a second worker, and no more workers than cores.
fn worth_polling(threads: usize, cores: usize) -> bool {
    threads >= 2 && threads <= cores
}

/// Idle polls in a row after which a poller hands over to its successor (see [`hot`]).
const IDLE_POLLS: u32 = 256;

/// Idle polls in a row that only spin; later ones yield the core.
const SPIN_POLLS: u32 = 32;

/// One polling job of [`hot`]: runs pending work until `done`, or until [`IDLE_POLLS`] polls in
/// a row found none (then queues its successor and returns).
fn poll(done: Arc<AtomicBool>, runner: usize) {
    if rayon::current_thread_index() == Some(runner) {
        return;
    }
    #[cfg(test)]
    tests::POLLING.fetch_add(1, Ordering::SeqCst);
    let mut idle = 0;
    while !done.load(Ordering::Acquire) {
        if let Some(rayon::Yield::Executed) = rayon::yield_now() {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle >= IDLE_POLLS {
            let next = Arc::clone(&done);
            rayon::spawn(move || poll(next, runner));
            break;
        }
        if idle < SPIN_POLLS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    #[cfg(test)]
    tests::POLLING.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Pollers running now (all tests of this binary).
    pub(super) static POLLING: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn runs_on_a_pool_worker_and_returns_the_result() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "test thread is outside the pool"
        );
        let (index, value) = in_compute_pool(|| (rayon::current_thread_index(), 6 * 7));
        assert!(index.is_some(), "the closure ran outside the pool");
        assert_eq!(value, 42);
        // Nested: already on a worker, it stays on that worker.
        let (outer, inner) = in_compute_pool(|| {
            let outer = rayon::current_thread_index();
            (outer, in_compute_pool(rayon::current_thread_index))
        });
        assert_eq!(outer, inner);
    }

    #[test]
    fn hot_runs_the_step_here_and_releases_the_other_workers() {
        use rayon::prelude::*;
        for _ in 0..50 {
            let (here, there, sum) = in_compute_pool(|| {
                let here = rayon::current_thread_index();
                hot(|| {
                    // With a second worker (and a core for it), a poller runs while the step
                    // does.
                    let polls = worth_polling(rayon::current_num_threads(), cores());
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                    while polls && POLLING.load(Ordering::SeqCst) == 0 {
                        assert!(std::time::Instant::now() < deadline, "no poller started");
                        std::hint::spin_loop();
                    }
                    let sum = (0..100_000u64).into_par_iter().map(|i| i ^ 3).sum::<u64>();
                    (here, rayon::current_thread_index(), sum)
                })
            });
            assert_eq!(here, there, "the step runs on the calling worker");
            assert_eq!(sum, (0..100_000u64).map(|i| i ^ 3).sum::<u64>());
        }
        // Outside the pool it just runs; a step that panics still stops the pollers.
        assert_eq!(hot(|| 7), 7);
        let caught = std::panic::catch_unwind(|| in_compute_pool(|| hot(|| panic!("step"))));
        assert!(caught.is_err());
        // Every poller stops once its step is over.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while POLLING.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "pollers still running"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn hot_steps_with_nested_joins_finish() {
        // Steps whose parallel work joins inside joins (as the convolution inside the autodiff
        // graph does): a worker waiting in an inner join picks up pollers; each must return.
        // A watchdog turns a hang into a failure.
        use rayon::prelude::*;
        let finished = Arc::new(AtomicBool::new(false));
        let watch = Arc::clone(&finished);
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(120));
            if !watch.load(Ordering::SeqCst) {
                eprintln!("hot steps with nested joins did not finish in 120 s");
                std::process::abort();
            }
        });
        let total = in_compute_pool(|| {
            (0..300u64)
                .map(|step| {
                    hot(|| {
                        (0..64u64)
                            .into_par_iter()
                            .map(|i| {
                                (0..1_000u64)
                                    .into_par_iter()
                                    .map(|j| i * j + step)
                                    .sum::<u64>()
                            })
                            .sum::<u64>()
                    })
                })
                .sum::<u64>()
        });
        finished.store(true, Ordering::SeqCst);
        let want: u64 = (0..300u64)
            .map(|step| {
                (0..64u64)
                    .map(|i| (0..1_000u64).map(|j| i * j + step).sum::<u64>())
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(total, want);
    }

    #[test]
    fn polls_only_with_a_core_per_worker() {
        assert!(!worth_polling(1, 8), "one thread: nothing to poll for");
        assert!(worth_polling(2, 2));
        assert!(worth_polling(4, 8));
        assert!(
            !worth_polling(4, 2),
            "oversubscribed: pollers would slow the step"
        );
    }

    #[test]
    fn parallel_work_inside_matches_outside() {
        use rayon::prelude::*;
        let work = || (0..10_000u64).into_par_iter().map(|i| i * i).sum::<u64>();
        assert_eq!(in_compute_pool(work), work());
    }
}
