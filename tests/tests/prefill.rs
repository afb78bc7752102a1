//! Batched prefill (`Model::prefill_with`, blocks of `PREFILL_BLOCK` tokens through each layer)
//! against the token-by-token path (`Model::forward_with`) on the tiny fixtures, with and
//! without LoRA adapters: F32, F16, BF16 and Q8_0 A/B, ranks 4, 8 and 32, DoRA, two adapters
//! at once, and PEFT adapters converted by `convert_peft` (plain and DoRA, F16 and Q8_0).
//!
//! Both run the same fast kernels on the same Q8-quantised activations, and the batched
//! products of a block (base matmuls and `AdapterSet::apply_batch`'s LoRA products) keep each
//! output's summation order (`tests/tests/kernels.rs` checks that bit for bit), so the logits
//! are expected to be identical (observed: 0 on AVX2 and AVX-512; on AVX2 the blocked base
//! matmuls are bit-identical to its matvecs by construction, so there it is asserted). We require them to agree
//! within 1e-4 of the largest logit magnitude and the same argmax, and the KV cache left
//! behind to give the same next-token logits. Why not looser: the linears' outputs are
//! quantised to Q8 by the next matmul, so one ulp of summation-order difference can move a
//! value across a rounding step, which a large random adapter amplifies to ~1e-2 of the
//! logits (seen while developing `apply_batch`); equal order is what keeps prefill and decode
//! interchangeable.

use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::kernels::act_scratch_f32s;
use edgelora::kernels::{self, Batch, KernelMode};
use edgelora::lora::convert::{convert_peft, encode, ConvertOptions};
use edgelora::lora::{
    base_fingerprint, Adapter, AdapterSet, BoundAdapter, FINGERPRINT_KEY, MAX_RANK,
};
use edgelora::model::{Model, State, LINEAR_NAMES, PREFILL_BLOCK};
use edgelora::quant::GgmlType;
use edgelora::{ErrorKind, Gguf};

mod common;
use common::{fixture, rnd};

const B: usize = PREFILL_BLOCK;
const CTX: usize = 64;

/// A random adapter on every linear of the base: rank, storage of A and of B, DoRA scales.
#[derive(Clone, Copy, Debug)]
struct Spec {
    rank: usize,
    a: GgmlType,
    b: GgmlType,
    dora: bool,
    seed: u64,
}

fn tensor_bytes(x: &[f32], row_len: usize, ty: GgmlType) -> Vec<u8> {
    if ty == GgmlType::BF16 {
        return x
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
    }
    let (got, bytes) = encode(x, row_len, ty);
    assert_eq!(got, ty, "rows of {row_len} cannot be {ty:?}");
    bytes
}

fn adapter_bytes(base: &Gguf<'_>, spec: Spec) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str("llama".into()))
        .set("general.type", OwnedValue::Str("adapter".into()))
        .set("adapter.type", OwnedValue::Str("lora".into()))
        .set("adapter.lora.alpha", OwnedValue::F32(8.0))
        .set(FINGERPRINT_KEY, OwnedValue::U64(base_fingerprint(base)));
    let r = spec.rank;
    for l in 0..m.config().n_layers {
        for (k, name) in LINEAR_NAMES.iter().enumerate() {
            let t = m.layer(l).unwrap().linear(k);
            let seed = spec.seed + (l * 10 + k) as u64;
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_a"),
                spec.a,
                &[t.cols() as u64, r as u64],
                tensor_bytes(&rnd(seed + 1, r * t.cols(), 0.3), t.cols(), spec.a),
            )
            .unwrap();
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_b"),
                spec.b,
                &[r as u64, t.rows() as u64],
                tensor_bytes(&rnd(seed + 500, t.rows() * r, 0.3), r, spec.b),
            )
            .unwrap();
            if spec.dora {
                // Magnitude factors around 1 (what `m / ||W + s B A||` is for a trained DoRA).
                let g: Vec<u8> = rnd(seed + 900, t.rows(), 0.4)
                    .iter()
                    .flat_map(|v| (1.0 + v).to_le_bytes())
                    .collect();
                w.add_tensor(
                    &format!("blk.{l}.{name}.weight.dora_scale"),
                    GgmlType::F32,
                    &[t.rows() as u64],
                    g,
                )
                .unwrap();
            }
        }
    }
    w.to_bytes()
}

