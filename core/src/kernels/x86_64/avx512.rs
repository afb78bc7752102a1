//! AVX-512 kernels: F/BW/VL + VNNI (`vpdpbusd`) + VBMI (`vpermt2b`).
//!
//! # Why this shape
//!
//! A ggml block row is an array of 18/20/34-byte structs: scales interleaved with quants.
//! The AVX2 path pays per block and per row for a scalar scale load and f16 conversion,
//! which costs about as much as the integer dot itself. Here one row's blocks are taken four
//! (Q4_0/Q4_1, 72/80 bytes) or two (Q8_0, 68 bytes) at a time with two loads, and
//! - `vpermt2b` gathers the four blocks' 64 quant bytes into one register,
//! - `vpermw` gathers their four `d` (and `m`) into one register for one `vcvtph2ps`,
//! - two `vpdpbusd` (low and high nibbles) produce 16 lanes of i32, four per block.
//!
//! The activation is repacked once per matvec (into a stack buffer, `MAX_BLOCKS` blocks at
//! most) into the same lane order, with its scales already converted to f32 and spread over
//! the block's lanes, so the per-row loop has no activation-side conversions. Q8_0 weights are
//! signed, and `vpdpbusd` wants unsigned x signed: the weight is biased by `^ 0x80`
//! (`w + 128`) and the accumulator starts from the precomputed `-128 * sum(x)` of each
//! lane, which makes the integer result exact (also for `w = -128`). Q4_0 likewise starts
//! from `-8 * sum(x)`.
//!
//! A partial last group is loaded with byte masks (masked-off bytes are not accessed) and
//! its missing blocks have zero activation and zero scales, so they add nothing. Rows with
//! more than `MAX_BLOCKS` blocks (8192 columns) use the AVX2 kernels. Activation quantising,
//! BF16/F32 rows and the LoRA B update also use the AVX2 kernels (AVX2 is implied). F16 rows
//! (the LoRA A product, run for every adapted linear of every token) take two rows per pass
//! here, sharing the activation loads, with the AVX2 kernel's lanes and reduction order so the
//! results are bit-identical to it (A in cache: 38 -> 45 GB/s at r=32, `lora_kernels`).
//!
//! Two rows are computed per pass so the activation loads are shared.

