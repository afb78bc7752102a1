//! `merge --type base` ([`merge_model`] with [`MergeType::Base`]): each merged tensor is
//! dequantised, gets `s B A`, and is re-quantised into its own type by the type table's
//! quantiser. On the tiny mixed-quant llama (`fixtures/kquant/tiny-mixed.gguf`, twelve weight
//! types) and on SmolLM2-135M Q4_K_M (Q4_K/Q6_K `ffn_down`, Q5_0/Q8_0 elsewhere):
//! - every tensor keeps its type; untargeted tensors are byte-identical; each merged tensor is
//!   byte-identical to the table's quantiser applied to the exact (F32) merge;
//! - a target whose type has no quantiser (Q2_K since the Q3_K and IQ4 quantisers landed) is refused with a typed
//!   error naming the tensor and the type, before anything is merged;
//! - the merged model's logits stay close to the unmerged run, within a bound derived from the
//!   re-quantisation errors [`merge_model`] reports, and closer to it than the base's (the
//!   update is kept, not lost).
//!
//! The bounds. Merge reports, per tensor `t`, `e_t = ||stored - exact||_F / ||exact||_F` (the
//! relative RMS rounding error, [`MergeStats::rel_rms`]); the unmerged run shares every other
//! weight with the merged one bit for bit, so these errors are the only difference.
//! 1. A-priori, as `quantize_model.rs` bounds `edgelora quantize`: a rounding error
//!    uncorrelated with the input perturbs the linear's output by the relative RMS `e_t`, errors
//!    of different matrices are independent and add in quadrature, so
//!    `rms(dlogits) / rms(logits) <= 3 sqrt(sum_t e_t^2)` (3: gain of norms, SiLU, softmax).
//!    It ignores that each layer adds only part of the residual stream, so on 30 layers it is
//!    loose.
//! 2. Calibrated on the network itself: a twin of the merged model whose tensors are the exact
//!    merge plus independent uniform noise of the same per-tensor RMS `e_t ||exact||`. To
//!    first order both perturbations are sums of ~10^5..10^8 independent per-weight errors
//!    through the same Jacobian, so their logit deviations have the same variance and the two
//!    RMS over all logits agree well within a factor 2; rounding that is not like independent
//!    noise (a bias, a wrong scale or block, a lost update) breaks it. Asserted:
//!    `rms(merged - unmerged) <= 2 rms(twin - unmerged)`.
//!
//! Everything runs on the reference path (no kernel table), so the verdict does not depend on
//! the CPU; the fast path of the merged file is then checked per table against its own
//! reference within the 8-bit activation noise bound of `kquant_model.rs`.

mod common;

use edgelora::error::ErrorKind;
use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::kernels::reference::{has_quantizer, quantize_row};
use edgelora::kernels::{KernelMode, MatRef};
use edgelora::lora::merge::{merge_into, merge_model, merged_len, MergeStats, MergeType};
use edgelora::lora::{parse_target, Adapter, AdapterSet, BoundAdapter};
use edgelora::model::{state_buffer, Model, State};
use edgelora::quant::GgmlType;
use edgelora::Gguf;

const SMOLLM2_QKM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_K_M.gguf"
);

/// Logits at every position, teacher-forced, on the reference path or on `kernel`'s table.
fn run(
    m: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    toks: &[u32],
    kernel: Option<&'static edgelora::kernels::Kernel>,
) -> Vec<Vec<f32>> {
    let cfg = *m.config();
    let mut buf = state_buffer(&cfg, 64);
    let mut st = State::new(&cfg, 64, &mut buf).unwrap();
    st.set_kernel_mode(if kernel.is_some() {
        KernelMode::Fast
    } else {
        KernelMode::Reference
    });
    st.set_kernel(kernel);
    toks.iter()
        .enumerate()
        .map(|(p, &t)| m.forward_with(t, p, &mut st, set).unwrap().to_vec())
        .collect()
}