fn prompt(n: usize, vocab: usize, salt: usize) -> Vec<u32> {
    (0..n)
        .map(|i| ((i * 7919 + 13 + salt * 31) % vocab) as u32)
        .collect()
}

fn check_close(what: &str, got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        diff <= 1e-4 * scale,
        "{what}: max |diff| {diff} (scale {scale})"
    );
    assert_eq!(
        edgelora::sample::argmax(got),
        edgelora::sample::argmax(want),
        "{what}: argmax"
    );
    diff / scale
}

/// For each prompt length and start position: prefill vs per-token logits, then one decode
/// step on each cache.
fn compare(model: &Model<'_>, set: &AdapterSet<'_, '_, '_>, what: &str) -> f32 {
    let cfg = *model.config();
    let mut b1 = vec![0f32; State::len_for(&cfg, CTX)];
    let mut b2 = vec![0f32; State::len_for(&cfg, CTX)];
    let mut worst = 0f32;
    for start in [0usize, 7] {
        for n in [1, B - 1, B, B + 1, 3 * B + 5] {
            let what = format!("{what} start={start} n={n}");
            let head = prompt(start, cfg.vocab, 1);
            let toks = prompt(n, cfg.vocab, 2);
            let mut sa = State::new(&cfg, CTX, &mut b1).unwrap();
            let mut sb = State::new(&cfg, CTX, &mut b2).unwrap();
            // The first `start` positions: per token in both.
            for (p, &t) in head.iter().enumerate() {
                model.forward_with(t, p, &mut sa, set).unwrap();
                model.forward_with(t, p, &mut sb, set).unwrap();
            }
            let got = model
                .prefill_with(&toks, start, &mut sa, set)
                .unwrap()
                .to_vec();
            let mut want = vec![];
            for (i, &t) in toks.iter().enumerate() {
                want = model
                    .forward_with(t, start + i, &mut sb, set)
                    .unwrap()
                    .to_vec();
            }
            worst = worst.max(check_close(&what, &got, &want));
            assert_eq!(sa.len(), start + n, "{what}: filled");
            worst = worst.max(check_close(
                &format!("{what} hidden"),
                sa.hidden(),
                sb.hidden(),
            ));
            // The caches must agree: one more token on each.
            let next = (n * 13 % cfg.vocab) as u32;
            let got = model
                .forward_with(next, start + n, &mut sa, set)
                .unwrap()
                .to_vec();
            let want = model.forward_with(next, start + n, &mut sb, set).unwrap();
            worst = worst.max(check_close(&format!("{what} next"), &got, want));
        }
    }
    worst
}

/// The adapters every base is checked with (alone, and the last two together).
const SPECS: [Spec; 4] = [
    // F32 A and B, rank 4 (B's rank has no batched kernel: one vector at a time).
    Spec {
        rank: 4,
        a: GgmlType::F32,
        b: GgmlType::F32,
        dora: false,
        seed: 0,
    },
    // BF16, rank 8 (the transposed r = 8 B kernel).
    Spec {
        rank: 8,
        a: GgmlType::BF16,
        b: GgmlType::BF16,
        dora: false,
        seed: 100,
    },
    // F16, rank 8, DoRA.
    Spec {
        rank: 8,
        a: GgmlType::F16,
        b: GgmlType::F16,
        dora: true,
        seed: 200,
    },
    // Q8_0 A (against the block's own Q8_0 activations) and Q8_0 B, rank 32, DoRA.
    Spec {
        rank: 32,
        a: GgmlType::Q8_0,
        b: GgmlType::Q8_0,
        dora: true,
        seed: 300,
    },
];

fn bind_all<'a, 's>(
    g: &Gguf<'_>,
    model: &Model<'_>,
    parsed: &[Adapter<'a>],
    slots: &'s mut [Vec<Option<edgelora::lora::LoraPair<'a>>>],
) -> Vec<BoundAdapter<'a, 's>> {
    parsed
        .iter()
        .zip(slots.iter_mut())
        .map(|(a, s)| a.bind(g, model, s).unwrap())
        .collect()
}

