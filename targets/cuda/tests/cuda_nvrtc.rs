//! Compile every CUDA kernel with NVRTC. Needs libnvrtc, not a GPU: the PyPI wheel
//! `nvidia-cuda-nvrtc-cu12` ships it. Without the library the test is listed as ignored after a
//! `SKIPPED:` line; `EDGELORA_REQUIRE_NVRTC=1` (CI) makes that a failure. A compile error always
//! fails, with NVRTC's log. `EDGELORA_PTX_OUT=FILE` also writes the PTX there (for a GPU machine
//! without libnvrtc: `EDGELORA_CUDA_PTX=FILE`).

use edgelora_cuda::gpu::{compile_ptx, kernel_names, probe_nvrtc};
use libtest_mimic::{Arguments, Failed, Trial};

/// The body of one `.entry` in PTX text, up to the next `.entry`.
fn entry<'a>(ptx: &'a str, name: &str) -> Option<&'a str> {
    let at = ptx.find(&format!(".entry {name}("))?;
    let rest = &ptx[at + 1..];
    Some(&ptx[at..at + 1 + rest.find(".entry ").unwrap_or(rest.len())])
}

fn compile_all() -> Result<(), Failed> {
    let ptx = compile_ptx().map_err(|e| Failed::from(e.to_string()))?;
    let missing: Vec<String> = kernel_names()
        .into_iter()
        .filter(|k| entry(&ptx, k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(format!("kernels missing from the PTX: {missing:?}").into());
    }
    // --fmad=false must hold where the tolerances assume CPU rounding: the dot products, rope,
    // adds and dequantisation contain no contracted multiply-adds. (expf and the division may
    // use fma internally by design; the kernels that call them are not checked.)
    let exact = [
        "matmul_f32",
        "matmul_f16",
        "matmul_bf16",
        "matmul_q4_0",
        "matmul_q4_1",
        "matmul_q8_0",
        "get_rows_q4_1",
        "rope",
        "add",
        "row_scale",
    ];
    for k in exact {
        let body = entry(&ptx, k).unwrap_or("");
        if body.contains("fma.rn.f32") {
            return Err(format!(
                "{k}: PTX contains fma.rn.f32 although compiled with --fmad=false"
            )
            .into());
        }
    }
    if let Some(out) = std::env::var_os("EDGELORA_PTX_OUT") {
        std::fs::write(&out, &ptx).map_err(|e| Failed::from(e.to_string()))?;
        println!(
            "wrote {} bytes of PTX to {}",
            ptx.len(),
            out.to_string_lossy()
        );
    }
    println!(
        "NVRTC compiled {} kernels into {} bytes of PTX",
        kernel_names().len(),
        ptx.len()
    );
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let skip = probe_nvrtc().err();
    if let Some(e) = &skip {
        println!("SKIPPED: cuda_nvrtc: {e}");
        if std::env::var("EDGELORA_REQUIRE_NVRTC").is_ok_and(|v| v == "1") {
            eprintln!("EDGELORA_REQUIRE_NVRTC=1 but libnvrtc cannot be loaded");
            std::process::exit(1);
        }
    }
    let trials =
        vec![Trial::test("nvrtc_compiles_every_kernel", compile_all)
            .with_ignored_flag(skip.is_some())];
    libtest_mimic::run(&args, trials).exit()
}
