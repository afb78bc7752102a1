//! The CUDA kernels run on the CPU, with no GPU: `src/kernels.cu` compiled by g++ against a
//! small emulation of the CUDA features it uses (`tests/emu/cuda_emu.h`: one thread per CUDA
//! thread, barriers for `__syncthreads` and warp shuffles), launched with the same grid and
//! block shapes as `src/gpu.rs`, and compared with the CPU reference under the same
//! tolerances as the GPU kernel tests (`tests/cuda_kernels.rs`, derivations in `src/tol.rs`).
//!
//! This checks what a GPU-less machine can: block layouts and nibble order, row and chunk
//! indexing, tails of float rows, the warp and block reductions, GQA head mapping, the causal
//! range and the KV-cache offsets inside the kernels. It cannot check CUDA's own arithmetic
//! (expf's ulps, the driver's JIT) or anything about the device; `cuda_kernels` does, on a GPU.
//! Without g++ the tests print `SKIPPED:` and return.

use std::path::PathBuf;
use std::sync::OnceLock;

use edgelora::kernels::{matvec, reference, MatRef};
use edgelora::model::{softmax, Model};
use edgelora::quant::GgmlType;
use edgelora::Gguf;
use edgelora_cuda::cpu::{self, chunk_abs_sums};
use edgelora_cuda::testdata::{encode, rnd};
use edgelora_cuda::tol::{self, U};
use libloading::Library;

const SHIM: &str = include_str!("emu/cuda_emu.h");
const WRAP: &str = include_str!("emu/wrap.cpp");

type MatmulFn =
    unsafe extern "C" fn(i32, *const u8, i32, i32, i64, *const f32, i32, *mut f32, f32, i32);
type GetRowsFn = unsafe extern "C" fn(i32, *const u8, i32, i32, i64, *const i32, i32, *mut f32);
type RmsnormFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, i32, i32, f32);
type RopeFn = unsafe extern "C" fn(*mut f32, i32, i32, i32, i32, *const f32, i32);
type AttentionFn = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *const f32,
    *mut f32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
);
type SwigluFn = unsafe extern "C" fn(*mut f32, *const f32, i32);

/// Compile the emulated kernels once per test binary; `Err` is the reason to skip.
fn emu() -> Result<&'static Library, String> {
    static LIB: OnceLock<Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cuda-emu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        // The one construct the shim cannot express as a macro: dynamic shared memory.
        let src = edgelora_cuda::KERNELS_CU.replace(
            "extern __shared__ float att[];",
            "float* att = emu_dyn_smem();",
        );
        assert!(
            src.contains("emu_dyn_smem"),
            "kernels.cu no longer declares `extern __shared__ float att[];`: update this test"
        );
        for (name, text) in [
            ("cuda_emu.h", SHIM),
            ("wrap.cpp", WRAP),
            ("kernels_emu.cu", src.as_str()),
        ] {
            std::fs::write(dir.join(name), text).map_err(|e| e.to_string())?;
        }
        let so = dir.join("libcudaemu.so");
        let out = match std::process::Command::new("g++")
            .args([
                "-std=c++20",
                "-O2",
                "-ffp-contract=off",
                "-fPIC",
                "-shared",
                "-pthread",
                "-o",
            ])
            .arg(&so)
            .arg(dir.join("wrap.cpp"))
            .output()
        {
            Ok(o) => o,
            Err(e) => return Err(format!("g++ not available ({e})")),
        };
        // A compile error is a failure, not a skip: the kernels are ours.
        assert!(
            out.status.success(),
            "g++ failed on the emulated kernels:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // SAFETY: the library was just built from our own sources; its initialisers are those of
        // libstdc++ only.
        unsafe { Library::new(&so) }.map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(Clone::clone)
}

macro_rules! emu_or_skip {
    () => {
        match emu() {
            Ok(l) => l,
            Err(r) => {
                println!("SKIPPED: emulated CUDA kernels: {r}");
                return;
            }
        }
    };
}

fn sym<T: Copy>(lib: &Library, name: &[u8]) -> T {
    // SAFETY: the names and signatures are those of wrap.cpp's extern "C" functions.
    unsafe { *lib.get::<T>(name).expect("symbol in wrap.cpp") }
}

