//! Board support shared by the firmware images: semihosting output and exit, statics handed
//! out once as `&'static mut`, the assets in flash, and the budget figures (flash from the
//! linker's section symbols, RAM from the statics plus a painted-stack high-water mark).
//!
//! Logging is plain semihosting text (`hprint!`), not defmt: the host test compares the
//! firmware's lines with lines the host prints from the same code ([`scenario`]), which needs
//! the formatted text itself; decoding defmt frames would add the `defmt-decoder` tool chain
//! to every `cargo test` build for no extra checking power.
#![no_std]

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use cortex_m_semihosting::{debug, hio};

pub mod scenario;

/// Sizes computed by build.rs from the assets (see `assets/manifest.txt`).
pub mod config {
    include!(concat!(env!("OUT_DIR"), "/config.rs"));
}

/// Bytes aligned to 32 (GGUF's default alignment), for `include_bytes!` into flash.
#[repr(C, align(32))]
pub struct Aligned<T: ?Sized>(pub T);

macro_rules! asset {
    ($name:ident, $env:literal, $doc:literal) => {
        #[doc = $doc]
        #[link_section = ".rodata.edgelora_assets"]
        pub static $name: Aligned<[u8; include_bytes!(env!($env)).len()]> =
            Aligned(*include_bytes!(env!($env)));
    };
}

/// The assets in flash (32-byte aligned, in their own `.rodata.edgelora_assets` input section).
pub mod assets {
    use super::Aligned;
    asset!(BASE, "EL_BASE", "Base model GGUF.");
    asset!(ADAPTER_A, "EL_ADAPTER_A", "Adapter A.");
    asset!(ADAPTER_B, "EL_ADAPTER_B", "Adapter B.");
    asset!(
        ADAPTER_WRONG,
        "EL_ADAPTER_WRONG",
        "Adapter recording another base."
    );

    /// Bytes of all assets together (subtracted from .rodata for the runtime's flash figure).
    pub fn total() -> usize {
        // black_box keeps every asset in every image that reports a budget, so this sum is
        // what .rodata really holds (an image that does not use an asset would otherwise drop
        // it and the subtraction would be wrong).
        [
            &BASE.0[..],
            &ADAPTER_A.0[..],
            &ADAPTER_B.0[..],
            &ADAPTER_WRONG.0[..],
        ]
        .iter()
        .map(|a| core::hint::black_box(*a).len())
        .sum()
    }
}

/// A static handed out at most once as `&'static mut` (a minimal `StaticCell`).
pub struct Once<T> {
    taken: AtomicBool,
    cell: UnsafeCell<T>,
}

// SAFETY: the only access to `cell` is through `take`, which hands out at most one reference
// for the program's life (the atomic swap decides which caller gets it).
unsafe impl<T: Send> Sync for Once<T> {}

impl<T> Once<T> {
    /// A static holding `v`.
    pub const fn new(v: T) -> Self {
        Once {
            taken: AtomicBool::new(false),
            cell: UnsafeCell::new(v),
        }
    }

    /// The one exclusive reference, or `None` if it was taken already.
    // `&mut` from `&`: sound because the atomic flag lets exactly one caller through, ever
    // (the pattern of `static_cell::StaticCell`).
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `taken` was false, so no other reference to the cell exists or ever will.
        Some(unsafe { &mut *self.cell.get() })
    }
}

/// Semihosting stdout as `fmt::Write`. Errors from the host are ignored: there is nowhere
/// else to report them.
pub struct Out;

impl fmt::Write for Out {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Ok(mut h) = hio::hstdout() {
            let _ = h.write_all(s.as_bytes());
        }
        Ok(())
    }
}

/// Leave QEMU with success (0) or failure (1).
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

extern "C" {
    static __stext: u8;
    static __etext: u8;
    static __srodata: u8;
    static __erodata: u8;
    static __sdata: u8;
    static __edata: u8;
    static __sbss: u8;
    static __ebss: u8;
    static __sheap: u8;
    static _stack_start: u8;
}

fn addr(p: *const u8) -> usize {
    p as usize
}

