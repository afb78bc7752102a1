//! Load and soak: adapters swapped on every request, no leakage between them.
//!
//! One tiny model, three adapters of different ranks and targets (made here, as a device would
//! receive them), and 10,000 requests, each with a random choice of adapter set (none, one of
//! the three, or two at once) and a random prompt, all through ONE reused `State` that is only
//! `clear()`ed between requests. Each answer (4 greedy tokens, and the bits of every logit on
//! the way) must equal the answer of a fresh state running that adapter set alone. A stale KV
//! entry, scratch buffer or LoRA temporary carried over from the previous request would show as
//! a mismatch. Then the same check with threads: concurrent generations with different
//! adapters on one shared `Model`, each thread with its own `State`.

use edgelora::format::gguf_write::{GgufWriter, OwnedValue as V};
use edgelora::lora::{base_fingerprint, Adapter, AdapterSet, BoundAdapter, FINGERPRINT_KEY};
use edgelora::model::{Model, State, LINEAR_NAMES};
use edgelora::quant::GgmlType;
use edgelora::sample::argmax;
use edgelora::Gguf;
use std::time::Instant;

const REQUESTS: usize = 10_000;
const PROMPTS: usize = 24;
const GEN: usize = 4;
const CTX: usize = 16;

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(format!("{}/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))).expect("fixture")
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// An adapter on `targets` (layer, linear) with rank `r`, F32 or F16 weights.
fn make(base: &Gguf<'_>, targets: &[(usize, usize)], r: usize, seed: u64, ty: GgmlType) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).expect("model");
    let mut rng = Rng(seed);
    let mut w = GgufWriter::new();
    w.set("general.architecture", V::Str("llama".into()))
        .set("general.type", V::Str("adapter".into()))
        .set("adapter.type", V::Str("lora".into()))
        .set("adapter.lora.alpha", V::F32(r as f32))
        .set(FINGERPRINT_KEY, V::U64(base_fingerprint(base)));
    let bytes = |n: usize, rng: &mut Rng| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                let v = rng.unit() * 0.4;
                match ty {
                    GgmlType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                }
            })
            .collect()
    };
    for &(l, k) in targets {
        let t = m.layer(l).expect("layer").linear(k);
        let name = format!("blk.{l}.{}.weight", LINEAR_NAMES[k]);
        let a = bytes(r * t.cols(), &mut rng);
        let b = bytes(t.rows() * r, &mut rng);
        w.add_tensor(
            &format!("{name}.lora_a"),
            ty,
            &[t.cols() as u64, r as u64],
            a,
        )
        .expect("a");
        w.add_tensor(
            &format!("{name}.lora_b"),
            ty,
            &[r as u64, t.rows() as u64],
            b,
        )
        .expect("b");
    }
    w.to_bytes()
}

/// One request's answer: the generated tokens and a hash of every logit's bits on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    tokens: [u32; GEN],
    logit_hash: u64,
}

