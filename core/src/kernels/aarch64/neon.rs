//! aarch64 Advanced SIMD (NEON) kernels.
//!
//! Quantised dots widen i8 x i8 products to i16 (`smull`/`smull2`; `|q_w q_x| <= 128 * 127`
//! fits) and pairwise-add them into i32 lanes (`sadalp`), then one `fmla` by the block scale.
//! With the dot-product extension, `sdot` does the multiply and the 4-way add in one
//! instruction ([`Isa::NeonDot`]). Its intrinsics are still unstable in Rust 1.95
//! (`stdarch_neon_dotprod`), so it is one line of `asm!` in a function compiled with the
//! `dotprod` target feature (stable), handed out only when the CPU reports it.
//!
//! The Q8_0/Q8_1 activation quantisers use `fcvtas` (round to nearest, ties away from zero),
//! which is exactly C's `roundf` that ggml's reference quantiser calls, so they are bit-exact.
//! (Q8_K's reference rounds half to even; its NEON quantiser, in `neon_q.rs`, uses `fcvtns`.)
//!
//! The row kernels of the types behind features (Q5_0/Q5_1, Q2_K..Q6_K, IQ4_NL/IQ4_XS) and the
//! Q8_K quantiser live in `neon_q.rs`, which explains their shapes; the two tables below take
//! them with one line per type.
//!
//! F16 weights widen to f32 with `fcvtl`/`fcvtl2` (base Armv8-A Advanced SIMD, no FP16
//! extension needed), written as `asm!` because the f16 vector types are unstable in Rust
//! 1.95. That serves the F16 rows (base matvec of F16 models, LoRA A of F16 adapters: two rows
//! per pass sharing the activation loads, four accumulators each) and the short rows of a
//! LoRA B update (four rows per pass, one reduction for all four).
//!
//! The LoRA B update of a Q8_0 B keeps `t` in f32: quants widen exactly (`sxtl` to i16 and
//! i32, `scvtf`) and meet `t` in `fmla`; four rows per pass share each block's `t` registers
//! and convert their four f16 scales with one `fcvtl`.

#[cfg(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4"))]
use super::neon_q;
use crate::kernels::{portable, Isa, Kernel};
use crate::quant::{f16_le, to_f16_le, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use core::arch::aarch64::*;

static KERNEL: Kernel = Kernel {
    isa: Isa::Neon,
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
    #[cfg(any(feature = "quant-k", feature = "quant-iq4"))]
    quantize_q8_k: neon_q::quantize_q8_k,
    #[cfg(feature = "quant-q5")]
    q5_0: neon_q::q5_0_rows,
    #[cfg(feature = "quant-k")]
    q4_k: neon_q::q4_k_rows,
    #[cfg(feature = "quant-k")]
    q6_k: neon_q::q6_k_rows,
    #[cfg(feature = "quant-q5")]
    q5_1: neon_q::q5_1_rows,
    #[cfg(feature = "quant-k")]
    q5_k: neon_q::q5_k_rows,
    #[cfg(feature = "quant-k")]
    q3_k: neon_q::q3_k_rows,
    #[cfg(feature = "quant-k")]
    q2_k: neon_q::q2_k_rows,
    #[cfg(feature = "quant-iq4")]
    iq4_nl: neon_q::iq4_nl_rows,
    #[cfg(feature = "quant-iq4")]
    iq4_xs: neon_q::iq4_xs_rows,
    ..portable::KERNEL
};

static KERNEL_DOT: Kernel = Kernel {
    isa: Isa::NeonDot,
    q4_0: q4_0_rows_dot,
    q4_1: q4_1_rows_dot,
    q8_0: q8_0_rows_dot,
    #[cfg(feature = "quant-q5")]
    q5_0: neon_q::q5_0_rows_dot,
    #[cfg(feature = "quant-k")]
    q4_k: neon_q::q4_k_rows_dot,
    #[cfg(feature = "quant-k")]
    q6_k: neon_q::q6_k_rows_dot,
    #[cfg(feature = "quant-q5")]
    q5_1: neon_q::q5_1_rows_dot,
    #[cfg(feature = "quant-k")]
    q5_k: neon_q::q5_k_rows_dot,
    #[cfg(feature = "quant-k")]
    q3_k: neon_q::q3_k_rows_dot,
    #[cfg(feature = "quant-k")]
    q2_k: neon_q::q2_k_rows_dot,
    #[cfg(feature = "quant-iq4")]
    iq4_nl: neon_q::iq4_nl_rows_dot,
    #[cfg(feature = "quant-iq4")]
    iq4_xs: neon_q::iq4_xs_rows_dot,
    ..KERNEL
};

/// The NEON table where the target has NEON (every aarch64 Linux/macOS target; checked at run
/// time under `std`, at compile time otherwise).
pub fn detect() -> Option<&'static Kernel> {
    #[cfg(feature = "std")]
    let has = std::arch::is_aarch64_feature_detected!("neon");
    #[cfg(not(feature = "std"))]
    let has = cfg!(target_feature = "neon");
    has.then_some(&KERNEL)
}

