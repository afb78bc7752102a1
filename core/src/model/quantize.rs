//! Quantising a whole model file (feature `alloc`): what `edgelora quantize` runs.
//!
//! Every 2-D `*.weight` tensor is dequantised to f32 row by row (F32/F16/BF16 exactly, a
//! quantised input through its oracle, so re-quantising compounds two roundings), quantised to
//! the type the [`Preset`] picks for it with the per-type quantisers
//! ([`QuantType::QUANTIZE`](crate::quant::QuantType::QUANTIZE), byte-identical to ggml's
//! `ggml_quantize_chunk` without an importance matrix), and measured: [`TensorReport::rel_rms`]
//! is `rms(dequantised output - f32 input) / rms(f32 input)`. 1-D tensors (norms, biases) are
//! copied unchanged. Metadata is copied; `general.file_type` and
//! `general.quantization_version` are set as llama.cpp sets them.
//!
//! # Per-tensor types (a documented subset of llama.cpp's `llama_tensor_get_type`)
//!
//! Read from llama.cpp's `src/llama-quant.cpp` for dense (non-MoE, non-Falcon) llama-family
//! models without an importance matrix:
//!
//! * `output.weight`, and `token_embd.weight` when there is no `output.weight` (tied
//!   embeddings): Q6_K, or Q8_0 if the row length is not a multiple of 256 or the preset is
//!   Q8_0.
//! * `Q4_K_M`: base Q4_K; `attn_v` and `ffn_down` of layers where `use_more_bits(i, n)`
//!   (`i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`) get Q6_K; a fused `attn_qkv` gets Q5_K.
//! * `Q5_K_M`: base Q5_K; the same `attn_v`/`ffn_down` layers Q6_K; `attn_qkv` Q6_K.
//! * `Q3_K_M`: base Q3_K; `attn_v` Q5_K in the first two layers, Q4_K after; `ffn_down` Q5_K in
//!   layers `i < n/16`, Q4_K elsewhere (llama.cpp keeps Q3_K there only for Falcon);
//!   `attn_output` and `attn_qkv` Q4_K.
//! * `IQ4_NL`, `IQ4_XS`: the base type; `ffn_down` of layers `i < n/8` Q5_K (llama.cpp's rule
//!   without an importance matrix); `attn_v` Q5_K when `n_head / n_head_kv >= 4`.
//! * `Q6_K`, `Q8_0`, `Q5_0`, `Q5_1`, `Q4_0`, `Q4_1`: the base type everywhere else.
//! * Fallback when the row length is not a multiple of the chosen type's block (llama.cpp's
//!   `tensor_type_fallback`, as llama-cpp-python 0.3.36 writes files): Q2_K, Q3_K -> Q4_0,
//!   Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL; if even 32 does not divide it,
//!   F16.
//!
//! Where llama.cpp counts `attn_v`/`ffn_down` tensors in file order (`i_attention_wv`), this
//! uses the layer number in the name and `n` = the number of such tensors: the same for every
//! file whose layers are stored in order. Not implemented: MoE (`n_expert == 8`) and 70B bumps,
//! Falcon rules, importance matrices, `--pure` and manual overrides.

use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::{Gguf, TensorInfo};
use crate::format::gguf_write::{GgufWriter, OwnedValue};
use crate::kernels::reference::{dequantize_row, quantize_row};
use crate::quant::GgmlType;
use alloc::vec;
use alloc::vec::Vec;

/// A quantisation mix, named as llama.cpp's `llama-quantize` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types, missing_docs)]
pub enum Preset {
    Q4_K_M,
    Q5_K_M,
    Q6_K,
    Q8_0,
    Q5_0,
    Q4_0,
    Q4_1,
    Q5_1,
    Q3_K_M,
    IQ4_NL,
    IQ4_XS,
}

