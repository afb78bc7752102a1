//! File formats: GGUF (models and llama.cpp LoRA adapters).

pub mod gguf;

pub use gguf::{ArrayView, Gguf, TensorInfo, Value, ValueType};