/// The NEON + `sdot` table where the CPU has the dot-product extension.
pub fn detect_dotprod() -> Option<&'static Kernel> {
    #[cfg(feature = "std")]
    let has = std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod");
    #[cfg(not(feature = "std"))]
    let has = cfg!(all(target_feature = "neon", target_feature = "dotprod"));
    has.then_some(&KERNEL_DOT)
}

macro_rules! entry {
    ($name:ident, $tf:ident, ($($a:ident: $t:ty),*)) => {
        fn $name($($a: $t),*) {
            // SAFETY: reachable only through `KERNEL` / `KERNEL_DOT`, which `detect` /
            // `detect_dotprod` hand out only when the CPU has NEON (and, for the `_dot` entries,
            // the dot-product extension).
            unsafe { $tf($($a),*) }
        }
    };
}

entry!(q4_0_rows, q4_0_rows_tf, (w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
entry!(q4_1_rows, q4_1_rows_tf, (w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]));
entry!(q8_0_rows, q8_0_rows_tf, (w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
entry!(q4_0_rows_dot, q4_0_rows_dot_tf, (w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
entry!(q4_1_rows_dot, q4_1_rows_dot_tf, (w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]));
entry!(q8_0_rows_dot, q8_0_rows_dot_tf, (w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]));
entry!(f16_rows, f16_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(bf16_rows, bf16_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(f32_rows, f32_rows_tf, (w: &[u8], cols: usize, x: &[f32], y: &mut [f32]));
entry!(f16_add_rows, f16_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(bf16_add_rows, bf16_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(f32_add_rows, f32_add_rows_tf, (w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(q8_0_add_rows, q8_0_add_rows_tf, (w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]));
entry!(quantize_q8_0, quantize_q8_0_tf, (x: &[f32], y: &mut [BlockQ8_0]));
entry!(quantize_q8_1, quantize_q8_1_tf, (x: &[f32], y: &mut [BlockQ8_1]));

#[target_feature(enable = "neon")]
#[inline]
pub(super) fn ld_u8(a: &[u8; 16]) -> uint8x16_t {
    // SAFETY: `a` is 16 readable bytes; `ld1` has no alignment requirement.
    unsafe { vld1q_u8(a.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn ld_s8(a: &[u8], at: usize) -> int8x16_t {
    let a: &[u8; 16] = match a.get(at..at + 16).and_then(|s| s.try_into().ok()) {
        Some(a) => a,
        None => return vdupq_n_s8(0),
    };
    vreinterpretq_s8_u8(ld_u8(a))
}

#[target_feature(enable = "neon")]
#[inline]
fn ld_f32(a: &[f32; 4]) -> float32x4_t {
    // SAFETY: `a` is 4 readable f32s; no alignment requirement.
    unsafe { vld1q_f32(a.as_ptr()) }
}

/// Sum of `a * b` over 16 i8 lanes, into 4 i32 lanes added to `acc`.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn mla16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_high_s8(a, b);
    vpadalq_s16(vpadalq_s16(acc, p0), p1)
}

/// The 32 quants of a 4-bit block as (elements 0..16, elements 16..32), unsigned 0..=15.
#[target_feature(enable = "neon")]
#[inline]
pub(super) fn nibbles(qs: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    let q = ld_u8(qs);
    (
        vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))),
        vreinterpretq_s8_u8(vshrq_n_u8(q, 4)),
    )
}

/// `sdot`: each i32 lane of `acc` += the dot of the corresponding 4 i8 of `a` and `b`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
pub(super) fn sdot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut r = acc;
    // SAFETY: one register-only instruction (no memory, no flags); `dotprod` is enabled for
    // this function, and it is only reached through `KERNEL_DOT` (see `detect_dotprod`).
    unsafe {
        core::arch::asm!(
            "sdot {r:v}.4s, {a:v}.16b, {b:v}.16b",
            r = inout(vreg) r,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    r
}

/// The quantised rows, once with `smull`/`sadalp` (`$mla = mla16`) and once with `sdot`.
macro_rules! quant_rows {
    ($feat:literal, $mla:ident, $q4_0:ident, $q4_1:ident, $q8_0:ident) => {
        #[target_feature(enable = $feat)]
        fn $q4_0(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
            for (row, o) in w.chunks_exact(bpr).zip(y) {
                let mut acc = vdupq_n_f32(0.0);
                for (a, b) in row.iter().zip(x) {
                    let (lo, hi) = nibbles(&a.qs);
                    let eight = vdupq_n_s8(8);
                    let s = $mla(vdupq_n_s32(0), vsubq_s8(lo, eight), ld_s8(&b.qs, 0));
                    let s = $mla(s, vsubq_s8(hi, eight), ld_s8(&b.qs, 16));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(a.d) * f16_le(b.d));
                }
                *o = vaddvq_f32(acc);
            }
        }

        #[target_feature(enable = $feat)]
        fn $q4_1(w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
            for (row, o) in w.chunks_exact(bpr).zip(y) {
                let mut acc = vdupq_n_f32(0.0);
                let mut ms = 0.0f32;
                for (a, b) in row.iter().zip(x) {
                    let (lo, hi) = nibbles(&a.qs);
                    let s = $mla(vdupq_n_s32(0), lo, ld_s8(&b.qs, 0));
                    let s = $mla(s, hi, ld_s8(&b.qs, 16));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(a.d) * f16_le(b.d));
                    ms += f16_le(a.m) * f16_le(b.s);
                }
                *o = vaddvq_f32(acc) + ms;
            }
        }

        #[target_feature(enable = $feat)]
        fn $q8_0(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
            for (row, o) in w.chunks_exact(bpr).zip(y) {
                let mut acc = vdupq_n_f32(0.0);
                for (a, b) in row.iter().zip(x) {
                    let s = $mla(vdupq_n_s32(0), ld_s8(&a.qs, 0), ld_s8(&b.qs, 0));
                    let s = $mla(s, ld_s8(&a.qs, 16), ld_s8(&b.qs, 16));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), f16_le(a.d) * f16_le(b.d));
                }
                *o = vaddvq_f32(acc);
            }
        }
    };
}

quant_rows!("neon", mla16, q4_0_rows_tf, q4_1_rows_tf, q8_0_rows_tf);
quant_rows!(
    "neon,dotprod",
    sdot16,
    q4_0_rows_dot_tf,
    q4_1_rows_dot_tf,
    q8_0_rows_dot_tf
);

/// Dot of rows whose 4 elements at a time come from `conv` (16 bytes of F32, 8 of BF16).
#[target_feature(enable = "neon")]
fn bf16_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 2).zip(y) {
        let (w4, wt) = row.as_chunks::<8>();
        let (x4, xt) = x.as_chunks::<4>();
        let mut acc = vdupq_n_f32(0.0);
        for (wc, xc) in w4.iter().zip(x4) {
            // SAFETY: `wc` is 8 readable bytes (4 little-endian bf16).
            let h = unsafe { vld1_u16(wc.as_ptr().cast()) };
            let v = vreinterpretq_f32_u32(vshll_n_u16(h, 16));
            acc = vfmaq_f32(acc, v, ld_f32(xc));
        }
        let mut s = vaddvq_f32(acc);
        for (e, &xv) in wt.chunks_exact(2).zip(xt) {
            s += f32::from_bits((u16::from_le_bytes([e[0], e[1]]) as u32) << 16) * xv;
        }
        *o = s;
    }
}

#[target_feature(enable = "neon")]
fn f32_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(cols * 4).zip(y) {
        let (w4, wt) = row.as_chunks::<16>();
        let (x4, xt) = x.as_chunks::<4>();
        let mut acc = vdupq_n_f32(0.0);
        for (wc, xc) in w4.iter().zip(x4) {
            // SAFETY: `wc` is 16 readable bytes (4 little-endian f32, any bit pattern valid).
            let v = unsafe { vld1q_f32(wc.as_ptr().cast()) };
            acc = vfmaq_f32(acc, v, ld_f32(xc));
        }
        let mut s = vaddvq_f32(acc);
        for (e, &xv) in wt.chunks_exact(4).zip(xt) {
            s += f32::from_le_bytes([e[0], e[1], e[2], e[3]]) * xv;
        }
        *o = s;
    }
}

// ---- F16 rows ------------------------------------------------------------------------------

/// Four F16 (bit patterns) to f32 with `fcvtl`: exact, subnormals and infinities included.
/// Base Armv8-A Advanced SIMD, but Rust 1.95 has no stable `float16x4_t`, so it is `asm!`.
#[target_feature(enable = "neon")]
#[inline]
fn fcvtl(h: uint16x4_t) -> float32x4_t {
    let out: float32x4_t;
    // SAFETY: register-only conversion (no memory, no flags); `fcvtl` is part of the base
    // Advanced SIMD instruction set this function's target feature guarantees.
    unsafe {
        core::arch::asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags))
    };
    out
}

