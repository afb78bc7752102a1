//! The KV cache: sliding-window rings and cache element types.
//!
//! Ring buffer (`core/src/model/kv.rs`): a sliding-window layer keeps `window + block - 1`
//! positions in a ring instead of the whole context. The ring changes where rows live, never
//! which rows are read or in what order, so every logit must be bit-identical to a state that
//! keeps every position (`CacheSpec::swa_full`), on every kernel table, for decode and for
//! prefill split in blocks of any size, and for every cache type. The tiny Gemma 3 / Gemma 2
//! fixtures have window 8, so with 32 positions and a prefill block of 16 the ring (23 rows)
//! wraps; the real Gemma 3 270M (window 512) is run past 527 positions where it is present.
//! A rewind further back than the ring holds is a typed error, not a wrong answer.

mod common;

use edgelora::model::{CacheSpec, CacheType, Model, State};
use edgelora::{ErrorKind, Gguf};

const GEMMA3: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/gemma-3-270m-q4_k_m.gguf"
);

/// Deterministic token ids below `vocab`.
fn tokens(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
    common::rnd(seed, n, 1.0)
        .iter()
        .map(|v| (((v + 1.0) * 0.5 * vocab as f32) as usize).min(vocab - 1) as u32)
        .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count()
        + a.len().abs_diff(b.len())
}

/// Logits of every position, decoding token by token.
fn decode_all(model: &Model<'_>, st: &mut State<'_>, toks: &[u32]) -> Vec<Vec<f32>> {
    toks.iter()
        .enumerate()
        .map(|(p, &t)| model.forward(t, p, st).unwrap().to_vec())
        .collect()
}

/// Logits after each chunk of `chunk` prompt tokens (one `prefill` call per chunk).
fn prefill_chunks(
    model: &Model<'_>,
    st: &mut State<'_>,
    toks: &[u32],
    chunk: usize,
) -> Vec<(usize, Vec<f32>)> {
    let mut out = vec![];
    let mut p = 0;
    for c in toks.chunks(chunk) {
        let l = model.prefill(c, p, st).unwrap().to_vec();
        p += c.len();
        out.push((p - 1, l));
    }
    out
}

#[test]
fn sliding_window_ring_is_bit_identical_to_the_full_cache() {
    const CTX: usize = 32;
    for name in ["tiny-gemma3.gguf", "tiny-gemma2.gguf"] {
        let bytes = common::fixture(&format!("arch/{name}"));
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let cfg = *model.config();
        let w = cfg.arch.swa_window;
        assert_eq!(w, 8, "{name}: the fixture's window");
        for ty in CacheType::ALL {
            if ty.check(&cfg).is_err() {
                println!(
                    "SKIPPED: {name} with a {} cache: head_dim {} (q8_0 needs a multiple of 32)",
                    ty.name(),
                    cfg.head_dim
                );
                continue;
            }
            let ring = CacheSpec::of(ty);
            let full = CacheSpec { ty, swa_full: true };
            let (lr, lf) = (
                State::len_for_cache(&cfg, CTX, ring),
                State::len_for_cache(&cfg, CTX, full),
            );
            assert!(
                lr < lf,
                "{name}: ring state {lr} not smaller than full {lf}"
            );
            let mut br = vec![0.0f32; lr];
            let mut bf = vec![0.0f32; lf];
            for k in common::tables(&format!("{name} ring")) {
                let toks = tokens(7, CTX, cfg.vocab);
                let mut sf = State::with_cache(&cfg, CTX, full, &mut bf).unwrap();
                sf.set_kernel(Some(k));
                let reference = decode_all(&model, &mut sf, &toks);
                let mut sr = State::with_cache(&cfg, CTX, ring, &mut br).unwrap();
                sr.set_kernel(Some(k));
                let got = decode_all(&model, &mut sr, &toks);
                for (p, (a, b)) in got.iter().zip(&reference).enumerate() {
                    let d = same_bits(a, b);
                    assert_eq!(
                        d,
                        0,
                        "[{name} {} {}] decode pos {p}: {d} logits differ",
                        ty.name(),
                        k.isa().name()
                    );
                }
                for chunk in [1, 3, 5, 8, 13, 16, 17, 32] {
                    let mut sr = State::with_cache(&cfg, CTX, ring, &mut br).unwrap();
                    sr.set_kernel(Some(k));
                    for (p, l) in prefill_chunks(&model, &mut sr, &toks, chunk) {
                        let d = same_bits(&l, &reference[p]);
                        assert_eq!(
                            d,
                            0,
                            "[{name} {} {}] prefill chunks of {chunk}, pos {p}: {d} logits differ",
                            ty.name(),
                            k.isa().name()
                        );
                    }
                }
                // A rewind inside what the ring keeps matches the full cache; one further back
                // is refused with a typed error, and the full cache takes it.
                let mut sr = State::with_cache(&cfg, CTX, ring, &mut br).unwrap();
                sr.set_kernel(Some(k));
                model.prefill(&toks, 0, &mut sr).unwrap();
                let back = sr.earliest_restart();
                assert!(back < CTX && back > 0, "{name}: earliest restart {back}");
                let l = model
                    .prefill(&toks[back..], back, &mut sr)
                    .unwrap()
                    .to_vec();
                assert_eq!(
                    same_bits(&l, &reference[CTX - 1]),
                    0,
                    "[{name}] rewind to {back}"
                );
                let e = model
                    .forward(toks[back - 1], back - 1, &mut sr)
                    .unwrap_err();
                assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{name}: {e}");
                let l = model.prefill(&toks[1..], 1, &mut sf).unwrap().to_vec();
                assert_eq!(
                    same_bits(&l, &reference[CTX - 1]),
                    0,
                    "[{name}] swa_full rewind"
                );
                // After clear, position 0 starts afresh.
                sr.clear();
                let l = model.prefill(&toks, 0, &mut sr).unwrap().to_vec();
                assert_eq!(
                    same_bits(&l, &reference[CTX - 1]),
                    0,
                    "[{name}] after clear"
                );
            }
            println!(
                "{name} {}: ring ({lr} f32s) bit-identical to the full cache ({lf} f32s)",
                ty.name()
            );
        }
    }
}

