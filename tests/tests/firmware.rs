//! The Cortex-M firmware under QEMU, compared with the host.
//!
//! Builds `targets/cortex-m` (its own workspace and target dir) for each board and kernel
//! choice, runs it with `scripts/qemu-run.sh`, and checks:
//! - `demo`: every `EL ...` line equals the line the host prints running the same script
//!   (`targets/cortex-m/src/scenario.rs`, compiled here) with the portable kernel: the ids
//!   generated with the base, adapter A, B, both, after rejected bad input, and after
//!   streaming B in chunks, plus a hash of every logit's bits; the DSP build must give the
//!   same lines (its float part is the portable kernel's, its integer part exact);
//! - `runtime`: the ids equal a direct host computation;
//! - `kernels` (DSP build): integer block sums and whole matvecs equal the reference in QEMU,
//!   and the instructions per MAC it measures under `-icount` stay within their budgets;
//! - the budgets the images print stay within `targets/cortex-m/budget.txt`.
//!
//! Needs `qemu-system-arm` (Debian package `qemu-system-arm`) and the rustup target
//! `thumbv7em-none-eabihf`; without them the tests print SKIPPED and pass.

#[allow(dead_code)]
#[path = "../../targets/cortex-m/src/scenario.rs"]
mod scenario;

use edgelora::kernels::{self, Isa};
use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn manifest(key: &str) -> String {
    let text =
        std::fs::read_to_string(root().join("targets/cortex-m/assets/manifest.txt")).unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("manifest lacks {key}"))
}

fn asset(key: &str) -> &'static [u8] {
    Box::leak(
        std::fs::read(root().join(manifest(key)))
            .unwrap()
            .into_boxed_slice(),
    )
}

fn qemu_missing() -> bool {
    let ok = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: qemu-system-arm not installed");
    }
    !ok
}

/// One firmware build at a time (cargo would serialise on the target dir lock anyway).
static BUILD: Mutex<()> = Mutex::new(());

/// Build `bin` for `board` (`an386`/`an500`), with the DSP kernels if `dsp`; the ELF path,
/// or `None` (SKIPPED printed) if the Cortex-M target is not installed.
fn build(bin: &str, board: &str, dsp: bool) -> Option<PathBuf> {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("targets/cortex-m");
    let mut features = format!("board-{board}");
    if dsp {
        // The runtime image links the DSP table alone (its flash budget); the others keep the
        // portable one selectable (`kernels` cross-checks the two in place).
        features.push_str(if bin == "runtime" {
            ",dsp-only"
        } else {
            ",dsp"
        });
    }
    // Separate target dirs per feature set would rebuild the same deps; one dir keeps each
    // feature set's artefacts side by side, but the ELF is overwritten, so copy it out.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--bin", bin, "--features", &features])
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            println!("SKIPPED: rustup target thumbv7em-none-eabihf not installed");
            return None;
        }
        panic!("firmware build failed ({bin}, {features}):\n{stderr}");
    }
    let elf = dir.join("target/thumbv7em-none-eabihf/release").join(bin);
    let copy = dir.join("target").join(format!(
        "{bin}-{board}{}.elf",
        if dsp { "-dsp" } else { "" }
    ));
    std::fs::copy(&elf, &copy).unwrap();
    Some(copy)
}

/// Run an ELF in QEMU; returns stdout, asserting exit status 0.
fn run_qemu(elf: &Path, board: &str, extra: &str) -> String {
    let out = Command::new(root().join("scripts/qemu-run.sh"))
        .arg(elf)
        .env("EDGELORA_BOARD", board)
        .env("EDGELORA_QEMU_FLAGS", extra)
        .output()
        .expect("run qemu");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "firmware {} on {board} failed ({}):\n{stdout}\n{}",
        elf.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `EL ` lines the host prints running the scenario with the portable kernel.
fn host_lines() -> Vec<String> {
    kernels::force(Isa::Portable).unwrap();
    let base = asset("base");
    let g = Gguf::parse(base).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let cfg = *m.config();
    let ctx: usize = manifest("ctx").parse().unwrap();
    let n_gen: usize = manifest("n_gen").parse().unwrap();
    let prompt: &'static str = Box::leak(manifest("prompt").into_boxed_str());
    fn leak<T: Clone>(v: T, n: usize) -> &'static mut [T] {
        Box::leak(vec![v; n].into_boxed_slice())
    }
    let slots = Adapter::slots_len(&cfg);
    let stream = asset("adapter_a")
        .len()
        .max(asset("adapter_b").len())
        .next_multiple_of(32);
    let bufs = scenario::Buffers {
        state: leak(0.0, State::len_for(&cfg, ctx)),
        tok: leak(0, Tokenizer::scratch_len(&g).unwrap()),
        prompt: leak(0, Tokenizer::encode_buf_len(prompt.len())),
        gen: leak(0, n_gen),
        slots_a: leak(None, slots),
        slots_b: leak(None, slots),
        slots_s: leak(None, slots),
        stream: leak(0, stream),
    };
    let assets = scenario::Assets {
        base,
        adapter_a: asset("adapter_a"),
        adapter_b: asset("adapter_b"),
        adapter_wrong: asset("adapter_wrong_base"),
        prompt,
        ctx,
    };
    let mut out = String::new();
    if let Err(e) = scenario::run::<64, _>(&assets, bufs, &mut out) {
        panic!("host scenario failed: {e}\n{out}");
    }
    assert!(kernels::ran(Isa::Portable));
    out.lines().map(str::to_string).collect()
}

