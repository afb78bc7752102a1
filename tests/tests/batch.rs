//! Multi-sequence steps (`Model::step_many`): several sequences, each with its own state, its
//! own position and its own adapter set (or none), run through the layers in one pass, as
//! the server's continuous batching does. Each sequence's logits must be bit for bit what it
//! gets when run alone (`prefill_with` then `forward_with`), whatever shares its steps:
//! every column of the blocked matmuls and of the per-group LoRA products keeps the matvec's
//! summation order (the README's cross-table contract), so nothing looser is allowed.
//!
//! The schedule mixes everything a server sees: sequences joining at different steps, prompts
//! of different lengths prefilled in chunks beside running decodes, two sequences sharing one
//! adapter set object (one LoRA group), the base alone, and sequences leaving at different
//! steps. Checked on the tiny fixtures on every kernel table this CPU has, and on SmolLM2 with
//! its three task adapters plus the benchmark adapter.

use edgelora::format::gguf_write::{GgufWriter, OwnedValue};
use edgelora::kernels::Kernel;
use edgelora::lora::convert::encode;
use edgelora::lora::{base_fingerprint, Adapter, AdapterSet, BoundAdapter, FINGERPRINT_KEY};
use edgelora::model::{
    state_buffer, step_scratch_buffer, Model, SeqStep, State, StepScratch, LINEAR_NAMES,
};
use edgelora::quant::GgmlType;
use edgelora::{ErrorKind, Gguf};

mod common;
use common::{fixture, rnd};

/// A random rank-`r` adapter (F16 A, F32 B) on every linear of the base.
fn random_adapter(base: &Gguf<'_>, r: usize, seed: u64) -> Vec<u8> {
    let m: Model<4> = Model::from_gguf(base).unwrap();
    let mut w = GgufWriter::new();
    w.set("general.architecture", OwnedValue::Str("llama".into()))
        .set("general.type", OwnedValue::Str("adapter".into()))
        .set("adapter.type", OwnedValue::Str("lora".into()))
        .set("adapter.lora.alpha", OwnedValue::F32(8.0))
        .set(FINGERPRINT_KEY, OwnedValue::U64(base_fingerprint(base)));
    for l in 0..m.config().n_layers {
        for (k, name) in LINEAR_NAMES.iter().enumerate() {
            let t = m.layer(l).unwrap().linear(k);
            let s = seed + (l * 10 + k) as u64;
            let a = encode(&rnd(s + 1, r * t.cols(), 0.3), t.cols(), GgmlType::F16).1;
            let b = encode(&rnd(s + 500, t.rows() * r, 0.3), r, GgmlType::F32).1;
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_a"),
                GgmlType::F16,
                &[t.cols() as u64, r as u64],
                a,
            )
            .unwrap();
            w.add_tensor(
                &format!("blk.{l}.{name}.weight.lora_b"),
                GgmlType::F32,
                &[r as u64, t.rows() as u64],
                b,
            )
            .unwrap();
        }
    }
    w.to_bytes()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// One sequence of the schedule.
struct Job {
    prompt: Vec<u32>,
    /// Tokens to generate.
    want: usize,
    /// The step it joins at.
    join: usize,
    /// Index of its adapter set.
    set: usize,
}

/// Greedy tokens and the logits each was picked from, the sequence run alone.
fn alone(
    model: &Model,
    ctx: usize,
    kern: &'static Kernel,
    job: &Job,
    set: &AdapterSet,
) -> Vec<Vec<f32>> {
    let mut buf = state_buffer(model.config(), ctx);
    let mut st = State::new(model.config(), ctx, &mut buf).unwrap();
    st.set_kernel(Some(kern));
    let mut logits = model
        .prefill_with(&job.prompt, 0, &mut st, set)
        .unwrap()
        .to_vec();
    let mut out = vec![];
    for i in 0..job.want {
        out.push(logits.clone());
        if i + 1 < job.want {
            let t = argmax(&logits);
            let pos = job.prompt.len() + i;
            logits = model.forward_with(t, pos, &mut st, set).unwrap().to_vec();
        }
    }
    out
}