use super::avx2;
#[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
use super::avx2_q;
#[cfg(any(feature = "quant-q5", feature = "quant-k"))]
use super::avx512_q;
use super::prefetch_side;
use crate::kernels::{portable, Isa, Kernel, Side, SideRows};
use crate::quant::{blocks_as_bytes, f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

// With every quant feature on, this table overrides every slot; with fewer, the portable
// table fills the rest (and stays the documented starting point of every ISA table).
#[allow(clippy::needless_update)]
static KERNEL: Kernel = Kernel {
    isa: Isa::Avx512,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q8_0: q8_0_rows,
    f16: f16_rows,
    bf16: avx2::bf16_rows,
    f32: avx2::f32_rows,
    f16_add: avx2::f16_add_rows,
    bf16_add: avx2::bf16_add_rows,
    f32_add: avx2::f32_add_rows,
    q8_0_add: q8_0_add_rows,
    quantize_q8_0: avx2::quantize_q8_0,
    quantize_q8_1: avx2::quantize_q8_1,
    swiglu: super::avx512_act::swiglu,
    exp_shifted: super::avx512_act::exp_shifted,
    attn_scores: super::avx2_attn::scores,
    attn_wsum: super::avx2_attn::wsum,
    #[cfg(feature = "arch-gemma")]
    geglu: super::avx512_act::geglu,
    side: Some(SideRows {
        q4_0: q4_0_rows_side,
        q4_1: q4_1_rows_side,
        q8_0: q8_0_rows_side,
    }),
    // No blocked Q4_0 here: its matvec per column keeps prefill bit-identical to decode.
    mm_q4_0: None,
    mm_q4_1: Some((matmul_q4_1, avx2::MM_COLS)),
    mm_q8_0: Some((matmul_q8_0, avx2::MM_COLS)),
    // Q5_0 and Q6_K run AVX-512 row kernels here, so their blocked matmuls are AVX-512 ones
    // in those kernels' order (`avx512_q`); Q4_K runs the AVX2 row kernel, so it takes the
    // AVX2 blocked matmul.
    #[cfg(feature = "quant-q5")]
    mm_q5_0: Some((avx512_q::matmul_q5_0, avx2::MM_COLS)),
    #[cfg(feature = "quant-q5")]
    mm_q5_1: Some((avx512_q::matmul_q5_1, avx2::MM_COLS)),
    #[cfg(feature = "quant-k")]
    mm_q4_k: Some((super::avx2_mm::matmul_q4_k, avx2::MM_COLS)),
    #[cfg(feature = "quant-k")]
    mm_q6_k: Some((avx512_q::matmul_q6_k, avx2::MM_COLS)),
    mm_float: Some(avx2::matmul_float),
    mm_float_add: Some(avx2::matmul_float_add),
    // The AVX2 batched Q8_0 B update sums in AVX2's order; this table's own Q8_0 add rows
    // differ, so batches run them per column to stay bit-identical to decode.
    mm_q8_0_add: None,
    #[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
    quantize_q8_k: avx2_q::quantize_q8_k,
    #[cfg(feature = "quant-q5")]
    q5_0: avx512_q::q5_0_rows,
    #[cfg(feature = "quant-q5")]
    q5_1: avx512_q::q5_1_rows,
    #[cfg(feature = "quant-k")]
    // AVX2's: an AVX-512 Q4_K ran 5% slower on Zen 4 (see `avx512_q`).
    q4_k: avx2_q::q4_k_rows,
    #[cfg(feature = "quant-k")]
    q6_k: avx512_q::q6_k_rows,
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

/// The AVX-512 table if this CPU and OS support AVX-512 F/BW/VL/VNNI/VBMI (and AVX2).
pub fn detect() -> Option<&'static Kernel> {
    super::features().avx512.then_some(&KERNEL)
}

/// Largest row (in 32-element blocks) the repacked-activation kernels take.
pub(super) const MAX_BLOCKS: usize = 256;

macro_rules! entry {
    ($name:ident, $side:ident, $tf:ident, $fallback:path, $w:ty, $a:ty) => {
        fn $name(w: &[$w], bpr: usize, x: &[$a], y: &mut [f32]) {
            $side(w, bpr, x, y, Side::NONE)
        }

        fn $side(w: &[$w], bpr: usize, x: &[$a], y: &mut [f32], side: Side<'_>) {
            if bpr > MAX_BLOCKS {
                return $fallback(w, bpr, x, y, side);
            }
            // SAFETY: reachable only through `KERNEL`, which `detect` hands out only after
            // checking AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and OS ZMM/opmask support.
            unsafe { $tf(w, bpr, x, y, side) }
        }
    };
}

entry!(
    q4_0_rows,
    q4_0_rows_side,
    q4_0_rows_tf,
    avx2::q4_0_rows_side,
    BlockQ4_0,
    BlockQ8_0
);
entry!(
    q4_1_rows,
    q4_1_rows_side,
    q4_1_rows_tf,
    avx2::q4_1_rows_side,
    BlockQ4_1,
    BlockQ8_1
);
entry!(
    q8_0_rows,
    q8_0_rows_side,
    q8_0_rows_tf,
    avx2::q8_0_rows_side,
    BlockQ8_0,
    BlockQ8_0
);

// ---- constant permutations -------------------------------------------------------------------

/// Byte indices gathering the quants of `G` blocks of `bs` bytes (`off` bytes of header each),
/// `64 / G` bytes per block, from two 64-byte registers (index bit 6 picks the second).
pub(super) const fn qs_index(bs: usize, off: usize, g: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let per = 64 / g;
    let mut i = 0;
    while i < 64 {
        t[i] = (bs * (i / per) + off + i % per) as u8;
        i += 1;
    }
    t
}

/// Word indices: the `d` of block `i` in lane `i`, then (Q4_1) its `m` in lane `4 + i`.
pub(super) const fn dm_index(bs: usize, g: usize, with_m: bool) -> [u16; 32] {
    let mut t = [0u16; 32];
    let mut i = 0;
    while i < g {
        t[i] = (bs / 2 * i) as u16;
        if with_m {
            t[4 + i] = (bs / 2 * i + 1) as u16;
        }
        i += 1;
    }
    t
}

const fn lane_index(per_block: u32) -> [u32; 16] {
    let mut t = [0u32; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = i as u32 / per_block;
        i += 1;
    }
    t
}

static QS_Q4_1: [u8; 64] = qs_index(20, 4, 4);
static QS_Q4_0: [u8; 64] = qs_index(18, 2, 4);
static QS_Q8_0: [u8; 64] = qs_index(34, 2, 4);
static DM_Q4_1: [u16; 32] = dm_index(20, 4, true);
static D_Q4_0: [u16; 32] = dm_index(18, 4, false);
static D_Q8_0: [u16; 32] = dm_index(34, 4, false);
pub(super) static LANES4: [u32; 16] = lane_index(4);

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load_idx<T>(t: &'static [T]) -> __m512i {
    debug_assert!(core::mem::size_of_val(t) == 64);
    // SAFETY: every table passed here is 64 bytes (`[u8; 64]`, `[u16; 32]`, `[u32; 16]`).
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

// ---- loads -----------------------------------------------------------------------------------

/// The first `min(bytes.len(), 128)` bytes of `bytes` as two registers, zero beyond.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load_group(bytes: &[u8]) -> (__m512i, __m512i) {
    let n = bytes.len().min(128);
    let p = bytes.as_ptr();
    let v0 = if n >= 64 {
        // SAFETY: 64 bytes from `p` lie in `bytes`.
        unsafe { _mm512_loadu_si512(p.cast()) }
    } else {
        // SAFETY: only the first `n` bytes (in `bytes`) are enabled; masked-off bytes are not
        // accessed and cannot fault.
        unsafe { _mm512_maskz_loadu_epi8((1u64 << n) - 1, p.cast()) }
    };
    let v1 = if n > 64 {
        let m = if n == 128 { !0 } else { (1u64 << (n - 64)) - 1 };
        // SAFETY: `p + 64` is in bounds (n > 64) and only bytes `64..n` are enabled.
        unsafe { _mm512_maskz_loadu_epi8(m, p.add(64).cast()) }
    } else {
        _mm512_setzero_si512()
    };
    (v0, v1)
}

/// Bytes ahead of the group being read that the matvecs prefetch into L2 (`PREFETCH`) and
/// into L1 (`PREFETCH_L1`). Decode streams every weight once and the hardware prefetcher alone
/// leaves the loads partly exposed: on the dev VM (2026-11-28, SmolLM2 Q4_1, one thread)
/// decode went from 53-57 to 82-89 tokens/s with an L1 prefetch 4096 bytes ahead.
///
/// Two levels since 2026-12-06: an L1 prefetch far ahead helped some shapes and halved others
/// (AMD EPYC Zen 4 VM, `bench/examples/roof.rs`, thread CPU time, weights in the file's 4 KB
/// mapping): Gemma 3's 262144 x 640 Q8_0 head streamed at 8.2-8.7 GB/s with it, 14.7-21 GB/s
/// with the L1 prefetch 256 bytes ahead instead, yet 256 bytes ahead halved 16384 x 1536
/// matrices (Q8_0 19.4 -> 9.6 GB/s). Far ahead into L2 plus near ahead into L1 gave the best
/// of both on every shape measured (head 19.8-20.8 GB/s against a 23-24 GB/s plain-read roof;
/// see the README's roofline table).
const PREFETCH: usize = 4096;
/// See [`PREFETCH`].
const PREFETCH_L1: usize = 256;

/// Hint the cache to fetch the two lines at `PREFETCH` bytes past the start of `bytes` into
/// L2 and the two at `PREFETCH_L1` into L1.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn prefetch_ahead(bytes: &[u8]) {
    // `wrapping_add`: the address may lie past the slice; a prefetch never faults or reads
    // architecturally, so no safety condition applies to the pointer.
    let far = bytes.as_ptr().wrapping_add(PREFETCH);
    _mm_prefetch::<_MM_HINT_T1>(far.cast());
    _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64).cast());
    let near = bytes.as_ptr().wrapping_add(PREFETCH_L1);
    _mm_prefetch::<_MM_HINT_T0>(near.cast());
    _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(64).cast());
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load64(a: &[u8; 64]) -> __m512i {
    // SAFETY: `a` is 64 readable bytes; no alignment requirement.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load16f(a: &[f32; 16]) -> __m512 {
    // SAFETY: `a` is 16 readable f32s; no alignment requirement.
    unsafe { _mm512_loadu_ps(a.as_ptr()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load16i(a: &[i32; 16]) -> __m512i {
    // SAFETY: `a` is 16 readable i32s; no alignment requirement.
    unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn load8f(a: &[f32; 8]) -> __m256 {
    // SAFETY: `a` is 8 readable f32s; no alignment requirement.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

// ---- repacked activations --------------------------------------------------------------------

/// Four activation blocks in the lane order of the 4-bit kernels.
#[derive(Clone, Copy)]
pub(super) struct Act4 {
    /// Elements 0..16 of block i at bytes 16i..16i+16.
    pub(super) lo: [u8; 64],
    /// Elements 16..32 of block i at bytes 16i..16i+16.
    pub(super) hi: [u8; 64],
    /// `d` of block i in lanes 4i..4i+4.
    pub(super) d: [f32; 16],
    /// Q4_1: `s` of block i in lane 4 + i (lanes 0..4 zero); Q4_0: unused.
    pub(super) s: [f32; 8],
    /// Q4_0: per lane, `-8 *` the sum of the 8 activation bytes that lane multiplies.
    pub(super) corr: [i32; 16],
}

pub(super) const ACT4_ZERO: Act4 = Act4 {
    lo: [0; 64],
    hi: [0; 64],
    d: [0.0; 16],
    s: [0.0; 8],
    corr: [0; 16],
};

/// `buf` with every slot set to `zero`, as initialised values. The repack buffers are sized
/// for the longest row (18 KB for `Act4`) but a decode row is usually much shorter (18 blocks
/// for SmolLM2's 576 columns: 1.4 KB); filling the whole array on every call cost ~0.4% of a
/// decode step (dev VM, 2026-11-28), so only the slots a call uses are written.
#[inline]
pub(super) fn zeroed<T: Copy>(buf: &mut [MaybeUninit<T>], zero: T) -> &mut [T] {
    for slot in buf.iter_mut() {
        slot.write(zero);
    }
    // SAFETY: every element of `buf` was initialised just above, and `MaybeUninit<T>` has the
    // size, alignment and layout of `T`; the exclusive borrow of `buf` carries over.
    unsafe { &mut *(buf as *mut [MaybeUninit<T>] as *mut [T]) }
}

pub(super) fn pack4<'a>(
    qs: impl Iterator<Item = (&'a [u8; 32], [u8; 2], [u8; 2])>,
    out: &mut [Act4],
) {
    for (j, (q, d, s)) in qs.enumerate() {
        let (g, i) = (j / 4, j % 4);
        let Some(a) = out.get_mut(g) else { return };
        a.lo[16 * i..16 * i + 16].copy_from_slice(&q[..16]);
        a.hi[16 * i..16 * i + 16].copy_from_slice(&q[16..]);
        a.d[4 * i..4 * i + 4].fill(f16_le(d));
        a.s[4 + i] = f16_le(s);
        for l in 0..4 {
            let sum: i32 = (0..4)
                .map(|b| q[4 * l + b] as i8 as i32 + q[16 + 4 * l + b] as i8 as i32)
                .sum();
            a.corr[4 * i + l] = -8 * sum;
        }
    }
}

// ---- Q4_1 x Q8_1 -----------------------------------------------------------------------------

struct Q4Consts {
    qs: __m512i,
    dm: __m512i,
    lanes: __m512i,
    nib: __m512i,
}

/// One row's contribution from one group of four blocks (`bytes`, up to 80).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q4_1_group(bytes: &[u8], a: &Act4, c: &Q4Consts, acc: &mut __m512, accm: &mut __m256) {
    prefetch_ahead(bytes);
    let (v0, v1) = load_group(bytes);
    let q = _mm512_permutex2var_epi8(v0, c.qs, v1);
    let lo = _mm512_and_si512(q, c.nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), c.nib);
    let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, load64(&a.lo));
    let s = _mm512_dpbusd_epi32(s, hi, load64(&a.hi));
    let dm = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(c.dm, v0)));
    let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(dm));
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, load16f(&a.d)), _mm512_cvtepi32_ps(s), *acc);
    *accm = _mm256_fmadd_ps(dm, load8f(&a.s), *accm);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
