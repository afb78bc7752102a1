//! Every architecture edgelora runs, end to end against llama.cpp, without llama.cpp.
//!
//! `fixtures/arch/tiny-{llama,qwen2,qwen3,gemma3,gemma2}.gguf` are tiny random models (dim 32,
//! 4 query heads of 16 (8 for qwen2), 2 KV heads, ffn 64, the 1024-token vocabulary of
//! `models/tiny`, tied head) with **F32** weights, each carrying the optional tensors and
//! `{arch}.*` keys of its architecture: qwen2's q/k/v biases, qwen3's QK-norm, gemma3's 5 + 1
//! sliding/global layers with a window of 8 and two rope bases, gemma2's alternating layers
//! and soft-caps. `llamacpp_logits.json` holds llama.cpp's teacher-forced logits for 4
//! sequences of 32 tokens per model (top-16 per position, the full vector at the last one)
//! (`fixtures/arch/gen_arch_models.py`; CI has no llama.cpp, so both are committed).
//!
//! Rope scaling, the same way: `tiny-llama-linear.gguf` (`llama.rope.scaling.type = linear`,
//! factor 4) and `tiny-llama3-freqs.gguf` (rope base 500000 and a `rope_freqs.weight` of the
//! per-pair divisors llama.cpp's converter computes for Llama 3.1's scaling: factor 8, low/high
//! frequency factors 1/4, original context 8192, here `[1, 1, 1, 1, 2.69453, 8, 8, 8]`), with
//! llama.cpp's logits for 3 sequences of 64 tokens each in `llamacpp_rope_logits.json`. They
//! go through every check below, and [`rope_scaling_changes_the_logits`] shows that the
//! scaling is what they test: the same bytes with the scaling key or tensor renamed away
//! miss llama.cpp's logits by far more than the bound.
//!
//! What is checked, per architecture:
//! - the file's settings are read (window, rope bases, caps, q scale);
//! - the reference path, and the fast path once per kernel table, give llama.cpp's logits
//!   within [`bound`] (relative to the position's logit RMS: 3.1e-5 for the 2-layer SwiGLU
//!   models, 4-5e-3 for Gemma, whose llama.cpp GELU is f16) on the top-16 of every position
//!   and on the whole vocabulary at each case's last position, and llama.cpp's top-1
//!   everywhere (where llama.cpp's top-2 margin is within twice the bound, its #2 would
//!   pass too; it has not been needed);
//! - `Model::prefill` gives the last position's logits bit for bit as `forward` token by token.
//!
//! Why the comparison can be tight: with F32 weights ggml's CPU matmul runs in f32 (the
//! `vec_dot_type` of F32 is F32: llama.cpp quantises no activation), the fixtures use an f32
//! KV cache and no flash attention, so both sides compute the same f32 arithmetic in another
//! order. The exception is ggml's GELU (`GGML_GELU_FP16`, on by default in `ggml-cpu/vec.h`):
//! it rounds the gate value to f16 and reads an f16 table, so llama.cpp's GeGLU (the Gemma
//! FFN) carries f16 rounding that edgelora's f32 `gelu_tanh` does not.

mod common;

use edgelora::kernels::{self, Kernel, KernelMode};
use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;
use serde_json::Value;

/// Longest fixture sequence (the rope scaling ones; the others have 32 tokens).
const CTX: usize = 64;

struct Case {
    name: String,
    tokens: Vec<u32>,
    top_ids: Vec<Vec<usize>>,
    top_logits: Vec<Vec<f64>>,
    logit_rms: Vec<f64>,
    last_logits: Vec<f64>,
}

struct Fixture {
    arch: String,
    /// The file name without `tiny-` and `.gguf` (`llama`, `llama-linear`, ...).
    name: String,
    file: String,
    cases: Vec<Case>,
}

fn floats(v: &Value) -> Vec<f64> {
    common::json_f64s(v)
}

/// Every model: one per architecture, then the rope scaling ones.
fn fixtures() -> Vec<Fixture> {
    let mut all = fixtures_in("arch/llamacpp_logits.json");
    all.extend(rope_fixtures());
    all
}

