//! Kernel checks on the device: the active kernel (DSP with feature `dsp`, MVE with `mve`, else
//! portable) against the scalar reference, and instructions per MAC measured with SysTick.
//!
//! Integer parts: every block dot is compared as an `i32` with a plain loop (DSP build only:
//! the DSP block functions are public for this; they run the row-group kernel itself). Whole
//! matvecs: the active kernel's rows must equal `reference::vec_dot_*` bit for bit (same float
//! formula, blocks in order), over 1 to 9 rows (every row count mod 4, the DSP kernel's group
//! size, below and above it: full groups, the moved-back last group, one-row groups) times 0,
//! 1, 2, 3, 7, 64 and 128 blocks per row, random blocks and extreme ones (-128/127 bytes,
//! nibbles 0/15, f16 max, subnormal and zero scales); an output past the last row must stay
//! untouched. Q4_1 x Q8_1 rows over the same shapes, on every table built in (MVE has its own
//! kernel; DSP and portable run the portable one).
//!
//! Speed: run under `qemu-system-arm -icount shift=0` (one instruction = 1 ns of virtual
//! time), SysTick on the core clock counts virtual time; a calibration loop of known length
//! turns ticks into instructions, so the figure is instructions (not cycles) per MAC. Shapes:
//! Q8_0/Q4_0 rows of 64 blocks (2048 weights), 4 rows (one DSP row group) and 64 rows (a
//! layer-sized matvec); the LoRA products of the firmware's adapters (F32, rank 4, dim 64):
//! `A x` (4 rows of 64) and `y += s B t` (64 rows of 4). Instruction counts under `-icount`
//! are deterministic, so the active kernel's figures are printed as an `EL-BUDGET` line that
//! `tests/tests/firmware.rs` checks against `budget.txt` (`kernels.*`).
#![no_std]
#![no_main]

use core::fmt::Write;
use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::entry;
use edgelora::kernels::{self, Isa, Kernel};
use edgelora::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType};
use edgelora_firmware::testdata::{self, fill_q4, fill_q8, same, Rng};
use edgelora_firmware::{exit, Out};

const MAXB: usize = 128;
/// Row counts checked: every count mod 4 below, at and above one DSP row group.
const ROW_COUNTS: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];
/// Blocks the weight buffers hold: the checks' 9 x 128 and the 64 x 64 speed shape.
const NW: usize = 4096;
/// Blocks per row and repetitions of the speed shapes.
const BPR: usize = 64;
const REPS: usize = 8;
/// The LoRA shapes: the firmware adapters' rank and model dim.
const RANK: usize = 4;
const DIM: usize = 64;

/// The active kernel's matvecs against the reference: 1 to 9 rows x 0, 1, 2, 3, 7, 64 and
/// 128 blocks per row x 10 contents.
fn check_rows(
    k: &Kernel,
    w8: &mut [BlockQ8_0],
    w4: &mut [BlockQ4_0],
    x: &mut [BlockQ8_0],
) -> Result<u32, &'static str> {
    let bprs = [0usize, 1, 2, 3, 7, 64, MAXB];
    testdata::check_rows(
        k,
        (w8, w4, x),
        (&ROW_COUNTS, &bprs, 10),
        0x9e37_79b9_7f4a_7c15,
    )
}

