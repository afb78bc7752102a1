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
    self, act_scratch_f32s, matvec_input, matvec_input_side, Input, Kernel, MatRef, Side,
};
// Prompt blocks of several tokens (hosts only; see `BLOCKED_PREFILL`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::kernels::{matmul_input, Batch};

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
    /// As [`Adapters::apply`] for vectors `cols` of a batch (a prompt block, or the tokens of
    /// one adapter group in a multi-sequence step): `y` holds the outputs of those vectors
    /// only (`(cols.len(), out)`); every output bit-identical to `apply` of its vector.
    /// Hosts only (x86_64, aarch64: where prompt blocks and multi-sequence steps run batched);
    /// on microcontrollers it would sit in every adapter set's vtable unused (3.3 KB of flash).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[allow(clippy::too_many_arguments)]
    fn apply_cols(
        &self,
        layer: usize,
        linear: usize,
        x: &mut Batch<'_>,
        cols: core::ops::Range<usize>,
        y: &mut [f32],
        tmp: &mut [f32],
        out_tmp: &mut [f32],
    );
    /// True if no adapter is active (a multi-sequence step skips such a group). The default
    /// says false, which is always correct.
    fn is_empty(&self) -> bool {
        false
    }
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
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn apply_cols(
        &self,
        _: usize,
        _: usize,
        _: &mut Batch<'_>,
        _: core::ops::Range<usize>,
        _: &mut [f32],
        _: &mut [f32],
        _: &mut [f32],
    ) {
    }
    fn is_empty(&self) -> bool {
        true
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
use core::mem::MaybeUninit;
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
/// (`tests/tests/prefill.rs`). There [`State::block_for`] is 1, so a state holds one token's
/// activations; a host sizing a device's state (the firmware's build script) asks for that
/// block explicitly ([`CacheSpec::with_block`]).
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

/// Format `blk.{i}.{part}.{kind}` into `buf` without allocating (empty if it does not fit).
/// Written out by hand rather than with `core::fmt`: this was the only formatting the
/// inference path did, and it kept `core::fmt`'s machinery (~1.5 KB) in firmware images that
/// print nothing with it (the Cortex-M runtime image, and any image logging through defmt).
fn layer_tensor_name_kind<'b>(buf: &'b mut [u8; 64], i: usize, part: &str, kind: &str) -> &'b str {
    // `i` in decimal, most significant digit first.
    let mut digits = [0u8; 20];
    let mut k = digits.len();
    let mut v = i;
    loop {
        k -= 1;
        digits[k] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let parts: [&[u8]; 6] = [
        b"blk.",
        &digits[k..],
        b".",
        part.as_bytes(),
        b".",
        kind.as_bytes(),
    ];
    let mut n = 0;
    for p in parts {
        let Some(dst) = buf.get_mut(n..n + p.len()) else {
            return "";
        };
        dst.copy_from_slice(p);
        n += p.len();
    }
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

/// Layer `i`'s weight views, each tensor checked for presence, type and shape.
#[inline(never)]
fn build_layer<'w>(g: &Gguf<'w>, c: &Config, i: usize, nb: &mut [u8; 64]) -> Result<Layer<'w>> {
    let mut m = |part: &str, rows: usize, cols: usize| {
        mat(g, layer_tensor_name(&mut *nb, i, part), rows, cols)
    };
    let wq = m("attn_q", c.q_dim(), c.dim)?;
    let wk = m("attn_k", c.kv_dim(), c.dim)?;
    let wv = m("attn_v", c.kv_dim(), c.dim)?;
    let wo = m("attn_output", c.dim, c.q_dim())?;
    let w_gate = m("ffn_gate", c.ffn_dim, c.dim)?;
    let w_up = m("ffn_up", c.ffn_dim, c.dim)?;
    let w_down = m("ffn_down", c.dim, c.ffn_dim)?;
    let attn_norm = VecRef::from_tensor(
        &g.tensor(layer_tensor_name(&mut *nb, i, "attn_norm"))?,
        c.dim,
    )?;
    let ffn_norm = VecRef::from_tensor(
        &g.tensor(layer_tensor_name(&mut *nb, i, "ffn_norm"))?,
        c.dim,
    )?;
    let mut vec = |part: &str, kind: &str, len: usize| {
        VecRef::from_tensor(
            &g.tensor(layer_tensor_name_kind(&mut *nb, i, part, kind))?,
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
    Ok(Layer {
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
    })
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
        let mut slot = MaybeUninit::uninit();
        Self::init_from_gguf(g, &mut slot)?;
        // SAFETY: `init_from_gguf` returned Ok, so it wrote every field of `slot`.
        Ok(unsafe { slot.assume_init() })
    }

    /// [`Model::from_gguf`], built directly in `slot`: no model-sized value passes through the
    /// stack (a `Model` is about 250 bytes per layer of `L` on 32-bit targets, so ~8 KB at
    /// `L = 32`, and a by-value constructor can hold two or three copies in its frames on a
    /// microcontroller).
    /// The C library's `el_model_open` builds its handle this way, in the caller's memory.
    ///
    /// On error `slot` may be partly written and must be taken as uninitialised (a `Model` owns
    /// nothing, so nothing leaks).
    ///
    /// # Errors
    /// As [`Model::from_gguf`].
    pub fn init_from_gguf<'s>(
        g: &Gguf<'w>,
        slot: &'s mut MaybeUninit<Self>,
    ) -> Result<&'s mut Self> {
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
        let p = slot.as_mut_ptr();
        // SAFETY: `p` points to `slot`'s (uninitialised, writable) storage; `addr_of_mut!`
        // takes the field's address without reading or referencing uninitialised memory.
        let layers = unsafe { core::ptr::addr_of_mut!((*p).layers) }.cast::<Option<Layer<'w>>>();
        let mut nb = [0u8; 64];
        for i in 0..L {
            let layer = if i < c.n_layers {
                Some(build_layer(g, &c, i, &mut nb)?)
            } else {
                None
            };
            // SAFETY: `[Option<Layer>; L]` is `L` contiguous `Option<Layer>`s, `i < L`; each
            // element is written once, without dropping the (uninitialised) old value.
            unsafe { layers.add(i).write(layer) };
        }
        // SAFETY: as above, one write per remaining field; after these every field of the
        // `Model` is initialised, so `assume_init_mut` is sound.
        unsafe {
            core::ptr::addr_of_mut!((*p).token_embd).write(token_embd);
            core::ptr::addr_of_mut!((*p).output_norm).write(output_norm);
            core::ptr::addr_of_mut!((*p).output).write(output);
            core::ptr::addr_of_mut!((*p).rope_freqs).write(rope_freqs);
            core::ptr::addr_of_mut!((*p).config).write(c);
            Ok(slot.assume_init_mut())
        }
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
    /// Under [`KernelMode::Fast`] the prompt runs in blocks of [`CacheSpec::block_for`] tokens,
    /// layer by layer: every linear is one blocked matmul over the block (each weight read
    /// once per block, not once per token) followed by its adapters' products over the block
    /// ([`Adapters::apply_cols`]: each A and B read once per block, a Q8_0 A against the
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
        if !BLOCKED_PREFILL || s.mode == KernelMode::Reference || s.w.block == 0 {
            // The oracle path stays a plain loop of single-token steps.
            for (i, &t) in rest.iter().enumerate() {
                self.step(t, start + i, s, false, set, obs)?;
            }
            return self.forward_observed(*last, start + rest.len(), s, set, obs);
        }
        self.check_state(start, s, set)?;
        let block = s.w.block;
        let blocks = tokens.len().div_ceil(block);
        for (b, chunk) in tokens.chunks(block).enumerate() {
            self.block(chunk, start + b * block, s, set, b + 1 == blocks, obs)?;
        }
        Ok(&*s.logits)
    }

    /// Run one step of several sequences at once: sequence `j` runs `seqs[j].tokens` at
    /// positions `seqs[j].pos..` on its own state (KV cache and position), with its own
    /// adapters, and gets the logits of its last token in its state when it asks for them.
    /// Decode steps (one token each) and prompt chunks mix freely: every linear reads the base
    /// weights once for all the step's tokens (a blocked matmul), then each adapter set runs
    /// over its own sequences' columns (the gathered LoRA product of Punica/S-LoRA); attention
    /// is per token on its sequence's cache. The body is the one of [`Model::forward`] and
    /// [`Model::prefill`] (no copy of the forward pass), and every column of the batched
    /// kernels is bit-identical to the matvec, so each sequence's logits equal what it gets
    /// run alone (`tests/tests/batch.rs`), whatever shares the step.
    ///
    /// All states must be built for this model with the same context length (at most the
    /// scratch's) and cache spec, and run on the same kernel table and mode. A step of more
    /// than one token needs a host build (x86-64, aarch64); microcontroller builds run single
    /// tokens only.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] for an empty step or sequence, more tokens than the
    /// scratch holds, states that differ as said above, and everything [`Model::prefill`]
    /// refuses (token ids, positions, context) for each sequence; nothing is run then. An
    /// error inside the pass leaves every state's cache valid up to its `pos`.
    pub fn step_many(
        &self,
        scratch: &mut StepScratch<'_>,
        seqs: &mut [SeqStep<'_, '_>],
    ) -> Result<()> {
        let Some(first) = seqs.first() else {
            return Err(Error::new(ErrorKind::InvalidArgument, "empty step"));
        };
        let (ctx, spec, mode) = (first.state.ctx, first.state.cache, first.state.mode);
        let kern = first.state.kernel();
        let mut n = 0usize;
        for q in seqs.iter() {
            let st = &*q.state;
            if q.tokens.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "empty sequence in a step",
                ));
            }
            if st.ctx != ctx
                || st.cache != spec
                || st.mode != mode
                || !core::ptr::eq(st.kernel(), kern)
                || ctx > scratch.ctx
            {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "states of one step need the same context, cache spec, kernel and mode",
                ));
            }
            for &t in q.tokens {
                self.check_token(t)?;
            }
            self.check_state(q.pos, st, q.adapters)?;
            let end = q.pos.saturating_add(q.tokens.len());
            if end > ctx {
                return Err(Error::new(ErrorKind::ContextFull, "step tokens")
                    .detail(end as u64, ctx as u64));
            }
            n += q.tokens.len();
        }
        if n > scratch.w.block || (!BLOCKED_PREFILL && n != 1) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "more tokens than the step scratch holds (one on microcontrollers)",
            )
            .detail(n as u64, scratch.w.block as u64));
        }
        self.body(&mut scratch.w, scratch.head, seqs, &mut NoObserver)
    }

    /// The forward pass of a single sequence's block: [`Model::body`] with the state's own
    /// scratch and one [`SeqStep`].
    fn block(
        &self,
        tokens: &[u32],
        pos0: usize,
        s: &mut State<'_>,
        set: &dyn Adapters,
        want_logits: bool,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        // The state's scratch is taken out for the pass (O(1), no copy) so the body can hold
        // it beside the state's KV cache, and put back whatever happens.
        let mut w = core::mem::take(&mut s.w);
        let r = {
            let mut seq = [SeqStep {
                state: &mut *s,
                tokens,
                pos: pos0,
                adapters: set,
                logits: want_logits,
            }];
            self.body(&mut w, &mut [], &mut seq, obs)
        };
        s.w = w;
        if r.is_ok() {
            s.last = tokens.len() - 1;
        }
        r
    }

    /// The forward pass, one body for decode, prompt blocks and multi-sequence steps: run the
    /// tokens of every sequence in `seqs` (`n` in all, at most `w.block`; sequence `j`'s
    /// tokens at positions `seqs[j].pos..`, laid end to end in `seqs` order) through every
    /// layer together. One token in all (a decode step) runs the matvec kernels, each
    /// prefetching its adapter pair's bytes; more run each linear as one blocked matmul over
    /// all `n` columns followed by each sequence's adapters over its own columns (consecutive
    /// sequences with the same adapter set object as one group: `Adapters::apply_cols`). Every
    /// column is bit-identical to the matvec, so a token's result does not depend on what
    /// shares its pass: prefill equals token-by-token decode, and a sequence in a
    /// multi-sequence step equals the sequence run alone. Rope, cache writes and causal
    /// attention run per token, on its own sequence's cache. Leaves each token's residual in
    /// `w.bx` (n, dim) and, for each sequence that wants them, the logits of its last token
    /// in its state. `head_buf` holds rows of the output head's blocked matmul (whole
    /// `vocab`-sized rows; fewer than two run the head as one matvec per sequence).
    /// Callers have checked tokens, positions, states and adapter sets.
    fn body(
        &self,
        w: &mut Scratch<'_>,
        head_buf: &mut [f32],
        seqs: &mut [SeqStep<'_, '_>],
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let c = &self.config;
        let n: usize = seqs.iter().map(|q| q.tokens.len()).sum();
        let first = seqs.first().ok_or_else(internal)?;
        let pos0 = first.pos;
        let (dim, qd, fd, hd, kv_dim, rd, ctx) = (
            c.dim,
            c.q_dim(),
            c.ffn_dim,
            c.head_dim,
            c.kv_dim(),
            c.rope_dims,
            first.state.ctx,
        );
        let group = c.n_heads / c.n_kv_heads;
        let a = &c.arch;
        let (kern, mode, spec) = (first.state.kernel(), first.state.mode, first.state.cache);
        if n == 0 || n > w.block || (!BLOCKED_PREFILL && n != 1) {
            return Err(internal());
        }
        for q in seqs.iter_mut() {
            let st = &mut *q.state;
            let end = q.pos + q.tokens.len();
            if q.tokens.is_empty() || end > st.ctx || st.ctx != ctx || st.cache != spec {
                return Err(internal());
            }
            // Positions from pos on are being rewritten: until this pass is done they are not
            // valid.
            st.filled = st.filled.min(q.pos);
            // Where the ring of a sliding layer still holds every position the pass reads
            // (`check_state` refused the block otherwise): see `State::swa_lo`.
            st.swa_lo = st.swa_lo.min(q.pos).max(end.saturating_sub(st.swa_slots));
        }
        // Per-pass views (each token's vector at [i * width ..]).
        let bx = w.bx.get_mut(..n * dim).ok_or_else(internal)?; //           (n, dim)
        let bxb = w.bxb.get_mut(..n * dim).ok_or_else(internal)?; //         (n, dim)
        let bq = w.bq.get_mut(..n * qd).ok_or_else(internal)?; //            (n, q_dim)
        let batt = w.batt.get_mut(..n * qd).ok_or_else(internal)?; //        (n, q_dim)
                                                                   // (n, max(ffn_dim, kv_dim)): the FFN's hidden vectors, and before them the pass's k
                                                                   // and v on their way into the caches (which may be rings, or another element type).
        let bhb_all = w.bhb.get_mut(..n * fd.max(kv_dim)).ok_or_else(internal)?;
        let bhb2_all = w.bhb2.get_mut(..n * fd.max(kv_dim)).ok_or_else(internal)?;
        // Rope tables: (n, rope_dims) for the global base, and a second one for the sliding
        // layers' base where the architecture has one.
        let (brope, brope2) = w.rope.split_at_mut((w.block * rd).min(w.rope.len()));
        let brope = brope.get_mut(..n * rd).ok_or_else(internal)?; //        (n, rope_dims)
        let brope2 = brope2.get_mut(..if c.has_second_rope() { n * rd } else { 0 });
        let brope2 = brope2.ok_or_else(internal)?; //                         (n, rope_dims)
                                                   // LoRA scratch: T = A X of the block, (n, r). `hb` (ffn_dim,) serves: at ffn_dim >= n r
                                                   // (SmolLM2: r <= 96 for 16 tokens) it holds T for the whole block and every adapter's
                                                   // A and B are read once per block (`Adapters::apply_cols`), above that
                                                   // ceil(n r / ffn_dim) times. `lora_tmp` (MAX_RANK,) where it is the longer (tiny
                                                   // models). `lora_out` (the output width) serves the plain B path.
        let lt: &mut [f32] = if w.hb.len() >= w.lora_tmp.len() {
            &mut *w.hb
        } else {
            &mut *w.lora_tmp
        };
        let lo: &mut [f32] = &mut *w.lora_out;
        let (bqs, att) = (&mut *w.bqs, &mut *w.att);
        // One linear, `y = W x + sum_i s_i B_i (A_i x)` (llama.cpp's `build_lora_mm`): the
        // architecture code below never sees adapters or activation quantising.
        let linear = |seqs: &[SeqStep<'_, '_>],
                      l: usize,
                      k: usize,
                      wm: &MatRef<'_>,
                      x: &mut Acts<'_>,
                      y: &mut [f32],
                      lt: &mut [f32],
                      lo: &mut [f32]| {
            x.linear(seqs, l, k, wm, y, lt, lo);
        };

        // x_i = token_embd[token_i]; the rope table of each position, once for all layers.
        // (Plain loops over the sequences: iterator adaptors here cost firmware flash.)
        let mut i = 0; // token index in the pass
        for q in seqs.iter() {
            for (k, &t) in q.tokens.iter().enumerate() {
                let pos = q.pos + k;
                let xi = bx.get_mut(i * dim..(i + 1) * dim).ok_or_else(internal)?;
                self.token_embd.dequantize_row(t as usize, xi)?;
                if a.embed_scale {
                    let k = libm::sqrtf(dim as f32);
                    xi.iter_mut().for_each(|v| *v *= k);
                }
                let ti = brope.get_mut(i * rd..(i + 1) * rd).ok_or_else(internal)?;
                rope_table_scaled(ti, pos, c.rope_base, rd, c.rope_freq_scale, self.rope_freqs);
                if let Some(ti) = brope2.get_mut(i * rd..(i + 1) * rd) {
                    rope_table(ti, pos, a.rope_base_swa, rd);
                }
                i += 1;
            }
        }
        obs.tensor("inp_embd", None, pos0, n, bx);
        let mut region = 0; // this layer's offset in the K and V caches (f32 words)
        for (l, layer) in self.layers.iter().take(c.n_layers).enumerate() {
            let Some(wl) = layer else {
                return Err(Error::new(ErrorKind::InvalidArgument, "layer not loaded"));
            };
            // Attention: q, k, v for the whole block; k and v straight into the cache.
            for (o, xi) in bxb.chunks_exact_mut(dim).zip(bx.chunks_exact(dim)) {
                rmsnorm(o, xi, wl.attn_norm, c.rms_eps);
            }
            obs.tensor("attn_norm", Some(l), pos0, n, bxb);
            let kc = bhb_all.get_mut(..n * kv_dim).ok_or_else(internal)?; //   (n, kv_dim)
            let vc = bhb2_all.get_mut(..n * kv_dim).ok_or_else(internal)?; //  (n, kv_dim)
                                                                           // Quantised once (Q8_0/Q8_1/Q8_K as the weights need), read by q, k and v.
            let mut xin = Acts::new(bxb, n, bqs, kern, mode);
            linear(seqs, l, 0, &wl.wq, &mut xin, bq, lt, lo); //                    (n, q_dim)
            linear(seqs, l, 1, &wl.wk, &mut xin, kc, lt, lo); //                    (n, kv_dim)
            linear(seqs, l, 2, &wl.wv, &mut xin, vc, lt, lo); //                    (n, kv_dim)
            if let Some([b_q, b_k, b_v]) = wl.qkv_bias {
                for (y, b) in [(&mut *bq, b_q), (&mut *kc, b_k), (&mut *vc, b_v)] {
                    for yi in y.chunks_exact_mut(b.len().max(1)) {
                        yi.iter_mut().zip(b.iter()).for_each(|(v, bv)| *v += bv);
                    }
                }
            }
            if let Some((qn, kn)) = wl.qk_norm {
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
            // layers; `kv.rs` says why `window + block - 1` rows are enough). Every state of
            // the pass has the same context and cache layout (checked above).
            let slots = kv::layer_slots(c, ctx, spec, l);
            let words = kv::layer_words(c, ctx, spec, l).ok_or_else(internal)?;
            let mut off = 0; // the sequence's first token in the pass
            for q in seqs.iter_mut() {
                let m = q.tokens.len();
                let st = &mut *q.state;
                let kreg = st
                    .k_cache
                    .get_mut(region..region + words)
                    .ok_or_else(internal)?;
                let vreg = st
                    .v_cache
                    .get_mut(region..region + words)
                    .ok_or_else(internal)?;
                let rows = off * kv_dim..(off + m) * kv_dim;
                let (kq, vq) = (
                    kc.get(rows.clone()).ok_or_else(internal)?,
                    vc.get(rows).ok_or_else(internal)?,
                );
                for (i, (kt, vt)) in kq
                    .chunks_exact(kv_dim)
                    .zip(vq.chunks_exact(kv_dim))
                    .enumerate()
                {
                    let slot = (q.pos + i) % slots;
                    if !kv::store_row(spec.ty, kern, kreg, slot, kt)
                        || !kv::store_row(spec.ty, kern, vreg, slot, vt)
                    {
                        return Err(internal());
                    }
                }
                // The query's Q8_0 blocks for a Q8_0 cache (the activation scratch is free
                // here).
                let qq = kernels::scratch_blocks::<crate::quant::BlockQ8_0>(bqs);
                let qrows = off * qd..(off + m) * qd;
                let (qs, os) = (
                    bq.get(qrows.clone()).ok_or_else(internal)?,
                    batt.get_mut(qrows).ok_or_else(internal)?,
                );
                // Causal attention per token: token i sees positions ..= q.pos + i.
                for (i, (qi, oi)) in qs.chunks_exact(qd).zip(os.chunks_exact_mut(qd)).enumerate() {
                    let pos = q.pos + i;
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
                    if !kv::attend(qi, oi, &at, att, qq) {
                        return Err(internal());
                    }
                }
                off += m;
            }
            region += words;
            obs.tensor("attn_out", Some(l), pos0, n, batt);
            let mut ain = Acts::new(batt, n, bqs, kern, mode);
            linear(seqs, l, 3, &wl.wo, &mut ain, bxb, lt, lo); //                   (n, dim)
            if let Some((post_attn, _)) = wl.post_norms {
                bxb.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_inplace(o, post_attn, c.rms_eps));
            }
            obs.tensor("attn_proj", Some(l), pos0, n, bxb);
            add(bx, bxb);
            obs.tensor("ffn_inp", Some(l), pos0, n, bx);

            // Feed-forward (SwiGLU or GeGLU).
            for (o, xi) in bxb.chunks_exact_mut(dim).zip(bx.chunks_exact(dim)) {
                rmsnorm(o, xi, wl.ffn_norm, c.rms_eps);
            }
            obs.tensor("ffn_norm", Some(l), pos0, n, bxb);
            let bhb = bhb_all.get_mut(..n * fd).ok_or_else(internal)?; //       (n, ffn_dim)
            let bhb2 = bhb2_all.get_mut(..n * fd).ok_or_else(internal)?; //     (n, ffn_dim)
            let mut xin = Acts::new(bxb, n, bqs, kern, mode); //                 gate and up
            linear(seqs, l, 4, &wl.w_gate, &mut xin, bhb, lt, lo); //               (n, ffn_dim)
            linear(seqs, l, 5, &wl.w_up, &mut xin, bhb2, lt, lo); //                (n, ffn_dim)
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
            let mut hin = Acts::new(bhb, n, bqs, kern, mode);
            linear(seqs, l, 6, &wl.w_down, &mut hin, bxb, lt, lo); //               (n, dim)
            if let Some((_, post_ffn)) = wl.post_norms {
                bxb.chunks_exact_mut(dim)
                    .for_each(|o| rmsnorm_inplace(o, post_ffn, c.rms_eps));
            }
            obs.tensor("ffn_out", Some(l), pos0, n, bxb);
            add(bx, bxb);
            obs.tensor("l_out", Some(l), pos0, n, bx);
        }
        for q in seqs.iter_mut() {
            q.state.filled = q.pos + q.tokens.len();
        }
        self.heads(seqs, bx, bxb, bqs, head_buf, obs)
    }

    /// The logits of each sequence that wants them, from the residual of its last token in
    /// `bx`: final norm, then the output head (or the adapter set's head). Consecutive such
    /// sequences with the same head run as one blocked matmul of up to `head_buf.len() /
    /// vocab` columns into `head_buf` (bit-identical to the matvec, as every blocked column);
    /// a lone one runs the matvec straight into its state's logits.
    fn heads(
        &self,
        seqs: &mut [SeqStep<'_, '_>],
        bx: &[f32],
        xn: &mut [f32],
        bqs: &mut [f32],
        head_buf: &mut [f32],
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let c = &self.config;
        let (dim, vocab) = (c.dim, c.vocab);
        if !BLOCKED_PREFILL {
            // Microcontrollers run one sequence of one token: its head is one matvec.
            let (Some(q), Some(xb)) = (seqs.first_mut(), xn.get_mut(..dim)) else {
                return Err(internal());
            };
            if q.logits {
                let x = bx.get(..dim).ok_or_else(internal)?;
                rmsnorm(xb, x, self.output_norm, c.rms_eps);
                obs.tensor("result_norm", None, q.pos, 1, xb);
                let st = &mut *q.state;
                let mut oin = Input::new(xb, bqs, st.kernel(), st.mode);
                matvec_input(
                    q.adapters.head().unwrap_or(&self.output),
                    &mut oin,
                    st.logits,
                );
                if c.arch.final_softcap > 0.0 {
                    let cap = c.arch.final_softcap;
                    st.logits.iter_mut().for_each(|v| *v = softcap(*v, cap));
                }
            }
            return Ok(());
        }
        let cap = (head_buf.len() / vocab.max(1)).min(xn.len() / dim.max(1));
        let head_of = |q: &SeqStep<'_, '_>| -> *const u8 {
            q.adapters
                .head()
                .map_or(core::ptr::null(), |h| h.data().as_ptr())
        };
        let mut j = 0;
        let mut off = 0; // first token of seqs[j] in the pass
        while j < seqs.len() {
            if !seqs[j].logits {
                off += seqs[j].tokens.len();
                j += 1;
                continue;
            }
            // A run of sequences wanting logits with the same head, at most `cap` of them
            // (sequences that want none may sit between them).
            let h = head_of(&seqs[j]);
            let (mut k, mut rows, mut o) = (j, 0usize, off);
            while k < seqs.len() && (rows == 0 || rows < cap) {
                let q = &seqs[k];
                let last = o + q.tokens.len() - 1;
                o += q.tokens.len();
                k += 1;
                if !q.logits {
                    continue;
                }
                if head_of(q) != h {
                    // Leave it for the next run.
                    k -= 1;
                    o -= q.tokens.len();
                    break;
                }
                let x = bx.get(last * dim..(last + 1) * dim).ok_or_else(internal)?; // (dim,)
                let xb = xn
                    .get_mut(rows * dim..(rows + 1) * dim)
                    .ok_or_else(internal)?;
                rmsnorm(xb, x, self.output_norm, c.rms_eps);
                obs.tensor("result_norm", None, q.pos + q.tokens.len() - 1, 1, xb);
                rows += 1;
            }
            let q0 = &seqs[j];
            let (kern, mode) = (q0.state.kernel(), q0.state.mode);
            let head = q0.adapters.head().unwrap_or(&self.output);
            if rows == 1 {
                let st = &mut *seqs[j].state;
                let xb = xn.get(..dim).ok_or_else(internal)?;
                let mut oin = Input::new(xb, bqs, kern, mode);
                matvec_input(head, &mut oin, st.logits); //                          (vocab,)
            } else {
                #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
                {
                    let xb = xn.get(..rows * dim).ok_or_else(internal)?;
                    let out = head_buf.get_mut(..rows * vocab).ok_or_else(internal)?;
                    let mut bin = Batch::new(xb, rows, bqs, kern, mode);
                    matmul_input(head, &mut bin, out); //                      (rows, vocab)
                    let mut r = out.chunks_exact(vocab);
                    for q in seqs[j..k].iter_mut().filter(|q| q.logits) {
                        q.state
                            .logits
                            .copy_from_slice(r.next().ok_or_else(internal)?);
                    }
                }
                #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
                return Err(internal());
            }
            for q in seqs[j..k].iter_mut().filter(|q| q.logits) {
                if c.arch.final_softcap > 0.0 {
                    let cap = c.arch.final_softcap;
                    q.state
                        .logits
                        .iter_mut()
                        .for_each(|v| *v = softcap(*v, cap));
                }
            }
            j = k;
            off = o;
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
    /// `build_lora_mm`), each vector with the adapters of the sequence it belongs to
    /// (`seqs`, whose tokens are the vectors in order). `lt`, `lo`: LoRA scratch (see
    /// [`Adapters::apply_cols`]).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &mut self,
        seqs: &[SeqStep<'_, '_>],
        l: usize,
        k: usize,
        w: &MatRef<'_>,
        y: &mut [f32],
        lt: &mut [f32],
        lo: &mut [f32],
    ) {
        match self {
            Acts::One(x) => {
                let Some(q) = seqs.first() else { return };
                let set = q.adapters;
                // The base matvec prefetches the adapter bytes the `apply` after it reads
                // (`kernels::Side`): they would be cold by then otherwise.
                matvec_input_side(w, x, y, set.side(l, k));
                set.apply(l, k, x, y, lt, lo);
            }
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Acts::Many(x) => {
                // The base weights once for every vector of every sequence.
                matmul_input(w, x, y);
                // Then each adapter group over its own columns (consecutive sequences that
                // share one adapter set object form one group): Punica/S-LoRA's gathered
                // per-group product, A and B read once per group.
                let out = w.rows();
                let (mut c0, mut i) = (0, 0);
                while let Some(q) = seqs.get(i) {
                    let set = q.adapters;
                    let mut c1 = c0;
                    while let Some(r) = seqs.get(i).filter(|r| same_set(r.adapters, set)) {
                        c1 += r.tokens.len();
                        i += 1;
                    }
                    if !set.is_empty() {
                        if let Some(yc) = y.get_mut(c0 * out..c1 * out) {
                            set.apply_cols(l, k, x, c0..c1, yc, lt, lo);
                        }
                    }
                    c0 = c1;
                }
            }
        }
    }
}

