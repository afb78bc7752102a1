//! Parity of the llama forward pass against Hugging Face transformers on tiny random-weight
//! models (committed fixtures made by `tests/fixtures/tiny/gen_tiny_llama.py`).
//!
//! transformers ran the same weights (dequantised from the GGUF bytes with the `gguf`
//! package) in f32; we run the quantised GGUF with f32 activations. Both compute in f32, so
//! the logits must agree to within accumulated f32 rounding: we allow 1e-3 relative to the
//! largest logit, and require identical argmax wherever HF's top-2 margin exceeds that.

use edgelora::model::{Model, State};
use edgelora::Gguf;
use serde_json::Value;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn check_variant(variant: &str) {
    let bytes = fixture(&format!("tiny-{variant}.gguf"));
    let refs: Value =
        serde_json::from_slice(&fixture(&format!("tiny-{variant}.logits.json"))).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 64)];
    let (mut worst, mut agree, mut total) = (0f32, 0, 0);
    for case in refs["cases"].as_array().unwrap() {
        let tokens: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        let want = case["logits"].as_array().unwrap();
        let mut st = State::new(&cfg, 64, &mut buf).unwrap();
        st.set_kernel_mode(edgelora::model::KernelMode::Reference);
        for (pos, (&t, w)) in tokens.iter().zip(want).enumerate() {
            let got = model.forward(t, pos, &mut st).unwrap();
            let w: Vec<f32> = w
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got.len(), w.len());
            let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
            let diff = got
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
                / scale;
            worst = worst.max(diff);
            let (ga, wa) = (edgelora::sample::argmax(got), edgelora::sample::argmax(&w));
            let mut sorted = w.clone();
            sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
            total += 1;
            if ga == wa {
                agree += 1;
            } else {
                assert!(
                    sorted[0] - sorted[1] < 1e-3 * scale,
                    "{variant} {} pos {pos}: argmax {ga} vs {wa}",
                    case["name"]
                );
            }
        }
        // Greedy continuation of the first case must match HF generate().
        if let Some(greedy) = case.get("greedy").and_then(|g| g.as_array()) {
            let mut st = State::new(&cfg, 64, &mut buf).unwrap();
            st.set_kernel_mode(edgelora::model::KernelMode::Reference);
            let mut next = edgelora::sample::argmax(model.prefill(&tokens, 0, &mut st).unwrap());
            let mut out = vec![];
            for (i, _) in greedy.iter().enumerate() {
                out.push(next);
                next = edgelora::sample::argmax(
                    model.forward(next, tokens.len() + i, &mut st).unwrap(),
                );
            }
            let want: Vec<u32> = greedy.iter().map(|t| t.as_u64().unwrap() as u32).collect();
            assert_eq!(out, want, "{variant}: greedy continuation");
        }
    }
    println!(
        "tiny-{variant}: max |dlogit|/max|logit| = {worst:.2e}, top-1 agreement {agree}/{total}"
    );
    assert!(
        worst < 1e-3,
        "tiny-{variant}: max relative logit error {worst}"
    );
}

#[test]
fn tiny_f32_matches_transformers() {
    check_variant("f32");
}

#[test]
fn tiny_q8_0_matches_transformers() {
    check_variant("q8_0");
}

#[test]
fn tiny_q4_1_matches_transformers() {
    check_variant("q4_1");
}