/// Gemma 3 270M (window 512): 560 prompt positions then decode, ring vs full cache, on the
/// active table (the tiny fixtures cover every table).
#[test]
fn gemma3_270m_ring_past_the_window() {
    let Ok(bytes) = std::fs::read(GEMMA3) else {
        println!("SKIPPED: {GEMMA3} is absent; run `cargo run --release -p edgelora-cli -- fetch gemma3`");
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    const CTX: usize = 600;
    let toks = tokens(11, CTX, cfg.vocab);
    let n_prompt = 560; // past window + block - 1 = 527: the ring has wrapped
    let spec = CacheSpec::of(CacheType::F32);
    let full = CacheSpec {
        swa_full: true,
        ..spec
    };
    let mut br = vec![0.0f32; State::len_for_cache(&cfg, CTX, spec)];
    let mut bf = vec![0.0f32; State::len_for_cache(&cfg, CTX, full)];
    let mut sr = State::with_cache(&cfg, CTX, spec, &mut br).unwrap();
    let mut sf = State::with_cache(&cfg, CTX, full, &mut bf).unwrap();
    let a = model
        .prefill(&toks[..n_prompt], 0, &mut sr)
        .unwrap()
        .to_vec();
    let b = model
        .prefill(&toks[..n_prompt], 0, &mut sf)
        .unwrap()
        .to_vec();
    assert_eq!(same_bits(&a, &b), 0, "gemma3 270m prefill of {n_prompt}");
    for p in n_prompt..n_prompt + 8 {
        let a = model.forward(toks[p], p, &mut sr).unwrap().to_vec();
        let b = model.forward(toks[p], p, &mut sf).unwrap().to_vec();
        assert_eq!(same_bits(&a, &b), 0, "gemma3 270m decode at {p}");
    }
    println!(
        "gemma3 270m: ring bit-identical to the full cache past position {n_prompt} ({} vs {} state bytes at ctx {CTX})",
        State::bytes_for_cache(&cfg, CTX, spec),
        State::bytes_for_cache(&cfg, CTX, full)
    );
}

/// A q8_0 cache on a model whose head_dim is not a multiple of 32 is a typed error that names
/// what to do.
#[test]
fn q8_0_cache_refuses_heads_not_a_multiple_of_32() {
    let bytes = common::fixture("arch/tiny-llama.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = *model.config();
    assert_ne!(cfg.head_dim % 32, 0);
    let spec = CacheSpec::of(CacheType::Q8_0);
    let mut buf = vec![0.0f32; State::len_for_cache(&cfg, 16, spec)];
    let e = State::with_cache(&cfg, 16, spec, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    let msg = e.to_string();
    assert!(msg.contains("head_dim") && msg.contains("f16"), "{msg}");
}
