//! Does burn Flex's f32 matrix product get faster with a second thread on this machine?
//!
//! The MLP workloads of `quench bench` spend about half of a step in these four products (the
//! forward and the two backward products of the 784-512-512-10 MLP at batch 128). Run with
//! `RAYON_NUM_THREADS=1` and `=2` and compare. On the 2-vCPU VM of issue 7, while burn's `rayon`
//! feature was off (quench's `default-features = false` had dropped it), both gave the same
//! GFLOP/s: Flex called `gemm` without parallelism. With it on (the workspace now names it), two
//! threads give 1.5–1.7× on three of the four shapes (the weight gradient, with k = 128, stays
//! at about 40–50 GFLOP/s).
//!
//! `cargo run --release --example matmul_scaling`

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};

fn main() {
    let device = Device::flex();
    println!("threads: {}", rayon::current_num_threads());
    // [m, k] × [k, n]: forward 784→512, forward 512→512, a weight gradient (xᵀ·g), an input
    // gradient (g·Wᵀ).
    for (m, k, n) in [
        (128, 784, 512),
        (128, 512, 512),
        (784, 128, 512),
        (128, 512, 784),
    ] {
        let a = Tensor::<2>::random([m, k], Distribution::Default, &device);
        let b = Tensor::<2>::random([k, n], Distribution::Default, &device);
        let run = || a.clone().matmul(b.clone()).into_data();
        for _ in 0..20 {
            run();
        }
        let iters = 300;
        let start = Instant::now();
        for _ in 0..iters {
            run();
        }
        let seconds = start.elapsed().as_secs_f64() / iters as f64;
        let gflops = 2.0 * (m * k * n) as f64 / seconds / 1e9;
        println!(
            "{m}x{k} · {k}x{n}: {:.3} ms, {gflops:.1} GFLOP/s",
            seconds * 1e3
        );
    }
}