fn rms(x: &[Vec<f32>]) -> f64 {
    let n = x.iter().map(Vec::len).sum::<usize>().max(1);
    (x.iter().flatten().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).sqrt()
}

fn rms_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let d: Vec<Vec<f32>> = a
        .iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
        .collect();
    rms(&d)
}

/// A random adapter on every linear of `m`, keeping only the targets `keep(name, type)` accepts.
fn adapter_for(
    m: &Model<'_>,
    base: &Gguf<'_>,
    rank: usize,
    amp: f32,
    keep: impl Fn(&str, GgmlType) -> bool,
) -> Vec<u8> {
    let full = common::RandomAdapter {
        rank,
        alpha: rank as f32,
        amp,
        fingerprint: None,
        linears: None,
        layers: None,
    }
    .build(m, |l, k| {
        let i = (l * 10 + k) as u64;
        (900 + i, 1900 + i)
    });
    let g = Gguf::parse(&full).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, OwnedValue::from_value(&v));
    }
    for t in g.tensors() {
        let target = t.name.rsplit_once('.').unwrap().0;
        if keep(target, base.tensor(target).unwrap().ty) {
            w.add_tensor(t.name, t.ty, t.dims(), t.data.to_vec())
                .unwrap();
        }
    }
    w.to_bytes()
}

