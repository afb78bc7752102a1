//! Every fast kernel against the scalar oracle (`kernels::reference`), for every ISA this
//! machine runs; ISAs it lacks print `SKIPPED` with the reason.
//!
//! What "agree" means:
//! - Activation quantisers: bit-exact blocks (ggml `quantize_row_q8_{0,1}_ref`), finite input.
//! - Quantised dots: the integer part is exact, so with unit scales (`d = 1`, `m = 0`) the
//!   results must be *identical*. With real scales only the f32 accumulation differs: the
//!   oracle adds `sumi * (d_w d_x)` (+ `m_w s_x`) block after block, a SIMD kernel keeps
//!   partial sums in lanes, uses FMA and adds the lanes at the end. Both are sums of the same
//!   exact products (`d_w d_x` of two f16s is exact in f32), so each is within `γ_n S` of the
//!   exact value, where `S` is the sum of the absolute values of the terms and `γ_n ≈ n u`
//!   (`u = 2^-24`, Higham, *Accuracy and Stability of Numerical Algorithms*, 4.2). The
//!   oracle's chain has `2 nb` additions, a kernel's at most `nb + 8` (lanes, final
//!   reduction, the `m s` sum), so `|fast - oracle| <= (3 nb + 8) u S` with
//!   `S = sum_b |d_w d_x| sum_j |q_w q_x| + |m_w s_x|`.
//! - Float rows (F16/BF16/F32 against f32): the same argument with `k` terms,
//!   `|fast - oracle| <= (2 k + 16) u sum_j |w_j x_j|`.
//!
//! Forcing: `kernels::force(isa)` makes the dispatcher (the model's path) use that ISA; the
//! tests then check `kernels::ran(isa)`, so a silent fallback fails. Set `EDGELORA_ISA=avx2`
//! (etc.) to run the `env_forced_isa_actually_runs` check for one ISA, as
//! `scripts/test-kernels-all-isas.sh` does for each.

use edgelora::kernels::{self, reference as r, Isa, Kernel, MatRef};
use edgelora::quant::{
    blocks_as_bytes, f16_le, to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QK,
};
use std::sync::Mutex;

/// Serialises the tests: the dispatcher and the `ran` record are process-wide, and a test
/// that checks "the forced ISA ran, no other did" must not see kernels run by another test.
static GLOBAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL.lock().unwrap_or_else(|e| e.into_inner())
}

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 56) as u8
    }
    /// Uniform in [-1, 1).
    fn f(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn q8(&mut self) -> u8 {
        // Activation values are in -127..=127 (what the quantisers produce).
        ((self.byte() as i32 % 255) - 127) as i8 as u8
    }
}

/// The kernels of every ISA this machine runs; prints SKIPPED for the others.
fn kernels_here() -> Vec<&'static Kernel> {
    let mut v = vec![];
    for isa in Isa::ALL {
        match isa.kernel() {
            Some(k) => v.push(k),
            None => println!("SKIPPED {}: {}", isa.name(), why_missing(isa)),
        }
    }
    assert!(v.iter().any(|k| k.isa() == Isa::Portable));
    v
}

fn why_missing(isa: Isa) -> &'static str {
    match isa {
        Isa::Avx2 | Isa::Avx512 if !cfg!(target_arch = "x86_64") => "not an x86_64 target",
        Isa::Avx2 => "CPU/OS lacks AVX2+FMA+F16C",
        Isa::Avx512 => "CPU/OS lacks AVX-512 F/BW/VL+VNNI+VBMI",
        Isa::Neon | Isa::NeonDot if !cfg!(target_arch = "aarch64") => {
            "not an aarch64 target (run scripts/test-aarch64.sh)"
        }
        Isa::NeonDot => "CPU lacks the dot-product extension",
        Isa::Dsp => {
            "Cortex-M DSP kernels are chosen at compile time (target arm, feature cortex-m-dsp)"
        }
        _ => "not available",
    }
}

// ---- block generators --------------------------------------------------------------------

/// f16 scales: random normal-range values, plus the extremes the tests must survive.
fn scale(rng: &mut Rng, case: usize) -> [u8; 2] {
    match case % 9 {
        0 => [0, 0],                    // zero
        1 => to_f16_le(65504.0),        // f16 max
        2 => to_f16_le(-65504.0),       // negative max
        3 => [1, 0],                    // smallest subnormal
        4 => to_f16_le(-1e-3),          // negative
        5 => to_f16_le(6.1e-5),         // smallest normal
        _ => to_f16_le(rng.f() * 0.05), // typical
    }
}

/// Nibble/quant bytes: random, all zero, all max, all min, alternating.
fn qbyte(rng: &mut Rng, pattern: usize) -> u8 {
    match pattern % 6 {
        0 => 0x00,
        1 => 0xff,
        2 => 0x0f,
        3 => 0xf0,
        _ => rng.byte(),
    }
}

fn q4_0_blocks(rng: &mut Rng, n: usize, extreme: bool) -> Vec<BlockQ4_0> {
    (0..n)
        .map(|i| {
            let p = if extreme { i } else { 5 };
            let mut b = BlockQ4_0 {
                d: scale(rng, if extreme { i } else { 8 }),
                qs: [0; 16],
            };
            b.qs.iter_mut().for_each(|q| *q = qbyte(rng, p));
            b
        })
        .collect()
}

fn q4_1_blocks(rng: &mut Rng, n: usize, extreme: bool) -> Vec<BlockQ4_1> {
    (0..n)
        .map(|i| {
            let p = if extreme { i } else { 5 };
            let mut b = BlockQ4_1 {
                d: scale(rng, if extreme { i } else { 8 }),
                m: scale(rng, if extreme { i + 4 } else { 8 }),
                qs: [0; 16],
            };
            b.qs.iter_mut().for_each(|q| *q = qbyte(rng, p));
            b
        })
        .collect()
}

fn q8_0_weights(rng: &mut Rng, n: usize, extreme: bool) -> Vec<BlockQ8_0> {
    (0..n)
        .map(|i| {
            let mut b = BlockQ8_0 {
                d: scale(rng, if extreme { i } else { 8 }),
                qs: [0; 32],
            };
            // Weights may hold -128 (0x80): files are not limited to the quantiser's range.
            let pat = [0x00u8, 0x7f, 0x80, 0x81];
            b.qs.iter_mut().for_each(|q| {
                *q = if extreme && i % 2 == 0 {
                    pat[i / 2 % 4]
                } else {
                    rng.byte()
                }
            });
            b
        })
        .collect()
}

fn q8_acts(rng: &mut Rng, n: usize, extreme: bool) -> (Vec<BlockQ8_0>, Vec<BlockQ8_1>) {
    let mut a0 = vec![];
    let mut a1 = vec![];
    for i in 0..n {
        let mut qs = [0u8; 32];
        let ext = [127u8, (-127i8) as u8, 0];
        qs.iter_mut().for_each(|q| {
            *q = if extreme && i % 2 == 1 {
                ext[i / 2 % 3]
            } else {
                rng.q8()
            }
        });
        let d = scale(rng, if extreme { i + 2 } else { 8 });
        let sum: i32 = qs.iter().map(|&q| q as i8 as i32).sum();
        let s = to_f16_le(sum as f32 * f16_le(d));
        a0.push(BlockQ8_0 { d, qs });
        a1.push(BlockQ8_1 { d, s, qs });
    }
    (a0, a1)
}

// ---- tolerances ----------------------------------------------------------------------------

