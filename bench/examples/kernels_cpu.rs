//! Per-kernel throughput measured in thread CPU time (robust on a shared, loaded machine
//! where criterion's wall-clock figures include other processes' time slices).
//!
//! `cargo run --release -p edgelora-bench --example kernels_cpu [-- types]`
//!
//! Prints, per ISA and SmolLM2 shape, GB/s of weight bytes and GMAC/s for one matvec with the
//! activation already quantised. Matrices up to 0.6 MB stay in cache across iterations (the
//! kernels' compute ceiling); the 30 MB head streams from memory.
//!
//! Then one row per weight type (every type the fast path runs, through the generic
//! `Kernel::matvec_q`) and table: a 576 x 1536 matrix (SmolLM2's `ffn_down`, 0.4-0.8 MB, in
//! cache) and a 16384 x 1536 one (12-23 MB, streamed). `types` runs only these rows.
//!
//! `mm` prints, per weight type and table, the 64-token prompt matmul (`Kernel::matmul_q`)
//! in GMAC/s on SmolLM2's `ffn_up` and `ffn_down` shapes (the prefill question).

use edgelora::kernels::{reference, Isa, Runnable};
use edgelora::quant::{
    cast_blocks, to_f16_le, ActType, Block, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK,
};
use std::hint::black_box;

fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn lcg(seed: &mut u64) -> u8 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 56) as u8
}

/// Best of 5 rounds of `f` repeated until 50 ms of CPU time; seconds per call.
fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (t0, mut n) = (cpu_secs(), 0u32);
        while cpu_secs() - t0 < 0.05 {
            f();
            n += 1;
        }
        best = best.min((cpu_secs() - t0) / n as f64);
    }
    best
}

/// Random blocks of `T` whose f16 fields (at `f16_at`) hold a sane scale, so no lane sees a
/// NaN, infinity or subnormal (which could time differently from real weights).
fn blocks<T: Block>(seed: &mut u64, n: usize, f16_at: &[usize]) -> Vec<T> {
    let sz = size_of::<T>();
    let mut bytes: Vec<u8> = (0..n * sz).map(|_| lcg(seed)).collect();
    for b in bytes.chunks_exact_mut(sz) {
        for &o in f16_at {
            b[o..o + 2].copy_from_slice(&to_f16_le(0.01));
        }
    }
    cast_blocks::<T>(&bytes).expect("whole blocks").to_vec()
}

/// One row per table for type `T`: matvec GB/s and GMAC/s, in cache and streamed.
fn per_type<T: Runnable>(name: &str, f16_at: &[usize], seed: &mut u64) {
    let cols = 1536;
    let bpr = cols / T::BLOCK_LEN;
    let x: Vec<f32> = (0..cols).map(|_| lcg(seed) as f32 / 128.0 - 1.0).collect();
    for rows in [576usize, 16384] {
        let w: Vec<T> = blocks(seed, rows * bpr, f16_at);
        let bytes = (rows * bpr * size_of::<T>()) as f64;
        let mut y = vec![0f32; rows];
        let mut line = format!("{name:<7} {rows:>5}x{cols:<5}");
        for k in Isa::ALL.into_iter().filter_map(Isa::kernel) {
            let mut xq =
                vec![cast_blocks::<T::Act>(&vec![0u8; size_of::<T::Act>()]).unwrap()[0]; bpr];
            k.quantize(&x, &mut xq);
            let t = time(|| k.matvec_q(black_box(&w), bpr, black_box(&xq), &mut y));
            line += &format!(
                " | {:<8} {:>6.2} GB/s {:>5.2} GMAC/s",
                k.isa().name(),
                bytes / t / 1e9,
                (rows * cols) as f64 / t / 1e9
            );
        }
        println!("{line}");
    }
    let _ = <T::Act as ActType>::BLOCK_LEN;
}

/// One row per weight type and table: the prompt matmul (`Kernel::matmul_q`, blocked where
/// the table has a blocked kernel) over 64 tokens, GMAC/s over all columns, for SmolLM2's
/// `ffn_up` (1536 x 576) and `ffn_down` (576 x 1536) shapes where the row length fits the type.
fn per_type_mm<T: Runnable>(name: &str, f16_at: &[usize], seed: &mut u64) {
    let ntok = 64;
    for (rows, cols) in [(1536usize, 576usize), (576, 1536)] {
        if cols % T::BLOCK_LEN != 0 {
            continue;
        }
        let bpr = cols / T::BLOCK_LEN;
        let x: Vec<f32> = (0..cols * ntok)
            .map(|_| lcg(seed) as f32 / 128.0 - 1.0)
            .collect();
        let w: Vec<T> = blocks(seed, rows * bpr, f16_at);
        let mut y = vec![0f32; rows * ntok];
        let mut line = format!("{name:<7} {rows:>5}x{cols:<5} x{ntok}");
        for k in Isa::ALL.into_iter().filter_map(Isa::kernel) {
            let mut xq = vec![
                cast_blocks::<T::Act>(&vec![0u8; size_of::<T::Act>()]).unwrap()[0];
                bpr * ntok
            ];
            k.quantize(&x, &mut xq);
            let t = time(|| k.matmul_q(black_box(&w), bpr, rows, black_box(&xq), &mut y));
            line += &format!(
                " | {:<8} {:>6.2} GMAC/s",
                k.isa().name(),
                (rows * cols * ntok) as f64 / t / 1e9
            );
        }
        println!("{line}");
    }
}

