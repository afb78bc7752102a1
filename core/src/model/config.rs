//! Hyper-parameters and the architecture description, read from GGUF metadata (`{arch}.*`
//! keys, with `arch` = `general.architecture`).
//!
//! An architecture is a row of settings ([`Arch::for_name`]): where the norms sit, which FFN
//! activation, q/k/v biases, QK-norm, rope style and the local/global attention pattern,
//! embedding scaling and soft-caps. The one forward body in `model/mod.rs` reads these
//! settings; adding an architecture that only recombines them is one new row here (and its
//! optional tensors load by name), one that needs a new op adds that op to the body behind a
//! new setting.
//!
//! Facts per architecture (llama.cpp's `llama-model.cpp` hparams and `src/models/*.cpp`
//! graphs, checked 2026-12-06):
//! - `llama`: pre-norm, SwiGLU, normal rope (llama.cpp's converter permutes q/k rows for it).
//! - `qwen2`: as llama with q/k/v biases and NEOX rope.
//! - `qwen3`: as llama with per-head QK RMSNorm (before rope) and NEOX rope.
//! - `gemma3`: embeddings scaled by `sqrt(dim)`; pre- and post-norms around attention and FFN
//!   ("sandwich"); GELU-tanh GeGLU; per-head QK RMSNorm; NEOX rope; five sliding-window
//!   layers (window `gemma3.attention.sliding_window`, rope base 10000) then one global layer
//!   (rope base `gemma3.rope.freq_base`); query scale `1/sqrt(head_dim)` (`1/sqrt(dim/n_heads)`
//!   for the 62-layer 27B); tied output; RMSNorm weights stored with Gemma's `+1` already added
//!   by the converter.
//! - `gemma2`: as gemma3 without QK-norm, alternating sliding/global layers with one rope base,
//!   query scale `1/sqrt(head_dim)` (`1/sqrt(dim/n_heads)` for the 46-layer 27B), attention
//!   logit soft-cap (`attn_logit_softcapping`, 50) and final logit soft-cap (30).
//!
//! Gemma's `query_pre_attn_scalar` has no GGUF key: llama.cpp's converter does not write it and
//! its loader derives the scale from the model size as above (`f_attention_scale` in
//! `src/models/gemma2.cpp`, `gemma3.cpp`), so edgelora does the same
//! (`tests/tests/arch_models.rs` checks a file carrying a stray key against llama.cpp).

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::Gguf;

/// Feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ffn {
    /// `down(silu(gate x) * up x)`.
    SwiGlu,
    /// `down(gelu_tanh(gate x) * up x)`.
    GeGluTanh,
}

/// How rope pairs a head's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)` (llama GGUFs, whose converter permuted q/k for it).
    Normal,
    /// Split halves `(i, i + rope_dims / 2)` (GPT-NeoX; Qwen, Gemma).
    Neox,
}

/// The architecture description: every setting the forward body branches on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arch {
    /// `general.architecture` as one of the known names.
    pub name: &'static str,
    /// FFN activation.
    pub ffn: Ffn,
    /// Rope pairing.
    pub rope: RopeStyle,
    /// RMSNorm after the attention output and after the FFN output, before each residual add
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// Per-head RMSNorm of q and k before rope (`attn_q_norm`, `attn_k_norm`).
    pub qk_norm: bool,
    /// q/k/v projections carry biases (`attn_q.bias`, ...).
    pub qkv_bias: bool,
    /// Token embeddings are multiplied by `sqrt(dim)`.
    pub embed_scale: bool,
    /// Sliding-window layers: every `swa_period`-th layer (the last of each group) is global,
    /// the others see the last `swa_window` positions. 0: every layer is global.
    pub swa_period: usize,
    /// Window of the sliding layers, in positions (including the current one).
    pub swa_window: usize,
    /// Rope base of the sliding layers (the global ones use [`Config::rope_base`]).
    pub rope_base_swa: f32,
    /// Multiplier of q before `q . k`: `1/sqrt(head_dim)`, or `1/sqrt(dim / n_heads)` for a
    /// model with [`Arch::wide_q_scale_layers`] layers.
    pub q_scale: f32,
    /// Layer count of the model size whose q scale is `1/sqrt(dim / n_heads)` (Gemma 27B:
    /// `query_pre_attn_scalar = dim / n_heads`; llama.cpp recognises it by its layer count).
    /// 0: none.
    pub wide_q_scale_layers: usize,
    /// Reads the soft-cap keys `{arch}.attn_logit_softcapping` / `final_logit_softcapping`
    /// (gemma2; llama.cpp's sliding-window gemma3 graph applies none, so gemma3 ignores them).
    pub softcaps: bool,
    /// Attention logit soft-cap `c * tanh(s / c)` (0: none).
    pub attn_softcap: f32,
    /// Final logit soft-cap (0: none).
    pub final_softcap: f32,
}