fn f(b: [u8; 2]) -> f64 {
    f16_le(b) as f64
}

fn abs_terms_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(a, b)| {
            let s: i64 = (0..16)
                .map(|j| {
                    let lo = (a.qs[j] & 15) as i64 - 8;
                    let hi = (a.qs[j] >> 4) as i64 - 8;
                    (lo * b.qs[j] as i8 as i64).abs() + (hi * b.qs[j + 16] as i8 as i64).abs()
                })
                .sum();
            (f(a.d) * f(b.d)).abs() * s as f64
        })
        .sum()
}

fn abs_terms_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(a, b)| {
            let s: i64 = (0..16)
                .map(|j| {
                    let lo = (a.qs[j] & 15) as i64;
                    let hi = (a.qs[j] >> 4) as i64;
                    (lo * b.qs[j] as i8 as i64).abs() + (hi * b.qs[j + 16] as i8 as i64).abs()
                })
                .sum();
            (f(a.d) * f(b.d)).abs() * s as f64 + (f(a.m) * f(b.s)).abs()
        })
        .sum()
}

fn abs_terms_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f64 {
    w.iter()
        .zip(x)
        .map(|(a, b)| {
            let s: i64 = (0..32)
                .map(|j| (a.qs[j] as i8 as i64 * b.qs[j] as i8 as i64).abs())
                .sum();
            (f(a.d) * f(b.d)).abs() * s as f64
        })
        .sum()
}

fn check_close(what: &str, got: f32, want: f32, nb: usize, s: f64) {
    let tol = (3 * nb + 8) as f64 * U * s;
    let err = (got as f64 - want as f64).abs();
    assert!(
        got == want || err <= tol || (got.is_nan() && want.is_nan()),
        "{what}: got {got}, oracle {want}, |diff| {err:e} > bound {tol:e} (nb {nb}, S {s:e})"
    );
}

/// Row lengths: one block, small, the model's, 4096+32, odd block counts, and past the
/// AVX-512 kernels' repacking limit (8192 + 32, which falls back to AVX2).
const KS: [usize; 8] = [32, 64, 96, 576, 1536, 4096 + 32, 33 * 32, 8192 + 32];

// ---- quantisers ------------------------------------------------------------------------------

#[test]
fn quantizers_are_bit_exact() {
    let _g = lock();
    let mut rng = Rng(0x1234_5678);
    for k in kernels_here() {
        for &n in &KS {
            for case in 0..8 {
                let mag = [1.0f32, 1e-3, 1e4, 1e-30, 3e5, 0.0, 1.0, 127.0][case];
                let mut x: Vec<f32> = (0..n).map(|_| rng.f() * mag).collect();
                if case == 6 {
                    // Exact ties for roundf: x * id = q + 0.5 for some elements.
                    for (i, v) in x.iter_mut().enumerate() {
                        *v = (i % 64) as f32 * 0.5 - 16.0;
                    }
                }
                if case == 7 {
                    x.iter_mut().step_by(32).for_each(|v| *v = 0.0);
                }
                let nb = n / QK;
                let (mut a0, mut b0) = (vec![BlockQ8_0::ZERO; nb], vec![BlockQ8_0::ZERO; nb]);
                let (mut a1, mut b1) = (vec![BlockQ8_1::ZERO; nb], vec![BlockQ8_1::ZERO; nb]);
                r::quantize_row_q8_0(&x, &mut a0);
                k.quantize_q8_0(&x, &mut b0);
                r::quantize_row_q8_1(&x, &mut a1);
                k.quantize_q8_1(&x, &mut b1);
                for i in 0..nb {
                    assert_eq!(
                        a0[i],
                        b0[i],
                        "{:?} q8_0 n={n} case={case} block {i}",
                        k.isa()
                    );
                    assert_eq!(
                        a1[i],
                        b1[i],
                        "{:?} q8_1 n={n} case={case} block {i}",
                        k.isa()
                    );
                }
            }
        }
    }
}

// ---- quantised dots --------------------------------------------------------------------------

/// Checks one matrix (rows x nb blocks) three ways: matvec against the oracle's row dots,
/// single-row dots, and untouched outputs past the rows.
fn check_q4_0(k: &Kernel, w: &[BlockQ4_0], nb: usize, x: &[BlockQ8_0], what: &str) {
    let rows = w.len() / nb;
    let mut y = vec![f32::NAN; rows + 1];
    k.matvec_q4_0(w, nb, x, &mut y);
    for (i, row) in w.chunks_exact(nb).enumerate() {
        let want = r::vec_dot_q4_0_q8_0(row, x);
        check_close(what, y[i], want, nb, abs_terms_q4_0(row, x));
    }
    assert!(y[rows].is_nan(), "{what}: wrote past the rows");
}

fn check_q4_1(k: &Kernel, w: &[BlockQ4_1], nb: usize, x: &[BlockQ8_1], what: &str) {
    let rows = w.len() / nb;
    let mut y = vec![f32::NAN; rows + 1];
    k.matvec_q4_1(w, nb, x, &mut y);
    for (i, row) in w.chunks_exact(nb).enumerate() {
        let want = r::vec_dot_q4_1_q8_1(row, x);
        check_close(what, y[i], want, nb, abs_terms_q4_1(row, x));
    }
    assert!(y[rows].is_nan(), "{what}: wrote past the rows");
}

fn check_q8_0(k: &Kernel, w: &[BlockQ8_0], nb: usize, x: &[BlockQ8_0], what: &str) {
    let rows = w.len() / nb;
    let mut y = vec![f32::NAN; rows + 1];
    k.matvec_q8_0(w, nb, x, &mut y);
    for (i, row) in w.chunks_exact(nb).enumerate() {
        let want = r::vec_dot_q8_0_q8_0(row, x);
        check_close(what, y[i], want, nb, abs_terms_q8_0(row, x));
    }
    assert!(y[rows].is_nan(), "{what}: wrote past the rows");
}

#[test]
fn quantized_dots_match_oracle_random_and_extreme() {
    let _g = lock();
    let mut rng = Rng(0xfeed_beef);
    for k in kernels_here() {
        for &n in &KS {
            let nb = n / QK;
            for rows in [1usize, 2, 3, 5, 8] {
                for extreme in [false, true] {
                    let what = format!("{:?} k={n} rows={rows} extreme={extreme}", k.isa());
                    let (x0, x1) = q8_acts(&mut rng, nb, extreme);
                    let w = q4_0_blocks(&mut rng, nb * rows, extreme);
                    check_q4_0(k, &w, nb, &x0, &format!("q4_0 {what}"));
                    let w = q4_1_blocks(&mut rng, nb * rows, extreme);
                    check_q4_1(k, &w, nb, &x1, &format!("q4_1 {what}"));
                    let w = q8_0_weights(&mut rng, nb * rows, extreme);
                    check_q8_0(k, &w, nb, &x0, &format!("q8_0 {what}"));
                }
            }
        }
    }
}