fn run_variant(variant: &str) {
    let bytes = fixture(&format!("tiny/tiny-{variant}.gguf"));
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let worst = compare(&model, &AdapterSet::EMPTY, variant);
    eprintln!("{variant}: worst relative diff {worst:e}");
    // On AVX2 every blocked product is bit-identical to its one-vector kernel by construction.
    let avx2 = edgelora::kernels::active().isa() == edgelora::kernels::Isa::Avx2;
    let exact = |worst: f32, what: &str| {
        assert!(
            !avx2 || worst == 0.0,
            "{what}: AVX2 prefill not bit-identical to token-by-token ({worst:e})"
        );
    };
    exact(worst, variant);
    let files: Vec<Vec<u8>> = SPECS.iter().map(|&s| adapter_bytes(&g, s)).collect();
    let parsed: Vec<Adapter> = files.iter().map(|f| Adapter::parse(f).unwrap()).collect();
    let mut slots = vec![vec![None; Adapter::slots_len(model.config())]; parsed.len()];
    let bound = bind_all(&g, &model, &parsed, &mut slots);
    for (spec, b) in SPECS.iter().zip(&bound) {
        let what = format!("{variant} {spec:?}");
        let worst = compare(&model, &AdapterSet::single(b, 1.0), &what);
        eprintln!("{what}: worst relative diff {worst:e}");
        exact(worst, &what);
    }
    let mut two = AdapterSet::single(&bound[2], 0.7);
    two.push(&bound[3], -0.5).unwrap();
    let what = format!("{variant} two adapters");
    let worst = compare(&model, &two, &what);
    eprintln!("{what}: worst relative diff {worst:e}");
    exact(worst, &what);
}

#[test]
fn prefill_matches_per_token_q4_1() {
    run_variant("q4_1");
}

#[test]
fn prefill_matches_per_token_q8_0() {
    run_variant("q8_0");
}

