//! AVX2 + FMA + F16C kernels (Intel Haswell, AMD Zen 1 and later).
//!
//! Quantised dots follow llama.cpp's AVX2 path: unpack 32 nibbles into 32 bytes,
//! `vpmaddubsw` (u8 x i8 -> pairs of i16) then `vpmaddwd` by ones (-> 8 x i32), convert and
//! FMA with the block's scale `d_w * d_x`. Signed weights (Q4_0 after `- 8`, Q8_0) use the
//! sign trick: `|w| * (x * sign(w))`. That is exact as long as `x != -128`, which the Q8
//! quantisers guarantee (`|round(x / d)| <= 127`); the `i16` pair sums cannot saturate
//! (`2 * 128 * 127 < 32767`).
//!
//! Helpers carry the same `#[target_feature]` as the entry points so that the intrinsics in
//! them are safe calls; they are private and only reachable from the entries, which are only
//! reachable through `KERNEL`. Two rows are computed per pass so the activation block is
//! loaded once for both and two independent FMA chains hide each other's latency.
//!
//! Prompt batches take the blocked matmuls at the end of this file (`matmul_q4_1`: one
//! weight row by up to 8 tokens per pass, each output bit-identical to the matvec's); those of
//! Q5_0, Q6_K and Q4_K (`avx2_mm.rs`) run on the same driver (`matmul_entry`, `by_cols!`).

#[cfg(any(feature = "quant-q5", feature = "quant-k"))]
use super::avx2_mm;
#[cfg(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4"))]
use super::avx2_q;
use super::prefetch_side;
use crate::kernels::{portable, Isa, Kernel, Side, SideRows};
use crate::quant::{f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType, QK};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

// With every quant feature on, this table overrides every slot; with fewer, the portable
// table fills the rest (and stays the documented starting point of every ISA table).
#[allow(clippy::needless_update)]
static KERNEL: Kernel = Kernel {
    isa: Isa::Avx2,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q8_0: q8_0_rows,
    f16: f16_rows,
    bf16: bf16_rows,
    f32: f32_rows,
    f16_add: f16_add_rows,
    bf16_add: bf16_add_rows,
    f32_add: f32_add_rows,
    q8_0_add: q8_0_add_rows,
    quantize_q8_0,
    quantize_q8_1,
    attn_scores: super::avx2_attn::scores,
    attn_wsum: super::avx2_attn::wsum,
    side: Some(SideRows {
        q4_0: q4_0_rows_side,
        q4_1: q4_1_rows_side,
        q8_0: q8_0_rows_side,
    }),
    mm_q4_0: Some((matmul_q4_0, MM_COLS)),
    mm_q4_1: Some((matmul_q4_1, MM_COLS)),
    mm_q8_0: Some((matmul_q8_0, MM_COLS)),
    #[cfg(feature = "quant-q5")]
    mm_q5_0: Some((avx2_mm::matmul_q5_0, MM_COLS)),
    #[cfg(feature = "quant-q5")]
    mm_q5_1: Some((avx2_mm::matmul_q5_1, MM_COLS)),
    #[cfg(feature = "quant-k")]
    mm_q4_k: Some((avx2_mm::matmul_q4_k, MM_COLS)),
    #[cfg(feature = "quant-k")]
    mm_q6_k: Some((avx2_mm::matmul_q6_k, MM_COLS)),
    mm_float: Some(matmul_float),
    mm_float_add: Some(matmul_float_add),
    mm_q8_0_add: Some(matmul_q8_0_add),
    #[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
    quantize_q8_k: avx2_q::quantize_q8_k,
    #[cfg(feature = "quant-q5")]
    q5_0: avx2_q::q5_0_rows,
    #[cfg(feature = "quant-q5")]
    q5_1: avx2_q::q5_1_rows,
    #[cfg(feature = "quant-k")]
    q4_k: avx2_q::q4_k_rows,
    #[cfg(feature = "quant-k")]
    q6_k: avx2_q::q6_k_rows,
    #[cfg(feature = "quant-k")]
    q2_k: avx2_q::q2_k_rows,
    #[cfg(feature = "quant-k")]
    q3_k: avx2_q::q3_k_rows,
    #[cfg(feature = "quant-k")]
    q5_k: avx2_q::q5_k_rows,
    #[cfg(feature = "quant-iq4")]
    iq4_nl: avx2_q::iq4_nl_rows,
    #[cfg(feature = "quant-iq4")]
    iq4_xs: avx2_q::iq4_xs_rows,
    ..portable::KERNEL
};

/// The AVX2 table if this CPU and OS support AVX2, FMA and F16C.
pub fn detect() -> Option<&'static Kernel> {
    super::features().avx2.then_some(&KERNEL)
}

// ---- entry points: the only places that enter `#[target_feature]` code ----------------------

macro_rules! entry {
    ($name:ident, $tf:ident, ($($a:ident: $t:ty),*)) => {
        pub(super) fn $name($($a: $t),*) {
            // SAFETY: this function is reachable only through `KERNEL` (handed out by `detect`
            // after checking AVX2+FMA+F16C and OS YMM support) or through the AVX-512 table,
            // whose `detect` requires the same features; so the CPU runs `$tf`'s instructions.
            unsafe { $tf($($a),*) }
        }
    };
}