/// Merge `ad` into `base` with `--type base` and check everything the module doc lists.
/// Returns the names of the types merged into.
fn check_merge(
    label: &str,
    base_bytes: &[u8],
    ad_bytes: &[u8],
    toks: &[u32],
) -> std::collections::BTreeSet<&'static str> {
    let base = Gguf::parse(base_bytes).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&base).unwrap());
    let ad = Adapter::parse(ad_bytes).unwrap();
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    let b: BoundAdapter = ad.bind(&base, &model, &mut slots).unwrap();
    let set = AdapterSet::single(&b, 1.0);

    let mut reports: Vec<(String, GgmlType, GgmlType, MergeStats)> = vec![];
    let out = merge_model(&base, &model, &[(&b, 1.0)], MergeType::Base, |r| {
        reports.push((r.name.to_string(), r.from, r.to, r.stats))
    })
    .unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(reports.len(), ad.n_pairs(), "{label}: one report per pair");
    if let Ok(dir) = std::env::var("EDGELORA_MERGE_BASE_OUT") {
        // For the one-off llama.cpp load check (README, merge section).
        std::fs::write(format!("{dir}/{label}.merged-base.gguf"), &out).unwrap();
        std::fs::write(format!("{dir}/{label}.adapter.gguf"), ad_bytes).unwrap();
    }
    let merged = Gguf::parse(&out).unwrap();
    assert_eq!(merged.tensors().count(), base.tensors().count());
    let mut types = std::collections::BTreeSet::new();
    let mut sum_e2 = 0.0;
    let mut twins = vec![];
    for t in base.tensors() {
        let m = merged.tensor(t.name).unwrap();
        assert_eq!((m.ty, m.dims()), (t.ty, t.dims()), "{label}: {}", t.name);
        let Some((name, _, to, st)) = reports.iter().find(|r| r.0 == t.name) else {
            assert_eq!(m.data, t.data, "{label}: untargeted {} changed", t.name);
            continue;
        };
        types.insert(to.name());
        assert_ne!(m.data, t.data, "{label}: {name} was not merged");
        // Byte-identical to the table's quantiser applied to the exact merge.
        let (l, k) = parse_target(name).unwrap();
        let w = *model.layer(l).unwrap().linear(k);
        let p = *b.pair(l, k).unwrap();
        let mut f = vec![0u8; merged_len(&w, GgmlType::F32).unwrap()];
        let mut row = vec![0f32; 2 * w.cols()];
        let s = ad.alpha() / p.rank() as f32;
        let st32 = merge_into(&w, &[(p, s)], GgmlType::F32, &mut f, &mut row).unwrap();
        assert_eq!(st32.err_norm, 0.0);
        assert!((st32.merged_norm - st.merged_norm).abs() <= 1e-12 * st.merged_norm);
        let exact: Vec<f32> = f
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let rb = to.row_bytes(w.cols() as u64).unwrap() as usize;
        let mut want = vec![0u8; rb * w.rows()];
        for (x, y) in exact.chunks_exact(w.cols()).zip(want.chunks_exact_mut(rb)) {
            assert!(quantize_row(*to, x, y));
        }
        assert!(
            m.data == want,
            "{label}: {name} is not quantize({})",
            to.name()
        );
        assert!(
            st.err_norm > 0.0 && st.rel_rms() < 0.2,
            "{label}: {name} {st:?}"
        );
        sum_e2 += st.rel_rms().powi(2);
        // The calibration twin: the exact merge plus independent uniform noise of the same
        // RMS as this tensor's rounding error (stored as F16, whose own rounding is ~2^-12
        // relative, far below any quantiser's).
        let a = 3f32.sqrt() * (st.err_norm / (exact.len() as f64).sqrt()) as f32;
        let noise = common::rnd(7_000 + twins.len() as u64, exact.len(), a);
        let noisy: Vec<f32> = exact.iter().zip(&noise).map(|(x, n)| x + n).collect();
        twins.push((l, k, w.rows(), w.cols(), common::f16_bytes(&noisy)));
    }

    let mmodel: Box<Model> = Box::new(Model::from_gguf(&merged).unwrap());
    let base_l = run(&model, &AdapterSet::EMPTY, toks, None);
    let lora_l = run(&model, &set, toks, None);
    let merged_l = run(&mmodel, &AdapterSet::EMPTY, toks, None);
    let scale = rms(&lora_l);
    let rel = rms_diff(&merged_l, &lora_l) / scale;
    let moved = rms_diff(&base_l, &lora_l) / scale;
    let mut twin = model.clone();
    for (l, k, rows, cols, data) in &twins {
        *twin.layer_mut(*l).unwrap().linear_mut(*k) =
            MatRef::new(GgmlType::F16, *rows, *cols, data).unwrap();
    }
    let twin_rel = rms_diff(&run(&twin, &AdapterSet::EMPTY, toks, None), &lora_l) / scale;
    let bound = 3.0 * sum_e2.sqrt();
    println!(
        "{label}: {} tensors merged into their own types {types:?}; rms(dlogits)/rms(logits) \
         merged vs unmerged {rel:.2e}; noise twin {twin_rel:.2e} (ratio {:.2}, bound 2); \
         a-priori bound 3 sqrt(sum e_t^2) = {bound:.2e}; the adapter moves logits by {moved:.2e}",
        reports.len(),
        rel / twin_rel
    );
    assert!(rel <= bound, "{label}: {rel} > {bound}");
    assert!(
        rel <= 2.0 * twin_rel,
        "{label}: merged {rel} vs independent noise of the same size {twin_rel}"
    );
    assert!(
        rel < 0.5 * moved,
        "{label}: merged file lost the update ({rel} vs adapter effect {moved})"
    );

    // The merged file on the fast path, per table: within the 8-bit activation noise of its
    // own reference path (`kquant_model.rs`'s bound, 5 rms(logits) 16/(127 sqrt 12) sqrt 9).
    let fast_bound = 5.0 * rms(&merged_l) as f32 * 16.0 / (127.0 * 12f32.sqrt()) * 3.0;
    for kernel in common::tables(label) {
        let fast = run(&mmodel, &AdapterSet::EMPTY, toks, Some(kernel));
        let d = fast
            .iter()
            .flatten()
            .zip(merged_l.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!(
            "[{}] {label} merged, fast vs reference: max |dlogit| {d:.3} (bound {fast_bound:.3})",
            kernel.isa().name()
        );
        assert!(d < fast_bound, "[{}] {label}: {d}", kernel.isa().name());
    }
    types
}

