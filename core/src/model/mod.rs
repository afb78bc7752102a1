//! The llama-family forward pass: read this file first.
//!
//! Data flow for one token at position `pos` (shapes in comments, `dim` = residual width):
//!
//! ```text
//! x = token_embd[token]                                  // (dim,)
//! for each layer:
//!     xb = rmsnorm(x) * attn_norm                        // (dim,)
//!     q = Wq xb; k = Wk xb; v = Wv xb                    // (q_dim,), (kv_dim,), (kv_dim,)
//!     rope(q, k, pos)                                    // adjacent pairs, llama.cpp layout
//!     k, v -> cache[layer][pos]                          // (a ring on sliding layers)
//!     att_out = softmax(q k^T / sqrt(head_dim)) v        // (q_dim,), per head, GQA
//!     x += Wo att_out                                    // (dim,)
//!     xb = rmsnorm(x) * ffn_norm
//!     x += Wdown (silu(Wgate xb) * (Wup xb))             // hidden (ffn_dim,)
//! logits = Woutput (rmsnorm(x) * output_norm)            // (vocab,)
//! ```
//!
//! Rope: llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that rope rotates
//! adjacent pairs `(x[2i], x[2i+1])` by `pos * base^(-2i / rope_dims)`; that is what GGUF files
//! expect and what this code does (equivalent to Hugging Face's `rotate_half` on unpermuted
//! weights). The `(cos, sin)` table is computed in f32 with Hugging Face's roundings and no
//! f64 (`rope.rs` says why).
//!
//! Memory: weights are borrowed from the GGUF bytes; everything that changes lives in a
//! [`State`] carved from one caller-provided `&mut [f32]` whose length is
//! [`State::len_for_cache`]`(config, ctx, cache)`, a pure function. The KV cache's element
//! type (f32, f16, q8_0) and the ring that sliding-window layers keep instead of the whole
//! context are described in `kv.rs`. `forward` never allocates and never
//! panics: token ids, positions and the state's shape are checked and reported as errors.

mod config;
mod kv;
#[cfg(feature = "alloc")]
pub mod quantize;
mod rope;

pub use config::{Arch, Config, Ffn, RopeStyle, ARCHITECTURES};
pub use kv::{cache_bytes, layer_slots, CacheSpec, CacheType};

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{Gguf, TensorInfo};
pub use crate::kernels::KernelMode;
use crate::kernels::{
    self, act_scratch_f32s, matvec_input, matvec_input_side, Batch, Input, Kernel, MatRef, Side,
};
// Prompt blocks of several tokens (hosts only; see `BLOCKED_PREFILL`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::kernels::matmul_input;

/// Largest LoRA rank the forward pass keeps scratch for (`A x` lives in a fixed `MAX_RANK`-float
/// slice of the state); adapters of a higher rank are refused at parse time.
pub const MAX_RANK: usize = 256;

/// What the forward body needs from adapters applied unmerged. The model defines it and
/// `lora::AdapterSet` implements it, so `model` does not depend on `lora` (modules depend
/// downward: `lora` binds adapters to a `Model`, the model only calls this).
pub trait Adapters {
    /// Add every active adapter's `s B (A x)` for linear `linear` (index in [`LINEAR_NAMES`])
    /// of layer `layer` to `y`. `tmp` holds at least [`MAX_RANK`] floats, `out_tmp` the output
    /// width.
    fn apply(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Input<'_>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    );
    /// As [`Adapters::apply`] for the vectors of a prompt block; every output bit-identical to
    /// `apply` of its vector.
    fn apply_batch(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Batch<'_>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    );
    /// The bytes `apply` will read for `(layer, linear)`, for the base matvec to prefetch.
    fn side(&self, layer: usize, linear: usize) -> Side<'_>;
    /// A replacement output head, if an active adapter has one.
    fn head(&self) -> Option<&MatRef<'_>>;
    /// True if every active adapter was bound to a model with `n_layers` layers.
    fn fits(&self, n_layers: usize) -> bool;
}

/// No adapters: the base model alone.
pub struct NoAdapters;

impl Adapters for NoAdapters {
    fn apply(
        &self,
        _: usize,
        _: usize,
        _: &mut Input<'_>,
        _: &mut [f32],
        _: &mut [f32],
        _: &mut [f32],
    ) {
    }
    fn apply_batch(
        &self,
        _: usize,
        _: usize,
        _: &mut Batch<'_>,
        _: &mut [f32],
        _: &mut [f32],
        _: &mut [f32],
    ) {
    }
    fn side(&self, _: usize, _: usize) -> Side<'_> {
        Side::NONE
    }
    fn head(&self) -> Option<&MatRef<'_>> {
        None
    }
    fn fits(&self, _: usize) -> bool {
        true
    }
}
use crate::quant::GgmlType;
pub use rope::{rope_table, rope_table_scaled};

/// Most prompt tokens [`Model::prefill`] runs through each layer together (the state holds
/// activations for `min(PREFILL_BLOCK, ctx)` tokens). 16 covers four 4-column blocks of the
/// AVX-512 matmul, so each weight group is unpacked once per 4 tokens; the block's
/// activations (~350 KB for SmolLM2-135M) stay in L2.
pub const PREFILL_BLOCK: usize = 16;

/// Whether this build runs prompt blocks of several tokens. Not on Cortex-M, RISC-V or wasm:
/// their matmul is one matvec per token anyway, and the blocked matmul and batched LoRA code
/// costs ~7 KB of flash on thumbv7em (over the 64 KiB runtime budget), so there the one
/// forward body runs blocks of one token. The results are the same either way
/// (`tests/tests/prefill.rs`). The state keeps the same layout on every target (the firmware
/// test compares its size with the host's).
const BLOCKED_PREFILL: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Default capacity for layers in [`Model`]; firmware can pick a smaller `Model<'w, N>`.
pub const DEFAULT_MAX_LAYERS: usize = 64;

/// An F32 vector stored as little-endian bytes (norm weights), read without alignment needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VecRef<'a>(&'a [u8]);

impl<'a> VecRef<'a> {
    fn from_tensor(t: &TensorInfo<'a>, len: usize) -> Result<Self> {
        if t.ty != GgmlType::F32 {
            return Err(
                Error::new(ErrorKind::UnsupportedTensorType, "norm weights must be F32")
                    .named(t.name.as_bytes()),
            );
        }
        if t.n_elements() != len as u64 || t.n_dims != 1 {
            return Err(Error::new(ErrorKind::ShapeMismatch, "norm weight length")
                .named(t.name.as_bytes())
                .detail(t.n_elements(), len as u64));
        }
        Ok(VecRef(t.data))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterate the values.
    pub fn iter(&self) -> impl Iterator<Item = f32> + 'a {
        self.0
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
    }
}