fn rope_fixtures() -> Vec<Fixture> {
    fixtures_in("arch/llamacpp_rope_logits.json")
}

fn fixtures_in(json: &str) -> Vec<Fixture> {
    let v: Value = serde_json::from_slice(&common::fixture(json)).unwrap();
    let arr = |x: &Value| -> Vec<Value> { x.as_array().unwrap().clone() };
    arr(&v["models"])
        .iter()
        .map(|m| Fixture {
            arch: m["arch"].as_str().unwrap().to_string(),
            file: m["file"].as_str().unwrap().to_string(),
            name: (m["file"].as_str().unwrap())
                .trim_start_matches("tiny-")
                .trim_end_matches(".gguf")
                .to_string(),
            cases: arr(&m["cases"])
                .iter()
                .map(|c| Case {
                    name: c["name"].as_str().unwrap().to_string(),
                    tokens: common::json_u32s(&c["tokens"]),
                    top_ids: common::json_id_rows(&c["top_ids"]),
                    top_logits: common::json_f64_rows(&c["top_logits"]),
                    logit_rms: floats(&c["logit_rms"]),
                    last_logits: floats(&c["last_logits"]),
                })
                .collect(),
        })
        .collect()
}

fn load(f: &Fixture) -> Vec<u8> {
    common::fixture(&format!("arch/{}", f.file))
}

/// Largest `|our logit - llama.cpp's| / rms(llama.cpp's logits at that position)` allowed.
///
/// f32 part (every architecture): both sides compute the same f32 operations in another
/// order (ggml's and edgelora's summation orders, ggml's rope angles built by repeated
/// multiplication). A dot product of `n` terms reordered moves by at most `n u` (u = 2^-24,
/// Higham's gamma_n) of its scale; the longest here has n = 64, and a layer chains about four
/// such steps (norm, q/k/v, attention, output / gate-up, down), so a layer's output moves by
/// at most ~`4 * 64 u = 1.5e-5` of its RMS, and the layers add: `n_layers * 256 u`
/// (3.1e-5 for the 2-layer models). Measured: 1.7e-6 .. 4.4e-6 (7x to 18x below).
///
/// f16 GELU part (GeGLU only): ggml rounds each gate value to f16 and returns an f16 table
/// entry, two roundings of relative RMS `2^-11 / sqrt(3) = 2.8e-4` each (`x gelu'(x)` is
/// within `|gelu(x)|` for x > 0, so the input rounding moves the output by about as much),
/// `sigma = 4e-4` per FFN activation. The down projection averages them into the same
/// relative error of the FFN output, the post-FFN norm keeps it, and the `n_layers` layers'
/// errors add in quadrature in the residual and the logits: `4e-4 sqrt(n_layers)` of the
/// logit RMS per value; the bound is 5 of those (the largest of ~6000 compared values).
/// Measured: 1.6e-3 of 4.9e-3 (gemma3), 6.2e-4 of 4.0e-3 (gemma2). Emulating ggml's f16
/// GELU in edgelora brings both to 2.6e-5 (gemma2) and 1.5e-4 (gemma3, at scattered
/// positions, before and after the window edge alike: gate values that round to different
/// f16 neighbours on the two sides), so no other op differs.
fn bound(arch: &str, n_layers: usize) -> f64 {
    let u = f64::from(f32::EPSILON) / 2.0;
    let f32_part = n_layers as f64 * 256.0 * u;
    let gelu_part = if arch.starts_with("gemma") {
        5.0 * 4e-4 * (n_layers as f64).sqrt()
    } else {
        0.0
    };
    f32_part + gelu_part
}

/// What one path (reference, or fast on one table) did over all cases of one model.
#[derive(Default)]
struct Tally {
    n: usize,
    top1: usize,
    /// Largest relative error over the top-16 of every position.
    max_rel_top: f64,
    /// Largest relative error over the whole vocabulary at the cases' last positions.
    max_rel_full: f64,
    /// Smallest llama.cpp top-2 margin relative to the position's RMS.
    min_margin: f64,
    /// Positions whose llama.cpp top-2 margin is within twice the bound: there our #1 may
    /// be llama.cpp's #2 (each of the two logits may move by the bound).
    near_ties: usize,
    flips: Vec<(String, usize)>,
}