impl Preset {
    /// Every preset, in the order `--help` lists them.
    pub const ALL: [Preset; 11] = [
        Preset::Q4_K_M,
        Preset::Q5_K_M,
        Preset::Q6_K,
        Preset::Q8_0,
        Preset::Q5_0,
        Preset::Q4_0,
        Preset::Q4_1,
        Preset::Q5_1,
        Preset::Q3_K_M,
        Preset::IQ4_NL,
        Preset::IQ4_XS,
    ];

    /// Parse a name, case-insensitively (`q4_k_m`, `Q8_0`).
    pub fn from_name(s: &str) -> Option<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
    }

    /// The llama.cpp name (`Q4_K_M`).
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Q4_K_M => "Q4_K_M",
            Preset::Q5_K_M => "Q5_K_M",
            Preset::Q6_K => "Q6_K",
            Preset::Q8_0 => "Q8_0",
            Preset::Q5_0 => "Q5_0",
            Preset::Q4_0 => "Q4_0",
            Preset::Q4_1 => "Q4_1",
            Preset::Q5_1 => "Q5_1",
            Preset::Q3_K_M => "Q3_K_M",
            Preset::IQ4_NL => "IQ4_NL",
            Preset::IQ4_XS => "IQ4_XS",
        }
    }

    /// llama.cpp's `llama_ftype` value, stored as `general.file_type`.
    pub const fn file_type(self) -> u32 {
        match self {
            Preset::Q4_0 => 2,
            Preset::Q4_1 => 3,
            Preset::Q8_0 => 7,
            Preset::Q5_0 => 8,
            Preset::Q4_K_M => 15,
            Preset::Q5_K_M => 17,
            Preset::Q6_K => 18,
            Preset::Q5_1 => 9,
            Preset::Q3_K_M => 12,
            Preset::IQ4_NL => 25,
            Preset::IQ4_XS => 30,
        }
    }

    /// The type of the tensors no rule singles out.
    pub const fn base_type(self) -> GgmlType {
        match self {
            Preset::Q4_K_M => GgmlType::Q4_K,
            Preset::Q5_K_M => GgmlType::Q5_K,
            Preset::Q6_K => GgmlType::Q6_K,
            Preset::Q8_0 => GgmlType::Q8_0,
            Preset::Q5_0 => GgmlType::Q5_0,
            Preset::Q4_0 => GgmlType::Q4_0,
            Preset::Q4_1 => GgmlType::Q4_1,
            Preset::Q5_1 => GgmlType::Q5_1,
            Preset::Q3_K_M => GgmlType::Q3_K,
            Preset::IQ4_NL => GgmlType::IQ4_NL,
            Preset::IQ4_XS => GgmlType::IQ4_XS,
        }
    }
}

/// What [`quantize_model`] did to one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Position in the file (0-based) and the number of tensors.
    pub index: usize,
    /// Number of tensors in the file.
    pub count: usize,
    /// The input's type.
    pub from: GgmlType,
    /// The output's type (`from` for a tensor copied unchanged).
    pub to: GgmlType,
    /// The preset's choice did not fit the row length, `to` is its fallback.
    pub fallback: bool,
    /// `rms(out - in) / rms(in)` over the whole tensor, `None` for a tensor copied unchanged.
    pub rel_rms: Option<f64>,
}

/// True if llama.cpp's `use_more_bits(i, n)` holds (layers that `_M` mixes give more bits).
pub const fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// llama.cpp's `tensor_type_fallback` for a row of `cols` values: `(type, fell_back)`.
pub fn fallback_type(ty: GgmlType, cols: u64) -> (GgmlType, bool) {
    if cols.is_multiple_of(ty.block_len() as u64) {
        return (ty, false);
    }
    let f = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        t => t,
    };
    if cols.is_multiple_of(f.block_len() as u64) {
        (f, true)
    } else {
        (GgmlType::F16, true)
    }
}

/// Layer index of `blk.N.<what>` if the name has that shape.
fn layer_of(name: &str, what: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    (tail == what).then_some(())?;
    n.parse().ok()
}

