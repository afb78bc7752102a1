//! Llama-family hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::Gguf;

/// Hyper-parameters of a llama-family model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    /// Transformer blocks (`llama.block_count`).
    pub n_layers: usize,
    /// Residual width (`llama.embedding_length`).
    pub dim: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_heads: usize,
    /// Key/value heads, fewer than `n_heads` for grouped-query attention.
    pub n_kv_heads: usize,
    /// Per-head width (`llama.attention.key_length`, default `dim / n_heads`).
    pub head_dim: usize,
    /// Feed-forward hidden width (`llama.feed_forward_length`).
    pub ffn_dim: usize,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
    /// Context length the model was trained for (`llama.context_length`).
    pub ctx_len: usize,
    /// Rope base frequency (`llama.rope.freq_base`, default 10000).
    pub rope_base: f32,
    /// Number of leading dims per head that rope rotates (`llama.rope.dimension_count`).
    pub rope_dims: usize,
    /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub rms_eps: f32,
    /// True if there is no `output.weight` and the head reuses `token_embd.weight`.
    pub tied_output: bool,
}

/// Largest accepted values; they only guard arithmetic, real models are far below.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS_META: usize = 1024;
const MAX_VOCAB: usize = 1 << 22;
const MAX_CTX: usize = 1 << 24;

impl Config {
    /// Width of the key/value projections.
    pub const fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the query projection.
    pub const fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// Read the config of a llama-family model.
    ///
    /// # Errors
    /// [`ErrorKind::UnsupportedArch`] if `general.architecture` is not `llama`;
    /// [`ErrorKind::MissingKey`], [`ErrorKind::WrongType`] or [`ErrorKind::BadValue`] naming
    /// the key for absent or inconsistent hyper-parameters.
    pub fn from_gguf(g: &Gguf<'_>) -> Result<Config> {
        let arch = g.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::new(
                ErrorKind::UnsupportedArch,
                "general.architecture (this build runs llama)",
            )
            .named(arch.as_bytes()));
        }
        let bad = |k: &str| {
            Error::new(ErrorKind::BadValue, "hyper-parameter out of range").named(k.as_bytes())
        };
        let get = |k: &'static str, max: usize| -> Result<usize> {
            let v = g.get_u32(k)? as usize;
            if v == 0 || v > max {
                return Err(bad(k));
            }
            Ok(v)
        };
        let n_layers = get("llama.block_count", MAX_LAYERS_META)?;
        let dim = get("llama.embedding_length", MAX_DIM)?;
        let n_heads = get("llama.attention.head_count", MAX_DIM)?;
        let n_kv_heads = match g.get_u32_opt("llama.attention.head_count_kv")? {
            Some(v) => v as usize,
            None => n_heads,
        };
        if n_kv_heads == 0 || n_kv_heads > n_heads || n_heads % n_kv_heads != 0 {
            return Err(bad("llama.attention.head_count_kv"));
        }
        let head_dim = match g.get_u32_opt("llama.attention.key_length")? {
            Some(v) => v as usize,
            None => {
                if dim % n_heads != 0 {
                    return Err(bad("llama.attention.head_count"));
                }
                dim / n_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > MAX_DIM {
            return Err(bad("llama.attention.key_length"));
        }
        if let Some(v) = g.get_u32_opt("llama.attention.value_length")? {
            if v as usize != head_dim {
                return Err(bad("llama.attention.value_length"));
            }
        }
        let ffn_dim = get("llama.feed_forward_length", MAX_DIM * 8)?;
        let ctx_len = get("llama.context_length", MAX_CTX)?;
        let rope_base = g.get_f32_opt("llama.rope.freq_base")?.unwrap_or(10000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(bad("llama.rope.freq_base"));
        }
        let rope_dims = match g.get_u32_opt("llama.rope.dimension_count")? {
            Some(v) => v as usize,
            None => head_dim,
        };
        if rope_dims == 0 || rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(bad("llama.rope.dimension_count"));
        }
        if let Ok(kind) = g.get_str("llama.rope.scaling.type") {
            if kind != "none" {
                return Err(
                    Error::new(ErrorKind::BadValue, "rope scaling is not supported yet")
                        .named(b"llama.rope.scaling.type"),
                );
            }
        }
        let rms_eps = g.get_f32("llama.attention.layer_norm_rms_epsilon")?;
        if !(0.0..1.0).contains(&rms_eps) {
            return Err(bad("llama.attention.layer_norm_rms_epsilon"));
        }
        let emb = g.tensor("token_embd.weight")?;
        let vocab = usize::try_from(emb.ne[1]).map_err(|_| bad("token_embd.weight"))?;
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(bad("token_embd.weight"));
        }
        if let Some(v) = g.get_u32_opt("llama.vocab_size")? {
            if v as usize != vocab {
                return Err(Error::new(
                    ErrorKind::ShapeMismatch,
                    "llama.vocab_size vs token_embd.weight rows",
                )
                .named(b"llama.vocab_size")
                .detail(v as u64, vocab as u64));
            }
        }
        let tied_output = g.tensor("output.weight").is_err();
        Ok(Config {
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab,
            ctx_len,
            rope_base,
            rope_dims,
            rms_eps,
            tied_output,
        })
    }
}
