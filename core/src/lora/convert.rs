//! PEFT -> GGUF LoRA converter (feature `std`).
//!
//! Reads `adapter_config.json` and `adapter_model.safetensors` as PEFT writes them and produces
//! an adapter in llama.cpp's GGUF LoRA layout that both edgelora and llama.cpp load:
//! - module scale `s = alpha / r`, or `alpha / sqrt(r)` with `use_rslora`, with `rank_pattern`
//!   and `alpha_pattern` overriding per module (first key `k` for which the module name is `k`
//!   or ends in `.k`; keys using regex syntax are refused rather than guessed);
//! - that scale is folded into B so the file holds one `adapter.lora.alpha` and the runtime
//!   scale `alpha / r` is right for every module (llama.cpp's converter ignores rsLoRA and
//!   per-module alpha; files from this converter do not depend on that);
//! - `fan_in_fan_out` transposes A and B back to PyTorch Linear layout;
//! - HF module names `model.layers.N.{self_attn.q/k/v/o_proj, mlp.gate/up/down_proj}`, the
//!   same for llama, Qwen2, Qwen3 and Gemma 2/3 (nothing else is architecture-specific: biases
//!   and norms belong to the base, a tied head is the base's `token_embd.weight`);
//! - for architectures with normal (adjacent-pair) rope, i.e. llama, the rows of B (and DoRA's
//!   magnitude) for q_proj and k_proj get llama.cpp's rope permutation, as the base's
//!   attn_q/attn_k rows did; NEOX-rope architectures (Qwen2, Qwen3, Gemma) are converted by
//!   llama.cpp without it, so their rows stay as HF has them;
//! - the base fingerprints ([`super::base_fingerprint`] of its bytes and
//!   [`super::base_shape_fingerprint`] of its tensor names and dims), rank and task name are
//!   recorded, so the adapter binds to that base and to re-quantised copies of it;
//! - DoRA (`use_dora`): the per-row factor `m / ||W + s B A||` is computed here against the
//!   exact quantised base and stored as `<target>.dora_scale` (F32), so a device applies DoRA
//!   with one multiply per output and no extra memory (the fingerprint ties it to that base;
//!   such files are edgelora-only, llama.cpp does not know DoRA);
//! - `modules_to_save = ["lm_head"]`: the saved head becomes a replacement `output.weight`.
//!
//! Anything it cannot represent is refused with an error naming the field or tensor: LoRA on
//! the embeddings or on `lm_head`, LoRA biases and trained base biases (`bias`, `lora_bias`),
//! other `modules_to_save`, and `init_lora_weights` methods that rewrite the base (PiSSA,
//! OLoRA, LoftQ, CorDA, EVA).

use super::{base_fingerprint, base_shape_fingerprint, FINGERPRINT_KEY, SHAPE_FINGERPRINT_KEY};
use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::Gguf;
use crate::format::gguf_write::{GgufWriter, OwnedValue};
use crate::format::safetensors::SafeTensors;
use crate::kernels::reference;
use crate::model::{Config, Model, RopeStyle, LINEAR_NAMES};
use crate::quant::{self, BlockQ8_0, GgmlType};
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

/// HF module names in [`LINEAR_NAMES`] order.
pub const HF_LINEARS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Converter options.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Storage type for A and B: F32, F16 or Q8_0 (B falls back to F16 when its rows, of
    /// length r, are not a whole number of Q8_0 blocks).
    pub dtype: GgmlType,
    /// Task name recorded as `adapter.edgelora.task` (default: from the config, if any).
    pub task: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            dtype: GgmlType::F16,
            task: None,
        }
    }
}

/// What the converter did.
#[derive(Clone, Debug, Default)]
pub struct ConvertReport {
    /// `(gguf target, rank, effective PEFT scale)` per pair.
    pub pairs: Vec<(String, usize, f32)>,
    /// The alpha written to the file.
    pub alpha: f32,
    /// Notes for the user (type fallbacks and the like).
    pub notes: Vec<String>,
}