/// PEFT adapters (`tests/fixtures/lora`, made for the F32 tiny base) converted by
/// `convert_peft`, plain and DoRA, stored as F16 and as Q8_0 (A in Q8_0; B, whose rows are r =
/// 8 or 4 values, stays F16); the F32 base's linears run the batched float matmul too.
#[test]
fn prefill_matches_per_token_peft_adapters() {
    let bytes = fixture("tiny/tiny-f32.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let worst = compare(&model, &AdapterSet::EMPTY, "f32");
    eprintln!("f32: worst relative diff {worst:e}");
    for name in ["plain", "dora"] {
        for dtype in [GgmlType::F16, GgmlType::Q8_0] {
            let dir = format!("{}/fixtures/lora/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
            let cfg = std::fs::read(format!("{dir}/adapter_config.json")).unwrap();
            let st = std::fs::read(format!("{dir}/adapter_model.safetensors")).unwrap();
            let file = convert_peft(&cfg, &st, &g, &ConvertOptions { dtype, task: None })
                .unwrap()
                .0;
            let a = Adapter::parse(&file).unwrap();
            let mut slots = vec![None; Adapter::slots_len(model.config())];
            let bound = a.bind(&g, &model, &mut slots).unwrap();
            let what = format!("peft {name} {dtype:?}");
            let worst = compare(&model, &AdapterSet::single(&bound, 1.0), &what);
            eprintln!("{what}: worst relative diff {worst:e}");
        }
    }
}

/// `AdapterSet::apply_batch` on a batch of vectors gives, bit for bit, what
/// `AdapterSet::apply` gives vector by vector: in reference mode (the same code runs), and on
/// the fast path (the batched kernels keep every sum's order), for every linear of every
/// adapter spec, DoRA and two adapters included, batch sizes around the kernels' groups, and
/// a scratch that holds only one vector's `A x` (`MAX_RANK` floats) or a few.
#[test]
fn apply_batch_equals_apply_per_vector() {
    let bytes = fixture("tiny/tiny-q8_0.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let files: Vec<Vec<u8>> = SPECS.iter().map(|&s| adapter_bytes(&g, s)).collect();
    let parsed: Vec<Adapter> = files.iter().map(|f| Adapter::parse(f).unwrap()).collect();
    let mut slots = vec![vec![None; Adapter::slots_len(&cfg)]; parsed.len()];
    let bound = bind_all(&g, &model, &parsed, &mut slots);
    let mut sets: Vec<AdapterSet> = bound.iter().map(|b| AdapterSet::single(b, 0.8)).collect();
    let mut two = AdapterSet::single(&bound[1], 0.7);
    two.push(&bound[3], -0.5).unwrap();
    sets.push(two);
    let k = kernels::active();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for mode in [KernelMode::Fast, KernelMode::Reference] {
        for (si, set) in sets.iter().enumerate() {
            for l in 0..cfg.n_layers {
                for lin in 0..LINEAR_NAMES.len() {
                    let w = model.layer(l).unwrap().linear(lin);
                    let (cols, out) = (w.cols(), w.rows());
                    for n in [1usize, 2, 3, 4, 5, 9, 16] {
                        for tmp_len in [MAX_RANK, 3 * 32 + 5, n * MAX_RANK] {
                            let x = rnd((si * 1000 + l * 10 + lin + n) as u64, n * cols, 1.5);
                            let y0 = rnd((si * 1000 + l * 10 + lin + n + 7) as u64, n * out, 2.0);
                            let mut lo = vec![0f32; out];
                            // Batched.
                            let mut q = vec![0f32; act_scratch_f32s(n * cols)];
                            let mut xb = Batch::new(&x, n, &mut q, k, mode);
                            let mut got = y0.clone();
                            let mut lt = vec![0f32; tmp_len];
                            set.apply_batch(l, lin, &mut xb, &mut got, &mut lt, &mut lo);
                            // Per vector.
                            let mut want = y0.clone();
                            let mut lt = vec![0f32; MAX_RANK];
                            for (xc, yc) in x.chunks_exact(cols).zip(want.chunks_exact_mut(out)) {
                                let mut q = vec![0f32; act_scratch_f32s(cols)];
                                let mut xi = edgelora::kernels::Input::new(xc, &mut q, k, mode);
                                set.apply(l, lin, &mut xi, yc, &mut lt, &mut lo);
                            }
                            assert_eq!(
                                bits(&got),
                                bits(&want),
                                "{mode:?} set {si} layer {l} linear {lin} n={n} tmp={tmp_len}"
                            );
                            assert_ne!(got, y0, "set {si}: the adapter changed nothing");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn prefill_rewinds_and_reports_errors() {
    let bytes = fixture("tiny/tiny-q8_0.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    let mut b1 = vec![0f32; State::len_for(&cfg, CTX)];
    let mut b2 = vec![0f32; State::len_for(&cfg, CTX)];
    let mut sa = State::new(&cfg, CTX, &mut b1).unwrap();
    let mut sb = State::new(&cfg, CTX, &mut b2).unwrap();
    let p = prompt(2 * B + 3, cfg.vocab, 3);
    let q = prompt(B + 2, cfg.vocab, 4);
    // Prefill, then rewind to position 5 and prefill something else over it.
    model.prefill(&p, 0, &mut sa).unwrap();
    let got = model.prefill(&q, 5, &mut sa).unwrap().to_vec();
    let mut want = vec![];
    for (i, &t) in p[..5].iter().chain(&q).enumerate() {
        want = model.forward(t, i, &mut sb).unwrap().to_vec();
    }
    check_close("rewind", &got, &want);
    assert_eq!(sa.len(), 5 + q.len());

    let err = |r: edgelora::Result<&[f32]>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(
        err(model.prefill(&[], 0, &mut sa)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        err(model.prefill(&prompt(CTX + 1, cfg.vocab, 5), 0, &mut sa)),
        ErrorKind::ContextFull
    );
    assert_eq!(
        err(model.prefill(&[cfg.vocab as u32], 0, &mut sa)),
        ErrorKind::TokenOutOfRange
    );
    // Skipping past the filled cache is refused before anything is written.
    let filled = sa.len();
    assert_eq!(
        err(model.prefill(&q, filled + 1, &mut sa)),
        ErrorKind::InvalidArgument
    );
    assert_eq!(sa.len(), filled);
    // A context smaller than a block still works (the block shrinks to the context).
    let mut small = vec![0f32; State::len_for(&cfg, 5)];
    let mut ss = State::new(&cfg, 5, &mut small).unwrap();
    let got = model.prefill(&p[..5], 0, &mut ss).unwrap().to_vec();
    let mut sb = State::new(&cfg, CTX, &mut b2).unwrap();
    for (i, &t) in p[..5].iter().enumerate() {
        want = model.forward(t, i, &mut sb).unwrap().to_vec();
    }
    check_close("small ctx", &got, &want);
}
