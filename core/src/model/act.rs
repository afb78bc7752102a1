//! The gated FFN activations of the fast path, written so the compiler vectorises them.
//!
//! The reference path keeps `silu` / `gelu_tanh` in `model/mod.rs` (scalar `libm` `expf` and
//! `tanhf`, the oracle). Those calls cannot be vectorised and each costs tens of cycles: in a
//! one-thread profile they were 12.6% of a 256-token Qwen2.5-0.5B-shaped prefill (`expf` +
//! `silu`) and 13.7% of a Gemma 3 270M one (`expm1f` + `tanhf` + `gelu_tanh`), ~4% of decode.
//!
//! Here both activations are one exponential and one division per value:
//! - `silu(x) = x / (1 + e^-x)`;
//! - `gelu_tanh(x) = 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`
//!   (the identity `(1 + tanh u) / 2 = 1 / (1 + e^(-2u))`). This form is also better conditioned
//!   than the reference's: `1 + tanh(u)` cancels for `u << 0`.
//!
//! and the exponential is branch-free straight-line f32 code ([`exp`]): the loops over a
//! block's `(ffn_dim,)` rows compile to SIMD on any target (SSE2 on baseline x86-64, NEON on
//! aarch64) without an ISA-specific kernel, and give the same bits on every target (no FMA
//! contraction in Rust, so every operation rounds the same way). Measured against f64 over
//! every 61st f32 in `[-20, 20]` (`tests` below; 36 M values): `silu` within 2.3 ulp of the
//! correctly rounded value wherever `|silu(x)| >= 1e-30`; `gelu_tanh` within 2.7 ulp for
//! `x >= -1`, relative error at most 1.3e-5 on `[-10, -1)` (the f32 rounding of `2u` moves
//! `e^(-2u)` by `|2u|` times it, up to ~90 there: any f32 evaluation of `u` has this), and
//! absolute error below 1e-37 beneath -10. Against the reference path's libm formulas the
//! largest difference is 2.2e-7 (silu) and 2.4e-7 (gelu_tanh), relative above magnitude 1
//! and absolute below it.

