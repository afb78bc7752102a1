//! AVX-512 (F/BW/VL + VNNI + VBMI) row kernels for the feature-gated weight types; types not
//! here run the AVX2 kernels of `avx2_q.rs` from the AVX-512 table too.
//!
//! # Q5_0 / Q5_1: four blocks per step, as Q4_0 / Q4_1 in `avx512.rs`
//!
//! A Q5 block is a Q4 block plus four bytes of fifth bits, so these reuse `avx512.rs`'s
//! machinery unchanged: the activation is repacked once per matvec into `Act4` (four blocks'
//! bytes in the kernel's lane order, f32 scales spread over lanes, `-8 * sum(x)` per lane), a
//! group of four weight blocks (88 / 96 bytes) is read with two loads, `vpermt2b` gathers its
//! 64 quant bytes and `vpermt2w` its scales (they reach past the first 64 bytes here). The fifth bits become a byte mask without leaving
//! the vector unit: a second `vpermt2b` copies each `qh` byte to the eight lanes whose element
//! it holds a bit of, and `vptestmb` against `1 << (lane % 8)` turns that into a mask register,
//! which adds `16` to those lanes' nibbles (`vpaddb` under mask). Q5_0's `- 16` is the
//! precomputed `-16 * sum(x)` (twice `Act4::corr`) the `vpdpbusd` chain starts from, so the
//! integer dot stays exact.
//!
//! # Q6_K: 64 elements per register
//!
//! One 64-byte load of `ql` holds, per half super-block, the low nibbles of elements `0..64`
//! (as low nibbles) and `64..128` (as high nibbles); the 32 `qh` bytes broadcast to both
//! 256-bit halves and shifted by a different count per half (`vpsllvw` / `vpsrlvw`) supply
//! the top two bits, so both registers line up with plain 64-byte activation loads (no
//! repacking). Each 128-bit lane is one 16-element scale group: `vpermw` spreads the scales,
//! and one `vpdpwssd` multiplies the `vpmaddubsw` pair sums by them and accumulates.
//!
//! # Blocked prompt matmuls (`matmul_q5_0`, `matmul_q5_1`, `matmul_q6_k`)
//!
//! Prefill runs Q5_0, Q5_1 and Q6_K through blocked matmuls that unpack a weight group (four
//! Q5 blocks) or a Q6_K super-block once for several tokens and
//! then do, per column, exactly what the row kernel does for it (the same exact integer dot,
//! the same float scale, FMA lanes and `finish`), so each column is bit-identical to this
//! table's matvec. The Q5 ones take eight tokens per pass and rows in pairs: a single
//! row's loop is bound by its per-column activation loads (`lo`, `hi`, `d`, `corr`: four
//! 64-byte loads per 128 MACs), which a pair shares. `kernels_cpu mm` (64 tokens, one
//! thread, thread CPU time, GMAC/s, 1536 x 576 / 576 x 1536): Q5_0 50 / 57 (four tokens, one
//! row) -> 64 / 72; Q5_1 25 / 29 (matvec per token) -> 58 / 68. Q4_K runs the AVX2 blocked matmul (`avx2_mm.rs`, whose module doc and
//! `bench/README.md` give the prefill figures: SmolLM2 Q4_K_M 199.6 -> 320.3 tok/s, Gemma-3
//! 270M Q4_K_M 198.6 -> 286.9, one thread).
//!
//! # Measured, and what runs the AVX2 kernel here
//!
//! Zen 4 executes a 512-bit operation as two 256-bit halves, so AVX-512 wins only where it
//! removes instructions (`vpermt2b` gathers, `vptestmb` masks, VNNI's fused multiply-adds),
//! not by width. `kernels_cpu types`, one thread, thread CPU time, dev VM (Zen 4, AVX-512),
//! a 576 x 1536 matrix in cache, three runs each:
//!
//! | type | AVX2 GB/s | AVX-512 GB/s | AVX-512 table runs |
//! | --- | --- | --- | --- |
//! | Q5_0 | 10.5-12.5 | 20.5-20.8 | this file (1.7x) |
//! | Q5_1 | 13.7-14.1 | 21.0-21.3 | this file (1.5x) |
//! | Q6_K | 19.5-22.1 | 28.1-31.1 | this file (1.4x) |
//! | Q4_K | 21.5-21.9 | 20.0-20.7 (written, then dropped) | AVX2 |
//!
//! A Q4_K AVX-512 kernel in Q6_K's style (chunk broadcast to both halves, `vpsrlvw` 0 / 4,
//! `vpdpwssd` scales) halved the instruction count of the inner loop but not the 256-bit
//! operations, and the per-super-block scale/min unpacking is the same in both, so it ran
//! 5% slower than AVX2 and the AVX-512 table keeps the AVX2 Q4_K. Q5_K, Q2_K, Q3_K, IQ4_NL,
//! IQ4_XS and the Q8_K quantiser also run their AVX2 kernels here (not yet tried in AVX-512;
//! they are rare in the files this project runs).

