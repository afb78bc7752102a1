//! Model-level checks of the fast path (`KernelMode::Fast`: SIMD kernels, activations quantised
//! to Q8_0/Q8_1 once per input, as llama.cpp does) against the f32 reference path and against
//! Hugging Face transformers.
//!
//! The fast path is not expected to match f32 frameworks to f32 rounding: quantising an
//! activation to 8 bits adds an error of up to `d/2 = max|x| / 254` per element. What must
//! hold is that the model still predicts the same tokens except where the reference is
//! nearly tied. The SmolLM2 test derives its bound from the data instead of a tuned constant:
//!
//! - `e_i = ours_i - hf_i` on HF's top-5 logits; a top-1 flip from HF's #1 to #2 needs
//!   `e_2 - e_1 > margin` (HF's top-2 gap). With `sigma` the RMS of `e_1 - e_2` over all
//!   positions, a position flips with probability about `Q(margin / sigma)` (normal tail),
//!   so the expected number of flips is `E = sum_pos Q(margin_pos / sigma)`.
//! - We require `flips <= E + 3 sqrt(E) + 1` (a Poisson 3-sigma upper bound) and that no flip
//!   crosses a HF margin above 5 sigma (for a flip to a token outside HF's top-5, the margin
//!   crossed is at least HF's #1 - #5 gap); and, so a broken kernel cannot pass by inflating `sigma`,
//!   that `sigma` is below 0.25: a quarter logit, ten times the f32 path's 0.02 bound
//!   (`parity_smollm2.rs`), which is what a ~1% relative error on logits of size ~20 gives
//!   (8-bit activations: `1/254` per element, summed in quadrature over the ~60 matvecs a
//!   logit depends on, ~0.4% x sqrt(60)/sqrt(12) ~ 1%).
//!
//! The figures (agreement, top-5 overlap, sigma) are printed for the README.

mod common;

use common::flip_allowance;
use edgelora::kernels::{self, Kernel, KernelMode};
use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;
use serde_json::Value;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[test]
fn smollm2_fast_path_top1_agreement() {
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
    // Once per kernel table this CPU has, each on its own state (`State::set_kernel`): every
    // table reduces floats in its own order, so each flips its own near-ties, and each must
    // stay within what its own noise explains.
    for kernel in common::tables("SmolLM2 fast path vs transformers") {
        fast_path_on(&model, &refs, kernel);
    }
}

