//! RISC-V board support for QEMU `virt`: semihosting output and exit, the stack pointer for
//! the stack paint, and the panic and exception handlers.
//!
//! Semihosting on RISC-V is the `slli x0, x0, 0x1f; ebreak; srai x0, x0, 7` sequence with the
//! operation in a0 (riscv-semihosting); QEMU serves it with `-semihosting-config enable=on`
//! (scripts/qemu-run-riscv.sh), so the images print and exit exactly as on Cortex-M.

use core::fmt;
use riscv_semihosting::{debug, hio};

/// The entry attribute of the runtime crate (`#[entry] fn main() -> !`), so the images'
/// sources name no architecture.
pub use riscv_rt::entry;

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

/// Leave QEMU with success (0) or failure (1) (semihosting `SYS_EXIT`).
pub fn exit(ok: bool) -> ! {
    debug::exit(if ok {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}

/// The current stack pointer.
pub fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reads a register into a local; no memory access, no side effect.
    unsafe { core::arch::asm!("mv {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Report a panic over semihosting and fail. No path from input bytes should reach this (the
/// core returns errors); it exists so that one would be visible, not silent.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use fmt::Write;
    let _ = writeln!(Out, "EL-PANIC {info}");
    exit(false)
}

extern "C" {
    static _stack_start: u8;
}

// The trap entry (riscv-rt takes a `_start_trap` symbol in place of its default, which saves
// registers on the current stack): the trap may be a stack overflow into the guard, with sp
// inside it, so the first thing is to move sp to the top of RAM before anything is stored;
// the faulting sp goes to the Rust handler as its argument. Every trap ends the program (the
// images enable no interrupts).
core::arch::global_asm!(
    ".section .text.edgelora_trap, \"ax\"",
    ".global _start_trap",
    ".p2align 2",
    "_start_trap:",
    "  mv a0, sp",
    "  la sp, {top}",
    "  j {handler}",
    top = sym _stack_start,
    handler = sym trap,
);

/// Report any trap (access fault, illegal instruction, misaligned access, the stack guard)
/// and fail: the RISC-V counterpart of the Cortex-M HardFault handler. `sp` is the stack
/// pointer at the trap.
extern "C" fn trap(sp: usize) -> ! {
    use fmt::Write;
    let (lo, hi) = crate::guard_region();
    let (cause, epc, tval) = (
        riscv::register::mcause::read().bits(),
        riscv::register::mepc::read(),
        riscv::register::mtval::read(),
    );
    // A load (5) or store (7) access fault at an address in the guard: the PMP entry tripped.
    let overflow = (cause == 5 || cause == 7) && (lo..hi).contains(&tval);
    let _ = writeln!(
        Out,
        "EL-HARDFAULT sp={sp:#010x} mcause={cause:#010x} mepc={epc:#010x} mtval={tval:#010x} stack_overflow={overflow}"
    );
    exit(false)
}

/// Arm the stack guard: PMP entry 0 over the guard bytes (`guard_region`), NAPOT, no
/// permissions, locked (a locked entry binds M-mode too, which is where these images run), so
/// a push into it is a store access fault; `_start_trap` above moves sp off the guard before
/// reporting it. Other addresses match no entry, which M-mode may access freely.
pub fn stack_guard() -> bool {
    let (lo, _) = crate::guard_region();
    // NAPOT: base >> 2 with the low bits set to (size / 8) - 1 (the guard is a power of two,
    // at least 8, and aligned to its size).
    let addr = (lo >> 2) | ((crate::GUARD >> 3) - 1);
    // L (0x80) | A = NAPOT (0x18) | R = W = X = 0 in entry 0's byte; entries 1-3 stay off.
    let cfg: usize = 0x98;
    // SAFETY: M-mode CSR writes that only remove access to the guard bytes, which nothing
    // uses; nothing else is protected or unprotected.
    unsafe {
        core::arch::asm!(
            "csrw pmpaddr0, {a}",
            "csrw pmpcfg0, {c}",
            a = in(reg) addr,
            c = in(reg) cfg,
            options(nomem, nostack)
        )
    };
    true
}
