//! AVX-512 elementwise activations that are bit-identical to their scalar formulas in
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
//! `tests/tests/kernels_types.rs` checks every table against `reference::swiglu` bit for bit
//! on random values, every range boundary and the special values.

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
    const LN2_HI: f32 = 6.931_457_5e-1; // 0x3f317200
    const LN2_LO: f32 = 1.428_606_8e-6; // 0x35bfbe8e
    const INV_LN2: f32 = 1.442_695_0; // 0x3fb8aa3b
    const P1: f32 = 1.666_662_5e-1; // 0x3e2aaa8f
    const P2: f32 = -2.766_733_3e-3; // 0xbb355215
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
