//! Kernel threads (`kernels::set_threads`): results must be bit-identical to one thread, for
//! every kernel type, the blocked matmuls and the whole model (decode and batched prefill),
//! and the pool must actually have run (`threads::pool_runs`).

use edgelora::kernels::{self, threads, Isa, Kernel};
use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::quant::{BlockQ4_0, BlockQ4_1, BlockQ8_0, BlockQ8_1, GgmlType};
use edgelora::Gguf;
use std::sync::Mutex;

/// `set_threads` is process-wide: tests in this binary take turns.
static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn kernels_here() -> Vec<&'static Kernel> {
    Isa::ALL.into_iter().filter_map(Isa::kernel).collect()
}

/// Every kernel entry point at `threads` threads.
fn all_outputs(k: &Kernel, t: usize, rows: usize, nb: usize, cols: usize, seed: u64) -> Vec<u32> {
    threads::set_threads(t);
    let mut rng = Rng(seed | 1);
    let n = nb * 32;
    let x = rng.vec(n * cols);
    let mut x0 = vec![BlockQ8_0::ZERO; nb * cols];
    let mut x1 = vec![BlockQ8_1::ZERO; nb * cols];
    k.quantize_q8_0(&x, &mut x0);
    k.quantize_q8_1(&x, &mut x1);
    let w40: Vec<BlockQ4_0> = (0..rows * nb)
        .map(|_| {
            let mut b = BlockQ4_0 {
                d: f16(rng.f() * 0.1),
                qs: [0; 16],
            };
            b.qs.iter_mut().for_each(|q| *q = rng.byte());
            b
        })
        .collect();
    let w41: Vec<BlockQ4_1> = (0..rows * nb)
        .map(|_| {
            let mut b = BlockQ4_1 {
                d: f16(rng.f() * 0.1),
                m: f16(rng.f() * 0.1),
                qs: [0; 16],
            };
            b.qs.iter_mut().for_each(|q| *q = rng.byte());
            b
        })
        .collect();
    let mut w80 = vec![BlockQ8_0::ZERO; rows * nb];
    k.quantize_q8_0(&rng.vec(rows * n), &mut w80);
    let wf: Vec<u8> = rng
        .vec(rows * n)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let wh: Vec<u8> = rng.vec(rows * n).iter().flat_map(|v| f16(*v)).collect();

    let mut out = vec![];
    let mut y = vec![0f32; rows];
    k.matvec_q4_0(&w40, nb, &x0[..nb], &mut y);
    out.extend(bits(&y));
    k.matvec_q4_1(&w41, nb, &x1[..nb], &mut y);
    out.extend(bits(&y));
    k.matvec_q8_0(&w80, nb, &x0[..nb], &mut y);
    out.extend(bits(&y));
    k.matvec_float(GgmlType::F32, &wf, n, &x[..n], &mut y);
    out.extend(bits(&y));
    k.matvec_float(GgmlType::F16, &wh, n, &x[..n], &mut y);
    out.extend(bits(&y));
    // The LoRA B updates (rows of nb blocks / n values) added into y.
    let t_lora = rng.vec(n);
    let mut ya = vec![0.5f32; rows];
    k.matvec_q8_0_add(&w80, nb, &t_lora, 0.75, &mut ya);
    k.matvec_float_add(GgmlType::F16, &wh, n, &t_lora, -1.25, &mut ya);
    out.extend(bits(&ya));
    let mut ym = vec![0f32; rows * cols];
    k.matmul_q4_1(&w41, nb, rows, &x1, &mut ym);
    out.extend(bits(&ym));
    k.matmul_q8_0(&w80, nb, rows, &x0, &mut ym);
    out.extend(bits(&ym));
    k.matmul_q4_0(&w40, nb, rows, &x0, &mut ym);
    out.extend(bits(&ym));
    // The batched LoRA products of a prompt block (columns split across threads): A (and
    // float base weights), an r = 8 F16 B, a Q8_0 B.
    k.matmul_float(GgmlType::F16, &wh, n, rows, &x, &mut ym);
    out.extend(bits(&ym));
    let mut yb = vec![0.25f32; rows * cols];
    k.matmul_float_add(
        GgmlType::F16,
        &wh[..rows * 16],
        8,
        rows,
        &rng.vec(8 * cols),
        0.5,
        &mut yb,
    );
    k.matmul_q8_0_add(&w80, nb, rows, &rng.vec(n * cols), -0.75, &mut yb);
    out.extend(bits(&yb));
    threads::set_threads(1);
    out
}