/// The settings every architecture starts from (llama's): each row of `architectures!`
/// changes only what differs.
const LLAMA: Arch = Arch {
    name: "llama",
    ffn: Ffn::SwiGlu,
    rope: RopeStyle::Normal,
    post_norms: false,
    qk_norm: false,
    qkv_bias: false,
    embed_scale: false,
    swa_period: 0,
    swa_window: 0,
    rope_base_swa: 0.0,
    q_scale: 0.0,
    wide_q_scale_layers: 0,
    softcaps: false,
    attn_softcap: 0.0,
    final_softcap: 0.0,
};

/// The architecture table: one row per `general.architecture` this build runs. It defines
/// [`ARCHITECTURES`], the lookup behind [`Arch::for_name`] and the list that an unsupported
/// file's error message names, so adding an architecture that only recombines settings is one
/// row here and nothing else.
macro_rules! architectures {
    ($($name:literal => { $($field:ident: $value:expr),* $(,)? }),* $(,)?) => {
        /// Architectures this build runs.
        pub const ARCHITECTURES: &[&str] = &[$($name),*];

        /// The error context of an unsupported `general.architecture`.
        const UNSUPPORTED: &str =
            concat!("general.architecture (this build runs:", $(" ", $name,)* ")");

        fn lookup(name: &str) -> Option<Arch> {
            match name {
                $($name => Some(Arch { name: $name, $($field: $value,)* ..LLAMA }),)*
                _ => None,
            }
        }
    };
}

architectures! {
    "llama" => {},
    "qwen2" => { rope: RopeStyle::Neox, qkv_bias: true },
    "qwen3" => { rope: RopeStyle::Neox, qk_norm: true },
    "gemma3" => {
        ffn: Ffn::GeGluTanh,
        rope: RopeStyle::Neox,
        post_norms: true,
        qk_norm: true,
        embed_scale: true,
        swa_period: 6,
        rope_base_swa: 10000.0,
        wide_q_scale_layers: 62,
    },
    "gemma2" => {
        ffn: Ffn::GeGluTanh,
        rope: RopeStyle::Neox,
        post_norms: true,
        embed_scale: true,
        swa_period: 2,
        wide_q_scale_layers: 46,
        softcaps: true,
    },
}

impl Arch {
    /// The fixed settings of architecture `name` (the per-file ones are filled in by
    /// [`Config::from_gguf`]), or `None` if this build does not run it.
    pub fn for_name(name: &str) -> Option<Arch> {
        lookup(name)
    }

    /// True if layer `l` attends through a sliding window.
    pub const fn is_swa(&self, l: usize) -> bool {
        self.swa_period > 0 && self.swa_window > 0 && !(l + 1).is_multiple_of(self.swa_period)
    }
}

/// Hyper-parameters of a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// The architecture description.
    pub arch: Arch,
    /// Transformer blocks (`{arch}.block_count`).
    pub n_layers: usize,
    /// Residual width (`{arch}.embedding_length`).
    pub dim: usize,
    /// Query heads (`{arch}.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads, fewer than `n_heads` for grouped-query attention.
    pub n_kv_heads: usize,
    /// Per-head width (`{arch}.attention.key_length`, default `dim / n_heads`).
    pub head_dim: usize,
    /// Feed-forward hidden width (`{arch}.feed_forward_length`).
    pub ffn_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
    /// Context length the model was trained for (`{arch}.context_length`).
    pub ctx_len: usize,
    /// Rope base frequency (`{arch}.rope.freq_base`, default 10000).
    pub rope_base: f32,
    /// Multiplier of every rope angle: `1 / rope.scaling.factor` for linear scaling, else 1.
    pub rope_freq_scale: f32,
    /// Number of leading dims per head that rope rotates (`{arch}.rope.dimension_count`).
    pub rope_dims: usize,
    /// RMSNorm epsilon (`{arch}.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// True if there is no `output.weight` and the head reuses `token_embd.weight`.
    pub tied_output: bool,
}