pub(super) fn finish(acc: __m512, accm: __m256) -> f32 {
    let m = _mm256_add_ps(accm, _mm512_castps512_ps256(acc));
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1));
    avx2::hsum(_mm256_add_ps(m, hi))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn q4_1_rows_tf(w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32], side: Side<'_>) {
    let mut act = [const { MaybeUninit::<Act4>::uninit() }; MAX_BLOCKS / 4];
    let act = zeroed(&mut act[..bpr.div_ceil(4)], ACT4_ZERO);
    pack4(x.iter().map(|b| (&b.qs, b.d, b.s)), act);
    let c = Q4Consts {
        qs: load_idx(&QS_Q4_1),
        dm: load_idx(&DM_Q4_1),
        lanes: load_idx(&LANES4),
        nib: _mm512_set1_epi8(0x0f),
    };
    let row_bytes = bpr * 20;
    let mut rows = blocks_as_bytes(w).chunks_exact(row_bytes);
    let mut side = side.cursor(y.len().div_ceil(2));
    let mut outs = y.chunks_exact_mut(2);
    for o in &mut outs {
        let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
            break;
        };
        side.step(prefetch_side);
        let (mut a0, mut m0) = (_mm512_setzero_ps(), _mm256_setzero_ps());
        let (mut a1, mut m1) = (_mm512_setzero_ps(), _mm256_setzero_ps());
        for ((g0, g1), a) in r0.chunks(80).zip(r1.chunks(80)).zip(act.iter()) {
            q4_1_group(g0, a, &c, &mut a0, &mut m0);
            q4_1_group(g1, a, &c, &mut a1, &mut m1);
        }
        o[0] = finish(a0, m0);
        o[1] = finish(a1, m1);
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        side.step(prefetch_side);
        let (mut a0, mut m0) = (_mm512_setzero_ps(), _mm256_setzero_ps());
        for (g, a) in r.chunks(80).zip(act.iter()) {
            q4_1_group(g, a, &c, &mut a0, &mut m0);
        }
        *o = finish(a0, m0);
    }
}

