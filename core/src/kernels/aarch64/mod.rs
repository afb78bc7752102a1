//! aarch64 kernels.

pub mod neon;
mod neon_q;
