//! The firmware under QEMU, compared with the host.
//!
//! Builds `targets/cortex-m` (Cortex-M4F an386, M7 an500, M33 an505) and `targets/riscv`
//! (riscv32imac on QEMU `virt`; the same image sources), each its own workspace and target
//! dir, for each board and kernel choice ([`BOARDS`]), runs them in QEMU, and checks:
//! - `demo`: every `EL ...` line equals the line the host prints running the same script
//!   (`targets/cortex-m/src/scenario.rs`, compiled here) with the portable kernel: the ids
//!   generated with the base, adapter A, B, both, after rejected bad input, and after
//!   streaming B in chunks, plus a hash of every logit's bits; the DSP build must give the
//!   same lines (its float part is the portable kernel's, its integer part exact);
//! - `runtime`: the ids equal a direct host computation;
//! - `kernels` (DSP build; on RISC-V the portable kernel): integer block sums and whole
//!   matvecs equal the reference in QEMU, and the instructions per MAC it measures under
//!   `-icount` stay within their budgets;
//! - the budgets the images print stay within the crate's `budget.txt`, and the flash figure
//!   they print accounts for every flash section of the ELF but startup and assets.
//!
//! Needs `qemu-system-arm` (Debian package `qemu-system-arm`), `qemu-system-riscv32`
//! (`qemu-system-misc`) and the rustup targets of [`BOARDS`]; a board whose QEMU or target is
//! missing prints SKIPPED and the others still run.

mod scenario_host;
use scenario_host::{asset, device_cache, el_lines, host_lines, manifest, root};

use edgelora::kernels::{self, Isa};
use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::Gguf;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// How each board is built and run: one row per board.
struct Board {
    /// `EDGELORA_BOARD` / the crate's `board-*` feature.
    name: &'static str,
    /// Firmware crate (its own workspace, `.cargo/config.toml` and `budget.txt`).
    dir: &'static str,
    /// Whether the crate has a `board-{name}` feature (the RISC-V crate has one board).
    feature: bool,
    target: &'static str,
    /// Codegen flags beside `-Tlink.x` (these replace the crate's config rustflags).
    rustflags: &'static [&'static str],
    qemu: &'static str,
    runner: &'static str,
}

const BOARDS: &[Board] = &[
    Board {
        name: "an386",
        dir: "targets/cortex-m",
        feature: true,
        target: "thumbv7em-none-eabihf",
        rustflags: &[],
        qemu: "qemu-system-arm",
        runner: "scripts/qemu-run.sh",
    },
    Board {
        name: "an500",
        dir: "targets/cortex-m",
        feature: true,
        target: "thumbv7em-none-eabihf",
        rustflags: &[],
        qemu: "qemu-system-arm",
        runner: "scripts/qemu-run.sh",
    },
    // thumbv8m.main leaves the DSP extension out; the M33 has it (the `dsp` kernels' asm!).
    // `+dsp` rather than `target-cpu=cortex-m33`: with the CPU set, LLVM keeps a register
    // from the four-row DSP kernels' 13-operand `asm!` blocks and the build fails ("inline
    // assembly requires more registers than available"); the feature alone builds the same
    // instructions (rustc warns that `dsp` is an unstable feature name; it is LLVM's).
    Board {
        name: "an505",
        dir: "targets/cortex-m",
        feature: true,
        target: "thumbv8m.main-none-eabihf",
        rustflags: &["-C", "target-feature=+dsp"],
        qemu: "qemu-system-arm",
        runner: "scripts/qemu-run.sh",
    },
    // The M55's Helium kernels (`mve`) need `-C target-cpu=cortex-m55` on the same triple.
    Board {
        name: "an547",
        dir: "targets/cortex-m",
        feature: true,
        target: "thumbv8m.main-none-eabihf",
        rustflags: &["-C", "target-cpu=cortex-m55"],
        qemu: "qemu-system-arm",
        runner: "scripts/qemu-run.sh",
    },
    Board {
        name: "virt",
        dir: "targets/riscv",
        feature: false,
        target: "riscv32imac-unknown-none-elf",
        rustflags: &[],
        qemu: "qemu-system-riscv32",
        runner: "scripts/qemu-run-riscv.sh",
    },
];

