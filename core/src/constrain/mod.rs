//! Constrained output: JSON (optionally of a JSON Schema) and stop strings, without an
//! allocator.
//!
//! Three pieces, each in memory the caller owns:
//!
//! - [`Schema`]: a compiled schema, a flat byte table that a device can keep in flash. Hosts
//!   make it with [`compile`] (feature `alloc`) from JSON Schema text; [`Schema::any_object`]
//!   (OpenAI's `json_object`) and [`Schema::any_value`] need no table.
//! - [`JsonState`]: a byte-level pushdown automaton for JSON with at most [`MAX_DEPTH`] open
//!   containers, specialised by the schema (see [`json`] for exactly what it enforces). It
//!   is `Copy` and about 150 bytes.
//! - [`TokenTrie`]: the vocabulary's token bytes as a trie in caller-provided words. Each
//!   step, [`TokenTrie::fill_mask`] walks it once with the automaton and sets a bit for every
//!   token whose bytes keep the output a prefix of some accepted value; end-of-generation
//!   tokens are allowed exactly when the value is complete. [`apply_mask`] then sets the
//!   logits of the other tokens to `-inf` before sampling, and after sampling the token's
//!   bytes ([`Tokenizer::decode_token_into`](crate::tokenizer::Tokenizer::decode_token_into),
//!   which turns SentencePiece's `▁` into a space and `<0x0A>` into its byte) go through
//!   [`JsonState::advance`].
//!
//! [`StopScan`] finds stop strings in streamed output bytes with a bounded holdback.
//!
//! The loop on a device (no allocation):
//!
//! ```no_run
//! # use edgelora::constrain::*;
//! # fn demo<S: AsRef<[u32]>>(tok: &edgelora::tokenizer::Tokenizer<'_, S>, table: &[u8], words: &[u32],
//! #        logits: &mut [f32], stack: &mut [JsonState], mask: &mut [u32]) -> edgelora::Result<()> {
//! let schema = Schema::from_bytes(table)?; // e.g. include_bytes!
//! let trie = TokenTrie::from_words(words)?; // built once on a host, or with TokenTrie::build
//! let mut state = JsonState::new(&schema, 1);
//! // each step:
//! trie.fill_mask(&schema, &state, tok.eog_ids(), stack, mask)?;
//! apply_mask(mask, logits);
//! let id = edgelora::sample::argmax(logits);
//! let mut bytes = [0u8; 128];
//! let n = tok.decode_token_into(id, &mut bytes)?;
//! state.advance(&schema, &bytes[..n]);
//! # Ok(()) }
//! ```

#[cfg(feature = "alloc")]
mod compile;
pub mod json;
mod schema;
mod stop;
mod trie;

#[cfg(feature = "alloc")]
pub use compile::{compile, compile_at, CompileError};
pub use json::{JsonState, MAX_DEPTH, MAX_NUMBER};
pub use schema::{Schema, ANY, ANY_ARRAY, ANY_OBJECT, MAGIC, MAX_BRANCHES, MAX_CHOICES, VERSION};
pub use stop::StopScan;
pub use trie::{TokenTrie, MAX_TOKEN_BYTES};

/// Set `logits[id] = -inf` for every token whose bit in `mask` is clear (bit `id % 32` of word
/// `id / 32`, as [`TokenTrie::fill_mask`] writes it). Ids past the mask are masked too.
pub fn apply_mask(mask: &[u32], logits: &mut [f32]) {
    for (id, l) in logits.iter_mut().enumerate() {
        let on = mask.get(id / 32).is_some_and(|m| m & (1 << (id % 32)) != 0);
        if !on {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// True if bit `id` of `mask` is set.
pub fn mask_allows(mask: &[u32], id: u32) -> bool {
    mask.get(id as usize / 32)
        .is_some_and(|m| m & (1 << (id % 32)) != 0)
}