/// Section sizes from cortex-m-rt's linker symbols.
#[derive(Clone, Copy, Debug)]
pub struct Sections {
    /// `.text` (code).
    pub text: usize,
    /// `.rodata`, assets included.
    pub rodata: usize,
    /// `.data` (flash copy and RAM).
    pub data: usize,
    /// `.bss`.
    pub bss: usize,
    /// Bytes of RAM for the stack: from the end of the statics to the top of RAM.
    pub stack_room: usize,
}

/// Read the section symbols.
pub fn sections() -> Sections {
    // Only the addresses of the linker symbols are taken (safe: nothing is read).
    Sections {
        text: addr(&raw const __etext) - addr(&raw const __stext),
        rodata: addr(&raw const __erodata) - addr(&raw const __srodata),
        data: addr(&raw const __edata) - addr(&raw const __sdata),
        bss: addr(&raw const __ebss) - addr(&raw const __sbss),
        stack_room: addr(&raw const _stack_start) - addr(&raw const __sheap),
    }
}

const PAINT: u32 = 0x5afe_c0de;
/// Bytes of stack painted below the stack pointer at start-up: the most the high-water mark
/// can see beyond the frames live at paint time (a figure at the limit means "at least").
pub const PAINT_WINDOW: usize = 64 * 1024;

static PAINT_LO: AtomicUsize = AtomicUsize::new(0);
static PAINT_HI: AtomicUsize = AtomicUsize::new(0);

/// Paint the stack window below the current stack pointer. Call first thing in `main`.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    // Leave 256 bytes under the current frame alone (this function's own frame).
    let hi = (sp - 256) & !3;
    // Not into the stack guard (`stack_guard`): reading it back would fault.
    let floor = guard_region().1;
    let lo = hi.saturating_sub(PAINT_WINDOW).max(floor);
    PAINT_LO.store(lo, Ordering::Relaxed);
    PAINT_HI.store(hi, Ordering::Relaxed);
    let mut p = lo;
    while p < hi {
        // SAFETY: [lo, hi) lies between the end of the statics and below the live stack
        // frames, word aligned; nothing lives there.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
}

/// Bytes of stack used since [`paint_stack`], measured from the top of RAM to the deepest
/// word no longer painted.
pub fn stack_high_water() -> usize {
    let (lo, hi) = (
        PAINT_LO.load(Ordering::Relaxed),
        PAINT_HI.load(Ordering::Relaxed),
    );
    let mut p = lo;
    while p < hi {
        // SAFETY: the window painted by `paint_stack`, read back word by word.
        if unsafe { core::ptr::read_volatile(p as *const u32) } != PAINT {
            break;
        }
        p += 4;
    }
    addr(&raw const _stack_start) - p
}

/// Print the budget line: flash of the runtime (text + rodata without the assets), assets,
/// RAM (statics + stack high-water mark).
pub fn print_budget<W: fmt::Write>(out: &mut W) -> fmt::Result {
    let s = sections();
    let assets = assets::total();
    let stack = stack_high_water();
    writeln!(
        out,
        "EL-BUDGET flash_runtime={} text={} rodata_runtime={} assets={} ram_static={} stack_hwm={} ram_total={}",
        s.text + s.rodata - assets + s.data,
        s.text,
        s.rodata - assets,
        assets,
        s.data + s.bss,
        stack,
        s.data + s.bss + stack
    )
}

/// Report a panic over semihosting and fail. No path from input bytes should reach this (the
/// core returns errors); it exists so that one would be visible, not silent.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use fmt::Write;
    let _ = writeln!(Out, "EL-PANIC {info}");
    exit(false)
}

/// Bytes at the bottom of the stack's room that no code may touch: a stack that grows into
/// them faults instead of overwriting the statics below (the stack grows down from the top of
/// RAM towards `.bss`). A power of two, at least 32 (the MPU's smallest region).
pub const GUARD: usize = 256;

/// The guard region: `[lo, lo + GUARD)`, the first `GUARD`-aligned bytes above the statics.
pub fn guard_region() -> (usize, usize) {
    let lo = (addr(&raw const __sheap) + GUARD - 1) & !(GUARD - 1);
    (lo, lo + GUARD)
}

