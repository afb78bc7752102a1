//! Board support shared by the firmware images: semihosting output and exit, statics handed
//! out once as `&'static mut`, the assets in flash, and the budget figures (flash from the
//! linker's section symbols, RAM from the statics plus a painted-stack high-water mark).
//!
//! The board-independent part is `common.rs`, which `targets/riscv` compiles too; the
//! Cortex-M part is [`board`]. The images (`src/bin/`) name only this crate's items, so the
//! RISC-V crate builds the same `demo` and `runtime` sources.
//!
//! Logging is plain semihosting text (`hprint!`), not defmt: the host test compares the
//! firmware's lines with lines the host prints from the same code ([`scenario`]), which needs
//! the formatted text itself; decoding defmt frames would add the `defmt-decoder` tool chain
//! to every `cargo test` build for no extra checking power.
#![no_std]

pub mod board;
mod common;
pub mod scenario;

pub use board::{entry, exit, stack_guard, Out};
pub use common::*;