entry!(q4_0_rows_side, q4_0_rows_tf, (w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>));
entry!(q4_1_rows_side, q4_1_rows_tf, (w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32], side: Side<'_>));
entry!(q8_0_rows_side, q8_0_rows_tf, (w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>));
entry!(f16_rows, f16_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(bf16_rows, bf16_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(f32_rows, f32_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(f16_add_rows, f16_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(bf16_add_rows, bf16_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(f32_add_rows, f32_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(q8_0_add_rows, q8_0_add_rows_tf, (w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(quantize_q8_0, quantize_q8_0_tf, (x: &[f32], y: &mut [BlockQ8_0]));
entry!(quantize_q8_1, quantize_q8_1_tf, (x: &[f32], y: &mut [BlockQ8_1]));

/// The plain row entries: the side-aware ones with nothing on the side.
macro_rules! no_side {
    ($name:ident, $side:ident, $w:ty, $a:ty) => {
        pub(super) fn $name(w: &[$w], bpr: usize, x: &[$a], y: &mut [f32]) {
            $side(w, bpr, x, y, Side::NONE)
        }
    };
}

no_side!(q4_0_rows, q4_0_rows_side, BlockQ4_0, BlockQ8_0);
no_side!(q4_1_rows, q4_1_rows_side, BlockQ4_1, BlockQ8_1);
no_side!(q8_0_rows, q8_0_rows_side, BlockQ8_0, BlockQ8_0);

// ---- loads -----------------------------------------------------------------------------------

#[inline(always)]
pub(super) fn load16(a: &[u8; 16]) -> __m128i {
    // SAFETY: `a` is 16 readable bytes; `loadu` has no alignment requirement; SSE2 is
    // part of the x86_64 baseline.
    unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load32(a: &[u8; 32]) -> __m256i {
    // SAFETY: `a` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn load_ps(a: &[f32; 8]) -> __m256 {
    // SAFETY: `a` is 8 readable f32s; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn load_ps_bytes(a: &[u8; 32]) -> __m256 {
    // SAFETY: `a` is 32 readable bytes (8 little-endian f32); `loadu` accepts any alignment
    // and every bit pattern is a valid f32.
    unsafe { _mm256_loadu_ps(a.as_ptr().cast()) }
}

/// Bytes ahead of the block being read that the matvecs prefetch into L2 (`PREFETCH`) and L1
/// (`PREFETCH_L1`): the two-level scheme of `avx512::PREFETCH`, whose doc has the figures.
const PREFETCH: usize = 4096;
/// See [`PREFETCH`].
const PREFETCH_L1: usize = 256;

/// Hint the cache to fetch the line `PREFETCH` bytes past `b` into L2 and the line
/// `PREFETCH_L1` bytes past it into L1.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn prefetch_ahead<T>(b: &T) {
    // `wrapping_add`: the address may lie past the weights; a prefetch never faults or reads
    // architecturally, so no safety condition applies to the pointer.
    let p = (b as *const T).cast::<u8>();
    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(PREFETCH).cast());
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_L1).cast());
}

// ---- small helpers ---------------------------------------------------------------------------

/// 32 nibbles -> 32 bytes in element order: low nibbles (elements 0..16) then high (16..32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn nibbles(qs: &[u8; 16]) -> __m256i {
    let t = load16(qs);
    let v = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(v, _mm256_set1_epi8(0x0f))
}

/// u8 x i8 -> 8 x i32 sums of 4 products each.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot_u8i8(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

/// i8 x i8 via the sign trick (exact when `b` has no -128).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn dot_i8i8(a: __m256i, b: __m256i) -> __m256i {
    dot_u8i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a))
}

/// `f16(a) * f16(b)` broadcast to 8 lanes (exact: 11-bit x 11-bit significands fit f32).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn scale2(a: [u8; 2], b: [u8; 2]) -> __m256 {
    let bits = u16::from_le_bytes(a) as i32 | ((u16::from_le_bytes(b) as i32) << 16);
    let f = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    _mm256_broadcastss_ps(_mm_mul_ss(f, _mm_movehdup_ps(f)))
}

/// For a Q4_1 x Q8_1 pair: lane 0 = `d_w d_x`, lane 1 = `m_w s_x`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn scales_q4_1(a: &BlockQ4_1, b: &BlockQ8_1) -> __m128 {
    let w = u32::from_le_bytes([a.d[0], a.d[1], a.m[0], a.m[1]]) as u64;
    let x = u32::from_le_bytes([b.d[0], b.d[1], b.s[0], b.s[1]]) as u64;
    let f = _mm_cvtph_ps(_mm_cvtsi64_si128((w | (x << 32)) as i64)); // [dw, mw, dx, sx]
    _mm_mul_ps(f, _mm_movehl_ps(f, f))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

// ---- quantised rows --------------------------------------------------------------------------

/// Runs `dot2` on pairs of rows and `dot1` on a last odd row, prefetching the `side` stream a
/// share per pair.
macro_rules! rows2 {
    ($w:ident, $bpr:ident, $x:ident, $y:ident, $side:ident, $dot2:ident, $dot1:ident) => {{
        let mut rows = $w.chunks_exact($bpr);
        let mut side = $side.cursor($y.len().div_ceil(2));
        let mut outs = $y.chunks_exact_mut(2);
        for o in &mut outs {
            let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
                break;
            };
            side.step(prefetch_side);
            let (a, b) = $dot2(r0, r1, $x);
            o[0] = a;
            o[1] = b;
        }
        for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
            side.step(prefetch_side);
            *o = $dot1(r, $x);
        }
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0_rows_tf(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>) {
    rows2!(w, bpr, x, y, side, dot2_q4_0, dot_q4_0);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_block(a: &BlockQ4_0, y: __m256i) -> __m256i {
    let q = _mm256_sub_epi8(nibbles(&a.qs), _mm256_set1_epi8(8));
    dot_i8i8(q, y)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[BlockQ4_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in w.iter().zip(x) {
        prefetch_ahead(a);
        let s = q4_0_block(a, load32(&b.qs));
        acc = _mm256_fmadd_ps(scale2(a.d, b.d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q4_0(w0: &[BlockQ4_0], w1: &[BlockQ4_0], x: &[BlockQ8_0]) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for ((a0, a1), b) in w0.iter().zip(w1).zip(x) {
        prefetch_ahead(a0);
        prefetch_ahead(a1);
        let yv = load32(&b.qs);
        let s0 = q4_0_block(a0, yv);
        let s1 = q4_0_block(a1, yv);
        acc0 = _mm256_fmadd_ps(scale2(a0.d, b.d), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a1.d, b.d), _mm256_cvtepi32_ps(s1), acc1);
    }
    (hsum(acc0), hsum(acc1))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1_rows_tf(w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32], side: Side<'_>) {
    rows2!(w, bpr, x, y, side, dot2_q4_1, dot_q4_1);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[BlockQ4_1], x: &[BlockQ8_1]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (a, b) in w.iter().zip(x) {
        prefetch_ahead(a);
        let sc = scales_q4_1(a, b);
        acc_m = _mm_add_ps(acc_m, sc);
        let s = dot_u8i8(nibbles(&a.qs), load32(&b.qs));
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(s), acc);
    }
    hsum(acc) + _mm_cvtss_f32(_mm_movehdup_ps(acc_m))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q4_1(w0: &[BlockQ4_1], w1: &[BlockQ4_1], x: &[BlockQ8_1]) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut m0, mut m1) = (_mm_setzero_ps(), _mm_setzero_ps());
    for ((a0, a1), b) in w0.iter().zip(w1).zip(x) {
        prefetch_ahead(a0);
        prefetch_ahead(a1);
        let yv = load32(&b.qs);
        let (sc0, sc1) = (scales_q4_1(a0, b), scales_q4_1(a1, b));
        m0 = _mm_add_ps(m0, sc0);
        m1 = _mm_add_ps(m1, sc1);
        let s0 = dot_u8i8(nibbles(&a0.qs), yv);
        let s1 = dot_u8i8(nibbles(&a1.qs), yv);
        acc0 = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc0), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc1), _mm256_cvtepi32_ps(s1), acc1);
    }
    (
        hsum(acc0) + _mm_cvtss_f32(_mm_movehdup_ps(m0)),
        hsum(acc1) + _mm_cvtss_f32(_mm_movehdup_ps(m1)),
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_rows_tf(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>) {
    rows2!(w, bpr, x, y, side, dot2_q8_0, dot_q8_0);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[BlockQ8_0], x: &[BlockQ8_0]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (a, b) in w.iter().zip(x) {
        prefetch_ahead(a);
        let s = dot_i8i8(load32(&a.qs), load32(&b.qs));
        acc = _mm256_fmadd_ps(scale2(a.d, b.d), _mm256_cvtepi32_ps(s), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_q8_0(w0: &[BlockQ8_0], w1: &[BlockQ8_0], x: &[BlockQ8_0]) -> (f32, f32) {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for ((a0, a1), b) in w0.iter().zip(w1).zip(x) {
        prefetch_ahead(a0);
        prefetch_ahead(a1);
        let yv = load32(&b.qs);
        let s0 = dot_i8i8(load32(&a0.qs), yv);
        let s1 = dot_i8i8(load32(&a1.qs), yv);
        acc0 = _mm256_fmadd_ps(scale2(a0.d, b.d), _mm256_cvtepi32_ps(s0), acc0);
        acc1 = _mm256_fmadd_ps(scale2(a1.d, b.d), _mm256_cvtepi32_ps(s1), acc1);
    }
    (hsum(acc0), hsum(acc1))
}

// ---- float rows ------------------------------------------------------------------------------

/// Dot of `n` weights (converted 8 at a time by `conv` from `E`-byte groups) with `x`; four
/// accumulators over 32-element steps, then 8-element steps, then a scalar tail.
macro_rules! float_dot {
    ($row:ident, $x:ident, $bytes8:literal, $conv:expr, $scalar:expr) => {{
        let (w8, wt) = $row.as_chunks::<$bytes8>();
        let (x8, xt) = $x.as_chunks::<8>();
        let (w32, w8r) = w8.as_chunks::<4>();
        let (x32, x8r) = x8.as_chunks::<4>();
        let mut acc = [_mm256_setzero_ps(); 4];
        for (w, x) in w32.iter().zip(x32) {
            for ((a, w), x) in acc.iter_mut().zip(w).zip(x) {
                *a = _mm256_fmadd_ps($conv(w), load_ps(x), *a);
            }
        }
        for (w, x) in w8r.iter().zip(x8r) {
            acc[0] = _mm256_fmadd_ps($conv(w), load_ps(x), acc[0]);
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut s = hsum(v);
        let es = $bytes8 / 8;
        for (e, &xv) in wt.chunks_exact(es).zip(xt) {
            s += $scalar(e) * xv;
        }
        s
    }};
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn cvt_f16x8(w: &[u8; 16]) -> __m256 {
    _mm256_cvtph_ps(load16(w))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn cvt_bf16x8(w: &[u8; 16]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(load16(w)), 16))
}

fn f16_scalar(e: &[u8]) -> f32 {
    f16_le([e[0], e[1]])
}
fn bf16_scalar(e: &[u8]) -> f32 {
    f32::from_bits((u16::from_le_bytes([e[0], e[1]]) as u32) << 16)
}
fn f32_scalar(e: &[u8]) -> f32 {
    f32::from_le_bytes([e[0], e[1], e[2], e[3]])
}

/// F16 rows against f32 `x` (the LoRA A product: r rows of the input width), two rows per
/// pass sharing the activation loads over the 32-element steps; each row then finishes
/// exactly as [`float_dot!`] does (leftover 8-element steps into accumulator 0, the same
/// reduction order, the scalar tail), so every row is bit-identical to a one-row pass.
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    let x = x.get(..cols).unwrap_or_default();
    let (x8, _) = x.as_chunks::<8>();
    let (x32, _) = x8.as_chunks::<4>();
    let done = 32 * x32.len();
    let mut rows = w.chunks_exact(cols * 2);
    let mut outs = y.chunks_exact_mut(2);
    for o in &mut outs {
        let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
            break;
        };
        let (w0, _) = r0.as_chunks::<16>();
        let (w1, _) = r1.as_chunks::<16>();
        let (w0, _) = w0.as_chunks::<4>();
        let (w1, _) = w1.as_chunks::<4>();
        let mut a0 = [_mm256_setzero_ps(); 4];
        let mut a1 = [_mm256_setzero_ps(); 4];
        for ((c0, c1), xc) in w0.iter().zip(w1).zip(x32) {
            for j in 0..4 {
                let xv = load_ps(&xc[j]);
                a0[j] = _mm256_fmadd_ps(cvt_f16x8(&c0[j]), xv, a0[j]);
                a1[j] = _mm256_fmadd_ps(cvt_f16x8(&c1[j]), xv, a1[j]);
            }
        }
        o[0] = f16_finish(a0, r0, x, done);
        o[1] = f16_finish(a1, r1, x, done);
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        *o = float_dot!(r, x, 16, cvt_f16x8, f16_scalar);
    }
}

/// The rest of [`float_dot!`] for an F16 row whose first `done` elements (whole 32-element
/// steps) are already in `acc`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn f16_finish(mut acc: [__m256; 4], row: &[u8], x: &[f32], done: usize) -> f32 {
    let (w8, wt) = row.get(2 * done..).unwrap_or_default().as_chunks::<16>();
    let (x8, xt) = x.get(done..).unwrap_or_default().as_chunks::<8>();
    for (w, xv) in w8.iter().zip(x8) {
        acc[0] = _mm256_fmadd_ps(cvt_f16x8(w), load_ps(xv), acc[0]);
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut s = hsum(v);
    for (e, &xv) in wt.chunks_exact(2).zip(xt) {
        s += f16_scalar(e) * xv;
    }
    s
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 2).zip(y) {
        *o = float_dot!(row, x, 16, cvt_bf16x8, bf16_scalar);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 4).zip(y) {
        *o = float_dot!(row, x, 32, load_ps_bytes, f32_scalar);
    }
}

// ---- short rows added into y (LoRA B) --------------------------------------------------------

/// Eight vectors to the eight sums of their lanes, in order: two levels of `vhaddps` leave
/// each 128-bit half holding four rows' partial sums, and one cross-half add finishes them.
/// About 10 instructions for eight rows, against about 5 per row for [`hsum`].
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum8x8(a: &[__m256; 8]) -> __m256 {
    let h01 = _mm256_hadd_ps(a[0], a[1]);
    let h23 = _mm256_hadd_ps(a[2], a[3]);
    let h45 = _mm256_hadd_ps(a[4], a[5]);
    let h67 = _mm256_hadd_ps(a[6], a[7]);
    // Low half: rows 0-3 summed over elements 0-3; high half: the same over elements 4-7.
    let h0123 = _mm256_hadd_ps(h01, h23);
    let h4567 = _mm256_hadd_ps(h45, h67);
    _mm256_add_ps(
        _mm256_permute2f128_ps(h0123, h4567, 0x20),
        _mm256_permute2f128_ps(h0123, h4567, 0x31),
    )
}

/// `y[o] += s * dot(row o, t)` for rows of `r` elements converted 8 at a time by `$conv` from
/// `$bytes8`-byte groups (`$scalar` converts one element of a tail shorter than 8). Rows go
/// eight at a time: eight independent FMA chains, one [`hsum8x8`], one FMA into `y`.
macro_rules! float_add_rows {
    ($w:ident, $r:ident, $t:ident, $s:ident, $y:ident, $bytes8:literal, $conv:expr, $scalar:expr) => {{
        let es = $bytes8 / 8;
        let rb = $r * es;
        let (t8, tt) = $t.as_chunks::<8>();
        let sv = _mm256_set1_ps($s);
        let mut groups = $w.chunks_exact(8 * rb);
        let mut outs = $y.chunks_exact_mut(8);
        for (g, o) in (&mut groups).zip(&mut outs) {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut tail = [0.0f32; 8];
            for ((a, tl), row) in acc.iter_mut().zip(&mut tail).zip(g.chunks_exact(rb)) {
                let (w8, wt) = row.as_chunks::<$bytes8>();
                for (wc, tc) in w8.iter().zip(t8) {
                    *a = _mm256_fmadd_ps($conv(wc), load_ps(tc), *a);
                }
                for (e, &tv) in wt.chunks_exact(es).zip(tt) {
                    *tl += $scalar(e) * tv;
                }
            }
            let Ok(o) = <&mut [f32; 8]>::try_from(o) else {
                continue;
            };
            let sums = _mm256_add_ps(hsum8x8(&acc), load_ps(&tail));
            let v = _mm256_fmadd_ps(sums, sv, load_ps(o));
            // SAFETY: `o` is 8 writable f32s; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
        }
        for (row, o) in groups
            .remainder()
            .chunks_exact(rb)
            .zip(outs.into_remainder())
        {
            let (w8, wt) = row.as_chunks::<$bytes8>();
            let mut a = _mm256_setzero_ps();
            for (wc, tc) in w8.iter().zip(t8) {
                a = _mm256_fmadd_ps($conv(wc), load_ps(tc), a);
            }
            let mut sum = hsum(a);
            for (e, &tv) in wt.chunks_exact(es).zip(tt) {
                sum += $scalar(e) * tv;
            }
            *o += $s * sum;
        }
    }};
}

/// [`float_add_rows!`] for `r = 8 * NC`: a group of eight rows is viewed as
/// `[[[u8; B]; NC]; 8]`, so every index is a constant and the loops unroll with no bounds
/// checks or per-row slicing (which dominate at r = 8: one FMA per row).
macro_rules! float_add_rows_nc {
    ($name:ident, $bytes8:literal, $conv:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name<const NC: usize>(w: &[u8], t: &[f32], s: f32, y: &mut [f32]) {
            let (t8, _) = t.as_chunks::<8>();
            let Ok(t8) = <&[[f32; 8]; NC]>::try_from(t8) else {
                return;
            };
            let sv = _mm256_set1_ps(s);
            let (wc, _) = w.as_chunks::<$bytes8>();
            let (rows, _) = wc.as_chunks::<NC>();
            let (groups, rest) = rows.as_chunks::<8>();
            let (outs, y_rest) = y.as_chunks_mut::<8>();
            for (g, o) in groups.iter().zip(outs.iter_mut()) {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (c, tc) in t8.iter().enumerate() {
                    let tv = load_ps(tc);
                    for (a, row) in acc.iter_mut().zip(g) {
                        *a = _mm256_fmadd_ps($conv(&row[c]), tv, *a);
                    }
                }
                let v = _mm256_fmadd_ps(hsum8x8(&acc), sv, load_ps(o));
                // SAFETY: `o` is 8 writable f32s; `storeu` has no alignment requirement.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
            }
            for (row, o) in rest.iter().zip(y_rest) {
                let mut a = _mm256_setzero_ps();
                for (wc, tc) in row.iter().zip(t8) {
                    a = _mm256_fmadd_ps($conv(wc), load_ps(tc), a);
                }
                *o += s * hsum(a);
            }
        }
    };
}

float_add_rows_nc!(f16_add_nc, 16, cvt_f16x8);
float_add_rows_nc!(bf16_add_nc, 16, cvt_bf16x8);
float_add_rows_nc!(f32_add_nc, 32, load_ps_bytes);

/// Specialised ranks (8, 16, 32, 64: the usual LoRA ranks) go to `$nc::<NC>`, others to the
/// general macro.
macro_rules! float_add_dispatch {
    ($w:ident, $r:ident, $t:ident, $s:ident, $y:ident, $nc:ident, $bytes8:literal, $conv:expr, $scalar:expr) => {
        match $r {
            8 => $nc::<1>($w, $t, $s, $y),
            16 => $nc::<2>($w, $t, $s, $y),
            32 => $nc::<4>($w, $t, $s, $y),
            64 => $nc::<8>($w, $t, $s, $y),
            _ => float_add_rows!($w, $r, $t, $s, $y, $bytes8, $conv, $scalar),
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_dispatch!(w, r, t, s, y, f16_add_nc, 16, cvt_f16x8, f16_scalar);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_dispatch!(w, r, t, s, y, bf16_add_nc, 16, cvt_bf16x8, bf16_scalar);
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f32_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_dispatch!(w, r, t, s, y, f32_add_nc, 32, load_ps_bytes, f32_scalar);
}

/// Eight signed bytes to eight f32 (`vpmovsxbd` + `vcvtdq2ps`; exact).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn i8x8_ps(a: &[u8; 8]) -> __m256 {
    // SAFETY: `a` is 8 readable bytes and `loadl_epi64` reads exactly 8, at any alignment.
    let v = unsafe { _mm_loadl_epi64(a.as_ptr().cast()) };
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// One Q8_0 block times 32 f32 of `t` (`tb`, four registers), scaled by the block's `d`:
/// `d * ((q0 t0 + q2 t2) + (q1 t1 + q3 t3))`, eight lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_0_block_ps(b: &BlockQ8_0, tb: &[__m256; 4]) -> (__m256, __m256) {
    let (q, _) = b.qs.as_chunks::<8>();
    let p = _mm256_fmadd_ps(i8x8_ps(&q[2]), tb[2], _mm256_mul_ps(i8x8_ps(&q[0]), tb[0]));
    let p1 = _mm256_fmadd_ps(i8x8_ps(&q[3]), tb[3], _mm256_mul_ps(i8x8_ps(&q[1]), tb[1]));
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(b.d) as i32));
    (_mm256_add_ps(p, p1), _mm256_broadcastss_ps(d))
}

/// The body of [`q8_0_add_rows_tf`] over rows of `$bpr` items that `$block` turns into a
/// block product and its scale (`(p, d)` as [`q8_0_block_ps`]): Q8_0 blocks, or blocks
/// unpacked beforehand ([`Q8Unpacked`]), with the same arithmetic either way.
macro_rules! q8_0_add_body {
    ($w:ident, $bpr:ident, $t:ident, $s:ident, $y:ident, $block:ident) => {{
        let (t8, _) = $t.as_chunks::<8>();
        let tblock = |b: usize| -> [__m256; 4] {
            let mut r = [_mm256_setzero_ps(); 4];
            for (v, c) in r
                .iter_mut()
                .zip(t8.get(4 * b..4 * b + 4).unwrap_or_default())
            {
                *v = load_ps(c);
            }
            r
        };
        let sv = _mm256_set1_ps($s);
        let mut groups = $w.chunks_exact(8 * $bpr);
        let mut outs = $y.chunks_exact_mut(8);
        for (g, o) in (&mut groups).zip(&mut outs) {
            let mut acc = [_mm256_setzero_ps(); 8];
            for b in 0..$bpr {
                let tb = tblock(b);
                for (a, row) in acc.iter_mut().zip(g.chunks_exact($bpr)) {
                    if let Some(blk) = row.get(b) {
                        let (p, d) = $block(blk, &tb);
                        *a = _mm256_fmadd_ps(d, p, *a);
                    }
                }
            }
            let Ok(o) = <&mut [f32; 8]>::try_from(o) else {
                continue;
            };
            let v = _mm256_fmadd_ps(hsum8x8(&acc), sv, load_ps(o));
            // SAFETY: `o` is 8 writable f32s; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
        }
        for (row, o) in groups
            .remainder()
            .chunks_exact($bpr)
            .zip(outs.into_remainder())
        {
            let mut a = _mm256_setzero_ps();
            for (b, blk) in row.iter().enumerate() {
                let (p, d) = $block(blk, &tblock(b));
                a = _mm256_fmadd_ps(d, p, a);
            }
            *o += $s * hsum(a);
        }
    }};
}
/// `y[o] += s * sum_b d_b * dot(q_b, t_b)` for Q8_0 rows of `bpr` blocks against f32 `t`
/// (the LoRA B update for a Q8_0 B; `t` stays f32, no activation quantising). Eight rows per
/// pass share each block's four `t` registers; each row keeps one accumulator
/// (`acc += d * block product`), and the eight are reduced together by [`hsum8x8`].
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_add_rows_tf(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    q8_0_add_body!(w, bpr, t, s, y, q8_0_block_ps);
}

// ---- activation quantisers -------------------------------------------------------------------

/// One block: writes the quantised bytes, returns (`d` as f32, `d` as f16 bytes, sum of the
/// quantised values).
///
/// Matches `quantize_row_q8_0_ref` step for step: `amax = max |x|`, `d = amax / 127`,
/// `id = 1 / d` (0 if `d == 0`), `q = roundf(x * id)` with ties away from zero. AVX has no
/// such rounding mode, so it is built from truncation: `t = trunc(v)`, `f = v - t` (exact),
/// `q = t + (|f| >= 0.5 ? sign(v) : 0)`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn quant_block(xb: &[f32; QK], qs: &mut [u8; QK]) -> (f32, [u8; 2], i32) {
    let (x8, _) = xb.as_chunks::<8>();
    let sign = _mm256_set1_ps(-0.0);
    let mut v = [_mm256_setzero_ps(); 4];
    let mut m = _mm256_setzero_ps();
    for (vi, c) in v.iter_mut().zip(x8) {
        *vi = load_ps(c);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let d16 = _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(d), _MM_FROUND_TO_NEAREST_INT), 0) as u16;
    let mul = _mm256_set1_ps(id);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let mut qi = [_mm256_setzero_si256(); 4];
    for (q, vi) in qi.iter_mut().zip(v) {
        let s = _mm256_mul_ps(vi, mul);
        let t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        let f = _mm256_sub_ps(s, t);
        let away = _mm256_cmp_ps(_mm256_andnot_ps(sign, f), half, _CMP_GE_OQ);
        let step = _mm256_and_ps(away, _mm256_or_ps(_mm256_and_ps(s, sign), one));
        *q = _mm256_cvttps_epi32(_mm256_add_ps(t, step));
    }
    let sum = _mm256_add_epi32(
        _mm256_add_epi32(qi[0], qi[1]),
        _mm256_add_epi32(qi[2], qi[3]),
    );
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(sum),
        _mm256_extracti128_si256(sum, 1),
    );
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b01_00_11_10));
    let s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0b10_11_00_01));
    let packed = _mm256_packs_epi16(
        _mm256_packs_epi32(qi[0], qi[1]),
        _mm256_packs_epi32(qi[2], qi[3]),
    );
    let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `qs` is 32 writable bytes; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), packed) };
    (d, d16.to_le_bytes(), _mm_cvtsi128_si32(s4))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_0_tf(x: &[f32], y: &mut [BlockQ8_0]) {
    let (xb, _) = x.as_chunks::<QK>();
    for (c, b) in xb.iter().zip(y) {
        b.d = quant_block(c, &mut b.qs).1;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8_1_tf(x: &[f32], y: &mut [BlockQ8_1]) {
    let (xb, _) = x.as_chunks::<QK>();
    for (c, b) in xb.iter().zip(y) {
        let (d, d16, sum) = quant_block(c, &mut b.qs);
        b.d = d16;
        // ggml: `s = sum * d` with the f32 `d`, then rounded to f16.
        b.s = crate::quant::to_f16_le(sum as f32 * d);
    }
}

// ---- blocked matmul for prompt batches ---------------------------------------------------------

/// Most columns (tokens) one pass of the blocked matmuls takes (see [`matmul_q4_1`]).
pub(crate) const MM_COLS: usize = 8;

/// Longest row (in 32-element blocks) the blocked matmuls take: the packed activations of a
/// pass live on the stack (320 bytes per block, 80 KB at 256 blocks, about what the AVX-512
/// matmul uses). Longer rows (more than 8192 columns) run one matvec per token.
pub(super) const MM_MAX_BLOCKS: usize = 256;

/// One block position of up to `MM_COLS` activation columns, packed so the row loop reads one
/// contiguous stream with no per-column conversion: the quants of each column, then `d` and
/// (Q8_1) `s` of column `c` as f32 in lane `c`, so the scales `d_w d_x` of four columns are
/// one multiply ([`col_scales`]) and the `m_w s_x` terms of all columns one multiply-add.
/// Columns a pass does not use are zero.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub(super) struct ColBlock {
    pub(super) qs: [[u8; 32]; MM_COLS],
    pub(super) d: [f32; 8],
    pub(super) s: [f32; 8],
}

const COL_BLOCK_ZERO: ColBlock = ColBlock {
    qs: [[0; 32]; MM_COLS],
    d: [0.0; 8],
    s: [0.0; 8],
};

/// One f16 to f32 with F16C (what the matvecs' `vcvtph2ps` computes, bit for bit).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn f16_f32(h: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(h) as i32),
    ))
}

