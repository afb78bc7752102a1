//! The two traits every quantised block type implements: [`QuantType`] for weights and
//! [`ActType`] for the activations a weight dot runs against.
//!
//! A type's arithmetic lives in exactly one place: its scalar oracle, which follows ggml's
//! reference C (`dequantize_row_*`, `quantize_row_*_ref`, the generic `ggml_vec_dot_*`) operation
//! for operation. Tests and optimised kernels are written against these traits, so a new type is
//! one new file with one `impl` and the generic suites test it.
//!
//! Every method processes whole blocks and zips its slices: extra blocks, extra values or a short
//! output are ignored, never a panic (callers validate shapes once at load time).

use super::{Block, BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
use crate::kernels::reference as r;

/// An activation block type a weight dot consumes (Q8_0, Q8_1, Q8_K).
pub trait ActType: Block {
    /// Elements per block.
    const BLOCK_LEN: usize;
    /// Quantise `x` (a whole number of blocks; extra values ignored) into `out`, bit-exact with
    /// ggml's `quantize_row_*_ref` for finite input.
    fn quantize(x: &[f32], out: &mut [Self]);
    /// Dequantise `a` into `out` (`BLOCK_LEN` values per block), as ggml's `dequantize_row_*`.
    fn dequantize(a: &[Self], out: &mut [f32]);
}

/// A weight quantiser: f32 values to whole blocks (extra values or blocks ignored).
pub type QuantizeFn<T> = fn(&[f32], &mut [T]);

/// A ggml weight block type with its scalar oracle (the one place its arithmetic is defined).
pub trait QuantType: Block {
    /// Elements per block (32 or 256).
    const BLOCK_LEN: usize;
    /// The activation block type its integer dot runs against.
    type Act: ActType;
    /// Dequantise `w` into `out` (`BLOCK_LEN` values per block), bit-exact with ggml's
    /// `dequantize_row_*`.
    fn dequantize(w: &[Self], out: &mut [f32]);
    /// `sum_i w_i x_i` against quantised activations, operation for operation as ggml's generic
    /// (non-SIMD) `ggml_vec_dot_*`; blocks are zipped, extra blocks ignored.
    fn vec_dot(w: &[Self], x: &[Self::Act]) -> f32;
    /// The weight quantiser (f32 values to whole blocks, extra values or blocks ignored),
    /// byte-identical to what ggml's `ggml_quantize_chunk` writes without an importance matrix,
    /// or `None` where this crate has none (then `edgelora quantize` cannot target the type).
    const QUANTIZE: Option<QuantizeFn<Self>> = None;
}

// The 32-wide types that predate this trait keep their oracles in `kernels/reference.rs`; these
// impls only delegate to them.

impl ActType for BlockQ8_0 {
    const BLOCK_LEN: usize = QK;
    fn quantize(x: &[f32], out: &mut [Self]) {
        r::quantize_row_q8_0(x, out);
    }
    fn dequantize(a: &[Self], out: &mut [f32]) {
        r::dequantize_row_q8_0(a, out);
    }
}

impl ActType for BlockQ8_1 {
    const BLOCK_LEN: usize = QK;
    fn quantize(x: &[f32], out: &mut [Self]) {
        r::quantize_row_q8_1(x, out);
    }
    fn dequantize(a: &[Self], out: &mut [f32]) {
        r::dequantize_row_q8_1(a, out);
    }
}

impl QuantType for BlockQ4_0 {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(r::quantize_row_q4_0);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_0;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        r::dequantize_row_q4_0(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        r::vec_dot_q4_0_q8_0(w, x)
    }
}

impl QuantType for BlockQ4_1 {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(r::quantize_row_q4_1);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_1;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        r::dequantize_row_q4_1(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_1]) -> f32 {
        r::vec_dot_q4_1_q8_1(w, x)
    }
}

impl QuantType for BlockQ8_0 {
    const QUANTIZE: Option<QuantizeFn<Self>> = Some(r::quantize_row_q8_0);
    const BLOCK_LEN: usize = QK;
    type Act = BlockQ8_0;
    fn dequantize(w: &[Self], out: &mut [f32]) {
        r::dequantize_row_q8_0(w, out);
    }
    fn vec_dot(w: &[Self], x: &[BlockQ8_0]) -> f32 {
        r::vec_dot_q8_0_q8_0(w, x)
    }
}
