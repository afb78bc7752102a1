//! Q8_0, Q4_0 and F32 rows with the Armv7E-M DSP extension and the FPU (Cortex-M4F, M7;
//! M33/M55 with DSP and FPU).
//!
//! Quantised rows, as CMSIS-NN's `arm_nn_mat_mult_nt_t_s8`: four weight rows run together,
//! so each activation word is loaded and sign-extended once and used four times. `SXTB16`
//! sign-extends bytes 0 and 2 of a word into two 16-bit lanes (with `ROR #8`: bytes 1 and 3),
//! and `SMLAD` adds both 16x16 products to a 32-bit accumulator. Per activation word:
//! - Q8_0: one load and two `SXTB16` shared, then per row one load, two `SXTB16` and two
//!   `SMLAD` (23 instructions for 16 MACs);
//! - Q4_0: nibbles need no sign extension: `AND` with `0x000f000f` after a shift of 0, 4, 8
//!   or 12 puts two of them in the two 16-bit lanes, so per row one load, two `AND`, two
//!   `SMLAD`; the offset 8 is taken once per block for all four rows, `sum (q-8) x = sum q x
//!   - 8 sum x`, with `sum x` from `SXTAB16` over the activation block.
//!
//! A row group is one `asm!` block, float part included: per block the scales are converted
//! with `VCVTB` (exact, as `half`'s conversion, and NaNs quieted keeping their payload, as
//! `half` does) and each row does `acc += sum as f32 * (d_w * d_x)` with `VCVT` and
//! `VMLA.F32` (the product is rounded before the add: not fused), blocks in order. That is
//! the portable kernel's arithmetic operation for operation, so results are bit-equal to
//! [`super::super::portable`] and to [`super::super::reference`]'s `vec_dot_*`. The integer
//! sums are exact (|q| <= 128, 16-bit products, 32 of them per 32-bit accumulator).
//!
//! Registers are the limit: four row pointers take three (`p`, `s`, `3s`), then four
//! accumulators, two activation halves, a weight word, a temporary, the pointer to x, a
//! counter (Q8_0) or the mask (Q4_0): the thirteen registers `asm!` may allocate (r6 among
//! them, which LLVM only withholds as a base pointer in frames it must realign; these leaf
//! functions have none, and if one did the build would fail, not miscompile). The other
//! counter sits in `r7`, which rustc keeps from operands (frame pointer), and the FPU
//! registers cannot be operands on stable (`sreg` needs the unstable `vfp2` feature), so the
//! block saves and restores those itself.
//!
//! Rows: groups of four; the last group is moved back to end at the last row (rows computed
//! twice get the same value twice), and a matrix of fewer than four rows runs each row as a
//! group of four copies of itself (stride 0), so there is no second, one-row kernel in flash.
//!
//! Flash against speed (instructions per MAC under QEMU `-icount`, bin `kernels`, 4 rows x 64
//! blocks; bytes of the runtime image, `dsp-only`): Q8_0 with one activation word per loop
//! pass 1.88, two words 1.82 (+96 bytes), four 1.78 (+280); Q4_0 with `sum x` as a loop 2.20,
//! fully unrolled 2.06 (+76 bytes). The one-word loop and the `sum x` loop are what is built:
//! the runtime image is being cut to 64 KiB and both stay within issue 18's targets (2.0 and
//! 2.5). The one-row kernels before ran at 3.61 (Q8_0) and 3.99 (Q4_0).
//!
//! F32 rows (LoRA A, float weights) and the LoRA B update: `VLDM` and `VMLA.F32` in the
//! portable kernel's order (see [`f32_add_rows`]).
//!
//! Only compiled for `target_arch = "arm"` with the `cortex-m-dsp` feature; building it for
//! a core without the DSP extension (M0, M3, M23) is the caller's error, as with CMSIS-NN's
//! `ARM_MATH_DSP`. It also needs a hard-float build with an FPU (`VCVTB`, `VMLA`, `VLDM`).

use super::super::{portable, Isa, Kernel};
use crate::quant::{blocks_as_bytes, BlockQ4_0, BlockQ8_0};
use core::arch::asm;