/// Pack `NC` columns of `bpr` blocks (`x`, column after column; `parts` gives a block's quants,
/// `d` and `s`) into `buf`, returning the `bpr` packed blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn pack_cols<'p, A, const NC: usize>(
    x: &[A],
    bpr: usize,
    parts: impl Fn(&A) -> (&[u8; 32], [u8; 2], [u8; 2]),
    buf: &'p mut [MaybeUninit<ColBlock>; MM_MAX_BLOCKS],
) -> &'p [ColBlock] {
    let buf = &mut buf[..bpr.min(MM_MAX_BLOCKS)];
    for (b, slot) in buf.iter_mut().enumerate() {
        let mut p = COL_BLOCK_ZERO;
        for c in 0..NC.min(MM_COLS) {
            if let Some(a) = x.get(c * bpr + b) {
                let (qs, d, s) = parts(a);
                p.qs[c] = *qs;
                p.d[c] = f16_f32(d);
                p.s[c] = f16_f32(s);
            }
        }
        slot.write(p);
    }
    // SAFETY: every element of `buf` was initialised just above, and `MaybeUninit<ColBlock>`
    // has the size, alignment and layout of `ColBlock`.
    unsafe { &*(buf as *const [MaybeUninit<ColBlock>] as *const [ColBlock]) }
}

