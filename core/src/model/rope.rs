//! Rope tables, `(cos, sin)` per rotated pair and position, in f32 and integer arithmetic.
//!
//! The target is what Hugging Face computes, all in float32:
//!
//! ```text
//! inv_freq[i] = 1 / base ** ((2i) / d)        # d = rope_dims; exponent and power in f32
//! angle       = pos * inv_freq[i]             # one f32 product
//! cos, sin    = cos(angle), sin(angle)        # f32 (torch: Sleef, 1 ulp)
//! ```
//!
//! We round at the same places: the exponent `(2i) / d` is an f32 division, the power is
//! (nearly always) the correctly rounded f32 of `base^k` for that f32 `k`, `1 / p` and
//! `pos * inv_freq` are single f32 operations, and `sin`/`cos` are evaluated on that f32 angle
//! with an error of about one ulp. The table therefore carries HF's own f32 rounding of the
//! angle (up to half an ulp of an angle of `pos` radians: 2.4e-4 rad at position 4096), which
//! the former f64 computation did not.
//!
//! Why not f64 or libm: this used `libm::pow`/`cos`/`sin` on f64. On a Cortex-M4F (single
//! precision FPU) that linked libm's `rem_pio2` and soft-float f64 add/mul/div/conversions:
//! the DSP runtime image went from 65,344 to 52,564 B of its 64 KiB budget without them
//! (`targets/cortex-m/budget.txt`), and a 64-dim table takes 0.8 us instead of 3.9 us on the
//! x86-64 dev machine. libm's `sinf`/`cosf` are no way out: they reduce the argument and
//! evaluate the polynomial in f64 (FreeBSD `__rem_pio2f`, `__kernel_sindf`).
//! So the pieces here use only f32 operations and 32x32->64-bit integer multiplies, which a
//! Cortex-M4 does in one instruction (`UMULL`/`SMULL`):
//!
//! - `log2(base)` bit by bit in Q32 fixed point (square the mantissa, 32 times);
//! - `base^k = 2^(k log2 base)` by splitting the exponent into an integer and a fraction in
//!   [-1/2, 1/2) and a degree-8 Taylor polynomial of `2^g` in Q30, rounded to f32 once;
//! - `sin`/`cos` by an exact reduction of the f32 angle modulo pi/2 against 64 bits of 2/pi
//!   (the angle is `m * 2^-t` with a 24-bit `m`, so `m * 2/pi` is an 88-bit product: no
//!   Cody-Waite splitting of pi/2 that would lose accuracy for large positions), then Cephes'
//!   f32 minimax polynomials on [-pi/4, pi/4].
//!
//! Bounds, tested in this file against f64 over positions 0..8192, bases 1e4, 1e5, 5e5 and
//! rope dims 32, 64, 128 (measured figures in brackets): `inv_freq` within one ulp of
//! `1 / f32(base^k)` with the power correctly rounded (bit-equal for 335 of the 336 pairs);
//! `sin`/`cos` of the f32 angle within 2^-23 absolute (0.65 * 2^-23); the table within
//! `2^-23 + 5 * 2^-24 * angle` of the former f64 computation on exact angles
//! (`2^-23 + 2.2 * 2^-24 * angle`), the second term being HF's f32 rounding of inv_freq and
//! of the angle. Angles are reduced exactly below 2^24 rad: [`Config`](super::Config) caps
//! positions at 2^24, and `inv_freq <= 1`. Every input, valid or not, gives no panic.

use core::f32::consts::FRAC_PI_4;

/// Fill `table` ((cos, sin) per rotated pair, `(rope_dims,)`) for position `pos`:
/// pair `i` is rotated by `pos * base^(-2i / rope_dims)`.
pub fn rope_table(table: &mut [f32], pos: usize, base: f32, rope_dims: usize) {
    rope_table_scaled(table, pos, base, rope_dims, 1.0, None);
}

