//! # edgelora
//!
//! A `#![no_std]` inference core for quantised llama-family models with swappable LoRA
//! adapters, from a Cortex-M4 to an x86 server.
//!
//! - [`format::gguf`]: zero-copy, fully validated GGUF reader.
//! - [`quant`]: ggml block layouts and element types; scalar oracles (the `QuantType` /
//!   `ActType` traits) for Q4_0..Q8_0, Q5_0/Q5_1, Q2_K..Q6_K, Q8_K, IQ4_NL/IQ4_XS.
//! - [`kernels`]: the scalar reference oracle and the dispatcher used by the model.
//! - [`model`]: llama-family config, weights, caller-owned [`model::State`] and `forward`.
//! - [`tokenizer`]: byte-level BPE (gpt2) and SentencePiece-style (llama) from GGUF metadata.
//! - [`sample`]: greedy, temperature, top-k, top-p, repetition penalty, seeded RNG.
//! - [`constrain`]: JSON / JSON Schema constrained decoding over the vocabulary, stop strings.
//! - [`input_policy`]: what is validated, every hard cap and why, the guarantee per entry point.
//!
//! No allocator is needed by default; the `alloc` feature adds owned conveniences and `std`
//! adds host conveniences. No function in this crate panics on any input bytes.
#![no_std]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![forbid(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod constrain;
pub mod error;
pub mod format;
pub mod input_policy;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod quant;
pub mod sample;
pub mod tokenizer;

pub use error::{Error, ErrorKind, Result};
pub use format::gguf::Gguf;