#[test]
fn quantized_dots_model_shapes() {
    let _g = lock();
    // SmolLM2-135M: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536, head 49152x576.
    let mut rng = Rng(42);
    let shapes = [
        (576, 576),
        (192, 576),
        (1536, 576),
        (576, 1536),
        (49152, 576),
    ];
    for k in kernels_here() {
        for &(rows, cols) in &shapes {
            let nb = cols / QK;
            let what = format!("{:?} {rows}x{cols}", k.isa());
            let (x0, x1) = q8_acts(&mut rng, nb, false);
            if rows == 49152 {
                let w = q8_0_weights(&mut rng, nb * rows, false);
                check_q8_0(k, &w, nb, &x0, &format!("q8_0 {what}"));
                continue;
            }
            let w = q4_1_blocks(&mut rng, nb * rows, false);
            check_q4_1(k, &w, nb, &x1, &format!("q4_1 {what}"));
            let w = q4_0_blocks(&mut rng, nb * rows, false);
            check_q4_0(k, &w, nb, &x0, &format!("q4_0 {what}"));
        }
    }
}

#[test]
fn integer_parts_are_bit_exact_with_unit_scales() {
    let _g = lock();
    // d = 1, m = 0: every result is an integer below 2^24, so summation order cannot round
    // and the kernels must return exactly the oracle's value.
    let one = to_f16_le(1.0);
    let mut rng = Rng(7);
    for k in kernels_here() {
        for &n in &[32usize, 96, 576, 1536] {
            let nb = n / QK;
            let rows = 3;
            let (mut x0, mut x1) = q8_acts(&mut rng, nb, false);
            x0.iter_mut().for_each(|b| b.d = one);
            x1.iter_mut().for_each(|b| {
                b.d = one;
                b.s = [0, 0];
            });
            let mut w0 = q4_0_blocks(&mut rng, nb * rows, false);
            w0.iter_mut().for_each(|b| b.d = one);
            let mut w1 = q4_1_blocks(&mut rng, nb * rows, false);
            w1.iter_mut().for_each(|b| {
                b.d = one;
                b.m = [0, 0];
            });
            let mut w8 = q8_0_weights(&mut rng, nb * rows, false);
            w8.iter_mut().for_each(|b| b.d = one);
            let mut y = vec![0f32; rows];
            k.matvec_q4_0(&w0, nb, &x0, &mut y);
            for (i, row) in w0.chunks_exact(nb).enumerate() {
                assert_eq!(
                    y[i],
                    r::vec_dot_q4_0_q8_0(row, &x0),
                    "{:?} q4_0 n={n}",
                    k.isa()
                );
            }
            k.matvec_q4_1(&w1, nb, &x1, &mut y);
            for (i, row) in w1.chunks_exact(nb).enumerate() {
                assert_eq!(
                    y[i],
                    r::vec_dot_q4_1_q8_1(row, &x1),
                    "{:?} q4_1 n={n}",
                    k.isa()
                );
            }
            k.matvec_q8_0(&w8, nb, &x0, &mut y);
            for (i, row) in w8.chunks_exact(nb).enumerate() {
                assert_eq!(
                    y[i],
                    r::vec_dot_q8_0_q8_0(row, &x0),
                    "{:?} q8_0 n={n}",
                    k.isa()
                );
            }
        }
    }
}

#[test]
fn degenerate_shapes_do_not_panic() {
    let _g = lock();
    let mut rng = Rng(9);
    for k in kernels_here() {
        let (x0, x1) = q8_acts(&mut rng, 2, false);
        let w = q4_1_blocks(&mut rng, 6, false);
        // bpr = 0 and too-short activations zero the output.
        let mut y = vec![1.0f32; 3];
        k.matvec_q4_1(&w, 0, &x1, &mut y);
        assert_eq!(y, [0.0; 3]);
        y.fill(1.0);
        k.matvec_q4_1(&w, 3, &x1, &mut y);
        assert_eq!(y, [0.0; 3]);
        // Empty everything.
        k.matvec_q4_0(&[], 1, &x0, &mut []);
        k.matvec_q8_0(&[], 1, &[], &mut []);
        assert_eq!(k.dot_q4_1_q8_1(&[], &[]), 0.0);
        // More outputs than rows: the extra stay untouched.
        let mut y = vec![f32::NAN; 5];
        k.matvec_q4_1(&w, 2, &x1, &mut y);
        assert!(y[..3].iter().all(|v| v.is_finite()) && y[3..].iter().all(|v| v.is_nan()));
        // Whole blocks only in the quantisers.
        let mut b = [BlockQ8_0::ZERO; 2];
        k.quantize_q8_0(&[1.0; 40], &mut b);
        assert_eq!(b[1], BlockQ8_0::ZERO);
        k.matvec_float(GgmlType::F16, &[0u8; 6], 0, &[], &mut [1.0]);
        k.matvec_float(GgmlType::Q4_0, &[0u8; 6], 3, &[0.0; 3], &mut [1.0]);
    }
}

// ---- float rows ------------------------------------------------------------------------------

#[test]
fn float_rows_match_oracle() {
    let _g = lock();
    let mut rng = Rng(0xabc);
    for k in kernels_here() {
        // Lengths hit every tail of the SIMD kernels' 16-, 8-, 4- and 1-element steps; row
        // counts 1, 2, 3 and 5 both remainders of their two rows per pass.
        for &n in &[
            1usize, 7, 8, 15, 16, 17, 31, 32, 33, 64, 100, 576, 1536, 4095,
        ] {
            for rows in [1usize, 2, 3, 5] {
                let x: Vec<f32> = (0..n).map(|_| rng.f() * 3.0).collect();
                let vals: Vec<f32> = (0..n * rows)
                    .map(|i| match i % 11 {
                        0 => 0.0,
                        1 => -65504.0,
                        2 => 6e-8,
                        _ => rng.f() * 2.0,
                    })
                    .collect();
                for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
                    let bytes: Vec<u8> = match ty {
                        GgmlType::F16 => vals.iter().flat_map(|&v| to_f16_le(v)).collect(),
                        GgmlType::BF16 => vals
                            .iter()
                            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                            .collect(),
                        _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    };
                    let m = MatRef::new(ty, rows, n, &bytes).unwrap();
                    let mut y = vec![f32::NAN; rows];
                    k.matvec_float(ty, &bytes, n, &x, &mut y);
                    for (i, row) in bytes.chunks_exact(m.row_bytes()).enumerate() {
                        let want = r::dot_row_f32(ty, row, &x);
                        let mut deq = vec![0f32; n];
                        r::dequantize_row(ty, row, &mut deq);
                        let s: f64 = deq.iter().zip(&x).map(|(a, b)| (a * b).abs() as f64).sum();
                        let tol = (2 * n + 16) as f64 * U * s;
                        assert!(
                            ((y[i] - want) as f64).abs() <= tol,
                            "{:?} {ty:?} n={n} row {i}: {} vs oracle {want} (bound {tol:e})",
                            k.isa(),
                            y[i]
                        );
                    }
                }
            }
        }
    }
}