/// The per-tensor choice for one file and preset (module docs list the rules).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    preset: Preset,
    /// The file has no `output.weight`: `token_embd.weight` plays its part.
    tied: bool,
    n_attn_v: usize,
    n_ffn_down: usize,
    /// `n_head / n_head_kv` (llama.cpp's `n_gqa()`), 1 if the file does not say.
    n_gqa: u32,
}

impl Plan {
    /// Count what the rules need from `src`.
    pub fn new(src: &Gguf<'_>, preset: Preset) -> Plan {
        let (mut n_attn_v, mut n_ffn_down, mut tied) = (0, 0, true);
        for t in src.tensors() {
            n_attn_v += usize::from(layer_of(t.name, "attn_v.weight").is_some());
            n_ffn_down += usize::from(layer_of(t.name, "ffn_down.weight").is_some());
            tied &= t.name != "output.weight";
        }
        let arch = src
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let key = |k: &str| {
            let mut s = alloc::string::String::from(arch);
            s.push_str(".attention.");
            s.push_str(k);
            src.get_u32_opt(&s).ok().flatten().unwrap_or(1).max(1)
        };
        Plan {
            preset,
            tied,
            n_attn_v,
            n_ffn_down,
            n_gqa: key("head_count") / key("head_count_kv"),
        }
    }

    /// True for the tensors that get quantised: 2-D (or more) `*.weight` tensors.
    pub fn quantises(t: &TensorInfo<'_>) -> bool {
        t.n_dims >= 2 && t.name.ends_with(".weight")
    }

