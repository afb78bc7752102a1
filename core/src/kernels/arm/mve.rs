//! Q8_0, Q4_0 and Q4_1 dots with Helium, the M-profile Vector Extension (Cortex-M55, M85).
//!
//! MVE has 128-bit vectors (Q0-Q7, aliasing the FPU's D0-D15). `VLDRB.S8` loads sixteen int8
//! lanes from any byte address (blocks are 34 or 18 bytes, so only 2-aligned), and
//! `VMLADAVA.S8 Rda, Qn, Qm` multiplies the sixteen lane pairs and adds all sixteen products
//! to a 32-bit general-purpose register: a Q8_0 block's integer dot is four loads and two
//! instructions (as CMSIS-NN's `arm_nn_vec_mat_mult_t_s8` for MVE). Q4_0 nibbles are
//! unpacked in-register: `VAND` with 0x0f gives elements 0-15 (the low nibbles), `VSHR.U8 #4`
//! elements 16-31, and a vector-minus-scalar `VSUB.I8` takes the offset 8 from all sixteen.
//! Q4_1 is the same without the offset (nibbles 0..15 are valid signed bytes), its min term
//! `m_w * s_x` added in the float part.
//! Every instruction is written in `asm!`: MVE intrinsics are not in stable Rust, and
//! `cfg(target_feature = "mve")` is not stable either, so the build selects this file with
//! the `cortex-m-mve` feature and must pass `-C target-cpu=cortex-m55` (the firmware's
//! `board-an547` build does) so that the assembler accepts the instructions.
//!
//! # Exactness
//!
//! The integer sum of every block is exact (|products| <= 128 * 128, 32 of them, summed in a
//! 32-bit register: no lane or accumulator can overflow), and the float part is the portable
//! kernel's, operation for operation, in scalar FPU code (`acc += sum as f32 * (d_w * d_x)`,
//! blocks in order), so results are bit-equal to [`super::super::portable`], to the DSP
//! table and to [`super::super::reference`]'s `vec_dot_*`.
//!
//! # What stays portable, and why
//!
//! Everything but the Q8_0, Q4_0 and Q4_1 rows, in particular the LoRA products (the f32 dots of
//! A·x and the B·(A·x) update). Their summation order could be matched: the portable f32 dot
//! keeps eight partial sums, accumulator `j` taking elements `j mod 8` with an unfused
//! multiply then add, which is exactly two 4-lane vectors under `VMUL.F32` + `VADD.F32`
//! (not `VFMA`, which would round once instead of twice), then the same scalar fold and tail.
//! What cannot be matched is the arithmetic itself: MVE's floating-point instructions run
//! under the Arm ARM's `StandardFPSCRValue()` (flush-to-zero and default NaN, whatever FPSCR
//! says; QEMU models this with `standard_fp_status` in `mve_helper.c`), while the
//! portable/oracle path uses the scalar FPU with IEEE subnormals, so any subnormal input,
//! product or partial sum would come out as zero and the result would differ from the host's
//! (the firmware test compares the device's logit hashes with the host's portable run). A
//! guarded path is possible (if every nonzero input has magnitude >= 2^-50, every product is
//! >= 2^-100 and every partial sum a multiple of 2^-123, so nothing is subnormal; else fall
//! back to portable) but costs a scan of both operands per call; not done, since the LoRA
//! products are a few percent of a decode step's MACs at real model sizes.
//!
//! Only compiled for `target_arch = "arm"` with the `cortex-m-mve` feature; enabling it for a
//! core without MVE (M4, M7, M33) is the builder's error and would not assemble without
//! `target-cpu=cortex-m55`.

use super::super::{portable, Isa, Kernel};
#[cfg(doc)]
use crate::quant::f16_le;
use crate::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1};
use core::arch::asm;

/// The MVE kernel table: Q8_0, Q4_0 and Q4_1 rows here, everything else portable.
pub static KERNEL: Kernel = Kernel {
    isa: Isa::Mve,
    q4_0: q4_0_rows,
    q4_1: q4_1_rows,
    q8_0: q8_0_rows,
    ..portable::KERNEL
};