fn refuse(what: &'static str, field: &str) -> Error {
    Error::new(ErrorKind::BadValue, what).named(field.as_bytes())
}

/// Look up a per-module override: first key equal to the module name or a dotted suffix of it.
fn pattern_lookup<'j>(pat: Option<&'j J>, module: &str, field: &str) -> Result<Option<&'j J>> {
    let Some(obj) = pat.and_then(|p| p.as_object()) else {
        return Ok(None);
    };
    for (k, v) in obj {
        if !k
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            return Err(refuse(
                "pattern key uses regex syntax this converter does not evaluate",
                field,
            ));
        }
        if module == k || module.ends_with(&["." as &str, k].concat()) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// Convert a PEFT adapter for `base` (any architecture edgelora runs: llama, Qwen2, Qwen3,
/// Gemma 2, Gemma 3).
///
/// # Errors
/// Parse errors of either file; [`ErrorKind::BadValue`] naming the config field or tensor for
/// anything not representable; [`ErrorKind::MissingTensor`] / [`ErrorKind::ShapeMismatch`]
/// naming the module when the adapter does not fit the base.
pub fn convert_peft(
    config_json: &[u8],
    safetensors: &[u8],
    base: &Gguf<'_>,
    opts: &ConvertOptions,
) -> Result<(Vec<u8>, ConvertReport)> {
    convert_peft_with_progress(config_json, safetensors, base, opts, &mut |_, _| {})
}

