//! Quick single-thread decode and prefill tokens/s on SmolLM2 (or `--model PATH`).
//!
//! `cargo run --release -p edgelora-bench --example decode_tps [-- --model M --tokens N --prompt P]`
//!
//! Prefill: a `P`-token prompt (default 64) from an empty cache through `Model::prefill`.
//! Decode: `N` (default 128) greedy tokens after it, one `forward` each. Each figure is the best
//! of 3 runs; criterion's `decode` bench gives the same with statistics.

use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;
use std::time::Instant;

fn main() {
    let mut model_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    .to_string();
    let (mut n_decode, mut n_prompt) = (128usize, 64usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().expect("flag needs a value");
        match a.as_str() {
            "--model" => model_path = v,
            "--tokens" => n_decode = v.parse().expect("--tokens N"),
            "--prompt" => n_prompt = v.parse().expect("--prompt P"),
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
    let mut buf = state_buffer(&cfg, ctx);
    // A fixed pseudo-prompt: token ids spread over the vocabulary.
    let prompt: Vec<u32> = (0..n_prompt as u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();
    let (mut best_prefill, mut best_decode) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        let mut st = State::new(&cfg, ctx, &mut buf).expect("state");
        let t0 = Instant::now();
        let logits = model.prefill(&prompt, 0, &mut st).expect("prefill");
        let mut next = edgelora::sample::argmax(logits);
        best_prefill = best_prefill.min(t0.elapsed().as_secs_f64());
        let t1 = Instant::now();
        for i in 0..n_decode {
            next =
                edgelora::sample::argmax(model.forward(next, n_prompt + i, &mut st).expect("fwd"));
        }
        best_decode = best_decode.min(t1.elapsed().as_secs_f64());
    }
    println!(
        "kernel {:?}: prefill {n_prompt} tokens: {:.1} tok/s; decode {n_decode} tokens: {:.1} tok/s",
        edgelora::kernels::active_isa_name(),
        n_prompt as f64 / best_prefill,
        n_decode as f64 / best_decode
    );
}
