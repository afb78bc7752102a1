//! The edgelora firmware on RISC-V (riscv32imac, QEMU `virt`): the Cortex-M crate's images
//! (`demo`, `runtime`) built from the same sources, on riscv-rt, plus a RISC-V `kernels`
//! image (portable kernels against the reference, instructions per MAC from `minstret`).
//!
//! Only [`board`] is RISC-V code; the rest is the Cortex-M crate's board-independent half
//! (`targets/cortex-m/src/common.rs`) and its scenario (`scenario.rs`), included by path, so
//! the lines this firmware prints are compared with the same host lines as every Cortex-M
//! board's (tests/tests/firmware.rs).
//!
//! Kernels: the portable table. RISC-V has no SIMD kernels yet (the P extension's packed
//! 8/16-bit MACs and the V extension are future work), and riscv32imac has no FPU: f32
//! arithmetic is compiler-builtins' soft float, which rounds as IEEE 754 requires, so the
//! logits are bit-equal to the host's.
#![no_std]

pub mod board;
#[path = "../../cortex-m/src/common.rs"]
mod common;
#[path = "../../cortex-m/src/scenario.rs"]
pub mod scenario;
#[path = "../../cortex-m/src/testdata.rs"]
pub mod testdata;

pub use board::{entry, exit, stack_guard, Out};
pub use common::*;
