//! The kernel-table suite, generic over every weight type this build runs (tract's suite
//! macros are the model): a new type, or a new ISA kernel for one, is tested here by adding
//! one line to `every_type!`, nothing else.
//!
//! For each table this CPU has (`common::tables`: portable, AVX2, AVX-512 on x86-64; portable,
//! NEON, NEON dotprod on aarch64) and each type:
//! - the table's activation quantiser is byte-identical to the oracle's (`ActType::quantize`);
//! - `Kernel::matvec_q` agrees with the type's oracle `vec_dot` on every row within the f32
//!   rounding bound derived below, over awkward shapes (1..17 rows, 1..5 blocks per row, an
//!   all-zero row, rows with extreme and tiny scales);
//! - `Kernel::matvec_q_side` is bit-identical to `matvec_q` (the side stream only prefetches);
//! - `Kernel::matmul_q` gives every column bit-identical to `matvec_q` of that column (prefill
//!   equals decode on every table, the cross-table contract's first line);
//! - the table actually ran (`kernels::ran`), so a silent fallback fails.
//!
//! Bound: both sides form the integer parts exactly and differ only in how the per-(sub)block
//! float terms `t_k = d_w d_x S_k` are rounded and summed. With `u = 2^-24`, each side is within
//! `(T + 6) u A` of the exact dot (`T <= 10 g + 10` additions for `g` 32-element groups, `A =
//! sum_i (|w_i| + 2|m_i|) |x_i|` with `m_i` the per-element minimum term; the derivation is in
//! `core/tests/quant_oracles.rs`'s `dot_bound`), so the two differ by at most twice that. A wrong
//! scale, nibble or sign moves a row by a whole `|t_k|`, far above it.

mod common;

use edgelora::kernels::{self, Runnable, Side};
use std::sync::Mutex;

/// Serialises the tests that reset and read `kernels::ran` (process-wide flags).
static RAN: Mutex<()> = Mutex::new(());
use edgelora::quant::{blocks_as_bytes, cast_blocks, to_f16_le, ActType, Block, QuantType};

/// Where a type's f16 scales and quants sit (ggml's layouts; checked against gguf-py in
/// `core/tests/quant_oracles.rs`).
struct Layout {
    f16_fields: &'static [usize],
    quants: core::ops::Range<usize>,
    has_min: bool,
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn zero<T: Block>() -> T {
    cast_blocks::<T>(&vec![0u8; size_of::<T>()]).unwrap()[0]
}

/// `n` random blocks: random bytes with sane f16 scales (10^-3..10^1, either sign); block
/// `zero_at` is all zero bytes and block `extreme_at` has its scales at 65504 / 6e-8.
fn random_blocks<T: Block>(rng: &mut Rng, n: usize, lay: &Layout, special: bool) -> Vec<T> {
    let sz = size_of::<T>();
    let mut bytes: Vec<u8> = (0..n * sz).map(|_| rng.u64() as u8).collect();
    for (i, b) in bytes.chunks_exact_mut(sz).enumerate() {
        for (j, &off) in lay.f16_fields.iter().enumerate() {
            let mag = 10f64.powf(rng.f64() * 4.0 - 3.0);
            let v = if rng.f64() < 0.5 { mag } else { -mag };
            let v = match (special, i % 7) {
                (true, 3) => [65504.0, -6e-8][j % 2],
                (true, 5) => 6e-8,
                _ => v as f32,
            };
            b[off..off + 2].copy_from_slice(&to_f16_le(v));
        }
        if special && i % 7 == 1 {
            b.fill(0);
        }
    }
    cast_blocks::<T>(&bytes).unwrap().to_vec()
}

fn dequant<T: QuantType>(w: &[T]) -> Vec<f32> {
    let mut out = vec![f32::NAN; w.len() * T::BLOCK_LEN];
    T::dequantize(w, &mut out);
    out
}

fn dequant_act<A: ActType>(a: &[A]) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.len() * A::BLOCK_LEN];
    A::dequantize(a, &mut out);
    out
}