/// True if `a` and `b` are the same adapter set object (compared by address).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn same_set(a: &dyn Adapters, b: &dyn Adapters) -> bool {
    core::ptr::addr_eq(a as *const dyn Adapters, b as *const dyn Adapters)
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
    softmax_by(x, kernels::reference::exp_shifted);
}

/// [`softmax`] with the exponentials on `kern` (the same bits on every table).
pub(crate) fn softmax_with(kern: &Kernel, x: &mut [f32]) {
    softmax_by(x, kern.exp_shifted);
}

fn softmax_by(x: &mut [f32], exp_shifted: fn(&mut [f32], f32)) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    exp_shifted(x, max);
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

/// Activations and scratch of one pass over up to `block` tokens, carved from caller memory:
/// a [`State`]'s own (prefill blocks, decode steps) or a [`StepScratch`]'s (multi-sequence
/// steps). The default is empty (a state's scratch while a pass has taken it out).
#[derive(Debug, Default)]
struct Scratch<'s> {
    /// Tokens per pass.
    block: usize,
    /// (ffn_dim,): the LoRA scratch `T = A X` (tokens, rank).
    hb: &'s mut [f32],
    /// (ctx,): one head's attention scores.
    att: &'s mut [f32],
    /// (block, rope_dims): `(cos, sin)` per rotated pair, one per token of the block, filled
    /// once before the layer loop (twice that with a second rope base).
    rope: &'s mut [f32],
    /// (MAX_RANK,): LoRA `A x`.
    lora_tmp: &'s mut [f32],
    /// (max(dim, q_dim, ffn_dim),): LoRA `B (A x)`.
    lora_out: &'s mut [f32],
    /// (block, dim): residuals.
    bx: &'s mut [f32],
    /// (block, dim)
    bxb: &'s mut [f32],
    /// (block, q_dim)
    bq: &'s mut [f32],
    /// (block, q_dim)
    batt: &'s mut [f32],
    /// (block, max(ffn_dim, kv_dim)): FFN hidden; k staging.
    bhb: &'s mut [f32],
    /// (block, max(ffn_dim, kv_dim)): FFN hidden; v staging.
    bhb2: &'s mut [f32],
    /// The block's quantised forms (`kernels::Batch`).
    bqs: &'s mut [f32],
}