/// `Kernel::matvec_float_add` (the LoRA B update `y += s W t`, rows of only r values) against
/// the oracle's dot per row, for every rank 1..=64 (the SIMD kernels special-case 8/16/32/64
/// and group rows by 8 or 4) and a few larger ones, row counts that leave every remainder,
/// all three float types. Same bound as `float_rows_match_oracle` on the dot, plus the one
/// rounding of the final add. Rows beyond the matrix stay untouched.
#[test]
fn float_add_rows_match_oracle() {
    let _g = lock();
    let mut rng = Rng(0x5eed);
    let ranks: Vec<usize> = (1..=64).chain([65, 100, 256]).collect();
    for k in kernels_here() {
        for &r in &ranks {
            for rows in [1usize, 5, 8, 9, 16, 23, 64] {
                let t: Vec<f32> = (0..r).map(|_| rng.f() * 3.0).collect();
                let vals: Vec<f32> = (0..r * rows)
                    .map(|i| match i % 13 {
                        0 => 0.0,
                        1 => -60000.0,
                        2 => 6e-8,
                        _ => rng.f() * 2.0,
                    })
                    .collect();
                let y0: Vec<f32> = (0..rows + 3).map(|_| rng.f() * 10.0).collect();
                let s = rng.f() * 4.0;
                for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
                    let bytes: Vec<u8> = match ty {
                        GgmlType::F16 => vals.iter().flat_map(|&v| to_f16_le(v)).collect(),
                        GgmlType::BF16 => vals
                            .iter()
                            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                            .collect(),
                        _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    };
                    let m = MatRef::new(ty, rows, r, &bytes).unwrap();
                    let mut y = y0.clone();
                    k.matvec_float_add(ty, &bytes, r, &t, s, &mut y);
                    for (i, row) in bytes.chunks_exact(m.row_bytes()).enumerate() {
                        let dot = r::dot_row_f32(ty, row, &t);
                        let want = y0[i] + s * dot;
                        let mut deq = vec![0f32; r];
                        r::dequantize_row(ty, row, &mut deq);
                        let sum: f64 = deq.iter().zip(&t).map(|(a, b)| (a * b).abs() as f64).sum();
                        let tol = (2 * r + 16) as f64 * U * sum * s.abs() as f64
                            + 2.0 * U * (want.abs() + y0[i].abs()) as f64;
                        assert!(
                            ((y[i] - want) as f64).abs() <= tol,
                            "{:?} {ty:?} r={r} rows={rows} row {i}: {} vs oracle {want} (bound {tol:e})",
                            k.isa(),
                            y[i]
                        );
                    }
                    assert_eq!(
                        &y[rows..],
                        &y0[rows..],
                        "{:?} {ty:?} r={r}: rows past W",
                        k.isa()
                    );
                }
            }
        }
        // Degenerate calls leave y alone.
        let mut y = vec![1.0f32; 4];
        k.matvec_float_add(GgmlType::F16, &[0u8; 16], 0, &[], 1.0, &mut y);
        k.matvec_float_add(GgmlType::F16, &[0u8; 16], 8, &[1.0; 3], 1.0, &mut y);
        k.matvec_float_add(GgmlType::Q8_0, &[0u8; 34], 32, &[1.0; 32], 1.0, &mut y);
        assert_eq!(y, [1.0; 4], "{:?}", k.isa());
    }
}

/// `Kernel::matvec_q8_0_add` (the LoRA B update `y += s W t` for a Q8_0 W whose rows are r
/// values, `t` in f32) against the oracle's dequantised row dotted with `t`, for ranks of 1..8
/// blocks (32..256; the SIMD kernels take eight rows per pass), row counts that leave every
/// remainder, random and extreme blocks (zero, f16 max and subnormal scales; quants 0, 127,
/// -128, -127). Dequantising is exact (`d * q` fits f32), so the bound of
/// `float_add_rows_match_oracle` applies. Rows beyond the matrix stay untouched.
#[test]
fn q8_0_add_rows_match_oracle() {
    let _g = lock();
    let mut rng = Rng(0x0b08);
    for k in kernels_here() {
        for nb in [1usize, 2, 3, 4, 5, 8] {
            let r = nb * QK;
            for rows in [1usize, 5, 7, 8, 9, 15, 16, 17, 23, 64, 67] {
                for extreme in [false, true] {
                    let w = q8_0_weights(&mut rng, rows * nb, extreme);
                    let t: Vec<f32> = (0..r).map(|_| rng.f() * 3.0).collect();
                    let y0: Vec<f32> = (0..rows + 3).map(|_| rng.f() * 10.0).collect();
                    let s = rng.f() * 4.0;
                    let mut y = y0.clone();
                    k.matvec_q8_0_add(&w, nb, &t, s, &mut y);
                    let mut deq = vec![0f32; r];
                    for (i, row) in w.chunks_exact(nb).enumerate() {
                        r::dequantize_row_q8_0(row, &mut deq);
                        let dot: f64 = deq.iter().zip(&t).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let sum: f64 = deq.iter().zip(&t).map(|(a, b)| (a * b).abs() as f64).sum();
                        let want = y0[i] as f64 + s as f64 * dot;
                        let tol = (2 * r + 16) as f64 * U * sum * s.abs() as f64
                            + 2.0 * U * (want.abs() + y0[i].abs() as f64);
                        assert!(
                            (y[i] as f64 - want).abs() <= tol,
                            "{:?} r={r} rows={rows} extreme={extreme} row {i}: {} vs oracle {want} (bound {tol:e})",
                            k.isa(),
                            y[i]
                        );
                    }
                    assert_eq!(&y[rows..], &y0[rows..], "{:?} r={r}: rows past W", k.isa());
                }
            }
        }
        // Degenerate calls leave y alone: no blocks per row, t too short, no rows.
        let w = q8_0_weights(&mut rng, 4, false);
        let mut y = vec![1.0f32; 4];
        k.matvec_q8_0_add(&w, 0, &[1.0; 32], 1.0, &mut y);
        k.matvec_q8_0_add(&w, 1, &[1.0; 31], 1.0, &mut y);
        k.matvec_q8_0_add(&[], 1, &[1.0; 32], 1.0, &mut y);
        assert_eq!(y, [1.0; 4], "{:?}", k.isa());
    }
}

/// F16/BF16/F32 values as little-endian bytes.
fn float_bytes(ty: GgmlType, vals: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => vals.iter().flat_map(|&v| to_f16_le(v)).collect(),
        GgmlType::BF16 => vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// `Kernel::matmul_float` (`Y = W X` for a block of vectors: the LoRA A product of a prompt
/// block, and float base weights in `matmul_input`) against the oracle's dot per (row,
/// column): widths that hit every tail of the 8-element steps, odd and even row counts (two
/// rows per pass), column counts around the four-column groups. Same bound as
/// `float_rows_match_oracle`; nothing written past the output.
#[test]
fn matmul_float_matches_oracle_per_column() {
    let _g = lock();
    let mut rng = Rng(0x3a7f);
    for k in kernels_here() {
        for &cols in &[1usize, 7, 8, 9, 16, 31, 32, 33, 64, 100, 576] {
            for rows in [1usize, 2, 3, 5, 8] {
                for n in [1usize, 2, 3, 4, 5, 7, 8, 9] {
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.f() * 3.0).collect();
                    let vals: Vec<f32> = (0..rows * cols)
                        .map(|i| match i % 11 {
                            0 => 0.0,
                            1 => -65504.0,
                            2 => 6e-8,
                            _ => rng.f() * 2.0,
                        })
                        .collect();
                    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
                        let bytes = float_bytes(ty, &vals);
                        let m = MatRef::new(ty, rows, cols, &bytes).unwrap();
                        let mut y = vec![f32::NAN; n * rows + 1];
                        k.matmul_float(ty, &bytes, cols, rows, &x, &mut y);
                        for (c, xc) in x.chunks_exact(cols).enumerate() {
                            for (o, row) in bytes.chunks_exact(m.row_bytes()).enumerate() {
                                let want = r::dot_row_f32(ty, row, xc);
                                let mut deq = vec![0f32; cols];
                                r::dequantize_row(ty, row, &mut deq);
                                let sum: f64 =
                                    deq.iter().zip(xc).map(|(a, b)| (a * b).abs() as f64).sum();
                                let tol = (2 * cols + 16) as f64 * U * sum;
                                let got = y[c * rows + o];
                                assert!(
                                    ((got - want) as f64).abs() <= tol,
                                    "{:?} {ty:?} cols={cols} rows={rows} n={n} col {c} row {o}: \
                                     {got} vs oracle {want} (bound {tol:e})",
                                    k.isa()
                                );
                            }
                        }
                        assert!(y[n * rows].is_nan(), "{:?} {ty:?}: wrote past y", k.isa());
                    }
                }
            }
        }
        // Degenerate calls leave y alone.
        let mut y = vec![1.0f32; 4];
        k.matmul_float(GgmlType::F16, &[0u8; 16], 0, 2, &[1.0; 8], &mut y);
        k.matmul_float(GgmlType::F16, &[0u8; 16], 8, 2, &[1.0; 8], &mut y);
        k.matmul_float(GgmlType::Q8_0, &[0u8; 34], 32, 1, &[1.0; 32], &mut y);
        k.matmul_float(GgmlType::F32, &[0u8; 32], 8, 1, &[1.0; 7], &mut y);
        assert_eq!(y, [1.0; 4], "{:?}", k.isa());
    }
}

