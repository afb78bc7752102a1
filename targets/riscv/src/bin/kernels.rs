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
use edgelora::kernels::{self, reference, Isa, Kernel};
use edgelora::quant::{to_f16_le, BlockQ4_0, BlockQ8_0};
use edgelora_firmware::{entry, exit, Once, Out};

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

/// xorshift32.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0
    }

    /// A quant byte: all 0x80 (q8 -128; q4 nibbles 0 and 8), all 0x7f / 0xff (q8 127; q4
    /// nibble 15), or random, by `case`.
    fn byte(&mut self, case: u32, extreme: u8) -> u8 {
        match case % 4 {
            0 => 0x80,
            1 => extreme,
            _ => self.next() as u8,
        }
    }

    /// An f16 scale: the largest, the smallest subnormal, zero, or random in [-1, 1).
    fn scale(&mut self, case: u32) -> [u8; 2] {
        match case % 5 {
            0 => to_f16_le(65504.0),
            1 => [1, 0],
            2 => [0, 0],
            _ => to_f16_le((self.next() % 2000) as f32 / 1000.0 - 1.0),
        }
    }
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Fill `bpr` blocks per row for `case`; extremes in whole blocks, chosen per block.
fn fill(r: &mut Rng, case: u32, w8: &mut [BlockQ8_0], w4: &mut [BlockQ4_0], x: &mut [BlockQ8_0]) {
    for (i, b) in w8.iter_mut().chain(x.iter_mut()).enumerate() {
        let c = case.wrapping_add(i as u32);
        b.d = r.scale(c);
        for q in b.qs.iter_mut() {
            *q = r.byte(c, 0x7f);
        }
    }
    for (i, b) in w4.iter_mut().enumerate() {
        let c = case.wrapping_add(3 * i as u32);
        b.d = r.scale(c);
        for q in b.qs.iter_mut() {
            *q = r.byte(c, 0xff);
        }
    }
}

/// The kernel's matvecs against the reference over every shape and case; cases checked.
fn check_rows(
    k: &Kernel,
    w8: &mut [BlockQ8_0],
    w4: &mut [BlockQ4_0],
    x: &mut [BlockQ8_0],
) -> Result<u32, &'static str> {
    let mut r = Rng(0x9e37_79b9);
    let mut n = 0;
    for bpr in [0usize, 1, 2, 3, 7, MAXB] {
        for case in 0..10u32 {
            let (w8, w4, x) = (&mut w8[..ROWS * bpr], &mut w4[..ROWS * bpr], &mut x[..bpr]);
            fill(&mut r, case, w8, w4, x);
            let mut y = [0f32; ROWS];
            k.matvec_q8_0(w8, bpr, x, &mut y);
            for (row, &got) in w8.chunks(bpr.max(1)).zip(&y) {
                let want = if bpr == 0 {
                    0.0
                } else {
                    reference::vec_dot_q8_0_q8_0(row, x)
                };
                if !same(got, want) {
                    return Err("q8_0 rows differ from the reference");
                }
            }
            k.matvec_q4_0(w4, bpr, x, &mut y);
            for (row, &got) in w4.chunks(bpr.max(1)).zip(&y) {
                let want = if bpr == 0 {
                    0.0
                } else {
                    reference::vec_dot_q4_0_q8_0(row, x)
                };
                if !same(got, want) {
                    return Err("q4_0 rows differ from the reference");
                }
            }
            n += 1;
        }
    }
    Ok(n)
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