fn fast_path_on(model: &Model<'_>, refs: &Value, kernel: &'static Kernel) {
    let cfg = *model.config();
    let ctx = 128;
    let mut buf = state_buffer(&cfg, ctx);
    kernels::reset_ran();
    let isa = kernel.isa();
    let (mut n, mut agree, mut overlap) = (0usize, 0usize, 0usize);
    let mut margins = vec![];
    let mut sq = 0f64;
    let mut flips = vec![];
    for case in refs["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let mut st = State::new(&cfg, ctx, &mut buf).unwrap();
        assert_eq!(
            st.kernel_mode(),
            KernelMode::Fast,
            "the default must be the fast path"
        );
        st.set_kernel(Some(kernel));
        for (pos, &t) in ids.iter().enumerate() {
            let l = model.forward(t, pos, &mut st).unwrap();
            let hf_ids: Vec<usize> = case["top_ids"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let hf_l: Vec<f64> = case["top_logits"][pos]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let ours = edgelora::sample::argmax(l) as usize;
            n += 1;
            let margin = hf_l[0] - hf_l[1];
            margins.push(margin);
            let e1 = l[hf_ids[0]] as f64 - hf_l[0];
            let e2 = l[hf_ids[1]] as f64 - hf_l[1];
            sq += (e1 - e2) * (e1 - e2);
            if ours == hf_ids[0] {
                agree += 1;
            } else {
                // A top-1 outside HF's top-5 crossed at least HF's #1 - #5 gap.
                let crossed = if hf_ids.contains(&ours) {
                    margin
                } else {
                    hf_l[0] - hf_l[4]
                };
                flips.push((case["name"].as_str().unwrap().to_string(), pos, crossed));
            }
            let mut idx: Vec<usize> = (0..l.len()).collect();
            idx.select_nth_unstable_by(5, |&a, &b| l[b].total_cmp(&l[a]));
            overlap += idx[..5].iter().filter(|i| hf_ids.contains(i)).count();
        }
    }
    assert!(
        kernels::ran(isa),
        "the {isa:?} table was asked for but did not run"
    );
    let (sigma, expected, allowed) = flip_allowance(sq, &margins);
    println!(
        "fast path ({}) vs transformers: top-1 agreement {agree}/{n} ({:.1}%), top-5 overlap {:.1}%, \
         sigma(e1-e2) {sigma:.3}, flips {} (expected {expected:.2}, allowed {allowed:.2}): {flips:?}",
        isa.name(),
        100.0 * agree as f64 / n as f64,
        100.0 * overlap as f64 / (5 * n) as f64,
        flips.len()
    );
    assert!(n > 200);
    assert!(
        sigma < 0.25,
        "[{}] logit noise sigma {sigma} is above the derived 0.25",
        isa.name()
    );
    // No flip may cross more than 5 sigma (a flip to outside HF's top-5 only where HF's top-5
    // are crowded within that).
    for (name, pos, crossed) in &flips {
        assert!(
            *crossed <= 5.0 * sigma,
            "[{}] {name} pos {pos}: flipped across a HF margin of {crossed} > 5 sigma ({sigma:.3})",
            isa.name()
        );
    }
    assert!(
        flips.len() as f64 <= allowed,
        "[{}] {} top-1 flips, more than the {allowed:.2} that sigma {sigma:.3} explains",
        isa.name(),
        flips.len()
    );
}

/// Tiny fixtures: the fast path against the reference path on the same GGUF.
///
/// Float weights take the f32 activation, so only summation order differs (bound 1e-5 of the
/// largest logit, far above f32 rounding over these short dots). Quantised weights see the
/// 8-bit activation error: per element it is uniform in `±d/2`, `d = max|x| / 127`, so RMS
/// `max|x| / (127 sqrt 12)`, and `max|x| <= sqrt(n) rms(x)` for a vector of `n` values; a
/// logit goes through `2 n_layers + 1` quantised inputs whose errors add in quadrature. We
/// compare the RMS logit error relative to the RMS logit against
/// `sqrt(n) / (127 sqrt 12) * sqrt(2 n_layers + 1)` with `n = max(dim, ffn_dim)` (a first-order
/// bound: it ignores amplification through the layers), and require the same argmax wherever
/// the reference's top-2 gap exceeds 6 RMS errors.
#[test]
fn tiny_models_fast_vs_reference() {
    for variant in ["f32", "q8_0", "q4_1"] {
        let p = format!(
            "{}/fixtures/tiny/tiny-{variant}.gguf",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&p).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let cfg = *model.config();
        let mut b1 = vec![0f32; State::len_for(&cfg, 16)];
        let mut b2 = b1.clone();
        let mut fast = State::new(&cfg, 16, &mut b1).unwrap();
        let mut refp = State::new(&cfg, 16, &mut b2).unwrap();
        refp.set_kernel_mode(KernelMode::Reference);
        let (mut worst_max, mut err2, mut ref2, mut cnt) = (0f32, 0f64, 0f64, 0usize);
        let mut gaps = vec![];
        for (pos, t) in [1u32, 5, 9, 2, 7, 3, 11, 4, 8, 6, 10, 12]
            .into_iter()
            .enumerate()
        {
            let t = t % cfg.vocab as u32;
            let a = model.forward(t, pos, &mut fast).unwrap().to_vec();
            let b = model.forward(t, pos, &mut refp).unwrap();
            let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max)
                / scale;
            worst_max = worst_max.max(d);
            err2 += a
                .iter()
                .zip(b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum::<f64>();
            ref2 += b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>();
            cnt += b.len();
            let mut sorted = b.to_vec();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let same = edgelora::sample::argmax(&a) == edgelora::sample::argmax(b);
            gaps.push(((sorted[0] - sorted[1]) as f64, same));
        }
        let rel_rms = (err2 / ref2).sqrt();
        let rms_err = (err2 / cnt as f64).sqrt();
        println!(
            "tiny-{variant}: fast vs reference: RMS |dlogit| / RMS logit {rel_rms:.2e}, \
             max |dlogit| / max |logit| {worst_max:.2e}"
        );
        if variant == "f32" {
            assert!(worst_max < 1e-5, "tiny-f32: {worst_max}");
            continue;
        }
        let n = cfg.dim.max(cfg.ffn_dim) as f64;
        let bound = n.sqrt() / (127.0 * 12f64.sqrt()) * ((2 * cfg.n_layers + 1) as f64).sqrt();
        println!("tiny-{variant}: derived bound {bound:.2e}");
        assert!(
            rel_rms < bound,
            "tiny-{variant}: relative RMS error {rel_rms} >= {bound}"
        );
        for (gap, same) in gaps {
            assert!(
                same || gap < 6.0 * rms_err,
                "tiny-{variant}: argmax flip at gap {gap}"
            );
        }
    }
}
