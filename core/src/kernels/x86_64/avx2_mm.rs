//! AVX2 blocked prompt matmuls for the feature-gated weight types whose AVX2 row kernels sit
//! in `avx2_q.rs`: Q5_0, Q5_1, Q6_K and Q4_K (the types of a Q4_K_M file besides Q8_0, and
//! Q5_1: `kernels_cpu mm`, 64 tokens, 18-19 -> 39-46 GMAC/s against a matvec per token).
//!
//! # Design
//!
//! The driver is `avx2.rs`'s (`matmul_entry` splits the columns into passes of up to
//! [`MM_COLS`] = 8 tokens, `by_cols!` instantiates one kernel per column count). One weight
//! row is walked once per pass and each of its blocks is unpacked once for all the pass's
//! columns; the matvec unpacks it once per token and, at prefill, re-reads the whole matrix
//! from memory per token.
//!
//! - **Q5_0** is `avx2.rs`'s signed matmul (`mm_signed!`, as Q4_0 and Q8_0) with the row
//!   kernel's unpacking (`q5_0_quants`): the activations are packed per pass ([`ColBlock`]),
//!   `|q|` is formed once per block, `x * sign(q)` per column.
//! - **Q6_K / Q4_K**: a super-block (256 weights) is unpacked into the eight 32-byte quant
//!   vectors and the eight scale vectors (`vpshufb` broadcasts) that the row kernel forms
//!   inside its loop; each column then costs eight `vpmaddubsw` (the activation a memory
//!   operand), eight `vpmaddwd` by the scales, the adds, and its `bsums` term (Q6_K's `- 32`,
//!   Q4_K's mins). The Q8_K activations are read where they lie: a super-block is 292
//!   contiguous bytes, so there is nothing to gain from packing them.
//!
//! # Results
//!
//! Every column is bit-identical to the AVX2 matvec of that column (`tests/tests/
//! kernels_types.rs` checks it on every table): the integer dot of a block or super-block is
//! exact whatever order its terms are added in, and the float part is the row kernel's, step
//! for step: per (row, column) the same scale (`d_w d_x`, or for the K-quants the scalar
//! product `f16(d_w) * d_x` rounded to f32 as the row kernel rounds it), the same FMA (and
//! Q4_K's `fnmadd` of the mins) into the same eight lanes in block order, and `hsum_cols`
//! reduces the lanes as `hsum` does. The AVX-512 table takes the Q4_K matmul (its Q4_K row
//! kernel is this one's); its Q5_0 and Q6_K row kernels are AVX-512 ones that reduce in
//! another order, so their blocked matmuls are AVX-512 ones in that order (`avx512_q.rs`).
//!
//! # Measured
//!
//! `EDGELORA_ISA=avx2|avx512 decode_tps --model M --tokens 32` (one thread, 64-token prompt,
//! thread CPU time), the binaries before and after run alternately, medians of three (dev
//! VM: AMD Zen 4, 2 vCPUs, shared; details in `bench/README.md`), prefill tokens/s:
//!
//! | model (Q4_K_M) | AVX2 before | AVX2 after | AVX-512 before | AVX-512 after |
//! | --- | --- | --- | --- | --- |
//! | SmolLM2-135M-Instruct | 155.4 | 273.4 (1.76x) | 199.6 | 320.3 (1.60x) |
//! | gemma-3-270m | 154.4 | 252.2 (1.63x) | 198.6 | 286.9 (1.44x) |
//!
//! (AVX-512 "after" uses this file's Q4_K and `avx512_q.rs`'s Q5_0 / Q6_K.)

// With one of the two features off, the other's imports go unused.
#![cfg_attr(
    not(all(feature = "quant-q5", feature = "quant-k")),
    allow(unused_imports)
)]
use super::avx2::{
    by_cols, col_scales, dot_u8i8, f16_f32, hsum_cols, lane, load32, matmul_entry, mm_signed,
    pack_cols, prefetch_ahead, store_cols, ColBlock, MM_COLS, MM_MAX_BLOCKS,
};
use crate::kernels::Kernel;
use crate::quant::BlockQ8_0;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

// ---- Q5_0 ------------------------------------------------------------------------------------

#[cfg(feature = "quant-q5")]
mod q5 {
    use super::*;
    use crate::kernels::x86_64::avx2::load_ps;
    use crate::kernels::x86_64::avx2_q::{q5_0_quants, q5_1_quants};
    use crate::quant::{BlockQ5_0, BlockQ5_1, BlockQ8_1};

