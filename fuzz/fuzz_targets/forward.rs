//! `Model::forward_with` / `prefill_with` on the tiny model with arbitrary token ids,
//! positions, rewinds, kernel modes and adapter sets, then sampling with a fuzzed config.
//! The input is a recipe:
//!
//! ```text
//! byte 0   bits 0-1 weights (Q8_0, Q4_1, F32), bits 2-3 adapters (none, plain, rsLoRA,
//!          both), bit 4 reference kernels from the start
//! byte 1   context length of the state (1..=40)
//! then ops until the input ends, one byte each plus arguments:
//!   0 forward(token: u16 or raw u32, pos: u8)   1 prefill(n: u8 % 9 tokens, start: u8)
//!   2 clear   3 truncate(u8)   4 toggle kernel mode   5 append(token: u16) at len()
//!   6 sample(temperature, top_k, top_p, penalty as raw bits) on the last logits
//! ```
//!
//! Oracles besides "no panic": each call succeeds exactly when the documented preconditions
//! hold and otherwise returns the documented error kind, leaving the cache as it was; and the
//! last successful logits are reproduced bit for bit by a fresh state replaying the tokens
//! the cache should hold (no stale KV, scratch or adapter state leaks across rewinds).
#![no_main]

#[path = "common.rs"]
mod common;

use common::Recipe;
use edgelora::lora::{Adapter, AdapterSet, LoraPair};
use edgelora::model::{KernelMode, Model, State};
use edgelora::sample::{Sampler, SamplerConfig};
use edgelora::ErrorKind;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static PLAIN: &[u8] = include_bytes!("../../tests/fixtures/lora/tiny/plain.llamacpp.gguf");
static RSLORA: &[u8] = include_bytes!("../../tests/fixtures/lora/tiny/rslora.llamacpp.gguf");

type Slots = Vec<Option<LoraPair<'static>>>;

/// Slot tables of both adapters bound to each weight variant.
fn slots(variant: u8) -> &'static [Slots; 2] {
    static S: OnceLock<Vec<[Slots; 2]>> = OnceLock::new();
    &S.get_or_init(|| {
        (0..3)
            .map(|v| {
                let b = common::tiny_variant(v);
                [PLAIN, RSLORA].map(|bytes| {
                    let a = Adapter::parse(bytes).expect("committed adapter");
                    let mut s = vec![None; Adapter::slots_len(b.model.config())];
                    a.bind(&b.gguf, &b.model, &mut s)
                        .expect("committed adapter binds");
                    s
                })
            })
            .collect()
    })[(variant % 3) as usize]
}

type Shadow = Vec<(u32, KernelMode)>;

fn replay(m: &Model<'_, 4>, set: &AdapterSet<'_, '_, '_>, ctx: usize, shadow: &Shadow) -> Vec<f32> {
    let cfg = *m.config();
    let mut buf = vec![0f32; State::len_for(&cfg, ctx)];
    let mut st = State::new(&cfg, ctx, &mut buf).expect("state");
    let mut last = Vec::new();
    for (pos, &(t, mode)) in shadow.iter().enumerate() {
        st.set_kernel_mode(mode);
        last = m
            .forward_with(t, pos, &mut st, set)
            .expect("replay")
            .to_vec();
    }
    last
}

