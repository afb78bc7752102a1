//! Cortex-M board support: semihosting output and exit, the stack pointer for the stack
//! paint, and the panic and HardFault handlers (every QEMU board of this crate: an386, an500,
//! an505).

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
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use fmt::Write;
    let _ = writeln!(Out, "EL-PANIC {info}");
    exit(false)
}

/// Report a hard fault (bad memory access, stack overflow into the statics) and fail.
#[cortex_m_rt::exception]
unsafe fn HardFault(ef: &cortex_m_rt::ExceptionFrame) -> ! {
    use fmt::Write;
    let _ = writeln!(
        Out,
        "EL-HARDFAULT pc={:#010x} lr={:#010x}",
        ef.pc(),
        ef.lr()
    );
    exit(false)
}