// Shared helpers serve whichever quant families are built; with some features off, some go
// unused.
#![cfg_attr(
    not(all(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4")),
    allow(unused_imports, unused_macros, dead_code)
)]
use super::avx2::MM_COLS;
use super::avx2_q;
use super::avx512::{
    dm_index, finish, load16f, load16i, load64, load_group, load_idx, pack4, prefetch_ahead,
    qs_index, zeroed, Act4, ACT4_ZERO, LANES4, MAX_BLOCKS,
};
use crate::kernels::{Isa, Kernel};
use crate::quant::blocks_as_bytes;
use core::arch::x86_64::*;
use core::mem::MaybeUninit;

/// `fn $name` running `$tf` for rows of at most `MAX_BLOCKS` blocks, `$fallback` otherwise.
macro_rules! entry {
    ($(#[$m:meta])* $name:ident, $tf:ident, $fallback:path, $w:ty, $a:ty) => {
        $(#[$m])*
        pub(in crate::kernels::x86_64) fn $name(w: &[$w], bpr: usize, x: &[$a], y: &mut [f32]) {
            if bpr > MAX_BLOCKS {
                return $fallback(w, bpr, x, y);
            }
            // SAFETY: reachable only through the AVX-512 table, which `avx512::detect` hands
            // out only after checking AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and OS
            // ZMM/opmask support.
            unsafe { $tf(w, bpr, x, y) }
        }
    };
}

/// Byte indices (into two registers) of the `qh` byte holding the fifth bit of each lane's
/// element: lane `p` is element `p % 16` (+16 for the high nibbles, `half = 1`) of block `p / 16`.
const fn qh_index(bs: usize, off: usize, half: usize) -> [u8; 64] {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        t[p] = (bs * (p / 16) + off + 2 * half + (p % 16) / 8) as u8;
        p += 1;
    }
    t
}

/// `1 << (lane % 8)`: the bit of the spread `qh` byte that belongs to each lane.
static BIT_SEL: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        t[p] = 1 << (p % 8);
        p += 1;
    }
    t
};

struct Q5Consts {
    qs: __m512i,
    qh_lo: __m512i,
    qh_hi: __m512i,
    sel: __m512i,
    dm: __m512i,
    lanes: __m512i,
    nib: __m512i,
    b16: __m512i,
}

/// The low and high 5-bit quants (unsigned) of a group of four Q5 blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
#[inline]
fn q5_quants(v0: __m512i, v1: __m512i, c: &Q5Consts) -> (__m512i, __m512i) {
    let q = _mm512_permutex2var_epi8(v0, c.qs, v1);
    let lo = _mm512_and_si512(q, c.nib);
    let hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), c.nib);
    let klo = _mm512_test_epi8_mask(_mm512_permutex2var_epi8(v0, c.qh_lo, v1), c.sel);
    let khi = _mm512_test_epi8_mask(_mm512_permutex2var_epi8(v0, c.qh_hi, v1), c.sel);
    (
        _mm512_mask_add_epi8(lo, klo, lo, c.b16),
        _mm512_mask_add_epi8(hi, khi, hi, c.b16),
    )
}