fn ty_code(ty: GgmlType) -> i32 {
    [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ]
    .iter()
    .position(|t| *t == ty)
    .unwrap() as i32
}

fn check(what: &str, cpu: &[f32], got: &[f32], tol: &[f64]) {
    assert_eq!(cpu.len(), got.len(), "{what}: lengths");
    for (i, ((&c, &g), &t)) in cpu.iter().zip(got).zip(tol).enumerate() {
        let d = (c as f64 - g as f64).abs();
        assert!(
            d <= t && c.is_nan() == g.is_nan(),
            "{what}: element {i}: CPU {c} emulated GPU {g} differ by {d:e} > {t:e}"
        );
    }
}

fn emu_matmul(
    lib: &Library,
    m: &MatRef<'_>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scale: f32,
    acc: bool,
) {
    let f: MatmulFn = sym(lib, b"emu_matmul");
    assert!(x.len() >= n * m.cols() && y.len() >= n * m.rows());
    // SAFETY: buffers hold what the kernel reads and writes (checked above); the matrix bytes
    // hold rows * row_bytes.
    unsafe {
        f(
            ty_code(m.ty()),
            m.data().as_ptr(),
            m.rows() as i32,
            m.cols() as i32,
            m.row_bytes() as i64,
            x.as_ptr(),
            n as i32,
            y.as_mut_ptr(),
            scale,
            acc as i32,
        )
    }
}

fn matmul_case(lib: &Library, what: &str, m: &MatRef<'_>, n: usize, seed: u64) {
    let mut x = rnd(seed, n * m.cols(), 2.0);
    if let Some(v) = x.get_mut(7) {
        *v = 300.0;
    }
    let mut want = vec![0f32; n * m.rows()];
    let mut bound = vec![];
    for t in 0..n {
        let xt = &x[t * m.cols()..(t + 1) * m.cols()];
        matvec(m, xt, &mut want[t * m.rows()..(t + 1) * m.rows()]);
        let (sums, nb) = chunk_abs_sums(m, xt);
        bound.extend(sums.iter().map(|&s| tol::sum_reorder_bound(nb, s)));
    }
    let mut got = vec![f32::NAN; n * m.rows()];
    emu_matmul(lib, m, &x, n, &mut got, 1.0, false);
    check(&format!("{what} store"), &want, &got, &bound);
    let y0 = rnd(seed ^ 0x70, n * m.rows(), 1.0);
    let s = -0.37f32;
    let mut got = y0.clone();
    emu_matmul(lib, m, &x, n, &mut got, s, true);
    let want_acc: Vec<f32> = y0.iter().zip(&want).map(|(a, w)| a + s * w).collect();
    let bound_acc: Vec<f64> = y0
        .iter()
        .zip(&want)
        .zip(&bound)
        .map(|((a, w), b)| {
            s.abs() as f64 * b * (1.0 + U) + 2.0 * U * (a.abs() as f64 + (s * w).abs() as f64)
        })
        .collect();
    check(&format!("{what} accumulate"), &want_acc, &got, &bound_acc);
}

const TYPES: [GgmlType; 6] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

#[test]
fn matmul_all_types_awkward_shapes() {
    let lib = emu_or_skip!();
    for ty in TYPES {
        let mut shapes = vec![(1, 32, 1), (5, 64, 3), (9, 4096, 9), (6, 1536, 5)];
        if ty.block_len() == 1 {
            shapes.extend([(7, 33, 2), (3, 1, 1), (2, 31, 4), (4, 1100, 2)]);
        }
        for (i, &(rows, cols, n)) in shapes.iter().enumerate() {
            let mut v = rnd(i as u64 + 100, rows * cols, 1.0);
            for (k, amp) in [(0usize, 0.0f32), (1, 3.0e4), (2, 1.0e-6)] {
                if let Some(c) = v.get_mut(k * 32..(k + 1) * 32) {
                    for (j, e) in c.iter_mut().enumerate() {
                        *e = amp * if j % 3 == 0 { -1.0 } else { 0.5 };
                    }
                }
            }
            let bytes = encode(ty, &v, cols);
            let m = MatRef::new(ty, rows, cols, &bytes).unwrap();
            matmul_case(lib, &format!("{ty:?} {rows}x{cols} n={n}"), &m, n, i as u64);
        }
    }
}