// ---- Q4_0 x Q8_0 -----------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q4_0_group(bytes: &[u8], a: &Act4, c: &Q4Consts, acc: &mut __m512) {
    prefetch_ahead(bytes);
    let (v0, v1) = load_group(bytes);
    let q = _mm512_permutex2var_epi8(v0, c.qs, v1);
    let lo = _mm512_and_si512(q, c.nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), c.nib);
    // sum (q - 8) x = sum q x - 8 sum x: start from the precomputed -8 sum x.
    let s = _mm512_dpbusd_epi32(load16i(&a.corr), lo, load64(&a.lo));
    let s = _mm512_dpbusd_epi32(s, hi, load64(&a.hi));
    let d4 = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(c.dm, v0)));
    let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(d4));
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, load16f(&a.d)), _mm512_cvtepi32_ps(s), *acc);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn q4_0_rows_tf(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>) {
    let mut act = [const { MaybeUninit::<Act4>::uninit() }; MAX_BLOCKS / 4];
    let act = zeroed(&mut act[..bpr.div_ceil(4)], ACT4_ZERO);
    pack4(x.iter().map(|b| (&b.qs, b.d, [0, 0])), act);
    let c = Q4Consts {
        qs: load_idx(&QS_Q4_0),
        dm: load_idx(&D_Q4_0),
        lanes: load_idx(&LANES4),
        nib: _mm512_set1_epi8(0x0f),
    };
    let row_bytes = bpr * 18;
    let mut rows = blocks_as_bytes(w).chunks_exact(row_bytes);
    let mut side = side.cursor(y.len().div_ceil(2));
    let mut outs = y.chunks_exact_mut(2);
    for o in &mut outs {
        let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
            break;
        };
        side.step(prefetch_side);
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for ((g0, g1), a) in r0.chunks(72).zip(r1.chunks(72)).zip(act.iter()) {
            q4_0_group(g0, a, &c, &mut a0);
            q4_0_group(g1, a, &c, &mut a1);
        }
        o[0] = _mm512_reduce_add_ps(a0);
        o[1] = _mm512_reduce_add_ps(a1);
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        side.step(prefetch_side);
        let mut a0 = _mm512_setzero_ps();
        for (g, a) in r.chunks(72).zip(act.iter()) {
            q4_0_group(g, a, &c, &mut a0);
        }
        *o = _mm512_reduce_add_ps(a0);
    }
}

// ---- Q8_0 x Q8_0 -----------------------------------------------------------------------------

struct Q8Consts {
    qs: __m512i,
    d: __m512i,
    lanes: __m512i,
    bias: __m512i,
}

/// Four Q8_0 blocks (`bytes`, up to 136) as the Q4 kernels lay out four blocks: `lo` the
/// first 16 quants of each block, `hi` the last 16 (both `+ 128` as unsigned bytes), `d` of
/// block `i` in lanes `4i..4i + 4`. The `hi` halves start 16 bytes later, so they are
/// gathered with the same index from a second (overlapping) load.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_unpack(bytes: &[u8], c: &Q8Consts) -> (__m512i, __m512i, __m512) {
    // The addresses the two-block layout prefetched (each 68-byte half's two lines ahead):
    // one call per 136 bytes cost SmolLM2 Q6_K decode 124 -> 89 tok/s, a second one at 128
    // bytes -> 107; these two keep it (121-125, thread CPU time, dev VM).
    prefetch_ahead(bytes);
    prefetch_ahead(bytes.get(68..).unwrap_or(bytes));
    let ((v0, v1), (u0, u1)) = if bytes.len() >= 136 {
        // A whole group: four plain loads (bytes 0..64, 64..128, 16..80) and one masked
        // 56-byte load (80..136), without `load_group`'s length arithmetic.
        let p = bytes.as_ptr();
        // SAFETY: 136 bytes from `p` lie in `bytes`; the masked load enables only 80..136.
        unsafe {
            (
                (
                    _mm512_loadu_si512(p.cast()),
                    _mm512_loadu_si512(p.add(64).cast()),
                ),
                (
                    _mm512_loadu_si512(p.add(16).cast()),
                    _mm512_maskz_loadu_epi8((1u64 << 56) - 1, p.add(80).cast()),
                ),
            )
        }
    } else {
        (
            load_group(bytes),
            load_group(bytes.get(16..).unwrap_or(&[])),
        )
    };
    let lo = _mm512_xor_si512(_mm512_permutex2var_epi8(v0, c.qs, v1), c.bias);
    let hi = _mm512_xor_si512(_mm512_permutex2var_epi8(u0, c.qs, u1), c.bias);
    let d4 = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
        v0, c.d, v1,
    )));
    (
        lo,
        hi,
        _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(d4)),
    )
}

