//! Attention's two inner loops over cached rows, in one fixed arithmetic order that every
//! table reproduces bit for bit, so attention does not depend on the table:
//!
//! - **scores** `out[i] = dot16(q, key_i) * scale`: sixteen lanes, lane `l` accumulating
//!   `q[d] * key[d]` for `d = l, l + 16, l + 32, ...` in increasing `d` (a multiply, then an
//!   add: Rust does not contract), starting from `0.0`; then the lanes fold pairwise as
//!   `l += l + 8`, `l += l + 4`, `l += l + 2`, `l += l + 1` and lane 0 is the dot.
//! - **weighted sum** `out[d] += p[i] * row_i[d]` for `i` in order (per element; a vector of
//!   elements gives the same bits as the scalar loop).
//!
//! Rows are F32 words or little-endian F16 halves (the KV cache types). A half converts to
//! f32 exactly, so an F16 row's results equal an F32 row holding the same values. Before these
//! kernels the F16 path made one table call per position and converted values one by one in
//! software: 19% of a 64-token SmolLM2 prefill and 18% of Gemma 3 270M's (perf).
//!
//! Row `i` starts at element `i * stride` of the slice handed in (already offset to the head);
//! a slice too short for `out.len()` rows makes the call return `false` without writing.

/// Cached rows as the attention reads them.
#[derive(Clone, Copy)]
pub(crate) enum Elems<'a> {
    /// f32 words.
    F32(&'a [f32]),
    /// Little-endian IEEE half-precision values, two bytes each (the `kv-f16` cache).
    #[cfg(feature = "kv-f16")]
    F16(&'a [u8]),
}

impl Elems<'_> {
    /// Elements held.
    pub(crate) fn len(&self) -> usize {
        match self {
            Elems::F32(x) => x.len(),
            #[cfg(feature = "kv-f16")]
            Elems::F16(x) => x.len() / 2,
        }
    }

    /// Whether `n` rows of `width` elements, `stride` apart, fit.
    pub(crate) fn fits(&self, n: usize, stride: usize, width: usize) -> bool {
        n == 0
            || (n - 1)
                .checked_mul(stride)
                .and_then(|e| e.checked_add(width))
                .is_some_and(|e| e <= self.len())
    }
}

/// The lanes of the canonical dot.
pub(crate) const LANES: usize = 16;

/// IEEE half (bits) to f32, exactly, without the `half` crate's per-value branches (the one
/// builds without F16C get branches on subnormals; it made a 1000-position f16 decode ~30%
/// slower than f32). Finite halves: the exponent and mantissa bits shifted into an f32 and
/// scaled by 2^112 (the exponent bias difference; subnormals come out right because the f32
/// they land in is subnormal too and the scaling is exact). Inf/NaN: exponent all ones.
#[cfg(feature = "kv-f16")]
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let finite = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000); // 2^112
    let special = f32::from_bits(0x7f80_0000 | ((h & 0x03ff) << 13));
    let v = if em >= 0x7c00 { special } else { finite };
    f32::from_bits(v.to_bits() | sign)
}

/// The lane fold that ends every canonical dot.
#[inline(always)]
pub(crate) fn fold16(mut a: [f32; LANES]) -> f32 {
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            a[l] += a[l + w];
        }
    }
    a[0]
}

/// Sixteen lanes as chunks (vectorises on hosts).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn dot16_f32(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut qc = q.chunks_exact(LANES);
    let mut kc = k.chunks_exact(LANES);
    for (a, b) in (&mut qc).zip(&mut kc) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    for (l, (a, b)) in qc.remainder().iter().zip(kc.remainder()).enumerate() {
        acc[l] += a * b;
    }
    fold16(acc)
}

/// The same lanes in one loop: the same bits in a fraction of the code (microcontrollers).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline(always)]
fn dot16_f32(q: &[f32], k: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (d, (a, b)) in q.iter().zip(k).enumerate() {
        acc[d % LANES] += a * b;
    }
    fold16(acc)
}

#[cfg(feature = "kv-f16")]
#[inline(always)]
fn dot16_f16(q: &[f32], k: &[u8]) -> f32 {
    let mut acc = [0.0f32; LANES];
    for (d, (a, b)) in q.iter().zip(k.chunks_exact(2)).enumerate() {
        acc[d % LANES] += a * f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
    fold16(acc)
}

/// Portable scores (the canonical order itself).
pub(crate) fn scores(q: &[f32], k: Elems<'_>, stride: usize, scale: f32, out: &mut [f32]) -> bool {
    let hd = q.len();
    if !k.fits(out.len(), stride, hd) {
        return false;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let s = match k {
            Elems::F32(k) => dot16_f32(q, &k[i * stride..i * stride + hd]),
            #[cfg(feature = "kv-f16")]
            Elems::F16(k) => dot16_f16(q, &k[2 * i * stride..2 * (i * stride + hd)]),
        };
        *o = s * scale;
    }
    true
}

/// Portable weighted sum (the canonical order itself).
pub(crate) fn wsum(p: &[f32], v: Elems<'_>, stride: usize, out: &mut [f32]) -> bool {
    let hd = out.len();
    if !v.fits(p.len(), stride, hd) {
        return false;
    }
    for (i, &pi) in p.iter().enumerate() {
        match v {
            Elems::F32(v) => {
                for (o, x) in out.iter_mut().zip(&v[i * stride..i * stride + hd]) {
                    *o += pi * x;
                }
            }
            #[cfg(feature = "kv-f16")]
            Elems::F16(v) => {
                let row = &v[2 * i * stride..2 * (i * stride + hd)];
                for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                    *o += pi * f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                }
            }
        }
    }
    true
}