/// The schedule run with continuous batching: per step, every running sequence's next
/// token, then prompt chunks of at most `chunk` tokens while the step has room for `budget`.
fn batched(
    model: &Model,
    ctx: usize,
    kern: &'static Kernel,
    jobs: &[Job],
    sets: &[AdapterSet],
    budget: usize,
    chunk: usize,
) -> Vec<Vec<Vec<f32>>> {
    let cfg = model.config();
    let mut bufs: Vec<Vec<f32>> = jobs.iter().map(|_| state_buffer(cfg, ctx)).collect();
    let mut states: Vec<State> = bufs
        .iter_mut()
        .map(|b| {
            let mut s = State::new(cfg, ctx, b).unwrap();
            s.set_kernel(Some(kern));
            s
        })
        .collect();
    let mut sbuf = step_scratch_buffer(cfg, ctx, budget, 3);
    let mut scratch = StepScratch::new(cfg, ctx, budget, 3, &mut sbuf).unwrap();
    let mut fed = vec![0usize; jobs.len()];
    let mut got: Vec<Vec<Vec<f32>>> = jobs.iter().map(|_| vec![]).collect();
    let mut step = 0;
    while got.iter().zip(jobs).any(|(g, j)| g.len() < j.want) {
        assert!(step < 10_000, "schedule does not finish");
        // (job, tokens, pos, wants logits)
        let mut plan: Vec<(usize, Vec<u32>, usize, bool)> = vec![];
        let mut room = budget;
        // Decodes first (one token each), then prompt chunks.
        for (i, j) in jobs.iter().enumerate() {
            let g = &got[i];
            if j.join <= step
                && fed[i] == j.prompt.len()
                && !g.is_empty()
                && g.len() < j.want
                && room > 0
            {
                let t = argmax(g.last().unwrap());
                plan.push((i, vec![t], j.prompt.len() + g.len() - 1, true));
                room -= 1;
            }
        }
        for (i, j) in jobs.iter().enumerate() {
            if j.join <= step && fed[i] < j.prompt.len() && room > 0 {
                let n = chunk.min(room).min(j.prompt.len() - fed[i]);
                let toks = j.prompt[fed[i]..fed[i] + n].to_vec();
                plan.push((i, toks, fed[i], fed[i] + n == j.prompt.len()));
                fed[i] += n;
                room -= n;
            }
        }
        // Group sequences of one adapter set together (one LoRA pass per group).
        plan.sort_by_key(|p| jobs[p.0].set);
        if !plan.is_empty() {
            let mut refs: Vec<Option<&mut State>> = states.iter_mut().map(Some).collect();
            let mut seqs: Vec<SeqStep> = plan
                .iter()
                .map(|(i, toks, pos, logits)| SeqStep {
                    state: refs[*i].take().unwrap(),
                    tokens: toks,
                    pos: *pos,
                    adapters: &sets[jobs[*i].set],
                    logits: *logits,
                })
                .collect();
            model.step_many(&mut scratch, &mut seqs).unwrap();
            drop(seqs);
            for (i, _, _, logits) in &plan {
                if *logits {
                    got[*i].push(states[*i].logits().to_vec());
                }
            }
        }
        step += 1;
    }
    got
}

/// Jobs over `sets.len()` sets: every set once, set 1 twice (one shared group), prompts of
/// different lengths joining at different steps.
fn jobs(vocab: usize, n_sets: usize, want: usize) -> Vec<Job> {
    let mut v = vec![];
    for k in 0..n_sets + 1 {
        let set = if k == n_sets { 1 } else { k };
        let len = 3 + 11 * k;
        v.push(Job {
            prompt: (0..len)
                .map(|i| ((i * 7919 + 13 + k * 31) % vocab) as u32)
                .collect(),
            want: want + 2 * k,
            join: 2 * k,
            set,
        });
    }
    v
}

fn check(
    model: &Model,
    ctx: usize,
    kern: &'static Kernel,
    jobs: &[Job],
    sets: &[AdapterSet],
    what: &str,
) {
    let want: Vec<_> = jobs
        .iter()
        .map(|j| alone(model, ctx, kern, j, &sets[j.set]))
        .collect();
    for (budget, chunk) in [(24, 5), (64, 32)] {
        let got = batched(model, ctx, kern, jobs, sets, budget, chunk);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.len(), w.len(), "{what}: job {k}");
            for (t, (a, b)) in g.iter().zip(w).enumerate() {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{what} (budget {budget}, chunk {chunk}): job {k} (set {}), token {t}: logits differ from the sequence alone", jobs[k].set);
            }
        }
        let toks: Vec<Vec<u32>> = got
            .iter()
            .map(|g| g.iter().map(|l| argmax(l)).collect())
            .collect();
        eprintln!("{what} (budget {budget}, chunk {chunk}): identical; tokens {toks:?}");
    }
}

#[test]
fn tiny_many_sequences_equal_each_alone() {
    for variant in ["q8_0", "q4_1", "f32"] {
        let bytes = fixture(&format!("tiny/tiny-{variant}.gguf"));
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let files: Vec<Vec<u8>> = [(4, 1), (8, 2), (32, 3)]
            .iter()
            .map(|&(r, s)| random_adapter(&g, r, s * 1000))
            .collect();
        let parsed: Vec<Adapter> = files.iter().map(|f| Adapter::parse(f).unwrap()).collect();
        let mut slots = vec![vec![None; Adapter::slots_len(model.config())]; parsed.len()];
        let bound: Vec<BoundAdapter> = parsed
            .iter()
            .zip(slots.iter_mut())
            .map(|(a, s)| a.bind(&g, &model, s).unwrap())
            .collect();
        let mut mix = AdapterSet::single(&bound[1], 0.7);
        mix.push(&bound[2], -0.5).unwrap();
        let sets = [
            AdapterSet::EMPTY,
            AdapterSet::single(&bound[0], 1.0),
            mix,
            AdapterSet::single(&bound[2], 1.0),
        ];
        let ctx = 96;
        let jobs = jobs(model.config().vocab, sets.len(), 6);
        for kern in common::tables("multi-sequence steps") {
            check(
                &model,
                ctx,
                kern,
                &jobs,
                &sets,
                &format!("tiny {variant} on {}", kern.isa().name()),
            );
        }
    }
}