fn run_path(model: &Model<'_>, cases: &[Case], path: Option<&'static Kernel>, b: f64) -> Tally {
    let cfg = *model.config();
    let mut buf = state_buffer(&cfg, CTX);
    let mut t = Tally {
        min_margin: f64::INFINITY,
        ..Tally::default()
    };
    for case in cases {
        let mut st = State::new(&cfg, CTX, &mut buf).unwrap();
        match path {
            None => st.set_kernel_mode(KernelMode::Reference),
            Some(k) => st.set_kernel(Some(k)),
        }
        for (pos, &tok) in case.tokens.iter().enumerate() {
            let l = model.forward(tok, pos, &mut st).unwrap();
            let rms = case.logit_rms[pos];
            let (ids, lc) = (&case.top_ids[pos], &case.top_logits[pos]);
            t.n += 1;
            for (&i, &r) in ids.iter().zip(lc) {
                t.max_rel_top = t.max_rel_top.max((l[i] as f64 - r).abs() / rms);
            }
            let margin = (lc[0] - lc[1]) / rms;
            t.min_margin = t.min_margin.min(margin);
            let near_tie = margin <= 2.0 * b;
            t.near_ties += usize::from(near_tie);
            let ours = edgelora::sample::argmax(l) as usize;
            if ours == ids[0] {
                t.top1 += 1;
            } else if !(near_tie && ours == ids[1]) {
                t.flips.push((case.name.clone(), pos));
            }
            if pos + 1 == case.tokens.len() {
                assert_eq!(l.len(), case.last_logits.len());
                for (&a, &r) in l.iter().zip(&case.last_logits) {
                    t.max_rel_full = t.max_rel_full.max((a as f64 - r).abs() / rms);
                }
            }
        }
    }
    t
}

fn check(arch: &str, what: &str, t: &Tally, b: f64, positions: usize) {
    println!(
        "{arch} {what}: max |dlogit|/rms {:.2e} on top-16, {:.2e} on the full vocabulary at the \
         last positions (bound {b:.2e}); top-1 {}/{}; smallest llama.cpp top-2 margin {:.1e} \
         rms ({} positions within twice the bound)",
        t.max_rel_top, t.max_rel_full, t.top1, t.n, t.min_margin, t.near_ties
    );
    assert_eq!(t.n, positions, "[{arch} {what}] positions");
    assert!(
        t.max_rel_top < b && t.max_rel_full < b,
        "[{arch} {what}] logits differ from llama.cpp by {:.2e} (top-16) / {:.2e} (full) of \
         their RMS, above the derived bound {b:.2e}",
        t.max_rel_top,
        t.max_rel_full
    );
    assert!(
        t.flips.is_empty(),
        "[{arch} {what}] top-1 differs from llama.cpp at {:?}",
        t.flips
    );
}

#[test]
fn each_file_reads_its_architecture_settings() {
    for f in fixtures() {
        let bytes = load(&f);
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let c = model.config();
        let a = &c.arch;
        assert_eq!(a.name, f.arch);
        let (base, scale) = match f.name.as_str() {
            "llama-linear" => (10000.0, 0.25),
            "llama3-freqs" => (500000.0, 1.0),
            _ => (c.rope_base, 1.0),
        };
        assert_eq!(
            (c.rope_base, c.rope_freq_scale),
            (base, scale),
            "{}",
            f.name
        );
        assert!(c.tied_output, "{}: the fixtures tie the head", f.arch);
        let q_scale = 1.0 / (c.head_dim as f32).sqrt();
        assert_eq!(a.q_scale, q_scale, "{}: q scale", f.arch);
        match f.arch.as_str() {
            "gemma3" => {
                assert_eq!((a.swa_period, a.swa_window), (6, 8));
                assert_eq!((c.rope_base, a.rope_base_swa), (1e6, 10000.0));
                assert!(c.has_second_rope());
                let swa: Vec<bool> = (0..c.n_layers).map(|l| a.is_swa(l)).collect();
                assert_eq!(swa, [true, true, true, true, true, false]);
            }
            "gemma2" => {
                assert_eq!((a.swa_period, a.swa_window), (2, 8));
                assert_eq!((a.attn_softcap, a.final_softcap), (50.0, 30.0));
                assert!(!c.has_second_rope());
                let swa: Vec<bool> = (0..c.n_layers).map(|l| a.is_swa(l)).collect();
                assert_eq!(swa, [true, false, true, false]);
            }
            _ => assert!(!a.is_swa(0) && a.final_softcap == 0.0),
        }
    }
}