    /// Blocked `Y = W X` for Q5_0 weights and Q8_0 activations (see `avx2::matmul_q4_1` for
    /// the shape of `x` and `y`); `false` if it does not take the shape.
    pub(in crate::kernels::x86_64) fn matmul_q5_0(
        k: &Kernel,
        w: &[BlockQ5_0],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
    ) -> bool {
        matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
            // SAFETY: `matmul_entry` checked that `k` is the AVX2 (or AVX-512) table, which
            // `detect` hands out only after checking AVX2, FMA, F16C and OS YMM support.
            unsafe { by_cols!(nc, mm_q5_0_tf, w, bpr, rows, x, y) }
        })
    }

    mm_signed!(mm_q5_0_tf, BlockQ5_0, q5_0_quants);

    /// As [`matmul_q5_0`] for Q5_1 weights and Q8_1 activations: `avx2::matmul_q4_1`'s
    /// structure with the row kernel's 5-bit quants (`q5_1_quants`). Per (row, column) the
    /// row kernel's arithmetic: the exact integer dot, the FMA by `d_w d_x` in block order,
    /// the `m_w s_x` terms (one multiply, one add per block, in block order) added after the
    /// lane sum, so every column is bit-identical to the AVX2 matvec.
    pub(in crate::kernels::x86_64) fn matmul_q5_1(
        k: &Kernel,
        w: &[BlockQ5_1],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_1],
        y: &mut [f32],
    ) -> bool {
        matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
            // SAFETY: as in `matmul_q5_0`.
            unsafe { by_cols!(nc, mm_q5_1_tf, w, bpr, rows, x, y) }
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn mm_q5_1_tf<const NC: usize>(
        w: &[BlockQ5_1],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_1],
        y: &mut [f32],
    ) {
        let mut buf = [const { MaybeUninit::<ColBlock>::uninit() }; MM_MAX_BLOCKS];
        let act = pack_cols::<_, NC>(x, bpr, |b| (&b.qs, b.d, b.s), &mut buf);
        for (r, row) in w.chunks_exact(bpr).take(rows).enumerate() {
            let mut acc = [_mm256_setzero_ps(); NC];
            let mut accm = _mm256_setzero_ps();
            for (a, p) in row.iter().zip(act) {
                prefetch_ahead(a);
                let q = q5_1_quants(a);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
                    a.d[0], a.d[1], a.m[0], a.m[1],
                ]))); // [d_w, m_w, 0, 0]
                let dw = _mm256_broadcastss_ps(dm);
                let mw = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                accm = _mm256_add_ps(accm, _mm256_mul_ps(mw, load_ps(&p.s)));
                let d = col_scales(dw, &p.d);
                for (c, (acc, xq)) in acc.iter_mut().zip(&p.qs).enumerate() {
                    let s = dot_u8i8(q, load32(xq));
                    *acc = _mm256_fmadd_ps(lane(&d, c), _mm256_cvtepi32_ps(s), *acc);
                }
            }
            store_cols::<NC>(_mm256_add_ps(hsum_cols(&acc), accm), y, rows, r);
        }
    }
}
#[cfg(feature = "quant-q5")]
pub(in crate::kernels::x86_64) use q5::*;

// ---- K-quants --------------------------------------------------------------------------------

#[cfg(feature = "quant-k")]
mod k {
    use super::*;
    use crate::kernels::x86_64::avx2_q::{
        f16_le, i8x8_i16, load_bsums, load_ctl, mins_pairs, prefetch_block, scale_min_k4, u8x8_i16,
        BCAST8, BCAST_PAIRS,
    };
    use crate::quant::{BlockQ4_K, BlockQ6_K, BlockQ8_K};

