//! Cortex-M kernels, chosen at compile time (feature `cortex-m-dsp`).
//!
//! Stable Rust neither exposes the DSP extension to `cfg(target_feature)` nor has its
//! intrinsics, and a microcontroller has no way to probe for it at run time, so the choice is
//! the build's: with the feature, [`dsp`]'s kernel is what [`super::best`] returns and
//! nothing else but the portable fallback is linked. The kernel test runs in QEMU
//! (`targets/cortex-m`, bin `kernels`, driven by `tests/tests/firmware.rs`).

pub mod dsp;