#[test]
fn matmul_real_tensors() {
    let lib = emu_or_skip!();
    let root = edgelora_cuda::repo_root();
    for name in ["tiny-f32", "tiny-q8_0", "tiny-q4_1"] {
        let bytes = std::fs::read(root.join(format!("tests/fixtures/tiny/{name}.gguf"))).unwrap();
        let g = Gguf::parse(&bytes).unwrap();
        let m: Model<'_> = Model::from_gguf(&g).unwrap();
        for k in 0..7 {
            matmul_case(
                lib,
                &format!("{name} blk.0 linear {k}"),
                m.layer(0).unwrap().linear(k),
                3,
                k as u64,
            );
        }
        matmul_case(lib, &format!("{name} output"), m.output(), 2, 9);
    }
    let Ok(bytes) = std::fs::read(root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")) else {
        println!("SKIPPED (part): SmolLM2 absent; real tensors from the tiny models only");
        return;
    };
    let g = Gguf::parse(&bytes).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    matmul_case(
        lib,
        "SmolLM2 blk.0 attn_k",
        m.layer(0).unwrap().linear(1),
        2,
        1,
    );
    matmul_case(
        lib,
        "SmolLM2 blk.0 ffn_down",
        m.layer(0).unwrap().linear(6),
        1,
        2,
    );
}

#[test]
fn get_rows_bit_exact() {
    let lib = emu_or_skip!();
    let f: GetRowsFn = sym(lib, b"emu_get_rows");
    for ty in TYPES {
        let (rows, cols) = (50, if ty.block_len() == 1 { 70 } else { 96 });
        let bytes = encode(ty, &rnd(5, rows * cols, 3.0), cols);
        let m = MatRef::new(ty, rows, cols, &bytes).unwrap();
        let ids = [0i32, 49, 7, 7, 23];
        let mut want = vec![0f32; ids.len() * cols];
        for (t, &id) in ids.iter().enumerate() {
            m.dequantize_row(id as usize, &mut want[t * cols..(t + 1) * cols])
                .unwrap();
        }
        let mut got = vec![f32::NAN; want.len()];
        // SAFETY: ids.len() ids in range, out holds ids.len() * cols.
        unsafe {
            f(
                ty_code(ty),
                bytes.as_ptr(),
                rows as i32,
                cols as i32,
                m.row_bytes() as i64,
                ids.as_ptr(),
                ids.len() as i32,
                got.as_mut_ptr(),
            )
        };
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "get_rows {ty:?} not bit-exact"
        );
    }
}

