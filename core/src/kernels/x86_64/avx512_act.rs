//! AVX-512 elementwise activations (SwiGLU, GeGLU) that are bit-identical to their scalar formulas in
//! [`reference`](crate::kernels::reference), so the model's numbers do not depend on the table.
//!
//! # `swiglu`: `libm::expf`, sixteen lanes at a time
//!
//! SmolLM2's prefill spent 13% of its time in `silu`'s scalar `libm::expf` (perf, 64-token
//! prompt, Q4_K_M). `libm::expf` is FreeBSD's `e_expf.c` in f32: reduce `t = k ln2 + r` with
//! `k` from a truncated `t / ln2 +- 1/2` (or `+-1` for `0.5 ln2 < |t| <= 1.5 ln2`, `0` below),
//! `ln2` split in a 16-bit-exact high part and a low part, a degree-2 rational approximation
//! of `e^r`, then `scalbnf(y, k)`. Every step is an IEEE f32 operation (no FMA: Rust does not
//! contract), so the same operations on lanes give the same bits. Where `libm` branches, the
//! lanes select; the branch for `|t| <= 2^-14` (`1 + t`) and the special cases (`|t| >=
//! 87.34`, infinities, NaN) are left to the scalar function for the lanes that need them
//! (rare in activations). In the vector range `k` lies in `-126..=126`, where `scalbnf` is
//! one multiplication by `2^k`, as here.
//!
//! # `geglu`: `libm::tanhf` and its `expm1f`, the same way
//!
//! Gemma 3's GeGLU spent 20% of a 64-token prefill in `tanhf` / `expm1f` (perf, Q4_K_M).
//! `tanhf` (FreeBSD `s_tanhf.c`) picks one of three formulas on `expm1f(+-2|z|)` by `|z|`
//! (1 above 10); `expm1f` (`s_expm1f.c`) reduces as `expf` does and picks one of five final
//! formulas by `k`. Each lane computes every formula its range can need and keeps its own
//! (`|z| < 2^-24` and NaN go to the scalar function). Gemma 3 270M prefill 374 -> 494 tok/s
//! thread CPU time (`decode_tps`, one thread, medians of three, dev VM).
//!
//! `tests/tests/kernels_types.rs` checks every table against `reference::swiglu` and
//! `reference::geglu` bit for bit on random values, every range boundary and the special
//! values (a 0.2% change in `expm1f`'s `Q1` fails it).

use crate::kernels::reference;
use core::arch::x86_64::*;

/// `g[i] = silu(g[i]) * u[i]`, bit-identical to [`reference::swiglu`]. Reachable only through
/// the AVX-512 table.
pub(super) fn swiglu(g: &mut [f32], u: &[f32]) {
    // SAFETY: reachable only through the AVX-512 table, which `avx512::detect` hands out only
    // after checking AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and OS ZMM/opmask support.
    unsafe { swiglu_tf(g, u) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn swiglu_tf(g: &mut [f32], u: &[f32]) {
    let n = g.len().min(u.len());
    let (g, u) = (&mut g[..n], &u[..n]);
    let (gv, _) = g.as_chunks_mut::<16>();
    let (uv, _) = u.as_chunks::<16>();
    for (gc, uc) in gv.iter_mut().zip(uv) {
        // SAFETY: `gc` and `uc` are 16 readable f32s; no alignment requirement.
        let (x, uu) = unsafe { (_mm512_loadu_ps(gc.as_ptr()), _mm512_loadu_ps(uc.as_ptr())) };
        // -x: the sign bit flipped, as `libm::expf(-x)` gets it.
        let t = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(x),
            _mm512_set1_epi32(i32::MIN),
        ));
        let (e, scalar) = expf(t);
        let s = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        let out = _mm512_mul_ps(s, uu);
        // SAFETY: `gc` is 16 writable f32s; no alignment requirement.
        unsafe { _mm512_storeu_ps(gc.as_mut_ptr(), out) };
        if scalar != 0 {
            for (l, (gl, ul)) in gc.iter_mut().zip(uc).enumerate() {
                if scalar >> l & 1 == 1 {
                    // `gl` now holds this lane's vector result; recompute from the input.
                    let xl = f32::from_bits(x_bits(x, l));
                    *gl = reference::silu(xl) * ul;
                }
            }
        }
    }
    let done = gv.len() * 16;
    reference::swiglu(&mut g[done..], &u[done..]);
}