/// [`convert_peft`], calling `progress(done, total)` after each module is converted (for a
/// progress bar: DoRA modules dequantise the base rows, which takes seconds on larger bases).
///
/// # Errors
/// As [`convert_peft`].
pub fn convert_peft_with_progress(
    config_json: &[u8],
    safetensors: &[u8],
    base: &Gguf<'_>,
    opts: &ConvertOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Vec<u8>, ConvertReport)> {
    let cfg: J = serde_json::from_slice(config_json).map_err(|_| {
        refuse(
            "adapter_config.json is not valid JSON",
            "adapter_config.json",
        )
    })?;
    let get = |k: &str| cfg.get(k).filter(|v| !v.is_null());
    if let Some(t) = get("peft_type").and_then(|v| v.as_str()) {
        if t != "LORA" {
            return Err(refuse("only PEFT LoRA adapters are supported", "peft_type"));
        }
    }
    let r_default = get("r")
        .and_then(|v| v.as_u64())
        .ok_or_else(|| refuse("missing or invalid", "r"))? as usize;
    let alpha_default = get("lora_alpha")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| refuse("missing or invalid", "lora_alpha"))? as f32;
    let rslora = get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
    let fifo = get("fan_in_fan_out")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let dora = get("use_dora").and_then(|v| v.as_bool()).unwrap_or(false);
    if let Some(b) = get("bias").and_then(|v| v.as_str()) {
        if b != "none" {
            return Err(refuse(
                "LoRA biases cannot be represented (bias must be \"none\")",
                "bias",
            ));
        }
    }
    if get("lora_bias").and_then(|v| v.as_bool()).unwrap_or(false) {
        return Err(refuse("LoRA biases cannot be represented", "lora_bias"));
    }
    if let Some(m) = get("modules_to_save").and_then(|v| v.as_array()) {
        if m.iter().any(|x| x.as_str() != Some("lm_head")) {
            return Err(refuse(
                "modules_to_save: only lm_head (a replacement output head) can be represented",
                "modules_to_save",
            ));
        }
    }
    if let Some(init) = get("init_lora_weights").and_then(|v| v.as_str()) {
        let lower = init.to_ascii_lowercase();
        if ["pissa", "olora", "loftq", "corda", "eva"]
            .iter()
            .any(|m| lower.starts_with(m))
        {
            return Err(refuse(
                "this init rewrites the base weights; the adapter alone cannot reproduce it",
                "init_lora_weights",
            ));
        }
    }
    // Options that change what the adapter computes in ways a (target, A, B) file cannot hold.
    for (field, what) in [
        (
            "trainable_token_indices",
            "trainable embedding rows cannot be represented",
        ),
        (
            "layer_replication",
            "layer replication changes the model's structure",
        ),
        (
            "alora_invocation_tokens",
            "activated LoRA (aLoRA) is not supported",
        ),
        (
            "target_parameters",
            "LoRA on raw parameters is not supported",
        ),
    ] {
        if get(field).is_some_and(|v| {
            !(v.as_array().is_some_and(|a| a.is_empty())
                || v.as_object().is_some_and(|o| o.is_empty()))
        }) {
            return Err(refuse(what, field));
        }
    }
    for field in ["use_qalora", "use_bdlora"] {
        if get(field).and_then(|v| v.as_bool()).unwrap_or(false) {
            return Err(refuse("this LoRA variant is not supported", field));
        }
    }
    let st = SafeTensors::parse(safetensors)?;
    let model: std::boxed::Box<Model<'_, 128>> = std::boxed::Box::new(Model::from_gguf(base)?);
    let mc: Config = *model.config();

    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        OwnedValue::Str(base.get_str("general.architecture")?.to_string()),
    );
    w.set("general.type", OwnedValue::Str("adapter".into()));
    w.set("adapter.type", OwnedValue::Str("lora".into()));
    let alpha_g = if alpha_default != 0.0 {
        alpha_default
    } else {
        1.0
    };
    w.set("adapter.lora.alpha", OwnedValue::F32(alpha_g));
    w.set(FINGERPRINT_KEY, OwnedValue::U64(base_fingerprint(base)));
    w.set(
        SHAPE_FINGERPRINT_KEY,
        OwnedValue::U64(base_shape_fingerprint(base)),
    );
    let task = opts.task.clone().or_else(|| {
        get("task_name")
            .and_then(|v| v.as_str())
            .map(|s| s.to_string())
    });
    if let Some(t) = &task {
        w.set("adapter.edgelora.task", OwnedValue::Str(t.clone()));
    }
    let mut report = ConvertReport {
        alpha: alpha_g,
        ..Default::default()
    };

    // Group tensors by module: module name -> (A, B, DoRA magnitude).
    // Module name -> indices of (lora_A, lora_B, DoRA magnitude) in the safetensors list.
    type Parts = (Option<usize>, Option<usize>, Option<usize>);
    let mut mods: BTreeMap<String, Parts> = BTreeMap::new();
    let mut head = None;
    for (i, t) in st.tensors.iter().enumerate() {
        let n = t.name.as_str();
        // Errors name the tensor without PEFT's `base_model.model.` prefix: the rest fits an
        // error's name (48 bytes) and says which module it is.
        let core_name = n.strip_prefix("base_model.model.").unwrap_or(n);
        if core_name == "lm_head.weight" || core_name == "lm_head.modules_to_save.default.weight" {
            head = Some(i);
            continue;
        }
        if n.contains("lora_embedding") || core_name.contains("embed_tokens") {
            return Err(refuse(
                "LoRA on the token embeddings cannot be represented (with tied embeddings, as in \
                 Gemma and small Qwen2 models, it would also change the output head): target \
                 the decoder linears only",
                core_name,
            ));
        }
        if core_name.starts_with("lm_head.") {
            return Err(refuse(
                "LoRA on lm_head (the output head; token_embd.weight when embeddings are tied) \
                 cannot be represented: target the decoder linears, or train the head with \
                 modules_to_save=[\"lm_head\"] (stored as a replacement output.weight)",
                core_name,
            ));
        }
        if core_name.ends_with(".bias") {
            return Err(if core_name.contains(".lora_") {
                refuse(
                    "LoRA bias (lora_bias) cannot be represented: the adapter format has A and B \
                     only; train with lora_bias=false",
                    core_name,
                )
            } else {
                refuse(
                    "trained base bias cannot be represented (bias=\"all\"/\"lora_only\"); \
                     the base's own biases (Qwen2 q/k/v) need nothing: train with bias=\"none\"",
                    core_name,
                )
            });
        }
        let mag = core_name
            .strip_suffix(".lora_magnitude_vector.weight")
            .or_else(|| core_name.strip_suffix(".lora_magnitude_vector"));
        let (module, slot) = if let Some(m) = core_name.strip_suffix(".lora_A.weight") {
            (m, 0)
        } else if let Some(m) = core_name.strip_suffix(".lora_B.weight") {
            (m, 1)
        } else if let Some(m) = mag {
            if !dora {
                return Err(refuse(
                    "DoRA magnitude present but use_dora is false",
                    core_name,
                ));
            }
            (m, 2)
        } else {
            return Err(refuse("tensor is not a LoRA A/B weight, DoRA magnitude or lm_head (biases and other replacement modules cannot be represented)", core_name));
        };
        let e = mods.entry(module.to_string()).or_default();
        match slot {
            0 => e.0 = Some(i),
            1 => e.1 = Some(i),
            _ => e.2 = Some(i),
        }
    }
    let mut maxr = 0;
    let mut entries = Vec::new();
    for (done, (module, (ai, bi, mi))) in mods.iter().enumerate() {
        progress(done, mods.len());
        let (Some(ai), Some(bi)) = (*ai, *bi) else {
            return Err(Error::new(
                ErrorKind::MissingTensor,
                "module has only one of lora_A / lora_B",
            )
            .named(module.as_bytes()));
        };
        // model.layers.{i}.{self_attn|mlp}.{proj}
        let parsed = module.strip_prefix("model.layers.").and_then(|r| {
            let (num, rest) = r.split_once('.')?;
            let proj = rest.rsplit('.').next()?;
            Some((
                num.parse::<usize>().ok()?,
                HF_LINEARS.iter().position(|p| *p == proj)?,
            ))
        });
        let (layer, lin) = parsed.ok_or_else(|| {
            refuse(
                "LoRA target is not a decoder linear (model.layers.N.*.q/k/v/o/gate/up/down_proj)",
                module,
            )
        })?;
        let wt = model
            .layer(layer)
            .ok_or_else(|| {
                Error::new(ErrorKind::MissingTensor, "layer not in base").named(module.as_bytes())
            })?
            .linear(lin);
        let (out_d, in_d) = (wt.rows(), wt.cols());
        let (ta, tb) = (&st.tensors[ai], &st.tensors[bi]);
        let mut a = ta.to_f32();
        let mut b = tb.to_f32();
        let (sa, sb) = (ta.shape.clone(), tb.shape.clone());
        if sa.len() != 2 || sb.len() != 2 {
            return Err(
                Error::new(ErrorKind::BadDims, "LoRA A and B must be 2-D").named(module.as_bytes())
            );
        }
        let r = if fifo { sa[1] } else { sa[0] };
        if fifo {
            a = transpose(&a, sa[0], sa[1]);
            b = transpose(&b, sb[0], sb[1]);
        }
        let (a_in, b_out, b_r) = if fifo {
            (sa[0], sb[1], sb[0])
        } else {
            (sa[1], sb[0], sb[1])
        };
        if a_in != in_d || b_out != out_d || b_r != r || r == 0 || r > super::MAX_RANK {
            return Err(Error::new(
                ErrorKind::ShapeMismatch,
                "LoRA A/B shapes vs base linear (in, out, rank)",
            )
            .named(module.as_bytes())
            .detail((a_in * b_out) as u64, (in_d * out_d) as u64));
        }
        let r_cfg = match pattern_lookup(get("rank_pattern"), module, "rank_pattern")? {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| refuse("rank_pattern values must be integers", "rank_pattern"))?
                as usize,
            None => r_default,
        };
        if r_cfg != r {
            return Err(Error::new(
                ErrorKind::ShapeMismatch,
                "tensor rank differs from the config's r / rank_pattern",
            )
            .named(module.as_bytes())
            .detail(r as u64, r_cfg as u64));
        }
        let alpha_m = match pattern_lookup(get("alpha_pattern"), module, "alpha_pattern")? {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| refuse("alpha_pattern values must be numbers", "alpha_pattern"))?
                as f32,
            None => alpha_default,
        };
        let s_m = if rslora {
            alpha_m / libm::sqrtf(r as f32)
        } else {
            alpha_m / r as f32
        };
        let fold = s_m * r as f32 / alpha_g;
        for v in b.iter_mut() {
            *v *= fold;
        }
        let mut mag = match mi {
            Some(mi) => {
                if !dora {
                    return Err(refuse(
                        "DoRA magnitude present but use_dora is false",
                        module,
                    ));
                }
                let m = st.tensors[*mi].to_f32();
                if m.len() != out_d {
                    return Err(Error::new(
                        ErrorKind::ShapeMismatch,
                        "DoRA magnitude length vs out features",
                    )
                    .named(module.as_bytes()));
                }
                Some(m)
            }
            None if dora => {
                return Err(Error::new(
                    ErrorKind::MissingTensor,
                    "use_dora but no lora_magnitude_vector",
                )
                .named(module.as_bytes()))
            }
            None => None,
        };
        // llama.cpp's converter permutes attn_q/attn_k rows only for architectures whose
        // rope pairs adjacent dimensions (its llama class); NEOX-rope bases (Qwen2, Qwen3,
        // Gemma) keep HF's row order, and so must B and DoRA's magnitude.
        if lin <= 1 && mc.arch.rope == RopeStyle::Normal {
            let heads = if lin == 0 { mc.n_heads } else { mc.n_kv_heads };
            b = permute_rows_for_rope(&b, heads, out_d / heads, r);
            mag = mag.map(|m| permute_rows_for_rope(&m, heads, out_d / heads, 1));
        }
        // DoRA: g[o] = m[o] / ||W[o,:] + s (B A)[o,:]|| against the exact (quantised) base
        // rows, so the device needs no extra memory or work at load. The fingerprint recorded
        // below ties the file to this base.
        let dora_scale = match mag {
            Some(m) => {
                let mut g = std::vec![0f32; out_d];
                let mut wrow = std::vec![0f32; in_d];
                let s_run = alpha_g / r as f32;
                for (o, go) in g.iter_mut().enumerate() {
                    wt.dequantize_row(o, &mut wrow)?;
                    for k in 0..r {
                        let f = s_run * b[o * r + k];
                        for (w, av) in wrow.iter_mut().zip(&a[k * in_d..(k + 1) * in_d]) {
                            *w += f * av;
                        }
                    }
                    let norm =
                        libm::sqrt(wrow.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>())
                            as f32;
                    *go = if norm > 0.0 { m[o] / norm } else { 1.0 };
                }
                Some(g)
            }
            None => None,
        };
        maxr = maxr.max(r);
        let target = [
            "blk.",
            &layer.to_string(),
            ".",
            LINEAR_NAMES[lin],
            ".weight",
        ]
        .concat();
        report.pairs.push((target.clone(), r, s_m));
        entries.push((layer, lin, target, a, b, r, in_d, out_d, dora_scale));
    }
    if entries.is_empty() && head.is_none() {
        return Err(Error::new(
            ErrorKind::MissingTensor,
            "adapter_model.safetensors has no LoRA weights",
        ));
    }
    entries.sort_by_key(|e| (e.0, e.1));
    for (_, _, target, a, b, r, in_d, out_d, dora_scale) in entries {
        if let Some(g) = dora_scale {
            w.add_tensor(
                &[target.as_str(), super::DORA_SUFFIX].concat(),
                GgmlType::F32,
                &[out_d as u64],
                encode(&g, out_d, GgmlType::F32).1,
            )?;
        }
        write_pair(
            &mut w,
            &target,
            (&a, &b),
            (in_d, r, out_d),
            opts.dtype,
            &mut report.notes,
        )?;
    }
    progress(mods.len(), mods.len());
    if let Some(hi) = head {
        let t = &st.tensors[hi];
        let o = model.output();
        if t.shape != [o.rows(), o.cols()] {
            return Err(Error::new(
                ErrorKind::ShapeMismatch,
                "lm_head replacement vs base output head",
            )
            .named(t.name.as_bytes()));
        }
        let (ty, data) = encode(&t.to_f32(), o.cols(), opts.dtype);
        w.add_tensor(
            super::HEAD_TENSOR,
            ty,
            &[o.cols() as u64, o.rows() as u64],
            data,
        )?;
        report
            .notes
            .push("lm_head from modules_to_save is stored as a replacement output.weight".into());
    }
    if dora {
        report.notes.push(
            "DoRA: per-row magnitude scales precomputed against this base (edgelora-only tensors)"
                .into(),
        );
    }
    w.set("adapter.edgelora.rank", OwnedValue::U32(maxr as u32));
    Ok((w.to_bytes(), report))
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = std::vec![0f32; x.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = x[i * cols + j];
        }
    }
    t
}

