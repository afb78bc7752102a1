//! Kernel check on RISC-V: the active kernel (portable: there are no RISC-V SIMD kernels yet;
//! the P and V extensions are future work) against the scalar reference, and instructions per
//! MAC from the `minstret` counter.
//!
//! Rows: matvecs of 4 rows over 0, 1, 2, 3, 7 and 64 blocks per row, with random blocks and
//! extreme ones (-128/127 bytes, nibbles 0/15, f16 max, subnormal and zero scales), must equal
//! `reference::vec_dot_*` bit for bit: riscv32imac has no FPU, so this also checks that the
//! soft-float f32 arithmetic rounds as the host's hardware does.
//!
//! Speed: under `qemu-system-riscv32 -icount shift=0` QEMU's `minstret` is the exact count of
//! retired instructions (without `-icount` it reads host time), so the figure is instructions
//! per MAC over the same work as the Cortex-M `kernels` image (8 matvecs of 4 x 64 blocks),
//! and comparable with its `EL-IPM` lines. A counted loop calibrates it (1.00 expected).
#![no_std]
#![no_main]

use core::fmt::Write;
use edgelora::kernels::{self, Isa, Kernel};
use edgelora::quant::{BlockQ4_0, BlockQ8_0};
use edgelora_firmware::{entry, exit, testdata, Once, Out};

const MAXB: usize = 64;
const ROWS: usize = 4;
const Q8: BlockQ8_0 = BlockQ8_0 {
    d: [0; 2],
    qs: [0; 32],
};
const Q4: BlockQ4_0 = BlockQ4_0 {
    d: [0; 2],
    qs: [0; 16],
};

static W8: Once<[BlockQ8_0; ROWS * MAXB]> = Once::new([Q8; ROWS * MAXB]);
static W4: Once<[BlockQ4_0; ROWS * MAXB]> = Once::new([Q4; ROWS * MAXB]);
static X: Once<[BlockQ8_0; MAXB]> = Once::new([Q8; MAXB]);

/// The kernel's matvecs against the reference (`testdata::check_rows`, shared with the
/// Cortex-M image): 4 rows x 0, 1, 2, 3, 7 and 64 blocks per row x 10 contents.
fn check_rows(
    k: &Kernel,
    w8: &mut [BlockQ8_0],
    w4: &mut [BlockQ4_0],
    x: &mut [BlockQ8_0],
) -> Result<u32, &'static str> {
    let bprs = [0usize, 1, 2, 3, 7, MAXB];
    testdata::check_rows(k, (w8, w4, x), (&[ROWS], &bprs, 10), 0x9e37_79b9_7f4a_7c15)
}

/// `minstret` counts (instructions under `-icount shift=0`) taken by `f`.
fn counted(f: impl FnOnce()) -> u32 {
    let start = riscv::register::minstret::read() as u32;
    f();
    (riscv::register::minstret::read() as u32).wrapping_sub(start)
}

/// Instructions per count, from a loop of known length (2 instructions per iteration).
fn calibrate() -> f32 {
    const N: u32 = 100_000;
    let t = counted(|| {
        // SAFETY: a register-only countdown loop.
        unsafe {
            core::arch::asm!(
                "2:", "addi {n}, {n}, -1", "bnez {n}, 2b",
                n = inout(reg) N => _, options(nomem, nostack)
            )
        };
    });
    (2 * N) as f32 / t.max(1) as f32
}

#[entry]
fn main() -> ! {
    let mut out = Out;
    let (Some(w8), Some(w4), Some(x)) = (W8.take(), W4.take(), X.take()) else {
        let _ = writeln!(out, "EL-FAIL statics taken twice");
        exit(false)
    };
    let k = kernels::active();
    let _ = writeln!(out, "EL-KERNEL active={}", k.isa().name());
    kernels::reset_ran();
    let mut ok = true;
    match check_rows(k, w8, w4, x) {
        Ok(n) => {
            let _ = writeln!(out, "EL-KERNEL rows_bit_exact_vs_reference cases={n}");
        }
        Err(e) => {
            let _ = writeln!(out, "EL-FAIL {e}");
            ok = false;
        }
    }
    let ran = kernels::ran(k.isa());
    let _ = writeln!(out, "EL-KERNEL ran_active={ran}");
    ok &= ran && k.isa() == Isa::Portable;

    let ipc = calibrate();
    let bpr = MAXB;
    let macs = (8 * ROWS * bpr * 32) as f32;
    let mut y = [0f32; ROWS];
    let t8 = counted(|| {
        for _ in 0..8 {
            k.matvec_q8_0(&w8[..ROWS * bpr], bpr, &x[..bpr], &mut y);
        }
    });
    let t4 = counted(|| {
        for _ in 0..8 {
            k.matvec_q4_0(&w4[..ROWS * bpr], bpr, &x[..bpr], &mut y);
        }
    });
    let _ = writeln!(
        out,
        "EL-IPM kernel=active({}) q8_0={:.2} q4_0={:.2} insn/MAC",
        k.isa().name(),
        t8 as f32 * ipc / macs,
        t4 as f32 * ipc / macs
    );
    let _ = writeln!(out, "EL-IPM calibration insn_per_count={ipc:.2}");
    exit(ok)
}
