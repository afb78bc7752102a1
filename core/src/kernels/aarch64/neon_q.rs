//! NEON row kernels for the weight types behind features (Q5_0/Q5_1, the K-quants, IQ4_NL /
//! IQ4_XS) and the NEON Q8_K activation quantiser. They fill the matching slots of the NEON
//! tables in `neon.rs` (one line per type there); everything else about those tables (detection,
//! the `sdot` helper, the 32-wide types) lives in that file.
//!
//! # One shape for every type
//!
//! Every kernel turns a group of weights into signed bytes in registers and dots them with the
//! activation bytes through one multiply-accumulate, `$mla`: [`mla16`] (`smull`/`smull2`, then
//! `sadalp` into i32 lanes) in the plain NEON table, [`sdot16`] (`sdot`) in the dotprod table.
//! The kernels are written once, in `q_rows!`, and instantiated twice (modules `plain` and
//! `dot`), because `sdot` is an `asm!` line that must sit in a function compiled with the
//! `dotprod` feature; a generic helper could not be inlined into both. The weight bytes the
//! kernels build lie in -127..=113 (IQ4's table; the other types stay within -32..=31) and the
//! activations in -127..=127, so `smull`'s i16 products (|p| <= 16129) and `sdot`'s i32 sums
//! are exact, and so is every i32 lane below: each stays under 2^25 (the largest are Q6_K's,
//! 64 products of at most 32 * 127 times scales of at most 128, and IQ4_XS's, 64 products of
//! at most 127 * 127 times scales of at most 32).
//!
//! How each type becomes signed bytes (ggml's layouts; the `quant/` files describe them):
//! - **Q5_0 / Q5_1**: the two nibble halves as in Q4_0 ([`nibbles`]), and the fifth bits from
//!   the 32-bit `qh`: each `qh` byte is broadcast over 8 lanes (`dup`) and `cmtst` against the
//!   lane's bit (1, 2, .., 128) gives a full-byte mask, ANDed to 0x10 and ORed in. ggml's NEON
//!   path instead looks each `qh` byte up in a 256-entry u64 table (2 KiB); here the masks are
//!   made in registers (two `dup`s and a `cmtst` per half), so nothing is loaded but the block
//!   and no static table reaches the image. Which is faster on silicon was not measured. Q5_0
//!   subtracts 16; Q5_1 keeps 0..31 and adds `m * s` (the Q8_1 activation sum) as the Q4_1
//!   kernel does.
//! - **Q4_K / Q5_K**: eight 32-element groups with 6-bit scales and mins, unpacked once per
//!   super-block with three u32 mask-and-shift steps (the format's packing, written out in
//!   [`scale_min_k4`]). Each group's integer dot stays in four i32 lanes and is multiplied by
//!   its scale there (`mla` by scalar), so a super-block ends in one `scvtf` and one `fmla` by
//!   `d`: no horizontal add per group. The mins never meet the quants: `sum(min_g * bsum_j)`
//!   comes from the activation's 16-element sums (`saddlp` pairs them into the 32-element
//!   groups). Q5_K's fifth bits come from `qh` bit `2c` / `2c + 1` for chunk `c`; the two `qh`
//!   registers shift right by 2 per chunk, so the masks stay constants.
//! - **Q6_K**: per half, four `ql` and two `qh` registers give the eight 16-element groups
//!   with shifts and masks by constants only (`(qh & 3) << 4`, `(qh << 2) & 0x30`, `qh & 0x30`,
//!   `(qh >> 2) & 0x30`); then `- 32` makes them signed, so no `bsums` correction is needed.
//!   Scales are signed 8-bit, one per 16-element group, multiplied in the i32 lanes as above.
//! - **Q3_K**: low two bits shift out of two `qs` registers per half; the high bit of element
//!   `32k + l` is bit `k` of `hmask[l]`, taken from two `hmask` registers shifted right by one
//!   per group; `(low | high << 2) - 4` is the signed quant. The 16 6-bit scales are unpacked
//!   with u32 masks once per super-block ([`q3_scales`]).
//! - **Q2_K**: four 2-bit fields per byte, shifted out of four registers; scales (low
//!   nibbles) multiply in the i32 lanes and the mins (high nibbles) meet the `bsums` in
//!   widening multiply-adds (`smull`, `smlal`, `smlal2`). Its float tail is exactly the oracle's
//!   (`dall * isum - dmin * summs` per block, summed in block order), so this kernel is
//!   bit-identical to `vec_dot_q2_k_q8_k`.
//! - **IQ4_NL / IQ4_XS**: the nibbles index the 16-entry non-linear table with one `tbl`
//!   each; IQ4_XS's 6-bit group scales (`ls - 32`) multiply in the i32 lanes.
//!
//! Integer parts are exact. The float combination differs from the scalar oracles (which keep
//! eight f32 lanes, or one running sum) only in order: per super-block (or 32-block) one
//! `scvtf` of four i32 lanes and one `fmla` by the block's float scale, reduced across lanes at
//! the end of the row; `tests/tests/kernels_types.rs` checks every type on both tables against
//! its oracle within the derived f32 bound.
//!
//! # The Q8_K quantiser
//!
//! ggml's `quantize_row_q8_K_ref` rounds with `nearest_int` (add 1.5 * 2^23 and read the
//! mantissa), which is round-half-to-*even* for |v| < 2^22, not `roundf`'s half-away. So this
//! quantiser uses `fcvtns` (`vcvtnq_s32_f32`: nearest, ties to even), not the `fcvtas` of the
//! Q8_0/Q8_1 quantisers; the products `iscale * x` are the same f32 multiplies, so the quants
//! are byte-identical. The scale's sign comes from the *first* element of largest magnitude:
//! the maximum of `|x|` is found with `fmaxnm` (which, like the oracle's `>`, never picks a
//! NaN), then a scalar scan finds the first element with that magnitude. `bsums` are
//! `saddlv` over each 16 quants.
//!
//! # Timing
//!
//! These kernels were developed and tested under qemu-user, whose timings say nothing about
//! silicon, so no speed is claimed here; measure on an aarch64 machine (`bench/`) before
//! choosing between shapes on speed grounds.

