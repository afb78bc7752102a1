//! Quick single-thread decode and prefill tokens/s on SmolLM2 (or `--model PATH`).
//!
//! `cargo run --release -p edgelora-bench --example decode_tps [-- --model M --tokens N --prompt P
//! --cache-type f32|f16|q8_0]`
//!
//! Prefill: a `P`-token prompt (default 64) from an empty cache through `Model::prefill`.
//! Decode: `N` (default 128) greedy tokens after it, one `forward` each. Each figure is the best
//! of 3 runs, as wall-clock and as thread-CPU-time rates; criterion's `decode` bench gives
//! the wall-clock figure with statistics. `EDGELORA_ISA=avx2` forces a kernel,
//! `EDGELORA_MODE=reference` runs the f32-activation reference path. The KV cache is f32 unless
//! `--cache-type` says otherwise (the CLI's default is f16).

use edgelora::model::{state_buffer_for, CacheSpec, CacheType, Model, State};
use edgelora::Gguf;
use std::time::Instant;

/// CPU time of this thread: on a loaded machine wall time includes time slices given to
/// other processes; thread CPU time does not (memory-bandwidth contention remains).
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

fn main() {
    let mut model_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    .to_string();
    let (mut n_decode, mut n_prompt) = (128usize, 64usize);
    let mut cache = CacheType::F32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("flag needs a value");
        match a.as_str() {
            "--model" => model_path = v,
            "--tokens" => n_decode = v.parse().expect("--tokens N"),
            "--prompt" => n_prompt = v.parse().expect("--prompt P"),
            "--cache-type" => cache = CacheType::from_name(&v).expect("--cache-type f32|f16|q8_0"),
            _ => panic!("unknown flag {a}"),
        }
    }
    let file = std::fs::File::open(&model_path).unwrap_or_else(|e| panic!("{model_path}: {e}"));
    // SAFETY: read-only mapping of a file nobody modifies while we run.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    let g = Gguf::parse(&bytes).expect("parse");
    let model: Box<Model> = Box::new(Model::from_gguf(&g).expect("model"));
    let cfg = *model.config();
    let ctx = (n_prompt + n_decode + 1).min(cfg.ctx_len);
    let spec = CacheSpec::of(cache);
    let mut buf = state_buffer_for(&cfg, ctx, spec);
    // A fixed pseudo-prompt: token ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();
    let reference = std::env::var("EDGELORA_MODE").is_ok_and(|v| v == "reference");
    let (mut best_prefill, mut best_decode) = ([f64::INFINITY; 2], [f64::INFINITY; 2]);
    for _ in 0..3 {
        let mut st = State::with_cache(&cfg, ctx, spec, &mut buf).expect("state");
        if reference {
            st.set_kernel_mode(edgelora::model::KernelMode::Reference);
        }
        let (t0, c0) = (Instant::now(), cpu_secs());
        let logits = model.prefill(&prompt, 0, &mut st).expect("prefill");
        let mut next = edgelora::sample::argmax(logits);
        best_prefill[0] = best_prefill[0].min(t0.elapsed().as_secs_f64());
        best_prefill[1] = best_prefill[1].min(cpu_secs() - c0);
        let (t1, c1) = (Instant::now(), cpu_secs());
        for i in 0..n_decode {
            let l = model.forward(next, n_prompt + i, &mut st).expect("forward");
            next = edgelora::sample::argmax(l);
        }
        best_decode[0] = best_decode[0].min(t1.elapsed().as_secs_f64());
        best_decode[1] = best_decode[1].min(cpu_secs() - c1);
    }
    println!(
        "kernel {} mode {} cache {}: prefill {n_prompt} tokens: {:.1} tok/s wall, {:.1} tok/s cpu-time; \
         decode {n_decode} tokens: {:.1} tok/s wall, {:.1} tok/s cpu-time",
        edgelora::kernels::active_isa_name(),
        if reference { "reference" } else { "fast" },
        cache.name(),
        n_prompt as f64 / best_prefill[0],
        n_prompt as f64 / best_prefill[1],
        n_decode as f64 / best_decode[0],
        n_decode as f64 / best_decode[1],
    );
}