/// Always `Some` in a build with the feature: the choice was made at compile time.
pub fn detect() -> Option<&'static Kernel> {
    Some(&KERNEL)
}

/// Integer part of a Q8_0 x Q8_0 block dot: `sum_j w_j x_j`.
#[inline(always)]
pub fn block_q8_0(w: &BlockQ8_0, x: &BlockQ8_0) -> i32 {
    let acc: i32;
    // SAFETY: reads 32 bytes from each of `w.qs` and `x.qs` (both exactly 32 bytes long; VLDRB
    // has no alignment requirement) and writes only the declared registers. VMLADAV's
    // accumulator must be an even register, hence the fixed r12. MVE exists on every core
    // this feature may be built for (module docs). No flags are written.
    unsafe {
        asm!(
            "vldrb.s8 q0, [{w}]",
            "vldrb.s8 q1, [{x}]",
            "vldrb.s8 q2, [{w}, #16]",
            "vldrb.s8 q3, [{x}, #16]",
            "vmladav.s8 r12, q0, q1",
            "vmladava.s8 r12, q2, q3",
            w = in(reg) w.qs.as_ptr(),
            x = in(reg) x.qs.as_ptr(),
            lateout("r12") acc,
            out("q0") _, out("q1") _, out("q2") _, out("q3") _,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    acc
}

/// The Q4 nibble kernels of one block type: `$block` (one block's integer dot, public for the
/// in-QEMU check) and `$pair` (two rows' blocks against one activation block, loaded once;
/// the nibble mask set up once). Per weight block: `VLDRB.U8` the 16 bytes, `VAND` 0x0f gives
/// elements 0-15 (low nibbles), `VSHR.U8 #4` elements 16-31, then the type's `$off` lines
/// (Q4_0 takes the offset 8 from all sixteen lanes with a vector-minus-scalar `VSUB.I8`;
/// Q4_1 has none), and two `VMLADAVA.S8` against the activation's halves. Both functions run
/// the same lines, so the pair's sums are the block's.
macro_rules! nibble_kernels {
    (
        $(#[$bm:meta])* $block:ident,
        $(#[$pm:meta])* $pair:ident,
        $w:ty, $x:ty,
        [$($off:literal),*] [$($op:tt)*]
    ) => {
        $(#[$bm])*
        #[inline(always)]
        pub fn $block(w: &$w, x: &$x) -> i32 {
            let acc: i32;
            // SAFETY: reads the 16 bytes of `w.qs` and the 32 of `x.qs` (VLDRB: any
            // alignment) and writes only the declared registers; r12 as in `block_q8_0`. No
            // flags are written.
            unsafe {
                asm!(
                    "vldrb.u8 q2, [{w}]",
                    "vmov.i8 q4, #0xf",
                    "vand q3, q2, q4",
                    "vshr.u8 q2, q2, #4",
                    $($off,)*
                    "vldrb.s8 q0, [{x}]",
                    "vldrb.s8 q1, [{x}, #16]",
                    "vmladav.s8 r12, q3, q0",
                    "vmladava.s8 r12, q2, q1",
                    w = in(reg) w.qs.as_ptr(),
                    x = in(reg) x.qs.as_ptr(),
                    $($op)*
                    lateout("r12") acc,
                    out("q0") _, out("q1") _, out("q2") _, out("q3") _, out("q4") _,
                    options(pure, readonly, nostack, preserves_flags)
                );
            }
            acc
        }

        $(#[$pm])*
        #[inline(always)]
        fn $pair(w0: &$w, w1: &$w, x: &$x) -> (i32, i32) {
            let (s0, s1): (i32, i32);
            // SAFETY: reads the 16 bytes of each `w*.qs` and the 32 of `x.qs` (VLDRB: any
            // alignment) and writes only the declared registers; accumulators as in
            // `pair_q8_0`. No flags.
            unsafe {
                asm!(
                    "vldrb.s8 q0, [{x}]",
                    "vldrb.s8 q1, [{x}, #16]",
                    "vmov.i8 q4, #0xf",
                    "vldrb.u8 q2, [{a}]",
                    "vand q3, q2, q4",
                    "vshr.u8 q2, q2, #4",
                    $($off,)*
                    "vmladav.s8 r12, q3, q0",
                    "vmladava.s8 r12, q2, q1",
                    "vldrb.u8 q2, [{b}]",
                    "vand q3, q2, q4",
                    "vshr.u8 q2, q2, #4",
                    $($off,)*
                    "vmladav.s8 r10, q3, q0",
                    "vmladava.s8 r10, q2, q1",
                    x = in(reg) x.qs.as_ptr(),
                    a = in(reg) w0.qs.as_ptr(),
                    b = in(reg) w1.qs.as_ptr(),
                    $($op)*
                    lateout("r12") s0,
                    lateout("r10") s1,
                    out("q0") _, out("q1") _, out("q2") _, out("q3") _, out("q4") _,
                    options(pure, readonly, nostack, preserves_flags)
                );
            }
            (s0, s1)
        }
    };
}

nibble_kernels!(
    /// Integer part of a Q4_0 x Q8_0 block dot: `sum_j (q_j - 8) x_j`, where the low nibble
    /// of byte `j` is element `j` and the high nibble element `j + 16`.
    block_q4_0,
    /// As [`pair_q8_0`] for two rows' Q4_0 blocks.
    pair_q4_0,
    BlockQ4_0, BlockQ8_0,
    ["vsub.i8 q3, q3, {eight}", "vsub.i8 q2, q2, {eight}"] [eight = in(reg) 8u32,]
);

nibble_kernels!(
    /// Integer part of a Q4_1 x Q8_1 block dot: `sum_j q_j x_j` with the nibbles unsigned
    /// (0..15: valid signed bytes), laid out as in Q4_0.
    block_q4_1,
    /// As [`pair_q4_0`] for two rows' Q4_1 blocks (no offset).
    pair_q4_1,
    BlockQ4_1, BlockQ8_1,
    [] []
);

/// An f16 scale as f32 through the FPU's `VCVTB.F32.F16`: the same value as
/// [`f16_le`]'s software conversion for every input (f16 to f32 is exact; subnormal halves
/// become normal singles, so flush-to-zero never applies; a NaN stays a NaN with its payload,
/// quietened, as `half` does), in 2 instructions instead of ~15.
#[inline(always)]
fn f16(d: [u8; 2]) -> f32 {
    let r: f32;
    // SAFETY: register-only (no memory, no NZCV flags); the M55's FPU has the half-precision
    // conversions. FPSCR.AHP is 0 (IEEE half), its reset value, which nothing here changes.
    unsafe {
        asm!(
            "vmov {r}, {b}",
            "vcvtb.f32.f16 {r}, {r}",
            b = in(reg) u32::from(u16::from_le_bytes(d)),
            r = out(sreg) r,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    r
}

/// Integer parts of two rows' Q8_0 blocks against one activation block: `(w0 . x, w1 . x)`,
/// loading `x` once for both.
#[inline(always)]
fn pair_q8_0(w0: &BlockQ8_0, w1: &BlockQ8_0, x: &BlockQ8_0) -> (i32, i32) {
    let (s0, s1): (i32, i32);
    // SAFETY: reads the 32 bytes of each `qs` (VLDRB: any alignment) and writes only the
    // declared registers; VMLADAV accumulators must be even registers (r10, r12). No flags.
    unsafe {
        asm!(
            "vldrb.s8 q0, [{x}]",
            "vldrb.s8 q1, [{x}, #16]",
            "vldrb.s8 q2, [{a}]",
            "vldrb.s8 q3, [{a}, #16]",
            "vmladav.s8 r12, q0, q2",
            "vmladava.s8 r12, q1, q3",
            "vldrb.s8 q2, [{b}]",
            "vldrb.s8 q3, [{b}, #16]",
            "vmladav.s8 r10, q0, q2",
            "vmladava.s8 r10, q1, q3",
            x = in(reg) x.qs.as_ptr(),
            a = in(reg) w0.qs.as_ptr(),
            b = in(reg) w1.qs.as_ptr(),
            lateout("r12") s0,
            lateout("r10") s1,
            out("q0") _, out("q1") _, out("q2") _, out("q3") _,
            options(pure, readonly, nostack, preserves_flags)
        );
    }
    (s0, s1)
}

/// `y[r] = sum_b term(w_b, x_b, s_b, d_x)` over rows of `bpr` blocks, two rows at a time
/// through `pair` (each activation block and its scale loaded once for both rows: 0.67 -> 0.55
/// instructions per MAC for Q8_0, 0.79 -> 0.66 for Q4_0, measured under QEMU `-icount`,
/// bin `kernels`), a last odd row through `one`. `term` is the portable kernel's float
/// expression for one block (`s * (d_w * d_x)`, plus `m_w * s_x` for Q4_1) given the integer
/// sum `s` and `d_x` as f32, and each row adds the terms in block order as it does, so pairing
/// changes no bit.
#[inline(always)]
fn rows<W, X>(
    w: &[W],
    bpr: usize,
    x: &[X],
    y: &mut [f32],
    dx: impl Fn(&X) -> [u8; 2],
    term: impl Fn(&W, &X, i32, f32) -> f32,
    (pair, one): (impl Fn(&W, &W, &X) -> (i32, i32), impl Fn(&W, &X) -> i32),
) {
    let n = y.len();
    let mut ys = y.chunks_exact_mut(2);
    for (rows, o) in w.chunks_exact(2 * bpr).zip(&mut ys) {
        let (r0, r1) = rows.split_at(bpr);
        let (mut acc0, mut acc1) = (0.0f32, 0.0f32);
        for ((a0, a1), b) in r0.iter().zip(r1).zip(x) {
            let (s0, s1) = pair(a0, a1, b);
            let d = f16(dx(b));
            acc0 += term(a0, b, s0, d);
            acc1 += term(a1, b, s1, d);
        }
        o[0] = acc0;
        o[1] = acc1;
    }
    let last = w.get((n - n % 2) * bpr..n * bpr);
    if let (Some(row), [o]) = (last, ys.into_remainder()) {
        let mut acc = 0.0f32;
        for (a, b) in row.iter().zip(x) {
            acc += term(a, b, one(a, b), f16(dx(b)));
        }
        *o = acc;
    }
}

fn q8_0_rows(w: &[BlockQ8_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    let term = |a: &BlockQ8_0, _: &BlockQ8_0, s: i32, dx: f32| s as f32 * (f16(a.d) * dx);
    rows(w, bpr, x, y, |b| b.d, term, (pair_q8_0, block_q8_0));
}

fn q4_0_rows(w: &[BlockQ4_0], bpr: usize, x: &[BlockQ8_0], y: &mut [f32]) {
    let term = |a: &BlockQ4_0, _: &BlockQ8_0, s: i32, dx: f32| s as f32 * (f16(a.d) * dx);
    rows(w, bpr, x, y, |b| b.d, term, (pair_q4_0, block_q4_0));
}

fn q4_1_rows(w: &[BlockQ4_1], bpr: usize, x: &[BlockQ8_1], y: &mut [f32]) {
    // The portable `acc += s * (d_w * d_x) + m_w * s_x`: the sum of both products first.
    let term = |a: &BlockQ4_1, b: &BlockQ8_1, s: i32, dx: f32| {
        s as f32 * (f16(a.d) * dx) + f16(a.m) * f16(b.s)
    };
    rows(w, bpr, x, y, |b| b.d, term, (pair_q4_1, block_q4_1));
}