/// The DSP kernel table: Q8_0, Q4_0 and F32 rows and the F32 LoRA B update here, everything
/// else portable.
pub static KERNEL: Kernel = Kernel {
    isa: Isa::Dsp,
    q4_0: q4_0_rows,
    q8_0: q8_0_rows,
    f32: f32_rows,
    f32_add: f32_add_rows,
    ..portable::KERNEL
};

/// Always `Some` in a build with the feature: the choice was made at compile time.
pub fn detect() -> Option<&'static Kernel> {
    Some(&KERNEL)
}

/// Rows computed together.
const R: usize = 4;

/// The four rows' scale products `d_w * d_x` into s5..s8 (`d_x` in s4). `p` is row 0's block
/// start; its last load moves it on to the quants.
macro_rules! scales {
    () => {
        concat!(
            "ldrh {t}, [{p}, {s}]\n",
            "vmov s6, {t}\n",
            "vcvtb.f32.f16 s6, s6\n",
            "vmul.f32 s6, s6, s4\n",
            "ldrh {t}, [{p}, {s}, lsl #1]\n",
            "vmov s7, {t}\n",
            "vcvtb.f32.f16 s7, s7\n",
            "vmul.f32 s7, s7, s4\n",
            "ldrh {t}, [{p}, {s3}]\n",
            "vmov s8, {t}\n",
            "vcvtb.f32.f16 s8, s8\n",
            "vmul.f32 s8, s8, s4\n",
            "ldrh {t}, [{p}], #2\n",
            "vmov s5, {t}\n",
            "vcvtb.f32.f16 s5, s5\n",
            "vmul.f32 s5, s5, s4\n",
        )
    };
}

/// `acc_r += sum_r as f32 * d_r` for the four rows (accumulators s0..s3, products s5..s8).
macro_rules! accumulate {
    () => {
        concat!(
            "vmov s4, {a0}\n",
            "vcvt.f32.s32 s4, s4\n",
            "vmla.f32 s0, s4, s5\n",
            "vmov s4, {a1}\n",
            "vcvt.f32.s32 s4, s4\n",
            "vmla.f32 s1, s4, s6\n",
            "vmov s4, {a2}\n",
            "vcvt.f32.s32 s4, s4\n",
            "vmla.f32 s2, s4, s7\n",
            "vmov s4, {a3}\n",
            "vcvt.f32.s32 s4, s4\n",
            "vmla.f32 s3, s4, s8\n",
        )
    };
}