/// Eight F16 (bit patterns) to f32 as (elements 0..4, elements 4..8): `fcvtl` + `fcvtl2`.
#[target_feature(enable = "neon")]
#[inline]
fn fcvtl_x2(h: uint16x8_t) -> (float32x4_t, float32x4_t) {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: as in `fcvtl`. `lo` is written before `h` is read by the second instruction, so
    // it is an early-clobber `out` (never allocated to `h`'s register).
    unsafe {
        core::arch::asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            lo = out(vreg) lo, hi = lateout(vreg) hi, h = in(vreg) h,
            options(pure, nomem, nostack, preserves_flags))
    };
    (lo, hi)
}

/// `acc[i] += w[4i..4i+4] * x[4i..4i+4]` for 16 little-endian F16 weights (32 bytes, one
/// two-register `ld1`) and 16 activations already in registers.
#[target_feature(enable = "neon")]
#[inline]
fn fma_f16x16(acc: &mut [float32x4_t; 4], w: &[u8; 32], x: &float32x4x4_t) {
    // SAFETY: `w` is 32 readable bytes; `ld1` has no alignment requirement.
    let h = unsafe { vld1q_u16_x2(w.as_ptr().cast()) };
    let (w0, w1) = fcvtl_x2(h.0);
    let (w2, w3) = fcvtl_x2(h.1);
    acc[0] = vfmaq_f32(acc[0], w0, x.0);
    acc[1] = vfmaq_f32(acc[1], w1, x.1);
    acc[2] = vfmaq_f32(acc[2], w2, x.2);
    acc[3] = vfmaq_f32(acc[3], w3, x.3);
}