/// Attention scores over `out.len()` cached rows (see the module doc).
pub(crate) type ScoresFn =
    fn(q: &[f32], k: Elems<'_>, stride: usize, scale: f32, out: &mut [f32]) -> bool;
/// `out += sum_i p[i] * row_i` over `p.len()` cached rows (see the module doc).
pub(crate) type WsumFn = fn(p: &[f32], v: Elems<'_>, stride: usize, out: &mut [f32]) -> bool;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::kernels::Isa;
    use std::vec::Vec;
    use std::{println, vec};

    fn rng(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        }
    }

    fn halves(x: &[f32]) -> Vec<u8> {
        x.iter().flat_map(|&v| crate::quant::to_f16_le(v)).collect()
    }

    #[cfg(feature = "kv-f16")]
    #[test]
    fn f16_to_f32_matches_half_for_every_value() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got:e} vs {want:e}"
            );
        }
    }

    /// The canonical order by its definition, in f64-free scalar code written independently
    /// of `scores` (lane `d % 16`, then the fold).
    fn canonical(q: &[f32], k: &[f32]) -> f32 {
        let mut lanes = [0.0f32; LANES];
        for d in 0..q.len() {
            lanes[d % LANES] += q[d] * k[d];
        }
        fold16(lanes)
    }

    /// Every table gives the canonical bits for scores and weighted sums, F32 and F16 rows,
    /// head sizes on and off the SIMD widths, key counts around the four-key step, a GQA
    /// offset inside wider rows; an F16 row equals an F32 row of the same values.
    #[test]
    fn every_table_matches_the_canonical_order() {
        let mut r = rng(0x9e37_79b9_7f4a_7c15);
        let mut ran = 0;
        for isa in Isa::ALL {
            let Some(kern) = isa.kernel() else {
                println!(
                    "SKIPPED: attention kernels on {} (not on this CPU)",
                    isa.name()
                );
                continue;
            };
            ran += 1;
            for hd in [8usize, 16, 24, 48, 64, 128, 256] {
                let (kv_dim, kvo) = (3 * hd, hd);
                let mut q: Vec<f32> = (0..hd).map(|_| r()).collect();
                q[1] = -0.0;
                for n in [0usize, 1, 3, 4, 5, 8, 13, 33] {
                    let k: Vec<f32> = (0..n * kv_dim)
                        .map(|_| half::f16::from_f32(r()).to_f32())
                        .collect();
                    let k16 = halves(&k);
                    let mut all = vec![Elems::F32(k.get(kvo..).unwrap_or(&[]))];
                    #[cfg(feature = "kv-f16")]
                    all.push(Elems::F16(k16.get(2 * kvo..).unwrap_or(&[])));
                    let _ = &k16;
                    for rows in all {
                        let mut att = vec![f32::NAN; n];
                        assert!((kern.attn_scores)(&q, rows, kv_dim, 0.125, &mut att));
                        for (t, a) in att.iter().enumerate() {
                            let key = &k[t * kv_dim + kvo..t * kv_dim + kvo + hd];
                            let want = canonical(&q, key) * 0.125;
                            assert_eq!(
                                a.to_bits(),
                                want.to_bits(),
                                "{isa:?} hd {hd} n {n} key {t}"
                            );
                        }
                        let p: Vec<f32> = (0..n).map(|_| r().abs() / 4.0).collect();
                        let init: Vec<f32> = (0..hd).map(|_| r()).collect();
                        let mut out = init.clone();
                        assert!((kern.attn_wsum)(&p, rows, kv_dim, &mut out));
                        let mut want = init.clone();
                        for (t, &pt) in p.iter().enumerate() {
                            for d in 0..hd {
                                want[d] += pt * k[t * kv_dim + kvo + d];
                            }
                        }
                        for d in 0..hd {
                            assert_eq!(
                                out[d].to_bits(),
                                want[d].to_bits(),
                                "{isa:?} hd {hd} n {n} d {d}"
                            );
                        }
                    }
                }
                // Too short a slice: refused, nothing written.
                let k = vec![1.0f32; 2 * kv_dim];
                let mut att = [f32::NAN; 3];
                assert!(!(kern.attn_scores)(
                    &q,
                    Elems::F32(&k[kvo..]),
                    kv_dim,
                    1.0,
                    &mut att
                ));
                assert!(att.iter().all(|a| a.is_nan()));
                let mut out = vec![7.0f32; hd];
                assert!(!(kern.attn_wsum)(
                    &[1.0; 3],
                    Elems::F32(&k[kvo..]),
                    kv_dim,
                    &mut out
                ));
                assert!(out.iter().all(|&o| o == 7.0));
            }
        }
        assert!(ran >= 1);
    }
}