/// The weights of one transformer block.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'w> {
    /// `blk.N.attn_norm.weight` (dim,)
    pub attn_norm: VecRef<'w>,
    /// `blk.N.attn_q.weight` (q_dim x dim)
    pub wq: MatRef<'w>,
    /// `blk.N.attn_k.weight` (kv_dim x dim)
    pub wk: MatRef<'w>,
    /// `blk.N.attn_v.weight` (kv_dim x dim)
    pub wv: MatRef<'w>,
    /// `blk.N.attn_output.weight` (dim x q_dim)
    pub wo: MatRef<'w>,
    /// `blk.N.ffn_norm.weight` (dim,)
    pub ffn_norm: VecRef<'w>,
    /// `blk.N.ffn_gate.weight` (ffn_dim x dim)
    pub w_gate: MatRef<'w>,
    /// `blk.N.ffn_up.weight` (ffn_dim x dim)
    pub w_up: MatRef<'w>,
    /// `blk.N.ffn_down.weight` (dim x ffn_dim)
    pub w_down: MatRef<'w>,
    /// Architecture extras (see [`Arch`]): per-head QK RMSNorm weights
    /// `blk.N.attn_q_norm.weight`, `attn_k_norm` (head_dim,)
    pub qk_norm: Option<(VecRef<'w>, VecRef<'w>)>,
    /// `blk.N.post_attention_norm.weight`, `post_ffw_norm` (dim,): the sandwich norms
    pub post_norms: Option<(VecRef<'w>, VecRef<'w>)>,
    /// `blk.N.attn_q.bias`, `attn_k.bias`, `attn_v.bias` (q_dim,), (kv_dim,), (kv_dim,)
    pub qkv_bias: Option<[VecRef<'w>; 3]>,
}

/// Number of adaptable linears per layer.
pub const LINEARS: usize = 7;

/// Per-layer linears LoRA can target, in the index order used by adapters and [`Layer::linear`].
pub const LINEAR_NAMES: [&str; LINEARS] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

impl<'w> Layer<'w> {
    /// Linear `i` in [`LINEAR_NAMES`] order (out of range gives `ffn_down`).
    pub fn linear(&self, i: usize) -> &MatRef<'w> {
        match i {
            0 => &self.wq,
            1 => &self.wk,
            2 => &self.wv,
            3 => &self.wo,
            4 => &self.w_gate,
            5 => &self.w_up,
            _ => &self.w_down,
        }
    }

    /// Mutable access to linear `i` (to swap in merged weights; the originals stay in the file).
    pub fn linear_mut(&mut self, i: usize) -> &mut MatRef<'w> {
        match i {
            0 => &mut self.wq,
            1 => &mut self.wk,
            2 => &mut self.wv,
            3 => &mut self.wo,
            4 => &mut self.w_gate,
            5 => &mut self.w_up,
            _ => &mut self.w_down,
        }
    }
}

/// Names of the per-layer tensors, in [`Layer`] field order.
pub const LAYER_TENSORS: [&str; 9] = [
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Format `blk.{i}.{part}.weight` into `buf` without allocating.
fn layer_tensor_name<'b>(buf: &'b mut [u8; 64], i: usize, part: &str) -> &'b str {
    layer_tensor_name_kind(buf, i, part, "weight")
}

/// Format `blk.{i}.{part}.{kind}` into `buf` without allocating.
fn layer_tensor_name_kind<'b>(buf: &'b mut [u8; 64], i: usize, part: &str, kind: &str) -> &'b str {
    struct W<'b> {
        buf: &'b mut [u8; 64],
        n: usize,
    }
    impl core::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            let end = self
                .n
                .checked_add(s.len())
                .filter(|&e| e <= self.buf.len())
                .ok_or(core::fmt::Error)?;
            self.buf[self.n..end].copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }
    let mut w = W { buf, n: 0 };
    let _ = core::fmt::write(&mut w, format_args!("blk.{i}.{part}.{kind}"));
    let n = w.n;
    core::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// A loaded llama-family model: config plus weight views into the GGUF bytes.
#[derive(Clone, Debug)]
pub struct Model<'w, const L: usize = DEFAULT_MAX_LAYERS> {
    config: Config,
    token_embd: MatRef<'w>,
    output_norm: VecRef<'w>,
    output: MatRef<'w>,
    /// `rope_freqs.weight` (rope_dims / 2,): per-pair rope divisors (Llama 3.x scaling).
    rope_freqs: Option<VecRef<'w>>,
    layers: [Option<Layer<'w>>; L],
}

fn mat<'w>(g: &Gguf<'w>, name: &str, rows: usize, cols: usize) -> Result<MatRef<'w>> {
    let t = g.tensor(name)?;
    let m = MatRef::from_tensor(&t)?;
    if m.rows() != rows || m.cols() != cols {
        return Err(
            Error::new(ErrorKind::ShapeMismatch, "matrix shape (rows x cols)")
                .named(name.as_bytes())
                .detail((m.rows() * m.cols()) as u64, (rows * cols) as u64),
        );
    }
    Ok(m)
}

