//! AVX2 + F16C versions of [`attn`](crate::kernels::attn)'s scores and weighted sum, bit for bit
//! the portable ones: the sixteen lanes of the canonical dot are two YMM registers (lanes 0-7,
//! 8-15), each step a `vmulps` then a `vaddps` (no FMA), the fold `l + 8`, `l + 4`, `l + 2`,
//! `l + 1` done with the same pairings; F16 rows convert with `vcvtph2ps` (exact). Four keys
//! are in flight per pass. A head size that is not a multiple of 16 runs the portable code.
//! Both x86 tables use these (Zen 4 splits ZMM operations in two anyway).

use crate::kernels::attn::{self, Elems};
use core::arch::x86_64::*;

/// Scores (see the module doc). Reachable only through the AVX2 and AVX-512 tables.
pub(super) fn scores(q: &[f32], k: Elems<'_>, stride: usize, scale: f32, out: &mut [f32]) -> bool {
    if !q.len().is_multiple_of(attn::LANES) {
        return attn::scores(q, k, stride, scale, out);
    }
    if !k.fits(out.len(), stride, q.len()) {
        return false;
    }
    // SAFETY: reachable only through the AVX2 / AVX-512 tables, which their `detect` hands out
    // only after checking AVX2, FMA and F16C; `fits` checked every row lies inside `k`.
    unsafe { scores_tf(q, k, stride, scale, out) };
    true
}

/// Weighted sum (see the module doc). Reachable only through the AVX2 and AVX-512 tables.
pub(super) fn wsum(p: &[f32], v: Elems<'_>, stride: usize, out: &mut [f32]) -> bool {
    if !out.len().is_multiple_of(attn::LANES) {
        return attn::wsum(p, v, stride, out);
    }
    if !v.fits(p.len(), stride, out.len()) {
        return false;
    }
    // SAFETY: as in `scores`.
    unsafe { wsum_tf(p, v, stride, out) };
    true
}

/// Eight elements of a row at element `e` as f32.
///
/// # Safety
/// `e + 8` elements must lie inside the row slice.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(r: Elems<'_>, e: usize) -> __m256 {
    // SAFETY: the caller keeps `e + 8` inside the slice.
    unsafe {
        match r {
            Elems::F32(x) => _mm256_loadu_ps(x.as_ptr().add(e)),
            #[cfg(feature = "kv-f16")]
            Elems::F16(x) => _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(2 * e).cast())),
        }
    }
}

/// The canonical fold of the sixteen lanes `(a, b)` (lanes 0-7, 8-15).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn fold(a: __m256, b: __m256) -> f32 {
    let s8 = _mm256_add_ps(a, b); //                                  l + 8, l < 8
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8)); // l + 4
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4)); //                 l + 2
    let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2)); //         l + 1
    _mm_cvtss_f32(s1)
}

/// # Safety
/// AVX2, FMA and F16C present; `q.len()` a multiple of 16; every row inside `k`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_tf(q: &[f32], k: Elems<'_>, stride: usize, scale: f32, out: &mut [f32]) {
    const KEYS: usize = 4;
    let hd = q.len();
    let mut i = 0;
    let mut outs = out.chunks_exact_mut(KEYS);
    for o in &mut outs {
        let mut a = [_mm256_setzero_ps(); KEYS];
        let mut b = [_mm256_setzero_ps(); KEYS];
        for c in (0..hd).step_by(16) {
            // SAFETY: `c + 16 <= hd = q.len()`.
            let (q0, q1) = unsafe {
                (
                    _mm256_loadu_ps(q.as_ptr().add(c)),
                    _mm256_loadu_ps(q.as_ptr().add(c + 8)),
                )
            };
            for j in 0..KEYS {
                let e = (i + j) * stride + c;
                // SAFETY: row `i + j` is inside `k` (the caller's `fits`) and `c + 16 <= hd`.
                let (k0, k1) = unsafe { (load8(k, e), load8(k, e + 8)) };
                a[j] = _mm256_add_ps(a[j], _mm256_mul_ps(q0, k0));
                b[j] = _mm256_add_ps(b[j], _mm256_mul_ps(q1, k1));
            }
        }
        for j in 0..KEYS {
            o[j] = fold(a[j], b[j]) * scale;
        }
        i += KEYS;
    }
    for o in outs.into_remainder() {
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for c in (0..hd).step_by(16) {
            let e = i * stride + c;
            // SAFETY: as above.
            unsafe {
                let (q0, q1) = (
                    _mm256_loadu_ps(q.as_ptr().add(c)),
                    _mm256_loadu_ps(q.as_ptr().add(c + 8)),
                );
                a = _mm256_add_ps(a, _mm256_mul_ps(q0, load8(k, e)));
                b = _mm256_add_ps(b, _mm256_mul_ps(q1, load8(k, e + 8)));
            }
        }
        *o = fold(a, b) * scale;
        i += 1;
    }
}

/// # Safety
/// AVX2, FMA and F16C present; `out.len()` a multiple of 16; every row inside `v`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn wsum_tf(p: &[f32], v: Elems<'_>, stride: usize, out: &mut [f32]) {
    // Four registers of the output (32 elements) stay in registers across the rows; a head
    // of 16 mod 32 ends with a two-register block.
    let hd = out.len();
    let mut c = 0;
    while c < hd {
        let w = if hd - c >= 32 { 4 } else { 2 };
        let mut o = [_mm256_setzero_ps(); 4];
        for (r, o) in o.iter_mut().enumerate().take(w) {
            // SAFETY: `c + 8 r + 8 <= hd = out.len()`.
            *o = unsafe { _mm256_loadu_ps(out.as_ptr().add(c + 8 * r)) };
        }
        for (i, &pi) in p.iter().enumerate() {
            let pb = _mm256_set1_ps(pi);
            for (r, o) in o.iter_mut().enumerate().take(w) {
                // SAFETY: row `i` is inside `v` (the caller's `fits`), `c + 8 r + 8 <= hd`.
                let x = unsafe { load8(v, i * stride + c + 8 * r) };
                *o = _mm256_add_ps(*o, _mm256_mul_ps(pb, x));
            }
        }
        for (r, o) in o.iter().enumerate().take(w) {
            // SAFETY: as for the loads.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(c + 8 * r), *o) };
        }
        c += 8 * w;
    }
}
