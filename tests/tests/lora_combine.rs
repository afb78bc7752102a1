//! `adapter combine` parity against PEFT's `add_weighted_adapter` (fixtures from
//! `tests/fixtures/lora/combine/make_fixtures.py`).
//!
//! The PEFT adapters under `fixtures/lora/tiny/` and `fixtures/lora/combine/wide/` are converted
//! by edgelora's converter (F32, so storage rounding hides nothing) for the tiny base, combined
//! by `edgelora::lora::combine`, and the effective update `alpha/r * B A` of three modules is
//! compared with PEFT's `get_delta_weight` of the combined adapter: relative Frobenius error
//! below 1e-5 for every method (both sides are f32 arithmetic on identical numbers; the SVD
//! paths differ in algorithm, which costs ~1e-7). DARE replays PEFT's recorded
//! `torch.bernoulli` masks for those modules.

mod common;

use edgelora::error::ErrorKind;
use edgelora::format::safetensors::SafeTensors;
use edgelora::lora::combine::{
    combine, combine_module, CombineInput, CombineOptions, GivenMasks, Lora, MaskFor, MaskSource,
    Method, SeededMasks, SignMethod,
};
use edgelora::lora::convert::{convert_peft, permute_rows_for_rope, ConvertOptions};
use edgelora::lora::{parse_target, Adapter, AdapterSet};
use edgelora::model::{state_buffer, KernelMode, Model, State};
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use serde_json::Value as J;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn fx(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(p)
}

const DIRS: [(&str, &str); 6] = [
    ("plain", "lora/tiny/plain"),
    ("rslora", "lora/tiny/rslora"),
    ("qv", "lora/tiny/qv"),
    ("wide", "lora/combine/wide"),
    ("dora", "lora/tiny/dora"),
    ("head", "lora/tiny/head"),
];

struct Setup {
    base: Vec<u8>,
    adapters: BTreeMap<&'static str, Vec<u8>>,
    heads: (usize, usize),
}

/// Convert every input (F32), or `None` after printing SKIPPED when a fixture is missing.
fn setup() -> Option<Setup> {
    let base_p = fx("tiny/tiny-f32.gguf");
    let Ok(base) = std::fs::read(&base_p) else {
        println!("SKIPPED: {} is absent", base_p.display());
        return None;
    };
    let g = Gguf::parse(&base).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&g).unwrap());
    let heads = (model.config().n_heads, model.config().n_kv_heads);
    let mut adapters = BTreeMap::new();
    for (name, dir) in DIRS {
        let d = fx(dir);
        let (Ok(cfg), Ok(st)) = (
            std::fs::read(d.join("adapter_config.json")),
            std::fs::read(d.join("adapter_model.safetensors")),
        ) else {
            println!(
                "SKIPPED: PEFT adapter {} is absent (make_fixtures.py)",
                d.display()
            );
            return None;
        };
        let opts = ConvertOptions {
            dtype: GgmlType::F32,
            task: Some(name.into()),
        };
        let bytes = convert_peft(&cfg, &st, &g, &opts)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .0;
        adapters.insert(name, bytes);
    }
    Some(Setup {
        base,
        adapters,
        heads,
    })
}

/// Rows of `x` (cols wide) in GGUF order for `target` (llama's rope permutation of q/k rows).
fn gguf_rows(x: &[f32], target: &str, cols: usize, heads: (usize, usize)) -> Vec<f32> {
    match parse_target(target) {
        Some((_, lin @ (0 | 1))) => {
            let h = if lin == 0 { heads.0 } else { heads.1 };
            let rows = x.len() / cols;
            permute_rows_for_rope(x, h, rows / h, cols)
        }
        _ => x.to_vec(),
    }
}

/// `alpha / r * B A` of `target` in an adapter file (n_out x n_in).
fn effective(ad: &Adapter<'_>, target: &str) -> Option<Vec<f32>> {
    let (_, p) = ad.pairs().find(|(n, _)| *n == target)?;
    let (r, n_in, n_out) = (p.rank(), p.a.cols(), p.b.rows());
    let mut a = vec![0f32; r * n_in];
    for (k, row) in a.chunks_exact_mut(n_in).enumerate() {
        p.a.dequantize_row(k, row).unwrap();
    }
    let mut b = vec![0f32; n_out * r];
    for (o, row) in b.chunks_exact_mut(r).enumerate() {
        p.b.dequantize_row(o, row).unwrap();
    }
    let l = Lora {
        a,
        b,
        r,
        n_in,
        n_out,
        scale: ad.alpha() / r as f32,
    };
    Some(l.delta())
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let d: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).powi(2))
        .sum();
    let n: f64 = want.iter().map(|w| (*w as f64).powi(2)).sum();
    (d / n).sqrt()
}