    /// Blocked `Y = W X` for Q6_K weights and Q8_K activations (see `avx2::matmul_q4_1` for
    /// the shape of `x` and `y`, and the module doc); `false` if it does not take the shape.
    pub(in crate::kernels::x86_64) fn matmul_q6_k(
        k: &Kernel,
        w: &[BlockQ6_K],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_K],
        y: &mut [f32],
    ) -> bool {
        matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
            // SAFETY: as in `matmul_q5_0`.
            unsafe { by_cols!(nc, mm_q6_k_tf, w, bpr, rows, x, y) }
        })
    }

    /// As [`matmul_q6_k`] for Q4_K weights.
    pub(in crate::kernels::x86_64) fn matmul_q4_k(
        k: &Kernel,
        w: &[BlockQ4_K],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_K],
        y: &mut [f32],
    ) -> bool {
        matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
            // SAFETY: as in `matmul_q5_0`.
            unsafe { by_cols!(nc, mm_q4_k_tf, w, bpr, rows, x, y) }
        })
    }

    /// The `NC` columns of a pass, `bpr` super-blocks each (`matmul_entry` passes exactly
    /// `NC * bpr`; a short `x` leaves the missing columns empty, and they compute nothing).
    #[inline(always)]
    fn columns<const NC: usize>(x: &[BlockQ8_K], bpr: usize) -> [&[BlockQ8_K]; NC] {
        core::array::from_fn(|c| x.get(c * bpr..(c + 1) * bpr).unwrap_or(&[]))
    }

    /// `sum_k madd(maddubs(q[k], y_k), s[k])` over the eight 32-element vectors `y_k` of `b`:
    /// the integer dot of one unpacked super-block with one activation column.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot8(q: &[__m256i; 8], s: &[__m256i; 8], b: &BlockQ8_K) -> __m256i {
        let (yq, _) = b.qs.as_chunks::<32>();
        let mut sum = _mm256_setzero_si256();
        for ((q, s), y) in q.iter().zip(s).zip(yq) {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(*q, load32(y)), *s);
            sum = _mm256_add_epi32(sum, p);
        }
        sum
    }

    /// Q6_K: the row kernel's quants `q` (0..63, vector `4h + j` of half `h`) and scale
    /// vectors, once per (row, super-block); per column the `32 * sum(scale_g * bsum_g)`
    /// correction, the eight products, then the row kernel's FMA.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mm_q6_k_tf<const NC: usize>(
        w: &[BlockQ6_K],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_K],
        y: &mut [f32],
    ) {
        let cols = columns::<NC>(x, bpr);
        let (m4, m30) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
        for (r, row) in w.chunks_exact(bpr).take(rows).enumerate() {
            let mut acc = [_mm256_setzero_ps(); NC];
            for (i, a) in row.iter().enumerate() {
                prefetch_block(a);
                let scs = [i8x8_i16(&a.scales[..8]), i8x8_i16(&a.scales[8..])];
                let s16 = _mm256_cvtepi8_epi16(super::super::avx2::load16(&a.scales));
                let (ql, _) = a.ql.as_chunks::<32>();
                let (qh, _) = a.qh.as_chunks::<32>();
                let mut q = [_mm256_setzero_si256(); 8];
                let mut s = [_mm256_setzero_si256(); 8];
                for h in 0..2 {
                    let (l0, l1, hb) = (load32(&ql[2 * h]), load32(&ql[2 * h + 1]), load32(&qh[h]));
                    q[4 * h] = _mm256_or_si256(
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                    );
                    q[4 * h + 1] = _mm256_or_si256(
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                    );
                    q[4 * h + 2] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                        _mm256_and_si256(hb, m30),
                    );
                    q[4 * h + 3] = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                    );
                    for j in 0..4 {
                        s[4 * h + j] = _mm256_shuffle_epi8(scs[h], load_ctl(&BCAST_PAIRS[j]));
                    }
                }
                let dw = f16_le(a.d);
                for (acc, col) in acc.iter_mut().zip(&cols) {
                    let Some(b) = col.get(i) else { continue };
                    let corr = _mm256_madd_epi16(s16, load_bsums(b));
                    let isum = _mm256_sub_epi32(dot8(&q, &s, b), _mm256_slli_epi32::<5>(corr));
                    let d = _mm256_set1_ps(dw * b.d());
                    *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), *acc);
                }
            }
            store_cols::<NC>(hsum_cols(&acc), y, rows, r);
        }
    }

    /// Q4_K: the row kernel's nibbles (vector `2c` the low nibbles of 32-byte chunk `c`,
    /// `2c + 1` the high) and group scales once per (row, super-block); per column the
    /// eight products, the mins against `bsums`, then the row kernel's FMA and `fnmadd`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mm_q4_k_tf<const NC: usize>(
        w: &[BlockQ4_K],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_K],
        y: &mut [f32],
    ) {
        let cols = columns::<NC>(x, bpr);
        let nib = _mm256_set1_epi8(0x0f);
        for (r, row) in w.chunks_exact(bpr).take(rows).enumerate() {
            let mut acc = [_mm256_setzero_ps(); NC];
            for (i, a) in row.iter().enumerate() {
                prefetch_block(a);
                let (sc, mins) = scale_min_k4(&a.scales);
                let sc = u8x8_i16(sc);
                let mins = mins_pairs(mins);
                let (qs, _) = a.qs.as_chunks::<32>();
                let mut q = [_mm256_setzero_si256(); 8];
                let mut s = [_mm256_setzero_si256(); 8];
                for (c, qc) in qs.iter().enumerate() {
                    let v = load32(qc);
                    q[2 * c] = _mm256_and_si256(v, nib);
                    q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nib);
                    s[2 * c] = _mm256_shuffle_epi8(sc, load_ctl(&BCAST8[2 * c]));
                    s[2 * c + 1] = _mm256_shuffle_epi8(sc, load_ctl(&BCAST8[2 * c + 1]));
                }
                let (dw, dmw) = (f16_le(a.d), f16_le(a.dmin));
                for (acc, col) in acc.iter_mut().zip(&cols) {
                    let Some(b) = col.get(i) else { continue };
                    let isum = dot8(&q, &s, b);
                    let msum = _mm256_madd_epi16(mins, load_bsums(b));
                    let dy = b.d();
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * dy), _mm256_cvtepi32_ps(isum), *acc);
                    *acc =
                        _mm256_fnmadd_ps(_mm256_set1_ps(dmw * dy), _mm256_cvtepi32_ps(msum), *acc);
                }
            }
            store_cols::<NC>(hsum_cols(&acc), y, rows, r);
        }
    }
}
#[cfg(feature = "quant-k")]
pub(in crate::kernels::x86_64) use k::*;