/// `x[i] = libm::expf(x[i] - m)`, bit-identical to [`reference::exp_shifted`] (softmax's
/// step). Reachable only through the AVX-512 table.
pub(super) fn exp_shifted(x: &mut [f32], m: f32) {
    // SAFETY: as in `swiglu`.
    unsafe { exp_shifted_tf(x, m) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn exp_shifted_tf(x: &mut [f32], m: f32) {
    let (xv, _) = x.as_chunks_mut::<16>();
    let mv = _mm512_set1_ps(m);
    for xc in xv.iter_mut() {
        // SAFETY: `xc` is 16 readable f32s; no alignment requirement.
        let t = _mm512_sub_ps(unsafe { _mm512_loadu_ps(xc.as_ptr()) }, mv);
        let (e, scalar) = expf(t);
        // SAFETY: `xc` is 16 writable f32s; no alignment requirement.
        unsafe { _mm512_storeu_ps(xc.as_mut_ptr(), e) };
        if scalar != 0 {
            for (l, xl) in xc.iter_mut().enumerate() {
                if scalar >> l & 1 == 1 {
                    *xl = libm::expf(f32::from_bits(x_bits(t, l)));
                }
            }
        }
    }
    let done = xv.len() * 16;
    reference::exp_shifted(&mut x[done..], m);
}

/// Lane `l` of `x` as bits.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn x_bits(x: __m512, l: usize) -> u32 {
    let mut a = [0f32; 16];
    // SAFETY: `a` is 16 writable f32s; no alignment requirement.
    unsafe { _mm512_storeu_ps(a.as_mut_ptr(), x) };
    a[l & 15].to_bits()
}

/// `libm::expf` on every lane whose `|t|` lies in `(2^-14, 87.3365)`, and the mask of the
/// lanes outside it (their result here is meaningless; the caller recomputes them).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn expf(t: __m512) -> (__m512, u16) {
    const LN2_HI: f32 = f32::from_bits(0x3f317200); // libm's
    const LN2_LO: f32 = f32::from_bits(0x35bfbe8e); // libm's
    const INV_LN2: f32 = f32::from_bits(0x3fb8aa3b); // libm's
    const P1: f32 = f32::from_bits(0x3e2aaa8f); // libm's
    const P2: f32 = f32::from_bits(0xbb355215); // libm's
    let bits = _mm512_castps_si512(t);
    let hx = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
    let neg = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
    let set = _mm512_set1_epi32;
    // Vector lanes: 0x39000000 < hx < 0x42aeac50 (signed compares: hx is non-negative).
    let ok = _mm512_cmpgt_epi32_mask(hx, set(0x3900_0000))
        & _mm512_cmplt_epi32_mask(hx, set(0x42ae_ac50));
    let big = _mm512_cmpgt_epi32_mask(hx, set(0x3f85_1592)); // |t| > 1.5 ln2
    let mid = _mm512_cmpgt_epi32_mask(hx, set(0x3eb1_7218)) & !big; // 0.5 ln2 < |t| <= 1.5 ln2
                                                                    // k = (INV_LN2 * t + (+-0.5)) as i32 (truncation), k = 1 - 2 sign, or 0.
    let half = _mm512_mask_blend_ps(neg, _mm512_set1_ps(0.5), _mm512_set1_ps(-0.5));
    let kbig = _mm512_cvttps_epi32(_mm512_add_ps(
        _mm512_mul_ps(_mm512_set1_ps(INV_LN2), t),
        half,
    ));
    let kmid = _mm512_mask_blend_epi32(neg, set(1), set(-1));
    let k = _mm512_mask_blend_epi32(big, _mm512_setzero_si512(), kbig);
    let k = _mm512_mask_blend_epi32(mid, k, kmid);
    // With k = 0 these give hi = t, lo = 0, x = t: `libm`'s small branch, bit for bit.
    let kf = _mm512_cvtepi32_ps(k);
    let hi = _mm512_sub_ps(t, _mm512_mul_ps(kf, _mm512_set1_ps(LN2_HI)));
    let lo = _mm512_mul_ps(kf, _mm512_set1_ps(LN2_LO));
    let x = _mm512_sub_ps(hi, lo);
    let xx = _mm512_mul_ps(x, x);
    let p = _mm512_add_ps(_mm512_set1_ps(P1), _mm512_mul_ps(xx, _mm512_set1_ps(P2)));
    let c = _mm512_sub_ps(x, _mm512_mul_ps(xx, p));
    let q = _mm512_div_ps(_mm512_mul_ps(x, c), _mm512_sub_ps(_mm512_set1_ps(2.0), c));
    let y = _mm512_add_ps(_mm512_set1_ps(1.0), _mm512_add_ps(_mm512_sub_ps(q, lo), hi));
    // scalbnf(y, k) for k in -126..=126: y * 2^k (k = 0: y * 1 = y).
    let two_k = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(k, set(127))));
    (_mm512_mul_ps(y, two_k), !ok)
}