/// Arm the stack guard, as flip-link's layout or an MPU guard page do (without a linker
/// wrapper): on Armv8-M (M33, M55) the main stack limit register `MSPLIM` at the guard's top
/// (a push below it is a STKOF UsageFault, taken before memory is written); on Armv7-M (M4,
/// M7) MPU region 0 over the guard, no access, with the default map for everything else (a push
/// into it is a MemManage fault, escalated to HardFault). Either way the fault handler below
/// moves the stack pointer to the top of RAM before running any Rust code and reports
/// `EL-HARDFAULT ... stack_overflow=true`. Returns `false` if the core has no MPU (v7-M).
pub fn stack_guard() -> bool {
    let (lo, hi) = guard_region();
    #[cfg(armv8m)]
    {
        let _ = lo;
        // SAFETY: MSPLIM only bounds how far the main stack may grow; `hi` is below every live
        // frame (the statics end under it and `main` runs near the top of RAM).
        unsafe {
            core::arch::asm!("msr MSPLIM, {0}", in(reg) hi, options(nomem, nostack, preserves_flags))
        };
        true
    }
    #[cfg(not(armv8m))]
    {
        let _ = hi;
        // SAFETY: the MPU registers are memory-mapped system registers owned by this single
        // thread at start-up; region 0 covers only the guard bytes, which nothing uses, and
        // PRIVDEFENA keeps the default map for every other address, so no live access changes.
        unsafe {
            let mpu = &*cortex_m::peripheral::MPU::PTR;
            if (mpu._type.read() >> 8) & 0xff == 0 {
                return false;
            }
            mpu.rnr.write(0);
            mpu.rbar.write(lo as u32);
            // XN (28), AP = 000 no access (26:24), SIZE = log2(GUARD) - 1 (5:1), ENABLE (0).
            let size = GUARD.trailing_zeros() - 1;
            mpu.rasr.write((1 << 28) | (size << 1) | 1);
            // ENABLE (0) | PRIVDEFENA (2).
            mpu.ctrl.write(1 | (1 << 2));
        }
        cortex_m::asm::dsb();
        cortex_m::asm::isb();
        true
    }
}

// The HardFault entry: the fault may be a stack overflow, with SP inside the guard, so the
// first thing is to move MSP to the top of RAM (`_stack_start`) before any code pushes; the
// faulting SP goes to the Rust handler as its argument. Replaces cortex-m-rt's trampoline
// (the linker script's `PROVIDE(HardFault = ...)` yields to this global symbol).
core::arch::global_asm!(
    ".section .HardFault.edgelora, \"ax\"",
    ".global HardFault",
    ".type HardFault, %function",
    ".thumb_func",
    "HardFault:",
    "  mrs r0, MSP",
    "  ldr r1, ={top}",
    "  msr MSP, r1",
    "  b {handler}",
    ".ltorg",
    top = sym _stack_start,
    handler = sym hard_fault,
);

/// Report a hard fault (bad memory access, stack overflow into the guard) and fail. `sp` is
/// the stack pointer at the fault; the exception frame is read only if it lies outside the
/// guard (a frame inside it was never written).
extern "C" fn hard_fault(sp: usize) -> ! {
    use fmt::Write;
    let (lo, hi) = guard_region();
    // Within a frame's size of the guard: the overflow that tripped it.
    let overflow = sp < hi + 32 && sp + 64 >= lo;
    // SAFETY: the fault status registers are read-only memory-mapped system registers.
    let cfsr = unsafe { core::ptr::read_volatile(0xE000_ED28 as *const u32) };
    let _ = write!(
        Out,
        "EL-HARDFAULT sp={sp:#010x} cfsr={cfsr:#010x} stack_overflow={overflow}"
    );
    if !overflow && sp >= addr(&raw const __sheap) && sp + 32 <= addr(&raw const _stack_start) {
        // SAFETY: `sp` points into the stack's RAM, above the guard, where the core pushed the
        // eight-word exception frame (pc at word 6, lr at word 5).
        let (pc, lr) = unsafe {
            (
                core::ptr::read_volatile((sp + 24) as *const u32),
                core::ptr::read_volatile((sp + 20) as *const u32),
            )
        };
        let _ = write!(Out, " pc={pc:#010x} lr={lr:#010x}");
    }
    let _ = writeln!(Out);
    exit(false)
}