    /// The output type of a tensor `quantises` accepts, after the fallback: `(type, fell_back)`.
    pub fn tensor_type(&self, name: &str, cols: u64) -> (GgmlType, bool) {
        let p = self.preset;
        let mut ty = p.base_type();
        let k_mix = matches!(p, Preset::Q4_K_M | Preset::Q5_K_M);
        if name == "output.weight" || (self.tied && name == "token_embd.weight") {
            ty = if !cols.is_multiple_of(256) || ty == GgmlType::Q8_0 {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
        } else if let Some(i) = layer_of(name, "attn_v.weight") {
            ty = match p {
                Preset::Q3_K_M if i < 2 => GgmlType::Q5_K,
                Preset::Q3_K_M => GgmlType::Q4_K,
                Preset::IQ4_NL | Preset::IQ4_XS if self.n_gqa >= 4 => GgmlType::Q5_K,
                _ if k_mix && use_more_bits(i, self.n_attn_v) => GgmlType::Q6_K,
                _ => ty,
            };
        } else if let Some(i) = layer_of(name, "ffn_down.weight") {
            let n = self.n_ffn_down;
            ty = match p {
                Preset::Q3_K_M if i < n / 16 => GgmlType::Q5_K,
                Preset::Q3_K_M => GgmlType::Q4_K,
                Preset::IQ4_NL | Preset::IQ4_XS if i < n / 8 => GgmlType::Q5_K,
                _ if k_mix && use_more_bits(i, n) => GgmlType::Q6_K,
                _ => ty,
            };
        } else if layer_of(name, "attn_output.weight").is_some() {
            if p == Preset::Q3_K_M {
                ty = GgmlType::Q4_K;
            }
        } else if layer_of(name, "attn_qkv.weight").is_some() {
            ty = match p {
                Preset::Q3_K_M => GgmlType::Q4_K,
                Preset::Q4_K_M => GgmlType::Q5_K,
                Preset::Q5_K_M => GgmlType::Q6_K,
                _ => ty,
            };
        }
        fallback_type(ty, cols)
    }
}

/// Quantise every weight of `src` with `preset` and return the new GGUF's bytes; `progress` is
/// called once per tensor, after it is done, in file order.
///
/// # Errors
/// [`ErrorKind::MissingKey`] if `src` has no `general.architecture` and
/// [`ErrorKind::MissingTensor`] if it has no `token_embd.weight` (not a model);
/// [`ErrorKind::UnsupportedTensorType`] for an input type this build cannot dequantise;
/// [`ErrorKind::BadDims`] for a tensor whose size does not match its dims.
pub fn quantize_model(
    src: &Gguf<'_>,
    preset: Preset,
    mut progress: impl FnMut(&TensorReport<'_>),
) -> Result<Vec<u8>> {
    if src.get("general.architecture").is_none() {
        return Err(Error::new(
            ErrorKind::MissingKey,
            "general.architecture (not a model file)",
        ));
    }
    src.tensor("token_embd.weight")?;
    let plan = Plan::new(src, preset);
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.set(k, OwnedValue::from_value(&v));
    }
    w.set("general.file_type", OwnedValue::U32(preset.file_type()));
    w.set("general.quantization_version", OwnedValue::U32(2));
    let count = src.tensors().count();
    for (index, t) in src.tensors().enumerate() {
        let mut rep = TensorReport {
            name: t.name,
            index,
            count,
            from: t.ty,
            to: t.ty,
            fallback: false,
            rel_rms: None,
        };
        if !Plan::quantises(&t) {
            w.add_tensor(t.name, t.ty, t.dims(), t.data.to_vec())?;
            progress(&rep);
            continue;
        }
        let cols = t.row_len();
        let (to, fallback) = plan.tensor_type(t.name, cols);
        let (data, rel) = quantize_tensor(&t, to)?;
        w.add_tensor(t.name, to, t.dims(), data)?;
        rep.to = to;
        rep.fallback = fallback;
        rep.rel_rms = Some(rel);
        progress(&rep);
    }
    Ok(w.to_bytes())
}

/// Quantise one tensor to `to`; returns its bytes and `rms(out - in) / rms(in)`.
fn quantize_tensor(t: &TensorInfo<'_>, to: GgmlType) -> Result<(Vec<u8>, f64)> {
    let named = |e: Error| e.named(t.name.as_bytes());
    let bad = |what| named(Error::new(ErrorKind::BadDims, what));
    let cols = usize::try_from(t.row_len()).map_err(|_| bad("row length"))?;
    let rows = usize::try_from(t.n_rows()).map_err(|_| bad("rows"))?;
    let in_rb =
        t.ty.row_bytes(cols as u64)
            .ok_or_else(|| bad("input row length"))? as usize;
    let out_rb = to
        .row_bytes(cols as u64)
        .ok_or_else(|| bad("output row length"))? as usize;
    if in_rb.checked_mul(rows) != Some(t.data.len()) {
        return Err(bad("tensor byte length"));
    }
    let total = out_rb.checked_mul(rows).ok_or_else(|| bad("output size"))?;
    let mut out = vec![0u8; total];
    let mut x = vec![0f32; cols];
    let mut y = vec![0f32; cols];
    let (mut err2, mut sum2) = (0f64, 0f64);
    for (src, dst) in t.data.chunks_exact(in_rb).zip(out.chunks_exact_mut(out_rb)) {
        if !dequantize_row(t.ty, src, &mut x) {
            return Err(named(Error::new(
                ErrorKind::UnsupportedTensorType,
                "input type cannot be dequantised",
            )));
        }
        if !quantize_row(to, &x, dst) || !dequantize_row(to, dst, &mut y) {
            return Err(named(Error::new(
                ErrorKind::UnsupportedTensorType,
                "output type has no quantiser",
            )));
        }
        for (&a, &b) in x.iter().zip(&y) {
            err2 += (b as f64 - a as f64) * (b as f64 - a as f64);
            sum2 += a as f64 * a as f64;
        }
    }
    let rel = if sum2 > 0.0 {
        libm::sqrt(err2 / sum2)
    } else {
        0.0
    };
    Ok((out, rel))
}