/// One row's (or one column's) contribution from an unpacked group of four blocks and its
/// packed activations: two `vpdpbusd` from `-128 * sum x` (`Act4::corr` times 16, set by
/// [`pack_q8_0`]), then one scale multiply and FMA per four blocks (the 2-block layout this
/// replaced paid them per two blocks: 64-token prompt matmul 57-59 -> 70-80 GMAC/s,
/// `kernels_cpu mm`, dev VM; SmolLM2 Q6_K prefill 455 -> 480 tok/s thread CPU time, decode
/// unchanged). This changes the AVX-512 table's Q8_0 summation order (allowed across tables,
/// see the cross-table contract); matvec and matmul share it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_step(
    (lo, hi, d): (__m512i, __m512i, __m512),
    (xc, xl, xh, xd): (__m512i, __m512i, __m512i, __m512),
    acc: &mut __m512,
) {
    let s = _mm512_dpbusd_epi32(xc, lo, xl);
    let s = _mm512_dpbusd_epi32(s, hi, xh);
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, xd), _mm512_cvtepi32_ps(s), *acc);
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_load(a: &Act4) -> (__m512i, __m512i, __m512i, __m512) {
    (
        load16i(&a.corr),
        load64(&a.lo),
        load64(&a.hi),
        load16f(&a.d),
    )
}

/// Pack Q8_0 activations as [`pack4`] does, with `corr` (there `-8 * sum x` per lane)
/// times 16: `-128 * sum x`, the offset of the `+ 128` weights.
fn pack_q8_0(x: &[BlockQ8_0], out: &mut [Act4]) {
    pack4(x.iter().map(|b| (&b.qs, b.d, [0, 0])), out);
    for a in out.iter_mut() {
        a.corr = a.corr.map(|v| 16 * v);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn q8_0_rows_tf(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32], side: Side<'_>) {
    let mut act = [const { MaybeUninit::<Act4>::uninit() }; MAX_BLOCKS / 4];
    let act = zeroed(&mut act[..bpr.div_ceil(4)], ACT4_ZERO);
    pack_q8_0(x, act);
    let c = q8_consts();
    let row_bytes = bpr * 34;
    let mut rows = blocks_as_bytes(w).chunks_exact(row_bytes);
    let mut side = side.cursor(y.len().div_ceil(2));
    let mut outs = y.chunks_exact_mut(2);
    for o in &mut outs {
        let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
            break;
        };
        side.step(prefetch_side);
        let (mut a0, mut a1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for ((g0, g1), a) in r0.chunks(136).zip(r1.chunks(136)).zip(act.iter()) {
            let xv = q8_0_load(a);
            q8_0_step(q8_0_unpack(g0, &c), xv, &mut a0);
            q8_0_step(q8_0_unpack(g1, &c), xv, &mut a1);
        }
        o[0] = _mm512_reduce_add_ps(a0);
        o[1] = _mm512_reduce_add_ps(a1);
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        side.step(prefetch_side);
        let mut a0 = _mm512_setzero_ps();
        for (g, a) in r.chunks(136).zip(act.iter()) {
            q8_0_step(q8_0_unpack(g, &c), q8_0_load(a), &mut a0);
        }
        *o = _mm512_reduce_add_ps(a0);
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_consts() -> Q8Consts {
    Q8Consts {
        qs: load_idx(&QS_Q8_0),
        d: load_idx(&D_Q8_0),
        lanes: load_idx(&LANES4),
        bias: _mm512_set1_epi8(-128),
    }
}

// ---- Q8_0 rows added into y (LoRA B) -----------------------------------------------------------

fn q8_0_add_rows(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    // SAFETY: reachable only through `KERNEL`, which `detect` hands out only after checking
    // AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and OS ZMM/opmask support.
    unsafe { q8_0_add_rows_tf(w, bpr, t, s, y) }
}

/// One Q8_0 block times 32 f32 of `t` (`tl`, `th`): `q[0..16] t[0..16] + q[16..32] t[16..32]`
/// in 16 lanes (sign-extended and converted exactly), and the block's `d` broadcast.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_block_ps(b: &BlockQ8_0, tl: __m512, th: __m512) -> (__m512, __m512) {
    // SAFETY: `b.qs` is 32 readable bytes, read as two 16-byte halves; no alignment needed.
    let (ql, qh) = unsafe {
        (
            _mm_loadu_si128(b.qs.as_ptr().cast()),
            _mm_loadu_si128(b.qs.as_ptr().add(16).cast()),
        )
    };
    let ql = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(ql));
    let qh = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qh));
    let p = _mm512_fmadd_ps(qh, th, _mm512_mul_ps(ql, tl));
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(u16::from_le_bytes(b.d) as i32));
    (p, _mm512_broadcastss_ps(d))
}

/// The two 8-lane halves of `z` added.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn fold(z: __m512) -> __m256 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1));
    _mm256_add_ps(_mm512_castps512_ps256(z), hi)
}