impl<'s> Scratch<'s> {
    /// `f32` words of a scratch for `blk` tokens and attention over `ctx` positions.
    fn words(cfg: &Config, ctx: usize, blk: usize) -> Option<usize> {
        let widest = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let parts = [
            cfg.ffn_dim,
            ctx,
            blk.checked_mul(cfg.rope_dims)?
                .checked_mul(1 + cfg.has_second_rope() as usize)?,
            MAX_RANK,
            widest,
            blk.checked_mul(cfg.dim)?,
            blk.checked_mul(cfg.dim)?,
            blk.checked_mul(cfg.q_dim())?,
            blk.checked_mul(cfg.q_dim())?,
            blk.checked_mul(cfg.ffn_dim.max(cfg.kv_dim()))?,
            blk.checked_mul(cfg.ffn_dim.max(cfg.kv_dim()))?,
            act_scratch_f32s(widest.checked_mul(blk)?),
        ];
        parts.iter().try_fold(0usize, |a, &p| a.checked_add(p))
    }

    /// Carve a scratch off the front of `buf`, which holds at least
    /// [`Scratch::words`]`(cfg, ctx, blk)` words (callers check); returns the rest.
    fn carve(cfg: &Config, ctx: usize, block: usize, buf: &'s mut [f32]) -> (Self, &'s mut [f32]) {
        let widest = cfg.dim.max(cfg.q_dim()).max(cfg.ffn_dim);
        let (hb, rest) = buf.split_at_mut(cfg.ffn_dim);
        let (att, rest) = rest.split_at_mut(ctx);
        let (rope, rest) =
            rest.split_at_mut(block * cfg.rope_dims * (1 + cfg.has_second_rope() as usize));
        let (lora_tmp, rest) = rest.split_at_mut(MAX_RANK);
        let (lora_out, rest) = rest.split_at_mut(widest);
        let (bx, rest) = rest.split_at_mut(block * cfg.dim);
        let (bxb, rest) = rest.split_at_mut(block * cfg.dim);
        let (bq, rest) = rest.split_at_mut(block * cfg.q_dim());
        let (batt, rest) = rest.split_at_mut(block * cfg.q_dim());
        let (bhb, rest) = rest.split_at_mut(block * cfg.ffn_dim.max(cfg.kv_dim()));
        let (bhb2, rest) = rest.split_at_mut(block * cfg.ffn_dim.max(cfg.kv_dim()));
        let (bqs, rest) = rest.split_at_mut(act_scratch_f32s(block * widest));
        let w = Scratch {
            block,
            hb,
            att,
            rope,
            lora_tmp,
            lora_out,
            bx,
            bxb,
            bq,
            batt,
            bhb,
            bhb2,
            bqs,
        };
        (w, rest)
    }
}

