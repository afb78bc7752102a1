//! AVX2 row kernels for the feature-gated weight types (Q5_0/Q5_1, the K-quants, IQ4) and the
//! AVX2 Q8_K activation quantiser; the AVX2 table (`avx2.rs`) and, where AVX-512 has nothing
//! faster, the AVX-512 table point at them.
//!
//! # Shape
//!
//! Same recipe as `avx2.rs` (llama.cpp's AVX2 path): weights are unpacked to one byte per
//! element, `vpmaddubsw` (u8 x i8 -> i16 pair sums) then `vpmaddwd` (-> i32) form the integer
//! dot, and one f32 FMA per block (per super-block for the 256-wide types) applies the scales.
//! Every kernel is written once, generic over the number of rows `R` it computes per pass;
//! the row loop runs `R = 2` (the activation loads and their unpacking are shared by two
//! weight rows, and two independent accumulator chains hide each other's latency) and `R = 1`
//! for a last odd row.
//!
//! Per type:
//! - **Q5_0** (`q - 16`, signed): the fifth bits are spread to bytes with one `vpshufb` of the
//!   broadcast `qh` and a compare against a bit mask; `q - 16` is then the nibble with `0xF0`
//!   OR-ed in where the fifth bit is clear (`nibble | 0xF0 == nibble - 16` as i8), and the dot
//!   runs with the sign trick as Q4_0 does (exact: activations are never -128).
//! - **Q5_1** (unsigned `q`, plus `m * s`): the fifth bit is OR-ed in as `0x10`; otherwise Q4_1.
//! - **Q4_K / Q5_K**: the eight 6-bit scales and mins are unpacked with three 32-bit masks
//!   (no per-scale branches); each 32-element group's `vpmaddubsw` pair sums are multiplied by
//!   the group's scale in the `vpmaddwd` that widens them (the scale broadcast by `vpshufb`), so
//!   a super-block is one i32 vector. The minimum term is `vpmaddwd` of the activation's
//!   16-element sums (`bsums`) with the mins, kept in lanes and subtracted with one more FMA.
//! - **Q6_K** (`q - 32`, 16 signed scales): unsigned `q` (0..63) goes through `vpmaddubsw`
//!   (`2 * 63 * 127 < 2^15`, no saturation); a 32-element vector holds two 16-element scale
//!   groups, one per 128-bit lane, so one `vpshufb` gives each lane its scale. The `- 32` is
//!   folded in once per super-block as `32 * sum(scale_g * bsum_g)`: this relies on `bsums`
//!   matching `qs`, which every Q8_K the quantisers produce satisfies.
//! - **Q5_K**: Q4_K with the fifth bit (`qh` bit `2c` / `2c + 1` for chunk `c`) OR-ed in as
//!   `0x10`, walking a shifted copy of `qh` (two `vpsllw` + masks per chunk).
//! - **Q2_K / Q3_K**: Q6_K's arrangement (two 16-element scale groups per vector); Q2_K's
//!   4-bit mins go through `bsums` as Q4_K's do; Q3_K runs the unsigned `low + 4 * high`
//!   (0..7) and folds its `- 4` in through `bsums` as Q6_K folds `- 32`.
//! - **IQ4_NL / IQ4_XS**: the nibble is an index into the 16-entry non-linear table, which
//!   one `vpshufb` looks up; the signed result runs with the sign trick (values -127..=113).
//!   IQ4_XS multiplies each 32-element group's pair sums by its scale `ls - 32` in `vpmaddwd`.
//!
//! The integer part of each dot is exact; only the f32 combination (lanes, FMA) differs from
//! the oracle, within the bound `tests/tests/kernels_types.rs` derives.
//!
//! The f16 scales of the 256-wide types go through F16C (`f16_le` here): `quant::f16_le` is
//! `half`'s software conversion in `no_std` builds, and swapping it took Q4_K from 12.6 to
//! 20.8 GB/s (IQ4_XS 6.2 -> 12.1).
//!
//! # Measured
//!
//! `kernels_cpu types` (one thread, thread CPU time, dev VM: AMD Zen 4), a 576 x 1536 matrix
//! in cache, GB/s of weights (the portable table's oracle rows: 0.9-2.7 GB/s):
//!
//! | Q5_0 | Q5_1 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_NL | IQ4_XS |
//! | --- | --- | --- | --- | --- | --- | --- | --- | --- |
//! | 10.5-12.5 | 13.9 | 9.7 | 8.1 | 20.8-21.9 | 20.8 | 19.5-22.1 | 12.4 | 12.1 |
//!
//! (Q4_0 / Q4_1 in `avx2.rs`: 12.8 / 15.5.) The quantiser is not timed separately: it
//! quantises one activation vector per matvec, ~0.2% of a SmolLM2 Q4_K_M decode step.