/// `d_w d_x` of columns 0-3 (`[0]`) and 4-7 (`[1]`), each half repeated in both 128-bit
/// lanes so that [`lane`] broadcasts one column's scale with a single in-lane shuffle.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn col_scales(dw: __m256, d: &[f32; 8]) -> [__m256; 2] {
    let (h, _) = d.as_chunks::<4>();
    // SAFETY: each `h[i]` is 4 readable f32s; `loadu` has no alignment requirement.
    let half = |i: usize| _mm256_broadcast_ps(unsafe { &_mm_loadu_ps(h[i].as_ptr()) });
    [_mm256_mul_ps(dw, half(0)), _mm256_mul_ps(dw, half(1))]
}

/// Column `c`'s scale from [`col_scales`] in all 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn lane(d: &[__m256; 2], c: usize) -> __m256 {
    let v = d[(c / 4) & 1];
    match c % 4 {
        0 => _mm256_permute_ps::<0x00>(v),
        1 => _mm256_permute_ps::<0x55>(v),
        2 => _mm256_permute_ps::<0xaa>(v),
        _ => _mm256_permute_ps::<0xff>(v),
    }
}

/// The horizontal sums of four vectors, lane `c` = `hsum(a[c])` bit for bit: the same
/// additions in the same order (`(v0 + v4) ...`, then `(s0 + s2) + (s1 + s3)`), done for four
/// vectors at once by transposing with unpacks (about 3 instructions a vector against 5).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn hsum4(a: &[__m256; 4]) -> __m128 {
    let s = a.map(|v| _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
    // [s0_0 + s0_2, s1_0 + s1_2, s0_1 + s0_3, s1_1 + s1_3], and the same for vectors 2 and 3.
    let t01 = _mm_add_ps(_mm_unpacklo_ps(s[0], s[1]), _mm_unpackhi_ps(s[0], s[1]));
    let t23 = _mm_add_ps(_mm_unpacklo_ps(s[2], s[3]), _mm_unpackhi_ps(s[2], s[3]));
    _mm_add_ps(_mm_movelh_ps(t01, t23), _mm_movehl_ps(t23, t01))
}