#[test]
fn every_architecture_agrees_with_llama_cpp() {
    for f in fixtures() {
        let bytes = load(&f);
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let b = bound(&f.arch, model.config().n_layers);
        let n = f.cases.iter().map(|c| c.tokens.len()).sum();
        let r = run_path(&model, &f.cases, None, b);
        check(&f.name, "reference", &r, b, n);
        for k in common::tables(&format!("{} vs llama.cpp", f.name)) {
            kernels::reset_ran();
            let t = run_path(&model, &f.cases, Some(k), b);
            assert!(
                kernels::ran(k.isa()),
                "the {:?} table was asked for but did not run",
                k.isa()
            );
            check(&f.name, &format!("fast ({})", k.isa().name()), &t, b, n);
        }
    }
}

#[test]
fn prefill_matches_forward_bit_for_bit() {
    for f in fixtures() {
        let bytes = load(&f);
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let cfg = *model.config();
        let mut b1 = state_buffer(&cfg, CTX);
        let mut b2 = state_buffer(&cfg, CTX);
        for k in common::tables(&format!("{} prefill vs forward", f.name)) {
            for case in &f.cases {
                let mut a = State::new(&cfg, CTX, &mut b1).unwrap();
                let mut b = State::new(&cfg, CTX, &mut b2).unwrap();
                a.set_kernel(Some(k));
                b.set_kernel(Some(k));
                let pre = model.prefill(&case.tokens, 0, &mut a).unwrap().to_vec();
                let mut tok = vec![];
                for (pos, &t) in case.tokens.iter().enumerate() {
                    tok = model.forward(t, pos, &mut b).unwrap().to_vec();
                }
                let differ = pre
                    .iter()
                    .zip(&tok)
                    .filter(|(x, y)| x.to_bits() != y.to_bits())
                    .count();
                assert_eq!(
                    differ,
                    0,
                    "[{} {}] {}: prefill and forward differ in {differ} logits",
                    f.name,
                    k.isa().name(),
                    case.name
                );
            }
        }
        println!("{}: prefill identical to forward on every table", f.name);
    }
}

/// `Model::init_from_gguf` (built in place: the C library and the firmware) is the same model
/// as `Model::from_gguf`: identical logits bit for bit on every architecture, the same error
/// for a file missing a layer tensor or having more layers than the model type holds.
#[test]
fn model_built_in_place_equals_by_value() {
    use core::mem::MaybeUninit;
    for f in fixtures() {
        let bytes = load(&f);
        let g = Gguf::parse(&bytes).unwrap();
        let by_value: Model = Model::from_gguf(&g).unwrap();
        let mut slot = MaybeUninit::uninit();
        let in_place: &Model = Model::init_from_gguf(&g, &mut slot).unwrap();
        let cfg = *by_value.config();
        assert_eq!(cfg, *in_place.config());
        let (mut b1, mut b2) = (state_buffer(&cfg, CTX), state_buffer(&cfg, CTX));
        for case in &f.cases {
            let mut a = State::new(&cfg, CTX, &mut b1).unwrap();
            let mut b = State::new(&cfg, CTX, &mut b2).unwrap();
            let x = by_value.prefill(&case.tokens, 0, &mut a).unwrap().to_vec();
            let y = in_place.prefill(&case.tokens, 0, &mut b).unwrap();
            assert!(
                x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{} {}: logits differ",
                f.name,
                case.name
            );
        }
        // One layer tensor renamed away, and a model type with room for fewer layers.
        let broken = rename(&bytes, "blk.1.ffn_up.weight", "blk.1.ffn_XX.weight");
        let g = Gguf::parse(&broken).unwrap();
        let Err(want) = Model::<'_, { edgelora::model::DEFAULT_MAX_LAYERS }>::from_gguf(&g) else {
            panic!("{}: a missing layer tensor must be refused", f.name);
        };
        let mut slot = MaybeUninit::<Model>::uninit();
        let Err(got) = Model::init_from_gguf(&g, &mut slot) else {
            panic!(
                "{}: a missing layer tensor must be refused in place too",
                f.name
            );
        };
        assert_eq!(got.to_string(), want.to_string());
        assert!(got.to_string().contains("blk.1.ffn_up.weight"), "{got}");
        let g = Gguf::parse(&bytes).unwrap();
        let mut small = MaybeUninit::<Model<'_, 1>>::uninit();
        let Err(e) = Model::init_from_gguf(&g, &mut small) else {
            panic!("{}: more layers than L must be refused", f.name);
        };
        assert_eq!(e.kind(), edgelora::ErrorKind::TooMany, "{e}");
    }
}