/// `y[o] += s * sum_b d_b * dot(q_b, t_b)` for Q8_0 rows of `bpr` blocks against f32 `t`, as
/// `avx2::q8_0_add_rows` with 16-lane registers: half the extend/convert/FMA instructions per
/// block. Eight rows per pass share the `t` loads; their accumulators are folded to 8 lanes
/// and reduced together by `avx2::hsum8x8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn q8_0_add_rows_tf(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    let (t16, _) = t.as_chunks::<16>();
    let tblock = |b: usize| -> (__m512, __m512) {
        match t16.get(2 * b..2 * b + 2) {
            // SAFETY: each chunk is 16 readable f32s; no alignment needed.
            Some([l, h]) => unsafe { (_mm512_loadu_ps(l.as_ptr()), _mm512_loadu_ps(h.as_ptr())) },
            _ => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        }
    };
    let sv = _mm256_set1_ps(s);
    let mut groups = w.chunks_exact(8 * bpr);
    let mut outs = y.chunks_exact_mut(8);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let mut acc = [_mm512_setzero_ps(); 8];
        for b in 0..bpr {
            let (tl, th) = tblock(b);
            for (a, row) in acc.iter_mut().zip(g.chunks_exact(bpr)) {
                if let Some(blk) = row.get(b) {
                    let (p, d) = q8_0_block_ps(blk, tl, th);
                    *a = _mm512_fmadd_ps(d, p, *a);
                }
            }
        }
        let Ok(o) = <&mut [f32; 8]>::try_from(o) else {
            continue;
        };
        let folded = acc.map(|a| fold(a));
        // SAFETY: `o` is 8 readable and writable f32s; `loadu`/`storeu` need no alignment.
        unsafe {
            let v = _mm256_fmadd_ps(avx2::hsum8x8(&folded), sv, _mm256_loadu_ps(o.as_ptr()));
            _mm256_storeu_ps(o.as_mut_ptr(), v);
        }
    }
    for (row, o) in groups
        .remainder()
        .chunks_exact(bpr)
        .zip(outs.into_remainder())
    {
        let mut a = _mm512_setzero_ps();
        for (b, blk) in row.iter().enumerate() {
            let (tl, th) = tblock(b);
            let (p, d) = q8_0_block_ps(blk, tl, th);
            a = _mm512_fmadd_ps(d, p, a);
        }
        *o += s * avx2::hsum(fold(a));
    }
}

// ---- F16 rows (LoRA A) ------------------------------------------------------------------------

fn f16_rows(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    // SAFETY: reachable only through `KERNEL`, which `detect` hands out only after checking
    // AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and OS ZMM/opmask support.
    unsafe { f16_rows_tf(w, cols, x, y) }
}

/// One F16 row's four AVX2 accumulators (see `avx2::f16_rows`) as two ZMM registers: lanes
/// 0..8 of `lo` are accumulator 0, lanes 8..16 accumulator 1, `hi` holds 2 and 3.
struct F16Acc {
    lo: __m512,
    hi: __m512,
}

/// `acc += w[0..32] * x[0..32]`, lane for lane what the AVX2 kernel's four FMAs compute.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn f16_step(w: &[u8; 64], xl: __m512, xh: __m512, acc: &mut F16Acc) {
    // SAFETY: `w` is 64 readable bytes, read as two 32-byte halves; no alignment needed.
    let (wl, wh) = unsafe {
        (
            _mm256_loadu_si256(w.as_ptr().cast()),
            _mm256_loadu_si256(w.as_ptr().add(32).cast()),
        )
    };
    acc.lo = _mm512_fmadd_ps(_mm512_cvtph_ps(wl), xl, acc.lo);
    acc.hi = _mm512_fmadd_ps(_mm512_cvtph_ps(wh), xh, acc.hi);
}

/// Finish a row exactly as `avx2::f16_rows` does: the 8-element steps left over into
/// accumulator 0, `(a0 + a1) + (a2 + a3)`, the horizontal sum, then the scalar tail.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn f16_finish(acc: &F16Acc, row: &[u8], x: &[f32], done: usize) -> f32 {
    let half = |z: __m512| {
        (
            _mm512_castps512_ps256(z),
            _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1)),
        )
    };
    let ((mut a0, a1), (a2, a3)) = (half(acc.lo), half(acc.hi));
    let (w8, wt) = row.get(2 * done..).unwrap_or_default().as_chunks::<16>();
    let (x8, xt) = x.get(done..).unwrap_or_default().as_chunks::<8>();
    for (w, xv) in w8.iter().zip(x8) {
        // SAFETY: `w` is 16 readable bytes and `xv` 8 readable f32s; no alignment needed.
        let (wv, xv) = unsafe {
            (
                _mm_loadu_si128(w.as_ptr().cast()),
                _mm256_loadu_ps(xv.as_ptr()),
            )
        };
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(wv), xv, a0);
    }
    let v = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    let mut s = avx2::hsum(v);
    for (e, &xv) in wt.chunks_exact(2).zip(xt) {
        s += f16_le([e[0], e[1]]) * xv;
    }
    s
}