/// One sequence's part of a multi-sequence step ([`Model::step_many`]): its state (KV cache,
/// logits), the tokens it runs and where, and its adapters.
pub struct SeqStep<'a, 's> {
    /// The sequence's state: its KV cache gets the tokens' K/V rows, its logits the result.
    pub state: &'a mut State<'s>,
    /// Tokens to run: one for a decode step, a chunk of the prompt for a prefill.
    pub tokens: &'a [u32],
    /// Position of the first token (at most `state.len()`, as for [`Model::prefill`]).
    pub pos: usize,
    /// The sequence's adapters (consecutive sequences passing the same object share one
    /// pass over each adapter's A and B).
    pub adapters: &'a dyn Adapters,
    /// Compute the logits of the last token into the state (a prefill chunk that is not the
    /// prompt's last needs none).
    pub logits: bool,
}

/// The activations of a multi-sequence step ([`Model::step_many`]) of up to `tokens` tokens
/// over states of `ctx` positions, with room for the output head of up to `seqs` sequences at
/// once, carved from one caller-provided `&mut [f32]` of [`StepScratch::len_for`] values (a
/// pure function). The states keep only their KV caches and logits busy during such a step.
#[derive(Debug)]
pub struct StepScratch<'s> {
    w: Scratch<'s>,
    ctx: usize,
    head: &'s mut [f32],
}