fn hash_logits(h: &mut u64, logits: &[f32]) {
    for v in logits {
        *h = (*h ^ v.to_bits() as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// Prompt, then `GEN` greedy tokens, on `st` (cleared first). `batched` uses `prefill_with`
/// for the prompt, otherwise one `forward_with` per token: both must give the same answer.
fn answer(
    m: &Model<'_, 4>,
    st: &mut State<'_>,
    set: &AdapterSet<'_, '_, '_>,
    prompt: &[u32],
    batched: bool,
) -> Answer {
    st.clear();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut last = if batched {
        m.prefill_with(prompt, 0, st, set)
            .expect("prefill")
            .to_vec()
    } else {
        let mut l = vec![];
        for (p, &t) in prompt.iter().enumerate() {
            l = m.forward_with(t, p, st, set).expect("forward").to_vec();
        }
        l
    };
    hash_logits(&mut h, &last);
    let mut tokens = [0u32; GEN];
    for (i, slot) in tokens.iter_mut().enumerate() {
        let t = argmax(&last);
        *slot = t;
        if i + 1 < GEN {
            last = m
                .forward_with(t, prompt.len() + i, st, set)
                .expect("generate")
                .to_vec();
            hash_logits(&mut h, &last);
        }
    }
    Answer {
        tokens,
        logit_hash: h,
    }
}

/// The adapter sets requests choose from: none, each adapter alone, two at once.
fn sets<'r, 'a, 's>(b: &'r [BoundAdapter<'a, 's>]) -> Vec<AdapterSet<'r, 'a, 's>> {
    let mut two = AdapterSet::single(&b[0], 0.5);
    two.push(&b[2], 1.5).expect("two adapters");
    vec![
        AdapterSet::EMPTY,
        AdapterSet::single(&b[0], 1.0),
        AdapterSet::single(&b[1], 1.0),
        AdapterSet::single(&b[2], 0.75),
        two,
    ]
}

#[test]
fn ten_thousand_requests_with_random_adapter_swaps_match_fresh_runs() {
    let base_bytes = fixture("tiny/tiny-q8_0.gguf");
    let base = Gguf::parse(&base_bytes).expect("base");
    let model: Model<4> = Model::from_gguf(&base).expect("model");
    let cfg = *model.config();
    let all: Vec<(usize, usize)> = (0..cfg.n_layers)
        .flat_map(|l| (0..LINEAR_NAMES.len()).map(move |k| (l, k)))
        .collect();
    let attn: Vec<(usize, usize)> = (0..cfg.n_layers)
        .flat_map(|l| (0..4).map(move |k| (l, k)))
        .collect();
    let files = [
        make(&base, &all, 8, 1, GgmlType::F32),
        make(&base, &attn, 4, 2, GgmlType::F16),
        make(&base, &[(0, 6), (1, 4), (1, 5)], 16, 3, GgmlType::F16),
    ];
    let parsed: Vec<Adapter<'_>> = files
        .iter()
        .map(|f| Adapter::parse(f).expect("adapter"))
        .collect();
    let n = Adapter::slots_len(&cfg);
    let mut slots: Vec<Vec<_>> = (0..3).map(|_| vec![None; n]).collect();
    let bound: Vec<BoundAdapter<'_, '_>> = parsed
        .iter()
        .zip(slots.iter_mut())
        .map(|(a, s)| a.bind(&base, &model, s).expect("bind"))
        .collect();
    let sets = sets(&bound);

    let mut rng = Rng(0x5eed);
    let prompts: Vec<Vec<u32>> = (0..PROMPTS)
        .map(|_| {
            (0..1 + rng.below(CTX - GEN))
                .map(|_| rng.below(cfg.vocab) as u32)
                .collect()
        })
        .collect();

    // References: a fresh state for every (set, prompt).
    let t0 = Instant::now();
    let reference: Vec<Vec<Answer>> = sets
        .iter()
        .map(|set| {
            prompts
                .iter()
                .map(|p| {
                    let mut buf = vec![0f32; State::len_for(&cfg, CTX)];
                    let mut st = State::new(&cfg, CTX, &mut buf).expect("state");
                    answer(&model, &mut st, set, p, false)
                })
                .collect()
        })
        .collect();
    // The adapters must matter, or the test proves nothing.
    for (i, r) in reference.iter().enumerate().skip(1) {
        let differ = r
            .iter()
            .zip(&reference[0])
            .filter(|(a, b)| a.logit_hash != b.logit_hash)
            .count();
        assert_eq!(
            differ, PROMPTS,
            "adapter set {i} leaves some logits unchanged"
        );
    }
    let distinct: std::collections::BTreeSet<[u32; GEN]> =
        reference.iter().flatten().map(|a| a.tokens).collect();

    // The soak: one state, reused, a random adapter set per request.
    let mut buf = vec![0f32; State::len_for(&cfg, CTX)];
    let mut st = State::new(&cfg, CTX, &mut buf).expect("state");
    let t1 = Instant::now();
    let (mut mismatches, mut token_mismatches) = (0, 0);
    let mut per_set = vec![0usize; sets.len()];
    for i in 0..REQUESTS {
        let (s, p) = (rng.below(sets.len()), rng.below(PROMPTS));
        per_set[s] += 1;
        let got = answer(&model, &mut st, &sets[s], &prompts[p], i % 2 == 0);
        if got != reference[s][p] {
            mismatches += 1;
            token_mismatches += (got.tokens != reference[s][p].tokens) as usize;
        }
    }
    let soak = t1.elapsed();
    println!(
        "soak: {REQUESTS} requests ({per_set:?} per adapter set: none, A r8 all, B r4 attn, C r16 ffn, A+C), \
         {mismatches} mismatches ({token_mismatches} in tokens), {} distinct answers, references {:.2?}, soak {soak:.2?}",
        distinct.len(),
        t1 - t0
    );
    assert_eq!(mismatches, 0, "answers leaked state across adapter swaps");

    // Concurrent: one shared model, different adapters, a state per thread.
    const THREADS: usize = 4;
    const PER_THREAD: usize = 500;
    let t2 = Instant::now();
    let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (model, sets, prompts, reference) = (&model, &sets, &prompts, &reference);
                sc.spawn(move || {
                    let mut rng = Rng(0x1000 + t as u64);
                    let mut buf = vec![0f32; State::len_for(&cfg, CTX)];
                    let mut st = State::new(&cfg, CTX, &mut buf).expect("state");
                    let mut bad = 0;
                    for i in 0..PER_THREAD {
                        // Each thread favours its own adapter set but also swaps.
                        let s = if i % 3 == 0 {
                            rng.below(sets.len())
                        } else {
                            (t + 1) % sets.len()
                        };
                        let p = rng.below(PROMPTS);
                        if answer(model, &mut st, &sets[s], &prompts[p], i % 2 == 1)
                            != reference[s][p]
                        {
                            bad += 1;
                        }
                    }
                    (PER_THREAD, bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let (done, bad): (usize, usize) = results.iter().fold((0, 0), |a, r| (a.0 + r.0, a.1 + r.1));
    println!("concurrent: {THREADS} threads, {done} requests on one shared model, {bad} mismatches, {:.2?}", t2.elapsed());
    assert_eq!(
        bad, 0,
        "concurrent generations disagreed with fresh single-adapter runs"
    );
}