/// F16 rows against f32 `x`, two rows per pass sharing the activation loads (the LoRA A
/// product: r rows of the input width). Every row's arithmetic is that of `avx2::f16_rows`
/// (same lanes, FMAs and reduction order), so the results are bit-identical to it.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn f16_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    let x = x.get(..cols).unwrap_or_default();
    let (x32, _) = x.as_chunks::<32>();
    let done = 32 * x32.len();
    let zero = || F16Acc {
        lo: _mm512_setzero_ps(),
        hi: _mm512_setzero_ps(),
    };
    let xreg = |c: &[f32; 32]| {
        // SAFETY: `c` is 32 readable f32s; no alignment needed.
        unsafe {
            (
                _mm512_loadu_ps(c.as_ptr()),
                _mm512_loadu_ps(c.as_ptr().add(16)),
            )
        }
    };
    let mut rows = w.chunks_exact(cols * 2);
    let mut outs = y.chunks_exact_mut(2);
    for o in &mut outs {
        let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
            break;
        };
        let (mut a0, mut a1) = (zero(), zero());
        let (w0, _) = r0.as_chunks::<64>();
        let (w1, _) = r1.as_chunks::<64>();
        for ((c0, c1), xc) in w0.iter().zip(w1).zip(x32) {
            let (xl, xh) = xreg(xc);
            f16_step(c0, xl, xh, &mut a0);
            f16_step(c1, xl, xh, &mut a1);
        }
        o[0] = f16_finish(&a0, r0, x, done);
        o[1] = f16_finish(&a1, r1, x, done);
    }
    for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
        let mut a = zero();
        let (wc, _) = r.as_chunks::<64>();
        for (c, xc) in wc.iter().zip(x32) {
            let (xl, xh) = xreg(xc);
            f16_step(c, xl, xh, &mut a);
        }
        *o = f16_finish(&a, r, x, done);
    }
}

// ---- blocked matmul for prompt batches ---------------------------------------------------------

/// `y[c * rows + r] = dot(w row r, x column c)` for `n = x.len() / bpr` columns (each column
/// `bpr` contiguous blocks), or `false` if this kernel does not take the shape (the caller
/// then runs matvecs). `k` must be an AVX-512 kernel table (the proof that the CPU has it).
pub(crate) fn matmul_q4_1(
    k: &Kernel,
    w: &[BlockQ4_1],
    bpr: usize,
    rows: usize,
    x: &[BlockQ8_1],
    y: &mut [f32],
) -> bool {
    if k.isa != Isa::Avx512 || bpr == 0 || bpr > MAX_BLOCKS || w.len() < rows * bpr {
        return false;
    }
    // SAFETY: a `Kernel` with `isa == Avx512` is only ever created by this module's `detect`
    // (crate invariant, see `Kernel`), after checking every feature `matmul_q4_1_tf` enables.
    unsafe { matmul_q4_1_tf(&w[..rows * bpr], bpr, rows, x, y) };
    true
}

/// `$f::<NC>($args)` for the `NC = ncol` columns of a pass (1..=8).
macro_rules! pass_by_cols {
    ($ncol:expr, $f:ident, $($a:expr),*) => {
        match $ncol {
            1 => $f::<1>($($a),*),
            2 => $f::<2>($($a),*),
            3 => $f::<3>($($a),*),
            4 => $f::<4>($($a),*),
            5 => $f::<5>($($a),*),
            6 => $f::<6>($($a),*),
            7 => $f::<7>($($a),*),
            _ => $f::<{ avx2::MM_COLS }>($($a),*),
        }
    };
}

/// The prompt matmuls below take up to [`avx2::MM_COLS`] = 8 columns per pass and weight rows
/// in pairs: one row's loop is bound by the per-column loads of the packed activations, which
/// a pair shares. Only the packed slots a call uses are initialised (an 8-column buffer for
/// the longest rows is 147 KB). Column `c` of a pass sits at `act[c * ng..(c + 1) * ng]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn matmul_q4_1_tf(w: &[BlockQ4_1], bpr: usize, rows: usize, x: &[BlockQ8_1], y: &mut [f32]) {
    let mut buf = [const { MaybeUninit::<Act4>::uninit() }; avx2::MM_COLS * MAX_BLOCKS / 4];
    let ng = bpr.div_ceil(4);
    let act = zeroed(&mut buf[..avx2::MM_COLS * ng], ACT4_ZERO);
    let c = Q4Consts {
        qs: load_idx(&QS_Q4_1),
        dm: load_idx(&DM_Q4_1),
        lanes: load_idx(&LANES4),
        nib: _mm512_set1_epi8(0x0f),
    };
    let wb = blocks_as_bytes(w);
    for (xs, ys) in x
        .chunks(avx2::MM_COLS * bpr)
        .zip(y.chunks_mut(avx2::MM_COLS * rows))
    {
        let ncol = (xs.len() / bpr).min(ys.len() / rows);
        for (a, xc) in act
            .chunks_exact_mut(ng)
            .zip(xs.chunks_exact(bpr))
            .take(ncol)
        {
            a.fill(ACT4_ZERO);
            pack4(xc.iter().map(|b| (&b.qs, b.d, b.s)), a);
        }
        let p = (wb, bpr * 20, rows, &act[..], ng, &c);
        pass_by_cols!(ncol, q4_1_pass, p, ys);
    }
}

/// A group of four Q4_1 blocks unpacked once for all the columns of a pass.
struct Q4Unpacked {
    lo: __m512i,
    hi: __m512i,
    dm: __m256,
    d: __m512,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q4_1_unpack(bytes: &[u8], c: &Q4Consts) -> Q4Unpacked {
    prefetch_ahead(bytes);
    let (v0, v1) = load_group(bytes);
    let q = _mm512_permutex2var_epi8(v0, c.qs, v1);
    let lo = _mm512_and_si512(q, c.nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), c.nib);
    let dm = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutexvar_epi16(c.dm, v0)));
    let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(dm));
    Q4Unpacked { lo, hi, dm, d }
}

/// `q4_1_group`'s arithmetic for one (row, column) on an unpacked group and the column's
/// loaded activation vectors.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q4_1_step(
    u: &Q4Unpacked,
    (xl, xh, xd, xs): (__m512i, __m512i, __m512, __m256),
    acc: &mut __m512,
    accm: &mut __m256,
) {
    let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.lo, xl);
    let s = _mm512_dpbusd_epi32(s, u.hi, xh);
    *acc = _mm512_fmadd_ps(_mm512_mul_ps(u.d, xd), _mm512_cvtepi32_ps(s), *acc);
    *accm = _mm256_fmadd_ps(u.dm, xs, *accm);
}

