//! GGUF LoRA -> PEFT (feature `std`): the inverse of [`super::convert`].
//!
//! An adapter in llama.cpp's GGUF LoRA layout becomes the tensors and `adapter_config.json` of
//! a PEFT 0.21 LoRA directory (`PeftModel.from_pretrained` loads it, and so does vLLM's
//! `--lora-modules`), so an adapter trained or combined for a device can also be served on a
//! GPU fleet:
//! - `blk.N.<linear>.weight.lora_a` / `.lora_b` become
//!   `base_model.model.model.layers.N.{self_attn|mlp}.<hf>_proj.lora_A.weight` / `lora_B`
//!   (the layouts agree: A is r x in, B is out x r, in both files);
//! - the runtime applies `alpha / r` per pair with the file's one `adapter.lora.alpha` (any
//!   PEFT per-module scale, rsLoRA included, was folded into B by the converter), so the config
//!   gets `lora_alpha = alpha`, `use_rslora = false`, `r` = the most common rank and
//!   `rank_pattern` for the other modules; `alpha_pattern` is never needed;
//! - for architectures with normal (adjacent-pair) rope, i.e. llama, llama.cpp's rope row
//!   permutation of q/k is undone on B ([`unpermute_rows_for_rope`]); that needs the head
//!   counts, so such adapters need their base;
//! - a replacement head (`output.weight`) becomes `modules_to_save = ["lm_head"]`;
//! - DoRA files are refused: their `.dora_scale` is the per-row factor `m / ||W + s B A||`
//!   computed against one quantised base, not PEFT's magnitude `m`.

use super::{
    base_shape_fingerprint, parse_target, Adapter, DORA_SUFFIX, HEAD_TENSOR, SHAPE_FINGERPRINT_KEY,
};
use crate::error::{Error, ErrorKind, Result};
use crate::format::gguf::Gguf;
use crate::kernels::MatRef;
use crate::model::{Arch, Config, RopeStyle};
use serde_json::{json, Map, Value as J};
use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

use super::convert::HF_LINEARS;

/// PEFT's prefix of every tensor name in `adapter_model.safetensors` of a causal LM.
pub const PEFT_PREFIX: &str = "base_model.model.";

/// One tensor of the PEFT file, as f32 (the writer picks the stored type).
#[derive(Clone, Debug, PartialEq)]
pub struct PeftTensor {
    /// Full safetensors name (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub name: String,
    /// PyTorch shape: `[r, in]` for A, `[out, r]` for B, `[vocab, dim]` for a head.
    pub shape: [usize; 2],
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The PEFT directory's contents.
#[derive(Clone, Debug)]
pub struct PeftExport {
    /// `adapter_config.json`.
    pub config: J,
    /// `adapter_model.safetensors`, in name order.
    pub tensors: Vec<PeftTensor>,
    /// Notes for the user (rope rows restored, head exported, ...).
    pub notes: Vec<String>,
}

/// Export options.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// `base_model_name_or_path` to record when the adapter's metadata names no base
    /// (`general.base_model.0.*`).
    pub base_name: Option<String>,
}

/// HF module path of linear `lin` ([`crate::model::LINEAR_NAMES`] order) in `layer`:
/// `model.layers.3.self_attn.q_proj`, `model.layers.3.mlp.down_proj`. `None` for an index
/// past the table.
pub fn hf_module_name(layer: usize, lin: usize) -> Option<String> {
    let proj = HF_LINEARS.get(lin)?;
    let block = if lin < 4 { "self_attn" } else { "mlp" };
    Some(std::format!("model.layers.{layer}.{block}.{proj}"))
}