/// `hsum` of each of the first `NC` accumulators (lane `c`), as 8 lanes (unused lanes zero).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn hsum_cols<const NC: usize>(acc: &[__m256; NC]) -> __m256 {
    let mut a = [_mm256_setzero_ps(); 8];
    for (d, s) in a.iter_mut().zip(acc) {
        *d = *s;
    }
    let lo = hsum4(&[a[0], a[1], a[2], a[3]]);
    let hi = if NC > 4 {
        hsum4(&[a[4], a[5], a[6], a[7]])
    } else {
        _mm_setzero_ps()
    };
    _mm256_set_m128(hi, lo)
}

/// Store lanes `0..NC` of `v` at `ys[c * rows + r]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn store_cols<const NC: usize>(v: __m256, ys: &mut [f32], rows: usize, r: usize) {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` is 8 writable f32s; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    for (c, &l) in lanes.iter().enumerate().take(NC) {
        if let Some(o) = ys.get_mut(c * rows + r) {
            *o = l;
        }
    }
}

/// `$f::<nc>(args)` for a pass of `nc` columns (`1..=MM_COLS`), each count its own
/// instance so the column loops unroll and every accumulator stays in a register.
macro_rules! by_cols {
    ($nc:expr, $f:ident, $($a:expr),*) => {{
        const _: () = assert!(MM_COLS == 8);
        match $nc {
            1 => $f::<1>($($a),*),
            2 => $f::<2>($($a),*),
            3 => $f::<3>($($a),*),
            4 => $f::<4>($($a),*),
            5 => $f::<5>($($a),*),
            6 => $f::<6>($($a),*),
            7 => $f::<7>($($a),*),
            _ => $f::<MM_COLS>($($a),*),
        }
    }};
}
// For `avx2_mm.rs` (built with `quant-q5` or `quant-k`).
#[cfg(any(feature = "quant-q5", feature = "quant-k"))]
pub(super) use by_cols;