/// The row loop over groups of four blocks of `$bs` bytes: two rows per pass, `$group` per
/// row and group, `finish` per row.
macro_rules! rows4 {
    ($w:ident, $bpr:ident, $y:ident, $act:ident, $c:ident, $bs:literal, $group:ident) => {{
        let row_bytes = $bpr * $bs;
        let mut rows = blocks_as_bytes($w).chunks_exact(row_bytes.max(1));
        let mut outs = $y.chunks_exact_mut(2);
        for o in &mut outs {
            let (Some(r0), Some(r1)) = (rows.next(), rows.next()) else {
                break;
            };
            let (mut a0, mut m0) = (_mm512_setzero_ps(), _mm256_setzero_ps());
            let (mut a1, mut m1) = (_mm512_setzero_ps(), _mm256_setzero_ps());
            for ((g0, g1), a) in r0.chunks(4 * $bs).zip(r1.chunks(4 * $bs)).zip($act.iter()) {
                $group(g0, a, &$c, &mut a0, &mut m0);
                $group(g1, a, &$c, &mut a1, &mut m1);
            }
            o[0] = finish(a0, m0);
            o[1] = finish(a1, m1);
        }
        for (o, r) in outs.into_remainder().iter_mut().zip(rows) {
            let (mut a0, mut m0) = (_mm512_setzero_ps(), _mm256_setzero_ps());
            for (g, a) in r.chunks(4 * $bs).zip($act.iter()) {
                $group(g, a, &$c, &mut a0, &mut m0);
            }
            *o = finish(a0, m0);
        }
    }};
}

#[cfg(feature = "quant-q5")]
mod q5 {
    use super::*;
    use crate::quant::{BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1};

    static QS_Q5_0: [u8; 64] = qs_index(22, 6, 4);
    static QH_LO_Q5_0: [u8; 64] = qh_index(22, 2, 0);
    static QH_HI_Q5_0: [u8; 64] = qh_index(22, 2, 1);
    static D_Q5_0: [u16; 32] = dm_index(22, 4, false);
    static QS_Q5_1: [u8; 64] = qs_index(24, 8, 4);
    static QH_LO_Q5_1: [u8; 64] = qh_index(24, 4, 0);
    static QH_HI_Q5_1: [u8; 64] = qh_index(24, 4, 1);
    static DM_Q5_1: [u16; 32] = dm_index(24, 4, true);

    entry!(
        q5_0_rows,
        q5_0_rows_tf,
        avx2_q::q5_0_rows,
        BlockQ5_0,
        BlockQ8_0
    );
    entry!(
        q5_1_rows,
        q5_1_rows_tf,
        avx2_q::q5_1_rows,
        BlockQ5_1,
        BlockQ8_1
    );

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn consts(
        qs: &'static [u8; 64],
        lo: &'static [u8; 64],
        hi: &'static [u8; 64],
        dm: &'static [u16; 32],
    ) -> Q5Consts {
        Q5Consts {
            qs: load_idx(qs),
            qh_lo: load_idx(lo),
            qh_hi: load_idx(hi),
            sel: load_idx(&BIT_SEL),
            dm: load_idx(dm),
            lanes: load_idx(&LANES4),
            nib: _mm512_set1_epi8(0x0f),
            b16: _mm512_set1_epi8(0x10),
        }
    }