/// The active kernel's F32 row dots and LoRA B updates against the portable kernel's (the
/// host's, which the firmware's output lines are compared with), bit for bit: row lengths
/// around the eight-wide chunks and the four-wide tail, 1 to 5 rows, aligned and unaligned
/// weights, extreme values; rows past the output must stay untouched.
fn check_f32(k: &Kernel, buf: &mut [f32]) -> Result<u32, &'static str> {
    let Some(port) = Isa::Portable.kernel() else {
        return Ok(0);
    };
    let mut r = Rng(99);
    let mut n = 0;
    const MAXC: usize = 65;
    for cols in [1usize, 3, 4, 5, 7, 8, 9, 12, 16, 31, 64, MAXC] {
        for rows in 1..=5usize {
            for case in 0..4u32 {
                for v in buf.iter_mut() {
                    *v = match (case, r.next_u32() % 16) {
                        (3, 0) => 0.0,
                        (3, 1) => -0.0,
                        (3, 2) => 3.0e38,
                        (3, 3) => 1.0e-40,
                        _ => (r.next_u32() % 20001) as f32 / 10000.0 - 1.0,
                    };
                }
                let (x, rest) = buf.split_at(MAXC);
                let bytes = f32_bytes(rest);
                // Offset 0: aligned (the VLDM path); offset 2: the fallback.
                for off in [0usize, 2] {
                    let w = &bytes[off..off + rows * cols * 4];
                    let (mut a, mut b) = ([7.0f32; 6], [7.0f32; 6]);
                    k.matvec_float(GgmlType::F32, w, cols, &x[..cols], &mut a[..rows]);
                    port.matvec_float(GgmlType::F32, w, cols, &x[..cols], &mut b[..rows]);
                    if a.iter().zip(&b).any(|(p, q)| !same(*p, *q)) {
                        return Err("f32 rows differ from the portable kernel");
                    }
                    let s = 0.37;
                    k.matvec_float_add(GgmlType::F32, w, cols, &x[..cols], s, &mut a[..rows]);
                    port.matvec_float_add(GgmlType::F32, w, cols, &x[..cols], s, &mut b[..rows]);
                    if a.iter().zip(&b).any(|(p, q)| !same(*p, *q)) {
                        return Err("f32 add rows differ from the portable kernel");
                    }
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

/// Integer parts of single blocks, DSP against a plain loop ([`check_blocks_with`]).
#[cfg(feature = "dsp")]
fn check_blocks() -> Result<u32, &'static str> {
    use edgelora::kernels::arm::dsp;
    check_blocks_with((dsp::block_q8_0, dsp::block_q4_0))
}

#[cfg(not(feature = "dsp"))]
fn check_blocks() -> Result<u32, &'static str> {
    Ok(0)
}

/// A table's public block functions (integer parts): Q8_0 x Q8_0 and Q4_0 x Q8_0.
type BlockFns = (
    fn(&BlockQ8_0, &BlockQ8_0) -> i32,
    fn(&BlockQ4_0, &BlockQ8_0) -> i32,
);

/// The ISA-specific block functions built into this image (beside DSP's, checked above).
fn block_fns() -> &'static [(&'static str, BlockFns)] {
    &[
        #[cfg(feature = "mve")]
        (
            "mve",
            (
                edgelora::kernels::arm::mve::block_q8_0,
                edgelora::kernels::arm::mve::block_q4_0,
            ),
        ),
    ]
}

/// Integer parts of single blocks through `(q8, q4)` against a plain loop, over the same
/// random and extreme blocks (2000 cases; [`check_blocks`] runs DSP's through it).
fn check_blocks_with((q8, q4): BlockFns) -> Result<u32, &'static str> {
    let mut r = Rng(42);
    let mut n = 0;
    for case in 0..2000u32 {
        let mut w8 = [BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32],
        }];
        let mut w4 = [BlockQ4_0 {
            d: [0; 2],
            qs: [0; 16],
        }];
        let mut x = [BlockQ8_0 {
            d: [0; 2],
            qs: [0; 32],
        }];
        fill_q8(&mut r, &mut w8, case);
        fill_q4(&mut r, &mut w4, case / 5);
        fill_q8(&mut r, &mut x, case / 3);
        let want8: i32 = w8[0]
            .qs
            .iter()
            .zip(&x[0].qs)
            .map(|(&a, &b)| a as i8 as i32 * b as i8 as i32)
            .sum();
        let want4: i32 = (0..16)
            .map(|j| {
                ((w4[0].qs[j] & 15) as i32 - 8) * x[0].qs[j] as i8 as i32
                    + ((w4[0].qs[j] >> 4) as i32 - 8) * x[0].qs[j + 16] as i8 as i32
            })
            .sum();
        if q8(&w8[0], &x[0]) != want8 {
            return Err("q8_0 block integer sum");
        }
        if q4(&w4[0], &x[0]) != want4 {
            return Err("q4_0 block integer sum");
        }
        n += 1;
    }
    Ok(n)
}