/// `w` dequantised with its quants zeroed: the per-element minimum term (zero without one).
fn min_part<T: QuantType>(w: &[T], lay: &Layout) -> Vec<f32> {
    if !lay.has_min {
        return vec![0.0; w.len() * T::BLOCK_LEN];
    }
    let mut bytes = blocks_as_bytes(w).to_vec();
    for b in bytes.chunks_exact_mut(size_of::<T>()) {
        b[lay.quants.clone()].fill(0);
    }
    dequant(cast_blocks::<T>(&bytes).unwrap())
}

fn check_type<T: Runnable>(name: &str, lay: &Layout) {
    let u = f32::EPSILON as f64 / 2.0;
    for kernel in common::tables(&format!("{name} kernels")) {
        let isa = kernel.isa();
        kernels::reset_ran();
        let mut rng = Rng(0x5eed ^ T::TYPE.id() as u64);
        let mut worst = 0f64;
        for bpr in [1usize, 2, 3, 5] {
            let cols = bpr * T::BLOCK_LEN;
            for rows in [1usize, 2, 3, 4, 5, 7, 8, 9, 16, 17] {
                let w: Vec<T> = random_blocks(&mut rng, rows * bpr, lay, true);
                // Activations: normal-ish with a few outliers; one all-zero vector is covered
                // by the zero rows' symmetry (0 * x) and the `n = 0` blocks below.
                let x: Vec<f32> = (0..cols)
                    .map(|i| {
                        let v = (rng.f64() - 0.5) * 4.0;
                        (if i % 37 == 5 { v * 50.0 } else { v }) as f32
                    })
                    .collect();
                let mut xq = vec![zero::<T::Act>(); bpr];
                <T::Act as ActType>::quantize(&x, &mut xq);
                let mut xk = vec![zero::<T::Act>(); bpr];
                kernel.quantize(&x, &mut xk);
                assert!(
                    blocks_as_bytes(&xk) == blocks_as_bytes(&xq),
                    "{name} [{}]: the table's activation quantiser differs from the oracle's",
                    isa.name()
                );
                let (wd, md, xd) = (dequant(&w), min_part(&w, lay), dequant_act(&xq));
                let mut got = vec![f32::NAN; rows];
                kernel.matvec_q(&w, bpr, &xq, &mut got);
                let g = cols / 32;
                for r in 0..rows {
                    let want = T::vec_dot(&w[r * bpr..(r + 1) * bpr], &xq);
                    let a: f64 = (0..cols)
                        .map(|i| {
                            let k = r * cols + i;
                            (wd[k].abs() as f64 + 2.0 * md[k].abs() as f64) * xd[i].abs() as f64
                        })
                        .sum();
                    let bound = 2.0 * (10.0 * g as f64 + 16.0) * u * a;
                    let d = (got[r] as f64 - want as f64).abs();
                    assert!(
                        d <= bound,
                        "{name} [{}] rows {rows} bpr {bpr} row {r}: table {} vs oracle {want} (|d| {d:.3e} > bound {bound:.3e})",
                        isa.name(),
                        got[r]
                    );
                    if a > 0.0 {
                        worst = worst.max(d / (u * a));
                    }
                }
                // The side stream only prefetches: identical bits.
                let side_bytes = blocks_as_bytes(&w).to_vec();
                let mut side = Side::NONE;
                side.push(&side_bytes);
                let mut got_side = vec![f32::NAN; rows];
                kernel.matvec_q_side(&w, bpr, &xq, &mut got_side, side);
                assert_eq!(
                    got_side.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{name} [{}]: matvec_q_side differs from matvec_q",
                    isa.name()
                );
            }
            // Blocked matmul: each column bit-identical to the matvec of that column (odd and
            // even row counts: kernels that take rows in pairs end on a single row).
            for (rows, n) in [1usize, 2, 9]
                .into_iter()
                .flat_map(|r| [0usize, 1, 2, 3, 4, 5, 8, 9, 17].map(|n| (r, n)))
            {
                let w: Vec<T> = random_blocks(&mut rng, rows * bpr, lay, true);
                let x: Vec<f32> = (0..n * cols)
                    .map(|_| ((rng.f64() - 0.5) * 6.0) as f32)
                    .collect();
                let mut xq = vec![zero::<T::Act>(); n * bpr];
                kernel.quantize(&x, &mut xq);
                let mut y = vec![f32::NAN; n * rows];
                kernel.matmul_q(&w, bpr, rows, &xq, &mut y);
                for c in 0..n {
                    let mut want = vec![0f32; rows];
                    kernel.matvec_q(&w, bpr, &xq[c * bpr..(c + 1) * bpr], &mut want);
                    assert_eq!(
                        y[c * rows..(c + 1) * rows]
                            .iter()
                            .map(|v| v.to_bits())
                            .collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{name} [{}]: matmul column {c} of {n} differs from its matvec",
                        isa.name()
                    );
                }
            }
        }
        assert!(
            kernels::ran(isa),
            "{name}: the {} table was asked for but did not run",
            isa.name()
        );
        println!(
            "{name} [{}]: matvec within {worst:.1} u*A of the oracle (bound per row 2(10g+16) u*A)",
            isa.name()
        );
    }
}