/// `g[i] = gelu_tanh(g[i]) * u[i]`, bit-identical to [`reference::geglu`]. Reachable only
/// through the AVX-512 table.
#[cfg(feature = "arch-gemma")]
pub(super) fn geglu(g: &mut [f32], u: &[f32]) {
    // SAFETY: as in `swiglu`.
    unsafe { geglu_tf(g, u) }
}

#[cfg(feature = "arch-gemma")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn geglu_tf(g: &mut [f32], u: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let n = g.len().min(u.len());
    let (g, u) = (&mut g[..n], &u[..n]);
    let (gv, _) = g.as_chunks_mut::<16>();
    let (uv, _) = u.as_chunks::<16>();
    let f = _mm512_set1_ps;
    for (gc, uc) in gv.iter_mut().zip(uv) {
        // SAFETY: `gc` and `uc` are 16 readable f32s; no alignment requirement.
        let (x, uu) = unsafe { (_mm512_loadu_ps(gc.as_ptr()), _mm512_loadu_ps(uc.as_ptr())) };
        // `SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)`, left to right.
        let inner = _mm512_add_ps(f(1.0), _mm512_mul_ps(_mm512_mul_ps(f(0.044_715), x), x));
        let z = _mm512_mul_ps(_mm512_mul_ps(f(SQRT_2_OVER_PI), x), inner);
        let (th, scalar) = tanhf(z);
        let gelu = _mm512_mul_ps(_mm512_mul_ps(f(0.5), x), _mm512_add_ps(f(1.0), th));
        // SAFETY: `gc` is 16 writable f32s; no alignment requirement.
        unsafe { _mm512_storeu_ps(gc.as_mut_ptr(), _mm512_mul_ps(gelu, uu)) };
        if scalar != 0 {
            for (l, (gl, ul)) in gc.iter_mut().zip(uc).enumerate() {
                if scalar >> l & 1 == 1 {
                    *gl = reference::gelu_tanh(f32::from_bits(x_bits(x, l))) * ul;
                }
            }
        }
    }
    let done = gv.len() * 16;
    reference::geglu(&mut g[done..], &u[done..]);
}

/// `libm::tanhf` (FreeBSD `s_tanhf.c`) on every lane with `2^-24 <= |z|` and `z` not NaN,
/// and the mask of the other lanes (recomputed by the caller). `|z| > 10` gives `+-1`;
/// below, `expm1f(+-2|z|)` as `libm` picks the sign, and `libm`'s three formulas.
#[cfg(feature = "arch-gemma")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn tanhf(z: __m512) -> (__m512, u16) {
    let set = _mm512_set1_epi32;
    let f = _mm512_set1_ps;
    let bits = _mm512_castps_si512(z);
    let w = _mm512_and_si512(bits, set(0x7fff_ffff));
    let a = _mm512_castsi512_ps(w);
    let neg = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
    let ok =
        _mm512_cmpge_epi32_mask(w, set(0x3380_0000)) & _mm512_cmple_epi32_mask(w, set(0x7f80_0000));
    let huge = _mm512_cmpgt_epi32_mask(w, set(0x4120_0000)); // |z| > 10: 1 + 0 / |z| = 1
    let big = _mm512_cmpgt_epi32_mask(w, set(0x3f0c_9f54)); // |z| > log(3) / 2
    let mid = _mm512_cmpgt_epi32_mask(w, set(0x3e82_c578)); // |z| > log(5/3) / 2
    let two_a = _mm512_mul_ps(f(2.0), a);
    // expm1f(2|z|) for `mid` lanes, expm1f(-2|z|) (= -(2|z|), exact) below.
    let v = _mm512_mask_blend_ps(mid, _mm512_sub_ps(_mm512_setzero_ps(), two_a), two_a);
    // Huge lanes would overflow the reduction; they take 1 anyway.
    let v = _mm512_mask_blend_ps(huge, v, f(1.0));
    let t = expm1f(v);
    let t2 = _mm512_add_ps(t, f(2.0));
    let r_big = _mm512_sub_ps(f(1.0), _mm512_div_ps(f(2.0), t2));
    let r_mid = _mm512_div_ps(t, t2);
    let neg_t = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(t), set(i32::MIN)));
    let r_small = _mm512_div_ps(neg_t, t2);
    let tt = _mm512_mask_blend_ps(mid, r_small, r_mid);
    let tt = _mm512_mask_blend_ps(big, tt, r_big);
    let tt = _mm512_mask_blend_ps(huge, tt, f(1.0));
    let flipped = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(tt), set(i32::MIN)));
    (_mm512_mask_blend_ps(neg, tt, flipped), !ok)
}