use super::neon::{ld_u8, mla16, nibbles, sdot16};
// Which block types exist depends on the features; a glob keeps one import line for all.
#[allow(unused_imports)]
use crate::quant::*;
use core::arch::aarch64::*;

/// Safe entry points: the `#[target_feature]` kernels behind the tables.
macro_rules! entry {
    ($name:ident, $tf:path, $w:ty, $a:ty) => {
        pub(super) fn $name(w: &[$w], bpr: usize, x: &[$a], y: &mut [f32]) {
            // SAFETY: reachable only through `neon::KERNEL` / `neon::KERNEL_DOT`, which
            // `detect` / `detect_dotprod` hand out only when the CPU has NEON (and, for the
            // `_dot` entries, the dot-product extension).
            unsafe { $tf(w, bpr, x, y) }
        }
    };
}

#[cfg(feature = "quant-q5")]
entry!(q5_0_rows, plain::q5_0, BlockQ5_0, BlockQ8_0);
#[cfg(feature = "quant-q5")]
entry!(q5_0_rows_dot, dot::q5_0, BlockQ5_0, BlockQ8_0);
#[cfg(feature = "quant-k")]
entry!(q4_k_rows, plain::q4_k, BlockQ4_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q4_k_rows_dot, dot::q4_k, BlockQ4_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q6_k_rows, plain::q6_k, BlockQ6_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q6_k_rows_dot, dot::q6_k, BlockQ6_K, BlockQ8_K);
#[cfg(feature = "quant-q5")]
entry!(q5_1_rows, plain::q5_1, BlockQ5_1, BlockQ8_1);
#[cfg(feature = "quant-q5")]
entry!(q5_1_rows_dot, dot::q5_1, BlockQ5_1, BlockQ8_1);
#[cfg(feature = "quant-k")]
entry!(q5_k_rows, plain::q5_k, BlockQ5_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q5_k_rows_dot, dot::q5_k, BlockQ5_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q3_k_rows, plain::q3_k, BlockQ3_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q3_k_rows_dot, dot::q3_k, BlockQ3_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q2_k_rows, plain::q2_k, BlockQ2_K, BlockQ8_K);
#[cfg(feature = "quant-k")]
entry!(q2_k_rows_dot, dot::q2_k, BlockQ2_K, BlockQ8_K);
#[cfg(feature = "quant-iq4")]
entry!(iq4_nl_rows, plain::iq4_nl, BlockIQ4_NL, BlockQ8_0);
#[cfg(feature = "quant-iq4")]
entry!(iq4_nl_rows_dot, dot::iq4_nl, BlockIQ4_NL, BlockQ8_0);
#[cfg(feature = "quant-iq4")]
entry!(iq4_xs_rows, plain::iq4_xs, BlockIQ4_XS, BlockQ8_K);
#[cfg(feature = "quant-iq4")]
entry!(iq4_xs_rows_dot, dot::iq4_xs, BlockIQ4_XS, BlockQ8_K);

