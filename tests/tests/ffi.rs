//! The C API from C: builds `libedgelora_ffi.a` (its own target dir, so the outer `cargo
//! test` lock is not contended), compiles `targets/ffi/tests/c/test_ffi.c` with gcc
//! (`-Wall -Wextra -Werror`, against the checked-in header), runs it on the firmware's
//! assets, and compares the ids it prints with the same runs through the Rust API. The C
//! example `targets/ffi/examples/generate.c` is built the same way and run on the tiny model.

use edgelora::lora::{Adapter, AdapterSet};
use edgelora::model::{Model, State};
use edgelora::tokenizer::Tokenizer;
use edgelora::Gguf;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn ids(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Greedy ids through the Rust API, as `el_generate` does.
fn greedy(m: &Model<'_>, set: &AdapterSet<'_, '_, '_>, prompt: &[u32]) -> String {
    let mut buf = vec![0f32; State::len_for(m.config(), 128)];
    let mut st = State::new(m.config(), 128, &mut buf).unwrap();
    let mut out = vec![];
    let mut logits = m.prefill_with(prompt, 0, &mut st, set).unwrap().to_vec();
    for i in 0..16 {
        let t = edgelora::sample::argmax(&logits);
        out.push(t);
        if i < 15 {
            logits = m
                .forward_with(t, prompt.len() + i, &mut st, set)
                .unwrap()
                .to_vec();
        }
    }
    ids(&out)
}

/// Build `libedgelora_ffi.a` and compile the C file `src` (repository-relative) against it and
/// the checked-in header, warning-free (`-Wall -Wextra -Werror`), as `target/ffi-c/<exe>`.
/// `None` (after printing SKIPPED) where gcc is not installed.
fn build_c(src: &str, exe: &str) -> Option<PathBuf> {
    if Command::new("gcc").arg("--version").output().is_err() {
        println!("SKIPPED: gcc not installed");
        return None;
    }
    let root = root();
    let tdir = root.join("target/ffi-c");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "-p", "edgelora-ffi", "--target-dir"])
        .arg(&tdir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(st.success(), "building edgelora-ffi failed");
    let exe = tdir.join(exe);
    let out = Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("targets/ffi/include"))
        .arg(root.join(src))
        .arg(tdir.join("debug/libedgelora_ffi.a"))
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc failed on {src}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(exe)
}

#[test]
fn c_program_links_staticlib_and_matches_rust() {
    let Some(exe) = build_c("targets/ffi/tests/c/test_ffi.c", "test_ffi") else {
        return;
    };
    let root = root();

    let base_p = root.join("tests/fixtures/tiny/tiny-q8_0.gguf");
    let a_p = root.join("targets/cortex-m/assets/tiny-lora-a.gguf");
    let b_p = root.join("targets/cortex-m/assets/tiny-lora-b.gguf");
    let prompt = "Once upon a time";
    let run = Command::new(&exe)
        .args([&base_p, &a_p, &b_p])
        .arg(prompt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    print!("{stdout}");
    assert!(
        run.status.success(),
        "test_ffi failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.lines().any(|l| l == "C ok"));
    let c_ids = |name: &str| -> String {
        let tag = format!("C {name} ids=");
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&tag))
            .unwrap_or_else(|| panic!("no {name}"))
            .to_string()
    };

    let base = std::fs::read(&base_p).unwrap();
    let g = Gguf::parse(&base).unwrap();
    let m: Model<'_> = Model::from_gguf(&g).unwrap();
    let tok = Tokenizer::new_owned(&g).unwrap();
    let mut p = vec![tok.bos_id().unwrap()];
    p.extend(tok.encode_vec(prompt, true).unwrap());
    assert_eq!(c_ids("prompt"), ids(&p));
    assert_eq!(c_ids("base"), greedy(&m, &AdapterSet::EMPTY, &p));
    let (ab, bb) = (std::fs::read(&a_p).unwrap(), std::fs::read(&b_p).unwrap());
    let (a, b) = (Adapter::parse(&ab).unwrap(), Adapter::parse(&bb).unwrap());
    let n = Adapter::slots_len(m.config());
    let (mut sa, mut sb) = (vec![None; n], vec![None; n]);
    let (ba, bbd) = (
        a.bind(&g, &m, &mut sa).unwrap(),
        b.bind(&g, &m, &mut sb).unwrap(),
    );
    let la = greedy(&m, &AdapterSet::single(&ba, 1.0), &p);
    assert_eq!(c_ids("lora_a"), la);
    assert_eq!(
        c_ids("lora_b"),
        greedy(&m, &AdapterSet::single(&bbd, 1.0), &p)
    );
    assert_eq!(c_ids("stream_a"), la);
}

/// `targets/ffi/examples/generate.c` compiles warning-free against the header and library and
/// answers with each adapter after the swap (the same answers the Rust examples give).
#[test]
fn c_example_generates_and_swaps() {
    let Some(exe) = build_c("targets/ffi/examples/generate.c", "generate_example") else {
        return;
    };
    let root = root();
    let tiny = root.join("models/tiny");
    let run = Command::new(&exe)
        .arg(tiny.join("tiny-base.gguf"))
        .arg(tiny.join("intent/adapter.gguf"))
        .arg("intent: turn on the kitchen lights")
        .arg(tiny.join("reply/adapter.gguf"))
        .arg("reply: please raise the shades in the bedroom")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    print!("{stdout}");
    assert!(
        run.status.success(),
        "generate failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains(
        "intent: turn on the kitchen lights -> {\"action\":\"on\",\"device\":\"light\",\"room\":\"kitchen\"}\n"
    ));
    assert!(stdout.contains(
        "reply: please raise the shades in the bedroom -> Opening the bedroom blinds.\n"
    ));
}