#[test]
fn tiny_mixed_merge_base_keeps_types() {
    let bytes = common::fixture("kquant/tiny-mixed.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    // Every target whose type has a quantiser (all but Q2_K).
    let ad = adapter_for(&model, &g, 8, 0.2, |_, ty| has_quantizer(ty));
    let toks: Vec<u32> = (0..12u32).map(|i| (i * 53 + 11) % 1000).collect();
    let types = check_merge("tiny-mixed", &bytes, &ad, &toks);
    let want = [
        "IQ4_NL", "IQ4_XS", "Q3_K", "Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0",
    ];
    assert_eq!(types.into_iter().collect::<Vec<_>>(), want);
}

#[test]
fn tiny_mixed_merge_base_refuses_types_without_quantiser() {
    let bytes = common::fixture("kquant/tiny-mixed.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let no_q = [GgmlType::Q2_K];
    for ty in no_q {
        assert!(
            !has_quantizer(ty),
            "{} gained a quantiser: update this test",
            ty.name()
        );
        // The first tensor of that type in the file is the one named.
        let first = g
            .tensors()
            .find(|t| t.ty == ty && parse_target(t.name).is_some());
        let first = first.unwrap().name;
        let ad_bytes = adapter_for(&model, &g, 4, 0.2, |n, t| t == ty || n == first);
        let ad = Adapter::parse(&ad_bytes).unwrap();
        let mut slots = vec![None; Adapter::slots_len(model.config())];
        let b = ad.bind(&g, &model, &mut slots).unwrap();
        let mut called = 0;
        let e =
            merge_model(&g, &model, &[(&b, 1.0)], MergeType::Base, |_| called += 1).unwrap_err();
        println!("{}: {e}", ty.name());
        assert_eq!(e.kind(), ErrorKind::UnsupportedTensorType);
        assert_eq!(e.name().to_string(), format!("{first} ({})", ty.name()));
        assert!(e.to_string().contains("--type q8_0"), "{e}");
        assert_eq!(called, 0, "refused before merging anything");
        // The same adapter merges into a fixed type.
        merge_model(
            &g,
            &model,
            &[(&b, 1.0)],
            MergeType::Fixed(GgmlType::Q8_0),
            |_| {},
        )
        .unwrap();

        // The row-level API: typed error naming the type, output buffer untouched.
        let (l, k) = parse_target(first).unwrap();
        let w: MatRef = *model.layer(l).unwrap().linear(k);
        let p = *b.pair(l, k).unwrap();
        let mut out = vec![0xa5u8; merged_len(&w, ty).unwrap()];
        let mut row = vec![0f32; 2 * w.cols()];
        let e = merge_into(&w, &[(p, 1.0)], ty, &mut out, &mut row).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedTensorType);
        assert_eq!(e.name().to_string(), ty.name());
        assert!(out.iter().all(|&x| x == 0xa5));
    }
}

#[test]
fn smollm2_q4_k_m_merge_base_keeps_types() {
    let Ok(file) = std::fs::File::open(SMOLLM2_QKM) else {
        println!("SKIPPED: {SMOLLM2_QKM} is absent");
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&g).unwrap());
    // Every linear; amp 0.1 makes the update about a tenth of the weights' size.
    let ad = adapter_for(&model, &g, 8, 0.1, |_, _| true);
    let toks: Vec<u32> = [1, 504, 3458, 282, 4649, 314, 2, 28, 17, 900, 42]
        .into_iter()
        .collect();
    let types = check_merge("smollm2-q4_k_m", &bytes, &ad, &toks);
    assert_eq!(
        types.into_iter().collect::<Vec<_>>(),
        ["Q4_K", "Q5_0", "Q6_K", "Q8_0"]
    );
}