/// `(dot(r0, x), dot(r1, x))` for two F16 rows of `x.len()` elements (`2 x.len()` bytes
/// each; [`f16_rows_tf`] cuts them so, which keeps the 16-, 4- and 1-element steps of rows and
/// `x` in line; other lengths give wrong sums, never a panic). Each 16-element step loads 16
/// activations once (one four-register `ld1`) for both rows and keeps four accumulators per
/// row, so eight FMA chains hide the `fmla` latency; then 4-element steps, then scalar
/// `f16_le` for the last `< 4` elements.
#[target_feature(enable = "neon")]
#[inline]
fn f16_dot2(r0: &[u8], r1: &[u8], x: &[f32]) -> (f32, f32) {
    let (a16, at) = r0.as_chunks::<32>();
    let (b16, bt) = r1.as_chunks::<32>();
    let (x16, xt) = x.as_chunks::<16>();
    let mut a = [vdupq_n_f32(0.0); 4];
    let mut b = [vdupq_n_f32(0.0); 4];
    for ((wa, wb), xc) in a16.iter().zip(b16).zip(x16) {
        // SAFETY: `xc` is 16 readable f32s; `ld1` has no alignment requirement.
        let xv = unsafe { vld1q_f32_x4(xc.as_ptr()) };
        fma_f16x16(&mut a, wa, &xv);
        fma_f16x16(&mut b, wb, &xv);
    }
    let (a4, at) = at.as_chunks::<8>();
    let (b4, bt) = bt.as_chunks::<8>();
    let (x4, xt) = xt.as_chunks::<4>();
    for ((wa, wb), xc) in a4.iter().zip(b4).zip(x4) {
        let xv = ld_f32(xc);
        a[0] = vfmaq_f32(a[0], cvt_f16x4(wa), xv);
        b[0] = vfmaq_f32(b[0], cvt_f16x4(wb), xv);
    }
    let sum =
        |v: [float32x4_t; 4]| vaddvq_f32(vaddq_f32(vaddq_f32(v[0], v[1]), vaddq_f32(v[2], v[3])));
    let (mut sa, mut sb) = (sum(a), sum(b));
    for ((ea, eb), &xv) in at.chunks_exact(2).zip(bt.chunks_exact(2)).zip(xt) {
        sa += f16_e(ea) * xv;
        sb += f16_e(eb) * xv;
    }
    (sa, sb)
}