/// `bytes` with the one occurrence of `from` replaced by `to` (same length: every offset in the
/// file stays valid, so this renames a key or a tensor away).
fn rename(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    let (from, to) = (from.as_bytes(), to.as_bytes());
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = (0..=bytes.len() - from.len())
        .filter(|&i| &bytes[i..i + from.len()] == from)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{} occurs {} times",
        String::from_utf8_lossy(from),
        at.len()
    );
    let mut out = bytes.to_vec();
    out[at[0]..at[0] + to.len()].copy_from_slice(to);
    out
}

/// The rope scaling fixtures test the scaling: the same file with its scaling renamed away
/// (linear: the type and factor keys; Llama 3: the `rope_freqs.weight` tensor) misses
/// llama.cpp's logits by far more than the bound on the reference path.
///
/// And a file with `rope.scaling.factor` but no `rope.scaling.type` is linear scaling, as in
/// llama.cpp, whose loader reads the factor whatever the type and takes a missing type as
/// `linear`: llama.cpp gives such a copy of `tiny-llama-linear.gguf` the same logits, bit for
/// bit, as the original (checked with the generator's `run_llama`), so it must agree here too.
#[test]
fn rope_scaling_changes_the_logits() {
    for f in rope_fixtures() {
        let bytes = load(&f);
        let unscaled = match f.name.as_str() {
            "llama-linear" => {
                let t = rename(&bytes, "llama.rope.scaling.type", "llama.rope.scaling.typX");
                rename(&t, "llama.rope.scaling.factor", "llama.rope.scaling.factoX")
            }
            "llama3-freqs" => rename(&bytes, "rope_freqs.weight", "rope_freqX.weight"),
            other => panic!("{other}: which scaling?"),
        };
        let g = Gguf::parse(&unscaled).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        assert_eq!(model.config().rope_freq_scale, 1.0);
        let b = bound(&f.arch, model.config().n_layers);
        let t = run_path(&model, &f.cases, None, b);
        println!(
            "{} without its scaling: max |dlogit|/rms {:.2e} on top-16, {:.2e} on the full \
             vocabulary ({:.0}x / {:.0}x the bound {b:.2e}); top-1 {}/{}",
            f.name,
            t.max_rel_top,
            t.max_rel_full,
            t.max_rel_top / b,
            t.max_rel_full / b,
            t.top1,
            t.n
        );
        assert!(
            t.max_rel_top > 100.0 * b && t.max_rel_full > 100.0 * b,
            "[{}] the scaling changes the logits by less than 100x the bound",
            f.name
        );
        if f.name == "llama-linear" {
            let typeless = rename(&bytes, "llama.rope.scaling.type", "llama.rope.scaling.typX");
            let g = Gguf::parse(&typeless).unwrap();
            let model: Model = Model::from_gguf(&g).unwrap();
            assert_eq!(model.config().rope_freq_scale, 0.25);
            let n = f.cases.iter().map(|c| c.tokens.len()).sum();
            let t = run_path(&model, &f.cases, None, b);
            check("llama-linear without the type key", "reference", &t, b, n);
        }
    }
}