    /// One row's contribution from one group of four Q5_0 blocks (`bytes`, up to 88).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn q5_0_group(bytes: &[u8], a: &Act4, c: &Q5Consts, acc: &mut __m512, _m: &mut __m256) {
        prefetch_ahead(bytes);
        let (v0, v1) = load_group(bytes);
        let (lo, hi) = q5_quants(v0, v1, c);
        // sum (q - 16) x = sum q x - 16 sum x: start from twice the precomputed -8 sum x.
        let corr = load16i(&a.corr);
        let s = _mm512_dpbusd_epi32(_mm512_add_epi32(corr, corr), lo, load64(&a.lo));
        let s = _mm512_dpbusd_epi32(s, hi, load64(&a.hi));
        let d4 = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
            v0, c.dm, v1,
        )));
        let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(d4));
        *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, load16f(&a.d)), _mm512_cvtepi32_ps(s), *acc);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn q5_0_rows_tf(w: &[BlockQ5_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
        let mut act = [const { MaybeUninit::<Act4>::uninit() }; MAX_BLOCKS / 4];
        let act = zeroed(&mut act[..bpr.div_ceil(4)], ACT4_ZERO);
        pack4(x.iter().take(bpr).map(|b| (&b.qs, b.d, [0; 2])), act);
        let c = consts(&QS_Q5_0, &QH_LO_Q5_0, &QH_HI_Q5_0, &D_Q5_0);
        rows4!(w, bpr, y, act, c, 22, q5_0_group);
    }

    /// One row's contribution from one group of four Q5_1 blocks (`bytes`, up to 96).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn q5_1_group(bytes: &[u8], a: &Act4, c: &Q5Consts, acc: &mut __m512, accm: &mut __m256) {
        prefetch_ahead(bytes);
        let (v0, v1) = load_group(bytes);
        let (lo, hi) = q5_quants(v0, v1, c);
        let s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, load64(&a.lo));
        let s = _mm512_dpbusd_epi32(s, hi, load64(&a.hi));
        let dm = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
            v0, c.dm, v1,
        )));
        let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(dm));
        *acc = _mm512_fmadd_ps(_mm512_mul_ps(d, load16f(&a.d)), _mm512_cvtepi32_ps(s), *acc);
        *accm = _mm256_fmadd_ps(dm, super::super::avx512::load8f(&a.s), *accm);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn q5_1_rows_tf(w: &[BlockQ5_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
        let mut act = [const { MaybeUninit::<Act4>::uninit() }; MAX_BLOCKS / 4];
        let act = zeroed(&mut act[..bpr.div_ceil(4)], ACT4_ZERO);
        pack4(x.iter().take(bpr).map(|b| (&b.qs, b.d, b.s)), act);
        let c = consts(&QS_Q5_1, &QH_LO_Q5_1, &QH_HI_Q5_1, &DM_Q5_1);
        rows4!(w, bpr, y, act, c, 24, q5_1_group);
    }

    /// Blocked `Y = W X` for Q5_0 weights and Q8_0 activations (prompt tokens; the shapes of
    /// `avx512::matmul_q4_1`): a group of four weight blocks is loaded and unpacked once for
    /// up to [`MM_COLS`] = 8 tokens, each column's activations packed once per pass as the
    /// matvec packs them. Per (row, column) the arithmetic is `q5_0_group`'s (the same exact
    /// integer dot, the same `d_w * d_x` lanes and FMA in group order, and `finish` with a
    /// zero `m`), so every column is bit-identical to this table's matvec. `false` if `k` is
    /// not the AVX-512 table or the shape does not fit.
    pub(in crate::kernels::x86_64) fn matmul_q5_0(
        k: &Kernel,
        w: &[BlockQ5_0],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_0],
        y: &mut [f32],
    ) -> bool {
        if k.isa != Isa::Avx512 || bpr == 0 || bpr > MAX_BLOCKS || w.len() < rows * bpr {
            return false;
        }
        // SAFETY: a `Kernel` with `isa == Avx512` is only ever created by `avx512::detect`
        // (crate invariant, see `Kernel`), after checking every feature the kernel enables.
        unsafe { matmul_q5_tf::<false>(blocks_as_bytes(&w[..rows * bpr]), bpr, rows, x, y) };
        true
    }

    /// As [`matmul_q5_0`] for Q5_1 weights and Q8_1 activations (the per-column `m_w s_x`
    /// lanes as `q5_1_group` accumulates them).
    pub(in crate::kernels::x86_64) fn matmul_q5_1(
        k: &Kernel,
        w: &[BlockQ5_1],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_1],
        y: &mut [f32],
    ) -> bool {
        if k.isa != Isa::Avx512 || bpr == 0 || bpr > MAX_BLOCKS || w.len() < rows * bpr {
            return false;
        }
        // SAFETY: as in `matmul_q5_0`.
        unsafe { matmul_q5_tf::<true>(blocks_as_bytes(&w[..rows * bpr]), bpr, rows, x, y) };
        true
    }

    /// What the Q5 matmul needs of an activation block: Q8_0 and Q8_1 alike.
    pub(super) trait Q8Act {
        fn parts(&self) -> (&[u8; 32], [u8; 2], [u8; 2]);
    }
    impl Q8Act for BlockQ8_0 {
        fn parts(&self) -> (&[u8; 32], [u8; 2], [u8; 2]) {
            (&self.qs, self.d, [0; 2])
        }
    }
    impl Q8Act for BlockQ8_1 {
        fn parts(&self) -> (&[u8; 32], [u8; 2], [u8; 2]) {
            (&self.qs, self.d, self.s)
        }
    }

    /// The Q5 matmul body: `Q51` picks Q5_1 (24-byte blocks, `d` and `m`, no `- 16`) over
    /// Q5_0 (22-byte blocks, the `- 16` folded into the packed `corr`). The packed columns of
    /// a pass sit at `act[c * ng..(c + 1) * ng]`; only the slots a call uses are initialised
    /// (a whole 8 x 64-group buffer is 147 KB).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn matmul_q5_tf<const Q51: bool>(
        wb: &[u8],
        bpr: usize,
        rows: usize,
        x: &[impl Q8Act],
        y: &mut [f32],
    ) {
        let mut buf = [const { MaybeUninit::<Act4>::uninit() }; MM_COLS * MAX_BLOCKS / 4];
        let ng = bpr.div_ceil(4);
        let act = zeroed(&mut buf[..MM_COLS * ng], ACT4_ZERO);
        let c = match Q51 {
            true => consts(&QS_Q5_1, &QH_LO_Q5_1, &QH_HI_Q5_1, &DM_Q5_1),
            false => consts(&QS_Q5_0, &QH_LO_Q5_0, &QH_HI_Q5_0, &D_Q5_0),
        };
        let bs = if Q51 { 24 } else { 22 };
        for (xs, ys) in x.chunks(MM_COLS * bpr).zip(y.chunks_mut(MM_COLS * rows)) {
            let ncol = (xs.len() / bpr).min(ys.len() / rows);
            for (a, xc) in act
                .chunks_exact_mut(ng)
                .zip(xs.chunks_exact(bpr))
                .take(ncol)
            {
                a.fill(ACT4_ZERO);
                pack4(xc.iter().map(Q8Act::parts), a);
                if !Q51 {
                    // `q5_0_group` starts its dot from `2 * corr` (`-16 * sum x`): the same
                    // integer, formed once per pass instead of once per row.
                    for g in a.iter_mut() {
                        g.corr = g.corr.map(|v| 2 * v);
                    }
                }
            }
            let p = (wb, bpr * bs, rows, &act[..], ng, &c);
            match ncol {
                1 => q5_pass::<1, Q51>(p, ys),
                2 => q5_pass::<2, Q51>(p, ys),
                3 => q5_pass::<3, Q51>(p, ys),
                4 => q5_pass::<4, Q51>(p, ys),
                5 => q5_pass::<5, Q51>(p, ys),
                6 => q5_pass::<6, Q51>(p, ys),
                7 => q5_pass::<7, Q51>(p, ys),
                _ => q5_pass::<MM_COLS, Q51>(p, ys),
            }
        }
    }

    /// `(weight bytes, row bytes, rows, packed columns, groups per row, constants)`.
    type Pass<'a> = (&'a [u8], usize, usize, &'a [Act4], usize, &'a Q5Consts);

    /// A group of four Q5 blocks unpacked once for all the columns of a pass: the low and
    /// high quants, the f16 scales (and Q5_1 mins) as f32, and `d` spread over the lanes.
    struct Unpacked {
        lo: __m512i,
        hi: __m512i,
        dm: __m256,
        d: __m512,
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn unpack(bytes: &[u8], c: &Q5Consts) -> Unpacked {
        prefetch_ahead(bytes);
        let (v0, v1) = load_group(bytes);
        let (lo, hi) = q5_quants(v0, v1, c);
        let dm = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi16(
            v0, c.dm, v1,
        )));
        let d = _mm512_permutexvar_ps(c.lanes, _mm512_castps256_ps512(dm));
        Unpacked { lo, hi, dm, d }
    }

    /// One (row, column) step: `q5_0_group` / `q5_1_group`'s arithmetic on an unpacked group
    /// and the column's activation loads (shared by the rows of a pair).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn step<const Q51: bool>(
        u: &Unpacked,
        s0: __m512i,
        (xl, xh, xd, xs): (__m512i, __m512i, __m512, __m256),
        acc: &mut __m512,
        accm: &mut __m256,
    ) {
        let s = _mm512_dpbusd_epi32(s0, u.lo, xl);
        let s = _mm512_dpbusd_epi32(s, u.hi, xh);
        *acc = _mm512_fmadd_ps(_mm512_mul_ps(u.d, xd), _mm512_cvtepi32_ps(s), *acc);
        if Q51 {
            *accm = _mm256_fmadd_ps(u.dm, xs, *accm);
        }
    }

    /// One pass of `NC` columns over every row, rows in pairs (each column's activation
    /// vectors are loaded once for both rows: the loads, not the arithmetic, bound a single
    /// row's loop).
    // Fixed trip counts over `NC` and the pair index keep the accumulators in registers.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn q5_pass<const NC: usize, const Q51: bool>(p: Pass<'_>, ys: &mut [f32]) {
        let (wb, row_bytes, rows, act, ng, c) = p;
        let gb = if Q51 { 96 } else { 88 };
        let load = |a: &Act4| {
            let s0 = match Q51 {
                true => _mm512_setzero_si512(),
                false => load16i(&a.corr),
            };
            let xs = match Q51 {
                true => super::super::avx512::load8f(&a.s),
                false => _mm256_setzero_ps(),
            };
            (s0, (load64(&a.lo), load64(&a.hi), load16f(&a.d), xs))
        };
        let mut pairs = wb.chunks_exact(2 * row_bytes);
        let mut r = 0;
        for pair in &mut pairs {
            let (r0, r1) = pair.split_at(row_bytes);
            let mut acc = [[_mm512_setzero_ps(); NC]; 2];
            let mut accm = [[_mm256_setzero_ps(); NC]; 2];
            for (g, (b0, b1)) in r0.chunks(gb).zip(r1.chunks(gb)).enumerate() {
                let u0 = unpack(b0, c);
                let u1 = unpack(b1, c);
                for j in 0..NC {
                    let (s0, x) = load(&act[j * ng + g]);
                    step::<Q51>(&u0, s0, x, &mut acc[0][j], &mut accm[0][j]);
                    step::<Q51>(&u1, s0, x, &mut acc[1][j], &mut accm[1][j]);
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
            for (g, bytes) in row.chunks(gb).enumerate() {
                let u = unpack(bytes, c);
                for j in 0..NC {
                    let (s0, x) = load(&act[j * ng + g]);
                    step::<Q51>(&u, s0, x, &mut acc[j], &mut accm[j]);
                }
            }
            for j in 0..NC {
                if let Some(o) = ys.get_mut(j * rows + r) {
                    *o = finish(acc[j], accm[j]);
                }
            }
            r += 1;
        }
    }
}
#[cfg(feature = "quant-q5")]
pub(in crate::kernels::x86_64) use q5::*;