/// F16 rows of `cols` elements dotted with f32 `x` (the base matvec of F16 models and the
/// LoRA A product `A x` of F16 adapters), two rows per pass sharing the activation loads
/// ([`f16_dot2`]). An odd last row is paired with itself and the second result dropped: it
/// pays the conversions twice for one row of the call, in exchange for a single copy of the
/// loop (callers hand out rows in multiples of 16 except at the end of a matrix).
#[target_feature(enable = "neon")]
fn f16_rows_tf(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    if cols == 0 {
        // Callers never pass this (`chunks_exact(0)` would panic); an empty dot is 0.
        y.fill(0.0);
        return;
    }
    let rb = cols * 2;
    // Rows and activation cut to the same element count, so the step loops stay aligned.
    let n = cols.min(x.len());
    let x = &x[..n];
    let mut pairs = w.chunks_exact(2 * rb);
    let mut outs = y.chunks_exact_mut(2);
    for (p, o) in (&mut pairs).zip(&mut outs) {
        let (r0, r1) = p.split_at(rb);
        let (d0, d1) = f16_dot2(&r0[..2 * n], &r1[..2 * n], x);
        if let [o0, o1] = o {
            (*o0, *o1) = (d0, d1);
        }
    }
    for (row, o) in pairs
        .remainder()
        .chunks_exact(rb)
        .zip(outs.into_remainder())
    {
        let row = &row[..2 * n];
        *o = f16_dot2(row, row, x).0;
    }
}

