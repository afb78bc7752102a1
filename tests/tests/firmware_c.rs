//! The C firmware (`targets/cortex-m-c`) under QEMU, compared with the host.
//!
//! Builds the `edgelora-ffi` staticlib no_std for thumbv7em-none-eabihf and the C firmware
//! with its Makefile (`make`), runs it on mps2-an386 (`make run`), and checks that every
//! `EL ...` line equals the line the host prints running the Rust firmware's scenario
//! (`targets/cortex-m/src/scenario.rs`) on the same assets with the portable kernel: prompt
//! ids, the ids and logits hash of the base, adapter A, B, A+B, the rejected bad input (with
//! the core's own messages), B after it, and B streamed in chunks. The C side drives the
//! scenario only through the C API (`targets/ffi/include/edgelora.h`).
//!
//! A second test links the same firmware with a 4 KiB stack (the scenario needs about 7.3 KiB)
//! and checks that the overflow faults and is reported, instead of running on over the
//! statics: the stack sits at the bottom of RAM (targets/cortex-m-c/an386.ld).
//!
//! Where `cmake` is installed, a third test builds the firmware with the CMakeLists.txt and
//! its toolchain file instead and checks the same lines.
//!
//! Needs `arm-none-eabi-gcc` with newlib (Debian `gcc-arm-none-eabi libnewlib-arm-none-eabi`),
//! `make`, `qemu-system-arm` and the rustup target `thumbv7em-none-eabihf`; without one of
//! them the test prints SKIPPED and passes.

mod scenario_host;

use scenario_host::{el_lines, host_lines, root};
use std::process::{Command, Output};
use std::sync::Mutex;

/// One `make` at a time: both tests build the same staticlib and objects.
static MAKE: Mutex<()> = Mutex::new(());

/// Stack the linker script reserves (`STACK_SIZE` in targets/cortex-m-c/an386.ld).
const STACK_SIZE: usize = 12 * 1024;