#[test]
fn kernels_bit_identical_across_thread_counts() {
    let _g = lock();
    for k in kernels_here() {
        // Odd row counts, a block count that is not a power of two, 1..many matmul columns.
        for &(rows, nb, cols) in &[(1000, 18, 1), (577, 7, 5), (1536, 48, 16), (64, 3, 17)] {
            let one = all_outputs(k, 1, rows, nb, cols, 7 + rows as u64);
            let before = threads::pool_runs();
            for t in [2, 3, 4] {
                let many = all_outputs(k, t, rows, nb, cols, 7 + rows as u64);
                assert!(
                    one == many,
                    "{:?} rows={rows} nb={nb} cols={cols} threads={t}: differs from 1 thread",
                    k.isa()
                );
            }
            if rows >= 577 {
                assert!(
                    threads::pool_runs() > before,
                    "{:?} rows={rows}: the pool never ran",
                    k.isa()
                );
            }
        }
    }
}

fn model_logits(model: &Model<'_>, set: &AdapterSet<'_, '_, '_>, t: usize) -> Vec<u32> {
    threads::set_threads(t);
    let cfg = *model.config();
    let mut buf = vec![0f32; State::len_for(&cfg, 64)];
    let mut st = State::new(&cfg, 64, &mut buf).unwrap();
    let prompt: Vec<u32> = (0..37)
        .map(|i| ((i * 7919 + 13) % cfg.vocab) as u32)
        .collect();
    let mut out = bits(model.prefill_with(&prompt, 0, &mut st, set).unwrap());
    for i in 0..5u32 {
        out.extend(bits(
            model
                .forward_with(i * 11, prompt.len() + i as usize, &mut st, set)
                .unwrap(),
        ));
    }
    threads::set_threads(1);
    out
}

#[test]
fn model_bit_identical_across_thread_counts() {
    let _g = lock();
    for variant in ["q4_1", "q8_0"] {
        let p = format!(
            "{}/fixtures/tiny/tiny-{variant}.gguf",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(&p).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let model: Model = Model::from_gguf(&g).unwrap();
        let one = model_logits(&model, &AdapterSet::EMPTY, 1);
        for t in [2, 3] {
            assert!(
                one == model_logits(&model, &AdapterSet::EMPTY, t),
                "{variant}: threads={t} differs"
            );
        }
    }
    // With an adapter (the firmware's, made for tiny-q8_0): prefill's batched LoRA products.
    let p = format!(
        "{}/fixtures/tiny/tiny-q8_0.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&p).unwrap();
    let g = Gguf::parse(&bytes).unwrap();
    let model: Model = Model::from_gguf(&g).unwrap();
    let ab = std::fs::read(format!(
        "{}/../targets/cortex-m/assets/tiny-lora-a.gguf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let a = Adapter::parse(&ab).unwrap();
    let mut slots = vec![None; Adapter::slots_len(model.config())];
    let bound = a.bind(&g, &model, &mut slots).unwrap();
    let set = AdapterSet::single(&bound, 1.0);
    let one = model_logits(&model, &set, 1);
    assert_ne!(one, model_logits(&model, &AdapterSet::EMPTY, 1));
    for t in [2, 3] {
        assert!(
            one == model_logits(&model, &set, t),
            "adapter: threads={t} differs"
        );
    }
    assert_eq!(kernels::threads(), 1);
}

#[test]
fn pool_is_reentrant_across_caller_threads() {
    // Two threads splitting at once: one owns the pool, the other computes inline; both
    // must get the single-thread result.
    let _g = lock();
    let k = kernels::best();
    let want = all_outputs(k, 1, 1000, 18, 3, 99);
    threads::set_threads(2);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    for _ in 0..20 {
                        // Each call sets 2 threads and resets to 1 at its end, racing with the
                        // others: the results may not depend on any of that.
                        assert!(all_outputs(k, 2, 1000, 18, 3, 99) == want);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
    });
    threads::set_threads(1);
}
