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

/// Report any exception (access fault, illegal instruction, misaligned access) and fail: the
/// RISC-V counterpart of the Cortex-M HardFault handler. riscv-rt routes every exception
/// without a handler of its own here.
#[export_name = "ExceptionHandler"]
fn exception_handler(_frame: &riscv_rt::TrapFrame) -> ! {
    use fmt::Write;
    let _ = writeln!(
        Out,
        "EL-HARDFAULT mcause={:#010x} mepc={:#010x} mtval={:#010x}",
        riscv::register::mcause::read().bits(),
        riscv::register::mepc::read(),
        riscv::register::mtval::read()
    );
    exit(false)
}

/// The stack guard is not armed on RISC-V yet (a locked PMP entry over `guard_region` would
/// fault in M-mode, but riscv-rt's trap entry saves registers on the faulting stack, so it
/// also needs an entry that switches stacks first): returns `false`, and `paint_stack` still
/// keeps clear of the guard bytes.
pub fn stack_guard() -> bool {
    false
}