/// [`rope_table`] with rope scaling: pair `i` is rotated by
/// `freq_scale * pos * base^(-2i / rope_dims) / factors[i]` (llama.cpp's `freq_scale` for
/// linear scaling, and the per-pair `rope_freqs.weight` factors that Llama 3.x files carry for
/// their frequency-dependent scaling). With `freq_scale == 1` and no factors it is
/// [`rope_table`] bit for bit.
pub fn rope_table_scaled(
    table: &mut [f32],
    pos: usize,
    base: f32,
    rope_dims: usize,
    freq_scale: f32,
    factors: Option<super::VecRef<'_>>,
) {
    let log2_base = log2_q32(base);
    let p = pos as f32;
    let mut ff = factors.into_iter().flat_map(|f| f.iter());
    for (i, cs) in table.chunks_exact_mut(2).enumerate() {
        let mut inv = inv_freq(log2_base, i, rope_dims);
        if let Some(f) = ff.next() {
            inv /= f;
        }
        let mut angle = p * inv;
        if freq_scale != 1.0 {
            angle *= freq_scale;
        }
        let (sin, cos) = sin_cos(angle);
        cs[0] = cos;
        cs[1] = sin;
    }
}

/// `1 / base^((2i) / d)` rounded as Hugging Face does: the exponent is an f32 division, the
/// power is rounded to f32 before the reciprocal. `log2_base` is `log2(base)` in Q32.
fn inv_freq(log2_base: u64, i: usize, rope_dims: usize) -> f32 {
    let k = (2 * i) as f32 / rope_dims as f32;
    1.0 / exp2_q32(mul_q32(log2_base, k))
}

/// `log2(x)` in Q32 fixed point for a finite `x >= 1` (the config checks `base > 1`); 0 for
/// anything else. Error below 2^-30: each of the 32 squarings rounds to 2^-31 relative.
fn log2_q32(x: f32) -> u64 {
    if !(x >= 1.0 && x.is_finite()) {
        return 0;
    }
    let bits = x.to_bits();
    let e = u64::from((bits >> 23) - 127); // x >= 1: the biased exponent is >= 127
    let mut z = u64::from(bits & 0x7f_ffff | 0x80_0000) << 8; // mantissa in [1, 2), Q31
    let mut frac = 0u64;
    for b in (0..32).rev() {
        // z < 2^32, so z * z + 2^30 < 2^64; the square is in [1, 4), Q31.
        z = (z * z + (1 << 30)) >> 31;
        if z >= 1 << 32 {
            z >>= 1;
            frac |= 1 << b;
        }
    }
    e << 32 | frac
}

/// `l * k` for `l` in Q32 (below 2^39: `log2` of an f32) and `k` in [0, 1]; the product of
/// `l` and the 24-bit mantissa of `k` is exact (below 2^63), the shift truncates to 2^-32.
fn mul_q32(l: u64, k: f32) -> u64 {
    let bits = k.to_bits();
    let ek = (bits >> 23) & 0xff;
    if ek == 0 || ek > 127 {
        return 0; // k is 0 (pair 0), subnormal or above 1 (not an exponent 2i/d)
    }
    let mk = u64::from(bits & 0x7f_ffff | 0x80_0000); // k = mk * 2^(ek - 150)
    (l.min((1 << 39) - 1) * mk)
        .checked_shr(150 - ek)
        .unwrap_or(0)
}

/// `2^(t / 2^32)` as f32, rounded once: `t = n + g` with `g` in [-1/2, 1/2), `2^g` by its
/// Taylor series to degree 8 in Q30 (truncation 3e-10, rounding ~1e-9 relative, far below
/// f32's 6e-8), then scaled by `2^n` exactly. Results past f32's range are infinity.
fn exp2_q32(t: u64) -> f32 {
    /// `ln(2)^k / k! * 2^30`, k = 0..=8.
    const C: [i64; 9] = [
        1_073_741_824,
        744_261_118,
        257_941_248,
        59_597_083,
        10_327_387,
        1_431_680,
        165_394,
        16_377,
        1_419,
    ];
    if t >= 128 << 32 {
        return f32::INFINITY;
    }
    let n = ((t + (1 << 31)) >> 32) as u32; // <= 128
    let g = i64::from(t as u32 as i32); // t - n * 2^32, Q32 in [-2^31, 2^31)
    let mut y = C[8];
    for &c in C[..8].iter().rev() {
        // |y| < 2^31 and |g| <= 2^31: the product fits an i64.
        y = c + ((y * g + (1 << 31)) >> 32);
    }
    // y in [0.70, 1.42] * 2^30; 2^(n - 30) has the biased exponent n + 97 (in 97..=225).
    (y as i32) as f32 * f32::from_bits((n + 97) << 23)
}

