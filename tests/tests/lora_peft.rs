//! LoRA parity against PEFT itself (fixtures from `tests/fixtures/lora/gen_lora_refs.py`):
//! PEFT dirs converted by edgelora's converter, and llama.cpp's own converter output, run
//! unmerged (and merged) by edgelora, compared with transformers + PEFT logits.
//!
//! Tolerances: on the tiny model both sides run f32 from identical weights, so logits agree to
//! f32 summation noise (we allow 1e-4 of the largest logit). On SmolLM2 we report top-1
//! agreement and |dlogit| on PEFT's top-5; the reference path must agree on every position
//! whose PEFT top-2 margin exceeds 0.05 (summation-order noise is ~1e-4).

use edgelora::lora::convert::{convert_peft, ConvertOptions};
use edgelora::lora::merge::{merge_into, merged_len};
use edgelora::lora::{Adapter, AdapterSet, BoundAdapter, LoraPair};
use edgelora::model::{state_buffer, KernelMode, Model, State, LINEARS};
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::Value as J;
use std::path::PathBuf;

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(p)
}

fn convert(dir: &str, base: &Gguf<'_>, dtype: GgmlType) -> Vec<u8> {
    let d = fx(dir);
    let cfg = std::fs::read(d.join("adapter_config.json")).unwrap();
    let st = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    convert_peft(&cfg, &st, base, &ConvertOptions { dtype, task: None })
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .0
}

fn ids(v: &J) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn run(
    model: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tokens: &[u32],
    mode: KernelMode,
) -> Vec<Vec<f32>> {
    let cfg = *model.config();
    let mut buf = state_buffer(&cfg, tokens.len());
    let mut st = State::new(&cfg, tokens.len(), &mut buf).unwrap();
    st.set_kernel_mode(mode);
    tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| model.forward_with(t, p, &mut st, set).unwrap().to_vec())
        .collect()
}

fn argmax(x: &[f32]) -> usize {
    edgelora::sample::argmax(x) as usize
}

/// Full-logit comparison (tiny): returns (max relative diff, top-1 agreement, positions).
fn cmp_full(got: &[Vec<f32>], want: &J) -> (f32, usize, usize) {
    let (mut worst, mut agree, mut n) = (0f32, 0, 0);
    for (g, w) in got.iter().zip(want.as_array().unwrap()) {
        let w: Vec<f32> = w
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        worst = worst.max(
            g.iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
                / scale,
        );
        agree += (argmax(g) == argmax(&w)) as usize;
        n += 1;
    }
    (worst, agree, n)
}