/// NEON Q8_K quantiser (byte-identical to `quant::q8_k::quantize_row_q8_k` for finite input).
#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
pub(super) fn quantize_q8_k(x: &[f32], y: &mut [BlockQ8_K]) {
    // SAFETY: reachable only through `neon::KERNEL` / `neon::KERNEL_DOT`, handed out only when
    // the CPU has NEON.
    unsafe { quantize_q8_k_tf(x, y) }
}

// ---- loads and unpacking shared by both tables -------------------------------------------------

/// 16 bytes as signed lanes.
#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
#[target_feature(enable = "neon")]
#[inline]
fn ls8(a: &[u8; 16]) -> int8x16_t {
    vreinterpretq_s8_u8(ld_u8(a))
}

/// The 32 quants of a 32-element activation block as (elements 0..16, elements 16..32).
#[cfg(any(feature = "quant-q5", feature = "quant-iq4"))]
#[target_feature(enable = "neon")]
#[inline]
fn s8x2(a: &[u8; 32]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `a` is 32 readable bytes; `ld1` has no alignment requirement.
    let v = unsafe { vld1q_u8_x2(a.as_ptr()) };
    (vreinterpretq_s8_u8(v.0), vreinterpretq_s8_u8(v.1))
}

/// The fifth bits of a Q5_0/Q5_1 block as 0x10 bytes: (elements 0..16, elements 16..32).
/// Bit `j` of the little-endian `qh` belongs to element `j`.
#[cfg(feature = "quant-q5")]
#[target_feature(enable = "neon")]
#[inline]
fn q5_high(qh: &[u8; 4]) -> (int8x16_t, int8x16_t) {
    const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bits = ld_u8(&BITS);
    let x10 = vdupq_n_u8(0x10);
    let lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    let hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    (
        vreinterpretq_s8_u8(vandq_u8(vtstq_u8(lo, bits), x10)),
        vreinterpretq_s8_u8(vandq_u8(vtstq_u8(hi, bits), x10)),
    )
}

/// The 8 scales and 8 mins (6 bits each) of a Q4_K/Q5_K super-block.
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits and bytes 4..8 mins 0..4; bytes 8..12 hold
/// the low nibbles of scales 4..8 (low half) and mins 4..8 (high half), whose top two bits are
/// the top two bits of bytes 0..4 (scales) and 4..8 (mins). As u32 words that is one
/// mask-and-shift per four values.
#[cfg(feature = "quant-k")]
#[inline]
fn scale_min_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let a2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_hi = (a2 & LOW4) | (((a0 >> 6) & TOP2) << 4);
    let mn_hi = ((a2 >> 4) & LOW4) | (((a1 >> 6) & TOP2) << 4);
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    sc[..4].copy_from_slice(&(a0 & LOW6).to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&(a1 & LOW6).to_le_bytes());
    mn[4..].copy_from_slice(&mn_hi.to_le_bytes());
    (sc, mn)
}

/// `sum_j bsums[j] * mins[j / 2]` over a Q8_K block's 16 group sums (Q4_K/Q5_K: one min per
/// 32 elements). `saddlp` adds the pairs into i32 (exact for any i16), then two i32
/// multiply-adds; |bsum| <= 32768 and min < 64 keep every step far inside i32.
#[cfg(feature = "quant-k")]
#[target_feature(enable = "neon")]
#[inline]
fn bsums_dot_mins8(bsums: &[u8; 32], mins: &[u8; 8]) -> i32 {
    let (b, _) = bsums.as_chunks::<16>();
    let p0 = vpaddlq_s16(vreinterpretq_s16_u8(ld_u8(&b[0])));
    let p1 = vpaddlq_s16(vreinterpretq_s16_u8(ld_u8(&b[1])));
    // SAFETY: `mins` is 8 readable bytes; `ld1` has no alignment requirement.
    let m = vmovl_u8(unsafe { vld1_u8(mins.as_ptr()) });
    let m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)));
    let m1 = vreinterpretq_s32_u32(vmovl_high_u16(m));
    vaddvq_s32(vmlaq_s32(vmulq_s32(p0, m0), p1, m1))
}

/// The float scale of a Q8_K block.
#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
#[inline]
fn d8k(b: &BlockQ8_K) -> f32 {
    f32::from_le_bytes(b.d)
}