fn board(name: &str) -> &'static Board {
    BOARDS
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("unknown board {name}"))
}

/// True (and SKIPPED printed) if the QEMU that runs `board` is not installed.
fn qemu_missing(board_name: &str) -> bool {
    let qemu = board(board_name).qemu;
    let ok = Command::new(qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("SKIPPED: {qemu} not installed (board {board_name})");
    }
    !ok
}

/// One firmware build at a time (cargo would serialise on the target dir lock anyway).
static BUILD: Mutex<()> = Mutex::new(());

/// Build `bin` for `board` (a [`BOARDS`] row), with the DSP kernels if `dsp`; the ELF path,
/// or `None` (SKIPPED printed) if the board's target is not installed.
fn build(bin: &str, board_name: &str, dsp: bool) -> Option<PathBuf> {
    // The runtime image links the DSP table alone (its flash budget); the others keep the
    // portable one selectable (`kernels` cross-checks the two in place).
    let kernels = match (dsp, bin) {
        (false, _) => "",
        (true, "runtime") => "dsp-only",
        (true, _) => "dsp",
    };
    build_with(bin, board_name, kernels)
}

/// True (and SKIPPED printed) if `qemu-system-arm` lacks `machine`.
fn machine_missing(machine: &str) -> bool {
    let ok = Command::new("qemu-system-arm")
        .args(["-machine", "help"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w == machine)
        });
    if !ok {
        println!("SKIPPED: qemu-system-arm has no machine {machine}");
    }
    !ok
}

/// [`build`] with the kernel features spelled out (`""`, `"dsp"`, `"dsp-only"`, `"mve"`,
/// `"dsp,mve"`).
fn build_with(bin: &str, board_name: &str, kernels: &str) -> Option<PathBuf> {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let b = board(board_name);
    let dir = root().join(b.dir);
    let mut features = if b.feature {
        format!("board-{board_name}")
    } else {
        String::new()
    };
    if !kernels.is_empty() {
        features.push(',');
        features.push_str(kernels);
    }
    // Separate target dirs per feature set would rebuild the same deps; one dir keeps each
    // feature set's artefacts side by side, but the ELF is overwritten, so copy it out.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // A board with its own codegen flags gets its own target dir: the M33 and M55 share a
    // triple, and building one after the other in one dir would rebuild everything each time.
    let target_dir = if b.rustflags.is_empty() {
        dir.join("target")
    } else {
        dir.join("target").join(board_name)
    };
    let rustflags = ["-C", "link-arg=-Tlink.x"]
        .iter()
        .chain(b.rustflags)
        .copied()
        .collect::<Vec<_>>()
        .join("\x1f");
    let out = Command::new(cargo)
        .current_dir(&dir)
        .args(["build", "--release", "--bin", bin, "--target", b.target])
        .args(["--target-dir", &target_dir.to_string_lossy()])
        .args(["--features", &features])
        // The Cortex-M crate logs through defmt by default; images built without `defmt` in
        // their features are the plain-text option (the crates' other tests compare text).
        .args(if b.feature && !kernels.split(',').any(|k| k == "defmt") {
            &["--no-default-features"][..]
        } else {
            &[]
        })
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            println!("SKIPPED: rustup target {} not installed", b.target);
            return None;
        }
        panic!("firmware build failed ({bin}, {features}):\n{stderr}");
    }
    let elf = target_dir.join(b.target).join("release").join(bin);
    let copy = dir.join("target").join(format!(
        "{bin}-{board_name}{}{}.elf",
        if kernels.is_empty() { "" } else { "-" },
        kernels.replace(',', "-")
    ));
    std::fs::copy(&elf, &copy).unwrap();
    Some(copy)
}

