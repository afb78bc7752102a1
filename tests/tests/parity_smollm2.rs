//! Parity of the forward pass against Hugging Face transformers on the real SmolLM2-135M
//! Instruct Q4_1 GGUF. The reference (`tests/fixtures/smollm2/hf_top5.json`, made by
//! `tests/fixtures/smollm2/hf_reference.py`) holds, for six prompts and their greedy
//! continuations, HF's top-5 ids and logits at every position; transformers dequantised the
//! same GGUF to f32. We run teacher-forced over the same ids.
//!
//! Tolerances: both sides compute in f32 from identical dequantised weights, so differences
//! come only from summation order over 30 layers. We require top-1 agreement on every
//! position whose HF top-2 margin exceeds 0.05 and a max |dlogit| on HF's top-5 below 0.02;
//! the measured figures are printed (and recorded in the README).

mod common;

use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;
use serde_json::Value;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[test]
fn smollm2_matches_transformers_teacher_forced() {
    let Ok(file) = std::fs::File::open(MODEL) else {
        println!("SKIPPED: {MODEL} is absent; run `cargo run --release -p edgelora-cli -- fetch smollm2`");
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let refs: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/smollm2/hf_top5.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&g).unwrap());
    let cfg = *model.config();
    let ctx = 128;
    let mut buf = state_buffer(&cfg, ctx);
    let (mut n, mut agree, mut sum_d, mut max_d, mut n_d, mut top5_overlap) =
        (0usize, 0usize, 0f64, 0f32, 0usize, 0usize);
    let t0 = std::time::Instant::now();
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut st = State::new(&cfg, ctx, &mut buf).unwrap();
        st.set_kernel_mode(edgelora::model::KernelMode::Reference);
        for (pos, &t) in ids.iter().enumerate() {
            let l = model.forward(t, pos, &mut st).unwrap();
            let hf_ids: Vec<usize> = case["top_ids"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let hf_l: Vec<f32> = case["top_logits"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let ours = edgelora::sample::argmax(l) as usize;
            n += 1;
            if ours == hf_ids[0] {
                agree += 1;
            } else {
                let margin = hf_l[0] - hf_l[1];
                assert!(
                    margin < 0.05,
                    "{name} pos {pos}: top-1 {ours} vs HF {} with HF margin {margin}",
                    hf_ids[0]
                );
            }
            for (&i, &w) in hf_ids.iter().zip(&hf_l) {
                let d = (l[i] - w).abs();
                sum_d += d as f64;
                max_d = max_d.max(d);
                n_d += 1;
            }
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.sort_unstable_by(|&a, &b| l[b].total_cmp(&l[a]));
            top5_overlap += idx[..5].iter().filter(|i| hf_ids.contains(i)).count();
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "parity smollm2 vs transformers: top-1 agreement {agree}/{n} ({:.1}%), top-5 overlap {:.1}%, \
         |dlogit| on HF top-5: mean {:.2e}, max {:.2e} ({n} positions in {secs:.1} s)",
        100.0 * agree as f64 / n as f64,
        100.0 * top5_overlap as f64 / (5 * n) as f64,
        sum_d / n_d as f64,
        max_d
    );
    assert!(n > 200);
    assert!(max_d < 0.02, "max |dlogit| {max_d}");
}

/// The cross-table contract for the reference path: it calls no kernel table (f32 activations
/// against weights dequantised by the scalar oracle), so its logits are bit-identical whichever
/// table a state is given. The fast path is not: see `kernels_model.rs` and the README.
#[test]
fn smollm2_reference_path_is_bit_identical_on_every_table() {
    let Ok(file) = std::fs::File::open(MODEL) else {
        println!("SKIPPED: {MODEL} is absent; run `cargo run --release -p edgelora-cli -- fetch smollm2`");
        return;
    };
    // SAFETY: read-only private mapping of a file nobody modifies during the test.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Box<Model> = Box::new(Model::from_gguf(&g).unwrap());
    let cfg = *model.config();
    let ids = [1u32, 9707, 28, 638, 359, 346, 47, 2];
    let mut first: Option<(String, Vec<u32>)> = None;
    for kernel in common::tables("SmolLM2 reference path") {
        let mut buf = state_buffer(&cfg, ids.len());
        let mut st = State::new(&cfg, ids.len(), &mut buf).unwrap();
        st.set_kernel_mode(edgelora::model::KernelMode::Reference);
        st.set_kernel(Some(kernel));
        let mut bits = vec![];
        for (pos, &t) in ids.iter().enumerate() {
            let l = model.forward(t, pos, &mut st).unwrap();
            bits.extend(l.iter().map(|v| v.to_bits()));
        }
        let name = kernel.isa().name().to_string();
        match &first {
            None => first = Some((name, bits)),
            Some((n0, b0)) => {
                let diff = b0.iter().zip(&bits).filter(|(a, b)| a != b).count();
                println!(
                    "reference path: {name} vs {n0}: {diff} of {} logits differ",
                    bits.len()
                );
                assert_eq!(
                    diff, 0,
                    "the reference path differs between {n0} and {name}"
                );
            }
        }
    }
}