// Shared helpers serve whichever quant families are built; with some features off, some go
// unused.
#![cfg_attr(
    not(all(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(unused_imports, unused_macros, dead_code)
)]
use super::avx2::{dot_i8i8, dot_u8i8, hsum, load32, nibbles, prefetch_ahead, scale2};
use core::arch::x86_64::*;

/// `pub(super) fn $name` calling the `#[target_feature]` kernel `$tf`.
macro_rules! entry {
    ($(#[$m:meta])* $name:ident, $tf:ident, ($($a:ident: $t:ty),*)) => {
        $(#[$m])*
        pub(in crate::kernels::x86_64) fn $name($($a: $t),*) {
            // SAFETY: this function is reachable only through the AVX2 table (handed out by
            // `avx2::detect` after checking AVX2+FMA+F16C and OS YMM support) or the AVX-512
            // table, whose `detect` requires the same features; so the CPU runs `$tf`'s
            // instructions.
            unsafe { $tf($($a),*) }
        }
    };
}

/// The row loop: `$dot::<2>` on pairs of rows, `$dot::<1>` on a last odd row.
macro_rules! rows {
    ($w:ident, $bpr:ident, $x:ident, $y:ident, $dot:ident) => {{
        let mut rows = $w.chunks_exact($bpr.max(1));
        let mut outs = $y.chunks_exact_mut(2);
        for o in &mut outs {
            let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
                break;
            };
            let [a, b] = $dot::<2>([r0, r1], $x);
            o[0] = a;
            o[1] = b;
        }
        for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
            let [a] = $dot::<1>([r], $x);
            *o = a;
        }
    }};
}

/// Blocks the rows `w` and `x` all hold (the drivers pass exactly `bpr` of each).
#[inline(always)]
fn blocks<W, A, const R: usize>(w: &[&[W]; R], x: &[A]) -> usize {
    w.iter().map(|r| r.len()).fold(x.len(), usize::min)
}

/// Hint the cache to fetch every line of the block `a` (see `avx2::prefetch_ahead`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::kernels::x86_64) fn prefetch_block<T>(a: &T) {
    let p = (a as *const T).cast::<u8>();
    let mut off = 0;
    while off < core::mem::size_of::<T>() {
        // SAFETY: `p + off` lies inside `a` (off < size_of::<T>()).
        prefetch_ahead(unsafe { &*p.add(off) });
        off += 64;
    }
}

/// One f16 to f32 with F16C (`quant::f16_le` is a software conversion in `no_std` builds, a
/// measurable share of a K-quant super-block's fixed work).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(in crate::kernels::x86_64) fn f16_le(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(h) as i32),
    ))
}

/// `hsum` of each accumulator.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsums<const R: usize>(acc: [__m256; R]) -> [f32; R] {
    let mut out = [0.0; R];
    for (o, a) in out.iter_mut().zip(acc) {
        *o = hsum(a);
    }
    out
}

/// Byte `i` of the result is `0xFF` if bit `i` of `m` is set, else 0.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn bits_to_bytes(m: u32) -> __m256i {
    // Byte i takes byte i / 8 of `m` (vpshufb works per 128-bit lane; both lanes hold `m`)...
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let v = _mm256_shuffle_epi8(_mm256_set1_epi32(m as i32), spread);
    // ...and keeps bit i % 8 of it.
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(v, sel), sel)
}

// ---- Q5_0 / Q5_1 -----------------------------------------------------------------------------

#[cfg(feature = "quant-q5")]
mod q5 {
    use super::*;
    use crate::quant::{BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};

