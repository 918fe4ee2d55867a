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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn parallel_work_inside_matches_outside() {
        use rayon::prelude::*;
        let work = || (0..10_000u64).into_par_iter().map(|i| i * i).sum::<u64>();
        assert_eq!(in_compute_pool(work), work());
    }
}