impl<'w, const L: usize> Model<'w, L> {
    /// Build the model from a parsed GGUF: reads the config and checks every tensor's
    /// presence, type and shape.
    ///
    /// # Errors
    /// Config errors (see [`Config::from_gguf`]), [`ErrorKind::MissingTensor`],
    /// [`ErrorKind::ShapeMismatch`] or [`ErrorKind::UnsupportedTensorType`] naming the
    /// tensor, [`ErrorKind::TooMany`] if the model has more than `L` layers.
    pub fn from_gguf(g: &Gguf<'w>) -> Result<Self> {
        let c = Config::from_gguf(g)?;
        if c.n_layers > L {
            return Err(
                Error::new(ErrorKind::TooMany, "layers (raise Model's L parameter)")
                    .detail(c.n_layers as u64, L as u64),
            );
        }
        let token_embd = mat(g, "token_embd.weight", c.vocab, c.dim)?;
        let output = if c.tied_output {
            token_embd
        } else {
            mat(g, "output.weight", c.vocab, c.dim)?
        };
        let output_norm = VecRef::from_tensor(&g.tensor("output_norm.weight")?, c.dim)?;
        let rope_freqs = match g.tensor("rope_freqs.weight") {
            Ok(t) => Some(VecRef::from_tensor(&t, c.rope_dims / 2)?),
            Err(_) => None,
        };
        let mut layers = [None; L];
        let mut nb = [0u8; 64];
        for (i, slot) in layers.iter_mut().enumerate().take(c.n_layers) {
            let mut m = |part: &str, rows: usize, cols: usize| {
                mat(g, layer_tensor_name(&mut nb, i, part), rows, cols)
            };
            let wq = m("attn_q", c.q_dim(), c.dim)?;
            let wk = m("attn_k", c.kv_dim(), c.dim)?;
            let wv = m("attn_v", c.kv_dim(), c.dim)?;
            let wo = m("attn_output", c.dim, c.q_dim())?;
            let w_gate = m("ffn_gate", c.ffn_dim, c.dim)?;
            let w_up = m("ffn_up", c.ffn_dim, c.dim)?;
            let w_down = m("ffn_down", c.dim, c.ffn_dim)?;
            let attn_norm = VecRef::from_tensor(
                &g.tensor(layer_tensor_name(&mut nb, i, "attn_norm"))?,
                c.dim,
            )?;
            let ffn_norm =
                VecRef::from_tensor(&g.tensor(layer_tensor_name(&mut nb, i, "ffn_norm"))?, c.dim)?;
            let mut vec = |part: &str, kind: &str, len: usize| {
                VecRef::from_tensor(
                    &g.tensor(layer_tensor_name_kind(&mut nb, i, part, kind))?,
                    len,
                )
            };
            let a = &c.arch;
            let qk_norm = if a.qk_norm {
                Some((
                    vec("attn_q_norm", "weight", c.head_dim)?,
                    vec("attn_k_norm", "weight", c.head_dim)?,
                ))
            } else {
                None
            };
            let post_norms = if a.post_norms {
                Some((
                    vec("post_attention_norm", "weight", c.dim)?,
                    vec("post_ffw_norm", "weight", c.dim)?,
                ))
            } else {
                None
            };
            let qkv_bias = if a.qkv_bias {
                Some([
                    vec("attn_q", "bias", c.q_dim())?,
                    vec("attn_k", "bias", c.kv_dim())?,
                    vec("attn_v", "bias", c.kv_dim())?,
                ])
            } else {
                None
            };
            *slot = Some(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                w_gate,
                w_up,
                w_down,
                qk_norm,
                post_norms,
                qkv_bias,
            });
        }
        Ok(Model {
            config: c,
            token_embd,
            output_norm,
            output,
            rope_freqs,
            layers,
        })
    }

    /// The model's hyper-parameters.
    pub const fn config(&self) -> &Config {
        &self.config
    }

    /// Layer `i`'s weights.
    pub fn layer(&self, i: usize) -> Option<&Layer<'w>> {
        self.layers.get(i)?.as_ref()
    }

    /// Mutable access to layer `i`'s weight views, e.g. to point a linear at merged weights.
    /// The base bytes are never written, so restoring the old view restores the base exactly.
    pub fn layer_mut(&mut self, i: usize) -> Option<&mut Layer<'w>> {
        self.layers.get_mut(i)?.as_mut()
    }

    /// The token embedding matrix (vocab x dim).
    pub const fn token_embd(&self) -> &MatRef<'w> {
        &self.token_embd
    }

    /// The output head (vocab x dim); the embedding when tied.
    pub const fn output(&self) -> &MatRef<'w> {
        &self.output
    }

    /// Run one token at `pos` and return the logits (vocab,).
    ///
    /// `pos` may be at most the number of positions already in the state's KV cache
    /// ([`State::len`]): equal appends, smaller rewinds (later positions are discarded).
    ///
    /// # Errors
    /// [`ErrorKind::TokenOutOfRange`], [`ErrorKind::ContextFull`] if `pos >= state.ctx()`,
    /// [`ErrorKind::InvalidArgument`] if `pos` skips past the filled cache, rewinds further
    /// than the sliding-window layers' rings keep ([`State::earliest_restart`]), or the state
    /// was sized for another model.
    pub fn forward<'s>(&self, token: u32, pos: usize, s: &'s mut State<'_>) -> Result<&'s [f32]> {
        self.forward_with(token, pos, s, &NoAdapters)
    }

    /// [`Model::forward`] with LoRA adapters applied unmerged: every adapted linear computes
    /// `W x + sum_i s_i B_i (A_i x)`.
    ///
    /// # Errors
    /// As [`Model::forward`]; [`ErrorKind::InvalidArgument`] if an adapter was bound to a
    /// model with another layer count.
    pub fn forward_with<'s>(
        &self,
        token: u32,
        pos: usize,
        s: &'s mut State<'_>,
        set: &dyn Adapters,
    ) -> Result<&'s [f32]> {
        self.forward_observed(token, pos, s, set, &mut NoObserver)
    }

    /// [`Model::forward_with`], showing `obs` every named intermediate ([`Observer`]).
    ///
    /// # Errors
    /// As [`Model::forward_with`].
    pub fn forward_observed<'s>(
        &self,
        token: u32,
        pos: usize,
        s: &'s mut State<'_>,
        set: &dyn Adapters,
        obs: &mut dyn Observer,
    ) -> Result<&'s [f32]> {
        self.step(token, pos, s, true, set, obs)?;
        Ok(&*s.logits)
    }

    /// Run a batch of prompt tokens at positions `start..start + tokens.len()` and return the
    /// logits of the last one.
    ///
    /// # Errors
    /// As [`Model::forward`]; [`ErrorKind::InvalidArgument`] for an empty batch. On error,
    /// positions before the failing block of [`PREFILL_BLOCK`] tokens stay in the cache.
    ///
    /// Under [`KernelMode::Fast`] the prompt runs in blocks of [`State::block_for`] tokens,
    /// layer by layer: every linear is one blocked matmul over the block (each weight read
    /// once per block, not once per token) followed by its adapters' products over the block
    /// ([`Adapters::apply_batch`]: each A and B read once per block, a Q8_0 A against the
    /// block's own quantised activations), rope, cache writes and causal attention per token.
    /// The batched kernels keep each output's summation order, so the logits equal
    /// [`Model::forward`] run token by token (`tests/tests/prefill.rs`: identical on AVX2 and
    /// AVX-512). [`KernelMode::Reference`] keeps the token-by-token oracle.
    pub fn prefill<'s>(
        &self,
        tokens: &[u32],
        start: usize,
        s: &'s mut State<'_>,
    ) -> Result<&'s [f32]> {
        self.prefill_with(tokens, start, s, &NoAdapters)
    }

    /// [`Model::prefill`] with LoRA adapters.
    ///
    /// # Errors
    /// As [`Model::prefill`].
    pub fn prefill_with<'s>(
        &self,
        tokens: &[u32],
        start: usize,
        s: &'s mut State<'_>,
        set: &dyn Adapters,
    ) -> Result<&'s [f32]> {
        self.prefill_observed(tokens, start, s, set, &mut NoObserver)
    }

    /// [`Model::prefill_with`], showing `obs` every named intermediate ([`Observer`]) of each
    /// block.
    ///
    /// # Errors
    /// As [`Model::prefill_with`].
    pub fn prefill_observed<'s>(
        &self,
        tokens: &[u32],
        start: usize,
        s: &'s mut State<'_>,
        set: &dyn Adapters,
        obs: &mut dyn Observer,
    ) -> Result<&'s [f32]> {
        let (last, rest) = tokens
            .split_last()
            .ok_or_else(|| Error::new(ErrorKind::InvalidArgument, "empty prompt batch"))?;
        // Validate the whole batch before touching the cache.
        for &t in tokens {
            self.check_token(t)?;
        }
        let end = start
            .checked_add(tokens.len())
            .ok_or_else(|| Error::new(ErrorKind::ContextFull, "prompt batch"))?;
        if end > s.ctx {
            return Err(
                Error::new(ErrorKind::ContextFull, "prompt batch").detail(end as u64, s.ctx as u64)
            );
        }
        // `BLOCKED_PREFILL` is a constant: when false the block path is not even compiled in.
        if !BLOCKED_PREFILL || s.mode == KernelMode::Reference || s.block == 0 {
            // The oracle path stays a plain loop of single-token steps.
            for (i, &t) in rest.iter().enumerate() {
                self.step(t, start + i, s, false, set, obs)?;
            }
            return self.forward_observed(*last, start + rest.len(), s, set, obs);
        }
        self.check_state(start, s, set)?;
        let block = s.block;
        let blocks = tokens.len().div_ceil(block);
        for (b, chunk) in tokens.chunks(block).enumerate() {
            self.block(chunk, start + b * block, s, set, b + 1 == blocks, obs)?;
        }
        Ok(&*s.logits)
    }

    /// The forward pass, one body for decode and prompt: run `tokens` (at most `s.block`) at
    /// positions `pos0..` through every layer together. A decode step is a block of one token
    /// (its linears run the matvec kernels, each prefetching its adapter pair's bytes); a
    /// prompt block runs each linear as one blocked matmul over the block followed by its
    /// adapters' products over the block (every column bit-identical to the matvec: prefill
    /// equals token-by-token decode). Rope, cache writes and causal attention run per token.
    /// Leaves each token's residual in `s.bx` (block, dim) and, with `want_logits`, the last
    /// token's logits in `s.logits`.
    fn block(
        &self,
        tokens: &[u32],
        pos0: usize,
        s: &mut State<'_>,
        set: &dyn Adapters,
        want_logits: bool,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let c = &self.config;
        let n = tokens.len();
        let (dim, qd, fd, hd, kv_dim, rd, ctx) = (
            c.dim,
            c.q_dim(),
            c.ffn_dim,
            c.head_dim,
            c.kv_dim(),
            c.rope_dims,
            s.ctx,
        );
        let group = c.n_heads / c.n_kv_heads;
        let a = &c.arch;
        let (kern, mode) = (s.kernel(), s.mode);
        if n == 0 || n > s.block || pos0 + n > ctx || (!BLOCKED_PREFILL && n != 1) {
            return Err(internal());
        }
        // Positions from pos0 on are being rewritten: until this block is done they are not valid.
        s.filled = s.filled.min(pos0);
        // Per-block views (each token's vector at [i * width ..]).
        let bx = s.bx.get_mut(..n * dim).ok_or_else(internal)?; //           (n, dim)
        let bxb = s.bxb.get_mut(..n * dim).ok_or_else(internal)?; //         (n, dim)
        let bq = s.bq.get_mut(..n * qd).ok_or_else(internal)?; //            (n, q_dim)
        let batt = s.batt.get_mut(..n * qd).ok_or_else(internal)?; //        (n, q_dim)
                                                                   // (n, max(ffn_dim, kv_dim)): the FFN's hidden vectors, and before them the block's k and
                                                                   // v on their way into the cache (which may be a ring, or another element type).
        let bhb_all = s.bhb.get_mut(..n * fd.max(kv_dim)).ok_or_else(internal)?;
        let bhb2_all = s.bhb2.get_mut(..n * fd.max(kv_dim)).ok_or_else(internal)?;
        // Rope tables: (n, rope_dims) for the global base, and a second one for the sliding
        // layers' base where the architecture has one.
        let (brope, brope2) = s.rope.split_at_mut((s.block * rd).min(s.rope.len()));
        let brope = brope.get_mut(..n * rd).ok_or_else(internal)?; //        (n, rope_dims)
        let brope2 = brope2.get_mut(..if c.has_second_rope() { n * rd } else { 0 });
        let brope2 = brope2.ok_or_else(internal)?; //                         (n, rope_dims)
                                                   // LoRA scratch: T = A X of the block, (n, r). `hb` (ffn_dim,) serves: at ffn_dim >= n r
                                                   // (SmolLM2: r <= 96 for 16 tokens) it holds T for the whole block and every adapter's
                                                   // A and B are read once per block (`Adapters::apply_batch`), above that
                                                   // ceil(n r / ffn_dim) times. `lora_tmp` (MAX_RANK,) where it is the longer (tiny
                                                   // models). `lora_out` (the output width) serves the plain B path.
        let lt: &mut [f32] = if s.hb.len() >= s.lora_tmp.len() {
            s.hb
        } else {
            s.lora_tmp
        };
        let lo: &mut [f32] = s.lora_out;
        // One linear, `y = W x + sum_i s_i B_i (A_i x)` (llama.cpp's `build_lora_mm`): the
        // architecture code below never sees adapters or activation quantising.
        let mut linear = |l: usize, k: usize, w: &MatRef<'_>, x: &mut Acts<'_>, y: &mut [f32]| {
            x.linear(set, l, k, w, y, lt, lo);
        };

        // x_i = token_embd[token_i]; the rope table of each position, once for all layers.
        for (&t, xi) in tokens.iter().zip(bx.chunks_exact_mut(dim)) {
            self.token_embd.dequantize_row(t as usize, xi)?;
            if a.embed_scale {
                let k = libm::sqrtf(dim as f32);
                xi.iter_mut().for_each(|v| *v *= k);
            }
        }
        let (fs, ff) = (c.rope_freq_scale, self.rope_freqs);
        for (i, ti) in brope.chunks_exact_mut(rd).enumerate() {
            rope_table_scaled(ti, pos0 + i, c.rope_base, rd, fs, ff);
        }
        for (i, ti) in brope2.chunks_exact_mut(rd).enumerate() {
            rope_table(ti, pos0 + i, a.rope_base_swa, rd);
        }
        obs.tensor("inp_embd", None, pos0, n, bx);
        let spec = s.cache;
        // Where the ring of a sliding layer still holds every position the block reads
        // (`check_state` refused the block otherwise): see `State::swa_lo`.
        s.swa_lo = s
            .swa_lo
            .min(pos0)
            .max((pos0 + n).saturating_sub(s.swa_slots));
        let mut region = 0; // this layer's offset in the K and V caches (f32 words)
        for (l, layer) in self.layers.iter().take(c.n_layers).enumerate() {
            let Some(w) = layer else {
                return Err(Error::new(ErrorKind::InvalidArgument, "layer not loaded"));
            };
            // Attention: q, k, v for the whole block; k and v straight into the cache.
            for (o, xi) in bxb.chunks_exact_mut(dim).zip(bx.chunks_exact(dim)) {
                rmsnorm(o, xi, w.attn_norm, c.rms_eps);
            }
            obs.tensor("attn_norm", Some(l), pos0, n, bxb);
            let kc = bhb_all.get_mut(..n * kv_dim).ok_or_else(internal)?; //   (n, kv_dim)
            let vc = bhb2_all.get_mut(..n * kv_dim).ok_or_else(internal)?; //  (n, kv_dim)
                                                                           // Quantised once (Q8_0/Q8_1/Q8_K as the weights need), read by q, k and v.
            let mut xin = Acts::new(bxb, n, s.bqs, kern, mode);
            linear(l, 0, &w.wq, &mut xin, bq); //                                   (n, q_dim)
            linear(l, 1, &w.wk, &mut xin, kc); //                                   (n, kv_dim)
            linear(l, 2, &w.wv, &mut xin, vc); //                                   (n, kv_dim)
            if let Some([b_q, b_k, b_v]) = w.qkv_bias {
                for (y, b) in [(&mut *bq, b_q), (&mut *kc, b_k), (&mut *vc, b_v)] {
                    for yi in y.chunks_exact_mut(b.len().max(1)) {
                        yi.iter_mut().zip(b.iter()).for_each(|(v, bv)| *v += bv);
                    }
                }
            }
            if let Some((qn, kn)) = w.qk_norm {
                // Per-head RMSNorm of q and k, before rope.
                bq.chunks_exact_mut(hd)
                    .for_each(|h| rmsnorm_inplace(h, qn, c.rms_eps));
                kc.chunks_exact_mut(hd)
                    .for_each(|h| rmsnorm_inplace(h, kn, c.rms_eps));
            }
            let swa = a.is_swa(l);
            let table: &[f32] = if swa && c.has_second_rope() {
                brope2
            } else {
                brope
            };
            for ((qi, ki), ti) in bq
                .chunks_exact_mut(qd)
                .zip(kc.chunks_exact_mut(kv_dim))
                .zip(table.chunks_exact(rd))
            {
                rope_heads(qi, hd, ti, a.rope);
                rope_heads(ki, hd, ti, a.rope);
            }
            obs.tensor("q", Some(l), pos0, n, bq);
            obs.tensor("k", Some(l), pos0, n, kc);
            obs.tensor("v", Some(l), pos0, n, vc);
            // This layer's cache regions: `slots` rows of the cache type (a ring on sliding
            // layers; `kv.rs` says why `window + block - 1` rows are enough).
            let slots = kv::layer_slots(c, ctx, spec, l);
            let words = kv::layer_words(c, ctx, spec, l).ok_or_else(internal)?;
            let kreg = s
                .k_cache
                .get_mut(region..region + words)
                .ok_or_else(internal)?;
            let vreg = s
                .v_cache
                .get_mut(region..region + words)
                .ok_or_else(internal)?;
            region += words;
            for (i, (kt, vt)) in kc
                .chunks_exact(kv_dim)
                .zip(vc.chunks_exact(kv_dim))
                .enumerate()
            {
                let slot = (pos0 + i) % slots;
                if !kv::store_row(spec.ty, kern, kreg, slot, kt)
                    || !kv::store_row(spec.ty, kern, vreg, slot, vt)
                {
                    return Err(internal());
                }
            }
            // The query's Q8_0 blocks for a Q8_0 cache (the activation scratch is free here).
            let qq = kernels::scratch_blocks::<crate::quant::BlockQ8_0>(s.bqs);
            // Causal attention per token: token i sees positions ..= pos0 + i.
            for (i, (qi, oi)) in bq
                .chunks_exact(qd)
                .zip(batt.chunks_exact_mut(qd))
                .enumerate()
            {
                let pos = pos0 + i;
                // A sliding layer sees the last `swa_window` positions (itself included).
                let first = if swa {
                    (pos + 1).saturating_sub(a.swa_window)
                } else {
                    0
                };
                let at = kv::Attn {
                    k: kreg,
                    v: vreg,
                    ty: spec.ty,
                    slots,
                    first,
                    pos,
                    hd,
                    kv_dim,
                    group,
                    scale: a.q_scale,
                    cap: a.attn_softcap,
                    kern,
                };
                // att: (span,) scores of one head
                if !kv::attend(qi, oi, &at, s.att, qq) {
                    return Err(internal());
                }
            }
            obs.tensor("attn_out", Some(l), pos0, n, batt);
            let mut ain = Acts::new(batt, n, s.bqs, kern, mode);
            linear(l, 3, &w.wo, &mut ain, bxb); //                                  (n, dim)
            if let Some((post_attn, _)) = w.post_norms {
                bxb.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_inplace(o, post_attn, c.rms_eps));
            }
            obs.tensor("attn_proj", Some(l), pos0, n, bxb);
            add(bx, bxb);
            obs.tensor("ffn_inp", Some(l), pos0, n, bx);

            // Feed-forward (SwiGLU or GeGLU).
            for (o, xi) in bxb.chunks_exact_mut(dim).zip(bx.chunks_exact(dim)) {
                rmsnorm(o, xi, w.ffn_norm, c.rms_eps);
            }
            obs.tensor("ffn_norm", Some(l), pos0, n, bxb);
            let bhb = bhb_all.get_mut(..n * fd).ok_or_else(internal)?; //       (n, ffn_dim)
            let bhb2 = bhb2_all.get_mut(..n * fd).ok_or_else(internal)?; //     (n, ffn_dim)
            let mut xin = Acts::new(bxb, n, s.bqs, kern, mode); //               gate and up
            linear(l, 4, &w.w_gate, &mut xin, bhb); //                              (n, ffn_dim)
            linear(l, 5, &w.w_up, &mut xin, bhb2); //                               (n, ffn_dim)
            match a.ffn {
                // The table's SwiGLU is bit-identical to the reference one (a vector expf).
                Ffn::SwiGlu => match mode {
                    KernelMode::Reference => kernels::reference::swiglu(bhb, bhb2),
                    KernelMode::Fast => kern.swiglu(bhb, bhb2),
                },
                #[cfg(feature = "arch-gemma")]
                Ffn::GeGluTanh => match mode {
                    KernelMode::Reference => kernels::reference::geglu(bhb, bhb2),
                    KernelMode::Fast => kern.geglu(bhb, bhb2),
                },
                // `Config::from_gguf` refuses Gemma files in such a build.
                #[cfg(not(feature = "arch-gemma"))]
                Ffn::GeGluTanh => {
                    return Err(Error::new(
                        ErrorKind::UnsupportedArch,
                        "needs cargo feature arch-gemma",
                    ))
                }
            }
            obs.tensor("ffn_act", Some(l), pos0, n, bhb);
            let mut hin = Acts::new(bhb, n, s.bqs, kern, mode);
            linear(l, 6, &w.w_down, &mut hin, bxb); //                              (n, dim)
            if let Some((_, post_ffn)) = w.post_norms {
                bxb.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_inplace(o, post_ffn, c.rms_eps));
            }
            obs.tensor("ffn_out", Some(l), pos0, n, bxb);
            add(bx, bxb);
            obs.tensor("l_out", Some(l), pos0, n, bx);
        }
        s.filled = pos0 + n;
        s.last = n - 1;
        if want_logits {
            // The last token: final norm, then the output head (or the adapter set's head).
            let x = bx.get((n - 1) * dim..n * dim).ok_or_else(internal)?; //   (dim,)
            let xb = bxb.get_mut(..dim).ok_or_else(internal)?; //                (dim,)
            rmsnorm(xb, x, self.output_norm, c.rms_eps);
            obs.tensor("result_norm", None, pos0 + n - 1, 1, xb);
            let mut oin = Input::new(xb, s.bqs, kern, mode);
            matvec_input(set.head().unwrap_or(&self.output), &mut oin, s.logits); // (vocab,)
            if a.final_softcap > 0.0 {
                s.logits
                    .iter_mut()
                    .for_each(|v| *v = softcap(*v, a.final_softcap));
            }
        }
        Ok(())
    }

    fn check_token(&self, token: u32) -> Result<()> {
        if token as usize >= self.config.vocab {
            return Err(Error::new(ErrorKind::TokenOutOfRange, "token id")
                .detail(token as u64, self.config.vocab as u64));
        }
        Ok(())
    }

    /// Checks shared by `step` and `prefill`: the state fits this model, adapters were bound
    /// to it, and `pos` is inside the context and does not skip past the filled cache.
    fn check_state(&self, pos: usize, s: &State<'_>, set: &dyn Adapters) -> Result<()> {
        let c = &self.config;
        if s.cfg != *c {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "state was sized for a different model",
            ));
        }
        if !set.fits(c.n_layers) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "adapter was bound to a different model",
            ));
        }
        if pos >= s.ctx {
            return Err(
                Error::new(ErrorKind::ContextFull, "position").detail(pos as u64, s.ctx as u64)
            );
        }
        if pos > s.filled {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "position skips past the filled KV cache",
            )
            .detail(pos as u64, s.filled as u64));
        }
        // A sliding layer at `pos` reads `pos + 1 - window ..= pos`; its ring must still hold
        // the part before `pos` (only a rewind can fail this).
        let need = (pos + 1).saturating_sub(c.arch.swa_window);
        if c.arch.swa_window > 0 && need < pos && need < s.swa_lo {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "rewind past the sliding-window cache (it keeps window + block positions): \
                 restart from State::earliest_restart, from 0, or build the state with swa_full",
            )
            .detail(pos as u64, s.earliest_restart() as u64));
        }
        Ok(())
    }

    /// One decode step: a block of one token ([`Model::block`]).
    fn step(
        &self,
        token: u32,
        pos: usize,
        s: &mut State<'_>,
        want_logits: bool,
        set: &dyn Adapters,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        self.check_token(token)?;
        self.check_state(pos, s, set)?;
        self.block(&[token], pos, s, set, want_logits, obs)
    }
}

