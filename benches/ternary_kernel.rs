//! Ternary × int8 CPU kernel (quench-quant) vs burn Flex f32 matmul of the same shape.
//!
//! Shapes are `out_features × in_features` of the weight: 4096×4096 and 1024×4096 (out = 1024,
//! in = 4096), at batch 1 and 8. Each group measures
//! * `ternary_gemm_i8`: the kernel on pre-quantized int8 activations (2-bit packed weights),
//! * `ternary_forward_f32`: f32 in/out, including per-row activation quantization and rescale,
//! * `flex_f32_matmul`: burn `x[batch, in] · W[in, out]` on `Device::flex()` (f32 weights).
//!
//! Throughput is the bytes of *weights* each product reads (2 bits vs 32 bits per weight), so
//! criterion's GB/s says how close each is to memory bandwidth. Run with
//! `cargo bench --bench ternary_kernel -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use burn::tensor::{Device, Distribution, Shape, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quench_quant::kernel::{TernaryMatrix, quantize_activations_i8};

/// Deterministic SplitMix64 values, so the bench needs no extra crates.
fn splitmix(seed: u64, n: usize) -> impl Iterator<Item = u64> {
    let mut s = seed;
    (0..n).map(move |_| {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

fn bench_shapes(c: &mut Criterion) {
    let device = Device::flex();
    for (out_f, in_f) in [(4096usize, 4096usize), (1024, 4096)] {
        let codes: Vec<i8> = splitmix(1, out_f * in_f)
            .map(|v| (v % 3) as i8 - 1)
            .collect();
        let m = TernaryMatrix::from_codes(&codes, out_f, in_f, 0.02).expect("valid ternary codes");
        let w = Tensor::<2>::random(Shape::new([in_f, out_f]), Distribution::Default, &device);
        for batch in [1usize, 8] {
            let x: Vec<f32> = splitmix(2, batch * in_f)
                .map(|v| (v % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let (q, _) = quantize_activations_i8(&x, batch, in_f);
            let xt = Tensor::<2>::random(Shape::new([batch, in_f]), Distribution::Default, &device);
            let mut acc = vec![0i32; batch * out_f];

            let mut group = c.benchmark_group(format!("out{out_f}_in{in_f}_batch{batch}"));
            group.throughput(Throughput::Bytes(m.weight_bytes() as u64));
            group.bench_function("ternary_gemm_i8", |b| {
                b.iter(|| {
                    m.gemm_i8(black_box(&q), batch, &mut acc);
                    black_box(&acc);
                })
            });
            group.bench_function("ternary_forward_f32", |b| {
                b.iter(|| black_box(m.forward_f32(black_box(&x), batch)))
            });
            group.throughput(Throughput::Bytes((out_f * in_f * 4) as u64));
            group.bench_function("flex_f32_matmul", |b| {
                b.iter(|| {
                    let y = black_box(xt.clone()).matmul(w.clone());
                    device.sync().expect("flex sync");
                    black_box(y)
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench_shapes);
criterion_main!(benches);