/// One Q8_0 row group: the dots of the four rows of `nb` blocks at `p + r s` (block starts,
/// `s` bytes apart; 0 repeats row 0) with the `nb` blocks at `x`.
///
/// Per block: the four scale products `d_w * d_x` (`VCVTB` converts each f16 exactly, as
/// `half` does, and quiets a NaN keeping its payload, as `half` does), the integer sums, then
/// per row `acc += sum as f32 * d` with `VMLA.F32`, whose product is rounded before the add
/// (not fused): the portable kernel's operations in its order, so the result is bit-identical.
///
/// # Safety
/// `nb >= 1`; the `34 nb` bytes at `p + r s` (r < 4) and at `x` must be readable.
unsafe fn group_q8_0(p: *const u8, s: usize, x: *const u8, nb: usize) -> [f32; R] {
    let (a0, a1, a2, a3): (f32, f32, f32, f32);
    // One activation word against the four rows. Row 0's load comes last so that its
    // post-increment moves every row on.
    macro_rules! word {
        () => {
            concat!(
                "ldr {xo}, [{x}], #4\n",
                "sxtb16 {xe}, {xo}\n",
                "sxtb16 {xo}, {xo}, ror #8\n",
                "ldr {w}, [{p}, {s}]\n",
                "sxtb16 {t}, {w}\n",
                "smlad {a1}, {t}, {xe}, {a1}\n",
                "sxtb16 {t}, {w}, ror #8\n",
                "smlad {a1}, {t}, {xo}, {a1}\n",
                "ldr {w}, [{p}, {s}, lsl #1]\n",
                "sxtb16 {t}, {w}\n",
                "smlad {a2}, {t}, {xe}, {a2}\n",
                "sxtb16 {t}, {w}, ror #8\n",
                "smlad {a2}, {t}, {xo}, {a2}\n",
                "ldr {w}, [{p}, {s3}]\n",
                "sxtb16 {t}, {w}\n",
                "smlad {a3}, {t}, {xe}, {a3}\n",
                "sxtb16 {t}, {w}, ror #8\n",
                "smlad {a3}, {t}, {xo}, {a3}\n",
                "ldr {w}, [{p}], #4\n",
                "sxtb16 {t}, {w}\n",
                "smlad {a0}, {t}, {xe}, {a0}\n",
                "sxtb16 {t}, {w}, ror #8\n",
                "smlad {a0}, {t}, {xo}, {a0}\n",
            )
        };
    }
    // SAFETY: reads the `nb` blocks at `x` and at each row (the caller guarantees them). r7
    // and s0-s8 are not operands (rustc reserves r7; `sreg` operands need the unstable `vfp2`
    // target feature), so the block saves them on the stack and restores them itself.
    // SMLAD's Q flag and the FPSCR flags are written, and nothing reads them.
    unsafe {
        asm!(
            "push {{r7}}",
            "vpush {{s0-s8}}",
            "mov r7, {t}",
            "mov {t}, #0",
            "vmov s0, s1, {t}, {t}",
            "vmov s2, s3, {t}, {t}",
            // Block loop: s4 = d_x, s5..s8 = d_w * d_x; p and x move on to the quants.
            "3:",
            "ldrh {t}, [{x}], #2",
            "vmov s4, {t}",
            "vcvtb.f32.f16 s4, s4",
            scales!(),
            "movs {c}, #8",
            "mov {a0}, #0",
            "mov {a1}, #0",
            "mov {a2}, #0",
            "mov {a3}, #0",
            // One activation word per pass, eight passes: p and x end at the next block.
            "2:",
            word!(),
            "subs {c}, {c}, #1",
            "bne 2b",
            accumulate!(),
            "subs r7, r7, #1",
            "bne 3b",
            "vmov {a0}, s0",
            "vmov {a1}, s1",
            "vmov {a2}, s2",
            "vmov {a3}, s3",
            "vpop {{s0-s8}}",
            "pop {{r7}}",
            p = inout(reg) p => _,
            x = inout(reg) x => _,
            s = in(reg) s,
            s3 = in(reg) 3 * s,
            t = inout(reg) nb => _,
            a0 = out(reg) a0,
            a1 = out(reg) a1,
            a2 = out(reg) a2,
            a3 = out(reg) a3,
            xe = out(reg) _,
            xo = out(reg) _,
            w = out(reg) _,
            c = out(reg) _,
            options(readonly)
        )
    };
    [a0, a1, a2, a3]
}