/// Every weight type, with its layout: one line per type (this crate builds the core with
/// `quant-all`).
macro_rules! every_type {
    ($($t:ident $name:literal [$($f:literal),*] $q:expr, $min:literal;)*) => {
        $(
            check_type::<edgelora::quant::$t>(
                $name,
                &Layout { f16_fields: &[$($f),*], quants: $q, has_min: $min },
            );
        )*
    };
}

#[test]
fn every_type_on_every_table_matches_its_oracle() {
    let _ran = RAN.lock().unwrap_or_else(|e| e.into_inner());
    every_type! {
        BlockQ4_0 "Q4_0" [0] 2..18, false;
        BlockQ4_1 "Q4_1" [0, 2] 4..20, true;
        BlockQ8_0 "Q8_0" [0] 2..34, false;
        BlockQ5_0 "Q5_0" [0] 2..22, false;
        BlockQ5_1 "Q5_1" [0, 2] 4..24, true;
        BlockQ2_K "Q2_K" [80, 82] 16..80, true;
        BlockQ3_K "Q3_K" [108] 0..96, false;
        BlockQ4_K "Q4_K" [0, 2] 16..144, true;
        BlockQ5_K "Q5_K" [0, 2] 16..176, true;
        BlockQ6_K "Q6_K" [208] 0..192, false;
        BlockIQ4_NL "IQ4_NL" [0] 2..18, false;
        BlockIQ4_XS "IQ4_XS" [0] 8..136, false;
    }
}

/// Q8_K rounds half to even (ggml's `nearest_int`), unlike Q8_0/Q8_1's `roundf`, and takes its
/// sign from the *first* element of largest magnitude. Random activations almost never reach
/// an exact tie or two equal magnitudes, so every table's Q8_K quantiser is checked here on
/// blocks built to: `iscale = 1`, `-1` and `0.5` with values on `k + 0.5` ties, equal
/// magnitudes of both signs, and all-zero (with a negative zero).
#[test]
fn q8_k_quantiser_matches_the_oracle_on_ties() {
    use edgelora::quant::{BlockQ8_K, QK_K};
    let mut x = vec![0f32; 4 * QK_K];
    let (b0, rest) = x.split_at_mut(QK_K);
    let (b1, rest) = rest.split_at_mut(QK_K);
    let (b2, b3) = rest.split_at_mut(QK_K);
    // iscale = 1: (i - 128) / 2 covers -63.5..=63.5, every other one a tie.
    for (i, v) in b0.iter_mut().enumerate() {
        *v = (i as f32 - 128.0) * 0.5;
    }
    b0[7] = -127.0;
    // iscale = -1 (max +127 first, then -127): ties of both signs.
    for (i, v) in b1.iter_mut().enumerate() {
        *v = (i % 64) as f32 - 32.0 + 0.5;
    }
    b1[3] = 127.0;
    b1[9] = -127.0;
    // iscale = 0.5 (max -254 first, then +254): odd integers land on ties.
    for (i, v) in b2.iter_mut().enumerate() {
        *v = ((i % 128) as f32 - 64.0) * 2.0 + 1.0;
    }
    b2[0] = -254.0;
    b2[1] = 254.0;
    b3[5] = -0.0;
    let mut want = vec![BlockQ8_K::ZERO; 4];
    <BlockQ8_K as ActType>::quantize(&x, &mut want);
    for kernel in common::tables("Q8_K quantiser ties") {
        let mut got = vec![BlockQ8_K::ZERO; 4];
        // A stale block would hide a missing write of the zero block.
        got[3].qs.fill(0x55);
        kernel.quantize(&x, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g,
                w,
                "Q8_K [{}]: block {i} differs from the oracle's",
                kernel.isa().name()
            );
        }
        println!("Q8_K ties [{}]: byte-identical", kernel.isa().name());
    }
}