// ---- K-quants --------------------------------------------------------------------------------

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

#[cfg(feature = "quant-k")]
mod k {
    use super::super::avx2::{load16, load32};
    use super::super::avx2_q::f16_le;
    use super::super::avx512::finish;
    use super::*;
    use crate::quant::{BlockQ6_K, BlockQ8_K};

    /// `fn $name` entering `$tf` (no row-length limit: nothing is repacked).
    macro_rules! entry_k {
        ($name:ident, $tf:ident, $w:ty) => {
            pub(in crate::kernels::x86_64) fn $name(
                w: &[$w],
                bpr: usize,
                x: &[BlockQ8_K],
                y: &mut [f32],
            ) {
                // SAFETY: reachable only through the AVX-512 table, which `avx512::detect`
                // hands out only after checking AVX-512 F/BW/VL/VNNI/VBMI, AVX2, FMA, F16C and
                // OS ZMM/opmask support.
                unsafe { $tf(w, bpr, x, y) }
            }
        };
    }

    entry_k!(q6_k_rows, q6_k_rows_tf, BlockQ6_K);

    /// Blocks the rows `w` and `x` all hold (the drivers pass exactly `bpr` of each).
    #[inline(always)]
    fn blocks<W, A, const R: usize>(w: &[&[W]; R], x: &[A]) -> usize {
        w.iter().map(|r| r.len()).fold(x.len(), usize::min)
    }