/// `Kernel::matmul_float_add` (the LoRA B update of a prompt block, `Y += s W T`: rows of
/// only r values) against the oracle's dot per (row, column), for every rank 1..=64, a few
/// larger ones (256 is `MAX_RANK`; 300 takes the per-vector fallback), row counts that leave
/// every remainder of the eight-row tiles, column counts around the four-column groups.
/// Same bound as `float_add_rows_match_oracle`.
#[test]
fn matmul_float_add_matches_oracle_per_column() {
    let _g = lock();
    let mut rng = Rng(0xb10c);
    let ranks: Vec<usize> = (1..=64).chain([65, 100, 256, 300]).collect();
    for k in kernels_here() {
        for &r in &ranks {
            for rows in [1usize, 5, 8, 9, 16, 23] {
                for n in [1usize, 3, 4, 5, 9] {
                    let t: Vec<f32> = (0..n * r).map(|_| rng.f() * 3.0).collect();
                    let vals: Vec<f32> = (0..r * rows)
                        .map(|i| match i % 13 {
                            0 => 0.0,
                            1 => -60000.0,
                            2 => 6e-8,
                            _ => rng.f() * 2.0,
                        })
                        .collect();
                    let y0: Vec<f32> = (0..n * rows + 3).map(|_| rng.f() * 10.0).collect();
                    let s = rng.f() * 4.0;
                    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
                        let bytes = float_bytes(ty, &vals);
                        let m = MatRef::new(ty, rows, r, &bytes).unwrap();
                        let mut y = y0.clone();
                        k.matmul_float_add(ty, &bytes, r, rows, &t, s, &mut y);
                        for (c, tc) in t.chunks_exact(r).enumerate() {
                            for (o, row) in bytes.chunks_exact(m.row_bytes()).enumerate() {
                                let i = c * rows + o;
                                let want = y0[i] + s * r::dot_row_f32(ty, row, tc);
                                let mut deq = vec![0f32; r];
                                r::dequantize_row(ty, row, &mut deq);
                                let sum: f64 =
                                    deq.iter().zip(tc).map(|(a, b)| (a * b).abs() as f64).sum();
                                let tol = (2 * r + 16) as f64 * U * sum * s.abs() as f64
                                    + 2.0 * U * (want.abs() + y0[i].abs()) as f64;
                                assert!(
                                    ((y[i] - want) as f64).abs() <= tol,
                                    "{:?} {ty:?} r={r} rows={rows} n={n} col {c} row {o}: {} \
                                     vs oracle {want} (bound {tol:e})",
                                    k.isa(),
                                    y[i]
                                );
                            }
                        }
                        assert_eq!(
                            &y[n * rows..],
                            &y0[n * rows..],
                            "{:?} {ty:?} r={r}",
                            k.isa()
                        );
                    }
                }
            }
        }
        let mut y = vec![1.0f32; 4];
        k.matmul_float_add(GgmlType::F16, &[0u8; 16], 0, 1, &[], 1.0, &mut y);
        k.matmul_float_add(GgmlType::F16, &[0u8; 16], 8, 1, &[1.0; 3], 1.0, &mut y);
        k.matmul_float_add(GgmlType::F16, &[0u8; 16], 8, 2, &[1.0; 8], 1.0, &mut y);
        k.matmul_float_add(GgmlType::Q8_0, &[0u8; 34], 32, 1, &[1.0; 32], 1.0, &mut y);
        assert_eq!(y, [1.0; 4], "{:?}", k.isa());
    }
}

/// `Kernel::matmul_q8_0_add` (a Q8_0 B over a prompt block, `t` in f32) against the oracle's
/// dequantised rows, for ranks of 1..8 blocks, row counts around the eight-row tiles, column
/// counts around the four-column groups, random and extreme blocks (as
/// `q8_0_add_rows_match_oracle`, whose bound applies).
#[test]
fn matmul_q8_0_add_matches_oracle_per_column() {
    let _g = lock();
    let mut rng = Rng(0x0b8c);
    for k in kernels_here() {
        for nb in [1usize, 2, 3, 4, 5, 8] {
            let r = nb * QK;
            for rows in [1usize, 5, 7, 8, 9, 16, 17, 23, 67] {
                for n in [1usize, 3, 4, 5, 9] {
                    for extreme in [false, true] {
                        let w = q8_0_weights(&mut rng, rows * nb, extreme);
                        let t: Vec<f32> = (0..n * r).map(|_| rng.f() * 3.0).collect();
                        let y0: Vec<f32> = (0..n * rows + 3).map(|_| rng.f() * 10.0).collect();
                        let s = rng.f() * 4.0;
                        let mut y = y0.clone();
                        k.matmul_q8_0_add(&w, nb, rows, &t, s, &mut y);
                        let mut deq = vec![0f32; r];
                        for (c, tc) in t.chunks_exact(r).enumerate() {
                            for (o, row) in w.chunks_exact(nb).enumerate() {
                                let i = c * rows + o;
                                r::dequantize_row_q8_0(row, &mut deq);
                                let dot: f64 =
                                    deq.iter().zip(tc).map(|(a, b)| *a as f64 * *b as f64).sum();
                                let sum: f64 =
                                    deq.iter().zip(tc).map(|(a, b)| (a * b).abs() as f64).sum();
                                let want = y0[i] as f64 + s as f64 * dot;
                                let tol = (2 * r + 16) as f64 * U * sum * s.abs() as f64
                                    + 2.0 * U * (want.abs() + y0[i].abs() as f64);
                                assert!(
                                    (y[i] as f64 - want).abs() <= tol,
                                    "{:?} r={r} rows={rows} n={n} extreme={extreme} col {c} row \
                                     {o}: {} vs oracle {want} (bound {tol:e})",
                                    k.isa(),
                                    y[i]
                                );
                            }
                        }
                        assert_eq!(&y[n * rows..], &y0[n * rows..], "{:?} r={r}", k.isa());
                    }
                }
            }
        }
        let w = q8_0_weights(&mut rng, 4, false);
        let mut y = vec![1.0f32; 4];
        k.matmul_q8_0_add(&w, 0, 1, &[1.0; 32], 1.0, &mut y);
        k.matmul_q8_0_add(&w, 1, 1, &[1.0; 31], 1.0, &mut y);
        k.matmul_q8_0_add(&w, 1, 5, &[1.0; 32], 1.0, &mut y);
        k.matmul_q8_0_add(&[], 1, 1, &[1.0; 32], 1.0, &mut y);
        assert_eq!(y, [1.0; 4], "{:?}", k.isa());
    }
}