fn types_mm() {
    use edgelora::quant::*;
    let mut seed = 7u64;
    per_type_mm::<BlockQ4_0>("Q4_0", &[0], &mut seed);
    per_type_mm::<BlockQ4_1>("Q4_1", &[0, 2], &mut seed);
    per_type_mm::<BlockQ8_0>("Q8_0", &[0], &mut seed);
    per_type_mm::<BlockQ5_0>("Q5_0", &[0], &mut seed);
    per_type_mm::<BlockQ5_1>("Q5_1", &[0, 2], &mut seed);
    per_type_mm::<BlockQ2_K>("Q2_K", &[80, 82], &mut seed);
    per_type_mm::<BlockQ3_K>("Q3_K", &[108], &mut seed);
    per_type_mm::<BlockQ4_K>("Q4_K", &[0, 2], &mut seed);
    per_type_mm::<BlockQ5_K>("Q5_K", &[0, 2], &mut seed);
    per_type_mm::<BlockQ6_K>("Q6_K", &[208], &mut seed);
    per_type_mm::<BlockIQ4_NL>("IQ4_NL", &[0], &mut seed);
    per_type_mm::<BlockIQ4_XS>("IQ4_XS", &[0], &mut seed);
}

fn types() {
    use edgelora::quant::*;
    let mut seed = 7u64;
    per_type::<BlockQ4_0>("Q4_0", &[0], &mut seed);
    per_type::<BlockQ4_1>("Q4_1", &[0, 2], &mut seed);
    per_type::<BlockQ8_0>("Q8_0", &[0], &mut seed);
    per_type::<BlockQ5_0>("Q5_0", &[0], &mut seed);
    per_type::<BlockQ5_1>("Q5_1", &[0, 2], &mut seed);
    per_type::<BlockQ2_K>("Q2_K", &[80, 82], &mut seed);
    per_type::<BlockQ3_K>("Q3_K", &[108], &mut seed);
    per_type::<BlockQ4_K>("Q4_K", &[0, 2], &mut seed);
    per_type::<BlockQ5_K>("Q5_K", &[0, 2], &mut seed);
    per_type::<BlockQ6_K>("Q6_K", &[208], &mut seed);
    per_type::<BlockIQ4_NL>("IQ4_NL", &[0], &mut seed);
    per_type::<BlockIQ4_XS>("IQ4_XS", &[0], &mut seed);
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("types") => return types(),
        Some("mm") => return types_mm(),
        _ => {}
    }
    let mut seed = 1u64;
    let shapes = [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ];
    for (rows, cols) in shapes {
        let nb = cols / QK;
        let x: Vec<f32> = (0..cols)
            .map(|_| lcg(&mut seed) as f32 / 128.0 - 1.0)
            .collect();
        let mut x0 = vec![BlockQ8_0::ZERO; nb];
        let mut x1 = vec![BlockQ8_1::ZERO; nb];
        reference::quantize_row_q8_0(&x, &mut x0);
        reference::quantize_row_q8_1(&x, &mut x1);
        let d = to_f16_le(0.01);
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
        let mut y = vec![0f32; rows];
        for k in Isa::ALL.into_iter().filter_map(Isa::kernel) {
            let macs = (rows * cols) as f64;
            let t41 = time(|| k.matvec_q4_1(black_box(&w41), nb, black_box(&x1), &mut y));
            let t80 = time(|| k.matvec_q8_0(black_box(&w80), nb, black_box(&x0), &mut y));
            println!(
                "{rows:>5}x{cols:<5} {:<8} q4_1: {:>7.2} GB/s {:>6.2} GMAC/s | q8_0: {:>7.2} GB/s {:>6.2} GMAC/s",
                k.isa().name(),
                (rows * nb * 20) as f64 / t41 / 1e9,
                macs / t41 / 1e9,
                (rows * nb * 34) as f64 / t80 / 1e9,
                macs / t80 / 1e9,
            );
            if rows < 49152 {
                // Blocked matmul over a 16-token batch: MACs per second over all columns.
                let cols = 16;
                let xb1: Vec<BlockQ8_1> = x1.iter().cycle().take(nb * cols).copied().collect();
                let xb0: Vec<BlockQ8_0> = x0.iter().cycle().take(nb * cols).copied().collect();
                let mut yb = vec![0f32; rows * cols];
                let m41 =
                    time(|| k.matmul_q4_1(black_box(&w41), nb, rows, black_box(&xb1), &mut yb));
                let m80 =
                    time(|| k.matmul_q8_0(black_box(&w80), nb, rows, black_box(&xb0), &mut yb));
                println!(
                    "{:>20} matmul x{cols}: q4_1 {:>6.2} GMAC/s | q8_0 {:>6.2} GMAC/s",
                    "",
                    macs * cols as f64 / m41 / 1e9,
                    macs * cols as f64 / m80 / 1e9,
                );
            }
        }
    }
    types();
}
