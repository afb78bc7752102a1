//! How close each weight matrix's matvec gets to the memory-bandwidth roof, for a real model
//! file: the decode step's question ("how many bytes per second do we stream?").
//!
//! `cargo run --release -p edgelora-bench --example roof -- [--model M] [--min-mb 1]`
//!
//! For every distinct (type, rows, cols) among the model's 2-D tensors of at least `--min-mb`
//! MB, it times one matvec (activation already quantised, one thread, thread CPU time, best of
//! 5) with the weights in three places: the file's own read-only mapping (4 KB pages, what
//! `mmap` gives), a copy in anonymous memory with 4 KB pages, and a copy in anonymous memory
//! advised `MADV_HUGEPAGE` (2 MB pages where the kernel grants them). Beside each it prints the
//! roof: a plain read of the same bytes (two 64-byte loads per step, summed), in the same
//! memory. The gap between the 4 KB and 2 MB roofs is the cost of page walks and of hardware
//! prefetchers stopping at every 4 KB page boundary.

use edgelora::kernels::{act_scratch_f32s, matvec_input, Input, KernelMode, MatRef};
use edgelora::Gguf;
use std::hint::black_box;

fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is supported on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Best of 5 rounds of `f` repeated until 100 ms of CPU time; seconds per call.
fn time(mut f: impl FnMut()) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let (t0, mut n) = (cpu_secs(), 0u32);
        while cpu_secs() - t0 < 0.1 || n == 0 {
            f();
            n += 1;
        }
        best = best.min((cpu_secs() - t0) / n as f64);
    }
    best
}

/// The streaming-read roof: sum every 8-byte word (the compiler vectorises it).
fn read_all(b: &[u8]) -> u64 {
    let (words, _) = b.as_chunks::<8>();
    words
        .iter()
        .fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(*w)))
}

/// An anonymous, private, writable mapping of `n` bytes, advised huge or not.
fn anon(n: usize, huge: bool) -> &'static mut [u8] {
    // SAFETY: a fresh anonymous mapping; checked for failure; never unmapped (leaked on
    // purpose for the process's life).
    unsafe {
        let p = libc::mmap(
            core::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap {n} bytes failed");
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        libc::madvise(p, n, advice);
        std::slice::from_raw_parts_mut(p.cast::<u8>(), n)
    }
}

fn main() {
    let mut model_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    .to_string();
    let mut min_mb = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--model" => model_path = v,
            "--min-mb" => min_mb = v.parse().expect("--min-mb MB"),
            _ => panic!("unknown flag {a} (flags: --model PATH, --min-mb MB)"),
        }
    }
    let file = std::fs::File::open(&model_path).unwrap_or_else(|e| panic!("{model_path}: {e}"));
    // SAFETY: read-only mapping of a file nobody modifies while we run.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.expect("mmap");
    let g = Gguf::parse(&bytes).expect("parse");
    let k = edgelora::kernels::active();
    println!(
        "{model_path}\nkernel {}; GB/s of weight bytes, one thread (thread CPU time), matvec | roof",
        edgelora::kernels::active_isa_name()
    );
    println!(
        "{:<28} {:>8} {:>7} | {:>15} | {:>15} | {:>15}",
        "tensor", "type", "MB", "file mmap 4K", "anon 4K", "anon 2M (THP)"
    );
    let mut seen = Vec::new();
    for t in g.tensors() {
        if t.dims().len() != 2 || (t.data.len() as f64) < min_mb * 1e6 {
            continue;
        }
        let Ok(m) = MatRef::from_tensor(&t) else {
            continue;
        };
        let key = (m.ty(), m.rows(), m.cols());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let x: Vec<f32> = (0..m.cols())
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let mut scratch = vec![0f32; act_scratch_f32s(m.cols())];
        let mut y = vec![0f32; m.rows()];
        let small = anon(t.data.len(), false);
        small.copy_from_slice(t.data);
        let huge = anon(t.data.len(), true);
        huge.copy_from_slice(t.data);
        let mut cells = Vec::new();
        for data in [t.data, &*small, &*huge] {
            let w = MatRef::new(m.ty(), m.rows(), m.cols(), data).expect("same shape");
            let mut inp = Input::new(&x, &mut scratch, k, KernelMode::Fast);
            matvec_input(&w, &mut inp, &mut y); // quantises the activation once
            let s = time(|| matvec_input(&w, &mut inp, black_box(&mut y)));
            let r = time(|| {
                black_box(read_all(black_box(data)));
            });
            let gb = data.len() as f64 / 1e9;
            cells.push(format!("{:>6.1} | {:>6.1}", gb / s, gb / r));
        }
        println!(
            "{:<28} {:>8} {:>7.1} | {} | {} | {}",
            t.name,
            format!("{:?}", m.ty()),
            t.data.len() as f64 / 1e6,
            cells[0],
            cells[1],
            cells[2]
        );
    }
}