/// The batched products a prompt block runs (`matmul_float`, `matmul_float_add`,
/// `matmul_q8_0_add`) are bit-identical to the one-vector kernels of the same table, column by
/// column: prefill must give exactly what token-by-token decode gives, because the outputs are
/// quantised to Q8 next and one ulp can cross a rounding boundary (`tests/tests/prefill.rs`).
/// Shapes cover the pair/four-column groups, odd rows, rows before and after the last whole
/// group of eight (which the one-vector kernels finish differently), ranks with and without a
/// specialised kernel and with a scalar tail.
#[test]
fn batched_products_are_bit_identical_to_per_vector() {
    let _g = lock();
    let mut rng = Rng(0xb17e);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for k in kernels_here() {
        for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::F32] {
            for (cols, rows) in [(1, 1), (9, 3), (40, 7), (64, 8), (100, 17), (576, 9)] {
                for n in [1usize, 2, 3, 5, 8] {
                    let vals: Vec<f32> = (0..rows * cols).map(|_| rng.f() * 2.0).collect();
                    let w = float_bytes(ty, &vals);
                    let x: Vec<f32> = (0..n * cols).map(|_| rng.f() * 3.0).collect();
                    let mut got = vec![0f32; n * rows];
                    k.matmul_float(ty, &w, cols, rows, &x, &mut got);
                    let mut want = vec![0f32; n * rows];
                    for (xc, yc) in x.chunks_exact(cols).zip(want.chunks_exact_mut(rows)) {
                        k.matvec_float(ty, &w, cols, xc, yc);
                    }
                    let what = format!("{:?} {ty:?} cols={cols} rows={rows} n={n}", k.isa());
                    assert_eq!(bits(&got), bits(&want), "matmul_float {what}");
                }
            }
            for r in [1usize, 4, 8, 12, 16, 24, 32, 33, 64, 100] {
                for rows in [1usize, 3, 8, 13, 16, 21, 576] {
                    for n in [1usize, 2, 3, 5] {
                        let vals: Vec<f32> = (0..rows * r).map(|_| rng.f() * 2.0).collect();
                        let w = float_bytes(ty, &vals);
                        let t: Vec<f32> = (0..n * r).map(|_| rng.f() * 3.0).collect();
                        let y0: Vec<f32> = (0..n * rows).map(|_| rng.f() * 10.0).collect();
                        let s = rng.f() * 4.0;
                        let mut got = y0.clone();
                        k.matmul_float_add(ty, &w, r, rows, &t, s, &mut got);
                        let mut want = y0.clone();
                        for (tc, yc) in t.chunks_exact(r).zip(want.chunks_exact_mut(rows)) {
                            k.matvec_float_add(ty, &w, r, tc, s, yc);
                        }
                        let what = format!("{:?} {ty:?} r={r} rows={rows} n={n}", k.isa());
                        assert_eq!(bits(&got), bits(&want), "matmul_float_add {what}");
                    }
                }
            }
        }
        for nb in [1usize, 2, 3, 8] {
            let r = nb * QK;
            for rows in [1usize, 2, 3, 8, 13, 16, 21, 576] {
                for n in [1usize, 3, 4, 5, 9] {
                    let w = q8_0_weights(&mut rng, rows * nb, rows == 13);
                    let t: Vec<f32> = (0..n * r).map(|_| rng.f() * 3.0).collect();
                    let y0: Vec<f32> = (0..n * rows).map(|_| rng.f() * 10.0).collect();
                    let s = rng.f() * 4.0;
                    let mut got = y0.clone();
                    k.matmul_q8_0_add(&w, nb, rows, &t, s, &mut got);
                    let mut want = y0.clone();
                    for (tc, yc) in t.chunks_exact(r).zip(want.chunks_exact_mut(rows)) {
                        k.matvec_q8_0_add(&w, nb, tc, s, yc);
                    }
                    let what = format!("{:?} r={r} rows={rows} n={n}", k.isa());
                    assert_eq!(bits(&got), bits(&want), "matmul_q8_0_add {what}");
                }
            }
        }
    }
}

// ---- the model path (MatRef + Input) and the dispatcher -----------------------------------

#[test]
fn matvec_input_quantises_once_and_matches_kernel() {
    let _g = lock();
    let mut rng = Rng(77);
    let k = kernels::best();
    let (rows, cols) = (5, 96);
    let nb = cols / QK;
    let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
    let w = q4_1_blocks(&mut rng, nb * rows, false);
    let m = MatRef::new(GgmlType::Q4_1, rows, cols, blocks_as_bytes(&w)).unwrap();
    let mut sc = vec![0f32; kernels::act_scratch_f32s(cols)];
    let mut inp = kernels::Input::new(&x, &mut sc, k, kernels::KernelMode::Fast);
    let mut y = vec![0f32; rows];
    kernels::matvec_input(&m, &mut inp, &mut y);
    let xq = inp.act::<BlockQ8_1>().unwrap().to_vec();
    let mut want = vec![0f32; rows];
    k.matvec_q4_1(&w, nb, &xq, &mut want);
    assert_eq!(y, want);
    // Reference mode runs the f32 oracle.
    let mut inp = kernels::Input::new(&x, &mut sc, k, kernels::KernelMode::Reference);
    kernels::matvec_input(&m, &mut inp, &mut y);
    let mut want = vec![0f32; rows];
    kernels::matvec(&m, &x, &mut want);
    assert_eq!(y, want);
}

#[cfg(target_arch = "x86_64")]
#[test]
fn detection_agrees_with_std() {
    let _g = lock();
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx512vbmi");
    assert_eq!(Isa::Avx2.kernel().is_some(), avx2);
    assert_eq!(Isa::Avx512.kernel().is_some(), avx512);
    assert!(Isa::Neon.kernel().is_none() && Isa::NeonDot.kernel().is_none());
}

/// A tiny quantised model forward under each forced ISA: the forced ISA must be the one
/// that ran.
#[test]
fn forcing_each_isa_runs_it_in_the_model() {
    let _g = lock();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/tiny/tiny-q4_1.gguf"
    ))
    .unwrap();
    let g = edgelora::Gguf::parse(&bytes).unwrap();
    let model: edgelora::model::Model = edgelora::model::Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let mut buf = vec![0f32; edgelora::model::State::len_for(&cfg, 8)];
    let before = kernels::active().isa();
    let mut outs = vec![];
    for k in kernels_here() {
        let isa = k.isa();
        kernels::force(isa).unwrap();
        kernels::reset_ran();
        let mut st = edgelora::model::State::new(&cfg, 8, &mut buf).unwrap();
        let l = model.forward(3, 0, &mut st).unwrap().to_vec();
        assert_eq!(kernels::active().isa(), isa);
        assert!(
            kernels::ran(isa),
            "forced {} but it did not run",
            isa.name()
        );
        for other in Isa::ALL.into_iter().filter(|&o| o != isa) {
            assert!(
                !kernels::ran(other),
                "forced {} but {} ran",
                isa.name(),
                other.name()
            );
        }
        outs.push((isa, l));
    }
    kernels::force(before).unwrap();
    // All ISAs compute the same quantised model: logits agree to f32 summation error.
    let (_, base) = &outs[0];
    let scale = base.iter().fold(1f32, |m, v| m.max(v.abs()));
    for (isa, l) in &outs[1..] {
        let d = l
            .iter()
            .zip(base)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            d < 1e-4 * scale,
            "{isa:?} logits differ from portable by {d}"
        );
    }
    println!(
        "forced and verified: {:?}",
        outs.iter().map(|o| o.0).collect::<Vec<_>>()
    );
}

