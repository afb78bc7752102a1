//! `Adapter::parse` on arbitrary bytes, then `bind` against the tiny model, then (if it binds)
//! a forward pass with it active, alone and next to a known-good adapter, and a merge.
//!
//! Oracles besides "no panic": `pairs()` yields `n_pairs()` pairs of rank 1..=MAX_RANK whose
//! B has `rank` columns; a failed bind leaves the caller's slot table exactly as it was (the
//! previously bound adapter keeps working); a successful bind gives every adapted linear a
//! pair that fits it.
#![no_main]

#[path = "common.rs"]
mod common;

use edgelora::format::gguf::Gguf;
use edgelora::lora::merge::{merge_into, merged_len};
use edgelora::lora::{parse_target, Adapter, AdapterSet, BoundAdapter, LoraPair, MAX_RANK};
use edgelora::model::{State, LINEARS};
use edgelora::quant::GgmlType;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A real adapter for the tiny model (llama.cpp's converter), bound once.
static GOOD: &[u8] = include_bytes!("../../tests/fixtures/lora/tiny/plain.llamacpp.gguf");

fn good_slots() -> &'static Vec<Option<LoraPair<'static>>> {
    static S: OnceLock<Vec<Option<LoraPair<'static>>>> = OnceLock::new();
    S.get_or_init(|| {
        let b = common::tiny();
        let a = Adapter::parse(GOOD).expect("committed adapter parses");
        let mut slots = vec![None; Adapter::slots_len(b.model.config())];
        a.bind(&b.gguf, &b.model, &mut slots)
            .expect("committed adapter fits the tiny model");
        slots
    })
}

fn two_tokens(set: &AdapterSet<'_, '_, '_>) {
    let m = &common::tiny().model;
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 2)];
    let mut st = State::new(&cfg, 2, &mut buf).expect("state");
    for (pos, tok) in [(0usize, 1u32), (1, 42)] {
        let logits = m
            .forward_with(tok, pos, &mut st, set)
            .expect("bound adapter runs");
        assert_eq!(logits.len(), cfg.vocab);
    }
}

fn merge_one(bound: &BoundAdapter<'_, '_>, pick: u8) {
    let m = &common::tiny().model;
    let ty = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ][pick as usize % 5];
    for l in 0..m.config().n_layers {
        for k in 0..LINEARS {
            let Some(p) = bound.pair(l, k) else { continue };
            // One small merge per input keeps the target fast.
            if p.rank() > 16 {
                return;
            }
            let w = m.layer(l).expect("layer").linear(k);
            let mut out = vec![0u8; merged_len(w, ty).expect("tiny rows fit every type")];
            let mut row = vec![0f32; 2 * w.cols()];
            merge_into(w, &[(*p, 0.5)], ty, &mut out, &mut row).expect("bound pair merges");
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(a) = Adapter::parse(data) else { return };
    let mut n = 0;
    for (name, p) in a.pairs() {
        n += 1;
        assert!((1..=MAX_RANK).contains(&p.rank()));
        assert_eq!(p.b.cols(), p.rank());
        assert!(p.rank() <= a.max_rank());
        if let Some(d) = p.dora {
            assert_eq!(d.len(), 4 * p.b.rows());
        }
        std::hint::black_box(parse_target(name));
    }
    assert_eq!(n, a.n_pairs());
    std::hint::black_box((
        a.alpha(),
        a.fingerprint(),
        a.head(),
        a.gguf().tensor_count(),
    ));

    let base = common::tiny();
    let good = good_slots();
    // The caller's slot table holds another adapter's pairs; a failed bind must not touch it.
    let mut slots: Vec<Option<LoraPair<'_>>> = good.clone();
    match a.bind(&base.gguf, &base.model, &mut slots) {
        Err(_) => assert!(slots == *good, "failed bind modified the slot table"),
        Ok(bound) => {
            let cfg = base.model.config();
            for l in 0..cfg.n_layers {
                for k in 0..LINEARS {
                    if let Some(p) = bound.pair(l, k) {
                        let w = base.model.layer(l).expect("layer").linear(k);
                        assert_eq!((p.a.cols(), p.b.rows()), (w.cols(), w.rows()));
                    }
                }
            }
            if let Some(h) = bound.head() {
                assert_eq!(
                    (h.rows(), h.cols()),
                    (base.model.output().rows(), base.model.output().cols())
                );
            }
            two_tokens(&AdapterSet::single(&bound, 1.0));
            let mut gs = good.clone();
            let good_a = Adapter::parse(GOOD).expect("good");
            let gb = good_a
                .bind(&base.gguf, &base.model, &mut gs)
                .expect("good binds");
            let mut set = AdapterSet::single(&gb, 0.5);
            set.push(&bound, 2.0).expect("two of MAX_ACTIVE");
            two_tokens(&set);
            merge_one(&bound, data.last().copied().unwrap_or(0));
        }
    }
    // Binding against a different (unrelated) GGUF never panics either.
    let other = Gguf::parse(data).expect("parsed above");
    let mut s2 = vec![None; Adapter::slots_len(base.model.config())];
    std::hint::black_box(a.bind(&other, &base.model, &mut s2).is_ok());
});