/// As [`group_q8_0`] for Q4_0 rows (blocks of 18 bytes) against Q8_0 activations.
///
/// Integer part per block: `sum (q - 8) x = sum q x - 8 sum x`. `sum x` comes first
/// (`SXTAB16` over the activation block: 16 values of |x| <= 128 per 16-bit lane, no
/// overflow) and every accumulator starts at `-8 sum x`; then each weight word is read
/// twice, against the activation word of its low nibbles (elements j..j+4) and against the
/// word 16 bytes on (its high nibbles, elements j+16..j+20).
///
/// # Safety
/// `nb >= 1`; the `18 nb` bytes at `p + r s` (r < 4) and the `34 nb` at `x` must be readable.
unsafe fn group_q4_0(p: *const u8, s: usize, x: *const u8, nb: usize) -> [f32; R] {
    let (a0, a1, a2, a3): (f32, f32, f32, f32);
    // `m` holds 0x000f000f: `AND` with it after a shift of 4, 8 or 12 puts two nibbles, zero
    // extended, in the two 16-bit lanes (and with no shift, the immediate does).
    macro_rules! lo {
        ($a:literal, $addr:literal) => {
            concat!(
                "ldr {q}, ",
                $addr,
                "\n",
                "and {t}, {q}, #0x000f000f\n",
                "smlad {",
                $a,
                "}, {t}, {xe}, {",
                $a,
                "}\n",
                "and {t}, {m}, {q}, lsr #8\n",
                "smlad {",
                $a,
                "}, {t}, {xo}, {",
                $a,
                "}\n",
            )
        };
    }
    macro_rules! hi {
        ($a:literal, $addr:literal) => {
            concat!(
                "ldr {q}, ",
                $addr,
                "\n",
                "and {t}, {m}, {q}, lsr #4\n",
                "smlad {",
                $a,
                "}, {t}, {xe}, {",
                $a,
                "}\n",
                "and {t}, {m}, {q}, lsr #12\n",
                "smlad {",
                $a,
                "}, {t}, {xo}, {",
                $a,
                "}\n",
            )
        };
    }
    // SAFETY: as `group_q8_0` (r7 and s0-s9 saved and restored by the block itself).
    unsafe {
        asm!(
            "push {{r7}}",
            "vpush {{s0-s9}}",
            "vmov s9, {t}",
            "mov {m}, #0x000f000f",
            "mov {t}, #0",
            "vmov s0, s1, {t}, {t}",
            "vmov s2, s3, {t}, {t}",
            "3:",
            "ldrh {t}, [{x}], #2",
            "vmov s4, {t}",
            "vcvtb.f32.f16 s4, s4",
            scales!(),
            "mov {a0}, #0",
            "movs r7, #8",
            "4:",
            "ldr {q}, [{x}], #4",
            "sxtab16 {a0}, {a0}, {q}",
            "sxtab16 {a0}, {a0}, {q}, ror #8",
            "subs r7, r7, #1",
            "bne 4b",
            "subs {x}, {x}, #32",
            "sxth {t}, {a0}",
            "add {t}, {t}, {a0}, asr #16",
            "mov {a0}, #0",
            "sub {a0}, {a0}, {t}, lsl #3",
            "mov {a1}, {a0}",
            "mov {a2}, {a0}",
            "mov {a3}, {a0}",
            "movs r7, #4",
            "2:",
            "ldr {xo}, [{x}, #16]",
            "sxtb16 {xe}, {xo}",
            "sxtb16 {xo}, {xo}, ror #8",
            hi!("a1", "[{p}, {s}]"),
            hi!("a2", "[{p}, {s}, lsl #1]"),
            hi!("a3", "[{p}, {s3}]"),
            hi!("a0", "[{p}]"),
            "ldr {xo}, [{x}], #4",
            "sxtb16 {xe}, {xo}",
            "sxtb16 {xo}, {xo}, ror #8",
            lo!("a1", "[{p}, {s}]"),
            lo!("a2", "[{p}, {s}, lsl #1]"),
            lo!("a3", "[{p}, {s3}]"),
            lo!("a0", "[{p}], #4"),
            "subs r7, r7, #1",
            "bne 2b",
            // x walked the low half only: skip the high half to the next block.
            "adds {x}, {x}, #16",
            accumulate!(),
            "vmov {t}, s9",
            "subs {t}, {t}, #1",
            "vmov s9, {t}",
            "bne 3b",
            "vmov {a0}, s0",
            "vmov {a1}, s1",
            "vmov {a2}, s2",
            "vmov {a3}, s3",
            "vpop {{s0-s9}}",
            "pop {{r7}}",
            p = inout(reg) p => _,
            x = inout(reg) x => _,
            s = in(reg) s,
            s3 = in(reg) 3 * s,
            t = inout(reg) nb => _,
            a0 = out(reg) a0,
            a1 = out(reg) a1,
            a2 = out(reg) a2,
            a3 = out(reg) a3,
            xe = out(reg) _,
            xo = out(reg) _,
            q = out(reg) _,
            m = out(reg) _,
            options(readonly)
        )
    };
    [a0, a1, a2, a3]
}