/// `(sin x, cos x)` of an f32 angle, within 2^-23 absolute for |x| < 2^24.
fn sin_cos(x: f32) -> (f32, f32) {
    let a = f32::from_bits(x.to_bits() & 0x7fff_ffff);
    let (q, r) = if a <= FRAC_PI_4 { (0, a) } else { reduce(a) };
    // Cephes sinf/cosf polynomials (minimax on [-pi/4, pi/4], f32 evaluation).
    let z = r * r;
    let s = ((-1.951_529_6e-4 * z + 8.332_161e-3) * z - 1.666_665_5e-1) * z * r + r;
    let c = ((2.443_315_7e-5 * z - 1.388_731_6e-3) * z + 4.166_664_6e-2) * z * z - 0.5 * z + 1.0;
    let (s, c) = match q & 3 {
        0 => (s, c),
        1 => (c, -s),
        2 => (-s, -c),
        _ => (-c, s),
    };
    (if x < 0.0 { -s } else { s }, c)
}

/// `a = q * pi/2 + r` with |r| <= pi/4, for a finite `a > pi/4`: returns `(q mod 2^32, r)`.
/// The angle is `m * 2^-t` with a 24-bit integer `m` (t in 0..=24 for pi/4 < a < 2^24), so
/// `a * 2/pi = m * C * 2^-(64 + t)` with `C = floor(2/pi * 2^64)`; the 88-bit product has an
/// error below 2^-40 quarter turns. Larger angles are reduced as if `t` were 0 (finite, wrong).
fn reduce(a: f32) -> (u32, f32) {
    /// floor(2/pi * 2^64).
    const TWO_OVER_PI: u64 = 0xa2f9_836e_4e44_1529;
    /// round(pi/2 * 2^30).
    const PI_OVER_2_Q30: i64 = 1_686_629_713;
    let bits = a.to_bits();
    let m = u64::from(bits & 0x7f_ffff | 0x80_0000);
    let t = 150u32.saturating_sub(bits >> 23).min(24);
    // floor(m * C / 2^24) = (a * 2/pi) * 2^(40 + t): fits 64 bits since m * C < 2^88.
    let s = ((m * (TWO_OVER_PI >> 32)) << 8) + ((m * (TWO_OVER_PI & 0xffff_ffff)) >> 24);
    let whole = s.checked_shr(40 + t).unwrap_or(0) as u32;
    // The fraction of a * 2/pi as Q64; read as i64 it is rounded to [-1/2, 1/2), so a
    // fraction of 1/2 or more moves to the next quadrant.
    let f = (s << (24 - t)) as i64;
    let q = whole.wrapping_add(u32::from(f < 0));
    // r * 2^30 = (f / 2^32) * (pi/2 * 2^30) / 2^32, rounded; |r| * 2^30 < 2^30.
    let r = ((f >> 32) * PI_OVER_2_Q30 + (1 << 31)) >> 32;
    (q, r as i32 as f32 * (1.0 / (1u32 << 30) as f32))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Distance in ulps between two finite f32 of the same sign.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn log2_and_exp2_are_accurate_in_fixed_point() {
        for base in [1.0f32, 1.5, 2.0, 10_000.0, 100_000.0, 500_000.0, 1e6, 3e38] {
            let got = log2_q32(base) as f64 / 2f64.powi(32);
            let want = libm::log2(base as f64);
            assert!(
                (got - want).abs() < 2e-9,
                "log2({base}) = {got}, want {want}"
            );
        }
        assert_eq!(log2_q32(0.5), 0);
        assert_eq!(log2_q32(f32::NAN), 0);
        assert_eq!(log2_q32(f32::INFINITY), 0);
        // 2^x against f64 over [0, 40): within one ulp, and correctly rounded nearly always.
        let (mut n, mut exact) = (0, 0);
        for j in 0..40_000u64 {
            let t = j * 4_294_967 + 12_345; // steps of ~1e-3 with varied fractions
            let want = libm::exp2(t as f64 / 2f64.powi(32)) as f32;
            let got = exp2_q32(t);
            assert!(ulps(got, want) <= 1, "2^{} = {got}, want {want}", t >> 32);
            n += 1;
            exact += usize::from(got == want);
        }
        // Measured 39,771 / 40,000 (99.4%): the Q30 error (~1e-9) decides near-halfway cases.
        assert!(exact * 100 >= n * 99, "{exact}/{n} correctly rounded");
        assert_eq!(exp2_q32(0), 1.0);
        assert_eq!(exp2_q32(u64::MAX), f32::INFINITY);
    }

    #[test]
    fn sin_cos_within_2_pow_minus_23_up_to_2_pow_24() {
        let tol = 2f64.powi(-23);
        let check = |x: f32| {
            let (s, c) = sin_cos(x);
            let (ws, wc) = (libm::sin(x as f64), libm::cos(x as f64));
            assert!(
                (s as f64 - ws).abs() <= tol && (c as f64 - wc).abs() <= tol,
                "x = {x}: ({s}, {c}), want ({ws}, {wc})"
            );
        };
        // Dense near 0 and the quadrant boundaries, then geometric up to 2^24.
        for i in -20_000..20_000 {
            check(i as f32 * 1e-4);
        }
        for k in 0..64 {
            let b = k as f32 * core::f32::consts::FRAC_PI_4;
            for d in -50..50 {
                check(f32::from_bits((b.to_bits() as i32 + d).max(0) as u32));
            }
        }
        let mut x = 1.0f32;
        while x < 16_777_216.0 {
            check(x);
            check(-x);
            x = f32::from_bits(x.to_bits() + 997);
        }
        // Beyond 2^24 the reduction is not exact, but any finite input gives finite values.
        for x in [f32::MAX, 1e30, 16_777_216.0, f32::MIN_POSITIVE, -0.0] {
            let (s, c) = sin_cos(x);
            assert!(s.is_finite() && c.is_finite(), "{x}");
        }
    }

    #[test]
    fn rope_table_matches_f64_and_hf_f32_rounding() {
        let mut table = [0f32; 128];
        let (mut n, mut inv_exact) = (0usize, 0usize);
        let (mut worst_same, mut worst_exact) = (0f64, 0f64);
        for base in [10_000.0f32, 100_000.0, 500_000.0] {
            for d in [32usize, 64, 128] {
                // inv_freq: within one ulp of HF's `1 / f32(base ** f32(2i / d))`, the power
                // correctly rounded here (f64 pow, rounded once).
                let lb = log2_q32(base);
                let inv: [f32; 64] = core::array::from_fn(|i| inv_freq(lb, i, d));
                for (i, &got) in inv.iter().enumerate().take(d / 2) {
                    let k = (2 * i) as f32 / d as f32;
                    let want = 1.0 / libm::pow(base as f64, k as f64) as f32;
                    assert!(
                        ulps(got, want) <= 1,
                        "base {base} d {d} i {i}: {got} vs {want}"
                    );
                    inv_exact += usize::from(got == want);
                }
                for pos in 0..8192usize {
                    let tab = &mut table[..d];
                    rope_table(tab, pos, base, d);
                    for (i, cs) in tab.chunks_exact(2).enumerate() {
                        // The same f32 angle: only the sin/cos error.
                        let angle = pos as f32 * inv[i];
                        let (c, s) = (cs[0] as f64, cs[1] as f64);
                        let same = (c - libm::cos(angle as f64))
                            .abs()
                            .max((s - libm::sin(angle as f64)).abs());
                        assert!(same <= 2f64.powi(-23), "pos {pos} base {base} d {d} i {i}");
                        worst_same = worst_same.max(same);
                        // The exact angle in f64 (the former implementation): this adds the
                        // f32 roundings of inv_freq (HF's two, up to 1 ulp, and ours, 1 ulp
                        // from HF: at most 2^-22 relative) and of the angle (2^-24 relative).
                        let exact =
                            pos as f64 * libm::pow(base as f64, -((2 * i) as f64) / d as f64);
                        let err = (c - libm::cos(exact))
                            .abs()
                            .max((s - libm::sin(exact)).abs());
                        let bound = 2f64.powi(-23) + 5.0 * 2f64.powi(-24) * exact;
                        assert!(
                            err <= bound,
                            "pos {pos} base {base} d {d} i {i}: {err:e} at angle {exact}"
                        );
                        if exact > 1.0 {
                            worst_exact = worst_exact.max((err - 2f64.powi(-23)) / exact);
                        }
                        n += 1;
                    }
                }
            }
        }
        // 99% of the reciprocal powers are bit-equal to HF's rounding (the rest one ulp).
        let pairs = 3 * (16 + 32 + 64);
        assert!(inv_exact * 100 >= pairs * 99, "{inv_exact}/{pairs}");
        std::println!(
            "rope f32 table: {n} entries; |error| vs f64 on the same f32 angle <= {:.2} * 2^-23, \
             vs the exact f64 angle <= 2^-23 + {:.2} * 2^-24 * angle; inv_freq bit-equal to \
             HF's rounding {inv_exact}/{pairs}",
            worst_same * 2f64.powi(23),
            worst_exact * 2f64.powi(24)
        );
    }
}
