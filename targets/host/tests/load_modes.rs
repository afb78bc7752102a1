//! Model files of 16 MiB and more are read into memory advised for transparent huge pages
//! (`util::map`); `--mmap` maps them as they are. Both must give the same bytes to the core, so
//! the same logits, and `bench --json` must say which one ran.
//!
//! Needs a model file over 16 MiB: SmolLM2 (`edgelora fetch smollm2`, which CI runs); prints
//! SKIPPED without it. Whether 2 MB pages were granted depends on the kernel
//! (`/sys/kernel/mm/transparent_hugepage/enabled`): where it says `[never]`, only the fallback
//! to a plain mapping is checked.

mod common;

use common::root;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_edgelora"))
        .current_dir(root())
        .args(args)
        .output()
        .expect("running edgelora");
    assert!(
        out.status.success(),
        "edgelora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn huge_page_load_and_mmap_give_the_same_logits() {
    let model = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    if !root().join(model).exists() {
        println!("SKIPPED: {model} not fetched (`edgelora fetch smollm2`)");
        return;
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| !s.contains("[never]"));
    let bench = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "bench",
            "-m",
            model,
            "--json",
            "--reps",
            "1",
            "--gen",
            "2",
            "--prompt-len",
            "4",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str(&run(&args)).expect("bench JSON")
    };
    let huge = bench(&[]);
    let plain = bench(&["--mmap"]);
    let size = std::fs::metadata(root().join(model)).unwrap().len();
    assert_eq!(huge["weights_bytes"].as_u64(), Some(size));
    assert_eq!(plain["weights_bytes"].as_u64(), Some(size));
    assert_eq!(
        plain["weights_huge_page_bytes"].as_u64(),
        Some(0),
        "--mmap must map the file (no anonymous huge pages)"
    );
    let got = huge["weights_huge_page_bytes"].as_u64();
    if thp {
        // Granted pages depend on free contiguous memory; most of a 98 MB file on an idle host,
        // so only require that the path was taken at all.
        assert!(
            got.is_some_and(|b| b > 0),
            "THP available but no huge pages: {got:?}"
        );
        println!("huge pages: {} of {size} bytes", got.unwrap());
    } else {
        println!("SKIPPED: huge-page check (transparent huge pages are disabled on this kernel)");
    }
    let logits = |extra: &[&str]| {
        let mut args = vec![
            "logits",
            "-m",
            model,
            "--json",
            "--top",
            "8",
            "-p",
            "The capital of France is",
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    assert_eq!(
        logits(&[]),
        logits(&["--mmap"]),
        "the two load modes gave different logits"
    );
}