/// Given masks where PEFT's were recorded, seeded ones elsewhere.
struct Replay {
    given: GivenMasks,
    rest: SeededMasks,
}

impl MaskSource for Replay {
    fn mask(
        &mut self,
        module: &str,
        input: usize,
        of: MaskFor,
        keep: &mut [f32],
    ) -> edgelora::error::Result<()> {
        if self.given.mask(module, input, of, keep).is_ok() {
            return Ok(());
        }
        self.rest.mask(module, input, of, keep)
    }
}

#[test]
fn combine_matches_peft() {
    let Some(s) = setup() else { return };
    let refs_b = std::fs::read(fx("lora/combine/refs.safetensors")).unwrap();
    let refs = SafeTensors::parse(&refs_b).unwrap();
    let cases: J =
        serde_json::from_slice(&std::fs::read(fx("lora/combine/cases.json")).unwrap()).unwrap();
    let modules: Vec<String> = cases["saved_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let get = |k: &str| {
        refs.tensors
            .iter()
            .find(|t| t.name == k)
            .map(|t| t.to_f32())
    };
    let parsed: BTreeMap<&str, Adapter> = s
        .adapters
        .iter()
        .map(|(n, b)| (*n, Adapter::parse(b).unwrap()))
        .collect();
    let mut n_checked = 0;
    let mut n_logits = 0;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let method = Method::parse(case["method"].as_str().unwrap()).unwrap();
        let names: Vec<&str> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let weights: Vec<f32> = case["weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let inputs: Vec<CombineInput> = names
            .iter()
            .zip(&weights)
            .map(|(n, w)| CombineInput {
                adapter: &parsed[n],
                weight: *w,
                label: n,
            })
            .collect();
        let mut opts = CombineOptions::new(method);
        opts.dtype = GgmlType::F32;
        opts.density = case.get("density").and_then(J::as_f64);
        opts.rank = case.get("rank").and_then(J::as_u64).map(|r| r as usize);
        // PEFT's masks for the saved modules, rows permuted like B for q/k.
        let mut given = GivenMasks::default();
        for m in &modules {
            for (i, _) in names.iter().enumerate() {
                for (of, tag) in [
                    (MaskFor::A, "A"),
                    (MaskFor::B, "B"),
                    (MaskFor::Delta, "delta"),
                ] {
                    let key = format!("{name}/{m}/mask/{i}/{tag}");
                    if let (Some(t), Some(mask)) =
                        (refs.tensors.iter().find(|t| t.name == key), get(&key))
                    {
                        let cols = t.shape[1];
                        let mask = if of == MaskFor::A {
                            mask
                        } else {
                            gguf_rows(&mask, m, cols, s.heads)
                        };
                        given.insert(m, i, of, mask);
                    }
                }
            }
        }
        if method.is_dare() {
            assert!(
                !given.masks.is_empty(),
                "{name}: no PEFT masks in the fixture"
            );
        }
        let mut masks = Replay {
            given,
            rest: SeededMasks {
                seed: 1,
                density: opts.density.unwrap_or(1.0),
            },
        };
        let (bytes, rep) =
            combine(&inputs, &opts, &mut masks, Some(1)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            rep.rank as u64,
            case["new_r"].as_u64().unwrap(),
            "{name}: PEFT's new rank"
        );
        let out = Adapter::parse(&bytes).unwrap();
        // It binds to the base like any converted adapter.
        let g = Gguf::parse(&s.base).unwrap();
        let model: Box<Model> = Box::new(Model::from_gguf(&g).unwrap());
        let mut slots = vec![None; Adapter::slots_len(model.config())];
        out.bind(&g, &model, &mut slots)
            .unwrap_or_else(|e| panic!("{name}: bind: {e}"));
        if let Some(want) = get(&format!("{name}/logits")) {
            let toks: Vec<u32> = cases["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect();
            let cfg = *model.config();
            let bound = out.bind(&g, &model, &mut slots).unwrap();
            let set = AdapterSet::single(&bound, 1.0);
            let mut buf = state_buffer(&cfg, toks.len());
            let mut st = State::new(&cfg, toks.len(), &mut buf).unwrap();
            st.set_kernel_mode(KernelMode::Reference);
            let got: Vec<f32> = toks
                .iter()
                .enumerate()
                .flat_map(|(p, &t)| model.forward_with(t, p, &mut st, &set).unwrap().to_vec())
                .collect();
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            println!("{name:<20} logits vs transformers+PEFT: max |d| {diff:.2e} (max |logit| {scale:.2e})");
            // Same tolerance as lora_peft.rs: f32 on both sides from identical weights.
            assert!(diff <= 1e-4 * scale, "{name}: logits differ by {diff}");
            n_logits += 1;
        }
        for m in &modules {
            let want = get(&format!("{name}/{m}")).unwrap();
            let n_in = want.len() / out.pairs().find(|(n, _)| n == m).unwrap().1.b.rows();
            let want = gguf_rows(&want, m, n_in, s.heads);
            let got = effective(&out, m).unwrap_or_else(|| panic!("{name}: {m} missing"));
            let e = rel_err(&got, &want);
            println!("{name:<20} {m:<22} rel err {e:.2e}");
            assert!(e < 1e-5, "{name} {m}: relative error {e:.3e} vs PEFT");
            n_checked += 1;
        }
    }
    assert!(n_checked >= 30, "only {n_checked} module checks ran");
    assert!(n_logits >= 8, "only {n_logits} logits checks ran");
}

/// DARE: a seed reproduces the file; another seed gives another file; and over many seeds the
/// mean of the mixed A (and B) approaches the `linear` one.
///
/// Bound: each element of DARE's A is `sum_i c_i A_i m_i / d` with independent Bernoulli(d)
/// masks `m_i`, so it is unbiased for linear's `sum_i c_i A_i` with variance
/// `sum_i (c_i A_i)^2 (1 - d) / d`. The mean of N independent draws has
/// `E ||mean - linear||^2 = V / N` with `V` the summed variance; by Markov's inequality
/// `P(||mean - linear||^2 > 1000 V / N) < 1e-3`. (The masks here are a fixed deterministic
/// SplitMix64 stream, so the test itself is deterministic; the bound says why it is not luck.)
/// B works the same way, and with independent A and B masks `E[B'A'] = E[B'] E[A']`: DARE's
/// expected product is linear's product.
#[test]
fn dare_seeded_and_unbiased() {
    let Some(s) = setup() else { return };
    let plain = Adapter::parse(&s.adapters["plain"]).unwrap();
    let wide = Adapter::parse(&s.adapters["wide"]).unwrap();
    let inputs = [
        CombineInput {
            adapter: &plain,
            weight: 0.7,
            label: "plain",
        },
        CombineInput {
            adapter: &wide,
            weight: 0.5,
            label: "wide",
        },
    ];
    let mut o = CombineOptions::new(Method::DareTies);
    o.density = Some(0.5);
    let run = |seed| {
        let mut m = SeededMasks { seed, density: 0.5 };
        combine(&inputs, &o, &mut m, Some(seed)).unwrap().0
    };
    assert_eq!(run(3), run(3), "same seed, same bytes");
    assert_ne!(run(3), run(4), "another seed, another file");

    // One module, through the module-level API.
    let target = "blk.1.attn_q.weight";
    let load = |ad: &Adapter| {
        let (_, p) = ad.pairs().find(|(n, _)| *n == target).unwrap();
        let (r, n_in, n_out) = (p.rank(), p.a.cols(), p.b.rows());
        let mut a = vec![0f32; r * n_in];
        for (k, row) in a.chunks_exact_mut(n_in).enumerate() {
            p.a.dequantize_row(k, row).unwrap();
        }
        let mut b = vec![0f32; n_out * r];
        for (k, row) in b.chunks_exact_mut(r).enumerate() {
            p.b.dequantize_row(k, row).unwrap();
        }
        Lora {
            a,
            b,
            r,
            n_in,
            n_out,
            scale: ad.alpha() / r as f32,
        }
    };
    let (lp, lw) = (load(&plain), load(&wide));
    let parts = [(0usize, 0.7f32, &lp), (1usize, 0.5f32, &lw)];
    let lin = combine_module(
        target,
        &parts,
        &CombineOptions::new(Method::Linear),
        8,
        &mut SeededMasks {
            seed: 0,
            density: 1.0,
        },
    )
    .unwrap();
    let d = 0.3f64;
    let mut od = CombineOptions::new(Method::DareLinear);
    od.density = Some(d);
    let n = 400;
    let mut sum_a = vec![0f64; lin.a.len()];
    let mut sum_b = vec![0f64; lin.b.len()];
    for seed in 0..n {
        let mut m = SeededMasks { seed, density: d };
        let x = combine_module(target, &parts, &od, 8, &mut m).unwrap();
        for (s, v) in sum_a.iter_mut().zip(&x.a) {
            *s += *v as f64;
        }
        for (s, v) in sum_b.iter_mut().zip(&x.b) {
            *s += *v as f64;
        }
    }
    for (which, sum, lin_t, ins) in [
        ("A", &sum_a, &lin.a, [&lp.a, &lw.a]),
        ("B", &sum_b, &lin.b, [&lp.b, &lw.b]),
    ] {
        // c_i: sqrt(|w_i s_i|), sign on A only (all positive here).
        let c: Vec<f64> = parts
            .iter()
            .map(|(_, w, l)| (*w as f64 * l.scale as f64).abs().sqrt())
            .collect();
        let var: f64 = (0..lin_t.len())
            .map(|e| {
                (0..2)
                    .map(|i| (c[i] * ins[i][e] as f64).powi(2) * (1.0 - d) / d)
                    .sum::<f64>()
            })
            .sum();
        let err2: f64 = sum
            .iter()
            .zip(lin_t.iter())
            .map(|(s, l)| (s / n as f64 - *l as f64).powi(2))
            .sum();
        let bound = 1000.0 * var / n as f64;
        println!(
            "DARE mean of {n} seeds, {which}: ||mean - linear||^2 = {err2:.3e}, E = {:.3e}, bound {bound:.3e}",
            var / n as f64
        );
        assert!(err2 < bound, "{which}: {err2} >= {bound}");
        // And one draw is far from linear (the masks do act).
        assert!(var > 100.0 * err2);
    }
}

/// Byte-patch a u64 metadata value (the fingerprints) in a GGUF.
fn patch_u64(bytes: &mut [u8], key: &str, v: u64) {
    let pos = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap();
    let at = pos + key.len() + 4; // after the type id
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn combine_refusals() {
    let Some(s) = setup() else { return };
    let p = |n: &str| Adapter::parse(&s.adapters[n]).unwrap();
    let (plain, qv, dora, head) = (p("plain"), p("qv"), p("dora"), p("head"));
    let inp = |a, l| CombineInput {
        adapter: a,
        weight: 1.0,
        label: l,
    };
    let mut m = SeededMasks {
        seed: 0,
        density: 0.5,
    };
    let go = |ins: &[CombineInput], o: &CombineOptions, m: &mut SeededMasks| {
        combine(ins, o, m, None).map(|_| ()).unwrap_err()
    };
    // Rank mismatch for linear (PEFT: "All adapters must have the same r value").
    let e = go(
        &[inp(&plain, "plain"), inp(&qv, "qv")],
        &CombineOptions::new(Method::Linear),
        &mut m,
    );
    assert_eq!(e.kind(), ErrorKind::ShapeMismatch, "{e}");
    assert!(e.to_string().contains("qv"), "{e}");
    // Bad density, density where unused, rank where unused, unknown method.
    let mut o = CombineOptions::new(Method::Ties);
    o.density = Some(-0.1);
    let e = go(&[inp(&plain, "plain"), inp(&plain, "b")], &o, &mut m);
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(e.to_string().contains("density"), "{e}");
    o.density = None;
    assert_eq!(
        go(&[inp(&plain, "plain"), inp(&plain, "b")], &o, &mut m).kind(),
        ErrorKind::InvalidArgument
    );
    let mut o = CombineOptions::new(Method::Cat);
    o.rank = Some(4);
    assert_eq!(
        go(&[inp(&plain, "plain"), inp(&qv, "qv")], &o, &mut m).kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        Method::parse("lerp").unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    // Different base: another shape fingerprint (and exact fingerprint).
    let mut other = s.adapters["qv"].clone();
    patch_u64(&mut other, "adapter.edgelora.base_shape_fingerprint", 1);
    patch_u64(&mut other, "adapter.edgelora.base_fingerprint", 2);
    let other = Adapter::parse(&other).unwrap();
    let e = go(
        &[inp(&plain, "plain"), inp(&other, "other.gguf")],
        &CombineOptions::new(Method::Cat),
        &mut m,
    );
    assert_eq!(e.kind(), ErrorKind::BadValue);
    assert!(e.to_string().contains("other.gguf"), "{e}");
    // DoRA and head-replacing inputs.
    for (a, l) in [(&dora, "dora.gguf"), (&head, "head.gguf")] {
        let e = go(
            &[inp(&plain, "plain"), inp(a, l)],
            &CombineOptions::new(Method::Cat),
            &mut m,
        );
        assert_eq!(e.kind(), ErrorKind::BadValue, "{e}");
        assert!(e.to_string().contains(l), "{e}");
    }
    // One input: PEFT uses linear, so density and rank would do nothing.
    let mut o = CombineOptions::new(Method::Svd);
    o.rank = Some(4);
    let e = go(&[inp(&plain, "plain")], &o, &mut m);
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    // Missing PEFT mask is an error, not a silent fallback.
    let mut g = GivenMasks::default();
    let mut k = vec![0f32; 4];
    assert!(g
        .mask("blk.0.attn_q.weight", 0, MaskFor::A, &mut k)
        .is_err());
    let _ = SignMethod::Frequency;
}

/// End to end on the committed tiny task adapters: `cat` with weights (1, 1), and `svd` with
/// rank = the sum of the ranks (no truncation), are exact, so their single adapter must give
/// the logits of running both inputs unmerged at scale 1 (same kernels, the reference path;
/// the f32 files differ from the unmerged pair only by summation order).
#[test]
fn combined_runs_like_the_unmerged_pair() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let paths = [
        root.join("models/tiny/tiny-base.gguf"),
        root.join("models/tiny/intent/adapter.gguf"),
        root.join("models/tiny/reply/adapter.gguf"),
    ];
    let mut bytes = vec![];
    for p in &paths {
        match std::fs::read(p) {
            Ok(b) => bytes.push(b),
            Err(_) => {
                println!("SKIPPED: {} is absent", p.display());
                return;
            }
        }
    }
    let base = Gguf::parse(&bytes[0]).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&base).unwrap());
    let cfg = *model.config();
    let (ia, ra) = (
        Adapter::parse(&bytes[1]).unwrap(),
        Adapter::parse(&bytes[2]).unwrap(),
    );
    let run = |set: &AdapterSet| {
        let toks: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % cfg.vocab as u32).collect();
        let mut buf = state_buffer(&cfg, toks.len());
        let mut st = State::new(&cfg, toks.len(), &mut buf).unwrap();
        st.set_kernel_mode(KernelMode::Reference);
        toks.iter()
            .enumerate()
            .flat_map(|(p, &t)| model.forward_with(t, p, &mut st, set).unwrap().to_vec())
            .collect::<Vec<f32>>()
    };
    let mut s1 = vec![None; Adapter::slots_len(&cfg)];
    let mut s2 = vec![None; Adapter::slots_len(&cfg)];
    let bi = ia.bind(&base, &model, &mut s1).unwrap();
    let br = ra.bind(&base, &model, &mut s2).unwrap();
    let mut pair = AdapterSet::single(&bi, 1.0);
    pair.push(&br, 1.0).unwrap();
    let want = run(&pair);
    let base_only = run(&AdapterSet::EMPTY);
    let inputs = [
        CombineInput {
            adapter: &ia,
            weight: 1.0,
            label: "intent",
        },
        CombineInput {
            adapter: &ra,
            weight: 1.0,
            label: "reply",
        },
    ];
    let total_rank = ia.max_rank() + ra.max_rank();
    for (method, rank) in [(Method::Cat, None), (Method::Svd, Some(total_rank))] {
        let mut o = CombineOptions::new(method);
        o.dtype = GgmlType::F32;
        o.rank = rank;
        let mut m = SeededMasks {
            seed: 0,
            density: 1.0,
        };
        let (b, _) = combine(&inputs, &o, &mut m, None).unwrap();
        let c = Adapter::parse(&b).unwrap();
        assert_eq!(
            c.gguf().get_str("adapter.edgelora.task").unwrap(),
            "intent+reply"
        );
        let mut s3 = vec![None; Adapter::slots_len(&cfg)];
        let bc = c.bind(&base, &model, &mut s3).unwrap();
        let got = run(&AdapterSet::single(&bc, 1.0));
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        let moved = base_only
            .iter()
            .zip(&want)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        println!(
            "{}: max |dlogit| vs unmerged pair {diff:.2e} (adapters move logits by {moved:.2e}, max |logit| {scale:.2e})",
            method.name()
        );
        assert!(moved > 1e-2, "the adapters should change the logits");
        assert!(diff <= 1e-4 * scale, "{}: {diff}", method.name());
    }
}