/// Named intermediates of the forward pass, for parity traces and debugging (llama.cpp's
/// `cb(cur, "attn_norm", il)`): tools hook into the one forward body by name instead of
/// keeping a copy of it. Names, in order, per layer: `attn_norm`, `q`, `k`, `v` (after biases,
/// QK-norm and rope; `k`/`v` as written to the cache), `attn_out` (before the output
/// projection), `attn_proj` (after it, and after the post-norm where the architecture has one),
/// `ffn_inp` (the residual after attention), `ffn_norm`, `ffn_act` (activation times up, before
/// the down projection), `ffn_out` (after it and its post-norm), `l_out` (the residual after
/// the layer); and `inp_embd` (after any embedding scale) before the layers, `result_norm`
/// (last token only) after them.
pub trait Observer {
    /// `data` holds `n` rows, one per token of the block (positions `pos0..pos0 + n`), of
    /// tensor `name` in layer `layer` (`None` outside the layers).
    fn tensor(&mut self, name: &str, layer: Option<usize>, pos0: usize, n: usize, data: &[f32]);
}

/// The observer that looks at nothing.
pub struct NoObserver;

impl Observer for NoObserver {
    #[inline]
    fn tensor(&mut self, _: &str, _: Option<usize>, _: usize, _: usize, _: &[f32]) {}
}