fn el_lines(s: &str) -> Vec<String> {
    s.lines()
        .filter(|l| l.starts_with("EL "))
        .map(str::to_string)
        .collect()
}

/// `key=value` fields of the line starting with `tag`.
fn fields(out: &str, tag: &str) -> Vec<(String, String)> {
    let line = out
        .lines()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in:\n{out}"));
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(out: &str, tag: &str, key: &str) -> String {
    fields(out, tag)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {tag}"))
}

/// Check the EL-BUDGET line against `budget.txt` limits `{image}.{key}`.
fn check_budget(out: &str, image: &str) {
    let limits = std::fs::read_to_string(root().join("targets/cortex-m/budget.txt")).unwrap();
    for (k, v) in limits
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
    {
        let Some((img, key)) = k.trim().split_once('.') else {
            continue;
        };
        if img != image {
            continue;
        }
        let limit: usize = v.trim().parse().unwrap();
        let got: usize = field(out, "EL-BUDGET", key).parse().unwrap();
        println!("budget {image}.{key} = {got} (limit {limit})");
        assert!(got <= limit, "{image}.{key} = {got} exceeds the committed limit {limit} (targets/cortex-m/budget.txt)");
    }
}

#[test]
fn firmware_demo_matches_host_on_m4f_and_m7() {
    if qemu_missing() {
        return;
    }
    let want = host_lines();
    assert!(want.iter().any(|l| l == "EL scenario ok"), "{want:#?}");
    for (board, dsp) in [("an386", false), ("an386", true), ("an500", true)] {
        let Some(elf) = build("demo", board, dsp) else {
            return;
        };
        let out = run_qemu(&elf, board, "");
        print!("--- demo {board} dsp={dsp}\n{out}");
        let kernel = if dsp { "dsp" } else { "portable" };
        assert_eq!(field(&out, "EL-BOARD", "kernel"), kernel);
        assert_eq!(
            field(&out, "EL-KERNELS", "ran"),
            kernel,
            "the chosen kernel must be the one that ran"
        );
        let got = el_lines(&out);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "firmware ({board}, {kernel}) and host differ");
        }
        assert_eq!(
            got.len(),
            want.len(),
            "firmware printed {} EL lines, host {}",
            got.len(),
            want.len()
        );
        check_budget(&out, "demo");
    }
}

#[test]
fn firmware_runtime_matches_host_and_fits_budget() {
    if qemu_missing() {
        return;
    }
    // Direct host computation (no shared code): adapter A, fixed ids, greedy.
    kernels::force(Isa::Portable).unwrap();
    let base = asset("base");
    let g = Gguf::parse(base).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let ctx: usize = manifest("ctx").parse().unwrap();
    let n_gen: usize = manifest("n_gen").parse().unwrap();
    let mut buf = vec![0f32; State::len_for(m.config(), ctx)];
    let mut st = State::new(m.config(), ctx, &mut buf).unwrap();
    let ad = Adapter::parse(asset("adapter_a")).unwrap();
    let mut slots = vec![None; Adapter::slots_len(m.config())];
    let bound = ad.bind(&g, &m, &mut slots).unwrap();
    let set = AdapterSet::single(&bound, 1.0);
    let ids = [1u32, 17, 42, 99, 3, 250, 7, 120]; // bin `runtime`'s IDS
    let mut want = String::new();
    let mut logits = m.prefill_with(&ids, 0, &mut st, &set).unwrap().to_vec();
    for i in 0..n_gen {
        let t = edgelora::sample::argmax(&logits);
        want.push_str(&format!("{t},"));
        logits = m
            .forward_with(t, ids.len() + i, &mut st, &set)
            .unwrap()
            .to_vec();
    }
    for (board, dsp) in [("an386", false), ("an500", true)] {
        let Some(elf) = build("runtime", board, dsp) else {
            return;
        };
        let out = run_qemu(&elf, board, "");
        print!("--- runtime {board} dsp={dsp}\n{out}");
        assert_eq!(field(&out, "EL-RUNTIME", "ok"), "true");
        assert_eq!(field(&out, "EL-RUNTIME", "ids"), want);
        check_budget(&out, "runtime");
    }
}

#[test]
fn firmware_dsp_kernels_match_reference_in_qemu() {
    if qemu_missing() {
        return;
    }
    for board in ["an386", "an500"] {
        let Some(elf) = build("kernels", board, true) else {
            return;
        };
        let out = run_qemu(&elf, board, "-icount shift=0");
        print!("--- kernels {board}\n{out}");
        assert_eq!(field(&out, "EL-KERNEL active", "active"), "dsp");
        assert_eq!(field(&out, "EL-KERNEL ran_dsp", "ran_dsp"), "true");
        assert_eq!(field(&out, "EL-KERNEL blocks_int_exact", "cases"), "2000");
        // 9 row counts (1..=9: every count mod 4, the DSP row group, below and above it) x
        // 7 row lengths (0, 1, 2, 3, 7, 64, 128 blocks) x 10 contents, Q8_0 and Q4_0 each.
        assert_eq!(
            field(&out, "EL-KERNEL rows_bit_exact_vs_reference", "cases"),
            "630"
        );
        assert!(!out.contains("EL-FAIL"), "{out}");
        // Instructions per MAC under -icount are deterministic: budgets, not timings.
        check_budget(&out, "kernels");
    }
}