/// Blocked `Y = W X` for Q4_1 weights and Q8_1 activations (prompt tokens): `x` holds
/// `n = x.len() / bpr` columns of `bpr` blocks, `y` receives column `c` at
/// `y[c * rows..(c + 1) * rows]`. Returns `false` if this kernel does not take the shape (the
/// caller then runs matvecs). `k` must be the AVX2 or AVX-512 table (the proof that the CPU
/// has AVX2, FMA and F16C).
///
/// # Design
///
/// The matvec (`q4_1_rows`) unpacks every weight block once per token: nibbles to bytes, the
/// two f16 scales converted and multiplied by the activation's. Here a weight block is
/// unpacked once for up to [`MM_COLS`] = 8 tokens, one row at a time: nibbles, `d_w` and `m_w`
/// broadcast, `d_w` times the packed `d_x` of columns 0-3 and 4-7 (two multiplies), the
/// `m_w s_x` terms of all eight columns (one multiply-add). Each column then costs five
/// instructions: `vpmaddubsw` (its quants a memory operand), `vpmaddwd`, convert, one
/// in-lane shuffle that broadcasts its scale, FMA. The activations are packed per pass
/// ([`ColBlock`]) so the row loop reads one stream with no conversions or bounds checks.
///
/// One row by eight columns: eight YMM accumulators plus the `m s` sums, the unpacked
/// nibbles, `d_w`, the two scale vectors, the `vpmaddwd` ones, the nibble mask and two
/// temporaries fill the sixteen registers without a spill. Two rows by four columns would need
/// as many accumulators and twice the per-row unpacking for the same eight outputs, and would
/// only share activation loads, which are memory operands either way. Eight columns is
/// also half a prefill block (`PREFILL_BLOCK` = 16), so with two threads each takes one pass.
///
/// Measured on the dev VM (AMD EPYC, AVX2+FMA+F16C, no AVX-512; shared, load average 2-3),
/// SmolLM2-135M Q4_1, one thread, thread CPU time (`decode_tps`):
/// - layout, 128-token prompt, 2-3 runs each: matvec per token 137 tok/s; 4 columns with the
///   scale as `d_w * broadcast(d_x)` per column (six instructions) 194-198; 8 columns 206-222;
///   8 columns with the shared scale multiply and shuffle (this kernel) 217-235.
/// - 64-token prompt, 4 alternating runs each: 141-149 tok/s before, 260-269 after (1.8x);
///   llama.cpp (`bench/compare_llamacpp.py`, same rounds) 148-154, so 0.84-0.93 of it before
///   and 1.67-1.77 after. Kernel alone (`kernels_cpu`, 16 tokens): Q4_1 16-19 GMAC/s as
///   matvecs, 40-43 blocked; Q8_0 19-23, 39-41.
///
/// # Results
///
/// Every output is bit-identical to what the AVX2 matvec computes for that token: per
/// (row, column) the same 8-lane integer dot, the same scale (`d_w d_x`, an exact product of
/// two f16s however it is formed), the same FMA into the same lane, the `m s` sum in the same
/// block order, and [`hsum4`] reduces the lanes exactly as `hsum` does. So prefill equals
/// token-by-token decode on AVX2 (`tests/tests/prefill.rs` requires it), and the grouping of
/// columns into passes or threads cannot change a result.
pub(crate) fn matmul_q4_1(
    k: &Kernel,
    w: &[BlockQ4_1],
    bpr: usize,
    rows: usize,
    x: &[BlockQ8_1],
    y: &mut [f32],
) -> bool {
    matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
        // SAFETY: `matmul_entry` checked that `k` is the AVX2 (or AVX-512) table, which
        // `detect` hands out only after checking AVX2, FMA, F16C and OS YMM support.
        unsafe { by_cols!(nc, mm_q4_1_tf, w, bpr, rows, x, y) }
    })
}

/// As [`matmul_q4_1`] for Q8_0 weights and Q8_0 activations (the signed weights take the
/// matvec's sign trick: `|w|` once per block, `x * sign(w)` per column).
pub(crate) fn matmul_q8_0(
    k: &Kernel,
    w: &[BlockQ8_0],
    bpr: usize,
    rows: usize,
    x: &[BlockQ8_0],
    y: &mut [f32],
) -> bool {
    matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
        // SAFETY: as in `matmul_q4_1`.
        unsafe { by_cols!(nc, mm_q8_0_tf, w, bpr, rows, x, y) }
    })
}

/// As [`matmul_q8_0`] for Q4_0 weights (`nibble - 8`, then as Q8_0).
pub(crate) fn matmul_q4_0(
    k: &Kernel,
    w: &[BlockQ4_0],
    bpr: usize,
    rows: usize,
    x: &[BlockQ8_0],
    y: &mut [f32],
) -> bool {
    matmul_entry(k, w, bpr, rows, x, y, |nc, w, x, y| {
        // SAFETY: as in `matmul_q4_1`.
        unsafe { by_cols!(nc, mm_q4_0_tf, w, bpr, rows, x, y) }
    })
}