/// The activations entering a linear: one vector (a decode step: the matvec kernels, each
/// prefetching the bytes of the adapter pair that follows it) or a prompt block (blocked
/// matmuls, adapters applied over the block). Either way each activation format is made once
/// and shared by every linear that reads the same input (q/k/v; gate/up).
enum Acts<'a> {
    One(Input<'a>),
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    Many(Batch<'a>),
}

impl<'a> Acts<'a> {
    /// `n` vectors laid end to end in `x`, with `scratch` for their quantised forms.
    fn new(
        x: &'a [f32],
        n: usize,
        scratch: &'a mut [f32],
        kern: &'static Kernel,
        mode: KernelMode,
    ) -> Self {
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if n > 1 {
            return Acts::Many(Batch::new(x, n, scratch, kern, mode));
        }
        let _ = n;
        Acts::One(Input::new(x, scratch, kern, mode))
    }

    /// `y = W x + sum_i s_i B_i (A_i x)` for linear `k` of layer `l` (llama.cpp's
    /// `build_lora_mm`). `lt`, `lo`: LoRA scratch (see [`Adapters::apply_batch`]).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        set: &dyn Adapters,
        l: usize,
        k: usize,
        w: &MatRef<'_>,
        y: &mut [f32],
        lt: &mut [f32],
        lo: &mut [f32],
    ) {
        match self {
            Acts::One(x) => {
                // The base matvec prefetches the adapter bytes the `apply` after it reads
                // (`kernels::Side`): they would be cold by then otherwise.
                matvec_input_side(w, x, y, set.side(l, k));
                set.apply(l, k, x, y, lt, lo);
            }
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Acts::Many(x) => {
                matmul_input(w, x, y);
                set.apply_batch(l, k, x, y, lt, lo);
            }
        }
    }
}