/// `EDGELORA_ISA=<isa> cargo test --test kernels env_forced`: fails if that ISA is unknown,
/// unavailable (the dispatcher would fall back) or did not run.
#[test]
fn env_forced_isa_actually_runs() {
    let _g = lock();
    let Ok(want) = std::env::var("EDGELORA_ISA") else {
        println!("SKIPPED: EDGELORA_ISA not set");
        return;
    };
    let isa = Isa::from_name(&want).unwrap_or_else(|| panic!("EDGELORA_ISA={want}: unknown"));
    assert!(
        isa.kernel().is_some(),
        "EDGELORA_ISA={want}: this CPU cannot run it ({})",
        why_missing(isa)
    );
    kernels::reset_ran();
    let k = kernels::active();
    let x = [0.5f32; 64];
    let mut b = [BlockQ8_1::ZERO; 2];
    k.quantize_q8_1(&x, &mut b);
    assert_eq!(
        k.isa(),
        isa,
        "EDGELORA_ISA={want} but the dispatcher chose {:?}",
        k.isa()
    );
    assert!(kernels::ran(isa), "EDGELORA_ISA={want} did not run");
}

// ---- blocked matmul (prompt batches) ---------------------------------------------------------

/// Bits of `v`, for comparing outputs exactly (`-0.0 != 0.0`, NaN == same NaN).
fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One blocked matmul (`mm`) over `cols` columns against the oracle, column by column, and
/// bit for bit against the same table's matvec on each column: the blocked kernels (AVX-512,
/// AVX2) keep every column's lanes and reduction order, so prefill equals token-by-token
/// decode. Also checks that nothing past the `cols * rows` outputs is written.
#[allow(clippy::too_many_arguments)]
fn check_matmul<W, A>(
    what: &str,
    w: &[W],
    nb: usize,
    rows: usize,
    x: &[A],
    cols: usize,
    mm: impl Fn(&[W], usize, usize, &[A], &mut [f32]),
    mv: impl Fn(&[W], usize, &[A], &mut [f32]),
    oracle: impl Fn(&[W], &[A]) -> (f32, f64),
) {
    let mut y = vec![f32::NAN; cols * rows + 1];
    mm(w, nb, rows, x, &mut y);
    assert!(y[cols * rows].is_nan(), "{what}: wrote past the output");
    for c in 0..cols {
        let xc = &x[c * nb..(c + 1) * nb];
        let yc = &y[c * rows..(c + 1) * rows];
        for (r, row) in w.chunks_exact(nb).enumerate() {
            let (want, s) = oracle(row, xc);
            check_close(&format!("{what} c={c} r={r}"), yc[r], want, nb, s);
        }
        let mut yv = vec![f32::NAN; rows];
        mv(w, nb, xc, &mut yv);
        assert_eq!(
            bits(yc),
            bits(&yv),
            "{what} c={c}: not bit-identical to the matvec"
        );
    }
}

/// Every table's `matmul_*` (blocked on AVX-512 and AVX2) over awkward shapes: 1..17 columns
/// (whole and partial 4-column passes), row counts that are not multiples of any grouping,
/// one block to the model's widths and past the blocked kernels' limit (8192 + 32 columns,
/// where they fall back to matvecs), random and extreme blocks.
#[test]
fn matmul_matches_oracle_per_column() {
    let _g = lock();
    let mut rng = Rng(0x5eed);
    for k in kernels_here() {
        kernels::reset_ran();
        for &n in &[32usize, 64, 96, 576, 1536, 8192 + 32] {
            let nb = n / QK;
            for rows in [1usize, 2, 3, 7, 17] {
                for cols in [1usize, 2, 3, 4, 5, 7, 8, 16, 17] {
                    if n > 4096 && cols > 5 {
                        continue; // the fallback: one shape per pass count is enough
                    }
                    let what = format!("{:?} k={n} rows={rows} cols={cols}", k.isa());
                    let mut x0 = vec![];
                    let mut x1 = vec![];
                    for c in 0..cols {
                        let (a, b) = q8_acts(&mut rng, nb, c % 2 == 1);
                        x0.extend(a);
                        x1.extend(b);
                    }
                    let extreme = rows % 2 == 1;
                    let w1 = q4_1_blocks(&mut rng, nb * rows, extreme);
                    let w0 = q4_0_blocks(&mut rng, nb * rows, extreme);
                    let w8 = q8_0_weights(&mut rng, nb * rows, extreme);
                    check_matmul(
                        &format!("mm q4_1 {what}"),
                        &w1,
                        nb,
                        rows,
                        &x1,
                        cols,
                        |w, nb, rows, x, y| k.matmul_q4_1(w, nb, rows, x, y),
                        |w, nb, x, y| k.matvec_q4_1(w, nb, x, y),
                        |row, xc| (r::vec_dot_q4_1_q8_1(row, xc), abs_terms_q4_1(row, xc)),
                    );
                    check_matmul(
                        &format!("mm q8_0 {what}"),
                        &w8,
                        nb,
                        rows,
                        &x0,
                        cols,
                        |w, nb, rows, x, y| k.matmul_q8_0(w, nb, rows, x, y),
                        |w, nb, x, y| k.matvec_q8_0(w, nb, x, y),
                        |row, xc| (r::vec_dot_q8_0_q8_0(row, xc), abs_terms_q8_0(row, xc)),
                    );
                    check_matmul(
                        &format!("mm q4_0 {what}"),
                        &w0,
                        nb,
                        rows,
                        &x0,
                        cols,
                        |w, nb, rows, x, y| k.matmul_q4_0(w, nb, rows, x, y),
                        |w, nb, x, y| k.matvec_q4_0(w, nb, x, y),
                        |row, xc| (r::vec_dot_q4_0_q8_0(row, xc), abs_terms_q4_0(row, xc)),
                    );
                }
            }
        }
        assert!(kernels::ran(k.isa()), "{:?}: matmul did not run", k.isa());
        // Degenerate shapes.
        k.matmul_q4_1(&[], 0, 0, &[], &mut []);
        k.matmul_q8_0(
            &[BlockQ8_0::ZERO; 2],
            1,
            5,
            &[BlockQ8_0::ZERO; 3],
            &mut [0.0; 4],
        );
        k.matmul_q4_0(
            &[BlockQ4_0::ZERO; 6],
            2,
            3,
            &[BlockQ8_0::ZERO; 5],
            &mut [0.0; 7],
        );
    }
}