/// The 16 scales of a Q3_K super-block, `- 32` applied (-32..=31).
///
/// Scale `j`'s low nibble is the low (j < 8) or high (j >= 8) nibble of byte `j % 8`; its top
/// two bits are bits `2 (j / 4)` and up of byte `8 + j % 4`. As u32 words: four mask-and-shift
/// steps, one per four scales.
#[cfg(feature = "quant-k")]
#[inline]
fn q3_scales(s: &[u8; 12]) -> [i8; 16] {
    const LOW4: u32 = 0x0f0f_0f0f;
    const TOP2: u32 = 0x0303_0303;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let hi = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let words = [
        (a0 & LOW4) | ((hi & TOP2) << 4),
        (a1 & LOW4) | (((hi >> 2) & TOP2) << 4),
        ((a0 >> 4) & LOW4) | (((hi >> 4) & TOP2) << 4),
        ((a1 >> 4) & LOW4) | (((hi >> 6) & TOP2) << 4),
    ];
    let mut out = [0i8; 16];
    for (o4, w) in out.chunks_exact_mut(4).zip(words) {
        for (o, b) in o4.iter_mut().zip(w.to_le_bytes()) {
            *o = b as i8 - 32;
        }
    }
    out
}

/// `sum_j bsums[j] * (scales[j] >> 4)` for Q2_K (one 4-bit min per 16 elements): the mins
/// widen to i16 and meet the sums in `smull`/`smlal2`, exact (|bsum| <= 32768, min <= 15).
#[cfg(feature = "quant-k")]
#[target_feature(enable = "neon")]
#[inline]
fn bsums_dot_mins16(bsums: &[u8; 32], scales: &[u8; 16]) -> i32 {
    let (b, _) = bsums.as_chunks::<16>();
    let b0 = vreinterpretq_s16_u8(ld_u8(&b[0]));
    let b1 = vreinterpretq_s16_u8(ld_u8(&b[1]));
    let m = vshrq_n_u8::<4>(ld_u8(scales));
    let m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
    let m1 = vreinterpretq_s16_u16(vmovl_high_u8(m));
    let s = vmull_s16(vget_low_s16(b0), vget_low_s16(m0));
    let s = vmlal_high_s16(s, b0, m0);
    let s = vmlal_s16(s, vget_low_s16(b1), vget_low_s16(m1));
    vaddvq_s32(vmlal_high_s16(s, b1, m1))
}

/// The IQ4 non-linear levels as a `tbl` table.
#[cfg(feature = "quant-iq4")]
#[target_feature(enable = "neon")]
#[inline]
fn iq4_table() -> int8x16_t {
    const T: [u8; 16] = {
        let mut t = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            t[i] = crate::quant::iq4::KVALUES_IQ4NL[i] as u8;
            i += 1;
        }
        t
    };
    ls8(&T)
}

/// The 32 levels of 16 IQ4 index bytes: (elements 0..16, elements 16..32).
#[cfg(feature = "quant-iq4")]
#[target_feature(enable = "neon")]
#[inline]
fn iq4_levels(t: int8x16_t, qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let (lo, hi) = nibbles(qs);
    (
        vqtbl1q_s8(t, vreinterpretq_u8_s8(lo)),
        vqtbl1q_s8(t, vreinterpretq_u8_s8(hi)),
    )
}

/// The 6-bit scale of IQ4_XS group `ib` (0..8), `- 32` applied.
#[cfg(feature = "quant-iq4")]
#[inline]
fn iq4_xs_scale(b: &BlockIQ4_XS, ib: usize) -> i32 {
    let h = u16::from_le_bytes(b.scales_h) as i32;
    let l = b.scales_l.get(ib / 2).copied().unwrap_or(0) as i32;
    (((l >> (4 * (ib % 2))) & 0x0f) | (((h >> (2 * ib)) & 3) << 4)) - 32
}

// ---- the row kernels, once per multiply-accumulate ---------------------------------------------