fn internal() -> Error {
    Error::new(
        ErrorKind::InvalidArgument,
        "state buffers do not match the model",
    )
}

/// `x = x / rms(x) * w`, in place.
fn rmsnorm_inplace(x: &mut [f32], w: VecRef<'_>, eps: f32) {
    let n = x.len().max(1) as f32;
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for (v, wi) in x.iter_mut().zip(w.iter()) {
        *v = *v * inv * wi;
    }
}

/// `c tanh(x / c)`.
#[cfg(feature = "arch-gemma")]
fn softcap(x: f32, c: f32) -> f32 {
    c * libm::tanhf(x / c)
}

/// Soft-caps are Gemma 2's, whose files a build without `arch-gemma` refuses at load
/// (`Config::from_gguf`), so a cap is never set here; leaving `tanhf` out saves firmware flash.
#[cfg(not(feature = "arch-gemma"))]
fn softcap(x: f32, _c: f32) -> f32 {
    x
}

/// `out = x / rms(x) * w`.
fn rmsnorm(out: &mut [f32], x: &[f32], w: VecRef<'_>, eps: f32) {
    let n = x.len().max(1) as f32;
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / n;
    let inv = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), wi) in out.iter_mut().zip(x).zip(w.iter()) {
        *o = v * inv * wi;
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// In-place softmax (max-subtracted).
pub fn softmax(x: &mut [f32]) {
    softmax_with(&kernels::portable::KERNEL, x);
}

/// [`softmax`] with the exponentials on `kern` (the same bits on every table).
pub(crate) fn softmax_with(kern: &Kernel, x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    (kern.exp_shifted)(x, max);
    let mut sum = 0.0f32;
    for v in x.iter() {
        sum += *v;
    }
    if sum > 0.0 {
        let inv = 1.0 / sum;
        for v in x.iter_mut() {
            *v *= inv;
        }
    }
}

/// Rotate adjacent pairs of every head in `x` (heads of `head_dim`) by the table.
/// Rotate each head of `x` by `table`, pairing dimensions as `style` says.
fn rope_heads(x: &mut [f32], head_dim: usize, table: &[f32], style: RopeStyle) {
    match style {
        RopeStyle::Normal => rope(x, head_dim, table),
        RopeStyle::Neox => rope_neox(x, head_dim, table),
    }
}

/// NEOX pairing: dimension `i` with `i + rope_dims / 2`.
fn rope_neox(x: &mut [f32], head_dim: usize, table: &[f32]) {
    let half = table.len() / 2;
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head.split_at_mut(half.min(head_dim / 2));
        for ((a, b), cs) in lo.iter_mut().zip(hi.iter_mut()).zip(table.chunks_exact(2)) {
            let (x0, x1) = (*a, *b);
            *a = x0 * cs[0] - x1 * cs[1];
            *b = x0 * cs[1] + x1 * cs[0];
        }
    }
}