/// Run an ELF in QEMU; returns stdout, asserting exit status 0.
fn run_qemu(elf: &Path, board: &str, extra: &str) -> String {
    let out = Command::new(root().join(crate::board(board).runner))
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

/// Check the EL-BUDGET line against the limits `{image}.{key}` in the `budget.txt` of
/// `board`'s crate.
fn check_budget(out: &str, board: &str, image: &str) {
    let file = Path::new(crate::board(board).dir).join("budget.txt");
    let limits = std::fs::read_to_string(root().join(&file)).unwrap();
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
        println!("budget {board} {image}.{key} = {got} (limit {limit})");
        assert!(
            got <= limit,
            "{image}.{key} = {got} on {board} exceeds the committed limit {limit} ({})",
            file.display()
        );
    }
}

/// Bytes an image needs in flash, from its ELF32 section headers: every allocated section with
/// contents (`SHF_ALLOC`, not `SHT_NOBITS`), `.data`'s load image included; the name and size
/// of each, for the message.
fn elf_flash(elf: &Path) -> (usize, Vec<(String, usize)>) {
    let b = std::fs::read(elf).unwrap();
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    assert_eq!(
        &b[..5],
        b"\x7fELF\x01",
        "{}: not a 32-bit ELF",
        elf.display()
    );
    let (shoff, shentsize, shnum, shstrndx) = (u32_at(32), u16_at(46), u16_at(48), u16_at(50));
    let sh = |i: usize| shoff + i * shentsize;
    let strtab = u32_at(sh(shstrndx) + 16);
    let mut total = 0;
    let mut parts = vec![];
    for i in 0..shnum {
        let (name, ty, flags, size) = (
            u32_at(sh(i)),
            u32_at(sh(i) + 4),
            u32_at(sh(i) + 8),
            u32_at(sh(i) + 20),
        );
        const SHF_ALLOC: usize = 2;
        const SHT_NOBITS: usize = 8;
        if flags & SHF_ALLOC != 0 && ty != SHT_NOBITS && size > 0 {
            let n = &b[strtab + name..];
            let n = String::from_utf8_lossy(&n[..n.iter().position(|&c| c == 0).unwrap()]);
            total += size;
            parts.push((n.into_owned(), size));
        }
    }
    (total, parts)
}

/// The firmware's own `flash_runtime` (text + rodata - assets + data, from linker symbols)
/// accounts for all the flash the ELF uses but the assets and the vector table: a section the
/// linker places in flash outside those symbols (as `.eh_frame` once was on RISC-V, 6.8 KB)
/// would make the budget line lie.
fn check_flash_accounting(elf: &Path, out: &str, board: &str) {
    let (total, parts) = elf_flash(elf);
    let reported: usize = field(out, "EL-BUDGET", "flash_runtime").parse().unwrap();
    let assets: usize = field(out, "EL-BUDGET", "assets").parse().unwrap();
    // Startup code and tables outside the runtime's count: the Cortex-M vector table (1 KiB
    // on the M4F/M7, 2 KiB with the M33/M55 boards' interrupts), riscv-rt's `.init.rust`.
    let startup: usize = parts
        .iter()
        .filter(|(n, _)| n == ".vector_table" || n == ".init.rust")
        .map(|(_, s)| s)
        .sum();
    assert_eq!(
        total - startup - assets,
        reported,
        "{board}: the ELF's flash sections (less startup {startup} and assets {assets}) differ \
         from flash_runtime={reported}: {parts:?}"
    );
}