    entry!(q5_0_rows, q5_0_rows_tf, (w: &[BlockQ5_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
    entry!(q5_1_rows, q5_1_rows_tf, (w: &[BlockQ5_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]));

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5_0_rows_tf(w: &[BlockQ5_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q5_0);
    }

    /// The 32 signed quants `q - 16` of a Q5_0 block, in element order.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in super::super) fn q5_0_quants(a: &BlockQ5_0) -> __m256i {
        let clear = _mm256_andnot_si256(
            bits_to_bytes(u32::from_le_bytes(a.qh)),
            _mm256_set1_epi8(0xF0u8 as i8),
        );
        _mm256_or_si256(nibbles(&a.qs), clear)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q5_0<const R: usize>(w: [&[BlockQ5_0]; R], x: &[BlockQ8_0]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let yv = load32(&b.qs);
            for r in 0..R {
                let a = &w[r][i];
                prefetch_ahead(a);
                let s = dot_i8i8(q5_0_quants(a), yv);
                acc[r] = _mm256_fmadd_ps(scale2(a.d, b.d), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        hsums(acc)
    }

    /// The 32 unsigned 5-bit quants of a Q5_1 block (nibble plus `16 *` its `qh` bit).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in super::super) fn q5_1_quants(a: &BlockQ5_1) -> __m256i {
        let hi = _mm256_and_si256(
            bits_to_bytes(u32::from_le_bytes(a.qh)),
            _mm256_set1_epi8(0x10),
        );
        _mm256_or_si256(nibbles(&a.qs), hi)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5_1_rows_tf(w: &[BlockQ5_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q5_1);
    }

    /// For a Q5_1 x Q8_1 pair: lane 0 = `d_w d_x`, lane 1 = `m_w s_x`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn scales_q5_1(a: &BlockQ5_1, b: &BlockQ8_1) -> __m128 {
        let w = u32::from_le_bytes([a.d[0], a.d[1], a.m[0], a.m[1]]) as u64;
        let x = u32::from_le_bytes([b.d[0], b.d[1], b.s[0], b.s[1]]) as u64;
        let f = _mm_cvtph_ps(_mm_cvtsi64_si128((w | (x << 32)) as i64)); // [dw, mw, dx, sx]
        _mm_mul_ps(f, _mm_movehl_ps(f, f))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q5_1<const R: usize>(w: [&[BlockQ5_1]; R], x: &[BlockQ8_1]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut acc_m = [_mm_setzero_ps(); R];
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let yv = load32(&b.qs);
            for r in 0..R {
                let a = &w[r][i];
                prefetch_ahead(a);
                let s = dot_u8i8(q5_1_quants(a), yv);
                let sc = scales_q5_1(a, b);
                acc_m[r] = _mm_add_ps(acc_m[r], sc);
                acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        let mut out = hsums(acc);
        for (o, m) in out.iter_mut().zip(acc_m) {
            *o += _mm_cvtss_f32(_mm_movehdup_ps(m));
        }
        out
    }
}
#[cfg(feature = "quant-q5")]
pub(in crate::kernels::x86_64) use q5::*;

// ---- Q8_K quantiser --------------------------------------------------------------------------

#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
mod q8k {
    use super::*;
    use crate::quant::{BlockQ8_K, QK_K};

    entry!(quantize_q8_k, quantize_q8_k_tf, (x: &[f32], y: &mut [BlockQ8_K]));

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn load8(a: &[f32; 8]) -> __m256 {
        // SAFETY: `a` is 8 readable f32s; `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(a.as_ptr()) }
    }

    /// Bit-identical to `quant::q8_k::quantize_row_q8_k` for finite input: the same `amax`
    /// and first index holding it, the same `iscale * x` product, and `vcvtps2dq` under the
    /// default rounding mode (nearest, ties to even) is `nearest_int` for these magnitudes
    /// (|iscale * x| <= 127 + an ulp); the saturating packs clamp at 127 as ggml's `MIN` does.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn quantize_q8_k_tf(x: &[f32], y: &mut [BlockQ8_K]) {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        for (xb, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
            let (v, _) = xb.as_chunks::<8>();
            let mut m = _mm256_setzero_ps();
            for c in v {
                m = _mm256_max_ps(m, _mm256_and_ps(load8(c), abs));
            }
            let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            if amax == 0.0 {
                *b = BlockQ8_K::ZERO;
                continue;
            }
            // The first element of largest magnitude, with its sign (exists: amax is one of
            // the |x| for finite input; 0.0 would only be reached with NaNs, giving d = inf
            // as the oracle's -127 / 0 would not -- NaN input is outside the contract).
            let max = xb
                .iter()
                .copied()
                .find(|v| f32::from_bits(v.to_bits() & 0x7fff_ffff) == amax)
                .unwrap_or(0.0);
            let iscale = -127.0f32 / max;
            let iv = _mm256_set1_ps(iscale);
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let (qs, _) = b.qs.as_chunks_mut::<32>();
            let mut sums = [0i32; 16];
            for (k, (q, c)) in qs.iter_mut().zip(v.chunks_exact(4)).enumerate() {
                let i = |j: usize| _mm256_cvtps_epi32(_mm256_mul_ps(iv, load8(&c[j])));
                let ab = _mm256_packs_epi32(i(0), i(1));
                let cd = _mm256_packs_epi32(i(2), i(3));
                let p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(ab, cd), order);
                // SAFETY: `q` is 32 writable bytes; `storeu` has no alignment requirement.
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
                // Sums of 4 bytes per i32 lane, then of 16 per 128-bit half.
                let s = _mm256_madd_epi16(
                    _mm256_maddubs_epi16(_mm256_set1_epi8(1), p),
                    _mm256_set1_epi16(1),
                );
                let s = _mm256_hadd_epi32(s, s);
                let s = _mm256_hadd_epi32(s, s);
                sums[2 * k] = _mm256_extract_epi32::<0>(s);
                sums[2 * k + 1] = _mm256_extract_epi32::<4>(s);
            }
            for (o, s) in b.bsums.chunks_exact_mut(2).zip(sums) {
                // |s| <= 16 * 128: exact in i16, as ggml's int16_t store.
                o.copy_from_slice(&(s as i16).to_le_bytes());
            }
            b.d = (1.0f32 / iscale).to_le_bytes();
        }
    }
}
#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
pub(in crate::kernels::x86_64) use q8k::*;

// ---- K-quants --------------------------------------------------------------------------------

#[cfg(feature = "quant-k")]
mod k {
    use super::*;
    use crate::quant::{BlockQ2_K, BlockQ3_K, BlockQ4_K, BlockQ5_K, BlockQ6_K, BlockQ8_K};

    entry!(q2_k_rows, q2_k_rows_tf, (w: &[BlockQ2_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));
    entry!(q3_k_rows, q3_k_rows_tf, (w: &[BlockQ3_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));
    entry!(q4_k_rows, q4_k_rows_tf, (w: &[BlockQ4_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));
    entry!(q5_k_rows, q5_k_rows_tf, (w: &[BlockQ5_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));
    entry!(q6_k_rows, q6_k_rows_tf, (w: &[BlockQ6_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));

    /// `vpshufb` controls broadcasting i16 word `g` of each 128-bit lane to the whole lane.
    const fn word_bcast(lo: u8, hi: u8) -> [u8; 32] {
        let mut t = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            let g = if i < 16 { lo } else { hi };
            t[i] = 2 * g + (i as u8 & 1);
            i += 1;
        }
        t
    }

    /// Group `g` (0..8) of a Q4_K/Q5_K super-block: its scale (word `g`) in both lanes.
    pub(in crate::kernels::x86_64) static BCAST8: [[u8; 32]; 8] = {
        let mut t = [[0u8; 32]; 8];
        let mut g = 0;
        while g < 8 {
            t[g] = word_bcast(g as u8, g as u8);
            g += 1;
        }
        t
    };

    /// Vector `k` of a Q6_K half (k % 4): scale word `2k` in the low lane, `2k + 1` in the high.
    pub(in crate::kernels::x86_64) static BCAST_PAIRS: [[u8; 32]; 4] = {
        let mut t = [[0u8; 32]; 4];
        let mut k = 0;
        while k < 4 {
            t[k] = word_bcast(2 * k as u8, 2 * k as u8 + 1);
            k += 1;
        }
        t
    };

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels::x86_64) fn load_ctl(t: &[u8; 32]) -> __m256i {
        load32(t)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels::x86_64) fn load_bsums(b: &BlockQ8_K) -> __m256i {
        load32(&b.bsums)
    }

    /// The 8 scales and 8 mins of a Q4_K/Q5_K super-block (ggml `get_scale_min_k4`) as
    /// `(scales, mins)`, byte `j` of each for group `j`.
    #[inline(always)]
    pub(in super::super) fn scale_min_k4(s: &[u8; 12]) -> (u64, u64) {
        let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (w0, w1, w2) = (w(0), w(1), w(2));
        let sc_lo = w0 & 0x3f3f_3f3f;
        let m_lo = w1 & 0x3f3f_3f3f;
        let sc_hi = (w2 & 0x0f0f_0f0f) | ((w0 >> 6) & 0x0303_0303) << 4;
        let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | ((w1 >> 6) & 0x0303_0303) << 4;
        (
            sc_lo as u64 | (sc_hi as u64) << 32,
            m_lo as u64 | (m_hi as u64) << 32,
        )
    }

    /// Eight bytes widened to eight i16, broadcast to both 128-bit lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels::x86_64) fn u8x8_i16(v: u64) -> __m256i {
        _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(v as i64)))
    }

    /// The eight mins as i16, each twice (word `j` holds `min_{j / 2}`), to be `vpmaddwd`-ed
    /// with the activation's 16 `bsums`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels::x86_64) fn mins_pairs(mins: u64) -> __m256i {
        let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mins as i64));
        _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m))
    }

    /// `sum_j bsum_j * min_{j / 2}` as 8 i32 lanes (to be summed).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn mins_dot(mins: u64, b: &BlockQ8_K) -> __m256i {
        _mm256_madd_epi16(mins_pairs(mins), load_bsums(b))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_k_rows_tf(w: &[BlockQ4_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q4_k);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5_k_rows_tf(w: &[BlockQ5_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q5_k);
    }

    /// What the Q4_K and Q5_K kernels read of a super-block.
    trait K4: Copy {
        fn d(&self) -> [u8; 2];
        fn dmin(&self) -> [u8; 2];
        fn scales(&self) -> &[u8; 12];
        fn qs(&self) -> &[u8; 128];
        /// Q5_K's fifth bits.
        fn qh(&self) -> Option<&[u8; 32]>;
    }

    impl K4 for BlockQ4_K {
        fn d(&self) -> [u8; 2] {
            self.d
        }
        fn dmin(&self) -> [u8; 2] {
            self.dmin
        }
        fn scales(&self) -> &[u8; 12] {
            &self.scales
        }
        fn qs(&self) -> &[u8; 128] {
            &self.qs
        }
        fn qh(&self) -> Option<&[u8; 32]> {
            None
        }
    }

    impl K4 for BlockQ5_K {
        fn d(&self) -> [u8; 2] {
            self.d
        }
        fn dmin(&self) -> [u8; 2] {
            self.dmin
        }
        fn scales(&self) -> &[u8; 12] {
            &self.scales
        }
        fn qs(&self) -> &[u8; 128] {
            &self.qs
        }
        fn qh(&self) -> Option<&[u8; 32]> {
            Some(&self.qh)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q4_k<const R: usize>(w: [&[BlockQ4_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        dot_k4(w, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q5_k<const R: usize>(w: [&[BlockQ5_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        dot_k4(w, x)
    }

    /// Q4_K and Q5_K (whose fifth bit, `qh` bit `2c` / `2c + 1` for chunk `c`'s low / high
    /// nibbles, is OR-ed in as `0x10`; `q <= 31` keeps `vpmaddubsw` from saturating).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_k4<T: K4, const R: usize>(w: [&[T]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let (nib, b4) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x10));
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<32>();
            let dy = b.d();
            let mut sc = [_mm256_setzero_si256(); R];
            let mut isum = [_mm256_setzero_si256(); R];
            let mut msum = [_mm256_setzero_si256(); R];
            let mut hb = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let a = &w[r][i];
                prefetch_block(a);
                let (s, m) = scale_min_k4(a.scales());
                sc[r] = u8x8_i16(s);
                msum[r] = mins_dot(m, b);
                if let Some(qh) = a.qh() {
                    hb[r] = load32(qh);
                }
            }
            for c in 0..4 {
                let (y0, y1) = (load32(&yq[2 * c]), load32(&yq[2 * c + 1]));
                let (c0, c1) = (load_ctl(&BCAST8[2 * c]), load_ctl(&BCAST8[2 * c + 1]));
                for r in 0..R {
                    let (qs, _) = w[r][i].qs().as_chunks::<32>();
                    let q = load32(&qs[c]);
                    let mut lo = _mm256_and_si256(q, nib);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), nib);
                    if w[r][i].qh().is_some() {
                        // Bits 0 and 1 of `hb` are bits 2c and 2c + 1 of `qh` (shifted below).
                        let h = hb[r];
                        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(h), b4));
                        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(h), b4));
                        hb[r] = _mm256_srli_epi16::<2>(h);
                    }
                    let lo = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(lo, y0),
                        _mm256_shuffle_epi8(sc[r], c0),
                    );
                    let hi = _mm256_madd_epi16(
                        _mm256_maddubs_epi16(hi, y1),
                        _mm256_shuffle_epi8(sc[r], c1),
                    );
                    isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(lo, hi));
                }
            }
            for r in 0..R {
                let a = &w[r][i];
                let d = _mm256_set1_ps(f16_le(a.d()) * dy);
                let dmin = _mm256_set1_ps(f16_le(a.dmin()) * dy);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[r]), acc[r]);
                acc[r] = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(msum[r]), acc[r]);
            }
        }
        hsums(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q6_k_rows_tf(w: &[BlockQ6_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q6_k);
    }

    /// Eight signed bytes widened to eight i16, broadcast to both 128-bit lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(in crate::kernels::x86_64) fn i8x8_i16(v: &[u8]) -> __m256i {
        let mut b = [0u8; 8];
        b.copy_from_slice(&v[..8]);
        let v = u64::from_le_bytes(b);
        _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_cvtsi64_si128(v as i64)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q6_k<const R: usize>(w: [&[BlockQ6_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<32>();
            let mut isum = [_mm256_setzero_si256(); R];
            let mut scs = [[_mm256_setzero_si256(); 2]; R];
            for r in 0..R {
                let a = &w[r][i];
                prefetch_block(a);
                scs[r] = [i8x8_i16(&a.scales[..8]), i8x8_i16(&a.scales[8..])];
                // 32 * sum_g scale_g * bsum_g: the `- 32` of every quant, subtracted up front.
                let s16 = _mm256_cvtepi8_epi16(super::super::avx2::load16(&a.scales));
                let corr = _mm256_madd_epi16(s16, load_bsums(b));
                isum[r] = _mm256_sub_epi32(isum[r], _mm256_slli_epi32::<5>(corr));
            }
            for h in 0..2 {
                let ys = [
                    load32(&yq[4 * h]),
                    load32(&yq[4 * h + 1]),
                    load32(&yq[4 * h + 2]),
                    load32(&yq[4 * h + 3]),
                ];
                for r in 0..R {
                    let a = &w[r][i];
                    let (ql, _) = a.ql.as_chunks::<32>();
                    let (qh, _) = a.qh.as_chunks::<32>();
                    let (l0, l1, hb) = (load32(&ql[2 * h]), load32(&ql[2 * h + 1]), load32(&qh[h]));
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(l0, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(l1, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                            _mm256_and_si256(hb, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                            _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                        ),
                    ];
                    for j in 0..4 {
                        let p = _mm256_maddubs_epi16(q[j], ys[j]);
                        let s = _mm256_shuffle_epi8(scs[r][h], load_ctl(&BCAST_PAIRS[j]));
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p, s));
                    }
                }
            }
            for r in 0..R {
                let d = _mm256_set1_ps(f16_le(w[r][i].d) * b.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[r]), acc[r]);
            }
        }
        hsums(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q2_k_rows_tf(w: &[BlockQ2_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q2_k);
    }

    /// Q2_K: as Q6_K's layout of scale groups (16 elements, two per vector), with unsigned
    /// 2-bit quants and the mins folded in through `bsums` (as Q4_K).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q2_k<const R: usize>(w: [&[BlockQ2_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let m3 = _mm256_set1_epi8(3);
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<32>();
            let mut isum = [_mm256_setzero_si256(); R];
            let mut msum = [_mm256_setzero_si256(); R];
            let mut scs = [[_mm256_setzero_si256(); 2]; R];
            for r in 0..R {
                let a = &w[r][i];
                prefetch_block(a);
                let sc = super::super::avx2::load16(&a.scales);
                let lo = _mm_and_si128(sc, _mm_set1_epi8(0x0f));
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(sc), _mm_set1_epi8(0x0f));
                scs[r] = [
                    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(lo)),
                    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_srli_si128::<8>(lo))),
                ];
                msum[r] = _mm256_madd_epi16(_mm256_cvtepu8_epi16(hi), load_bsums(b));
            }
            for h in 0..2 {
                let ys = [
                    load32(&yq[4 * h]),
                    load32(&yq[4 * h + 1]),
                    load32(&yq[4 * h + 2]),
                    load32(&yq[4 * h + 3]),
                ];
                for r in 0..R {
                    let (qs, _) = w[r][i].qs.as_chunks::<32>();
                    let q = load32(&qs[h]);
                    let q = [
                        _mm256_and_si256(q, m3),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                        _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                    ];
                    for j in 0..4 {
                        let p = _mm256_maddubs_epi16(q[j], ys[j]);
                        let s = _mm256_shuffle_epi8(scs[r][h], load_ctl(&BCAST_PAIRS[j]));
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p, s));
                    }
                }
            }
            for r in 0..R {
                let a = &w[r][i];
                let d = _mm256_set1_ps(f16_le(a.d) * b.d());
                let dmin = _mm256_set1_ps(f16_le(a.dmin) * b.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[r]), acc[r]);
                acc[r] = _mm256_fnmadd_ps(dmin, _mm256_cvtepi32_ps(msum[r]), acc[r]);
            }
        }
        hsums(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q3_k_rows_tf(w: &[BlockQ3_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q3_k);
    }

    /// Q3_K's 16 scales (6 bits each, ggml's `kmask1/kmask2` packing) minus 32, as bytes.
    #[inline(always)]
    fn q3_k_scales(s: &[u8; 12]) -> [u8; 16] {
        let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (a0, a1, t) = (w(0), w(1), w(2));
        let (m1, m2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
        let aux = [
            (a0 & m2) | ((t & m1) << 4),
            (a1 & m2) | (((t >> 2) & m1) << 4),
            ((a0 >> 4) & m2) | (((t >> 4) & m1) << 4),
            ((a1 >> 4) & m2) | (((t >> 6) & m1) << 4),
        ];
        let mut out = [0u8; 16];
        for (o, v) in out.chunks_exact_mut(4).zip(aux) {
            o.copy_from_slice(&v.to_le_bytes().map(|b| b.wrapping_sub(32)));
        }
        out
    }

    /// Q3_K: unsigned `q' = low bits + 4 * high bit` (0..7) through `vpmaddubsw`, the `- 4`
    /// folded in once per super-block as `4 * sum(scale_g * bsum_g)` (as Q6_K's `- 32`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_q3_k<const R: usize>(w: [&[BlockQ3_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let mut acc = [_mm256_setzero_ps(); R];
        let (m3, b4) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<32>();
            let mut isum = [_mm256_setzero_si256(); R];
            let mut scs = [[_mm256_setzero_si256(); 2]; R];
            let mut hb = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let a = &w[r][i];
                prefetch_block(a);
                let sc = q3_k_scales(&a.scales);
                scs[r] = [i8x8_i16(&sc[..8]), i8x8_i16(&sc[8..])];
                let s16 = _mm256_cvtepi8_epi16(super::super::avx2::load16(&sc));
                let corr = _mm256_madd_epi16(s16, load_bsums(b));
                isum[r] = _mm256_sub_epi32(isum[r], _mm256_slli_epi32::<2>(corr));
                hb[r] = load32(&a.hmask);
            }
            for h in 0..2 {
                let ys = [
                    load32(&yq[4 * h]),
                    load32(&yq[4 * h + 1]),
                    load32(&yq[4 * h + 2]),
                    load32(&yq[4 * h + 3]),
                ];
                for r in 0..R {
                    let (qs, _) = w[r][i].qs.as_chunks::<32>();
                    let q = load32(&qs[h]);
                    let lows = [
                        _mm256_and_si256(q, m3),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(q), m3),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(q), m3),
                        _mm256_and_si256(_mm256_srli_epi16::<6>(q), m3),
                    ];
                    for (j, lo) in lows.into_iter().enumerate() {
                        // Bit 0 of `hb` is bit 4h + j of `hmask` (shifted below).
                        let hbit = _mm256_and_si256(_mm256_slli_epi16::<2>(hb[r]), b4);
                        hb[r] = _mm256_srli_epi16::<1>(hb[r]);
                        let p = _mm256_maddubs_epi16(_mm256_or_si256(lo, hbit), ys[j]);
                        let s = _mm256_shuffle_epi8(scs[r][h], load_ctl(&BCAST_PAIRS[j]));
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_madd_epi16(p, s));
                    }
                }
            }
            for r in 0..R {
                let d = _mm256_set1_ps(f16_le(w[r][i].d) * b.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[r]), acc[r]);
            }
        }
        hsums(acc)
    }
}
#[cfg(feature = "quant-k")]
pub(in crate::kernels::x86_64) use k::*;

