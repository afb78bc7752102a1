//! Throughput of the two LoRA products on SmolLM2 shapes, in thread CPU time, per ISA.
//!
//! `cargo run --release -p edgelora-bench --example lora_kernels [-- RANK]`
//!
//! A: `r x 576` F16 rows against an f32 input ([`Kernel::matvec_float`]); B: `576 x r` F16
//! rows added into the output ([`Kernel::matvec_float_add`]). Each is run over 210 distinct
//! matrices (one decode token's worth: 30 layers x 7 linears, ~10 MB at r=32) so the bytes
//! come from L3/memory as in the model, and over one matrix repeatedly (L1/L2, the compute
//! ceiling). Prints GB/s of weight bytes.
//!
//! Then a prompt block of 16 vectors on one (cached) matrix: A and B per vector
//! (`matvec_float`, `matvec_float_add`, and `matvec_q8_0_add` for a Q8_0 B when the rank is a
//! multiple of 32) against the batched `matmul_float`, `matmul_float_add`, `matmul_q8_0_add`
//! that `AdapterSet::apply_batch` runs in prefill (results bit-identical), as ns per vector.

use edgelora::kernels::{Isa, Kernel};
use edgelora::quant::{to_f16_le, BlockQ8_0, GgmlType, QK};
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

/// Best of 5 timings of `f`, each over enough repetitions to last ~20 ms.
fn time(mut f: impl FnMut()) -> f64 {
    let mut reps = 1;
    loop {
        let t = cpu_secs();
        for _ in 0..reps {
            f();
        }
        if cpu_secs() - t > 0.02 {
            break;
        }
        reps *= 2;
    }
    (0..5)
        .map(|_| {
            let t = cpu_secs();
            for _ in 0..reps {
                f();
            }
            (cpu_secs() - t) / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let r: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RANK"))
        .unwrap_or(32);
    let (dim, n_mats) = (576usize, 210usize);
    let mat_bytes = r * dim * 2;
    let mut seed = 1u32;
    let data: Vec<u8> = (0..mat_bytes * n_mats / 2)
        .flat_map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            to_f16_le((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        })
        .collect();
    let x: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0.0f32; dim.max(r)];
    for isa in Isa::ALL {
        let Some(k) = isa.kernel() else { continue };
        let k: &Kernel = k;
        let a_all = time(|| {
            for m in data.chunks_exact(mat_bytes) {
                k.matvec_float(GgmlType::F16, m, dim, &x, &mut y[..r]);
            }
            black_box(&y);
        });
        let a_one = time(|| {
            k.matvec_float(GgmlType::F16, &data[..mat_bytes], dim, &x, &mut y[..r]);
            black_box(&y);
        });
        let b_all = time(|| {
            for m in data.chunks_exact(mat_bytes) {
                k.matvec_float_add(GgmlType::F16, m, r, &x[..r], 0.5, &mut y[..dim]);
            }
            black_box(&y);
        });
        let b_one = time(|| {
            k.matvec_float_add(GgmlType::F16, &data[..mat_bytes], r, &x[..r], 0.5, &mut y);
            black_box(&y);
        });
        // Cold: 128 MB of other data read between passes (as the base weights do in a token).
        let flush = vec![1u8; 128 << 20];
        let cold = |f: &mut dyn FnMut()| {
            (0..5)
                .map(|_| {
                    black_box(flush.iter().step_by(64).fold(0u8, |a, &b| a ^ b));
                    let t = cpu_secs();
                    f();
                    cpu_secs() - t
                })
                .fold(f64::INFINITY, f64::min)
        };
        let a_cold = cold(&mut || {
            for m in data.chunks_exact(mat_bytes) {
                k.matvec_float(GgmlType::F16, m, dim, &x, &mut y[..r]);
            }
            black_box(&y);
        });
        let b_cold = cold(&mut || {
            for m in data.chunks_exact(mat_bytes) {
                k.matvec_float_add(GgmlType::F16, m, r, &x[..r], 0.5, &mut y[..dim]);
            }
            black_box(&y);
        });
        println!(
            "{:>8} r={r}: cold (128 MB read between passes): A {:.1} GB/s, B {:.1} GB/s",
            isa.name(),
            data.len() as f64 / a_cold / 1e9,
            data.len() as f64 / b_cold / 1e9
        );
        let gb = |bytes: usize, s: f64| bytes as f64 / s / 1e9;
        println!(
            "{:>8} r={r}: A {:.1} GB/s streamed ({:.3} ms per {} MB), {:.1} GB/s cached; \
             B {:.1} GB/s streamed ({:.3} ms), {:.1} GB/s cached",
            isa.name(),
            gb(data.len(), a_all),
            a_all * 1e3,
            data.len() / 1_000_000,
            gb(mat_bytes, a_one),
            gb(data.len(), b_all),
            b_all * 1e3,
            gb(mat_bytes, b_one),
        );
        // A prompt block: per vector against batched.
        let nb = 16usize;
        let xs: Vec<f32> = (0..nb * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let ts: Vec<f32> = (0..nb * r).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut ya = vec![0.0f32; nb * r];
        let mut yb = vec![0.0f32; nb * dim];
        let m = &data[..mat_bytes];
        let ns = |s: f64| s / nb as f64 * 1e9;
        let a_vec = time(|| {
            for (xc, yc) in xs.chunks_exact(dim).zip(ya.chunks_exact_mut(r)) {
                k.matvec_float(GgmlType::F16, m, dim, xc, yc);
            }
            black_box(&ya);
        });
        let a_mm = time(|| {
            k.matmul_float(GgmlType::F16, m, dim, r, &xs, &mut ya);
            black_box(&ya);
        });
        let b_vec = time(|| {
            for (tc, yc) in ts.chunks_exact(r).zip(yb.chunks_exact_mut(dim)) {
                k.matvec_float_add(GgmlType::F16, m, r, tc, 1e-3, yc);
            }
            black_box(&yb);
        });
        let b_mm = time(|| {
            k.matmul_float_add(GgmlType::F16, m, r, dim, &ts, 1e-3, &mut yb);
            black_box(&yb);
        });
        print!(
            "{:>8} r={r} block of {nb}: A F16 {:.0} -> {:.0} ns/vector, B F16 {:.0} -> {:.0}",
            isa.name(),
            ns(a_vec),
            ns(a_mm),
            ns(b_vec),
            ns(b_mm)
        );
        if r.is_multiple_of(QK) {
            let q: Vec<BlockQ8_0> = (0..dim * r / QK)
                .map(|i| BlockQ8_0 {
                    d: to_f16_le(0.01),
                    qs: core::array::from_fn(|j| (i * 7 + j * 13) as u8),
                })
                .collect();
            let q_vec = time(|| {
                for (tc, yc) in ts.chunks_exact(r).zip(yb.chunks_exact_mut(dim)) {
                    k.matvec_q8_0_add(&q, r / QK, tc, 1e-3, yc);
                }
                black_box(&yb);
            });
            let q_mm = time(|| {
                k.matmul_q8_0_add(&q, r / QK, dim, &ts, 1e-3, &mut yb);
                black_box(&yb);
            });
            print!(", B Q8_0 {:.0} -> {:.0}", ns(q_vec), ns(q_mm));
        }
        println!(" (per vector -> batched)");
    }
}