/// llama.cpp's permutation of q/k rows: within each head, row `2i + j` of the output comes
/// from row `j * head_dim/2 + i` of the input (HF's rotate_half layout -> adjacent pairs).
pub fn permute_rows_for_rope(x: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = std::vec![0f32; x.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + j * half + i;
                let dst = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&x[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Add one LoRA pair to `w` as `<target>.lora_a` (`a`: `r` rows of `n_in`, ggml dims
/// `[n_in, r]`) and `<target>.lora_b` (`b`: `n_out` rows of `r`, dims `[r, n_out]`), both
/// [`encode`]d as `dtype`. B's rows are only `r` long, so Q8_0 falls back to F16 for ranks that
/// are not a multiple of 32; the first such pair adds a note to `notes`. The converter and
/// [`super::combine`] write their pairs through here, so both files look alike.
///
/// # Errors
/// The writer's (a duplicate tensor name).
pub(super) fn write_pair(
    w: &mut GgufWriter,
    target: &str,
    (a, b): (&[f32], &[f32]),
    (n_in, r, n_out): (usize, usize, usize),
    dtype: GgmlType,
    notes: &mut Vec<String>,
) -> Result<()> {
    let (ty_a, da) = encode(a, n_in, dtype);
    let (ty_b, db) = encode(b, r, dtype);
    if ty_b != dtype {
        let note = "lora_b kept as F16: its rows (length r) are not a whole number of Q8_0 blocks"
            .to_string();
        if !notes.contains(&note) {
            notes.push(note);
        }
    }
    w.add_tensor(
        &[target, ".lora_a"].concat(),
        ty_a,
        &[n_in as u64, r as u64],
        da,
    )?;
    w.add_tensor(
        &[target, ".lora_b"].concat(),
        ty_b,
        &[r as u64, n_out as u64],
        db,
    )?;
    Ok(())
}

/// Encode rows of `row_len` values as `ty` (F32, F16, or Q8_0 when rows fit whole blocks,
/// else F16).
pub fn encode(x: &[f32], row_len: usize, ty: GgmlType) -> (GgmlType, Vec<u8>) {
    match ty {
        GgmlType::F32 => (
            GgmlType::F32,
            x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
        GgmlType::Q8_0 if row_len.is_multiple_of(quant::QK) => {
            let mut out = std::vec![0u8; x.len() / quant::QK * 34];
            if let Ok(blocks) = quant::cast_blocks_mut::<BlockQ8_0>(&mut out) {
                reference::quantize_row_q8_0(x, blocks);
            }
            (GgmlType::Q8_0, out)
        }
        _ => (
            GgmlType::F16,
            x.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        ),
    }
}