// ---- short rows added into y (LoRA B) --------------------------------------------------------

/// Four little-endian F16 to f32 (see [`fcvtl`]).
#[target_feature(enable = "neon")]
#[inline]
fn cvt_f16x4(w: &[u8; 8]) -> float32x4_t {
    // SAFETY: `w` is 8 readable bytes; no alignment requirement.
    fcvtl(unsafe { vld1_u16(w.as_ptr().cast()) })
}

#[target_feature(enable = "neon")]
#[inline]
fn cvt_bf16x4(w: &[u8; 8]) -> float32x4_t {
    // SAFETY: `w` is 8 readable bytes (4 little-endian bf16).
    let h = unsafe { vld1_u16(w.as_ptr().cast()) };
    vreinterpretq_f32_u32(vshll_n_u16(h, 16))
}

#[target_feature(enable = "neon")]
#[inline]
fn cvt_f32x4(w: &[u8; 16]) -> float32x4_t {
    // SAFETY: `w` is 16 readable bytes (4 little-endian f32, any bit pattern valid).
    unsafe { vld1q_f32(w.as_ptr().cast()) }
}

fn f16_e(e: &[u8]) -> f32 {
    f16_le([e[0], e[1]])
}
fn bf16_e(e: &[u8]) -> f32 {
    f32::from_bits((u16::from_le_bytes([e[0], e[1]]) as u32) << 16)
}
fn f32_e(e: &[u8]) -> f32 {
    f32::from_le_bytes([e[0], e[1], e[2], e[3]])
}

/// `y[o] += s * dot(row o, t)` for rows of `r` elements converted 4 at a time by `$conv` from
/// `$bytes4`-byte groups. Rows go four at a time: four FMA chains, then two levels of `faddp`
/// reduce the four accumulators to the four row sums in one vector.
macro_rules! float_add_rows {
    ($w:ident, $r:ident, $t:ident, $s:ident, $y:ident, $bytes4:literal, $conv:expr, $scalar:expr) => {{
        let es = $bytes4 / 4;
        let rb = $r * es;
        let (t4, tt) = $t.as_chunks::<4>();
        let mut groups = $w.chunks_exact(4 * rb);
        let mut outs = $y.chunks_exact_mut(4);
        for (g, o) in (&mut groups).zip(&mut outs) {
            let mut acc = [vdupq_n_f32(0.0); 4];
            let mut tail = [0.0f32; 4];
            for ((a, tl), row) in acc.iter_mut().zip(&mut tail).zip(g.chunks_exact(rb)) {
                let (w4, wt) = row.as_chunks::<$bytes4>();
                for (wc, tc) in w4.iter().zip(t4) {
                    *a = vfmaq_f32(*a, $conv(wc), ld_f32(tc));
                }
                for (e, &tv) in wt.chunks_exact(es).zip(tt) {
                    *tl += $scalar(e) * tv;
                }
            }
            let Ok(o) = <&mut [f32; 4]>::try_from(o) else {
                continue;
            };
            let sums = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));
            let sums = vaddq_f32(sums, ld_f32(&tail));
            let v = vfmaq_n_f32(ld_f32(o), sums, $s);
            // SAFETY: `o` is 4 writable f32s; no alignment requirement.
            unsafe { vst1q_f32(o.as_mut_ptr(), v) };
        }
        for (row, o) in groups
            .remainder()
            .chunks_exact(rb)
            .zip(outs.into_remainder())
        {
            let (w4, wt) = row.as_chunks::<$bytes4>();
            let mut a = vdupq_n_f32(0.0);
            for (wc, tc) in w4.iter().zip(t4) {
                a = vfmaq_f32(a, $conv(wc), ld_f32(tc));
            }
            let mut sum = vaddvq_f32(a);
            for (e, &tv) in wt.chunks_exact(es).zip(tt) {
                sum += $scalar(e) * tv;
            }
            *o += $s * sum;
        }
    }};
}