impl<'s> StepScratch<'s> {
    /// Number of `f32` values a step scratch needs, or `None` if that overflows `usize`.
    pub fn checked_len_for(cfg: &Config, ctx: usize, tokens: usize, seqs: usize) -> Option<usize> {
        Scratch::words(cfg, ctx, tokens)?.checked_add(seqs.checked_mul(cfg.vocab)?)
    }

    /// [`StepScratch::checked_len_for`], saturating.
    pub fn len_for(cfg: &Config, ctx: usize, tokens: usize, seqs: usize) -> usize {
        Self::checked_len_for(cfg, ctx, tokens, seqs).unwrap_or(usize::MAX)
    }

    /// Carve a step scratch for up to `tokens` tokens per step, states of `ctx` positions and
    /// output heads of up to `seqs` sequences per matmul out of `buf`.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidArgument`] if `tokens` is 0, [`ErrorKind::BufferTooSmall`] if
    /// `buf` is shorter than [`StepScratch::len_for`].
    pub fn new(
        cfg: &Config,
        ctx: usize,
        tokens: usize,
        seqs: usize,
        buf: &'s mut [f32],
    ) -> Result<Self> {
        if tokens == 0 {
            return Err(Error::new(ErrorKind::InvalidArgument, "step of 0 tokens"));
        }
        let need = Self::checked_len_for(cfg, ctx, tokens, seqs)
            .ok_or_else(|| Error::new(ErrorKind::BufferTooSmall, "step scratch size overflows"))?;
        if buf.len() < need {
            return Err(
                Error::new(ErrorKind::BufferTooSmall, "step scratch (f32 values)")
                    .detail(buf.len() as u64, need as u64),
            );
        }
        let (w, rest) = Scratch::carve(cfg, ctx, tokens, &mut buf[..need]);
        Ok(StepScratch { w, ctx, head: rest })
    }