/// `e^x` for f32, branch-free: `x = n ln2 + r` with `|r| <= ln2 / 2` (Cody and Waite's two-part
/// `ln2`, exact for `|n| <= 128`), `e^r` by the degree-7 polynomial of Cephes' `expf` (Moshier,
/// relative error ~1e-7 on that interval), times `2^n` built in the exponent bits. `x` is
/// clamped to `[-87.33, 88.37]` so `2^n` stays a normal float: results saturate at ~1.2e-38
/// and ~2.7e38 instead of going subnormal or infinite, which the two activations absorb
/// (`x / (1 + e^-x)` is then within 1e-36 of 0, or `x` itself).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // 355/512: 9 significant bits, so `n * LN2_HI` is exact for |n| <= 128.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: `y + SHIFT` for |y| < 2^22 rounds y to an integer held in the low mantissa
    // bits (round to nearest even), with no float-to-int conversion to vectorise.
    const SHIFT: f32 = 12_582_912.0;
    let x = x.clamp(-87.33, 88.37);
    let t = x * LOG2E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let er = p * r * r + r + 1.0;
    // n in [-126, 127]: the biased exponent n + 127 is in [1, 254].
    let ni = t.to_bits() as i32 - SHIFT.to_bits() as i32;
    er * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `x / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, as `x / (1 + e^(-2u))`.
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    // 2 sqrt(2/pi) and 2 sqrt(2/pi) 0.044715: the -2u of the exponent in one product chain.
    const A: f32 = 1.595_769;
    const B: f32 = A * 0.044_715;
    x / (1.0 + exp(-x * (A + B * x * x)))
}

/// `g = silu(g) * u`, elementwise (SwiGLU).
pub(crate) fn swiglu(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = silu(*g) * u;
    }
}

/// `g = gelu_tanh(g) * u`, elementwise (GeGLU with the tanh approximation).
pub(crate) fn geglu_tanh(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = gelu_tanh(*g) * u;
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// Distance in units in the last place between `a` and the correctly rounded `b`.
    fn ulps(a: f32, b: f64) -> f64 {
        let bf = b as f32;
        let ulp = (f32::from_bits(bf.abs().to_bits() + 1) - bf.abs()) as f64;
        (a as f64 - b).abs() / ulp
    }

    fn silu64(x: f64) -> f64 {
        x / (1.0 + libm::exp(-x))
    }

    /// In f64, by the same identity: `1 + tanh(u)` cancels to 0 in f64 too for u < -19.
    fn gelu64(x: f64) -> f64 {
        let u = (2.0 / core::f64::consts::PI).sqrt() * (x + 0.044_715 * x * x * x);
        x / (1.0 + libm::exp(-2.0 * u))
    }

    /// Every `stride`-th f32 of each sign with magnitude at most `max` (walking the bit
    /// patterns from 0 up, so every binade is sampled at the same density).
    fn floats(max: f32, stride: u32) -> impl Iterator<Item = f32> {
        (0..=max.to_bits())
            .step_by(stride as usize)
            .flat_map(|b| [f32::from_bits(b), -f32::from_bits(b)])
    }

    #[test]
    fn exp_is_within_2_ulp() {
        let mut worst = 0f64;
        for x in floats(87.0, 61) {
            worst = worst.max(ulps(exp(x), libm::exp(x as f64)));
        }
        assert!(worst <= 2.0, "exp: {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 1.2e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn activations_match_f64_and_libm() {
        // Every f32 in [-20, 20] is ~2.2e9 values: every 61st bit pattern (36 M values).
        let (mut s_ulp, mut g_ulp, mut s_abs, mut g_abs) = (0f64, 0f64, 0f64, 0f64);
        let (mut s_libm, mut g_libm, mut g_rel) = (0f64, 0f64, 0f64);
        for x in floats(20.0, 61) {
            let (s, g) = (silu(x), gelu_tanh(x));
            let (s64, g64) = (silu64(x as f64), gelu64(x as f64));
            if s64.abs() >= 1e-30 {
                s_ulp = s_ulp.max(ulps(s, s64));
            } else {
                s_abs = s_abs.max((s as f64 - s64).abs());
            }
            if x >= -1.0 {
                g_ulp = g_ulp.max(ulps(g, g64));
            } else if x >= -10.0 {
                // e^(-2u) of a large argument: the f32 rounding of -2u (relative 2^-24) moves
                // the result by |2u| times that, which no f32 evaluation of u avoids.
                g_rel = g_rel.max(((g as f64 - g64) / g64).abs());
            } else {
                g_abs = g_abs.max((g as f64 - g64).abs());
            }
            // The reference path's formulas, for the record: absolute differences.
            let sl = x / (1.0 + libm::expf(-x));
            let gl = 0.5 * x * (1.0 + libm::tanhf(0.797_884_6 * x * (1.0 + 0.044_715 * x * x)));
            s_libm = s_libm.max((s - sl).abs() as f64 / sl.abs().max(1.0) as f64);
            g_libm = g_libm.max((g - gl).abs() as f64 / gl.abs().max(1.0) as f64);
        }
        std::println!(
            "silu: {s_ulp:.2} ulp (|y| >= 1e-30), {s_abs:.1e} abs below; gelu_tanh: {g_ulp:.2} ulp \
             (x >= -1), relative {g_rel:.1e} in [-10, -1), {g_abs:.1e} abs below; vs the libm formulas: {s_libm:.1e} / {g_libm:.1e} \
             (relative above 1, absolute below)"
        );
        assert!(
            s_ulp <= 3.0 && g_ulp <= 3.0,
            "silu {s_ulp} ulp, gelu {g_ulp} ulp"
        );
        assert!(g_rel < 2e-5, "gelu_tanh in [-10, -1): relative {g_rel:e}");
        assert!(
            s_abs < 1e-30 && g_abs < 1e-15,
            "tails: {s_abs:e}, {g_abs:e}"
        );
        assert!(
            s_libm < 1e-6 && g_libm < 1e-6,
            "libm: {s_libm:e}, {g_libm:e}"
        );
    }
}
