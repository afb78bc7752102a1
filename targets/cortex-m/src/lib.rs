//! Board support shared by the firmware images: semihosting output and exit, statics handed
//! out once as `&'static mut`, the assets in flash, and the budget figures (flash from the
//! linker's section symbols, RAM from the statics plus a painted-stack high-water mark).
//!
//! The board-independent part is `common.rs`, which `targets/riscv` compiles too; the
//! Cortex-M part is [`board`]. The images (`src/bin/`) name only this crate's items, so the
//! RISC-V crate builds the same `demo` and `runtime` sources.
//!
//! Logging: plain semihosting text (`Out`) by default, or defmt frames with the `defmt`
//! feature (module `log`: the `demo` and `runtime` images, the panic and fault reports). Both print
//! the same `EL ...` lines once decoded: the host test compares the plain text with what the
//! host prints from the same code ([`scenario`]), and the defmt images' frames, decoded by
//! `defmt-print`, with the same host lines. Plain text stays the default: it needs no host tool
//! to read, it is what the RISC-V crate (no defmt) prints, and it is the smaller `runtime`
//! image (64544 against 66168 bytes of flash on an386; defmt saves 1696 on `demo`, see
//! `log`).
#![no_std]

pub mod board;
mod common;
#[cfg(feature = "defmt")]
pub mod log;
pub mod scenario;
pub mod testdata;

pub use board::{entry, exit, stack_guard, Out};
pub use common::*;
