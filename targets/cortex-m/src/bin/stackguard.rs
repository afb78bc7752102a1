//! The stack guard, tripped on purpose: recurse with a frame of live stack bytes until the
//! stack reaches the guard (`edgelora_firmware::stack_guard`). Passes if the fault handler
//! reports `EL-HARDFAULT ... stack_overflow=true` (and exits with failure, as any fault does);
//! a line `EL-STACKGUARD returned` or a hang means the guard did not stop the overflow, and
//! the statics below the stack would have been overwritten.
#![no_std]
#![no_main]

use core::fmt::Write;
use edgelora_firmware::{entry, exit, guard_region, stack_guard, Out};

/// Recurse `n` levels, each holding 4 KiB of stack the optimiser cannot remove: frames far
/// larger than one word, as the images' largest (5,376 bytes), so a guard smaller than a frame
/// would be stepped over (the fault would then come from below RAM, not the guard, and the
/// test's `stack_overflow=true` check fails).
#[inline(never)]
fn deep(n: u32) -> u32 {
    let mut frame = [0u8; 4096];
    frame[(n % 4096) as usize] = n as u8;
    let frame = core::hint::black_box(frame);
    if n == 0 {
        return frame[0] as u32;
    }
    deep(n - 1).wrapping_add(frame[(n % 7) as usize] as u32)
}

#[entry]
fn main() -> ! {
    let armed = stack_guard();
    let (lo, hi) = guard_region();
    let _ = writeln!(
        Out,
        "EL-STACKGUARD armed={armed} guard={lo:#010x}..{hi:#010x}"
    );
    // Deeper than any RAM these boards have (4 MiB / 4 KiB a level is 1024 levels).
    let r = deep(1 << 16);
    let _ = writeln!(Out, "EL-STACKGUARD returned {r}");
    exit(true)
}
