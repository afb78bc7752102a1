//! File formats: GGUF (models and llama.cpp LoRA adapters).

pub mod gguf;
#[cfg(feature = "alloc")]
pub mod gguf_write;
#[cfg(feature = "std")]
pub mod safetensors;

pub use gguf::{ArrayView, Gguf, TensorInfo, Value, ValueType};