/// Adjacent pairing: dimensions `(2i, 2i + 1)`.
fn rope(x: &mut [f32], head_dim: usize, table: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, cs) in head.chunks_exact_mut(2).zip(table.chunks_exact(2)) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cs[0] - b * cs[1];
            pair[1] = a * cs[1] + b * cs[0];
        }
    }
}

/// Everything that changes during inference: activations, scratch, KV cache and logits,
/// carved from one caller-provided buffer.
#[derive(Debug)]
pub struct State<'s> {
    cfg: Config,
    ctx: usize,
    filled: usize,
    /// The block row holding the last token run (its residual in `bx`).
    last: usize,
    /// (ffn_dim,): the LoRA scratch `T = A X` (tokens, rank).
    hb: &'s mut [f32],
    att: &'s mut [f32],
    /// (block, rope_dims): `(cos, sin)` per rotated pair, one per token of the block, filled
    /// once before the layer loop.
    rope: &'s mut [f32],
    lora_tmp: &'s mut [f32],
    lora_out: &'s mut [f32],
    /// Prompt tokens per prefill block: `min(PREFILL_BLOCK, ctx)`.
    block: usize,
    bx: &'s mut [f32],
    bxb: &'s mut [f32],
    bq: &'s mut [f32],
    batt: &'s mut [f32],
    bhb: &'s mut [f32],
    bhb2: &'s mut [f32],
    /// Scratch for a prompt block's quantised forms (`kernels::Batch`).
    bqs: &'s mut [f32],
    mode: KernelMode,
    /// The kernel table this state's forward passes use; `None` means [`kernels::active`].
    kernel: Option<&'static Kernel>,
    logits: &'s mut [f32],
    /// Element type and ring choice of the caches.
    cache: CacheSpec,
    /// Rows of a sliding layer's ring (`ctx` where there is no ring).
    swa_slots: usize,
    /// The oldest position whose K/V the sliding layers' rings still hold (every position from
    /// here to `filled` is there): a block may start at `pos <= filled` only if the window of
    /// `pos` starts at or after it (a rewind further back would read overwritten rows).
    swa_lo: usize,
    /// Per layer, `kv::layer_slots` rows of `kv::CacheType::row_bytes` each, in f32 words.
    k_cache: &'s mut [f32],
    v_cache: &'s mut [f32],
}

impl<'s> State<'s> {
    /// Number of `f32` values a state for `cfg` with `ctx` positions and an f32 KV cache needs,
    /// or `None` if the size overflows `usize`.
    pub fn checked_len_for(cfg: &Config, ctx: usize) -> Option<usize> {
        Self::checked_len_for_cache(cfg, ctx, CacheSpec::default())
    }