/// Every table's SwiGLU, GeGLU and softmax exponential steps are bit-identical to
/// `reference::swiglu` / `reference::geglu` / `reference::exp_shifted` (the AVX-512 ones run `libm::expf`'s / `tanhf`'s operations on lanes,
/// with a scalar fallback for the lanes outside their range): random values of every magnitude, both sides of every bound `libm::expf` branches
/// on (`|t|` = 2^-14, 0.5 ln2, 1.5 ln2, 87.34, 88.72, 103.97), zeros, subnormals, infinities
/// and NaN, at every lane position and with a scalar tail.
#[test]
fn swiglu_geglu_and_exp_match_the_reference_bit_for_bit() {
    let _ran = RAN.lock().unwrap_or_else(|e| e.into_inner());
    let bounds: [u32; 6] = [
        0x3900_0000,
        0x3eb1_7218,
        0x3f85_1592,
        0x42ae_ac50,
        0x42b1_7218,
        0x42cf_f1b5,
    ];
    let mut g: Vec<f32> = Vec::new();
    for b in bounds {
        for d in -3i32..=3 {
            let v = f32::from_bits((b as i32 + d) as u32);
            g.extend([v, -v]);
        }
    }
    g.extend([
        0.0,
        -0.0,
        f32::MIN_POSITIVE / 4.0,
        -f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
    ]);
    let mut rng = Rng(0x51u64);
    for i in 0..200_000 {
        let e = (rng.f64() * 40.0 - 20.0).exp2();
        let v = (rng.f64() - 0.5) * e;
        g.push(if i % 3 == 0 {
            (v * 8.0) as f32
        } else {
            v as f32
        });
    }
    // GeGLU: tanhf's argument is ~0.8 x, its bounds (|z| = 2^-24, 0.2554, 0.5493, 10) and
    // expm1f's (k = +-1, 23) fall in -13..13, sampled densely.
    for _ in 0..400_000 {
        g.push(((rng.f64() - 0.5) * 26.0) as f32);
    }
    g.push(0.5); // a scalar tail after the 16-lane chunks
    let u: Vec<f32> = (0..g.len())
        .map(|i| {
            if i % 5 == 0 {
                1.0
            } else {
                (rng.f64() * 4.0 - 2.0) as f32
            }
        })
        .collect();
    type Step = fn(&kernels::Kernel, &mut [f32], &[f32]);
    type Reference = fn(&mut [f32], &[f32]);
    let steps: [(&str, Reference, Step); 3] = [
        ("swiglu", kernels::reference::swiglu, |k, g, u| {
            k.swiglu(g, u)
        }),
        ("geglu", kernels::reference::geglu, |k, g, u| k.geglu(g, u)),
        // Softmax's step with m = 0 (so `x - m` is `x` and every bound above is hit).
        (
            "exp_shifted",
            |g, _| kernels::reference::exp_shifted(g, 0.0),
            |k, g, _| k.exp_shifted(g, 0.0),
        ),
    ];
    for (name, reference, step) in steps {
        let mut want = g.clone();
        reference(&mut want, &u);
        for kernel in common::tables(name) {
            // Every offset, so each special value meets every lane.
            for off in 0..16 {
                let mut got = g[off..].to_vec();
                kernels::reset_ran();
                step(kernel, &mut got, &u[off..]);
                assert!(
                    kernels::ran(kernel.isa()),
                    "{}: did not run",
                    kernel.isa().name()
                );
                for (i, (a, b)) in got.iter().zip(&want[off..]).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                        "{name} [{}]: g = {:e} ({:#x}), u = {}: {a:e} vs reference {b:e}",
                        kernel.isa().name(),
                        g[off + i],
                        g[off + i].to_bits(),
                        u[off + i]
                    );
                }
            }
        }
    }
}
