//! `edgelora quantize`'s library function ([`quantize_model`]) on real (tiny) models: the output
//! parses, loads as a [`Model`], has the types the preset's rules pick, and its logits stay
//! within a bound derived from the output types' step sizes.
//!
//! Two inputs: `fixtures/kquant/tiny-mixed.gguf` (dim 256, ffn 512: every K type applies
//! directly; its linears are already Q2_K..IQ4_XS, so this is re-quantisation) and
//! `models/tiny/tiny-base.gguf` (Q8_0, dims below 256: the K presets fall back to Q5_0 / Q5_1 /
//! Q8_0 as llama.cpp does).
//!
//! The bound. A b-bit round-to-nearest quantiser over a block spanning `r` has step
//! `r / (2^b - 1)` and an error uniform within half a step: RMS `r / ((2^b - 1) sqrt 12)`. For
//! the blocks of 32 these weights have, `r` is about 4 rms (the expected extremes of 32
//! near-Gaussian values are about +-2.1 sigma), so a tensor's relative RMS error is at most
//! `eps(b) = 4 / ((2^b - 1) sqrt 12)` (0.077 for 4 bits, 0.0045 for 8); we allow `2 eps(b)`
//! per tensor for heavier-tailed blocks and the 6-bit rounding of K-quant scales. Errors of
//! different matrices are independent, so through the network they add in quadrature:
//! `rms(dlogits) / rms(logits) <= 3 sqrt(sum_t eps(b_t)^2)`, the 3 being the allowance for
//! the gain of the norms and the SiLU, which this test measures (printed) rather than derives.

use edgelora::model::quantize::{quantize_model, Plan, Preset};
use edgelora::model::{state_buffer, Model, State};
use edgelora::quant::GgmlType;
use edgelora::Gguf;

mod common;

const CTX: usize = 16;

fn bits(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::Q3_K => 3,
        // 16 non-linear levels: a 4-bit grid, denser near zero.
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS => 4,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 5,
        GgmlType::Q6_K => 6,
        GgmlType::Q8_0 => 8,
        GgmlType::F16 => 11,
        t => panic!("unexpected output type {}", t.name()),
    }
}

fn eps(ty: GgmlType) -> f64 {
    4.0 / ((2f64.powi(bits(ty) as i32) - 1.0) * 12f64.sqrt())
}

/// Logits at every position of a fixed token sequence.
fn logits(model: &Model<'_>, tokens: &[u32]) -> Vec<Vec<f32>> {
    let cfg = *model.config();
    let mut buf = state_buffer(&cfg, CTX);
    let mut st = State::new(&cfg, CTX, &mut buf).unwrap();
    tokens
        .iter()
        .enumerate()
        .map(|(pos, &t)| model.forward(t, pos, &mut st).unwrap().to_vec())
        .collect()
}

fn check(path: &str, bytes: &[u8], preset: Preset) {
    let src = Gguf::parse(bytes).unwrap();
    let mut reports = Vec::new();
    let out = quantize_model(&src, preset, |r| {
        reports.push((r.name.to_string(), r.to, r.fallback, r.rel_rms))
    })
    .unwrap();
    let dst = Gguf::parse(&out).expect("output parses");
    assert_eq!(
        dst.get_u32("general.file_type").unwrap(),
        preset.file_type()
    );
    assert_eq!(reports.len(), src.tensors().count());
    let plan = Plan::new(&src, preset);
    let mut sum_eps2 = 0.0;
    let mut worst = 0.0f64;
    for (name, to, _, rel) in &reports {
        let t_in = src.tensor(name).unwrap();
        let t_out = dst.tensor(name).unwrap();
        assert_eq!(t_out.dims(), t_in.dims(), "{name}");
        assert_eq!(t_out.ty, *to, "{name}");
        if !Plan::quantises(&t_in) {
            assert_eq!(
                (t_out.ty, t_out.data),
                (t_in.ty, t_in.data),
                "{name} copied"
            );
            continue;
        }
        assert_eq!(*to, plan.tensor_type(name, t_in.row_len()).0, "{name}");
        let rel = rel.expect("quantised tensors report an error");
        let e = eps(*to);
        assert!(rel <= 2.0 * e, "{name} -> {}: {rel} > 2 * {e}", to.name());
        worst = worst.max(rel / e);
        sum_eps2 += e * e;
    }
    let m_in: Box<Model> = Box::new(Model::from_gguf(&src).unwrap());
    let m_out: Box<Model> = Box::new(Model::from_gguf(&dst).expect("output loads"));
    let vocab = m_in.config().vocab as u32;
    let tokens: Vec<u32> = (0..CTX as u32).map(|i| (i * 37 + 5) % vocab).collect();
    let (a, b) = (logits(&m_in, &tokens), logits(&m_out, &tokens));
    let (mut d2, mut n2) = (0.0f64, 0.0f64);
    for (la, lb) in a.iter().zip(&b) {
        for (&x, &y) in la.iter().zip(lb) {
            d2 += (y as f64 - x as f64).powi(2);
            n2 += (x as f64).powi(2);
        }
    }
    let rel_logits = (d2 / n2).sqrt();
    let bound = 3.0 * sum_eps2.sqrt();
    println!(
        "{path} {}: worst tensor error {worst:.2} eps(b); logits rel RMS change {rel_logits:.4} \
         (bound {bound:.4}, {:.0}% of it)",
        preset.name(),
        100.0 * rel_logits / bound
    );
    assert!(rel_logits <= bound, "{path} {}", preset.name());
}

#[test]
fn tiny_mixed_every_preset() {
    let bytes = common::fixture("kquant/tiny-mixed.gguf");
    for p in Preset::ALL {
        check("tiny-mixed", &bytes, p);
    }
}

#[test]
fn tiny_base_k_presets_fall_back() {
    let p = format!(
        "{}/../models/tiny/tiny-base.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&p).unwrap();
    let src = Gguf::parse(&bytes).unwrap();
    let plan = Plan::new(&src, Preset::Q4_K_M);
    let mut fell_back = 0;
    for t in src.tensors().filter(Plan::quantises) {
        let (ty, fb) = plan.tensor_type(t.name, t.row_len());
        assert!(t.row_len() % ty.block_len() as u64 == 0, "{}", t.name);
        fell_back += usize::from(fb);
    }
    println!("tiny-base Q4_K_M: {fell_back} tensors fall back");
    for p in [Preset::Q4_K_M, Preset::Q5_K_M, Preset::Q6_K, Preset::Q8_0] {
        check("tiny-base", &bytes, p);
    }
}

#[test]
fn use_more_bits_matches_llamacpp_for_30_layers() {
    // SmolLM2's 30 layers: llama.cpp's Q4_K_M puts 14 ffn_down tensors in Q6_K (measured with
    // bench/quantize_vs_llamacpp.py, byte-identical files).
    let more: Vec<usize> = (0..30)
        .filter(|&i| edgelora::model::quantize::use_more_bits(i, 30))
        .collect();
    assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
}