#[target_feature(enable = "neon")]
fn f16_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_rows!(w, r, t, s, y, 8, cvt_f16x4, f16_e);
}

#[target_feature(enable = "neon")]
fn bf16_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_rows!(w, r, t, s, y, 8, cvt_bf16x4, bf16_e);
}

#[target_feature(enable = "neon")]
fn f32_add_rows_tf(w: &[u8], r: usize, t: &[f32], s: f32, y: &mut [f32]) {
    float_add_rows!(w, r, t, s, y, 16, cvt_f32x4, f32_e);
}

// ---- Q8_0 rows added into y (LoRA B, Q8_0) --------------------------------------------------

/// The 32 quants of `b` times 32 f32 of `t` (`tb`, eight registers), unscaled: the lanes sum to
/// `sum_k q_k t_k`. Quants widen exactly (`sxtl` i8 -> i16 -> i32, `scvtf`); two FMA chains.
#[target_feature(enable = "neon")]
#[inline]
fn q8_0_block_t(b: &BlockQ8_0, tb: &[float32x4_t; 8]) -> float32x4_t {
    // SAFETY: `b.qs` is 32 readable bytes; `ld1` has no alignment requirement.
    let q = unsafe { vld1q_s8_x2(b.qs.as_ptr().cast()) };
    let h = [
        vmovl_s8(vget_low_s8(q.0)),
        vmovl_high_s8(q.0),
        vmovl_s8(vget_low_s8(q.1)),
        vmovl_high_s8(q.1),
    ];
    let (tp, _) = tb.as_chunks::<2>();
    let (mut p0, mut p1) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    for (h8, t8) in h.iter().zip(tp) {
        let lo = vcvtq_f32_s32(vmovl_s16(vget_low_s16(*h8)));
        let hi = vcvtq_f32_s32(vmovl_high_s16(*h8));
        p0 = vfmaq_f32(p0, lo, t8[0]);
        p1 = vfmaq_f32(p1, hi, t8[1]);
    }
    vaddq_f32(p0, p1)
}

/// The 32 f32 of one block of `t` in eight registers (one four-register `ld1` per half).
#[target_feature(enable = "neon")]
#[inline]
fn ld_t32(t: &[f32; QK]) -> [float32x4_t; 8] {
    // SAFETY: `t` is 32 readable f32s, so both 16-element loads are in bounds; `ld1` has no
    // alignment requirement.
    let (a, b) = unsafe { (vld1q_f32_x4(t.as_ptr()), vld1q_f32_x4(t.as_ptr().add(16))) };
    [a.0, a.1, a.2, a.3, b.0, b.1, b.2, b.3]
}