/// `libm::expm1f` (FreeBSD `s_expm1f.c`) for `v` in `[-0.52, 20.1]` with `|v| >= 2^-24`
/// (what [`tanhf`] passes): no special cases, `k` in `-1..=29`, so of `libm`'s results only
/// `k = 0`, `k = -1`, `k = 1` and `1 < k <= 56` (two forms, split at `k = 23`) occur; each
/// lane computes them all and keeps its own.
#[cfg(feature = "arch-gemma")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn expm1f(v: __m512) -> __m512 {
    const LN2_HI: f32 = f32::from_bits(0x3f317180); // libm's
    const LN2_LO: f32 = f32::from_bits(0x3717f7d1); // libm's
    const INV_LN2: f32 = f32::from_bits(0x3fb8aa3b); // libm's
    const Q1: f32 = f32::from_bits(0xbd088868); // libm's
    const Q2: f32 = f32::from_bits(0x3acf3010); // libm's
    let set = _mm512_set1_epi32;
    let f = _mm512_set1_ps;
    let (add, sub, mul, div) = (_mm512_add_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_div_ps);
    let bits = _mm512_castps_si512(v);
    let hx = _mm512_and_si512(bits, set(0x7fff_ffff));
    let neg = _mm512_cmplt_epi32_mask(bits, _mm512_setzero_si512());
    let red = _mm512_cmpgt_epi32_mask(hx, set(0x3eb1_7218)); // |v| > 0.5 ln2
    let one = _mm512_cmplt_epi32_mask(hx, set(0x3f85_1592)); // |v| < 1.5 ln2
    let half = _mm512_mask_blend_ps(neg, f(0.5), f(-0.5));
    let kbig = _mm512_cvttps_epi32(add(mul(f(INV_LN2), v), half));
    let kone = _mm512_mask_blend_epi32(neg, set(1), set(-1));
    let k = _mm512_mask_blend_epi32(one, kbig, kone);
    let k = _mm512_mask_blend_epi32(red, _mm512_setzero_si512(), k);
    // k = +-1: `x -+ LN2_HI`, `lo = +-LN2_LO` are `x - k LN2_HI`, `k LN2_LO` exactly; k = 0:
    // hi = x, lo = 0, x unchanged, c = 0, as `libm`'s unreduced branch.
    let kf = _mm512_cvtepi32_ps(k);
    let hi = sub(v, mul(kf, f(LN2_HI)));
    let lo = mul(kf, f(LN2_LO));
    let x = sub(hi, lo);
    let c = sub(sub(hi, x), lo);
    let hfx = mul(f(0.5), x);
    let hxs = mul(x, hfx);
    let r1 = add(f(1.0), mul(hxs, add(f(Q1), mul(hxs, f(Q2)))));
    let t = sub(f(3.0), mul(r1, hfx));
    let e0 = mul(hxs, div(sub(r1, t), sub(f(6.0), mul(x, t))));
    let r_k0 = sub(x, sub(mul(x, e0), hxs));
    let e = sub(sub(mul(x, sub(e0, c)), c), hxs);
    let r_km1 = sub(mul(f(0.5), sub(x, e)), f(0.5));
    let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, f(-0.25));
    let r_k1 = _mm512_mask_blend_ps(
        lt,
        add(f(1.0), mul(f(2.0), sub(x, e))),
        mul(f(-2.0), sub(e, add(x, f(0.5)))),
    );
    let two_k = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(k, set(127))));
    let uf = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_sub_epi32(set(127), k)));
    let r_lt23 = mul(add(sub(x, e), sub(f(1.0), uf)), two_k);
    let r_ge23 = mul(add(sub(x, add(e, uf)), f(1.0)), two_k);
    let ge23 = _mm512_cmpge_epi32_mask(k, set(23));
    let r = _mm512_mask_blend_ps(ge23, r_lt23, r_ge23);
    let r = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(k, set(1)), r, r_k1);
    let r = _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(k, set(-1)), r, r_km1);
    _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(k, _mm512_setzero_si512()), r, r_k0)
}