/// `(weight bytes, row bytes, rows, packed columns, groups per row, constants)`.
type Pass<'a, A, C> = (&'a [u8], usize, usize, &'a [A], usize, &'a C);

// Fixed trip counts over `NC` and the pair index keep the accumulators in registers.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q4_1_pass<const NC: usize>(p: Pass<'_, Act4, Q4Consts>, ys: &mut [f32]) {
    let (wb, row_bytes, rows, act, ng, c) = p;
    let load = |a: &Act4| (load64(&a.lo), load64(&a.hi), load16f(&a.d), load8f(&a.s));
    let mut pairs = wb.chunks_exact(2 * row_bytes);
    let mut r = 0;
    for pair in &mut pairs {
        let (r0, r1) = pair.split_at(row_bytes);
        let mut acc = [[_mm512_setzero_ps(); NC]; 2];
        let mut accm = [[_mm256_setzero_ps(); NC]; 2];
        for (g, (b0, b1)) in r0.chunks(80).zip(r1.chunks(80)).enumerate() {
            let (u0, u1) = (q4_1_unpack(b0, c), q4_1_unpack(b1, c));
            for j in 0..NC {
                let xv = load(&act[j * ng + g]);
                q4_1_step(&u0, xv, &mut acc[0][j], &mut accm[0][j]);
                q4_1_step(&u1, xv, &mut acc[1][j], &mut accm[1][j]);
            }
        }
        for j in 0..NC {
            for h in 0..2 {
                if let Some(o) = ys.get_mut(j * rows + r + h) {
                    *o = finish(acc[h][j], accm[h][j]);
                }
            }
        }
        r += 2;
    }
    for row in pairs.remainder().chunks_exact(row_bytes) {
        let mut acc = [_mm512_setzero_ps(); NC];
        let mut accm = [_mm256_setzero_ps(); NC];
        for (g, bytes) in row.chunks(80).enumerate() {
            let u = q4_1_unpack(bytes, c);
            for j in 0..NC {
                q4_1_step(&u, load(&act[j * ng + g]), &mut acc[j], &mut accm[j]);
            }
        }
        for j in 0..NC {
            if let Some(o) = ys.get_mut(j * rows + r) {
                *o = finish(acc[j], accm[j]);
            }
        }
    }
}

/// As [`matmul_q4_1`] for Q8_0 weights and Q8_0 activations.
pub(crate) fn matmul_q8_0(
    k: &Kernel,
    w: &[BlockQ8_0],
    bpr: usize,
    rows: usize,
    x: &[BlockQ8_0],
    y: &mut [f32],
) -> bool {
    if k.isa != Isa::Avx512 || bpr == 0 || bpr > MAX_BLOCKS || w.len() < rows * bpr {
        return false;
    }
    // SAFETY: as in `matmul_q4_1`.
    unsafe { matmul_q8_0_tf(&w[..rows * bpr], bpr, rows, x, y) };
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
fn matmul_q8_0_tf(w: &[BlockQ8_0], bpr: usize, rows: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    let mut buf = [const { MaybeUninit::<Act4>::uninit() }; avx2::MM_COLS * MAX_BLOCKS / 4];
    let ng = bpr.div_ceil(4);
    let act = zeroed(&mut buf[..avx2::MM_COLS * ng], ACT4_ZERO);
    let c = q8_consts();
    let wb = blocks_as_bytes(w);
    for (xs, ys) in x
        .chunks(avx2::MM_COLS * bpr)
        .zip(y.chunks_mut(avx2::MM_COLS * rows))
    {
        let ncol = (xs.len() / bpr).min(ys.len() / rows);
        for (a, xc) in act
            .chunks_exact_mut(ng)
            .zip(xs.chunks_exact(bpr))
            .take(ncol)
        {
            a.fill(ACT4_ZERO);
            pack_q8_0(xc, a);
        }
        let p = (wb, bpr * 34, rows, &act[..], ng, &c);
        pass_by_cols!(ncol, q8_0_pass, p, ys);
    }
}

// Fixed trip counts over `NC` and the pair index keep the accumulators in registers.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q8_0_pass<const NC: usize>(p: Pass<'_, Act4, Q8Consts>, ys: &mut [f32]) {
    let (wb, row_bytes, rows, act, ng, c) = p;
    let mut pairs = wb.chunks_exact(2 * row_bytes);
    let mut r = 0;
    for pair in &mut pairs {
        let (r0, r1) = pair.split_at(row_bytes);
        let mut acc = [[_mm512_setzero_ps(); NC]; 2];
        for (g, (b0, b1)) in r0.chunks(136).zip(r1.chunks(136)).enumerate() {
            let (u0, u1) = (q8_0_unpack(b0, c), q8_0_unpack(b1, c));
            for j in 0..NC {
                let xv = q8_0_load(&act[j * ng + g]);
                q8_0_step(u0, xv, &mut acc[0][j]);
                q8_0_step(u1, xv, &mut acc[1][j]);
            }
        }
        for j in 0..NC {
            for h in 0..2 {
                if let Some(o) = ys.get_mut(j * rows + r + h) {
                    *o = _mm512_reduce_add_ps(acc[h][j]);
                }
            }
        }
        r += 2;
    }
    for row in pairs.remainder().chunks_exact(row_bytes) {
        let mut acc = [_mm512_setzero_ps(); NC];
        for (g, bytes) in row.chunks(136).enumerate() {
            let u = q8_0_unpack(bytes, c);
            for j in 0..NC {
                q8_0_step(u, q8_0_load(&act[j * ng + g]), &mut acc[j]);
            }
        }
        for j in 0..NC {
            if let Some(o) = ys.get_mut(j * rows + r) {
                *o = _mm512_reduce_add_ps(acc[j]);
            }
        }
    }
}