/// The shared checks and the split into passes of at most [`MM_COLS`] columns: `pass(nc, w,
/// x, y)` gets `nc` columns of `x` and their `nc * rows` outputs.
pub(super) fn matmul_entry<W, A>(
    k: &Kernel,
    w: &[W],
    bpr: usize,
    rows: usize,
    x: &[A],
    y: &mut [f32],
    pass: impl Fn(usize, &[W], &[A], &mut [f32]),
) -> bool {
    // The AVX-512 table implies AVX2+FMA+F16C (its `detect` requires them).
    if !matches!(k.isa, Isa::Avx2 | Isa::Avx512)
        || bpr == 0
        || bpr > MM_MAX_BLOCKS
        || rows == 0
        || w.len() < rows * bpr
    {
        return false;
    }
    let w = &w[..rows * bpr];
    for (xs, ys) in x.chunks(MM_COLS * bpr).zip(y.chunks_mut(MM_COLS * rows)) {
        let nc = (xs.len() / bpr).min(ys.len() / rows);
        if nc > 0 {
            pass(nc, w, &xs[..nc * bpr], &mut ys[..nc * rows]);
        }
    }
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
fn mm_q4_1_tf<const NC: usize>(
    w: &[BlockQ4_1],
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
            let q = nibbles(&a.qs);
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

/// The shared body of the signed (Q8_0-activation) matmuls: `$q(a)` unpacks a weight block to
/// 32 signed bytes.
macro_rules! mm_signed {
    ($name:ident, $w:ty, $q:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name<const NC: usize>(
            w: &[$w],
            bpr: usize,
            rows: usize,
            x: &[BlockQ8_0],
            y: &mut [f32],
        ) {
            let mut buf = [const { MaybeUninit::<ColBlock>::uninit() }; MM_MAX_BLOCKS];
            let act = pack_cols::<_, NC>(x, bpr, |b| (&b.qs, b.d, [0, 0]), &mut buf);
            for (r, row) in w.chunks_exact(bpr).take(rows).enumerate() {
                let mut acc = [_mm256_setzero_ps(); NC];
                for (a, p) in row.iter().zip(act) {
                    prefetch_ahead(a);
                    let q = $q(a);
                    let qa = _mm256_sign_epi8(q, q);
                    let dw = _mm256_set1_ps(f16_f32(a.d));
                    let d = col_scales(dw, &p.d);
                    for (c, (acc, xq)) in acc.iter_mut().zip(&p.qs).enumerate() {
                        // `dot_i8i8(q, x)`: |q| * (x * sign(q)).
                        let s = dot_u8i8(qa, _mm256_sign_epi8(load32(xq), q));
                        *acc = _mm256_fmadd_ps(lane(&d, c), _mm256_cvtepi32_ps(s), *acc);
                    }
                }
                store_cols::<NC>(hsum_cols(&acc), y, rows, r);
            }
        }
    };
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_0_quants(a: &BlockQ8_0) -> __m256i {
    load32(&a.qs)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q4_0_quants(a: &BlockQ4_0) -> __m256i {
    _mm256_sub_epi8(nibbles(&a.qs), _mm256_set1_epi8(8))
}

// For `avx2_mm.rs` (built with `quant-q5` or `quant-k`).
#[cfg(any(feature = "quant-q5", feature = "quant-k"))]
pub(super) use mm_signed;

mm_signed!(mm_q8_0_tf, BlockQ8_0, q8_0_quants);
mm_signed!(mm_q4_0_tf, BlockQ4_0, q4_0_quants);

// ---- batched LoRA products for prompt blocks -------------------------------------------------
//
// A block of prompt tokens multiplies the same small A (r x in) and B (out x r) by several
// vectors. Here A's converted weight vectors serve two vectors each (`matmul_float`), a Q8_0
// B is unpacked to f32 once per block (`matmul_q8_0_add`), and an r = 8 F16/BF16/F32 B is
// transposed once per block so that its row sums need no horizontal adds
// (`matmul_float_add`). Measured on Zen 3 (`bench/examples/lora_kernels.rs`, 16 vectors,
// SmolLM2's 576-wide linears, ns per vector, one vector at a time -> batched): A F16 r=8
// ~180 -> ~152, r=32 ~710 -> ~615; B F16 r=8 ~350 -> ~225; B Q8_0 r=32 ~1650 -> ~1150. An
// F16 B of higher rank gains nothing this way (its one-vector kernel is bound by loads, and
// sharing them across vectors needs more registers than AVX2 has while keeping the order
// below), so it stays one vector at a time.
//
// Every (row, vector) result is computed with exactly the operations, in exactly the order,
// of the one-vector kernel above (the same accumulators, reductions, tails and final
// multiply-add), so a prompt block gives bit-identical results to token-by-token decode: the
// batch shares conversions, never reorders a sum. That matters beyond tidiness: the next
// matmul quantises these outputs to Q8, and one ulp can move a value across a rounding
// boundary, a step that a large adapter amplifies well above f32 noise in the logits
// (`tests/tests/prefill.rs` saw 7e-3 relative with a reordered sum).

/// `y[c * rows + o] = dot(w row o, x column c)` for F16, BF16 or F32 rows of `cols` elements
/// and `n = x.len() / cols` columns, bit-identical to [`Kernel::matvec_float`] per column;
/// `false` (nothing written) for another type or a table that is not AVX2/AVX-512 (the
/// caller then runs matvecs). Columns go in pairs: each converted weight vector feeds both.
pub(crate) fn matmul_float(
    k: &Kernel,
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    rows: usize,
    x: &[f32],
    y: &mut [f32],
) -> bool {
    if !matches!(k.isa, Isa::Avx2 | Isa::Avx512) || cols == 0 {
        return false;
    }
    // SAFETY: a `Kernel` whose `isa` is Avx2 or Avx512 is only created by that module's
    // `detect` (crate invariant, see `Kernel`), after checking AVX2, FMA and F16C (AVX-512's
    // `detect` requires them too): the features the `_tf` functions enable. The AVX-512
    // table's F16 rows are bit-identical to these (`tests/tests/kernels.rs`), its BF16/F32
    // rows are these.
    unsafe {
        match ty {
            GgmlType::F16 => f16_mm_tf(w, cols, rows, x, y),
            GgmlType::BF16 => bf16_mm_tf(w, cols, rows, x, y),
            GgmlType::F32 => f32_mm_tf(w, cols, rows, x, y),
            _ => return false,
        }
    }
    true
}

/// [`float_dot!`] of one row with two vectors at once: the same four accumulators per vector,
/// the same reduction and scalar tail, each weight vector converted once for both.
macro_rules! float_dot2 {
    ($row:ident, $xa:ident, $xb:ident, $bytes8:literal, $conv:expr, $scalar:expr) => {{
        let (w8, wt) = $row.as_chunks::<$bytes8>();
        let (xa8, xat) = $xa.as_chunks::<8>();
        let (xb8, xbt) = $xb.as_chunks::<8>();
        let (w32, w8r) = w8.as_chunks::<4>();
        let (xa32, xa8r) = xa8.as_chunks::<4>();
        let (xb32, xb8r) = xb8.as_chunks::<4>();
        let mut aa = [_mm256_setzero_ps(); 4];
        let mut ab = [_mm256_setzero_ps(); 4];
        for ((w, xa), xb) in w32.iter().zip(xa32).zip(xb32) {
            for j in 0..4 {
                let wv = $conv(&w[j]);
                aa[j] = _mm256_fmadd_ps(wv, load_ps(&xa[j]), aa[j]);
                ab[j] = _mm256_fmadd_ps(wv, load_ps(&xb[j]), ab[j]);
            }
        }
        for ((w, xa), xb) in w8r.iter().zip(xa8r).zip(xb8r) {
            let wv = $conv(w);
            aa[0] = _mm256_fmadd_ps(wv, load_ps(xa), aa[0]);
            ab[0] = _mm256_fmadd_ps(wv, load_ps(xb), ab[0]);
        }
        let va = _mm256_add_ps(_mm256_add_ps(aa[0], aa[1]), _mm256_add_ps(aa[2], aa[3]));
        let vb = _mm256_add_ps(_mm256_add_ps(ab[0], ab[1]), _mm256_add_ps(ab[2], ab[3]));
        let (mut sa, mut sb) = (hsum(va), hsum(vb));
        let es = $bytes8 / 8;
        for ((e, &xa), &xb) in wt.chunks_exact(es).zip(xat).zip(xbt) {
            let wv = $scalar(e);
            sa += wv * xa;
            sb += wv * xb;
        }
        (sa, sb)
    }};
}

/// The body of [`matmul_float`] for one element type; `$rows` is the one-vector row kernel,
/// run on a last odd column.
macro_rules! float_mm {
    ($name:ident, $bytes8:literal, $conv:expr, $scalar:expr, $rows:ident) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(w: &[u8], cols: usize, rows: usize, x: &[f32], y: &mut [f32]) {
            let rb = cols * ($bytes8 / 8);
            let rows = rows.min(w.len() / rb.max(1));
            let n = (x.len() / cols.max(1)).min(y.len() / rows.max(1));
            if rows == 0 || n == 0 {
                return;
            }
            let (w, x, y) = (
                w.get(..rows * rb).unwrap_or_default(),
                x.get(..n * cols).unwrap_or_default(),
                y.get_mut(..n * rows).unwrap_or_default(),
            );
            let mut xs = x.chunks_exact(2 * cols);
            let mut ys = y.chunks_exact_mut(2 * rows);
            for (x2, y2) in (&mut xs).zip(&mut ys) {
                let (xa, xb) = x2.split_at(cols);
                let (ya, yb) = y2.split_at_mut(rows);
                for ((row, oa), ob) in w.chunks_exact(rb).zip(ya).zip(yb) {
                    (*oa, *ob) = float_dot2!(row, xa, xb, $bytes8, $conv, $scalar);
                }
            }
            let (xr, yr) = (xs.remainder(), ys.into_remainder());
            if !xr.is_empty() {
                $rows(w, cols, xr, yr);
            }
        }
    };
}

float_mm!(f16_mm_tf, 16, cvt_f16x8, f16_scalar, f16_rows_tf);
float_mm!(bf16_mm_tf, 16, cvt_bf16x8, bf16_scalar, bf16_rows_tf);
float_mm!(f32_mm_tf, 32, load_ps_bytes, f32_scalar, f32_rows_tf);

/// `y[c * rows + o] += s * dot(w row o, t column c)` for F16, BF16 or F32 rows of rank
/// `r = 8` (the LoRA B update of a block: `n = t.len() / 8` columns), bit-identical to
/// [`Kernel::matvec_float_add`] per column; `false` (nothing written) for another type or
/// rank, or a table that is not AVX2/AVX-512 (the caller then runs the one-vector kernel per
/// column).
///
/// Why only r = 8: there the one-vector kernel does one FMA per row and then spends most of
/// its time in [`hsum8x8`] (about nine shuffles and adds per eight rows). Here eight rows
/// are converted once per block and transposed into eight vectors (`tile[l]` = element `l`
/// of the eight rows), so each column's eight row sums come out of vertical multiplies and
/// adds, in the very order the horizontal sums take: ~350 -> ~225 ns per column of
/// SmolLM2's 576 rows in a block of 16 (Zen 3, `bench/examples/lora_kernels.rs`). At higher
/// ranks a row's chunks sum into one accumulator first, which this layout would need eight
/// registers per column for; the batch then gains nothing over the one-vector kernel
/// (measured: a converted-to-f32 copy of B was no faster, the F16 kernel there is bound by
/// loads, not by conversions).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_float_add(
    k: &Kernel,
    ty: GgmlType,
    w: &[u8],
    r: usize,
    rows: usize,
    t: &[f32],
    s: f32,
    y: &mut [f32],
) -> bool {
    if !matches!(k.isa, Isa::Avx2 | Isa::Avx512) || r != 8 {
        return false;
    }
    // SAFETY: as in `matmul_float`: the table is proof of AVX2, FMA and F16C (and the
    // AVX-512 table's float add rows are these).
    unsafe {
        match ty {
            GgmlType::F16 => f16_mm_add8_tf(w, rows, t, s, y),
            GgmlType::BF16 => bf16_mm_add8_tf(w, rows, t, s, y),
            GgmlType::F32 => f32_mm_add8_tf(w, rows, t, s, y),
            _ => return false,
        }
    }
    true
}

/// Eight rows of eight lanes to eight columns: `out[l]` lane `i` = `v[i]` lane `l`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let s1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let s3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let s5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let s7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(s0, s4),
        _mm256_permute2f128_ps::<0x20>(s1, s5),
        _mm256_permute2f128_ps::<0x20>(s2, s6),
        _mm256_permute2f128_ps::<0x20>(s3, s7),
        _mm256_permute2f128_ps::<0x31>(s0, s4),
        _mm256_permute2f128_ps::<0x31>(s1, s5),
        _mm256_permute2f128_ps::<0x31>(s2, s6),
        _mm256_permute2f128_ps::<0x31>(s3, s7),
    ]
}