    /// `vpermw` indices: each 128-bit lane `l` of register `v` takes word `4v + l` (Q6_K: four
    /// 16-element scale groups per 64-element register).
    const fn quarters(v: u16) -> [u16; 32] {
        let mut t = [0u16; 32];
        let mut i = 0;
        while i < 32 {
            t[i] = 4 * v + i as u16 / 8;
            i += 1;
        }
        t
    }

    static IDX6: [[u16; 32]; 4] = [quarters(0), quarters(1), quarters(2), quarters(3)];

    /// Per-word shift counts: `a` in the low 256 bits, `b` in the high.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    #[inline]
    fn counts(a: i16, b: i16) -> __m512i {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi16(a)),
            _mm256_set1_epi16(b),
        )
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn q6_k_rows_tf(w: &[BlockQ6_K], bpr: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        rows!(w, bpr, x, y, dot_q6_k);
    }

    /// Q6_K: per half, one 64-byte load of `ql` holds the low nibbles of elements `0..64` (low
    /// nibbles) and `64..128` (high nibbles); the 32 `qh` bytes broadcast to both halves and
    /// shifted per half (`vpsllvw` / `vpsrlvw`) give the top two bits, so both registers line
    /// up with contiguous activation bytes. Unsigned `q` (0..63), the `- 32` folded in once per
    /// super-block through `bsums` as in the AVX2 kernel; each 128-bit lane is one scale group.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn dot_q6_k<const R: usize>(w: [&[BlockQ6_K]; R], x: &[BlockQ8_K]) -> [f32; R] {
        let mut acc = [_mm512_setzero_ps(); R];
        let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
        let (shl, shr) = (counts(4, 2), counts(0, 2));
        for (i, b) in x[..blocks(&w, x)].iter().enumerate() {
            let (yq, _) = b.qs.as_chunks::<64>();
            let bs = load32(&b.bsums);
            let mut sc = [_mm512_setzero_si512(); R];
            let mut isum = [_mm512_setzero_si512(); R];
            for r in 0..R {
                let a = &w[r][i];
                let ab = blocks_as_bytes(core::slice::from_ref(a));
                prefetch_ahead(ab);
                prefetch_ahead(&ab[128..]);
                let s16 = _mm256_cvtepi8_epi16(load16(&a.scales));
                sc[r] = _mm512_castsi256_si512(s16);
                // 32 * sum_g scale_g * bsum_g: the `- 32` of every quant.
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(s16, bs));
                isum[r] = _mm512_sub_epi32(isum[r], _mm512_zextsi256_si512(corr));
            }
            for h in 0..2 {
                let (y01, y23) = (load64(&yq[2 * h]), load64(&yq[2 * h + 1]));
                let (i01, i23) = (load_idx(&IDX6[2 * h]), load_idx(&IDX6[2 * h + 1]));
                for r in 0..R {
                    let a = &w[r][i];
                    let (ql, _) = a.ql.as_chunks::<64>();
                    let (qh, _) = a.qh.as_chunks::<32>();
                    let l = load64(&ql[h]);
                    let hb = _mm512_broadcast_i64x4(load32(&qh[h]));
                    let q01 = _mm512_or_si512(
                        _mm512_and_si512(l, m4),
                        _mm512_and_si512(_mm512_sllv_epi16(hb, shl), m30),
                    );
                    let q23 = _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
                        _mm512_and_si512(_mm512_srlv_epi16(hb, shr), m30),
                    );
                    let p01 = _mm512_maddubs_epi16(q01, y01);
                    let p23 = _mm512_maddubs_epi16(q23, y23);
                    isum[r] =
                        _mm512_dpwssd_epi32(isum[r], p01, _mm512_permutexvar_epi16(i01, sc[r]));
                    isum[r] =
                        _mm512_dpwssd_epi32(isum[r], p23, _mm512_permutexvar_epi16(i23, sc[r]));
                }
            }
            for r in 0..R {
                let d = _mm512_set1_ps(f16_le(w[r][i].d) * b.d());
                acc[r] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum[r]), acc[r]);
            }
        }
        let mut out = [0.0; R];
        for r in 0..R {
            out[r] = finish(acc[r], _mm256_setzero_ps());
        }
        out
    }

    /// Blocked `Y = W X` for Q6_K weights and Q8_K activations (prompt tokens; shapes as
    /// `avx512::matmul_q4_1`): a super-block is unpacked once (`dot_q6_k`'s four quant
    /// registers and four scale spreads) for up to [`MM_COLS`] = 8 tokens, whose Q8_K blocks
    /// are read where they lie. Per (row, column) the arithmetic is `dot_q6_k`'s: the same
    /// exact integer dot (its terms added in another order, which integers allow), the same
    /// scalar `f16(d_w) * d_x`, FMA and `finish`, so every column is bit-identical to this
    /// table's matvec. `false` if `k` is not the AVX-512 table or the shape does not fit.
    pub(in crate::kernels::x86_64) fn matmul_q6_k(
        k: &Kernel,
        w: &[BlockQ6_K],
        bpr: usize,
        rows: usize,
        x: &[BlockQ8_K],
        y: &mut [f32],
    ) -> bool {
        if k.isa != Isa::Avx512 || bpr == 0 || w.len() < rows * bpr {
            return false;
        }
        // SAFETY: as in `matmul_q5_0`.
        unsafe { matmul_q6_k_tf(&w[..rows * bpr], bpr, rows, x, y) };
        true
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx2,fma,f16c")]
    fn matmul_q6_k_tf(w: &[BlockQ6_K], bpr: usize, rows: usize, x: &[BlockQ8_K], y: &mut [f32]) {
        let (m4, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
        let (shl, shr) = (counts(4, 2), counts(0, 2));
        let idx = [
            load_idx(&IDX6[0]),
            load_idx(&IDX6[1]),
            load_idx(&IDX6[2]),
            load_idx(&IDX6[3]),
        ];
        for (xs, ys) in x.chunks(MM_COLS * bpr).zip(y.chunks_mut(MM_COLS * rows)) {
            let ncol = (xs.len() / bpr).min(ys.len() / rows);
            let cols: [&[BlockQ8_K]; MM_COLS] = core::array::from_fn(|c| match c < ncol {
                true => xs.get(c * bpr..(c + 1) * bpr).unwrap_or(&[]),
                false => &[],
            });
            for (r, row) in w.chunks_exact(bpr).take(rows).enumerate() {
                let mut acc = [_mm512_setzero_ps(); MM_COLS];
                for (i, a) in row.iter().enumerate() {
                    let ab = blocks_as_bytes(core::slice::from_ref(a));
                    prefetch_ahead(ab);
                    prefetch_ahead(&ab[128..]);
                    let s16 = _mm256_cvtepi8_epi16(load16(&a.scales));
                    let sc = _mm512_castsi256_si512(s16);
                    let (ql, _) = a.ql.as_chunks::<64>();
                    let (qh, _) = a.qh.as_chunks::<32>();
                    let mut q = [_mm512_setzero_si512(); 4];
                    for h in 0..2 {
                        let l = load64(&ql[h]);
                        let hb = _mm512_broadcast_i64x4(load32(&qh[h]));
                        q[2 * h] = _mm512_or_si512(
                            _mm512_and_si512(l, m4),
                            _mm512_and_si512(_mm512_sllv_epi16(hb, shl), m30),
                        );
                        q[2 * h + 1] = _mm512_or_si512(
                            _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4),
                            _mm512_and_si512(_mm512_srlv_epi16(hb, shr), m30),
                        );
                    }
                    let s = idx.map(|i| _mm512_permutexvar_epi16(i, sc));
                    let dw = f16_le(a.d);
                    for (acc, col) in acc.iter_mut().zip(&cols) {
                        let Some(b) = col.get(i) else { continue };
                        let (yq, _) = b.qs.as_chunks::<64>();
                        // 32 * sum_g scale_g * bsum_g: the `- 32` of every quant.
                        let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(s16, load32(&b.bsums)));
                        let mut isum =
                            _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_zextsi256_si512(corr));
                        for ((q, s), y) in q.iter().zip(&s).zip(yq) {
                            let p = _mm512_maddubs_epi16(*q, load64(y));
                            isum = _mm512_dpwssd_epi32(isum, p, *s);
                        }
                        let d = _mm512_set1_ps(dw * b.d());
                        *acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), *acc);
                    }
                }
                for (j, a) in acc.iter().take(ncol).enumerate() {
                    if let Some(o) = ys.get_mut(j * rows + r) {
                        *o = finish(*a, _mm256_setzero_ps());
                    }
                }
            }
        }
    }
}
#[cfg(feature = "quant-k")]
pub(in crate::kernels::x86_64) use k::*;
