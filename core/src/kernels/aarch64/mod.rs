//! aarch64 kernels.

pub mod neon;
#[cfg(any(feature = "quant-q5", feature = "quant-k", feature = "quant-iq4"))]
mod neon_q;
