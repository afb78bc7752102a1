//! The per-layer CPU trace must be the core's forward pass, bit for bit: same logits at every
//! position and the same final hidden state as `Model::forward_with`, in both kernel modes,
//! with and without adapters (several at once, DoRA, a replacement head). Only then are its
//! per-layer states valid CPU references for GPU parity. Runs everywhere (no GPU, no feature).
//! Also prints the model-level tolerances derived by error injection (see `src/tol.rs`).

use edgelora::kernels::KernelMode;
use edgelora::lora::{Adapter, AdapterSet, BoundAdapter, LoraPair};
use edgelora::model::{Model, State};
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use edgelora_cuda::cpu::{derive_tolerance, trace};
use edgelora_cuda::testdata::{random_adapter, truncate_layers, AdapterSpec};

fn fixture(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(edgelora_cuda::repo_root().join(rel)).ok()
}

/// Two adapters exercising every LoRA feature: F16 on all linears with DoRA factors, and a
/// Q8_0-A / F32-B adapter on q and v with a replacement head.
fn specs(with_head: bool) -> [AdapterSpec; 2] {
    let a = AdapterSpec {
        dora: true,
        ..AdapterSpec::all_f16(8, 11)
    };
    let b = AdapterSpec {
        a_ty: GgmlType::Q8_0,
        b_ty: GgmlType::F32,
        targets: vec![0, 2],
        head: with_head,
        rank: 4,
        alpha: 8.0,
        ..AdapterSpec::all_f16(4, 12)
    };
    [a, b]
}

fn core_logits(
    m: &Model<'_>,
    set: &AdapterSet<'_, '_, '_>,
    tokens: &[u32],
    mode: KernelMode,
) -> (Vec<f32>, Vec<f32>) {
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, tokens.len())];
    let mut st = State::new(&cfg, tokens.len(), &mut buf).unwrap();
    st.set_kernel_mode(mode);
    let mut all = vec![];
    for (p, &t) in tokens.iter().enumerate() {
        all.extend_from_slice(m.forward_with(t, p, &mut st, set).unwrap());
    }
    (all, st.hidden().to_vec())
}

fn check_model(name: &str, bytes: &[u8], tokens: &[u32], with_head: bool, print_tol: bool) {
    let g = Gguf::parse(bytes).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let files: Vec<Vec<u8>> = specs(with_head)
        .iter()
        .map(|s| random_adapter(&g, s).unwrap())
        .collect();
    let parsed: Vec<Adapter<'_>> = files.iter().map(|f| Adapter::parse(f).unwrap()).collect();
    let mut slots: Vec<Vec<Option<LoraPair<'_>>>> = parsed
        .iter()
        .map(|_| vec![None; Adapter::slots_len(m.config())])
        .collect();
    let bound: Vec<BoundAdapter<'_, '_>> = parsed
        .iter()
        .zip(slots.iter_mut())
        .map(|(a, s)| a.bind(&g, &m, s).unwrap())
        .collect();
    let mut two = AdapterSet::EMPTY;
    two.push(&bound[0], 0.7).unwrap();
    two.push(&bound[1], 1.3).unwrap();
    for (set_name, set) in [("no adapters", AdapterSet::EMPTY), ("two adapters", two)] {
        for mode in [KernelMode::Reference, KernelMode::Fast] {
            let t = trace(&m, &g, &set, tokens, mode, None).unwrap();
            let (logits, hidden) = core_logits(&m, &set, tokens, mode);
            assert!(
                t.logits == logits,
                "{name} {set_name} {mode:?}: trace logits differ from Model::forward_with"
            );
            let last = &t.hidden.last().unwrap()[(tokens.len() - 1) * t.dim..];
            assert!(
                last == &hidden[..],
                "{name} {set_name} {mode:?}: final hidden differs"
            );
            assert_eq!(t.hidden.len(), m.config().n_layers);
        }
        if print_tol {
            let r = trace(&m, &g, &set, tokens, KernelMode::Reference, None).unwrap();
            let tol = derive_tolerance(&m, &g, &set, tokens, &r).unwrap();
            let lmax = r.logits.iter().fold(0f32, |a, v| a.max(v.abs()));
            println!(
                "{name}, {set_name}: derived max-abs tolerance per layer {:?}",
                tol.hidden
                    .iter()
                    .map(|v| format!("{v:.2e}"))
                    .collect::<Vec<_>>()
            );
            println!("{name}, {set_name}: logits tolerance {:.3e} (max |logit| {lmax:.2}, relative {:.1e})", tol.logits, tol.logits / lmax);
            // Sanity of the derivation: positive, and far below anything a real bug produces.
            assert!(
                tol.logits > 0.0 && tol.logits < 1e-3 * lmax.max(1.0),
                "{name}: implausible logits tolerance {}",
                tol.logits
            );
            assert!(tol.hidden.iter().all(|v| *v > 0.0 && v.is_finite()));
        }
    }
}

const TOKENS: [u32; 7] = [1, 17, 42, 99, 3, 250, 7];

#[test]
fn trace_equals_core_forward_on_tiny_models() {
    for f in ["tiny-f32", "tiny-q8_0", "tiny-q4_1"] {
        let bytes = fixture(&format!("tests/fixtures/tiny/{f}.gguf"))
            .expect("tiny fixtures are in the repository");
        check_model(f, &bytes, &TOKENS, true, f == "tiny-q4_1");
    }
}

#[test]
fn jitter_changes_results_and_is_seeded() {
    let bytes = fixture("tests/fixtures/tiny/tiny-q8_0.gguf").unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let a = trace(
        &m,
        &g,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        Some(1),
    )
    .unwrap();
    let b = trace(
        &m,
        &g,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        Some(1),
    )
    .unwrap();
    let c = trace(
        &m,
        &g,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        Some(2),
    )
    .unwrap();
    let r = trace(
        &m,
        &g,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        None,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_ne!(a.logits, c.logits);
    assert_ne!(a.logits, r.logits);
}

#[test]
fn truncated_model_runs_and_keeps_its_first_layers() {
    let bytes = fixture("tests/fixtures/tiny/tiny-q4_1.gguf").unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let cut = truncate_layers(&g, 1).unwrap();
    let g1 = Gguf::parse(&cut).unwrap();
    let m1: Model<'_> = Model::from_gguf(&g1).unwrap();
    assert_eq!(m1.config().n_layers, 1);
    let full = trace(
        &m,
        &g,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        None,
    )
    .unwrap();
    let one = trace(
        &m1,
        &g1,
        &AdapterSet::EMPTY,
        &TOKENS,
        KernelMode::Reference,
        None,
    )
    .unwrap();
    assert_eq!(full.hidden[0], one.hidden[0]);
}

#[test]
fn trace_equals_core_forward_on_smollm2() {
    let Some(bytes) = fixture("models/SmolLM2-135M-Instruct.Q4_1.gguf") else {
        println!(
            "SKIPPED: models/SmolLM2-135M-Instruct.Q4_1.gguf absent (run `edgelora fetch smollm2`)"
        );
        return;
    };
    // "The capital of France is" in SmolLM2's vocabulary, short so the reference passes stay fast.
    check_model("SmolLM2", &bytes, &[504, 3575, 282, 4649, 314], false, true);
}