/// Matvecs of 1, 2 and 3 rows (tables may group rows: MVE pairs them and runs an odd last
/// row alone) against the reference, bit for bit, over a few shapes and cases.
fn check_row_counts(
    k: &Kernel,
    w8: &mut [BlockQ8_0],
    w4: &mut [BlockQ4_0],
    x: &mut [BlockQ8_0],
) -> Result<u32, &'static str> {
    testdata::check_rows(
        k,
        (w8, w4, x),
        (&[1, 2, 3], &[1, 3, 64], 5),
        0x2545_f491_4f6c_dd1d,
    )
}

/// SysTick ticks (down-counter, 24 bits) taken by `f`.
fn ticks(f: impl FnOnce()) -> u32 {
    let start = SYST::get_current();
    f();
    let end = SYST::get_current();
    start.wrapping_sub(end) & 0x00ff_ffff
}

/// Instructions per tick, from a loop of known length (4 instructions per iteration).
fn calibrate() -> f32 {
    const N: u32 = 100_000;
    let t = ticks(|| {
        // SAFETY: a register-only countdown loop.
        unsafe {
            core::arch::asm!(
                "2:", "nop", "nop", "subs {n}, #1", "bne 2b",
                n = inout(reg) N => _, options(nomem, nostack)
            )
        };
    });
    (4 * N) as f32 / t.max(1) as f32
}

/// Instructions per MAC of `f` (which does `macs` MACs), `ipt` instructions per tick.
fn ipm(ipt: f32, macs: usize, f: impl FnOnce()) -> f32 {
    ticks(f) as f32 * ipt / macs as f32
}

