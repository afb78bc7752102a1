//! Per-kernel throughput at SmolLM2-135M's shapes, for every ISA this machine runs.
//!
//! `cargo bench -p edgelora-bench --bench kernels [-- FILTER]`
//!
//! Each benchmark is one matvec `y = W x` (activation already quantised, as in the model where
//! it is quantised once per input). Criterion reports GB/s of weight bytes (`Throughput::
//! Bytes`); GMAC/s = GB/s x (32 / bytes per block): Q4_0 x 1.78, Q4_1 x 1.6, Q8_0 x 0.94,
//! F16 x 0.5. `q4_1 matmul x16` is the blocked prompt-batch kernel over 16 tokens. The
//! 576x49152 head (30 MB) streams from DRAM; the per-layer matrices (0.1-0.6 MB)
//! are read from cache when benchmarked alone, so they show the kernels' compute ceiling.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use edgelora::kernels::{reference, Isa, Kernel};
use edgelora::quant::{to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QK};
use std::hint::black_box;
use std::time::Duration;

/// (rows, cols, name): SmolLM2-135M's linears and its tied output head.
const SHAPES: [(usize, usize, &str); 5] = [
    (576, 576, "576x576 q/o"),
    (192, 576, "192x576 k/v"),
    (1536, 576, "1536x576 gate/up"),
    (576, 1536, "576x1536 down"),
    (49152, 576, "49152x576 head"),
];

fn lcg(seed: &mut u64) -> u8 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 56) as u8
}

fn act(cols: usize, seed: &mut u64) -> Vec<f32> {
    (0..cols).map(|_| lcg(seed) as f32 / 128.0 - 1.0).collect()
}

fn kernels() -> Vec<&'static Kernel> {
    Isa::ALL
        .into_iter()
        .filter_map(|i| {
            let k = i.kernel();
            if k.is_none() {
                eprintln!("SKIPPED {}: not available on this CPU", i.name());
            }
            k
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut seed = 1u64;
    for &(rows, cols, name) in &SHAPES {
        let nb = cols / QK;
        let x = act(cols, &mut seed);
        let mut x0 = vec![BlockQ8_0::ZERO; nb];
        let mut x1 = vec![BlockQ8_1::ZERO; nb];
        reference::quantize_row_q8_0(&x, &mut x0);
        reference::quantize_row_q8_1(&x, &mut x1);
        let d = to_f16_le(0.01);
        let w40: Vec<BlockQ4_0> = (0..rows * nb)
            .map(|_| BlockQ4_0 {
                d,
                qs: core::array::from_fn(|_| lcg(&mut seed)),
            })
            .collect();
        let w41: Vec<BlockQ4_1> = (0..rows * nb)
            .map(|_| BlockQ4_1 {
                d,
                m: d,
                qs: core::array::from_fn(|_| lcg(&mut seed)),
            })
            .collect();
        let w80: Vec<BlockQ8_0> = (0..rows * nb)
            .map(|_| BlockQ8_0 {
                d,
                qs: core::array::from_fn(|_| lcg(&mut seed)),
            })
            .collect();
        let wf16: Vec<u8> = (0..rows * cols)
            .flat_map(|_| to_f16_le(lcg(&mut seed) as f32 / 256.0))
            .collect();
        let mut y = vec![0f32; rows];

        let mut g = c.benchmark_group(format!("matvec {name}"));
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1))
            .sample_size(20);
        for k in kernels() {
            let isa = k.isa().name();
            g.throughput(Throughput::Bytes((rows * nb * 20) as u64));
            g.bench_function(BenchmarkId::new("q4_1", isa), |b| {
                b.iter(|| k.matvec_q4_1(black_box(&w41), nb, black_box(&x1), &mut y))
            });
            g.throughput(Throughput::Bytes((rows * nb * 18) as u64));
            g.bench_function(BenchmarkId::new("q4_0", isa), |b| {
                b.iter(|| k.matvec_q4_0(black_box(&w40), nb, black_box(&x0), &mut y))
            });
            g.throughput(Throughput::Bytes((rows * nb * 34) as u64));
            g.bench_function(BenchmarkId::new("q8_0", isa), |b| {
                b.iter(|| k.matvec_q8_0(black_box(&w80), nb, black_box(&x0), &mut y))
            });
            if rows < 49152 {
                // Blocked matmul over a 16-token prompt batch; throughput counts the weight
                // bytes once per token, as 16 matvecs would read them.
                let xb: Vec<BlockQ8_1> = x1.iter().cycle().take(nb * 16).copied().collect();
                let mut yb = vec![0f32; rows * 16];
                g.throughput(Throughput::Bytes((rows * nb * 20 * 16) as u64));
                g.bench_function(BenchmarkId::new("q4_1 matmul x16", isa), |b| {
                    b.iter(|| k.matmul_q4_1(black_box(&w41), nb, rows, black_box(&xb), &mut yb))
                });
            }
            g.throughput(Throughput::Bytes((rows * cols * 2) as u64));
            g.bench_function(BenchmarkId::new("f16", isa), |b| {
                b.iter(|| {
                    k.matvec_float(GgmlType::F16, black_box(&wf16), cols, black_box(&x), &mut y)
                })
            });
        }
        g.finish();
    }
    // Activation quantisers at the widest input (ffn_dim).
    let x = act(1536, &mut seed);
    let mut q1 = vec![BlockQ8_1::ZERO; 1536 / QK];
    let mut g = c.benchmark_group("quantize 1536 -> q8_1");
    g.warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));
    g.throughput(Throughput::Bytes(1536 * 4));
    for k in kernels() {
        g.bench_function(k.isa().name(), |b| {
            b.iter(|| k.quantize_q8_1(black_box(&x), &mut q1))
        });
    }
    g.bench_function("reference", |b| {
        b.iter(|| reference::quantize_row_q8_1(black_box(&x), &mut q1))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
