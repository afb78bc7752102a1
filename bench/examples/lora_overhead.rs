//! Decode (or prefill) overhead of unmerged LoRA adapters, measured in-process with the
//! configurations interleaved step by step (robust on a shared, loaded machine).
//!
//! `cargo run --release -p edgelora-bench --example lora_overhead -- --model M.gguf
//!  [--adapter A.gguf]... [--rounds N] [--prompt P] [--threads T] [--prefill 1]`
//!
//! After a `P`-token prompt (default 64), the same decode step (token, position `P`) is run
//! `N` times (default 200) for the base alone and for each adapter in turn, cycling through
//! the configurations every round so that slow periods (another process on the core) hit all
//! of them alike. Per configuration it prints the minimum and median thread-CPU time of one
//! step and the overhead against the base (median of the per-round ratios, and ratio of the
//! minima), and a hash of its logits (equal across builds that compute bit-identical results).
//! With `--prefill 1` the timed step is instead `Model::prefill_with` of the whole `P`-token
//! prompt from an empty cache (tokens/s are printed too; use fewer rounds, e.g. 20).
//! `EDGELORA_ISA` forces a kernel as everywhere. With `--threads T` above 1 the kernels are
//! split over T threads and steps are timed by the wall clock instead (thread CPU time would
//! miss the workers' share), so the figures then need a machine with T idle cores.

use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;

fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported
    // on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn map(path: &str) -> memmap2::Mmap {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: read-only mapping of a file nobody modifies while we run.
    unsafe { memmap2::Mmap::map(&file) }.expect("mmap")
}

fn wall_secs() -> f64 {
    use std::sync::OnceLock;
    static T0: OnceLock<std::time::Instant> = OnceLock::new();
    T0.get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut model_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    .to_string();
    let mut adapter_paths = Vec::new();
    let (mut rounds, mut n_prompt, mut threads) = (200usize, 64usize, 1usize);
    let mut prefill = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("flag needs a value");
        match a.as_str() {
            "--model" => model_path = v,
            "--adapter" => adapter_paths.push(v),
            "--rounds" => rounds = v.parse().expect("--rounds N"),
            "--prompt" => n_prompt = v.parse().expect("--prompt P"),
            "--threads" => threads = v.parse().expect("--threads T"),
            "--prefill" => prefill = v != "0",
            _ => panic!("unknown flag {a}"),
        }
    }
    edgelora::kernels::set_threads(threads);
    let clock: fn() -> f64 = if threads > 1 { wall_secs } else { cpu_secs };
    let bytes = map(&model_path);
    let g = Gguf::parse(&bytes).expect("parse");
    let model: Box<Model> = Box::new(Model::from_gguf(&g).expect("model"));
    let cfg = *model.config();
    let maps: Vec<_> = adapter_paths.iter().map(|p| map(p)).collect();
    let parsed: Vec<_> = maps
        .iter()
        .map(|m| Adapter::parse(m).expect("adapter"))
        .collect();
    let mut slots: Vec<Vec<_>> = parsed
        .iter()
        .map(|_| vec![None; Adapter::slots_len(&cfg)])
        .collect();
    let bound: Vec<_> = parsed
        .iter()
        .zip(slots.iter_mut())
        .map(|(a, s)| a.bind(&g, &model, s).expect("bind"))
        .collect();
    let mut sets = vec![AdapterSet::EMPTY];
    sets.extend(bound.iter().map(|b| AdapterSet::single(b, 1.0)));
    let ctx = (n_prompt + 2).min(cfg.ctx_len);
    let mut buf = state_buffer(&cfg, ctx);
    let mut st = State::new(&cfg, ctx, &mut buf).expect("state");
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();
    let next = edgelora::sample::argmax(model.prefill(&prompt, 0, &mut st).expect("prefill"));
    let mut times = vec![Vec::with_capacity(rounds); sets.len()];
    for round in 0..rounds + 5 {
        for (set, t) in sets.iter().zip(times.iter_mut()) {
            let c0 = clock();
            if prefill {
                st.clear();
                model
                    .prefill_with(&prompt, 0, &mut st, set)
                    .expect("prefill");
            } else {
                model
                    .forward_with(next, n_prompt, &mut st, set)
                    .expect("forward");
            }
            // The first rounds warm caches and the thread pool; not recorded.
            if round >= 5 {
                t.push(clock() - c0);
            }
        }
    }
    // Fingerprint of each configuration's logits (FNV-1a over the f32 bits), so that builds
    // can be checked to compute bit-identical results (speed work must not change them).
    let hashes: Vec<u64> = sets
        .iter()
        .map(|set| {
            let logits = if prefill {
                st.clear();
                model
                    .prefill_with(&prompt, 0, &mut st, set)
                    .expect("prefill")
            } else {
                model
                    .forward_with(next, n_prompt, &mut st, set)
                    .expect("forward")
            };
            logits.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
                (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
            })
        })
        .collect();
    let timing = if threads > 1 {
        format!("{threads} threads, wall clock")
    } else {
        "thread CPU time".to_string()
    };
    if prefill {
        println!(
            "kernel {}, {rounds} rounds, prefill of {n_prompt} tokens ({timing})",
            edgelora::kernels::active_isa_name()
        );
    } else {
        println!(
            "kernel {}, {rounds} rounds, one decode step at position {n_prompt} ({timing})",
            edgelora::kernels::active_isa_name()
        );
    }
    let base = times[0].clone();
    let base_min = base.iter().copied().fold(f64::INFINITY, f64::min);
    for (i, t) in times.iter().enumerate() {
        let name = if i == 0 {
            "base"
        } else {
            adapter_paths[i - 1].as_str()
        };
        let mut ratios: Vec<f64> = t.iter().zip(&base).map(|(a, b)| a / b - 1.0).collect();
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let med = median(&mut t.clone());
        let rate = if prefill {
            format!(
                " ({:.1} tok/s at min, {:.1} at median)",
                n_prompt as f64 / min,
                n_prompt as f64 / med
            )
        } else {
            String::new()
        };
        println!(
            "{name}: min {:.3} ms, median {:.3} ms{rate}, overhead: median of ratios {:+.1}%, \
             ratio of minima {:+.1}%, logits {:016x}",
            min * 1e3,
            med * 1e3,
            median(&mut ratios) * 100.0,
            (min / base_min - 1.0) * 100.0,
            hashes[i]
        );
    }
}