/// The row kernels with `$mla` as the 16-lane i8 multiply-accumulate, in module `$m`.
macro_rules! q_rows {
    ($m:ident, $feat:literal, $mla:ident) => {
        #[allow(unused_imports)]
        mod $m {
            use super::*;

            /// Q5_0 rows against Q8_0: `sum_b d_w d_x sum((q - 16) q_x)`.
            #[cfg(feature = "quant-q5")]
            #[target_feature(enable = $feat)]
            pub(super) fn q5_0(w: &[BlockQ5_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
                let x16 = vdupq_n_s8(16);
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    for (a, b) in row.iter().zip(x) {
                        let (lo, hi) = nibbles(&a.qs);
                        let (hl, hh) = q5_high(&a.qh);
                        let (x0, x1) = s8x2(&b.qs);
                        let q0 = vsubq_s8(vorrq_s8(lo, hl), x16);
                        let q1 = vsubq_s8(vorrq_s8(hi, hh), x16);
                        let s = $mla($mla(vdupq_n_s32(0), q0, x0), q1, x1);
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(a.d) * f16_le(b.d));
                    }
                    *o = vaddvq_f32(acc);
                }
            }

            /// Q4_K rows against Q8_K: `sum_b d d_x sum_g sc_g dot_g - dmin d_x sum_j m bsum_j`.
            #[cfg(feature = "quant-k")]
            #[target_feature(enable = $feat)]
            pub(super) fn q4_k(w: &[BlockQ4_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    let mut mins = 0.0f32;
                    for (a, b) in row.iter().zip(x) {
                        let (sc, mn) = scale_min_k4(&a.scales);
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (qs, _) = a.qs.as_chunks::<16>();
                        let mut isum = vdupq_n_s32(0);
                        // Chunk c: bytes 32c..32c+32; low nibbles are group 2c (elements
                        // 64c..64c+32), high nibbles group 2c+1.
                        for ((q2, x4), s2) in qs
                            .chunks_exact(2)
                            .zip(q8.chunks_exact(4))
                            .zip(sc.chunks_exact(2))
                        {
                            let (l0, h0) = nibbles(&q2[0]);
                            let (l1, h1) = nibbles(&q2[1]);
                            let p = $mla($mla(vdupq_n_s32(0), l0, ls8(&x4[0])), l1, ls8(&x4[1]));
                            isum = vmlaq_n_s32(isum, p, s2[0] as i32);
                            let p = $mla($mla(vdupq_n_s32(0), h0, ls8(&x4[2])), h1, ls8(&x4[3]));
                            isum = vmlaq_n_s32(isum, p, s2[1] as i32);
                        }
                        let dx = d8k(b);
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(a.d) * dx);
                        mins += (f16_le(a.dmin) * dx) * bsums_dot_mins8(&b.bsums, &mn) as f32;
                    }
                    *o = vaddvq_f32(acc) - mins;
                }
            }

            /// Q5_1 rows against Q8_1: `sum_b d_w d_x sum(q q_x) + m_w s_x`.
            #[cfg(feature = "quant-q5")]
            #[target_feature(enable = $feat)]
            pub(super) fn q5_1(w: &[BlockQ5_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    let mut ms = 0.0f32;
                    for (a, b) in row.iter().zip(x) {
                        let (lo, hi) = nibbles(&a.qs);
                        let (hl, hh) = q5_high(&a.qh);
                        let (x0, x1) = s8x2(&b.qs);
                        let s = $mla(vdupq_n_s32(0), vorrq_s8(lo, hl), x0);
                        let s = $mla(s, vorrq_s8(hi, hh), x1);
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(a.d) * f16_le(b.d));
                        ms += f16_le(a.m) * f16_le(b.s);
                    }
                    *o = vaddvq_f32(acc) + ms;
                }
            }

            /// Q5_K rows against Q8_K: Q4_K with a fifth bit per quant from `qh`.
            #[cfg(feature = "quant-k")]
            #[target_feature(enable = $feat)]
            pub(super) fn q5_k(w: &[BlockQ5_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                let m15 = vdupq_n_u8(0x0f);
                let b0 = vdupq_n_u8(1);
                let b1 = vdupq_n_u8(2);
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    let mut mins = 0.0f32;
                    for (a, b) in row.iter().zip(x) {
                        let (sc, mn) = scale_min_k4(&a.scales);
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (qs, _) = a.qs.as_chunks::<16>();
                        let (qh, _) = a.qh.as_chunks::<16>();
                        let (mut h0, mut h1) = (ld_u8(&qh[0]), ld_u8(&qh[1]));
                        let mut isum = vdupq_n_s32(0);
                        // Chunk c: low nibbles are group 2c (fifth bit: bit 2c of qh), high
                        // nibbles group 2c+1 (bit 2c+1); qh shifts right by 2 per chunk.
                        for ((q2, x4), s2) in qs
                            .chunks_exact(2)
                            .zip(q8.chunks_exact(4))
                            .zip(sc.chunks_exact(2))
                        {
                            let (v0, v1) = (ld_u8(&q2[0]), ld_u8(&q2[1]));
                            let l0 = vorrq_u8(vandq_u8(v0, m15), vshlq_n_u8::<4>(vandq_u8(h0, b0)));
                            let l1 = vorrq_u8(vandq_u8(v1, m15), vshlq_n_u8::<4>(vandq_u8(h1, b0)));
                            let u0 =
                                vorrq_u8(vshrq_n_u8::<4>(v0), vshlq_n_u8::<3>(vandq_u8(h0, b1)));
                            let u1 =
                                vorrq_u8(vshrq_n_u8::<4>(v1), vshlq_n_u8::<3>(vandq_u8(h1, b1)));
                            h0 = vshrq_n_u8::<2>(h0);
                            h1 = vshrq_n_u8::<2>(h1);
                            let p = $mla(vdupq_n_s32(0), vreinterpretq_s8_u8(l0), ls8(&x4[0]));
                            let p = $mla(p, vreinterpretq_s8_u8(l1), ls8(&x4[1]));
                            isum = vmlaq_n_s32(isum, p, s2[0] as i32);
                            let p = $mla(vdupq_n_s32(0), vreinterpretq_s8_u8(u0), ls8(&x4[2]));
                            let p = $mla(p, vreinterpretq_s8_u8(u1), ls8(&x4[3]));
                            isum = vmlaq_n_s32(isum, p, s2[1] as i32);
                        }
                        let dx = d8k(b);
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(a.d) * dx);
                        mins += (f16_le(a.dmin) * dx) * bsums_dot_mins8(&b.bsums, &mn) as f32;
                    }
                    *o = vaddvq_f32(acc) - mins;
                }
            }

            /// Q3_K rows against Q8_K: `sum_b d d_x sum_g (sc_g - 32) sum(q q_x)`, q in -4..4.
            #[cfg(feature = "quant-k")]
            #[target_feature(enable = $feat)]
            pub(super) fn q3_k(w: &[BlockQ3_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                let m3 = vdupq_n_u8(3);
                let one = vdupq_n_u8(1);
                let x4 = vdupq_n_s8(4);
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    for (a, b) in row.iter().zip(x) {
                        let sc = q3_scales(&a.scales);
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (qs, _) = a.qs.as_chunks::<16>();
                        let (hm, _) = a.hmask.as_chunks::<16>();
                        // hmask bit k (element 32k + l) is taken from bit 0 after k shifts.
                        let (mut m0, mut m1) = (ld_u8(&hm[0]), ld_u8(&hm[1]));
                        let mut isum = vdupq_n_s32(0);
                        // Half h: qs[32h..], elements 128h..; shift s: elements 128h + 32s..,
                        // groups 8h + 2s and 8h + 2s + 1.
                        for ((q2, x8), s8) in qs
                            .chunks_exact(2)
                            .zip(q8.chunks_exact(8))
                            .zip(sc.chunks_exact(8))
                        {
                            let (mut v0, mut v1) = (ld_u8(&q2[0]), ld_u8(&q2[1]));
                            for (x2, s2) in x8.chunks_exact(2).zip(s8.chunks_exact(2)) {
                                let w0 =
                                    vorrq_u8(vandq_u8(v0, m3), vshlq_n_u8::<2>(vandq_u8(m0, one)));
                                let w1 =
                                    vorrq_u8(vandq_u8(v1, m3), vshlq_n_u8::<2>(vandq_u8(m1, one)));
                                let w0 = vsubq_s8(vreinterpretq_s8_u8(w0), x4);
                                let w1 = vsubq_s8(vreinterpretq_s8_u8(w1), x4);
                                isum = vmlaq_n_s32(
                                    isum,
                                    $mla(vdupq_n_s32(0), w0, ls8(&x2[0])),
                                    s2[0] as i32,
                                );
                                isum = vmlaq_n_s32(
                                    isum,
                                    $mla(vdupq_n_s32(0), w1, ls8(&x2[1])),
                                    s2[1] as i32,
                                );
                                v0 = vshrq_n_u8::<2>(v0);
                                v1 = vshrq_n_u8::<2>(v1);
                                m0 = vshrq_n_u8::<1>(m0);
                                m1 = vshrq_n_u8::<1>(m1);
                            }
                        }
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(a.d) * d8k(b));
                    }
                    *o = vaddvq_f32(acc);
                }
            }

            /// Q2_K rows against Q8_K: per block `dall * sum_g sc_g dot_g - dmin * summs`,
            /// accumulated in block order as the oracle does (bit-identical to it).
            #[cfg(feature = "quant-k")]
            #[target_feature(enable = $feat)]
            pub(super) fn q2_k(w: &[BlockQ2_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                let m3 = vdupq_n_u8(3);
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut sumf = 0.0f32;
                    for (a, b) in row.iter().zip(x) {
                        let summs = bsums_dot_mins16(&b.bsums, &a.scales);
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (qs, _) = a.qs.as_chunks::<16>();
                        let mut isum = vdupq_n_s32(0);
                        // Half h: qs[32h..]; shift 2s gives elements 128h + 32s.., groups
                        // 8h + 2s and 8h + 2s + 1.
                        for ((q2, x8), s8) in qs
                            .chunks_exact(2)
                            .zip(q8.chunks_exact(8))
                            .zip(a.scales.chunks_exact(8))
                        {
                            let (mut v0, mut v1) = (ld_u8(&q2[0]), ld_u8(&q2[1]));
                            for (x2, s2) in x8.chunks_exact(2).zip(s8.chunks_exact(2)) {
                                let w0 = vreinterpretq_s8_u8(vandq_u8(v0, m3));
                                let w1 = vreinterpretq_s8_u8(vandq_u8(v1, m3));
                                let p0 = $mla(vdupq_n_s32(0), w0, ls8(&x2[0]));
                                let p1 = $mla(vdupq_n_s32(0), w1, ls8(&x2[1]));
                                isum = vmlaq_n_s32(isum, p0, (s2[0] & 0x0f) as i32);
                                isum = vmlaq_n_s32(isum, p1, (s2[1] & 0x0f) as i32);
                                v0 = vshrq_n_u8::<2>(v0);
                                v1 = vshrq_n_u8::<2>(v1);
                            }
                        }
                        let dx = d8k(b);
                        let (dall, dmin) = (dx * f16_le(a.d), dx * f16_le(a.dmin));
                        sumf += dall * vaddvq_s32(isum) as f32 - dmin * summs as f32;
                    }
                    *o = sumf;
                }
            }

            /// IQ4_NL rows against Q8_0: `sum_b d_w d_x sum(kvalues[q] q_x)`.
            #[cfg(feature = "quant-iq4")]
            #[target_feature(enable = $feat)]
            pub(super) fn iq4_nl(w: &[BlockIQ4_NL], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
                let t = iq4_table();
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    for (a, b) in row.iter().zip(x) {
                        let (w0, w1) = iq4_levels(t, &a.qs);
                        let (x0, x1) = s8x2(&b.qs);
                        let s = $mla($mla(vdupq_n_s32(0), w0, x0), w1, x1);
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(b.d) * f16_le(a.d));
                    }
                    *o = vaddvq_f32(acc);
                }
            }

            /// IQ4_XS rows against Q8_K: `sum_b d d_x sum_g (ls_g - 32) sum(kvalues[q] q_x)`.
            #[cfg(feature = "quant-iq4")]
            #[target_feature(enable = $feat)]
            pub(super) fn iq4_xs(w: &[BlockIQ4_XS], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                let t = iq4_table();
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    for (a, b) in row.iter().zip(x) {
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (qs, _) = a.qs.as_chunks::<16>();
                        let mut isum = vdupq_n_s32(0);
                        for (ib, (q, x2)) in qs.iter().zip(q8.chunks_exact(2)).enumerate() {
                            let (w0, w1) = iq4_levels(t, q);
                            let p = $mla($mla(vdupq_n_s32(0), w0, ls8(&x2[0])), w1, ls8(&x2[1]));
                            isum = vmlaq_n_s32(isum, p, iq4_xs_scale(a, ib));
                        }
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(a.d) * d8k(b));
                    }
                    *o = vaddvq_f32(acc);
                }
            }

            /// Q6_K rows against Q8_K: `sum_b d d_x sum_g sc_g sum((q - 32) q_x)`.
            #[cfg(feature = "quant-k")]
            #[target_feature(enable = $feat)]
            pub(super) fn q6_k(w: &[BlockQ6_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
                let m15 = vdupq_n_u8(0x0f);
                let m3 = vdupq_n_u8(0x03);
                let m30 = vdupq_n_u8(0x30);
                let x32 = vdupq_n_s8(32);
                for (row, o) in w.chunks_exact(bpr).zip(y) {
                    let mut acc = vdupq_n_f32(0.0);
                    for (a, b) in row.iter().zip(x) {
                        let (q8, _) = b.qs.as_chunks::<16>();
                        let (ql, _) = a.ql.as_chunks::<16>();
                        let (qh, _) = a.qh.as_chunks::<16>();
                        let mut isum = vdupq_n_s32(0);
                        // Half h: ql[64h..], qh[32h..], elements 128h.., scales 8h...
                        for (((l4, h2), x8), s8) in ql
                            .chunks_exact(4)
                            .zip(qh.chunks_exact(2))
                            .zip(q8.chunks_exact(8))
                            .zip(a.scales.chunks_exact(8))
                        {
                            let (l0, l1, l2, l3) =
                                (ld_u8(&l4[0]), ld_u8(&l4[1]), ld_u8(&l4[2]), ld_u8(&l4[3]));
                            let (h0, h1) = (ld_u8(&h2[0]), ld_u8(&h2[1]));
                            // The eight 16-element groups of this half, in element order.
                            let q = [
                                vorrq_u8(vandq_u8(l0, m15), vshlq_n_u8::<4>(vandq_u8(h0, m3))),
                                vorrq_u8(vandq_u8(l1, m15), vshlq_n_u8::<4>(vandq_u8(h1, m3))),
                                vorrq_u8(vandq_u8(l2, m15), vandq_u8(vshlq_n_u8::<2>(h0), m30)),
                                vorrq_u8(vandq_u8(l3, m15), vandq_u8(vshlq_n_u8::<2>(h1), m30)),
                                vorrq_u8(vshrq_n_u8::<4>(l0), vandq_u8(h0, m30)),
                                vorrq_u8(vshrq_n_u8::<4>(l1), vandq_u8(h1, m30)),
                                vorrq_u8(vshrq_n_u8::<4>(l2), vandq_u8(vshrq_n_u8::<2>(h0), m30)),
                                vorrq_u8(vshrq_n_u8::<4>(l3), vandq_u8(vshrq_n_u8::<2>(h1), m30)),
                            ];
                            for ((qv, xv), &s) in q.iter().zip(x8).zip(s8) {
                                let qv = vsubq_s8(vreinterpretq_s8_u8(*qv), x32);
                                let p = $mla(vdupq_n_s32(0), qv, ls8(xv));
                                isum = vmlaq_n_s32(isum, p, s as i8 as i32);
                            }
                        }
                        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(a.d) * d8k(b));
                    }
                    *o = vaddvq_f32(acc);
                }
            }
        }
    };
}