/// The rows of `y` (`w` holds them, `bpr` blocks of `b` bytes each), four at a time through
/// `group` (see [`group_q8_0`]). Callers ([`Kernel`]'s matvec) guarantee `bpr > 0`,
/// `x.len() >= bpr` and `w.len() >= y.len() * bpr * b`; anything else returns untouched.
/// One copy for both types (the group kernel through a pointer): 200 bytes of flash less
/// than a copy per type, for one indirect call per four rows.
#[inline(never)]
fn rows(
    w: &[u8],
    b: usize,
    bpr: usize,
    x: &[BlockQ8_0],
    y: &mut [f32],
    group: unsafe fn(*const u8, usize, *const u8, usize) -> [f32; R],
) {
    let n = y.len();
    if b == 0 || bpr == 0 || x.len() < bpr || w.len() / b / bpr < n {
        return;
    }
    let stride = bpr * b;
    let mut r = 0;
    while r < n {
        // Four rows from `r`; the last four (some done already: same values again) when
        // fewer are left; one row four times (stride 0) when the matrix has fewer than four.
        let (first, s) = if n < R {
            (r, 0)
        } else {
            (r.min(n - R), stride)
        };
        // SAFETY: `first + 3 < n` when `s != 0` (else every row is `first < n`), and `w` holds
        // `n` rows of `stride` bytes (checked above); `x` holds `bpr >= 1` blocks.
        let acc = unsafe { group(w.as_ptr().add(first * stride), s, x.as_ptr().cast(), bpr) };
        if s == 0 {
            y[r] = acc[0];
            r += 1;
        } else {
            y[first..first + R].copy_from_slice(&acc);
            r = first + R;
        }
    }
}

fn q8_0_rows(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    rows(blocks_as_bytes(w), 34, bpr, x, y, group_q8_0);
}

fn q4_0_rows(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    rows(blocks_as_bytes(w), 18, bpr, x, y, group_q4_0);
}

/// f16 1.0, little endian.
const ONE: [u8; 2] = [0x00, 0x3c];

/// Integer part of a Q8_0 x Q8_0 block dot, `sum_j w_j x_j`, through the row-group kernel
/// (the row four times, both scales 1.0, so the f32 result is the integer sum exactly:
/// |sum| <= 32 * 128 * 128 < 2^24): for the in-QEMU check of the integer sums (bin `kernels`).
pub fn block_q8_0(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    let (w, x) = (BlockQ8_0 { d: ONE, ..*w }, BlockQ8_0 { d: ONE, ..*x });
    // SAFETY: one whole block each, stride 0.
    let acc = unsafe { group_q8_0((&raw const w).cast(), 0, (&raw const x).cast(), 1) };
    acc[0] as i32
}

/// Integer part of a Q4_0 x Q8_0 block dot, `sum_j (q_j - 8) x_j`, as [`block_q8_0`].
pub fn block_q4_0(w: &BlockQ4_0, x: &BlockQ8_0) -> i32 {
    let (w, x) = (BlockQ4_0 { d: ONE, ..*w }, BlockQ8_0 { d: ONE, ..*x });
    // SAFETY: one whole block each, stride 0.
    let acc = unsafe { group_q4_0((&raw const w).cast(), 0, (&raw const x).cast(), 1) };
    acc[0] as i32
}