#[test]
fn tiny_peft_adapters_match_transformers_peft() {
    let base_bytes = std::fs::read(fx("tiny/tiny-f32.gguf")).unwrap();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Model = Model::from_gguf(&base).unwrap();
    let refs: J =
        serde_json::from_slice(&std::fs::read(fx("lora/tiny/refs.json")).unwrap()).unwrap();
    let n = Adapter::slots_len(model.config());
    // Base cases first: no adapter.
    for c in refs["base_cases"].as_array().unwrap() {
        let got = run(
            &model,
            &AdapterSet::EMPTY,
            &ids(&c["tokens"]),
            KernelMode::Reference,
        );
        let (w, a, k) = cmp_full(&got, &c["logits"]);
        assert!(w < 1e-4 && a == k, "base {}: {w} {a}/{k}", c["seq"]);
    }
    for name in ["plain", "rslora", "qv", "dora", "head"] {
        let bytes = convert(&format!("lora/tiny/{name}"), &base, GgmlType::F32);
        let ad = Adapter::parse(&bytes).unwrap();
        let mut slots = vec![None; n];
        let b = ad.bind(&base, &model, &mut slots).unwrap();
        let (mut worst, mut agree, mut total) = (0f32, 0, 0);
        for c in refs["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["adapter"] == name)
        {
            let scale = c["scale"].as_f64().unwrap() as f32;
            let got = run(
                &model,
                &AdapterSet::single(&b, scale),
                &ids(&c["tokens"]),
                KernelMode::Reference,
            );
            let (w, a, k) = cmp_full(&got, &c["logits"]);
            worst = worst.max(w);
            agree += a;
            total += k;
        }
        println!("tiny {name:<6}: edgelora-converted vs PEFT: max rel |dlogit| {worst:.1e}, top-1 {agree}/{total}");
        assert!(total > 0);
        assert!(worst < 1e-4, "{name}: {worst}");
        assert_eq!(agree, total, "{name}");
    }
    // llama.cpp's converter: right for plain LoRA, wrong scale for rsLoRA (per-module alpha
    // and alpha/sqrt(r) are ignored) -- edgelora runs its files faithfully either way.
    for (name, file) in [
        ("plain", "lora/tiny/plain.llamacpp.gguf"),
        ("rslora", "lora/tiny/rslora.llamacpp.gguf"),
    ] {
        let bytes = std::fs::read(fx(file)).unwrap();
        let ad = Adapter::parse(&bytes).unwrap();
        let mut slots = vec![None; n];
        let b = ad.bind(&base, &model, &mut slots).unwrap();
        let (mut worst, mut agree, mut total) = (0f32, 0, 0);
        for c in refs["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["adapter"] == name && c["scale"] == 1.0)
        {
            let got = run(
                &model,
                &AdapterSet::single(&b, 1.0),
                &ids(&c["tokens"]),
                KernelMode::Reference,
            );
            let (w, a, k) = cmp_full(&got, &c["logits"]);
            worst = worst.max(w);
            agree += a;
            total += k;
        }
        println!("tiny {name:<6}: llama.cpp-converted vs PEFT: max rel |dlogit| {worst:.1e}, top-1 {agree}/{total}");
        if name == "plain" {
            assert!(
                worst < 1e-3,
                "llama.cpp plain adapter should match PEFT: {worst}"
            );
        } else {
            assert!(
                worst > 1e-2,
                "llama.cpp's rsLoRA scale was expected to be off"
            );
        }
    }
}

#[test]
fn tiny_merge_matches_unmerged() {
    let base_bytes = std::fs::read(fx("tiny/tiny-f32.gguf")).unwrap();
    let base = Gguf::parse(&base_bytes).unwrap();
    let model: Model = Model::from_gguf(&base).unwrap();
    let refs: J =
        serde_json::from_slice(&std::fs::read(fx("lora/tiny/refs.json")).unwrap()).unwrap();
    let bytes = convert("lora/tiny/plain", &base, GgmlType::F32);
    let ad = Adapter::parse(&bytes).unwrap();
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    let b: BoundAdapter = ad.bind(&base, &model, &mut slots).unwrap();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0] {
        let mut bufs = vec![];
        for l in 0..model.config().n_layers {
            for k in 0..LINEARS {
                let w = *model.layer(l).unwrap().linear(k);
                let p: LoraPair = *b.pair(l, k).unwrap();
                let mut out = vec![0u8; merged_len(&w, ty).unwrap()];
                let mut row = vec![0f32; 2 * w.cols()];
                merge_into(
                    &w,
                    &[(p, ad.alpha() / p.rank() as f32)],
                    ty,
                    &mut out,
                    &mut row,
                )
                .unwrap();
                bufs.push((l, k, w, out));
            }
        }
        let mut merged = model.clone();
        for (l, k, w, out) in &bufs {
            *merged.layer_mut(*l).unwrap().linear_mut(*k) =
                edgelora::kernels::MatRef::new(ty, w.rows(), w.cols(), out).unwrap();
        }
        let (mut worst, mut agree, mut total) = (0f32, 0, 0);
        for c in refs["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["adapter"] == "plain" && c["scale"] == 1.0)
        {
            let got = run(
                &merged,
                &AdapterSet::EMPTY,
                &ids(&c["tokens"]),
                KernelMode::Reference,
            );
            let (w, a, k) = cmp_full(&got, &c["logits"]);
            worst = worst.max(w);
            agree += a;
            total += k;
        }
        println!(
            "tiny plain merged to {}: max rel |dlogit| vs PEFT {worst:.1e}, top-1 {agree}/{total}",
            ty.name()
        );
        // Merging into F16/Q8_0 also rounds the (F32) base weights: F16 keeps 11 bits
        // (relative 2^-11 per weight), Q8_0 about 7 bits of the block maximum; through two
        // random layers that moves logits by ~0.1% and ~5% of their range respectively.
        let tol = match ty {
            GgmlType::F32 => 1e-4,
            GgmlType::F16 => 1e-2,
            _ => 1e-1,
        };
        assert!(worst < tol, "{}: {worst}", ty.name());
        if ty != GgmlType::Q8_0 {
            assert_eq!(agree, total, "{}", ty.name());
        }
    }
}

/// Teacher-forced top-1 agreement with PEFT over the cases of `adapter`: (agree, total,
/// max |dlogit| on PEFT's top-5, every position with a PEFT top-2 margin above 0.05 agreed,
/// the largest PEFT top-2 margin among the positions that disagree).
fn score(
    model: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    refs: &J,
    adapter: &str,
    mode: KernelMode,
) -> (usize, usize, f32, bool, f32) {
    let (mut agree, mut total, mut max_d, mut forced) = (0, 0, 0f32, true);
    let mut miss_margin = 0f32;
    for c in refs["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["adapter"] == adapter)
    {
        let got = run(model, set, &ids(&c["tokens"]), mode);
        for (p, g) in got.iter().enumerate() {
            let top = ids(&c["top_ids"][p]);
            let tl: Vec<f32> = c["top_logits"][p]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            total += 1;
            if argmax(g) == top[0] as usize {
                agree += 1;
            } else {
                forced &= tl[0] - tl[1] <= 0.05;
                miss_margin = miss_margin.max(tl[0] - tl[1]);
            }
            for (&i, &w) in top.iter().zip(&tl) {
                max_d = max_d.max((g[i as usize] - w).abs());
            }
        }
    }
    (agree, total, max_d, forced, miss_margin)
}

const SMOL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[test]
fn smollm2_peft_adapters_top1_vs_transformers_peft() {
    let Ok(f) = std::fs::File::open(SMOL) else {
        println!(
            "SKIPPED: {SMOL} is absent; run `cargo run --release -p edgelora-cli -- fetch smollm2`"
        );
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let mm = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    let base = Gguf::parse(&mm).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&base).unwrap());
    let refs: J =
        serde_json::from_slice(&std::fs::read(fx("lora/smollm2/refs.json")).unwrap()).unwrap();
    let n = Adapter::slots_len(model.config());
    let mut files: Vec<(String, Vec<u8>)> = vec![];
    for name in ["plain", "rslora", "dora"] {
        files.push((
            format!("{name} (edgelora convert)"),
            convert(&format!("lora/smollm2/{name}"), &base, GgmlType::F16),
        ));
    }
    // Q8_0 adapter tensors (`adapter convert --dtype q8_0`): A is Q8_0 and runs against the
    // Q8_0-quantised activation; B (rows of r = 8 values) stays F16, as the converter says.
    for name in ["plain", "rslora"] {
        files.push((
            format!("{name} (edgelora convert q8_0)"),
            convert(&format!("lora/smollm2/{name}"), &base, GgmlType::Q8_0),
        ));
    }
    for name in ["plain", "rslora"] {
        files.push((
            format!("{name} (llama.cpp convert)"),
            std::fs::read(fx(&format!("lora/smollm2/{name}.llamacpp.gguf"))).unwrap(),
        ));
    }
    let mut results = vec![];
    for (label, bytes) in &files {
        let adapter_name = label.split(' ').next().unwrap();
        let ad = Adapter::parse(bytes).unwrap();
        let mut slots = vec![None; n];
        let b = ad.bind(&base, &model, &mut slots).unwrap();
        // The fast path (Q8 activations) is measured for our own files only, to keep the
        // test short; the reference path for all.
        let modes: &[KernelMode] = if label.contains("q8_0") {
            // What a Q8_0 A changes is the fast path's integer A x; the reference path
            // dequantises A (it read 138/138 for both files when measured).
            &[KernelMode::Fast]
        } else if label.contains("edgelora") {
            &[KernelMode::Reference, KernelMode::Fast]
        } else {
            &[KernelMode::Reference]
        };
        for &mode in modes {
            let (agree, total, max_d, forced, mm) = score(
                &model,
                &AdapterSet::single(&b, 1.0),
                &refs,
                adapter_name,
                mode,
            );
            println!(
                "smollm2 {label:<26} {mode:?}: top-1 vs PEFT {agree}/{total} ({:.1}%), max |dlogit| on PEFT top-5 {max_d:.2e}, misses at PEFT top-2 margins <= {mm:.2}",
                100.0 * agree as f64 / total as f64
            );
            results.push((label.clone(), mode, agree, total, max_d, forced, mm));
        }
    }
    for (label, mode, agree, total, max_d, forced, mm) in &results {
        if *mode == KernelMode::Fast {
            // The fast path rounds activations to 8 bits on a Q4_1 base: logits move by up to
            // ~2 here, and positions whose PEFT top-2 margin is small flip either way with the
            // summation order (F16 and Q8_0 files, before/after a RoPE rounding change: 130-136
            // of 138). What must hold: every position where PEFT's answer leads by more than
            // 0.5 is matched, and at least 92% overall.
            assert!(
                *mm <= 0.5,
                "{label} {mode:?}: missed a PEFT top-1 leading by {mm}"
            );
            assert!(
                *agree as f64 >= 0.92 * *total as f64,
                "{label} {mode:?}: {agree}/{total}"
            );
        } else if label.contains("edgelora") && *mode == KernelMode::Reference {
            assert!(*forced, "{label}: a confident PEFT top-1 was missed");
            assert!(*max_d < 0.05, "{label}: {max_d}");
            assert!(
                *agree as f64 >= 0.97 * *total as f64,
                "{label}: {agree}/{total}"
            );
        }
    }
    // Merged into the base (plain, F16 file): the adapted linears become F16 or Q8_0
    // matrices, the rest stays Q4_1; fast path, no adapter at run time.
    let plain = convert("lora/smollm2/plain", &base, GgmlType::F16);
    let ad = Adapter::parse(&plain).unwrap();
    let mut slots = vec![None; n];
    let b = ad.bind(&base, &model, &mut slots).unwrap();
    for ty in [GgmlType::F16, GgmlType::Q8_0] {
        let mut bufs = vec![];
        for l in 0..model.config().n_layers {
            for k in 0..LINEARS {
                let Some(p) = b.pair(l, k) else { continue };
                let w = *model.layer(l).unwrap().linear(k);
                let mut out = vec![0u8; merged_len(&w, ty).unwrap()];
                let mut row = vec![0f32; 2 * w.cols()];
                merge_into(
                    &w,
                    &[(*p, ad.alpha() / p.rank() as f32)],
                    ty,
                    &mut out,
                    &mut row,
                )
                .unwrap();
                bufs.push((l, k, w, out));
            }
        }
        assert_eq!(
            bufs.len(),
            8 * LINEARS,
            "the plain fixture adapts layers 0-7"
        );
        let mut merged = model.clone();
        for (l, k, w, out) in &bufs {
            *merged.layer_mut(*l).unwrap().linear_mut(*k) =
                edgelora::kernels::MatRef::new(ty, w.rows(), w.cols(), out).unwrap();
        }
        let mode = KernelMode::Fast;
        let (agree, total, max_d, forced, mm) =
            score(&merged, &AdapterSet::EMPTY, &refs, "plain", mode);
        let label = format!("plain (merged {})", ty.name());
        println!(
            "smollm2 {label:<26} {mode:?}: top-1 vs PEFT {agree}/{total} ({:.1}%), max |dlogit| on PEFT top-5 {max_d:.2e}, misses at PEFT top-2 margins <= {mm:.2}",
            100.0 * agree as f64 / total as f64
        );
        results.push((label, mode, agree, total, max_d, forced, mm));
    }
    // llama.cpp running its own converter's files (figures measured by
    // `bench/llamacpp_agreement.py --lora plain --lora rslora --write ...`). Both runtimes
    // round activations to 8 bits on a Q4_1 base, so near-tie positions flip either way (see
    // above; llama.cpp read 134/138 on plain). Every edgelora way of running the plain adapter
    // (unmerged F16/Q8_0, merged F16/Q8_0) must be within three positions (2%) of llama.cpp
    // or better; on rsLoRA, whose scale llama.cpp's converter gets wrong, ours must beat it
    // outright.
    let lc: J =
        serde_json::from_slice(&std::fs::read(fx("lora/smollm2/llamacpp_top1.json")).unwrap())
            .unwrap();
    for name in ["plain", "rslora"] {
        let theirs = lc["adapters"][name]["agree"].as_u64().unwrap() as usize;
        assert_eq!(lc["adapters"][name]["total"].as_u64(), Some(138));
        for (label, mode, agree, total, ..) in &results {
            if label.starts_with(name) && !label.contains("llama.cpp") {
                println!("smollm2 {label:<26} {mode:?}: {agree}/{total} against llama.cpp's {theirs}/138");
                if name == "plain" {
                    assert!(
                        *agree + 3 >= theirs,
                        "{label} {mode:?}: {agree} against llama.cpp {theirs}"
                    );
                } else {
                    assert!(
                        *agree > theirs,
                        "{label} {mode:?}: {agree} <= llama.cpp {theirs}"
                    );
                }
            }
        }
    }
    // Our rsLoRA conversion must be closer to PEFT than llama.cpp's.
    let get = |l: &str| {
        results
            .iter()
            .find(|r| r.0 == l && r.1 == KernelMode::Reference)
            .unwrap()
    };
    let (ours, theirs) = (
        get("rslora (edgelora convert)"),
        get("rslora (llama.cpp convert)"),
    );
    assert!(
        ours.4 < theirs.4,
        "rsLoRA: ours max |d| {} vs llama.cpp {}",
        ours.4,
        theirs.4
    );
}