    /// Number of `f32` values a state for `cfg` with `ctx` positions and a KV cache built as
    /// `spec` says needs, or `None` if the size overflows `usize`. A pure function of its
    /// arguments.
    pub fn checked_len_for_cache(cfg: &Config, ctx: usize, spec: CacheSpec) -> Option<usize> {
        let kv = kv::cache_words(cfg, ctx, spec)?;
        let blk = Self::block_for(ctx);
        let act_qb = act_scratch_f32s(cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim).checked_mul(blk)?);
        let parts = [
            cfg.ffn_dim, // hb: LoRA T = A X
            ctx,         // att (one head at a time)
            blk.checked_mul(cfg.rope_dims)?
                .checked_mul(1 + cfg.has_second_rope() as usize)?, // rope tables
            MAX_RANK,    // LoRA A x
            cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim), // LoRA B (A x)
            blk.checked_mul(cfg.dim)?, // bx: prefill block residuals (block, dim)
            blk.checked_mul(cfg.dim)?, // bxb (block, dim)
            blk.checked_mul(cfg.q_dim())?, // bq (block, q_dim)
            blk.checked_mul(cfg.q_dim())?, // batt (block, q_dim)
            blk.checked_mul(cfg.ffn_dim.max(cfg.kv_dim()))?, // bhb (block, ffn_dim); k staging
            blk.checked_mul(cfg.ffn_dim.max(cfg.kv_dim()))?, // bhb2 (block, ffn_dim); v staging
            act_qb,      // the block's quantised forms (kernels::Batch)
            cfg.vocab,   // logits
            kv,          // k cache
            kv,          // v cache
        ];
        parts.iter().try_fold(0usize, |a, &p| a.checked_add(p))
    }

    /// Prompt tokens a state with `ctx` positions runs through the layers together in
    /// [`Model::prefill`]: `min(PREFILL_BLOCK, ctx)` (a small context keeps a small state).
    pub const fn block_for(ctx: usize) -> usize {
        if ctx < PREFILL_BLOCK {
            ctx
        } else {
            PREFILL_BLOCK
        }
    }

    /// Number of `f32` values a state for `cfg` with `ctx` positions and an f32 KV cache needs
    /// (saturating).
    pub fn len_for(cfg: &Config, ctx: usize) -> usize {
        Self::checked_len_for(cfg, ctx).unwrap_or(usize::MAX)
    }

    /// Bytes a state for `cfg` with `ctx` positions and an f32 KV cache needs.
    pub fn bytes_for(cfg: &Config, ctx: usize) -> usize {
        Self::len_for(cfg, ctx).saturating_mul(4)
    }

    /// [`State::len_for`] with a KV cache built as `spec` says (saturating).
    pub fn len_for_cache(cfg: &Config, ctx: usize, spec: CacheSpec) -> usize {
        Self::checked_len_for_cache(cfg, ctx, spec).unwrap_or(usize::MAX)
    }

    /// [`State::bytes_for`] with a KV cache built as `spec` says (saturating).
    pub fn bytes_for_cache(cfg: &Config, ctx: usize, spec: CacheSpec) -> usize {
        Self::len_for_cache(cfg, ctx, spec).saturating_mul(4)
    }

    /// Carve a state with an f32 KV cache out of `buf`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `ctx` is 0 or above the model's context length,
    /// [`ErrorKind::BufferTooSmall`] if `buf` is shorter than [`State::len_for`].
    pub fn new(cfg: &Config, ctx: usize, buf: &'s mut [f32]) -> Result<Self> {
        Self::with_cache(cfg, ctx, CacheSpec::default(), buf)
    }

    /// Carve a state whose KV cache is built as `spec` says out of `buf`.
    ///
    /// # Errors
    /// As [`State::new`] (with [`State::len_for_cache`] as the size), and
    /// [`CacheType::check`]'s errors for a cache type the model or build cannot use.
    pub fn with_cache(
        cfg: &Config,
        ctx: usize,
        spec: CacheSpec,
        buf: &'s mut [f32],
    ) -> Result<Self> {
        spec.ty.check(cfg)?;
        if ctx == 0 || ctx > cfg.ctx_len {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "context length (1..=model context)",
            )
            .detail(ctx as u64, cfg.ctx_len as u64));
        }
        let need = Self::checked_len_for_cache(cfg, ctx, spec)
            .ok_or_else(|| Error::new(ErrorKind::BufferTooSmall, "state size overflows"))?;
        if buf.len() < need {
            return Err(
                Error::new(ErrorKind::BufferTooSmall, "state buffer (f32 values)")
                    .detail(buf.len() as u64, need as u64),
            );
        }
        let kv = kv::cache_words(cfg, ctx, spec).ok_or_else(internal)?;
        let swa_slots = (0..cfg.n_layers)
            .map(|l| kv::layer_slots(cfg, ctx, spec, l))
            .min()
            .unwrap_or(ctx);
        let rest = &mut buf[..need];
        rest.fill(0.0);
        let (hb, rest) = rest.split_at_mut(cfg.ffn_dim);
        let (att, rest) = rest.split_at_mut(ctx);
        let block = Self::block_for(ctx);
        let (rope, rest) =
            rest.split_at_mut(block * cfg.rope_dims * (1 + cfg.has_second_rope() as usize));
        let (lora_tmp, rest) = rest.split_at_mut(MAX_RANK);
        let (lora_out, rest) = rest.split_at_mut(cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim));
        let (bx, rest) = rest.split_at_mut(block * cfg.dim);
        let (bxb, rest) = rest.split_at_mut(block * cfg.dim);
        let (bq, rest) = rest.split_at_mut(block * cfg.q_dim());
        let (batt, rest) = rest.split_at_mut(block * cfg.q_dim());
        let (bhb, rest) = rest.split_at_mut(block * cfg.ffn_dim.max(cfg.kv_dim()));
        let (bhb2, rest) = rest.split_at_mut(block * cfg.ffn_dim.max(cfg.kv_dim()));
        let act_qb = act_scratch_f32s(block * cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim));
        let (bqs, rest) = rest.split_at_mut(act_qb);
        let (logits, rest) = rest.split_at_mut(cfg.vocab);
        let (k_cache, v_cache) = rest.split_at_mut(kv);
        Ok(State {
            cfg: *cfg,
            ctx,
            filled: 0,
            last: 0,
            hb,
            att,
            rope,
            lora_tmp,
            lora_out,
            block,
            bx,
            bxb,
            bq,
            batt,
            bhb,
            bhb2,
            bqs,
            mode: KernelMode::Fast,
            kernel: None,
            logits,
            cache: spec,
            swa_slots,
            swa_lo: 0,
            k_cache,
            v_cache,
        })
    }

    /// Positions this state can hold.
    pub const fn ctx(&self) -> usize {
        self.ctx
    }

    /// Positions currently in the KV cache.
    pub const fn len(&self) -> usize {
        self.filled
    }

    /// True if the KV cache is empty.
    pub const fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Forget the KV cache (O(1): later positions overwrite it).
    pub fn clear(&mut self) {
        self.filled = 0;
        self.swa_lo = 0;
    }

    /// How this state's KV cache is built.
    pub const fn cache(&self) -> CacheSpec {
        self.cache
    }

    /// The oldest position a block may restart from (`Model::forward` at `pos` needs the
    /// window of `pos` in the sliding layers' rings): 0 without rings.
    pub fn earliest_restart(&self) -> usize {
        match (self.cfg.arch.swa_window, self.swa_lo) {
            (0, _) | (_, 0) => 0,
            (w, lo) => (lo + w).saturating_sub(1).min(self.filled),
        }
    }

    /// Keep only the first `n` positions of the KV cache. With sliding-window rings, running
    /// on from `n` works only if `n >=` [`State::earliest_restart`] (checked then, as an error).
    pub fn truncate(&mut self, n: usize) {
        self.filled = self.filled.min(n);
    }

    /// The logits of the last `forward`.
    pub fn logits(&self) -> &[f32] {
        self.logits
    }

    /// The final hidden state before the output norm (dim,) of the last token run, for
    /// debugging and parity.
    pub fn hidden(&self) -> &[f32] {
        let d = self.cfg.dim;
        self.bx
            .get(self.last * d..(self.last + 1) * d)
            .unwrap_or(&[])
    }

    /// Choose the linears' path: [`KernelMode::Fast`] (the default: SIMD kernels, activations
    /// quantised to Q8 for quantised weights, as llama.cpp) or [`KernelMode::Reference`] (the
    /// scalar f32-activation oracle that parity tests against f32 frameworks use).
    pub fn set_kernel_mode(&mut self, mode: KernelMode) {
        self.mode = mode;
    }

    /// The path set by [`State::set_kernel_mode`].
    pub const fn kernel_mode(&self) -> KernelMode {
        self.mode
    }

    /// Run this state's forward passes on `kernel` (e.g. `Isa::Avx2.kernel()`) instead of the
    /// process-wide [`kernels::active`] one; `None` goes back to following it. Per state, so
    /// tests (and a server) can compare kernel tables side by side in one process: every
    /// table is exact in its integer parts, but reduces floats in its own order (see the
    /// cross-table contract in `kernels`).
    pub fn set_kernel(&mut self, kernel: Option<&'static Kernel>) {
        self.kernel = kernel;
    }

    /// The kernel table this state's forward passes use.
    pub fn kernel(&self) -> &'static Kernel {
        self.kernel.unwrap_or_else(kernels::active)
    }
}

/// An owned state buffer of the right size (needs the `alloc` feature).
#[cfg(feature = "alloc")]
pub fn state_buffer(cfg: &Config, ctx: usize) -> alloc::vec::Vec<f32> {
    alloc::vec![0.0; State::len_for(cfg, ctx).min(isize::MAX as usize / 4)]
}

/// An owned state buffer for a KV cache built as `spec` says (needs the `alloc` feature).
#[cfg(feature = "alloc")]
pub fn state_buffer_for(cfg: &Config, ctx: usize, spec: CacheSpec) -> alloc::vec::Vec<f32> {
    alloc::vec![0.0; State::len_for_cache(cfg, ctx, spec).min(isize::MAX as usize / 4)]
}