/// Why the C firmware cannot be built or run here, if it cannot.
fn missing_tool() -> Option<&'static str> {
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs("arm-none-eabi-gcc", "--version") {
        return Some("arm-none-eabi-gcc not installed (Debian: gcc-arm-none-eabi)");
    }
    // gcc prints the bare name back when it cannot find the file.
    let nano = Command::new("arm-none-eabi-gcc")
        .args([
            "-mcpu=cortex-m4",
            "-mthumb",
            "-mfloat-abi=hard",
            "-mfpu=fpv4-sp-d16",
            "-print-file-name=libc_nano.a",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if !std::path::Path::new(&nano).is_absolute() {
        return Some(
            "newlib-nano for arm-none-eabi not installed (Debian: libnewlib-arm-none-eabi)",
        );
    }
    if !runs("make", "--version") {
        return Some("make not installed");
    }
    if !runs("qemu-system-arm", "--version") {
        return Some("qemu-system-arm not installed");
    }
    None
}

/// `make <args>` in targets/cortex-m-c, with cargo's variables for this test build removed
/// (the Makefile runs its own cargo for another target and profile).
fn make(args: &[&str]) -> Output {
    let _g = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new("make")
        .current_dir(root().join("targets/cortex-m-c"))
        .args(args)
        .arg(format!("CARGO={cargo}"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .output()
        .expect("run make")
}

/// `key=value` of the line starting with `tag`, as a number.
fn field(out: &str, tag: &str, key: &str) -> usize {
    out.lines()
        .find(|l| l.starts_with(tag))
        .unwrap_or_else(|| panic!("no {tag} line in:\n{out}"))
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no number {key} in {tag}"))
}

/// `make <args>` (the firmware); false (SKIPPED printed) if the Rust target is missing.
fn build(args: &[&str]) -> bool {
    let built = make(args);
    let stderr = String::from_utf8_lossy(&built.stderr);
    if !built.status.success() {
        if stderr.contains("target may not be installed")
            || stderr.contains("can't find crate for `core`")
        {
            println!("SKIPPED: rustup target thumbv7em-none-eabihf not installed");
            return false;
        }
        panic!(
            "building the C firmware failed:\n{}\n{stderr}",
            String::from_utf8_lossy(&built.stdout)
        );
    }
    true
}

#[test]
fn c_firmware_matches_host_on_m4f() {
    if let Some(why) = missing_tool() {
        println!("SKIPPED: {why}");
        return;
    }
    let want = host_lines();
    assert!(want.iter().any(|l| l == "EL scenario ok"), "{want:#?}");

    if !build(&[]) {
        return;
    }
    let size = make(&["-s", "size"]);
    print!("{}", String::from_utf8_lossy(&size.stdout));

    // QEMU runs under `timeout` so that a firmware that hangs fails the test instead.
    let ran = make(&["-s", "run", "QEMU=timeout 300 qemu-system-arm"]);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    print!("--- C firmware an386\n{out}");
    assert!(
        ran.status.success(),
        "C firmware failed ({}):\n{out}\n{}",
        ran.status,
        String::from_utf8_lossy(&ran.stderr)
    );
    let got = el_lines(&out);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "C firmware and host differ");
    }
    assert_eq!(
        got.len(),
        want.len(),
        "C firmware printed {} EL lines, host {}",
        got.len(),
        want.len()
    );

    // The budget line is printed after the scenario; the stack must have stayed inside the
    // region the linker script gives it (an overflow would have faulted, not returned here,
    // but a high-water mark at the limit means the region is too small to trust).
    let stack = field(&out, "EL-BUDGET", "stack_hwm");
    assert!(
        stack > 0 && stack < STACK_SIZE,
        "stack high-water mark {stack} of {STACK_SIZE}"
    );
    assert!(field(&out, "EL-BUDGET", "flash_runtime") > 0);
}

#[test]
fn c_firmware_stack_overflow_faults() {
    if let Some(why) = missing_tool() {
        println!("SKIPPED: {why}");
        return;
    }
    let small = ["STACK_SIZE=4096", "BUILD=build-stack4k"];
    if !build(&small) {
        return;
    }
    let mut args = vec!["-s", "run", "QEMU=timeout 300 qemu-system-arm"];
    args.extend(small);
    let ran = make(&args);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    print!("--- C firmware an386, 4 KiB stack\n{out}");
    assert!(
        !ran.status.success(),
        "a 4 KiB stack cannot hold the scenario:\n{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("EL-HARDFAULT ")),
        "the overflow must be reported by the fault handler:\n{out}"
    );
    assert!(!out.contains("EL scenario ok"));
}

#[test]
fn c_firmware_cmake_build_matches_host() {
    if let Some(why) = missing_tool() {
        println!("SKIPPED: {why}");
        return;
    }
    if !Command::new("cmake")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("SKIPPED: cmake not installed");
        return;
    }
    let want = host_lines();
    let dir = root().join("targets/cortex-m-c");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cmake = |args: &[&str]| -> Output {
        let _g = MAKE.lock().unwrap_or_else(|e| e.into_inner());
        Command::new("cmake")
            .current_dir(&dir)
            .args(args)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .output()
            .expect("run cmake")
    };
    let ok = |o: &Output, what: &str| {
        assert!(
            o.status.success(),
            "{what} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    };
    let conf = cmake(&[
        "-B",
        "build-cmake-test",
        "-DCMAKE_TOOLCHAIN_FILE=cmake/arm-none-eabi.cmake",
        &format!("-DCARGO={cargo}"),
        "-DQEMU=timeout;300;qemu-system-arm",
    ]);
    ok(&conf, "cmake configure");
    let built = cmake(&["--build", "build-cmake-test"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    if !built.status.success() && said.contains("target may not be installed") {
        println!("SKIPPED: rustup target thumbv7em-none-eabihf not installed");
        return;
    }
    ok(&built, "cmake --build");
    let ran = cmake(&["--build", "build-cmake-test", "--target", "run"]);
    let out = String::from_utf8_lossy(&ran.stdout).into_owned();
    print!("--- C firmware an386 (CMake)\n{out}");
    ok(&ran, "cmake --build --target run");
    assert_eq!(
        el_lines(&out),
        want,
        "C firmware (CMake build) and host differ"
    );
}
