//! The board-independent half of the firmware library, shared word for word by every
//! firmware crate: `targets/cortex-m` (this directory) and `targets/riscv` (which includes
//! this file with `#[path]`), so the demo and runtime images run the same code everywhere.
//!
//! What it holds: the sizes build.rs computed ([`config`]), the assets in flash ([`assets`]),
//! statics handed out once ([`Once`]), and the budget figures: flash from the linker's section
//! symbols, RAM from the statics plus a painted-stack high-water mark.
//!
//! What each crate's `board` module provides (the only per-architecture code): `Out`
//! (semihosting stdout as `fmt::Write`), `exit(ok) -> !`, `stack_pointer()`, the panic and
//! fault handlers, and `entry` (the runtime crate's attribute). The section symbols read here
//! (`__stext`, `__etext`, `__srodata`, `__erodata`, `__sdata`, `__edata`, `__sbss`, `__ebss`,
//! `__sheap`, `_stack_start`) have the same names in cortex-m-rt's and riscv-rt's `link.x`.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

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

/// Section sizes from the runtime crate's linker symbols (cortex-m-rt, riscv-rt).
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

/// Bytes at the bottom of the stack's room that no code may touch: a stack that grows into
/// them faults instead of overwriting the statics below (the stack grows down from the top of
/// RAM towards `.bss`). A power of two, at least 32 (the MPU's smallest region).
///
/// Where the guard is an MPU or PMP region (Armv7-M, RISC-V) it must be larger than any one
/// stack frame: a function that lowers sp by more than the guard and then stores at its
/// bottom would step over it into the statics. The largest frames measured in these images
/// (`sub sp, #N` in the disassembly) are 5,376 bytes (demo) and 4,544 (runtime), so 8 KiB.
/// Armv8-M's `MSPLIM` checks sp itself, so any frame faults there and 32 bytes suffice.
#[cfg(not(armv8m))]
pub const GUARD: usize = 8192;
/// See the Armv7-M / RISC-V definition: `MSPLIM` checks sp itself.
#[cfg(armv8m)]
pub const GUARD: usize = 32;

/// The guard region: `[lo, lo + GUARD)`, the first `GUARD`-aligned bytes above the statics.
pub fn guard_region() -> (usize, usize) {
    let lo = (addr(&raw const __sheap) + GUARD - 1) & !(GUARD - 1);
    (lo, lo + GUARD)
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
    let sp = crate::board::stack_pointer();
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

/// The budget figures (bytes), as the `EL-BUDGET` line prints them.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Flash of the runtime: text + rodata without the assets + the flash copy of .data.
    pub flash_runtime: usize,
    /// `.text`.
    pub text: usize,
    /// `.rodata` without the assets.
    pub rodata_runtime: usize,
    /// The assets in flash.
    pub assets: usize,
    /// `.data` + `.bss`.
    pub ram_static: usize,
    /// Stack high-water mark since [`paint_stack`].
    pub stack_hwm: usize,
    /// `ram_static + stack_hwm`.
    pub ram_total: usize,
}

/// The budget figures now: flash of the runtime (text + rodata without the assets), assets,
/// RAM (statics + stack high-water mark).
pub fn budget() -> Budget {
    let s = sections();
    let assets = assets::total();
    let stack = stack_high_water();
    Budget {
        flash_runtime: s.text + s.rodata - assets + s.data,
        text: s.text,
        rodata_runtime: s.rodata - assets,
        assets,
        ram_static: s.data + s.bss,
        stack_hwm: stack,
        ram_total: s.data + s.bss + stack,
    }
}

/// Print the budget line ([`budget`]) as text.
pub fn print_budget<W: fmt::Write>(out: &mut W) -> fmt::Result {
    let b = budget();
    writeln!(
        out,
        "EL-BUDGET flash_runtime={} text={} rodata_runtime={} assets={} ram_static={} stack_hwm={} ram_total={}",
        b.flash_runtime, b.text, b.rodata_runtime, b.assets, b.ram_static, b.stack_hwm, b.ram_total
    )
}