fuzz_target!(|data: &[u8]| {
    let mut r = Recipe(data);
    let head = r.u8();
    let variant = head & 3;
    let base = common::tiny_variant(variant);
    let m = &base.model;
    let cfg = *m.config();
    let vocab = cfg.vocab;

    // Adapter sets: bound views share the static slot tables.
    let pick = (head >> 2) & 3;
    let s = slots(variant);
    let (pa, ra) = (
        Adapter::parse(PLAIN).expect("plain"),
        Adapter::parse(RSLORA).expect("rslora"),
    );
    let mut t0 = s[0].clone();
    let mut t1 = s[1].clone();
    let b0 = pa.bind(&base.gguf, m, &mut t0).expect("bind");
    let b1 = ra.bind(&base.gguf, m, &mut t1).expect("bind");
    let mut set = AdapterSet::EMPTY;
    if pick & 1 != 0 {
        set.push(&b0, 1.0).expect("push");
    }
    if pick & 2 != 0 {
        set.push(&b1, -0.5).expect("push");
    }

    let ctx = 1 + r.u8() as usize % 40;
    let mut buf = vec![0f32; State::len_for(&cfg, ctx)];
    let mut st = match State::new(&cfg, ctx, &mut buf) {
        Ok(st) => st,
        Err(e) => {
            assert!(ctx > cfg.ctx_len, "{e}");
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            return;
        }
    };
    let mut mode = if head & 16 != 0 {
        KernelMode::Reference
    } else {
        KernelMode::Fast
    };
    st.set_kernel_mode(mode);
    let mut shadow: Shadow = Vec::new();
    let mut last: Option<(Shadow, Vec<f32>)> = None;
    let token = |r: &mut Recipe<'_>| -> u32 {
        let v = r.u16();
        if v == 0xffff {
            r.u32()
        } else {
            v as u32 % (vocab as u32 + 4)
        }
    };

    let mut ops = 0;
    while !r.is_empty() && ops < 64 {
        ops += 1;
        match r.u8() % 7 {
            op @ (0 | 5) => {
                let t = token(&mut r);
                let pos = if op == 0 { r.u8() as usize } else { st.len() };
                let res = m.forward_with(t, pos, &mut st, &set).map(|l| l.to_vec());
                let filled = shadow.len();
                let ok = (t as usize) < vocab && pos < ctx && pos <= filled;
                match res {
                    Ok(l) => {
                        assert!(
                            ok,
                            "forward({t}, {pos}) accepted (ctx {ctx}, filled {filled})"
                        );
                        assert_eq!(l.len(), vocab);
                        shadow.truncate(pos);
                        shadow.push((t, mode));
                        last = Some((shadow.clone(), l));
                    }
                    Err(e) => {
                        assert!(!ok, "forward({t}, {pos}) refused: {e}");
                        let want = if (t as usize) >= vocab {
                            ErrorKind::TokenOutOfRange
                        } else if pos >= ctx {
                            ErrorKind::ContextFull
                        } else {
                            ErrorKind::InvalidArgument
                        };
                        assert_eq!(e.kind(), want, "{e}");
                    }
                }
            }
            1 => {
                let n = r.u8() as usize % 9;
                let toks: Vec<u32> = (0..n).map(|_| token(&mut r)).collect();
                let start = r.u8() as usize;
                let res = m
                    .prefill_with(&toks, start, &mut st, &set)
                    .map(|l| l.to_vec());
                let ok = n > 0
                    && toks.iter().all(|&t| (t as usize) < vocab)
                    && start + n <= ctx
                    && start <= shadow.len();
                match res {
                    Ok(l) => {
                        assert!(ok, "prefill({toks:?}, {start}) accepted");
                        shadow.truncate(start);
                        shadow.extend(toks.iter().map(|&t| (t, mode)));
                        last = Some((shadow.clone(), l));
                    }
                    Err(e) => assert!(!ok, "prefill({toks:?}, {start}) refused: {e}"),
                }
            }
            2 => {
                st.clear();
                shadow.clear();
            }
            3 => {
                let n = r.u8() as usize;
                st.truncate(n);
                shadow.truncate(n);
            }
            4 => {
                mode = if mode == KernelMode::Fast {
                    KernelMode::Reference
                } else {
                    KernelMode::Fast
                };
                st.set_kernel_mode(mode);
            }
            _ => {
                let sc = SamplerConfig {
                    temperature: f32::from_bits(r.u32()),
                    top_k: r.u8() as usize,
                    top_p: f32::from_bits(r.u32()),
                    repeat_penalty: f32::from_bits(r.u32()),
                    repeat_last_n: r.u8() as usize,
                    seed: r.u32() as u64,
                    ..Default::default()
                };
                if let (Ok(mut smp), Some((sh, l))) = (Sampler::new(sc), &last) {
                    let recent: Vec<u32> = sh.iter().map(|x| x.0).collect();
                    let t = smp
                        .sample(&mut l.clone(), &recent)
                        .expect("non-empty logits");
                    assert!((t as usize) < vocab);
                }
            }
        }
        assert_eq!(st.len(), shadow.len(), "cache length");
    }
    if let Some((sh, l)) = last {
        let again = replay(m, &set, ctx, &sh);
        let same = l
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "logits after {} positions differ from a fresh replay",
            sh.len()
        );
    }
});
