//! Shared by the GPU test binaries: decide once whether a GPU is usable, then list every test
//! as ignored (printing `SKIPPED: <reason>`) or run it against one shared device.

#![allow(dead_code)]

use std::sync::{Mutex, OnceLock};

use edgelora_cuda::gpu::{CudaError, Gpu};
use libtest_mimic::{Arguments, Failed, Trial};

/// A test body: gets the device.
pub type Body = fn(&Gpu) -> Result<(), Failed>;

static GPU: OnceLock<Mutex<Gpu>> = OnceLock::new();

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

/// Run `tests` (name, body) with libtest's arguments. Without a driver, device or NVRTC every
/// test is listed as ignored after one `SKIPPED:` line, unless `EDGELORA_REQUIRE_GPU=1`, which
/// makes that a failure (the GPU machine's check script sets it).
pub fn run(binary: &str, tests: Vec<(&'static str, Body)>) -> ! {
    let args = Arguments::from_args();
    let skip = match Gpu::new(0) {
        Ok(g) => {
            let cc = g.compute_capability().unwrap_or((0, 0));
            println!(
                "{binary}: running on {} (compute capability {}.{})",
                g.name(),
                cc.0,
                cc.1
            );
            let _ = GPU.set(Mutex::new(g));
            None
        }
        Err(CudaError::Unavailable(r)) => Some(r),
        Err(e) => {
            // A broken kernel or driver is a failure, not a skip.
            eprintln!("{binary}: could not set up the GPU: {e}");
            std::process::exit(1);
        }
    };
    if let Some(r) = &skip {
        println!("SKIPPED: {binary}: {r}");
        if flag("EDGELORA_REQUIRE_GPU") {
            eprintln!("EDGELORA_REQUIRE_GPU=1 but no usable GPU: {r}");
            std::process::exit(1);
        }
    }
    let trials = tests
        .into_iter()
        .map(|(name, body)| {
            Trial::test(name, move || {
                let g = GPU.get().ok_or("no GPU")?;
                let g = g
                    .lock()
                    .map_err(|_| "GPU mutex poisoned by an earlier failure")?;
                body(&g)
            })
            .with_ignored_flag(skip.is_some())
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// Turn any error into a test failure.
pub fn f<E: std::fmt::Display>(e: E) -> Failed {
    e.to_string().into()
}

/// Read a file under the repository root, or `None` if it is absent.
pub fn read_repo(rel: &str) -> Option<Vec<u8>> {
    std::fs::read(edgelora_cuda::repo_root().join(rel)).ok()
}

/// SmolLM2's path relative to the repository root.
pub const SMOLLM2: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