q_rows!(plain, "neon", mla16);
q_rows!(dot, "neon,dotprod", sdot16);

// ---- the Q8_K activation quantiser -------------------------------------------------------------

#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
#[target_feature(enable = "neon")]
fn quantize_q8_k_tf(x: &[f32], y: &mut [BlockQ8_K]) {
    let (xb, _) = x.as_chunks::<QK_K>();
    for (c, b) in xb.iter().zip(y) {
        let (x4, _) = c.as_chunks::<4>();
        let mut m = vdupq_n_f32(0.0);
        for v in x4 {
            // SAFETY: `v` is 4 readable f32s; no alignment requirement.
            m = vmaxnmq_f32(m, vabsq_f32(unsafe { vld1q_f32(v.as_ptr()) }));
        }
        let amax = vmaxnmvq_f32(m);
        if amax == 0.0 {
            *b = BlockQ8_K::ZERO;
            continue;
        }
        // The oracle keeps the first element whose magnitude beats all before it: the first
        // one with the largest magnitude.
        let abits = amax.to_bits();
        let max = c
            .iter()
            .copied()
            .find(|v| v.to_bits() & 0x7fff_ffff == abits)
            .unwrap_or(amax);
        let iscale = -127.0f32 / max;
        let (q16, _) = b.qs.as_chunks_mut::<16>();
        let mut sums = [0i16; 16];
        for ((xs, q), s) in x4.chunks_exact(4).zip(q16).zip(&mut sums) {
            let mut qi = [vdupq_n_s32(0); 4];
            for (qv, v) in qi.iter_mut().zip(xs) {
                // SAFETY: `v` is 4 readable f32s; no alignment requirement.
                let xv = unsafe { vld1q_f32(v.as_ptr()) };
                // fcvtns: nearest, ties to even (= nearest_int), then ggml's clamp at 127.
                *qv = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(xv, iscale)), vdupq_n_s32(127));
            }
            let h0 = vcombine_s16(vqmovn_s32(qi[0]), vqmovn_s32(qi[1]));
            let h1 = vcombine_s16(vqmovn_s32(qi[2]), vqmovn_s32(qi[3]));
            let bytes = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
            // SAFETY: `q` is 16 writable bytes; `st1` has no alignment requirement.
            unsafe { vst1q_s8(q.as_mut_ptr().cast(), bytes) };
            *s = vaddlvq_s8(bytes);
        }
        for (o, s) in b.bsums.chunks_exact_mut(2).zip(sums) {
            o.copy_from_slice(&s.to_le_bytes());
        }
        b.d = (1.0f32 / iscale).to_le_bytes();
    }
}
