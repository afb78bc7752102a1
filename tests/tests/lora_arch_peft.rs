//! PEFT adapters on Qwen2, Qwen3 and Gemma 3, converted by `edgelora adapter convert`'s
//! library function ([`convert_peft`]) and run by edgelora, against PEFT's own logits
//! (fixtures from `tests/fixtures/lora/gen_arch_lora_refs.py`: tiny models built by
//! transformers, converted by llama.cpp's `convert_hf_to_gguf.py`, adapters and logits by PEFT).
//!
//! What this pins down per architecture: the HF module names map to the right GGUF linears; q/k
//! rows of B are **not** permuted for NEOX-rope architectures (llama.cpp permutes q/k only for
//! its llama class, so these bases hold HF's row order); PEFT's scales (plain, rsLoRA with rank
//! and alpha patterns) and DoRA hold; Qwen2's base q/k/v biases are added after the adapter and
//! DoRA's rescale, as PEFT does (`g (W x + s B A x) + b`); the tied head (Qwen2, Gemma 3) and
//! Gemma's `(1 + w)` norms need nothing from the adapter. Also: what the converter refuses
//! (LoRA biases, trained bias tensors, LoRA on `lm_head` / `embed_tokens`) it refuses by name.
//!
//! The bound. Both sides compute in f32 from the same f32 weights; they differ only in the
//! order of operations (and in a few ulps of `exp`/`tanh`). A length-`n` dot product carries a
//! relative error of at most `gamma_n = n u / (1 - n u)` (Higham, `u = 2^-24`), and the forward
//! pass chains `D` such rounding stages (per layer about 20: norm, q/k/v, A and B of each
//! adapter, rope, scores, softmax, weighted sum, o, residual, norm, gate/up, activation, down,
//! residual, Gemma's extra norms; plus the final norm and the head). So we allow
//! `|dlogit| <= D gamma_n max|logit|` with `n` the longest reduction (the FFN width) and
//! `D = 20 n_layers + 2`: 2.1e-4 of the largest logit here, where a q/k permutation, a wrong
//! scale or a misplaced bias moves logits by 1e-2..1 of it. The fast path runs the same f32
//! weights through the SIMD float kernels (no activation quantisation for F32 weights), so the
//! same bound holds on every table.

mod common;

use edgelora::error::ErrorKind;
use edgelora::format::safetensors::SafeTensors;
use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::merge::{merge_model, MergeType};
use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{state_buffer, KernelMode, Model, State};
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::Value as J;
use std::path::PathBuf;

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/lora")
        .join(p)
}

fn refs() -> J {
    serde_json::from_slice(&std::fs::read(fx("arch/refs.json")).unwrap()).unwrap()
}

fn run(
    model: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tokens: &[u32],
    kernel: Option<&'static edgelora::kernels::Kernel>,
) -> Vec<Vec<f32>> {
    let cfg = *model.config();
    let mut buf = state_buffer(&cfg, tokens.len());
    let mut st = State::new(&cfg, tokens.len(), &mut buf).unwrap();
    st.set_kernel_mode(if kernel.is_some() {
        KernelMode::Fast
    } else {
        KernelMode::Reference
    });
    st.set_kernel(kernel);
    tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| model.forward_with(t, p, &mut st, set).unwrap().to_vec())
        .collect()
}

/// Max over positions of `max |got - want| / max |want|`.
fn rel_err(got: &[Vec<f32>], want: &J) -> f64 {
    let want = common::json_f64_rows(want);
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(&want)
        .map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
            g.iter()
                .zip(w)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0f64, f64::max)
                / scale
        })
        .fold(0f64, f64::max)
}

/// `D gamma_n` of the module doc.
fn bound(cfg: &J) -> f64 {
    let u = 2f64.powi(-24);
    let n = cfg["ffn"]
        .as_f64()
        .unwrap()
        .max(cfg["hidden"].as_f64().unwrap());
    let d = 20.0 * cfg["layers"].as_f64().unwrap() + 2.0;
    d * n * u / (1.0 - n * u)
}

fn peft_dir(arch: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    let d = fx(&format!("arch/{arch}/{name}"));
    (
        std::fs::read(d.join("adapter_config.json")).unwrap(),
        std::fs::read(d.join("adapter_model.safetensors")).unwrap(),
    )
}