#[test]
fn rmsnorm_rope_swiglu() {
    let lib = emu_or_skip!();
    let rms: RmsnormFn = sym(lib, b"emu_rmsnorm");
    for (dim, n) in [(64, 3), (576, 2), (1000, 2)] {
        let mut x = rnd(dim as u64, n * dim, 4.0);
        x[1] = 900.0;
        let w = rnd(3, dim, 1.5);
        let mut want = vec![0f32; n * dim];
        for t in 0..n {
            cpu::rmsnorm(
                &mut want[t * dim..(t + 1) * dim],
                &x[t * dim..(t + 1) * dim],
                &w,
                1e-5,
                1.0,
            );
        }
        let mut got = vec![f32::NAN; n * dim];
        // SAFETY: n rows of dim each.
        unsafe {
            rms(
                x.as_ptr(),
                w.as_ptr(),
                got.as_mut_ptr(),
                n as i32,
                dim as i32,
                1e-5,
            )
        };
        let rel = tol::rmsnorm_rel_bound(dim) + 4.0 * U;
        check(
            &format!("rmsnorm {dim}"),
            &want,
            &got,
            &want
                .iter()
                .map(|v| rel * v.abs() as f64)
                .collect::<Vec<_>>(),
        );
    }

    let rope: RopeFn = sym(lib, b"emu_rope");
    for (heads, hd, rd, stride, p0) in [
        (9, 64, 64, 576, 0),
        (3, 64, 32, 192, 1000),
        (4, 16, 16, 70, 7),
    ] {
        let n = 4;
        let x = rnd(hd as u64, n * stride, 2.0);
        let mut table = vec![0f32; n * rd];
        for (i, row) in table.chunks_exact_mut(rd).enumerate() {
            cpu::rope_table(row, p0 + i, 10000.0, rd);
        }
        let mut want = x.clone();
        for t in 0..n {
            cpu::rope(
                &mut want[t * stride..t * stride + heads * hd],
                hd,
                &table[t * rd..(t + 1) * rd],
            );
        }
        let mut got = x.clone();
        // SAFETY: n tokens of stride floats, n table rows of rd.
        unsafe {
            rope(
                got.as_mut_ptr(),
                n as i32,
                stride as i32,
                heads as i32,
                hd as i32,
                table.as_ptr(),
                (rd / 2) as i32,
            )
        };
        assert!(
            want.iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "rope {heads}x{hd}/{rd} not bit-exact"
        );
    }

    let sw: SwigluFn = sym(lib, b"emu_swiglu");
    let mut gate = rnd(1, 700, 12.0);
    gate[1] = -90.0;
    let up = rnd(2, 700, 3.0);
    let want: Vec<f32> = gate
        .iter()
        .zip(&up)
        .map(|(&x, &u)| cpu::silu(x) * u)
        .collect();
    // SAFETY: 700 values each.
    unsafe { sw(gate.as_mut_ptr(), up.as_ptr(), 700) };
    check(
        "swiglu",
        &want,
        &gate,
        &want
            .iter()
            .map(|v| tol::swiglu_rel_bound() * v.abs() as f64 + 1e-38)
            .collect::<Vec<_>>(),
    );
}

#[test]
fn attention_gqa_causal_with_cache() {
    let lib = emu_or_skip!();
    let att: AttentionFn = sym(lib, b"emu_attention");
    for (nh, nkv, hd, start, n) in [
        (4, 2, 16, 0, 6),
        (9, 3, 64, 5, 1),
        (9, 3, 64, 0, 4),
        (2, 1, 64, 300, 2),
    ] {
        let (qd, kvd, pos) = (nh * hd, nkv * hd, start + n);
        let (q, k, v) = (
            rnd(1, n * qd, 1.0),
            rnd(2, pos * kvd, 1.0),
            rnd(3, pos * kvd, 1.0),
        );
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let mut want = vec![0f32; n * qd];
        let mut bound = vec![0f64; n * qd];
        for t in 0..n {
            let p = start + t;
            for h in 0..nh {
                let kvo = (h / (nh / nkv)) * hd;
                let qh = &q[t * qd + h * hd..t * qd + (h + 1) * hd];
                let mut a: Vec<f32> = (0..=p)
                    .map(|j| reference::dot_f32(qh, &k[j * kvd + kvo..j * kvd + kvo + hd]) * scale)
                    .collect();
                softmax(&mut a);
                let rel = tol::softmax_rel_bound(p + 1) + 2.0 * (p + 1) as f64 * U;
                for d in 0..hd {
                    let (mut o, mut abs) = (0f32, 0f64);
                    for (j, &aj) in a.iter().enumerate() {
                        o += aj * v[j * kvd + kvo + d];
                        abs += (aj * v[j * kvd + kvo + d]).abs() as f64;
                    }
                    want[t * qd + h * hd + d] = o;
                    bound[t * qd + h * hd + d] = rel * abs;
                }
            }
        }
        let mut got = vec![f32::NAN; n * qd];
        // SAFETY: q n*qd, caches pos*kvd, out n*qd.
        unsafe {
            att(
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                got.as_mut_ptr(),
                n as i32,
                nh as i32,
                nkv as i32,
                hd as i32,
                start as i32,
                scale,
            )
        };
        check(
            &format!("attention {nh}/{nkv}x{hd} positions {start}..{pos}"),
            &want,
            &got,
            &bound,
        );
    }
}
