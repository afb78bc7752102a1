//! Cortex-M kernels, chosen at compile time (features `cortex-m-dsp`, `cortex-m-mve`).
//!
//! Stable Rust neither exposes the DSP extension or Helium (MVE) to `cfg(target_feature)`
//! nor has their intrinsics, and a microcontroller has no way to probe for them at run time,
//! so the choice is the build's: with a feature, its table ([`dsp`] or [`mve`]) is what
//! [`super::best`] returns (MVE over DSP when both are built) and nothing else but the
//! portable fallback is linked. The kernel tests run in QEMU (`targets/cortex-m`, bin
//! `kernels`, driven by `tests/tests/firmware.rs`; MVE on the `mps3-an547` Cortex-M55).

#[cfg(feature = "cortex-m-dsp")]
pub mod dsp;
#[cfg(feature = "cortex-m-mve")]
pub mod mve;