#[test]
fn qwen_gemma_peft_adapters_match_peft() {
    let refs = refs();
    for m in refs["models"].as_array().unwrap() {
        let arch = m["arch"].as_str().unwrap();
        let bytes = std::fs::read(fx(m["gguf"].as_str().unwrap())).unwrap();
        let base = Gguf::parse(&bytes).unwrap();
        assert_eq!(base.get_str("general.architecture").unwrap(), arch);
        let model: Model = Model::from_gguf(&base).unwrap();
        let bound = bound(&m["config"]);
        let seqs: Vec<Vec<u32>> = m["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(common::json_u32s)
            .collect();
        // The base alone first: the converted model is the HF model.
        let mut worst = 0f64;
        for (s, want) in seqs.iter().zip(m["base"].as_array().unwrap()) {
            worst = worst.max(rel_err(&run(&model, &AdapterSet::EMPTY, s, None), want));
        }
        println!("{arch} base: max rel |dlogit| vs transformers {worst:.1e} (bound {bound:.1e})");
        assert!(worst <= bound, "{arch} base: {worst}");

        for (name, a) in m["adapters"].as_object().unwrap() {
            let (cfg, st) = peft_dir(arch, name);
            let opts = ConvertOptions {
                dtype: GgmlType::F32,
                task: None,
            };
            let (ab, rep) = convert_peft(&cfg, &st, &base, &opts)
                .unwrap_or_else(|e| panic!("{arch}/{name}: {e}"));
            // PEFT's per-module scale, module by module.
            let scales = a["scales"].as_object().unwrap();
            assert_eq!(rep.pairs.len(), scales.len(), "{arch}/{name}");
            for (module, s) in scales {
                let (layer, proj) = module
                    .strip_prefix("model.layers.")
                    .and_then(|r| r.split_once('.'))
                    .unwrap();
                let proj = proj.rsplit('.').next().unwrap();
                let k = edgelora::lora::convert::HF_LINEARS
                    .iter()
                    .position(|p| *p == proj)
                    .unwrap();
                let target = format!("blk.{layer}.{}.weight", edgelora::model::LINEAR_NAMES[k]);
                let got = rep.pairs.iter().find(|p| p.0 == target).unwrap().2;
                let want = s.as_f64().unwrap() as f32;
                assert!((got - want).abs() <= 1e-6 * want, "{arch}/{name} {module}");
            }
            let ad = Adapter::parse(&ab).unwrap();
            let mut slots = vec![None; Adapter::slots_len(model.config())];
            let b = ad.bind(&base, &model, &mut slots).unwrap();
            let set = AdapterSet::single(&b, 1.0);
            let merged_bytes = merge_model(
                &base,
                &model,
                &[(&b, 1.0)],
                MergeType::Fixed(GgmlType::F32),
                |_| {},
            )
            .unwrap();
            let merged_g = Gguf::parse(&merged_bytes).unwrap();
            let merged: Model = Model::from_gguf(&merged_g).unwrap();
            let (mut r_ref, mut r_merged) = (0f64, 0f64);
            let mut r_fast = vec![];
            let tables = common::tables(&format!("{arch}/{name} fast path"));
            for (s, want) in seqs.iter().zip(a["logits"].as_array().unwrap()) {
                r_ref = r_ref.max(rel_err(&run(&model, &set, s, None), want));
                r_merged = r_merged.max(rel_err(&run(&merged, &AdapterSet::EMPTY, s, None), want));
                for (i, k) in tables.iter().enumerate() {
                    let e = rel_err(&run(&model, &set, s, Some(k)), want);
                    match r_fast.get_mut(i) {
                        Some(x) => *x = e.max(*x),
                        None => r_fast.push(e),
                    }
                }
            }
            let fast: Vec<String> = tables
                .iter()
                .zip(&r_fast)
                .map(|(k, e)| format!("{} {e:.1e}", k.isa().name()))
                .collect();
            println!(
                "{arch}/{name}: max rel |dlogit| vs PEFT: reference {r_ref:.1e}, merged F32 \
                 {r_merged:.1e}, fast [{}] (bound {bound:.1e})",
                fast.join(", ")
            );
            assert!(r_ref <= bound, "{arch}/{name} reference: {r_ref}");
            assert!(r_merged <= bound, "{arch}/{name} merged: {r_merged}");
            for (k, e) in tables.iter().zip(&r_fast) {
                assert!(*e <= bound, "{arch}/{name} [{}]: {e}", k.isa().name());
            }
        }
    }
}

/// A safetensors file from `(name, shape, values)` (F32), as PEFT writes one.
fn safetensors(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = vec![];
    for (name, shape, v) in tensors {
        let start = data.len();
        data.extend(common::f32_bytes(v));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::to_vec(&J::Object(header)).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

#[test]
fn converter_refuses_what_it_cannot_represent_by_name() {
    let refs = refs();
    for m in refs["models"].as_array().unwrap() {
        let arch = m["arch"].as_str().unwrap();
        let bytes = std::fs::read(fx(m["gguf"].as_str().unwrap())).unwrap();
        let base = Gguf::parse(&bytes).unwrap();
        let (cfg, st) = peft_dir(arch, "plain");
        let parsed = SafeTensors::parse(&st).unwrap();
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = parsed
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone(), t.to_f32()))
            .collect();
        // The file as PEFT wrote it converts; rebuilt by `safetensors` it still does.
        let opts = ConvertOptions::default();
        convert_peft(&cfg, &safetensors(&tensors), &base, &opts).unwrap();

        let cfg_j: J = serde_json::from_slice(&cfg).unwrap();
        let with = |k: &str, v: J| {
            let mut c = cfg_j.clone();
            c[k] = v;
            serde_json::to_vec(&c).unwrap()
        };
        let expect = |what: &str, c: &[u8], s: &[u8], kind: ErrorKind, name: &str| {
            let e = convert_peft(c, s, &base, &opts).unwrap_err();
            println!("{arch}: {what}: {e}");
            assert_eq!(e.kind(), kind, "{arch}: {what}: {e}");
            assert_eq!(e.name().to_string(), name, "{arch}: {what}: {e}");
        };
        for bias in ["lora_only", "all"] {
            let c = with("bias", J::from(bias));
            expect(bias, &c, &st, ErrorKind::BadValue, "bias");
        }
        expect(
            "lora_bias",
            &with("lora_bias", J::from(true)),
            &st,
            ErrorKind::BadValue,
            "lora_bias",
        );
        // Tensors PEFT writes for those options (a trained base bias; lora_B's bias).
        let hf = |s: &str| format!("base_model.model.model.layers.0.{s}");
        let extra = [
            (
                hf("self_attn.q_proj.bias"),
                vec![m["config"]["hidden"].as_u64().unwrap() as usize],
            ),
            (hf("self_attn.v_proj.lora_B.bias"), vec![16]),
        ];
        for (name, shape) in extra {
            let mut t = tensors.clone();
            let n = shape.iter().product();
            t.push((name.clone(), shape, vec![0.5; n]));
            // Named without PEFT's `base_model.model.` prefix (errors keep 48 bytes of a name).
            let short = name.strip_prefix("base_model.model.").unwrap();
            expect(
                "bias tensor",
                &cfg,
                &safetensors(&t),
                ErrorKind::BadValue,
                short,
            );
        }
        // LoRA on the output head or the embeddings (tied for qwen2 and gemma3).
        let (v, h) = (
            m["config"]["vocab"].as_u64().unwrap() as usize,
            m["config"]["hidden"].as_u64().unwrap() as usize,
        );
        for (module, a_shape, b_shape) in [
            ("lm_head", vec![4, h], vec![v, 4]),
            ("model.embed_tokens", vec![4, v], vec![h, 4]),
        ] {
            let mut t = tensors.clone();
            let a = format!("base_model.model.{module}.lora_A.weight");
            let bn = format!("base_model.model.{module}.lora_B.weight");
            let (na, nb) = (a_shape.iter().product(), b_shape.iter().product());
            t.push((a.clone(), a_shape, vec![0.1; na]));
            t.push((bn, b_shape, vec![0.1; nb]));
            t.sort_by(|x, y| x.0.cmp(&y.0));
            let e = convert_peft(&cfg, &safetensors(&t), &base, &opts).unwrap_err();
            println!("{arch}: LoRA on {module}: {e}");
            assert_eq!(e.kind(), ErrorKind::BadValue);
            assert!(e.name().to_string().contains(module), "{e}");
        }
        tensors.clear();
    }
}