    /// Most tokens one step runs.
    pub const fn tokens(&self) -> usize {
        self.w.block
    }
}

/// An owned step scratch buffer of the right size (needs the `alloc` feature).
#[cfg(feature = "alloc")]
pub fn step_scratch_buffer(
    cfg: &Config,
    ctx: usize,
    tokens: usize,
    seqs: usize,
) -> alloc::vec::Vec<f32> {
    alloc::vec![0.0; StepScratch::len_for(cfg, ctx, tokens, seqs).min(isize::MAX as usize / 4)]
}

/// Everything that changes during inference: activations, scratch, KV cache and logits,
/// carved from one caller-provided buffer.
#[derive(Debug)]
pub struct State<'s> {
    cfg: Config,
    ctx: usize,
    filled: usize,
    /// The block row holding the last token run (its residual in `w.bx`).
    last: usize,
    /// Activations and scratch of this state's own passes (prefill blocks, decode steps).
    w: Scratch<'s>,
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
        let parts = [
            Scratch::words(cfg, ctx, spec.block_for(ctx))?, // activations and scratch
            cfg.vocab,                                      // logits
            kv,                                             // k cache
            kv,                                             // v cache
        ];
        parts.iter().try_fold(0usize, |a, &p| a.checked_add(p))
    }

    /// Prompt tokens a state with `ctx` positions runs through the layers together in
    /// [`Model::prefill`] unless its [`CacheSpec::block`] says otherwise: on hosts (x86_64,
    /// aarch64) `min(PREFILL_BLOCK, ctx)` (a small context keeps a small state); elsewhere 1,
    /// since those builds run the prompt one token at a time (no blocked matmul compiled in),
    /// so a bigger block would only hold activations nothing uses.
    pub const fn block_for(ctx: usize) -> usize {
        let b = if BLOCKED_PREFILL { PREFILL_BLOCK } else { 1 };
        if ctx < b {
            ctx
        } else {
            b
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
        let (w, rest) = Scratch::carve(cfg, ctx, spec.block_for(ctx), rest);
        let (logits, rest) = rest.split_at_mut(cfg.vocab);
        let (k_cache, v_cache) = rest.split_at_mut(kv);
        Ok(State {
            cfg: *cfg,
            ctx,
            filled: 0,
            last: 0,
            w,
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
        self.w
            .bx
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

#[cfg(test)]
mod name_tests {
    extern crate std;
    use super::layer_tensor_name_kind;
    use std::format;

    #[test]
    fn layer_tensor_names_match_format() {
        for i in [0usize, 1, 9, 10, 99, 100, 12345, usize::MAX] {
            for (part, kind) in [("attn_q", "weight"), ("ffn_down", "bias"), ("", "")] {
                let mut buf = [0u8; 64];
                let want = format!("blk.{i}.{part}.{kind}");
                assert_eq!(layer_tensor_name_kind(&mut buf, i, part, kind), want);
            }
        }
        // Too long for the buffer: empty, never a truncated name.
        let mut buf = [0u8; 64];
        let long = "x".repeat(60);
        assert_eq!(layer_tensor_name_kind(&mut buf, 3, &long, "weight"), "");
    }
}