#[entry]
fn main() -> ! {
    // cortex-m-rt's #[entry] turns `static mut`s declared first in main into `&'static mut`
    // references (main runs once), so no aliasing exists.
    static mut W8: [BlockQ8_0; NW] = [BlockQ8_0 {
        d: [0; 2],
        qs: [0; 32],
    }; NW];
    static mut W4: [BlockQ4_0; NW] = [BlockQ4_0 {
        d: [0; 2],
        qs: [0; 16],
    }; NW];
    static mut X: [BlockQ8_0; MAXB] = [BlockQ8_0 {
        d: [0; 2],
        qs: [0; 32],
    }; MAXB];
    // Q4_1 weights and Q8_1 activations, one static (cortex-m-rt passes each as an argument).
    static mut Q41: ([BlockQ4_1; NW], [BlockQ8_1; MAXB]) = (
        [BlockQ4_1 {
            d: [0; 2],
            m: [0; 2],
            qs: [0; 16],
        }; NW],
        [BlockQ8_1 {
            d: [0; 2],
            s: [0; 2],
            qs: [0; 32],
        }; MAXB],
    );
    // LoRA factors as the GGUF holds them (little-endian f32 bytes, 4-aligned).
    static mut LA: [f32; RANK * DIM] = [0.0; RANK * DIM];
    static mut LB: [f32; DIM * RANK] = [0.0; DIM * RANK];
    // Scratch for the F32 checks: x (65) and up to 5 rows of 65, plus 2 bytes of offset.
    static mut F: [f32; 65 * 7] = [0.0; 65 * 7];
    let mut out = Out;
    let Some(mut p) = cortex_m::Peripherals::take() else {
        exit(false)
    };
    p.SYST.set_clock_source(SystClkSource::Core);
    p.SYST.set_reload(0x00ff_ffff);
    p.SYST.clear_current();
    p.SYST.enable_counter();

    let (w8, w4, x): (&mut [BlockQ8_0], &mut [BlockQ4_0], &mut [BlockQ8_0]) = (W8, W4, X);
    let (w41, x1): (&mut [BlockQ4_1], &mut [BlockQ8_1]) = (&mut Q41.0, &mut Q41.1);

    let k = kernels::active();
    let _ = writeln!(out, "EL-KERNEL active={}", k.isa().name());
    kernels::reset_ran();
    let mut ok = true;
    match check_blocks() {
        Ok(n) => {
            let _ = writeln!(out, "EL-KERNEL blocks_int_exact cases={n}");
        }
        Err(e) => {
            let _ = writeln!(out, "EL-FAIL {e}");
            ok = false;
        }
    }
    match check_rows(k, w8, w4, x) {
        Ok(n) => {
            let _ = writeln!(out, "EL-KERNEL rows_bit_exact_vs_reference cases={n}");
        }
        Err(e) => {
            let _ = writeln!(out, "EL-FAIL {e}");
            ok = false;
        }
    }
    match check_f32(k, F) {
        Ok(n) => {
            let _ = writeln!(out, "EL-KERNEL f32_rows_bit_exact_vs_portable cases={n}");
        }
        Err(e) => {
            let _ = writeln!(out, "EL-FAIL {e}");
            ok = false;
        }
    }
    let ran_dsp = kernels::ran(Isa::Dsp);
    let _ = writeln!(out, "EL-KERNEL ran_dsp={ran_dsp}");
    // Generic over the tables built in: the active one must have run, every other table
    // (portable, DSP beside MVE) must match the reference too, and the ISA-specific block
    // functions of each must be exact.
    let _ = writeln!(out, "EL-KERNEL ran_active={}", kernels::ran(k.isa()));
    for (name, fns) in block_fns() {
        match check_blocks_with(*fns) {
            Ok(n) => {
                let _ = writeln!(out, "EL-KERNEL blocks_exact isa={name} cases={n}");
            }
            Err(e) => {
                let _ = writeln!(out, "EL-FAIL {name}: {e}");
                ok = false;
            }
        }
    }
    for other in Isa::ALL.into_iter().filter_map(Isa::kernel) {
        match check_rows(other, w8, w4, x) {
            Ok(n) => {
                let _ = writeln!(
                    out,
                    "EL-KERNEL rows_exact isa={} cases={n}",
                    other.isa().name()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "EL-FAIL {}: {e}", other.isa().name());
                ok = false;
            }
        }
        // Q4_1 (MVE has a kernel; DSP and portable run the portable one): the same shapes.
        let bprs = [0usize, 1, 2, 3, 7, 64, MAXB];
        let shapes = (&ROW_COUNTS[..], &bprs[..], 10);
        match testdata::check_rows_q4_1(other, (w41, x1), shapes, 0x51_7cc1_b727_220a) {
            Ok(n) => {
                let _ = writeln!(
                    out,
                    "EL-KERNEL q4_1_rows_exact isa={} cases={n}",
                    other.isa().name()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "EL-FAIL {}: {e}", other.isa().name());
                ok = false;
            }
        }
        match check_row_counts(other, w8, w4, x) {
            Ok(n) => {
                let _ = writeln!(
                    out,
                    "EL-KERNEL row_counts_exact isa={} cases={n}",
                    other.isa().name()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "EL-FAIL {}: {e}", other.isa().name());
                ok = false;
            }
        }
    }

    // Instructions per MAC, random contents (the count does not depend on them).
    let mut r = Rng(7);
    fill_q8(&mut r, w8, 3);
    fill_q4(&mut r, w4, 3);
    fill_q8(&mut r, &mut x[..BPR], 3);
    testdata::fill_q4_1(&mut r, w41, 3);
    testdata::fill_q8_1(&mut r, &mut x1[..BPR], 3);
    let (la, lb): (&mut [f32], &mut [f32]) = (LA, LB);
    for v in la.iter_mut().chain(lb.iter_mut()) {
        *v = (r.next_u32() % 2000) as f32 / 1000.0 - 1.0;
    }
    let xf: [f32; DIM] = core::array::from_fn(|i| i as f32 / 64.0 - 0.5);
    let ipt = calibrate();
    let mut active = [0f32; 7];
    // DSP beside the active table where both are built (the M55 image has DSP and MVE).
    let dsp = Isa::Dsp.kernel().filter(|d| d.isa() != k.isa());
    for (name, kern) in [
        ("portable", Isa::Portable.kernel()),
        ("active", Some(k)),
        ("dsp", dsp),
    ] {
        let Some(kern) = kern else { continue };
        let mut y = [0f32; BPR];
        let mut f = [0f32; 7];
        for (i, rows) in [4usize, 64].into_iter().enumerate() {
            let (w8, w4, x, y) = (
                &w8[..rows * BPR],
                &w4[..rows * BPR],
                &x[..BPR],
                &mut y[..rows],
            );
            let macs = REPS * rows * BPR * 32;
            f[2 * i] = ipm(ipt, macs, || {
                for _ in 0..REPS {
                    kern.matvec_q8_0(w8, BPR, x, y);
                }
            });
            f[2 * i + 1] = ipm(ipt, macs, || {
                for _ in 0..REPS {
                    kern.matvec_q4_0(w4, BPR, x, y);
                }
            });
        }
        let (w41, x1, y4) = (&w41[..4 * BPR], &x1[..BPR], &mut y[..4]);
        f[6] = ipm(ipt, REPS * 4 * BPR * 32, || {
            for _ in 0..REPS {
                kern.matvec_q4_1(w41, BPR, x1, y4);
            }
        });
        // LoRA: t = A x (RANK rows of DIM), then y += s B t (DIM rows of RANK), as
        // `AdapterSet::apply` runs them for an F32 adapter.
        let (ab, bb) = (f32_bytes(la), f32_bytes(lb));
        let mut t = [0f32; RANK];
        let lreps = 8 * REPS;
        f[4] = ipm(ipt, lreps * RANK * DIM, || {
            for _ in 0..lreps {
                kern.matvec_float(GgmlType::F32, ab, DIM, &xf, &mut t);
            }
        });
        f[5] = ipm(ipt, lreps * RANK * DIM, || {
            for _ in 0..lreps {
                kern.matvec_float_add(GgmlType::F32, bb, RANK, &t, 0.5, &mut y);
            }
        });
        let _ = writeln!(
            out,
            "EL-IPM kernel={name}({}) q8_0={:.2} q4_0={:.2} insn/MAC (4 rows x {BPR} blocks); \
             q8_0={:.2} q4_0={:.2} (64 rows); lora_a={:.2} lora_b={:.2} (f32, rank {RANK}, dim {DIM}); \
             q4_1={:.2} (4 rows)",
            kern.isa().name(),
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6]
        );
        if name == "active" {
            active = f;
        }
    }
    let _ = writeln!(out, "EL-IPM calibration insn_per_tick={ipt:.2}");
    // The active kernel's figures x100 (rounded up), for budget.txt's `kernels.*` limits.
    let x100 = |v: f32| (v * 100.0) as u32 + 1;
    let _ = writeln!(
        out,
        "EL-BUDGET q8_0_ipm_x100={} q4_0_ipm_x100={} q8_0_64rows_ipm_x100={} q4_0_64rows_ipm_x100={} lora_a_ipm_x100={} lora_b_ipm_x100={} q4_1_ipm_x100={}",
        x100(active[0]),
        x100(active[1]),
        x100(active[2]),
        x100(active[3]),
        x100(active[4]),
        x100(active[5]),
        x100(active[6])
    );
    exit(ok)
}

/// The little-endian bytes of f32s (as a GGUF F32 tensor holds them; Cortex-M is little endian).
fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte of it is initialised; u8 has alignment 1.
    unsafe { core::slice::from_raw_parts(v.as_ptr().cast::<u8>(), core::mem::size_of_val(v)) }
}