/// Every table's matmul with each output's integer part exact: unit scales (`d = 1`,
/// `m = 0`) and small enough values that every f32 sum is exact, so all three types must
/// equal the oracle exactly (a lane or column mix-up cannot hide inside the tolerance).
#[test]
fn matmul_integer_parts_are_exact() {
    let _g = lock();
    let mut rng = Rng(0x1a7e);
    let one = to_f16_le(1.0);
    for k in kernels_here() {
        for (nb, rows, cols) in [(1usize, 3usize, 5usize), (18, 5, 4), (48, 2, 7)] {
            let mut x0 = q8_acts(&mut rng, nb * cols, false).0;
            x0.iter_mut().for_each(|b| b.d = one);
            let x1: Vec<BlockQ8_1> = x0
                .iter()
                .map(|b| BlockQ8_1 {
                    d: one,
                    s: to_f16_le(0.0),
                    qs: b.qs,
                })
                .collect();
            let mut w1 = q4_1_blocks(&mut rng, nb * rows, false);
            w1.iter_mut().for_each(|b| {
                b.d = one;
                b.m = to_f16_le(0.0);
            });
            let mut w0 = q4_0_blocks(&mut rng, nb * rows, false);
            w0.iter_mut().for_each(|b| b.d = one);
            let mut w8 = q8_0_weights(&mut rng, nb * rows, false);
            w8.iter_mut().for_each(|b| b.d = one);
            let mut y = vec![0f32; rows * cols];
            let what = format!("{:?} nb={nb} rows={rows} cols={cols}", k.isa());
            k.matmul_q4_1(&w1, nb, rows, &x1, &mut y);
            for (i, &v) in y.iter().enumerate() {
                let want = r::vec_dot_q4_1_q8_1(
                    &w1[(i % rows) * nb..][..nb],
                    &x1[(i / rows) * nb..][..nb],
                );
                assert_eq!(v, want, "q4_1 {what} out {i}");
            }
            k.matmul_q4_0(&w0, nb, rows, &x0, &mut y);
            for (i, &v) in y.iter().enumerate() {
                let want = r::vec_dot_q4_0_q8_0(
                    &w0[(i % rows) * nb..][..nb],
                    &x0[(i / rows) * nb..][..nb],
                );
                assert_eq!(v, want, "q4_0 {what} out {i}");
            }
            k.matmul_q8_0(&w8, nb, rows, &x0, &mut y);
            for (i, &v) in y.iter().enumerate() {
                let want = r::vec_dot_q8_0_q8_0(
                    &w8[(i % rows) * nb..][..nb],
                    &x0[(i / rows) * nb..][..nb],
                );
                assert_eq!(v, want, "q8_0 {what} out {i}");
            }
        }
    }
}

/// A side stream (the LoRA pair a decode matvec prefetches) changes no result: every ISA's
/// `matvec_*_side` is bit-identical to its `matvec_*`, over odd row counts, rows past the
/// AVX-512 repack limit (its AVX2 fallback) and streams shorter, longer and much longer than
/// the weights.
#[test]
fn side_stream_changes_no_result() {
    let _g = lock();
    let mut rng = Rng(0x51de);
    let long: Vec<u8> = (0..200_003).map(|i| i as u8).collect();
    for k in kernels_here() {
        for &(nb, rows) in &[(1, 1), (3, 7), (18, 64), (18, 193), (257, 5), (48, 33)] {
            let (x0, x1) = q8_acts(&mut rng, nb, false);
            let w0 = q4_0_blocks(&mut rng, nb * rows, false);
            let w1 = q4_1_blocks(&mut rng, nb * rows, false);
            let w8 = q8_0_weights(&mut rng, nb * rows, false);
            for cut in [1, 63, 65, 4097, long.len()] {
                let mut side = kernels::Side::default();
                assert!(side.push(&long[..cut]));
                assert!(side.push(&long[cut / 2..]));
                let (mut a, mut b) = (vec![0f32; rows], vec![1f32; rows]);
                k.matvec_q4_0(&w0, nb, &x0, &mut a);
                k.matvec_q4_0_side(&w0, nb, &x0, &mut b, side);
                assert_eq!(a, b, "{:?} q4_0 nb={nb} rows={rows} cut={cut}", k.isa());
                k.matvec_q4_1(&w1, nb, &x1, &mut a);
                k.matvec_q4_1_side(&w1, nb, &x1, &mut b, side);
                assert_eq!(a, b, "{:?} q4_1 nb={nb} rows={rows} cut={cut}", k.isa());
                k.matvec_q8_0(&w8, nb, &x0, &mut a);
                k.matvec_q8_0_side(&w8, nb, &x0, &mut b, side);
                assert_eq!(a, b, "{:?} q8_0 nb={nb} rows={rows} cut={cut}", k.isa());
            }
        }
    }
}

/// A side cursor hands out each line of the stream exactly once, in order, spread over the
/// steps (never ahead of schedule), and the per-thread shares of a stream tile it.
#[test]
fn side_cursor_visits_every_line_once() {
    let bytes: Vec<u8> = vec![0; 10_000];
    let parts: [&[u8]; 4] = [
        &bytes[..1],
        &bytes[100..229],
        &bytes[1000..1000],
        &bytes[2000..],
    ];
    let mut side = kernels::Side::default();
    for p in parts {
        assert!(side.push(p));
    }
    let want: Vec<usize> = parts
        .iter()
        .flat_map(|p| {
            (0..p.len())
                .step_by(64)
                .map(move |o| p.as_ptr() as usize + o)
        })
        .collect();
    assert_eq!(side.lines(), want.len());
    for steps in [1, 2, 3, 7, 64, 1000] {
        let mut cur = side.cursor(steps);
        let mut got = Vec::new();
        for i in 0..steps {
            cur.step(|b| got.push(b as *const u8 as usize));
            assert!(
                got.len() <= want.len() * (i + 1) / steps + 1,
                "steps={steps}"
            );
        }
        assert_eq!(got, want, "steps={steps}");
    }
    for (n, cuts) in [
        (100, vec![0, 16, 48, 64, 100]),
        (7, vec![0, 7]),
        (3, vec![0, 1, 2, 3]),
    ] {
        let mut got = Vec::new();
        for c in cuts.windows(2) {
            let mut cur = side.share(c[0], c[1] - c[0], n).cursor(1);
            cur.step(|b| got.push(b as *const u8 as usize));
        }
        assert_eq!(got, want, "n={n}");
    }
    let mut full = kernels::Side::default();
    for _ in 0..kernels::SIDE_PARTS {
        assert!(full.push(&bytes));
    }
    assert!(!full.push(&bytes));
}

/// The AVX-512 F16 rows (the LoRA A product, two rows per pass) keep the AVX2 kernel's lanes
/// and reduction order, so the two agree bit for bit, also on ragged widths and odd row counts.
#[test]
fn avx512_f16_rows_are_bit_identical_to_avx2() {
    let _g = lock();
    let (Some(k5), Some(k2)) = (Isa::Avx512.kernel(), Isa::Avx2.kernel()) else {
        println!("SKIPPED: needs AVX-512 and AVX2");
        return;
    };
    let mut rng = Rng(0xa512);
    for cols in [1, 7, 8, 9, 31, 32, 33, 40, 63, 64, 65, 95, 576, 1536, 1543] {
        for rows in [1, 2, 3, 8, 33] {
            let w: Vec<u8> = (0..rows * cols)
                .flat_map(|_| to_f16_le(rng.f() * 4.0))
                .collect();
            let x: Vec<f32> = (0..cols).map(|_| rng.f()).collect();
            let (mut a, mut b) = (vec![0f32; rows], vec![0f32; rows]);
            k5.matvec_float(GgmlType::F16, &w, cols, &x, &mut a);
            k2.matvec_float(GgmlType::F16, &w, cols, &x, &mut b);
            let (a, b): (Vec<u32>, Vec<u32>) = (
                a.iter().map(|v| v.to_bits()).collect(),
                b.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(a, b, "cols={cols} rows={rows}");
        }
    }
}