/// `y[o] += s * sum_b d_b * sum_k q_k t_k` for Q8_0 rows of `bpr` blocks against f32 `t` (the
/// LoRA B update for a Q8_0 B; `t` stays f32). Four rows per pass share each block's eight `t`
/// registers; the four blocks' f16 scales are gathered into one vector and widened by one
/// `fcvtl`, and each row's accumulator takes `acc += d * block product` by lane (`fmla` by
/// element). Two levels of `faddp` reduce the four accumulators to the four row sums, added to
/// `y` with one `fmla` by `s`. Remainder rows go one at a time (`faddv`).
#[target_feature(enable = "neon")]
fn q8_0_add_rows_tf(w: &[BlockQ8_0], bpr: usize, t: &[f32], s: f32, y: &mut [f32]) {
    if bpr == 0 {
        return; // callers never pass this (`chunks_exact(0)` would panic); nothing to add
    }
    // Blocks of `t` past its end (never, from callers) are skipped, as in the portable kernel.
    let (tb, _) = t.as_chunks::<QK>();
    let mut groups = w.chunks_exact(4 * bpr);
    let mut outs = y.chunks_exact_mut(4);
    for (g, o) in (&mut groups).zip(&mut outs) {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (b, tc) in tb.iter().enumerate().take(bpr) {
            let tv = ld_t32(tc);
            let mut p = [vdupq_n_f32(0.0); 4];
            let mut d = [0u16; 4];
            for ((pj, dj), row) in p.iter_mut().zip(&mut d).zip(g.chunks_exact(bpr)) {
                if let Some(blk) = row.get(b) {
                    *pj = q8_0_block_t(blk, &tv);
                    *dj = u16::from_le_bytes(blk.d);
                }
            }
            // SAFETY: `d` is 4 readable u16s; no alignment requirement.
            let dv = fcvtl(unsafe { vld1_u16(d.as_ptr()) });
            acc[0] = vfmaq_laneq_f32::<0>(acc[0], p[0], dv);
            acc[1] = vfmaq_laneq_f32::<1>(acc[1], p[1], dv);
            acc[2] = vfmaq_laneq_f32::<2>(acc[2], p[2], dv);
            acc[3] = vfmaq_laneq_f32::<3>(acc[3], p[3], dv);
        }
        let Ok(o) = <&mut [f32; 4]>::try_from(o) else {
            continue;
        };
        let sums = vpaddq_f32(vpaddq_f32(acc[0], acc[1]), vpaddq_f32(acc[2], acc[3]));
        let v = vfmaq_n_f32(ld_f32(o), sums, s);
        // SAFETY: `o` is 4 writable f32s; no alignment requirement.
        unsafe { vst1q_f32(o.as_mut_ptr(), v) };
    }
    for (row, o) in groups
        .remainder()
        .chunks_exact(bpr)
        .zip(outs.into_remainder())
    {
        let mut acc = vdupq_n_f32(0.0);
        for (blk, tc) in row.iter().zip(tb) {
            acc = vfmaq_n_f32(acc, q8_0_block_t(blk, &ld_t32(tc)), f16_le(blk.d));
        }
        *o += s * vaddvq_f32(acc);
    }
}

/// One block as ggml's reference does it; returns (`d`, sum of quants).
#[target_feature(enable = "neon")]
#[inline]
fn quant_block(xb: &[f32; QK], qs: &mut [u8; QK]) -> (f32, i32) {
    let (x4, _) = xb.as_chunks::<4>();
    let mut m = vdupq_n_f32(0.0);
    for c in x4 {
        m = vmaxq_f32(m, vabsq_f32(ld_f32(c)));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = vdupq_n_s32(0);
    for (c, out) in x4.chunks_exact(4).zip(qs.chunks_exact_mut(16)) {
        let mut q = [vdupq_n_s32(0); 4];
        for (qi, v) in q.iter_mut().zip(c) {
            // fcvtas: round to nearest, ties away from zero (= roundf).
            *qi = vcvtaq_s32_f32(vmulq_n_f32(ld_f32(v), id));
            sum = vaddq_s32(sum, *qi);
        }
        let h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        let b = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
        let mut tmp = [0u8; 16];
        // SAFETY: `tmp` is 16 writable bytes.
        unsafe { vst1q_u8(tmp.as_mut_ptr(), vreinterpretq_u8_s8(b)) };
        out.copy_from_slice(&tmp);
    }
    (d, vaddvq_s32(sum))
}

#[target_feature(enable = "neon")]
fn quantize_q8_0_tf(x: &[f32], y: &mut [BlockQ8_0]) {
    let (xb, _) = x.as_chunks::<QK>();
    for (c, b) in xb.iter().zip(y) {
        let (d, _) = quant_block(c, &mut b.qs);
        b.d = to_f16_le(d);
    }
}

#[target_feature(enable = "neon")]
fn quantize_q8_1_tf(x: &[f32], y: &mut [BlockQ8_1]) {
    let (xb, _) = x.as_chunks::<QK>();
    for (c, b) in xb.iter().zip(y) {
        let (d, sum) = quant_block(c, &mut b.qs);
        b.d = to_f16_le(d);
        b.s = to_f16_le(sum as f32 * d);
    }
}
