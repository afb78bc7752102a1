//! # edgelora-cuda
//!
//! An optional second, independent implementation of edgelora's quantised llama forward pass
//! with unmerged LoRA, on an NVIDIA GPU, for host-side parity testing: what the CPU kernels
//! (and, through the host, the firmware) compute is compared with what the GPU computes from
//! the same GGUF bytes and adapter files, layer by layer.
//!
//! - [`KERNELS_CU`] (`src/kernels.cu`): CUDA C compiled at run time by NVRTC. Dequantising
//!   matvec/matmul for Q4_0, Q4_1, Q8_0, F16, BF16 and F32 weights (f32 activations, like the
//!   core's `KernelMode::Reference`), embedding rows, rmsnorm, adjacent-pair rope, causal GQA
//!   attention over a KV cache, SwiGLU, residual add, DoRA row factors.
//! - `gpu` (feature `cuda`): device, uploads, the batched forward pass ([`gpu::GpuModel`]),
//!   several adapters with scales ([`gpu::GpuAdapters`]).
//! - [`cpu`]: the CPU side of per-layer parity — the core's forward step repeated on its public
//!   kernels, recording every layer — and the error-injection runs that derive tolerances.
//! - [`tol`]: tolerances and their derivation; difference figures; [`parity`]: the comparison.
//! - [`testdata`]: random adapters and truncated models for tests and the device check.
//!
//! Tests: `cpu_trace` (the CPU trace equals the core's forward bit for bit) and
//! `kernels_emulated` (the kernels built by g++ against a CPU emulation of the CUDA features
//! they use, compared with the CPU reference) run everywhere; `cuda_nvrtc` needs libnvrtc;
//! `cuda_kernels` and `cuda_model` need a GPU.
//!
//! Without the `cuda` feature nothing here touches CUDA and the crate builds anywhere; with it,
//! cudarc loads `libcuda`/`libnvrtc` dynamically, so building still needs no toolkit. GPU
//! tests list themselves as ignored, with the reason printed as `SKIPPED: ...`, when there is
//! no driver, device or NVRTC (`EDGELORA_REQUIRE_GPU=1` / `EDGELORA_REQUIRE_NVRTC=1` turn that
//! into a failure).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod parity;
pub mod testdata;
pub mod tol;

/// The CUDA C source of every kernel.
pub const KERNELS_CU: &str = include_str!("kernels.cu");

/// The repository root: `$EDGELORA_ROOT` if set, else this crate's `../..` when it exists
/// (a build on this machine), else the current directory (a test binary copied elsewhere and
/// started from the repository root).
pub fn repo_root() -> std::path::PathBuf {
    if let Some(r) = std::env::var_os("EDGELORA_ROOT") {
        return r.into();
    }
    let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if built.join("tests/fixtures").is_dir() {
        return built;
    }
    std::env::current_dir().unwrap_or_default()
}