// ---- IQ4_NL / IQ4_XS -------------------------------------------------------------------------

#[cfg(feature = "quant-iq4")]
mod iq4 {
    use super::*;
    use crate::quant::iq4::KVALUES_IQ4NL;
    use crate::quant::{BlockIQ4_NL, BlockIQ4_XS, BlockQ8_0, BlockQ8_K};

    entry!(iq4_nl_rows, iq4_nl_rows_tf, (w: &[BlockIQ4_NL], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
    entry!(iq4_xs_rows, iq4_xs_rows_tf, (w: &[BlockIQ4_XS], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]));

    /// The 16 table values in both 128-bit lanes, for `vpshufb` lookups.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn table() -> __m256i {
        let t = KVALUES_IQ4NL.map(|v| v as u8);
        _mm256_broadcastsi128_si256(super::super::avx2::load16(&t))
    }

    /// 32 signed table values of one 32-element group (nibble order as Q4_0).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn lookup(t: __m256i, qs: &[u8; 16]) -> __m256i {
        _mm256_shuffle_epi8(t, nibbles(qs))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn iq4_nl_rows_tf(w: &[BlockIQ4_NL], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_iq4_nl);
    }

    /// IQ4_NL: Q4_0 with a `vpshufb` table lookup in place of `- 8`; the sign trick is exact
    /// (table values lie in -127..=113, activations in -127..=127, `2 * 127 * 127 < 2^15`).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_iq4_nl<const R: usize>(w: [&[BlockIQ4_NL]; R], x: &[BlockQ8_0]) -> [f32; R] {
        let t = table();
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let yv = load32(&b.qs);
            for r in 0..R {
                let a = &w[r][i];
                prefetch_ahead(a);
                let s = dot_i8i8(lookup(t, &a.qs), yv);
                acc[r] = _mm256_fmadd_ps(scale2(a.d, b.d), _mm256_cvtepi32_ps(s), acc[r]);
            }
        }
        hsums(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn iq4_xs_rows_tf(w: &[BlockIQ4_XS], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_iq4_xs);
    }

    /// IQ4_XS: the IQ4_NL lookup per 32-element group, each group's `vpmaddubsw` pair sums
    /// multiplied by its scale `ls - 32` in the widening `vpmaddwd`, one FMA per super-block.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_iq4_xs<const R: usize>(w: [&[BlockIQ4_XS]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let t = table();
        let mut acc = [_mm256_setzero_ps(); R];
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<32>();
            let mut isum = [_mm256_setzero_si256(); R];
            let mut ls = [[0i16; 8]; R];
            for r in 0..R {
                let a = &w[r][i];
                prefetch_block(a);
                let h = u16::from_le_bytes(a.scales_h);
                for (g, l) in ls[r].iter_mut().enumerate() {
                    let lo = (a.scales_l[g / 2] >> (4 * (g % 2))) & 0x0f;
                    *l = (lo as u16 | ((h >> (2 * g)) & 3) << 4) as i16 - 32;
                }
            }
            for (g, yg) in yq.iter().enumerate() {
                let yv = load32(yg);
                for r in 0..R {
                    let (qs, _) = w[r][i].qs.as_chunks::<16>();
                    let q = lookup(t, &qs[g]);
                    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(yv, q));
                    let p = _mm256_madd_epi16(p, _mm256_set1_epi16(ls[r][g]));
                    isum[r] = _mm256_add_epi32(isum[r], p);
                }
            }
            for r in 0..R {
                let d = _mm256_set1_ps(f16_le(w[r][i].d) * b.d());
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum[r]), acc[r]);
            }
        }
        hsums(acc)
    }
}
#[cfg(feature = "quant-iq4")]
pub(in crate::kernels::x86_64) use iq4::*;