/// The F32 row dots (`y = W x`: the LoRA A product, and float base weights) and the LoRA B
/// update (`y += s W t`) with `VLDM` (eight weights, eight activations per instruction) and
/// `VMLA.F32`: the portable kernel's arithmetic, operation for operation (eight partial sums
/// over whole chunks of eight, a ninth for the tail, then `((p0 + p1) + ... + p7) + tail`,
/// and `y + s * dot`), so results are bit-identical to it. All rows run in one `asm!` block:
/// B's rows are only rank-long, so per-row setup would otherwise dominate (portable: 34.5
/// instructions per MAC for rank 4, this: 5.4).
///
/// `y = W x` runs as `y = 0 + 1 * dot` through the same code (exact: a dot here is never
/// -0.0, since its partial sums start at +0.0 and round-to-nearest gives -0.0 only for
/// -0.0 + -0.0), so one copy of the loop is in flash. Callers guarantee `cols > 0`,
/// `x.len() >= cols`, `w.len() >= y.len() * cols * 4`; `w` need not be aligned (the portable
/// kernel runs when it is not: `VLDM` faults on an unaligned address; GGUF data is aligned).
#[inline(never)]
fn f32_add_rows(w: &[u8], cols: usize, x: &[f32], s: f32, y: &mut [f32]) {
    let n = y.len();
    if n == 0 || cols == 0 || x.len() < cols || w.len() / 4 / cols < n {
        return;
    }
    if !(w.as_ptr() as usize).is_multiple_of(4) {
        portable::f32_add_rows(w, cols, &x[..cols], s, y);
        return;
    }
    // SAFETY: `w` is 4-aligned and holds `n` rows of `cols` f32 (checked above), `x` holds
    // `cols` f32 and `y` `n` (both aligned as f32 slices), `n >= 1`. s0-s26 are not operands
    // (`sreg` operands need the unstable `vfp2` target feature), so the block saves and
    // restores them itself.
    unsafe {
        asm!(
            "vpush {{s0-s26}}",
            "vmov s25, {s}",
            // Row loop. s0 = the eight partial sums added up (+0.0 when there is no whole
            // chunk: what they would sum to), s24 = the tail sum.
            "3:",
            "vmov s24, {z}",
            "vmov s0, {z}",
            "mov {xc}, {x}",
            "movs {c}, {n8}",
            "beq 5f",
            "vmov s0, s1, {z}, {z}",
            "vmov s2, s3, {z}, {z}",
            "vmov s4, s5, {z}, {z}",
            "vmov s6, s7, {z}, {z}",
            "4:",
            "vldmia {xc}!, {{s8-s15}}",
            "vldmia {w}!, {{s16-s23}}",
            "vmla.f32 s0, s16, s8",
            "vmla.f32 s1, s17, s9",
            "vmla.f32 s2, s18, s10",
            "vmla.f32 s3, s19, s11",
            "vmla.f32 s4, s20, s12",
            "vmla.f32 s5, s21, s13",
            "vmla.f32 s6, s22, s14",
            "vmla.f32 s7, s23, s15",
            "subs {c}, {c}, #1",
            "bne 4b",
            "vadd.f32 s0, s0, s1",
            "vadd.f32 s0, s0, s2",
            "vadd.f32 s0, s0, s3",
            "vadd.f32 s0, s0, s4",
            "vadd.f32 s0, s0, s5",
            "vadd.f32 s0, s0, s6",
            "vadd.f32 s0, s0, s7",
            // Tail, in order: four at once if there are four, then one at a time.
            "5:",
            "cmp {n4}, #0",
            "beq 6f",
            "vldmia {xc}!, {{s8-s11}}",
            "vldmia {w}!, {{s16-s19}}",
            "vmla.f32 s24, s16, s8",
            "vmla.f32 s24, s17, s9",
            "vmla.f32 s24, s18, s10",
            "vmla.f32 s24, s19, s11",
            "6:",
            "movs {c}, {n1}",
            "beq 8f",
            "7:",
            "vldmia {xc}!, {{s8}}",
            "vldmia {w}!, {{s16}}",
            "vmla.f32 s24, s16, s8",
            "subs {c}, {c}, #1",
            "bne 7b",
            "8:",
            "vadd.f32 s0, s0, s24",
            // y += s * dot
            "vldr s26, [{y}]",
            "vmla.f32 s26, s25, s0",
            "vstmia {y}!, {{s26}}",
            "subs {r}, {r}, #1",
            "bne 3b",
            "vpop {{s0-s26}}",
            w = inout(reg) w.as_ptr() => _,
            x = in(reg) x.as_ptr(),
            y = inout(reg) y.as_mut_ptr() => _,
            r = inout(reg) n => _,
            n8 = in(reg) cols / 8,
            n4 = in(reg) cols % 8 / 4,
            n1 = in(reg) cols % 4,
            s = in(reg) s,
            z = in(reg) 0u32,
            xc = out(reg) _,
            c = out(reg) _,
        )
    };
}

fn f32_rows(w: &[u8], cols: usize, x: &[f32], y: &mut [f32]) {
    y.fill(0.0);
    f32_add_rows(w, cols, x, 1.0, y);
}
