//! Batched prefill (`Model::prefill_with`, blocks of `PREFILL_BLOCK` tokens through each layer)
//! against the token-by-token path (`Model::forward_with`) on the tiny fixtures, with and
//! without a LoRA adapter.
//!
//! Both run the same fast kernels on the same Q8-quantised activations; only the f32
//! summation order inside the blocked matmul may differ from the matvec. We require the
//! logits to agree within 1e-4 of the largest logit magnitude (observed: 0 on AVX-512, where
//! the blocked kernel accumulates each column in the same order as the matvec) and the same
//! argmax, and the KV cache left behind to give the same next-token logits. On AVX2 the blocked
//! matmuls are bit-identical to its matvecs by construction, so there the difference must be 0.

use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::lora::{base_fingerprint, Adapter, AdapterSet, FINGERPRINT_KEY};
use edgelora::model::{Model, State, LINEAR_NAMES, PREFILL_BLOCK};
use edgelora::quant::GgmlType;
use edgelora::{ErrorKind, Gguf};

const B: usize = PREFILL_BLOCK;
const CTX: usize = 64;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{}/fixtures/tiny/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// xorshift values in [-amp, amp).
fn rnd(seed: u64, n: usize, amp: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// A rank-4 F32 adapter on every linear of `base`.
fn adapter_bytes(base: &Gguf<'_>) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str("llama".into()))
        .set("general.type", OwnedValue::Str("adapter".into()))
        .set("adapter.type", OwnedValue::Str("lora".into()))
        .set("adapter.lora.alpha", OwnedValue::F32(8.0))
        .set(FINGERPRINT_KEY, OwnedValue::U64(base_fingerprint(base)));
    let r = 4usize;
    for l in 0..m.config().n_layers {
        for (k, name) in LINEAR_NAMES.iter().enumerate() {
            let t = m.layer(l).unwrap().linear(k);
            let seed = (l * 10 + k) as u64;
            let bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_a"),
                GgmlType::F32,
                &[t.cols() as u64, r as u64],
                bytes(rnd(seed + 1, r * t.cols(), 0.3)),
            )
            .unwrap();
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_b"),
                GgmlType::F32,
                &[r as u64, t.rows() as u64],
                bytes(rnd(seed + 500, t.rows() * r, 0.3)),
            )
            .unwrap();
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

fn run_variant(variant: &str) {
    let bytes = fixture(&format!("tiny-{variant}.gguf"));
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let worst = compare(&model, &AdapterSet::EMPTY, variant);
    let ab = adapter_bytes(&g);
    let a = Adapter::parse(&ab).unwrap();
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    let bound = a.bind(&g, &model, &mut slots).unwrap();
    let worst_lora = compare(&model, &AdapterSet::single(&bound, 1.0), variant);
    eprintln!("{variant}: worst relative diff {worst:e}, with LoRA {worst_lora:e}");
    if edgelora::kernels::active().isa() == edgelora::kernels::Isa::Avx2 {
        assert!(
            worst == 0.0 && worst_lora == 0.0,
            "{variant}: AVX2 prefill not bit-identical to token-by-token"
        );
    }
}

#[test]
fn prefill_matches_per_token_q4_1() {
    run_variant("q4_1");
}

#[test]
fn prefill_matches_per_token_q8_0() {
    run_variant("q8_0");
}

#[test]
fn prefill_rewinds_and_reports_errors() {
    let bytes = fixture("tiny-q8_0.gguf");
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