#[test]
fn firmware_demo_matches_host_on_every_board() {
    let want = host_lines();
    assert!(want.iter().any(|l| l == "EL scenario ok"), "{want:#?}");
    for (board, dsp) in [
        ("an386", false),
        ("an386", true),
        ("an500", true),
        ("an505", false),
        ("an505", true),
        ("virt", false),
    ] {
        if qemu_missing(board) {
            continue;
        }
        let Some(elf) = build("demo", board, dsp) else {
            continue;
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
        check_budget(&out, board, "demo");
        check_flash_accounting(&elf, &out, board);
    }
}

/// The ids bin `runtime` prints, computed directly on the host (no shared code): adapter A,
/// fixed ids, greedy, the device's state spec.
fn host_runtime_ids() -> String {
    kernels::force(Isa::Portable).unwrap();
    let base = asset("base");
    let g = Gguf::parse(base).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let ctx: usize = manifest("ctx").parse().unwrap();
    let n_gen: usize = manifest("n_gen").parse().unwrap();
    let mut buf = vec![0f32; State::len_for_cache(m.config(), ctx, device_cache())];
    let mut st = State::with_cache(m.config(), ctx, device_cache(), &mut buf).unwrap();
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
    want
}

#[test]
fn firmware_runtime_matches_host_and_fits_budget() {
    let want = host_runtime_ids();
    for (board, dsp) in [
        ("an386", false),
        ("an500", true),
        ("an505", false),
        ("an505", true),
        ("virt", false),
    ] {
        if qemu_missing(board) {
            continue;
        }
        let Some(elf) = build("runtime", board, dsp) else {
            continue;
        };
        let out = run_qemu(&elf, board, "");
        print!("--- runtime {board} dsp={dsp}\n{out}");
        assert_eq!(field(&out, "EL-RUNTIME", "ok"), "true");
        assert_eq!(field(&out, "EL-RUNTIME", "ids"), want);
        check_budget(&out, board, "runtime");
        check_flash_accounting(&elf, &out, board);
    }
}

#[test]
fn firmware_dsp_kernels_match_reference_in_qemu() {
    for board in ["an386", "an500", "an505"] {
        if qemu_missing(board) {
            continue;
        }
        let Some(elf) = build("kernels", board, true) else {
            continue;
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
        // Q4_1 (the DSP table runs the portable kernel for it), every table built in.
        for isa in ["portable", "dsp"] {
            let tag = format!("EL-KERNEL q4_1_rows_exact isa={isa}");
            assert_eq!(field(&out, &tag, "cases"), "630", "{board} {isa}");
        }
        assert!(!out.contains("EL-FAIL"), "{out}");
        // Instructions per MAC under -icount are deterministic: budgets, not timings.
        check_budget(&out, board, "kernels");
    }
}

#[test]
fn firmware_stack_overflow_faults_instead_of_corrupting() {
    for board in ["an386", "an500", "an505", "an547", "virt"] {
        if qemu_missing(board) {
            continue;
        }
        let Some(elf) = build("stackguard", board, false) else {
            continue;
        };
        let out = Command::new(root().join(crate::board(board).runner))
            .arg(&elf)
            .env("EDGELORA_BOARD", board)
            .env("EDGELORA_QEMU_TIMEOUT", "120")
            .output()
            .expect("run qemu");
        let stdout = String::from_utf8_lossy(&out.stdout);
        print!("--- stackguard {board}\n{stdout}");
        assert_eq!(field(&stdout, "EL-STACKGUARD", "armed"), "true");
        assert!(
            stdout.contains("stack_overflow=true"),
            "the guard did not report the overflow ({board}):\n{stdout}"
        );
        assert!(!stdout.contains("EL-STACKGUARD returned"), "{stdout}");
        // A fault exits with failure (1); 124 would be the timeout (a hang or lockup).
        assert_eq!(out.status.code(), Some(1), "{board}: {stdout}");
    }
}

#[test]
fn firmware_riscv_kernels_match_reference_in_qemu() {
    if qemu_missing("virt") {
        return;
    }
    let Some(elf) = build("kernels", "virt", false) else {
        return;
    };
    let out = run_qemu(&elf, "virt", "-icount shift=0");
    print!("--- kernels virt\n{out}");
    assert_eq!(field(&out, "EL-KERNEL active", "active"), "portable");
    assert_eq!(field(&out, "EL-KERNEL ran_active", "ran_active"), "true");
    assert_eq!(
        field(&out, "EL-KERNEL rows_bit_exact_vs_reference", "cases"),
        "60"
    );
    // `minstret` counts instructions only under -icount; a counted loop must read 1.00.
    assert_eq!(field(&out, "EL-IPM calibration", "insn_per_count"), "1.00");
}

#[test]
fn firmware_an547_mve_matches_reference_and_host() {
    if qemu_missing("an547") || machine_missing("mps3-an547") {
        return;
    }
    // MVE alone: with `-C target-cpu=cortex-m55` the DSP kernels' 13-operand `asm!` blocks do
    // not get their registers (see the an505 row); MVE is the M55's table anyway. (Built with
    // `-C target-feature=+mve,+dsp,+vfp2` instead, the DSP table measures 1.88 / 2.20 on it.)
    let Some(elf) = build_with("kernels", "an547", "mve") else {
        return;
    };
    let out = run_qemu(&elf, "an547", "-icount shift=0");
    print!("--- kernels an547 (mve)\n{out}");
    assert_eq!(field(&out, "EL-KERNEL active", "active"), "mve");
    assert_eq!(field(&out, "EL-KERNEL ran_active", "ran_active"), "true");
    assert_eq!(
        field(&out, "EL-KERNEL blocks_exact isa=mve", "cases"),
        "2000"
    );
    assert_eq!(
        field(&out, "EL-KERNEL rows_bit_exact_vs_reference", "cases"),
        "630"
    );
    for isa in ["portable", "mve"] {
        let tag = format!("EL-KERNEL rows_exact isa={isa}");
        assert_eq!(field(&out, &tag, "cases"), "630", "{isa}");
        // 1, 2 and 3 rows: MVE pairs rows and runs an odd last one alone.
        let tag = format!("EL-KERNEL row_counts_exact isa={isa}");
        assert_eq!(field(&out, &tag, "cases"), "45", "{isa}");
        // Q4_1 x Q8_1 (MVE's own kernel), the same 9 x 7 x 10 shapes.
        let tag = format!("EL-KERNEL q4_1_rows_exact isa={isa}");
        assert_eq!(field(&out, &tag, "cases"), "630", "{isa}");
    }
    assert!(!out.contains("EL-FAIL"), "{out}");
    // Instruction counts under `-icount` are deterministic: budgets, not timings (measured
    // 0.55 / 0.66 for 4 rows x 64 blocks; portable 5.71 / 6.28 on the same core).
    check_budget(&out, "an547", "kernels_mve");

    let want = host_lines();
    for kernel in ["mve", ""] {
        let Some(elf) = build_with("demo", "an547", kernel) else {
            return;
        };
        let out = run_qemu(&elf, "an547", "");
        let name = if kernel.is_empty() {
            "portable"
        } else {
            kernel
        };
        print!("--- demo an547 {name}\n{out}");
        assert_eq!(field(&out, "EL-BOARD", "kernel"), name);
        assert_eq!(field(&out, "EL-KERNELS", "ran"), name);
        assert_eq!(
            el_lines(&out),
            want,
            "firmware (an547, {name}) and host differ"
        );
        check_budget(&out, "an547", "demo");
    }

    let want = host_runtime_ids();
    let Some(elf) = build_with("runtime", "an547", "mve-only") else {
        return;
    };
    let out = run_qemu(&elf, "an547", "");
    print!("--- runtime an547 mve\n{out}");
    assert_eq!(field(&out, "EL-RUNTIME", "ok"), "true");
    assert_eq!(field(&out, "EL-RUNTIME", "ids"), want);
    check_budget(&out, "an547", "runtime");
}

/// Run a defmt image (feature `defmt`) in QEMU and decode its frames with
/// `defmt-print -e <elf>` (from stdin); returns the decoded text. Asserts that QEMU and the
/// decoder both succeed and that the raw output is frames, not plain text.
fn run_qemu_defmt(elf: &Path, board: &str) -> String {
    use std::io::Write as _;
    use std::process::Stdio;
    let out = Command::new(root().join(crate::board(board).runner))
        .arg(elf)
        .env("EDGELORA_BOARD", board)
        .env("EDGELORA_DEFMT_RAW", "1")
        .output()
        .expect("run qemu");
    assert!(
        out.status.success(),
        "firmware {} on {board} failed ({}):\n{}",
        elf.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Frames carry an index into the ELF's string table, not the text: the line tags must
    // not appear in the raw stream (they would if the image had printed plain text).
    assert!(
        !out.stdout.windows(3).any(|w| w == b"EL-"),
        "{} printed plain text, not defmt frames",
        elf.display()
    );
    let mut dec = Command::new("defmt-print")
        .arg("-e")
        .arg(elf)
        .args(["--log-format", "{s}", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run defmt-print");
    dec.stdin
        .take()
        .unwrap()
        .write_all(&out.stdout)
        .expect("feed defmt-print");
    let dec = dec.wait_with_output().expect("defmt-print");
    let text = String::from_utf8_lossy(&dec.stdout).into_owned();
    assert!(
        dec.status.success(),
        "defmt-print failed ({}):\n{text}\n{}",
        dec.status,
        String::from_utf8_lossy(&dec.stderr)
    );
    text
}

/// The `demo` and `runtime` images logging through defmt (the firmware's feature `defmt`):
/// their frames, decoded on the host by the knurling tools' `defmt-print`, must be exactly
/// the lines the plain images print, i.e. the host's lines (the core's errors in the `reject`
/// lines come through the core's own `defmt::Format`). Every Arm board: the M4F with the
/// portable kernel, the M7 and M33 with the DSP kernels, the M55 with MVE (thumbv7em and
/// thumbv8m.main, both kernel families). defmt is the crate's default logging path;
/// both images' budget lines are checked against `budget.txt` like the plain builds'.
#[test]
fn firmware_defmt_logs_decode_to_the_host_lines() {
    let found = Command::new("defmt-print")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        println!("SKIPPED: defmt-print not installed (cargo install defmt-print)");
        return;
    }
    let want = host_lines();
    let want_ids = host_runtime_ids();
    for (board, demo_kernels, runtime_kernels, kernel) in [
        ("an386", "defmt", "defmt", "portable"),
        ("an500", "dsp,defmt", "dsp-only,defmt", "dsp"),
        ("an505", "dsp,defmt", "dsp-only,defmt", "dsp"),
        ("an547", "mve,defmt", "mve-only,defmt", "mve"),
    ] {
        if qemu_missing(board) {
            continue;
        }
        let Some(elf) = build_with("demo", board, demo_kernels) else {
            continue;
        };
        let out = run_qemu_defmt(&elf, board);
        print!("--- demo {board} {demo_kernels} (decoded)\n{out}");
        assert_eq!(field(&out, "EL-BOARD", "kernel"), kernel);
        assert_eq!(field(&out, "EL-KERNELS", "ran"), kernel);
        assert_eq!(
            el_lines(&out),
            want,
            "defmt firmware ({board}, {kernel}) and host differ"
        );
        check_budget(&out, board, "demo");

        let Some(elf) = build_with("runtime", board, runtime_kernels) else {
            continue;
        };
        let out = run_qemu_defmt(&elf, board);
        print!("--- runtime {board} {runtime_kernels} (decoded)\n{out}");
        assert_eq!(field(&out, "EL-RUNTIME", "ok"), "true");
        assert_eq!(field(&out, "EL-RUNTIME", "ids"), want_ids);
        check_budget(&out, board, "runtime");
    }
}
