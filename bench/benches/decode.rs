//! Whole-model single-thread decode and prefill on SmolLM2-135M-Instruct Q4_1 (skipped when
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf` is absent).
//!
//! `cargo bench -p edgelora-bench --bench decode`
//!
//! - `decode/<isa>`: one `forward` at position 32 after a 32-token prompt (the cache is
//!   truncated back before each iteration, so every sample does the same work). Tokens/s is
//!   1 / time. `decode/reference` is the f32-activation oracle path (`KernelMode::Reference`).
//! - `prefill64/<isa>`: `prefill` of a 64-token prompt from an empty cache; tokens/s is
//!   64 / time.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use edgelora::kernels::{self, Isa, KernelMode};
use edgelora::model::{state_buffer, Model, State};
use edgelora::Gguf;
use std::time::Duration;

const MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

fn bench(c: &mut Criterion) {
    let Ok(file) = std::fs::File::open(MODEL) else {
        eprintln!("SKIPPED decode bench: {MODEL} is absent");
        return;
    };
    // SAFETY: read-only mapping of a file nobody modifies while the bench runs.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    let g = Gguf::parse(&bytes).expect("parse");
    let model: Box<Model> = Box::new(Model::from_gguf(&g).expect("model"));
    let cfg = *model.config();
    let ctx = 128;
    let mut buf = state_buffer(&cfg, ctx);
    let prompt: Vec<u32> = (0..64u32)
        .map(|i| (i * 7919 + 13) % cfg.vocab as u32)
        .collect();

    let mut runs: Vec<(String, Isa, KernelMode)> = Isa::ALL
        .into_iter()
        .filter(|i| i.kernel().is_some() && *i != Isa::Portable)
        .map(|i| (i.name().to_string(), i, KernelMode::Fast))
        .collect();
    runs.push(("reference".into(), Isa::Portable, KernelMode::Reference));

    let mut g = c.benchmark_group("decode");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
    for (name, isa, mode) in &runs {
        kernels::force(*isa).expect("available");
        let mut st = State::new(&cfg, ctx, &mut buf).expect("state");
        st.set_kernel_mode(*mode);
        model.prefill(&prompt[..32], 0, &mut st).expect("prefill");
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                st.truncate(32);
                model.forward(prompt[32], 32, &mut st).expect("forward")[0]
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("prefill64");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .throughput(Throughput::Elements(64));
    for (name, isa, mode) in runs.iter().filter(|r| r.2 == KernelMode::Fast) {
        kernels::force(*isa).expect("available");
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let mut st = State::new(&cfg, ctx, &mut buf).expect("state");
                st.set_kernel_mode(*mode);
                model.prefill(&prompt, 0, &mut st).expect("prefill")[0]
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