/// Largest accepted values; they only guard arithmetic, real models are far below.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS_META: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CTX: usize = 1 << 24;

/// `{arch}.{suffix}` built on the stack (no allocator).
struct Key {
    buf: [u8; 96],
    len: usize,
}

impl Key {
    fn new(arch: &str, suffix: &str) -> Key {
        let mut k = Key {
            buf: [0; 96],
            len: 0,
        };
        for part in [arch.as_bytes(), b".", suffix.as_bytes()] {
            let end = (k.len + part.len()).min(k.buf.len());
            let n = end - k.len;
            k.buf[k.len..end].copy_from_slice(&part[..n]);
            k.len = end;
        }
        k
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Config {
    /// Width of the key/value projections.
    pub const fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the query projection.
    pub const fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Rope base of layer `l` (sliding-window layers may have their own).
    pub fn rope_base_for(&self, l: usize) -> f32 {
        if self.arch.is_swa(l) && self.arch.rope_base_swa > 0.0 {
            self.arch.rope_base_swa
        } else {
            self.rope_base
        }
    }

    /// True if some layer uses a rope base other than [`Config::rope_base`] (the state then
    /// keeps a second rope table per position).
    pub fn has_second_rope(&self) -> bool {
        self.arch.swa_period > 0
            && self.arch.swa_window > 0
            && self.arch.rope_base_swa > 0.0
            && self.arch.rope_base_swa != self.rope_base
    }

    /// Read the config of a model of an architecture in [`ARCHITECTURES`].
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedArch`] for another `general.architecture`;
    /// [`ErrorKind::MissingKey`], [`ErrorKind::WrongType`] or [`ErrorKind::BadValue`] naming
    /// the key for absent or inconsistent hyper-parameters.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Config> {
        let name = g.get_str("general.architecture")?;
        let Some(mut arch) = Arch::for_name(name) else {
            return Err(Error::new(ErrorKind::UnsupportedArch, UNSUPPORTED).named(name.as_bytes()));
        };
        if arch.ffn == Ffn::GeGluTanh && !cfg!(feature = "arch-gemma") {
            return Err(Error::new(
                ErrorKind::UnsupportedArch,
                "general.architecture (needs cargo feature arch-gemma)",
            )
            .named(name.as_bytes()));
        }
        let arch_name = arch.name;
        let key = |s: &str| Key::new(arch_name, s);
        let bad = |k: &Key| {
            Error::new(ErrorKind::BadValue, "hyper-parameter out of range")
                .named(k.as_str().as_bytes())
        };
        let get = |s: &str, max: usize| -> Result<usize> {
            let k = key(s);
            let v = g.get_u32(k.as_str())? as usize;
            if v == 0 || v > max {
                return Err(bad(&k));
            }
            Ok(v)
        };
        let n_layers = get("block_count", MAX_LAYERS_META)?;
        let dim = get("embedding_length", MAX_DIM)?;
        let n_heads = get("attention.head_count", MAX_DIM)?;
        let n_kv_heads = match g.get_u32_opt(key("attention.head_count_kv").as_str())? {
            Some(v) => v as usize,
            None => n_heads,
        };
        if n_kv_heads == 0 || n_kv_heads > n_heads || n_heads % n_kv_heads != 0 {
            return Err(bad(&key("attention.head_count_kv")));
        }
        let head_dim = match g.get_u32_opt(key("attention.key_length").as_str())? {
            Some(v) => v as usize,
            None => {
                if dim % n_heads != 0 {
                    return Err(bad(&key("attention.head_count")));
                }
                dim / n_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_DIM {
            return Err(bad(&key("attention.key_length")));
        }
        if let Some(v) = g.get_u32_opt(key("attention.value_length").as_str())? {
            if v as usize != head_dim {
                return Err(bad(&key("attention.value_length")));
            }
        }
        let ffn_dim = get("feed_forward_length", MAX_DIM * 8)?;
        let ctx_len = get("context_length", MAX_CTX)?;
        let rope_base = g
            .get_f32_opt(key("rope.freq_base").as_str())?
            .unwrap_or(10000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(bad(&key("rope.freq_base")));
        }
        let rope_dims = match g.get_u32_opt(key("rope.dimension_count").as_str())? {
            Some(v) => v as usize,
            None => head_dim,
        };
        if rope_dims == 0 || rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad(&key("rope.dimension_count")));
        }
        // Rope scaling: `linear` divides every angle by `rope.scaling.factor`; Llama 3.x's
        // frequency-dependent scaling comes as a `rope_freqs.weight` tensor instead (loaded by
        // the model), with no scaling type or `none`. With no type key, llama.cpp's loader
        // takes `linear` and applies `rope.scaling.factor` (or the older `rope.scale_linear`)
        // where the file has one (0 or absent: none); edgelora does the same
        // (tests/tests/arch_models.rs: a copy of tiny-llama-linear.gguf without its type key
        // gets llama.cpp's logits, bit for bit those of the original).
        let mut rope_freq_scale = 1.0f32;
        let k = key("rope.scaling.type");
        if g.get_str(k.as_str()).is_err() {
            let f = match g.get_f32_opt(key("rope.scaling.factor").as_str())? {
                Some(f) => Some(f),
                None => g.get_f32_opt(key("rope.scale_linear").as_str())?,
            };
            match f {
                None | Some(0.0) => {}
                Some(f) if f.is_finite() && f > 0.0 => rope_freq_scale = 1.0 / f,
                Some(_) => return Err(bad(&key("rope.scaling.factor"))),
            }
        }
        if let Ok(kind) = g.get_str(k.as_str()) {
            match kind {
                "none" => {}
                "linear" => {
                    let fk = key("rope.scaling.factor");
                    let f = g.get_f32(fk.as_str())?;
                    if !(f.is_finite() && f > 0.0) {
                        return Err(bad(&fk));
                    }
                    rope_freq_scale = 1.0 / f;
                }
                _ => {
                    return Err(Error::new(
                        ErrorKind::BadValue,
                        "rope scaling type not supported (edgelora runs none, linear, and Llama 3's rope_freqs)",
                    )
                    .named(k.as_str().as_bytes()))
                }
            }
        }
        let rms_eps = g.get_f32(key("attention.layer_norm_rms_epsilon").as_str())?;
        if !(0.0..1.0).contains(&rms_eps) {
            return Err(bad(&key("attention.layer_norm_rms_epsilon")));
        }
        // Per-file architecture settings.
        if arch.swa_period > 0 {
            let k = key("attention.sliding_window");
            arch.swa_window = match g.get_u32_opt(k.as_str())? {
                Some(v) if v > 0 && (v as usize) <= MAX_CTX => v as usize,
                Some(_) => return Err(bad(&k)),
                None => 0,
            };
        }
        // As llama.cpp's `f_attention_scale` (integer division there too).
        arch.q_scale = if arch.wide_q_scale_layers == n_layers {
            1.0 / libm::sqrtf((dim / n_heads) as f32)
        } else {
            1.0 / libm::sqrtf(head_dim as f32)
        };
        if arch.softcaps {
            for (suffix, slot) in [
                ("attn_logit_softcapping", &mut arch.attn_softcap),
                ("final_logit_softcapping", &mut arch.final_softcap),
            ] {
                let k = key(suffix);
                if let Some(v) = g.get_f32_opt(k.as_str())? {
                    if !(v.is_finite() && v >= 0.0) {
                        return Err(bad(&k));
                    }
                    *slot = v;
                }
            }
        }
        let emb = g.tensor("token_embd.weight")?;
        let vocab = usize::try_from(emb.ne[1]).map_err(|_| bad(&key("vocab_size")))?;
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(
                Error::new(ErrorKind::BadValue, "vocabulary size").named(b"token_embd.weight")
            );
        }
        let k = key("vocab_size");
        if let Some(v) = g.get_u32_opt(k.as_str())? {
            if v as usize != vocab {
                return Err(Error::new(
                    ErrorKind::ShapeMismatch,
                    "{arch}.vocab_size vs token_embd.weight rows",
                )
                .named(k.as_str().as_bytes())
                .detail(v as u64, vocab as u64));
            }
        }
        let tied_output = g.tensor("output.weight").is_err();
        Ok(Config {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab,
            ctx_len,
            rope_base,
            rope_freq_scale,
            rope_dims,
            rms_eps,
            tied_output,
        })
    }
}