/// Inverse of [`super::convert::permute_rows_for_rope`]: llama.cpp's adjacent-pair row order
/// back to HF's rotate-half order, within each head. `x` is `heads * head_dim` rows of `cols`.
/// A length that is not `heads * head_dim * cols`, or an odd `head_dim`, returns `x` unchanged
/// (callers check shapes first).
pub fn unpermute_rows_for_rope(x: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    if heads
        .checked_mul(head_dim)
        .and_then(|n| n.checked_mul(cols))
        != Some(x.len())
        || !head_dim.is_multiple_of(2)
    {
        return x.to_vec();
    }
    let mut out = std::vec![0f32; x.len()];
    let half = head_dim / 2;
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let hf = h * head_dim + j * half + i;
                let gg = h * head_dim + 2 * i + j;
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&x[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

fn refuse(what: &'static str, name: &str) -> Error {
    Error::new(ErrorKind::BadValue, what).named(name.as_bytes())
}

fn to_f32(m: &MatRef<'_>) -> Result<Vec<f32>> {
    let mut out = std::vec![0f32; m.rows() * m.cols()];
    if m.cols() > 0 {
        for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
            m.dequantize_row(r, row)?;
        }
    }
    Ok(out)
}

/// `general.base_model.0.organization/name` as llama.cpp's converter records it, if present.
fn recorded_base_name(g: &Gguf<'_>) -> Option<String> {
    let s = |k: &str| g.get(k).and_then(|v| v.as_str().map(|x| x.to_string()));
    match (
        s("general.base_model.0.organization"),
        s("general.base_model.0.name"),
    ) {
        (Some(o), Some(n)) => Some(std::format!("{o}/{n}")),
        (None, Some(n)) => Some(n),
        _ => s("general.base_model.0.repo_url"),
    }
}

/// Export `adapter` as a PEFT LoRA directory's tensors and config.
///
/// `base` is the model the adapter was made for. It is needed (and then checked: same
/// architecture, same shape fingerprint when the adapter records one) when the architecture
/// uses normal rope and the adapter adapts `attn_q` or `attn_k`, whose B rows must be put back
/// in HF order; otherwise it is optional and only fills in the layer count.
///
/// # Errors
/// [`ErrorKind::BadValue`] naming the tensor for DoRA scales and unknown tensor names;
/// [`ErrorKind::MissingKey`] naming `general.architecture` when it is needed and neither the
/// adapter nor a base gives it, and [`ErrorKind::InvalidArgument`] when a base is needed and
/// not given; [`ErrorKind::UnsupportedArch`] / [`ErrorKind::ShapeMismatch`] when `base` is not
/// the adapter's base; dequantisation errors of the adapter's tensors.
pub fn export_peft(
    adapter: &Adapter<'_>,
    base: Option<&Gguf<'_>>,
    opts: &ExportOptions,
) -> Result<PeftExport> {
    let g = adapter.gguf();
    for t in g.tensors() {
        if t.name.ends_with(DORA_SUFFIX) {
            return Err(refuse(
                "DoRA: the file stores m / ||W + sBA|| for one quantised base, not PEFT's \
                 magnitude m; export the original PEFT directory instead",
                t.name,
            ));
        }
    }
    let arch_name = g
        .get("general.architecture")
        .and_then(|v| v.as_str().map(|s| s.to_string()));
    let base_cfg = match base {
        Some(b) => {
            let cfg = Config::from_gguf(b)?;
            if let Some(a) = &arch_name {
                if a != cfg.arch.name {
                    return Err(Error::new(
                        ErrorKind::UnsupportedArch,
                        "the adapter's general.architecture differs from the base's",
                    )
                    .named(a.as_bytes()));
                }
            }
            if let Some(Ok(want)) = g.get(SHAPE_FINGERPRINT_KEY).map(|v| {
                v.as_int()
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or(Error::new(
                        ErrorKind::WrongType,
                        "fingerprint must be uint64",
                    ))
            }) {
                if want != base_shape_fingerprint(b) {
                    return Err(Error::new(
                        ErrorKind::ShapeMismatch,
                        "this base is not the adapter's (shape fingerprint differs)",
                    )
                    .named(SHAPE_FINGERPRINT_KEY.as_bytes()));
                }
            }
            Some(cfg)
        }
        None => None,
    };
    let arch = match (&base_cfg, &arch_name) {
        (Some(c), _) => Some(c.arch),
        (None, Some(a)) => Arch::for_name(a),
        (None, None) => None,
    };

    let mut notes = Vec::new();
    let mut tensors = Vec::new();
    // (layer, linear) -> rank
    let mut ranks: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    let mut unpermuted = false;
    for (target, pair) in adapter.pairs() {
        let (layer, lin) = parse_target(target).ok_or_else(|| {
            refuse(
                "LoRA target is not a decoder linear (blk.N.attn_q/k/v/output, ffn_gate/up/down)",
                target,
            )
        })?;
        let module = hf_module_name(layer, lin)
            .ok_or_else(|| refuse("linear index out of the HF table", target))?;
        let r = pair.rank();
        let (in_d, out_d) = (pair.a.cols(), pair.b.rows());
        let a = to_f32(&pair.a)?;
        let mut b = to_f32(&pair.b)?;
        if lin <= 1 {
            let rope = match arch {
                Some(a) => a.rope,
                None if arch_name.is_none() => {
                    return Err(Error::new(
                        ErrorKind::MissingKey,
                        "the adapter records no architecture: give its base so q/k rows can \
                         be put back in HF order",
                    )
                    .named(b"general.architecture"))
                }
                None => {
                    return Err(Error::new(
                        ErrorKind::UnsupportedArch,
                        "unknown architecture: give its base (a supported model) to export q/k",
                    )
                    .named(arch_name.as_deref().unwrap_or("").as_bytes()))
                }
            };
            if rope == RopeStyle::Normal {
                let cfg = base_cfg.as_ref().ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        "normal-rope (llama) q/k LoRA: llama.cpp permuted B's rows per head; \
                         give the base model (--base) for the head counts to undo it",
                    )
                    .named(target.as_bytes())
                })?;
                let heads = if lin == 0 {
                    cfg.n_heads
                } else {
                    cfg.n_kv_heads
                };
                if heads == 0 || !out_d.is_multiple_of(heads) || !(out_d / heads).is_multiple_of(2)
                {
                    return Err(Error::new(
                        ErrorKind::ShapeMismatch,
                        "lora_b rows are not heads x an even head width of the base",
                    )
                    .named(target.as_bytes())
                    .detail(out_d as u64, heads as u64));
                }
                b = unpermute_rows_for_rope(&b, heads, out_d / heads, r);
                unpermuted = true;
            }
        }
        ranks.insert((layer, lin), r);
        tensors.push(PeftTensor {
            name: std::format!("{PEFT_PREFIX}{module}.lora_A.weight"),
            shape: [r, in_d],
            data: a,
        });
        tensors.push(PeftTensor {
            name: std::format!("{PEFT_PREFIX}{module}.lora_B.weight"),
            shape: [out_d, r],
            data: b,
        });
    }
    if unpermuted {
        notes.push("q/k lora_B rows restored from llama.cpp's rope order to HF's".to_string());
    }
    let mut modules_to_save = J::Null;
    if let Some(h) = adapter.head() {
        tensors.push(PeftTensor {
            name: std::format!("{PEFT_PREFIX}lm_head.weight"),
            shape: [h.rows(), h.cols()],
            data: to_f32(h)?,
        });
        modules_to_save = json!(["lm_head"]);
        notes.push(std::format!(
            "{HEAD_TENSOR} exported as a replacement lm_head (modules_to_save)"
        ));
    }
    tensors.sort_by(|x, y| x.name.cmp(&y.name));

    // r = the most common rank (ties: the larger); the rest go to rank_pattern by full path.
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for r in ranks.values() {
        *counts.entry(*r).or_default() += 1;
    }
    let r_main = counts
        .iter()
        .max_by_key(|(r, n)| (**n, **r))
        .map(|(r, _)| *r)
        .unwrap_or(1);
    let mut rank_pattern = Map::new();
    for ((layer, lin), r) in &ranks {
        if *r != r_main {
            if let Some(m) = hf_module_name(*layer, *lin) {
                rank_pattern.insert(m, json!(r));
            }
        }
    }
    // target_modules: the short names when every layer has the same linears adapted, else the
    // exact module paths (PEFT matches a list entry as a dotted suffix).
    let n_layers = match &base_cfg {
        Some(c) => c.n_layers,
        None => ranks.keys().map(|(l, _)| l + 1).max().unwrap_or(0),
    };
    let lins: std::collections::BTreeSet<usize> = ranks.keys().map(|(_, k)| *k).collect();
    let full = ranks.len() == n_layers * lins.len()
        && (0..n_layers).all(|l| lins.iter().all(|k| ranks.contains_key(&(l, *k))));
    let target_modules: Vec<String> = if full {
        let mut v: Vec<String> = lins.iter().map(|k| HF_LINEARS[*k].to_string()).collect();
        v.sort();
        v
    } else {
        ranks
            .keys()
            .filter_map(|(l, k)| hf_module_name(*l, *k))
            .collect()
    };
    let base_name = recorded_base_name(g).or_else(|| opts.base_name.clone());
    let task = g
        .get("adapter.edgelora.task")
        .and_then(|v| v.as_str().map(|s| s.to_string()));
    let mut config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r_main,
        "lora_alpha": adapter.alpha(),
        "rank_pattern": rank_pattern,
        "alpha_pattern": {},
        "target_modules": target_modules,
        "modules_to_save": modules_to_save,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "base_model_name_or_path": base_name,
    });
    if let (Some(t), Some(o)) = (task, config.as_object_mut()) {
        // What `adapter convert` reads back as the task (PEFT ignores unknown keys).
        o.insert("task_name".into(), J::String(t));
    }
    Ok(PeftExport {
        config,
        tensors,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::convert::permute_rows_for_rope;
    use super::*;

    #[test]
    fn module_names_follow_hf() {
        assert_eq!(
            hf_module_name(3, 0).as_deref(),
            Some("model.layers.3.self_attn.q_proj")
        );
        assert_eq!(
            hf_module_name(0, 3).as_deref(),
            Some("model.layers.0.self_attn.o_proj")
        );
        assert_eq!(
            hf_module_name(12, 6).as_deref(),
            Some("model.layers.12.mlp.down_proj")
        );
        assert_eq!(hf_module_name(0, 7), None);
    }

    #[test]
    fn names_round_trip_through_parse_target() {
        for (lin, gg) in crate::model::LINEAR_NAMES.iter().enumerate() {
            let t = std::format!("blk.5.{gg}.weight");
            assert_eq!(parse_target(&t), Some((5, lin)));
            assert!(hf_module_name(5, lin).unwrap().ends_with(HF_LINEARS[lin]));
        }
    }

    #[test]
    fn unpermute_inverts_permute() {
        for (heads, head_dim, cols) in [(1, 2, 1), (2, 4, 3), (3, 8, 1), (4, 64, 2)] {
            let x: Vec<f32> = (0..heads * head_dim * cols).map(|i| i as f32).collect();
            let p = permute_rows_for_rope(&x, heads, head_dim, cols);
            if head_dim > 2 {
                assert_ne!(p, x, "head_dim {head_dim}: the permutation moves rows");
            }
            assert_eq!(unpermute_rows_for_rope(&p, heads, head_dim, cols), x);
        }
    }

    #[test]
    fn unpermute_leaves_bad_shapes_alone() {
        let x = [1.0f32, 2.0, 3.0];
        assert_eq!(unpermute_rows_for_rope(&x, 2, 2, 1), x.to_vec());
        assert_eq!(unpermute_rows_for_rope(&x, 1, 3, 1), x.to_vec());
        assert_eq!(unpermute_rows_for_rope(&x, usize::MAX, 2, 2), x.to_vec());
    }
}