#[test]
fn step_many_refuses_bad_steps() {
    let bytes = fixture("tiny/tiny-q8_0.gguf");
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let cfg = model.config();
    let (mut b1, mut b2) = (state_buffer(cfg, 32), state_buffer(cfg, 16));
    let mut s1 = State::new(cfg, 32, &mut b1).unwrap();
    let mut s2 = State::new(cfg, 16, &mut b2).unwrap();
    let mut sbuf = step_scratch_buffer(cfg, 32, 4, 2);
    let mut scratch = StepScratch::new(cfg, 32, 4, 2, &mut sbuf).unwrap();
    let set = AdapterSet::EMPTY;
    let kind = |r: edgelora::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(model.step_many(&mut scratch, &mut [])),
        ErrorKind::InvalidArgument
    );
    // More tokens than the scratch holds.
    let five = [1u32; 5];
    let mut seqs = [SeqStep {
        state: &mut s1,
        tokens: &five,
        pos: 0,
        adapters: &set,
        logits: true,
    }];
    assert_eq!(
        kind(model.step_many(&mut scratch, &mut seqs)),
        ErrorKind::InvalidArgument
    );
    // States of different context lengths.
    let one = [1u32];
    let mut seqs = [
        SeqStep {
            state: &mut s1,
            tokens: &one,
            pos: 0,
            adapters: &set,
            logits: true,
        },
        SeqStep {
            state: &mut s2,
            tokens: &one,
            pos: 0,
            adapters: &set,
            logits: true,
        },
    ];
    assert_eq!(
        kind(model.step_many(&mut scratch, &mut seqs)),
        ErrorKind::InvalidArgument
    );
    // A position past the filled cache, a token out of range.
    let mut seqs = [SeqStep {
        state: &mut s1,
        tokens: &one,
        pos: 3,
        adapters: &set,
        logits: true,
    }];
    assert_eq!(
        kind(model.step_many(&mut scratch, &mut seqs)),
        ErrorKind::InvalidArgument
    );
    let bad = [u32::MAX];
    let mut seqs = [SeqStep {
        state: &mut s1,
        tokens: &bad,
        pos: 0,
        adapters: &set,
        logits: true,
    }];
    assert_eq!(
        kind(model.step_many(&mut scratch, &mut seqs)),
        ErrorKind::TokenOutOfRange
    );
    assert!(s1.is_empty());
}

const SMOL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[test]
fn smollm2_three_adapters_and_base_in_one_batch() {
    let Ok(bytes) = std::fs::read(SMOL) else {
        println!(
            "SKIPPED: {SMOL} is absent; run `cargo run --release -p edgelora-cli -- fetch smollm2`"
        );
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../models");
    let paths = [
        format!("{dir}/smollm2/intent/adapter.gguf"),
        format!("{dir}/smollm2/normalize/adapter.gguf"),
        format!("{dir}/smollm2/reply/adapter.gguf"),
    ];
    let Ok(files) = paths
        .iter()
        .map(std::fs::read)
        .collect::<Result<Vec<_>, _>>()
    else {
        println!("SKIPPED: the SmolLM2 task adapters under models/smollm2/ are absent");
        return;
    };
    let parsed: Vec<Adapter> = files.iter().map(|f| Adapter::parse(f).unwrap()).collect();
    let mut slots = vec![vec![None; Adapter::slots_len(model.config())]; parsed.len()];
    let bound: Vec<BoundAdapter> = parsed
        .iter()
        .zip(slots.iter_mut())
        .map(|(a, s)| a.bind(&g, &model, s).unwrap())
        .collect();
    let mut mix = AdapterSet::single(&bound[2], 0.5);
    // A mix of two (reply at 0.5 plus intent at 0.7): the group shares nothing with the
    // single-adapter sets.
    mix.push(&bound[0], 0.7).unwrap();
    let sets = [
        AdapterSet::EMPTY,
        AdapterSet::single(&bound[0], 1.0),
        AdapterSet::single(&bound[1], 1.0),
        mix,
    ];
    let jobs = jobs(model.config().vocab, sets.len(), 8);
    let kern = edgelora::kernels::active();
    check(
        &model,
        128,
        kern,
        &jobs,
        &sets,
        &format!("SmolLM2 Q4_1 on {}", kern.isa().name()),
    );
}
