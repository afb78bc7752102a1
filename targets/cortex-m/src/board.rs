//! Cortex-M board support: semihosting output and exit, the stack pointer for the stack
//! paint, and the panic and HardFault handlers (every QEMU board of this crate: an386, an500,
//! an505, an547). The handlers report in plain text, or as defmt frames with the `defmt`
//! feature (so a decoded log stays one stream).

use core::fmt;
use cortex_m_semihosting::{debug, hio};

/// The entry attribute of the runtime crate (`#[entry] fn main() -> !`), so the images'
/// sources name no architecture.
pub use cortex_m_rt::entry;

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

/// The current stack pointer (main stack: the images never switch to the process stack).
pub fn stack_pointer() -> usize {
    cortex_m::register::msp::read() as usize
}

/// Report a panic over semihosting and fail. No path from input bytes should reach this (the
/// core returns errors); it exists so that one would be visible, not silent.
#[cfg(not(feature = "defmt"))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use fmt::Write;
    let _ = writeln!(Out, "EL-PANIC {info}");
    exit(false)
}

/// With defmt: the location only. Formatting the message would link `core::fmt` back into
/// every image (the panic message is a `fmt::Arguments`), which is what defmt keeps out.
#[cfg(feature = "defmt")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    match info.location() {
        Some(l) => defmt::println!("EL-PANIC at {=str}:{=u32}", l.file(), l.line()),
        None => defmt::println!("EL-PANIC"),
    }
    exit(false)
}

/// Arm the stack guard, as flip-link's layout or an MPU guard page do (without a linker
/// wrapper): on Armv8-M (M33, M55) the main stack limit register `MSPLIM` at the guard's top
/// (a push below it is a STKOF UsageFault, taken before memory is written); on Armv7-M (M4,
/// M7) MPU region 0 over the guard, no access, with the default map for everything else (a push
/// into it is a MemManage fault, escalated to HardFault). Either way the fault handler below
/// moves the stack pointer to the top of RAM before running any Rust code and reports
/// `EL-HARDFAULT ... stack_overflow=true`. Returns `false` if the core has no MPU (v7-M).
pub fn stack_guard() -> bool {
    let (lo, hi) = crate::guard_region();
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
            let size = crate::GUARD.trailing_zeros() - 1;
            mpu.rasr.write((1 << 28) | (size << 1) | 1);
            // ENABLE (0) | PRIVDEFENA (2).
            mpu.ctrl.write(1 | (1 << 2));
        }
        cortex_m::asm::dsb();
        cortex_m::asm::isb();
        true
    }
}

extern "C" {
    static __sheap: u8;
    static _stack_start: u8;
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
    #[cfg(not(feature = "defmt"))]
    use fmt::Write;
    let (lo, hi) = crate::guard_region();
    // SAFETY: CFSR and MMFAR are read-only memory-mapped system registers (reading MMFAR has
    // no side effect).
    let (cfsr, mmfar) = unsafe {
        (
            core::ptr::read_volatile(0xE000_ED28 as *const u32),
            core::ptr::read_volatile(0xE000_ED34 as *const u32) as usize,
        )
    };
    // The guard tripped: Armv8-M's stack-limit UsageFault (STKOF, bit 20); or on Armv7-M a
    // MemManage fault whose valid address (MMARVALID, bit 7) lies in the guard, or a stacking
    // error (MSTKERR, bit 4) with the stack pointer at the guard.
    let overflow = cfsr & (1 << 20) != 0
        || (cfsr & (1 << 7) != 0 && (lo..hi).contains(&mmfar))
        || (cfsr & (1 << 4) != 0 && sp < hi + 32);
    let (heap, top) = (
        &raw const __sheap as usize,
        &raw const _stack_start as usize,
    );
    // The exception frame is read only if it lies in the stack's RAM above the guard.
    let framed = || !overflow && sp >= heap && sp + 32 <= top;
    // SAFETY (call only if `framed()`): `sp` points into the stack's RAM, above the guard,
    // where the core pushed the eight-word exception frame (pc at word 6, lr at word 5).
    let frame = || unsafe {
        (
            core::ptr::read_volatile((sp + 24) as *const u32),
            core::ptr::read_volatile((sp + 20) as *const u32),
        )
    };
    #[cfg(not(feature = "defmt"))]
    {
        let _ = write!(
            Out,
            "EL-HARDFAULT sp={sp:#010x} cfsr={cfsr:#010x} stack_overflow={overflow}"
        );
        if framed() {
            let (pc, lr) = frame();
            let _ = write!(Out, " pc={pc:#010x} lr={lr:#010x}");
        }
        let _ = writeln!(Out);
    }
    #[cfg(feature = "defmt")]
    crate::log::recover();
    #[cfg(feature = "defmt")]
    if framed() {
        let (pc, lr) = frame();
        defmt::println!(
            "EL-HARDFAULT sp={=usize:#010x} cfsr={=u32:#010x} stack_overflow={=bool} pc={=u32:#010x} lr={=u32:#010x}",
            sp,
            cfsr,
            overflow,
            pc,
            lr
        );
    } else {
        defmt::println!(
            "EL-HARDFAULT sp={=usize:#010x} cfsr={=u32:#010x} stack_overflow={=bool}",
            sp,
            cfsr,
            overflow
        );
    }
    exit(false)
}