/// The body of [`matmul_float_add`] for one element type. Per column, lane `i` of
/// `p[l] = fma(tile[l], t[l], 0)` is what lane `l` of row `i`'s accumulator holds in the
/// one-vector kernel (`float_add_rows_nc!` with one chunk); rows in whole groups of eight
/// then sum as [`hsum8x8`] does (`((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7))`) and take one FMA
/// with `s`, the rows after the last whole group as [`hsum`] does
/// (`((p0+p4)+(p2+p6))+((p1+p5)+(p3+p7))`) and `y += s * sum`.
macro_rules! float_mm_add8 {
    ($name:ident, $bytes8:literal, $conv:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(w: &[u8], rows: usize, t: &[f32], s: f32, y: &mut [f32]) {
            let (wr, _) = w.as_chunks::<$bytes8>();
            let rows = rows.min(wr.len());
            let (tc, _) = t.as_chunks::<8>();
            let n = tc.len().min(y.len() / rows.max(1));
            let whole = rows / 8 * 8;
            let (sv, zero) = (_mm256_set1_ps(s), _mm256_setzero_ps());
            for o0 in (0..rows).step_by(8) {
                let nr = (rows - o0).min(8);
                // A short last group repeats its last row (those lanes are never stored).
                let tile = transpose8(core::array::from_fn(|i| match wr.get(o0 + i.min(nr - 1)) {
                    Some(c) => $conv(c),
                    None => zero,
                }));
                for (c, tv) in tc.iter().enumerate().take(n) {
                    let p: [__m256; 8] = core::array::from_fn(|l| {
                        _mm256_fmadd_ps(tile[l], _mm256_set1_ps(tv[l]), zero)
                    });
                    let Some(yc) = y.get_mut(c * rows + o0..c * rows + o0 + nr) else {
                        continue;
                    };
                    if o0 < whole {
                        let sum = _mm256_add_ps(
                            _mm256_add_ps(_mm256_add_ps(p[0], p[1]), _mm256_add_ps(p[2], p[3])),
                            _mm256_add_ps(_mm256_add_ps(p[4], p[5]), _mm256_add_ps(p[6], p[7])),
                        );
                        if let Ok(yc) = <&mut [f32; 8]>::try_from(yc) {
                            let v = _mm256_fmadd_ps(sum, sv, load_ps(yc));
                            // SAFETY: `yc` is 8 writable f32s; `storeu` has no alignment
                            // requirement.
                            unsafe { _mm256_storeu_ps(yc.as_mut_ptr(), v) };
                        }
                    } else {
                        let sum = _mm256_add_ps(
                            _mm256_add_ps(_mm256_add_ps(p[0], p[4]), _mm256_add_ps(p[2], p[6])),
                            _mm256_add_ps(_mm256_add_ps(p[1], p[5]), _mm256_add_ps(p[3], p[7])),
                        );
                        let mut u = [0.0f32; 8];
                        // SAFETY: `u` is 8 writable f32s; `storeu` has no alignment requirement.
                        unsafe { _mm256_storeu_ps(u.as_mut_ptr(), sum) };
                        for (o, v) in yc.iter_mut().zip(u) {
                            *o += s * v;
                        }
                    }
                }
            }
        }
    };
}

float_mm_add8!(f16_mm_add8_tf, 16, cvt_f16x8);
float_mm_add8!(bf16_mm_add8_tf, 16, cvt_bf16x8);
float_mm_add8!(f32_mm_add8_tf, 32, load_ps_bytes);

/// A Q8_0 block unpacked for a batched B update: its 32 int8 values as f32 (exact), in the
/// four groups of eight [`q8_0_block_ps`] reads, and its scale as f32 (exact).
#[derive(Clone, Copy)]
struct Q8Unpacked {
    q: [[f32; 8]; 4],
    d: f32,
}

const Q8_UNPACKED_ZERO: Q8Unpacked = Q8Unpacked {
    q: [[0.0; 8]; 4],
    d: 0.0,
};

/// Blocks a batched Q8_0 B update unpacks per pass (8.25 KiB on the stack).
const BUF_Q8: usize = 64;

/// [`q8_0_block_ps`] of an unpacked block: the same products in the same order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn q8_unpacked_ps(b: &Q8Unpacked, tb: &[__m256; 4]) -> (__m256, __m256) {
    let q = &b.q;
    let p = _mm256_fmadd_ps(load_ps(&q[2]), tb[2], _mm256_mul_ps(load_ps(&q[0]), tb[0]));
    let p1 = _mm256_fmadd_ps(load_ps(&q[3]), tb[3], _mm256_mul_ps(load_ps(&q[1]), tb[1]));
    (_mm256_add_ps(p, p1), _mm256_set1_ps(b.d))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_unpacked_add_rows_tf(w: &[Q8Unpacked], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    q8_0_add_body!(w, bpr, t, s, y, q8_unpacked_ps);
}

/// As [`matmul_float_add`] for Q8_0 rows of `bpr` blocks (`r = 32 * bpr`, at most 256),
/// bit-identical to this table's [`Kernel::matvec_q8_0_add`] per column: blocks are unpacked
/// to f32 once per block of tokens (a few groups of eight rows at a time), and every column
/// runs the same kernel body on them, with loads where it unpacks int8. AVX2 table only: the
/// AVX-512 table has its own Q8_0 add rows, with another summation order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_q8_0_add(
    k: &Kernel,
    w: &[BlockQ8_0],
    bpr: usize,
    rows: usize,
    t: &[f32],
    s: f32,
    y: &mut [f32],
) -> bool {
    if k.isa != Isa::Avx2 || bpr == 0 || 8 * bpr > BUF_Q8 {
        return false;
    }
    // SAFETY: as in `matmul_float`: the table is proof of AVX2, FMA and F16C.
    unsafe { q8_0_mm_add_tf(w, bpr, rows, t, s, y) };
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0_mm_add_tf(w: &[BlockQ8_0], bpr: usize, rows: usize, t: &[f32], s: f32, y: &mut [f32]) {
    let r = bpr * QK;
    let rows = rows.min(w.len() / bpr.max(1));
    let n = (t.len() / r.max(1)).min(y.len() / rows.max(1));
    if rows == 0 || n == 0 {
        return;
    }
    let g = (BUF_Q8 / bpr / 8 * 8).max(8);
    let mut buf = [Q8_UNPACKED_ZERO; BUF_Q8];
    for g0 in (0..rows).step_by(g) {
        let nr = (rows - g0).min(g);
        let (Some(src), Some(dst)) = (w.get(g0 * bpr..(g0 + nr) * bpr), buf.get_mut(..nr * bpr))
        else {
            return;
        };
        for (b, u) in src.iter().zip(dst.iter_mut()) {
            let (qc, _) = b.qs.as_chunks::<8>();
            for (uq, c) in u.q.iter_mut().zip(qc) {
                // SAFETY: `uq` is 8 writable f32s; `storeu` has no alignment requirement.
                unsafe { _mm256_storeu_ps(uq.as_mut_ptr(), i8x8_ps(c)) };
            }
            u.d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                u16::from_le_bytes(b.d) as i32
            )));
        }
        let dst = &*dst;
        for (tc, yc) in t.chunks_exact(r).zip(y.chunks_exact_mut(rows)).take(n) {
            if let Some(yg) = yc.get_mut(g0..g0 + nr) {
                q8_unpacked_add_rows_tf(dst, bpr, tc, s, yg);
            }
        }
    }
}
