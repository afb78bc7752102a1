//! LoRA on a base of every quant type: the tiny mixed-quant llama (`tests/fixtures/kquant/`,
//! Q2_K..Q6_K, Q5_0/Q5_1, Q8_0, IQ4_NL/IQ4_XS, Q4_0/Q4_1 linears, quantised by ggml itself)
//! with a random all-linear adapter. Checks what must hold whatever the base type:
//! - merged into F32 (each linear dequantised exactly, plus `s B A`) equals the unmerged run on
//!   the reference path to f32 rounding;
//! - prefill equals token-by-token decode bit for bit with the adapter, on every table;
//! - the fast path with the adapter stays within the 8-bit activation noise of the reference
//!   path (same derived bound as `kquant_model.rs`: `5 rms(logits) 16/(127 sqrt 12) sqrt 9`).

mod common;

use edgelora::kernels::{KernelMode, MatRef};
use edgelora::lora::merge::{merge_into, merged_len};
use edgelora::lora::{Adapter, AdapterSet, LoraPair};
use edgelora::model::{state_buffer, Model, State, LINEARS};
use edgelora::quant::GgmlType;
use edgelora::Gguf;

fn base_bytes() -> Vec<u8> {
    common::fixture("kquant/tiny-mixed.gguf")
}

fn make_adapter(m: &Model<'_>, r: usize, seed: u64, alpha: f32) -> Vec<u8> {
    let spec = common::RandomAdapter {
        rank: r,
        alpha,
        amp: 0.2,
        fingerprint: None,
        linears: None,
        layers: None,
    };
    spec.build(m, |l, k| {
        let i = (l * 10 + k) as u64;
        (seed + i, seed + 1000 + i)
    })
}

fn run(
    m: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    toks: &[u32],
    mode: KernelMode,
    kernel: Option<&'static edgelora::kernels::Kernel>,
) -> Vec<Vec<f32>> {
    let cfg = *m.config();
    let mut buf = state_buffer(&cfg, 64);
    let mut st = State::new(&cfg, 64, &mut buf).unwrap();
    st.set_kernel_mode(mode);
    st.set_kernel(kernel);
    toks.iter()
        .enumerate()
        .map(|(p, &t)| m.forward_with(t, p, &mut st, set).unwrap().to_vec())
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn lora_on_every_base_type() {
    let bytes = base_bytes();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let ab = make_adapter(&model, 8, 7, 8.0);
    let ad = Adapter::parse(&ab).unwrap();
    let mut slots = vec![None; Adapter::slots_len(&cfg)];
    let b = ad.bind(&g, &model, &mut slots).unwrap();
    let set = AdapterSet::single(&b, 1.0);
    let toks: Vec<u32> = (0..20u32)
        .map(|i| (i * 53 + 11) % cfg.vocab as u32)
        .collect();

    let base_ref = run(
        &model,
        &AdapterSet::EMPTY,
        &toks,
        KernelMode::Reference,
        None,
    );
    let lora_ref = run(&model, &set, &toks, KernelMode::Reference, None);
    let moved = max_diff(&base_ref, &lora_ref);
    assert!(moved > 0.1, "the adapter must change the logits ({moved})");

    // Merged into F32: the K-quant base dequantised exactly, plus s B A.
    let mut merged = model.clone();
    let mut bufs = vec![];
    let mut types = std::collections::BTreeSet::new();
    for l in 0..cfg.n_layers {
        for k in 0..LINEARS {
            let w = *model.layer(l).unwrap().linear(k);
            types.insert(w.ty().name());
            let p: LoraPair = *b.pair(l, k).unwrap();
            let mut out = vec![0u8; merged_len(&w, GgmlType::F32).unwrap()];
            let mut row = vec![0f32; 2 * w.cols()];
            merge_into(
                &w,
                &[(p, ad.alpha() / p.rank() as f32)],
                GgmlType::F32,
                &mut out,
                &mut row,
            )
            .unwrap();
            bufs.push((l, k, w, out));
        }
    }
    for (l, k, w, out) in &bufs {
        *merged.layer_mut(*l).unwrap().linear_mut(*k) =
            MatRef::new(GgmlType::F32, w.rows(), w.cols(), out).unwrap();
    }
    let merged_ref = run(
        &merged,
        &AdapterSet::EMPTY,
        &toks,
        KernelMode::Reference,
        None,
    );
    let scale = lora_ref.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
    let d = max_diff(&lora_ref, &merged_ref);
    println!(
        "lora on {} linears of types {types:?}: unmerged vs merged-F32 (reference path) max |dlogit| {d:.2e} (max |logit| {scale:.1}); adapter moved logits by {moved:.2}",
        bufs.len()
    );
    assert!(
        types.len() >= 10,
        "the fixture covers the quant types: {types:?}"
    );
    assert!(d < 1e-4 * scale, "unmerged vs merged: {d}");

    // Fast path with the adapter, per table: within the 8-bit activation noise of the
    // reference, and prefill == decode bit for bit.
    let rms = (lora_ref.iter().flatten().map(|v| v * v).sum::<f32>()
        / lora_ref.iter().flatten().count() as f32)
        .sqrt();
    let bound = 5.0 * rms * 16.0 / (127.0 * 12f32.sqrt()) * 3.0;
    for kernel in common::tables("LoRA on the mixed-quant base") {
        let fast = run(&model, &set, &toks, KernelMode::Fast, Some(kernel));
        let d = max_diff(&fast, &lora_ref);
        println!(
            "[{}] fast vs reference with the adapter: max |dlogit| {d:.3} (bound {bound:.3})",
            kernel.isa().name()
        );
        assert!(d < bound, "[{}] {d} >= {bound}", kernel.isa().name());
        let mut buf = state_buffer(&cfg, 64);
        let mut st = State::new(&cfg, 64, &mut buf).unwrap();
        st.set_kernel(Some(kernel));
        let pre = model
            .prefill_with(&toks, 0, &mut st, &set)
            .unwrap()
            .to_vec();
        assert_eq!(
            pre.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            fast.last()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
            "[{}] prefill with the adapter differs from decode",
            kernel.isa().name()
        );
    }
}
