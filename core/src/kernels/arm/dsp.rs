//! Q8_0 and Q4_0 dots with the Armv7E-M DSP extension (Cortex-M4, M7; M33/M55 with DSP).
//!
//! As CMSIS-NN's `arm_nn_mat_mult_kernel_s8_s16`: `SXTB16` sign-extends bytes 0 and 2 of a
//! word into two 16-bit lanes (with `ROR #8`: bytes 1 and 3), and `SMLAD` adds both 16x16
//! products to a 32-bit accumulator. Four int8 MACs cost one weight load, one activation
//! load, four `SXTB16` and two `SMLAD`. Q4_0 nibbles are unpacked four at a time with a mask
//! and a shift, and `SSUB8` subtracts the offset 8 from all four bytes at once.
//!
//! The integer sum of every block is exact (no lane can overflow: |q| <= 128, 16-bit products,
//! 32-bit accumulation of 32 of them), and the float part is the portable kernel's, operation
//! for operation (`acc += sum as f32 * (d_w * d_x)`, blocks in order), so results are bit-equal
//! to [`super::super::portable`] and to [`super::super::reference`]'s `vec_dot_*`.
//!
//! Only compiled for `target_arch = "arm"` with the `cortex-m-dsp` feature; building it for
//! a core without the DSP extension (M0, M3, M23) is the caller's error, as with CMSIS-NN's
//! `ARM_MATH_DSP`.

use super::super::{portable, Isa, Kernel};
use crate::quant::{f16_le, BlockQ4_0, BlockQ8_0};
use core::arch::asm;

/// The DSP kernel table: Q8_0 and Q4_0 rows here, everything else portable.
pub static KERNEL: Kernel = Kernel {
    isa: Isa::Dsp,
    q4_0: q4_0_rows,
    q8_0: q8_0_rows,
    ..portable::KERNEL
};

/// Always `Some` in a build with the feature: the choice was made at compile time.
pub fn detect() -> Option<&'static Kernel> {
    Some(&KERNEL)
}

/// Bytes 0 and 2 of `x`, sign-extended to two i16 lanes.
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let r: u32;
    // SAFETY: register-only arithmetic (no memory, no flags); SXTB16 exists on every core the
    // `cortex-m-dsp` feature may be enabled for (see the module docs).
    unsafe {
        asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// Bytes 1 and 3 of `x`, sign-extended to two i16 lanes.
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let r: u32;
    // SAFETY: as `sxtb16`.
    unsafe {
        asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// `acc + a.lo * b.lo + a.hi * b.hi` over signed 16-bit lanes.
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: as `sxtb16`. SMLAD sets the Q flag on overflow, which cannot happen here
    // (module docs) and which nothing reads; `preserves_flags` is about NZCV.
    unsafe {
        asm!("smlad {r}, {a}, {b}, {c}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, c = in(reg) acc, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// Per-byte signed subtract (`SSUB8`), used to take 8 from four nibbles at once.
#[inline(always)]
fn ssub8(a: u32, b: u32) -> u32 {
    let r: u32;
    // SAFETY: as `sxtb16`. SSUB8 writes the GE flags (APSR.GE), not NZCV; nothing reads them.
    unsafe {
        asm!("ssub8 {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b, options(pure, nomem, nostack, preserves_flags))
    };
    r
}

/// The little-endian word at byte `I` of a block's bytes, as one unaligned `LDR` (Armv7-M
/// loads words at any address from normal memory; blocks are 18 or 34 bytes, so their bytes
/// are only 2-aligned). Offsets are compile-time constants so the firmware's size-optimised
/// build needs neither bounds checks nor loop unrolling to get straight-line code: byte loads
/// cost 4.3 instead of 2.9 instructions per MAC, iterator adapters left un-inlined at
/// `opt-level = "s"` cost 7.8 (measured under QEMU, bin `kernels`).
#[inline(always)]
fn ld<const I: usize, const N: usize>(b: &[u8; N]) -> u32 {
    const { assert!(I + 4 <= N) };
    // SAFETY: bytes I..I+4 lie inside `b` (asserted at compile time); read_unaligned has no
    // alignment requirement.
    u32::from_le(unsafe { b.as_ptr().add(I).cast::<u32>().read_unaligned() })
}

/// Four int8 MACs: `acc + sum_k w[k] x[k]` for the four bytes of `w` and `x`.
#[inline(always)]
fn mac4(w: u32, x: u32, acc: i32) -> i32 {
    let acc = smlad(sxtb16(w), sxtb16(x), acc);
    smlad(sxtb16_ror8(w), sxtb16_ror8(x), acc)
}

/// Integer part of a Q8_0 x Q8_0 block dot: `sum_j w_j x_j`.
#[inline(always)]
pub fn block_q8_0(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    let (w, x) = (&w.qs, &x.qs);
    let mut acc = mac4(ld::<0, 32>(w), ld::<0, 32>(x), 0);
    acc = mac4(ld::<4, 32>(w), ld::<4, 32>(x), acc);
    acc = mac4(ld::<8, 32>(w), ld::<8, 32>(x), acc);
    acc = mac4(ld::<12, 32>(w), ld::<12, 32>(x), acc);
    acc = mac4(ld::<16, 32>(w), ld::<16, 32>(x), acc);
    acc = mac4(ld::<20, 32>(w), ld::<20, 32>(x), acc);
    acc = mac4(ld::<24, 32>(w), ld::<24, 32>(x), acc);
    mac4(ld::<28, 32>(w), ld::<28, 32>(x), acc)
}

/// Integer part of a Q4_0 x Q8_0 block dot: `sum_j (q_j - 8) x_j`.
#[inline(always)]
pub fn block_q4_0(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
    let (w, x) = (&w.qs, &x.qs);
    let acc = nib8(ld::<0, 16>(w), ld::<0, 32>(x), ld::<16, 32>(x), 0);
    let acc = nib8(ld::<4, 16>(w), ld::<4, 32>(x), ld::<20, 32>(x), acc);
    let acc = nib8(ld::<8, 16>(w), ld::<8, 32>(x), ld::<24, 32>(x), acc);
    nib8(ld::<12, 16>(w), ld::<12, 32>(x), ld::<28, 32>(x), acc)
}

/// Eight Q4_0 MACs: the low nibbles of `q` (elements j..j+4) against `xlo`, the high ones
/// (elements j+16..j+20) against `xhi`, each nibble minus 8.
#[inline(always)]
fn nib8(q: u32, xlo: u32, xhi: u32, acc: i32) -> i32 {
    let lo = ssub8(q & 0x0f0f_0f0f, 0x0808_0808);
    let hi = ssub8((q >> 4) & 0x0f0f_0f0f, 0x0808_0808);
    mac4(hi, xhi, mac4(lo, xlo, acc))
}

fn q8_0_rows(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        let mut acc = 0.0f32;
        for (a, b) in row.iter().zip(x) {
            acc += block_q8_0(a, b) as f32 * (f16_le(a.d) * f16_le(b.d));
        }
        *o = acc;
    }
}

fn q4_0_rows(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    for (row, o) in w.chunks_exact(bpr).zip(y) {
        let mut acc = 0.0f32;
        for (a, b) in row.iter().zip(x) {
            acc += block_q4_0(a, b) as f32 * (f16_le(a.d) * f16_le(b.d));
        }
        *o = acc;
    }
}
